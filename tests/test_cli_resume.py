"""The console scripts' long runs, in their own file so that pytest -n (one file per worker, --dist loadfile) runs them beside
test_cli.py's other cases: train then --resume to more epochs, and a SIGTERM to one process or to one torchrun rank."""
import json, os, subprocess, sys
from pathlib import Path
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_cli import ENV, cli, stub, tiny_set                             # noqa: E402,F401  (tiny_set: the fixture)

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


def test_sigterm_stops_cleanly_and_resume_ends_where_an_uninterrupted_run_ends(tmp_path, tiny_set):
    "A scheduler's SIGTERM mid-run: exit 143 with a message, a checkpoint at a step boundary, and --resume finishes bit for bit."
    import signal, time, torch
    common = ['--data', str(tiny_set), '--frames', '4', '--batch_size', '2', '--width', '4', '--quiet', '--test_clips', '1', '--epochs', '6']
    straight = cli('nlb_train', *common, '--out', str(tmp_path / 'straight'))
    assert straight.returncode == 0, straight.stderr[-3000:]
    out = tmp_path / 'run'
    p = subprocess.Popen([sys.executable, str(stub('nlb_train', tmp_path)), *common, '--out', str(out)], env=ENV,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while not (out / 'metrics.jsonl').exists() and p.poll() is None and time.time() < deadline: time.sleep(0.02)
    p.send_signal(signal.SIGTERM)                       # during epoch 2: a step, the evaluation, or between them
    stdout, stderr = p.communicate(timeout=300)
    assert p.returncode == 143, (p.returncode, stderr[-3000:])
    assert 'SIGTERM: stopped at epoch' in stderr and '--resume' in stderr and 'Traceback' not in stderr, stderr[-3000:]
    saved = torch.load(out / 'last.pt', weights_only=True)
    assert (saved['epoch'], saved['batch']) < (6, 0)
    r = cli('nlb_train', *common, '--out', str(out), '--resume')
    assert r.returncode == 0, r.stderr[-3000:]
    a = torch.load(tmp_path / 'straight' / 'last.pt', weights_only=True)['model']
    b = torch.load(out / 'last.pt', weights_only=True)['model']
    assert all(torch.equal(a[k], b[k]) for k in a), 'the SIGTERM-ed and resumed run must end with the uninterrupted weights'


def _children(pid):
    "Child pids of `pid` (Linux /proc)."
    kids = []
    for task in Path(f'/proc/{pid}/task').iterdir():
        kids += [int(k) for k in (task / 'children').read_text().split()]
    return kids


@pytest.mark.skipif(not Path('/proc/self/task').exists(), reason='needs Linux /proc to find the ranks')
def test_sigterm_to_one_torchrun_rank_stops_both_at_the_same_step_and_resume_is_exact(tmp_path, tiny_set):
    import signal, time, torch
    script = stub('nlb_train', tmp_path)
    env = {**ENV, 'OMP_NUM_THREADS': '1', 'MASTER_ADDR': '127.0.0.1'}
    common = ['--data', str(tiny_set), '--frames', '4', '--batch_size', '2', '--width', '4', '--quiet', '--test_clips', '1', '--epochs', '5']
    run = lambda out, *extra: [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2', str(script),
                               *common, '--out', str(out), *extra]
    straight = subprocess.run(run(tmp_path / 'straight'), env=env, capture_output=True, text=True, timeout=600)
    assert straight.returncode == 0, straight.stderr[-3000:]
    out = tmp_path / 'run'
    p = subprocess.Popen(run(out), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while not (out / 'metrics.jsonl').exists() and p.poll() is None and time.time() < deadline: time.sleep(0.02)
    ranks = {}
    for kid in _children(p.pid):
        env_vars = dict(kv.split('=', 1) for kv in Path(f'/proc/{kid}/environ').read_text().split('\0') if '=' in kv)
        if 'RANK' in env_vars: ranks[int(env_vars['RANK'])] = kid
    assert sorted(ranks) == [0, 1], ranks
    os.kill(ranks[1], signal.SIGTERM)                  # only rank 1 is told to stop
    stdout, stderr = p.communicate(timeout=300)
    assert p.returncode != 0, 'torchrun reports the stop'
    assert 'a signal on another rank: stopped at epoch' in stderr, stderr[-3000:]   # rank 0 stopped with it, and said so
    saved = torch.load(out / 'last.pt', weights_only=True)
    assert saved['world'] == 2 and (saved['epoch'], saved['batch']) < (5, 0)
    resumed = subprocess.run(run(out, '--resume'), env=env, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a = torch.load(tmp_path / 'straight' / 'last.pt', weights_only=True)['model']
    b = torch.load(out / 'last.pt', weights_only=True)['model']
    assert all(torch.equal(a[k], b[k]) for k in a), 'a DDP run stopped by SIGTERM on one rank and resumed must end as the uninterrupted one'
