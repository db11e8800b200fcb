"""What each intervention edits: user arguments checked and turned into tracing edits (no in-trace code here).

The edits themselves are plain-torch units of :mod:`sinkwidgets.tracing.edits` (shipped to NDIF by value with the
engine); this module parses what a user passes (layer sets, positions, a basis, a sink token) into them, with
errors that name the argument and the fix. :func:`mask_sink_edit` gives the edit of :func:`~.experiments.mask_sink`
for use under :func:`sinkwidgets.trace`::

    tr = sw.trace(model, text, edits=[sw.interventions.mask_sink_edit(model, "all", token=0)])
"""

from __future__ import annotations

import numpy as np

from .results import InterventionError


def _texts(texts) -> list[str]:
    if isinstance(texts, str):
        return [texts]
    out = list(texts)
    if not out or not all(isinstance(t, str) for t in out):
        raise InterventionError(f"texts must be a str or a non-empty list of str, got {type(texts).__name__}")
    return out


def _tokenize(model, text, add_bos, max_tokens):
    from ..tracing.api import tokenize

    ids, used = tokenize(model, text, add_bos)
    if max_tokens is not None:
        ids = ids[:max_tokens]
    if len(ids) < 3:
        raise InterventionError(f"text {text[:40]!r} has {len(ids)} tokens; interventions need at least 3")
    return ids, used


def _layers_arg(sel, L, name) -> list[int]:
    if sel is None:
        return []
    if isinstance(sel, str):
        if sel == "all":
            return list(range(L))
        try:
            a, b = (int(x) for x in sel.split("-"))
        except ValueError:
            raise InterventionError(f"{name}={sel!r}: use 'all', a range such as '12-29', or a list of layer "
                                    "indices") from None
        out = list(range(a, b + 1))
    elif isinstance(sel, (int, np.integer)):
        out = [int(sel)]
    else:
        out = [int(x) for x in sel]
    bad = [x for x in out if not 0 <= x < L]
    if bad:
        raise InterventionError(f"{name}: layers {bad} out of range; the model has {L} layers (0..{L - 1})")
    return sorted(set(out))


def _progress(it, desc, total, show=True):
    from tqdm.auto import tqdm

    return tqdm(it, desc=desc, total=total, unit="text", leave=False, disable=total < 2 or not show)


def _positions_weight(positions, T, sink_positions, i):
    """``positions`` → float weights ``[T]`` (1 where the edit applies)."""
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
    arr = np.asarray(positions)
    if arr.dtype == bool:
        if arr.shape != (T,):
            raise InterventionError(f"positions: a bool mask must have shape ({T},) for text {i}, got {arr.shape}")
        w[arr] = 1
    else:
        if arr.size and (arr.min() < -T or arr.max() >= T):
            raise InterventionError(f"positions {arr.tolist()} out of range for text {i} ({T} tokens)")
        w[arr.astype(int)] = 1
    return w


def _set_name(sel, L) -> str:
    if isinstance(sel, str):
        return "all layers" if sel == "all" else f"layers {sel}"
    ls = _layers_arg(sel, L, "layers")
    if ls == list(range(ls[0], ls[-1] + 1)) and len(ls) > 1:
        return f"layers {ls[0]}-{ls[-1]}"
    return "layers " + ",".join(map(str, ls))


def layer_sets(layers, L: int, sweep: bool) -> dict[str, list[int]]:
    """:func:`~.experiments.mask_sink`'s ``layers`` → ``{condition name: [layers]}`` (plus one per layer with
    ``sweep``)."""
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
    """``token`` (an int or a list of positions) → a list of positions."""
    return [int(token)] if isinstance(token, (int, np.integer)) else [int(t) for t in token]


def mask_sink_edit(model, layers="all", *, token=0, rows=None):
    """The edit of :func:`~.experiments.mask_sink`: key ``token`` (an int or a list) hidden from every query
    ``t >= 1`` in ``layers`` (``"all"``, ``"12-29"``, a list), for batch rows ``rows`` (None: all rows).

    Returns a :class:`sinkwidgets.tracing.edits.HideKeys`; pass it to ``sinkwidgets.trace(..., edits=[...])`` to see
    the trace under the mask (SmolLM2, ``layers="all"``, ``token=0``: token 1 becomes the sink).
    """
    from ..tracing.edits import HideKeys

    info = getattr(model, "sinkwidgets", None)
    if info is None:
        raise TypeError("pass a model from sinkwidgets.load_model(...) (it carries model.sinkwidgets)")
    return HideKeys(_layers_arg(layers, info.n_layers, "layers"), sink_tokens(token), rows)


def orthonormal_basis(basis, d: int):
    """``basis`` (``[d, r]`` or ``[d]``, any full-rank directions) → ``(U [d, r] float32 torch, r)`` by QR."""
    import torch

    Bm = np.asarray(basis.detach().cpu() if hasattr(basis, "detach") else basis, dtype=np.float64)
    if Bm.ndim == 1:
        Bm = Bm[:, None]
    if Bm.ndim != 2 or Bm.shape[0] != d:
        raise InterventionError(f"basis has shape {Bm.shape}; it must be [d_model={d}, r] (one column per direction)")
    if not np.isfinite(Bm).all():
        raise InterventionError("basis contains NaN or inf")
    Q, R = np.linalg.qr(Bm)
    rank = int((np.abs(np.diag(R)) > 1e-8 * max(1.0, np.abs(R).max())).sum())
    if rank < Bm.shape[1]:
        raise InterventionError(f"basis has {Bm.shape[1]} columns but rank {rank}: drop dependent directions")
    return torch.tensor(Q, dtype=torch.float32), rank


def prefixes(model, prefix) -> tuple[list[list[int]], list[str]]:
    """:func:`~.experiments.add_sink`'s ``prefix`` → token id lists and condition names (``"none"`` first)."""
    items = prefix if isinstance(prefix, list) and prefix and not isinstance(prefix[0], int) else [prefix]
    pre_ids, conds = [], ["none"]
    for p in items:
        if isinstance(p, str):
            pi = list(model.tokenizer(p, add_special_tokens=False)["input_ids"])
            name = f"prefix {p!r}"
        else:
            pi = [int(x) for x in p]
            name = f"prefix ids {pi}"
        if not pi:
            raise InterventionError(f"prefix {p!r} produced no tokens; use e.g. '\\n' or a token id list")
        pre_ids.append(pi)
        conds.append(name)
    return pre_ids, conds
