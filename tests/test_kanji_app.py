"""Kuzushiji-Kanji at work: train.py --dataset kkanji exports a model that carries its long-tail method and reject
threshold; predict.py and the app read kanji with it (labels are the characters), and the app's kanji tab works in a
real browser. A small long-tailed set made here, the quick preset."""
import base64, io, json, re, subprocess, sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ROOT, synthetic_kanji_image, write_kanji
from PIL import Image

import helpers as h
import helpers.app  # noqa: F401  (the web app; loads Gradio)
from test_app import CHROMIUM, SHOTS, free_port


@pytest.fixture(scope='module')
def kanji_data(tmp_path_factory):
    root = tmp_path_factory.mktemp('kkanji')
    write_kanji(root)
    return root


@pytest.fixture(scope='module')
def kanji_model(kanji_data, tmp_path_factory):
    "train.py --dataset kkanji --preset quick, as a learner would run it: the exported model and its results."
    out = tmp_path_factory.mktemp('out')
    r = subprocess.run([sys.executable, str(ROOT / 'scripts' / 'train.py'), '--dataset', 'kkanji', '--preset', 'quick',
                        '--data', str(kanji_data), '--out', str(out / 'res.json'), '--model', str(out / 'kkanji.pkl')],
                       capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    return out / 'kkanji.pkl', json.loads((out / 'res.json').read_text()), r.stdout


def drawing(c, size=260, pos=(60, 80)):
    "Class `c`'s synthetic character drawn as the sketchpad sends it: black ink on a transparent 400x400 canvas."
    return h.as_drawing(synthetic_kanji_image(c, np.random.default_rng(c)), size, pos)


def test_train_py_reports_the_long_tail_and_exports_the_method(kanji_model):
    path, res, out = kanji_model
    assert 'test, plain:' in out and 'test, crt:' in out and 'by bucket:' in out and 'Traceback' not in out
    assert len(out.splitlines()) < 20, out  # piped: one line per epoch, not every update of a progress bar
    for key in ('valid', 'valid_method', 'test', 'test_method', 'rare', 'rare_method'):
        assert {'top1', 'top5', 'balanced', 'many', 'medium', 'few'} <= set(res[key]), key
    assert res['test']['n_images'] == res['n_test'] and res['method'] == 'crt'
    learn = h.load_model(path)
    assert learn.kind == 'kkanji' and h.input_size(learn) == 32 and learn.long_tail['method'] == 'crt'
    assert len(learn.long_tail['counts']) == len(learn.dls.vocab) and 0 < learn.long_tail['reject_below'] <= 1
    assert isinstance(learn.model[-1], torch.nn.Linear)  # cRT: the retrained layer replaced the network's own


def test_an_exported_logit_adjustment_is_in_the_probabilities(kanji_data, tmp_path):
    "With logit adjustment, the exported model's probabilities are the plain network's with tau x log(prior) taken out."
    cfg = h.make_config('kkanji', 'quick', method='logit-adjust', taus=(1.0,), crt_epochs=None)
    res, learn = h.run_kanji(cfg, kanji_data, log=lambda s: None, test=False)
    learn = h.load_model(h.export(learn, tmp_path / 'la.pkl'))
    net, adjust = learn.model[0], learn.model[-1]
    assert isinstance(adjust, h.LogitAdjust) and adjust.tau == 1.0
    x = [h.char_input(drawing(c), 32) for c in (0, 5, 30)]
    probs = h.probabilities(learn, x)
    with torch.no_grad():
        xb = learn.dls.test_dl(x).one_batch()[0]
        want = (net(xb) - torch.log(torch.tensor(learn.long_tail['counts'], dtype=torch.float).clamp(min=0.5)
                                    / sum(learn.long_tail['counts']))).softmax(1).numpy()
    assert np.allclose(probs, want, atol=1e-5)


def test_predict_py_gives_characters_as_labels_and_says_when_it_is_not_sure(kanji_model, tmp_path):
    path, _, _ = kanji_model
    files = []
    for c in (0, 12, 35):
        drawing(c).save(tmp_path / f'k{c}.png'); files.append(str(tmp_path / f'k{c}.png'))
    r = subprocess.run([sys.executable, str(ROOT / 'scripts' / 'predict.py'), str(path), *files, '--top', '5', '--json'],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    vocab = [chr(0x4E00 + i) for i in range(35)] + [chr(0x29780)]
    for o in out:
        assert len(o['predictions']) == 5 and all(p['label'] in vocab for p in o['predictions']), o
        assert isinstance(o['sure'], bool) and o['sure'] == (o['predictions'][0]['probability'] >=
                                                             h.load_model(path).long_tail['reject_below'])
    text = subprocess.run([sys.executable, str(ROOT / 'scripts' / 'predict.py'), str(path), files[0], '--top', '36'],
                          capture_output=True, text=True, timeout=300).stdout
    assert 'U+29780' in text and chr(0x29780) not in text  # no glyph in the series' font: its code point instead


@pytest.fixture(scope='module')
def kanji_app(kanji_model, kanji_data):
    path, _, _ = kanji_model
    learn = h.load_model(path)
    demo = h.app.build_app(kkanji=learn, kanji_examples_=h.app.kanji_examples(list(map(str, learn.dls.vocab)), kanji_data))
    port = free_port()
    h.app.launch(demo, port=port, block=False)
    yield f'http://127.0.0.1:{port}/', learn
    demo.close()


def test_the_kanji_api_reads_with_counts_and_examples(kanji_app, kanji_data, tmp_path):
    from gradio_client import Client, handle_file
    url, learn = kanji_app
    drawing(7).save(tmp_path / 'd.png')
    label, seen, msg, gallery = Client(url, verbose=False).predict(
        {'background': None, 'layers': [], 'composite': handle_file(str(tmp_path / 'd.png'))}, api_name='/read_kanji')
    want = h.predict(learn, tmp_path / 'd.png', 5)[0]
    assert [c['label'] for c in label['confidences']] == [h.label_text(p['label']) for p in want]
    assert label['confidences'][0]['confidence'] == pytest.approx(want[0]['probability'], abs=1e-4)
    assert np.asarray(Image.open(seen)).shape[:2] == (160, 160)  # the 32x32 input, 5x
    sure = want[0]['probability'] >= learn.long_tail['reject_below']
    assert msg.startswith('Read as' if sure else '**Not sure.**'), msg
    counts = dict(zip(map(str, learn.dls.vocab), learn.long_tail['counts']))
    rows = re.findall(r'class="examples-label"[^>]*>([^<]+)</span><span class="examples-count"[^>]*>learned from '
                      r'([\d,]+) images?</span>(.*?)</div>', gallery)
    assert [r[0] for r in rows] == [h.label_text(p['label']) for p in want], gallery[:400]
    for (name, n, imgs), p in zip(rows, want):
        assert int(n.replace(',', '')) == counts[p['label']]
        shown = re.findall(r'base64,([^"]+)"', imgs)
        assert len(shown) == min(h.app.N_KANJI_EXAMPLES, counts[p['label']])  # a class with one image shows one


def test_the_kanji_tab_reads_a_photo(kanji_app, tmp_path):
    "A photo of one kanji (grey paper, a turn, grain, blur, JPEG) gets the drawing's preparation, and the same answer."
    from gradio_client import Client, handle_file
    url, learn = kanji_app
    (tmp_path / 'k.jpg').write_bytes(h.as_photo(synthetic_kanji_image(7, np.random.default_rng(7)), np.random.default_rng(1)))
    label, seen, msg, gallery = Client(url, verbose=False).predict(handle_file(str(tmp_path / 'k.jpg')),
                                                                   api_name='/read_kanji_photo')
    want = h.predict(learn, tmp_path / 'k.jpg', 5)[0]
    assert [c['label'] for c in label['confidences']] == [h.label_text(p['label']) for p in want]
    assert msg.startswith(('Read as', '**Not sure.**')) and 'learned from' in gallery


def test_the_kanji_api_says_not_sure_below_the_threshold(kanji_app, tmp_path):
    _, learn = kanji_app
    drawing(3).save(tmp_path / 'd.png')
    keep = learn.long_tail['reject_below']
    try:
        learn.long_tail['reject_below'] = 1.01  # no answer is that sure
        msg = h.app.read_kanji(learn, str(tmp_path / 'd.png'))[2]
        assert msg.startswith('**Not sure.** Its best guess is') and 'below the 1.01' in msg, msg
        learn.long_tail['reject_below'] = 0.0  # every answer is
        assert h.app.read_kanji(learn, str(tmp_path / 'd.png'))[2].startswith('Read as')
    finally: learn.long_tail['reject_below'] = keep


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason='needs Debian chromium (.ci/run installs it)')
def test_the_kanji_tab_in_a_real_browser(kanji_app):
    from playwright.sync_api import sync_playwright
    url, learn = kanji_app
    SHOTS.mkdir(parents=True, exist_ok=True)
    outside = []
    keep = learn.long_tail['reject_below']
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=[
            '--no-sandbox', '--disable-background-networking', '--disable-component-update'])
        page = browser.new_page(viewport={'width': 1200, 'height': 1100})
        def only_local(route):
            u = route.request.url
            if u.startswith(url) or u.startswith(('data:', 'blob:')): route.continue_()
            else: outside.append(u); route.abort()
        page.route('**/*', only_local)
        page.goto(url); page.wait_for_selector('#kanji-drawing canvas')
        page.wait_for_function("document.querySelector('#kanji-drawing button[aria-label=\"Brush\"]')?.classList"
                               ".contains('highlight')", timeout=20_000)
        def draw(pts):
            box = page.locator('#kanji-drawing canvas').first.bounding_box()
            side = 0.7 * min(box['width'], box['height'])
            at = lambda fx, fy: (box['x'] + (box['width'] - side) / 2 + fx * side, box['y'] + (box['height'] - side) / 2 + fy * side)
            page.mouse.move(*at(*pts[0])); page.mouse.down()
            for q in pts[1:]: page.mouse.move(*at(*q), steps=8)
            page.mouse.up()
        def read(expect):
            page.click('#kanji-read')
            page.wait_for_function(f"document.querySelector('#kanji-message').innerText.startsWith('{expect}')",
                                   timeout=30_000)
        # class 0's shape: a bar across near the top, a bar down near the left
        draw([(0.05, 0.2), (0.95, 0.2)]); draw([(0.25, 0.05), (0.25, 0.95)])
        learn.long_tail['reject_below'] = 0.0
        read('Read as')
        assert len(page.inner_text('#kanji-label').strip()) > 0
        page.wait_for_function("document.querySelectorAll('#kanji-examples .examples-row').length == 5", timeout=20_000)
        counts = page.eval_on_selector_all('#kanji-examples .examples-count', 'els => els.map(e => e.innerText)')
        assert len(counts) == 5 and all(re.fullmatch(r'learned from [\d,]+ images?', c) for c in counts), counts
        assert page.locator('#kanji-examples img').count() >= 5
        page.screenshot(path=SHOTS / 'kanji-1-read.png')
        learn.long_tail['reject_below'] = 1.01
        read('Not sure.')
        page.screenshot(path=SHOTS / 'kanji-2-not-sure.png')
        page.click('#kanji-clear')
        page.wait_for_function("document.querySelector('#kanji-message').innerText.startsWith('Nothing to read')")
        browser.close()
    learn.long_tail['reject_below'] = keep
    assert outside == [], f'the page asked for something outside this computer: {outside}'


def test_the_cpu_preset_trains_on_every_image_with_the_checked_threshold(kanji_data, tmp_path):
    "--preset cpu's recipe (here tiny): every image trained on, the held-out run's threshold, no test score claimed."
    cfg = h.make_config('kkanji', 'cpu', epochs=1, bs=32, crt_epochs=2, reject_below=0.37)
    said = []
    res, learn = h.run_kanji(cfg, kanji_data, log=said.append)
    assert res['n_train'] == 913 and res['test'] is None and res['valid'] is None and res['trained_on'] == 'every image'
    assert learn.long_tail['reject_below'] == 0.37 and sum(learn.long_tail['counts']) == 913
    assert any('no held-out score' in s or 'nothing is held out' in s for s in said), said


@pytest.mark.parametrize('batch_s, want', [(1e-4, 3), (5.0, 1), (None, 3)])
def test_a_budget_sizes_the_epochs_by_the_measured_speed(kanji_data, monkeypatch, batch_s, want):
    """With a time budget the preset trains as many of its epochs as fit here, measured, and says so: all of them on a
    fast machine, fewer on one made to look slow (each batch timed at 5 s), never more than the budget allows; without
    a budget, all of them."""
    cfg = h.make_config('kkanji', 'quick', epochs=3, crt_epochs=1, budget=None if batch_s is None else 60)
    if batch_s is not None: monkeypatch.setattr(h.kanji_training, 'batch_seconds', lambda learn: batch_s)
    said = []
    res, learn = h.run_kanji(cfg, kanji_data, log=said.append, test=False)
    assert res['epochs'] == want and len(learn.recorder.values) == want  # fastai's record: one row per epoch trained
    if batch_s is None: assert res['sized'] is None; return
    assert res['sized'] == dict(budget=60, batch_seconds=batch_s, epochs_max=3, epochs=want)
    line = next(s for s in said if s.startswith('time budget 60 s'))
    assert ('all 3 epochs fit' in line) == (want == 3) and ('1 of the recipe\'s 3 epochs fit' in line) == (want == 1), line


def test_the_batch_time_is_measured_on_a_copy_and_leaves_the_learner_alone(kanji_data):
    "Timing a batch trains a copy of the model and leaves the random generators as they were: a seed still repeats."
    cfg = h.make_config('kkanji', 'quick', epochs=1)
    d, dls = h.kanji_training.kanji_data(cfg, kanji_data, log=lambda s: None)
    h.set_seed(0); learn = h.kanji_training.kanji_learner(cfg, dls)
    weights = [p.detach().clone() for p in learn.model.parameters()]
    h.set_seed(5); expected = (np.random.rand(), torch.rand(1).item())
    h.set_seed(5); s = h.speed.batch_seconds(learn, n_batches=2, warmup=1)
    assert 0 < s < 60 and (np.random.rand(), torch.rand(1).item()) == expected
    assert all(torch.equal(a, b) for a, b in zip(weights, learn.model.parameters()))
    assert h.speed.epochs_within(100, 1.0, 10, 8, valid_s=5, margin=1.0) == 6 and h.speed.epochs_within(1, 1.0, 10, 8) == 1


def test_the_held_out_twin_trains_the_epochs_the_model_at_work_would(kanji_data, monkeypatch):
    "`size_as='all'` (cpu-check) sizes its epochs for every image, as `cpu` trains on, not for its smaller training part."
    monkeypatch.setattr(h.kanji_training, 'batch_seconds', lambda learn: 1.0)
    cfg = h.make_config('kkanji', 'quick', epochs=8, crt_epochs=1, bs=32)
    d, dls = h.kanji_training.kanji_data(cfg, kanji_data, log=lambda s: None)
    learn = h.kanji_training.kanji_learner(cfg, dls)
    n_all, n_own = len(d['y']), len(dls.train)
    valid_s = len(dls.valid_ds) / 32 * h.kanji_training.VALID_SHARE
    budget = 2.5 * (-(-n_all // 32) * 1.15 + valid_s)  # two and a half epochs of every image
    own, _ = h.kanji_training.sized_epochs(dict(cfg, budget=budget), learn, lambda s: None, n_all=n_all)
    twin, sized = h.kanji_training.sized_epochs(dict(cfg, budget=budget, size_as='all'), learn, lambda s: None, n_all=n_all)
    assert twin == 2 and own > twin and n_own < -(-n_all // 32), (own, twin)
    assert h.make_config('kkanji', 'cpu-check')['size_as'] == 'all' and 'size_as' not in h.make_config('kkanji', 'cpu')
    assert h.make_config('kkanji', 'cpu')['budget'] == h.make_config('kkanji', 'cpu-check')['budget']
