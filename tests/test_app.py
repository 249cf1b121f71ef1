"""The app and the command lines: the HTTP API through gradio_client, predict.py on good and bad files, train.py
--model then app.py and predict.py, and the page in a real browser (Debian's Chromium driven by Playwright, every
request that is not for 127.0.0.1 blocked). Screenshots of each state go to $APP_SHOTS (default /tmp/app-shots)."""
import base64, io, json, os, re, socket, subprocess, sys, time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

import helpers as h
import helpers.app  # noqa: F401  (the web app; loads Gradio)
from conftest import ROOT, write_kmnist
from test_inference import CHARS, as_drawing, synthetic_chars

CHROMIUM = '/usr/bin/chromium'
SHOTS = Path(os.environ.get('APP_SHOTS', '/tmp/app-shots'))


def free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0)); return s.getsockname()[1]


@pytest.fixture(scope='module')
def models(tmp_path_factory):
    "A KMNIST model trained for seconds on synthetic characters, and an untrained calligraphy ResNet18 (64 px)."
    from fastai.vision.all import Learner, resnet18, vision_learner
    tmp = tmp_path_factory.mktemp('models')
    x, y = synthetic_chars(600, seed=3)
    h.set_seed(0)
    learn = Learner(h.kmnist_dls((x, y), CHARS, bs=32, device='cpu'), h.kmnist_cnn(10))
    with learn.no_bar(), learn.no_logging(): learn.fit_one_cycle(3, 1e-2)
    for c in h.CALLIGRAPHY_CLASSES:
        (tmp / 'photos' / c).mkdir(parents=True)
        for j in range(3): Image.new('RGB', (90, 80), (60 * j, 90, 30)).save(tmp / 'photos' / c / f'{j}.jpg')
    callig = vision_learner(h.calligraphy_dls(tmp / 'photos', size=64, bs=4, device='cpu'), resnet18, pretrained=False)
    return (h.export(learn, tmp / 'kmnist.pkl'), h.export(callig, tmp / 'calligraphy.pkl'), synthetic_chars(20, seed=9),
            (x, y))


@pytest.fixture(scope='module')
def app(models):
    "The app in this process, on 127.0.0.1 at a free port, closed at the end."
    km, cal, _, train = models
    demo = h.app.build_app(h.load_model(km), h.load_model(cal, 'calligraphy'),
                           examples=h.app.training_examples(CHARS, train))  # what the model was trained on
    port = free_port()
    h.app.launch(demo, port=port, block=False)
    yield f'http://127.0.0.1:{port}/'
    demo.close()


def drawing_file(a, path, size=300, pos=(40, 60)):
    as_drawing(a, size, pos, mode='RGBA').save(path)
    return str(path)


def test_api_reads_a_drawing_as_the_model_does(app, models, tmp_path):
    from gradio_client import Client, handle_file
    km, _, (x, _), (xt, yt) = models
    learn = h.load_model(km)
    c = Client(app, verbose=False)
    for i in range(3):
        path = drawing_file(x[i], tmp_path / f'd{i}.png', size=120 + 90 * i, pos=(30 * i, 200 - 60 * i))
        label, seen, msg, gallery = c.predict({'background': None, 'layers': [], 'composite': handle_file(path)},
                                              api_name='/read_drawing')
        want = h.predict(learn, path)[0]
        assert label['label'] == h.label_text(want[0]['label']) and len(label['confidences']) == 3
        assert label['confidences'][0]['confidence'] == pytest.approx(want[0]['probability'], abs=1e-4)
        assert (np.asarray(Image.open(seen).convert('L'))[::5, ::5] == h.kmnist_input(path)).all()  # 5x, square pixels
        assert msg.startswith('Read as')
        # beside the answer: N_EXAMPLES training images of each top class, in the order of the answer
        n, tops = h.app.N_EXAMPLES, [d['label'] for d in label['confidences']]
        rows = re.findall(r'class="examples-label"[^>]*>([^<]+)</span>(.*?)</div>', gallery)
        assert [r[0] for r in rows] == tops, gallery[:300]
        for (name, imgs), top in zip(rows, tops):
            shown = [np.asarray(Image.open(io.BytesIO(base64.b64decode(b)))) for b in re.findall(r'base64,([^"]+)"', imgs)]
            cls = CHARS.index(name.split()[0])
            assert len(shown) == n and all(any((s == t).all() for t in xt[yt == cls]) for s in shown), \
                f'{name}: not {n} training images of the class it names'


def test_without_training_images_the_app_says_so_in_one_line(tmp_path, capsys):
    assert h.app.training_examples(CHARS, tmp_path / 'nothing-here') is None
    out = capsys.readouterr().out.strip()
    assert len(out.splitlines()) == 1 and 'download_data.py --dataset kmnist' in out
    assert h.app.example_html(None, [{'label': 'は', 'probability': 0.9}]) == ''


def test_api_empty_canvas_and_bad_upload_get_a_message(app, tmp_path):
    from gradio_client import Client, handle_file
    c = Client(app, verbose=False)
    Image.new('RGBA', (400, 400), (0, 0, 0, 0)).save(tmp_path / 'empty.png')
    label, seen, msg, gallery = c.predict({'background': None, 'layers': [], 'composite': handle_file(str(tmp_path / 'empty.png'))},
                                          api_name='/read_drawing')
    assert label is None or not label.get('confidences') and seen is None and 'Nothing to read' in msg and not gallery
    label, msg = c.predict(handle_file(str(tmp_path / 'empty.png')), api_name='/read_photo')
    assert label['label'] in [h.label_text(s) for s in h.CALLIGRAPHY_CLASSES]  # any picture is some style
    assert 'probability' in msg


def test_api_reads_a_photo_of_a_character_as_predict_does(app, models, tmp_path):
    "A photo (grey paper, margins, a turn, grain, blur, JPEG) gets the drawing's preparation; no ink gets a sentence."
    from gradio_client import Client, handle_file
    km, _, (x, y), _ = models
    learn, c = h.load_model(km), Client(app, verbose=False)
    rng = np.random.default_rng(2)
    for i in range(3):
        (tmp_path / f'p{i}.jpg').write_bytes(h.as_photo(x[i], rng))
        label, seen, msg, gallery = c.predict(handle_file(str(tmp_path / f'p{i}.jpg')), api_name='/read_char_photo')
        want = h.predict(learn, tmp_path / f'p{i}.jpg')[0]
        assert label['label'] == h.label_text(want[0]['label']) and msg.startswith('Read as'), msg
        assert label['confidences'][0]['confidence'] == pytest.approx(want[0]['probability'], abs=1e-4)
        assert 'examples-row' in gallery
    Image.new('RGB', (300, 200), (200, 200, 190)).save(tmp_path / 'blank.jpg')  # paper, no ink
    label, seen, msg, gallery = c.predict(handle_file(str(tmp_path / 'blank.jpg')), api_name='/read_char_photo')
    assert label is None or not label.get('confidences')
    assert msg == h.app.NO_INK and seen is None and not gallery


def run(script, *args, timeout=600, **kw):
    return subprocess.run([sys.executable, str(ROOT / 'scripts' / script), *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, **kw)


def test_predict_py_json_good_and_bad_files(models, tmp_path):
    km, _, (x, _), _ = models
    files = [drawing_file(x[0], tmp_path / 'a.png'), tmp_path / 'notes.txt', tmp_path / 'orig.png']
    (tmp_path / 'notes.txt').write_text('hello')
    Image.fromarray(x[1]).save(tmp_path / 'orig.png')
    r = run('predict.py', km, *files, '--top', '2', '--json')
    assert r.returncode == 1 and 'Traceback' not in r.stderr and 'notes.txt is not an image' in r.stderr
    out = json.loads(r.stdout)  # standard output is only JSON
    assert [o['file'] for o in out] == [str(f) for f in files]
    assert set(out[1]) == {'file', 'error'} and set(out[0]) == set(out[2]) == {'file', 'predictions'}
    for o in (out[0], out[2]):
        assert [set(p) for p in o['predictions']] == [{'label', 'probability'}] * 2 and o['predictions'][0]['label'] in CHARS
    ok = run('predict.py', km, files[0])
    assert ok.returncode == 0 and ok.stdout.startswith(f'{files[0]}: ') and ' (' in ok.stdout


def test_predict_py_without_a_model_names_the_command(tmp_path):
    r = run('predict.py', tmp_path / 'models' / 'kmnist.pkl', tmp_path / 'x.png', '--json')
    assert r.returncode != 0 and 'Traceback' not in r.stderr and 'scripts/train.py' in r.stderr and r.stdout == ''


def test_train_exports_a_model_that_app_and_predict_load(tmp_path, models):
    from gradio_client import Client, handle_file
    write_kmnist(tmp_path / 'kmnist', n_train=200, n_test=50)
    env = {**os.environ, 'HOME': str(tmp_path), 'WANDB_MODE': 'offline', 'WANDB_DIR': str(tmp_path),
           'KUZUSHIJI_OUT': str(tmp_path / 'out')}
    r = run('train.py', '--dataset', 'kmnist', '--data', tmp_path / 'kmnist', '--preset', 'quick', '--wandb', 'off',
            '--out', tmp_path / 'r.json', env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    model = tmp_path / 'out' / 'models' / 'kmnist-quick.pkl'  # the default: a quick check never replaces a real model
    assert model.is_file() and json.loads((tmp_path / 'r.json').read_text())['model'] == str(model)
    drawing = drawing_file(models[2][0][0], tmp_path / 'd.png')
    assert run('predict.py', model, drawing).returncode == 0
    port = free_port()
    p = subprocess.Popen([sys.executable, str(ROOT / 'scripts' / 'app.py'), '--kmnist', model, '--port', str(port)],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        lines = []
        for line in p.stdout:  # bounded: the app prints its URL, or exits
            lines.append(line)
            if 'http://127.0.0.1' in line or len(lines) > 200: break
        assert f'http://127.0.0.1:{port}' in ''.join(lines), ''.join(lines)
        label = Client(f'http://127.0.0.1:{port}/', verbose=False).predict(
            {'background': None, 'layers': [], 'composite': handle_file(drawing)}, api_name='/read_drawing')[0]
        assert label['label'].split()[0] in CHARS
    finally:
        p.terminate(); p.wait(30)


def test_app_py_with_a_missing_model_says_how_to_make_one(tmp_path):
    r = run('app.py', '--kmnist', tmp_path / 'nope.pkl', env={**os.environ, 'KUZUSHIJI_OUT': str(tmp_path)})
    assert r.returncode == 1 and 'No model at' in r.stderr and 'scripts/train.py' in r.stderr and 'Traceback' not in r.stderr


def test_the_page_brings_a_font_for_its_characters():
    "A few kilobytes of IPAexGothic with exactly the page's Japanese and Chinese characters, in front of Gradio's fonts."
    from fontTools.ttLib import TTFont
    import gradio as gr
    assert h.app.font_css('Read it (abc)') == ''  # no such characters: nothing to add
    css = h.app.font_css(''.join(CHARS) + ' (ha), 楷书 kaishu')
    font = TTFont(io.BytesIO(base64.b64decode(re.search(r'base64,([A-Za-z0-9+/=]+)', css)[1])))
    assert {chr(c) for c in font.getBestCmap() if c >= 0x2E80} == set(CHARS) | {'楷'}  # a Japanese font: no 书
    assert len(css) < 20_000 and 'U+306F' in css and 'U+6977;' in css and 'U+4E66' not in css
    theme = gr.themes.Default()._get_theme_css()  # the stacks it extends are Gradio's own
    assert all(f'--{var}: {fonts};' in theme for var, fonts in h.app.THEME_FONTS.items())
    names = {r.nameID: r.toUnicode() for r in font['name'].names}  # the IPA Font License: a derived font is renamed,
    assert names[1] == h.app.PAGE_FONT and 'IPA' not in names[1] + names[4] + names[6]  # and keeps the copyright
    assert 'IPA' in names[0] and 'licenses/IPA' in names[14], names


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason='needs Debian chromium (.ci/run installs it)')
def test_the_page_in_a_real_browser(app, models, tmp_path):
    from playwright.sync_api import sync_playwright
    SHOTS.mkdir(parents=True, exist_ok=True)
    outside = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=[
            '--no-sandbox', '--disable-background-networking', '--disable-component-update'])
        page = browser.new_page(viewport={'width': 1200, 'height': 950})
        def only_local(route):
            u = route.request.url
            if u.startswith(app) or u.startswith(('data:', 'blob:')): route.continue_()
            else: outside.append(u); route.abort()
        page.route('**/*', only_local)
        page.goto(app); page.wait_for_selector('#drawing canvas')
        page.wait_for_function("document.querySelector('#drawing button[aria-label=\"Brush\"]')?.classList"
                               ".contains('highlight')", timeout=20_000)  # the brush is in hand from the start
        page.screenshot(path=SHOTS / '1-start.png')
        def draw(pts):
            "A stroke through `pts`, given as fractions of the drawing area (the square in the canvas's middle)."
            box = page.locator('#drawing canvas').first.bounding_box()
            side = 0.7 * min(box['width'], box['height'])
            at = lambda fx, fy: (box['x'] + (box['width'] - side) / 2 + fx * side, box['y'] + (box['height'] - side) / 2 + fy * side)
            page.mouse.move(*at(*pts[0])); page.mouse.down()
            for p in pts[1:]: page.mouse.move(*at(*p), steps=8)
            page.mouse.up()
        draw([(0.2, 0.2), (0.8, 0.2), (0.8, 0.8), (0.2, 0.8), (0.2, 0.2)])  # a big character: a box...
        draw([(0.5, 0.05), (0.5, 0.95)])  # ...with a stroke through it
        page.screenshot(path=SHOTS / '2-drawn.png')
        page.click('#drawing-read')
        page.wait_for_function("document.querySelector('#drawing-message').innerText.startsWith('Read as')", timeout=30_000)
        label = page.inner_text('#drawing-label')
        assert any(f'{c} ({h.ROMAJI[c]})' in label for c in CHARS), label
        page.wait_for_function(f"document.querySelectorAll('#drawing-examples img').length == {3 * h.app.N_EXAMPLES}",
                               timeout=20_000)  # the training images of the top 3, beside the answer
        page.screenshot(path=SHOTS / '3-read.png')
        # Its characters are drawn in the page's own font (`font_css`), not left to the computer's fonts, which may
        # have no Japanese (then a browser draws boxes)
        faces = page.evaluate(f"document.fonts.load(\"20px '{h.app.PAGE_FONT}'\", '{''.join(CHARS)}')"
                              ".then(fs => fs.map(f => f.family + ' ' + f.status))")
        assert faces == [f'"{h.app.PAGE_FONT}" loaded'] or faces == [f'{h.app.PAGE_FONT} loaded'], faces
        for where in ('#drawing-label', '#drawing-message'):
            family = page.evaluate(f"getComputedStyle(document.querySelector('{where} *') || "
                                   f"document.querySelector('{where}')).fontFamily")
            assert family.strip('"\'').startswith(h.app.PAGE_FONT), (where, family)
        page.click('#drawing-clear')
        page.wait_for_function("document.querySelector('#drawing-message').innerText.startsWith('Nothing to read')")
        page.wait_for_function("document.querySelector('#drawing button[aria-label=\"Brush\"]').classList"
                               ".contains('highlight')", timeout=20_000)  # Clear puts the brush down; it is taken again
        page.screenshot(path=SHOTS / '4-cleared.png')
        draw([(0.1, 0.5), (0.9, 0.5)])  # after Clear, one flat stroke: the model must see it alone
        page.click('#drawing-read')
        page.wait_for_function("document.querySelector('#drawing-message').innerText.startsWith('Read as')", timeout=30_000)
        seen = page.request.get(page.locator('#drawing-seen img').get_attribute('src')).body()
        rows = (np.asarray(Image.open(io.BytesIO(seen)).convert('L'))[::5, ::5] > 128).any(1)
        assert rows.sum() <= 10, f'the old drawing came back after Clear: ink on {rows.sum()} of 28 rows'
        page.screenshot(path=SHOTS / '5-after-clear.png')
        page.click('#drawing-clear')
        page.wait_for_function("document.querySelector('#drawing-message').innerText.startsWith('Nothing to read')")
        page.click('#drawing-read')  # an empty canvas: a message, no prediction
        page.wait_for_timeout(1500)
        assert page.inner_text('#drawing-message').startswith('Nothing to read')
        # a photo of one character, read with the same preparation as a drawing
        (tmp_path / 'char.jpg').write_bytes(h.as_photo(models[2][0][0], np.random.default_rng(4)))
        page.locator('#drawing-photo input[type=file]').set_input_files(str(tmp_path / 'char.jpg'))
        page.wait_for_selector('#drawing-photo img')
        page.click('#drawing-photo-read')
        want = h.predict(h.load_model(models[0]), tmp_path / 'char.jpg')[0][0]
        page.wait_for_function("document.querySelector('#drawing-message').innerText.startsWith('Read as "
                               f"{h.label_text(want['label'])}')", timeout=30_000)
        page.screenshot(path=SHOTS / '5b-char-photo.png')
        page.get_by_role('tab', name='Upload calligraphy').click()
        photo = tmp_path / 'photo.png'  # synthetic: never a file from the real data set
        im = Image.new('RGB', (320, 240), (235, 225, 200)); ImageDraw.Draw(im).rectangle([100, 60, 220, 180], fill='black')
        im.save(photo)
        page.locator('#photo input[type=file]').set_input_files(str(photo))
        page.wait_for_selector('#photo img')
        page.click('#photo-read')
        page.wait_for_function("document.querySelector('#photo-message').innerText.startsWith('Read as')", timeout=30_000)
        assert any(s in page.inner_text('#photo-label') for s in h.CALLIGRAPHY_CLASSES)
        page.screenshot(path=SHOTS / '6-photo.png')
        browser.close()
    assert outside == [], f'the page asked for something outside this computer: {outside}'
