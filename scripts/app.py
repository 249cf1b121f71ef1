#!/usr/bin/env python
"""The web app: draw a character and watch a KMNIST model read it; upload a calligraphy photo and read its style;
draw a kanji and watch a Kuzushiji-Kanji model read it, or say it is not sure.

    python scripts/app.py                                         # the models notebooks 04, 05 and 08 exported
    python scripts/app.py --kmnist models/kmnist.pkl              # a model from scripts/train.py
    python scripts/app.py --calligraphy models/calligraphy.pkl --port 7861
    python scripts/app.py --kkanji models/kkanji.pkl              # a Kuzushiji-Kanji model (notebook 08, train.py)
    python scripts/app.py --host 0.0.0.0                          # reachable from other machines on your network
    python scripts/app.py --share                                 # a temporary public link through Gradio's servers

It serves on 127.0.0.1 (this computer only) unless told otherwise, and needs no internet.
Loading a model unpickles code: pass only model files you made or trust."""
import argparse, sys

import torch

import helpers as h
import helpers.app  # noqa: F401  (the web app; loads Gradio)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0], epilog=__doc__.split('\n', 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--kmnist', metavar='MODEL', help='a KMNIST model exported by notebook 04 or scripts/train.py '
                                                     '(default models/kmnist.pkl, if it exists)')
    p.add_argument('--calligraphy', metavar='MODEL', help='a calligraphy model exported by notebook 05 or '
                                                          'scripts/train.py (default models/calligraphy.pkl, if it exists)')
    p.add_argument('--kkanji', metavar='MODEL', help='a Kuzushiji-Kanji model exported by notebook 08 or scripts/train.py '
                                                    '(default models/kkanji.pkl, if it exists)')
    p.add_argument('--host', default='127.0.0.1', help='address to serve on (default 127.0.0.1: this computer only)')
    p.add_argument('--port', type=int, help='port (default: the first free one from 7860)')
    p.add_argument('--share', action='store_true', help="also make a temporary public link through Gradio's servers")
    p.add_argument('--threads', type=int, default=1, help='PyTorch threads per prediction (default 1: one image is '
                   'too small to share out, and requests from several users then run side by side)')
    a = p.parse_args(argv)
    torch.set_num_threads(max(1, a.threads))
    models = {k: getattr(a, k) or h.settings.OUT_DIR / 'models' / f'{k}.pkl' for k in ('kmnist', 'calligraphy', 'kkanji')}
    named = {k for k in models if getattr(a, k)}
    learners = {}
    try:
        for kind, path in models.items():
            if kind in named or path.is_file():  # a default that does not exist is simply left out
                learners[kind] = h.load_model(path, kind)
    except h.InputError as e:
        print(f'error: {e}', file=sys.stderr); return 1
    if not learners:
        print(f"error: no model found at {models['kmnist']}, {models['calligraphy']} or {models['kkanji']}: make one "
              f"with `{h.COMMANDS['kmnist']}`, or pass --kmnist MODEL / --calligraphy MODEL / --kkanji MODEL.",
              file=sys.stderr)
        return 1
    for kind, learn in learners.items():
        if learn.kind != kind:
            print(f'error: {models[kind]} reads {learn.kind}, not {kind}: pass it as --{learn.kind}.', file=sys.stderr)
            return 1
    demo = h.app.build_app(learners.get('kmnist'), learners.get('calligraphy'), kkanji=learners.get('kkanji'))
    print(f"Models: {', '.join(f'{k} from {models[k]}' for k in learners)}. Press Ctrl+C to stop.", flush=True)
    h.app.launch(demo, host=a.host, port=a.port, share=a.share)
    return 0


if __name__ == '__main__':
    sys.exit(main())
