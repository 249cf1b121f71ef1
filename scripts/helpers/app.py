"""The web app: Gradio Blocks around the inference helpers. Draw a character and read it (KMNIST model), or upload
a calligraphy photo and read its style (calligraphy model). Works with no internet at all: Gradio 6.17 and later
serve their own scripts and fonts, analytics are off, and a public share link is made only when asked for.

The canvas: 400x400, black ink, a brush 34 px wide. KMNIST's strokes are about 3 px wide in a frame the character
fills (measured on the test set: 3.0 px, median over images), so 11% of the character's size; a character drawn
across 80% of the canvas, as the page asks, gets strokes of that proportion. The page starts with the brush in hand
(Gradio's sketchpad otherwise waits for a click on its brush tool).

A photo of one character (uploaded, from the camera, or pasted) is read in both character tabs, with the same
preparation as a drawing (`inference.char_input`): the static page (web/app.js) follows the same steps.

Beside its answer the app shows a few training images of each of its top classes: what the model learned that
character from, the classical forms (hentaigana included) that share one modern label. So a learner who draws a
modern は sees the brush forms the model also reads as は, and can check the model, as KuLA shows example images per
character. They are picked once, when the app starts, from the KMNIST files the learner downloaded.

A Kuzushiji-Kanji model (notebook 08) gets a tab of its own: its top 5, and beside each a few of its training images
and how many it learned that kanji from, so a learner sees when an answer rests on a single example; below the
confidence notebook 08 chose on validation, it says it is not sure. Its brush is a little thinner: kanji strokes are
8.8% of the frame, KMNIST's 9.5% (RESEARCH.md, "The app's brush for kanji"). What the page shows beside the Gradio parts (the font,
the PNG images, the training examples) is in `page`, which the static web page shares. Uses: inference, page."""
from __future__ import annotations

import os

os.environ.setdefault('GRADIO_ANALYTICS_ENABLED', 'False')  # before gradio is imported: no telemetry, no update check
import gradio as gr  # noqa: E402

from .inference import InputError, NoInk, label_text, predict  # noqa: E402
from .page import (BRUSH, CANVAS, EXAMPLE_SIZE, KANJI_BRUSH, N_EXAMPLES, N_KANJI_EXAMPLES, PAGE_FONT,  # noqa: E402,F401
                   SEEN_SCALE, SEEN_SIZE, THEME_FONTS, as_label, example_html, font_css, kanji_example_html,
                   kanji_examples, png_base64, seen_image, training_examples)

N_KANJI = 5  # the kanji tab's answers
EMPTY = 'Nothing to read yet: draw a character on the canvas, then press **Read it**.'
NO_PHOTO = 'No photo yet: take or upload a photo of one character, dark ink on light paper, then press **Read the photo**.'
NO_INK = 'There is no ink on this picture: take or upload a photo of one character, dark ink on light paper.'
# Take the sketchpad's brush tool once the page has loaded, after every Clear (which puts it down again) and when its
# tab is opened, so that the first stroke draws: retried until the button exists and is highlighted.
SELECT_BRUSH = """() => { const pick = (n) => {
  const b = document.querySelector('#%s button[aria-label="Brush"]');
  if (b && b.classList.contains('highlight')) return;
  if (b) b.click();
  if (n > 0) setTimeout(() => pick(n - 1), 200); }; setTimeout(() => pick(25), 100); }"""
# Clear with the sketchpad's own "Clear canvas" tool, then take the brush again. (Resetting the component's value
# from Python, as gr.ClearButton does, blanked the canvas but let strokes drawn soon after bring old ones back.)
CLEAR_CANVAS = """() => { document.querySelector('#%s button[aria-label="Clear canvas"]')?.click();
  (%s)(); }"""


def select_brush(pad): return SELECT_BRUSH % pad
def clear_canvas(pad): return CLEAR_CANVAS % (pad, select_brush(pad))


def read_drawing(learn, editor, k=3, examples=None, photo=False):
    """Gradio handler for the sketchpad, or with `photo=True` for a photo of one character (the same preparation,
    `char_input`): (label dict, the 28x28 image the model saw, message, training examples of the top classes as
    HTML; `examples` as `example_html` takes them). An empty canvas, or a photo with no ink, gives no prediction and
    a message saying what to do."""
    img = editor.get('composite') if isinstance(editor, dict) else editor
    if img is None: return None, None, NO_PHOTO if photo else EMPTY, ''
    try:
        preds, x = predict(learn, img, k)
    except InputError as e:
        return None, None, (NO_INK if photo else EMPTY) if isinstance(e, NoInk) else str(e), ''
    best = preds[0]
    return (as_label(preds), seen_image(x), f"Read as **{label_text(best['label'])}**, probability {best['probability']:.2f}.",
            example_html(examples, preds))


def read_photo(learn, img, k=3):
    "Gradio handler for an uploaded photo: (label dict, message)."
    if img is None: return None, 'Upload a photo of calligraphy (one or a few characters), then press **Read it**.'
    try:
        preds, _ = predict(learn, img, k)
    except InputError as e:
        return None, str(e)
    best = preds[0]
    return as_label(preds), f"Read as **{label_text(best['label'])}**, probability {best['probability']:.2f}."


def read_kanji(learn, editor, k=N_KANJI, examples=None, photo=False):
    """Gradio handler for the kanji sketchpad, or a photo with `photo=True`: (label dict, the 32x32 image the model
    saw, message, training images and counts of the top classes as HTML). Below the confidence chosen on validation
    (`learn.long_tail`) the message says the model is not sure, and gives its best guess."""
    img = editor.get('composite') if isinstance(editor, dict) else editor
    if img is None: return None, None, NO_PHOTO if photo else EMPTY, ''
    try:
        preds, x = predict(learn, img, k)
    except InputError as e:
        return None, None, (NO_INK if photo else EMPTY) if isinstance(e, NoInk) else str(e), ''
    info = getattr(learn, 'long_tail', None) or {}
    counts = dict(zip(map(str, learn.dls.vocab), info.get('counts', [])))
    best, below = preds[0], info.get('reject_below')
    if below is not None and best['probability'] < below:
        msg = (f"**Not sure.** Its best guess is {label_text(best['label'])}, probability {best['probability']:.2f}: "
               f"below the {below:.2f} it needs to answer (chosen on validation, notebook 08).")
    else: msg = f"Read as **{label_text(best['label'])}**, probability {best['probability']:.2f}."
    return as_label(preds), seen_image(x), msg, kanji_example_html(examples, preds, counts)


def photo_input(elem_id):
    """A photo of one character: uploaded, from the camera or pasted; read with the same preparation as a drawing
    (`helpers.inference.char_input`: polarity from the border, the paper's grain left out, cut to the ink, fitted)."""
    return gr.Image(type='pil', image_mode=None, sources=['upload', 'webcam', 'clipboard'], height=220,
                    label='Or a photo of one character (dark ink on light paper)', elem_id=elem_id)


def build_app(kmnist=None, calligraphy=None, k=3, examples='auto', kkanji=None, kanji_examples_='auto'):
    """The app as a `gr.Blocks`: a Draw tab for a KMNIST learner, an Upload tab for a calligraphy learner and a Kanji
    tab for a Kuzushiji-Kanji learner (any may be None). API names for gradio_client: /read_drawing, /read_photo,
    /read_kanji, and for a photo of one character /read_char_photo and /read_kanji_photo. `examples`: the training images shown beside an answer (`training_examples`); 'auto' picks them from
    data/kmnist, None shows none; `kanji_examples_` the same for kanji (`kanji_examples`, from data/kkanji)."""
    if kmnist is None and calligraphy is None and kkanji is None:
        raise ValueError('build_app needs a KMNIST, a calligraphy or a Kuzushiji-Kanji model')
    if isinstance(examples, str): examples = training_examples(list(kmnist.dls.vocab)) if kmnist is not None else None
    if isinstance(kanji_examples_, str):
        kanji_examples_ = kanji_examples(list(map(str, kkanji.dls.vocab))) if kkanji is not None else None
    if examples: examples = {c: [png_base64(img) for img in imgs] for c, imgs in examples.items()}  # once, not per answer
    with gr.Blocks(title='Read Kuzushiji and calligraphy', analytics_enabled=False) as demo:
        gr.Markdown('# Put the model to work\nA model trained in this series reads what you give it. It runs on this '
                    'computer: nothing leaves it.')
        with gr.Tabs():
            if kmnist is not None:
                with gr.Tab('Draw a character', id='draw'):
                    gr.Markdown('Draw one hiragana character **big**, across most of the square, with the mouse or a '
                                'finger, then press **Read it**. The model knows ten: ' +
                                ', '.join(label_text(c) for c in kmnist.dls.vocab) + '.')
                    with gr.Row():
                        pad = gr.Sketchpad(canvas_size=(CANVAS, CANVAS), fixed_canvas=True, image_mode='RGBA',
                                           type='numpy', layers=False, transforms=(), label='Your drawing',
                                           brush=gr.Brush(default_size=BRUSH // 2, colors=['#000000'],
                                                          color_mode='fixed'),
                                           elem_id='drawing')
                        with gr.Column():
                            label = gr.Label(num_top_classes=k, label='Top 3', elem_id='drawing-label')
                            seen = gr.Image(label='What the model saw (28x28)', height=SEEN_SIZE + 40, format='png',
                                            interactive=False, elem_id='drawing-seen')
                            msg = gr.Markdown(EMPTY, elem_id='drawing-message')
                    with gr.Row():
                        go = gr.Button('Read it', variant='primary', elem_id='drawing-read')
                        clear = gr.Button('Clear', elem_id='drawing-clear')
                    gallery = gr.HTML('', visible=bool(examples), elem_id='drawing-examples')
                    if not examples:
                        gr.Markdown('*No training images here to show beside the answer: download KMNIST with '
                                    '`python scripts/download_data.py --dataset kmnist` and start the app again.*')
                    clear.click(lambda: (None, None, EMPTY, ''), None, [label, seen, msg, gallery], queue=False,
                                api_visibility='private', js=clear_canvas('drawing'))
                    def read_pad(drawing): return read_drawing(kmnist, drawing, k, examples)  # gradio_client shows the name
                    go.click(read_pad, pad, [label, seen, msg, gallery], api_name='read_drawing')
                    shot = photo_input('drawing-photo')
                    def read_char_photo(photo): return read_drawing(kmnist, photo, k, examples, photo=True)
                    gr.Button('Read the photo', elem_id='drawing-photo-read').click(
                        read_char_photo, shot, [label, seen, msg, gallery], api_name='read_char_photo')
            if calligraphy is not None:
                with gr.Tab('Upload calligraphy', id='upload'):
                    gr.Markdown('Upload a photo of Chinese calligraphy to read its style: 楷书 kaishu (regular script), '
                                '隶书 lishu (clerical script) or 小篆 xiaozhuan (small seal script).')
                    with gr.Row():
                        photo = gr.Image(type='pil', image_mode=None, sources=['upload', 'clipboard'], label='Photo',
                                         elem_id='photo')
                        with gr.Column():
                            plabel = gr.Label(num_top_classes=k, label='Style', elem_id='photo-label')
                            pmsg = gr.Markdown('', elem_id='photo-message')
                    def read_upload(photo): return read_photo(calligraphy, photo, k)
                    gr.Button('Read it', variant='primary', elem_id='photo-read').click(
                        read_upload, photo, [plabel, pmsg], api_name='read_photo')
            if kkanji is not None:
                with gr.Tab('Draw a kanji', id='kanji') as kanji_tab:
                    gr.Markdown(f'Draw one kanji **big**, across most of the square, then press **Read it**. The model '
                                f'knows {len(kkanji.dls.vocab):,} kanji, most of them from very few examples: beside each '
                                f'of its top {N_KANJI} answers it shows how many training images it had, and when it is '
                                f'not confident enough it says so.')
                    with gr.Row():
                        kpad = gr.Sketchpad(canvas_size=(CANVAS, CANVAS), fixed_canvas=True, image_mode='RGBA',
                                            type='numpy', layers=False, transforms=(), label='Your drawing',
                                            brush=gr.Brush(default_size=KANJI_BRUSH // 2, colors=['#000000'],
                                                           color_mode='fixed'),
                                            elem_id='kanji-drawing')
                        with gr.Column():
                            klabel = gr.Label(num_top_classes=N_KANJI, label=f'Top {N_KANJI}', elem_id='kanji-label')
                            kseen = gr.Image(label='What the model saw', height=32 * SEEN_SCALE + 40, format='png',
                                             interactive=False, elem_id='kanji-seen')
                            kmsg = gr.Markdown(EMPTY, elem_id='kanji-message')
                    with gr.Row():
                        kgo = gr.Button('Read it', variant='primary', elem_id='kanji-read')
                        kclear = gr.Button('Clear', elem_id='kanji-clear')
                    kgallery = gr.HTML('', elem_id='kanji-examples')
                    if not kanji_examples_:
                        gr.Markdown('*No training images here to show beside the answer: download Kuzushiji-Kanji '
                                    'with `python scripts/download_data.py --dataset kkanji` and start the app again.*')
                    kclear.click(lambda: (None, None, EMPTY, ''), None, [klabel, kseen, kmsg, kgallery], queue=False,
                                 api_visibility='private', js=clear_canvas('kanji-drawing'))
                    def read_kanji_pad(drawing): return read_kanji(kkanji, drawing, N_KANJI, kanji_examples_)
                    kgo.click(read_kanji_pad, kpad, [klabel, kseen, kmsg, kgallery], api_name='read_kanji')
                    kshot = photo_input('kanji-photo')
                    def read_kanji_photo(photo): return read_kanji(kkanji, photo, N_KANJI, kanji_examples_, photo=True)
                    gr.Button('Read the photo', elem_id='kanji-photo-read').click(
                        read_kanji_photo, kshot, [klabel, kseen, kmsg, kgallery], api_name='read_kanji_photo')
                kanji_tab.select(None, None, None, js=select_brush('kanji-drawing'))
        if kmnist is not None: demo.load(None, None, None, js=select_brush('drawing'))
        elif kkanji is not None: demo.load(None, None, None, js=select_brush('kanji-drawing'))
    learners = [l for l in (kmnist, calligraphy, kkanji) if l is not None]  # the page's characters: its labels and its text
    demo.page_css = font_css(''.join(label_text(c) for l in learners for c in l.dls.vocab))
    return demo


def launch(demo, host='127.0.0.1', port=None, share=False, inline=None, block=True, **kwargs):
    """Start the app on `host` (this computer only by default; a public link only with `share=True`).
    `block=False` returns at once (notebooks); close it with `demo.close()`. The page gets `build_app`'s font for its
    Japanese and Chinese characters (`font_css`)."""
    kwargs['css'] = '\n'.join(filter(None, [getattr(demo, 'page_css', ''), kwargs.get('css')])) or None
    return demo.launch(server_name=host, server_port=port, share=share, inline=inline, prevent_thread_lock=not block,
                       quiet=not block, **kwargs)
