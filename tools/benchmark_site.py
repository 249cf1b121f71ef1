#!/usr/bin/env python
"""Measure the web page in headless Chromium, in both modes: the bytes of a first visit and of kanji, the time from
page load to ready, the time from the end of a stroke to the label over test characters drawn stroke by stroke, the
time from a photo to its label, and the accuracy on photos made from the test split against the clean test images.

    python scripts/build_site.py && python tools/benchmark_site.py --out results/site.json

Drawing: each test character is traced into pen strokes (thresholded, thinned to a one-pixel skeleton by Zhang and
Suen's method, then followed from pixel to neighbouring pixel; each run is a stroke) and drawn with the mouse across
300 px of the 400 px canvas, whose brush then gives strokes about as wide as the data set's. The page reads after every
stroke, so each stroke is one measurement, on the page's own clock: from the pointerup event's time stamp to the
label written into the page (`kuzushiji.last.ms`: preprocessing, model, showing). A character's last reading is its
answer, counted against its label; Clear after each. Photos (`helpers.as_photo`: dark ink on light grey paper,
margins of 15-40%, a turn of up to 4 degrees, grain, a slight blur, JPEG): `--photos` per mode read through
window.kuzushiji.read, against the same test images given clean (white on black at the data set's size, which the
page passes through as they are); photo to label: `--timed` photos through the photo input, from its change event to
the label shown. Kuzushiji-Kanji's test images are the test part of notebook 08's split. Load: `--loads` cold loads,
each in a new browser profile (empty cache), from navigation start to the kana model ready (its warm-up run
included). Bytes: every file the server sent on a first visit (the page's requests and the service worker's, which
keeps the first visit's files for offline use), and every file of the kanji model, as stored and gzip-compressed
(level 6) as most hosts send them. Loopback only (127.0.0.1); Chromium as the tests run it (Debian's, headless)."""
import argparse, base64, functools, gzip, http.server, io, json, os, platform, subprocess, sys, tempfile, threading, time
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / 'scripts'))  # the helpers package, as the scripts use it
import helpers as h

CHROMIUM = '/usr/bin/chromium'
ARGS = ['--no-sandbox', '--disable-background-networking', '--disable-component-update']
BOX, CANVAS = 300, 400  # a character is drawn across 300 px of the 400 px canvas, centred
BATCH = 20  # photos per call into the page


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
    """A white-on-black character (28x28, 32x32) as pen strokes: lists of (row, col) skeleton pixels, each step to a
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
                      '.js': 'text/javascript', '.wasm': 'application/wasm', '.webmanifest': 'application/manifest+json'}
    def log_message(self, *a): pass
    def log_request(self, code='-', size='-'):  # what was sent: a file's bytes (200) or none (304: not modified)
        self.server.sent.append((self.path.split('?')[0], int(code)))


def pct(v, q): return float(np.percentile(v, q)) if len(v) else None


def summary(v): return dict(p50=pct(v, 50), p95=pct(v, 95), n=len(v))


def draw(page, x, y, cfg, n, seed, shots=None):
    "Trace `n` test characters stroke by stroke: each stroke's times, and each character's last answer."
    idx = np.random.default_rng(seed).choice(len(x), n, replace=False)
    box = page.locator('#pad').bounding_box()
    out = dict(strokes=[], characters=[])
    for k, i in enumerate(idx):
        side, last = x[i].shape[0], None
        at = lambda r, c: (box['x'] + ((CANVAS - BOX) / 2 + (c + 0.5) * BOX / side) * box['width'] / CANVAS,
                           box['y'] + ((CANVAS - BOX) / 2 + (r + 0.5) * BOX / side) * box['height'] / CANVAS)
        for path in strokes(x[i]):
            n_read = page.evaluate('kuzushiji.readings')
            page.mouse.move(*at(*path[0])); page.mouse.down()
            for q in path[1:]: page.mouse.move(*at(*q))
            page.mouse.up()
            page.wait_for_function(f'kuzushiji.readings > {n_read}', timeout=30_000)
            last = page.evaluate('kuzushiji.last')
            if last.get('top'): out['strokes'].append(last['ms'])
        out['characters'].append(dict(index=int(i), label=cfg['labels'][int(y[i])],
                                      read=cfg['labels'][last['top'][0]] if last and last.get('top') else last and last.get('reason')))
        if shots and k < 2: page.screenshot(path=f'{shots}-{k}.png')
        page.click('#clear')
    return out


def png(a):
    buf = io.BytesIO(); Image.fromarray(np.asarray(a, np.uint8)).save(buf, format='PNG'); return buf.getvalue()


def read_all(page, images, mode, mime):
    "window.kuzushiji.read on each image (bytes), BATCH at a time: the top label of each, or the sentence."
    out = []
    for s in range(0, len(images), BATCH):
        out += page.evaluate("""async ([images, mode, mime]) => {
            const res = [];
            for (const b64 of images) {
              const blob = new Blob([Uint8Array.from(atob(b64), c => c.charCodeAt(0))], {type: mime});
              try { res.push((await window.kuzushiji.read(blob, mode))[0].label); } catch (e) { res.push(e.message); }
            }
            return res; }""", [[base64.b64encode(b).decode() for b in images[s:s + BATCH]], mode, mime])
    return out


def photos(page, x, y, cfg, mode, n, timed, seed):
    "Accuracy on `n` photos and on the same test images clean; `timed` photos through the photo input."
    idx = np.random.default_rng(seed + 1).choice(len(x), n, replace=False)
    rng = np.random.default_rng(seed + 2)
    shots = [h.as_photo(x[i], rng) for i in idx]
    want = [cfg['labels'][int(y[i])] for i in idx]
    got_photo, got_clean = read_all(page, shots, mode, 'image/jpeg'), read_all(page, [png(x[i]) for i in idx], mode, 'image/png')
    ms = []
    for data in shots[:timed]:
        n_read = page.evaluate('kuzushiji.readings')
        page.set_input_files('#photo', files=[{'name': 'photo.jpg', 'mimeType': 'image/jpeg', 'buffer': data}])
        page.wait_for_function(f'kuzushiji.readings > {n_read}', timeout=30_000)
        ms.append(page.evaluate('kuzushiji.last.ms'))
    return dict(n=n, photo_top1=float(np.mean([a == b for a, b in zip(got_photo, want)])),
                clean_top1=float(np.mean([a == b for a, b in zip(got_clean, want)])),
                photo_to_label_ms={k: summary([m[k] for m in ms]) for k in ('total', 'preprocess', 'model')})


def gz(path): return len(gzip.compress(path.read_bytes(), 6))


def measure(site, kana, kanji, n, n_kanji, n_photos, n_kanji_photos, timed, loads, seed=0):
    from playwright.sync_api import sync_playwright
    srv = http.server.ThreadingHTTPServer(('127.0.0.1', 0), functools.partial(Quiet, directory=str(site)))
    srv.sent = []
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    url = f'http://127.0.0.1:{srv.server_address[1]}/'
    res, outside = dict(loads=[]), []
    try:
        with sync_playwright() as p, tempfile.TemporaryDirectory() as profiles:
            for i in range(loads):  # cold: a new profile, as a first visit has (an empty cache, no service worker);
                # a profile on disk, not an incognito context, whose small HTTP cache would not hold the WebAssembly
                ctx = p.chromium.launch_persistent_context(f'{profiles}/{i}', executable_path=CHROMIUM, headless=True,
                                                           args=ARGS, viewport={'width': 1100, 'height': 1000})
                # every request recorded (routing them would turn the browser's HTTP cache off, which the service
                # worker's first copies rely on)
                ctx.on('request', lambda r: None if r.url.startswith((url, 'data:', 'blob:')) else outside.append(r.url))
                page = ctx.new_page()
                del srv.sent[:]
                page.goto(url)
                page.wait_for_function('window.kuzushiji && window.kuzushiji.ready', timeout=120_000)
                res['loads'].append(page.evaluate('kuzushiji.readyMs'))
                if i == 0:
                    res['offline'] = page.evaluate('kuzushiji.offline')  # the service worker has kept the first visit
                    res['first_visit'] = list(srv.sent)
                if i < loads - 1: ctx.close()
            if outside: raise SystemExit(f'the page asked for something outside this computer: {outside}')
            cfg = page.evaluate('kuzushiji.config')
            res['kana'] = draw(page, *kana, cfg, n, seed, '/tmp/benchmark-site-kana')
            res['kana'].update(photos(page, *kana, cfg, 'kana', n_photos, timed, seed))
            del srv.sent[:]
            page.check('input[name=mode][value=kanji]')
            page.wait_for_function("kuzushiji.mode === 'kanji'", timeout=120_000)
            cfg = page.evaluate('kuzushiji.config')
            res['kanji'] = draw(page, *kanji, cfg, n_kanji, seed, '/tmp/benchmark-site-kanji')
            res['kanji'].update(photos(page, *kanji, cfg, 'kanji', n_kanji_photos, timed, seed))
            res['kanji_fetched'] = sorted({f for f, code in srv.sent})
            page.screenshot(path='/tmp/benchmark-site-kanji-photo.png')
            ctx.close()
    finally:
        srv.shutdown(); srv.server_close()
    if outside: raise SystemExit(f'the page asked for something outside this computer: {outside}')
    return res


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0], epilog=__doc__.split('\n', 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--site', default=str(h.ROOT / 'site'), help='the built site (default site/)')
    p.add_argument('--data', help='the KMNIST folder (default data/kmnist)')
    p.add_argument('--kanji-data', help='the Kuzushiji-Kanji folder (default data/kkanji)')
    p.add_argument('--n', type=int, default=60, help='kana test characters to draw (default 60)')
    p.add_argument('--n-kanji', type=int, default=40, help='kanji test characters to draw (default 40)')
    p.add_argument('--photos', type=int, default=500, help='kana photos for the accuracy (default 500)')
    p.add_argument('--kanji-photos', type=int, default=1000, help='kanji photos for the accuracy (default 1,000)')
    p.add_argument('--timed', type=int, default=30, help='photos per mode through the photo input, timed (default 30)')
    p.add_argument('--loads', type=int, default=5, help='cold page loads to time (default 5)')
    p.add_argument('--out', help='write the measurements here (JSON)')
    a = p.parse_args(argv)
    site = Path(a.site)
    if not (site / 'model' / 'kanji' / 'model.json').is_file():
        p.error(f'no site with a kanji model in {site}: export one to web/model/kanji, then run python scripts/build_site.py')
    if not Path(CHROMIUM).exists(): p.error('needs Debian chromium (apt-get install chromium)')
    _, kana, _ = h.load_arrays(a.data)
    kcfg = json.loads((site / 'model' / 'kanji' / 'model.json').read_text(encoding='utf-8'))
    d = h.load_kanji(a.kanji_data, size=kcfg['input']['size'], log=lambda s: None)
    kanji = (d['x'][d['part'] == 2], d['y'][d['part'] == 2])
    load_before = os.getloadavg()[0]
    t0 = time.time()
    r = measure(site, kana, kanji, a.n, a.n_kanji, a.photos, a.kanji_photos, a.timed, a.loads)
    name = lambda f: 'index.html' if f == '/' else f.lstrip('/')
    first = sorted({name(f) for f, _ in r['first_visit']})
    first_bytes = {f: (site / f).stat().st_size for f in first}
    sent = [name(f) for f, code in r['first_visit'] if code == 200]  # a file sent twice counts twice
    kanji_files = {str(f.relative_to(site)): f for f in sorted((site / 'model' / 'kanji').iterdir())}
    cpu = next((l.split(':', 1)[1].strip() for l in subprocess.run(['lscpu'], capture_output=True, text=True).stdout
                .splitlines() if l.startswith('Model name')), platform.processor())
    chromium = subprocess.run([CHROMIUM, '--version'], capture_output=True, text=True).stdout.strip()
    out = dict(first_visit=dict(files=first_bytes, bytes=sum(first_bytes.values()),
                                bytes_gzip=sum(gz(site / f) for f in first), requests=len(r['first_visit']),
                                sent=len(sent), bytes_sent=sum((site / f).stat().st_size for f in sent),
                                bytes_sent_gzip=sum(gz(site / f) for f in sent), offline_ready=r['offline']),
               kanji_files=dict(files=len(kanji_files), bytes=sum(f.stat().st_size for f in kanji_files.values()),
                                bytes_gzip=sum(gz(f) for f in kanji_files.values()),
                                fetched_in_this_run=r['kanji_fetched']),
               load_to_ready_ms=r['loads'], models={m: json.loads((site / 'model' / ('kanji/' if m == 'kanji' else '') /
                                                                   'model.json').read_text())['source'] for m in ('kana', 'kanji')})
    for mode in ('kana', 'kanji'):
        m = r[mode]
        ms = {k: [s[k] for s in m['strokes']] for k in ('total', 'preprocess', 'model', 'show')}
        out[mode] = dict(stroke_to_label_ms={k: summary(v) for k, v in ms.items()}, n_strokes=len(m['strokes']),
                         traced_right=sum(c['label'] == c['read'] for c in m['characters']), n_traced=len(m['characters']),
                         photo_top1=m['photo_top1'], clean_top1=m['clean_top1'], n_photos=m['n'],
                         photo_to_label_ms=m['photo_to_label_ms'], characters=m['characters'])
    out.update(hardware=dict(cpu=cpu, cores=os.cpu_count(), load_average_before=load_before,
                             load_average_after=os.getloadavg()[0]), chromium=chromium, seconds=time.time() - t0,
               date=time.strftime('%Y-%m-%d'))
    f, k = out['first_visit'], out['kanji_files']
    lines = ['| what | result |', '|---|---|',
             f"| first visit, kana (the page's requests and the service worker's) | {f['bytes'] / 1e6:.1f} MB in "
             f"{len(first)} files, {f['bytes_gzip'] / 1e6:.2f} MB gzip-compressed; {f['requests']} requests, {f['sent']} "
             f"answered with the file ({f['bytes_sent_gzip'] / 1e6:.2f} MB gzip-compressed), the rest 'not modified' |",
             f"| kanji, every file (model, font, example sheets) | {k['bytes'] / 1e6:.2f} MB in {k['files']} files, "
             f"{k['bytes_gzip'] / 1e6:.2f} MB gzip-compressed |",
             f"| page load to ready ({len(r['loads'])} cold loads) | p50 {pct(r['loads'], 50):,.0f} ms, max {max(r['loads']):,.0f} ms |"]
    for mode in ('kana', 'kanji'):
        o = out[mode]; t = o['stroke_to_label_ms']; ph = o['photo_to_label_ms']
        lines += [f"| {mode}: end of a stroke to the label ({o['n_strokes']} strokes of {o['n_traced']} test characters) | "
                  f"p50 {t['total']['p50']:.1f} ms, p95 {t['total']['p95']:.1f} ms (preprocessing / model / showing, p50: "
                  f"{t['preprocess']['p50']:.1f} / {t['model']['p50']:.1f} / {t['show']['p50']:.1f} ms) |",
                  f"| {mode}: traced test characters read right (last stroke) | {o['traced_right']} of {o['n_traced']} |",
                  f"| {mode}: photo to label ({ph['total']['n']} photos through the photo input) | p50 {ph['total']['p50']:.0f} ms, "
                  f"p95 {ph['total']['p95']:.0f} ms |",
                  f"| {mode}: top-1 on {o['n_photos']:,} photos made from test images / on the same images clean | "
                  f"{o['photo_top1']:.1%} / {o['clean_top1']:.1%} |"]
    print('\n'.join(lines))
    print(f"{cpu}, {os.cpu_count()} cores, {chromium}; load average {load_before:.1f} before, "
          f"{out['hardware']['load_average_after']:.1f} after; {out['seconds']:.0f} s")
    if a.out: h.write_json(out, a.out); print(f'Written: {a.out}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
