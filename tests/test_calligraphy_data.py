"""Calligraphy data: safe zip extraction with raw GBK names, cleaning and resizing, exact skip report.

A tiny synthetic copy of the real set's faults; the zip is served from 127.0.0.1 (conftest's `http_server`).
"""
import hashlib, io, os, stat, time, zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import helpers as h

MAX = 96
TOP = f'chinese-calligraphy-classifier-fastai-{h.CALLIGRAPHY_COMMIT}/'
GBK = '楷书样本.jpg'.encode('gbk')
BAD = b'bad\xff.txt'  # neither UTF-8 nor GBK

EXPECTED_REPORT = {
    ('dup_b.jpg', 'kaishu', 'duplicate of dup_a.jpg'),
    ('page.htm', 'kaishu', 'not an image'),
    ('truncated.jpg', 'kaishu', 'truncated or corrupt image: '),
    ('cross.jpg', 'kaishu', 'same file in classes kaishu, lishu'),
    ('cross_copy.jpg', 'lishu', 'same file in classes kaishu, lishu'),
    ('link.url', 'lishu', 'not an image'),
    ('noext', 'xiaozhuan', 'not an image'),
    (repr(BAD), 'xiaozhuan', 'not an image'),
    ('readme.txt', '', 'not in a class folder'),
    ('other/', '', 'folder not in CALLIGRAPHY_CLASSES'),
}
EXPECTED_KEPT = {'kaishu': 4, 'lishu': 2, 'xiaozhuan': 2}


@pytest.fixture(autouse=True)
def _offline(monkeypatch, tmp_path):
    "No test may reach GitHub: without an explicit mirror the base is a closed local port."
    monkeypatch.delenv(h.MIRROR_ENV, raising=False)
    monkeypatch.setitem(h.HOSTS, 'calligraphy', ['http://127.0.0.1:9/'])
    monkeypatch.setattr(h.settings, 'DATA_DIR', tmp_path / 'data')


def img_bytes(w, hgt, mode='RGB', fmt='JPEG', seed=0, **kw):
    rng = np.random.default_rng(seed)
    ch = {'RGB': 3, 'RGBA': 4, 'L': None}[mode]
    a = rng.integers(0, 256, size=(hgt, w) + ((ch,) if ch else ()), dtype=np.uint8)
    if mode == 'RGBA': a[:, : w // 2, 3] = 0; a[:, w // 2:, 3] = 255  # left half fully transparent
    b = io.BytesIO(); Image.fromarray(a, mode).save(b, fmt, **kw)
    return b.getvalue()


def gif_bytes():
    "Two frames: red, then blue."
    frames = [Image.new('RGB', (50, 60), c) for c in ((255, 0, 0), (0, 0, 255))]
    b = io.BytesIO(); frames[0].save(b, 'GIF', save_all=True, append_images=frames[1:]); return b.getvalue()


def class_files():
    "{class: {name bytes: content}}: the planted faults of the real set, tiny."
    dup, cross, big = img_bytes(50, 70, seed=1), img_bytes(45, 45, seed=2), img_bytes(300, 300, seed=3)
    return {
        'kaishu': {b'a_rgb.jpg': img_bytes(60, 80, seed=4), GBK: img_bytes(70, 50, seed=5),
                   b'big.jpg': img_bytes(1200, 900, seed=6), b'dup_a.jpg': dup, b'dup_b.jpg': dup,
                   b'page.htm': b'<html><body>404</body></html>', b'truncated.jpg': big[:len(big) * 6 // 10],
                   b'cross.jpg': cross},
        'lishu': {b'gray.jpg': img_bytes(300, 200, 'L', seed=7), b'alpha.png': img_bytes(50, 40, 'RGBA', 'PNG', seed=8),
                  b'link.url': b'[InternetShortcut]\r\nURL=http://example.com/\r\n', b'cross_copy.jpg': cross},
        'xiaozhuan': {b'anim.gif': gif_bytes(), b'tiny.jpg': img_bytes(40, 40, seed=9),
                      b'noext': b'just some text, no extension', BAD: b'plain text'},
    }


@pytest.fixture
def src(tmp_path):
    root = tmp_path / 'raw'
    for c, files in class_files().items():
        (root / c).mkdir(parents=True)
        for name, data in files.items():
            with open(os.path.join(os.fsencode(root / c), name), 'wb') as f: f.write(data)  # bytes path: exact names
    (root / 'readme.txt').write_text('not a class')
    (root / 'other').mkdir(); (root / 'other' / 'x.jpg').write_bytes(img_bytes(40, 40, seed=10))
    return root


def tree_md5s(root):
    "{relative path bytes: md5} of every file below `root`, names as bytes."
    out, broot = {}, os.fsencode(root)
    for d, _, files in os.walk(broot):
        for f in files: out[os.path.relpath(os.path.join(d, f), broot)] = h.md5sum(os.path.join(d, f))
    return out


def report_set(skipped, expected=EXPECTED_REPORT):
    "(file, class, reason prefix) with the reason cut to the expected prefix's length."
    prefixes = {(f, c): r for f, c, r in expected}
    return {(s['file'], s['class'], s['reason'][:len(prefixes.get((s['file'], s['class']), s['reason']))])
            for s in skipped}


def check_prepared(res, dest, expected=EXPECTED_REPORT):
    assert res['path'] == dest and res['kept'] == EXPECTED_KEPT
    assert report_set(res['skipped'], expected) == expected and len(res['skipped']) == len(expected)
    man = {r['source']: r for r in h.cleaning._read_csv(dest / 'manifest.csv')}
    assert set(man) == {'a_rgb.jpg', '楷书样本.jpg', 'big.jpg', 'dup_a.jpg', 'gray.jpg', 'alpha.png', 'anim.gif', 'tiny.jpg'}
    for c in h.CALLIGRAPHY_CLASSES:
        outs = sorted(p.name for p in (dest / c).iterdir())
        assert outs == [f'{c}_{i:04d}.jpg' for i in range(EXPECTED_KEPT[c])]
        for p in (dest / c).iterdir():
            with Image.open(p) as im:
                assert im.format == 'JPEG' and im.mode == 'RGB' and min(im.size) <= MAX
    assert {r['file'] for r in man.values()} == {str(p.relative_to(dest)) for p in dest.rglob('*.jpg')}
    ims = {s: Image.open(dest / r['file']).convert('RGB') for s, r in man.items()}
    assert ims['big.jpg'].size == (128, 96)                      # 1200x900: shorter side brought to MAX
    assert ims['tiny.jpg'].size == (40, 40)                       # never upsampled
    assert ims['gray.jpg'].size == (144, 96)
    a = np.asarray(ims['alpha.png'])
    assert a.shape == (40, 50, 3) and a[:, :16].min() >= 240       # transparent half became white
    g = np.asarray(ims['anim.gif']).reshape(-1, 3).mean(0)
    assert g[0] > 200 and g[2] < 60                                # first frame (red), not the second
    assert int(man['big.jpg']['width']) == 128 and int(man['big.jpg']['height']) == 96
    assert man['dup_a.jpg']['source_md5'] == hashlib.md5(class_files()['kaishu'][b'dup_a.jpg']).hexdigest()
    df = h.calligraphy_report(dest)
    assert list(df.columns) == ['file', 'class', 'reason'] and len(df) == len(expected)
    assert report_set(df.to_dict('records'), expected) == expected
    assert not dest.with_name(dest.name + '.tmp').exists()


def test_prepare_exact_report_and_outputs(src, tmp_path):
    before = tree_md5s(src)
    assert GBK in os.listdir(os.fsencode(src / 'kaishu'))
    dest = tmp_path / 'prepared'
    res = h.prepare(src, dest, max_side=MAX, quiet=True)
    check_prepared(res, dest)
    assert tree_md5s(src) == before                                 # originals untouched, none added or removed


def test_prepare_idempotent_and_force(src, tmp_path, monkeypatch):
    dest = tmp_path / 'prepared'
    first = h.prepare(src, dest, max_side=MAX, quiet=True)
    def boom(*a, **k): raise AssertionError('decoded again')
    with monkeypatch.context() as m:
        m.setattr(Image, 'open', boom)
        t0 = time.time()
        again = h.prepare(src, dest, max_side=MAX, quiet=True)
        assert time.time() - t0 < 1
    assert again['kept'] == first['kept'] and again['skipped'] == first['skipped'] and again['path'] == dest
    (dest / 'stale.txt').write_text('x')
    forced = h.prepare(src, dest, max_side=MAX, force=True, quiet=True)
    assert forced['skipped'] == first['skipped'] and not (dest / 'stale.txt').exists()
    assert not dest.with_name('prepared.tmp').exists() and not dest.with_name('prepared.old').exists()


def test_prepare_crash_leaves_nothing(src, tmp_path, monkeypatch):
    def boom(*a, **k): raise RuntimeError('disk full')
    monkeypatch.setattr(h.cleaning, '_write_csv', boom)
    dest = tmp_path / 'prepared'
    with pytest.raises(RuntimeError): h.prepare(src, dest, max_side=MAX, quiet=True)
    assert not dest.exists() and not dest.with_name('prepared.tmp').exists()


def test_prepare_refuses_overlapping_folders(src):
    for dest in (src, src / 'out', src.parent):
        with pytest.raises(ValueError): h.prepare(src, dest, quiet=True)


# ---------------------------------------------------------------------------------------------
# Zips
# ---------------------------------------------------------------------------------------------
class RawZipInfo(zipfile.ZipInfo):
    "Stores the name's cp437 code points as bytes and no UTF-8 flag, as old Windows zippers (and GBK names) do."
    def _encodeFilenameFlags(self): return self.filename.encode('cp437'), self.flag_bits & ~0x800


def write_zip(path, entries):
    "`entries`: (name bytes, content, or 'link' for a symlink entry)."
    with zipfile.ZipFile(path, 'w') as zf:
        for name, data in entries:
            zi = RawZipInfo(name.decode('cp437'))
            zi.compress_type = zipfile.ZIP_DEFLATED
            if data == 'link':
                zi.create_system, zi.external_attr, data = 3, (stat.S_IFLNK | 0o777) << 16, b'/etc/passwd'
            else:
                zi.external_attr = (stat.S_IFREG | 0o644) << 16
            zf.writestr(zi, data)
    return path


def repo_zip(path):
    "A zip laid out like GitHub's archive of the repository, with the fixture's class folders."
    t = TOP.encode()
    entries = [(t + b'README.md', b'# readme'), (t + b'nbs/x.ipynb', b'{}')]
    for c, files in class_files().items():
        entries += [(t + f'data/{c}/'.encode() + n, d) for n, d in files.items()]
    entries += [(t + b'data/other/x.txt', b'x')]
    return write_zip(path, entries)


def test_extract_zip_decodes_gbk_names(tmp_path):
    z = repo_zip(tmp_path / 'a.zip')
    with zipfile.ZipFile(z) as zf:
        gbk = [i for i in zf.infolist() if i.filename.endswith('.jpg') and not i.filename.isascii()]
        assert len(gbk) == 1 and not gbk[0].flag_bits & 0x800     # realistic: raw GBK bytes, no UTF-8 flag
    dest = h.extract_zip(z, tmp_path / 'raw', quiet=True)
    assert sorted(os.listdir(dest)) == sorted(h.CALLIGRAPHY_CLASSES)  # README, nbs/ and data/other/ left out
    for c, files in class_files().items():
        # readable UTF-8 names (GBK decoded, undecodable bytes as their repr): every file system takes them
        assert sorted(os.listdir(dest / c)) == sorted(h.readable(n) for n in files)
        for n, d in files.items(): assert (dest / c / h.readable(n)).read_bytes() == d
    marker = dest / 'kaishu' / 'a_rgb.jpg'
    marker.write_bytes(b'changed')
    h.extract_zip(z, dest, quiet=True)                            # already there: nothing rewritten
    assert marker.read_bytes() == b'changed'
    h.extract_zip(z, dest, force=True, quiet=True)
    assert marker.read_bytes() == class_files()['kaishu'][b'a_rgb.jpg']
    assert not (dest / '.extracting').exists()


@pytest.mark.parametrize('bad', [
    (b'../evil.jpg', b'x'), (TOP.encode() + b'data/kaishu/../../../evil.jpg', b'x'),
    (b'/tmp/evil.jpg', b'x'), (b'\\evil.jpg', b'x'), (b'C:/evil.jpg', b'x'),
    (TOP.encode() + b'data/kaishu/link.jpg', 'link')], ids=['dotdot', 'dotdot-inside', 'absolute', 'backslash',
                                                            'drive', 'symlink'])
def test_extract_zip_refuses_unsafe(tmp_path, bad):
    z = write_zip(tmp_path / 'bad.zip', [(TOP.encode() + b'data/kaishu/ok.jpg', b'ok'), bad])
    work = tmp_path / 'work'; work.mkdir()
    with pytest.raises(h.DownloadError, match='refusing'):
        h.extract_zip(z, work / 'raw', quiet=True)
    assert list(work.iterdir()) == []                              # nothing written at all
    assert not list(tmp_path.rglob('evil*'))


def test_extract_zip_not_a_zip(tmp_path):
    p = tmp_path / 'x.zip'; p.write_bytes(b'<html>rate limited</html>')
    with pytest.raises(h.DownloadError, match='not a readable zip'):
        h.extract_zip(p, tmp_path / 'raw', quiet=True)
    z = write_zip(tmp_path / 'y.zip', [(b'something/else.txt', b'x')])
    with pytest.raises(h.DownloadError, match='no data/<class>/ folders'):
        h.extract_zip(z, tmp_path / 'raw', quiet=True)
    assert not (tmp_path / 'raw').exists()


# ---------------------------------------------------------------------------------------------
# The whole chain, over HTTP
# ---------------------------------------------------------------------------------------------
def test_download_calligraphy_end_to_end(tmp_path, http_server, monkeypatch):
    served = tmp_path / 'served'; served.mkdir()
    repo_zip(served / h.CALLIGRAPHY_ZIP)
    srv = http_server(served)
    dest = tmp_path / 'calligraphy'
    out = h.download('calligraphy', dest=dest, mirror=srv.url, max_side=MAX, quiet=True)
    assert out == dest / 'prepared' and (dest / h.CALLIGRAPHY_ZIP).is_file()
    assert [p for p, _ in srv.requests] == ['/' + h.CALLIGRAPHY_ZIP]
    assert '楷书样本.jpg' in os.listdir(dest / 'raw' / 'kaishu')
    res = h.prepare(dest / 'raw', out, quiet=True)                # the saved result
    check_prepared(res, out, {r for r in EXPECTED_REPORT if r[1]})  # only class folders are extracted
    def boom(*a, **k): raise AssertionError('decoded again')
    monkeypatch.setattr(Image, 'open', boom)
    assert h.download('calligraphy', dest=dest, mirror=srv.url, quiet=True) == out
    assert len(srv.requests) == 1                                  # no network the second time


def test_download_calligraphy_env_mirror_and_errors(tmp_path, http_server, monkeypatch):
    assert h.downloads._mirror_bases('calligraphy') == ['http://127.0.0.1:9/']  # (patched) default: GitHub's archive folder
    assert h.CALLIGRAPHY_URL.startswith('https://github.com/wayofnumbers/chinese-calligraphy-classifier-fastai/archive/')
    empty = tmp_path / 'empty'; empty.mkdir()
    srv = http_server(empty)
    monkeypatch.setenv(h.MIRROR_ENV, srv.url)                      # the env var is the only place tried
    with pytest.raises(h.DownloadError) as e:
        h.download('calligraphy', dest=tmp_path / 'c', quiet=True)
    msg = str(e.value)
    assert 'HTTP 404' in msg and '--dataset calligraphy' in msg and 'kmnist' not in msg.lower()
    assert srv.requests == [('/' + h.CALLIGRAPHY_ZIP, None)]
    assert not (tmp_path / 'c' / 'prepared').exists()
