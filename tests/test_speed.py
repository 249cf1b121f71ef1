"""CPU speed-ups: the CPU's bfloat16 is detected safely, the measured choice falls back to float32, and what the
choice says is really on in the forward pass (channels_last layout, bfloat16 autocast) and off when it says off."""
import io, os, platform, random, subprocess, sys

import numpy as np
import pytest
import torch
from torch import nn

import helpers as h
from conftest import synthetic_kmnist

CHARS = list('おきすつなはまやれを')


@pytest.fixture
def tiny_dls():
    (x, y), _ = synthetic_kmnist(96, 10)
    return h.kmnist_dls((x, y), CHARS, bs=16, device='cpu')


@pytest.fixture(autouse=True)
def fresh_measurements(monkeypatch):
    monkeypatch.setattr(h.speed, '_MEASURED', {})


def cpuinfo(monkeypatch, text):
    "Pretend /proc/cpuinfo holds `text` (None: it cannot be read, as on macOS or Windows)."
    def fake_open(path, *a, **k):
        if text is None: raise FileNotFoundError(path)
        return io.StringIO(text)
    monkeypatch.setattr(h.settings, 'open', fake_open, raising=False)


@pytest.mark.parametrize('text, bf16', [
    ('processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16 amx_tile\n', True),   # a recent x86 server
    ('processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_vnni\n', False),           # AVX-512 without BF16
    ('processor\t: 0\nflags\t\t: fpu sse2 avx2\n', False),                                # an older laptop
    ('processor\t: 0\nFeatures\t: fp asimd sve bf16 i8mm\n', True),                       # an Arm server
    ('processor\t: 0\n', False),                                                          # no flags listed
    (None, False),                                                                        # no /proc/cpuinfo
])
def test_bf16_detection_reads_the_flags_and_falls_back_to_no(monkeypatch, text, bf16):
    cpuinfo(monkeypatch, text)
    assert h.cpu_has_bf16() is bf16


def times(**seconds):
    "A fake `step_seconds`: the given seconds per candidate, and a record of which candidates were measured."
    asked = []
    def fake(learn, candidates, xb, yb, rounds=4):
        asked.extend(candidates)
        return {c: seconds[{(False, False): 'fp32', (True, False): 'cl', (True, True): 'cl_bf16'}[c]] for c in candidates}
    return fake, asked


def test_cpu_settings_chooses_only_what_is_clearly_faster(monkeypatch, tiny_dls):
    learn = h.make_learner(tiny_dls, 'kmnist_cnn')
    monkeypatch.setattr(h.speed, 'cpu_has_bf16', lambda: True)
    fake, asked = times(fp32=1.0, cl=0.95, cl_bf16=0.97)  # within 10%: noise, not a speed-up
    monkeypatch.setattr(h.speed, 'step_seconds', fake)
    assert h.cpu_settings(learn) == dict(channels_last=False, bf16=False)
    assert (True, True) in asked
    for seconds, want in [(dict(fp32=1.0, cl=0.6, cl_bf16=0.4), dict(channels_last=True, bf16=True)),
                          (dict(fp32=1.0, cl=0.6, cl_bf16=1.8), dict(channels_last=True, bf16=False)),
                          (dict(fp32=1.0, cl=1.3, cl_bf16=1.2), dict(channels_last=False, bf16=False))]:
        monkeypatch.setattr(h.speed, '_MEASURED', {})
        monkeypatch.setattr(h.speed, 'step_seconds', times(**seconds)[0])
        assert h.cpu_settings(learn) == want, seconds


def test_without_bf16_in_the_cpu_bf16_is_never_tried(monkeypatch, tiny_dls):
    monkeypatch.setattr(h.speed, 'cpu_has_bf16', lambda: False)
    fake, asked = times(fp32=1.0, cl=0.5, cl_bf16=0.01)
    monkeypatch.setattr(h.speed, 'step_seconds', fake)
    assert h.cpu_settings(h.make_learner(tiny_dls, 'kmnist_cnn')) == dict(channels_last=True, bf16=False)
    assert (True, True) not in asked


def test_cpu_settings_measures_once_and_leaves_the_random_generators_alone(monkeypatch, tiny_dls):
    monkeypatch.setattr(h.speed, 'cpu_has_bf16', lambda: True)  # also time the bfloat16 path for real
    learn = h.make_learner(tiny_dls, 'kmnist_cnn')
    weights = [p.detach().clone() for p in learn.model.parameters()]
    h.set_seed(3); expected = (random.random(), np.random.rand(), torch.rand(1).item())
    h.set_seed(3); first = h.cpu_settings(learn)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected
    assert all(torch.equal(a, b) for a, b in zip(weights, learn.model.parameters())), 'the model itself is not touched'
    calls = []
    monkeypatch.setattr(h.speed, 'step_seconds', lambda *a, **k: calls.append(1))
    assert h.cpu_settings(h.make_learner(tiny_dls, 'kmnist_cnn')) == first and not calls


def test_step_seconds_times_every_candidate(tiny_dls):
    learn = h.make_learner(tiny_dls, 'kmnist_cnn')
    xb, yb = tiny_dls.valid.one_batch()
    cands = [(False, False), (True, False), (True, True)]
    best = h.speed.step_seconds(learn, cands, xb, yb, rounds=1)
    assert set(best) == set(cands) and all(0 < s < float('inf') for s in best.values())


class Spy:
    """Records what the forward pass really ran with, at the first convolution with more than one input channel
    (with one channel, both memory formats are the same layout)."""
    def __init__(self, model):
        self.seen = []
        next(m for m in model.modules() if isinstance(m, nn.Conv2d) and m.in_channels > 1).register_forward_hook(self.hook)
    def hook(self, mod, inp, out):
        def cl(t): return t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous()
        self.seen.append(dict(autocast=torch.is_autocast_enabled('cpu'), out_dtype=out.dtype, plain=type(inp[0]) is torch.Tensor,
                              weight_cl=cl(mod.weight), input_cl=cl(inp[0])))


@pytest.mark.parametrize('cl, bf16', [(True, True), (True, False), (False, False)])
def test_what_learner_for_chooses_is_what_the_forward_pass_runs(monkeypatch, tiny_dls, cl, bf16):
    monkeypatch.setattr(h.training, 'cpu_settings', lambda learn: dict(channels_last=cl, bf16=bf16))
    learn = h.learner_for(h.make_config('kmnist', 'quick', wandb='off'), tiny_dls)
    spy = Spy(learn.model)
    learn.fit(1, 1e-3)
    train, valid = spy.seen[:len(tiny_dls.train)], spy.seen[len(tiny_dls.train):]
    assert train and valid
    for s in spy.seen:  # training and validation batches alike
        assert s['autocast'] is bf16 and s['out_dtype'] == (torch.bfloat16 if bf16 else torch.float32)
        assert s['weight_cl'] is cl and s['input_cl'] is cl
        assert s['plain'], "the model sees plain tensors, without fastai's per-operation Python"
    assert not torch.is_autocast_enabled('cpu'), 'autocast must end with each batch'
    assert all(p.dtype == torch.float32 for p in learn.model.parameters()), 'the weights stay float32'
    assert np.isfinite(learn.recorder.values[-1]).all() and isinstance(learn.recorder.values[-1][0], float)
    inputs = learn.get_preds(with_input=True)[0]
    assert type(inputs).__name__ == 'TensorImageBW', 'the rest of fastai (show_results, interpretation) gets its types'
    assert h.speed_summary(learn) == {(True, True): 'channels_last + bfloat16', (True, False): 'channels_last',
                                      (False, False): 'float32'}[cl, bf16]


def test_no_speedups_when_switched_off_or_on_a_gpu(monkeypatch, tiny_dls):
    def never(learn): raise AssertionError('cpu_settings must not run here')
    monkeypatch.setattr(h.training, 'cpu_settings', never)
    cfg = h.make_config('kmnist', 'quick', wandb='off')
    learn = h.learner_for({**cfg, 'speedups': False}, tiny_dls)
    assert not any(isinstance(c, h.CPUSpeedups) for c in learn.cbs) and h.speed_summary(learn) == 'float32'
    monkeypatch.setattr(h.training, 'on_gpu', lambda: True)     # an Apple GPU: fastai's own set-up, untouched
    monkeypatch.setattr(h.training, 'use_fp16', lambda: False)
    assert not any(isinstance(c, h.CPUSpeedups) for c in h.learner_for(cfg, tiny_dls).cbs)


def test_export_leaves_the_speedups_behind(monkeypatch, tiny_dls, tmp_path):
    from fastai.vision.all import load_learner
    monkeypatch.setattr(h.training, 'cpu_settings', lambda learn: dict(channels_last=True, bf16=True))
    learn = h.learner_for(h.make_config('kmnist', 'quick', wandb='off'), tiny_dls)
    learn.fit(1, 1e-3)
    loaded = load_learner(h.export(learn, tmp_path / 'm.pkl'))
    assert not any(isinstance(c, h.CPUSpeedups) for c in loaded.cbs)
    x = synthetic_kmnist(96, 10)[1][0][0]
    assert loaded.predict(x)[2].dtype == torch.float32


def test_the_cpu_preset_smooths_labels_and_leaves_out_the_warp(monkeypatch, tmp_path):
    "What the cpu preset chose for its accuracy and its speed reaches the learner and the loaders; the article's not."
    from fastai.vision.all import LabelSmoothingCrossEntropyFlat
    from conftest import write_kmnist
    monkeypatch.setattr(h.training, 'cpu_settings', lambda learn: dict(channels_last=False, bf16=False))
    write_kmnist(tmp_path / 'kmnist', n_train=200, n_test=50)
    for preset, smooth, warp in (('cpu', True, False), ('article', False, True)):
        cfg = h.make_config('kmnist', preset, wandb='off', arch='kmnist_cnn', pretrained=False, bs=16)
        *_, dls = h.load_for(cfg, tmp_path / 'kmnist')
        learn = h.learner_for(cfg, dls)
        assert isinstance(learn.loss_func, LabelSmoothingCrossEntropyFlat) is smooth, preset
        tfms = [type(t).__name__ for t in dls.train.after_batch.fs]
        assert ('Warp' in tfms) is warp and ('Rotate' in tfms or 'Warp' in tfms), (preset, tfms)  # rotation stays


def test_training_keeps_its_freed_memory_so_steps_do_not_fault_pages_in():
    """On Linux with glibc, `keep_freed_memory` stops each training step from mapping its activations afresh: steps of
    kmnist_cnn at batch size 128 then fault in almost no pages (thousands a step without it). Each way in a fresh
    Python, so the setting cannot leak into other tests; four windows of 5 steps each, after a warm-up."""
    if platform.system() != 'Linux' or platform.libc_ver()[0] != 'glibc': pytest.skip('glibc only')
    code = '''
import os, resource, torch, helpers as h
if os.environ['KEEP'] == '1': assert h.settings.keep_freed_memory()
m = h.kmnist_cnn().train(); opt = torch.optim.SGD(m.parameters(), lr=0.01)
x, y = torch.randn(128, 1, 28, 28), torch.randint(0, 10, (128,))
def step(): torch.nn.functional.cross_entropy(m(x), y).backward(); opt.step(); opt.zero_grad()
for _ in range(5): step()
def window():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(5): step()
    return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 5
w = [window() for _ in range(4)]
print(min(w), max(w))
'''
    faults = {}
    for keep in ('1', '0'):
        r = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=300,
                           env={**os.environ, 'KEEP': keep, 'PYTHONPATH': str(h.ROOT / 'scripts')})
        assert r.returncode == 0, r.stderr[-2000:]
        faults[keep] = [float(n) for n in r.stdout.split()[-2:]]  # the least and the most faults per step
    # kept: almost none once warm; glibc's default: hundreds to thousands (it raises its threshold on its own, not enough)
    assert faults['1'][0] < 100 and faults['0'][1] > 500, faults
