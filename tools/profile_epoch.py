#!/usr/bin/env python
"""Where does an epoch's time go? Train one epoch of a preset with fastai's own loop and split its time into
batch creation, each augmentation transform, forward, loss, backward, optimizer step, each callback (W&B's
included) and validation.

    python tools/profile_epoch.py --data data/kmnist                      # the cpu preset, W&B offline
    python tools/profile_epoch.py --data data/kmnist --pct 0.25 --wandb off
    python tools/profile_epoch.py --data data/kmnist --no-speedups         # plain fp32, default threads

How: every callback call is timed (the learner's `_call_one` is wrapped), and so is every `after_batch` transform
of the loaders; the learner's own work is the time between two events (`before_batch` to `after_pred` is the
forward pass, and so on). The W&B process runs beside this one, so its cost shows in the total, not in a row:
compare `--wandb offline` with `--wandb off`. On a GPU, which works asynchronously, every clock reading waits for
the work queued before it (`helpers.synchronize`), so each row holds the GPU work it started; on a CPU nothing
waits, and the numbers are as before."""
import argparse, os, sys, time
from pathlib import Path
from collections import defaultdict

import torch
from fastai.callback.training import ShortEpochCallback

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / 'scripts'))  # the helpers package, as the scripts use it
import helpers as h

# The learner's work between two events (fastai's `Learner.one_batch` and `_do_one_batch`)
STEPS = {('before_batch', 'after_pred'): 'forward', ('after_pred', 'after_loss'): 'loss',
         ('before_backward', 'after_backward'): 'backward', ('before_step', 'after_step'): 'optimizer step',
         ('after_step', 'after_batch'): 'zero_grad', ('after_loss', 'after_batch'): 'end of batch'}


def waiter(device):
    "What makes a clock reading wait for a GPU's queued work (`helpers.synchronize`), or None on a CPU: no cost there."
    device = torch.device(device or 'cpu')
    return None if device.type == 'cpu' else lambda: h.synchronize(device)


class TimedPipeline:
    "A loader's `after_batch` Pipeline that times each of its transforms (`sync`: see `waiter`)."
    def __init__(self, pipe, times, phase, sync=None): self.pipe, self.times, self.phase, self.sync = pipe, times, phase, sync
    def __call__(self, b):
        for f in self.pipe.fs:
            if self.sync: self.sync()  # what the batch's making queued is not this transform's
            t = time.perf_counter()
            b = f(b, split_idx=self.pipe.split_idx)
            if self.sync: self.sync()
            self.times[self.phase, f'  transform {type(f).__name__}'] += time.perf_counter() - t
        return b
    def __getattr__(self, k): return getattr(self.pipe, k)


class EpochProfiler:
    """Times every event dispatch of `learn` and the gaps between them; see the module's docstring. `sync`: called
    before each clock reading (default: `waiter` for the loaders' device)."""
    def __init__(self, learn, sync='auto'):
        self.learn, self.times, self.last = learn, defaultdict(float), None
        self.sync = waiter(learn.dls.device) if sync == 'auto' else sync
        self.call_one = learn._call_one
        learn._call_one = self._call_one
        for phase, dl in (('train', learn.dls.train), ('valid', learn.dls.valid)):
            dl.after_batch = TimedPipeline(dl.after_batch, self.times, phase, self.sync)

    def _call_one(self, event):
        if self.sync: self.sync()  # the GPU work queued since the last event belongs to the gap before this one
        t0 = time.perf_counter()
        phase = 'train' if self.learn.training else 'valid'
        if self.last is not None:
            prev, t_prev = self.last
            if event == 'before_batch' or (prev == 'after_batch' and event in ('after_train', 'after_validate')):
                what = 'batches (creation + transforms)'
            else:
                what = STEPS.get((prev, event), 'fastai loop (other)')
            self.times[phase, what] += t0 - t_prev
        for cb in self.learn.cbs.sorted('order'):
            t = time.perf_counter()
            cb(event)
            if self.sync: self.sync()
            self.times[phase, f'callback {type(cb).__name__}'] += time.perf_counter() - t
        self.last = (event, time.perf_counter())

    def report(self, total):
        """Rows of (phase, what, seconds, share of the total), largest first, each transform indented under the
        batch transforms, batch creation apart from them; rows under 0.01 s left out."""
        rows = dict(self.times)
        for phase in ('train', 'valid'):
            tf = sum(v for (p, k), v in rows.items() if p == phase and k.startswith('  transform'))
            if (phase, 'batches (creation + transforms)') in rows:
                rows[phase, 'batch creation'] = rows.pop((phase, 'batches (creation + transforms)')) - tf
                rows[phase, 'batch transforms'] = tf
        top = {k: v for k, v in rows.items() if not k[1].startswith('  ')}
        top['all', 'unaccounted'] = total - sum(top.values())
        out = []
        for (p, k), v in sorted(top.items(), key=lambda r: (['train', 'valid', 'all'].index(r[0][0]), -r[1])):
            if abs(v) < 0.01: continue
            out.append((p, k, v, v / total))
            if k == 'batch transforms':
                out += [(p, k2, v2, v2 / total) for (p2, k2), v2 in sorted(rows.items(), key=lambda r: -r[1])
                        if p2 == p and k2.startswith('  ') and v2 >= 0.01]
        return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0], epilog=__doc__.split('\n', 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--data', help='folder with the KMNIST files (default data/kmnist)')
    p.add_argument('--preset', default='cpu', choices=list(h.PRESETS))
    p.add_argument('--bs', type=int)
    p.add_argument('--pct', type=float, default=1.0, help='profile this fraction of the training batches (0-1]')
    p.add_argument('--wandb', default='offline', choices=['off', 'offline'], help='W&B logging (default offline)')
    p.add_argument('--no-speedups', action='store_true', help='plain fp32 with the default threads, to compare')
    a = p.parse_args(argv)
    cfg = h.make_config('kmnist', a.preset, bs=a.bs, wandb=a.wandb)
    if a.no_speedups: cfg['speedups'] = False
    try:
        _, _, _, dls = h.load_for(cfg, a.data)
    except (FileNotFoundError, h.DataFormatError) as e:
        print(f'error: {e}', file=sys.stderr); return 1
    cb = h.start_wandb(cfg['wandb'], config=cfg, name='profile-epoch')
    learn = h.learner_for(cfg, dls, [cb])
    learn.fit_one_cycle(1, 1e-3, cbs=ShortEpochCallback(0.02, short_valid=False))  # warm up: first calls are slow
    prof = EpochProfiler(learn)
    load = open('/proc/loadavg').read().split()[:3] if os.path.exists('/proc/loadavg') else '?'
    if prof.sync: prof.sync()
    t0 = time.perf_counter()
    lr = 1e-2 if cfg['lr'] == 'auto' else float(cfg['lr'])  # the time of a step does not depend on the rate
    learn.fit_one_cycle(1, lr, cbs=ShortEpochCallback(a.pct, short_valid=False) if a.pct < 1 else None)
    if prof.sync: prof.sync()
    total = time.perf_counter() - t0
    learn._call_one = prof.call_one
    h.finish_wandb(learn)
    n_train = int(round(a.pct * len(dls.train))) * cfg['bs']
    print(f"One epoch of the {a.preset} preset ({cfg['arch']}, bs {cfg['bs']}, {n_train:,} training and "
          f"{len(dls.valid_ds):,} validation images, W&B {cfg['wandb']}, {h.speed_summary(learn)}):\n"
          f"{total:.1f} s, {n_train / total:,.0f} training images/s over the whole epoch\n")
    print(f"{'phase':6s} {'where the time goes':36s} {'seconds':>8s} {'share':>6s}")
    for phase, what, s, share in prof.report(total):
        print(f'{phase:6s} {what:36s} {s:8.2f} {share:6.1%}')
    print(f"\non {h.device_name()}, {os.cpu_count()} CPU cores, {torch.get_num_threads()} torch threads; "
          f"load average {' '.join(load)} at the start")
    return 0


if __name__ == '__main__':
    sys.exit(main())
