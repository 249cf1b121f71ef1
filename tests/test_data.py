"""Loading (npz, MNIST idx, class map) with clear errors, the seeded split, and the fastai DataLoaders."""
import gzip
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import CLASSMAP, idx_bytes, synthetic_kmnist

import helpers as h

CLASSES = list('おきすつなはまやれを')


@pytest.fixture(scope='module')
def arrays():
    "Synthetic KMNIST (200 train, 50 test); the test images carry a mark no training image has."
    (xtr, ytr), (xte, yte) = synthetic_kmnist(200, 50)
    xtr[:, 27, 27] = 0; xte[:, 27, 27] = 255
    return (xtr, ytr), (xte, yte)


# ---------------------------------------------------------------------------------------------
# loaders
# ---------------------------------------------------------------------------------------------
def test_load_npz(kmnist_folder):
    folder, _ = kmnist_folder
    (xtr, ytr), (xte, yte) = synthetic_kmnist(200, 50)
    x = h.load_npz(folder / 'kmnist-train-imgs.npz')
    y = h.load_npz(folder / 'kmnist-train-labels.npz')
    assert x.shape == (200, 28, 28) and x.dtype == np.uint8 and np.array_equal(x, xtr)
    assert y.shape == (200,) and y.dtype == np.uint8 and np.array_equal(y, ytr)
    assert np.array_equal(h.load_npz(folder / 'kmnist-test-labels.npz'), yte)


def test_load_idx_gz_and_plain(kmnist_folder, tmp_path):
    folder, _ = kmnist_folder
    (xtr, ytr), (xte, yte) = synthetic_kmnist(200, 50)
    x = h.load_idx(folder / 'train-images-idx3-ubyte.gz')
    y = h.load_idx(folder / 't10k-labels-idx1-ubyte.gz')
    assert x.shape == (200, 28, 28) and x.dtype == np.uint8 and np.array_equal(x, xtr)
    assert y.shape == (50,) and np.array_equal(y, yte)
    plain = tmp_path / 't10k-images-idx3-ubyte'
    plain.write_bytes(gzip.decompress((folder / 't10k-images-idx3-ubyte.gz').read_bytes()))
    assert np.array_equal(h.load_idx(plain), xte)


def test_load_classmap(kmnist_folder, tmp_path):
    folder, _ = kmnist_folder
    assert h.load_classmap(folder / 'kmnist_classmap.csv') == CLASSES
    # rows out of order are put in label order
    head, *rows = CLASSMAP.strip().split('\n')
    p = tmp_path / 'shuffled.csv'
    p.write_text('\n'.join([head, *rows[::-1]]) + '\n', encoding='utf-8')
    assert h.load_classmap(p) == CLASSES


def test_load_classmap_wrong_columns(tmp_path):
    p = tmp_path / 'kmnist_classmap.csv'
    p.write_text('a,b\n1,2\n')
    with pytest.raises(h.DataFormatError, match='index, codepoint, char'):
        h.load_classmap(p)


@pytest.mark.parametrize('fmt', ['npz', 'mnist', None])
def test_load_arrays_formats_agree(kmnist_folder, fmt):
    folder, _ = kmnist_folder
    (xtr, ytr), (xte, yte) = synthetic_kmnist(200, 50)
    (a, b), (c, d), classes = h.load_arrays(folder, fmt=fmt)
    for got, want in ((a, xtr), (b, ytr), (c, xte), (d, yte)):
        assert got.dtype == np.uint8 and np.array_equal(got, want)
    assert classes == CLASSES


def test_load_arrays_detects_mnist_format(kmnist_folder):
    folder, _ = kmnist_folder
    for p in folder.glob('*.npz'): p.unlink()
    (xtr, _), (_, yte), classes = h.load_arrays(folder)
    assert np.array_equal(xtr, synthetic_kmnist(200, 50)[0][0])
    assert np.array_equal(yte, synthetic_kmnist(200, 50)[1][1])


# ---------------------------------------------------------------------------------------------
# clear errors for broken files
# ---------------------------------------------------------------------------------------------
def test_truncated_gz(kmnist_folder):
    folder, _ = kmnist_folder
    p = folder / 'train-images-idx3-ubyte.gz'
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    with pytest.raises(h.DataFormatError, match='truncated') as e:
        h.load_idx(p)
    assert p.name in str(e.value)
    with pytest.raises(h.DataFormatError):
        h.load_arrays(folder, fmt='mnist')


# Regression, fixed (load_idx): a .gz whose deflate data is damaged raises zlib.error, which is neither OSError nor
# EOFError, so it escapes as a raw zlib.error instead of a DataFormatError.
def test_corrupt_gz(kmnist_folder):
    folder, _ = kmnist_folder
    p = folder / 'train-labels-idx1-ubyte.gz'
    b = bytearray(p.read_bytes()); b[10] = 0xFF  # first byte of the deflate stream: an invalid block type
    p.write_bytes(bytes(b))
    with pytest.raises(h.DataFormatError, match='download again'):
        h.load_idx(p)


@pytest.mark.parametrize('gz', [False, True])
def test_truncated_idx_body(tmp_path, gz):
    x = np.arange(5 * 28 * 28, dtype=np.uint8).reshape(5, 28, 28) % 251
    data = idx_bytes(x)[:-100]
    p = tmp_path / ('train-images-idx3-ubyte' + ('.gz' if gz else ''))
    p.write_bytes(gzip.compress(data) if gz else data)
    with pytest.raises(h.DataFormatError, match=r'\(5, 28, 28\).*truncated'):
        h.load_idx(p)


def test_not_an_idx_file(tmp_path):
    p = tmp_path / 'train-images-idx3-ubyte'
    p.write_bytes(b'<html>404 Not Found</html>')
    with pytest.raises(h.DataFormatError, match='not an MNIST idx file'):
        h.load_idx(p)
    p.write_bytes(bytes([0, 0, 8, 3, 0, 0, 0, 5, 0, 0]))  # 3 dimensions announced, 1.5 given
    with pytest.raises(h.DataFormatError, match='header is truncated'):
        h.load_idx(p)


def test_npz_images_saved_2d(kmnist_folder):
    folder, _ = kmnist_folder
    (xtr, _), _ = synthetic_kmnist(200, 50)
    np.savez_compressed(folder / 'kmnist-train-imgs.npz', xtr.reshape(200, 784))
    with pytest.raises(h.DataFormatError, match=r'3 dimensions, got shape \(200, 784\)'):
        h.load_npz(folder / 'kmnist-train-imgs.npz')
    with pytest.raises(h.DataFormatError, match='kmnist-train-imgs.npz'):
        h.load_arrays(folder, fmt='npz')


def test_npz_wrong_dtype(tmp_path):
    p = tmp_path / 'kmnist-train-labels.npz'
    np.savez(p, np.arange(10, dtype=np.int64))
    with pytest.raises(h.DataFormatError, match='uint8'):
        h.load_npz(p)


@pytest.mark.parametrize('content', [b'this is not a zip file at all' * 10, 'truncated'])
def test_not_an_npz(kmnist_folder, content):
    folder, _ = kmnist_folder
    p = folder / 'kmnist-test-imgs.npz'
    p.write_bytes(p.read_bytes()[:300] if content == 'truncated' else content)
    with pytest.raises(h.DataFormatError, match='not a readable .npz') as e:
        h.load_npz(p)
    assert p.name in str(e.value)


def test_missing_file_says_download(tmp_path):
    with pytest.raises(FileNotFoundError, match='download_data.py'):
        h.load_npz(tmp_path / 'kmnist-train-imgs.npz')
    with pytest.raises(FileNotFoundError, match='download_data.py'):
        h.load_idx(tmp_path / 'train-images-idx3-ubyte.gz')


@pytest.mark.parametrize('fmt', ['npz', 'mnist'])
def test_label_image_count_mismatch(kmnist_folder, fmt):
    folder, _ = kmnist_folder
    (_, ytr), _ = synthetic_kmnist(200, 50)
    if fmt == 'npz': np.savez_compressed(folder / 'kmnist-train-labels.npz', ytr[:-1])
    else: (folder / 'train-labels-idx1-ubyte.gz').write_bytes(gzip.compress(idx_bytes(ytr[:-1])))
    with pytest.raises(h.DataFormatError, match='200 images but .* 199 labels'):
        h.load_arrays(folder, fmt=fmt)


def test_label_without_class(kmnist_folder):
    folder, _ = kmnist_folder
    _, (_, yte) = synthetic_kmnist(200, 50)
    yte = yte.copy(); yte[3] = 10
    np.savez_compressed(folder / 'kmnist-test-labels.npz', yte)
    with pytest.raises(h.DataFormatError, match='label 10 has no class.*10 classes'):
        h.load_arrays(folder, fmt='npz')


# ---------------------------------------------------------------------------------------------
# split
# ---------------------------------------------------------------------------------------------
def test_split_indices():
    t, v = h.split_indices(1000, 0.1, seed=42)
    assert len(v) == 100 and len(t) == 900
    assert np.intersect1d(t, v).size == 0
    assert np.array_equal(np.sort(np.concatenate([t, v])), np.arange(1000))
    assert np.all(np.diff(t) > 0) and np.all(np.diff(v) > 0)
    t2, v2 = h.split_indices(1000, 0.1, seed=42)
    assert np.array_equal(t, t2) and np.array_equal(v, v2)
    _, v3 = h.split_indices(1000, 0.1, seed=1)
    assert not np.array_equal(v, v3)
    assert not np.array_equal(v, np.arange(900, 1000)) and not np.array_equal(v, np.arange(100))  # random, not a slice


# ---------------------------------------------------------------------------------------------
# DataLoaders
# ---------------------------------------------------------------------------------------------
def normalised(x, stats):
    m, s = stats
    return (torch.as_tensor(x).float() / 255 - m) / s


def cat(dl):
    xs, ys = zip(*[(b[0].cpu(), b[1].cpu()) for b in dl])
    return torch.cat(xs), torch.cat(ys)


def match_fraction(imgs, raw):
    "Fraction of `imgs` (N,1,28,28) equal (to float error) to one of `raw` (M,28,28)."
    d = (imgs[:, None, 0] - raw[None]).abs().flatten(2).amax(-1)  # (N, M)
    return (d.min(1).values < 1e-4).float().mean().item()


@pytest.mark.parametrize('way', ['tensor', 'datablock'])
def test_kmnist_dls(arrays, way):
    (xtr, ytr), (xte, yte) = arrays
    bs = 16
    dls = h.kmnist_dls((xtr, ytr), CLASSES, way=way, bs=bs, seed=42)
    t_idx, v_idx = h.split_indices(len(xtr), 0.1, 42)
    assert list(dls.vocab) == CLASSES
    # statistics from the training split only
    mean = xtr[t_idx].astype(np.float64).mean() / 255
    assert dls.stats[0] == pytest.approx(mean, rel=1e-4)
    assert dls.stats[1] == pytest.approx((xtr[t_idx] / 255).std(ddof=1), rel=1e-3)
    xb, yb = dls.one_batch()
    assert tuple(xb.shape) == (bs, 1, 28, 28) and xb.dtype == torch.float32
    assert tuple(yb.shape) == (bs,) and yb.min() >= 0 and yb.max() < 10
    assert abs(xb.mean().item()) < 0.5 and 0.5 < xb.std().item() < 1.5  # normalised
    # validation: exactly the held-out images, normalised, in order, no augmentation
    xv, yv = cat(dls.valid)
    assert tuple(xv.shape) == (len(v_idx), 1, 28, 28)
    assert torch.allclose(xv[:, 0], normalised(xtr[v_idx], dls.stats), atol=1e-4)
    assert np.array_equal(yv.numpy(), ytr[v_idx])
    # training: augmented (nearly no image equals a raw one)
    xt, yt = cat(dls.train)
    assert len(xt) == (len(t_idx) // bs) * bs
    assert match_fraction(xt, normalised(xtr[t_idx], dls.stats)) < 0.1
    # the test set is not in there: train + valid items are the training set, none has the test mark
    if way == 'tensor':
        items = torch.cat([dls.train.dataset.x, dls.valid.dataset.x]).numpy()
    else:
        items = np.stack([np.asarray(o[0]) for o in [*dls.train_ds.items, *dls.valid_ds.items]])
    assert len(items) == len(xtr) and not (items[:, 27, 27] == 255).any()
    assert sorted(a.tobytes() for a in items) == sorted(a.tobytes() for a in xtr)


@pytest.mark.parametrize('way', ['tensor', 'datablock'])
def test_kmnist_dls_without_augmentation(arrays, way):
    "The control for the augmentation check above: without it every training image is a raw one."
    (xtr, ytr), _ = arrays
    dls = h.kmnist_dls((xtr, ytr), CLASSES, way=way, bs=16, augment=False)
    t_idx, _ = h.split_indices(len(xtr))
    xt, yt = cat(dls.train)
    assert match_fraction(xt, normalised(xtr[t_idx], dls.stats)) == 1.0


def test_kmnist_dls_bad_way(arrays):
    with pytest.raises(ValueError, match='way must be'):
        h.kmnist_dls(arrays[0], CLASSES, way='pandas')


@pytest.mark.parametrize('way', ['tensor', 'datablock'])
@pytest.mark.parametrize('bs', [None, 7])
def test_test_dl_all_items_in_order(arrays, way, bs):
    (xtr, ytr), (xte, yte) = arrays
    dls = h.kmnist_dls((xtr, ytr), CLASSES, way=way, bs=16)
    dl = h.test_dl(dls, (xte, yte), bs=bs)
    if bs: assert len(list(dl)) == -(-len(xte) // bs)
    x, y = cat(dl)
    assert tuple(x.shape) == (len(xte), 1, 28, 28)
    assert torch.allclose(x[:, 0], normalised(xte, dls.stats), atol=1e-4)  # in order, not augmented
    assert np.array_equal(y.numpy(), yte)


# ---------------------------------------------------------------------------------------------
# ArrayDataset.from_items (what predict / test_dl pass)
# ---------------------------------------------------------------------------------------------
def test_from_items_accepts_arrays_pil_paths_and_pairs(arrays, tmp_path):
    _, (xte, yte) = arrays
    x = xte[:4]
    png = tmp_path / 'a.png'; Image.fromarray(x[3]).save(png)
    items = [x[0], Image.fromarray(x[1]), Image.fromarray(x[2]).convert('RGB'), png]
    ds = h.ArrayDataset.from_items(items, CLASSES)
    assert ds.y is None and len(ds) == 4 and ds.x.dtype == torch.uint8
    assert np.array_equal(ds.x.numpy(), x)
    assert tuple(ds[0][0].shape) == (1, 28, 28) and len(ds[0]) == 1
    # (image, char) and (image, index) pairs; a (1, H, W) array
    pairs = [(x[0][None], CLASSES[yte[0]]), (Image.fromarray(x[1]), CLASSES[yte[1]]), (x[2], int(yte[2]))]
    ds = h.ArrayDataset.from_items(pairs, CLASSES, with_labels=True)
    assert np.array_equal(ds.x.numpy(), x[:3])
    assert ds.y.tolist() == [int(v) for v in yte[:3]]
    xb, yb = ds[torch.tensor([0, 2])]
    assert tuple(xb.shape) == (2, 1, 28, 28) and yb.tolist() == [int(yte[0]), int(yte[2])]
    assert len(h.ArrayDataset.from_items([], CLASSES)) == 0
    with pytest.raises(ValueError, match='grayscale'):
        h.ArrayDataset.from_items([np.zeros((28, 28, 3), np.uint8)])


def test_dls_test_dl_from_raw_items(arrays):
    "fastai's own `dls.test_dl(items)` (used by predict) on the fast DataLoaders: PIL images and (image, char) pairs."
    (xtr, ytr), (xte, yte) = arrays
    dls = h.kmnist_dls((xtr, ytr), CLASSES, bs=16)
    dl = dls.test_dl([Image.fromarray(a) for a in xte[:5]])
    (xb,) = dl.one_batch()
    assert torch.allclose(xb.cpu()[:, 0], normalised(xte[:5], dls.stats), atol=1e-4)
    dl = dls.test_dl([(a, CLASSES[c]) for a, c in zip(xte[:5], yte[:5])], with_labels=True)
    xb, yb = dl.one_batch()
    assert yb.cpu().tolist() == [int(c) for c in yte[:5]]
