"""Check the site without Quarto: build what nbdev feeds Quarto (the processed notebooks in `_proc/`) in a scratch copy,
then test it, and optionally render a few pages to HTML with nbconvert.

    python tools/site_check.py                      # process every notebook in a scratch copy, check, print problems
    python tools/site_check.py --render index,05_a2 # also execute and render those pages to HTML (into --out)

Side effects: none outside the scratch folder. `nbdev_proc_nbs` / `nbdev_docs` would first try to install Quarto (with
`sudo`) and, through nbdev's doc preparation, touch the active environment; this script calls only nbdev's notebook
processor (`nbdev.serve.proc_nbs`) in a copy of the repository, with that copy first on `PYTHONPATH`.

The checks (`check` returns them as a list of problems; tests/test_site.py asserts it is empty):
- every notebook has a processed page;
- every page carries its own "Open in Colab" badge (nbdev's front matter processing drops anything in the title cell, so
  the badge lives in the next cell);
- each operator page shows the *source* of its literal reference, its fast (einops) form and its block class
  (`#| exports`, not just the `show_doc` signature that `#| export` leaves);
- the sidebar lists every chapter once, under six parts in order: Foundations, Operators, Models, Data, Training, Results;
- no internal link is broken: links between chapters (`05_a2.ipynb`, `a2.html`), links to the site's own pages
  (nbdev's doc links, `https://<user>.github.io/<repo>/<page>.html`) and links to files in `nbs/`."""
from __future__ import annotations
import argparse, configparser, json, os, re, shutil, subprocess, sys, tempfile, time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PARTS = ['Foundations', 'Operators', 'Models', 'Data', 'Training', 'Results']
# what each operator page must show as source: its literal reference(s), its fast form(s), its block
LESSON = {
    '01_nonlocal': ['def nl_literal(', 'def nl_attend(', 'class NLBlock('],
    '02_bat': ['def bat_literal(', 'def bilinear_transform(', 'class BATBlock('],
    '03_rnl': ['def region_literal(', 'def region_aggregate(', 'def rnl_literal(', 'def rnl_attend(', 'class RNLBlock('],
    '04_cgd': ['def cgd_literal(', 'def cgd_compact(', 'class CGDBlock('],
    '05_a2': ['def a2_literal(', 'def a2_left(', 'def a2_right(', 'class A2Block('],
    '06_gta': ['def gta_mix_literal(', 'def gta_mix(', 'def region_gta_literal(', 'class GTABlock('],
}
LINK = re.compile(r'\]\(\s*<?([^)\s>]+)>?(?:\s+"[^"]*")?\s*\)|href="([^"]+)"')
HIDING = re.compile(r'^#\|\s*(hide|echo:\s*false|include:\s*false)\s*$', re.M)


def settings(root=ROOT) -> dict:
    c = configparser.ConfigParser(delimiters=['=']); c.read(root / 'settings.ini')
    return dict(c['DEFAULT'])


def part_of(name: str) -> str:
    "The book's part for a chapter file name: 00 Foundations, 01–09 Operators, 1x Models, 2x Data, 3x Training, 4x Results."
    n = int(name[:2])
    return 'Foundations' if n == 0 else 'Operators' if n < 10 else PARTS[n // 10 + 1]


def chapters(nbs: Path) -> list[str]:
    return sorted(p.stem for p in nbs.glob('*.ipynb') if not p.name.startswith('_'))


def page_name(stem: str) -> str:
    "The page nbdev/Quarto make of a notebook: the numeric prefix goes (`05_a2` -> `a2`)."
    return re.sub(r'^\d+[a-z]?_', '', stem)


def badge_url(name: str, cfg: dict) -> str:
    return f"https://colab.research.google.com/github/{cfg['user']}/{cfg['repo']}/blob/{cfg['branch']}/nbs/{name}.ipynb"


def sidebar_yml(nbs: Path) -> str:
    "The sidebar Quarto reads (nbs/sidebar.yml): the index, then each part with its chapters in order."
    names = [n for n in chapters(nbs) if n != 'index']
    out = ['website:', '  sidebar:', '    contents:', '      - index.ipynb']
    for p in PARTS:
        out += [f'      - section: {p}', '        contents:'] + [f'          - {n}.ipynb' for n in names if part_of(n) == p]
    return '\n'.join(out) + '\n'


def scratch_copy(dest: Path, root: Path = ROOT) -> Path:
    "Copy the repository's tracked and unignored files (what a clone plus local edits holds) into `dest`."
    files = subprocess.run(['git', 'ls-files', '-co', '--exclude-standard', '-z'], cwd=root, capture_output=True,
                           check=True).stdout.decode().split('\0')
    for f in filter(None, files):
        src = root / f
        if src.is_file():
            (dest / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / f)
    return dest


def process(copy: Path, workers: int = 2) -> Path:
    "Run nbdev's notebook processor in `copy` (nothing else of nbdev_docs); returns the `_proc` folder."
    env = {**os.environ, 'PYTHONPATH': str(copy) + os.pathsep + os.environ.get('PYTHONPATH', ''), 'MPLBACKEND': 'Agg'}
    subprocess.run([sys.executable, '-c', f'from nbdev.serve import proc_nbs; proc_nbs(n_workers={workers})'], cwd=copy,
                   env=env, check=True, stdout=subprocess.DEVNULL)
    return copy / '_proc'


def _cells(path: Path) -> list:
    return json.loads(path.read_text(encoding='utf-8'))['cells']


def _src(cell) -> str:
    return ''.join(cell['source']) if isinstance(cell['source'], list) else cell['source']


def shown_code(cells) -> str:
    "The source of the code cells a reader sees on the page."
    return '\n'.join(_src(c) for c in cells if c['cell_type'] == 'code' and not HIDING.search(_src(c)))


def sidebar_parts(sidebar_yml: Path) -> list[tuple[str, list[str]]]:
    "[(part, [chapter stems])] from a Quarto sidebar file (top-level entries under the part ''), without a YAML library."
    parts, current = [('', [])], None
    for line in sidebar_yml.read_text(encoding='utf-8').splitlines():
        m = re.match(r'\s*- section:\s*"?([^"]+?)"?\s*$', line)
        if m: parts.append((m.group(1), [])); continue
        m = re.match(r'\s*-\s*(?:href:\s*)?"?([\w./-]+\.ipynb)"?\s*$', line)
        if m: parts[-1][1].append(Path(m.group(1)).stem)
    return parts


def check(proc: Path, nbs: Path, cfg: dict | None = None) -> list[str]:
    "Every problem found in the processed site `proc` (made from `nbs`); empty when the site is right."
    cfg = cfg or settings(nbs.parent)
    problems, names = [], chapters(nbs)
    site = f"https://{cfg['user']}.github.io/{cfg['repo']}"
    pages = {page_name(n) for n in names} | {'index'}
    for name in names:
        page = proc / f'{name}.ipynb'
        if not page.exists(): problems.append(f'{name}: no processed page'); continue
        cells = _cells(page)
        md = '\n'.join(_src(c) for c in cells if c['cell_type'] == 'markdown')
        if badge_url(name, cfg) not in md or 'colab-badge.svg' not in md:
            problems.append(f'{name}: no Open-in-Colab badge for nbs/{name}.ipynb on the page')
        code = shown_code(cells)
        for want in LESSON.get(name, []):
            if want not in code: problems.append(f'{name}: the page does not show the source of `{want[:-1]}`')
        for m in LINK.finditer(md):
            target = (m.group(1) or m.group(2)).strip()
            problem = broken(target, nbs, site, pages)
            if problem: problems.append(f'{name}: broken link {target} ({problem})')
    sidebar = proc / 'sidebar.yml'
    if not sidebar.exists(): problems.append('no sidebar.yml: the sidebar is not grouped')
    else:
        parts = sidebar_parts(sidebar)
        if [p for p, _ in parts[1:]] != PARTS: problems.append(f'sidebar parts are {[p for p, _ in parts[1:]]}, not {PARTS}')
        listed = [n for _, ns in parts for n in ns]
        for n in names:
            if listed.count(n) != 1: problems.append(f'sidebar lists {n} {listed.count(n)} times')
        for p, ns in parts[1:]:
            for n in ns:
                if n in names and part_of(n) != p: problems.append(f'sidebar puts {n} under {p}, its number says {part_of(n)}')
            if ns != sorted(ns): problems.append(f'sidebar part {p} is not in the chapters\' order: {ns}')
    return problems


def broken(target: str, nbs: Path, site: str, pages: set) -> str:
    "Why an internal link is broken ('' when it is fine or external)."
    if target.startswith(site + '/'):
        path = target[len(site) + 1:].split('#')[0]
        stem = path[:-5] if path.endswith('.html') else path
        return '' if not stem or stem in pages else f'no page {stem}.html on the site'
    if re.match(r'^[a-z]+:', target) or target.startswith('#'): return ''
    path = target.split('#')[0].split('?')[0]
    if not path: return ''
    f = (nbs / path)
    if f.exists(): return ''
    if f.suffix == '.html':
        stem = f.stem
        if stem in pages or any((nbs / f'{n}.ipynb').exists() for n in chapters(nbs) if page_name(n) == stem): return ''
    return 'no such file in nbs/'


def render(copy: Path, stems: list[str], out: Path) -> dict:
    "Execute `stems` in the copy (so they have outputs), process them, convert each page to HTML in `out`; returns checks."
    import nbconvert, nbformat
    env = {**os.environ, 'PYTHONPATH': str(copy), 'MPLBACKEND': 'Agg'}
    t0 = time.time()
    subprocess.run([sys.executable, 'tools/run_nbs.py', '--fast', *[f'nbs/{s}.ipynb' for s in stems]], cwd=copy, env=env, check=True)
    proc = process(copy)
    out.mkdir(parents=True, exist_ok=True)
    report = {}
    for s in stems:
        nb = nbformat.read(proc / f'{s}.ipynb', as_version=4)
        html, _ = nbconvert.HTMLExporter().from_notebook_node(nb)
        (out / f'{page_name(s)}.html').write_text(html, encoding='utf-8')
        report[s] = dict(figures=html.count('src="data:image/png;base64'), maths=len(re.findall(r'\$\$|\\\(|\\\[|\$[^$\s]', html)),
                         mathjax='MathJax' in html or 'katex' in html.lower(), badge='colab-badge.svg' in html, kb=len(html) // 1024)
    report['seconds'] = round(time.time() - t0)
    return report


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--render', default='', help='comma-separated notebook stems to execute and render to HTML (e.g. index,05_a2)')
    ap.add_argument('--out', default='', help='folder for the rendered HTML (default: a temporary folder, kept)')
    ap.add_argument('--write-sidebar', action='store_true', help='write nbs/sidebar.yml from the chapters and stop')
    args = ap.parse_args(argv)
    if args.write_sidebar:
        (ROOT / 'nbs' / 'sidebar.yml').write_text(sidebar_yml(ROOT / 'nbs'), encoding='utf-8')
        print('wrote nbs/sidebar.yml'); return 0
    with tempfile.TemporaryDirectory() as tmp:
        copy = scratch_copy(Path(tmp) / 'repo')
        t0 = time.time()
        proc = process(copy)
        problems = check(proc, copy / 'nbs')
        print(f'processed {len(chapters(copy / "nbs"))} notebooks in {time.time() - t0:.0f}s; {len(problems)} problem(s)')
        for p in problems: print('  -', p)
        ok = not problems
        if args.render:
            out = Path(args.out or tempfile.mkdtemp(prefix='nlb-site-'))
            report = render(copy, args.render.split(','), out)
            print(f'rendered to {out}: {json.dumps(report)}')
            for s in args.render.split(','):
                r = report[s]
                if not (r['mathjax'] and r['maths'] and r['badge']): print(f'  - {s}: maths or badge missing in HTML'); ok = False
                if s != 'index' and not r['figures']: print(f'  - {s}: no figure in HTML'); ok = False
    print('site check:', 'passed' if ok else 'FAILED')
    return 0 if ok else 1


if __name__ == '__main__':
    sys.exit(main())
