"""Static charts (Altair) for notebooks and slides: ``sw.charts`` is the package's one charts home.

Every static chart a notebook draws is reached as ``sw.charts.<name>``. Most are defined here; two groups are defined
beside the code whose definitions they share and re-exported here (same objects):

=================================  ===============================================================================
defined here
``norm_chart(tr)``                 residual-stream norm of every token after every layer (log colour scale)
``outlier_chart(tr)``              the top |activations| per layer, coloured by channel, against the layer median
                                   and Sun et al.'s thresholds (massive activations)
``activation_view(tr)``            both side by side: the "why the first token?" picture from the SinkTrace alone
``line_chart(series, x=...)``      one line per named series (e.g. a metric per layer for several conditions)
``bar_chart(values)``              one bar per named value
``weights_chart(results)``         one panel of attention weights per normaliser (the hand-made head, tutorial 02)
re-exported from widgets.charts    ``grid_chart``, ``heatmap_chart``, ``token_chart``, ``save_png``, ``save_svg``: the
                                   static twins of SinkExplorer's views; they read the widget's metric definitions
                                   (``METRICS``, ``grid_values``), so they live in :mod:`sinkwidgets.widgets.charts`
                                   and the widgets never import this module (which sits above them)
re-exported from toy.charts        ``emergence_chart``: loss and mechanism metrics of a toy training run; it reads
                                   the toy's history records, so it lives in :mod:`sinkwidgets.toy.charts`; loaded
                                   on first use, because importing the toy imports torch
=================================  ===============================================================================

Everything reads only a :class:`~sinkwidgets.SinkTrace` (or plain arrays, or a toy history): no model, no torch.
This module sits at the top of the package beside :mod:`sinkwidgets.lessons` (it uses
``lessons.summaries.outlier_channels``); nothing else in the package imports it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .errors import SinkwidgetsTypeError, SinkwidgetsValueError
from .lessons.summaries import outlier_channels
from .sinktrace import SinkTrace
from .widgets.charts import grid_chart, heatmap_chart, save_png, save_svg, token_chart

__all__ = ["grid_chart", "heatmap_chart", "token_chart", "save_png", "save_svg", "norm_chart", "outlier_chart",
           "activation_view", "line_chart", "bar_chart", "weights_chart", "norm_rows", "outlier_rows"]
# emergence_chart is re-exported lazily (below) and left out of __all__, so that ``import *`` does not import torch


def __getattr__(name: str) -> Any:
    if name == "emergence_chart":  # defined in toy.charts; importing sinkwidgets.toy imports torch, so on first use
        from .toy.charts import emergence_chart

        return emergence_chart
    raise AttributeError(f"module 'sinkwidgets.charts' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), "emergence_chart"})


def _alt():
    import altair as alt

    return alt


def _trace(trace: Any, who: str) -> SinkTrace:
    if isinstance(trace, SinkTrace):
        return trace
    if isinstance(trace, str) or hasattr(trace, "__fspath__"):
        return SinkTrace.load(trace)
    raise SinkwidgetsTypeError(f"{who}(trace=...) needs a SinkTrace or the path of a saved one, got "
                               f"{type(trace).__name__}; e.g. sinkwidgets.trace(model, text) or 'trace.npz'")


def norm_rows(trace: SinkTrace) -> list[dict]:
    """The data of :func:`norm_chart`: one row per (layer, token) with the norm and its log10."""
    tr = _trace(trace, "norm_rows")
    n = np.asarray(tr.resid_norms, np.float64)
    if np.isnan(n).all():
        raise SinkwidgetsValueError("this trace has no residual norms recorded; trace it with sinkwidgets.trace()")
    return [{"layer": int(l), "pos": int(t), "token": f"{t} {tr.tokens[t]!r}", "norm": float(n[l, t]),
             "log10_norm": float(np.log10(max(n[l, t], 1e-12)))}
            for l in range(tr.n_layers) for t in range(tr.n_tokens)]


def norm_chart(trace: SinkTrace, cell: int = 12, max_tokens: int = 96) -> Any:
    """Heatmap of the residual-stream norm ‖h‖ of each token (x) after each layer (y), log colour scale.

    A residual-state peak (the sink token's norm far above the rest) shows as one bright column.
    Prompts longer than ``max_tokens`` show their first ``max_tokens`` tokens.
    """
    alt = _alt()
    tr = _trace(trace, "norm_chart")
    rows = [r for r in norm_rows(tr) if r["pos"] < max_tokens]
    T = min(tr.n_tokens, max_tokens)
    return (
        alt.Chart(alt.Data(values=rows), title=f"{tr.model_name}: residual norm ‖h‖ per token and layer")
        .mark_rect()
        .encode(x=alt.X("pos:O", title="token position", axis=alt.Axis(labels=T <= 48)),
                y=alt.Y("layer:O", title="layer"),
                color=alt.Color("log10_norm:Q", title="log10 ‖h‖", scale=alt.Scale(scheme="magma")),
                tooltip=["layer:O", "token:N", alt.Tooltip("norm:Q", format=",.1f")])
        .properties(width=cell * T, height=cell * tr.n_layers)
    )


def outlier_rows(trace: SinkTrace, abs_thr: float = 100.0, ratio: float = 1000.0, max_channels: int = 6) -> list[dict]:
    """The data of :func:`outlier_chart`: each recorded top activation per layer, plus the layer median.

    Channels that are massive somewhere (Sun et al. criterion) are named ``"ch <c> @ tok <t>"``, up to
    ``max_channels`` of them by peak; every other top activation is ``"other"``; the medians are ``"median |h|"``.
    """
    tr = _trace(trace, "outlier_rows")
    if tr.top_activations is None or tr.median_abs_activation is None:
        raise SinkwidgetsValueError("this trace has no top activations recorded; trace it with sinkwidgets.trace()")
    named = {(o.token, o.channel) for o in outlier_channels(tr, abs_thr, ratio)[:max_channels]}
    rows = []
    L, K = tr.top_activations.shape
    for l in range(L):
        med = float(tr.median_abs_activation[l])
        for j in range(K):
            v = float(tr.top_activations[l, j])
            t, c = int(tr.top_act_tokens[l, j]), int(tr.top_act_channels[l, j])
            rows.append({"layer": l, "abs": abs(v), "value": v, "channel": c, "token": f"{t} {tr.tokens[t]!r}",
                         "series": f"ch {c} @ tok {t}" if (t, c) in named else "other",
                         "ratio": abs(v) / med if med > 0 else None})
        rows.append({"layer": l, "abs": med, "value": med, "channel": -1, "token": "", "series": "median |h|",
                     "ratio": 1.0})
    return rows


def outlier_chart(trace: SinkTrace, abs_thr: float = 100.0, ratio: float = 1000.0, width: int = 420,
                  height: int = 260) -> Any:
    """The largest |activations| of each layer (log scale), coloured by channel, with the layer's median |h|.

    Points of the channels that pass Sun et al.'s massive-activation test (|h| > ``abs_thr`` and
    ≥ ``ratio`` × median) are named by channel and token; the dashed rule is ``abs_thr``.
    """
    alt = _alt()
    tr = _trace(trace, "outlier_chart")
    rows = outlier_rows(tr, abs_thr, ratio)
    base = alt.Chart(alt.Data(values=rows))
    x = alt.X("layer:Q", title="layer", scale=alt.Scale(domain=[0, tr.n_layers - 1]))
    y = alt.Y("abs:Q", title="|activation|", scale=alt.Scale(type="log"))
    pts = base.transform_filter("datum.series != 'median |h|'").mark_point(filled=True, size=40, opacity=0.8).encode(
        x=x, y=y, color=alt.Color("series:N", title="channel"),
        tooltip=["layer:Q", "channel:Q", "token:N", alt.Tooltip("value:Q", format=",.1f"),
                 alt.Tooltip("ratio:Q", format=",.0f", title="× median")])
    med = base.transform_filter("datum.series == 'median |h|'").mark_line(color="gray").encode(
        x=x, y=y, tooltip=["layer:Q", alt.Tooltip("abs:Q", format=".3f", title="median |h|")])
    rule = alt.Chart(alt.Data(values=[{"thr": abs_thr}])).mark_rule(strokeDash=[4, 4], color="#e6550d").encode(
        y=alt.Y("thr:Q"))
    return alt.layer(med, pts, rule).properties(
        width=width, height=height,
        title=[f"{tr.model_name}: top |activations| per layer", f"gray: median |h|; dashed: {abs_thr:g}"])


def activation_view(trace: SinkTrace, abs_thr: float = 100.0, ratio: float = 1000.0) -> Any:
    """:func:`norm_chart` and :func:`outlier_chart` side by side, from a SinkTrace alone."""
    alt = _alt()
    tr = _trace(trace, "activation_view")
    return alt.hconcat(norm_chart(tr, max_tokens=48), outlier_chart(tr, abs_thr, ratio)).resolve_scale(
        color="independent")


def line_chart(series: Mapping[str, Sequence[float]], x: Sequence[float] | None = None, x_title: str = "layer",
               y_title: str = "value", title: str = "", log_y: bool = False, width: int = 420,
               height: int = 220) -> Any:
    """One line per named series of equal length; ``x`` defaults to 0, 1, 2, ..."""
    alt = _alt()
    if not series:
        raise SinkwidgetsValueError(f"series={series!r} is empty: pass {{name: values}}, e.g. {{'α': [0.1, 0.8]}}")
    arrays = {str(k): np.asarray(v, np.float64).reshape(-1) for k, v in series.items()}
    n = {len(v) for v in arrays.values()}
    if len(n) != 1:
        raise SinkwidgetsValueError(f"series: all series must have the same length, got lengths {sorted(n)}; trim or "
                                    "pad them to one length")
    N = n.pop()
    xs = np.arange(N) if x is None else np.asarray(x, np.float64)
    if len(xs) != N:
        raise SinkwidgetsValueError(f"x has {len(xs)} values for series of length {N}; pass one x per value (or "
                                    "x=None)")
    rows = [{"x": float(xs[i]), "y": None if not np.isfinite(v[i]) else float(v[i]), "series": name}
            for name, v in arrays.items() for i in range(N)]
    return (
        alt.Chart(alt.Data(values=rows), title=title)
        .mark_line(point=N <= 64)
        .encode(x=alt.X("x:Q", title=x_title),
                y=alt.Y("y:Q", title=y_title, scale=alt.Scale(type="log" if log_y else "linear")),
                color=alt.Color("series:N", title=None, sort=list(arrays)),
                tooltip=["series:N", alt.Tooltip("x:Q", title=x_title), alt.Tooltip("y:Q", format=".3f")])
        .properties(width=width, height=height)
    )


def bar_chart(values: Mapping[str, float], y_title: str = "value", title: str = "", log_y: bool = False,
              width: int = 320, height: int = 200) -> Any:
    """One bar per named value, in the given order."""
    alt = _alt()
    if not values:
        raise SinkwidgetsValueError(f"values={values!r} is empty: pass {{name: value}}, e.g. {{'L2H2': 0.8}}")
    rows = [{"name": str(k), "value": float(v)} for k, v in values.items()]
    return (
        alt.Chart(alt.Data(values=rows), title=title)
        .mark_bar()
        .encode(x=alt.X("name:N", title=None, sort=[r["name"] for r in rows]),
                y=alt.Y("value:Q", title=y_title, scale=alt.Scale(type="log" if log_y else "linear")),
                tooltip=["name:N", alt.Tooltip("value:Q", format=".3f")])
        .properties(width=width, height=height)
    )


def weights_chart(results: dict[str, np.ndarray], labels: list[str] | None = None, width: int = 120):
    """Side-by-side bar charts of attention weights, one panel per entry of ``results`` (an ``altair.Chart``).

    ``results`` maps a panel title to a 1-D weight vector (all of the same length); ``labels`` names the keys.
    Each panel's title shows the total weight.
    """
    import altair as alt

    if not results:
        raise SinkwidgetsValueError(f"results={results!r} is empty: pass {{title: weights}}, one 1-D weight vector per "
                                    "panel")
    arrays = {k: np.asarray(v, dtype=np.float64).reshape(-1) for k, v in results.items()}
    n = {len(v) for v in arrays.values()}
    if len(n) != 1:
        raise SinkwidgetsValueError(f"results: all weight vectors must have the same length, got lengths {sorted(n)}; "
                                    "pass one weight per key in every panel")
    T = n.pop()
    labels = [f"k{j}" for j in range(T)] if labels is None else [str(s) for s in labels]
    if len(labels) != T:
        raise SinkwidgetsValueError(f"labels has {len(labels)} entries for {T} keys; pass one label per key (or "
                                    "labels=None)")
    rows = [{"panel": f"{name} (sum {w.sum():.2f})", "key": labels[j], "order": j, "weight": float(w[j])}
            for name, w in arrays.items() for j in range(T)]
    return (
        alt.Chart(alt.Data(values=rows))
        .mark_bar()
        .encode(x=alt.X("key:N", sort=labels, title=None), y=alt.Y("weight:Q", title="attention weight",
                                                                   scale=alt.Scale(domain=[0, 1])),
                color=alt.Color("weight:Q", scale=alt.Scale(scheme="viridis", domain=[0, 1]), legend=None),
                tooltip=["panel:N", "key:N", alt.Tooltip("weight:Q", format=".3f")])
        .properties(width=width, height=140)
        .facet(column=alt.Column("panel:N", title=None, sort=list(dict.fromkeys(r["panel"] for r in rows))))
    )
