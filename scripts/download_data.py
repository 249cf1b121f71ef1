#!/usr/bin/env python
"""Download Kuzushiji-MNIST, Kuzushiji-49 or Kuzushiji-Kanji, verified against the official md5 checksums.

With no arguments in a terminal it asks, like the dataset's own script (github.com/rois-codh/kmnist).
Examples:
    python scripts/download_data.py --dataset kmnist --format npz
    python scripts/download_data.py --dataset kmnist --mirror /path/to/classroom/copy
    python scripts/download_data.py --list
    python scripts/download_data.py --weights resnet34 resnet18 --dest classroom/   # ImageNet weights for a mirror
    python scripts/download_data.py --dataset calligraphy --subset --dest classroom/   # notebook 05's 600 images
"""
import argparse, sys

import helpers as h


def ask(question, options):
    "The original script's menu: numbered options, repeat until a valid answer."
    print(question)
    for i, (_, text) in enumerate(options, 1): print(f'{i}) {text}')
    while True:
        a = input('> ').strip()
        if a.isdigit() and 1 <= int(a) <= len(options): return options[int(a) - 1][0]
        print(f'Please answer with a number from 1 to {len(options)}.')


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split('\n', 1)[1])
    p.add_argument('--dataset', choices=list(h.FILES))
    p.add_argument('--format', dest='fmt', choices=['npz', 'mnist'],
                   help='npz (default) or mnist (idx .gz files, kmnist only); kkanji is one tar, calligraphy one zip')
    p.add_argument('--dest', help='folder to download into (default: data/<dataset>)')
    p.add_argument('--mirror', help=f'a base URL or a local folder holding the same file names; only it is used '
                                    f'(or set {h.MIRROR_ENV})')
    p.add_argument('--list', action='store_true', help='list datasets, formats, files and checksums, then stop')
    p.add_argument('--force', action='store_true', help='download again even if a verified file is present')
    p.add_argument('--weights', nargs='+', choices=['resnet18', 'resnet34', 'resnet50'], metavar='ARCH',
                   help="torchvision's ImageNet weights for these ResNets (resnet18, resnet34, resnet50), into --dest "
                        "(default data/weights), checked by the hash in their names: serve them beside the data "
                        "as a classroom mirror, and notebooks 03-05 and train.py take them from there")
    p.add_argument('--subset', action='store_true',
                   help="calligraphy only: the 600 images (200 per style) notebook 05's committed run trained on, "
                        "made from the full archive (downloaded into data/calligraphy/) and re-encoded as that run's "
                        "copy was, as one zip under the archive's name in --dest (default data/calligraphy-subset): "
                        "serve that folder as a mirror, and notebook 05 trains on exactly those images")
    a = p.parse_args(argv)
    if a.subset and a.dataset != 'calligraphy': p.error('--subset is for --dataset calligraphy')
    if a.list:
        h.list_files(a.dataset); return 0
    if a.weights:
        try: files = h.download_weights(a.weights, dest=a.dest, mirror=a.mirror, force=a.force)
        except h.DownloadError as e:
            print(f'\nerror: {e}', file=sys.stderr); return 1
        except KeyboardInterrupt:
            print('\nInterrupted: run the same command again to resume where it stopped.', file=sys.stderr); return 130
        print(f'Done: {files[0].parent}')
        if a.dataset is None: return 0
    if a.dataset is None:
        if sys.stdin.isatty():
            a.dataset = ask('Please select the download dataset:', [(k, v) for k, v in h.DESCRIPTIONS.items()])
            if a.fmt is None and len(h.FILES[a.dataset]) > 1:
                a.fmt = ask('Please select the download format:', [(k, h.FORMATS[k]) for k in h.FILES[a.dataset]])
        else:
            a.dataset = 'kmnist'
            print('No --dataset given and no terminal to ask in: downloading kmnist (see --help).')
    fmt = a.fmt
    try:
        h.dataset_files(a.dataset, fmt)
        print(f'{h.DESCRIPTIONS[a.dataset]}, {h.FORMATS[fmt or next(iter(h.FILES[a.dataset]))]}'
              + (", only notebook 05's subset" if a.subset else ''))
        if a.subset: dest = h.downloads.download_subset(dest=a.dest, mirror=a.mirror, force=a.force)
        else: dest = h.download(a.dataset, fmt, dest=a.dest, mirror=a.mirror, force=a.force)
    except (h.DownloadError, ValueError) as e:
        print(f'\nerror: {e}', file=sys.stderr); return 1
    except KeyboardInterrupt:
        print('\nInterrupted: run the same command again to resume where it stopped.', file=sys.stderr); return 130
    print(f'Done: {dest}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
