#!/usr/bin/env python
"""Measure the web page in headless Chromium: the model file's size, the bytes the page loads, the time from page
load to ready, and the time from the end of a stroke to the label, over KMNIST test characters drawn stroke by stroke.

    python scripts/build_site.py && python tools/benchmark_site.py --data data/kmnist --n 60 --out results/site.json

Drawing: each test character is traced into pen strokes (thresholded, thinned to a one-pixel skeleton by Zhang and
Suen's method, then followed from pixel to neighbouring pixel; each run is a stroke) and drawn with the mouse across
300 px of the 400 px canvas, whose brush then gives strokes about as wide as KMNIST's. The page reads after every
stroke, so each stroke is one measurement, on the page's own clock: from the pointerup event's time stamp to the
label written into the page (`reader.last.ms`: preprocessing, model, showing). A character's last reading is its
answer, counted against its label. Load: `--loads` cold loads, each in a fresh browser context (empty cache), from
navigation start to the model ready (its warm-up run included). Bytes: the files the page asked for, as served here
(uncompressed) and gzip-compressed (level 6) as most hosts send text and WebAssembly.
Loopback only (127.0.0.1); Chromium as the tests run it (Debian's, headless)."""
import argparse, functools, gzip, http.server, json, os, platform, subprocess, sys, threading, time
from pathlib import Path
from urllib.parse import urlparse

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / 'scripts'))  # the helpers package, as the scripts use it
import helpers as h

CHROMIUM = '/usr/bin/chromium'
ARGS = ['--no-sandbox', '--disable-background-networking', '--disable-component-update']
BOX, CANVAS = 300, 400  # a character is drawn across 300 px of the 400 px canvas, centred


def thin(b):
    "Zhang-Suen thinning of a binary image (True = ink) to a one-pixel-wide skeleton."
    b = np.pad(b.astype(np.uint8), 1)
    while True:
        changed = False
        for step in (0, 1):
            p = [np.roll(np.roll(b, -dy, 0), -dx, 1) for dy, dx in
                 ((-1, 0), (-1, 1), (0, 1), (1, 1), (1, 0), (1, -1), (0, -1), (-1, -1))]  # P2..P9, clockwise
            n = sum(p)
            s = sum(((p[i] == 0) & (p[(i + 1) % 8] == 1)) for i in range(8))
            a, c = (p[0] * p[2] * p[4], p[2] * p[4] * p[6]) if step == 0 else (p[0] * p[2] * p[6], p[0] * p[4] * p[6])
            drop = (b == 1) & (n >= 2) & (n <= 6) & (s == 1) & (a == 0) & (c == 0)
            if drop.any(): b[drop] = 0; changed = True
        if not changed: return b[1:-1, 1:-1].astype(bool)


def strokes(img, level=100):
    """A 28x28 white-on-black character as pen strokes: lists of (row, col) skeleton pixels, each step to a
    neighbour. Starts at an end of a line where there is one."""
    sk = thin(np.asarray(img) >= level)
    left = {tuple(p) for p in np.argwhere(sk)}
    near = lambda p: [(p[0] + dy, p[1] + dx) for dy, dx in ((0, 1), (1, 0), (0, -1), (-1, 0), (1, 1), (1, -1), (-1, 1), (-1, -1))]
    out = []
    while left:
        ends = [p for p in left if sum(q in left for q in near(p)) <= 1]
        p = min(ends or left)
        path = [p]; left.discard(p)
        while (nxt := next((q for q in near(p) if q in left), None)) is not None:
            path.append(nxt); left.discard(nxt); p = nxt
        out.append(path)
    return out


class Quiet(http.server.SimpleHTTPRequestHandler):
    extensions_map = {**http.server.SimpleHTTPRequestHandler.extensions_map, '.mjs': 'text/javascript',
                      '.js': 'text/javascript', '.wasm': 'application/wasm'}
    def log_message(self, *a): pass


def pct(v, q): return float(np.percentile(v, q)) if len(v) else None


def measure(site, test, n, loads, seed=0):
    from playwright.sync_api import sync_playwright
    x, y = test
    idx = np.random.default_rng(seed).choice(len(x), n, replace=False)
    srv = http.server.ThreadingHTTPServer(('127.0.0.1', 0), functools.partial(Quiet, directory=str(site)))
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    url = f'http://127.0.0.1:{srv.server_address[1]}/'
    res = dict(loads=[], strokes=[], characters=[], requests=[])
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
            for i in range(loads):  # cold: a fresh context has an empty cache
                ctx = browser.new_context(viewport={'width': 1100, 'height': 1000})
                page = ctx.new_page()
                asked = []
                page.on('request', lambda r: asked.append(r.url))
                page.goto(url)
                page.wait_for_function('window.reader && window.reader.ready', timeout=120_000)
                res['loads'].append(page.evaluate('reader.readyMs'))
                if i == 0: res['requests'] = asked
                if i < loads - 1: ctx.close()
            outside = [u for u in res['requests'] if not u.startswith(url)]
            if outside: raise SystemExit(f'the page asked for something outside this computer: {outside}')
            cfg = page.evaluate('reader.config')
            box = page.locator('#pad').bounding_box()
            at = lambda r, c: (box['x'] + ((CANVAS - BOX) / 2 + (c + 0.5) * BOX / 28) * box['width'] / CANVAS,
                               box['y'] + ((CANVAS - BOX) / 2 + (r + 0.5) * BOX / 28) * box['height'] / CANVAS)
            for k, i in enumerate(idx):
                last = None
                for path in strokes(x[i]):
                    n_read = page.evaluate('reader.readings')
                    page.mouse.move(*at(*path[0])); page.mouse.down()
                    for q in path[1:]: page.mouse.move(*at(*q))
                    page.mouse.up()
                    page.wait_for_function(f'reader.readings > {n_read}', timeout=30_000)
                    last = page.evaluate('reader.last')
                    if last.get('top'): res['strokes'].append(last['ms'])
                res['characters'].append(dict(index=int(i), label=cfg['labels'][int(y[i])], read=cfg['labels'][last['top'][0]]
                                              if last and last.get('top') else last and last.get('reason')))
                if k < 3: page.screenshot(path=f'/tmp/benchmark-site-{k}.png')
                page.click('#clear')
            browser.close()
    finally:
        srv.shutdown(); srv.server_close()
    return res


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0], epilog=__doc__.split('\n', 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--site', default=str(h.ROOT / 'site'), help='the built site (default site/)')
    p.add_argument('--data', help='the KMNIST folder (default data/kmnist): the test characters drawn')
    p.add_argument('--n', type=int, default=60, help='test characters to draw (default 60; at least 50)')
    p.add_argument('--loads', type=int, default=5, help='cold page loads to time (default 5)')
    p.add_argument('--out', help='write the measurements here (JSON)')
    a = p.parse_args(argv)
    site = Path(a.site)
    if not (site / 'model' / 'model.json').is_file():
        p.error(f'no built site in {site}: run python scripts/build_site.py first')
    if not Path(CHROMIUM).exists(): p.error('needs Debian chromium (apt-get install chromium)')
    _, test, _ = h.load_arrays(a.data)
    cfg = json.loads((site / 'model' / 'model.json').read_text(encoding='utf-8'))
    load_before = os.getloadavg()[0]
    t0 = time.time()
    r = measure(site, test, a.n, a.loads)
    files = [urlparse(u).path.lstrip('/') or 'index.html' for u in r['requests']]
    sizes = {f: (site / f).stat().st_size for f in files if (site / f).is_file()}
    gz = {f: len(gzip.compress((site / f).read_bytes(), 6)) for f in sizes}
    ms = {k: [s[k] for s in r['strokes']] for k in ('total', 'preprocess', 'model', 'show')}
    right = sum(c['label'] == c['read'] for c in r['characters'])
    cpu = next((l.split(':', 1)[1].strip() for l in subprocess.run(['lscpu'], capture_output=True, text=True).stdout
                .splitlines() if l.startswith('Model name')), platform.processor())
    chromium = subprocess.run([CHROMIUM, '--version'], capture_output=True, text=True).stdout.strip()
    out = dict(model_bytes=cfg['bytes'], model_source=cfg.get('source'), page_files=sizes, page_bytes=sum(sizes.values()),
               page_bytes_gzip=sum(gz.values()), load_to_ready_ms=r['loads'],
               stroke_to_label_ms={k: dict(p50=pct(v, 50), p95=pct(v, 95)) for k, v in ms.items()},
               n_strokes=len(r['strokes']), characters=r['characters'], accuracy=right / max(1, len(r['characters'])),
               hardware=dict(cpu=cpu, cores=os.cpu_count(), load_average_before=load_before,
                             load_average_after=os.getloadavg()[0]), chromium=chromium, seconds=time.time() - t0,
               date=time.strftime('%Y-%m-%d'))
    t = out['stroke_to_label_ms']
    print(f"| what | result |\n|---|---|\n"
          f"| model file (model.onnx) | {cfg['bytes'] / 1e3:,.0f} kB |\n"
          f"| the page loads in all | {out['page_bytes'] / 1e6:.1f} MB in {len(sizes)} files "
          f"({out['page_bytes_gzip'] / 1e6:.1f} MB gzip-compressed) |\n"
          f"| page load to ready ({a.loads} cold loads) | p50 {pct(r['loads'], 50):,.0f} ms, max {max(r['loads']):,.0f} ms |\n"
          f"| end of a stroke to the label ({len(r['strokes'])} strokes of {a.n} test characters) | "
          f"p50 {t['total']['p50']:.1f} ms, p95 {t['total']['p95']:.1f} ms |\n"
          f"| of which preprocessing / model / showing (p50) | {t['preprocess']['p50']:.1f} / {t['model']['p50']:.1f} / "
          f"{t['show']['p50']:.1f} ms |\n"
          f"| traced test characters read right (last stroke) | {right} of {len(r['characters'])} |\n"
          f"{cpu}, {os.cpu_count()} cores, {chromium}; load average {load_before:.1f} before, "
          f"{out['hardware']['load_average_after']:.1f} after")
    if a.out: h.write_json(out, a.out); print(f'Written: {a.out}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
