r"""StreamingLLM perplexity: a fixed cache of the first tokens (the sinks) plus a sliding window.

Xiao et al., "Efficient Streaming Language Models with Attention Sinks", ICLR 2024 (arXiv 2309.17453): with a
cache of :math:`W` tokens, dropping the first tokens (window attention) makes the loss jump, because the model
parks attention on them; keeping :math:`k` of them (1-4 "attention sinks") and the last :math:`W-k` recovers it.

Conditions scored per position :math:`t` (the NLL of token :math:`t+1`):

- ``dense``: full causal attention over :math:`x_{0..t}`;
- ``window``: keys :math:`j` with :math:`t - j < W` (the last :math:`W` tokens);
- ``sink``: keys :math:`j < k` plus :math:`t - j < W - k` (the first :math:`k` plus the last :math:`W - k`), by
  ``method``:

  - ``"exact"``: StreamingLLM's rule, positions assigned *within the cache* (keys cached before rotation and
    rotated with their cache positions): the query sits at cache position :math:`\min(t, W-1)`, recent keys keep
    their distance :math:`t-j`, and sink :math:`s` is at distance :math:`\min(t, W-1) - s` instead of :math:`t-s`.
    Computed in one pass: every token's hidden states depend only on its own cache, which the banded mask
    reproduces; the only change is the sink keys' relative position, applied by rotating the query by
    :math:`\delta_t = \min(0, W-1-t)` for the sink columns (RoPE: :math:`R(a)R(b) = R(a+b)`). Proven equal to
    token-by-token streaming with a re-rotated KV cache in ``tests/test_streaming.py``.
  - ``"mask"``: the same banded attention at the original positions (one forward with an attention mask over
    [sinks + last :math:`W`]): an approximation, cheaper to explain; on SmolLM2 within 1% of ``exact``.

Both run as a banded attention in query blocks (work :math:`\approx 2TW` instead of :math:`T^2/2`), installed as
a transformers attention function for one forward pass. ``recompute`` adds Xiao et al.'s "sliding window with
re-computation" baseline: each sampled position re-encodes its last :math:`W` tokens from scratch.

Runs locally only (the attention function lives in the local model): a remote model raises an error that says so.

Which families ``method="exact"`` supports, and where their rotary embedding lives, is read from the model's
adapter (:data:`sinkwidgets.models.adapters.FAMILIES`: ``streaming_exact``, ``rotary_emb``). ``add_bos``,
``max_tokens`` (and, through ``options=RunOptions(...)``, ``progress`` and the re-computation baseline's
``batch_size``) are the shared run options of :mod:`sinkwidgets.tracing.options`.
"""

from __future__ import annotations

import contextlib
import time
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import _args
from .errors import SinkwidgetsValueError
from .models.adapters import FAMILIES
from .tracing.options import RunOptions, tokenize

#: Name under which the banded attention is registered with transformers while a forward pass runs.
ATTN_NAME = "sinkwidgets_streaming"
#: Families whose rotary embedding uses HF's rotate_half convention with one ``rotary_emb`` (method="exact"):
#: those whose adapter says ``streaming_exact`` (models/adapters.py).
EXACT_FAMILIES = tuple(f for f, ad in FAMILIES.items() if ad.streaming_exact)
#: Where the rotary embedding of a model without a sinkwidgets adapter is looked for.
_ROTARY_EMB = "model.rotary_emb"
#: Default long text: the standard library's own documentation (no download).
_STATE: dict[str, Any] = {}


class StreamingError(SinkwidgetsValueError):
    """A streaming argument does not fit the model or the text (the message says which and how to fix)."""


class StreamingWarning(UserWarning):
    """A streaming run that works but measures something other than the model's own attention (e.g. a cache larger
    than the model's sliding window)."""


# ----------------------------------------------------------------------------- long text without a download
def stdlib_docs_text(n_chars: int = 200_000, start: str = "assert") -> str:
    """Python's reference documentation shipped with the interpreter (``pydoc_data.topics``), joined from topic
    ``start`` on, as one long English text: a long input for tests and tutorials without any download."""
    from pydoc_data.topics import topics

    keys = sorted(topics)
    if start in keys:
        keys = keys[keys.index(start):] + keys[: keys.index(start)]
    parts, n = [], 0
    for k in keys:
        parts.append(topics[k].strip())
        n += len(parts[-1])
        if n >= n_chars:
            break
    return "\n\n".join(parts)[:n_chars]


# ----------------------------------------------------------------------------- banded attention (plain torch)
def _rotate_half(x):
    import torch

    x1, x2 = x[..., : x.shape[-1] // 2], x[..., x.shape[-1] // 2:]
    return torch.cat((-x2, x1), dim=-1)


def banded_attention(q, k, v, *, n_sink: int, window: int, scale: float, q_sink=None, block: int | None = None):
    r"""Attention over [first ``n_sink`` keys + last ``window - n_sink`` keys] for every query, in query blocks.

    ``q [B, H, T, D]``, ``k, v [B, H, T, D]`` (key/value heads already repeated for GQA), post-RoPE at the original
    positions. Query :math:`t` attends to keys :math:`j \le t` with :math:`j < k` or :math:`t - j < W - k`
    (``n_sink = 0``: the last ``window`` tokens). ``q_sink [B, H, T, D]``: queries used for the sink columns
    (``exact``: re-rotated to the cache position); default ``q``. Returns ``[B, H, T, D]``.
    """
    import torch

    B, H, T, D = q.shape
    K, R = int(n_sink), int(window) - int(n_sink)
    c = block or max(32, min(int(window), 256))
    out = torch.empty(B, H, T, v.shape[-1], dtype=q.dtype, device=q.device)
    neg = torch.finfo(torch.float32).min
    ar = torch.arange(T, device=q.device)
    for a in range(0, T, c):
        b = min(T, a + c)
        lo = max(K, a - R + 1)
        t = ar[a:b, None]
        j = ar[None, lo:b]
        s = torch.matmul(q[:, :, a:b].float(), k[:, :, lo:b].float().transpose(-1, -2)) * scale
        s = s.masked_fill(~((j <= t) & (j > t - R)), neg)
        if K:
            ks = min(K, b)
            qs = (q_sink if q_sink is not None else q)[:, :, a:b].float()
            s0 = torch.matmul(qs, k[:, :, :ks].float().transpose(-1, -2)) * scale
            s0 = s0.masked_fill(ar[None, :ks] > t, neg)
            s = torch.cat([s0, s], dim=-1)
            vv = torch.cat([v[:, :, :ks], v[:, :, lo:b]], dim=2)
        else:
            vv = v[:, :, lo:b]
        p = torch.softmax(s, dim=-1)
        out[:, :, a:b] = torch.matmul(p, vv.float()).to(out.dtype)
    return out


def _attention_fn(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """transformers attention-interface function: the banded attention configured in ``_STATE``."""
    st = _STATE
    n_rep = query.shape[1] // key.shape[1]
    if n_rep > 1:
        key = key.repeat_interleave(n_rep, dim=1)
        value = value.repeat_interleave(n_rep, dim=1)
    q_sink = None
    if st["cos"] is not None:
        cos, sin = st["cos"].to(query.dtype), st["sin"].to(query.dtype)
        q_sink = query * cos[:, None] + _rotate_half(query) * sin[:, None]
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    out = banded_attention(query, key, value, n_sink=st["n_sink"], window=st["window"], scale=scale, q_sink=q_sink)
    return out.transpose(1, 2).contiguous(), None


@contextlib.contextmanager
def _banded(hf, n_sink: int, window: int, exact: bool, T: int, rotary_emb: str = _ROTARY_EMB):
    """Install the banded attention on ``hf`` for the duration of the block (``rotary_emb``: the path of the
    model's one rotary embedding, from its adapter; used by ``exact``)."""
    import torch
    from transformers import AttentionInterface

    from .models.adapters import get_path, has_path

    cos = sin = None
    if exact and n_sink:
        rot = get_path(hf, rotary_emb) if rotary_emb and has_path(hf, rotary_emb) else None
        if rot is None:
            where = rotary_emb or "model.rotary_emb"
            raise StreamingError(f"method='exact' needs a model with one rotary embedding (model.{where}); "
                                 "use method='mask'")
        if float(getattr(rot, "attention_scaling", 1.0)) != 1.0:
            raise StreamingError("method='exact' re-rotates queries, which needs rotary attention_scaling == 1 "
                                 f"(this model has {rot.attention_scaling}); use method='mask'")
        delta = torch.clamp(window - 1 - torch.arange(T), max=0)[None]
        dev = next(hf.parameters()).device
        cos, sin = rot(torch.zeros(1, dtype=torch.float32, device=dev), delta.to(dev))
    AttentionInterface.register(ATTN_NAME, _attention_fn)
    try:
        from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

        ALL_MASK_ATTENTION_FUNCTIONS.register(ATTN_NAME, sdpa_mask)
    except ImportError:  # pragma: no cover - older transformers
        pass
    prev = hf.config._attn_implementation
    _STATE.update(n_sink=int(n_sink), window=int(window), cos=cos, sin=sin)
    hf.config._attn_implementation = ATTN_NAME
    for m in hf.modules():  # sub-configs (e.g. the text config of a multimodal model) follow the top one
        c = getattr(m, "config", None)
        if c is not None and c is not hf.config and hasattr(c, "_attn_implementation"):
            c._attn_implementation = ATTN_NAME
    try:
        yield
    finally:
        hf.set_attn_implementation(prev)
        _STATE.clear()


# ----------------------------------------------------------------------------- forward passes
def _hf(model):
    info = getattr(model, "sinkwidgets", None)
    if info is not None and info.remote:
        raise StreamingError(
            f"streaming_ppl runs locally only: its banded attention is a local attention function that NDIF cannot "
            f"install in {info.name!r}. Load the model locally (sinkwidgets.load_model(name)) or, for a remote "
            "model, use sinkwidgets.interventions (which run on NDIF)")
    if info is not None and not info.causal:
        raise StreamingError(f"{info.name!r} is an encoder; StreamingLLM perplexity needs a causal language model")
    return getattr(model, "_module", model), info


def _nll(hf, ids):
    import torch

    with torch.no_grad():
        x = torch.tensor([ids], device=next(hf.parameters()).device)
        logits = hf(input_ids=x, use_cache=False).logits[0].float()
    return torch.nn.functional.cross_entropy(logits[:-1], x[0, 1:], reduction="none").cpu().numpy()


def _dense(hf, ids):
    prev = hf.config._attn_implementation
    hf.set_attn_implementation("sdpa")
    try:
        return _nll(hf, ids)
    finally:
        hf.set_attn_implementation(prev)


def _streamed(hf, ids, n_sink, window, exact, rotary_emb: str = _ROTARY_EMB):
    with _banded(hf, n_sink, window, exact, len(ids), rotary_emb):
        return _nll(hf, ids)


def _rotary_emb(info) -> str:
    """The rotary embedding's path for a model's info (None: a plain HF model, the Llama-style default)."""
    return info.adapter.rotary_emb if info is not None and info.adapter is not None else _ROTARY_EMB


def _recompute(hf, ids, window, positions, batch=8, progress=None):
    """NLL of token ``t+1`` from a fresh forward over ``ids[t-W+1 .. t]`` for each ``t`` in ``positions``."""
    import torch
    from tqdm.auto import tqdm

    prev = hf.config._attn_implementation
    hf.set_attn_implementation("sdpa")
    dev = next(hf.parameters()).device
    out = []
    try:
        show = progress if progress is not None else len(positions) > batch
        for a in tqdm(range(0, len(positions), batch), desc="recompute", leave=False, disable=not show):
            ps = positions[a:a + batch]
            x = torch.tensor([ids[p - window + 1: p + 1] for p in ps], device=dev)
            with torch.no_grad():
                z = hf(input_ids=x, use_cache=False, logits_to_keep=1).logits[:, -1].float()
            y = torch.tensor([ids[p + 1] for p in ps], device=dev)
            out.append(torch.nn.functional.cross_entropy(z, y, reduction="none").cpu().numpy())
    finally:
        hf.set_attn_implementation(prev)
    return np.concatenate(out)


def _tokens(model, text, add_bos, max_tokens):
    """Token ids of ``text`` (``add_bos`` as in :func:`~sinkwidgets.tracing.options.tokenize`), cut to
    ``max_tokens``; a model without sinkwidgets info uses its tokenizer's own special tokens."""
    if not isinstance(text, str):
        raise StreamingError(f"text={_args.show(text)} ({type(text).__name__}): give one long text as a str, e.g. "
                             "text=sinkwidgets.streaming.stdlib_docs_text()")
    if getattr(model, "sinkwidgets", None) is not None:
        ids, _ = tokenize(model, text, add_bos)
    else:
        ids = list(model.tokenizer(text)["input_ids"]) if hasattr(model, "tokenizer") else None
        if ids is None:
            raise StreamingError("pass a model from sinkwidgets.load_model (it carries its tokenizer)")
    if max_tokens is not None:
        ids = ids[:max_tokens]
    return ids


def _check(window, n_sink, method, N, info=None):
    if not isinstance(method, str) or method not in ("exact", "mask"):
        raise StreamingError(f"method={_args.show(method)}: use 'exact' (StreamingLLM's positions within the cache) or "
                             "'mask' (the same attention at the original positions, an approximation)")
    if not _args.is_int(window) or window < 2:
        raise StreamingError(f"window={_args.show(window)}: give the cache size in tokens (an int >= 2), e.g. 256")
    if not _args.is_int(n_sink) or not 0 <= n_sink < window:
        raise StreamingError(f"n_sink={_args.show(n_sink)}: give 0 <= n_sink < window={window} (StreamingLLM uses "
                             "1-4)")
    if method == "exact" and n_sink and info is not None and not _exact_supported(info):
        raise StreamingError(f"method='exact' supports rotary families {EXACT_FAMILIES}; {info.name!r} is "
                             f"{info.family!r}: use method='mask'")
    if N <= window + 1:
        raise StreamingError(f"the text has {N} tokens, not more than window={window}: nothing leaves the cache. "
                             "Pass a longer text (e.g. sinkwidgets.streaming.stdlib_docs_text()) or a smaller window")


def _baselines(value) -> tuple[str, ...]:
    """``baselines``: one name or a list of names from ``"dense"``, ``"window"``."""
    items = (value,) if isinstance(value, str) else value
    if not isinstance(items, (list, tuple, set, frozenset)) or not all(isinstance(b, str) for b in items):
        raise StreamingError(f"baselines={_args.show(value)}: give names from 'dense', 'window', e.g. "
                             "baselines=('dense', 'window')")
    return tuple(items)


def _sliding_windows(hf, info) -> list[int]:
    """The sliding-window size of each layer that has one, read through the model's adapter
    (:meth:`~sinkwidgets.models.adapters.Adapter.attention_facts`); ``[]`` for a model without an adapter or
    without sliding layers."""
    ad = info.adapter if info is not None and getattr(info, "adapter", None) is not None else None
    if ad is None:
        return []
    from .models.adapters import get_path, has_path

    if not has_path(hf, ad.layers):
        return []
    out = []
    for layer in get_path(hf, ad.layers):
        if not has_path(layer, ad.attn):
            continue
        attn = get_path(layer, ad.attn)
        w, _ = ad.attention_facts(getattr(attn, "_module", attn))
        if w:
            out.append(int(w))
    return out


def _warn_window(hf, info, windows) -> None:
    """Warn when a cache size exceeds the model's own sliding window: the banded attention replaces the model's
    attention on every layer, so its sliding layers would see more keys than they were trained with (while the
    dense baseline keeps their window)."""
    own = _sliding_windows(hf, info)
    if not own:
        return
    w_min = min(own)
    big = sorted({int(W) for W in windows if int(W) > w_min})
    if big:
        name = getattr(info, "name", "this model")
        warnings.warn(
            f"window={big[0] if len(big) == 1 else big} is larger than {name!r}'s own sliding window of {w_min} tokens "
            f"({len(own)} layers slide): the streaming cache replaces that window, so those layers attend to more "
            f"keys than the model ever does, and the result is not StreamingLLM on this model. Use window <= {w_min}",
            StreamingWarning, stacklevel=3)


def _options(options, entry, add_bos, max_tokens) -> RunOptions:
    """The run options of a streaming entry point (refusing ``remote``: the banded attention is local)."""
    opts = RunOptions.resolve(options, entry, add_bos=add_bos, max_tokens=max_tokens)
    if opts.remote:
        raise StreamingError(f"{entry.__name__} runs locally only, got options={options!r}: its banded attention is "
                             "a local attention function NDIF cannot install; drop remote from the RunOptions")
    return opts


def _exact_supported(info) -> bool:
    """Whether the model's family supports ``method="exact"`` (its adapter's ``streaming_exact``)."""
    ad = info.adapter if info.adapter is not None else FAMILIES.get(info.family)
    return bool(ad is not None and ad.streaming_exact)


# ----------------------------------------------------------------------------- results
def _ppl(x) -> float:
    return float(np.exp(np.mean(x)))


@dataclass
class StreamingResult:
    """Per-position NLL of one text under each condition; ``nll[name][t]`` is the NLL of token ``t+1``.

    Conditions: ``"dense"``, ``"window"`` (W tokens, no sink) and ``"sink{k} {method}"``. ``recompute`` (if
    asked): sampled positions ``t`` and the re-computation baseline's NLL there.
    """

    nll: dict[str, np.ndarray]
    window: int
    n_sink: int
    method: str
    recompute: dict[str, np.ndarray] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def sink_name(self) -> str:
        return f"sink{self.n_sink} {self.method}"

    def _condition(self, name) -> str:
        return _args.choice("name", name, list(self.nll), what="the conditions of this result")

    def ppl(self, name: str | None = None, start: int = 0) -> float:
        """Perplexity exp(mean NLL) of a condition (one of ``nll``'s keys; default the sink condition) over
        positions ``start..`` (``0 <= start < N - 1``)."""
        key = self._condition(name if name is not None else self.sink_name)
        n = len(self.nll[key])
        start = _args.integer("start", start, minimum=0, maximum=max(n - 1, 0), example=0)
        return _ppl(self.nll[key][start:])

    def jump(self, name: str = "window", span: int = 32) -> float:
        """Mean NLL excess over dense in the first ``span`` positions after the first tokens leave the cache."""
        key = self._condition(name)
        span = _args.integer("span", span, minimum=1, example=32)
        W = self.window
        return float(np.mean(self.nll[key][W:W + span] - self.nll["dense"][W:W + span]))

    def rows(self) -> list[dict]:
        dense = self.ppl("dense")
        out = []
        for name, a in self.nll.items():
            out.append({"condition": name, "ppl": _ppl(a), "ratio_to_dense": _ppl(a) / dense,
                        "ppl_after_W": _ppl(a[self.window:]), "seconds": self.meta.get("seconds", {}).get(name, np.nan)})
        if self.recompute:
            pos = self.recompute["positions"]
            out.append({"condition": f"recompute ({len(pos)} positions)", "ppl": _ppl(self.recompute["nll"]),
                        "ratio_to_dense": _ppl(self.recompute["nll"]) / _ppl(self.nll["dense"][pos]),
                        "ppl_after_W": _ppl(self.recompute["nll"]),
                        "seconds": self.meta.get("seconds", {}).get("recompute", np.nan)})
        return out

    def __repr__(self) -> str:
        lines = [f"StreamingLLM: {self.meta.get('n_tokens')} tokens, W={self.window}, k={self.n_sink}, "
                 f"method={self.method!r} ({self.meta.get('model', '')})",
                 f"{'condition':<28}{'ppl':>10}{'x dense':>10}{'ppl t>=W':>10}{'seconds':>10}"]
        for r in self.rows():
            lines.append(f"{r['condition']:<28}{r['ppl']:>10.3f}{r['ratio_to_dense']:>10.3f}{r['ppl_after_W']:>10.3f}"
                         f"{r['seconds']:>10.2f}")
        return "\n".join(lines)

    def chart(self, smooth: int = 32):
        """Altair chart of the per-position NLL (rolling mean over ``smooth`` positions, an int >= 1; cut to the
        text's length when longer) of every condition, with a rule at ``t = W`` where the first tokens leave the
        cache. Every plotted position lies inside the text (``0..N-2``)."""
        import altair as alt

        smooth = _args.integer("smooth", smooth, minimum=1, example=32)
        n = min((len(a) for a in self.nll.values()), default=0)
        smooth = max(1, min(smooth, n))  # a window longer than the text would run past its end
        rows = []
        for name, a in self.nll.items():
            kern = np.ones(smooth) / smooth
            sm = np.convolve(a, kern, mode="valid")
            step = max(1, len(sm) // 400)
            rows += [{"position": int(i + smooth - 1), "nll": float(sm[i]), "condition": name}
                     for i in range(0, len(sm), step)]
        line = alt.Chart(alt.Data(values=rows)).mark_line().encode(
            x=alt.X("position:Q", title="position t"), y=alt.Y("nll:Q", title=f"NLL (rolling mean of {smooth})"),
            color=alt.Color("condition:N"))
        rule = alt.Chart(alt.Data(values=[{"W": self.window}])).mark_rule(strokeDash=[4, 3]).encode(x="W:Q")
        return (line + rule).properties(title=f"StreamingLLM, W = {self.window}", width=480, height=240)


def streaming_ppl(model, text: str, window: int = 256, n_sink: int = 4, method: str = "exact", *,
                  max_tokens: int | None = 2048, baselines=("dense", "window"), recompute: int = 0, seed: int = 0,
                  add_bos: bool | None = None, options: RunOptions | None = None) -> StreamingResult:
    r"""StreamingLLM perplexity of ``text`` with a cache of ``window`` tokens, ``n_sink`` of them the first tokens.

    Parameters
    ----------
    model : a local model from :func:`sinkwidgets.load_model` (Llama-style rotary decoders for ``exact``).
    text : any long text (e.g. :func:`stdlib_docs_text`); truncated to ``max_tokens``.
    window, n_sink : cache size :math:`W` and the number :math:`k` of sink tokens kept (``n_sink=0``: window only).
    method : ``"exact"`` (positions within the cache, StreamingLLM's rule) or ``"mask"`` (original positions).
    baselines : any of ``"dense"`` (always computed: ratios need it) and ``"window"``.
    recompute : number of positions ``t >= W`` (sampled evenly, ``seed`` for the offsets) that also get the
        re-computation baseline (a fresh forward of the last ``W`` tokens each).
    add_bos, max_tokens : as in :func:`sinkwidgets.trace` (but ``max_tokens`` defaults to 2048).
    options : a :class:`~sinkwidgets.tracing.options.RunOptions`: its ``add_bos`` and ``max_tokens`` (an option
        set in both, to different values, is an error), ``batch_size`` (recompute forwards per batch) and
        ``progress`` (a bar over the passes, shown once they have taken 2 s unless ``progress=False``; ``True``
        shows it at once; the recompute baseline has its own inner bar); ``remote`` must be off and ``method`` (the tracing executor) does not
        apply.

    Returns
    -------
    StreamingResult
        ``nll[name]`` ``[N-1]`` per position; ``ppl(name)``, ``jump("window")``; prints a table; ``chart()``.

    Cost: one forward pass per condition (the banded ones ≈ an SDPA forward at ``W = 256``, ``N = 2048``), plus one
    ``W``-token forward per recompute position.
    """
    opts = _options(options, streaming_ppl, add_bos, max_tokens)
    recompute = _args.integer("recompute", recompute, minimum=0, example=8)
    seed = _args.seed("seed", seed)
    baselines = _baselines(baselines)
    hf, info = _hf(model)
    ids = _tokens(model, text, opts.add_bos, opts.max_tokens)
    N = len(ids)
    _check(window, n_sink, method, N, info)
    _warn_window(hf, info, [window])
    rot = _rotary_emb(info)
    bad = set(baselines) - {"dense", "window"}
    if bad:
        raise StreamingError(f"baselines={tuple(baselines)!r}: choose from 'dense', 'window'")
    secs, nll = {}, {}
    name = f"sink{n_sink} {method}" if n_sink else "window"
    passes = ["dense"] + (["window"] if "window" in baselines and n_sink else []) + [name]
    bar = _passes_bar(opts.progress, len(passes) + bool(recompute), N)
    try:
        for p in passes:
            bar.set_description(f"streaming ppl ({p})", refresh=False)
            bar.refresh()
            t0 = time.perf_counter()
            if p == "dense":
                nll[p] = _dense(hf, ids)
            elif p == "window":  # the window-only baseline next to a sink condition
                nll[p] = _streamed(hf, ids, 0, window, False)
            else:
                nll[p] = _streamed(hf, ids, n_sink, window, method == "exact", rot)
            secs[p] = time.perf_counter() - t0
            bar.update(1)
        if recompute:
            bar.set_description("streaming ppl (recompute)", refresh=False)
            bar.refresh()
            rec = _recompute_positions(hf, ids, window, N, recompute, seed, opts, secs)
            bar.update(1)
        else:
            rec = {}
    finally:
        bar.close()
    return StreamingResult(nll, window, n_sink, method if n_sink else "mask", rec,
                           {"model": info.name if info else type(hf).__name__, "n_tokens": N, "seconds": secs})


#: Seconds of silence before the default (``progress=None``) bar of :func:`streaming_ppl` appears.
PROGRESS_DELAY = 2.0


def _passes_bar(progress: bool | None, total: int, n_tokens: int):
    """A ``tqdm.auto`` bar over :func:`streaming_ppl`'s passes (one forward of ``n_tokens`` per condition, plus the
    recompute baseline as one step with its own inner bar). ``progress``: True shows it at once, None once the work
    has taken :data:`PROGRESS_DELAY` seconds, False never (``TQDM_DISABLE=1`` too)."""
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="streaming ppl", unit="pass", disable=progress is False,
                delay=0.0 if progress else PROGRESS_DELAY, postfix=f"{n_tokens} tokens")


def _recompute_positions(hf, ids, window, N, recompute, seed, opts, secs) -> dict:
    """The re-computation baseline of :func:`streaming_ppl` at ``recompute`` positions ``t >= window``."""
    rng = np.random.default_rng(seed)
    cand = np.arange(window, N - 1)
    pos = np.unique(np.linspace(0, len(cand) - 1, min(recompute, len(cand))).astype(int))
    pos = np.sort(cand[np.clip(pos + rng.integers(0, max(1, len(cand) // max(1, recompute)), len(pos)), 0,
                               len(cand) - 1)])
    pos = np.unique(pos)
    t0 = time.perf_counter()
    rec = {"positions": pos, "nll": _recompute(hf, ids, window, [int(p) for p in pos], opts.batch_size,
                                               opts.progress)}
    secs["recompute"] = time.perf_counter() - t0
    return rec


def _grid(name: str, value) -> tuple:
    """One axis of a sweep: a single value (an int, or a method name) or a non-empty list of them."""
    eg = {"windows": "(128, 256)", "n_sinks": "(0, 1, 4)"}.get(name, "('mask',)")
    if isinstance(value, str) or _args.is_int(value):
        return (value,)
    try:
        out = tuple(value)
    except TypeError:
        raise StreamingError(f"{name}={value!r}: give a value or a list of values, e.g. {name}={eg}") from None
    if not out:
        raise StreamingError(f"{name}={value!r} is empty: give at least one value, e.g. {name}={eg}")
    return out


@dataclass
class StreamingSweep:
    """Perplexity for every (window, n_sink, method) of a sweep; ``results[(W, k, method)]`` the curves."""

    results: dict[tuple[int, int, str], StreamingResult]
    dense_ppl: float
    meta: dict[str, Any] = field(default_factory=dict)

    def rows(self) -> list[dict]:
        out = []
        for (W, k, m), r in self.results.items():
            out.append({"window": W, "n_sink": k, "method": m if k else "window", "ppl": r.ppl(r.sink_name if k
                        else "window"), "ratio_to_dense": r.ppl(r.sink_name if k else "window") / self.dense_ppl})
        return out

    def ppl(self, window: int, n_sink: int, method: str = "mask") -> float:
        """Perplexity of one grid point ``(window, n_sink, method)`` of the sweep (``n_sink=0``: window only)."""
        key = (window, n_sink, method if n_sink else "mask")
        try:
            found = key in self.results
        except TypeError:  # an unhashable value (a list) is in no sweep
            found = False
        if not found:
            have = ", ".join(f"({W}, {k}, {m!r})" for W, k, m in self.results)
            raise StreamingError(f"(window, n_sink, method)={key!r} is not in this sweep; choose one of {have}")
        r = self.results[key]
        return r.ppl(r.sink_name if n_sink else "window")

    def __repr__(self) -> str:
        lines = [f"StreamingLLM sweep: {self.meta.get('n_tokens')} tokens, dense ppl {self.dense_ppl:.3f} "
                 f"({self.meta.get('model', '')})", f"{'W':>6}{'k':>4}  {'method':<8}{'ppl':>10}{'x dense':>10}"]
        for r in self.rows():
            lines.append(f"{r['window']:>6}{r['n_sink']:>4}  {r['method']:<8}{r['ppl']:>10.3f}{r['ratio_to_dense']:>10.3f}")
        return "\n".join(lines)

    def chart(self):
        """Altair chart: perplexity vs window for each (n_sink, method), dense as a rule."""
        import altair as alt

        rows = self.rows()
        for r in rows:
            r["config"] = f"k={r['n_sink']} {r['method']}" if r["n_sink"] else "window only"
        line = alt.Chart(alt.Data(values=rows)).mark_line(point=True).encode(
            x=alt.X("window:O", title="cache size W"), y=alt.Y("ppl:Q", title="perplexity"),
            color=alt.Color("config:N"), tooltip=["window:O", "config:N", "ppl:Q", "ratio_to_dense:Q"])
        rule = alt.Chart(alt.Data(values=[{"dense": self.dense_ppl}])).mark_rule(strokeDash=[4, 3]).encode(y="dense:Q")
        return (line + rule).properties(title="StreamingLLM perplexity", width=360, height=240)


def streaming_sweep(model, text: str, windows=(128, 256, 512), n_sinks=(0, 1, 4), methods=("mask",), *,
                    max_tokens: int | None = 2048, add_bos: bool | None = None,
                    options: RunOptions | None = None) -> StreamingSweep:
    """:func:`streaming_ppl` over a grid of windows, sink counts and methods (dense computed once; ``n_sink=0`` is
    window only, computed once per window). One banded forward pass per grid point. ``options``: a
    :class:`~sinkwidgets.tracing.options.RunOptions` (``add_bos``, ``max_tokens``; ``progress`` for the sweep's
    bar, shown by default), as in :func:`streaming_ppl`."""
    from tqdm.auto import tqdm

    opts = _options(options, streaming_sweep, add_bos, max_tokens)
    windows, n_sinks, methods = (_grid(name, v) for name, v in (("windows", windows), ("n_sinks", n_sinks),
                                                                ("methods", methods)))
    hf, info = _hf(model)
    ids = _tokens(model, text, opts.add_bos, opts.max_tokens)
    rot = _rotary_emb(info)
    for W in windows:
        for k in n_sinks:
            for m in methods:
                _check(W, k, m, len(ids), info)
    _warn_window(hf, info, windows)
    dense = _dense(hf, ids)
    grid = sorted({(W, k, m if k else "mask") for W in windows for k in n_sinks for m in methods})
    out = {}
    for W, k, m in tqdm(grid, desc="streaming sweep", leave=False, disable=opts.progress is False):
        t0 = time.perf_counter()
        a = _streamed(hf, ids, k, W, m == "exact", rot)
        name = f"sink{k} {m}" if k else "window"
        out[(W, k, m)] = StreamingResult({"dense": dense, name: a}, W, k, m, {},
                                         {"model": info.name if info else "", "n_tokens": len(ids),
                                          "seconds": {name: time.perf_counter() - t0}})
    return StreamingSweep(out, _ppl(dense), {"model": info.name if info else "", "n_tokens": len(ids)})
