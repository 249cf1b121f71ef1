#!/usr/bin/env python
"""Images per second of the KMNIST DataLoaders alone (no model), for each way of building them, and of training.

    python tools/benchmark_loaders.py --data data/kmnist [--arch resnet34] [--out results/loaders.json]

With --arch it also times training steps of that model on the tensor loader: if training is far slower than the
loader alone, the GPU never waits for data.

The DataBlock way makes one PIL image per item; the tensor way slices whole batches from one tensor.
Augmentation runs on the loader's device (the GPU when there is one), so it is timed separately."""
import argparse, os, sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / 'scripts'))  # the helpers package, as the scripts use it
import helpers as h


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--data', default=None, help='folder with the KMNIST files (default data/kmnist)')
    p.add_argument('--bs', type=int, default=128)
    p.add_argument('--batches', type=int, default=50)
    p.add_argument('--arch', choices=list(h.ARCHS), help='also time training steps of this model')
    p.add_argument('--out')
    a = p.parse_args(argv)
    try:
        (x, y), _, classes = h.load_arrays(a.data)
    except (FileNotFoundError, h.DataFormatError) as e:
        print(f'error: {e}', file=sys.stderr); return 1
    res = {'device': h.device_name(), 'cpu_cores': os.cpu_count(), 'bs': a.bs, 'images_per_second': {}}
    for augment in (False, True):
        for way in ('datablock', 'tensor'):
            dl = h.kmnist_dls((x, y), classes, way=way, bs=a.bs, augment=augment).train
            n = a.batches if way == 'tensor' else max(10, a.batches // 2)  # the slow way: fewer, still after warm-up
            key = f'{way}{"+augment" if augment else ""}'
            res['images_per_second'][key] = round(h.benchmark_loader(dl, n_batches=n))
            print(f'{key:20s} {res["images_per_second"][key]:>10,} images/s', flush=True)
    if a.arch:
        dls = h.kmnist_dls((x, y), classes, bs=a.bs)
        learn = h.make_learner(dls, a.arch, pretrained=False)
        if h.use_fp16(): learn.to_fp16()
        key = f'training {a.arch}'
        res['images_per_second'][key] = round(h.training_speed(learn, n_batches=20 if h.on_gpu() else 5))
        print(f'{key:20s} {res["images_per_second"][key]:>10,} images/s (loader with augmentation: '
              f'{res["images_per_second"]["tensor+augment"]:,})', flush=True)
    print(f'on {res["device"]}, {res["cpu_cores"]} CPU cores')
    if a.out: h.write_json(res, a.out)


if __name__ == '__main__':
    sys.exit(main())
