"""Trace a toy model on one sequence into a :class:`~sinkwidgets.sinktrace.SinkTrace`.

The trace looks like one from a language model (``L = n_layers``, ``H = n_heads``, ``T`` real tokens), so the
sink widgets and the tag explorer work on toy models unchanged. Extra attention slots (sink token, bias slot,
the null slot of softmax₁) are not tokens: their mass is recorded in ``meta["extra_sink_mass"]``.
"""

from __future__ import annotations

import torch

from ..sinktrace import SinkTrace
from .metrics import row_entropy
from .model import TinyTransformer
from .task import Batch, make_batch


@torch.no_grad()
def trace_toy(model: TinyTransformer, batch_or_seed: Batch | int = 0, index: int = 0,
              keep_maps: bool = True, keep_head_outputs: bool = True) -> SinkTrace:
    """Run ``model`` on one averaging sequence and summarise its attention as a SinkTrace.

    Parameters
    ----------
    model : TinyTransformer
    batch_or_seed : Batch or int
        A batch (sequence ``index`` of it is traced) or a seed for :func:`make_batch` (one sequence of the
        model's ``T``).
    index : int
        Which sequence of the batch.
    keep_maps : bool
        Keep all ``L × H`` attention maps (float32, ``[L·H, T, T]``, ``map_index`` rows ``(layer, head)``).
    keep_head_outputs : bool
        Keep ``head_outputs`` ``[L, H, T, d]``: each head's contribution to the residual (after ``W_O``).

    Returns
    -------
    SinkTrace
        With, for real tokens ``0..T-1`` and ``A = A^{l,h}``:

        * ``sink_scores[l, h, k] = (1 / (T − k)) Σ_{t ≥ k} A[t, k]`` (Gu et al. α);
        * ``first_token_mass[l, h] = mean_{t ≥ 1} A[t, 0]`` (BOS);
        * ``entropy[l, h] = mean_t H(p_t)`` in nats, where ``p_t`` is the full row including the extra slots
          (renormalised for sigmoid attention, whose rows need not sum to 1);
        * ``resid_norms[l, t] = ‖x_t^{(l+1)}‖`` (residual after layer ``l``);
        * tokens ``"<bos>"``, ``"<sep>"``, ``"+0.53"``; ``token_ids`` = token types (0 BOS, 1 SEP, 2 NUM);
        * ``meta``: ``model="toy-averaging"``, ``architecture="toy"``, sizes, ``add_bos=True``,
          ``causal=True``, ``text``, ``sep_position``, ``values``, ``toy_config``, ``extra_slots`` (names),
          ``extra_sink_mass`` ``[L][H]`` (mean over queries of the mass on all extra slots) and
          ``extra_sink_mass_by_slot`` ``{name: [L][H]}``.
    """
    if not isinstance(model, TinyTransformer):
        raise ValueError(f"trace_toy needs a sinkwidgets.toy.TinyTransformer, got {type(model).__name__}")
    cfg = model.config
    if isinstance(batch_or_seed, Batch):
        batch = batch_or_seed
    elif isinstance(batch_or_seed, int) and not isinstance(batch_or_seed, bool):
        batch, index = make_batch(1, cfg.T, batch_or_seed), 0
    else:
        raise ValueError(f"batch_or_seed must be a Batch or an int seed, got {type(batch_or_seed).__name__}")
    if not -len(batch) <= index < len(batch):
        raise ValueError(f"index={index} is out of range for a batch of {len(batch)} sequences")
    one = batch[index]
    was = model.training
    model.eval()
    try:
        it = model(one.types, one.values, return_internals=True)
    finally:
        model.train(was)
    L, H, T = cfg.n_layers, cfg.n_heads, one.T
    A = torch.stack([a[0] for a in it.attn]).float()  # [L, H, T, T]
    E = torch.stack([e[0] for e in it.extra]).float()  # [L, H, T, n_extra]
    counts = (T - torch.arange(T)).float()
    sink_scores = A.sum(2) / counts  # column sums over t >= k (A is causal)
    first = A[:, :, 1:, 0].mean(-1) if T > 1 else A[:, :, :, 0].mean(-1)
    full = torch.cat([A, E], dim=-1).clamp(min=0)
    full = full / full.sum(-1, keepdim=True).clamp(min=1e-30)
    entropy = row_entropy(full).mean(-1)
    resid = torch.stack([r[0] for r in it.resid[1:]])  # [L, T, d]
    tokens = one.tokens(0)
    extra_by = {name: E[..., i].mean(-1).tolist() for i, name in enumerate(it.extra_names)}
    meta = {
        "model": "toy-averaging",
        "architecture": "toy",
        "n_layers": L,
        "n_heads": H,
        "n_kv_heads": H,
        "d_model": cfg.d_model,
        "add_bos": True,
        "causal": True,
        "text": " ".join(tokens),
        "sep_position": int(one.sep[0]),
        "values": [round(float(v), 6) for v in one.values[0]],
        "prediction": [round(float(v), 6) for v in it.pred[0]],
        "target": [round(float(v), 6) for v in one.target[0]],
        "toy_config": cfg.to_dict(),
        "extra_slots": list(it.extra_names),
        "extra_sink_mass": E.sum(-1).mean(-1).tolist(),
        "extra_sink_mass_by_slot": extra_by,
    }
    kw = {}
    if keep_maps:
        kw["maps"] = A.reshape(L * H, T, T).numpy().astype("float32")
        kw["map_index"] = [(layer, head) for layer in range(L) for head in range(H)]
    if keep_head_outputs:
        kw["head_outputs"] = torch.stack([h[0] for h in it.head_out]).numpy()  # [L, H, T, d]
        kw["head_output_layers"] = list(range(L))
    return SinkTrace(
        sink_scores=sink_scores.numpy(),
        tokens=tokens,
        first_token_mass=first.numpy(),
        entropy=entropy.numpy(),
        resid_norms=resid.norm(dim=-1).numpy(),
        token_ids=one.types[0].numpy(),
        meta=meta,
        **kw,
    )
