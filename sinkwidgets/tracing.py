"""``trace``: run prompts through a model with nnsight and reduce attention to sink summaries *inside* the trace.

Only small tensors leave the trace: per-key sink scores ``[L, H, T]``, first-token mass and entropy
``[L, H]``, residual norms ``[L, T]`` and the top activations per layer; full ``[T, T]`` maps only for the
layers/heads that ``keep_maps`` asks for. This is what keeps memory near a plain forward pass at long
context, and what makes remote (NDIF) traces cheap to download.

Batches are left-padded; every summary is computed over real tokens only, with position ids that start at 0
at each prompt's first real token, so a prompt gives the same results alone or in a padded batch.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from .sinktrace import SinkTrace

#: Query rows reduced at once inside the trace: bounds the temporaries to [B, H, CHUNK, T] instead of
#: [B, H, T, T] (at T = 4096 on SmolLM2 a full temporary would be 600 MB per layer).
QUERY_CHUNK = 512
#: Query rows per chunk for causal models: each chunk is reduced only over the keys its queries can see
#: (``[:, :, s:s+c, :s+c]``; later keys are exactly 0), so smaller chunks skip more of the zero triangle.
#: 128 rows do ~5/8 of the full map's work at T = 512 and ~17/32 at T = 2048.
CAUSAL_QUERY_CHUNK = 128
#: The median |h| of a layer (the denominator of the massive-activation ratio) is taken over at most this many
#: real residual entries, a fixed stride through them: an exact median costs ~4 ms per layer at T = 512 on a
#: CPU (more than the rest of the residual summary), and 32768 samples put it within ~1% of the exact value.
MEDIAN_SAMPLES = 32768
#: ``method="auto"`` traces local prompts of at least this many tokens with the chunked path when the model
#: supports it (rotary decoders): the eager path holds a ``[H, T, T]`` float32 map per layer (2.4 GB for SmolLM2
#: at T = 8192), the chunked one stays near a plain forward pass.
AUTO_CHUNKED_TOKENS = 4096
#: Largest-|h| residual activations recorded per layer (massive activations, Sun et al.).
TOP_K_ACTIVATIONS = 8


#: glibc raises its mmap threshold dynamically (up to 32 MB) after large blocks are freed, so per-chunk
#: temporaries then come from the heap and fragment it. Pinning the threshold at 1 MB keeps large temporaries in
#: mmap'd memory that is returned to the OS when freed. It is applied for ``method="chunked"`` only (the
#: bounded-memory path for long prompts: peak RSS ~1.0x an SDPA forward that keeps one logit, vs up to 1.5x
#: without it at T = 4096): every large temporary then costs fresh page faults, which made the eager path
#: ~45% slower at T = 512 (1.46 vs 1.01 s) while the eager path stays within 1.06x of a plain forward's peak
#: RSS at T = 2048 without it (benchmarks/trace_cost.py, long_context.py). The setting is process-wide and stays
#: once made. Set SINKWIDGETS_NO_MALLOPT=1 to never touch the allocator.
MMAP_THRESHOLD_BYTES = 1 << 20
_MALLOPT_DONE = False


def _pin_mmap_threshold() -> None:
    global _MALLOPT_DONE
    if _MALLOPT_DONE:
        return
    _MALLOPT_DONE = True
    import os
    import sys

    if not sys.platform.startswith("linux") or os.environ.get("SINKWIDGETS_NO_MALLOPT"):
        return
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, MMAP_THRESHOLD_BYTES)  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):  # not glibc (musl, ...): nothing to tune
        pass


class TraceError(RuntimeError):
    """The model's attention could not be traced (wrong shapes, probabilities that do not sum to one)."""


# ----------------------------------------------------------------------------- tokenization
def _info(model):
    info = getattr(model, "sinkwidgets", None)
    if info is None:
        raise TypeError(
            f"trace() needs a model from sinkwidgets.load_model(), got {type(model).__name__}; "
            "e.g. model = sinkwidgets.load_model('smollm2-135m')"
        )
    return info


def tokenize(model, text: str, add_bos: bool | None) -> tuple[list[int], bool]:
    """Token ids for one prompt with explicit BOS handling → (ids, add_bos actually used).

    ``add_bos=True``: token 0 is the model's BOS-like special token (``<bos>``, ``[CLS]``), prepended if the
    tokenizer does not add it. ``False``: no leading special token. ``None``: the model's documented default
    from the registry, else the tokenizer's own behaviour.
    """
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    if not text.strip():
        raise ValueError("text is empty: pass a prompt with at least one word, e.g. trace(model, 'The cat sat.')")
    tok = model.tokenizer
    info = _info(model)
    ids = list(tok(text, add_special_tokens=True)["input_ids"])
    plain = list(tok(text, add_special_tokens=False)["input_ids"])
    specials = set(tok.all_special_ids)
    leads = bool(ids) and ids[0] in specials and (not plain or plain[0] != ids[0])
    if add_bos is None:
        add_bos = info.add_bos if info.add_bos is not None else leads
    if add_bos and not leads:
        bos = tok.bos_token_id if tok.bos_token_id is not None else tok.cls_token_id
        if bos is None:
            raise ValueError(f"add_bos=True but the tokenizer of {info.name!r} has no BOS/CLS token; use add_bos=False")
        ids = [bos] + ids
    elif not add_bos and leads:
        ids = ids[1:]
    if not ids:
        raise ValueError(f"text {text[:40]!r} produced no tokens")
    return ids, bool(add_bos)


# ----------------------------------------------------------------------------- in-trace reductions
def reduce_attention(A: torch.Tensor, qmask: torch.Tensor, first: torch.Tensor, n_real: torch.Tensor, causal: bool):
    """Reduce one layer's attention ``A [B, H, T, T]`` to ``alpha [B, H, T]``, ``ftm [B, H]``, ``ent [B, H]``.

    ``qmask [B, T]`` marks real tokens (left padding is 0), ``first [B]`` is each row's first real position,
    ``n_real [B]`` its number of real tokens. Works on query chunks so temporaries stay ``[B, H, chunk, T]``.
    """
    B, H, T, _ = A.shape
    if causal:  # keys after a chunk's last query are masked (exact zeros): leave them out of the work
        c = CAUSAL_QUERY_CHUNK
        chunks = ((s, A[:, :, s : s + c, : min(T, s + c)]) for s in range(0, T, c))
    else:
        chunks = ((s, A[:, :, s : s + QUERY_CHUNK]) for s in range(0, T, QUERY_CHUNK))
    return reduce_attention_chunks(chunks, B, H, T, qmask, first, n_real, causal)


def reduce_attention_chunks(chunks, B: int, H: int, T: int, qmask, first, n_real, causal: bool):
    """:func:`reduce_attention` over ``(start, A[:, :, start:start + c])`` query chunks, however they are made.

    The eager path slices a full map; the chunked path (:mod:`sinkwidgets.chunked`) recomputes each chunk of
    probabilities from q and k, so no ``[T, T]`` map ever exists. Both share this accumulation. A chunk may be
    narrower than ``T`` (keys ``0..w-1``; the rest are zero) and may come with a third item, a scratch tensor of
    its size for the entropy temporary (no allocation per chunk).
    """
    alpha_sum = ftm_sum = ent_sum = pos = None
    for item in chunks:
        s, Ac = item[0], item[1].float()  # [B, H, c, T]
        if alpha_sum is None:  # allocate on the device the attention lives on (remote: the server's GPU)
            dev = Ac.device
            qmask, first, n_real = qmask.to(dev), first.to(dev), n_real.to(dev)
            alpha_sum = torch.zeros(B, H, T, dtype=torch.float32, device=dev)
            ftm_sum = torch.zeros(B, H, dtype=torch.float32, device=dev)
            ent_sum = torch.zeros(B, H, dtype=torch.float32, device=dev)
            bidx = torch.arange(B, device=dev)
            pos = torch.arange(T, device=dev)
        c, w = Ac.shape[2], Ac.shape[3]  # w < T: a causal chunk may stop at its last query (later keys are 0)
        qm = qmask[:, s : s + c].float()  # [B, c]
        alpha_sum[:, :, :w] += torch.matmul(qm[:, None, None, :], Ac)[:, :, 0]  # sum over real queries
        # first-token mass: queries strictly after the first real token (rows before it are padding)
        col = Ac[bidx, :, :, first.clamp(max=w - 1)]  # [B, H, c]
        after = (pos[s : s + c][None, :] > first[:, None]).float()[:, None, :]  # [B, 1, c]
        ftm_sum += (col * after).sum(-1)
        ent = torch.special.entr(Ac, out=item[2]) if len(item) > 2 else torch.special.entr(Ac)
        ent_sum += (ent.sum(-1) * qm[:, None, :]).sum(-1)
    n = n_real.float()
    if causal:  # key k is seen by the queries t >= k: T - k of them (all real when k is real)
        counts = (T - pos).float()[None, :].expand(B, T)
    else:
        counts = n[:, None].expand(B, T)
    alpha = alpha_sum / counts[:, None, :]
    ftm = ftm_sum / (n - 1).clamp_min(1)[:, None]
    ent = ent_sum / n[:, None]
    return alpha, ftm, ent


def reduce_residual(h: torch.Tensor, qmask: torch.Tensor, k: int):
    """Residual ``h [B, T, d]`` → norms ``[B, T]``, top-|h| values/flat indices ``[B, k]``, median |h| ``[B]``.

    The median is exact up to :data:`MEDIAN_SAMPLES` real entries per prompt and otherwise taken over a fixed
    stride through them (padding excluded, so a prompt gets the same value alone or in a padded batch), the same
    on every path (eager, chunked, remote).
    """
    h = h.float()
    B, T, d = h.shape
    norms = h.norm(dim=-1)
    absd = h.abs()
    qb = qmask.bool()
    flat = absd.reshape(B, T * d)
    k = min(k, T * d)
    # The k largest entries lie in at most k tokens, all among the k tokens with the largest max |h|: a top-k
    # over [B, T] maxima, then over those tokens' [k, d] entries (13 ms -> <2 ms per layer at T = 2048).
    kt = min(k, T)
    _, tok = absd.amax(-1).masked_fill(~qb, -1.0).topk(kt, dim=-1)  # [B, kt]
    cand = torch.gather(absd, 1, tok[:, :, None].expand(B, kt, d)).masked_fill(~torch.gather(qb, 1, tok)[:, :, None], -1.0)
    _, j = cand.reshape(B, kt * d).topk(k, dim=-1)
    idx = torch.gather(tok, 1, j // d) * d + j % d  # flat index into [T * d]
    vals = h.reshape(B, T * d).gather(1, idx)
    meds = []
    for b in range(B):  # per prompt: the same real entries, hence the same samples, alone or in a padded batch
        x = flat[b] if bool(qb[b].all()) else absd[b][qb[b]].reshape(-1)  # real tokens' entries, in order
        x = x[:: -(-x.numel() // MEDIAN_SAMPLES)] if x.numel() > MEDIAN_SAMPLES else x
        meds.append(x.median() if x.numel() else torch.full((), float("nan"), device=h.device))
    return norms, vals, idx, torch.stack(meds)


# ----------------------------------------------------------------------------- public API
def _parse_keep_maps(keep_maps, L: int, H: int) -> dict[int, list[int]]:
    """→ {layer: [heads]}."""
    if keep_maps is None or keep_maps is False:
        return {}
    if keep_maps is True or keep_maps == "all":
        return {l: list(range(H)) for l in range(L)}
    if isinstance(keep_maps, int):
        keep_maps = [keep_maps]
    out: dict[int, list[int]] = {}
    for item in keep_maps:
        if isinstance(item, (tuple, list)) and len(item) == 2:
            l, h = int(item[0]), int(item[1])
            heads = [h]
        elif isinstance(item, (int, np.integer)):
            l, heads = int(item), list(range(H))
        else:
            raise ValueError(f"keep_maps entries must be a layer (int) or a (layer, head) pair, got {item!r}")
        l = l + L if l < 0 else l
        if not 0 <= l < L:
            raise ValueError(f"keep_maps layer {item!r} is out of range: the model has layers 0..{L - 1}")
        for h in heads:
            if not 0 <= h < H:
                raise ValueError(f"keep_maps head {h} is out of range: the model has heads 0..{H - 1}")
        out.setdefault(l, [])
        out[l] = sorted(set(out[l]) | set(heads))
    return out


def _parse_layers(sel, L: int) -> list[int]:
    if sel is None or sel is False:
        return []
    if sel is True or sel == "all":
        return list(range(L))
    sel = [sel] if isinstance(sel, int) else list(sel)
    out = sorted({(int(l) + L if int(l) < 0 else int(l)) for l in sel})
    bad = [l for l in out if not 0 <= l < L]
    if bad:
        raise ValueError(f"keep_head_outputs layers {bad} out of range 0..{L - 1}")
    return out


def trace(
    model,
    text_or_texts: str | Sequence[str],
    *,
    add_bos: bool | None = None,
    max_tokens: int | None = None,
    keep_maps: Any = None,
    keep_head_outputs: Any = False,
    map_dtype: str = "float16",
    batch_size: int = 8,
    top_k: int = TOP_K_ACTIVATIONS,
    remote: Any = False,
    method: str = "auto",
    progress: bool | None = None,
) -> SinkTrace | list[SinkTrace]:
    """Trace prompts through a model and return their sink summaries.

    Parameters
    ----------
    model
        A model from :func:`sinkwidgets.load_model`.
    text_or_texts : str or list of str
        One prompt (→ a :class:`SinkTrace`) or several (→ a list, traced in left-padded batches).
    add_bos : bool, optional
        Whether token 0 is the model's BOS-like token. ``None`` uses the model's documented default
        (``model.sinkwidgets.add_bos``: SmolLM2 False, Gemma 3 True, MiniLM True ([CLS])), else the tokenizer's.
        The value used is recorded in ``trace.meta['add_bos']``.
    max_tokens : int, optional
        Truncate longer prompts to this many tokens (recorded in ``meta['truncated']`` and
        ``meta['n_tokens_original']``). Without it, a prompt longer than the model's context is an error.
    keep_maps : None, "all", int, list of layers or of (layer, head) pairs
        Which full attention maps ``[T, T]`` to keep (``map_dtype``, float16 by default).
    keep_head_outputs : bool, "all" or list of layers
        Keep each head's contribution to the residual stream (after ``W_O``), ``[N, H, T, d]`` float32.
    batch_size : int
        Prompts per forward pass when tracing a list.
    top_k : int
        Largest-|h| residual activations to record per layer (for :func:`~sinkwidgets.massive_activations`).
    remote : bool, str or :class:`sinkwidgets.remote.RemoteOptions`
        Run on NDIF (``True``: the host and key from :func:`~sinkwidgets.load_model`, ``NDIF_HOST`` /
        ``NDIF_API_KEY`` or nnsight's config; a URL string overrides the host). Only the summaries come back.
        See ``docs/remote.md``. ``False`` runs locally.
    method : "auto", "eager" or "chunked"
        ``"eager"`` reads the probabilities of eager attention; ``"chunked"`` runs SDPA and recomputes them from
        q and k in query chunks (:mod:`sinkwidgets.chunked`: memory near a plain forward at long context; Llama-style
        rotary decoders). ``"auto"``: chunked for remote traces and for local prompts of
        :data:`AUTO_CHUNKED_TOKENS` (4096) tokens or more where the model supports it, eager otherwise. The
        method used is recorded in ``trace.meta['method']``.
    progress : bool, optional
        Show a progress bar over batches (default: when tracing more than one batch).
    """
    info = _info(model)
    single = isinstance(text_or_texts, str)
    texts = [text_or_texts] if single else list(text_or_texts)
    if not texts:
        raise ValueError("no prompts given: pass a string or a non-empty list of strings")
    if map_dtype not in ("float16", "float32"):
        raise ValueError(f"map_dtype must be 'float16' or 'float32', got {map_dtype!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if method not in ("auto", "eager", "chunked"):
        raise ValueError(f"method must be 'auto', 'eager' or 'chunked', got {method!r}")
    if info.remote and not remote:
        remote = True  # a model from load_model(..., remote=True) has no local weights
    if remote and method == "eager":
        raise ValueError("remote traces use method='chunked' (NDIF serves models without eager attention); "
                         "leave method='auto'")
    requested = method
    method = "chunked" if (remote or method == "chunked") else "eager"
    L, H = info.n_layers, info.n_heads
    maps_sel = _parse_keep_maps(keep_maps, L, H)
    ho_layers = _parse_layers(keep_head_outputs, L)
    ctx = info.context_length

    encoded = []
    for text in texts:
        ids, used_bos = tokenize(model, text, add_bos)
        n_orig = len(ids)
        limit = max_tokens
        if limit is not None:
            if limit < 2:
                raise ValueError(f"max_tokens must be >= 2, got {max_tokens}")
            if ctx and limit > ctx:
                raise ValueError(f"max_tokens={limit} exceeds the context length of {info.name!r} ({ctx} tokens)")
            ids = ids[:limit]
        elif ctx and n_orig > ctx:
            raise ValueError(
                f"the prompt has {n_orig} tokens, more than the context length of {info.name!r} ({ctx}); "
                f"pass max_tokens={ctx} (or fewer) to truncate it, which the trace records"
            )
        encoded.append((text, ids, used_bos, n_orig))

    if requested == "auto" and method == "eager" and max(len(e[1]) for e in encoded) >= AUTO_CHUNKED_TOKENS:
        method = _auto_long_method(model, info)
    if method == "chunked" and not remote:
        _pin_mmap_threshold()

    batches = [encoded[i : i + batch_size] for i in range(0, len(encoded), batch_size)]
    show = progress if progress is not None else len(batches) > 1
    it = batches
    if show:
        from tqdm.auto import tqdm

        it = tqdm(batches, desc=f"tracing {info.name}", unit="batch")
    out: list[SinkTrace] = []
    for batch in it:
        out.extend(_trace_batch(model, info, batch, maps_sel, ho_layers, map_dtype, top_k, remote, method))
    return out[0] if single else out


def _trace_batch(model, info, batch, maps_sel, ho_layers, map_dtype, top_k, remote, method="eager") -> list[SinkTrace]:
    from .models.adapters import get_path, per_head_wo

    ad = info.adapter
    B = len(batch)
    T = max(len(ids) for _, ids, _, _ in batch)
    pad_id = model.tokenizer.pad_token_id if model.tokenizer.pad_token_id is not None else 0
    input_ids = torch.full((B, T), pad_id, dtype=torch.long)
    mask = torch.zeros((B, T), dtype=torch.long)
    for b, (_, ids, _, _) in enumerate(batch):
        input_ids[b, T - len(ids) :] = torch.tensor(ids)
        mask[b, T - len(ids) :] = 1
    position_ids = (mask.cumsum(-1) - 1).clamp_min(0)
    first = (T - mask.sum(-1)).long()
    n_real = mask.sum(-1)
    causal = ad.causal
    dev = torch.device("cpu") if remote else _device(model)
    inputs = dict(input_ids=input_ids.to(dev), attention_mask=mask.to(dev), position_ids=position_ids.to(dev))
    qmask = mask.to(dev)
    first_d, n_real_d = first.to(dev), n_real.to(dev)

    layers = get_path(model, ad.layers)
    per_layer: list = []
    maps_out: dict = {}
    ho_out: dict = {}
    t0 = time.perf_counter()
    extra_meta = {"method": method}
    if method == "chunked":  # SDPA + probabilities recomputed from q, k; also the remote (NDIF) path
        from .chunked import run_chunked

        per_layer, maps_out, ho_out, extra_meta = run_chunked(
            model, info, inputs, qmask, first_d, n_real_d, maps_sel, ho_layers, map_dtype, top_k, remote,
            _forward_kwargs(causal, model))
    else:
        with torch.no_grad(), model.trace(inputs, **_forward_kwargs(causal, model)):
            for l in range(len(layers)):
                layer = layers[l]
                # nnsight needs values in forward order: an o_proj inside the attention module runs before the
                # attention module returns; BERT's output dense layer runs after it
                inner = ad.o_proj.startswith(ad.attn + ".")
                if l in ho_layers and inner:
                    ho_out[l] = get_path(layer, ad.o_proj).input.save()
                A = get_path(layer, ad.attn).output[1]
                if l in ho_layers and not inner:
                    ho_out[l] = get_path(layer, ad.o_proj).input.save()
                alpha, ftm, ent = reduce_attention(A, qmask, first_d, n_real_d, causal)
                if l in maps_sel:
                    maps_out[l] = A[:, maps_sel[l]].to(getattr(torch, map_dtype)).save()
                del A  # do not keep this layer's [B, H, T, T] map alive while the next layer computes its own
                h = layer.output
                h = h[0] if isinstance(h, tuple) else h
                norms, vals, idx, med = reduce_residual(h, qmask, top_k)
                del h
                per_layer.append((alpha.save(), ftm.save(), ent.save(), norms.save(), vals.save(), idx.save(), med.save()))
    elapsed = time.perf_counter() - t0

    # stack to numpy [L, ...]
    def stack(i):
        return torch.stack([p[i].detach().float().cpu() for p in per_layer]).numpy()

    alpha, ftm, ent, norms, vals, idx = (stack(i) for i in range(6))
    med = stack(6)
    d = info.d_model
    idx = torch.stack([p[5].cpu() for p in per_layer]).numpy()  # int64 flat indices (not via float)
    wo = {}
    if ho_layers and method == "eager":
        for l in ho_layers:
            wo[l] = per_head_wo(get_path(layers[l]._module if hasattr(layers[l], "_module") else layers[l], ad.o_proj).weight,
                                ad.o_proj_layout, info.n_heads)
    results = []
    for b, (text, ids, used_bos, n_orig) in enumerate(batch):
        f = int(first[b])
        tokens = [model.tokenizer.decode([i]) for i in ids]
        meta = {
            "model": info.name,
            "hub_id": info.hub_id,
            "architecture": info.architecture,
            "family": info.family,
            "n_layers": info.n_layers,
            "n_heads": info.n_heads,
            "n_kv_heads": info.n_kv_heads,
            "d_model": info.d_model,
            "head_dim": info.head_dim,
            "causal": causal,
            "add_bos": used_bos,
            "bos_note": info.bos_note,
            "text": text,
            "truncated": len(ids) < n_orig,
            "n_tokens_original": n_orig,
            "batch_size": len(batch),
            "trace_seconds": round(elapsed, 3),
            "remote": bool(remote),
            **extra_meta,
            "sinkwidgets_version": _version(),
        }
        fi = idx[:, b]  # [L, K] flat indices into [T_padded * d]
        kept = sorted((l, h) for l, hs in maps_sel.items() for h in hs)
        maps = None
        if kept:
            maps = np.stack([maps_out[l][b, maps_sel[l].index(h), f:, f:].cpu().numpy() for l, h in kept])
        head_outputs = None
        if ho_layers:
            hos = []
            for l in ho_layers:
                if method == "chunked":  # already per-head contributions [B, H, T, d]
                    hos.append(ho_out[l][b, :, f:].float().cpu().numpy())
                    continue
                x = ho_out[l][b, f:].float().cpu()  # [t, H*Dh]
                per_head = x.reshape(x.shape[0], info.n_heads, -1).transpose(0, 1)  # [H, t, Dh]
                hos.append(torch.einsum("htk,hkd->htd", per_head, wo[l].cpu()).numpy())
            head_outputs = np.stack(hos)
        results.append(
            SinkTrace(
                sink_scores=alpha[:, b, :, f:],
                first_token_mass=ftm[:, b],
                entropy=ent[:, b],
                resid_norms=norms[:, b, f:],
                token_ids=np.asarray(ids, dtype=np.int64),
                tokens=tokens,
                top_activations=vals[:, b],
                top_act_tokens=(fi // d - f).astype(np.int32),
                top_act_channels=(fi % d).astype(np.int32),
                median_abs_activation=med[:, b],
                maps=maps,
                map_index=np.asarray(kept, dtype=np.int32).reshape(-1, 2) if kept else None,
                head_outputs=head_outputs,
                head_output_layers=np.asarray(ho_layers, dtype=np.int32) if ho_layers else None,
                meta=meta,
            )
        )
    return results


def _auto_long_method(model, info) -> str:
    """``method="auto"`` for a long local prompt: chunked where the model supports it, else eager."""
    from .chunked import ChunkedUnsupportedError, layer_plan

    try:
        layer_plan(model, info)
    except ChunkedUnsupportedError:
        return "eager"
    return "chunked"


def _forward_kwargs(causal: bool, model=None) -> dict:
    """Decoders: no KV cache (not needed for one forward pass, and it costs memory at long T), and logits for
    the last position only where the model accepts ``logits_to_keep`` (nothing after the last layer is used;
    the ``[T, vocab]`` logits are ~15% of a SmolLM2 forward pass and its largest temporary)."""
    kw = {"use_cache": False} if causal else {}
    if causal and model is not None and _accepts(model, "logits_to_keep"):
        kw["logits_to_keep"] = 1
    return kw


def _accepts(model, name: str) -> bool:
    import inspect

    hf = getattr(model, "_module", model)
    try:
        return name in inspect.signature(hf.forward).parameters
    except (TypeError, ValueError):
        return False


def _device(model) -> torch.device:
    try:
        return next(model._module.parameters()).device
    except (AttributeError, StopIteration):
        return torch.device("cpu")


def _version() -> str:
    from . import __version__

    return __version__


def validate_model(model, atol: float = 1e-3) -> None:
    """Trace a short probe and check the attention probabilities: shape ``[B, H, T, T]``, rows summing to one.

    Raises :class:`TraceError` naming the model when its attention cannot be traced.
    """
    from .models.adapters import SUPPORTED, get_path

    info = _info(model)
    ad = info.adapter
    ids = torch.tensor([list(range(5, 11))])
    mask = torch.ones_like(ids)
    dev = _device(model)
    layers = get_path(model, ad.layers)
    try:
        with torch.no_grad(), model.trace(dict(input_ids=ids.to(dev), attention_mask=mask.to(dev)), **_forward_kwargs(ad.causal)):
            A = get_path(layers[0], ad.attn).output[1].save()
    except Exception as exc:  # noqa: BLE001
        raise TraceError(
            f"could not trace the attention of {info.name!r} ({info.architecture}): {type(exc).__name__}: {exc}. "
            f"Supported families: {SUPPORTED}."
        ) from exc
    if not isinstance(A, torch.Tensor) or A.ndim != 4 or A.shape[-1] != A.shape[-2] != 6 or A.shape[1] != info.n_heads:
        got = tuple(A.shape) if isinstance(A, torch.Tensor) else type(A).__name__
        raise TraceError(
            f"the attention module of {info.name!r} ({info.architecture}) did not return probabilities of shape "
            f"[B, H={info.n_heads}, T, T] under eager attention (got {got}); supported families: {SUPPORTED}"
        )
    sums = A.float().sum(-1)
    if not torch.allclose(sums, torch.ones_like(sums), atol=atol):
        raise TraceError(
            f"the traced attention of {info.name!r} does not sum to one over keys (row sums {sums.min():.3f}..{sums.max():.3f}); "
            "it is not a softmax probability map this package can analyse"
        )
