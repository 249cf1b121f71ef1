#!/usr/bin/env python
"""Keep every notebook's first two cells (badges, setup) in sync with `helpers.REPO_URL`, its outputs honest, and
its clean copy for practice up to date.

    python tools/nbsync.py          # rewrite the first two cells of notebooks/*.ipynb in place (outputs stay),
                                      # and write clean/*.ipynb
    python tools/nbsync.py --check  # exit 1 if a notebook or clean copy is out of sync, or outputs do not match code
    python tools/nbsync.py --strip  # also remove every output

A clean copy (clean/NN_name.ipynb, as the fastai book's clean/ folder) keeps every code cell without its outputs, and
of the prose only the headings and the questionnaire: run each cell and say what it does before you look it up.

Outputs are made by `tools/execute_notebooks.py` only: it records the run in the notebook's metadata (shown
under the badges) and a hash of each code cell's source in the cell's metadata, so a cell changed afterwards
is caught by `--check`.
"""
import argparse, hashlib, json, os, sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / 'scripts'))  # the helpers package, as the scripts use it
import helpers as h

NOTEBOOKS = h.ROOT / 'notebooks'
CLEAN = h.ROOT / 'clean'
CLONE = h.REPO_URL.rstrip('/').rsplit('/', 1)[1]

SETUP = f"""# Setup. On Colab or Kaggle: fetch this series from GitHub, then install the tested fastai and friends, keeping
# the platform's own PyTorch (scripts/hosted_setup.py; it stops with one clear message if anything fails).
# Everywhere: make the helpers package in scripts/ importable.
import os, subprocess, sys
COLAB, KAGGLE = 'google.colab' in sys.modules, 'KAGGLE_KERNEL_RUN_TYPE' in os.environ
if (COLAB or KAGGLE) and not os.path.exists('../scripts/hosted_setup.py'):  # first run, in /content or /kaggle/working
    if not os.path.exists('{CLONE}'):
        git = subprocess.run(['git', 'clone', '-q', '--depth', '1', '{h.REPO_URL}'],
                             capture_output=True, text=True)
        if git.returncode:
            fix = "turn on this notebook's Internet switch (Kaggle's settings panel)" if KAGGLE else 'check the network'
            raise RuntimeError(f'Could not fetch the series ({{" ".join(git.stderr.split())}}): {{fix}}, then run this cell again.')
    os.chdir('{CLONE}/notebooks')
sys.path.insert(0, os.path.abspath('../scripts'))
if COLAB or KAGGLE:
    import hosted_setup; hosted_setup.install()"""

# Kaggle's notebook metadata, asking for a GPU and the internet; where Kaggle ignores it, the setup cell says
# to switch the internet on.
KAGGLE = {'accelerator': 'gpu', 'isGpuEnabled': True, 'isInternetEnabled': True, 'language': 'python',
          'sourceType': 'notebook'}
KEPT = ('tags', 'source_hash')  # the cell metadata kept: test tags, and which source made the outputs
HASH_LEN = 16
QUESTIONNAIRE = '## Questionnaire'  # the heading from which a clean copy keeps the prose whole


def source_hash(source):
    "What `execute_notebooks.py` stores in each code cell's metadata: a hash of the source its outputs came from."
    text = ''.join(source) if isinstance(source, list) else source
    return 'sha256:' + hashlib.sha256(text.encode('utf-8')).hexdigest()[:HASH_LEN]


def badges(name, folder='notebooks'):
    path = f"{h.REPO_URL.split('github.com/')[1]}/blob/main/{folder}/{name}"
    return (f'[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]'
            f'(https://colab.research.google.com/github/{path}) '
            f'[![Open in Kaggle](https://kaggle.com/static/images/open-in-kaggle.svg)]'
            f'(https://kaggle.com/kernels/welcome?src=https://github.com/{path})')


def provenance(run):
    "The line under the badges that says where a notebook's outputs came from (`run`: its `kuzushiji` metadata)."
    names = {'python': 'Python', 'torch': 'torch', 'fastai': 'fastai', 'fastcore': 'fastcore', 'numpy': 'NumPy'}
    v = ', '.join(f'{names[k]} {run["versions"][k]}' for k in names if k in run['versions'])
    took = f' in {run["seconds"] // 60} min {run["seconds"] % 60} s, top to bottom' if 'seconds' in run else ''
    return (f'*The outputs below come from a {"run" if run.get("data") else "full-size run"} on '
            f'{run.get("data") or "the real data"} ({run["date"]}, '
            f'{run["hardware"]}; {v}), made by `tools/execute_notebooks.py`{took}.*')


def lines(text): return text.splitlines(keepends=True)


def synced(nb_path, strip=False):
    "The text `nb_path` should hold (see `canonical`)."
    return canonical(json.loads(nb_path.read_text(encoding='utf-8')), nb_path.name, strip)


def canonical(nb, name, strip=False):
    """Notebook `nb` (a dict) as it should be written: badge cell and setup cell canonical, cell metadata trimmed to
    `KEPT`; with `strip`, also without outputs, execution counts, source hashes and the record of the run."""
    run = None if strip else nb['metadata'].get('kuzushiji')
    cells = nb['cells']
    top = badges(name) + (f'\n\n{provenance(run)}' if run else '')
    cells[0] = {'cell_type': 'markdown', 'id': 'badge', 'metadata': {}, 'source': lines(top)}
    cells[1] = {'cell_type': 'code', 'execution_count': cells[1].get('execution_count'), 'id': 'setup',
                'metadata': cells[1].get('metadata', {}), 'outputs': cells[1].get('outputs', []), 'source': lines(SETUP)}
    for c in cells:
        if strip and c['cell_type'] == 'code': c['outputs'], c['execution_count'] = [], None
        c['metadata'] = {k: v for k, v in c.get('metadata', {}).items() if k in KEPT and not (strip and k == 'source_hash')}
    nb['metadata'] = {'kernelspec': {'display_name': 'Python 3', 'language': 'python', 'name': 'python3'},
                      'language_info': {'name': 'python'}, 'accelerator': 'GPU', 'colab': {'provenance': []},
                      'kaggle': KAGGLE, **({'kuzushiji': run} if run else {})}
    return json.dumps(nb, indent=1, ensure_ascii=False) + '\n'


def clean_copy(nb, name):
    """The clean copy of notebook `nb` (a dict, as `canonical` writes it): its code cells without outputs; of its
    markdown, the headings, and from the questionnaire's heading on (at the start of a cell or further down one, as
    in notebook 08) everything; badges and setup cell pointing at clean/."""
    cells = [{'cell_type': 'markdown', 'id': 'badge', 'metadata': {}, 'source': lines(
                badges(name, 'clean') + f'\n\n*A clean copy of [notebooks/{name}](../notebooks/{name}) for practice: its code '
                'without outputs, its prose cut to the headings and the questionnaire. Before you run a cell, say what it '
                'will do and why; then check in the full notebook.*')},
             {'cell_type': 'code', 'execution_count': None, 'id': 'setup', 'metadata': {}, 'outputs': [],
              'source': lines(SETUP.replace(f'{CLONE}/notebooks', f'{CLONE}/clean'))}]
    questions = False  # from the questionnaire's heading on, wherever it stands, the prose is kept whole
    for c in nb['cells'][2:]:
        text = ''.join(c['source'])
        if c['cell_type'] == 'code':
            cells.append({'cell_type': 'code', 'execution_count': None, 'id': c.get('id'), 'outputs': [],
                          'metadata': {k: v for k, v in c.get('metadata', {}).items() if k == 'tags'}, 'source': c['source']})
            continue
        before, heading, after = text.partition(QUESTIONNAIRE) if not questions else ('', '', text)
        if heading and before and not before.endswith('\n'): before, heading, after = text, '', ''  # not at a line's start
        questions = questions or bool(heading)
        keep = '\n\n'.join([line for line in before.split('\n') if line.startswith('#')] +
                           ([heading + after] if heading else [after] if after else []))
        if keep: cells.append({'cell_type': 'markdown', 'id': c.get('id'), 'metadata': {}, 'source': lines(keep)})
    meta = {k: v for k, v in nb['metadata'].items() if k != 'kuzushiji'}
    return json.dumps({**nb, 'cells': cells, 'metadata': meta}, indent=1, ensure_ascii=False) + '\n'


def unbacked(nb):
    """Why a notebook's outputs cannot be trusted to match its code ([] when they can): outputs with no record of
    a run by `execute_notebooks.py`, or code cells changed since that run."""
    code = [(i, c) for i, c in enumerate(nb['cells']) if c['cell_type'] == 'code']
    if 'kuzushiji' not in nb['metadata']:
        return [f'cell {i} has outputs not made by execute_notebooks.py' for i, c in code if c.get('outputs')]
    return [f'cell {i} changed after its outputs were made' for i, c in code
            if c.get('metadata', {}).get('source_hash') != source_hash(c['source'])]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    g = p.add_mutually_exclusive_group()
    g.add_argument('--check', action='store_true', help='change nothing; exit 1 if a notebook is out of sync')
    g.add_argument('--strip', action='store_true', help='also remove outputs and the record of the run')
    a = p.parse_args(argv)
    bad = []
    paths = sorted(NOTEBOOKS.glob('*.ipynb'))
    for path in paths:
        want = synced(path, strip=a.strip)
        clean, clean_want = CLEAN / path.name, clean_copy(json.loads(want), path.name)
        if a.check:
            why = unbacked(json.loads(path.read_text(encoding='utf-8')))
            if path.read_text(encoding='utf-8') != want: why.insert(0, 'first two cells or metadata out of sync')
            if not clean.exists() or clean.read_text(encoding='utf-8') != clean_want: why.append(f'clean/{path.name} out of date')
            bad += [f'{path.name}: {w}' for w in why]
            continue
        for file, text, did in ((path, want, 'stripped' if a.strip else 'synced'), (clean, clean_want, 'wrote clean copy')):
            if not file.exists() or file.read_text(encoding='utf-8') != text:
                file.parent.mkdir(exist_ok=True)
                tmp = file.with_name(file.name + '.tmp')
                tmp.write_text(text, encoding='utf-8'); os.replace(tmp, file)
                print(f'{did} {file.relative_to(h.ROOT)}')
    if a.check:
        extra = sorted(set(p.name for p in CLEAN.glob('*.ipynb')) - set(p.name for p in paths))
        bad += [f'clean/{n}: no notebook of that name (remove it)' for n in extra]
    if bad:
        print('\n'.join(bad) + '\nFix: python tools/nbsync.py (first two cells and clean copies), then python tools/execute_notebooks.py '
              'NOTEBOOK to make its outputs again, or python tools/nbsync.py --strip to remove them.')
        return 1
    return 0


if __name__ == '__main__':
    sys.exit(main())
