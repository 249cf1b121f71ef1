#!/usr/bin/env python
"""Measure the app: preprocessing fidelity on real KMNIST, the model's time per input, and the HTTP API under load.

    python tools/benchmark_app.py --kmnist models/kmnist.pkl --data data/kmnist --fidelity 1000
    python tools/benchmark_app.py --kmnist models/kmnist.pkl --data data/kmnist --latency --api --load 20
    python tools/benchmark_app.py --kmnist models/kmnist.pkl --data data/kmnist --all --out results/app.json

--fidelity N  N test images drawn as a learner would (black ink on a 400 px canvas, white or transparent, at a
              random size and place), read through the app's preprocessing: accuracy against the originals'.
--latency     p50/p95 of one prediction, preprocessing included: a 400x400 RGBA drawing (KMNIST) and a 256 px
              photo (calligraphy: --calligraphy MODEL, or else an untrained ResNet34 at the article's 256 px, which
              costs the same time as a trained one).
--api         the app in its own process (scripts/app.py), 100 sequential round trips through gradio_client.
--load C      C concurrent clients for --seconds (30): failures, wrong answers, the server's memory over time.
Loopback only (127.0.0.1); every loop is bounded."""
import argparse, json, os, subprocess, sys, tempfile, threading, time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / 'scripts'))  # the helpers package, as the scripts use it
import helpers as h


def as_drawing(a, rng, canvas=400):
    "A character drawn as black ink on a transparent or white canvas, at a random size and place."
    size = int(rng.integers(60, canvas - 10))
    return h.as_drawing(a, size, tuple(int(v) for v in rng.integers(0, canvas - size + 1, size=2)), canvas,
                        (0, 0, 0, 0) if rng.random() < 0.5 else (255, 255, 255, 255))


def fidelity(learn, test, n, seed=0):
    x, y = test
    idx = np.random.default_rng(seed).choice(len(x), n, replace=False)
    rng = np.random.default_rng(seed + 1)
    orig = h.probabilities(learn, list(x[idx])).argmax(1)
    drawn = h.probabilities(learn, [h.kmnist_input(as_drawing(a, rng)) for a in x[idx]]).argmax(1)
    return dict(n=int(n), accuracy_originals=float((orig == y[idx]).mean()),
                accuracy_drawings=float((drawn == y[idx]).mean()), agreement=float((orig == drawn).mean()))


def calligraphy_for_timing(folder):
    "An untrained ResNet34 calligraphy learner at 256 px (the article's last stage), exported and loaded back."
    from fastai.vision.all import vision_learner, resnet34
    for i, c in enumerate(h.CALLIGRAPHY_CLASSES):
        (folder / c).mkdir(parents=True, exist_ok=True)
        for j in range(4): Image.new('RGB', (384, 300), (40 * i + j, 90, 120)).save(folder / c / f'{j}.jpg')
    learn = vision_learner(h.calligraphy_dls(folder, size=256, bs=4, device='cpu'), resnet34, pretrained=False)
    return h.load_model(h.export(learn, folder / 'calligraphy.pkl'), 'calligraphy')


def latency(learn, callig, drawing, n):
    out = {'kmnist_drawing_ms': h.latency(lambda: h.predict(learn, drawing), n)}
    photo = Image.fromarray(np.random.default_rng(0).integers(0, 255, (256, 256, 3), dtype=np.uint8))
    out['calligraphy_photo_256px_ms'] = h.latency(lambda: h.predict(callig, photo), max(20, n // 5))
    return out


def start_app(model, port):
    "scripts/app.py in its own process; returns it once it serves."
    p = subprocess.Popen([sys.executable, str(Path(__file__).parent / 'app.py'), '--kmnist', str(model), '--port',
                          str(port), '--threads', str(torch.get_num_threads())],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 180
    for line in p.stdout:
        if 'http://127.0.0.1' in line: return p
        if time.time() > deadline: break
    p.kill(); raise RuntimeError('the app did not start')


def rss_mb(pid):
    for line in open(f'/proc/{pid}/status'):
        if line.startswith('VmRSS'): return int(line.split()[1]) / 1024


def api(model, cases, n, clients, seconds, port=7899):
    "Round trips through gradio_client: `n` sequential, then `clients` concurrent ones for `seconds`."
    from gradio_client import Client, handle_file
    proc = start_app(model, port)
    url = f'http://127.0.0.1:{port}/'
    def ask(c, path): return c.predict({'background': None, 'layers': [], 'composite': handle_file(path)},
                                       api_name='/read_drawing')[0]['label']
    try:
        c = Client(url, verbose=False, download_files=False)  # the answer's label; the 28x28 picture stays a URL
        for path, _ in cases[:3]: ask(c, path)  # warm up
        t = []
        for i in range(n):
            path, want = cases[i % len(cases)]
            t0 = time.perf_counter(); got = ask(c, path); t.append((time.perf_counter() - t0) * 1000)
            assert got == want, (path, got, want)
        out = {'alone_ms': [float(np.percentile(t, 50)), float(np.percentile(t, 95))], 'alone_n': n}
        if clients:
            lat, fails, wrong, mem, stop = [], [], [], [rss_mb(proc.pid)], time.time() + seconds
            def worker(k):
                cl = Client(url, verbose=False, download_files=False)
                i = k
                while time.time() < stop:
                    path, want = cases[i % len(cases)]; i += 1
                    t0 = time.perf_counter()
                    try: got = ask(cl, path)
                    except Exception as e: fails.append(repr(e)[:200]); continue
                    lat.append((time.perf_counter() - t0) * 1000)
                    if got != want: wrong.append((path, got, want))
            threads = [threading.Thread(target=worker, args=(k,)) for k in range(clients)]
            for th in threads: th.start()
            while any(th.is_alive() for th in threads):
                time.sleep(1); mem.append(rss_mb(proc.pid))
            out.update(load_clients=clients, load_seconds=seconds, load_requests=len(lat) + len(fails),
                       load_failed=len(fails), load_wrong=len(wrong), load_ms=[float(np.percentile(lat, 50)),
                       float(np.percentile(lat, 95))], load_rps=len(lat) / seconds,
                       server_rss_mb={'start': mem[0], 'max': max(mem), 'end': mem[-1]}, first_failures=fails[:3])
        return out
    finally:
        proc.terminate(); proc.wait(30)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0], epilog=__doc__.split('\n', 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--kmnist', required=True, metavar='MODEL')
    p.add_argument('--calligraphy', metavar='MODEL')
    p.add_argument('--data', help='KMNIST folder (default data/kmnist)')
    p.add_argument('--fidelity', type=int, metavar='N')
    p.add_argument('--latency', action='store_true')
    p.add_argument('--api', action='store_true')
    p.add_argument('--load', type=int, default=0, metavar='CLIENTS')
    p.add_argument('--seconds', type=int, default=30)
    p.add_argument('--threads', type=int, default=1, help='PyTorch threads, as scripts/app.py uses (default 1)')
    p.add_argument('--all', action='store_true', help='--fidelity 1000 --latency --api --load 20')
    p.add_argument('--out', help='also write the results here (JSON)')
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    if a.all: a.fidelity, a.latency, a.api, a.load = a.fidelity or 1000, True, True, a.load or 20
    try:
        learn = h.load_model(a.kmnist)
        _, test, _ = h.load_arrays(a.data)
    except (h.InputError, FileNotFoundError, ValueError) as e:
        print(f'error: {e}', file=sys.stderr); return 1
    with open('/proc/loadavg') as f: load_before = f.read().split()[:3]
    res = dict(device=h.device_name(), cpu_cores=os.cpu_count(), torch_threads=torch.get_num_threads(),
               loadavg_before=load_before, model=str(a.kmnist))
    if a.fidelity:
        res['fidelity'] = fidelity(learn, test, a.fidelity); print('fidelity', res['fidelity'], flush=True)
    rng = np.random.default_rng(7)
    tmp = Path(tempfile.mkdtemp(prefix='bench-app-'))
    if a.latency:
        callig = h.load_model(a.calligraphy, 'calligraphy') if a.calligraphy else calligraphy_for_timing(tmp / 'c')
        res['latency'] = latency(learn, callig, np.asarray(as_drawing(test[0][0], rng)), 200)
        print('latency p50/p95 ms', res['latency'], flush=True)
    if a.api:
        cases = []
        for i in range(10):
            path = tmp / f'drawing{i}.png'
            as_drawing(test[0][i], rng).save(path)
            cases.append((str(path), h.label_text(h.predict(learn, str(path))[0][0]['label'])))
        res['api'] = api(a.kmnist, cases, 100, a.load, a.seconds); print('api', res['api'], flush=True)
    with open('/proc/loadavg') as f: res['loadavg_after'] = f.read().split()[:3]
    if a.out: h.write_json(res, a.out)
    print(json.dumps(res, indent=1, ensure_ascii=False))
    return 0


if __name__ == '__main__':
    sys.exit(main())
