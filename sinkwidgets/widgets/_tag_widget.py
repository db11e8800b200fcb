"""TagExplorer: catch, tag and release of one head over a corpus, as one anywidget; and ``link`` to a SinkExplorer.

The kernel keeps the :class:`~sinkwidgets.tags.TagData`; the browser gets, once, each distinct token string and per
point a uint16 token code, and per view float32 coordinates ``[n, 2]`` and uint8 colour codes (see ``_tag_state``).
Changing the head, rank, projection or τ recomputes in the kernel and sends only what changed.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from pathlib import Path
from typing import Any

import anywidget
import numpy as np
import traitlets

from ..errors import SinkwidgetsTypeError
from ..tags import analysis as A
from . import _serialization as ser
from ._tag_state import (
    COLOR_MODES,
    LAYER_CACHE_PROMPTS,
    MAX_RANK,
    PROJECTIONS,
    SOURCES,
    TagView,
    as_tagdata,
    css,
    describe_model,
    esm,
    model_facts,
    model_mismatch,
    packed_int,
    prompt_trace,
    token_table,
)
from ._widget import PngExport, PngRequests, SinkExplorer, WidgetValueError


def _choice(name: str, value: Any, options: tuple) -> Any:
    """``value`` if it is one of ``options``; else a :class:`WidgetValueError` naming the setting and the choices."""
    if value not in options:
        raise WidgetValueError(f"{name} must be one of {options}, got {value!r}")
    return value


class TagExplorer(PngRequests, anywidget.AnyWidget):
    """One point per token of every prompt, projected on a head's tag subspace (or the top-2 PCs), coloured by the
    sink that caught it at τ, by a label or by position; the numbers that keep the picture honest beside it (tag EV,
    PC bound, random floor, non-sink value control, all from :func:`sinkwidgets.tags.tag_ev`); and a second panel
    that follows the selected tokens' tag coordinate across the layers after the head.

    Parameters
    ----------
    data : TagData or path
        From :func:`sinkwidgets.tags.collect` with ``heads=[...]`` (outputs, values and α; maps of a head give its
        catch colours; ``layers='all'`` gives the across-layers panel without a model), or a saved file of it.
    head : (layer, head)
        The head shown (one of ``data.heads``; default the first).
    model : optional
        The model the data was collected with (``sinkwidgets.load_model(...)``): enables ``source='residual'``,
        per-token lines in the across-layers panel (the model runs again on the selected prompts), and the release
        experiment (the panel's Release button, or :meth:`experiment`: the head's tag projected out at the selected
        tokens, ΔNLL beside random and PC controls, later heads' change of attention on the sink).
    labels : sequence, optional
        One label per prompt or per token for ``color_by='label'`` (default ``data.labels``).
    texts : sequence of str, optional
        The texts given to ``collect`` (only with a model; by default they are decoded from the token ids).
    defer : bool
        In a kernel (a running asyncio loop, as in Jupyter), compute tag EV's controls (PC bound, random floor,
        non-sink value control: the SVDs, most of the work at tens of thousands of tokens) on the kernel's event loop
        right after the cell that built the widget, so the first view is on screen sooner; the numbers panel says
        "computing…" until they arrive. :meth:`wait` computes them at once. Outside a loop (scripts) they are
        computed with the picture. Default True.

    Non-finite data: tokens whose output or value of the head is NaN or infinite are left out of the fits, the
    numbers and the picture, and the widget says how many and names the first ones (``_numbers["n_nonfinite"]``,
    ``nonfinite_note``; see docs/tags.md, "Non-finite data").

    Traits (all settable from Python): ``head`` ([layer, head]), ``tau`` (catch threshold, default 0.3),
    ``rank`` (tag rank), ``projection`` ('tag' or 'pca'), ``source`` ('output' or 'residual'), ``color_by``
    ('catch', 'label' or 'position'), ``selected`` (token indices into the packed TagData, set by a box or lasso
    selection), ``focus`` (the packed index of the last clicked token, -1 for none).

    Examples
    --------
    >>> data = sw.tags.collect(model, texts, heads=[(1, 1), (2, 2)], layers="all")
    >>> te = sw.TagExplorer(data, head=(2, 2))
    >>> te                                   # display; select points, then te.selected, te.selected_tokens()
    """

    _frontend = traitlets.Int(0).tag(sync=True)
    _vocab = traitlets.List(traitlets.Unicode()).tag(sync=True)
    _static = traitlets.Dict().tag(sync=True)
    _points = traitlets.Dict().tag(sync=True)
    _catch = traitlets.Dict().tag(sync=True)
    _numbers = traitlets.Dict().tag(sync=True)
    _layers = traitlets.Dict().tag(sync=True)
    _experiment = traitlets.Dict().tag(sync=True)  # the release experiment shown (TagExperiment.state), {} for none

    head = traitlets.List(traitlets.Int(), minlen=2, maxlen=2, default_value=[0, 0]).tag(sync=True)
    tau = traitlets.Float(A.TAU).tag(sync=True)
    rank = traitlets.Int(1).tag(sync=True)
    projection = traitlets.Unicode("tag").tag(sync=True)
    source = traitlets.Unicode("output").tag(sync=True)
    color_by = traitlets.Unicode("catch").tag(sync=True)
    selected = traitlets.List(traitlets.Int()).tag(sync=True)
    focus = traitlets.Int(-1).tag(sync=True)

    def __init__(self, data: Any, head: Any = None, model: Any = None, labels: Any = None, *,
                 texts: Any = None, defer: bool = True, **kwargs: Any) -> None:
        if data is None:
            raise SinkwidgetsTypeError("TagExplorer(data=None): pass a TagData, e.g. "
                                       "TagExplorer(sinkwidgets.tags.collect(model, texts, heads=[(2, 2)]), "
                                       "head=(2, 2)) or the path of a saved one")
        self._data = as_tagdata(data)
        if model is not None and getattr(model, "sinkwidgets", None) is not None:
            mine = model_facts(self._data.meta, shape=None if self._data.sink_scores is None else
                               self._data.sink_scores.shape[:2])
            theirs = model_facts(None, info=model.sinkwidgets)
            why = model_mismatch(mine, theirs)
            if why is not None:
                raise WidgetValueError(
                    f"TagExplorer(data, model=...): the model is {describe_model(theirs)} but the TagData was collected "
                    f"with {describe_model(mine)} (the {why} differs); the residual source and the across-layers panel "
                    f"would run the wrong model. Pass the model the data was collected with, e.g. "
                    f"model=sinkwidgets.load_model({mine.get('model', '...')!r}), or no model")
        self._view_model = TagView(self._data, labels)
        self._model = model
        self._texts = texts
        self._init_png()
        self._layer_cache: dict[tuple, np.ndarray] = {}
        self._defer = bool(defer)
        self._live = False  # no refresh while traitlets sets the initial values
        self._numbers_gen = 0
        self._pending: tuple[Any, Any] | None = None  # (loop handle, callback) of deferred numbers
        self._experiment_list: list = []
        self._experiment_listeners: list = []  # callables(exp) run after each recorded experiment (TagLink)
        self._model_lock = threading.Lock()  # one forward pass at a time: experiments and the across-layers panel
        self._exp_job: Any = None  # the panel's running experiment (tag_experiment.ReleaseJob)
        if model is not None:
            self._attach_model(model)
        vm = self._view_model
        head = vm.heads[0] if head is None else vm.check_head(head)
        if "color_by" not in kwargs:
            kwargs["color_by"] = "catch" if vm.has_maps(head) else ("label" if vm.labels else "position")
        vocab, codes = token_table(self._data)
        static = {
            "n": self._data.n_tokens, "N": self._data.n_prompts,
            "offsets": packed_int(self._data.offsets, "int32"), "token_codes": codes,
            "heads": [list(h) for h in vm.heads], "maps": [vm.has_maps(h) for h in vm.heads],
            "model": str(self._data.meta.get("model", "unknown")), "max_rank": vm.max_rank(),
            "has_model": model is not None, "offline": False,
            "label_names": vm.labels[1] if vm.labels else None,
            "labels": packed_int(vm.labels[0], "uint8") if vm.labels else None,
        }
        super().__init__(_vocab=vocab, _static=static, head=list(head), **kwargs)
        self._live = True
        self._refresh("all")
        self.on_msg(self._on_custom_msg)

    # ------------------------------------------------------------------ public
    @property
    def data(self):
        """The :class:`~sinkwidgets.tags.TagData` shown."""
        return self._data

    @property
    def model(self) -> Any:
        """The model given at construction (None without one)."""
        return self._model

    @property
    def experiments(self) -> list:
        """The release experiments run from this explorer, oldest first (the last
        :data:`~sinkwidgets.widgets.tag_experiment.TAG_HISTORY` are kept)."""
        return list(self._experiment_list)

    def experiment(self, kind: str = "release", head: Any = None, positions: Any = None, rank: int | None = None,
                   seed: int = 0, *, basis: Any = None, n_random: int | None = None, pcs: bool = True,
                   _cancelled=None):
        """Run the "release" experiment with the explorer's model and show it in the panel.

        Projects ``head``'s (default: the head shown) rank-``rank`` (default: the rank shown) tag subspace out of
        the residual stream after its layer at ``positions`` (packed token indices as in :attr:`selected`; default
        the selection, or with none the tokens the head catches at τ in the focused token's prompt), on the
        prompt(s) of those tokens, beside ``n_random`` (3) random subspaces and the top PCs; see
        :mod:`sinkwidgets.widgets.tag_experiment`. ``basis=[d, r]`` replaces the tag subspace.

        Returns a :class:`~sinkwidgets.widgets.tag_experiment.TagExperiment`: ``.result`` is
        ``sw.project_out(model, exp.texts, layer, exp.basis, positions=exp.params["positions"],
        sink_positions=exp.params["sinks"])``, ``.control`` the controls, ``.mean_dnll``, ``.random_dnll``,
        ``.pcs_dnll``, ``.sink_shift [S, H]`` (later heads' change of attention on the sink). Raises
        :class:`~sinkwidgets.widgets.experiment.ExperimentError` (a ``SinkwidgetsError``) without a model, for an
        encoder or an edit the model's family does not support; the explorer is then left as it was.
        """
        from .experiment import ExperimentError
        from .tag_experiment import N_RANDOM, TAG_KINDS, run_release

        if kind not in TAG_KINDS:
            raise ExperimentError(f"kind={kind!r}: a TagExplorer offers {TAG_KINDS}")
        if self._model is None:
            raise ExperimentError("no model: the release experiment runs the model on the TagData's prompts; create "
                                  "the explorer with one, TagExplorer(data, model=sinkwidgets.load_model(...))")
        try:
            hd = tuple(self.head) if head is None else self._view_model.check_head(head)
        except ValueError as exc:
            raise ExperimentError(f"head={head!r}: {exc}") from None
        r = int(self.rank if rank is None else rank)
        if basis is None and not 1 <= r <= self._view_model.max_rank():
            raise ExperimentError(f"rank={rank!r}: give an int in 1..{self._view_model.max_rank()}")
        if positions is not None:
            packed, source = positions, "positions"
        elif self.selected:
            packed, source = list(self.selected), "selection"
        else:
            from .tag_experiment import caught_positions

            packed, source = caught_positions(self._view_model, hd, float(self.tau), int(self.focus)), "caught"
        with self._model_lock:
            exp = run_release(self._model, self._view_model, hd, r, packed, source=source, texts=self._texts,
                              basis=basis, tau=float(self.tau), n_random=N_RANDOM if n_random is None else n_random,
                              pcs=pcs, seed=seed, cancelled=_cancelled)
        self._record_experiment(exp)
        return exp

    def _record_experiment(self, exp: Any) -> None:
        """Keep ``exp`` and show it (its state is built first: a failure leaves the explorer as it was); then tell
        the linked SinkExplorers (their failures are noted on the link, never raised here)."""
        from .tag_experiment import TAG_HISTORY

        state = exp.state(len(self._experiment_list))
        self._experiment_list = (self._experiment_list + [exp])[-TAG_HISTORY:]
        self._experiment = state
        for fn in list(self._experiment_listeners):
            fn(exp)

    def coords(self) -> np.ndarray:
        """The scatter's coordinates ``[n_tok, 2]`` (float32) for the current head, rank, projection and source."""
        xy, _ = self._view_model.coords(tuple(self.head), self.rank, self.projection, self.source)
        return xy

    def selected_tokens(self) -> list[tuple[int, int, str]]:
        """The selection as ``(prompt, position, token)`` triples."""
        d = self._data
        return [(int(d.prompt_of[j]), int(d.positions[j]), d.tokens[int(d.prompt_of[j])][int(d.positions[j])])
                for j in self.selected]

    def tag_ev(self):
        """The :class:`~sinkwidgets.tags.TagEV` shown beside the picture (current head and rank), computed on the
        finite rows (see :attr:`n_nonfinite`)."""
        return self._view_model.ev(tuple(self.head), self.rank)

    @property
    def n_nonfinite(self) -> int:
        """How many tokens of the current head were left out because their output or value is not finite."""
        return int(self._view_model.nonfinite(tuple(self.head)).sum())

    def wait(self, timeout: float | None = None) -> bool:
        """Compute the deferred numbers (tag EV's controls) now if they are still pending; True when ``_numbers``
        holds the current head's and rank's numbers. ``timeout`` is accepted for symmetry and not needed."""
        pending, self._pending = self._pending, None
        if pending is not None:
            pending[0].cancel()
            pending[1]()
        return self._pending is None

    def save_png(self, path: str | os.PathLike, timeout: float = 15.0) -> PngExport:
        """Ask the displayed widget for a PNG of its current view (scatter, numbers, layers panel) and write it to
        ``path``; returns a :class:`PngExport` that completes after the cell (see :meth:`SinkExplorer.save_png`)."""
        return self._request_png(path, timeout, "TagExplorer.save_png needs the widget displayed in a live notebook "
                                 "front-end (display it in a cell first), or use to_html(path) for an offline file")

    def to_html(self, path: str | os.PathLike, title: str | None = None, experiments: Any = None) -> Path:
        """Write this view as one offline, self-contained HTML file (every collected head, both projections), with
        the release experiments recorded on it (``experiments=None``: :attr:`experiments`; ``[]``: none): the page
        shows the last one and flips between them without a kernel."""
        from .tag_standalone import save_tag_html

        return save_tag_html(self, path, title=title, experiments=experiments)

    # ------------------------------------------------------------------ validation
    @traitlets.validate("head")
    def _v_head(self, proposal):
        return list(self._view_model.check_head(proposal["value"])) if hasattr(self, "_view_model") else \
            proposal["value"]

    @traitlets.validate("tau")
    def _v_tau(self, proposal):
        v = proposal["value"]
        if not 0.0 < v < 1.0:
            raise WidgetValueError(f"tau must be in (0, 1) (a share of attention; the pilot default is {A.TAU}), "
                                   f"got {v!r}")
        return v

    @traitlets.validate("rank")
    def _v_rank(self, proposal):
        v, top = proposal["value"], self._view_model.max_rank() if hasattr(self, "_view_model") else MAX_RANK
        if not 1 <= v <= top:
            raise WidgetValueError(f"rank must be an int in 1..{top}, got {v!r}")
        return v

    @traitlets.validate("projection")
    def _v_projection(self, proposal):
        return _choice("projection", proposal["value"], PROJECTIONS)

    @traitlets.validate("source")
    def _v_source(self, proposal):
        v = _choice("source", proposal["value"], SOURCES)
        if v == "residual" and getattr(self, "_model", None) is None:
            raise WidgetValueError("source='residual' needs the residual stream at every token: create the widget "
                                   "with a model, TagExplorer(data, head, model=sinkwidgets.load_model(...))")
        return v

    @traitlets.validate("color_by")
    def _v_color(self, proposal):
        v = _choice("color_by", proposal["value"], COLOR_MODES)
        if v == "label" and hasattr(self, "_view_model") and self._view_model.labels is None:
            raise WidgetValueError("color_by='label' needs labels: TagExplorer(data, head, labels=[...]) with one "
                                   "label per prompt or per token, or a TagData collected with labels=[...]")
        return v

    @traitlets.validate("selected")
    def _v_selected(self, proposal):
        v = proposal["value"]
        n = self._data.n_tokens if hasattr(self, "_data") else None
        if n is not None and v and (min(v) < 0 or max(v) >= n):
            bad = next(x for x in v if not 0 <= x < n)
            raise WidgetValueError(f"selected holds token index {bad}; indices run 0..{n - 1} (packed over the "
                                   "TagData's prompts, see TagData.span)")
        return v

    @traitlets.validate("focus")
    def _v_focus(self, proposal):
        v = proposal["value"]
        n = self._data.n_tokens if hasattr(self, "_data") else None
        if n is not None and not -1 <= v < n:
            raise WidgetValueError(f"focus must be -1 (none) or a token index in 0..{n - 1}, got {v}")
        return v

    # ------------------------------------------------------------------ updates
    @traitlets.observe("head", "rank")
    def _on_view(self, change) -> None:
        self._refresh("all")

    @traitlets.observe("projection", "source")
    def _on_axes(self, change) -> None:
        self._refresh("points")  # catch, numbers and the layers panel depend on head, rank and tau only

    @traitlets.observe("tau")
    def _on_tau(self, change) -> None:
        self._refresh("catch")

    @traitlets.observe("selected")
    def _on_selected(self, change) -> None:
        self._refresh("layers")

    def _refresh(self, what: str) -> None:
        if not getattr(self, "_live", False):
            return
        vm = self._view_model
        head, rank, tau = tuple(self.head), int(self.rank), float(self.tau)
        with self.hold_sync():
            if what in ("all", "points"):
                self._points = self._points_state(head, rank, self.projection, self.source)
            if what in ("all", "catch"):
                self._catch = self._catch_state(head, tau)
                self._set_numbers(head, rank, tau)
            if what in ("all", "layers"):
                try:
                    self._layers = vm.layer_series(head, rank, np.asarray(self.selected, np.int64))
                except Exception as exc:  # the model may fail: shown in the panel
                    self._layers = {"status": "error", "message": f"{type(exc).__name__}: {exc}",
                                    "n_selected": len(self.selected)}

    def _set_numbers(self, head, rank, tau) -> None:
        """``_numbers`` now when tag EV is cached, ``defer=False`` or no event loop runs; else "computing…" now and
        the numbers from a callback on the kernel's loop (after this cell), dropped if the head, rank or τ changed
        meanwhile. Not a thread: OpenBLAS ignores a thread limit set outside the main thread, and the SVDs with
        several BLAS threads on busy cores are what made the first paint take 37 s."""
        vm = self._view_model
        self._numbers_gen += 1
        gen = self._numbers_gen
        if self._pending is not None:
            self._pending[0].cancel()
            self._pending = None
        try:
            loop = asyncio.get_running_loop() if self._defer and not vm.ev_ready(head, rank) else None
        except RuntimeError:
            loop = None
        if loop is None:
            self._numbers = vm.numbers(head, rank, tau)
            return
        self._numbers = {"ok": False, "pending": True, "head": list(head), "rank": rank,
                         "message": "computing tag EV and its controls…"}

        def work() -> None:
            self._pending = None
            if gen != self._numbers_gen:
                return
            try:
                res = vm.numbers(head, rank, tau)
            except Exception as exc:  # shown in the panel, never lost in a callback
                res = {"ok": False, "head": list(head), "rank": rank, "error": f"{type(exc).__name__}: {exc}"}
            self._numbers = res

        self._pending = (loop.call_later(0.05, work), work)

    def _points_state(self, head, rank, projection, source) -> dict[str, Any]:
        base = {"head": list(head), "rank": rank, "projection": projection, "source": source}
        try:
            xy, info = self._view_model.coords(head, rank, projection, source)
        except Exception as exc:
            return {**base, "status": "error", "message": f"{type(exc).__name__}: {exc}"}
        return {**base, "status": "ok", **info, "xy": ser.packed(xy, "float32")}

    def _catch_state(self, head, tau) -> dict[str, Any]:
        res = self._view_model.catch(head, tau)
        if res is None:
            return {"head": list(head), "tau": tau, "status": "missing",
                    "message": f"no attention maps of L{head[0]}H{head[1]} in this TagData: collect with "
                               f"maps=[({head[0]}, {head[1]})] to colour by catch"}
        return {"head": list(head), "tau": tau, "status": "ok", "names": res["names"],
                "codes": packed_int(res["codes"], "uint8"), "pos": packed_int(res["pos"], "int32"),
                "weight": ser.packed(res["weight"], "uint8", scale=1.0)}

    # ------------------------------------------------------------------ the model (optional)
    def _attach_model(self, model: Any) -> None:
        from ..tags.residual import residual_coords, residual_rows_packed

        vm = self._view_model

        def rows(layer: int) -> np.ndarray:
            return residual_rows_packed(model, self._data, layer, texts=self._texts)

        def layer_coords(head, rank, basis, layers, prompts):
            key = lambda i: (head, rank, i)  # noqa: E731
            todo = [i for i in prompts if key(i) not in self._layer_cache]
            if todo:
                with self._model_lock:
                    got = residual_coords(model, self._data, todo, basis, layers, texts=self._texts)
                for i, c in zip(todo, got):
                    self._layer_cache[key(i)] = c[:, :, 0]
                while len(self._layer_cache) > LAYER_CACHE_PROMPTS:
                    self._layer_cache.pop(next(iter(self._layer_cache)))
            return {i: self._layer_cache[key(i)] for i in prompts}

        vm.residual_rows = rows
        vm.layer_coords = layer_coords

    # ------------------------------------------------------------------ messages
    def _on_custom_msg(self, _widget: Any, content: Any, buffers: list[bytes]) -> None:
        if not isinstance(content, dict):
            return
        kind = content.get("type")
        if kind == "png":
            self._receive_png(content, buffers)
        elif kind == "experiment":
            self._answer_experiment(content)
        elif kind == "experiment_cancel" and self._exp_job is not None:
            self._exp_job.cancel.set()

    def _answer_experiment(self, msg: dict[str, Any]) -> None:
        """The panel's Release button: run :meth:`experiment` in a worker thread (the kernel stays free to receive a
        cancel) and answer ``{ok, seconds}``, ``{ok: False, error}`` or ``{ok: False, cancelled: True}``."""
        from .tag_experiment import ReleaseJob

        base = {"type": "experiment", "id": msg.get("id")}
        if self._exp_job is not None:
            self.send({**base, "ok": False, "error": "another experiment is still running: wait or cancel it"})
            return
        job = self._exp_job = ReleaseJob(msg.get("id"))

        def work() -> None:
            from .experiment import ExperimentCancelled

            t0 = time.monotonic()
            try:
                self.experiment(str(msg.get("kind") or "release"), _cancelled=job.cancel.is_set)
            except ExperimentCancelled as exc:
                self.send({**base, "ok": False, "cancelled": True, "error": str(exc)})
            except Exception as exc:  # shown in the panel; the explorer stays as it was
                self.send({**base, "ok": False, "error": f"{type(exc).__name__}: {exc}"})
            else:
                self.send({**base, "ok": True, "seconds": time.monotonic() - t0})
            finally:
                self._exp_job = None

        job.thread = threading.Thread(target=work, name="sinkwidgets-tag-experiment", daemon=True)
        job.thread.start()


TagExplorer._esm = esm()
TagExplorer._css = css()


class TagLink:
    """A live link between a :class:`SinkExplorer` and a :class:`TagExplorer` (made by :func:`link`).

    - choosing a head in either one selects it in the other (a head the TagData did not collect is not forced on
      the TagExplorer; :attr:`note` says so);
    - clicking a token in the TagExplorer's scatter shows that prompt in the SinkExplorer (a SinkTrace built from
      the TagData) with that token selected in its strip and heatmap;
    - a release experiment of the TagExplorer (:meth:`TagExplorer.experiment`, or its panel) is shown in the
      SinkExplorer: the first prompt of the experiment, traced under the same projection (one more forward pass),
      is added to its experiment history and shown "after" (grid, strips, heatmap of kept maps; the ΔNLL strip).
      Needs the TagExplorer's model; a failure here is kept in :attr:`note` and never undoes the experiment.

    :meth:`unlink` removes the observers.
    """

    def __init__(self, explorer: SinkExplorer, tag_explorer: TagExplorer) -> None:
        if not isinstance(explorer, SinkExplorer):
            raise SinkwidgetsTypeError(f"link(explorer, tag_explorer): explorer must be a SinkExplorer, got "
                            f"{type(explorer).__name__}")
        if not isinstance(tag_explorer, TagExplorer):
            raise SinkwidgetsTypeError(f"link(explorer, tag_explorer): tag_explorer must be a TagExplorer, got "
                            f"{type(tag_explorer).__name__}")
        tr, d = explorer.trace, tag_explorer.data
        ex_facts = model_facts(tr.meta, shape=(tr.n_layers, tr.n_heads))
        te_facts = model_facts(d.meta, shape=None if d.sink_scores is None else d.sink_scores.shape[:2])
        why = model_mismatch(ex_facts, te_facts)
        if why is not None:
            raise WidgetValueError(
                f"link(explorer, tag_explorer): the SinkExplorer shows a trace of {describe_model(ex_facts)} but the "
                f"TagExplorer's TagData was collected with {describe_model(te_facts)} (the {why} differs): heads "
                "would not correspond, and a click would open the other model's prompt. Link explorers of the same "
                "model, e.g. sinkwidgets.SinkExplorer(sinkwidgets.widgets.prompt_trace(tag_explorer.data, 0))")
        self.explorer, self.tag_explorer = explorer, tag_explorer
        self.note = ""
        self._busy = False
        self.prompt: int | None = None
        explorer.observe(self._from_explorer, names=["layer", "head"])
        tag_explorer.observe(self._from_tags, names=["head"])
        tag_explorer.observe(self._on_focus, names=["focus"])
        tag_explorer._experiment_listeners.append(self._on_experiment)
        self._from_tags(None)  # start in agreement: the TagExplorer's head

    def _from_explorer(self, change) -> None:
        if self._busy:
            return
        lh = (int(self.explorer.layer), int(self.explorer.head))
        if lh in self.tag_explorer._view_model.heads:
            self.note = ""
            self._busy = True
            try:
                self.tag_explorer.head = list(lh)
            finally:
                self._busy = False
        else:
            self.note = f"L{lh[0]}H{lh[1]} was not collected in the TagData; the TagExplorer stays on " \
                        f"L{self.tag_explorer.head[0]}H{self.tag_explorer.head[1]}"

    def _from_tags(self, change) -> None:
        if self._busy:
            return
        ly, h = self.tag_explorer.head
        ex = self.explorer
        if (ex.layer, ex.head) == (ly, h) or ly >= ex.trace.n_layers or h >= ex.trace.n_heads:
            return
        self._busy = True
        try:
            ex.select(ly, h)
        finally:
            self._busy = False

    def _on_focus(self, change) -> None:
        j = int(self.tag_explorer.focus)
        if j < 0:
            return
        d = self.tag_explorer.data
        i, pos = int(d.prompt_of[j]), int(d.positions[j])
        ly, h = self.tag_explorer.head
        self._busy = True
        try:
            if self.prompt != i:
                self.explorer.set_trace(prompt_trace(d, i), layer=ly, head=h, token=pos)
                self.prompt = i
            else:
                self.explorer.select(ly, h)
                self.explorer.token = pos
        finally:
            self._busy = False

    def _on_experiment(self, exp: Any) -> None:
        from .tag_experiment import linked_experiment

        i = int(exp.params["prompts"][0])
        ly, h = exp.params["head"]
        self._busy = True
        try:
            if self.prompt != i:
                self.explorer.set_trace(prompt_trace(self.tag_explorer.data, i), layer=ly, head=h)
                self.prompt = i
            with self.tag_explorer._model_lock:
                sx = linked_experiment(self.tag_explorer.model, exp, self.explorer.trace, 0)
            self.explorer._record_experiment(sx)
            self.note = ""
        except Exception as exc:  # the TagExplorer's experiment stands; the link says why the SinkExplorer did not follow
            self.note = f"the SinkExplorer could not show the release under the edit: {type(exc).__name__}: {exc}"
        finally:
            self._busy = False

    def unlink(self) -> None:
        """Stop following each other."""
        if self._on_experiment in self.tag_explorer._experiment_listeners:
            self.tag_explorer._experiment_listeners.remove(self._on_experiment)
        self.explorer.unobserve(self._from_explorer, names=["layer", "head"])
        self.tag_explorer.unobserve(self._from_tags, names=["head"])
        self.tag_explorer.unobserve(self._on_focus, names=["focus"])


def link(explorer: SinkExplorer, tag_explorer: TagExplorer) -> TagLink:
    """Link a :class:`SinkExplorer` and a :class:`TagExplorer`: a head chosen in one is chosen in the other, and a
    token clicked in the scatter is shown (its prompt, the token selected) in the SinkExplorer. Returns a
    :class:`TagLink` (``.unlink()``). Both widgets stay separate: display them where you like.

    >>> ex = sw.SinkExplorer(sw.widgets.prompt_trace(data, 0))
    >>> te = sw.TagExplorer(data, head=(2, 2))
    >>> lk = sw.link(ex, te)
    """
    return TagLink(explorer, tag_explorer)
