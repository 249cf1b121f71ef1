"""Calligraphy styles: DataLoaders at any size, and progressive resizing (128 px, then 256 px).

Uses: settings, catalogue, cleaning, downloads, tracking, training."""
from __future__ import annotations

import hashlib, os, random, shutil, time
from pathlib import Path

from fastai.vision.all import (Callback, CategoryBlock, DataBlock, ImageBlock, Normalize, RandomSplitter, Resize,
                               aug_transforms, default_device, get_image_files, imagenet_stats, parent_label)

from . import settings
from .catalogue import CALLIGRAPHY_CLASSES
from .cleaning import prepare, read_report
from .downloads import download
from .settings import device_name, set_seed, versions
from .tracking import finish_wandb, start_wandb
from .training import history, learner_for, pick_lr


def calligraphy_dls(path, size=128, bs=32, valid_pct=0.2, seed=42, device=None):
    """DataLoaders from class folders at `size` pixels: seeded 20% validation split, fastai's presizing (resize
    items a little larger, then crop and augment whole batches), no flips (calligraphy is never mirrored: a
    mirrored character is a different shape, or none), ImageNet normalisation (the pretrained weights expect it)."""
    dblock = DataBlock(blocks=(ImageBlock, CategoryBlock), get_items=get_image_files, get_y=parent_label,
                       splitter=RandomSplitter(valid_pct, seed=seed), item_tfms=Resize(int(size * 1.25)),
                       batch_tfms=[*aug_transforms(size=size, do_flip=False, max_rotate=5., min_scale=0.75),
                                   Normalize.from_stats(*imagenet_stats)])
    return dblock.dataloaders(path, bs=bs, device=device or default_device())


class SeenSizes(Callback):
    "Record the (height, width) of every training batch the model saw (until `sizes.clear()`), to check resizing."
    order = 90
    def __init__(self): self.sizes = set()
    def before_batch(self):
        if self.training: self.sizes.add(tuple(self.xb[0].shape[-2:]))


def calligraphy_folder(data=None, quiet=False):
    """A prepared folder to train on. Our own `prepare` output is used as it is; any other folder of class
    folders (a download you made by hand, a classroom copy) is prepared once into `data/cache/`."""
    if data is None: return download('calligraphy', quiet=quiet)
    data = Path(data)
    if (data / 'prepared' / 'manifest.csv').exists(): data = data / 'prepared'  # the folder `download` filled
    if (data / 'manifest.csv').exists() and (data / 'report.csv').exists(): return data
    if not data.is_dir() or not any((data / c).is_dir() for c in CALLIGRAPHY_CLASSES):
        raise FileNotFoundError(f'{data} holds none of the class folders {", ".join(CALLIGRAPHY_CLASSES)}: pass the '
                                f'folder that contains them (or run scripts/download_data.py --dataset calligraphy).')
    cache = settings.DATA_DIR / 'cache' / f'calligraphy-{hashlib.md5(str(data.resolve()).encode()).hexdigest()[:8]}'
    return prepare(data, cache, quiet=quiet)['path']


def limit_per_class(path, n, seed=42):
    "A folder of symlinks to at most `n` images per class (quick runs on a big folder)."
    if not n: return path
    key = hashlib.md5(f'{Path(path).resolve()}|{n}|{seed}'.encode()).hexdigest()[:8]
    out = settings.DATA_DIR / 'cache' / f'calligraphy-subset-{key}'
    if out.exists() and (out / '.complete').exists(): return out
    tmp = out.with_name(out.name + '.tmp')
    if tmp.exists(): shutil.rmtree(tmp)
    rng = random.Random(seed)
    for c in sorted(p for p in path.iterdir() if p.is_dir()):
        files = sorted(get_image_files(c)); rng.shuffle(files)
        (tmp / c.name).mkdir(parents=True)
        for f in files[:n]: (tmp / c.name / f.name).symlink_to(f.resolve())
    (tmp / '.complete').touch()
    if out.exists(): shutil.rmtree(out)
    os.replace(tmp, out)
    return out


def progressive_resizing(cfg, data=None, log=print):
    """The calligraphy recipe, headless: stage 1 at `sizes[0]` (frozen, then unfrozen with discriminative rates),
    stage 2 at `sizes[1]` on the same learner (frozen, then unfrozen). Returns (results, learner)."""
    set_seed(cfg['seed'])
    path = calligraphy_folder(data, quiet=True)
    skipped = read_report(path)
    path = limit_per_class(path, cfg.get('n_per_class'))
    seen = SeenSizes()
    cb = start_wandb(cfg['wandb'], config=cfg, name=f"calligraphy-{cfg['preset']}-{cfg['arch']}")
    stages, hist, t0, n_seen = [], [], time.time(), 0
    learn = None
    for stage, size in enumerate(cfg['sizes'], 1):
        dls = calligraphy_dls(path, size=size, bs=cfg['bs'], valid_pct=cfg['valid_pct'], seed=cfg['seed'])
        if learn is None:
            learn = learner_for(cfg, dls, [cb, seen], n_in=3)
        else:
            learn.dls = dls  # progressive resizing: same weights, bigger images
        seen.sizes.clear()
        learn.freeze()
        lr = pick_lr(cfg, learn)
        learn.fit_one_cycle(cfg['frozen'], lr)
        hist += [{'stage': stage, 'size': size, 'phase': 'frozen', **r} for r in history(learn)]
        learn.unfreeze()
        lr2 = pick_lr(cfg, learn)
        learn.fit_one_cycle(cfg['unfrozen'], slice(lr2 / 100, lr2))
        hist += [{'stage': stage, 'size': size, 'phase': 'unfrozen', **r} for r in history(learn)]
        n_seen += (cfg['frozen'] + cfg['unfrozen']) * len(dls.train) * cfg['bs']
        _, acc, _ = learn.validate()
        stages.append({'stage': stage, 'size': size, 'seen_sizes': sorted(seen.sizes), 'valid_accuracy': float(acc),
                       'lr_frozen': float(lr), 'lr_unfrozen': [float(lr2) / 100, float(lr2)]})
        log(f"stage {stage} at {size} px: validation accuracy {acc:.4f}")
    seconds = time.time() - t0
    finish_wandb(learn)
    res = dict(test_accuracy=None, valid_accuracy=stages[-1]['valid_accuracy'], stages=stages, history=hist,
               skipped=skipped, seconds=round(seconds, 1), images_per_second=round(n_seen / seconds, 1),
               device=device_name(), cpu_cores=os.cpu_count(), versions=versions(), config=cfg, weights=learn.weights,
               n_train=len(learn.dls.train_ds), n_valid=len(learn.dls.valid_ds),
               note='no official test set: the validation set (seeded 20%) is the score')
    return res, learn
