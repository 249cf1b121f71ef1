"""The project's own promises: notebooks in sync with REPO_URL and their outputs with their code, the pins that
matter, export works."""
import json, re

import helpers as h
import hosted_setup
import nbsync
import pytest
from conftest import ROOT, synthetic_kmnist


def test_notebooks_in_sync_and_outputs_match_code():
    assert nbsync.main(['--check']) == 0


def test_every_notebook_starts_with_badge_and_setup():
    nbs = sorted((ROOT / 'notebooks').glob('*.ipynb'))
    assert [p.name[:2] for p in nbs] == [f'{i:02d}' for i in range(1, len(nbs) + 1)]  # numbered, no gaps
    for p in nbs:
        cells = json.loads(p.read_text())['cells']
        badges = ''.join(cells[0]['source'])
        assert badges.count(h.REPO_URL.split('github.com/')[1] + '/blob/main/notebooks/' + p.name) == 2  # Colab, Kaggle
        assert 'colab.research.google.com' in badges and 'kaggle.com/kernels/welcome' in badges
        setup = ''.join(cells[1]['source'])
        assert "'google.colab' in sys.modules" in setup and 'KAGGLE_KERNEL_RUN_TYPE' in setup and '../scripts' in setup


def test_hosted_install_keeps_the_platforms_torch():
    "Hosted notebooks install requirements.txt minus torch/torchvision/kernel packages; torch is never pinned by hand."
    want = {n: v for n, v in hosted_setup.pins().items() if n not in hosted_setup.SKIP}
    assert want['fastai'] == '2.8.8' and not any(n.startswith(('torch', 'ipykernel', 'pytest', 'playwright')) for n in want)
    assert 'torch.__version__' not in nbsync.SETUP and not re.search(r'^\s*[!%]', nbsync.SETUP, re.M)  # no magics


def test_pins():
    req = dict(l.split('==') for l in (ROOT / 'requirements.txt').read_text().splitlines() if '==' in l and not l.startswith('#'))
    assert req['fastai'] == '2.8.8' and req['fastcore'] == '2.2.12' and req['fasttransform'] == '0.0.2'
    assert not req['plum-dispatch'].startswith('2.10')


@pytest.mark.parametrize('way', ['datablock', 'tensor'])
def test_export_and_load(tmp_path, way):
    "export() pickles the DataLoaders' pipeline: plum-dispatch 2.10 broke this for DataBlock getters."
    from fastai.vision.all import accuracy, load_learner, resnet18, vision_learner
    (x, y), (xt, yt) = synthetic_kmnist(100, 10)
    dls = h.kmnist_dls((x, y), list('おきすつなはまやれを'), way=way, bs=16, device='cpu')
    learn = vision_learner(dls, resnet18, n_in=1, pretrained=False, metrics=accuracy)
    learn.export(tmp_path / 'export.pkl')
    assert (tmp_path / 'export.pkl').stat().st_size < 60e6  # no data array dragged in (resnet18 alone ~45 MB)
    pred, idx, probs = load_learner(tmp_path / 'export.pkl').predict(xt[0])
    assert pred in 'おきすつなはまやれを' and len(probs) == 10 and pred == 'おきすつなはまやれを'[int(idx)]
