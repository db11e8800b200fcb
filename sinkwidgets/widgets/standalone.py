"""Offline, self-contained HTML: one file with the widget JavaScript, CSS and data inlined.

The file opens from ``file://`` with no network and no Jupyter (no require.js, no CDN widget manager):
the same ES module that anywidget runs is inlined, and a small local stand-in for the widget model answers
it from embedded data. Arrays are embedded as base64 binary (never JSON lists). Maps kept in the trace are
embedded as max-pooled overviews (full resolution up to ``T = 512``); zooming past the overview needs a live
notebook, and the page says so.
"""

from __future__ import annotations

import html
import json
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from .._atomic import atomic_write
from ..errors import SinkwidgetsIsADirectoryError, SinkwidgetsRuntimeError, SinkwidgetsTypeError, SinkwidgetsValueError
from ..sinktrace import SinkTrace
from . import _assets
from . import _serialization as ser
from ._maps import MapStore
from ._state import METRICS, _as_trace, experiment_state, summary_state

_UI_DEFAULTS = {"layer": 0, "head": 0, "eps": 0.3, "metric": "alpha", "token": 0, "scale": "linear",
                "strip_mode": "max", "view": [], "heatmap_size": 512, "experiment_index": -1,
                "experiment_view": "before"}
_VIEWS = ("explorer", "grid", "heatmap", "strip")


def _is_int(x: Any) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, (bool, np.bool_))


def _is_real(x: Any) -> bool:
    return (_is_int(x) or isinstance(x, (float, np.floating))) and math.isfinite(float(x))


def check_state(trace: SinkTrace, state: dict[str, Any] | None, n_experiments: int = 0) -> dict[str, Any]:
    """Validate ``save_html``'s ``state`` against the trace: every key known, every value of the right type and
    in range (the page's JavaScript trusts them). Returns a copy with plain Python values; raises ``ValueError``
    naming the setting, the value and what is allowed."""
    if state is None:
        return {}
    if not isinstance(state, dict):
        raise SinkwidgetsTypeError(f"save_html(state=...) must be a dict of settings, got {type(state).__name__}; "
                                   "e.g. state={'layer': 2, 'head': 3}")
    unknown = sorted(set(state) - set(_UI_DEFAULTS))
    if unknown:
        raise SinkwidgetsValueError(f"save_html(state=...): unknown setting(s) {unknown}; allowed: "
                                    f"{sorted(_UI_DEFAULTS)}")
    L, H, T = trace.n_layers, trace.n_heads, trace.n_tokens
    out: dict[str, Any] = {}
    for key, value in state.items():
        def bad(allowed: str, key=key, value=value) -> SinkwidgetsValueError:
            return SinkwidgetsValueError(f"save_html(state={{{key!r}: {value!r}}}): {key} must be {allowed}")

        if key in ("layer", "head", "token"):
            n = {"layer": L, "head": H, "token": T}[key]
            if not _is_int(value) or not 0 <= int(value) < n:
                raise bad(f"an int in 0..{n - 1} (this trace has {n} {key}s)")
            out[key] = int(value)
        elif key == "eps":
            if not _is_real(value) or not 0.0 <= float(value) < 1.0:
                raise bad("a number in [0, 1) (a fraction of attention)")
            out[key] = float(value)
        elif key == "metric":
            if value not in METRICS:
                raise bad(f"one of {list(METRICS)}")
            out[key] = value
        elif key == "scale":
            if value not in ("linear", "log"):
                raise bad("'linear' or 'log'")
            out[key] = value
        elif key == "strip_mode":
            if value not in ("max", "head"):
                raise bad("'max' (max over heads) or 'head'")
            out[key] = value
        elif key == "view":
            ok = isinstance(value, (list, tuple)) and (len(value) == 0 or (
                len(value) == 4 and all(_is_real(v) for v in value)
                and 0 <= value[0] < value[1] <= T and 0 <= value[2] < value[3] <= T))
            if not ok:
                raise bad(f"[] (the whole map) or [q0, q1, k0, k1] with 0 <= q0 < q1 <= {T} and 0 <= k0 < k1 <= {T}")
            out[key] = [float(v) for v in value]
        elif key == "experiment_index":
            if not _is_int(value) or not -1 <= int(value) < n_experiments:
                raise bad(f"-1 (none) or an int in 0..{n_experiments - 1} (the experiments given: {n_experiments})")
            out[key] = int(value)
        elif key == "experiment_view":
            if value not in ("before", "after", "diff"):
                raise bad("'before', 'after' or 'diff' (after − before)")
            out[key] = value
        elif key == "heatmap_size":
            if not _is_int(value) or not 64 <= int(value) <= 4096:
                raise bad("an int number of pixels in 64..4096")
            out[key] = int(value)
    return out


_PAGE_CSS = """
:root { color-scheme: light dark; }
body { margin: 16px; background: var(--jp-layout-color0, #fff); }
@media (prefers-color-scheme: dark) {
  :root { --jp-ui-font-color1: #e6e6e6; --jp-ui-font-color2: #aaa; --jp-layout-color0: #161616;
          --jp-layout-color2: #2b2b2b; --jp-border-color1: #555; --jp-error-color3: #4a1c1c;
          --jp-error-color0: #ffb4b4; }
}
h1.sw-page-title { font: 600 15px system-ui, sans-serif; color: var(--jp-ui-font-color1, #222); margin: 0 0 8px; }
"""


def _extract_buffers(obj: Any, bufs: list[bytes], _seen: dict[int, tuple[int, Any]] | None = None) -> Any:
    """``obj`` with each binary leaf replaced by ``{"$buffer": i}``, its bytes appended to ``bufs``. A buffer met
    again (the same object, e.g. the current view's arrays that also sit in the views table) reuses its index, so
    the page embeds it once."""
    if _seen is None:
        _seen = {}  # id -> (index, the object itself: kept alive so no id is reused while extracting)
    if isinstance(obj, (bytes, bytearray, memoryview)):
        hit = _seen.get(id(obj))
        if hit is not None:
            return {"$buffer": hit[0]}
        bufs.append(bytes(obj))
        _seen[id(obj)] = (len(bufs) - 1, obj)
        return {"$buffer": len(bufs) - 1}
    if isinstance(obj, dict):
        return {k: _extract_buffers(v, bufs, _seen) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_extract_buffers(v, bufs, _seen) for v in obj]
    if isinstance(obj, (np.integer, np.floating)):
        return obj.item()
    return obj


def _script_json(obj: Any) -> str:
    """JSON safe inside a <script> element: '<' escaped so no token can close the element."""
    return json.dumps(obj, ensure_ascii=False, allow_nan=False).replace("<", "\\u003c").replace(">", "\\u003e")


def _json_clean(x: Any) -> Any:
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def offline_maps(trace: SinkTrace, budget: int = ser.STANDALONE_MAP_BUDGET) -> dict[str, dict[str, Any]]:
    """Overviews of every kept map, keyed ``"layer,head"``; the side shrinks so all fit in ``budget`` bytes."""
    store = MapStore(trace)
    kept = store.kept()
    if not kept:
        return {}
    side = ser.STANDALONE_OVERVIEW_MAX
    while side > 16 and len(kept) * min(side, trace.n_tokens) ** 2 * 2 > budget:
        side //= 2
    return {f"{ly},{h}": store.map_state(ly, h, max_side=side) for ly, h in kept}


def experiment_states(trace: SinkTrace, experiments: Any) -> list[dict[str, Any]]:
    """``save_html``'s ``experiments`` (:class:`~sinkwidgets.widgets.experiment.Experiment` objects, e.g.
    ``ex.experiments``) → the panel's states (see :func:`~._state.experiment_state`)."""
    if experiments is None:
        return []
    if not isinstance(experiments, (list, tuple)):
        raise SinkwidgetsTypeError(f"save_html(experiments=...) must be a list of Experiment (ex.experiments), got "
                                   f"{type(experiments).__name__}")
    out = []
    for i, e in enumerate(experiments):
        if not hasattr(e, "trace") or not hasattr(e, "dnll"):
            raise SinkwidgetsTypeError(f"save_html(experiments=[...]): item {i} is a {type(e).__name__}, not an "
                                       "Experiment; pass ex.experiments (from SinkExplorer.experiment)")
        out.append(experiment_state(e, trace, i))
    return out


def html_document(trace: SinkTrace, title: str | None = None, view: str = "explorer",
                  state: dict[str, Any] | None = None, experiments: Any = None) -> str:
    """The offline page as a string (see :func:`save_html`)."""
    if view not in _VIEWS:
        raise SinkwidgetsValueError(f"view must be one of {_VIEWS}, got {view!r}; e.g. view='explorer'")
    summary = summary_state(trace, "save_html")  # first: refuses NaN/inf α or kept maps, naming them
    exps = experiment_states(trace, experiments)
    state = check_state(trace, state, len(exps)) if state is not None else None
    ui = {**_UI_DEFAULTS, **(state or {})}
    if exps and (state is None or "experiment_index" not in state):
        ui.update(experiment_index=len(exps) - 1, experiment_view=ui["experiment_view"] if state and
                  "experiment_view" in state else "after")
    maps = offline_maps(trace)
    if state is None or "layer" not in state:
        ftm = np.nan_to_num(trace.first_token_mass, nan=-1.0)
        if maps:
            ly, h = max((tuple(int(x) for x in k.split(",")) for k in maps), key=lambda lh: ftm[lh])
        else:
            ly, h = (int(x) for x in np.unravel_index(int(np.argmax(ftm)), ftm.shape))
        ui.update(layer=ly, head=h)
    key = f"{ui['layer']},{ui['head']}"
    first_map = maps.get(key) or {
        "layer": ui["layer"], "head": ui["head"], "T": trace.n_tokens, "tile": ser.TILE_SIZE, "status": "missing",
        "overview": None,
        "message": f"map not kept: trace with keep_maps=[{ui['layer']}] to include it; showing α per key",
    }
    model_state = {"_view": view, "_tokens": list(trace.tokens), "_summary": summary,
                   "_map": first_map, "_frontend": 0, "_has_model": False, "_experiments": exps,
                   **{k: _json_clean(v) for k, v in ui.items()}}
    bufs: list[bytes] = []
    payload = _extract_buffers({"state": model_state, "maps": maps}, bufs)
    title = title or f"sinkwidgets · {trace.model_name} · {trace.n_tokens} tokens"
    return offline_page(title, _assets.esm("sinkexplorer"), _assets.css("sinkexplorer"), payload, bufs, prefix="sw",
                        mount="mountStandalone", what="sinkexplorer.js")


def offline_page(title: str, js: str, css: str, payload: Any, bufs: list[bytes], *, prefix: str, mount: str,
                 what: str) -> str:
    """One self-contained HTML page: ``js`` (an ES module defining ``mount``) and ``css`` inlined, the JSON
    ``payload`` in a ``<script type="application/json" id="{prefix}-state">`` and each binary buffer as base64 in
    its own ``<script data-{prefix}-buffer="i">``; a boot script calls ``mount(root, state, buffers)``."""
    if "</script" in js.lower():
        raise SinkwidgetsRuntimeError(f"{what} must not contain '</script' (it is inlined into a <script> element); "
                                      "write '<\\/script' in the JS source")
    data_attr = f"{prefix}Buffer"
    buf_tags = "\n".join(f'<script type="application/octet-stream;base64" data-{prefix}-buffer="{i}">{ser.b64(b)}'
                         "</script>" for i, b in enumerate(bufs))
    boot = f"""
;(() => {{
  const state = JSON.parse(document.getElementById("{prefix}-state").textContent);
  const bufs = [...document.querySelectorAll("script[data-{prefix}-buffer]")]
    .sort((a, b) => Number(a.dataset.{data_attr}) - Number(b.dataset.{data_attr}))
    .map((s) => s.textContent.trim());
  {mount}(document.getElementById("{prefix}-root"), state, bufs);
}})();
"""
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="generator" content="sinkwidgets">
<title>{html.escape(title)}</title>
<style>{_PAGE_CSS}
{css}</style>
</head>
<body>
<h1 class="sw-page-title">{html.escape(title)}</h1>
<div id="{prefix}-root"></div>
<script type="application/json" id="{prefix}-state">{_script_json(payload)}</script>
{buf_tags}
<script type="module">
{js}
{boot}
</script>
</body>
</html>
"""


def save_html(trace: SinkTrace | str | os.PathLike, path: str | os.PathLike, title: str | None = None, *,
              view: str = "explorer", state: dict[str, Any] | None = None, experiments: Any = None) -> Path:
    """Write a :class:`SinkExplorer` (or one part of it) as ONE self-contained, offline HTML file.

    Parameters
    ----------
    trace : SinkTrace or path of a saved trace
    path : str or path-like
        Output file (``.html``).
    title : str, optional
        Page title (default: model name and number of tokens).
    view : {"explorer", "grid", "heatmap", "strip"}
        What to show.
    state : dict, optional
        Initial settings: ``layer``, ``head``, ``eps``, ``metric``, ``token``, ``scale``, ``strip_mode``,
        ``view`` (zoom ``[q0, q1, k0, k1]``), ``experiment_index`` (-1: none), ``experiment_view``
        (``"before"``, ``"after"``, ``"diff"``).
    experiments : list of Experiment, optional
        Experiments run on this trace's prompt (``ex.experiments``): embedded, so the page flips between them and
        between before / after / after − before without a kernel (α, first-token mass, entropy ``[L, H]`` and
        ΔNLL ``[T - 1]`` of each; about ``2·L·H·T`` bytes per experiment).

    Returns
    -------
    Path
        The written file. It loads nothing from the network: share it, or put it in slides.
    """
    tr = _as_trace(trace, "save_html")
    return write_page(path, "save_html", lambda: html_document(tr, title=title, view=view, state=state,
                                                               experiments=experiments))


def write_page(path: str | os.PathLike, who: str, page: Callable[[], str]) -> Path:
    """Write the HTML that ``page()`` returns to ``path``, atomically; a directory ``path`` is refused (naming
    ``who``) before ``page()`` runs, and ``page()`` (which validates everything) runs before the disk is touched."""
    out = Path(path)
    if out.is_dir():
        raise SinkwidgetsIsADirectoryError(f"{who}(path={str(path)!r}): that is a directory; give a file name (.html)")
    text = page()
    out.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write(out, lambda fh: fh.write(text), binary=False, what="HTML page")
