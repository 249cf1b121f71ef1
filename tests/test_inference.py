"""Inference helpers: every kind of input reaches the model looking like KMNIST; bad files and models get one sentence.

Fidelity is measured, not judged by eye: characters are rendered as drawings (black ink on white or on transparent,
scaled, placed anywhere on a bigger canvas) and must come back as the original 28x28 image, and a model must read
them as it reads the originals. Synthetic characters here; tools/benchmark_app.py --fidelity does the same with
1,000 real KMNIST test images."""
import io, subprocess, sys

import numpy as np
import pytest
from PIL import Image, ImageDraw

import helpers as h
from conftest import ROOT

CHARS = list('おきすつなはまやれを')


def synthetic_chars(n, seed=0):
    """KMNIST-like characters (28x28, white on black, the box filling the frame on its longer side): class c is a
    fixed set of three random strokes, each sample jittered. Returns (images, labels)."""
    rng = np.random.default_rng(seed)
    shapes = [np.random.default_rng(100 + c).uniform(8, 104, size=(3, 3, 2)) for c in range(10)]
    xs, ys = [], []
    for i in range(n):
        c = i % 10
        im = Image.new('L', (112, 112), 0)
        d = ImageDraw.Draw(im)
        for stroke in shapes[c] + rng.normal(0, 3, size=shapes[c].shape):
            d.line([tuple(p) for p in stroke], fill=255, width=12, joint='curve')
        xs.append(h.kmnist_input(255 - np.asarray(im))); ys.append(c)  # black on white in: the same rule as drawings
    return np.stack(xs), np.array(ys)


def as_drawing(a, size, pos, canvas=400, mode='L'):
    "A 28x28 white-on-black character as black ink on a white (or transparent) canvas, `size` px, at `pos`."
    ink = Image.fromarray(a).resize((size, size), Image.BILINEAR)
    if mode == 'RGBA':  # black strokes on a transparent canvas, as a sketchpad layer is
        c = Image.new('RGBA', (canvas, canvas), (0, 0, 0, 0))
        c.paste(Image.new('RGBA', (size, size), (0, 0, 0, 255)), pos, ink)
        return c
    c = Image.new('L', (canvas, canvas), 255)
    c.paste(Image.fromarray(255 - np.asarray(ink)), pos)
    return c.convert(mode)


@pytest.fixture(scope='module')
def chars():
    return synthetic_chars(200)


def test_kmnist_originals_pass_through_unchanged(chars):
    x, _ = chars
    for a in x[:20]: assert (h.kmnist_input(a) == a).all()
    assert h.is_kmnist_image(x[0]) and not h.is_kmnist_image(255 - x[0])


def test_a_drawing_anywhere_on_the_canvas_becomes_the_original(chars):
    x, _ = chars
    rng = np.random.default_rng(1)
    diffs = []
    for a in x[:60]:
        size = int(rng.integers(40, 390))
        pos = tuple(int(v) for v in rng.integers(0, 400 - size + 1, size=2))
        out = h.kmnist_input(as_drawing(a, size, pos))
        assert out.shape == (28, 28) and out.dtype == np.uint8 and out.max() == 255
        diffs.append(np.abs(out.astype(float) - a).mean())
    assert np.median(diffs) < 12, diffs  # out of 255; shifting the character by one pixel gives about 40
    shifted = np.abs(np.roll(x[:60], 1, axis=2).astype(float) - x[:60]).mean()
    assert np.median(diffs) < shifted / 2


@pytest.mark.parametrize('mode', ['L', 'RGB', 'RGBA', 'P', 'LA', '1'])
def test_every_image_mode_reads_the_same(chars, mode):
    a = chars[0][3]
    want = h.kmnist_input(as_drawing(a, 200, (50, 120)))
    got = h.kmnist_input(as_drawing(a, 200, (50, 120), mode=mode if mode != 'LA' else 'L').convert(mode)
                         if mode != 'RGBA' else as_drawing(a, 200, (50, 120), mode='RGBA'))
    assert np.abs(got.astype(float) - want).mean() < (25 if mode == '1' else 4)  # '1' has no grey edges


def test_white_on_black_at_any_size_reads_like_black_on_white(chars):
    a = chars[0][5]
    dark = Image.fromarray(255 - np.asarray(as_drawing(a, 150, (10, 200))))
    assert np.abs(h.kmnist_input(dark).astype(float) - h.kmnist_input(as_drawing(a, 150, (10, 200)))).max() <= 1


def test_a_grey_photo_of_pencil_on_paper_reads_like_a_drawing(chars):
    a = chars[0][7]
    clean = np.asarray(as_drawing(a, 220, (90, 60)), dtype=float)
    photo = 170 + (clean / 255) * 60 + np.random.default_rng(0).normal(0, 3, clean.shape)  # grey paper, grey ink
    got = h.kmnist_input(np.clip(photo, 0, 255).astype(np.uint8))
    assert np.abs(got.astype(float) - h.kmnist_input(clean.astype(np.uint8))).mean() < 8


def test_exif_rotation_is_applied(chars):
    a = chars[0][1]
    upright = as_drawing(a, 200, (100, 100))
    stored = upright.transpose(Image.Transpose.ROTATE_90)  # a camera stores it turned and says so in EXIF
    exif = Image.Exif(); exif[0x0112] = 6  # orientation 6: rotate 90 degrees clockwise to view
    buf = io.BytesIO(); stored.convert('RGB').save(buf, 'JPEG', quality=95, exif=exif.tobytes())
    got, want = h.kmnist_input(buf.getvalue()), h.kmnist_input(upright)
    assert np.abs(got.astype(float) - want).mean() < 8
    assert np.abs(h.kmnist_input(stored).astype(float) - want).mean() > 20  # without EXIF it would be turned


@pytest.mark.parametrize('canvas', [
    Image.new('L', (400, 400), 255), Image.new('RGBA', (400, 400), (0, 0, 0, 0)), Image.new('RGB', (280, 280), 'white'),
    np.full((400, 400, 4), 0, np.uint8), Image.new('L', (28, 28), 0)])
def test_an_empty_canvas_has_no_prediction(canvas):
    with pytest.raises(h.NoInk, match='draw a character first'): h.kmnist_input(canvas)


def test_a_10000_pixel_jpeg_is_decoded_small(tmp_path):
    "Decoded at 1/8 scale by the JPEG decoder: it reads within 80 MB more memory, where a full decode needs 100 MB."
    big = tmp_path / 'big.jpg'
    im = Image.new('L', (10_000, 10_000), 255)
    ImageDraw.Draw(im).line([(2000, 2000), (8000, 8000)], fill=0, width=900)
    im.save(big, quality=80); del im
    code = ("import resource, sys; sys.path.insert(0, sys.argv[1]); import helpers.inference as i; from PIL import Image; "
            "vm = int(open('/proc/self/statm').read().split()[0]) * resource.getpagesize(); "
            "resource.setrlimit(resource.RLIMIT_AS, (vm + 80 * 2**20, resource.RLIM_INFINITY)); "  # 80 MB more at most
            "x = i.kmnist_input(sys.argv[2]); print(x.shape, x.max())\n"
            "try: Image.open(sys.argv[2]).load(); print('full decode fits')\n"
            "except MemoryError: print('full decode needs more')")
    r = subprocess.run([sys.executable, '-c', code, str(ROOT / 'scripts'), str(big)], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.split('\n')[:2] == ['(28, 28) 255', 'full decode needs more'], r.stdout  # the limit does bite


def test_a_huge_png_is_shrunk_and_a_bomb_is_refused(tmp_path):
    p = tmp_path / 'wide.png'
    Image.new('1', (10_000, 300), 1).save(p)
    im = h.read_image(p)
    assert max(im.size) <= 1024
    assert h.photo_input(p).size[1] <= 384
    bomb = tmp_path / 'bomb.png'
    Image.new('1', (30_000, 30_000), 1).save(bomb)  # 900 million pixels, a few kB on disk
    with pytest.raises(h.InputError, match='too large'): h.read_image(bomb)


def test_bad_files_get_one_sentence(tmp_path):
    good = io.BytesIO(); Image.new('L', (300, 300), 255).save(good, 'PNG')
    (tmp_path / 'cut.png').write_bytes(good.getvalue()[:len(good.getvalue()) // 2])
    (tmp_path / 'notes.txt').write_text('not a picture')
    (tmp_path / 'empty.jpg').write_bytes(b'')
    for name, words in [('cut.png', 'truncated'), ('notes.txt', 'not an image'), ('empty.jpg', 'not an image'),
                        ('missing.png', 'no such file'), ('.', 'no such file')]:
        with pytest.raises(h.InputError, match=words) as e: h.kmnist_input(tmp_path / name)
        assert '\n' not in str(e.value) and str(tmp_path / name) in str(e.value)


def test_photo_input_is_rgb_at_the_training_size(tmp_path):
    im = Image.new('RGBA', (1200, 900), (0, 0, 0, 0))
    ImageDraw.Draw(im).rectangle([300, 200, 900, 700], fill=(20, 20, 20, 255))
    out = h.photo_input(im)
    assert out.mode == 'RGB' and min(out.size) == 384 and out.getpixel((5, 5)) == (255, 255, 255)  # paper, not black
    assert im.size == (1200, 900)  # the caller's image is left alone
    assert h.photo_input(Image.new('P', (200, 100))).size == (200, 100)  # never enlarged


def test_labels_read_as_the_app_shows_them():
    assert h.label_text('お') == 'お (o)' and h.label_text('を') == 'を (wo)'
    assert h.label_text('kaishu') == '楷书 kaishu (regular script)'
    assert h.label_text('xiaozhuan') == '小篆 xiaozhuan (small seal script)'


def test_load_model_says_what_to_do(tmp_path):
    with pytest.raises(h.InputError, match=r'No model at .*scripts/train.py --dataset kmnist'):
        h.load_model(tmp_path / 'nope.pkl')
    with pytest.raises(h.InputError, match='scripts/train.py --dataset calligraphy'):
        h.load_model(tmp_path / 'nope.pkl', 'calligraphy')
    (tmp_path / 'junk.pkl').write_bytes(b'\x80\x04junk')
    with pytest.raises(h.InputError, match=r'not a model this series can load'):
        h.load_model(tmp_path / 'junk.pkl')


@pytest.fixture(scope='module')
def char_model(tmp_path_factory, chars):
    "A small CNN trained for a few seconds on the synthetic characters, exported and loaded back as the app does."
    from fastai.vision.all import Learner, accuracy
    x, y = synthetic_chars(600, seed=3)
    h.set_seed(0)
    dls = h.kmnist_dls((x, y), CHARS, bs=32, device='cpu')
    learn = Learner(dls, h.kmnist_cnn(10), metrics=accuracy)
    with learn.no_bar(), learn.no_logging(): learn.fit_one_cycle(3, 1e-2)
    return h.load_model(h.export(learn, tmp_path_factory.mktemp('m') / 'kmnist.pkl'))


def test_the_model_reads_drawings_as_it_reads_the_originals(char_model, chars):
    x, y = chars
    assert char_model.kind == 'kmnist'
    rng = np.random.default_rng(2)
    orig = h.probabilities(char_model, list(x)).argmax(1)
    drawn = []
    for a in x:
        size = int(rng.integers(60, 390))
        drawing = as_drawing(a, size, tuple(int(v) for v in rng.integers(0, 400 - size + 1, size=2)),
                             mode=rng.choice(['L', 'RGBA']))
        drawn.append(h.kmnist_input(drawing))
    pred = h.probabilities(char_model, drawn).argmax(1)
    assert (orig == y).mean() > 0.6, 'the model must have learned something for the comparison to mean anything'
    assert (pred == orig).mean() >= 0.9, (pred == orig).mean()


def test_probabilities_match_fastais_predict(char_model, chars):
    "Our batch path (test_dl + model) gives what learn.predict gives: the exported validation pipeline, nothing else."
    a = chars[0][0]
    _, _, want = char_model.predict(a)
    assert np.allclose(h.probabilities(char_model, [a])[0], want.numpy(), atol=1e-5)


def test_predict_files_keeps_order_and_reports_each_bad_file(char_model, chars, tmp_path):
    Image.fromarray(chars[0][0]).save(tmp_path / 'orig.png')
    as_drawing(chars[0][1], 300, (20, 40)).save(tmp_path / 'drawn.png')
    (tmp_path / 'bad.png').write_text('nope')
    out = h.predict_files(char_model, [tmp_path / 'orig.png', tmp_path / 'bad.png', tmp_path / 'drawn.png'], k=2)
    assert [o['file'] for o in out] == [str(tmp_path / n) for n in ('orig.png', 'bad.png', 'drawn.png')]
    assert 'error' in out[1] and 'predictions' not in out[1]
    for o in (out[0], out[2]):
        p = [q['probability'] for q in o['predictions']]
        assert len(p) == 2 and p[0] >= p[1] and all(q['label'] in CHARS for q in o['predictions'])
    preds, x = h.predict(char_model, chars[0][0], k=10)
    assert sum(q['probability'] for q in preds) == pytest.approx(1, abs=1e-4) and (x == chars[0][0]).all()
