"""Corpus collection for catch / tag / release: a thin layer over the tracing engine's reductions.

:func:`collect` runs texts through :func:`sinkwidgets.tracing.run_units` with these units (all computed inside the
trace, so only these small arrays leave the model, on every path: eager, chunked, remote):

- ``AttentionSummary``: Gu et al. α of every key, every head (``[L, H, T]`` per prompt: cheap, and what sink-head
  selection and boundary rankings need);
- ``KeptMaps``, ``HeadOutputs``, ``HeadValues`` for the chosen heads only (``[T, T]`` and ``[T, d]`` per head);
- ``PooledResidual`` for the chosen layers (mean over ``t >= 1`` and last token, ``[d]`` each).

It never keeps ``[N, H, T, d]`` for all heads or a per-token residual of all layers. Texts are run in blocks and
copied into preallocated packed arrays, so the peak memory is the kept arrays plus one block's results.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from .._args import heads as parse_heads
from .._args import integer as check_integer
from .._args import labels as check_labels
from .._args import layers as parse_layers
from .._args import number as check_number
from .._args import show as _show
from ..errors import SinkwidgetsRuntimeError, SinkwidgetsTypeError, SinkwidgetsValueError
from ..tracing.options import RunOptions, encode
from .analysis import BOUNDARY_ALPHA, MIN_LATER, HeadRanking, boundary_heads_from_data
from .data import TagData

#: Batches run per engine call; results are copied into the packed arrays after each call.
BLOCK_BATCHES = 4


def _texts(texts: Any, fn: str) -> list[str]:
    """``texts`` as a non-empty list of str (one str is one text); anything else is refused, naming the value."""
    if isinstance(texts, str):
        return [texts]
    if texts is None or isinstance(texts, (bytes, dict)) or not hasattr(texts, "__iter__"):
        raise SinkwidgetsTypeError(f"texts={_show(texts)} ({type(texts).__name__}): {fn}() needs a string or a list "
                                   "of strings; e.g. texts=['The cat sat on the mat.', 'Paris is in France.']")
    out = list(texts)
    if not out:
        raise SinkwidgetsValueError(f"texts={_show(texts)}: {fn}() needs at least one text; pass a string or a "
                                    "non-empty list of strings")
    bad = [i for i, t in enumerate(out) if not isinstance(t, str)]
    if bad:
        raise SinkwidgetsTypeError(f"texts={_show(texts)}: entry {bad[0]} is {_show(out[bad[0]])} "
                                   f"({type(out[bad[0]]).__name__}), not a string; pass a list of strings")
    return out


def _norm_heads(heads: Any, L: int, H: int, what: str = "heads") -> list[tuple[int, int]]:
    """``heads`` (or ``maps``) → sorted distinct ``(layer, head)`` pairs, parsed by :func:`sinkwidgets._args.heads`
    (pairs, ``"L2H2"``, a list of them or a ``[P, 2]`` array; negative indices count from the end). ``None`` and an
    empty list give ``[]``. ``"all"`` is refused: collect keeps ``[T, d]`` per head and prompt, for chosen heads."""
    if heads is None or (isinstance(heads, (list, tuple, np.ndarray)) and len(heads) == 0):
        return []
    if isinstance(heads, str) and heads.strip().lower() == "all":
        raise SinkwidgetsValueError(
            f"{what}={heads!r}: collect keeps per-token outputs and values ([T, d] per prompt) of chosen heads only, "
            f"so 'all' ({L * H} heads) is refused; list the heads, e.g. {what}=[(2, 2), (5, 6)], or find them with "
            "sw.tags.boundary_heads(model, texts)")
    return sorted(set(parse_heads(what, heads, L, H, allow_all=False)))


def _norm_layers(layers: Any, L: int) -> list[int]:
    """``layers`` → sorted distinct layers (``None``: none; ``"all"``; an int, ``"12-29"``, a list), parsed by
    :func:`sinkwidgets._args.layers` (negative indices count from the end)."""
    if layers is None:
        return []
    return parse_layers("layers", layers, L, allow_empty=True)


def _sel(heads: list[tuple[int, int]]) -> dict[int, list[int]]:
    sel: dict[int, list[int]] = {}
    for l, h in heads:
        sel.setdefault(l, []).append(h)
    return sel


def collect(model, texts: Sequence[str], heads: Any = (), layers: Any = None, pool: Sequence[str] = ("mean", "last"),
            *, maps: Any = True, outputs: bool = True, values: bool = True, summary: bool = True,
            add_bos: bool | None = None, max_tokens: int | None = None, batch_size: int = 8, method: str = "auto",
            remote: Any = False, progress: bool | None = None, labels: Sequence[int] | None = None,
            groups: Sequence[Any] | None = None, options: RunOptions | None = None) -> TagData:
    """Run ``texts`` through ``model`` in batches and keep what catch / tag / release need, as a :class:`TagData`.

    Parameters
    ----------
    model : a model from :func:`sinkwidgets.load_model` (local, or remote on NDIF).
    texts : list of str (hundreds are fine: they run in batches of ``batch_size`` with a progress bar).
    heads : ``(layer, head)`` pairs whose per-head outputs ``o_t`` (after ``W_O``), values ``g_j = v_j W_O^h`` and
        attention maps are kept (``[T, d]``, ``[T, d]``, ``[T, T]`` per prompt and head).
    layers : layers whose residual stream (block output) is kept pooled per prompt (``None``: none; ``"all"``).
    pool : which poolings to keep: ``"mean"`` (over real tokens ``t >= 1``) and/or ``"last"``.
    maps : ``True`` (the chosen heads' maps), ``False``, or a list of other ``(layer, head)`` pairs.
    outputs, values : keep the chosen heads' outputs / values.
    summary : keep α of every head (``[L, H, T]`` per prompt: sink-head selection, :func:`boundary_heads`).
    add_bos, max_tokens, batch_size, method, remote, progress : as in :func:`sinkwidgets.trace`.
    labels, groups : optional per-text labels and groups, stored for :func:`sinkwidgets.tags.probe`.
    options : a :class:`~sinkwidgets.tracing.options.RunOptions` carrying the six run options instead of (or
        besides) the keywords; an option set in both, to different values, is an error.
    """
    from ..tracing import reductions as R
    from ..tracing import run_units

    info = getattr(model, "sinkwidgets", None)
    if info is None:
        raise SinkwidgetsTypeError(f"model: collect() needs a model from sinkwidgets.load_model(), got "
                                   f"{type(model).__name__}; e.g. model = sinkwidgets.load_model('smollm2-135m')")
    texts = _texts(texts, "collect")
    opts = RunOptions.resolve(options, collect, add_bos=add_bos, max_tokens=max_tokens, batch_size=batch_size,
                              method=method, remote=remote, progress=progress)
    L, H, d = info.n_layers, info.n_heads, info.d_model
    head_list = _norm_heads(heads, L, H)
    layer_list = _norm_layers(layers, L)
    pool = (pool,) if isinstance(pool, str) else tuple(pool)
    bad = [p for p in pool if p not in ("mean", "last")]
    if bad:
        raise SinkwidgetsValueError(f"pool={pool!r}: entries must be 'mean' or 'last', got {bad}; e.g. "
                                    "pool=('mean', 'last')")
    if maps is True:
        map_list = head_list
    elif maps is False or maps is None:
        map_list = []
    else:
        map_list = _norm_heads(maps, L, H, "maps")
    if labels is not None:  # the TagData's own rule (integer classes, one per text), checked before model work
        if not hasattr(labels, "__len__") or isinstance(labels, (str, bytes, dict)):
            raise SinkwidgetsTypeError(f"labels={_show(labels)} ({type(labels).__name__}): give one label per text "
                                       f"(a list or 1-D array of {len(texts)} integers), e.g. labels=[0, 1, ...]")
        if len(labels) != len(texts):
            raise SinkwidgetsValueError(f"labels has {len(labels)} entries but there are {len(texts)} texts; give "
                                        "one label per text")
        labels = check_labels("labels", labels, n=len(texts))
    if groups is not None:
        if not hasattr(groups, "__len__") or isinstance(groups, (str, bytes, dict)):
            raise SinkwidgetsTypeError(f"groups={_show(groups)} ({type(groups).__name__}): give one group name per "
                                       f"text (a list of {len(texts)} strings), e.g. groups=['cities', ...]")
        if len(groups) != len(texts):
            raise SinkwidgetsValueError(f"groups has {len(groups)} entries but there are {len(texts)} texts; give "
                                        "one group per text")

    units: list = []
    if summary:
        units.append(R.AttentionSummary())
    if map_list:
        units.append(R.KeptMaps(_sel(map_list)))
    if head_list and outputs:
        units.append(R.HeadOutputs(_sel(head_list)))
    if head_list and values:
        units.append(R.HeadValues(_sel(head_list)))
    if layer_list and pool:
        units.append(R.PooledResidual(layer_list))
    if not units:
        raise SinkwidgetsValueError(f"heads={heads!r}, layers={layers!r}, summary={summary!r}: nothing to collect; "
                                    "pass heads, layers, or summary=True")

    # tokenize first (cheap), so the packed arrays are allocated once; the engine reuses this encoding
    encoded = encode(model, texts, opts)
    lengths = np.asarray([len(e[1]) for e in encoded], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    map_offsets = np.concatenate([[0], np.cumsum(lengths ** 2)])
    n_tok, N, P = int(offsets[-1]), len(texts), len(head_list)
    Ls = len(layer_list)
    sink_scores = np.zeros((L, H, n_tok), np.float32) if summary else None
    ftm = np.zeros((N, L, H), np.float32) if summary else None
    kept = np.zeros((len(map_list), int(map_offsets[-1])), np.float16) if map_list else None
    head_outputs = np.zeros((P, n_tok, d), np.float32) if head_list and outputs else None
    head_values = np.zeros((P, n_tok, d), np.float32) if head_list and values else None
    pooled_mean = np.zeros((N, Ls, d), np.float32) if Ls and "mean" in pool else None
    pooled_last = np.zeros((N, Ls, d), np.float32) if Ls and "last" in pool else None
    token_ids = np.zeros(n_tok, np.int64)
    tokens: list[list[str]] = []
    meta: dict[str, Any] = {}

    block = opts.batch_size * BLOCK_BATCHES
    show = opts.progress if opts.progress is not None else N > opts.batch_size
    from tqdm.auto import tqdm

    with tqdm(total=N, desc=f"collecting {info.name}", unit="text", disable=not show) as bar:
        for start in range(0, N, block):
            res = run_units(model, texts[start:start + block], units, add_bos=opts.add_bos, max_tokens=opts.max_tokens,
                            batch_size=opts.batch_size, method=opts.method, remote=opts.remote, progress=False,
                            encoded=encoded[start:start + block])
            for j, r in enumerate(res):
                i = start + j
                a, b = int(offsets[i]), int(offsets[i + 1])
                if len(r.tokens) != b - a:
                    raise SinkwidgetsRuntimeError(f"text {i}: the engine returned {len(r.tokens)} tokens, tokenize() "
                                                   f"{b - a}; this is a bug in sinkwidgets, please report it")
                tokens.append(list(r.tokens))
                token_ids[a:b] = r.token_ids
                x = r.arrays
                if summary:
                    sink_scores[:, :, a:b] = x["sink_scores"]
                    ftm[i] = x["first_token_mass"]
                if map_list:
                    _check_index(x["map_index"], map_list, "map_index")
                    kept[:, map_offsets[i]:map_offsets[i + 1]] = x["maps"].reshape(len(map_list), -1)
                if head_outputs is not None:
                    _check_index(x["head_output_index"], head_list, "head_output_index")
                    head_outputs[:, a:b] = x["head_outputs"]
                if head_values is not None:
                    _check_index(x["head_value_index"], head_list, "head_value_index")
                    head_values[:, a:b] = x["head_values"]
                if pooled_mean is not None:
                    pooled_mean[i] = x["pooled_mean"]
                if pooled_last is not None:
                    pooled_last[i] = x["pooled_last"]
                if not meta:
                    meta = {k: v for k, v in r.meta.items() if k not in ("text", "truncated", "n_tokens_original",
                                                                           "trace_seconds", "batch_size")}
            bar.update(len(res))
            del res
    meta.update(n_texts=N, pool=list(pool), batch_size=opts.batch_size)
    return TagData(tokens=tokens, offsets=offsets, heads=np.asarray(head_list, np.int32).reshape(-1, 2),
                   token_ids=token_ids, head_outputs=head_outputs, head_values=head_values, sink_scores=sink_scores,
                   first_token_mass=ftm, maps=kept, map_index=np.asarray(map_list, np.int32).reshape(-1, 2)
                   if map_list else None, map_offsets=map_offsets if map_list else None, pooled_mean=pooled_mean,
                   pooled_last=pooled_last, pooled_layers=np.asarray(layer_list, np.int32) if Ls else None,
                   labels=None if labels is None else np.asarray(labels), groups=None if groups is None else
                   [str(g) for g in groups], meta=meta)


def _check_index(index: np.ndarray, expected: list[tuple[int, int]], name: str) -> None:
    got = [tuple(int(v) for v in row) for row in np.asarray(index).reshape(-1, 2)]
    if got != expected:
        raise SinkwidgetsRuntimeError(f"the engine's {name} {got} differs from the requested heads {expected}; this "
                                      "is a bug in sinkwidgets, please report it")


def boundary_heads(model_or_data: Any, texts: Sequence[str] | None = None, *, threshold: float = BOUNDARY_ALPHA,
                   min_later: int = MIN_LATER, top: int | None = None, **collect_kwargs: Any) -> HeadRanking:
    """Heads ranked by mean non-first boundary α over ``texts`` (prompt-dependent sinks: '.', '!', '?', newline).

    Per prompt and head, the score is the largest Gu et al. α among boundary tokens at positions ``>= 1`` with at
    least ``min_later`` later queries; the ranking is by its mean over prompts. Each record has ``layer``, ``head``,
    ``alpha`` (the mean) and ``share`` (prompts with score ``>= threshold``; the pilot selects boundary sink heads
    by ``share >= 0.9`` at ``threshold = 0.25``). ``model_or_data`` is a model (α of all heads is collected from
    ``texts``: one cheap pass) or a :class:`TagData` with ``sink_scores``.

    On SmolLM2-135M the top head is L1H1 (α ≈ 0.43 over three-sentence paragraphs); Gemma-3-270M has essentially
    no boundary sinks (no head above 0.2): its attention mass goes to ``<bos>``.
    """
    # every argument is checked before the collect (the model work)
    check_number("threshold", threshold, example=BOUNDARY_ALPHA)
    check_integer("min_later", min_later, minimum=0, example=MIN_LATER)
    check_integer("top", top, minimum=1, allow_none=True, example=10)
    if isinstance(model_or_data, TagData):
        data = model_or_data
    else:
        if getattr(model_or_data, "sinkwidgets", None) is None:
            raise SinkwidgetsTypeError(f"model_or_data={_show(model_or_data)} ({type(model_or_data).__name__}): "
                                       "boundary_heads() needs a model from sinkwidgets.load_model() or a TagData "
                                       "with sink_scores; e.g. boundary_heads(sinkwidgets.load_model('smollm2-135m'), "
                                       "texts)")
        if texts is None:
            raise SinkwidgetsValueError("boundary_heads(model, texts): give the texts (paragraphs of several "
                                        "sentences)")
        texts = _texts(texts, "boundary_heads")
        data = collect(model_or_data, texts, heads=(), layers=None, **collect_kwargs)
    return boundary_heads_from_data(data, threshold=threshold, min_later=min_later, top=top)


def residual_rows(model, texts: Sequence[str], layer: int, *, add_bos: bool | None = None,
                  max_tokens: int | None = None, batch_size: int = 8,
                  options: RunOptions | None = None) -> list[np.ndarray]:
    """The residual stream after ``layer`` at every token of each text, ``[T_i, d]`` each (for the PC control of
    :func:`sinkwidgets.tags.release`; one layer only). ``options``: a ``RunOptions`` (its ``add_bos``,
    ``max_tokens``, ``batch_size``, ``method`` and ``remote`` are used; no progress bar)."""
    from ..tracing import reductions as R
    from ..tracing import run_units

    opts = RunOptions.resolve(options, residual_rows, add_bos=add_bos, max_tokens=max_tokens, batch_size=batch_size)
    res = run_units(model, list(texts), [R.ResidualRows([int(layer)])], add_bos=opts.add_bos,
                    max_tokens=opts.max_tokens, batch_size=opts.batch_size, method=opts.method, remote=opts.remote,
                    progress=False)
    return [np.array(r.arrays["resid_rows"][0], dtype=np.float32) for r in res]
