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
OUT_DIR = Path(os.environ.get('KUZUSHIJI_OUT', ROOT))  # results/ and models/ go here (the tests point it elsewhere)
QUICK = os.environ.get('KUZUSHIJI_QUICK', '') not in ('', '0', 'false', 'False')
"Quick mode (tests, CI): small data, tiny epochs. Colab and you run the same cells at full size."


def set_seed(seed: int = 42):
    "Seed Python, NumPy and torch (fastai's `set_seed`; cuDNN's autotuner stays on, so GPU runs stay fast)."
    from fastai.torch_core import set_seed as _set_seed
    _set_seed(seed)


# ---------------------------------------------------------------------------------------------
# 2. Catalogue: the official files (github.com/rois-codh/kmnist, download_data.py) and md5s
# ---------------------------------------------------------------------------------------------
OFFICIAL_URL = 'http://codh.rois.ac.jp/kmnist/dataset/{dataset}/'
# The official host has been reported timing out (rois-codh/kmnist issue 29). No other official
# host exists; we try the same host over https too, then tell the user how to use `--mirror`.
KNOWN_MIRRORS = [OFFICIAL_URL, 'https://codh.rois.ac.jp/kmnist/dataset/{dataset}/']
MIRROR_ENV = 'KUZUSHIJI_MIRROR'
# The calligraphy article's own data: GitHub's archive of a pinned commit (about 0.5 GB, no published checksum).
CALLIGRAPHY_REPO = 'https://github.com/wayofnumbers/chinese-calligraphy-classifier-fastai'
CALLIGRAPHY_COMMIT = '8f754674772bd9b9631795e7e42d37717c37e52d'
CALLIGRAPHY_ZIP = f'{CALLIGRAPHY_COMMIT}.zip'
CALLIGRAPHY_URL = f'{CALLIGRAPHY_REPO}/archive/{CALLIGRAPHY_ZIP}'
CALLIGRAPHY_CLASSES = ('kaishu', 'lishu', 'xiaozhuan')
CALLIGRAPHY_NAMES = {'kaishu': ('楷书', 'regular script'), 'lishu': ('隶书', 'clerical script'),
                     'xiaozhuan': ('小篆', 'small seal script')}
HOSTS = {'calligraphy': [f'{CALLIGRAPHY_REPO}/archive/']}  # every other dataset: KNOWN_MIRRORS

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
    'calligraphy': {'zip': [(CALLIGRAPHY_ZIP, None)]},
}
DESCRIPTIONS = {
    'kmnist': 'Kuzushiji-MNIST (10 classes, 28x28, 70k examples)',
    'k49': 'Kuzushiji-49 (49 classes, 28x28, 270k examples)',
    'kkanji': 'Kuzushiji-Kanji (3832 classes, 64x64, 140k examples, about 310 MB)',
    'calligraphy': 'Chinese calligraphy styles (3 classes, web images, about 0.5 GB zip; notebook 05)',
}
FORMATS = {'npz': 'NumPy data format (.npz)', 'mnist': 'MNIST data format (ubyte.gz)', 'tar': 'tar of PNG folders',
           'zip': 'zip of image folders'}
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
    return HOSTS.get(dataset) or [m.format(dataset=dataset) for m in KNOWN_MIRRORS]


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
            if not quiet: print(f'  {name}: already here, ' + ('verified' if md5 else 'no checksum published to verify'))
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
        f"(or set {MIRROR_ENV}=FOLDER_OR_URL). Official files: {(HOSTS.get(dataset) or [OFFICIAL_URL.format(dataset=dataset)])[0]}")


def _md5_table() -> dict:
    "Optional override of the checksum table, for tests and for mirrors of re-made files (a JSON file)."
    p = os.environ.get('KUZUSHIJI_MD5_TABLE')
    return json.loads(Path(p).read_text()) if p else {}


def download(dataset='kmnist', fmt=None, dest=None, mirror=None, force=False, md5s=None, quiet=False, max_side=384,
             **kwargs) -> Path:
    """Download every file of `dataset` in format `fmt` into `dest` (default `data/<dataset>`), each one
    verified against its official md5 (or `md5s`, a `{name: md5}` table). Returns the folder. Calligraphy is
    also extracted and cleaned (`prepare`, images' shorter side at most `max_side`): its prepared folder is returned."""
    dest = Path(dest) if dest else DATA_DIR / dataset
    if dataset == 'calligraphy' and (dest / 'prepared' / 'manifest.csv').exists() and not force:
        if not quiet: print(f'  calligraphy: already prepared in {dest / "prepared"}')
        return dest / 'prepared'
    md5s = {**_md5_table(), **(md5s or {})}
    if dataset == 'calligraphy': kwargs.setdefault('timeout', 60.)  # GitHub builds the zip before sending a byte
    for name, md5 in dataset_files(dataset, fmt):
        download_file(name, md5s.get(name, md5), dest, mirror=mirror, dataset=dataset, force=force,
                      quiet=quiet, **kwargs)
    if dataset == 'kkanji': extract_tar(dest / 'kkanji.tar', dest, quiet=quiet)
    if dataset == 'calligraphy':
        extract_zip(dest / CALLIGRAPHY_ZIP, dest / 'raw', force=force, quiet=quiet)
        return prepare(dest / 'raw', dest / 'prepared', max_side=max_side, force=force, quiet=quiet)['path']
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
    _move_into_place(tmp, dest, tops)
    if not quiet: print(f'  {tar_path.name}: extracted {len(members)} entries into {dest}')
    return dest


def _move_into_place(tmp, dest, names):
    "Replace each `dest/<name>` with the freshly extracted `tmp/<name>`, then remove the empty `tmp`."
    for n in names:
        if (dest / n).exists(): shutil.rmtree(dest / n)
        os.replace(tmp / n, dest / n)
    tmp.rmdir()


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
    path = Path(path) if path else DATA_DIR / dataset
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


# ---------------------------------------------------------------------------------------------
# 5. NumPy arrays to fastai DataLoaders (fastai v1's `ImageDataBunch` became v2's `DataLoaders`)
# ---------------------------------------------------------------------------------------------
from fastai.vision.all import (Category, CategoryBlock, CategoryMap, CrossEntropyLossFlat, DataBlock, DataLoaders, ImageBlock, IndexSplitter,
                               IntToFloatTensor, Normalize, PILImageBW, TensorCategory, TensorImageBW, TfmdDL,
                               aug_transforms, default_device)
import torch


def item_image(o): return o[0]
def item_label(o): return o[1]
# Getters live in this module, not in a notebook: `export()` pickles them. A module's function is pickled by
# reference; one defined in a notebook is pickled by value with every global it uses (a getter that indexes
# into the image array takes the whole array into export.pkl), and loading the export needs that notebook.


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
        # a CategoryMap, as fastai's `Categorize` makes: a plain list reads as one vocab per target to fastai
        self.vocab = vocab if vocab is None or isinstance(vocab, CategoryMap) else CategoryMap(list(vocab), sort=False)
        self.split_idx = split_idx
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
        def lbl(o): return list(vocab).index(o) if isinstance(o, str) else int(o)
        items = list(items)
        xs = np.stack([img(o[0] if with_labels else o) for o in items]) if items else np.zeros((0, 28, 28), np.uint8)
        ys = [lbl(o[1]) for o in items] if with_labels else None
        return cls(xs, ys, vocab, split_idx=1)


class ArrayDL(TfmdDL):
    """A fastai `TfmdDL` that slices whole batches out of `ArrayDataset` tensors. Everything else
    (after_batch transforms on the GPU, `show_batch`, `test_dl`, `predict`, `export`) is fastai's own."""
    def __init__(self, dataset=None, bs=64, **kwargs):
        kwargs['num_workers'] = 0  # slicing a tensor is faster than shipping batches between processes
        super().__init__(dataset, bs=bs, **kwargs)

    def create_batches(self, samps):
        idx = torch.as_tensor(list(samps), dtype=torch.long)
        for b in idx.split(self.bs):
            if self.drop_last and len(b) < self.bs: break
            yield self.dataset[b]

    def new(self, dataset=None, cls=None, **kwargs):
        if dataset is not None and not isinstance(dataset, ArrayDataset):  # raw items from `test_dl`/`predict`
            dataset = ArrayDataset.from_items(dataset, self.dataset.vocab,
                                              with_labels=len(dataset) > 0 and isinstance(dataset[0], tuple))
        return super().new(dataset, cls, **kwargs)


def kmnist_dls(train, classes, way='tensor', valid_pct=0.1, seed=42, bs=128, device=None, augment=True, size=None):
    """fastai `DataLoaders` from `(x, y)` NumPy arrays: a seeded validation split taken from the training set,
    normalisation with the training set's statistics, augmentation for characters (train only).

    `way='tensor'` slices batches straight from tensors (fast; for training). `way='datablock'` is the textbook
    DataBlock with one PIL image per item (about 1,500 images/s per core: fine to look at, too slow to feed a GPU).
    `size` resizes batches (on the GPU) as part of the augmentation, so it needs `augment=True`.
    The official test set is never part of these: make it with `test_dl(dls, test)` for the final score."""
    if size and not augment: raise ValueError('size is applied by the augmentation: use augment=True with it')
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
    import logging
    import matplotlib_fontja  # noqa: F401  (sets matplotlib's font family on import)
    logging.getLogger('matplotlib.font_manager').setLevel(logging.ERROR)  # it has no bold: no warning per title


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
    if default_device().type == 'mps': return 'Apple GPU (MPS)'
    try:
        for line in open('/proc/cpuinfo'):
            if line.startswith('model name'): return line.split(':', 1)[1].strip()
    except OSError: pass
    import platform
    return platform.processor() or platform.machine()


# ---------------------------------------------------------------------------------------------
# 7. Training: learning rates, learners, W&B, presets, one reproducible run
# ---------------------------------------------------------------------------------------------
from fastai.vision.all import (Callback, ConvLayer, Flatten, Learner, ResBlock, accuracy, error_rate, get_c,
                               resnet18, resnet34, resnet50, valley, vision_learner)
from torch import nn


def article_rule(lrs, losses, num_it=None):
    """The article's rule as a fastai suggestion function: one order of magnitude below the learning rate where
    the smoothed loss is lowest. (fastai's own `minimum` is the same rule.) Returns `(lr, (lr_min, loss_min))`."""
    losses = torch.as_tensor(losses); lrs = torch.as_tensor(lrs)
    i = int(losses.argmin())
    return lrs[i].item() / 10, (lrs[i].item(), losses[i].item())


def smooth(losses, beta=0.98):
    "The exponentially weighted, debiased average fastai plots in `lr_find` (`AvgSmoothLoss`)."
    out, avg = [], 0.
    for i, l in enumerate(losses, 1):
        avg = beta * avg + (1 - beta) * float(l)
        out.append(avg / (1 - beta ** i))
    return out


class RawLossRecorder(Callback):
    "Keep every training batch's raw loss (fastai's recorder keeps the smoothed one)."
    order = 51
    def before_fit(self): self.losses = []
    def after_batch(self):
        if self.training: self.losses.append(self.learn.loss.item())


def plot_lr_find(learn, raw, lr_rule, lr_valley=None):
    "Raw per-iteration losses, the smoothed curve fastai plots, its minimum and the chosen rate(s)."
    import matplotlib.pyplot as plt
    lrs, sm = learn.recorder.lrs, [float(l) for l in learn.recorder.losses]
    n = min(len(lrs), len(raw))
    fig, ax = plt.subplots(figsize=(7.5, 4))
    ax.plot(lrs[:n], raw[:n], '.', color='0.6', ms=4, label='raw loss of each batch')
    ax.plot(lrs[:n], sm[:n], lw=2, label='smoothed (what lr_find plots)')
    i = int(np.argmin(np.abs(np.log(lrs) - np.log(lr_rule * 10))))  # the point the rule took its minimum at
    ax.plot(lrs[i], sm[i], 'o', color='C3', ms=9, label=f'minimum of smoothed loss, lr={lrs[i]:.1e}')
    ax.axvline(lr_rule, color='C3', ls='--', label=f'article rule: minimum / 10 = {lr_rule:.1e}')
    if lr_valley: ax.axvline(lr_valley, color='C2', ls=':', lw=2, label=f'fastai valley = {lr_valley:.1e}')
    lo, hi = min(min(raw[:n]), min(sm[:n])), max(sm[:i + 1])  # the curve up to its minimum; the blow-up is clipped
    ax.set(xscale='log', xlabel='learning rate (log scale)', ylabel='loss', ylim=(lo - 0.1 * (hi - lo), hi + 0.3 * (hi - lo)))
    ax.legend(fontsize=9); fig.tight_layout()
    return fig


def kmnist_cnn(n_out=10, widths=(16, 32, 64)):
    """A small ResNet-style network for 28x28 characters on a CPU, built from fastai's layers: at each width a
    convolution (stride 2 after the first) and a residual block, then average pooling. 121k parameters;
    639 images/s of training in the cpu preset's run on 2 cores of an AMD EPYC CPU, against 109 for a ResNet34."""
    layers, c_in = [], 1
    for i, w in enumerate(widths):
        layers += [ConvLayer(c_in, w, stride=1 if i == 0 else 2), ResBlock(1, w, w)]
        c_in = w
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), Flatten(), nn.Dropout(0.1), nn.Linear(c_in, n_out))


ARCHS = {'resnet18': resnet18, 'resnet34': resnet34, 'resnet50': resnet50, 'kmnist_cnn': kmnist_cnn}


def make_learner(dls, arch='resnet34', pretrained=True, n_in=1, metrics=(accuracy, error_rate), cbs=None, **kwargs):
    """`vision_learner` for the torchvision ResNets (`n_in=1`: fastai sums the pretrained first layer over RGB), a plain
    `Learner` for `kmnist_cnn`. Offline, where ImageNet weights cannot be downloaded, it says so and uses random weights.
    `learn.weights` says which it got ('imagenet' or 'random'), and so does the W&B run, if one is on."""
    if arch == 'kmnist_cnn':
        learn, pretrained = Learner(dls, kmnist_cnn(get_c(dls)), metrics=list(metrics), cbs=cbs, **kwargs), False
    else:
        try:
            learn = vision_learner(dls, ARCHS[arch], n_in=n_in, pretrained=pretrained, metrics=list(metrics), cbs=cbs, **kwargs)
        except OSError as e:  # URLError is an OSError: no internet, or a firewall
            if not pretrained: raise
            print(f'Could not download the pretrained {arch} weights ({type(e).__name__}: {e}).\n'
                  f'Going on from RANDOM weights: expect lower accuracy and more epochs. With internet access the '
                  f'weights download once to $TORCH_HOME/hub/checkpoints/.')
            learn = vision_learner(dls, ARCHS[arch], n_in=n_in, pretrained=False, metrics=list(metrics), cbs=cbs, **kwargs)
            pretrained = False
    learn.weights = 'imagenet' if pretrained else 'random'  # what results record: the config may have asked for more
    wandb = sys.modules.get('wandb')
    if wandb is not None and wandb.run is not None: wandb.run.config.update({'weights': learn.weights}, allow_val_change=True)
    return learn


def on_gpu():
    "True on an NVIDIA GPU or an Apple GPU (fastai's `default_device` uses either)."
    return default_device().type in ('cuda', 'mps')


def use_fp16():
    "Mixed precision where it pays and is supported: NVIDIA GPUs."
    return torch.cuda.is_available()


def learner_for(cfg, dls, cbs=(), n_in=1):
    "The config's learner: architecture, pretrained or not, mixed precision on an NVIDIA GPU if the preset says so."
    learn = make_learner(dls, cfg['arch'], pretrained=cfg['pretrained'], n_in=n_in, cbs=[c for c in cbs if c] or None)
    if cfg['fp16'] and use_fp16(): learn.to_fp16()
    return learn


def pick_lr(cfg, learn):
    "The configured learning rate, or, for 'auto', `lr_find` with the article's rule."
    return float(cfg['lr']) if cfg['lr'] != 'auto' else find_lr(learn)[0]


def wandb_logged_in() -> bool:
    "True when a W&B API key is available without asking (env var or ~/.netrc); never prompts."
    if os.environ.get('WANDB_API_KEY'): return True
    try:
        import netrc
        return bool(netrc.netrc().authenticators('api.wandb.ai'))
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


def start_wandb(mode='offline', project='kuzushiji-fastai', config=None, name=None, dir=None):
    """Start a W&B run and return fastai's `WandbCallback` for it, or None when `mode='off'`.
    'offline' (default) logs to ./wandb to sync later; 'online' needs a login and falls back to offline without
    one. Nothing here ever waits for a login or a key, in a notebook, a script or CI."""
    if mode in (None, 'off', False): return None
    import wandb
    from fastai.callback.wandb import WandbCallback
    if mode == 'online' and not wandb_logged_in():
        print('W&B: not logged in (no WANDB_API_KEY, no `wandb login`), so logging offline instead.')
        mode = 'offline'
    if mode not in ('offline', 'online'): raise ValueError(f"W&B mode must be 'off', 'offline' or 'online', not {mode!r}")
    os.environ.setdefault('WANDB_SILENT', 'true')
    dir = Path(dir or os.environ.get('WANDB_DIR') or OUT_DIR); dir.mkdir(parents=True, exist_ok=True)
    run = wandb.init(project=project, config=config, name=name, mode=mode, dir=str(dir), reinit='finish_previous',
                     settings=wandb.Settings(console='off', silent=True))
    if mode == 'offline':
        print(f'W&B: logging offline to {run.dir.rsplit("/files", 1)[0]}\n'
              f'     to upload later: wandb sync {run.dir.rsplit("/files", 1)[0]}')
    return WandbCallback(log_preds=False, log_model=False)


def finish_wandb(learn=None):
    "Remove the W&B callback (so an exported learner does not start W&B when loaded) and close the run."
    from fastai.callback.wandb import WandbCallback
    if learn is not None and any(isinstance(c, WandbCallback) for c in learn.cbs): learn.remove_cb(WandbCallback)
    try:
        import wandb
        if wandb.run is not None: wandb.finish(quiet=True)
    except ImportError: pass


def export(learn, path):
    "`learn.export` without the W&B callback (fastai's advice: a loaded learner would start W&B again)."
    finish_wandb(learn)
    path = Path(path).resolve(); path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + '.tmp')
    learn.export(tmp)
    os.replace(tmp, path)  # a crash never leaves a truncated file under the final name
    return path


def loss_clearly_falling(losses, ratio=0.7):
    """Did training behave? The smoothed training loss over the last tenth of the iterations is at most `ratio`
    times that over the first tenth, and nothing is NaN. Used by the batch-size study to decide to halve."""
    l = np.asarray(losses, dtype=float)
    if len(l) < 10 or not np.isfinite(l).all(): return False
    k = max(1, len(l) // 10)
    return l[-k:].mean() <= ratio * l[:k].mean()


PRESETS = {
    # The article: ResNet34, batch size 128, 10 epochs, one-cycle; mixed precision on a GPU.
    'article': dict(arch='resnet34', bs=128, epochs=10, lr='auto', size=None, pretrained=True, fp16=True, n_train=None),
    # A laptop without a GPU: a small fastai-built CNN, sized for at most 10 minutes on 2 cores.
    'cpu': dict(arch='kmnist_cnn', bs=128, epochs=6, lr=1e-2, size=None, pretrained=False, fp16=False, n_train=None),
    # Tests: tiny, under a minute.
    'quick': dict(arch='kmnist_cnn', bs=32, epochs=3, lr=1e-2, size=None, pretrained=False, fp16=False,
                  n_train=2000, n_test=500),
}


def versions():
    import fastai, fastcore, fasttransform, platform
    v = dict(python=platform.python_version(), torch=torch.__version__, fastai=fastai.__version__,
             fastcore=fastcore.__version__, fasttransform=fasttransform.__version__, numpy=np.__version__)
    try:
        import wandb; v['wandb'] = wandb.__version__
    except ImportError: pass
    return v


def history(learn):
    "Per-epoch rows of fastai's recorder: epoch, train_loss, valid_loss and the metrics (not the time)."
    names = [n for n in learn.recorder.metric_names if n not in ('epoch', 'time')]
    return [{'epoch': i, **{n: float(v) for n, v in zip(names, vals)}} for i, vals in enumerate(learn.recorder.values)]


def find_lr(learn, num_it=100):
    "`lr_find` with the article's rule; returns `(rate by the rule, fastai's valley)` and keeps the raw losses."
    raw = RawLossRecorder()
    with learn.added_cbs(raw):
        sug = learn.lr_find(num_it=num_it, suggest_funcs=(article_rule, valley), show_plot=False)
    learn.raw_losses = raw.losses
    return sug.article_rule, sug.valley


def auto_preset():
    "The preset the notebooks choose: the article's on a GPU, the `cpu` one without."
    return 'article' if on_gpu() else 'cpu'


def make_config(dataset='kmnist', preset='article', **overrides):
    "A preset's settings with `overrides` (those that are not None) on top, plus the dataset and seed."
    presets = CALLIGRAPHY_PRESETS if dataset == 'calligraphy' else PRESETS
    if preset not in presets: raise ValueError(f"preset must be one of {', '.join(presets)}, not {preset!r}")
    cfg = dict(dataset=dataset, preset=preset, seed=42, valid_pct=0.2 if dataset == 'calligraphy' else 0.1,
               wandb='offline', n_test=None)
    cfg.update(presets[preset])
    cfg.update({k: v for k, v in overrides.items() if v is not None})
    return cfg


def load_for(cfg, data=None):
    "A config's data: `(train, test, classes, dls)`, subsampled as the preset says, seeded."
    set_seed(cfg['seed'])
    (x, y), test, classes = load_arrays(data, dataset=cfg['dataset'])
    if cfg.get('n_train'): x, y = subsample(x, y, cfg['n_train'], cfg['seed'])
    if cfg.get('n_test'): test = subsample(*test, cfg['n_test'], cfg['seed'])
    dls = kmnist_dls((x, y), classes, valid_pct=cfg['valid_pct'], seed=cfg['seed'], bs=cfg['bs'], size=cfg['size'])
    return (x, y), test, classes, dls


def run_training(cfg, data=None, log=print):
    """Train once from a config (see `make_config`) and return the results: test and validation accuracy,
    per-epoch history, wall time, images/s, device, library versions and the config. What `scripts/train.py` runs."""
    (x, y), test, classes, dls = load_for(cfg, data)
    cb = start_wandb(cfg['wandb'], config=cfg, name=f"{cfg['dataset']}-{cfg['preset']}-{cfg['arch']}-bs{cfg['bs']}")
    learn = learner_for(cfg, dls, [cb])
    lr = pick_lr(cfg, learn)
    log(f'learning rate {lr:.2e}' + (" (lr_find with the article's rule)" if cfg['lr'] == 'auto' else ''))
    t0 = time.time()
    learn.fit_one_cycle(cfg['epochs'], lr)
    seconds = time.time() - t0
    hist = history(learn)  # before validate(), which overwrites the recorder's last values
    n_seen = cfg['epochs'] * len(dls.train) * cfg['bs']
    _, valid_acc, _ = learn.validate()
    _, test_acc, _ = learn.validate(dl=test_dl(dls, test))
    finish_wandb(learn)
    return dict(test_accuracy=float(test_acc), valid_accuracy=float(valid_acc), history=hist,
                seconds=round(seconds, 1), images_per_second=round(n_seen / seconds, 1), device=device_name(),
                cpu_cores=os.cpu_count(), versions=versions(), lr=float(lr), weights=learn.weights,
                config=cfg, n_train=len(dls.train_ds), n_valid=len(dls.valid_ds), n_test=len(test[0])), learn


def write_json(obj, path):
    "Write JSON atomically: a crash never leaves a half-written results file under the final name."
    path = Path(path); path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + '.tmp')
    tmp.write_text(json.dumps(obj, indent=1, ensure_ascii=False), encoding='utf-8')
    os.replace(tmp, path)


def batch_size_study(train, classes, cfg, sizes=(512, 256, 128), epochs=None, stop_when_ok=True, log=print):
    """The article's batch-size study: start at the largest batch size and halve while training misbehaves
    (`loss_clearly_falling` says no), down to the smallest. Each run is a fresh learner with the same seed, and
    its own W&B run. Returns one dict per run: bs, ok, raw batch losses, images seen, per-epoch history."""
    runs = []
    for bs in sizes:
        set_seed(cfg['seed'])
        dls = kmnist_dls(train, classes, valid_pct=cfg['valid_pct'], seed=cfg['seed'], bs=bs, size=cfg['size'])
        cb = start_wandb(cfg['wandb'], config={**cfg, 'bs': bs}, name=f"bs-study-{cfg['arch']}-bs{bs}")
        raw = RawLossRecorder()
        learn = learner_for(cfg, dls, [cb, raw])
        lr = pick_lr(cfg, learn) * (bs / cfg['bs'] if cfg['lr'] != 'auto' else 1)  # scale a fixed rate with bs
        learn.fit_one_cycle(epochs or cfg['epochs'], lr)
        ok = loss_clearly_falling(smooth(raw.losses))
        runs.append(dict(bs=bs, lr=lr, ok=ok, losses=raw.losses, images=list(np.arange(1, len(raw.losses) + 1) * bs),
                         history=history(learn)))
        finish_wandb(learn)
        log(f"bs {bs}: lr {lr:.1e}, final valid accuracy {runs[-1]['history'][-1]['accuracy']:.4f}, "
            f"loss {'clearly falling' if ok else 'NOT clearly falling: halve the batch size'}")
        if ok and stop_when_ok: break
    return runs


def plot_batch_size_study(runs):
    "Training loss against images seen (so batch sizes compare fairly), and each run's final validation accuracy."
    import matplotlib.pyplot as plt
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 3.8), gridspec_kw={'width_ratios': [3, 2]})
    accs = [r['history'][-1]['accuracy'] for r in runs]
    for r in runs:
        a.plot(r['images'], smooth(r['losses']), label=f"bs {r['bs']}{'' if r['ok'] else ' (misbehaves)'}")
    a.set(xlabel='training images seen', ylabel='training loss (smoothed)', title='Training loss')
    a.legend(); a.grid(alpha=0.3)
    bars = b.bar([f"bs {r['bs']}" for r in runs], accs, color=[f'C{i}' for i in range(len(runs))])
    b.bar_label(bars, labels=[f'{v:.2%}' for v in accs])
    lo = min(accs)
    b.set(ylabel='validation accuracy', title='After the last epoch', ylim=(max(0, lo - 2 * (1 - lo) - 0.01), 1))
    fig.tight_layout()
    return fig


def save_lr(lr, learn=None, dataset='kmnist'):
    "Remember notebook 03's learning rate for notebook 04, and whether its model had random or ImageNet weights."
    about = {'weights': learn.weights} if getattr(learn, 'weights', None) else {}
    write_json({'lr': float(lr), **about}, OUT_DIR / 'results' / f'lr_{dataset}.json')


def load_lr(dataset='kmnist', default=None, quiet=False):
    "The rate `save_lr` kept on this machine, or `default` (saying which, unless `quiet`)."
    p = OUT_DIR / 'results' / f'lr_{dataset}.json'
    if not p.exists():
        if not quiet: print(f"No learning rate saved by notebook 03 on this machine (in Colab each notebook has a "
                            f"machine of its own): using {default!r}" + (", so lr_find with the article's rule runs "
                            "before training." if default == 'auto' else '.'))
        return default
    saved = json.loads(p.read_text())
    if not quiet: print(f"Learning rate {saved['lr']:.2e} from notebook 03" +
                        (f", found for a model with {saved['weights']} weights." if saved.get('weights') else '.'))
    return saved['lr']


def training_speed(learn, n_batches=5):
    "Training images per second of `learn` on its own DataLoader (forward, backward, step), a few batches."
    model, opt = learn.model.train(), torch.optim.SGD(learn.model.parameters(), lr=1e-4)
    it, seen = iter(learn.dls.train), 0
    xb, yb = next(it)
    learn.loss_func(model(xb), yb).backward()  # warm up
    amp = torch.autocast('cuda', dtype=torch.float16, enabled=use_fp16())  # as to_fp16() trains on a GPU
    t0 = time.perf_counter()
    for _ in range(n_batches):
        xb, yb = next(it)
        with amp: loss = learn.loss_func(model(xb), yb)
        loss.backward(); opt.step(); opt.zero_grad()
        seen += len(xb)
    if on_gpu(): torch.cuda.synchronize()
    return seen / (time.perf_counter() - t0)


# ---------------------------------------------------------------------------------------------
# 8. Calligraphy data: safe zip extraction, and a cleaned, resized copy of messy web images
# ---------------------------------------------------------------------------------------------
# The data set (1,829 files in 3 class folders) is real web data: a few files are not images, 822 names are
# GBK bytes (not UTF-8), 7 groups of byte-identical duplicates (one in two classes), RGB/grayscale JPEG, PNG
# with alpha, a GIF, sizes from under 256 px to several thousand. The originals are never changed: `prepare`
# writes a new folder with safe ASCII names, and `report.csv` says why each skipped file was skipped.
import io, re, stat, zipfile
REPORT_COLUMNS = ['file', 'class', 'reason']
MANIFEST_COLUMNS = ['file', 'class', 'source', 'source_md5', 'width', 'height']


def _raw_name(info: zipfile.ZipInfo) -> bytes:
    """The entry's name as the bytes stored in the zip. Without the UTF-8 flag (0x800) Python decoded
    them as cp437, which maps all 256 bytes one to one, so encoding back gives the original (here GBK) bytes."""
    return info.filename.encode('utf-8' if info.flag_bits & 0x800 else 'cp437')


def _unsafe(raw: bytes, info: zipfile.ZipInfo) -> str | None:
    "Why this entry must not be extracted, or None."
    parts = re.split(rb'[/\\]', raw)
    if raw.startswith((b'/', b'\\')) or re.match(rb'^[A-Za-z]:', raw): return 'an absolute path'
    if b'..' in parts: return 'a path with ..'
    if stat.S_ISLNK(info.external_attr >> 16): return 'a symbolic link'
    return None


def _class_path(raw: bytes, classes) -> tuple[str, list[bytes]] | None:
    "(class, path inside the class folder) for `[top/]data/<class>/...` entries, else None."
    parts = [p for p in raw.split(b'/') if p]
    for i in (1, 0):  # GitHub's layout has a top folder `<repo>-<commit>/`; a hand-made zip may not
        if len(parts) > i + 1 and parts[i] == b'data' and parts[i + 1].decode('ascii', 'replace') in classes:
            return parts[i + 1].decode('ascii'), parts[i + 2:]
    return None


def extract_zip(zip_path, dest, classes=CALLIGRAPHY_CLASSES, force=False, quiet=False) -> Path:
    """Extract the `data/<class>/` folders of the zip into `dest/<class>/`, safely: every entry is checked
    (no absolute path, no `..`, no symlink) before anything is written; the files go to a temporary folder
    and are moved into place only when all went well. File names keep their exact bytes (GBK included)."""
    zip_path, dest = Path(zip_path), Path(dest)
    try:
        zf = zipfile.ZipFile(zip_path)
    except (zipfile.BadZipFile, OSError) as e:
        raise DownloadError(f'{zip_path.name} is not a readable zip ({e}): delete it and download again.') from e
    with zf:
        entries = [(i, _raw_name(i)) for i in zf.infolist()]
        for info, raw in entries:
            if why := _unsafe(raw, info):
                raise DownloadError(f'{zip_path.name}: refusing {raw!r} ({why}); the archive was not extracted.')
        wanted = [(info, *cp) for info, raw in entries if (cp := _class_path(raw, classes))]
        found = sorted({c for _, c, _ in wanted})
        if not found:
            raise DownloadError(f'{zip_path.name} has no data/<class>/ folders for {", ".join(classes)}: '
                                  f'is it the right archive? Delete it and download again.')
        if all((dest / c).is_dir() for c in found) and not force:
            if not quiet: print(f'  {zip_path.name}: already extracted')
            return dest
        dest.mkdir(parents=True, exist_ok=True)
        tmp = dest / '.extracting'
        if tmp.exists(): shutil.rmtree(tmp)
        try:
            for info, c, rest in wanted:
                # readable UTF-8 names (GBK decoded): every file system takes them, macOS's too
                target = Path(tmp, c, *(readable(p) for p in rest))
                if info.is_dir() or not rest: target.mkdir(parents=True, exist_ok=True); continue
                target.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(info) as src, open(target, 'wb') as out: shutil.copyfileobj(src, out, 1 << 20)
        except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as e:
            shutil.rmtree(tmp, ignore_errors=True)
            raise DownloadError(f'{zip_path.name} is damaged ({e}): delete it and download again.') from e
    _move_into_place(tmp, dest, found)
    if not quiet: print(f'  {zip_path.name}: extracted {len(wanted)} entries into {dest}')
    return dest


# ---------------------------------------------------------------------------------------------
# Prepare: decode, deduplicate, RGB on white, resize, report
# ---------------------------------------------------------------------------------------------
def readable(raw: bytes) -> str:
    "A file name for people: UTF-8, else GBK (most of this data set), else the bytes' repr."
    for enc in ('utf-8', 'gbk'):
        try: return raw.decode(enc)
        except UnicodeDecodeError: pass
    return repr(raw)


def _scan(src: bytes):
    "(name bytes, is a regular file, is a folder) for each entry of `src`, sorted by name bytes."
    with os.scandir(src) as it:
        return sorted((e.name, e.is_file(follow_symlinks=False), e.is_dir(follow_symlinks=False)) for e in it)


def to_rgb(im):
    """First frame, EXIF rotation applied, as RGB; transparent areas (RGBA, LA, PA, P or L/RGB with a
    transparency colour) are composited onto white, the paper colour, not black."""
    from PIL import Image, ImageOps
    im.seek(0)
    im = ImageOps.exif_transpose(im)
    if im.mode in ('RGBA', 'LA', 'PA', 'RGBa', 'La') or 'transparency' in im.info:
        im = im.convert('RGBA')
        bg = Image.new('RGBA', im.size, (255, 255, 255, 255))
        bg.alpha_composite(im)
        return bg.convert('RGB')
    return im.convert('RGB')


def shrink(im, max_side):
    "Downsize so that the shorter side is `max_side` (never upsample)."
    from PIL import Image
    w, hgt = im.size
    short = min(w, hgt)
    if short <= max_side: return im
    size = (max_side, max(1, round(hgt * max_side / w))) if w <= hgt else (max(1, round(w * max_side / hgt)), max_side)
    return im.resize(size, Image.LANCZOS)


def _decode(data: bytes):
    "(PIL image, None) or (None, reason)."
    from PIL import Image, ImageFile, UnidentifiedImageError
    old, ImageFile.LOAD_TRUNCATED_IMAGES = ImageFile.LOAD_TRUNCATED_IMAGES, False  # a truncated file is an error
    try:
        im = Image.open(io.BytesIO(data))
        im.load()
        return im, None
    except UnidentifiedImageError:
        return None, 'not an image'
    except Exception as e:  # OSError, SyntaxError, ValueError, DecompressionBombError...
        return None, f'truncated or corrupt image: {e}'
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = old


def _write_csv(path, columns, rows):
    with open(path, 'w', newline='', encoding='utf-8') as f:
        w = csv.DictWriter(f, columns); w.writeheader(); w.writerows(rows)


def _read_csv(path):
    with open(path, newline='', encoding='utf-8') as f: return list(csv.DictReader(f))


def _saved(dest: Path, classes) -> dict:
    "The result of an earlier `prepare`, read back from its CSV files."
    kept = dict.fromkeys(classes, 0)
    for r in _read_csv(dest / 'manifest.csv'): kept[r['class']] = kept.get(r['class'], 0) + 1
    return {'kept': kept, 'skipped': read_report(dest), 'path': dest}


def _collect(src: Path, classes):
    "Files per class as (name bytes, path bytes, md5), and report rows for what is not in a class folder."
    bsrc, files, skipped = os.fsencode(src), {}, []
    for name, is_file, is_dir in _scan(bsrc):
        c = name.decode('utf-8', 'replace')
        if is_dir and c in classes:
            files[c] = []
            for n, f, d in _scan(os.path.join(bsrc, name)):
                if not f:
                    skipped.append({'file': readable(n), 'class': c,
                                    'reason': 'a folder (not looked into)' if d else 'not a regular file'})
                    continue
                path = os.path.join(bsrc, name, n)
                files[c].append((n, path, md5sum(path)))
        elif is_dir:
            skipped.append({'file': readable(name) + '/', 'class': '',
                            'reason': f'folder not in CALLIGRAPHY_CLASSES ({", ".join(classes)}): ignored'})
        else:
            skipped.append({'file': readable(name), 'class': '', 'reason': 'not in a class folder'})
    return files, skipped


def prepare(src, dest, max_side=384, force=False, classes=CALLIGRAPHY_CLASSES, quiet=False) -> dict:
    """Write a clean copy of the class folders `src/<class>/` into `dest/<class>/<class>_NNNN.jpg`:
    every file that PIL decodes, as RGB (transparency on white, GIF first frame), shorter side at most
    `max_side`, JPEG quality 90. Skipped, with a reason in `dest/report.csv`: files that are not images or
    are truncated/corrupt; byte-identical duplicates within a class (the first by name bytes is kept);
    files whose bytes appear in two or more classes (dropped from all: the label is unknown); files
    directly in `src`; folders not in `classes` (one row each, their content is not read).
    `dest/manifest.csv` lists every output with its source name and md5. `src` is only read. The work
    is done in `<dest>.tmp`, renamed to `dest` at the end. If `dest/manifest.csv` exists and not `force`,
    the saved result is returned without decoding anything.
    Returns {'kept': {class: n}, 'skipped': [{'file', 'class', 'reason'}], 'path': dest}."""
    src, dest = Path(src), Path(dest)
    if not src.is_dir(): raise FileNotFoundError(f'no such folder: {src}')
    rs, rd = src.resolve(), dest.resolve()
    if rs == rd or rd in rs.parents or rs in rd.parents:
        raise ValueError(f'dest ({dest}) must be outside src ({src}) and must not contain it: the originals are kept apart.')
    if (dest / 'manifest.csv').exists() and not force:
        if not quiet: print(f'  {dest}: already prepared')
        return _saved(dest, classes)
    files, skipped = _collect(src, classes)
    if not files:
        raise FileNotFoundError(f'{src} holds none of the class folders {", ".join(classes)}: pass the folder that '
                                f'contains them.')
    in_classes = {}
    for c, fs in files.items():
        for _, _, m in fs: in_classes.setdefault(m, set()).add(c)
    tmp = dest.with_name(dest.name + '.tmp')
    if tmp.exists(): shutil.rmtree(tmp)
    kept, manifest = dict.fromkeys(classes, 0), []
    try:
        for c in classes:
            if c not in files: continue
            (tmp / c).mkdir(parents=True)
            first = {}
            for name, path, m in files[c]:
                row = {'file': readable(name), 'class': c}
                if len(in_classes[m]) > 1:
                    skipped.append({**row, 'reason': f'same file in classes {", ".join(sorted(in_classes[m]))}'}); continue
                if m in first:
                    skipped.append({**row, 'reason': f'duplicate of {first[m]}'}); continue
                first[m] = row['file']
                with open(path, 'rb') as f: im, why = _decode(f.read())
                if why: skipped.append({**row, 'reason': why}); continue
                try:
                    im = shrink(to_rgb(im), max_side)
                except Exception as e:  # a decoder that fails only on conversion
                    skipped.append({**row, 'reason': f'truncated or corrupt image: {e}'}); continue
                out = f'{c}/{c}_{kept[c]:04d}.jpg'
                im.save(tmp / out, 'JPEG', quality=90)
                manifest.append({'file': out, 'class': c, 'source': row['file'], 'source_md5': m,
                                 'width': im.width, 'height': im.height})
                kept[c] += 1
        if not sum(kept.values()):
            raise ValueError(f'No usable image in {src}: every file was skipped ({len(skipped)} files). Is it the right folder?')
        _write_csv(tmp / 'report.csv', REPORT_COLUMNS, skipped)
        _write_csv(tmp / 'manifest.csv', MANIFEST_COLUMNS, manifest)  # written last: it marks a complete folder
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = dest.with_name(dest.name + '.old')
    if old.exists(): shutil.rmtree(old)
    if dest.exists(): os.replace(dest, old)
    os.replace(tmp, dest)
    if old.exists(): shutil.rmtree(old)
    if not quiet:
        print(f'  prepared {sum(kept.values())} images into {dest} '
              f'({", ".join(f"{c} {n}" for c, n in kept.items())}); skipped {len(skipped)}, see report.csv')
    return {'kept': kept, 'skipped': skipped, 'path': dest}


def calligraphy_report(dest):
    "The skipped files of a prepared folder (`dest/report.csv`) as a DataFrame: file, class, reason."
    import pandas as pd
    return pd.DataFrame(read_report(dest), columns=REPORT_COLUMNS)


# ---------------------------------------------------------------------------------------------
# 9. Calligraphy styles: DataLoaders at any size, and progressive resizing (128 px, then 256 px)
# ---------------------------------------------------------------------------------------------
from fastai.vision.all import (RandomSplitter, Resize, get_image_files, imagenet_stats, parent_label)


def calligraphy_dls(path, size=128, bs=32, valid_pct=0.2, seed=42, device=None):
    """DataLoaders from class folders at `size` pixels: seeded 20% validation split, fastai's presizing (resize
    items a little larger, then crop and augment whole batches), no flips (calligraphy is never mirrored: a
    mirrored character is a different shape, or none), ImageNet normalisation (the pretrained weights expect it)."""
    dblock = DataBlock(blocks=(ImageBlock, CategoryBlock), get_items=get_image_files, get_y=parent_label,
                       splitter=RandomSplitter(valid_pct, seed=seed), item_tfms=Resize(int(size * 1.25)),
                       batch_tfms=[*aug_transforms(size=size, do_flip=False, max_rotate=5., min_scale=0.75),
                                   Normalize.from_stats(*imagenet_stats)])
    return dblock.dataloaders(path, bs=bs, device=device or default_device())


class SeenSizes(Callback):
    "Record the (height, width) of every training batch the model saw (until `sizes.clear()`), to check resizing."
    order = 90
    def __init__(self): self.sizes = set()
    def before_batch(self):
        if self.training: self.sizes.add(tuple(self.xb[0].shape[-2:]))


CALLIGRAPHY_PRESETS = {
    # The article's recipe (with a ResNet34; it used a ResNet50): 128 px, then 256 px, frozen then unfrozen each.
    'article': dict(arch='resnet34', sizes=(128, 256), bs=32, frozen=3, unfrozen=4, lr='auto', pretrained=True,
                    fp16=True, n_per_class=None),
    # A laptop: a ResNet18 at half the sizes.
    'cpu': dict(arch='resnet18', sizes=(64, 128), bs=32, frozen=1, unfrozen=2, lr='auto', pretrained=True,
                fp16=False, n_per_class=None),
    # Tests: the real sizes, tiny data, one epoch per phase, fixed rates (no lr_find).
    'quick': dict(arch='resnet18', sizes=(128, 256), bs=8, frozen=1, unfrozen=1, lr=1e-3, pretrained=False,
                  fp16=False, n_per_class=12),
}


def calligraphy_folder(data=None, quiet=False):
    """A prepared folder to train on. Our own `prepare` output is used as it is; any other folder of class
    folders (a download you made by hand, a classroom copy) is prepared once into `data/cache/`."""
    if data is None: return download('calligraphy', quiet=quiet)
    data = Path(data)
    if (data / 'prepared' / 'manifest.csv').exists(): data = data / 'prepared'  # the folder `download` filled
    if (data / 'manifest.csv').exists() and (data / 'report.csv').exists(): return data
    if not data.is_dir() or not any((data / c).is_dir() for c in CALLIGRAPHY_CLASSES):
        raise FileNotFoundError(f'{data} holds none of the class folders {", ".join(CALLIGRAPHY_CLASSES)}: pass the '
                                f'folder that contains them (or run scripts/download_data.py --dataset calligraphy).')
    cache = DATA_DIR / 'cache' / f'calligraphy-{hashlib.md5(str(data.resolve()).encode()).hexdigest()[:8]}'
    return prepare(data, cache, quiet=quiet)['path']


def limit_per_class(path, n, seed=42):
    "A folder of symlinks to at most `n` images per class (quick runs on a big folder)."
    if not n: return path
    key = hashlib.md5(f'{Path(path).resolve()}|{n}|{seed}'.encode()).hexdigest()[:8]
    out = DATA_DIR / 'cache' / f'calligraphy-subset-{key}'
    if out.exists() and (out / '.complete').exists(): return out
    tmp = out.with_name(out.name + '.tmp')
    if tmp.exists(): shutil.rmtree(tmp)
    rng = random.Random(seed)
    for c in sorted(p for p in path.iterdir() if p.is_dir()):
        files = sorted(get_image_files(c)); rng.shuffle(files)
        (tmp / c.name).mkdir(parents=True)
        for f in files[:n]: (tmp / c.name / f.name).symlink_to(f.resolve())
    (tmp / '.complete').touch()
    if out.exists(): shutil.rmtree(out)
    os.replace(tmp, out)
    return out


def progressive_resizing(cfg, data=None, log=print):
    """The calligraphy recipe, headless: stage 1 at `sizes[0]` (frozen, then unfrozen with discriminative rates),
    stage 2 at `sizes[1]` on the same learner (frozen, then unfrozen). Returns (results, learner)."""
    set_seed(cfg['seed'])
    path = calligraphy_folder(data, quiet=True)
    skipped = read_report(path)
    path = limit_per_class(path, cfg.get('n_per_class'))
    seen = SeenSizes()
    cb = start_wandb(cfg['wandb'], config=cfg, name=f"calligraphy-{cfg['preset']}-{cfg['arch']}")
    stages, hist, t0, n_seen = [], [], time.time(), 0
    learn = None
    for stage, size in enumerate(cfg['sizes'], 1):
        dls = calligraphy_dls(path, size=size, bs=cfg['bs'], valid_pct=cfg['valid_pct'], seed=cfg['seed'])
        if learn is None:
            learn = learner_for(cfg, dls, [cb, seen], n_in=3)
        else:
            learn.dls = dls  # progressive resizing: same weights, bigger images
        seen.sizes.clear()
        learn.freeze()
        lr = pick_lr(cfg, learn)
        learn.fit_one_cycle(cfg['frozen'], lr)
        hist += [{'stage': stage, 'size': size, 'phase': 'frozen', **r} for r in history(learn)]
        learn.unfreeze()
        lr2 = pick_lr(cfg, learn)
        learn.fit_one_cycle(cfg['unfrozen'], slice(lr2 / 100, lr2))
        hist += [{'stage': stage, 'size': size, 'phase': 'unfrozen', **r} for r in history(learn)]
        n_seen += (cfg['frozen'] + cfg['unfrozen']) * len(dls.train) * cfg['bs']
        _, acc, _ = learn.validate()
        stages.append({'stage': stage, 'size': size, 'seen_sizes': sorted(seen.sizes), 'valid_accuracy': float(acc),
                       'lr_frozen': float(lr), 'lr_unfrozen': [float(lr2) / 100, float(lr2)]})
        log(f"stage {stage} at {size} px: validation accuracy {acc:.4f}")
    seconds = time.time() - t0
    finish_wandb(learn)
    res = dict(test_accuracy=None, valid_accuracy=stages[-1]['valid_accuracy'], stages=stages, history=hist,
               skipped=skipped, seconds=round(seconds, 1), images_per_second=round(n_seen / seconds, 1),
               device=device_name(), cpu_cores=os.cpu_count(), versions=versions(), config=cfg, weights=learn.weights,
               n_train=len(learn.dls.train_ds), n_valid=len(learn.dls.valid_ds),
               note='no official test set: the validation set (seeded 20%) is the score')
    return res, learn


def read_report(path):
    "The preparation report of a prepared folder as a list of {'file', 'class', 'reason'}."
    p = Path(path) / 'report.csv'
    return _read_csv(p) if p.exists() else []
