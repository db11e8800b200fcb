"""The chunked path: an SDPA forward pass, with attention probabilities recomputed from q and k in query chunks.

Eager attention materialises every layer's ``[B, H, T, T]`` probabilities; at long context that, not the
weights, dominates memory. Here the model runs its fast attention (SDPA) and, inside the nnsight trace, each
layer's post-RoPE queries and keys (``self_attn.source.apply_rotary_pos_emb_0.output``: for Gemma 3 that is
after its q/k RMS norms) are turned back into probabilities a few query rows at a time::

    P[:, :, s:s+c] = softmax(q[:, :, s:s+c] @ kᵀ · scale  [tanh soft-cap]  + causal / sliding-window / padding mask)

and every chunk is reduced at once by the same accumulation the eager path uses
(:func:`sinkwidgets.tracing.reduce_attention_chunks`). The largest temporary is one chunk,
``[B, H, c, T]`` float32 with ``c`` chosen to fit :data:`CHUNK_BYTES`, so memory stays close to a plain forward.

The same traced block runs remotely (``trace(..., remote=True)``): NDIF serves models with their default
attention implementation, under which eager probabilities do not exist, so remote traces always use this path.
Everything the block calls is plain torch and is shipped to the server by value (see :mod:`sinkwidgets.remote`).

Supported: Llama-style decoders whose attention calls ``apply_rotary_pos_emb`` (Llama/SmolLM2, Mistral, Qwen2/3,
Gemma 2/3, OLMo, Phi-3, ...). A first chunked trace checks itself against eager attention on a short probe.
"""

from __future__ import annotations

import time
from typing import Any

import torch

from .tracing import reduce_attention_chunks, reduce_residual

#: Bytes of float32 scores per query chunk (``B * H * c * T * 4``); ``c`` is derived from it per layer.
CHUNK_BYTES = 16 * 2**20
#: Bounds on the number of query rows per chunk.
MIN_CHUNK, MAX_CHUNK = 16, 512


class ChunkedUnsupportedError(ValueError):
    """The chunked path cannot recompute this model's attention (no rotary q/k to capture, or a mismatch)."""


# ----------------------------------------------------------------------------- in-trace kernels (torch only)
def chunk_rows(B: int, H: int, T: int, budget: int = CHUNK_BYTES) -> int:
    """Query rows per chunk so that one ``[B, H, c, T]`` float32 block fits in ``budget`` bytes."""
    c = budget // max(1, B * H * T * 4)
    return int(max(MIN_CHUNK, min(MAX_CHUNK, c)))


def attention_chunks(q, k, qmask, scale: float, n_rep: int, window=None, softcap=None, rows: int = 128,
                     keep_heads=None, kept=None, map_dtype=torch.float16):
    """Yield ``(start, P, scratch)``: probabilities ``P [B, H, c, w]`` (float32) for query rows ``start:start+c``
    over keys ``0..w-1`` with ``w = start + c`` (causal: later keys get exactly zero and are not computed).

    ``q [B, H, T, D]`` and ``k [B, KV, T, D]`` are post-RoPE (as the attention module uses them), ``qmask [B, T]``
    marks real tokens (left padding 0). Masking matches Hugging Face eager attention: causal, keys outside a
    sliding ``window`` (``j <= i - window``) and padding keys are excluded; pad query rows are finite and
    ignored by the reductions. With ``keep_heads`` those heads' rows are appended to ``kept`` (``map_dtype``).

    ``P`` and ``scratch`` (same size, for the consumer's temporaries) are views into one workspace that is
    reused for every chunk: consume a chunk before asking for the next. The workspace is a single allocation
    (above glibc's 32 MiB dynamic mmap ceiling when it is large), so it goes back to the OS when freed instead
    of fragmenting the heap: without this, peak RSS grew by ~35 % at T = 2048.
    """
    with torch.autocast(device_type=q.device.type, enabled=False):  # NDIF runs requests under bf16 autocast
        B, H, T, D = q.shape
        KV = k.shape[1]
        block = B * H * rows * T
        need = 2 * block + B * H * T * D
        if q.device.type == "cpu" and need * 4 > 4 * 2**20:
            need = max(need, (33 * 2**20) // 4)
        ws = torch.empty(need, dtype=torch.float32, device=q.device)
        kf = ws[2 * block : 2 * block + B * H * T * D].view(B, KV, n_rep, T, D)
        kf.copy_(k[:, :, None].expand(B, KV, n_rep, T, D))  # GQA: query head h reads key head h // n_rep
        kt = kf.view(B, H, T, D).transpose(-1, -2)  # [B, H, D, T]
        qf = q if q.dtype == torch.float32 else q.float()
        keyok = qmask.to(q.device).bool()[:, None, None, :]  # [B, 1, 1, T]
        j = torch.arange(T, device=q.device)[None, :]
        neg = torch.finfo(torch.float32).min
        for s in range(0, T, rows):
            e = min(s + rows, T)
            c, w = e - s, e  # causal: keys after the chunk's last query get nothing, so they are not computed
            probs = ws[: B * H * c * w].view(B, H, c, w)
            torch.matmul(qf[:, :, s:e], kt[..., :w], out=probs)
            probs.mul_(scale)
            if softcap:
                probs.div_(softcap).tanh_().mul_(softcap)
            i = torch.arange(s, e, device=q.device)[:, None]
            allowed = j[:, :w] <= i
            if window:
                allowed = allowed & (j[:, :w] > i - window)
            probs.masked_fill_(~(allowed[None, None] & keyok[..., :w]), neg)
            probs.sub_(probs.amax(dim=-1, keepdim=True)).exp_()  # softmax, in place
            probs.div_(probs.sum(dim=-1, keepdim=True))
            if keep_heads is not None:
                kept.append(torch.nn.functional.pad(probs[:, keep_heads].to(map_dtype), (0, T - w)))
            yield s, probs, ws[block : block + B * H * c * w].view(B, H, c, w)


def reduce_qk(q, k, qmask, first, n_real, scale: float, n_rep: int, window=None, softcap=None, causal: bool = True,
              keep_heads=None, map_dtype=torch.float16, budget: int = CHUNK_BYTES):
    """α ``[B, H, T]``, first-token mass ``[B, H]``, entropy ``[B, H]`` (and the kept heads' maps) from q, k.

    Same outputs and conventions as :func:`sinkwidgets.tracing.reduce_attention` on the eager map.
    """
    B, H, T, _ = q.shape
    kept = [] if keep_heads is not None else None
    chunks = attention_chunks(q, k, qmask, scale, n_rep, window, softcap, chunk_rows(B, H, T, budget),
                              keep_heads, kept, map_dtype)
    alpha, ftm, ent = reduce_attention_chunks(chunks, B, H, T, qmask, first, n_real, causal)
    maps = torch.cat(kept, dim=2) if keep_heads is not None else None  # [B, len(keep_heads), T, T]
    return alpha, ftm, ent, maps


def head_contributions(x, weight, n_heads: int):
    """Per-head contributions to the residual, ``[B, H, T, d]``: the o_proj input split per head times ``W_O``."""
    with torch.autocast(device_type=x.device.type, enabled=False):
        B, T, _ = x.shape
        d = weight.shape[0]
        xh = x.float().reshape(B, T, n_heads, -1)
        w = weight.float().reshape(d, n_heads, -1)
        return torch.einsum("bthk,dhk->bhtd", xh, w)


# ----------------------------------------------------------------------------- plan + traced block
def layer_plan(model, info) -> dict[str, Any]:
    """Envoys and per-layer attention parameters for the chunked block (read from the local or meta module)."""
    from .models.adapters import get_path

    ad = info.adapter
    if not ad.causal or ad.o_proj_layout != "linear":
        raise ChunkedUnsupportedError(
            f"the chunked path needs a rotary (Llama-style) decoder; {info.name!r} ({info.architecture}) is not one. "
            "Use method='eager' (local only)."
        )
    layers = get_path(model, ad.layers)
    L = len(layers)
    attns, oprojs, params = [], [], []
    for li in range(L):
        attn = get_path(layers[li], ad.attn)
        mod = attn._module if hasattr(attn, "_module") else attn
        try:
            src = attn.source
            _ = src.apply_rotary_pos_emb_0
        except Exception as exc:  # noqa: BLE001
            raise ChunkedUnsupportedError(
                f"{info.name!r} ({info.architecture}): layer {li}'s attention does not call apply_rotary_pos_emb, "
                f"so its post-RoPE q/k cannot be captured ({type(exc).__name__}); use method='eager' (local only)."
            ) from exc
        cfg = getattr(mod, "config", None)
        head_dim = getattr(mod, "head_dim", info.head_dim)
        scale = getattr(mod, "scaling", None) or head_dim**-0.5
        window = getattr(mod, "sliding_window", None)
        if window is None and info.family == "mistral":
            window = getattr(cfg, "sliding_window", None)
        softcap = getattr(mod, "attn_logit_softcapping", None) if info.family == "gemma2" else None
        n_rep = getattr(mod, "num_key_value_groups", None) or info.n_heads // info.n_kv_heads
        attns.append(attn)
        oprojs.append(get_path(layers[li], ad.o_proj))
        params.append((float(scale), int(n_rep), int(window) if window else None, float(softcap) if softcap else None))
    return {"layers": list(layers[li] for li in range(L)), "attns": attns, "oprojs": oprojs, "params": params}


def traced_block(model, inputs, fwd_kwargs, layers, attns, oprojs, params, qmask, first, n_real, keep, ho_layers,
                 n_heads, map_dtype, top_k, causal, budget, backend):
    """Run the chunked block once (locally, or on a server through ``backend``) → dict of stacked tensors.

    Everything referenced inside the ``with`` is a tensor, a plain Python value, an envoy, or a torch-only
    function from this module / :mod:`sinkwidgets.tracing`, so the block can be shipped to NDIF. Results are
    stacked inside the trace into a few tensors bound to top-level names and ``.save()``d: those are what an
    NDIF server sends back.
    """
    alphas, ftms, ents, norms, vals, idxs, meds, maps, hos = [], [], [], [], [], [], [], [], []
    with torch.no_grad(), model.trace(inputs, backend=backend, **fwd_kwargs):
        for li in range(len(layers)):
            q, k = attns[li].source.apply_rotary_pos_emb_0.output
            scale, n_rep, window, softcap = params[li]
            a, f, e, m = reduce_qk(q, k, qmask, first, n_real, scale, n_rep, window, softcap, causal,
                                   keep.get(li), map_dtype, budget)
            alphas.append(a)
            ftms.append(f)
            ents.append(e)
            if m is not None:
                maps.append(m)
            if li in ho_layers:
                hos.append(head_contributions(oprojs[li].input, oprojs[li].weight, n_heads))
            h = layers[li].output
            if isinstance(h, tuple):
                h = h[0]
            nrm, val, idx, med = reduce_residual(h, qmask.to(h.device), top_k)
            norms.append(nrm)
            vals.append(val)
            idxs.append(idx)
            meds.append(med)
        sw_alpha = torch.stack(alphas).cpu().save()
        sw_ftm = torch.stack(ftms).cpu().save()
        sw_ent = torch.stack(ents).cpu().save()
        sw_norms = torch.stack(norms).float().cpu().save()
        sw_vals = torch.stack(vals).float().cpu().save()
        sw_idx = torch.stack(idxs).cpu().save()
        sw_med = torch.stack(meds).float().cpu().save()
        sw_maps = (torch.cat(maps, dim=1) if maps else torch.zeros(0)).cpu().save()
        sw_ho = (torch.stack(hos) if hos else torch.zeros(0)).cpu().save()
    return {"alpha": sw_alpha, "ftm": sw_ftm, "ent": sw_ent, "norms": sw_norms, "vals": sw_vals, "idx": sw_idx,
            "med": sw_med, "maps": sw_maps, "ho": sw_ho}


def run_chunked(model, info, inputs, qmask, first, n_real, maps_sel, ho_layers, map_dtype, top_k, remote,
                fwd_kwargs, budget: int = CHUNK_BYTES):
    """The chunked trace of one batch → ``(per_layer, maps_out, ho_out, meta)`` in :func:`tracing._trace_batch`'s
    layout, with ``ho_out[li]`` already the per-head contributions ``[B, H, T, d]``."""
    plan = layer_plan(model, info)
    L = len(plan["layers"])
    keep = {li: list(h) for li, h in maps_sel.items()}
    mdt = getattr(torch, map_dtype)
    meta: dict[str, Any] = {"method": "chunked"}
    backend = None
    session = None
    if remote:
        from .remote import RemoteSession

        B, T = inputs["input_ids"].shape
        session = RemoteSession(model, info, remote)
        session.check_result_size(B=B, T=T, maps_sel=maps_sel, ho_layers=ho_layers, map_dtype=map_dtype, top_k=top_k)
        backend = session.backend()
    hf = getattr(model, "_module", None)
    switch = not remote and hf is not None and getattr(hf.config, "_attn_implementation", None) != "sdpa"
    prev = hf.config._attn_implementation if switch else None
    if switch:
        hf.set_attn_implementation("sdpa")
    try:
        if session is not None:
            with session.guard():
                out = traced_block(model, inputs, fwd_kwargs, plan["layers"], plan["attns"], plan["oprojs"],
                                   plan["params"], qmask, first, n_real, keep, list(ho_layers), info.n_heads, mdt,
                                   top_k, info.causal, budget, backend)
            meta.update(session.meta())
        else:
            out = traced_block(model, inputs, fwd_kwargs, plan["layers"], plan["attns"], plan["oprojs"],
                               plan["params"], qmask, first, n_real, keep, list(ho_layers), info.n_heads, mdt,
                               top_k, info.causal, budget, backend)
    finally:
        if switch:
            hf.set_attn_implementation(prev)
    per_layer = [tuple(out[n][li] for n in ("alpha", "ftm", "ent", "norms", "vals", "idx", "med")) for li in range(L)]
    maps_out, o = {}, 0
    for li in sorted(keep):
        n = len(keep[li])
        maps_out[li] = out["maps"][:, o : o + n]
        o += n
    ho_out = {li: out["ho"][i] for i, li in enumerate(ho_layers)}
    return per_layer, maps_out, ho_out, meta


def check_against_eager(model, n_tokens: int = 12, atol: float = 1e-4) -> float:
    """Trace a short probe both ways and return the largest difference of α; raise if above ``atol``."""
    from .tracing import trace

    text = "The quick brown fox jumps over the lazy dog while the cat sleeps near the warm fire place."
    t0 = time.perf_counter()
    a = trace(model, text, max_tokens=n_tokens, method="eager")
    b = trace(model, text, max_tokens=n_tokens, method="chunked")
    diff = float(abs(a.sink_scores - b.sink_scores).max())
    if not diff <= atol:
        raise ChunkedUnsupportedError(
            f"chunked attention of {model.sinkwidgets.name!r} differs from eager by {diff:.2e} (> {atol:g}) on a "
            f"{n_tokens}-token probe ({time.perf_counter() - t0:.1f} s); use method='eager'"
        )
    return diff
