"""The glue every executor shares: hand a layer's sources to the units that read them, collect their outputs,
and apply the edits (:mod:`.edits`) at the sites they name.

Plain torch, shipped to NDIF by value with the remote block. An executor knows *where* a source lives in the
model and *when* it can be read (the forward order); this module knows nothing about models, and the units know
nothing about executors.
"""

from __future__ import annotations

import torch

from .edits import EditSet, attention_mask
from .reductions import BatchContext, UnitSet


class Collector:
    """Per-unit, per-key lists of per-layer tensors, packed into one tensor per key at the end of the trace;
    the edits' per-trace state and reports."""

    def __init__(self, units: UnitSet, ctx: BatchContext, edits: EditSet | None = None):
        self.units, self.ctx = units, ctx
        ctx.buffers.clear()  # a new run: units allocate fresh shared buffers (an earlier result keeps its own)
        self.edits = edits if edits is not None else EditSet([], ctx.n_layers, ctx.n_heads, ctx.d_model)
        self.outs: dict[str, dict[str, list]] = {u.name: {} for u in units.units}
        self.outs.update({e.name: {} for e in self.edits.edits})
        self.state: dict[str, dict] = {e.name: {} for e in self.edits.edits}
        self._hidden: dict[int, torch.Tensor] = {}

    def needs(self, layer: int) -> set[str]:
        """The sources some unit or edit reads at ``layer`` and the sites an edit changes there (``"attn_mask"``,
        ``"resid"``): an executor reads and writes nothing else."""
        return self.units.needs(layer) | self.edits.needs(layer)

    def needs_logits(self) -> bool:
        return self.units.needs_logits()

    # ------------------------------------------------------------------ edits
    def hidden(self, layer: int, device) -> torch.Tensor | None:
        """The (row, query, key) entries the ``"attn_mask"`` edits hide at ``layer``, bool ``[B, T, T]``, or None."""
        es = self.edits.at(layer, "attn_mask")
        if not es:
            return None
        if layer not in self._hidden:
            h = es[0].hide(layer, self.ctx, device)
            for e in es[1:]:
                h = h | e.hide(layer, self.ctx, device)
            self._hidden[layer] = h
        return self._hidden[layer]

    def attention_mask(self, layer: int, window, device) -> torch.Tensor | None:
        """The additive ``[B, 1, T, T]`` mask the attention of ``layer`` runs under, or None (no mask edit)."""
        hid = self.hidden(layer, device)
        return None if hid is None else attention_mask(hid, self.ctx, window, device)

    def edit_resid(self, layer: int, h: torch.Tensor) -> torch.Tensor:
        """Apply the ``"resid"`` edits of ``layer`` to the block output ``h [B, T, d]``, in the given order."""
        for e in self.edits.at(layer, "resid"):
            out = e.apply(h, self.ctx, layer, self.state[e.name])
            if isinstance(out, tuple):
                h, report = out
                self._add(e, report)
            else:
                h = out
        return h

    def _add(self, unit, out: dict) -> None:
        for key, t in out.items():
            self.outs[unit.name].setdefault(key, []).append(t)

    def feed(self, layer: int, source: str, x: torch.Tensor, w_o: torch.Tensor | None = None) -> None:
        """Hand ``x`` (``"values"``, ``"o_input"`` or ``"resid"``) to the units reading it at ``layer``."""
        for e in self.edits.reading(layer, source):
            e.read(source, x, w_o, self.ctx, layer, self.state[e.name])
        for u in self.units.at(layer, source):
            self._add(u, u.read(source, x, w_o, self.ctx, layer))

    def feed_logits(self, logits: torch.Tensor) -> None:
        """Hand the output logits ``[B, T, V]`` to the units that read them (after the last layer)."""
        for u in self.units.final:
            self._add(u, u.read("logits", logits, None, self.ctx, -1))

    def feed_probs(self, layer: int, chunks) -> None:
        """Run the units reading ``"probs"`` at ``layer`` over ``(start, P[, scratch[, logp[, rowscale]]])`` query
        chunks, all at once; ``logp`` (log-probabilities, from the lse path of :mod:`.chunked`) goes to the units
        that take it (:attr:`~.reductions.Reduction.takes_logp`). With ``rowscale = (r, logz)`` (the own path,
        :func:`.qk.own_chunks`) ``P`` is unnormalised: it goes as it is to units that all take the row scale
        (:attr:`~.reductions.Reduction.takes_rowscale`), and is otherwise normalised in place first. The chunks
        are always consumed to the end."""
        us = self.units.at(layer, "probs")
        if not us:
            for _ in chunks:  # a generator that also computes the layer's output (own_chunks) must still run
                pass
            return
        scaled = all(getattr(u, "takes_rowscale", False) for u in us)
        states = None
        for item in chunks:
            s, P = item[0], item[1]
            P = P if P.dtype == torch.float32 else P.float()
            scratch = item[2] if len(item) > 2 else None
            logp = item[3] if len(item) > 3 else None
            rowscale = item[4] if len(item) > 4 else None
            if rowscale is not None and not scaled:  # a unit wants the probabilities themselves: normalise
                P.mul_(rowscale[0])
                logp.sub_(rowscale[1])
                rowscale = None
            if states is None:
                states = [u.begin(self.ctx, layer, P.device) for u in us]
            for u, st in zip(us, states):
                if rowscale is not None:
                    u.chunk(st, s, P, scratch, self.ctx, logp=logp, rowscale=rowscale)
                elif logp is not None and u.takes_logp:
                    u.chunk(st, s, P, scratch, self.ctx, logp=logp)
                else:
                    u.chunk(st, s, P, scratch, self.ctx)
        for u, st in zip(us, states):
            self._add(u, u.end(st, self.ctx))

    def parallel_ok(self, layer: int) -> bool:
        """Whether every unit reading ``"probs"`` at ``layer`` can merge states (:attr:`~.reductions.Reduction.
        mergeable`) and takes the row scale, so the layer's chunks may run in parallel parts."""
        us = self.units.at(layer, "probs")
        return bool(us) and all(getattr(u, "mergeable", False) and getattr(u, "takes_rowscale", False) for u in us)

    def feed_probs_parts(self, layer: int, parts: list) -> None:
        """:meth:`feed_probs` over ``parts``, chunk generators over disjoint query chunks (``own_chunks(...,
        part=i, parts=n)``), each run in a thread of its own with one torch thread and its own unit states, merged
        in part order (so the sums are the same on every run). Local CPU runs only (:func:`.chunked.chunked_block`
        asks :meth:`parallel_ok` first).

        Why threads: the chunk GEMMs are too small for torch's two-thread GEMM to scale (1.5x on two cores, the
        flash kernel 1.75x); two single-threaded streams of chunks keep both cores busy (SmolLM2, T = 8192:
        0.73 -> 0.62 s per layer). torch's thread count is restored afterwards in the calling thread (the workers'
        ``torch.set_num_threads(1)`` also sets MKL's process-wide count)."""
        import threading

        us = self.units.at(layer, "probs")
        if len(parts) == 1 or not self.parallel_ok(layer):
            for gen in parts:
                self.feed_probs(layer, gen)  # (not reached with several parts: the executor asks parallel_ok)
            return
        n_threads = torch.get_num_threads()
        states: list = [None] * len(parts)
        errors: list = []

        def work(i: int) -> None:
            try:
                torch.set_num_threads(1)
                st = None
                for item in parts[i]:
                    s, P, scratch, logp, rowscale = item
                    if st is None:
                        st = [u.begin(self.ctx, layer, P.device) for u in us]
                    for u, x in zip(us, st):
                        u.chunk(x, s, P, scratch, self.ctx, logp=logp, rowscale=rowscale)
                states[i] = st
            except BaseException as exc:  # noqa: BLE001 - re-raised in the calling thread
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(i,), name=f"sinkwidgets-chunks-{i}") for i in range(len(parts))]
        try:
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        finally:
            torch.set_num_threads(n_threads)
        if errors:
            raise errors[0]
        merged = None
        for st in states:
            if st is None:
                continue
            merged = st if merged is None else [u.merge(a, b) for u, a, b in zip(us, merged, st)]
        for u, st in zip(us, merged):
            self._add(u, u.end(st, self.ctx))

    def packed(self) -> dict[str, dict[str, torch.Tensor]]:
        """``{unit name: {key: tensor}}``, each key's per-layer tensors joined by the unit's ``pack`` (on the CPU)."""
        by_name = {u.name: u for u in self.units.units}
        by_name.update({e.name: e for e in self.edits.edits})
        return {name: {k: by_name[name].pack(k, v).cpu() for k, v in keys.items()} for name, keys in self.outs.items()}
