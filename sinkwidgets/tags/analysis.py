"""Catch and tag on a :class:`~sinkwidgets.tags.TagData` (numpy only).

Definitions follow Zhang, Khan & Papyan, "Attention Sinks: A 'Catch, Tag, Release' Mechanism for Embeddings"
(arXiv 2502.00919, §3; the paper's exact estimators are not public, these are the package's operational versions,
see ``docs/tags.md``), with α from Gu et al. (arXiv 2410.10781, §3.2). For head ``(l, h)`` of a causal model with
attention ``A [T, T]``, values after the output projection ``g_j = v_j W_O^h`` and outputs
``o_t = sum_j A[t, j] g_j``:

- **α** of key ``k``: ``alpha_k = 1/(T - k) * sum_{t >= k} A[t, k]`` (Gu et al.).
- **sinks** ``S`` of a prompt: keys with ``alpha_k > eps`` (``eps = 0.2``, the paper's threshold) that have at least
  ``min_later`` later queries (token 0 always qualifies); α of a key seen by two queries says nothing.
- **catch**: the caught set of sink ``s`` is ``C_s = {t > s : A[t, s] > tau}``; its catch score is the mean of
  ``A[t, s]`` over ``C_s``; ``|C_s|`` and the longest run of consecutive caught positions are reported.
- **tag vector** of sink ``s``: ``g_s``; **tag subspace** ``U [d, r]``: the top-``r`` right singular vectors of the
  (uncentred) stack of the ``g_s`` over prompts.
- **tag EV**: ``EV(U) = ||(O - mean O) U||_F^2 / ||O - mean O||_F^2`` over the head's outputs at tokens ``t >= 1``.

Defaults come from a pilot on SmolLM2-135M and Gemma-3-270M (``docs/tags.md``): ``eps = 0.2`` marks every head of
both models as "having a sink", so sink *heads* are selected by ``alpha_0 >= 0.5`` (first-token heads) or by a
non-first boundary α ``>= 0.25`` in ``>= 90%`` of prompts (prompt-dependent heads); ``tau = 0.3`` for catch
(at 0.5 SmolLM2 shows almost nothing).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .._args import ArgumentTypeError, show
from .._args import array as check_array
from .._args import fraction as check_fraction
from .._args import generator as check_generator
from .._args import head as check_head
from .._args import heads as check_heads
from .._args import integer as check_integer
from .._args import layer as check_layer
from .._args import number as check_number
from .._args import seed as check_seed
from ..errors import SinkwidgetsError, SinkwidgetsValueError
from .data import TagData

#: The paper's sink threshold on α (Zhang et al., §K.2).
EPS = 0.2
#: Catch threshold on ``A[t, s]``; 0.3 shows SmolLM2's catching, 0.5 almost nothing (pilot).
TAU = 0.3
#: First-token (prompt-independent) sink heads: mean α of token 0 at least this.
ALPHA0 = 0.5
#: Prompt-dependent (boundary) sink heads: boundary α at least this ...
BOUNDARY_ALPHA = 0.25
#: ... in at least this share of the prompts.
BOUNDARY_SHARE = 0.9
#: A key needs at least this many later queries for its α to count (α of a late key is an average of few rows).
MIN_LATER = 5
#: Characters that make a token a sentence boundary (after stripping spaces); newline-only tokens count too.
BOUNDARY_CHARS = frozenset(".!?\n")


class NotCollectedError(SinkwidgetsError, KeyError):
    """Something this TagData does not hold (a head, its attention maps, a pooled layer); a ``KeyError`` as
    before, and a :class:`~sinkwidgets.errors.SinkwidgetsError`."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


#: What the analyses read from a TagData (a stand-in with all of these is accepted, see :func:`_data_arg`).
_TAGDATA_API = ("heads", "offsets", "n_prompts", "n_tokens", "sink_scores", "values", "outputs", "alpha", "span",
                "positions", "prompt_of")


def _data_arg(data: Any, name: str = "data") -> TagData:
    """``data`` if it is a :class:`TagData` (or a view that reads like one, e.g. TagExplorer's ``FiniteRows``);
    otherwise an :class:`ArgumentTypeError` saying how to get one."""
    if not isinstance(data, TagData) and not all(hasattr(data, a) for a in _TAGDATA_API):
        raise ArgumentTypeError(f"{name}={show(data)} ({type(data).__name__}): give a TagData, e.g. "
                                f"{name}=sw.tags.collect(model, texts, heads=[(2, 2)]) or TagData.load('tags.npz')")
    return data


def _dims(data: TagData) -> tuple[int | None, int | None]:
    """The model's numbers of layers and heads as far as ``data`` knows them (from ``sink_scores [L, H, n_tok]``)."""
    s = _data_arg(data).sink_scores
    return (int(s.shape[0]), int(s.shape[1])) if s is not None and s.ndim == 3 else (None, None)


def _head_arg(data: TagData, value: Any, name: str = "head") -> tuple[int, int]:
    """``value`` as a collected ``(layer, head)`` of ``data`` (``sinkwidgets._args.head``: a pair or ``"L2H2"``;
    negative indices count from the end when ``data`` knows the model's dimensions)."""
    L, H = _dims(data)
    h = check_head(name, _plain_head(value), L, H)
    try:
        data.head_slot(h)
    except KeyError as exc:
        raise NotCollectedError(exc.args[0] if exc.args else str(exc)) from None
    return h


def _plain_head(value: Any) -> Any:
    """A :class:`HeadRecord` (from :func:`sink_heads`) as its ``(layer, head)`` pair; anything else unchanged."""
    return (value.layer, value.head) if isinstance(value, HeadRecord) else value


def _heads_arg(name: str, value: Any, data: TagData) -> list[tuple[int, int]]:
    """``sinkwidgets._args.heads`` (pairs, ``"L2H2"``, ``[P, 2]`` arrays; :class:`HeadRecord` s too) against the
    model's dimensions as far as ``data`` knows them; ``"all"`` is not accepted (list the heads)."""
    if isinstance(value, (list, tuple)):
        value = [_plain_head(v) for v in value]
    return check_heads(name, _plain_head(value), *_dims(data), allow_all=False)


def _finite_rows(name: str, M: np.ndarray, data: TagData | None = None) -> None:
    """Refuse non-finite rows of ``M [n, d]`` with an error that counts and names them (docs/tags.md, "Non-finite
    data": the analyses never use a NaN row silently; TagExplorer leaves such rows out and says so)."""
    M = np.asarray(M)
    if M.ndim != 2 or np.isfinite(M).all():
        return
    bad = np.nonzero(~np.isfinite(M).all(axis=1))[0]
    if data is not None:
        where = [f"prompt {int(data.prompt_of[r])} pos {int(data.positions[r])}" for r in bad[:5]]
    else:
        where = [f"row {int(r)}" for r in bad[:5]]
    more = f" and {len(bad) - 5} more" if len(bad) > 5 else ""
    raise SinkwidgetsValueError(
        f"{name}: {len(bad)} of {len(M)} rows hold NaN or infinity ({', '.join(where)}{more}); an fp16 overflow is "
        "enough. Collect again in float32, or leave those tokens out (TagExplorer does: see docs/tags.md, "
        "'Non-finite data')")


def _rows(name: str, X: Any, min_rows: int = 1) -> np.ndarray:
    """``X`` as a finite float64 ``[n, d]`` matrix (``sinkwidgets._args.array``; non-finite rows are refused naming
    them, docs/tags.md "Non-finite data")."""
    return check_array(name, X, ndim=2, shape="[n, d]", min_rows=min_rows)


def _subspace(name: str, U: Any, d: int, *, orthonormal: bool = True) -> np.ndarray:
    """``U`` as a finite float64 ``[d, r]`` basis (a vector ``[d]`` is one column) of the width ``d`` of the data;
    with ``orthonormal``, ``U.T @ U`` must be the identity (to 1e-4): the formulas that take an orthonormal ``U``
    give numbers above 1 for any other matrix, so it is refused rather than used."""
    U = _column(U)
    U = check_array(name, U, ndim=2, shape="[d, r]", example="tags.tag_subspace(G, rank=2)")
    if U.shape[0] != d:
        hint = " (it looks transposed: pass U.T)" if U.shape[1] == d else ""
        raise SinkwidgetsValueError(f"{name}: the subspace is [d, r] with d = {d} (the width of the data), got shape "
                                    f"{list(U.shape)}{hint}")
    if orthonormal and not np.allclose(U.T @ U, np.eye(U.shape[1]), atol=1e-4):
        raise SinkwidgetsValueError(f"{name}: the columns of U [{d}, {U.shape[1]}] are not orthonormal (U.T @ U is not "
                                    "the identity), so the share would be meaningless; orthonormalise first: "
                                    f"{name}=np.linalg.qr({name})[0]")
    return U


def _column(U: Any) -> Any:
    """A numeric vector ``[d]`` as one column ``[d, 1]``; anything else unchanged (checked by the caller)."""
    if isinstance(U, (list, tuple, np.ndarray)):
        try:
            arr = np.asarray(U)
        except (TypeError, ValueError):
            return U
        if arr.ndim == 1 and arr.dtype.kind in "fiub":
            return arr[:, None]
    return U


def _tokens_arg(name: str, tokens: Any) -> list[str]:
    """A list of token strings (a string is not a list of tokens)."""
    if isinstance(tokens, (str, bytes)) or not isinstance(tokens, (list, tuple, np.ndarray)):
        raise ArgumentTypeError(f"{name}={show(tokens)} ({type(tokens).__name__}): give a list of token strings, "
                                f"e.g. {name}=['The', ' cat', '.']")
    items = list(tokens.tolist() if isinstance(tokens, np.ndarray) else tokens)
    for i, t in enumerate(items):
        if not isinstance(t, str):
            raise ArgumentTypeError(f"{name}={show(tokens)}: token {i} is {show(t)} ({type(t).__name__}), not a "
                                    f"string; give the tokens as strings, e.g. {name}=['The', ' cat', '.']")
    return items


# ----------------------------------------------------------------------------- boundaries and sinks
def is_boundary(token: str) -> bool:
    """True for sentence-boundary tokens: ``'.'``, ``'!'``, ``'?'``, newlines, and mixes such as ``'.\\n'``."""
    if not isinstance(token, str):
        raise ArgumentTypeError(f"token={show(token)} ({type(token).__name__}): a token is a string, e.g. token='.'")
    s = token.strip(" \t")
    return bool(s) and all(c in BOUNDARY_CHARS for c in s)


def boundary_mask(tokens: Sequence[str]) -> np.ndarray:
    """``[T]`` bool: which tokens are sentence boundaries (:func:`is_boundary`). ``tokens``: a list of strings."""
    return np.array([is_boundary(t) for t in _tokens_arg("tokens", tokens)], dtype=bool)


def _square_map(name: str, A: Any) -> np.ndarray:
    A = check_array(name, A, ndim=2, shape="[T, T]", example="data.attention_map((2, 2), 0)")
    if A.shape[0] != A.shape[1]:
        raise SinkwidgetsValueError(f"{name}: an attention map is square [T, T], got shape {list(A.shape)}")
    return A


def alpha_from_map(A: np.ndarray) -> np.ndarray:
    """Gu et al. α of a causal map ``A [T, T]``: ``alpha_k = mean_{t >= k} A[t, k]``, ``[T]``. Non-finite maps are
    refused (``SinkwidgetsValueError`` naming the rows)."""
    A = _square_map("A", A)
    T = A.shape[0]
    return np.tril(A).sum(0) / (T - np.arange(T))


def sink_positions(alpha: np.ndarray, eps: float = EPS, min_later: int = MIN_LATER) -> np.ndarray:
    """Sinks of one prompt and head: positions ``k`` with ``alpha[k] > eps`` and (``k == 0`` or at least
    ``min_later`` later queries, ``T - 1 - k >= min_later``). ``alpha [T]`` must be finite (a NaN is never read
    as "not a sink" silently); ``eps`` a finite number, ``min_later`` an integer >= 0."""
    alpha = check_array("alpha", alpha, ndim=1, shape="[T]", min_rows=0, example="data.alpha((2, 2))[data.span(0)]")
    if not isinstance(eps, float) or not np.isfinite(eps):
        eps = check_number("eps", eps, example=EPS)
    if not (type(min_later) is int and min_later >= 0):
        min_later = check_integer("min_later", min_later, minimum=0, example=MIN_LATER)
    T = len(alpha)
    k = np.arange(T)
    return np.nonzero((alpha > eps) & ((k == 0) | (T - 1 - k >= min_later)))[0]


@dataclass(frozen=True)
class HeadRecord:
    """One head in a ranking: ``alpha`` is the mean score over prompts, ``share`` the share of prompts at or above
    the selection threshold, ``n_prompts`` the prompts that entered the mean."""

    layer: int
    head: int
    alpha: float
    share: float = float("nan")
    n_prompts: int = 0

    @property
    def name(self) -> str:
        return f"L{self.layer}H{self.head}"

    def __iter__(self):  # unpacks as (layer, head), so a record can be passed wherever a head is expected
        return iter((self.layer, self.head))


class HeadRanking(list):
    """A list of :class:`HeadRecord` that prints as a small table."""

    title = "heads"

    def __str__(self) -> str:
        lines = [self.title, f"  {'head':<8}{'alpha':>8}{'share':>8}{'prompts':>9}"]
        lines += [f"  {r.name:<8}{r.alpha:>8.3f}{r.share:>8.2f}{r.n_prompts:>9d}" for r in self]
        return "\n".join(lines)

    def _repr_pretty_(self, p, cycle):  # IPython
        p.text(str(self))


def _require_scores(data: TagData) -> np.ndarray:
    if _data_arg(data).sink_scores is None:
        raise SinkwidgetsValueError("this TagData has no sink_scores (α of every head); collect it with summary=True")
    return data.sink_scores


def boundary_alpha(data: TagData, min_later: int = MIN_LATER) -> np.ndarray:
    """Per prompt and head, the largest α among non-first boundary tokens with ``>= min_later`` later queries,
    ``[N, L, H]`` (NaN for a prompt without such a token). ``min_later``: an integer >= 0."""
    scores = _require_scores(data)
    min_later = check_integer("min_later", min_later, minimum=0, example=MIN_LATER)
    L, H = scores.shape[:2]
    out = np.full((data.n_prompts, L, H), np.nan, np.float32)
    for i in range(data.n_prompts):
        sl = data.span(i)
        T = sl.stop - sl.start
        ok = boundary_mask(data.tokens[i]) & (np.arange(T) >= 1) & (T - 1 - np.arange(T) >= min_later)
        if ok.any():
            out[i] = scores[:, :, sl][:, :, ok].max(-1)
    return out


def boundary_heads_from_data(data: TagData, *, threshold: float = BOUNDARY_ALPHA, min_later: int = MIN_LATER,
                             top: int | None = None) -> HeadRanking:
    """Heads ranked by mean non-first boundary α over the prompts (highest first).

    ``share`` is the share of prompts whose boundary α is ``>= threshold``. Prompts without a boundary token that
    has ``min_later`` later queries are left out (``n_prompts`` counts the rest). ``threshold``: a finite number;
    ``top``: an integer >= 1 or None (all heads).
    """
    threshold = check_number("threshold", threshold, example=BOUNDARY_ALPHA)
    top = check_integer("top", top, minimum=1, allow_none=True, example=10)
    return _rank_boundary(boundary_alpha(data, min_later), threshold, min_later, top)


def _rank_boundary(ba: np.ndarray, threshold: float, min_later: int, top: int | None) -> HeadRanking:
    """:func:`boundary_heads_from_data` on a computed :func:`boundary_alpha` ``ba [N, L, H]``."""
    valid = ~np.isnan(ba[:, 0, 0])
    if not valid.any():
        raise SinkwidgetsValueError(f"no prompt has a non-first boundary token ('.', '!', '?', newline) with >= {min_later} "
                         "later tokens; pass texts of several sentences")
    ba = ba[valid].astype(np.float64)
    mean, share = ba.mean(0), (ba >= threshold).mean(0)
    order = np.argsort(-mean, axis=None, kind="stable")
    H = mean.shape[1]
    out = HeadRanking(HeadRecord(int(f // H), int(f % H), float(mean.flat[f]), float(share.flat[f]), int(valid.sum()))
                      for f in order[: top if top is not None else len(order)])
    out.title = f"heads by mean non-first boundary α ({int(valid.sum())} prompts; share: α >= {threshold})"
    return out


@dataclass
class SinkHeads:
    """Sink heads selected with the pilot's defaults: ``first_token`` (mean α of token 0 ``>= alpha0``) and
    ``boundary`` (non-first boundary α ``>= boundary_alpha`` in ``>= share`` of the prompts)."""

    first_token: HeadRanking
    boundary: HeadRanking

    def __str__(self) -> str:
        return f"{self.first_token}\n{self.boundary}"

    def all(self) -> list[tuple[int, int]]:
        """Both kinds, first-token heads first, without duplicates."""
        seen: dict[tuple[int, int], None] = {}
        for r in [*self.first_token, *self.boundary]:
            seen.setdefault((r.layer, r.head))
        return list(seen)


def sink_heads(data: TagData, *, alpha0: float = ALPHA0, boundary_alpha_min: float = BOUNDARY_ALPHA,
               share: float = BOUNDARY_SHARE, min_later: int = MIN_LATER, max_layer: int | None = None) -> SinkHeads:
    """Select sink heads (pilot defaults; ``eps = 0.2`` alone would select every head of SmolLM2 and Gemma-3).

    First-token heads: mean over prompts of α₀ (Gu et al. α of position 0) ``>= alpha0``, ranked by it.
    Boundary heads: non-first boundary α ``>= boundary_alpha_min`` in ``>= share`` of prompts, ranked by mean.
    ``max_layer`` keeps heads in layers ``<= max_layer`` only (an index in ``0..L-1``; negative counts from the
    end, ``-1`` is the last layer; out of range is an error).
    """
    scores = _require_scores(data)
    L, H = scores.shape[:2]
    alpha0 = check_number("alpha0", alpha0, example=ALPHA0)
    boundary_alpha_min = check_number("boundary_alpha_min", boundary_alpha_min, example=BOUNDARY_ALPHA)
    share = check_fraction("share", share, example=BOUNDARY_SHARE)
    min_later = check_integer("min_later", min_later, minimum=0, example=MIN_LATER)
    if max_layer is not None:
        max_layer = check_layer("max_layer", max_layer, L)
    a0 = scores[:, :, data.offsets[:-1]].astype(np.float64).mean(-1)  # [L, H]
    keep = a0 >= alpha0
    if max_layer is not None:
        keep[max_layer + 1:] = False
    order = [int(f) for f in np.argsort(-a0, axis=None, kind="stable") if keep.flat[f]]
    first = HeadRanking(HeadRecord(f // H, f % H, float(a0.flat[f]), 1.0, data.n_prompts) for f in order)
    first.title = f"first-token sink heads (mean α₀ >= {alpha0})"
    ba = boundary_alpha(data, min_later)
    if np.isnan(ba[:, 0, 0]).all():  # no sentence boundary in any prompt
        ranked = HeadRanking()
    else:
        ranked = _rank_boundary(ba, boundary_alpha_min, min_later, None)
    bnd = HeadRanking(r for r in ranked if r.share >= share and (max_layer is None or r.layer <= max_layer))
    bnd.title = f"boundary sink heads (boundary α >= {boundary_alpha_min} in >= {share:.0%} of prompts)"
    return SinkHeads(first, bnd)


# ----------------------------------------------------------------------------- catch
@dataclass
class CatchResult:
    """Catch of one head at threshold ``tau``.

    ``sinks``: one record per (prompt, sink) with ``prompt``, ``sink`` (position), ``token``, ``alpha``,
    ``n_caught`` (``|C_s|``), ``run_length`` (longest run of consecutive caught positions) and ``score`` (mean
    ``A[t, s]`` over ``C_s``; NaN when nothing is caught). ``catch_rate``: the share of non-boundary tokens after
    each prompt's first non-first boundary token (sentences 2, 3, ...) whose attention on some earlier non-first
    boundary token exceeds ``tau``, pooled over prompts (``n_later`` such tokens).
    """

    head: tuple[int, int]
    tau: float
    sinks: list[dict] = field(default_factory=list)
    catch_rate: float = float("nan")
    n_later: int = 0
    n_prompts: int = 0

    def __str__(self) -> str:
        l, h = self.head
        caught = [s for s in self.sinks if s["n_caught"] > 0]
        first = [s for s in self.sinks if s["sink"] == 0]
        other = [s for s in self.sinks if s["sink"] > 0]

        def mean(rows, key):
            vals = [r[key] for r in rows if np.isfinite(r[key])]
            return float(np.mean(vals)) if vals else float("nan")

        return "\n".join([
            f"catch of L{l}H{h} at tau = {self.tau} ({self.n_prompts} prompts, {len(self.sinks)} sinks)",
            f"  catch rate of later sentences   {self.catch_rate:.3f}  ({self.n_later} tokens)",
            f"  sinks that catch something      {len(caught)}/{len(self.sinks)}",
            f"  token-0 sinks: mean |C_s|       {mean(first, 'n_caught'):.2f}   score {mean(first, 'score'):.3f}",
            f"  later sinks:   mean |C_s|       {mean(other, 'n_caught'):.2f}   score {mean(other, 'score'):.3f}",
        ])

    def _repr_pretty_(self, p, cycle):
        p.text(str(self))


def caught_set(A: np.ndarray, s: int, tau: float = TAU) -> np.ndarray:
    """``C_s = {t > s : A[t, s] > tau}`` of a map ``A [T, T]`` (finite, square); ``s`` a position in ``0..T-1``
    (negative counts from the end), ``tau`` a finite number."""
    A = _square_map("A", A)
    T = A.shape[0]
    s = check_integer("s", s, minimum=-T, maximum=T - 1, example=0) % T
    if not isinstance(tau, float) or not np.isfinite(tau):
        tau = check_number("tau", tau, example=TAU)
    col = A[s + 1:, s]
    return np.nonzero(col > tau)[0] + s + 1


def _longest_run(pos: np.ndarray) -> int:
    if not len(pos):
        return 0
    breaks = np.nonzero(np.diff(pos) != 1)[0]
    edges = np.concatenate([[-1], breaks, [len(pos) - 1]])
    return int(np.diff(edges).max())


def later_sentence_catch(A: np.ndarray, tokens: Sequence[str], tau: float = TAU) -> tuple[int, int]:
    """``(caught, total)`` for one prompt: non-boundary tokens after the first non-first boundary token, and how
    many of them put more than ``tau`` of their attention on some earlier non-first boundary token."""
    bmask = boundary_mask(tokens)
    bmask[0] = False
    b = np.nonzero(bmask)[0]
    if not len(b):
        return 0, 0
    A = np.asarray(A)
    caught = total = 0
    for t in range(int(b[0]) + 1, len(tokens)):
        if bmask[t]:
            continue
        earlier = b[b < t]
        total += 1
        caught += int(A[t, earlier].max() > tau)
    return caught, total


def catch(data: TagData, head: Any, tau: float = TAU, *, eps: float = EPS, min_later: int = MIN_LATER) -> CatchResult:
    """Caught sets, catch scores and run lengths of ``head``'s sinks, and the catch rate of later sentences.

    Needs the head's attention maps (``collect(..., maps=[head])``). See :class:`CatchResult` for the fields.
    """
    head = check_head("head", _plain_head(head), *_dims(data))
    tau = check_number("tau", tau, low=0, high=1, low_open=True, high_open=True, example=TAU)
    eps = check_number("eps", eps, example=EPS)
    min_later = check_integer("min_later", min_later, minimum=0, example=MIN_LATER)
    if data.n_prompts:
        try:
            data.attention_map(head, 0)
        except KeyError as exc:
            raise NotCollectedError(exc.args[0] if exc.args else str(exc)) from None
    res = CatchResult(head=head, tau=float(tau), n_prompts=data.n_prompts)
    caught_total = later_total = 0
    for i in range(data.n_prompts):
        A = data.attention_map(head, i)
        alpha = alpha_from_map(A) if data.sink_scores is None else data.alpha(head)[data.span(i)]
        for s in sink_positions(alpha, eps, min_later):
            C = caught_set(A, int(s), tau)
            res.sinks.append({"prompt": i, "sink": int(s), "token": data.tokens[i][s], "alpha": float(alpha[s]),
                              "n_caught": int(len(C)), "run_length": _longest_run(C),
                              "score": float(A[C, s].mean()) if len(C) else float("nan")})
        c, t = later_sentence_catch(A, data.tokens[i], tau)
        caught_total += c
        later_total += t
    res.n_later = later_total
    res.catch_rate = caught_total / later_total if later_total else float("nan")
    return res


# ----------------------------------------------------------------------------- tag
def _precision(X: np.ndarray, precision: Any = None) -> np.dtype:
    """The float dtype whose rounding bounds the data ``X``: ``precision`` when given, else ``X``'s own dtype when
    it is float32 or coarser, else float32 (activations are stored as float32 in :class:`TagData`, and
    :func:`tag_vectors` returns them cast to float64: the cast adds digits, not precision)."""
    if precision is not None:
        try:
            dt = np.dtype(precision)
        except TypeError:
            raise ArgumentTypeError(f"precision={show(precision)}: give a float dtype (np.float32, np.float64) or "
                                    "None (float32, the precision of collected activations)") from None
        if dt.kind != "f":
            raise SinkwidgetsValueError(f"precision={show(precision)}: give a float dtype (np.float32, np.float64)"
                                        " or None")
        return dt
    dt = np.asarray(X).dtype
    return dt if dt.kind == "f" and np.finfo(dt).eps >= np.finfo(np.float32).eps else np.dtype(np.float32)


def _span_rank(s: np.ndarray, shape: tuple[int, int], precision: Any = np.float32) -> int:
    """The numerical rank of a matrix of ``shape`` with singular values ``s``: the count of ``s_k > s_1 ·
    max(n, d) · eps``, ``eps`` that of the data's precision (float32 for collected activations, even when cast to
    float64 for the SVD). Rows that differ only by float32 rounding (the same ``<bos>`` value computed in
    differently padded batches: ``s_2 / s_1 ~ 4e-8`` for Gemma-3-270M L14H2 on 30 paragraphs) span one
    dimension, not two."""
    eps = np.finfo(np.dtype(precision)).eps
    return int((s > s.max(initial=0.0) * max(shape) * eps).sum()) if s.size else 0


def numerical_rank(vectors: np.ndarray, precision: Any = None) -> int:
    """How many dimensions the rows of ``vectors [n, d]`` span at their precision (the rule of
    :func:`tag_subspace`): singular values above ``s_1 · max(n, d) · eps(precision)``; ``precision`` as in
    :func:`tag_subspace` (default float32, the precision of collected activations)."""
    X = np.asarray(vectors)
    dt = _precision(X, precision)
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2 or X.size == 0:
        raise SinkwidgetsValueError(f"vectors: give a non-empty [n, d] array, got shape {list(X.shape)}")
    return _span_rank(np.linalg.svd(X, compute_uv=False), X.shape, dt)


def _spans_rank(X: np.ndarray, rank: int, precision: Any = None) -> bool:
    """Whether the rows ``X [n, d]`` span at least ``rank`` dimensions at their precision (what
    :func:`tag_subspace` needs)."""
    dt = _precision(X, precision)
    X = np.asarray(X, dtype=np.float64)
    return (X.ndim == 2 and X.shape[0] >= rank
            and _span_rank(np.linalg.svd(X, compute_uv=False), X.shape, dt) >= rank)


def _orthonormal_top(X: np.ndarray, rank: int, precision: Any = None) -> np.ndarray:
    """Top-``rank`` right singular vectors of ``X [n, d]`` (uncentred), ``[d, rank]``. Refused when ``X`` has
    fewer than ``rank`` rows or its rows span fewer than ``rank`` dimensions at their precision (the SVD would pad
    with directions of singular value 0, or of float rounding noise: arbitrary, not in the data)."""
    dt = _precision(X, precision)
    X = np.asarray(X, dtype=np.float64)
    if X.shape[0] < rank:
        raise SinkwidgetsValueError(f"rank={rank}: rank {rank} needs at least {rank} vectors, got {X.shape[0]}; "
                                    "lower rank or use more prompts")
    _, sv, vt = np.linalg.svd(X, full_matrices=False)
    k = _span_rank(sv, X.shape, dt)
    if k < rank:
        ratio = sv[k] / sv[0] if sv.size > k and sv[0] > 0 else 0.0
        raise SinkwidgetsValueError(
            f"rank={rank}: the {X.shape[0]} vectors span only {k} dimension{'s' if k != 1 else ''} at "
            f"{dt.name} precision (numerical rank {k}: s_{k + 1}/s_1 = {ratio:.2g}, below the tolerance "
            f"{max(X.shape)} * eps = {max(X.shape) * np.finfo(dt).eps:.2g}; repeated or collinear rows, e.g. the "
            f"value of the same first token in every prompt), so {rank - k} of the {rank} directions would be "
            f"arbitrary; lower rank to {max(k, 1)} or use more prompts with different tokens")
    U = vt[:rank].T
    # fix the sign so that the subspace is reproducible: each column points along the mean of X
    signs = np.sign(X.sum(0) @ U)
    return U * np.where(signs == 0, 1.0, signs)


def tag_vectors(data: TagData, head: Any, prompts: Sequence[int] | None = None, *, eps: float = EPS,
                min_later: int = MIN_LATER) -> tuple[np.ndarray, np.ndarray]:
    """Tag vectors ``g_s = v_s W_O^h`` of the head's sinks in the given prompts (default all).

    Returns ``(G [n_sinks, d], where [n_sinks, 2])`` with ``(prompt, position)`` of each sink. ``prompts``: prompt
    indices (a list, tuple, ``range`` or 1-D integer array; negative counts from the end) or None (all).
    """
    head = _head_arg(data, head)
    eps = check_number("eps", eps, example=EPS)
    min_later = check_integer("min_later", min_later, minimum=0, example=MIN_LATER)
    n = data.n_prompts
    if prompts is not None:
        if isinstance(prompts, np.ndarray) and prompts.ndim == 1:
            prompts = prompts.tolist()
        if not isinstance(prompts, (list, tuple, range)):
            raise ArgumentTypeError(f"prompts={show(prompts)} ({type(prompts).__name__}): give prompt indices as a list "
                                    "or range of ints, e.g. prompts=range(0, 8), or None for all prompts")
        prompts = [check_integer("prompts", i, minimum=-n, maximum=n - 1, example=0) % n for i in prompts]
    V = data.values(head)
    alpha = data.alpha(head)
    rows, where = [], []
    for i in range(n) if prompts is None else prompts:
        sl = data.span(int(i))
        for s in sink_positions(alpha[sl], eps, min_later):
            rows.append(sl.start + int(s))
            where.append((int(i), int(s)))
    return V[rows].astype(np.float64), np.asarray(where, dtype=np.int64).reshape(-1, 2)


def tag_subspace(vectors: np.ndarray, rank: int = 1, *, precision: Any = None) -> np.ndarray:
    """Tag subspace ``U [d, rank]``: top-``rank`` right singular vectors of the uncentred tag vectors
    ``[n_sinks, d]`` (the span of the sinks' values, Zhang et al. §3; a reviewer's summary: "a component in a
    distinctive direction ... given by the span of the value states corresponding to the sink tokens").

    Non-finite rows are refused with an error naming them, and all-zero vectors (0/0) too (docs/tags.md,
    "Non-finite data"); so are fewer than ``rank`` vectors, and vectors that span fewer than ``rank`` dimensions
    (repeated rows: the extra directions would be arbitrary), with the fix (lower ``rank``, or more prompts).

    "Span" is numerical, at the data's precision: a singular value ``s_k`` counts only when
    ``s_k > s_1 · max(n_sinks, d) · eps(precision)``. ``precision``: the float dtype the vectors were computed in;
    default None: the vectors' own dtype when float32 or coarser, else float32 (collected activations are float32;
    :func:`tag_vectors` casts them to float64, which adds digits, not precision); give ``np.float64`` for data
    computed in float64. (Gemma-3-270M L14H2: every sink is ``<bos>``, the rows differ by float32 rounding only,
    ``s_2 / s_1 ~ 4e-8``, so its tag vectors span one dimension and ``rank=2`` is refused.)"""
    rank = check_integer("rank", rank, minimum=1, example=1)
    dt = _precision(vectors if isinstance(vectors, np.ndarray) else np.float64(0), precision)
    try:
        V = np.asarray(vectors, dtype=np.float64)
    except (TypeError, ValueError):
        raise ArgumentTypeError(f"vectors={show(vectors)}: give tag vectors as a [n_sinks, d] float array") from None
    if V.ndim != 2 or V.shape[1] < 1:
        raise SinkwidgetsValueError(f"vectors: tag vectors are [n_sinks, d], got shape {list(V.shape)}")
    if rank > V.shape[1]:
        raise SinkwidgetsValueError(f"rank={rank} exceeds the width d={V.shape[1]}; use rank <= {V.shape[1]}")
    _finite_rows("vectors", V)
    if not V.any():  # 0/0: an SVD of zeros returns coordinate axes, which would read as a tag subspace
        raise SinkwidgetsValueError(f"vectors: all {V.shape[0]} tag vectors are zero, so they span no subspace; give "
                                    "the values of sink tokens (tags.tag_vectors(data, head)), not zeros")
    return _orthonormal_top(V, rank, dt)


def explained_variance(X: np.ndarray, U: np.ndarray) -> float:
    """``||(X - mean X) U||_F^2 / ||X - mean X||_F^2`` for rows ``X [n, d]`` and an orthonormal ``U [d, r]`` (a
    vector ``[d]`` is one column).

    Refused with a :class:`~sinkwidgets.errors.SinkwidgetsValueError`: non-finite rows of ``X`` (named), a ``U``
    that is not orthonormal or not ``d`` wide, and an ``X`` without variance (all rows equal: the share is 0/0)."""
    Xc = _rows("X", X)
    U = _subspace("U", U, Xc.shape[1])
    Xc = Xc - Xc.mean(0)
    total = float(np.einsum("ij,ij->", Xc, Xc))
    if total == 0:
        raise SinkwidgetsValueError(f"X: the {len(Xc)} rows have no variance (all rows are equal), so no share of it "
                                    "can be explained; give rows that differ (at least 2)")
    P = Xc @ U
    return float(np.einsum("ij,ij->", P, P) / total)


def pc_bound(X: np.ndarray, rank: int) -> float:
    """Largest EV any ``rank``-dim subspace reaches on ``X [n, d]``: its top-``rank`` principal components,
    ``sum_{i <= rank} s_i^2 / sum_i s_i^2`` (``s`` the singular values of the centred ``X``).

    ``rank``: an integer in ``1..d``. Non-finite rows of ``X`` are refused (named), as is an ``X`` without variance."""
    Xc = _rows("X", X)
    rank = check_integer("rank", rank, minimum=1, maximum=Xc.shape[1], example=1)
    Xc = Xc - Xc.mean(0)
    s = np.linalg.svd(Xc, compute_uv=False) ** 2
    if not s.sum() > 0:
        raise SinkwidgetsValueError(f"X: the {len(Xc)} rows have no variance (all rows are equal), so there are no "
                                    "principal components; give rows that differ (at least 2)")
    return float(s[:rank].sum() / s.sum())


def random_subspace(d: int, rank: int, rng: np.random.Generator) -> np.ndarray:
    """A uniformly random (Haar) ``rank``-dim subspace of R^d, ``[d, rank]`` orthonormal. ``d >= 1``,
    ``rank`` in ``1..d``; ``rng`` a ``numpy.random.Generator`` (or a seed, an integer >= 0)."""
    if not (type(d) is int and type(rank) is int and 1 <= rank <= d):
        d = check_integer("d", d, minimum=1, example=64)
        rank = check_integer("rank", rank, minimum=1, maximum=d, example=1)
    rng = check_generator("rng", rng)
    q, r = np.linalg.qr(rng.standard_normal((d, rank)))
    return q * np.sign(np.diag(r))


def norm_fraction(X: np.ndarray, U: np.ndarray) -> float:
    """Share of the norm of the rows ``X [n, d]`` (uncentred) that lies in the subspace of an orthonormal
    ``U [d, r]``: ``||X U||_F / ||X||_F`` (the square root of the energy share, so a random ``r``-dim subspace
    gives about ``sqrt(r / d)``: 0.06 for ``r = 2`` in SmolLM2's ``d = 576``). This is what :func:`release` removes
    when it projects ``U`` out of the residual rows ``X`` at the edited positions.

    Refused with a :class:`~sinkwidgets.errors.SinkwidgetsValueError`: non-finite rows of ``X`` (named), a ``U``
    that is not orthonormal or not ``d`` wide, and an all-zero ``X`` (no norm to share)."""
    X = _rows("X", X)
    U = _subspace("U", U, X.shape[1])
    total = float(np.einsum("ij,ij->", X, X))
    if total == 0:
        raise SinkwidgetsValueError(f"X: the {len(X)} rows are all zeros, so no share of their norm lies anywhere; "
                                    "give non-zero rows")
    P = X @ U
    return float(np.sqrt(np.einsum("ij,ij->", P, P) / total))


def norm_matched_subspace(X: np.ndarray, target: float, rng: np.random.Generator) -> np.ndarray:
    """A random subspace that removes the same share of the norm of ``X [n, d]`` as a given subspace.

    The columns of a uniformly random (Haar) orthonormal basis of R^d are taken in order until
    :func:`norm_fraction` of their span on ``X`` reaches ``target``; returns ``[d, m]`` (``m`` is chosen by the
    data: about ``target^2 * d`` when ``X`` has no preferred direction, so a tag that holds 0.20 of the norm of
    SmolLM2's residual is matched by ~23 random directions). ``target >= 1`` returns all ``d`` directions.
    """
    X = _rows("X", X)
    target = check_number("target", target, low=0, low_open=True, example=0.2)
    d = X.shape[1]
    Q = random_subspace(d, d, rng)
    energy = np.cumsum(np.einsum("ij,ij->j", X @ Q, X @ Q))
    total = float(np.einsum("ij,ij->", X, X))
    if total == 0:
        raise SinkwidgetsValueError("norm_matched_subspace: X is all zeros, there is no norm to match")
    m = int(np.searchsorted(np.sqrt(energy / total), target) + 1)
    return Q[:, : min(m, d)]


def subspace_cosine(U: np.ndarray, W: np.ndarray) -> float:
    """Mean cosine of the principal angles between two subspaces (``|u . w|`` for rank 1)."""
    s = np.linalg.svd(np.asarray(U, np.float64).T @ np.asarray(W, np.float64), compute_uv=False)
    return float(np.clip(s, 0, 1).mean())


def split_prompts(n: int, fraction: float = 0.5, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A seeded random split of ``range(n)`` into a fit part (``fraction``) and an evaluation part."""
    n = check_integer("n", n, example=16)
    if n < 2:
        raise SinkwidgetsValueError(f"a held-out split needs at least 2 prompts, got {n}; collect more prompts")
    fraction = check_fraction("split", fraction, low_open=True, high_open=True)
    seed = check_seed("seed", seed)
    perm = np.random.default_rng(seed).permutation(n)
    k = min(max(int(round(n * fraction)), 1), n - 1)
    return np.sort(perm[:k]), np.sort(perm[k:])


@dataclass
class TagEV:
    """Tag EV of one head with its controls, all on the same held-out tokens.

    - ``ev``: EV of the tag subspace fitted on the fit prompts, on the evaluation prompts' outputs (``t >= 1``);
    - ``ev_in_sample``: the same subspace fitted on the evaluation prompts themselves (the fit prompts' subspace
      when the evaluation prompts' sinks are fewer than ``rank`` or span fewer dimensions);
    - ``pc_bound``: the evaluation outputs' own top-``rank`` PCs (no ``rank``-dim subspace explains more);
    - ``random_floor``: mean EV of ``n_random`` random ``rank``-dim subspaces (``random_std`` their spread), about
      ``rank / d``;
    - ``value_control``: EV of the top-``rank`` directions of the head's **non-sink** values ``g_j`` (fit prompts);
      when it matches ``ev``, the "tag" is just the head's usual value direction and says nothing sink-specific;
    - ``cosine``: mean principal-angle cosine between the tag subspace and that value subspace.
    """

    head: tuple[int, int]
    rank: int
    ev: float
    ev_in_sample: float
    pc_bound: float
    random_floor: float
    random_std: float
    value_control: float
    cosine: float
    n_fit: int
    n_eval: int
    n_sinks: int
    n_tokens: int
    n_random: int
    subspace: np.ndarray = field(repr=False, default=None)

    @property
    def name(self) -> str:
        return f"L{self.head[0]}H{self.head[1]}"

    def __str__(self) -> str:
        return "\n".join([
            f"tag EV of {self.name}, rank {self.rank} (fit: {self.n_fit} prompts, {self.n_sinks} sinks; "
            f"held out: {self.n_eval} prompts, {self.n_tokens} tokens)",
            f"  tag subspace, held out        {self.ev:.3f}",
            f"  tag subspace, in sample       {self.ev_in_sample:.3f}",
            f"  PC upper bound                {self.pc_bound:.3f}",
            f"  random floor ({self.n_random} draws)      {self.random_floor:.4f} ± {self.random_std:.4f}",
            f"  non-sink value control        {self.value_control:.3f}",
            f"  cos(tag, value subspace)      {self.cosine:.3f}",
        ])

    def _repr_pretty_(self, p, cycle):
        p.text(str(self))

    def as_dict(self) -> dict:
        return {k: getattr(self, k) for k in ("ev", "ev_in_sample", "pc_bound", "random_floor", "random_std",
                                              "value_control", "cosine", "rank", "n_fit", "n_eval", "n_sinks",
                                              "n_tokens", "n_random")} | {"head": list(self.head)}


def tag_ev(data: TagData, head: Any, rank: int = 1, *, eps: float = EPS, min_later: int = MIN_LATER,
           n_random: int = 10, split: float | tuple[Sequence[int], Sequence[int]] = 0.5, seed: int = 0) -> TagEV:
    """Variance of ``head``'s centred outputs explained by its rank-``rank`` tag subspace, held out, with controls.

    The tag subspace ``U`` is fitted on the sinks' values ``g_s`` of one part of the prompts (``split``: a
    fraction, seeded by ``seed``, or explicit ``(fit, eval)`` prompt indices) and evaluated on the outputs
    ``o_t`` (``t >= 1``) of the other part: ``EV = ||(O - mean O) U||^2 / ||O - mean O||^2``. Every control is
    computed on the same evaluation tokens; see :class:`TagEV`. Arguments are checked first
    (``sinkwidgets._args``): ``head`` a collected pair or ``"L2H2"``; ``rank >= 1``, ``n_random >= 10`` and
    ``seed >= 0`` integers; a fraction ``split`` in ``(0, 1)``; explicit parts non-empty and disjoint (negative
    prompt indices count from the end). Non-finite outputs or values of the head are refused with an error naming
    the rows (docs/tags.md, "Non-finite data"). Zhang et al. (arXiv 2502.00919, §3.2) report
    20–40% (up to 70%) for 1–2 tags in 7B-class models (second-hand); on SmolLM2-135M the best sink heads reach
    0.6–0.8, but for most first-token heads the non-sink value control explains as much.
    """
    head = _head_arg(data, head)
    rank = check_integer("rank", rank, minimum=1, example=1)
    n_random = check_integer("n_random", n_random, minimum=10, example=10)  # >= 10 for a stable random floor
    seed = check_seed("seed", seed)
    eps = check_number("eps", eps, example=EPS)
    min_later = check_integer("min_later", min_later, minimum=0, example=MIN_LATER)
    fit, ev_idx = _split_arg(split, data.n_prompts, seed)
    O = data.outputs(head)
    V = data.values(head)
    pos = data.positions
    pidx = data.prompt_of
    d = O.shape[1]
    if rank > d:
        raise SinkwidgetsValueError(f"rank={rank} exceeds the model width {d}; use rank <= {d}")
    _finite_rows(f"head_outputs of L{head[0]}H{head[1]}", O, data)
    _finite_rows(f"head_values of L{head[0]}H{head[1]}", V, data)
    eval_rows = np.isin(pidx, ev_idx) & (pos >= 1)
    if eval_rows.sum() < 2:
        raise SinkwidgetsValueError(f"split: the evaluation prompts {show(ev_idx.tolist())} hold "
                                    f"{int(eval_rows.sum())} tokens after position 0; a held-out EV needs at least 2 "
                                    "(give longer or more evaluation prompts)")
    X = O[eval_rows].astype(np.float64)
    G_fit, where = tag_vectors(data, head, fit, eps=eps, min_later=min_later)
    if len(G_fit) < rank:
        raise SinkwidgetsValueError(f"L{head[0]}H{head[1]} has {len(G_fit)} sinks (alpha > {eps}) in the fit prompts, fewer "
                         f"than rank={rank}; lower eps, use more prompts or choose a sink head (see sink_heads)")
    U = tag_subspace(G_fit, rank)
    G_eval, _ = tag_vectors(data, head, ev_idx, eps=eps, min_later=min_later)
    U_in = tag_subspace(G_eval, rank) if _spans_rank(G_eval, rank) else U
    # non-sink value control: all tokens of the fit prompts that are not sinks of this head
    sink_rows = np.zeros(data.n_tokens, dtype=bool)
    sink_rows[data.offsets[where[:, 0]] + where[:, 1]] = True
    nonsink = np.isin(pidx, fit) & ~sink_rows
    W = _orthonormal_top(V[nonsink], rank)
    rng = np.random.default_rng(seed + 1)
    rand = np.array([explained_variance(X, random_subspace(d, rank, rng)) for _ in range(n_random)])
    return TagEV(head=head, rank=rank, ev=explained_variance(X, U), ev_in_sample=explained_variance(X, U_in),
                 pc_bound=pc_bound(X, rank), random_floor=float(rand.mean()), random_std=float(rand.std(ddof=1)),
                 value_control=explained_variance(X, W), cosine=subspace_cosine(U, W), n_fit=len(fit),
                 n_eval=len(ev_idx), n_sinks=len(G_fit), n_tokens=int(eval_rows.sum()), n_random=n_random,
                 subspace=U)


def _split_arg(split: Any, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """:func:`tag_ev`'s ``split``: a fraction in ``(0, 1)`` (a seeded random split) or ``(fit, eval)`` prompt
    indices in ``0..n-1`` (negative counts from the end), both parts non-empty and disjoint. Returns sorted
    ``(fit, eval)`` index arrays."""
    if isinstance(split, (tuple, list)) and len(split) == 2 and not all(
            isinstance(p, (int, float, np.integer, np.floating)) for p in split):
        parts = []
        for k, part in enumerate(split):
            nm = f"split[{k}]"
            if isinstance(part, np.ndarray):
                part = part.tolist()
            if isinstance(part, (str, bytes)) or not isinstance(part, (list, tuple, range)):
                raise ArgumentTypeError(f"{nm}={show(part)}: give prompt indices (a list or range of ints), "
                                        "e.g. split=(range(0, 8), range(8, 16))")
            idx = sorted({check_integer(nm, i, minimum=-n, maximum=n - 1) % n for i in part})
            if not idx:
                raise SinkwidgetsValueError(f"{nm}={show(part)}: the {'fit' if k == 0 else 'evaluation'} prompts are "
                                            f"empty; give at least one of the {n} prompts to each part")
            parts.append(np.asarray(idx, dtype=np.int64))
        both = np.intersect1d(*parts)
        if both.size:
            raise SinkwidgetsValueError(f"split: the fit and evaluation prompts overlap (prompts "
                                        f"{show(both.tolist())}, negative indices counted from the end of the "
                                        f"{n} prompts); a held-out EV needs disjoint parts")
        return parts[0], parts[1]
    if isinstance(split, (tuple, list)):
        raise ArgumentTypeError(f"split={show(split)}: give a fraction such as 0.5, or (fit, eval) prompt indices "
                                "such as (range(0, 8), range(8, 16))")
    return split_prompts(n, split, seed)


class TagEVTable(list):
    """A list of :class:`TagEV` that prints as one table (one row per head)."""

    def __str__(self) -> str:
        if not self:
            return "(no heads)"
        r0 = self[0]
        lines = [f"tag EV, rank {r0.rank}, held out ({r0.n_fit} fit / {r0.n_eval} evaluation prompts)",
                 f"  {'head':<8}{'EV':>7}{'in-smpl':>9}{'PC bound':>10}{'random':>9}{'value ctl':>11}{'cos':>7}"]
        for r in self:
            lines.append(f"  {r.name:<8}{r.ev:>7.3f}{r.ev_in_sample:>9.3f}{r.pc_bound:>10.3f}{r.random_floor:>9.4f}"
                         f"{r.value_control:>11.3f}{r.cosine:>7.2f}")
        return "\n".join(lines)

    def _repr_pretty_(self, p, cycle):
        p.text(str(self))


def tag_ev_table(data: TagData, heads: Sequence[Any] | None = None, rank: int = 1, **kwargs) -> TagEVTable:
    """:func:`tag_ev` for several heads (default: every collected head), sorted by held-out EV."""
    heads = [tuple(h) for h in _data_arg(data).heads.tolist()] if heads is None else _heads_arg("heads", heads, data)
    rows = [tag_ev(data, h, rank, **kwargs) for h in heads]
    return TagEVTable(sorted(rows, key=lambda r: -r.ev))


def union_subspace(subspaces: Sequence[np.ndarray], tol: float = 1e-8) -> np.ndarray:
    """Orthonormal basis ``[d, k]`` of the union (sum) of subspaces; ``k`` is at most the sum of their ranks.

    ``subspaces``: a non-empty list of finite ``[d, r_i]`` bases of one width ``d`` (a vector ``[d]`` is one
    column); ``tol`` a number >= 0 (singular values below ``tol`` times the largest are dropped)."""
    if isinstance(subspaces, np.ndarray) and subspaces.ndim == 2:
        subspaces = [subspaces]
    if isinstance(subspaces, (str, bytes)) or not isinstance(subspaces, (list, tuple, np.ndarray)) or not len(subspaces):
        raise ArgumentTypeError(f"subspaces={show(subspaces)}: give a non-empty list of [d, r] bases, e.g. "
                                "subspaces=[U1, U2]")
    tol = check_number("tol", tol, low=0, example=1e-8)
    mats = []
    for i, U in enumerate(subspaces):
        mats.append(check_array(f"subspaces[{i}]", _column(U), ndim=2, shape="[d, r]", example="tags.tag_subspace(G, 2)"))
    if len({m.shape[0] for m in mats}) > 1:
        raise SinkwidgetsValueError(f"subspaces: the bases have different widths d {[m.shape[0] for m in mats]}; "
                                    "give bases of one model width")
    M = np.concatenate(mats, axis=1)
    if not np.abs(M).max() > 0:
        raise SinkwidgetsValueError("subspaces: every basis is all zeros, so they span nothing; give non-zero bases")
    u, s, _ = np.linalg.svd(M, full_matrices=False)
    return u[:, s > tol * max(s.max(), 1e-300)]
