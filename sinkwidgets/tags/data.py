"""The :class:`TagData` data object: what the catch / tag / release analyses need from a corpus of prompts.

Prompts have different lengths, so per-token arrays are **packed**: the tokens of all prompts are concatenated
along one axis of ``n_tok = sum(T_i)`` entries, and ``offsets [N + 1]`` marks where each prompt starts
(prompt ``i`` owns entries ``offsets[i]:offsets[i + 1]``). Positions inside a prompt are 0-based and count real
tokens only. ``P`` is the number of chosen heads, ``L``/``H`` the model's layers and query heads, ``d`` its width.

=====================  ======================  ===============================================================
field                  shape / dtype           meaning
=====================  ======================  ===============================================================
``heads``              ``[P, 2]`` i32          the chosen heads ``(layer, head)``
``head_outputs``       ``[P, n_tok, d]`` f32   each head's write to the residual stream, after ``W_O``:
                                               ``o_t = sum_j A[t, j] v_j W_O^h``
``head_values``        ``[P, n_tok, d]`` f32   each token's value after ``W_O``: ``g_j = v_j W_O^h``
``sink_scores``        ``[L, H, n_tok]`` f32   Gu et al. α of every key, every head (mean attention received)
``first_token_mass``   ``[N, L, H]`` f32       mean attention on token 0 over queries ``t >= 1``
``maps``               ``[M, sum T_i^2]`` f16  the chosen heads' attention maps, each prompt's ``[T_i, T_i]``
                                               flattened (``map_offsets [N + 1]``); ``map_index [M, 2]``
``pooled_mean``        ``[N, Ls, d]`` f32      residual after layer ``pooled_layers[k]``, mean over ``t >= 1``
``pooled_last``        ``[N, Ls, d]`` f32      the same at the last token
``token_ids``          ``[n_tok]`` i64         token ids
``labels``             ``[N]`` i64             optional labels (probes)
=====================  ======================  ===============================================================

Everything is numpy: a TagData collected on a GPU box or on NDIF is saved to one ``.npz`` file and analysed
anywhere. Sources: Zhang, Khan & Papyan, "Attention Sinks: A 'Catch, Tag, Release' Mechanism for Embeddings"
(arXiv 2502.00919); α from Gu et al., "When Attention Sink Emerges in Language Models" (arXiv 2410.10781, §3.2).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .._args import ArgumentTypeError, show
from .._args import labels as check_labels
from .._npz import HEADER, header_array, npz_path, read_headered, write_headered
from ..errors import SinkwidgetsError, SinkwidgetsIndexError, SinkwidgetsKeyError, SinkwidgetsValueError
from ..sinktrace import check_array as _shape
from ..sinktrace import jsonable as _jsonable

FORMAT_NAME = "sinkwidgets.TagData"
FORMAT_VERSION = 1

_ARRAYS = (
    "token_ids", "offsets", "heads", "head_outputs", "head_values", "sink_scores", "first_token_mass",
    "maps", "map_index", "map_offsets", "pooled_mean", "pooled_last", "pooled_layers", "labels",
)


class TagDataFormatError(SinkwidgetsValueError):
    """A file is not a readable TagData (corrupt, truncated, foreign, or from a newer version)."""


class TagDataNotFoundError(SinkwidgetsError, FileNotFoundError):
    """No TagData file at the path given (nor at the path with ``.npz`` appended, which :meth:`TagData.save`
    writes)."""


def _check_tokens(tokens: Any) -> None:
    """``tokens`` is one list of token strings per prompt (a string is not a list of tokens)."""
    if isinstance(tokens, (str, bytes)) or any(isinstance(t, (str, bytes)) for t in tokens):
        raise ArgumentTypeError(f"tokens={show(tokens)}: tokens must be one list of token strings per "
                                      "prompt (a list of lists), e.g. tokens=[['<s>', 'Hi']]")


def _heads_array(heads: Any) -> np.ndarray:
    arr = np.asarray(heads if heads is not None else [], dtype=np.int32).reshape(-1, 2)
    return arr


@dataclass(eq=False)
class TagData:
    """Per-prompt tokens and per-head arrays of a corpus, packed along the token axis (see the module docstring).

    Build one with :func:`sinkwidgets.tags.collect` (from a model), :meth:`load` (from a file), :meth:`from_prompts`
    (from per-prompt arrays, e.g. synthetic data in tests) or :meth:`subset`.
    """

    tokens: list[list[str]]
    offsets: np.ndarray
    heads: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), np.int32))
    token_ids: np.ndarray | None = None
    head_outputs: np.ndarray | None = None
    head_values: np.ndarray | None = None
    sink_scores: np.ndarray | None = None
    first_token_mass: np.ndarray | None = None
    maps: np.ndarray | None = None
    map_index: np.ndarray | None = None
    map_offsets: np.ndarray | None = None
    pooled_mean: np.ndarray | None = None
    pooled_last: np.ndarray | None = None
    pooled_layers: np.ndarray | None = None
    labels: np.ndarray | None = None
    groups: list[str] | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _check_tokens(self.tokens)
        self.tokens = [[str(t) for t in toks] for toks in self.tokens]
        self.offsets = np.asarray(self.offsets, dtype=np.int64).reshape(-1)
        N = len(self.tokens)
        lengths = np.array([len(t) for t in self.tokens], dtype=np.int64)
        if len(self.offsets) != N + 1 or self.offsets[0] != 0 or np.any(np.diff(self.offsets) != lengths):
            raise SinkwidgetsValueError(f"offsets must be [0, cumsum(len(tokens_i))] of length N + 1 = {N + 1}; "
                                        f"got {self.offsets[:8].tolist()}... for lengths {lengths[:8].tolist()}...")
        n_tok = int(self.offsets[-1])
        self.heads = _heads_array(self.heads)
        P = len(self.heads)
        if self.token_ids is not None:
            self.token_ids = _shape(self.token_ids, (n_tok,), "token_ids", np.int64)
        for name in ("head_outputs", "head_values"):
            a = getattr(self, name)
            if a is not None:
                a = np.asarray(a, dtype=np.float32)
                if a.ndim != 3 or a.shape[:2] != (P, n_tok):
                    raise SinkwidgetsValueError(f"{name} must be [P={P}, n_tok={n_tok}, d], got {list(a.shape)}")
                setattr(self, name, a)
        if self.sink_scores is not None:
            self.sink_scores = np.asarray(self.sink_scores, dtype=np.float32)
            if self.sink_scores.ndim != 3 or self.sink_scores.shape[2] != n_tok:
                raise SinkwidgetsValueError(f"sink_scores must be [L, H, n_tok={n_tok}] (one α per packed token), got "
                                            f"{list(self.sink_scores.shape)}")
        if self.first_token_mass is not None:
            self.first_token_mass = np.asarray(self.first_token_mass, dtype=np.float32)
            if self.first_token_mass.ndim != 3 or self.first_token_mass.shape[0] != N:
                raise SinkwidgetsValueError(f"first_token_mass must be [N={N}, L, H] (one row per prompt), got "
                                            f"{list(self.first_token_mass.shape)}")
        if self.maps is not None:
            self.map_index = _heads_array(self.map_index)
            expected = np.concatenate([[0], np.cumsum(lengths ** 2)]).astype(np.int64)
            if self.map_offsets is not None:
                given = np.asarray(self.map_offsets).reshape(-1)
                if given.shape != expected.shape or not np.array_equal(given, expected):
                    bad = "length" if given.shape != expected.shape else \
                        f"entry {int(np.nonzero(given != expected)[0][0])}"
                    raise SinkwidgetsValueError(
                        f"map_offsets={show(given)} does not match the prompts' lengths ({bad} differs): it must "
                        f"be [0, cumsum(T_i ** 2)] = {show(expected)}; leave map_offsets=None to have it computed")
            self.map_offsets = expected
        elif self.map_offsets is not None:
            raise SinkwidgetsValueError(f"map_offsets={show(self.map_offsets)} given without maps: pass the maps "
                                        "too, or leave map_offsets out")
            self.maps = np.asarray(self.maps)
            if self.maps.shape != (len(self.map_index), int(self.map_offsets[-1])):
                raise SinkwidgetsValueError(f"maps must be [M={len(self.map_index)}, sum T_i^2="
                                            f"{int(self.map_offsets[-1])}], got {list(self.maps.shape)}")
        for name in ("pooled_mean", "pooled_last"):
            a = getattr(self, name)
            if a is not None:
                a = np.asarray(a, dtype=np.float32)
                if self.pooled_layers is None:
                    raise SinkwidgetsValueError(f"{name} given without pooled_layers (the layer of each slot)")
                self.pooled_layers = np.asarray(self.pooled_layers, dtype=np.int32).reshape(-1)
                if a.ndim != 3 or a.shape[:2] != (N, len(self.pooled_layers)):
                    raise SinkwidgetsValueError(f"{name} must be [N={N}, Ls={len(self.pooled_layers)}, d] (Ls = "
                                                f"len(pooled_layers)), got {list(a.shape)}")
                setattr(self, name, a)
        if self.labels is not None:  # integer classes; non-integral floats are refused, never truncated
            self.labels = check_labels("labels", self.labels, n=N)
        if self.groups is not None:
            self.groups = [str(g) for g in self.groups]
            if len(self.groups) != N:
                raise SinkwidgetsValueError(f"groups must have one entry per prompt ({N}), got {len(self.groups)}")
        self.meta = dict(self.meta)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_prompts(cls, tokens: Sequence[Sequence[str]], *, heads: Any = (), head_outputs=None, head_values=None,
                     sink_scores=None, first_token_mass=None, maps=None, map_index=None, token_ids=None,
                     pooled_mean=None, pooled_last=None, pooled_layers=None, labels=None, groups=None,
                     meta=None) -> TagData:
        """Pack per-prompt arrays: ``head_outputs[i]`` / ``head_values[i]`` are ``[P, T_i, d]``, ``sink_scores[i]``
        ``[L, H, T_i]``, ``maps[i]`` ``[M, T_i, T_i]``, ``token_ids[i]`` ``[T_i]``; pooled arrays are ``[N, Ls, d]``."""
        _check_tokens(tokens)
        tokens = [list(t) for t in tokens]
        lengths = np.array([len(t) for t in tokens], dtype=np.int64)
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)

        def cat(parts, axis):
            return None if parts is None else np.concatenate([np.asarray(p) for p in parts], axis=axis)

        packed_maps = None
        if maps is not None:
            packed_maps = np.concatenate([np.asarray(m).reshape(len(m), -1) for m in maps], axis=1)
        return cls(tokens=tokens, offsets=offsets, heads=heads, token_ids=cat(token_ids, 0),
                   head_outputs=cat(head_outputs, 1), head_values=cat(head_values, 1),
                   sink_scores=cat(sink_scores, 2),
                   first_token_mass=None if first_token_mass is None else np.stack(first_token_mass),
                   maps=packed_maps, map_index=map_index, pooled_mean=pooled_mean, pooled_last=pooled_last,
                   pooled_layers=pooled_layers, labels=labels, groups=groups, meta=meta or {})

    # ------------------------------------------------------------------ shapes and access
    @property
    def n_prompts(self) -> int:
        """Number of prompts ``N``."""
        return len(self.tokens)

    def __len__(self) -> int:
        return self.n_prompts

    @property
    def lengths(self) -> np.ndarray:
        """Real tokens per prompt, ``[N]``."""
        return np.diff(self.offsets)

    @property
    def n_tokens(self) -> int:
        """Total number of tokens ``n_tok``."""
        return int(self.offsets[-1])

    @property
    def d_model(self) -> int | None:
        for a in (self.head_outputs, self.head_values, self.pooled_mean, self.pooled_last):
            if a is not None:
                return int(a.shape[-1])
        return None

    @property
    def positions(self) -> np.ndarray:
        """Each packed entry's position inside its prompt, ``[n_tok]``."""
        return np.arange(self.n_tokens) - np.repeat(self.offsets[:-1], self.lengths)

    @property
    def prompt_of(self) -> np.ndarray:
        """Each packed entry's prompt index, ``[n_tok]``."""
        return np.repeat(np.arange(self.n_prompts), self.lengths)

    def span(self, i: int) -> slice:
        """The packed entries of prompt ``i``."""
        if not -self.n_prompts <= i < self.n_prompts:
            raise SinkwidgetsIndexError(f"i={i!r}: prompt {i} out of range: this TagData has {self.n_prompts} prompts; "
                                         f"use 0..{self.n_prompts - 1} (or a negative index from the end)")
        i = i % self.n_prompts
        return slice(int(self.offsets[i]), int(self.offsets[i + 1]))

    def head_slot(self, head: Any) -> int:
        """Row of ``(layer, head)`` in ``heads`` (and in ``head_outputs`` / ``head_values``)."""
        l, h = _pair(head)
        hit = np.nonzero((self.heads[:, 0] == l) & (self.heads[:, 1] == h))[0]
        if not len(hit):
            have = [f"L{a}H{b}" for a, b in self.heads.tolist()]
            raise SinkwidgetsKeyError(f"head L{l}H{h} was not collected (this TagData has {have or 'no heads'}); "
                                      f"collect again with heads=[({l}, {h}), ...]")
        return int(hit[0])

    def outputs(self, head: Any) -> np.ndarray:
        """The head's outputs after ``W_O``, packed ``[n_tok, d]``."""
        if self.head_outputs is None:
            raise SinkwidgetsValueError("this TagData has no head_outputs; collect with outputs=True")
        return self.head_outputs[self.head_slot(head)]

    def values(self, head: Any) -> np.ndarray:
        """The head's values after ``W_O`` (``g_j = v_j W_O^h``), packed ``[n_tok, d]``."""
        if self.head_values is None:
            raise SinkwidgetsValueError("this TagData has no head_values; collect with values=True")
        return self.head_values[self.head_slot(head)]

    def alpha(self, head: Any) -> np.ndarray:
        """Gu et al. α of every key for one head, packed ``[n_tok]``."""
        if self.sink_scores is None:
            raise SinkwidgetsValueError("this TagData has no sink_scores; collect with summary=True")
        l, h = _pair(head)
        L, H = self.sink_scores.shape[:2]
        if not (0 <= l < L and 0 <= h < H):
            raise SinkwidgetsKeyError(f"head=({l}, {h}): head L{l}H{h} out of range: the model has layers 0..{L - 1} "
                                      f"and heads 0..{H - 1}; pick a head inside them")
        return self.sink_scores[l, h]

    def has_map(self, head: Any) -> bool:
        l, h = _pair(head)
        return self.map_index is not None and bool(np.any((self.map_index[:, 0] == l) & (self.map_index[:, 1] == h)))

    def attention_map(self, head: Any, i: int) -> np.ndarray:
        """Attention map ``[T_i, T_i]`` (queries × keys) of ``head`` on prompt ``i``, float32."""
        l, h = _pair(head)
        if not self.has_map(head):
            kept = [] if self.map_index is None else [f"L{a}H{b}" for a, b in self.map_index.tolist()]
            raise SinkwidgetsKeyError(f"no attention map of L{l}H{h} (kept: {kept or 'none'}); collect with "
                                      f"maps=[({l}, {h})]")
        m = int(np.nonzero((self.map_index[:, 0] == l) & (self.map_index[:, 1] == h))[0][0])
        T = int(self.lengths[i])
        a, b = int(self.map_offsets[i]), int(self.map_offsets[i + 1])
        return np.asarray(self.maps[m, a:b], dtype=np.float32).reshape(T, T)

    def pooled(self, layer: int, pool: str = "mean") -> np.ndarray:
        """Pooled residual after ``layer``, ``[N, d]`` (``pool`` is ``"mean"`` over ``t >= 1`` or ``"last"``)."""
        if pool not in ("mean", "last"):
            raise SinkwidgetsValueError(f"pool must be 'mean' or 'last', got {pool!r}; pass pool='mean' or pool='last'")
        arr = self.pooled_mean if pool == "mean" else self.pooled_last
        if arr is None or self.pooled_layers is None:
            raise SinkwidgetsValueError(f"this TagData has no pooled residual ({pool!r}); collect with layers=[...] "
                                        f"and pool=('mean', 'last')")
        hit = np.nonzero(self.pooled_layers == int(layer))[0]
        if not len(hit):
            raise SinkwidgetsKeyError(f"no pooled residual after layer {layer} (pooled layers: "
                                      f"{self.pooled_layers.tolist()}); collect with layers=[{layer}, ...]")
        return arr[:, int(hit[0])]

    def subset(self, prompts: Sequence[int]) -> TagData:
        """A TagData with only the given prompts (in that order)."""
        idx = np.asarray(prompts, dtype=np.int64).reshape(-1)
        if len(idx) and (idx.min() < -self.n_prompts or idx.max() >= self.n_prompts):
            bad = [int(i) for i in idx if not -self.n_prompts <= i < self.n_prompts]
            raise SinkwidgetsIndexError(f"prompts: prompt indices {bad[:5]} out of range 0..{self.n_prompts - 1}; "
                                         "pass indices of this TagData's prompts (negative ones count from the end)")
        idx = idx % max(self.n_prompts, 1)
        tok_idx = np.concatenate([np.arange(self.offsets[i], self.offsets[i + 1]) for i in idx]) if len(idx) \
            else np.zeros(0, np.int64)
        lengths = self.lengths[idx]
        maps = None
        if self.maps is not None:
            map_idx = np.concatenate([np.arange(self.map_offsets[i], self.map_offsets[i + 1]) for i in idx]) \
                if len(idx) else np.zeros(0, np.int64)
            maps = self.maps[:, map_idx]

        def take(a, axis):
            return None if a is None else np.take(a, idx if axis == "p" else tok_idx, axis=axis if axis != "p" else 0)

        return TagData(
            tokens=[self.tokens[i] for i in idx],
            offsets=np.concatenate([[0], np.cumsum(lengths)]),
            heads=self.heads.copy(),
            token_ids=None if self.token_ids is None else self.token_ids[tok_idx],
            head_outputs=None if self.head_outputs is None else self.head_outputs[:, tok_idx],
            head_values=None if self.head_values is None else self.head_values[:, tok_idx],
            sink_scores=None if self.sink_scores is None else self.sink_scores[:, :, tok_idx],
            first_token_mass=take(self.first_token_mass, "p"),
            maps=maps, map_index=None if self.map_index is None else self.map_index.copy(),
            map_offsets=None if maps is None else np.concatenate([[0], np.cumsum(lengths ** 2)]),
            pooled_mean=take(self.pooled_mean, "p"), pooled_last=take(self.pooled_last, "p"),
            pooled_layers=None if self.pooled_layers is None else self.pooled_layers.copy(),
            labels=take(self.labels, "p"),
            groups=None if self.groups is None else [self.groups[i] for i in idx],
            meta=dict(self.meta),
        )

    def __repr__(self) -> str:
        parts = [f"N={self.n_prompts}", f"tokens={self.n_tokens}"]
        if len(self.heads):
            parts.append("heads=[" + ", ".join(f"L{a}H{b}" for a, b in self.heads.tolist()) + "]")
        if self.pooled_layers is not None:
            parts.append(f"pooled_layers={self.pooled_layers.tolist()}")
        if self.maps is not None:
            parts.append(f"maps={len(self.map_index)}")
        return f"TagData(model={self.meta.get('model', 'unknown')!r}, " + ", ".join(parts) + ")"

    # ------------------------------------------------------------------ persistence
    @staticmethod
    def save_path(path: str | os.PathLike) -> Path:
        """The file :meth:`save` writes for ``path``: ``.npz`` is appended when the name does not end in it."""
        return npz_path(path)

    def save(self, path: str | os.PathLike) -> Path:
        """Write to one ``.npz`` file (``.npz`` appended when missing) and return the path written.

        The bytes go to a unique temporary file in the same folder, which then atomically replaces ``path``
        (``os.replace``): concurrent writers never mix their bytes, a reader sees the old or the complete new
        file, and a failed write leaves nothing behind. Arrays are stored uncompressed (float data compresses
        poorly and compression would dominate the save time).
        """
        arrays = {n: np.asarray(getattr(self, n)) for n in _ARRAYS if getattr(self, n) is not None}
        header = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, "tokens": self.tokens,
                  "groups": self.groups, "meta": _jsonable(self.meta)}
        arrays[HEADER] = header_array(header)
        return write_headered(path, arrays, kind="TagData", example="data.save('tags.npz')", compressed=False)

    @classmethod
    def load(cls, path: str | os.PathLike) -> TagData:
        """Read a file written by :meth:`save`: ``path`` as given, or with ``.npz`` appended when that is the file
        that exists (``data.save("x")`` writes ``x.npz``; ``TagData.load("x")`` reads it).

        Raises :class:`TagDataFormatError` on a corrupt, foreign or newer file, or one whose arrays disagree
        (e.g. ``map_offsets`` that do not match the prompts' lengths), and :class:`TagDataNotFoundError` (a
        ``FileNotFoundError``) when neither path exists.
        """
        if isinstance(path, (bytes, bytearray)) or not isinstance(path, (str, os.PathLike)):
            raise ArgumentTypeError(f"path={show(path)}: give the file's path (a str or Path), e.g. "
                                          "TagData.load('tags.npz')")
        if not Path(path).exists():
            alt = npz_path(path)
            if alt.is_file():
                path = alt
            else:
                also = "" if alt == Path(path) else f" nor at {str(alt)!r}"
                raise TagDataNotFoundError(f"no TagData file at {str(path)!r}{also}; pass the path that "
                                           "data.save(...) returned (it appends .npz), e.g. TagData.load('tags.npz')")
        header, data = read_headered(path, kind="TagData", format_name=FORMAT_NAME, max_version=FORMAT_VERSION,
                                     error=TagDataFormatError, required=("offsets",))
        unknown = sorted(set(data) - set(_ARRAYS))
        if unknown:
            raise TagDataFormatError(f"{str(path)!r} holds arrays this version does not know: {unknown}")
        try:
            return cls(tokens=header.get("tokens", []), groups=header.get("groups"), meta=header.get("meta", {}),
                       **data)
        except (TypeError, ValueError) as exc:
            raise TagDataFormatError(f"{str(path)!r} holds inconsistent arrays: {exc}; the file was changed or "
                                     "not written by TagData.save(): collect the data again") from exc


def _pair(head: Any) -> tuple[int, int]:
    try:
        l, h = head
        return int(l), int(h)
    except (TypeError, ValueError):
        raise SinkwidgetsValueError(f"head={head!r}: a head is a (layer, head) pair of ints; pass e.g. "
                                    "head=(2, 2)") from None
