"""The widget state that the live widgets and the offline HTML share (numpy only: no anywidget here)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import SinkwidgetsTypeError, SinkwidgetsValueError
from ..sinktrace import SinkTrace
from . import _serialization as ser

STATIC = Path(__file__).parent / "static"

#: The grid metrics of the SinkExplorer (the live widget's ``metric`` trait and the offline page's settings).
METRICS = ("alpha", "first_token_mass", "sink_flag", "sinks_per_head", "entropy")

try:  # numpy-only metrics of the core package; the constant keeps JS counts equal to sinks_per_head
    from ..metrics import DEFAULT_MIN_QUERIES
except ImportError:  # pragma: no cover - metrics is part of the package
    DEFAULT_MIN_QUERIES = 8


def _as_trace(trace: Any, who: str) -> SinkTrace:
    if isinstance(trace, SinkTrace):
        return trace
    if isinstance(trace, (str, os.PathLike)):
        return SinkTrace.load(trace)
    raise SinkwidgetsTypeError(
        f"{who} needs a SinkTrace (from sinkwidgets.trace(model, text, keep_maps=[...]) or SinkTrace.load(path)) "
        f"or the path of a saved trace, got {type(trace).__name__}"
    )


def _first(idx: np.ndarray, k: int = 5) -> str:
    return ", ".join(str(int(i)) for i in idx[:k]) + (f" and {len(idx) - k} more" if len(idx) > k else "")


def check_finite(trace: SinkTrace, who: str) -> None:
    """Refuse a trace whose α ``sink_scores [L, H, T]`` or kept ``maps [M, T, T]`` hold NaN or infinity.

    SinkExplorer's side of the non-finite policy (docs/tags.md, "Non-finite data": a non-finite value is never
    used silently; it is named). A NaN α drawn as 0, or an infinite one that sets the colour scale, gives a grid that
    looks plausible or blank with no word; so the widget (and its offline page) refuse the trace with a
    :class:`~sinkwidgets.errors.SinkwidgetsValueError` that counts the values, names the first heads and keys, and
    gives the fix. ``first_token_mass`` and ``entropy`` are not checked: NaN there means "not recorded" (the
    widget shows no value). The maps are scanned one at a time with ``min``/``max`` (no ``[T, T]`` temporary
    unless a map is bad).
    """
    alpha = np.asarray(trace.sink_scores)
    bad = ~np.isfinite(alpha)
    if bad.any():
        heads = np.argwhere(bad.any(axis=2))
        named = "; ".join(f"L{int(l)}H{int(h)} keys {_first(np.nonzero(bad[l, h])[0])}" for l, h in heads[:3])
        more = f"; and {len(heads) - 3} more heads" if len(heads) > 3 else ""
        raise SinkwidgetsValueError(
            f"{who}(trace=...): trace.sink_scores (α [L, H, T] = {list(alpha.shape)}) holds {int(bad.sum())} NaN or "
            f"infinite values in {len(heads)} of {alpha.shape[0] * alpha.shape[1]} heads ({named}{more}); the "
            "widget does not draw them as 0 or let them set the colour scale (docs/tags.md, 'Non-finite data'). "
            "Fix: trace again in float32 (an fp16 overflow is enough to cause this), or replace them knowingly, "
            "e.g. trace.sink_scores = np.where(np.isfinite(a), a, 0) with a = trace.sink_scores")
    if trace.maps is None or trace.map_index is None:
        return
    for i, (ly, h) in enumerate(np.asarray(trace.map_index).tolist()):
        m = trace.maps[i]
        if not m.size or (np.isfinite(m.max()) and np.isfinite(m.min())):  # max/min propagate NaN
            continue
        rows = np.nonzero(~np.isfinite(m).all(axis=1))[0]
        n_bad = int((~np.isfinite(m)).sum())
        raise SinkwidgetsValueError(
            f"{who}(trace=...): the kept attention map of L{ly}H{h} (trace.maps[{i}], [T, T] = {list(m.shape)}) "
            f"holds {n_bad} NaN or infinite values in {len(rows)} query rows ({_first(rows)}); the heatmap would "
            "draw them blank with no word (docs/tags.md, 'Non-finite data'). Fix: trace again in float32 (an fp16 "
            f"overflow is enough), or drop that map (keep_maps without ({ly}, {h}))")


def summary_state(trace: SinkTrace, who: str = "SinkExplorer") -> dict[str, Any]:
    """The static part of the state: shapes, α ``[L, H, T]``, per-head metrics ``[L, H]``, kept-map mask.

    Refuses a trace whose α or kept maps hold NaN or infinity (:func:`check_finite`)."""
    check_finite(trace, who)
    L, H, T = trace.sink_scores.shape
    dtype, transform = ser.alpha_encoding((L, H, T))
    alpha = np.nan_to_num(trace.sink_scores, nan=0.0)
    kept = np.zeros((L, H), np.float32)
    if trace.map_index is not None:
        for ly, h in np.asarray(trace.map_index):
            if 0 <= ly < L and 0 <= h < H:
                kept[ly, h] = 1.0
    return {
        "L": L, "H": H, "T": T,
        "model": trace.model_name, "causal": trace.causal, "add_bos": trace.meta.get("add_bos"),
        "min_queries": int(DEFAULT_MIN_QUERIES),
        "alpha": ser.packed(alpha, dtype, scale=max(float(alpha.max()), 1e-12) if alpha.size else 1.0,
                            transform=transform),
        "first_token_mass": ser.packed(trace.first_token_mass, "float32"),
        "entropy": ser.packed(trace.entropy, "float32"),
        "kept": ser.packed(kept, "uint8", scale=1.0),
    }


def experiment_state(exp: Any, before: SinkTrace, index: int) -> dict[str, Any]:
    """One experiment as the panel needs it (see :mod:`sinkwidgets.widgets.experiment`): label, mean ΔNLL of the
    edit and of its control, and packed arrays: α ``[L, H, T]``, first-token mass and entropy ``[L, H]`` of the trace
    under the edit (aligned to the explorer's tokens: an ``add_sink`` prefix is dropped), and ΔNLL ``[T - 1]``.
    The browser computes *after − before* from these and the summary's arrays."""
    after = exp.trace
    off = int(exp.offset)
    L, H, T = before.sink_scores.shape
    alpha = np.nan_to_num(np.asarray(after.sink_scores)[:, :, off:off + T], nan=0.0)
    if alpha.shape != (L, H, T):
        raise SinkwidgetsValueError(f"experiment {index}: the trace under the edit has α of shape "
                                    f"{list(alpha.shape)} after offset {off}, expected {[L, H, T]} (the explorer's "
                                    "trace); record experiments on the explorer that shows this trace")
    dtype, transform = ser.alpha_encoding((L, H, T))
    dnll = np.asarray(exp.dnll, dtype=np.float32)
    return {
        "index": int(index), "kind": exp.kind, "label": exp.label, "mean_dnll": float(exp.mean_dnll),
        "control_dnll": float(exp.control_dnll), "control": exp.control_note, "offset": off,
        "prefix_tokens": [str(t) for t in after.tokens[:off]],
        "alpha": ser.packed(alpha, dtype, scale=max(float(alpha.max()), 1e-12) if alpha.size else 1.0,
                            transform=transform),
        "first_token_mass": ser.packed(np.asarray(after.sink_scores)[:, :, off] if off else after.first_token_mass,
                                       "float32"),
        "entropy": ser.packed(after.entropy, "float32"),
        "dnll": ser.packed(dnll, "float32"),
    }
