#!/usr/bin/env python
"""Reproduce a notebook's training without Jupyter, and write what it measured to a JSON file.

    python scripts/train.py --dataset kmnist --data data/kmnist --out results/kmnist.json --preset article
    python scripts/train.py --dataset kmnist --preset cpu --wandb off        # a laptop without a GPU, <= 10 minutes
    python scripts/train.py --dataset kmnist --preset quick                   # seconds: does everything work?

Presets: article (ResNet34, bs 128, 10 epochs, one-cycle, fp16 on a GPU), cpu, quick. Any setting can be overridden."""
import argparse, sys

import helpers as h


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0], epilog=__doc__.split('\n', 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--dataset', default='kmnist', choices=['kmnist', 'k49'])
    p.add_argument('--data', help='folder holding the downloaded files (default data/<dataset>)')
    p.add_argument('--out', default='results/results.json', help='where to write the results (JSON)')
    p.add_argument('--preset', default='article', choices=list(h.PRESETS))
    p.add_argument('--arch', choices=list(h.ARCHS))
    p.add_argument('--epochs', type=int)
    p.add_argument('--bs', type=int)
    p.add_argument('--lr', help="a number, or 'auto' for lr_find with the article's rule")
    p.add_argument('--size', type=int, help='resize images to this many pixels (on the GPU); default: keep 28')
    p.add_argument('--seed', type=int)
    p.add_argument('--wandb', choices=['off', 'offline', 'online'], help='W&B logging (default offline)')
    p.add_argument('--pretrained', action=argparse.BooleanOptionalAction, help='ImageNet weights (ResNets only)')
    a = p.parse_args(argv)
    lr = a.lr if a.lr in (None, 'auto') else float(a.lr)
    cfg = h.make_config(a.dataset, a.preset, arch=a.arch, epochs=a.epochs, bs=a.bs, lr=lr, size=a.size, seed=a.seed,
                        wandb=a.wandb, pretrained=a.pretrained)
    print(f"{a.dataset}, preset {a.preset}: {cfg['arch']}, {cfg['epochs']} epochs, bs {cfg['bs']}, lr {cfg['lr']}, "
          f"on {h.device_name()}", flush=True)
    try:
        res, _ = h.run_training(cfg, a.data)
    except (FileNotFoundError, h.DataFormatError) as e:
        print(f'error: {e}', file=sys.stderr); return 1
    h.write_json(res, a.out)
    print(f"test accuracy {res['test_accuracy']:.4f}, valid accuracy {res['valid_accuracy']:.4f}, "
          f"{res['seconds']:.0f} s of training, {res['images_per_second']:,.0f} images/s. Results: {a.out}")
    return 0


if __name__ == '__main__':
    sys.exit(main())
