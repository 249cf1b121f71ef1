"""The GPU path, checked on a CPU: what would break the first time a learner trains on a GPU.

No GPU here, so two stand-ins. `OnGPU` is a CPU tensor that refuses NumPy as a CUDA tensor does (`.numpy()` and
`np.asarray` fail; `.cpu()` gives a plain tensor back): code that sends a GPU's results to NumPy without `.cpu()`
fails on it. PyTorch's `meta` device holds shapes and no data: a tensor or module there stands for one on another
device than the CPU, and mixing it with CPU tensors fails as mixing CUDA and CPU tensors does. Clocks and
`torch.cuda.synchronize` are watched by replacing them."""
import time

import numpy as np
import pytest
import torch
from torch import nn

import helpers as h
from helpers import longtail as lt
from conftest import synthetic_kmnist

CHARS = list('おきすつなはまやれを')
META = torch.device('meta')


class OnGPU(torch.Tensor):
    "A CPU tensor that NumPy refuses, as it refuses a CUDA tensor; what it computes is OnGPU too, `.cpu()` is plain."
    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        if func in (torch.Tensor.numpy, torch.Tensor.__array__):
            raise TypeError("can't convert cuda:0 device type tensor to numpy. Use Tensor.cpu() to copy the tensor "
                            "to host memory first.")
        out = super().__torch_function__(func, types, args, kwargs)
        if func is torch.Tensor.cpu:
            with torch._C.DisableTorchFunctionSubclass(): return out.as_subclass(torch.Tensor)
        return out


def on_gpu(t): return t.as_subclass(OnGPU)


def test_the_stand_in_refuses_numpy_as_cuda_does():
    t = on_gpu(torch.arange(4))
    for f in (lambda: t.numpy(), lambda: np.asarray(t), lambda: (t + 1).numpy()):
        with pytest.raises(TypeError, match='cuda'): f()
    assert t.cpu().numpy().tolist() == [0, 1, 2, 3]


@pytest.fixture
def long_tail():
    "Features of 6 classes, 20 to 2 images each, that a linear layer can tell apart; their scores and counts."
    g = torch.Generator().manual_seed(0)
    y = torch.cat([torch.full((n,), c) for c, n in enumerate((20, 14, 9, 5, 3, 2))])
    f = torch.randn(len(y), 16, generator=g) + 3 * nn.functional.one_hot(y, 16).float()
    scores = f[:, :6] + 0.5 * torch.randn(len(y), 6, generator=g)
    return f, y, scores, np.bincount(y.numpy())


# 1. The Kanji long tail: every tensor stays on one device, only NumPy's input comes to the CPU

def test_long_tail_scores_read_a_gpu_s_tensors(long_tail):
    f, y, scores, counts = long_tail
    assert lt.long_tail_report(on_gpu(scores), on_gpu(y), counts) == lt.long_tail_report(scores, y, counts)
    assert lt.long_tail_report(on_gpu(scores), y.numpy(), counts) == lt.long_tail_report(scores, y, counts)
    for got, want in zip(lt.reject_curve(on_gpu(scores.softmax(1)), on_gpu(y)), lt.reject_curve(scores.softmax(1), y)):
        np.testing.assert_array_equal(got, want)
    assert lt.choose_threshold(on_gpu(scores.softmax(1)), on_gpu(y), 0.9) == lt.choose_threshold(scores.softmax(1), y, 0.9)
    adjusted = lt.adjust(on_gpu(scores), counts, 0.5)
    assert isinstance(adjusted, OnGPU), 'adjusted logits stay where the logits are'
    torch.testing.assert_close(adjusted.cpu(), lt.adjust(scores, counts, 0.5))


def test_crt_trains_on_a_gpu_s_features_as_on_the_cpu_s(long_tail):
    f, y, _, _ = long_tail
    want = lt.retrain_classifier((f, y), (f, y), 6, epochs=1, seed=3)
    got = lt.retrain_classifier((on_gpu(f), on_gpu(y)), (on_gpu(f), on_gpu(y)), 6, epochs=1, seed=3)
    torch.testing.assert_close(got.weight.detach().cpu().as_subclass(torch.Tensor), want.weight.detach())


def test_crt_trains_where_the_features_are(long_tail, monkeypatch):
    "The head and its DataLoaders go to the features' device (meta here), not to the CPU."
    from fastai.learner import Learner
    f, y, _, _ = long_tail
    seen = []
    monkeypatch.setattr(Learner, 'fit_one_cycle', lambda self, *a, **k: seen.append(
        (torch.device(self.dls.device), next(self.model.parameters()).device)), raising=False)  # no data to train on
    head = lt.retrain_classifier((f.to(META), y), (f.to(META), y), 6, epochs=1)
    assert seen == [(META, META)] and head.weight.device == META


def test_long_tail_modules_are_made_and_kept_on_the_features_device(long_tail):
    f, y, _, counts = long_tail
    ncm = lt.NearestMean(f.to(META), y.to(META), 6)
    assert ncm.means.device == META and ncm(f.to(META)).shape == (len(y), 6)
    assert lt.adjust(torch.zeros(3, 6, device=META), counts, 1.0).device == META
    la = lt.LogitAdjust(counts).to(META)
    assert la.log_prior.device == META and la(torch.zeros(3, 6, device=META)).device == META  # a buffer: it moves
    model = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 6)).to(META)
    for method, train in (('logit-adjust', None), ('ncm', (f.to(META), y.to(META)))):
        m = h.with_method(model, method, counts, train=train, tau=0.5)
        assert {b.device for b in m.buffers()} | {p.device for p in m.parameters()} == {META}, method
        assert m(torch.zeros(2, 4, device=META)).shape == (2, 6), method


def test_features_are_taken_where_the_model_is():
    "A model on another device than the loader's batches (a GPU's, or a CPU copy) reads them there."
    model = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 6)).to(META)
    batches = [(torch.zeros(5, 4), torch.zeros(5, dtype=torch.long)) for _ in range(2)]
    feats, ys = lt.features(model, batches)
    assert feats.shape == (10, 16) and feats.device == META and ys.device == META


# 2. KMNIST on ImageNet weights trains every layer; calligraphy keeps its freeze-then-unfreeze

@pytest.fixture
def tiny_dls():
    (x, y), _ = synthetic_kmnist(96, 10)
    return h.kmnist_dls((x, y), CHARS, bs=16, device='cpu')


def as_if_imagenet(monkeypatch):
    "make_learner as it is with ImageNet weights (vision_learner freezes the body), from random weights: no download."
    real = h.training.make_learner
    def frozen(dls, arch='resnet34', pretrained=True, **kwargs):
        learn = real(dls, arch, pretrained=False, **kwargs)
        if pretrained: learn.freeze(); learn.weights = 'imagenet'
        return learn
    monkeypatch.setattr(h.training, 'make_learner', frozen)


def trains_everything(learn):
    return h.trainable_share(learn) == 1.0 and learn.opt.frozen_idx == 0


def test_the_gpu_presets_unfreeze_and_calligraphy_does_not():
    assert h.PRESETS['article']['unfreeze'] and h.PRESETS['best']['unfreeze']
    assert all(h.make_config('kmnist', p, arch='resnet34', pretrained=True)['unfreeze'] for p in h.PRESETS)  # any KMNIST
    assert not any(h.make_config('calligraphy', p)['unfreeze'] for p in h.CALLIGRAPHY_PRESETS)


def test_a_cpu_preset_on_imagenet_weights_trains_every_layer_too(monkeypatch, tiny_dls):
    "`train.py --preset cpu --arch resnet34 --pretrained`: ImageNet weights, so every layer trains."
    as_if_imagenet(monkeypatch)
    learn = h.learner_for(h.make_config('kmnist', 'cpu', wandb='off', arch='resnet18', pretrained=True, speedups=False),
                          tiny_dls)
    assert learn.weights == 'imagenet' and trains_everything(learn)


@pytest.mark.parametrize('preset', ['article', 'best'])
def test_kmnist_on_imagenet_weights_trains_every_layer(monkeypatch, tiny_dls, preset):
    as_if_imagenet(monkeypatch)
    cfg = h.make_config('kmnist', preset, wandb='off', arch='resnet18', speedups=False)
    learn = h.learner_for(cfg, tiny_dls)
    assert learn.weights == 'imagenet' and trains_everything(learn)
    frozen = h.learner_for({**cfg, 'unfreeze': False}, tiny_dls)
    assert h.trainable_share(frozen) < 0.1, 'the stand-in must freeze as vision_learner does, or this proves nothing'


def test_the_helper_unfreezes_imagenet_weights_only(monkeypatch, tiny_dls):
    as_if_imagenet(monkeypatch)
    learn = h.training.make_learner(tiny_dls, 'resnet18', pretrained=True)
    assert h.unfreeze_pretrained(learn) is learn and trains_everything(learn)
    fresh = h.training.make_learner(tiny_dls, 'resnet18', pretrained=False)
    h.unfreeze_pretrained(fresh)
    assert fresh.opt is None and h.trainable_share(fresh) == 1.0  # random weights: nothing was frozen, nothing done


def test_calligraphy_keeps_its_freeze_then_unfreeze(monkeypatch, tiny_dls):
    as_if_imagenet(monkeypatch)
    cfg = h.make_config('calligraphy', 'article', wandb='off', arch='resnet18', speedups=False)
    assert h.trainable_share(h.learner_for(cfg, tiny_dls, n_in=1)) < 0.1  # progressive_resizing unfreezes it later


def test_a_run_records_that_every_layer_trained(monkeypatch, tmp_path):
    from conftest import write_kmnist
    as_if_imagenet(monkeypatch)
    write_kmnist(tmp_path / 'kmnist', n_train=120, n_test=20)
    cfg = h.make_config('kmnist', 'article', wandb='off', arch='resnet18', bs=16, epochs=1, lr=1e-3, speedups=False)
    res, learn = h.run_training(cfg, tmp_path / 'kmnist', log=lambda *a: None, test=False)
    assert res['weights'] == 'imagenet' and res['trainable'] == 1.0


# 3. training_speed: the model on the batches' device, the clock around finished work, the warm-up as timed

def test_training_speed_moves_the_model_to_the_batches(tiny_dls):
    "A fresh learner's model is on the CPU, its batches on the GPU: the model goes where the loader puts batches."
    learn, sent = h.make_learner(tiny_dls, 'kmnist_cnn'), []
    to = learn.model.to
    learn.model.to = lambda *a, **k: sent.append(torch.device(*a)) or to(*a, **k)
    assert h.training_speed(learn, n_batches=2) > 0
    assert sent == [torch.device(tiny_dls.device)]


def test_training_speed_synchronizes_before_each_clock_reading(monkeypatch, tiny_dls):
    events = []
    monkeypatch.setattr(h.dataloaders, 'synchronize', lambda device: events.append('sync'))
    monkeypatch.setattr(h.dataloaders, 'time', type('Clock', (), {'perf_counter': staticmethod(
        lambda: events.append('clock') or time.perf_counter())}))
    h.training_speed(h.make_learner(tiny_dls, 'kmnist_cnn'), n_batches=2)
    assert events == ['sync', 'clock', 'sync', 'clock']


def test_training_speed_warms_up_as_it_times(monkeypatch, tiny_dls):
    "Every forward pass, the warm-up's too, runs under the autocast the timed steps use."
    inside, seen = [], []
    class Autocast:
        def __init__(self, *a, **k): pass
        def __enter__(self): inside.append(1)
        def __exit__(self, *a): inside.pop()
    monkeypatch.setattr(torch, 'autocast', Autocast)
    learn = h.make_learner(tiny_dls, 'kmnist_cnn')
    learn.model.register_forward_hook(lambda m, i, o: seen.append(bool(inside)))
    h.training_speed(learn, n_batches=2)
    assert seen == [True] * 3


def test_synchronize_waits_for_a_gpu_only(monkeypatch):
    calls = []
    monkeypatch.setattr(torch.cuda, 'synchronize', lambda device=None: calls.append(('cuda', device)))
    monkeypatch.setattr(torch.mps, 'synchronize', lambda: calls.append(('mps', None)))
    h.synchronize('cpu'); h.synchronize(torch.device('cpu'))
    assert calls == []
    h.synchronize(torch.device('cuda', 0)); h.synchronize('mps')
    assert calls == [('cuda', torch.device('cuda', 0)), ('mps', None)]


# 4. profile_epoch: on a GPU each clock reading waits for the work queued before it; on a CPU nothing changes

def test_profile_epoch_waits_for_the_gpu_and_only_there(monkeypatch, tiny_dls):
    import profile_epoch
    calls = []
    monkeypatch.setattr(h, 'synchronize', lambda device: calls.append(device))
    assert profile_epoch.waiter('cpu') is None and profile_epoch.waiter(torch.device('cpu')) is None
    profile_epoch.waiter(torch.device('cuda', 0))()
    assert calls == [torch.device('cuda', 0)]
    from fastai.vision.all import Learner
    assert profile_epoch.EpochProfiler(Learner(tiny_dls, h.kmnist_cnn())).sync is None  # the CPU: as before


def test_profile_epoch_puts_the_gpu_s_queued_work_in_its_row(tiny_dls):
    """A stand-in GPU whose queued work takes 5 ms to finish at every wait: the forward pass's row must hold it. Without
    waiting, a GPU's forward and backward read about 0 s."""
    import profile_epoch
    from fastai.vision.all import Learner
    waits = []
    def gpu_finishes(): waits.append(1); time.sleep(0.005)
    learn = Learner(tiny_dls, h.kmnist_cnn())
    prof = profile_epoch.EpochProfiler(learn, sync=gpu_finishes)
    with learn.no_bar(), learn.no_logging(): learn.fit(1, 1e-3)
    learn._call_one = prof.call_one
    n_batches = len(tiny_dls.train)
    assert prof.times['train', 'forward'] >= n_batches * 0.005 and prof.times['train', 'backward'] >= n_batches * 0.005
    assert len(waits) > 4 * n_batches


# 5. Inference and the page's export, handed a learner whose model is on a GPU

@pytest.fixture
def trained(tiny_dls):
    from fastai.vision.all import Learner
    learn = Learner(tiny_dls, h.kmnist_cnn())
    with learn.no_bar(), learn.no_logging(): learn.fit(1, 1e-2)
    return learn


class ToGPU(nn.Module):
    def forward(self, x): return on_gpu(x)


def test_inference_reads_a_model_on_a_gpu(trained):
    x = synthetic_kmnist(20, 8)[1][0]
    want = h.probabilities(trained, list(x))
    trained.model = nn.Sequential(trained.model, ToGPU())  # its answers are on the GPU now
    got = h.probabilities(trained, list(x))
    assert isinstance(got, np.ndarray) and np.allclose(got, want)
    def same(a, b):  # one image or a batch of them: the probabilities may differ in their last bits
        return [p['label'] for p in a] == [p['label'] for p in b] and \
            np.allclose([p['probability'] for p in a], [p['probability'] for p in b], atol=1e-5)
    assert same(h.predict(trained, x[0])[0], h.top_k(trained, want[0]))
    assert all(same(r['predictions'], h.top_k(trained, p)) for r, p in zip(h.predict_files(trained, x[:2]), want))


def test_the_page_export_copies_a_gpu_model_to_the_cpu_and_leaves_the_learner_alone(trained, tmp_path, monkeypatch):
    "A learner whose model is on a GPU: the exporter gets a CPU copy, the learner keeps its own model where it was."
    from helpers import web
    monkeypatch.setattr(web, 'model_device', lambda learn: torch.device('cuda', 0))  # as after a GPU fit
    exported, real = [], torch.onnx.export
    def spy(model, args, **kwargs):
        exported.append((model, {p.device.type for p in model.parameters()} | {a.device.type for a in args}))
        return real(model, args, **kwargs)
    monkeypatch.setattr(torch.onnx, 'export', spy)
    before = trained.model
    web.export_onnx(trained, tmp_path / 'model.onnx')
    (wrapper, devices), = exported
    assert wrapper.model is not before and devices == {'cpu'}
    assert trained.model is before and next(before.parameters()).device.type == 'cpu'
    x = synthetic_kmnist(20, 8)[1][0]
    assert web.check_onnx(trained, tmp_path / 'model.onnx', x)['images'] == 8
    page = web.PageModel(nn.Linear(4, 3).to(META), 255., [0.5], [0.25])
    assert page.mean.device == META and page.std.device == META  # the page's normalisation is made where the model is
