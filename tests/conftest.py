"""Shared fixtures: small synthetic data in the real file formats, and an HTTP server on 127.0.0.1.

No test reads ../shared or the internet."""
import gzip, hashlib, http.server, json, os, socket, sys, threading
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / 'scripts'))

CLASSMAP = 'index,codepoint,char\n' + ''.join(
    f'{i},U+{ord(c):04X},{c}\n' for i, c in enumerate('おきすつなはまやれを'))


def md5(p): return hashlib.md5(Path(p).read_bytes()).hexdigest()


def synthetic_kmnist(n_train=200, n_test=50, seed=0):
    """Images that a network can tell apart: class c is a bright bar at row 2c+4 plus noise."""
    rng = np.random.default_rng(seed)
    def make(n):
        y = np.arange(n) % 10
        rng.shuffle(y)
        x = rng.integers(0, 40, size=(n, 28, 28), dtype=np.uint8)
        for i, c in enumerate(y): x[i, 2 * c + 4: 2 * c + 7, 4:24] = 230
        return x.astype(np.uint8), y.astype(np.uint8)
    return make(n_train), make(n_test)


def idx_bytes(a):
    a = np.ascontiguousarray(a, dtype=np.uint8)
    return bytes([0, 0, 8, a.ndim]) + b''.join(int(d).to_bytes(4, 'big') for d in a.shape) + a.tobytes()


def write_kmnist(folder, n_train=200, n_test=50, seed=0):
    """Write KMNIST in both official formats (npz and idx .gz) plus the class map; return the md5 table."""
    folder = Path(folder); folder.mkdir(parents=True, exist_ok=True)
    (xtr, ytr), (xte, yte) = synthetic_kmnist(n_train, n_test, seed)
    for split, m, (x, y) in (('train', 'train', (xtr, ytr)), ('test', 't10k', (xte, yte))):
        np.savez_compressed(folder / f'kmnist-{split}-imgs.npz', x)
        np.savez_compressed(folder / f'kmnist-{split}-labels.npz', y)
        (folder / f'{m}-images-idx3-ubyte.gz').write_bytes(gzip.compress(idx_bytes(x)))
        (folder / f'{m}-labels-idx1-ubyte.gz').write_bytes(gzip.compress(idx_bytes(y)))
    (folder / 'kmnist_classmap.csv').write_text(CLASSMAP, encoding='utf-8')
    return {p.name: md5(p) for p in folder.iterdir() if p.is_file()}


class _Handler(http.server.SimpleHTTPRequestHandler):
    "Serves a folder with HTTP Range support; counts requests; can be told to cut a transfer short."
    def log_message(self, *a): pass

    def do_GET(self):
        srv = self.server
        srv.requests.append((self.path, self.headers.get('Range')))
        p = Path(srv.root) / self.path.lstrip('/').split('?')[0]
        if not p.is_file(): return self.send_error(404, 'Not Found')
        data = p.read_bytes()
        start = 0
        rng = self.headers.get('Range')
        if rng and srv.ranges:
            start = int(rng.split('=')[1].split('-')[0])
            if start >= len(data):
                self.send_response(416); self.send_header('Content-Range', f'bytes */{len(data)}'); self.end_headers(); return
            self.send_response(206); self.send_header('Content-Range', f'bytes {start}-{len(data) - 1}/{len(data)}')
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header('Content-Length', str(len(body))); self.end_headers()
        cut = srv.cut_after.pop(p.name, None)  # send only this many bytes once, then drop the connection
        self.wfile.write(body if cut is None else body[:cut])
        if cut is not None: self.close_connection = True


@pytest.fixture(autouse=True)
def out_dir(tmp_path, monkeypatch):
    "Whatever a test writes to results/ and models/ goes to a temporary folder, never over a learner's own model."
    import helpers
    monkeypatch.setattr(helpers.settings, 'OUT_DIR', tmp_path / 'out')
    return tmp_path / 'out'


@pytest.fixture
def http_server():
    """`start(folder)` serves `folder` on 127.0.0.1 at a random port and returns the server (its `.url`)."""
    servers = []
    def start(folder, ranges=True):
        srv = http.server.ThreadingHTTPServer(('127.0.0.1', 0), _Handler)
        srv.root, srv.ranges, srv.requests, srv.cut_after = str(folder), ranges, [], {}
        srv.url = f'http://127.0.0.1:{srv.server_address[1]}/'
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        servers.append(srv)
        return srv
    yield start
    for s in servers: s.shutdown(); s.server_close()


@pytest.fixture
def kmnist_folder(tmp_path):
    "A folder with synthetic KMNIST in both formats; `.md5s` on the returned object holds its checksums."
    folder = tmp_path / 'mirror'
    md5s = write_kmnist(folder)
    return folder, md5s


# Kuzushiji-Kanji: PNG folders named by code point, long-tailed. U+29780 lies in CJK Extension B and the series'
# Japanese font has no glyph for it.
KANJI_CODES = [0x4E00 + i for i in range(35)] + [0x29780]


def synthetic_kanji_image(c, rng, size=32):
    "Class `c`'s picture: white bars on black at places that depend on `c`, plus noise; a network tells them apart."
    a = rng.integers(0, 30, size=(size, size)).astype(np.uint8)
    s = size // 8
    r, k = (c % 6) + 1, (c // 6) + 1
    a[r * s:r * s + s, :] = 220       # a horizontal bar at row r
    a[:, k * s:k * s + s // 2] = 250  # a vertical bar at column k
    return a


def write_kanji(root, counts=None, size=32, seed=0, codes=KANJI_CODES):
    """`root/kkanji2/U+XXXX/*.png`, as the official archive lays them out: class i gets `counts[i]` images (default
    1, 2, ..., up to 40: a long tail). Returns {code point folder: number of images}."""
    from PIL import Image
    rng = np.random.default_rng(seed)
    counts = counts or [min(40, 1 + i + i * i // 30) for i in range(len(codes))]
    made = {}
    for c, (code, n) in enumerate(zip(codes, counts)):
        d = Path(root) / 'kkanji2' / f'U+{code:04X}'
        d.mkdir(parents=True, exist_ok=True)
        for j in range(n):
            Image.fromarray(synthetic_kanji_image(c, rng, size)).save(d / f'{rng.integers(1 << 60):016x}.png')
        made[d.name] = n
    return made


def write_kanji_tar(path, counts=None, size=32, seed=0):
    "The archive: `kkanji.tar` holding `kkanji2/` (made in a scratch folder beside it)."
    import tarfile, tempfile
    path = Path(path); path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        made = write_kanji(tmp, counts, size, seed)
        with tarfile.open(path, 'w') as tf: tf.add(Path(tmp) / 'kkanji2', arcname='kkanji2')
    return made
