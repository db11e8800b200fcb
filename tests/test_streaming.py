"""sinkwidgets.streaming on SmolLM2: the one-pass banded attention against token-by-token streaming and a 4-D mask,
and the StreamingLLM bands of ../shared/design/streaming-pilot.md on the stdlib documentation text (N = 1024)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.models


@pytest.fixture(scope="module")
def doc_ids(smollm2):
    from sinkwidgets.streaming import _tokens, stdlib_docs_text

    return _tokens(smollm2, stdlib_docs_text(40_000), None, 1024)


def rotate(k, shift, rot):
    """Re-rotate RoPE'd keys ``k [B, KV, S, D]`` by ``shift`` positions (HF rotate_half convention)."""
    cos, sin = rot(k, torch.full((1, k.shape[2]), shift))
    x1, x2 = k[..., : k.shape[-1] // 2], k[..., k.shape[-1] // 2:]
    return k * cos[:, None] + torch.cat((-x2, x1), -1) * sin[:, None]


def stepwise_streaming(hf, ids, window, n_sink):
    """StreamingLLM token by token with an HF KV cache: the cache keeps the first ``n_sink`` tokens and the last
    ``window - n_sink``; each new token gets position = its index in the cache; when a recent key is evicted, the
    recent keys after it are re-rotated one position back (so every key sits at its cache position)."""
    from transformers import DynamicCache

    cache = DynamicCache(config=hf.config)
    rot = hf.model.rotary_emb
    nll = []
    prev = hf.config._attn_implementation
    hf.set_attn_implementation("sdpa")
    try:
        with torch.no_grad():
            for t in range(len(ids) - 1):
                pos = min(t, window - 1)
                out = hf(input_ids=torch.tensor([[ids[t]]]), past_key_values=cache, use_cache=True,
                         position_ids=torch.tensor([[pos]]), cache_position=torch.tensor([pos]))
                cache = out.past_key_values
                nll.append(float(torch.nn.functional.cross_entropy(out.logits[0, -1].float()[None],
                                                                    torch.tensor([ids[t + 1]]))))
                for layer in cache.layers:
                    if layer.keys.shape[-2] == window:  # full: evict the oldest recent token (index n_sink)
                        k, v = layer.keys, layer.values
                        layer.keys = torch.cat([k[:, :, :n_sink], rotate(k[:, :, n_sink + 1:], -1, rot)], dim=2)
                        layer.values = torch.cat([v[:, :, :n_sink], v[:, :, n_sink + 1:]], dim=2)
    finally:
        hf.set_attn_implementation(prev)
    return np.array(nll)


@pytest.mark.parametrize("n_sink", [0, 4])
def test_exact_equals_token_by_token_streaming(smollm2, doc_ids, n_sink):
    from sinkwidgets.streaming import _streamed

    hf = smollm2._module
    ids = doc_ids[:56]
    W = 16
    ref = stepwise_streaming(hf, ids, W, n_sink)
    one_pass = _streamed(hf, ids, n_sink, W, True)
    np.testing.assert_allclose(one_pass, ref, atol=5e-4)  # measured: max 7.8e-5 (k=0), 2.1e-5 (k=4) nats
    # and the positions matter: the mask method (original positions) differs from the reference after t = W
    if n_sink:
        masked = _streamed(hf, ids, n_sink, W, False)
        np.testing.assert_allclose(masked[:W], ref[:W], atol=5e-4)
        assert np.abs(masked[W:] - ref[W:]).max() > 1e-3


def test_mask_method_equals_4d_mask_forward(smollm2, doc_ids):
    from sinkwidgets.streaming import _streamed

    hf = smollm2._module
    ids = doc_ids[:80]
    T, W, k = len(ids), 20, 2
    t = torch.arange(T)[:, None]
    j = torch.arange(T)[None]
    allowed = (j <= t) & ((j < k) | (t - j < W - k))
    mask = torch.zeros(1, 1, T, T).masked_fill(~allowed, torch.finfo(torch.float32).min)
    prev = hf.config._attn_implementation
    hf.set_attn_implementation("eager")
    try:
        with torch.no_grad():
            logits = hf(input_ids=torch.tensor([ids]), attention_mask=mask).logits[0]
    finally:
        hf.set_attn_implementation(prev)
    ref = torch.nn.functional.cross_entropy(logits[:-1], torch.tensor(ids[1:]), reduction="none").numpy()
    np.testing.assert_allclose(_streamed(hf, ids, k, W, False), ref, atol=2e-4)
    assert hf.config._attn_implementation == prev  # the banded attention is uninstalled afterwards


@pytest.mark.slow  # 8 forward passes at N = 1024: ~70 s on a quiet 2-core machine, 4-5 min under load
def test_streaming_bands(smollm2, doc_ids):
    """Pilot bands (N = 1024 here): window-only >= 1.4x sink+window (1 or 4 sinks) at W = 128 and 256;
    sink+window <= 1.35x dense at W = 256; exact and mask within 2%; the loss jumps after t = W."""
    from sinkwidgets.streaming import StreamingResult, _dense, _ppl, _streamed

    hf = smollm2._module
    ids = doc_ids
    assert len(ids) == 1024
    dense_nll = _dense(hf, ids)  # one full forward, used for the dense perplexity and the jump
    dense = _ppl(dense_nll)
    ppl = {}
    for W, k, m in [(128, 0, "mask"), (128, 1, "mask"), (128, 4, "exact"), (256, 0, "mask"), (256, 1, "exact"),
                    (256, 1, "mask"), (256, 4, "mask")]:
        a = _streamed(hf, ids, k, W, m == "exact")
        ppl[(W, k, m)] = _ppl(a)
        if (W, k) == (128, 0):
            window128 = a
    for W, sinks in [(128, [(1, "mask"), (4, "exact")]), (256, [(1, "exact"), (1, "mask"), (4, "mask")])]:
        for k, m in sinks:
            assert ppl[(W, 0, "mask")] / ppl[(W, k, m)] >= 1.4, (W, k, m, ppl)
    for k, m in [(1, "exact"), (1, "mask"), (4, "mask")]:
        assert ppl[(256, k, m)] / dense <= 1.35, (k, m, ppl, dense)
        assert ppl[(256, k, m)] >= dense * 0.99  # never better than full attention (within noise)
    assert abs(ppl[(256, 1, "exact")] / ppl[(256, 1, "mask")] - 1) <= 0.02
    r = StreamingResult({"dense": dense_nll, "window": window128}, 128, 0, "mask")
    assert r.jump("window") > 0.3  # pilot: +0.7 to +1.5 nats in the first 32 positions after t = W


def test_streaming_ppl_api_and_errors(smollm2, doc_ids):
    from sinkwidgets.streaming import StreamingError, streaming_ppl

    text = smollm2.tokenizer.decode(doc_ids[:300])
    r = streaming_ppl(smollm2, text, window=64, n_sink=1, method="mask", max_tokens=256, recompute=8)
    assert set(r.nll) == {"dense", "window", "sink1 mask"}
    assert all(len(a) == 255 for a in r.nll.values())
    assert len(r.recompute["positions"]) >= 4 and (r.recompute["positions"] >= 64).all()
    assert "sink1 mask" in repr(r) and "recompute" in repr(r)
    assert r.chart().to_dict()["layer"][0]["mark"]["type"] == "line"
    with pytest.raises(StreamingError, match="method="):
        streaming_ppl(smollm2, text, window=64, method="fast", max_tokens=256)
    with pytest.raises(StreamingError, match="n_sink"):
        streaming_ppl(smollm2, text, window=64, n_sink=64, max_tokens=256)
    with pytest.raises(StreamingError, match="nothing leaves the cache"):
        streaming_ppl(smollm2, "A short text.", window=64)


def test_exact_method_is_refused_outside_its_families_in_ppl_and_sweep(gemma3, smollm2, doc_ids):
    """Gemma-3 is not a rotate-half family the 'exact' re-rotation supports: both entry points say so before any
    forward pass (the sweep used to run and return wrong numbers)."""
    from sinkwidgets.streaming import StreamingError, streaming_ppl, streaming_sweep

    text = smollm2.tokenizer.decode(doc_ids[:400])
    for call in (lambda: streaming_ppl(gemma3, text, window=64, n_sink=1, method="exact", max_tokens=256),
                 lambda: streaming_sweep(gemma3, text, windows=(64,), n_sinks=(1,), methods=("exact",),
                                         max_tokens=256)):
        with pytest.raises(StreamingError, match="supports rotary families.*gemma3.*method='mask'"):
            call()


def test_streaming_gives_the_same_results_with_options_or_keywords(smollm2, doc_ids):
    """streaming_ppl and streaming_sweep read add_bos / max_tokens from options= as from their keywords; remote
    options are refused (the banded attention is local) and an option given twice is an error."""
    from sinkwidgets.streaming import StreamingError, streaming_ppl, streaming_sweep
    from sinkwidgets.tracing.options import RunOptions

    text = smollm2.tokenizer.decode(doc_ids[:300])
    kw = dict(window=64, n_sink=1, method="exact", recompute=4)
    a = streaming_ppl(smollm2, text, **kw, max_tokens=200, add_bos=True)
    b = streaming_ppl(smollm2, text, **kw, options=RunOptions(max_tokens=200, add_bos=True, batch_size=3,
                                                             progress=False))
    assert a.meta["n_tokens"] == b.meta["n_tokens"] == 200
    assert set(a.nll) == set(b.nll) == {"dense", "window", "sink1 exact"}
    for name in a.nll:
        np.testing.assert_array_equal(a.nll[name], b.nll[name], err_msg=name)
    np.testing.assert_array_equal(a.recompute["positions"], b.recompute["positions"])
    np.testing.assert_allclose(a.recompute["nll"], b.recompute["nll"], atol=1e-5)  # batches of 8 vs 3
    sa = streaming_sweep(smollm2, text, windows=(64,), n_sinks=(0, 1), max_tokens=150)
    sb = streaming_sweep(smollm2, text, windows=(64,), n_sinks=(0, 1), options=RunOptions(max_tokens=150,
                                                                                         progress=False))
    assert sa.rows() == sb.rows() and sa.meta["n_tokens"] == 150
    with pytest.raises(StreamingError, match=r"streaming_ppl runs locally only, got options=RunOptions\(remote=True\)"):
        streaming_ppl(smollm2, text, **kw, options=RunOptions(remote=True))
    with pytest.raises(ValueError, match="max_tokens is given twice"):
        streaming_sweep(smollm2, text, windows=(64,), max_tokens=100, options=RunOptions(max_tokens=150))
    with pytest.raises(ValueError, match="max_tokens must be an integer >= 2 or None, got 1"):
        streaming_ppl(smollm2, text, **kw, max_tokens=1)
