"""The model on a static web page: a trained character model exported to ONNX for ONNX Runtime Web, checked against
fastai, with everything the page needs beside it in one folder. The page (web/, built by scripts/build_site.py)
needs no server: hosting a Gradio app on Hugging Face Spaces is no longer free, a static page on GitHub Pages is.

    export_page(learn, folder, train, test)  folder/model.onnx, model.json, font.css, examples*; checked
    check_onnx(learn, onnx_file, images)     the self-check: same top-1 and probabilities within 1e-4, or ExportError
    quantize(float_file, out_file)           8-bit weights, by onnxruntime's own quantize_dynamic
    check_quantized(float_file, q_file, x, y)  the 8-bit model's top-1 within 0.3 points of the float one's, or ExportError
    not_sure_below(onnx_file, valid)         the "not sure" threshold, chosen on validation images

The graph reads what the page's preprocessing makes, the image `kmnist_input` returns: one uint8 image, shape
(1, 1, S, S), white ink on black. The learner's validation transforms (IntToFloatTensor's /255, Normalize's mean and
std) and the softmax are inside it, so the page feeds pixels and reads probabilities, and cannot normalise with
other numbers than the learner did. The shape is fixed: ONNX Runtime plans a fixed graph once, and the page reads
one drawing at a time.
The exporter is torch.onnx.export's default in torch 2.14 (dynamo=True, from torch.export): the TorchScript one
still runs but is deprecated. It needs onnxscript and onnx (requirements.txt pins onnxscript 0.7.2, onnx 1.23.2,
onnx-ir 1.1.0: the newest on PyPI, installed and working with torch 2.14.1); the self-check needs onnxruntime,
pinned at 1.31.1, the version of the page's onnxruntime-web (web/package.json), so both run the same kernels.
model.json carries what the page's JavaScript must agree on with Python: the input size, the labels as shown, how
many answers to show, the ink level and contrast of `helpers.inference`, the canvas and brush of the Gradio app.
A kanji model (thousands of classes, 32x32) uses the same page by export alone: labels a font lacks show as their
code point, `top` says how many answers to show, `counts` how many training images each class had. Its weights
(975k: half in the last layer, 128 x 3,832) are stored in 8 bits, a quarter of the bytes (3.9 MB to 1.03 MB), by
onnxruntime's own `quantize_dynamic`; the export ships them only if the top-1 on the test images stays within 0.3
points of the float model's. Its labels' font comes in files of 256 classes that a browser fetches only for the
characters it shows (`page.font_files`), and its training examples in small sheets fetched when an answer needs them.
Below `not_sure_below` the page says it is not sure: a kanji model carries the threshold train.py chose on
validation; for a kana model the export chooses it the same way (`longtail.choose_threshold`), on the validation
images train.py held out (`valid`), for `sure` right on the answers kept.
Uses: inference, longtail, page (the labels, the font, the training examples, the canvas and brush; not Gradio)."""
from __future__ import annotations

import copy, hashlib, io, json, logging, os, warnings
from pathlib import Path

import numpy as np
import torch
from fastai.vision.augment import RandomResizedCropGPU, RandTransform, Resize
from PIL import Image

from .inference import (INK_LEVEL, MIN_CONTRAST, NOISE_SIGMAS, InputError, label_text, model_device, model_kind,
                        probabilities)
from .longtail import choose_threshold
from . import page

FORMAT = 2             # model.json's format; the page refuses another (2: mode, counts, not sure, 8 bits, photos)
N_CHECK = 300          # test images the self-check reads
TOLERANCE = 1e-4       # the largest difference in probability the self-check accepts
MAX_DROP = 0.003       # the 8-bit model's top-1 may move at most 0.3 points from the float model's
N_QUANT_CHECK = 20_000  # test images the 8-bit check reads at most (Kuzushiji-Kanji's split has 13,108 on the 32 px copy)
SURE_KANA = 0.999      # a kana model answers where its answers were 99.9% right on validation (module docstring)
FILES = ('model.onnx', 'model.json', 'font.css')  # and examples*.png or .jpg


class ExportError(InputError):
    "The export cannot be made or does not match the fastai model; the message says what to do, in one sentence."


class PageModel(torch.nn.Module):
    """The learner's model between the page's pixels and its probabilities: uint8 (1, 1, S, S) -> /255, the
    learner's Normalize, the model, softmax. Its tensors are made where the model is."""
    def __init__(self, model, div, mean, std):
        super().__init__()
        self.model, self.div, device = model, float(div), next(model.parameters()).device
        self.register_buffer('mean', torch.as_tensor(mean, dtype=torch.float32, device=device).reshape(1, -1, 1, 1))
        self.register_buffer('std', torch.as_tensor(std, dtype=torch.float32, device=device).reshape(1, -1, 1, 1))

    def forward(self, pixels):
        return self.model((pixels.float() / self.div - self.mean) / self.std).softmax(-1)


def input_size(learn):
    "The side of the square image the learner reads (28 for KMNIST), from its (empty, exported) validation set."
    x = getattr(learn.dls.valid.dataset, 'x', None)
    if x is None or x.ndim != 3 or x.shape[1] != x.shape[2]:
        raise ExportError('This model was not trained on square grayscale images held as arrays (helpers.kmnist_dls), '
                          'so its input size is unknown: export a model trained by this series on characters.')
    return int(x.shape[-1])


def page_model(learn):
    """`PageModel` for this learner, in eval mode, after reading its validation transforms: IntToFloatTensor and
    Normalize go into the graph, training-only augmentations are skipped, anything else is refused (the page could
    not reproduce it). The self-check then judges the graph against the learner's own pipeline."""
    div, mean, std = 1.0, [0.0], [1.0]
    for t in learn.dls.after_batch.fs:
        name = type(t).__name__
        # fastai's random augmentations act on training batches only (their split_idx is 0 until a test_dl resets
        # it to 1, so the class says it: RandTransform); its random crops and resizes act on validation too
        if isinstance(t, RandTransform) and not isinstance(t, (RandomResizedCropGPU, Resize)): continue
        if name == 'IntToFloatTensor': div = float(t.div)
        elif name == 'Normalize': mean, std = t.mean.flatten().tolist(), t.std.flatten().tolist()
        else: raise ExportError(f'The validation transform {name} cannot go into the page\'s graph: export a model '
                                f'whose validation transforms are only IntToFloatTensor and Normalize.')
    return PageModel(learn.model, div, mean, std).eval(), dict(div=div, mean=mean, std=std)


def export_onnx(learn, path):
    """The learner as a fixed-shape ONNX graph (uint8 pixels in, probabilities out) at `path`; returns the bytes. A model
    on a GPU is exported from a CPU copy (the page runs on a CPU), and the learner's own model stays where it is."""
    size = input_size(learn)
    wrapper, _ = page_model(learn)
    if model_device(learn).type != 'cpu': wrapper = copy.deepcopy(wrapper).cpu()
    example = torch.zeros(1, 1, size, size, dtype=torch.uint8)
    path = Path(path); path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter('ignore')  # the exporter's own progress notes and deprecations of torch internals
        program = torch.onnx.export(wrapper, (example,), dynamo=True, input_names=['pixels'],
                                    output_names=['probabilities'], verbose=False)
        tmp = path.with_name(path.name + '.tmp')
        program.save(tmp)
    os.replace(tmp, path)
    return path.stat().st_size


def onnx_probabilities(onnx_file, images):
    "Run the exported graph with onnxruntime (CPU, one thread: as the page does) on uint8 images (N, S, S)."
    import onnxruntime as ort
    opts = ort.SessionOptions(); opts.intra_op_num_threads = opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(str(onnx_file), opts, providers=['CPUExecutionProvider'])
    name = sess.get_inputs()[0].name
    return np.concatenate([sess.run(None, {name: np.asarray(a, np.uint8)[None, None]})[0] for a in images])


def check_onnx(learn, onnx_file, images, tol=TOLERANCE):
    """The self-check: on `images` (uint8, N x S x S), the ONNX graph run by onnxruntime must give the fastai
    model's top-1 (`helpers.probabilities`, through the learner's own transforms) and probabilities within `tol`.
    A tie (the fastai model's top two closer than `tol`) may go either way. Returns {'images', 'max_difference'};
    raises ExportError with one sentence otherwise."""
    images = np.asarray(images, np.uint8)
    want = probabilities(learn, list(images))
    try:
        got = onnx_probabilities(onnx_file, images)
    except Exception as e:  # a damaged or foreign file: onnxruntime's errors are many and long
        raise ExportError(f'{onnx_file} cannot be run by onnxruntime ({type(e).__name__}): export the model again.') from None
    if got.shape != want.shape:
        raise ExportError(f'{onnx_file} gives {got.shape[-1]} probabilities per image but the model has '
                          f'{want.shape[-1]} classes: it was exported from another model; export this one again.')
    diff = float(np.abs(got - want).max())
    top2 = np.sort(want, 1)[:, -2:]
    wrong = int(((got.argmax(1) != want.argmax(1)) & (top2[:, 1] - top2[:, 0] > tol)).sum())
    if wrong or not diff <= tol:
        raise ExportError(f'{onnx_file} does not match the fastai model: on {len(images)} test images the top answer '
                          f'differs for {wrong} and probabilities by up to {diff:.2g} (allowed {tol:g}); export the '
                          f'model again, and do not edit the file.')
    return dict(images=len(images), max_difference=diff)


def quantize(float_file, out_file):
    """The model with 8-bit weights, by onnxruntime's own `quantize_dynamic` (convolutions, MatMul and Gemm; weights
    uint8 per output channel, activations quantized on the fly), at `out_file`; returns its bytes."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic
    out_file = Path(out_file); tmp = out_file.with_name(out_file.name + '.tmp')
    m = onnx.load(float_file)
    del m.graph.value_info[:]  # the exporter's intermediate shapes: quantize_dynamic infers its own, and they disagree
    for node in m.graph.node: del node.metadata_props[:]  # the exporter's notes: stack traces with this machine's paths
    logging.disable(logging.WARNING)  # its advice, logged, to pre-process the model first: the graph is fixed and small
    try:
        quantize_dynamic(m, str(tmp), op_types_to_quantize=['Conv', 'MatMul', 'Gemm'], per_channel=True,
                         weight_type=QuantType.QUInt8)  # ConvInteger takes uint8 weights
    finally: logging.disable(logging.NOTSET)
    os.replace(tmp, out_file)
    return out_file.stat().st_size


def check_quantized(float_file, q_file, images, labels, max_drop=MAX_DROP):
    """The 8-bit check: on `images` with their `labels`, the 8-bit model's top-1 accuracy must stay within
    `max_drop` (0.3 points) of the float model's, both run by onnxruntime. Returns {'images', 'float_top1',
    'top1', 'agreement'}; raises ExportError with one sentence otherwise."""
    labels = np.asarray(labels)
    want = onnx_probabilities(float_file, images).argmax(1)
    try:
        got = onnx_probabilities(q_file, images).argmax(1)
    except Exception as e:  # a damaged file: onnxruntime's errors are many and long
        raise ExportError(f'{q_file} cannot be run by onnxruntime ({type(e).__name__}): export the model again.') from None
    a, b = float((want == labels).mean()), float((got == labels).mean())
    if not abs(a - b) <= max_drop:
        raise ExportError(f'The 8-bit model reads {b:.2%} of {len(labels):,} test images right against the float '
                          f"model's {a:.2%}, more than {max_drop:.1%} apart: it is not shipped (export with "
                          f'--float to ship the float model).')
    return dict(images=len(labels), float_top1=a, top1=b, agreement=float((want == got).mean()))


def not_sure_below(onnx_file, valid, accuracy=SURE_KANA):
    """The page's "not sure" threshold for a model without one: `longtail.choose_threshold`, the lowest top
    probability at which the answers kept are `accuracy` right on the validation images `valid` ((x, y), never
    trained on), as train.py chooses a kanji model's. Returns the threshold and how it was chosen, for model.json."""
    x, y = valid
    th, coverage, kept = choose_threshold(onnx_probabilities(onnx_file, x), np.asarray(y), accuracy)
    return th, dict(rule=f'longtail.choose_threshold: the lowest top probability at which the answers kept are '
                         f'{accuracy:.1%} right on validation', images=len(y), answered=coverage,
                right=None if np.isnan(kept) else kept)  # None: no confidence reaches it (JSON has no NaN)


def check_sample(x, n=N_CHECK, seed=0):
    "The indices of the test images the self-check reads: a seeded sample of `n`, sorted, the same on every check."
    return np.sort(np.random.default_rng(seed).choice(len(x), min(n, len(x)), replace=False))


def export_page(learn, folder, train=None, test=None, top=3, per_class=None, n_check=N_CHECK, source=None,
                valid=None, sure=SURE_KANA, eight_bit=None):
    """Everything the page needs from a learner, written to `folder`: model.onnx (checked with `check_onnx` on
    `n_check` images of `test`, a seeded sample; for a kanji model, or with `eight_bit=True`, then stored in 8 bits
    and checked with `check_quantized` on up to N_QUANT_CHECK test images), model.json, font.css (the subset font for
    its labels, as the Gradio app makes it) and examples sheets (`per_class` training images of each class from
    `train`, as the app picks them, by default as many as the app shows; none without `train` or with 0). `train`,
    `test` and `valid` are `(x, y)` arrays; `valid` (images the model never trained on) chooses the "not sure"
    threshold of a model that carries none (`not_sure_below`, for `sure` right). Returns the model.json dict."""
    kind = model_kind(learn)
    if kind == 'calligraphy':
        raise ExportError('The page reads drawn characters; a calligraphy model reads photos: export a KMNIST model.')
    if test is None or not len(test[0]):
        raise ExportError('The export checks itself on test images: pass the data folder (--data data/kmnist; '
                          'python scripts/download_data.py --dataset kmnist downloads it).')
    folder = Path(folder); folder.mkdir(parents=True, exist_ok=True)
    size, vocab = input_size(learn), [str(c) for c in learn.dls.vocab]
    x = np.asarray(test[0], np.uint8)
    if x.shape[1:] != (size, size):
        raise ExportError(f'The test images are {x.shape[1]}x{x.shape[2]} but the model reads {size}x{size}: pass the '
                          f'data the model was trained on.')
    kanji, info = kind == 'kkanji', getattr(learn, 'long_tail', None) or {}
    eight_bit = kanji if eight_bit is None else eight_bit
    onnx_file = folder / ('model-float.onnx' if eight_bit else 'model.onnx')
    export_onnx(learn, onnx_file)
    check = check_onnx(learn, onnx_file, x[check_sample(x, n_check)])
    if info.get('reject_below') is not None:
        threshold, how = float(info['reject_below']), dict(rule='train.py chose it on validation (notebook 08): the '
                                                                 'lowest top probability at which the answers kept are '
                                                                 '95% right', method=info.get('method'))
    elif valid is not None and len(valid[0]): threshold, how = not_sure_below(onnx_file, valid, sure)
    else: threshold, how = None, None
    quantized = None
    if eight_bit:
        quantize(onnx_file, folder / 'model.onnx')
        pick = check_sample(x, N_QUANT_CHECK)
        try: quantized = check_quantized(onnx_file, folder / 'model.onnx', x[pick], np.asarray(test[1])[pick])
        except ExportError:
            (folder / 'model.onnx').unlink(); raise  # nothing half-made left to look like an export
        finally: onnx_file.unlink()
        quantized.update(method='onnxruntime.quantization.quantize_dynamic: Conv, MatMul and Gemm weights uint8 per channel',
                         max_drop=MAX_DROP)
    _, norm = page_model(learn)
    shown = page.page_labels(vocab)
    (folder / 'font.css').write_text(
        '/* The page\'s font for its Japanese labels: a subset of IPAexGothic (IPA Font License v1.0), made by '
        'helpers.web.export_page */\n' + (page.font_files(shown, folder) if kanji else page.font_css(' '.join(shown))),
        encoding='utf-8')
    for old in folder.glob('examples*.png'): old.unlink()
    per_class = (page.KANJI_EXAMPLES if kanji else page.N_EXAMPLES) if per_class is None else per_class
    examples = page.training_examples(vocab, train, per_class) if train is not None and per_class else None
    if kanji and train is not None and per_class:  # a rare kanji has fewer than `per_class`: up to that many
        examples = {c: train[0][np.flatnonzero(train[1] == i)[:per_class]] for i, c in enumerate(vocab)
                    if (train[1] == i).any()}
    side = page.KANJI_EXAMPLE_SIDE if kanji else size
    sheets = []
    if examples:
        for i, img in enumerate(page.example_sheets(examples, vocab, side, per_class, 16 if kanji else 256)):
            sheets.append(f'examples{i if i else ""}.png'); (folder / sheets[-1]).write_bytes(img)
    counts = info.get('counts') or (np.bincount(np.asarray(train[1]), minlength=len(vocab)).tolist()
                                     if train is not None else None)
    n_bytes = (folder / 'model.onnx').stat().st_size
    fonts = sorted((p.name for p in folder.glob('font-*.woff2')), key=lambda n: int(n[5:-6])) if kanji else []
    cfg = dict(format=FORMAT, mode='kanji' if kanji else 'kana', model='model.onnx', bytes=n_bytes,
               sha256=hashlib.sha256((folder / 'model.onnx').read_bytes()).hexdigest(),
               input=dict(name='pixels', size=size, dtype='uint8', layout='1x1xSxS, white ink on black'),
               output='probabilities', labels=vocab, shown=shown, top=min(int(top), len(vocab)), counts=counts,
               not_sure_below=threshold, not_sure=how, fonts=fonts,
               ink_level=INK_LEVEL, min_contrast=MIN_CONTRAST, noise_sigmas=NOISE_SIGMAS, canvas=page.CANVAS,
               brush=page.KANJI_BRUSH if kanji else page.BRUSH,
               normalisation=dict(norm, note='inside the graph: the page feeds uint8 pixels'),
               examples=dict(sheets=sheets, size=side, per_class=per_class, rows_per_sheet=page.ROWS_PER_SHEET,
                             missing=[c for c in vocab if c not in examples],
                             shown=[len(examples.get(c, ())) for c in vocab]) if examples else None,
               check=dict(check, tolerance=TOLERANCE, onnxruntime=_version('onnxruntime')), eight_bit=quantized,
               source=source, versions=dict(torch=torch.__version__, onnx=_version('onnx'),
                                            onnxscript=_version('onnxscript')))
    (folder / 'model.json').write_text(json.dumps(cfg, indent=1, ensure_ascii=False) + '\n', encoding='utf-8')
    return cfg


def _version(package):
    from importlib.metadata import version
    return version(package)
