"""The catalogue: every file that can be downloaded, with its official URL and md5, and the class names.

Pure data and two small functions; imports no other helpers module."""
from __future__ import annotations


OFFICIAL_URL = 'http://codh.rois.ac.jp/kmnist/dataset/{dataset}/'
# The official host has been reported timing out (rois-codh/kmnist issue 29). No other official
# host exists; we try the same host over https too, then tell the user how to use `--mirror`.

KNOWN_MIRRORS = [OFFICIAL_URL, 'https://codh.rois.ac.jp/kmnist/dataset/{dataset}/']

MIRROR_ENV = 'KUZUSHIJI_MIRROR'
# The calligraphy article's own data: GitHub's archive of a pinned commit (about 0.5 GB, no published checksum).

CALLIGRAPHY_REPO = 'https://github.com/wayofnumbers/chinese-calligraphy-classifier-fastai'

CALLIGRAPHY_COMMIT = '8f754674772bd9b9631795e7e42d37717c37e52d'

CALLIGRAPHY_ZIP = f'{CALLIGRAPHY_COMMIT}.zip'

CALLIGRAPHY_URL = f'{CALLIGRAPHY_REPO}/archive/{CALLIGRAPHY_ZIP}'

CALLIGRAPHY_CLASSES = ('kaishu', 'lishu', 'xiaozhuan')

CALLIGRAPHY_NAMES = {'kaishu': ('楷书', 'regular script'), 'lishu': ('隶书', 'clerical script'),
                     'xiaozhuan': ('小篆', 'small seal script')}

HOSTS = {'calligraphy': [f'{CALLIGRAPHY_REPO}/archive/'],  # every other dataset: KNOWN_MIRRORS
         'weights': ['https://download.pytorch.org/models/']}  # torchvision's ImageNet weights (notebooks 03-05)

# dataset -> format -> [(file name, official md5 or None)]
FILES = {
    'kmnist': {
        'npz': [('kmnist-train-imgs.npz', 'a183fbc01ed9a345513b145673d3d0bb'),
                ('kmnist-train-labels.npz', 'b0e1d240e8afec72b50437fc3bc5908a'),
                ('kmnist-test-imgs.npz', 'dace6de62ca8b90843cc45366337d02e'),
                ('kmnist-test-labels.npz', '3ae489a79983d0fe386152684e3b5412'),
                ('kmnist_classmap.csv', '899202f6e8dc29a321ac210a03d0f2f1')],
        'mnist': [('train-images-idx3-ubyte.gz', 'bdb82020997e1d708af4cf47b453dcf7'),
                  ('train-labels-idx1-ubyte.gz', 'e144d726b3acfaa3e44228e80efcd344'),
                  ('t10k-images-idx3-ubyte.gz', '5c965bf0a639b31b8f53240b1b52f4d7'),
                  ('t10k-labels-idx1-ubyte.gz', '7320c461ea6c1c855c0b718fb2a4b134'),
                  ('kmnist_classmap.csv', '899202f6e8dc29a321ac210a03d0f2f1')],
    },
    'k49': {
        'npz': [('k49-train-imgs.npz', '7ac088b20481cf51dcd01ceaab89d821'),
                ('k49-train-labels.npz', '44a8e1b893f81e63ff38d73cad420f7a'),
                ('k49-test-imgs.npz', 'd352e201d846ce6b94f42c990966f374'),
                ('k49-test-labels.npz', '4da6f7a62e67a832d5eb1bd85c5ee448'),
                ('k49_classmap.csv', 'f7d0d0391f68bdf0fe4cf160ceb85753')],
    },
    # One tar of PNG folders (kkanji2/U+XXXX/*.png). No official checksum is published for it.
    'kkanji': {'tar': [('kkanji.tar', None)]},
    'calligraphy': {'zip': [(CALLIGRAPHY_ZIP, None)]},
}

DESCRIPTIONS = {
    'kmnist': 'Kuzushiji-MNIST (10 classes, 28x28, 70k examples)',
    'k49': 'Kuzushiji-49 (49 classes, 28x28, 270k examples)',
    'kkanji': 'Kuzushiji-Kanji (3832 classes, 64x64, 140k examples, about 310 MB)',
    'calligraphy': 'Chinese calligraphy styles (3 classes, web images, about 0.5 GB zip; notebook 05)',
}

FORMATS = {'npz': 'NumPy data format (.npz)', 'mnist': 'MNIST data format (ubyte.gz)', 'tar': 'tar of PNG folders',
           'zip': 'zip of image folders'}

ROMAJI = dict(zip('あいうえおかきくけこさしすせそたちつてとなにぬねのはひふへほまみむめもやゆよらりるれろわゐゑをんゝ',
                  'a i u e o ka ki ku ke ko sa shi su se so ta chi tsu te to na ni nu ne no ha hi fu he ho '
                  'ma mi mu me mo ya yu yo ra ri ru re ro wa wi we wo n (repeat)'.split()))


def dataset_files(dataset: str, fmt: str | None = None) -> list[tuple[str, str | None]]:
    "The `(file name, md5)` pairs of `dataset` in format `fmt` (default: the first the dataset has)."
    if dataset not in FILES:
        raise ValueError(f"Unknown dataset {dataset!r}: choose one of {', '.join(FILES)}.")
    fmts = FILES[dataset]
    fmt = fmt or next(iter(fmts))
    if fmt not in fmts:
        have = ', '.join(f"'{f}'" for f in fmts)
        raise ValueError(f"{dataset} has no {fmt!r} format; it is published as {have} only "
                         f"(the MNIST idx .gz files exist for kmnist only).")
    return fmts[fmt]


def list_files(dataset=None):
    "Print what can be downloaded: datasets, formats and files with their md5."
    for ds in ([dataset] if dataset else FILES):
        print(f'{ds}: {DESCRIPTIONS[ds]}')
        for fmt, files in FILES[ds].items():
            print(f'  --format {fmt} ({FORMATS[fmt]})')
            for name, md5 in files: print(f'    {name:32s} {md5 or "(no official checksum)"}')
