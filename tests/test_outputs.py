"""Committed outputs: made by tools/execute_notebooks.py for the code beside them, and free of this machine.

The committed notebooks are checked as they are; the checks and the cleaning are also run on small notebooks made
here, each with the fault it must catch, so that every check is seen to fail."""
import base64, copy, json, os, re, struct, zlib

import execute_notebooks as ex
import helpers as h
import nbformat
import nbsync
import pytest
from conftest import ROOT
from nbrun import run

NOTEBOOKS = sorted((ROOT / 'notebooks').glob('*.ipynb'))


def png(w=4, h_=4):
    "A small valid PNG (grey square)."
    def chunk(kind, data): return struct.pack('>I', len(data)) + kind + data + struct.pack('>I', zlib.crc32(kind + data))
    raw = b''.join(b'\0' + b'\x80' * w for _ in range(h_))
    return b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', struct.pack('>IIBBBBB', w, h_, 8, 0, 0, 0, 0)) + \
        chunk(b'IDAT', zlib.compress(raw)) + chunk(b'IEND', b'')


def notebook(*code, name='99_tiny.ipynb'):
    "A notebook laid out like the series' own: badge cell, setup cell, then `code` cells."
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell(''), nbformat.v4.new_code_cell(nbsync.SETUP)]
                                  + [nbformat.v4.new_code_cell(c) for c in code])
    return json.loads(nbsync.canonical(json.loads(nbformat.writes(nb)), name))


def as_executed(nb):
    "What execute_notebooks.py records: the run, and each code cell's source hash."
    nb = copy.deepcopy(nb)
    nb['metadata']['kuzushiji'] = {'date': '2026-01-01', 'hardware': 'a test', 'seconds': 125, 'versions': {'python': '3'}}
    for c in nb['cells']:
        if c['cell_type'] == 'code': c['metadata']['source_hash'] = nbsync.source_hash(c['source'])
    return nb


@pytest.mark.parametrize('path', NOTEBOOKS, ids=lambda p: p.name[:2])
def test_committed_outputs_are_fit(path):
    "Outputs, where a notebook has them, match its code and show nothing of the machine that made them."
    text = path.read_text(encoding='utf-8')
    assert ex.problems(text, path.name) == []
    nb = json.loads(text)
    if 'kuzushiji' in nb['metadata']:  # the run is recorded, and shown under the badges
        run_ = nb['metadata']['kuzushiji']
        assert run_['date'] and run_['hardware'] and run_['versions']['fastai']
        assert nbsync.provenance(run_) in ''.join(nb['cells'][0]['source'])


def test_every_check_can_fail():
    shown = {'output_type': 'stream', 'name': 'stdout'}
    nb = as_executed(notebook('a', 'b', 'c', 'd', 'e', name='05_x.ipynb'))
    nb['cells'][2]['outputs'] = [{**shown, 'text': f'saved to {ROOT}/models, /home/alice/data/x.npz\n'},
                                 {**shown, 'text': 'wandb sync wandb/offline-run-20260101_101010-ab12cd34\n'}]
    nb['cells'][3]['outputs'] = [{**shown, 'text': ' 10%\r 50%\r100%\n'},
                                 {'output_type': 'error', 'ename': 'ValueError', 'evalue': 'x', 'traceback': []}]
    nb['cells'][4]['outputs'] = [{'output_type': 'display_data', 'metadata': {},
                                  'data': {'image/png': base64.b64encode(png()).decode(), 'text/plain': 'fig'}}]
    nb['cells'][4]['metadata']['tags'] = ['no-pictures']
    nb['cells'][5]['source'] = 'changed()'
    found = '\n'.join(ex.problems(json.dumps(nb), '05_x.ipynb'))
    for what in (f'path of this machine: {ROOT}/models', 'path of this machine: /home/alice/data/x.npz',
                 'W&B run folder', 'progress bar mid-way', 'an error (ValueError)', 'cell 4: a picture',
                 'cell 5 changed after its outputs were made'):
        assert what in found, what
    nb['cells'][4]['metadata']['tags'] = []
    assert 'picture' not in '\n'.join(ex.problems(json.dumps(nb), '05_x.ipynb'))  # an untagged cell's figure stays
    nb['cells'][4]['source'] = 'dls.show_batch()'
    assert 'cell 4: draws images of the data but is not tagged no-pictures' in ex.problems(json.dumps(nb), '05_x.ipynb')
    assert not any('draws images' in p for p in ex.problems(json.dumps(nb), '01_x.ipynb'))  # KMNIST's may be shown
    del nb['metadata']['kuzushiji']
    assert 'cell 2 has outputs not made by execute_notebooks.py' in ex.problems(json.dumps(nb), '01_x.ipynb')
    assert any('MB, more than' in p for p in ex.problems(json.dumps(nb) + ' ' * ex.MAX_BYTES, '01_x.ipynb'))


def test_clean_makes_outputs_fit():
    image = base64.b64encode(png()).decode()
    nb = as_executed(notebook('a', 'b', name='05_x.ipynb'))
    nb['cells'][2]['outputs'] = [
        {'output_type': 'stream', 'name': 'stdout', 'text': [f'data in {h.settings.DATA_DIR}/kmnist\n', 'epoch 1\r']},
        {'output_type': 'stream', 'name': 'stdout', 'text': 'epoch 2\n'},  # the same bar, printed in two messages
        {'output_type': 'stream', 'name': 'stderr', 'text': f'W&B: logging offline to {ROOT}/wandb/offline-run-20260101_101010-ab12cd34\n'},
        {'output_type': 'execute_result', 'execution_count': 1, 'metadata': {},
         'data': {'text/plain': f"Path('{ROOT}/models/export.pkl')"}}]
    nb['cells'][3]['outputs'] = [{'output_type': 'display_data', 'metadata': {}, 'data': {'image/png': image, 'text/plain': 'fig'}}]
    kept = copy.deepcopy(nb)
    nb['cells'][3]['metadata']['tags'] = ['no-pictures']
    ex.clean(nb, '05_x.ipynb'); ex.clean(kept, '05_x.ipynb')
    outs = nb['cells'][2]['outputs']
    assert ''.join(outs[0]['text']) == 'data in ../data/kmnist\nepoch 2\n'
    assert ''.join(outs[1]['text']) == 'W&B: logging offline to ../wandb/offline-run-<date>_<time>-<id>\n'
    assert ''.join(outs[2]['data']['text/plain']) == "Path('../models/export.pkl')"
    assert {k: ''.join(v) for k, v in nb['cells'][3]['outputs'][0]['data'].items()} == {'text/plain': ex.PICTURE_NOTE}
    assert kept['cells'][3]['outputs'][0]['data']['image/png'] == image  # an untagged cell's picture stays, untouched
    assert ex.problems(json.dumps(nb), '05_x.ipynb') == [] and ex.problems(json.dumps(kept), '05_x.ipynb') == []


def test_execute_writes_clean_outputs_and_refuses_errors(tmp_path):
    "The whole path on a tiny notebook: run, record, clean; a failing cell or a foreign path stops it."
    path = tmp_path / '05_tiny.ipynb'
    tiny = notebook(
        'import helpers; print(helpers.ROOT / "models")',
        f'from IPython.display import Image; Image(data={png()!r})',
        'import sys; [print(f"{i}0%", end="\\r", flush=True) for i in range(1, 11)]; print()')
    tiny['cells'][3].setdefault('metadata', {})['tags'] = ['no-pictures']
    path.write_text(json.dumps(tiny))
    nb = json.loads(ex.execute(path, timeout=120))
    cells = nb['cells']
    assert ''.join(cells[2]['outputs'][0]['text']) == '../models\n'
    assert {k: ''.join(v) for k, v in cells[3]['outputs'][0]['data'].items()} == {'text/plain': ex.PICTURE_NOTE}
    assert ''.join(cells[4]['outputs'][0]['text']).strip() == '100%'
    assert nb['metadata']['kuzushiji']['versions']['fastai'] == h.versions()['fastai']
    assert nbsync.provenance(nb['metadata']['kuzushiji']) in ''.join(cells[0]['source'])
    assert nbsync.unbacked(nb) == [] and cells[1]['metadata']['source_hash'] == nbsync.source_hash(nbsync.SETUP)

    for bad, says in (('1/0', 'ZeroDivisionError'), ('print("/usr/lib/python3/dist-packages")', 'a path of this machine')):
        path.write_text(json.dumps(notebook(bad)))
        before = path.read_text()
        with pytest.raises(SystemExit) as e: ex.execute(path, timeout=120)
        assert says in str(e.value) and 'left as it was' in str(e.value) and path.read_text() == before
    kept = str(e.value).split('the run is in ')[1].split(':\n')[0]  # the rejected run is kept for a look
    assert '/usr/lib/python3/dist-packages' in open(kept, encoding='utf-8').read()


def test_strip_and_changed_cells():
    nb = as_executed(notebook('print(1)'))
    nb['cells'][2]['outputs'] = [{'output_type': 'stream', 'name': 'stdout', 'text': '1\n'}]
    nb['cells'][2]['execution_count'] = 2
    assert nbsync.unbacked(nb) == []
    stripped = json.loads(nbsync.canonical(copy.deepcopy(nb), '99_tiny.ipynb', strip=True))
    assert 'kuzushiji' not in stripped['metadata'] and 'outputs below' not in ''.join(stripped['cells'][0]['source'])
    assert all(c['outputs'] == [] and c['execution_count'] is None and 'source_hash' not in c['metadata']
               for c in stripped['cells'] if c['cell_type'] == 'code')
    kept = json.loads(nbsync.canonical(copy.deepcopy(nb), '99_tiny.ipynb'))
    assert kept['cells'][2]['outputs'] and 'outputs below' in ''.join(kept['cells'][0]['source'])
    nb['cells'][2]['source'] = 'print(2)'
    assert nbsync.unbacked(nb) == ['cell 2 changed after its outputs were made']


def test_quick_runs_never_write_back(tmp_path):
    "tests/nbrun.py (the quick-mode notebook tests) executes in memory: the file on disk stays as it was."
    path = tmp_path / 'tiny.ipynb'
    path.write_text(nbformat.writes(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell('print("ran")')])))
    before = path.read_bytes()
    nb = run(path)
    assert nb.cells[0].outputs[0].text == 'ran\n' and path.read_bytes() == before


def test_quick_mode_is_refused(monkeypatch):
    monkeypatch.setattr(ex.h, 'QUICK', True)
    with pytest.raises(SystemExit, match='KUZUSHIJI_QUICK is set'): ex.main(['01'])


def test_committed_05_shows_its_numbers_and_figures_but_no_calligraphy():
    "A reader on GitHub sees notebook 05's numbers, lr_find plots and confusion matrix; never a calligraphy image."
    nb = json.loads((ROOT / 'notebooks' / '05_calligraphy_progressive_resizing.ipynb').read_text())
    shown = lambda c: ''.join(''.join(o.get('text', '')) + ''.join(o.get('data', {}).get('text/plain', ''))
                              for o in c.get('outputs', []))
    text = ''.join(shown(c) for c in nb['cells'])
    assert re.search(r'stage 1 \(\d+ px\): validation accuracy 0\.\d+', text) and 'stage 2' in text
    assert len(re.findall(r"learning rate [\d.e+-]+, by the article's rule", text)) == 4  # every phase's lr_find
    pictures = [c for c in nb['cells'] for o in c.get('outputs', []) if 'image/png' in o.get('data', {})]
    assert len(pictures) == 5 and all('no-pictures' not in c['metadata'].get('tags', []) for c in pictures)
    tagged = [c for c in nb['cells'] if 'no-pictures' in c.get('metadata', {}).get('tags', [])]
    assert tagged and all(ex.PICTURE_NOTE in shown(c) for c in tagged)


def test_committed_07_chose_the_best_cpu_preset_by_its_own_rule():
    """The committed full-size run of notebook 07 judged each idea at the final budget against a margin (the seeds'
    spread), chose a recipe that follows from what it printed, and that recipe is today's `best-cpu` preset."""
    nb = json.loads((ROOT / 'notebooks' / '07_beyond_the_article.ipynb').read_text())
    out = {t: ''.join(''.join(o.get('text', '')) for o in c.get('outputs', []))
           for c in nb['cells'] for t in c.get('metadata', {}).get('tags', [])}
    cfg = h.make_config('kmnist', 'best-cpu')
    budget = cfg['epochs'] * cfg['ensemble']  # the preset's epochs, all models together
    assert f'{budget} epochs per judged model' in out['settings']
    judged = f'after {budget} epochs on 8,000 images'
    assert out['seeds'].count(judged) == 3
    spread = float(re.search(r'spread \(max - min\) ([\d.]+)%', out['seeds'])[1])
    kept = {}
    for tag, idea in (('erase', 'erase'), ('brush', 'augment'), ('mixup', 'mix')):
        assert judged in out[tag]
        m = re.search(r': ([+-][\d.]+)%, margin needed ([\d.]+)%: (keep it|leave it out|a tie: leave it out)', out[tag])
        assert float(m[2]) == spread and (m[3] == 'keep it') == (float(m[1]) > spread)
        kept[idea] = m[3] == 'keep it'
    tta = re.search(r'([+-][\d.]+)%, margin needed [\d.]+%: (use it|leave it out)', out['tta'])
    ens = re.search(r'([+-][\d.]+)%, margin needed ([\d.]+)%: (?:a tie: )?(the ensemble|the one model)', out['ensemble'])
    assert 'the mean of its 3 seeds' in out['ensemble']   # the one model judged as every idea was, by its seeds' mean
    assert float(ens[2]) == spread and (ens[3] == 'the ensemble') == (float(ens[1]) > spread)
    assert f'members: 2 models of {budget // 2}, {budget // 2} epochs' in out['ensemble']
    assert f'one model, {budget} epochs' in out['ensemble']
    stroke = re.search(r'([+-][\d.]+)%, margin needed ([\d.]+)%: (keep it|a tie: leave it out|leave it out.*)$',
                       out['stroke'], re.M)  # judged at full size (results/best-cpu-stroke.json), three seeds each
    assert '6 runs of 20 epochs on 54,000 images' in out['stroke']
    assert (stroke[3] == 'keep it') == (float(stroke[1]) > float(stroke[2])), out['stroke']
    assert (cfg['stroke'] > 0) == (stroke[3] == 'keep it')
    chosen = dict(erase=cfg['erase'], augment=cfg['augment'], mix=cfg['mix'], tta=cfg['tta'], ensemble=cfg['ensemble'],
                  epochs=cfg['epochs'], stroke=cfg['stroke'])
    assert 'the chosen recipe: ' + ', '.join(f'{k}={v}' for k, v in chosen.items()) in out['final']
    assert bool(cfg['erase']) == kept['erase'] and (cfg['augment'] == 'brush') == kept['augment']
    assert bool(cfg['mix']) == kept['mix'] and cfg['tta'] == (tta[2] == 'use it')
    assert (cfg['ensemble'] > 1) == (ens[3] == 'the ensemble')
    minutes = float(re.search(r'on 54,000 images: validation [\d.]+% on a random slice; ([\d.]+) minutes', out['final'])[1])
    # the preset's budget, as measured in the committed run: met, or the notebook says by how much it was not
    prose = ' '.join(' '.join(''.join(c['source']).split()) for c in nb['cells'] if c['cell_type'] == 'markdown')
    assert minutes <= 20 or f'went {minutes - 20:.1f} minutes over it' in prose, minutes


def test_the_line_under_the_badges_says_how_the_run_computed_and_how_long_it_took():
    run_ = {'date': '2026-01-01', 'hardware': '2 cores of an AMD EPYC, no GPU, AVX2 kernels (held to them), float32 only, '
            'no bfloat16', 'seconds': 125, 'versions': {'python': '3.11.7', 'fastai': '2.8.8'}}
    line = nbsync.provenance(run_)
    assert 'AVX2 kernels (held to them), float32 only' in line and 'in 2 min 5 s, top to bottom' in line, line
    assert 'top to bottom' not in nbsync.provenance({k: v for k, v in run_.items() if k != 'seconds'})  # older runs
    assert ex.hardware().startswith(f'{len(os.sched_getaffinity(0))} cores of ') and ' kernels' in ex.hardware()
