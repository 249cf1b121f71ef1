"""The learning rate: `lr_find` with the article's rule, the raw and smoothed losses and a plot of both.

Uses: no other helpers module."""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import torch
from fastai.vision.all import Callback, valley


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


def plot_lr_find(learn, raw, lr_rule, lr_valley=None, top=1.3):
    """Raw per-batch losses, the smoothed curve fastai plots, its minimum and the chosen rate(s). The y-axis stops at
    `top` times the first smoothed loss, so the falling part stays readable; raw losses above it (the blow-up at the
    end) are drawn as triangles on the top edge, and the legend says how many and how high they went."""
    lrs, sm, raw = np.asarray(learn.recorder.lrs), np.asarray([float(l) for l in learn.recorder.losses]), np.asarray(raw)
    n = min(len(lrs), len(raw)); lrs, sm, raw = lrs[:n], sm[:n], raw[:n]
    hi = top * sm[0]
    over = raw > hi
    fig, ax = plt.subplots(figsize=(8, 4.4))
    ax.plot(lrs[~over], raw[~over], '.', color='0.55', ms=5, label='raw loss of each batch')
    if over.any():
        ax.plot(lrs[over], np.full(over.sum(), hi), '^', color='0.3', ms=7, clip_on=False,
                label=f'raw loss above the top of the plot ({over.sum()} batches, up to {raw.max():.1f})')
    ax.plot(lrs, sm, lw=2, color='C0', label='smoothed (what lr_find plots)')
    i = int(np.argmin(np.abs(np.log(lrs) - np.log(lr_rule * 10))))  # the minimum the rule used (fastai skips the ends)
    ax.plot(lrs[i], sm[i], 'o', color='C3', ms=9, label=f'minimum of the smoothed loss, lr={lrs[i]:.1e}')
    ax.axvline(lr_rule, color='C3', ls='--', label=f'article rule: minimum / 10 = {lr_rule:.1e}')
    if lr_valley: ax.axvline(lr_valley, color='C2', ls=':', lw=2, label=f'fastai valley = {lr_valley:.1e}')
    lo = min(raw.min(), sm.min())
    ax.set(xscale='log', xlabel='learning rate (log scale)', ylabel='loss', ylim=(lo - 0.05 * (hi - lo), hi))
    ax.grid(alpha=0.3); ax.legend(fontsize=9, loc='lower left'); fig.tight_layout()
    return fig
