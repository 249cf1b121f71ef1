"""The classroom folder: notebook 05's subset made from the full archive, `scripts/classroom.py`, and a rehearsal of a
class: a fresh clone's notebooks run from nothing but the folder that TEACHING.md's own command makes.

Everything is served from 127.0.0.1 or made here; nothing touches the internet or ../shared."""
import csv, hashlib, io, json, os, re, shutil, subprocess, sys, time, zipfile
from pathlib import Path

import helpers as h
import nbformat
import pytest
from conftest import ROOT, write_kmnist
from PIL import Image

TOP = f'chinese-calligraphy-classifier-fastai-{h.CALLIGRAPHY_COMMIT}/data'


@pytest.fixture(autouse=True)
def _offline(monkeypatch, tmp_path):
    "No fallback to the official hosts, and data/ in a temporary folder."
    monkeypatch.delenv(h.MIRROR_ENV, raising=False)
    monkeypatch.delenv('KUZUSHIJI_MD5_TABLE', raising=False)
    monkeypatch.setattr(h.downloads, 'KNOWN_MIRRORS', [])
    monkeypatch.setattr(h.downloads, 'HOSTS', {})
    monkeypatch.setattr(h.settings, 'DATA_DIR', tmp_path / 'data')


def image(w, hgt, mode='RGB', fmt='JPEG', seed=0):
    "The bytes of a noisy picture: no two seeds alike."
    import numpy as np
    a = np.random.default_rng(seed).integers(0, 255, (hgt, w, len(mode)), dtype=np.uint8)
    im = Image.fromarray(a if len(mode) > 1 else a[..., 0], mode)
    b = io.BytesIO(); im.save(b, fmt); return b.getvalue()


def expected(data, size):
    "What the run's copy holds for `data` at `size`: RGB on white, Lanczos, JPEG quality 88, optimised tables."
    im = Image.open(io.BytesIO(data))
    if im.mode == 'RGBA':
        bg = Image.new('RGBA', im.size, (255, 255, 255, 255)); bg.alpha_composite(im); im = bg
    im = im.convert('RGB')
    if im.size != size: im = im.resize(size, Image.LANCZOS)
    b = io.BytesIO(); im.save(b, 'JPEG', quality=88, optimize=True); return b.getvalue()


@pytest.fixture
def archive(tmp_path):
    """A stand-in for the full calligraphy archive in GitHub's layout (GBK names, a non-image, a file in two classes),
    and a list naming some of its images as `SUBSET` names the real ones. Returns (zip, listing, {name: bytes})."""
    files = {  # class, name bytes in the archive, bytes; `size`: what the run's copy holds (None: not in the subset)
        ('kaishu', '楷书1.jpg'.encode('gbk'), image(500, 900, seed=1), (384, 691)),     # shorter side to 384
        ('kaishu', b'2.jpg', image(300, 1400, seed=2), (219, 1024)),                     # longer side to 1024
        ('kaishu', b'3.jpg', image(200, 120, seed=3), None),                              # not in the subset
        ('lishu', b'a.png', image(420, 400, 'RGBA', 'PNG', seed=4), (403, 384)),          # transparent: on white
        ('lishu', b'b.jpg', image(150, 100, seed=5), (150, 100)),                         # small: size kept
        ('lishu', b'page.htm', b'<html>not an image</html>', None),
        ('xiaozhuan', b'x.jpg', image(1000, 400, seed=6), (960, 384)),
        ('xiaozhuan', b'same.jpg', image(64, 64, seed=7), None),
        ('lishu', b'same-too.jpg', image(64, 64, seed=7), None),                          # the same bytes in two classes
    }
    full = tmp_path / 'full' / h.CALLIGRAPHY_ZIP; full.parent.mkdir()
    with zipfile.ZipFile(full, 'w') as z:
        for c, name, data, _ in sorted(files):
            z.writestr(zipfile.ZipInfo((f'{TOP}/{c}/'.encode() + name).decode('cp437')), data)  # raw bytes, no UTF-8 flag
    listing, want, n = tmp_path / 'subset.csv', {}, {}
    with open(listing, 'w', newline='') as f:
        w = csv.writer(f); w.writerow(['file', 'class', 'source_blob_sha1', 'source_md5', 'md5'])
        for c, name, data, size in sorted(files):
            if size is None: continue
            n[c] = n.get(c, 0) + 1
            out = f'{c}_{n[c] - 1:03d}.jpg'
            want[f'{c}/{out}'] = (expected(data, size), size)
            git = hashlib.sha1(b'blob %d\0' % len(data) + data).hexdigest()
            w.writerow([out, c, git, hashlib.md5(data).hexdigest(), hashlib.md5(want[f'{c}/{out}'][0]).hexdigest()])
    return full, listing, want


def test_blob_sha1_is_gits():
    assert h.cleaning.blob_sha1(b'hello\n') == 'ce013625030ba8dba906f756967f9e9ca394464a'  # git hash-object of 'hello'


def test_the_subset_is_the_listed_images_as_the_runs_copy_holds_them(archive, tmp_path):
    full, listing, want = archive
    out = tmp_path / 'classroom' / h.CALLIGRAPHY_ZIP
    r = h.cleaning.build_subset(full, out, listing=listing, quiet=True)
    assert r['kept'] == {'kaishu': 2, 'lishu': 2, 'xiaozhuan': 1} and r['identical'] == 5
    with zipfile.ZipFile(out) as z:
        got = {i.filename.split('/data/', 1)[1]: z.read(i) for i in z.infolist()}
        assert all(i.filename.startswith(TOP + '/') for i in z.infolist())  # the archive's own layout
    assert sorted(got) == sorted(want)
    for name, (data, size) in want.items():
        assert got[name] == data, name
        assert Image.open(io.BytesIO(got[name])).size == size, name
    png = Image.open(io.BytesIO(got['lishu/lishu_000.jpg']))
    assert png.mode == 'RGB'
    first = out.read_bytes()
    h.cleaning.build_subset(full, out, listing=listing, quiet=True)
    assert out.read_bytes() == first  # the same bytes every time: fixed dates in the zip
    # and it is what notebook 05 reads: extract and prepare take it as the archive
    prepared = h.prepare(h.extract_zip(out, tmp_path / 'raw', quiet=True), tmp_path / 'prepared', quiet=True)
    assert prepared['kept'] == {'kaishu': 2, 'lishu': 2, 'xiaozhuan': 1} and prepared['skipped'] == []


def test_an_archive_without_the_listed_images_is_one_sentence_and_writes_nothing(archive, tmp_path):
    full, listing, _ = archive
    rows = list(csv.DictReader(open(listing)))
    rows[1]['source_blob_sha1'] = '0' * 40
    with open(listing, 'w', newline='') as f:
        w = csv.DictWriter(f, list(rows[0])); w.writeheader(); w.writerows(rows)
    out = tmp_path / 'classroom' / h.CALLIGRAPHY_ZIP
    with pytest.raises(h.DownloadError) as e: h.cleaning.build_subset(full, out, listing=listing, quiet=True)
    msg = str(e.value)
    assert f"lacks 1 of the 5 images of notebook 05's subset (the first: {rows[1]['class']}/{rows[1]['file']}" in msg
    assert msg.endswith('Delete it and download again.') and '\n' not in msg
    assert not out.exists() and not list(out.parent.glob('*.part'))


def test_the_real_list_names_600_images_200_per_style():
    rows = list(csv.DictReader(open(h.cleaning.SUBSET, encoding='utf-8')))
    assert len(rows) == 600 and len({r['source_blob_sha1'] for r in rows}) == 600
    assert {c: sum(r['class'] == c for r in rows) for c in h.CALLIGRAPHY_CLASSES} == dict.fromkeys(h.CALLIGRAPHY_CLASSES, 200)
    assert all(re.fullmatch(r'[0-9a-f]{40}', r['source_blob_sha1']) and re.fullmatch(r'[0-9a-f]{32}', r['md5']) for r in rows)


def test_download_data_makes_the_subset_from_a_mirror_of_the_archive(archive, tmp_path, monkeypatch, capsys):
    import download_data
    full, listing, want = archive
    monkeypatch.setattr(h.cleaning, 'SUBSET', listing)
    dest = tmp_path / 'classroom'
    assert download_data.main(['--dataset', 'calligraphy', '--subset', '--dest', str(dest), '--mirror', str(full.parent)]) == 0
    assert (tmp_path / 'data' / 'calligraphy' / h.CALLIGRAPHY_ZIP).read_bytes() == full.read_bytes()  # the full one, kept
    with zipfile.ZipFile(dest / h.CALLIGRAPHY_ZIP) as z: assert len(z.infolist()) == len(want)
    assert "5 images (kaishu 2, lishu 2, xiaozhuan 1)" in capsys.readouterr().out
    with pytest.raises(SystemExit): download_data.main(['--dataset', 'kmnist', '--subset'])
    assert '--subset is for --dataset calligraphy' in capsys.readouterr().err
    assert download_data.main(['--dataset', 'calligraphy', '--subset', '--dest', str(tmp_path / 'data' / 'calligraphy')]) == 1
    assert "holds the full archive: choose another --dest." in capsys.readouterr().err


def test_classroom_py_fills_the_folder_with_what_the_notebooks_fetch(archive, tmp_path, monkeypatch, capsys):
    import classroom
    full, listing, _ = archive
    monkeypatch.setattr(h.cleaning, 'SUBSET', listing)
    upstream = tmp_path / 'upstream'  # plays the official hosts
    (tmp_path / 'md5.json').write_text(json.dumps(write_kmnist(upstream)))  # synthetic files: their own md5s
    monkeypatch.setenv('KUZUSHIJI_MD5_TABLE', str(tmp_path / 'md5.json'))
    shutil.copy(full, upstream)
    assert classroom.main([str(tmp_path / 'room'), '--no-weights', '--mirror', str(upstream)]) == 0
    names = sorted(p.name for p in (tmp_path / 'room').iterdir())
    assert names == sorted({n for fs in h.FILES['kmnist'].values() for n, _ in fs} | {h.CALLIGRAPHY_ZIP})
    out = capsys.readouterr().out
    assert 'python -m http.server 8000 --directory' in out and 'export KUZUSHIJI_MIRROR=http://THIS-LAPTOP:8000/' in out
    # --kkanji adds notebook 08's tar, as served (not extracted); without it the folder has none
    (upstream / 'kkanji.tar').write_bytes(b'a stand-in for the tar')
    assert classroom.main([str(tmp_path / 'room'), '--no-weights', '--calligraphy', 'none', '--kkanji', '--mirror', str(upstream)]) == 0
    assert (tmp_path / 'room' / 'kkanji.tar').read_bytes() == b'a stand-in for the tar'
    assert not (tmp_path / 'room' / 'kkanji2').exists()


# ---------------------------------------------------------------------------------------------------------------------
# the rehearsal
# ---------------------------------------------------------------------------------------------------------------------
GUARD = '''"""Loaded by every Python process of the rehearsal (PYTHONPATH): writes each network connection and name lookup
to $REHEARSAL_NET_LOG, and refuses any that would leave this machine."""
import os, socket, sys
def _local(host):
    host = host.decode() if isinstance(host, bytes) else str(host)
    return host in ('', 'None', 'localhost', '::1') or host.startswith('127.')
def _hook(event, args):
    if event not in ('socket.connect', 'socket.getaddrinfo'): return
    if event == 'socket.connect':
        if args[0].family not in (socket.AF_INET, socket.AF_INET6): return
        host = args[1][0]
    else: host = args[0]
    with open(os.environ['REHEARSAL_NET_LOG'], 'a') as f: f.write(f'{event} {host} {os.getpid()} {sys.argv[:2]}\\n')
    if not _local(host): raise PermissionError(f'the rehearsal allows only 127.0.0.1, not {host}')
sys.addaudithook(_hook)
'''

REHEARSED = ('01_get_kuzushiji_mnist', '02_numpy_to_dataloaders', '03_learning_rate_finder',
             '04_train_resnet34_one_cycle', '06_put_it_to_work')


def teachers_commands():
    "The commands of TEACHING.md's 'Before class' block: the page says them, the rehearsal runs them."
    page = (ROOT / 'TEACHING.md').read_text(encoding='utf-8')
    block = re.search(r'## Before class.*?```bash\n(.*?)```', page, re.S).group(1)
    return [l.split('#')[0].strip() for l in block.splitlines() if l.split('#')[0].strip()]


def fresh_clone(dest):
    "`git clone` of this repository: its committed HEAD, without data/, models/ or anything else a run left here."
    subprocess.run(['git', 'clone', '-q', str(ROOT), str(dest)], check=True, capture_output=True)
    return dest


def test_teaching_md_makes_the_folder_with_classroom_py():
    build, serve = teachers_commands()[:2]
    assert build == '.venv/bin/python scripts/classroom.py classroom/', build
    assert serve == 'python -m http.server 8000 --directory classroom', serve


def test_rehearsal_a_class_runs_from_the_classroom_folder_alone(tmp_path, http_server):
    """A class, rehearsed. On 'the teacher's laptop', TEACHING.md's command makes the classroom folder, from a stand-in
    for the official hosts on 127.0.0.1 that serves small synthetic KMNIST files (the teacher has internet; here it is
    a local server); the folder is served on 127.0.0.1 by a server that records each request. Then a fresh clone's
    notebooks 01, 02, 03, 04 and 06 run top to bottom, in that order, as a learner would, with these variables set:
      KUZUSHIJI_MIRROR     the served folder: the one thing TEACHING.md tells a learner to set;
      KUZUSHIJI_QUICK=1    quick mode: tiny data and epochs, so the rehearsal takes minutes;
      KUZUSHIJI_MD5_TABLE  the synthetic files' md5s (a JSON file), since they are not the official files and the
                           official md5s would rightly refuse them (the same plumbing test_notebooks.py uses);
      TORCH_HOME           an empty torch cache, as on a fresh laptop, so any ImageNet weights would have to come from
                           the folder;
      PYTHONPATH, REHEARSAL_NET_LOG  a sitecustomize (GUARD) in every Python process that logs each network connection
                           and name lookup and refuses any off this machine (it cannot see programs not in Python).
    The clone is of the committed HEAD: commit before running this. Every other KUZUSHIJI_* and WANDB_* variable is
    removed. data/, models/ and wandb/ go where a learner's go: into the clone. Checked: every file a notebook asked for was in the folder (no 404), notebook 01 got both formats from
    it, and nothing but 127.0.0.1 was contacted.
    The folder is made with `--calligraphy none --no-weights`: the rehearsed notebooks, quick on a CPU, ask for neither
    (the server's record shows it), and neither can be faked here (the subset is found by the real images' hashes, the
    weights by the sha256 in their names); tests above and test_download.py test those on their own."""
    clone = fresh_clone(tmp_path / 'clone')
    upstream = tmp_path / 'upstream'
    md5s = write_kmnist(upstream, n_train=300, n_test=60)
    (tmp_path / 'md5.json').write_text(json.dumps(md5s))
    official = http_server(upstream)
    base = {k: v for k, v in os.environ.items()
            if not k.startswith(('KUZUSHIJI', 'WANDB', 'TORCH_HOME', 'MPLBACKEND', 'PYTHONPATH'))}
    build = teachers_commands()[0].split()
    assert build[:2] == ['.venv/bin/python', 'scripts/classroom.py']
    room = tmp_path / build[2]
    r = subprocess.run([sys.executable, str(clone / build[1]), str(room), *build[3:], '--calligraphy', 'none',
                        '--no-weights'], cwd=clone, capture_output=True, text=True, timeout=300,
                       env={**base, 'KUZUSHIJI_MIRROR': official.url, 'KUZUSHIJI_MD5_TABLE': str(tmp_path / 'md5.json')})
    assert r.returncode == 0, r.stdout + r.stderr
    served = http_server(room)
    guard = tmp_path / 'guard'; guard.mkdir(); (guard / 'sitecustomize.py').write_text(GUARD)
    log = tmp_path / 'net.log'
    env = {'KUZUSHIJI_MIRROR': served.url, 'KUZUSHIJI_QUICK': '1', 'KUZUSHIJI_MD5_TABLE': str(tmp_path / 'md5.json'),
           'TORCH_HOME': str(tmp_path / 'torch'), 'PYTHONPATH': str(guard), 'REHEARSAL_NET_LOG': str(log)}
    asked, seconds = {}, {}
    from nbclient import NotebookClient
    old = dict(os.environ)
    os.environ.clear(); os.environ.update({**base, **env})
    try:
        for name in REHEARSED:
            served.requests.clear(); t0 = time.time()
            nb = nbformat.read(str(clone / 'notebooks' / f'{name}.ipynb'), as_version=4)
            try:
                NotebookClient(nb, timeout=900, kernel_name='python3',
                               resources={'metadata': {'path': str(clone / 'notebooks')}}).execute()
            except Exception as e:
                raise AssertionError(f'notebook {name[:2]} failed; it asked the folder for {served.requests}; '
                                     f'the folder holds {sorted(p.name for p in room.iterdir())}') from e
            asked[name[:2]], seconds[name[:2]] = [p for p, _ in served.requests], round(time.time() - t0)
            if name.startswith('01'): first = nb
    finally:
        os.environ.clear(); os.environ.update(old)
    print('asked the folder for:', asked, '\nseconds:', seconds)
    missing = {n: [p for p in paths if not (room / p.lstrip('/')).is_file()] for n, paths in asked.items()}
    assert not any(missing.values()), f'asked for and not in the classroom folder (404): {missing}'
    kmnist = {n for fs in h.FILES['kmnist'].values() for n, _ in fs}
    assert {p.lstrip('/') for p in asked['01']} == kmnist, asked['01']  # both formats, each once
    dl = ''.join(o.get('text', '') for c in first.cells for o in c.get('outputs', []) if 'download' in c.get('metadata', {}).get('tags', []))
    assert dl.count(f'<- {served.url}') == 9, dl
    lines = log.read_text().splitlines() if log.exists() else []
    assert lines, 'the network guard saw nothing: was it loaded?'
    away = [l for l in lines if not re.match(r'socket\.\w+ (127\.|localhost|::1|None|\s)', l)]
    assert not away, 'contacted off this machine:\n' + '\n'.join(away[:20])
