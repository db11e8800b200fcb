"""Static charts (Altair / Vega-Lite) of a trace, and PNG/SVG export through vl-convert: no browser needed.

Use these for papers, slides and CI artefacts; the interactive widgets are for exploring. Charts embed their
(downsampled) data as Vega-Lite JSON, so they stay small: the heatmap is max-pooled to ``max_cells`` per side.

>>> from sinkwidgets.widgets import charts
>>> charts.save_png(charts.grid_chart(trace, metric="first_token_mass"), "grid.png")
>>> charts.save_svg(charts.heatmap_chart(trace, layer=3, head=0), "head_3_0.svg")
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from .._args import integer as check_integer
from ..errors import SinkwidgetsValueError
from ..sinktrace import SinkTrace
from . import _serialization as ser
from ._widget import _METRIC_HELP, METRICS, _as_trace

__all__ = ["grid_chart", "heatmap_chart", "token_chart", "save_png", "save_svg"]


def _alt():
    import altair as alt  # imported on first use: altair is only needed for static charts

    return alt


def _check_head(tr: SinkTrace, layer: Any, head: Any) -> None:
    """``layer`` and ``head`` are ints (numpy ints too; a string or float: ``ArgumentTypeError``) inside the trace."""
    layer, head = check_integer("layer", layer, example=0), check_integer("head", head, example=0)
    if not (0 <= layer < tr.n_layers):
        raise SinkwidgetsValueError(f"layer={layer}: layer {layer} is out of range: this trace has {tr.n_layers} "
                                    f"layers (0..{tr.n_layers - 1}); pick one of them")
    if not (0 <= head < tr.n_heads):
        raise SinkwidgetsValueError(f"head={head}: head {head} is out of range: this trace has {tr.n_heads} heads "
                                    f"(0..{tr.n_heads - 1}); pick one of them")


def grid_values(trace: SinkTrace, metric: str = "alpha", eps: float = 0.3, token: int = 0) -> np.ndarray:
    """The grid's ``[L, H]`` values for ``metric`` (same definitions as the widget and sinkwidgets.metrics)."""
    tr = _as_trace(trace, "grid_values")
    if metric not in METRICS:
        raise SinkwidgetsValueError(f"metric {metric!r} is not one of {METRICS}; e.g. metric='alpha'")
    token = check_integer("token", token, example=0)
    if not (0 <= token < tr.n_tokens):
        raise SinkwidgetsValueError(f"token={token}: token {token} is out of range: the prompt has {tr.n_tokens} "
                                    f"tokens (0..{tr.n_tokens - 1}); pick one of them")
    from .. import metrics as M

    if metric == "alpha":
        return tr.sink_scores[:, :, token].astype(np.float64)
    if metric == "first_token_mass":
        return np.asarray(tr.first_token_mass, np.float64)
    if metric == "entropy":
        return np.asarray(tr.entropy, np.float64)
    if metric == "sink_flag":
        return M.sink_head_mask(tr, k=token, eps=eps).astype(np.float64)
    return M.sinks_per_head(tr, eps=eps).counts.astype(np.float64)


def grid_chart(trace: SinkTrace, metric: str = "alpha", eps: float = 0.3, token: int = 0,
               cell: int = 16) -> Any:
    """Layers × heads heatmap of a metric (an ``altair.Chart``).

    Parameters
    ----------
    trace : SinkTrace
    metric : {"alpha", "first_token_mass", "sink_flag", "sinks_per_head", "entropy"}
    eps : float
        Sink threshold for ``sink_flag`` / ``sinks_per_head``.
    token : int
        Key token for ``alpha`` / ``sink_flag``.
    cell : int
        Cell size in pixels.
    """
    alt = _alt()
    tr = _as_trace(trace, "grid_chart")
    v = grid_values(tr, metric, eps, token)
    L, H = v.shape
    rows = [{"layer": int(ly), "head": int(h), "value": None if np.isnan(v[ly, h]) else float(v[ly, h]),
             "first_token_mass": float(np.nan_to_num(tr.first_token_mass[ly, h])),
             "alpha": float(tr.sink_scores[ly, h, token])} for ly in range(L) for h in range(H)]
    title = _METRIC_HELP[metric].replace("the selected token", f"token {token} {tr.tokens[token]!r}")
    if metric in ("sink_flag", "sinks_per_head"):
        title += f" (ε = {eps:g})"
    return (
        alt.Chart(alt.Data(values=rows), title=f"{tr.model_name}: {title}")
        .mark_rect()
        .encode(
            x=alt.X("head:O", title="head"),
            y=alt.Y("layer:O", title="layer"),
            color=alt.Color("value:Q", title=metric, scale=alt.Scale(scheme="viridis")),
            tooltip=["layer:O", "head:O", alt.Tooltip("value:Q", format=".3f"),
                     alt.Tooltip("first_token_mass:Q", format=".3f"), alt.Tooltip("alpha:Q", format=".3f")],
        )
        .properties(width=cell * H, height=cell * L)
    )


def heatmap_chart(trace: SinkTrace, layer: int, head: int, max_cells: int = 96, scale: str = "linear",
                  eps: float = 0.3, size: int = 420) -> Any:
    """One head's attention map (queries × keys), max-pooled to at most ``max_cells`` per side.

    When the map was not kept, shows α per key instead, titled with how to keep the map.
    Sink columns (α > ε) are marked with orange ticks above the map.
    """
    alt = _alt()
    tr = _as_trace(trace, "heatmap_chart")
    _check_head(tr, layer, head)
    if scale not in ("linear", "log"):
        raise SinkwidgetsValueError(f"scale must be 'linear' or 'log', got {scale!r}; e.g. scale='log'")
    T = tr.n_tokens
    alpha = tr.sink_scores[layer, head]
    sinks = [int(k) for k in np.nonzero(alpha > eps)[0]]
    if not tr.has_map(layer, head):
        rows = [{"key": k, "token": tr.tokens[k], "alpha": float(alpha[k])} for k in range(T)]
        return (
            alt.Chart(alt.Data(values=rows),
                      title=[f"layer {layer}, head {head}: α per key",
                             f"map not kept: trace with keep_maps=[{layer}] to see the map"])
            .mark_bar()
            .encode(x=alt.X("key:Q", title="key position"), y=alt.Y("alpha:Q", title="α"),
                    tooltip=["key:Q", "token:N", alt.Tooltip("alpha:Q", format=".3f")])
            .properties(width=size, height=size // 3)
        )
    attn = tr.get_map(layer, head)
    z = ser.overview_level(T, max_cells)
    s = 1 << z
    pooled = ser.max_pool(attn, s)
    R, C = pooled.shape
    label = (lambda i: f"{i} {tr.tokens[i]!r}") if s == 1 else (lambda i: f"{i}-{min(T, i + s) - 1}")
    rows = [{"q": int(i), "k": int(j), "query": label(i * s), "key": label(j * s), "value": float(pooled[i, j])}
            for i in range(R) for j in range(C) if not (tr.causal and j > i)]
    color_scale = alt.Scale(scheme="viridis", type="symlog", constant=1e-3) if scale == "log" else \
        alt.Scale(scheme="viridis", domain=[0, float(max(pooled.max(), 1e-9))])
    heat = (
        alt.Chart(alt.Data(values=rows))
        .mark_rect()
        .encode(
            x=alt.X("k:O", title=f"key{'' if s == 1 else f' (blocks of {s})'}", axis=alt.Axis(labels=C <= 64)),
            y=alt.Y("q:O", title=f"query{'' if s == 1 else f' (blocks of {s})'}", axis=alt.Axis(labels=R <= 64)),
            color=alt.Color("value:Q", title="attention" if s == 1 else f"max over {s}×{s}", scale=color_scale),
            tooltip=["query:N", "key:N", alt.Tooltip("value:Q", format=".4f")],
        )
        .properties(width=size, height=size)
    )
    marks = [{"k": int(k // s)} for k in sorted({k - k % s for k in sinks})]
    tick = (
        alt.Chart(alt.Data(values=marks or [{"k": -1}]))
        .mark_tick(color="#e6550d", thickness=3, size=10)
        .encode(x=alt.X("k:O", scale=alt.Scale(domain=list(range(C))), axis=None))
        .properties(width=size, height=12)
    )
    return alt.vconcat(tick, heat, spacing=2, title=f"{tr.model_name}: layer {layer}, head {head} "
                       f"({T} tokens; orange: α > {eps:g})")


def token_chart(trace: SinkTrace, layer: int, head: int | None = None, width: int = 640) -> Any:
    """α per key of one head, or its max over the layer's heads (``head=None``), as a bar chart."""
    alt = _alt()
    tr = _as_trace(trace, "token_chart")
    _check_head(tr, layer, 0 if head is None else head)
    a = tr.sink_scores[layer].max(0) if head is None else tr.sink_scores[layer, head]
    rows = [{"key": k, "token": tr.tokens[k], "alpha": float(a[k])} for k in range(tr.n_tokens)]
    what = "max over heads" if head is None else f"head {head}"
    return (
        alt.Chart(alt.Data(values=rows), title=f"α per token, layer {layer} ({what})")
        .mark_bar()
        .encode(x=alt.X("key:O", title="token position", axis=alt.Axis(labels=tr.n_tokens <= 64)),
                y=alt.Y("alpha:Q", title="α"), color=alt.Color("alpha:Q", scale=alt.Scale(scheme="viridis")),
                tooltip=["key:O", "token:N", alt.Tooltip("alpha:Q", format=".3f")])
        .properties(width=width, height=160)
    )


def _spec(chart: Any) -> dict:
    import altair as alt

    with alt.data_transformers.disable_max_rows():
        return chart.to_dict()


def save_png(chart: Any, path: str | os.PathLike, scale: float = 2.0) -> Path:
    """Render an Altair chart to PNG with vl-convert (offline, no browser). Returns the path."""
    import vl_convert as vlc

    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(vlc.vegalite_to_png(_spec(chart), scale=scale))
    return out


def save_svg(chart: Any, path: str | os.PathLike) -> Path:
    """Render an Altair chart to SVG with vl-convert (offline, no browser). Returns the path."""
    import vl_convert as vlc

    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(vlc.vegalite_to_svg(_spec(chart)), encoding="utf-8")
    return out
