"""Kuzushiji-Kanji's run, as `train.py --dataset kkanji` makes it: notebook 08's recipe from data to exported model.

The steps are the notebook's, in one function: the arrays and the split (`kanji`), the fast DataLoaders, the small
CNN trained on the natural distribution with one-cycle, then the long-tail method notebook 08 chose on validation,
put on the model as its last layer, and the reject threshold. Two ways, as notebook 07 ends:
- `train_on='train'` (preset `cpu-check`): the training images only; the threshold is chosen on validation, and the
  test set is read once, at the end: the scores the README reports;
- `train_on='all'` (preset `cpu`): the same recipe on every image, validation and test included, for the model that
  goes to work; the threshold is the one `cpu-check` chose (kept in the preset), and no held-out score exists.
Uses: settings, dataloaders, kanji, longtail, speed, training."""
from __future__ import annotations

import time

import numpy as np
import torch
from fastai.vision.all import LabelSmoothingCrossEntropyFlat, Learner, accuracy, top_k_accuracy
from torch import nn

from . import longtail as lt
from .dataloaders import char_augment, kmnist_dls, test_dl
from .kanji import load_kanji
from .settings import device_name, on_gpu, set_seed, versions
from .tracking import bars_or_lines
from .speed import CPUSpeedups, batch_seconds, cpu_settings, epochs_within, speed_summary
from .training import kmnist_cnn


def kanji_cnn(n_out, widths=(32, 64, 128), blocks=(1, 1, 1)):
    """Notebook 04's small ResNet (`kmnist_cnn`) for 32x32 kanji: its first convolution has stride 2, so every layer
    after it sees a quarter of the pixels; on 2 CPU cores that trains about 3x faster than stride 1, and a kanji's
    strokes, 2-3 pixels wide at 32 px, survive it. 975k parameters for 3,832 classes, most in the last layer."""
    return kmnist_cnn(n_out, widths, blocks, stem=2)


def kanji_data(cfg, data=None, log=print):
    "The data set, its split and DataLoaders (training and validation images only) for a config."
    d = load_kanji(data, size=cfg['size'], log=log)
    train, valid = np.flatnonzero(d['part'] == 0), np.flatnonzero(d['part'] == 1)
    if cfg.get('train_on', 'train') == 'all': train = np.arange(len(d['y']))  # validation then only shows progress
    if cfg.get('n_train'): train = np.random.default_rng(cfg['seed']).permutation(train)[:cfg['n_train']]
    idx = np.r_[train, valid]
    dls = kmnist_dls((d['x'][idx], d['y'][idx]), d['classes'], valid_idx=np.arange(len(train), len(idx)), bs=cfg['bs'],
                     seed=cfg['seed'], augment=char_augment(None, max_warp=0.))
    return d, dls


def kanji_learner(cfg, dls):
    "The config's CNN in a plain fastai `Learner`, with label smoothing and the CPU speed-ups measured to pay here."
    learn = Learner(dls, kanji_cnn(len(dls.vocab)), loss_func=LabelSmoothingCrossEntropyFlat(),
                    metrics=[accuracy, top_k_accuracy])
    if not on_gpu(): learn.add_cb(CPUSpeedups(**cpu_settings(learn)))
    return bars_or_lines(learn)


def sized_epochs(cfg, learn, log=print, n_all=None):
    """The epochs to train: the config's, or, with a time budget (`cfg['budget']`, seconds of network training), as
    many of them as fit on this machine, from the measured time of a training batch (`speed.batch_seconds`): a laptop
    that computes in float32 trains fewer epochs than one with bfloat16 in hardware, and says so, rather than run over
    its budget. With `cfg['size_as'] == 'all'` (`cpu-check`) the epochs are those that `n_all` images, the `cpu`
    preset's every image, would fit, so that the held-out twin trains as many epochs as the model that goes to work.
    Returns (epochs, what the sizing measured, or None)."""
    if not cfg.get('budget'): return cfg['epochs'], None
    batch_s = batch_seconds(learn)
    valid_s = len(learn.dls.valid_ds) / learn.dls.train.bs * batch_s * VALID_SHARE
    n_batches = -(-n_all // learn.dls.train.bs) if cfg.get('size_as') == 'all' and n_all else len(learn.dls.train)
    epochs = epochs_within(cfg['budget'], batch_s, n_batches, cfg['epochs'], valid_s)
    log(f"time budget {cfg['budget']} s for training: a batch takes {batch_s:.3f} s here "
        f"({learn.dls.train.bs / batch_s:,.0f} images/s), so " +
        (f"all {epochs} epochs fit" if epochs == cfg['epochs'] else
         f"{epochs} of the recipe's {cfg['epochs']} epochs fit: expect lower accuracy than with all {cfg['epochs']}"))
    return epochs, dict(budget=cfg['budget'], batch_seconds=round(batch_s, 4), epochs_max=cfg['epochs'], epochs=epochs)


VALID_SHARE = 0.35  # a validation image costs about a third of a training image (forward only): measured on kanji_cnn


METHODS = ('none', 'logit-adjust', 'crt', 'ncm')


def with_method(model, method, counts, train=None, valid=None, tau=1.0, epochs=8, scale=16., seed=42):
    """`model` (an `nn.Sequential` whose last layer is its classifier) with a long-tail method built in, so that an
    exported model carries it: 'logit-adjust' appends `LogitAdjust(counts, tau)`; 'crt' replaces the last layer with
    one retrained on class-balanced batches of the frozen features `train` (validated on `valid`); 'ncm' replaces it
    with `NearestMean` of `train`; 'none' changes nothing. `train`, `valid`: (features, targets). What is added is
    put on the model's device (a GPU's model stays there; features made on it, `lt.features`, are there too)."""
    if method == 'none': return model
    device = next(model.parameters()).device
    if method == 'logit-adjust': return nn.Sequential(model, lt.LogitAdjust(counts, tau).to(device))
    if method not in METHODS: raise ValueError(f"method must be one of {', '.join(METHODS)}, not {method!r}")
    head = (lt.retrain_classifier(train, valid, len(counts), epochs=epochs, seed=seed) if method == 'crt' else
            lt.NearestMean(*train, len(counts), scale))
    return nn.Sequential(*model[:-1], head.to(device))


def classifier(model):
    "What turns features into logits in a model `with_method` made: its last layer, or the last two with `LogitAdjust`."
    if isinstance(model[-1], lt.LogitAdjust): return lambda f: model[-1](model[0][-1](f))
    return model[-1]


def split_dl(learn, d, part):
    "A DataLoader over one part of the split (0 train, 1 valid, 2 test, 3 rare), validation transforms, no shuffling."
    idx = np.flatnonzero(d['part'] == part)
    return test_dl(learn.dls, (d['x'][idx], d['y'][idx]))


def run_kanji(cfg, data=None, log=print, test=True):
    """Train a Kuzushiji-Kanji config and return (results, learner). Results: long-tail reports (top-1, top-5,
    balanced, by bucket) on validation, without and with the method; the tau and the reject threshold chosen on
    validation; and, read once at the end, the same on the test set and on the rare check (one held-back image of
    each class with 2 to 4); time, speed, device, versions. The learner's model carries the method;
    `learn.long_tail` records the training images per class, the method and the threshold, for the app and
    `predict.py`."""
    d, dls = kanji_data(cfg, data, log)
    set_seed(cfg['seed'])
    learn = kanji_learner(cfg, dls)
    epochs, sized = sized_epochs(cfg, learn, log, n_all=len(d['y']))
    t0 = time.time()
    learn.fit_one_cycle(epochs, cfg['lr'])
    seconds = time.time() - t0
    computes = speed_summary(learn)
    if any(isinstance(c, CPUSpeedups) for c in learn.cbs): learn.remove_cb(CPUSpeedups)
    every = cfg.get('train_on', 'train') == 'all'
    if every: d['part'] = np.where(d['part'] == 1, 1, 0)  # every image trained on; validation still shows progress
    counts = np.bincount(d['y'], minlength=len(d['classes'])) if every else d['counts']
    model = learn.model
    train = lt.features(model, test_dl(learn.dls, (d['x'], d['y'])) if every else split_dl(learn, d, 0))
    valid = lt.features(model, split_dl(learn, d, 1))
    base_valid = model[-1](valid[0]).detach()
    method, tau = cfg['method'], None
    if method == 'logit-adjust' and every: tau = cfg['tau']  # chosen by the held-out run
    elif method == 'logit-adjust':  # tau chosen on validation, for balanced accuracy
        tau = max(cfg.get('taus', (0.25, 0.5, 0.75, 1.0)),
                  key=lambda t: lt.long_tail_report(lt.adjust(base_valid, counts, t), valid[1], counts)['balanced'])
    learn.model = with_method(model, method, counts, train, valid, tau=tau, epochs=cfg.get('crt_epochs', 8),
                              seed=cfg['seed']).eval()
    trained_in = time.time() - t0  # the network, its features and the long-tail method: the time a budget is about
    with torch.inference_mode(): mv = classifier(learn.model)(valid[0])
    if every:  # the validation images were trained on: the threshold comes from the held-out run (cpu-check)
        threshold, coverage, kept = cfg['reject_below'], None, None
        log(f"{method}; trained on every image, so nothing is held out: not sure below {threshold:.2f}, the threshold "
            f"the held-out run chose on validation")
    else:
        threshold, coverage, kept = lt.choose_threshold(mv.softmax(1), valid[1], cfg['reject_accuracy'])
        log(f"{method}{f' (tau {tau}, chosen on validation)' if tau is not None else ''}; " +
            (f"not sure below {threshold:.2f}: on validation it answers {coverage:.0%} of the characters, {kept:.1%} of "
             f"them right" if coverage else f"no confidence reaches {cfg['reject_accuracy']:.0%} right on validation: "
                                              f"it is never sure"))
    res = dict(method=method, tau=tau, trained_on='every image' if every else 'the training part',
               valid=None if every else lt.long_tail_report(base_valid, valid[1], counts),
               valid_method=None if every else lt.long_tail_report(mv, valid[1], counts), reject_below=threshold,
               reject_valid=None if every else dict(coverage=coverage, accuracy=kept), test=None, test_method=None)
    if test and not every:  # read once, at the end
        for name, part in (('test', 2), ('rare', 3)):
            f, y = lt.features(model, split_dl(learn, d, part))
            with torch.inference_mode(): base, mine = model[-1](f), classifier(learn.model)(f)
            res[name], res[f'{name}_method'] = lt.long_tail_report(base, y, counts), lt.long_tail_report(mine, y, counts)
            if name == 'test':
                conf, pred = mine.softmax(1).max(1)
                sure = conf >= threshold
                res['reject_test'] = dict(coverage=float(sure.float().mean()),
                                          accuracy=float((pred[sure] == y[sure]).float().mean()) if sure.any() else None)
    learn.long_tail = dict(counts=counts.tolist(), method=method, tau=tau, reject_below=threshold, size=cfg['size'])
    n_seen = epochs * len(dls.train) * cfg['bs']
    res.update(epochs=epochs, sized=sized, seconds=round(seconds, 1), images_per_second=round(n_seen / seconds, 1),
               total_seconds=round(trained_in, 1), device=device_name(),
               computes=computes, torch_threads=torch.get_num_threads(), versions=versions(), config=cfg,
               n_train=len(dls.train_ds), n_valid=0 if every else len(dls.valid_ds),
               n_test=int((d['part'] == 2).sum()) if test and not every else 0,
               n_classes=len(d['classes']))
    return res, learn
