"""The static web page (issue 30): the ONNX export and its self-check (which can fail), a build that needs nothing
but the npm registry, the page's JavaScript preprocessing against Python's (Node), and the built site in a real
browser (Debian's Chromium driven by Playwright, served on 127.0.0.1, every request recorded): the page's input and
probabilities against `kmnist_input` and onnxruntime, a sentence for an empty canvas and a dot, the history, mouse,
touch and pen, and a reading after the server has stopped. Screenshots go to $SITE_SHOTS (default /tmp/site-shots)."""
import ast, base64, functools, http.server, io, json, os, re, shutil, subprocess, sys, threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import helpers as h
from conftest import CLASSMAP, ROOT
from test_inference import CHARS, as_drawing, synthetic_chars

CHROMIUM = '/usr/bin/chromium'
NODE = shutil.which('node')
WEB = ROOT / 'web'
SHOTS = Path(os.environ.get('SITE_SHOTS', '/tmp/site-shots'))
needs_ort = pytest.mark.skipif(not (WEB / 'node_modules' / 'onnxruntime-web').is_dir(),
                               reason='needs onnxruntime-web: run `npm ci` in web/ (.ci/run does)')


def run(script, *args, timeout=600):
    return subprocess.run([sys.executable, str(ROOT / 'scripts' / script), *map(str, args)], capture_output=True,
                          text=True, timeout=timeout)


def write_chars(folder, train, test):
    "Synthetic characters in KMNIST's npz files and class map, as scripts/export_onnx.py --data reads them."
    folder.mkdir(parents=True, exist_ok=True)
    for split, (x, y) in (('train', train), ('test', test)):
        np.savez_compressed(folder / f'kmnist-{split}-imgs.npz', x)
        np.savez_compressed(folder / f'kmnist-{split}-labels.npz', y.astype(np.uint8))
    (folder / 'kmnist_classmap.csv').write_text(CLASSMAP, encoding='utf-8')
    return folder


@pytest.fixture(scope='module')
def exported(tmp_path_factory):
    """A KMNIST model trained for seconds on synthetic characters, exported for the page by the command line:
    (learner, model file, export folder, model.json, train, test)."""
    from fastai.vision.all import Learner
    tmp = tmp_path_factory.mktemp('site')
    train, test = synthetic_chars(600, seed=3), synthetic_chars(100, seed=9)
    h.set_seed(0)
    learn = Learner(h.kmnist_dls(train, CHARS, bs=32, device='cpu'), h.kmnist_cnn(10))
    with learn.no_bar(), learn.no_logging(): learn.fit_one_cycle(3, 1e-2)
    pkl = h.export(learn, tmp / 'kmnist.pkl')
    r = run('export_onnx.py', pkl, tmp / 'model', '--data', write_chars(tmp / 'data', train, test))
    assert r.returncode == 0, r.stderr[-3000:]
    assert 'checked on 100 test images' in r.stdout and 'build_site.py' in r.stdout  # all 100 synthetic ones
    cfg = json.loads((tmp / 'model' / 'model.json').read_text(encoding='utf-8'))
    return h.load_model(pkl), pkl, tmp / 'model', cfg, train, test


@pytest.fixture(scope='module')
def site(exported, tmp_path_factory):
    if not (WEB / 'node_modules' / 'onnxruntime-web').is_dir():
        pytest.skip('needs onnxruntime-web: run `npm ci` in web/ (.ci/run does)')
    import build_site
    out = tmp_path_factory.mktemp('built') / 'site'
    build_site.build(model=exported[2], out=out)
    return out


def test_export_writes_a_checked_model_and_what_the_page_needs(exported):
    learn, _, folder, cfg, (x, y), _ = exported
    assert sorted(p.name for p in folder.iterdir()) == ['examples.png', 'font.css', 'model.json', 'model.onnx']
    assert cfg['bytes'] == (folder / 'model.onnx').stat().st_size < 1_000_000  # the goal: under 1 MB
    assert cfg['input'] == {'name': 'pixels', 'size': 28, 'dtype': 'uint8', 'layout': '1x1xSxS, white ink on black'}
    assert cfg['labels'] == CHARS and cfg['shown'][5] == 'は (ha)' and cfg['top'] == 3
    assert (cfg['ink_level'], cfg['min_contrast'], cfg['brush'], cfg['canvas']) == (0.25, 0.15, 34, 400)
    assert cfg['check']['images'] == 100 and cfg['check']['max_difference'] < 1e-5
    mean, std = learn.dls.after_batch.fs[-1].mean.item(), learn.dls.after_batch.fs[-1].std.item()
    assert cfg['normalisation']['mean'] == [pytest.approx(mean)] and cfg['normalisation']['std'] == [pytest.approx(std)]
    # the training examples: one row per class, 4 training images of that class, as the Gradio app picks them
    sheet = np.asarray(Image.open(folder / 'examples.png'))
    assert sheet.shape == (10 * 28, 4 * 28) and cfg['examples']['missing'] == []
    for c in range(10):
        for j in range(4):
            img = sheet[28 * c:28 * c + 28, 28 * j:28 * j + 28]
            assert any((img == t).all() for t in x[y == c]), f'row {c}, image {j}: not a training image of {CHARS[c]}'
    css = (folder / 'font.css').read_text(encoding='utf-8')
    assert '@font-face' in css and 'U+306F' in css and len(css) < 20_000  # は, in the app's subset font
    # labels that the font lacks read as their code point (a kanji model's rarer characters)
    assert h.page_labels(['は', '𪚥', 'A']) == ['は (ha)', 'U+2A6A5', 'A']


def test_the_check_fails_on_a_model_altered_after_export(exported, tmp_path):
    import onnx
    from onnx import numpy_helper
    learn, pkl, folder, cfg, train, test = exported
    altered = tmp_path / 'model'
    shutil.copytree(folder, altered)
    m = onnx.load(altered / 'model.onnx')
    w = max(m.graph.initializer, key=lambda t: np.prod(t.dims))  # the largest weight, nudged by 5%
    w.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(w) * 1.05, w.name))
    onnx.save(m, altered / 'model.onnx')
    with pytest.raises(h.ExportError, match='does not match the fastai model'):
        h.check_onnx(learn, altered / 'model.onnx', test[0][:50])
    r = run('export_onnx.py', pkl, altered, '--check-only', '--data', write_chars(tmp_path / 'data', train, test))
    assert r.returncode == 1 and 'Traceback' not in r.stderr, r.stderr[-2000:]
    assert re.fullmatch(r'error: \S+ does not match the fastai model: [^\n]+\.\n', r.stderr), r.stderr
    (altered / 'model.onnx').write_bytes(b'not a model')
    with pytest.raises(h.ExportError, match='cannot be run by onnxruntime'):
        h.check_onnx(learn, altered / 'model.onnx', test[0][:5])
    assert h.check_onnx(learn, folder / 'model.onnx', test[0])['max_difference'] < 1e-5  # the original passes


def test_export_without_test_images_says_so(exported, tmp_path):
    with pytest.raises(h.ExportError, match='checks itself on test images.*download_data.py'):
        h.export_page(exported[0], tmp_path / 'm')


def test_the_build_needs_only_the_npm_registry_and_ci_installs_it():
    "build_site.py is standard library only; every npm package is pinned, from the registry, checked; CI runs npm ci."
    tree = ast.parse((ROOT / 'scripts' / 'build_site.py').read_text())
    imported = {a.name.split('.')[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names} | \
               {n.module.split('.')[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert imported <= set(sys.stdlib_module_names), imported - set(sys.stdlib_module_names)
    pkg = json.loads((WEB / 'package.json').read_text())
    assert all(re.fullmatch(r'\d+\.\d+\.\d+', v) for v in pkg['dependencies'].values()), 'pin exact versions'
    lock = json.loads((WEB / 'package-lock.json').read_text())['packages']
    assert lock['node_modules/onnxruntime-web']['version'] == pkg['dependencies']['onnxruntime-web']
    for name, p in lock.items():  # each from the registry (a git, file or link package would name another source),
        if name:                    # checked by its hash; npm may leave out `resolved` to use the configured registry
            assert p['integrity'].startswith('sha512-') and not p.get('link'), name
            assert p.get('resolved', 'https://registry.npmjs.org/').startswith('https://registry.npmjs.org/'), name
    ci = (ROOT / '.ci' / 'run').read_text()
    assert 'npm ci' in ci and 'web' in ci
    flow = (ROOT / '.github' / 'workflows' / 'pages.yml').read_text()
    assert 'npm ci' in flow and 'scripts/build_site.py' in flow and 'actions/deploy-pages' in flow
    assert not re.search(r'\b(curl|wget|pip|apt-get)\b', flow), 'the workflow fetches nothing but npm packages'
    ignored = (ROOT / '.gitignore').read_text()
    assert '/site/' in ignored and 'node_modules' in ignored


@needs_ort
def test_the_build_refuses_with_a_sentence(exported, tmp_path):
    import build_site
    folder = exported[2]
    r = run('build_site.py', '--model', tmp_path / 'nothing', '--out', tmp_path / 'out')
    assert r.returncode == 1 and 'export_onnx.py' in r.stderr and 'Traceback' not in r.stderr
    web = tmp_path / 'web'
    shutil.copytree(WEB, web, ignore=shutil.ignore_patterns('node_modules', 'model'))
    r = run('build_site.py', '--web', web, '--model', folder, '--out', tmp_path / 'out')
    assert r.returncode == 1 and 'npm ci' in r.stderr and 'Traceback' not in r.stderr
    (web / 'node_modules').symlink_to(WEB / 'node_modules')
    html = (web / 'index.html').read_text()
    (web / 'index.html').write_text(html.replace('</head>', '<script src="https://cdn.example.org/x.js"></script></head>'))
    with pytest.raises(build_site.BuildError, match='other hosts.*cdn.example.org'):
        build_site.build(web, folder, tmp_path / 'out')
    (web / 'index.html').write_text(html)
    res = build_site.build(web, folder, tmp_path / 'out')
    assert sorted(res['files']) == ['.nojekyll', 'app.js', 'index.html', 'model/examples.png', 'model/font.css',
                                    'model/model.json', 'model/model.onnx', 'ort/LICENSE',
                                    'ort/ort-wasm-simd-threaded.wasm', 'ort/ort.wasm.bundle.min.mjs', 'style.css']


@pytest.mark.skipif(NODE is None, reason='needs Node.js (web/ is built with npm; .ci/run installs it)')
def test_javascript_preprocessing_is_pythons(tmp_path):
    """web/app.js's modelInput on drawings of every kind (big and small, so both LANCZOS and BILINEAR; tall, wide,
    off-centre; any canvas size) gives kmnist_input's 28x28 image. It may differ by one grey level where a float
    lands on a rounding edge (JavaScript's Math.sin against C's sin); here it never does."""
    from PIL import ImageDraw
    rng = np.random.default_rng(5)
    chars, _ = synthetic_chars(30, seed=11)
    drawings = []
    for i in range(60):
        if i % 2:  # random strokes of any width on a canvas of any shape
            im = Image.new('RGB', tuple(int(v) for v in rng.integers(30, 450, 2)), 'white'); d = ImageDraw.Draw(im)
            for _ in range(int(rng.integers(1, 4))):
                d.line([tuple(int(v) for v in rng.integers(0, im.size)) for _ in range(3)], fill='black',
                       width=int(rng.integers(1, 40)), joint='curve')
        else:  # a character at a random size (8 to 380 px) and place
            size = int(rng.integers(8, 380))
            im = as_drawing(chars[i // 2], size, tuple(int(v) for v in rng.integers(0, 400 - size, 2)), mode='RGB')
        drawings.append(im.convert('RGBA'))
        (tmp_path / f'{i}.rgba').write_bytes(np.asarray(drawings[-1]).tobytes())
    script = f"""import {{modelInput}} from {json.dumps((WEB / 'app.js').as_uri())};
        import {{readFileSync}} from 'node:fs';
        const cfg = {{input: {{size: 28}}, ink_level: {h.inference.INK_LEVEL}, min_contrast: {h.inference.MIN_CONTRAST}}};
        const sizes = {json.dumps([im.size for im in drawings])};
        console.log(JSON.stringify(sizes.map(([w, h], i) => {{
          const r = modelInput(readFileSync(`{tmp_path}/${{i}}.rgba`), w, h, cfg);
          return r.pixels ? Array.from(r.pixels) : r.reason; }})));"""
    r = subprocess.run([NODE, '--input-type=module', '-e', script], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    diffs = []
    for im, js in zip(drawings, json.loads(r.stdout)):
        buf = io.BytesIO(); im.save(buf, format='PNG')
        py = h.kmnist_input(buf.getvalue())
        diffs.append(np.abs(py.astype(int) - np.array(js).reshape(28, 28)))
    assert max(d.max() for d in diffs) <= 1, 'the page would not see what Python sees'
    assert sum((d > 0).sum() for d in diffs) == 0, f'{sum((d > 0).sum() for d in diffs)} pixels off by one grey level'


class _Quiet(http.server.SimpleHTTPRequestHandler):
    extensions_map = {**http.server.SimpleHTTPRequestHandler.extensions_map, '.mjs': 'text/javascript',
                      '.js': 'text/javascript', '.wasm': 'application/wasm'}
    def log_message(self, *a): pass


def serve(folder):
    "The built site on 127.0.0.1 at a free port, as `python -m http.server` serves it: (server, URL)."
    srv = http.server.ThreadingHTTPServer(('127.0.0.1', 0), functools.partial(_Quiet, directory=str(folder)))
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv, f'http://127.0.0.1:{srv.server_address[1]}/'


def png_of(data_url):
    return base64.b64decode(data_url.split(',', 1)[1])


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason='needs Debian chromium (.ci/run installs it)')
def test_the_page_in_a_real_browser(site, exported):
    from playwright.sync_api import sync_playwright
    learn, _, folder, cfg, (x, y), _ = exported
    SHOTS.mkdir(parents=True, exist_ok=True)
    srv, url = serve(site)
    requests, outside, errors = [], [], []
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=[
                '--no-sandbox', '--disable-background-networking', '--disable-component-update'])
            page = browser.new_context(viewport={'width': 1100, 'height': 1000}, has_touch=True).new_page()
            page.on('request', lambda r: requests.append(r.url))
            page.on('pageerror', lambda e: errors.append(str(e)))
            def only_local(route):
                u = route.request.url
                if u.startswith(url) or u.startswith(('data:', 'blob:')): route.continue_()
                else: outside.append(u); route.abort()
            page.route('**/*', only_local)
            page.goto(url)
            page.wait_for_function('window.reader && window.reader.ready', timeout=60_000)
            msg = lambda: page.inner_text('#message')
            assert msg().startswith('Ready')
            cdp = page.context.new_cdp_session(page)
            def stroke(pts, kind='mouse'):
                "A stroke through `pts` (fractions of the canvas) with the mouse, a finger or a pen; waits for its reading."
                n = page.evaluate('reader.readings')
                box = page.locator('#pad').bounding_box()
                at = lambda fx, fy: (box['x'] + fx * box['width'], box['y'] + fy * box['height'])
                if kind == 'mouse':
                    page.mouse.move(*at(*pts[0])); page.mouse.down()
                    for q in pts[1:]: page.mouse.move(*at(*q), steps=8)
                    page.mouse.up()
                elif kind == 'touch':
                    for i, q in enumerate(pts):
                        cdp.send('Input.dispatchTouchEvent', {'type': 'touchStart' if i == 0 else 'touchMove',
                                                              'touchPoints': [dict(zip('xy', at(*q)))]})
                    cdp.send('Input.dispatchTouchEvent', {'type': 'touchEnd', 'touchPoints': []})
                else:  # a pen: Chromium's pointer events with pointerType 'pen'
                    for i, q in enumerate(pts):
                        cdp.send('Input.dispatchMouseEvent', {'type': 'mousePressed' if i == 0 else 'mouseMoved',
                                 'x': at(*q)[0], 'y': at(*q)[1], 'button': 'left', 'buttons': 1, 'clickCount': 1,
                                 'pointerType': 'pen'})
                    cdp.send('Input.dispatchMouseEvent', {'type': 'mouseReleased', 'x': at(*pts[-1])[0],
                             'y': at(*pts[-1])[1], 'button': 'left', 'clickCount': 1, 'pointerType': 'pen'})
                page.wait_for_function(f'reader.readings > {n}', timeout=30_000)
                return page.evaluate('reader.last')
            page.screenshot(path=SHOTS / '1-ready.png')

            stroke([(0.2, 0.2), (0.8, 0.2), (0.8, 0.8), (0.2, 0.8), (0.2, 0.2)])  # a big character: a box...
            last = stroke([(0.5, 0.05), (0.5, 0.95)])  # ...with a stroke through it
            page.screenshot(path=SHOTS / '2-read.png')
            best = int(np.argmax(last['probabilities']))
            assert msg() == f"Read as {cfg['shown'][best]}, probability {last['probabilities'][best]:.2f}."
            assert page.inner_text('#answers li:first-child .label') == cfg['shown'][best]
            assert page.locator('#answers li').count() == 3
            # the page's input is Python's for the PNG of the very same canvas (at most 1 grey level apart: rounding)
            pixels = np.array(last['pixels'], np.uint8).reshape(28, 28)
            py = h.kmnist_input(png_of(page.evaluate('reader.png()')))
            assert np.abs(py.astype(int) - pixels).max() <= 1, np.abs(py.astype(int) - pixels).max()
            # ...and its probabilities are onnxruntime's on that input, and fastai's
            page_p = np.array(last['probabilities'])
            assert np.abs(page_p - h.onnx_probabilities(folder / 'model.onnx', [pixels])[0]).max() < 1e-5
            assert np.abs(page_p - h.probabilities(learn, [pixels])[0]).max() < 1e-4
            # beside the answer, 4 training images of each of the top 3, in the answer's order
            rows = page.locator('#examples .examples-row')
            assert rows.count() == 3 and [rows.nth(i).locator('.examples-label').inner_text() for i in range(3)] == \
                [cfg['shown'][i] for i in last['top']]
            for i, c in enumerate(last['top']):
                shown = [np.asarray(Image.open(io.BytesIO(png_of(u))).convert('L'))[::2, ::2] for u in
                         rows.nth(i).locator('canvas').evaluate_all('cs => cs.map(c => c.toDataURL())')]
                assert len(shown) == 4 and all(any((s == t).all() for t in x[y == c]) for s in shown), CHARS[c]
            # the Japanese labels are drawn in the page's own font, whatever fonts the computer has
            faces = page.evaluate(f"document.fonts.load(\"20px 'Kuzushiji page'\", '{''.join(CHARS)}')"
                                  ".then(fs => fs.map(f => f.family + ' ' + f.status))")
            assert faces in (['"Kuzushiji page" loaded'], ['Kuzushiji page loaded']), faces
            family = page.evaluate("getComputedStyle(document.querySelector('#answers .label')).fontFamily")
            assert family.strip('"\'').startswith('Kuzushiji page'), family

            # Clear: the drawing goes to the history with its answer, and an empty canvas gets a sentence
            page.click('#clear')
            assert msg() == 'Nothing to read: the canvas is empty. Draw one character, big, across most of the square.'
            assert page.locator('#history li').count() == 1
            assert page.inner_text('#history li span') == f"{cfg['shown'][best]} {page_p[best]:.2f}"
            assert page.evaluate('reader.read()')['reason'] == 'empty' and msg().startswith('Nothing to read')
            assert page.locator('#answers li').count() == 0
            dot = stroke([(0.5, 0.5)])  # a click: one dot
            assert dot['reason'] == 'dot' and msg().startswith('That is a single dot, not a character')
            assert page.locator('#answers li').count() == 0
            page.screenshot(path=SHOTS / '3-dot.png')
            page.click('#clear')
            assert page.locator('#history li').count() == 1  # a dot has no answer to keep

            # a finger and a pen draw too; the history keeps the last 6, newest first
            for i, kind in enumerate(['touch', 'pen'] + ['mouse'] * 5):
                last = stroke([(0.15, 0.2 + 0.08 * i), (0.85, 0.3), (0.3, 0.85)], kind)
                assert msg().startswith('Read as'), (kind, msg())
                page.click('#clear')
            assert page.locator('#history li').count() == 6
            assert page.inner_text('#history li:first-child span').startswith(cfg['shown'][last['top'][0]])
            page.screenshot(path=SHOTS / '4-history.png')

            # the server stops; the page still reads, and asks for nothing
            srv.shutdown(); srv.server_close()
            before = len(requests)
            last = stroke([(0.2, 0.5), (0.8, 0.5), (0.5, 0.9)])
            assert msg().startswith('Read as') and len(last['probabilities']) == 10
            assert len(requests) == before, requests[before:]
            page.screenshot(path=SHOTS / '5-offline.png')
            browser.close()
    finally:
        srv.shutdown(); srv.server_close()
    assert outside == [] and all(u.startswith(url) for u in requests), [u for u in requests if not u.startswith(url)]
    assert errors == [], errors
