"""Follow one head through catch, tag and release, each step beside the control that could refute it.

Zhang, Khan & Papyan (arXiv 2502.00919) describe one mechanism in three steps: a sink head **catches** runs of
tokens on its sinks, **tags** them with its sink's value direction, and later layers **release** (retrieve) the
tagged tokens. :func:`mechanism` measures the three steps on *one* head and *one* corpus with the existing
functions of :mod:`sinkwidgets.tags` (:func:`~sinkwidgets.tags.collect`, :func:`~sinkwidgets.tags.catch`,
:func:`~sinkwidgets.tags.tag_ev`, :func:`~sinkwidgets.tags.release`) and decides each step by a written rule:

- **catch** shown when the head's *sink catch rate* at ``tau`` is ``>= 0.5`` and at least ``0.3`` above the same
  rate with the head's attention spread uniformly. Sink catch rate: the share of tokens after the head's first sink
  that lie in some caught set ``C_s = {t > s : A[t, s] > tau}`` of its sinks ``s`` (``alpha_s > eps``, token 0
  included when it is one), pooled over prompts; uniform baseline: the same with ``A[t, j] = 1 / (t + 1)``.
  The later-sentence (boundary) catch rate of :func:`~sinkwidgets.tags.catch` and its uniform value are shown too.
- **tag** shown when the held-out EV of the rank-``r`` tag subspace beats the non-sink value control by at least
  ``0.15`` (the control explains ``value_control``; when it is close to the EV, the "tag" is the head's ordinary
  value direction) **and** is at least ``10×`` the random floor (``≈ r / d``). The PC bound is shown beside.
- **release** shown by :func:`~sinkwidgets.tags.release`'s rule: the tag's ΔNLL beats every norm-matched random
  draw **and** later heads' attention on the sink moves beyond random (``|Δ - mean| >= max(0.05, 3 sd)`` of the
  norm-matched draws, and ``|Δ| > |mean|``). ΔNLL per unit of norm (beside same-rank random subspaces and the top
  PCs) and the head's own write removed alone are shown beside.

Several heads of one model: :func:`mechanism_table` (one collection shared by all heads; a
:class:`MechanismTable` prints one row per head).

Measured on SmolLM2-135M and Gemma-3-270M: no single head shows all three steps (``docs/tags.md``).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .._args import ArgumentTypeError, show
from .._args import head as check_head
from .._args import heads as check_heads
from .._args import integer as check_integer
from .._args import number as check_number
from ..errors import SinkwidgetsKeyError, SinkwidgetsValueError
from .analysis import (
    EPS,
    MIN_LATER,
    TAU,
    CatchResult,
    TagEV,
    _data_arg,
    _dims,
    _plain_head,
    catch,
    caught_set,
    later_sentence_catch,
    sink_positions,
    tag_ev,
)
from .data import TagData
from .release import RANK_DEFAULT, ReleaseResult, model_head, release, text_list

#: Catch rule: sink catch rate at least this ...
CATCH_MIN = 0.5
#: ... and at least this much above the uniform-attention baseline.
CATCH_MARGIN = 0.3
#: Tag rule: held-out EV at least this much above the non-sink value control ...
TAG_MARGIN = 0.15
#: ... and at least this many times the random floor.
TAG_FLOOR_FACTOR = 10.0
STEPS = ("catch", "tag", "release")


def _uniform_map(T: int) -> np.ndarray:
    """Causal attention spread uniformly: ``A[t, j] = 1 / (t + 1)`` for ``j <= t``, ``[T, T]``."""
    return np.tril(np.ones((T, T))) / np.arange(1, T + 1)[:, None]


def sink_catch_rate(data: TagData, head: Any, tau: float = TAU, *, eps: float = EPS,
                    min_later: int = MIN_LATER) -> tuple[float, float, int]:
    """``(rate, uniform_rate, n_tokens)``: the share of tokens after the head's first sink that lie in the caught
    set of some sink (:func:`~sinkwidgets.tags.analysis.caught_set` at ``tau``), pooled over prompts, and the same
    with the head's attention spread uniformly over the visible keys (:func:`_uniform_map`). Needs the head's maps.
    """
    head = check_head("head", _plain_head(head), *_dims(data))  # needs the head's maps, not its values
    tau = check_number("tau", tau, example=TAU)
    caught = caught_u = total = 0
    for i in range(data.n_prompts):
        A = data.attention_map(head, i)
        T = A.shape[0]
        S = sink_positions(data.alpha(head)[data.span(i)], eps, min_later)
        if not len(S):
            continue
        Au = _uniform_map(T)
        total += T - 1 - int(S.min())
        caught += len(set().union(*(caught_set(A, int(s), tau).tolist() for s in S)))
        caught_u += len(set().union(*(caught_set(Au, int(s), tau).tolist() for s in S)))
    nan = float("nan")
    return (caught / total if total else nan, caught_u / total if total else nan, total)


def boundary_catch_uniform(data: TagData, tau: float = TAU) -> float:
    """The later-sentence catch rate of :func:`~sinkwidgets.tags.catch` with attention spread uniformly."""
    c = t = 0
    for i in range(data.n_prompts):
        a, b = later_sentence_catch(_uniform_map(data.lengths[i]), data.tokens[i], tau)
        c, t = c + a, t + b
    return c / t if t else float("nan")


@dataclass
class MechanismReport:
    """One head through catch, tag and release (see the module docstring for every rule).

    ``shown``: ``{"catch": bool, "tag": bool, "release": bool}`` (``None`` for a step not run, see ``steps``);
    ``reasons``: one line per step saying why; ``catch_rate``, ``catch_rate_uniform``, ``boundary_rate``,
    ``boundary_rate_uniform``, ``n_sinks``, ``sink_at_token0``; ``tag`` (:class:`TagEV`), ``release``
    (:class:`ReleaseResult`), ``catch_result`` (:class:`CatchResult`); ``seconds`` per step (wall time).
    ``rank_tag`` / ``rank_release``: the ranks used; ``rank_note``: why the release's is below the default 2 when
    the head's tag vectors span fewer dimensions (e.g. ``"rank 1 (the tag vectors span 1 dimension; default rank 2
    lowered)"``), else "".
    """

    head: tuple[int, int]
    model: str
    n_texts: int
    tau: float
    rank_tag: int
    rank_release: int
    shown: dict[str, bool | None]
    reasons: dict[str, str]
    catch_rate: float = float("nan")
    catch_rate_uniform: float = float("nan")
    boundary_rate: float = float("nan")
    boundary_rate_uniform: float = float("nan")
    n_sinks: float = float("nan")
    sink_at_token0: float = float("nan")
    catch_result: CatchResult | None = field(default=None, repr=False)
    tag: TagEV | None = field(default=None, repr=False)
    release: ReleaseResult | None = field(default=None, repr=False)
    seconds: dict[str, float] = field(default_factory=dict)
    rank_note: str = ""

    @property
    def name(self) -> str:
        return f"L{self.head[0]}H{self.head[1]}"

    def rows(self) -> list[dict]:
        """The table as dicts: ``step``, ``measure``, ``head`` (the head's value), ``control`` (text) and
        ``controls`` (``{name: value}``, for the chart)."""
        out = []

        def add(step, measure, value, control, controls):
            out.append({"step": step, "measure": measure, "head": float(value), "control": control,
                        "controls": {k: float(v) for k, v in controls.items()}})

        if self.shown.get("catch") is not None:
            add("catch", f"sink catch rate (τ={self.tau})", self.catch_rate,
                f"uniform attention {self.catch_rate_uniform:.3f}", {"uniform": self.catch_rate_uniform})
            add("catch", "later-sentence catch rate", self.boundary_rate,
                f"uniform attention {self.boundary_rate_uniform:.3f}", {"uniform": self.boundary_rate_uniform})
            add("catch", "sinks per prompt", self.n_sinks, f"{self.sink_at_token0:.0%} of them token 0", {})
        t = self.tag
        if t is not None:
            add("tag", f"held-out EV (rank {t.rank})", t.ev,
                f"value control {t.value_control:.3f}; random {t.random_floor:.4f}; PC bound {t.pc_bound:.3f}",
                {"value control": t.value_control, "random floor": t.random_floor, "PC bound": t.pc_bound})
        r = self.release
        if r is not None:
            sd = float(np.std(r.dnll_matched, ddof=1)) if len(r.dnll_matched) > 1 else 0.0
            add("release", f"ΔNLL (rank {r.rank})", r.dnll,
                f"norm-matched random {np.mean(r.dnll_matched):+.3f} ± {sd:.3f}; top PCs {r.dnll_pcs:+.3f}",
                {"norm-matched random": float(np.mean(r.dnll_matched)), "top PCs": r.dnll_pcs})
            add("release", "norm fraction removed", r.norm_fraction,
                f"same-rank random {np.mean(r.norm_fraction_random):.3f}; top PCs {r.norm_fraction_pcs:.3f}",
                {"same-rank random": float(np.mean(r.norm_fraction_random)), "top PCs": r.norm_fraction_pcs})
            add("release", "ΔNLL per unit of norm", r.dnll_per_norm,
                f"same-rank random {np.mean(r.dnll_per_norm_random):.3f}; top PCs {r.dnll_per_norm_pcs:.3f}",
                {"same-rank random": float(np.mean(r.dnll_per_norm_random)), "top PCs": r.dnll_per_norm_pcs})
            ssd = float(np.std(r.sink_shift_matched, ddof=1)) if len(r.sink_shift_matched) > 1 else 0.0
            add("release", f"Δ later heads' sink attention (of {r.sink_mass:.2f})", r.sink_shift,
                f"norm-matched random {np.mean(r.sink_shift_matched):+.3f} ± {ssd:.3f}; "
                f"same-rank {np.mean(r.sink_shift_random):+.3f}",
                {"norm-matched random": float(np.mean(r.sink_shift_matched)),
                 "same-rank random": float(np.mean(r.sink_shift_random))})
            if np.isfinite(r.dnll_own_write):
                add("release", "ΔNLL, own write only", r.dnll_own_write,
                    f"Δ sink attention {r.sink_shift_own_write:+.3f}", {})
        return out

    def __str__(self) -> str:
        word = {True: "SHOWN", False: "not shown", None: "not run"}
        lines = [f"mechanism of {self.name} ({self.model}; {self.n_texts} texts; τ = {self.tau}; tag rank "
                 f"{self.rank_tag}, release rank {self.rank_release}"
                 + (f": {self.rank_note}" if self.rank_note else "") + ")",
                 f"  {'step':<9}{'measure':<42}{'head':>9}   control"]
        last = None
        for row in self.rows():
            step = row["step"] if row["step"] != last else ""
            last = row["step"]
            v = row["head"]
            val = f"{v:+9.3f}" if row["measure"].startswith(("ΔNLL", "Δ")) else f"{v:9.3f}"
            lines.append(f"  {step:<9}{row['measure']:<42}{val}   {row['control']}")
        lines.append("  verdicts:")
        for s in STEPS:
            lines.append(f"    {s:<8} {word[self.shown.get(s)]:<10} {self.reasons.get(s, '')}")
        secs = ", ".join(f"{k} {v:.0f} s" for k, v in self.seconds.items())
        lines.append(f"  wall time: {secs}")
        return "\n".join(lines)

    def _repr_pretty_(self, p, cycle):
        p.text(str(self))

    def as_dict(self) -> dict:
        return {"head": list(self.head), "model": self.model, "n_texts": self.n_texts, "tau": self.tau,
                "rank_tag": self.rank_tag, "rank_release": self.rank_release, "rank_note": self.rank_note,
                "shown": dict(self.shown),
                "reasons": dict(self.reasons), "catch_rate": self.catch_rate,
                "catch_rate_uniform": self.catch_rate_uniform, "boundary_rate": self.boundary_rate,
                "boundary_rate_uniform": self.boundary_rate_uniform, "n_sinks": self.n_sinks,
                "sink_at_token0": self.sink_at_token0, "tag": self.tag.as_dict() if self.tag else None,
                "release": self.release.as_dict() if self.release else None, "seconds": dict(self.seconds)}

    def chart(self):
        """Altair chart: one panel per measure (rows), the head's value beside its controls (bars), panels
        grouped by step; each panel has its own scale. Title: the verdicts."""
        import altair as alt

        values = []
        for row in self.rows():
            label = f"{row['step']}: {row['measure']}"
            values.append({"panel": label, "series": self.name, "value": row["head"], "is_head": True})
            for k, v in row["controls"].items():
                if np.isfinite(v):
                    values.append({"panel": label, "series": k, "value": v, "is_head": False})
        verdict = ", ".join(f"{s} {'yes' if self.shown.get(s) else 'no' if self.shown.get(s) is False else '-'}"
                            for s in STEPS)
        base = alt.Chart(alt.Data(values=values)).mark_bar().encode(
            y=alt.Y("series:N", title=None, sort=None), x=alt.X("value:Q", title=None),
            color=alt.Color("is_head:N", legend=None, scale=alt.Scale(domain=[True, False],
                                                                      range=["#d62728", "#9e9e9e"])),
            tooltip=["panel:N", "series:N", alt.Tooltip("value:Q", format=".4f")],
        ).properties(width=320, height=alt.Step(16))
        return base.facet(row=alt.Row("panel:N", title=None, sort=None, header=alt.Header(labelAngle=0,
                                                                                         labelAlign="left"))
                          ).resolve_scale(x="independent", y="independent").properties(
            title=f"{self.name} ({self.model}): {verdict}")


def _rule_catch(rate: float, uniform: float) -> tuple[bool, str]:
    ok = bool(rate >= CATCH_MIN and rate - uniform >= CATCH_MARGIN)
    return ok, (f"sink catch rate {rate:.3f} {'>=' if rate >= CATCH_MIN else '<'} {CATCH_MIN} and "
                f"{rate - uniform:+.3f} vs uniform ({'>=' if rate - uniform >= CATCH_MARGIN else '<'} "
                f"{CATCH_MARGIN})")


def _rule_tag(t: TagEV) -> tuple[bool, str]:
    margin = t.ev - t.value_control
    far = t.ev >= TAG_FLOOR_FACTOR * t.random_floor
    ok = bool(margin >= TAG_MARGIN and far)
    return ok, (f"EV {t.ev:.3f} vs value control {t.value_control:.3f} ({margin:+.3f}, needs >= +{TAG_MARGIN}); "
                f"{t.ev / t.random_floor:.0f}× the random floor (needs >= {TAG_FLOOR_FACTOR:.0f}×)")


def _steps_arg(steps: Any) -> tuple[str, ...]:
    """``steps``: one step name or a list of names from :data:`STEPS` (checked, as a tuple)."""
    steps = (steps,) if isinstance(steps, str) else steps
    if not isinstance(steps, (list, tuple)) or not all(isinstance(s, str) for s in steps):
        raise ArgumentTypeError(f"steps={show(steps)}: give step names from {list(STEPS)}, e.g. "
                                      "steps=('catch', 'tag')")
    bad = [s for s in steps if s not in STEPS]
    if bad:
        raise SinkwidgetsValueError(f"steps: unknown {bad}; choose from {list(STEPS)}")
    return tuple(steps)


def mechanism(model, texts: Sequence[str], head: Any, *, tau: float = TAU, rank: int | None = None,
              n_random: int = 10, release_texts: int | Sequence[str] = 20, release_random: int = 3,
              steps: Sequence[str] = STEPS, data: TagData | None = None, eps: float = EPS,
              min_later: int = MIN_LATER, split: float = 0.5, seed: int = 0, batch_size: int = 8,
              release_subspace: Any = None, rows_per_pass: int | None = None,
              progress: bool | None = False) -> MechanismReport:
    """Follow ``head`` through catch, tag and release on ``texts``; decide each step by the module's rules.

    Parameters
    ----------
    model : a model from :func:`sinkwidgets.load_model`.
    texts : paragraphs of several sentences (e.g. :func:`sinkwidgets.tags.paragraphs`); the tag EV is fitted on
        one half and evaluated on the other (``split``, ``seed``), so give at least ~20.
    head : ``(layer, head)``.
    tau : catch threshold on ``A[t, s]`` (0.3, the pilot's: at 0.5 SmolLM2 shows almost nothing).
    rank : rank of the tag subspace for both the tag EV and the release; ``None``: 1 for the tag EV and 2 for the
        release (the pilot's settings), the release's lowered to the number of dimensions the head's tag vectors
        span when that is fewer (Gemma-3-270M L14H2: all sinks ``<bos>``, rank 1), and said so (``rank_release``
        is the rank used, ``rank_note`` says why, in the printout and the release verdict). An explicit ``rank``
        the tag vectors do not span is refused.
    n_random : random subspaces for the tag EV's random floor (``>= 10``).
    release_texts : the texts of the release step: an int takes the first that many of ``texts`` (default 20), or
        a list of texts. Release runs, per text, one batch of ``1 + 3 + 2 · release_random`` rows (clean, tag, PCs,
        own write and the random subspaces; :func:`~sinkwidgets.tags.release`).
    release_random : same-rank and norm-matched random subspaces of the release step (each).
    steps : the steps to run (default all three; a step not run has ``shown[step] = None``).
    data : a :class:`TagData` of ``texts`` that holds the head's values, outputs and map (saves one collection).
    release_subspace : :func:`~sinkwidgets.tags.release`'s ``subspace``: None (the tag subspace), ``"post_norm"``
        (Gemma 2/3: the tag subspace as it lands in the residual after the norm after attention) or a basis.
    rows_per_pass : :func:`~sinkwidgets.tags.release`'s ``rows_per_pass``: rows per forward pass of the release
        projections (fewer rows, lower peak memory on large-vocabulary models such as Gemma-3).

    Returns
    -------
    MechanismReport
        ``str(report)``: one table; ``report.shown``; ``report.chart()``.
    """
    from .collect import collect

    head = model_head(model, head)
    steps = _steps_arg(steps)
    texts = text_list(texts)
    rank = check_integer("rank", rank, minimum=1, allow_none=True, example=1)
    tau = check_number("tau", tau, low=0, high=1, low_open=True, high_open=True, example=TAU)
    n_random = check_integer("n_random", n_random, minimum=10, example=10)
    release_random = check_integer("release_random", release_random, minimum=1, example=3)
    if not isinstance(release_texts, (list, tuple, str)):
        release_texts = check_integer("release_texts", release_texts, minimum=1, example=20)
    else:
        release_texts = text_list(release_texts, "release_texts")
    if data is not None:
        data = _data_arg(data)
    r_tag, r_rel = (1, 2) if rank is None else (int(rank), int(rank))
    info = getattr(model, "sinkwidgets", None)
    name = getattr(info, "name", type(model).__name__)
    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    if data is None and ("catch" in steps or "tag" in steps):
        data = collect(model, texts, heads=[head], maps=[head], layers=None, batch_size=batch_size,
                       progress=progress)
        seconds["collect"] = time.perf_counter() - t0
    shown: dict[str, bool | None] = {s: None for s in STEPS}
    reasons: dict[str, str] = {s: "not run" for s in STEPS}
    rep = MechanismReport(head=head, model=name, n_texts=len(texts), tau=float(tau), rank_tag=r_tag,
                          rank_release=r_rel, shown=shown, reasons=reasons, seconds=seconds)
    if "catch" in steps:
        t0 = time.perf_counter()
        rep.catch_result = catch(data, head, tau, eps=eps, min_later=min_later)
        rep.catch_rate, rep.catch_rate_uniform, _ = sink_catch_rate(data, head, tau, eps=eps, min_later=min_later)
        rep.boundary_rate = rep.catch_result.catch_rate
        rep.boundary_rate_uniform = boundary_catch_uniform(data, tau)
        sinks = rep.catch_result.sinks
        rep.n_sinks = len(sinks) / max(data.n_prompts, 1)
        rep.sink_at_token0 = float(np.mean([s["sink"] == 0 for s in sinks])) if sinks else float("nan")
        shown["catch"], reasons["catch"] = _rule_catch(rep.catch_rate, rep.catch_rate_uniform)
        seconds["catch"] = time.perf_counter() - t0
    if "tag" in steps:
        t0 = time.perf_counter()
        rep.tag = tag_ev(data, head, r_tag, eps=eps, min_later=min_later, n_random=n_random, split=split, seed=seed)
        shown["tag"], reasons["tag"] = _rule_tag(rep.tag)
        seconds["tag"] = time.perf_counter() - t0
    if "release" in steps:
        t0 = time.perf_counter()
        rel_texts = texts[: int(release_texts)] if isinstance(release_texts, (int, np.integer)) else \
            list(release_texts)
        rep.release = release(model, rel_texts, head, rank=RANK_DEFAULT if rank is None else rank, n_random=release_random, data=data, eps=eps,
                              min_later=min_later, seed=seed, batch_size=batch_size, subspace=release_subspace,
                              rows_per_pass=rows_per_pass, progress=progress)
        rep.rank_release = rep.release.rank
        rep.rank_note = rep.release.rank_note
        s = rep.release.shown
        shown["release"] = bool(s)
        reasons["release"] = rep.release.verdict.split(": ", 2)[-1]
        seconds["release"] = time.perf_counter() - t0
    return rep


@dataclass
class MechanismTable:
    """Several heads' :class:`MechanismReport` as one table: one row per head, each measure beside its controls.

    ``reports``: the reports in order; ``shown``: ``{label: {"catch", "tag", "release"}}`` with ``label`` the head
    (``"L1H1"``), prefixed by the model's name when the table holds several models (``"gemma-3-270m L14H2"``);
    ``seconds``: wall time of the shared collection and of each head. ``table + other`` joins two tables (e.g. two
    models). ``str(table)``: the table, then one verdict line per head.
    """

    reports: list[MechanismReport]
    seconds: dict[str, float] = field(default_factory=dict)

    def _label(self, r: MechanismReport) -> str:
        return r.name if len({x.model for x in self.reports}) <= 1 else f"{r.model} {r.name}"

    @property
    def shown(self) -> dict[str, dict[str, bool | None]]:
        return {self._label(r): dict(r.shown) for r in self.reports}

    def __getitem__(self, head) -> MechanismReport:
        """The report of ``(layer, head)``, ``"L1H1"`` or a label of :attr:`shown`."""
        for r in self.reports:
            if head in (r.head, r.name, self._label(r)) or (not isinstance(head, str) and tuple(head) == r.head):
                return r
        raise SinkwidgetsKeyError(f"table[{head!r}]: no such head in this table; use one of "
                                  f"{[self._label(r) for r in self.reports]} (a label, 'L1H1' or (layer, head))")

    def __len__(self) -> int:
        return len(self.reports)

    def __add__(self, other: MechanismTable) -> MechanismTable:
        return MechanismTable(self.reports + other.reports, {**self.seconds, **other.seconds})

    def __str__(self) -> str:
        def f(x, fmt):
            return format(x, fmt) if x is not None and np.isfinite(x) else "–"

        labels = [self._label(r) for r in self.reports]
        w = max(6, *(len(x) for x in labels)) + 2
        models = sorted({r.model for r in self.reports})
        lines = [f"mechanism, {len(self.reports)} heads ({', '.join(models)}); each value beside its controls",
                 f"  {'head':<{w}}{'catch rate':>11}{'uniform':>9} |{'tag EV':>8}{'value c.':>9}{'random':>8}"
                 f"{'PC bd':>7} |{'ΔNLL':>8}{'matched':>9}{'ΔNLL/nrm':>9}{'PCs/nrm':>9}{'Δ sink':>8}{'matched':>9}"
                 f"{'own':>8} | c t r"]
        yn = {True: "y", False: "n", None: "-"}
        for lab, r in zip(labels, self.reports):
            t, rl = r.tag, r.release
            tag = (f"{f(t.ev, '8.3f')}{f(t.value_control, '9.3f')}{f(t.random_floor, '8.4f')}{f(t.pc_bound, '7.3f')}"
                   if t is not None else f"{'–':>8}{'–':>9}{'–':>8}{'–':>7}")
            if rl is not None:
                dm = float(np.mean(rl.dnll_matched)) if rl.dnll_matched else float("nan")
                sm = float(np.mean(rl.sink_shift_matched)) if rl.sink_shift_matched else float("nan")
                rel = (f"{f(rl.dnll, '+8.3f')}{f(dm, '+9.3f')}{f(rl.dnll_per_norm, '9.3f')}"
                       f"{f(rl.dnll_per_norm_pcs, '9.3f')}{f(rl.sink_shift, '+8.3f')}{f(sm, '+9.3f')}"
                       f"{f(rl.dnll_own_write, '+8.3f')}")
            else:
                rel = f"{'–':>8}{'–':>9}{'–':>9}{'–':>9}{'–':>8}{'–':>9}{'–':>8}"
            catch_ = f"{f(r.catch_rate, '11.3f')}{f(r.catch_rate_uniform, '9.3f')}"
            lines.append(f"  {lab:<{w}}{catch_} |{tag} |{rel} | {' '.join(yn[r.shown.get(s)] for s in STEPS)}")
        lines.append("  (catch: sink catch rate at τ vs uniform attention; tag: held-out EV vs non-sink value control, "
                     "random floor, PC bound; release: ΔNLL vs norm-matched random, ΔNLL per unit of norm vs top PCs, "
                     "Δ later heads' sink attention vs norm-matched random, own write only; c t r: shown y / n / -)")
        word = {True: "shown", False: "not shown", None: "not run"}
        lines.append("  verdicts:")
        for lab, r in zip(labels, self.reports):
            lines.append(f"    {lab:<{w}}" + "; ".join(f"{s} {word[r.shown.get(s)]}" for s in STEPS)
                         + (f" (release {r.rank_note})" if r.rank_note else ""))
        if self.seconds:
            lines.append("  wall time: " + ", ".join(f"{k} {v:.0f} s" for k, v in self.seconds.items()))
        return "\n".join(lines)

    def _repr_pretty_(self, p, cycle):
        p.text(str(self))

    def as_dict(self) -> dict:
        return {"reports": [r.as_dict() for r in self.reports], "shown": self.shown, "seconds": dict(self.seconds)}


def mechanism_table(model, texts: Sequence[str], heads: Sequence[Any], *, data: TagData | None = None,
                    batch_size: int = 8, progress: bool | None = False, **kwargs) -> MechanismTable:
    """:func:`mechanism` for several heads of one model on one corpus, with **one** collection of ``texts`` (every
    head's values, outputs and map) shared by all heads; returns a :class:`MechanismTable`.

    ``heads``: ``(layer, head)`` pairs; ``data``: a :class:`TagData` of ``texts`` holding all of them (skips the
    collection); ``kwargs``: :func:`mechanism`'s keywords (``tau``, ``rank``, ``steps``, ``release_texts``,
    ``release_random``, ...), the same for every head. Cost: one collection, then per head :func:`mechanism`'s
    steps (the release collects its own texts' sinks and residual once per head).
    """
    from .collect import collect

    info = getattr(model, "sinkwidgets", None)
    dims = (getattr(info, "n_layers", None), getattr(info, "n_heads", None)) if info is not None else (None, None)
    heads = check_heads("heads", [_plain_head(h) for h in heads] if isinstance(heads, (list, tuple)) else heads,
                        *dims, allow_all=False)
    texts = text_list(texts)
    seconds: dict[str, float] = {}
    steps = _steps_arg(kwargs.get("steps", STEPS))
    if data is None and ("catch" in steps or "tag" in steps):
        t0 = time.perf_counter()
        data = collect(model, texts, heads=heads, maps=heads, layers=None, batch_size=batch_size, progress=progress)
        seconds["collect"] = time.perf_counter() - t0
    reports = []
    for h in heads:
        t0 = time.perf_counter()
        reports.append(mechanism(model, texts, h, data=data, batch_size=batch_size, progress=progress, **kwargs))
        seconds[f"L{h[0]}H{h[1]}"] = time.perf_counter() - t0
    return MechanismTable(reports, seconds)
