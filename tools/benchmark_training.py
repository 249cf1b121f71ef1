#!/usr/bin/env python
"""Training images per second of a model on this machine's CPU, in each configuration it can run here:
float32, channels_last, bfloat16 autocast, both, torch.compile, and one thread instead of all.

    python tools/benchmark_training.py --data data/kmnist [--arch kmnist_cnn] [--bs 128] [--out results/training.json]

A training step is forward, loss, backward and an SGD step, on real augmented batches made beforehand (the loader
is timed by benchmark_loaders.py, the whole fastai epoch by profile_epoch.py). The first configuration feeds the
model fastai's typed tensors, as fastai's loop does; the others plain tensors, as `helpers.CPUSpeedups` does. The configurations take turns,
a few steps each, several rounds, so that a neighbour's load hits them alike; the median round counts.
torch.compile's first steps compile: their time is reported apart, with the number of images after which the
faster steps pay it back. The load average is recorded with every run: other work on the machine slows it.

    python tools/benchmark_training.py --reference      # the reference workload alone: how fast is this CPU?

The reference workload is a yardstick for comparing machines, not a recipe: 250 float32 training steps (SGD) of a
5-layer CNN of width 16 with two stride-2 convolutions, plain PyTorch, batch 128 of 28x28 noise, 2 threads, the
default memory format and allocator. A time measured on one machine carries to another as a multiple of it
(RESEARCH.md, "Training speed without bfloat16")."""
import argparse, os, statistics, sys, tempfile, time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / 'scripts'))  # the helpers package, as the scripts use it
import helpers as h

CONFIGS = {  # name: (channels_last, bfloat16, compiled, threads: None for torch's default); plain tensors but the first
    "float32, fastai's tensor types": (False, False, False, None), 'float32': (False, False, False, None),
    'channels_last': (True, False, False, None),
    'bfloat16': (False, True, False, None), 'channels_last + bfloat16': (True, True, False, None),
    'channels_last, compiled': (True, False, True, None), 'channels_last, 1 thread': (True, False, False, 1),
}


def load(): return ' '.join(open('/proc/loadavg').read().split()[:3]) if os.path.exists('/proc/loadavg') else '?'


class Runner:
    "One configuration: its own copy of the model and optimizer, and a step that trains on a batch."
    def __init__(self, model_fn, cl, bf16, compiled, threads, loss_func, typed=False):
        self.model = model_fn().train()
        if cl: self.model = self.model.to(memory_format=torch.channels_last)
        self.opt = torch.optim.SGD(self.model.parameters(), lr=1e-3, momentum=0.9)
        self.fwd = torch.compile(self.model) if compiled else self.model
        self.cl, self.bf16, self.compiled, self.threads, self.loss_func = cl, bf16, compiled, threads, loss_func
        self.typed = typed  # fastai's TensorImageBW into the model, as fastai's loop does without CPUSpeedups

    def step(self, xb, yb):
        if not self.typed: xb = xb.as_subclass(torch.Tensor)  # as CPUSpeedups does (and torch.compile needs)
        if self.cl: xb = xb.contiguous(memory_format=torch.channels_last)
        with torch.autocast('cpu', dtype=torch.bfloat16, enabled=self.bf16):
            loss = self.loss_func(self.fwd(xb).float(), yb)
        loss.backward(); self.opt.step(); self.opt.zero_grad()

    def run(self, batches):
        "Seconds for these batches, with this configuration's thread count."
        default = torch.get_num_threads()
        if self.threads: torch.set_num_threads(self.threads)
        try:
            t = time.perf_counter()
            for xb, yb in batches: self.step(xb, yb)
            return time.perf_counter() - t
        finally: torch.set_num_threads(default)


REFERENCE_STEPS, REFERENCE_THREADS = 250, 2


def reference_model():
    "The reference workload's network: four 3x3 convolutions of width 16 (two of stride 2) with BatchNorm, then a linear layer."
    from torch import nn
    conv = lambda c_in, stride: [nn.Conv2d(c_in, 16, 3, stride, 1), nn.BatchNorm2d(16), nn.ReLU()]
    return nn.Sequential(*conv(1, 1), *conv(16, 2), *conv(16, 1), *conv(16, 2), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(16, 10))


def reference_seconds(steps=REFERENCE_STEPS, threads=REFERENCE_THREADS, rounds=3):
    "Seconds for the reference workload (see the module's docstring): the fastest of `rounds` runs, after a warm-up."
    default = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        torch.manual_seed(0)
        m = reference_model().train()
        opt = torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9)
        x, y = torch.randn(128, 1, 28, 28), torch.randint(0, 10, (128,))
        def run(n):
            t = time.perf_counter()
            for _ in range(n):
                torch.nn.functional.cross_entropy(m(x), y).backward(); opt.step(); opt.zero_grad()
            return time.perf_counter() - t
        run(10)
        return min(run(steps) for _ in range(rounds))
    finally: torch.set_num_threads(default)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0], epilog=__doc__.split('\n', 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--data', help='folder with the KMNIST files (default data/kmnist)')
    p.add_argument('--arch', default='kmnist_cnn', choices=list(h.ARCHS))
    p.add_argument('--bs', type=int, default=128)
    p.add_argument('--steps', type=int, default=5, help='training steps per configuration per round')
    p.add_argument('--rounds', type=int, default=5)
    p.add_argument('--threads', type=int, help="torch's thread count for the run (default: torch's choice)")
    p.add_argument('--skip', nargs='*', default=[], choices=list(CONFIGS), metavar='CONFIG',
                   help=f"configurations to leave out, of: {', '.join(repr(c) for c in CONFIGS)}")
    p.add_argument('--reference', action='store_true', help='time the reference workload only (see above)')
    p.add_argument('--out')
    a = p.parse_args(argv)
    if h.on_gpu(): print('This benchmark is for the CPU; on a GPU, see tools/benchmark_loaders.py --arch.'); return 1
    if a.reference:
        res = dict(reference_seconds=round(reference_seconds(), 2), device=h.device_name(), cpu_cores=os.cpu_count(),
                   cpu_capability=torch.backends.cpu.get_cpu_capability(), cpu_bf16=h.cpu_has_bf16(),
                   torch=torch.__version__, load_before=load())
        print(f"reference workload: {res['reference_seconds']:.1f} s ({REFERENCE_STEPS} float32 steps, batch 128, "
              f"{REFERENCE_THREADS} threads) on {res['device']}, {res['cpu_capability']} kernels; load average "
              f"{res['load_before']}")
        if a.out: h.write_json(res, a.out)
        return 0
    if a.threads: torch.set_num_threads(a.threads)
    cache = tempfile.TemporaryDirectory()  # removed at exit
    os.environ['TORCHINDUCTOR_CACHE_DIR'] = cache.name  # time a first compilation, not a hit in an earlier run's cache
    try:
        (x, y), _, classes = h.load_arrays(a.data)
    except (FileNotFoundError, h.DataFormatError) as e:
        print(f'error: {e}', file=sys.stderr); return 1
    dls = h.kmnist_dls((x, y), classes, bs=a.bs)
    it = iter(dls.train)
    batches = [next(it) for _ in range(a.steps)]
    model_fn = lambda: h.make_learner(dls, a.arch, pretrained=False).model
    res = dict(device=h.device_name(), cpu_cores=os.cpu_count(), torch_threads=torch.get_num_threads(),
               cpu_bf16_flag=h.cpu_has_bf16(), torch=torch.__version__, arch=a.arch, bs=a.bs, load_before=load(),
               images_per_second={}, compile_seconds=None)
    print(f"{a.arch}, batch {a.bs}, on {res['device']}: {res['cpu_cores']} cores, {res['torch_threads']} torch threads, "
          f"CPU says native bfloat16: {res['cpu_bf16_flag']}; load average {res['load_before']}", flush=True)
    runners = {}
    for name, (cl, bf, comp, threads) in CONFIGS.items():
        if name in a.skip: continue
        torch.manual_seed(0)
        r = runners[name] = Runner(model_fn, cl, bf, comp, threads, dls.loss_func, typed='tensor types' in name)
        t = r.run(batches[:2])  # warm-up; for torch.compile this is the compilation (forward and backward)
        if comp:
            res['compile_seconds'] = round(t, 1)
            print(f'torch.compile: first 2 steps took {t:.1f} s (compilation)', flush=True)
    times = {n: [] for n in runners}
    for _ in range(a.rounds):
        for n, r in runners.items(): times[n].append(r.run(batches))
    imgs = a.steps * a.bs
    first = next(iter(times), None)
    base = statistics.median(times[first]) if first else None
    for n, ts in times.items():
        ips = imgs / statistics.median(ts)
        res['images_per_second'][n] = round(ips)
        print(f'{n:32s} {ips:8,.0f} images/s  {base / (imgs / ips):.2f}x the speed of {first}', flush=True)
    comp = 'channels_last, compiled'
    if res['compile_seconds'] and comp in times and 'channels_last' in times:
        saved = statistics.median(times['channels_last']) - statistics.median(times[comp])
        if saved > 0:
            res['compile_pays_back_after_images'] = round(res['compile_seconds'] / saved * imgs)
            print(f"torch.compile pays back its {res['compile_seconds']} s after "
                  f"{res['compile_pays_back_after_images']:,} training images (an epoch is {len(dls.train) * a.bs:,})")
        else: print('torch.compile: no faster than channels_last here, so it never pays back its compile time')
    res['load_after'] = load()
    print(f"load average {res['load_after']} at the end")
    if a.out: h.write_json(res, a.out)
    return 0


if __name__ == '__main__':
    sys.exit(main())
