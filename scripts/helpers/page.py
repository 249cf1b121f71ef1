"""What the app's pages show, apart from Gradio: the canvas and brush, the font for their Japanese characters, the model's input and the
training images beside an answer, as PNG data, and labels with their probabilities; for the static page, the labels
as shown, the training examples as sheets and a kanji model's font in files fetched when needed. The Gradio app (`app`) and the
static web page (`web`) share them; importing this module does not load Gradio.
Uses: arrays, kanji, inference."""
from __future__ import annotations

import base64, html, io
from pathlib import Path

import numpy as np
from PIL import Image

from .arrays import DataFormatError, load_arrays
from .inference import label_text
from .kanji import find_root, kanji_files, split_parts

CANVAS = 400  # the drawing canvas, in pixels a side (the Gradio app's and the static page's)
BRUSH = 34  # stroke width in canvas pixels: KMNIST's proportion (the app module's docstring says how it was sized)
KANJI_BRUSH = 30  # about the same proportion for kanji: 8.8% of the frame against 9.5% (34 x 8.8 / 9.5 = 31.5; RESEARCH.md)
SEEN_SCALE = 5  # the model's input is shown 5x larger, each pixel a square (28x28 as 140x140)
SEEN_SIZE = 28 * SEEN_SCALE
EXAMPLE_SIZE = 56  # training examples are shown 2x larger
N_EXAMPLES = 4  # training examples per class
N_KANJI_EXAMPLES = 3  # training images shown per kanji (a rare one may have fewer)
ROWS_PER_SHEET = 256   # classes per examples image (and per font file): a kanji model's 3,832 x 32 px is too tall for one
KANJI_EXAMPLES = 2     # training images per kanji on the page (the Gradio app shows 3): with the next two, the
KANJI_EXAMPLE_SIDE = 24  # sheets of all 3,832 classes take 1.2 MB, which with the 8-bit model keeps kanji under 3 MB
LOCAL_FONTS = ('Hiragino Sans W3', 'HiraginoSans-W3', 'Hiragino Kaku Gothic ProN W3', 'Yu Gothic Regular',
               'YuGothic-Regular', 'Meiryo', 'MS Gothic', 'Noto Sans CJK JP Regular', 'NotoSansCJKjp-Regular',
               'Noto Sans JP Regular', 'Source Han Sans JP Regular', 'IPAexGothic')  # a device's own Japanese fonts


PAGE_FONT = 'Kuzushiji page'  # the family name of the page's own font for its Japanese and Chinese characters
# Gradio's default theme's font stacks (CSS variables), which `font_css` puts PAGE_FONT in front of
THEME_FONTS = {'font': "'Source Sans Pro', ui-sans-serif, system-ui, sans-serif",
               'font-mono': "'IBM Plex Mono', ui-monospace, Consolas, monospace"}


def font_css(text):
    """CSS that gives the page a font for the Japanese and Chinese characters in `text` (those from U+2E80 on), so
    they show on any computer: a browser without a Japanese font (many Linux desktops and containers) draws each as
    a box. Ours because Gradio serves only Latin fonts. The font is a subset of IPAexGothic, which matplotlib-fontja
    installs for the notebooks' plots, cut by fontTools (a matplotlib dependency) to these characters: a few
    kilobytes, inside the CSS as a data URL, so it needs no internet. Its `unicode-range` leaves every other character
    to the theme's fonts, and the characters it lacks to the computer's: IPAexGothic is a Japanese font, with every
    hiragana but not the simplified Chinese 书 of two calligraphy styles' names. As the IPA Font License asks of a
    derived font, it is renamed and keeps its copyright and licence. No such characters in `text`: no CSS."""
    chars, data = subset_font(text)
    if not chars: return ''
    ranges = ', '.join(f'U+{ord(c):04X}' for c in chars)
    stacks = ' '.join(f"--{var}: '{PAGE_FONT}', {fonts};" for var, fonts in THEME_FONTS.items())
    return (f"@font-face {{ font-family: '{PAGE_FONT}'; unicode-range: {ranges}; "
            f"src: url(data:font/ttf;base64,{base64.b64encode(data).decode()}) format('truetype'); }}\n"
            f":root, .gradio-container {{ {stacks} }}\n")


def subset_font(text, flavor=None):
    """IPAexGothic cut to the characters of `text` from U+2E80 on that it has, renamed as its licence asks:
    (those characters sorted, the font's bytes; TrueType, or `flavor` 'woff2')."""
    import matplotlib_fontja
    from fontTools import subset
    from fontTools.ttLib import TTFont
    font = TTFont(Path(matplotlib_fontja.__file__).parent / 'fonts' / 'ipaexg.ttf', recalcTimestamp=False)  # same bytes each time
    chars = sorted({ch for ch in text if ord(ch) >= 0x2E80 and ord(ch) in font.getBestCmap()})
    if not chars: return [], b''
    cut = subset.Subsetter(subset.Options(hinting=False, layout_features=[], name_IDs=[0, 1, 2, 4, 6, 13, 14]))
    cut.populate(text=''.join(chars)); cut.subset(font)
    # The IPA Font License: a derived font keeps the copyright and licence (name IDs 0, 13, 14) and takes another
    # name (family, full and PostScript names: 1, 4, 6)
    for name_id, name in ((1, PAGE_FONT), (4, PAGE_FONT), (6, PAGE_FONT.replace(' ', '-'))):
        font['name'].setName(name, name_id, 3, 1, 0x409)
    font.flavor = flavor
    buf = io.BytesIO(); font.save(buf)
    return chars, buf.getvalue()


def as_label(preds):
    "Top-k predictions as the dict gr.Label shows: readable name -> probability."
    return {label_text(p['label']): p['probability'] for p in preds}


def seen_image(x):
    "The model's input (28x28, or 32x32 for kanji), enlarged 5x with square pixels, for the page."
    return Image.fromarray(x).resize((x.shape[1] * SEEN_SCALE, x.shape[0] * SEEN_SCALE), Image.NEAREST)


def training_examples(classes, data=None, n=N_EXAMPLES, seed=0):
    """`n` training images of each class, drawn at random once: `{character: array (n, 28, 28)}`, or None, after one
    line saying why, when there are none. `data`: a folder of KMNIST files (default data/kmnist), or `(x, y)` arrays."""
    try:
        if isinstance(data, tuple): (x, y), file_classes = data, list(classes)
        else: (x, y), _, file_classes = load_arrays(data)
    except (FileNotFoundError, ValueError) as e:
        print(f'No training images to show beside the answers ({type(e).__name__}): download them with '
              f'`python scripts/download_data.py --dataset kmnist` and start the app again.')
        return None
    rng, y = np.random.default_rng(seed), np.asarray(y)
    return {c: x[rng.choice(np.flatnonzero(y == i), n, replace=False)]
            for i, c in enumerate(file_classes) if c in classes and (y == i).sum() >= n}


def png_base64(img):
    "A 28x28 image as the base64 text of a PNG, for an <img> in the page."
    buf = io.BytesIO(); Image.fromarray(img).save(buf, format='PNG')
    return base64.b64encode(buf.getvalue()).decode()


def example_html(examples, preds):
    """Beside an answer: for each top class, its name and its training images (`examples`: character -> PNGs as
    base64, made once by `build_app`), as stored (light ink on dark), drawn 2x larger with square pixels. Empty
    without examples."""
    if not examples: return ''
    rows = [f'<div class="examples-row" style="display:flex;align-items:center;gap:6px;margin:4px 0">'
            f'<span class="examples-label" style="min-width:80px">{html.escape(label_text(p["label"]))}</span>' +
            ''.join(f'<img src="data:image/png;base64,{b64}" width="{EXAMPLE_SIZE}" height="{EXAMPLE_SIZE}" '
                    f'alt="a training image of {html.escape(p["label"])}" style="image-rendering:pixelated">'
                    for b64 in examples.get(p['label'], [])) + '</div>' for p in preds]
    return (f'<div><b>What the model learned from</b>: {N_EXAMPLES} training images of each of its top {len(preds)} '
            f'(the same character is written in several forms)</div>' + ''.join(rows))


def kanji_examples(classes, data=None, n=N_KANJI_EXAMPLES):
    """Where the app finds training images of each kanji: `{character: [up to n image files]}`, from the training part
    of notebook 08's split (never a validation or test image), or None, after one line saying why, when there are
    none. The files are listed once here; the few an answer needs are read when it is shown."""
    try:
        root = find_root(data)
        paths, y, file_classes = kanji_files(root, log=lambda s: None)
    except (FileNotFoundError, DataFormatError) as e:
        print(f'No training images to show beside the answers ({type(e).__name__}): download them with '
              f'`python scripts/download_data.py --dataset kkanji` and start the app again.')
        return None
    wanted, out = set(classes), {}
    for path, label, part in zip(paths, y, split_parts(paths, y)):
        c = file_classes[label]
        if part == 0 and c in wanted and len(out.setdefault(c, [])) < n: out[c].append(root / path)
    return out


def kanji_example_html(examples, preds, counts):
    """Beside a kanji answer: for each of the top classes, its name, how many training images the model learned it
    from (`counts`: character -> number) and a few of them, as stored (light ink on dark), 2x larger."""
    rows = []
    for p in preds:
        n = counts.get(p['label'], 0)
        files = (examples or {}).get(p['label'], [])
        imgs = ''.join(f'<img src="data:image/png;base64,{png_base64(np.asarray(Image.open(f).convert("L")))}" '
                       f'width="{EXAMPLE_SIZE}" height="{EXAMPLE_SIZE}" alt="a training image of {html.escape(p["label"])}" '
                       f'style="image-rendering:pixelated">' for f in files)
        rows.append(f'<div class="examples-row" style="display:flex;align-items:center;gap:6px;margin:4px 0">'
                    f'<span class="examples-label" style="min-width:60px;font-size:1.4em">{html.escape(label_text(p["label"]))}</span>'
                    f'<span class="examples-count" style="min-width:150px">learned from {n:,} image{"s" * (n != 1)}</span>'
                    f'{imgs}</div>')
    return (f'<div><b>What the model learned from</b>: for each of its top {len(preds)}, how many training images it '
            f'had and a few of them</div>' + ''.join(rows))


def page_labels(vocab):
    """How each class reads on the page: label_text ('お (o)'); a character that the page's font (IPAexGothic)
    lacks reads as its code point, 'U+2A6A5', since a computer without a font for it would draw a box."""
    from fontTools.ttLib import TTFont
    import matplotlib_fontja
    cmap = TTFont(Path(matplotlib_fontja.__file__).parent / 'fonts' / 'ipaexg.ttf').getBestCmap()
    def show(c):
        c = str(c)
        missing = [ch for ch in c if ord(ch) >= 0x2E80 and ord(ch) not in cmap]
        return ' '.join(f'U+{ord(ch):04X}' for ch in c) if missing else label_text(c)
    return [show(c) for c in vocab]


def example_sheets(examples, classes, size, per_class, levels=256):
    """Training examples as PNG sheets, one row per class (in the order of `classes`, black where a class has none),
    `per_class` images across, each resized to `size` (LANCZOS) if it is another, at most ROWS_PER_SHEET rows a
    sheet: [PNG bytes, ...]. `levels=16` stores 16 grey levels in 4 bits a pixel, which halves a kanji model's
    sheets (measured on Kuzushiji-Kanji: 2 images of 3,832 classes, 1.23 MB at 24 px; WebP at quality 30 and JPEG
    at 60 took more)."""
    sheets = []
    for start in range(0, len(classes), ROWS_PER_SHEET):
        rows = classes[start:start + ROWS_PER_SHEET]
        a = np.zeros((len(rows) * size, per_class * size), np.uint8)
        for r, c in enumerate(rows):
            for j, img in enumerate(examples.get(str(c), [])[:per_class]):
                if img.shape != (size, size): img = np.asarray(Image.fromarray(img).resize((size, size), Image.LANCZOS))
                a[r * size:(r + 1) * size, j * size:(j + 1) * size] = img
        buf = io.BytesIO()
        if levels == 256: Image.fromarray(a).save(buf, format='PNG', optimize=True)
        else:
            im = Image.fromarray(((a.astype(np.int32) * (levels - 1) + 127) // 255).astype(np.uint8)).convert('P')
            im.putpalette([v * 255 // (levels - 1) for v in range(levels) for _ in range(3)])
            im.save(buf, format='PNG', optimize=True, bits=4 if levels <= 16 else 8)
        sheets.append(buf.getvalue())
    return sheets


def font_files(shown, folder):
    """The page's font for many labels (a kanji model's): IPAexGothic cut into one WOFF2 file per ROWS_PER_SHEET
    classes, and font.css with one @font-face for each, its unicode-range those classes' characters. A browser then
    fetches only the files of the characters it shows, and none where the device has a Japanese font of its own (the
    `local()` names come first). Returns the CSS."""
    rules = []
    for old in folder.glob('font-*.woff2'): old.unlink()
    for k, start in enumerate(range(0, len(shown), ROWS_PER_SHEET)):
        chars, data = subset_font(' '.join(shown[start:start + ROWS_PER_SHEET]), flavor='woff2')
        if not chars: continue
        (folder / f'font-{k}.woff2').write_bytes(data)
        local = ', '.join(f"local('{name}')" for name in LOCAL_FONTS)
        rules.append(f"@font-face {{ font-family: '{PAGE_FONT}'; unicode-range: "
                     f"{', '.join(f'U+{ord(c):04X}' for c in chars)}; src: {local}, url(font-{k}.woff2) format('woff2'); }}")
    return '\n'.join(rules) + '\n'
