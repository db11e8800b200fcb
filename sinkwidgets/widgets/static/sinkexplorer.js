import {
  LocalModel, VIRIDIS_LUT, buildOrShowError, button, clip, decodeArray, downloadBlob, drawCounter,
  errorBox, fmt, h, labelled, lutIndex, menu, mountOffline, rgb, sendPng, setupCanvas, showToken, text, themeColor,
} from "./sinkwidgets.js";
// SinkExplorer: SinkGrid, AttentionHeatmap, TokenStrip and the linked SinkExplorer.
//
// The second half of one ES module: the helpers imported above come from sinkwidgets.js, and
// sinkwidgets/widgets/_assets.py: esm("sinkexplorer") puts both files into one module (the import line is
// dropped there). Used two ways: by anywidget in a notebook (default export `render`), and inlined into an
// offline HTML file (`mountStandalone`). Nothing fetched from the network.
//
// Rules kept throughout (besides those of sinkwidgets.js):
// * The kernel keeps the attention maps: the heatmap shows a max-pooled overview, then asks for tiles of the
//   region on screen (custom messages {type: "tile"} answered with one binary buffer).

// ------------------------------------------------------------------------------------------------ colour
const NAN_RGB = [150, 150, 150];
const SINK_RGB = "rgb(230, 85, 13)"; // sink marks: orange, distinct from every viridis colour
const LOG_DECADES = 4; // log colour scale spans [vmax / 10^4, vmax]

/** Colour-scale position in [0, 1] of an attention value. */
function scalePos(v, vmax, log) {
  if (!(v > 0)) return 0;
  if (!log) return v / vmax;
  return 1 + Math.log10(v / vmax) / LOG_DECADES;
}

// ------------------------------------------------------------------------------------------------ store
const METRICS = [
  ["alpha", "α of selected token"],
  ["first_token_mass", "first-token mass"],
  ["sink_flag", "sink flag (α > ε)"],
  ["sinks_per_head", "sinks per head (α > ε)"],
  ["entropy", "attention entropy"],
];

let VIEW_SEQ = 0;

/** Decoded summary data + helpers shared by the parts of one view. */
function makeStore(model) {
  const S = model.get("_summary");
  if (!S || !S.alpha) throw new Error("no data: this widget was created without a trace");
  const { L, H, T } = S;
  const base = { alpha: decodeArray(S.alpha), ftm: decodeArray(S.first_token_mass), ent: decodeArray(S.entropy) };
  let { alpha, ftm, ent } = base; // the arrays shown: before, after or after − before (see refreshView)
  let expMode = "before", expAfter = null;
  const expDecoded = new WeakMap(); // experiment state → its decoded arrays
  const kept = decodeArray(S.kept);
  const tokens = model.get("_tokens") || [];
  if (tokens.length !== T) throw new Error(`${tokens.length} tokens but T=${T}`);
  if (alpha.length !== L * H * T) throw new Error(`α has ${alpha.length} values, expected L*H*T = ${L * H * T}`);
  // Keys seen by too few queries are not counted as sinks (same rule as sinkwidgets.metrics).
  const valid = new Uint8Array(T);
  const nq0 = S.causal ? T : T;
  const minQ = Math.min(S.min_queries || 1, nq0);
  for (let k = 0; k < T; k++) valid[k] = (S.causal ? T - k : T) >= minQ ? 1 : 0;
  const maxCache = new Map();
  const viewId = `v${++VIEW_SEQ}-${Math.random().toString(36).slice(2, 8)}`;
  let seq = 0;
  const pending = new Map();
  const disposers = [];
  const customHandlers = [];

  const onCustom = (msg, buffers) => {
    if (!msg || typeof msg !== "object") return;
    if (msg.id != null && pending.has(msg.id)) {
      const p = pending.get(msg.id);
      pending.delete(msg.id);
      clearTimeout(p.timer);
      p.resolve({ msg, buffers: buffers || [] });
      return;
    }
    for (const fn of customHandlers) fn(msg, buffers || []);
  };
  model.on("msg:custom", onCustom);
  disposers.push(() => model.off("msg:custom", onCustom));

  /** Grid values of a metric on one set of arrays {alpha, ftm, ent}. */
  function metricOf(A, name, eps, tk) {
    const v = new Float32Array(L * H);
    let lo = 0, hi = 1, label = "";
    if (name === "first_token_mass") { v.set(A.ftm); label = "first-token mass"; }
    else if (name === "entropy") {
      v.set(A.ent); hi = 0;
      for (const x of A.ent) if (x > hi) hi = x;
      hi = hi || 1; label = "entropy (nats)";
    } else if (name === "sinks_per_head") {
      hi = 1;
      for (let i = 0; i < L * H; i++) {
        const b = i * T;
        let c = 0;
        for (let k = 0; k < T; k++) if (A.alpha[b + k] > eps && valid[k]) c++;
        v[i] = c;
        if (c > hi) hi = c;
      }
      label = `sinks per head (α > ${eps.toFixed(2)})`;
    } else if (name === "sink_flag") {
      for (let i = 0; i < L * H; i++) v[i] = A.alpha[i * T + tk] > eps ? 1 : 0;
      label = `α[${tk}] > ${eps.toFixed(2)}`;
    } else {
      for (let i = 0; i < L * H; i++) v[i] = A.alpha[i * T + tk];
      label = `α of token ${tk}`;
    }
    return { values: v, lo, hi, label };
  }

  /** The decoded arrays of experiment state `e` (after the edit, aligned to these tokens) and their differences. */
  function decodeExperiment(e) {
    if (!expDecoded.has(e)) {
      const a = { alpha: decodeArray(e.alpha), ftm: decodeArray(e.first_token_mass), ent: decodeArray(e.entropy),
                  dnll: decodeArray(e.dnll) };
      if (a.alpha.length !== L * H * T) throw new Error(`experiment α has ${a.alpha.length} values, expected ${L * H * T}`);
      const sub = (x, y) => { const d = new Float32Array(x.length); for (let i = 0; i < x.length; i++) d[i] = x[i] - y[i]; return d; };
      a.diff = { alpha: sub(a.alpha, base.alpha), ftm: sub(a.ftm, base.ftm), ent: sub(a.ent, base.ent) };
      expDecoded.set(e, a);
    }
    return expDecoded.get(e);
  }

  const store = {
    model, L, H, T, kept, tokens, valid, causal: !!S.causal, modelName: S.model,
    get alpha() { return alpha; },
    get ftm() { return ftm; },
    get ent() { return ent; },
    get mode() { return expMode; },
    base,
    /** The experiment shown (its state and decoded arrays), or null. */
    experiment() {
      const list = model.get("_experiments") || [], i = model.get("experiment_index");
      return i >= 0 && i < list.length ? { state: list[i], data: decodeExperiment(list[i]) } : null;
    },
    /** Switch the arrays to the experiment view (experiment_index, experiment_view): before / after / diff. */
    refreshView() {
      const e = store.experiment(), v = model.get("experiment_view");
      expAfter = e ? e.data : null;
      expMode = e && (v === "after" || v === "diff") ? v : "before";
      const A = expMode === "after" ? expAfter : expMode === "diff" ? expAfter.diff : base;
      ({ alpha, ftm, ent } = A);
      maxCache.clear();
    },
    get: (k) => model.get(k),
    set(obj) {
      for (const [k, v] of Object.entries(obj)) model.set(k, v);
      model.save_changes();
    },
    on(names, fn) {
      // A new trace (SinkExplorer.set_trace) arrives as a new _summary and rebuilds the view (see render): this
      // view, built on the old one, ignores the changes that come with it.
      const guarded = (...args) => { if (model.get("_summary") === S) fn(...args); };
      for (const n of names.split(" ")) {
        model.on(`change:${n}`, guarded);
        disposers.push(() => model.off(`change:${n}`, guarded));
      }
    },
    onCustom(fn) { customHandlers.push(fn); },
    row(l, hd) { return alpha.subarray((l * H + hd) * T, (l * H + hd + 1) * T); },
    maxOverHeads(l) {
      if (!maxCache.has(l)) {
        const maxOf = (arr) => {
          const m = new Float32Array(T);
          for (let hd = 0; hd < H; hd++) {
            const r = arr.subarray((l * H + hd) * T, (l * H + hd + 1) * T);
            for (let k = 0; k < T; k++) if (r[k] > m[k]) m[k] = r[k];
          }
          return m;
        };
        let m;
        if (expMode === "diff") { // change of the max over heads: max(after) − max(before)
          const a = maxOf(expAfter.alpha), b = maxOf(base.alpha);
          m = new Float32Array(T);
          for (let k = 0; k < T; k++) m[k] = a[k] - b[k];
        } else m = maxOf(alpha);
        maxCache.set(l, m);
      }
      return maxCache.get(l);
    },
    isSink(v, k, eps) { return v > eps && valid[k] === 1; },
    /** Grid values [L*H] of a metric, with its colour range and a label (after − before in the diff view, on a
     *  range symmetric around 0). */
    metric(name, eps, token) {
      const tk = Math.max(0, Math.min(T - 1, token | 0));
      if (expMode !== "diff") {
        const m = metricOf({ alpha, ftm, ent }, name, eps, tk);
        if (expMode === "after") m.label += " (after the edit)";
        return m;
      }
      const a = metricOf(expAfter, name, eps, tk), b = metricOf(base, name, eps, tk);
      let top = 0;
      for (let i = 0; i < L * H; i++) { a.values[i] -= b.values[i]; top = Math.max(top, Math.abs(a.values[i])); }
      top = top || 1;
      return { values: a.values, lo: -top, hi: top, label: `Δ ${a.label} (after − before)` };
    },
    /** Ask the kernel for something; resolves with {msg, buffers} or rejects after `timeoutMs`. */
    request(content, timeoutMs = 30000) {
      const id = `${viewId}:${++seq}`;
      return new Promise((resolve, reject) => {
        const timer = setTimeout(() => {
          pending.delete(id);
          reject(new Error(`no answer to ${content.type} within ${timeoutMs / 1000} s`));
        }, timeoutMs);
        pending.set(id, { resolve, timer });
        model.send({ ...content, id });
      });
    },
    errorSink: null,
    /** Run fn; on an exception log it and show it in the widget instead of failing silently. */
    guard(fn) {
      try {
        return fn();
      } catch (err) {
        console.error("sinkwidgets:", err);
        if (store.errorSink) store.errorSink(err);
        return undefined;
      }
    },
    dispose() {
      for (const d of disposers.splice(0)) d();
      for (const p of pending.values()) clearTimeout(p.timer);
      pending.clear();
    },
  };
  return store;
}

// ------------------------------------------------------------------------------------------------ tooltip
function makeTooltip(root) {
  const tip = h("div", "sw-tooltip", { role: "status", "data-testid": "sw-tooltip" });
  tip.hidden = true;
  root.appendChild(tip);
  return {
    show(lines, clientX, clientY) {
      tip.replaceChildren(...lines.map((s) => text("div", "", s)));
      tip.hidden = false;
      const r = root.getBoundingClientRect();
      let x = clientX - r.left + 14, y = clientY - r.top + 14;
      const w = tip.offsetWidth;
      if (x + w > r.width) x = Math.max(0, clientX - r.left - w - 10);
      tip.style.left = `${x}px`;
      tip.style.top = `${y}px`;
    },
    hide() { tip.hidden = true; },
  };
}

// ------------------------------------------------------------------------------------------------ grid
function makeGrid(store, tooltip, report) {
  const { L, H } = store;
  const wrap = h("div", "sw-grid", { "data-testid": "sw-grid" });
  const caption = text("div", "sw-caption", "");
  const canvas = h("canvas", "sw-grid-canvas", {
    tabindex: 0, role: "grid", "data-testid": "sw-grid-canvas",
    "aria-label": `layers × heads grid (${L} × ${H}); arrow keys move the selected head`,
  });
  const legend = h("div", "sw-legend");
  const legendBar = h("canvas", "sw-legend-bar");
  const legendLo = text("span", "sw-legend-lo", "");
  const legendHi = text("span", "sw-legend-hi", "");
  legend.append(legendLo, legendBar, legendHi);
  wrap.append(caption, canvas, legend);

  const ML = 30, MT = 16;
  const cw = Math.max(10, Math.min(30, Math.round(270 / H)));
  const ch = Math.max(6, Math.min(20, Math.round(430 / L)));
  const W = ML + H * cw + 2, HT = MT + L * ch + 2;
  let draws = 0;
  let last = null;

  function draw() {
    const ctx = setupCanvas(canvas, W, HT);
    const fg = themeColor(wrap, "color", "#333");
    const name = store.get("metric"), eps = store.get("eps"), token = store.get("token");
    const m = store.metric(name, eps, token);
    last = m;
    const sel = [store.get("layer"), store.get("head")];
    for (let l = 0; l < L; l++) {
      for (let hd = 0; hd < H; hd++) {
        const v = m.values[l * H + hd];
        ctx.fillStyle = Number.isNaN(v) ? `rgb(${NAN_RGB})` : rgb((v - m.lo) / (m.hi - m.lo || 1));
        ctx.fillRect(ML + hd * cw, MT + l * ch, cw - 1, ch - 1);
        if (store.kept[l * H + hd] > 0.5) { // kept map: small corner mark
          ctx.fillStyle = "rgba(255, 255, 255, 0.85)";
          ctx.beginPath();
          ctx.moveTo(ML + hd * cw + cw - 1, MT + l * ch);
          ctx.lineTo(ML + hd * cw + cw - 1, MT + l * ch + Math.min(6, ch - 1));
          ctx.lineTo(ML + hd * cw + cw - 1 - Math.min(6, ch - 1), MT + l * ch);
          ctx.fill();
        }
      }
    }
    ctx.strokeStyle = fg;
    ctx.lineWidth = 2;
    ctx.strokeRect(ML + sel[1] * cw - 1, MT + sel[0] * ch - 1, cw + 1, ch + 1);
    ctx.fillStyle = fg;
    ctx.font = "10px sans-serif";
    ctx.textBaseline = "middle";
    ctx.textAlign = "right";
    const lstep = Math.max(1, Math.ceil(11 / ch));
    for (let l = 0; l < L; l += lstep) ctx.fillText(String(l), ML - 4, MT + l * ch + ch / 2);
    ctx.textAlign = "center";
    const hstep = Math.max(1, Math.ceil(16 / cw));
    for (let hd = 0; hd < H; hd += hstep) ctx.fillText(String(hd), ML + hd * cw + cw / 2, MT / 2);
    caption.textContent = `${m.label}: layers (rows) × heads (columns)`;
    // legend
    const lctx = setupCanvas(legendBar, 120, 10);
    for (let i = 0; i < 120; i++) { lctx.fillStyle = rgb(i / 119); lctx.fillRect(i, 0, 1, 10); }
    legendLo.textContent = fmt(m.lo, 2);
    legendHi.textContent = name === "sinks_per_head" ? String(m.hi) : fmt(m.hi, 2);
    draws++;
    Object.assign(canvas.dataset, {
      layer: sel[0], head: sel[1], metric: name, eps: eps.toFixed(2), token, draws,
      cellW: cw, cellH: ch, originX: ML, originY: MT, nLayers: L, nHeads: H,
      selectedValue: String(m.values[sel[0] * H + sel[1]]), view: store.mode,
    });
    report();
  }

  function hit(ev) {
    const r = canvas.getBoundingClientRect();
    const hd = Math.floor((ev.clientX - r.left - ML) / cw), l = Math.floor((ev.clientY - r.top - MT) / ch);
    return l >= 0 && l < L && hd >= 0 && hd < H ? [l, hd] : null;
  }

  canvas.addEventListener("click", (ev) => {
    const c = hit(ev);
    if (c) { store.set({ layer: c[0], head: c[1] }); canvas.focus(); }
  });
  canvas.addEventListener("mousemove", (ev) => {
    const c = hit(ev);
    if (!c) return tooltip.hide();
    const [l, hd] = c, i = l * H + hd, tk = store.get("token"), eps = store.get("eps");
    const row = store.row(l, hd);
    let n = 0;
    for (let k = 0; k < store.T; k++) if (store.isSink(row[k], k, eps)) n++;
    tooltip.show([
      `layer ${l} · head ${hd}${store.kept[i] > 0.5 ? " · map kept" : ""}`,
      `α of token ${tk} ${JSON.stringify(clip(store.tokens[tk], 16))}: ${fmt(row[tk])}`,
      `first-token mass: ${fmt(store.ftm[i])}`,
      `sinks (α > ${eps.toFixed(2)}): ${n}`,
      `entropy: ${fmt(store.ent[i], 2)} nats`,
    ], ev.clientX, ev.clientY);
  });
  canvas.addEventListener("mouseleave", () => tooltip.hide());
  canvas.addEventListener("keydown", (ev) => {
    let l = store.get("layer"), hd = store.get("head");
    const moves = { ArrowUp: [-1, 0], ArrowDown: [1, 0], ArrowLeft: [0, -1], ArrowRight: [0, 1],
                    PageUp: [-5, 0], PageDown: [5, 0] };
    if (ev.key in moves) {
      l = Math.max(0, Math.min(L - 1, l + moves[ev.key][0]));
      hd = Math.max(0, Math.min(H - 1, hd + moves[ev.key][1]));
    } else if (ev.key === "Home") { l = 0; hd = 0; }
    else if (ev.key === "End") { l = L - 1; hd = H - 1; }
    else return;
    ev.preventDefault();
    store.set({ layer: l, head: hd });
  });
  store.on("metric eps token layer head", () => store.guard(draw));
  return { el: wrap, canvas, draw, last: () => last };
}

// ------------------------------------------------------------------------------------------------ heatmap
const TILE_CACHE = 96; // tiles kept in the browser (128 KiB each at most): ~12 MiB
const MAX_INFLIGHT = 6; // concurrent tile requests: enough to fill a view in one or two round trips
const MIN_SPAN = 4; // smallest zoom: 4 tokens across

function makeHeatmap(store, tooltip, report) {
  const { T } = store;
  const S = Math.max(200, store.get("heatmap_size") || 512);
  const ML = 92, MT = 86, MR = 10, MB = 10, BAND = 7;
  const W = ML + S + MR, HT = MT + S + MB;
  const wrap = h("div", "sw-heatmap", { "data-testid": "sw-heatmap" });
  const head = h("div", "sw-hm-head");
  const title = text("span", "sw-hm-title", "");
  const status = text("span", "sw-hm-status", "", { "data-testid": "sw-hm-status", "aria-live": "polite" });
  const zoomOut = button("−", "zoom out (key -)", "sw-zoom-out");
  const zoomIn = button("+", "zoom in (key +)", "sw-zoom-in");
  const zoomReset = button("⟲", "show the whole map (key 0)", "sw-zoom-reset");
  const ctrls = h("span", "sw-hm-controls");
  ctrls.append(zoomOut, zoomIn, zoomReset);
  head.append(title, ctrls, status);
  const box = h("div", "sw-hm-box");
  const canvas = h("canvas", "sw-hm-canvas", {
    tabindex: 0, "data-testid": "sw-heatmap-canvas",
    "aria-label": "attention map, queries (rows) × keys (columns); +/- zoom, arrow keys pan, 0 resets",
  });
  const message = text("div", "sw-hm-message", "", { "data-testid": "sw-hm-message" });
  message.hidden = true;
  message.style.left = `${ML}px`;
  message.style.top = `${MT}px`;
  message.style.width = `${S}px`;
  box.append(canvas, message);
  wrap.append(head, box);

  let cur = null; // {layer, head, level, stride, rows, cols, vmax, data, canvas}
  const tiles = new Map(); // key -> tile, in LRU order
  const inflight = new Set();
  let tileError = null; // the last tile failure, kept in the status line until a tile arrives
  const failedTiles = new Set(); // keys refused once: not asked again (no request loop on an offline page)
  let curSource = "before"; // the map shown: "before", or "after:<id>" / "diff:<id>" of an experiment
  let view = { q0: 0, q1: T, k0: 0, k1: T };
  let draws = 0, requested = 0, received = 0, scaleSeen = null, rafPending = false;
  let viewTimer = null;

  function selection() { return [store.get("layer"), store.get("head")]; }
  function mapStatus(l, hd) {
    const m = store.get("_map") || {};
    return m.layer === l && m.head === hd ? m.status || "missing" : "loading";
  }

  function colorize(data, rows, cols, vmax, log) {
    const c = document.createElement("canvas");
    c.width = cols; c.height = rows;
    const cx = c.getContext("2d");
    const img = cx.createImageData(cols, rows);
    const px = img.data;
    for (let i = 0; i < rows * cols; i++) {
      const j = 3 * lutIndex(scalePos(data[i], vmax, log));
      px[4 * i] = VIRIDIS_LUT[j]; px[4 * i + 1] = VIRIDIS_LUT[j + 1]; px[4 * i + 2] = VIRIDIS_LUT[j + 2]; px[4 * i + 3] = 255;
    }
    cx.putImageData(img, 0, 0);
    return c;
  }

  function setMap() {
    const m = store.get("_map") || {};
    const [l, hd] = selection();
    if (m.layer !== l || m.head !== hd) return; // stale answer for a previous selection
    if ((m.source || "before") !== curSource) { // another map (before / after / |after − before|): other tiles
      curSource = m.source || "before";
      tiles.clear(); failedTiles.clear(); tileError = null;
    }
    const log = store.get("scale") === "log";
    if (m.overview) {
      const data = decodeArray(m.overview);
      cur = { layer: l, head: hd, level: m.level, stride: m.stride, rows: m.rows, cols: m.cols,
              vmax: m.vmax || 1, data, status: m.status };
      cur.canvas = colorize(data, m.rows, m.cols, cur.vmax, log);
      scaleSeen = log;
    } else {
      cur = { layer: l, head: hd, status: m.status, message: m.message };
    }
    schedule();
  }

  function recolor() {
    const log = store.get("scale") === "log";
    if (!cur || !cur.data || scaleSeen === log) return;
    cur.canvas = colorize(cur.data, cur.rows, cur.cols, cur.vmax, log);
    for (const t of tiles.values()) t.canvas = colorize(t.data, t.rows, t.cols, t.vmax, log);
    scaleSeen = log;
  }

  function schedule() {
    if (rafPending) return;
    rafPending = true;
    requestAnimationFrame(() => { rafPending = false; store.guard(draw); });
  }

  const X = (k) => ML + ((k - view.k0) * S) / (view.k1 - view.k0);
  const Y = (q) => MT + ((q - view.q0) * S) / (view.q1 - view.q0);

  /** Finest pyramid level whose cells still cover at least one device pixel (coarser = overview). */
  function neededLevel() {
    const dpr = window.devicePixelRatio || 1;
    const tpp = Math.max(view.q1 - view.q0, view.k1 - view.k0) / (S * dpr);
    return tpp <= 1 ? 0 : Math.ceil(Math.log2(tpp) - 1e-9);
  }

  function draw() {
    recolor();
    const ctx = setupCanvas(canvas, W, HT);
    const fg = themeColor(wrap, "color", "#333");
    const [l, hd] = selection();
    const eps = store.get("eps"), tk = store.get("token");
    const alphaRow = store.row(l, hd);
    const have = cur && cur.layer === l && cur.head === hd;
    ctx.fillStyle = "rgba(127, 127, 127, 0.12)";
    ctx.fillRect(ML, MT, S, S);
    let level = null, nTiles = 0;
    if (have && cur.canvas) {
      ctx.save();
      ctx.beginPath(); ctx.rect(ML, MT, S, S); ctx.clip();
      const s = cur.stride;
      // Nearest-neighbour while a cell spans >= 1 pixel (crisp cells); smoothing when the overview is
      // squeezed, so that no row or column (a sink!) is dropped by nearest-neighbour sampling.
      ctx.imageSmoothingEnabled = (S * s) / Math.max(view.q1 - view.q0, view.k1 - view.k0) < 1;
      ctx.drawImage(cur.canvas, view.k0 / s, view.q0 / s, (view.k1 - view.k0) / s, (view.q1 - view.q0) / s,
        ML, MT, S, S);
      level = neededLevel();
      // Finer tiles drawn over coarser ones: progressive refinement while tiles arrive.
      const mine = [...tiles.values()].filter((t) => t.layer === l && t.head === hd && t.level >= level &&
        t.level < cur.level && t.k1 > view.k0 && t.k0 < view.k1 && t.q1 > view.q0 && t.q0 < view.q1);
      mine.sort((a, b) => b.level - a.level);
      for (const t of mine) {
        const span = 1 << t.level;
        ctx.drawImage(t.canvas, X(t.k0), Y(t.q0), X(t.k0 + t.cols * span) - X(t.k0), Y(t.q0 + t.rows * span) - Y(t.q0));
        if (t.level === level) nTiles++;
      }
      ctx.restore();
      message.hidden = true;
    } else {
      // No map: α per key as a column summary, and a clear note saying why.
      const span = view.k1 - view.k0;
      for (let k = Math.floor(view.k0); k < Math.ceil(view.k1); k++) {
        const v = alphaRow[k];
        const x0 = X(k), x1 = X(k + 1);
        const bh = Math.max(1, Math.sqrt(Math.max(0, v)) * (S - 4));
        ctx.fillStyle = rgb(Math.sqrt(Math.max(0, v)));
        ctx.fillRect(x0, MT + S - bh, Math.max(1, x1 - x0 - (span < 200 ? 1 : 0)), bh);
      }
      const m = store.get("_map") || {};
      const pendingSel = m.layer !== l || m.head !== hd;
      message.textContent = pendingSel
        ? `loading layer ${l}, head ${hd}…`
        : (m.message || `map not kept: trace with keep_maps=[${l}]`) + (m.status === "missing" ? "" : "");
      message.hidden = false;
    }
    // sink columns: α > ε (keys seen by enough queries), marked in a band above the map
    ctx.fillStyle = SINK_RGB;
    let nSinks = 0;
    const kStart = Math.max(0, Math.floor(view.k0)), kEnd = Math.min(T, Math.ceil(view.k1));
    for (let k = kStart; k < kEnd; k++) {
      if (store.isSink(alphaRow[k], k, eps)) {
        const x0 = X(k), x1 = X(k + 1);
        ctx.fillRect(x0, MT - BAND - 1, Math.max(2, x1 - x0), BAND);
        nSinks++;
      }
    }
    // selected token: outline its row and column
    ctx.strokeStyle = fg;
    ctx.lineWidth = 1;
    ctx.save();
    ctx.beginPath(); ctx.rect(ML - 1, MT - 1, S + 2, S + 2); ctx.clip();
    if (tk + 1 > view.k0 && tk < view.k1) ctx.strokeRect(X(tk) + 0.5, MT + 0.5, Math.max(1, X(tk + 1) - X(tk)) - 1, S - 1);
    if (tk + 1 > view.q0 && tk < view.q1) ctx.strokeRect(ML + 0.5, Y(tk) + 0.5, S - 1, Math.max(1, Y(tk + 1) - Y(tk)) - 1);
    ctx.restore();
    drawAxes(ctx, fg);
    const which = curSource.startsWith("after") ? " · after the edit"
      : curSource.startsWith("diff") ? " · |after − before|" : "";
    title.textContent = `layer ${l} · head ${hd} · queries × keys · ${T} tokens${which}`;
    const res = have && cur.canvas
      ? (level < cur.level ? `tiles 1:${1 << level} (${nTiles} shown)` : `overview 1:${cur.stride}`) : "α per key";
    const failed = tileError && have && cur.canvas && level < cur.level
      ? `tiles unavailable (${tileError}); showing the overview · ` : "";
    status.textContent = `${failed}${res} · ${store.get("scale")} scale · ${nSinks} sink column${nSinks === 1 ? "" : "s"} in view`;
    draws++;
    Object.assign(canvas.dataset, {
      layer: l, head: hd, draws, status: have ? cur.status : mapStatus(l, hd), source: curSource.split(":")[0],
      view: [view.q0, view.q1, view.k0, view.k1].map((v) => Math.round(v * 100) / 100).join(","),
      level: level == null ? "" : level, overviewLevel: have && cur.canvas ? cur.level : "",
      tilesShown: nTiles, tilesRequested: requested, tilesReceived: received, sinks: nSinks,
      scale: store.get("scale"), token: tk, vmax: have && cur.vmax ? cur.vmax : "", originX: ML, originY: MT, size: S,
    });
    if (have && cur.canvas) requestTiles(level);
    report();
  }

  function drawAxes(ctx, fg) {
    ctx.fillStyle = fg;
    ctx.font = "10px sans-serif";
    const span = view.q1 - view.q0, cell = S / span;
    let step = 1;
    for (const s of [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000, 50000]) {
      step = s;
      if (s * cell >= 12) break;
    }
    const labelOf = (i) => (step === 1 ? clip(store.tokens[i], 12) : `${i} ${clip(store.tokens[i], 6)}`);
    // query labels (rows), left
    ctx.textAlign = "right"; ctx.textBaseline = "middle";
    for (let q = Math.ceil(view.q0 / step) * step; q < view.q1; q += step) {
      if (q >= T) break;
      ctx.fillText(labelOf(q), ML - 4, Y(q + 0.5));
    }
    // key labels (columns), top, rotated
    ctx.textAlign = "left"; ctx.textBaseline = "middle";
    const kspan = view.k1 - view.k0, kcell = S / kspan;
    let kstep = 1;
    for (const s of [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000, 50000]) {
      kstep = s;
      if (s * kcell >= 12) break;
    }
    const klabel = (i) => (kstep === 1 ? clip(store.tokens[i], 12) : `${i} ${clip(store.tokens[i], 6)}`);
    for (let k = Math.ceil(view.k0 / kstep) * kstep; k < view.k1; k += kstep) {
      if (k >= T) break;
      ctx.save();
      ctx.translate(X(k + 0.5), MT - BAND - 4);
      ctx.rotate(-Math.PI / 3);
      ctx.fillText(klabel(k), 0, 0);
      ctx.restore();
    }
    ctx.textAlign = "left";
    ctx.fillText("keys →", 2, 10);
    ctx.save(); ctx.translate(8, MT + 40); ctx.rotate(Math.PI / 2); ctx.fillText("queries →", 0, 0); ctx.restore();
  }

  function requestTiles(level) {
    if (!cur || !cur.canvas || level >= cur.level) return;
    const span = store.get("_map").tile << level;
    const t0 = Math.floor(view.q0 / span), t1 = Math.floor((Math.min(T, view.q1) - 1e-9) / span);
    const u0 = Math.floor(view.k0 / span), u1 = Math.floor((Math.min(T, view.k1) - 1e-9) / span);
    const want = [];
    for (let ty = Math.max(0, t0); ty <= t1; ty++) {
      for (let tx = Math.max(0, u0); tx <= u1; tx++) {
        if (store.causal && tx * span > Math.min(T, (ty + 1) * span) - 1) continue; // above the diagonal: all 0
        const key = `${cur.layer},${cur.head},${level},${ty},${tx}`;
        if (tiles.has(key)) { const t = tiles.get(key); tiles.delete(key); tiles.set(key, t); continue; }
        if (!inflight.has(key) && !failedTiles.has(key)) want.push([key, ty, tx]);
      }
    }
    // nearest the view centre first
    const cq = (view.q0 + view.q1) / 2 / span, ck = (view.k0 + view.k1) / 2 / span;
    want.sort((a, b) => Math.hypot(a[1] + 0.5 - cq, a[2] + 0.5 - ck) - Math.hypot(b[1] + 0.5 - cq, b[2] + 0.5 - ck));
    for (const [key, ty, tx] of want) {
      if (inflight.size >= MAX_INFLIGHT) break;
      inflight.add(key);
      requested++;
      const { layer, head: hd, vmax } = cur;
      const source = curSource;
      store.request({ type: "tile", layer, head: hd, level, ty, tx, source })
        .then(({ msg, buffers }) => {
          inflight.delete(key);
          if (source !== curSource) return; // the map shown changed meanwhile
          if (!msg.ok) throw new Error(msg.error || "tile refused");
          const data = decodeArray({ ...msg, data: buffers[0] });
          const [rows, cols] = msg.shape;
          const t = { layer, head: hd, level, ty, tx, rows, cols, vmax, data,
                      q0: msg.q0, q1: msg.q1, k0: msg.k0, k1: msg.k1,
                      canvas: colorize(data, rows, cols, vmax, store.get("scale") === "log") };
          tiles.set(key, t);
          tileError = null;
          received++;
          while (tiles.size > TILE_CACHE) tiles.delete(tiles.keys().next().value);
          schedule();
        })
        .catch((err) => {
          inflight.delete(key);
          tileError = err.message;
          failedTiles.add(key);
          canvas.dataset.tileError = err.message;
          schedule(); // redraw: the status line says why the overview stays
        });
    }
  }

  // ---- zoom and pan (view is in token units; zoom keeps the point under the cursor fixed)
  function setView(v, sync = true) {
    let { q0, q1, k0, k1 } = v;
    const clampSpan = (a, b) => {
      let s = Math.max(MIN_SPAN, Math.min(T, b - a));
      a = Math.max(0, Math.min(T - s, a));
      return [a, a + s];
    };
    [q0, q1] = clampSpan(q0, q1);
    [k0, k1] = clampSpan(k0, k1);
    view = { q0, q1, k0, k1 };
    schedule();
    if (sync) {
      // Debounced: the kernel hears of the view 250 ms after the last change. Until then the local view
      // is newer than anything the model holds (e.g. the kernel's echo of an earlier view), see store.on("view").
      clearTimeout(viewTimer);
      viewTimer = setTimeout(() => { viewTimer = null; store.set({ view: [q0, q1, k0, k1] }); }, 250);
    }
  }
  function zoom(f, cq, ck) {
    if (cq == null) { cq = (view.q0 + view.q1) / 2; ck = (view.k0 + view.k1) / 2; }
    setView({ q0: cq - (cq - view.q0) / f, q1: cq + (view.q1 - cq) / f,
              k0: ck - (ck - view.k0) / f, k1: ck + (view.k1 - ck) / f });
  }
  const reset = () => setView({ q0: 0, q1: T, k0: 0, k1: T });
  function tokenAt(ev) {
    const r = canvas.getBoundingClientRect();
    const x = ev.clientX - r.left - ML, y = ev.clientY - r.top - MT;
    return { x, y, k: view.k0 + (x / S) * (view.k1 - view.k0), q: view.q0 + (y / S) * (view.q1 - view.q0),
             inside: x >= 0 && y >= 0 && x < S && y < S };
  }
  canvas.addEventListener("wheel", (ev) => {
    const p = tokenAt(ev);
    if (!p.inside) return;
    ev.preventDefault();
    zoom(Math.exp(-ev.deltaY * 0.002), p.q, p.k);
  }, { passive: false });
  let drag = null;
  canvas.addEventListener("mousedown", (ev) => {
    const p = tokenAt(ev);
    if (p.inside) drag = { x: ev.clientX, y: ev.clientY, view: { ...view }, moved: false };
  });
  window.addEventListener("mousemove", onDrag);
  window.addEventListener("mouseup", onUp);
  function onDrag(ev) {
    if (!drag) return;
    const dx = ev.clientX - drag.x, dy = ev.clientY - drag.y;
    if (Math.abs(dx) + Math.abs(dy) > 3) drag.moved = true;
    const v = drag.view, fk = (v.k1 - v.k0) / S, fq = (v.q1 - v.q0) / S;
    setView({ q0: v.q0 - dy * fq, q1: v.q1 - dy * fq, k0: v.k0 - dx * fk, k1: v.k1 - dx * fk });
  }
  function onUp(ev) {
    if (drag && !drag.moved) {
      const p = tokenAt(ev);
      if (p.inside) store.set({ token: Math.max(0, Math.min(T - 1, Math.floor(p.k))) });
    }
    drag = null;
  }
  canvas.addEventListener("dblclick", reset);
  canvas.addEventListener("keydown", (ev) => {
    const pan = 0.1;
    const dq = (view.q1 - view.q0) * pan, dk = (view.k1 - view.k0) * pan;
    const acts = {
      "+": () => zoom(2), "=": () => zoom(2), "-": () => zoom(0.5), "0": reset,
      ArrowLeft: () => setView({ ...view, k0: view.k0 - dk, k1: view.k1 - dk }),
      ArrowRight: () => setView({ ...view, k0: view.k0 + dk, k1: view.k1 + dk }),
      ArrowUp: () => setView({ ...view, q0: view.q0 - dq, q1: view.q1 - dq }),
      ArrowDown: () => setView({ ...view, q0: view.q0 + dq, q1: view.q1 + dq }),
    };
    if (acts[ev.key]) { ev.preventDefault(); acts[ev.key](); }
  });
  zoomIn.addEventListener("click", () => zoom(2));
  zoomOut.addEventListener("click", () => zoom(0.5));
  zoomReset.addEventListener("click", reset);
  canvas.addEventListener("mousemove", (ev) => {
    if (drag) return;
    const p = tokenAt(ev);
    if (!p.inside) return tooltip.hide();
    const q = Math.min(T - 1, Math.floor(p.q)), k = Math.min(T - 1, Math.floor(p.k));
    const [l, hd] = selection();
    const lines = [`query ${q} ${JSON.stringify(clip(store.tokens[q], 20))}`,
                   `key ${k} ${JSON.stringify(clip(store.tokens[k], 20))}`];
    if (cur && cur.data && cur.layer === l && cur.head === hd) {
      let best = null;
      for (const t of tiles.values()) {
        if (t.layer !== l || t.head !== hd || q < t.q0 || q >= t.q1 || k < t.k0 || k >= t.k1) continue;
        if (!best || t.level < best.level) best = t;
      }
      if (best) {
        const s = 1 << best.level;
        const v = best.data[Math.floor((q - best.q0) / s) * best.cols + Math.floor((k - best.k0) / s)];
        lines.push(best.level === 0 ? `attention: ${fmt(v, 4)}` : `max over ${s}×${s} cells: ${fmt(v, 4)}`);
      } else {
        const s = cur.stride;
        const v = cur.data[Math.floor(q / s) * cur.cols + Math.floor(k / s)];
        lines.push(s === 1 ? `attention: ${fmt(v, 4)}` : `max over ${s}×${s} cells: ${fmt(v, 4)}`);
      }
    }
    lines.push(`α of key ${k}: ${fmt(store.row(l, hd)[k])}`);
    tooltip.show(lines, ev.clientX, ev.clientY);
  });
  canvas.addEventListener("mouseleave", () => tooltip.hide());

  store.on("_map", () => store.guard(setMap));
  store.on("layer head", () => store.guard(() => { setMap(); schedule(); }));
  store.on("eps token scale", schedule);
  store.on("view", () => {
    const v = store.get("view");
    if (!v || v.length !== 4) return;
    if (viewTimer !== null) return; // a newer local change is about to be sent: a stale echo must not undo it
    const same = Math.abs(v[0] - view.q0) + Math.abs(v[1] - view.q1) + Math.abs(v[2] - view.k0) + Math.abs(v[3] - view.k1) < 1e-6;
    if (!same) setView({ q0: v[0], q1: v[1], k0: v[2], k1: v[3] }, false);
  });
  const v0 = store.get("view");
  if (v0 && v0.length === 4) view = { q0: v0[0], q1: v0[1], k0: v0[2], k1: v0[3] };
  setMap();
  return {
    el: wrap, canvas, draw,
    dispose() {
      window.removeEventListener("mousemove", onDrag);
      window.removeEventListener("mouseup", onUp);
      clearTimeout(viewTimer);
    },
  };
}

// ------------------------------------------------------------------------------------------------ token strip
function makeStrip(store, tooltip, report) {
  const { T } = store;
  const wrap = h("div", "sw-strip", { "data-testid": "sw-strip" });
  const caption = text("div", "sw-caption", "");
  const box = h("div", "sw-strip-tokens", {
    tabindex: 0, role: "listbox", "data-testid": "sw-strip-tokens",
    "aria-label": "prompt tokens coloured by α; left/right arrow keys move the selected token",
  });
  const spans = new Array(T);
  const frag = document.createDocumentFragment();
  for (let k = 0; k < T; k++) {
    const s = document.createElement("span");
    s.className = "sw-tok";
    s.textContent = showToken(store.tokens[k]); // untrusted text: textContent only
    s.dataset.k = k;
    spans[k] = s;
    frag.appendChild(s);
  }
  box.appendChild(frag);
  wrap.append(caption, box);
  let selected = -1, draws = 0, values = null;

  function draw() {
    const l = store.get("layer"), hd = store.get("head"), eps = store.get("eps");
    const mode = store.get("strip_mode");
    values = mode === "head" ? store.row(l, hd) : store.maxOverHeads(l);
    let nSinks = 0;
    for (let k = 0; k < T; k++) {
      const v = values[k];
      const a = Math.min(0.92, Math.sqrt(Math.abs(v)));
      spans[k].style.backgroundColor = v < 0 ? `rgba(49, 130, 189, ${a.toFixed(3)})` : `rgba(230, 85, 13, ${a.toFixed(3)})`;
      const sink = store.mode !== "diff" && store.isSink(v, k, eps);
      if (sink) nSinks++;
      spans[k].classList.toggle("sw-sink", sink);
    }
    const tk = store.get("token");
    if (selected >= 0 && spans[selected]) spans[selected].classList.remove("sw-sel");
    selected = tk;
    if (spans[tk]) { spans[tk].classList.add("sw-sel"); spans[tk].setAttribute("aria-selected", "true"); }
    const what = store.mode === "diff" ? "after − before of " : store.mode === "after" ? "(after the edit) " : "";
    caption.textContent = store.mode === "diff"
      ? `tokens coloured by ${what}${mode === "head" ? `α of layer ${l}, head ${hd}` : `the max of α over the heads of layer ${l}`} (orange: more, blue: less)`
      : mode === "head"
        ? `tokens coloured by ${what}α of layer ${l}, head ${hd} (${nSinks} sink${nSinks === 1 ? "" : "s"} with α > ${eps.toFixed(2)})`
        : `tokens coloured by ${what}the max of α over the heads of layer ${l} (${nSinks} sink${nSinks === 1 ? "" : "s"} with α > ${eps.toFixed(2)})`;
    draws++;
    let topK = 0;
    for (let k = 1; k < T; k++) if (values[k] > values[topK]) topK = k;
    Object.assign(box.dataset, { layer: l, head: hd, mode, token: tk, sinks: nSinks, draws, view: store.mode, top: topK });
    report();
  }
  function pick(k) {
    k = Math.max(0, Math.min(T - 1, k));
    store.set({ token: k });
    if (spans[k]) spans[k].scrollIntoView({ block: "nearest", inline: "nearest" });
  }
  box.addEventListener("click", (ev) => {
    const s = ev.target.closest && ev.target.closest(".sw-tok");
    if (s) pick(Number(s.dataset.k));
  });
  box.addEventListener("keydown", (ev) => {
    const tk = store.get("token");
    const acts = { ArrowLeft: tk - 1, ArrowRight: tk + 1, Home: 0, End: T - 1 };
    if (ev.key in acts) { ev.preventDefault(); pick(acts[ev.key]); }
  });
  box.addEventListener("mouseover", (ev) => {
    const s = ev.target.closest && ev.target.closest(".sw-tok");
    if (!s || !values) return;
    const k = Number(s.dataset.k);
    tooltip.show([`token ${k} ${JSON.stringify(showToken(store.tokens[k]))}`,
                  `α: ${fmt(values[k])}${store.get("strip_mode") === "head" ? "" : " (max over heads)"}`],
                 ev.clientX, ev.clientY);
  });
  box.addEventListener("mouseleave", () => tooltip.hide());
  store.on("layer head eps token strip_mode", () => store.guard(draw));
  return { el: wrap, box, draw, spans, values: () => values };
}


// ------------------------------------------------------------------------------------------------ experiments
const EXPERIMENTS = [
  ["mask", "mask a token (layers below)"],
  ["massive_zero", "massive activations → 0"],
  ["massive_mean", "massive activations → mean"],
  ["add_sink", "prepend a sink token (\\n)"],
  ["project_tag", "project the selected head's tag out"],
];
const EXP_VIEWS = [["before", "before"], ["after", "after"], ["diff", "after − before"]];

/** The experiment panel: kind, token, layer set, Apply (live kernel only), the view before / after / after − before,
 *  the history, the mean ΔNLL beside its control and the per-token ΔNLL strip. */
function makeExperimentPanel(store, tooltip, report, redraw) {
  const { T } = store;
  const live = !!store.get("_has_model");
  const wrap = h("div", "sw-exp", { "data-testid": "sw-exp", "aria-label": "experiments" });
  const bar = h("div", "sw-toolbar", { role: "toolbar", "aria-label": "experiment controls" });
  const status = text("div", "sw-caption sw-exp-status", "", { "data-testid": "sw-exp-status", role: "status" });
  const result = text("div", "sw-exp-result", "", { "data-testid": "sw-exp-result" });
  const dcap = text("div", "sw-caption", "");
  const dbox = h("div", "sw-strip-tokens sw-exp-dnll", { "data-testid": "sw-exp-dnll",
    "aria-label": "ΔNLL of each predicted token: red, the prediction got harder; blue, easier" });
  let sink = 0, top = -1;
  for (let k = 0; k < T; k++) { // default token: the sink (largest mean α over layers and heads)
    let s = 0;
    for (let i = 0; i < store.L * store.H; i++) s += store.base.alpha[i * T + k];
    if (s > top) { top = s; sink = k; }
  }
  const ctl = {};
  if (live) {
    // the kernel computes the prompt's clean NLL while the student reads the panel, so the first Apply is one pass
    store.model.send({ type: "experiment_prepare" });
    ctl.kind = menu(EXPERIMENTS, "mask", "experiment", "sw-exp-kind");
    ctl.token = h("input", "sw-select", { type: "number", min: 0, max: T - 1, step: 1, "data-testid": "sw-exp-token",
                                          "aria-label": "token to mask" });
    ctl.token.value = String(sink);
    ctl.layers = h("input", "sw-select", { type: "text", size: 7, "data-testid": "sw-exp-layers",
                                           "aria-label": "layers: all, 12-29 or 3,5,7" });
    ctl.layers.value = "all";
    ctl.apply = button("Apply", "run the experiment on this prompt in the kernel", "sw-exp-apply");
    ctl.preset = button(`mask token ${sink}, all layers`, `mask token ${sink} in every layer`, "sw-exp-preset-all");
    ctl.cancel = button("Cancel", "cancel the running experiment (stops after the current forward pass)",
                        "sw-exp-cancel");
    ctl.cancel.hidden = true;
    bar.append(labelled("experiment", ctl.kind), labelled("token", ctl.token), labelled("layers", ctl.layers),
               ctl.apply, ctl.preset, ctl.cancel);
  }
  ctl.view = menu(EXP_VIEWS, store.get("experiment_view"), "show before, after or after − before", "sw-exp-view");
  ctl.history = menu([[-1, "no experiment yet", true]], -1, "experiment history", "sw-exp-history");
  bar.append(labelled("show", ctl.view), labelled("history", ctl.history));
  wrap.append(text("div", "sw-caption", live ? "Experiment: edit the model on this prompt and compare"
    : "Experiments recorded with the model (offline: flip between them)"), bar, status, result, dcap, dbox);
  ctl.view.addEventListener("change", () => store.set({ experiment_view: ctl.view.value }));
  ctl.history.addEventListener("change", () => store.set({ experiment_index: Number(ctl.history.value) }));

  // An Apply runs in two phases (sinkwidgets/widgets/experiment.py): the kernel answers the request when the edit
  // is recorded (the panel paints it at once, its control "computing…"), then sends {type: "experiment_control",
  // job} when the control's pass has landed, been cancelled or failed. Apply stays disabled until then.
  let running = false, phase = 0, cancelling = false, timer = null, values = null, job = null, jobSeq = 0;
  let t0 = 0, t1 = 0, label = "";
  const secs = (t) => ((performance.now() - t) / 1000).toFixed(1);
  function setStatus(msg, state) {
    status.textContent = msg;
    status.dataset.state = state;
    status.classList.toggle("sw-exp-error", state === "error" || state === "control-error");
  }
  function tick() {
    if (phase === 2) {
      setStatus(cancelling ? `${label}: shown; cancelling its control… ${secs(t1)} s`
        : `${label}: painted in ${((t1 - t0) / 1000).toFixed(1)} s · control: computing… ${secs(t1)} s`, "control");
    } else {
      setStatus(cancelling
        ? `cancelling ${label}: it stops after the current forward pass… ${secs(t0)} s`
        : `running ${label} in the kernel… ${secs(t0)} s`, "running");
    }
  }
  function finish() {
    clearInterval(timer); running = false; cancelling = false; phase = 0; job = null;
    ctl.apply.disabled = false; ctl.preset.disabled = false; ctl.cancel.hidden = true;
  }
  function run(params) {
    if (running) return;
    running = true; phase = 1;
    ctl.apply.disabled = true; ctl.preset.disabled = true;
    ctl.cancel.hidden = false; ctl.cancel.disabled = false;
    ctl.cancel.title = "cancel the running experiment (stops after the current forward pass)";
    t0 = performance.now();
    label = params.kind === "mask" ? `mask token ${params.token}, layers ${params.layers}` : params.kind;
    const mine = job = `j${++jobSeq}-${Math.random().toString(36).slice(2, 8)}`;
    tick();
    timer = setInterval(tick, 200);
    store.request({ type: "experiment", ...params, job: mine }, 600000).then(({ msg }) => {
      if (job !== mine) return;
      if (msg.seconds != null) wrap.dataset.kernelMs = (1000 * msg.seconds).toFixed(0);
      wrap.dataset.roundTripMs = (performance.now() - t0).toFixed(0);
      if (msg.ok && msg.control === "computing") { // phase 2: the edit is painted, its control follows
        phase = 2; t1 = performance.now(); cancelling = false;
        ctl.cancel.disabled = false;
        ctl.cancel.title = "cancel the control (the experiment stays shown, its control marked cancelled)";
        tick();
        return;
      }
      if (msg.ok) setStatus(`${label}: done in ${secs(t0)} s`, "done");
      else if (msg.cancelled) setStatus(`${label}: cancelled, nothing recorded (the view is unchanged)`, "cancelled");
      else setStatus(`the experiment failed: ${msg.error} (the view is unchanged)`, "error");
      finish();
    }).catch((err) => {
      if (job !== mine) return;
      setStatus(`the experiment failed: ${err.message || err} (the view is unchanged)`, "error");
      finish();
    });
  }
  const onControl = (msg) => {
    if (!msg || msg.type !== "experiment_control" || job === null || msg.job !== job) return;
    if (msg.seconds != null) wrap.dataset.controlKernelMs = (1000 * msg.seconds).toFixed(0);
    wrap.dataset.controlMs = (performance.now() - t0).toFixed(0);
    const painted = `painted in ${((t1 - t0) / 1000).toFixed(1)} s`;
    if (msg.ok) setStatus(`${label}: ${painted}, control in ${secs(t1)} s more`, "done");
    else if (msg.cancelled) setStatus(`${label}: ${painted}; its control was cancelled`, "control-cancelled");
    else setStatus(`${label}: ${painted}; its control failed: ${msg.error}`, "control-error");
    finish();
  };
  if (live) store.model.on("msg:custom", onControl);
  function params() {
    const k = ctl.kind.value;
    if (k === "mask") return { kind: "mask", token: Number(ctl.token.value), layers: ctl.layers.value.trim() || "all" };
    if (k === "massive_zero" || k === "massive_mean") return { kind: "massive", mode: k.slice(8) };
    if (k === "add_sink") return { kind: "add_sink", prefix: "\n" };
    return { kind: "project_tag", head: [store.get("layer"), store.get("head")] };
  }
  if (live) {
    ctl.cancel.addEventListener("click", () => {
      if (!running || cancelling) return;
      cancelling = true;
      ctl.cancel.disabled = true;
      store.model.send({ type: "experiment_cancel" });
    });
    ctl.apply.addEventListener("click", () => run(params()));
    ctl.preset.addEventListener("click", () => {
      ctl.kind.value = "mask"; ctl.token.value = String(sink); ctl.layers.value = "all";
      run(params());
    });
  }

  let spans = [];
  function draw() {
    const list = store.get("_experiments") || [];
    const e = store.experiment();
    ctl.view.value = store.get("experiment_view");
    ctl.history.replaceChildren();
    if (!list.length) {
      const o = text("option", "", "no experiment yet"); o.value = "-1"; o.disabled = true;
      ctl.history.appendChild(o);
    }
    for (const st of list) {
      const o = text("option", "", `${st.index + 1}. ${st.label}`); // the label holds a token string: text only
      o.value = String(st.index);
      ctl.history.appendChild(o);
    }
    ctl.history.value = String(store.get("experiment_index"));
    ctl.view.disabled = !e; ctl.history.disabled = !list.length;
    if (!e) {
      result.textContent = live ? "no experiment yet: choose one and Apply" : "no experiment recorded";
      dcap.textContent = ""; dbox.replaceChildren(); spans = []; values = null;
      Object.assign(wrap.dataset, { index: -1, view: store.mode, controlState: "" });
      report();
      return;
    }
    const st = e.state;
    values = e.data.dnll;
    const sign = (v) => (v >= 0 ? "+" : "") + fmt(v, 3);
    const cs = st.control_status || "done"; // offline pages hold complete entries (no control_status)
    const cv = cs === "done" && st.control_dnll != null ? sign(st.control_dnll)
      : cs === "computing" ? "computing…" : cs; // "cancelled" / "failed"
    result.textContent = `${st.label}: mean ΔNLL ${sign(st.mean_dnll)} nats/token · control: ${cv} (${st.control})`;
    dcap.textContent = "ΔNLL of each predicted token (red: the prediction got harder, blue: easier; token 0 is not " +
      "predicted)";
    if (spans.length !== T) {
      spans = [];
      const frag = document.createDocumentFragment();
      for (let k = 0; k < T; k++) {
        const s = document.createElement("span");
        s.className = "sw-tok";
        s.textContent = showToken(store.tokens[k]); // untrusted text: textContent only
        s.dataset.k = k;
        spans.push(s); frag.appendChild(s);
      }
      dbox.replaceChildren(frag);
    }
    let m = 0;
    for (const v of values) m = Math.max(m, Math.abs(v));
    m = m || 1;
    for (let k = 0; k < T; k++) {
      const v = k >= 1 ? values[k - 1] : 0;
      const a = Math.min(0.92, Math.sqrt(Math.abs(v) / m));
      spans[k].style.backgroundColor = k < 1 ? "transparent"
        : v >= 0 ? `rgba(215, 48, 39, ${a.toFixed(3)})` : `rgba(49, 130, 189, ${a.toFixed(3)})`;
    }
    Object.assign(wrap.dataset, { index: st.index, view: store.mode, meanDnll: String(st.mean_dnll),
                                  controlDnll: String(st.control_dnll), controlState: cs, kind: st.kind });
    report();
  }
  dbox.addEventListener("mouseover", (ev) => {
    const s = ev.target.closest && ev.target.closest(".sw-tok");
    if (!s || !values) return;
    const k = Number(s.dataset.k);
    tooltip.show([`token ${k} ${JSON.stringify(showToken(store.tokens[k]))}`,
                  k >= 1 ? `ΔNLL of predicting it: ${fmt(values[k - 1])} nats` : "token 0 is not predicted"],
                 ev.clientX, ev.clientY);
  });
  dbox.addEventListener("mouseleave", () => tooltip.hide());
  store.on("_experiments experiment_index experiment_view", () => store.guard(() => {
    store.refreshView();
    redraw();
    draw();
  }));
  return {
    el: wrap, draw, setStatus,
    dispose() { clearInterval(timer); if (live) store.model.off("msg:custom", onControl); },
  };
}

// ------------------------------------------------------------------------------------------------ PNG
function stripToCanvas(store, strip, width, fg, bg) {
  // The strip is HTML; for the PNG it is re-drawn on a canvas (fillText, wrapped lines).
  const c = document.createElement("canvas");
  const lineH = 16, pad = 4;
  const probe = c.getContext("2d");
  probe.font = "11px monospace";
  const items = [];
  let x = pad, y = pad;
  const vals = strip.values() || new Float32Array(store.T);
  for (let k = 0; k < store.T; k++) {
    const s = clip(store.tokens[k], 24);
    const w = probe.measureText(s).width + 4;
    if (x + w > width - pad) { x = pad; y += lineH; }
    items.push([s, x, y, w, vals[k]]);
    x += w + 1;
    if (y > 4000) break; // keep the image bounded for very long prompts
  }
  const ctx = setupCanvas(c, width, y + lineH + pad);
  ctx.fillStyle = bg; ctx.fillRect(0, 0, width, y + lineH + pad);
  ctx.font = "11px monospace"; ctx.textBaseline = "middle";
  for (const [s, ix, iy, w, v] of items) {
    ctx.fillStyle = `rgba(230, 85, 13, ${Math.min(0.92, Math.sqrt(Math.max(0, v))).toFixed(3)})`;
    ctx.fillRect(ix, iy, w, lineH - 2);
    ctx.fillStyle = fg;
    ctx.fillText(s, ix + 2, iy + (lineH - 2) / 2);
  }
  return c;
}

async function viewToPng(root, store, parts, title) {
  const fg = themeColor(root, "color", "#222");
  const bg = themeColor(root, "backgroundColor", "#ffffff");
  const dpr = window.devicePixelRatio || 1;
  const canvases = [parts.grid && parts.grid.canvas, parts.heatmap && parts.heatmap.canvas].filter(Boolean);
  const gap = 16, top = 26;
  let w = canvases.reduce((a, c) => a + c.width / dpr, 0) + gap * Math.max(0, canvases.length - 1) + 2 * gap;
  w = Math.max(w, 480);
  const hTop = canvases.reduce((a, c) => Math.max(a, c.height / dpr), 0);
  const stripC = parts.strip ? stripToCanvas(store, parts.strip, w - 2 * gap, fg, bg) : null;
  const hh = top + hTop + (stripC ? stripC.height / dpr + gap : 0) + gap;
  const out = document.createElement("canvas");
  const ctx = setupCanvas(out, w, hh);
  ctx.fillStyle = bg; ctx.fillRect(0, 0, w, hh);
  ctx.fillStyle = fg; ctx.font = "13px sans-serif"; ctx.textBaseline = "middle";
  ctx.fillText(title, gap, top / 2);
  let x = gap;
  for (const c of canvases) { ctx.drawImage(c, x, top, c.width / dpr, c.height / dpr); x += c.width / dpr + gap; }
  if (stripC) ctx.drawImage(stripC, gap, top + hTop + gap, stripC.width / dpr, stripC.height / dpr);
  const blob = await new Promise((res, rej) => out.toBlob((b) => (b ? res(b) : rej(new Error("toBlob failed"))), "image/png"));
  return blob;
}

// ------------------------------------------------------------------------------------------------ render
function buildSinkExplorer(model, el) {
  const t0 = performance.now();
  const store = makeStore(model);
  const kind = model.get("_view") || "explorer";
  const root = h("div", `sw-root sw-view-${kind}`, { "data-testid": "sw-root", "data-view": kind });
  const tooltip = makeTooltip(root);
  const parts = {};
  const toolbar = h("div", "sw-toolbar", { role: "toolbar", "aria-label": "sink explorer controls" });
  const errors = h("div", "sw-errors");
  const { L, H } = store;
  const want = (p) => kind === "explorer" || kind === p;
  const report = drawCounter(root);
  store.errorSink = (err) => errors.replaceChildren(errorBox(err));

  // ---- controls: real <select>/<input type=range>/<button>, so they are reachable by keyboard
  const controls = {};
  if (want("grid")) {
    controls.metric = menu(METRICS, store.get("metric"), "grid metric", "sw-metric");
    controls.metric.addEventListener("change", () => store.set({ metric: controls.metric.value }));
    toolbar.appendChild(labelled("metric", controls.metric));
  }
  if (kind !== "strip") {
    const eps = h("input", "sw-range", { type: "range", min: 0, max: 0.99, step: 0.01, "data-testid": "sw-eps",
                                          "aria-label": "sink threshold epsilon" });
    eps.value = String(store.get("eps"));
    const out = text("output", "sw-eps-value", Number(store.get("eps")).toFixed(2), { "data-testid": "sw-eps-value" });
    eps.addEventListener("input", () => { out.textContent = Number(eps.value).toFixed(2); store.set({ eps: Number(eps.value) }); });
    const lab = labelled("ε", eps);
    lab.appendChild(out);
    toolbar.appendChild(lab);
    controls.eps = eps; controls.epsOut = out;
  }
  if (want("heatmap") || want("strip")) {
    controls.layer = menu([...Array(L).keys()].map((i) => [i, String(i)]), store.get("layer"), "layer", "sw-layer");
    controls.head = menu([...Array(H).keys()].map((i) => [i, String(i)]), store.get("head"), "head", "sw-head");
    controls.layer.addEventListener("change", () => store.set({ layer: Number(controls.layer.value) }));
    controls.head.addEventListener("change", () => store.set({ head: Number(controls.head.value) }));
    toolbar.append(labelled("layer", controls.layer), labelled("head", controls.head));
  }
  if (want("heatmap")) {
    controls.scale = menu([["linear", "linear"], ["log", "log"]], store.get("scale"), "heatmap colour scale", "sw-scale");
    controls.scale.addEventListener("change", () => store.set({ scale: controls.scale.value }));
    toolbar.appendChild(labelled("scale", controls.scale));
  }
  if (want("strip")) {
    controls.strip = menu([["max", "max over heads"], ["head", "selected head"]], store.get("strip_mode"),
      "token strip colour", "sw-strip-mode");
    controls.strip.addEventListener("change", () => store.set({ strip_mode: controls.strip.value }));
    toolbar.appendChild(labelled("tokens", controls.strip));
  }
  const pngBtn = button("PNG", "download the current view as PNG", "sw-download-png");
  toolbar.appendChild(pngBtn);

  const sync = () => {
    if (controls.metric) controls.metric.value = store.get("metric");
    if (controls.layer) controls.layer.value = String(store.get("layer"));
    if (controls.head) controls.head.value = String(store.get("head"));
    if (controls.scale) controls.scale.value = store.get("scale");
    if (controls.strip) controls.strip.value = store.get("strip_mode");
    if (controls.eps && Math.abs(Number(controls.eps.value) - store.get("eps")) > 1e-9) {
      controls.eps.value = String(store.get("eps"));
      controls.epsOut.textContent = Number(store.get("eps")).toFixed(2);
    }
  };
  store.on("metric layer head scale strip_mode eps", sync);

  root.appendChild(toolbar);
  const main = h("div", "sw-main");
  if (want("grid")) { parts.grid = makeGrid(store, tooltip, report); main.appendChild(parts.grid.el); }
  if (want("heatmap")) { parts.heatmap = makeHeatmap(store, tooltip, report); main.appendChild(parts.heatmap.el); }
  root.appendChild(main);
  if (want("strip")) { parts.strip = makeStrip(store, tooltip, report); root.appendChild(parts.strip.el); }
  if (kind === "explorer" && (store.get("_has_model") || (store.get("_experiments") || []).length)) {
    const redraw = () => { if (parts.grid) parts.grid.draw(); if (parts.strip) parts.strip.draw(); };
    parts.experiments = makeExperimentPanel(store, tooltip, report, redraw);
    root.appendChild(parts.experiments.el);
  }
  const foot = text("div", "sw-footer",
    `${store.modelName} · ${L} layers × ${H} heads · ${store.T} tokens · ε marks sinks (α > ε)`);
  root.append(foot, errors);
  el.appendChild(root);

  const title = () => `${store.modelName} · layer ${store.get("layer")} head ${store.get("head")} · ` +
    `ε=${Number(store.get("eps")).toFixed(2)} · ${store.T} tokens`;
  pngBtn.addEventListener("click", () => viewToPng(root, store, parts, title())
    .then((blob) => downloadBlob(blob, "sinkwidgets.png"))
    .catch((err) => store.errorSink(err)));
  store.onCustom((msg) => {
    if (msg.type === "png_request") sendPng(model, msg.id, () => viewToPng(root, store, parts, title()), root);
  });

  store.guard(() => store.refreshView());
  for (const p of Object.values(parts)) p.draw();
  root.dataset.renderMs = (performance.now() - t0).toFixed(1);
  requestAnimationFrame(() => requestAnimationFrame(() => { root.dataset.firstPaint = String(performance.now()); }));
  model.set("_frontend", (model.get("_frontend") || 0) + 1);
  model.save_changes();
  return () => {
    for (const p of Object.values(parts)) if (p.dispose) p.dispose();
    store.dispose();
  };
}

function render({ model, el }) {
  let dispose = buildOrShowError(buildSinkExplorer, model, el);
  const rebuild = () => { // another trace: build the view again on it
    if (dispose) dispose();
    el.replaceChildren();
    dispose = buildOrShowError(buildSinkExplorer, model, el);
  };
  model.on("change:_summary", rebuild);
  return () => { model.off("change:_summary", rebuild); if (dispose) dispose(); };
}

// ------------------------------------------------------------------------------------------------ offline page
/** The model of an offline page: answered locally from the maps embedded in the file (tiles need a live kernel
 *  and are declined). */
class LocalSinkModel extends LocalModel {
  constructor(state, maps) {
    super(state);
    this.maps = maps;
  }
  save_changes() {
    const l = this.state.layer, hd = this.state.head, m = this.state._map || {};
    if (m.layer !== l || m.head !== hd) {
      const found = this.maps[`${l},${hd}`];
      const T = this.state._summary.T;
      setTimeout(() => this.set("_map", found || {
        layer: l, head: hd, T, tile: 256, status: "missing", overview: null,
        message: `map not kept: trace with keep_maps=[${l}] to include it in the file; showing α per key`,
      }), 0);
    }
  }
  send(content) {
    if (content && content.type === "tile") {
      setTimeout(() => this.emit("msg:custom", { type: "tile", id: content.id, ok: false,
        error: "offline file: full-resolution tiles need a live notebook" }, []), 0);
    }
  }
}

/** Render a view in a plain page from the state embedded by sinkwidgets.widgets.save_html. */
export function mountStandalone(el, state, buffersB64) {
  return mountOffline(el, state, buffersB64, {
    makeModel: (full) => new LocalSinkModel(full.state, full.maps || {}),
    render, name: "sinkwidgetsModel", testid: "sw-error",
  });
}

export default { render };
