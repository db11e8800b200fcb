"""Where the layers, attention probabilities, per-head outputs and residual stream live in each architecture.

An :class:`Adapter` names module paths relative to the Hugging Face model (the nnsight envoy mirrors them):

- ``layers``: the ``ModuleList`` of transformer blocks;
- ``attn``: inside a block, the module whose output is ``(attn_output, attn_weights)`` with weights
  ``[B, H, T, T]`` under eager attention;
- ``o_proj``: inside a block, the output projection whose *input* is the concatenation of per-head outputs
  ``[B, T, H * Dh]``;
- ``o_proj_layout``: ``"linear"`` (weight ``[d, H*Dh]``) or ``"conv1d"`` (GPT-2's transposed ``[H*Dh, d]``);
- ``v_proj``: inside a block, the projection whose output holds the value vectors ``[B, T, KV*Dh]``
  (``""``: unknown); ``v_split`` > 0 when it is a fused projection whose last of ``v_split`` equal parts are
  the values (GPT-2's ``c_attn``).

Families not listed go through :func:`generic_adapter`, which guesses the paths; :func:`validate` then
checks at load time that the traced probabilities have the right shape and sum to one.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from ..errors import UnsupportedModelError  # noqa: F401 - re-exported (sinkwidgets.models.UnsupportedModelError)


@dataclass(frozen=True)
class Adapter:
    family: str
    layers: str
    attn: str
    o_proj: str
    o_proj_layout: str = "linear"
    causal: bool = True
    v_proj: str = ""
    v_split: int = 0


_LLAMA_LIKE = ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3", "gemma3_text", "olmo", "olmo2",
               "phi3", "granite", "smollm3", "starcoder2", "cohere")
FAMILIES: dict[str, Adapter] = {}
for _t in _LLAMA_LIKE:
    FAMILIES[_t] = Adapter(_t, "model.layers", "self_attn", "self_attn.o_proj", v_proj="self_attn.v_proj")
FAMILIES["phi3"] = Adapter("phi3", "model.layers", "self_attn", "self_attn.o_proj")  # fused, unequal qkv_proj
FAMILIES["gemma3"] = Adapter("gemma3", "model.language_model.layers", "self_attn", "self_attn.o_proj",
                             v_proj="self_attn.v_proj")
FAMILIES["gpt2"] = Adapter("gpt2", "transformer.h", "attn", "attn.c_proj", "conv1d", v_proj="attn.c_attn", v_split=3)
for _t in ("bert", "roberta", "xlm-roberta", "electra"):
    FAMILIES[_t] = Adapter(_t, "encoder.layer", "attention.self", "attention.output.dense", causal=False,
                           v_proj="attention.self.value")

SUPPORTED = "Llama/SmolLM2, Mistral, Qwen2/Qwen3, Gemma 2/3, OLMo, Phi-3, GPT-2, BERT/RoBERTa (encoders)"


def get_path(root, path: str):
    """Follow a dotted module path on a torch module or on its nnsight envoy.

    nnsight renames child modules whose names clash with envoy attributes (BERT's ``attention.output``
    becomes ``attention.E_output``); this follows either spelling.
    """
    obj = root
    for part in path.split("."):
        if part in _ENVOY_NAMES and not isinstance(obj, torch.nn.Module) and hasattr(obj, "E_" + part):
            part = "E_" + part
        obj = getattr(obj, part)
    return obj


_ENVOY_NAMES = {"output", "input", "inputs", "source", "next", "all", "save", "skip"}


def has_path(root, path: str) -> bool:
    try:
        get_path(root, path)
        return True
    except AttributeError:
        return False


def adapter_for(hf_model: torch.nn.Module) -> Adapter:
    """The adapter for a loaded HF model: by ``config.model_type``, with the base-model prefix resolved."""
    mtype = getattr(hf_model.config, "model_type", "")
    base = FAMILIES.get(mtype)
    candidates = [base] if base else []
    candidates.append(generic_adapter(hf_model))
    for ad in candidates:
        if ad is None:
            continue
        # a bare encoder (BertModel) has no "bert." prefix; a task head (BertForMaskedLM) has one
        for prefix in ("", getattr(hf_model, "base_model_prefix", "") + "."):
            path = prefix + ad.layers if prefix != "." else ad.layers
            if has_path(hf_model, path):
                layers = get_path(hf_model, path)
                if len(layers) and has_path(layers[0], ad.attn) and has_path(layers[0], ad.o_proj):
                    v_ok = ad.v_proj and has_path(layers[0], ad.v_proj)
                    return replace(ad, layers=path, v_proj=ad.v_proj if v_ok else "", v_split=ad.v_split if v_ok else 0)
    raise UnsupportedModelError(
        f"cannot find the attention modules of a {type(hf_model).__name__} (model_type={mtype!r}). "
        f"Supported families: {SUPPORTED}. Other models work when their blocks are a ModuleList whose attention "
        "module returns (output, weights) under eager attention; please open an issue with the model id."
    )


def generic_adapter(hf_model: torch.nn.Module) -> Adapter | None:
    """Guess the paths for an unlisted architecture: the longest ModuleList of blocks with an attention child."""
    n = getattr(hf_model.config, "num_hidden_layers", None)
    best = None
    for name, mod in hf_model.named_modules():
        if isinstance(mod, torch.nn.ModuleList) and len(mod) and (n is None or len(mod) == n):
            if best is None or len(mod) > len(best[1]):
                best = (name, mod)
    if best is None:
        return None
    name, layers = best
    block = layers[0]
    for attn in ("self_attn", "attn", "attention.self", "self_attention", "attention"):
        if has_path(block, attn):
            amod = get_path(block, attn)
            for o in ("o_proj", "out_proj", "c_proj", "dense", "wo"):
                if has_path(amod, o):
                    layout = "conv1d" if type(get_path(amod, o)).__name__ == "Conv1D" else "linear"
                    v = next((f"{attn}.{n}" for n in ("v_proj", "value") if has_path(amod, n)), "")
                    return Adapter("generic", name, attn, f"{attn}.{o}", layout, causal=is_causal_model(hf_model),
                                   v_proj=v)
    return None


_CAUSAL_CLASS_SUFFIXES = ("ForCausalLM", "LMHeadModel")
_ENCODER_TYPES = ("bert", "roberta", "xlm-roberta", "electra", "distilbert", "deberta", "deberta-v2", "albert",
                  "camembert", "mpnet", "ernie", "xlm", "longformer", "big_bird", "nomic_bert", "modernbert")


def is_causal_model(hf_model: torch.nn.Module) -> bool:
    """Whether the model's self-attention is causal, decided from what the model is.

    ``config.is_decoder`` is not a reliable signal: it defaults to False for decoder-only architectures such
    as GPT-NeoX, GPT-J, Falcon, OPT, Bloom and Phi. In order: a causal-LM class (``*ForCausalLM``,
    ``*LMHeadModel``) or a model that can generate is causal; a bare base model is causal when its
    ``config.architectures`` names a causal-LM head; known encoder families are not (unless configured as
    decoders); a base model of a family with a causal-LM head in transformers is; otherwise
    ``config.is_decoder`` decides.
    """
    cfg = hf_model.config
    if type(hf_model).__name__.endswith(_CAUSAL_CLASS_SUFFIXES):
        return True
    can_generate = getattr(hf_model, "can_generate", None)
    try:
        if callable(can_generate) and can_generate():
            return True
    except Exception:  # noqa: BLE001 - a broken can_generate is no evidence either way
        pass
    if any(str(a).endswith(_CAUSAL_CLASS_SUFFIXES) for a in (getattr(cfg, "architectures", None) or [])):
        return True
    mtype = getattr(cfg, "model_type", None)
    if mtype in _ENCODER_TYPES:
        return bool(getattr(cfg, "is_decoder", False))
    try:  # a base model (GPTNeoXModel) of a family that has a causal-LM head in transformers
        from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

        if mtype in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
            return True
    except ImportError:  # pragma: no cover - moved in some transformers version
        pass
    return bool(getattr(cfg, "is_decoder", True))
