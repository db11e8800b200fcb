"""A hand-made attention head in numpy: softmax, softmax₁ and sigmoid attention side by side.

For tutorial 02 ("softmax must sum to one"). One query attends over a few keys; the normaliser decides whether the
head can put its attention *nowhere*:

* ``"softmax"``: :math:`a_j = e^{z_j} / \\sum_i e^{z_i}`; the weights always sum to one.
* ``"softmax1"`` (softmax₁, Xiao et al. 2024, Eq. 2): :math:`a_j = e^{z_j} / (1 + \\sum_i e^{z_i})`; the weights
  sum to less than one, and equal ordinary softmax over the same keys plus one extra key whose logit is 0
  (an all-zero key) and whose value is all-zero (:func:`prepend_zero_kv`).
* ``"sigmoid"`` (Gu et al. 2025, §7.4): :math:`a_j = \\sigma(z_j + b)`, each weight on its own, no normalisation.

Logits are :math:`z_j = q \\cdot k_j / \\sqrt{d}`. Everything is numpy only. :func:`softmax1` is the package's one
definition (``sinkwidgets._softmax1``, also used by the toy's ``attn="softmax1"``); draw the weights with
``sw.charts.weights_chart``.

>>> from sinkwidgets.lessons import handmade as hm
>>> q, K, V = hm.example_head()
>>> hm.attend(q, K, V, "softmax").weights.sum()
1.0
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .._softmax1 import softmax1
from ..errors import SinkwidgetsValueError

__all__ = ["KINDS", "Attended", "softmax", "softmax1", "sigmoid", "logits", "attend", "prepend_zero_kv",
           "example_head"]

KINDS = ("softmax", "softmax1", "sigmoid")


def softmax(z: np.ndarray, axis: int = -1) -> np.ndarray:
    """Ordinary softmax, numerically stable (subtracts the max)."""
    z = np.asarray(z, dtype=np.float64)
    e = np.exp(z - z.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def sigmoid(z: np.ndarray, bias: float = 0.0) -> np.ndarray:
    """Sigmoid attention: :math:`\\sigma(z_j + b)` for each key on its own (no normalisation)."""
    z = np.asarray(z, dtype=np.float64) + bias
    return 0.5 * (1.0 + np.tanh(0.5 * z))  # = 1 / (1 + e^-z), stable for large |z|


def logits(q: np.ndarray, K: np.ndarray) -> np.ndarray:
    """Scaled dot products :math:`q \\cdot k_j / \\sqrt{d}` for a query ``[d]`` (or ``[N, d]``) and keys ``[T, d]``."""
    q = np.asarray(q, dtype=np.float64)
    K = np.asarray(K, dtype=np.float64)
    if K.ndim != 2 or q.shape[-1] != K.shape[1]:
        raise SinkwidgetsValueError(f"q and K: need q [..., d] and K [T, d] with the same d; got {list(q.shape)} and "
                                    f"{list(K.shape)}; pass one key per row of K, as wide as q")
    return q @ K.T / np.sqrt(K.shape[1])


@dataclass(frozen=True)
class Attended:
    """The result of one head: its attention ``weights`` over the keys and its ``output`` (weights @ values)."""

    kind: str
    logits: np.ndarray
    weights: np.ndarray
    output: np.ndarray

    @property
    def total(self) -> float | np.ndarray:
        """Total attention (sum of weights): 1 for softmax, ≤ 1 for softmax₁, anything ≥ 0 for sigmoid."""
        return self.weights.sum(-1)


def attend(q: np.ndarray, K: np.ndarray, V: np.ndarray, kind: str = "softmax", bias: float = 0.0) -> Attended:
    """One attention head for query ``q [d]`` (or ``[N, d]``) over keys ``K [T, d]`` and values ``V [T, d_v]``.

    ``kind`` is one of :data:`KINDS`; ``bias`` is the sigmoid's logit offset ``b`` (ignored otherwise).
    """
    if kind not in KINDS:
        raise SinkwidgetsValueError(f"kind must be one of {KINDS}, got {kind!r}; e.g. kind='softmax'")
    V = np.asarray(V, dtype=np.float64)
    z = logits(q, K)
    if V.ndim != 2 or V.shape[0] != z.shape[-1]:
        raise SinkwidgetsValueError(f"V must be [T, d_v] with T = {z.shape[-1]} keys, got {list(V.shape)}; pass one "
                                    "value row per key")
    w = softmax(z) if kind == "softmax" else softmax1(z) if kind == "softmax1" else sigmoid(z, bias)
    return Attended(kind, z, w, w @ V)


def prepend_zero_kv(K: np.ndarray, V: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Keys and values with one extra all-zero key and value in front (position 0).

    Ordinary softmax over these equals softmax₁ over the originals (Xiao et al. 2024, Eq. 2): the zero key's logit
    is 0, so it takes weight :math:`1/(1+\\sum e^{z_i})`, and its zero value adds nothing to the output.
    """
    K = np.asarray(K, dtype=np.float64)
    V = np.asarray(V, dtype=np.float64)
    return (np.vstack([np.zeros((1, K.shape[1])), K]), np.vstack([np.zeros((1, V.shape[1])), V]))


def example_head(seed: int = 0, n_keys: int = 6, d: int = 8) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A small reproducible head: a query ``q [d]``, keys ``K [n_keys, d]`` and values ``V [n_keys, d]``.

    The query points away from every key (all logits negative), i.e. it finds nothing relevant: the case where a
    head "wants to do nothing".
    """
    if n_keys < 1 or d < 1:
        raise SinkwidgetsValueError(f"n_keys={n_keys!r}, d={d!r}: both must be >= 1; e.g. n_keys=6, d=8")
    rng = np.random.default_rng(seed)
    q = rng.normal(size=d)
    K = rng.normal(size=(n_keys, d))
    V = rng.normal(size=(n_keys, d))
    # move each key along q so that its logit is a chosen negative number: the query matches no key
    target = rng.uniform(-3.0, -1.0, size=n_keys)
    K = K + np.outer((target * np.sqrt(d) - K @ q) / float(q @ q), q)
    return q, K, V
