"""The notebook test runner must be able to fail: a notebook with a failing cell makes `nbdev_test` exit non-zero."""
import json, shutil, subprocess, sys, textwrap
from pathlib import Path
import pytest

NBDEV_TEST = shutil.which('nbdev_test')


def notebook(*sources):
    cells = [{'cell_type': 'code', 'metadata': {}, 'source': s, 'execution_count': None, 'outputs': []} for s in sources]
    return {'cells': cells, 'metadata': {}, 'nbformat': 4, 'nbformat_minor': 5}


@pytest.fixture
def project(tmp_path):
    (tmp_path / 'settings.ini').write_text(textwrap.dedent('''\
        [DEFAULT]
        lib_name = canary
        lib_path = canary
        nbs_path = nbs
        doc_path = _docs
        repo = canary
        user = canary
        version = 0.0.1
        branch = main
        tst_flags = slow
        recursive = True
        '''))
    (tmp_path / 'nbs').mkdir()
    return tmp_path


def run(project, name, *sources, flags=()):
    path = project / 'nbs' / name
    path.write_text(json.dumps(notebook(*sources)))
    return subprocess.run([NBDEV_TEST, '--path', str(path), *flags], cwd=project, capture_output=True, text=True, timeout=300)


@pytest.mark.skipif(NBDEV_TEST is None, reason='nbdev is not installed (pip install -e ".[dev]")')
def test_failing_cell_fails_nbdev_test(project):
    bad = run(project, 'bad.ipynb', 'x = 1', 'assert x == 2, "canary"')
    assert bad.returncode != 0, bad.stdout + bad.stderr
    assert 'bad.ipynb' in bad.stdout + bad.stderr


@pytest.mark.skipif(NBDEV_TEST is None, reason='nbdev is not installed (pip install -e ".[dev]")')
def test_passing_notebook_passes_and_slow_cells_are_skipped(project):
    good = run(project, 'good.ipynb', 'x = 1', 'assert x == 1')
    assert good.returncode == 0, good.stdout + good.stderr
    # a failing cell flagged `slow` is skipped by default and runs with --flags slow
    assert run(project, 'slow.ipynb', '#| slow\nassert False').returncode == 0
    assert run(project, 'slow2.ipynb', '#| slow\nassert False', flags=('--flags', 'slow')).returncode != 0
