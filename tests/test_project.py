"""The project's own promises: notebooks in sync with REPO_URL and their outputs with their code, the pins that
matter, export works."""
import json, re

import helpers as h
import hosted_setup
import nbsync
import pytest
from conftest import ROOT, synthetic_kmnist


def test_notebooks_in_sync_and_outputs_match_code():
    assert nbsync.main(['--check']) == 0


def test_every_notebook_starts_with_badge_and_setup():
    nbs = sorted((ROOT / 'notebooks').glob('*.ipynb'))
    assert [p.name[:2] for p in nbs] == [f'{i:02d}' for i in range(1, len(nbs) + 1)]  # numbered, no gaps
    for p in nbs:
        cells = json.loads(p.read_text())['cells']
        badges = ''.join(cells[0]['source'])
        assert badges.count(h.REPO_URL.split('github.com/')[1] + '/blob/main/notebooks/' + p.name) == 2  # Colab, Kaggle
        assert 'colab.research.google.com' in badges and 'kaggle.com/kernels/welcome' in badges
        setup = ''.join(cells[1]['source'])
        assert "'google.colab' in sys.modules" in setup and 'KAGGLE_KERNEL_RUN_TYPE' in setup and '../scripts' in setup


def test_clean_copies_match_their_notebooks(tmp_path, monkeypatch):
    "clean/ holds one practice copy per notebook: the same code, no outputs, headings and questionnaire only."
    nbs = sorted((ROOT / 'notebooks').glob('*.ipynb'))
    assert sorted(p.name for p in (ROOT / 'clean').glob('*.ipynb')) == [p.name for p in nbs]
    for p in nbs:
        full, clean = json.loads(p.read_text()), json.loads((ROOT / 'clean' / p.name).read_text())
        code = lambda nb: [''.join(c['source']) for c in nb['cells'][2:] if c['cell_type'] == 'code']
        assert code(clean) == code(full), p.name  # every code cell, in order, unchanged
        assert not any(c.get('outputs') for c in clean['cells'] if c['cell_type'] == 'code')
        heads = lambda nb: [l for c in nb['cells'][2:] if c['cell_type'] == 'markdown'
                            for l in ''.join(c['source']).split('\n') if l.startswith('#')]
        assert heads(clean) == heads(full), p.name  # the outline survives
        prose = [''.join(c['source']) for c in clean['cells'][2:] if c['cell_type'] == 'markdown']
        assert all(t.startswith(('#', '## Questionnaire')) for t in prose), p.name
        assert '/blob/main/clean/' + p.name in ''.join(clean['cells'][0]['source'])
        assert "os.chdir('kuzushiji-fastai/clean')" in ''.join(clean['cells'][1]['source'])
    # a notebook changed without its clean copy is caught by --check
    monkeypatch.setattr(nbsync, 'CLEAN', tmp_path)
    for p in nbs: (tmp_path / p.name).write_text((ROOT / 'clean' / p.name).read_text())
    nb = json.loads((tmp_path / nbs[0].name).read_text()); nb['cells'].append(nb['cells'][-1])
    (tmp_path / nbs[0].name).write_text(json.dumps(nb))
    assert nbsync.main(['--check']) == 1


def numbered(nb):
    "Every numbered line (a question or an exercise) from the questionnaire's heading on, in the notebook's markdown."
    md = '\n'.join(''.join(c['source']) for c in nb['cells'] if c['cell_type'] == 'markdown')
    assert md.count('\n## Questionnaire') + md.startswith('## Questionnaire') == 1, 'one questionnaire per notebook'
    return re.findall(r'(?m)^[ \t]*\d+\.[ \t].*$', md.split('## Questionnaire', 1)[1])


def test_clean_copies_keep_every_question_and_exercise():
    "Whatever cell the questionnaire's heading stands in, its clean copy keeps every numbered question and exercise."
    for p in sorted((ROOT / 'notebooks').glob('*.ipynb')):
        full = numbered(json.loads(p.read_text()))
        assert len(full) >= 10, p.name  # each notebook asks at least ten questions
        assert numbered(json.loads((ROOT / 'clean' / p.name).read_text())) == full, p.name
    # the heading further down a cell, after other prose (as notebook 08 had it), and exercises in a later cell
    cell = lambda kind, text: {'cell_type': kind, 'id': None, 'metadata': {}, 'source': [text], 'outputs': []}
    nb = {'metadata': {}, 'cells': [cell('markdown', 'badges'), cell('code', 'setup'), cell('markdown', '# 99 · Title\n\nWhy.'),
          cell('code', 'x = 1'), cell('markdown', '## 3. Put it to work\n\nProse.\n\n## Questionnaire\n\n1. Why?\n2. How?'),
          cell('markdown', '### Further research\n\n1. Try it.')]}
    clean = json.loads(nbsync.clean_copy(nb, '99_x.ipynb'))
    assert numbered(clean) == ['1. Why?', '2. How?', '1. Try it.']
    assert 'Prose.' not in json.dumps(clean) and '## 3. Put it to work' in json.dumps(clean)


def test_hosted_install_keeps_the_platforms_torch():
    "Hosted notebooks install requirements.txt minus torch/torchvision/kernel packages; torch is never pinned by hand."
    want = {n: v for n, v in hosted_setup.pins().items() if n not in hosted_setup.SKIP}
    assert want['fastai'] == '2.8.8' and not any(n.startswith(('torch', 'ipykernel', 'pytest', 'playwright')) for n in want)
    assert 'torch.__version__' not in nbsync.SETUP and not re.search(r'^\s*[!%]', nbsync.SETUP, re.M)  # no magics


def test_pins():
    req = dict(l.split('==') for l in (ROOT / 'requirements.txt').read_text().splitlines() if '==' in l and not l.startswith('#'))
    assert req['fastai'] == '2.8.8' and req['fastcore'] == '2.2.12' and req['fasttransform'] == '0.0.2'
    assert not req['plum-dispatch'].startswith('2.10')


@pytest.mark.parametrize('way', ['datablock', 'tensor'])
def test_export_and_load(tmp_path, way):
    "export() pickles the DataLoaders' pipeline: plum-dispatch 2.10 broke this for DataBlock getters."
    from fastai.vision.all import accuracy, load_learner, resnet18, vision_learner
    (x, y), (xt, yt) = synthetic_kmnist(100, 10)
    dls = h.kmnist_dls((x, y), list('おきすつなはまやれを'), way=way, bs=16, device='cpu')
    learn = vision_learner(dls, resnet18, n_in=1, pretrained=False, metrics=accuracy)
    learn.export(tmp_path / 'export.pkl')
    assert (tmp_path / 'export.pkl').stat().st_size < 60e6  # no data array dragged in (resnet18 alone ~45 MB)
    pred, idx, probs = load_learner(tmp_path / 'export.pkl').predict(xt[0])
    assert pred in 'おきすつなはまやれを' and len(probs) == 10 and pred == 'おきすつなはまやれを'[int(idx)]


def test_teaching_page_covers_every_notebook_and_is_linked():
    "TEACHING.md: a measured time (or 'not measured') for every notebook, and the README points teachers to it."
    page = (ROOT / 'TEACHING.md').read_text()
    rows = {l.split('|')[1].strip()[:2]: l for l in page.splitlines() if re.match(r'\| \d\d [A-Z]', l)}
    assert sorted(rows) == [p.name[:2] for p in sorted((ROOT / 'notebooks').glob('*.ipynb'))]
    for n, row in rows.items():
        assert re.search(r'\d+ s\b|\d+ min', row), f'notebook {n}: no measured time'
    assert 'KUZUSHIJI_MIRROR' in page and '--weights' in page and 'ANSWERS.md' in page and 'clean/' in page
    assert '(TEACHING.md)' in (ROOT / 'README.md').read_text()
