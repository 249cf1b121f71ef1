"""Kuzushiji-Kanji: folders of PNGs named by code point, read once into arrays, split the same way for everyone.

The archive (`download_data.py --dataset kkanji`) holds `kkanji2/U+XXXX/<name>.png`, one folder per class. A class is
named by its code point and labelled here by the character itself (`U+4E00` -> 一); `label_text` shows the code
point where the series' Japanese font has no glyph (a few classes lie in CJK Extension B).

No official train/test split exists, so `split_parts` makes one that depends on nothing but the file names: in each
class the files are ordered by a hash of their name, and classes with at least `MIN_IMAGES` images give a fixed
share to the test set and as many to the validation set; smaller classes stay in training, but for one image of each
class with 2 to 4, held back as a check of its own on the rarest classes (`rare`).

Reading 140,000 small PNGs one by one is slow (about 0.3 ms each), so `load_kanji` decodes them once, in parallel,
into one uint8 array at the size asked for and keeps it in `data/kkanji/` (`.npz`) beside the folders; the array
then feeds the fast tensor DataLoaders of `dataloaders.kmnist_dls`, as notebook 02 teaches. Uses: settings, arrays."""
from __future__ import annotations

import hashlib, os, re
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from . import settings
from .arrays import DataFormatError

FOLDER = 'kkanji2'  # the archive's top folder
CLASS_DIR = re.compile(r'^U\+([0-9A-F]{4,6})$')
MIN_IMAGES = 5  # a class needs this many images to give some to validation and test
SHARE = 0.1  # of each such class: this share (at least one image) to test, as many to validation
PARTS = ('train', 'valid', 'test', 'rare')


def char_of(folder):
    "The character a class folder stands for: 'U+4E00' -> '一'."
    m = CLASS_DIR.match(Path(folder).name)
    if not m: raise DataFormatError(f'{folder}: a class folder is named by its code point, such as U+4E00.')
    return chr(int(m.group(1), 16))


def code_point(char): return f'U+{ord(char):04X}'


def kanji_label(path):
    "The label of an image file: the character its folder names (a getter for `DataBlock`)."
    return char_of(Path(path).parent.name)


@lru_cache(maxsize=1)
def _font_chars():
    "The characters IPAexGothic (the series' Japanese font, from matplotlib-fontja) has glyphs for."
    import matplotlib_fontja
    from fontTools.ttLib import TTFont
    return frozenset(map(chr, TTFont(Path(matplotlib_fontja.__file__).parent / 'fonts' / 'ipaexg.ttf').getBestCmap()))


def in_font(char): return char in _font_chars()


def label_text(char):
    "How a kanji reads on a plot or a page: the character, or its code point where the font has no glyph for it."
    return char if in_font(char) else code_point(char)


def find_root(root=None):
    "The folder that holds the class folders: `root` itself, or its `kkanji2/` (default data/kkanji)."
    root = Path(root) if root else settings.DATA_DIR / 'kkanji'
    if (root / FOLDER).is_dir(): root = root / FOLDER
    if not root.is_dir():
        raise FileNotFoundError(f'{root} not found. Download Kuzushiji-Kanji with\n'
                                f'  python scripts/download_data.py --dataset kkanji\n'
                                f'or point --data (or KUZUSHIJI_DATA) at the folder that holds {FOLDER}/.')
    return root


def kanji_files(root=None, log=print):
    """Every image of the data set as `(relative paths, labels, classes)`: paths `U+XXXX/name.png` under the class
    folders of `root`, labels as indices into `classes`, the characters in code point order. A file that is not a PNG
    is left out, and so is a class folder with no images; each gets one line saying so."""
    root = find_root(root)
    dirs = sorted((d for d in root.iterdir() if d.is_dir()), key=lambda d: ord(char_of(d)))
    if not dirs: raise DataFormatError(f'{root} holds no class folders (U+XXXX/): extract the archive again.')
    paths, labels, classes, strays, empty = [], [], [], [], []
    for d in dirs:
        names = sorted(f.name for f in os.scandir(d) if f.is_file() and not f.name.startswith('.'))
        pngs = [n for n in names if n.lower().endswith('.png')]
        strays += [f'{d.name}/{n}' for n in names if not n.lower().endswith('.png')]
        if not pngs: empty.append(d.name); continue
        labels += [len(classes)] * len(pngs); classes.append(char_of(d))
        paths += [f'{d.name}/{n}' for n in pngs]
    if strays: log(f'Left out {len(strays)} file(s) that are not PNG images, such as {strays[0]}.')
    if empty: log(f'Left out {len(empty)} class folder(s) with no images: {", ".join(empty[:5])}'
                  f'{" ..." if len(empty) > 5 else ""}.')
    return paths, np.array(labels, dtype=np.int32), classes


def name_hash(path):
    "A number in [0, 1) from a file's name alone: the same on every machine, whatever the random state."
    return int(hashlib.md5(Path(path).name.encode()).hexdigest()[:13], 16) / 16 ** 13


def split_parts(paths, labels, min_images=MIN_IMAGES, share=SHARE):
    """Which part each image belongs to: 0 train, 1 valid, 2 test, 3 rare (`PARTS`). In every class with at least
    `min_images` images, the files with the smallest `name_hash` go to test (`share` of the class, rounded, at
    least one), the next as many to validation, the rest to training. A class with 2 to `min_images - 1` images gives
    its first file to `rare`, a check on the classes too small for a test share, and keeps the others for training;
    a class with one image keeps it for training."""
    labels = np.asarray(labels)
    part = np.zeros(len(labels), np.int8)
    order = np.lexsort(([name_hash(p) for p in paths], labels))  # by class, then by hash
    starts = np.flatnonzero(np.r_[True, np.diff(labels[order]) != 0])
    for s, e in zip(starts, np.r_[starts[1:], len(order)]):
        if e - s < min_images:
            if e - s >= 2: part[order[s]] = 3
            continue
        k = max(1, int(share * (e - s) + 0.5))  # half rounds up
        part[order[s:s + k]], part[order[s + k:s + 2 * k]] = 2, 1
    return part


def read_png(path, size=None):
    "One image as a (size, size) uint8 grayscale array; a file that cannot be decoded is an error that names it."
    try:
        with Image.open(path) as im:
            im = im.convert('L')
            if size and im.size != (size, size): im = im.resize((size, size), Image.LANCZOS)
            return np.asarray(im)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise DataFormatError(f'{path} is not a readable image ({type(e).__name__}): delete it, or extract the '
                              f'archive again.') from None


def _read_many(args):
    root, paths, size = args
    return np.stack([read_png(root / p, size) for p in paths])


def load_kanji(root=None, size=32, workers=None, log=print):
    """The whole data set as a dict: `x` (N, size, size) uint8 images (white ink on black, as stored; other sizes are
    resized), `y` labels, `classes` (characters), `paths`, `part` (`split_parts`) and `counts` (training images per
    class). Decoded once, with `workers` processes (default: every core), then kept in `<root>/../kkanji-<size>px.npz`
    and read from there while the file list is unchanged."""
    root = find_root(root)
    paths, y, classes = kanji_files(root, log)
    cache = root.parent / f'kkanji-{size}px.npz'
    x = None
    if cache.exists():
        try:
            with np.load(cache) as z:
                if z['paths'].tolist() == paths: x = z['x']
        except (OSError, ValueError, KeyError):
            pass  # an unreadable cache is made again
    if x is None:
        from concurrent.futures import ProcessPoolExecutor
        chunks = [(root, paths[i:i + 4000], size) for i in range(0, len(paths), 4000)]
        workers = workers or os.cpu_count() or 1
        if workers > 1 and len(chunks) > 1:
            with ProcessPoolExecutor(workers) as ex: x = np.concatenate(list(ex.map(_read_many, chunks)))
        else: x = np.concatenate([_read_many(c) for c in chunks]) if chunks else np.zeros((0, size, size), np.uint8)
        tmp = cache.with_name(cache.name + '.tmp.npz')
        np.savez(tmp, x=x, paths=np.array(paths))
        os.replace(tmp, cache)  # never a half-written cache under the final name
    part = split_parts(paths, y)
    counts = np.bincount(y[part == 0], minlength=len(classes))
    return dict(x=x, y=y, classes=classes, paths=paths, part=part, counts=counts)
