"""A Mac with an Apple GPU takes the measured CPU path by default, and the Apple GPU (MPS) only when asked, saying that
path is unmeasured. No Mac here: each case imports the helpers in a fresh Python whose torch says MPS is available."""
import json, os, subprocess, sys

import pytest
from conftest import ROOT

PROBE = """import functools, json, torch
mps = torch.backends.mps   # a Mac's torch says MPS is there; fastai asks it, and so do the helpers (wraps: torch's dynamo
mps.is_available, mps.is_built = (functools.wraps(f)(lambda: True) for f in (mps.is_available, mps.is_built))  # reads it)
import helpers
from fastai.torch_core import default_device
(x, y), _ = __import__('conftest').synthetic_kmnist(40, 10)
dls = helpers.kmnist_dls((x, y), list('おきすつなはまやれを'), bs=8, augment=False) if not helpers.on_gpu() else None
print(json.dumps(dict(on_gpu=helpers.on_gpu(), preset=helpers.auto_preset(), device=str(default_device()),
                      dls=str(dls.device) if dls else None)))
"""


def run(**env):
    e = {k: v for k, v in os.environ.items() if not k.startswith('KUZUSHIJI')}
    r = subprocess.run([sys.executable, '-c', PROBE], env={**e, **env, 'PYTHONPATH': f'{ROOT / "scripts"}:{ROOT / "tests"}'},
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    *said, last = r.stdout.strip().splitlines()
    return json.loads(last), '\n'.join(said)


def test_a_mac_trains_on_the_cpu_by_default():
    got, said = run()
    assert got == {'on_gpu': False, 'preset': 'cpu', 'device': 'cpu', 'dls': 'cpu'}, got
    assert said == ''


def test_the_apple_gpu_is_an_opt_in_that_says_it_is_unmeasured():
    got, said = run(KUZUSHIJI_MPS='1')
    assert got['on_gpu'] and got['preset'] == 'article' and got['device'].startswith('mps'), got
    assert said == ("KUZUSHIJI_MPS=1: training on the Apple GPU (MPS), a path this series has not measured: no time or "
                    "accuracy here is for it, and notebooks 03, 04 and 06 train the article's ResNet34 there.")


def test_without_an_apple_gpu_nothing_changes():
    r = subprocess.run([sys.executable, '-c', 'import helpers; from fastai.torch_core import defaults; '
                        'print(defaults.use_cuda, helpers.on_gpu())'], env={**os.environ, 'KUZUSHIJI_MPS': '1',
                       'PYTHONPATH': str(ROOT / 'scripts')}, capture_output=True, text=True, timeout=300)
    assert r.stdout.split() == ['None', 'False'], r.stdout + r.stderr  # fastai's own default left alone, nothing said
