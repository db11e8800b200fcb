"""Query–key geometry of the first-token sink (Gu et al. 2025, §3.1 and Fig. 2).

The logit of query ``t`` on key ``j`` is :math:`q_t \\cdot k_j / \\sqrt{d_h} = \\|q_t\\|\\,\\|k_j\\|\\cos\\theta_{tj}
/ \\sqrt{d_h}`. Gu et al. find that the sink key wins through the angle (a large :math:`\\cos`), not through a
large key norm. :func:`qk_geometry` measures the three factors for one layer, with the model's own projections,
norms (QK-norm where present) and rotary embedding, so ``logits`` reproduce the model's attention.

Supported: Llama-style decoders whose attention module has ``q_proj`` / ``k_proj`` and receives rotary
``position_embeddings`` (Llama / SmolLM2, Mistral, Qwen2/3, Gemma 2/3, OLMo); other models raise a clear error.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import SinkwidgetsValueError

__all__ = ["QKGeometry", "qk_geometry"]


@dataclass(frozen=True)
class QKGeometry:
    """Per query head of one layer: ``q_norm [H, T]``, ``k_norm [H, T]`` (key of the head's KV group) and
    ``cos [H, T, T]`` (query t, key j; NaN above the diagonal for causal models); ``logits [H, T, T]`` are
    the scaled dot products before the mask and softmax."""

    layer: int
    tokens: list[str]
    q_norm: np.ndarray
    k_norm: np.ndarray
    cos: np.ndarray
    logits: np.ndarray
    scale: float

    def attention(self) -> np.ndarray:
        """Causal softmax of the logits, ``[H, T, T]`` (equals the model's eager attention for plain softmax heads)."""
        z = self.logits.astype(np.float64).copy()
        T = z.shape[-1]
        z[:, np.triu(np.ones((T, T), bool), 1)] = -np.inf
        z -= z.max(-1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(-1, keepdims=True)

    def cos_to(self, key: int = 0) -> np.ndarray:
        """``[H, T]``: cos(q_t, k_key) for every query t ≥ key (NaN before)."""
        return self.cos[:, :, key]


def qk_geometry(model, text: str, layer: int, add_bos: bool | None = None) -> QKGeometry:
    """Queries and keys of ``layer`` for one prompt, after the model's QK-norm and rotary embedding.

    ``model`` comes from :func:`sinkwidgets.load_model`; ``add_bos`` as in :func:`sinkwidgets.trace`.
    Runs one plain forward pass with a hook on that layer's attention module (no nnsight trace).
    """
    import sys

    import torch

    from ..models.adapters import get_path
    from ..tracing import tokenize

    info = model.sinkwidgets
    hf = getattr(model, "_module", model)
    ad = info.adapter
    if not ad.causal:
        raise SinkwidgetsValueError("model: qk_geometry supports causal decoders with rotary attention, not "
                                    f"encoders ({info.name!r} is one); use a decoder such as "
                                    "sinkwidgets.load_model('smollm2-135m')")
    layers = get_path(hf, ad.layers)
    if not 0 <= layer < len(layers):
        raise SinkwidgetsValueError(f"layer={layer!r}: layer {layer} is out of range (0..{len(layers) - 1}); pick one "
                                    "of them")
    attn = get_path(layers[layer], ad.attn)
    if not (hasattr(attn, "q_proj") and hasattr(attn, "k_proj")):
        raise SinkwidgetsValueError(f"model: qk_geometry needs an attention module with q_proj / k_proj; "
                                    f"{type(attn).__name__} has none; use a Llama-style decoder (SmolLM2, Gemma, Qwen)")
    # the model's own rotary function (the one its attention calls), not Llama's: families differ in detail
    apply_rotary_pos_emb = getattr(sys.modules.get(type(attn).__module__), "apply_rotary_pos_emb", None)
    if apply_rotary_pos_emb is None:
        raise SinkwidgetsValueError(f"model {info.name!r}: {type(attn).__module__} defines no apply_rotary_pos_emb; "
                                    "qk_geometry supports rotary decoders (Llama/SmolLM2, Gemma, Mistral, Qwen)")

    ids, _ = tokenize(model, text, add_bos)  # the same tokens (and BOS rule) as every trace, without running one
    ids = [int(i) for i in ids]
    tokens = [model.tokenizer.decode([i]) for i in ids]  # as the engine names them
    seen: dict = {}

    def hook(mod, args, kwargs):
        h = kwargs.get("hidden_states", args[0] if args else None)
        seen["h"] = h.detach()
        seen["pe"] = kwargs.get("position_embeddings")

    handle = attn.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        with torch.no_grad():
            hf(input_ids=torch.tensor([ids], device=next(hf.parameters()).device))
    finally:
        handle.remove()
    if seen.get("pe") is None:
        raise SinkwidgetsValueError(f"model {info.name!r}: {type(attn).__name__} received no rotary "
                                    "position_embeddings; qk_geometry needs a RoPE decoder (SmolLM2, Gemma, Qwen)")
    with torch.no_grad():
        h = seen["h"]
        B, T, _ = h.shape
        dh = attn.head_dim
        q = attn.q_proj(h).view(B, T, -1, dh).transpose(1, 2)
        k = attn.k_proj(h).view(B, T, -1, dh).transpose(1, 2)
        if hasattr(attn, "q_norm"):
            q, k = attn.q_norm(q), attn.k_norm(k)
        cos_pe, sin_pe = seen["pe"]
        q, k = apply_rotary_pos_emb(q, k, cos_pe, sin_pe)
        q, k = q[0].float(), k[0].float()
        rep = q.shape[0] // k.shape[0]
        k = k.repeat_interleave(rep, dim=0)
        scale = float(getattr(attn, "scaling", dh ** -0.5))
        qn, kn = q.norm(dim=-1), k.norm(dim=-1)
        dots = q @ k.transpose(-1, -2)
        cos = dots / (qn[:, :, None] * kn[:, None, :]).clamp_min(1e-12)
        cos = cos.masked_fill(torch.triu(torch.ones(T, T, dtype=torch.bool), 1), float("nan"))
        logits = dots * scale
        softcap = getattr(attn, "attn_logit_softcapping", None)
        if softcap:
            logits = torch.tanh(logits / softcap) * softcap
    return QKGeometry(layer, tokens, qn.numpy(), kn.numpy(), cos.numpy(), logits.numpy(), scale)
