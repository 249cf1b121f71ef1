"""Settings: where data and results live, quick mode, the device, versions, atomic JSON.

The bottom of the helpers: it imports no other helpers module. Set `KUZUSHIJI_DATA`, `KUZUSHIJI_OUT`,
`KUZUSHIJI_QUICK` or `KUZUSHIJI_MPS` (a Mac's Apple GPU: `choose_device`) in the environment before the first
`import helpers`; the other modules read `settings.DATA_DIR` and `settings.OUT_DIR` when they run, so tests can point
them elsewhere."""
from __future__ import annotations

import json, os, platform, warnings
from pathlib import Path

import fastai, fastcore, fasttransform
import numpy as np
import torch
from fastai.torch_core import default_device, set_seed  # noqa: F401  (set_seed: Python, NumPy and torch at once)

warnings.filterwarnings('ignore', message='`torch.jit.script` is deprecated')  # raised inside fastai, not ours

REPO_URL = 'https://github.com/kuzushiji-fastai/kuzushiji-fastai'  # badges and Colab cells come from here (tools/nbsync.py)
ROOT = Path(__file__).resolve().parents[2]
DATA_DIR = Path(os.environ.get('KUZUSHIJI_DATA', ROOT / 'data'))
OUT_DIR = Path(os.environ.get('KUZUSHIJI_OUT', ROOT))  # results/ and models/ go here (the tests point it elsewhere)
QUICK = os.environ.get('KUZUSHIJI_QUICK', '') not in ('', '0', 'false', 'False')
"Quick mode (tests, CI): small data, tiny epochs. Colab and you run the same cells at full size."

MPS_ENV = 'KUZUSHIJI_MPS'


def apple_gpu():
    "Does this machine have an Apple GPU (MPS) and no NVIDIA GPU?"
    mps = getattr(torch.backends, 'mps', None)
    return not torch.cuda.is_available() and mps is not None and mps.is_available()


def choose_device():
    """On a Mac with an Apple GPU, train on the CPU unless `KUZUSHIJI_MPS=1`. fastai would take the Apple GPU (MPS),
    and with it the series' GPU path (notebooks 03, 04 and 06 and `train.py --preset auto` would train the article's
    ResNet34), whose time and accuracy were never measured; the CPU path (the `cpu` preset) is the one measured. The
    opt-in says so. Run once, at import; returns the device fastai will use."""
    if apple_gpu():
        if os.environ.get(MPS_ENV, '') in ('', '0', 'false', 'False'): default_device(False)  # fastai: the CPU from now on
        else: print(f"{MPS_ENV}=1: training on the Apple GPU (MPS), a path this series has not measured: no time or "
                    f"accuracy here is for it, and notebooks 03, 04 and 06 train the article's ResNet34 there.")
    return default_device()


choose_device()


def on_gpu():
    """True on an NVIDIA GPU, or on an Apple GPU where `KUZUSHIJI_MPS=1` asked for it (fastai's `default_device`; see
    `choose_device`)."""
    return default_device().type in ('cuda', 'mps')


def synchronize(device):
    """Wait until a GPU has finished the work queued on it: CUDA (and an Apple GPU) run asynchronously, so a clock
    read without this times the queueing, not the work. Does nothing on a CPU, so CPU timings are unchanged."""
    device = torch.device(device)
    if device.type == 'cuda': torch.cuda.synchronize(device)
    elif device.type == 'mps': torch.mps.synchronize()


def use_fp16():
    "Mixed precision where it pays and is supported: NVIDIA GPUs."
    return torch.cuda.is_available()


def cpu_flags():
    "The CPU's feature flags as Linux lists them in /proc/cpuinfo (x86 'flags', Arm 'Features'); empty elsewhere."
    try:
        for line in open('/proc/cpuinfo'):
            if line.startswith(('flags', 'Features')): return set(line.split(':', 1)[1].split())
    except OSError: pass
    return set()


def cpu_has_bf16():
    """Does the CPU say it computes bfloat16 itself (AVX512-BF16 or AMX on x86, BF16 on Arm), and may PyTorch's
    convolution library (oneDNN) use it? Without it PyTorch emulates bfloat16, slower than float32. A virtual machine
    may hide the flag: then we stay with float32. `ONEDNN_MAX_CPU_ISA=AVX2` (with `ATEN_CPU_CAPABILITY=avx2`) keeps
    oneDNN to the instructions of a laptop without AVX-512, and then this says no, as it would on that laptop."""
    if not cpu_flags() & {'avx512_bf16', 'amx_bf16', 'bf16'}: return False
    try: return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())  # oneDNN's own answer, within its ISA limit
    except (AttributeError, RuntimeError): return True  # a build without oneDNN's check: the flag has to do


M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)
KEEP_BYTES = 1 << 30


def keep_freed_memory():
    """Let this process keep the memory it frees, on Linux with glibc: a measured speed-up of CPU training, every
    CPU alike. By default glibc hands a freed block larger than its mmap threshold (128 kB, raised on the fly up to
    32 MB) back to the operating system, so every training step maps its activations afresh and the kernel zeroes
    each page on first touch: about 10,000 page faults per step of `kmnist_cnn` at batch size 128 on 2 cores, a
    sixth of the step (RESEARCH.md, "Training speed without bfloat16"). Raising the thresholds (1 GiB) keeps freed
    blocks in the process for the next step. PyTorch's CPU performance guide gets the same from jemalloc or
    tcmalloc, which must be preloaded before Python starts; `mallopt` works from inside a running notebook. The
    process keeps its peak memory until it exits. Returns whether it applied (False on macOS, Windows, musl)."""
    if platform.system() != 'Linux' or platform.libc_ver()[0] != 'glibc': return False
    try:
        import ctypes
        libc = ctypes.CDLL('libc.so.6')
        return bool(libc.mallopt(M_MMAP_THRESHOLD, KEEP_BYTES)) and bool(libc.mallopt(M_TRIM_THRESHOLD, KEEP_BYTES))
    except (OSError, AttributeError): return False


def device_name():
    "The GPU's name, or the CPU's model name, for reports."
    if torch.cuda.is_available(): return torch.cuda.get_device_name(0)
    if default_device().type == 'mps': return 'Apple GPU (MPS)'
    try:
        for line in open('/proc/cpuinfo'):
            if line.startswith('model name'): return line.split(':', 1)[1].strip()
    except OSError: pass
    return platform.processor() or platform.machine()


def versions():
    v = dict(python=platform.python_version(), torch=torch.__version__, fastai=fastai.__version__,
             fastcore=fastcore.__version__, fasttransform=fasttransform.__version__, numpy=np.__version__)
    try:
        import wandb; v['wandb'] = wandb.__version__
    except ImportError: pass
    return v


def write_json(obj, path):
    "Write JSON atomically: a crash never leaves a half-written results file under the final name."
    path = Path(path); path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + '.tmp')
    tmp.write_text(json.dumps(obj, indent=1, ensure_ascii=False), encoding='utf-8')
    os.replace(tmp, path)
