r"""Live interventions for the SinkExplorer: one edit on the explorer's prompt, its numbers and the trace under it.

:func:`run_experiment` (called by :meth:`sinkwidgets.SinkExplorer.experiment`) runs one of four experiments on the
prompt of a trace (``trace.meta["text"]``) with the functional API of :mod:`sinkwidgets.interventions`, so the
numbers are exactly those of ``sw.mask_sink`` / ``sw.ablate_massive`` / ``sw.add_sink`` / ``sw.project_out`` on
that prompt, and traces the model *under* the same edit (``sw.trace(model, text, edits=[...])``) so the explorer can
show before / after / after − before. Every experiment is paired with a **control** (the same edit where it should
not matter). An experiment runs in two phases, so the panel can paint the edit before its control is known:

1. **the edit** (:func:`start_experiment`): ONE forward pass of the edited prompt with the trace's own units and
   the per-token loss (:func:`_one_pass`). When the prompt's clean NLL is not cached yet (:func:`prepare` caches
   it ahead), the clean prompt joins that pass as a loss-only row (eager or remote traces) or runs a loss-only
   pass of its own first (local chunked traces, see :func:`_with_clean`). It gives the trace under the edit and
   ΔNLL: everything the panel paints.
2. **the control** (:meth:`Experiment.finish_control`): ONE loss-only pass of the control row
   (:func:`_loss_pass`: :class:`~sinkwidgets.tracing.reductions.TokenLoss` alone, on the functional API's chunked
   path, so no attention probabilities are formed). Until it lands ``Experiment.control`` is None and
   ``control_status`` is ``"computing"``.

:func:`run_experiment` (what ``SinkExplorer.experiment`` calls) runs both and returns a complete experiment; the
panel records the experiment after phase 1 and fills its control in after phase 2 (see
``SinkExplorer._answer_experiment``). What does not depend on the edit (the clean NLL, the massive-activation spec,
a head's map and tag vectors) is computed once per prompt (:func:`prompt_cache`):

========== ============================================== ============================================================
kind       edit                                           control
========== ============================================== ============================================================
"mask"     key ``token`` (default: the sink, the token    the same layers with a random non-sink token hidden
           with the largest mean α) hidden from queries   (``seed``)
           ``t >= 1`` in ``layers`` (``"all"``,
           ``"12-29"``, a list)
"massive"  the massive activations (Sun et al. 2024) set  ``ablate_massive``'s own control row: the same channels
           to 0 (``mode="zero"``) or their mean           zeroed at the last token (phase 2 adds it to ``result``,
                                                          which is then also ``control``)
"add_sink" ``prefix`` (default ``"\n"``) prepended        a random non-sink token of the prompt prepended instead
"project   head ``(layer, head)``'s rank-``rank`` tag     a random (Haar) subspace of the same rank at the same
_tag"      subspace projected out of the residual after   positions (``seed``)
           ``layer`` at the tokens the head catches
========== ============================================== ============================================================

``project_tag``'s subspace comes from this one prompt, as in ``sw.tags``: the head's sinks are the keys with
``α > eps`` (:func:`sinkwidgets.tags.sink_positions`), their tag vectors ``g_s = v_s W_O^h``
(:func:`sinkwidgets.tags.tag_vectors` on a one-prompt :func:`sinkwidgets.tags.collect`), the subspace the top
``rank`` right singular vectors (:func:`sinkwidgets.tags.tag_subspace`), and the caught tokens
``C = ∪_s {t > s : A[t, s] > tau}`` (:func:`sinkwidgets.tags.caught_set`). Pass ``basis=[d, r]`` to use another
subspace (e.g. one fitted on a corpus with ``sw.tags.tag_subspace``).

ΔNLL per token: ``dnll[t] = NLL_edit(x_{t+1} | x_{≤t}) − NLL_clean(x_{t+1} | x_{≤t})``, ``[T − 1]`` (positive = the
prediction got harder). Its mean is the result's ``delta``.
"""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import SinkwidgetsError, SinkwidgetsValueError
from ..sinktrace import SinkTrace

#: The experiments a SinkExplorer offers (see the module docstring).
KINDS = ("mask", "massive", "add_sink", "project_tag")


class ExperimentError(SinkwidgetsValueError):
    """An experiment cannot run on this model, trace or with these parameters (the message says why and the fix)."""


class ExperimentCancelled(SinkwidgetsError, RuntimeError):
    """The experiment (or its control, phase 2) was cancelled (the panel's Cancel) before it finished."""


_LOCAL = threading.local()  # the cancel check and the step timings of the experiment running in this thread


def _check_cancelled() -> None:
    fn = getattr(_LOCAL, "cancelled", None)
    if fn is not None and fn():
        raise ExperimentCancelled("the experiment was cancelled: nothing was recorded, the view is unchanged")


@contextmanager
def _steps(cancelled, timings: dict[str, float]):
    """Run one phase in this thread with the cancel check ``cancelled`` and the step timings kept in ``timings``."""
    prev = getattr(_LOCAL, "cancelled", None), getattr(_LOCAL, "timings", None)
    _LOCAL.cancelled, _LOCAL.timings = cancelled, timings
    try:
        yield
    finally:
        _LOCAL.cancelled, _LOCAL.timings = prev


#: ``Experiment.control_status`` values: the control is being (or not yet) computed, landed, cancelled, failed.
CONTROL_STATES = ("computing", "done", "cancelled", "failed")


@dataclass
class Experiment:
    """One experiment on the explorer's prompt.

    Attributes
    ----------
    kind, params : the experiment and its resolved parameters (e.g. ``{"token": 0, "layers": "all"}``).
    result : :class:`~sinkwidgets.interventions.InterventionResult` of the edit (one text: the explorer's prompt);
        ``result.nll[clean][0]`` and ``result.nll[condition][0]`` are ``[T − 1]``.
    trace : :class:`~sinkwidgets.SinkTrace` of the prompt under the edit (``meta["edits"]`` lists it); for
        ``add_sink`` the prefixed prompt, whose first ``offset`` tokens are the prefix.
    control : :class:`~sinkwidgets.interventions.InterventionResult` of the control edit; None until phase 2 (the
        control's pass, :meth:`finish_control`) has landed.
    condition, control_condition : the edited conditions' names in ``result`` / ``control``.
    control_note : what the control is (e.g. ``"token 37 masked in the same layers"``), known from phase 1 on.
    offset : tokens prepended in ``trace`` (``add_sink``; 0 otherwise), so ``trace`` token ``offset + t`` is
        the explorer's token ``t``.
    control_status : one of :data:`CONTROL_STATES`: ``"done"`` for an experiment from :func:`run_experiment`;
        after :func:`start_experiment` ``"computing"`` until :meth:`finish_control` lands it (``"done"``), is
        cancelled (``"cancelled"``) or fails (``"failed"``; ``meta["control_error"]`` says why). A cancelled or
        failed control can be run again with :meth:`finish_control`.
    meta : ``"seconds"`` (wall time of each step, both phases), ``"phase_seconds"`` (``{"edit": s, "control": s}``).
    """

    kind: str
    params: dict[str, Any]
    result: Any
    trace: SinkTrace
    control: Any
    condition: str
    control_condition: str
    control_note: str
    offset: int = 0
    meta: dict[str, Any] = field(default_factory=dict)
    control_status: str = "done"
    #: phase 2: ``() -> (result or None, control)``, dropped once the control has landed
    _control_step: Any = field(default=None, repr=False, compare=False)

    @property
    def dnll(self) -> np.ndarray:
        """ΔNLL per predicted token ``[T − 1]`` (nats; entry ``t`` is the prediction of token ``t + 1``)."""
        clean = self.result.conditions[0]
        return np.asarray(self.result.nll[self.condition][0] - self.result.nll[clean][0], dtype=np.float64)

    @property
    def mean_dnll(self) -> float:
        """Mean ΔNLL of the edit (nats per token; equals ``result.delta[condition]``)."""
        return float(self.result.delta[self.condition])

    @property
    def control_dnll(self) -> float:
        """Mean ΔNLL of the control edit (nats per token); NaN while the control has not landed
        (``control_status`` is not ``"done"``)."""
        if self.control is None:
            return float("nan")
        return float(self.control.delta[self.control_condition])

    def finish_control(self, cancelled=None) -> Experiment:
        """Phase 2: run the control's loss-only pass and fill in :attr:`control` (for ``"massive"`` also
        ``result``'s ``"control"`` condition); a no-op once it has landed. Returns the experiment.

        ``cancelled``: optional ``() -> bool`` checked before and after the pass. A cancel raises
        :class:`ExperimentCancelled` and a failure :class:`ExperimentError`; either way the phase-1 numbers and
        trace stay as they are, only ``control_status`` becomes ``"cancelled"`` / ``"failed"``, and a later call
        may try again."""
        if self.control is not None:
            return self
        step = self._control_step
        if step is None:
            raise ExperimentError(f"{self.label}: no control step to run (this experiment was not made by "
                                  "start_experiment / run_experiment)")
        self.control_status = "computing"
        timings = self.meta.setdefault("seconds", {})
        t0 = time.perf_counter()
        try:
            with _steps(cancelled, timings):
                _check_cancelled()
                result, control = step()
                _check_cancelled()
        except ExperimentCancelled:
            self.control_status = "cancelled"
            raise ExperimentCancelled(f"{self.label}: the control was cancelled; the edit's numbers and trace are kept, "
                                      "its control was not computed") from None
        except Exception as exc:
            self.control_status = "failed"
            self.meta["control_error"] = f"{type(exc).__name__}: {exc}"
            raise
        if result is not None:
            self.result = result
        self.control, self.control_status, self._control_step = control, "done", None
        self.meta.pop("control_error", None)
        self.meta.setdefault("phase_seconds", {})["control"] = time.perf_counter() - t0
        return self

    @property
    def label(self) -> str:
        """A short description, e.g. ``"mask token 0, layers all"``."""
        p = self.params
        if self.kind == "mask":
            return f"mask token {p['token']}, layers {p['layers']}"
        if self.kind == "massive":
            return f"massive activations → {p['mode']}"
        if self.kind == "add_sink":
            return f"add sink {p['prefix']!r}"
        return f"project L{p['head'][0]}H{p['head'][1]} tag (rank {p['rank']}) at {len(p['positions'])} caught tokens"

    def summary(self) -> dict[str, Any]:
        """Mean ΔNLL of the edit and of its control (NaN until it lands), the control's status, and the label
        (plain floats and strings)."""
        return {"kind": self.kind, "label": self.label, "mean_dnll": self.mean_dnll, "control_dnll": self.control_dnll,
                "control": self.control_note, "control_status": self.control_status}

    def __repr__(self) -> str:
        ctl = (f"{self.control_dnll:+.4f}" if self.control is not None else
               {"computing": "computing…"}.get(self.control_status, self.control_status))
        return f"Experiment({self.label}: mean ΔNLL {self.mean_dnll:+.4f} nats/token, control {ctl} ({self.control_note}))"


# ----------------------------------------------------------------------------- helpers
def _info(model: Any, trace: SinkTrace) -> Any:
    info = getattr(model, "sinkwidgets", None)
    if info is None:
        raise ExperimentError(
            f"experiments need a model from sinkwidgets.load_model(...), got {type(model).__name__}: "
            "SinkExplorer(trace, model=sinkwidgets.load_model('smollm2-135m'))")
    if not info.causal:
        raise ExperimentError(
            f"model {info.name!r} is an encoder (not causal): experiments measure next-token NLL and need a causal "
            "language model such as 'smollm2-135m'")
    if not trace.meta.get("text"):
        raise ExperimentError("this trace has no meta['text'] (the prompt), so the experiment cannot run it: "
                              "trace the prompt with sinkwidgets.trace(model, text)")
    if (info.n_layers, info.n_heads) != (trace.n_layers, trace.n_heads):
        raise ExperimentError(
            f"model {info.name!r} has {info.n_layers} layers x {info.n_heads} heads but the trace "
            f"({trace.model_name!r}) has {trace.n_layers} x {trace.n_heads}: give the model the trace was made with")
    return info


def _wrap(what: str, model_name: str, fn, *args, **kwargs):
    """Run ``fn`` (after checking for a cancel); any failure that is not already one of the package's errors becomes
    an :class:`ExperimentError`."""
    _check_cancelled()
    t0 = time.perf_counter()
    try:
        return fn(*args, **kwargs)
    except SinkwidgetsError:
        raise
    except Exception as exc:  # an edit the family does not support, an engine failure: one clear message
        raise ExperimentError(f"{what} failed on {model_name!r}: {type(exc).__name__}: {exc}") from exc
    finally:
        timings = getattr(_LOCAL, "timings", None)
        if timings is not None:
            timings[what] = timings.get(what, 0.0) + time.perf_counter() - t0


def default_sink(trace: SinkTrace) -> int:
    """The sink token: the position with the largest α averaged over all layers and heads."""
    a = np.nan_to_num(np.asarray(trace.sink_scores, dtype=np.float64), nan=0.0).mean(axis=(0, 1))
    return int(np.argmax(a))


def _control_token(trace: SinkTrace, exclude: list[int], eps: float, rng: np.random.Generator) -> int:
    """A random position ``>= 1`` outside ``exclude`` whose α stays ``<= eps`` in every layer and head."""
    T = trace.n_tokens
    amax = np.nan_to_num(np.asarray(trace.sink_scores), nan=0.0).max(axis=(0, 1))
    cand = [t for t in range(1, T) if t not in exclude and amax[t] <= eps]
    if not cand:
        cand = [t for t in range(1, T) if t not in exclude]
    if not cand:
        raise ExperimentError(f"the prompt has {T} tokens: no other token for the control; use a longer prompt")
    return int(rng.choice(cand))


def _check_same_tokens(model_name: str, trace: SinkTrace, after: SinkTrace, offset: int = 0) -> None:
    if list(after.tokens[offset:]) != list(trace.tokens):
        raise ExperimentError(
            f"re-tracing the prompt through {model_name!r} gave {after.n_tokens - offset} tokens, the explorer's trace "
            f"has {trace.n_tokens}: is this the model the trace was made with?")


def _single_row_massive(layer: int, channels: list[int], values: list[float], abs_thr: float, ratio: float):
    """``ablate_massive``'s edit for a one-row trace: every row flags its own massive entries (as row 0 does for the
    edited rows of ``ablate_massive``: up to the edited layer both rows are the same) and sets them to ``values``;
    reports each row's flags ``[B, T, c]`` (so ``n_massive`` needs no clean row)."""
    import torch

    from ..tracing.edits import MassiveAblation, massive_flags

    class RowMassiveAblation(MassiveAblation):
        def apply(self, h, ctx, layer, state):
            ch = self.channels.to(h.device)
            v = self.values[0].to(h.device, h.dtype)
            out = h.clone()
            flags = []
            for b in range(h.shape[0]):
                flags.append(massive_flags(h[b], ch, self.abs_thr, self.ratio))
                cur = out[b].index_select(-1, ch)
                out[b, :, ch] = torch.where(flags[-1], v[None, :].expand_as(cur), cur)
            return out, {"flags": torch.stack(flags)}

        def __repr__(self):
            return f"MassiveAblation(layer={self.layer}, channels={self.channels.tolist()}, values={self.values[0].tolist()})"

    return RowMassiveAblation(int(layer), torch.tensor(channels, dtype=torch.long),
                              torch.tensor([values], dtype=torch.float32), float(abs_thr), float(ratio))


def _massive_control(layer: int, channels: list[int], pos: int):
    """``ablate_massive``'s control row as a one-row edit: the massive channels zeroed at token ``pos`` only (no
    flags: the control does not depend on the clean row)."""
    from dataclasses import dataclass as _dc
    from dataclasses import field as _field

    import torch

    from ..tracing.edits import Edit

    @_dc(repr=False)
    class ZeroChannelsAt(Edit):
        layer: int
        channels: Any
        pos: int
        name: str = "massive_control"
        site: str = _field(default="resid", init=False)

        def layers(self, n_layers):
            return [int(self.layer)]

        def apply(self, h, ctx, layer, state):
            ch = self.channels.to(h.device)
            out = h.clone()
            out[:, self.pos, ch] = torch.zeros_like(out[:, self.pos, ch])
            return out

        def __repr__(self):
            return f"ZeroChannelsAt(layer={self.layer}, channels={self.channels.tolist()}, pos={self.pos})"

    return ZeroChannelsAt(int(layer), torch.tensor(channels, dtype=torch.long), int(pos))


# ----------------------------------------------------------------------------- the passes of an experiment
#: Per-prompt results that do not depend on the edit, kept while the explorer's trace lives:
#: ``{id(trace): (weakref(trace), {id(model): {"clean": nll [T-1], "spec": MassiveSpec, ("head", l, h): ...}})}``.
_PROMPT_CACHE: dict[int, tuple[Any, dict[int, dict[str, Any]]]] = {}
_CACHE_LOCK = threading.Lock()


def prompt_cache(trace: SinkTrace, model: Any) -> dict[Any, Any]:
    """What the experiments on ``trace``'s prompt with ``model`` share (the clean per-token NLL ``"clean"``
    ``[T − 1]``, the massive-activation spec ``"spec"``, a head's map and tag basis), computed once and reused by
    every later experiment on the same trace; dropped when the trace is garbage-collected."""
    import weakref

    key = id(trace)
    with _CACHE_LOCK:
        ent = _PROMPT_CACHE.get(key)
        if ent is None or ent[0]() is not trace:
            ref = weakref.ref(trace, lambda _r, k=key: _PROMPT_CACHE.pop(k, None))
            ent = _PROMPT_CACHE[key] = (ref, {})
        return ent[1].setdefault(id(model), {})


def prepare(model: Any, trace: SinkTrace) -> np.ndarray:
    """Compute and cache the clean per-token NLL ``[T − 1]`` of ``trace``'s prompt (one loss-only pass,
    :func:`_loss_pass`), so that even the first experiment's phase 1 is one row (the edit). Meant to run while
    nobody waits, e.g. in a background thread when an explorer gets a model; a no-op when it is cached already.
    Returns the NLL."""
    cache = prompt_cache(trace, model)
    if cache.get("clean") is None:
        info = _info(model, trace)
        cache["clean"] = _loss_pass(model, info, trace, [[int(i) for i in trace.token_ids]], [])[0]
    return cache["clean"]


def _trace_units(trace: SinkTrace) -> list:
    """The units of ``sw.trace`` that made ``trace``: α / first-token mass / entropy, the residual summary with the
    same ``top_k``, and the same kept maps (heads and dtype)."""
    from ..tracing.reductions import TOP_K_ACTIVATIONS, AttentionSummary, KeptMaps, ResidualSummary

    top = trace.top_activations
    top_k = int(np.shape(top)[-1]) if top is not None and np.ndim(top) == 2 else TOP_K_ACTIVATIONS
    units = [AttentionSummary(), ResidualSummary(top_k)]
    if trace.map_index is not None and len(trace.map_index):
        sel: dict[int, list[int]] = {}
        for ly, h in np.asarray(trace.map_index):
            sel.setdefault(int(ly), []).append(int(h))
        dtype = str(np.asarray(trace.maps).dtype) if trace.maps is not None else "float16"
        units.append(KeptMaps({ly: sorted(hs) for ly, hs in sorted(sel.items())},
                              dtype if dtype in ("float16", "float32") else "float16"))
    return units


class _OneRow:
    """A trace unit restricted to batch row ``row``: the executor hands it the whole batch, it reduces that row only
    (the other rows of an experiment's pass need only their loss, so their α / entropy / residual summaries and
    kept maps are not computed). Lands row ``row``'s arrays for every prompt index (all rows share one prompt)."""

    def __init__(self, inner: Any, row: int):
        self.inner, self.row = inner, int(row)
        self.name, self.reads, self.takes_logp = inner.name, inner.reads, getattr(inner, "takes_logp", False)
        self.takes_rowscale = getattr(inner, "takes_rowscale", False)
        self.mergeable = getattr(inner, "mergeable", False)

    def merge(self, state, other):
        self.inner.merge(state[1], other[1])
        return state

    def _ctx(self, ctx: Any) -> Any:
        import dataclasses

        r = slice(self.row, self.row + 1)
        ids = None if ctx.input_ids is None else ctx.input_ids[r]
        return dataclasses.replace(ctx, qmask=ctx.qmask[r], first=ctx.first[r], n_real=ctx.n_real[r], input_ids=ids)

    def layers(self, n_layers: int) -> list[int]:
        return self.inner.layers(n_layers)

    def bind(self, n_layers: int, n_heads: int, d_model: int) -> None:
        self.n_layers, self.n_heads, self.d_model = n_layers, n_heads, d_model
        self.inner.bind(n_layers, n_heads, d_model)

    def begin(self, ctx, layer, device):
        sub = self._ctx(ctx)
        return sub, self.inner.begin(sub, layer, device)

    def chunk(self, state, start, P, scratch, ctx, logp=None, rowscale=None):
        sub, st = state
        r = slice(self.row, self.row + 1)
        scratch = None if scratch is None else scratch[r]
        if rowscale is not None:
            self.inner.chunk(st, start, P[r], scratch, sub, logp=logp[r], rowscale=(rowscale[0][r], rowscale[1][r]))
        elif logp is not None:
            self.inner.chunk(st, start, P[r], scratch, sub, logp=logp[r])
        else:
            self.inner.chunk(st, start, P[r], scratch, sub)

    def end(self, state, ctx):
        sub, st = state
        return self.inner.end(st, sub)

    def read(self, source, x, w_o, ctx, layer):
        return self.inner.read(source, x[self.row : self.row + 1], w_o, self._ctx(ctx), layer)

    def pack(self, key, per_layer):
        return self.inner.pack(key, per_layer)

    def result_bytes(self, B, T, ctx):
        return self.inner.result_bytes(1, T, ctx)

    def land(self, out, b, f):
        return self.inner.land(out, 0, f)

    def to_sinktrace(self, landed):
        return self.inner.to_sinktrace(landed)

    def __repr__(self) -> str:
        return f"_OneRow({self.inner!r}, row={self.row})"


def _one_pass(model, info, trace: SinkTrace, rows: list[list[int]], edits: list, trace_row: int, same_as: list,
              text: str | None = None) -> tuple[SinkTrace, list[np.ndarray], list]:
    """ONE forward pass of ``rows`` (token ids; row ``r`` edited by the edits restricted to it) with the units of
    ``trace``'s own ``sw.trace`` and :class:`~sinkwidgets.tracing.reductions.TokenLoss` together
    (:func:`sinkwidgets.tracing.run_units`, same method as ``trace``: eager for a short local prompt, chunked on
    NDIF) → ``(SinkTrace of row trace_row, per-token NLL [T_r − 1] of every row, the PromptResult of every row)``.

    Each row's attention is its own, so row ``trace_row`` gives ``sw.trace(model, text, edits=same_as)`` and each
    row's NLL the functional API's, to float rounding (tested to 1e-5 and 1e-4). ``meta["edits"]`` lists
    ``same_as`` (the one-row edits the trace is under)."""
    from ..tracing import run_units
    from ..tracing.options import Encoded
    from ..tracing.reductions import TokenLoss

    units = _trace_units(trace)
    text = trace.meta["text"] if text is None else text
    used_bos = trace.meta.get("add_bos")
    enc = [Encoded(text, [int(i) for i in ids], used_bos, len(ids)) for ids in rows]
    method = trace.meta.get("method", "auto")
    method = "chunked" if info.remote else (method if method in ("eager", "chunked") else "auto")
    if len(rows) > 1 and not info.remote:  # only row trace_row's trace is kept: the other rows run the loss alone
        units = [_OneRow(u, trace_row) for u in units]
    out = run_units(model, [text] * len(rows), [*units, TokenLoss()], edits=edits, encoded=enc, batch_size=len(rows),
                    method=method, remote=bool(info.remote), progress=False, pin_mmap_threshold=False)
    r = out[trace_row]
    fields: dict[str, Any] = {}
    for u in units:
        fields.update(u.to_sinktrace(r.by_unit[u.name]))
    meta = {**r.meta, "keep_maps": "chosen" if len(units) > 2 else "none", "batch_size": 1,
            "edits": [e.describe() for e in same_as], "experiment_rows": len(rows)}
    after = SinkTrace(tokens=r.tokens, token_ids=r.token_ids, meta=meta, **fields)
    return after, [np.asarray(o.by_unit["loss"]["nll"]) for o in out], out


def _loss_method(model, info) -> str:
    """The method of a loss-only pass: the functional API's chunked path (an SDPA forward; with no unit reading
    attention, no probabilities are formed), eager where the model has no chunked path."""
    from ..tracing.api import auto_long_method

    return "chunked" if info.remote else auto_long_method(model, info)


def _loss_pass(model, info, trace: SinkTrace, rows: list[list[int]], edits: list, text: str | None = None
               ) -> list[np.ndarray]:
    """ONE forward pass of ``rows`` (token ids) with :class:`~sinkwidgets.tracing.reductions.TokenLoss` alone →
    the per-token NLL ``[T_r − 1]`` of every row: phase 2 (the control) and :func:`prepare` (the clean prompt)."""
    from ..tracing import run_units
    from ..tracing.options import Encoded
    from ..tracing.reductions import TokenLoss

    text = trace.meta["text"] if text is None else text
    enc = [Encoded(text, [int(i) for i in ids], trace.meta.get("add_bos"), len(ids)) for ids in rows]
    out = run_units(model, [text] * len(rows), [TokenLoss()], edits=edits, encoded=enc, batch_size=len(rows),
                    method=_loss_method(model, info), remote=bool(info.remote), progress=False,
                    pin_mmap_threshold=False)
    return [np.asarray(o.by_unit["loss"]["nll"]) for o in out]


def _with_clean(model, info, trace: SinkTrace, cache: dict, ids: list[int]) -> tuple[list[list[int]], bool]:
    """Phase 1's clean row when the prompt's clean NLL is not cached yet: ``([ids], True)`` to append to the edit's
    pass on an eager (or remote: one job) trace; on a local chunked trace the clean NLL is computed now by a
    loss-only pass of its own and ``([], False)`` returned: there a batch row would have its attention recomputed
    for the trace units (measured at T = 512, 1 thread: 4.35 s batched vs 3.87 s apart; at T = 128 eager: 0.82 vs
    0.88 s). ``([], False)`` when it is cached."""
    if cache.get("clean") is not None:
        return [], False
    if not info.remote and trace.meta.get("method") == "chunked":
        cache["clean"] = _wrap("clean NLL", info.name, _loss_pass, model, info, trace, [list(ids)], [])[0]
        return [], False
    return [list(ids)], True


def _base_meta(info, trace, **more) -> dict[str, Any]:
    return {"model": info.name, "n_texts": 1, "n_tokens": trace.n_tokens, "add_bos": trace.meta.get("add_bos"),
            "remote": bool(info.remote), **more}


# ----------------------------------------------------------------------------- the experiments
def _mask(model, info, trace, text, add_bos, token=None, layers="all", seed=0, eps=0.3):
    """Phase 1, rows ``[key tok hidden (+ clean)]``: ``mask_sink``'s numbers and the trace under the mask; phase 2,
    one loss-only row with key ``ctl_tok`` hidden (``mask_sink`` runs ``[clean, hidden]`` on the chunked path)."""
    from .. import interventions as iv
    from ..interventions import InterventionResult
    from ..interventions.edits import layer_sets

    tok = default_sink(trace) if token is None else token
    if not isinstance(tok, (int, np.integer)) or not 0 <= int(tok) < trace.n_tokens:
        raise ExperimentError(f"token={token!r}: give a position in 0..{trace.n_tokens - 1} (default: the sink)")
    tok = int(tok)
    if not isinstance(layers, (str, list, tuple, range)):
        raise ExperimentError(f"layers={layers!r}: give 'all', a range such as '12-29', or a list of layers")
    ctl_tok = _control_token(trace, [0, tok], eps, np.random.default_rng(seed))
    try:
        sets = layer_sets(layers, info.n_layers, False)
    except SinkwidgetsError:
        raise
    except Exception as exc:
        raise ExperimentError(f"layers={layers!r}: {exc}") from exc
    (name, _), = sets.items()
    cache = prompt_cache(trace, model)
    ids = [int(i) for i in trace.token_ids]
    clean_row, add_clean = _with_clean(model, info, trace, cache, ids)
    after, nll, _ = _wrap("mask_sink + trace under the mask", info.name, _one_pass, model, info, trace,
                          [ids, *clean_row], [iv.mask_sink_edit(model, layers, token=tok, rows=[0])], 0,
                          [iv.mask_sink_edit(model, layers, token=tok)])
    if add_clean:
        cache["clean"] = nll[1]
    _check_same_tokens(info.name, trace, after)
    clean = cache["clean"]

    def result(t, row):
        return InterventionResult("mask_sink", ["clean", name], {"clean": [clean], name: [row]}, {},
                                  _base_meta(info, trace, layer_sets=sets, token=[t]))

    def control():
        (row,) = _wrap("control: mask_sink", info.name, _loss_pass, model, info, trace, [ids],
                       [iv.mask_sink_edit(model, layers, token=ctl_tok)])
        return None, result(ctl_tok, row)

    return Experiment("mask", {"token": tok, "layers": layers if isinstance(layers, str) else list(layers)},
                      result(tok, nll[0]), after, None, name, name, f"token {ctl_tok} masked in the same layers",
                      control_status="computing", _control_step=control)


def _massive(model, info, trace, text, add_bos, mode="zero"):
    """After ``find_massive`` on the prompt (once per prompt): phase 1, the ablated row (with the clean row first
    when its NLL is not cached: ``ablate_massive``'s rows, row 0 flagging the massive entries; else one row that
    flags its own, the same entries since the rows agree up to the edited layer), the trace under the ablation;
    phase 2, ``ablate_massive``'s control row alone (the same channels zeroed at the last token), added to the
    result as its ``"control"`` condition (the result is then also the control, as in ``ablate_massive``)."""
    import torch

    from .. import interventions as iv
    from ..interventions import InterventionResult
    from ..tracing.edits import MassiveAblation

    if mode not in ("zero", "mean"):
        raise ExperimentError(f"mode={mode!r}: use 'zero' or 'mean'")
    cache = prompt_cache(trace, model)
    if cache.get("spec") is None:
        cache["spec"] = _wrap("find_massive", info.name, iv.find_massive, model, text, add_bos=add_bos)
    spec = cache["spec"]
    values = [0.0] * len(spec.channels) if mode == "zero" else list(spec.means)
    ids = [int(i) for i in trace.token_ids]
    T = len(ids)
    one_row = _single_row_massive(spec.layer, spec.channels, values, spec.abs_thr, spec.ratio)
    _, add_clean = _with_clean(model, info, trace, cache, ids)
    if add_clean:  # [clean, ablated]: row 0 flags, row 1 is ablated and traced
        edit = MassiveAblation(spec.layer, torch.tensor(spec.channels, dtype=torch.long),
                               torch.tensor([values], dtype=torch.float32), float(spec.abs_thr), float(spec.ratio))
        rows, row = [ids, ids], 1
    else:
        edit, rows, row = one_row, [ids], 0
    after, nll, out = _wrap("ablate_massive + trace under the ablation", info.name, _one_pass, model, info, trace,
                            rows, [edit], row, [one_row])
    if row == 1:
        cache["clean"] = nll[0]
    _check_same_tokens(info.name, trace, after)
    clean, edited = cache["clean"], nll[row]
    meta = _base_meta(info, trace, spec=spec, layer=spec.layer,
                      n_massive=[int(out[0].by_unit[edit.name]["massive_flags"].sum())])
    res = InterventionResult("ablate_massive", ["clean", mode], {"clean": [clean], mode: [edited]}, {}, meta)

    def control():
        (ctl,) = _wrap("control: ablate_massive", info.name, _loss_pass, model, info, trace, [ids],
                       [_massive_control(spec.layer, spec.channels, T - 1)])
        full = InterventionResult("ablate_massive", ["clean", mode, "control"],
                                  {"clean": [clean], mode: [edited], "control": [ctl]}, {}, meta)
        return full, full

    return Experiment("massive", {"mode": mode, "layer": int(spec.layer), "channels": list(spec.channels)}, res, after,
                      None, mode, "control", "the same channels zeroed at the last token", control_status="computing",
                      _control_step=control)


def _add_sink(model, info, trace, text, add_bos, prefix="\n", seed=0, eps=0.3):
    """Phase 1, rows ``[prefix + ids (+ ids)]`` (left-padded to the longest): ``add_sink``'s numbers (it runs each
    row alone) and the trace of the prefixed prompt; phase 2, the loss of ``control token + ids``."""
    from ..interventions import InterventionResult
    from ..interventions.edits import prefixes

    if not isinstance(prefix, str) or not prefix:
        raise ExperimentError(f"prefix={prefix!r}: give a non-empty string such as '\\n' or '<|endoftext|>'")
    (pre,), conds = prefixes(model, prefix)
    n_pre = len(pre)
    ids = [int(i) for i in trace.token_ids]
    ctl_pos = _control_token(trace, [0], eps, np.random.default_rng(seed))
    ctl_id = ids[min(ctl_pos, len(ids) - 1)]
    (ctl_pre,), ctl_conds = prefixes(model, [[ctl_id]])
    cache = prompt_cache(trace, model)
    clean_row, add_clean = _with_clean(model, info, trace, cache, ids)
    after, nll, _ = _wrap("add_sink + trace with the prefix", info.name, _one_pass, model, info, trace,
                          [pre + ids, *clean_row], [], 0, [], prefix + text)
    if add_clean:
        cache["clean"] = nll[1]
    if list(after.tokens[n_pre:]) != list(trace.tokens):
        raise ExperimentError(f"the prefixed prompt does not line up with the explorer's {trace.n_tokens} tokens")
    clean = cache["clean"]

    def result(cond, pi, full):
        cut = full[len(pi):]
        return InterventionResult(
            "add_sink", ["none", cond], {"none": [clean], cond: [cut]}, {},
            _base_meta(info, trace, prefix_ids=[pi], first_token_nll={cond: float(full[len(pi) - 1])},
                       nll_from_token2={"none": float(clean[1:].mean()), cond: float(cut[1:].mean())}))

    def control():
        (row,) = _wrap("control: add_sink", info.name, _loss_pass, model, info, trace, [ctl_pre + ids], [])
        return None, result(ctl_conds[1], ctl_pre, row)

    return Experiment("add_sink", {"prefix": prefix}, result(conds[1], pre, nll[0]), after, None, conds[1],
                      ctl_conds[1], f"token {ctl_id} ({ctl_pos}th of the prompt) prepended instead", offset=n_pre,
                      control_status="computing", _control_step=control)


def _project_tag(model, info, trace, text, add_bos, head=None, rank=1, basis=None, tau=None, eps=None, seed=0):
    """The head's map and tag vectors (once per prompt and head); phase 1, rows ``[tag projected out (+ clean)]``:
    ``project_out``'s numbers and the trace under the projection; phase 2, the loss with a random subspace of the
    same rank projected out at the same tokens."""
    import torch

    from .. import tags as tg
    from ..interventions import InterventionResult
    from ..interventions.edits import orthonormal_basis
    from ..tracing.edits import ProjectOut

    tau = tg.TAU if tau is None else float(tau)
    eps = tg.EPS if eps is None else float(eps)
    if head is None or len(head) != 2:
        raise ExperimentError(f"head={head!r}: give (layer, head), e.g. head=(9, 4)")
    ly, h = int(head[0]), int(head[1])
    if not (0 <= ly < info.n_layers and 0 <= h < info.n_heads):
        raise ExperimentError(f"head={head!r}: this model has {info.n_layers} layers x {info.n_heads} heads")
    if ly == info.n_layers - 1:
        raise ExperimentError(f"head={head!r} is in the last layer: nothing comes after it to release; pick an earlier "
                              "layer")
    if not isinstance(rank, (int, np.integer)) or rank < 1:
        raise ExperimentError(f"rank={rank!r}: give an int >= 1")
    cache = prompt_cache(trace, model)
    if trace.has_map(ly, h):
        A = trace.get_map(ly, h)
    else:
        if cache.get(("map", ly, h)) is None:
            cache[("map", ly, h)] = np.asarray(_wrap("tracing the head's map", info.name, _trace_map, model, trace,
                                                     ly, h), dtype=np.float32)
        A = cache[("map", ly, h)]
    sinks = tg.sink_positions(tg.alpha_from_map(A), eps)
    caught = sorted({int(t) for s in sinks for t in tg.caught_set(A, int(s), tau)} - {int(s) for s in sinks})
    if not len(sinks) or not caught:
        raise ExperimentError(
            f"head L{ly}H{h} has {len(sinks)} sinks (α > {eps:g}) and catches {len(caught)} tokens (A[t, s] > "
            f"{tau:g}) in this prompt: nothing to release; pick a sink head (e.g. the brightest cell of the grid) or "
            "lower tau=")
    if basis is None:
        key = ("tags", ly, h, eps)
        if cache.get(key) is None:
            data = _wrap("collecting the head's tag vectors", info.name, tg.collect, model, [text], heads=[(ly, h)],
                         maps=False, outputs=False, values=True, summary=True, add_bos=add_bos, progress=False)
            cache[key] = tg.tag_vectors(data, (ly, h), eps=eps)[0]
        G = cache[key]
        if len(G) < rank:
            raise ExperimentError(f"head L{ly}H{h} has {len(G)} sinks in this prompt, fewer than rank={rank}: lower "
                                  "rank or pass basis=[d, r] (e.g. sw.tags.tag_subspace fitted on a corpus)")
        basis = tg.tag_subspace(G, int(rank))
    try:
        U, r = orthonormal_basis(basis, info.d_model)
    except SinkwidgetsError:
        raise
    except Exception as exc:
        raise ExperimentError(f"basis: {exc}") from exc
    R, _ = orthonormal_basis(tg.random_subspace(info.d_model, r, np.random.default_rng(seed)), info.d_model)
    sink_list = [int(s) for s in sinks]
    ids = [int(i) for i in trace.token_ids]
    T = len(ids)
    clean_row, add_clean = _with_clean(model, info, trace, cache, ids)
    w = torch.zeros(1 + len(clean_row), T)
    w[0, caught] = 1.0
    one = torch.zeros(1, T)
    one[0, caught] = 1.0
    after, nll, _ = _wrap("project_out + trace under the projection", info.name, _one_pass, model, info, trace,
                          [ids, *clean_row], [ProjectOut(ly, U, w)], 0, [ProjectOut(ly, U, one)])
    if add_clean:
        cache["clean"] = nll[1]
    _check_same_tokens(info.name, trace, after)
    clean = cache["clean"]

    def result(row):
        return InterventionResult("project_out", ["clean", "projected"], {"clean": [clean], "projected": [row]}, {},
                                  _base_meta(info, trace, layer=ly, rank=r, n_projected=[len(caught)],
                                             sink_positions=sink_list))

    def control():
        (row,) = _wrap("control: project_out", info.name, _loss_pass, model, info, trace, [ids],
                       [ProjectOut(ly, R, one, name="project_out_control")])
        return None, result(row)

    return Experiment("project_tag", {"head": [ly, h], "rank": r, "positions": caught, "sinks": sink_list,
                                      "tau": tau, "eps": eps}, result(nll[0]), after, None, "projected", "projected",
                      f"a random {r}-dim subspace at the same {len(caught)} tokens", control_status="computing",
                      _control_step=control)


def _trace_map(model, trace, ly, h):
    from ..tracing import trace as sw_trace

    fresh = sw_trace(model, trace.meta["text"], add_bos=trace.meta.get("add_bos"), keep_maps=[(ly, h)], progress=False)
    return fresh.get_map(ly, h)


_RUNNERS = {"mask": _mask, "massive": _massive, "add_sink": _add_sink, "project_tag": _project_tag}
_PARAMS = {"mask": ("token", "layers", "seed", "eps"), "massive": ("mode",), "add_sink": ("prefix", "seed", "eps"),
           "project_tag": ("head", "rank", "basis", "tau", "eps", "seed")}


def _check_request(model: Any, trace: SinkTrace, kind: str, params: dict[str, Any]) -> Any:
    if kind not in _RUNNERS:
        raise ExperimentError(f"kind={kind!r}: use one of {KINDS}")
    unknown = sorted(set(params) - set(_PARAMS[kind]))
    if unknown:
        raise ExperimentError(f"experiment {kind!r} takes {_PARAMS[kind]}, not {unknown}")
    if model is None:
        raise ExperimentError("no model: give one to the explorer, SinkExplorer(trace, model=sw.load_model(...))")
    return _info(model, trace)


def start_experiment(model: Any, trace: SinkTrace, kind: str, *, cancelled=None, **params: Any) -> Experiment:
    """Phase 1 of experiment ``kind`` (one of :data:`KINDS`) on ``trace``'s prompt with ``model``: the edit's pass
    (see the module docstring) → an :class:`Experiment` with ``result``, ``trace`` and ``dnll`` final and
    ``control`` None (``control_status == "computing"``); :meth:`Experiment.finish_control` runs phase 2.

    ``cancelled``: optional ``() -> bool``, checked before each step (a once-per-prompt preparation such as
    ``find_massive``, then the edit's pass) and after the last: when it returns True, :class:`ExperimentCancelled`
    is raised and nothing is returned. Raises :class:`ExperimentError` as :func:`run_experiment` does.
    """
    info = _check_request(model, trace, kind, params)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    with _steps(cancelled, timings):
        exp = _RUNNERS[kind](model, info, trace, trace.meta["text"], trace.meta.get("add_bos"), **params)
        _check_cancelled()
    exp.meta["seconds"] = timings  # wall time of each step (forward passes), for benchmarks; phase 2 adds its own
    exp.meta["phase_seconds"] = {"edit": time.perf_counter() - t0}
    return exp


def run_experiment(model: Any, trace: SinkTrace, kind: str, *, cancelled=None, **params: Any) -> Experiment:
    """Run experiment ``kind`` (one of :data:`KINDS`) on ``trace``'s prompt with ``model``, both phases (the edit,
    then its control; see the module docstring) → a complete :class:`Experiment` (``control_status == "done"``).

    ``cancelled``: optional ``() -> bool``, checked before each step (a once-per-prompt preparation such as
    ``find_massive``, the edit's pass, the control's pass) and after the last: when it returns True,
    :class:`ExperimentCancelled` is raised and nothing is returned.

    Raises :class:`ExperimentError` (a :class:`~sinkwidgets.errors.SinkwidgetsError`) for an encoder, a trace
    without its text, another model, an unknown kind or parameter, or an edit the model's family does not support.
    """
    exp = start_experiment(model, trace, kind, cancelled=cancelled, **params)
    return exp.finish_control(cancelled)
