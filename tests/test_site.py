"""The site, as nbdev feeds it to Quarto: processed in a scratch copy by tools/site_check.py, then checked.

The first tests prove the checker can fail (a missing badge, an operator page showing only signatures, a broken link,
a sidebar out of order); the last one runs it on the real book."""
import json, shutil, sys
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / 'tools'))
import site_check as sc

CFG = sc.settings()
SITE = f"https://{CFG['user']}.github.io/{CFG['repo']}"


def _nb(path: Path, cells):
    path.write_text(json.dumps({'cells': [{'cell_type': t, 'source': s, 'metadata': {}, **({'outputs': []} if t == 'code' else {})}
                                          for t, s in cells], 'metadata': {}, 'nbformat': 4, 'nbformat_minor': 5}))


def _badge(name): return f"[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]({sc.badge_url(name, CFG)})"


@pytest.fixture
def tiny(tmp_path):
    "A two-chapter book (notation, NL) and its 'processed' copy, correct: check() finds nothing."
    nbs, proc = tmp_path / 'nbs', tmp_path / '_proc'
    nbs.mkdir(); proc.mkdir()
    for d in (nbs, proc):
        _nb(d / '00_notation.ipynb', [('markdown', _badge('00_notation')), ('markdown', 'See [the NL chapter](01_nonlocal.ipynb).')])
        _nb(d / '01_nonlocal.ipynb', [('markdown', _badge('01_nonlocal')),
                                      ('markdown', f'Back to [`to_video`]({SITE}/notation.html#to_video) and [it](notation.html).'),
                                      ('code', '#| exports\ndef nl_literal(q):\n    pass\ndef nl_attend(q): pass\nclass NLBlock(): pass')])
    (proc / 'sidebar.yml').write_text('website:\n  sidebar:\n    contents:\n' + ''.join(
        f'      - section: {p}\n        contents:\n' + (f'          - {n}.ipynb\n' if n else '')
        for p, n in zip(sc.PARTS, ['00_notation', '01_nonlocal', '', '', '', ''])))
    return nbs, proc


def test_checker_passes_a_correct_book(tiny):
    assert sc.check(tiny[1], tiny[0], CFG) == []


def test_checker_finds_a_missing_badge(tiny):
    nbs, proc = tiny
    _nb(proc / '00_notation.ipynb', [('markdown', '# no badge')])
    assert sc.check(proc, nbs, CFG) == ['00_notation: no Open-in-Colab badge for nbs/00_notation.ipynb on the page']


def test_checker_finds_an_operator_page_without_its_source(tiny):
    nbs, proc = tiny
    _nb(proc / '01_nonlocal.ipynb', [('markdown', _badge('01_nonlocal')), ('code', '#| echo: false\nshow_doc(nl_literal)'),
                                     ('code', 'def nl_attend(q): pass\nclass NLBlock(): pass')])
    assert sc.check(proc, nbs, CFG) == ['01_nonlocal: the page does not show the source of `def nl_literal`']


@pytest.mark.parametrize('link', ['02_bat.ipynb', 'bat.html#anchor', f'{SITE}/bat.html#BATBlock', 'figures/missing.svg'])
def test_checker_finds_a_broken_link(tiny, link):
    nbs, proc = tiny
    _nb(proc / '00_notation.ipynb', [('markdown', _badge('00_notation')), ('markdown', f'See [there]({link}).')])
    problems = sc.check(proc, nbs, CFG)
    assert len(problems) == 1 and problems[0].startswith(f'00_notation: broken link {link}'), problems


def test_checker_accepts_external_and_anchor_links(tiny):
    nbs, proc = tiny
    _nb(proc / '00_notation.ipynb', [('markdown', _badge('00_notation')),
                                     ('markdown', '[paper](https://arxiv.org/abs/1711.07971), [below](#the-block), [NL](01_nonlocal.ipynb#the-block)')])
    assert sc.check(proc, nbs, CFG) == []


def test_checker_finds_a_sidebar_out_of_order(tiny):
    nbs, proc = tiny
    text = (proc / 'sidebar.yml').read_text()
    (proc / 'sidebar.yml').write_text(text.replace('section: Foundations', 'section: X').replace('section: Operators', 'section: Foundations')
                                      .replace('section: X', 'section: Operators'))
    problems = sc.check(proc, nbs, CFG)
    assert any(p.startswith('sidebar parts are') for p in problems), problems
    assert any('sidebar puts 00_notation under Operators' in p for p in problems), problems


def test_parts_follow_the_chapter_numbers():
    assert [sc.part_of(n) for n in ['00_notation', '03_rnl', '10_backbones', '22_synthetic', '33_script', '45_beyond']] == \
        ['Foundations', 'Operators', 'Models', 'Data', 'Training', 'Results']


def test_committed_sidebar_is_the_generated_one():
    "nbs/sidebar.yml lists every chapter under its part; `python tools/site_check.py --write-sidebar` regenerates it."
    assert (ROOT / 'nbs' / 'sidebar.yml').read_text() == sc.sidebar_yml(ROOT / 'nbs')


def _status():
    import subprocess
    return subprocess.run(['git', 'status', '--porcelain', '--ignored'], cwd=ROOT, capture_output=True, text=True, check=True).stdout


@pytest.fixture(scope='module')
def processed(tmp_path_factory):
    before = _status()
    copy = sc.scratch_copy(tmp_path_factory.mktemp('site') / 'repo')
    return sc.process(copy), copy / 'nbs', before


def test_the_book_processed_for_quarto(processed):
    "Every page has its badge, the operator pages show their literal, fast and block sources, the sidebar has the six parts, no link is broken."
    proc, nbs, _ = processed
    assert sc.check(proc, nbs, CFG) == []
    assert sorted(p.stem for p in proc.glob('*.ipynb')) == sc.chapters(nbs)


def test_processing_leaves_the_repository_alone(processed):
    "Processing happens in the copy: the repository's files (ignored ones included: no _proc/, no sidebar.yml rewrite) are as they were."
    assert _status() == processed[2]
