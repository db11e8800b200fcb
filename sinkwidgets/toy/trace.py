"""Trace a toy model on one sequence into a :class:`~sinkwidgets.sinktrace.SinkTrace`.

The trace looks like one from a language model (``L = n_layers``, ``H = n_heads``, ``T`` real tokens), so the
sink widgets and the tag explorer work on toy models unchanged. Extra attention slots (sink token, bias slot,
the null slot of softmax₁) are not tokens: their mass is recorded in ``meta["extra_sink_mass"]``.
"""

from __future__ import annotations

import numpy as np
import torch

from .._args import ArgumentTypeError
from .._args import integer as check_integer
from .._args import seed as check_seed
from ..errors import SinkwidgetsValueError
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
        raise ArgumentTypeError("model: trace_toy needs a sinkwidgets.toy.TinyTransformer, got "
                                f"{type(model).__name__}; e.g. model = sinkwidgets.toy.train(seed=0).model")
    cfg = model.config
    if isinstance(batch_or_seed, Batch):
        batch = batch_or_seed
    elif isinstance(batch_or_seed, int) and not isinstance(batch_or_seed, bool):
        batch, index = make_batch(1, cfg.T, batch_or_seed), 0
    else:
        raise ArgumentTypeError(f"batch_or_seed={batch_or_seed!r}: batch_or_seed must be a Batch or an int seed, got "
                                f"{type(batch_or_seed).__name__}; e.g. batch_or_seed=0")
    if not -len(batch) <= index < len(batch):
        raise SinkwidgetsValueError(f"index={index} is out of range for a batch of {len(batch)} sequences; pick one in "
                                    f"0..{len(batch) - 1}")
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


@torch.no_grad()
def tag_data(model: TinyTransformer, n: int = 64, seed: int = 0, keep_maps: bool = True):
    """Run ``model`` on ``n`` averaging sequences and pack what :mod:`sinkwidgets.tags` and
    :class:`sinkwidgets.TagExplorer` need, as a :class:`~sinkwidgets.tags.TagData` (every head of every layer).

    Per sequence (``T`` real tokens, extra slots left out) and head ``(l, h)``:

    * ``head_outputs``: the head's write to the residual, ``o_t = Σ_j A[t, j] v_j W_O^h`` (gated when the model
      has a gate; the extra slots' contribution included, as in the forward pass);
    * ``head_values``: ``g_j = v_j W_O^h`` for every real token ``j`` (the tag vectors of the sinks among them;
      ungated);
    * ``sink_scores``: Gu et al. α of every real key, ``(1 / (T − k)) Σ_{t ≥ k} A[t, k]``;
    * ``maps`` (``keep_maps``): every head's attention on the real tokens.

    Tokens are ``"<bos>"``, ``"<sep>"`` and the values (``"+0.53"``); ``token_ids`` are the token types
    (0 BOS, 1 SEP, 2 NUM); ``meta`` records ``model="toy-averaging"``, the config and each sequence's SEP position.
    The sequences come from :func:`~sinkwidgets.toy.make_batch` with ``seed``.
    """
    from ..tags.data import TagData

    if not isinstance(model, TinyTransformer):
        raise ArgumentTypeError(f"model: tag_data needs a sinkwidgets.toy.TinyTransformer, got "
                                      f"{type(model).__name__}; e.g. tag_data(sinkwidgets.toy.train().model)")
    # n: sequences (>= 2: the tag EV is held out over sequences); seed: the make_batch seed. numpy ints accepted.
    n = check_integer("n", n, minimum=2, example=64)
    seed = check_seed("seed", seed)
    if not isinstance(keep_maps, (bool, np.bool_)):
        raise ArgumentTypeError(f"keep_maps={keep_maps!r}: keep_maps must be True or False; e.g. "
                                      "keep_maps=False")
    keep_maps = bool(keep_maps)
    cfg = model.config
    batch = make_batch(n, cfg.T, seed)
    was = model.training
    model.eval()
    try:
        it = model(batch.types, batch.values, return_internals=True)
        values = []
        for layer, x in zip(model.layers, it.resid[:-1]):
            h = model._norm(x)  # per-token norm: the real positions alone give the same values
            v = layer.v(h).view(n, cfg.T, cfg.n_heads, cfg.d_head).transpose(1, 2)  # [B, H, T, dh]
            Wo = layer.o.weight.t().reshape(cfg.n_heads, cfg.d_head, cfg.d_model)
            values.append(torch.einsum("bhtk,hkd->bhtd", v, Wo))
    finally:
        model.train(was)
    L, H, T = cfg.n_layers, cfg.n_heads, cfg.T
    heads = [(layer, head) for layer in range(L) for head in range(H)]
    A = torch.stack(it.attn, 1).float()  # [B, L, H, T, T]
    O = torch.stack(it.head_out, 1).float()  # [B, L, H, T, d]
    V = torch.stack(values, 1).float()
    counts = (T - torch.arange(T)).float()
    alpha = A.sum(-2) / counts  # [B, L, H, T]
    tokens = [batch.tokens(i) for i in range(n)]
    return TagData.from_prompts(
        tokens,
        heads=heads,
        head_outputs=[O[i].reshape(L * H, T, -1).numpy() for i in range(n)],
        head_values=[V[i].reshape(L * H, T, -1).numpy() for i in range(n)],
        sink_scores=[alpha[i].numpy() for i in range(n)],
        maps=[A[i].reshape(L * H, T, T).numpy().astype("float16") for i in range(n)] if keep_maps else None,
        map_index=heads if keep_maps else None,
        token_ids=[batch.types[i].numpy() for i in range(n)],
        meta={"model": "toy-averaging", "architecture": "toy", "n_layers": L, "n_heads": H,
              "d_model": cfg.d_model, "add_bos": True, "causal": True, "toy_config": cfg.to_dict(),
              "seed": seed, "sep_positions": [int(s) for s in batch.sep]},
    )
