#!/usr/bin/env python
"""Build the static page that reads a drawn or photographed character in the browser, into one folder that any web
host serves.

    (cd web && npm ci)                      # once: ONNX Runtime Web, at the version package-lock.json pins
    python scripts/build_site.py            # web/ + web/model/ (kana) + web/model/kanji/ -> site/
    python -m http.server -d site 8000      # then open http://127.0.0.1:8000/
    python scripts/build_site.py --model DIR --kanji DIR --out DIR

The site is web/index.html, style.css, app.js, the service worker sw.js, the manifest and its icons, the exported
kana model (scripts/export_onnx.py writes web/model/) and, if there is one, the kanji model (web/model/kanji/, which
the page fetches only when kanji is chosen), and the two files of onnxruntime-web that its single-threaded
WebAssembly backend loads, copied from web/node_modules: nothing comes from a CDN or any other host, and GitHub
Pages (.github/workflows/pages.yml runs this) can serve it for free. The build's name is a hash of its files: it
goes into sw.js with the files of a first visit (the page, the runtime, the kana model), so the service worker keeps
them for offline use in a cache of that name, and a new build replaces the cache. Only Python's standard library:
no PyTorch needed to build. The copy of onnxruntime-web must be the version web/package-lock.json pins, or this
stops."""
import argparse, hashlib, json, re, shutil, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PAGE = ('index.html', 'style.css', 'app.js', 'sw.js', 'manifest.webmanifest', 'icon-192.png', 'icon-512.png')
TEXT = ('index.html', 'style.css', 'app.js', 'sw.js')  # checked for requests to other hosts
# ONNX Runtime Web's WebAssembly-only bundle (its JavaScript glue inside) and the WebAssembly it loads, plus its
# licence: all the page needs with numThreads = 1 and no WebGPU
ORT_FILES = ('ort.wasm.bundle.min.mjs', 'ort-wasm-simd-threaded.wasm')
MIT = '''MIT License

Copyright (c) Microsoft Corporation

Permission is hereby granted, free of charge, to any person obtaining a copy of this software and associated
documentation files (the "Software"), to deal in the Software without restriction, including without limitation the
rights to use, copy, modify, merge, publish, distribute, sublicense, and/or sell copies of the Software, and to permit
persons to whom the Software is furnished to do so, subject to the following conditions:

The above copyright notice and this permission notice shall be included in all copies or substantial portions of the
Software.

THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR IMPLIED, INCLUDING BUT NOT LIMITED TO THE
WARRANTIES OF MERCHANTABILITY, FITNESS FOR A PARTICULAR PURPOSE AND NONINFRINGEMENT. IN NO EVENT SHALL THE AUTHORS OR
COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM, DAMAGES OR OTHER LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR
OTHERWISE, ARISING FROM, OUT OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS IN THE SOFTWARE.
'''


class BuildError(Exception):
    "What is missing, and the command that makes it, in one sentence."


def ort_folder(web):
    "web/node_modules/onnxruntime-web, checked to be the version package-lock.json pins."
    lock = json.loads((web / 'package-lock.json').read_text(encoding='utf-8'))
    want = lock['packages']['node_modules/onnxruntime-web']['version']
    pkg = web / 'node_modules' / 'onnxruntime-web'
    if not (pkg / 'package.json').is_file():
        raise BuildError(f'No onnxruntime-web in {web}/node_modules: run `npm ci` in {web} first.')
    have = json.loads((pkg / 'package.json').read_text(encoding='utf-8'))['version']
    if have != want:
        raise BuildError(f'{web}/node_modules has onnxruntime-web {have}, package-lock.json pins {want}: run `npm ci` '
                         f'in {web} again.')
    missing = [f for f in ORT_FILES if not (pkg / 'dist' / f).is_file()]
    if missing: raise BuildError(f'onnxruntime-web {have} has no {", ".join(missing)}: this script needs updating.')
    return pkg, have


def model_files(model):
    "The files of an export (model.json and what it names), checked to be there."
    cfg_file = model / 'model.json'
    if not cfg_file.is_file():
        raise BuildError(f'No exported model in {model}: run `python scripts/export_onnx.py models/kmnist.pkl {model}`.')
    cfg = json.loads(cfg_file.read_text(encoding='utf-8'))
    files = ['model.json', 'font.css', cfg['model'], *cfg.get('fonts', []), *((cfg.get('examples') or {}).get('sheets', []))]
    missing = [f for f in files if not (model / f).is_file()]
    if missing: raise BuildError(f'{model} lacks {", ".join(missing)}: export the model again.')
    return cfg, files


def outside_requests(web):
    """Addresses on other hosts that the page's own files would load (a script, a style sheet, an import, a fetch,
    a url() in CSS). Links the reader may click (<a href>) are not requests."""
    found = []
    for name in TEXT:
        text = (web / name).read_text(encoding='utf-8')
        if name == 'index.html': text = re.sub(r'<a\s[^>]*>', '', text)
        found += [f'{name}: {u}' for u in re.findall(r'(?:https?:)?//[\w.-]+\.[a-z]{2,}[^\s\'")<]*', text)
                  if not (name.endswith('.js') and _in_comment(text, u))]
    return found


def _in_comment(js, url):
    return all(line.lstrip().startswith('//') for line in js.splitlines() if url in line)


def build(web=ROOT / 'web', model=None, out=ROOT / 'site', kanji=None):
    """Build the site into `out` (replaced); returns {'files': {path: bytes}, 'onnxruntime_web': version, 'build',
    'first_visit': the files the service worker keeps at once, ...}. `kanji`: the kanji export (default
    web/model/kanji, left out if there is none)."""
    web, out = Path(web), Path(out)
    model = Path(model) if model else web / 'model'
    kanji = Path(kanji) if kanji else (web / 'model' / 'kanji' if (web / 'model' / 'kanji' / 'model.json').is_file() else None)
    pkg, version = ort_folder(web)
    cfg, files = model_files(model)
    kanji_cfg, kanji_files = model_files(kanji) if kanji else (None, [])
    outside = outside_requests(web)
    if outside: raise BuildError(f'The page would load files from other hosts ({"; ".join(outside)}): copy them here.')
    if out.resolve() in (ROOT.resolve(), web.resolve(), model.resolve()):
        raise BuildError(f'--out {out} would replace the sources: choose an empty or build folder (default site/).')
    tmp = out.with_name(out.name + '.tmp')
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / 'model').mkdir(parents=True); (tmp / 'ort').mkdir()
    for f in PAGE: shutil.copy2(web / f, tmp / f)
    for f in files: shutil.copy2(model / f, tmp / 'model' / f)
    if kanji:
        (tmp / 'model' / 'kanji').mkdir()
        for f in kanji_files: shutil.copy2(kanji / f, tmp / 'model' / 'kanji' / f)
    for f in ORT_FILES: shutil.copy2(pkg / 'dist' / f, tmp / 'ort' / f)
    (tmp / 'ort' / 'LICENSE').write_text(f'onnxruntime-web {version} (https://github.com/microsoft/onnxruntime)\n\n'
                                         + MIT)  # the npm package ships no licence file; its bundle's header says MIT
    (tmp / '.nojekyll').write_text('')  # GitHub Pages: serve the files as they are
    # the service worker: the build's name (a hash of every file) and the files of a first visit
    first = ['./', *[f for f in PAGE if f != 'sw.js'], *(f'model/{f}' for f in files), *(f'ort/{f}' for f in ORT_FILES)]
    digest = hashlib.sha256()
    for p in sorted(tmp.rglob('*')):
        if p.is_file() and p.name != 'sw.js': digest.update(str(p.relative_to(tmp)).encode() + p.read_bytes())
    name = digest.hexdigest()[:12]
    sw = (tmp / 'sw.js').read_text(encoding='utf-8')
    sw = re.sub(r"^const BUILD = .*;$", f"const BUILD = '{name}';", sw, count=1, flags=re.M)
    sw = re.sub(r"^const FILES = .*;$", f"const FILES = {json.dumps(first)};", sw, count=1, flags=re.M)
    (tmp / 'sw.js').write_text(sw, encoding='utf-8')
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    sizes = {str(p.relative_to(out)): p.stat().st_size for p in sorted(out.rglob('*')) if p.is_file()}
    return dict(files=sizes, onnxruntime_web=version, model_bytes=cfg['bytes'], classes=len(cfg['labels']),
                kanji_bytes=kanji_cfg and kanji_cfg['bytes'], kanji_classes=kanji_cfg and len(kanji_cfg['labels']),
                build=name, first_visit=first)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0], epilog=__doc__.split('\n', 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--web', default=str(ROOT / 'web'), help="the page's sources (default web/)")
    p.add_argument('--model', help='the exported kana model folder (default web/model)')
    p.add_argument('--kanji', help='the exported kanji model folder (default web/model/kanji, if there is one)')
    p.add_argument('--out', default=str(ROOT / 'site'), help='the folder to build into, replaced (default site/)')
    a = p.parse_args(argv)
    try:
        res = build(a.web, a.model, a.out, a.kanji)
    except (BuildError, FileNotFoundError, json.JSONDecodeError, KeyError) as e:
        print(f'error: {e}', file=sys.stderr); return 1
    total = sum(res['files'].values())
    kanji = (f", kanji model {res['kanji_bytes'] / 1e3:,.0f} kB, {res['kanji_classes']:,} classes" if res['kanji_bytes']
             else ', no kanji model')
    print(f"Built {a.out}: {len(res['files'])} files, {total / 1e6:.1f} MB (kana model {res['model_bytes'] / 1e3:,.0f} kB, "
          f"{res['classes']} classes{kanji}; onnxruntime-web {res['onnxruntime_web']}; build {res['build']}).\n"
          f"Try it: python -m http.server -d {a.out} 8000, then open http://127.0.0.1:8000/")
    return 0


if __name__ == '__main__':
    sys.exit(main())
