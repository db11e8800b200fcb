r"""The four experiments, each a thin function over tracing edits and units run by the engine.

Every function tokenizes a text, builds the edits (:mod:`sinkwidgets.tracing.edits`, from the arguments parsed
in :mod:`.edits`) and the units (:class:`~sinkwidgets.tracing.reductions.TokenLoss`, optionally
:class:`~sinkwidgets.tracing.reductions.AttentionChange`), and runs them with
:func:`sinkwidgets.tracing.run_units` on the chunked executor (an SDPA forward; locally or on NDIF): the clean
text and its edited copies are the rows of one batch (row 0 is the clean copy), so one forward pass per text
compares them. The definitions (NLL, ``sink_delta``, ``tv``, ``sink_mass``) are in the package docstring.
"""

from __future__ import annotations

import numpy as np

from .._args import choice as _choice
from .._args import positions as _positions
from .._args import show
from ..errors import SinkwidgetsTypeError
from ..tracing.edits import HideKeys, MassiveAblation, ProjectHeadWrite, ProjectOut
from ..tracing.options import DEFAULT, RunOptions
from ..tracing.reductions import AttentionChange, TokenLoss, TopAbsActivations
from .edits import (
    _checked,
    _layers_arg,
    _positions_weight,
    _progress,
    _texts,
    _tokenize,
    check_int,
    check_layer,
    check_spec,
    layer_sets,
    massive_args,
    orthonormal_basis,
    per_text_positions,
    prefixes,
    sink_tokens,
)
from .results import InterventionError, InterventionResult, MassiveSpec, _collect_attention

#: Rows (clean + edited copies) per forward pass; each row keeps a ``[T, vocab]`` float32 logits tensor.
DEFAULT_BATCH = 4
#: Queries with ``t >= FIRST_QUERY`` enter the attention statistics (query 0 can only attend to itself).
FIRST_QUERY = 1


# ============================================================================= running rows through the engine
def _model_info(model):
    info = getattr(model, "sinkwidgets", None)
    if info is None:
        raise SinkwidgetsTypeError(f"model={show(model)} ({type(model).__name__}) is not a sinkwidgets model: pass a "
                                   "model from sinkwidgets.load_model(...) (it carries model.sinkwidgets)")
    if not info.causal:
        raise InterventionError(f"{info.name!r} is an encoder (not causal): interventions measure next-token NLL and "
                                "need a causal language model such as 'smollm2-135m'")
    return info


class _Engine:
    """Runs one text's rows (the clean copy and its edited copies) with :func:`~sinkwidgets.tracing.run_units` on
    the chunked executor: locally under SDPA, or on NDIF (``remote``)."""

    def __init__(self, model, info, remote):
        from ..errors import ChunkedUnsupportedError
        from ..tracing.chunked import layer_plan

        self.model, self.info = model, info
        self.remote = remote if remote is not None else info.remote
        if info.remote and not self.remote:
            raise InterventionError(f"{info.name!r} was loaded with remote=True (no local weights): pass remote=True "
                                    "or load it locally")
        try:
            layer_plan(model, info)
        except ChunkedUnsupportedError as exc:
            raise InterventionError(
                f"{info.name!r} ({info.family}): its attention does not call apply_rotary_pos_emb, so queries and keys "
                "cannot be read for attention statistics; pass attention_layers=() or use a Llama-style model"
            ) from exc

    def run(self, text: str, rows: list[list[int]], units: list, edits: list) -> list:
        """``rows`` (token ids, one list per batch row) → one :class:`~sinkwidgets.tracing.api.PromptResult` each."""
        from ..tracing.api import run_units

        return run_units(self.model, [text] * len(rows), units, edits=edits, token_ids=rows, batch_size=len(rows),
                         method="chunked", remote=self.remote or False, progress=False, pin_mmap_threshold=False)


def _units(stats: list[int], sink_cols) -> list:
    """The per-token loss, plus the attention changes of the ``stats`` layers (keys ``sink_cols``) if any."""
    return [TokenLoss()] + ([AttentionChange(stats, sink_cols, FIRST_QUERY)] if stats else [])


def _attention_of(rows) -> dict:
    """``{"dsink", "tv": [S, B-1, H], "mass": [S, B, H]}`` of one run (the unit lands the whole batch)."""
    a = rows[0].by_unit["attn_change"]
    return {"dsink": a["attn_change_dsink"], "tv": a["attn_change_tv"], "mass": a["attn_change_mass"]}


def _stats_layers(attention_layers, layer: int, L: int) -> list[int]:
    """``attention_layers``: ``"after"`` (layers ``layer+1..L-1``), a selection, or None/() for none."""
    if isinstance(attention_layers, str) and attention_layers == "after":
        return list(range(layer + 1, L))
    return _layers_arg(attention_layers, L, "attention_layers")


# ============================================================================= project_out

def _resolve(options, entry, **keywords) -> tuple:
    """The run options of an intervention entry point, ``keywords`` and ``options=RunOptions(...)`` merged by
    :meth:`RunOptions.resolve` (an option given both ways to different values raises ``ValueError``), returned as
    a tuple in ``keywords``' order. ``batch_size=None`` (project_out: one pass per text batch chosen inside) stays
    None unless ``options`` sets it."""
    none_batch = "batch_size" in keywords and keywords["batch_size"] is None
    if none_batch:
        del keywords["batch_size"]
    opts = RunOptions.resolve(options, entry, **keywords)
    out = []
    for name in keywords if not none_batch else [*keywords, "batch_size"]:
        out.append(getattr(opts, name))
    if none_batch and (options is None or options.batch_size is DEFAULT):
        out[-1] = None
    return tuple(out)

def _sink_sets(sink_positions, texts) -> tuple[bool, list[list[int]]]:
    """``(per_text, sets)``: ``sink_positions`` as one sorted set of positions for every text, or one per text (a
    list of lists, whose count must match ``texts``). Parsed by :func:`sinkwidgets._args.positions` before any
    model work (one int or a list of ints, or one list per text; strings, floats, None refused); an empty list or
    tuple means no sink positions. Negative positions are refused: sink keys count from the start of the text (as
    ``mask_sink``'s ``token``)."""
    if isinstance(sink_positions, (list, tuple, range, np.ndarray)) and len(sink_positions) == 0:
        return False, [[]]
    pos = _checked(_positions, "sink_positions", sink_positions, n_texts=len(texts))
    per_text = pos.per_text is not None
    sets = [sorted(set(p)) for p in (pos.per_text if per_text else [pos.shared])]
    neg = [p for s in sets for p in s if p < 0]
    if neg:
        raise InterventionError(f"sink_positions={show(sink_positions)}: position {neg[0]} is negative; sink positions "
                                "count from the start of the text, e.g. sink_positions=(0,) (the first token)")
    return per_text, sets


def project_out(model, texts, layer: int, basis, *, positions="non_sink", sink_positions=(0,),
                attention_layers="after", add_bos: bool | None = None, max_tokens: int | None = None,
                remote=None, progress: bool = True, head=None, batch_size: int | None = None,
                options: RunOptions | None = None) -> InterventionResult:
    r"""Project a subspace out of the residual stream after ``layer`` at chosen positions; measure what changes.

    With :math:`U \in \mathbb R^{d\times r}` an orthonormal basis of ``basis`` (QR), every chosen position gets

    .. math:: h_t \leftarrow h_t - U U^\top h_t

    on the residual stream *after* block ``layer`` (``layers[layer].output``), and the rest of the model runs on
    the edited stream. This is the "release" test of Zhang, Khan & Papyan (arXiv 2502.00919, §4): if later heads
    retrieve tokens by the tag (the sink heads' value directions), removing the tag subspace moves their attention.

    Parameters
    ----------
    model : a model from :func:`sinkwidgets.load_model` (local, or ``remote=True``: runs on NDIF).
    texts : str or list of str.
    layer : int, block index ``0..L-1``; the projection applies to its output.
    basis : array-like ``[d, r]`` (``d`` = ``model.sinkwidgets.d_model``), float; need not be orthonormal, must have
        rank ``r``. A 1-D ``[d]`` vector is one direction.
    positions : ``"non_sink"`` (default: every token but ``sink_positions``), ``"all"``, a list of positions, a
        bool mask ``[T]``, a list of those (one per text), or a callable ``(text_index, T) -> positions``.
    sink_positions : positions of the sink tokens (default ``(0,)``), or a list of those (one per text): excluded by
        ``"non_sink"``, and the keys whose attention is measured by ``sink_delta`` / ``sink_mass``.
    attention_layers : ``"after"`` (default: layers ``layer+1..L-1``), a list / range string, or ``None``/``()`` for
        no attention statistics.
    add_bos, max_tokens : tokenization (see :func:`sinkwidgets.trace`).
    remote : None (the model's own setting), False, True or a host URL.
    progress : ``False`` hides the progress bar over the texts (shown when there are several).
    head : int, optional. Remove only head ``head``'s own write along :math:`U` at layer ``layer``:
        :math:`h_t \leftarrow h_t - (c_t U) U^\top` with :math:`c_t = o_{t,h} W_O^h` the head's contribution at
        token t (computed in the trace from the output projection's input), instead of the whole stream's
        component (:class:`sinkwidgets.tracing.edits.ProjectHeadWrite`). ``meta["head"]`` records it.

    **Several subspaces at once.** ``basis`` may be a dict ``{name: basis}`` (each ``[d, r_k]``; ranks may differ):
    every text then runs as one batch of the clean row and one edited row per subspace (row ``k + 1`` edits with
    subspace ``k``, :class:`~sinkwidgets.tracing.edits.ProjectOut` restricted to that row by its weights), so the
    clean row is computed once per text instead of once per subspace. ``head`` may then be a dict ``{name: head or
    None}`` (a name missing from it: the whole stream). The numbers equal separate calls up to float32 batching
    (``|Δ| ~ 1e-6``). ``batch_size``: rows per forward pass (clean + edited; default: all of them, split so that the
    ``[rows, T, vocab]`` float32 logits stay under :data:`LOGITS_BUDGET` bytes); with fewer rows than subspaces the
    clean row is recomputed in each pass and its first copy is reported.

    Returns
    -------
    InterventionResult
        ``conditions = ["clean", "projected"]``; ``nll[c][i]`` per-token NLL ``[T_i - 1]`` before / after;
        ``attention``: ``layers``, ``sink_delta [N, S, 1, H]`` (mean :math:`|\Delta|` of the attention on the sink
        positions), ``tv [N, S, 1, H]`` (mean total variation of the attention rows), ``sink_mass [N, S, 2, H]``;
        ``meta["rank"]``, ``meta["n_projected"]`` (positions edited per text), ``meta["sink_positions"]`` (one list,
        or one per text when given per text). With a dict ``basis``: ``conditions = ["clean", *names]``, ``sink_delta``
        and ``tv [N, S, K, H]``, ``sink_mass [N, S, 1 + K, H]``, ``meta["rank"]`` a dict ``{name: r}`` and
        ``meta["head"]`` a dict ``{name: head or None}``.

    Cost: one forward pass per text (two batch rows), plus ``[2, H, T, T]`` probabilities per measured layer.
    """
    add_bos, max_tokens, remote, progress, batch_size = _resolve(
        options, project_out, add_bos=add_bos, max_tokens=max_tokens, remote=remote, progress=progress,
        batch_size=batch_size)
    import torch

    info = _model_info(model)
    L, d = info.n_layers, info.d_model
    layer = check_layer("layer", layer, L)
    for hh in (head.values() if isinstance(head, dict) else [head]):
        if hh is not None and (not isinstance(hh, (int, np.integer)) or not 0 <= int(hh) < info.n_heads):
            raise InterventionError(f"head={hh!r}: give a head index in 0..{info.n_heads - 1}, or None for the whole "
                                    "residual stream")
    if isinstance(basis, dict):
        return _project_out_many(model, info, texts, layer, basis, positions=positions, sink_positions=sink_positions,
                                 attention_layers=attention_layers, add_bos=add_bos, max_tokens=max_tokens,
                                 remote=remote, progress=progress, head=head, batch_size=batch_size)
    if isinstance(head, dict):
        raise InterventionError("head: a dict {name: head} goes with a dict basis {name: basis}; with one basis give "
                                "an int or None")
    U, rank = orthonormal_basis(basis, d)
    texts = _texts(texts)
    per_text_pos = per_text_positions(positions, texts)
    stats = _stats_layers(attention_layers, layer, L)
    per_text_sink, sink_sets = _sink_sets(sink_positions, texts)
    eng = _Engine(model, info, remote)
    chunks, nll0, nll1, n_proj, n_tok = [], [], [], [], 0
    for i, text in enumerate(_progress(texts, "project_out", len(texts), progress)):
        ids, used = _tokenize(model, text, add_bos, max_tokens)
        T = len(ids)
        sink_cols = sink_sets[i if per_text_sink else 0]
        if sink_cols and max(sink_cols) >= T:
            raise InterventionError(f"sink_positions {sink_cols} out of range for text {i} ({T} tokens)")
        w = _positions_weight(positions[i] if per_text_pos else positions, T, sink_cols, i)
        wt = torch.zeros(2, T)
        wt[1] = torch.from_numpy(w)
        edit = ProjectOut(layer, U, wt) if head is None else ProjectHeadWrite(layer, int(head), U, wt)
        rows = eng.run(text, [ids, ids], _units(stats, sink_cols), [edit])
        nll0.append(rows[0].by_unit["loss"]["nll"])
        nll1.append(rows[1].by_unit["loss"]["nll"])
        n_proj.append(int(w.sum()))
        n_tok += T
        if stats:
            chunks.append(_attention_of(rows))
    meta = {"model": info.name, "layer": layer, "rank": rank, "n_projected": n_proj, "n_texts": len(texts),
            "n_tokens": n_tok, "add_bos": used, "remote": bool(eng.remote),
            "sink_positions": [list(c) for c in sink_sets] if per_text_sink else list(sink_sets[0])}
    if head is not None:
        meta["head"] = int(head)
    return InterventionResult("project_out", ["clean", "projected"], {"clean": nll0, "projected": nll1},
                              _collect_attention(chunks, stats), meta)

#: Default cap on the float32 logits ``[rows, T, vocab]`` one forward pass of a multi-subspace project_out keeps.
LOGITS_BUDGET = 512 * 2**20


def _project_out_many(model, info, texts, layer, bases: dict, *, positions, sink_positions, attention_layers,
                      add_bos, max_tokens, remote, progress, head, batch_size) -> InterventionResult:
    """:func:`project_out` with ``basis = {name: basis}``: per text, the clean row and one edited row per subspace
    in as few forward passes as ``batch_size`` (or the logits budget) allows; row ``k + 1`` of a pass carries the
    pass's ``k``-th subspace (a :class:`ProjectOut` / :class:`ProjectHeadWrite` whose weights are zero elsewhere)."""
    import torch

    L, d = info.n_layers, info.d_model
    if not bases:
        raise InterventionError("basis: the dict of subspaces is empty; give {name: basis [d, r]} with at least one")
    names = [str(k) for k in bases]
    if "clean" in names or len(set(names)) != len(names):
        raise InterventionError(f"basis: subspace names must be distinct and not 'clean', got {names}")
    heads = dict(head) if isinstance(head, dict) else {k: head for k in bases}
    unknown = [k for k in heads if k not in bases]
    if unknown:
        raise InterventionError(f"head: names {unknown} are not in basis (names {names})")
    if batch_size is not None and (not isinstance(batch_size, (int, np.integer)) or batch_size < 2):
        raise InterventionError(f"batch_size={batch_size!r}: give None (automatic) or at least 2 rows (the clean row "
                                "and one edited row)")
    Us = {str(k): orthonormal_basis(b, d) for k, b in bases.items()}
    hd = {str(k): (None if heads.get(k) is None else int(heads[k])) for k in bases}
    texts = _texts(texts)
    per_text_pos = per_text_positions(positions, texts)
    stats = _stats_layers(attention_layers, layer, L)
    per_text_sink, sink_sets = _sink_sets(sink_positions, texts)
    vocab = max(len(getattr(model, "tokenizer", None) or ()), 1)
    eng = _Engine(model, info, remote)
    nll: dict[str, list] = {c: [] for c in ["clean", *names]}
    chunks, n_proj, n_tok, used = [], [], 0, add_bos
    for i, text in enumerate(_progress(texts, "project_out", len(texts), progress)):
        ids, used = _tokenize(model, text, add_bos, max_tokens)
        T = len(ids)
        sink_cols = sink_sets[i if per_text_sink else 0]
        if sink_cols and max(sink_cols) >= T:
            raise InterventionError(f"sink_positions {sink_cols} out of range for text {i} ({T} tokens)")
        w = torch.from_numpy(_positions_weight(positions[i] if per_text_pos else positions, T, sink_cols, i))
        rows_per = batch_size or max(2, min(1 + len(names), LOGITS_BUDGET // max(T * vocab * 4, 1)))
        per, parts = int(rows_per) - 1, []
        for g in range(0, len(names), per):
            group = names[g:g + per]
            edits = []
            for r, nm in enumerate(group):
                wt = torch.zeros(1 + len(group), T)
                wt[r + 1] = w
                U = Us[nm][0]
                edits.append(ProjectOut(layer, U, wt, name=f"project_out_{r + 1}") if hd[nm] is None else
                             ProjectHeadWrite(layer, hd[nm], U, wt, name=f"project_head_write_{r + 1}"))
            rows = eng.run(text, [ids] * (1 + len(group)), _units(stats, sink_cols), edits)
            if g == 0:
                nll["clean"].append(rows[0].by_unit["loss"]["nll"])
            for r, nm in enumerate(group):
                nll[nm].append(rows[r + 1].by_unit["loss"]["nll"])
            if stats:
                parts.append(_attention_of(rows))
        n_proj.append(int(w.sum()))
        n_tok += T
        if stats:
            chunks.append({"dsink": np.concatenate([p["dsink"] for p in parts], axis=1),
                           "tv": np.concatenate([p["tv"] for p in parts], axis=1),
                           "mass": np.concatenate([parts[0]["mass"][:, :1]] + [p["mass"][:, 1:] for p in parts],
                                                  axis=1)})
    meta = {"model": info.name, "layer": layer, "rank": {k: r for k, (_, r) in Us.items()}, "n_projected": n_proj,
            "n_texts": len(texts), "n_tokens": n_tok, "add_bos": used, "remote": bool(eng.remote),
            "sink_positions": [list(c) for c in sink_sets] if per_text_sink else list(sink_sets[0]), "head": hd}
    return InterventionResult("project_out", ["clean", *names], nll, _collect_attention(chunks, stats), meta)


# ============================================================================= massive activations
def find_massive(model, texts, *, abs_thr: float = 100.0, ratio: float = 1000.0, top_k: int = 32,
                 add_bos: bool | None = None, max_tokens: int | None = None, remote=None,
                 options: RunOptions | None = None) -> MassiveSpec:
    r"""Locate the massive activations (Sun et al. 2024, "Massive Activations in LLMs", §2.2).

    An entry :math:`h_{t,c}` of the residual stream after a layer is massive when :math:`|h_{t,c}| > \text{abs\_thr}`
    (100) and :math:`|h_{t,c}| \ge \text{ratio} \cdot \operatorname{median}|h|` (1000×) of that layer's hidden state.
    Per text, the first layer with a massive entry is found from the ``top_k`` largest :math:`|h|` of every layer;
    the reported ``layer`` is the most common first layer, ``channels`` the channels massive there in any text, and
    ``means`` their signed mean value over those entries. One forward pass per text.
    """
    add_bos, max_tokens, remote = _resolve(options, find_massive, add_bos=add_bos, max_tokens=max_tokens,
                                           remote=remote)
    info = _model_info(model)
    abs_thr, ratio, top_k = massive_args(abs_thr, ratio, top_k)
    texts = _texts(texts)
    eng = _Engine(model, info, remote)
    firsts, per_layer_entries = [], []
    for text in _progress(texts, "find_massive", len(texts)):
        ids, _ = _tokenize(model, text, add_bos, max_tokens)
        scan = eng.run(text, [ids], [TopAbsActivations(min(top_k, len(ids) * info.d_model))], [])[0].by_unit["top_abs"]
        vals, idx, med = scan["scan_vals"], scan["scan_idx"], scan["scan_med"]
        entries = {}
        for li in range(vals.shape[0]):
            ok = (np.abs(vals[li]) > abs_thr) & (np.abs(vals[li]) >= ratio * med[li])
            entries[li] = [(int(j // info.d_model), int(j % info.d_model), float(v))
                           for j, v in zip(idx[li][ok], vals[li][ok])]
        first = next((li for li in range(vals.shape[0]) if entries[li]), None)
        firsts.append(first)
        per_layer_entries.append(entries)
    seen = [f for f in firsts if f is not None]
    if not seen:
        raise InterventionError(
            f"no massive activations (|h| > {abs_thr:g} and >= {ratio:g}x the median) in {info.name!r} on these "
            f"{len(texts)} texts; lower abs_thr / ratio, or pass layer= and channels= explicitly")
    layer = max(set(seen), key=seen.count)
    found = [e[layer] for e in per_layer_entries]
    by_ch: dict[int, list[float]] = {}
    for fl in found:
        for _, c, v in fl:
            by_ch.setdefault(c, []).append(v)
    channels = sorted(by_ch)
    return MassiveSpec(layer, channels, [float(np.mean(by_ch[c])) for c in channels], found, firsts, abs_thr, ratio)


def ablate_massive(model, texts, mode="both", *, reference=None, spec: MassiveSpec | None = None, control: bool = True,
                   attention_layers="after", abs_thr: float = 100.0, ratio: float = 1000.0,
                   add_bos: bool | None = None, max_tokens: int | None = None, remote=None,
                   options: RunOptions | None = None) -> InterventionResult:
    r"""Set the massive activations to zero or to their mean and measure the loss (Sun et al. 2024, §3.1).

    The massive entries are found with :func:`find_massive` on ``reference`` (default: ``texts``), or given as a
    :class:`MassiveSpec`. In each text, the entries of ``spec.channels`` that are massive on the clean run at
    ``spec.layer`` (same criterion) are replaced, on the residual stream after that layer, by

    - ``"zero"``: 0; Sun et al. (LLaMA2-7B): perplexity explodes;
    - ``"mean"``: the channel's mean over the reference texts; Sun et al.: perplexity unchanged (a fixed bias).

    ``mode``: ``"zero"``, ``"mean"`` or ``"both"``. ``control=True`` adds a row that zeroes the same channels at the
    last token instead (not massive): the damage must come from the massive entries, not the channels.

    Returns an :class:`InterventionResult` with conditions ``clean``, ``zero`` / ``mean`` and ``control``; with
    ``attention_layers`` (default: every later layer) the first-token attention mass of each layer (``sink_mass``,
    token 0) and its change. ``meta["spec"]`` is the spec used, ``meta["n_massive"]`` the entries edited per text.
    Cost: one forward pass (2-4 rows) per text, plus :func:`find_massive` (one per reference text).
    """
    add_bos, max_tokens, remote = _resolve(options, ablate_massive, add_bos=add_bos, max_tokens=max_tokens,
                                           remote=remote)
    import torch

    modes = {"both": ["zero", "mean"], "zero": ["zero"], "mean": ["mean"]}[
        _checked(_choice, "mode", mode, ("both", "zero", "mean"))]
    info = _model_info(model)
    texts = _texts(texts)
    abs_thr, ratio, _ = massive_args(abs_thr, ratio)
    if spec is None:
        spec = find_massive(model, reference if reference is not None else texts, abs_thr=abs_thr, ratio=ratio,
                            add_bos=add_bos, max_tokens=max_tokens, remote=remote)
    spec = check_spec(spec, info)
    stats = _stats_layers(attention_layers, spec.layer, info.n_layers)
    ch = torch.tensor(spec.channels, dtype=torch.long)
    values = torch.stack([torch.zeros(len(spec.channels)) if m == "zero" else torch.tensor(spec.means)
                          for m in modes]).float()
    conds = ["clean", *modes] + (["control"] if control else [])
    eng = _Engine(model, info, remote)
    nll: dict[str, list] = {c: [] for c in conds}
    chunks, n_massive, n_tok = [], [], 0
    for text in _progress(texts, "ablate_massive", len(texts)):
        ids, used = _tokenize(model, text, add_bos, max_tokens)
        T = len(ids)
        edit = MassiveAblation(spec.layer, ch, values, float(spec.abs_thr), float(spec.ratio), T - 1 if control else -1)
        rows = eng.run(text, [ids] * len(conds), _units(stats, [0]), [edit])
        for ci, c in enumerate(conds):
            nll[c].append(rows[ci].by_unit["loss"]["nll"])
        n_massive.append(int(rows[0].by_unit[edit.name]["massive_flags"].sum()))
        n_tok += T
        if stats:
            chunks.append(_attention_of(rows))
    return InterventionResult(
        "ablate_massive", conds, nll, _collect_attention(chunks, stats),
        {"model": info.name, "spec": spec, "layer": spec.layer, "n_massive": n_massive, "n_texts": len(texts),
         "n_tokens": n_tok, "add_bos": used, "remote": bool(eng.remote)})

# ============================================================================= mask the sink
def mask_sink(model, texts, layers="12-29", *, token=0, sweep: bool = False, attention_layers=None,
              batch_size: int = DEFAULT_BATCH, add_bos: bool | None = None, max_tokens: int | None = None,
              remote=None, options: RunOptions | None = None) -> InterventionResult:
    r"""Forbid attention to the sink token in chosen layers and measure the loss.

    In every head of each chosen layer, queries :math:`t \ge 1` cannot attend to key ``token`` (default 0, where
    SmolLM2's sink forms): an additive :math:`-\infty` before the softmax, so each row is renormalised over the
    other keys, :math:`P'_{tj} = P_{tj} / (1 - P_{t,\text{sink}})` for :math:`j \ne` sink. The mask is set on each
    chosen layer's attention call (``attention_mask``), so it works under eager and SDPA attention and on NDIF.

    ``layers``: one layer set (``"12-29"``, ``"all"``, a list) or several (a list of those, or a dict name → set).
    ``sweep=True`` adds one condition per single layer (``"layer 0"`` … ``"layer L-1"``): ``chart("sweep")``.
    ``token``: an int or a list of positions to hide. ``batch_size``: rows per forward pass (one is the clean copy).

    Note (measured on SmolLM2): masking token 0 in *every* layer equals deleting it, and token 1 becomes the new
    sink, so it costs little; masking only the layers where the sink is used (12-29) costs much more.
    """
    batch_size, add_bos, max_tokens, remote = _resolve(options, mask_sink, batch_size=batch_size, add_bos=add_bos,
                                                       max_tokens=max_tokens, remote=remote)
    info = _model_info(model)
    L = info.n_layers
    texts = _texts(texts)
    tokens = sink_tokens(token)
    sets = layer_sets(layers, L, sweep)
    batch_size = check_int("batch_size", batch_size, 2)  # the clean row and at least one edited row
    stats = _layers_arg(attention_layers, L, "attention_layers")
    names = list(sets)
    conds = ["clean", *names]
    eng = _Engine(model, info, remote)
    nll: dict[str, list] = {c: [] for c in conds}
    chunks, n_tok = [], 0
    per = batch_size - 1
    for text in _progress(texts, "mask_sink", len(texts)):
        ids, used = _tokenize(model, text, add_bos, max_tokens)
        T = len(ids)
        if max(tokens) >= T:
            raise InterventionError(f"token={token!r} is out of range for a text of {T} tokens")
        parts = []
        for g in range(0, len(names), per):
            group = names[g:g + per]
            # row r + 1 hides the sink in condition group[r]'s layers; row 0 is the clean copy
            edits = [HideKeys(sets[nm], tokens, rows=[r + 1], name=f"hide_keys_{r + 1}") for r, nm in enumerate(group)]
            rows = eng.run(text, [ids] * (1 + len(group)), _units(stats, tokens), edits)
            if g == 0:
                nll["clean"].append(rows[0].by_unit["loss"]["nll"])
            for r, nm in enumerate(group):
                nll[nm].append(rows[r + 1].by_unit["loss"]["nll"])
            if stats:
                parts.append(_attention_of(rows))
        n_tok += T
        if stats:
            chunks.append({"dsink": np.concatenate([p["dsink"] for p in parts], axis=1),
                           "tv": np.concatenate([p["tv"] for p in parts], axis=1),
                           "mass": np.concatenate([parts[0]["mass"][:, :1]] + [p["mass"][:, 1:] for p in parts],
                                                  axis=1)})
    return InterventionResult(
        "mask_sink", conds, nll, _collect_attention(chunks, stats),
        {"model": info.name, "layer_sets": sets, "token": tokens, "n_texts": len(texts), "n_tokens": n_tok,
         "add_bos": used, "remote": bool(eng.remote)})

# ============================================================================= add a sink token
def add_sink(model, texts, prefix="\n", *, add_bos: bool | None = False, max_tokens: int | None = None,
             remote=None, options: RunOptions | None = None) -> InterventionResult:
    r"""Prepend a dedicated sink token and measure the NLL of the original tokens.

    StreamingLLM (Xiao et al., ICLR 2024, §3.3) shows that a token whose only job is to be the sink helps; in a
    model without a BOS (SmolLM2) the first *word* is the sink, and a prepended newline can take over the role
    (the massive activation moves onto it). ``prefix``: a string (tokenized on its own, without special tokens, so
    the original tokens are unchanged; a special token such as ``"<|endoftext|>"`` works), a list of token ids, or a
    list of such prefixes (one condition each).

    Both conditions score the same targets: tokens ``1..T-1`` of the original text (token 0 has no prediction
    without a prefix). ``meta["first_token_nll"][cond]`` is the NLL of original token 0 given the prefix, and
    ``meta["nll_from_token2"][cond]`` the mean NLL over tokens ``2..T-1``: without a prefix, token 1 is predicted
    from token 0 alone, so most of a prefix's gain can be that one prediction.
    Cost: one forward pass per text and condition.
    """
    add_bos, max_tokens, remote = _resolve(options, add_sink, add_bos=add_bos, max_tokens=max_tokens,
                                           remote=remote)
    info = _model_info(model)
    texts = _texts(texts)
    pre_ids, conds = prefixes(model, prefix)
    eng = _Engine(model, info, remote)
    nll: dict[str, list] = {c: [] for c in conds}
    first: dict[str, list] = {c: [] for c in conds[1:]}
    n_tok = 0
    for text in _progress(texts, "add_sink", len(texts)):
        ids, used = _tokenize(model, text, add_bos, max_tokens)
        for c, pi in zip(conds, [[], *pre_ids]):
            full = eng.run(text, [pi + ids], [TokenLoss()], [])[0].by_unit["loss"]["nll"]
            nll[c].append(full[len(pi):])
            if pi:
                first[c].append(float(full[len(pi) - 1]))
        n_tok += len(ids)
    from2 = {c: float(np.concatenate([a[1:] for a in nll[c]]).mean()) for c in conds}
    return InterventionResult(
        "add_sink", conds, nll, {},
        {"model": info.name, "prefix_ids": pre_ids, "first_token_nll": {c: float(np.mean(v)) for c, v in first.items()},
         "nll_from_token2": from2, "n_texts": len(texts), "n_tokens": n_tok, "add_bos": used,
         "remote": bool(eng.remote)})
