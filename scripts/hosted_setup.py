"""Install what the notebooks need on Colab or Kaggle, keeping the platform's own PyTorch.

The notebooks' setup cell clones this repository there and calls `install()`. It installs `requirements.txt`
except torch and torchvision (the platform's builds match its GPU and CUDA) and the packages only the tests use.
Why not `pip install "torch==$(python -c 'import torch; print(torch.__version__)')"`: on PyPI's CUDA builds
`torch.__version__` is `2.14.1+cu130` while the installed distribution says `2.14.1`, so pip finds no such torch,
installs nothing, and the notebook fails much later. Here torch is held where it is by a constraint on the
version pip itself sees (`importlib.metadata`), pip runs as a subprocess, and any failure stops the notebook
at once with one sentence that says what to do.

Standard library only: it runs before anything is installed. Uses: no helpers module (it must not import them).
"""
import importlib, os, subprocess, sys, tempfile
from importlib import metadata
from pathlib import Path

REQUIREMENTS = Path(__file__).resolve().parent.parent / 'requirements.txt'
KEEP = ('torch', 'torchvision')  # the platform's own builds: never reinstalled
SKIP = KEEP + ('ipykernel', 'nbclient', 'nbformat', 'pytest', 'playwright')  # + the platform's kernel, what only tests use


def pins(path=REQUIREMENTS):
    "The `name==version` lines of a requirements file, as {name: version}."
    lines = (l.split('#')[0].strip() for l in Path(path).read_text(encoding='utf-8').splitlines())
    return dict(l.split('==', 1) for l in lines if '==' in l)


def installed(name):
    "The version pip sees for an installed distribution, or None."
    try: return metadata.version(name)
    except metadata.PackageNotFoundError: return None


def _fix():
    if 'KAGGLE_KERNEL_RUN_TYPE' in os.environ:
        return "check that this notebook's Internet switch is on (Kaggle's settings panel), then run this cell again"
    return 'run this cell again; if it fails again, report it on the series\' GitHub page with this message'


def install(requirements=REQUIREMENTS):
    "pip-install the pinned requirements, holding torch/torchvision as installed; raise RuntimeError on any failure."
    want = {n: v for n, v in pins(requirements).items() if n not in SKIP}
    held = {n: installed(n) for n in KEEP if installed(n)}  # '2.14.1', never torch.__version__'s '2.14.1+cu130'
    with tempfile.TemporaryDirectory() as tmp:
        req, con = Path(tmp, 'requirements.txt'), Path(tmp, 'constraints.txt')
        req.write_text(''.join(f'{n}=={v}\n' for n, v in want.items()))
        con.write_text(''.join(f'{n}=={v}\n' for n, v in held.items()))
        pip = subprocess.run([sys.executable, '-m', 'pip', 'install', '-q', '-r', str(req), '-c', str(con)],
                             capture_output=True, text=True)
    if pip.returncode:
        errors = [l for l in pip.stderr.splitlines() if l.startswith('ERROR')] or pip.stderr.strip().splitlines()[-1:]
        raise RuntimeError(f"pip could not install the series' packages ({' '.join(errors)[:300]}): {_fix()}.")
    importlib.invalidate_caches()
    wrong = [f'{n} is {installed(n) or "missing"}, not {v}' for n, v in {**want, **held}.items() if installed(n) != v]
    if wrong: raise RuntimeError(f"After pip, {', '.join(wrong)}: {_fix()}.")
    kept = ', '.join(f'{n} {v}' for n, v in held.items())
    print('Installed ' + ', '.join(f'{n} {v}' for n, v in want.items()) + (f"; kept the platform's {kept}." if kept else '.'))
