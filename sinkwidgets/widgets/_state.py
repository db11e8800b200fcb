"""The widget state that the live widgets and the offline HTML share (numpy only: no anywidget here)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

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
    raise TypeError(
        f"{who} needs a SinkTrace (from sinkwidgets.trace(model, text, keep_maps=[...]) or SinkTrace.load(path)) "
        f"or the path of a saved trace, got {type(trace).__name__}"
    )


def summary_state(trace: SinkTrace) -> dict[str, Any]:
    """The static part of the state: shapes, α ``[L, H, T]``, per-head metrics ``[L, H]``, kept-map mask."""
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
        raise ValueError(f"the trace under the edit has α of shape {alpha.shape}, expected {(L, H, T)}")
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
