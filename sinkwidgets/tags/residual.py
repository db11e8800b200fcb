"""The residual stream of a collected corpus, per token, computed again with the model on demand (for TagExplorer).

A :class:`~sinkwidgets.tags.TagData` keeps per-token arrays only for the chosen heads and the residual only pooled
per prompt (a per-token residual of every layer would be ``[n_tok, L, d]``). Following a token's tag coordinate
across layers needs the residual at that token after each layer, but only along a few directions: the
:class:`~sinkwidgets.tracing.reductions.ResidualProjection` unit projects it inside the trace, so ``[T, k]`` per
layer leaves the model. torch is imported only when these functions run.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..errors import SinkwidgetsRuntimeError, SinkwidgetsValueError
from .data import TagData


def prompt_texts(model: Any, data: TagData, prompts: Sequence[int], texts: Sequence[str] | None = None) -> list[str]:
    """The texts of ``prompts``: from ``texts`` (all N texts given to collect) when given, else decoded from
    ``data.token_ids`` and checked to tokenize back to the same ids (so the model sees exactly the collected tokens).
    """
    from ..tracing import tokenize

    prompts = [int(i) for i in prompts]
    if texts is not None:
        if len(texts) != data.n_prompts:
            raise SinkwidgetsValueError(f"texts has {len(texts)} entries but the TagData has {data.n_prompts} prompts; pass the "
                             "same list of texts that went to sinkwidgets.tags.collect")
        return [str(texts[i]) for i in prompts]
    if data.token_ids is None:
        raise SinkwidgetsValueError("this TagData has no token_ids, so its texts cannot be rebuilt; pass texts=[...] (the texts "
                         "given to sinkwidgets.tags.collect)")
    add_bos = data.meta.get("add_bos")
    out = []
    for i in prompts:
        ids = data.token_ids[data.span(i)].tolist()
        text = model.tokenizer.decode(ids, skip_special_tokens=False)
        again, _ = tokenize(model, text, add_bos)
        if list(again) != ids:
            raise SinkwidgetsValueError(f"prompt {i}: its decoded text does not tokenize back to the collected tokens "
                             f"({len(again)} vs {len(ids)} ids); pass texts=[...] (the texts given to "
                             "sinkwidgets.tags.collect)")
        out.append(text)
    return out


def residual_coords(model: Any, data: TagData, prompts: Sequence[int], basis: np.ndarray, layers: Sequence[int], *,
                    texts: Sequence[str] | None = None, batch_size: int = 8) -> list[np.ndarray]:
    """The residual stream after each of ``layers`` at every token of ``prompts``, projected on ``basis [d, k]``.

    Returns one ``[Ls, T_i, k]`` float32 array per prompt (``Ls = len(layers)``, sorted), computed inside the trace
    by :class:`~sinkwidgets.tracing.reductions.ResidualProjection`.
    """
    from ..tracing import reductions as R
    from ..tracing import run_units

    prompts = [int(i) for i in prompts]
    if not prompts:
        return []
    unit = R.ResidualProjection(layers, basis)
    res = run_units(model, prompt_texts(model, data, prompts, texts), [unit], add_bos=data.meta.get("add_bos"),
                    batch_size=batch_size, progress=False)
    out = []
    for i, r in zip(prompts, res):
        c = np.asarray(r.arrays["resid_coords"], dtype=np.float32)
        if c.shape[1] != data.lengths[i]:
            raise SinkwidgetsRuntimeError(
                f"prompt {i}: the model returned {c.shape[1]} tokens, the TagData has {data.lengths[i]}; pass the "
                "model, texts= and add_bos the TagData was collected with (data.meta['model'], data.texts)")
        out.append(c)
    return out


def residual_rows_packed(model: Any, data: TagData, layer: int, *, texts: Sequence[str] | None = None,
                         batch_size: int = 8) -> np.ndarray:
    """The residual after ``layer`` at every token of every prompt, packed like the TagData, ``[n_tok, d]``."""
    from .collect import residual_rows

    rows = residual_rows(model, prompt_texts(model, data, range(data.n_prompts), texts), layer,
                         add_bos=data.meta.get("add_bos"), batch_size=batch_size)
    out = np.concatenate(rows, axis=0) if rows else np.zeros((0, data.d_model or 0), np.float32)
    if len(out) != data.n_tokens:
        raise SinkwidgetsRuntimeError(
            f"the model returned {len(out)} tokens, the TagData has {data.n_tokens}; pass the model and texts= the "
            "TagData was collected with (data.meta['model'], data.texts)")
    return out
