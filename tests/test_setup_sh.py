"""scripts/setup.sh: which PyTorch it installs from where, what a failure leaves behind, and the offline wheelhouse.

PyTorch's own CPU index (download.pytorch.org) cannot be reached from the machines these tests run on, so the choice
of index is tested, not the download: `setup.sh` runs in a copy of the repository with a stand-in Python whose `pip`
only writes down what it was asked (and `venv` only makes a folder), a stand-in `uname` and `nvidia-smi` (a Linux
laptop with or without an NVIDIA GPU, a Mac), and `KUZUSHIJI_TORCH_INDEX` pointing at a server on 127.0.0.1 that
plays the CPU index (or at a closed port: unreachable). The reachability probe is real Python. The wheelhouse
install runs for real: a real venv and real pip, from a folder of small stand-in wheels, with `--no-index`."""
import os, re, shutil, socket, stat, subprocess, sys, zipfile
from pathlib import Path

import pytest
from conftest import ROOT

PINS = dict(l.split('==') for l in (ROOT / 'requirements.txt').read_text().splitlines()
            if re.match(r'^(torch|torchvision)==', l))
JUPYTER = re.search(r'^JUPYTER="(jupyterlab==[\d.]+)"', (ROOT / 'scripts' / 'setup.sh').read_text(), re.M).group(1)

FAKE_PYTHON = f"""#!{sys.executable}
# A stand-in Python for setup.sh: `-m venv` makes a folder holding this file as its python, `-m pip` writes its
# arguments to $PIPLOG (and fails where they contain $FAIL_ON), the version check prints a line; anything else
# (the probe of the CPU index) runs in the real Python.
import os, shutil, sys
a = sys.argv[1:]
if a[:2] == ['-m', 'venv']:
    os.makedirs(os.path.join(a[2], 'bin')); shutil.copy(__file__, os.path.join(a[2], 'bin', 'python')); sys.exit(0)
if a[:2] == ['-m', 'pip']:
    if a[2] == 'show': sys.exit(1)
    open(os.environ['PIPLOG'], 'a').write(' '.join(a[2:]) + '\\n')
    sys.exit(1 if os.environ.get('FAIL_ON') and os.environ['FAIL_ON'] in a else 0)
if a[:1] == ['-c'] and 'import fastai' in a[1]: print('fastai 2.8.8, torch 2.14.1, GPU: False'); sys.exit(0)
os.execv({sys.executable!r}, [{sys.executable!r}, *a])
"""


def closed_port():
    s = socket.socket(); s.bind(('127.0.0.1', 0)); port = s.getsockname()[1]; s.close()
    return port


def executable(path, text):
    path.write_text(text); path.chmod(path.stat().st_mode | stat.S_IEXEC)


@pytest.fixture
def cpu_index(tmp_path):
    "A stand-in for PyTorch's CPU index on 127.0.0.1: the page of torch's files at /torch/; `.requests` lists the paths asked."
    import functools, http.server, threading
    folder = tmp_path / 'index'; (folder / 'torch').mkdir(parents=True)
    (folder / 'torch' / 'index.html').write_text('<a href="torch-2.14.1+cpu-cp311-cp311-linux_x86_64.whl">torch</a>')
    class Handler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *a): pass
        def do_GET(self): srv.requests.append(self.path); super().do_GET()
    srv = http.server.ThreadingHTTPServer(('127.0.0.1', 0), functools.partial(Handler, directory=str(folder)))
    srv.requests, srv.url = [], f'http://127.0.0.1:{srv.server_address[1]}/'
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield srv
    srv.shutdown(); srv.server_close()


@pytest.fixture
def laptop(tmp_path, cpu_index):
    "A copy of the repository's setup.sh and requirements.txt, and a way to run it on a pretend machine."
    repo = tmp_path / 'repo'; (repo / 'scripts').mkdir(parents=True)
    shutil.copy(ROOT / 'scripts' / 'setup.sh', repo / 'scripts')
    shutil.copy(ROOT / 'requirements.txt', repo)
    bin_ = tmp_path / 'bin'; bin_.mkdir()
    executable(bin_ / 'python', FAKE_PYTHON)
    executable(bin_ / 'uname', '#!/bin/sh\necho "${FAKE_UNAME:-Linux}"\n')
    executable(bin_ / 'nvidia-smi', '#!/bin/sh\n[ -n "$FAKE_GPU" ] && echo "GPU 0: NVIDIA A100" && exit 0\n'
                                    'echo "NVIDIA-SMI has failed because it could not communicate with the NVIDIA driver." >&2; exit 9\n')
    srv = cpu_index

    class Laptop:
        def run(self, *args, **env):
            e = {k: v for k, v in os.environ.items() if not k.startswith(('KUZUSHIJI', 'PIP_', 'VIRTUAL_ENV'))}
            e.update({'PATH': f'{bin_}:{os.environ["PATH"]}', 'PYTHON': str(bin_ / 'python'),
                      'PIPLOG': str(tmp_path / 'pip.log'), 'KUZUSHIJI_TORCH_INDEX': srv.url, **env})
            r = subprocess.run(['bash', str(repo / 'scripts' / 'setup.sh'), *args], env=e, capture_output=True, text=True,
                               timeout=120)
            log = tmp_path / 'pip.log'
            r.pip = log.read_text().splitlines() if log.exists() else []
            return r
    m = Laptop()
    m.repo, m.server, m.tmp = repo, srv, tmp_path
    return m


def cpu_index_install(url):
    return f"install -q --index-url {url} torch=={PINS['torch']} torchvision=={PINS['torchvision']}"


def test_linux_without_nvidia_gpu_takes_the_cpu_build_from_pytorchs_index(laptop):
    r = laptop.run('--no-data')
    assert r.returncode == 0, r.stderr
    assert 'torch: cpu (auto: Linux, and nvidia-smi found no NVIDIA GPU' in r.stdout
    assert laptop.server.requests and laptop.server.requests == ['/torch/']  # asked before anything was made
    assert r.pip == ['install -q --upgrade pip', cpu_index_install(laptop.server.url),
                     f'install -q -r requirements.txt {JUPYTER}']  # then the rest from PyPI, torch already there
    assert (laptop.repo / '.venv' / 'bin' / 'python').exists()


@pytest.mark.parametrize('machine,env,args', [
    ('linux-gpu', {'FAKE_GPU': '1'}, []),
    ('mac', {'FAKE_UNAME': 'Darwin'}, []),
    ('ci-flag', {}, ['--torch', 'pypi']),  # what .ci/run asks for: CI cannot reach PyTorch's index
    ('variable', {'KUZUSHIJI_TORCH': 'pypi'}, []),
])
def test_pypis_build_where_it_is_the_right_one_or_asked_for(laptop, machine, env, args):
    r = laptop.run('--no-data', *args, **env)
    assert r.returncode == 0, r.stderr
    assert 'torch: pypi' in r.stdout
    assert r.pip == ['install -q --upgrade pip', f'install -q -r requirements.txt {JUPYTER}'], machine
    assert laptop.server.requests == []  # PyTorch's index is not even asked


def test_the_cpu_build_can_be_asked_for_on_any_machine(laptop):
    r = laptop.run('--no-data', '--torch=cpu', FAKE_GPU='1')
    assert r.returncode == 0 and cpu_index_install(laptop.server.url) in r.pip and 'torch: cpu' in r.stdout


def test_ci_asks_for_pypis_torch():
    assert re.search(r'^bash scripts/setup.sh .*--torch pypi', (ROOT / '.ci' / 'run').read_text(), re.M)


def test_unreachable_cpu_index_is_one_sentence_and_leaves_nothing(laptop):
    r = laptop.run('--no-data', KUZUSHIJI_TORCH_INDEX=f'http://127.0.0.1:{closed_port()}/whl/cpu')
    assert r.returncode == 1 and r.pip == []
    assert r.stderr.count('\n') == 1 and r.stderr.startswith("setup.sh: PyTorch's CPU index http://127.0.0.1:"), r.stderr
    assert 'cannot be reached' in r.stderr and '--torch pypi' in r.stderr and '--wheelhouse DIR' in r.stderr
    assert not (laptop.repo / '.venv').exists()


def test_a_failed_install_removes_the_venv_it_made(laptop):
    r = laptop.run('--no-data', FAIL_ON=JUPYTER)
    assert r.returncode != 0 and 'the new .venv was removed' in r.stderr
    assert not (laptop.repo / '.venv').exists()


def test_bad_torch_choice_is_one_sentence(laptop):
    r = laptop.run('--torch', 'gpu')
    assert r.returncode == 1 and r.stderr == "setup.sh: --torch must be cpu or pypi, not 'gpu'.\n" and r.pip == []


def test_wheelhouse_download_takes_the_same_choice(laptop):
    wheels = laptop.tmp / 'wheelhouse'
    r = laptop.run('--download-wheels', str(wheels))
    assert r.returncode == 0, r.stderr
    assert r.pip == [f"download -q -d {wheels} --index-url {laptop.server.url} torch=={PINS['torch']} "
                     f"torchvision=={PINS['torchvision']}",
                     f'download -q -d {wheels} --find-links {wheels} -r requirements.txt {JUPYTER}']
    assert f'bash scripts/setup.sh --wheelhouse {wheels}' in r.stdout
    assert not (laptop.repo / '.venv').exists()  # a teacher's download makes no .venv


def test_missing_wheelhouse_is_one_sentence(laptop):
    r = laptop.run('--no-data', '--wheelhouse', str(laptop.tmp / 'nowhere'))
    assert r.returncode == 1 and r.stderr.startswith('setup.sh: no such folder:') and r.stderr.count('\n') == 1
    assert not (laptop.repo / '.venv').exists() and r.pip == []


def wheel(folder, name, version, init=''):
    "A minimal pure-Python wheel: a module with `__version__` (and `init`), and the metadata pip reads."
    dist = re.sub(r'[-_.]+', '_', name).lower()
    info = f'{dist}-{version}.dist-info'
    files = {f'{dist}/__init__.py': f'__version__ = {version!r}\n{init}',
             f'{info}/METADATA': f'Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n',
             f'{info}/WHEEL': 'Wheel-Version: 1.0\nGenerator: tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n'}
    files[f'{info}/RECORD'] = ''.join(f'{p},,\n' for p in files) + f'{info}/RECORD,,\n'
    with zipfile.ZipFile(folder / f'{dist}-{version}-py3-none-any.whl', 'w') as z:
        for p, text in files.items(): z.writestr(p, text)


def test_wheelhouse_installs_with_no_network(laptop):
    """For real: a venv, and pip with `--no-index` from a folder of stand-in wheels (torch's CPU build among them, by
    its local version label), while the CPU index is unreachable: nothing is asked of any network."""
    wheels = laptop.tmp / 'wheelhouse'; wheels.mkdir()
    reqs = {'torch': PINS['torch'], 'torchvision': PINS['torchvision'], 'fastai': '2.8.8'}
    (laptop.repo / 'requirements.txt').write_text(''.join(f'{n}=={v}\n' for n, v in reqs.items()))
    wheel(wheels, 'torch', PINS['torch'] + '+cpu', 'class cuda:\n    is_available = staticmethod(lambda: False)\n')
    wheel(wheels, 'torchvision', PINS['torchvision'] + '+cpu')
    wheel(wheels, 'fastai', '2.8.8')
    wheel(wheels, *JUPYTER.split('=='))
    e = {k: v for k, v in os.environ.items() if not k.startswith(('KUZUSHIJI', 'PIP_', 'VIRTUAL_ENV', 'PYTHON'))}
    e.update(PIP_CONFIG_FILE=os.devnull, PIP_DISABLE_PIP_VERSION_CHECK='1', PYTHON=sys._base_executable,
             KUZUSHIJI_TORCH_INDEX=f'http://127.0.0.1:{closed_port()}/')  # a real Python, outside this .venv
    r = subprocess.run(['bash', str(laptop.repo / 'scripts' / 'setup.sh'), '--no-data', '--wheelhouse', str(wheels)],
                       env=e, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f'installing from the wheelhouse {wheels} only, no network' in r.stdout
    assert f"torch {PINS['torch']}+cpu, GPU: False" in r.stdout
    py = laptop.repo / '.venv' / 'bin' / 'python'
    got = subprocess.run([py, '-c', 'import importlib.metadata as m; print(m.version("torch"), m.version("jupyterlab"))'],
                         capture_output=True, text=True).stdout.split()
    assert got == [PINS['torch'] + '+cpu', JUPYTER.split('==')[1]]
