"""TagExplorer as one offline, self-contained HTML file (JS, CSS and binary data inlined; nothing fetched).

The file embeds, for every collected head, the scatter in both projections, the catch colours and the numbers at
the exported rank, τ and source, so the head and projection menus, hover, zoom, pan and selection work from
``file://``. Changing τ, the rank or the source, and the across-layers panel for a new selection, need a live kernel
(the page says so).

The release experiments recorded on the explorer (``te.experiments``, at most
:data:`~sinkwidgets.widgets.tag_experiment.TAG_HISTORY`) travel with it, as SinkExplorer's offline page carries its
experiment history (:func:`sinkwidgets.widgets.standalone.experiment_states`): each as the panel's state
(:meth:`TagExperiment.state`: the label, mean ΔNLL of the tag and its random and PC controls, the edited tokens as
strings, the later heads' Δ attention on the sink ``[S, H]`` float32), about ``8·S·H`` bytes plus the text. The page
shows the last one and, with more than one, a menu to flip between them; running a new one needs a live kernel.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..errors import SinkwidgetsTypeError, SinkwidgetsValueError
from .standalone import _extract_buffers, offline_page, write_page

#: Largest number of points an offline file embeds (8 bytes of coordinates per point, per head and projection).
STANDALONE_MAX_POINTS = 200_000


def tag_experiment_states(experiments: Any) -> list[dict[str, Any]]:
    """``experiments`` (:class:`~sinkwidgets.widgets.tag_experiment.TagExperiment` objects, e.g. ``te.experiments``)
    → the release panel's states, indexed ``0..n-1`` in order (oldest first)."""
    from .tag_experiment import TagExperiment

    if experiments is None:
        return []
    if not isinstance(experiments, (list, tuple)):
        raise SinkwidgetsTypeError(f"experiments={type(experiments).__name__}: to_html(experiments=...) must be a "
                                   "list of TagExperiment; pass te.experiments (from TagExplorer.experiment)")
    out = []
    for i, e in enumerate(experiments):
        if not isinstance(e, TagExperiment):
            raise SinkwidgetsTypeError(f"experiments[{i}] is a {type(e).__name__}, not a TagExperiment; pass "
                                       "te.experiments (from TagExplorer.experiment)")
        out.append(e.state(i))
    return out


def tag_html_document(te: Any, title: str | None = None, experiments: Any = None) -> str:
    """The offline page of a :class:`TagExplorer` as a string (see :func:`save_tag_html`). ``experiments``: the
    release experiments to embed (None: ``te.experiments``, every one recorded; ``[]``: none)."""
    from ._tag_state import css, esm

    n = te.data.n_tokens
    if n > STANDALONE_MAX_POINTS:
        raise SinkwidgetsValueError(f"this TagData has {n} tokens; an offline file embeds at most "
                                    f"{STANDALONE_MAX_POINTS} points: save a subset (data.subset(range(k))) or "
                                    "share the .npz file instead")
    views = {}
    for head in te._view_model.heads:
        key = f"{head[0]},{head[1]}"
        views[key] = {proj: te._points_state(head, te.rank, proj, te.source) for proj in ("tag", "pca")}
        views[key]["catch"] = te._catch_state(head, te.tau)
        views[key]["numbers"] = te._view_model.numbers(head, te.rank, te.tau)
    cur = f"{te.head[0]},{te.head[1]}"
    static = {**te._static, "offline": True, "has_model": False}
    state = {"_static": static, "_vocab": list(te._vocab), "_points": views[cur][te.projection],
             "_catch": views[cur]["catch"], "_numbers": views[cur]["numbers"], "_layers": dict(te._layers),
             "_frontend": 0, "head": list(te.head), "tau": float(te.tau), "rank": int(te.rank),
             "projection": te.projection, "source": te.source, "color_by": te.color_by,
             "selected": list(te.selected), "focus": int(te.focus)}
    exps = tag_experiment_states(te.experiments if experiments is None else experiments)
    state.update(_experiments=exps, _experiment=exps[-1] if exps else {})
    bufs: list[bytes] = []
    payload = _extract_buffers({"state": state, "views": views}, bufs)
    title = title or f"sinkwidgets TagExplorer · {static['model']} · {n} tokens"
    return offline_page(title, esm(), css(), payload, bufs, prefix="te", mount="mountTagStandalone",
                        what="tagexplorer.js")


def save_tag_html(te: Any, path: str | os.PathLike, title: str | None = None, experiments: Any = None) -> Path:
    """Write a :class:`TagExplorer` (its current settings and its recorded release experiments, see
    :func:`tag_html_document`) as ONE offline HTML file; returns the path written."""
    return write_page(path, "to_html", lambda: tag_html_document(te, title=title, experiments=experiments))
