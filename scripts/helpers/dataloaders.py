"""DataLoaders: NumPy arrays to fastai `DataLoaders` (fastai v1's `ImageDataBunch` became v2's `DataLoaders`).

Two ways: the textbook `DataBlock` (one PIL image per item) and a tensor way that slices whole batches out of
one tensor. The tensor way is ours because it is measurably faster: 55x the DataBlock way on 2 CPU cores
(README, "Speed of the input pipeline"); everything after the batch is fastai's own. `benchmark_loader` and
`training_speed` time a loader alone and a model on it. Uses: settings, arrays."""
from __future__ import annotations

import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from fastai.vision.all import (Category, CategoryBlock, CategoryMap, CrossEntropyLossFlat, DataBlock, DataLoaders,
                               ImageBlock, IndexSplitter, IntToFloatTensor, Normalize, PILImageBW, TensorCategory,
                               TensorImageBW, TfmdDL, aug_transforms, default_device)
from PIL import Image

from .arrays import split_indices
from .settings import synchronize, use_fp16


def item_image(o): return o[0]


def item_label(o): return o[1]
# Getters live in this module, not in a notebook: `export()` pickles them. A module's function is pickled by
# reference; one defined in a notebook is pickled by value with every global it uses (a getter that indexes
# into the image array takes the whole array into export.pkl), and loading the export needs that notebook.


def char_augment(size=None, max_warp=0.1, xtra_tfms=None):
    """Augmentations that suit characters: small rotations, zoom with a random centre (so small shifts), warp; no flips.
    `max_warp=0` leaves out the warp, the costliest part on a CPU (the `cpu` preset does: see presets.PRESETS).
    `xtra_tfms`: more transforms; fastai merges affine ones (such as `recipes.Stretch`) into one resampling."""
    return aug_transforms(size=size, do_flip=False, max_rotate=10., max_zoom=1.1, max_lighting=0., max_warp=max_warp,
                          pad_mode='zeros', xtra_tfms=xtra_tfms)


def image_stats(x):
    "Mean and std of uint8 images scaled to [0, 1] (from the training split only)."
    x = torch.as_tensor(x[:20000]).float().div_(255)
    return x.mean().item(), x.std().item()


class ArrayDataset:
    """Images (N, H, W) uint8 and labels (N,) held as tensors. Indexing with one index gives one item,
    indexing with a tensor of indices gives a whole batch at once: no PIL image, no per-item Python."""
    def __init__(self, x, y=None, vocab=None, split_idx=None):
        self.x = torch.as_tensor(np.asarray(x, dtype=np.uint8))
        self.y = None if y is None else torch.as_tensor(np.asarray(y)).long()
        # a CategoryMap, as fastai's `Categorize` makes: a plain list reads as one vocab per target to fastai
        self.vocab = vocab if vocab is None or isinstance(vocab, CategoryMap) else CategoryMap(list(vocab), sort=False)
        self.split_idx = split_idx
        self.loss_func = CrossEntropyLossFlat()  # what fastai's `Categorize` would tell the Learner

    def __len__(self): return len(self.x)

    def __getitem__(self, i):
        x = TensorImageBW(self.x[i].unsqueeze(-3))
        return (x,) if self.y is None else (x, TensorCategory(self.y[i]))

    @property
    def n_inp(self): return 1

    @contextmanager
    def set_split_idx(self, i):
        "Use the transforms of split `i` for a while (0: training, with augmentation), as fastai's `Datasets` does: `tta` needs it."
        old, self.split_idx = self.split_idx, i
        try: yield self
        finally: self.split_idx = old

    @property
    def items(self):
        "The items as `(image, label)` pairs, as fastai's `Interpretation` expects."
        ys = [None] * len(self) if self.y is None else self.y.tolist()
        return list(zip(self.x.numpy(), ys))

    def new_empty(self):
        return type(self)(self.x[:0], None if self.y is None else self.y[:0], self.vocab, self.split_idx)

    def decode(self, o, full=True):
        "Labels back to their characters, so `show_batch`, `predict` and friends speak Japanese."
        return tuple(Category(self.vocab[int(t)]) if isinstance(t, TensorCategory) and self.vocab else t for t in o)

    @classmethod
    def from_items(cls, items, vocab=None, with_labels=False):
        """Images (arrays, PIL images or file paths) or `(image, label)` pairs, as `predict` and `test_dl` pass them.
        A label may be an index or a character of `vocab`."""
        def img(o):
            if isinstance(o, (str, Path)): o = Image.open(o)
            if isinstance(o, Image.Image): o = o.convert('L')
            a = np.asarray(o)
            if a.ndim == 3 and a.shape[0] == 1: a = a[0]
            if a.ndim != 2: raise ValueError(f'Expected a grayscale image (H, W), got shape {a.shape}.')
            return a
        def lbl(o): return list(vocab).index(o) if isinstance(o, str) else int(o)
        items = list(items)
        xs = np.stack([img(o[0] if with_labels else o) for o in items]) if items else np.zeros((0, 28, 28), np.uint8)
        ys = [lbl(o[1]) for o in items] if with_labels else None
        return cls(xs, ys, vocab, split_idx=1)


class ArrayDL(TfmdDL):
    """A fastai `TfmdDL` that slices whole batches out of `ArrayDataset` tensors. Everything else
    (after_batch transforms on the GPU, `show_batch`, `test_dl`, `predict`, `export`) is fastai's own."""
    def __init__(self, dataset=None, bs=64, **kwargs):
        kwargs['num_workers'] = 0  # slicing a tensor is faster than shipping batches between processes
        super().__init__(dataset, bs=bs, **kwargs)

    def create_batches(self, samps):
        idx = torch.as_tensor(list(samps), dtype=torch.long)
        for b in idx.split(self.bs):
            if self.drop_last and len(b) < self.bs: break
            yield self.dataset[b]

    def new(self, dataset=None, cls=None, **kwargs):
        if dataset is not None and not isinstance(dataset, ArrayDataset):  # raw items from `test_dl`/`predict`
            dataset = ArrayDataset.from_items(dataset, self.dataset.vocab,
                                              with_labels=len(dataset) > 0 and isinstance(dataset[0], tuple))
        return super().new(dataset, cls, **kwargs)


def kmnist_dls(train, classes, way='tensor', valid_pct=0.1, seed=42, bs=128, device=None, augment=True, size=None,
               max_warp=0.1, valid_idx=None):
    """fastai `DataLoaders` from `(x, y)` NumPy arrays: a seeded validation split taken from the training set,
    normalisation with the training set's statistics, augmentation for characters (train only).

    `way='tensor'` slices batches straight from tensors (fast; for training). `way='datablock'` is the textbook
    DataBlock with one PIL image per item (about 1,500 images/s per core: fine to look at, too slow to feed a GPU).
    `size` resizes batches (on the GPU) as part of the augmentation, so it needs `augment=True`; `max_warp` goes to
    `char_augment`. `augment` may also be a list of batch transforms to use instead (`recipes.brush_augment()`). `valid_idx`
    chooses the validation images instead of a random `valid_pct` (`validation.test_like_split`).
    The official test set is never part of these: make it with `test_dl(dls, test)` for the final score."""
    if size and not augment: raise ValueError('size is applied by the augmentation: use augment=True with it')
    x, y = train
    if valid_idx is None: t_idx, v_idx = split_indices(len(x), valid_pct, seed)
    else: v_idx = np.sort(valid_idx); t_idx = np.setdiff1d(np.arange(len(x)), v_idx)
    mean, std = image_stats(x[t_idx])
    augs = (list(augment) if isinstance(augment, (list, tuple)) else char_augment(size, max_warp)) if augment else []
    after = [IntToFloatTensor(), *augs, Normalize.from_stats(mean, std, cuda=False)]
    device = device or default_device()
    if way == 'tensor':
        mk = lambda idx, train: ArrayDL(ArrayDataset(x[idx], y[idx], list(classes), split_idx=0 if train else 1),
                                        bs=bs if train else 2 * bs, shuffle=train, drop_last=train,
                                        after_batch=after, device=device)
        dls = DataLoaders(mk(t_idx, True), mk(v_idx, False), device=device)
    elif way == 'datablock':
        dblock = DataBlock(blocks=(ImageBlock(cls=PILImageBW), CategoryBlock(vocab=list(classes))),
                           get_x=item_image, get_y=item_label, splitter=IndexSplitter(v_idx),
                           batch_tfms=after[1:])
        items = [[img, classes[lbl]] for img, lbl in zip(x, y)]  # lists: fastai maps transforms over tuples
        dls = dblock.dataloaders(items, bs=bs, device=device)
    else:
        raise ValueError(f"way must be 'tensor' or 'datablock', not {way!r}")
    dls.stats = (mean, std)
    return dls


def test_dl(dls, test, bs=None):
    "A DataLoader over the official test set `(x, y)` with the validation transforms (no augmentation)."
    x, y = test
    vocab = list(dls.vocab)
    if isinstance(dls.valid, ArrayDL):
        return dls.valid.new(ArrayDataset(x, y, vocab, split_idx=1), shuffle=False, drop_last=False,
                             **({'bs': bs} if bs else {}))
    return dls.test_dl([[img, vocab[lbl]] for img, lbl in zip(x, y)], with_labels=True, **({'bs': bs} if bs else {}))


def benchmark_loader(dl, n_batches=50, warmup=2):
    "Images per second of a DataLoader alone (batches made, transforms applied, nothing trained)."
    it, seen = iter(dl), 0
    for _ in range(warmup): next(it)
    if torch.cuda.is_available(): torch.cuda.synchronize()
    t0 = time.perf_counter()
    for i, b in enumerate(it):
        seen += len(b[0])
        if i + 1 >= n_batches: break
    if torch.cuda.is_available(): torch.cuda.synchronize()
    return seen / (time.perf_counter() - t0)


def training_speed(learn, n_batches=5):
    """Training images per second of `learn` on its own DataLoader (forward, backward, step), a few batches. The model
    goes to the loader's device first, as fastai's `fit` puts it there (a fresh learner's model is still on the CPU);
    the warm-up runs as the timed steps do (mixed precision on an NVIDIA GPU), and a GPU finishes its queued work
    before the clock starts and before it stops (`synchronize`), so the time is the work's, not its queueing."""
    device = torch.device(learn.dls.device or 'cpu')
    model, opt = learn.model.to(device).train(), torch.optim.SGD(learn.model.parameters(), lr=1e-4)
    it, seen = iter(learn.dls.train), 0
    amp = lambda: torch.autocast('cuda', dtype=torch.float16, enabled=use_fp16() and device.type == 'cuda')  # as to_fp16()
    xb, yb = next(it)
    with amp(): loss = learn.loss_func(model(xb), yb)
    loss.backward()  # warm up
    synchronize(device)
    t0 = time.perf_counter()
    for _ in range(n_batches):
        xb, yb = next(it)
        with amp(): loss = learn.loss_func(model(xb), yb)
        loss.backward(); opt.step(); opt.zero_grad()
        seen += len(xb)
    synchronize(device)
    return seen / (time.perf_counter() - t0)
