"""The helpers package: short modules, imports that flow one way, every name the notebooks use, exports that load."""
import ast, json, re, subprocess, sys

import numpy as np
import pytest

import helpers as h
from conftest import ROOT, synthetic_kmnist

PKG = ROOT / 'scripts' / 'helpers'
ORDER = ['settings', 'catalogue', 'archives', 'cleaning', 'downloads', 'arrays', 'dataloaders', 'plots', 'lr',
         'tracking', 'speed', 'presets', 'recipes', 'training', 'validation', 'calligraphy', 'kanji', 'longtail', 'kanji_training',
         'inference', 'page', 'app', 'web']  # bottom to top, as helpers/__init__.py lists them


def modules():
    return sorted(p.stem for p in PKG.glob('*.py') if p.stem != '__init__')


def helper_imports(name):
    "The helpers modules that `name` imports (`from . import x`, `from .x import y`), wherever in the file."
    out = set()
    for node in ast.walk(ast.parse((PKG / f'{name}.py').read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            out |= {node.module} if node.module else {a.name for a in node.names}
    return out


def test_every_module_has_a_place_in_the_order():
    assert set(modules()) <= set(ORDER), f'add new modules to ORDER (and to helpers/__init__.py): {set(modules()) - set(ORDER)}'


@pytest.mark.parametrize('name', modules())
def test_imports_flow_downwards_only(name):
    "No module imports one above it, so there can be no cycle."
    for dep in helper_imports(name):
        assert ORDER.index(dep) < ORDER.index(name), f'{name} imports {dep}, which sits above it'


@pytest.mark.parametrize('name', modules())
def test_modules_are_short_and_say_what_they_hold(name):
    text = (PKG / f'{name}.py').read_text()
    assert len(text.splitlines()) <= 300, f'{name}.py has {len(text.splitlines())} lines: split it'
    doc = ast.get_docstring(ast.parse(text))
    assert doc and ('Uses:' in doc or name in ('settings', 'catalogue')), f'{name}.py: say what it holds and uses'
    body = ast.parse(text).body
    first_def = min((n.lineno for n in body if isinstance(n, (ast.FunctionDef, ast.ClassDef))), default=10**9)
    assert all(n.lineno < first_def for n in body if isinstance(n, (ast.Import, ast.ImportFrom))), \
        f'{name}.py: imports belong at the top'


def test_init_only_hands_names_on():
    tree = ast.parse((PKG / '__init__.py').read_text())
    assert all(isinstance(n, ast.ImportFrom) and n.level == 1 for n in tree.body[1:])
    names = [a.asname or a.name for n in tree.body[1:] for a in n.names]
    twice = sorted({n for n in names if names.count(n) > 1})
    assert not twice, f'two modules hand on the same name, and the later one hides the other: {twice}'


def test_every_name_used_by_notebooks_and_scripts_resolves():
    used = set()
    for nb in (ROOT / 'notebooks').glob('*.ipynb'):
        for c in json.loads(nb.read_text())['cells']:
            if c['cell_type'] == 'code': used |= set(re.findall(r'\bhelpers\.(\w+)', ''.join(c['source'])))
    for py in (ROOT / 'scripts').glob('*.py'):
        used |= set(re.findall(r'\bh\.(\w+)', py.read_text()))
    missing = sorted(n for n in used if not hasattr(h, n) and not (PKG / f'{n}.py').exists())  # or a module: helpers.app
    assert not missing, f'not in helpers: {missing}'
    assert used, 'found no helpers names at all: has the notebooks folder moved?'


def test_import_helpers_leaves_gradio_out():
    "Only the app needs Gradio, which takes seconds to import: `import helpers` must not pay for it."
    code = 'import sys; sys.path.insert(0, sys.argv[1]); import helpers; print("gradio" in sys.modules)'
    r = subprocess.run([sys.executable, '-c', code, str(ROOT / 'scripts')], capture_output=True, text=True, timeout=300)
    assert r.stdout.split()[-1] == 'False', r.stderr[-2000:]


def test_names_live_where_a_reader_looks():
    assert h.kmnist_dls.__module__ == 'helpers.dataloaders' and h.download.__module__ == 'helpers.downloads'
    assert h.ArrayDL.__module__ == 'helpers.dataloaders' and h.progressive_resizing.__module__ == 'helpers.calligraphy'


def test_export_loads_in_a_fresh_process(tmp_path):
    "An export refers to the series' classes by module path; a new Python with scripts/ on its path loads it."
    from fastai.vision.all import Learner
    (x, y), (xt, _) = synthetic_kmnist(60, 4)
    dls = h.kmnist_dls((x, y), list('おきすつなはまやれを'), bs=16, device='cpu')
    learn = Learner(dls, h.kmnist_cnn(10))
    path = h.export(learn, tmp_path / 'model.pkl')
    np.save(tmp_path / 'img.npy', xt[0])
    code = ("import sys, numpy as np; sys.path.insert(0, sys.argv[1]); from fastai.learner import load_learner; "
            "learn = load_learner(sys.argv[2]); pred, i, p = learn.predict(np.load(sys.argv[3])); "
            "print(type(learn.dls.valid).__module__, pred, len(p))")
    r = subprocess.run([sys.executable, '-c', code, str(ROOT / 'scripts'), str(path), str(tmp_path / 'img.npy')],
                       capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    module, pred, n = r.stdout.split()[-3:]
    assert module == 'helpers.dataloaders' and pred in 'おきすつなはまやれを' and n == '10'
