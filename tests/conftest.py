import os, sys
# Tests import the working tree's library, also from a git worktree or a fresh clone without an editable install.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault('MPLBACKEND', 'Agg')
if os.environ.get('PYTEST_XDIST_WORKER'):
    # pytest -n: one process per core already (pytest.ini), so each keeps to one thread (two threads on a shared core
    # wait for each other at every parallel op)
    import torch
    torch.set_num_threads(1)
