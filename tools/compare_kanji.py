#!/usr/bin/env python
"""Judge ideas for the Kuzushiji-Kanji recipe on the validation set, never the test set: train the network of
notebook 08 with a setting changed, several seeds, score it on validation plainly and with cRT (the long-tail method
notebook 08 chose), and compare with the baseline's seeds by notebook 08's rule.

    python tools/compare_kanji.py train --name baseline --seed 42 --out results/kanji-judging.json
    python tools/compare_kanji.py train --name lr-2e-2 --lr 2e-2 --seed 42 --out results/kanji-judging.json
    python tools/compare_kanji.py judge results/kanji-judging.json --baseline baseline

`train` trains one run (the training part of notebook 08's split, 5 epochs of `kanji_cnn` at 32 px, one-cycle at
1e-2, label smoothing, notebook 04's augmentation without the warp, unless a flag changes one of them), then reads
the validation images with the network's own last layer and with a cRT layer trained on its frozen features (8
epochs of class-balanced batches, seed 42), and appends a row to `--out` (rewritten atomically after each run).
`--la-tau T` trains with the logit-adjusted loss (Menon et al. 2021: the loss sees logits + T x log(prior), so the
network's own logits come out balanced).

`judge` groups the rows by name and applies notebook 08's rule to the cRT scores: an idea is kept if its mean
balanced accuracy beats the baseline's mean by more than the spread (max - min) of the baseline's seeds, without
losing more than the baseline's top-1 spread in top-1. An idea judged on one seed is compared in the same way, as
notebook 07 does. Ideas that cost more time (epochs, width) are shown with their time, to be weighed against it.
Uses the helpers package; nothing here reads a test image."""
import argparse, json, os, sys, time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from fastai.vision.all import Learner, accuracy, aug_transforms
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / 'scripts'))  # the helpers package, as the scripts use it
import helpers as h
from helpers import longtail as lt


class AdjustedLoss(nn.Module):
    "Cross-entropy with label smoothing on logits + tau x log(prior): the logit-adjusted loss (tau 0: the usual loss)."
    def __init__(self, log_prior, tau, eps):
        super().__init__()
        self.log_prior, self.tau, self.eps = log_prior, tau, eps
    def forward(self, out, targ):
        out = out + self.tau * self.log_prior.to(out.device, out.dtype)
        return F.cross_entropy(out, targ.long(), label_smoothing=self.eps)
    def activation(self, x): return F.softmax(x, -1)
    def decodes(self, x): return x.argmax(-1)


def row(rep):
    "A long-tail report as the numbers the judging reads."
    return dict(top1=rep['top1'], top5=rep['top5'], balanced=rep['balanced'],
                **{b: rep[b]['top1'] for b in h.BUCKETS})


def train(a):
    keep = h.settings.keep_freed_memory()
    d = h.load_kanji(a.data, size=32, log=lambda s: None)
    x, y, part, counts = d['x'], d['y'], d['part'], d['counts']
    train_idx, valid_idx = np.flatnonzero(part == 0), np.flatnonzero(part == 1)
    idx = np.r_[train_idx, valid_idx]
    augment = aug_transforms(do_flip=False, max_rotate=a.rotate, max_zoom=a.zoom, max_lighting=0.,
                              max_warp=0., pad_mode="zeros")  # char_augment(max_warp=0.) at the defaults
    dls = h.kmnist_dls((x[idx], y[idx]), d['classes'], valid_idx=np.arange(len(train_idx), len(idx)), bs=a.bs,
                       seed=a.seed, augment=augment)
    h.set_seed(a.seed)
    model = h.kmnist_cnn(len(d['classes']), tuple(map(int, a.widths.split(','))), tuple(map(int, a.blocks.split(','))),
                         stem=2)
    learn = Learner(dls, model, loss_func=AdjustedLoss(lt.log_prior(counts), a.la_tau, a.ls), metrics=[accuracy])
    if not h.on_gpu(): learn.add_cb(h.CPUSpeedups(**h.cpu_settings(learn)))
    computes = h.speed_summary(learn)
    t0 = time.time()
    with learn.no_bar(): learn.fit_one_cycle(a.epochs, a.lr)
    seconds = time.time() - t0
    if not h.on_gpu(): learn.remove_cb(h.CPUSpeedups)
    loader = lambda p: h.test_dl(dls, (x[part == p], y[part == p]))
    ft, fv, fr = (lt.features(model, loader(p)) for p in (0, 1, 3))
    head = lt.retrain_classifier(ft, fv, len(counts), epochs=8, seed=42)
    with torch.inference_mode():
        plain, crt = model[-1](fv[0]), head(fv[0])
        rare = {k: float((f(fr[0]).argmax(1) == fr[1]).float().mean()) for k, f in (('plain', model[-1]), ('crt', head))}
    out = dict(name=a.name, seed=a.seed, settings={k: v for k, v in vars(a).items() if k not in ('cmd', 'out', 'data')},
               seconds=round(seconds, 1), images_per_second=round(a.epochs * len(dls.train) * a.bs / seconds, 1),
               computes=computes, keeps_freed_memory=keep, device=h.device_name(), threads=torch.get_num_threads(),
               versions=h.versions(), valid=dict(plain=row(lt.long_tail_report(plain, fv[1], counts)),
                                                 crt=row(lt.long_tail_report(crt, fv[1], counts))), rare=rare)
    path = Path(a.out)
    rows = json.loads(path.read_text())['runs'] if path.exists() else []
    rows = [r for r in rows if (r['name'], r['seed']) != (a.name, a.seed)] + [out]
    h.write_json(dict(complete=False, runs=rows), path)
    v = out['valid']['crt']
    print(f"{a.name}, seed {a.seed}: {seconds:.0f} s ({computes}); validation with cRT: top-1 {v['top1']:.2%}, "
          f"balanced {v['balanced']:.2%}, few {v['few']:.2%}")
    return 0


def judge(a):
    runs = json.loads(Path(a.results).read_text())['runs']
    names = list(dict.fromkeys(r['name'] for r in runs))
    if a.baseline not in names: sys.exit(f'{a.results} has no runs named {a.baseline!r}: it has {", ".join(names)}')
    def stats(name, part='crt'):
        rs = [r for r in runs if r['name'] == name]
        m = {k: 100 * np.array([r['valid'][part][k] for r in rs]) for k in ('top1', 'balanced', 'few', 'many', 'medium')}
        return rs, {k: v.mean() for k, v in m.items()}, {k: np.ptp(v) for k, v in m.items()}
    base_runs, base, spread = stats(a.baseline)
    print(f"baseline '{a.baseline}', {len(base_runs)} seeds, with cRT: top-1 {base['top1']:.2f}% (spread "
          f"{spread['top1']:.2f}), balanced {base['balanced']:.2f}% (spread {spread['balanced']:.2f}), few "
          f"{base['few']:.2f}%")
    print(f"{'idea':24s} {'seeds':>5s} {'top-1':>6s} {'bal.':>6s} {'few':>6s} {'many':>6s} {'med.':>6s} {'s/run':>6s}  verdict")
    for name in names:
        rs, m, _ = stats(name)
        gain, loss = m['balanced'] - base['balanced'], base['top1'] - m['top1']
        verdict = '' if name == a.baseline else 'no: balanced within the spread' if gain <= spread['balanced'] else \
            f'no: top-1 {loss:.2f} points lower' if loss > spread['top1'] else 'yes'
        secs = np.mean([r['seconds'] for r in rs])
        print(f"{name:24s} {len(rs):5d} {m['top1']:6.2f} {m['balanced']:6.2f} {m['few']:6.2f} {m['many']:6.2f} "
              f"{m['medium']:6.2f} {secs:6.0f}  {verdict}")
    return 0


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0], epilog=__doc__.split('\n', 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest='cmd', required=True)
    t = sub.add_parser('train', help='train one run and append its validation scores to --out')
    t.add_argument('--name', required=True); t.add_argument('--seed', type=int, default=42)
    t.add_argument('--out', required=True); t.add_argument('--data', help='the Kuzushiji-Kanji folder (default data/kkanji)')
    t.add_argument('--epochs', type=int, default=5); t.add_argument('--lr', type=float, default=1e-2)
    t.add_argument('--bs', type=int, default=128)
    t.add_argument('--widths', default='32,64,128'); t.add_argument('--blocks', default='1,1,1')
    t.add_argument('--la-tau', type=float, default=0., help='the logit-adjusted loss (0: plain cross-entropy)')
    t.add_argument('--ls', type=float, default=0.1, help='label smoothing')
    t.add_argument('--rotate', type=float, default=10.); t.add_argument('--zoom', type=float, default=1.1)
    j = sub.add_parser('judge', help='compare the ideas in a results file with the baseline, by notebook 08\'s rule')
    j.add_argument('results'); j.add_argument('--baseline', default='baseline')
    a = p.parse_args(argv)
    try: return train(a) if a.cmd == 'train' else judge(a)
    except (FileNotFoundError, h.DataFormatError) as e: print(f'error: {e}', file=sys.stderr); return 1


if __name__ == '__main__':
    sys.exit(main())
