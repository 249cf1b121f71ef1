"""Tracking a run: Weights & Biases through fastai's `WandbCallback`, offline by default, never waiting for a login;
and a log a teacher can read, one line per epoch, when no terminal or notebook shows fastai's progress bars.

`wandb` is imported only when a run starts (importing it takes a few seconds). Uses: settings."""
from __future__ import annotations

import netrc, os, random
from pathlib import Path

import sys

import numpy as np
import torch
from fastai.callback.core import Callback
from fastai.callback.progress import ProgressCallback
from fastai.callback.wandb import WandbCallback
from fastcore.basics import noop
from fastcore.imports import in_notebook

from . import settings


def wandb_logged_in() -> bool:
    "True when a W&B API key is available without asking (env var or ~/.netrc); never prompts."
    if os.environ.get('WANDB_API_KEY'): return True
    try:
        return bool(netrc.netrc().authenticators('api.wandb.ai'))
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


class SeededWandbCallback(WandbCallback):
    """fastai's `WandbCallback`, except that its `before_fit` leaves the random generators as it found them. fastai's
    records the learner's settings there (`Learner.gather_args`), and that draws a validation batch: iterating a
    DataLoader takes a seed from PyTorch's generator, and some validation transforms (a warp) draw from it too. So
    one seed trained two different models, with W&B logging and without: `train.py --preset best-cpu --quick` gave
    32.8% test accuracy with `--wandb offline` and 26.0% with `--wandb off`, each the same twice. Ours because a
    seed should mean one model whether W&B watches or not (fastai moved that batch from the training set to the
    validation set for a like reason, fastai pull request 3512). Only `before_fit` is guarded: with
    `log_preds=True` fastai also predicts on a validation sample every epoch (`start_wandb` leaves it off)."""
    def before_fit(self):
        state = random.getstate(), np.random.get_state()
        try:  # PyTorch's generator on the CPU, and on the GPU in use (not on every GPU: that would start them all)
            with torch.random.fork_rng(devices=[torch.cuda.current_device()] if torch.cuda.is_available() else []):
                super().before_fit()
        finally: random.setstate(state[0]); np.random.set_state(state[1])


def start_wandb(mode='offline', project='kuzushiji-fastai', config=None, name=None, dir=None):
    """Start a W&B run and return a `WandbCallback` for it (`SeededWandbCallback`), or None when `mode='off'`.
    'offline' (default) logs to ./wandb to sync later; 'online' needs a login and falls back to offline without
    one. Nothing here ever waits for a login or a key, in a notebook, a script or CI."""
    if mode in (None, 'off', False): return None
    import wandb
    if mode == 'online' and not wandb_logged_in():
        print('W&B: not logged in (no WANDB_API_KEY, no `wandb login`), so logging offline instead.')
        mode = 'offline'
    if mode not in ('offline', 'online'): raise ValueError(f"W&B mode must be 'off', 'offline' or 'online', not {mode!r}")
    os.environ.setdefault('WANDB_SILENT', 'true')
    dir = Path(dir or os.environ.get('WANDB_DIR') or settings.OUT_DIR); dir.mkdir(parents=True, exist_ok=True)
    run = wandb.init(project=project, config=config, name=name, mode=mode, dir=str(dir), reinit='finish_previous',
                     settings=wandb.Settings(console='off', silent=True))
    if mode == 'offline':
        print(f'W&B: logging offline to {run.dir.rsplit("/files", 1)[0]}\n'
              f'     to upload later: wandb sync {run.dir.rsplit("/files", 1)[0]}')
    return SeededWandbCallback(log_preds=False, log_model=False)


def finish_wandb(learn=None):
    "Remove the W&B callback (so an exported learner does not start W&B when loaded) and close the run."
    if learn is not None and any(isinstance(c, WandbCallback) for c in learn.cbs): learn.remove_cb(WandbCallback)
    try:
        import wandb
        if wandb.run is not None: wandb.finish(quiet=True)
    except ImportError: pass


class EpochLines(Callback):
    """One line per epoch, for a log: piped to a file or in CI, fastai's progress bars write every update (several
    hundred kB a run). The line holds what the bar's table would: epoch, losses, metrics, time. Respects `no_logging`."""
    order = ProgressCallback.order
    def before_fit(self):
        self.old = self.learn.logger
        if self.old is not noop: self.learn.logger = self.line
    def after_fit(self): self.learn.logger = self.old
    def line(self, log):
        if len(log) < len(self.recorder.metric_names): return  # validate() and get_preds(): no row, as with the bars
        print('  '.join(f'{n} {v:.4f}' if isinstance(v, float) else f'{n} {v}'
                        for n, v in zip(self.recorder.metric_names, log)), flush=True)


def bars_or_lines(learn):
    "Progress bars in a terminal or a notebook; without either (a log file, CI), `EpochLines` instead. Returns `learn`."
    if not (sys.stdout.isatty() or in_notebook()) and any(isinstance(c, ProgressCallback) for c in learn.cbs):
        learn.remove_cb(ProgressCallback); learn.add_cb(EpochLines())
    return learn
