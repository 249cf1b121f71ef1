// The page: draw a character and the exported model reads it in this browser, with ONNX Runtime Web on its
// WebAssembly backend, one thread (GitHub Pages cannot send the headers that threads need). No server, no other
// host: every file comes from this folder, and once loaded the page works offline.
// model/model.json (scripts/export_onnx.py) says what Python and this file must agree on: the input size, the
// labels as shown, how many answers, the ink level, the canvas and the brush.
// The preprocessing is helpers.inference.kmnist_input written again, step for step, PIL's resampling included, in
// float32 where Python computes in float32 (Math.fround); tests/test_site.py holds both to the same canvas.

const f = Math.fround;
const HISTORY = 6;  // drawings kept below the answer, newest first
export const MESSAGES = {
  loading: 'Loading the model (once: then the page works offline)…',
  ready: 'Ready: draw one character, big, across most of the square. It is read when you lift the pen.',
  empty: 'Nothing to read: the canvas is empty. Draw one character, big, across most of the square.',
  dot: 'That is a single dot, not a character: draw the whole character, big, across most of the square.',
};

// --- helpers.inference.kmnist_input, in JavaScript ---------------------------------------------------------------

/** Grey levels 0..255 of an opaque RGBA image, as PIL's convert('L') makes them. */
export function greyLevels(rgba, n) {
  const L = new Uint8Array(n);
  for (let i = 0; i < n; i++)
    L[i] = (rgba[4 * i] * 19595 + rgba[4 * i + 1] * 38470 + rgba[4 * i + 2] * 7471 + 0x8000) >> 16;
  return L;
}

/** helpers.inference.ink on grey levels L: ink in [0, 1] (1 = ink), float32. Python's g = L / 255 in float32; the
 * paper's level is the median of g on the border (numpy's: the middle value, or the float32 mean of the two middle
 * ones); a light border means dark ink (inverted). Every step depends on a pixel's grey level alone, so it is done
 * once per level (a table of 256) and the median is read from a histogram. Too little contrast: null (empty). */
export function ink(L, w, h, minContrast) {
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
  const g = v => f(v / 255), n = border.reduce((s, c) => s + c);
  const nth = k => { let v = 0; for (let s = border[0]; s <= k; s += border[++v]); return g(v); };
  const med = n % 2 ? nth((n - 1) / 2) : f(f(nth(n / 2 - 1) + nth(n / 2)) / 2), dark = med < 0.5;
  const a = new Float32Array(256);  // a = g, or 1 - g in float32
  for (let v = 0; v < 256; v++) a[v] = dark ? g(v) : 1 - g(v);
  const paper = dark ? med : 1 - med;  // a Python float (double)
  let top = -Infinity;
  for (let v = 0; v < 256; v++) if (seen[v] && a[v] > top) top = a[v];
  if (top - paper < minContrast) return null;
  const p = f(paper), d = f(top - paper), table = new Float32Array(256), out = new Float32Array(L.length);
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

/** A drawing (opaque RGBA, any size up to 1,024 px a side) -> what the model reads: {pixels: uint8 size x size,
 * white on black, the ink's box made square around its centre, its longer side filling the frame, brightest pixel
 * 255; box: the ink's box in the drawing's pixels}, or {reason: 'empty'} with no ink. */
export function modelInput(rgba, w, h, cfg) {
  const size = cfg.input.size, a = ink(greyLevels(rgba, w * h), w, h, cfg.min_contrast);
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

// --- the page ----------------------------------------------------------------------------------------------------

const $ = id => document.getElementById(id);

async function start() {
  const reader = window.reader = {ready: false, readings: 0, last: null};
  const message = text => { $('message').textContent = text; };
  message(MESSAGES.loading);
  let cfg, session, ort, sheets = [];
  try {
    cfg = await (await fetch('model/model.json')).json();
    if (cfg.format !== 1) throw new Error(`model.json format ${cfg.format}, this page reads format 1`);
    ort = await import('./ort/ort.wasm.bundle.min.mjs');
    ort.env.wasm.numThreads = 1;  // no SharedArrayBuffer without cross-origin isolation headers
    ort.env.wasm.proxy = false;
    // this folder's copy of the WebAssembly, never a CDN; the bundle holds its JavaScript glue (a prefix here would
    // make it fetch a separate glue file)
    ort.env.wasm.wasmPaths = {wasm: new URL('ort/ort-wasm-simd-threaded.wasm', import.meta.url).href};
    const model = await (await fetch(`model/${cfg.model}`)).arrayBuffer();
    session = await ort.InferenceSession.create(model, {executionProviders: ['wasm'], graphOptimizationLevel: 'all'});
    for (const s of cfg.examples ? cfg.examples.sheets : [])  // decoded now: no request after loading
      sheets.push(await createImageBitmap(await (await fetch(`model/${s}`)).blob()));
  } catch (e) {
    message(`The model could not be loaded (${e.message}). Serve this folder over HTTP (python -m http.server) ` +
            'rather than opening the file, and build it with scripts/build_site.py.');
    return;
  }
  const S = cfg.input.size, pad = $('pad'), ctx = pad.getContext('2d', {willReadFrequently: true});
  pad.width = pad.height = cfg.canvas;
  $('known').textContent = cfg.shown.length <= 50 ? `The model knows ${cfg.shown.length}: ${cfg.shown.join(', ')}.`
                                                  : `The model knows ${cfg.shown.length.toLocaleString('en')} characters.`;
  $('top-title').textContent = `Top ${cfg.top}`;
  $('seen-title').textContent = `What the model saw (${S}x${S})`;

  const run = async pixels => {
    const out = await session.run({[cfg.input.name]: new ort.Tensor('uint8', pixels, [1, 1, S, S])});
    return out[cfg.output].data;
  };
  await run(new Uint8Array(S * S));  // warm up: the first run plans the graph
  let current = null;  // the drawing on the canvas and its reading

  function clearPad() {
    ctx.fillStyle = '#fff'; ctx.fillRect(0, 0, pad.width, pad.height);
  }

  function show(result) {
    $('answers').replaceChildren(...(result.top || []).map(i => {
      const li = document.createElement('li'), p = result.probabilities[i];
      li.innerHTML = '<span class="label"></span><span class="bar"><span></span></span><span class="p"></span>';
      li.querySelector('.label').textContent = cfg.shown[i];
      li.querySelector('.bar span').style.width = `${(100 * p).toFixed(1)}%`;
      li.querySelector('.p').textContent = p.toFixed(2);
      return li;
    }));
    const seen = $('seen'), sctx = seen.getContext('2d');
    seen.width = seen.height = 5 * S;
    sctx.fillStyle = '#000'; sctx.fillRect(0, 0, seen.width, seen.height);
    if (result.pixels) {
      const img = sctx.createImageData(S, S);
      result.pixels.forEach((v, i) => img.data.set([v, v, v, 255], 4 * i));
      const c = new OffscreenCanvas(S, S); c.getContext('2d').putImageData(img, 0, 0);
      sctx.imageSmoothingEnabled = false; sctx.drawImage(c, 0, 0, 5 * S, 5 * S);
    }
    examples(result.top || []);
    message(result.message);
  }

  function examples(top) {
    const box = $('examples');
    if (!sheets.length || !top.length) { box.replaceChildren(); return; }
    const ex = cfg.examples, head = document.createElement('p');
    head.innerHTML = `<b>What the model learned from</b>: ${ex.per_class} training images of each of its top ` +
                     `${top.length} (the same character is written in several forms)`;
    box.replaceChildren(head, ...top.map(i => {
      const row = document.createElement('div'), name = document.createElement('span');
      row.className = 'examples-row'; name.className = 'examples-label'; name.textContent = cfg.shown[i];
      row.append(name);
      if (ex.missing.includes(cfg.labels[i])) return row;
      const sheet = sheets[Math.floor(i / ex.rows_per_sheet)], y = (i % ex.rows_per_sheet) * ex.size;
      for (let j = 0; j < ex.per_class; j++) {
        const c = document.createElement('canvas');
        c.width = c.height = 2 * ex.size; c.title = `a training image of ${cfg.labels[i]}`;
        const cc = c.getContext('2d'); cc.imageSmoothingEnabled = false;
        cc.drawImage(sheet, j * ex.size, y, ex.size, ex.size, 0, 0, 2 * ex.size, 2 * ex.size);
        row.append(c);
      }
      return row;
    }));
  }

  async function read(strokeEnd = performance.now()) {
    const t0 = performance.now();
    const input = modelInput(ctx.getImageData(0, 0, pad.width, pad.height).data, pad.width, pad.height, cfg);
    const t1 = performance.now();
    let result;
    if (input.reason === 'empty') result = {reason: 'empty', message: MESSAGES.empty};
    else if (input.box.w < 2 * cfg.brush && input.box.h < 2 * cfg.brush)  // both sides under two brush widths
      result = {reason: 'dot', message: MESSAGES.dot, box: input.box};
    else {
      const probabilities = await run(input.pixels), top = topK(probabilities, cfg.top);
      result = {pixels: input.pixels, probabilities, top, box: input.box,
                message: `Read as ${cfg.shown[top[0]]}, probability ${probabilities[top[0]].toFixed(2)}.`};
    }
    const t2 = performance.now();
    show(result);
    const t3 = performance.now();
    result.ms = {total: t3 - strokeEnd, preprocess: t1 - t0, model: t2 - t1, show: t3 - t2};
    current = result; reader.readings++;
    reader.last = {...result, pixels: result.pixels && Array.from(result.pixels),
                   probabilities: result.probabilities && Array.from(result.probabilities)};
    return reader.last;
  }

  function keep() {  // the drawing on the canvas goes to the history, with its answer
    if (!current || !current.top) return;
    const c = document.createElement('canvas'), li = document.createElement('li'), i = current.top[0];
    c.width = c.height = 64;
    c.getContext('2d').drawImage(pad, 0, 0, 64, 64);
    const img = document.createElement('img'), label = document.createElement('span');
    img.src = c.toDataURL(); img.alt = 'an earlier drawing';
    label.textContent = `${cfg.shown[i]} ${current.probabilities[i].toFixed(2)}`;
    li.append(img, label);
    const list = $('history');
    list.prepend(li);
    while (list.children.length > HISTORY) list.lastChild.remove();
    $('history-box').hidden = false;
  }

  // Drawing: pointer events cover the mouse, a finger and a pen; read when the stroke ends
  let last = null, queue = Promise.resolve();
  const at = e => { const r = pad.getBoundingClientRect();
                    return [(e.clientX - r.left) * pad.width / r.width, (e.clientY - r.top) * pad.height / r.height]; };
  const line = (a, b) => { ctx.beginPath(); ctx.moveTo(...a); ctx.lineTo(...b); ctx.stroke(); };
  pad.addEventListener('pointerdown', e => {
    e.preventDefault();
    try { pad.setPointerCapture(e.pointerId); } catch { /* a pointer the browser no longer tracks */ }
    ctx.strokeStyle = ctx.fillStyle = '#000'; ctx.lineWidth = cfg.brush; ctx.lineCap = ctx.lineJoin = 'round';
    last = at(e);
    ctx.beginPath(); ctx.arc(...last, cfg.brush / 2, 0, 2 * Math.PI); ctx.fill();
  });
  pad.addEventListener('pointermove', e => {
    if (!last) return;
    for (const ev of e.getCoalescedEvents ? e.getCoalescedEvents() : [e]) { const p = at(ev); line(last, p); last = p; }
  });
  const end = e => {
    if (!last) return;
    last = null;
    const t = e.timeStamp;  // when the pen was lifted, on the clock of performance.now()
    queue = queue.then(() => read(t));
  };
  pad.addEventListener('pointerup', end);
  pad.addEventListener('pointercancel', end);
  $('clear').addEventListener('click', () => {
    keep(); clearPad(); current = null;
    show({reason: 'empty', message: MESSAGES.empty});
  });

  clearPad();
  show({message: MESSAGES.ready});
  Object.assign(reader, {
    ready: true, readyMs: performance.now(), config: cfg,
    read: () => (queue = queue.then(() => read())),  // read the canvas as it is now (the tests)
    png: () => pad.toDataURL('image/png'),           // the canvas as a PNG, for Python to read the same pixels
  });
  document.body.dataset.ready = 'true';
}

if (typeof document !== 'undefined') start();
