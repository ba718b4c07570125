"""`diagnose` on every registered operator inside the small C2D: one row per block, ratios and statistics in range."""
import pytest
import torch
from nonlocal_book.core import list_operators, seed_everything
from nonlocal_book.cli import build_model, UsageError
from nonlocal_book.results.diagnostics import diagnose, attention_stats


@pytest.mark.parametrize('op', list_operators())
def test_diagnose_every_operator(op):
    try: model, places = build_model(op, width=4, frames=8)
    except UsageError as e: pytest.skip(f'{op} does not fit the small C2D: {e}')
    seed_everything(0)
    x = torch.rand(2, 3, 8, 32, 32)                    # the main job's clips
    try: model(x)
    except ValueError as e: pytest.skip(f'{op} cannot run on 8×32×32 clips here: {e}')     # e.g. BAT's s=7 blocks
    rows = diagnose(model, x)
    names = [r['block'] for r in rows]
    assert set(places) <= set(names) and all(any(n == p or n.startswith(p + '.') for p in places) for n in names)   # nested blocks too
    for r in rows:
        assert r['branch'] is None or r['branch'] >= 0
        for k in ('entropy', 'query_dependence'):
            if k in r: assert -1e-9 <= r[k] <= 1 + 1e-9, (op, r)
    assert model.training, 'diagnose restores the training mode'


def test_query_dependence_is_zero_for_shared_maps_and_high_for_distinct_ones():
    g = torch.Generator().manual_seed(0)
    shared = torch.rand(9, generator=g).softmax(-1).view(1, 1, 1, 1, 1, 3, 3).expand(2, 2, 4, 4, 1, 3, 3)
    assert attention_stats(shared)['query_dependence'] < 1e-12
    peaked = torch.nn.functional.one_hot(torch.randint(0, 9, (2, 2, 4, 4), generator=g), 9).float().view(2, 2, 4, 4, 1, 3, 3)
    assert attention_stats(peaked)['query_dependence'] > 0.5


def test_diagnose_needs_operator_blocks():
    with pytest.raises(ValueError, match='no operator blocks'):
        diagnose(torch.nn.Conv3d(3, 3, 1), torch.rand(1, 3, 2, 4, 4))
