import os, sys
# Tests import the working tree's library, also from a git worktree or a fresh clone without an editable install.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault('MPLBACKEND', 'Agg')
