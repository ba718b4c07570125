"""`nlb_bench --against official`: every compared operator against its plain transcription, from the command line."""
import os, subprocess, sys
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parent.parent

def bench(*args, tmp=None):
    "Run nlb_bench as its console script does (a stub calling `bench()`: fastcore's call_parse reads sys.argv only there)."
    import tempfile
    stub = Path(tempfile.mkdtemp()) / 'nlb_bench'
    stub.write_text('import sys\nfrom nonlocal_book.cli import bench\nsys.exit(bench())\n')
    return subprocess.run([sys.executable, str(stub), *args], capture_output=True, text=True, timeout=600, cwd=ROOT,
                          env={**os.environ, 'OMP_NUM_THREADS': '1', 'PYTHONPATH': str(ROOT)})


def test_against_official_prints_one_row_per_operator_with_ratios():
    r = bench('--against', 'official', '--operators', 'nl,cgd,a2', '--channels', '16', '--frames', '2', '--size', '8',
              '--batch', '1', '--reps', '1', '--device', 'cpu')
    assert r.returncode == 0, r.stdout + r.stderr
    rows = [l.split() for l in r.stdout.splitlines() if l.split() and l.split()[0] in ('nl', 'cgd', 'a2')]
    assert [row[0] for row in rows] == ['nl', 'cgd', 'a2'], r.stdout
    for row in rows:
        ours_ms, off_ms, ratio = map(float, row[2:5])
        lo, hi = (ours_ms - 0.05) / (off_ms + 0.05), (ours_ms + 0.05) / max(off_ms - 0.05, 1e-9)   # ms printed to 0.1
        assert lo - 0.005 <= ratio <= hi + 0.005, row                                  # the printed ratio is ours / official
        ours_mb, off_mb, mem = map(float, row[5:8])
        assert mem > 0
    assert 'ratios ours / official' in r.stdout and '%pk' in r.stdout


@pytest.mark.parametrize('names, against, amp, message', [
    (['nl'], 'caffe2', 'none', "--against must be 'official'"),
    (['se'], 'official', 'none', "no official transcription for ['se']"),
    (['nl'], 'official', 'bf16', 'drop --amp'),
])
def test_against_official_rejects_what_it_cannot_compare(names, against, amp, message, capsys):
    import torch
    from nonlocal_book.cli import _bench_official
    with pytest.raises(SystemExit) as e: _bench_official(names, against, 8, 2, 4, 1, 1, torch.device('cpu'), amp, False, 0)
    assert e.value.code == 2 and message in capsys.readouterr().err


def test_every_compared_operator_equals_its_transcription_in_float64():
    from nonlocal_book.results.official import COMPARED, check_equal
    small = {'nl': (8, 2, 4), 'bat': (16, 1, 7), 'bat3d': (32, 4, 7), 'rnl': (128, 1, 3), 'cgd': (8, 2, 3),
             'cgd_frame': (8, 2, 3), 'a2': (8, 2, 3), 'gta': (32, 4, 3)}
    assert sorted(small) == sorted(COMPARED)
    for name, (c, t, s) in small.items():
        assert check_equal(name, c, t, s) < 1e-10 < 1e-6 < check_equal(name, c, t, s, perturb=1e-3), name
