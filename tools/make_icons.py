#!/usr/bin/env python
"""Draw the page's icons (web/icon-192.png, web/icon-512.png), which its manifest names so that a browser can
install the page: 読 ("read") in white on the page's accent colour, from the IPAexGothic font that matplotlib-fontja
installs (a picture of one glyph, not the font). Run once; the icons are committed.

    python tools/make_icons.py"""
from pathlib import Path

import matplotlib_fontja
from PIL import Image, ImageDraw, ImageFont

WEB = Path(__file__).resolve().parents[1] / 'web'
ACCENT = (181, 58, 10)  # web/style.css's --accent


def icon(size):
    im = Image.new('RGB', (size, size), ACCENT)
    font = ImageFont.truetype(str(Path(matplotlib_fontja.__file__).parent / 'fonts' / 'ipaexg.ttf'), int(size * 0.62))
    ImageDraw.Draw(im).text((size / 2, size / 2), '読', font=font, fill='white', anchor='mm')
    return im


if __name__ == '__main__':
    for size in (192, 512):
        icon(size).save(WEB / f'icon-{size}.png', optimize=True)
        print(WEB / f'icon-{size}.png')
