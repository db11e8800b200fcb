"""Altair chart of the emergence of catch, tag and release during training (offline-safe: data inline)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from ..errors import SinkwidgetsValueError

MECHANISM_METRICS = ("catch", "pre_to_bos", "release_mass", "release_unif", "tag_ev")
_LABELS = {
    "catch": "catch (L1: post-SEP → SEP)",
    "pre_to_bos": "pre-SEP → BOS (L1)",
    "release_mass": "release mass (L2)",
    "release_unif": "release uniformity (L2)",
    "tag_ev": "tag-direction variance explained",
    "pc1_ev": "top-PC variance (L1 output)",
    "loss": "held-out loss",
    "train_loss": "training loss",
}


def emergence_chart(history: Iterable[Mapping] | Mapping[str, Iterable[Mapping]],
                    metrics: Iterable[str] = MECHANISM_METRICS, title: str | None = None,
                    width: int = 420, height: int = 150):
    """Loss (log scale, top) and mechanism metrics (0–1, bottom) against the training step.

    Parameters
    ----------
    history : list of dict, TrainResult, or dict of name → history
        Records with ``step``, ``loss`` and the ``metrics``. A mapping of several runs draws one line style
        per run (``strokeDash`` by ``run``).
    metrics : iterable of str
        Keys drawn in the lower panel (default: catch, pre→BOS, release mass and uniformity, tag EV).
    title : str, optional
    width, height : int
        Size of each panel in pixels.

    Returns
    -------
    altair.VConcatChart
        Data are embedded inline (no URLs), so the chart renders offline, e.g. with ``vl-convert-python``
        (``chart.save("emergence.svg")``) or ``alt.JupyterChart(chart, offline=True)``.
    """
    import altair as alt

    runs = dict(history) if isinstance(history, Mapping) else {"run": history}
    metrics = list(metrics)
    loss_rows, mech_rows = [], []
    for run, hist in runs.items():
        for r in hist:
            step = int(r["step"])
            for key in ("loss", "train_loss"):
                v = r.get(key)
                if v is not None and v == v:
                    loss_rows.append({"run": str(run), "step": step, "series": _LABELS[key],
                                      "value": max(float(v), 1e-8)})
            for key in metrics:
                v = r.get(key)
                if v is not None and v == v:
                    mech_rows.append({"run": str(run), "step": step, "metric": _LABELS.get(key, key),
                                      "value": float(v)})
    if not loss_rows:
        raise SinkwidgetsValueError("history: emergence_chart needs records with 'step' and 'loss', got none; pass "
                                    "the result of sinkwidgets.toy.train() (or {name: records})")
    multi = len(runs) > 1
    x = alt.X("step:Q", title="training step")
    loss_enc = dict(x=x, y=alt.Y("value:Q", scale=alt.Scale(type="log"), title="MSE (log)"),
                    color=alt.Color("series:N", title=None),
                    tooltip=["run:N", "step:Q", "series:N", alt.Tooltip("value:Q", format=".3g")])
    mech_enc = dict(x=x, y=alt.Y("value:Q", scale=alt.Scale(domain=[0, 1]), title="mechanism metric"),
                    color=alt.Color("metric:N", title=None),
                    tooltip=["run:N", "step:Q", "metric:N", alt.Tooltip("value:Q", format=".3f")])
    if multi:
        loss_enc["strokeDash"] = alt.StrokeDash("run:N")
        mech_enc["strokeDash"] = alt.StrokeDash("run:N")
    top = alt.Chart(alt.Data(values=loss_rows)).mark_line(point=True).encode(**loss_enc).properties(
        width=width, height=height, title="loss")
    bottom = alt.Chart(alt.Data(values=mech_rows)).mark_line(point=True).encode(**mech_enc).properties(
        width=width, height=height, title="catch, tag, release")
    chart = alt.vconcat(top, bottom).resolve_scale(color="independent")
    if title:
        chart = chart.properties(title=title)
    return chart
