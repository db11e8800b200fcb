// sinkwidgets: what both widgets share. Codecs, colour maps, DOM helpers, menus, error boxes, PNG hand-off and
// the offline-page helpers, each defined once here.
//
// Each widget's ES module is this file followed by the widget's own file (SinkExplorer: sinkexplorer.js,
// TagExplorer: tagexplorer.js). One Python function assembles it: sinkwidgets/widgets/_assets.py: esm().
// A widget file starts with `import { ... } from "./sinkwidgets.js";` naming what it uses from here; the assembly
// checks that every imported name is exported here and drops that statement (both files then share one module
// scope), so a name defined in both files is a SyntaxError of the assembled module. No imports here, nothing
// fetched from the network, no default export (each widget module has its own).
//
// Rules kept throughout:
// * Token strings are untrusted: they reach the page through `textContent` and canvas `fillText` only.
// * Arrays arrive as binary buffers + a JSON spec (see _serialization.py and _tag_state.packed_int); the decoders
//   mirror the Python encoders (JupyterLab hands buffers over as DataView, Colab as Uint8Array).
// * A failure while rendering shows a visible message in the widget (and in the console), never a blank.

// ------------------------------------------------------------------------------------------------ codecs
let F16_TABLE = null;

function f16Table() {
  if (F16_TABLE) return F16_TABLE;
  const t = new Float32Array(65536);
  for (let h = 0; h < 65536; h++) {
    const sign = h & 0x8000 ? -1 : 1;
    const e = (h >> 10) & 0x1f;
    const f = h & 0x3ff;
    if (e === 0) t[h] = sign * f * 2 ** -24;
    else if (e === 31) t[h] = f ? NaN : sign * Infinity;
    else t[h] = sign * (1 + f / 1024) * 2 ** (e - 15);
  }
  F16_TABLE = t;
  return t;
}

/** Any binary payload (DataView, Uint8Array, other typed array, ArrayBuffer) as a Uint8Array view. */
export function asBytes(v) {
  if (v == null) return new Uint8Array(0);
  if (v instanceof Uint8Array) return v;
  if (v instanceof ArrayBuffer) return new Uint8Array(v);
  if (ArrayBuffer.isView(v)) return new Uint8Array(v.buffer, v.byteOffset, v.byteLength);
  throw new TypeError(`expected binary data, got ${Object.prototype.toString.call(v)}`);
}

/** `n` elements of type `Ctor` over `bytes`; copied into a fresh buffer when the offset is not aligned. */
export function typedView(bytes, Ctor, n) {
  const size = Ctor.BYTES_PER_ELEMENT;
  if (bytes.byteOffset % size === 0) return new Ctor(bytes.buffer, bytes.byteOffset, n);
  // Typed arrays need an aligned offset: copy the bytes into a fresh (aligned) buffer.
  return new Ctor(bytes.slice(0, n * size).buffer, 0, n);
}

const ITEMSIZE = { float32: 4, float16: 2, uint8: 1 };

/** Decode a packed array {dtype, shape, scale, transform, data} into a Float32Array (C order). */
export function decodeArray(p) {
  if (!p || !p.shape) throw new Error("missing array payload");
  const n = p.shape.reduce((a, b) => a * b, 1);
  const item = ITEMSIZE[p.dtype];
  if (!item) throw new Error(`unknown dtype ${JSON.stringify(p.dtype)}`);
  const bytes = asBytes(p.data);
  if (bytes.byteLength < n * item) {
    throw new Error(`buffer of ${bytes.byteLength} bytes is too small for ${p.dtype}[${p.shape}]`);
  }
  if (p.dtype === "float32") return typedView(bytes, Float32Array, n);
  const out = new Float32Array(n);
  if (p.dtype === "float16") {
    const u16 = typedView(bytes, Uint16Array, n);
    const t = f16Table();
    for (let i = 0; i < n; i++) out[i] = t[u16[i]];
    return out;
  }
  const lut = new Float32Array(256);
  const scale = p.scale || 1;
  for (let q = 0; q < 256; q++) {
    const u = q / 255;
    lut[q] = (p.transform === "sqrt" ? u * u : u) * scale;
  }
  for (let i = 0; i < n; i++) out[i] = lut[bytes[i]];
  return out;
}

const INT_CTORS = { uint8: Uint8Array, uint16: Uint16Array, int16: Int16Array, int32: Int32Array, uint32: Uint32Array };

/** Decode an integer buffer {dtype, shape, data} (mirror of _tag_state.packed_int). */
export function decodeInts(p) {
  if (!p || !p.shape) throw new Error("missing integer payload");
  const Ctor = INT_CTORS[p.dtype];
  if (!Ctor) throw new Error(`unknown integer dtype ${JSON.stringify(p.dtype)}`);
  const n = p.shape.reduce((a, b) => a * b, 1);
  const bytes = asBytes(p.data);
  if (bytes.byteLength < n * Ctor.BYTES_PER_ELEMENT) {
    throw new Error(`buffer of ${bytes.byteLength} bytes is too small for ${p.dtype}[${p.shape}]`);
  }
  return typedView(bytes, Ctor, n);
}

// ------------------------------------------------------------------------------------------------ colour maps
// Viridis (matplotlib), 11 stops, interpolated: perceptually uniform, readable in light and dark themes,
// colour-blind safe.
const VIRIDIS = [
  [68, 1, 84], [72, 36, 117], [65, 68, 135], [53, 95, 141], [42, 120, 142], [33, 145, 140],
  [34, 168, 132], [68, 191, 112], [122, 209, 81], [189, 223, 38], [253, 231, 37],
];

/** Viridis at t in [0, 1] (clamped), as [r, g, b] integers. */
export function viridis(t) {
  const x = Math.max(0, Math.min(1, t)) * (VIRIDIS.length - 1);
  const j = Math.min(VIRIDIS.length - 2, Math.floor(x)), f = x - j;
  return [0, 1, 2].map((c) => Math.round(VIRIDIS[j][c] + f * (VIRIDIS[j + 1][c] - VIRIDIS[j][c])));
}

/** Viridis sampled at 256 steps, [r, g, b] per entry (flat): the table that image-drawing loops index. */
export const VIRIDIS_LUT = (() => {
  const lut = new Uint8ClampedArray(256 * 3);
  for (let i = 0; i < 256; i++) lut.set(viridis(i / 255), 3 * i);
  return lut;
})();

/** Index in VIRIDIS_LUT of t in [0, 1]; values <= 0 and NaN give 0, values >= 1 give 255. */
export function lutIndex(t) {
  if (!(t > 0)) return 0; // also NaN -> 0 (callers treat NaN separately where it matters)
  return t >= 1 ? 255 : Math.round(t * 255);
}

/** CSS colour of viridis at t (through VIRIDIS_LUT). */
export function rgb(t) {
  const i = 3 * lutIndex(t);
  return `rgb(${VIRIDIS_LUT[i]}, ${VIRIDIS_LUT[i + 1]}, ${VIRIDIS_LUT[i + 2]})`;
}

/** CSS colour of an [r, g, b] triple. */
export const cssRgb = (c) => `rgb(${c[0]}, ${c[1]}, ${c[2]})`;

/** [r, g, b] of a computed CSS colour "rgb(...)" / "rgba(...)", or `fallback`. */
export function parseRgb(s, fallback) {
  const m = /rgba?\(([^)]+)\)/.exec(s || "");
  if (!m) return fallback;
  return m[1].split(",").slice(0, 3).map((x) => Number(x));
}

/** Categorical colours: Okabe-Ito (colour-blind safe) first, then a few distinct extras. */
export const CATEGORICAL = [[213, 94, 0], [0, 114, 178], [0, 158, 115], [230, 159, 0], [204, 121, 167],
  [86, 180, 233], [140, 109, 49], [0, 0, 0], [240, 228, 66], [120, 120, 200], [200, 60, 60], [60, 60, 60]];

// ------------------------------------------------------------------------------------------------ DOM helpers
const KEYBOARD_TAGS = new Set(["input", "select", "button"]);

/** A new element with a class and attributes. */
export function h(tag, cls, attrs) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (attrs) for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, String(v));
  // Keys typed in our controls are ours: JupyterLab (Lumino) skips its notebook shortcuts (arrow keys move
  // cells in command mode) for elements carrying this attribute.
  if (KEYBOARD_TAGS.has(tag) || (attrs && "tabindex" in attrs)) e.setAttribute("data-lm-suppress-shortcuts", "true");
  return e;
}

/** A new element holding the string `s` as text. */
export function text(tag, cls, s, attrs) {
  const e = h(tag, cls, attrs);
  e.textContent = s; // untrusted strings only ever go through textContent
  return e;
}

/** The visible symbol of each whitespace or control character that has its own (mirrors WHITESPACE_SYMBOLS in
 * sinkwidgets/_text.py). */
const WHITESPACE_SYMBOLS = new Map([[" ", "\u2423"], ["\n", "\u23ce"], ["\t", "\u21e5"], ["\r", "\u240d"],
  ["\x7f", "\u2421"], ["\u00a0", "\u237d"]]);

function whitespaceSymbol(ch) {
  const sym = WHITESPACE_SYMBOLS.get(ch);
  if (sym !== undefined) return sym;
  const c = ch.codePointAt(0);
  if (c < 0x20) return String.fromCharCode(0x2400 + c); // other C0 controls: the control pictures
  // Python's str.isspace(): JS \s without U+FEFF, plus U+0085
  if ((/^\s$/u.test(ch) && ch !== "\ufeff") || ch === "\x85") return "\u2423";
  return null;
}

/** A token as shown to people, exactly as sinkwidgets._text.show_token (Python): space ␣, newline ⏎, tab ⇥, CR ␍,
 * other C0 controls ␀…␟, DEL ␡, no-break space ⍽, other Unicode spaces ␣; a run of more than maxRun identical
 * whitespace characters as symbol×count ("␣×90"); the empty string as ∅. Display only: the result is set with
 * textContent or fillText, never parsed as HTML. */
export function showToken(s, maxRun = 4) {
  const chars = Array.from(String(s)); // code points, as Python iterates a str
  if (!chars.length) return "\u2205";
  let out = "";
  for (let i = 0; i < chars.length;) {
    const ch = chars[i], sym = whitespaceSymbol(ch);
    if (sym === null) { out += ch; i++; continue; }
    let j = i + 1;
    while (j < chars.length && chars[j] === ch) j++;
    const run = j - i;
    out += maxRun && run > maxRun ? `${sym}\u00d7${run}` : sym.repeat(run);
    i = j;
  }
  return out;
}

/** showToken(s) cut to at most n characters (with an ellipsis). */
export function clip(s, n) {
  s = showToken(s);
  return s.length > n ? s.slice(0, n - 1) + "…" : s;
}

/** A number with `digits` decimals; tiny non-zero values in exponent form; null and NaN as "n/a". */
export function fmt(v, digits = 3) {
  if (v == null || Number.isNaN(v)) return "n/a";
  if (v !== 0 && Math.abs(v) < 10 ** -digits) return Number(v).toExponential(1);
  return Number(v).toFixed(digits);
}

/** Size a canvas to w × hgt CSS pixels at the device pixel ratio; returns its 2-D context in CSS pixels. */
export function setupCanvas(canvas, w, hgt) {
  const dpr = window.devicePixelRatio || 1;
  canvas.width = Math.round(w * dpr);
  canvas.height = Math.round(hgt * dpr);
  canvas.style.width = `${w}px`;
  canvas.style.height = `${hgt}px`;
  const ctx = canvas.getContext("2d");
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  return ctx;
}

/** A computed colour of `node` (e.g. "color", "backgroundColor"), or `fallback` when transparent. */
export function themeColor(node, prop, fallback) {
  const v = getComputedStyle(node)[prop];
  return v && v !== "rgba(0, 0, 0, 0)" && v !== "transparent" ? v : fallback;
}

/** A <select> of `options` ([value, name] or [value, name, disabled]) set to `value`. */
export function menu(options, value, label, testid) {
  const s = h("select", "sw-select", { "data-testid": testid, "aria-label": label });
  for (const [v, name, disabled] of options) {
    const o = document.createElement("option");
    o.value = String(v);
    o.textContent = name;
    if (disabled) o.disabled = true;
    s.appendChild(o);
  }
  s.value = String(value);
  return s;
}

/** A control with its name in front, as one <label>. */
export function labelled(name, control) {
  const l = h("label", "sw-control");
  l.append(text("span", "sw-control-name", name), control);
  return l;
}

export function button(label, aria, testid) {
  return text("button", "sw-button", label, { type: "button", "aria-label": aria, title: aria, "data-testid": testid });
}

/** A function that counts draws in `root.dataset.draws`, once per microtask however many parts drew. */
export function drawCounter(root) {
  let pending = false;
  return () => {
    if (pending) return;
    pending = true;
    queueMicrotask(() => { pending = false; root.dataset.draws = String((+root.dataset.draws || 0) + 1); });
  };
}

// ------------------------------------------------------------------------------------------------ PNG
/** Let the browser save `blob` as `filename`. */
export function downloadBlob(blob, filename) {
  const a = document.createElement("a");
  a.href = URL.createObjectURL(blob);
  a.download = filename;
  a.click();
  setTimeout(() => URL.revokeObjectURL(a.href), 10000);
}

/** Answer the kernel's {type: "png_request", id}: the PNG from `makePng()` as one binary buffer, or the error. */
export function sendPng(model, id, makePng, root) {
  makePng()
    .then((blob) => blob.arrayBuffer())
    .then((buf) => {
      model.send({ type: "png", id, ok: true }, undefined, [buf]);
      root.dataset.pngSent = String((+root.dataset.pngSent || 0) + 1);
    })
    .catch((err) => model.send({ type: "png", id, ok: false, error: String(err && err.message) }));
}

// ------------------------------------------------------------------------------------------------ kernel requests
let REQUEST_SEQ = 0;

/** Requests to the kernel over the widget's custom messages: `request(content, timeoutMs)` sends
 *  `{...content, id}` and resolves with `{msg, buffers}` when the kernel answers with the same `id` (rejects after
 *  `timeoutMs`); `dispose()` stops listening. Answers without a pending id are left to the widget's own handlers. */
export function kernelRequests(model) {
  const prefix = `r${++REQUEST_SEQ}-${Math.random().toString(36).slice(2, 8)}`;
  const pending = new Map();
  let seq = 0;
  const onMsg = (msg, buffers) => {
    if (!msg || typeof msg !== "object" || msg.id == null || !pending.has(msg.id)) return;
    const p = pending.get(msg.id);
    pending.delete(msg.id);
    clearTimeout(p.timer);
    p.resolve({ msg, buffers: buffers || [] });
  };
  model.on("msg:custom", onMsg);
  return {
    request(content, timeoutMs = 30000) {
      const id = `${prefix}:${++seq}`;
      return new Promise((resolve, reject) => {
        const timer = setTimeout(() => {
          pending.delete(id);
          reject(new Error(`no answer to ${content.type} within ${timeoutMs / 1000} s`));
        }, timeoutMs);
        pending.set(id, { resolve, timer });
        model.send({ ...content, id });
      });
    },
    dispose() {
      model.off("msg:custom", onMsg);
      for (const p of pending.values()) clearTimeout(p.timer);
      pending.clear();
    },
  };
}

/** A progress line for a kernel job: `start(label)` shows "running <label> in the kernel… 1.2 s" (updated every
 *  200 ms) until `stop()`; `cancelling()` switches the wording; `set(msg, state)` shows a final line. The line's
 *  `data-state` is "running", "done", "cancelled" or "error" (text only: messages may hold token strings). */
export function progressLine(el) {
  let timer = null, t0 = 0, label = "", cancel = false;
  const set = (msg, state) => {
    el.textContent = msg;
    el.dataset.state = state;
  };
  const tick = () => set(cancel
    ? `cancelling ${label}: it stops after the current forward pass… ${((performance.now() - t0) / 1000).toFixed(1)} s`
    : `running ${label} in the kernel… ${((performance.now() - t0) / 1000).toFixed(1)} s`, "running");
  return {
    set,
    start(what) { label = what; cancel = false; t0 = performance.now(); tick(); clearInterval(timer); timer = setInterval(tick, 200); },
    cancelling() { cancel = true; tick(); },
    elapsed() { return (performance.now() - t0) / 1000; },
    stop() { clearInterval(timer); timer = null; },
  };
}

// ------------------------------------------------------------------------------------------------ errors
/** The visible message of a failure (role alert; `testid` names it for tests). */
export function errorBox(err, testid = "sw-error") {
  return text("div", "sw-error", `sinkwidgets could not draw this view: ${(err && err.message) || err}`,
    { role: "alert", "data-testid": testid });
}

/** `build(model, host)`, or on an exception: logged, and shown in `host` instead of a blank. */
export function buildOrShowError(build, model, host, testid) {
  try {
    return build(model, host);
  } catch (err) {
    console.error("sinkwidgets:", err);
    host.appendChild(errorBox(err, testid));
    return undefined;
  }
}

// ------------------------------------------------------------------------------------------------ offline page
/** Base64 text as bytes. */
export function b64ToBytes(s) {
  if (typeof Uint8Array.fromBase64 === "function") return Uint8Array.fromBase64(s);
  const bin = atob(s);
  const out = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
  return out;
}

/** A copy of `obj` with every {"$buffer": i} (standalone._extract_buffers) replaced by bufs[i]. */
export function restoreBuffers(obj, bufs) {
  if (Array.isArray(obj)) return obj.map((v) => restoreBuffers(v, bufs));
  if (obj && typeof obj === "object") {
    if (Object.keys(obj).length === 1 && "$buffer" in obj) return bufs[obj.$buffer];
    const out = {};
    for (const [k, v] of Object.entries(obj)) out[k] = restoreBuffers(v, bufs);
    return out;
  }
  return obj;
}

/** A stand-in for the widget model in an offline page: the get/set/on/off/save_changes/send API of anywidget's
 *  model over a plain state object. Each widget subclasses it to answer what the kernel would. */
export class LocalModel {
  constructor(state) {
    this.state = state;
    this.handlers = new Map();
  }
  get(k) { return this.state[k]; }
  set(k, v) {
    this.state[k] = v;
    this.emit(`change:${k}`);
  }
  on(evt, fn) {
    if (!this.handlers.has(evt)) this.handlers.set(evt, new Set());
    this.handlers.get(evt).add(fn);
  }
  off(evt, fn) { if (this.handlers.has(evt)) this.handlers.get(evt).delete(fn); }
  emit(evt, ...args) { for (const fn of [...(this.handlers.get(evt) || [])]) fn(...args); }
  save_changes() {}
  send() {}
}

/** Render a widget in a plain page from the state embedded by standalone.offline_page: the base64 buffers are
 *  decoded and put back in place, `makeModel(full)` builds the LocalModel (kept as `window[name]` for debugging
 *  and tests) and `render({model, el})` draws it. A failure is shown in `host`, never a blank page. */
export function mountOffline(host, state, buffersB64, { makeModel, render, name, testid }) {
  try {
    const full = restoreBuffers(state, buffersB64.map(b64ToBytes));
    const model = makeModel(full);
    window[name] = model;
    return render({ model, el: host });
  } catch (err) {
    console.error("sinkwidgets:", err);
    host.appendChild(errorBox(err, testid));
    return undefined;
  }
}
