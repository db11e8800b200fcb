"""The tracing engine: named reductions run by the eager and chunked executors (remote: tests/remote/).

Each unit is checked against a plain-torch computation written here from the model's own modules (forward hooks,
``output_attentions``, ``output_hidden_states``), and a unit defined in this file runs on both executors without
any change to them.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import transformers as tf
from _helpers import save_tiny

import sinkwidgets as sw
from sinkwidgets.tracing import reductions as R
from sinkwidgets.tracing import run_units

TEXTS = ["The cat sat on the mat. Then it slept.", "A much longer sentence about the old lighthouse keeper, the ships "
         "and the sea.", "Hi."]
TINY = dict(vocab_size=49152, hidden_size=64, num_hidden_layers=3, num_attention_heads=4, intermediate_size=128,
            max_position_embeddings=256)


# ----------------------------------------------------------------------------- plain-torch references
def reference(model, ids, layer):
    """Value vectors after W_O ``[H, T, d]``, per-head outputs ``[H, T, d]``, the block output ``[T, d]``."""
    info = model.sinkwidgets
    hf = model._module
    ad = info.adapter
    blocks = hf.get_submodule(ad.layers)
    block = blocks[layer]
    got = {}
    vmod = block.get_submodule(ad.v_proj)
    omod = block.get_submodule(ad.o_proj)
    hs = [vmod.register_forward_hook(lambda m, i, o: got.__setitem__("v", o.detach())),
          omod.register_forward_hook(lambda m, i, o: got.__setitem__("o_in", i[0].detach())),
          block.register_forward_hook(lambda m, i, o: got.__setitem__("h", (o[0] if isinstance(o, tuple) else o).detach()))]
    try:
        with torch.no_grad():
            hf(input_ids=torch.as_tensor(ids)[None])
    finally:
        for h in hs:
            h.remove()
    H, KV = info.n_heads, info.n_kv_heads
    W = omod.weight.detach().double()
    if ad.o_proj_layout == "linear":
        W = W.t()  # [H*Dh, d]
    v = got["v"][0].double()
    if ad.v_split:
        v = v[:, (ad.v_split - 1) * v.shape[-1] // ad.v_split :]
    Dh = W.shape[0] // H
    o = got["o_in"][0].double()
    values = np.stack([(v[:, (h // (H // KV)) * Dh : (h // (H // KV) + 1) * Dh] @ W[h * Dh : (h + 1) * Dh]).numpy()
                       for h in range(H)])
    outputs = np.stack([(o[:, h * Dh : (h + 1) * Dh] @ W[h * Dh : (h + 1) * Dh]).numpy() for h in range(H)])
    return values, outputs, got["h"][0].double().numpy()


def tiny(tmp_path, kind):
    torch.manual_seed(0)
    if kind == "llama":  # grouped-query attention: 4 query heads read 2 value heads
        m = tf.LlamaForCausalLM(tf.LlamaConfig(num_key_value_heads=2, **TINY))
    elif kind == "gpt2":  # fused q/k/v projection, Conv1D layout
        m = tf.GPT2LMHeadModel(tf.GPT2Config(vocab_size=49152, n_embd=64, n_layer=3, n_head=4, n_positions=256))
    else:
        m = tf.BertModel(tf.BertConfig(**TINY))
    return sw.load_model(save_tiny(tmp_path / kind, m))


# ----------------------------------------------------------------------------- units against plain torch
@pytest.mark.models
@pytest.mark.parametrize("kind", ["llama", "gpt2", "bert"])
def test_head_values_and_outputs_equal_plain_torch(kind, tmp_path):
    model = tiny(tmp_path, kind)
    units = [R.HeadValues({1: [0, 3], 2: None}), R.HeadOutputs({1: [2]}), R.PooledResidual([0, 2]),
             R.ResidualRows([0, 2])]
    methods = ["eager", "chunked"] if kind == "llama" else ["eager"]
    for method in methods:
        res = run_units(model, TEXTS, units, method=method, batch_size=2)  # padded batches
        for r in res:
            values1, outputs1, _ = reference(model, r.token_ids, 1)
            values2, _, h2 = reference(model, r.token_ids, 2)
            _, _, h0 = reference(model, r.token_ids, 0)
            a = r.arrays
            assert a["head_value_index"].tolist() == [[1, 0], [1, 3], [2, 0], [2, 1], [2, 2], [2, 3]]
            want = np.concatenate([values1[[0, 3]], values2])
            np.testing.assert_allclose(a["head_values"], want, rtol=0, atol=1e-5 * max(1, np.abs(want).max()))
            np.testing.assert_allclose(a["head_outputs"], outputs1[[2]], rtol=0, atol=1e-5)
            for i, h in enumerate((h0, h2)):
                np.testing.assert_allclose(a["pooled_mean"][i], h[1:].mean(0), rtol=0, atol=1e-5)
                np.testing.assert_allclose(a["pooled_last"][i], h[-1], rtol=0, atol=1e-5)
                np.testing.assert_allclose(a["resid_rows"][i], h, rtol=0, atol=1e-5)
            assert a["resid_row_layers"].tolist() == [0, 2]
            assert r.meta["method"] == method


@pytest.mark.models
def test_smollm2_head_values_eager_chunked_and_trace_fields(smollm2):
    text = TEXTS[1]
    e = sw.trace(smollm2, text, keep_head_values=[2, 5], method="eager")
    c = sw.trace(smollm2, text, keep_head_values=[2, 5], method="chunked")
    assert e.head_values.shape == (2, 9, e.n_tokens, 576) and e.head_value_layers.tolist() == [2, 5]
    values, _, _ = reference(smollm2, e.token_ids, 5)
    np.testing.assert_allclose(e.head_values[1], values, rtol=0, atol=1e-5 * np.abs(values).max())
    np.testing.assert_allclose(c.head_values, e.head_values, rtol=0, atol=1e-4)


class MaxRowAttention(R.Reduction):
    """A unit written outside the package: the largest attention weight of each real query row, ``[B, H, T]``."""

    name = "max_row"
    reads = ("probs",)

    def begin(self, ctx, layer, device):
        return torch.zeros(ctx.B, ctx.n_heads, ctx.T, device=device)

    def chunk(self, state, start, P, scratch, ctx):
        state[:, :, start : start + P.shape[2]] = P.amax(-1)

    def end(self, state, ctx):
        return {"m": state}

    def result_bytes(self, B, T, ctx):
        return ctx.n_layers * B * ctx.n_heads * T * 4

    def land(self, out, b, f):
        return {"max_row": out["m"][:, b, :, f:]}


@pytest.mark.models
def test_a_new_unit_runs_on_both_executors_unchanged(smollm2):
    res = {m: run_units(smollm2, TEXTS, [MaxRowAttention()], method=m) for m in ("eager", "chunked")}
    for r_e, r_c in zip(res["eager"], res["chunked"], strict=True):
        with torch.no_grad():
            out = smollm2._module(input_ids=torch.as_tensor(r_e.token_ids)[None], output_attentions=True)
        want = torch.stack(out.attentions)[:, 0].amax(-1).numpy()  # [L, H, T]
        np.testing.assert_allclose(r_e.arrays["max_row"], want, rtol=0, atol=1e-5)
        np.testing.assert_allclose(r_c.arrays["max_row"], want, rtol=0, atol=1e-4)


# ----------------------------------------------------------------------------- unit bookkeeping (no model)
def _ctx(B=2, T=10):
    q = torch.ones(B, T, dtype=torch.long)
    return R.BatchContext(q, torch.zeros(B, dtype=torch.long), q.sum(-1), True, 30, 9, 3, 576)


@pytest.mark.unit
def test_result_bytes_follow_the_shapes():
    ctx = _ctx()
    assert R.AttentionSummary().result_bytes(2, 10, ctx) == 30 * 2 * 9 * 12 * 4
    assert R.KeptMaps({3: [1, 2]}).result_bytes(2, 10, ctx) == 2 * 2 * 100 * 2
    assert R.HeadValues({3: None, 4: [0]}).result_bytes(2, 10, ctx) == 10 * 2 * 10 * 576 * 4
    units = R.UnitSet([R.AttentionSummary(), R.PooledResidual([1, 2])], 30, 9, 576)
    assert units.result_bytes(2, 10, ctx) == R.AttentionSummary().result_bytes(2, 10, ctx) + 2 * 2 * 2 * 576 * 4


@pytest.mark.unit
def test_unit_set_checks_names_layers_and_heads():
    with pytest.raises(ValueError, match="unique"):
        R.UnitSet([R.AttentionSummary(), R.AttentionSummary()], 30, 9, 576)
    with pytest.raises(ValueError, match="layer 30 is out of range"):
        R.UnitSet([R.PooledResidual([30])], 30, 9, 576)
    with pytest.raises(ValueError, match=r"heads \[9\] of layer 2 are out of range"):
        R.UnitSet([R.HeadValues({2: [9]})], 30, 9, 576)
    with pytest.raises(ValueError, match="needs at least one layer"):
        R.HeadOutputs({})


@pytest.mark.unit
def test_value_writes_kernel_handles_gqa_and_conv1d():
    torch.manual_seed(0)
    B, T, H, KV, Dh, d = 2, 5, 4, 2, 3, 7
    v = torch.randn(B, T, KV * Dh)
    W = torch.randn(d, H * Dh)  # nn.Linear layout
    got = R.value_writes(v, W, H, KV, [1, 2])
    for i, h in enumerate((1, 2)):
        kv = h // 2
        want = v[..., kv * Dh : (kv + 1) * Dh] @ W[:, h * Dh : (h + 1) * Dh].t()
        torch.testing.assert_close(got[:, i], want)
    torch.testing.assert_close(R.value_writes(v, W.t().contiguous(), H, KV, [1, 2], layout="conv1d"), got)


# ----------------------------------------------------------------------------- arguments, BOS, default maps
@pytest.mark.models
@pytest.mark.parametrize("kwargs,match", [
    (dict(add_bos="no"), "add_bos must be True, False or None"),
    (dict(keep_maps=(3, 4)), r"ambiguous: pass \[\(3, 4\)\]"),
    (dict(max_tokens="10"), "max_tokens must be an integer >= 2"),
    (dict(batch_size=2.5), "batch_size must be an integer >= 1"),
    (dict(top_k=-1), "top_k must be an integer >= 1"),
    (dict(keep_head_values="some"), "keep_head_values must be"),
])
def test_bad_arguments_fail_before_any_model_work(smollm2, monkeypatch, kwargs, match):
    from sinkwidgets.tracing import api

    def boom(*a, **k):
        raise AssertionError("the model ran before the arguments were checked")

    monkeypatch.setattr(api, "_run_batch", boom)
    with pytest.raises((ValueError, TypeError), match=match):
        sw.trace(smollm2, "The cat sat.", **kwargs)


@pytest.mark.models
def test_no_text_is_a_clear_error(smollm2):
    with pytest.raises(TypeError, match="prompts must be a str or a list of str, got NoneType"):
        sw.trace(smollm2, None)
    with pytest.raises(TypeError, match="a prompt must be a str, got int"):
        sw.trace(smollm2, ["ok", 3])


@pytest.mark.models
def test_bos_written_in_the_text_is_not_duplicated(gemma3, minilm):
    bos = gemma3.tokenizer.bos_token_id
    tr = sw.trace(gemma3, "<bos> Hello there")
    assert tr.token_ids[0] == bos and int((tr.token_ids == bos).sum()) == 1 and tr.meta["add_bos"] is True
    no = sw.trace(gemma3, "<bos> Hello there", add_bos=False)
    assert bos not in no.token_ids and no.meta["add_bos"] is False
    assert no.token_ids.tolist() == tr.token_ids[1:].tolist()
    cls = minilm.tokenizer.cls_token_id
    tr = sw.trace(minilm, "[CLS] Hello there")
    assert int((tr.token_ids == cls).sum()) == 1 and tr.token_ids[0] == cls
    no = sw.trace(minilm, "[CLS] Hello there", add_bos=False)
    assert cls not in no.token_ids and no.meta["add_bos"] is False


@pytest.mark.models
def test_short_prompts_keep_maps_by_default_so_the_first_explorer_shows_one(smollm2):
    tr = sw.trace(smollm2, "The old lighthouse keeper climbed the stairs.")
    assert tr.maps is not None and len(tr.map_index) == 30 * 9 and tr.meta["keep_maps"] == "auto: all"
    ex = sw.SinkExplorer(tr)
    assert "not kept" not in str(ex._map.get("message", ""))
    assert sw.trace(smollm2, "The cat.", keep_maps=None).maps is None


# ----------------------------------------------------------------------------- edits
MASK_TEXT = ("The old lighthouse keeper climbed the stairs every evening to light the lamp, watching the ships pass by "
             "in the dark.")


@pytest.mark.models
def test_a_trace_under_mask_sink_moves_the_sink_to_token_1(smollm2):
    """mask_sink's edit (key 0 hidden from every query t >= 1, in every layer): token 1 becomes the sink. SmolLM2,
    layers 12-29: token 1's α goes from ~0.02 to ~0.66, and the first-token mass to exactly 0."""
    from sinkwidgets.interventions import mask_sink_edit

    edit = mask_sink_edit(smollm2, "all", token=0)
    clean = sw.trace(smollm2, MASK_TEXT, keep_maps=None)
    masked = sw.trace(smollm2, MASK_TEXT, keep_maps=None, edits=[edit])
    a0, a1 = clean.sink_scores[12:30, :, 1].mean(), masked.sink_scores[12:30, :, 1].mean()
    assert a0 < 0.05 and 0.45 < a1 < 0.85, (a0, a1)
    assert clean.first_token_mass[12:30].mean() > 0.4 and masked.first_token_mass.max() < 1e-6
    # α of token 0 under the mask: only query 0 attends to it (itself, weight 1), so α_0 = 1 / T exactly
    np.testing.assert_allclose(masked.sink_scores[:, :, 0], 1 / masked.n_tokens, atol=1e-6)
    assert masked.meta["edits"] == [repr(edit)] and "edits" not in clean.meta
    # the same edit on the eager and the chunked executor gives the same trace
    chunked = sw.trace(smollm2, MASK_TEXT, keep_maps=None, edits=[edit], method="chunked")
    assert masked.meta["method"] == "eager" and chunked.meta["method"] == "chunked"
    for f in ("sink_scores", "first_token_mass", "entropy", "resid_norms"):
        np.testing.assert_allclose(getattr(chunked, f), getattr(masked, f), atol=2e-4, rtol=1e-4, err_msg=f)


@pytest.mark.models
def test_edits_in_a_padded_batch_equal_one_prompt_alone(smollm2):
    """Edits count positions from each prompt's first real token: a left-padded batch gives each prompt's own result,
    and a residual edit's per-token weights are right-aligned to the real tokens."""
    from sinkwidgets.tracing.edits import HideKeys, ProjectOut

    U = torch.zeros(576, 1)
    U[507, 0] = 1.0
    texts = [MASK_TEXT, "The cat sat on the mat."]
    for edit in (HideKeys(range(30), [0]), ProjectOut(11, U, torch.ones(1, 6))):
        alone = [run_units(smollm2, [t], [R.AttentionSummary(), R.TokenLoss()], edits=[edit], method="chunked")[0]
                 for t in texts]
        batch = run_units(smollm2, texts, [R.AttentionSummary(), R.TokenLoss()], edits=[edit], method="chunked")
        for a, b in zip(alone, batch):
            for k in ("sink_scores", "nll"):
                np.testing.assert_allclose(b.arrays[k], a.arrays[k], atol=2e-4, rtol=1e-3, err_msg=k)
        assert batch[0].meta["edits"] == [repr(edit)]


@pytest.mark.models
def test_token_loss_equals_plain_forward(smollm2):
    ids = sw.tracing.tokenize(smollm2, MASK_TEXT, None)[0]
    got = run_units(smollm2, [MASK_TEXT], [R.TokenLoss()], method="chunked")[0].arrays["nll"]
    with torch.no_grad():
        z = smollm2._module(torch.tensor([ids])).logits[0].float()
    want = torch.nn.functional.cross_entropy(z[:-1], torch.tensor(ids[1:]), reduction="none").numpy()
    assert got.shape == (len(ids) - 1,)
    np.testing.assert_allclose(got, want, atol=2e-4)


@pytest.mark.unit
def test_edit_set_checks_names_sites_and_layers():
    from sinkwidgets.tracing.edits import EditSet, HideKeys, ProjectHeadWrite

    with pytest.raises(ValueError, match="unique"):
        EditSet([HideKeys([1], [0]), HideKeys([2], [0])], 4, 2, 8)
    with pytest.raises(ValueError, match="out of range"):
        EditSet([HideKeys([4], [0])], 4, 2, 8)
    with pytest.raises(ValueError, match="head=2"):
        EditSet([ProjectHeadWrite(1, 2, torch.zeros(8, 1), torch.ones(1, 3))], 4, 2, 8)
    es = EditSet([HideKeys([1], [0], name="a"), ProjectHeadWrite(1, 0, torch.zeros(8, 1), torch.ones(1, 3))], 4, 2, 8)
    assert es.needs(1) == {"attn_mask", "resid", "o_input"} and es.needs(0) == set()


@pytest.mark.unit
def test_hide_keys_counts_from_the_first_real_token_and_keeps_a_lone_key():
    from sinkwidgets.tracing.edits import HideKeys

    qmask = torch.tensor([[1, 1, 1, 1], [0, 1, 1, 1]])
    ctx = R.BatchContext(qmask=qmask, first=torch.tensor([0, 1]), n_real=qmask.sum(-1), causal=True, n_layers=2,
                         n_heads=1, n_kv_heads=1, d_model=4)
    hid = HideKeys([0], [0, 1]).hide(0, ctx, "cpu")
    # prompt 0: query 1 would see nothing, so it keeps keys 0, 1; queries 2, 3 lose them
    assert hid[0].int().tolist() == [[0, 0, 0, 0], [0, 0, 0, 0], [1, 1, 0, 0], [1, 1, 0, 0]]
    assert hid[1].int().tolist() == [[0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0], [0, 1, 1, 0]]
    assert not HideKeys([0], [0], rows=[1]).hide(0, ctx, "cpu")[0].any()


@pytest.mark.models
def test_mask_edits_on_an_encoder_are_a_clear_error(minilm):
    from sinkwidgets.tracing.edits import HideKeys

    with pytest.raises(ValueError, match="rotary"):
        sw.trace(minilm, "The cat sat on the mat.", edits=[HideKeys([0], [0])])
    with pytest.raises(TypeError, match="Edit objects"):
        sw.trace(minilm, "The cat sat on the mat.", edits=[("mask", 0)])


@pytest.mark.unit
def test_a_projection_edit_gives_an_edited_row_the_numbers_it_has_alone_at_any_thread_count():
    """ProjectOut / ProjectHeadWrite compute ``w (x U) Uᵀ`` row by row (only for rows with a weight), so a row's
    edit does not depend on the other rows of the batch, bit for bit, also when torch runs several threads (one
    GEMM over B·T rows may split its sums differently for another B; CI saw 1.9e-6 from that in the release
    experiment)."""
    from sinkwidgets.tracing.edits import ProjectHeadWrite, ProjectOut

    g = torch.Generator().manual_seed(0)
    h = torch.randn(6, 29, 576, generator=g) * 3
    h[:, :, 100] += 500.0  # a massive channel, as in a real residual stream
    U = torch.linalg.qr(torch.randn(576, 1, generator=g))[0]
    w = torch.zeros(6, 29)
    w[1, 1:] = 1.0  # every token but the first (the sink)
    before = torch.get_num_threads()
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            e = ProjectOut(3, U, w)
            batch = e.apply(h, None, 3, {})
            alone = ProjectOut(3, U, w[:2]).apply(h[:2].clone(), None, 3, {})  # clean row + edited row
            assert torch.equal(batch[1], alone[1]) and torch.equal(batch[[0, 2, 3, 4, 5]], h[[0, 2, 3, 4, 5]])
            assert not torch.equal(batch[1], h[1])  # the edit did something
            hw = ProjectHeadWrite(3, 0, U, w)
            got = hw.apply(h, None, 3, {"c": h * 0.5})
            one = ProjectHeadWrite(3, 0, U, w[1:2]).apply(h[1:2], None, 3, {"c": h[1:2] * 0.5})
            assert torch.equal(got[1], one[0]) and torch.equal(got[0], h[0])
    finally:
        torch.set_num_threads(before)
