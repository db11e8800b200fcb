"""What each intervention edits: user arguments checked and turned into tracing edits (no in-trace code here).

The edits themselves are plain-torch units of :mod:`sinkwidgets.tracing.edits` (shipped to NDIF by value with the
engine); this module parses what a user passes (layer sets, positions, a basis, a sink token) into them, with
errors that name the argument and the fix. :func:`mask_sink_edit` gives the edit of :func:`~.experiments.mask_sink`
for use under :func:`sinkwidgets.trace`::

    tr = sw.trace(model, text, edits=[sw.interventions.mask_sink_edit(model, "all", token=0)])
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .._args import ArgumentTypeError, is_int, show
from .._args import integer as _integer
from .._args import layer as _layer
from .._args import layers as _layers
from .._args import number as _number
from .._args import orthonormal_basis as _orthonormal_basis
from .._args import positions as _positions
from .._args import token_ids as _token_ids
from ..errors import SinkwidgetsTypeError, SinkwidgetsValueError
from .results import InterventionError, MassiveSpec


def _checked(parse, *args, **kwargs):
    """Run a parser of :mod:`sinkwidgets._args`: its value errors become :class:`InterventionError` (what this
    module raised before the argument layer, so ``except InterventionError`` keeps working); its type errors stay
    ``ArgumentTypeError`` (a ``TypeError`` and a ``ValueError``). The message is the parser's: argument, value, fix."""
    try:
        return parse(*args, **kwargs)
    except ArgumentTypeError:
        raise
    except SinkwidgetsValueError as exc:
        raise InterventionError(str(exc)) from None


def _texts(texts) -> list[str]:
    if isinstance(texts, str):
        return [texts]
    try:
        out = list(texts)
    except TypeError:
        out = None
    if not out or not all(isinstance(t, str) for t in out):
        raise InterventionError(f"texts must be a str or a non-empty list of str, got {type(texts).__name__}")
    return out


def _tokenize(model, text, add_bos, max_tokens):
    from ..tracing.api import tokenize

    max_tokens = _checked(_integer, "max_tokens", max_tokens, minimum=3, allow_none=True, example=512)
    ids, used = tokenize(model, text, add_bos)
    if max_tokens is not None:
        ids = ids[:max_tokens]
    if len(ids) < 3:
        raise InterventionError(f"text {text[:40]!r} has {len(ids)} tokens; interventions need at least 3")
    return ids, used


def _layers_arg(sel, L, name) -> list[int]:
    """A layer set (``sinkwidgets._args.layers``: ``"all"``, ``"12-29"``, ``"3,5,12-14"``, an int, a list; negative
    counts from the end; a reversed range or an empty set is an error) as sorted indices; ``None``: ``[]``.
    ``attention_layers`` may be empty (``()``: no attention statistics)."""
    if sel is None:
        return []
    return _checked(_layers, name, sel, L, allow_empty=name == "attention_layers")


def check_layer(name: str, value: Any, L: int) -> int:
    """One block index in ``0..L-1`` (negative counts from the end: ``-1`` is the last block)."""
    return _checked(_layer, name, value, L)


def check_int(name: str, value: Any, minimum: int | None = None) -> int:
    """An integer ``>= minimum`` (numpy ints accepted; floats and bools refused)."""
    return _checked(_integer, name, value, minimum=minimum)


def massive_args(abs_thr: Any, ratio: Any, top_k: Any = 1) -> tuple[float, float, int]:
    """:func:`~.experiments.find_massive`'s thresholds ``abs_thr > 0``, ``ratio > 0`` and ``top_k >= 1``."""
    return (_checked(_number, "abs_thr", abs_thr, low=0, low_open=True, example=100.0),
            _checked(_number, "ratio", ratio, low=0, low_open=True, example=1000.0),
            _checked(_integer, "top_k", top_k, minimum=1, example=32))


def check_spec(spec: Any, info) -> MassiveSpec:
    """A :class:`MassiveSpec` checked against the model (``info``: ``model.sinkwidgets``) and normalised: ``layer``
    in ``0..L-1`` (``-1``: the last block), ``channels`` distinct ints in ``0..d_model-1``, one finite mean per
    channel, ``abs_thr`` and ``ratio`` > 0."""
    from dataclasses import replace

    if not isinstance(spec, MassiveSpec):
        raise ArgumentTypeError(f"spec={type(spec).__name__}: spec must be a MassiveSpec (from find_massive) or None; "
                                "e.g. spec=sw.interventions.find_massive(model, texts)")
    layer = _checked(_layer, "spec.layer", spec.layer, info.n_layers)
    chans = spec.channels
    if isinstance(chans, np.ndarray):
        chans = chans.tolist()
    if not isinstance(chans, (list, tuple)) or not chans:
        raise InterventionError(f"spec.channels={chans!r}: give a non-empty list of channel indices in "
                                f"0..{info.d_model - 1}")
    chans = [_checked(_integer, "spec.channels", c, minimum=0, maximum=info.d_model - 1) for c in chans]
    if len(set(chans)) != len(chans):
        raise InterventionError(f"spec.channels={chans}: a channel is listed twice; list each channel once")
    means = list(np.asarray(spec.means).reshape(-1)) if isinstance(spec.means, np.ndarray) else spec.means
    if not isinstance(means, (list, tuple)) or len(means) != len(chans):
        raise InterventionError(f"spec.means: give one mean per channel ({len(chans)}), got {means!r}")
    means = [_checked(_number, "spec.means", m) for m in means]
    abs_thr, ratio, _ = massive_args(spec.abs_thr, spec.ratio)
    return replace(spec, layer=layer, channels=chans, means=means, abs_thr=abs_thr, ratio=ratio)


def _progress(it, desc, total, show=True):
    from tqdm.auto import tqdm

    return tqdm(it, desc=desc, total=total, unit="text", leave=False, disable=total < 2 or not show)


def _positions_weight(positions, T, sink_positions, i):
    """``positions`` of text ``i`` (``T`` tokens) → float weights ``[T]`` (1 where the edit applies).

    ``"all"``, ``"non_sink"`` (every token but ``sink_positions``), a callable ``(i, T) -> positions``, a bool mask
    ``[T]``, or positions (``sinkwidgets._args.positions``: ints, negative counting from the end of the text; a list
    of one list is that text's). Several lists here mean per-text positions whose count does not match the texts:
    refused, never flattened."""
    w = np.zeros(T, dtype=np.float32)
    if isinstance(positions, str):
        if positions == "all":
            w[:] = 1
        elif positions == "non_sink":
            w[:] = 1
            w[[p for p in sink_positions if p < T]] = 0
        else:
            raise InterventionError(f"positions={positions!r}: use 'non_sink', 'all', a list of positions or a bool "
                                    "mask [T] (or one of those per text)")
        return w
    if callable(positions):
        positions = positions(i, T)
    if isinstance(positions, np.ndarray) and positions.dtype == bool or (
            isinstance(positions, (list, tuple)) and positions
            and all(isinstance(p, (bool, np.bool_)) for p in positions)):
        arr = np.asarray(positions, dtype=bool)
        if arr.shape != (T,):
            raise InterventionError(f"positions: a bool mask must have shape ({T},) for text {i}, got {arr.shape}")
        w[arr] = 1
        return w
    pos = _checked(_positions, "positions", positions)
    if pos.per_text is not None and len(pos.per_text) != 1:
        raise InterventionError(
            f"positions: {len(pos.per_text)} lists of positions, but they do not match the texts (text {i} got all "
            "of them); give one list per text, as many lists as texts, or one flat list for every text")
    idx = _checked(lambda: pos.for_text(0, T) if pos.per_text is not None else pos.for_text(i, T))
    w[idx] = 1
    return w


def per_text_positions(positions, texts: list) -> bool:
    """Whether ``positions`` gives one entry per text (a list of lists, of bool masks or of strings, or a 2-D
    array), checked before any model work: their count must equal ``len(texts)`` (never flattened onto every text),
    and each entry must be ``"all"``, ``"non_sink"``, a bool mask or a list of ints. Shared forms (a string, a
    callable, one list of ints, one bool mask) return False."""
    if isinstance(positions, str) or callable(positions):
        return False
    if isinstance(positions, np.ndarray):
        if positions.ndim < 2:
            return False
        entries = list(positions)
    elif isinstance(positions, (list, tuple)) and positions and all(
            isinstance(p, (str, list, tuple, range, np.ndarray)) for p in positions):
        entries = list(positions)
    else:
        return False
    if len(entries) != len(texts):
        raise InterventionError(
            f"positions: {len(entries)} per-text entries for {len(texts)} texts; give one list (or mask) per text, "
            "in the texts' order, or one flat list of positions for every text")
    for i, p in enumerate(entries):
        if isinstance(p, str):
            if p not in ("all", "non_sink"):
                raise InterventionError(f"positions[{i}]={p!r}: use 'non_sink', 'all', a list of positions or a "
                                        "bool mask [T]")
        elif not (np.asarray(p).dtype == bool and np.asarray(p).ndim == 1):
            _checked(_positions, f"positions[{i}]", p)
    return True


def _set_name(sel, L) -> str:
    if isinstance(sel, str):
        return "all layers" if sel == "all" else f"layers {sel}"
    ls = _layers_arg(sel, L, "layers")
    if ls == list(range(ls[0], ls[-1] + 1)) and len(ls) > 1:
        return f"layers {ls[0]}-{ls[-1]}"
    return "layers " + ",".join(map(str, ls))


def layer_sets(layers, L: int, sweep: bool) -> dict[str, list[int]]:
    """:func:`~.experiments.mask_sink`'s ``layers`` → ``{condition name: [layers]}`` (plus one per layer with
    ``sweep``: True or False (numpy bools and the ints 0 and 1 too); anything else is refused, not read as truthy)."""
    if isinstance(sweep, (bool, np.bool_)) or (is_int(sweep) and int(sweep) in (0, 1)):
        sweep = bool(sweep)
    else:
        raise ArgumentTypeError(f"sweep={show(sweep)} ({type(sweep).__name__}): sweep must be True or False (one "
                                "condition per single layer, or not), e.g. sweep=True")
    if isinstance(layers, dict):
        sets = {str(k): _layers_arg(v, L, "layers") for k, v in layers.items()}
    elif isinstance(layers, (list, tuple)) and layers and all(isinstance(v, (str, list, tuple, range)) for v in layers):
        sets = {_set_name(v, L): _layers_arg(v, L, "layers") for v in layers}
    elif layers is None:
        sets = {}
    else:
        sets = {_set_name(layers, L): _layers_arg(layers, L, "layers")}
    if sweep:
        sets.update({f"layer {li}": [li] for li in range(L)})
    if not sets:
        raise InterventionError("mask_sink needs layers=... or sweep=True")
    return sets


def sink_tokens(token) -> list[int]:
    """``token`` (one position or a list of positions of the keys to hide, counted from the start of the text)
    → a sorted list of distinct positions. Negative positions, strings, floats and per-text lists are refused."""
    pos = _checked(_positions, "token", token)
    if pos.per_text is not None:
        raise ArgumentTypeError(f"token={token!r}: give one position or a list of positions (the same in every "
                                "text), e.g. token=0 or token=[0, 1]")
    bad = [p for p in pos.shared if p < 0]
    if bad:
        raise InterventionError(f"token={token!r}: position {bad[0]} is negative; the hidden keys count from the "
                                "start of the text, e.g. token=0 (the first token)")
    return sorted(set(pos.shared))


def mask_sink_edit(model, layers="all", *, token=0, rows=None):
    """The edit of :func:`~.experiments.mask_sink`: key ``token`` (an int or a list) hidden from every query
    ``t >= 1`` in ``layers`` (``"all"``, ``"12-29"``, a list), for batch rows ``rows`` (None: all rows).

    Returns a :class:`sinkwidgets.tracing.edits.HideKeys`; pass it to ``sinkwidgets.trace(..., edits=[...])`` to see
    the trace under the mask (SmolLM2, ``layers="all"``, ``token=0``: token 1 becomes the sink).
    """
    from ..tracing.edits import HideKeys

    info = getattr(model, "sinkwidgets", None)
    if info is None:
        raise SinkwidgetsTypeError(f"mask_sink_edit(model={type(model).__name__}): pass a model from "
                                   "sinkwidgets.load_model(...) (it carries model.sinkwidgets)")
    return HideKeys(_layers_arg(layers, info.n_layers, "layers"), sink_tokens(token), rows)


def orthonormal_basis(basis, d: int):
    """``basis`` (``[d, r]`` or ``[d]``, any full-rank directions) → ``(U [d, r] float32 torch, r)`` by QR.

    Checked by ``sinkwidgets._args.orthonormal_basis``: finite, not zero, full column rank (a zero or
    rank-deficient basis is refused: QR would turn it into coordinate axes)."""
    import torch

    Bm = basis.detach().cpu().numpy() if hasattr(basis, "detach") else basis
    try:
        shape = np.shape(Bm)
    except (TypeError, ValueError):  # ragged lists: the parser below names them
        shape = ()
    if len(shape) in (1, 2) and shape[0] != d:
        raise InterventionError(f"basis has shape {shape}; it must be [d_model={d}, r] (one column per direction)")
    Q = _checked(_orthonormal_basis, "basis", Bm, d)
    return torch.tensor(Q, dtype=torch.float32), int(Q.shape[1])


def prefixes(model, prefix) -> tuple[list[list[int]], list[str]]:
    """:func:`~.experiments.add_sink`'s ``prefix`` → token id lists and condition names (``"none"`` first).

    A string (tokenized without special tokens), a list of token ids (``sinkwidgets._args.token_ids``: ints in
    ``0..vocab-1``), or a list of such prefixes."""
    one = isinstance(prefix, str) or is_int(prefix) or (
        isinstance(prefix, (list, tuple, np.ndarray)) and len(prefix) > 0 and all(is_int(x) for x in prefix))
    if not one and not (isinstance(prefix, (list, tuple)) and prefix):
        raise ArgumentTypeError(f"prefix={prefix!r}: give a string, a list of token ids, or a list of those; "
                                "e.g. prefix='\\n'")
    items = [prefix] if one else list(prefix)
    tok = getattr(model, "tokenizer", None)
    vocab = len(tok) if tok is not None else None
    pre_ids, conds = [], ["none"]
    for p in items:
        if isinstance(p, str):
            pi = list(model.tokenizer(p, add_special_tokens=False)["input_ids"])
            name = f"prefix {p!r}"
            if not pi:
                raise InterventionError(f"prefix {p!r} produced no tokens; use e.g. '\\n' or a token id list")
        else:
            pi = _checked(_token_ids, "prefix", p, vocab)
            name = f"prefix ids {pi}"
        pre_ids.append(pi)
        conds.append(name)
    return pre_ids, conds
