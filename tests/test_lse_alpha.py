"""The lse path of the chunked executor (issue 20): probabilities as exp(q·k·scale − lse), with the row log-sum-exp
returned by the layer's own attention kernel, equal the plain softmax; the attention function that returns it
computes what SDPA computes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_chunked import long_text, reference_probs


def _batch(seed: int = 0):
    torch.manual_seed(seed)
    B, H, KV, T, D = 2, 6, 2, 41, 16
    q, k, v = torch.randn(B, H, T, D) * 2, torch.randn(B, KV, T, D) * 2, torch.randn(B, KV, T, D)
    qmask = torch.ones(B, T, dtype=torch.long)
    qmask[1, :11] = 0  # left padding
    return q, k, v, qmask, D**-0.5, H // KV


def _bool_mask(qmask):
    T = qmask.shape[1]
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    return causal[None, None] & qmask.bool()[:, None, None, :]  # [B, 1, T, T], as transformers builds it for SDPA


class _Attn(torch.nn.Module):
    def __init__(self, n_rep):
        super().__init__()
        self.num_key_value_groups, self.is_causal = n_rep, True


@pytest.mark.unit
def test_lse_attention_is_sdpa_and_returns_the_row_lse():
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    from sinkwidgets.tracing.chunked import lse_attention

    q, k, v, qmask, scale, n_rep = _batch()
    mod = _Attn(n_rep)
    for mask in (None, _bool_mask(qmask)):
        out, lse = lse_attention(mod, q, k, v, mask, scaling=scale)
        ref, none = sdpa_attention_forward(mod, q, k, v, mask, scaling=scale)
        assert none is None and out.shape == ref.shape == (2, q.shape[2], 6, 16)
        real = qmask.bool() if mask is not None else torch.ones_like(qmask, dtype=torch.bool)
        torch.testing.assert_close(out[real], ref[real], rtol=0, atol=1e-6)
        s = (q @ k.repeat_interleave(n_rep, 1).transpose(-1, -2)) * scale
        ok = _bool_mask(qmask if mask is not None else torch.ones_like(qmask))
        want = s.masked_fill(~ok, float("-inf")).logsumexp(-1)  # [B, H, T]
        torch.testing.assert_close(lse.transpose(1, 2)[real], want.transpose(1, 2)[real], rtol=0, atol=1e-5)
    # what the kernel cannot express goes to transformers' SDPA unchanged, without an lse
    assert lse_attention(mod, q, k, v, None, scaling=scale, dropout=0.5)[1] is None
    out, lse = lse_attention(mod, q[:, :, :1], k, v, None, scaling=scale)  # one query, longer keys (decoding)
    assert lse is None and out.shape == (2, 1, 6, 16)


@pytest.mark.unit
@pytest.mark.parametrize("rows", [7, 16, 64])
def test_lse_chunks_equal_the_softmax(rows):
    from sinkwidgets.tracing import reduce_attention
    from sinkwidgets.tracing.chunked import lse_attention
    from sinkwidgets.tracing.qk import LOGP_FLOOR, AttentionParams, lse_chunks
    from sinkwidgets.tracing.reductions import reduce_attention_chunks

    q, k, v, qmask, scale, n_rep = _batch(1)
    _, lse = lse_attention(_Attn(n_rep), q, k, v, _bool_mask(qmask), scaling=scale)
    P = reference_probs(q, k, qmask, scale, n_rep)
    real = qmask.bool()
    params = AttentionParams(scale, n_rep)
    T = q.shape[2]
    for s, Pc, scratch, logp in lse_chunks(q, k, lse, qmask, params, rows):
        c, w = Pc.shape[2], Pc.shape[3]
        assert w == s + c and scratch.shape == Pc.shape
        for b in range(2):
            rq = real[b, s : s + c]
            # P = exp(s - lse): an lse off by a few float32 ulps (the flash kernel sums in its own order, which
            # differs between CPUs: 1.25e-6 on a P near 1 on an AMD EPYC host) moves P by P * δ, hence the rtol
            torch.testing.assert_close(Pc[b][:, rq][..., real[b, :w]], P[b, :, s : s + c][:, rq][..., :w][..., real[b, :w]],
                                       rtol=4e-6, atol=1e-6)
            assert (Pc[b][:, ~rq] == 0).all() and (Pc[b][..., ~real[b, :w]] == 0).all()  # padding: exactly 0
        later = torch.arange(w)[None, :] > torch.arange(s, s + c)[:, None]
        assert (Pc[..., later] == 0).all() and (logp[..., later] <= LOGP_FLOOR).all()  # causal: exactly 0
        assert torch.isfinite(logp).all() and (logp[..., ~later] >= LOGP_FLOOR).all()
        torch.testing.assert_close((Pc * logp).sum(-1), -torch.special.entr(Pc).sum(-1), rtol=0, atol=1e-5)
    first, n_real = torch.tensor([0, 11]), qmask.sum(-1)
    want = reduce_attention(P, qmask, first, n_real, True)
    chunks = lse_chunks(q, k, lse, qmask, params, rows)
    got = reduce_attention_chunks(chunks, 2, q.shape[1], T, qmask, first, n_real, True)  # entr on P
    for w_, g in zip(want, got, strict=True):
        torch.testing.assert_close(g, w_, rtol=0, atol=1e-6)


@pytest.mark.unit
def test_lse_floor_runs_only_where_a_logp_can_fall_below_it():
    """The clamp before ``exp`` is skipped for the heads of a chunk whose Cauchy–Schwarz bound stays above the
    floor: those heads really have no entry below it, the others are clamped, and the probabilities and the
    workspace reused across calls give the plain softmax either way."""
    from sinkwidgets.tracing.chunked import lse_attention
    from sinkwidgets.tracing.qk import LOGP_FLOOR, AttentionParams, _floor_needed, lse_chunks

    q, k, v, qmask, scale, n_rep = _batch(3)
    qmask[:] = 1
    q[:, 1] *= 12.0  # head 1 (and only it) gets scores spread far below the floor
    _, lse = lse_attention(_Attn(n_rep), q, k, v, None, scaling=scale)
    P = reference_probs(q, k, qmask, scale, n_rep)
    logp_ref = torch.log(P)
    rows = 8
    need = _floor_needed(q, k, lse, scale, n_rep, rows)
    assert any(1 in hs for hs in need) and not all(len(hs) == q.shape[1] for hs in need)
    T = q.shape[2]
    for ci, s in enumerate(range(0, T, rows)):
        e = min(s + rows, T)
        seen = logp_ref[:, :, s:e, :e][..., torch.arange(e)[None, :] <= torch.arange(s, e)[:, None]]
        for h in range(q.shape[1]):
            if h not in need[ci]:  # skipped: nothing below the floor there
                assert (seen[:, h] >= LOGP_FLOOR).all()
    assert any((logp_ref[:, 1] < LOGP_FLOOR).any(-1).any(-1).tolist())  # the case is real
    workspace = {}
    for _ in range(2):  # the second call reuses the first call's buffer
        for s, Pc, _, logp in lse_chunks(q, k, lse, qmask, AttentionParams(scale, n_rep), rows, workspace):
            c, w = Pc.shape[2], Pc.shape[3]
            # (scores of ~100 nats: float32 rounding of q·k and lse alone is ~1e-6 of a probability near 1)
            torch.testing.assert_close(Pc, P[:, :, s : s + c, :w], rtol=0, atol=1e-5)
            allowed = torch.arange(w)[None, :] <= torch.arange(s, s + c)[:, None]
            assert (logp[..., allowed] >= LOGP_FLOOR).all() and torch.isfinite(logp).all()
    assert set(workspace) == {"lse"}


@pytest.mark.unit
def test_lse_chunks_refuse_windows_and_softcaps():
    from sinkwidgets.tracing.qk import AttentionParams, lse_chunks

    q, k, _, qmask, scale, n_rep = _batch()
    lse = torch.zeros(q.shape[:3])
    for params in (AttentionParams(scale, n_rep, window=8), AttentionParams(scale, n_rep, softcap=30.0)):
        with pytest.raises(ValueError, match="attention_chunks"):
            next(lse_chunks(q, k, lse, qmask, params))


@pytest.mark.models
def test_smollm2_lse_trace_equals_eager_alone_and_in_a_batch(smollm2):
    """α, first-token mass and entropy of the lse path (the left-padded batch) and of the own path (each prompt
    alone) equal eager ``output_attentions`` to 1e-5; the model is back on eager attention afterwards."""
    import sinkwidgets as sw

    text = long_text()
    texts = [text[:300], text[2000:3200]]
    kw = dict(keep_maps=None, method="chunked")
    batch = sw.trace(smollm2, texts, **kw)
    alone = [sw.trace(smollm2, t, **kw) for t in texts]
    eager = sw.trace(smollm2, texts, keep_maps=None, method="eager")
    for b, a, e in zip(batch, alone, eager, strict=True):
        assert b.meta["attention"] == "lse" and a.meta["attention"] == "own"  # padding: lse; alone: own
        for f in ("sink_scores", "first_token_mass", "entropy"):
            np.testing.assert_allclose(getattr(b, f), getattr(e, f), rtol=0, atol=1e-5, err_msg=f)
            np.testing.assert_allclose(getattr(a, f), getattr(e, f), rtol=0, atol=1e-5, err_msg=f)
    assert smollm2._module.config._attn_implementation == "eager"
    # an attention-mask edit keeps the recompute path (the lse of the edited attention is not used)
    from sinkwidgets.tracing.edits import HideKeys

    edited = sw.trace(smollm2, texts[0], keep_maps=None, method="chunked", edits=[HideKeys([3], keys=[0])])
    L = smollm2._module.config.num_hidden_layers
    assert edited.meta["attention_layers"] == {"own": L - 1, "recompute": 1} and np.isfinite(edited.sink_scores).all()
    n = edited.n_tokens  # key 0 hidden from queries t >= 1 in layer 3: only query 0 attends it, with weight 1
    np.testing.assert_allclose(edited.sink_scores[3, :, 0], 1 / n, rtol=1e-5)
    assert edited.sink_scores[2, :, 0].min() > 2 / n  # layer 2 is not edited: token 0 is a sink there
