"""Architecture support on tiny random-init models saved to local directories (no weights needed)."""

import subprocess
import sys

import numpy as np
import pytest
import torch
import transformers as tf
from _helpers import save_tiny

import sinkwidgets as sw

pytestmark = pytest.mark.models

TINY = dict(vocab_size=49152, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
            max_position_embeddings=256)


def build(kind):
    torch.manual_seed(0)
    if kind == "llama":
        return tf.LlamaForCausalLM(tf.LlamaConfig(num_key_value_heads=2, **TINY))
    if kind == "qwen2":
        return tf.Qwen2ForCausalLM(tf.Qwen2Config(num_key_value_heads=2, **TINY))
    if kind == "qwen3":
        return tf.Qwen3ForCausalLM(tf.Qwen3Config(num_key_value_heads=2, head_dim=16, **TINY))
    if kind == "gemma3":
        return tf.Gemma3ForCausalLM(tf.Gemma3TextConfig(num_key_value_heads=1, head_dim=16, sliding_window=4, **TINY))
    if kind == "gpt2":
        return tf.GPT2LMHeadModel(tf.GPT2Config(vocab_size=49152, n_embd=64, n_layer=2, n_head=4, n_positions=256))
    if kind == "bert":
        return tf.BertModel(tf.BertConfig(vocab_size=49152, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                          intermediate_size=128, max_position_embeddings=256))
    raise KeyError(kind)


@pytest.mark.parametrize("kind", ["llama", "qwen2", "qwen3", "gemma3", "gpt2", "bert"])
def test_tiny_architectures_trace_and_match_eager(kind, tmp_path):
    d = save_tiny(tmp_path / kind, build(kind))
    model = sw.load_model(d, validate=True)
    text = "The cat sat on the mat. Then it slept, and the dog barked."
    tr = sw.trace(model, text, keep_maps="all", map_dtype="float32", keep_head_outputs=[1])
    assert tr.sink_scores.shape == (2, 4, tr.n_tokens)
    hf = model._module
    with torch.no_grad():
        out = hf(input_ids=torch.as_tensor(tr.token_ids)[None], output_attentions=True)
    A = torch.stack(out.attentions)[:, 0].numpy()
    assert np.abs(tr.maps.reshape(2, 4, tr.n_tokens, tr.n_tokens) - A).max() < 1e-5
    assert np.abs(sw.sink_scores(A, causal=tr.causal) - tr.sink_scores).max() < 1e-5
    assert tr.causal is (kind != "bert")
    assert tr.head_outputs.shape == (1, 4, tr.n_tokens, 64)
    # padded batch == alone (absolute positions for GPT-2/BERT make this a real check of position ids)
    batch = sw.trace(model, ["Hi.", text])
    assert np.abs(batch[1].sink_scores - sw.trace(model, text).sink_scores).max() < 1e-4
    assert np.abs(batch[0].sink_scores - sw.trace(model, "Hi.").sink_scores).max() < 1e-4
    # decoders with an LM head compute logits for the last position only (nothing after the last layer is used)
    from sinkwidgets.tracing import _forward_kwargs

    assert _forward_kwargs(tr.causal, model).get("logits_to_keep") == (1 if kind != "bert" else None)


def test_model_without_attention_gets_a_clear_error(tmp_path):
    cfg = tf.MambaConfig(vocab_size=49152, hidden_size=32, num_hidden_layers=2, state_size=4)
    d = save_tiny(tmp_path / "mamba", tf.MambaForCausalLM(cfg))
    with pytest.raises(sw.models.UnsupportedModelError, match="Supported families"):
        sw.load_model(d)


def _run_offline(code, env):
    import os

    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ, **env}, timeout=120)


@pytest.mark.parametrize(
    "env",
    [{"HF_HUB_OFFLINE": "1"}, {"HF_ENDPOINT": "http://127.0.0.1:9", "HF_HUB_ETAG_TIMEOUT": "2", "HF_HUB_DOWNLOAD_TIMEOUT": "2"}],
    ids=["offline-mode", "unreachable-endpoint"],
)
def test_hub_unreachable_says_so(env):
    code = """
import sinkwidgets as sw
try:
    sw.load_model('HuggingFaceTB/SmolLM2-360M-Instruct')
except sw.models.HubUnreachableError as e:
    print('OK', e)
"""
    out = _run_offline(code, env)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.startswith("OK") and "sinkwidgets models fetch smollm2-135m" in out.stdout, out.stdout


def test_hub_id_code_path_with_local_directory(tmp_path):
    """A hub id resolves through the Hugging Face cache: lay a tiny model out as the hub cache does and load it
    by its id with the hub switched off (what a user's second load looks like)."""
    src = save_tiny(tmp_path / "llama", build("llama"))
    rev = "0" * 40
    repo = tmp_path / "hub" / "models--test-org--tiny-llama"
    snap = repo / "snapshots" / rev
    snap.mkdir(parents=True)
    for f in src.iterdir():
        (snap / f.name).write_bytes(f.read_bytes())
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(rev)
    code = """
import sinkwidgets as sw
m = sw.load_model('test-org/tiny-llama')
tr = sw.trace(m, 'The cat sat on the mat.')
print('OK', m.sinkwidgets.hub_id, m.sinkwidgets.family, tr.sink_scores.shape)
"""
    out = _run_offline(code, {"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "hub")})
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.startswith("OK test-org/tiny-llama llama (2, 4,"), out.stdout
    # and a plain local directory records its path
    m = sw.load_model(str(src))
    assert m.sinkwidgets.path == str(src) and m.sinkwidgets.hub_id is None


@pytest.mark.parametrize("kind,expected", [("llama", "chunked"), ("gpt2", "eager"), ("bert", "eager")])
def test_auto_method_goes_chunked_for_long_prompts_where_supported(kind, expected, tmp_path, monkeypatch):
    from sinkwidgets.tracing import api

    d = save_tiny(tmp_path / kind, build(kind))
    model = sw.load_model(d)
    text = "The cat sat on the mat. Then it slept, and the dog barked."
    short = sw.trace(model, text)
    assert short.meta["method"] == "eager"
    monkeypatch.setattr(api, "AUTO_CHUNKED_TOKENS", 8)  # "long" = 8 tokens or more
    long = sw.trace(model, text)
    assert long.meta["method"] == expected
    assert np.abs(long.sink_scores - short.sink_scores).max() < 1e-4
    assert np.abs(long.first_token_mass - short.first_token_mass).max() < 1e-4
