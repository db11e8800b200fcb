import {
  CATEGORICAL, LocalModel, buildOrShowError, button, cssRgb, decodeArray, decodeInts, downloadBlob, drawCounter, errorBox,
  fmt, h, kernelRequests, labelled, menu, mountOffline, parseRgb, progressLine, sendPng, setupCanvas, showToken, text,
  themeColor, viridis,
} from "./sinkwidgets.js";
// sinkwidgets TagExplorer: one point per token of a corpus, projected on a head's tag subspace (or top-2 PCs).
//
// The second half of one ES module: the helpers imported above come from sinkwidgets.js, and
// sinkwidgets/widgets/_assets.py: esm("tagexplorer") puts both files into one module (the import line is dropped
// there), so both widgets decode buffers, colour and build their controls with the same code. Used two ways, like
// SinkExplorer: by anywidget (default export `render`) and inlined in an offline HTML file (`mountTagStandalone`).
//
// Rules kept throughout (besides those of sinkwidgets.js):
// * Points are drawn into one ImageData (a few ms for 100,000 points); hover uses a screen-space grid index
//   rebuilt after each draw, so a tooltip costs a 3x3-cell lookup whatever the number of points.

// ------------------------------------------------------------------------------------------------ colours
// Categories use CATEGORICAL (Okabe-Ito first); "not caught" is a light neutral grey drawn underneath.
const NOT_CAUGHT = [176, 176, 176];

// ------------------------------------------------------------------------------------------------ data
function decodeStatic(model) {
  const S = model.get("_static");
  if (!S || !S.offsets) throw new Error("no data: this TagExplorer was created without a TagData");
  const vocab = model.get("_vocab") || [];
  const offsets = decodeInts(S.offsets);
  const codes = decodeInts(S.token_codes);
  const n = S.n, N = S.N;
  if (codes.length !== n) throw new Error(`${codes.length} token codes for ${n} points`);
  if (offsets.length !== N + 1 || offsets[N] !== n) throw new Error(`offsets do not cover the ${n} points`);
  const prompt = new Int32Array(n), pos = new Int32Array(n);
  let maxLen = 1;
  for (let i = 0; i < N; i++) {
    maxLen = Math.max(maxLen, offsets[i + 1] - offsets[i]);
    for (let j = offsets[i]; j < offsets[i + 1]; j++) { prompt[j] = i; pos[j] = j - offsets[i]; }
  }
  for (let j = 0; j < n; j++) if (codes[j] >= vocab.length) throw new Error(`token code ${codes[j]} outside the table`);
  const labels = S.labels ? decodeInts(S.labels) : null;
  return { S, vocab, offsets, codes, n, N, prompt, pos, maxLen, labels, token: (j) => vocab[codes[j]] };
}

// ------------------------------------------------------------------------------------------------ the view
const PW = 520, PH = 420, ML = 56, MR = 12, MT = 12, MB = 40; // scatter plot area and margins (CSS px)
const CELL = 8; // hover index cell (CSS px)
const HIT = 7; // hover radius (CSS px)

function buildTagExplorer(model, host) {
  const t0 = performance.now();
  const D = decodeStatic(model);
  const disposers = [];
  const on = (names, fn) => {
    for (const nm of names.split(" ")) {
      model.on(`change:${nm}`, fn);
      disposers.push(() => model.off(`change:${nm}`, fn));
    }
  };
  const set = (obj) => { for (const [k, v] of Object.entries(obj)) model.set(k, v); model.save_changes(); };
  const offline = !!D.S.offline;

  const root = h("div", "sw-root te-root", { "data-testid": "te-root" });
  const errors = h("div", "sw-errors");
  const report = drawCounter(root);
  const guard = (fn) => {
    try { return fn(); } catch (err) {
      console.error("sinkwidgets:", err);
      errors.replaceChildren(errorBox(err, "te-error"));
      return undefined;
    }
  };

  // ---- toolbar
  const toolbar = h("div", "sw-toolbar", { role: "toolbar", "aria-label": "tag explorer controls" });
  const headKey = (hd) => `${hd[0]},${hd[1]}`;
  const mHead = menu(D.S.heads.map((hd, k) => [headKey(hd), `L${hd[0]}H${hd[1]}${D.S.maps[k] ? "" : " (no maps)"}`]),
    headKey(model.get("head")), "head", "te-head");
  const taus = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9];
  const tau0 = Number(model.get("tau"));
  if (!taus.some((t) => Math.abs(t - tau0) < 1e-9)) { taus.push(tau0); taus.sort((a, b) => a - b); }
  const mTau = menu(taus.map((t) => [t, t.toFixed(2)]), tau0, "catch threshold tau", "te-tau");
  const mRank = menu([...Array(D.S.max_rank).keys()].map((i) => [i + 1, String(i + 1)]), model.get("rank"),
    "tag rank", "te-rank");
  const mProj = menu([["tag", "tag subspace"], ["pca", "top-2 PCs"]], model.get("projection"), "projection",
    "te-projection");
  const mSource = menu([["output", "head output"], ["residual", "residual after layer", !D.S.has_model]],
    model.get("source"), "what is projected", "te-source");
  const mColor = menu([["catch", "catching sink at τ"], ["label", "label", !D.S.label_names], ["position", "position"]],
    model.get("color_by"), "colour", "te-color");
  const mTool = menu([["pan", "pan / zoom"], ["box", "box select"], ["lasso", "lasso select"]], "pan",
    "pointer tool", "te-tool");
  const bReset = button("⟲", "show all points", "te-reset");
  const bClear = button("clear", "clear the selection", "te-clear");
  const bPng = button("PNG", "download the current view as PNG", "te-download-png");
  if (offline) {
    for (const m of [mTau, mRank, mSource]) { m.disabled = true; m.title = "fixed in the offline file (needs a live kernel)"; }
  }
  toolbar.append(labelled("head", mHead), labelled("τ", mTau), labelled("rank", mRank), labelled("projection", mProj),
    labelled("of", mSource), labelled("colour", mColor), labelled("tool", mTool), bReset, bClear, bPng);
  mHead.addEventListener("change", () => set({ head: mHead.value.split(",").map(Number) }));
  mTau.addEventListener("change", () => set({ tau: Number(mTau.value) }));
  mRank.addEventListener("change", () => set({ rank: Number(mRank.value) }));
  mProj.addEventListener("change", () => set({ projection: mProj.value }));
  mSource.addEventListener("change", () => set({ source: mSource.value }));
  mColor.addEventListener("change", () => set({ color_by: mColor.value }));

  // ---- scatter
  const main = h("div", "te-main");
  const left = h("div", "te-left");
  const title = text("div", "te-title", "", { "data-testid": "te-title" });
  const box = h("div", "te-box");
  const W = ML + PW + MR, H = MT + PH + MB;
  const base = h("canvas", "te-canvas", { "data-testid": "te-scatter", tabindex: 0,
    "aria-label": "scatter of every token; drag to pan (or select with the box / lasso tool), wheel to zoom" });
  const over = h("canvas", "te-overlay");
  const message = text("div", "te-message", "", { "data-testid": "te-message" });
  message.hidden = true;
  const tip = h("div", "sw-tooltip te-tooltip", { role: "status", "data-testid": "te-tooltip" });
  tip.hidden = true;
  box.append(base, over, message, tip);
  const legend = h("div", "te-legend", { "data-testid": "te-legend" });
  left.append(title, box, legend);

  // ---- numbers + across layers
  const right = h("div", "te-right");
  const numbers = h("div", "te-numbers", { "data-testid": "te-numbers" });
  const layersHead = text("div", "te-caption", "", { "data-testid": "te-layers-caption" });
  const layersCanvas = h("canvas", "te-layers", { "data-testid": "te-layers" });
  const expPanel = makeReleasePanel(model, D, root, offline, disposers);
  right.append(numbers, layersHead, layersCanvas, expPanel.el);
  main.append(left, right);
  const status = text("div", "sw-footer", "", { "data-testid": "te-status", "aria-live": "polite" }); // empty footer
  root.append(toolbar, main, status, errors);
  host.appendChild(root);

  let xy = null, pinfo = null, view = null, draws = 0, rafPending = false;
  let colorIdx = null, order = null, names = [], palette = [], counts = [];
  let catchPos = null, catchW = null;
  let selected = new Uint8Array(D.n), nSelected = 0;
  let index = null; // {cols, rows, start, items, sx, sy}
  let hoverJ = -1;

  function setPoints() {
    const P = model.get("_points") || {};
    if (P.status !== "ok") {
      xy = null;
      message.textContent = P.status === "error" ? `cannot show this projection: ${P.message}` : "computing…";
      message.hidden = false;
      schedule();
      return;
    }
    message.hidden = true;
    const a = decodeArray(P.xy);
    if (a.length !== 2 * D.n) throw new Error(`${a.length / 2} coordinates for ${D.n} points`);
    xy = a;
    pinfo = P;
    // non-finite outputs or values: those tokens are left out (NaN coordinates, not drawn), and the footer says so
    status.textContent = P.nonfinite_note || "";
    status.dataset.nonfinite = String(P.n_nonfinite || 0);
    fitView();
    schedule();
  }
  function fitView() {
    if (!xy) return;
    let x0 = Infinity, x1 = -Infinity, y0 = Infinity, y1 = -Infinity;
    for (let j = 0; j < D.n; j++) {
      const x = xy[2 * j], y = xy[2 * j + 1];
      if (!Number.isFinite(x) || !Number.isFinite(y)) continue;
      if (x < x0) x0 = x; if (x > x1) x1 = x; if (y < y0) y0 = y; if (y > y1) y1 = y;
    }
    if (!(x1 > x0)) { x0 -= 1; x1 += 1; }
    if (!(y1 > y0)) { y0 -= 1; y1 += 1; }
    const px = 0.05 * (x1 - x0), py = 0.05 * (y1 - y0);
    view = { x0: x0 - px, x1: x1 + px, y0: y0 - py, y1: y1 + py };
  }

  function setColors() {
    const mode = model.get("color_by");
    const C = model.get("_catch") || {};
    colorIdx = new Uint8Array(D.n);
    catchPos = null; catchW = null;
    if (C.status === "ok") { catchPos = decodeInts(C.pos); catchW = decodeArray(C.weight); }
    if (mode === "catch" && C.status === "ok") {
      colorIdx.set(decodeInts(C.codes));
      names = C.names;
      palette = names.map((nm, k) => (k === 0 ? NOT_CAUGHT : CATEGORICAL[(k - 1) % CATEGORICAL.length]));
    } else if (mode === "label" && D.labels) {
      colorIdx.set(D.labels);
      names = D.S.label_names;
      palette = names.map((nm, k) => CATEGORICAL[k % CATEGORICAL.length]);
    } else {
      // position: 32 viridis steps over 0..max length
      const steps = 32;
      for (let j = 0; j < D.n; j++) colorIdx[j] = Math.min(steps - 1, Math.floor((D.pos[j] / D.maxLen) * steps));
      names = null;
      palette = [...Array(steps).keys()].map((k) => viridis(k / (steps - 1)));
    }
    counts = new Array(palette.length).fill(0);
    for (let j = 0; j < D.n; j++) counts[colorIdx[j]]++;
    // draw "not caught" (code 0) underneath the caught points
    order = new Int32Array(D.n);
    let w = 0;
    if (mode === "catch" && C.status === "ok") {
      for (let j = 0; j < D.n; j++) if (colorIdx[j] === 0) order[w++] = j;
      for (let j = 0; j < D.n; j++) if (colorIdx[j] !== 0) order[w++] = j;
    } else for (let j = 0; j < D.n; j++) order[j] = j;
    drawLegend(mode, C);
    schedule();
  }

  function drawLegend(mode, C) {
    legend.replaceChildren();
    if (mode === "position" || (mode === "catch" && C.status !== "ok")) {
      const bar = h("canvas", "te-ramp");
      const ctx = setupCanvas(bar, 120, 10);
      for (let i = 0; i < 120; i++) { ctx.fillStyle = cssRgb(viridis(i / 119)); ctx.fillRect(i, 0, 1, 10); }
      const note = mode === "catch" ? `${C.message || "no catch data"} · showing position: ` : "position in the prompt: ";
      legend.append(text("span", "te-legend-note", note), text("span", "", "0 "), bar,
        text("span", "", ` ${D.maxLen - 1}`));
      return;
    }
    const head = mode === "catch" ? `caught at τ = ${Number(C.tau).toFixed(2)} by (largest A[t, s] > τ over the prompt's sinks):`
      : "label:";
    legend.appendChild(text("div", "te-legend-note", head));
    names.forEach((nm, k) => {
      const item = h("span", "te-legend-item", { "data-code": k });
      const sw = h("span", "te-swatch");
      sw.style.background = cssRgb(palette[k]);
      item.append(sw, text("span", "", `${nm} (${counts[k]})`));
      legend.appendChild(item);
    });
  }

  function schedule() {
    if (rafPending) return;
    rafPending = true;
    requestAnimationFrame(() => { rafPending = false; guard(draw); });
  }

  const sx = (x) => ML + ((x - view.x0) / (view.x1 - view.x0)) * PW;
  const sy = (y) => MT + ((view.y1 - y) / (view.y1 - view.y0)) * PH;
  const dx = (px) => view.x0 + ((px - ML) / PW) * (view.x1 - view.x0);
  const dy = (py) => view.y1 - ((py - MT) / PH) * (view.y1 - view.y0);

  function draw() {
    const tDraw = performance.now();
    const dpr = window.devicePixelRatio || 1;
    const ctx = setupCanvas(base, W, H);
    setupCanvas(over, W, H);
    const fg = themeColor(root, "color", "#222");
    const bgRgb = parseRgb(themeColor(root, "backgroundColor", "rgb(255, 255, 255)"), [255, 255, 255]);
    ctx.fillStyle = cssRgb(bgRgb);
    ctx.fillRect(0, 0, W, H);
    const hd = model.get("head");
    title.textContent = `L${hd[0]}H${hd[1]} · ${D.n.toLocaleString("en")} tokens of ${D.N} prompts · ` +
      (pinfo ? `${pinfo.projection === "tag" ? "tag subspace" : "top-2 PCs"} of the ` +
        `${pinfo.source === "output" ? "head outputs" : `residual after layer ${hd[0]}`}` : "");
    if (!xy || !view) { report(); return; }
    // points: one ImageData pass, squares of r device pixels
    const img = ctx.getImageData(0, 0, base.width, base.height);
    const px = img.data, cw = base.width;
    const r = Math.max(2, Math.round(2 * dpr)), r0 = Math.floor(r / 2);
    const X0 = Math.round(ML * dpr), X1 = Math.round((ML + PW) * dpr), Y0 = Math.round(MT * dpr), Y1 = Math.round((MT + PH) * dpr);
    const kx = (PW * dpr) / (view.x1 - view.x0), ky = (PH * dpr) / (view.y1 - view.y0);
    const dim = nSelected > 0;
    // with a selection, the others are drawn dimmed towards the background: one dimmed palette per draw
    const dimmed = (c) => [(c[0] + 3 * bgRgb[0]) >> 2, (c[1] + 3 * bgRgb[1]) >> 2, (c[2] + 3 * bgRgb[2]) >> 2];
    const dimPalette = dim ? palette.map(dimmed) : null, dimNotCaught = dimmed(NOT_CAUGHT);
    const cols = Math.ceil(PW / CELL), rows = Math.ceil(PH / CELL);
    const cellCount = new Int32Array(cols * rows + 1);
    const cellOf = new Int32Array(D.n).fill(-1);
    for (let pass = 0; pass < (dim ? 2 : 1); pass++) {
      for (let o = 0; o < D.n; o++) {
        const j = order[o];
        if (dim && (pass === 0) === (selected[j] === 1)) continue;
        const x = xy[2 * j], y = xy[2 * j + 1];
        const cx = Math.round(X0 + (x - view.x0) * kx), cy = Math.round(Y0 + (view.y1 - y) * ky);
        if (!(cx >= X0 && cx < X1 && cy >= Y0 && cy < Y1)) continue;
        const c = dim && !selected[j] ? (dimPalette[colorIdx[j]] || dimNotCaught) : (palette[colorIdx[j]] || NOT_CAUGHT);
        for (let a = -r0; a < r - r0; a++) {
          const yy = cy + a;
          if (yy < Y0 || yy >= Y1) continue;
          let off = 4 * (yy * cw + cx - r0);
          for (let b = -r0; b < r - r0; b++, off += 4) {
            const xx = cx + b;
            if (xx < X0 || xx >= X1) continue;
            px[off] = c[0]; px[off + 1] = c[1]; px[off + 2] = c[2]; px[off + 3] = 255;
          }
        }
        const ci = Math.min(rows - 1, Math.floor((cy / dpr - MT) / CELL)) * cols + Math.min(cols - 1, Math.floor((cx / dpr - ML) / CELL));
        cellOf[j] = ci;
        cellCount[ci + 1]++;
      }
    }
    ctx.putImageData(img, 0, 0);
    // hover index (counting sort of the visible points by cell)
    for (let i = 0; i < cols * rows; i++) cellCount[i + 1] += cellCount[i];
    const items = new Int32Array(cellCount[cols * rows]);
    const fill = cellCount.slice(0, cols * rows);
    for (let j = 0; j < D.n; j++) if (cellOf[j] >= 0) items[fill[cellOf[j]]++] = j;
    index = { cols, rows, start: cellCount, items };
    // axes
    ctx.strokeStyle = fg; ctx.fillStyle = fg; ctx.lineWidth = 1;
    ctx.strokeRect(ML - 0.5, MT - 0.5, PW + 1, PH + 1);
    ctx.font = "10px sans-serif"; ctx.textAlign = "center"; ctx.textBaseline = "top";
    for (const t of ticks(view.x0, view.x1)) { const X = sx(t); ctx.fillRect(X, MT + PH, 1, 4); ctx.fillText(fmtTick(t), X, MT + PH + 6); }
    ctx.textAlign = "right"; ctx.textBaseline = "middle";
    for (const t of ticks(view.y0, view.y1)) { const Y = sy(t); ctx.fillRect(ML - 4, Y, 4, 1); ctx.fillText(fmtTick(t), ML - 6, Y); }
    ctx.textAlign = "center"; ctx.textBaseline = "bottom"; ctx.font = "11px sans-serif";
    ctx.fillText(pinfo.axes[0], ML + PW / 2, H - 2);
    ctx.save(); ctx.translate(12, MT + PH / 2); ctx.rotate(-Math.PI / 2); ctx.textBaseline = "middle";
    ctx.fillText(pinfo.axes[1], 0, 0); ctx.restore();
    // the tag vector: an arrow from the origin to the mean tag vector (scaled to stay on screen)
    drawArrow(ctx, fg);
    draws++;
    Object.assign(base.dataset, {
      head: headKey(hd), projection: pinfo.projection, source: pinfo.source, rank: pinfo.rank, n: D.n, draws,
      view: [view.x0, view.x1, view.y0, view.y1].join(","), originX: ML, originY: MT, plotW: PW, plotH: PH,
      colorBy: model.get("color_by"), tau: Number(model.get("tau")).toFixed(2), nSelected,
      catchHead: ((model.get("_catch") || {}).head || []).join(","),
    });
    drawOverlay();
    base.dataset.drawMs = (performance.now() - tDraw).toFixed(1);
    report();
  }

  function drawArrow(ctx, fg) {
    const a = pinfo.arrow;
    if (!a || !(Number.isFinite(a[0]) && Number.isFinite(a[1])) || (a[0] === 0 && a[1] === 0)) return;
    const ox = sx(0), oy = sy(0);
    let ex = sx(a[0]), ey = sy(a[1]);
    const len = Math.hypot(ex - ox, ey - oy), want = Math.min(PW, PH) * 0.35;
    let scale = 1;
    if (len > 2 * want || len < want / 4) { scale = want / len; ex = ox + (ex - ox) * scale; ey = oy + (ey - oy) * scale; }
    ctx.save();
    ctx.beginPath(); ctx.rect(ML, MT, PW, PH); ctx.clip();
    ctx.strokeStyle = "rgb(213, 94, 0)"; ctx.fillStyle = "rgb(213, 94, 0)"; ctx.lineWidth = 2.5;
    ctx.beginPath(); ctx.moveTo(ox, oy); ctx.lineTo(ex, ey); ctx.stroke();
    const ang = Math.atan2(ey - oy, ex - ox);
    ctx.beginPath(); ctx.moveTo(ex, ey);
    ctx.lineTo(ex - 11 * Math.cos(ang - 0.4), ey - 11 * Math.sin(ang - 0.4));
    ctx.lineTo(ex - 11 * Math.cos(ang + 0.4), ey - 11 * Math.sin(ang + 0.4));
    ctx.closePath(); ctx.fill();
    ctx.font = "11px sans-serif"; ctx.textAlign = ex > ox ? "right" : "left"; ctx.textBaseline = "bottom";
    ctx.fillStyle = fg;
    ctx.fillText(`tag vector ḡ${scale !== 1 ? ` (×${fmt(scale, 2)})` : ""}`, ex, ey - 6);
    ctx.restore();
    base.dataset.arrow = [ox, oy, ex, ey].map((v) => v.toFixed(1)).join(",");
  }

  function ticks(a, b) {
    const span = b - a, step0 = 10 ** Math.floor(Math.log10(span / 5));
    const step = [1, 2, 5, 10].map((m) => m * step0).find((s) => span / s <= 7);
    const out = [];
    for (let t = Math.ceil(a / step) * step; t <= b; t += step) out.push(Math.abs(t) < step * 1e-9 ? 0 : t);
    return out;
  }
  const fmtTick = (t) => (Math.abs(t) >= 1000 || (t !== 0 && Math.abs(t) < 0.01) ? t.toExponential(0) : String(+t.toPrecision(3)));

  function drawOverlay(lasso) {
    const dpr = window.devicePixelRatio || 1;
    const ctx = over.getContext("2d");
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, W, H);
    const fg = themeColor(root, "color", "#222");
    if (hoverJ >= 0 && xy && view) {
      ctx.strokeStyle = fg; ctx.lineWidth = 1.5;
      ctx.beginPath(); ctx.arc(sx(xy[2 * hoverJ]), sy(xy[2 * hoverJ + 1]), 5, 0, 2 * Math.PI); ctx.stroke();
    }
    const f = model.get("focus");
    if (f >= 0 && xy && view) {
      ctx.strokeStyle = "rgb(213, 94, 0)"; ctx.lineWidth = 2;
      ctx.beginPath(); ctx.arc(sx(xy[2 * f]), sy(xy[2 * f + 1]), 7, 0, 2 * Math.PI); ctx.stroke();
    }
    if (lasso && lasso.length > 1) {
      ctx.strokeStyle = fg; ctx.setLineDash([4, 3]); ctx.lineWidth = 1;
      ctx.fillStyle = "rgba(127, 127, 127, 0.12)";
      ctx.beginPath(); ctx.moveTo(lasso[0][0], lasso[0][1]);
      for (const p of lasso.slice(1)) ctx.lineTo(p[0], p[1]);
      ctx.closePath(); ctx.fill(); ctx.stroke();
    }
  }

  // ---- hover: nearest visible point within HIT px, from the grid index
  function nearest(mx, my) {
    if (!index || !xy) return -1;
    const c = Math.floor((mx - ML) / CELL), r = Math.floor((my - MT) / CELL);
    let best = -1, bd = HIT * HIT;
    for (let rr = r - 1; rr <= r + 1; rr++) {
      if (rr < 0 || rr >= index.rows) continue;
      for (let cc = c - 1; cc <= c + 1; cc++) {
        if (cc < 0 || cc >= index.cols) continue;
        const ci = rr * index.cols + cc;
        for (let k = index.start[ci]; k < index.start[ci + 1]; k++) {
          const j = index.items[k];
          const ddx = sx(xy[2 * j]) - mx, ddy = sy(xy[2 * j + 1]) - my, d2 = ddx * ddx + ddy * ddy;
          if (d2 <= bd) { bd = d2; best = j; }
        }
      }
    }
    return best;
  }

  const CONTEXT = 12; // tokens shown on each side of the hovered one
  function showTip(j, mx, my, stamp) {
    const i = D.prompt[j], p = D.pos[j], a = D.offsets[i], b = D.offsets[i + 1];
    const lo = Math.max(a, j - CONTEXT), hi = Math.min(b, j + CONTEXT + 1);
    let before = "", after = "";
    for (let k = lo; k < j; k++) before += showToken(D.token(k));
    for (let k = j + 1; k < hi; k++) after += showToken(D.token(k));
    const ctxLine = h("div", "te-context", { "data-testid": "te-context" });
    const hit = text("mark", "te-hit", showToken(D.token(j)), { "data-testid": "te-hit" });
    ctxLine.append(document.createTextNode((lo > a ? "…" : "") + before), hit,
      document.createTextNode(after + (hi < b ? "…" : "")));
    let catchLine;
    const C = model.get("_catch") || {};
    if (catchPos && C.status === "ok") {
      const s = catchPos[j];
      catchLine = s >= 0
        ? `caught by the sink ${JSON.stringify(showToken(D.token(a + s)))} at position ${s} (A = ${fmt(catchW[j], 2)} > τ = ${Number(C.tau).toFixed(2)})`
        : `not caught at τ = ${Number(C.tau).toFixed(2)}`;
    } else catchLine = "catch: no attention maps of this head";
    const lines = [`prompt ${i} · position ${p} · token ${j}`, catchLine,
      `(${fmt(xy[2 * j], 3)}, ${fmt(xy[2 * j + 1], 3)})`];
    if (D.labels && D.S.label_names) lines.push(`label: ${D.S.label_names[D.labels[j]]}`);
    tip.replaceChildren(text("div", "", lines[0]), ctxLine, ...lines.slice(1).map((s) => text("div", "", s)));
    tip.hidden = false;
    let x = mx + 14, y = my + 14;
    if (x + tip.offsetWidth > W) x = Math.max(0, mx - tip.offsetWidth - 10);
    if (y + tip.offsetHeight > H) y = Math.max(0, my - tip.offsetHeight - 10);
    tip.style.left = `${x}px`; tip.style.top = `${y}px`;
    tip.dataset.token = String(j);
    tip.dataset.prompt = String(i);
    tip.dataset.position = String(p);
    requestAnimationFrame(() => { tip.dataset.latencyMs = (performance.now() - stamp).toFixed(1); });
  }

  // ---- pointer: pan / box / lasso; a click (no drag) on a point sets `focus`
  let drag = null;
  const local = (ev) => { const r = base.getBoundingClientRect(); return [ev.clientX - r.left, ev.clientY - r.top]; };
  const inside = (p) => p[0] >= ML && p[0] < ML + PW && p[1] >= MT && p[1] < MT + PH;
  base.addEventListener("mousedown", (ev) => guard(() => {
    const p = local(ev);
    if (!inside(p) || !view) return;
    ev.preventDefault();
    drag = { tool: mTool.value, start: p, view: { ...view }, path: [p], moved: false, add: ev.shiftKey };
  }));
  function onMove(ev) {
    guard(() => {
      const stamp = ev.timeStamp || performance.now();
      const p = local(ev);
      if (drag) {
        if (Math.abs(p[0] - drag.start[0]) + Math.abs(p[1] - drag.start[1]) > 3) drag.moved = true;
        if (drag.tool === "pan") {
          const v = drag.view, fx = (v.x1 - v.x0) / PW, fy = (v.y1 - v.y0) / PH;
          const ddx = (p[0] - drag.start[0]) * fx, ddy = (p[1] - drag.start[1]) * fy;
          view = { x0: v.x0 - ddx, x1: v.x1 - ddx, y0: v.y0 + ddy, y1: v.y1 + ddy };
          schedule();
        } else if (drag.tool === "box") {
          const s = drag.start;
          drawOverlay([[s[0], s[1]], [p[0], s[1]], [p[0], p[1]], [s[0], p[1]]]);
        } else {
          drag.path.push(p);
          drawOverlay(drag.path);
        }
        return;
      }
      if (ev.target !== base && ev.target !== over) return;
      if (!inside(p)) { if (hoverJ >= 0) { hoverJ = -1; tip.hidden = true; drawOverlay(); } return; }
      const j = nearest(p[0], p[1]);
      if (j !== hoverJ) { hoverJ = j; drawOverlay(); }
      if (j < 0) { tip.hidden = true; return; }
      showTip(j, p[0], p[1], stamp);
    });
  }
  function onUp(ev) {
    guard(() => {
      if (!drag) return;
      const d = drag;
      drag = null;
      const p = local(ev);
      if (!d.moved) {
        const j = nearest(p[0], p[1]);
        if (j >= 0) { set({ focus: j }); drawOverlay(); }
        return;
      }
      if (d.tool === "pan") return;
      let poly;
      if (d.tool === "box") {
        const s = d.start;
        poly = [[s[0], s[1]], [p[0], s[1]], [p[0], p[1]], [s[0], p[1]]];
      } else poly = d.path.concat([p]);
      selectPolygon(poly.map(([a, b]) => [dx(a), dy(b)]), d.add);
      drawOverlay();
    });
  }
  window.addEventListener("mousemove", onMove);
  window.addEventListener("mouseup", onUp);
  disposers.push(() => { window.removeEventListener("mousemove", onMove); window.removeEventListener("mouseup", onUp); });
  base.addEventListener("mouseleave", () => { if (!drag) { hoverJ = -1; tip.hidden = true; drawOverlay(); } });
  base.addEventListener("wheel", (ev) => guard(() => {
    const p = local(ev);
    if (!inside(p) || !view) return;
    ev.preventDefault();
    const f = Math.exp(ev.deltaY * 0.0015), cx = dx(p[0]), cy = dy(p[1]);
    view = { x0: cx - (cx - view.x0) * f, x1: cx + (view.x1 - cx) * f, y0: cy - (cy - view.y0) * f, y1: cy + (view.y1 - cy) * f };
    schedule();
  }), { passive: false });
  base.addEventListener("keydown", (ev) => guard(() => {
    if (!view) return;
    const w = view.x1 - view.x0, ht = view.y1 - view.y0;
    const acts = { ArrowLeft: [-0.1 * w, 0], ArrowRight: [0.1 * w, 0], ArrowUp: [0, 0.1 * ht], ArrowDown: [0, -0.1 * ht] };
    if (acts[ev.key]) {
      ev.preventDefault();
      const [a, b] = acts[ev.key];
      view = { x0: view.x0 + a, x1: view.x1 + a, y0: view.y0 + b, y1: view.y1 + b };
      schedule();
    } else if (ev.key === "0") { fitView(); schedule(); }
  }));
  bReset.addEventListener("click", () => { fitView(); schedule(); });
  bClear.addEventListener("click", () => set({ selected: [] }));

  /** Points inside a polygon given in data coordinates (even-odd rule) become the selection. */
  function selectPolygon(poly, add) {
    let bx0 = Infinity, bx1 = -Infinity, by0 = Infinity, by1 = -Infinity;
    for (const [a, b] of poly) { bx0 = Math.min(bx0, a); bx1 = Math.max(bx1, a); by0 = Math.min(by0, b); by1 = Math.max(by1, b); }
    const out = add ? Array.from(model.get("selected") || []) : [];
    const seen = new Set(out);
    for (let j = 0; j < D.n; j++) {
      const x = xy[2 * j], y = xy[2 * j + 1];
      if (x < bx0 || x > bx1 || y < by0 || y > by1 || seen.has(j)) continue;
      let inPoly = false;
      for (let a = 0, b = poly.length - 1; a < poly.length; b = a++) {
        const [xa, ya] = poly[a], [xb, yb] = poly[b];
        if ((ya > y) !== (yb > y) && x < ((xb - xa) * (y - ya)) / (yb - ya) + xa) inPoly = !inPoly;
      }
      if (inPoly) out.push(j);
    }
    out.sort((a, b) => a - b);
    root.dataset.lastPolygon = JSON.stringify(poly);
    set({ selected: out });
    applySelection();
  }
  function applySelection() {
    selected = new Uint8Array(D.n);
    const s = model.get("selected") || [];
    for (const j of s) if (j >= 0 && j < D.n) selected[j] = 1;
    nSelected = s.length;
    schedule();
  }

  // ---- numbers beside the picture (all from sinkwidgets.tags.tag_ev)
  const NUMBERS = [
    ["ev", "tag EV (held out)", "share of the variance of the head's centred outputs (t ≥ 1, held-out prompts) inside the rank-r tag subspace fitted on the other prompts' sinks"],
    ["ev_in_sample", "tag EV (in sample)", "the same, with the subspace fitted on the evaluation prompts themselves"],
    ["pc_bound", "PC upper bound", "the most any r-dimensional subspace explains: the top-r principal components of the same outputs"],
    ["random_floor", "random floor", "mean EV of random r-dimensional subspaces (about r / d)"],
    ["value_control", "non-sink value control", "EV of the top-r directions of the head's NON-sink values v_j W_O: when it matches the tag EV, the 'tag' is just the head's usual value direction"],
    ["cosine", "cos(tag, value subspace)", "mean principal-angle cosine between the tag subspace and the non-sink value subspace"],
    ["caught_share", "caught at τ", "share of tokens (t ≥ 1) whose attention on one of the prompt's sinks exceeds τ"],
  ];
  function drawNumbers() {
    const R = model.get("_numbers") || {};
    numbers.replaceChildren();
    const hd = R.head || model.get("head");
    numbers.appendChild(text("div", "te-num-title", `L${hd[0]}H${hd[1]}, rank ${R.rank || model.get("rank")} — sw.tags.tag_ev`));
    if (!R.ok) {
      numbers.appendChild(text("div", "te-num-error", R.error ? `tag EV unavailable: ${R.error}` : (R.message || "computing…"),
        { "data-testid": R.pending ? "te-num-pending" : "te-num-error" }));
      return;
    }
    const dl = h("dl", "te-num-list");
    for (const [k, name, help] of NUMBERS) {
      let v = R[k];
      let shownV = fmt(v, k === "random_floor" ? 4 : 3);
      if (k === "random_floor" && R.random_std != null) shownV += ` ± ${fmt(R.random_std, 4)}`;
      if (k === "caught_share" && v == null) shownV = "needs maps";
      const dt = text("dt", "", name, { title: help });
      const dd = text("dd", "", shownV, { "data-testid": `te-num-${k}`, "data-value": v == null ? "" : String(v), title: help });
      dl.append(dt, dd);
    }
    numbers.appendChild(dl);
    numbers.appendChild(text("div", "te-num-foot",
      `fit: ${R.n_fit} prompts, ${R.n_sinks} sinks (α > ε = ${fmt(R.eps, 2)}); held out: ${R.n_eval} prompts, ` +
      `${R.n_tokens} tokens; ${R.n_random} random draws`));
    if (R.n_nonfinite) numbers.appendChild(text("div", "te-num-foot te-num-nonfinite", R.nonfinite_note,
      { "data-testid": "te-num-nonfinite" }));
  }

  // ---- across layers
  function drawLayers() {
    const Ly = model.get("_layers") || {};
    const ctx = setupCanvas(layersCanvas, 340, 210);
    const fg = themeColor(root, "color", "#222");
    ctx.clearRect(0, 0, 340, 210);
    layersHead.textContent = Ly.status === "ok"
      ? `across layers: ${Ly.message}` : `across layers: ${Ly.message || "select points to follow them"}`;
    Object.assign(layersCanvas.dataset, { status: Ly.status || "", kind: Ly.kind || "", nLines: Ly.n_lines || 0,
      nSelected: Ly.n_selected || 0 });
    if (Ly.status !== "ok") return;
    const st = decodeArray(Ly.stats), ref = Ly.ref ? decodeArray(Ly.ref) : null;
    const layers = Ly.layers, n = layers.length;
    const ml = 44, mr = 8, mt = 8, mb = 28, w = 340 - ml - mr, ht = 210 - mt - mb;
    let lo = Infinity, hi = -Infinity;
    for (const a of [st, ref]) if (a) for (let i = 0; i < n; i++) for (const k of [1, 3]) { lo = Math.min(lo, a[4 * i + k]); hi = Math.max(hi, a[4 * i + k]); }
    if (!(hi > lo)) { lo -= 1; hi += 1; }
    const X = (i) => ml + (n === 1 ? w / 2 : (i / (n - 1)) * w), Y = (v) => mt + ((hi - v) / (hi - lo)) * ht;
    const band = (a, fill, line, dash) => {
      ctx.fillStyle = fill;
      ctx.beginPath();
      for (let i = 0; i < n; i++) ctx.lineTo(X(i), Y(a[4 * i + 3]));
      for (let i = n - 1; i >= 0; i--) ctx.lineTo(X(i), Y(a[4 * i + 1]));
      ctx.closePath(); ctx.fill();
      ctx.strokeStyle = line; ctx.lineWidth = 2; ctx.setLineDash(dash);
      ctx.beginPath();
      for (let i = 0; i < n; i++) ctx.lineTo(X(i), Y(a[4 * i + 2]));
      ctx.stroke(); ctx.setLineDash([]);
    };
    if (ref) band(ref, "rgba(150, 150, 150, 0.25)", "rgb(140, 140, 140)", [4, 3]);
    band(st, "rgba(213, 94, 0, 0.22)", "rgb(213, 94, 0)", []);
    ctx.strokeStyle = fg; ctx.lineWidth = 1; ctx.strokeRect(ml - 0.5, mt - 0.5, w + 1, ht + 1);
    ctx.fillStyle = fg; ctx.font = "10px sans-serif"; ctx.textAlign = "center"; ctx.textBaseline = "top";
    const step = Math.max(1, Math.ceil(n / 10));
    for (let i = 0; i < n; i += step) ctx.fillText(String(layers[i]), X(i), mt + ht + 3);
    ctx.fillText("residual after layer (median, 10–90%)", ml + w / 2, mt + ht + 15);
    ctx.textAlign = "right"; ctx.textBaseline = "middle";
    for (const t of ticks(lo, hi)) ctx.fillText(fmtTick(t), ml - 4, Y(t));
    layersCanvas.dataset.median = Array.from({ length: n }, (_, i) => st[4 * i + 2].toFixed(4)).join(",");
  }

  // ---- controls follow the model
  function syncControls() {
    mHead.value = headKey(model.get("head"));
    mRank.value = String(model.get("rank"));
    mProj.value = model.get("projection");
    mSource.value = model.get("source");
    mColor.value = model.get("color_by");
    const t = Number(model.get("tau"));
    if (![...mTau.options].some((o) => Math.abs(Number(o.value) - t) < 1e-9)) {
      const o = document.createElement("option"); o.value = String(t); o.textContent = t.toFixed(2); mTau.appendChild(o);
    }
    mTau.value = [...mTau.options].find((o) => Math.abs(Number(o.value) - t) < 1e-9).value;
  }

  on("_points", () => guard(setPoints));
  on("_catch color_by", () => guard(setColors));
  on("_numbers", () => guard(drawNumbers));
  on("_layers", () => guard(drawLayers));
  on("selected", () => guard(applySelection));
  on("focus", () => guard(drawOverlay));
  on("head rank projection source color_by tau", () => guard(syncControls));
  on("_experiment", () => guard(expPanel.draw));
  on("head rank selected", () => guard(expPanel.label));

  // ---- PNG of the current view
  async function toPng() {
    const fg = themeColor(root, "color", "#222"), bg = themeColor(root, "backgroundColor", "#fff");
    const dpr = window.devicePixelRatio || 1;
    const R = model.get("_numbers") || {};
    const textLines = [];
    if (R.ok) for (const [k, name] of NUMBERS) textLines.push(`${name}: ${k === "caught_share" && R[k] == null ? "needs maps" : fmt(R[k], k === "random_floor" ? 4 : 3)}`);
    const legendLines = names ? names.map((nm, k) => [palette[k], `${nm} (${counts[k]})`]) : [];
    const wL = 340, gap = 16, top = 26;
    const w = W + wL + 3 * gap, hh = top + Math.max(H + 16 * legendLines.length + 8, 16 * textLines.length + 230) + gap;
    const out = document.createElement("canvas");
    const ctx = setupCanvas(out, w, hh);
    ctx.fillStyle = bg; ctx.fillRect(0, 0, w, hh);
    ctx.fillStyle = fg; ctx.font = "13px sans-serif"; ctx.textBaseline = "middle";
    ctx.fillText(title.textContent, gap, top / 2);
    ctx.drawImage(base, gap, top, W, H);
    ctx.drawImage(over, gap, top, W, H);
    ctx.font = "11px sans-serif";
    legendLines.forEach(([c, s], k) => {
      ctx.fillStyle = cssRgb(c); ctx.fillRect(gap + 4, top + H + 8 + 16 * k, 10, 10);
      ctx.fillStyle = fg; ctx.fillText(s, gap + 20, top + H + 13 + 16 * k);
    });
    const xr = W + 2 * gap;
    textLines.forEach((s, k) => ctx.fillText(s, xr, top + 8 + 16 * k));
    ctx.drawImage(layersCanvas, xr, top + 16 * textLines.length + 16, 340, 210);
    void dpr;
    return new Promise((res, rej) => out.toBlob((b) => (b ? res(b) : rej(new Error("toBlob failed"))), "image/png"));
  }
  bPng.addEventListener("click", () => toPng().then((blob) => downloadBlob(blob, "tagexplorer.png"))
    .catch((err) => guard(() => { throw err; })));
  const onCustom = (msg) => {
    if (msg && msg.type === "png_request") sendPng(model, msg.id, toPng, root);
  };
  model.on("msg:custom", onCustom);
  disposers.push(() => model.off("msg:custom", onCustom));

  // ---- first draw
  setPoints();
  setColors();
  applySelection();
  drawNumbers();
  drawLayers();
  expPanel.label();
  expPanel.draw();
  root.dataset.renderMs = (performance.now() - t0).toFixed(1);
  requestAnimationFrame(() => {
    guard(draw);
    requestAnimationFrame(() => { root.dataset.firstPaint = String(performance.now()); });
  });
  model.set("_frontend", (model.get("_frontend") || 0) + 1);
  model.save_changes();
  return () => { for (const d of disposers.splice(0)) d(); };
}

// ------------------------------------------------------------------------------------------------ release experiment
/** The "release" experiment panel (sinkwidgets/widgets/tag_experiment.py): a Release button (live kernel with a
 *  model only), a progress line and Cancel while it runs, then the mean ΔNLL of the tag projection beside its
 *  random and PC controls, and a grid of the later heads' change of attention on the sink (layers × heads). */
function makeReleasePanel(model, D, root, offline, disposers) {
  const live = !offline && !!D.S.has_model;
  const wrap = h("div", "te-exp", { "data-testid": "te-exp", "aria-label": "release experiment" });
  const title = text("div", "te-num-title", "Release experiment");
  const bar = h("div", "sw-toolbar", { role: "toolbar", "aria-label": "release experiment controls" });
  const bRun = button("Release", "project the head's tag subspace out of the residual stream at the selected tokens " +
    "(or, with no selection, the tokens the head catches) and measure what changes", "te-exp-release");
  const bCancel = button("Cancel", "cancel the running experiment (stops after the current forward pass)",
    "te-exp-cancel");
  bCancel.hidden = true;
  bar.append(bRun, bCancel);
  const what = text("div", "te-caption", "", { "data-testid": "te-exp-what" });
  const status = text("div", "te-caption", "", { "data-testid": "te-exp-status", role: "status" });
  const result = h("div", "te-exp-result", { "data-testid": "te-exp-result" });
  const grid = h("canvas", "te-exp-grid", { "data-testid": "te-exp-grid",
    "aria-label": "later heads' change of attention on the sink: red more, blue less" });
  grid.hidden = true;
  wrap.append(title, bar, what, status, result, grid);
  const line = progressLine(status);
  if (!live) {
    bRun.disabled = true;
    what.textContent = offline ? "offline file: the release experiment needs a live kernel with the model"
      : "the release experiment needs a model: TagExplorer(data, model=sinkwidgets.load_model(...))";
    what.dataset.state = "no-model";
  }
  // the offline page carries the recorded experiments (tag_standalone.py): the last one is shown; a menu flips
  const hist = offline ? (model.get("_experiments") || []) : [];
  if (offline && hist.length) {
    what.textContent = `offline file: ${hist.length} recorded release experiment${hist.length === 1 ? "" : "s"}; ` +
      "a new one needs a live kernel with the model";
  }
  if (hist.length > 1) {
    const pick = h("select", "te-exp-pick", { "data-testid": "te-exp-pick", "aria-label": "recorded release experiments" });
    hist.forEach((E, i) => pick.appendChild(text("option", "", `${i + 1}. ${E.label}`, { value: String(i) })));
    pick.value = String(hist.length - 1);
    pick.addEventListener("change", () => model.set("_experiment", hist[Number(pick.value)]));
    bar.append(pick);
  }
  let running = false;
  const kr = live ? kernelRequests(model) : null;
  if (kr) disposers.push(() => kr.dispose());
  disposers.push(() => line.stop());

  function label() {
    if (!live) return;
    const hd = model.get("head"), n = (model.get("selected") || []).length;
    what.textContent = `project L${hd[0]}H${hd[1]}'s rank-${model.get("rank")} tag out at ` +
      (n ? `the ${n} selected token${n === 1 ? "" : "s"}` : "the tokens it catches (no selection)") +
      " — beside random subspaces and the top PCs";
  }
  function run() {
    if (running || !live) return;
    running = true;
    bRun.disabled = true; bCancel.hidden = false; bCancel.disabled = false;
    const hd = model.get("head");
    const name = `release of L${hd[0]}H${hd[1]}`;
    const t0 = performance.now();
    line.start(name);
    kr.request({ type: "experiment", kind: "release" }, 600000).then(({ msg }) => {
      line.stop();
      if (msg.seconds != null) wrap.dataset.kernelMs = (1000 * msg.seconds).toFixed(0);
      if (msg.ok) line.set(`${name}: done in ${((performance.now() - t0) / 1000).toFixed(1)} s`, "done");
      else if (msg.cancelled) line.set(`${name}: cancelled, nothing recorded (the view is unchanged)`, "cancelled");
      else line.set(`the experiment failed: ${msg.error} (the view is unchanged)`, "error");
    }).catch((err) => { line.stop(); line.set(`the experiment failed: ${err.message || err} (the view is unchanged)`, "error"); })
      .finally(() => {
        running = false;
        bRun.disabled = false; bCancel.hidden = true;
        status.classList.toggle("te-num-error", status.dataset.state === "error");
        wrap.dataset.roundTripMs = (performance.now() - t0).toFixed(0);
      });
  }
  bRun.addEventListener("click", run);
  bCancel.addEventListener("click", () => {
    if (!running || bCancel.disabled) return;
    bCancel.disabled = true;
    line.cancelling();
    model.send({ type: "experiment_cancel" });
  });

  const sign = (v) => (v == null ? "n/a" : (v >= 0 ? "+" : "") + fmt(v, 4));
  function row(name, value, testid, help) {
    const r = h("div", "te-exp-row");
    r.append(text("span", "te-caption", `${name}: `, { title: help }),
      text("span", "", value, { "data-testid": testid, title: help }));
    return r;
  }
  function draw() {
    const E = model.get("_experiment") || {};
    result.replaceChildren();
    if (E.status !== "ok") {
      grid.hidden = true;
      if (live) result.appendChild(text("div", "te-caption", "no experiment yet: select tokens (or none) and press Release"));
      Object.assign(wrap.dataset, { index: "-1" });
      return;
    }
    const rnd = E.random_dnll || [];
    result.append(
      text("div", "", E.label, { "data-testid": "te-exp-label" }), // holds no token text; textContent anyway
      row("mean ΔNLL, tag", `${sign(E.mean_dnll)} nats/token`, "te-exp-dnll",
        "mean change of the next-token NLL when the tag subspace is projected out (positive: harder)"),
      row(`random rank-${E.rank} (${rnd.length})`, `${sign(E.control_dnll)} (${rnd.map(sign).join(", ")})`, "te-exp-random",
        "the same projection with random subspaces of the same rank, at the same tokens"),
      row(`top-${E.rank} PCs`, sign(E.pcs_dnll), "te-exp-pcs",
        "the same projection with the top principal components of the residual at the edited tokens"),
      text("div", "te-num-foot", `baseline NLL ${fmt(E.baseline_nll, 3)}; ${E.n_edited} tokens edited in prompt(s) ` +
        `${(E.prompts || []).join(", ")}` + (E.dropped ? `; ${E.dropped} sink token(s) left out` : "")),
    );
    const toks = text("div", "te-num-foot", "edited: " + (E.edited_tokens || []).map((t) => JSON.stringify(t)).join(" "),
      { "data-testid": "te-exp-tokens" }); // token strings: textContent only
    result.appendChild(toks);
    Object.assign(wrap.dataset, { index: String(E.index), meanDnll: String(E.mean_dnll),
      controlDnll: String(E.control_dnll), pcsDnll: String(E.pcs_dnll), nEdited: String(E.n_edited) });
    if (!E.shift) { grid.hidden = true; return; }
    result.appendChild(row("later heads' Δ attention on the sink", `tag ${sign(E.mean_shift)} · random ` +
      `${sign(E.mean_shift_random)} · PCs ${sign(E.mean_shift_pcs)}`, "te-exp-shift",
      "mean over later layers, heads and queries t ≥ 1 of the change of attention mass on the sinks"));
    drawGrid(E);
  }
  function drawGrid(E) {
    const S = E.layers.length, Hh = E.H;
    const v = decodeArray(E.shift);
    if (v.length !== S * Hh) throw new Error(`Δ sink attention has ${v.length} values, expected ${S * Hh}`);
    const cw = Math.max(6, Math.min(24, Math.floor(300 / Hh))), ch = Math.max(4, Math.min(14, Math.floor(260 / S)));
    const ml = 28, mt = 4, w = ml + cw * Hh + 4, ht = mt + ch * S + 16;
    grid.hidden = false;
    const ctx = setupCanvas(grid, w, ht);
    const fg = themeColor(root, "color", "#222");
    ctx.clearRect(0, 0, w, ht);
    let m = 0;
    for (const x of v) m = Math.max(m, Math.abs(x));
    m = m || 1;
    for (let s = 0; s < S; s++) for (let k = 0; k < Hh; k++) {
      const x = v[s * Hh + k], a = Math.min(0.95, Math.sqrt(Math.abs(x) / m));
      ctx.fillStyle = x >= 0 ? `rgba(215, 48, 39, ${a.toFixed(3)})` : `rgba(49, 130, 189, ${a.toFixed(3)})`;
      ctx.fillRect(ml + k * cw, mt + s * ch, cw - 1, ch - 1);
    }
    ctx.fillStyle = fg; ctx.font = "9px sans-serif"; ctx.textAlign = "right"; ctx.textBaseline = "middle";
    const step = Math.max(1, Math.ceil(10 / ch));
    for (let s = 0; s < S; s += step) ctx.fillText(`L${E.layers[s]}`, ml - 3, mt + s * ch + ch / 2);
    ctx.textAlign = "left"; ctx.textBaseline = "top";
    ctx.fillText(`heads 0–${Hh - 1}; max |Δ| ${fmt(m, 3)}`, ml, mt + ch * S + 3);
    Object.assign(grid.dataset, { layers: String(S), heads: String(Hh), maxAbs: String(m) });
    grid.onmousemove = (ev) => {
      const r = grid.getBoundingClientRect();
      const k = Math.floor((ev.clientX - r.left - ml) / cw), s = Math.floor((ev.clientY - r.top - mt) / ch);
      grid.title = k >= 0 && k < Hh && s >= 0 && s < S
        ? `L${E.layers[s]}H${k}: Δ attention on the sink ${sign(v[s * Hh + k])}` : "";
    };
  }
  return { el: wrap, draw, label };
}

function render({ model, el: host }) {
  return buildOrShowError(buildTagExplorer, model, host, "te-error");
}

// ------------------------------------------------------------------------------------------------ offline page
/** A stand-in for the widget model in an offline page: answers head and projection changes from the views
 *  embedded in the file (every collected head, both projections, at the exported rank, τ and source). */
class LocalTagModel extends LocalModel {
  constructor(state, views) { super(state); this.views = views; }
  save_changes() {
    const hk = `${this.state.head[0]},${this.state.head[1]}`, v = this.views[hk];
    const P = this.state._points || {};
    if (!v) return;
    if (P.projection !== this.state.projection || `${P.head}` !== `${this.state.head}`) {
      setTimeout(() => {
        this.set("_points", v[this.state.projection]);
        if (this.state._catch !== v.catch) this.set("_catch", v.catch);
        if (this.state._numbers !== v.numbers) this.set("_numbers", v.numbers);
        this.set("_layers", { status: "unavailable", message: "offline file: the across-layers panel needs a live kernel" });
      }, 0);
    }
  }
}

/** Render a TagExplorer in a plain page from the state embedded by TagExplorer.to_html. */
export function mountTagStandalone(host, state, buffersB64) {
  return mountOffline(host, state, buffersB64, {
    makeModel: (full) => new LocalTagModel(full.state, full.views || {}),
    render, name: "tagExplorerModel", testid: "te-error",
  });
}

export default { render };
