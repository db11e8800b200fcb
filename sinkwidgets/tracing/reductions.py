"""In-trace reductions: each quantity a trace can return is one small unit here.

A trace never hands whole activations back: inside the nnsight trace, each layer's attention probabilities,
residual stream, value vectors and per-head outputs are reduced to small tensors, and only those leave the model's
machine (a GPU box, or an NDIF server). Each :class:`Reduction` declares four things:

- **what it reads** at a layer (``reads``), from :data:`SOURCES`:

  ``"probs"``    attention probabilities ``[B, H, c, w]``, handed over in query chunks (rows ``s:s+c``, keys
                 ``0..w-1``; later keys are exactly 0). The eager executor slices a full map; the chunked and remote
                 executors recompute each chunk from q and k, so no ``[T, T]`` map ever exists;
  ``"values"``   the value projection's output ``[B, T, KV*Dh]`` (or the v part of a fused q/k/v projection);
  ``"o_input"``  the output projection's input, the concatenated per-head outputs ``[B, T, H*Dh]``;
  ``"resid"``    the block's output, the residual stream after the layer ``[B, T, d]`` (after any edit of it,
                 :mod:`.edits`);
  ``"logits"``   the model's output logits ``[B, T, V]``, read once after the last layer (units reading it act on
                 no layer: :meth:`Reduction.layers` returns ``[]``); the executor then keeps every position's
                 logits instead of the last one only;

  ``"values"`` and ``"o_input"`` come with the output projection's weight ``W_O`` (layout in ``ctx.o_layout``);
- **what it accumulates**: named tensors with a leading batch axis, listed in each unit's docstring;
- **how many bytes it returns** (:meth:`Reduction.result_bytes`), for the remote size check before sending;
- **where it lands**: :meth:`Reduction.land` cuts one prompt's real tokens out of the padded batch (numpy),
  and :meth:`Reduction.to_sinktrace` names the :class:`~sinkwidgets.SinkTrace` fields it fills.

The executors (:mod:`.eager`, :mod:`.chunked`, and the same chunked block shipped to NDIF by :mod:`.remote`) loop
over layers, read each source that an active unit asks for (in the model's forward order) and hand it over; none
of them names a quantity. Adding a quantity is one new unit here plus its test.

Everything in this module is plain torch (numpy only in :meth:`land`, which runs locally), so the remote executor
ships it to the server by value.

Batches are left-padded: ``ctx.qmask [B, T]`` marks real tokens, ``ctx.first [B]`` is each row's first real
position and ``ctx.n_real [B]`` its number of real tokens. Every unit reduces over real tokens only, so a prompt
gives the same result alone or in a padded batch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

#: The sources a unit can read at a layer (see the module docstring).
SOURCES = ("values", "probs", "o_input", "resid", "logits")

#: Query rows reduced at once by the eager executor: bounds temporaries to ``[B, H, CHUNK, T]`` instead of
#: ``[B, H, T, T]`` (at T = 4096 on SmolLM2 a full temporary would be 600 MB per layer).
QUERY_CHUNK = 512
#: Query rows per chunk for causal models: each chunk is reduced only over the keys its queries can see
#: (``[:, :, s:s+c, :s+c]``; later keys are exactly 0), so smaller chunks skip more of the zero triangle.
#: 128 rows do ~5/8 of the full map's work at T = 512 and ~17/32 at T = 2048.
CAUSAL_QUERY_CHUNK = 128
#: The median |h| of a layer (the denominator of the massive-activation ratio) is taken over at most this many
#: real residual entries, a fixed stride through them: an exact median costs ~4 ms per layer at T = 512 on a
#: CPU (more than the rest of the residual summary), and 32768 samples put it within ~1% of the exact value.
MEDIAN_SAMPLES = 32768
#: The row-scale entropy's per-row dots ``Σ_j E_ij·S_ij`` use ``linalg.vecdot`` (a product, then a sum) for chunks
#: of at most this many entries and ``einsum`` (a batched dot, no product written) above: one thread, [1, 9, 64, w]
#: chunks: w = 160 25 vs 63 us, w = 256 75 vs 103 us, w = 512 238 vs 174 us, w = 4096 3976 vs 867 us.
ROWDOT_VECDOT_MAX = 2**18
#: Largest-|h| residual activations recorded per layer (massive activations, Sun et al.).
TOP_K_ACTIVATIONS = 8


# ----------------------------------------------------------------------------- the batch every unit sees
@dataclass
class BatchContext:
    """One batch's layout and the model facts the units need (plain tensors and numbers, shipped by value).

    ``qmask [B, T]`` real tokens (left padding 0), ``first [B]`` first real position, ``n_real [B]`` number of
    real tokens; ``o_layout`` is ``"linear"`` (``W_O [d, H*Dh]``) or ``"conv1d"`` (GPT-2's ``[H*Dh, d]``);
    ``input_ids [B, T]`` the batch's token ids (for units that score the next token, :class:`TokenLoss`).
    ``buffers``: per-run tensors a unit shares across its layers (:class:`KeptMaps` writes every layer into one
    buffer, so packing needs no copy); the :class:`~.collect.Collector` empties it when a run starts, so a result
    of an earlier run is never written into.
    """

    qmask: torch.Tensor
    first: torch.Tensor
    n_real: torch.Tensor
    causal: bool
    n_layers: int
    n_heads: int
    n_kv_heads: int
    d_model: int
    o_layout: str = "linear"
    input_ids: torch.Tensor | None = None
    buffers: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def B(self) -> int:
        return int(self.qmask.shape[0])

    @property
    def T(self) -> int:
        return int(self.qmask.shape[1])

    def on(self, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(qmask, first, n_real)`` on ``device`` (the activations may live on a server's GPU)."""
        return self.qmask.to(device), self.first.to(device), self.n_real.to(device)


def _sel(sel) -> dict[int, list[int] | None]:
    """Normalise a selection: ``{layer: [heads]}`` / ``{layer: None}`` (all heads) / a list of layers."""
    if isinstance(sel, dict):
        return {int(k): (None if v is None else sorted({int(h) for h in v})) for k, v in sorted(sel.items())}
    return {int(k): None for k in sorted(set(sel))}


# ----------------------------------------------------------------------------- base class
class Reduction:
    """One in-trace quantity. Subclasses set ``name``, ``reads`` and implement the hooks for their sources.

    Executors call, per layer in :meth:`layers`: :meth:`begin` / :meth:`chunk` (every query chunk) / :meth:`end`
    for ``"probs"``, and :meth:`read` for the other sources. Each returns ``{key: tensor [B, ...]}``; the executor
    collects a key's tensors over the unit's layers and :meth:`pack` joins them (inside the trace, so a remote
    trace downloads one tensor per key).
    """

    name: str = ""
    reads: tuple[str, ...] = ()
    #: ``"probs"`` readers: True if :meth:`chunk` accepts ``logp=``, the chunk's log-probabilities ``[B, H, c, w]``
    #: (a large finite negative where ``P`` is 0, so ``P * logp`` is 0 there), which the lse path of the chunked
    #: executor has for free; other executors pass nothing.
    takes_logp: bool = False
    #: ``"probs"`` readers that take ``logp``: True if :meth:`chunk` also accepts ``rowscale=(r, logz)`` with an
    #: unnormalised chunk ``E`` (probabilities ``r·E``, log-probabilities ``logp − logz``; :func:`.qk.own_chunks`).
    #: The collector normalises the chunk in place first when any unit at the layer does not take it.
    takes_rowscale: bool = False
    #: ``"probs"`` readers: True if :meth:`merge` combines two states begun for the same layer, each fed a
    #: disjoint set of query chunks, into the state of all of them (sums add). The collector then runs a layer's
    #: chunks in parallel parts (:meth:`.collect.Collector.feed_probs_parts`).
    mergeable: bool = False

    def merge(self, state: Any, other: Any) -> Any:
        """``state`` updated with ``other`` (see :attr:`mergeable`)."""
        raise NotImplementedError

    def layers(self, n_layers: int) -> list[int]:
        """Layers this unit acts on (default: all)."""
        return list(range(n_layers))

    def bind(self, n_layers: int, n_heads: int, d_model: int) -> None:
        """Learn the model's sizes before a trace (called locally; :meth:`land` may use them)."""
        self.n_layers, self.n_heads, self.d_model = n_layers, n_heads, d_model

    # "probs" readers
    def begin(self, ctx: BatchContext, layer: int, device) -> Any:
        raise NotImplementedError

    def chunk(self, state: Any, start: int, P: torch.Tensor, scratch: torch.Tensor | None, ctx: BatchContext) -> None:
        raise NotImplementedError

    def end(self, state: Any, ctx: BatchContext) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    # "values", "o_input", "resid" readers
    def read(self, source: str, x: torch.Tensor, w_o: torch.Tensor | None, ctx: BatchContext,
             layer: int) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def pack(self, key: str, per_layer: list[torch.Tensor]) -> torch.Tensor:
        """Join one key's per-layer tensors: stacked to ``[L_sel, B, ...]`` by default."""
        return torch.stack(per_layer)

    def result_bytes(self, B: int, T: int, ctx: BatchContext) -> int:
        """Bytes this unit downloads for a batch of ``B`` prompts padded to ``T`` tokens."""
        raise NotImplementedError

    def land(self, out: dict[str, np.ndarray], b: int, f: int) -> dict[str, np.ndarray]:
        """Prompt ``b``'s arrays (real tokens only: padded positions ``< f`` cut off) from the packed batch."""
        raise NotImplementedError

    def to_sinktrace(self, landed: dict[str, np.ndarray]) -> dict[str, Any]:
        """The :class:`~sinkwidgets.SinkTrace` fields these arrays fill (default: the same names)."""
        return dict(landed)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


# ----------------------------------------------------------------------------- kernels (shared by the units)
def attention_summary_update(state: dict, s: int, Ac: torch.Tensor, scratch, qmask, first, logp=None,
                             rowscale=None) -> None:
    """Add one query chunk ``Ac [B, H, c, w]`` (rows ``s:s+c``) to the α / first-token / entropy sums.

    ``logp`` (optional, ``[B, H, c, w]``): ``log Ac`` where ``Ac > 0`` (finite elsewhere); the entropy is then
    ``−Σ Ac·logp``, one dot product per head over the whole chunk (no product array written; padding query rows
    are all zero in ``Ac``, as both chunk generators make them, so they add nothing) instead of ``entr(Ac)`` (a log
    per entry, the costliest step here).

    ``rowscale = (r, logz)`` (optional, each ``[B, H, c, 1]``, with ``logp``): the chunk is unnormalised, as
    :func:`.qk.own_chunks` yields it. The probabilities are ``P = r·Ac`` and ``log P = logp − logz``, and the
    sums take ``r`` in without a pass over the chunk: α adds ``Σ_i r_i·Ac_ij`` (the real queries' weights times
    ``r``), and a row's entropy is ``−Σ_j P_ij log P_ij = logz_i − r_i·Σ_j Ac_ij·logp_ij`` (as ``Σ_j P_ij = 1``)."""
    if rowscale is not None:
        _summary_rowscale(state, s, Ac, logp, rowscale, qmask, first)
        return
    c, w = Ac.shape[2], Ac.shape[3]
    qm = qmask[:, s : s + c].to(Ac.dtype)  # [B, c]
    state["alpha"][:, :, :w] += torch.matmul(qm[:, None, None, :], Ac)[:, :, 0]  # sum over real queries
    # first-token mass: queries strictly after the first real token (rows before it are padding)
    col = Ac[state["bidx"], :, :, first.clamp(max=w - 1)]  # [B, H, c]
    after = (state["pos"][s : s + c][None, :] > first[:, None]).to(Ac.dtype)[:, None, :]  # [B, 1, c]
    state["ftm"] += (col * after).sum(-1)
    if logp is not None:
        state["ent"] -= torch.einsum("bhcw,bhcw->bh", Ac, logp)  # a batched dot: reads both, writes nothing
    else:
        ent = torch.special.entr(Ac, out=scratch) if scratch is not None else torch.special.entr(Ac)
        state["ent"] += (ent.sum(-1) * qm[:, None, :]).sum(-1)


def _summary_rowscale(state: dict, s: int, E: torch.Tensor, S: torch.Tensor, rowscale, qmask, first) -> None:
    """:func:`attention_summary_update` for an unnormalised chunk ``E`` with row scale ``r`` and ``logz``.

    α adds ``Σ_i r_i·E_ij`` over the chunk's real queries (one matmul). The per-row terms, the first-token weight
    ``r_i·E_i,first`` and the entropy ``logz_i − r_i·Σ_j E_ij·S_ij``, are written into ``state["rows"]
    [2, B, H, T]`` and weighted by the query masks once per layer in :func:`_attention_finish`, so a chunk costs
    four small ops (at T = 256 a layer has four chunks, and per-op overhead is most of their cost)."""
    r, logz = rowscale[0][..., 0], rowscale[1][..., 0]  # [B, H, c]
    B, H, c, w = E.shape
    rows = state.get("rows")
    if rows is None:
        rows = state["rows"] = torch.zeros(2, B, H, state["alpha"].shape[-1], dtype=E.dtype, device=E.device)
        state["unpadded"] = bool(qmask.bool().all())
        state["first0"] = int(first[0]) if bool((first == first[0]).all()) else None
    wr = r if state["unpadded"] else r * qmask[:, None, s : s + c].to(E.dtype)  # each real query's row, normalised
    state["alpha"][:, :, :w] += torch.matmul(wr[:, :, None, :], E)[:, :, 0]
    f0 = state["first0"]
    col = E[..., min(f0, w - 1)] if f0 is not None else E[state["bidx"], :, :, first.clamp(max=w - 1)]  # [B, H, c]
    torch.mul(col, r, out=rows[0][:, :, s : s + c])
    if E.numel() <= ROWDOT_VECDOT_MAX:
        rowdot = torch.linalg.vecdot(E, S)  # [B, H, c]: a product pass and a sum (faster while the chunk is small)
    else:
        rowdot = torch.einsum("bhcw,bhcw->bhc", E, S)  # one dot per row: reads both, writes no product
    torch.addcmul(logz, r, rowdot, value=-1.0, out=rows[1][:, :, s : s + c])


def reduce_attention_chunks(chunks, B: int, H: int, T: int, qmask, first, n_real, causal: bool):
    """α ``[B, H, T]``, first-token mass ``[B, H]``, entropy ``[B, H]`` from ``(start, A_chunk[, scratch])`` items.

    Definitions (per prompt, over its ``n`` real tokens, 0-based positions from its first real token):

    - α_k = (1 / |{t ≥ k}|) Σ_{t ≥ k} A[t, k] for causal models (Gu et al. 2024, "When attention sink emerges",
      Eq. 1: the mean attention key k receives from the queries that can see it), and (1/n) Σ_t A[t, k] otherwise;
    - first-token mass = (1 / (n-1)) Σ_{t ≥ 1} A[t, 0];
    - entropy = (1/n) Σ_t −Σ_k A[t, k] log A[t, k] (nats).
    """
    st = None
    for item in chunks:
        s, Ac = item[0], item[1].float()
        if st is None:
            qmask, first, n_real = qmask.to(Ac.device), first.to(Ac.device), n_real.to(Ac.device)
            st = _attention_state(B, H, T, Ac.device)
        attention_summary_update(st, s, Ac, item[2] if len(item) > 2 else None, qmask, first)
    return _attention_finish(st, T, n_real, causal)


def _attention_state(B: int, H: int, T: int, dev) -> dict:
    return {
        "alpha": torch.zeros(B, H, T, dtype=torch.float32, device=dev),
        "ftm": torch.zeros(B, H, dtype=torch.float32, device=dev),
        "ent": torch.zeros(B, H, dtype=torch.float32, device=dev),
        "bidx": torch.arange(B, device=dev),
        "pos": torch.arange(T, device=dev),
    }


def _attention_finish(st: dict, T: int, n_real, causal: bool):
    ftm, ent = st["ftm"], st["ent"]
    rows = st.get("rows")  # the row-scale path's per-row terms (_summary_rowscale): weighted by the masks here
    if rows is not None:
        after = (st["pos"][None, :] > st["first"][:, None]).to(rows.dtype)  # [B, T]: queries after the first token
        ftm = ftm + (rows[0] * after[:, None, :]).sum(-1)
        ent = ent + (rows[1] * st["qmask"].to(rows.dtype)[:, None, :]).sum(-1)
    n = n_real.to(st["alpha"].device).float()
    B = n.shape[0]
    if causal:  # key k is seen by the queries t >= k: T - k of them (all real when k is real)
        counts = (T - st["pos"]).float()[None, :].expand(B, T)
    else:
        counts = n[:, None].expand(B, T)
    alpha = st["alpha"] / counts[:, None, :]
    ftm = ftm / (n - 1).clamp_min(1)[:, None]
    ent = ent / n[:, None]
    return alpha, ftm, ent


def reduce_residual(h: torch.Tensor, qmask: torch.Tensor, k: int):
    """Residual ``h [B, T, d]`` → norms ``[B, T]``, top-|h| values / flat indices ``[B, k]``, median |h| ``[B]``.

    The median is exact up to :data:`MEDIAN_SAMPLES` real entries per prompt and otherwise taken over a fixed
    stride through them (padding excluded, so a prompt gets the same value alone or in a padded batch), the same
    on every path (eager, chunked, remote).
    """
    h = h.float()
    B, T, d = h.shape
    norms = h.norm(dim=-1)
    qb = qmask.bool()
    pad = ~qb
    flat = h.reshape(B, T * d)
    k = min(k, T * d)
    # The k largest |h| lie in at most k tokens, all among the k tokens with the largest max |h|: a top-k over
    # [B, T] maxima, then over those tokens' [k, d] entries (13 ms -> <2 ms per layer at T = 2048). A token's max
    # |h| is max(max h, -min h): two reductions, no [B, T, d] array of |h| (NaN stays NaN, as in amax; one aminmax
    # pass is slower than amax and amin: 135 vs 2 x 21 us at [1, 256, 576]).
    kt = min(k, T)
    _, tok = torch.maximum(h.amax(-1), h.amin(-1).neg_()).masked_fill_(pad, -1.0).topk(kt, dim=-1)  # [B, kt]
    cand = torch.gather(h, 1, tok[:, :, None].expand(B, kt, d)).abs().masked_fill(
        torch.gather(pad, 1, tok)[:, :, None], -1.0)
    _, j = cand.reshape(B, kt * d).topk(k, dim=-1)
    idx = torch.gather(tok, 1, j // d) * d + j % d  # flat index into [T * d]
    vals = flat.gather(1, idx)
    meds = []
    for b in range(B):  # per prompt: the same real entries, hence the same samples, alone or in a padded batch
        x = flat[b] if bool(qb[b].all()) else h[b][qb[b]].reshape(-1)  # real tokens' entries, in order
        x = (x[:: -(-x.numel() // MEDIAN_SAMPLES)] if x.numel() > MEDIAN_SAMPLES else x).abs()
        meds.append(lower_median(x) if x.numel() else torch.full((), float("nan"), device=h.device))
    return norms, vals, idx, torch.stack(meds)


def lower_median(x: torch.Tensor) -> torch.Tensor:
    """``x.median()`` of a 1-D tensor (the lower of the two middle values, NaN if any is NaN), as a 0-d tensor.

    On the CPU it is selected with numpy's ``partition`` (the same element, ~8x faster than torch's median over
    the 32768 samples of :func:`reduce_residual`: 32 vs 252 us), which also puts the largest entry last, NaN if
    there is one (numpy orders NaN after every number), so no separate NaN pass is needed; elsewhere (a server's
    GPU) torch's."""
    n = x.numel()
    if (x.device.type != "cpu" or x.requires_grad or x.dtype not in (torch.float32, torch.float64, torch.float16)
            or x.dim() != 1 or n == 0):
        return x.median()
    k = (n - 1) // 2
    part = np.partition(x.detach().contiguous().numpy(), (k, n - 1))
    return torch.tensor(part[-1] if np.isnan(part[-1]) else part[k], dtype=x.dtype)


def zeros(shape: tuple[int, ...], dtype: str, device) -> torch.Tensor:
    """``torch.zeros(shape)`` of ``dtype`` (``"float16"`` / ``"float32"``) on ``device``; on the CPU from numpy's
    ``calloc``, whose large blocks come from the kernel already zeroed (pages are cleared as they are first
    written, not in a separate pass): a [1, 270, 256, 256] float16 map buffer (SmolLM2's every head at T = 256,
    35 MB) zeroed and written in 5.7 ms instead of 9.8."""
    if torch.device(device).type == "cpu":
        return torch.from_numpy(np.zeros(shape, dtype=getattr(np, dtype)))
    return torch.zeros(shape, dtype=getattr(torch, dtype), device=device)


def per_head_wo(w_o: torch.Tensor, layout: str, n_heads: int) -> torch.Tensor:
    """The output projection split by head, ``[H, Dh, d]``, so that head h's write is ``o_h @ W[h]``."""
    w = w_o.float()
    if layout == "linear":  # nn.Linear: y = x Wᵀ, W [d, H*Dh]
        w = w.t()
    d_in, d = w.shape
    return w.reshape(n_heads, d_in // n_heads, d)


def head_contributions(x: torch.Tensor, w_o: torch.Tensor, n_heads: int, heads=None, layout: str = "linear"):
    """Per-head writes to the residual stream ``[B, H', T, d]``: ``o_h W_O^h`` for the o_proj input ``x [B, T, H*Dh]``.

    ``heads`` picks a subset (default all). The sum over all heads plus the projection's bias is the attention
    output.
    """
    with torch.autocast(device_type=x.device.type, enabled=False):
        B, T, _ = x.shape
        w = per_head_wo(w_o, layout, n_heads)  # [H, Dh, d]
        xh = x.float().reshape(B, T, n_heads, -1)
        if heads is not None:
            idx = torch.tensor(heads, device=x.device)
            xh, w = xh[:, :, idx], w[idx]
        return torch.einsum("bthk,hkd->bhtd", xh, w)


def value_writes(v: torch.Tensor, w_o: torch.Tensor, n_heads: int, n_kv_heads: int, heads=None,
                 layout: str = "linear"):
    """Value vectors after W_O, ``g_j = v_j W_O^h`` → ``[B, H', T, d]`` for the value projection output ``v [B, T, KV*Dh]``.

    This is what head h writes into a token that attends *only* to j (Zhang, Khan & Papyan 2025, arXiv 2502.00919:
    the "tag" a sink j adds to the tokens it catches). Grouped-query attention: query head h reads value head
    ``h // (H / KV)``.
    """
    with torch.autocast(device_type=v.device.type, enabled=False):
        B, T, _ = v.shape
        w = per_head_wo(w_o, layout, n_heads)  # [H, Dh, d]
        hs = list(range(n_heads)) if heads is None else list(heads)
        rep = n_heads // n_kv_heads
        kv = torch.tensor([h // rep for h in hs], device=v.device)
        vh = v.float().reshape(B, T, n_kv_heads, -1)[:, :, kv]  # [B, T, H', Dh]
        return torch.einsum("bthk,hkd->bhtd", vh, w[torch.tensor(hs, device=v.device)])


# ----------------------------------------------------------------------------- the units
class AttentionSummary(Reduction):
    """α, first-token mass and entropy of every head (Gu et al. 2024; formulas in :func:`reduce_attention_chunks`).

    Accumulates ``alpha [B, H, T]``, ``ftm [B, H]``, ``ent [B, H]`` per layer. Lands as ``sink_scores [L, H, T]``,
    ``first_token_mass [L, H]``, ``entropy [L, H]`` (SinkTrace fields of the same names).
    """

    name = "attention"
    reads = ("probs",)
    takes_logp = True
    takes_rowscale = True
    mergeable = True

    def begin(self, ctx, layer, device):
        qmask, first, n_real = ctx.on(device)
        st = _attention_state(ctx.B, ctx.n_heads, ctx.T, device)
        st.update(qmask=qmask, first=first, n_real=n_real)
        return st

    def chunk(self, state, start, P, scratch, ctx, logp=None, rowscale=None):
        attention_summary_update(state, start, P, scratch, state["qmask"], state["first"], logp, rowscale)

    def merge(self, state, other):
        for key in ("alpha", "ftm", "ent"):
            state[key] += other[key]
        if "rows" in other:  # the row-scale path's per-row terms (disjoint rows: zeros elsewhere)
            if "rows" in state:
                state["rows"] += other["rows"]
            else:
                state.update(rows=other["rows"], unpadded=other["unpadded"], first0=other["first0"])
        return state

    def end(self, state, ctx):
        alpha, ftm, ent = _attention_finish(state, ctx.T, state["n_real"], ctx.causal)
        return {"alpha": alpha, "ftm": ftm, "ent": ent}

    def result_bytes(self, B, T, ctx):
        return ctx.n_layers * B * ctx.n_heads * (T + 2) * 4

    def land(self, out, b, f):
        return {"sink_scores": out["alpha"][:, b, :, f:], "first_token_mass": out["ftm"][:, b],
                "entropy": out["ent"][:, b]}


class ResidualSummary(Reduction):
    """Residual-stream norms and the largest activations (massive activations, Sun et al. 2024, §2).

    Accumulates ``norms [B, T]``, ``vals [B, k]``, ``idx [B, k]`` (flat into ``[T * d]``) and ``med [B]`` (median
    |h|) per layer. Lands as ``resid_norms [L, T]``, ``top_activations [L, k]``, ``top_act_tokens [L, k]``,
    ``top_act_channels [L, k]`` and ``median_abs_activation [L]``.
    """

    name = "residual"
    reads = ("resid",)

    def __init__(self, top_k: int = TOP_K_ACTIVATIONS):
        self.top_k = int(top_k)

    def read(self, source, x, w_o, ctx, layer):
        norms, vals, idx, med = reduce_residual(x, ctx.qmask.to(x.device), self.top_k)
        return {"norms": norms, "vals": vals, "idx": idx, "med": med}

    def pack(self, key, per_layer):
        t = torch.stack(per_layer)
        return t if key == "idx" else t.float()

    def result_bytes(self, B, T, ctx):
        return ctx.n_layers * B * ((T + 1) * 4 + self.top_k * (4 + 8))

    def land(self, out, b, f):
        d = int(self.d_model)
        fi = out["idx"][:, b].astype(np.int64)
        return {"resid_norms": out["norms"][:, b, f:], "top_activations": out["vals"][:, b],
                "top_act_tokens": (fi // d - f).astype(np.int32), "top_act_channels": (fi % d).astype(np.int32),
                "median_abs_activation": out["med"][:, b]}

    def __repr__(self):
        return f"ResidualSummary(top_k={self.top_k})"


class _HeadSelection(Reduction):
    """A unit over chosen ``{layer: [heads]}`` (``None``: all heads) that lands ``[P, T, ...]`` + an index ``[P, 2]``."""

    key = ""

    def __init__(self, sel):
        self.sel = _sel(sel)
        if not self.sel:
            raise ValueError(f"{type(self).__name__} needs at least one layer, got {sel!r}")

    def layers(self, n_layers):
        return list(self.sel)

    def heads(self, layer: int, n_heads: int) -> list[int]:
        hs = self.sel[layer]
        return list(range(n_heads)) if hs is None else hs

    def pack(self, key, per_layer):  # layers may keep different numbers of heads: join along the head axis
        return torch.cat(per_layer, dim=1)

    def index(self, n_heads: int) -> np.ndarray:
        return np.asarray([(l, h) for l in self.sel for h in self.heads(l, n_heads)], dtype=np.int32).reshape(-1, 2)

    def n_pairs(self, n_heads: int) -> int:
        return sum(len(self.heads(l, n_heads)) for l in self.sel)

    def __repr__(self):
        return f"{type(self).__name__}({self.sel})"


class KeptMaps(_HeadSelection):
    """Full attention maps of chosen heads, ``[B, H', T, T]`` per layer (``dtype``, float16 by default).

    Lands as ``maps [M, T, T]`` and ``map_index [M, 2]`` of (layer, head), sorted by layer then head. Every layer
    writes into its heads' slice of one zeroed ``[B, M, T, T]`` buffer (``ctx.buffers``), chunk rows by chunk rows
    (keys after a chunk's last query stay 0), and :meth:`pack` returns that buffer itself (no join, no second
    copy of the maps); an unnormalised chunk (the own path) is scaled by its row scale on the way, ``P = r·E``.
    """

    name = "maps"
    reads = ("probs",)
    takes_logp = True
    takes_rowscale = True

    def __init__(self, sel, dtype: str = "float16"):
        super().__init__(sel)
        if dtype not in ("float16", "float32"):
            raise ValueError(f"map dtype must be 'float16' or 'float32', got {dtype!r}")
        self.dtype = dtype

    def begin(self, ctx, layer, device):
        heads = self.heads(layer, ctx.n_heads)
        every = heads == list(range(ctx.n_heads))  # all heads in order: no gather needed
        buf = ctx.buffers.get(self.name)
        if buf is None or buf.device != torch.device(device):
            buf = zeros((ctx.B, self.n_pairs(ctx.n_heads), ctx.T, ctx.T), self.dtype, device)
            ctx.buffers[self.name] = buf
        off = sum(len(self.heads(li, ctx.n_heads)) for li in self.sel if li < layer)  # layers before, in order
        return {"heads": None if every else torch.tensor(heads, device=device),
                "maps": buf[:, off : off + len(heads)]}

    def chunk(self, state, start, P, scratch, ctx, logp=None, rowscale=None):
        hs = state["heads"]
        rows = P if hs is None else P[:, hs]  # [B, H', c, w]
        dst = state["maps"][:, :, start : start + P.shape[2], : P.shape[3]]
        if rowscale is not None:
            torch.mul(rows, rowscale[0] if hs is None else rowscale[0][:, hs], out=dst)  # P = r·E, cast on write
        else:
            dst.copy_(rows)

    def end(self, state, ctx):
        return {"maps": state["maps"]}

    @staticmethod
    def _whole(per_layer: list[torch.Tensor]) -> torch.Tensor | None:
        """The buffer ``per_layer`` are consecutive head slices of, covering it all (:class:`KeptMaps`), or None."""
        base = per_layer[0]._base
        if base is None or any(t._base is not base for t in per_layer):
            return None
        off = 0
        for t in per_layer:
            if t.storage_offset() != base.storage_offset() + off * base.stride(1):
                return None
            off += t.shape[1]
        return base if off == base.shape[1] and base.shape[0] == per_layer[0].shape[0] else None

    def pack(self, key, per_layer):
        whole = self._whole(per_layer)  # every layer ran: the shared buffer is the result
        return whole if whole is not None else torch.cat(per_layer, dim=1)

    def result_bytes(self, B, T, ctx):
        return self.n_pairs(ctx.n_heads) * B * T * T * (2 if self.dtype == "float16" else 4)

    def land(self, out, b, f):
        return {"maps": out["maps"][b, :, f:, f:], "map_index": self.index(self.n_heads)}


class HeadOutputs(_HeadSelection):
    """Each chosen head's write to the residual stream after W_O, ``o_h W_O^h``, ``[B, H', T, d]`` float32 per layer.

    Lands as ``head_outputs [P, T, d]`` and ``head_output_index [P, 2]``. In a SinkTrace (which keeps whole layers)
    it becomes ``head_outputs [N, H, T, d]`` with ``head_output_layers [N]``.
    """

    name = "head_outputs"
    reads = ("o_input",)

    def read(self, source, x, w_o, ctx, layer):
        return {"out": head_contributions(x, w_o, ctx.n_heads, self.sel[layer], ctx.o_layout)}

    def result_bytes(self, B, T, ctx):
        return self.n_pairs(ctx.n_heads) * B * T * ctx.d_model * 4

    def land(self, out, b, f):
        return {"head_outputs": out["out"][b, :, f:], "head_output_index": self.index(self.n_heads)}

    def to_sinktrace(self, landed):
        return _whole_layers(landed["head_outputs"], landed["head_output_index"], "head_outputs", "head_output_layers")


def _whole_layers(x: np.ndarray, idx: np.ndarray, name: str, layers_name: str) -> dict[str, np.ndarray]:
    """``[P, T, d]`` over (layer, head) pairs → ``[N, H, T, d]`` + ``[N]`` layers (a SinkTrace keeps whole layers)."""
    layers = sorted(set(idx[:, 0].tolist()))
    per = len(idx) // max(1, len(layers))
    if per * len(layers) != len(idx):
        raise ValueError(f"{name}: a SinkTrace keeps whole layers, got an uneven head selection {idx.tolist()}")
    return {name: x.reshape(len(layers), per, *x.shape[1:]), layers_name: np.asarray(layers, dtype=np.int32)}


class HeadValues(_HeadSelection):
    """Value vectors after W_O, ``g_j = v_j W_O^h`` for every token j (:func:`value_writes`), ``[B, H', T, d]``.

    Lands as ``head_values [P, T, d]`` and ``head_value_index [P, 2]`` (SinkTrace fields of the same names).
    """

    name = "head_values"
    reads = ("values",)

    def read(self, source, x, w_o, ctx, layer):
        return {"g": value_writes(x, w_o, ctx.n_heads, ctx.n_kv_heads, self.sel[layer], ctx.o_layout)}

    def result_bytes(self, B, T, ctx):
        return self.n_pairs(ctx.n_heads) * B * T * ctx.d_model * 4

    def land(self, out, b, f):
        return {"head_values": out["g"][b, :, f:], "head_value_index": self.index(self.n_heads)}

    def to_sinktrace(self, landed):
        return _whole_layers(landed["head_values"], landed["head_value_index"], "head_values", "head_value_layers")


class _LayerList(Reduction):
    """A unit that reads the residual stream after a fixed list of layers (given at construction)."""

    reads = ("resid",)

    def __init__(self, layers):
        self._layers = sorted({int(l) for l in layers})
        if not self._layers:
            raise ValueError(f"{type(self).__name__} needs at least one layer, got {layers!r}")

    def layers(self, n_layers):
        return list(self._layers)


class PooledResidual(_LayerList):
    """The residual stream after chosen layers, pooled over each prompt: ``mean [B, d]`` and ``last [B, d]``.

    ``mean`` averages the block output over real tokens t ≥ 1 (position 0, the first-token sink with its massive
    activation, would dominate it); ``last`` is the last token. Lands as ``pooled_mean [Ls, d]``,
    ``pooled_last [Ls, d]`` and ``pooled_layers [Ls]`` (features for probes, Zhang et al. 2025 §5).
    """

    name = "pooled"

    def read(self, source, x, w_o, ctx, layer):
        qmask, first, n_real = ctx.on(x.device)
        pos = torch.arange(x.shape[1], device=x.device)[None, :]
        w = (qmask.bool() & (pos > first[:, None])).float()  # real tokens after the first
        mean = torch.einsum("bt,btd->bd", w, x.float()) / w.sum(1, keepdim=True).clamp_min(1)
        return {"mean": mean, "last": x[:, -1].float()}

    def result_bytes(self, B, T, ctx):
        return len(self._layers) * B * 2 * ctx.d_model * 4

    def land(self, out, b, f):
        return {"pooled_mean": out["mean"][:, b], "pooled_last": out["last"][:, b],
                "pooled_layers": np.asarray(self._layers, dtype=np.int32)}

    def __repr__(self):
        return f"PooledResidual({self._layers})"


class ResidualProjection(_LayerList):
    """The residual stream after chosen layers at every token, projected on a few directions: ``x_t @ basis``.

    ``basis [d, k]`` (e.g. a head's tag subspace) travels with the unit, so only ``[T, k]`` per layer leaves the
    model instead of ``[T, d]`` (k = 1..8 against d = 576 for SmolLM2). Accumulates ``coords [B, T, k]`` per layer;
    lands as ``resid_coords [Ls, T, k]`` and ``resid_coord_layers [Ls]`` (what TagExplorer's across-layers panel
    follows: a token's tag coordinate after each layer).
    """

    name = "resid_coords"

    def __init__(self, layers, basis):
        super().__init__(layers)
        basis = torch.as_tensor(np.asarray(basis, dtype=np.float32))
        if basis.ndim != 2 or basis.shape[1] < 1:
            raise ValueError(f"ResidualProjection basis must be [d, k] with k >= 1, got {list(basis.shape)}")
        self.basis = basis

    def bind(self, n_layers, n_heads, d_model):
        super().bind(n_layers, n_heads, d_model)
        if self.basis.shape[0] != d_model:
            raise ValueError(f"ResidualProjection basis has {self.basis.shape[0]} rows, the model width is {d_model}")

    def read(self, source, x, w_o, ctx, layer):
        return {"coords": x.float() @ self.basis.to(x.device)}

    def result_bytes(self, B, T, ctx):
        return len(self._layers) * B * T * int(self.basis.shape[1]) * 4

    def land(self, out, b, f):
        return {"resid_coords": out["coords"][:, b, f:], "resid_coord_layers": np.asarray(self._layers, np.int32)}

    def __repr__(self):
        return f"ResidualProjection({self._layers}, k={int(self.basis.shape[1])})"


class ResidualRows(_LayerList):
    """The residual stream (block output) after chosen layers at every real token, ``h [B, T, d]`` per layer.

    Lands as ``resid_rows [Ls, T, d]`` and ``resid_row_layers [Ls]``: ``[T, d]`` per layer leaves the model, so keep
    to one or a few layers (the PC control of :func:`sinkwidgets.tags.release` reads one).
    """

    name = "resid_rows"

    def read(self, source, x, w_o, ctx, layer):
        return {"h": x.float()}

    def result_bytes(self, B, T, ctx):
        return len(self._layers) * B * T * ctx.d_model * 4

    def land(self, out, b, f):
        return {"resid_rows": out["h"][:, b, f:], "resid_row_layers": np.asarray(self._layers, np.int32)}

    def __repr__(self):
        return f"ResidualRows({self._layers})"


class TokenLoss(Reduction):
    r"""Per-token next-token loss: ``nll [B, T-1]`` with ``nll[b, t] = −log softmax(z_{b,t})[x_{b,t+1}]`` (nats,
    float32) from the output logits and ``ctx.input_ids``. Lands as ``nll [n-1]`` (the prompt's real tokens: entry
    t scores real token t+1). Reads ``"logits"``, so the trace keeps the logits of every position.
    """

    name = "loss"
    reads = ("logits",)

    def layers(self, n_layers):
        return []

    def read(self, source, x, w_o, ctx, layer):
        ids = ctx.input_ids
        rows = []
        for b in range(ids.shape[0]):
            z = x[b, :-1].float()
            rows.append(torch.nn.functional.cross_entropy(z, ids[b, 1:].to(z.device), reduction="none"))
        return {"nll": torch.stack(rows)}

    def pack(self, key, per_layer):
        return per_layer[0]

    def result_bytes(self, B, T, ctx):
        return B * T * 4

    def land(self, out, b, f):
        return {"nll": out["nll"][b, f:]}

    def to_sinktrace(self, landed):
        return {}


class AttentionChange(_LayerList):
    r"""How a batch's edited rows move attention, against row 0 (the clean copy of the same prompt).

    For each chosen layer and head, with :math:`P` row 0's and :math:`P'` row b's probabilities, over queries
    :math:`t \ge` ``first_query`` (rows share one unpadded prompt of T tokens; :math:`S` = ``sink_cols``):

    - ``dsink [B-1, H]`` :math:`= \operatorname{mean}_t |\sum_{s \in S} (P'_{ts} - P_{ts})|`;
    - ``tv [B-1, H]`` :math:`= \operatorname{mean}_t \tfrac12 \sum_j |P'_{tj} - P_{tj}|` (total variation);
    - ``mass [B, H]`` :math:`= \operatorname{mean}_t \sum_{s \in S} P_{ts}` for every row.

    Packed as ``[S, B(-1), H]`` over the chosen layers; lands whole (``attn_change_*``, every row), since the
    statistics compare rows. :func:`sinkwidgets.interventions.project_out` and friends report them.
    """

    name = "attn_change"
    reads = ("probs",)

    def __init__(self, layers, sink_cols=(0,), first_query: int = 1):
        super().__init__(layers)
        self.sink_cols = torch.as_tensor(list(sink_cols), dtype=torch.long)
        self.first_query = int(first_query)

    def begin(self, ctx, layer, device):
        B, H = ctx.B, ctx.n_heads
        z = torch.zeros
        return {"sink": z(B, H, device=device), "dsink": z(B - 1, H, device=device), "tv": z(B - 1, H, device=device),
                "cols": self.sink_cols.to(device)}

    def chunk(self, state, start, P, scratch, ctx):
        fq = self.first_query
        if start + P.shape[2] <= fq:
            return
        P = P[:, :, max(0, fq - start):]
        cols = state["cols"][state["cols"] < P.shape[-1]]
        sink = P.index_select(-1, cols).sum(-1)  # [B, H, c]
        state["sink"] += sink.sum(-1)
        state["dsink"] += (sink[1:] - sink[:1]).abs().sum(-1)
        state["tv"] += 0.5 * (P[1:] - P[:1]).abs().sum(-1).sum(-1)

    def end(self, state, ctx):
        n = float(max(1, ctx.T - self.first_query))
        return {"mass": state["sink"] / n, "dsink": state["dsink"] / n, "tv": state["tv"] / n}

    def result_bytes(self, B, T, ctx):
        return len(self._layers) * 3 * B * ctx.n_heads * 4

    def land(self, out, b, f):
        return {"attn_change_" + k: v for k, v in out.items()}

    def to_sinktrace(self, landed):
        return {}

    def __repr__(self):
        return f"AttentionChange({self._layers}, sink_cols={self.sink_cols.tolist()})"


class TopAbsActivations(Reduction):
    """Per layer and row, the ``top_k`` largest ``|h|`` of the residual stream after the layer: signed values
    ``vals [B, k]``, flat indices ``idx [B, k]`` (``t·d + c``) and the exact median ``|h|`` ``med [B]`` over the
    whole (unpadded) row. :func:`sinkwidgets.interventions.find_massive` reads it; lands as ``scan_vals [L, k]``,
    ``scan_idx [L, k]`` and ``scan_med [L]``.
    """

    name = "top_abs"
    reads = ("resid",)

    def __init__(self, top_k: int):
        self.top_k = int(top_k)

    def read(self, source, x, w_o, ctx, layer):
        vals, idxs, meds = [], [], []
        for b in range(x.shape[0]):
            a = x[b].float()
            top = a.abs().flatten().topk(min(self.top_k, a.numel()))
            vals.append(a.flatten().index_select(0, top.indices))
            idxs.append(top.indices)
            meds.append(a.abs().flatten().median())
        return {"vals": torch.stack(vals), "idx": torch.stack(idxs), "med": torch.stack(meds)}

    def result_bytes(self, B, T, ctx):
        return ctx.n_layers * B * (self.top_k * 12 + 4)

    def land(self, out, b, f):
        return {"scan_vals": out["vals"][:, b], "scan_idx": out["idx"][:, b], "scan_med": out["med"][:, b]}

    def to_sinktrace(self, landed):
        return {}

    def __repr__(self):
        return f"TopAbsActivations(top_k={self.top_k})"


@dataclass
class UnitSet:
    """The units one trace runs, checked against the model: names unique, layers and heads in range."""

    units: list[Reduction]
    n_layers: int
    n_heads: int
    d_model: int
    active: dict[int, list[Reduction]] = field(default_factory=dict)
    final: list[Reduction] = field(default_factory=list)

    def __post_init__(self):
        names = [u.name for u in self.units]
        if len(set(names)) != len(names):
            raise ValueError(f"reduction names must be unique, got {names}")
        for u in self.units:
            u.bind(self.n_layers, self.n_heads, self.d_model)
            bad = [s for s in u.reads if s not in SOURCES]
            if bad or not u.reads:
                raise ValueError(f"{u!r} reads {u.reads}; a unit reads one or more of {SOURCES}")
            if "logits" in u.reads:
                self.final.append(u)
            for l in u.layers(self.n_layers):
                if not 0 <= l < self.n_layers:
                    raise ValueError(f"{u!r}: layer {l} is out of range, the model has layers 0..{self.n_layers - 1}")
                self.active.setdefault(l, []).append(u)
            if isinstance(u, _HeadSelection):
                for l in u.sel:
                    bad = [h for h in u.heads(l, self.n_heads) if not 0 <= h < self.n_heads]
                    if bad:
                        raise ValueError(f"{u!r}: heads {bad} of layer {l} are out of range, the model has heads "
                                         f"0..{self.n_heads - 1}")

    def at(self, layer: int, source: str) -> list[Reduction]:
        """The units that read ``source`` at ``layer``."""
        return [u for u in self.active.get(layer, ()) if source in u.reads]

    def needs(self, layer: int) -> set[str]:
        return {s for u in self.active.get(layer, ()) for s in u.reads}

    def needs_logits(self) -> bool:
        """Whether a unit reads the output logits (the executor then keeps every position's logits)."""
        return bool(self.final)

    def result_bytes(self, B: int, T: int, ctx: BatchContext) -> int:
        return sum(u.result_bytes(B, T, ctx) for u in self.units)
