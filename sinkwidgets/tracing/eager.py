"""The eager executor: the model runs eager attention, and each layer's probabilities are read as they are made.

Per layer, in forward order: the value projection (``"values"``), the output projection's input when it sits
inside the attention module (``"o_input"``: Llama, GPT-2), the attention probabilities ``[B, H, T, T]``
(``"probs"``, handed to the units in query chunks and released before the next layer runs), the output
projection's input when it comes after the attention module (BERT), and the block output (``"resid"``). A source
is read only when an active unit asks for it (nnsight needs values in forward order). Edits (:mod:`.edits`) act
in the same order: a layer's attention mask before its attention runs (the eager probabilities are then the
edited ones), the residual edits before the units that read the block output.
"""

from __future__ import annotations

import torch

from .chunked import check_values, read_values
from .collect import Collector
from .edits import EditSet, set_attention_mask
from .hooks import first, hooked_layers, output_hook
from .reductions import CAUSAL_QUERY_CHUNK, QUERY_CHUNK, BatchContext, UnitSet, reduce_attention_chunks


def map_chunks(A: torch.Tensor, causal: bool):
    """``(start, A[:, :, s:s+c, :w])`` query chunks of a full map ``A [B, H, T, T]``.

    Causal models: a chunk stops at its last query's key (later keys are exactly 0), in rows of
    :data:`~.reductions.CAUSAL_QUERY_CHUNK`; otherwise rows of :data:`~.reductions.QUERY_CHUNK` over all keys.
    """
    T = A.shape[-1]
    if causal:
        c = CAUSAL_QUERY_CHUNK
        return ((s, A[:, :, s : s + c, : min(T, s + c)]) for s in range(0, T, c))
    return ((s, A[:, :, s : s + QUERY_CHUNK]) for s in range(0, T, QUERY_CHUNK))


def reduce_attention(A: torch.Tensor, qmask: torch.Tensor, first: torch.Tensor, n_real: torch.Tensor, causal: bool):
    """α ``[B, H, T]``, first-token mass ``[B, H]``, entropy ``[B, H]`` of a full map ``A [B, H, T, T]``
    (what :class:`~.reductions.AttentionSummary` accumulates, outside a trace; formulas in
    :func:`~.reductions.reduce_attention_chunks`)."""
    B, H, T, _ = A.shape
    return reduce_attention_chunks(map_chunks(A, causal), B, H, T, qmask, first, n_real, causal)


def run_eager(model, info, inputs: dict, fwd_kwargs: dict, units: UnitSet, ctx: BatchContext,
              edits: EditSet | None = None) -> tuple[dict, dict]:
    """One batch through the model under eager attention (and ``edits``) → ``(packed results, meta)``.

    A layer's probabilities and block output go to the units from torch forward hooks (:mod:`.hooks`) where no
    edit changes them, except at the last such layer; the traced block reads the rest through nnsight."""
    from ..models.adapters import get_path

    ad = info.adapter
    check_values(info, units)
    layers = get_path(model, ad.layers)
    inner = ad.o_proj.startswith(ad.attn + ".")
    windows = _windows(model, info, edits)
    handles: list = []  # the forward hooks (.hooks) installed in the block, removed when it ends
    try:
        with torch.no_grad(), model.trace(inputs, **fwd_kwargs):
            col = Collector(units, ctx, edits)
            hooked = _hooked(col, len(layers))
            for li, srcs in hooked.items():
                if "probs" in srcs:
                    handles.append(output_hook(get_path(layers[li], ad.attn), _probs_feeder(col, li, ctx.causal)))
                if "resid" in srcs:
                    handles.append(output_hook(layers[li], _resid_feeder(col, li)))
            sw_results = _block(col, layers, ad, inner, windows, ctx, hooked, model)
    finally:
        for h in handles:
            h.remove()
    return sw_results, {"method": "eager"}


def _hooked(col: Collector, n_layers: int) -> dict[int, set[str]]:
    """The probabilities and block outputs fed by forward hooks (:func:`.hooks.hooked_layers`): those no edit
    changes (an ``"attn_mask"`` edit changes the probabilities, a ``"resid"`` edit the block output)."""
    return hooked_layers(col, n_layers, ("probs", "resid"),
                         lambda li, s: not col.edits.at(li, "attn_mask" if s == "probs" else "resid"))


def _probs_feeder(col: Collector, li: int, causal: bool):
    return lambda out: col.feed_probs(li, map_chunks(out[1], causal))


def _resid_feeder(col: Collector, li: int):
    return lambda out: col.feed(li, "resid", first(out))


def _block(col, layers, ad, inner, windows, ctx, hooked, model):
    """The traced block's per-layer reads and edits (those not fed by ``hooked``'s forward hooks)."""
    import nnsight

    from ..models.adapters import get_path

    for li in range(len(layers)):
        need = col.needs(li)
        if not need:
            continue
        layer = layers[li]
        oproj = get_path(layer, ad.o_proj)
        if "attn_mask" in need:
            set_attention_mask(get_path(layer, ad.attn), col.attention_mask(li, windows[li], ctx.qmask.device))
        if "values" in need:
            col.feed(li, "values", read_values(get_path(layer, ad.v_proj), ad.v_split), oproj.weight)
        if "o_input" in need and inner:
            col.feed(li, "o_input", oproj.input, oproj.weight)
        if "probs" in need and "probs" not in hooked.get(li, ()):
            A = get_path(layer, ad.attn).output[1]
            col.feed_probs(li, map_chunks(A, ctx.causal))
            del A  # do not keep this layer's [B, H, T, T] map alive while the next layer computes its own
        if "o_input" in need and not inner:
            col.feed(li, "o_input", oproj.input, oproj.weight)
        if "resid" in need and "resid" not in hooked.get(li, ()):
            out = layer.output
            h = out[0] if isinstance(out, tuple) else out
            if col.edits.at(li, "resid"):
                h = col.edit_resid(li, h)
                layer.output = (h, *out[1:]) if isinstance(out, tuple) else h
            col.feed(li, "resid", h)
            del h, out
    if col.needs_logits():
        col.feed_logits(model.output.logits)
    return nnsight.save(col.packed())


def _windows(model, info, edits: EditSet | None) -> list:
    """Each layer's sliding window (None: full causal), needed only to rebuild a mask for ``"attn_mask"`` edits;
    read from the chunked plan, so mask edits need a rotary decoder."""
    if edits is None or not any(e.site == "attn_mask" for e in edits.edits):
        return [None] * info.n_layers
    from ..errors import ChunkedUnsupportedError, SinkwidgetsValueError
    from .chunked import layer_plan
    from .qk import AttentionParams

    try:
        params = layer_plan(model, info).params
    except ChunkedUnsupportedError as exc:
        names = [e.name for e in edits.edits if e.site == "attn_mask"]
        raise SinkwidgetsValueError(
            f"edits {names}: attention-mask edits rebuild each layer's causal / sliding-window mask, which "
            f"sinkwidgets knows only for rotary (Llama-style) decoders; {info.name!r} ({info.architecture}) is not "
            "one. Use a residual edit, or a model such as 'smollm2-135m'") from exc
    return [AttentionParams.of(p).window for p in params]
