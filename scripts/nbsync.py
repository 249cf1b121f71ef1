#!/usr/bin/env python
"""Keep every notebook's first two cells (title badge, setup) in sync with `helpers.REPO_URL`, and strip outputs.

    python scripts/nbsync.py          # rewrite notebooks/*.ipynb in place
    python scripts/nbsync.py --check  # exit 1 if any notebook is out of sync or has outputs (used by the tests)
"""
import argparse, json, sys
from pathlib import Path

import helpers as h

NOTEBOOKS = h.ROOT / 'notebooks'
CLONE = h.REPO_URL.rstrip('/').rsplit('/', 1)[1]
SKIP = 'torch|torchvision|ipykernel|nbclient|nbformat|pytest'  # Colab's own torch and kernel stay as they are

SETUP = f"""# Setup: make the course's helpers importable. In Colab, first fetch the course and install the tested
# versions of fastai, fastcore, wandb and friends (requirements.txt); Colab's own torch is kept as it is.
import os, sys
if 'google.colab' in sys.modules:
    if not os.path.exists('/content/{CLONE}'):
        !git clone -q --depth 1 {h.REPO_URL} /content/{CLONE}
    %cd /content/{CLONE}/notebooks
    !grep -vE '^({SKIP})==' ../requirements.txt > /tmp/req.txt
    !pip install -q -r /tmp/req.txt "torch==$(python -c 'import torch; print(torch.__version__)')"
sys.path.insert(0, os.path.abspath('../scripts'))"""


def badge(nb_path):
    url = f"https://colab.research.google.com/github/{h.REPO_URL.split('github.com/')[1]}/blob/main/notebooks/{nb_path.name}"
    return f'[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]({url})'


def lines(text): return text.splitlines(keepends=True)


def synced(nb_path):
    "The notebook as it should be: badge cell and setup cell canonical, outputs and counts stripped."
    nb = json.loads(nb_path.read_text(encoding='utf-8'))
    cells = nb['cells']
    cells[0] = {'cell_type': 'markdown', 'id': 'badge', 'metadata': {}, 'source': lines(badge(nb_path))}
    cells[1] = {'cell_type': 'code', 'execution_count': None, 'id': 'setup', 'metadata': {}, 'outputs': [],
                'source': lines(SETUP)}
    for c in cells:
        if c['cell_type'] == 'code': c['outputs'], c['execution_count'] = [], None
        c['metadata'] = {k: v for k, v in c.get('metadata', {}).items() if k == 'tags'}
    nb['metadata'] = {'kernelspec': {'display_name': 'Python 3', 'language': 'python', 'name': 'python3'},
                      'language_info': {'name': 'python'}, 'accelerator': 'GPU', 'colab': {'provenance': []}}
    return json.dumps(nb, indent=1, ensure_ascii=False) + '\n'


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--check', action='store_true')
    a = p.parse_args(argv)
    bad = []
    for nb in sorted(NOTEBOOKS.glob('*.ipynb')):
        want = synced(nb)
        if nb.read_text(encoding='utf-8') != want:
            if a.check: bad.append(nb.name)
            else: nb.write_text(want, encoding='utf-8'); print(f'synced {nb.name}')
    if bad:
        print('Out of sync or not stripped (run python scripts/nbsync.py): ' + ', '.join(bad)); return 1
    return 0


if __name__ == '__main__':
    sys.exit(main())
