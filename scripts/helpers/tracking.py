"""Tracking with Weights & Biases through fastai's `WandbCallback`: offline by default, never waiting for a login.

`wandb` is imported only when a run starts (importing it takes a few seconds). Uses: settings."""
from __future__ import annotations

import netrc, os
from pathlib import Path

from fastai.callback.wandb import WandbCallback

from . import settings


def wandb_logged_in() -> bool:
    "True when a W&B API key is available without asking (env var or ~/.netrc); never prompts."
    if os.environ.get('WANDB_API_KEY'): return True
    try:
        return bool(netrc.netrc().authenticators('api.wandb.ai'))
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


def start_wandb(mode='offline', project='kuzushiji-fastai', config=None, name=None, dir=None):
    """Start a W&B run and return fastai's `WandbCallback` for it, or None when `mode='off'`.
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
    return WandbCallback(log_preds=False, log_model=False)


def finish_wandb(learn=None):
    "Remove the W&B callback (so an exported learner does not start W&B when loaded) and close the run."
    if learn is not None and any(isinstance(c, WandbCallback) for c in learn.cbs): learn.remove_cb(WandbCallback)
    try:
        import wandb
        if wandb.run is not None: wandb.finish(quiet=True)
    except ImportError: pass
