"""The own path of the chunked executor (issue 20): a layer's attention computed once, in the package's query
chunks, for both the layer's output and the units (:func:`sinkwidgets.tracing.qk.own_chunks`). Its output equals
SDPA's, its probabilities equal the softmax, the units get the same α / first-token mass / entropy as from
normalised chunks, and a trace through it equals eager ``output_attentions`` and the plain model's logits."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_chunked import long_text, reference_probs


def _qkv(seed: int = 0, B: int = 2, H: int = 6, KV: int = 2, T: int = 41, D: int = 16):
    torch.manual_seed(seed)
    return torch.randn(B, H, T, D) * 2, torch.randn(B, KV, T, D) * 2, torch.randn(B, KV, T, D), D**-0.5, H // KV


def _run(q, k, v, params, rows, workspace=None):
    from sinkwidgets.tracing.qk import own_chunks

    B, H, T, D = q.shape
    out = torch.full((B, T, H, D), float("nan"))
    items = []
    for s, E, scratch, S, (r, logz) in own_chunks(q, k, v, params, out, rows, workspace):
        assert scratch.shape == E.shape == S.shape and r.shape == logz.shape == (B, H, E.shape[2], 1)
        items.append((s, (E * r).clone(), (S - logz).clone(), E.clone(), S.clone(), r.clone(), logz.clone()))
    return out, items


@pytest.mark.unit
@pytest.mark.parametrize("rows", [7, 16, 64])
def test_own_chunks_output_is_sdpa_and_probabilities_are_the_softmax(rows):
    from sinkwidgets.tracing.qk import LOGP_FLOOR, AttentionParams

    q, k, v, scale, n_rep = _qkv(1)
    B, H, T, D = q.shape
    out, items = _run(q, k, v, AttentionParams(scale, n_rep), rows)
    ref = torch.nn.functional.scaled_dot_product_attention(q, k.repeat_interleave(n_rep, 1), v.repeat_interleave(n_rep, 1),
                                                           is_causal=True, scale=scale)
    torch.testing.assert_close(out, ref.transpose(1, 2), rtol=0, atol=2e-6)  # every row written, none left NaN
    P = reference_probs(q, k, torch.ones(B, T, dtype=torch.long), scale, n_rep)
    assert [it[0] for it in items] == list(range(0, T, rows))
    for s, Pn, logp, E, S, r, logz in items:
        c, w = Pn.shape[2], Pn.shape[3]
        assert w == s + c
        torch.testing.assert_close(Pn, P[:, :, s : s + c, :w], rtol=0, atol=1e-6)
        later = torch.arange(w)[None, :] > torch.arange(s, s + c)[:, None]
        assert (E[..., later] == 0).all() and torch.isfinite(S).all()  # causal: exactly 0, finite logits
        assert (S[..., ~later] <= 0).all() and (S[..., ~later] >= LOGP_FLOOR).all()  # S = score − row max
        torch.testing.assert_close((Pn * logp).sum(-1), -torch.special.entr(Pn).sum(-1), rtol=0, atol=1e-5)
        torch.testing.assert_close(r, 1 / E.sum(-1, keepdim=True), rtol=1e-6, atol=0)  # Z from the value GEMM
        torch.testing.assert_close(logz, E.sum(-1, keepdim=True).log(), rtol=0, atol=1e-6)


@pytest.mark.unit
@pytest.mark.parametrize("check", [True, False], ids=["bound-check", "whole-clamp"])
def test_own_chunks_floor_only_where_the_bound_says_and_the_workspace_is_reused(check, monkeypatch):
    """Head 1 gets scores spread far below the floor: its S is clamped (no subnormal ``exp``) yet the causal
    entries stay exactly 0, with ``S`` at the floor there (finite, so ``E·S`` is 0); a second call reuses the
    first call's buffer. Both ways of flooring: the Cauchy–Schwarz check per head (large chunks) and one clamp
    of the whole chunk (small chunks, :data:`~sinkwidgets.tracing.qk.FLOOR_CHECK_MIN`)."""
    from sinkwidgets.tracing import qk
    from sinkwidgets.tracing.qk import LOGP_FLOOR, AttentionParams

    monkeypatch.setattr(qk, "FLOOR_CHECK_MIN", 0 if check else 2**30)
    q, k, v, scale, n_rep = _qkv(3)
    q[:, 1] *= 12.0
    P = reference_probs(q, k, torch.ones(q.shape[0], q.shape[2], dtype=torch.long), scale, n_rep)
    assert (torch.log(P[:, 1]) < LOGP_FLOOR).any()  # the case is real
    workspace = {}
    outs = []
    for _ in range(2):
        out, items = _run(q, k, v, AttentionParams(scale, n_rep), 8, workspace)
        outs.append(out)
        for s, Pn, _logp, E, S, _r, _logz in items:
            c, w = Pn.shape[2], Pn.shape[3]
            torch.testing.assert_close(Pn, P[:, :, s : s + c, :w], rtol=0, atol=1e-5)
            later = torch.arange(w)[None, :] > torch.arange(s, s + c)[:, None]
            assert (E[..., later] == 0).all() and (S[..., ~later] >= LOGP_FLOOR).all()
            assert (S[..., later] == LOGP_FLOOR).all()  # masked keys: floored before the exp, E set to 0 after
            tiny = (E > 0) & (E < torch.finfo(torch.float32).tiny)
            assert not tiny.any()  # no subnormal probabilities: exp stayed on its fast path
    assert set(workspace) == {"own", ("causal", 8)} and torch.equal(outs[0], outs[1])


@pytest.mark.unit
def test_own_path_is_only_taken_where_it_is_exact():
    from sinkwidgets.tracing.qk import AttentionParams, own_attention_ok, own_chunks

    q, k, v, scale, n_rep = _qkv()
    p = AttentionParams(scale, n_rep)
    ones = torch.ones(q.shape[0], q.shape[2], dtype=torch.long)
    assert own_attention_ok(q, k, v, ones, p, kwargs={"dropout": 0.0, "scaling": scale})
    padded = ones.clone()
    padded[1, :5] = 0
    assert not own_attention_ok(q, k, v, padded, p)  # left padding: the lse path handles it
    assert not own_attention_ok(q, k, v, ones, AttentionParams(scale, n_rep, window=8))
    assert not own_attention_ok(q, k, v, ones, AttentionParams(scale, n_rep, softcap=30.0))
    assert not own_attention_ok(q, k, v, ones, p, kwargs={"dropout": 0.1})
    assert not own_attention_ok(q, k, v, ones, p, kwargs={"sliding_window": 4})
    assert not own_attention_ok(q.bfloat16(), k.bfloat16(), v.bfloat16(), ones, p)
    assert not own_attention_ok(q[:, :, :1], k, v, ones[:, :1], p)  # decoding with a cache: keys longer
    with pytest.raises(ValueError, match="sliding window or soft-cap"):
        next(own_chunks(q, k, v, AttentionParams(scale, n_rep, window=8), torch.empty(2, 41, 6, 16)))


@pytest.mark.unit
def test_collector_gives_rowscale_units_the_raw_chunk_and_normalises_for_the_others():
    """With a kept-maps unit beside the summary the chunk is normalised in place first; alone, the summary folds
    the row scale in. α, first-token mass and entropy agree either way, and with the softmax's reference."""
    from sinkwidgets.tracing import reduce_attention
    from sinkwidgets.tracing.collect import Collector
    from sinkwidgets.tracing.qk import AttentionParams, own_chunks
    from sinkwidgets.tracing.reductions import AttentionSummary, BatchContext, KeptMaps, UnitSet

    q, k, v, scale, n_rep = _qkv(5, B=1)
    B, H, T, D = q.shape
    ones = torch.ones(B, T, dtype=torch.long)
    ctx = BatchContext(qmask=ones, first=torch.zeros(B, dtype=torch.long), n_real=ones.sum(-1), causal=True,
                       n_layers=1, n_heads=H, n_kv_heads=H // n_rep, d_model=H * D)
    want = reduce_attention(reference_probs(q, k, ones, scale, n_rep), ones, ctx.first, ctx.n_real, True)
    got = {}
    for extra in ([], [KeptMaps({0: [2]}, "float32")]):
        units = UnitSet([AttentionSummary(), *extra], 1, H, H * D)
        col = Collector(units, ctx)
        out = torch.empty(B, T, H, D)
        col.feed_probs(0, own_chunks(q, k, v, AttentionParams(scale, n_rep), out, 8))
        packed = col.packed()
        got[len(extra)] = packed
        for key, w in zip(("alpha", "ftm", "ent"), want, strict=True):
            torch.testing.assert_close(packed["attention"][key][0], w, rtol=0, atol=1e-6)
    maps = got[1]["maps"]
    ref = reference_probs(q, k, ones, scale, n_rep)[:, 2]
    torch.testing.assert_close(maps[next(iter(maps))][0].reshape(B, T, T), ref, rtol=0, atol=1e-6)


@pytest.mark.models
def test_smollm2_own_path_equals_eager_and_the_plain_forward(smollm2):
    """A prompt without padding takes the own path in every layer: α, first-token mass and entropy equal eager
    ``output_attentions`` to 1e-5, the kept maps equal eager's, and the per-token loss equals the plain SDPA model's
    (the layers' outputs are the ones the model would compute)."""
    import sinkwidgets as sw

    text = long_text()[:2400]
    own = sw.trace(smollm2, text, keep_maps=[(4, 1), (11, 3)], method="chunked")
    eager = sw.trace(smollm2, text, keep_maps=[(4, 1), (11, 3)], method="eager")
    assert own.meta["attention"] == "own" and own.meta["attention_layers"] == {"own": smollm2._module.config.num_hidden_layers}
    for f in ("sink_scores", "first_token_mass", "entropy"):
        np.testing.assert_allclose(getattr(own, f), getattr(eager, f), rtol=0, atol=1e-5, err_msg=f)
    np.testing.assert_allclose(np.asarray(own.maps, np.float32), np.asarray(eager.maps, np.float32), rtol=0, atol=2e-3)
    from sinkwidgets.tracing import run_units
    from sinkwidgets.tracing.reductions import AttentionSummary, TokenLoss

    res = run_units(smollm2, [text], [AttentionSummary(), TokenLoss()], method="chunked")[0]
    assert res.meta["attention"] == "own"
    hf = smollm2._module
    ids = torch.tensor([list(res.token_ids)])
    prev = hf.config._attn_implementation
    hf.set_attn_implementation("sdpa")
    try:
        with torch.no_grad():
            logits = hf(input_ids=ids, use_cache=False).logits[0]
    finally:
        hf.set_attn_implementation(prev)
    nll_ref = torch.nn.functional.cross_entropy(logits[:-1], ids[0, 1:], reduction="none").numpy()
    np.testing.assert_allclose(res.by_unit["loss"]["nll"], nll_ref, rtol=0, atol=1e-4)


def _summary_collector(q, n_rep, units=None):
    from sinkwidgets.tracing.collect import Collector
    from sinkwidgets.tracing.reductions import AttentionSummary, BatchContext, UnitSet

    B, H, T, D = q.shape
    ones = torch.ones(B, T, dtype=torch.long)
    ctx = BatchContext(qmask=ones, first=torch.zeros(B, dtype=torch.long), n_real=ones.sum(-1), causal=True,
                       n_layers=1, n_heads=H, n_kv_heads=H // n_rep, d_model=H * D)
    return Collector(UnitSet(units or [AttentionSummary()], 1, H, H * D), ctx)


@pytest.mark.unit
def test_parallel_parts_equal_one_stream_and_restore_the_threads():
    """A layer's chunks in two single-threaded parts (threads) give the one-stream output and sums, the same bits
    on every run, and leave torch's thread count as it was; a kept-maps unit (order matters) is not parallel."""
    from sinkwidgets.tracing.qk import AttentionParams, own_chunks
    from sinkwidgets.tracing.reductions import AttentionSummary, KeptMaps

    q, k, v, scale, n_rep = _qkv(7, B=1, T=150)
    p = AttentionParams(scale, n_rep)
    before = torch.get_num_threads()
    one = _summary_collector(q, n_rep)
    out1 = torch.empty(1, 150, 6, 16)
    one.feed_probs(0, own_chunks(q, k, v, p, out1, 16))
    runs = []
    for _ in range(2):
        col = _summary_collector(q, n_rep)
        assert col.parallel_ok(0)
        out2 = torch.full_like(out1, float("nan"))
        ws = {}
        col.feed_probs_parts(0, [own_chunks(q, k, v, p, out2, 16, ws, i, 2) for i in range(2)])
        assert {k for k in ws if isinstance(k, str)} == {"own", "own1"} and torch.get_num_threads() == before
        torch.testing.assert_close(out2, out1, rtol=0, atol=0)  # each part wrote its own rows, all of them
        runs.append(col.packed()["attention"])
        for key in ("alpha", "ftm", "ent"):
            torch.testing.assert_close(runs[-1][key], one.packed()["attention"][key], rtol=1e-6, atol=1e-6)
    assert all(torch.equal(runs[0][key], runs[1][key]) for key in runs[0])
    assert not _summary_collector(q, n_rep, [AttentionSummary(), KeptMaps({0: [1]})]).parallel_ok(0)


@pytest.mark.unit
def test_a_failing_part_raises_in_the_caller_and_restores_the_threads():
    from sinkwidgets.tracing.qk import AttentionParams, own_chunks
    from sinkwidgets.tracing.reductions import AttentionSummary

    class Boom(AttentionSummary):
        def chunk(self, state, start, P, scratch, ctx, logp=None, rowscale=None):
            if start >= 32:
                raise RuntimeError("boom in a part")
            super().chunk(state, start, P, scratch, ctx, logp=logp, rowscale=rowscale)

    q, k, v, scale, n_rep = _qkv(8, B=1, T=80)
    before = torch.get_num_threads()
    col = _summary_collector(q, n_rep, [Boom()])
    out = torch.empty(1, 80, 6, 16)
    with pytest.raises(RuntimeError, match="boom in a part"):
        col.feed_probs_parts(0, [own_chunks(q, k, v, AttentionParams(scale, n_rep), out, 16, None, i, 2)
                                 for i in range(2)])
    assert torch.get_num_threads() == before


@pytest.mark.models
def test_smollm2_parallel_parts_equal_the_one_thread_trace(smollm2, monkeypatch):
    """At T >= OWN_PARALLEL_MIN_TOKENS with two torch threads, the own path runs two parts per layer: the trace
    equals the one-thread trace (itself equal to eager, above) to 1e-5 (the sums are added in another order).
    The threshold is lowered to 512 tokens here, to keep the test short; the parts code is the same."""
    import sinkwidgets as sw
    from sinkwidgets.tracing import chunked
    from sinkwidgets.tracing.collect import Collector

    monkeypatch.setattr(chunked, "OWN_PARALLEL_MIN_TOKENS", 512)
    OWN_PARALLEL_MIN_TOKENS = 512
    calls = []
    parts = Collector.feed_probs_parts
    monkeypatch.setattr(Collector, "feed_probs_parts", lambda self, layer, ps: calls.append(len(ps)) or parts(self, layer, ps))

    text = long_text()
    before = torch.get_num_threads()
    got = {}
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            got[n] = sw.trace(smollm2, text, keep_maps=None, method="chunked", max_tokens=OWN_PARALLEL_MIN_TOKENS + 64)
            assert torch.get_num_threads() == n
    finally:
        torch.set_num_threads(before)
    assert got[2].n_tokens >= OWN_PARALLEL_MIN_TOKENS and got[2].meta["attention"] == "own"
    assert calls == [2] * smollm2.sinkwidgets.n_layers  # the two-thread trace ran every layer in two parts
    for f in ("sink_scores", "first_token_mass", "entropy"):
        np.testing.assert_allclose(getattr(got[2], f), getattr(got[1], f), rtol=0, atol=1e-5, err_msg=f)


@pytest.mark.unit
@pytest.mark.parametrize("rowdot", ["vecdot", "einsum"])
def test_rowscale_summary_with_left_padding_equals_the_normalised_reference(rowdot, monkeypatch):
    """The row-scale path of the summary (per-row first-token and entropy terms, weighted by the masks once per
    layer) on a left-padded batch whose prompts start at different positions: unnormalised chunks ``E = Z·P``
    with ``r = 1/Z``, ``logz = log Z`` give the α, first-token mass and entropy of the normalised probabilities."""
    from sinkwidgets.tracing import reduce_attention, reductions
    from sinkwidgets.tracing.qk import LOGP_FLOOR
    from sinkwidgets.tracing.reductions import AttentionSummary, BatchContext

    monkeypatch.setattr(reductions, "ROWDOT_VECDOT_MAX", 2**30 if rowdot == "vecdot" else 0)
    q, k, _v, scale, n_rep = _qkv(7, B=3)
    B, H, T, D = q.shape
    qmask = torch.ones(B, T, dtype=torch.long)
    qmask[1, :6] = 0
    qmask[2, :13] = 0
    first = (T - qmask.sum(-1)).long()
    ctx = BatchContext(qmask=qmask, first=first, n_real=qmask.sum(-1), causal=True, n_layers=1, n_heads=H,
                       n_kv_heads=H // n_rep, d_model=H * D)
    P = reference_probs(q, k, qmask, scale, n_rep) * qmask[:, None, :, None]  # padding query rows: all zero
    want = reduce_attention(P, qmask, first, ctx.n_real, True)
    torch.manual_seed(1)
    Z = torch.rand(B, H, T, 1) * 50 + 0.5  # any positive row scale
    unit = AttentionSummary()
    for parts in (1, 2):  # one stream, and two interleaved parts merged (as feed_probs_parts does)
        states = [unit.begin(ctx, 0, "cpu") for _ in range(parts)]
        for i, s in enumerate(range(0, T, 8)):
            e = min(s + 8, T)
            Pc = P[:, :, s:e, :e]
            E = Pc * Z[:, :, s:e]
            S = torch.where(E > 0, E.clamp_min(1e-38).log(), torch.full_like(E, LOGP_FLOOR))
            unit.chunk(states[i % parts], s, E, None, ctx, logp=S, rowscale=(1 / Z[:, :, s:e], Z[:, :, s:e].log()))
        st = states[0] if parts == 1 else unit.merge(states[0], states[1])
        got = unit.end(st, ctx)
        for key, w in zip(("alpha", "ftm", "ent"), want, strict=True):
            torch.testing.assert_close(got[key], w, rtol=1e-5, atol=1e-6)


@pytest.mark.unit
def test_kept_maps_share_one_buffer_and_a_new_run_does_not_write_into_an_old_result():
    """Every layer's kept maps are head slices of one ``[B, M, T, T]`` buffer, which packing returns as it is
    (no join); a second run with the same batch context allocates a new buffer, leaving the first result intact."""
    from sinkwidgets.tracing.collect import Collector
    from sinkwidgets.tracing.qk import AttentionParams, own_chunks
    from sinkwidgets.tracing.reductions import BatchContext, KeptMaps, UnitSet

    q, k, v, scale, n_rep = _qkv(9, B=2)
    B, H, T, D = q.shape
    ones = torch.ones(B, T, dtype=torch.long)
    ctx = BatchContext(qmask=ones, first=torch.zeros(B, dtype=torch.long), n_real=ones.sum(-1), causal=True,
                       n_layers=3, n_heads=H, n_kv_heads=H // n_rep, d_model=H * D)
    ref = reference_probs(q, k, ones, scale, n_rep)
    units = UnitSet([KeptMaps({0: [4, 1], 2: None}, "float32")], 3, H, H * D)
    results = []
    for run in range(2):
        col = Collector(units, ctx)
        for layer in (0, 2):
            qq = q * (1 + layer) if run == 0 else q.flip(-1)  # different probabilities per layer and per run
            col.feed_probs(layer, own_chunks(qq, k, v, AttentionParams(scale, n_rep), torch.empty(B, T, H, D), 8))
        maps = col.packed()["maps"]["maps"]
        assert maps.shape == (B, 2 + H, T, T) and maps is ctx.buffers["maps"]  # the buffer itself, not a copy
        results.append(maps)
    first = results[0]
    torch.testing.assert_close(first[:, :2], reference_probs(q, k, ones, scale, n_rep)[:, [1, 4]], rtol=0, atol=1e-6)
    torch.testing.assert_close(first[:, 2:], reference_probs(q * 3, k, ones, scale, n_rep), rtol=0, atol=1e-6)
    torch.testing.assert_close(results[1][:, 2:], reference_probs(q.flip(-1), k, ones, scale, n_rep), rtol=0,
                               atol=1e-6)
    assert not torch.equal(first[:, 2:], results[1][:, 2:]) and ref.shape == (B, H, T, T)


def _trace_both_ways(model, texts, **kw):
    """Trace ``texts`` with the probabilities fed from inside each attention call (the default, ``ProbsHook``) and
    through nnsight's ``.source`` (``plan.direct`` off), counting the hook's calls; check no hook is left behind."""
    import sinkwidgets as sw
    from sinkwidgets.tracing import chunked

    calls = {"before": 0, "after": 0}
    resid_hooks = []
    direct = {"on": True}
    block = chunked.chunked_block

    def block_switch(model, inputs, fwd, plan, *a, **k):
        plan.direct = plan.direct and direct["on"]
        return block(model, inputs, fwd, plan, *a, **k)

    got = {}
    plan = chunked.layer_plan(model, sw.tracing.api._info(model))
    before = [tuple(getattr(b, "_module", b)._forward_hooks) for b in plan.layers]  # transformers may keep its own
    with pytest.MonkeyPatch.context() as mp:
        def counting(name):
            orig = getattr(chunked.ProbsHook, name)

            def counted(self, *a):
                calls[name] += 1
                return orig(self, *a)

            return counted

        for name in calls:
            mp.setattr(chunked.ProbsHook, name, counting(name))
        set_resid = chunked.set_resid_hook

        def resid_counted(plan, layer, col):
            resid_hooks.append(layer)
            return set_resid(plan, layer, col)

        mp.setattr(chunked, "set_resid_hook", resid_counted)
        mp.setattr(chunked, "chunked_block", block_switch)
        for on in (True, False):
            direct["on"] = on
            got[on] = sw.trace(model, texts, method="chunked", progress=False, **kw)
            if on:
                got["calls"] = dict(calls)
                got["resid_hooks"] = list(resid_hooks)
    assert not any(hasattr(getattr(a, "_module", a), chunked.PROBS_HOOK) for a in plan.attns)
    assert [tuple(getattr(b, "_module", b)._forward_hooks) for b in plan.layers] == before  # resid hooks gone too
    return got


@pytest.mark.models
def test_probs_fed_from_the_attention_call_equal_the_source_path(smollm2):
    """The local chunked trace feeds the units from inside each attention call (no nnsight ``.source``): one
    unpadded prompt takes the own path in every layer, a padded batch the lse path (the kernel's row log-sum-exp,
    handed over after the call), and both equal the ``.source`` route of the same block; no hook is left behind."""
    L = smollm2._module.config.num_hidden_layers
    text = long_text()[:1200]
    got = _trace_both_ways(smollm2, text, keep_maps=[(3, 2)])
    assert got["calls"] == {"before": L, "after": 0}
    assert got["resid_hooks"] == list(range(L - 1))  # block outputs from forward hooks; the last one via nnsight
    a, b = got[True], got[False]
    assert a.meta["attention_layers"] == b.meta["attention_layers"] == {"own": L}
    for f in ("sink_scores", "first_token_mass", "entropy", "resid_norms"):
        np.testing.assert_allclose(getattr(a, f), getattr(b, f), rtol=0, atol=1e-6, err_msg=f)
    np.testing.assert_array_equal(np.asarray(a.maps), np.asarray(b.maps))

    got = _trace_both_ways(smollm2, [text, text[:500]])  # padded: own_attention_ok says no
    assert got["calls"] == {"before": L, "after": L}
    for ta, tb in zip(got[True], got[False], strict=True):
        assert ta.meta["attention_layers"] == tb.meta["attention_layers"] == {"lse": L}
        for f in ("sink_scores", "first_token_mass", "entropy"):
            np.testing.assert_allclose(getattr(ta, f), getattr(tb, f), rtol=0, atol=1e-6, err_msg=f)


@pytest.mark.models
def test_a_failing_unit_inside_the_attention_call_leaves_no_hook(smollm2, monkeypatch):
    import sinkwidgets as sw
    from sinkwidgets.tracing import chunked
    from sinkwidgets.tracing.reductions import AttentionSummary

    def boom(self, *a, **k):
        raise RuntimeError("unit failed on purpose")

    monkeypatch.setattr(AttentionSummary, "chunk", boom)
    with pytest.raises(RuntimeError, match="on purpose"):
        sw.trace(smollm2, long_text()[:600], method="chunked", progress=False)
    plan = chunked.layer_plan(smollm2, sw.tracing.api._info(smollm2))
    assert not any(hasattr(getattr(a, "_module", a), chunked.PROBS_HOOK) for a in plan.attns)
    monkeypatch.undo()
    assert sw.trace(smollm2, long_text()[:600], method="chunked", progress=False).meta["attention"] == "own"
