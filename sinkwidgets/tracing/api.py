"""``trace`` and ``run_units``: tokenize prompts, batch them, pick an executor, land each prompt's results.

The layers of :mod:`sinkwidgets.tracing`, bottom to top: :mod:`.reductions` (the named in-trace units) and
:mod:`.collect` (hands sources to units), then the executors (:mod:`.eager`, :mod:`.chunked`, :mod:`.remote`),
then this module. Only small tensors leave the trace: per-key sink scores ``[L, H, T]``, first-token mass and
entropy ``[L, H]``, residual norms ``[L, T]`` and the top activations per layer; full ``[T, T]`` maps, per-head
outputs or value vectors only where asked. This keeps memory near a plain forward pass at long context, and makes
remote (NDIF) traces cheap to download.

Batches are left-padded; every summary is computed over real tokens only, with position ids that start at 0
at each prompt's first real token, so a prompt gives the same results alone or in a padded batch.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .._args import ArgumentTypeError, is_int, show
from .._args import head as parse_head
from .._args import layer as parse_layer
from .._args import layers as parse_layers
from ..errors import SinkwidgetsTypeError, SinkwidgetsValueError
from ..sinktrace import SinkTrace
from . import reductions as R
from .edits import Edit, EditSet
from .options import Encoded, RunOptions, _model_info, check_int, check_text, encode, tokenize  # noqa: F401  (tokenize: public as sw.tracing.tokenize)
from .reductions import TOP_K_ACTIVATIONS, BatchContext, UnitSet

#: ``method="auto"`` traces local prompts of at least this many tokens with the chunked path when the model
#: supports it (rotary decoders): the eager path holds a ``[H, T, T]`` float32 map per layer (2.4 GB for SmolLM2
#: at T = 8192), the chunked one stays near a plain forward pass. Measured crossover with the own path (issue 20,
#: ``benchmarks/long_context.py --cases chunked eager``, SmolLM2, same process, ratios to an SDPA last-logit
#: forward): T = 128: eager 1.30x vs chunked 1.47x (1 thread), 1.17-1.49x vs 1.46-1.63x (2 threads); T = 256:
#: eager 1.48x vs chunked 1.36x (1 thread), 1.71-1.98x vs 1.57-1.78x (2 threads); T = 384: 1.64x vs 1.27x; so
#: chunked from 256 tokens on.
AUTO_CHUNKED_TOKENS = 256


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


# ----------------------------------------------------------------------------- tokenization
_info = _model_info  # the model's ModelInfo, or the SinkwidgetsTypeError that names what to pass


# ----------------------------------------------------------------------------- argument checks
#: ``trace`` keeps every attention map by default when the longest prompt has at most this many tokens (all maps
#: of SmolLM2 at T = 256 are 35 MB in float16), so the first explorer a newcomer opens shows a map; longer prompts
#: keep none unless asked (the explorer then offers the summaries, and ``keep_maps`` picks heads).
AUTO_KEEP_MAPS_TOKENS = 256


def _parse_keep_maps(keep_maps, L: int, H: int) -> dict[int, list[int]]:
    """``keep_maps`` → ``{layer: [heads]}``. Accepts None/False, True/"all", a layer, a list of layers and of
    ``(layer, head)`` pairs; a bare tuple of two ints is ambiguous and refused. Layers and heads are checked by
    :mod:`sinkwidgets._args` (negative indices count from the end; out of range names the valid range)."""
    eg = "keep_maps=[(5, 2), 12]"
    if keep_maps is None or keep_maps is False:
        return {}
    if keep_maps is True or (isinstance(keep_maps, str) and keep_maps == "all"):
        return {l: list(range(H)) for l in range(L)}
    if isinstance(keep_maps, str) or not (is_int(keep_maps) or isinstance(keep_maps, (list, tuple, range, np.ndarray))):
        raise ArgumentTypeError(f"keep_maps={show(keep_maps)} is not understood: use None, 'all', a layer, or a list "
                                f"of layers and (layer, head) pairs, e.g. {eg}")
    if is_int(keep_maps):
        keep_maps = [keep_maps]
    if isinstance(keep_maps, tuple) and len(keep_maps) == 2 and all(is_int(x) for x in keep_maps):
        a, b = keep_maps
        raise SinkwidgetsValueError(f"keep_maps={keep_maps!r} is ambiguous: pass [({a}, {b})] for head {b} of layer "
                                    f"{a}, or [{a}, {b}] for all heads of layers {a} and {b}")
    out: dict[int, list[int]] = {}
    for item in keep_maps:
        if isinstance(item, (tuple, list)) and len(item) == 2 and all(is_int(x) for x in item):
            l, h = parse_head("keep_maps", item, L, H)
            heads = [h]
        elif is_int(item):
            l, heads = parse_layer("keep_maps", item, L), list(range(H))
        else:
            raise ArgumentTypeError(f"keep_maps={show(keep_maps)}: entries must be a layer (int) or a (layer, head) "
                                    f"pair, got {show(item)}; e.g. {eg}")
        out[l] = sorted(set(out.get(l, [])) | set(heads))
    return dict(sorted(out.items()))


def _parse_layers(sel, L: int, name: str = "keep_head_outputs") -> list[int]:
    """``keep_head_outputs`` / ``keep_head_values`` → sorted layers: None/False (none), True/"all", a layer, a
    list of layers; parsed by :func:`sinkwidgets._args.layers` (negative counts from the end)."""
    if sel is None or sel is False:
        return []
    if sel is True or (isinstance(sel, str) and sel == "all"):
        return list(range(L))
    if isinstance(sel, str):
        raise ArgumentTypeError(f"{name}={show(sel)}: {name} must be True, 'all', a layer or a list of layers (ints); "
                                f"e.g. {name}=[2, 5]")
    return parse_layers(name, sel, L, allow_empty=True)


# ----------------------------------------------------------------------------- running units
@dataclass
class PromptResult:
    """One prompt's landed results from :func:`run_units`: ``arrays`` holds every unit's arrays for its real
    tokens (names and shapes in each unit's docstring), ``meta`` how the trace was made."""

    text: str
    tokens: list[str]
    token_ids: np.ndarray
    arrays: dict[str, np.ndarray]
    meta: dict[str, Any] = field(default_factory=dict)
    by_unit: dict[str, dict[str, np.ndarray]] = field(default_factory=dict, repr=False)


def _texts(text_or_texts) -> tuple[list[str], bool]:
    single = isinstance(text_or_texts, str)
    if text_or_texts is None or not (single or isinstance(text_or_texts, (list, tuple))):
        raise SinkwidgetsTypeError(f"prompts must be a str or a list of str, got {type(text_or_texts).__name__}; "
                                   "e.g. trace(model, 'The cat sat on the mat.') or trace(model, ['One.', 'Two.'])")
    texts = [text_or_texts] if single else list(text_or_texts)
    if not texts:
        raise SinkwidgetsValueError(f"no prompts given (prompts={show(text_or_texts)}): pass a string or a non-empty "
                                    "list of strings, e.g. trace(model, ['One.', 'Two.'])")
    for t in texts:
        check_text(t)
    return texts, single


def run_units(
    model,
    texts: Sequence[str],
    units: Sequence[R.Reduction],
    *,
    edits: Sequence[Edit] = (),
    token_ids: Sequence[Sequence[int]] | None = None,
    add_bos: bool | None = None,
    max_tokens: int | None = None,
    batch_size: int = 8,
    method: str = "auto",
    remote: Any = False,
    progress: bool | None = None,
    desc: str | None = None,
    pin_mmap_threshold: bool | None = None,
    options: RunOptions | None = None,
    encoded: Sequence[Encoded] | None = None,
) -> list[PromptResult]:
    """Run in-trace reductions (:mod:`sinkwidgets.tracing.reductions`) over prompts → one :class:`PromptResult` each.

    The engine under :func:`trace` and :func:`sinkwidgets.tags.collect`: prompts are tokenized (see
    :func:`tokenize`), left-padded into batches of ``batch_size`` and run by one executor: ``"eager"``
    (probabilities of eager attention), ``"chunked"`` (an SDPA forward with probabilities recomputed from q and k)
    or, with ``remote``, the chunked block shipped to NDIF. ``"auto"``: chunked for remote traces and for local
    prompts of :data:`AUTO_CHUNKED_TOKENS` tokens or more where the model supports it, eager otherwise.

    ``edits`` (:mod:`sinkwidgets.tracing.edits`) change the forward pass; every executor applies them in forward
    order with the units, which then see the edited model (``meta["edits"]`` lists them). ``token_ids``: one list
    of token ids per text, used as given instead of tokenizing (``texts`` are then labels; ``add_bos`` and
    ``max_tokens`` do not apply). ``pin_mmap_threshold``: pin glibc's mmap threshold (:data:`MMAP_THRESHOLD_BYTES`,
    process-wide and lasting) before a local chunked trace; None (default) does so for every local chunked trace,
    False never (the interventions run many short chunked passes and leave the allocator alone).
    ``options``: a :class:`~sinkwidgets.tracing.options.RunOptions` carrying ``add_bos``, ``max_tokens``,
    ``batch_size``, ``method``, ``remote``, ``progress`` instead of (or beside) the keywords; an option set both
    ways to different values raises ``ValueError`` (given twice). ``encoded``: the texts already tokenized by
    :func:`sinkwidgets.tracing.options.encode` with the same ``add_bos`` / ``max_tokens`` (one ``Encoded(text, ids,
    used_bos, n_original)`` per text), used as given so a caller that needed the ids first does not tokenize twice.
    """
    info = _info(model)
    texts, _ = _texts(texts)
    _encoded = None if encoded is None else [Encoded(*e) for e in encoded]
    if _encoded is not None and len(_encoded) != len(texts):
        raise SinkwidgetsValueError(f"encoded: give one Encoded per text ({len(texts)}), got {len(_encoded)}")
    opts = RunOptions.resolve(options, run_units, add_bos=add_bos, max_tokens=max_tokens, batch_size=batch_size,
                              method=method, remote=remote, progress=progress)
    add_bos, max_tokens, batch_size = opts.add_bos, opts.max_tokens, opts.batch_size
    method, remote, progress = opts.method, opts.remote, opts.progress
    edits = EditSet(list(edits), info.n_layers, info.n_heads, info.d_model)
    if token_ids is not None:
        if len(token_ids) != len(texts):
            raise SinkwidgetsValueError(f"token_ids: give one list of ids per text ({len(texts)}), got "
                                        f"{len(token_ids)}")
        _encoded = [(t, [int(i) for i in ids], False, len(ids)) for t, ids in zip(texts, token_ids)]
        empty = [i for i, e in enumerate(_encoded) if len(e[1]) < 1]
        if empty:
            raise SinkwidgetsValueError(f"token_ids: the list of text {empty[0]} is empty; every text needs at least "
                                        "one token id (drop the text or give its ids)")
    if info.remote and not remote:
        remote = True  # a model from load_model(..., remote=True) has no local weights
    if remote and method == "eager":
        raise SinkwidgetsValueError("method='eager': remote traces use method='chunked' (NDIF serves models without "
                                    "eager attention); leave method='auto'")
    units = UnitSet(list(units), info.n_layers, info.n_heads, info.d_model)
    clash = {u.name for u in units.units} & {e.name for e in edits.edits}
    if clash:
        raise SinkwidgetsValueError(f"edits and units share the names {sorted(clash)}: pass name=... to the edit")
    # _encoded: trace() may already have tokenized the same texts with the same add_bos / max_tokens
    encoded = _encoded if _encoded is not None else encode(model, texts, opts)
    requested = method
    method = "chunked" if (remote or method == "chunked") else "eager"
    if requested == "auto" and method == "eager" and max(len(e[1]) for e in encoded) >= AUTO_CHUNKED_TOKENS:
        method = _auto_long_method(model, info)
    if method == "chunked" and not remote and pin_mmap_threshold is not False:
        _pin_mmap_threshold()
    batches = [encoded[i : i + batch_size] for i in range(0, len(encoded), batch_size)]
    label = desc or f"tracing {info.name}"
    if len(batches) == 1 and not remote and progress is not False and (
            progress or max(len(e[1]) for e in batches[0]) >= LAYER_PROGRESS_TOKENS):
        # one batch (one long prompt): a bar over its layers instead of a bar of one step
        with _layer_progress(model, info, label):
            return _run_batch(model, info, batches[0], units, remote, method, edits)
    show = progress if progress is not None else len(batches) > 1
    it = batches
    if show:
        from tqdm.auto import tqdm

        it = tqdm(batches, desc=label, unit="batch")
    out: list[PromptResult] = []
    for batch in it:
        out.extend(_run_batch(model, info, batch, units, remote, method, edits))
    return out


#: A local trace of one batch whose longest prompt has at least this many tokens shows a progress bar over the
#: layers when ``progress`` is None (one batch shows no batch bar). Measured on SmolLM2-135M, 2 shared cores (load
#: ~2), warm: one prompt of 512 tokens traces in ~1.1 s, 1024 in ~2.5 s, 2048 in ~5.3 s; so from ~2 s on.
LAYER_PROGRESS_TOKENS = 1024


@contextmanager
def _layer_progress(model, info, desc: str):
    """A ``tqdm.auto`` bar of ``n_layers`` steps, advanced by a torch forward hook at the end of each decoder layer
    (the executors do a layer's attention work inside its forward), removed afterwards; the command line's
    ``cli._layer_ticks`` counts the same way. Local traces only: a remote trace runs on NDIF, where no hook of this
    process fires."""
    from tqdm.auto import tqdm

    from ..models.adapters import get_path

    try:
        layers = list(get_path(getattr(model, "_module", model), info.adapter.layers))
    except (AttributeError, TypeError):  # blocks not found (a stand-in model): no bar, as cli._layer_ticks does
        yield None
        return
    bar = tqdm(total=len(layers), desc=desc, unit="layer")

    def step(*_):
        bar.update(1)  # returns None: a forward hook that returns a value replaces the layer's output

    handles = [m.register_forward_hook(step) for m in layers]
    try:
        yield bar
    finally:
        for h in handles:
            h.remove()
        bar.close()


def _run_batch(model, info, batch, units: UnitSet, remote, method: str, edits: EditSet) -> list[PromptResult]:
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
    dev = torch.device("cpu") if remote else _device(model)
    inputs = dict(input_ids=input_ids.to(dev), attention_mask=mask.to(dev), position_ids=position_ids.to(dev))
    ctx = BatchContext(qmask=mask.to(dev), first=first.to(dev), n_real=mask.sum(-1).to(dev), causal=info.adapter.causal,
                       n_layers=info.n_layers, n_heads=info.n_heads, n_kv_heads=info.n_kv_heads, d_model=info.d_model,
                       o_layout=info.adapter.o_proj_layout, input_ids=input_ids.to(dev))
    fwd = _forward_kwargs(info.adapter.causal, model)
    if units.needs_logits():
        fwd.pop("logits_to_keep", None)  # a unit scores every position
    t0 = time.perf_counter()
    if remote:
        from .remote import run_remote

        packed, run_meta = run_remote(model, info, remote, inputs, fwd, units, ctx, edits=edits)
    elif method == "chunked":
        from .chunked import run_chunked

        packed, run_meta = run_chunked(model, info, inputs, fwd, units, ctx, edits=edits)
    else:
        from .eager import run_eager

        packed, run_meta = run_eager(model, info, inputs, fwd, units, ctx, edits)
    elapsed = time.perf_counter() - t0
    arrays = {name: {k: _numpy(v) for k, v in keys.items()} for name, keys in packed.items()}
    results = []
    for b, (text, ids, used_bos, n_orig) in enumerate(batch):
        f = int(first[b])
        by_unit = {u.name: u.land(arrays[u.name], b, f) for u in units.units}
        by_unit.update({e.name: e.land(arrays[e.name], b, f) for e in edits.edits if arrays.get(e.name)})
        landed = {k: v for d in by_unit.values() for k, v in d.items()}
        meta = {
            "model": info.name, "hub_id": info.hub_id, "architecture": info.architecture, "family": info.family,
            "n_layers": info.n_layers, "n_heads": info.n_heads, "n_kv_heads": info.n_kv_heads,
            "d_model": info.d_model, "head_dim": info.head_dim, "causal": info.adapter.causal,
            "add_bos": used_bos, "bos_note": info.bos_note, "text": text, "truncated": len(ids) < n_orig,
            "n_tokens_original": n_orig, "batch_size": len(batch), "trace_seconds": round(elapsed, 3),
            "remote": bool(remote), **run_meta, "sinkwidgets_version": _version(),
        }
        if edits.edits:
            meta["edits"] = edits.describe()
        tokens = [model.tokenizer.decode([i]) for i in ids]
        results.append(PromptResult(text, tokens, np.asarray(ids, dtype=np.int64), landed, meta, by_unit))
    return results


def _numpy(t) -> np.ndarray:
    t = t.detach().cpu()
    if t.dtype == torch.bfloat16:
        t = t.float()
    return t.numpy()


# ----------------------------------------------------------------------------- trace
def trace(
    model,
    text_or_texts: str | Sequence[str],
    *,
    add_bos: bool | None = None,
    max_tokens: int | None = None,
    keep_maps: Any = "auto",
    keep_head_outputs: Any = False,
    keep_head_values: Any = False,
    map_dtype: str = "float16",
    batch_size: int = 8,
    top_k: int = TOP_K_ACTIVATIONS,
    remote: Any = False,
    method: str = "auto",
    progress: bool | None = None,
    edits: Sequence[Edit] = (),
    options: RunOptions | None = None,
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
        A BOS written in the text is never duplicated. The value used is recorded in ``trace.meta['add_bos']``.
    max_tokens : int, optional
        Truncate longer prompts to this many tokens (recorded in ``meta['truncated']`` and
        ``meta['n_tokens_original']``). Without it, a prompt longer than the model's context is an error.
    keep_maps : "auto", None, "all", int, list of layers or of (layer, head) pairs
        Which full attention maps ``[T, T]`` to keep (``map_dtype``, float16 by default). ``"auto"`` (default)
        keeps all of them when the longest prompt has at most :data:`AUTO_KEEP_MAPS_TOKENS` (256) tokens and none
        otherwise, and none for remote traces (they would all be downloaded); the choice is recorded in
        ``meta['keep_maps']``.
    keep_head_outputs : bool, "all" or list of layers
        Keep each head's write to the residual stream (after ``W_O``), ``[N, H, T, d]`` float32.
    keep_head_values : bool, "all" or list of layers
        Keep each head's value vectors after ``W_O``, ``g_j = v_j W_O^h`` for every token j, ``[N, H, T, d]``
        float32 (the "tags" of Zhang, Khan & Papyan 2025).
    batch_size : int
        Prompts per forward pass when tracing a list.
    top_k : int
        Largest-|h| residual activations to record per layer (for :func:`~sinkwidgets.massive_activations`).
    remote : bool, str or :class:`sinkwidgets.remote.RemoteOptions`
        Run on NDIF (``True``: the host and key from :func:`~sinkwidgets.load_model`, ``NDIF_HOST`` /
        ``NDIF_API_KEY`` or nnsight's config; a URL string overrides the host). Only the summaries come back.
        See ``docs/remote.md``. ``False`` runs locally.
    method : "auto", "eager" or "chunked"
        ``"eager"`` reads the probabilities of eager attention; ``"chunked"`` forms them in query chunks, so
        memory stays near a plain forward at long context (Llama-style rotary decoders): on a local CPU model an
        unpadded float32 layer computes its attention once, in those chunks, for its output and the summaries
        (``meta["attention"] == "own"``), a padded batch takes the row log-sum-exp from SDPA's kernel (``"lse"``),
        and everything else (remote, GPU, sliding windows, soft-caps, mask edits) runs SDPA and recomputes the
        softmax from q and k (``"sdpa"``); see :mod:`sinkwidgets.tracing.chunked`.
        ``"auto"``: chunked for remote traces and for local prompts of :data:`AUTO_CHUNKED_TOKENS` (256) tokens
        or more where the model supports it, eager otherwise. The method used is in ``trace.meta['method']``.
    progress : bool, optional
        Show a progress bar (``tqdm.auto``): over batches when there are several (default: shown), over the
        layers when there is one batch (default: shown for a local prompt of :data:`LAYER_PROGRESS_TOKENS` tokens
        or more, about 2 s of SmolLM2 on two cores). ``False`` shows nothing; remote traces show the batch bar.
    edits : list of :class:`sinkwidgets.tracing.edits.Edit`
        Trace the model *under* these edits (e.g. ``HideKeys(range(L), keys=[0])``: token 0 hidden from every
        query in every layer), applied to every prompt; ``trace.meta['edits']`` lists them.
    options : :class:`sinkwidgets.RunOptions`, optional
        ``add_bos``, ``max_tokens``, ``batch_size``, ``method``, ``remote``, ``progress`` in one object (one can
        serve many calls). A keyword left at its default gives way to the option; one set both ways to different
        values raises ``ValueError`` (given twice).
    """
    info = _info(model)
    texts, single = _texts(text_or_texts)
    if map_dtype not in ("float16", "float32"):
        raise SinkwidgetsValueError(f"map_dtype must be 'float16' or 'float32', got {show(map_dtype)}; e.g. "
                                    "map_dtype='float32' (exact maps) or 'float16' (half the memory)")
    check_int("top_k", top_k, 1)
    opts = RunOptions.resolve(options, trace, add_bos=add_bos, max_tokens=max_tokens, batch_size=batch_size,
                              method=method, remote=remote, progress=progress)
    remote = opts.remote
    L, H = info.n_layers, info.n_heads
    auto_maps = isinstance(keep_maps, str) and keep_maps == "auto"
    encoded = None
    if auto_maps and (remote or info.remote):
        keep_maps = None  # every map would be downloaded: remote traces keep maps only when asked
    elif auto_maps:
        encoded = encode(model, texts, opts)  # tokenized once: run_units reuses it
        longest = max(len(e[1]) for e in encoded)
        keep_maps = "all" if longest <= AUTO_KEEP_MAPS_TOKENS else None
    maps_sel = _parse_keep_maps(keep_maps, L, H)
    ho_layers = _parse_layers(keep_head_outputs, L, "keep_head_outputs")
    hv_layers = _parse_layers(keep_head_values, L, "keep_head_values")
    units: list[R.Reduction] = [R.AttentionSummary(), R.ResidualSummary(top_k)]
    if maps_sel:
        units.append(R.KeptMaps(maps_sel, map_dtype))
    if ho_layers:
        units.append(R.HeadOutputs({l: None for l in ho_layers}))
    if hv_layers:
        units.append(R.HeadValues({l: None for l in hv_layers}))
    results = run_units(model, texts, units, options=opts, encoded=encoded, edits=edits)
    if auto_maps:
        keep_note = "auto: all" if maps_sel else ("auto: none (remote)" if remote or info.remote else
                                                 f"auto: none (prompt > {AUTO_KEEP_MAPS_TOKENS} tokens)")
    else:
        keep_note = "chosen" if maps_sel else "none"
    out = []
    for r in results:
        fields: dict[str, Any] = {}
        for u in units:
            fields.update(u.to_sinktrace(r.by_unit[u.name]))
        out.append(SinkTrace(tokens=r.tokens, token_ids=r.token_ids, meta={**r.meta, "keep_maps": keep_note},
                             **fields))
    return out[0] if single else out


def _auto_long_method(model, info) -> str:
    """``method="auto"`` for a long local prompt: chunked where the model supports it, else eager."""
    from ..errors import ChunkedUnsupportedError
    from .chunked import layer_plan

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
    from .. import __version__

    return __version__


# ----------------------------------------------------------------------------- loading
def load_model(name_or_path, *, remote: bool = False, **kwargs):
    """Load a model for tracing: locally (:func:`sinkwidgets.models.load_model`) or, with ``remote=True``, as a
    config-only model whose traces run on NDIF (:func:`sinkwidgets.tracing.remote.load_remote_model`).

    This is ``sinkwidgets.load_model``; see :func:`sinkwidgets.models.load_model` for every argument and
    ``docs/remote.md`` for the remote ones (``host``, ``api_key``, ``timeout``, ``job_timeout``,
    ``max_result_bytes``).
    """
    if remote:
        from .remote import load_remote_model

        kwargs.pop("device", None)
        kwargs.pop("validate", None)
        kwargs.pop("fetch", None)
        return load_remote_model(name_or_path, **kwargs)
    from ..models.loading import load_model as load_local

    return load_local(name_or_path, **kwargs)


#: Public name for the widgets (``"eager"`` or ``"chunked"`` for a long local prompt under ``method="auto"``).
auto_long_method = _auto_long_method
