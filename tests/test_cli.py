"""The console scripts as a user meets them: --help, clear one-line errors (exit 2), a real run, and --resume."""
import json, os, re, shutil, subprocess, sys
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, 'PYTHONPATH': f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", 'MPLBACKEND': 'Agg', 'OMP_NUM_THREADS': '2'}


def entry_points() -> dict:
    "Console scripts declared in settings.ini: name -> (module, function)."
    import configparser
    cfg = configparser.ConfigParser(); cfg.read(ROOT / 'settings.ini')
    pairs = [s.split('=') for s in cfg['DEFAULT']['console_scripts'].split()]
    return {n: tuple(target.split(':')) for n, target in pairs}


def cli(name, *args, timeout=600, tmp=Path(os.environ.get('TMPDIR', '/tmp'))):
    "Run console script `name` through a stub file, exactly as pip's generated entry point does (from the working tree)."
    mod, fn = entry_points()[name]
    stub = tmp / f'nlb_stub_{name}.py'
    stub.write_text(f'import sys\nfrom {mod} import {fn}\nsys.exit({fn}())\n')
    return subprocess.run([sys.executable, str(stub), *args], env=ENV, capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize('name', ['nlb_train', 'nlb_eval', 'nlb_synthetic', 'nlb_demo'])
def test_help_explains_every_option(name):
    r = cli(name, '--help')
    assert r.returncode == 0, r.stderr
    opts = re.findall(r'--(\w+)', r.stdout)
    assert opts and 'usage' in r.stdout.lower()
    if name == 'nlb_train':
        for o in ('op', 'preset', 'backbone', 'data', 'epochs', 'batch_size', 'lr', 'amp', 'workers', 'out', 'resume', 'seed'):
            assert o in opts, f'--{o} missing from nlb_train --help'


@pytest.mark.parametrize('args, message', [
    (['--backbone', 'vgg'], '--backbone must be one of'),
    (['--op', 'nope'], "unknown operator 'nope'"),
    (['--preset', 'nope'], "unknown preset 'nope'"),
    (['--epochs', '0'], 'must be >= 1'),
    (['--amp', 'fp8'], '--amp must be one of'),
    (['--lr', '-1'], '--lr must be positive'),
    (['--data', '/nonexistent/folder'], 'expected'),
    (['--epochs', 'many'], "invalid int value: 'many'"),
])
def test_bad_arguments_get_one_line_not_a_traceback(tmp_path, args, message):
    r = cli('nlb_train', '--out', str(tmp_path / 'run'), '--quiet', *args, '--data', str(tmp_path / 'none')) if '--data' not in args \
        else cli('nlb_train', '--out', str(tmp_path / 'run'), '--quiet', *args)
    assert r.returncode == 2, (r.returncode, r.stdout[-500:], r.stderr[-2000:])
    assert message in r.stderr and 'Traceback' not in r.stderr, r.stderr[-2000:]


@pytest.fixture(scope='module')
def tiny_set(tmp_path_factory):
    d = tmp_path_factory.mktemp('syn') / 'set'
    r = cli('nlb_synthetic', '--out', str(d), '--size', '16', '--frames', '8', '--per_class', '2', '--val_per_class', '1')
    assert r.returncode == 0, r.stderr[-2000:]
    return d


def test_resume_without_checkpoint_and_overwrite_are_refused(tmp_path, tiny_set):
    r = cli('nlb_train', '--data', str(tiny_set), '--out', str(tmp_path / 'run'), '--resume', '--quiet')
    assert r.returncode == 2 and 'no checkpoint' in r.stderr


def test_train_then_resume_to_more_epochs(tmp_path, tiny_set):
    out = tmp_path / 'run'
    common = ['--data', str(tiny_set), '--out', str(out), '--frames', '4', '--batch_size', '4', '--width', '4', '--quiet', '--test_clips', '1']
    r = cli('nlb_train', *common, '--epochs', '1')
    assert r.returncode == 0, r.stderr[-3000:]
    assert 'clip top-1' in r.stdout and 'MMACs/clip' in r.stdout                 # the results table
    for f in ('config.json', 'metrics.jsonl', 'last.pt', 'curves.png', 'results.json'): assert (out / f).exists(), f
    again = cli('nlb_train', *common, '--epochs', '1')
    assert again.returncode == 2 and 'already holds a run' in again.stderr
    other = cli('nlb_train', *common, '--epochs', '2', '--resume', '--lr', '0.5')
    assert other.returncode == 2 and 'differ from the saved run' in other.stderr
    r2 = cli('nlb_train', *common, '--epochs', '2', '--resume')
    assert r2.returncode == 0, r2.stderr[-3000:]
    assert 'resumed at epoch 2' in r2.stdout
    lines = (out / 'metrics.jsonl').read_text().splitlines()
    assert [json.loads(l)['epoch'] for l in lines] == [1, 2]
    ev = cli('nlb_eval', '--out', str(out), '--clips', '2')
    assert ev.returncode == 0 and 'video top-1' in ev.stdout, ev.stderr[-3000:]
    missing = cli('nlb_eval', '--out', str(tmp_path / 'nothing'))
    assert missing.returncode == 2 and 'holds no finished run' in missing.stderr
