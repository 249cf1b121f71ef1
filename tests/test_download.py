"""Downloads: verified, resumable, idempotent, atomic; clear errors; safe tar extraction.

Everything is served from 127.0.0.1 (conftest's `http_server`) or a local folder; nothing touches the internet.
"""
import functools, hashlib, io, json, os, socket, subprocess, sys, tarfile, time
from pathlib import Path

import pytest

from conftest import ROOT, md5

import helpers as h

NPZ = [n for n, _ in h.FILES['kmnist']['npz']]
MNIST = [n for n, _ in h.FILES['kmnist']['mnist']]
BIG = 'kmnist-train-imgs.npz'  # the biggest synthetic file (about 100 kB): room to cut and resume
SCRIPT = ROOT / 'scripts' / 'download_data.py'


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    "No test may fall back to the official host: without an explicit mirror there is nowhere to go."
    monkeypatch.delenv(h.MIRROR_ENV, raising=False)
    monkeypatch.delenv('KUZUSHIJI_MD5_TABLE', raising=False)
    monkeypatch.setattr(h.downloads, 'KNOWN_MIRRORS', [])


@pytest.fixture
def served(kmnist_folder, http_server):
    folder, md5s = kmnist_folder
    return folder, md5s, http_server(folder)


def leftovers(dest):
    return sorted(p.name for p in Path(dest).rglob('*.part'))


def closed_port():
    s = socket.socket(); s.bind(('127.0.0.1', 0)); port = s.getsockname()[1]; s.close()
    return port


# ---------------------------------------------------------------------------------------------
# success, idempotence, resume
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize('fmt,names', [('npz', NPZ), ('mnist', MNIST)])
def test_download_both_formats_verified_under_final_names(served, tmp_path, fmt, names):
    folder, md5s, srv = served
    dest = tmp_path / 'dest'
    out = h.download('kmnist', fmt, dest=dest, mirror=srv.url, md5s=md5s, quiet=True)
    assert out == dest
    assert sorted(p.name for p in dest.iterdir()) == sorted(names)
    for n in names: assert md5(dest / n) == md5s[n] == md5(folder / n)
    assert leftovers(dest) == []
    assert sorted(p for p, _ in srv.requests) == sorted('/' + n for n in names)  # one request per file


def test_rerun_makes_no_requests_for_verified_files(served, tmp_path):
    folder, md5s, srv = served
    dest = tmp_path / 'dest'
    h.download('kmnist', 'npz', dest=dest, mirror=srv.url, md5s=md5s, quiet=True)
    assert len(srv.requests) == len(NPZ)
    mtimes = {p.name: p.stat().st_mtime_ns for p in dest.iterdir()}
    srv.requests.clear()
    h.download('kmnist', 'npz', dest=dest, mirror=srv.url, md5s=md5s, quiet=True)
    assert srv.requests == []
    assert {p.name: p.stat().st_mtime_ns for p in dest.iterdir()} == mtimes
    # --force does fetch again
    h.download('kmnist', 'npz', dest=dest, mirror=srv.url, md5s=md5s, quiet=True, force=True)
    assert len(srv.requests) == len(NPZ)


def test_resume_from_partial_file_uses_range(served, tmp_path):
    folder, md5s, srv = served
    dest = tmp_path / 'dest'; dest.mkdir()
    data = (folder / BIG).read_bytes()
    n = len(data) // 3
    (dest / f'{BIG}.part').write_bytes(data[:n])
    out = h.download_file(BIG, md5s[BIG], dest, mirror=srv.url, quiet=True)
    assert out == dest / BIG
    assert srv.requests == [(f'/{BIG}', f'bytes={n}-')]
    assert md5(out) == md5s[BIG]
    assert leftovers(dest) == []


def test_resume_when_server_ignores_range_starts_again(kmnist_folder, http_server, tmp_path):
    folder, md5s = kmnist_folder
    srv = http_server(folder, ranges=False)
    dest = tmp_path / 'dest'; dest.mkdir()
    data = (folder / BIG).read_bytes()
    (dest / f'{BIG}.part').write_bytes(data[:1000])
    out = h.download_file(BIG, md5s[BIG], dest, mirror=srv.url, quiet=True)
    assert srv.requests == [(f'/{BIG}', 'bytes=1000-')]  # asked, got 200 with the whole file: not appended twice
    assert out.read_bytes() == data
    assert leftovers(dest) == []


def test_transfer_cut_midway_is_retried_and_resumed_in_one_call(served, tmp_path):
    folder, md5s, srv = served
    dest = tmp_path / 'dest'
    cut = 5000
    srv.cut_after[BIG] = cut
    out = h.download_file(BIG, md5s[BIG], dest, mirror=srv.url, quiet=True)
    assert srv.requests == [(f'/{BIG}', None), (f'/{BIG}', f'bytes={cut}-')]
    assert md5(out) == md5s[BIG]
    assert leftovers(dest) == []


def test_corrupt_file_under_final_name_is_replaced(served, tmp_path):
    folder, md5s, srv = served
    dest = tmp_path / 'dest'; dest.mkdir()
    (dest / BIG).write_bytes(b'not the right bytes')
    out = h.download_file(BIG, md5s[BIG], dest, mirror=srv.url, quiet=True)
    assert srv.requests == [(f'/{BIG}', None)]
    assert md5(out) == md5s[BIG]
    assert leftovers(dest) == []


# ---------------------------------------------------------------------------------------------
# mirrors
# ---------------------------------------------------------------------------------------------
def test_local_folder_mirror(kmnist_folder, tmp_path):
    folder, md5s = kmnist_folder
    dest = tmp_path / 'dest'
    h.download('kmnist', 'mnist', dest=dest, mirror=str(folder), md5s=md5s, quiet=True)
    assert sorted(p.name for p in dest.iterdir()) == sorted(MNIST)
    for n in MNIST: assert md5(dest / n) == md5s[n]


def test_mirror_from_environment_variable(served, tmp_path, monkeypatch):
    folder, md5s, srv = served
    monkeypatch.setenv(h.MIRROR_ENV, srv.url)
    dest = tmp_path / 'dest'
    h.download('kmnist', 'npz', dest=dest, md5s=md5s, quiet=True)
    assert sorted(p for p, _ in srv.requests) == sorted('/' + n for n in NPZ)
    for n in NPZ: assert md5(dest / n) == md5s[n]


def test_given_mirror_is_the_only_one_used(served, http_server, tmp_path, monkeypatch):
    folder, md5s, srv = served
    known = http_server(folder)  # stands in for the official host
    monkeypatch.setattr(h.downloads, 'KNOWN_MIRRORS', [known.url])
    # control: with no mirror given, the known host is used
    h.download_file(BIG, md5s[BIG], tmp_path / 'a', quiet=True)
    assert known.requests == [(f'/{BIG}', None)] and srv.requests == []
    known.requests.clear()
    # a given mirror (argument, or env var) replaces the known hosts
    h.download_file(BIG, md5s[BIG], tmp_path / 'b', mirror=srv.url, quiet=True)
    assert srv.requests == [(f'/{BIG}', None)] and known.requests == []
    # ...even when it fails: no silent fall back
    (tmp_path / 'empty').mkdir()
    empty = http_server(tmp_path / 'empty')
    monkeypatch.setenv(h.MIRROR_ENV, empty.url)
    with pytest.raises(h.DownloadError):
        h.download_file(BIG, md5s[BIG], tmp_path / 'c', quiet=True)
    assert empty.requests == [(f'/{BIG}', None)] and known.requests == []
    # the argument wins over the env var
    srv.requests.clear()
    h.download_file(BIG, md5s[BIG], tmp_path / 'd', mirror=srv.url, quiet=True)
    assert srv.requests == [(f'/{BIG}', None)] and len(empty.requests) == 1


# ---------------------------------------------------------------------------------------------
# failures: a clear DownloadError, nothing under the final name, no .part
# ---------------------------------------------------------------------------------------------
def test_checksum_mismatch_deletes_and_says_what_to_do(served, tmp_path):
    folder, md5s, srv = served
    dest = tmp_path / 'dest'
    with pytest.raises(h.DownloadError) as e:
        h.download('kmnist', 'npz', dest=dest, mirror=srv.url, md5s={**md5s, BIG: '0' * 32}, quiet=True)
    msg = str(e.value)
    assert 'checksum mismatch' in msg and '--mirror' in msg and BIG in msg and md5s[BIG] in msg
    assert not (dest / BIG).exists()
    assert leftovers(dest) == []


def test_checksum_mismatch_from_local_folder_mirror(kmnist_folder, tmp_path):
    folder, md5s = kmnist_folder
    dest = tmp_path / 'dest'
    with pytest.raises(h.DownloadError, match='checksum mismatch'):
        h.download_file(BIG, 'f' * 32, dest, mirror=str(folder), quiet=True)
    assert not (dest / BIG).exists() and leftovers(dest) == []


def test_404_is_a_clear_error(served, tmp_path):
    folder, md5s, srv = served
    (folder / BIG).unlink()
    dest = tmp_path / 'dest'
    with pytest.raises(h.DownloadError) as e:
        h.download_file(BIG, md5s[BIG], dest, mirror=srv.url, quiet=True)
    assert '404' in str(e.value) and '--mirror' in str(e.value)
    assert srv.requests == [(f'/{BIG}', None)]  # a 404 is not retried
    assert not (dest / BIG).exists() and leftovers(dest) == []


def test_closed_port_fails_fast(tmp_path):
    url = f'http://127.0.0.1:{closed_port()}/'
    dest = tmp_path / 'dest'
    t0 = time.monotonic()
    with pytest.raises(h.DownloadError) as e:
        h.download_file(BIG, '0' * 32, dest, mirror=url, quiet=True)
    assert time.monotonic() - t0 < 5
    msg = str(e.value)
    assert 'refused' in msg.lower() and url in msg and '--mirror' in msg
    assert not (dest / BIG).exists() and leftovers(dest) == []


@pytest.fixture
def black_hole():
    "A socket that listens but never accepts nor answers."
    s = socket.socket(); s.bind(('127.0.0.1', 0)); s.listen(1)
    yield f'http://127.0.0.1:{s.getsockname()[1]}/'
    s.close()


def test_black_hole_times_out(black_hole, tmp_path):
    dest = tmp_path / 'dest'
    t0 = time.monotonic()
    with pytest.raises(h.DownloadError) as e:
        h.download_file(BIG, '0' * 32, dest, mirror=black_hole, timeout=1, quiet=True)
    assert time.monotonic() - t0 < 30
    msg = str(e.value)
    assert 'timed out' in msg.lower() and black_hole in msg and '--mirror' in msg
    assert not (dest / BIG).exists() and leftovers(dest) == []


def test_cli_black_hole_exit_1(black_hole, tmp_path, monkeypatch, capsys):
    # The command line has no --timeout (default 10 s, 3 retries): shorten it to keep the test quick.
    import download_data
    monkeypatch.setattr(h.downloads, 'download_file', functools.partial(h.download_file, timeout=1, retries=1))
    t0 = time.monotonic()
    rc = download_data.main(['--dataset', 'kmnist', '--mirror', black_hole, '--dest', str(tmp_path / 'd')])
    assert rc == 1 and time.monotonic() - t0 < 30
    err = capsys.readouterr().err
    assert 'error:' in err and 'timed out' in err.lower() and '--mirror' in err
    assert not (tmp_path / 'd' / NPZ[0]).exists()


# ---------------------------------------------------------------------------------------------
# the command line
# ---------------------------------------------------------------------------------------------
def cli(*args, md5s=None, tmp_path=None, **env):
    "Start scripts/download_data.py in a subprocess (stdin not a TTY); several can run at once."
    e = {k: v for k, v in os.environ.items() if k not in (h.MIRROR_ENV, 'KUZUSHIJI_MD5_TABLE')}
    e['KUZUSHIJI_DATA'] = str(tmp_path / 'default-data')  # never the project's data/
    if md5s is not None:
        table = tmp_path / f'md5s-{len(list(tmp_path.glob("md5s-*")))}.json'
        table.write_text(json.dumps(md5s))
        e['KUZUSHIJI_MD5_TABLE'] = str(table)
    e.update(env)
    return subprocess.Popen([sys.executable, str(SCRIPT), *map(str, args)], stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=e, cwd=tmp_path)


def finish(p, timeout=120):
    out, err = p.communicate(timeout=timeout)
    return p.returncode, out, err


def test_cli_subprocess_success_and_checksum_failure(served, tmp_path):
    """Two real command lines at once (each one imports fastai: seconds). No --dataset and no terminal gives
    kmnist npz from the HTTP mirror; a checksum mismatch exits 1 with what to do."""
    folder, md5s, srv = served
    d_npz, d_bad = tmp_path / 'npz', tmp_path / 'bad'
    p1 = cli('--mirror', srv.url, '--dest', d_npz, md5s=md5s, tmp_path=tmp_path)
    p2 = cli('--dataset', 'kmnist', '--mirror', folder, '--dest', d_bad, md5s={**md5s, BIG: '0' * 32}, tmp_path=tmp_path)
    (rc1, out1, err1), (rc2, out2, err2) = finish(p1), finish(p2)
    assert rc1 == 0, err1
    assert 'No --dataset given' in out1 and 'Done' in out1
    assert sorted(p.name for p in d_npz.iterdir()) == sorted(NPZ)
    for n in NPZ: assert md5(d_npz / n) == md5s[n]
    assert sorted(p for p, _ in srv.requests) == sorted('/' + n for n in NPZ)
    assert rc2 == 1
    assert 'checksum mismatch' in err2 and '--mirror' in err2 and 'Traceback' not in err2
    assert not (d_bad / BIG).exists() and leftovers(d_bad) == []


def test_cli_mnist_from_folder_then_rerun_asks_nothing(served, tmp_path, monkeypatch, capsys):
    "The same main() in this process (no second fastai import): --format mnist from a local folder, then again."
    import download_data
    folder, md5s, srv = served
    table = tmp_path / 'md5s.json'; table.write_text(json.dumps(md5s))
    monkeypatch.setenv('KUZUSHIJI_MD5_TABLE', str(table))
    d = tmp_path / 'mnist'
    assert download_data.main(['--dataset', 'kmnist', '--format', 'mnist', '--mirror', str(folder), '--dest', str(d)]) == 0
    assert sorted(p.name for p in d.iterdir()) == sorted(MNIST)
    for n in MNIST: assert md5(d / n) == md5s[n]
    capsys.readouterr()
    assert download_data.main(['--dataset', 'kmnist', '--format', 'mnist', '--mirror', srv.url, '--dest', str(d)]) == 0
    assert srv.requests == []
    assert capsys.readouterr().out.count('already here, verified') == len(MNIST)


def test_cli_closed_port_exit_1(tmp_path, capsys):
    import download_data
    t0 = time.monotonic()
    rc = download_data.main(['--dataset', 'kmnist', '--mirror', f'http://127.0.0.1:{closed_port()}/',
                             '--dest', str(tmp_path / 'd')])
    assert rc == 1 and time.monotonic() - t0 < 5
    err = capsys.readouterr().err
    assert 'error:' in err and 'refused' in err.lower() and '--mirror' in err
    assert not (tmp_path / 'd' / NPZ[0]).exists()


def test_cli_mnist_format_of_k49_is_refused(tmp_path, capsys):
    import download_data
    rc = download_data.main(['--dataset', 'k49', '--format', 'mnist', '--mirror', str(tmp_path), '--dest', str(tmp_path / 'd')])
    assert rc == 1
    err = capsys.readouterr().err
    assert 'k49' in err and 'mnist' in err and 'npz' in err
    assert not (tmp_path / 'd').exists() or list((tmp_path / 'd').iterdir()) == []


def test_cli_list_prints_checksums(capsys):
    import download_data
    assert download_data.main(['--list']) == 0
    out = capsys.readouterr().out
    for ds, fmts in h.FILES.items():
        assert ds in out
        for files in fmts.values():
            for name, m in files:
                assert name in out
                if m: assert m in out
    assert 'a183fbc01ed9a345513b145673d3d0bb' in out and '(no official checksum)' in out


# ---------------------------------------------------------------------------------------------
# tar extraction (kkanji)
# ---------------------------------------------------------------------------------------------
GOOD = {'kkanji2/U+4E00/a.png': b'png-a', 'kkanji2/U+4E01/b.png': b'png-b'}


def make_tar(path, extra=None, prefix=''):
    "A kkanji-like tar: folders kkanji2/U+XXXX/*.png, plus an `extra` TarInfo-making kind."
    with tarfile.open(path, 'w') as tf:
        for name, data in GOOD.items():
            ti = tarfile.TarInfo(prefix + name); ti.size = len(data); tf.addfile(ti, io.BytesIO(data))
        if extra == 'dotdot':
            ti = tarfile.TarInfo('kkanji2/../../evil'); ti.size = 4; tf.addfile(ti, io.BytesIO(b'evil'))
        elif extra == 'parent':
            ti = tarfile.TarInfo('../evil'); ti.size = 4; tf.addfile(ti, io.BytesIO(b'evil'))
        elif extra == 'absolute':
            ti = tarfile.TarInfo(str(Path(path).parent.parent / 'abs_evil')); ti.size = 4
            tf.addfile(ti, io.BytesIO(b'evil'))
        elif extra == 'symlink':
            ti = tarfile.TarInfo('kkanji2/link'); ti.type = tarfile.SYMTYPE; ti.linkname = '/etc/passwd'; tf.addfile(ti)
        elif extra == 'hardlink':
            ti = tarfile.TarInfo('kkanji2/hard'); ti.type = tarfile.LNKTYPE; ti.linkname = 'kkanji2/U+4E00/a.png'
            tf.addfile(ti)
    return path


def test_extract_good_tar(tmp_path):
    tar = make_tar(tmp_path / 'kkanji.tar')
    dest = tmp_path / 'out'; dest.mkdir()
    assert h.extract_tar(tar, dest, quiet=True) == dest
    for name, data in GOOD.items(): assert (dest / name).read_bytes() == data
    assert sorted(p.name for p in dest.iterdir()) == ['kkanji2']  # no temporary folder left


@pytest.mark.parametrize('kind', ['parent', 'dotdot', 'absolute', 'symlink', 'hardlink'])
def test_extract_refuses_unsafe_tar_and_writes_nothing(tmp_path, kind):
    src = tmp_path / 'src'; src.mkdir()
    tar = make_tar(src / 'kkanji.tar', kind)
    dest = tmp_path / 'box' / 'out'; dest.mkdir(parents=True)
    with pytest.raises(h.DownloadError, match='refusing') as e:
        h.extract_tar(tar, dest, quiet=True)
    assert 'not extracted' in str(e.value)
    assert list(dest.iterdir()) == []
    assert sorted(p.name for p in tmp_path.rglob('*')) == sorted(['src', 'kkanji.tar', 'box', 'out'])


@pytest.mark.parametrize('with_md5', [False, True])
def test_kkanji_download_extracts(http_server, tmp_path, with_md5):
    mirror = tmp_path / 'mirror'; mirror.mkdir()
    tar = make_tar(mirror / 'kkanji.tar')
    srv = http_server(mirror)
    dest = tmp_path / 'kkanji'
    out = h.download('kkanji', dest=dest, mirror=srv.url, md5s={'kkanji.tar': md5(tar) if with_md5 else None}, quiet=True)
    assert out == dest
    assert md5(dest / 'kkanji.tar') == md5(tar)
    for name, data in GOOD.items(): assert (dest / name).read_bytes() == data
    assert sorted(p.name for p in dest.iterdir()) == ['kkanji.tar', 'kkanji2']
    srv.requests.clear()
    h.download('kkanji', dest=dest, mirror=srv.url, md5s={'kkanji.tar': md5(tar) if with_md5 else None}, quiet=True)
    assert srv.requests == []


@pytest.mark.parametrize('kind', ['parent', 'absolute', 'symlink'])
def test_kkanji_download_refuses_unsafe_tar(http_server, tmp_path, kind):
    mirror = tmp_path / 'mirror'; mirror.mkdir()
    make_tar(mirror / 'kkanji.tar', kind)
    srv = http_server(mirror)
    dest = tmp_path / 'box' / 'kkanji'
    with pytest.raises(h.DownloadError, match='refusing'):
        h.download('kkanji', dest=dest, mirror=srv.url, md5s={'kkanji.tar': None}, quiet=True)
    assert srv.requests == [('/kkanji.tar', None)]
    assert sorted(p.name for p in dest.iterdir()) == ['kkanji.tar']  # downloaded, nothing extracted
    assert sorted(p.name for p in (tmp_path / 'box').iterdir()) == ['kkanji']


# Regression, fixed (extract_tar): a tar made with `tar -cf kkanji.tar -C folder .` has a member named '.', and
# `Path('.').parts[0]` raises IndexError while computing the top-level folders.
def test_extract_tar_made_from_dot(tmp_path):
    tar = tmp_path / 'kkanji.tar'
    with tarfile.open(tar, 'w') as tf:
        for d in ('.', './kkanji2', './kkanji2/U+4E00', './kkanji2/U+4E01'):
            ti = tarfile.TarInfo(d); ti.type = tarfile.DIRTYPE; ti.mode = 0o755; tf.addfile(ti)
        for name, data in GOOD.items():
            ti = tarfile.TarInfo('./' + name); ti.size = len(data); tf.addfile(ti, io.BytesIO(data))
    dest = tmp_path / 'out'; dest.mkdir()
    h.extract_tar(tar, dest, quiet=True)
    for name, data in GOOD.items(): assert (dest / name).read_bytes() == data
    assert sorted(p.name for p in dest.iterdir()) == ['kkanji2']


# Regression, fixed (extract_tar): a file that is not a tar (kkanji.tar has no official md5, so a wrong file from a
# mirror is not caught by a checksum) raises tarfile.ReadError, which download_data.py does not catch: the user
# gets a traceback instead of "delete it and download again".
def test_extract_not_a_tar_is_a_clear_error(tmp_path):
    bad = tmp_path / 'kkanji.tar'
    bad.write_bytes(b'<html>Service Unavailable</html>' * 40)
    dest = tmp_path / 'out'; dest.mkdir()
    with pytest.raises(h.DownloadError) as e:
        h.extract_tar(bad, dest, quiet=True)
    assert 'kkanji.tar' in str(e.value)
    assert list(dest.iterdir()) == []


# ImageNet weights for a classroom without internet: a mirror serves torchvision's files, checked by the hash in
# their names (torch.hub's own rule), and they go into torch's cache, where fastai looks first.

def stand_in_weights(folder, arch='resnet18'):
    "A small file named as torchvision names its weights: `<arch>-<first 8 hex digits of its sha256>.pth`."
    data = b'stand-in weights, not a model ' * 50
    name = f'{arch}-{hashlib.sha256(data).hexdigest()[:8]}.pth'
    (folder / name).write_bytes(data)
    return name


@pytest.fixture
def torch_cache(tmp_path, monkeypatch):
    import torch
    monkeypatch.setattr(torch.hub, '_hub_dir', str(tmp_path / 'hub'))
    monkeypatch.delenv('KUZUSHIJI_MIRROR', raising=False)
    return tmp_path / 'hub' / 'checkpoints'


def test_weights_come_from_the_mirror_into_torchs_cache_once(tmp_path, http_server, torch_cache, monkeypatch):
    (tmp_path / 'mirror').mkdir()
    name = stand_in_weights(tmp_path / 'mirror')
    monkeypatch.setattr(h.downloads, 'weight_file', lambda arch: name)
    srv = http_server(tmp_path / 'mirror')
    monkeypatch.setenv('KUZUSHIJI_MIRROR', srv.url)
    got = h.install_weights('resnet18', quiet=True)
    assert got == torch_cache / name and got.read_bytes() == (tmp_path / 'mirror' / name).read_bytes()
    assert [p for p, _ in srv.requests] == [f'/{name}']
    assert h.install_weights('resnet18', quiet=True) == got and len(srv.requests) == 1  # cached: not fetched again
    assert not list(torch_cache.glob('*.part'))


def test_a_weight_file_whose_hash_does_not_match_its_name_is_refused(tmp_path, http_server, torch_cache, monkeypatch,
                                                                      capsys):
    (tmp_path / 'mirror').mkdir()
    (tmp_path / 'mirror' / 'resnet18-deadbeef.pth').write_bytes(b'something else entirely')
    monkeypatch.setattr(h.downloads, 'weight_file', lambda arch: 'resnet18-deadbeef.pth')
    srv = http_server(tmp_path / 'mirror')
    assert h.install_weights('resnet18', mirror=srv.url) is None
    out = capsys.readouterr().out
    assert 'does not start with the hash in its name' in out and 'trying the official host' in out
    assert not list(torch_cache.glob('*'))  # nothing kept, not even a .part


def test_no_mirror_means_nothing_to_do(torch_cache, monkeypatch):
    monkeypatch.setattr(h.downloads, 'weight_file', lambda arch: 'resnet18-f37072fd.pth')
    assert h.install_weights('resnet18') is None and not torch_cache.exists()


def test_make_learner_takes_weights_from_the_mirror_first(tmp_path, http_server, torch_cache, monkeypatch):
    "train.py and the notebooks build ResNets with make_learner: the mirror's file is in the cache before fastai looks."
    from conftest import synthetic_kmnist
    (tmp_path / 'mirror').mkdir()
    name = stand_in_weights(tmp_path / 'mirror')
    monkeypatch.setattr(h.downloads, 'weight_file', lambda arch: name)
    monkeypatch.setenv('KUZUSHIJI_MIRROR', http_server(tmp_path / 'mirror').url)
    seen = []
    real = h.training.vision_learner
    def fake(*a, pretrained=True, **k):
        seen.append((torch_cache / name).exists())
        return real(*a, pretrained=False, **k)  # the stand-in is no real model: build from random weights
    monkeypatch.setattr(h.training, 'vision_learner', fake)
    (x, y), _ = synthetic_kmnist(40, 10)
    h.make_learner(h.kmnist_dls((x, y), list('おきすつなはまやれを'), bs=8, device='cpu'), 'resnet18', pretrained=True)
    assert seen == [True]


def test_download_data_fetches_weights_for_a_mirror(tmp_path, http_server, monkeypatch, capsys):
    "The teacher's side: download_data.py --weights into a folder to serve."
    import download_data
    (tmp_path / 'host').mkdir()
    name = stand_in_weights(tmp_path / 'host')
    monkeypatch.setattr(h.downloads, 'weight_file', lambda arch: name)
    srv = http_server(tmp_path / 'host')
    dest = tmp_path / 'classroom'
    assert download_data.main(['--weights', 'resnet18', '--dest', str(dest), '--mirror', srv.url]) == 0
    assert (dest / name).read_bytes() == (tmp_path / 'host' / name).read_bytes()
    assert 'sha256 matches its name' in capsys.readouterr().out
    (tmp_path / 'host' / name).write_bytes(b'tampered')
    assert download_data.main(['--weights', 'resnet18', '--dest', str(tmp_path / 'c2'), '--mirror', srv.url]) == 1
    err = capsys.readouterr().err
    assert 'does not start with the hash in its name' in err and 'download_data.py --weights' in err
    assert not list((tmp_path / 'c2').glob('*'))
