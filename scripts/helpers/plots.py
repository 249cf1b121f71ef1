"""Plots and tables for looking at the data: examples per class, class balance, the downloaded files.

Characters are drawn with a Japanese font that works offline. Uses: catalogue, archives, downloads."""
from __future__ import annotations

import logging, warnings
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from .archives import md5sum
from .catalogue import ROMAJI, dataset_files
from .downloads import _md5_table


def japanese_font():
    "Use IPAexGothic (shipped by matplotlib-fontja, works offline and in Colab) so characters show, not boxes."
    import matplotlib_fontja  # noqa: F401  (sets matplotlib's font family on import)
    logging.getLogger('matplotlib.font_manager').setLevel(logging.ERROR)  # it has no bold: no warning per title
    # a few rare kanji have no glyph in it (notebook 08 labels those by code point): a box, not a warning per glyph
    warnings.filterwarnings('ignore', message=r'Glyph \d+ .* missing from font')


def label_name(char):
    "A class label for plots: the character and its romaji."
    return f'{char} ({ROMAJI[char]})' if char in ROMAJI else char


def show_examples(x, y, classes, n=8, seed=0, save=None):
    "A grid: one row per class, `n` random examples each, the character and its romaji at the left."
    japanese_font()
    rng = np.random.default_rng(seed)
    fig, axs = plt.subplots(len(classes), n + 1, figsize=(n + 1.6, len(classes) * 1.05))
    for c, row in enumerate(np.atleast_2d(axs)):
        row[0].text(0.5, 0.5, label_name(classes[c]), fontsize=16, ha='center', va='center')
        idx = np.flatnonzero(y == c)
        picks = rng.choice(idx, size=min(n, len(idx)), replace=False) if len(idx) else []
        for ax, i in zip(row[1:], picks): ax.imshow(x[i], cmap='gray_r')
        for ax in row: ax.axis('off')
    fig.tight_layout()
    if save: fig.savefig(save, dpi=80)
    return fig


def class_counts(classes, **splits):
    "A table of how many examples each class has in each split: `class_counts(classes, train=y, test=y_test)`."
    df = pd.DataFrame({'char': classes, 'romaji': [ROMAJI.get(c, '') for c in classes]})
    for name, y in splits.items(): df[name] = np.bincount(y, minlength=len(classes))
    return df


def file_table(folder, dataset='kmnist', fmt=None):
    "The downloaded files with their size, md5 and whether it matches the official one."
    md5s = {**dict(dataset_files(dataset, fmt)), **_md5_table()}
    rows = [(n, Path(folder, n).stat().st_size, md5sum(Path(folder, n)), md5s[n]) for n, _ in dataset_files(dataset, fmt)]
    df = pd.DataFrame(rows, columns=['file', 'bytes', 'md5', 'expected md5'])
    df['verified'] = df['md5'] == df['expected md5']
    return df


def plot_class_balance(splits: dict, classes):
    "Side-by-side bars of examples per class for each split, e.g. `{'train': y_train, 'valid': y_valid}`."
    japanese_font()
    fig, ax = plt.subplots(figsize=(9, 3.2))
    w = 0.8 / len(splits)
    for i, (name, y) in enumerate(splits.items()):
        ax.bar(np.arange(len(classes)) + i * w, np.bincount(y, minlength=len(classes)), w, label=name)
    ax.set_xticks(np.arange(len(classes)) + w * (len(splits) - 1) / 2, [label_name(c) for c in classes], fontsize=12)
    ax.set_ylabel('examples'); ax.legend(loc='lower center', bbox_to_anchor=(0.5, 1.0), ncols=len(splits), frameon=False)
    fig.tight_layout()
    return fig
