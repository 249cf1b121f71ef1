"""The static web page (issues 30 and 35): the ONNX export and its self-checks (which can fail: the float model
against fastai, the 8-bit kanji model against the float one), a build that needs nothing but the npm registry, the
page's JavaScript preprocessing against Python's for drawings and photos (Node), and the built site in a real browser
(Debian's Chromium driven by Playwright, served on 127.0.0.1, every request recorded, the service worker's too): the
page's input and probabilities against Python's and onnxruntime's, a dot, the history, mouse, touch and pen, one
character at a time, undo, clear; photos through window.kuzushiji.read and the photo input in both modes, bad files,
"not sure", the kanji model fetched only when chosen; a reload with the server stopped; a phone's screen,
accessibility and installability. Screenshots go to $SITE_SHOTS (default /tmp/site-shots)."""
import ast, base64, functools, http.server, io, json, os, re, shutil, subprocess, sys, threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import helpers as h
from conftest import CLASSMAP, ROOT, write_kanji
from test_inference import CHARS, as_drawing, synthetic_chars

CHROMIUM = '/usr/bin/chromium'
NODE = shutil.which('node')
WEB = ROOT / 'web'
SHOTS = Path(os.environ.get('SITE_SHOTS', '/tmp/site-shots'))
# Playwright routes (and so refuses) the service worker's own requests only with this set: before the driver starts
os.environ.setdefault('PW_EXPERIMENTAL_SERVICE_WORKER_NETWORK_EVENTS', '1')
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
def kanji_exported(tmp_path_factory):
    """A Kuzushiji-Kanji model made by train.py --preset quick (8 epochs: a model sure enough of itself that 8 bits
    move no answer) on a small long-tailed set of synthetic kanji, exported for the page (8 bits) by the command line: (learner, model file, export folder, model.json, data, train, test)."""
    tmp = tmp_path_factory.mktemp('kanji')
    write_kanji(tmp / 'data')
    pkl = tmp / 'kkanji.pkl'
    r = subprocess.run([sys.executable, str(ROOT / 'scripts' / 'train.py'), '--dataset', 'kkanji', '--preset', 'quick',
                        '--epochs', '8', '--data', str(tmp / 'data'), '--out', str(tmp / 'res.json'), '--model', str(pkl)],
                       capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    r = run('export_onnx.py', pkl, tmp / 'model', '--data', tmp / 'data')
    assert r.returncode == 0 and r.stderr == '', r.stderr[-3000:]
    assert 'In 8 bits: top-1' in r.stdout and 'Not sure below' in r.stdout, r.stdout
    d = h.load_kanji(tmp / 'data', size=32, log=lambda s: None)
    train, test = [(d['x'][d['part'] == i], d['y'][d['part'] == i]) for i in (0, 2)]
    cfg = json.loads((tmp / 'model' / 'model.json').read_text(encoding='utf-8'))
    return h.load_model(pkl), pkl, tmp / 'model', cfg, tmp / 'data', train, test


@pytest.fixture(scope='module')
def site(exported, kanji_exported, tmp_path_factory):
    if not (WEB / 'node_modules' / 'onnxruntime-web').is_dir():
        pytest.skip('needs onnxruntime-web: run `npm ci` in web/ (.ci/run does)')
    import build_site
    out = tmp_path_factory.mktemp('built') / 'site'
    build_site.build(model=exported[2], kanji=kanji_exported[2], out=out)
    return out


def test_a_kanji_export_is_8_bit_checked_with_its_threshold_counts_and_sheets(kanji_exported):
    learn, _, folder, cfg, _, (x, y), test = kanji_exported
    assert cfg['mode'] == 'kanji' and cfg['top'] == 5 and cfg['input']['size'] == 32 and cfg['brush'] == 30
    assert cfg['not_sure_below'] == learn.long_tail['reject_below'] and cfg['counts'] == learn.long_tail['counts']
    q = cfg['eight_bit']
    assert q['images'] == len(test[1]) and abs(q['top1'] - q['float_top1']) <= 0.003 and 'quantize_dynamic' in q['method']
    assert not (folder / 'model-float.onnx').exists()
    import onnx
    ops = {n.op_type for n in onnx.load(folder / 'model.onnx').graph.node}
    assert {'MatMulInteger', 'ConvInteger', 'DynamicQuantizeLinear'} <= ops, ops  # its weights are in 8 bits
    # the examples: up to 2 training images per class at 24 px in 16 grey levels, as many as a class has
    ex = cfg['examples']
    assert ex['sheets'] == ['examples.png'] and ex['per_class'] == 2 and ex['size'] == 24
    assert ex['shown'] == [min(2, int((y == i).sum())) for i in range(len(cfg['labels']))]
    sheet = np.asarray(Image.open(folder / 'examples.png').convert('L')).astype(int)
    for c in range(len(cfg['labels'])):
        for j in range(ex['shown'][c]):
            img, want = sheet[24 * c:24 * c + 24, 24 * j:24 * j + 24], x[y == c][j]
            want = np.asarray(Image.fromarray(want).resize((24, 24), Image.LANCZOS)).astype(int)
            assert np.abs(img - want).max() <= 9, (c, j)  # 16 levels: within half a step of 17
    assert cfg['shown'][-1] == 'U+29780'  # a kanji the font lacks: its code point
    # the font: one WOFF2 file per 256 classes, each named in font.css with its characters, after the device's own
    css = (folder / 'font.css').read_text()
    assert cfg['fonts'] == ['font-0.woff2'] and css.count('@font-face') == 1 and 'U+4E00' in css
    assert "local('Hiragino Sans W3')" in css and 'url(font-0.woff2)' in css and 'U+29780' not in css


def test_the_8_bit_check_fails_on_an_altered_model(kanji_exported, tmp_path):
    """Scrambled 8-bit weights change the answers: the check refuses in one sentence, from Python and the command
    line; the shipped model passes."""
    import onnx
    from onnx import numpy_helper
    learn, pkl, folder, cfg, data, _, (x, y) = kanji_exported
    float_file = tmp_path / 'float.onnx'
    h.web.export_onnx(learn, float_file)
    assert h.check_quantized(float_file, folder / 'model.onnx', x, y)['top1'] == cfg['eight_bit']['top1']
    altered = tmp_path / 'model'
    shutil.copytree(folder, altered)
    m = onnx.load(altered / 'model.onnx')
    w = max((t for t in m.graph.initializer if t.data_type in (onnx.TensorProto.INT8, onnx.TensorProto.UINT8)),
            key=lambda t: np.prod(t.dims))  # the largest 8-bit weights, shuffled
    a = numpy_helper.to_array(w)
    w.CopyFrom(numpy_helper.from_array(np.random.default_rng(0).permutation(a.ravel()).reshape(a.shape), w.name))
    onnx.save(m, altered / 'model.onnx')
    with pytest.raises(h.ExportError, match=r'^The 8-bit model reads [\d.]+% of [\d,]+ test images right against the '
                                            r"float model's [\d.]+%, more than 0.3% apart: it is not shipped"):
        h.check_quantized(float_file, altered / 'model.onnx', x, y)
    r = run('export_onnx.py', pkl, altered, '--check-only', '--data', data)
    assert r.returncode == 1 and re.fullmatch(r'error: The 8-bit model reads [^\n]+\.\n', r.stderr), r.stderr
    r = run('export_onnx.py', pkl, folder, '--check-only', '--data', data)
    assert r.returncode == 0 and 'holds up' in r.stdout, r.stderr


@pytest.mark.parametrize('method', ['logit-adjust', 'ncm'])
def test_every_long_tail_method_exports(kanji_exported, method, tmp_path):
    "Whatever last layer train.py builds in (LogitAdjust after the network, NearestMean in place of its classifier)."
    _, _, _, _, data, train, test = kanji_exported
    cfg = h.make_config('kkanji', 'quick', method=method, taus=(1.0,), crt_epochs=None, epochs=1)
    _, learn = h.run_kanji(cfg, data, log=lambda s: None, test=False)
    learn = h.load_model(h.export(learn, tmp_path / 'm.pkl'))
    try:  # in 8 bits, if the check lets it through (on these 92 images nearest class mean moved by 3: refused)
        out = h.export_page(learn, tmp_path / 'page', train, test, top=5)
        assert out['eight_bit']['images'] == len(test[1])
    except h.ExportError as e:
        assert str(e).startswith('The 8-bit model reads') and not (tmp_path / 'page' / 'model.onnx').exists()
        out = h.export_page(learn, tmp_path / 'page', train, test, top=5, eight_bit=False)  # --float
        assert out['eight_bit'] is None
    assert out['check']['max_difference'] < 1e-4 and out['not_sure_below'] is not None


def test_export_writes_a_checked_model_and_what_the_page_needs(exported):
    learn, _, folder, cfg, (x, y), _ = exported
    assert sorted(p.name for p in folder.iterdir()) == ['examples.png', 'font.css', 'model.json', 'model.onnx']
    assert cfg['bytes'] == (folder / 'model.onnx').stat().st_size < 1_000_000  # the goal: under 1 MB
    assert cfg['input'] == {'name': 'pixels', 'size': 28, 'dtype': 'uint8', 'layout': '1x1xSxS, white ink on black'}
    assert cfg['labels'] == CHARS and cfg['shown'][5] == 'は (ha)' and cfg['top'] == 3
    assert (cfg['ink_level'], cfg['min_contrast'], cfg['brush'], cfg['canvas']) == (0.25, 0.15, 34, 400)
    assert cfg['check']['images'] == 100 and cfg['check']['max_difference'] < 1e-5
    assert cfg['mode'] == 'kana' and cfg['eight_bit'] is None and 0 < cfg['not_sure_below'] <= 1  # chosen on validation
    assert cfg['not_sure']['images'] == 60 and '99.9% right' in cfg['not_sure']['rule']  # 10% of the 600 held out
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
    assert sorted(res['files']) == ['.nojekyll', 'app.js', 'icon-192.png', 'icon-512.png', 'index.html',
                                    'manifest.webmanifest', 'model/examples.png', 'model/font.css',
                                    'model/model.json', 'model/model.onnx', 'ort/LICENSE',
                                    'ort/ort-wasm-simd-threaded.wasm', 'ort/ort.wasm.bundle.min.mjs', 'style.css', 'sw.js']
    # the service worker keeps the first visit's files in a cache named by the build; another build, another name
    sw = (tmp_path / 'out' / 'sw.js').read_text()
    assert f"const BUILD = '{res['build']}';" in sw and json.dumps(res['first_visit']) in sw
    assert set(res['first_visit']) == {'./'} | set(res['files']) - {'.nojekyll', 'ort/LICENSE', 'sw.js'}
    (web / 'style.css').write_text((WEB / 'style.css').read_text() + '/* changed */')
    assert build_site.build(web, folder, tmp_path / 'out')['build'] != res['build']


@pytest.mark.skipif(NODE is None, reason='needs Node.js (web/ is built with npm; .ci/run installs it)')
def test_javascript_preprocessing_is_pythons(tmp_path):
    """web/app.js's modelInput on drawings of every kind (big and small, so both LANCZOS and BILINEAR; tall, wide,
    off-centre; any canvas size) and on photos (grey paper with grain, a turn, blur, JPEG: `as_photo`, decoded here
    by PIL, under 1,024 px so that neither side shrinks it) gives char_input's image, at 28 and at 32 pixels. It may differ
    by one grey level where a float lands on a rounding edge (JavaScript's Math.sin against C's sin); here it never
    does."""
    from PIL import ImageDraw
    rng = np.random.default_rng(5)
    chars, _ = synthetic_chars(30, seed=11)
    drawings = []
    for i in range(80):
        if i >= 60:  # a photo of a character: the same algorithm, its paper's grain left out
            drawings.append(Image.open(io.BytesIO(h.as_photo(chars[i - 60], rng, size=(60, 200)))).convert('RGBA'))
            (tmp_path / f'{i}.rgba').write_bytes(np.asarray(drawings[-1]).tobytes())
            continue
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
        const cfg = {{ink_level: {h.inference.INK_LEVEL}, min_contrast: {h.inference.MIN_CONTRAST},
                      noise_sigmas: {h.inference.NOISE_SIGMAS}}};
        const sizes = {json.dumps([im.size for im in drawings])};
        console.log(JSON.stringify(sizes.map(([w, h], i) => {{
          const r = modelInput(readFileSync(`{tmp_path}/${{i}}.rgba`), w, h, {{...cfg, input: {{size: 28 + 4 * (i % 2)}}}});
          return r.pixels ? Array.from(r.pixels) : r.reason; }})));"""
    r = subprocess.run([NODE, '--input-type=module', '-e', script], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    diffs = []
    for i, (im, js) in enumerate(zip(drawings, json.loads(r.stdout))):
        buf = io.BytesIO(); im.save(buf, format='PNG')
        size = 28 + 4 * (i % 2)
        try: py = h.char_input(buf.getvalue(), size)
        except h.NoInk: py = 'empty'  # strokes over most of a small canvas, its border included: no paper to go by
        if isinstance(py, str) or isinstance(js, str): assert py == js == 'empty', (i, js); continue
        diffs.append(np.abs(py.astype(int) - np.array(js).reshape(size, size)))
    assert len(diffs) >= 75, len(diffs)
    assert max(d.max() for d in diffs) <= 1, 'the page would not see what Python sees'
    assert sum((d > 0).sum() for d in diffs) == 0, f'{sum((d > 0).sum() for d in diffs)} pixels off by one grey level'


class _Quiet(http.server.SimpleHTTPRequestHandler):
    extensions_map = {**http.server.SimpleHTTPRequestHandler.extensions_map, '.mjs': 'text/javascript',
                      '.js': 'text/javascript', '.wasm': 'application/wasm', '.webmanifest': 'application/manifest+json'}
    def log_message(self, *a): pass
    def do_GET(self):
        self.server.asked.append(self.path.split('?')[0])
        return super().do_GET()


def serve(folder):
    "The built site on 127.0.0.1 at a free port, as `python -m http.server` serves it: (server, URL); `.asked` its paths."
    srv = http.server.ThreadingHTTPServer(('127.0.0.1', 0), functools.partial(_Quiet, directory=str(folder)))
    srv.asked = []
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv, f'http://127.0.0.1:{srv.server_address[1]}/'


def png_of(data_url):
    return base64.b64decode(data_url.split(',', 1)[1])


needs_chromium = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason='needs Debian chromium (.ci/run installs it)')


class Browser:
    """The built site in headless Chromium, served on 127.0.0.1: every request recorded (the service worker's too)
    and any that would leave 127.0.0.1 refused; errors of the page's scripts kept; strokes and photos given."""
    def __init__(self, p, url, viewport=(1100, 1000), touch=False):
        self.url, self.requests, self.outside, self.errors = url, [], [], []
        self.browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=[
            '--no-sandbox', '--disable-background-networking', '--disable-component-update'])
        self.context = self.browser.new_context(viewport=dict(zip(('width', 'height'), viewport)), has_touch=touch)
        self.context.on('request', lambda r: self.requests.append(r.url))
        self.context.route('**/*', self.only_local)
        self.page = self.context.new_page()
        self.page.on('pageerror', lambda e: self.errors.append(str(e)))
        self.cdp = self.context.new_cdp_session(self.page)

    def only_local(self, route):
        u = route.request.url
        if u.startswith(self.url) or u.startswith(('data:', 'blob:')): route.continue_()
        else: self.outside.append(u); route.abort()

    def open(self):
        self.page.goto(self.url)
        self.page.wait_for_function('window.kuzushiji && window.kuzushiji.ready', timeout=60_000)
        return self

    def message(self): return self.page.inner_text('#message')

    def wait_reading(self, n):
        self.page.wait_for_function(f'kuzushiji.readings > {n}', timeout=30_000)
        return self.page.evaluate('kuzushiji.last')

    def stroke(self, pts, kind='mouse'):
        "A stroke through `pts` (fractions of the pad) with the mouse, a finger or a pen; waits for its reading."
        page, n = self.page, self.page.evaluate('kuzushiji.readings')
        box = page.locator('#pad').bounding_box()
        at = lambda fx, fy: (box['x'] + fx * box['width'], box['y'] + fy * box['height'])
        if kind == 'mouse':
            page.mouse.move(*at(*pts[0])); page.mouse.down()
            for q in pts[1:]: page.mouse.move(*at(*q), steps=8)
            page.mouse.up()
        elif kind == 'touch': self.swipe([at(*q) for q in pts])
        else:  # a pen: Chromium's pointer events with pointerType 'pen'
            for i, q in enumerate(pts):
                self.cdp.send('Input.dispatchMouseEvent', {'type': 'mousePressed' if i == 0 else 'mouseMoved',
                              'x': at(*q)[0], 'y': at(*q)[1], 'button': 'left', 'buttons': 1, 'clickCount': 1,
                              'pointerType': 'pen'})
            self.cdp.send('Input.dispatchMouseEvent', {'type': 'mouseReleased', 'x': at(*pts[-1])[0],
                          'y': at(*pts[-1])[1], 'button': 'left', 'clickCount': 1, 'pointerType': 'pen'})
        return self.wait_reading(n)

    def swipe(self, points):
        "A finger through `points` (page pixels of the viewport), as touch events."
        for i, (x, y) in enumerate(points):
            self.cdp.send('Input.dispatchTouchEvent', {'type': 'touchStart' if i == 0 else 'touchMove',
                                                       'touchPoints': [{'x': x, 'y': y}]})
        self.cdp.send('Input.dispatchTouchEvent', {'type': 'touchEnd', 'touchPoints': []})

    def photo(self, data, name='photo.jpg', mime='image/jpeg'):
        "Choose a file with the page's photo input; waits for its reading."
        n = self.page.evaluate('kuzushiji.readings')
        self.page.set_input_files('#photo', files=[{'name': name, 'mimeType': mime, 'buffer': data}])
        return self.wait_reading(n)

    def read(self, data, mode, mime='image/jpeg'):
        "window.kuzushiji.read(blob, mode): the answers, or {'error': the sentence}."
        return self.page.evaluate("""async ([b64, mode, mime]) => {
            const blob = new Blob([Uint8Array.from(atob(b64), c => c.charCodeAt(0))], {type: mime});
            try { return await window.kuzushiji.read(blob, mode); } catch (e) { return {error: e.message}; } }""",
                                  [base64.b64encode(data).decode(), mode, mime])

    def choose(self, mode):
        "Kana or kanji, with the page's radio buttons; waits for the page to read again (unless already there)."
        if self.page.evaluate('kuzushiji.mode') == mode: return self.page.evaluate('kuzushiji.last')
        n = self.page.evaluate('kuzushiji.readings')
        self.page.check(f'input[name=mode][value={mode}]')
        return self.wait_reading(n)

    def close(self):
        self.browser.close()
        assert self.outside == [], f'the page asked for something outside this computer: {self.outside}'
        assert all(u.startswith(self.url) for u in self.requests), [u for u in self.requests if not u.startswith(self.url)]
        assert self.errors == [], self.errors


def onnx_reads(folder, pixels):
    "What onnxruntime makes of the page's input: probabilities."
    return h.onnx_probabilities(folder / 'model.onnx', [np.asarray(pixels, np.uint8).reshape(int(len(pixels) ** 0.5), -1)])[0]


@needs_chromium
def test_the_page_in_a_real_browser(site, exported):
    """Drawing: the page's input and probabilities against Python's, the training examples, the font, a dot, mouse,
    touch and pen, one character at a time (a stroke after a pause starts a new one, the last goes to the history),
    undo, clear (not an error), and reading after the server has stopped."""
    from playwright.sync_api import sync_playwright
    learn, _, folder, cfg, (x, y), _ = exported
    SHOTS.mkdir(parents=True, exist_ok=True)
    srv, url = serve(site)
    try:
        with sync_playwright() as p:
            b = Browser(p, url, touch=True).open()
            page = b.page
            assert b.message().startswith('Ready: draw one kana')
            page.screenshot(path=SHOTS / '1-ready.png')
            first = b.stroke([(0.2, 0.2), (0.8, 0.2), (0.8, 0.8), (0.2, 0.8), (0.2, 0.2)])  # a big character: a box...
            one_stroke = page.evaluate('kuzushiji.png()')
            last = b.stroke([(0.5, 0.05), (0.5, 0.95)])  # ...with a stroke through it, at once: the same character
            page.screenshot(path=SHOTS / '2-read.png')
            best = int(np.argmax(last['probabilities']))
            p_best = last['probabilities'][best]
            want = (f"Read as {cfg['shown'][best]}, probability {p_best:.2f}." if p_best >= cfg['not_sure_below'] else
                    f"Not sure. Its best guess is {cfg['shown'][best]}, probability {p_best:.2f}")
            assert b.message().startswith(want) and last['sure'] == (p_best >= cfg['not_sure_below'])
            assert page.inner_text('#answers li:first-child .label') == cfg['shown'][best]
            assert page.locator('#answers li').count() == 3
            assert page.get_attribute('#answers li:first-child .label span', 'lang') == 'ja'  # marked as Japanese
            # the page's input is Python's for the PNG of the very same canvas (at most 1 grey level apart: rounding)
            pixels = np.array(last['pixels'], np.uint8).reshape(28, 28)
            py = h.kmnist_input(png_of(page.evaluate('kuzushiji.png()')))
            assert np.abs(py.astype(int) - pixels).max() <= 1, np.abs(py.astype(int) - pixels).max()
            # ...and its probabilities are onnxruntime's on that input, and fastai's
            page_p = np.array(last['probabilities'])
            assert np.abs(page_p - onnx_reads(folder, last['pixels'])).max() < 1e-5
            assert np.abs(page_p - h.probabilities(learn, [pixels])[0]).max() < 1e-4
            assert 'white ink on black' in page.get_attribute('#seen', 'aria-label')  # the input's text alternative
            # beside the answer, 4 training images of each of the top 3, in the answer's order
            rows = page.locator('#examples .examples-row')
            assert rows.count() == 3 and [rows.nth(i).locator('.examples-label').inner_text() for i in range(3)] == \
                [cfg['shown'][i] for i in last['top']]
            page.wait_for_timeout(300)  # the sheet is fetched when first needed
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

            # Undo takes the last stroke away: the pad is as it was after the first stroke, and is read again
            n = page.evaluate('kuzushiji.readings')
            page.click('#undo')
            again = b.wait_reading(n)
            assert page.evaluate('kuzushiji.png()') == one_stroke and again['probabilities'] == first['probabilities']

            # one character at a time: a stroke after a pause starts a fresh pad; the last drawing goes to the history
            page.wait_for_timeout(2100)
            fresh = b.stroke([(0.3, 0.5), (0.7, 0.5)])
            assert page.locator('#history li').count() == 1 and fresh['box']['h'] < 60  # the flat stroke alone
            assert page.get_attribute('#history li img', 'alt').startswith('an earlier drawing, read as')
            # Undo twice: the stroke goes, then the last character comes back from the history, to add to
            page.click('#undo'); page.wait_for_function("document.querySelector('#message').innerText.startsWith('Undone')")
            n = page.evaluate('kuzushiji.readings')
            page.click('#undo'); b.wait_reading(n)
            assert page.evaluate('kuzushiji.png()') == one_stroke and page.locator('#history li').count() == 0
            page.wait_for_timeout(2100)  # after bringing it back, the next stroke joins it, pause or not
            b.stroke([(0.5, 0.05), (0.5, 0.95)])
            assert page.locator('#history li').count() == 0

            # Clear on purpose: the drawing goes to the history, and the message is not an error
            page.click('#clear')
            assert b.message() == 'Cleared: the drawing went to the history below. Draw the next character (Undo brings it back).'
            assert page.locator('#history li').count() == 1 and page.locator('#answers li').count() == 0
            dot = b.stroke([(0.5, 0.5)])  # a click: one dot
            assert dot['reason'] == 'dot' and b.message().startswith('That is a single dot, not a character')
            assert page.locator('#answers li').count() == 0
            page.screenshot(path=SHOTS / '3-dot.png')
            page.click('#clear')
            assert page.locator('#history li').count() == 1  # a dot has no answer to keep

            # a finger and a pen draw too; the history keeps the last 6, newest first
            for i, kind in enumerate(['touch', 'pen'] + ['mouse'] * 5):
                last = b.stroke([(0.15, 0.2 + 0.08 * i), (0.85, 0.3), (0.3, 0.85)], kind)
                assert last['top'], (kind, b.message())
                page.click('#clear')
            assert page.locator('#history li').count() == 6
            assert page.inner_text('#history li:first-child span').startswith(cfg['shown'][last['top'][0]])
            page.screenshot(path=SHOTS / '4-history.png')

            # the server stops; the page still reads, and asks for nothing
            srv.shutdown(); srv.server_close()
            before = len(b.requests)
            last = b.stroke([(0.2, 0.5), (0.8, 0.5), (0.5, 0.9)])
            assert last['top'] and len(last['probabilities']) == 10
            assert len(b.requests) == before, b.requests[before:]
            page.screenshot(path=SHOTS / '5-offline.png')
            b.close()
    finally:
        srv.shutdown(); srv.server_close()


@needs_chromium
def test_photos_both_modes_and_not_sure(site, exported, kanji_exported):
    """window.kuzushiji.read on photos made here from test-split images of both data sets (synthetic), as Python
    reads them; the photo input; a file that is not an image and a picture with no ink, each with its sentence; the
    kanji model fetched only when kanji is chosen; "not sure" below the threshold in both modes."""
    from playwright.sync_api import sync_playwright
    _, _, kana_dir, kana_cfg, _, (kx, ky) = exported
    klearn, _, kanji_dir, kanji_cfg, _, _, (jx, jy) = kanji_exported
    rng = np.random.default_rng(7)
    srv, url = serve(site)
    try:
        with sync_playwright() as p:
            b = Browser(p, url).open()
            page = b.page
            assert not [a for a in srv.asked if a.startswith('/model/kanji/')]  # kana only, so far
            agree = []
            for mode, (xs, ys), folder, cfg, size in (('kana', (kx, ky), kana_dir, kana_cfg, 28),
                                                      ('kanji', (jx, jy), kanji_dir, kanji_cfg, 32)):
                right = 0
                for i in range(12):
                    data = h.as_photo(xs[i], rng, size=(80, 200))  # under 1,024 px: the browser decodes it whole
                    got = b.read(data, mode)
                    assert isinstance(got, list) and len(got) == cfg['top'], got
                    assert set(got[0]) == {'label', 'probability'} and got[0]['label'] in cfg['labels']
                    want = h.onnx_probabilities(folder / 'model.onnx', [h.char_input(data, size)])[0]
                    agree.append(cfg['labels'][int(np.argmax(want))] == got[0]['label'])
                    assert abs(want.max() - got[0]['probability']) < 0.1  # two JPEG decoders, near enough
                    right += got[0]['label'] == cfg['labels'][int(ys[i])]
                # well above chance (1 in 10, 1 in 36): the kana are easy; the synthetic kanji differ by where a bar
                # 4 px wide lies, and a turn of 4 degrees moves a bar's end by 1 px (a tiny model trained 2 epochs)
                assert right >= (9 if mode == 'kana' else 4), (mode, right)
                if mode == 'kana':  # the kanji model was fetched by the first kanji read, not before
                    assert not [a for a in srv.asked if a.startswith('/model/kanji/')], srv.asked
            assert sum(agree) >= 22, agree  # the same answer as Python's on (nearly) every photo
            assert {'/model/kanji/model.json', '/model/kanji/model.onnx'} <= set(srv.asked)
            assert '/model/kanji/examples.png' not in srv.asked  # the examples: when an answer shows them

            # the photo input, in kana mode: the answer, what the model saw, the photo on the pad
            last = b.photo(h.as_photo(kx[3], rng))
            assert last['top'] and last['mode'] == 'kana' and b.message().startswith(('Read as', 'Not sure.'))
            page.screenshot(path=SHOTS / '6-photo.png')
            # bad input: one sentence, and no answer left from before
            last = b.photo(b'hello', 'notes.txt', 'text/plain')
            assert last['reason'] == 'error' and b.message().startswith('That file is not an image this browser can read')
            assert page.locator('#answers li').count() == 0 and page.locator('#examples .examples-row').count() == 0
            buf = io.BytesIO(); Image.new('RGB', (300, 200), (205, 200, 190)).save(buf, format='JPEG')
            last = b.photo(buf.getvalue())
            assert b.message().startswith('There is no ink on this picture') and page.locator('#answers li').count() == 0
            assert b.read(b'hello', 'kana') == {'error': 'That file is not an image this browser can read: choose a '
                                                         'photo or scan of one character (JPEG, PNG, WebP…).'}
            assert b.read(buf.getvalue(), 'kanji')['error'].startswith('There is no ink on this picture')
            assert b.read(buf.getvalue(), 'hiragana')['error'] == "There is no hiragana reader: choose 'kana' or 'kanji'."

            # not sure, in both modes: below the threshold the page says so, above it answers
            for mode in ('kana', 'kanji'):
                b.choose(mode)
                for th, start in ((1.01, 'Not sure. Its best guess is'), (0.0, 'Read as')):
                    page.evaluate(f'kuzushiji.config.not_sure_below = {th}')
                    last = b.photo(h.as_photo((kx if mode == 'kana' else jx)[5], rng))
                    assert b.message().startswith(start) and last['sure'] == (th == 0.0), (mode, th, b.message())
                    page.screenshot(path=SHOTS / f'7-{mode}-{"not-sure" if th > 1 else "sure"}.png')
            # kanji: the top 5, each with its number of training images and up to 3 of them
            rows = page.locator('#examples .examples-row')
            assert rows.count() == 5 and '/model/kanji/examples.png' in srv.asked
            counts = rows.locator('.examples-count').all_inner_texts()
            top = page.evaluate('kuzushiji.last.top')
            assert counts == [f"learned from {kanji_cfg['counts'][i]:,} image{'s' * (kanji_cfg['counts'][i] != 1)}"
                              for i in top]
            assert [rows.nth(k).locator('canvas').count() for k in range(5)] == [kanji_cfg['examples']['shown'][i] for i in top]
            b.close()
    finally:
        srv.shutdown(); srv.server_close()


@needs_chromium
def test_a_reload_with_the_server_stopped_still_reads(site):
    "The service worker keeps the page, the runtime and the kana model at once, and the kanji model once used."
    from playwright.sync_api import sync_playwright
    srv, url = serve(site)
    try:
        with sync_playwright() as p:
            b = Browser(p, url).open()
            assert b.page.evaluate('kuzushiji.offline') is True  # registered, and the first visit's files kept
            b.choose('kanji'); b.choose('kana')  # kanji once used: kept too
            srv.shutdown(); srv.server_close()
            b.page.reload()
            b.page.wait_for_function('window.kuzushiji && window.kuzushiji.ready', timeout=60_000)
            assert b.stroke([(0.2, 0.2), (0.8, 0.5), (0.2, 0.8)])['top']
            assert b.choose('kanji')['mode'] == 'kanji'
            assert b.stroke([(0.1, 0.3), (0.9, 0.3)])['top']
            b.page.screenshot(path=SHOTS / '8-offline-reload.png')
            build = re.search(r"const BUILD = '(\w+)';", (site / 'sw.js').read_text())[1]
            assert b.page.evaluate('caches.keys()') == [f'kuzushiji-{build}']  # one cache, named by the build
            b.close()
    finally:
        srv.shutdown(); srv.server_close()


@needs_chromium
def test_on_a_phone_the_answer_is_on_screen_and_the_page_is_accessible(site):
    """At 390x844 the pad, the answer and the top 3 are on screen without scrolling; a swipe that starts outside the
    pad scrolls the page; the pad and the model's input have a role and a label; every control works from the
    keyboard; the page can be installed (a manifest with icons and a service worker)."""
    from playwright.sync_api import sync_playwright
    srv, url = serve(site)
    try:
        with sync_playwright() as p:
            b = Browser(p, url, viewport=(390, 844), touch=True).open()
            page = b.page
            page.screenshot(path=SHOTS / 'phone-1-ready.png')
            last = b.stroke([(0.2, 0.2), (0.8, 0.2), (0.8, 0.8), (0.2, 0.8), (0.5, 0.05), (0.5, 0.95)], 'touch')
            assert last['top'] and page.evaluate('scrollY') == 0  # drawing does not scroll
            page.screenshot(path=SHOTS / 'phone-2-read.png')
            for sel in ('#pad', '#message', '#answers li:nth-child(3)'):
                box = page.locator(sel).bounding_box()
                assert box['y'] >= 0 and box['y'] + box['height'] <= 844, (sel, box)
            msg = page.locator('#message').bounding_box()  # a swipe up from the message scrolls
            b.swipe([(msg['x'] + 20, msg['y'] + 10 - k * 30) for k in range(8)])
            page.wait_for_function('scrollY > 50', timeout=5_000)
            page.evaluate('scrollTo(0, 0)')
            b.choose('kanji')
            b.stroke([(0.1, 0.2), (0.9, 0.2), (0.3, 0.05), (0.3, 0.95)], 'touch')
            page.screenshot(path=SHOTS / 'phone-3-kanji.png')
            for sel in ('#pad', '#message', '#answers li:nth-child(3)'):
                box = page.locator(sel).bounding_box()
                assert box['y'] + box['height'] <= 844, (sel, box)
            # accessibility: roles and labels, and the keyboard
            assert page.get_attribute('#pad', 'role') == 'img' and 'draw one character' in page.get_attribute('#pad', 'aria-label')
            assert page.get_attribute('#seen', 'role') == 'img' and page.get_attribute('#seen', 'aria-label')
            assert page.get_attribute('.answer', 'aria-live') == 'polite'
            page.focus('input[name=mode][value=kanji]')
            n = page.evaluate('kuzushiji.readings')
            page.keyboard.press('ArrowLeft')  # radio buttons: the arrow keys choose
            assert b.wait_reading(n)['mode'] == 'kana'
            page.focus('#clear'); page.keyboard.press('Enter')
            assert page.inner_text('#message').startswith('Cleared')
            page.focus('#photo')  # the file input itself takes the focus (the label only shows it)
            assert page.evaluate('document.activeElement.id') == 'photo'
            with page.expect_file_chooser() as chooser:
                page.keyboard.press('Space')
            chooser.value.set_files(files=[{'name': 'p.jpg', 'mimeType': 'image/jpeg',
                                            'buffer': h.as_photo(synthetic_chars(1, seed=2)[0][0])}])
            page.wait_for_function("document.querySelector('#message').innerText.match(/^(Read as|Not sure)/)")
            # installable: Chromium finds nothing missing but a profile of its own (a test's context is incognito)
            errors = b.cdp.send('Page.getInstallabilityErrors')['installabilityErrors']
            assert [e['errorId'] for e in errors] in ([], ['in-incognito']), errors
            manifest = b.cdp.send('Page.getAppManifest')
            assert manifest['errors'] == [] and manifest['url'] == url + 'manifest.webmanifest'
            b.close()
    finally:
        srv.shutdown(); srv.server_close()
