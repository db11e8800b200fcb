"""sinkwidgets.interventions on SmolLM2: each nnsight edit against a plain-torch reference, and the reference bands
of ../shared/design/streaming-pilot.md (massive-activation ablation, sink masking, a prepended sink token)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.models

# Our own short paragraphs (ordinary English, 20-45 tokens each).
PARAGRAPHS = [
    "The old lighthouse keeper climbed the stairs every evening. Ships passed by in the dark, and he watched them go.",
    "Rain had fallen all night, and by morning the river was brown and fast. The farmers stood on the bridge and "
    "talked about the harvest.",
    "She opened the letter slowly. It was from her brother, who had left the village ten years ago and never "
    "written once since then.",
    "The library closed at six, but the old man always stayed until the last minute, reading newspapers from "
    "cities he had never seen.",
    "When the train finally arrived, the platform was almost empty. A child waved from a window as the doors "
    "opened with a tired sigh.",
    "Bread is made from flour, water, salt and yeast. The dough rises in a warm place before it is shaped and "
    "baked in a hot oven.",
]


def plain_nll(hf, ids, hook=None):
    """Per-token NLL of ``ids [T]`` from a plain transformers forward, with an optional forward hook on a layer."""
    handle = None
    if hook is not None:
        handle = hook[0].register_forward_hook(hook[1])
    try:
        with torch.no_grad():
            logits = hf(torch.tensor([ids])).logits[0].float()
    finally:
        if handle is not None:
            handle.remove()
    return torch.nn.functional.cross_entropy(logits[:-1], torch.tensor(ids[1:]), reduction="none").numpy()


def ids_of(model, text):
    from sinkwidgets.interventions import _tokenize

    return _tokenize(model, text, None, None)[0]


# ----------------------------------------------------------------------------- project_out
def test_project_out_equals_plain_hook(smollm2):
    from sinkwidgets.interventions import project_out

    rng = np.random.default_rng(0)
    basis = rng.normal(size=(smollm2.sinkwidgets.d_model, 3))
    layer = 11
    text = PARAGRAPHS[0]
    res = project_out(smollm2, text, layer, basis, attention_layers=[12, 20])
    hf = smollm2._module
    ids = ids_of(smollm2, text)
    U = torch.tensor(np.linalg.qr(basis)[0], dtype=torch.float32)

    def hook(mod, args, out):
        h = out[0] if isinstance(out, tuple) else out
        h2 = h.clone()
        h2[:, 1:] = h[:, 1:] - (h[:, 1:] @ U) @ U.T  # non_sink: every position but 0
        return (h2, *out[1:]) if isinstance(out, tuple) else h2

    ref_clean = plain_nll(hf, ids)
    ref_proj = plain_nll(hf, ids, (hf.model.layers[layer], hook))
    np.testing.assert_allclose(res.nll["clean"][0], ref_clean, atol=2e-4)
    np.testing.assert_allclose(res.nll["projected"][0], ref_proj, atol=2e-4)
    assert res.meta["n_projected"] == [len(ids) - 1] and res.meta["rank"] == 3
    # attention statistics: the clean row's sink mass equals eager output_attentions
    with torch.no_grad():
        att = hf(torch.tensor([ids]), output_attentions=True).attentions
    for si, li in enumerate(res.attention["layers"]):
        want = att[li][0, :, 1:, 0].mean(-1).numpy()
        np.testing.assert_allclose(res.attention["sink_mass"][0, si, 0], want, atol=1e-4)
    assert res.attention["tv"].shape == (1, 2, 1, smollm2.sinkwidgets.n_heads)
    assert (res.attention["tv"] >= res.attention["sink_delta"] / 2 - 1e-6).all()  # |Δ on a set| <= 2 TV



def test_project_out_one_heads_write_equals_plain_hooks(smollm2):
    """project_out(..., head=h): at layer l, only head h's own write c_t = o_{t,h} W_O^h loses its component along U,
    h_t <- h_t - w_t (c_t U) U^T; checked against forward hooks on o_proj (its input) and on the block (the edit)."""
    from sinkwidgets.interventions import project_out

    info = smollm2.sinkwidgets
    layer, head = 3, 5
    basis = np.random.default_rng(2).normal(size=(info.d_model, 2))
    text = PARAGRAPHS[1]
    res = project_out(smollm2, text, layer, basis, head=head, attention_layers=[4, 9])
    hf = smollm2._module
    ids = ids_of(smollm2, text)
    U = torch.tensor(np.linalg.qr(basis)[0], dtype=torch.float32)
    blk = hf.model.layers[layer]
    Dh = info.head_dim
    got = {}
    pre = blk.self_attn.o_proj.register_forward_pre_hook(lambda m, a: got.__setitem__("o", a[0].detach()))

    def hook(mod, args, out):
        h = out[0] if isinstance(out, tuple) else out
        W = blk.self_attn.o_proj.weight  # [d, H*Dh]
        c = got["o"][..., head * Dh:(head + 1) * Dh] @ W[:, head * Dh:(head + 1) * Dh].T  # [1, T, d]
        h2 = h.clone()
        h2[:, 1:] = h[:, 1:] - (c[:, 1:] @ U) @ U.T
        return (h2, *out[1:]) if isinstance(out, tuple) else h2

    try:
        ref = plain_nll(hf, ids, (blk, hook))
    finally:
        pre.remove()
    np.testing.assert_allclose(res.nll["projected"][0], ref, atol=2e-4)
    np.testing.assert_allclose(res.nll["clean"][0], plain_nll(hf, ids), atol=2e-4)
    assert res.meta["head"] == head and res.attention["sink_mass"].shape == (1, 2, 2, info.n_heads)
    # a real edit: it moves the loss, and differently from removing the whole stream's component along U
    whole = project_out(smollm2, text, layer, basis, attention_layers=None)
    assert np.abs(res.nll["projected"][0] - res.nll["clean"][0]).max() > 1e-3
    assert not np.allclose(res.nll["projected"][0], whole.nll["projected"][0], atol=1e-3)
    from sinkwidgets.interventions import InterventionError

    with pytest.raises(InterventionError, match="head=9"):
        project_out(smollm2, text, layer, basis, head=9)

def test_project_out_massive_direction_vs_random(smollm2):
    """Projecting the massive channel (507) out everywhere after layer 11 destroys the loss; a random direction at
    non-sink positions barely moves it (the released token-0 activation is what the model relies on)."""
    from sinkwidgets.interventions import project_out

    e = np.zeros(smollm2.sinkwidgets.d_model)
    e[507] = 1.0
    rnd = np.random.default_rng(1).normal(size=smollm2.sinkwidgets.d_model)
    texts = PARAGRAPHS[:2]
    big = project_out(smollm2, texts, 11, e, positions="all", attention_layers=None)
    small = project_out(smollm2, texts, 11, rnd, attention_layers=None)
    assert big.delta["projected"] > 3.0
    assert abs(small.delta["projected"]) < 0.1
    assert "projected" in repr(big) and big.chart().to_dict()["mark"]["type"] == "bar"


def test_project_out_argument_errors(smollm2):
    from sinkwidgets.interventions import InterventionError, project_out

    with pytest.raises(InterventionError, match=r"d_model=576"):
        project_out(smollm2, "A short text here.", 3, np.ones((10, 2)))
    with pytest.raises(InterventionError, match="rank 1"):
        project_out(smollm2, "A short text here.", 3, np.ones((576, 2)))
    with pytest.raises(InterventionError, match=r"0\.\.29"):
        project_out(smollm2, "A short text here.", 30, np.ones(576))
    with pytest.raises(InterventionError, match="positions="):
        project_out(smollm2, "A short text here.", 3, np.ones(576), positions="everything")


# ----------------------------------------------------------------------------- bands (streaming-pilot.md)
@pytest.fixture(scope="module")
def massive_spec(smollm2):
    from sinkwidgets.interventions import find_massive

    return find_massive(smollm2, PARAGRAPHS)


def test_find_massive_layer_and_channel(massive_spec):
    # pilot: first at layer 11, on token 0, channel 507 (~22,500) plus channel 247 (~1,700)
    assert massive_spec.layer == 11
    assert 507 in massive_spec.channels
    i = massive_spec.channels.index(507)
    assert 15_000 < massive_spec.means[i] < 30_000
    assert all(any(t == 0 and c == 507 for t, c, _ in f) for f in massive_spec.found)


def test_ablate_massive_bands(smollm2, massive_spec):
    from sinkwidgets.interventions import ablate_massive

    res = ablate_massive(smollm2, PARAGRAPHS, spec=massive_spec)  # attention of every later layer (12-29)
    d = res.delta
    assert d["zero"] >= 3.0  # band: zeroing raises NLL by >= 3 nats
    assert abs(d["mean"]) <= 0.05  # band: mean ablation moves it by <= 0.05
    assert abs(d["control"]) <= 0.05  # same channels at a non-massive token: harmless
    assert all(n >= 1 for n in res.meta["n_massive"])
    mass = res.attention["sink_mass"]  # [N, S, C, H]; C = clean, zero, mean, control
    assert list(res.attention["layers"]) == list(range(12, 30))
    # pilot: zeroing lowers the mean first-token attention of layers 12-29 (0.594 -> 0.487); mean ablation keeps it
    assert mass[:, :, 1].mean() < mass[:, :, 0].mean() - 0.05
    assert abs(mass[:, :, 2].mean() - mass[:, :, 0].mean()) < 0.02
    assert res.chart("layers").to_dict()["mark"]["type"] == "line"


def test_mask_sink_bands_and_equivalence(smollm2):
    from sinkwidgets.interventions import mask_sink

    res = mask_sink(smollm2, PARAGRAPHS, {"late": "12-29", "all": "all"}, attention_layers=[20])
    assert res.delta["late"] >= 0.5  # band: masking token 0 in layers 12-29 raises NLL by >= 0.5
    assert res.delta["late"] > res.delta["all"]  # masking every layer is cheaper (token 1 becomes the sink)
    # masked rows put exactly no attention on token 0 (queries t >= 1), the clean row does
    mass = res.attention["sink_mass"][:, 0]  # [N, C, H]
    assert mass[:, 1].max() < 1e-6 and mass[:, 0].mean() > 0.3
    # masking every layer equals deleting token 0 (pilot: to 2.5e-5), on a plain forward of ids[1:]
    hf = smollm2._module
    for i, text in enumerate(PARAGRAPHS[:2]):
        ids = ids_of(smollm2, text)
        ref = plain_nll(hf, ids[1:])
        np.testing.assert_allclose(res.nll["all"][i][1:], ref, atol=2e-3)


def test_add_sink_newline_band(smollm2):
    from sinkwidgets.interventions import add_sink

    res = add_sink(smollm2, PARAGRAPHS, "\n")
    c = "prefix '\\n'"
    assert res.rows()[1]["frac_texts_lower"] >= 0.8  # band: a newline sink lowers NLL on >= 80% of paragraphs
    assert res.delta[c] < 0
    assert res.meta["nll_from_token2"][c] < res.meta["nll_from_token2"]["none"]
    # same targets in both conditions, and the prefixed row equals a plain forward
    ids = ids_of(smollm2, PARAGRAPHS[0])
    assert len(res.nll[c][0]) == len(res.nll["none"][0]) == len(ids) - 1
    np.testing.assert_allclose(res.nll[c][0], plain_nll(smollm2._module, [198] + ids)[1:], atol=2e-4)


def test_mask_sink_gives_the_same_with_options_or_keywords(smollm2):
    from sinkwidgets import RunOptions
    from sinkwidgets.interventions import mask_sink

    texts = PARAGRAPHS[:2]
    a = mask_sink(smollm2, texts, "12-29", attention_layers=[20], max_tokens=20, batch_size=2)
    b = mask_sink(smollm2, texts, "12-29", attention_layers=[20], options=RunOptions(max_tokens=20, batch_size=2))
    assert a.conditions == b.conditions and a.nll.keys() == b.nll.keys()
    for c in a.nll:
        assert all(len(x) <= 19 for x in a.nll[c])  # 20 tokens: at most 19 predictions
        for x, y in zip(a.nll[c], b.nll[c], strict=True):
            np.testing.assert_array_equal(x, y, err_msg=c)
    for k, v in a.attention.items():
        if isinstance(v, np.ndarray):
            np.testing.assert_array_equal(v, b.attention[k], err_msg=k)
    with pytest.raises(ValueError, match="max_tokens is given twice"):
        mask_sink(smollm2, texts, "12-29", max_tokens=12, options=RunOptions(max_tokens=20))
