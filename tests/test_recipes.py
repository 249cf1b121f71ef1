"""Notebook 07's recipe: the augmentations for brush strokes, stroke width and random erasing, scoring with TTA and
ensembles, and the best-cpu and best presets, whose stroke width, random erasing, mixup, label smoothing, test-time
augmentation and ensemble are checked to be in the pipeline or at work, not just named."""
import json, subprocess, sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from fastai.vision.all import Callback, Learner, MixUp, ResBlock, TensorImage, TensorImageBW, Transform

import helpers as h
from conftest import ROOT, synthetic_kmnist, write_kmnist

CHARS = list('おきすつなはまやれを')


def batch_of_one_image(n=16):
    (x, _), _ = synthetic_kmnist(1, 1)
    return TensorImage(torch.as_tensor(x[0]).float().div(255).expand(n, 1, 28, 28).clone())


def test_elastic_warp_bends_each_image_its_own_way():
    xb = batch_of_one_image()
    out = h.ElasticWarp(p=1., pixels=2.)(xb, split_idx=0)
    assert out.shape == xb.shape and isinstance(out, TensorImage)
    assert not torch.allclose(out[0], xb[0], atol=1e-3)  # bent
    assert not torch.allclose(out[0], out[1], atol=1e-3)  # and not like its neighbour: one field per image
    assert out.sum() == pytest.approx(xb.sum().item(), rel=0.15)  # the ink moves, it does not vanish
    assert torch.allclose(h.ElasticWarp(p=0.)(xb, split_idx=0), xb, atol=1e-5)  # p=0: untouched


def test_erase_strokes_erases_one_box_per_image_to_background():
    xb = TensorImage(torch.ones(64, 1, 28, 28))
    out = h.EraseStrokes(p=1., max_area=0.2)(xb, split_idx=0)
    erased = (out == 0).float().mean((1, 2, 3))
    assert ((erased >= 0.012) & (erased <= 0.25)).all(), erased  # 2% to 20% of the image, boxes rounded to pixels
    assert len({tuple(torch.nonzero(o[0] == 0)[0].tolist()) for o in out}) > 10  # boxes differ between images
    assert torch.equal(h.EraseStrokes(p=0.)(xb, split_idx=0), xb)


def test_stroke_width_thickens_or_thins_each_image_on_its_own():
    xb = TensorImageBW(torch.zeros(64, 1, 28, 28)); xb[:, :, 8:20, 12:15] = 1.  # a stroke 3 pixels wide in each image
    thick, thin = F.max_pool2d(xb, 3, 1, 1), -F.max_pool2d(-xb, 3, 1, 1)
    for amount in (1., 0.5):
        out = h.StrokeWidth(p=1., amount=amount)(xb, split_idx=0)
        assert type(out) is TensorImageBW  # still a grayscale image for fastai's show_batch
        ink, was = out.sum((1, 2, 3)), xb.sum((1, 2, 3))
        assert (ink > was + 1).sum() > 10 and (ink < was - 1).sum() > 10  # some thicker, some thinner, each its own
        assert ((out >= thin - 1e-6) & (out <= thick + 1e-6)).all()  # between the erosion and the dilation
        grown = (ink - was).abs().max() / (thick - xb).sum((1, 2, 3)).max()
        assert amount - 0.2 < grown <= amount + 1e-5  # by up to `amount` of the way: at most, and nearly
    assert torch.equal(h.StrokeWidth(p=0.)(xb, split_idx=0), xb)
    assert torch.equal(h.StrokeWidth(p=1.)(xb, split_idx=1), xb)  # validation and test batches: untouched
    with pytest.raises(ValueError, match='between 0 and 1'): h.StrokeWidth(amount=2.)


def test_stretch_makes_each_image_taller_and_narrower_or_shorter_and_wider():
    xb = TensorImageBW(torch.zeros(64, 1, 28, 28)); xb[:, :, 6:22, 10:18] = 1.  # a block 16 tall, 8 wide
    out = h.Stretch(max_stretch=0.15, p=1.)(xb, split_idx=0)
    assert type(out) is TensorImageBW and out.shape == xb.shape
    ink = out[:, 0] > 0.5
    tall, wide = ink.any(2).sum(1), ink.any(1).sum(1)
    assert (tall > 16).sum() > 10 and (tall < 16).sum() > 10  # some taller, some shorter: each image its own
    assert not ((tall > 16) & (wide > 8)).any() and not ((tall < 16) & (wide < 8)).any()  # taller: never wider
    assert (tall <= 16 * 1.15 + 1).all() and (tall >= 16 / 1.15 - 1).all()  # by at most 15%, give or take a pixel
    assert out.sum((1, 2, 3)) == pytest.approx(xb.sum((1, 2, 3)), rel=0.05)  # the area stays the same
    assert torch.allclose(h.Stretch(p=0.)(xb, split_idx=0), xb, atol=1e-5)
    assert torch.allclose(h.Stretch(p=1.)(xb, split_idx=1), xb, atol=1e-5)  # validation and test batches: untouched
    with pytest.raises(ValueError, match='between 0 and 1'): h.Stretch(p=1.5)


def test_stretch_joins_the_rotation_and_zoom_in_one_resampling(tmp_path):
    "`stretch=P` in a config: in the training pipeline, merged into fastai's affine transform (one interpolation)."
    write_kmnist(tmp_path / 'kmnist', n_train=100, n_test=20)
    for stretch in (0., 0.5):
        *_, dls = h.load_for(h.make_config('kmnist', 'best-cpu', quick=True, stretch=stretch), tmp_path / 'kmnist')
        affine = [t for t in dls.train.after_batch.fs if hasattr(t, 'aff_fs')]
        assert len(affine) == 1  # one resampling
        ps = [f.keywords['p'] for f in affine[0].aff_fs if f.func is h.recipes.stretch_mat]
        assert ps == ([stretch] if stretch else [])


def test_brush_augment_runs_on_training_batches_only_and_never_flips():
    (x, y), _ = synthetic_kmnist(256, 1)
    dls = h.kmnist_dls((x, y), CHARS, bs=64, device='cpu', augment=h.brush_augment())
    names = [type(t).__name__ for t in dls.train.after_batch.fs]
    assert 'ElasticWarp' in names and 'EraseStrokes' in names and 'Flip' not in names
    plain = h.kmnist_dls((x, y), CHARS, bs=64, device='cpu', augment=False)
    assert torch.allclose(dls.valid.one_batch()[0], plain.valid.one_batch()[0], atol=1e-4)  # validation: none
    tb, pb = dls.train.one_batch()[0], plain.train.one_batch()[0]
    assert tb.shape == pb.shape and not torch.equal(tb, pb)


def test_a_config_gets_the_augmentation_and_erasing_it_asks_for(tmp_path):
    "`augment='brush'`, `stroke=P` and `erase=P` each on its own: `make_config(..., augment='brush', stroke=0.5)`."
    write_kmnist(tmp_path / 'kmnist', n_train=100, n_test=20)
    for augment, stroke, erase in (('brush', 0., 0.), ('char', 0., 0.5), ('char', 0., 0.), ('brush', 0.5, 0.3),
                                   ('char', 0.5, 0.)):
        cfg = h.make_config('kmnist', 'cpu', quick=True, augment=augment, stroke=stroke, erase=erase)
        *_, dls = h.load_for(cfg, tmp_path / 'kmnist')
        names = [type(t).__name__ for t in dls.train.after_batch.fs]
        assert ('ElasticWarp' in names) == (augment == 'brush') and names.count('EraseStrokes') == (erase > 0), names
        assert names.count('StrokeWidth') == (stroke > 0), names
        assert all(t.p == erase for t in dls.train.after_batch.fs if isinstance(t, h.EraseStrokes))
        assert all(t.p == stroke for t in dls.train.after_batch.fs if isinstance(t, h.StrokeWidth))


def test_load_for_validates_on_the_images_it_is_given(tmp_path):
    "`valid_idx` (a test-like split) is the validation set; `n_train` then subsamples the rest, never those images."
    write_kmnist(tmp_path / 'kmnist', n_train=200, n_test=20)
    (x, y), _, _ = h.load_arrays(tmp_path / 'kmnist')
    idx = np.array([150, 3, 77, 10, 199])
    cfg = h.make_config('kmnist', 'cpu', quick=True, n_train=50)
    (xs, ys), _, _, dls = h.load_for(cfg, tmp_path / 'kmnist', valid_idx=idx)
    assert len(dls.valid_ds) == 5 and len(dls.train_ds) == 50 and len(xs) == 55
    assert np.array_equal(dls.valid_ds.x.numpy(), x[np.sort(idx)])
    assert np.array_equal(dls.valid_ds.y.numpy(), y[np.sort(idx)])
    chosen = {x[i].tobytes() for i in idx}
    assert not any(img.tobytes() in chosen for img in dls.train_ds.x.numpy())
    with pytest.raises(ValueError, match='index the 200 training images'):
        h.load_for(cfg, tmp_path / 'kmnist', valid_idx=np.array([-1, 5]))


def test_set_split_idx_switches_augmentation_on_and_back():
    (x, y), _ = synthetic_kmnist(64, 1)
    dls = h.kmnist_dls((x, y), CHARS, bs=16, device='cpu', augment=h.brush_augment())
    dl = dls.valid.new(shuffle=False)
    clean = dl.one_batch()[0]
    with dl.dataset.set_split_idx(0): augmented = dl.one_batch()[0]
    assert not torch.equal(clean, augmented) and torch.equal(dl.one_batch()[0], clean)
    assert dl.dataset.split_idx == 1


class Spy(Transform):
    "Counts the images it sees in training-time (augmented) batches."
    split_idx, order = 0, 50
    def __init__(self): self.seen = 0
    def encodes(self, x: TensorImage):
        self.seen += len(x)
        return x


@pytest.fixture(scope='module')
def trained():
    (x, y), test = synthetic_kmnist(400, 100)
    dls = h.kmnist_dls((x, y), CHARS, bs=32, device='cpu', augment=h.brush_augment() + [Spy()])
    learns = []
    for seed in (0, 1):
        h.set_seed(seed)
        learn = h.make_learner(dls, 'kmnist_cnn')
        with learn.no_bar(), learn.no_logging(): learn.fit_one_cycle(2, 1e-2)
        learns.append(learn)
    return learns, test


def test_score_matches_fastais_validate_and_averages_an_ensemble(trained):
    (a, b), test = trained
    assert h.score(a, a.dls.valid) == pytest.approx(a.validate()[1], abs=1e-6)
    pa, t = h.get_probs(a, a.dls.valid)
    pb, _ = h.get_probs(b, b.dls.valid)
    mean = ((pa + pb) / 2).argmax(1).eq(t).float().mean().item()
    assert h.score([a, b], a.dls.valid) == pytest.approx(mean)
    assert set(h.scores([a, b], test)) == {'valid', 'test'}


def test_tta_uses_the_training_augmentation(trained):
    (a, _), test = trained
    spy = next(t for t in a.dls.valid.after_batch.fs if isinstance(t, Spy))
    spy.seen = 0
    h.score(a, a.dls.valid)
    assert spy.seen == 0  # a plain pass: no augmentation
    with_tta = h.score(a, a.dls.valid, tta=True)
    assert spy.seen == 4 * len(a.dls.valid_ds) and 0 <= with_tta <= 1  # fastai's 4 augmented passes
    probs = [h.get_probs(a, a.dls.valid, tta=True)[0] for _ in range(2)]
    assert torch.equal(*probs)  # the same model scores the same each time it is asked
    assert not torch.equal(probs[0], h.get_probs(a, a.dls.valid, tta=True, seed=1)[0])


def test_hard_cases_are_confident_mistakes(trained):
    (a, _), test = trained
    idx, preds, confs = h.hard_cases(a, test, n=5)
    assert all(p != test[1][i] for i, p in zip(idx, preds)) and confs == sorted(confs, reverse=True)
    fig = h.plot_hard_cases(a, test, synthetic_kmnist(400, 1)[0], CHARS, n=3, k=2)
    assert len(fig.axes) == 3 * (2 * 2 + 2)


def test_mixing_callback():
    assert isinstance(h.mixing_callback('mixup'), MixUp) and h.mixing_callback(None) is None
    assert type(h.mixing_callback('cutmix')).__name__ == 'CutMix'
    with pytest.raises(ValueError, match='mixup'): h.mixing_callback('mixmatch')


class Probe(Callback):
    "Records, for each training batch, whether the inputs were changed by a mixing callback and which loss ran."
    order = -1  # before MixUp (order 0) ...
    def __init__(self): self.mixed, self.losses = [], []
    def before_batch(self):
        if self.training: self.raw = self.xb[0].clone()
    def after_loss(self):  # ... and, after the loss, what MixUp made of the batch
        if self.training:
            self.mixed.append(not torch.equal(self.xb[0].as_subclass(torch.Tensor), self.raw.as_subclass(torch.Tensor)))
            lf = self.learn.loss_func
            self.losses.append(getattr(getattr(lf, '__func__', None), '__qualname__', type(lf).__name__))


@pytest.mark.parametrize('preset', ['best', 'best-cpu', 'cpu', 'article', 'quick, an ensemble of 2',
                                    'quick, random erasing', 'quick, thicker or thinner strokes', 'quick, stretched',
                                    'quick, weight decay 0.1', 'quick, ranger'])
def test_presets_recipe_is_on_where_it_says_so(preset, tmp_path, monkeypatch):
    """Random erasing, stroke width, stretching, mixup, label smoothing, weight decay, the optimizer, TTA and an
    ensemble are seen at work in training and scoring exactly where the preset (or a config) names them."""
    write_kmnist(tmp_path / 'kmnist', n_train=300, n_test=60)
    cfg = h.make_config('kmnist', preset.split(',')[0], quick=True, wandb='off', pretrained=False,
                        ensemble=2 if 'ensemble' in preset else None, erase=0.5 if 'erasing' in preset else None,
                        stroke=0.5 if 'strokes' in preset else None, stretch=0.5 if 'stretched' in preset else None,
                        wd=0.1 if 'decay' in preset else None, opt='ranger' if 'ranger' in preset else None)
    # (no preset uses an ensemble or random erasing: notebook 07 left them out; a config may. best-cpu uses stroke
    # width, and the parametrisation checks it there)
    tta_calls = []
    orig_tta = Learner.tta
    monkeypatch.setattr(Learner, 'tta', lambda self, **kw: tta_calls.append(len(kw['dl'].dataset)) or orig_tta(self, **kw))
    probe = Probe()
    res, learn = h.run_training(cfg, tmp_path / 'kmnist', log=lambda s: None, cbs=[probe])
    assert probe.mixed  # training batches were seen
    if cfg.get('mix') == 'mixup':  # every training batch blended, and MixUp's loss at work
        assert all(probe.mixed) and set(probe.losses) == {'MixHandler.lf'}
    else:
        assert not any(probe.mixed) and 'MixHandler.lf' not in probe.losses
    confident = torch.full((len(CHARS),), -20.); confident[3] = 20.
    loss_on_sure_answer = learn.loss_func(confident[None], torch.tensor([3])).item()
    assert (loss_on_sure_answer > 0.05) == bool(cfg['label_smoothing'])  # smoothing: a sure right answer still costs
    erasers = [t for t in learn.dls.train.after_batch.fs if isinstance(t, h.EraseStrokes)]
    assert [t.p for t in erasers] == ([cfg['erase']] if cfg.get('erase') else [])  # in the training pipeline, or not
    widths = [t for t in learn.dls.train.after_batch.fs if isinstance(t, h.StrokeWidth)]
    assert [t.p for t in widths] == ([cfg['stroke']] if cfg.get('stroke') else [])
    stretches = [f.keywords['p'] for t in learn.dls.train.after_batch.fs for f in getattr(t, 'aff_fs', [])
                 if getattr(f, 'func', None) is h.recipes.stretch_mat]
    assert stretches == ([cfg['stretch']] if cfg.get('stretch') else [])
    assert learn.opt.hypers[0]['wd'] == (cfg.get('wd') or 0.01)  # the optimizer's weight decay: fastai's default or the config's
    assert type(learn.opt).__name__ == ('Lookahead' if cfg.get('opt') == 'ranger' else 'Optimizer')  # ranger, or Adam
    with pytest.raises(ValueError, match='opt must be one of adam, ranger'): h.learner_for({**cfg, 'opt': 'sgd'}, learn.dls)
    n = cfg.get('ensemble', 1)
    assert len(learn.members) == len(res['members']) == n and learn.members[0] is learn
    if n > 1:  # members alike but for their seeds: different weights, and the score is their average's
        w = [next(m.model.parameters()).detach() for m in learn.members]
        assert not torch.equal(w[0], w[1])
        assert res['without_tta']['valid'] == pytest.approx(h.score(learn.members, learn.dls.valid))
        for m in learn.members: m.remove_cb(probe)  # one probe serves both members: it would point to the second
        alone = h.export(learn.members[1], tmp_path / 'alone.pkl').stat().st_size
        exported = h.export(learn, tmp_path / 'first.pkl')  # the first member only: not the others, nor their data
        assert not hasattr(h.load_model(exported), 'members') and exported.stat().st_size < 1.2 * alone
        assert learn.members[0] is learn  # the learner in memory keeps its list
    if cfg.get('tta'):  # the validation and the test set read with augmentation, by every member
        assert res['tta'] and sorted(tta_calls) == [30] * n + [60] * n
    else:
        assert not res['tta'] and tta_calls == [] and res['without_tta']['test'] == res['test_accuracy']


def test_the_presets_between_them_use_mixup_smoothing_and_tta():
    "So that the test above checks each of them at work somewhere, and off somewhere else."
    cfgs = [h.make_config('kmnist', p) for p in ('best', 'best-cpu', 'cpu')]
    assert all(c['label_smoothing'] for c in cfgs) and any(c.get('mix') == 'mixup' for c in cfgs)
    assert {bool(c.get('tta')) for c in cfgs} == {True, False}


def test_a_plain_loss_costs_nothing_for_a_sure_right_answer():
    "The other side of the label-smoothing check above: without it, the same answer costs about nothing."
    (x, y), _ = synthetic_kmnist(64, 1)
    learn = h.make_learner(h.kmnist_dls((x, y), CHARS, bs=16, device='cpu'), 'kmnist_cnn')
    confident = torch.full((len(CHARS),), -20.); confident[3] = 20.
    assert learn.loss_func(confident[None], torch.tensor([3])).item() < 1e-6


def test_the_deep_cnn_keeps_its_residual_blocks_where_the_image_is_small():
    sizes, model, x = [], h.kmnist_cnn_deep(10), torch.zeros(2, 1, 28, 28)
    for m in model:
        x = m(x)
        if isinstance(m, ResBlock): sizes.append(x.shape[-1])
    assert sizes == [14, 7, 7, 7] and x.shape == (2, 10)  # none at 28x28, one at 14x14, three at 7x7
    n = lambda m: sum(p.numel() for p in m.parameters())
    assert 1_000_000 < n(model) < 1_100_000 and n(h.kmnist_cnn_wide(10)) < 500_000  # as its docstring says
    assert h.ARCHS['kmnist_cnn_deep'] is h.kmnist_cnn_deep  # so that train.py --arch and --vary arch= can name it


@pytest.mark.parametrize('preset', ['best-cpu', 'best'])
def test_train_py_runs_the_new_presets_in_quick_form(preset, tmp_path):
    write_kmnist(tmp_path / 'kmnist', n_train=300, n_test=60)
    out, model = tmp_path / 'r.json', tmp_path / 'm.pkl'
    cmd = [sys.executable, str(ROOT / 'scripts' / 'train.py'), '--preset', preset, '--quick', '--wandb', 'off',
           '--data', str(tmp_path / 'kmnist'), '--out', str(out), '--model', str(model), '--no-pretrained']
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads(out.read_text())
    cfg = res['config']
    assert cfg['preset'] == preset and cfg['label_smoothing'] and 'label smoothing' in r.stdout
    assert res['n_test'] == 60 and cfg['epochs'] == 1 and model.exists()
    assert res['tta'] == cfg['tta'] == ('with test-time augmentation' in r.stdout)
    assert ('mixup' in r.stdout) == (preset == 'best') == (cfg['mix'] == 'mixup')
    assert ('random erasing' in r.stdout) == bool(cfg.get('erase'))
    assert ('thicker or thinner strokes' in r.stdout) == bool(cfg.get('stroke'))
    assert len(res['members']) == cfg.get('ensemble', 1) == 1 and 'models (an ensemble)' not in r.stdout


def test_train_py_says_which_presets_fit_calligraphy(tmp_path):
    r = subprocess.run([sys.executable, str(ROOT / 'scripts' / 'train.py'), '--dataset', 'calligraphy',
                        '--preset', 'best-cpu'], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and 'calligraphy presets are article, cpu, quick' in r.stderr
    assert 'Traceback' not in r.stderr
