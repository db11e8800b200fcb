"""The chunked path (SDPA forward + probabilities recomputed from q, k in query chunks) equals eager attention."""

from __future__ import annotations

import numpy as np
import pytest
import torch

GPL = "/usr/share/common-licenses/GPL-3"
SUMMARIES = ("sink_scores", "first_token_mass", "entropy", "resid_norms", "top_activations", "median_abs_activation",
             "maps", "head_outputs")


def long_text() -> str:
    try:
        return " ".join(open(GPL).read().split())
    except OSError:
        from .conftest import LONG_TEXT

        return LONG_TEXT * 20


def assert_same(a, b, tol):
    for f in SUMMARIES:
        x, y = getattr(a, f), getattr(b, f)
        assert (x is None) == (y is None), f
        if x is None:
            continue
        assert x.shape == y.shape, f
        if f in ("resid_norms", "top_activations", "median_abs_activation"):
            # residual-stream values reach ~1e3 at the sink token: SDPA and eager differ in the last bits
            np.testing.assert_allclose(y, x, rtol=tol, atol=tol * np.abs(x).max(), err_msg=f)
        else:
            np.testing.assert_allclose(y, x, rtol=0, atol=tol, err_msg=f)
    assert a.tokens == b.tokens


# ----------------------------------------------------------------------------- kernel (no model needed)
def reference_probs(q, k, qmask, scale, n_rep, window=None, softcap=None):
    """Full [B, H, T, T] probabilities, written the plain way (what eager attention computes)."""
    B, H, T, D = q.shape
    k = k.repeat_interleave(n_rep, dim=1)
    s = (q @ k.transpose(-1, -2)) * scale
    if softcap:
        s = torch.tanh(s / softcap) * softcap
    i = torch.arange(T)[:, None]
    j = torch.arange(T)[None, :]
    ok = j <= i
    if window:
        ok &= j > i - window
    ok = ok[None, None] & qmask.bool()[:, None, None, :]
    s = s.masked_fill(~ok, torch.finfo(s.dtype).min)
    return s.softmax(-1)


@pytest.mark.unit
@pytest.mark.parametrize("window,softcap", [(None, None), (5, None), (None, 30.0), (7, 50.0)])
def test_kernel_matches_full_computation(window, softcap):
    from sinkwidgets.tracing import reduce_attention
    from sinkwidgets.tracing.chunked import AttentionParams, reduce_qk

    torch.manual_seed(0)
    B, H, KV, T, D = 2, 6, 2, 37, 16
    q, k = torch.randn(B, H, T, D) * 2, torch.randn(B, KV, T, D) * 2
    qmask = torch.ones(B, T, dtype=torch.long)
    qmask[1, :9] = 0  # left padding
    first = torch.tensor([0, 9])
    n_real = qmask.sum(-1)
    scale = D**-0.5
    P = reference_probs(q, k, qmask, scale, H // KV, window, softcap)
    want = reduce_attention(P, qmask, first, n_real, True)
    got = reduce_qk(q, k, AttentionParams(scale, H // KV, window, softcap), qmask=qmask, first=first, n_real=n_real,
                    causal=True, keep_heads=[1, 4], map_dtype=torch.float32,
                    budget=B * H * T * 4 * 5)  # 16-row chunks: several per call
    for w, g in zip(want, got[:3], strict=True):
        torch.testing.assert_close(g, w, rtol=0, atol=1e-6)
    real = qmask.bool()
    torch.testing.assert_close(got[3][0], P[0, [1, 4]], rtol=0, atol=1e-6)
    torch.testing.assert_close(got[3][1][:, real[1]][:, :, real[1]], P[1, [1, 4]][:, real[1]][:, :, real[1]],
                               rtol=0, atol=1e-6)
    assert torch.isfinite(got[0]).all() and torch.isfinite(got[1]).all() and torch.isfinite(got[2]).all()


@pytest.mark.unit
def test_chunk_rows_fit_the_budget():
    from sinkwidgets.tracing.chunked import MAX_CHUNK, MIN_CHUNK, chunk_rows

    assert chunk_rows(1, 9, 8192, 16 * 2**20) == 56  # 9 heads · 56 rows · 8192 keys · 4 B ≈ 16 MiB
    assert chunk_rows(1, 1, 16) == MAX_CHUNK and chunk_rows(64, 64, 2**17) == MIN_CHUNK


# ----------------------------------------------------------------------------- real models
@pytest.mark.models
def test_smollm2_chunked_equals_eager_at_512(smollm2):
    import sinkwidgets as sw

    kw = dict(max_tokens=512, keep_maps=[(5, 2), (20, 0)], keep_head_outputs=[3], map_dtype="float32")
    eager = sw.trace(smollm2, long_text(), method="eager", **kw)
    chunked = sw.trace(smollm2, long_text(), method="chunked", **kw)
    assert chunked.n_tokens == 512 and chunked.meta["method"] == "chunked" and eager.meta["method"] == "eager"
    assert_same(eager, chunked, 1e-4)
    assert smollm2._module.config._attn_implementation == "eager"  # switched back after the SDPA forward


@pytest.mark.models
def test_smollm2_chunked_padded_batch(smollm2):
    import sinkwidgets as sw

    texts = ["The cat sat on the mat.", "A much longer sentence about the old lighthouse keeper and the ships at sea."]
    kw = dict(map_dtype="float32")  # short prompts keep every map by default: compare them at full precision
    for e, c in zip(sw.trace(smollm2, texts, method="eager", **kw), sw.trace(smollm2, texts, method="chunked", **kw),
                    strict=True):
        assert_same(e, c, 1e-4)


@pytest.mark.models
@pytest.mark.slow
def test_gemma3_chunked_equals_eager_with_sliding_window(gemma3):
    """T = 640 > Gemma 3's 512-token sliding window, so the local layers' window mask is exercised."""
    import sinkwidgets as sw

    text = long_text()
    kw = dict(max_tokens=640, keep_maps=[(0, 1)], map_dtype="float32")
    eager = sw.trace(gemma3, text, method="eager", **kw)
    chunked = sw.trace(gemma3, text, method="chunked", **kw)
    assert_same(eager, chunked, 1e-4)
    assert eager.maps[0][639, :128].max() == 0.0  # keys outside the window get nothing (layer 0 is local)


@pytest.mark.models
def test_encoder_is_not_supported(minilm):
    import sinkwidgets as sw
    from sinkwidgets.tracing.chunked import ChunkedUnsupportedError

    with pytest.raises(ChunkedUnsupportedError, match="method='eager'"):
        sw.trace(minilm, "The cat sat on the mat.", method="chunked")


@pytest.mark.unit
def test_method_is_checked():
    import sinkwidgets as sw

    class Fake:
        sinkwidgets = object()

    with pytest.raises(ValueError, match="method must be 'auto', 'eager' or 'chunked'"):
        sw.trace(Fake(), "x", method="fast")


@pytest.mark.models
def test_layer_plan_reads_window_and_softcap_from_the_adapter(gemma3):
    """layer_plan has no family branches: Gemma 3's windows are what its attention modules hold, and changing the
    adapter's sources (models/adapters.py) is what changes the plan."""
    import inspect
    from dataclasses import replace

    from sinkwidgets.models.adapters import get_path
    from sinkwidgets.tracing.chunked import layer_plan

    info = gemma3.sinkwidgets
    hf = gemma3._module
    mods = [get_path(b, info.adapter.attn) for b in get_path(hf, info.adapter.layers)]
    plan = layer_plan(gemma3, info)
    assert [p[2] for p in plan.params] == [m.sliding_window for m in mods]
    assert {p[2] for p in plan.params} == {512, None} and {p[3] for p in plan.params} == {None}
    no_window = replace(info, adapter=replace(info.adapter, sliding_window=()))
    assert {p[2] for p in layer_plan(gemma3, no_window).params} == {None}
    from_config = replace(info, adapter=replace(info.adapter, sliding_window=("config.sliding_window",),
                                                softcap=("config.query_pre_attn_scalar",)))
    params = layer_plan(gemma3, from_config).params
    assert {p[2] for p in params} == {512}  # every layer, as Mistral's config window is
    assert {p[3] for p in params} == {float(hf.config.query_pre_attn_scalar)}
    body = inspect.getsource(layer_plan)
    assert not any(name in body for name in ('"mistral"', '"gemma2"', "info.family")), "facts belong in the adapter"
