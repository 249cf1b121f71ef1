"""tools/gpu_check.py, the GPU path in one command, run here as a CPU runs it: every step in quick mode, on synthetic
KMNIST and calligraphy from a local mirror folder. What is checked is the JSON it writes, not only its exit status."""
import json, os, subprocess, sys

import pytest

import helpers as h
from conftest import ROOT, write_kmnist

STEPS = ['article', 'best', 'notebook-04', 'notebook-05']


@pytest.fixture(scope='module')
def offline_data(tmp_path_factory):
    "KMNIST's files (synthetic, with their checksums) and a mirror folder holding a calligraphy zip, as on the GPU machine."
    from test_calligraphy_data import TOP, write_zip
    from test_train import make_calligraphy_folders
    tmp = tmp_path_factory.mktemp('gpu')
    md5s = write_kmnist(tmp / 'kmnist', n_train=300, n_test=60)
    (tmp / 'md5.json').write_text(json.dumps(md5s))
    src = make_calligraphy_folders(tmp / 'src')
    entries = []
    for c in ('kaishu', 'lishu', 'xiaozhuan'):
        d = os.path.join(os.fsencode(src), c.encode())
        entries += [(TOP.encode() + f'data/{c}/'.encode() + n, open(os.path.join(d, n), 'rb').read()) for n in os.listdir(d)]
    (tmp / 'mirror').mkdir()
    write_zip(tmp / 'mirror' / h.CALLIGRAPHY_ZIP, entries)
    return tmp


def gpu_check(tmp, *args, timeout=900):
    env = {**os.environ, 'KUZUSHIJI_MD5_TABLE': str(tmp / 'md5.json'), 'TORCH_HOME': str(tmp / 'torch'),
           'KUZUSHIJI_DATA': str(tmp / 'data')}  # no ImageNet weights cached: the GPU machine's case without a mirror copy
    env.pop('KUZUSHIJI_QUICK', None)
    return subprocess.run([sys.executable, str(ROOT / 'tools' / 'gpu_check.py'), *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, env=env, cwd=tmp)


def test_every_step_runs_and_the_json_says_what_happened(offline_data):
    tmp = offline_data
    r = gpu_check(tmp, '--data', tmp / 'kmnist', '--mirror', tmp / 'mirror', '--out', tmp / 'gpu.json',
                  '--budget', 1500, '--logs', tmp / 'logs')
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    rep = json.loads((tmp / 'gpu.json').read_text(encoding='utf-8'))
    assert rep['finished'] is True and rep['mode'] == 'quick' and rep['format'] == 1
    assert rep['device'] == h.device_name() and isinstance(rep['device'], str) and rep['device']
    assert rep['gpu'] is None and rep['imagenet_weights'] == 'random'  # no GPU, no weights on the mirror
    assert {'torch', 'fastai', 'torchvision', 'nbclient'} <= set(rep['versions'])
    assert 0 < rep['seconds'] <= rep['budget_seconds'] == 1500
    assert [s['step'] for s in rep['steps']] == STEPS and all(s['status'] == 'passed' for s in rep['steps']), rep['steps']
    for s in rep['steps']:
        assert isinstance(s['seconds'], float) and s['seconds'] > 0, s
        assert 0 <= s['valid_accuracy'] <= 1, s
        assert s['weights'] == 'random', s
    article, best, nb04, nb05 = rep['steps']
    for s in (article, best):  # train.py's own results, carried over
        assert 0 <= s['test_accuracy'] <= 1 and s['trainable'] == 1.0 and s['epochs'] == 1 and s['n_train'] > 0, s
    assert best['tta'] is True and article['tta'] is False and 0 <= best['test_without_tta'] <= 1
    assert nb04['preset'] == 'quick' and 0 <= nb04['test_accuracy'] <= 1 and nb04['batch_size_picked'] in (16, 32, 64)
    assert nb05['test_accuracy'] is None and 0 <= nb05['stage1_accuracy'] <= 1
    for s in (nb04, nb05):
        assert s['slowest_cells'] and all(isinstance(t, (int, float)) for _, t in s['slowest_cells']), s
    table = r.stdout[r.stdout.index('step '):]
    assert all(f'{s} ' in table for s in STEPS) and 'quick mode' in table and str(tmp / 'gpu.json') in r.stdout
    assert {p.name for p in (tmp / 'logs').iterdir()} >= {'article.log', 'best.log', '04_train_resnet34_one_cycle.ipynb',
                                                          '05_calligraphy_progressive_resizing.ipynb'}
    assert not list(tmp.glob('*.tmp'))  # written atomically


def test_a_step_that_would_overrun_is_skipped_with_a_line(offline_data, tmp_path):
    tmp = offline_data
    r = gpu_check(tmp, '--data', tmp / 'kmnist', '--mirror', tmp / 'mirror', '--out', tmp_path / 'g.json',
                  '--budget', 5, '--steps', 'article', 'notebook-05', timeout=300)
    assert r.returncode == 2, r.stderr[-2000:]
    rep = json.loads((tmp_path / 'g.json').read_text(encoding='utf-8'))
    assert [(s['step'], s['status']) for s in rep['steps']] == [('article', 'skipped'), ('notebook-05', 'skipped')]
    assert all('s of the budget left' in s['note'] for s in rep['steps']) and rep['finished'] is True
    assert r.stdout.count('skipped: ') >= 2


@pytest.mark.parametrize('what', ['kmnist', 'calligraphy'])
def test_missing_data_stops_with_one_sentence(offline_data, tmp_path, what):
    tmp = offline_data
    data, mirror = (tmp_path, tmp / 'mirror') if what == 'kmnist' else (tmp / 'kmnist', tmp_path)
    r = gpu_check(tmp, '--data', data, '--mirror', mirror, '--out', tmp_path / 'g.json', timeout=300)
    assert r.returncode == 1 and 'Traceback' not in r.stderr and not (tmp_path / 'g.json').exists()
    said = r.stderr.strip()
    assert said.startswith('error: ') and len(said.splitlines()) == 1
    assert ('download_data.py --dataset kmnist' if what == 'kmnist' else '--subset') in said


def test_class_folders_are_packed_as_notebook_05_downloads_them(tmp_path):
    "--calligraphy: a copy of the subset as class folders becomes the zip notebook 05's download reads from a mirror."
    import gpu_check
    from test_calligraphy_data import img_bytes
    for i, c in enumerate(h.CALLIGRAPHY_CLASSES):
        (tmp_path / 'src' / c).mkdir(parents=True)
        for j in range(3): (tmp_path / 'src' / c / f'{c}_{j}.jpg').write_bytes(img_bytes(160, 200, seed=10 * i + j))
    (tmp_path / 'mirror').mkdir()
    gpu_check.pack_calligraphy(tmp_path / 'src', tmp_path / 'mirror')
    path = h.download('calligraphy', dest=tmp_path / 'data', mirror=tmp_path / 'mirror', quiet=True)
    kept = {c: len(list((path / c).iterdir())) for c in h.CALLIGRAPHY_CLASSES}
    assert kept == dict.fromkeys(h.CALLIGRAPHY_CLASSES, 3)
