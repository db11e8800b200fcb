r"""The TagExplorer's "release" experiment: project a head's tag subspace out at chosen tokens of a TagData.

:func:`run_release` (called by :meth:`sinkwidgets.TagExplorer.experiment`) takes the head ``(l, h)`` and rank ``r``
shown by a TagExplorer, its tag subspace ``U [d, r]`` (the same subspace the scatter projects on:
``TagView.subspace``, fitted on the TagData's fit prompts' sinks, as :func:`sinkwidgets.tags.tag_ev` fits it), and
the tokens to edit:

- ``positions``: packed token indices into the TagData (like ``TagExplorer.selected``); default the selection;
- with no selection: the tokens the head catches at ``tau`` (``A[t, s] > tau`` for one of the prompt's sinks,
  :func:`sinkwidgets.tags.caught_set`) in the focused token's prompt, or in the first prompt where it catches any.

The experiment runs on the prompt(s) of those tokens (``sinkwidgets.tags.residual.prompt_texts``: the texts given to
the explorer, or decoded from the TagData's token ids). The head's own sinks (``α > eps``,
:func:`sinkwidgets.tags.sink_positions`) and token 0 are never edited (projecting at the sink itself breaks the model;
see :mod:`sinkwidgets.tags.release`); ``params["dropped"]`` counts the selected tokens left out for that reason.
At every edited token ``t``, on the residual stream after layer ``l``,

.. math:: h_t \leftarrow h_t - U U^\top h_t

exactly as :func:`sinkwidgets.interventions.project_out`, which computes every number here:

- ONE ``project_out`` call with a dict of bases (one forward pass per prompt: the clean row and one edited row per
  subspace): the tag ``U``, ``n_random`` random (Haar) subspaces of rank ``r`` (``random0`` …, seeded by ``seed``;
  :func:`sinkwidgets.tags.random_subspace`) and the top-``r`` principal components of the residual after layer
  ``l`` at the edited tokens (``pcs``; centred; when there are no more edited tokens than ``r``, all tokens
  ``t >= 1`` of the prompts are used), as in :func:`sinkwidgets.tags.release`;
- ``result`` is its clean and tag rows (:func:`conditions_of`), ``conditions = ["clean", "projected"]``: the numbers
  of ``sw.project_out(model, texts, l, U, positions=params["positions"], sink_positions=params["sinks"])`` (the
  batch rows are independent; tested equal to 1e-6); ``control`` its clean and control rows.

ΔNLL (nats per predicted token, token-weighted over the prompts, positive = harder):
``ΔNLL = mean_t NLL_edit(x_{t+1}|x_{≤t}) − mean_t NLL_clean`` (``InterventionResult.delta``).

Later heads' change of attention on the sink (``AttentionChange`` unit of ``project_out``, layers ``l+1..L-1``):
``sink_shift[s, h'] = mean_texts (mass_edit − mass_clean)``, ``[S, H]``, where ``mass`` is the mean over queries
``t >= 1`` of the attention of head ``h'`` of later layer ``layers[s]`` on the prompt's sink keys (the head's sinks and
token 0); ``sink_delta [S, H]`` is the mean ``|Δ|`` of that attention (``sink_delta`` of ``project_out``).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import SinkwidgetsError
from ..tags import analysis as A
from . import _serialization as ser
from .experiment import Experiment, ExperimentCancelled, ExperimentError

#: The experiments a TagExplorer offers.
TAG_KINDS = ("release",)
#: Random subspaces of the control (one edited row each in the control's forward pass).
N_RANDOM = 3
#: Experiments a TagExplorer keeps (oldest dropped first).
TAG_HISTORY = 8


@dataclass
class TagExperiment:
    """One release experiment of a TagExplorer (see the module docstring for every definition).

    Attributes
    ----------
    kind : ``"release"``.
    params : ``head [l, h]``, ``rank``, ``prompts`` (TagData prompt indices), ``positions`` (per prompt, the edited
        token positions), ``sinks`` (per prompt, the head's sinks and token 0: never edited, and the keys of the
        attention statistics), ``source`` (``"selection"``, ``"positions"`` or ``"caught"``), ``dropped``, ``tau``,
        ``eps``, ``n_random``, ``seed``.
    result : :class:`~sinkwidgets.interventions.InterventionResult` of ``project_out`` with the tag subspace
        (``conditions = ["clean", "projected"]``; ``nll[c][i]`` is ``[T_i − 1]``).
    control : :class:`~sinkwidgets.interventions.InterventionResult` of ``project_out`` with the control subspaces
        (``conditions = ["clean", "random0", …, "pcs"]``).
    basis : the tag subspace ``U [d, r]`` projected out; ``control_bases``: ``{name: [d, r]}``.
    texts : the prompts' texts.
    """

    kind: str
    params: dict[str, Any]
    result: Any
    control: Any
    basis: np.ndarray
    control_bases: dict[str, np.ndarray]
    texts: list[str]
    meta: dict[str, Any] = field(default_factory=dict)

    condition = "projected"

    @property
    def random_conditions(self) -> list[str]:
        return [c for c in self.control.conditions if c.startswith("random")]

    @property
    def mean_dnll(self) -> float:
        """Mean ΔNLL of the tag projection (nats per token; ``result.delta["projected"]``)."""
        return float(self.result.delta[self.condition])

    @property
    def dnll(self) -> list[np.ndarray]:
        """ΔNLL per predicted token of each prompt, ``[T_i − 1]`` each (entry ``t``: the prediction of token ``t+1``)."""
        return [np.asarray(e - c, np.float64) for c, e in zip(self.result.nll["clean"], self.result.nll[self.condition])]

    @property
    def random_dnll(self) -> list[float]:
        """Mean ΔNLL of each random subspace (nats per token)."""
        return [float(self.control.delta[c]) for c in self.random_conditions]

    @property
    def control_dnll(self) -> float:
        """Mean ΔNLL of the random subspaces, averaged over the draws (the control shown beside the tag)."""
        return float(np.mean(self.random_dnll))

    @property
    def pcs_dnll(self) -> float:
        """Mean ΔNLL of the top-``rank`` PCs (NaN when not run)."""
        return float(self.control.delta["pcs"]) if "pcs" in self.control.conditions else float("nan")

    @property
    def later_layers(self) -> list[int]:
        """The later layers ``l+1..L-1`` whose attention change is measured, ``[S]``."""
        a = self.result.attention
        return [int(x) for x in a["layers"]] if a else []

    def _shift(self, res, cond: str) -> np.ndarray:
        a = res.attention
        if not a:
            return np.zeros((0, 0))
        k = res.conditions.index(cond)
        return np.asarray(a["sink_mass"][:, :, k] - a["sink_mass"][:, :, 0], np.float64).mean(axis=0)

    @property
    def sink_shift(self) -> np.ndarray:
        """Signed change of each later head's attention mass on the sinks, ``[S, H]`` (mean over the prompts)."""
        return self._shift(self.result, self.condition)

    @property
    def sink_delta(self) -> np.ndarray:
        """Mean ``|Δ|`` of each later head's attention on the sinks, ``[S, H]`` (``project_out``'s ``sink_delta``)."""
        a = self.result.attention
        return np.asarray(a["sink_delta"][:, :, 0], np.float64).mean(axis=0) if a else np.zeros((0, 0))

    @property
    def control_sink_shift(self) -> dict[str, np.ndarray]:
        """``{condition: [S, H]}``: the same signed change under each control subspace."""
        return {c: self._shift(self.control, c) for c in self.control.conditions[1:]}

    @property
    def n_edited(self) -> int:
        return int(sum(len(p) for p in self.params["positions"]))

    @property
    def label(self) -> str:
        ly, h = self.params["head"]
        src = {"selection": "selected", "caught": "caught", "positions": "chosen"}[self.params["source"]]
        return (f"release L{ly}H{h} (rank {self.params['rank']}): tag projected out at {self.n_edited} {src} tokens "
                f"of {len(self.params['prompts'])} prompt(s)")

    def summary(self) -> dict[str, Any]:
        """Plain floats: mean ΔNLL of the tag, of each control, and the mean later-head sink shifts."""
        out = {"kind": self.kind, "label": self.label, "mean_dnll": self.mean_dnll, "random_dnll": self.random_dnll,
               "control_dnll": self.control_dnll, "pcs_dnll": self.pcs_dnll}
        if self.later_layers:
            out["sink_shift"] = float(self.sink_shift.mean())
            out["control_sink_shift"] = {c: float(v.mean()) for c, v in self.control_sink_shift.items()}
        return out

    def state(self, index: int = 0) -> dict[str, Any]:
        """What the panel draws: the label and ΔNLLs, the later heads' ``sink_shift [S, H]`` (float32) and the mean
        shift of each control ``[S, H]``; the edited tokens are sent as strings (shown as text)."""
        from ._tag_state import shown

        rnd = self.random_conditions
        cs = self.control_sink_shift
        S = len(self.later_layers)
        st = {"status": "ok", "index": int(index), "kind": self.kind, "label": self.label,
              "head": list(self.params["head"]), "rank": int(self.params["rank"]),
              "mean_dnll": self.mean_dnll, "random_dnll": self.random_dnll, "control_dnll": self.control_dnll,
              "pcs_dnll": _finite(self.pcs_dnll), "baseline_nll": float(self.result.mean_nll()),
              "prompts": [int(i) for i in self.params["prompts"]], "n_edited": self.n_edited,
              "dropped": int(self.params["dropped"]), "layers": self.later_layers,
              "edited_tokens": [shown(t) for t in self.meta.get("edited_tokens", [])][:24],
              "seconds": _finite(self.meta.get("seconds"))}
        if S:
            rmean = np.mean([cs[c] for c in rnd], axis=0)
            st.update(H=int(self.sink_shift.shape[1]), shift=ser.packed(self.sink_shift, "float32"),
                      shift_random=ser.packed(rmean, "float32"), mean_shift=float(self.sink_shift.mean()),
                      mean_shift_random=float(rmean.mean()),
                      mean_shift_pcs=_finite(float(cs["pcs"].mean())) if "pcs" in cs else None)
        return st

    def __repr__(self) -> str:
        r = ", ".join(f"{v:+.4f}" for v in self.random_dnll)
        return (f"TagExperiment({self.label}: mean ΔNLL {self.mean_dnll:+.4f} nats/token; random [{r}]; "
                f"top PCs {self.pcs_dnll:+.4f})")


def _finite(v: Any) -> Any:
    return float(v) if v is not None and np.isfinite(v) else None


def single_text(res: Any, i: int) -> Any:
    """An :class:`~sinkwidgets.interventions.InterventionResult` of text ``i`` of ``res`` only (its NLL arrays and
    attention ``[1, S, C, H]``); used to hand one prompt of a release to a linked SinkExplorer."""
    from dataclasses import replace

    att = {k: (v if k == "layers" else v[i:i + 1]) for k, v in res.attention.items()} if res.attention else {}
    return replace(res, nll={c: [v[i]] for c, v in res.nll.items()}, attention=att,
                   meta={**res.meta, "n_texts": 1})


def conditions_of(res: Any, names: list[str], rename: dict[str, str] | None = None, rank: Any = None) -> Any:
    """The clean row and the edited conditions ``names`` of a multi-subspace ``project_out`` result, as an
    :class:`~sinkwidgets.interventions.InterventionResult` of their own (NLL lists, attention columns: ``sink_delta``
    / ``tv [N, S, K, H]`` and ``sink_mass [N, S, 1 + K, H]``), conditions renamed by ``rename``. The rows of one
    batch are independent, so this equals a ``project_out`` call with those subspaces alone (tested to 1e-6)."""
    from ..interventions import InterventionResult

    rename = rename or {}
    ks = [res.conditions.index(n) for n in names]
    att = {}
    if res.attention:
        a = res.attention
        att = {"layers": a["layers"], "sink_delta": a["sink_delta"][:, :, [k - 1 for k in ks]],
               "tv": a["tv"][:, :, [k - 1 for k in ks]], "sink_mass": a["sink_mass"][:, :, [0, *ks]]}
    meta = dict(res.meta)
    if rank is not None:
        meta["rank"] = rank
        meta.pop("head", None)  # one subspace, the whole residual stream: as project_out with one basis
    else:
        meta["rank"] = {n: meta["rank"][n] for n in names}
        meta["head"] = {n: meta["head"][n] for n in names}
    nll = {"clean": res.nll["clean"], **{rename.get(n, n): res.nll[n] for n in names}}
    return InterventionResult(res.kind, ["clean", *(rename.get(n, n) for n in names)], nll, att, meta)


# ----------------------------------------------------------------------------- running it
def _check_model(model: Any, data: Any) -> Any:
    if model is None:
        raise ExperimentError("no model: the release experiment runs the model on the TagData's prompts; create the "
                              "explorer with one, TagExplorer(data, model=sinkwidgets.load_model('smollm2-135m'))")
    info = getattr(model, "sinkwidgets", None)
    if info is None:
        raise ExperimentError(f"experiments need a model from sinkwidgets.load_model(...), got {type(model).__name__}")
    if not info.causal:
        raise ExperimentError(
            f"model {info.name!r} is an encoder (not causal): the release experiment measures next-token NLL and needs "
            "a causal language model such as 'smollm2-135m'")
    from ..errors import ChunkedUnsupportedError
    from ..tracing.chunked import layer_plan

    try:
        layer_plan(model, info)
    except ChunkedUnsupportedError as exc:
        raise ExperimentError(
            f"model {info.name!r} (family {info.family!r}) is not supported by the release experiment: "
            "sw.project_out runs on the chunked engine, which reads queries and keys where the attention calls "
            f"apply_rotary_pos_emb, and this family's attention does not ({exc}); use a Llama-style model such as "
            "'smollm2-135m'") from exc
    return info


def _wrap(what: str, name: str, cancelled, timings: dict, fn, *args, **kwargs):
    """Check for a cancel, run ``fn``; a failure that is not one of the package's errors becomes ExperimentError."""
    if cancelled is not None and cancelled():
        raise ExperimentCancelled("the experiment was cancelled: nothing was recorded, the view is unchanged")
    t0 = time.perf_counter()
    try:
        return fn(*args, **kwargs)
    except SinkwidgetsError:
        raise
    except Exception as exc:  # an edit the family does not support, a tokenizer mismatch: one clear message
        raise ExperimentError(f"{what} failed on {name!r}: {type(exc).__name__}: {exc}") from exc
    finally:
        timings[what] = timings.get(what, 0.0) + time.perf_counter() - t0


def _sinks_of(data: Any, head: tuple[int, int], i: int, eps: float) -> list[int]:
    """The head's sinks in prompt ``i`` (``α > eps``, :func:`sinkwidgets.tags.sink_positions`) and token 0."""
    return sorted({0} | {int(s) for s in A.sink_positions(data.alpha(head)[data.span(i)], eps)})


def caught_positions(view: Any, head: tuple[int, int], tau: float, focus: int) -> np.ndarray:
    """Packed indices of the tokens ``head`` catches at ``tau`` in one prompt (the focused token's, else the first
    with any)."""
    d = view.data
    res = view.catch(head, tau)
    if res is None:
        raise ExperimentError(
            f"no selection, and no attention maps of L{head[0]}H{head[1]} in this TagData to find the tokens it "
            f"catches: select tokens in the scatter (box or lasso), pass positions=[...], or collect with "
            f"maps=[({head[0]}, {head[1]})]")
    caught = res["pos"] >= 0
    order = list(range(d.n_prompts))
    if 0 <= focus < d.n_tokens:
        fi = int(d.prompt_of[focus])
        order = [fi] + [i for i in order if i != fi]
    for i in order:
        sl = d.span(i)
        idx = np.nonzero(caught[sl])[0]
        if len(idx):
            return idx + sl.start
    raise ExperimentError(f"L{head[0]}H{head[1]} catches no token at tau={tau:g} in any prompt, and nothing is "
                          "selected: select tokens in the scatter, or lower tau")


def plan_positions(view: Any, head: tuple[int, int], packed: Any, *, source: str, eps: float
                   ) -> tuple[list[int], list[list[int]], list[list[int]], int, list[str]]:
    """Packed token indices → ``(prompts, positions per prompt, sinks per prompt, dropped, edited token strings)``.

    The head's sinks and token 0 are removed from the edited positions (``dropped`` counts them)."""
    d = view.data
    idx = np.asarray(packed, dtype=np.int64).reshape(-1)
    if idx.size == 0:
        raise ExperimentError("positions=[]: give packed token indices (as in TagExplorer.selected), or select tokens")
    bad = idx[(idx < 0) | (idx >= d.n_tokens)]
    if bad.size:
        raise ExperimentError(f"positions holds token index {int(bad[0])}; indices run 0..{d.n_tokens - 1} (packed "
                              "over the TagData's prompts, as TagExplorer.selected)")
    idx = np.unique(idx)
    prompts, positions, sinks, dropped, toks = [], [], [], 0, []
    for i in np.unique(d.prompt_of[idx]).tolist():
        pos = sorted(int(p) for p in d.positions[idx[d.prompt_of[idx] == i]])
        sk = _sinks_of(d, head, int(i), eps)
        keep = [p for p in pos if p not in sk]
        dropped += len(pos) - len(keep)
        if keep:
            prompts.append(int(i))
            positions.append(keep)
            sinks.append(sk)
            toks += [d.tokens[int(i)][p] for p in keep]
    if not prompts:
        raise ExperimentError(
            f"every chosen token ({len(idx)}) is a sink of L{head[0]}H{head[1]} (α > {eps:g}) or token 0; projecting "
            f"the tag out at the sink itself breaks the model ({source}): select tokens after the sinks")
    return prompts, positions, sinks, dropped, toks


def run_release(model: Any, view: Any, head: tuple[int, int], rank: int, packed: Any, *, source: str,
                texts: Any = None, basis: Any = None, tau: float = A.TAU, n_random: int = N_RANDOM, pcs: bool = True,
                seed: int = 0, cancelled=None) -> TagExperiment:
    """Run the release experiment (module docstring) and return a :class:`TagExperiment`.

    ``view``: the explorer's ``TagView``; ``packed``: packed token indices to edit; ``basis``: ``[d, r]`` instead of
    the head's tag subspace. ``cancelled``: optional ``() -> bool`` checked before each forward pass.
    Raises :class:`~sinkwidgets.widgets.experiment.ExperimentError` (a ``SinkwidgetsError``) without a model, for an
    encoder, a head in the last layer, positions that are all sinks, or any failure of the edit on this model."""
    from ..interventions import project_out
    from ..tags.collect import residual_rows
    from ..tags.residual import prompt_texts
    from ..tracing import tokenize

    d = view.data
    info = _check_model(model, d)
    ly, h = head
    if ly >= info.n_layers - 1:
        raise ExperimentError(f"head=({ly}, {h}) is in the last layer: no later layer reads the tag; pick an earlier "
                              "head")
    if not isinstance(n_random, (int, np.integer)) or n_random < 1:
        raise ExperimentError(f"n_random={n_random!r}: give an int >= 1 (the random control is the point)")
    eps = float(view.eps)
    prompts, positions, sinks, dropped, toks = plan_positions(view, head, packed, source=source, eps=eps)
    timings: dict[str, float] = {}
    name = info.name
    if basis is None:
        U = _wrap("fitting the tag subspace", name, cancelled, timings, view.subspace, head, int(rank))
    else:
        U = np.asarray(basis, dtype=np.float64)
        U = U[:, None] if U.ndim == 1 else U
        if U.ndim != 2 or U.shape[0] != info.d_model:
            raise ExperimentError(f"basis has shape {list(U.shape)}: give [d, r] with d = {info.d_model}")
    U = np.asarray(U, dtype=np.float64)
    r = int(U.shape[1])
    add_bos = d.meta.get("add_bos")
    tx = _wrap("rebuilding the prompts' texts", name, cancelled, timings, prompt_texts, model, d, prompts, texts)
    n_ids = [len(tokenize(model, t, add_bos)[0]) for t in tx]
    max_tokens = None  # the texts tokenize to the TagData's prompts, or collect truncated them at its max_tokens
    if any(n != int(d.lengths[i]) for n, i in zip(n_ids, prompts)):
        max_tokens = d.meta.get("max_tokens") or int(max(d.lengths[i] for i in prompts))
        bad = [(i, n) for n, i in zip(n_ids, prompts) if min(n, max_tokens) != int(d.lengths[i])]
        if bad:
            i, n = bad[0]
            raise ExperimentError(f"prompt {i} tokenizes to {n} tokens but the TagData holds {int(d.lengths[i])}: "
                                  "pass the texts given to sinkwidgets.tags.collect (TagExplorer(..., texts=[...]))")
    rng = np.random.default_rng(seed)
    bases = {f"random{k}": A.random_subspace(info.d_model, r, rng) for k in range(int(n_random))}
    if pcs:
        rows = _wrap("reading the residual for the PCs", name, cancelled, timings, residual_rows, model, tx, ly,
                     add_bos=add_bos, max_tokens=max_tokens)
        X = np.concatenate([np.asarray(R)[p] for R, p in zip(rows, positions)]).astype(np.float64)
        if len(X) <= r:
            X = np.concatenate([np.asarray(R)[[t for t in range(1, len(R)) if t not in s]]
                                for R, s in zip(rows, sinks)]).astype(np.float64)
        bases["pcs"] = np.linalg.svd(X - X.mean(0), full_matrices=False)[2][:r].T
    both = _wrap("project_out", name, cancelled, timings, project_out, model, tx, ly, {"tag": U, **bases},
                 positions=positions, sink_positions=sinks, attention_layers="after", add_bos=add_bos,
                 max_tokens=max_tokens, progress=False)
    for k, i in enumerate(prompts):
        if len(both.nll["clean"][k]) != int(d.lengths[i]) - 1:
            raise ExperimentError(f"prompt {i} ran with {len(both.nll['clean'][k]) + 1} tokens, the TagData holds "
                                  f"{int(d.lengths[i])}: pass the texts given to sinkwidgets.tags.collect")
    res = conditions_of(both, ["tag"], rename={"tag": "projected"}, rank=r)
    ctl = conditions_of(both, list(bases))
    if cancelled is not None and cancelled():
        raise ExperimentCancelled("the experiment was cancelled: nothing was recorded, the view is unchanged")
    params = {"head": [int(ly), int(h)], "rank": r, "prompts": prompts, "positions": positions, "sinks": sinks,
              "source": source, "dropped": int(dropped), "tau": float(tau), "eps": eps, "n_random": int(n_random),
              "seed": int(seed), "max_tokens": max_tokens}
    exp = TagExperiment("release", params, res, ctl, U, bases, list(tx),
                        meta={"seconds": float(sum(timings.values())), "timings": timings, "edited_tokens": toks})
    return exp


class ReleaseJob:
    """The panel's running experiment: its message id and a cancel event (one at a time per explorer)."""

    def __init__(self, msg_id: Any) -> None:
        self.id = msg_id
        self.cancel = threading.Event()
        self.thread: threading.Thread | None = None


# ----------------------------------------------------------------------------- a linked SinkExplorer
def linked_experiment(model: Any, exp: TagExperiment, before: Any, k: int = 0) -> Any:
    """Prompt ``k`` of ``exp`` as a SinkExplorer :class:`~sinkwidgets.widgets.experiment.Experiment` (kind
    ``"project_tag"``): its ``result`` / ``control`` are that prompt's rows of ``exp.result`` / ``exp.control``
    (control: ``random0``), and its ``trace`` is ``sw.trace`` of the prompt under the same projection
    (:class:`~sinkwidgets.tracing.edits.ProjectOut` at the edited positions), keeping the maps ``before`` (the
    SinkExplorer's trace of that prompt, e.g. :func:`~sinkwidgets.widgets.prompt_trace`) keeps."""
    import torch

    from ..interventions.edits import orthonormal_basis
    from ..tracing import trace as sw_trace
    from ..tracing.edits import ProjectOut
    info = _check_model(model, None)
    ly = int(exp.params["head"][0])
    T = len(before.tokens)
    pos = exp.params["positions"][k]
    if T != len(exp.result.nll["clean"][k]) + 1:
        raise ExperimentError(f"the SinkExplorer shows {T} tokens, the experiment's prompt has "
                              f"{len(exp.result.nll['clean'][k]) + 1}: show prompt {exp.params['prompts'][k]}")
    U, _ = orthonormal_basis(exp.basis, info.d_model)
    w = torch.zeros(1, T)
    w[0, pos] = 1.0
    keep = None
    if before.map_index is not None and len(before.map_index):
        keep = [(int(a), int(b)) for a, b in np.asarray(before.map_index)]
    after = sw_trace(model, exp.texts[k], add_bos=before.meta.get("add_bos"), keep_maps=keep,
                     max_tokens=exp.params.get("max_tokens"), edits=[ProjectOut(ly, U, w)], progress=False)
    if list(after.tokens) != list(before.tokens):
        raise ExperimentError(f"re-tracing prompt {exp.params['prompts'][k]} gave {after.n_tokens} tokens, the "
                              f"SinkExplorer shows {T}: is this the model the TagData was collected with?")
    p = exp.params
    params = {"head": list(p["head"]), "rank": int(p["rank"]), "positions": list(pos), "sinks": list(p["sinks"][k]),
              "tau": p["tau"], "eps": p["eps"], "source": p["source"]}
    return LinkedRelease("project_tag", params, single_text(exp.result, k), after, single_text(exp.control, k),
                          "projected", "random0", f"a random {p['rank']}-dim subspace at the same {len(pos)} tokens",
                          meta={"from": "TagExplorer"})


class LinkedRelease(Experiment):
    """A TagExplorer release shown in a SinkExplorer (kind ``"project_tag"``; see :func:`linked_experiment`)."""

    @property
    def label(self) -> str:
        p = self.params
        src = {"selection": "selected", "caught": "caught", "positions": "chosen"}.get(p.get("source"), "chosen")
        return f"release L{p['head'][0]}H{p['head'][1]} tag (rank {p['rank']}) at {len(p['positions'])} {src} tokens"
