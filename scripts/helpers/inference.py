"""Inference: a trained model put to work on images it has never seen, with the same preprocessing as in training.

One pure function per kind of input, each tested on its own (tests/test_inference.py):
    read_image      a path, bytes, a PIL image or an array -> a PIL image, shrunk first (JPEG: decoded small),
                    with a one-sentence `InputError` for a missing, non-image, truncated or huge file
    ink             any image -> ink in [0, 1] (1 = ink) whatever the polarity: black on white, white on black,
                    transparent, RGB, palette, grayscale, EXIF-rotated; a photo's paper grain left out
    char_input      a drawing or a photo of one character -> the white-on-black uint8 image KMNIST (28x28) and
                    Kuzushiji-Kanji (32x32 for our models) have; `kmnist_input` is it at 28 px
    as_photo        a data set's image as a photo of ink on paper (margins, a turn, grain, blur, JPEG), to test with
    photo_input     a calligraphy photo -> RGB, shorter side at most 384 px, as notebook 05 trained on
The rule for `char_input` comes from the data, measured on the 10,000 KMNIST test images: white ink on black;
the character's box touches the frame on its longer side (98.5% of images: longer side 28 px of 28, no margin;
the shorter side keeps the aspect ratio: median width/height 0.82) and is centred by its box (box centre 13.5 px
in both directions for the median image, while the centre of mass wanders from 11 to 16 px); the brightest pixel
is 255 in every image. MNIST's recipe (a 20 px box in a 28 px frame, centred by mass) would make characters too
small for a model trained on KMNIST. Kuzushiji-Kanji follows the same rule (notebook 08 measures it: the longer side
fills the frame, the aspect ratio is kept, white on black).

After preprocessing, the learner's own DataLoader (`learn.dls.test_dl`) applies the validation transforms it was
exported with (normalisation; for calligraphy Resize(1.25 x size) and the centre crop), then the model runs.
`load_learner` unpickles code: `load_model` only opens files the user named or the series wrote.
Uses: catalogue, cleaning, kanji."""
from __future__ import annotations

import io, time, warnings
from pathlib import Path

import numpy as np
import torch
from fastai.learner import load_learner
from PIL import Image, UnidentifiedImageError

from .catalogue import CALLIGRAPHY_CLASSES, CALLIGRAPHY_NAMES, ROMAJI
from .cleaning import shrink, to_rgb
from .kanji import label_text as kanji_text

MAX_SIDE = 1024        # a drawing or photo is shrunk to this before anything else (the model needs 28 or 256 px)
MAX_PIXELS = 20_000 ** 2  # larger than this is refused before decoding, not shrunk (a decompression bomb)
INK_LEVEL = 0.25       # ink at least this strong counts for the character's box
MIN_CONTRAST = 0.15    # an image whose ink and paper differ less than this is empty (a blank canvas)
NOISE_SIGMAS = 3       # a photo's paper grain: levels within 3 standard deviations of the paper's are paper
PHOTO_SIDE = 384       # notebook 05 trained on copies whose shorter side is at most 384 px (cleaning.prepare)
COMMANDS = {'kmnist': 'python scripts/train.py --dataset kmnist (or run notebook 04)',
            'calligraphy': 'python scripts/train.py --dataset calligraphy (or run notebook 05)',
            'kkanji': 'python scripts/train.py --dataset kkanji (or run notebook 08)'}


class InputError(ValueError):
    "An image or a model file that cannot be used; the message says what is wrong and what to do, in one sentence."


class NoInk(InputError):
    "Nothing drawn: an empty canvas, or a picture with no ink on it."


def read_image(src, max_side=MAX_SIDE):
    """Open `src` (a path, bytes, a PIL image or a uint8 array) as a PIL image whose longer side is at most `max_side`.
    Large JPEGs are decoded at a fraction of their size (`thumbnail` uses `Image.draft`), so a 10,000-pixel photo
    never sits in memory at full size; a truncated or damaged file is an error, not a half-grey picture."""
    if isinstance(src, np.ndarray): return Image.fromarray(np.asarray(src, dtype=np.uint8))
    name = 'the image' if isinstance(src, (bytes, Image.Image)) else str(src)
    try:
        if isinstance(src, Image.Image): im = src.copy() if max(src.size) > max_side else src  # never change theirs
        else:
            with warnings.catch_warnings():
                warnings.simplefilter('ignore', Image.DecompressionBombWarning)  # we check the size ourselves
                im = Image.open(io.BytesIO(src) if isinstance(src, bytes) else src)
        if im.width * im.height > MAX_PIXELS: raise Image.DecompressionBombError(f'{im.width}x{im.height} pixels')
        exif = im.getexif()  # read before `thumbnail`, which may drop it, so EXIF rotation still applies
        if max(im.size) > max_side: im.thumbnail((max_side, max_side), Image.LANCZOS, reducing_gap=2.0)
        im.load()
    except (FileNotFoundError, IsADirectoryError):
        raise InputError(f'{name}: no such file; check the path.') from None
    except Image.DecompressionBombError as e:
        raise InputError(f'{name} is too large to read safely ({e}): shrink it below {int(MAX_PIXELS ** 0.5):,} '
                         f'pixels a side first.') from None
    except UnidentifiedImageError:
        raise InputError(f'{name} is not an image that can be read (PNG, JPEG, GIF, WebP, BMP...): choose an image '
                         f'file.') from None
    except (OSError, SyntaxError, ValueError) as e:  # truncated or damaged data; unreadable file
        raise InputError(f'{name} is damaged or truncated ({e}): save or download it again.') from None
    if exif and not im.getexif(): im.info['exif'] = exif.tobytes()
    return im


def ink(im):
    """Ink in [0, 1] (1 = ink) as float32, whatever the picture: transparency is composited onto white paper,
    EXIF rotation applied, colour made grey. Polarity comes from the border (paper surrounds a character): light
    border, dark ink (a drawing, a photo of paper) is inverted; dark border, light ink (KMNIST) is kept. The paper's
    level becomes 0 and the strongest ink 1, so a grey photo of pencil on paper reads like a clean drawing. A photo's
    paper has grain: its spread on the border (the median absolute deviation, x 1.4826 for a standard deviation,
    robust to a stroke that reaches the edge) sets a floor NOISE_SIGMAS deviations above the paper's level, and
    only what rises above the floor is ink; a drawing's paper is flat, its floor the paper itself. (web/app.js does
    the same, step for step.)"""
    g = np.asarray(to_rgb(im).convert('L'), dtype=np.float32) / 255
    b = max(1, min(g.shape) // 20)
    border = np.concatenate([g[:b].ravel(), g[-b:].ravel(), g[:, :b].ravel(), g[:, -b:].ravel()])
    dark = np.median(border) < 0.5
    a, paper = (g, float(np.median(border))) if dark else (1 - g, 1 - float(np.median(border)))
    edge = border if dark else 1 - border
    floor = paper + NOISE_SIGMAS * 1.4826 * float(np.median(np.abs(edge - np.float32(paper))))
    top = float(a.max())
    if top - floor < MIN_CONTRAST: return np.zeros_like(a)
    return np.clip((a - floor) / (top - floor), 0, 1)


def is_kmnist_image(a, size=28):
    "A size x size grayscale array with a dark border and some ink: already an image of the data set (an original)."
    a = np.asarray(a)
    return a.shape == (size, size) and np.median(np.concatenate([a[0], a[-1], a[:, 0], a[:, -1]])) < 128 and a.max() >= 128


def char_input(src, size=28):
    """A drawing or photo of one character (any size, anywhere on the canvas) -> the size x size uint8 white-on-black
    image a model of this series expects: the ink's box, made square around its centre, scaled so that its longer side
    fills the frame, brightest pixel 255. An original of the data set (size x size, white on black) passes through
    unchanged. Raises `NoInk` for an empty canvas."""
    im = read_image(src)
    if im.size == (size, size) and im.mode in ('L', 'P', 'RGB', 'RGBA', 'LA'):
        a = np.asarray(to_rgb(im).convert('L'))
        if is_kmnist_image(a, size): return a.copy()
    a = ink(im)
    rows, cols = np.flatnonzero((a >= INK_LEVEL).any(1)), np.flatnonzero((a >= INK_LEVEL).any(0))
    if not len(rows): raise NoInk('Nothing to read: there is no ink on the picture; draw a character first.')
    a = a[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
    side = max(a.shape)
    sq = np.zeros((side, side), np.float32)
    top, left = (side - a.shape[0]) // 2, (side - a.shape[1]) // 2
    sq[top:top + a.shape[0], left:left + a.shape[1]] = a
    small = np.asarray(Image.fromarray(sq, 'F').resize((size, size), Image.LANCZOS if side > size else Image.BILINEAR))
    small = np.clip(small, 0, None)
    return (small * (255 / max(small.max(), 1e-6))).round().astype(np.uint8)


def kmnist_input(src):
    "`char_input` at KMNIST's 28 pixels."
    return char_input(src, 28)


def as_drawing(a, size=260, pos=(70, 70), canvas=400, paper=(0, 0, 0, 0)):
    """A 28x28 white-on-black KMNIST image as the app's sketchpad sends a drawing: black ink on a transparent
    (or `paper`-coloured) RGBA canvas, scaled to `size` pixels, its top-left corner at `pos`. For demos and tests."""
    ink_ = Image.fromarray(np.asarray(a, dtype=np.uint8)).resize((size, size), Image.BILINEAR)
    c = Image.new('RGBA', (canvas, canvas), paper)
    c.paste(Image.new('RGBA', (size, size), (0, 0, 0, 255)), tuple(pos), ink_)
    return c


def as_photo(a, rng=None, size=(120, 360)):
    """A data set's image (white on black) as a photo or scan of one character, JPEG bytes: dark ink on light grey
    paper, the character `size` pixels tall (random in that range), margins of 15-40% of the photo on each side, a
    turn of up to 4 degrees, grain, a slight blur, JPEG at quality 70-90. What tools/benchmark_site.py, the tests and
    notebook 06 read as photos; `rng`: a numpy Generator (default seeded 0)."""
    from PIL import ImageFilter
    rng = rng if rng is not None else np.random.default_rng(0)
    side = int(rng.integers(*size))
    ink_ = np.asarray(Image.fromarray(np.asarray(a, np.uint8)).resize((side, side), Image.BICUBIC), np.float32) / 255
    paper, dark = rng.uniform(0.72, 0.9), rng.uniform(0.05, 0.25)
    l, r, t, b = rng.uniform(0.15, 0.4, 4)
    w, h = int(side / (1 - l - r)), int(side / (1 - t - b))
    page = np.full((h, w), paper, np.float32)
    y0, x0 = int(t * h), int(l * w)
    page[y0:y0 + side, x0:x0 + side] = paper - (paper - dark) * ink_
    im = Image.fromarray(np.uint8(np.clip(page, 0, 1) * 255)).rotate(
        rng.uniform(-4, 4), Image.BICUBIC, fillcolor=int(paper * 255))
    noisy = np.asarray(im, np.float32) + rng.normal(0, rng.uniform(4, 12), (h, w))
    im = Image.fromarray(np.uint8(np.clip(noisy, 0, 255).round())).filter(ImageFilter.GaussianBlur(rng.uniform(0.4, 1.2)))
    buf = io.BytesIO(); im.convert('RGB').save(buf, format='JPEG', quality=int(rng.integers(70, 91)))
    return buf.getvalue()


def photo_input(src):
    "A calligraphy photo -> RGB (transparency on white, EXIF rotation applied), shorter side at most 384 px."
    return shrink(to_rgb(read_image(src)), PHOTO_SIDE)


def model_kind(learn):
    "'calligraphy' for a model of the three styles, 'kmnist' for hiragana (KMNIST), 'kkanji' for kanji."
    vocab = set(map(str, learn.dls.vocab))
    if vocab <= set(CALLIGRAPHY_CLASSES): return 'calligraphy'
    return 'kmnist' if vocab <= set(ROMAJI) else 'kkanji'


def input_size(learn):
    "The side of the square images the learner was trained on (28 for KMNIST, 32 for our Kuzushiji-Kanji models)."
    lt = getattr(learn, 'long_tail', None)
    if lt and lt.get('size'): return int(lt['size'])
    x = getattr(learn.dls.train_ds, 'x', None)  # an ArrayDataset keeps its images' shape, even emptied for export
    return int(x.shape[-1]) if x is not None and x.ndim == 3 else 28


def load_model(path, kind='kmnist'):
    """`load_learner` on CPU, with one clear sentence (naming the command that makes a model) when the file is
    missing or is not a model. Only pass files you trust: loading unpickles code (fastai issue 4163)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f'No model at {path}: make one with `{COMMANDS[kind]}`, or pass the path of one.')
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings('ignore', message='load_learner` uses Python')  # the docs say it: trusted files only
            learn = load_learner(path, cpu=True)
        learn.model.eval()
        learn.kind = model_kind(learn)
    except Exception as e:  # pickle, zip, torch and attribute errors all mean: not a model this code can load
        raise InputError(f'{path} is not a model this series can load ({type(e).__name__}: {e}); make one with '
                         f'`{COMMANDS[kind]}`.') from None
    return learn


def prepare_input(learn, src):
    "The preprocessing for this learner's kind of input: `char_input` at its size, or `photo_input`."
    kind = getattr(learn, 'kind', None) or model_kind(learn)
    return photo_input(src) if kind == 'calligraphy' else char_input(src, input_size(learn))


def label_text(label):
    """How a class reads in the app: 'お (o)' for a hiragana, '楷书 kaishu (regular script)' for a style, the kanji
    itself for a kanji, or its code point ('U+29780') where the series' font has no glyph for it."""
    label = str(label)
    if label in CALLIGRAPHY_NAMES: return f'{CALLIGRAPHY_NAMES[label][0]} {label} ({CALLIGRAPHY_NAMES[label][1]})'
    if label in ROMAJI: return f'{label} ({ROMAJI[label]})'
    return kanji_text(label) if len(label) == 1 else label


def model_device(learn):
    "Where the learner's model is: a learner trained on a GPU in the same notebook keeps it there."
    return next(learn.model.parameters()).device


def probabilities(learn, inputs):
    """Class probabilities (N, classes) for already prepared inputs, through the learner's own validation
    transforms (`test_dl`) and model, wherever the model is (the answer comes back to the CPU, as NumPy); no
    gradients, no callbacks, no progress bar."""
    dl, device = learn.dls.test_dl(list(inputs), bs=max(1, len(inputs))), model_device(learn)
    with torch.inference_mode():
        return torch.cat([learn.model(b[0].to(device)).softmax(-1).cpu() for b in dl]).numpy()


def top_k(learn, probs, k=3):
    "The `k` most likely classes, best first: [{'label', 'probability'}, ...]."
    vocab = list(map(str, learn.dls.vocab))
    return [{'label': vocab[i], 'probability': float(probs[i])} for i in np.argsort(-probs, kind='stable')[:k]]


def predict(learn, src, k=3):
    "Preprocess one image for this learner and return `(top_k list, the prepared input)`."
    x = prepare_input(learn, src)
    return top_k(learn, probabilities(learn, [x])[0], k), x


def predict_files(learn, files, k=3):
    """One result per file, in order: {'file', 'predictions'} or {'file', 'error'}; files that can be read are
    predicted in one batch."""
    out, good = [], []
    for f in files:
        try:
            good.append((len(out), prepare_input(learn, f))); out.append({'file': str(f)})
        except InputError as e:
            out.append({'file': str(f), 'error': str(e)})
    if good:
        for (i, _), p in zip(good, probabilities(learn, [x for _, x in good])):
            out[i]['predictions'] = top_k(learn, p, k)
    return out


def latency(fn, n=200, warmup=5):
    "Wall time of `fn()` in milliseconds over `n` calls: (p50, p95)."
    for _ in range(warmup): fn()
    t = []
    for _ in range(n):
        t0 = time.perf_counter(); fn(); t.append((time.perf_counter() - t0) * 1000)
    return float(np.percentile(t, 50)), float(np.percentile(t, 95))
