"""Beyond the article (notebook 07): augmentation for brush-written characters, random erasing, stroke width, and
scoring a model, or a few of them together, with or without test-time augmentation.

Uses: settings, dataloaders, plots."""
from __future__ import annotations

import math, random
from functools import partial

import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F
from fastai.vision.all import AffineCoordTfm, CutMix, MixUp, TensorImage, Transform, affine_mat, aug_transforms

from .dataloaders import test_dl
from .plots import japanese_font, label_name
from .settings import set_seed


class ElasticWarp(Transform):
    """Bends each character of a batch on its own, as a hand or a brush wobbles: a random displacement of a few
    pixels on a coarse `knots` x `knots` grid, smoothly interpolated over the image (a cheap elastic distortion).
    Ours because fastai has no elastic transform and torchvision's `ElasticTransform` draws one field per call,
    so a whole batch would bend alike. Training only; before `Normalize`, so the border fills with background."""
    split_idx, order = 0, 30  # after fastai's affine transforms (order 30 too), before Normalize (99)
    def __init__(self, p=0.5, pixels=1.5, knots=4): self.p, self.pixels, self.knots = p, pixels, knots
    def encodes(self, x: TensorImage):
        n, _, h, w = x.shape
        on = (torch.rand(n, 1, 1, 1, device=x.device) < self.p).float()
        coarse = torch.randn(n, 2, self.knots, self.knots, device=x.device) * (2 * self.pixels / max(h, w))
        flow = F.interpolate(coarse, size=(h, w), mode='bicubic', align_corners=True) * on
        theta = torch.eye(2, 3, device=x.device).expand(n, 2, 3)
        grid = F.affine_grid(theta, (n, 1, h, w), align_corners=False) + flow.permute(0, 2, 3, 1)
        return TensorImage(F.grid_sample(x.as_subclass(torch.Tensor), grid, padding_mode='zeros', align_corners=False))


class EraseStrokes(Transform):
    """Random erasing (cutout), one box per image: with probability `p`, a box of 2% to `max_area` of the image
    becomes background, as if the ink had faded or the paper were torn, so that no single stroke can carry the
    answer. Ours because fastai's `RandomErasing` is made for one image at a time: applied to a batch, as our
    tensor DataLoaders augment, it erases the same box in every image, or in none (notebook 07 shows it)."""
    split_idx, order = 0, 40
    def __init__(self, p=0.5, max_area=0.2): self.p, self.max_area = p, max_area
    def encodes(self, x: TensorImage):
        n, _, h, w = x.shape
        r = lambda lo=0., hi=1.: torch.empty(n, 1, 1, device=x.device).uniform_(lo, hi)
        area, aspect = r(0.02, self.max_area) * h * w, torch.exp(r(math.log(0.3), math.log(1 / 0.3)))
        bh, bw = (area * aspect).sqrt().clamp(max=h), (area / aspect).sqrt().clamp(max=w)
        top, left = r() * (h - bh), r() * (w - bw)
        rows, cols = torch.arange(h, device=x.device).view(1, h, 1), torch.arange(w, device=x.device).view(1, 1, w)
        box = (rows >= top) & (rows < top + bh) & (cols >= left) & (cols < left + bw) & (r() < self.p)
        return x * ~box.unsqueeze(1)


class StrokeWidth(Transform):
    """Thicker or thinner strokes, as another brush or another hand writes them: with probability `p`, each image is
    blended towards its 3x3 dilation (thicker, t > 0) or its erosion (thinner, t < 0), by a random |t| up to
    `amount` (0 to 1: each pixel stays between the two). Notebook 07's test-like images have thinner strokes than the
    rest of the training set. Ours because neither fastai nor torchvision thickens or thins strokes, and as a batch
    transform it draws one width per image. Training only; after the affine transforms, before `Normalize` (ink is
    bright, the background 0)."""
    split_idx, order = 0, 35
    def __init__(self, p=0.5, amount=1.):
        if not 0 <= amount <= 1: raise ValueError(f'amount must be between 0 and 1, not {amount}')
        self.p, self.amount = p, amount
    def encodes(self, x: TensorImage):
        n, xx = x.shape[0], x.as_subclass(torch.Tensor)
        t = torch.empty(n, 1, 1, 1, device=x.device).uniform_(-self.amount, self.amount)
        t = t * (torch.rand(n, 1, 1, 1, device=x.device) < self.p)
        thick, thin = F.max_pool2d(xx, 3, 1, 1), -F.max_pool2d(-xx, 3, 1, 1)
        return TensorImage(torch.where(t > 0, xx + t * (thick - xx), xx - t * (thin - xx)))


def stretch_mat(x, max_stretch=0.15, p=0.5):
    """Affine matrices for a batch `x` that stretch each image on its own, with probability `p`: taller and narrower,
    or shorter and wider, by a random factor up to `1 + max_stretch` each way (the area stays the same)."""
    n, r = x.size(0), math.log(1 + max_stretch)
    t = x.new_empty(n).uniform_(-r, r) * (torch.rand(n, device=x.device) < p)
    z = torch.zeros_like(t)
    return affine_mat(t.exp(), z, z, z, (-t).exp(), z)  # fastai's matrices map output to input coordinates


class Stretch(AffineCoordTfm):
    """Taller and narrower characters, or shorter and wider ones, each image on its own (`stretch_mat`): notebook 07's
    test-like images are taller and narrower than the rest of the training set. Ours because fastai's `Zoom` scales
    both sides alike. An `AffineCoordTfm`, so `aug_transforms(xtra_tfms=...)` merges it with the rotation and zoom
    into one resampling of the image, not two. Training only. Judged against `best-cpu` at full size and not kept
    (README, "Judging the next idea without retraining the preset")."""
    def __init__(self, max_stretch=0.15, p=0.5, pad_mode='zeros', align_corners=True, **kwargs):
        if not 0 <= p <= 1: raise ValueError(f'p must be between 0 and 1, not {p}')
        super().__init__(partial(stretch_mat, max_stretch=max_stretch, p=p), pad_mode=pad_mode,
                         align_corners=align_corners, **kwargs)


def brush_augment(size=None, max_rotate=15., min_zoom=0.85, max_zoom=1.15, max_warp=0.2, elastic=1.5, erase=0.5):
    """Stronger augmentation for brush-written characters: fastai's affine transforms with larger rotations, zoom in
    and out (a random centre also shifts the character), perspective warp; then `ElasticWarp` (`elastic` pixels; 0
    leaves it out) and `EraseStrokes` (probability `erase`; 0 leaves it out). Still no flips: a mirrored character
    is another character, or none."""
    tfms = aug_transforms(size=size, do_flip=False, max_rotate=max_rotate, min_zoom=min_zoom, max_zoom=max_zoom,
                          max_warp=max_warp, max_lighting=0., pad_mode='zeros')
    return tfms + ([ElasticWarp(pixels=elastic)] if elastic else []) + ([EraseStrokes(p=erase)] if erase else [])


def mixing_callback(kind, alpha=None):
    "fastai's `MixUp` (default alpha 0.4) or `CutMix` (default alpha 1), or None for `kind` None."
    if not kind: return None
    if kind not in ('mixup', 'cutmix'): raise ValueError(f"mix must be 'mixup', 'cutmix' or None, not {kind!r}")
    return MixUp(alpha or 0.4) if kind == 'mixup' else CutMix(alpha or 1.)


def get_probs(learn, dl, tta=False, n=4, seed=0):
    """Class probabilities of `learn` on `dl`, and the targets. With `tta`, fastai's `learn.tta`: the average over
    `n` augmented passes, blended with the plain pass (a quarter of the weight, fastai's `beta=0.25`). Its random
    augmentations are drawn from `seed`, so a model scores the same each time it is asked; the random generators
    are left as they were."""
    with learn.no_bar():
        if not tta: return learn.get_preds(dl=dl)
        state = random.getstate(), np.random.get_state()
        with torch.random.fork_rng():
            set_seed(seed)
            out = learn.tta(dl=dl, n=n)
        random.setstate(state[0]); np.random.set_state(state[1])
        return out


def score(learns, dl, tta=False):
    """Accuracy of one learner or of an ensemble (the average of their probabilities) on `dl`."""
    learns = learns if isinstance(learns, (list, tuple)) else [learns]
    return ensemble_accuracy([get_probs(l, dl, tta) for l in learns])


def ensemble_accuracy(preds):
    "Accuracy of the average of `get_probs` results `[(probs, targets), ...]` of models scored on the same data."
    probs, targs = torch.stack([p for p, _ in preds]).mean(0), preds[0][1]
    return (probs.argmax(1) == targs).float().mean().item()


def scores(learns, test, tta=False):
    "Validation and test accuracy of a learner or an ensemble, as a dict."
    first = learns[0] if isinstance(learns, (list, tuple)) else learns
    return dict(valid=score(learns, first.dls.valid, tta), test=score(learns, test_dl(first.dls, test), tta))


def hard_cases(learn, test, n=6):
    "Indices, predictions and confidences of the `n` test images `learn` gets most confidently wrong."
    probs, targs = get_probs(learn, test_dl(learn.dls, test))
    conf, pred = probs.max(1)
    wrong = torch.nonzero(pred != targs).flatten()
    worst = wrong[conf[wrong].argsort(descending=True)][:n]
    return worst.tolist(), pred[worst].tolist(), conf[worst].tolist()


def plot_hard_cases(learn, test, train, classes, n=6, k=4, seed=0):
    """Each hard test image (see `hard_cases`) next to `k` random training images of its true class and `k` of the
    class the model chose: is the test image written unlike anything the model was trained on?"""
    japanese_font()
    (xt, yt), (x, y) = test, train
    idx, preds, confs = hard_cases(learn, test, n)
    rng = np.random.default_rng(seed)
    fig, axs = plt.subplots(len(idx), 2 * k + 2, figsize=(2 * k + 2, 1.25 * len(idx) + 0.5), squeeze=False,
                            gridspec_kw={'width_ratios': [1, 0.15] + [1] * 2 * k})
    for row, i, p, c in zip(axs, idx, preds, confs):
        row[0].imshow(xt[i], cmap='gray_r')
        row[0].set_title(f'test #{i}\nmodel: {classes[p]} {c:.0%}', fontsize=9, color='C3')
        for j, cls in enumerate([yt[i], p]):
            pick = rng.choice(np.flatnonzero(y == cls), size=k, replace=False)
            for m, ax in enumerate(row[2 + j * k: 2 + (j + 1) * k]):
                ax.imshow(x[pick[m]], cmap='gray_r')
                if m == 0: ax.set_title(('training: the true ' if j == 0 else 'training: the chosen ') +
                                        label_name(classes[cls]), fontsize=9, loc='left')
        for ax in row: ax.axis('off')
    fig.tight_layout()
    return fig
