"""A validation set that looks like the test set (notebook 07): adversarial validation.

A model is trained to tell training images from test images. If it cannot (ROC AUC 0.5), the two look alike
and a random validation slice is as good as any; if it can, the training images it most takes for test images
make a validation set that predicts the test score better. Uses: settings, dataloaders, speed, training."""
from __future__ import annotations

import numpy as np
from fastai.vision.all import DataLoaders, IntToFloatTensor, Learner, Normalize, default_device
from sklearn.metrics import roc_auc_score

from .dataloaders import ArrayDataset, ArrayDL, image_stats
from .settings import cpu_has_bf16, on_gpu, set_seed
from .speed import CPUSpeedups
from .training import kmnist_cnn


def test_likeness(train_x, test_x, epochs=2, lr=1e-2, seed=42):
    """How much each training image looks like a test image: the probability that a `kmnist_cnn`, trained to tell
    training images (0) from test images (1), gives it. The images are split in two halves and each half is scored
    by the model trained on the other, so no image is scored by a model that saw it. Returns the training images'
    scores and the ROC AUC over all images (0.5: the model cannot tell the two sets apart).

    On a CPU it always trains as channels_last, in bfloat16 where the CPU has it, instead of as `cpu_settings` times
    best: a timed choice can differ between two runs on one machine, and with it the validation set (here, 2 cores of
    an Intel Xeon: ROC AUC 0.6676 with bfloat16, 0.6699 without), so `compare_recipes.py --reuse` found another
    set and retrained what it should have read."""
    x = np.concatenate([train_x, test_x])
    is_test = np.r_[np.zeros(len(train_x), int), np.ones(len(test_x), int)]
    halves = np.array_split(np.random.default_rng(seed).permutation(len(x)), 2)
    mean, std = image_stats(train_x)
    after = [IntToFloatTensor(), Normalize.from_stats(mean, std, cuda=False)]
    def dl(idx, train):
        return ArrayDL(ArrayDataset(x[idx], is_test[idx], ['train', 'test'], split_idx=0 if train else 1),
                       bs=128 if train else 256, shuffle=train, drop_last=train, after_batch=after,
                       device=default_device())
    scores = np.zeros(len(x))
    for fit_on, score_on in (halves, halves[::-1]):
        set_seed(seed)
        learn = Learner(DataLoaders(dl(fit_on, True), dl(score_on, False)), kmnist_cnn(2))
        if not on_gpu(): learn.add_cb(CPUSpeedups(channels_last=True, bf16=cpu_has_bf16()))
        with learn.no_bar(), learn.no_logging(): learn.fit_one_cycle(epochs, lr)
        with learn.no_bar(): scores[score_on] = learn.get_preds()[0][:, 1].numpy()
    return scores[:len(train_x)], float(roc_auc_score(is_test, scores))


def test_like_split(scores, valid_pct=0.1):
    "Indices of the `valid_pct` of training images that look most like test images (see `test_likeness`)."
    return np.argsort(-np.asarray(scores), kind='stable')[:round(len(scores) * valid_pct)]
