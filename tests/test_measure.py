"""The measuring toolkit (nbs/39_measure.ipynb): its meters against hand-counted allocations and passes, and the rule that
no other chapter or module keeps a private meter on private PyTorch APIs."""
import json, re
from pathlib import Path
import pytest
import torch
from nonlocal_book.results.measure import (full_size_passes, interleaved_times, median_time, peak_bytes, peak_live_bytes,
                                           saved_bytes)

ROOT = Path(__file__).resolve().parents[1]
PRIVATE = ('kineto_results', '_python_dispatch')
ALLOWED = {'nbs/39_measure.ipynb', 'nonlocal_book/results/measure.py'}   # full_size_passes: see the chapter's "Full-size passes"


def _sources():
    for p in sorted((ROOT / 'nbs').glob('*.ipynb')):
        yield p, '\n'.join(''.join(c['source']) for c in json.loads(p.read_text())['cells'] if c['cell_type'] == 'code')
    for p in sorted((ROOT / 'nonlocal_book').rglob('*.py')):
        if p.name != '_modidx.py': yield p, p.read_text()


@pytest.mark.parametrize('api', PRIVATE)
def test_private_profiling_apis_live_only_in_the_measuring_module(api):
    users = {str(p.relative_to(ROOT)) for p, src in _sources() if api in src}
    assert users <= ALLOWED, f'{api} used outside results/measure: {sorted(users - ALLOWED)}'


def test_no_chapter_defines_its_own_meter():
    meter = re.compile(r'def (saved_bytes|peak_\w*bytes|best_time|time_fn|time_block|fwd_bwd_time)\(')
    users = {str(p.relative_to(ROOT)) for p, src in _sources() if meter.search(src)}
    assert users <= ALLOWED, f'private meters outside results/measure: {sorted(users - ALLOWED)}'


def test_operator_modules_keep_no_meters():
    for p in sorted((ROOT / 'nonlocal_book' / 'ops').glob('*.py')):
        src = p.read_text()
        assert not re.search(r'perf_counter|TorchDispatchMode|profile_memory|saved_tensors_hooks', src), p.name


def test_peak_bytes_counts_every_allocation_in_time_order():
    u, w = torch.ones(250_000), torch.ones(250_000)                    # 1 MB each (tensors: a Python number would add a wrapper)
    def f():
        a = u + w; b = u - w                                           # 2 MB alive
        del a; c = u * w                                               # a freed first: still 2 MB
        return b, c
    assert peak_bytes(f)[1] == 2_000_000
    a3, b3 = torch.ones(10, 250, 100).transpose(1, 2), torch.ones(10, 100, 20)
    _, peak = peak_bytes(lambda: torch.einsum('bji,bjk->ik', a3, b3))    # einsum's 1 MB layout copy, freed inside the call
    assert 1_000_000 + 250 * 20 * 4 <= peak < 1_100_000


def test_peak_live_bytes_runs_without_autograd():
    x = torch.ones(1000, requires_grad=True)
    y, peak = peak_live_bytes(lambda t, k: (t * k).exp(), x, torch.ones(1000))
    assert peak == 8000 and not y.requires_grad
    assert peak_live_bytes(lambda t: t.view(10, 100), x)[1] == 0       # a view allocates nothing


def test_saved_bytes_counts_each_storage_once():
    a = torch.randn(500, requires_grad=True)
    assert saved_bytes(lambda: a * a)[1] == 2000
    assert saved_bytes(lambda: (a * a.detach()) * 3)[1] == 2000        # a.detach() shares a's storage; * 3 saves no tensor


def test_full_size_passes_counts_data_movement_not_views():
    x = torch.randn(64, 64, requires_grad=True)
    assert full_size_passes(lambda: x.t().contiguous().sum(), x.numel()) == ['clone', 'sum']
    assert full_size_passes(lambda: x.detach().view(-1)[:5].sum(), x.numel()) == []
    ops = full_size_passes(lambda: torch.autograd.grad((x * x).sum(), x), x.numel())
    assert ops[:2] == ['mul', 'sum'] and len(ops) >= 3                 # backward: at least one full-size product


def test_timers_reject_no_repeats_and_order_a_slow_callable_last():
    import time
    with pytest.raises(ValueError, match='reps'): median_time(lambda: None, reps=0)
    t = interleaved_times({'slow': lambda: time.sleep(0.005), 'fast': lambda: None}, reps=3, warmup=0)
    assert t['slow'] >= 0.005 > t['fast']
