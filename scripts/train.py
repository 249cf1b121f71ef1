#!/usr/bin/env python
"""Reproduce a notebook's training without Jupyter, and write what it measured to a JSON file.

    python scripts/train.py --dataset kmnist --data data/kmnist --out results/kmnist.json --preset article
    python scripts/train.py --dataset kmnist --preset cpu --wandb off        # a laptop without a GPU, <= 10 minutes
    python scripts/train.py --dataset kmnist                                  # auto: article on a GPU, cpu without
    python scripts/train.py --dataset kmnist --preset quick                   # seconds: does everything work?
    python scripts/train.py --dataset kmnist --preset best-cpu                # notebook 07's recipe, about 20 min on 2 cores
    python scripts/train.py --dataset kmnist --preset best --quick            # any preset's recipe, in seconds
    python scripts/train.py --dataset calligraphy --data DIR --out results/calligraphy.json   # progressive resizing
    python scripts/train.py --dataset kmnist --model models/kmnist.pkl && python scripts/app.py --kmnist models/kmnist.pkl
    python scripts/train.py --dataset kkanji --preset cpu-check               # Kuzushiji-Kanji: notebook 08's recipe
    python scripts/train.py --dataset kkanji --preset cpu                     # ... on every image: the model at work

KMNIST presets: article (ResNet34, bs 128, 10 epochs, one-cycle, fp16 on a GPU), cpu, quick; best-cpu and best
(notebook 07: best-cpu is a CNN twice as wide, 20 epochs, about 20 minutes on 2 CPU cores; best is a ResNet34 for a
GPU with mixup and test-time augmentation, 20 epochs, unmeasured); the default, auto, is article on a GPU and cpu
without one (a ResNet34 takes hours on a CPU).
Calligraphy presets: article (ResNet34, 128 px then 256 px, frozen then unfrozen), cpu, quick; --size S trains at
S then 2S pixels and --epochs sets the unfrozen epochs of each stage.
Kuzushiji-Kanji presets: cpu-check (notebook 08's CNN at 32 px and the long-tail method it chose, on the training
part of the split; reads the test set at the end), cpu (the same recipe on every image, for the model that goes to
work) and quick. cpu-check and cpu size themselves: up to 8 epochs, as many as fit in 540 s of training on this
machine, measured on its first batches (--budget 0: all 8, however long). The model exported reads kanji in the app
and predict.py, and says when it is not sure. Any setting can be overridden."""
import argparse, sys

import helpers as h


def learning_rate(s):
    "A number such as 3e-3, or 'auto'."
    if s == 'auto': return s
    try: return float(s)
    except ValueError: raise argparse.ArgumentTypeError(f"expected a number such as 3e-3, or 'auto', not {s!r}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0], epilog=__doc__.split('\n', 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--dataset', default='kmnist', choices=['kmnist', 'k49', 'calligraphy', 'kkanji'])
    p.add_argument('--data', help='folder holding the downloaded files (default data/<dataset>); for calligraphy, '
                                  'a folder of class folders (prepared once into data/cache/)')
    p.add_argument('--out', default='results/results.json', help='where to write the results (JSON)')
    p.add_argument('--model', help='where to export the trained model for scripts/app.py and scripts/predict.py '
                                   '(default models/<dataset>.pkl, models/<dataset>-quick.pkl for the quick preset, '
                                   'so a check never replaces a real model)')
    p.add_argument('--preset', default='auto', choices=['auto', *dict.fromkeys([*h.PRESETS, *h.KANJI_PRESETS])],  # calligraphy: the same names
                   help='auto (the default): article on a GPU, cpu without one')
    p.add_argument('--arch', choices=list(h.ARCHS))
    p.add_argument('--epochs', type=int)
    p.add_argument('--bs', type=int)
    p.add_argument('--lr', type=learning_rate, help="a number, or 'auto' for lr_find with the article's rule")
    p.add_argument('--size', type=int, help='KMNIST: resize the 28-pixel images to this size (on the GPU); '
                                            'calligraphy: train at SIZE, then at 2*SIZE pixels')
    p.add_argument('--seed', type=int)
    p.add_argument('--quick', action='store_true', help="KMNIST: the preset's recipe on 2,000 images for one epoch "
                                                        '(seconds): does everything work?')
    p.add_argument('--wandb', choices=['off', 'offline', 'online'], help='W&B logging (default offline)')
    p.add_argument('--pretrained', action=argparse.BooleanOptionalAction, help='ImageNet weights (ResNets only)')
    p.add_argument('--n-per-class', type=int, help='calligraphy: train on at most this many images of each style '
                                                   '(0: all of them)')
    p.add_argument('--budget', type=int, help="kkanji: seconds of network training; the preset trains as many of its "
                                              "epochs as fit in them here (0: all its epochs, however long they take)")
    a = p.parse_args(argv)
    if a.budget is not None and a.dataset != 'kkanji': p.error('--budget is for --dataset kkanji')
    if a.dataset == 'calligraphy' and a.arch == 'kmnist_cnn':
        p.error('kmnist_cnn reads 28x28 grayscale characters; for calligraphy choose a ResNet')
    if a.n_per_class is not None and a.dataset != 'calligraphy':
        p.error('--n-per-class is for --dataset calligraphy')
    if a.dataset == 'kkanji': return kanji(p, a)
    preset = h.auto_preset() if a.preset == 'auto' else a.preset
    if a.dataset == 'calligraphy' and preset not in h.CALLIGRAPHY_PRESETS:
        p.error(f"calligraphy presets are {', '.join(h.CALLIGRAPHY_PRESETS)}; {preset} is for KMNIST")
    if a.quick and a.dataset == 'calligraphy': p.error('--quick is for KMNIST; for calligraphy use --preset quick')
    common = dict(arch=a.arch, bs=a.bs, lr=a.lr, seed=a.seed, wandb=a.wandb, pretrained=a.pretrained)
    if a.dataset == 'calligraphy':
        cfg = h.make_config(a.dataset, preset, unfrozen=a.epochs, sizes=(a.size, 2 * a.size) if a.size else None,
                            n_per_class=a.n_per_class, **common)
        what = f"sizes {cfg['sizes']}, {cfg['frozen']}+{cfg['unfrozen']} epochs per stage"
    else:
        cfg = h.make_config(a.dataset, preset, quick=a.quick, epochs=a.epochs, size=a.size, **common)
        n = cfg.get('ensemble', 1)
        extras = [('brush augmentation', cfg.get('augment') == 'brush'),
                  ('thicker or thinner strokes', cfg.get('stroke')), ('random erasing', cfg.get('erase')),
                  (cfg.get('mix'), cfg.get('mix')), ('label smoothing', cfg.get('label_smoothing')),
                  ('test-time augmentation', cfg.get('tta'))]
        what = ', '.join([f"{cfg['epochs']} epochs" + (f' x {n} models (an ensemble)' if n > 1 else '')] +
                         [name for name, on in extras if on])
    if cfg['arch'] == 'kmnist_cnn' and a.pretrained:
        p.error('kmnist_cnn has no pretrained weights; --pretrained needs a ResNet (--arch resnet34)')
    chosen = f"preset {preset}" + (' (auto: ' + ('a GPU' if h.on_gpu() else 'no GPU') + ')' if a.preset == 'auto' else '')
    print(f"{a.dataset}, {chosen}: {cfg['arch']}, {what}, bs {cfg['bs']}, lr {cfg['lr']}, on {h.device_name()}",
          flush=True)
    try:
        res, learn = (h.progressive_resizing if a.dataset == 'calligraphy' else h.run_training)(cfg, a.data)
    except (FileNotFoundError, ValueError, h.DownloadError) as e:  # DataFormatError is a ValueError
        print(f'error: {e}', file=sys.stderr); return 1
    quick = preset == 'quick' or a.quick
    model = h.export(learn, a.model or h.settings.OUT_DIR / 'models' / f"{a.dataset}{'-quick' if quick else ''}.pkl")
    h.write_json({**res, 'model': str(model)}, a.out)
    score = (f"test accuracy {res['test_accuracy']:.4f}, " if res['test_accuracy'] is not None else '') + \
            f"valid accuracy {res['valid_accuracy']:.4f}" + \
            (f" with test-time augmentation (without: test {res['without_tta']['test']:.4f})" if res.get('tta') else '')
    print(f"{score}, {res['seconds']:.0f} s of training, {res['images_per_second']:,.0f} images/s. Results: {a.out}\n"
          f"Model: {model} (try it: python scripts/app.py --{'calligraphy' if a.dataset == 'calligraphy' else 'kmnist'} {model})")
    if len(res.get('members', [])) > 1:  # the app reads one model
        print(f"An ensemble: the model exported is its first member, test accuracy {res['members'][0]['test']:.4f} alone")
    return 0


def kanji(p, a):
    "`--dataset kkanji`: notebook 08's recipe, its long-tail method and reject threshold, the test set read at the end."
    preset = 'cpu' if a.preset == 'auto' else a.preset
    if preset not in h.KANJI_PRESETS: p.error(f"Kuzushiji-Kanji presets are {', '.join(h.KANJI_PRESETS)}, not {preset}")
    bad = [f'--{n}' for n in ('arch', 'n_per_class', 'pretrained') if getattr(a, n) is not None] + ['--quick'] * a.quick
    if bad: p.error(f"{', '.join(bad)}: not for --dataset kkanji (use --preset quick for a quick run)")
    cfg = h.make_config('kkanji', preset, epochs=a.epochs, bs=a.bs, lr=None if a.lr == 'auto' else a.lr, size=a.size,
                        seed=a.seed, wandb='off', budget=a.budget)
    budget = f" (at most; as many as fit in {cfg['budget']} s here)" if cfg.get('budget') else ''
    print(f"kkanji, preset {preset}: {cfg['arch']} at {cfg['size']} px, {cfg['epochs']} epochs{budget}, bs {cfg['bs']}, "
          f"lr {cfg['lr']}, then {cfg['method']}, on {h.device_name()}", flush=True)
    try: res, learn = h.run_kanji(cfg, a.data)
    except (FileNotFoundError, ValueError, h.DownloadError) as e:  # DataFormatError is a ValueError
        print(f'error: {e}', file=sys.stderr); return 1
    suffix = {'quick': '-quick', 'cpu-check': '-check'}.get(preset, '')  # a check never replaces the model at work
    model = h.export(learn, a.model or h.settings.OUT_DIR / 'models' / f'kkanji{suffix}.pkl')
    h.write_json({**res, 'model': str(model)}, a.out)
    row = lambda r: (f"top-1 {r['top1']:.2%}, top-5 {r['top5']:.2%}, balanced {r['balanced']:.2%}; by bucket: " +
                     ', '.join(f"{b} {r[b]['top1']:.2%}" for b in h.BUCKETS if r[b]['top1'] is not None))
    if res['test'] is not None:
        print(f"test, plain: {row(res['test'])}\ntest, {res['method']}: {row(res['test_method'])}")
    else: print("trained on every image: no held-out score (--preset cpu-check trains the same recipe on the training "
                "part and reads the test set)")
    print(f"{res['epochs']} epochs: {res['seconds']:.0f} s of training, {res['images_per_second']:,.0f} images/s, "
          f"{res['total_seconds']:.0f} s with the features and {res['method']} ({res['computes']}). Results: {a.out}\n"
          f"Model: {model} (try it: python scripts/app.py --kkanji {model})")
    return 0


if __name__ == '__main__':
    sys.exit(main())
