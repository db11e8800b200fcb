"""Causality comes from what the model is, not from ``config.is_decoder`` (absent, or False for GPT-NeoX, on decoders).

Every decoder family transformers can build tiny is traced, and its α must equal Gu et al.'s causal α computed
from transformers' own ``output_attentions`` to 1e-5 (a causal=False trace averages over all T queries instead of
the T - k that can see key k, and is off by up to ~0.1).
"""


import numpy as np
import pytest
import torch
import transformers as tf
from _helpers import save_tiny

import sinkwidgets as sw
from sinkwidgets.models.adapters import is_causal_model

V = 49152  # the SmolLM2 tokenizer's vocabulary (the tiny models borrow it)


def build(kind):
    torch.manual_seed(0)
    small = dict(vocab_size=V, hidden_size=64, num_attention_heads=4)
    if kind == "gpt_neox":
        return tf.GPTNeoXForCausalLM(tf.GPTNeoXConfig(num_hidden_layers=2, intermediate_size=128,
                                                      max_position_embeddings=256, **small))
    if kind == "gptj":
        return tf.GPTJForCausalLM(tf.GPTJConfig(vocab_size=V, n_embd=64, n_layer=2, n_head=4, n_positions=256,
                                                rotary_dim=8))
    if kind == "falcon":
        return tf.FalconForCausalLM(tf.FalconConfig(num_hidden_layers=2, **small))
    if kind == "opt":
        return tf.OPTForCausalLM(tf.OPTConfig(vocab_size=V, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                              ffn_dim=128, word_embed_proj_dim=64, max_position_embeddings=256))
    if kind == "bloom":
        return tf.BloomForCausalLM(tf.BloomConfig(vocab_size=V, hidden_size=64, n_layer=2, n_head=4))
    if kind == "phi":
        return tf.PhiForCausalLM(tf.PhiConfig(num_hidden_layers=2, intermediate_size=128, max_position_embeddings=256,
                                              **small))
    if kind == "gpt2":
        return tf.GPT2LMHeadModel(tf.GPT2Config(vocab_size=V, n_embd=64, n_layer=2, n_head=4, n_positions=256))
    if kind == "llama":
        return tf.LlamaForCausalLM(tf.LlamaConfig(num_hidden_layers=2, intermediate_size=128, num_key_value_heads=2,
                                                  max_position_embeddings=256, **small))
    raise KeyError(kind)


KINDS = ["gpt_neox", "gptj", "falcon", "opt", "bloom", "phi", "gpt2", "llama"]


@pytest.mark.unit
@pytest.mark.parametrize("kind", KINDS)
def test_decoders_are_causal_whatever_is_decoder_says(kind):
    hf = build(kind)
    if kind == "gpt_neox":
        assert hf.config.is_decoder is False  # the trap (Pythia's architecture): yet it is a decoder
    assert is_causal_model(hf)
    assert is_causal_model(hf.base_model)  # a bare base model: its config's architectures name the LM head


@pytest.mark.unit
def test_encoders_stay_bidirectional():
    hf = tf.BertModel(tf.BertConfig(vocab_size=128, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                    intermediate_size=64))
    assert not is_causal_model(hf)


@pytest.mark.models
@pytest.mark.parametrize("kind", KINDS)
def test_alpha_equals_causal_alpha_from_output_attentions(kind, tmp_path):
    model = sw.load_model(save_tiny(tmp_path / kind, build(kind)), validate=True)
    assert model.sinkwidgets.causal is True
    text = "The cat sat on the mat. Then it slept, and the dog barked at the moon."
    tr = sw.trace(model, text)
    assert tr.causal is True
    with torch.no_grad():
        out = model._module(input_ids=torch.as_tensor(tr.token_ids)[None], output_attentions=True)
    A = torch.stack(out.attentions)[:, 0].float().numpy()  # [L, H, T, T]
    assert np.allclose(np.triu(A, 1), 0.0, atol=1e-6)  # the model really is causal
    want = sw.sink_scores(A, causal=True)
    assert np.abs(want - tr.sink_scores).max() < 1e-5
    first = A[:, :, 1:, 0].mean(-1)
    assert np.abs(first - tr.first_token_mass).max() < 1e-5


@pytest.mark.models
def test_validate_catches_causality_that_disagrees_with_the_map(tmp_path):
    """The load-time probe compares the adapter's causality with the map's upper triangle."""
    import dataclasses

    from sinkwidgets.errors import TraceError
    from sinkwidgets.models.check import validate_model

    model = sw.load_model(save_tiny(tmp_path / "gpt_neox", build("gpt_neox")), validate=True)  # right causality: passes
    info = model.sinkwidgets
    info.adapter = dataclasses.replace(info.adapter, causal=False)
    with pytest.raises(TraceError, match="never reaches later tokens"):
        validate_model(model)
