"""The chunked executor: an SDPA forward pass, with attention probabilities recomputed from q and k in query chunks.

Eager attention materialises every layer's ``[B, H, T, T]`` probabilities; at long context that, not the
weights, dominates memory. Here the model runs its fast attention (SDPA) and, inside the nnsight trace, each
layer's post-RoPE queries and keys (``self_attn.source.apply_rotary_pos_emb_0.output``: for Gemma 3 that is
after its q/k RMS norms) are turned back into probabilities a few query rows at a time::

    P[:, :, s:s+c] = softmax(q[:, :, s:s+c] @ kᵀ · scale  [tanh soft-cap]  + causal / sliding-window / padding mask)

(:func:`.qk.attention_chunks`), and every chunk goes to the units that read ``"probs"`` (:mod:`.reductions`). The
largest temporary is one chunk, ``[B, H, c, T]`` float32 with ``c`` chosen to fit :data:`~.qk.CHUNK_BYTES`, so
memory stays close to a plain forward.

On a local CPU model three paths are faster than that recompute, fastest first (``meta["attention"]`` says which
ran; ``meta["attention_layers"]`` counts the layers of each):

- ``"own"``: a float32 layer with no padding, window, soft-cap or mask edit (:func:`.qk.own_attention_ok`)
  computes its attention *once*, in the package's query chunks (:func:`.qk.own_chunks`: scores, row max,
  ``exp``, one value GEMM with a column of ones for the row sums), and nnsight skips the layer's own attention
  call. At two or more torch threads and ``T >= OWN_PARALLEL_MIN_TOKENS`` the chunks are split over threads
  (:meth:`.collect.Collector.feed_probs_parts`), each with one torch thread and its own workspace, and mergeable
  units add their parts in a fixed order.
- ``"lse"``: a padded batch runs the flash kernel SDPA uses, which also returns each row's log-sum-exp, and the
  probabilities are ``exp(q·k·scale − lse)`` (:func:`.qk.lse_chunks`).
- otherwise (sliding windows, soft-caps, mask edits, non-CPU models and NDIF): SDPA, then the recompute above.

Locally these run inside each layer's attention call (:func:`lse_attention` asks the layer's :class:`ProbsHook`),
so the block reads no attention internals through nnsight's ``.source`` (its per-op interleaving cost ~5 % of a
256-token forward); layers with a mask edit, and every remote trace, take q and k from ``.source`` in the block.
Block outputs (``"resid"``) come from torch forward hooks too, except at layers with a ``"resid"`` edit and the last
layer read (:mod:`.hooks`, :func:`resid_hook_layers`).

The same block runs remotely (:mod:`.remote`): NDIF serves models with their default attention implementation,
under which eager probabilities do not exist, so remote traces always use this path. Everything the block calls
is plain torch and is shipped to the server by value.

Supported: Llama-style decoders whose attention calls ``apply_rotary_pos_emb`` (Llama/SmolLM2, Mistral, Qwen2/3,
Gemma 2/3, OLMo, Phi-3, ...).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..errors import ChunkedUnsupportedError, ReductionUnsupportedError
from .collect import Collector
from .edits import EditSet, set_attention_mask
from .hooks import first, hooked_layers, output_hook
from .qk import (  # noqa: F401 - re-exported
    CHUNK_BYTES,
    LSE_MAX_CHUNK,
    MAX_CHUNK,
    MIN_CHUNK,
    AttentionParams,
    attention_chunks,
    chunk_rows,
    lse_chunks,
    own_attention_ok,
    own_chunks,
    reduce_qk,
)
from .reductions import BatchContext, UnitSet

#: Prompts of at least this many tokens run a layer's own-path chunks in ``torch.get_num_threads()`` parallel
#: single-threaded parts (:meth:`.collect.Collector.feed_probs_parts`); shorter ones lose more to the threads than
#: they gain (SmolLM2, 2 cores, whole trace over an SDPA forward, one stream vs two parts: T = 384 1.30x vs 1.62x,
#: 1024 1.29x vs 1.42x, 2048 1.30x vs 1.29x, 4096 1.32x vs 1.29x; T = 8192 0.73 -> 0.62 s a layer).
OWN_PARALLEL_MIN_TOKENS = 2048


# ----------------------------------------------------------------------------- plan + traced block
@dataclass
class ChunkedPlan:
    """Envoys and per-layer attention parameters for the chunked block.

    ``params[l] = (scale, n_rep, sliding window or None, logit soft-cap or None)``; ``v_split`` > 0 means the
    value vectors are the last of ``v_split`` equal parts of a fused projection's output. ``lse_ops[l]``: the name
    of layer ``l``'s attention-function call in nnsight's ``.source`` whose output's second element is the row
    log-sum-exp (under :func:`lse_attention`, local runs only), or None: probabilities are then recomputed in full.
    """

    layers: list
    attns: list
    oprojs: list
    vprojs: list
    params: list
    v_split: int = 0
    lse_ops: list | None = None
    used: list = field(default_factory=list)
    direct: bool = False  # local runs under lse_attention: the attention call feeds "probs" itself (probs_hook)
    resid_hooks: bool = True  # with direct: block outputs feed "resid" from torch forward hooks (set_resid_hook)
    handles: list = field(default_factory=list)  # the forward hooks of set_resid_hook, removed by clear_hooks


def layer_plan(model, info) -> ChunkedPlan:
    """The chunked block's plan (read from the local or the meta module). Raises :class:`ChunkedUnsupportedError`."""
    from ..models.adapters import get_path

    ad = info.adapter
    if not ad.causal or ad.o_proj_layout != "linear" or ad.rotary == "none":
        raise ChunkedUnsupportedError(
            f"the chunked path needs a rotary (Llama-style) decoder; {info.name!r} ({info.architecture}) is not one. "
            "Use method='eager' (local only)."
        )
    layers = get_path(model, ad.layers)
    L = len(layers)
    attns, oprojs, vprojs, params = [], [], [], []
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
        head_dim = getattr(mod, "head_dim", info.head_dim)
        scale = getattr(mod, "scaling", None) or head_dim**-0.5
        window, softcap = ad.attention_facts(mod)  # the family's sources (models/adapters.py: FAMILIES)
        n_rep = getattr(mod, "num_key_value_groups", None) or info.n_heads // info.n_kv_heads
        attns.append(attn)
        oprojs.append(get_path(layers[li], ad.o_proj))
        vprojs.append(get_path(layers[li], ad.v_proj) if ad.v_proj else None)
        params.append((float(scale), int(n_rep), int(window) if window else None, float(softcap) if softcap else None))
    return ChunkedPlan([layers[li] for li in range(L)], attns, oprojs, vprojs, params, ad.v_split)


def read_values(vproj, v_split: int):
    """The value vectors ``[B, T, KV*Dh]`` from a value projection's output (the last part of a fused one)."""
    v = vproj.output
    if v_split:
        d = v.shape[-1] // v_split
        v = v[..., (v_split - 1) * d :]
    return v


def chunked_block(model, inputs: dict, fwd_kwargs: dict, plan: ChunkedPlan, units: UnitSet, ctx: BatchContext,
                  budget: int = CHUNK_BYTES, backend=None, edits: EditSet | None = None):
    """Run the units over one batch in a single SDPA forward, under ``edits`` → ``{name: {key: tensor}}`` (CPU).

    Per layer, in forward order: the attention mask of the ``"attn_mask"`` edits (set on the attention call
    before it runs), the value projection (``"values"``), the post-RoPE q/k turned into probability chunks
    (``"probs"``, under the same mask), the output projection's input (``"o_input"``), the ``"resid"`` edits and
    the block output (``"resid"``); after the last layer the logits (``"logits"``). A source is read only when an
    active unit or edit asks for it. Everything referenced inside the ``with`` is a tensor, a plain Python value,
    an envoy, or an object of this subpackage's torch-only modules, so the block can be shipped to NDIF
    (``backend``); the packed result is the one saved value the server sends back.
    """
    import nnsight

    with torch.no_grad(), model.trace(inputs, backend=backend, **fwd_kwargs):
        col = Collector(units, ctx, edits)
        workspace = {}  # the lse path's chunk buffer, allocated once for all layers
        direct = set()  # layers whose attention call feeds "probs" itself (local, no mask edit): no .source
        hooked = resid_hook_layers(plan, col)  # block outputs fed by forward hooks (local runs)
        for li in range(len(plan.layers)):  # install the hooks before any attention forward starts
            need = col.needs(li)  # (else a value read inside the forward comes before the hook exists)
            if li in hooked:
                set_resid_hook(plan, li, col)
            if "probs" not in need:
                continue
            if plan.direct and plan.lse_ops[li] and not col.edits.at(li, "attn_mask"):
                set_probs_hook(plan, li, col, ctx, budget, workspace)
                direct.add(li)
            else:
                _ = plan.attns[li].source
        last = max(direct, default=-1)  # the block must not pack before the last probs hook has fed its layer
        for li in range(len(plan.layers)):
            need = col.needs(li)
            if not need:
                continue
            oproj = plan.oprojs[li]
            params = AttentionParams.of(plan.params[li])
            hidden = None
            if "attn_mask" in need:
                hidden = col.hidden(li, ctx.qmask.device)
                set_attention_mask(plan.attns[li], col.attention_mask(li, params.window, ctx.qmask.device))
            if "values" in need:
                col.feed(li, "values", read_values(plan.vprojs[li], plan.v_split), oproj.weight)
            if "probs" in need and li not in direct:
                lse = None
                if plan.lse_ops and plan.lse_ops[li] and hidden is None and not params.window and not params.softcap:
                    op = getattr(plan.attns[li].source, plan.lse_ops[li])
                    args, kwargs = op.inputs  # (module, query, key, value, attention_mask): q and k post-RoPE
                    q, k = args[1], args[2]
                    B, H, T, D = q.shape
                    if own_attention_ok(q, k, args[3], ctx.qmask, params, kwargs=kwargs):
                        out = torch.empty(B, T, H, D, dtype=q.dtype, device=q.device)
                        rows = min(LSE_MAX_CHUNK, chunk_rows(B, H, T, budget))
                        n = torch.get_num_threads()
                        if n > 1 and T >= OWN_PARALLEL_MIN_TOKENS and col.parallel_ok(li):
                            col.feed_probs_parts(li, [own_chunks(q, k, args[3], params, out, rows, workspace, i, n)
                                                      for i in range(n)])
                        else:
                            col.feed_probs(li, own_chunks(q, k, args[3], params, out, rows, workspace))
                        op.skip((out, None))  # the layer's attention output is the one just computed
                        plan.used.append("own")
                        del q, k, args, kwargs, out, op
                        q = None
                    else:
                        lse = op.output[1]  # None: lse_attention fell back to SDPA
                        del args, kwargs, op
                else:
                    q, k = plan.attns[li].source.apply_rotary_pos_emb_0.output
                    B, H, T, _ = q.shape
                if q is not None:
                    if lse is not None:
                        chunks = lse_chunks(q, k, lse, ctx.qmask, params, min(LSE_MAX_CHUNK, chunk_rows(B, H, T, budget)),
                                            workspace)
                    else:
                        chunks = attention_chunks(q, k, ctx.qmask, params, chunk_rows(B, H, T, budget), hidden)
                    if plan.lse_ops:  # local runs only: what each layer used, for meta["attention"]
                        plan.used.append("lse" if lse is not None else "recompute")
                    col.feed_probs(li, chunks)
                    del q, k, lse, chunks
            if "o_input" in need:
                col.feed(li, "o_input", oproj.input, oproj.weight)
            if li == last:
                _ = plan.attns[li].output
            if "resid" in need and li not in hooked:
                out = plan.layers[li].output
                h = out[0] if isinstance(out, tuple) else out
                if col.edits.at(li, "resid"):
                    h = col.edit_resid(li, h)
                    plan.layers[li].output = (h, *out[1:]) if isinstance(out, tuple) else h
                col.feed(li, "resid", h)
                del h, out
        if col.needs_logits():
            col.feed_logits(model.output.logits)
        sw_results = nnsight.save(col.packed())
    return sw_results


def run_chunked(model, info, inputs: dict, fwd_kwargs: dict, units: UnitSet, ctx: BatchContext,
                budget: int = CHUNK_BYTES, edits: EditSet | None = None, lse: bool = True) -> tuple[dict, dict]:
    """The local chunked executor: one batch → ``(packed results, meta)``. The remote executor
    (:func:`sinkwidgets.tracing.remote.run_remote`) ships :func:`chunked_block` instead.

    ``lse`` (default): on a CPU model, a float32 layer with plain causal attention and no padding computes its
    attention once in the package's chunks (:func:`.qk.own_chunks`, the ``"own"`` path); with padding it runs as
    :func:`lse_attention` (the same flash kernel SDPA uses, which also returns each row's log-sum-exp) and gets its
    probabilities from it (:func:`.qk.lse_chunks`: one matmul and one ``exp`` per chunk); other layers, and
    ``lse=False``, run SDPA and recompute the softmax (:func:`.qk.attention_chunks`). ``meta["attention"]`` says
    which (module docstring)."""
    plan = layer_plan(model, info)
    check_values(info, units)
    hf = getattr(model, "_module", None)
    impl = "sdpa"
    if lse and hf is not None and _on_cpu(hf):
        names = [_lse_op(a) for a in plan.attns]
        if any(names) and install_lse_attention():
            impl, plan.lse_ops, plan.direct = LSE_ATTENTION, names, True
    switch = hf is not None and getattr(hf.config, "_attn_implementation", None) != impl
    prev = hf.config._attn_implementation if switch else None
    if switch:
        hf.set_attn_implementation(impl)
    try:
        out = chunked_block(model, inputs, fwd_kwargs, plan, units, ctx, budget, edits=edits)
    finally:
        clear_hooks(plan)
        if switch:
            hf.set_attn_implementation(prev)
    return out, {"method": "chunked", "attention": _attention_path(plan), "attention_layers": _path_counts(plan)}


def _path_counts(plan: ChunkedPlan) -> dict[str, int]:
    """How many layers' probabilities came from each path (``own``, ``lse``, ``recompute``) in the last block."""
    return {p: plan.used.count(p) for p in ("own", "lse", "recompute") if p in plan.used}


def _attention_path(plan: ChunkedPlan) -> str:
    """``meta["attention"]``: ``"own"`` if some layer computed its attention once for output and units
    (:func:`.qk.own_chunks`), else ``"lse"`` if the lse path was on, else ``"sdpa"`` (SDPA and a recompute)."""
    if "own" in plan.used:
        return "own"
    return "lse" if plan.lse_ops else "sdpa"


# ----------------------------------------------------------------------------- lse attention (local only)
#: The name :func:`install_lse_attention` registers with transformers' attention (and mask) interfaces.
LSE_ATTENTION = "sinkwidgets_lse"


def lse_attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None, is_causal=None,
                  **kwargs):
    """A transformers attention function → ``(output [B, T, H, D], lse [B, H, T] or None)``.

    The output is what ``sdpa`` attention computes, from the kernel SDPA dispatches to on CPU
    (``aten._scaled_dot_product_flash_attention_for_cpu``; grouped-query heads handled by the kernel), which also
    returns the row log-sum-exp ``lse_i = log Σ_j exp(q_i·k_j · scale + mask_ij)`` that :func:`.qk.lse_chunks`
    turns into exact probabilities. A boolean mask becomes an additive one (0 / −inf; fully masked padding rows
    give output 0, as SDPA does). Anything that kernel cannot express (a soft-cap, dropout, a position bias, a
    KV cache longer than the queries, a non-CPU tensor) goes to transformers' ``sdpa_attention_forward`` unchanged,
    and the lse is None (the chunked block then recomputes the softmax).
    """
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    hook = getattr(module, PROBS_HOOK, None)  # a chunked trace's units read this layer's probabilities
    if hook is not None:
        done = hook.before(query, key, value, dict(kwargs, dropout=dropout))
        if done is not None:
            return done
    T = query.shape[2]
    plain = (kwargs.get("softcap") is None and kwargs.get("position_bias") is None and not dropout
             and query.device.type == "cpu" and key.shape[2] == T and T > 1
             and query.dtype in (torch.float32, torch.bfloat16, torch.float16)
             and query.shape[1] % key.shape[1] == 0)
    if not plain:
        out = sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                     is_causal=is_causal, **kwargs)
        if hook is not None:
            hook.after(query, key, None)
        return out
    causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    mask = attention_mask
    if mask is not None:
        if mask.dtype == torch.bool:
            mask = torch.zeros(mask.shape, dtype=query.dtype, device=query.device).masked_fill_(~mask, float("-inf"))
        elif mask.dtype != query.dtype:
            mask = mask.to(query.dtype)
        mask = mask[..., :T, :T]
    out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
        query, key, value, 0.0, bool(causal and mask is None), attn_mask=mask, scale=scaling)
    if hook is not None:
        hook.after(query, key, lse)
    return out.transpose(1, 2).contiguous(), lse


#: The attribute :func:`set_probs_hook` sets on an attention module for the length of one local chunked trace.
PROBS_HOOK = "_sinkwidgets_probs_hook"


class ProbsHook:
    """One layer's ``"probs"`` work, done inside its attention call (:func:`lse_attention`) instead of through
    nnsight's ``.source`` (whose per-op interleaving cost ~17 ms a forward of SmolLM2 at T = 256, 2 threads: ~5 %).

    :meth:`before` gets the call's post-RoPE ``q``, ``k``, ``v``: where the own path is exact
    (:func:`.qk.own_attention_ok`) it computes the layer's attention once, in chunks that go to the units, and
    returns the output (the kernel is not run). Otherwise :meth:`after` gets the row log-sum-exp of the kernel
    (:func:`.qk.lse_chunks`), or None where SDPA ran (the softmax is recomputed, :func:`.qk.attention_chunks`).
    The same paths, the same units and the same results as the block's own per-layer code; local runs only."""

    def __init__(self, plan: ChunkedPlan, layer: int, col: Collector, ctx: BatchContext, budget: int,
                 workspace: dict):
        self.plan, self.layer, self.col, self.ctx, self.budget, self.workspace = plan, layer, col, ctx, budget, workspace
        self.params = AttentionParams.of(plan.params[layer])

    def before(self, q, k, v, kwargs):
        p, col, li = self.params, self.col, self.layer
        if not own_attention_ok(q, k, v, self.ctx.qmask, p, kwargs=kwargs):
            return None
        B, H, T, D = q.shape
        out = torch.empty(B, T, H, D, dtype=q.dtype, device=q.device)
        rows = min(LSE_MAX_CHUNK, chunk_rows(B, H, T, self.budget))
        n = torch.get_num_threads()
        if n > 1 and T >= OWN_PARALLEL_MIN_TOKENS and col.parallel_ok(li):
            col.feed_probs_parts(li, [own_chunks(q, k, v, p, out, rows, self.workspace, i, n) for i in range(n)])
        else:
            col.feed_probs(li, own_chunks(q, k, v, p, out, rows, self.workspace))
        self.plan.used.append("own")
        return out, None

    def after(self, q, k, lse) -> None:
        p, ctx = self.params, self.ctx
        B, H, T, _ = q.shape
        if lse is not None and not p.window and not p.softcap:
            chunks = lse_chunks(q, k, lse, ctx.qmask, p, min(LSE_MAX_CHUNK, chunk_rows(B, H, T, self.budget)),
                                self.workspace)
        else:
            lse = None
            chunks = attention_chunks(q, k, ctx.qmask, p, chunk_rows(B, H, T, self.budget))
        self.plan.used.append("lse" if lse is not None else "recompute")
        self.col.feed_probs(self.layer, chunks)


def set_probs_hook(plan: ChunkedPlan, layer: int, col: Collector, ctx: BatchContext, budget: int,
                   workspace: dict) -> None:
    """Let layer ``layer``'s attention call feed ``col`` its probabilities (:class:`ProbsHook`), until
    :func:`clear_hooks`."""
    attn = plan.attns[layer]
    setattr(getattr(attn, "_module", attn), PROBS_HOOK, ProbsHook(plan, layer, col, ctx, budget, workspace))


def resid_hook_layers(plan: ChunkedPlan, col: Collector) -> set[int]:
    """The layers whose block output a forward hook feeds (:func:`set_resid_hook`): on a local run (``plan.direct``)
    every layer read without a ``"resid"`` edit but the last one read (:func:`.hooks.hooked_layers`); remote: none.
    (Defined here, not as a lambda inside the traced block, which nnsight ships as source.)"""
    if not (plan.direct and plan.resid_hooks):
        return set()
    return set(hooked_layers(col, len(plan.layers), ("resid",), lambda li, s: not col.edits.at(li, s)))


def set_resid_hook(plan: ChunkedPlan, layer: int, col: Collector) -> None:
    """Feed ``col`` layer ``layer``'s block output (``"resid"``) from a torch forward hook on the block
    (:mod:`.hooks`), until :func:`clear_hooks`, instead of the traced block reading ``.output`` through nnsight.
    Only for a layer without a ``"resid"`` edit (an edit replaces the output, which the block does)."""
    plan.handles.append(output_hook(plan.layers[layer], lambda out: col.feed(layer, "resid", first(out))))


def clear_hooks(plan: ChunkedPlan) -> None:
    """Remove every :class:`ProbsHook` and :func:`set_resid_hook` hook of ``plan`` (run after each block)."""
    for attn in plan.attns:
        mod = getattr(attn, "_module", attn)
        if hasattr(mod, PROBS_HOOK):
            delattr(mod, PROBS_HOOK)
    while plan.handles:
        plan.handles.pop().remove()


def install_lse_attention() -> bool:
    """Register :func:`lse_attention` (and SDPA's mask builder) under :data:`LSE_ATTENTION`; False if this
    transformers or torch lacks what it needs."""
    try:
        from transformers import AttentionInterface
        from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

        _ = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
        AttentionInterface.register(LSE_ATTENTION, lse_attention)
        ALL_MASK_ATTENTION_FUNCTIONS.register(LSE_ATTENTION, sdpa_mask)
    except (ImportError, AttributeError, RuntimeError):
        return False
    return True


def _lse_op(attn) -> str | None:
    """The name of the attention-function call in ``attn.source`` (the last ``attention_interface_*``), or None."""
    try:
        names = [n for n in attn.source.names if n.startswith("attention_interface_")]
    except Exception:  # noqa: BLE001 - no source view: the block recomputes the softmax
        return None
    return names[-1] if names else None


def _on_cpu(hf) -> bool:
    try:
        return next(hf.parameters()).device.type == "cpu"
    except StopIteration:
        return False


def check_values(info, units: UnitSet) -> None:
    """Raise :class:`ReductionUnsupportedError` before tracing if a unit reads values the adapter cannot find."""
    if info.adapter.v_proj:
        return
    readers = [u for u in units.units if "values" in u.reads]
    if readers:
        raise ReductionUnsupportedError(
            f"{readers[0]!r} reads the value vectors, but sinkwidgets does not know where {info.name!r} "
            f"({info.architecture}) computes them (fused or unusual q/k/v projection). Supported: Llama-style "
            "models (v_proj), GPT-2 (c_attn) and BERT-style encoders (value).")
