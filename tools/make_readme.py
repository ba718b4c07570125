"""Write README.md from nbs/index.ipynb without Quarto (nbdev_readme needs the Quarto CLI).

Markdown cells are copied; the title cell's `> summary` stays a quote; code cells are shown as ```python blocks unless
they carry `#| hide` (or another directive that keeps them off the site); their outputs are left out. Links to chapters
(`](01_nonlocal.ipynb)`) get the `nbs/` prefix so that they work on GitHub.
Run `python tools/make_readme.py` after editing nbs/index.ipynb; `python tools/make_readme.py --check` exits 1 when stale."""
import json, re, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CHAPTER_LINK = re.compile(r'\]\((\w+\.ipynb)\)')     # the site resolves chapter links itself; README.md sits one folder up
HIDDEN = re.compile(r'^#\|\s*(hide|include:\s*false|echo:\s*false|export|exporti|default_exp)\b', re.M)


def render(nb_path=ROOT / 'nbs' / 'index.ipynb') -> str:
    nb = json.loads(Path(nb_path).read_text(encoding='utf-8'))
    parts = ['<!-- Generated from nbs/index.ipynb by tools/make_readme.py: edit the notebook, not this file. -->']
    for cell in nb['cells']:
        src = ''.join(cell['source']).strip('\n')
        if not src: continue
        if cell['cell_type'] == 'markdown': parts.append(CHAPTER_LINK.sub(r'](nbs/\1)', src))
        elif cell['cell_type'] == 'code' and not HIDDEN.search(src): parts.append(f'```python\n{src}\n```')
    return '\n\n'.join(parts) + '\n'


if __name__ == '__main__':
    text, out = render(), ROOT / 'README.md'
    if '--check' in sys.argv:
        ok = out.exists() and out.read_text(encoding='utf-8') == text
        print('README.md is up to date' if ok else 'README.md is stale: run python tools/make_readme.py')
        sys.exit(0 if ok else 1)
    out.write_text(text, encoding='utf-8')
    print(f'wrote {out.relative_to(ROOT)} ({len(text.splitlines())} lines)')
