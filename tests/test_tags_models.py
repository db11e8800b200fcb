"""sinkwidgets.tags on SmolLM2-135M: collect equals a plain-torch computation, and the pilot's assertable bands
(docs/tags.md) hold on texts written here. The pilot's negatives are not asserted as positives: θ_tag is never
required to beat θ_no_tag, catching at τ = 0.5 is not required, and Gemma-3 is not required to have boundary sinks.

One collection of 40 paragraphs is shared by the catch and tag tests (module-scoped fixture)."""

from __future__ import annotations

import numpy as np
import pytest
from threadpoolctl import threadpool_limits

from sinkwidgets import tags

pytestmark = pytest.mark.models

HEADS = [(1, 1), (2, 2), (5, 6), (15, 7)]

SUBJECTS = ["The old farmer", "My sister", "A young doctor", "The tired driver", "Our neighbour", "The quiet student",
            "A small child", "The baker", "His grandfather", "The new teacher", "A careful pilot", "The lonely sailor"]
VERBS = ["walked slowly to", "looked closely at", "drove past", "painted a picture of", "talked about", "cleaned",
         "visited", "waited near", "laughed at", "forgot about", "carried a box to", "dreamed of"]
OBJECTS = ["the red barn", "the busy market", "an empty station", "the river bank", "the noisy kitchen",
           "a dusty library", "the tall tower", "the green garden", "a broken bridge", "the winter forest",
           "the morning train", "a crowded beach"]
TAILS = ["before the rain started", "after a long day", "with a heavy heart", "in the early morning",
         "without saying a word", "while the dog slept", "for the second time", "under a grey sky"]


def paragraphs(n: int, seed: int = 0, joiner: str = " ") -> list[str]:
    """``n`` three-sentence paragraphs from the word tables above (deterministic)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        out.append(joiner.join(
            f"{SUBJECTS[rng.integers(12)]} {VERBS[rng.integers(12)]} {OBJECTS[rng.integers(12)]} "
            f"{TAILS[rng.integers(8)]}." for _ in range(3)))
    return out


@pytest.fixture(autouse=True)
def _one_blas_thread():
    with threadpool_limits(1):
        yield


@pytest.fixture(scope="module")
def para_data(smollm2):
    return tags.collect(smollm2, paragraphs(40, seed=1), heads=HEADS, maps=[(1, 1)], progress=False)


# ----------------------------------------------------------------------------- collect == plain torch
def test_collect_equals_plain_torch(smollm2):
    import torch

    texts = ["The cat sat on the mat. It was warm.", "A bird sang.\nThe sun rose over the quiet hills today."]
    heads = [(1, 1), (2, 2), (2, 5)]
    layers = [3, 29]
    data = tags.collect(smollm2, texts, heads=heads, layers=layers, batch_size=2, progress=False)
    hf = smollm2._module
    cfg = hf.config
    H, KV, Dh = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
    prev = hf.config._attn_implementation
    hf.set_attn_implementation("eager")
    try:
        for i in range(len(texts)):
            ids = torch.tensor([data.token_ids[data.span(i)]])
            store = {}
            hooks = []
            for l in {h[0] for h in heads}:
                attn = hf.model.layers[l].self_attn
                hooks.append(attn.v_proj.register_forward_hook(lambda m, a, o, l=l, st=store: st.__setitem__(("v", l), o)))
                hooks.append(attn.o_proj.register_forward_pre_hook(lambda m, a, l=l, st=store: st.__setitem__(("o", l), a[0])))
            for l in layers:
                hooks.append(hf.model.layers[l].register_forward_hook(
                    lambda m, a, o, l=l, st=store: st.__setitem__(("h", l), o[0] if isinstance(o, tuple) else o)))
            try:
                with torch.no_grad():
                    out = hf(input_ids=ids, output_attentions=True, use_cache=False)
            finally:
                for hk in hooks:
                    hk.remove()
            T = ids.shape[1]
            sl = data.span(i)
            for l, h in heads:
                A = out.attentions[l][0, h].double().numpy()
                alpha = np.tril(A).sum(0) / (T - np.arange(T))
                np.testing.assert_allclose(data.alpha((l, h))[sl], alpha, atol=1e-5)
                W = hf.model.layers[l].self_attn.o_proj.weight.double()  # [d, H*Dh]
                Wh = W[:, h * Dh:(h + 1) * Dh]
                o_ref = (store[("o", l)][0, :, h * Dh:(h + 1) * Dh].double() @ Wh.T).numpy()
                kv = h // (H // KV)
                g_ref = (store[("v", l)][0, :, kv * Dh:(kv + 1) * Dh].double() @ Wh.T).numpy()
                np.testing.assert_allclose(data.outputs((l, h))[sl], o_ref, atol=1e-5, rtol=1e-5)
                np.testing.assert_allclose(data.values((l, h))[sl], g_ref, atol=1e-5, rtol=1e-5)
                np.testing.assert_allclose(data.attention_map((l, h), i), A, atol=1e-3)  # kept as float16
            for l in layers:
                hs = store[("h", l)][0].double().numpy()
                np.testing.assert_allclose(data.pooled(l, "mean")[i], hs[1:].mean(0), atol=1e-5, rtol=1e-5)
                np.testing.assert_allclose(data.pooled(l, "last")[i], hs[-1], atol=1e-5, rtol=1e-5)
    finally:
        hf.set_attn_implementation(prev)
    assert data.meta["model"] == "smollm2-135m" and data.meta["add_bos"] is False


def test_collect_arguments_are_checked(smollm2):
    with pytest.raises(ValueError, match="out of range"):
        tags.collect(smollm2, ["A b."], heads=[(30, 0)])
    with pytest.raises(ValueError, match="pool"):
        tags.collect(smollm2, ["A b."], layers=[1], pool=("max",))
    with pytest.raises(TypeError, match="load_model"):
        tags.collect(object(), ["A b."])


# ----------------------------------------------------------------------------- catch (pilot bands)
def test_l1h1_is_the_top_boundary_head_and_catches_at_tau_03(para_data):
    ranked = tags.boundary_heads(para_data)
    top = ranked[0]
    assert (top.layer, top.head) == (1, 1), str(ranked)
    assert 0.35 <= top.alpha <= 0.55 and top.n_prompts >= 20
    assert (1, 1) in [tuple(r) for r in tags.sink_heads(para_data).boundary]
    c3 = tags.catch(para_data, (1, 1), tau=0.3)
    assert c3.catch_rate >= 0.6 and c3.n_later > 500
    c5 = tags.catch(para_data, (1, 1), tau=0.5)
    assert c5.catch_rate < c3.catch_rate  # reported, not required to be large (pilot: 0.29)


def test_collected_tagdata_roundtrip(para_data, tmp_path):
    back = tags.TagData.load(para_data.save(tmp_path / "paras.npz"))
    assert back.tokens == para_data.tokens and np.array_equal(back.head_values, para_data.head_values)
    assert back.meta["model"] == "smollm2-135m"


# ----------------------------------------------------------------------------- tag EV (pilot bands)
@pytest.mark.parametrize("head,band", [((2, 2), 0.5), ((5, 6), 0.5), ((15, 7), 0.45)])
def test_tag_ev_bands_with_controls(para_data, head, band):
    r = tags.tag_ev(para_data, head, rank=1)
    assert r.ev >= band, str(r)
    assert r.ev <= r.pc_bound + 1e-9
    assert r.ev >= 50 * r.random_floor
    assert abs(r.ev - r.ev_in_sample) <= 0.05
    if head == (2, 2):  # the one head whose sink direction is its own (pilot: 0.77 vs 0.04, cos 0.00)
        assert r.ev - r.value_control >= 0.4, str(r)


# ----------------------------------------------------------------------------- probe (pilot bands)
def test_cities_probe_layer9_mean(smollm2):
    r = tags.probe_report(smollm2, "cities", layer=9, pool="mean", seeds=3, progress=False)
    assert r["tag"] >= 0.70, str(r)
    assert r["tag"] >= r["random"] + 0.10, str(r)
    assert abs(r["no_tag"] - r["full"]) <= 0.05, str(r)  # the honest negative: removing the tags costs nothing
    assert r["shuffled"] <= 0.60
    assert r.dim <= 16 and len(r.heads) <= 8


# ----------------------------------------------------------------------------- release (pilot band)
def test_release_l1h1_beats_random_subspaces(smollm2):
    r = tags.release(smollm2, paragraphs(20, seed=5), head=(1, 1), rank=2, n_random=3, progress=False)
    assert r.dnll >= 0.05, str(r)
    assert r.dnll >= 5 * np.mean(r.dnll_random), str(r)
    assert len(r.dnll_random) == 3 and np.isfinite(r.dnll_pcs)
