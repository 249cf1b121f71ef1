#!/usr/bin/env python
"""Read image files with a trained model: the app's preprocessing and model, from the command line.

    python scripts/predict.py models/kmnist.pkl drawing.png photo_of_paper.jpg   # top 3 for each file
    python scripts/predict.py models/calligraphy.pkl photo.jpg --top 1
    python scripts/predict.py models/kmnist.pkl *.png --json > predictions.json
    python scripts/predict.py models/kkanji.pkl kanji.png --top 5               # a Kuzushiji-Kanji model (notebook 08)

Any image works: a photo of a character written on paper, a drawing saved from the app, an original KMNIST image
(28x28, white on black). With --json, standard output holds only a JSON list, one object per file in the order
given: {"file", "predictions": [{"label", "probability"}, ...best first]} or {"file", "error"}; labels are the
characters themselves. A Kuzushiji-Kanji model also says whether it is sure: "sure" is false when its best answer's
probability is below the threshold notebook 08 chose on validation. Messages go to standard error. The exit status is 1 if any file could not be read (the others are still predicted).
Loading a model unpickles code: pass only model files you made or trust."""
import argparse, json, sys

import helpers as h


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0], epilog=__doc__.split('\n', 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('model', help='a model exported by notebook 04/05 or scripts/train.py (e.g. models/kmnist.pkl)')
    p.add_argument('images', nargs='+', metavar='IMAGE', help='image files to read')
    p.add_argument('--top', type=int, default=3, metavar='K', help='how many classes to give per file (default 3)')
    p.add_argument('--json', action='store_true', help='print only a JSON list on standard output')
    a = p.parse_args(argv)
    if a.top < 1: p.error('--top must be at least 1')
    try:
        name = a.model.lower()
        learn = h.load_model(a.model, 'calligraphy' if 'callig' in name else 'kkanji' if 'kanji' in name else 'kmnist')
    except h.InputError as e:
        print(f'error: {e}', file=sys.stderr); return 2
    results = h.predict_files(learn, a.images, a.top)
    below = (getattr(learn, 'long_tail', None) or {}).get('reject_below')
    if below is not None:
        for r in results:
            if 'predictions' in r: r['sure'] = r['predictions'][0]['probability'] >= below
    if a.json:
        print(json.dumps(results, ensure_ascii=False, indent=1))
    for r in results:
        if 'error' in r: print(f"error: {r['error']}", file=sys.stderr)
        elif not a.json:
            print(f"{r['file']}: " + ('not sure: ' if r.get('sure') is False else '') +
                  ', '.join(f"{h.label_text(q['label'])} {q['probability']:.2f}" for q in r['predictions']))
    return 1 if any('error' in r for r in results) else 0


if __name__ == '__main__':
    sys.exit(main())
