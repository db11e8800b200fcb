"""The anywidget classes: SinkGrid, AttentionHeatmap, TokenStrip and the linked SinkExplorer.

All four share one ES module (``static/sinkwidgets.js``, the helpers shared with TagExplorer, followed by
``static/sinkexplorer.js``; see ``_assets.esm``) and one state layout; ``_view`` picks which parts a
widget draws. The first payload is the per-key sink summary α ``[L, H, T]`` (binary, see
``_serialization``), per-head metrics ``[L, H]``, the tokens, and one max-pooled overview of the selected
head's map; tiles of the region on screen are sent on request (custom messages with binary buffers).
"""

from __future__ import annotations

import os
import threading
import time
from itertools import count
from pathlib import Path
from typing import Any

import anywidget
import numpy as np
import traitlets

from .._args import integer as check_integer
from .._atomic import atomic_write
from ..errors import SinkwidgetsRuntimeError, SinkwidgetsTypeError, SinkwidgetsValueError
from ..sinktrace import SinkTrace
from . import _serialization as ser
from ._assets import css, esm
from ._maps import MapStore
from ._state import (  # noqa: F401 - STATIC re-exported
    DEFAULT_MIN_QUERIES,
    METRICS,
    STATIC,
    _as_trace,
    experiment_state,
    summary_state,
)

_METRIC_HELP = {
    "alpha": "α of the selected token (mean attention it receives)",
    "first_token_mass": "first-token mass (mean attention on token 0)",
    "sink_flag": "sink flag: α of the selected token > ε",
    "sinks_per_head": "sinks per head: number of keys with α > ε",
    "entropy": "mean attention entropy (nats)",
}

#: Experiments kept per explorer (the panel's history).
HISTORY = 6
_PANEL_IDS = count(1)


class WidgetValueError(traitlets.TraitError, SinkwidgetsValueError):
    """An out-of-range widget setting (a ``ValueError``, and a ``TraitError`` for traitlets)."""


class PngExport:
    """A pending PNG of the current view, requested from the browser by :meth:`SinkExplorer.save_png`.

    The browser answers through the kernel, which handles the answer once the requesting cell has finished
    (a kernel runs one thing at a time), so the file appears shortly after the cell ends. Check
    :attr:`done` / :attr:`error` in a later cell; a missing answer becomes an error after ``timeout`` s.
    """

    def __init__(self, path: Path, timeout: float) -> None:
        self.path = path
        self.timeout = timeout
        self.done = False
        self.error: str | None = None
        self.nbytes = 0
        self._t0 = time.monotonic()

    def _expired(self) -> bool:
        if not self.done and self.error is None and time.monotonic() - self._t0 > self.timeout:
            self.error = (f"no PNG from the front-end within {self.timeout:g} s: is the widget displayed in a live "
                          "notebook tab? (for a browser-free export use sinkwidgets.widgets.charts)")
        return self.error is not None

    def receive(self, msg: dict[str, Any], buffers: list[bytes]) -> None:
        """The browser's answer: write the PNG (atomically) or record its error; late answers are ignored."""
        if self._expired():
            return
        if not msg.get("ok") or not buffers:
            self.error = f"the browser could not draw the PNG: {msg.get('error', 'no data')}"
            return
        data = bytes(buffers[0])
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(self.path, lambda fh: fh.write(data), what="PNG")
        except OSError as exc:
            self.error = f"could not write {str(self.path)!r}: {exc}"
            return
        self.nbytes = len(data)
        self.done = True

    @property
    def pending(self) -> bool:
        """True while neither the file nor an error has arrived."""
        return not self.done and not self._expired()

    def __repr__(self) -> str:
        state = "written" if self.done else (f"failed: {self.error}" if self._expired() else "waiting for the browser")
        return f"PngExport({str(self.path)!r}, {state})"


class PngRequests:
    """The kernel side of ``save_png``, shared by the explorers (mixed into an anywidget with a ``_frontend`` trait):
    call :meth:`_init_png` in ``__init__``, :meth:`_request_png` from ``save_png`` and hand ``{"type": "png"}``
    custom messages to :meth:`_receive_png`."""

    def _init_png(self) -> None:
        self._png_ids = count(1)
        self._png_pending: dict[int, PngExport] = {}
        self._lock = threading.Lock()

    def _request_png(self, path: str | os.PathLike, timeout: float, no_frontend: str) -> PngExport:
        """Ask the displayed front-end for a PNG of its view (``RuntimeError(no_frontend)`` if it was never
        displayed); the answer arrives as a custom message, see :meth:`_receive_png`."""
        if not self._frontend or self.comm is None:
            raise SinkwidgetsRuntimeError(no_frontend)
        export = PngExport(Path(path), timeout)
        with self._lock:
            rid = next(self._png_ids)
            self._png_pending[rid] = export
        self.send({"type": "png_request", "id": rid})
        return export

    def _receive_png(self, msg: dict[str, Any], buffers: list[bytes]) -> None:
        with self._lock:
            export = self._png_pending.pop(int(msg.get("id", -1)), None)
        if export is not None:
            export.receive(msg, buffers)


class _SinkWidget(PngRequests, anywidget.AnyWidget):
    _esm = esm("sinkexplorer")
    _css = css("sinkexplorer")

    _view = traitlets.Unicode("explorer").tag(sync=True)
    _tokens = traitlets.List(traitlets.Unicode()).tag(sync=True)
    _summary = traitlets.Dict().tag(sync=True)
    _map = traitlets.Dict().tag(sync=True)
    _frontend = traitlets.Int(0).tag(sync=True)  # set by the JS on every render: a view exists

    layer = traitlets.Int(0).tag(sync=True)
    head = traitlets.Int(0).tag(sync=True)
    eps = traitlets.Float(0.3).tag(sync=True)
    metric = traitlets.Unicode("alpha").tag(sync=True)
    token = traitlets.Int(0).tag(sync=True)
    scale = traitlets.Unicode("linear").tag(sync=True)
    strip_mode = traitlets.Unicode("max").tag(sync=True)
    view = traitlets.List(traitlets.Float(), default_value=[]).tag(sync=True)
    heatmap_size = traitlets.Int(512).tag(sync=True)  # px; = OVERVIEW_MAX, so the overview maps 1:1
    _has_model = traitlets.Bool(False).tag(sync=True)  # the experiment panel is shown when a model is given
    _experiments = traitlets.List(traitlets.Dict()).tag(sync=True)  # experiment_state of each recorded experiment
    experiment_index = traitlets.Int(-1).tag(sync=True)  # the experiment shown (-1: none)
    experiment_view = traitlets.Unicode("before").tag(sync=True)  # "before", "after" or "diff" (after − before)

    _uses_maps = True

    def __init__(self, trace: SinkTrace | str | os.PathLike, *, model: Any = None, layer: int | None = None,
                 head: int | None = None, **kwargs: Any) -> None:
        who = type(self).__name__
        if trace is None:
            raise SinkwidgetsTypeError(
                f"{who}(trace=None): pass a SinkTrace, e.g. {who}(sinkwidgets.trace(model, text, keep_maps=[3])) "
                "or SinkTrace.load('trace.npz')"
            )
        self._trace = _as_trace(trace, who)
        summary = summary_state(self._trace, who)  # refuses NaN/inf α or maps, naming them, before any state
        self._store = MapStore(self._trace, model)
        self._experiment_list: list = []
        self._model_lock = threading.Lock()  # one forward pass at a time: panel experiments and maps on demand
        self._exp_job: dict[str, Any] | None = None  # the panel's running experiment: {"id", "cancel": Event}
        self._exp_lock = threading.Lock()  # the history (list and panel states): phase 2 updates it from a thread
        self._init_png()
        tr = self._trace
        if layer is None or head is None:
            dl, dh = self._default_head()
            layer = dl if layer is None else layer
            head = dh if head is None else head
        layer = check_integer("layer", layer, example=0)  # numpy ints ok; "2" or 2.0 named (ArgumentTypeError)
        head = check_integer("head", head, example=0)
        try:
            super().__init__(_tokens=list(tr.tokens), _summary=summary, layer=layer, head=head,
                             _has_model=model is not None, **kwargs)
        except traitlets.TraitError as exc:  # a wrong type for a trait keyword (eps="x"): one error family
            if isinstance(exc, SinkwidgetsValueError):
                raise
            raise WidgetValueError(f"{who}(...): {exc} Pass it as documented in help(sinkwidgets.{who}).") from None
        self.on_msg(self._on_custom_msg)
        self._update_map()

    # ------------------------------------------------------------------ public
    @property
    def trace(self) -> SinkTrace:
        """The :class:`~sinkwidgets.SinkTrace` shown."""
        return self._trace

    @property
    def model(self) -> Any:
        """The model given at construction (None without one)."""
        return self._store.model

    @property
    def experiments(self) -> list:
        """The experiments run on this explorer, oldest first (at most :data:`HISTORY` are kept)."""
        return list(self._experiment_list)

    def experiment(self, kind: str, _cancelled=None, **params: Any):
        """Run an experiment on the explorer's prompt with its model and record it (the panel shows it).

        ``kind``: ``"mask"`` (``token=`` default the sink, ``layers="all"`` / ``"12-29"`` / a list),
        ``"massive"`` (``mode="zero"`` / ``"mean"``), ``"add_sink"`` (``prefix="\\n"``) or ``"project_tag"``
        (``head=(layer, head)``, default the selected head; ``rank=1``; ``basis=[d, r]`` optional). See
        :mod:`sinkwidgets.widgets.experiment` for the edits, their controls and ΔNLL.

        One call runs both phases (the edit, then its control) and returns a complete
        :class:`~sinkwidgets.widgets.experiment.Experiment` (``.result``, ``.trace``, ``.control``, ``.dnll [T-1]``,
        ``.mean_dnll``, ``.control_dnll``); the panel's Apply runs the same phases apart, painting the edit before
        its control lands (see :meth:`_answer_experiment`). Raises
        :class:`~sinkwidgets.widgets.experiment.ExperimentError` (a ``SinkwidgetsError``) without a model, on an
        encoder, or for an edit the model's family does not support; the explorer is then left as it was.
        """
        from .experiment import run_experiment

        params = self._experiment_params(kind, params)
        trace = self._trace
        with self._model_lock:
            exp = run_experiment(self._store.model, trace, kind, cancelled=_cancelled, **params)
        self._check_same_trace(trace)
        self._record_experiment(exp)
        return exp

    def _experiment_params(self, kind: str, params: dict[str, Any]) -> dict[str, Any]:
        if kind == "project_tag" and "head" not in params:
            params = {**params, "head": (int(self.layer), int(self.head))}
        return params

    def _check_same_trace(self, trace: SinkTrace) -> None:
        from .experiment import ExperimentError

        if trace is not self._trace:  # set_trace ran meanwhile (a panel experiment runs in a thread)
            raise ExperimentError("the explorer was given another trace while the experiment ran: not recorded")

    def select(self, layer: int, head: int) -> None:
        """Select head ``(layer, head)`` (both validated; one update for the browser)."""
        layer, head = check_integer("layer", layer, example=0), check_integer("head", head, example=0)
        self._check_layer(layer)
        self._check_head(head)
        with self.hold_sync(), self.hold_trait_notifications():  # one map update, one message
            self.layer, self.head = int(layer), int(head)

    def zoom_to(self, q0: int, q1: int, k0: int, k1: int) -> None:
        """Show queries ``q0:q1`` × keys ``k0:k1`` of the heatmap (end-exclusive token positions)."""
        T = self._trace.n_tokens
        if not (0 <= q0 < q1 <= T and 0 <= k0 < k1 <= T):
            raise SinkwidgetsValueError(f"zoom_to({q0}, {q1}, {k0}, {k1}): need 0 <= q0 < q1 <= T and "
                                        f"0 <= k0 < k1 <= T (T={T}); e.g. zoom_to(0, {min(T, 64)}, 0, {min(T, 64)})")
        self.view = [float(q0), float(q1), float(k0), float(k1)]

    def reset_zoom(self) -> None:
        """Show the whole map."""
        self.view = [0.0, float(self._trace.n_tokens), 0.0, float(self._trace.n_tokens)]

    def set_trace(self, trace: SinkTrace | str | os.PathLike, *, layer: int | None = None, head: int | None = None,
                  token: int = 0) -> None:
        """Show another trace (e.g. one prompt of a TagData: ``sinkwidgets.widgets.prompt_trace(data, i)``) in this
        widget; the view is rebuilt in the browser. ``layer``/``head`` default to the current ones when they exist in
        the new trace; ``token`` is clipped to its length. The model given at construction stays."""
        tr = _as_trace(trace, f"{type(self).__name__}.set_trace")
        summary = summary_state(tr, f"{type(self).__name__}.set_trace")  # refused before the explorer changes
        L, H, T = tr.n_layers, tr.n_heads, tr.n_tokens
        ly = int(self.layer) if layer is None else check_integer("layer", layer, example=0)
        h = int(self.head) if head is None else check_integer("head", head, example=0)
        token = check_integer("token", token, example=0)
        if not (0 <= ly < L and 0 <= h < H):
            if layer is not None or head is not None:
                raise WidgetValueError(f"set_trace(layer={layer}, head={head}): this trace has {L} layers x {H} heads")
            ly, h = 0, 0
        with self.hold_sync(), self.hold_trait_notifications():  # observers see the new layer AND head together
            self._trace = tr
            self._store = MapStore(tr, self._store.model)
            self._experiment_list = []  # experiments belong to the prompt they ran on
            self._experiments = []
            self.experiment_index, self.experiment_view = -1, "before"
            self._map = {}  # no map of the old trace may be drawn over the new one
            self.token = max(0, min(int(token), T - 1))
            self.layer, self.head = ly, h
            self.view = []
            self._tokens = list(tr.tokens)
            self._summary = summary
        self._update_map()  # when neither layer nor head changed, no observer ran

    def save_png(self, path: str | os.PathLike, timeout: float = 15.0) -> PngExport:
        """Ask the displayed widget for a PNG of its current view and write it to ``path``.

        Needs a live front-end (JupyterLab, Notebook 7, VS Code, Colab) showing this widget: the browser
        draws the view and sends the PNG back. A kernel handles that answer after the current cell finishes,
        so the call returns a :class:`PngExport` at once and the file appears a moment later. For a PNG/SVG
        without any browser, use :func:`sinkwidgets.widgets.charts.save_png`.

        Raises
        ------
        RuntimeError
            If the widget has never been displayed in a front-end.
        """
        return self._request_png(path, timeout, (
            f"{type(self).__name__}.save_png needs the widget displayed in a live notebook front-end "
            "(display it in a cell first). Without a browser, export charts with "
            "sinkwidgets.widgets.charts.save_png(sinkwidgets.widgets.charts.heatmap_chart(trace, layer, head), path)"
        ))

    def to_html(self, path: str | os.PathLike, title: str | None = None) -> Path:
        """Write this view as one offline, self-contained HTML file (see :func:`sinkwidgets.widgets.save_html`), with
        the experiments run on it (the page flips before / after / after − before without a kernel)."""
        from .standalone import save_html

        exps = self._complete_experiments()
        state = self._ui_state()
        if exps:
            shown = self._experiment_list[self.experiment_index] if 0 <= self.experiment_index < len(
                self._experiment_list) else None
            state.update(experiment_index=exps.index(shown) if shown in exps else len(exps) - 1,
                         experiment_view=self.experiment_view)
        return save_html(self._trace, path, title=title, view=self._view, state=state, experiments=exps or None)

    def _complete_experiments(self) -> list:
        """The recorded experiments with their controls: a control still computing in the panel is waited for (the
        model lock), one that was cancelled or failed is run now; an experiment whose control fails again is left
        out, with a warning naming it (save_html exports complete entries only)."""
        import warnings

        out = []
        for exp in list(self._experiment_list):
            if exp.control is None:
                try:
                    with self._model_lock:
                        exp.finish_control()
                except Exception as exc:  # noqa: BLE001 - reported as a warning, the export goes on without it
                    warnings.warn(f"to_html: experiment {exp.label!r} is left out: its control could not be computed "
                                  f"({type(exc).__name__}: {exc})", stacklevel=3)
                    self._update_control(exp)
                    continue
                self._update_control(exp)
            out.append(exp)
        return out

    def _record_experiment(self, exp: Any) -> None:
        """Keep ``exp`` (the last :data:`HISTORY`) and show it: its state is built first, so a failure here also
        leaves the explorer as it was. An experiment whose control has not landed yet (the panel's phase 1) is
        recorded with ``control_dnll`` None and its ``control_status``; :meth:`_update_control` fills it in."""
        exp.meta.setdefault("panel_id", next(_PANEL_IDS))  # names its maps in the heatmap's tile requests
        new = self._experiment_entry(exp, 0)
        with self._exp_lock:
            keep = (self._experiment_list + [exp])[-HISTORY:]
            states = (list(self._experiments) + [new])[-HISTORY:]
            states = [{**st, "index": i} for i, st in enumerate(states)]
            with self.hold_sync():
                self._experiment_list = keep
                self._experiments = states
                self.experiment_index = len(states) - 1
                if self.experiment_view == "before":
                    self.experiment_view = "after"

    def _experiment_entry(self, exp: Any, index: int) -> dict[str, Any]:
        """The panel's state of ``exp``: :func:`experiment_state` plus its ``panel_id`` and ``control_status``
        (``control_dnll`` None until the control has landed: JSON has no NaN)."""
        st = {**experiment_state(exp, self._trace, index), "panel_id": int(exp.meta["panel_id"]),
              "control_status": getattr(exp, "control_status", "done")}
        if exp.control is None:
            st["control_dnll"] = None
            if exp.meta.get("control_error"):
                st["control_error"] = str(exp.meta["control_error"])
        return st

    def _update_control(self, exp: Any) -> None:
        """Phase 2 ended (landed, cancelled or failed): update ``exp``'s entry in the panel's state, if it is still
        in the history of this trace (a later ``set_trace`` or a full history may have dropped it)."""
        pid = exp.meta.get("panel_id")
        with self._exp_lock:
            states = list(self._experiments)
            for i, st in enumerate(states):
                if st.get("panel_id") == pid and i < len(self._experiment_list) and self._experiment_list[i] is exp:
                    ctl = {k: v for k, v in self._experiment_entry(exp, i).items()
                           if k in ("control_dnll", "control_status", "control", "control_error")}
                    states[i] = {**{k: v for k, v in st.items() if k != "control_error"}, **ctl}
                    self._experiments = states
                    return

    # ------------------------------------------------------------------ validation
    def _check_layer(self, layer: int) -> None:
        L = self._trace.n_layers
        if not (0 <= int(layer) < L):
            raise WidgetValueError(f"layer={layer}: layer {layer} is out of range: this trace has {L} layers "
                                   f"(0..{L - 1}); pick one of them")

    def _check_head(self, head: int) -> None:
        H = self._trace.n_heads
        if not (0 <= int(head) < H):
            raise WidgetValueError(f"head={head}: head {head} is out of range: this trace has {H} heads per layer "
                                   f"(0..{H - 1}); pick one of them")

    @traitlets.validate("layer")
    def _v_layer(self, proposal):
        if hasattr(self, "_trace"):
            self._check_layer(proposal["value"])
        return proposal["value"]

    @traitlets.validate("head")
    def _v_head(self, proposal):
        if hasattr(self, "_trace"):
            self._check_head(proposal["value"])
        return proposal["value"]

    @traitlets.validate("token")
    def _v_token(self, proposal):
        T = self._trace.n_tokens if hasattr(self, "_trace") else None
        if T is not None and not (0 <= proposal["value"] < T):
            raise WidgetValueError(f"token={proposal['value']}: token {proposal['value']} is out of range: the prompt "
                                   f"has {T} tokens (0..{T - 1}); pick one of them")
        return proposal["value"]

    @traitlets.validate("eps")
    def _v_eps(self, proposal):
        if not (0.0 <= proposal["value"] < 1.0):
            raise WidgetValueError(f"eps must be in [0, 1) (a fraction of attention), got {proposal['value']!r}")
        return proposal["value"]

    @traitlets.validate("metric")
    def _v_metric(self, proposal):
        if proposal["value"] not in METRICS:
            raise WidgetValueError(f"metric {proposal['value']!r} is not one of {METRICS}")
        return proposal["value"]

    @traitlets.validate("scale")
    def _v_scale(self, proposal):
        if proposal["value"] not in ("linear", "log"):
            raise WidgetValueError(f"scale must be 'linear' or 'log', got {proposal['value']!r}")
        return proposal["value"]

    @traitlets.validate("experiment_view")
    def _v_exp_view(self, proposal):
        if proposal["value"] not in ("before", "after", "diff"):
            raise WidgetValueError(f"experiment_view must be 'before', 'after' or 'diff' (after − before), got "
                                   f"{proposal['value']!r}")
        return proposal["value"]

    @traitlets.validate("strip_mode")
    def _v_strip(self, proposal):
        if proposal["value"] not in ("max", "head"):
            raise WidgetValueError(f"strip_mode must be 'max' (max over heads) or 'head', got {proposal['value']!r}")
        return proposal["value"]

    # ------------------------------------------------------------------ internals
    def _default_head(self) -> tuple[int, int]:
        """Start on a kept map if any (the strongest first-token sink among them), else the strongest head."""
        tr = self._trace
        kept = self._store.kept()
        ftm = np.nan_to_num(tr.first_token_mass, nan=-1.0)
        if kept:
            return max(kept, key=lambda lh: ftm[lh])
        ly, h = np.unravel_index(int(np.argmax(ftm)), ftm.shape)
        return int(ly), int(h)

    def _ui_state(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in ("layer", "head", "eps", "metric", "token", "scale", "strip_mode",
                                               "view", "heatmap_size")}

    @traitlets.observe("layer", "head", "experiment_index", "experiment_view")
    def _on_head(self, change) -> None:
        self._update_map()

    def _map_source(self) -> tuple[str, MapStore | None]:
        """Where the heatmap's map comes from: ``("before", the trace's store)``, or under the experiment shown
        ``("after:i", its trace's kept maps)`` / ``("diff:i", |after − before| of the kept maps)``; ``None`` when the
        experiment's maps cannot line up with the explorer's (``add_sink`` adds a token)."""
        i, view = int(self.experiment_index), self.experiment_view
        exps = getattr(self, "_experiment_list", [])
        if view == "before" or not 0 <= i < len(exps):
            return "before", self._store
        exp = exps[i]
        source = f"{view}:{exp.meta.get('panel_id', id(exp))}"
        cache = self.__dict__.setdefault("_exp_stores", {})
        if source not in cache:
            if exp.offset or exp.trace.maps is None:
                cache[source] = None
            elif view == "after":
                cache[source] = MapStore(exp.trace)
            else:
                import dataclasses

                before, after = self._trace, exp.trace
                same = (before.maps is not None and before.map_index is not None and np.array_equal(
                    np.asarray(before.map_index), np.asarray(after.map_index)))
                cache[source] = MapStore(dataclasses.replace(after, maps=np.abs(
                    after.maps.astype(np.float32) - before.maps.astype(np.float32)).astype(np.float16))) if same else None
            while len(cache) > 2:  # a |after − before| of every kept map is L·H·T² float16: keep few
                cache.pop(next(iter(cache)))
        return source, cache[source]

    def _update_map(self) -> None:
        if not self._uses_maps or not hasattr(self, "_store"):
            return
        ly, h = int(self.layer), int(self.head)
        source, store = self._map_source()
        cur = self._map
        if (cur.get("layer") == ly and cur.get("head") == h and cur.get("status") not in (None, "computing")
                and cur.get("source", "before") == source):
            return
        if store is None:
            self._map = {"layer": ly, "head": h, "T": self._trace.n_tokens, "tile": ser.TILE_SIZE, "status": "missing",
                         "overview": None, "source": source,
                         "message": "no map under this edit (add_sink adds a token, or no maps were kept): "
                                    "the grid and the strips show the change"}
            return
        if source != "before":
            self._map = {**store.map_state(ly, h), "source": source}
            return
        if store.status(ly, h) == "missing" and store.model is not None:
            T = self._trace.n_tokens
            self._map = {"layer": ly, "head": h, "T": T, "tile": ser.TILE_SIZE, "status": "computing", "overview": None,
                         "message": f"computing the map of layer {ly}, head {h} with the model…"}
            try:
                with self._model_lock:
                    store.compute(ly, h)
            except Exception as exc:  # shown in the widget, not lost in a log
                self._map = {"layer": ly, "head": h, "T": T, "tile": ser.TILE_SIZE, "status": "error",
                             "overview": None, "message": f"could not compute the map: {type(exc).__name__}: {exc}"}
                return
            if (int(self.layer), int(self.head)) != (ly, h):
                return  # the selection moved on while computing
        self._map = store.map_state(ly, h)

    def _on_custom_msg(self, _widget: Any, content: Any, buffers: list[bytes]) -> None:
        if not isinstance(content, dict):
            return
        kind = content.get("type")
        if kind == "tile":
            self._answer_tile(content)
        elif kind == "png":
            self._receive_png(content, buffers)
        elif kind == "experiment":
            self._answer_experiment(content)
        elif kind == "experiment_prepare":
            self._prepare_experiments()
        elif kind == "experiment_cancel":
            job = self._exp_job
            if job is not None:
                job["cancel"].set()

    def _prepare_experiments(self) -> None:
        """The panel was drawn with a live model: compute the prompt's clean per-token NLL in a background thread
        (:func:`~sinkwidgets.widgets.experiment.prepare`, under the model lock), so the first Apply is one forward
        pass of two rows instead of three. Local models only (a remote one would queue a job nobody asked for);
        once per trace; a failure is silent here because the experiment itself recomputes and reports it."""
        model, trace = self._store.model, self._trace
        if model is None or getattr(self, "_prepared", None) is trace:
            return
        from .experiment import _info, prepare

        try:
            if _info(model, trace).remote:
                return
        except Exception:  # not a traceable model: the experiment reports why when asked
            return
        self._prepared = trace
        # monotonic times the prepare was asked for and finished (benchmarks/experiment_roundtrip.py reads them)
        self._prepare_times: dict[str, float] = {"asked": time.monotonic()}

        def work() -> None:
            try:
                with self._model_lock:
                    prepare(model, trace)
            except Exception:  # noqa: BLE001 - the experiment recomputes and reports the same failure
                pass
            finally:
                self._prepare_times["done"] = time.monotonic()

        threading.Thread(target=work, name="sinkwidgets-prepare", daemon=True).start()

    def _answer_experiment(self, msg: dict[str, Any]) -> None:
        """The panel's Apply, in a worker thread (so the kernel stays free to receive a cancel), in two phases
        (:mod:`sinkwidgets.widgets.experiment`):

        1. the edit (:func:`~sinkwidgets.widgets.experiment.start_experiment`): recorded and shown at once, its
           control pending; answers ``{ok: True, index, seconds, control: "computing"}``, or ``{ok: False, error}``
           / ``{ok: False, cancelled: True}`` with nothing recorded and the view unchanged;
        2. the control (:meth:`~sinkwidgets.widgets.experiment.Experiment.finish_control`): fills the recorded
           entry's ``control_dnll`` in and sends ``{type: "experiment_control", job, ok, seconds}``. A cancel here
           keeps the painted experiment and marks its control ``"cancelled"`` (``{ok: False, cancelled: True}``);
           a failure marks it ``"failed"`` (``{ok: False, error}``). Either way the explorer keeps the experiment,
           and ``to_html`` runs the missing control again before it exports the entry.

        A cancel is honoured before the next step (one forward pass at most). While phase 2 runs, another Apply is
        refused (the panel disables it)."""
        from .experiment import ExperimentCancelled, start_experiment

        base = {"type": "experiment", "id": msg.get("id")}
        if self._exp_job is not None:
            self.send({**base, "ok": False, "error": "another experiment is still running: wait or cancel it"})
            return
        params = {k: msg[k] for k in ("token", "layers", "mode", "prefix", "head", "rank") if msg.get(k) is not None}
        if "head" in params:
            params["head"] = tuple(int(x) for x in params["head"])
        job = {"id": msg.get("id"), "cancel": threading.Event()}
        self._exp_job = job
        kind = str(msg.get("kind"))
        ctl_base = {"type": "experiment_control", "job": msg.get("job")}

        def last(answer: dict[str, Any]) -> None:  # the job ends before its last message: a new Apply is accepted
            self._exp_job = None
            self.send(answer)

        def work() -> None:
            try:
                phases()
            finally:  # whatever happened, the job is over
                if self._exp_job is job:
                    self._exp_job = None

        def phases() -> None:
            t0 = time.monotonic()
            try:
                args = self._experiment_params(kind, params)
                trace = self._trace
                with self._model_lock:
                    exp = start_experiment(self._store.model, trace, kind, cancelled=job["cancel"].is_set, **args)
                self._check_same_trace(trace)
                self._record_experiment(exp)
            except ExperimentCancelled as exc:
                return last({**base, "ok": False, "cancelled": True, "error": str(exc)})
            except Exception as exc:  # shown in the panel; the explorer stays as it was
                return last({**base, "ok": False, "error": f"{type(exc).__name__}: {exc}"})
            self.send({**base, "ok": True, "index": len(self._experiments) - 1, "seconds": time.monotonic() - t0,
                       "control": "computing"})
            t1 = time.monotonic()
            try:
                with self._model_lock:
                    exp.finish_control(job["cancel"].is_set)
            except ExperimentCancelled as exc:
                answer = {"ok": False, "cancelled": True, "error": str(exc)}
            except Exception as exc:  # noqa: BLE001 - the control is marked failed, the experiment stays
                answer = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
            else:
                answer = {"ok": True}
            try:
                self._update_control(exp)
            finally:
                last({**ctl_base, **answer, "seconds": time.monotonic() - t1})

        job["thread"] = threading.Thread(target=work, name="sinkwidgets-experiment", daemon=True)
        job["thread"].start()

    def _answer_tile(self, msg: dict[str, Any]) -> None:
        base = {"type": "tile", "id": msg.get("id")}
        try:
            ly, h = int(msg["layer"]), int(msg["head"])
            level, ty, tx = int(msg["level"]), int(msg["ty"]), int(msg["tx"])
            base.update(layer=ly, head=h, level=level, ty=ty, tx=tx)
            source, store = self._map_source()
            if msg.get("source", "before") != source or store is None:
                raise SinkwidgetsValueError(f"the map shown changed (now {source.split(':')[0]}): tile not sent")
            spec, data = store.tile(ly, h, level, ty, tx)
        except (KeyError, ValueError, TypeError) as exc:
            self.send({**base, "ok": False, "error": str(exc)})
            return
        self.send({**base, "ok": True, **spec}, [data])


class SinkExplorer(_SinkWidget):
    """Linked sink explorer: layer × head grid → attention heatmap → token strip, with an ε slider and a
    metric selector.

    Click a grid cell (or use the arrow keys) to pick a head: the heatmap shows its map and the strip its α.
    Click a token to highlight its row and column in the heatmap and colour the grid by its α. Works from a
    saved trace alone; given ``model``, maps that were not kept are computed on demand and cached.

    Parameters
    ----------
    trace : SinkTrace or path
        From ``sinkwidgets.trace(model, text, keep_maps=[...])`` or ``SinkTrace.load``. Heads in
        ``keep_maps`` get a full heatmap; the others show α per key until computed.
    model : optional
        A model for ``sinkwidgets.trace`` (e.g. ``sinkwidgets.load_model("smollm2-135m")``), used to
        compute missing maps with ``keep_maps=[(layer, head)]``.
    layer, head : int, optional
        Initial head (default: the kept map with the largest first-token mass).
    eps : float
        Sink threshold ε on α (default 0.3, Gu et al.).
    metric : str
        Grid colour: ``"alpha"``, ``"first_token_mass"``, ``"sink_flag"``, ``"sinks_per_head"``, ``"entropy"``.
    token : int
        Selected token (default 0): the key whose α colours the grid, highlighted in heatmap and strip.
    scale : {"linear", "log"}
        Heatmap colour scale.
    strip_mode : {"max", "head"}
        Token strip colour: max of α over the layer's heads, or the selected head's α.

    Examples
    --------
    >>> import sinkwidgets as sw
    >>> tr = sw.trace(sw.load_model("smollm2-135m"), "The cat sat on the mat.", keep_maps=[3, 12])
    >>> ex = sw.SinkExplorer(tr)
    >>> ex                      # display; then ex.select(12, 4), ex.save_png("view.png"), ex.to_html("view.html")
    """

    _view = traitlets.Unicode("explorer").tag(sync=True)


class SinkGrid(_SinkWidget):
    """Layers × heads grid coloured by a metric; hover shows the values, click (or arrow keys) selects a head.

    Parameters are those of :class:`SinkExplorer` (``metric``, ``eps``, ``token``, ``layer``, ``head``);
    the selection is in the ``layer`` / ``head`` traits, so it can drive other widgets
    (``ipywidgets.jslink((grid, "layer"), (heatmap, "layer"))``).
    """

    _view = traitlets.Unicode("grid").tag(sync=True)
    _uses_maps = False


class AttentionHeatmap(_SinkWidget):
    """One head's attention map (queries × keys) with token labels, sink columns (α > ε) marked, a
    linear/log colour scale, zoom (wheel, buttons, ``+``/``-`` keys), pan (drag, arrow keys) and layer/head
    selectors. Long prompts show a max-pooled overview first and fetch full-resolution tiles of the visible
    region from the kernel on demand. Parameters as :class:`SinkExplorer`.
    """

    _view = traitlets.Unicode("heatmap").tag(sync=True)


class TokenStrip(_SinkWidget):
    """The prompt's tokens coloured by α (``strip_mode="max"``: max over the layer's heads, ``"head"``: the
    selected head); click a token (or use the arrow keys) to select it. Parameters as :class:`SinkExplorer`.
    """

    _view = traitlets.Unicode("strip").tag(sync=True)
    _uses_maps = False
