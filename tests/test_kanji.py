"""Kuzushiji-Kanji: the folders read into arrays, the split's rule, the long-tail report and the three long-tail ideas,
on a small long-tailed set made here (36 classes of 1 to 40 PNGs, named by code point)."""
import io, tarfile

import numpy as np
import pytest
import torch
from conftest import KANJI_CODES, write_kanji, write_kanji_tar

import helpers as h
from helpers import kanji, longtail as lt


@pytest.fixture(scope='module')
def kanji_root(tmp_path_factory):
    root = tmp_path_factory.mktemp('kk')
    write_kanji(root)
    return root


def test_labels_are_the_characters_and_the_code_point_shows_where_the_font_has_none(kanji_root):
    paths, y, classes = kanji.kanji_files(kanji_root)
    assert classes[0] == '一' and kanji.char_of('U+4E00') == '一' and len(classes) == len(KANJI_CODES)
    assert all(p.startswith(f'{kanji.code_point(classes[i])}/') for p, i in zip(paths, y))
    ext_b = chr(0x29780)  # CJK Extension B: IPAexGothic has no glyph for it
    assert kanji.label_text('一') == '一' and kanji.label_text(ext_b) == 'U+29780'
    assert kanji.kanji_label(kanji_root / 'kkanji2' / 'U+4E01' / 'x.png') == '丁'


def test_the_split_follows_its_rule_and_is_the_same_every_time(kanji_root):
    paths, y, classes = kanji.kanji_files(kanji_root)
    part = kanji.split_parts(paths, y)
    sizes = np.bincount(y)
    for c, n in enumerate(sizes):
        mine = part[y == c]
        if n < kanji.MIN_IMAGES:  # no validation or test images; from 2 images on, one held back as the rare check
            assert (mine == 3).sum() == (n >= 2) and (mine == 0).sum() == n - (n >= 2), (n, mine)
        else:
            k = max(1, int(kanji.SHARE * n + 0.5))
            assert (mine == 2).sum() == k and (mine == 1).sum() == k, (n, np.bincount(mine))
    # the same split again, whatever the order of the files and the random state
    np.random.seed(123); torch.manual_seed(7)
    perm = np.random.permutation(len(paths))
    again = kanji.split_parts([paths[i] for i in perm], y[perm])
    assert (again == part[perm]).all()
    # each file in exactly one part
    by_part = [{p for p, q in zip(paths, part) if q == i} for i in range(4)]
    assert sum(map(len, by_part)) == len(set(paths)) == len(paths)
    assert all(not (a & b) for i, a in enumerate(by_part) for b in by_part[i + 1:])


def test_load_kanji_reads_once_then_from_its_cache_and_takes_any_size(tmp_path, monkeypatch):
    write_kanji(tmp_path, counts=[3, 6, 12], size=64)  # the official images are 64 px
    d = kanji.load_kanji(tmp_path / 'kkanji2', size=32, workers=1)
    assert d['x'].shape == (21, 32, 32) and d['x'].dtype == np.uint8 and d['classes'] == ['一', '丁', '丂']
    assert d['counts'].tolist() == [2, 4, 10]  # 3 images: one held back (rare) and (tmp_path / 'kkanji-32px.npz').is_file()
    monkeypatch.setattr(kanji, 'read_png', lambda *a: pytest.fail('read again despite the cache'))
    again = kanji.load_kanji(tmp_path, size=32)
    assert (again['x'] == d['x']).all() and (again['part'] == d['part']).all()


def test_a_stray_file_and_an_empty_class_are_left_out_with_a_sentence(tmp_path):
    write_kanji(tmp_path, counts=[3, 6])
    (tmp_path / 'kkanji2' / 'U+4E00' / 'notes.txt').write_text('hello')
    (tmp_path / 'kkanji2' / 'U+4E05').mkdir()
    said = []
    paths, y, classes = kanji.kanji_files(tmp_path, log=said.append)
    assert len(paths) == 9 and classes == ['一', '丁']
    assert said == ['Left out 1 file(s) that are not PNG images, such as U+4E00/notes.txt.',
                    'Left out 1 class folder(s) with no images: U+4E05.']


def test_a_damaged_png_is_named_in_one_sentence(tmp_path):
    write_kanji(tmp_path, counts=[3])
    (tmp_path / 'kkanji2' / 'U+4E00' / 'broken.png').write_bytes(b'\x89PNG\r\n\x1a\n' + b'\0' * 20)
    with pytest.raises(h.DataFormatError, match=r'U\+4E00/broken.png is not a readable image \(\w+\): delete it, or '
                                                 r'extract the archive again\.$'):
        kanji.load_kanji(tmp_path, workers=1)


def test_a_corrupt_or_truncated_tar_gets_one_sentence_and_leaves_nothing(tmp_path):
    good = tmp_path / 'good' / 'kkanji.tar'
    write_kanji_tar(good, counts=[4, 6])
    data = good.read_bytes()
    for name, blob in (('garbage', b'not a tar at all' * 100), ('truncated', data[:len(data) // 2 + 100])):
        dest = tmp_path / name
        dest.mkdir()
        (dest / 'kkanji.tar').write_bytes(blob)
        with pytest.raises(h.DownloadError) as e:
            h.extract_tar(dest / 'kkanji.tar', dest, quiet=True)
        msg = str(e.value)
        assert 'kkanji.tar' in msg and 'delete it and download again' in msg and '\n' not in msg, msg
        assert sorted(p.name for p in dest.iterdir()) == ['kkanji.tar'], 'nothing half-extracted is left'


def test_the_long_tail_report_counts_by_bucket():
    counts = np.array([500, 50, 5, 1])      # many, medium, few, few
    targets = np.array([0, 0, 0, 0, 1, 1, 2, 3])
    scores = np.eye(4)[[0, 0, 0, 1, 1, 0, 0, 3]]  # right: 3 of 4, 1 of 2, 0 of 1, 1 of 1
    rep = lt.long_tail_report(scores, targets, counts, k=2)
    assert rep['top1'] == pytest.approx(5 / 8) and rep['balanced'] == pytest.approx((0.75 + 0.5 + 0 + 1) / 4)
    assert rep['many'] == dict(top1=0.75, images=4, classes=1) and rep['medium'] == dict(top1=0.5, images=2, classes=1)
    assert rep['few'] == dict(top1=0.5, images=2, classes=2)
    assert list(lt.bucket_of([101, 100, 20, 19])) == ['many', 'medium', 'medium', 'few']  # the edges, named


def test_logit_adjustment_changes_nothing_with_equal_classes_and_lifts_rare_ones():
    logits = torch.randn(50, 4)
    same = lt.LogitAdjust([10, 10, 10, 10], tau=1.0)(logits)
    assert torch.allclose(same - logits, (same - logits)[0, 0].expand_as(logits))  # one shift for every logit
    assert (same.softmax(1) - logits.softmax(1)).abs().max() < 1e-6
    assert torch.equal(lt.LogitAdjust([1000, 1, 1, 1], tau=0)(logits), logits)
    skewed = lt.LogitAdjust([1000, 10, 10, 1], tau=1.0)(logits)
    assert (skewed.argmax(1) == 3).sum() >= (logits.argmax(1) == 3).sum()
    assert skewed[:, 3].sub(skewed[:, 0]).sub(logits[:, 3] - logits[:, 0]).allclose(torch.tensor(np.log(1000.), dtype=torch.float32))


def clusters(n_classes=6, per=(40, 20, 10, 5, 2, 1), dim=16, seed=0):
    "Features in tight clusters, one per class, long-tailed."
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(n_classes, dim, generator=g) * 3
    y = torch.cat([torch.full((n,), c) for c, n in enumerate(per)])
    return centres[y] + 0.3 * torch.randn(len(y), dim, generator=g), y, centres


def test_nearest_class_mean_reads_a_class_from_one_image():
    f, y, centres = clusters()
    ncm = lt.NearestMean(f, y, 6)
    assert (ncm(f).argmax(1) == y).all()
    fresh = centres + 0.3 * torch.randn(centres.shape, generator=torch.Generator().manual_seed(1))
    assert (ncm(fresh).argmax(1) == torch.arange(6)).all()  # the class with one image included


def test_classifier_retraining_learns_every_class_from_balanced_batches():
    f, y, centres = clusters()
    fv = centres + 0.3 * torch.randn(centres.shape, generator=torch.Generator().manual_seed(2))
    head = lt.retrain_classifier((f, y), (fv, torch.arange(6)), 6, epochs=20, lr=3e-2, bs=16)
    with torch.no_grad(): assert (head(fv).argmax(1) == torch.arange(6)).all()


def test_the_reject_option_keeps_the_most_confident_answers():
    probs = torch.tensor([[0.9, 0.1], [0.8, 0.2], [0.4, 0.6], [0.55, 0.45]])
    targets = torch.tensor([0, 0, 0, 1])  # right, right, wrong, wrong
    th, cov, acc = lt.reject_curve(probs, targets)
    assert cov.tolist() == [0.25, 0.5, 0.75, 1.0] and acc.tolist() == [1.0, 1.0, 2 / 3, 0.5]
    assert lt.choose_threshold(probs, targets, 0.95) == (pytest.approx(0.8), 0.5, 1.0)
