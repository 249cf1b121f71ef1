"""Shared helpers for the Kuzushiji + fastai notebook series.

Every notebook and every script imports this one module, so the notebooks can stay short
and the machinery is written (and tested) once. Sections:

1. Settings      where data lives, quick mode, Colab detection
2. Catalogue     the official files, URLs and md5 checksums
3. Download      mirrors, resume, retries, checksums, atomic rename, safe tar extraction
4. Loading       npz / MNIST idx(.gz) / class map into NumPy, with shape checks
5. DataLoaders   NumPy arrays to fastai `DataLoaders`, the DataBlock way and a fast way
6. Plots         a grid of examples per class, with Japanese characters
"""
from __future__ import annotations

import csv, gzip, hashlib, http.client, json, os, random, shutil, socket, sys, tarfile, time, zlib
import urllib.error, urllib.request
from pathlib import Path

import numpy as np
import warnings
warnings.filterwarnings('ignore', message='`torch.jit.script` is deprecated')  # raised inside fastai, not ours

# ---------------------------------------------------------------------------------------------
# 1. Settings
# ---------------------------------------------------------------------------------------------
REPO_URL = 'https://github.com/kuzushiji-fastai/kuzushiji-fastai'  # badges and Colab cells come from here (scripts/nbsync.py)
ROOT = Path(__file__).resolve().parent.parent
DATA_DIR = Path(os.environ.get('KUZUSHIJI_DATA', ROOT / 'data'))
QUICK = os.environ.get('KUZUSHIJI_QUICK', '') not in ('', '0', 'false', 'False')
"Quick mode (tests, CI): small data, tiny epochs. Colab and you run the same cells at full size."


def in_colab() -> bool:
    return 'google.colab' in sys.modules


def set_seed(seed: int = 42):
    "Seed Python, NumPy and torch (fastai's `set_seed` does the same, plus cuDNN flags)."
    from fastai.torch_core import set_seed as _set_seed
    _set_seed(seed, reproducible=True)


# ---------------------------------------------------------------------------------------------
# 2. Catalogue: the official files (github.com/rois-codh/kmnist, download_data.py) and md5s
# ---------------------------------------------------------------------------------------------
OFFICIAL_URL = 'http://codh.rois.ac.jp/kmnist/dataset/{dataset}/'
# The official host has been reported timing out (rois-codh/kmnist issue 29). No other official
# host exists; we try the same host over https too, then tell the user how to use `--mirror`.
KNOWN_MIRRORS = [OFFICIAL_URL, 'https://codh.rois.ac.jp/kmnist/dataset/{dataset}/']
MIRROR_ENV = 'KUZUSHIJI_MIRROR'

# dataset -> format -> [(file name, official md5 or None)]
FILES = {
    'kmnist': {
        'npz': [('kmnist-train-imgs.npz', 'a183fbc01ed9a345513b145673d3d0bb'),
                ('kmnist-train-labels.npz', 'b0e1d240e8afec72b50437fc3bc5908a'),
                ('kmnist-test-imgs.npz', 'dace6de62ca8b90843cc45366337d02e'),
                ('kmnist-test-labels.npz', '3ae489a79983d0fe386152684e3b5412'),
                ('kmnist_classmap.csv', '899202f6e8dc29a321ac210a03d0f2f1')],
        'mnist': [('train-images-idx3-ubyte.gz', 'bdb82020997e1d708af4cf47b453dcf7'),
                  ('train-labels-idx1-ubyte.gz', 'e144d726b3acfaa3e44228e80efcd344'),
                  ('t10k-images-idx3-ubyte.gz', '5c965bf0a639b31b8f53240b1b52f4d7'),
                  ('t10k-labels-idx1-ubyte.gz', '7320c461ea6c1c855c0b718fb2a4b134'),
                  ('kmnist_classmap.csv', '899202f6e8dc29a321ac210a03d0f2f1')],
    },
    'k49': {
        'npz': [('k49-train-imgs.npz', '7ac088b20481cf51dcd01ceaab89d821'),
                ('k49-train-labels.npz', '44a8e1b893f81e63ff38d73cad420f7a'),
                ('k49-test-imgs.npz', 'd352e201d846ce6b94f42c990966f374'),
                ('k49-test-labels.npz', '4da6f7a62e67a832d5eb1bd85c5ee448'),
                ('k49_classmap.csv', 'f7d0d0391f68bdf0fe4cf160ceb85753')],
    },
    # One tar of PNG folders (kkanji2/U+XXXX/*.png). No official checksum is published for it.
    'kkanji': {'tar': [('kkanji.tar', None)]},
}
DESCRIPTIONS = {
    'kmnist': 'Kuzushiji-MNIST (10 classes, 28x28, 70k examples)',
    'k49': 'Kuzushiji-49 (49 classes, 28x28, 270k examples)',
    'kkanji': 'Kuzushiji-Kanji (3832 classes, 64x64, 140k examples, about 310 MB)',
}
FORMATS = {'npz': 'NumPy data format (.npz)', 'mnist': 'MNIST data format (ubyte.gz)', 'tar': 'tar of PNG folders'}
ROMAJI = dict(zip('あいうえおかきくけこさしすせそたちつてとなにぬねのはひふへほまみむめもやゆよらりるれろわゐゑをんゝ',
                  'a i u e o ka ki ku ke ko sa shi su se so ta chi tsu te to na ni nu ne no ha hi fu he ho '
                  'ma mi mu me mo ya yu yo ra ri ru re ro wa wi we wo n (repeat)'.split()))


def dataset_files(dataset: str, fmt: str | None = None) -> list[tuple[str, str | None]]:
    "The `(file name, md5)` pairs of `dataset` in format `fmt` (default: the first the dataset has)."
    if dataset not in FILES:
        raise ValueError(f"Unknown dataset {dataset!r}: choose one of {', '.join(FILES)}.")
    fmts = FILES[dataset]
    fmt = fmt or next(iter(fmts))
    if fmt not in fmts:
        have = ', '.join(f"'{f}'" for f in fmts)
        raise ValueError(f"{dataset} has no {fmt!r} format; it is published as {have} only "
                         f"(the MNIST idx .gz files exist for kmnist only).")
    return fmts[fmt]


# ---------------------------------------------------------------------------------------------
# 3. Download
# ---------------------------------------------------------------------------------------------
class DownloadError(RuntimeError):
    "A download failed in a way the user must act on; the message says what to do."


def md5sum(path, chunk=1 << 20) -> str:
    h = hashlib.md5()
    with open(path, 'rb') as f:
        for b in iter(lambda: f.read(chunk), b''): h.update(b)
    return h.hexdigest()


def _mirror_bases(dataset, mirror=None) -> list[str]:
    "Where to look, in order: the user's mirror alone if given (argument or env var), else the known ones."
    mirror = mirror or os.environ.get(MIRROR_ENV)
    if mirror: return [str(mirror)]
    return [m.format(dataset=dataset) for m in KNOWN_MIRRORS]


def _size(n): return f'{n / 1e6:.1f} MB' if n >= 1e5 else f'{n / 1e3:.1f} kB'


def _progress(name, done, total, t0):
    mb = 1 / 1e6
    pct = f'{100 * done / total:3.0f}%' if total else '    '
    tot = f'/{total * mb:.1f}' if total else ''
    rate = done * mb / max(time.time() - t0, 1e-6)
    print(f'\r  {name}  {pct} {done * mb:.1f}{tot} MB  {rate:.1f} MB/s', end='', flush=True)


def _fetch(url, part: Path, timeout: float, retries: int, quiet: bool):
    """Download `url` into `part`, appending to what is already there (HTTP Range), retrying with
    backoff on transient errors. Raises `urllib.error.HTTPError` for 4xx, `OSError` when unreachable."""
    name = part.name[:-len('.part')]
    for attempt in range(retries + 1):
        have = part.stat().st_size if part.exists() else 0
        req = urllib.request.Request(url, headers={'User-Agent': 'kuzushiji-fastai',
                                                   **({'Range': f'bytes={have}-'} if have else {})})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                if have and r.status != 206: have = 0  # the server ignored Range: start again
                total = r.length + have if r.length is not None else None
                t0, done = time.time(), have
                last = t0  # first update after 0.5 s: small files print one line only
                with open(part, 'ab' if have else 'wb') as f:
                    while chunk := r.read(1 << 16):
                        f.write(chunk); done += len(chunk)
                        if not quiet and time.time() - last > 0.5: _progress(name, done, total, t0); last = time.time()
                if total is not None and done < total:
                    raise http.client.IncompleteRead(b'', total - done)
                return
        except urllib.error.HTTPError as e:
            if e.code == 416 and have:  # Range past the end: what we have is all there is
                return
            if e.code < 500 and e.code != 429: raise
            err = e
        # A plain URLError (refused, no such host, connect timeout) propagates: try the next mirror.
        except (http.client.HTTPException, ConnectionError, socket.timeout, TimeoutError) as e:
            got = (part.stat().st_size if part.exists() else 0) - have
            if isinstance(e, (socket.timeout, TimeoutError)) and got <= 0:
                raise urllib.error.URLError(f'no answer within {timeout:g}s (timed out)') from e  # silent host: next mirror
            err = e  # broke off mid-transfer: resume from what we have
        if attempt < retries:
            wait = 0.5 * 2 ** attempt
            if not quiet: print(f'\n  {name}: {type(err).__name__}, retrying in {wait:.1f}s (resuming)', flush=True)
            time.sleep(wait)
    raise err


def download_file(name, md5, dest, mirror=None, dataset='kmnist', force=False, timeout=8., retries=3,
                  quiet=False) -> Path:
    """Fetch one file into `dest`, verified. A verified file already there is kept. The download goes
    to `<name>.part` and takes its final name only once its md5 matches."""
    dest = Path(dest); dest.mkdir(parents=True, exist_ok=True)
    final, part = dest / name, dest / f'{name}.part'
    if final.exists() and not force:
        if md5 is None or md5sum(final) == md5:
            if not quiet: print(f'  {name}: already here, verified')
            return final
        if not quiet: print(f'  {name}: present but its checksum does not match; downloading again')
    if force and part.exists(): part.unlink()
    errors = []
    for base in _mirror_bases(dataset, mirror):
        src = base.rstrip('/') + '/' + name
        try:
            if '://' in src:
                _fetch(src, part, timeout, retries, quiet)
            else:  # a local folder used as a mirror
                if not Path(src).is_file(): raise FileNotFoundError(f'no such file: {src}')
                shutil.copyfile(src, part)
        except urllib.error.HTTPError as e:
            errors.append(f'{src}: HTTP {e.code} {e.reason}'); continue
        except (OSError, http.client.HTTPException) as e:
            errors.append(f'{src}: {getattr(e, "reason", None) or e}'); continue
        got = md5sum(part)
        if md5 is not None and got != md5:
            part.unlink()
            errors.append(f'{src}: checksum mismatch (md5 {got}, expected {md5}); the copy was deleted')
            continue
        os.replace(part, final)
        if not quiet:
            print(f'\r  {name}: {_size(final.stat().st_size)}, md5 {"verified" if md5 else "(none published)"}'
                  f'  <- {base}'.ljust(70))
        return final
    raise DownloadError(
        f"Could not download {name}.\n  " + '\n  '.join(errors) +
        f"\nWhat to do: download the file by hand (or from a classroom copy) into a folder, then run\n"
        f"  python scripts/download_data.py --dataset {dataset} --mirror FOLDER_OR_URL\n"
        f"(or set {MIRROR_ENV}=FOLDER_OR_URL). Official files: {OFFICIAL_URL.format(dataset=dataset)}")


def _md5_table() -> dict:
    "Optional override of the checksum table, for tests and for mirrors of re-made files (a JSON file)."
    p = os.environ.get('KUZUSHIJI_MD5_TABLE')
    return json.loads(Path(p).read_text()) if p else {}


def download(dataset='kmnist', fmt=None, dest=None, mirror=None, force=False, md5s=None, quiet=False, **kwargs) -> Path:
    """Download every file of `dataset` in format `fmt` into `dest` (default `data/<dataset>`), each one
    verified against its official md5 (or `md5s`, a `{name: md5}` table). Returns the folder."""
    dest = Path(dest) if dest else DATA_DIR / dataset
    md5s = {**_md5_table(), **(md5s or {})}
    for name, md5 in dataset_files(dataset, fmt):
        download_file(name, md5s.get(name, md5), dest, mirror=mirror, dataset=dataset, force=force,
                      quiet=quiet, **kwargs)
    if dataset == 'kkanji': extract_tar(dest / 'kkanji.tar', dest, quiet=quiet)
    return dest


def extract_tar(tar_path, dest, quiet=False) -> Path:
    """Extract a tar safely: refuse absolute paths, `..`, links and devices before anything is written,
    extract into a temporary folder and move the result in place only when all went well."""
    tar_path, dest = Path(tar_path), Path(dest)
    try:
        with tarfile.open(tar_path) as tf: members = tf.getmembers()
    except tarfile.TarError as e:
        raise DownloadError(f'{tar_path.name} is not a readable tar ({e}): delete it and download again.') from e
    with tarfile.open(tar_path) as tf:
        for m in members:
            parts = Path(m.name).parts
            if m.name.startswith(('/', '\\')) or Path(m.name).is_absolute() or '..' in parts:
                raise DownloadError(f'{tar_path.name}: refusing unsafe path {m.name!r}; the archive was not extracted.')
            if not (m.isfile() or m.isdir()):
                raise DownloadError(f'{tar_path.name}: refusing {m.name!r} (a link or special file); '
                                    f'the archive was not extracted.')
        tops = sorted({Path(m.name).parts[0] for m in members if Path(m.name).parts})  # a '.' member has none
        if all((dest / t).exists() for t in tops):
            if not quiet: print(f'  {tar_path.name}: already extracted')
            return dest
        tmp = dest / f'.{tar_path.stem}.extracting'
        if tmp.exists(): shutil.rmtree(tmp)
        tf.extractall(tmp, members=members)
    for t in tops:
        if (dest / t).exists(): shutil.rmtree(dest / t)
        os.replace(tmp / t, dest / t)
    tmp.rmdir()
    if not quiet: print(f'  {tar_path.name}: extracted {len(members)} entries into {dest}')
    return dest


def list_files(dataset=None):
    "Print what can be downloaded: datasets, formats and files with their md5."
    for ds in ([dataset] if dataset else FILES):
        print(f'{ds}: {DESCRIPTIONS[ds]}')
        for fmt, files in FILES[ds].items():
            print(f'  --format {fmt} ({FORMATS[fmt]})')
            for name, md5 in files: print(f'    {name:32s} {md5 or "(no official checksum)"}')


# ---------------------------------------------------------------------------------------------
# 4. Loading into NumPy
# ---------------------------------------------------------------------------------------------
class DataFormatError(ValueError):
    "A data file is truncated, of the wrong kind or of the wrong shape."


def _check(x, path, ndim, what):
    if x.ndim != ndim:
        raise DataFormatError(f'{path}: expected {what} with {ndim} dimensions, got shape {x.shape}. '
                              f'Is this the right file? Delete it and download again.')
    if x.dtype != np.uint8:
        raise DataFormatError(f'{path}: expected uint8 values, got {x.dtype}.')
    return x


def load_npz(path, ndim=None):
    "The array `arr_0` of an official `.npz` file, checked: images are (N, H, W) uint8, labels (N,) uint8."
    path = Path(path)
    if not path.exists(): raise FileNotFoundError(f'{path} not found: run scripts/download_data.py first.')
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
    if not path.exists(): raise FileNotFoundError(f'{path} not found: run scripts/download_data.py first.')
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
    path = Path(path) if path else DATA_DIR / dataset
    if fmt is None:
        fmt = 'npz' if (path / f'{dataset}-train-imgs.npz').exists() else 'mnist'
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


# ---------------------------------------------------------------------------------------------
# 5. NumPy arrays to fastai DataLoaders (fastai v1's `ImageDataBunch` became v2's `DataLoaders`)
# ---------------------------------------------------------------------------------------------
from fastai.vision.all import (Category, CategoryBlock, CrossEntropyLossFlat, DataBlock, DataLoaders, ImageBlock, IndexSplitter,
                               IntToFloatTensor, Normalize, PILImageBW, TensorCategory, TensorImageBW, TfmdDL,
                               aug_transforms, default_device)
import torch


def item_image(o): return o[0]
def item_label(o): return o[1]
# Getters live in this module, not in a notebook: `export()` pickles them, and a getter defined in a
# notebook drags the notebook's globals (the whole image array) into export.pkl.


def char_augment(size=None):
    "Augmentations that suit characters: small rotations, zoom with a random centre (so small shifts), warp; no flips."
    return aug_transforms(size=size, do_flip=False, max_rotate=10., max_zoom=1.1, max_lighting=0., max_warp=0.1,
                          pad_mode='zeros')


def image_stats(x):
    "Mean and std of uint8 images scaled to [0, 1] (from the training split only)."
    x = torch.as_tensor(x[:20000]).float().div_(255)
    return x.mean().item(), x.std().item()


class ArrayDataset:
    """Images (N, H, W) uint8 and labels (N,) held as tensors. Indexing with one index gives one item,
    indexing with a tensor of indices gives a whole batch at once: no PIL image, no per-item Python."""
    def __init__(self, x, y=None, vocab=None, split_idx=None):
        self.x = torch.as_tensor(np.asarray(x, dtype=np.uint8))
        self.y = None if y is None else torch.as_tensor(np.asarray(y)).long()
        self.vocab, self.split_idx = vocab, split_idx
        self.loss_func = CrossEntropyLossFlat()  # what fastai's `Categorize` would tell the Learner

    def __len__(self): return len(self.x)

    def __getitem__(self, i):
        x = TensorImageBW(self.x[i].unsqueeze(-3))
        return (x,) if self.y is None else (x, TensorCategory(self.y[i]))

    @property
    def n_inp(self): return 1

    @property
    def items(self):
        "The items as `(image, label)` pairs, as fastai's `Interpretation` expects."
        ys = [None] * len(self) if self.y is None else self.y.tolist()
        return list(zip(self.x.numpy(), ys))

    def new_empty(self):
        return type(self)(self.x[:0], None if self.y is None else self.y[:0], self.vocab, self.split_idx)

    def decode(self, o, full=True):
        "Labels back to their characters, so `show_batch`, `predict` and friends speak Japanese."
        return tuple(Category(self.vocab[int(t)]) if isinstance(t, TensorCategory) and self.vocab else t for t in o)

    @classmethod
    def from_items(cls, items, vocab=None, with_labels=False):
        """Images (arrays, PIL images or file paths) or `(image, label)` pairs, as `predict` and `test_dl` pass them.
        A label may be an index or a character of `vocab`."""
        from PIL import Image
        def img(o):
            if isinstance(o, (str, Path)): o = Image.open(o)
            if isinstance(o, Image.Image): o = o.convert('L')
            a = np.asarray(o)
            if a.ndim == 3 and a.shape[0] == 1: a = a[0]
            if a.ndim != 2: raise ValueError(f'Expected a grayscale image (H, W), got shape {a.shape}.')
            return a
        def lbl(o): return vocab.index(o) if isinstance(o, str) else int(o)
        items = list(items)
        xs = np.stack([img(o[0] if with_labels else o) for o in items]) if items else np.zeros((0, 28, 28), np.uint8)
        ys = [lbl(o[1]) for o in items] if with_labels else None
        return cls(xs, ys, vocab, split_idx=1)


class ArrayDL(TfmdDL):
    """A fastai `TfmdDL` that slices whole batches out of `ArrayDataset` tensors. Everything else
    (after_batch transforms on the GPU, `show_batch`, `test_dl`, `predict`, `export`) is fastai's own."""
    def __init__(self, dataset=None, bs=64, vocab=None, **kwargs):
        if dataset is not None and not isinstance(dataset, ArrayDataset):  # raw items from `test_dl`/`predict`
            dataset = ArrayDataset.from_items(dataset, vocab, with_labels=bool(dataset) and isinstance(dataset[0], tuple))
        kwargs['num_workers'] = 0  # slicing a tensor is faster than shipping batches between processes
        super().__init__(dataset, bs=bs, **kwargs)

    def create_batches(self, samps):
        idx = torch.as_tensor(list(samps), dtype=torch.long)
        for b in idx.split(self.bs):
            if self.drop_last and len(b) < self.bs: break
            yield self.dataset[b]

    def new(self, dataset=None, cls=None, **kwargs):
        if dataset is not None and not isinstance(dataset, ArrayDataset):
            dataset = ArrayDataset.from_items(dataset, self.dataset.vocab,
                                              with_labels=len(dataset) > 0 and isinstance(dataset[0], tuple))
        return super().new(dataset, cls, **kwargs)


def kmnist_dls(train, classes, test=None, way='tensor', valid_pct=0.1, seed=42, bs=128, device=None,
               augment=True, size=None):
    """fastai `DataLoaders` from `(x, y)` NumPy arrays: a seeded validation split taken from the training set,
    normalisation with the training set's statistics, augmentation for characters (train only).

    `way='tensor'` slices batches straight from tensors (fast; for training). `way='datablock'` is the textbook
    DataBlock with one PIL image per item (about 1,500 images/s per core: fine to look at, too slow to feed a GPU).
    The official test set is never part of these: make it with `test_dl(dls, test)` for the final score."""
    x, y = train
    t_idx, v_idx = split_indices(len(x), valid_pct, seed)
    mean, std = image_stats(x[t_idx])
    after = [IntToFloatTensor(), *(char_augment(size) if augment else []), Normalize.from_stats(mean, std, cuda=False)]
    device = device or default_device()
    if way == 'tensor':
        mk = lambda idx, train: ArrayDL(ArrayDataset(x[idx], y[idx], list(classes), split_idx=0 if train else 1),
                                        bs=bs if train else 2 * bs, shuffle=train, drop_last=train,
                                        after_batch=after, device=device)
        dls = DataLoaders(mk(t_idx, True), mk(v_idx, False), device=device)
    elif way == 'datablock':
        dblock = DataBlock(blocks=(ImageBlock(cls=PILImageBW), CategoryBlock(vocab=list(classes))),
                           get_x=item_image, get_y=item_label, splitter=IndexSplitter(v_idx),
                           batch_tfms=after[1:])
        items = [[img, classes[lbl]] for img, lbl in zip(x, y)]  # lists: fastai maps transforms over tuples
        dls = dblock.dataloaders(items, bs=bs, device=device)
    else:
        raise ValueError(f"way must be 'tensor' or 'datablock', not {way!r}")
    dls.stats = (mean, std)
    return dls


def test_dl(dls, test, bs=None):
    "A DataLoader over the official test set `(x, y)` with the validation transforms (no augmentation)."
    x, y = test
    vocab = list(dls.vocab)
    if isinstance(dls.valid, ArrayDL):
        return dls.valid.new(ArrayDataset(x, y, vocab, split_idx=1), shuffle=False, drop_last=False,
                             **({'bs': bs} if bs else {}))
    return dls.test_dl([[img, vocab[lbl]] for img, lbl in zip(x, y)], with_labels=True, **({'bs': bs} if bs else {}))


def benchmark_loader(dl, n_batches=50, warmup=2):
    "Images per second of a DataLoader alone (batches made, transforms applied, nothing trained)."
    it, seen = iter(dl), 0
    for _ in range(warmup): next(it)
    if torch.cuda.is_available(): torch.cuda.synchronize()
    t0 = time.perf_counter()
    for i, b in enumerate(it):
        seen += len(b[0])
        if i + 1 >= n_batches: break
    if torch.cuda.is_available(): torch.cuda.synchronize()
    return seen / (time.perf_counter() - t0)


# ---------------------------------------------------------------------------------------------
# 6. Plots
# ---------------------------------------------------------------------------------------------
def japanese_font():
    "Use IPAexGothic (shipped by matplotlib-fontja, works offline and in Colab) so characters show, not boxes."
    import matplotlib_fontja  # noqa: F401  (sets matplotlib's font family on import)


def label_name(char):
    "A class label for plots: the character and its romaji."
    return f'{char} ({ROMAJI[char]})' if char in ROMAJI else char


def show_examples(x, y, classes, n=8, seed=0, save=None):
    "A grid: one row per class, `n` random examples each, the character and its romaji at the left."
    import matplotlib.pyplot as plt
    japanese_font()
    rng = np.random.default_rng(seed)
    fig, axs = plt.subplots(len(classes), n + 1, figsize=(n + 1.6, len(classes) * 1.05))
    for c, row in enumerate(np.atleast_2d(axs)):
        row[0].text(0.5, 0.5, label_name(classes[c]), fontsize=16, ha='center', va='center')
        idx = np.flatnonzero(y == c)
        picks = rng.choice(idx, size=min(n, len(idx)), replace=False) if len(idx) else []
        for ax, i in zip(row[1:], picks): ax.imshow(x[i], cmap='gray_r')
        for ax in row: ax.axis('off')
    fig.tight_layout()
    if save: fig.savefig(save, dpi=80)
    return fig


def class_counts(classes, **splits):
    "A table of how many examples each class has in each split: `class_counts(classes, train=y, test=y_test)`."
    import pandas as pd
    df = pd.DataFrame({'char': classes, 'romaji': [ROMAJI.get(c, '') for c in classes]})
    for name, y in splits.items(): df[name] = np.bincount(y, minlength=len(classes))
    return df


def file_table(folder, dataset='kmnist', fmt=None):
    "The downloaded files with their size, md5 and whether it matches the official one."
    import pandas as pd
    md5s = {**dict(dataset_files(dataset, fmt)), **_md5_table()}
    rows = [(n, Path(folder, n).stat().st_size, md5sum(Path(folder, n)), md5s[n]) for n, _ in dataset_files(dataset, fmt)]
    df = pd.DataFrame(rows, columns=['file', 'bytes', 'md5', 'expected md5'])
    df['verified'] = df['md5'] == df['expected md5']
    return df


def plot_class_balance(splits: dict, classes):
    "Side-by-side bars of examples per class for each split, e.g. `{'train': y_train, 'valid': y_valid}`."
    import matplotlib.pyplot as plt
    japanese_font()
    fig, ax = plt.subplots(figsize=(9, 3.2))
    w = 0.8 / len(splits)
    for i, (name, y) in enumerate(splits.items()):
        ax.bar(np.arange(len(classes)) + i * w, np.bincount(y, minlength=len(classes)), w, label=name)
    ax.set_xticks(np.arange(len(classes)) + w * (len(splits) - 1) / 2, [label_name(c) for c in classes], fontsize=12)
    ax.set_ylabel('examples'); ax.legend(loc='lower center', bbox_to_anchor=(0.5, 1.0), ncols=len(splits), frameon=False)
    fig.tight_layout()
    return fig


def device_name():
    "The GPU's name, or the CPU's model name, for reports."
    if torch.cuda.is_available(): return torch.cuda.get_device_name(0)
    try:
        for line in open('/proc/cpuinfo'):
            if line.startswith('model name'): return line.split(':', 1)[1].strip()
    except OSError: pass
    import platform
    return platform.processor() or platform.machine()
