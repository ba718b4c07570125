"""Issue 18: nothing silently wrong, nothing lost. Bad videos, one-clip batches, damaged checkpoints, kills at any moment,
thread defaults, run folders used from another directory, launch and mismatch paths, every operator from the CLI,
and dtype errors. Each test fails on the code before the fix."""
import json, os, subprocess, sys
from pathlib import Path
import pytest
import torch
import nonlocal_book.core as core
import nonlocal_book.train.learner as L                   # new names are read as L.name: on older code each test fails alone
from nonlocal_book.core import get_operator, list_operators, seed_everything
from nonlocal_book.train.learner import Callback, CheckpointCB, Learner, MetricsCB, ToyClips, atomic_save, read_history, toy_model

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_cli import ENV, ROOT, cli, cli_here, stub                                   # noqa: E402


@pytest.fixture(scope='module')
def tiny_set(tmp_path_factory):
    d = tmp_path_factory.mktemp('syn') / 'set'
    r = cli('nlb_synthetic', '--out', str(d), '--size', '16', '--frames', '8', '--per_class', '2', '--val_per_class', '1')
    assert r.returncode == 0, r.stderr[-2000:]
    return d


def damaged_copy(src, dst, n_train=2, n_val=1):
    "A copy of a synthetic set with the first `n_train` training and `n_val` validation videos cut to 64 bytes."
    import shutil
    shutil.copytree(src, dst)
    bad = []
    for split, n in (('train', n_train), ('val', n_val)):
        for p in sorted((dst / split).rglob('*.mp4'))[:n]:
            p.write_bytes(p.read_bytes()[:64]); bad.append(str(p))
    return bad


TINY = ['--frames', '4', '--width', '4', '--quiet', '--test_clips', '1']


# --- bad videos -----------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize('workers', [0, 2])
def test_bad_videos_are_reported_and_excluded_in_every_split_with_any_workers(tmp_path, tiny_set, workers, capsys):
    from nonlocal_book.cli import run_training, evaluate_run
    bad = damaged_copy(tiny_set, tmp_path / 'set')
    row = run_training(data=str(tmp_path / 'set'), out=str(tmp_path / 'run'), frames=4, width=4, epochs=1, batch_size=4,
                       test_clips=1, progress=False, workers=workers)
    report = json.loads((tmp_path / 'run' / 'bad_videos.json').read_text())
    assert sorted(report['train']) == sorted(bad[:2]) and list(report['valid']) == bad[2:]
    assert row['bad videos'] == 3 and json.loads((tmp_path / 'run' / 'results.json').read_text())['bad videos'] == 3
    assert read_history(tmp_path / 'run' / 'metrics.jsonl')[-1]['bad_videos'] == 1      # the validation score left one out
    assert '2 training and 1 validation videos are unreadable' in capsys.readouterr().err       # and it is said, not only written
    r = evaluate_run(str(tmp_path / 'run'), clips=1)
    assert r['bad_videos'] == 1 and list(r['bad']) == bad[2:]


def test_a_bad_validation_video_is_not_replaced_by_its_neighbour(tmp_path, tiny_set):
    from nonlocal_book.data.synthetic import synthetic_dataset
    bad = damaged_copy(tiny_set, tmp_path / 'set', n_train=0, n_val=1)
    va = synthetic_dataset(tmp_path / 'set', 'val', frames=4, stride=2)
    i = [Path(it.path).name for it in va.items].index(Path(bad[0]).name)
    got = [va[j] for j in range(len(va))]
    assert isinstance(got[i], core.BadItem) and sum(isinstance(g, core.BadItem) for g in got) == 1     # not another video
    batch, report = core.collate_good(got)
    assert len(batch[1]) == len(va) - 1 and [b.index for b in report] == [i]


def test_every_video_bad_says_how_many_there_are(tmp_path):
    from nonlocal_book.data.video import VideoDataset
    for i in range(3): (tmp_path / f'{i}.mp4').write_bytes(b'junk' * 20)
    ds = VideoDataset([(tmp_path / f'{i}.mp4', 0) for i in range(3)], frames=2, stride=1)
    learn = Learner(toy_model(), ds, ds, batch_size=4, device='cpu')
    with pytest.raises(L.UnreadableData, match='3 of 3 training videos are unreadable'): learn.fit()


# --- a batch of one clip ----------------------------------------------------------------------------------------------------

class Clips(torch.utils.data.Dataset):
    def __init__(self, n): self.x, self.y = torch.randn(n, 3, 4, 16, 16), torch.arange(n) % 3
    def __len__(self): return len(self.y)
    def __getitem__(self, i): return self.x[i], int(self.y[i])


@pytest.mark.parametrize('op', ['se_add', 'se_rnl', 'cg_rnl'])
def test_a_training_set_of_size_1_mod_the_batch_trains(tmp_path, op):
    from nonlocal_book.cli import build_model
    model, _ = build_model(op, classes=3, width=4, frames=4, size=16)
    learn = Learner(model, Clips(9), Clips(3), batch_size=4, epochs=1, device='cpu', cbs=[CheckpointCB(tmp_path)])
    assert learn.steps_per_epoch == 2                     # 9 = 2·4 + 1: the one-clip batch is dropped
    learn.fit()
    assert L.read_checkpoint(tmp_path / 'last.pt')['epoch'] == 1


def test_a_crash_before_any_checkpoint_does_not_point_to_one(tmp_path, capsys):
    class Boom(Callback):
        def after_loss(self): raise RuntimeError('boom')
    learn = Learner(toy_model(), ToyClips(8), batch_size=4, device='cpu', cbs=[CheckpointCB(tmp_path), Boom()])
    with pytest.raises(RuntimeError): learn.fit()
    err = capsys.readouterr().err
    assert 'no checkpoint was written yet' in err and 'keeps the last clean position' not in err


# --- checkpoints ------------------------------------------------------------------------------------------------------------

def toy(folder, epochs=2, cbs=(), **ckpt):
    seed_everything(0)
    return Learner(toy_model(), ToyClips(24, augment=True), ToyClips(8, seed=1), epochs=epochs, batch_size=8, lr=0.05,
                   device='cpu', cbs=[MetricsCB(Path(folder) / 'metrics.jsonl'), CheckpointCB(folder, **ckpt), *cbs])


@pytest.mark.parametrize('damage', ['empty', 'truncated', 'random'])
def test_a_damaged_checkpoint_is_one_line_and_falls_back_to_the_previous(tmp_path, damage, capsys):
    toy(tmp_path).fit()                                   # two epochs: last.pt (epoch 2) and last.prev.pt (epoch 1)
    last = tmp_path / 'last.pt'
    assert L.previous_path(last).exists()
    data = last.read_bytes()
    last.write_bytes({'empty': b'', 'truncated': data[: len(data) // 2], 'random': os.urandom(5000)}[damage])
    with pytest.raises(L.CheckpointError) as e: L.read_checkpoint(last)
    msg = str(e.value)
    assert '\n' not in msg and 'weights_only=False' not in msg and str(last) in msg
    learn = toy(tmp_path, epochs=3).load(last)
    assert learn.loaded_from == L.previous_path(last) and learn.epoch == 1
    assert 'resuming from the previous checkpoint' in capsys.readouterr().err


def test_the_cli_gives_one_line_for_a_damaged_checkpoint(tmp_path, tiny_set):
    out = tmp_path / 'run'
    assert cli('nlb_train', '--data', str(tiny_set), '--out', str(out), '--epochs', '1', *TINY).returncode == 0
    (out / 'last.pt').write_bytes(os.urandom(3000))       # only one checkpoint: nothing to fall back to
    for r in (cli('nlb_eval', '--out', str(out)), cli('nlb_train', '--data', str(tiny_set), '--out', str(out), '--epochs', '2', '--resume', *TINY)):
        assert r.returncode == 2 and 'Traceback' not in r.stderr and 'weights_only=False' not in r.stderr, r.stderr[-2000:]
        assert len(r.stderr.strip().splitlines()) == 1 and 'last.pt' in r.stderr, r.stderr


def test_no_temporary_file_outlives_a_failed_or_killed_write(tmp_path, monkeypatch):
    (tmp_path / '.last.pt.tmp12345').write_bytes(b'half a checkpoint')       # a kill -9 during the write
    toy(tmp_path, epochs=1).fit()
    assert L.stale_temporaries(tmp_path) == []
    def broken_save(obj, f): f.write(b'x'); raise OSError('disk full')
    monkeypatch.setattr(torch, 'save', broken_save)
    with pytest.raises(OSError): atomic_save({'a': 1}, tmp_path / 'last.pt')
    assert L.stale_temporaries(tmp_path) == [] and L.read_checkpoint(tmp_path / 'last.pt')['epoch'] == 1


KILL_AFTER_METRICS = '''
import os, sys
sys.path.insert(0, {root!r})
from nonlocal_book.train.learner import *
from nonlocal_book.core import seed_everything
class Kill(Callback):
    order = 0                                         # after MetricsCB wrote the epoch's line, before CheckpointCB saves
    def after_epoch(self):
        if self.learn.epoch == 1: os._exit(9)
seed_everything(0)
Learner(toy_model(), ToyClips(24, augment=True), ToyClips(8, seed=1), epochs=3, batch_size=8, lr=0.05, device='cpu',
        cbs=[MetricsCB({out!r} + '/metrics.jsonl'), CheckpointCB({out!r}, every=2), Kill()]).fit()
'''


def test_metrics_agree_with_the_checkpoint_after_a_kill_between_them(tmp_path):
    p = subprocess.run([sys.executable, '-c', KILL_AFTER_METRICS.format(root=str(ROOT), out=str(tmp_path))], env=ENV,
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 9, p.stderr[-2000:]
    assert [r['epoch'] for r in read_history(tmp_path / 'metrics.jsonl')] == [1, 2]    # epoch 2's line, not its checkpoint
    toy(tmp_path, epochs=3).load(tmp_path / 'last.pt').fit()
    assert [r['epoch'] for r in read_history(tmp_path / 'metrics.jsonl')] == [1, 2, 3]


def test_checkpoints_are_time_based_by_default(tmp_path):
    assert CheckpointCB(tmp_path).minutes == 5.0                      # a kill costs minutes, not an epoch
    class BoomAt(Callback):
        def after_loss(self):
            if self.learn.batch == 2: raise RuntimeError('killed')   # mid-step: the after_fit save is skipped
    learn = toy(tmp_path, epochs=1, cbs=[BoomAt()], minutes=1e-9)
    with pytest.raises(RuntimeError): learn.fit()
    assert L.read_checkpoint(tmp_path / 'last.pt')['batch'] == 2


def test_resume_of_a_finished_run_keeps_its_results(tmp_path, tiny_set):
    out = tmp_path / 'run'
    common = ['--data', str(tiny_set), '--out', str(out), '--epochs', '1', *TINY]
    assert cli('nlb_train', *common).returncode == 0
    before = (out / 'results.json').read_text()
    r = cli('nlb_train', *common, '--resume')
    assert r.returncode == 0 and 'finished run' in r.stdout, r.stderr[-2000:]
    assert (out / 'results.json').read_text() == before


# --- threads ----------------------------------------------------------------------------------------------------------------

def test_thread_default_is_half_the_cores_and_overridable(monkeypatch):
    from nonlocal_book.cli import pick_threads
    monkeypatch.delenv('OMP_NUM_THREADS', raising=False)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count()
    assert pick_threads() == max(1, cores // 2)
    assert pick_threads(3) == 3
    monkeypatch.setenv('OMP_NUM_THREADS', '1')
    assert pick_threads() == 1
    assert '--threads' in cli('nlb_train', '--help').stdout


# --- run folders --------------------------------------------------------------------------------------------------------------

def test_a_run_folder_works_from_any_directory(tmp_path, tiny_set):
    import shutil
    shutil.copytree(tiny_set, tmp_path / 'a' / 'data')
    env = {**ENV, 'PYTHONPATH': str(ROOT)}
    run = lambda cwd, name, *args: subprocess.run([sys.executable, str(stub(name, tmp_path)), *args], cwd=cwd, env=env,
                                                  capture_output=True, text=True, timeout=600)
    r = run(tmp_path / 'a', 'nlb_train', '--data', 'data', '--out', 'run', '--epochs', '1', *TINY)
    assert r.returncode == 0, r.stderr[-2000:]
    cfg = json.loads((tmp_path / 'a' / 'run' / 'config.json').read_text())
    assert cfg['data'] == str((tmp_path / 'a' / 'data').resolve())
    (tmp_path / 'b').mkdir()
    ev = run(tmp_path / 'b', 'nlb_eval', '--out', str(tmp_path / 'a' / 'run'), '--clips', '1')
    assert ev.returncode == 0 and 'video top-1' in ev.stdout, ev.stderr[-2000:]
    res = run(tmp_path / 'b', 'nlb_train', '--data', str(tmp_path / 'a' / 'data'), '--out', str(tmp_path / 'a' / 'run'),
              '--epochs', '2', '--resume', *TINY)                                 # --resume from another directory
    assert res.returncode == 0 and 'resumed at epoch 2' in res.stdout, res.stderr[-2000:]
    cfg['data'] = 'data'                                    # a config written before paths were stored absolute
    (tmp_path / 'a' / 'run' / 'config.json').write_text(json.dumps(cfg))
    ev = run(tmp_path / 'b', 'nlb_eval', '--out', str(tmp_path / 'a' / 'run'), '--clips', '1')
    assert ev.returncode == 0, ev.stderr[-2000:]           # found above the run folder
    cfg['data'] = 'gone'
    (tmp_path / 'a' / 'run' / 'config.json').write_text(json.dumps(cfg))
    ev = run(tmp_path / 'b', 'nlb_eval', '--out', str(tmp_path / 'a' / 'run'))
    assert ev.returncode == 2 and 'relative to the directory the run was started in' in ev.stderr and 'Traceback' not in ev.stderr


# --- launch and mismatch paths ----------------------------------------------------------------------------------------------

def test_the_documented_torchrun_command_works(tmp_path, tiny_set):
    exe = tmp_path / 'nlb_train'
    exe.write_text(f'#!{sys.executable}\nimport sys\nfrom nonlocal_book.cli import train\nsys.exit(train())\n'); exe.chmod(0o755)
    env = {**ENV, 'OMP_NUM_THREADS': '1', 'MASTER_ADDR': '127.0.0.1', 'PATH': f"{tmp_path}{os.pathsep}{os.environ['PATH']}"}
    torchrun = [sys.executable, '-m', 'torch.distributed.run']             # what the torchrun script runs
    r = subprocess.run([*torchrun, '--standalone', '--nproc_per_node', '2', '--no-python', 'nlb_train', '--data', str(tiny_set),
                        '--out', str(tmp_path / 'run'), '--epochs', '1', '--batch_size', '2', *TINY], env=env,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert L.read_checkpoint(tmp_path / 'run' / 'last.pt')['world'] == 2
    doc = json.loads((ROOT / 'nbs' / '32_distributed.ipynb').read_text())
    assert any('torchrun --nproc_per_node 2 --no-python nlb_train' in ''.join(c['source']) for c in doc['cells'])


def test_resuming_a_two_rank_checkpoint_with_one_process_is_one_line(tmp_path, tiny_set):
    out = tmp_path / 'run'
    common = ['--data', str(tiny_set), '--out', str(out), *TINY]
    assert cli('nlb_train', *common, '--epochs', '1').returncode == 0
    st = torch.load(out / 'last.pt', weights_only=True); st['world'] = 2; torch.save(st, out / 'last.pt')
    r = cli('nlb_train', *common, '--epochs', '2', '--resume')
    assert r.returncode == 2 and 'torchrun --nproc_per_node 2' in r.stderr and 'Traceback' not in r.stderr, r.stderr[-2000:]


@pytest.mark.parametrize('args, message', [
    (['--workers', '-1'], '--workers must be >= 0'),
    (['--ckpt_every', '-5'], '--ckpt_every must be >= 0'),
    (['--ckpt_minutes', '-1'], '--ckpt_minutes must be >= 0'),
    (['--threads', '-2'], '--threads must be >= 0'),
    (['--epochs', '0'], '--epochs must be >= 1, got 0'),
    (['--batch_size', '0'], '--batch_size must be >= 1, got 0'),
    (['--frames', '1'], 'needs --frames >= 2'),
])
def test_bad_values_name_their_option(tmp_path, args, message):
    r = cli_here('nlb_train', '--out', str(tmp_path / 'run'), '--quiet', '--data', str(tmp_path / 'none'), *args)
    assert r.returncode == 2 and message in r.stderr and 'Traceback' not in r.stderr, r.stderr[-2000:]
    assert 'temporal_pool' not in r.stderr and '--op_options' not in r.stderr      # no hint to an option that cannot help


def test_frames_beyond_the_videos_are_refused_not_looped(tmp_path, tiny_set):
    r = cli('nlb_train', '--data', str(tiny_set), '--out', str(tmp_path / 'run'), '--frames', '64', '--width', '4', '--quiet')
    assert r.returncode == 2 and 'spans 127 frames but the videos have 8' in r.stderr and '--frames <= 4' in r.stderr, r.stderr[-2000:]


def test_eval_on_data_with_another_class_count_is_one_line(tmp_path, tiny_set):
    out = tmp_path / 'run'
    assert cli('nlb_train', '--data', str(tiny_set), '--out', str(out), '--epochs', '1', *TINY).returncode == 0
    other = tmp_path / 'other'
    assert cli('nlb_synthetic', '--out', str(other), '--size', '16', '--frames', '8', '--per_class', '1', '--val_per_class', '1').returncode == 0
    classes = (other / 'classes.txt').read_text().split()
    (other / 'classes.txt').write_text('\n'.join(classes[:4]) + '\n')
    for split in ('train', 'val'):                          # keep the rows of the first four classes only
        lines = (other / f'{split}.csv').read_text().splitlines()
        (other / f'{split}.csv').write_text('\n'.join([lines[0]] + [l for l in lines[1:] if l.split(',')[0] in classes[:4]]) + '\n')
    r = cli('nlb_eval', '--out', str(out), '--data', str(other))
    assert r.returncode == 2 and 'has 4 classes but the run' in r.stderr and 'trained on 10' in r.stderr and 'Traceback' not in r.stderr, r.stderr[-2000:]


# --- every operator from the CLI --------------------------------------------------------------------------------------------

@pytest.mark.parametrize('name', list_operators())
def test_every_registered_operator_builds_and_runs_at_the_main_jobs_shapes(name):
    from nonlocal_book.cli import build_model
    model, places = build_model(name, classes=10, width=8, frames=8, size=32)      # nlb_train's defaults
    assert places
    model.train()
    with torch.no_grad(): assert model(torch.randn(2, 3, 8, 32, 32)).shape == (2, 10)


def test_bat_trains_from_the_cli_with_its_defaults_and_says_what_it_chose(tmp_path, tiny_set):
    r = cli('nlb_train', '--data', str(tiny_set), '--out', str(tmp_path / 'run'), '--op', 'bat', '--epochs', '1', *TINY)
    assert r.returncode == 0, r.stderr[-2000:]
    assert 'bat fitted to 16×16 clips: s=4 in res3, res4' in r.stdout, r.stdout          # 8 and 4 pixels there


# --- dtypes -------------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize('name', list_operators())
def test_integer_and_float64_input_get_a_clear_error(name):
    spec = get_operator(name)
    block = spec.build(spec.channels)                                          # at the registry's test shapes
    x = torch.randn(2, spec.channels, spec.frames, spec.size, spec.size)
    with pytest.raises(TypeError, match=r'x\.float\(\)'): block(x.to(torch.uint8))
    with pytest.raises(TypeError, match=r'has torch\.float32 weights but got torch\.float64'): block(x.double())
    assert block.double()(x.double()).dtype == torch.float64                  # a block converted to float64 takes it



# --- empty batches ------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize('name', list_operators())
def test_an_empty_batch_gives_the_empty_shape(name):
    "dnl, gta, gta_pixel, gta_region and tape raised ZeroDivisionError on a batch of 0 (checked on the code before the fix)."
    spec = get_operator(name)
    block = spec.build(spec.channels)
    x = torch.randn(0, spec.channels, spec.frames, spec.size, spec.size)
    for mode in (block.train, block.eval):
        mode()
        with torch.no_grad(): assert block(x).shape == x.shape
