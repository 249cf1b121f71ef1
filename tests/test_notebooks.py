"""Every notebook, top to bottom, in quick mode: tiny synthetic data served from 127.0.0.1, CPU, no internet.

The cells are the ones Colab runs at full size; `KUZUSHIJI_QUICK=1` only shrinks data and epochs.
Each test checks what the notebook showed, not just that it ran."""
import json, re
from pathlib import Path

import pytest
from conftest import write_kmnist
from nbrun import NOTEBOOKS, images, run, text


@pytest.fixture(scope='module')
def nb_env(tmp_path_factory):
    "Environment for a quick notebook run: a local mirror of synthetic KMNIST, its checksums, a scratch data dir."
    import http.server, threading
    from conftest import _Handler
    tmp = tmp_path_factory.mktemp('nb')
    md5s = write_kmnist(tmp / 'mirror', n_train=300, n_test=60)
    (tmp / 'md5.json').write_text(json.dumps(md5s))
    srv = http.server.ThreadingHTTPServer(('127.0.0.1', 0), _Handler)
    srv.root, srv.ranges, srv.requests, srv.cut_after = str(tmp / 'mirror'), True, [], {}
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield {'KUZUSHIJI_QUICK': '1', 'KUZUSHIJI_DATA': str(tmp / 'data'),
           'KUZUSHIJI_MIRROR': f'http://127.0.0.1:{srv.server_address[1]}/',
           'KUZUSHIJI_MD5_TABLE': str(tmp / 'md5.json'), 'WANDB_MODE': 'offline', 'WANDB_DIR': str(tmp),
           'WANDB_SILENT': 'true', 'MPLBACKEND': 'module://matplotlib_inline.backend_inline'}
    srv.shutdown(); srv.server_close()


def test_01_get_kmnist(nb_env):
    nb = run(NOTEBOOKS / '01_get_kuzushiji_mnist.ipynb', nb_env)
    dl = text(nb, 'download')
    assert dl.count('md5 verified') == 9, dl  # 5 npz-format files + 4 idx files (the class map is shared)
    assert 'already here, verified' in text(nb, 'download-again')
    for tag in ('files', 'files-mnist'):
        assert text(nb, tag).count('True') == 5 and 'False' not in text(nb, tag)
    assert '(300, 28, 28), (300,), (60, 28, 28), (60,)' in text(nb, 'shapes')
    assert text(nb, 'same').strip() == 'True'
    counts = text(nb, 'counts')
    assert all(c in counts for c in 'おきすつなはまやれを') and 'tsu' in counts and '30 ' in counts
    grid = images(nb, 'grid')
    assert len(grid) == 1 and len(grid[0]) > 20_000  # a real figure, not an empty canvas
    assert not list((Path(nb_env['KUZUSHIJI_DATA']) / 'kmnist').glob('*.part'))


def test_02_dataloaders(nb_env):
    if not (Path(nb_env['KUZUSHIJI_DATA']) / 'kmnist').exists():  # notebook 02 uses what 01 downloaded
        run(NOTEBOOKS / '01_get_kuzushiji_mnist.ipynb', nb_env)
    nb = run(NOTEBOOKS / '02_numpy_to_dataloaders.ipynb', nb_env)
    assert text(nb, 'split').strip() == '(270, 30)'
    assert "['お', 'き', 'す', 'つ', 'な', 'は', 'ま', 'や', 'れ', 'を']" in text(nb, 'datablock')
    batch = text(nb, 'batch')
    assert 'torch.Size([128, 1, 28, 28]), torch.Size([128])' in batch
    mean, std = map(float, re.search(r'mean (-?[\d.]+), std ([\d.]+)', batch).groups())
    assert abs(mean) < 0.3 and 0.7 < std < 1.3, batch  # normalised
    for tag in ('show_batch', 'balance', 'fast'):
        assert len(images(nb, tag)) == 1, tag
    speeds = dict(re.findall(r"'(\w+)': '([\d,]+) images/s'", text(nb, 'speed')))
    assert set(speeds) == {'datablock', 'tensor'}
    assert text(nb, 'test').strip() == '60'
