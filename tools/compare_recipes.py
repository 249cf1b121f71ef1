#!/usr/bin/env python
"""Choose between recipes on the validation set, never the test set: train a KMNIST preset and variants of it,
several seeds each, and compare their validation accuracy with the run-to-run spread of the preset itself.

    python tools/compare_recipes.py --preset cpu --seeds 42 1 2 --vary lr=1e-2 --vary label_smoothing=False \\
        --vary max_warp=0.1 --out results/cpu-preset-choice.json

Each `--vary NAME=VALUE` is one variant: the preset with that setting changed. `--set NAME=VALUE` changes the
preset itself for every run (to repeat a comparison made before the preset changed). The preset runs with every seed
in `--seeds` (their spread is the noise); each variant with `--variant-seeds` (default: the first seed). A variant
is called better or worse only when its mean differs from the preset's by more than that spread (max - min of the
preset's seeds); otherwise it is a tie, and the cheaper or simpler recipe should win. Nothing reads the test set's
labels. The results file is rewritten after every run (`complete: false` until the verdicts are in), so a long
comparison that is stopped keeps the runs it finished.

`--valid test-like` validates on the tenth of the training set that looks most like the test set, as notebook 07
does (adversarial validation: a small CNN learns to tell training from test images, which needs the test images but
not their labels), once for all runs; the default, `random`, on the preset's random slice:

    python tools/compare_recipes.py --preset best-cpu --set stroke=0.0 --valid test-like --seeds 42 1 2 \\
        --vary stroke=0.5 --variant-seeds 42 1 2 --out results/best-cpu-stroke.json

(`best-cpu` had no stroke width when that ran; notebook 07 then took it in, so `--set stroke=0.0` repeats it.)

A variant may change several settings at once: `--vary "epochs=10 ensemble=2"`. `--reuse FILE ...` takes a run from
earlier results files instead of training it again, where one was made with the same config (seed included) on the
same validation images, so a new variant can be judged against the preset's seeds without retraining them:

    python tools/compare_recipes.py --preset best-cpu --valid test-like --seeds 42 1 2 \\
        --vary "epochs=10 ensemble=2" --variant-seeds 42 1 2 --reuse results/best-cpu-stroke.json \\
        --out results/best-cpu-ensemble.json

A reused run is marked with the file it was first written to, and a file that validated on other images is skipped
with a line that says so (with `--valid test-like`, the likeness model must score alike, which holds on the same
machine and libraries). Reuse only files made by the same code: a file records the libraries' versions, not the
code. Each process times its compute mode (`helpers.cpu_settings`) and each run records it; a line says so where the
runs compared trained in more than one."""
import argparse, ast, json, statistics, sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / 'scripts'))  # the helpers package, as the scripts use it
import helpers as h


def setting(s):
    "NAME=VALUE, the value read as Python (1e-2, False, 0.1) or, failing that, as a string ('auto')."
    if '=' not in s: raise argparse.ArgumentTypeError(f'expected NAME=VALUE, such as lr=1e-2, not {s!r}')
    name, value = s.split('=', 1)
    try: value = ast.literal_eval(value)
    except (ValueError, SyntaxError): pass
    return name, value


def variant(s):
    "One variant's settings: NAME=VALUE, or several separated by spaces ('epochs=10 ensemble=2'), as a dict."
    if not s.split(): raise argparse.ArgumentTypeError('expected NAME=VALUE, such as lr=1e-2, not an empty string')
    return dict(setting(part) for part in s.split())


def label(change): return ' '.join(f'{n}={v!r}' for n, v in change.items()) or 'preset'


# Settings that presets gained after some results files were written, and the value at which a run is the same as
# one made before: a run with `stretch=0.` reuses a run from a file that had no `stretch` at all. `unfreeze=True`
# changes only ImageNet weights (`training.unfreeze_pretrained`), which no earlier KMNIST run here started from.
LATER = {'stretch': 0., 'wd': None, 'opt': None, 'unfreeze': True}


def key(cfg):
    "A run's whole config as text, without the `LATER` settings at their old value: what `--reuse` matches."
    return json.dumps({k: v for k, v in cfg.items() if not (k in LATER and v == LATER[k])}, sort_keys=True, default=str)


def read_results(files):
    """Earlier results files as `[(file, contents)]`, each checked to be one that compare_recipes.py wrote (a
    ValueError that names the file otherwise), every run with its `change`: rows written before it was recorded had
    one setting each, named NAME=VALUE. Read before any training, so that a mistyped name is found at once."""
    out = []
    for f in files:
        try:
            r = json.loads(Path(f).read_text(encoding='utf-8'))
            if not (isinstance(r.get('runs'), list) and isinstance(r.get('config'), dict)): raise TypeError
            for x in r['runs']:
                if not {'variant', 'seed', 'valid_accuracy'} <= x.keys(): raise TypeError
                if 'change' not in x: x['change'] = {} if x['variant'] == 'preset' else dict([setting(x['variant'])])
        except (OSError, ValueError) as e: raise ValueError(f'{f}: {e}') from None
        except (TypeError, AttributeError, argparse.ArgumentTypeError):
            raise ValueError(f'{f}: not a results file of compare_recipes.py (no config, or runs without variant, '
                             'seed and valid_accuracy)') from None
        out.append((f, r))
    return out


def earlier_runs(results, valid, auc):
    """The runs of `read_results`'s files that validated on the same images, keyed by their whole config (the
    file's config with the run's variant and seed on top), each marked with the file it was first written to. Says
    which files it skips, and why."""
    found, ours = {}, h.versions()
    for f, r in results:
        if r.get('valid') != valid or (valid == 'test-like' and r.get('test_like_auc') != auc):
            print(f"--reuse {f}: skipped, it validated on other images ({r.get('valid')} validation, ROC AUC "
                  f"{r.get('test_like_auc')} against {valid}, {auc})", flush=True)
            continue
        if r.get('versions', ours) != ours:
            print(f'--reuse {f}: made with other library versions ({r["versions"]}); its runs are used anyway')
        for row in r['runs']:
            found.setdefault(key({**r['config'], **row['change'], 'seed': row['seed']}),
                             {**row, 'reused_from': row.get('reused_from', str(f))})
    return found


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0], epilog=__doc__.split('\n', 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--preset', default='cpu', choices=list(h.PRESETS))
    p.add_argument('--seeds', type=int, nargs='+', default=[42, 1, 2])
    p.add_argument('--variant-seeds', type=int, nargs='+')
    p.add_argument('--vary', type=variant, action='append', default=[], metavar='NAME=VALUE',
                   help='a variant: one setting changed, or several ("epochs=10 ensemble=2")')
    p.add_argument('--set', type=setting, action='append', default=[], metavar='NAME=VALUE',
                   help='change the preset itself, for every run')
    p.add_argument('--data', help='folder holding the downloaded KMNIST files (default data/kmnist)')
    p.add_argument('--valid', choices=['random', 'test-like'], default='random',
                   help="the validation images: the preset's random slice, or the tenth most like the test set")
    p.add_argument('--quick', action='store_true', help="the preset's quick form (2,000 training images, one "
                                                        'epoch; --valid test-like still validates on 6,000): a check')
    p.add_argument('--reuse', nargs='+', default=[], metavar='FILE',
                   help='earlier results files: a run made there with the same config and validation images is '
                        'taken from there instead of trained again')
    p.add_argument('--out', default='results/compare_recipes.json')
    a = p.parse_args(argv)
    base = h.make_config('kmnist', a.preset, quick=a.quick, wandb='off')
    unknown = [n for n in [n for v in a.vary for n in v] + [n for n, _ in a.set] if n not in base]
    if any(n == 'seed' for n, _ in a.set): p.error('--set seed=... would be replaced by --seeds; give the seeds there')
    if unknown: p.error(f"unknown setting {', '.join(unknown)}; a {a.preset} config has {', '.join(base)}")
    base.update(a.set)
    if any(Path(f).resolve() == Path(a.out).resolve() for f in a.reuse):
        p.error(f'--out {a.out} is one of the --reuse files: it would be overwritten; give another --out')
    try: earlier_files = read_results(a.reuse)
    except ValueError as e: print(f'error: --reuse {e}', file=sys.stderr); return 1
    valid_idx, auc = None, None
    if a.valid == 'test-like':
        try: (x, _), (x_test, _), _ = h.load_arrays(a.data)
        except (FileNotFoundError, ValueError) as e: print(f'error: {e}', file=sys.stderr); return 1
        likeness, auc = h.test_likeness(x, x_test, epochs=1 if a.quick else 2)
        valid_idx = h.test_like_split(likeness)
        print(f'test-like validation: {len(valid_idx):,} images; training and test images told apart with '
              f'ROC AUC {auc:.3f} (0.5: alike)', flush=True)
    earlier = earlier_runs(earlier_files, a.valid, auc)
    plans = [('preset', {}, a.seeds)] + [(label(v), v, a.variant_seeds or a.seeds[:1]) for v in a.vary]
    rows, about = [], dict(preset=a.preset, set=dict(a.set), valid=a.valid, test_like_auc=auc, config=base)
    for name, change, seeds in plans:
        for seed in seeds:
            cfg = {**base, **change, 'seed': seed}
            if (hit := earlier.get(key(cfg))):
                rows.append({**hit, 'variant': name, 'change': change})
                print(f"{name:28s} seed {seed:3d}: valid {rows[-1]['valid_accuracy']:.4f}, from "
                      f"{rows[-1]['reused_from']}", flush=True)
                continue
            try: res, _ = h.run_training(cfg, a.data, log=lambda *_: None, test=False, valid_idx=valid_idx)
            except (FileNotFoundError, ValueError, h.DownloadError) as e:
                print(f'error: {e}', file=sys.stderr); return 1
            rows.append(dict(variant=name, change=change, seed=seed, valid_accuracy=res['valid_accuracy'],
                             lr=res['lr'], seconds=res['seconds'], n_train=res['n_train'], n_valid=res['n_valid'],
                             device=res['device'], computes=res['computes']))
            print(f"{name:28s} seed {seed:3d}: valid {res['valid_accuracy']:.4f}, lr {res['lr']:.2e}, "
                  f"{res['seconds']:.0f} s", flush=True)
            h.write_json(dict(about, complete=False, runs=rows), a.out)
    accs = {name: [r['valid_accuracy'] for r in rows if r['variant'] == name] for name, _, _ in plans}
    secs = {name: statistics.mean(r['seconds'] for r in rows if r['variant'] == name) for name, _, _ in plans}
    spread = max(accs['preset']) - min(accs['preset'])
    ref = statistics.mean(accs['preset'])
    print(f"\npreset {a.preset}: mean valid {ref:.4f} over {len(a.seeds)} seeds, spread (max - min) {spread:.4f}")
    summary = []
    for name, _, _ in plans[1:]:
        d = statistics.mean(accs[name]) - ref
        verdict = 'tie (within the spread)' if abs(d) <= spread else 'better' if d > 0 else 'worse'
        summary.append(dict(variant=name, mean=statistics.mean(accs[name]), difference=d, verdict=verdict,
                            seconds=secs[name]))
        print(f"{name:28s} mean valid {statistics.mean(accs[name]):.4f}: {d:+.4f} against the preset, {verdict}; "
              f"{secs[name]:.0f} s against {secs['preset']:.0f} s")
    modes = sorted({r['computes'] for r in rows if r.get('computes')})  # cpu_settings times it, once per process
    if len(modes) > 1:
        print(f"note: these runs trained in {len(modes)} compute modes ({'; '.join(modes)}), which adds to the "
              f"noise; judge with runs that share one")
    h.write_json(dict(about, complete=True, spread=spread, mean=ref, runs=rows, variants=summary,
                      versions=h.versions(), device=h.device_name()), a.out)
    print(f'Results: {a.out}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
