#!/usr/bin/env python
"""The series' GPU path in one command, within 10 minutes: what a first session on an NVIDIA GPU should run.

    python tools/gpu_check.py --data data/kmnist --mirror DIR --out results/gpu.json
    python tools/gpu_check.py --data data/kmnist --mirror DIR --out results/gpu.json --steps article notebook-05
    python tools/gpu_check.py ... --quick --logs DIR   # every step in quick mode, in seconds; keep logs and notebooks

What it runs, in order, each step timed (the minutes are guesses until a first run replaces them):
  article      `train.py --dataset kmnist --preset article`: ResNet34, 10 epochs, one-cycle, fp16 (about 1.5 min)
  best         `train.py --dataset kmnist --preset best`: 20 epochs, label smoothing, mixup, TTA (about 2.5 min)
  notebook-04  notebook 04 top to bottom on its GPU path (the article preset, then the batch-size study): a copy run
               with nbclient as tools/execute_notebooks.py runs it; the committed file is not touched (about 2.5 min)
  notebook-05  notebook 05 on the classroom subset, 600 calligraphy images: progressive resizing (about 2 min)
The steps share a budget (--budget, 570 s): a step that would not fit in what is left (by its guess above) is
skipped with a line saying so, and a step still running when the budget runs out is stopped ('timed out'): nothing
hangs silently. Each training step runs in its own process (train.py, a notebook kernel), so one failure or a
full GPU memory does not take the others down.

Data: the GPU machine has no internet. --data is the folder of KMNIST's npz files and class map
(`python scripts/download_data.py --dataset kmnist`); --mirror a folder holding notebook 05's subset zip
(`python scripts/download_data.py --dataset calligraphy --subset --dest DIR`) and, if you have them, the ImageNet
weights (`python scripts/download_data.py --weights resnet34 --dest DIR`); or --calligraphy, the subset as class
folders (a copy such as the shared one), which this packs into that zip itself. Weights come from the mirror or torch's
cache only, never from the internet (a download could wait for minutes): without them every step trains from
random weights, and the JSON says 'random'. Missing data stops the run at once with one sentence.

Writes ONE JSON (`--out`, atomically, again after every step, so a machine taken back mid-run leaves what was done):
the GPU's name, CUDA and library versions, whether ImageNet weights were there, and per step its status ('passed',
'failed', 'timed out' or 'skipped'), seconds, accuracies and what it trained; then prints a table. Exit status 0
when every step passed, 2 when one did not, 1 for missing data.

On a CPU, or with --quick, every step runs in quick mode (train.py --quick: 2,000 images and one epoch;
KUZUSHIJI_QUICK=1 in the notebooks: their tiny data and quick presets, so notebook 04 then trains its quick CNN,
not the GPU path). tests/test_gpu_check.py runs it so on synthetic data."""
import argparse, datetime, json, os, re, shutil, subprocess, sys, tempfile, time, zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / 'scripts'))  # the helpers package, as the scripts use it
import helpers as h
import torch

NOTEBOOKS = ROOT / 'notebooks'
STEPS = {'article': 90, 'best': 150, 'notebook-04': 150, 'notebook-05': 120}  # guessed seconds on one GPU
QUICK_STEPS = {'article': 15, 'best': 20, 'notebook-04': 40, 'notebook-05': 30}  # at least this, in quick mode
NOTEBOOK_FILES = {'notebook-04': '04_train_resnet34_one_cycle.ipynb',
                  'notebook-05': '05_calligraphy_progressive_resizing.ipynb'}
ARCH = 'resnet34'   # the GPU presets' network, KMNIST's and calligraphy's
NO_INTERNET = 'http://127.0.0.1:9'  # a closed port as the proxy: a download attempt fails at once instead of waiting


class StepFailed(Exception):
    "A step that ran and failed: the message is its last words."


def missing_data(data, mirror, calligraphy, steps):
    "One sentence saying what data is missing and how to get it, or None when every step has what it reads."
    if {'article', 'best', 'notebook-04'} & set(steps):
        lacking = [n for n, _ in h.dataset_files('kmnist', 'npz') if not (data / n).is_file()]
        if lacking:
            return (f"{data} {'lacks ' + ', '.join(lacking) if data.is_dir() else 'is not a folder'}: pass --data the "
                    f"folder of KMNIST's npz files and class map (python scripts/download_data.py --dataset kmnist "
                    f"downloads them).")
    if 'notebook-05' in steps and calligraphy:
        if not all((calligraphy / c).is_dir() for c in h.CALLIGRAPHY_CLASSES):
            return (f"--calligraphy {calligraphy} does not hold the class folders {', '.join(h.CALLIGRAPHY_CLASSES)}: "
                    f"pass the folder that does.")
    elif 'notebook-05' in steps and not (mirror and (mirror / h.CALLIGRAPHY_ZIP).is_file()):
        return (f"{'--mirror ' + str(mirror) if mirror else 'No --mirror'} holds no {h.CALLIGRAPHY_ZIP}: make notebook "
                f"05's subset with python scripts/download_data.py --dataset calligraphy --subset --dest DIR and pass "
                f"--mirror DIR, or pass its class folders as --calligraphy DIR (or leave notebook-05 out of --steps).")
    return None


def pack_calligraphy(folder, mirror):
    """Class folders packed as notebook 05 downloads them: one zip under the archive's name, in the archive's layout
    (`cleaning.build_subset` writes the same), into `mirror`. File names that are not UTF-8 are left out."""
    top = f"{h.CALLIGRAPHY_REPO.rsplit('/', 1)[1]}-{h.CALLIGRAPHY_COMMIT}/data"
    with zipfile.ZipFile(mirror / h.CALLIGRAPHY_ZIP, 'w', zipfile.ZIP_STORED) as z:  # JPEGs do not compress
        for c in h.CALLIGRAPHY_CLASSES:
            for f in sorted((folder / c).iterdir()):
                if f.is_file() and f.name == f.name.encode('utf-8', 'replace').decode(): z.write(f, f'{top}/{c}/{f.name}')
    return mirror / h.CALLIGRAPHY_ZIP


def imagenet_weights(mirror):
    "'imagenet' when torchvision's ResNet34 weights are in torch's cache or on the mirror (copied to the cache), else 'random'."
    try: return 'imagenet' if h.install_weights(ARCH, mirror=str(mirror) if mirror else None, quiet=True) else 'random'
    except Exception: return 'random'  # a mirror that cannot be read: no weights, as without one


def child_env(work, mirror, quick):
    "The environment of every step: its own data, output and W&B folders, the mirror, no internet, quick mode or not."
    env = {k: v for k, v in os.environ.items() if k != 'KUZUSHIJI_QUICK'}
    env.update(KUZUSHIJI_DATA=str(work / 'data'), KUZUSHIJI_OUT=str(work / 'out'), WANDB_MODE='offline',
               WANDB_DIR=str(work), WANDB_SILENT='true', MPLBACKEND='Agg', PYTHONWARNINGS='ignore:IProgress not found',
               **{k: NO_INTERNET for k in ('HTTP_PROXY', 'HTTPS_PROXY', 'http_proxy', 'https_proxy')},
               NO_PROXY='127.0.0.1,localhost', no_proxy='127.0.0.1,localhost')
    if mirror: env[h.MIRROR_ENV] = str(mirror)
    if quick: env['KUZUSHIJI_QUICK'] = '1'
    return env


def run_preset(step, ctx, limit):
    "train.py with a KMNIST preset, in its own process; what its results JSON says."
    out, log = ctx['work'] / f'{step}.json', ctx['logs'] / f'{step}.log'
    cmd = [sys.executable, str(ROOT / 'scripts' / 'train.py'), '--dataset', 'kmnist', '--preset', step,
           '--data', str(ctx['data']), '--out', str(out), '--model', str(ctx['work'] / 'models' / f'{step}.pkl'),
           '--wandb', 'off'] + ['--quick'] * ctx['quick'] + ['--no-pretrained'] * (ctx['weights'] != 'imagenet')
    with open(log, 'w') as f:
        r = subprocess.run(cmd, env=ctx['env'], stdout=f, stderr=subprocess.STDOUT, timeout=limit, cwd=ROOT)
    if r.returncode: raise StepFailed(last_words(log.read_text(errors='replace')))
    res = json.loads(out.read_text(encoding='utf-8'))
    cfg = res['config']
    acc = lambda v: None if v is None else round(v, 4)
    return dict(valid_accuracy=acc(res['valid_accuracy']), test_accuracy=acc(res['test_accuracy']), weights=res['weights'],
                trainable=res['trainable'], computes=res['computes'], lr=res['lr'], epochs=cfg['epochs'],
                n_train=res['n_train'], train_seconds=res['seconds'], images_per_second=res['images_per_second'],
                tta=res['tta'], test_without_tta=acc(res['without_tta']['test']))


def last_words(text, n=3):
    "The last few lines a failed step printed: what it said before it stopped."
    return ' | '.join(l.strip() for l in text.strip().splitlines()[-n:]) or 'no output'


def cell_text(nb, tag):
    "What the cell tagged `tag` printed or showed as text ('' when no cell has that tag)."
    out = []
    for c in nb.cells:
        if tag in c.get('metadata', {}).get('tags', []):
            for o in c.get('outputs', []):
                out.append(o.get('text', '') if o.output_type == 'stream' else o.get('data', {}).get('text/plain', ''))
    return ''.join(out)


def number(pattern, text):
    m = re.search(pattern, text)
    return float(m.group(1)) if m else None


def slowest_cells(nb, n=3):
    "The `n` slowest cells: [tag or cell number, seconds], from the timings nbclient records."
    times = []
    for i, c in enumerate(nb.cells):
        t = c.get('metadata', {}).get('execution', {})
        if 'iopub.execute_input' in t and 'shell.execute_reply' in t:
            s = (datetime.datetime.fromisoformat(t['shell.execute_reply'].rstrip('Z')) -
                 datetime.datetime.fromisoformat(t['iopub.execute_input'].rstrip('Z'))).total_seconds()
            times.append([(c.metadata.get('tags') or [f'cell {i}'])[0], round(s, 1)])
    return sorted(times, key=lambda t: -t[1])[:n]


def run_notebook(step, ctx, limit):
    """A copy of the notebook, top to bottom in a fresh kernel (in notebooks/, as a reader's runs); every cell may take
    at most the time left, so a stuck cell stops the step at the deadline. What its cells showed."""
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError, CellTimeoutError
    nb = nbformat.read(str(NOTEBOOKS / NOTEBOOK_FILES[step]), as_version=4)
    deadline = time.time() + limit
    client = NotebookClient(nb, kernel_name='python3', timeout_func=lambda cell: max(1, int(deadline - time.time())),
                            shutdown_kernel='immediate', resources={'metadata': {'path': str(NOTEBOOKS)}})
    env = {**ctx['env'], 'MPLBACKEND': 'module://matplotlib_inline.backend_inline'}
    try: client.execute(env=env)
    except CellTimeoutError: raise subprocess.TimeoutExpired(step, limit) from None
    except CellExecutionError as e: raise StepFailed(last_words(str(e))) from None
    finally: nbformat.write(nb, str(ctx['logs'] / NOTEBOOK_FILES[step]))  # what ran, outputs and all, for a look
    res = dict(slowest_cells=slowest_cells(nb))
    if step == 'notebook-04':
        m = re.search(r'^(\S+) preset on ', cell_text(nb, 'config'), re.M)
        res.update(preset=m and m.group(1), weights=(re.search(r'parameters from (\w+) weights', cell_text(nb, 'learner'))
                                                     or [None, None])[1],
                   valid_accuracy=number(r'validation accuracy ([\d.]+);', cell_text(nb, 'test')),
                   test_accuracy=number(r'test accuracy ([\d.]+)', cell_text(nb, 'test')),
                   batch_size_picked=number(r'the rule picks batch size (\d+)', cell_text(nb, 'rule')))
        if res['batch_size_picked'] is not None: res['batch_size_picked'] = int(res['batch_size_picked'])
    else:
        res.update(weights=(re.search(r'from (\w+) weights', cell_text(nb, 'stage1-frozen')) or [None, None])[1],
                   stage1_accuracy=number(r'validation accuracy ([\d.]+)', cell_text(nb, 'stage1')),
                   valid_accuracy=number(r'validation accuracy ([\d.]+)', cell_text(nb, 'stage2')), test_accuracy=None)
    if res['valid_accuracy'] is None: raise StepFailed('ran, but showed no validation accuracy')
    return res


def setup(work, data):
    "Work folders; the KMNIST files linked into the steps' data folder, where the notebooks' download finds them."
    for d in ('data/kmnist', 'out', 'models', 'logs', 'mirror'): (work / d).mkdir(parents=True, exist_ok=True)
    for name, _ in h.dataset_files('kmnist', 'npz'):
        if (data / name).is_file(): (work / 'data' / 'kmnist' / name).symlink_to((data / name).resolve())


def environment(mode, weights, budget):
    return dict(format=1, mode=mode, device=h.device_name(),
                gpu=torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
                cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version() if torch.cuda.is_available() else None,
                versions={**h.versions(), **{p: _version(p) for p in ('torchvision', 'nbclient')}},
                imagenet_weights=weights, budget_seconds=budget, date=datetime.datetime.now().isoformat(timespec='seconds'))


def _version(package):
    from importlib.metadata import PackageNotFoundError, version
    try: return version(package)
    except PackageNotFoundError: return None


def note(s):
    "What a step's row says beside its numbers: how it trained, or why it did not pass."
    if s['status'] != 'passed': return s.get('error') or s.get('note') or ''
    if 'computes' in s: return (f"{s['computes']}, {s['trainable']:.0%} of the weights trained, lr {s['lr']:.1e}, "
                                f"{s['images_per_second']:,.0f} images/s" + (', with TTA' if s['tta'] else ''))
    if 'preset' in s: return f"its {s['preset']} preset; the study picks batch size {s['batch_size_picked']}"
    return f"stage 1: {s['stage1_accuracy']}" if s.get('stage1_accuracy') is not None else ''


def table(report):
    "The report as lines of a table, for a terminal."
    fmt = lambda v, spec='.4f': '-' if v is None else format(v, spec) if isinstance(v, float) else str(v)
    lines = [f"{'step':12s} {'status':9s} {'seconds':>7s} {'valid':>7s} {'test':>7s}  {'weights':8s} note"]
    for s in report['steps']:
        lines.append(f"{s['step']:12s} {s['status']:9s} {fmt(s.get('seconds'), '.1f'):>7s} "
                     f"{fmt(s.get('valid_accuracy')):>7s} {fmt(s.get('test_accuracy')):>7s}  {fmt(s.get('weights')):8s} "
                     f"{note(s)}")
    lines.append(f"{report['seconds']:.0f} s of a {report['budget_seconds']:.0f} s budget, {report['mode']} mode, on "
                 f"{report['device']}; ImageNet weights: {report['imagenet_weights']}")
    return lines


def main(argv=None):
    t_start = time.time()
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0], epilog=__doc__.split('\n', 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--data', default=str(ROOT / 'data' / 'kmnist'), help="KMNIST's npz files and class map")
    p.add_argument('--mirror', default=os.environ.get(h.MIRROR_ENV),
                   help="a folder with notebook 05's subset zip and, if you have them, the ImageNet weights")
    p.add_argument('--calligraphy', help="notebook 05's subset as class folders, instead of its zip on the mirror")
    p.add_argument('--out', default=str(ROOT / 'results' / 'gpu.json'), help='the JSON to write')
    p.add_argument('--steps', nargs='+', choices=list(STEPS), default=list(STEPS), help='which steps (default all)')
    p.add_argument('--budget', type=float, default=570., help='seconds for every step together (default 570)')
    p.add_argument('--quick', action='store_true', help='quick mode on a GPU too (always on a CPU)')
    p.add_argument('--logs', help="keep each step's log and the executed notebooks in this folder")
    a = p.parse_args(argv)
    data, mirror, calligraphy = Path(a.data), Path(a.mirror) if a.mirror else None, a.calligraphy and Path(a.calligraphy)
    if mirror is not None and '://' in str(a.mirror):
        print(f'error: --mirror must be a folder on this machine (it has no internet), not {a.mirror}', file=sys.stderr)
        return 1
    steps = [s for s in STEPS if s in a.steps]
    wrong = missing_data(data, mirror, calligraphy, steps)
    if wrong: print(f'error: {wrong}', file=sys.stderr); return 1
    quick = a.quick or h.QUICK or not torch.cuda.is_available()
    if quick and not (a.quick or h.QUICK): print('No NVIDIA GPU here: every step runs in quick mode (tiny data, one epoch).')
    weights = imagenet_weights(mirror)
    report = dict(environment('quick' if quick else 'full', weights, a.budget), steps=[], finished=False, seconds=0.)
    work = Path(tempfile.mkdtemp(prefix='gpu-check-'))
    try:
        setup(work, data)
        if calligraphy:  # a mirror of the work folder's own: the mirror's files, and the zip packed from the folders
            for f in (mirror.iterdir() if mirror else []):
                if f.is_file() and f.name != h.CALLIGRAPHY_ZIP: (work / 'mirror' / f.name).symlink_to(f.resolve())
            mirror = pack_calligraphy(calligraphy, work / 'mirror').parent
        ctx = dict(work=work, data=data.resolve(), quick=quick, weights=weights,
                   logs=Path(a.logs) if a.logs else work / 'logs', env=child_env(work, mirror and mirror.resolve(), quick))
        ctx['logs'].mkdir(parents=True, exist_ok=True)
        guesses = QUICK_STEPS if quick else STEPS
        for step in steps:
            left = a.budget - (time.time() - t_start)
            if left < guesses[step]:
                why = f'skipped: {left:.0f} s of the budget left, and it needs about {guesses[step]} s'
                print(f'[{step}] {why}', flush=True)
                report['steps'].append(dict(step=step, status='skipped', seconds=None, note=why))
                continue
            print(f'[{step}] running, {left:.0f} s of the budget left ...', flush=True)
            t0, row = time.time(), dict(step=step)
            try:
                row.update((run_notebook if step in NOTEBOOK_FILES else run_preset)(step, ctx, left), status='passed')
            except subprocess.TimeoutExpired:
                row.update(status='timed out', note=f'stopped at the end of the budget, after {left:.0f} s')
            except Exception as e:  # whatever went wrong, the other steps still run and the JSON says what it was
                row.update(status='failed', error=str(e) if isinstance(e, StepFailed) else f'{type(e).__name__}: {e}')
            row['seconds'] = round(time.time() - t0, 1)
            report['steps'].append(row)
            report['seconds'] = round(time.time() - t_start, 1)
            h.write_json(report, a.out)
            print(f"[{step}] {row['status']} in {row['seconds']:.0f} s" +
                  (f": validation accuracy {row['valid_accuracy']:.4f}" if row.get('valid_accuracy') is not None else '') +
                  (f"; {row.get('error') or row.get('note')}" if row['status'] != 'passed' else ''), flush=True)
        report['finished'] = True
    except KeyboardInterrupt:
        print('\nInterrupted: the JSON holds the steps that finished.', file=sys.stderr)
    finally:
        report['seconds'] = round(time.time() - t_start, 1)
        h.write_json(report, a.out)
        shutil.rmtree(work, ignore_errors=True)
    print('\n' + '\n'.join(table(report)) + f'\nResults: {a.out}')
    return 0 if report['finished'] and all(s['status'] == 'passed' for s in report['steps']) else 2


if __name__ == '__main__':
    sys.exit(main())
