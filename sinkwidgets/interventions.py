r"""What breaks without the sink: interventions on the residual stream and on attention, as nnsight edits.

Four experiments, each one forward pass per text (a few rows of a batch: the clean text and its edited copies), so
the same code runs locally (CPU, GPU, ``device_map``) and remotely on NDIF (the traced block is plain torch and this
module is shipped to the server by value):

- :func:`project_out`: remove a subspace :math:`U` from the residual stream after one layer at chosen positions,
  :math:`h_t \leftarrow h_t - U U^\top h_t` (:math:`U` orthonormal), and measure the loss and how later heads'
  attention moves. The *release* test of Zhang, Khan & Papyan (arXiv 2502.00919): later heads find tokens by
  their tags, so projecting the tag subspace out should move their attention. ``sinkwidgets.tags.release`` calls
  this; it is the one implementation.
- :func:`ablate_massive`: Sun et al. 2024 ("Massive Activations in Large Language Models", arXiv 2402.17762, §3):
  set the massive activations (:math:`|h| > 100` and :math:`\ge 1000\times` the layer's median :math:`|h|`, at the
  layer where they first appear) to zero or to their mean over reference prompts. Their LLaMA2-7B result: the mean
  leaves perplexity unchanged, zero destroys it (the activations act as a fixed bias).
- :func:`mask_sink`: forbid attention to the sink token for queries :math:`t \ge 1` in chosen layers (the rest of
  each row is renormalised: an additive :math:`-\infty` on the key before the softmax), per layer set and as a
  one-layer-at-a-time sweep.
- :func:`add_sink`: prepend a dedicated sink token (a newline, BOS, ...) and measure the NLL of the original tokens
  (StreamingLLM's "learnable / dedicated sink token", Xiao et al., ICLR 2024, §3.3).

Every function returns an :class:`InterventionResult`: it prints as a table (mean NLL per condition and its change),
keeps per-token NLL for every text and condition, optional attention changes of later layers, and ``.chart()``
draws an Altair chart. NLL of token :math:`t+1` given :math:`x_{\le t}` is
:math:`-\log \operatorname{softmax}(z_t)_{x_{t+1}}`; means are over tokens (token-weighted over all texts).

Attention changes (``attention_layers``) are computed inside the trace from the post-RoPE queries and keys
(``self_attn.source.apply_rotary_pos_emb_0``), with the mask each row really used, so they exist under SDPA and on
NDIF too. For each layer and head, with :math:`P` the clean and :math:`P'` the edited probabilities, over queries
:math:`t \ge 1`:

- ``sink_delta`` :math:`= \operatorname{mean}_t |\sum_{s \in S} (P'_{ts} - P_{ts})|` (:math:`S` the sink positions);
- ``tv`` :math:`= \operatorname{mean}_t \tfrac12 \sum_j |P'_{tj} - P_{tj}|` (total variation of each row);
- ``sink_mass`` :math:`= \operatorname{mean}_t \sum_{s \in S} P_{ts}` for every row (clean and edited).

Supported: causal decoders whose attention calls ``apply_rotary_pos_emb`` (Llama/SmolLM2, Mistral, Qwen2/3,
Gemma 2/3, OLMo, Phi-3). This module sits above the tracing layer: nothing below imports it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .errors import SinkwidgetsValueError

#: Rows (clean + edited copies) per forward pass; each row keeps a ``[T, vocab]`` float32 logits tensor.
DEFAULT_BATCH = 4
#: Queries with ``t >= FIRST_QUERY`` enter the attention statistics (query 0 can only attend to itself).
FIRST_QUERY = 1


class InterventionError(SinkwidgetsValueError):
    """An intervention's arguments do not fit the model or the texts (the message says which and how to fix)."""


# ============================================================================= in-trace helpers (plain torch)
# Everything from here to the executor section runs inside the nnsight trace, locally or on an NDIF server.
# Only torch and names of this section may be referenced (this module is pickled by value for NDIF).


def _nll_rows(logits, ids):
    """Per-token NLL ``[B, T-1]`` of ``ids [B, T]`` under ``logits [B, T, V]``: −log softmax(z_t)[x_{t+1}]."""
    import torch

    rows = []
    for b in range(ids.shape[0]):
        z = logits[b, :-1].float()
        rows.append(torch.nn.functional.cross_entropy(z, ids[b, 1:].to(z.device), reduction="none"))
    return torch.stack(rows)


def _row_mask(base, blocked, rows, B, neg):
    """Additive mask ``[B, 1, T, T]``: ``base [T, T]`` (0 / neg) for every row, plus ``blocked [T, T]`` (bool)
    set to ``neg`` in the rows where ``rows [B]`` is true."""
    import torch

    m = base[None, None].expand(B, 1, *base.shape).clone()
    if blocked is not None:
        sel = rows.to(m.device)[:, None, None, None] & blocked.to(m.device)[None, None]
        m = torch.where(sel, torch.full_like(m, neg), m)
    return m


def _probs(q, k, scale, n_rep, mask, softcap):
    """Attention probabilities ``[B, H, T, T]`` (float32) from post-RoPE ``q [B, H, T, D]``, ``k [B, KV, T, D]``."""
    import torch

    q = q.float()
    k = k.float()
    if n_rep > 1:
        k = k.repeat_interleave(n_rep, dim=1)
    s = torch.matmul(q, k.transpose(-1, -2)) * scale
    if softcap:
        s = torch.tanh(s / softcap) * softcap
    s = s + mask.to(s.device).float()
    return torch.softmax(s, dim=-1)


def _attn_stats(P, sink_cols, first_query):
    """``P [B, H, T, T]`` (row 0 clean) → ``sink_delta [B-1, H]``, ``tv [B-1, H]``, ``mass [B, H]``."""
    sink = P[:, :, first_query:, :].index_select(-1, sink_cols.to(P.device)).sum(-1)  # [B, H, Tq]
    mass = sink.mean(-1)
    dsink = (sink[1:] - sink[:1]).abs().mean(-1)
    tv = 0.5 * (P[1:, :, first_query:] - P[:1, :, first_query:]).abs().sum(-1).mean(-1)
    return dsink, tv, mass


def _edit_residual(h, edit):
    """Apply one residual edit to ``h [B, T, d]`` (row 0 is the clean copy and is never changed).

    ``("project", U [d, r], w [B, T])``: ``h ← h − w · (h U) Uᵀ``.
    ``("massive", channels [c], values [R, c], abs_thr, ratio, ctrl_pos)``: flag, on the clean row, the entries of
    ``channels`` with ``|h| > abs_thr`` and ``|h| >= ratio · median|h|``; rows ``1..R`` set the flagged entries to
    ``values[r-1]``; a row with ``ctrl_pos >= 0`` (the last) instead sets the same channels at token ``ctrl_pos``.
    Returns ``(h, flags)`` with ``flags [T, c]`` (bool, the clean row's massive entries) or ``None``.
    """
    import torch

    kind = edit[0]
    if kind == "project":
        U = edit[1].to(h.device, h.dtype)
        w = edit[2].to(h.device, h.dtype)
        return h - w[..., None] * torch.matmul(torch.matmul(h, U), U.T), None
    _, ch, values, abs_thr, ratio, ctrl_pos = edit
    ch = ch.to(h.device)
    a = h[0].abs().float()
    med = a.flatten().median()
    sub = a.index_select(-1, ch)  # [T, c]
    flags = (sub > abs_thr) & (sub >= ratio * med)
    out = h.clone()
    R = values.shape[0]
    for r in range(R):
        v = values[r].to(h.device, h.dtype)
        cur = out[r + 1].index_select(-1, ch)
        out[r + 1, :, ch] = torch.where(flags, v[None, :].expand_as(cur), cur)
    if ctrl_pos >= 0:
        out[R + 1, ctrl_pos, ch] = torch.zeros_like(out[R + 1, ctrl_pos, ch])
    return out, flags


def _block(model, inputs, ids, layers, attns, params, base_masks, blocked, mask_rows, resid, stats_layers, sink_cols,
           first_query, neg, backend):
    """One traced forward → ``{"nll": [B, T-1], "dsink", "tv", "mass": [S, ...], "flags": [T, c]}``.

    ``mask_rows {li: bool [B]}``: rows whose layer ``li`` does not attend to the ``blocked [T, T]`` entries;
    ``resid (li, edit)`` or None: a residual edit after layer ``li`` (see :func:`_edit_residual`);
    ``stats_layers``: layers whose attention changes are measured; ``params[li] = (scale, n_rep, window, softcap)``;
    ``base_masks[li]``: the causal (and sliding-window) additive mask ``[T, T]`` of layer ``li``.
    """
    import torch

    B = ids.shape[0]
    ds, tvs, masses, flags_out = [], [], [], []
    last = max([*stats_layers, *mask_rows.keys(), resid[0] if resid is not None else 0])
    with torch.no_grad(), model.trace(inputs, backend=backend):
        for li in range(last + 1):
            m = None
            if li in mask_rows or li in stats_layers:
                m = _row_mask(base_masks[li], blocked, mask_rows.get(li, torch.zeros(B, dtype=torch.bool)), B, neg)
            if li in mask_rows:
                a, kw = attns[li].inputs
                kw = dict(kw)
                hs = kw.get("hidden_states", a[0] if a else None)
                kw["attention_mask"] = m.to(hs.device, hs.dtype)
                attns[li].inputs = (a, kw)
            if li in stats_layers:
                q, k = attns[li].source.apply_rotary_pos_emb_0.output
                scale, n_rep, _, softcap = params[li]
                d, t, s = _attn_stats(_probs(q, k, scale, n_rep, m, softcap), sink_cols, first_query)
                ds.append(d)
                tvs.append(t)
                masses.append(s)
            if resid is not None and li == resid[0]:
                out = layers[li].output
                h = out[0] if isinstance(out, tuple) else out
                h2, fl = _edit_residual(h, resid[1])
                if isinstance(out, tuple):
                    layers[li].output = (h2, *out[1:])
                else:
                    layers[li].output = h2
                if fl is not None:
                    flags_out.append(fl)
        logits = model.output.logits
        sw_nll = _nll_rows(logits, ids).cpu().save()
        sw_ds = (torch.stack(ds) if ds else torch.zeros(0)).float().cpu().save()
        sw_tv = (torch.stack(tvs) if tvs else torch.zeros(0)).float().cpu().save()
        sw_mass = (torch.stack(masses) if masses else torch.zeros(0)).float().cpu().save()
        sw_flags = (flags_out[0] if flags_out else torch.zeros(0)).cpu().save()
    return {"nll": sw_nll, "dsink": sw_ds, "tv": sw_tv, "mass": sw_mass, "flags": sw_flags}


def _scan_block(model, inputs, layers, top_k, backend):
    """One traced forward → per layer the ``top_k`` largest ``|h|`` of the residual stream after the layer
    (values, flat indices ``t·d + c``) and its median ``|h|``: ``vals [L, k]``, ``idx [L, k]``, ``med [L]``."""
    import torch

    vals, idxs, meds = [], [], []
    with torch.no_grad(), model.trace(inputs, backend=backend):
        for li in range(len(layers)):
            out = layers[li].output
            h = out[0] if isinstance(out, tuple) else out
            a = h[0].float()
            top = a.abs().flatten().topk(top_k)
            vals.append(a.flatten().index_select(0, top.indices))
            idxs.append(top.indices)
            meds.append(a.abs().flatten().median())
        sw_vals = torch.stack(vals).cpu().save()
        sw_idx = torch.stack(idxs).cpu().save()
        sw_med = torch.stack(meds).cpu().save()
    return sw_vals, sw_idx, sw_med


# ============================================================================= executor (local or NDIF)
def _info(model):
    info = getattr(model, "sinkwidgets", None)
    if info is None:
        raise TypeError("pass a model from sinkwidgets.load_model(...) (it carries model.sinkwidgets)")
    if not info.causal:
        raise InterventionError(f"{info.name!r} is an encoder (not causal): interventions measure next-token NLL and "
                                "need a causal language model such as 'smollm2-135m'")
    return info


def _device(model):
    import torch

    hf = getattr(model, "_module", None)
    try:
        p = next(hf.parameters())
    except (StopIteration, AttributeError):
        return torch.device("cpu")
    return torch.device("cpu") if p.device.type == "meta" else p.device


def _plan(model, info):
    """Layers, attention envoys and per-layer ``(scale, n_rep, window, softcap)``: the chunked executor's
    :func:`~sinkwidgets.tracing.chunked.layer_plan` (it touches every attention's ``.source`` before the trace)."""
    from .errors import ChunkedUnsupportedError
    from .tracing.chunked import layer_plan

    try:
        plan = layer_plan(model, info)
    except ChunkedUnsupportedError as exc:
        raise InterventionError(
            f"{info.name!r} ({info.family}): its attention does not call apply_rotary_pos_emb, so queries and keys "
            "cannot be read for attention statistics; pass attention_layers=() or use a Llama-style model") from exc
    return plan.layers, plan.attns, plan.params


def _base_mask(T, window, neg):
    import torch

    i = torch.arange(T)
    bad = i[None, :] > i[:, None]
    if window:
        bad |= i[None, :] <= i[:, None] - window
    return torch.zeros(T, T).masked_fill(bad, neg)


def _base_masks(T, layers, params, neg):
    """``{li: [T, T] mask}`` for the layers :func:`_block` reads, one tensor per distinct sliding window."""
    by_window = {}
    out = {}
    for li in layers:
        window = params[li][2]
        if window not in by_window:
            by_window[window] = _base_mask(T, window, neg)
        out[li] = by_window[window]
    return out


class _Runner:
    """Runs blocks on this model: locally under SDPA (probabilities are recomputed where asked), or on NDIF."""

    def __init__(self, model, info, remote):
        self.model, self.info = model, info
        self.remote = remote if remote is not None else info.remote
        if info.remote and not self.remote:
            raise InterventionError(f"{info.name!r} was loaded with remote=True (no local weights): pass remote=True "
                                    "or load it locally")
        self.layers, self.attns, self.params = _plan(model, info)
        self.device = _device(model) if not self.remote else None

    def run(self, fn, *args):
        if not self.remote:
            hf = self.model._module
            prev = hf.config._attn_implementation
            if prev != "sdpa":
                hf.set_attn_implementation("sdpa")
            try:
                return fn(*args, None)
            finally:
                if prev != "sdpa":
                    hf.set_attn_implementation(prev)
        from .tracing.remote import RemoteSession

        # the session ships this module by value while it serializes the request (NDIF has no sinkwidgets; the
        # blocks call its plain-torch helpers)
        session = RemoteSession(self.model, self.info, self.remote, by_value=(__name__,))
        backend = session.backend()
        with session.guard():
            return fn(*args, backend)

    def inputs(self, ids):
        import torch

        ids = ids if self.device is None else ids.to(self.device)
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}, ids


# ============================================================================= arguments
def _texts(texts) -> list[str]:
    if isinstance(texts, str):
        return [texts]
    out = list(texts)
    if not out or not all(isinstance(t, str) for t in out):
        raise InterventionError(f"texts must be a str or a non-empty list of str, got {type(texts).__name__}")
    return out


def _tokenize(model, text, add_bos, max_tokens):
    from .tracing.api import tokenize

    ids, used = tokenize(model, text, add_bos)
    if max_tokens is not None:
        ids = ids[:max_tokens]
    if len(ids) < 3:
        raise InterventionError(f"text {text[:40]!r} has {len(ids)} tokens; interventions need at least 3")
    return ids, used


def _layers_arg(sel, L, name) -> list[int]:
    if sel is None:
        return []
    if isinstance(sel, str):
        if sel == "all":
            return list(range(L))
        try:
            a, b = (int(x) for x in sel.split("-"))
        except ValueError:
            raise InterventionError(f"{name}={sel!r}: use 'all', a range such as '12-29', or a list of layer "
                                    "indices") from None
        out = list(range(a, b + 1))
    elif isinstance(sel, (int, np.integer)):
        out = [int(sel)]
    else:
        out = [int(x) for x in sel]
    bad = [x for x in out if not 0 <= x < L]
    if bad:
        raise InterventionError(f"{name}: layers {bad} out of range; the model has {L} layers (0..{L - 1})")
    return sorted(set(out))


def _progress(it, desc, total, show=True):
    from tqdm.auto import tqdm

    return tqdm(it, desc=desc, total=total, unit="text", leave=False, disable=total < 2 or not show)


# ============================================================================= result
@dataclass
class InterventionResult:
    """Per-token NLL of every text under each condition (``conditions[0]`` is the clean baseline), optional
    attention changes of later layers, and the settings used.

    ``nll[cond]`` is a list (one per text) of float arrays; ``nll[cond][i][t]`` is the NLL of token ``t+1`` of
    text ``i`` (``targets`` says which target positions each condition scores when they differ).
    ``attention`` (may be empty): ``layers [S]``, ``sink_delta [N, S, C-1, H]``, ``tv [N, S, C-1, H]``,
    ``sink_mass [N, S, C, H]`` (N texts, C conditions, H heads; see the module docstring for definitions).
    """

    kind: str
    conditions: list[str]
    nll: dict[str, list[np.ndarray]]
    attention: dict[str, Any] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    def mean_nll(self, cond: str | None = None) -> float:
        """Token-weighted mean NLL (nats) of one condition (default: the clean baseline)."""
        arrs = self.nll[cond or self.conditions[0]]
        return float(np.concatenate(arrs).mean())

    def per_text(self, cond: str | None = None) -> np.ndarray:
        """Mean NLL of each text ``[N]`` under ``cond``."""
        return np.array([a.mean() for a in self.nll[cond or self.conditions[0]]])

    @property
    def delta(self) -> dict[str, float]:
        """Mean NLL change of each edited condition vs the baseline (nats; positive = worse)."""
        base = self.mean_nll()
        return {c: self.mean_nll(c) - base for c in self.conditions[1:]}

    def rows(self) -> list[dict]:
        """One dict per condition: mean NLL, ΔNLL, perplexity, the fraction of texts it improves, and (if measured)
        the mean first-token/sink attention mass and the mean attention change of the measured layers."""
        base = self.per_text()
        out = []
        for ci, c in enumerate(self.conditions):
            pt = self.per_text(c)
            r = {"condition": c, "mean_nll": self.mean_nll(c), "delta_nll": self.mean_nll(c) - self.mean_nll(),
                 "ppl": float(np.exp(self.mean_nll(c))),
                 "frac_texts_lower": float(np.mean(pt < base)) if ci else float("nan")}
            if self.attention:
                r["sink_mass"] = float(self.attention["sink_mass"][:, :, ci].mean())
                r["sink_delta"] = float(self.attention["sink_delta"][:, :, ci - 1].mean()) if ci else 0.0
                r["tv"] = float(self.attention["tv"][:, :, ci - 1].mean()) if ci else 0.0
            out.append(r)
        return out

    def layer_rows(self) -> list[dict]:
        """Attention statistics per measured layer and condition (mean over texts and heads)."""
        if not self.attention:
            return []
        a = self.attention
        out = []
        for si, li in enumerate(a["layers"]):
            for ci, c in enumerate(self.conditions):
                out.append({"layer": int(li), "condition": c, "sink_mass": float(a["sink_mass"][:, si, ci].mean()),
                            "sink_delta": float(a["sink_delta"][:, si, ci - 1].mean()) if ci else 0.0,
                            "tv": float(a["tv"][:, si, ci - 1].mean()) if ci else 0.0})
        return out

    def to_frame(self):
        """The table as a pandas DataFrame (needs pandas)."""
        import pandas as pd

        return pd.DataFrame(self.rows()).set_index("condition")

    def __repr__(self) -> str:
        rows = self.rows()
        cols = [k for k in rows[0] if k != "condition"]
        w = max(12, *(len(r["condition"]) for r in rows))
        head = f"{'condition':<{w}} " + " ".join(f"{c:>16}" for c in cols)
        lines = [f"{self.kind}: {self.meta.get('n_texts', '?')} texts, {self.meta.get('n_tokens', '?')} tokens "
                 f"({self.meta.get('model', '')})", head]
        for r in rows:
            lines.append(f"{r['condition']:<{w}} " + " ".join(f"{r[c]:>16.4f}" for c in cols))
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        import html

        rows = self.rows()
        cols = list(rows[0])
        body = "".join("<tr>" + "".join(f"<td>{html.escape(v) if isinstance(v, str) else f'{v:.4f}'}</td>"
                                        for v in r.values()) + "</tr>" for r in rows)
        return (f"<p><b>{html.escape(self.kind)}</b> ({self.meta.get('n_texts')} texts)</p><table><tr>"
                + "".join(f"<th>{html.escape(c)}</th>" for c in cols) + f"</tr>{body}</table>")

    def chart(self, what: str = "nll"):
        """Altair chart. ``what="nll"``: mean NLL per condition (bars); ``"layers"``: per measured layer, the sink
        attention mass of each condition (lines); ``"sweep"`` (mask_sink): ΔNLL per single masked layer."""
        import altair as alt

        if what == "layers":
            if not self.attention:
                raise InterventionError("no attention statistics in this result: run it with attention_layers=...")
            data = alt.Data(values=self.layer_rows())
            return alt.Chart(data).mark_line(point=True).encode(
                x=alt.X("layer:O", title="layer"), y=alt.Y("sink_mass:Q", title="attention mass on the sink"),
                color=alt.Color("condition:N"), tooltip=["layer:O", "condition:N", "sink_mass:Q", "tv:Q"],
            ).properties(title=f"{self.kind}: sink attention per layer", width=420, height=220)
        if what == "sweep":
            rows = [r for r in self.rows()[1:] if r["condition"].startswith("layer ")]
            if not rows:
                raise InterventionError("this result has no per-layer sweep: mask_sink(..., sweep=True)")
            for r in rows:
                r["layer"] = int(r["condition"].split()[1])
            return alt.Chart(alt.Data(values=rows)).mark_bar().encode(
                x=alt.X("layer:O"), y=alt.Y("delta_nll:Q", title="ΔNLL (nats)"), tooltip=["layer:O", "delta_nll:Q"],
            ).properties(title="masking the sink in one layer at a time", width=420, height=220)
        if what != "nll":
            raise InterventionError(f"what={what!r}: use 'nll', 'layers' or 'sweep'")
        return alt.Chart(alt.Data(values=self.rows())).mark_bar().encode(
            x=alt.X("condition:N", sort=None), y=alt.Y("mean_nll:Q", title="mean NLL per token (nats)"),
            tooltip=["condition:N", "mean_nll:Q", "delta_nll:Q", "ppl:Q"],
        ).properties(title=self.kind, width=60 * len(self.conditions), height=220)


def _collect_attention(chunks, layers):
    """Stack per-text block outputs into ``[N, S, C(-1), H]`` arrays."""
    if not layers:
        return {}
    return {"layers": np.array(layers),
            "sink_delta": np.stack([c["dsink"] for c in chunks]),
            "tv": np.stack([c["tv"] for c in chunks]),
            "sink_mass": np.stack([c["mass"] for c in chunks])}


def _neg():
    import torch

    return float(torch.finfo(torch.float32).min)


def _positions_weight(positions, T, sink_positions, i):
    """``positions`` → float weights ``[T]`` (1 where the edit applies)."""
    w = np.zeros(T, dtype=np.float32)
    if isinstance(positions, str):
        if positions == "all":
            w[:] = 1
        elif positions == "non_sink":
            w[:] = 1
            w[[p for p in sink_positions if p < T]] = 0
        else:
            raise InterventionError(f"positions={positions!r}: use 'non_sink', 'all', a list of positions or a bool "
                                    "mask [T] (or one of those per text)")
        return w
    if callable(positions):
        positions = positions(i, T)
    arr = np.asarray(positions)
    if arr.dtype == bool:
        if arr.shape != (T,):
            raise InterventionError(f"positions: a bool mask must have shape ({T},) for text {i}, got {arr.shape}")
        w[arr] = 1
    else:
        if arr.size and (arr.min() < -T or arr.max() >= T):
            raise InterventionError(f"positions {arr.tolist()} out of range for text {i} ({T} tokens)")
        w[arr.astype(int)] = 1
    return w


# ============================================================================= project_out
def project_out(model, texts, layer: int, basis, *, positions="non_sink", sink_positions=(0,),
                attention_layers="after", add_bos: bool | None = None, max_tokens: int | None = None,
                remote=None, progress: bool = True) -> InterventionResult:
    r"""Project a subspace out of the residual stream after ``layer`` at chosen positions; measure what changes.

    With :math:`U \in \mathbb R^{d\times r}` an orthonormal basis of ``basis`` (QR), every chosen position gets

    .. math:: h_t \leftarrow h_t - U U^\top h_t

    on the residual stream *after* block ``layer`` (``layers[layer].output``), and the rest of the model runs on
    the edited stream. This is the "release" test of Zhang, Khan & Papyan (arXiv 2502.00919, §4): if later heads
    retrieve tokens by the tag (the sink heads' value directions), removing the tag subspace moves their attention.

    Parameters
    ----------
    model : a model from :func:`sinkwidgets.load_model` (local, or ``remote=True``: runs on NDIF).
    texts : str or list of str.
    layer : int, block index ``0..L-1``; the projection applies to its output.
    basis : array-like ``[d, r]`` (``d`` = ``model.sinkwidgets.d_model``), float; need not be orthonormal, must have
        rank ``r``. A 1-D ``[d]`` vector is one direction.
    positions : ``"non_sink"`` (default: every token but ``sink_positions``), ``"all"``, a list of positions, a
        bool mask ``[T]``, a list of those (one per text), or a callable ``(text_index, T) -> positions``.
    sink_positions : positions of the sink tokens (default ``(0,)``), or a list of those (one per text): excluded by
        ``"non_sink"``, and the keys whose attention is measured by ``sink_delta`` / ``sink_mass``.
    attention_layers : ``"after"`` (default: layers ``layer+1..L-1``), a list / range string, or ``None``/``()`` for
        no attention statistics.
    add_bos, max_tokens : tokenization (see :func:`sinkwidgets.trace`).
    remote : None (the model's own setting), False, True or a host URL.
    progress : ``False`` hides the progress bar over the texts (shown when there are several).

    Returns
    -------
    InterventionResult
        ``conditions = ["clean", "projected"]``; ``nll[c][i]`` per-token NLL ``[T_i - 1]`` before / after;
        ``attention``: ``layers``, ``sink_delta [N, S, 1, H]`` (mean :math:`|\Delta|` of the attention on the sink
        positions), ``tv [N, S, 1, H]`` (mean total variation of the attention rows), ``sink_mass [N, S, 2, H]``;
        ``meta["rank"]``, ``meta["n_projected"]`` (positions edited per text), ``meta["sink_positions"]`` (one list,
        or one per text when given per text).

    Cost: one forward pass per text (two batch rows), plus ``[2, H, T, T]`` probabilities per measured layer.
    """
    import torch

    info = _info(model)
    L, d = info.n_layers, info.d_model
    if not isinstance(layer, (int, np.integer)) or not 0 <= int(layer) < L:
        raise InterventionError(f"layer={layer!r}: give a block index in 0..{L - 1}")
    layer = int(layer)
    Bm = np.asarray(basis.detach().cpu() if hasattr(basis, "detach") else basis, dtype=np.float64)
    if Bm.ndim == 1:
        Bm = Bm[:, None]
    if Bm.ndim != 2 or Bm.shape[0] != d:
        raise InterventionError(f"basis has shape {Bm.shape}; it must be [d_model={d}, r] (one column per direction)")
    if not np.isfinite(Bm).all():
        raise InterventionError("basis contains NaN or inf")
    Q, R = np.linalg.qr(Bm)
    rank = int((np.abs(np.diag(R)) > 1e-8 * max(1.0, np.abs(R).max())).sum())
    if rank < Bm.shape[1]:
        raise InterventionError(f"basis has {Bm.shape[1]} columns but rank {rank}: drop dependent directions")
    U = torch.tensor(Q, dtype=torch.float32)
    texts = _texts(texts)
    per_text_pos = isinstance(positions, (list, tuple)) and len(positions) == len(texts) and len(texts) > 1 and all(
        not isinstance(p, (int, np.integer)) for p in positions)
    stats = list(range(layer + 1, L)) if attention_layers == "after" else _layers_arg(attention_layers or None, L,
                                                                                       "attention_layers")
    per_text_sink = isinstance(sink_positions, (list, tuple)) and len(sink_positions) > 0 and all(
        not isinstance(s, (int, np.integer)) for s in sink_positions)
    if per_text_sink and len(sink_positions) != len(texts):
        raise InterventionError(f"sink_positions: give one list of positions, or one per text ({len(texts)}), got "
                                f"{len(sink_positions)} lists")
    sink_sets = [torch.tensor(sorted(set(int(s) for s in sp)), dtype=torch.long)
                 for sp in (sink_positions if per_text_sink else [sink_positions])]
    run = _Runner(model, info, remote)
    neg = _neg()
    chunks, nll0, nll1, n_proj, n_tok = [], [], [], [], 0
    for i, text in enumerate(_progress(texts, "project_out", len(texts), progress)):
        ids, used = _tokenize(model, text, add_bos, max_tokens)
        T = len(ids)
        sink_cols = sink_sets[i if per_text_sink else 0]
        if sink_cols.numel() and int(sink_cols.max()) >= T:
            raise InterventionError(f"sink_positions {sink_cols.tolist()} out of range for text {i} ({T} tokens)")
        w = _positions_weight(positions[i] if per_text_pos else positions, T, sink_cols.tolist(), i)
        wt = torch.zeros(2, T)
        wt[1] = torch.from_numpy(w)
        x = torch.tensor([ids, ids])
        inputs, xd = run.inputs(x)
        bases = _base_masks(T, stats, run.params, neg)
        out = run.run(_block, model, inputs, xd, run.layers, run.attns, run.params, bases, None, {},
                      (layer, ("project", U, wt)), stats, sink_cols, FIRST_QUERY, neg)
        nll = out["nll"].numpy()
        nll0.append(nll[0])
        nll1.append(nll[1])
        n_proj.append(int(w.sum()))
        n_tok += T
        if stats:
            chunks.append({k: out[k].numpy() for k in ("dsink", "tv", "mass")})
    return InterventionResult(
        "project_out", ["clean", "projected"], {"clean": nll0, "projected": nll1}, _collect_attention(chunks, stats),
        {"model": info.name, "layer": layer, "rank": rank, "n_projected": n_proj, "n_texts": len(texts),
         "n_tokens": n_tok, "add_bos": used, "remote": bool(run.remote),
         "sink_positions": [c.tolist() for c in sink_sets] if per_text_sink else sink_sets[0].tolist()})


# ============================================================================= massive activations
@dataclass
class MassiveSpec:
    """Where a model's massive activations are (Sun et al. 2024, §2): the first layer where they appear, their
    channels, and each channel's mean value there over the reference texts (the ``mode="mean"`` replacement)."""

    layer: int
    channels: list[int]
    means: list[float]
    found: list[list[tuple[int, int, float]]]  #: per reference text: (token, channel, value) at ``layer``
    first_layers: list[int | None]  #: per reference text: first layer with a massive activation
    abs_thr: float = 100.0
    ratio: float = 1000.0

    def __repr__(self) -> str:
        ch = ", ".join(f"{c} (mean {m:,.0f})" for c, m in zip(self.channels, self.means))
        return f"MassiveSpec(layer={self.layer}, channels=[{ch}], texts={len(self.found)})"


def find_massive(model, texts, *, abs_thr: float = 100.0, ratio: float = 1000.0, top_k: int = 32,
                 add_bos: bool | None = None, max_tokens: int | None = None, remote=None) -> MassiveSpec:
    r"""Locate the massive activations (Sun et al. 2024, "Massive Activations in LLMs", §2.2).

    An entry :math:`h_{t,c}` of the residual stream after a layer is massive when :math:`|h_{t,c}| > \text{abs\_thr}`
    (100) and :math:`|h_{t,c}| \ge \text{ratio} \cdot \operatorname{median}|h|` (1000×) of that layer's hidden state.
    Per text, the first layer with a massive entry is found from the ``top_k`` largest :math:`|h|` of every layer;
    the reported ``layer`` is the most common first layer, ``channels`` the channels massive there in any text, and
    ``means`` their signed mean value over those entries. One forward pass per text.
    """
    import torch

    info = _info(model)
    texts = _texts(texts)
    run = _Runner(model, info, remote)
    firsts, per_layer_entries = [], []
    for text in _progress(texts, "find_massive", len(texts)):
        ids, _ = _tokenize(model, text, add_bos, max_tokens)
        inputs, _ = run.inputs(torch.tensor([ids]))
        vals, idx, med = run.run(_scan_block, model, inputs, run.layers, min(top_k, len(ids) * info.d_model))
        vals, idx, med = vals.numpy(), idx.numpy(), med.numpy()
        entries = {}
        for li in range(vals.shape[0]):
            ok = (np.abs(vals[li]) > abs_thr) & (np.abs(vals[li]) >= ratio * med[li])
            entries[li] = [(int(j // info.d_model), int(j % info.d_model), float(v))
                           for j, v in zip(idx[li][ok], vals[li][ok])]
        first = next((li for li in range(vals.shape[0]) if entries[li]), None)
        firsts.append(first)
        per_layer_entries.append(entries)
    seen = [f for f in firsts if f is not None]
    if not seen:
        raise InterventionError(
            f"no massive activations (|h| > {abs_thr:g} and >= {ratio:g}x the median) in {info.name!r} on these "
            f"{len(texts)} texts; lower abs_thr / ratio, or pass layer= and channels= explicitly")
    layer = max(set(seen), key=seen.count)
    found = [e[layer] for e in per_layer_entries]
    by_ch: dict[int, list[float]] = {}
    for fl in found:
        for _, c, v in fl:
            by_ch.setdefault(c, []).append(v)
    channels = sorted(by_ch)
    return MassiveSpec(layer, channels, [float(np.mean(by_ch[c])) for c in channels], found, firsts, abs_thr, ratio)


def ablate_massive(model, texts, mode="both", *, reference=None, spec: MassiveSpec | None = None, control: bool = True,
                   attention_layers="after", abs_thr: float = 100.0, ratio: float = 1000.0,
                   add_bos: bool | None = None, max_tokens: int | None = None, remote=None) -> InterventionResult:
    r"""Set the massive activations to zero or to their mean and measure the loss (Sun et al. 2024, §3.1).

    The massive entries are found with :func:`find_massive` on ``reference`` (default: ``texts``), or given as a
    :class:`MassiveSpec`. In each text, the entries of ``spec.channels`` that are massive on the clean run at
    ``spec.layer`` (same criterion) are replaced, on the residual stream after that layer, by

    - ``"zero"``: 0; Sun et al. (LLaMA2-7B): perplexity explodes;
    - ``"mean"``: the channel's mean over the reference texts; Sun et al.: perplexity unchanged (a fixed bias).

    ``mode``: ``"zero"``, ``"mean"`` or ``"both"``. ``control=True`` adds a row that zeroes the same channels at the
    last token instead (not massive): the damage must come from the massive entries, not the channels.

    Returns an :class:`InterventionResult` with conditions ``clean``, ``zero`` / ``mean`` and ``control``; with
    ``attention_layers`` (default: every later layer) the first-token attention mass of each layer (``sink_mass``,
    token 0) and its change. ``meta["spec"]`` is the spec used, ``meta["n_massive"]`` the entries edited per text.
    Cost: one forward pass (2-4 rows) per text, plus :func:`find_massive` (one per reference text).
    """
    import torch

    info = _info(model)
    texts = _texts(texts)
    modes = {"both": ["zero", "mean"], "zero": ["zero"], "mean": ["mean"]}.get(mode)
    if modes is None:
        raise InterventionError(f"mode={mode!r}: use 'zero', 'mean' or 'both'")
    if spec is None:
        spec = find_massive(model, reference if reference is not None else texts, abs_thr=abs_thr, ratio=ratio,
                            add_bos=add_bos, max_tokens=max_tokens, remote=remote)
    L = info.n_layers
    stats = list(range(spec.layer + 1, L)) if attention_layers == "after" else _layers_arg(attention_layers or None, L,
                                                                                             "attention_layers")
    ch = torch.tensor(spec.channels, dtype=torch.long)
    values = torch.stack([torch.zeros(len(spec.channels)) if m == "zero" else torch.tensor(spec.means)
                          for m in modes]).float()
    conds = ["clean", *modes] + (["control"] if control else [])
    run = _Runner(model, info, remote)
    neg = _neg()
    sink_cols = torch.tensor([0])
    nll: dict[str, list] = {c: [] for c in conds}
    chunks, n_massive, n_tok = [], [], 0
    for text in _progress(texts, "ablate_massive", len(texts)):
        ids, used = _tokenize(model, text, add_bos, max_tokens)
        T = len(ids)
        x = torch.tensor([ids] * len(conds))
        inputs, xd = run.inputs(x)
        bases = _base_masks(T, stats, run.params, neg)
        edit = ("massive", ch, values, float(spec.abs_thr), float(spec.ratio), T - 1 if control else -1)
        out = run.run(_block, model, inputs, xd, run.layers, run.attns, run.params, bases, None, {},
                      (spec.layer, edit), stats, sink_cols, FIRST_QUERY, neg)
        for ci, c in enumerate(conds):
            nll[c].append(out["nll"][ci].numpy())
        n_massive.append(int(out["flags"].sum()))
        n_tok += T
        if stats:
            chunks.append({k: out[k].numpy() for k in ("dsink", "tv", "mass")})
    return InterventionResult(
        "ablate_massive", conds, nll, _collect_attention(chunks, stats),
        {"model": info.name, "spec": spec, "layer": spec.layer, "n_massive": n_massive, "n_texts": len(texts),
         "n_tokens": n_tok, "add_bos": used, "remote": bool(run.remote)})


# ============================================================================= mask the sink
def _blocked(T: int, tokens: Sequence[int]):
    """``[T, T]`` bool: keys ``tokens`` are hidden from queries ``t >= 1``; a query that would see no key keeps them."""
    import torch

    vis = torch.ones(T, T, dtype=torch.bool).tril()
    bl = torch.zeros(T, T, dtype=torch.bool)
    bl[1:, list(tokens)] = True
    bl &= vis
    empty = (vis & ~bl).sum(-1) == 0
    bl[empty] = False
    return bl


def mask_sink(model, texts, layers="12-29", *, token=0, sweep: bool = False, attention_layers=None,
              batch_size: int = DEFAULT_BATCH, add_bos: bool | None = None, max_tokens: int | None = None,
              remote=None) -> InterventionResult:
    r"""Forbid attention to the sink token in chosen layers and measure the loss.

    In every head of each chosen layer, queries :math:`t \ge 1` cannot attend to key ``token`` (default 0, where
    SmolLM2's sink forms): an additive :math:`-\infty` before the softmax, so each row is renormalised over the
    other keys, :math:`P'_{tj} = P_{tj} / (1 - P_{t,\text{sink}})` for :math:`j \ne` sink. The mask is set on each
    chosen layer's attention call (``attention_mask``), so it works under eager and SDPA attention and on NDIF.

    ``layers``: one layer set (``"12-29"``, ``"all"``, a list) or several (a list of those, or a dict name → set).
    ``sweep=True`` adds one condition per single layer (``"layer 0"`` … ``"layer L-1"``): ``chart("sweep")``.
    ``token``: an int or a list of positions to hide. ``batch_size``: rows per forward pass (one is the clean copy).

    Note (measured on SmolLM2): masking token 0 in *every* layer equals deleting it, and token 1 becomes the new
    sink, so it costs little; masking only the layers where the sink is used (12-29) costs much more.
    """
    import torch

    info = _info(model)
    L = info.n_layers
    texts = _texts(texts)
    tokens = [int(token)] if isinstance(token, (int, np.integer)) else [int(t) for t in token]
    if isinstance(layers, dict):
        sets = {str(k): _layers_arg(v, L, "layers") for k, v in layers.items()}
    elif isinstance(layers, (list, tuple)) and layers and all(isinstance(v, (str, list, tuple, range)) for v in layers):
        sets = {_set_name(v, L): _layers_arg(v, L, "layers") for v in layers}
    elif layers is None:
        sets = {}
    else:
        sets = {_set_name(layers, L): _layers_arg(layers, L, "layers")}
    if sweep:
        sets.update({f"layer {li}": [li] for li in range(L)})
    if not sets:
        raise InterventionError("mask_sink needs layers=... or sweep=True")
    if batch_size < 2:
        raise InterventionError(f"batch_size={batch_size}: need at least 2 (the clean row and one edited row)")
    stats = _layers_arg(attention_layers, L, "attention_layers")
    names = list(sets)
    conds = ["clean", *names]
    run = _Runner(model, info, remote)
    neg = _neg()
    sink_cols = torch.tensor(tokens)
    nll: dict[str, list] = {c: [] for c in conds}
    chunks, n_tok = [], 0
    per = batch_size - 1
    read = sorted({li for ls in sets.values() for li in ls} | set(stats))  # layers _block masks or measures
    for text in _progress(texts, "mask_sink", len(texts)):
        ids, used = _tokenize(model, text, add_bos, max_tokens)
        T = len(ids)
        if max(tokens) >= T:
            raise InterventionError(f"token={token!r} is out of range for a text of {T} tokens")
        bl = _blocked(T, tokens)
        bases = _base_masks(T, read, run.params, neg)
        parts = []
        for g in range(0, len(names), per):
            group = names[g:g + per]
            B = 1 + len(group)
            rows = {}
            for r, nm in enumerate(group):
                for li in sets[nm]:
                    rows.setdefault(li, torch.zeros(B, dtype=torch.bool))[r + 1] = True
            inputs, xd = run.inputs(torch.tensor([ids] * B))
            out = run.run(_block, model, inputs, xd, run.layers, run.attns, run.params, bases, bl, rows, None,
                          stats, sink_cols, FIRST_QUERY, neg)
            if g == 0:
                nll["clean"].append(out["nll"][0].numpy())
            for r, nm in enumerate(group):
                nll[nm].append(out["nll"][r + 1].numpy())
            parts.append(out)
        n_tok += T
        if stats:
            chunks.append({"dsink": np.concatenate([p["dsink"].numpy() for p in parts], axis=1),
                           "tv": np.concatenate([p["tv"].numpy() for p in parts], axis=1),
                           "mass": np.concatenate([parts[0]["mass"].numpy()[:, :1]]
                                                  + [p["mass"].numpy()[:, 1:] for p in parts], axis=1)})
    return InterventionResult(
        "mask_sink", conds, nll, _collect_attention(chunks, stats),
        {"model": info.name, "layer_sets": sets, "token": tokens, "n_texts": len(texts), "n_tokens": n_tok,
         "add_bos": used, "remote": bool(run.remote)})


def _set_name(sel, L) -> str:
    if isinstance(sel, str):
        return "all layers" if sel == "all" else f"layers {sel}"
    ls = _layers_arg(sel, L, "layers")
    if ls == list(range(ls[0], ls[-1] + 1)) and len(ls) > 1:
        return f"layers {ls[0]}-{ls[-1]}"
    return "layers " + ",".join(map(str, ls))


# ============================================================================= add a sink token
def add_sink(model, texts, prefix="\n", *, add_bos: bool | None = False, max_tokens: int | None = None,
             remote=None) -> InterventionResult:
    r"""Prepend a dedicated sink token and measure the NLL of the original tokens.

    StreamingLLM (Xiao et al., ICLR 2024, §3.3) shows that a token whose only job is to be the sink helps; in a
    model without a BOS (SmolLM2) the first *word* is the sink, and a prepended newline can take over the role
    (the massive activation moves onto it). ``prefix``: a string (tokenized on its own, without special tokens, so
    the original tokens are unchanged; a special token such as ``"<|endoftext|>"`` works), a list of token ids, or a
    list of such prefixes (one condition each).

    Both conditions score the same targets: tokens ``1..T-1`` of the original text (token 0 has no prediction
    without a prefix). ``meta["first_token_nll"][cond]`` is the NLL of original token 0 given the prefix, and
    ``meta["nll_from_token2"][cond]`` the mean NLL over tokens ``2..T-1``: without a prefix, token 1 is predicted
    from token 0 alone, so most of a prefix's gain can be that one prediction.
    Cost: one forward pass per text and condition.
    """
    import torch

    info = _info(model)
    texts = _texts(texts)
    prefixes = prefix if isinstance(prefix, list) and prefix and not isinstance(prefix[0], int) else [prefix]
    pre_ids, conds = [], ["none"]
    for p in prefixes:
        if isinstance(p, str):
            pi = list(model.tokenizer(p, add_special_tokens=False)["input_ids"])
            name = f"prefix {p!r}"
        else:
            pi = [int(x) for x in p]
            name = f"prefix ids {pi}"
        if not pi:
            raise InterventionError(f"prefix {p!r} produced no tokens; use e.g. '\\n' or a token id list")
        pre_ids.append(pi)
        conds.append(name)
    run = _Runner(model, info, remote)
    neg = _neg()
    nll: dict[str, list] = {c: [] for c in conds}
    first: dict[str, list] = {c: [] for c in conds[1:]}
    n_tok = 0
    for text in _progress(texts, "add_sink", len(texts)):
        ids, used = _tokenize(model, text, add_bos, max_tokens)
        for c, pi in zip(conds, [[], *pre_ids]):
            inputs, xd = run.inputs(torch.tensor([pi + ids]))
            out = run.run(_block, model, inputs, xd, run.layers, run.attns, run.params, {}, None, {}, None, [],
                          torch.tensor([0]), FIRST_QUERY, neg)
            full = out["nll"][0].numpy()
            nll[c].append(full[len(pi):])
            if pi:
                first[c].append(float(full[len(pi) - 1]))
        n_tok += len(ids)
    from2 = {c: float(np.concatenate([a[1:] for a in nll[c]]).mean()) for c in conds}
    return InterventionResult(
        "add_sink", conds, nll, {},
        {"model": info.name, "prefix_ids": pre_ids, "first_token_nll": {c: float(np.mean(v)) for c, v in first.items()},
         "nll_from_token2": from2, "n_texts": len(texts), "n_tokens": n_tok, "add_bos": used,
         "remote": bool(run.remote)})
