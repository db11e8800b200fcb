"""Small numpy summaries of saved traces used by the tutorials: residual norms, outlier channels, attention to
special tokens. Everything here works on :class:`~sinkwidgets.SinkTrace` objects alone (no model, no torch).

=============================  ==================================================================================
``norm_ratio(tr, token=0)``    per layer, the residual norm of one token divided by the median norm of the others
``outlier_channels(tr)``       Sun et al.'s massive activations grouped by (token, channel): first/last layer, peak
``attention_to(tr, keys)``     per layer and head, mean attention on a set of key positions (needs kept maps)
``special_positions(tr)``      positions of ``[CLS]``, ``[SEP]``, punctuation and other tokens of a prompt
=============================  ==================================================================================
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from ..errors import SinkwidgetsTypeError, SinkwidgetsValueError
from ..sinktrace import SinkTrace

__all__ = ["norm_ratio", "OutlierChannel", "outlier_channels", "attention_to", "special_positions", "PUNCT"]

PUNCT = frozenset(".,;:!?")


def _trace(tr, fn: str) -> SinkTrace:
    if not isinstance(tr, SinkTrace):
        raise SinkwidgetsTypeError(f"{fn}(tr=...) needs a SinkTrace, got {type(tr).__name__}; e.g. "
                                   "sinkwidgets.trace(model, text)")
    return tr


def norm_ratio(tr: SinkTrace, token: int = 0) -> np.ndarray:
    """``[L]``: the residual-stream norm of ``token`` after each layer over the median norm of the other tokens.

    A "residual-state peak" (Guo et al. 2024; Gu et al. 2025 App. C.3) shows as a ratio far above 1.
    """
    tr = _trace(tr, "norm_ratio")
    T = tr.n_tokens
    if not 0 <= token < T:
        raise SinkwidgetsValueError(f"token={token!r}: token {token} is out of range (0..{T - 1}); pick one of them")
    if T < 2:
        raise SinkwidgetsValueError("tr: need at least 2 tokens to compare a token with the others, the trace has "
                                    f"{T}; trace a longer text")
    n = np.asarray(tr.resid_norms, np.float64)
    if np.isnan(n).all():
        raise SinkwidgetsValueError("this trace has no residual norms recorded; trace it with sinkwidgets.trace()")
    others = np.delete(n, token, axis=1)
    return n[:, token] / np.median(others, axis=1)


@dataclass(frozen=True)
class OutlierChannel:
    """One (token, channel) pair that carries a massive activation in one or more layers."""

    token: int
    token_str: str
    channel: int
    first_layer: int
    last_layer: int
    n_layers: int
    peak: float        #: largest |value| over those layers, with its sign
    peak_ratio: float  #: largest |value| / median |h| of its layer

    def to_dict(self) -> dict:
        return asdict(self)


def outlier_channels(tr: SinkTrace, abs_thr: float = 100.0, ratio: float = 1000.0) -> list[OutlierChannel]:
    """Massive activations (Sun et al. 2024: |h| > ``abs_thr`` and ≥ ``ratio`` × the layer's median |h|),
    grouped by (token, channel) and sorted by peak magnitude, largest first."""
    from ..metrics import massive_activations

    tr = _trace(tr, "outlier_channels")
    groups: dict[tuple[int, int], list] = {}
    for m in massive_activations(tr, abs_thr=abs_thr, ratio=ratio):
        groups.setdefault((m.token, m.channel), []).append(m)
    out = []
    for (t, c), ms in groups.items():
        best = max(ms, key=lambda m: abs(m.value))
        layers = sorted({m.layer for m in ms})
        out.append(OutlierChannel(t, tr.tokens[t], c, layers[0], layers[-1], len(layers), best.value,
                                  max(m.ratio for m in ms)))
    return sorted(out, key=lambda o: -abs(o.peak))


def attention_to(tr: SinkTrace, keys, queries=None) -> np.ndarray:
    """``[L, H]`` mean over queries of the total attention each head puts on the key positions ``keys``.

    Needs the full maps (trace with ``keep_maps="all"``); heads whose map was not kept are NaN. ``queries``
    (default: all) restricts the mean to some query positions, e.g. to compare [SEP]→[SEP] with other→[SEP]
    (Clark et al. 2019, §3). For a causal model only queries that can see a key count for it.
    """
    tr = _trace(tr, "attention_to")
    T = tr.n_tokens
    keys = np.asarray(sorted(set(int(k) for k in keys)), dtype=np.int64)
    if keys.size == 0 or keys.min() < 0 or keys.max() >= T:
        raise SinkwidgetsValueError(f"keys must be non-empty positions in 0..{T - 1}, got {keys.tolist()}; e.g. "
                                    "keys=[0]")
    q = np.arange(T) if queries is None else np.asarray(sorted(set(int(i) for i in queries)), dtype=np.int64)
    if q.size == 0 or q.min() < 0 or q.max() >= T:
        raise SinkwidgetsValueError(f"queries must be non-empty positions in 0..{T - 1}, got {q.tolist()[:8]}; e.g. "
                                    "queries=None (all of them)")
    out = np.full((tr.n_layers, tr.n_heads), np.nan)
    for l in range(tr.n_layers):
        for h in range(tr.n_heads):
            if tr.has_map(l, h):
                A = np.asarray(tr.get_map(l, h), np.float64)
                out[l, h] = A[np.ix_(q, keys)].sum(1).mean()
    return out


def special_positions(tr: SinkTrace) -> dict[str, list[int]]:
    """Positions of ``cls``, ``sep``, ``punct`` (. , ; : ! ?) and ``other`` tokens of a trace's prompt."""
    tr = _trace(tr, "special_positions")
    out: dict[str, list[int]] = {"cls": [], "sep": [], "punct": [], "other": []}
    for i, t in enumerate(tr.tokens):
        s = t.strip().lstrip("Ġ▁")
        kind = "cls" if s in ("[CLS]", "<s>") else "sep" if s in ("[SEP]", "</s>") else \
            "punct" if s and all(ch in PUNCT for ch in s) else "other"
        out[kind].append(i)
    return out
