"""Attention probabilities recomputed from post-RoPE queries and keys, a few query rows at a time (plain torch).

The chunked and remote executors read q and k instead of an eager ``[B, H, T, T]`` map and turn them back into
probabilities here; the units that read ``"probs"`` consume one chunk at a time. Shipped to NDIF by value.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .reductions import reduce_attention_chunks

#: Bytes of float32 scores per query chunk (``B * H * c * T * 4``); ``c`` is derived from it per layer.
CHUNK_BYTES = 16 * 2**20
#: Bounds on the number of query rows per chunk.
MIN_CHUNK, MAX_CHUNK = 16, 512
#: Query rows per chunk on the lse path (:func:`lse_chunks`, local CPU runs), at most: measured on 2 CPU cores
#: (SmolLM2-135M, T = 512 … 8192), 64 rows were as fast as or faster than larger chunks: the chunk's
#: passes stay nearer the core (L2 is 2 MiB a core there), and the diagonal block's masked half, computed and
#: thrown away, is c/T of the matmul (a single 512-row chunk at T = 512 doubled it).
LSE_MAX_CHUNK = 64
#: Log-probabilities are clamped to at least this before ``exp`` (:func:`lse_chunks`): ``exp(-87) = 1.6e-38`` is
#: still a normal float32, and ``exp`` with a subnormal or underflowing result is 10-100x slower on x86 CPUs (at
#: T = 512 the masked half of a chunk made ``exp`` cost more than the matmul). A probability below 1.6e-38 reads
#: as 1.6e-38 (α changes by < T · 1.6e-38); masked entries are set to exactly 0 after the ``exp``.
LOGP_FLOOR = -87.0
#: Added to the diagonal block's masked scores (keys after their query) on the own path before the row max, so
#: they cannot be the max. They are then raised to :data:`LOGP_FLOOR` before the ``exp`` and their ``E`` set to 0
#: afterwards: an ``exp`` whose result underflows (anything below -87, even -inf) takes the slow path too (on an
#: AVX-512 Xeon, a [1, 9, 64, 256] chunk with a quarter of its entries at -1e30: 430 us, 28 us with none).
MASKED_LOGP = -1.0e30
#: On the own path (:func:`own_chunks`) a chunk of at most this many scores is clamped at :data:`LOGP_FLOOR`
#: whole; a larger one only for the heads where the Cauchy–Schwarz bound says a score can be below it. The check
#: is five small ops and a sync, dearer than one clamp pass over a small chunk (a [1, 9, 64, 256] clamp: 7 us).
FLOOR_CHECK_MIN = 2**19


@dataclass(frozen=True)
class AttentionParams:
    """How one layer turns q and k into probabilities: ``softmax(q kᵀ · scale [tanh soft-cap] + mask)``.

    ``n_rep``: query heads per key head (grouped-query attention: query head h reads key head ``h // n_rep``);
    ``window``: sliding window (keys ``j <= i - window`` are hidden) or None; ``softcap``: Gemma 2's logit
    soft-cap or None. :meth:`of` reads the chunked plan's per-layer ``(scale, n_rep, window, softcap)``.
    """

    scale: float
    n_rep: int = 1
    window: int | None = None
    softcap: float | None = None

    @classmethod
    def of(cls, params) -> AttentionParams:
        return params if isinstance(params, cls) else cls(*params)


# ----------------------------------------------------------------------------- kernels (torch only)
def chunk_rows(B: int, H: int, T: int, budget: int = CHUNK_BYTES) -> int:
    """Query rows per chunk so that one ``[B, H, c, T]`` float32 block fits in ``budget`` bytes."""
    c = budget // max(1, B * H * T * 4)
    return int(max(MIN_CHUNK, min(MAX_CHUNK, c)))


def attention_chunks(q, k, qmask, params: AttentionParams, rows: int = 128, hidden=None):
    """Yield ``(start, P, scratch)``: probabilities ``P [B, H, c, w]`` (float32) for query rows ``start:start+c``
    over keys ``0..w-1`` with ``w = start + c`` (causal: later keys get exactly zero and are not computed).

    ``q [B, H, T, D]`` and ``k [B, KV, T, D]`` are post-RoPE (as the attention module uses them), ``qmask [B, T]``
    marks real tokens (left padding 0), ``params`` the layer's :class:`AttentionParams`. Masking matches Hugging
    Face eager attention: causal, keys outside a sliding ``window`` (``j <= i - window``) and padding keys are excluded; pad query rows are 0 and
    ignored by the reductions. ``hidden [B, T, T]`` (bool, optional): more (row, query, key) entries to exclude,
    those of the ``"attn_mask"`` edits (:mod:`.edits`), so the probabilities are the ones the edited model used.

    ``P`` and ``scratch`` (same size, for the consumer's temporaries) are views into one workspace that is
    reused for every chunk: consume a chunk before asking for the next. The workspace is a single allocation
    (above glibc's 32 MiB dynamic mmap ceiling when it is large), so it goes back to the OS when freed instead
    of fragmenting the heap: without this, peak RSS grew by ~35 % at T = 2048.
    """
    scale, n_rep, window, softcap = params.scale, params.n_rep, params.window, params.softcap
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
            ok = allowed[None, None] & keyok[..., :w]
            if hidden is not None:
                ok = ok & ~hidden[:, None, s:e, :w].to(q.device)
            probs.masked_fill_(~ok, neg)
            probs.sub_(probs.amax(dim=-1, keepdim=True)).clamp_(min=LOGP_FLOOR).exp_()  # softmax, in place; the
            probs.masked_fill_(~ok, 0.0)  # floor keeps exp off its slow subnormal path, masked entries are exactly 0
            probs.div_(probs.sum(dim=-1, keepdim=True).clamp_(min=1e-30))  # padding query rows (all masked): 0
            yield s, probs, ws[block : block + B * H * c * w].view(B, H, c, w)


def lse_chunks(q, k, lse, qmask, params: AttentionParams, rows: int = 128, workspace: dict | None = None):
    """Yield ``(start, P, scratch, logp)`` like :func:`attention_chunks`, from the row log-sum-exp of the layer's
    own attention kernel: one matmul and one ``exp`` per chunk, no row max, sum or division.

    ``lse [B, H, T]``: ``lse_i = log Σ_{j allowed} exp(q_i·k_j · scale)``, as returned with the layer's output by
    ``aten._scaled_dot_product_flash_attention_for_cpu`` (:func:`.chunked.lse_attention`). Then, for allowed keys,

        logp[i, j] = q_i·k_j · scale − lse_i,    P[i, j] = exp(logp[i, j])

    and both are exact softmax probabilities of the same scores (no second normalisation; ``logp`` is floored at
    :data:`LOGP_FLOOR`). The floor is a pass over the chunk, so it runs only for the heads of a chunk where it can
    matter: by Cauchy–Schwarz ``logp[i, j] ≥ −scale·‖q_i‖·max_{j' ≤ i} ‖k_{j'}‖ − lse_i``, and where that bound is
    at or above the floor for every row of the chunk the clamp would change nothing and is skipped (on SmolLM2 at
    T = 8192, most chunks of most layers). Masked entries (causal ``j > i``, padding keys
    ``qmask[b, j] = 0`` and every key of a padding query row) get ``P`` = 0 exactly and ``logp`` =
    :data:`LOGP_FLOOR`, so ``P * logp`` is 0 there; padding query rows are all zero (ignored
    by the units).
    Only plain causal attention with left padding: no sliding window, soft-cap or ``"attn_mask"`` edit (those go
    through :func:`attention_chunks`). ``q [B, H, T, D]`` and ``k [B, KV, T, D]`` post-RoPE, ``params.n_rep = H / KV``
    (grouped-query attention: the ``n_rep`` query heads of a key head are one matmul, no expanded copy of ``k``).

    ``P``, ``scratch`` and ``logp`` are views into one reused workspace (see :func:`attention_chunks`); pass the
    same ``workspace`` dict for every layer of a forward pass and that buffer is allocated once, not per layer
    (no fresh pages to fault in for each layer).
    """
    scale, n_rep = params.scale, params.n_rep
    if params.window or params.softcap:
        raise ValueError(f"lse_chunks: only plain causal attention (no sliding window or soft-cap), got {params}; "
                         "use attention_chunks")
    with torch.autocast(device_type=q.device.type, enabled=False):
        B, H, T, D = q.shape
        KV = k.shape[1]
        block = B * H * rows * T
        # the GEMM computes logp directly: [q·scale, −lse] @ [kᵀ; 1] (one extra inner-product column, no
        # separate pass subtracting lse over the chunk)
        nq, nk = B * H * T * (D + 1), B * KV * (D + 1) * T
        need = 3 * block + nq + nk  # logp, P, scratch (for other units; pages never touched cost no RSS)
        if q.device.type == "cpu" and need * 4 > 4 * 2**20:
            need = max(need, (33 * 2**20) // 4)  # one mmap'd block, returned to the OS when freed
        ws = None if workspace is None else workspace.get("lse")
        if ws is None or ws.numel() < need or ws.device != q.device:
            ws = torch.empty(need, dtype=torch.float32, device=q.device)
            if workspace is not None:
                workspace["lse"] = ws
        qa = ws[3 * block : 3 * block + nq].view(B, KV, n_rep, T, D + 1)
        qa[..., :D].copy_(q.reshape(B, KV, n_rep, T, D)).mul_(scale)  # query head h = kv * n_rep + r: key head kv
        qa[..., D].copy_(lse.reshape(B, KV, n_rep, T)).neg_()
        ka = ws[3 * block + nq : 3 * block + nq + nk].view(B, KV, D + 1, T)
        ka[:, :, :D].copy_(k.transpose(-1, -2))
        ka[:, :, D].fill_(1.0)
        floor = _floor_needed(q, k, lse, scale, n_rep, rows)  # [n_chunks][H]: may a logp fall below the floor?
        tri = torch.ones(rows, rows, dtype=torch.bool, device=q.device).triu_(1)  # key after query in the block
        qok = qmask.to(q.device).bool()
        padded = not bool(qok.all())
        for ci, s in enumerate(range(0, T, rows)):
            e = min(s + rows, T)
            c, w, n = e - s, e, B * H * (e - s) * e  # causal: keys after the chunk's last query are not computed
            logp = ws[:n].view(B, KV, n_rep * c, w)
            torch.matmul(qa[:, :, :, s:e].reshape(B, KV, n_rep * c, D + 1), ka[..., :w], out=logp)
            logp = logp.view(B, H, c, w)
            heads = floor[ci]
            if len(heads) == H:
                logp.clamp_(min=LOGP_FLOOR)  # no subnormal exp (10-100x slower on CPU)
            else:
                for h in heads:
                    logp[:, h].clamp_(min=LOGP_FLOOR)
            logp[..., s:].masked_fill_(tri[:c, :c], LOGP_FLOOR)  # keys after their query (P = 0 below)
            ok = None
            if padded:
                ok = qok[:, None, s:e, None] & qok[:, None, None, :w]
                logp.masked_fill_(~ok, LOGP_FLOOR)
            P = torch.exp(logp, out=ws[block : block + n].view(B, H, c, w))  # every logp >= LOGP_FLOOR: fast exp
            P[..., s:].masked_fill_(tri[:c, :c], 0.0)
            if ok is not None:
                P.masked_fill_(~ok, 0.0)
            yield s, P, ws[2 * block : 2 * block + n].view(B, H, c, w), logp


def own_chunks(q, k, v, params: AttentionParams, out, rows: int = LSE_MAX_CHUNK, workspace: dict | None = None,
               part: int = 0, parts: int = 1):
    """Compute a layer's attention *and* its probabilities, once: yield ``(start, E, scratch, S, (r, logz))`` per
    query chunk and write the attention output into ``out [B, T, H, D]`` (what the layer's attention function
    returns), for a batch without padding (:func:`own_attention_ok`).

    Per chunk of ``c`` query rows and its ``w = start + c`` causal keys, with ``m_i = max_{j≤i} s_ij``::

        s_ij = q_i·k_j · scale            (one GEMM per key head: its n_rep query heads together)
        S_ij = s_ij − m_i                 (≤ 0; keys after their query: excluded from m, E = 0 there)
        E_ij = exp(S_ij),  Z_i = Σ_j E_ij
        out_i = (Σ_j E_ij v_j) / Z_i      (one GEMM per key head, with a column of ones appended to v for Z)

    so the probabilities are ``P_ij = r_i · E_ij`` with ``r_i = 1 / Z_i`` and ``log P_ij = S_ij − logz_i``
    (``logz_i = log Z_i``). They are not normalised here: a unit that takes the row scale
    (:attr:`~.reductions.Reduction.takes_rowscale`) folds ``r`` into its sums, and the collector normalises in
    place for the others (``E *= r``, ``S −= logz``). ``E``, ``S [B, H, c, w]``, ``r`` and ``logz [B, H, c, 1]``.

    This is the flash kernel's work (scores, exponentials, the value product) done in the package's chunks, so the
    chunk's scores serve both the layer's output and the units; SDPA plus :func:`lse_chunks` computes the scores
    twice. ``S`` is floored at :data:`LOGP_FLOOR` (``exp`` off its slow subnormal path) only for the heads of a
    chunk where the Cauchy–Schwarz bound ``S_ij ≥ −scale·‖q_i‖·max_{j≤i}‖k_j‖ − m_i`` can fall below it
    (chunks of at most :data:`FLOOR_CHECK_MIN` scores are floored whole, which is cheaper than the check).
    ``q [B, H, T, D]``, ``k`` and ``v [B, KV, T, D]`` as the attention function receives them (post-RoPE, key
    heads not repeated), float32; ``params.n_rep = H / KV``. ``E``, ``S`` and ``scratch`` are views into one reused
    workspace (see :func:`lse_chunks`): consume a chunk before asking for the next. ``out`` is complete when the
    generator is exhausted.

    ``part`` of ``parts``: only the chunks ``part, part + parts, …`` (and only their rows of ``out``), with a
    workspace of its own, so that ``parts`` generators can run side by side in threads
    (:meth:`.collect.Collector.feed_probs_parts`).
    """
    scale, n_rep = params.scale, params.n_rep
    if params.window or params.softcap:
        raise ValueError(f"own_chunks: only plain causal attention (no sliding window or soft-cap), got {params}")
    with torch.autocast(device_type=q.device.type, enabled=False):
        B, H, T, D = q.shape
        KV = k.shape[1]
        block = B * H * rows * T
        nq, nk, nv = B * H * T * D, B * KV * D * T, B * KV * T * (D + 1)
        need = 3 * block + nq + nk + nv  # S, E, scratch, then the layer's scaled q, kᵀ and [v, 1]
        if q.device.type == "cpu" and need * 4 > 4 * 2**20:
            need = max(need, (33 * 2**20) // 4)  # one mmap'd block, returned to the OS when freed
        key = "own" if part == 0 else f"own{part}"
        ws = None if workspace is None else workspace.get(key)
        if ws is None or ws.numel() < need or ws.device != q.device:
            ws = torch.empty(need, dtype=torch.float32, device=q.device)
            if workspace is not None:
                workspace[key] = ws
        o = 3 * block
        qs = ws[o : o + nq].view(B, KV, n_rep, T, D)
        torch.mul(q.reshape(B, KV, n_rep, T, D), scale, out=qs)  # query head h = kv * n_rep + r: key head kv
        kt = ws[o + nq : o + nq + nk].view(B, KV, D, T)
        kt.copy_(k.transpose(-1, -2))
        va = ws[o + nq + nk : o + nq + nk + nv].view(B, KV, T, D + 1)
        va[..., :D].copy_(v)
        va[..., D].fill_(1.0)  # the value GEMM's last column is the row sum Z
        bound = None  # Cauchy–Schwarz: S_ij >= -bound_i - m_i (only needed for chunks checked before the clamp)
        if block > FLOOR_CHECK_MIN:
            bound = (torch.linalg.vector_norm(q.float(), dim=-1).mul_(scale)
                     * torch.linalg.vector_norm(k.float(), dim=-1).cummax(-1).values.repeat_interleave(n_rep, 1))
        masks = None if workspace is None else workspace.get(("causal", rows))
        if masks is None or masks[0].device != q.device:
            tri = torch.ones(rows, rows, dtype=torch.bool, device=q.device).triu_(1)  # key after query in the block
            masks = (tri, torch.zeros(rows, rows, device=q.device).masked_fill_(tri, MASKED_LOGP))
            if workspace is not None:
                workspace[("causal", rows)] = masks  # (every layer of the forward: made once)
        tri, upper = masks
        out5 = out.view(B, T, KV, n_rep, D)
        for s in range(part * rows, T, parts * rows):
            e = min(s + rows, T)
            c, w, n = e - s, e, B * H * (e - s) * e  # causal: keys after the chunk's last query are not computed
            S = ws[:n].view(B, KV, n_rep * c, w)
            torch.matmul(qs[:, :, :, s:e].reshape(B, KV, n_rep * c, D), kt[..., :w], out=S)
            S = S.view(B, H, c, w)
            S[..., s:].add_(upper[:c, :c])
            m = S.amax(dim=-1, keepdim=True)  # [B, H, c, 1]
            S.sub_(m)
            if n <= FLOOR_CHECK_MIN:
                S.clamp_(min=LOGP_FLOOR)  # (the diagonal block's masked keys too: a fast exp)
            else:
                low = (bound[:, :, s:e] + m[..., 0] > -LOGP_FLOOR).any(-1).any(0).tolist()  # [H]: may S < floor?
                for h in (h for h in range(H) if low[h]):
                    S[:, h, :, :s].clamp_(min=LOGP_FLOOR)
                S[..., s:].clamp_(min=LOGP_FLOOR)  # the diagonal block: its masked keys too
            E = torch.exp(S, out=ws[block : block + n].view(B, H, c, w))
            E[..., s:].masked_fill_(tri[:c, :c], 0.0)  # keys after their query
            Oc = torch.matmul(E.view(B, KV, n_rep * c, w), va[:, :, :w]).view(B, KV, n_rep, c, D + 1)
            Z = Oc[..., D:]  # [B, KV, n_rep, c, 1]
            torch.div(Oc[..., :D], Z, out=out5[:, s:e].permute(0, 2, 3, 1, 4))
            r = Z.reciprocal().view(B, H, c, 1)
            yield s, E, ws[2 * block : 2 * block + n].view(B, H, c, w), S, (r, Z.log().view(B, H, c, 1))


def own_attention_ok(q, k, v, qmask, params: AttentionParams, attention_mask=None, kwargs=None) -> bool:
    """Whether :func:`own_chunks` computes exactly what this attention call would: float32 on the CPU, queries
    and keys of one length (no KV cache), plain causal attention (no window, soft-cap, dropout or position bias),
    no padding in the batch (``qmask`` all ones; a mask, if given, then only says causal)."""
    kw = kwargs or {}
    return (q.device.type == "cpu" and q.dtype == k.dtype == v.dtype == torch.float32
            and q.dim() == 4 and k.shape[2] == v.shape[2] == q.shape[2] > 1 and q.shape[1] == k.shape[1] * params.n_rep
            and not params.window and not params.softcap and not kw.get("dropout") and kw.get("softcap") is None
            and kw.get("position_bias") is None and kw.get("sliding_window") is None and bool(qmask.bool().all()))


def _floor_needed(q, k, lse, scale: float, n_rep: int, rows: int) -> list[list[int]]:
    """Per query chunk of ``rows`` rows, the heads where some ``logp[i, j]`` (``j ≤ i``) may be below
    :data:`LOGP_FLOOR`: where ``−scale·‖q_i‖·max_{j ≤ i} ‖k_j‖ − lse_i < LOGP_FLOOR`` for a row of the chunk (any
    prompt of the batch). A lower bound by Cauchy–Schwarz: a head not listed has no entry below the floor."""
    B, H, T, _ = q.shape
    qn = torch.linalg.vector_norm(q.float(), dim=-1).mul_(scale)  # [B, H, T]
    kmax = torch.linalg.vector_norm(k.float(), dim=-1).cummax(-1).values.repeat_interleave(n_rep, 1)  # [B, H, T]
    low = torch.isfinite(lse) & (qn * kmax + lse > -LOGP_FLOOR)  # (a padding row's lse may be -inf: no floor)
    n_chunks = -(-T // rows)
    low = torch.nn.functional.pad(low, (0, n_chunks * rows - T)).view(B, H, n_chunks, rows).any(-1).any(0)
    return [[h for h in range(H) if row[h]] for row in low.t().tolist()]


def reduce_qk(q, k, params: AttentionParams, *, qmask, first, n_real, causal: bool = True, keep_heads=None,
              map_dtype=torch.float16, budget: int = CHUNK_BYTES):
    """α ``[B, H, T]``, first-token mass ``[B, H]``, entropy ``[B, H]`` (and ``keep_heads``' maps) from q and k.

    ``qmask [B, T]``, ``first [B]``, ``n_real [B]`` describe the (left-padded) batch as in
    :class:`~.reductions.BatchContext`; ``params`` is the layer's :class:`AttentionParams`.

    The same outputs and conventions as :func:`sinkwidgets.tracing.reduce_attention` on the eager map; a
    stand-alone form of what the chunked executor does per layer with :class:`~.reductions.AttentionSummary`,
    for tests and for use outside a trace.
    """
    B, H, T, _ = q.shape
    kept = []

    def chunks():
        for item in attention_chunks(q, k, qmask, params, chunk_rows(B, H, T, budget)):
            if keep_heads is not None:
                kept.append(torch.nn.functional.pad(item[1][:, keep_heads].to(map_dtype), (0, T - item[1].shape[-1])))
            yield item

    alpha, ftm, ent = reduce_attention_chunks(chunks(), B, H, T, qmask, first, n_real, causal)
    return alpha, ftm, ent, (torch.cat(kept, dim=2) if keep_heads is not None else None)
