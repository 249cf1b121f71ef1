"""Arrays: the official npz and MNIST idx files and the class map, loaded into NumPy and checked.

Uses: settings, catalogue."""
from __future__ import annotations

import csv, gzip, zlib
from pathlib import Path

import numpy as np

from . import settings
from .catalogue import FILES


class DataFormatError(ValueError):
    "A data file is truncated, of the wrong kind or of the wrong shape."


def _check(x, path, ndim, what):
    if x.ndim != ndim:
        raise DataFormatError(f'{path}: expected {what} with {ndim} dimensions, got shape {x.shape}. '
                              f'Is this the right file? Delete it and download again.')
    if x.dtype != np.uint8:
        raise DataFormatError(f'{path}: expected uint8 values, got {x.dtype}.')
    return x


def _need(path):
    "A clear error for a file that is not there: which command downloads it."
    path = Path(path)
    if path.exists(): return
    dataset = 'k49' if path.name.startswith('k49') else 'kmnist'
    raise FileNotFoundError(f'{path} not found. Download it with\n  python scripts/download_data.py --dataset {dataset}\n'
                            f'or point --data (or KUZUSHIJI_DATA) at the folder that holds it.')


def load_npz(path, ndim=None):
    "The array `arr_0` of an official `.npz` file, checked: images are (N, H, W) uint8, labels (N,) uint8."
    path = Path(path)
    _need(path)
    try:
        with np.load(path) as z: x = z['arr_0']
    except Exception as e:
        raise DataFormatError(f'{path}: not a readable .npz file ({type(e).__name__}: {e}). '
                              f'It may be truncated: delete it and download again.') from e
    ndim = ndim or (1 if 'labels' in path.name else 3)
    return _check(x, path, ndim, 'labels' if ndim == 1 else 'images')


def load_idx(path):
    "An MNIST idx file (`.gz` or not) as a NumPy array: magic 2049 for labels (N,), 2051 for images (N, H, W)."
    path = Path(path)
    _need(path)
    try:
        with (gzip.open if path.suffix == '.gz' else open)(path, 'rb') as f: data = f.read()
    except (OSError, EOFError, zlib.error) as e:
        raise DataFormatError(f'{path}: cannot be read ({e}); it may be truncated: delete it and download again.') from e
    if len(data) < 8 or data[:2] != b'\0\0' or data[2] != 8:
        raise DataFormatError(f'{path}: not an MNIST idx file of unsigned bytes.')
    ndim = data[3]
    if len(data) < 4 + 4 * ndim: raise DataFormatError(f'{path}: header is truncated.')
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], 'big') for i in range(ndim))
    body = np.frombuffer(data, np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(shape)):
        raise DataFormatError(f'{path}: header says shape {shape} ({np.prod(shape)} bytes) but the file holds '
                              f'{body.size}; it is truncated or corrupt: delete it and download again.')
    return body.reshape(shape)


def load_classmap(path) -> list[str]:
    "The characters of a `*_classmap.csv` (columns index, codepoint, char), in label order."
    _need(path)
    with open(path, encoding='utf-8') as f:
        rows = list(csv.DictReader(f))
    if not rows or not {'index', 'char'} <= set(rows[0]):
        raise DataFormatError(f'{path}: expected a class map CSV with columns index, codepoint, char.')
    rows.sort(key=lambda r: int(r['index']))
    return [r['char'] for r in rows]

_SPLIT_FILES = {'npz': ('{p}-{s}-imgs.npz', '{p}-{s}-labels.npz'),
                'mnist': ('{m}-images-idx3-ubyte.gz', '{m}-labels-idx1-ubyte.gz')}


def load_arrays(path=None, dataset='kmnist', fmt=None):
    """Load a downloaded dataset: `(x_train, y_train), (x_test, y_test), classes`, checked that images
    and labels agree and every label has a class."""
    path = Path(path) if path else settings.DATA_DIR / dataset
    if fmt is None:
        fmt = 'npz' if (path / f'{dataset}-train-imgs.npz').exists() or 'mnist' not in FILES.get(dataset, {}) else 'mnist'
    if fmt not in _SPLIT_FILES: raise ValueError(f"fmt must be 'npz' or 'mnist', not {fmt!r}")
    out = []
    for split, m in (('train', 'train'), ('test', 't10k')):
        xf, yf = (path / t.format(p=dataset, s=split, m=m) for t in _SPLIT_FILES[fmt])
        x, y = (load_npz(xf, 3), load_npz(yf, 1)) if fmt == 'npz' else (load_idx(xf), load_idx(yf))
        _check(x, xf, 3, 'images'); _check(y, yf, 1, 'labels')
        if len(x) != len(y):
            raise DataFormatError(f'{xf.name} has {len(x)} images but {yf.name} has {len(y)} labels.')
        out.append((x, y))
    classes = load_classmap(path / f'{dataset}_classmap.csv')
    top = max(out[0][1].max(initial=0), out[1][1].max(initial=0))
    if top >= len(classes):
        raise DataFormatError(f'label {top} has no class in {dataset}_classmap.csv ({len(classes)} classes).')
    return out[0], out[1], classes


def split_indices(n, valid_pct=0.1, seed=42):
    "A seeded random split of `range(n)` into (train, valid) index arrays."
    idx = np.random.default_rng(seed).permutation(n)
    n_valid = int(round(n * valid_pct))
    return np.sort(idx[n_valid:]), np.sort(idx[:n_valid])


def subsample(x, y, n, seed=0):
    "A seeded random sample of at most `n` items, in their original order (for quick runs)."
    if n is None or n >= len(x): return x, y
    idx = np.random.default_rng(seed).permutation(len(x))[:n]
    return x[np.sort(idx)], y[np.sort(idx)]
