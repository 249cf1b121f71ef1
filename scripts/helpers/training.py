"""Training: models, learners, one reproducible run of a preset, export, the batch-size study's plot.

Uses: settings, arrays, downloads, dataloaders, lr, tracking, speed, recipes."""
from __future__ import annotations

import os, sys, time
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch
from fastai.vision.all import (Adam, ConvLayer, Flatten, LabelSmoothingCrossEntropyFlat, Learner, ResBlock,
                               accuracy, error_rate, get_c, ranger, resnet18, resnet34, resnet50, vision_learner)
from fastai.callback.progress import ProgressCallback
from torch import nn

from .arrays import load_arrays, subsample
from .dataloaders import char_augment, kmnist_dls, test_dl
from .downloads import install_weights
from .lr import find_lr, smooth
from .recipes import EraseStrokes, Stretch, StrokeWidth, brush_augment, ensemble_accuracy, get_probs, mixing_callback, score
from .settings import device_name, on_gpu, set_seed, use_fp16, versions
from .speed import CPUSpeedups, cpu_settings, speed_summary
from .tracking import EpochLines, bars_or_lines, finish_wandb, start_wandb


def kmnist_cnn(n_out=10, widths=(16, 32, 64), blocks=(0, 1, 1), stem=1):
    """A small ResNet-style network for 28x28 characters, built from fastai's layers: at each width a convolution
    (stride 2 after the first, halving the image; the first one's stride is `stem`) and `blocks` residual blocks, then
    average pooling, dropout and a linear layer. 117k parameters against a ResNet34's 21 million, so it trains many
    times faster on a CPU. No residual block at 28x28 by default: there one cost as much as the rest of the network
    (RESEARCH.md, "Training speed without bfloat16"), and without it validation accuracy tied over three seeds."""
    layers, c_in = [], 1
    for i, (w, n) in enumerate(zip(widths, blocks)):
        layers += [ConvLayer(c_in, w, stride=stem if i == 0 else 2)] + [ResBlock(1, w, w) for _ in range(n)]
        c_in = w
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), Flatten(), nn.Dropout(0.1), nn.Linear(c_in, n_out))

def kmnist_cnn_wide(n_out=10):
    "`kmnist_cnn` at twice the width, a residual block at each: 482k parameters (the `best-cpu` preset's)."
    return kmnist_cnn(n_out, widths=(32, 64, 128), blocks=(1, 1, 1))

def kmnist_cnn_deep(n_out=10):
    """`kmnist_cnn_wide` with its residual blocks moved to where the image is small: none at 28x28, three at 7x7. A
    block at 7x7 (128 channels) does the arithmetic of one at 28x28 (32 channels) on a quarter of the activations, so
    1.05M parameters train at about the wide CNN's speed on a CPU. Judged against `best-cpu` and not kept (README,
    "Judging the next idea without retraining the preset")."""
    return kmnist_cnn(n_out, widths=(32, 64, 128), blocks=(0, 1, 3))

ARCHS = {'resnet18': resnet18, 'resnet34': resnet34, 'resnet50': resnet50, 'kmnist_cnn': kmnist_cnn,
         'kmnist_cnn_wide': kmnist_cnn_wide, 'kmnist_cnn_deep': kmnist_cnn_deep}


def make_learner(dls, arch='resnet34', pretrained=True, n_in=1, metrics=(accuracy, error_rate), cbs=None, **kwargs):
    """`vision_learner` for the torchvision ResNets (`n_in=1`: fastai sums the pretrained first layer over RGB), a plain
    `Learner` for `kmnist_cnn`. Offline, where ImageNet weights cannot be downloaded, it says so and uses random weights.
    `learn.weights` says which it got ('imagenet' or 'random'), and so does the W&B run, if one is on."""
    if arch.startswith('kmnist_cnn'):
        learn, pretrained = Learner(dls, ARCHS[arch](get_c(dls)), metrics=list(metrics), cbs=cbs, **kwargs), False
    else:
        if pretrained: install_weights(arch)  # from a classroom mirror into torch's cache, if one is set
        try:
            learn = vision_learner(dls, ARCHS[arch], n_in=n_in, pretrained=pretrained, metrics=list(metrics), cbs=cbs, **kwargs)
        except OSError as e:  # URLError is an OSError: no internet, or a firewall
            if not pretrained: raise
            print(f'Could not download the pretrained {arch} weights ({type(e).__name__}: {e}).\n'
                  f'Going on from RANDOM weights: expect lower accuracy and more epochs. With internet access the '
                  f'weights download once to $TORCH_HOME/hub/checkpoints/; in a classroom, from the mirror in '
                  f'$KUZUSHIJI_MIRROR (download_data.py --weights).')
            learn = vision_learner(dls, ARCHS[arch], n_in=n_in, pretrained=False, metrics=list(metrics), cbs=cbs, **kwargs)
            pretrained = False
    learn.weights = 'imagenet' if pretrained else 'random'  # what results record: the config may have asked for more
    wandb = sys.modules.get('wandb')
    if wandb is not None and wandb.run is not None: wandb.run.config.update({'weights': learn.weights}, allow_val_change=True)
    return learn


def unfreeze_pretrained(learn):
    """Every layer trains: `vision_learner` freezes an ImageNet body (head and BatchNorm train) to fine-tune in two phases,
    as notebook 05 does; KMNIST trains all, as on its CPU path (presets: `unfreeze=True`). Call before `fit_one_cycle`."""
    if getattr(learn, 'weights', None) == 'imagenet': learn.unfreeze()
    return learn


def trainable_share(learn):
    "The share of the model's weights that training changes: 1.0 when every layer trains, less with a frozen body."
    return sum(p.numel() for p in learn.model.parameters() if p.requires_grad) / sum(p.numel() for p in learn.model.parameters())


OPTIMIZERS = {'adam': Adam, 'ranger': ranger}  # ranger: fastai's RAdam with Lookahead (an average of recent weights)


def learner_for(cfg, dls, cbs=(), n_in=1):
    """The config's learner: architecture, pretrained or not (`unfreeze`: see `unfreeze_pretrained`); label smoothing,
    fastai's `MixUp` or `CutMix`, the optimizer (`OPTIMIZERS`; None: Adam), as the preset says; fp16 on an NVIDIA GPU
    if the preset says so; on a CPU, the `CPUSpeedups` that `cpu_settings` measured to pay here (unless
    `cfg['speedups']` is False). An Apple GPU (MPS) is left as fastai sets it up."""
    cbs = [c for c in [*cbs, mixing_callback(cfg.get('mix'))] if c]
    opt = cfg.get('opt') or 'adam'
    if opt not in OPTIMIZERS: raise ValueError(f"opt must be one of {', '.join(OPTIMIZERS)} or None (Adam), not {opt!r}")
    learn = make_learner(dls, cfg['arch'], pretrained=cfg['pretrained'], n_in=n_in, cbs=cbs or None,
                         loss_func=LabelSmoothingCrossEntropyFlat() if cfg.get('label_smoothing') else None,
                         opt_func=OPTIMIZERS[opt])
    if cfg.get('unfreeze'): unfreeze_pretrained(learn)
    if cfg['fp16'] and use_fp16(): learn.to_fp16()
    elif not on_gpu() and cfg.get('speedups', True): learn.add_cb(CPUSpeedups(**cpu_settings(learn)))
    return bars_or_lines(learn)


def pick_lr(cfg, learn):
    "The configured learning rate, or, for 'auto', `lr_find` with the article's rule."
    return float(cfg['lr']) if cfg['lr'] != 'auto' else find_lr(learn)[0]


def export(learn, path):
    """`learn.export` without the W&B callback (fastai's advice: a loaded learner would start W&B again), without
    `CPUSpeedups` (what paid on this CPU may not pay where the file is loaded) and without `learn.members` (an
    ensemble's other learners, which `run_training` lists there: pickled along, they would bring their models and
    the training data with them)."""
    finish_wandb(learn)
    if any(isinstance(c, CPUSpeedups) for c in learn.cbs): learn.remove_cb(CPUSpeedups)
    if any(isinstance(c, EpochLines) for c in learn.cbs): learn.remove_cb(EpochLines).add_cb(ProgressCallback())  # bars where it is loaded
    path = Path(path).resolve(); path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + '.tmp')
    members = learn.__dict__.pop('members', None)
    trained = {id(p) for p in learn.opt.all_params().itemgot(0)} if learn.opt is not None else None
    if trained is not None and trained != {id(p) for p in learn.model.parameters()}:
        learn.opt = None  # a model changed after training (notebook 08 builds its long-tail method in): the optimizer
                          # state no longer fits it, and fastai's export would fail putting it back
    try: learn.export(tmp)
    finally:
        if members is not None: learn.members = members
    os.replace(tmp, path)  # a crash never leaves a truncated file under the final name
    return path


def load_for(cfg, data=None, valid_idx=None):
    """A config's data: `(train, test, classes, dls)`, subsampled as the preset says, seeded. `valid_idx` (indices
    into the whole training set, such as `validation.test_like_split`'s) chooses the validation images instead of a
    random `valid_pct`; `n_train` then subsamples only the images left for training."""
    set_seed(cfg['seed'])
    (x, y), test, classes = load_arrays(data, dataset=cfg['dataset'])
    if valid_idx is not None:
        valid_idx = np.unique(valid_idx)
        if len(valid_idx) and (valid_idx[0] < 0 or valid_idx[-1] >= len(x)):
            raise ValueError(f'valid_idx must index the {len(x):,} training images (0 to {len(x) - 1})')
        rest = np.setdiff1d(np.arange(len(x)), valid_idx)
        if cfg.get('n_train'): rest = subsample(rest, rest, cfg['n_train'], cfg['seed'])[0]
        keep = np.r_[valid_idx, rest]
        (x, y), valid_idx = (x[keep], y[keep]), np.arange(len(valid_idx))
    elif cfg.get('n_train'): x, y = subsample(x, y, cfg['n_train'], cfg['seed'])
    if cfg.get('n_test'): test = subsample(*test, cfg['n_test'], cfg['seed'])
    if cfg.get('augment') == 'brush': augment = brush_augment(cfg['size'], erase=0)
    else:  # taller and narrower, or shorter and wider: merged into the rotation and zoom
        augment = char_augment(cfg['size'], cfg.get('max_warp', 0.1),
                               xtra_tfms=[Stretch(p=cfg['stretch'])] if cfg.get('stretch') else None)
    if cfg.get('stroke'): augment = augment + [StrokeWidth(p=cfg['stroke'])]  # thicker or thinner strokes
    if cfg.get('erase'): augment = augment + [EraseStrokes(p=cfg['erase'])]  # random erasing, one box per image
    dls = kmnist_dls((x, y), classes, valid_pct=cfg['valid_pct'], seed=cfg['seed'], bs=cfg['bs'], size=cfg['size'],
                     augment=augment, valid_idx=valid_idx)
    return (x, y), test, classes, dls


def history(learn):
    "Per-epoch rows of fastai's recorder: epoch, train_loss, valid_loss and the metrics (not the time)."
    names = [n for n in learn.recorder.metric_names if n not in ('epoch', 'time')]
    return [{'epoch': i, **{n: float(v) for n, v in zip(names, vals)}} for i, vals in enumerate(learn.recorder.values)]


def run_training(cfg, data=None, log=print, cbs=(), test=True, valid_idx=None):
    """Train once from a config (see `make_config`) and return the results: test and validation accuracy (with
    test-time augmentation if the preset says so, and without), per-epoch history, wall time, images/s, device,
    library versions and the config. What `scripts/train.py` runs. `cbs`: more callbacks for the learner.
    `test=False` never reads the test set (its accuracies are None): for choosing between recipes.
    `cfg['ensemble'] = n` (default 1) trains n models alike but for their seeds (seed, seed+1, ...) on the same data
    and scores the average of their probabilities; `seconds` is their training time together, `members` their
    scores one by one. The learner returned is the first member; `learn.members` lists them all. `valid_idx`: the
    validation images, as `load_for` takes them."""
    (x, y), test_set, classes, dls = load_for(cfg, data, valid_idx)
    cb = start_wandb(cfg['wandb'], config=cfg, name=f"{cfg['dataset']}-{cfg['preset']}-{cfg['arch']}-bs{cfg['bs']}")
    members, seconds, lr = [], 0., None
    for i in range(cfg.get('ensemble', 1)):
        set_seed(cfg['seed'] + i)
        learn = learner_for(cfg, dls, [cb, *cbs] if i == 0 else list(cbs))  # W&B follows the first member
        if lr is None:
            lr = pick_lr(cfg, learn)
            log(f'learning rate {lr:.2e}' + (" (lr_find with the article's rule)" if cfg['lr'] == 'auto' else ''))
        t0 = time.time()
        learn.fit_one_cycle(cfg['epochs'], lr, wd=cfg.get('wd'))  # wd None: fastai's default, 0.01
        seconds += time.time() - t0
        members.append(learn)
    learn = members[0]
    hist = history(learn)  # before validate(), which overwrites the recorder's last values
    n_seen = len(members) * cfg['epochs'] * len(dls.train) * cfg['bs']
    finish_wandb(learn)
    sets = dict(valid=dls.valid, test=test_dl(dls, test_set) if test else None)
    preds = {k: [get_probs(m, dl) for m in members] if dl else None for k, dl in sets.items()}  # each model reads each set once
    each = [{k: ensemble_accuracy([p[i]]) if p else None for k, p in preds.items()} for i in range(len(members))]
    plain = {k: ensemble_accuracy(p) if p else None for k, p in preds.items()}
    if cfg.get('tta'):  # fastai's learn.tta, where the preset says so
        final = {k: score(members, dl, tta=True) if dl else None for k, dl in sets.items()}
    else: final = plain
    learn.members = members
    return dict(test_accuracy=final['test'], valid_accuracy=final['valid'], tta=bool(cfg.get('tta')),
                without_tta=plain, members=each, history=hist, trainable=round(trainable_share(learn), 4),
                seconds=round(seconds, 1), images_per_second=round(n_seen / seconds, 1), device=device_name(),
                computes=speed_summary(learn), torch_threads=torch.get_num_threads(),
                cpu_cores=os.cpu_count(), versions=versions(), lr=float(lr), weights=learn.weights,
                config=cfg, n_train=len(dls.train_ds), n_valid=len(dls.valid_ds), n_test=len(test_set[0]) if test else 0), learn


def plot_batch_size_study(runs):
    """Notebook 04's batch-size study. `runs`: dicts with `label`, `bs`, `seed`, `accuracy` and the raw batch `losses`.
    Left, the smoothed training loss of each label's first seed against images seen (so batch sizes compare fairly);
    right, each label's validation accuracy: the bar is the mean over seeds, the dots are the seeds."""
    labels = list(dict.fromkeys(r['label'] for r in runs))
    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4.2), gridspec_kw={'width_ratios': [3, 2]})
    for i, label in enumerate(labels):
        r = next(r for r in runs if r['label'] == label)
        a.plot(np.arange(1, len(r['losses']) + 1) * r['bs'], smooth(r['losses']), color=f'C{i}', label=label,
               ls='--' if i >= 3 else '-')
    a.set(xlabel='training images seen', ylabel='training loss (smoothed)', title='Training loss (first seed)')
    a.legend(fontsize=9); a.grid(alpha=0.3)
    accs = [[r['accuracy'] for r in runs if r['label'] == label] for label in labels]
    means = [float(np.mean(x)) for x in accs]
    b.bar(range(len(labels)), means, color=[f'C{i}' for i in range(len(labels))], alpha=0.6)
    for i, x in enumerate(accs): b.plot(i + (np.arange(len(x)) - (len(x) - 1) / 2) * 0.1, x, 'k.', ms=8)  # side by side
    floor = max(0, min(min(x) for x in accs) - 0.1)
    for i, m in enumerate(means):  # at the foot of each bar, under every seed dot (the lowest is 0.1 above the foot)
        b.text(i, floor + 0.015, f'mean\n{m:.1%}', ha='center', va='bottom', fontsize=8)
    b.set_xticks(range(len(labels)), [l.replace(', ', '\n') for l in labels], fontsize=8)
    b.set(ylabel='validation accuracy', title='After the last epoch (dots: seeds)', ylim=(floor, 1))
    fig.tight_layout()
    return fig
