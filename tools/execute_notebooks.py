#!/usr/bin/env python
"""Run the notebooks at full size on the real data and save their outputs in the committed files.

    python tools/execute_notebooks.py          # every notebook, in order (later ones use what earlier ones saved)
    python tools/execute_notebooks.py 01 02    # only these (a number or a file name)

Each notebook runs top to bottom in a fresh kernel (nbclient), in notebooks/, as a reader's would, and its file is
replaced only once everything below holds; otherwise the run stops with the list of what is wrong, the file is
left as it was, and the rejected run is saved in a temporary folder for a look:
- no cell failed (no error output is ever committed);
- no output shows this machine: the repository becomes `..` and the data folder `../data` (paths as seen from
  the notebook), the home folder `~`, W&B run folders `run-<date>_<time>-<id>`; an absolute path, host name
  or user name left over fails the run;
- progress bars keep their final state; notebook 05 keeps no pictures (the calligraphy images' rights are
  unclear), each replaced by a line saying so;
- the file stays under `MAX_BYTES`.
The run is recorded in the notebook's metadata (date, hardware, library versions; `nbsync.py` shows it under the
badges), and each code cell gets a hash of its source, so a cell changed later is caught by `nbsync.py --check`.
Set `KUZUSHIJI_DATA` to use data you already have; quick mode (`KUZUSHIJI_QUICK`) is refused.
"""
import argparse, datetime, getpass, json, os, re, socket, sys, tempfile, time
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / 'scripts'))  # the helpers package, as the scripts use it
import helpers as h
import nbsync

MAX_BYTES = 3_000_000
ABSOLUTE_PATH = re.compile(r'(?<![\w:/.~])/(?:[\w.+-]+/){2,}[\w.+-]*')  # /home/you/data/x; not a URL, ../data/x nor ~/.cache/x
WANDB_RUN = re.compile(r'\b((?:offline-)?run-)\d{8}_\d{6}-[0-9a-z]+\b')
NO_PICTURES = 'no-pictures'  # the tag of a cell committed without its pictures
PICTURE_DATA = '05'  # notebooks whose name starts so draw pictures of data that must not be redistributed
DRAWS_DATA = re.compile(r'show_batch|plot_top_losses|show_image|imshow|show_results')
PICTURE_NOTE = ('(This picture is not kept in the committed notebook: the calligraphy images\' rights are unclear. '
                'Run the notebook to see it.)')


def pick(names):
    "Notebook paths for the names given (a number such as `01`, or a file name), in order; all of them by default."
    every = sorted(nbsync.NOTEBOOKS.glob('*.ipynb'))
    if not names: return every
    picked = [[p for p in every if p.name == Path(n).name or p.name.startswith(f'{n}_')] for n in names]
    unknown = [n for n, ps in zip(names, picked) if len(ps) != 1]
    if unknown: sys.exit(f'No single notebook matches {", ".join(unknown)}: give a number (01) or a file name in notebooks/.')
    return sorted({p for ps in picked for p in ps})


def hardware():
    """The machine, as the line under the badges names it; for a CPU, also how it computes: bfloat16 in hardware
    (which `cpu_settings` may choose) or float32 only, and the kernels PyTorch may use, which `ATEN_CPU_CAPABILITY` and
    `ONEDNN_MAX_CPU_ISA` can hold to a laptop's (AVX2, no AVX-512)."""
    import torch
    if torch.cuda.is_available(): return f'one {torch.cuda.get_device_name(0)} GPU'
    cpu = re.sub(r'\((R|TM)\)', '', h.device_name())  # 'Intel(R) Xeon(R) Processor' reads as 'Intel Xeon Processor'
    isa = torch.backends.cpu.get_cpu_capability()
    held = ' (held to them)' if os.environ.get('ATEN_CPU_CAPABILITY') or os.environ.get('ONEDNN_MAX_CPU_ISA') else ''
    math = 'bfloat16 in hardware' if h.cpu_has_bf16() else 'float32 only, no bfloat16'
    return f'{len(os.sched_getaffinity(0))} cores of an {cpu}, no GPU, {isa} kernels{held}, {math}'


def final_state(text):
    "What a terminal shows once a progress bar is done: of each line redrawn with carriage returns, the last drawing."
    return '\n'.join(line.rstrip('\r').rsplit('\r', 1)[-1] for line in text.split('\n'))


def _is_picture(mime): return mime.startswith('image/')


def _no_pictures(cell): return NO_PICTURES in cell.get('metadata', {}).get('tags', [])


def _map_text(out, fn):
    "Apply `fn` to every text in an output (picture data excepted); nbformat may store a text as a list of lines."
    def apply(v): return nbsync.lines(fn(''.join(v) if isinstance(v, list) else v))
    if 'text' in out: out['text'] = apply(out['text'])
    for mime, v in out.get('data', {}).items():
        if not _is_picture(mime) and isinstance(v, (str, list)): out['data'][mime] = apply(v)


def portable(text):
    "Paths of this machine as a reader's notebook would see them, relative to notebooks/; W&B run ids elided."
    places = {str(h.settings.DATA_DIR): '../data', str(h.settings.OUT_DIR): '..', str(h.ROOT): '..',
              str(Path.home()): '~'}
    for place in sorted(places, key=len, reverse=True): text = text.replace(place, places[place])
    return WANDB_RUN.sub(r'\1<date>_<time>-<id>', text)


def coalesce(outputs):
    "Outputs with each run of text printed to the same stream joined into one, as Jupyter shows them."
    merged = []
    for out in outputs:
        last = merged[-1] if merged else {}
        if out['output_type'] == last.get('output_type') == 'stream' and out['name'] == last['name']:
            last['text'] = ''.join(last['text']) + ''.join(out['text'])
        else: merged.append(out)
    return merged


def clean(nb, name):
    "Make an executed notebook's outputs fit to commit (in place; `nb` as read by nbformat or json)."
    for c in nb['cells']:
        if 'outputs' in c: c['outputs'] = coalesce(c['outputs'])
        for out in c.get('outputs', []):
            if out['output_type'] == 'stream': _map_text(out, final_state)
            if _no_pictures(c) and any(map(_is_picture, out.get('data', {}))):
                out['data'], out['metadata'] = {'text/plain': PICTURE_NOTE}, {}
            _map_text(out, portable)


def _without_pictures(out):
    return {**out, 'data': {m: v for m, v in out['data'].items() if not _is_picture(m)}} if 'data' in out else out


def problems(text, name):
    "What is wrong with a notebook file's text as committed outputs ([] when nothing is)."
    nb, found = json.loads(text), []
    words = [w for w in (socket.gethostname(), getpass.getuser()) if len(w) >= 4 and w not in ('root', 'user')]
    for i, c in enumerate(nb['cells']):
        for out in c.get('outputs', []):
            shown = json.dumps(_without_pictures(out), ensure_ascii=False)  # picture data is base64, not text
            if out['output_type'] == 'error': found.append(f'cell {i}: an error ({out.get("ename")})')
            found += [f'cell {i}: a path of this machine: {m}' for m in ABSOLUTE_PATH.findall(shown)]
            found += [f'cell {i}: a W&B run folder: {m.group(0)}' for m in WANDB_RUN.finditer(shown)]
            found += [f'cell {i}: this machine\'s name: {w}' for w in words if re.search(rf'\b{re.escape(w)}\b', shown)]
            if out['output_type'] == 'stream' and '\r' in ''.join(out['text']): found.append(f'cell {i}: a progress bar mid-way')
            if _no_pictures(c) and any(map(_is_picture, out.get('data', {}))):
                found.append(f'cell {i}: a picture, and this cell keeps none')
        if name.startswith(PICTURE_DATA) and c['cell_type'] == 'code' and not _no_pictures(c) and \
                DRAWS_DATA.search(''.join(c['source'])):
            found.append(f'cell {i}: draws images of the data but is not tagged {NO_PICTURES}')
    if len(text.encode('utf-8')) > MAX_BYTES:
        found.append(f'{len(text.encode("utf-8")) / 1e6:.1f} MB, more than {MAX_BYTES / 1e6:.0f} MB')
    if any(c.get('outputs') for c in nb['cells']): found += nbsync.unbacked(nb)
    return found


def execute(path, timeout, data=None):
    """Run one notebook and return the text to commit, or exit with what went wrong. `data`: what it ran on, when
    that is not the full real data set (shown under the badges). Its run time, top to bottom, is recorded too."""
    nb = nbformat.read(str(path), as_version=4)
    client = NotebookClient(nb, timeout=timeout, kernel_name='python3', record_timing=False,
                            resources={'metadata': {'path': str(nbsync.NOTEBOOKS)}})
    env = {**os.environ, 'MPLBACKEND': 'module://matplotlib_inline.backend_inline',  # figures as PNG outputs
           # tqdm warns on import that ipywidgets is missing: the notebooks show no tqdm bar, and Colab has ipywidgets
           'PYTHONWARNINGS': 'ignore:IProgress not found'}
    start = time.time()
    try: client.execute(env=env)
    except CellExecutionError as e:
        sys.exit(f'{path.name} failed; its file is left as it was.\n{e}')
    for c in nb.cells:
        if c.cell_type == 'code': c.metadata['source_hash'] = nbsync.source_hash(c.source)
    nb.metadata['kuzushiji'] = {'date': datetime.date.today().isoformat(), 'hardware': hardware(),
                                'seconds': round(time.time() - start), 'versions': h.versions(),
                                **({'data': data} if data else {})}
    nb = json.loads(nbformat.writes(nb))
    clean(nb, path.name)
    text = nbsync.canonical(nb, path.name)
    wrong = problems(text, path.name)
    if wrong:
        kept = Path(tempfile.mkdtemp()) / path.name  # a long run is not lost: look at it, fix the cell, run again
        kept.write_text(text, encoding='utf-8')
        sys.exit(f'{path.name} ran, but its outputs cannot be committed; its file is left as it was, and the run '
                 f'is in {kept}:\n  ' + '\n  '.join(wrong))
    return text


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('notebooks', nargs='*', help='numbers (01) or file names; all notebooks by default')
    p.add_argument('--timeout', type=int, default=7200, help='seconds one cell may take (default 7200)')
    p.add_argument('--data', help='what the run used, when it is not the full real data set (shown under the badges), '
                                  "e.g. 'a 600-image subset of the real set'")
    a = p.parse_args(argv)
    if h.QUICK: sys.exit('KUZUSHIJI_QUICK is set: committed outputs come from full-size runs. Unset it and run again.')
    for path in pick(a.notebooks):
        start = time.time()
        print(f'running {path.name} ...', flush=True)
        text = execute(path, a.timeout, a.data)
        tmp = path.with_name(path.name + '.tmp')
        tmp.write_text(text, encoding='utf-8'); os.replace(tmp, path)
        stderr = [i for i, c in enumerate(json.loads(text)['cells']) for o in c.get('outputs', []) if o.get('name') == 'stderr']
        print(f'wrote {path.name}: {len(text.encode()) / 1e6:.2f} MB in {time.time() - start:.0f} s'
              + (f'; cells {sorted(set(stderr))} wrote to stderr: read them' if stderr else ''), flush=True)
    return 0


if __name__ == '__main__':
    sys.exit(main())
