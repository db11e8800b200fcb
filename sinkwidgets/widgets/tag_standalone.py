"""TagExplorer as one offline, self-contained HTML file (JS, CSS and binary data inlined; nothing fetched).

The file embeds, for every collected head, the scatter in both projections, the catch colours and the numbers at
the exported rank, τ and source, so the head and projection menus, hover, zoom, pan and selection work from
``file://``. Changing τ, the rank or the source, and the across-layers panel for a new selection, need a live kernel
(the page says so).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..errors import SinkwidgetsValueError
from .standalone import _extract_buffers, offline_page, write_page

#: Largest number of points an offline file embeds (8 bytes of coordinates per point, per head and projection).
STANDALONE_MAX_POINTS = 200_000


def tag_html_document(te: Any, title: str | None = None) -> str:
    """The offline page of a :class:`TagExplorer` as a string (see :func:`save_tag_html`)."""
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
    bufs: list[bytes] = []
    payload = _extract_buffers({"state": state, "views": views}, bufs)
    title = title or f"sinkwidgets TagExplorer · {static['model']} · {n} tokens"
    return offline_page(title, esm(), css(), payload, bufs, prefix="te", mount="mountTagStandalone",
                        what="tagexplorer.js")


def save_tag_html(te: Any, path: str | os.PathLike, title: str | None = None) -> Path:
    """Write a :class:`TagExplorer` (its current settings) as ONE offline HTML file; returns the path written."""
    return write_page(path, "to_html", lambda: tag_html_document(te, title=title))
