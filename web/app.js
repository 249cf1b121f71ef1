// The page: draw a character, or choose a photo of one, and an exported model reads it in this browser, with ONNX
// Runtime Web on its WebAssembly backend, one thread (GitHub Pages cannot send the headers that threads need). No
// server, no other host: every file comes from this folder, and a service worker (sw.js) keeps them for offline use.
// Two models: kana (KMNIST's 10, model/) loads with the page; kanji (Kuzushiji-Kanji's 3,832, model/kanji/) only
// when it is first chosen. Each model.json (scripts/export_onnx.py) says what Python and this file must agree on:
// the input size, the labels as shown, how many answers, the ink level, the canvas, the brush, the "not sure" level.
// The preprocessing is helpers.inference.char_input written again, step for step, PIL's resampling included, in
// float32 where Python computes in float32 (Math.fround); tests/test_site.py holds both to the same pictures.
// Scripts and other pages can use the reader: window.kuzushiji.read(blob, 'kana' or 'kanji') resolves to the top
// answers, [{label, probability}], or rejects with an Error whose message is the sentence the page would show.

const f = Math.fround;
const HISTORY = 6;              // drawings and photos kept below the answer, newest first
const NEW_CHARACTER_MS = 2000;  // a stroke that starts this long after the last one ends starts a new character
const MAX_SIDE = 1024;          // a photo is shrunk to this first, as helpers.inference.read_image does
const MODES = {kana: 'model/', kanji: 'model/kanji/'};
export const MESSAGES = {
  loading: 'Loading the model (once: then the page works offline)…',
  ready: {kana: 'Ready: draw one kana, big, across most of the square, or choose a photo. It is read when you lift the pen.',
          kanji: 'Ready: draw one kanji, big, across most of the square, or choose a photo. It is read when you lift the pen.'},
  cleared: 'Cleared: the drawing went to the history below. Draw the next character (Undo brings it back).',
  fresh: 'A new character: the last one went to the history below (Undo twice brings it back).',
  undone: 'Undone: the canvas is empty. Draw a character, or Undo again to bring back the last one.',
  dot: 'That is a single dot, not a character: draw the whole character, big, across most of the square.',
  notImage: 'That file is not an image this browser can read: choose a photo or scan of one character (JPEG, PNG, WebP…).',
  noInk: 'There is no ink on this picture: choose a photo or scan of one character, dark ink on light paper.',
  badMode: mode => `There is no ${mode} reader: choose 'kana' or 'kanji'.`,
};

// --- helpers.inference.char_input, in JavaScript -----------------------------------------------------------------

/** Grey levels 0..255 of an opaque RGBA image, as PIL's convert('L') makes them. */
export function greyLevels(rgba, n) {
  const L = new Uint8Array(n);
  for (let i = 0; i < n; i++)
    L[i] = (rgba[4 * i] * 19595 + rgba[4 * i + 1] * 38470 + rgba[4 * i + 2] * 7471 + 0x8000) >> 16;
  return L;
}

/** The k-th smallest (0-based) of values given as a histogram: `count[v]` pixels have value `value[v]`, and `order`
 * lists v by increasing value. */
function nth(count, value, order, k) {
  let s = 0;
  for (const v of order) { s += count[v]; if (s > k) return value[v]; }
  return value[order[order.length - 1]];
}

/** numpy's median of values given as a histogram (the middle value, or the float32 mean of the two middle ones). */
function median(count, value, order) {
  const n = count.reduce((s, c) => s + c);
  return n % 2 ? nth(count, value, order, (n - 1) / 2)
               : f(f(nth(count, value, order, n / 2 - 1) + nth(count, value, order, n / 2)) / 2);
}

/** helpers.inference.ink on grey levels L: ink in [0, 1] (1 = ink), float32. Python's g = L / 255 in float32; the
 * paper's level is the median of g on the border; a light border means dark ink (inverted). A photo's paper has
 * grain: the border's median absolute deviation sets a floor `noise` x 1.4826 of it above the paper, and only what
 * rises above it is ink. Every step depends on a pixel's grey level alone, so it is done once per level (a table of
 * 256) and the medians are read from histograms. Too little contrast: null (empty). */
export function ink(L, w, h, minContrast, noise = 3) {
  const b = Math.max(1, Math.floor(Math.min(w, h) / 20)), border = new Float64Array(256), seen = new Uint8Array(256);
  for (let y = 0; y < h; y++) {
    const row = y * w, all = y < b || y >= h - b;  // whole rows at the top and bottom; then columns, corners twice
    for (let x = 0; x < w; x++) {
      const v = L[row + x];
      seen[v] = 1;
      if (all) border[v]++;
      if (x < b || x >= w - b) border[v]++;
    }
  }
  const levels = Array.from({length: 256}, (_, v) => v), g = levels.map(v => f(v / 255));
  const med = median(border, g, levels), dark = med < 0.5;
  const a = new Float32Array(256);  // a = g, or 1 - g in float32
  for (let v = 0; v < 256; v++) a[v] = dark ? g[v] : 1 - g[v];
  const paper = dark ? med : 1 - med;  // a Python float (double)
  const dev = levels.map(v => Math.abs(f(a[v] - f(paper))));  // |edge - float32(paper)|, in float32
  const floor = paper + noise * 1.4826 * median(border, dev, [...levels].sort((i, j) => dev[i] - dev[j]));
  let top = -Infinity;
  for (let v = 0; v < 256; v++) if (seen[v] && a[v] > top) top = a[v];
  if (top - floor < minContrast) return null;
  const p = f(floor), d = f(top - floor), table = new Float32Array(256), out = new Float32Array(L.length);
  for (let v = 0; v < 256; v++) table[v] = Math.min(1, Math.max(0, f(f(a[v] - p) / d)));
  for (let i = 0; i < L.length; i++) out[i] = table[L[i]];
  return out;
}

/** The box of the ink at least `level` strong: {x0, y0, w, h}, or null when there is none. */
export function inkBox(a, w, h, level) {
  let x0 = w, x1 = -1, y0 = h, y1 = -1;
  for (let y = 0; y < h; y++) for (let x = 0; x < w; x++) if (a[y * w + x] >= level) {
    if (x < x0) x0 = x; if (x > x1) x1 = x; if (y < y0) y0 = y; if (y > y1) y1 = y;
  }
  return x1 < 0 ? null : {x0, y0, w: x1 - x0 + 1, h: y1 - y0 + 1};
}

const sinc = x => (x === 0 ? 1 : Math.sin(x * Math.PI) / (x * Math.PI));
const FILTERS = {  // Pillow's Resample.c: [filter, support]
  lanczos: [x => (-3 <= x && x < 3 ? sinc(x) * sinc(x / 3) : 0), 3],
  bilinear: [x => { x = Math.abs(x); return x < 1 ? 1 - x : 0; }, 1],
};

/** Pillow's precompute_coeffs: for each output pixel, the first input pixel, how many, and their weights
 * (the filter stretched by the downscale factor, normalised to sum to 1). */
function coefficients(inSize, outSize, [filter, fsupport]) {
  const scale = inSize / outSize, filterscale = Math.max(scale, 1), support = fsupport * filterscale;
  const ksize = Math.ceil(support) * 2 + 1, bounds = new Int32Array(2 * outSize), k = new Float64Array(outSize * ksize);
  for (let xx = 0; xx < outSize; xx++) {
    const center = (xx + 0.5) * scale, ss = 1 / filterscale;
    const xmin = Math.max(0, Math.trunc(center - support + 0.5));
    const n = Math.min(inSize, Math.trunc(center + support + 0.5)) - xmin;
    let ww = 0;
    for (let x = 0; x < n; x++) { const v = filter((x + xmin - center + 0.5) * ss); k[xx * ksize + x] = v; ww += v; }
    if (ww !== 0) for (let x = 0; x < n; x++) k[xx * ksize + x] /= ww;
    bounds[2 * xx] = xmin; bounds[2 * xx + 1] = n;
  }
  return {bounds, k, ksize};
}

/** Image.fromarray(square, 'F').resize((size, size), filter): horizontal pass, then vertical, each summing in double
 * and storing float32, as Pillow's ImagingResample does for 'F' images. */
export function resize(src, side, size, kind) {
  if (side === size) return Float32Array.from(src);
  const {bounds, k, ksize} = coefficients(side, size, FILTERS[kind]);
  const tmp = new Float32Array(side * size), out = new Float32Array(size * size);
  for (let y = 0; y < side; y++) for (let xx = 0; xx < size; xx++) {
    const x0 = y * side + bounds[2 * xx], n = bounds[2 * xx + 1], k0 = xx * ksize;
    let ss = 0;
    for (let x = 0; x < n; x++) ss += src[x0 + x] * k[k0 + x];
    tmp[y * size + xx] = ss;
  }
  for (let yy = 0; yy < size; yy++) for (let x = 0; x < size; x++) {
    const y0 = bounds[2 * yy], n = bounds[2 * yy + 1], k0 = yy * ksize;
    let ss = 0;
    for (let y = 0; y < n; y++) ss += tmp[(y0 + y) * size + x] * k[k0 + y];
    out[yy * size + x] = ss;
  }
  return out;
}

const roundHalfEven = x => { const r = Math.round(x); return r - x === 0.5 && r % 2 ? r - 1 : r; };

/** helpers.inference.is_kmnist_image: a size x size picture with a dark border and some ink is already an image of
 * the data set, and passes through as it is. */
function isDatasetImage(L, w, h, size) {
  if (w !== size || h !== size) return false;
  const edge = [];
  for (let i = 0; i < size; i++) edge.push(L[i], L[(size - 1) * size + i], L[i * size], L[i * size + size - 1]);
  edge.sort((p, q) => p - q);
  const n = edge.length, med = n % 2 ? edge[(n - 1) / 2] : (edge[n / 2 - 1] + edge[n / 2]) / 2;
  return med < 128 && Math.max(...L) >= 128;
}

/** A drawing or photo (opaque RGBA, any size up to 1,024 px a side) -> what the model reads: {pixels: uint8 size x
 * size, white on black, the ink's box made square around its centre, its longer side filling the frame, brightest
 * pixel 255; box: the ink's box in the picture's pixels}, or {reason: 'empty'} with no ink. */
export function modelInput(rgba, w, h, cfg) {
  const size = cfg.input.size, L = greyLevels(rgba, w * h);
  if (isDatasetImage(L, w, h, size)) return {pixels: L, box: {x0: 0, y0: 0, w, h}};
  const a = ink(L, w, h, cfg.min_contrast, cfg.noise_sigmas ?? 3);
  const box = a && inkBox(a, w, h, cfg.ink_level);
  if (!box) return {reason: 'empty'};
  const side = Math.max(box.w, box.h), sq = new Float32Array(side * side);
  const top = (side - box.h) >> 1, left = (side - box.w) >> 1;
  for (let y = 0; y < box.h; y++) for (let x = 0; x < box.w; x++)
    sq[(top + y) * side + left + x] = a[(box.y0 + y) * w + box.x0 + x];
  const small = resize(sq, side, size, side > size ? 'lanczos' : 'bilinear');
  let m = 0;
  for (let i = 0; i < small.length; i++) { if (small[i] < 0) small[i] = 0; if (small[i] > m) m = small[i]; }
  const scale = m > 1e-6 ? f(255 / m) : 255 / 1e-6, pixels = new Uint8Array(small.length);
  for (let i = 0; i < small.length; i++) pixels[i] = roundHalfEven(f(small[i] * scale));
  return {pixels, box};
}

/** The `k` most likely classes, best first (ties keep the class order, as numpy's stable argsort). */
export function topK(probs, k) {
  return Array.from(probs.keys()).sort((i, j) => probs[j] - probs[i] || i - j).slice(0, k);
}

// --- the models: kana with the page, kanji when first chosen ---------------------------------------------------

let ort = null;
const models = {};  // mode -> Promise of {cfg, session, base, sheets}

/** An Error whose message is the one sentence the page shows (never a stack trace). */
class Sentence extends Error {}

async function loadRuntime() {
  if (ort) return ort;
  ort = await import('./ort/ort.wasm.bundle.min.mjs');
  ort.env.wasm.numThreads = 1;  // no SharedArrayBuffer without cross-origin isolation headers
  ort.env.wasm.proxy = false;
  // this folder's copy of the WebAssembly, never a CDN; the bundle holds its JavaScript glue (a prefix here would
  // make it fetch a separate glue file)
  ort.env.wasm.wasmPaths = {wasm: new URL('ort/ort-wasm-simd-threaded.wasm', import.meta.url).href};
  return ort;
}

/** The model of `mode`, loaded once: its model.json, its ONNX session (warmed up: the first run plans the graph)
 * and, for kanji, its own font for the labels. */
function model(mode) {
  if (!MODES[mode]) return Promise.reject(new Sentence(MESSAGES.badMode(mode)));
  return models[mode] ??= (async () => {
    const base = MODES[mode];
    try {
      const cfg = await (await fetch(`${base}model.json`)).json();
      if (cfg.format !== 2) throw new Error(`model.json format ${cfg.format}, this page reads format 2`);
      await loadRuntime();
      const bytes = await (await fetch(`${base}${cfg.model}`)).arrayBuffer();
      const session = await ort.InferenceSession.create(bytes, {executionProviders: ['wasm'], graphOptimizationLevel: 'all'});
      const S = cfg.input.size;
      await session.run({[cfg.input.name]: new ort.Tensor('uint8', new Uint8Array(S * S), [1, 1, S, S])});
      if (base !== 'model/') {  // the kana font comes with the page (index.html)
        const link = Object.assign(document.createElement('link'), {rel: 'stylesheet', href: `${base}font.css`});
        document.head.append(link);
      }
      return {cfg, session, base, mode, sheets: {}};
    } catch (e) {
      delete models[mode];  // try again next time
      throw new Sentence(`The ${mode} model could not be loaded (${e.message}). Serve this folder over HTTP ` +
                         '(python -m http.server) rather than opening the file, and build it with scripts/build_site.py.');
    }
  })();
}

/** Sheet `k` of a model's training examples, fetched the first time an answer needs it. */
function sheet(m, k) {
  return m.sheets[k] ??= fetch(`${m.base}${m.cfg.examples.sheets[k]}`).then(r => r.blob()).then(createImageBitmap);
}

/** Read prepared pixels: the probabilities, the top classes, and whether the model is sure. */
async function classify(m, pixels) {
  const S = m.cfg.input.size;
  const out = await m.session.run({[m.cfg.input.name]: new ort.Tensor('uint8', pixels, [1, 1, S, S])});
  const probabilities = out[m.cfg.output].data, top = topK(probabilities, m.cfg.top);
  const below = m.cfg.not_sure_below, best = probabilities[top[0]];
  return {probabilities, top, sure: below == null || best >= below};
}

/** A photo or scan (a Blob) as opaque RGBA pixels, EXIF rotation applied, transparency on white paper, shrunk to
 * at most MAX_SIDE a side by the browser's own decoder and scaler (createImageBitmap). */
async function photoPixels(blob) {
  let bitmap;
  try { bitmap = await createImageBitmap(blob, {imageOrientation: 'from-image'}); }
  catch { throw new Sentence(MESSAGES.notImage); }
  const scale = Math.min(1, MAX_SIDE / Math.max(bitmap.width, bitmap.height));
  const w = Math.max(1, Math.round(bitmap.width * scale)), h = Math.max(1, Math.round(bitmap.height * scale));
  const c = new OffscreenCanvas(w, h), cx = c.getContext('2d', {willReadFrequently: true});
  cx.fillStyle = '#fff'; cx.fillRect(0, 0, w, h);
  cx.imageSmoothingQuality = 'high'; cx.drawImage(bitmap, 0, 0, w, h);
  bitmap.close();
  return {rgba: cx.getImageData(0, 0, w, h).data, w, h};
}

const pixelsOf = ({rgba, w, h}) => [rgba, w, h];  // photoPixels' result as readPixels' arguments

/** Read a picture's RGBA pixels with the model of `mode`: a result for the page, timed. */
async function readPixels(mode, rgba, w, h, {drawing = false} = {}) {
  const m = await model(mode), t0 = performance.now();
  const input = modelInput(rgba, w, h, m.cfg), t1 = performance.now();
  let result;
  if (input.reason === 'empty') result = {reason: 'empty', message: drawing ? MESSAGES.ready[mode] : MESSAGES.noInk};
  else if (drawing && input.box.w < 2 * m.cfg.brush && input.box.h < 2 * m.cfg.brush)  // both sides under 2 brushes
    result = {reason: 'dot', message: MESSAGES.dot, box: input.box};
  else result = {pixels: input.pixels, box: input.box, ...await classify(m, input.pixels)};
  result.mode = mode; result.model = m; result.ms = {preprocess: t1 - t0, model: performance.now() - t1};
  return result;
}

/** The reader for scripts and other pages: a photo (Blob or File) -> [{label, probability}], best first. */
export async function read(blob, mode = 'kana') {
  await model(mode);  // an unknown mode is refused before the picture is read
  const r = await readPixels(mode, ...pixelsOf(await photoPixels(blob)));
  if (!r.top) throw new Sentence(r.message);
  return r.top.map(i => ({label: r.model.cfg.labels[i], probability: r.probabilities[i]}));
}

// --- the page ----------------------------------------------------------------------------------------------------

const $ = id => document.getElementById(id);

/** A label as the page shows it: the character marked as Japanese (lang="ja"), its reading or code point not. */
function labelNode(text, tag = 'span') {
  const node = document.createElement(tag), [ch, ...rest] = text.split(' ');
  if (/^U\+/.test(text)) node.textContent = text;
  else { const ja = Object.assign(document.createElement('span'), {lang: 'ja', textContent: ch});
         node.append(ja, rest.length ? ` ${rest.join(' ')}` : ''); }
  return node;
}

function start() {
  const api = window.kuzushiji = {ready: false, readings: 0, last: null, read, mode: 'kana'};
  const message = (...parts) => $('message').replaceChildren(...parts);
  const pad = $('pad'), ctx = pad.getContext('2d', {willReadFrequently: true});
  let mode = 'kana', strokes = [], photo = null, current = null, previous = null, keepAdding = false;
  let lastUp = 0, penDown = null, queue = Promise.resolve();

  // the drawing is its strokes, so that Undo can take the last one away and a mode redraws with its brush
  const brush = () => (api.config ? api.config.brush : 34);
  function paint() {
    ctx.fillStyle = '#fff'; ctx.fillRect(0, 0, pad.width, pad.height);
    if (photo) {  // a photo is shown on the pad, fitted
      const s = Math.min(pad.width / photo.bitmap.width, pad.height / photo.bitmap.height);
      const w = photo.bitmap.width * s, h = photo.bitmap.height * s;
      ctx.drawImage(photo.bitmap, (pad.width - w) / 2, (pad.height - h) / 2, w, h);
    }
    for (const s of strokes) drawStroke(s);
  }
  function drawStroke(points) {
    ctx.strokeStyle = ctx.fillStyle = '#000'; ctx.lineWidth = brush(); ctx.lineCap = ctx.lineJoin = 'round';
    ctx.beginPath(); ctx.arc(...points[0], brush() / 2, 0, 2 * Math.PI); ctx.fill();
    for (let i = 1; i < points.length; i++) {
      ctx.beginPath(); ctx.moveTo(...points[i - 1]); ctx.lineTo(...points[i]); ctx.stroke();
    }
  }

  function show(result) {
    const cfg = result.model?.cfg, top = result.top || [];
    $('answers').replaceChildren(...top.map(i => {
      const li = document.createElement('li'), p = result.probabilities[i];
      li.append(labelNode(cfg.shown[i]), Object.assign(document.createElement('span'), {className: 'bar'}),
                Object.assign(document.createElement('span'), {className: 'p', textContent: p.toFixed(2)}));
      li.firstChild.className = 'label';
      li.children[1].append(Object.assign(document.createElement('span'), {style: `width: ${(100 * p).toFixed(1)}%`}));
      return li;
    }));
    seen(result);
    examples(result);
    if (top.length) {
      const best = labelNode(cfg.shown[top[0]], 'b'), p = result.probabilities[top[0]].toFixed(2);
      if (result.sure) message('Read as ', best, `, probability ${p}.`);
      else message(Object.assign(document.createElement('b'), {textContent: 'Not sure.'}), ' Its best guess is ', best,
                   `, probability ${p}: below the ${cfg.not_sure_below.toFixed(2)} it needs to answer (chosen on ` +
                   'validation). Draw it again, bigger, or choose a clearer photo.');
    } else message(result.message);
  }

  function seen(result) {  // the model's input, 5x, with a text alternative
    const c = $('seen'), cx = c.getContext('2d'), S = result.model?.cfg.input.size || 28;
    c.width = c.height = 5 * S;
    cx.fillStyle = '#000'; cx.fillRect(0, 0, c.width, c.height);
    if (result.pixels) {
      const img = cx.createImageData(S, S);
      result.pixels.forEach((v, i) => img.data.set([v, v, v, 255], 4 * i));
      const o = new OffscreenCanvas(S, S); o.getContext('2d').putImageData(img, 0, 0);
      cx.imageSmoothingEnabled = false; cx.drawImage(o, 0, 0, 5 * S, 5 * S);
    }
    c.setAttribute('aria-label', result.pixels ? `What the model saw: the character cut to its ink and fitted into ` +
      `${S} by ${S} pixels, white ink on black, as the training images are.` : 'What the model saw: nothing yet.');
  }

  function examples(result) {  // training images of each answer, from sheets fetched when first needed
    const box = $('examples'), m = result.model, ex = m?.cfg.examples, top = result.top || [];
    if (!ex || !top.length) { box.replaceChildren(); return; }
    const kanji = m.mode === 'kanji', head = document.createElement('p');
    head.innerHTML = kanji ? `<b>What the model learned from</b>: for each of its top ${top.length}, how many training ` +
      'images it had and a few of them' : `<b>What the model learned from</b>: ${ex.per_class} training images of ` +
      `each of its top ${top.length} (the same character is written in several forms)`;
    box.replaceChildren(head, ...top.map(i => {
      const row = document.createElement('div'), name = labelNode(m.cfg.shown[i]);
      row.className = 'examples-row'; name.className = 'examples-label'; row.append(name);
      if (kanji && m.cfg.counts) {
        const n = m.cfg.counts[i];
        row.append(Object.assign(document.createElement('span'), {className: 'examples-count',
          textContent: `learned from ${n.toLocaleString('en')} image${n === 1 ? '' : 's'}`}));
      }
      const n = ex.shown ? ex.shown[i] : ex.missing.includes(m.cfg.labels[i]) ? 0 : ex.per_class;
      for (let j = 0; j < n; j++) {
        const c = document.createElement('canvas');
        c.width = c.height = 2 * ex.size; c.setAttribute('role', 'img');
        c.setAttribute('aria-label', `a training image of ${m.cfg.labels[i]}`);
        row.append(c);
        sheet(m, Math.floor(i / ex.rows_per_sheet)).then(bitmap => {
          const cc = c.getContext('2d'), y = (i % ex.rows_per_sheet) * ex.size;
          cc.imageSmoothingEnabled = false;
          cc.drawImage(bitmap, j * ex.size, y, ex.size, ex.size, 0, 0, 2 * ex.size, 2 * ex.size);
        }).catch(() => c.remove());  // offline before this sheet was ever needed: no picture, no error
      }
      return row;
    }));
  }

  function keep() {  // what is on the pad goes to the history, with its answer
    if (!current || !current.top) return null;
    const c = document.createElement('canvas'), li = document.createElement('li'), i = current.top[0];
    c.width = c.height = 64; c.getContext('2d').drawImage(pad, 0, 0, 64, 64);
    const img = Object.assign(document.createElement('img'), {src: c.toDataURL(),
      alt: `an earlier ${photo ? 'photo' : 'drawing'}, read as ${current.model.cfg.labels[i]}`});
    const label = labelNode(current.model.cfg.shown[i]);
    label.append(` ${current.probabilities[i].toFixed(2)}${current.sure ? '' : ' (not sure)'}`);
    li.append(img, label);
    $('history').prepend(li);
    while ($('history').children.length > HISTORY) $('history').lastChild.remove();
    $('history-box').hidden = false;
    return li;
  }

  /** Start a fresh pad; what was on it goes to the history and can come back with Undo. */
  function fresh() {
    const item = keep();
    if (item) previous = {strokes, photo, current, item};  // an empty pad keeps the one before
    strokes = []; photo = null; current = null; keepAdding = false;
    paint();
  }

  async function readPad(strokeEnd = performance.now()) {
    const result = await readPixels(mode, ctx.getImageData(0, 0, pad.width, pad.height).data, pad.width, pad.height,
                                    {drawing: !photo});
    return finish(result, strokeEnd);
  }

  function finish(result, t0) {  // show a reading and record it for the tests and the benchmark
    const t = performance.now();
    show(result);
    result.ms.show = performance.now() - t; result.ms.total = performance.now() - t0;
    current = result; api.readings++;
    api.last = {reason: result.reason, message: $('message').textContent, sure: result.sure, box: result.box,
                top: result.top, mode: result.mode, ms: result.ms, pixels: result.pixels && Array.from(result.pixels),
                probabilities: result.probabilities && Array.from(result.probabilities)};
    return api.last;
  }

  function say(text) {  // a message where the answer was, recorded as a reading (the tests wait for readings)
    current = null; show({message: text});
    api.readings++; api.last = {reason: 'message', mode, message: text};
    return api.last;
  }

  function failed(e) {  // a sentence where the answer was, and nothing half-written left looking complete
    current = null;
    $('answers').replaceChildren(); $('examples').replaceChildren(); seen({});
    message(e instanceof Sentence ? e.message : `Something went wrong (${e.message}): reload the page.`);
    api.readings++; api.last = {reason: 'error', message: $('message').textContent};
    return api.last;
  }

  // Drawing: pointer events cover the mouse, a finger and a pen; read when the stroke ends
  const at = e => { const r = pad.getBoundingClientRect();
                    return [(e.clientX - r.left) * pad.width / r.width, (e.clientY - r.top) * pad.height / r.height]; };
  pad.addEventListener('pointerdown', e => {
    e.preventDefault();
    try { pad.setPointerCapture(e.pointerId); } catch { /* a pointer the browser no longer tracks */ }
    // one character at a time: after a pause, or on a photo, the stroke starts a new character
    const newOne = photo || (strokes.length && !keepAdding && e.timeStamp - lastUp > NEW_CHARACTER_MS);
    if (newOne) fresh();
    keepAdding = false;
    penDown = [at(e)]; strokes.push(penDown); drawStroke(penDown);
    if (newOne) message(MESSAGES.fresh);
  });
  pad.addEventListener('pointermove', e => {
    if (!penDown) return;
    for (const ev of e.getCoalescedEvents ? e.getCoalescedEvents() : [e]) {
      const p = at(ev), q = penDown[penDown.length - 1];
      penDown.push(p);
      ctx.beginPath(); ctx.moveTo(...q); ctx.lineTo(...p); ctx.stroke();
    }
  });
  const end = e => {
    if (!penDown) return;
    penDown = null; lastUp = e.timeStamp;  // when the pen was lifted, on the clock of performance.now()
    queue = queue.then(() => readPad(e.timeStamp)).catch(failed);
  };
  pad.addEventListener('pointerup', end);
  pad.addEventListener('pointercancel', end);

  $('undo').addEventListener('click', () => {
    queue = queue.then(async () => {
      if (strokes.length) {  // the last stroke goes
        strokes.pop(); paint();
        if (strokes.length) return readPad();
        return say(MESSAGES.undone);
      }
      if (previous) {  // on an empty pad: the last character comes back from the history, to add to
        ({strokes, photo} = previous); previous.item?.remove(); previous = null; keepAdding = true;
        if (!$('history').children.length) $('history-box').hidden = true;
        paint();
        if (photo) return finish(await readPixels(mode, ...pixelsOf(await photoPixels(photo.blob))), performance.now());
        return readPad();
      }
    }).catch(failed);
  });
  $('clear').addEventListener('click', () => {
    const had = current && current.top;
    fresh(); show({message: had ? MESSAGES.cleared : MESSAGES.ready[mode]});
  });

  // A photo: the same preparation, then the same answer
  $('photo').addEventListener('change', () => {
    const file = $('photo').files[0];
    $('photo').value = '';  // the same file can be chosen again
    if (file) queue = queue.then(() => readPhoto(file)).catch(failed);
  });
  async function readPhoto(file, t0 = performance.now()) {
    message('Reading the photo…');
    const pixels = await photoPixels(file);  // a file that is not an image: its sentence, before anything changes
    fresh();
    photo = {blob: file, bitmap: await createImageBitmap(file, {imageOrientation: 'from-image'})};
    paint();
    const result = await readPixels(mode, ...pixelsOf(pixels));
    if (!result.top) { photo = null; paint(); }
    return finish(result, t0);
  }

  // Kana or kanji: the kanji model is fetched the first time it is chosen; what is on the pad is read again
  for (const radio of document.querySelectorAll('input[name=mode]')) radio.addEventListener('change', () => {
    queue = queue.then(() => choose(radio.value)).catch(failed);
  });
  async function choose(m) {
    if (!models[m]) message(`Loading the ${m} model (once: then it works offline too)…`);
    let loaded;
    try { loaded = await model(m); }
    catch (e) { document.querySelector(`input[name=mode][value=${mode}]`).checked = true; throw e; }
    mode = api.mode = m; api.config = loaded.cfg;
    document.body.dataset.mode = m;
    $('known').textContent = known(loaded.cfg);
    $('top-title').textContent = `Top ${loaded.cfg.top}`;
    paint();
    if (photo) return finish(await readPixels(mode, ...pixelsOf(await photoPixels(photo.blob))), performance.now());
    if (strokes.length) return readPad();
    return say(MESSAGES.ready[m]);
  }
  const known = cfg => cfg.shown.length <= 50 ? `The kana model knows ${cfg.shown.length}: ${cfg.shown.join(', ')}.`
    : `The kanji model knows ${cfg.shown.length.toLocaleString('en')} kanji, most from very few images: it shows ` +
      'how many beside each answer.';

  (async () => {
    message(MESSAGES.loading);
    try { await choose('kana'); }
    catch (e) { failed(e); return; }
    Object.assign(api, {
      ready: true, readyMs: performance.now(),
      readCanvas: () => (queue = queue.then(() => readPad())),     // read the pad as it is now (the tests)
      png: () => pad.toDataURL('image/png'),                        // the pad as a PNG, for Python to read the same pixels
      choose: m => (queue = queue.then(() => choose(m)).catch(failed)),
    });
    document.body.dataset.ready = 'true';
    // offline: the service worker keeps the page, the runtime and the kana model (the kanji one once used)
    if ('serviceWorker' in navigator && location.protocol !== 'file:')
      api.offline = navigator.serviceWorker.register('sw.js').then(() => navigator.serviceWorker.ready)
        .then(() => true, () => false);
  })();
}

if (typeof document !== 'undefined') start();
