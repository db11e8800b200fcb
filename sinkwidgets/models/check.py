"""A load-time check that a model's attention probabilities can be traced (used for unlisted architectures)."""

from __future__ import annotations

import torch

from ..errors import SinkwidgetsTypeError, TraceError


def validate_model(model, atol: float = 1e-3) -> None:
    """Trace a 6-token probe and check layer 0's attention probabilities: ``[B, H, T, T]``, rows summing to one,
    and an upper triangle that agrees with the adapter's causality (all zero for a decoder, not for an encoder).

    Raises :class:`~sinkwidgets.errors.TraceError` naming the model when its attention cannot be traced.
    """
    from .adapters import SUPPORTED, get_path

    info = getattr(model, "sinkwidgets", None)
    if info is None:
        raise SinkwidgetsTypeError(f"validate_model needs a model from sinkwidgets.load_model(), got {type(model).__name__}")
    ad = info.adapter
    ids = torch.tensor([list(range(5, 11))])
    mask = torch.ones_like(ids)
    try:
        dev = next(model._module.parameters()).device
    except (AttributeError, StopIteration):
        dev = torch.device("cpu")
    layers = get_path(model, ad.layers)
    kw = {"use_cache": False} if ad.causal else {}
    try:
        with torch.no_grad(), model.trace(dict(input_ids=ids.to(dev), attention_mask=mask.to(dev)), **kw):
            A = get_path(layers[0], ad.attn).output[1].save()
    except Exception as exc:  # noqa: BLE001
        raise TraceError(
            f"could not trace the attention of {info.name!r} ({info.architecture}): {type(exc).__name__}: {exc}. "
            f"Supported families: {SUPPORTED}."
        ) from exc
    if not isinstance(A, torch.Tensor) or A.ndim != 4 or A.shape[-1] != A.shape[-2] != 6 or A.shape[1] != info.n_heads:
        got = tuple(A.shape) if isinstance(A, torch.Tensor) else type(A).__name__
        raise TraceError(
            f"the attention module of {info.name!r} ({info.architecture}) did not return probabilities of shape "
            f"[B, H={info.n_heads}, T, T] under eager attention (got {got}); supported families: {SUPPORTED}"
        )
    upper = float(A.float().triu(1).abs().max())  # attention to later tokens
    if ad.causal and upper > 1e-6:
        raise TraceError(
            f"{info.name!r} ({info.architecture}) was taken for a causal decoder, but its layer-0 attention reaches "
            f"later tokens (up to {upper:.3g}); its α would be averaged over the wrong queries. Please open an issue "
            "with the model id; an encoder loads correctly when its model_type is a known encoder family"
        )
    if not ad.causal and upper == 0.0:
        raise TraceError(
            f"{info.name!r} ({info.architecture}) was taken for a bidirectional encoder, but its attention never "
            "reaches later tokens (a causal mask): α would be averaged over all T queries instead of T - k. Please "
            "open an issue with the model id"
        )
    sums = A.float().sum(-1)
    if not torch.allclose(sums, torch.ones_like(sums), atol=atol):
        raise TraceError(
            f"the traced attention of {info.name!r} does not sum to one over keys (row sums {sums.min():.3f}.."
            f"{sums.max():.3f}); it is not a softmax probability map this package can analyse"
        )
