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
  the values (GPT-2's ``c_attn``);
- ``causal``: whether a query sees only earlier keys (decoders) or all keys (encoders);
- ``rotary``: the position convention of the queries and keys (see :data:`ROTARY`);
- ``rotary_emb``: the path, on the Hugging Face model, of the one rotary embedding shared by all layers
  (``""``: none);
- ``streaming_exact``: :func:`sinkwidgets.streaming.streaming_ppl` supports ``method="exact"`` (it re-rotates
  queries with ``rotary_emb``, so it needs ``rotary == "half"``, one ``rotary_emb`` and no soft-cap; checked on
  a tiny model in ``tests/test_architectures.py``);
- ``sliding_window``, ``softcap``: where a layer's sliding-window size and tanh logit soft-cap are read, as
  sources tried in order (``"attn.NAME"``: an attribute of the attention module; ``"config.NAME"``: of that
  module's config), by :meth:`Adapter.attention_facts`. Mistral, Phi-3 and Starcoder2 pass
  ``config.sliding_window`` to every layer; Qwen2/3, Gemma 2/3 and SmolLM3 set ``attn.sliding_window`` on the
  sliding layers only; Gemma 2 soft-caps the logits with ``attn.attn_logit_softcapping``.

This is the one place that says what differs between families: the chunked plan
(:func:`sinkwidgets.tracing.chunked.layer_plan`) and streaming read it from here. A new family is one entry in
:data:`FAMILIES` plus a builder in ``tests/test_architectures.py`` (which checks every fact above against the
Hugging Face modules of a tiny random model).

Families not listed go through :func:`generic_adapter`, which guesses the paths; :func:`validate` then
checks at load time that the traced probabilities have the right shape and sum to one.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from ..errors import UnsupportedModelError  # noqa: F401 - re-exported (sinkwidgets.models.UnsupportedModelError)

if TYPE_CHECKING:  # torch is imported where it is used, so the facts above load without it (streaming reads them)
    import torch

#: Position conventions (``Adapter.rotary``): ``"half"``: RoPE with Hugging Face's ``rotate_half`` (first half
#: of the head dimensions paired with the second) and one ``rotary_emb`` for all layers; ``"half-by-layer-type"``:
#: the same pairing, with cos/sin chosen per layer type (Gemma 3: local and global bases); ``"interleaved"``:
#: RoPE pairing dimensions 2i and 2i+1 (Cohere); ``"none"``: absolute position embeddings (GPT-2, BERT);
#: ``"unknown"``: an unlisted family.
ROTARY = ("half", "half-by-layer-type", "interleaved", "none", "unknown")


@dataclass(frozen=True)
class Adapter:
    """Everything sinkwidgets needs to know about one model family (fields described in the module docstring)."""

    family: str
    layers: str
    attn: str
    o_proj: str
    o_proj_layout: str = "linear"
    causal: bool = True
    v_proj: str = ""
    v_split: int = 0
    rotary: str = "half"
    rotary_emb: str = "model.rotary_emb"
    streaming_exact: bool = False
    sliding_window: tuple[str, ...] = ("attn.sliding_window",)
    softcap: tuple[str, ...] = ()

    def attention_facts(self, attn_module) -> tuple[int | None, float | None]:
        """``(sliding window, logit soft-cap)`` of one layer's attention module (the torch module, not its envoy),
        read from the sources :attr:`sliding_window` and :attr:`softcap` name; ``None`` where a source is absent,
        ``None`` or 0."""
        cfg = getattr(attn_module, "config", None)

        def first(sources):
            for src in sources:
                owner, _, name = src.partition(".")
                value = getattr(attn_module if owner == "attn" else cfg, name, None)
                if value:
                    return value
            return None

        window, softcap = first(self.sliding_window), first(self.softcap)
        return (int(window) if window else None), (float(softcap) if softcap else None)


def _decoder(family: str, **facts) -> Adapter:
    """A Llama-style decoder: ``model.layers[i].self_attn`` with ``q/k/v/o_proj``; ``facts`` override the rest."""
    paths = dict(layers="model.layers", attn="self_attn", o_proj="self_attn.o_proj", v_proj="self_attn.v_proj")
    return Adapter(family, **{**paths, **facts})


def _encoder(family: str) -> Adapter:
    return Adapter(family, "encoder.layer", "attention.self", "attention.output.dense", causal=False,
                   v_proj="attention.self.value", rotary="none", rotary_emb="")


_CONFIG_WINDOW = ("attn.sliding_window", "config.sliding_window")  # the config's window, given to every layer
FAMILIES: dict[str, Adapter] = {a.family: a for a in (
    _decoder("llama", streaming_exact=True),
    _decoder("mistral", sliding_window=_CONFIG_WINDOW, streaming_exact=True),
    _decoder("qwen2", streaming_exact=True),
    _decoder("qwen3", streaming_exact=True),
    _decoder("gemma"),
    _decoder("gemma2", softcap=("attn.attn_logit_softcapping",)),
    _decoder("gemma3", layers="model.language_model.layers", rotary="half-by-layer-type",
             rotary_emb="model.language_model.rotary_emb"),
    _decoder("gemma3_text", rotary="half-by-layer-type"),
    _decoder("olmo", streaming_exact=True),
    _decoder("olmo2", streaming_exact=True),
    _decoder("phi3", v_proj="", sliding_window=_CONFIG_WINDOW, streaming_exact=True),  # fused, unequal qkv_proj
    _decoder("granite", streaming_exact=True),
    _decoder("smollm3", streaming_exact=True),
    _decoder("starcoder2", sliding_window=_CONFIG_WINDOW),
    _decoder("cohere", rotary="interleaved"),
    Adapter("gpt2", "transformer.h", "attn", "attn.c_proj", "conv1d", v_proj="attn.c_attn", v_split=3,
            rotary="none", rotary_emb=""),
    *(_encoder(t) for t in ("bert", "roberta", "xlm-roberta", "electra")),
)}

SUPPORTED = "Llama/SmolLM2, Mistral, Qwen2/Qwen3, Gemma 2/3, OLMo, Phi-3, GPT-2, BERT/RoBERTa (encoders)"


def get_path(root, path: str):
    """Follow a dotted module path on a torch module or on its nnsight envoy.

    nnsight renames child modules whose names clash with envoy attributes (BERT's ``attention.output``
    becomes ``attention.E_output``); this follows either spelling.
    """
    import torch

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
                    rot = ad.rotary_emb if ad.rotary_emb and has_path(hf_model, ad.rotary_emb) else ""
                    return replace(ad, layers=path, v_proj=ad.v_proj if v_ok else "", v_split=ad.v_split if v_ok else 0,
                                   rotary_emb=rot)
    raise UnsupportedModelError(
        f"cannot find the attention modules of a {type(hf_model).__name__} (model_type={mtype!r}). "
        f"Supported families: {SUPPORTED}. Other models work when their blocks are a ModuleList whose attention "
        "module returns (output, weights) under eager attention; please open an issue with the model id."
    )


def generic_adapter(hf_model: torch.nn.Module) -> Adapter | None:
    """Guess the paths for an unlisted architecture: the longest ModuleList of blocks with an attention child."""
    import torch

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
                                   v_proj=v, rotary="unknown", rotary_emb="")
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
