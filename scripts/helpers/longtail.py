"""The long tail: scoring a model class by class and bucket by bucket, and three ways to help the rare classes.

Kuzushiji-Kanji's classes range from one image to over a thousand, so plain accuracy is carried by a few hundred
frequent kanji. Long-tail research (Kang et al. 2020; Menon et al. 2021) reports top-1 by bucket of training images per
class, and balanced accuracy, the mean over classes. Our buckets, by training images per class: many (more than
100), medium (20 to 100), few (fewer than 20); the reference codes differ at the edges, so they are named here.

The three ideas, each a small module that replaces or follows the network's last layer, so an exported model
carries it:
    LogitAdjust  subtract tau x log(class prior) from the logits (Menon et al.): no training at all
    retrain_classifier  the last layer trained again on the frozen features, with class-balanced batches from fastai's
                 `weighted_dataloaders` (cRT, Kang et al.)
    NearestMean  cosine similarity to each class's mean feature (nearest class mean): a class with a single
                 training image gets a classifier too
Every function works where its tensors are (a GPU after a GPU fit keeps its speed): results are computed on the
scores' or features' device, only what goes to NumPy is copied to the CPU, and the modules' tensors are buffers, so
they move with the model.
Uses: no other helpers module."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from fastai.callback.data import WeightedDL
from fastai.data.core import TfmdDL
from torch import nn

EDGES = (20, 100)  # few: fewer than 20 training images; medium: 20 to 100; many: more than 100
BUCKETS = ('many', 'medium', 'few')


def bucket_of(counts):
    "Each class's bucket by its number of training images: 'many' (> 100), 'medium' (20-100) or 'few' (< 20)."
    counts = np.asarray(counts)
    return np.where(counts > EDGES[1], 'many', np.where(counts >= EDGES[0], 'medium', 'few'))


def as_tensor(a): return a if isinstance(a, torch.Tensor) else torch.as_tensor(np.asarray(a))


def host(t): return t.detach().cpu().numpy()  # NumPy reads only the CPU's memory: a GPU's tensor is copied first


def long_tail_report(scores, targets, counts, k=5):
    """How a model does on the long tail. `scores`: (N, classes) logits or probabilities, `targets`: (N,) true
    classes, `counts`: training images per class. Returns top-1, top-k, balanced accuracy (the mean of the per-class
    top-1 over the classes present) and, per bucket, top-1 with its number of classes and images."""
    scores = as_tensor(scores).float()
    targets = as_tensor(targets).long().to(scores.device)
    right = host(scores.argmax(1) == targets)
    topk = host((scores.topk(min(k, scores.shape[1]), 1).indices == targets[:, None]).any(1))
    t = host(targets)
    classes = np.unique(t)
    per_class = np.bincount(t, right, minlength=len(counts))[classes] / np.bincount(t, minlength=len(counts))[classes]
    where = bucket_of(counts)[t]
    rep = dict(top1=float(right.mean()), **{f'top{k}': float(topk.mean())}, balanced=float(per_class.mean()),
               n_images=len(t), n_classes=len(classes))
    for b in BUCKETS:
        m = where == b
        rep[b] = dict(top1=float(right[m].mean()) if m.any() else None, images=int(m.sum()),  # None: no such class
                      classes=int(len(np.unique(t[m]))))
    return rep


def report_row(rep):
    "One flat row of a report, for a table: top-1, top-5, balanced, then each bucket's top-1 (NaN for an empty bucket)."
    return {**{k: rep[k] for k in ('top1', 'top5', 'balanced') if k in rep},
            **{b: float('nan') if rep[b]['top1'] is None else rep[b]['top1'] for b in BUCKETS}}


def log_prior(counts):
    "log of each class's share of the training images (a class without any gets the smallest share there is)."
    counts = np.maximum(np.asarray(counts, dtype=np.float64), 0.5)
    return torch.as_tensor(np.log(counts / counts.sum()), dtype=torch.float32)


class LogitAdjust(nn.Module):
    """Post-hoc logit adjustment (Menon et al. 2021): logits - tau x log(prior). A network trained on long-tailed
    data learns the prior into its logits; taking it out lifts rare classes. `tau=0` changes nothing, and with
    equal class sizes it shifts every logit alike, so no answer changes. Append it to a model: `nn.Sequential(model,
    LogitAdjust(counts, tau))`, and the exported model carries it."""
    def __init__(self, counts, tau=1.0):
        super().__init__()
        self.tau = float(tau)
        self.register_buffer('log_prior', log_prior(counts))
    def forward(self, x): return x - self.tau * self.log_prior.to(x.device, x.dtype)  # (a no-op where it already is)
    def extra_repr(self): return f'tau={self.tau}'


def adjust(logits, counts, tau):
    "Logits adjusted by `tau` (see `LogitAdjust`), without building a module, on the logits' device."
    logits = as_tensor(logits).float()
    return logits - tau * log_prior(counts).to(logits.device)


def features(model, dl):
    """The inputs of `model`'s last layer (its features) for every batch of `dl`, and the targets, with no gradient:
    what the classifier sees. Both stay on the model's device (each batch is taken there)."""
    feats, ys = [], []
    hook = model[-1].register_forward_hook(lambda m, i, o: feats.append(i[0].detach().float()))
    model.eval()
    device = next(model.parameters()).device
    try:
        with torch.inference_mode():
            for xb, yb in dl:
                model(xb.as_subclass(torch.Tensor).to(device)); ys.append(yb.as_subclass(torch.Tensor).to(device))
    finally: hook.remove()
    return torch.cat(feats), torch.cat(ys)


class NearestMean(nn.Module):
    """Nearest class mean as a last layer: `scale` x the cosine similarity between an image's features and each class's
    mean feature. Every class with at least one training image gets a classifier, trained or not, so it reads the
    classes too small for a test split; `scale` sets how sharp the probabilities are (chosen on validation)."""
    def __init__(self, feats, labels, n_classes, scale=16.):
        super().__init__()
        feats = feats.float()  # the means are made on the features' device, and move with the module
        sums = feats.new_zeros(n_classes, feats.shape[1]).index_add_(0, as_tensor(labels).long().to(feats.device),
                                                                     F.normalize(feats, dim=1))
        self.register_buffer('means', F.normalize(sums, dim=1))
        self.scale = float(scale)
    def forward(self, x): return self.scale * F.normalize(x.float(), dim=1) @ self.means.T
    def extra_repr(self): return f'{self.means.shape[0]} classes, scale={self.scale}'


class FeatureRows(TfmdDL):
    "Batches sliced at once out of `(features, targets)` tensors, as `dataloaders.ArrayDL` does for images."
    def create_batches(self, samps):
        idx = torch.as_tensor(list(samps), dtype=torch.long)
        for b in idx.split(self.bs): yield self.dataset[0][b], self.dataset[1][b]


class BalancedRows(WeightedDL, FeatureRows):
    """fastai's `WeightedDL` (what `weighted_dataloaders` builds: each epoch draws its items at random, with the
    weights given) over `FeatureRows`: per-item Python made cRT's epochs several times slower."""


def retrain_classifier(train, valid, n_classes, epochs=8, lr=1e-2, bs=512, seed=42):
    """cRT (Kang et al. 2020): a new last layer trained on the frozen network's features, with class-balanced batches:
    fastai's `WeightedDL`, each image weighted by 1 / its class's size, so every class is drawn about equally often.
    `train`, `valid`: (features, targets). Trained where the training features are (a GPU's stay there); returns the
    new `nn.Linear`, on that device."""
    from fastai.data.core import DataLoaders
    from fastai.learner import Learner
    from fastai.losses import CrossEntropyLossFlat
    from fastai.metrics import accuracy
    from fastai.torch_core import set_seed
    device = train[0].device
    labels = host(as_tensor(train[1]).long())  # on the CPU: fastai's WeightedDL draws with NumPy
    (ft, yt), (fv, yv) = [(f.float().to(device), as_tensor(y).long().to(device)) for f, y in (train, valid)]
    counts = np.bincount(labels, minlength=n_classes)
    set_seed(seed)
    bs = min(bs, max(8, len(yt) // 8))
    dls = DataLoaders(BalancedRows((ft, yt), bs=bs, wgts=1 / counts[labels], shuffle=True, n=len(yt)),
                      FeatureRows((fv, yv), bs=4 * bs, n=len(yv)), device=device)
    head = nn.Linear(ft.shape[1], n_classes, device=device)  # (batches of at most an eighth of the images: tiny sets get some steps)
    learn = Learner(dls, head, loss_func=CrossEntropyLossFlat(), metrics=accuracy)
    with learn.no_bar(), learn.no_logging(): learn.fit_one_cycle(epochs, lr)
    return head.eval()


def reject_curve(probs, targets):
    """Accuracy against coverage for a reject option: sort the answers by confidence (the top probability), and for
    each share answered (the most confident first), the accuracy on those. Returns (thresholds, coverage, accuracy)."""
    probs = as_tensor(probs).float()
    targets = as_tensor(targets).long().to(probs.device)
    conf, pred = probs.max(1)
    order = conf.argsort(descending=True)
    right = host((pred == targets)[order].float())
    n = np.arange(1, len(right) + 1)
    return host(conf[order]), n / len(right), np.cumsum(right) / n


def choose_threshold(probs, targets, accuracy=0.95):
    """The lowest confidence at which the answers kept reach `accuracy` on these (validation) images: below it the
    model says it is not sure. Returns (threshold, coverage, accuracy kept)."""
    th, cov, acc = reject_curve(probs, targets)
    ok = np.flatnonzero(acc >= accuracy)
    if not len(ok): return 1.0, 0.0, float('nan')
    i = ok[-1]
    return float(th[i]), float(cov[i]), float(acc[i])
