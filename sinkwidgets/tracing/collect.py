"""The glue every executor shares: hand a layer's sources to the units that read them, collect their outputs.

Plain torch, shipped to NDIF by value with the remote block. An executor knows *where* a source lives in the
model and *when* it can be read (the forward order); this module knows nothing about models, and the units know
nothing about executors.
"""

from __future__ import annotations

import torch

from .reductions import BatchContext, UnitSet


class Collector:
    """Per-unit, per-key lists of per-layer tensors, packed into one tensor per key at the end of the trace."""

    def __init__(self, units: UnitSet, ctx: BatchContext):
        self.units, self.ctx = units, ctx
        self.outs: dict[str, dict[str, list]] = {u.name: {} for u in units.units}

    def needs(self, layer: int) -> set[str]:
        """The sources some unit reads at ``layer`` (an executor reads nothing else)."""
        return self.units.needs(layer)

    def _add(self, unit, out: dict) -> None:
        for key, t in out.items():
            self.outs[unit.name].setdefault(key, []).append(t)

    def feed(self, layer: int, source: str, x: torch.Tensor, w_o: torch.Tensor | None = None) -> None:
        """Hand ``x`` (``"values"``, ``"o_input"`` or ``"resid"``) to the units reading it at ``layer``."""
        for u in self.units.at(layer, source):
            self._add(u, u.read(source, x, w_o, self.ctx, layer))

    def feed_probs(self, layer: int, chunks) -> None:
        """Run the units reading ``"probs"`` at ``layer`` over ``(start, P, scratch)`` query chunks, all at once."""
        us = self.units.at(layer, "probs")
        if not us:
            return
        states = None
        for item in chunks:
            s, P = item[0], item[1]
            P = P if P.dtype == torch.float32 else P.float()
            scratch = item[2] if len(item) > 2 else None
            if states is None:
                states = [u.begin(self.ctx, layer, P.device) for u in us]
            for u, st in zip(us, states):
                u.chunk(st, s, P, scratch, self.ctx)
        for u, st in zip(us, states):
            self._add(u, u.end(st, self.ctx))

    def packed(self) -> dict[str, dict[str, torch.Tensor]]:
        """``{unit name: {key: tensor}}``, each key's per-layer tensors joined by the unit's ``pack`` (on the CPU)."""
        by_name = {u.name: u for u in self.units.units}
        return {name: {k: by_name[name].pack(k, v).cpu() for k, v in keys.items()} for name, keys in self.outs.items()}
