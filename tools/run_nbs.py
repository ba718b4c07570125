"""Execute notebooks in place so the site shows their outputs (plots, tables): `python tools/run_nbs.py nbs/01_nonlocal.ipynb ...`.

nbdev renders the outputs stored in the notebooks (it does not execute them), so chapters are executed before a release.
Cells marked `#| eval: false` are skipped, and so are cells flagged `gpu` (they need a CUDA GPU and the internet) unless
`--gpu` is given; slow cells run unless `--fast` is given. Stops at the first failing cell. Run `nbdev_clean` afterwards."""
import os, sys, time
from pathlib import Path
from execnb.shell import CaptureShell
from execnb.nbio import read_nb, write_nb
from nbdev.process import extract_directives

os.environ.setdefault('MPLBACKEND', 'Agg')


SKIP_FLAGS = {'gpu', 'notest'}


def no_eval(cell, skip=SKIP_FLAGS):
    "True for cells that must not run (`#| eval: false`, or flagged with one of `skip`)."
    if cell.cell_type != 'code': return True
    d = getattr(cell, 'directives_', {}) or {}
    return ('eval:' in d and str(d['eval:'][0]).lower() == 'false') or bool(skip & set(d))


def run(path: Path, skip=SKIP_FLAGS):
    nb = read_nb(path)
    for c in nb.cells:
        if c.cell_type == 'code': c.directives_ = extract_directives(c, remove=False)
    shell = CaptureShell()
    shell.set_path(path.parent.resolve())
    t0 = time.time()
    shell.run_all(nb, exc_stop=True, preproc=lambda c: no_eval(c, skip))
    for c in nb.cells: c.pop('directives_', None)
    write_nb(nb, path)
    print(f'{path}: executed in {time.time() - t0:.0f}s')


if __name__ == '__main__':
    skip = SKIP_FLAGS - {'gpu'} if '--gpu' in sys.argv else set(SKIP_FLAGS)
    if '--fast' in sys.argv: skip |= {'slow'}
    for p in sys.argv[1:]:
        if p not in ('--gpu', '--fast'): run(Path(p), skip)
