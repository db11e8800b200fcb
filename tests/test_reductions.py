"""The in-trace reductions against brute-force formulas on random tensors (no model needed)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sinkwidgets.tracing import eager as tracing  # the eager executor chunks full maps
from sinkwidgets.tracing import reduce_attention, reduce_residual, reductions

pytestmark = pytest.mark.unit  # no model, browser or notebook


def _causal_maps(B, H, T, pad, seed=0):
    """Random causal attention with left padding ``pad[b]`` (padded keys masked, padded rows uniform over 0..t)."""
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(B, H, T, T, generator=g) * 3
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    A = torch.empty(B, H, T, T)
    for b in range(B):
        keymask = torch.arange(T) >= pad[b]
        m = causal & keymask[None, :]
        m[: pad[b]] = causal[: pad[b]]  # padding rows: anything causal (they are ignored)
        A[b] = torch.softmax(s[b].masked_fill(~m, float("-inf")), -1)
    qmask = torch.stack([(torch.arange(T) >= p).float() for p in pad])
    first = torch.tensor(pad)
    n_real = torch.tensor([T - p for p in pad])
    return A, qmask, first, n_real


def _brute(A, b, pad):
    """alpha, ftm, entropy of prompt ``b`` from its real block only (numpy, float64)."""
    a = A[b, :, pad:, pad:].double().numpy()  # [H, n, n]
    n = a.shape[-1]
    alpha = a.sum(1) / (n - np.arange(n))[None, :]
    ftm = a[:, 1:, 0].mean(1) if n > 1 else np.zeros(a.shape[0])
    with np.errstate(divide="ignore", invalid="ignore"):
        ent = -np.where(a > 0, a * np.log(a), 0.0).sum(-1).mean(-1)
    return alpha, ftm, ent


@pytest.mark.parametrize("T", [5, 130, 300])
def test_causal_reduction_matches_brute_force(T):
    pad = [0, 3]
    A, qmask, first, n_real = _causal_maps(2, 3, T, pad)
    alpha, ftm, ent = reduce_attention(A, qmask, first, n_real, causal=True)
    for b, p in enumerate(pad):
        wa, wf, we = _brute(A, b, p)
        np.testing.assert_allclose(alpha[b, :, p:].numpy(), wa, atol=1e-5)
        np.testing.assert_allclose(ftm[b].numpy(), wf, atol=1e-5)
        np.testing.assert_allclose(ent[b].numpy(), we, atol=1e-4)


def test_causal_chunking_skips_only_zeros(monkeypatch):
    """Chunk size does not change the result: the skipped upper triangle holds exact zeros."""
    A, qmask, first, n_real = _causal_maps(1, 2, 200, [0])
    ref = reduce_attention(A, qmask, first, n_real, causal=False)  # the non-causal path reads every key
    # non-causal counts differ (n instead of T - k): compare the pieces that do not depend on them
    for c in (1, 7, 64, 512):
        monkeypatch.setattr(tracing, "CAUSAL_QUERY_CHUNK", c)
        got = reduce_attention(A, qmask, first, n_real, causal=True)
        np.testing.assert_allclose(got[1].numpy(), ref[1].numpy(), atol=1e-6)  # first-token mass
        np.testing.assert_allclose(got[2].numpy(), ref[2].numpy(), atol=1e-5)  # entropy
        n = 200
        np.testing.assert_allclose((got[0] * (n - torch.arange(n))).numpy(), (ref[0] * n).numpy(), atol=1e-4)


def _brute_residual(h, qmask, k):
    B, T, d = h.shape
    absd = h.abs().reshape(B, T * d)
    real = qmask.bool()[:, :, None].expand(B, T, d).reshape(B, T * d)
    _, idx = absd.masked_fill(~real, -1.0).topk(min(k, T * d), dim=-1)
    meds = [float(np.median(absd[b][real[b]].numpy())) for b in range(B)]
    return idx, meds


@pytest.mark.parametrize("B,T,d", [(1, 1, 3), (3, 7, 4), (2, 60, 16), (2, 400, 96)])
def test_residual_top_activations_exact(B, T, d):
    g = torch.Generator().manual_seed(T)
    h = torch.randn(B, T, d, generator=g) * torch.rand(B, T, 1, generator=g) * 10
    h[0, -1, 2] = 5000.0  # a massive activation
    qmask = torch.ones(B, T)
    qmask[-1, : T // 3] = 0
    norms, vals, idx, med = reduce_residual(h, qmask, 8)
    want_idx, want_med = _brute_residual(h, qmask, 8)
    assert torch.equal(idx, want_idx)
    assert float(vals[0, 0]) == 5000.0
    np.testing.assert_allclose(norms.numpy(), h.norm(dim=-1).numpy(), rtol=1e-6)
    # small prompts: the exact median (numpy's mean-of-middles vs torch's lower middle: within one gap)
    for b in range(B):
        assert abs(float(med[b]) - want_med[b]) <= 0.05 * want_med[b] + 1e-6


def _residual_with_abs_array(h, qmask, k):
    """The residual summary as first written (a full [B, T, d] array of |h|): the reference for the one-pass form."""
    h = h.float()
    B, T, d = h.shape
    absd = h.abs()
    qb = qmask.bool()
    flat = absd.reshape(B, T * d)
    k = min(k, T * d)
    kt = min(k, T)
    _, tok = absd.amax(-1).masked_fill(~qb, -1.0).topk(kt, dim=-1)
    cand = torch.gather(absd, 1, tok[:, :, None].expand(B, kt, d)).masked_fill(
        ~torch.gather(qb, 1, tok)[:, :, None], -1.0)
    _, j = cand.reshape(B, kt * d).topk(k, dim=-1)
    idx = torch.gather(tok, 1, j // d) * d + j % d
    vals = h.reshape(B, T * d).gather(1, idx)
    meds = []
    for b in range(B):
        x = flat[b] if bool(qb[b].all()) else absd[b][qb[b]].reshape(-1)
        x = x[:: -(-x.numel() // reductions.MEDIAN_SAMPLES)] if x.numel() > reductions.MEDIAN_SAMPLES else x
        meds.append(x.median() if x.numel() else torch.full((), float("nan")))
    return h.norm(dim=-1), vals, idx, torch.stack(meds)


@pytest.mark.unit
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("B,T,d,k", [(1, 1, 3, 8), (3, 7, 4, 5), (2, 300, 96, 20), (2, 700, 64, 20)])
def test_residual_summary_without_an_abs_array_is_the_same_bit_for_bit(B, T, d, k, dtype):
    """Token maxima of |h| as max(max h, −min h) and |h| only on the gathered candidates and median samples: the
    same norms, values, indices and medians as from a full array of |h| (ties, negative giants, padding, NaN)."""
    g = torch.Generator().manual_seed(B * T + d)
    h = (torch.randn(B, T, d, generator=g) * torch.rand(B, T, 1, generator=g) * 10).round().to(dtype)  # many ties
    h[0, -1, 1] = -7000.0  # a massive negative activation
    qmask = torch.ones(B, T)
    qmask[-1, : T // 3] = 0
    for case in ("plain", "nan"):
        if case == "nan" and T > 2:
            h[0, T // 2, 0] = float("nan")
        got, want = reduce_residual(h, qmask, k), _residual_with_abs_array(h, qmask, k)
        for name, a, b in zip(("norms", "vals", "idx", "med"), got, want, strict=True):
            assert torch.equal(a.isnan(), b.isnan()) if a.is_floating_point() else True, (case, name)
            assert torch.equal(torch.nan_to_num(a), torch.nan_to_num(b)) if a.is_floating_point() else torch.equal(
                a, b), (case, name)


def test_residual_median_sampled_within_one_percent_and_padding_invariant(monkeypatch):
    monkeypatch.setattr(reductions, "MEDIAN_SAMPLES", 4096)
    g = torch.Generator().manual_seed(1)
    T, d = 500, 64  # 32000 real entries > 4096: sampled
    h = torch.randn(1, T, d, generator=g).exp()  # skewed, like |h|
    _, _, _, med = reduce_residual(h, torch.ones(1, T), 8)
    exact = float(h.abs().median())
    assert abs(float(med[0]) - exact) < 0.01 * exact * 3  # 4096 samples: a few % at most; 32768 in use
    # the same prompt left-padded in a batch samples the same entries
    hp = torch.cat([torch.full((1, 37, d), 123.0), h], dim=1)
    qp = torch.cat([torch.zeros(1, 37), torch.ones(1, T)], dim=1)
    _, _, _, medp = reduce_residual(hp, qp, 8)
    assert float(medp[0]) == float(med[0])


@pytest.mark.unit
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("n", [1, 2, 3, 10, 4097, 32768])
def test_lower_median_is_torch_median_exactly(n, dtype):
    """The residual summary's median selects with numpy on the CPU: the same element as ``torch.median`` (the
    lower middle value, ties and even counts included), the same dtype, and NaN when a NaN is present."""
    torch.manual_seed(n)
    x = (torch.randn(n) * 3).to(dtype)
    x[::7] = x[0]  # ties
    got, want = reductions.lower_median(x), x.median()
    assert got.dtype == want.dtype and got.shape == () and torch.equal(got, want)
    for at in (0, n // 2, n - 1):  # a NaN anywhere (first, middle, last) makes the median NaN
        y = x.clone()
        y[at] = float("nan")
        assert torch.isnan(reductions.lower_median(y)) and torch.isnan(y.median())


@pytest.mark.unit
@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_zeros_from_calloc_are_zero_writable_and_fresh(dtype):
    """The map buffer's allocation (numpy's calloc on the CPU): all zeros, the asked dtype and shape, writable,
    and a new block each call (a trace's result never shares memory with the next one's)."""
    a = reductions.zeros((2, 3, 300, 300), dtype, "cpu")
    assert a.dtype == getattr(torch, dtype) and a.shape == (2, 3, 300, 300) and not bool(a.any())
    a[1, 2, 299, 299] = 1.5
    b = reductions.zeros((2, 3, 300, 300), dtype, "cpu")
    assert not bool(b.any()) and float(a[1, 2, 299, 299]) == 1.5 and a.data_ptr() != b.data_ptr()
