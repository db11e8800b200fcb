"""Probes: do the tags carry meaning? (Zhang, Khan & Papyan, arXiv 2502.00919, §4.4, Table 1 and Table 7.)

A probe is a standardized logistic regression (``StandardScaler`` + ``LogisticRegression(C)``, scikit-learn,
imported on first use) on pooled residual features ``X [N, d]``, scored by **grouped** k-fold cross-validation:
all texts of a group (a city, an adjective) fall in the same fold, so a held-out fold holds groups the probe never
saw. With ``Q [d, k]`` an orthonormal basis of the union of the chosen heads' tag subspaces, the feature sets are

- ``full``: ``X``;                      - ``tag``: ``X Q`` (the paper's θ_tag);
- ``no_tag``: ``X - X Q Q^T`` (θ_no_tag); - ``random``: ``X R`` for random orthonormal ``R [d, k]`` (≥ 10 draws);
- ``pcs``: the top-``k`` principal components of the training fold's ``X``;
- ``shuffled``: ``full`` with permuted labels;  - ``chance``: the training fold's majority class.

Accuracies are means over ``seeds`` random grouped splits; a standard error is the standard deviation of the fold
accuracies divided by ``sqrt(folds)``, averaged over seeds; for ``random`` it is the spread of the draws' means
divided by ``sqrt(draws)`` (``random_sd`` is the spread itself).

What SmolLM2-135M shows (pilot, ``docs/tags.md``): θ_tag never beats θ_no_tag (no_tag ≈ full in every dataset,
layer and pooling), unlike the paper's "no-tag ≈ chance". The one robust positive: cities, residual after layer 9,
mean-pooled, 16-d union of the rank-2 tag subspaces of the 8 highest-EV first-token sink heads in layers ≤ 9:
tag ≈ full ≈ 0.81 against ≈ 0.61 for random 16-d subspaces and ≈ 0.68 for the data's own top-16 PCs.
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .._args import ArgumentTypeError, show
from .._args import binary_labels as check_binary_labels
from .._args import heads as check_heads
from .._args import integer as check_integer
from .._args import labels as check_labels
from .._args import layer as check_layer
from .._args import layers as check_layers
from .._args import number as check_number
from .._args import orthonormal_basis as check_orthonormal_basis
from .._args import seed as check_seed
from ..errors import SinkwidgetsValueError
from .analysis import (
    NotCollectedError,
    _data_arg,
    _dims,
    _finite_rows,
    _heads_arg,
    _spans_rank,
    explained_variance,
    random_subspace,
    sink_heads,
    tag_subspace,
    tag_vectors,
    union_subspace,
)
from .data import TagData

FEATURE_SETS = ("full", "tag", "no_tag", "random", "pcs", "shuffled", "chance")
#: Inverse L2 strength of the logistic regression (pilot: stable across datasets at 0.1).
C_DEFAULT = 0.1


def grouped_folds(groups: Sequence[Any], k: int = 5, seed: int = 0) -> np.ndarray:
    """Fold id ``[N]`` in ``0..k-1`` such that every group lies in one fold; groups are shuffled by ``seed`` and
    dealt to folds largest first (so folds have near-equal sizes). ``groups``: one hashable group per item (a list,
    tuple or 1-D array; compared as strings); ``k`` an integer >= 2 (``sinkwidgets._args``), at most the number of
    groups; ``seed`` an integer >= 0."""
    k = check_integer("k", k, minimum=2, example=5)
    seed = check_seed("seed", seed)
    if isinstance(groups, (str, bytes)) or not isinstance(groups, (list, tuple, range, np.ndarray)) or (
            isinstance(groups, np.ndarray) and groups.ndim != 1):
        raise ArgumentTypeError(f"groups={show(groups)} ({type(groups).__name__}): give one group per item as a list "
                                "or 1-D array, e.g. groups=['a', 'a', 'b', 'c']")
    groups = np.asarray([str(g) for g in groups])
    uniq, inv, counts = np.unique(groups, return_inverse=True, return_counts=True)
    if len(uniq) < k:
        raise SinkwidgetsValueError(f"folds={k}: grouped {k}-fold CV needs at least {k} groups, got {len(uniq)}; pass fewer folds or "
                         "more groups (groups=None makes every text its own group)")
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(uniq))
    order = order[np.argsort(-counts[order], kind="stable")]
    sizes = np.zeros(k, dtype=np.int64)
    gfold = np.empty(len(uniq), dtype=np.int64)
    for g in order:
        f = int(np.argmin(sizes + rng.random(k) * 1e-3))
        gfold[g] = f
        sizes[f] += counts[g]
    return gfold[inv]


def _make_model(C: float):
    try:
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("probes need scikit-learn: pip install scikit-learn (or sinkwidgets[tutorials])") from exc
    return make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=2000))


def _pca_basis(X: np.ndarray, k: int) -> np.ndarray:
    Xc = X - X.mean(0)
    _, _, vt = np.linalg.svd(Xc, full_matrices=False)
    return vt[:k].T


def cv_accuracy(X: np.ndarray, y: np.ndarray, folds: np.ndarray, *, C: float = C_DEFAULT,
                transform=None) -> np.ndarray:
    """Held-out accuracy of each fold ``[k]``. ``transform(X_train, X_test) -> (A, B)`` maps features per fold
    (e.g. PCA fitted on the training fold only)."""
    accs = []
    for f in np.unique(folds):
        te = folds == f
        tr = ~te
        Xtr, Xte = X[tr], X[te]
        if transform is not None:
            Xtr, Xte = transform(Xtr, Xte)
        if len(np.unique(y[tr])) < 2:  # one class only in training: predict it
            accs.append(float(np.mean(y[te] == y[tr][0])))
            continue
        m = _make_model(C).fit(Xtr, y[tr])
        accs.append(float(np.mean(m.predict(Xte) == y[te])))
    return np.asarray(accs)


class ProbeResult(dict):
    """Accuracies by feature set (``full``, ``tag``, ``no_tag``, ``random``, ``pcs``, ``shuffled``, ``chance``),
    their standard errors under ``<name>_se``, and the settings in attributes. Prints as a small table."""

    def __init__(self, acc: Mapping[str, float], se: Mapping[str, float], **info: Any):
        super().__init__()
        for name in FEATURE_SETS:
            self[name] = float(acc[name])
        for name in FEATURE_SETS:
            self[f"{name}_se"] = float(se[name])
        self.info = dict(info)
        self["random_sd"] = float(info.get("random_sd", float("nan")))

    @property
    def se(self) -> dict[str, float]:
        return {n: self[f"{n}_se"] for n in FEATURE_SETS}

    def __getattr__(self, name: str) -> Any:
        if name in self:
            return self[name]
        info = self.__dict__.get("info", {})
        if name in info:
            return info[name]
        raise AttributeError(name)

    def __str__(self) -> str:
        i = self.info
        heads = ", ".join(f"L{a}H{b}" for a, b in i.get("heads", []))
        dim = i.get("dim")
        lines = [f"probe: {i.get('dataset') or 'texts'} ({i.get('n')} texts, {i.get('n_groups')} groups), residual "
                 f"after layer {i.get('layer')}, pool={i.get('pool')!r}; {i.get('folds')}-fold grouped CV x "
                 f"{i.get('seeds')} seeds",
                 f"  tag subspace: {dim} dims from {heads or '(given)'}; holds {i.get('tag_variance', float('nan')):.1%}"
                 f" of the features' variance",
                 f"  {'features':<10}{'dims':>6}{'accuracy':>10}{'± se':>8}"]
        dims = {"full": i.get("d"), "tag": dim, "no_tag": i.get("d"), "random": dim, "pcs": dim,
                "shuffled": i.get("d"), "chance": 0}
        for n in FEATURE_SETS:
            extra = f"   ({i.get('n_random')} draws, sd {self['random_sd']:.3f})" if n == "random" else ""
            lines.append(f"  {n:<10}{dims[n]!s:>6}{self[n]:>10.3f}{self[n + '_se']:>8.3f}{extra}")
        if i.get("negative_control"):
            lines.append("  NOTE: a negative-control dataset (the model does not know these labels)")
        return "\n".join(lines)

    def _repr_pretty_(self, p, cycle):
        p.text(str(self))

    def __repr__(self) -> str:
        return "ProbeResult(" + ", ".join(f"{n}={self[n]:.3f}" for n in FEATURE_SETS) + ")"


#: Called by :func:`probe_features` after each seed's fits and after the random-subspace draws (``seeds + 1``
#: steps), so that :func:`probe_report` can move its bar inside a grid cell.
_FIT_TICK: contextvars.ContextVar[Callable[[], Any] | None] = contextvars.ContextVar("sinkwidgets_fit_tick",
                                                                                     default=None)


def probe_features(X: np.ndarray, y: np.ndarray, groups: Sequence[Any] | None, Q: np.ndarray, *, folds: int = 5,
                   seeds: int = 5, n_random: int = 10, C: float = C_DEFAULT, seed: int = 0, **info: Any) -> ProbeResult:
    """Run every feature set on features ``X [N, d]``, labels ``y [N]`` and a tag basis ``Q [d, k]`` (numpy).

    Checked first (``sinkwidgets._args``): ``folds >= 2``, ``seeds >= 1``, ``n_random >= 10`` and ``seed >= 0``
    integers, ``C > 0``; ``X`` finite (non-finite rows are named); ``y`` integer classes (at least two) or any two
    classes; ``Q`` a finite, full-rank ``[d, k]`` basis (orthonormalised by QR); ``groups`` one per text."""
    folds, seeds, n_random, C, seed = _cv_args(folds, seeds, n_random, C, seed)
    try:
        X = np.asarray(X, dtype=np.float64)
    except (TypeError, ValueError):
        raise ArgumentTypeError(f"X={show(X)}: give features as an [N, d] float array") from None
    if X.ndim != 2 or min(X.shape) < 1:
        raise SinkwidgetsValueError(f"X: features are [N, d] (N texts, d >= 1), got shape {list(X.shape)}")
    N, d = X.shape
    _finite_rows("X", X)
    if N >= 2 and not np.ptp(X, axis=0).any():
        raise SinkwidgetsValueError(f"X: the {N} feature rows are all equal (no variance), so no probe can separate "
                                    "the classes and the tag's share of the variance is 0/0; give the texts' features")
    try:
        y = check_labels("labels", y, n=N)
    except ArgumentTypeError:  # strings or other classes: any two
        y, _ = check_binary_labels("labels", y, n=N)
    if len(np.unique(y)) < 2:
        raise SinkwidgetsValueError(f"labels must hold at least two classes, got {np.unique(y).tolist()}; give "
                                    "texts of both classes")
    if isinstance(groups, (str, bytes)):
        raise ArgumentTypeError(f"groups={groups!r}: give one group per text (a list), or None")
    groups = [str(i) for i in range(N)] if groups is None else [str(g) for g in groups]
    if len(groups) != N:
        raise SinkwidgetsValueError(f"groups has {len(groups)} entries but there are {N} texts")
    Q = check_orthonormal_basis("Q", Q, d)
    k = Q.shape[1]
    if N - N // folds - 1 < 1:
        raise SinkwidgetsValueError(f"folds={folds}: {N} texts are too few for {folds}-fold CV with a PCA control; "
                                    "give more texts or fewer folds")
    fold_sets = [grouped_folds(groups, folds, seed + s) for s in range(seeds)]
    rng = np.random.default_rng(seed + 12345)
    feats = {"full": X, "tag": X @ Q, "no_tag": X - (X @ Q) @ Q.T}
    per: dict[str, list[np.ndarray]] = {n: [] for n in FEATURE_SETS if n != "random"}
    for fs in fold_sets:
        for n, F in feats.items():
            per[n].append(cv_accuracy(F, y, fs, C=C))
        kk = min(k, N - N // folds - 1, d)
        per["pcs"].append(cv_accuracy(X, y, fs, C=C, transform=lambda a, b, kk=kk: (
            (a - a.mean(0)) @ (B := _pca_basis(a, kk)), (b - a.mean(0)) @ B)))
        per["shuffled"].append(cv_accuracy(X, rng.permutation(y), fs, C=C))
        chance = []
        for f in np.unique(fs):
            vals, cnt = np.unique(y[fs != f], return_counts=True)
            chance.append(float(np.mean(y[fs == f] == vals[np.argmax(cnt)])))
        per["chance"].append(np.asarray(chance))
        if (tick := _FIT_TICK.get()) is not None:
            tick()
    draws = np.array([cv_accuracy(X @ random_subspace(d, k, rng), y, fold_sets[r % seeds], C=C).mean()
                      for r in range(n_random)])
    if (tick := _FIT_TICK.get()) is not None:
        tick()
    acc = {n: float(np.mean([a.mean() for a in v])) for n, v in per.items()}
    se = {n: float(np.mean([a.std(ddof=1) / np.sqrt(len(a)) for a in v])) for n, v in per.items()}
    acc["random"], se["random"] = float(draws.mean()), float(draws.std(ddof=1) / np.sqrt(n_random))
    tag_var = explained_variance(X, Q)
    return ProbeResult(acc, se, random_sd=float(draws.std(ddof=1)), random_draws=draws.tolist(), n=N, d=d, dim=k,
                       n_groups=len(set(groups)), folds=folds, seeds=seeds, n_random=n_random, C=C,
                       tag_variance=tag_var, **info)


def _in_sample_ev(data: TagData, head, rank: int) -> float:
    G, _ = tag_vectors(data, head)
    if not _spans_rank(G, rank):  # fewer sinks than rank, or repeated ones: no rank-dim tag subspace
        return float("nan")
    rows = data.positions >= 1
    return explained_variance(data.outputs(head)[rows], tag_subspace(G, rank))


def _top_by_ev(evs: Mapping[tuple[int, int], float], cands: Sequence[tuple[int, int]],
               n_heads: int) -> list[tuple[int, int]]:
    """The ``n_heads`` candidates with the highest finite EV, highest first (stable for ties)."""
    return sorted((h for h in cands if np.isfinite(evs[h])), key=lambda h: -evs[h])[:n_heads]


@dataclass
class TagBasis:
    """The union of the chosen heads' rank-``rank`` tag subspaces, ``basis [d, k]``, and how it was chosen."""

    basis: np.ndarray
    heads: list[tuple[int, int]]
    rank: int
    evs: dict = field(default_factory=dict)


def _plain(h: Any) -> Any:
    """A :class:`~.analysis.HeadRecord` as its ``(layer, head)`` pair; anything else unchanged."""
    return (h.layer, h.head) if hasattr(h, "layer") and hasattr(h, "head") and hasattr(h, "alpha") else h


def _cv_args(folds: Any, seeds: Any, n_random: Any, C: Any, seed: Any) -> tuple[int, int, int, float, int]:
    """The cross-validation settings, checked: ``folds >= 2``, ``seeds >= 1``, ``n_random >= 10`` (random subspaces
    vary: the mean of few draws is noisy), ``C > 0`` and ``seed >= 0``."""
    return (check_integer("folds", folds, minimum=2, example=5), check_integer("seeds", seeds, minimum=1, example=5),
            check_integer("n_random", n_random, minimum=10, example=10),
            check_number("C", C, low=0, low_open=True, example=C_DEFAULT), check_seed("seed", seed))


def tag_basis(data: TagData, heads: Any = "auto", *, rank: int = 2, n_heads: int = 8, max_layer: int | None = None,
              alpha0: float = 0.5) -> TagBasis:
    """Orthonormal basis of the union of tag subspaces (``tag_subspace`` of each head's sink values in ``data``).

    ``heads="auto"``: the ``n_heads`` first-token sink heads (mean α₀ ``>= alpha0``) in layers ``<= max_layer``
    with the highest in-sample tag EV at ``rank`` among the collected heads. Otherwise a list of ``(layer, head)``.
    """
    collected = [tuple(h) for h in _data_arg(data).heads.tolist()]
    rank = check_integer("rank", rank, minimum=1, example=2)
    n_heads = check_integer("n_heads", n_heads, minimum=1, example=8)
    evs = {}
    if isinstance(heads, str):
        if heads != "auto":
            raise SinkwidgetsValueError(f"heads must be 'auto' or a list of (layer, head) pairs, got {heads!r}")
        cands = [(r.layer, r.head) for r in sink_heads(data, alpha0=alpha0, max_layer=max_layer).first_token]
        cands = [h for h in cands if h in collected]
        if not cands:
            raise SinkwidgetsValueError(f"no first-token sink head (mean α₀ >= {alpha0}) in layers <= {max_layer} among the "
                             f"collected heads {collected}; pass heads=[(layer, head), ...]")
        evs = {h: _in_sample_ev(data, h, rank) for h in cands}
        chosen = _top_by_ev(evs, cands, n_heads)
    else:
        chosen = _heads_arg("heads", heads, data)
    subs = []
    for h in chosen:
        G, _ = tag_vectors(data, h)
        if len(G) < rank:
            raise SinkwidgetsValueError(f"L{h[0]}H{h[1]} has {len(G)} sinks, fewer than rank={rank}")
        subs.append(tag_subspace(G, rank))
    if not subs:
        raise SinkwidgetsValueError("no heads to build a tag subspace from")
    return TagBasis(union_subspace(subs), [tuple(h) for h in chosen], rank, {f"L{a}H{b}": v for (a, b), v in
                                                                            evs.items()})


def probe(model_or_data: Any, texts: Sequence[str] | None = None, labels: Sequence[int] | None = None,
          groups: Sequence[Any] | None = None, layer: int = 9, pool: str = "mean", heads: Any = "auto", *,
          rank: int = 2, n_heads: int = 8, seeds: int = 5, folds: int = 5, n_random: int = 10, C: float = C_DEFAULT,
          basis: np.ndarray | None = None, alpha0: float = 0.5, batch_size: int = 8, progress: bool | None = None,
          seed: int = 0, return_data: bool = False, dataset: str | None = None,
          negative_control: bool = False) -> ProbeResult | tuple[ProbeResult, TagData]:
    """Train tag / no-tag probes with every control (see the module docstring for the feature sets).

    Parameters
    ----------
    model_or_data : a model from :func:`sinkwidgets.load_model` (the texts are collected first: pooled residual after
        ``layer`` plus the candidate heads' values and outputs), or a :class:`TagData` that holds them.
    texts, labels, groups : the labelled texts (``labels`` 0/1 or any two classes; ``groups`` for grouped CV, e.g.
        the city of each statement; ``None``: every text its own group). With a TagData, ``texts`` is ignored and
        ``labels`` / ``groups`` default to the data's own.
    layer, pool : features are the residual after ``layer``, ``"mean"`` over tokens ``t >= 1`` or ``"last"``.
    heads : ``"auto"`` (the ``n_heads`` highest-EV first-token sink heads, mean α₀ ``>= alpha0``, in layers
        ``<= layer``) or a list of ``(layer, head)``.
    rank : rank of each head's tag subspace; the union has at most ``rank * n_heads`` dimensions.
    basis : an explicit tag basis ``[d, k]`` (overrides ``heads``): finite, not zero, full column rank (refused
        otherwise); orthonormalised by QR.
    seeds, folds, n_random, C : grouped CV repeats, folds, random-subspace draws (>= 10), regularization.
    return_data : also return the collected :class:`TagData` (to rerun with other settings without a forward pass).

    Every argument is checked before any model work: ``labels`` any two classes (``info["classes"]`` records them;
    class 0 is the smaller), ``layer`` in ``0..L-1`` (negative counts from the end), the counts and ``C`` as in
    :func:`probe_features`.
    """
    from .collect import collect as _collect

    # every argument is checked before any model work (sinkwidgets._args)
    is_data = isinstance(model_or_data, TagData)
    info = None if is_data else getattr(model_or_data, "sinkwidgets", None)
    L, H = _dims(model_or_data) if is_data else ((info.n_layers, info.n_heads) if info is not None else (None, None))
    # a TagData holds the pooled layers it holds (data.pooled names them); a model knows its number of layers
    layer = check_layer("layer", layer, info.n_layers) if info is not None else check_integer(
        "layer", layer, minimum=0, example=9)
    if not isinstance(pool, str) or pool not in ("mean", "last"):
        raise SinkwidgetsValueError(f"pool must be 'mean' or 'last', got {pool!r}; e.g. pool='mean'")
    _cv_args(folds, seeds, n_random, C, seed)
    rank = check_integer("rank", rank, minimum=1, example=2)
    n_heads = check_integer("n_heads", n_heads, minimum=1, example=8)
    batch_size = check_integer("batch_size", batch_size, minimum=1, example=8)
    alpha0 = check_number("alpha0", alpha0, example=0.5)
    if basis is None and not isinstance(heads, str):
        heads = check_heads("heads", [_plain(h) for h in heads] if isinstance(heads, (list, tuple)) else heads, L, H,
                             allow_all=False)
    elif basis is None and heads != "auto":
        raise SinkwidgetsValueError(f"heads must be 'auto' or a list of (layer, head) pairs, got {heads!r}")
    if basis is not None and info is not None:
        basis = check_orthonormal_basis("basis", basis, info.d_model)
    classes = None
    if is_data:
        data = model_or_data
        labels = data.labels if labels is None else labels
        groups = data.groups if groups is None else groups
        if labels is not None:
            labels, classes = check_binary_labels("labels", labels, n=data.n_prompts)
    else:
        if texts is None or labels is None:
            raise SinkwidgetsValueError("probe(model, texts, labels, ...): give the texts and their labels (or a "
                                        "TagData)")
        if isinstance(texts, str):
            raise ArgumentTypeError(f"texts={show(texts)}: give a list of texts, one per label")
        texts = list(texts)
        labels, classes = check_binary_labels("labels", labels, n=len(texts))
        auto_evs: dict = {}
        if basis is not None:
            head_list = []
        elif isinstance(heads, str):
            head_list, auto_evs = _auto_heads(model_or_data, texts, layer, batch_size, alpha0, rank, n_heads, progress)
            heads = head_list
        else:
            head_list = list(heads)
        # the tag basis needs only the sinks' values (and α to find the sinks); no outputs, no maps
        data = _collect(model_or_data, texts, heads=head_list, layers=[layer], batch_size=batch_size,
                        progress=progress, labels=labels, groups=groups, maps=False, outputs=False)
    if labels is None:
        raise SinkwidgetsValueError("no labels: pass labels=[...] (one per text) or a TagData collected with labels")
    try:
        X = data.pooled(layer, pool)
    except KeyError as exc:
        raise NotCollectedError(exc.args[0] if exc.args else str(exc)) from None
    if basis is not None:  # a zero or rank-deficient basis is refused, not turned into coordinate axes by QR
        tb = TagBasis(check_orthonormal_basis("basis", basis, X.shape[1]), [], rank)
    else:
        tb = tag_basis(data, heads, rank=rank, n_heads=n_heads, max_layer=layer, alpha0=alpha0)
        if not isinstance(model_or_data, TagData) and auto_evs:
            tb.evs = auto_evs
    res = probe_features(X, np.asarray(labels), groups, tb.basis, folds=folds, seeds=seeds, n_random=n_random, C=C,
                         seed=seed, layer=layer, pool=pool, heads=tb.heads, rank=rank, head_evs=tb.evs,
                         dataset=dataset, negative_control=negative_control, classes=list(classes))
    return (res, data) if return_data else res


#: Texts used to choose the heads for ``heads="auto"`` (two cheap passes before the main collection).
SELECT_TEXTS = 64


#: Candidate heads whose values and outputs are collected at once while choosing ``heads="auto"``.
SELECT_CHUNK = 32


def _progress_bar(progress: bool | None, total: int | None, desc: str, unit: str):
    """A ``tqdm.auto`` bar for a long step (a widget in notebooks, a line on standard error in terminals).

    ``progress``: True shows it at once, None (the default of the long functions) once the step has taken
    :data:`PROGRESS_DELAY` seconds (so short work stays silent), False never. ``TQDM_DISABLE=1`` turns it off."""
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit, disable=progress is False,
                delay=0.0 if progress else PROGRESS_DELAY)


#: Seconds of silence before a default (``progress=None``) bar of :func:`probe_report` appears.
PROGRESS_DELAY = 2.0


def _auto_heads(model, texts, layer: int, batch_size: int, alpha0: float, rank: int,
                n_heads: int, progress: bool | None = False) -> tuple[list[tuple[int, int]], dict]:
    """``heads="auto"`` from a model for one layer: see :func:`_auto_heads_layers`."""
    chosen, evs = _auto_heads_layers(model, texts, [layer], batch_size, alpha0, rank, n_heads, progress)
    return chosen[layer], evs


def _auto_heads_layers(model, texts, layers: Sequence[int], batch_size: int, alpha0: float, rank: int,
                       n_heads: int, progress: bool | None = False) -> tuple[dict[int, list[tuple[int, int]]], dict]:
    """``heads="auto"`` from a model, for each of ``layers``: an α-only pass over the first :data:`SELECT_TEXTS`
    texts finds the first-token sink heads (mean α₀ >= ``alpha0``) in layers <= ``max(layers)``; further passes
    over the same texts keep their values and outputs (:data:`SELECT_CHUNK` heads at a time) for the in-sample tag
    EV at ``rank``; for each layer the ``n_heads`` candidates in layers <= it with the highest EV are chosen. (On
    short statements α₀ >= 0.5 holds for most heads of SmolLM2's first layers, so keeping every candidate over all
    texts would cost ~10x more memory.) Returns ``({layer: heads}, {"LxHy": EV})`` (EVs of the chosen heads).
    ``progress`` (see :func:`_progress_bar`): a bar over the passes (1 + one per :data:`SELECT_CHUNK` candidates)."""
    from .collect import collect as _collect

    sub = list(texts[:SELECT_TEXTS])
    top = max(layers)
    with _progress_bar(progress, None, "choosing heads (α pass)", "pass") as bar:
        first = _collect(model, sub, heads=[], layers=None, progress=False, batch_size=batch_size)
        cands = [(r.layer, r.head) for r in sink_heads(first, alpha0=alpha0, max_layer=top).first_token]
        if not cands:
            raise SinkwidgetsValueError(f"no first-token sink head (mean α₀ >= {alpha0}) in layers <= {top}; "
                                        "pass heads=[...]")
        bar.total = 1 + -(-len(cands) // SELECT_CHUNK)
        bar.update(1)
        evs: dict[tuple[int, int], float] = {}
        for k in range(0, len(cands), SELECT_CHUNK):
            part = cands[k:k + SELECT_CHUNK]
            bar.set_description(f"choosing heads (EV of {len(cands)} candidates)", refresh=False)
            sel = _collect(model, sub, heads=part, layers=None, maps=False, progress=False, batch_size=batch_size)
            evs.update({h: _in_sample_ev(sel, h, rank) for h in part})
            bar.update(1)
    chosen = {int(li): _top_by_ev(evs, [h for h in cands if h[0] <= li], n_heads) for li in layers}
    used = {h for hs in chosen.values() for h in hs}
    return chosen, {f"L{a}H{b}": float(v) for (a, b), v in evs.items() if (a, b) in used}


class ProbeGrid(dict):
    """Probe results for every layer and pooling asked for: ``grid[(layer, pool)]`` is a :class:`ProbeResult`
    (feature sets ``full / tag / no_tag / random / pcs / shuffled / chance``). Prints as one table; ``.rows()``
    gives one dict per layer, pooling and feature set; ``.chart()`` draws accuracy against layer."""

    def __init__(self, results: Mapping[tuple[int, str], ProbeResult], dataset: str | None = None):
        super().__init__(results)
        self.dataset = dataset

    @property
    def layers(self) -> list[int]:
        return sorted({k[0] for k in self})

    @property
    def pooling(self) -> list[str]:
        return list(dict.fromkeys(k[1] for k in self))

    def rows(self) -> list[dict]:
        out = []
        for (layer, pool), r in self.items():
            for n in FEATURE_SETS:
                out.append({"layer": int(layer), "pool": pool, "features": n, "accuracy": r[n], "se": r[f"{n}_se"],
                            "dim": r.dim if n in ("tag", "random", "pcs") else r.d})
        return out

    def __str__(self) -> str:
        any_r = next(iter(self.values()))
        lines = [f"probe grid: {self.dataset or 'texts'} ({any_r.n} texts, {any_r.folds}-fold grouped CV x "
                 f"{any_r.seeds} seeds; tag = union of rank-{any_r.rank} tag subspaces of up to 8 heads in layers <= "
                 f"the probed layer)",
                 f"  {'layer':>5} {'pool':<5}{'dims':>5}" + "".join(f"{n:>9}" for n in FEATURE_SETS)
                 + "   tag - random   tag - pcs"]
        for layer in self.layers:
            for pool in self.pooling:
                r = self.get((layer, pool))
                if r is None:
                    continue
                lines.append(f"  {layer:>5} {pool:<5}{r.dim:>5}" + "".join(f"{r[n]:>9.3f}" for n in FEATURE_SETS)
                             + f"{r['tag'] - r['random']:>+15.3f}{r['tag'] - r['pcs']:>+12.3f}")
        return "\n".join(lines)

    def _repr_pretty_(self, p, cycle):
        p.text(str(self))

    def __repr__(self) -> str:
        return f"ProbeGrid({self.dataset!r}, layers={self.layers}, pooling={self.pooling})"

    def chart(self, features: Sequence[str] = ("full", "tag", "no_tag", "random", "pcs", "shuffled")):
        """Altair chart: accuracy against layer, one line per feature set, one panel per pooling (error bars:
        ± one standard error)."""
        import altair as alt

        values = [r for r in self.rows() if r["features"] in features]
        for r in values:
            r["lo"], r["hi"] = r["accuracy"] - r["se"], r["accuracy"] + r["se"]
        base = alt.Chart(alt.Data(values=values))
        color = alt.Color("features:N", sort=list(features), title="features")
        lines = base.mark_line(point=True).encode(
            x=alt.X("layer:O"), y=alt.Y("accuracy:Q", scale=alt.Scale(zero=False), title="held-out accuracy"),
            color=color, tooltip=["layer:O", "pool:N", "features:N", alt.Tooltip("accuracy:Q", format=".3f"),
                                  alt.Tooltip("se:Q", format=".3f"), "dim:Q"])
        bars = base.mark_errorbar().encode(x="layer:O", y=alt.Y("lo:Q", title="held-out accuracy"), y2="hi:Q",
                                           color=color)
        return alt.layer(lines, bars).properties(width=320, height=220).facet(
            column=alt.Column("pool:N", title="pooling")).properties(
            title=f"probe grid: {self.dataset or 'texts'}")


def probe_report(model_or_data: Any, dataset: str = "cities", *, layers: Any = None,
                 pooling: Sequence[str] | str | None = None, **kwargs: Any) -> ProbeResult | ProbeGrid:
    """:func:`probe` on a shipped dataset (``"cities"``, ``"sentiment"``, ``"arithmetic"``; see
    :mod:`sinkwidgets.tags.datasets`).

    Without ``layers`` / ``pooling``: one :class:`ProbeResult` (``kwargs`` go to :func:`probe`: ``layer``, ``pool``,
    ``heads``, ...). With ``layers=[...]`` (and ``pooling=("mean", "last")``, the default then): a
    :class:`ProbeGrid` with every feature set for every layer and pooling. From a model, the texts are run once
    (residual pooled after every layer asked for, and the values of the union of the chosen heads); with
    ``heads="auto"`` each layer gets its own heads (the ``n_heads`` highest-EV first-token sink heads in layers
    ``<=`` it). Show the grid, not one cell of it: on SmolLM2 cities (layers 3, 9, 15; 2 seeds) the tag
    coordinates match the full residual at layer 9 with mean pooling (0.78 vs 0.78; random 0.61, PCs 0.65), not at
    the last token (tag 0.62, random 0.61), nothing at layer 3, and at layer 15 the margin over the data's own PCs
    shrinks to +0.04 (mean) and −0.04 (last).
    """
    from .datasets import load_dataset

    ds = load_dataset(dataset)
    if layers is None and pooling is None:
        return probe(model_or_data, ds.texts, ds.labels, ds.groups, dataset=ds.name,
                     negative_control=ds.negative_control, **kwargs)
    for k in ("layer", "pool", "return_data"):
        if k in kwargs:
            raise SinkwidgetsValueError(f"probe_report(..., layers=..., pooling=...) makes a grid: pass layers=[...] and "
                             f"pooling=(...) instead of {k}=")
    if layers is None:
        layers = [9]
    is_data = isinstance(model_or_data, TagData)
    info = None if is_data else getattr(model_or_data, "sinkwidgets", None)
    L, H = _dims(model_or_data) if is_data else ((info.n_layers, info.n_heads) if info is not None else (None, None))
    layers = check_layers("layers", layers, info.n_layers if info is not None else None)
    _, n_seeds, _, _, _ = _cv_args(kwargs.get("folds", 5), kwargs.get("seeds", 5), kwargs.get("n_random", 10),
                                   kwargs.get("C", C_DEFAULT), kwargs.get("seed", 0))
    if kwargs.get("basis") is not None and info is not None:
        kwargs["basis"] = check_orthonormal_basis("basis", kwargs["basis"], info.d_model)
    pooling = ("mean", "last") if pooling is None else ((pooling,) if isinstance(pooling, str) else tuple(pooling))
    bad = [p for p in pooling if p not in ("mean", "last")]
    if bad or not pooling:
        raise SinkwidgetsValueError(f"pooling entries must be 'mean' or 'last', got {list(pooling)}")
    heads = kwargs.pop("heads", "auto")
    if not isinstance(heads, str):
        heads = check_heads("heads", [_plain(h) for h in heads] if isinstance(heads, (list, tuple)) else heads, L, H,
                             allow_all=False)
    rank = check_integer("rank", kwargs.get("rank", 2), minimum=1, example=2)
    n_heads = check_integer("n_heads", kwargs.get("n_heads", 8), minimum=1, example=8)
    alpha0 = check_number("alpha0", kwargs.get("alpha0", 0.5), example=0.5)
    batch_size = check_integer("batch_size", kwargs.pop("batch_size", 8), minimum=1, example=8)
    progress = kwargs.pop("progress", None)
    if progress is not None and not isinstance(progress, (bool, np.bool_)):
        raise ArgumentTypeError(f"progress={show(progress)}: progress must be True, False or None (a bar once a step "
                                "takes over 2 s); e.g. progress=False")
    if isinstance(model_or_data, TagData):
        data = model_or_data
        per_layer = {li: heads for li in layers}
        evs: dict = {}
    else:
        from .collect import collect as _collect

        if kwargs.get("basis") is not None:
            per_layer, evs = {li: [] for li in layers}, {}
        elif isinstance(heads, str):
            if heads != "auto":
                raise SinkwidgetsValueError(f"heads must be 'auto' or a list of (layer, head) pairs, got {heads!r}")
            per_layer, evs = _auto_heads_layers(model_or_data, list(ds.texts), layers, batch_size, alpha0, rank,
                                                n_heads, progress)
        else:
            per_layer, evs = {li: list(heads) for li in layers}, {}
        union = sorted({h for hs in per_layer.values() for h in hs})
        data = _collect(model_or_data, list(ds.texts), heads=union, layers=layers, pool=pooling,
                        batch_size=batch_size, progress=progress, labels=ds.labels, groups=ds.groups, maps=False,
                        outputs=False)
    grid = {}
    # one step per seed's fits and one for the random-subspace draws, in every cell
    with _progress_bar(progress, len(layers) * len(pooling) * (n_seeds + 1), "probe grid", "fit") as bar:
        token = _FIT_TICK.set(lambda: bar.update(1))
        try:
            _grid_cells(grid, bar, data, ds, layers, pooling, per_layer, evs, kwargs)
        finally:
            _FIT_TICK.reset(token)
    return ProbeGrid(grid, ds.name)


def _grid_cells(grid, bar, data, ds, layers, pooling, per_layer, evs, kwargs) -> None:
    """Fill ``grid[(layer, pool)]`` with :func:`probe` on ``data`` (the cells of :func:`probe_report`)."""
    for li in layers:
        for pool in pooling:
            bar.set_description(f"probe grid (layer {li}, {pool})", refresh=False)
            r = probe(data, None, ds.labels, ds.groups, layer=li, pool=pool, heads=per_layer[li], dataset=ds.name,
                      negative_control=ds.negative_control, **kwargs)
            if evs:
                r.info["head_evs"] = {k: v for k, v in evs.items() if tuple(
                    int(x) for x in k[1:].split("H")) in per_layer[li]}
            grid[(li, pool)] = r
