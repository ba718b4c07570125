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


def stub(name, folder=Path(os.environ.get('TMPDIR', '/tmp'))) -> Path:
    "A script that runs console script `name` exactly as pip's generated entry point does (from the working tree)."
    mod, fn = entry_points()[name]
    path = Path(folder) / f'nlb_stub_{name}_{os.getpid()}.py'                # per process: pytest -n workers share /tmp
    path.write_text(f'import sys\nfrom {mod} import {fn}\nsys.exit({fn}())\n')
    return path


def cli(name, *args, timeout=600):
    "Run console script `name` through its stub."
    return subprocess.run([sys.executable, str(stub(name)), *args], env=ENV, capture_output=True, text=True, timeout=timeout)


def cli_here(name, *args):
    """Console script `name`'s entry function called in this process, as its entry point calls it (`sys.argv` set, stdout
    and stderr captured, `SystemExit`'s code kept): the argument checks, without a new interpreter's seconds of imports
    per case. An exception that escapes is raised here, so a traceback fails the test as it would in a subprocess. `cli`
    runs the real entry point in a subprocess; the end-to-end tests use it, and .ci/run runs every script's --help."""
    import contextlib, importlib, io, torch
    mod, fn = entry_points()[name]
    func = getattr(importlib.import_module(mod), fn)
    out, err, code = io.StringIO(), io.StringIO(), 0
    argv, threads = sys.argv, torch.get_num_threads()
    sys.argv = [name, *args]
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try: func()
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
                if isinstance(e.code, str): print(e.code, file=sys.stderr)
    finally: sys.argv = argv; torch.set_num_threads(threads)            # a script may set the thread count
    return subprocess.CompletedProcess([name, *args], code, out.getvalue(), err.getvalue())


@pytest.mark.parametrize('name', ['nlb_train', 'nlb_eval', 'nlb_subset', 'nlb_synthetic', 'nlb_bench', 'nlb_demo'])
def test_help_explains_every_option(name):
    r = cli_here(name, '--help')
    assert r.returncode == 0, r.stderr
    opts = re.findall(r'--(\w+)', r.stdout)
    assert opts and 'usage' in r.stdout.lower()
    if name == 'nlb_train':
        for o in ('op', 'preset', 'backbone', 'depth', 'pretrained', 'data', 'videos', 'crop', 'epochs', 'batch_size', 'lr', 'amp',
                  'op_weight_decay', 'workers', 'out', 'resume', 'seed'):
            assert o in opts, f'--{o} missing from nlb_train --help'
    if name == 'nlb_subset':
        for o in ('annotations', 'videos', 'out', 'classes', 'train', 'val', 'seed', 'mini', 'mini_lists'): assert o in opts, o
    if name == 'nlb_bench':
        for o in ('operators', 'baseline', 'channels', 'frames', 'size', 'batch', 'device', 'amp', 'forward_only'): assert o in opts, o


@pytest.mark.parametrize('args, message', [
    (['--backbone', 'vgg'], '--backbone must be one of'),
    (['--op', 'nope'], "unknown operator 'nope'"),
    (['--preset', 'nope'], "unknown preset 'nope'"),
    (['--epochs', '0'], 'must be >= 1'),
    (['--amp', 'fp8'], '--amp must be one of'),
    (['--lr', '-1'], '--lr must be positive'),
    (['--data', '/nonexistent/folder'], 'expected'),
    (['--epochs', 'many'], "invalid int value: 'many'"),
    (['--depth', '7'], '--depth must be 0'),
    (['--pretrained', 'imagenet'], '--pretrained needs --depth'),
    (['--depth', '18'], 'res3 has 2 blocks'),
    (['--dropout', '1.5'], '--dropout must be in [0, 1)'),
])
def test_bad_arguments_get_one_line_not_a_traceback(tmp_path, args, message):
    r = cli_here('nlb_train', '--out', str(tmp_path / 'run'), '--quiet', *args, '--data', str(tmp_path / 'none')) if '--data' not in args \
        else cli_here('nlb_train', '--out', str(tmp_path / 'run'), '--quiet', *args)
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


@pytest.mark.parametrize('name, args, message', [
    ('nlb_bench', ['--operators', 'nl,nope'], "unknown operator(s) ['nope']"),
    ('nlb_bench', ['--device', 'cuda:7'], '--device cuda:7'),
    ('nlb_bench', ['--amp', 'fp8'], '--amp must be one of'),
    ('nlb_bench', ['--size', '0'], 'must be >= 1'),
    ('nlb_subset', [], '--annotations is required'),
    ('nlb_subset', ['--annotations', '/nonexistent'], 'expected a folder or CSV files'),
    ('nlb_eval', ['--crops', '2'], '--crops must be 1 (centre) or 3'),
])
def test_other_scripts_refuse_bad_arguments_in_one_line(tmp_path, name, args, message):
    r = cli_here(name, *args)
    assert r.returncode == 2, (r.returncode, r.stdout[-500:], r.stderr[-2000:])
    assert message in r.stderr and 'Traceback' not in r.stderr, r.stderr[-2000:]


@pytest.mark.skipif(__import__('importlib').util.find_spec('torchvision') is not None, reason='torchvision is installed here')
def test_pretrained_imagenet_without_torchvision_fails_fast(tmp_path):
    r = cli('nlb_train', '--depth', '50', '--pretrained', 'imagenet', '--data', str(tmp_path / 'none'), '--out', str(tmp_path / 'run'))
    assert r.returncode == 2 and 'needs torchvision' in r.stderr and 'Traceback' not in r.stderr, r.stderr[-2000:]


def test_bench_prints_ratios_to_the_baseline_measured_in_the_same_run():
    r = cli('nlb_bench', '--operators', 'cgd,a2', '--channels', '32', '--frames', '2', '--size', '8', '--reps', '1', '--device', 'cpu')
    assert r.returncode == 0, r.stderr[-3000:]
    table = r.stdout.split('---')[-1]
    rows = {l.split()[0]: l.split() for l in table.strip().splitlines() if l.strip() and not l.startswith('-')}
    assert set(rows) == {'nl', 'cgd', 'a2'}                                   # the baseline is added and measured
    assert rows['nl'][4] == '1.00' and rows['nl'][6] == '1.00'                 # its own ratios are 1
    assert float(rows['cgd'][8]) < 1                                            # CGD keeps less for backward than NL


def test_subset_then_train_then_eval_from_the_command_line(tmp_path):
    sys.path.insert(0, str(ROOT))
    from nonlocal_book.data.kinetics import fake_kinetics, fake_kinetics_videos, read_kinetics_csv
    csvs = fake_kinetics(tmp_path / 'ann', classes=4, per_class=3, val_per_class=1, seed=5)
    rows = read_kinetics_csv(csvs['train']) + read_kinetics_csv(csvs['val'])
    fake_kinetics_videos(rows[:-1], tmp_path / 'videos', frames=8, size=32, class_folders=False)   # one val video never downloaded
    r = cli('nlb_subset', '--annotations', str(tmp_path / 'ann'), '--videos', str(tmp_path / 'videos'), '--out',
            str(tmp_path / 'sub'), '--classes', '3', '--train', '3', '--val', '1')
    assert r.returncode == 0, r.stderr[-3000:]
    assert 'subset: 3 classes, 9 train + 3 val videos' in r.stdout
    missing_class = rows[-1].label
    assert missing_class not in json.loads((tmp_path / 'sub' / 'subset.json').read_text())['classes']
    too_many = cli('nlb_subset', '--annotations', str(tmp_path / 'ann'), '--videos', str(tmp_path / 'videos'), '--out',
                   str(tmp_path / 'sub4'), '--classes', '4', '--train', '3', '--val', '1')
    assert too_many.returncode == 2 and 'only 3 classes have 3 train and 1 val videos' in too_many.stderr
    t = cli('nlb_train', '--data', str(tmp_path / 'sub'), '--out', str(tmp_path / 'run'), '--crop', '32', '--frames', '4',
            '--epochs', '1', '--batch_size', '3', '--width', '4', '--test_clips', '1', '--quiet', '--op', 'cgd',
            '--op_weight_decay', '4e-5')
    assert t.returncode == 0, t.stderr[-3000:]
    assert 'Kinetics-format folder' in t.stdout and '3 classes' in t.stdout
    ev = cli('nlb_eval', '--out', str(tmp_path / 'run'), '--clips', '2', '--crops', '3')
    assert ev.returncode == 0 and '2 clips × 3 crop(s)' in ev.stdout, ev.stderr[-3000:]


def test_subset_from_mini_kinetics_lists_offline(tmp_path):
    "--mini with --mini_lists: the subset's videos all come from the Mini-Kinetics-200 id lists, each split from its own list."
    import numpy as np
    sys.path.insert(0, str(ROOT))
    from nonlocal_book.cli import build_subset
    from nonlocal_book.data.kinetics import fake_kinetics, fake_mini_kinetics_lists, read_kinetics_csv, read_id_list
    fr = np.random.default_rng(1)
    counts = fr.integers(400, 421, 200).tolist() + fr.integers(40, 81, 200).tolist()     # 200 big classes, 200 small ones
    k = fake_kinetics(tmp_path / 'ann', classes=400, per_class=counts, val_per_class=30, seed=1)
    lists = fake_mini_kinetics_lists(read_kinetics_csv(k['train']), read_kinetics_csv(k['val']), tmp_path)
    info = build_subset(tmp_path / 'ann', tmp_path / 'sub', classes='5', train=4, val=2, mini=True, mini_lists=str(tmp_path))
    assert 'Mini-Kinetics-200 (80,000 train + 5,000 val' in info['source']
    for split in ('train', 'val'):
        ids = {r.youtube_id for r in read_kinetics_csv(tmp_path / 'sub' / f'{split}.csv')}
        assert len(ids) == 5 * (4 if split == 'train' else 2)
        assert ids <= set(read_id_list(lists[split])), split
    big = {f'action number {c:03d}' for c in range(3, 200)} | {'passing American football (in game)', 'making a "cake", quickly', 'tying bow tie'}
    assert set(info['classes']) <= big                                       # only Mini-Kinetics' (the 200 large) classes
    (tmp_path / 'short').mkdir(); (tmp_path / 'short' / 'train_ytid_list.txt').write_text('abc\n')
    with pytest.raises(ValueError, match='--mini: .*truncated'):
        build_subset(tmp_path / 'ann', tmp_path / 'sub2', mini=True, mini_lists=str(tmp_path / 'short'))


@pytest.mark.parametrize('args, message', [
    (['--op', 'bat', '--op_options', 's=7'], 'bat cannot run on 4×16×16 clips in this backbone: block size s=7 must divide'),
    (['--op', 'bat', '--op_options', 's4'], '--op_options wants key=value pairs'),
    (['--op', 'bat', '--op_options', 'zz=4'], "unexpected keyword argument 'zz'"),
])
def test_operator_that_cannot_run_at_this_size_is_one_line(tmp_path, tiny_set, args, message):
    r = cli('nlb_train', '--data', str(tiny_set), '--out', str(tmp_path / 'run'), '--frames', '4', '--width', '4', '--quiet', *args)
    assert r.returncode == 2 and message in r.stderr and 'Traceback' not in r.stderr, r.stderr[-2000:]


def test_operator_options_reach_the_blocks_and_the_evaluation(tmp_path, tiny_set):
    out = tmp_path / 'run'
    r = cli('nlb_train', '--data', str(tiny_set), '--out', str(out), '--frames', '4', '--width', '4', '--quiet', '--epochs', '1',
            '--test_clips', '1', '--op', 'bat', '--op_options', 's=4,resize=block')
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads((out / 'config.json').read_text())['op_options'] == 's=4,resize=block'
    ev = cli('nlb_eval', '--out', str(out), '--clips', '1')
    assert ev.returncode == 0 and 'video top-1' in ev.stdout, ev.stderr[-3000:]
