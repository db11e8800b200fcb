"""Tracing the real offline models: reference sink numbers, equality with plain transformers, padding, limits."""

import numpy as np
import pytest
import torch
from _prompts import ENGLISH, LONG_TEXT

import sinkwidgets as sw

pytestmark = pytest.mark.models


def hf_attentions(model, ids):
    hf = model._module
    with torch.no_grad():
        out = hf(input_ids=torch.as_tensor(np.asarray(ids))[None], output_attentions=True, output_hidden_states=True)
    return torch.stack(out.attentions)[:, 0].double().numpy(), out


def test_smollm2_reference_sinks(smollm2):
    trs = sw.trace(smollm2, ENGLISH)
    ftm = np.mean([t.first_token_mass.mean(1) for t in trs], axis=0)  # [L]
    assert ftm[:2].max() < 0.2, ftm[:2]  # no sink in layers 0-1
    assert ftm[12:30].min() > 0.4, ftm[12:30]  # a sink in layers 12-29
    assert all(t.meta["add_bos"] is False and t.tokens[0] in ("The", "Scientists", "My", "In") for t in trs)
    # sink ratio at eps 0.3 is high for the first token, low for a mid-prompt word
    assert sw.sink_ratio(trs[0], k=0, eps=0.3) > 0.6
    assert sw.sink_ratio(trs[0], k=6, eps=0.3) < 0.1
    # massive activations on token 0 from layer ~11 (recipes: ~176x the median norm)
    mas = sw.massive_activations(trs[0])
    assert mas and all(m.token == 0 for m in mas)


def test_traced_maps_equal_eager_output_attentions(smollm2):
    tr = sw.trace(smollm2, ENGLISH[0], keep_maps="all", map_dtype="float32")
    A, out = hf_attentions(smollm2, tr.token_ids)
    assert tr.maps.shape == (30 * 9, tr.n_tokens, tr.n_tokens)
    for l in (0, 11, 29):
        for h in (0, 4, 8):
            assert np.abs(tr.get_map(l, h) - A[l, h]).max() < 1e-5
    assert np.abs(sw.sink_scores(A) - tr.sink_scores).max() < 1e-5
    assert np.abs(sw.first_token_mass(A) - tr.first_token_mass).max() < 1e-5
    assert np.abs(sw.attention_entropy(A) - tr.entropy).max() < 1e-4
    # residual norms after layer l == hidden_states[l + 1] (last one is after the final norm in HF)
    hs = torch.stack(out.hidden_states[1:-1])[:, 0].norm(dim=-1).numpy()
    assert np.allclose(hs, tr.resid_norms[:-1], rtol=1e-5)


def test_padding_gives_same_results_as_alone(smollm2):
    texts = ["Hi there.", ENGLISH[1], "A cat sat on the mat, and then it slept."]
    batch = sw.trace(smollm2, texts, keep_maps=[(5, 2)], batch_size=3)
    for text, tb in zip(texts, batch):
        alone = sw.trace(smollm2, text, keep_maps=[(5, 2)])
        assert tb.tokens == alone.tokens and tb.n_tokens == alone.n_tokens
        assert np.abs(tb.sink_scores - alone.sink_scores).max() < 1e-4
        assert np.abs(tb.first_token_mass - alone.first_token_mass).max() < 1e-4
        assert np.abs(tb.entropy - alone.entropy).max() < 1e-4
        assert np.allclose(tb.resid_norms, alone.resid_norms, rtol=1e-4)
        assert np.abs(tb.get_map(5, 2) - alone.get_map(5, 2)).max() < 2e-3  # float16 maps
    # "first token" is the first real token, not a pad
    assert batch[0].tokens[0] == "Hi"


def test_head_outputs_sum_to_attention_output(smollm2):
    tr = sw.trace(smollm2, ENGLISH[2], keep_head_outputs=[3])
    hf = smollm2._module
    ids = torch.as_tensor(tr.token_ids)[None]
    got = {}
    h = hf.model.layers[3].self_attn.o_proj.register_forward_hook(lambda m, i, o: got.setdefault("o", o))
    with torch.no_grad():
        hf(input_ids=ids)
    h.remove()
    total = tr.head_outputs[0].sum(0)  # [T, d]
    assert tr.head_outputs.shape == (1, 9, tr.n_tokens, 576)
    assert np.allclose(total, got["o"][0].numpy(), atol=1e-4)


def test_bos_handling_is_explicit(smollm2):
    no = sw.trace(smollm2, "The cat sat.", add_bos=False)
    yes = sw.trace(smollm2, "The cat sat.", add_bos=True)
    assert yes.n_tokens == no.n_tokens + 1 and yes.tokens[1:] == no.tokens
    assert yes.meta["add_bos"] is True and no.meta["add_bos"] is False
    assert yes.token_ids[0] == smollm2.tokenizer.bos_token_id


def test_gemma3_sink_is_bos(gemma3):
    trs = sw.trace(gemma3, ENGLISH)
    assert all(t.tokens[0] == "<bos>" and t.meta["add_bos"] is True for t in trs)
    ftm = np.mean([t.first_token_mass.mean() for t in trs])
    assert ftm > 0.4, ftm  # recipes: 0.54 mean on <bos>
    A, _ = hf_attentions(gemma3, trs[0].token_ids)
    assert np.abs(sw.sink_scores(A) - trs[0].sink_scores).max() < 1e-5
    assert trs[0].meta["n_layers"] == 18


def test_minilm_sink_is_cls(minilm):
    trs = sw.trace(minilm, ENGLISH)
    t = trs[0]
    assert t.tokens[0] == "[CLS]" and t.tokens[-1] == "[SEP]" and not t.causal
    cls = np.mean([x.sink_scores[:, :, 0].mean() for x in trs])
    sep = np.mean([x.sink_scores[:, :, -1].mean() for x in trs])
    assert cls > 0.3 and cls > 5 * sep, (cls, sep)  # recipes: [CLS] 0.46, [SEP] 0.034
    A, _ = hf_attentions(minilm, t.token_ids)
    assert np.abs(sw.sink_scores(A, causal=False) - t.sink_scores).max() < 1e-5


def test_long_prompt_4096_tokens(smollm2):
    text = " ".join([LONG_TEXT] * 60)
    tr = sw.trace(smollm2, text, max_tokens=4096)
    assert tr.n_tokens == 4096 and tr.meta["truncated"] and tr.meta["n_tokens_original"] > 4096
    assert np.isfinite(tr.sink_scores).all()
    assert tr.first_token_mass[12:].mean() > 0.4


def test_save_load_real_trace(smollm2, tmp_path):
    tr = sw.trace(smollm2, ENGLISH[3], keep_maps=[0])
    back = sw.SinkTrace.load(tr.save(tmp_path / "t.npz"))
    assert np.array_equal(back.sink_scores, tr.sink_scores) and back.meta["model"] == "smollm2-135m"
    assert back.meta["n_kv_heads"] == 3 and back.meta["architecture"] == "LlamaForCausalLM"


# ----------------------------------------------------------------------------- bad input
def test_unknown_model_name_suggests():
    with pytest.raises(sw.models.ModelNotFoundError, match="smollm2"):
        sw.load_model("smolm2-135")
    with pytest.raises(sw.models.ModelNotFoundError, match="does not exist"):
        sw.load_model("./no/such/dir")


def test_empty_text(smollm2):
    with pytest.raises(ValueError, match="empty"):
        sw.trace(smollm2, "   ")
    with pytest.raises(ValueError, match="no prompts"):
        sw.trace(smollm2, [])


def test_text_longer_than_context(minilm):
    text = "word " * 700  # MiniLM's context is 512
    with pytest.raises(ValueError, match="max_tokens=512"):
        sw.trace(minilm, text)
    tr = sw.trace(minilm, text, max_tokens=512)
    assert tr.n_tokens == 512 and tr.meta["truncated"] is True


def test_bad_keep_maps(smollm2):
    with pytest.raises(ValueError, match="0..29"):
        sw.trace(smollm2, "Hi.", keep_maps=[30])
    with pytest.raises(ValueError, match=r"head 9 is out of range: there are 9 heads; use 0\.\.8"):
        sw.trace(smollm2, "Hi.", keep_maps=[(1, 9)])


def test_trace_needs_a_loaded_model():
    with pytest.raises(TypeError, match="load_model"):
        sw.trace(object(), "hi")
