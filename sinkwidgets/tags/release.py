"""Release: project a head's tag subspace out of the residual stream and measure what later layers lose.

Zhang, Khan & Papyan (arXiv 2502.00919, §4, Theorem 7.1): after the tag is written into the caught tokens, later
layers "release" them, i.e. retrieve tokens by their tags. If so, removing the tag subspace ``U`` from the residual
stream after the sink head's layer,

    h_t <- h_t - U U^T h_t      at the chosen positions t,

should raise the loss and move later heads' attention **more than removing a random subspace of the same rank**.
The projection itself is :func:`sinkwidgets.interventions.project_out` (one implementation); this module picks
``U``, the positions and the controls:

- ``positions="non_sink"`` (default) edits every token except the head's sinks and token 0. Projecting at the sink
  itself breaks the model (SmolLM2: up to +3.3 nats/token) because the sink token's residual (with its massive
  activation) is what every head's no-op attention rests on; that is not the release of a tag.
- controls: ``n_random`` random ``rank``-dim subspaces (Haar) and the top-``rank`` principal components of the
  residual after that layer at the edited positions (the directions that carry the most variance; these usually
  hurt more than the tag, so a large ΔNLL alone does not single out the tag).

**Size matters.** ``U`` can hold a large share of the residual's norm at the edited positions (SmolLM2 L1H1:
``norm_fraction`` ≈ 0.20, a random 2-d subspace ≈ 0.06, the top-2 PCs 0.30–0.58), so a same-rank random subspace
removes far less and is no fair control. Two controls decide, both reported:

- **norm-matched random subspaces** (``matched=True``, the default; the control the verdict uses): random
  directions (Haar) added one by one until they remove the same ``norm_fraction`` as ``U``
  (:func:`~sinkwidgets.tags.analysis.norm_matched_subspace`). ΔNLL is not linear in the norm removed (the loss of
  removing 0.2 of the norm is not 3× that of 0.06), so dividing by the norm is only a first-order correction;
  matching the norm compares like with like.
- **ΔNLL per unit of norm** (``dnll / norm_fraction``) for the tag, the same-rank random draws and the top PCs:
  the PCs cannot be matched in norm (they hold more), so per unit of norm is the only comparison with them.

Two attention readouts: ``sink_shift``, the signed change of later heads' mean attention mass on the head's sinks
(and token 0), and ``dnll_own_write``: only the head's own write along ``U`` removed (what the head itself adds,
rather than everything any earlier layer wrote along ``U``).

**Verdict** (``shown``; the printout's last line): release is shown when (1) the tag's ΔNLL exceeds that of every
norm-matched random draw, and (2) later heads' sink attention moves beyond random:
``|sink_shift - mean(matched)| >= max(0.05, 3 sd(matched))`` and ``|sink_shift| > |mean(matched)|``. Without
norm-matched draws (``matched=False``) there is no verdict (``shown = None``).

**Models with a norm after attention** (Gemma 2/3 normalize each attention output before adding it to the
residual): the tag subspace is fitted on the head's values *before* that norm, so it is not the direction that
lands in the residual (Gemma-3 L14H2: 0.05 of the norm instead of 0.41). ``subspace="post_norm"`` maps it
through the norm's per-channel scale, ``U' = qr((1 + w)[:, None] · U)`` with ``w`` the weight of the layer's
``post_attention_layernorm`` (:func:`post_norm_basis`; the norm's per-token ``1 / rms`` only scales each token's
write, so it does not change the direction); or pass ``subspace=`` any basis ``[d, r]`` (``docs/tags.md``).

Pilot on SmolLM2-135M (20 paragraphs, baseline 3.72 nats/token): L1H1 ΔNLL +0.17 vs random +0.009 ± 0.007; L15H7
+0.37 vs +0.018; the top-2 PCs hurt 2–9× more than the tag (2.6–14× per unit of norm), later heads' mean attention
on the sink hardly moves (|Δ| ≤ 0.01), and the head's own write alone costs almost nothing (≤ 0.015 nats).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .._args import ArgumentTypeError, is_int, show
from .._args import basis as check_basis
from .._args import head as check_head
from .._args import integer as check_integer
from .._args import number as check_number
from .._args import seed as check_seed
from ..errors import SinkwidgetsValueError
from .analysis import (
    EPS,
    MIN_LATER,
    _data_arg,
    _plain_head,
    norm_fraction,
    norm_matched_subspace,
    numerical_rank,
    random_subspace,
    sink_positions,
    tag_subspace,
    tag_vectors,
)
from .data import TagData


class _DefaultRank(int):
    """The default ``rank`` of :func:`release` (2), told apart from an explicit ``rank=2`` by identity: the default
    is lowered to the rank the tag vectors span (and said so), an explicit rank is refused when they span less."""

    __slots__ = ()


#: Rank of the release's tag subspace by default (lowered to the rank the tag vectors span, and said so).
RANK_DEFAULT = _DefaultRank(2)

#: Absolute floor on the change of later heads' sink attention for a release verdict (5 points of attention).
SINK_SHIFT_MIN = 0.05


def model_head(model: Any, head: Any, name: str = "head") -> tuple[int, int]:
    """``head`` as ``(layer, head)`` (``sinkwidgets._args.head``: a pair or ``"L2H2"``; a HeadRecord too), checked
    against the model's numbers of layers and heads when it carries ``model.sinkwidgets`` (negative indices count
    from the end)."""
    info = getattr(model, "sinkwidgets", None)
    L, H = (getattr(info, "n_layers", None), getattr(info, "n_heads", None)) if info is not None else (None, None)
    return check_head(name, _plain_head(head), L, H)


def text_list(texts: Any, name: str = "texts") -> list[str]:
    """One text or a non-empty list of texts (strings), as a list."""
    if isinstance(texts, str):
        return [texts]
    if not isinstance(texts, (list, tuple)) or not texts or not all(isinstance(t, str) for t in texts):
        raise ArgumentTypeError(f"{name}={show(texts)}: give a text or a non-empty list of texts "
                                      f"(strings), e.g. {name}=sinkwidgets.tags.paragraphs(20)")
    return list(texts)


def _positions_arg(positions: Any, n_texts: int) -> Any:
    """:func:`release`'s ``positions``: ``"non_sink"``, ``"all"``, or one entry per text (an int, a list of ints,
    negative counting from the end of that text, or a boolean mask ``[T_i]``), checked before any model work.
    Returns the string, or a list of ``("mask", bool array)`` / ``("idx", [ints])``."""
    eg = "positions='non_sink' or positions=[[1, 2], [3]] (one list per text)"
    if isinstance(positions, str):
        if positions in ("non_sink", "all"):
            return positions
        raise ArgumentTypeError(f"positions={positions!r}: use 'non_sink', 'all' or one list of positions per "
                                      f"text; e.g. {eg}")
    if isinstance(positions, np.ndarray) and positions.ndim >= 1:
        positions = list(positions)
    if not isinstance(positions, (list, tuple)):
        raise ArgumentTypeError(f"positions={show(positions)} ({type(positions).__name__}): use "
                                      f"'non_sink', 'all' or one list of positions per text; e.g. {eg}")
    if len(positions) != n_texts:
        raise SinkwidgetsValueError(f"positions: give 'non_sink', 'all' or one position list / mask per text "
                                    f"({n_texts}), got {len(positions)} entries")
    out = []
    for i, p in enumerate(positions):
        if isinstance(p, np.ndarray) and p.dtype == bool:
            if p.ndim != 1:
                raise SinkwidgetsValueError(f"positions[{i}]: a mask is 1-D [T], got shape {list(p.shape)}")
            out.append(("mask", p))
        elif is_int(p):
            out.append(("idx", [int(p)]))
        elif isinstance(p, (list, tuple, range, np.ndarray)) and all(is_int(v) for v in p) and len(p):
            out.append(("idx", [int(v) for v in p]))
        elif isinstance(p, (list, tuple)) and p and all(isinstance(v, (bool, np.bool_)) for v in p):
            out.append(("mask", np.asarray(p, dtype=bool)))
        else:
            raise ArgumentTypeError(f"positions[{i}]={show(p)}: give an int, a non-empty list of ints or "
                                          f"a boolean mask for text {i}; e.g. {eg}")
    return out


def _mean(x) -> float:
    x = np.asarray(x, dtype=np.float64)
    return float(x.mean()) if x.size else float("nan")


def _sd(x) -> float:
    x = np.asarray(x, dtype=np.float64)
    return float(x.std(ddof=1)) if x.size > 1 else 0.0


def release_verdict(dnll: float, dnll_matched: Sequence[float], shift: float,
                    shift_matched: Sequence[float]) -> tuple[bool | None, str]:
    """The release rule (module docstring): ``(shown, reason)``; ``shown`` is None without norm-matched draws or
    without attention statistics."""
    if not len(dnll_matched):
        return None, "no verdict: no norm-matched random control (matched=False)"
    loss = bool(dnll > float(np.max(dnll_matched)))
    if not np.isfinite(shift):
        return None, "no verdict: attention not measured (attention_layers=None)"
    m, sd = _mean(shift_matched), _sd(shift_matched)
    moved = bool(abs(shift - m) >= max(SINK_SHIFT_MIN, 3 * sd) and abs(shift) > abs(m))
    parts = [f"ΔNLL {dnll:+.3f} {'>' if loss else '<='} every norm-matched random draw (max "
             f"{float(np.max(dnll_matched)):+.3f})",
             f"sink attention {shift:+.3f} vs random {m:+.3f} ± {sd:.3f} ({'moves' if moved else 'does not move'}"
             f" beyond random)"]
    return loss and moved, "; ".join(parts)


@dataclass
class ReleaseResult:
    """ΔNLL (nats per token, token-weighted over all texts; positive = worse) and later heads' attention change
    for the tag subspace, each random subspace, the top PCs and the norm-matched random subspaces.

    ``dnll``, ``dnll_random`` (one per same-rank draw), ``dnll_pcs``, ``dnll_matched`` (one per norm-matched draw,
    of ``rank_matched`` dimensions each), ``dnll_own_write`` (only the head's own write along the tag removed; NaN
    when not run). ``norm_fraction*``: share of the residual norm at the edited positions in each subspace,
    ``||X U||_F / ||X||_F`` (:func:`~sinkwidgets.tags.analysis.norm_fraction`). ``sink_delta*``: mean over texts,
    later layers, heads and queries ``t >= 1`` of ``|Δ|`` of the attention on the head's sinks; ``sink_shift*``:
    the same without the absolute value (signed change of the mean sink mass; ``sink_mass`` is the clean mass);
    ``tv*``: mean total variation ``½ Σ_j |ΔP_tj|`` of later heads' attention rows. ``baseline_nll`` is the clean
    model's mean NLL. ``shown`` / ``verdict``: the rule in the module docstring. ``rank``: the rank used;
    ``rank_note``: why it is below the default rank 2 when it is (the tag vectors span fewer dimensions), else "".
    """

    head: tuple[int, int]
    rank: int
    positions: str
    baseline_nll: float
    dnll: float
    dnll_random: list[float]
    dnll_pcs: float
    sink_delta: float
    sink_delta_random: list[float]
    sink_delta_pcs: float
    tv: float
    tv_random: list[float]
    tv_pcs: float
    n_texts: int
    n_tokens: int
    n_projected: int
    per_text: dict[str, np.ndarray] = field(default_factory=dict, repr=False)
    subspace: np.ndarray = field(default=None, repr=False)
    norm_fraction: float = float("nan")
    norm_fraction_random: list[float] = field(default_factory=list)
    norm_fraction_pcs: float = float("nan")
    dnll_matched: list[float] = field(default_factory=list)
    norm_fraction_matched: list[float] = field(default_factory=list)
    rank_matched: list[int] = field(default_factory=list)
    sink_mass: float = float("nan")
    sink_shift: float = float("nan")
    sink_shift_random: list[float] = field(default_factory=list)
    sink_shift_pcs: float = float("nan")
    sink_shift_matched: list[float] = field(default_factory=list)
    sink_delta_matched: list[float] = field(default_factory=list)
    tv_matched: list[float] = field(default_factory=list)
    dnll_own_write: float = float("nan")
    sink_shift_own_write: float = float("nan")
    rank_note: str = ""

    @property
    def ratio_random(self) -> float:
        """ΔNLL of the tag over the mean ΔNLL of the random subspaces."""
        m = float(np.mean(self.dnll_random))
        return self.dnll / m if m > 0 else float("inf")

    @property
    def dnll_per_norm(self) -> float:
        """ΔNLL of the tag per unit of norm fraction removed, ``dnll / norm_fraction``."""
        return self.dnll / self.norm_fraction

    @property
    def dnll_per_norm_random(self) -> list[float]:
        """``dnll / norm_fraction`` of each same-rank random draw."""
        return [d / f for d, f in zip(self.dnll_random, self.norm_fraction_random)]

    @property
    def dnll_per_norm_pcs(self) -> float:
        """``dnll_pcs / norm_fraction_pcs`` (NaN when the PCs were not run)."""
        return self.dnll_pcs / self.norm_fraction_pcs

    @property
    def dnll_per_norm_matched(self) -> list[float]:
        return [d / f for d, f in zip(self.dnll_matched, self.norm_fraction_matched)]

    @property
    def shown(self) -> bool | None:
        """Release shown by the rule of the module docstring (None: no norm-matched control or no attention)."""
        return release_verdict(self.dnll, self.dnll_matched, self.sink_shift, self.sink_shift_matched)[0]

    @property
    def verdict(self) -> str:
        """One plain line: shown / not shown / no verdict, and why."""
        shown, why = release_verdict(self.dnll, self.dnll_matched, self.sink_shift, self.sink_shift_matched)
        word = {True: "release SHOWN", False: "release NOT shown", None: "release undecided"}[shown]
        note = f" [{self.rank_note}]" if self.rank_note else ""
        return f"verdict: {word}: {why}{note}"

    def __str__(self) -> str:
        l, h = self.head

        def row(name, dnll, nf, shift, sd, tv, spread=""):
            per = dnll / nf if np.isfinite(nf) and nf > 0 else float("nan")
            return (f"  {name:<26}{dnll:>+9.3f}{nf:>8.3f}{per:>10.3f}{shift:>+10.4f}{sd:>10.4f}{tv:>8.4f}"
                    f"{spread}")

        r = np.asarray(self.dnll_random)
        pm = f"  (ΔNLL sd {_sd(r):.3f})" if len(r) > 1 else ""
        lines = [
            f"release of L{l}H{h}: rank-{self.rank} subspace projected out after layer {l} at {self.positions} "
            f"positions ({self.n_texts} texts, {self.n_tokens} tokens, baseline NLL {self.baseline_nll:.3f}, "
            f"later heads' clean sink mass {self.sink_mass:.3f})" + (f"; {self.rank_note}" if self.rank_note else ""),
            f"  {'subspace':<26}{'ΔNLL':>9}{'norm':>8}{'ΔNLL/norm':>10}{'Δ sink':>10}{'|Δ| sink':>10}{'row TV':>8}",
            row("tag", self.dnll, self.norm_fraction, self.sink_shift, self.sink_delta, self.tv),
            row(f"random, rank {self.rank} ({len(r)})", _mean(r), _mean(self.norm_fraction_random),
                _mean(self.sink_shift_random), _mean(self.sink_delta_random), _mean(self.tv_random), pm),
        ]
        if self.dnll_matched:
            dm = np.asarray(self.dnll_matched)
            lines.append(row(f"random, norm-matched ({len(dm)})", _mean(dm), _mean(self.norm_fraction_matched),
                             _mean(self.sink_shift_matched), _mean(self.sink_delta_matched), _mean(self.tv_matched),
                             f"  (ΔNLL sd {_sd(dm):.3f}, Δ sink sd {_sd(self.sink_shift_matched):.4f}, "
                             f"{min(self.rank_matched)}–{max(self.rank_matched)} dims)"))
        if np.isfinite(self.dnll_pcs):
            lines.append(row(f"top-{self.rank} PCs", self.dnll_pcs, self.norm_fraction_pcs, self.sink_shift_pcs,
                             self.sink_delta_pcs, self.tv_pcs))
        else:
            lines.append(f"  {'top PCs':<26}(not run: pcs=False)")
        if np.isfinite(self.dnll_own_write):
            lines.append(f"  {'own write only':<26}{self.dnll_own_write:>+9.3f}{'':>18}"
                         f"{self.sink_shift_own_write:>+10.4f}")
        if not np.isfinite(self.tv):
            lines.append("  (attention changes not measured: attention_layers=None)")
        lines.append(self.verdict)
        return "\n".join(lines)

    def _repr_pretty_(self, p, cycle):
        p.text(str(self))

    def as_dict(self) -> dict:
        keys = ("rank", "positions", "baseline_nll", "dnll", "dnll_random", "dnll_pcs", "sink_delta",
                "sink_delta_random", "sink_delta_pcs", "tv", "tv_random", "tv_pcs", "n_texts", "n_tokens",
                "n_projected", "norm_fraction", "norm_fraction_random", "norm_fraction_pcs", "dnll_matched",
                "norm_fraction_matched", "rank_matched", "sink_mass", "sink_shift", "sink_shift_random",
                "sink_shift_pcs", "sink_shift_matched", "sink_delta_matched", "tv_matched", "dnll_own_write",
                "sink_shift_own_write", "rank_note", "shown")
        return {k: getattr(self, k) for k in keys} | {"head": list(self.head), "verdict": self.verdict}


def _summarise(r, edited: str | None = None) -> dict:
    """One edited condition of a project_out result over all texts (default: the first edited one) → ΔNLL,
    baseline NLL, sink |Δ|, sink shift, clean sink mass, TV and per-text ΔNLL; the attention statistics are means
    of the per-text means."""
    clean = np.concatenate(r.nll["clean"])
    edited = r.conditions[1] if edited is None else edited
    k = r.conditions.index(edited)  # column k of sink_mass [S, 1 + K, H], k - 1 of sink_delta / tv [S, K, H]
    proj = np.concatenate(r.nll[edited])
    per_text = np.array([p.mean() - c.mean() for c, p in zip(r.nll["clean"], r.nll[edited])])
    att = r.attention
    nan = float("nan")
    if att:
        mass = att["sink_mass"]  # [N] of [S, C, H]
        sd = float(np.mean([a[:, k - 1].mean() for a in att["sink_delta"]]))
        shift = float(np.mean([m[:, k].mean() - m[:, 0].mean() for m in mass]))
        mass0 = float(np.mean([m[:, 0].mean() for m in mass]))
        tv = float(np.mean([a[:, k - 1].mean() for a in att["tv"]]))
    else:
        sd = shift = mass0 = tv = nan
    return {"dnll": float(proj.mean() - clean.mean()), "base": float(clean.mean()), "sink_delta": sd,
            "shift": shift, "mass": mass0, "tv": tv, "per_text": per_text}


def release(model, texts: Sequence[str], head: Any = (1, 1), rank: int = RANK_DEFAULT, positions: Any = "non_sink",
            n_random: int = 3, *, data: TagData | None = None, subspace: Any = None, pcs: bool = True,
            matched: bool = True, own_write: bool = True, eps: float = EPS, min_later: int = MIN_LATER,
            attention_layers: Any = "after", add_bos: bool | None = None, max_tokens: int | None = None,
            seed: int = 0, batch_size: int = 8, rows_per_pass: int | None = None,
            progress: bool | None = None) -> ReleaseResult:
    """Project ``head``'s rank-``rank`` tag subspace out of the residual after its layer; compare with controls.

    Parameters
    ----------
    model : a model from :func:`sinkwidgets.load_model` (local or remote).
    texts : the texts to measure on (a few paragraphs of several sentences).
    head : ``(layer, head)`` of the sink head.
    rank : rank of the tag subspace (top singular vectors of the sinks' values ``g_s = v_s W_O^h``). Default
        (not given): 2, lowered to the number of dimensions the head's tag vectors span when that is fewer (all
        sinks the same token, e.g. Gemma-3-270M L14H2, whose sinks are all ``<bos>``: rank 1), and said so in
        ``rank_note`` and the printout; an explicit ``rank`` they do not span is refused (:func:`tag_subspace`).
    positions : ``"non_sink"`` (default; every token but token 0 and the head's sinks, ``alpha > eps``), ``"all"``
        (includes the sinks: breaks the model, see the module docstring), or per-text positions / masks.
    n_random : random subspaces of the same rank (one ΔNLL per draw), and as many norm-matched ones.
    data : a :class:`TagData` with the head's values and α to fit the subspace and find the sinks (default: collected
        from ``texts``). ``subspace``: an explicit basis ``[d, rank]`` instead, or ``"post_norm"``: the tag subspace
        mapped through the norm after attention (Gemma 2/3; :func:`post_norm_basis`).
    pcs : also project out the top-``rank`` PCs of the residual after the layer (at the edited positions).
    matched : also project out ``n_random`` random subspaces that remove the same share of the residual norm as
        the tag (the control of the verdict; see the module docstring for why).
    own_write : also remove only the head's own write along ``U`` (``dnll_own_write``): at the edited positions
        ``h_t <- h_t - (c_t U) U^T`` with ``c_t`` the head's contribution after ``W_O``
        (:func:`~sinkwidgets.interventions.project_out` with ``head=``).
    attention_layers : later layers whose attention change is measured (``"after"``: all later layers; ``None``:
        none, faster, and no verdict).

    rows_per_pass : rows (clean + edited) per forward pass of the projections; default: all subspaces of a text
        in one pass, split only when the float32 logits ``[rows, T, vocab]`` would exceed
        :data:`sinkwidgets.interventions.experiments.LOGITS_BUDGET` (see :func:`~sinkwidgets.interventions.project_out`
        with a dict of bases).

    Cost: one collection and one residual pass, then per text one forward pass (or a few, see ``rows_per_pass``)
    of ``1 + K`` rows: the clean row and one edited row for each of the ``K = 1 + n_random`` (+1 for the PCs,
    + ``n_random`` norm-matched, +1 own write) subspaces. (Before the subspaces shared a pass, each ran its own
    two-row pass per text; the numbers agree to float32 batching, ``|Δ| ~ 1e-6``.)
    """
    from ..interventions import project_out
    from .collect import collect, residual_rows

    layer, h = model_head(model, head)
    texts = text_list(texts)
    rank_default = rank is RANK_DEFAULT
    rank = check_integer("rank", int(rank) if rank_default else rank, minimum=1, example=2)
    rank_note = ""
    # >= 1: the random control is the point of the comparison
    n_random = check_integer("n_random", n_random, minimum=1, example=3)
    eps = check_number("eps", eps, example=EPS)
    min_later = check_integer("min_later", min_later, minimum=0, example=MIN_LATER)
    seed = check_seed("seed", seed)
    batch_size = check_integer("batch_size", batch_size, minimum=1, example=8)
    rows_per_pass = check_integer("rows_per_pass", rows_per_pass, minimum=2, allow_none=True, example=8)
    positions = _positions_arg(positions, len(texts))
    if data is not None:
        data = _data_arg(data)
    if isinstance(subspace, str) and subspace != "post_norm":
        raise SinkwidgetsValueError(f"subspace={subspace!r}: give None (the tag subspace), 'post_norm' (the tag "
                                    "subspace as it lands in the residual after Gemma's norm after attention) or a "
                                    "basis [d, r]")
    if subspace is not None and not isinstance(subspace, str):
        info = getattr(model, "sinkwidgets", None)
        subspace = check_basis("subspace", subspace, getattr(info, "d_model", None))
    own = collect(model, texts, heads=[(layer, h)], layers=None, maps=False, outputs=False, values=True,
                  add_bos=add_bos, max_tokens=max_tokens, batch_size=batch_size, progress=progress)
    fit = own if data is None else data
    if subspace is None or isinstance(subspace, str):
        G, _ = tag_vectors(fit, (layer, h), eps=eps, min_later=min_later)
        if rank_default and len(G):
            k = numerical_rank(G)
            if k < rank:
                rank_note = (f"rank {k} (the tag vectors span {k} dimension{'s' if k != 1 else ''}; default rank "
                             f"{rank} lowered)")
                rank = k
        if len(G) < rank:
            raise SinkwidgetsValueError(f"rank={rank}: L{layer}H{h} has {len(G)} sinks (alpha > {eps}) in the fit "
                                        f"texts, fewer than rank={rank}; lower rank or give more texts")
        U = tag_subspace(G, rank)
        if subspace == "post_norm":
            U = post_norm_basis(model, layer, U)
    else:
        U = np.asarray(subspace, dtype=np.float64)
        U = U[:, None] if U.ndim == 1 else U
    d = U.shape[0]
    # the head's sinks in each text, plus token 0 (the model-wide sink)
    sinks = []
    for i in range(own.n_prompts):
        s = set(sink_positions(own.alpha((layer, h))[own.span(i)], eps, min_later).tolist()) | {0}
        sinks.append(sorted(s))
    if isinstance(positions, str) and positions == "non_sink":
        per_pos = [np.array([t not in s for t in range(int(T))]) for s, T in zip(sinks, own.lengths)]
        label = "non-sink"
    elif isinstance(positions, str) and positions == "all":
        per_pos = [np.ones(int(T), dtype=bool) for T in own.lengths]
        label = "all"
    else:
        per_pos = []
        for i, ((kind, p), T) in enumerate(zip(positions, own.lengths)):
            T = int(T)
            if kind == "mask":
                if len(p) != T:
                    raise SinkwidgetsValueError(f"positions[{i}]: the mask has {len(p)} entries but text {i} has {T} "
                                                "tokens; give one entry per token")
                per_pos.append(p)
                continue
            bad = [v for v in p if not -T <= v < T]
            if bad:
                raise SinkwidgetsValueError(f"positions[{i}]: position {bad[0]} is out of range: text {i} has {T} "
                                            f"tokens; use 0..{T - 1} (or -{T}..-1 to count from its end)")
            m = np.zeros(T, dtype=bool)
            m[np.asarray(p, dtype=np.int64) % T] = True
            per_pos.append(m)
        label = "chosen"

    # the residual after the layer at the edited positions: norm fractions, PCs and norm-matched controls
    rows = residual_rows(model, texts, layer, add_bos=add_bos, max_tokens=max_tokens, batch_size=batch_size)
    X = np.concatenate([r[p] for r, p in zip(rows, per_pos)]).astype(np.float64)
    rng = np.random.default_rng(seed)
    Uo = np.linalg.qr(U)[0]
    target = norm_fraction(X, Uo)
    bases = {"tag": U}
    for k in range(n_random):
        bases[f"random{k}"] = random_subspace(d, U.shape[1], rng)
    if pcs:
        Xc = X - X.mean(0)
        bases["pcs"] = np.linalg.svd(Xc, full_matrices=False)[2][: U.shape[1]].T
    if matched:
        for k in range(n_random):
            bases[f"matched{k}"] = norm_matched_subspace(X, target, rng)
    fractions = {name: norm_fraction(X, np.linalg.qr(B)[0]) for name, B in bases.items()}

    do_own = own_write and _has_head_edit(project_out)
    show = progress if progress is not None else True
    # every subspace of a text in one batch: the clean row plus one edited row per subspace (project_out with a
    # dict of bases); a callable hands each text its own positions
    pos_arg = "all" if label == "all" else (lambda i, T: per_pos[i])
    run_bases = dict(bases) | ({"own": U} if do_own else {})
    heads = {"own": h} if do_own else {}
    out = project_out(model, texts, layer, run_bases, positions=pos_arg, sink_positions=sinks, head=heads,
                      attention_layers=attention_layers, add_bos=add_bos, max_tokens=max_tokens, progress=show,
                      batch_size=rows_per_pass)
    n_proj = int(sum(out.meta["n_projected"]))
    summary = {name: _summarise(out, name) for name in run_bases}
    tag = summary["tag"]
    rnd = [summary[f"random{k}"] for k in range(n_random)]
    mt = [summary[f"matched{k}"] for k in range(n_random)] if matched else []
    nan = float("nan")
    pc = summary.get("pcs", {"dnll": nan, "sink_delta": nan, "shift": nan, "tv": nan, "per_text": None})
    ow = summary.get("own", {"dnll": nan, "shift": nan})
    return ReleaseResult(
        head=(layer, h), rank=int(U.shape[1]), positions=label, baseline_nll=tag["base"], dnll=tag["dnll"],
        dnll_random=[r["dnll"] for r in rnd], dnll_pcs=pc["dnll"], sink_delta=tag["sink_delta"],
        sink_delta_random=[r["sink_delta"] for r in rnd], sink_delta_pcs=pc["sink_delta"], tv=tag["tv"],
        tv_random=[r["tv"] for r in rnd], tv_pcs=pc["tv"], n_texts=len(texts), n_tokens=int(own.n_tokens),
        n_projected=n_proj,
        per_text={"tag": tag["per_text"], **{f"random{k}": r["per_text"] for k, r in enumerate(rnd)},
                  **({"pcs": pc["per_text"]} if pcs else {}),
                  **{f"matched{k}": r["per_text"] for k, r in enumerate(mt)}},
        subspace=U, norm_fraction=fractions["tag"],
        norm_fraction_random=[fractions[f"random{k}"] for k in range(n_random)],
        norm_fraction_pcs=fractions.get("pcs", nan), dnll_matched=[r["dnll"] for r in mt],
        norm_fraction_matched=[fractions[f"matched{k}"] for k in range(len(mt))],
        rank_matched=[int(bases[f"matched{k}"].shape[1]) for k in range(len(mt))], sink_mass=tag["mass"],
        sink_shift=tag["shift"], sink_shift_random=[r["shift"] for r in rnd], sink_shift_pcs=pc["shift"],
        sink_shift_matched=[r["shift"] for r in mt], sink_delta_matched=[r["sink_delta"] for r in mt],
        tv_matched=[r["tv"] for r in mt], dnll_own_write=ow["dnll"], sink_shift_own_write=ow["shift"],
        rank_note=rank_note)


def post_norm_basis(model, layer: int, U: np.ndarray) -> np.ndarray:
    """``U [d, r]`` (fitted on a head's writes before the norm after attention) → the orthonormal basis
    ``qr((1 + w)[:, None] · U)`` of the directions that land in the residual, ``w [d]`` the weight of block
    ``layer``'s ``post_attention_layernorm`` (Gemma 2/3: ``RMSNorm(x) · (1 + w)``, applied to the attention output
    before the residual add). Raises ``ValueError`` for a model without a norm after attention (Llama-style
    ``post_attention_layernorm`` is the MLP's input norm, recognised by the absence of ``pre_feedforward_layernorm``).
    """
    from ..models.adapters import get_path, has_path

    info = getattr(model, "sinkwidgets", None)
    family = getattr(info, "family", "")
    blocks = get_path(model, info.adapter.layers) if info is not None else None
    blk = blocks[int(layer)] if blocks is not None else None
    if blk is None or not str(family).startswith(("gemma2", "gemma3")) or not (
            has_path(blk, "post_attention_layernorm") and has_path(blk, "pre_feedforward_layernorm")):
        raise SinkwidgetsValueError(f"subspace='post_norm': {getattr(info, 'name', type(model).__name__)!r} (family "
                         f"{family!r}) has no norm after attention (Gemma 2/3 have one); leave subspace=None")
    norm = get_path(blk, "post_attention_layernorm")
    w = getattr(norm, "_module", norm).weight.detach().float().cpu().numpy().astype(np.float64)
    return np.linalg.qr((1.0 + w)[:, None] * np.asarray(U, dtype=np.float64))[0]


def _has_head_edit(project_out) -> bool:
    """Whether :func:`~sinkwidgets.interventions.project_out` can remove one head's own write (``head=``)."""
    import inspect

    return "head" in inspect.signature(project_out).parameters
