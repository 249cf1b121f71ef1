"""The learning rate: `lr_find` with the article's rule, the raw and smoothed losses, and a rate kept between notebooks.

Uses: settings."""
from __future__ import annotations

import json

import matplotlib.pyplot as plt
import numpy as np
import torch
from fastai.vision.all import Callback, valley

from . import settings
from .settings import write_json


def article_rule(lrs, losses, num_it=None):
    """The article's rule as a fastai suggestion function: one order of magnitude below the learning rate where
    the smoothed loss is lowest. (fastai's own `minimum` is the same rule.) Returns `(lr, (lr_min, loss_min))`."""
    losses = torch.as_tensor(losses); lrs = torch.as_tensor(lrs)
    i = int(losses.argmin())
    return lrs[i].item() / 10, (lrs[i].item(), losses[i].item())


def smooth(losses, beta=0.98):
    "The exponentially weighted, debiased average fastai plots in `lr_find` (`AvgSmoothLoss`)."
    out, avg = [], 0.
    for i, l in enumerate(losses, 1):
        avg = beta * avg + (1 - beta) * float(l)
        out.append(avg / (1 - beta ** i))
    return out


class RawLossRecorder(Callback):
    "Keep every training batch's raw loss (fastai's recorder keeps the smoothed one)."
    order = 51
    def before_fit(self): self.losses = []
    def after_batch(self):
        if self.training: self.losses.append(self.learn.loss.item())


def find_lr(learn, num_it=100):
    "`lr_find` with the article's rule; returns `(rate by the rule, fastai's valley)` and keeps the raw losses."
    raw = RawLossRecorder()
    with learn.added_cbs(raw):
        sug = learn.lr_find(num_it=num_it, suggest_funcs=(article_rule, valley), show_plot=False)
    learn.raw_losses = raw.losses
    return sug.article_rule, sug.valley


def plot_lr_find(learn, raw, lr_rule, lr_valley=None):
    "Raw per-iteration losses, the smoothed curve fastai plots, its minimum and the chosen rate(s)."
    lrs, sm = learn.recorder.lrs, [float(l) for l in learn.recorder.losses]
    n = min(len(lrs), len(raw))
    fig, ax = plt.subplots(figsize=(7.5, 4))
    ax.plot(lrs[:n], raw[:n], '.', color='0.6', ms=4, label='raw loss of each batch')
    ax.plot(lrs[:n], sm[:n], lw=2, label='smoothed (what lr_find plots)')
    i = int(np.argmin(np.abs(np.log(lrs) - np.log(lr_rule * 10))))  # the point the rule took its minimum at
    ax.plot(lrs[i], sm[i], 'o', color='C3', ms=9, label=f'minimum of smoothed loss, lr={lrs[i]:.1e}')
    ax.axvline(lr_rule, color='C3', ls='--', label=f'article rule: minimum / 10 = {lr_rule:.1e}')
    if lr_valley: ax.axvline(lr_valley, color='C2', ls=':', lw=2, label=f'fastai valley = {lr_valley:.1e}')
    lo, hi = min(min(raw[:n]), min(sm[:n])), max(sm[:i + 1])  # the curve up to its minimum; the blow-up is clipped
    ax.set(xscale='log', xlabel='learning rate (log scale)', ylabel='loss', ylim=(lo - 0.1 * (hi - lo), hi + 0.3 * (hi - lo)))
    ax.legend(fontsize=9); fig.tight_layout()
    return fig


def save_lr(lr, learn=None, dataset='kmnist'):
    "Remember notebook 03's learning rate for notebook 04, and whether its model had random or ImageNet weights."
    about = {'weights': learn.weights} if getattr(learn, 'weights', None) else {}
    write_json({'lr': float(lr), **about}, settings.OUT_DIR / 'results' / f'lr_{dataset}.json')


def load_lr(dataset='kmnist', default=None, quiet=False):
    "The rate `save_lr` kept on this machine, or `default` (saying which, unless `quiet`)."
    p = settings.OUT_DIR / 'results' / f'lr_{dataset}.json'
    if not p.exists():
        if not quiet: print(f"No learning rate saved by notebook 03 on this machine (in Colab each notebook has a "
                            f"machine of its own): using {default!r}" + (", so lr_find with the article's rule runs "
                            "before training." if default == 'auto' else '.'))
        return default
    saved = json.loads(p.read_text())
    if not quiet: print(f"Learning rate {saved['lr']:.2e} from notebook 03" +
                        (f", found for a model with {saved['weights']} weights." if saved.get('weights') else '.'))
    return saved['lr']
