"""The :class:`SinkTrace` data object: the small, model-free result of tracing one prompt.

A SinkTrace holds plain numpy arrays (no torch, no nnsight), the prompt's tokens and metadata, so a trace
computed on a GPU box or on NDIF can be saved to one file and explored anywhere.

Shapes (``L`` layers, ``H`` query heads, ``T`` tokens, ``d`` model width, ``K`` top activations per layer):

===========================  ===================  ===========================================================
field                        shape / dtype        meaning
===========================  ===================  ===========================================================
``sink_scores``              ``[L, H, T]`` f32    Gu et al. α: mean attention key ``k`` receives from the
                                                  queries that can see it (``t >= k`` for causal models)
``first_token_mass``         ``[L, H]`` f32       mean attention on the first real token, queries ``t >= 1``
``entropy``                  ``[L, H]`` f32       mean over queries of the attention row entropy (nats)
``resid_norms``              ``[L, T]`` f32       L2 norm of the residual stream after each layer
``top_activations``          ``[L, K]`` f32       largest-magnitude residual activations (signed values)
``top_act_tokens``           ``[L, K]`` i32       their token positions
``top_act_channels``         ``[L, K]`` i32       their channels
``median_abs_activation``    ``[L]`` f32          median ``|h|`` of each layer's residual stream
``maps``                     ``[M, T, T]``        full attention maps kept on request (float16 or float32)
``map_index``                ``[M, 2]`` i32       ``(layer, head)`` of each kept map
``head_outputs``             ``[N, H, T, d]`` f32 per-head contribution to the residual (after ``W_O``)
``head_output_layers``       ``[N]`` i32          the layers of ``head_outputs``
``head_values``                ``[N, H, T, d]`` f32 value vectors after ``W_O``: ``g_j = v_j W_O^h`` for every token j
``head_value_layers``        ``[N]`` i32          the layers of ``head_values``
``token_ids``                ``[T]`` i64          token ids
===========================  ===================  ===========================================================

Positions are 0-based and count real tokens only (padding is never part of a trace).
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ._npz import HEADER, header_array, npz_path, read_headered, write_headered
from .errors import SinkwidgetsKeyError, SinkwidgetsValueError

FORMAT_NAME = "sinkwidgets.SinkTrace"
FORMAT_VERSION = 1

_REQUIRED = ("sink_scores", "first_token_mass", "entropy", "resid_norms")
_OPTIONAL_ARRAYS = (
    "top_activations",
    "top_act_tokens",
    "top_act_channels",
    "median_abs_activation",
    "maps",
    "map_index",
    "head_outputs",
    "head_output_layers",
    "head_values",
    "head_value_layers",
)


class SinkTraceFormatError(SinkwidgetsValueError):
    """A file is not a readable SinkTrace (corrupt, truncated, foreign, or from a newer version)."""


@dataclass(eq=False)
class SinkTrace:
    """Sink summaries of one prompt through one model. See the module docstring for every field's shape.

    Build one with :func:`sinkwidgets.trace` (from a model), :meth:`load` (from a file), or directly from
    arrays (e.g. toy models, tests). Only ``sink_scores``, ``tokens`` and ``meta`` are strictly needed; the
    other summaries are filled with NaN-free defaults when absent.
    """

    sink_scores: np.ndarray
    tokens: list[str]
    first_token_mass: np.ndarray | None = None
    entropy: np.ndarray | None = None
    resid_norms: np.ndarray | None = None
    token_ids: np.ndarray | None = None
    top_activations: np.ndarray | None = None
    top_act_tokens: np.ndarray | None = None
    top_act_channels: np.ndarray | None = None
    median_abs_activation: np.ndarray | None = None
    maps: np.ndarray | None = None
    map_index: np.ndarray | None = None
    head_outputs: np.ndarray | None = None
    head_output_layers: np.ndarray | None = None
    head_values: np.ndarray | None = None
    head_value_layers: np.ndarray | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.sink_scores = np.asarray(self.sink_scores, dtype=np.float32)
        if self.sink_scores.ndim != 3:
            raise SinkwidgetsValueError(f"sink_scores must have shape [L, H, T], got {list(self.sink_scores.shape)}; "
                                        "pass one α per layer, head and key token")
        L, H, T = self.sink_scores.shape
        self.tokens = [str(t) for t in self.tokens]
        if len(self.tokens) != T:
            raise SinkwidgetsValueError(f"tokens has {len(self.tokens)} entries but sink_scores has T={T}; pass one "
                                        "token string per key position")
        if self.first_token_mass is None:
            self.first_token_mass = np.full((L, H), np.nan, np.float32)
        if self.entropy is None:
            self.entropy = np.full((L, H), np.nan, np.float32)
        if self.resid_norms is None:
            self.resid_norms = np.full((L, T), np.nan, np.float32)
        self.first_token_mass = _check(self.first_token_mass, (L, H), "first_token_mass", np.float32)
        self.entropy = _check(self.entropy, (L, H), "entropy", np.float32)
        self.resid_norms = _check(self.resid_norms, (L, T), "resid_norms", np.float32)
        if self.token_ids is not None:
            self.token_ids = _check(self.token_ids, (T,), "token_ids", np.int64)
        if self.maps is not None:
            self.maps = np.asarray(self.maps)
            if self.map_index is None:
                raise SinkwidgetsValueError("maps given without map_index: pass map_index=[M, 2] of (layer, head), "
                                            "one row per map")
            self.map_index = np.asarray(self.map_index, dtype=np.int32).reshape(-1, 2)
            if self.maps.shape != (len(self.map_index), T, T):
                raise SinkwidgetsValueError(f"maps must be [M, T, T] = [{len(self.map_index)}, {T}, {T}] (one map per "
                                            f"map_index row), got {list(self.maps.shape)}")
            bad = (self.map_index[:, 0] < 0) | (self.map_index[:, 0] >= L) | (self.map_index[:, 1] < 0) | (
                self.map_index[:, 1] >= H)
            if bad.any():
                ly, h = (int(x) for x in self.map_index[np.argmax(bad)])
                raise SinkwidgetsValueError(f"map_index holds (layer, head) = ({ly}, {h}), outside this trace's {L} "
                                            f"layers x {H} heads (layer 0..{L - 1}, head 0..{H - 1}); drop or fix "
                                            "that row")
        for name, lname in (("head_outputs", "head_output_layers"), ("head_values", "head_value_layers")):
            x = getattr(self, name)
            if x is None:
                continue
            if getattr(self, lname) is None:
                raise SinkwidgetsValueError(f"{name} given without {lname}: pass {lname}=[N] (the layer of each "
                                            f"{name} row)")
            x = np.asarray(x, dtype=np.float32)
            layers = np.asarray(getattr(self, lname), dtype=np.int32).reshape(-1)
            if x.ndim != 4 or x.shape[:3] != (len(layers), H, T):
                raise SinkwidgetsValueError(f"{name} must be [N, H, T, d] with N={len(layers)} (len({lname})), H={H}, "
                                            f"T={T}; got {list(x.shape)}")
            if len(layers) and (layers.min() < 0 or layers.max() >= L):
                raise SinkwidgetsValueError(f"{lname}={layers.tolist()} is out of range: this trace has layers "
                                            f"0..{L - 1}")
            setattr(self, name, x)
            setattr(self, lname, layers)
        self.meta = dict(self.meta)
        self.meta.setdefault("n_layers", L)
        self.meta.setdefault("n_heads", H)
        self.meta.setdefault("causal", True)

    # ------------------------------------------------------------------ shape helpers
    @property
    def n_layers(self) -> int:
        """Number of layers ``L``."""
        return self.sink_scores.shape[0]

    @property
    def n_heads(self) -> int:
        """Number of query heads ``H`` (per query head for GQA models)."""
        return self.sink_scores.shape[1]

    @property
    def n_tokens(self) -> int:
        """Number of real tokens ``T``."""
        return self.sink_scores.shape[2]

    @property
    def causal(self) -> bool:
        """Whether the model's attention is causal (decoder) or bidirectional (encoder)."""
        return bool(self.meta.get("causal", True))

    @property
    def model_name(self) -> str:
        return str(self.meta.get("model", "unknown"))

    def query_counts(self) -> np.ndarray:
        """Number of queries that can attend to each key, ``[T]``: ``T - k`` if causal, else ``T``."""
        T = self.n_tokens
        return (T - np.arange(T)) if self.causal else np.full(T, T)

    def has_map(self, layer: int, head: int) -> bool:
        """True if the full attention map of ``(layer, head)`` was kept."""
        if self.map_index is None:
            return False
        return bool(np.any((self.map_index[:, 0] == layer) & (self.map_index[:, 1] == head)))

    def get_map(self, layer: int, head: int) -> np.ndarray:
        """The kept attention map ``[T, T]`` (queries × keys) of ``(layer, head)`` as float32."""
        if self.map_index is not None:
            hit = np.nonzero((self.map_index[:, 0] == layer) & (self.map_index[:, 1] == head))[0]
            if len(hit):
                return np.asarray(self.maps[hit[0]], dtype=np.float32)
        kept = [] if self.map_index is None else sorted({int(x) for x in self.map_index[:, 0]})
        raise SinkwidgetsKeyError(
            f"no attention map for layer {layer}, head {head} in this trace (layers with kept maps: {kept or 'none'}); "
            f"trace again with keep_maps=[{layer}] or keep_maps='all'"
        )

    def __repr__(self) -> str:
        extra = []
        if self.maps is not None:
            extra.append(f"maps={len(self.maps)}")
        if self.head_outputs is not None:
            extra.append(f"head_outputs={[int(x) for x in self.head_output_layers]}")
        if self.head_values is not None:
            extra.append(f"head_values={[int(x) for x in self.head_value_layers]}")
        more = (", " + ", ".join(extra)) if extra else ""
        return (
            f"SinkTrace(model={self.model_name!r}, L={self.n_layers}, H={self.n_heads}, T={self.n_tokens}, "
            f"add_bos={self.meta.get('add_bos')!r}{more})"
        )

    # ------------------------------------------------------------------ persistence
    @staticmethod
    def save_path(path: str | os.PathLike) -> Path:
        """The file :meth:`save` writes for ``path``: ``.npz`` is appended when the name does not end in it."""
        return npz_path(path)

    def save(self, path: str | os.PathLike) -> Path:
        """Write the trace to one ``.npz`` file and return the path written (``.npz`` is appended when ``path``
        does not end in it, see :meth:`save_path`).

        The file is written under a unique temporary name in the same folder and then atomically renamed, so
        concurrent writers never mix their bytes, a reader sees a complete file, and a failed write leaves
        nothing behind. Raises ``IsADirectoryError`` / ``FileNotFoundError`` / ``PermissionError`` (all
        ``OSError``) when the target cannot be written.
        """
        return write_headered(path, self._arrays(), kind="SinkTrace", example="tr.save('trace.npz')",
                              compressed=True)

    def _arrays(self) -> dict[str, np.ndarray]:
        arrays = {n: np.asarray(getattr(self, n)) for n in _REQUIRED + _OPTIONAL_ARRAYS + ("token_ids",)
                  if getattr(self, n) is not None}
        header = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, "tokens": self.tokens,
                  "meta": _jsonable(self.meta)}
        arrays[HEADER] = header_array(header)
        return arrays

    @classmethod
    def load(cls, path: str | os.PathLike) -> SinkTrace:
        """Read a trace written by :meth:`save`. Raises :class:`SinkTraceFormatError` on a corrupt or
        foreign file, and ``FileNotFoundError`` when the path does not exist."""
        header, data = read_headered(path, kind="SinkTrace", format_name=FORMAT_NAME, max_version=FORMAT_VERSION,
                                     error=SinkTraceFormatError, required=("sink_scores",))
        try:
            return cls(tokens=header.get("tokens", []), meta=header.get("meta", {}), **data)
        except (TypeError, ValueError) as exc:
            raise SinkTraceFormatError(f"{str(path)!r} holds inconsistent arrays: {exc}") from exc

    def to_bytes(self) -> bytes:
        """The saved file's bytes (for sending a trace over a network or embedding it)."""
        buf = io.BytesIO()
        np.savez_compressed(buf, **self._arrays())
        return buf.getvalue()


def check_array(a: Any, shape: tuple[int, ...], name: str, dtype: Any) -> np.ndarray:
    """``np.asarray(a, dtype)``, refused (``ValueError`` naming ``name``) unless its shape is exactly ``shape``."""
    a = np.asarray(a, dtype=dtype)
    if a.shape != shape:
        raise SinkwidgetsValueError(f"{name} must have shape {list(shape)}, got {list(a.shape)}; pass an array of "
                                    "that shape")
    return a


def jsonable(obj: Any) -> Any:
    """``obj`` made JSON-safe: dict keys to str, tuples to lists, numpy scalars/arrays to Python, anything else str."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    return str(obj)


_check = check_array  # the private names this module's own code uses
_jsonable = jsonable
