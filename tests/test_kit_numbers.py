"""The teacher's kit agrees with the notebooks: every number ANSWERS.md and TEACHING.md quote from a notebook is in that
notebook, and every cell ANSWERS.md cites exists, is not the questionnaire, and lies in the section the citation names.

What counts as quoted, and where it must be found:
- ANSWERS.md: every number in an answer (its citation, the numbers of cells, sections, notebooks and questions, and
  code in backticks aside) must appear in the notebook the answer belongs to: in its outputs (as printed, or rounded
  from a longer number, or a fraction printed as a percentage) or in its text (prose and code: most of an answer
  retells what the cells say). "about 5,000" may round a printed 4,991 to its last non-zero digit. A number from
  elsewhere must name its source in the same parentheses, e.g.
  "(README)" or "(results/best-cpu-stroke.json)", and is then skipped. A number in a sentence that says "committed
  run" must be in the cells the answer cites. A small number (3, 128) is likely to be in a notebook by chance, so the
  check is strongest for the distinctive ones, such as measured speeds, times and scores.
- TEACHING.md's time table: in the column that says what takes the time, every time (`N s`, `N minutes`) must be in
  that notebook, unless the cell names its source in parentheses (README, results/, tests/nbrun.py ...). The
  top-to-bottom times come from `tools/execute_notebooks.py`'s runs, which the table's header says; they are not in
  the notebooks and are skipped.
Each failure says which number or cell, where in which file, and what the notebook has instead, so that a rerun of a
notebook shows at once what in the kit to update."""
import json, re
from pathlib import Path

import pytest
from conftest import ROOT

NOTEBOOKS = {p.name[:2]: p for p in sorted((ROOT / 'notebooks').glob('[0-9][0-9]_*.ipynb'))}
SOURCE = re.compile(r'\((?:[^()]*\b(?:README|results/|execute_notebooks|nbrun|measured with|compare_recipes)\b[^()]*)\)')
NUMBER = re.compile(r'(?<![\w.])\d{1,3}(?:,\d{3})+(?:\.\d+)?%?|(?<![\w.])\d+(?:\.\d+)?(?:e[+-]?\d+)?%?(?![\w])')


def cell_text(c, outputs=True):
    "A cell's source, and its outputs' text (stream, text/plain, text/html) if asked."
    text = ''.join(c['source'])
    if outputs:
        for o in c.get('outputs', []):
            text += '\n' + ''.join(o.get('text', ''))
            for kind in ('text/plain', 'text/html'): text += '\n' + ''.join(o.get('data', {}).get(kind, ''))
    return text


def forms(number):
    "The ways a number printed by a notebook may be quoted: as printed, rounded to fewer decimals, as a percentage."
    n = number.replace(',', '').rstrip('%')
    try: x = float(n)
    except ValueError: return {number}
    out = {number, n}
    decimals = len(n.split('.')[1]) if '.' in n and 'e' not in n else 0
    for d in range(decimals + 1):
        out.add(f'{x:.{d}f}'); out.add(f'{x:,.{d}f}')
        if 0 <= x <= 1: out.add(f'{100 * x:.{max(d - 2, 0)}f}')
    if 'e' in n: out |= {f'{x:.1e}', f'{x:.2e}', f'{x:.0e}'}
    return out


class Notebook:
    def __init__(self, path, only=None):
        "`only`: the numbers of the cells (1-based) to read numbers from; default all."
        self.path, self.cells = path, json.loads(path.read_text(encoding='utf-8'))['cells']
        self.numbers, self.values = set(), []
        for i, c in enumerate(self.cells, 1):
            if only is not None and i not in only: continue
            for m in NUMBER.findall(cell_text(c)):
                self.numbers |= forms(m)
                try: self.values.append(float(m.replace(',', '').rstrip('%')))
                except ValueError: pass
        self.heads = []  # per cell (1-based index - 1): the '## ' headings in force there
        current = []
        for c in self.cells:
            if c['cell_type'] == 'markdown':
                found = [l[3:].strip() for l in ''.join(c['source']).split('\n') if l.startswith('## ')]
                if found: current = found
            self.heads.append(current)

    def has(self, number, about=False):
        "Is `number` in the notebook? With `about`, a round number (5,000) may stand for one it rounds (4,991)."
        n = number.replace(',', '').rstrip('%')
        if {number, n, n.rstrip('0').rstrip('.') if '.' in n else n} & self.numbers: return True
        zeros = len(n) - len(n.rstrip('0')) if n.isdigit() else 0
        return about and zeros > 0 and any(round(v, -zeros) == int(n) for v in self.values)

    def what(self, i):
        "Cell i (1-based), in words."
        c = self.cells[i - 1]
        first = ''.join(c['source']).strip().split('\n')[0][:60]
        return f'cell {i} ({c["cell_type"]}: {first!r})'


@pytest.fixture(scope='module')
def notebooks():
    return {n: Notebook(p) for n, p in NOTEBOOKS.items()}


def answers():
    "ANSWERS.md as (notebook number, question number, line number, text of the answer)."
    out, nb, item = [], None, None
    for i, line in enumerate((ROOT / 'ANSWERS.md').read_text(encoding='utf-8').splitlines(), 1):
        if m := re.match(r'## (\d\d) · ', line): nb, item = m.group(1), None; continue
        if nb and (m := re.match(r'(\d+)\. (.*)', line)): item = [nb, int(m.group(1)), i, m.group(2)]; out.append(item); continue
        if item and line.startswith('   '): item[3] += ' ' + line.strip()
    return out


def cells(listing):
    "'8, 12 to 14' -> [8, 12, 13, 14]; '20 and 23' -> [20, 23]."
    out = []
    for part in re.split(r',\s*|\s+and\s+', listing.strip()):
        if m := re.fullmatch(r'(\d+) to (\d+)', part.strip()): out += range(int(m[1]), int(m[2]) + 1)
        elif part.strip().isdigit(): out.append(int(part))
    return out


CELLS = re.compile(r'\bcells? (\d+(?:(?:,\s*|\s+and\s+|\s+to\s+)\d+)*)', re.I)


def cited_problems(nb, where, text):
    "Every cell the answer names exists and is not the questionnaire; cells after a section's name lie in it."
    bad = []
    for m in CELLS.finditer(text):
        for i in cells(m[1]):
            if i > len(nb.cells): bad.append(f'{where}: cites cell {i}; {nb.path.name} has {len(nb.cells)} cells'); continue
            if ''.join(nb.cells[i - 1]['source']).startswith('## Questionnaire'):
                bad.append(f'{where}: cites cell {i}, which is now the questionnaire of {nb.path.name}')
    citation = re.match(r'\*(.*?)\*', text)
    for m in re.finditer(r'(Intro|[Ss]ection (\d+)|"([^"]+)")(?:,? \(?cells? ([\d ,andto]+)\)?)?', citation[1] if citation else ''):
        name, number, quoted, listed = m.groups()
        want = (lambda h: h.startswith(f'{number}.')) if number else (lambda h: h.startswith(quoted)) if quoted else None
        if want and not any(want(h) for hs in nb.heads for h in hs):
            bad.append(f'{where}: cites {name!s}, which is no section of {nb.path.name}'); continue
        for i in cells(listed or ''):
            if i > len(nb.cells): continue
            inside = not nb.heads[i - 1] if name == 'Intro' else any(want(h) for h in nb.heads[i - 1])
            if not inside:
                bad.append(f'{where}: cites {name} for {nb.what(i)}, which lies under {nb.heads[i - 1] or "no heading"}')
    return bad


def quoted_numbers(text):
    "The numbers an answer quotes: not those of its citation, of cells, sections, notebooks, questions, or code."
    text = re.sub(r'^\*.*?\*', ' ', text)                               # the citation
    text = re.sub(r'`[^`]*`', ' ', text)                                # code
    text = SOURCE.sub(' ', text)                                        # numbers whose source is named
    text = re.sub(r'\b(?:cells?|[Ss]ection|notebooks?|Q|question)\s+\d+(?:(?:,\s*|\s+and\s+|\s+to\s+)\d+)*', ' ', text)
    text = re.sub(r'\b\d+x\d+\b', lambda m: ' '.join(m[0].split('x')), text)   # 28x28: two numbers
    return [(m[0], text[:m.start()].endswith('about ')) for m in NUMBER.finditer(text)]


def test_answers_cite_cells_that_hold_what_they_say(notebooks):
    bad = []
    for nb, q, line, text in answers():
        if nb not in notebooks: bad.append(f'ANSWERS.md line {line}: answers for notebook {nb}, which does not exist'); continue
        bad += cited_problems(notebooks[nb], f'ANSWERS.md line {line} ({nb} Q{q})', text)
    assert not bad, '\n'.join(bad)


def test_answers_quote_numbers_their_notebook_has(notebooks):
    bad = []
    for nb, q, line, text in answers():
        if nb not in notebooks: continue
        for n, about in quoted_numbers(text):
            if not notebooks[nb].has(n, about):
                at = text.find(n)
                bad.append(f'ANSWERS.md line {line} ({nb} Q{q}): {n!r} in "...{text[max(0, at - 50):at + 30]}..." is not in '
                           f'{NOTEBOOKS[nb].name} (outputs or text)')
        bad += committed_problems(notebooks[nb], f'ANSWERS.md line {line} ({nb} Q{q})', text)
    assert not bad, '\n'.join(bad)


def committed_problems(nb, where, text):
    "Numbers of a sentence that says 'committed run' must be in the cells the answer cites."
    cited = {i for m in CELLS.finditer(text) for i in cells(m[1])}
    in_cells, bad = Notebook(nb.path, only=cited), []
    for sentence in re.split(r'(?<=[.;])\s', text):
        if 'committed run' not in sentence: continue
        for n, about in quoted_numbers(sentence):
            if nb.has(n, about) and not in_cells.has(n, about):
                bad.append(f'{where}: {n!r}, from the committed run, is in {nb.path.name} but not in the cells the '
                           f'answer cites ({", ".join(map(str, sorted(cited))) or "none"})')
    return bad


def teaching_rows():
    "TEACHING.md's time table: (line number, notebook number, cells of the row)."
    rows = []
    for i, line in enumerate((ROOT / 'TEACHING.md').read_text(encoding='utf-8').splitlines(), 1):
        if m := re.match(r'\| (\d\d) [^|]+\|', line): rows.append((i, m[1], [c.strip() for c in line.strip('|').split('|')]))
    return rows


def test_teaching_times_are_in_their_notebooks(notebooks):
    page = (ROOT / 'TEACHING.md').read_text(encoding='utf-8')
    header = next(l for l in page.splitlines() if l.startswith('| notebook |'))
    assert 'execute_notebooks' in page[page.index('## How long'):page.index(header)], \
        "TEACHING.md: the time table's source (tools/execute_notebooks.py's runs) must be named above it"
    column = [c.strip() for c in header.strip('|').split('|')].index('what takes the time')
    bad = []
    for line, nb, row in teaching_rows():
        what = SOURCE.sub(' ', row[column])
        for m in re.finditer(r'(\d[\d,.]*) (s|seconds|minutes?)\b', what):
            if not notebooks[nb].has(m[1]):
                bad.append(f'TEACHING.md line {line} (notebook {nb}): "{m[0]}" is not in {NOTEBOOKS[nb].name} (outputs or '
                           f'text); if it comes from elsewhere, name the source in parentheses beside it')
    assert not bad, '\n'.join(bad)


def test_the_checks_can_fail(tmp_path):
    "Each check, on a small notebook with a stale kit."
    import nbformat
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell('badge'), nbformat.v4.new_code_cell('setup'),
                                         nbformat.v4.new_markdown_cell('# 09 · Title'),
                                         nbformat.v4.new_markdown_cell('## 1. Train'),
                                         nbformat.v4.new_code_cell('fit()', outputs=[nbformat.v4.new_output(
                                             'stream', text='460 images/s, accuracy 0.98765\n')]),
                                         nbformat.v4.new_markdown_cell('## Questionnaire\n\n1. Why?')])
    p = tmp_path / '09_x.ipynb'; nbformat.write(nb, str(p))
    n = Notebook(p)
    assert n.has('460') and n.has('98.77%') and n.has('0.99') and n.has('98.8%') and not n.has('340')
    assert n.has('500', about=True) and not n.has('500') and not n.has('400', about=True)
    assert cited_problems(n, 'A', '*Section 1, cell 5.* Fine.') == []
    assert cited_problems(n, 'A', '*Section 1, cell 6.*') == ['A: cites cell 6, which is now the questionnaire of 09_x.ipynb',
                                                               "A: cites Section 1 for cell 6 (markdown: '## Questionnaire'), "
                                                               "which lies under ['Questionnaire']"]
    assert cited_problems(n, 'A', '*Cells 5 and 9.*') == ['A: cites cell 9; 09_x.ipynb has 6 cells']
    assert cited_problems(n, 'A', '*"The model", cell 5.*') == ['A: cites "The model", which is no section of 09_x.ipynb']
    assert cited_problems(n, 'A', '*Intro, cell 5.*')[0].startswith('A: cites Intro for cell 5')
    assert committed_problems(n, 'A', '*Section 1, cell 5.* In the committed run, 460 images/s.') == []
    assert committed_problems(n, 'A', '*Section 1, cell 4.* In the committed run, 460 images/s.') == [
        "A: '460', from the committed run, is in 09_x.ipynb but not in the cells the answer cites (4)"]
    assert quoted_numbers('*Section 1, cell 5.* about 340 images per second (cell 5), `lr=3e-3`, 28x28, notebook 04, '
                          '167 s (README), about 5,000') == [('340', True), ('28', False), ('28', False), ('5,000', True)]
