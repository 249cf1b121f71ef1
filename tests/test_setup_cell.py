"""The notebooks' setup cell, run for real on a faked Colab and Kaggle, with no network.

Each test runs the cell's exact code (`nbsync.SETUP`, what every notebook's second cell holds) in a subprocess,
in a fresh virtual environment of its own (never the project's .venv) that holds a fake platform PyTorch whose
`torch.__version__` carries a local label its distribution lacks (`2.14.1+cu130` vs `2.14.1`, as PyPI's CUDA
builds do). `git clone` of the repository URL is redirected to a local copy of this checkout (git's `insteadOf`),
and pip installs from a folder of small stand-in wheels with the pinned names and versions (`PIP_NO_INDEX`)."""
import json, os, re, shutil, subprocess, sys, zipfile
from pathlib import Path

import helpers as h
import hosted_setup
import nbsync
import pytest
from conftest import ROOT

PLATFORM_TORCH = {n: hosted_setup.pins()[n] for n in hosted_setup.KEEP}  # what the fake platform has installed

DRIVER = """import os, sys, types
if os.environ.get('FAKE_COLAB'): sys.modules['google.colab'] = types.ModuleType('google.colab')
cell = open(sys.argv[1], encoding='utf-8').read()
for run in range(int(sys.argv[2])):  # a learner may run the cell again
    exec(compile(cell, 'setup cell', 'exec'), {'__name__': '__main__'})
    print('after setup:', os.getcwd(), sys.path[0])
"""


def wheel(folder, name, version, requires=()):
    "A minimal pure-Python wheel: a module with `__version__`, and the metadata pip reads."
    dist = re.sub(r'[-_.]+', '_', name).lower()
    info = f'{dist}-{version}.dist-info'
    files = {f'{dist}/__init__.py': f'__version__ = {version!r}\n',
             f'{info}/METADATA': f'Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n'
                                 + ''.join(f'Requires-Dist: {r}\n' for r in requires),
             f'{info}/WHEEL': 'Wheel-Version: 1.0\nGenerator: tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n'}
    files[f'{info}/RECORD'] = ''.join(f'{p},,\n' for p in files) + f'{info}/RECORD,,\n'
    with zipfile.ZipFile(folder / f'{dist}-{version}-py3-none-any.whl', 'w') as z:
        for p, text in files.items(): z.writestr(p, text)


def fake_platform_torch(site):
    "torch and torchvision installed as a platform installs them, with `__version__` carrying a local label."
    for name, version in PLATFORM_TORCH.items():
        (site / name).mkdir()
        (site / name / '__init__.py').write_text(f'__version__ = {version + "+cu130"!r}\n')
        info = site / f'{name}-{version}.dist-info'
        info.mkdir()
        (info / 'METADATA').write_text(f'Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n')
        (info / 'INSTALLER').write_text('pip\n')
        (info / 'RECORD').write_text('')


@pytest.fixture(scope='module')
def clean_venv(tmp_path_factory):
    venv = tmp_path_factory.mktemp('template') / 'venv'
    subprocess.run([sys.executable, '-m', 'venv', str(venv)], check=True)
    return venv


@pytest.fixture
def hosted(tmp_path, clean_venv):
    "A fake hosted machine: venv, local copy of the repository behind the real URL, wheel folder, empty home dir."
    venv = tmp_path / 'venv'
    shutil.copytree(clean_venv, venv, symlinks=True)  # a venv of its own for each test, copied for speed
    py = venv / 'bin' / 'python'
    site = Path(subprocess.run([py, '-c', 'import sysconfig; print(sysconfig.get_paths()["purelib"])'],
                               capture_output=True, text=True, check=True).stdout.strip())
    fake_platform_torch(site)
    wheels = tmp_path / 'wheels'; wheels.mkdir()
    for name, version in hosted_setup.pins().items():
        if name not in hosted_setup.SKIP:  # fastai asks for torch as the real one does: the held version must do
            wheel(wheels, name, version, ['torch>=1.10,<3', 'torchvision>=0.11'] if name == 'fastai' else [])
    src = tmp_path / 'origin'  # this checkout's files as they are now, committed in a repository of their own
    shutil.copytree(ROOT / 'scripts', src / 'scripts', ignore=shutil.ignore_patterns('__pycache__'))
    shutil.copytree(ROOT / 'notebooks', src / 'notebooks', ignore=shutil.ignore_patterns('.ipynb_checkpoints', 'models'))
    shutil.copy(ROOT / 'requirements.txt', src)
    git = ['git', '-c', 'user.name=t', '-c', 'user.email=t@t', '-C', str(src)]
    for cmd in (['init', '-q'], ['add', '.'], ['commit', '-q', '-m', 'copy']): subprocess.run(git + cmd, check=True)
    home = tmp_path / 'content'; home.mkdir()
    (tmp_path / 'cell.py').write_text(nbsync.SETUP, encoding='utf-8')
    (tmp_path / 'driver.py').write_text(DRIVER)
    env = {k: v for k, v in os.environ.items() if not k.startswith(('PIP_', 'PYTHON', 'VIRTUAL_ENV', 'KAGGLE', 'GIT_'))}
    env.update(PIP_NO_INDEX='1', PIP_FIND_LINKS=str(wheels), PIP_CONFIG_FILE=os.devnull, PIP_DISABLE_PIP_VERSION_CHECK='1',
               PYTHONNOUSERSITE='1', GIT_CONFIG_NOSYSTEM='1', GIT_CONFIG_GLOBAL=os.devnull,
               GIT_CONFIG_COUNT='1', GIT_CONFIG_KEY_0=f'url.file://{src}.insteadOf', GIT_CONFIG_VALUE_0=h.REPO_URL)

    class Machine:
        def run(self, runs=1, **extra):
            return subprocess.run([py, tmp_path / 'driver.py', tmp_path / 'cell.py', str(runs)], cwd=home,
                                  env={**env, **extra}, capture_output=True, text=True, timeout=300)
        def version(self, name):
            code = f'import importlib.metadata as m\ntry: print(m.version({name!r}))\nexcept m.PackageNotFoundError: print(None)'
            return subprocess.run([py, '-c', code], capture_output=True, text=True, env=env).stdout.strip()
    m = Machine()
    m.py, m.home, m.wheels, m.origin = py, home, wheels, src
    return m


def test_the_old_pin_fails_here(hosted):
    "The trap the cell avoids, reproduced on this fake machine: pinning torch.__version__ makes pip install nothing."
    label = subprocess.run([hosted.py, '-c', 'import torch; print(torch.__version__)'], capture_output=True, text=True).stdout.strip()
    assert label == PLATFORM_TORCH['torch'] + '+cu130'
    pip = subprocess.run([hosted.py, '-m', 'pip', 'install', '-q', f'--find-links={hosted.wheels}', '--no-index',
                          f'fastai=={hosted_setup.pins()["fastai"]}', f'torch=={label}'], capture_output=True, text=True)
    assert pip.returncode != 0 and hosted.version('fastai') == 'None'


def test_colab_installs_pins_and_keeps_torch(hosted):
    r = hosted.run(runs=2, FAKE_COLAB='1')
    assert r.returncode == 0, r.stderr
    clone = hosted.home / 'kuzushiji-fastai'
    assert r.stdout.count(f'after setup: {clone / "notebooks"} {clone / "scripts"}') == 2, r.stdout  # rerun: no 2nd clone
    want = {n: v for n, v in hosted_setup.pins().items() if n not in hosted_setup.SKIP}
    assert want and all(hosted.version(n) == v for n, v in want.items())
    assert all(hosted.version(n) == v for n, v in PLATFORM_TORCH.items())  # the platform's torch untouched
    assert f"kept the platform's torch {PLATFORM_TORCH['torch']}" in r.stdout
    assert not (clone / 'kuzushiji-fastai').exists()


def test_kaggle_failed_install_stops_with_one_sentence(hosted):
    missing = next(hosted.wheels.glob('matplotlib_fontja-*.whl'))
    missing.unlink()
    r = hosted.run(KAGGLE_KERNEL_RUN_TYPE='Interactive')
    assert r.returncode != 0 and 'after setup' not in r.stdout  # stopped: nothing after the cell ran
    err = r.stderr.strip().splitlines()[-1]
    assert err.startswith("RuntimeError: pip could not install the series' packages (") and 'matplotlib-fontja' in err
    assert err.endswith("check that this notebook's Internet switch is on (Kaggle's settings panel), then run this cell again.")
    assert hosted.version('fastai') == 'None'  # pip installed nothing, and said so


def test_kaggle_without_internet_says_switch_it_on(hosted):
    shutil.rmtree(hosted.origin)  # the clone cannot reach its host
    r = hosted.run(KAGGLE_KERNEL_RUN_TYPE='Batch')
    assert r.returncode != 0 and 'after setup' not in r.stdout
    err = r.stderr.strip().splitlines()[-1]
    assert err.startswith('RuntimeError: Could not fetch the series (')
    assert err.endswith("turn on this notebook's Internet switch (Kaggle's settings panel), then run this cell again.")
    assert not (hosted.home / 'kuzushiji-fastai').exists() and hosted.version('fastai') == 'None'


def test_colab_failed_clone_says_what_git_said(hosted):
    shutil.rmtree(hosted.origin)
    r = hosted.run(FAKE_COLAB='1')
    err = r.stderr.strip().splitlines()[-1]
    assert r.returncode != 0 and 'check the network, then run this cell again.' in err and 'Internet switch' not in err


def test_locally_only_makes_helpers_importable(hosted):
    "On your machine the cell fetches and installs nothing: it only puts scripts/ on the path."
    notebooks = hosted.origin / 'notebooks'
    r = subprocess.run([hosted.py, hosted.home.parent / 'driver.py', hosted.home.parent / 'cell.py', '1'], cwd=notebooks,
                       capture_output=True, text=True, env={k: v for k, v in os.environ.items() if not k.startswith('KAGGLE')})
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f'after setup: {notebooks} {hosted.origin / "scripts"}'
    assert not list(hosted.home.iterdir()) and hosted.version('fastai') == 'None'


def test_every_notebook_runs_this_cell():
    for p in sorted((ROOT / 'notebooks').glob('*.ipynb')):
        assert ''.join(json.loads(p.read_text(encoding='utf-8'))['cells'][1]['source']) == nbsync.SETUP, p.name
