"""Execute a notebook top to bottom with nbclient and read what its cells showed.

    python tests/nbrun.py notebooks/01_get_kuzushiji_mnist.ipynb OUT_DIR   # also saves every figure as PNG
"""
import base64, os, sys
from pathlib import Path

import nbformat
from nbclient import NotebookClient

NOTEBOOKS = Path(__file__).resolve().parent.parent / 'notebooks'


def run(path, env=None, timeout=900):
    "Run the notebook in a fresh kernel whose environment has `env` added; return the executed notebook."
    nb = nbformat.read(str(path), as_version=4)
    old = dict(os.environ)
    os.environ.update({k: str(v) for k, v in (env or {}).items()})
    try:
        NotebookClient(nb, timeout=timeout, kernel_name='python3',
                       resources={'metadata': {'path': str(NOTEBOOKS)}}).execute()
    finally:
        os.environ.clear(); os.environ.update(old)
    return nb


def cell(nb, tag):
    cells = [c for c in nb.cells if tag in c.get('metadata', {}).get('tags', [])]
    assert len(cells) == 1, f'expected one cell tagged {tag!r}, found {len(cells)}'
    return cells[0]


def text(nb, tag):
    "Everything a tagged cell printed or displayed as text."
    out = []
    for o in cell(nb, tag).outputs:
        if o.output_type == 'stream': out.append(o.text)
        elif 'data' in o: out.append(o.data.get('text/plain', ''))
    return ''.join(out)


def images(nb, tag=None):
    "The PNG images a tagged cell (or the whole notebook) displayed, as bytes."
    cells = [cell(nb, tag)] if tag else nb.cells
    return [base64.b64decode(o.data['image/png']) for c in cells for o in c.get('outputs', [])
            if 'data' in o and 'image/png' in o.data]


def save_images(nb, folder):
    folder = Path(folder); folder.mkdir(parents=True, exist_ok=True)
    for i, c in enumerate(nb.cells):
        for j, o in enumerate(c.get('outputs', [])):
            if 'data' in o and 'image/png' in o.data:
                (folder / f'cell{i:02d}_{j}.png').write_bytes(base64.b64decode(o.data['image/png']))


if __name__ == '__main__':
    nb = run(sys.argv[1])
    out = Path(sys.argv[2]); out.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, str(out / Path(sys.argv[1]).name))
    save_images(nb, out)
    print('ok', out)
