"""Architecture support on tiny random-init models saved to local directories (no weights needed)."""

import subprocess
import sys

import numpy as np
import pytest
import torch
import transformers as tf
from _helpers import save_tiny

import sinkwidgets as sw
from sinkwidgets.models.adapters import FAMILIES

pytestmark = pytest.mark.models

TINY = dict(vocab_size=49152, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
            max_position_embeddings=256)


WINDOW = 4  # the sliding window of the tiny models that have one (shorter than the test text, so it matters)


def _builders(window):
    """``{family: () -> tiny random model}``: one entry per family of ``FAMILIES`` (``window=None``: no sliding
    window, for the streaming reference, which runs full attention inside its cache)."""
    kv2 = dict(num_key_value_heads=2, **TINY)
    kv1 = dict(num_key_value_heads=1, head_dim=16, **TINY)
    enc = dict(vocab_size=49152, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
               max_position_embeddings=256)
    return {
        "llama": lambda: tf.LlamaForCausalLM(tf.LlamaConfig(**kv2)),
        "mistral": lambda: tf.MistralForCausalLM(tf.MistralConfig(sliding_window=window, **kv2)),
        "qwen2": lambda: tf.Qwen2ForCausalLM(tf.Qwen2Config(**kv2)),
        "qwen3": lambda: tf.Qwen3ForCausalLM(tf.Qwen3Config(head_dim=16, **kv2)),
        "gemma": lambda: tf.GemmaForCausalLM(tf.GemmaConfig(**kv1)),
        "gemma2": lambda: tf.Gemma2ForCausalLM(tf.Gemma2Config(sliding_window=window or 4096,
                                                               attn_logit_softcapping=5.0, **kv1)),
        "gemma3_text": lambda: tf.Gemma3ForCausalLM(tf.Gemma3TextConfig(sliding_window=window or 4096, **kv1)),
        "olmo": lambda: tf.OlmoForCausalLM(tf.OlmoConfig(**kv2)),
        "olmo2": lambda: tf.Olmo2ForCausalLM(tf.Olmo2Config(**kv2)),
        "phi3": lambda: tf.Phi3ForCausalLM(tf.Phi3Config(sliding_window=window, pad_token_id=0, **kv2)),
        "granite": lambda: tf.GraniteForCausalLM(tf.GraniteConfig(**kv2)),
        "smollm3": lambda: tf.SmolLM3ForCausalLM(tf.SmolLM3Config(pad_token_id=0, **kv2)),
        "starcoder2": lambda: tf.Starcoder2ForCausalLM(tf.Starcoder2Config(sliding_window=window, **kv2)),
        "cohere": lambda: tf.CohereForCausalLM(tf.CohereConfig(**kv2)),
        "gpt2": lambda: tf.GPT2LMHeadModel(tf.GPT2Config(vocab_size=49152, n_embd=64, n_layer=2, n_head=4,
                                                         n_positions=256)),
        "bert": lambda: tf.BertModel(tf.BertConfig(**enc)),
        "roberta": lambda: tf.RobertaModel(tf.RobertaConfig(pad_token_id=1, **enc)),
        "xlm-roberta": lambda: tf.XLMRobertaModel(tf.XLMRobertaConfig(pad_token_id=1, **enc)),
        "electra": lambda: tf.ElectraModel(tf.ElectraConfig(embedding_size=64, **enc)),
    }


#: Families of ``FAMILIES`` without a tiny model here, and why.
UNTESTED = {"gemma3": "the multimodal Gemma3ForConditionalGeneration needs a vision tower; its text stack is the "
                      "gemma3_text family, which is tested"}


def build(kind, window=WINDOW):
    torch.manual_seed(0)
    if kind == "gemma3":  # the test ids of the trace test below: Gemma3ForCausalLM is family gemma3_text
        return tf.Gemma3ForCausalLM(tf.Gemma3TextConfig(num_key_value_heads=1, head_dim=16, sliding_window=4, **TINY))
    builders = _builders(window)
    if kind not in builders:
        raise KeyError(kind)
    return builders[kind]()


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


# ----------------------------------------------------------------------------- one home for a family's facts
def test_every_family_has_a_tiny_model():
    """A new family is one entry in FAMILIES plus a builder here (or a reason in UNTESTED)."""
    assert set(FAMILIES) == set(_builders(WINDOW)) | set(UNTESTED), set(FAMILIES) ^ (set(_builders(WINDOW)) | set(UNTESTED))
    assert not set(_builders(WINDOW)) & set(UNTESTED)


def _recorded_attention_kwargs(hf, ids):
    """``{attention module: kwargs}`` that the model's attention modules pass to the attention function (scaling,
    sliding_window, softcap), recorded by a registered attention function during one forward."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

    seen = {}

    def record(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
        seen[module] = dict(scaling=scaling, sliding_window=kwargs.get("sliding_window"),
                            softcap=kwargs.get("softcap"))
        return torch.zeros_like(query).transpose(1, 2).contiguous(), None

    AttentionInterface.register("sw_test_record", record)
    ALL_MASK_ATTENTION_FUNCTIONS.register("sw_test_record", sdpa_mask)
    prev = hf.config._attn_implementation
    hf.set_attn_implementation("sw_test_record")
    try:
        with torch.no_grad():
            hf(input_ids=torch.as_tensor(ids)[None])
    finally:
        hf.set_attn_implementation(prev)
    return seen


FAMILY_TEXT = "The cat sat on the mat. Then it slept, and the dog barked at the moon."


@pytest.mark.parametrize("family", sorted(set(_builders(WINDOW))))
def test_adapter_facts_match_the_hugging_face_modules(family, tmp_path):
    """Every fact the adapter states about a family is checked against a tiny random model of it: the module
    paths, causality (the eager maps), the rotary convention (the modeling file's apply_rotary_pos_emb), the
    rotary embedding's path, and the chunked plan's (scale, window, soft-cap) against what each attention module
    passes to the attention function; rotary decoders trace the same on the chunked and eager paths."""
    import inspect
    import sys

    from sinkwidgets.models.adapters import get_path, has_path
    from sinkwidgets.streaming import _rotate_half
    from sinkwidgets.tracing.chunked import layer_plan

    torch.manual_seed(0)
    model = sw.load_model(save_tiny(tmp_path / family, _builders(WINDOW)[family]()))
    info, hf = model.sinkwidgets, model._module
    ad = info.adapter
    assert info.family == family
    want = FAMILIES[family]
    assert {k: v for k, v in vars(ad).items() if k not in ("layers", "rotary_emb")} == \
        {k: v for k, v in vars(want).items() if k not in ("layers", "rotary_emb")}
    assert ad.layers.endswith(want.layers) and ad.rotary_emb == want.rotary_emb  # a bare encoder drops the prefix
    block = get_path(hf, ad.layers)[0]
    attn = get_path(block, ad.attn)
    assert has_path(block, ad.o_proj) and (not ad.v_proj or has_path(block, ad.v_proj))

    # causality: eager maps are lower-triangular exactly for causal families
    tr = sw.trace(model, FAMILY_TEXT, keep_maps="all", map_dtype="float32")
    A = tr.maps.reshape(info.n_layers, info.n_heads, tr.n_tokens, tr.n_tokens)
    upper = np.triu(np.ones((tr.n_tokens, tr.n_tokens), bool), 1)
    assert bool(np.abs(A[..., upper]).max() == 0) is ad.causal

    # rotary convention, read off the modeling file's own apply_rotary_pos_emb
    modeling = sys.modules[type(attn).__module__]
    rope = [n for n, _ in hf.named_modules() if n.endswith("rotary_emb")]
    if ad.rotary == "none":
        assert not rope and not hasattr(modeling, "apply_rotary_pos_emb") and ad.rotary_emb == ""
        return
    assert ad.rotary_emb in rope
    g = torch.Generator().manual_seed(1)
    D = info.head_dim
    q, k = torch.randn(1, 2, 5, D, generator=g), torch.randn(1, 1, 5, D, generator=g)
    cos, sin = torch.randn(1, 5, D, generator=g), torch.randn(1, 5, D, generator=g)
    q_rot, _ = modeling.apply_rotary_pos_emb(q, k, cos, sin)
    half = q * cos[:, None] + _rotate_half(q) * sin[:, None]
    pairs = torch.stack([-q[..., 1::2], q[..., ::2]], dim=-1).flatten(-2)
    assert torch.allclose(q_rot, half) is ad.rotary.startswith("half")
    assert torch.allclose(q_rot, q * cos[:, None] + pairs * sin[:, None]) is (ad.rotary == "interleaved")
    by_type = "layer_type" in inspect.signature(get_path(hf, ad.rotary_emb).forward).parameters
    assert by_type is (ad.rotary == "half-by-layer-type")
    if ad.streaming_exact:  # what method="exact" re-rotates with: rotate-half from one rotary_emb, no soft-cap
        assert ad.rotary == "half" and not ad.softcap

    # the chunked plan's parameters are what the attention modules use
    plan = layer_plan(model, info)
    seen = _recorded_attention_kwargs(hf, tr.token_ids)
    mods = [get_path(b, ad.attn) for b in get_path(hf, ad.layers)]
    for li, (scale, n_rep, window, softcap) in enumerate(plan.params):
        used = seen[mods[li]]
        assert scale == pytest.approx(used["scaling"] or info.head_dim ** -0.5), li
        assert window == used["sliding_window"], (li, window, used)
        assert softcap == used["softcap"], (li, softcap, used)
        assert n_rep == info.n_heads // info.n_kv_heads
    windows = {p[2] for p in plan.params}
    if family in ("mistral", "phi3", "starcoder2", "gemma2", "gemma3_text"):
        assert WINDOW in windows  # the tiny model has a window shorter than the text: the check above has teeth
    if family == "gemma2":
        assert {p[3] for p in plan.params} == {5.0}
    if not getattr(hf, "_supports_sdpa", True):  # the chunked path runs SDPA (Gemma 2 has none in transformers 5)
        return
    chunked = sw.trace(model, FAMILY_TEXT, method="chunked")
    assert np.abs(chunked.sink_scores - tr.sink_scores).max() < 1e-4
    assert np.abs(chunked.first_token_mass - tr.first_token_mass).max() < 1e-4


@pytest.mark.parametrize("family", sorted(f for f, a in FAMILIES.items() if a.streaming_exact))
def test_streaming_exact_families_equal_token_by_token_streaming(family, tmp_path):
    """For every family whose adapter says ``streaming_exact``, the one-pass exact method equals StreamingLLM run
    token by token with a re-rotated KV cache (the reference of tests/test_streaming.py), on a tiny model."""
    from test_streaming import stepwise_streaming

    from sinkwidgets.streaming import _rotary_emb, _streamed

    torch.manual_seed(0)
    model = sw.load_model(save_tiny(tmp_path / family, _builders(None)[family]()))
    hf = model._module
    ids = list(range(5, 45))
    W, k = 12, 2
    ref = stepwise_streaming(hf, ids, W, k)
    one_pass = _streamed(hf, ids, k, W, True, _rotary_emb(model.sinkwidgets))
    np.testing.assert_allclose(one_pass, ref, atol=1e-4)
    masked = _streamed(hf, ids, k, W, False)
    assert np.abs(masked[W:] - ref[W:]).max() > 1e-4  # the re-rotation matters on this model


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
