"""Where the heatmap's attention maps come from: kept maps of a trace, or maps computed on demand.

The kernel keeps the data: :class:`MapStore` answers the browser's requests for one head's overview and for
tiles of the region on screen, so the whole ``[L, H, T, T]`` tensor never leaves Python.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import numpy as np

from ..errors import SinkwidgetsKeyError, SinkwidgetsRuntimeError
from ..sinktrace import SinkTrace
from . import _serialization as ser

#: Maps computed on demand (with a model) are cached in the kernel; each costs T² × 2 bytes (float16).
COMPUTED_CACHE = 8


class MapStore:
    """Attention maps of one trace: kept ones, plus (given a model) ones computed on demand and cached.

    Parameters
    ----------
    trace : SinkTrace
    model : optional
        Anything :func:`sinkwidgets.trace` accepts. When given, a head whose map was not kept is traced
        again with ``keep_maps=[(layer, head)]`` (using ``trace.meta["text"]`` and ``["add_bos"]``).
    """

    def __init__(self, trace: SinkTrace, model: Any = None) -> None:
        self.trace = trace
        self.model = model
        self._computed: OrderedDict[tuple[int, int], np.ndarray] = OrderedDict()
        self._vmax: dict[tuple[int, int], float] = {}
        self._index: dict[tuple[int, int], int] = {}
        if trace.map_index is not None:
            for i, (ly, h) in enumerate(np.asarray(trace.map_index)):
                self._index.setdefault((int(ly), int(h)), i)

    # ------------------------------------------------------------------ lookup
    def kept(self) -> list[tuple[int, int]]:
        """``(layer, head)`` of every kept map, in trace order."""
        return list(self._index)

    def status(self, layer: int, head: int) -> str:
        """``"kept"``, ``"computed"`` (cached from the model) or ``"missing"``."""
        if (layer, head) in self._index:
            return "kept"
        if (layer, head) in self._computed:
            return "computed"
        return "missing"

    def get(self, layer: int, head: int) -> np.ndarray | None:
        """The ``[T, T]`` map in its stored dtype (no float32 copy of the whole map), or None."""
        i = self._index.get((layer, head))
        if i is not None:
            return self.trace.maps[i]
        m = self._computed.get((layer, head))
        if m is not None:
            self._computed.move_to_end((layer, head))
        return m

    def compute(self, layer: int, head: int) -> np.ndarray:
        """Trace the prompt again through ``model`` keeping only ``(layer, head)``; cache and return the map."""
        if self.model is None:
            raise SinkwidgetsRuntimeError("model=None: cannot compute attention maps on demand; pass model= (the model "
                                          "the trace was made with) or trace with keep_maps=[...]")
        meta = self.trace.meta
        if not meta.get("text"):
            raise SinkwidgetsRuntimeError("this trace has no meta['text'] (the prompt), so its maps cannot be "
                                          "recomputed; trace again with keep_maps=[...]")
        from .. import trace as sw_trace  # torch is imported only here

        fresh = sw_trace(self.model, meta["text"], add_bos=meta.get("add_bos", False), keep_maps=[(layer, head)])
        if fresh.n_tokens != self.trace.n_tokens:
            raise SinkwidgetsRuntimeError(
                f"re-tracing gave T={fresh.n_tokens} tokens but the trace has T={self.trace.n_tokens}: "
                "is this the model the trace was made with? Pass that model as model="
            )
        m = np.asarray(fresh.get_map(layer, head), dtype=np.float16)
        self._computed[(layer, head)] = m
        while len(self._computed) > COMPUTED_CACHE:
            self._computed.popitem(last=False)
        return m

    def vmax(self, layer: int, head: int, attn_TT: np.ndarray, overview: np.ndarray | None = None) -> float:
        """Top of the linear colour scale: the map's max over queries ``t >= 1`` (row 0 of a causal map is
        ``[1, 0, ...]`` by construction and would set the scale for nothing). Read off the overview when given:
        its rows ``>= 1`` cover map rows ``>= stride``, plus the few rows ``1 .. stride-1``."""
        key = (layer, head)
        if key not in self._vmax:
            skip = 1 if (self.trace.causal and attn_TT.shape[0] > 1) else 0
            parts = []
            if overview is not None and len(overview) > 1:
                s = -(-attn_TT.shape[0] // overview.shape[0])
                parts = [np.asarray(overview[1:]).max(), np.asarray(attn_TT[skip:s]).max() if s > skip else 0.0]
            elif attn_TT[skip:].size:
                parts = [np.asarray(attn_TT[skip:]).max()]
            v = float(max(parts)) if parts else 1.0
            self._vmax[key] = v if np.isfinite(v) and v > 0 else 1.0
        return self._vmax[key]

    # ------------------------------------------------------------------ payloads
    def map_state(self, layer: int, head: int, max_side: int = ser.OVERVIEW_MAX) -> dict[str, Any]:
        """The ``_map`` state of one head: a max-pooled overview (float16) and how to ask for tiles.

        Keys: ``layer, head, status, message, T, level, stride, rows, cols, vmax, tile, overview`` (a packed
        array, see :func:`~sinkwidgets.widgets._serialization.packed`, or None when the map is missing)."""
        T = self.trace.n_tokens
        state: dict[str, Any] = {"layer": int(layer), "head": int(head), "T": T, "tile": ser.TILE_SIZE,
                                 "status": self.status(layer, head), "message": "", "overview": None}
        m = self.get(layer, head)
        if m is None:
            state["message"] = (
                f"map not kept: trace with keep_maps=[{layer}] (or keep_maps=[({layer}, {head})]) to see it; "
                "showing α per key"
            )
            return state
        level = ser.overview_level(T, max_side)
        ov = ser.max_pool(m, 1 << level)
        state.update(level=level, stride=1 << level, rows=int(ov.shape[0]), cols=int(ov.shape[1]),
                     vmax=self.vmax(layer, head, m, ov), overview=ser.packed(ov, ser.MAP_DTYPE))
        return state

    def tile(self, layer: int, head: int, level: int, ty: int, tx: int) -> tuple[dict[str, Any], bytes]:
        """One pyramid tile as ``(spec + bounds, bytes)``; raises ``KeyError`` if the map is not available."""
        m = self.get(layer, head)
        if m is None:
            raise SinkwidgetsKeyError(f"no attention map for layer {layer}, head {head}: trace with "
                                      f"keep_maps=[{layer}] or pass model= to compute it on demand")
        q0, q1, k0, k1 = ser.tile_bounds(self.trace.n_tokens, level, ty, tx)
        spec, data = ser.encode_array(ser.pooled_tile(m, level, ty, tx), ser.MAP_DTYPE)
        return {**spec, "q0": q0, "q1": q1, "k0": k0, "k1": k1}, data
