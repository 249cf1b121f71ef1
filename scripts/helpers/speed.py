"""Speed on a CPU: how a model trains fastest on this machine, measured rather than assumed.

    CPUSpeedups     a fastai callback: plain tensors into the model, channels_last, bfloat16 autocast where it pays
    cpu_settings    which of those pay here, timed on a few training steps of the learner's own model and batch
    speed_summary   how a learner computes, in words, for reports

Laptops differ: many have no bfloat16 in hardware (then PyTorch emulates it, slower than float32) and no AVX-512, so
nothing here is assumed from the model name of a CPU. RESEARCH.md ("Training speed on a CPU", "Training speed without
bfloat16") has the measurements behind each choice. Uses: settings."""
from __future__ import annotations

import copy, random, time

import numpy as np
import torch
from fastai.callback.core import Callback
from fastai.torch_core import to_float

from .settings import cpu_has_bf16, keep_freed_memory


class CPUSpeedups(Callback):
    """Faster training on a CPU, as a fastai callback. The model sees each batch as a plain tensor: fastai's tensor
    types run Python code around every operation of the forward pass (13-20% of a `kmnist_cnn` training step on
    2 cores); the rest of fastai gets its typed batch back after the forward pass. With `channels_last` the model and
    batch use the memory format of oneDNN's fast CPU convolutions; with `bf16` the forward pass and loss run under
    bfloat16 autocast, as fastai's `to_bf16()` does on a GPU (its autocast is CUDA-only, so it does nothing on a
    CPU). bfloat16 has float32's range, so no loss scaling; the weights and the optimizer stay float32. On Linux the
    process also keeps the memory it frees (`settings.keep_freed_memory`), so a step does not fault its pages in anew."""
    order = 10  # where fastai's MixedPrecision sits: before the recorder reads the loss
    def __init__(self, channels_last=True, bf16=False): self.channels_last, self.bf16 = channels_last, bf16
    def before_fit(self):
        keep_freed_memory()
        if self.channels_last: self.learn.model.to(memory_format=torch.channels_last)
    def before_batch(self):
        self.typed_xb = self.xb
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        self.learn.xb = tuple(x.as_subclass(torch.Tensor).contiguous(memory_format=fmt) if x.ndim == 4 else x
                              for x in self.xb)
        self.autocast = torch.autocast('cpu', dtype=torch.bfloat16, enabled=self.bf16)
        self.autocast.__enter__()
    def after_pred(self): self.learn.pred, self.learn.xb = to_float(self.pred), self.typed_xb
    def after_loss(self): self.autocast.__exit__(None, None, None)
    @property
    def text(self): return ' + '.join(['channels_last'] * self.channels_last + ['bfloat16'] * self.bf16) or 'float32'
    def __repr__(self): return f'CPUSpeedups({self.text})'


_MEASURED = {}  # model kind and input shape -> the settings cpu_settings chose, so a process measures once


def step_seconds(learn, candidates, xb, yb, rounds=4):
    "The fastest of `rounds` training steps (after one to warm up) of a copy of `learn.model`, per (channels_last, bf16)."
    best = {c: float('inf') for c in candidates}
    models = {c: copy.deepcopy(learn.model).train() for c in candidates}
    for r in range(rounds + 1):
        for cl, bf in candidates:  # in turns, so that a neighbour's load hits every candidate alike
            m, x = models[cl, bf], xb.contiguous(memory_format=torch.channels_last) if cl else xb
            if cl: m.to(memory_format=torch.channels_last)
            t = time.perf_counter()
            with torch.autocast('cpu', dtype=torch.bfloat16, enabled=bf): loss = learn.loss_func(m(x).float(), yb)
            loss.backward(); m.zero_grad()
            if r: best[cl, bf] = min(best[cl, bf], time.perf_counter() - t)
    return best


def cpu_settings(learn, margin=0.9):
    """The fastest way to train `learn` on this CPU, measured rather than assumed: training steps of a copy of its
    model on one of its batches as float32, as channels_last and, only where `cpu_has_bf16()`, as channels_last +
    bfloat16. One is chosen only if it beats plain float32 by 10% (`margin`), so a machine where it does not pay
    keeps float32. Measured once per model and input shape; the random generators are left as they were."""
    keep_freed_memory()  # as CPUSpeedups trains: measured with the allocator it will train with
    rng = random.getstate(), np.random.get_state()
    with torch.random.fork_rng():
        xb, yb = learn.dls.valid.one_batch()  # no augmentation, and the training loader's order is left alone
        xb, yb = xb[:learn.dls.train.bs].as_subclass(torch.Tensor), yb[:learn.dls.train.bs]  # as CPUSpeedups feeds it
        key = (type(learn.model).__name__, sum(p.numel() for p in learn.model.parameters()), tuple(xb.shape[1:]))
        if key not in _MEASURED:
            best = step_seconds(learn, [(False, False), (True, False)] + ([(True, True)] if cpu_has_bf16() else []), xb, yb)
            fastest = min(best, key=best.get)
            cl, bf = fastest if best[fastest] <= margin * best[False, False] else (False, False)
            _MEASURED[key] = dict(channels_last=cl, bf16=bf)
    random.setstate(rng[0]); np.random.set_state(rng[1])
    return dict(_MEASURED[key])



def speed_summary(learn):
    "How `learn` computes: 'float32', 'mixed precision (fp16)', 'channels_last + bfloat16' and so on."
    if any(type(c).__name__ == 'MixedPrecision' for c in learn.cbs): return 'mixed precision (fp16)'
    return next((c.text for c in learn.cbs if isinstance(c, CPUSpeedups)), 'float32')


def batch_seconds(learn, n_batches=10, warmup=3):
    """Seconds one training batch of `learn` takes here, as fastai's loop would train it: its DataLoader's batches
    (augmentation included), its loss, Adam, and its `CPUSpeedups` (channels_last, bfloat16 where chosen), on a copy
    of its model. The median of `n_batches`, after `warmup`. The learner, its model and the random generators are left
    as they were, so a seed trains the same model whether or not this ran first. For sizing a run to a time budget."""
    sp = next((c for c in learn.cbs if isinstance(c, CPUSpeedups)), None)
    cl, bf = (sp.channels_last, sp.bf16) if sp else (False, False)
    rng = random.getstate(), np.random.get_state()
    times = []
    with torch.random.fork_rng():
        model = copy.deepcopy(learn.model).train()
        if cl: model.to(memory_format=torch.channels_last)
        opt = torch.optim.Adam(model.parameters(), lr=1e-4)
        it = iter(learn.dls.train)
        for i in range(warmup + n_batches):
            t = time.perf_counter()
            xb, yb = next(it)
            x = xb.as_subclass(torch.Tensor).contiguous(memory_format=torch.channels_last if cl else torch.contiguous_format)
            with torch.autocast('cpu', dtype=torch.bfloat16, enabled=bf): loss = learn.loss_func(model(x).float(), yb)
            loss.backward(); opt.step(); opt.zero_grad()
            if i >= warmup: times.append(time.perf_counter() - t)
    random.setstate(rng[0]); np.random.set_state(rng[1])
    return float(np.median(times))


def epochs_within(budget, batch_s, n_batches, most, valid_s=0., margin=1.15):
    """How many epochs of `n_batches` batches (`batch_s` seconds each, plus `valid_s` of validation) fit in `budget`
    seconds, with `margin` for what a batch's timing leaves out (fastai's callbacks, the recorder, a busy machine):
    at most `most`, at least 1."""
    epoch = n_batches * batch_s * margin + valid_s
    return max(1, min(int(most), int(budget // epoch)))
