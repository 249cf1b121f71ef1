#!/usr/bin/env python
"""Make a classroom folder: every file the notebooks download, fetched once, verified, to serve to a room from one laptop.

    python scripts/classroom.py classroom/                      # all the notebooks need (about 0.3 GB)
    python scripts/classroom.py classroom/ --calligraphy full   # the full calligraphy archive (0.5 GB) instead of 05's subset
    python scripts/classroom.py classroom/ --kkanji             # with Kuzushiji-Kanji's tar (about 310 MB), for notebook 08
    python -m http.server 8000 --directory classroom            # serve it; on every laptop:
    export KUZUSHIJI_MIRROR=http://TEACHER-LAPTOP:8000/          # before Jupyter, or in a notebook before `import helpers`

What goes in, and who asks for it:
  KMNIST in both formats, npz and MNIST idx (21 MB each): notebook 01 downloads both; 02-04, 06 and 07 read the npz files.
  Calligraphy: by default the 600 images (200 per style) notebook 05's committed run trained on, as one zip under the
    archive's name (made from the full archive, which goes into data/calligraphy/): the plan's time for 05 is for
    them. --calligraphy full serves the whole archive instead (notebook 05 on it: not measured); none, nothing.
  ImageNet weights of resnet18, resnet34 and resnet50 (about 230 MB, by torchvision's file sizes): notebook 05's
    ResNet18, and 03 and 04 on a GPU, start from them (without them: from random weights, and they say so).
  With --kkanji, Kuzushiji-Kanji's kkanji.tar (about 310 MB, no published checksum), which notebook 08 downloads:
    left out by default, as the half-day plan does not reach 08.
With KUZUSHIJI_MIRROR set, a notebook tries only the mirror, so a file missing here fails on every laptop: this
script is how TEACHING.md makes the folder, and tests/test_classroom.py runs the notebooks from what it makes.
Running it again fetches only what is missing."""
import argparse, sys
from pathlib import Path

import helpers as h

WEIGHTS = ('resnet18', 'resnet34', 'resnet50')


def build(folder, calligraphy='subset', weights=True, mirror=None, quiet=False, kkanji=False):
    "Fetch into `folder` what the notebooks download; returns the files it holds."
    folder = Path(folder)
    for fmt in ('npz', 'mnist'):  # notebook 01 downloads both formats, the others the npz files
        h.download('kmnist', fmt, dest=folder, mirror=mirror, quiet=quiet)
    if calligraphy == 'subset': h.downloads.download_subset(dest=folder, mirror=mirror, quiet=quiet)
    elif calligraphy == 'full':
        h.download_file(h.CALLIGRAPHY_ZIP, None, folder, mirror=mirror, dataset='calligraphy', quiet=quiet, timeout=60.)
    if weights: h.download_weights(WEIGHTS, dest=folder, mirror=mirror, quiet=quiet)
    if kkanji:  # the tar as served, not extracted: notebook 08 extracts its own copy
        for name, md5 in h.dataset_files('kkanji'):
            h.download_file(name, md5, folder, mirror=mirror, dataset='kkanji', quiet=quiet)
    return sorted(p for p in folder.iterdir() if p.is_file())


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0], epilog=__doc__.split('\n', 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('folder', help='the classroom folder to fill (made if missing)')
    p.add_argument('--calligraphy', choices=['subset', 'full', 'none'], default='subset',
                   help="notebook 05's 600-image subset (default), the full archive, or nothing")
    p.add_argument('--no-weights', dest='weights', action='store_false', help='leave out the ImageNet weights')
    p.add_argument('--kkanji', action='store_true', help="add Kuzushiji-Kanji's tar (about 310 MB) for notebook 08")
    p.add_argument('--mirror', help='take every file from this folder or URL (another classroom folder) instead of '
                                    f'the official hosts (or set {h.MIRROR_ENV})')
    a = p.parse_args(argv)
    try:
        files = build(a.folder, a.calligraphy, a.weights, a.mirror, kkanji=a.kkanji)
    except (h.DownloadError, ValueError) as e:
        print(f'\nerror: {e}', file=sys.stderr); return 1
    except KeyboardInterrupt:
        print('\nInterrupted: run the same command again to resume where it stopped.', file=sys.stderr); return 130
    size = sum(f.stat().st_size for f in files)
    print(f'\n{a.folder}: {len(files)} files, {size / 1e6:,.0f} MB. Serve it with\n'
          f'  python -m http.server 8000 --directory {a.folder}\n'
          f'and on every laptop, before starting Jupyter: export {h.MIRROR_ENV}=http://THIS-LAPTOP:8000/')
    return 0


if __name__ == '__main__':
    sys.exit(main())
