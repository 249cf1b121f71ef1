#!/usr/bin/env python
"""Export a trained character model for the web page: ONNX, checked against fastai, with the page's labels, font
and training examples, into one folder that scripts/build_site.py turns into the site.

    python scripts/export_onnx.py models/kmnist.pkl web/model                 # then: python scripts/build_site.py
    python scripts/export_onnx.py models/kmnist.pkl web/model --check-only    # does web/model still match the model?
    python scripts/export_onnx.py models/k49.pkl web/model --dataset k49 --top 5 --examples 2
    python scripts/export_onnx.py models/kkanji.pkl web/model/kanji           # a Kuzushiji-Kanji model: 8 bits, top 5, 3 examples

The export checks itself: on 300 test images the ONNX model, run by onnxruntime, must give the fastai model's top
answer and probabilities within 1e-4; otherwise it stops with one sentence and exit status 1. A kanji model is then
stored in 8 bits (onnxruntime's quantize_dynamic), and shipped only if its top-1 on the test images stays within 0.3
points of the float model's (else one sentence; --float ships the float model). The "not sure" threshold: a kanji
model carries the one train.py chose on validation; for a kana model the export chooses it on the validation images
train.py held out (valid_pct 0.1, seed 42: the split of every KMNIST preset), the lowest top probability at which
99.9% of the answers kept are right (--sure). It needs the data the model was trained on (--data, default
data/<dataset>): test images for the checks, training images to show beside the answers. Loading a model unpickles
code: pass only model files you made or trust."""
import argparse, json, sys
from pathlib import Path

import helpers as h


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0], epilog=__doc__.split('\n', 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('model', help='a model exported by notebook 04 or scripts/train.py (e.g. models/kmnist.pkl)')
    p.add_argument('folder', help="where to write the page's model (web/model is the one the site is built from)")
    p.add_argument('--data', help='folder of the downloaded data set (default data/<dataset>)')
    p.add_argument('--dataset', choices=['kmnist', 'k49', 'kkanji'],
                   help='default: kmnist for 10 classes, k49 for 49, kkanji for a kanji model')
    p.add_argument('--top', type=int, metavar='K', help='how many answers the page shows (default 3; 5 for kanji)')
    p.add_argument('--examples', type=int, metavar='N',
                   help="training images shown per class (default: the app's 4; 0: none)")
    p.add_argument('--float', action='store_true', help='a kanji model in float (about 4 times the bytes), not 8 bits')
    p.add_argument('--sure', type=float, default=h.web.SURE_KANA, metavar='ACC',
                   help="a kana model's threshold: answers kept this often right on validation (default 0.999)")
    p.add_argument('--check-only', action='store_true', help='only check an existing export against the model')
    a = p.parse_args(argv)
    if a.top is not None and a.top < 1: p.error('--top must be at least 1')
    if a.examples is not None and a.examples < 0: p.error('--examples must be 0 or more')
    try:
        learn = h.load_model(a.model)
        dataset = a.dataset or ('kkanji' if learn.kind == 'kkanji' else 'k49' if len(learn.dls.vocab) == 49 else 'kmnist')
        top, per_class = a.top or (5 if dataset == 'kkanji' else 3), a.examples
        try:
            valid = None
            if dataset == 'kkanji':  # the training part's images beside the answers, the test part's for the check
                d = h.load_kanji(a.data, size=h.input_size(learn), log=lambda s: None)
                train, test = [(d['x'][d['part'] == i], d['y'][d['part'] == i]) for i in (0, 2)]
            else:
                train, test, _ = h.load_arrays(a.data, dataset=dataset)
                _, v = h.split_indices(len(train[0]), 0.1, 42)  # what train.py held out: never trained on
                valid = (train[0][v], train[1][v])
        except (FileNotFoundError, ValueError) as e:
            raise h.ExportError(f'No {dataset} data to check the export on ({type(e).__name__}: {e}); download it '
                                f'with `python scripts/download_data.py --dataset {dataset}` or pass --data.') from None
        if a.check_only:
            cfg_file = Path(a.folder) / 'model.json'
            if not cfg_file.is_file(): raise h.ExportError(f'No export in {a.folder}: run this without --check-only.')
            cfg = json.loads(cfg_file.read_text(encoding='utf-8'))
            if cfg.get('eight_bit'):  # the float model again, from the fastai one, then the 8-bit check
                import tempfile
                with tempfile.TemporaryDirectory() as tmp:
                    h.web.export_onnx(learn, Path(tmp) / 'float.onnx')
                    pick = h.check_sample(test[0], cfg['eight_bit']['images'])
                    res = h.check_quantized(Path(tmp) / 'float.onnx', Path(a.folder) / cfg['model'], test[0][pick],
                                            test[1][pick])
                print(f"{a.folder}/{cfg['model']} holds up for {a.model}: top-1 {res['top1']:.2%} in 8 bits against "
                      f"{res['float_top1']:.2%} in float on {res['images']:,} test images.")
                return 0
            pick = h.check_sample(test[0], cfg['check']['images'])
            res = h.check_onnx(learn, Path(a.folder) / cfg['model'], test[0][pick])
            print(f"{a.folder}/{cfg['model']} matches {a.model}: the same top answer on {res['images']} test images, "
                  f"probabilities within {res['max_difference']:.1g}.")
            return 0
        cfg = h.export_page(learn, a.folder, train, test, top=top, per_class=per_class, source=Path(a.model).name,
                            valid=valid, sure=a.sure, eight_bit=False if a.float else None)
    except h.InputError as e:  # ExportError is one
        print(f'error: {e}', file=sys.stderr); return 1
    chk, q = cfg['check'], cfg['eight_bit']
    eight = (f" In 8 bits: top-1 {q['top1']:.2%} against {q['float_top1']:.2%} in float on {q['images']:,} test images."
             if q else '')
    sure = (f" Not sure below {cfg['not_sure_below']:.2f}." if cfg['not_sure_below'] is not None else '')
    print(f"Exported {a.model} to {a.folder}: model.onnx {cfg['bytes'] / 1e3:,.0f} kB, {len(cfg['labels'])} classes, "
          f"{cfg['input']['size']}x{cfg['input']['size']} input; checked on {chk['images']} test images (the same top "
          f"answer, probabilities within {chk['max_difference']:.1g}).{eight}{sure}\n"
          f"Build the page: python scripts/build_site.py --{'kanji' if cfg['mode'] == 'kanji' else 'model'} {a.folder}  "
          f"(after `npm ci` in web/ once)")
    return 0


if __name__ == '__main__':
    sys.exit(main())
