"""sinkwidgets.tags on SmolLM2-135M: collect equals a plain-torch computation, and the pilot's assertable bands
(docs/tags.md) hold on texts written here. The pilot's negatives are not asserted as positives: θ_tag is never
required to beat θ_no_tag, catching at τ = 0.5 is not required, and Gemma-3 is not required to have boundary sinks.

One collection of 30 paragraphs is shared by the catch and tag tests (module-scoped fixture)."""

from __future__ import annotations

import numpy as np
import pytest
from threadpoolctl import threadpool_limits

from sinkwidgets import tags

pytestmark = [pytest.mark.models, pytest.mark.usefixtures("one_blas_thread")]

HEADS = [(1, 1), (2, 2), (5, 6), (15, 7)]

# Natural three-sentence paragraphs: release is measured on these (on the word-table paragraphs of
# tags.paragraphs, whose sentences are random combinations, removing L1H1's tag costs only ~0.016 nats/token: the
# model has little to retrieve there).
NATURAL = [
    "I laughed with friends until my stomach hurt. I wiped away tears of joy and said nothing. I slammed my fist on the table in delight.",
    "The train was late again this morning. Everyone on the platform looked tired and cold. When it finally arrived, nobody could find a seat.",
    "My grandmother grew tomatoes in her garden every summer. She picked them early in the morning before the heat. In the evening we ate them with bread and salt.",
    "The storm knocked out the power in our street. We lit candles and played cards in the kitchen. By midnight the lights came back on.",
    "Anna opened the letter with shaking hands. It was from the university she had dreamed of. She read the first line and started to cry.",
    "The museum was almost empty on Monday. I spent an hour in front of a single painting. The guard smiled at me when I finally left.",
    "Our dog hates the sound of thunder. He hides under the bed whenever it rains. Last night he refused to come out until morning.",
    "The bakery on the corner closed after forty years. People left flowers and notes at the door. The owner said she would miss her customers most.",
    "We climbed the hill just before sunset. The whole valley turned orange and gold. Nobody said a word on the way down.",
    "The meeting ran two hours over time. Nobody agreed on the budget for next year. In the end the manager postponed the decision.",
    "My brother learned to swim when he was thirty. He practised every morning at the public pool. Now he swims across the lake every summer.",
    "The old bridge was finally repaired last week. Cars can cross the river again without a long detour. The shop owners in town were relieved.",
    "She forgot her umbrella on the bus. By the time she reached the office she was soaking wet. Her colleague lent her a dry sweater.",
    "The children built a snowman in the park. They used a carrot for the nose and stones for the eyes. By the afternoon it had started to melt.",
    "The restaurant was full on Saturday night. We waited almost an hour for a table. The soup was cold, but the dessert was wonderful.",
    "He fixed the old radio with a few spare parts. At first it only made a quiet hiss. Then, suddenly, music filled the room.",
    "The library will move to a new building next year. The old one is too small for all the books. Volunteers will help carry the boxes.",
    "Tom missed the last bus home. He walked for an hour through the quiet streets. When he arrived, his mother was still awake.",
    "The garden was full of birds in the spring. A pair of robins built a nest above the door. We watched the chicks leave the nest in June.",
    "The exam was harder than anyone expected. Half the class did not finish in time. The teacher agreed to give everyone another chance.",
]


@pytest.fixture(scope="module")
def para_data(smollm2):
    return tags.collect(smollm2, tags.paragraphs(30, seed=1), heads=HEADS, maps=[(1, 1)], progress=False)


# ----------------------------------------------------------------------------- collect == plain torch
def _close(actual, desired, tol=1e-5):
    """Equal to ``tol`` relative to the array's scale (float32 sums of values ~30 carry ~1e-6 relative error)."""
    desired = np.asarray(desired, dtype=np.float64)
    np.testing.assert_allclose(actual, desired, rtol=tol, atol=tol * max(1.0, float(np.abs(desired).max())))


def _assert_collect_equals_plain_torch(model, data, heads, layers, texts):
    """Every kept array of ``data`` equals a plain transformers forward of ``model`` (eager attention, hooks on
    v_proj / o_proj / the blocks) over the same left-padded batch."""
    import torch

    hf = model._module
    cfg = getattr(hf.config, "text_config", hf.config)
    H, KV = cfg.num_attention_heads, cfg.num_key_value_heads
    Dh = getattr(cfg, "head_dim", None) or cfg.hidden_size // H
    blocks = model.sinkwidgets.adapter
    from sinkwidgets.models.adapters import get_path

    layer_mods = get_path(model, blocks.layers)
    n = len(texts)
    lens = data.lengths
    T = int(lens.max())
    ids = torch.zeros((n, T), dtype=torch.long)
    mask = torch.zeros((n, T), dtype=torch.long)
    for i in range(n):
        ids[i, T - lens[i]:] = torch.tensor(data.token_ids[data.span(i)])
        mask[i, T - lens[i]:] = 1
    store, hooks = {}, []
    for l in {h[0] for h in heads}:
        attn = layer_mods[l].self_attn
        hooks.append(attn.v_proj.register_forward_hook(lambda m, a, o, l=l: store.__setitem__(("v", l), o)))
        hooks.append(attn.o_proj.register_forward_pre_hook(lambda m, a, l=l: store.__setitem__(("o", l), a[0])))
    for l in layers:
        hooks.append(layer_mods[l].register_forward_hook(
            lambda m, a, o, l=l: store.__setitem__(("h", l), o[0] if isinstance(o, tuple) else o)))
    prev = hf.config._attn_implementation
    hf.set_attn_implementation("eager")
    try:
        with torch.no_grad():
            out = hf(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp_min(0),
                     output_attentions=True, use_cache=False)
    finally:
        hf.set_attn_implementation(prev)
        for hk in hooks:
            hk.remove()
    for i in range(n):
        f, m, sl = T - int(lens[i]), int(lens[i]), data.span(i)
        for l, h in heads:
            A = out.attentions[l][i, h, f:, f:].double().numpy()
            _close(data.alpha((l, h))[sl], np.tril(A).sum(0) / (m - np.arange(m)))
            Wh = layer_mods[l].self_attn.o_proj.weight.double()[:, h * Dh:(h + 1) * Dh]
            kv = h // (H // KV)
            _close(data.outputs((l, h))[sl], (store[("o", l)][i, f:, h * Dh:(h + 1) * Dh].double() @ Wh.T).numpy())
            _close(data.values((l, h))[sl], (store[("v", l)][i, f:, kv * Dh:(kv + 1) * Dh].double() @ Wh.T).numpy())
            np.testing.assert_allclose(data.attention_map((l, h), i), A, atol=1e-3)  # kept as float16
        for l in layers:
            hs = store[("h", l)][i, f:].double().numpy()
            _close(data.pooled(l, "mean")[i], hs[1:].mean(0))
            _close(data.pooled(l, "last")[i], hs[-1])


COLLECT_TEXTS = ["The cat sat on the mat. It was warm.", "A bird sang.\nThe sun rose over the quiet hills today."]
COLLECT_HEADS, COLLECT_LAYERS = [(1, 1), (2, 2), (2, 5)], [3, 29]


@pytest.fixture(scope="module")
def eager_collect(smollm2):
    """The default (eager) collection of COLLECT_TEXTS on SmolLM2, shared by the plain-torch and chunked tests."""
    with threadpool_limits(1):
        return tags.collect(smollm2, COLLECT_TEXTS, heads=COLLECT_HEADS, layers=COLLECT_LAYERS, batch_size=2,
                            progress=False)


def test_collect_equals_plain_torch(smollm2, eager_collect):
    """α, per-head outputs and values after W_O, kept maps and pooled residuals equal a plain transformers forward."""
    heads, layers, data = COLLECT_HEADS, COLLECT_LAYERS, eager_collect
    _assert_collect_equals_plain_torch(smollm2, data, heads, layers, COLLECT_TEXTS)
    assert data.meta["model"] == "smollm2-135m" and data.meta["add_bos"] is False and data.meta["method"] == "eager"


def test_collect_chunked_equals_eager(smollm2, eager_collect):
    """The chunked path (attention recomputed from q/k, as shipped to NDIF) collects the same arrays."""
    heads, layers, e = COLLECT_HEADS, COLLECT_LAYERS, eager_collect
    c = tags.collect(smollm2, COLLECT_TEXTS, heads=heads, layers=layers, batch_size=2, method="chunked",
                     progress=False)
    assert c.meta["method"] == "chunked"
    assert c.token_ids.tolist() == e.token_ids.tolist()
    for name in ("sink_scores", "first_token_mass", "head_outputs", "head_values", "pooled_mean", "pooled_last"):
        _close(getattr(c, name), getattr(e, name), tol=1e-4)
    np.testing.assert_allclose(c.maps.astype(np.float32), e.maps.astype(np.float32), atol=2e-3)


def test_collect_on_gemma3_equals_plain_torch(gemma3):
    """Gemma-3 (q/k norms, <bos> added, 4 query heads on 1 value head): the same arrays as plain torch."""
    heads, layers = [(0, 1), (3, 2)], [0, 5, 17]
    data = tags.collect(gemma3, COLLECT_TEXTS, heads=heads, layers=layers, batch_size=2, progress=False)
    assert data.meta["add_bos"] is True and data.tokens[0][0] == "<bos>"
    _assert_collect_equals_plain_torch(gemma3, data, heads, layers, COLLECT_TEXTS)


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
    assert c3.catch_rate >= 0.6 and c3.n_later > 400
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
    r = tags.release(smollm2, NATURAL[:12], head=(1, 1), rank=2, n_random=3, pcs=False, attention_layers=None,
                     matched=False, own_write=False, progress=False)  # the controls that decide: test_mechanism.py
    assert r.dnll >= 0.05, str(r)
    assert r.dnll >= 5 * np.mean(r.dnll_random), str(r)
    assert len(r.dnll_random) == 3 and r.n_projected > 0
