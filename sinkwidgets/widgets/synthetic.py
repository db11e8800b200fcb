r"""Synthetic, SmolLM2-shaped attention with a first-token sink: demo data for the widgets (no model needed).

The attention of head ``(layer, head)`` is built so that its sink summaries are exact and cost ``O(T)`` per head,
while the full ``[T, T]`` map (``O(T²)``) is only built for the heads you keep. Row ``t >= 1`` is

.. math:: A_{t,k} = s\,[k = 0] + r\,[k = t-1] + (1 - s - r)\,\frac{w_k}{W_t}, \qquad W_t = \sum_{j \le t} w_j

for keys ``k <= t`` (causal; row 0 is ``[1]``): ``s`` is the head's sink strength (none in layers 0-1,
strong from layer 3 on, as measured in SmolLM2), ``r`` a previous-token share and ``w`` positive key
weights with a few heavy "punctuation" keys (prompt-dependent secondary sinks). Rows sum to 1.

Used by the tests and ``benchmarks/render.py`` to give every tool the same attention data.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from ..errors import SinkwidgetsValueError
from ..sinktrace import SinkTrace

__all__ = ["synthetic_trace", "synthetic_attention", "head_params"]

_WORDS = ("the", " cat", " sat", " on", " a", " mat", ",", " and", " then", " it", " slept", ".", " A", " dog",
          " barked", " loudly", "\n", " while", " rain", " fell", ";", " nobody", " noticed", "!")


def head_params(n_layers: int, n_heads: int, T: int, seed: int = 0):
    """Per-head parameters ``(s [L, H], r [L, H], w [L, H, T])`` of the synthetic attention."""
    rng = np.random.default_rng(seed)
    L, H = n_layers, n_heads
    s = rng.beta(5, 2, size=(L, H)) * 0.95
    s[: min(2, L)] = rng.uniform(0.0, 0.08, size=(min(2, L), H))  # no sink in the first layers
    strong = rng.random((L, H)) < 0.2
    s[2:][strong[2:]] = rng.uniform(0.97, 0.995, size=int(strong[2:].sum()))
    r = np.minimum(rng.uniform(0.02, 0.3, size=(L, H)), 0.999 - s)
    w = rng.lognormal(0.0, 0.6, size=(L, H, T))
    punct = rng.random(T) < 0.04  # the same "punctuation" keys in every head, like real prompts
    punct[0] = False
    w[:, :, punct] *= rng.uniform(5, 60, size=(L, H, 1))
    return s.astype(np.float64), r.astype(np.float64), w.astype(np.float64)


def synthetic_attention(s: float, r: float, w_T: np.ndarray, dtype=np.float32) -> np.ndarray:
    """The full causal ``[T, T]`` map of one head (see the module formula)."""
    w = np.asarray(w_T, dtype=np.float64)
    T = len(w)
    m = 1.0 - s - r
    W = np.cumsum(w)
    A = (m * w[None, :] / W[:, None]) * np.tri(T, dtype=np.float64)
    A[1:, 0] += s
    A[np.arange(1, T), np.arange(T - 1)] += r
    A[0] = 0.0
    A[0, 0] = 1.0
    return A.astype(dtype)


def _summaries(s, r, w):
    """Exact α [T], first-token mass and mean row entropy of one head in O(T)."""
    T = len(w)
    m = 1.0 - s - r
    W = np.cumsum(w)
    invW = 1.0 / W
    suffix = np.cumsum(invW[::-1])[::-1]  # Σ_{t >= k} 1/W_t
    col = m * w * suffix
    col[0] -= m * w[0] * invW[0]  # row 0 is [1], not the mixture
    col[0] += 1.0 + s * (T - 1)
    col[: T - 1] += r
    alpha = col / (T - np.arange(T))
    t = np.arange(1, T)
    c = m * invW[1:]
    ftm = float(np.mean(s + r * (t == 1) + c * w[0])) if T > 1 else 1.0

    def f(x):
        x = np.asarray(x, dtype=np.float64)
        return np.where(x > 0, x * np.log(np.maximum(x, 1e-300)), 0.0)

    S = np.cumsum(w * np.log(w))[1:]
    base = c * (W[1:] * np.log(np.maximum(c, 1e-300)) + S)  # Σ_k f(c w_k)
    p0 = c * w[0]
    base += f(p0 + s + r * (t == 1)) - f(p0)
    prev = t - 1
    pv = c * w[prev]
    corr = np.where(prev > 0, f(pv + r) - f(pv), 0.0)
    ent = -(base + corr)
    entropy = float(np.mean(ent)) if T > 1 else 0.0
    return alpha, ftm, entropy


def synthetic_trace(
    T: int = 128,
    n_layers: int = 30,
    n_heads: int = 9,
    keep_maps: str | Iterable[int | Sequence[int]] | None = ((3, 0),),
    seed: int = 0,
    tokens: Sequence[str] | None = None,
    map_dtype=np.float16,
) -> SinkTrace:
    """A SmolLM2-shaped (30 layers × 9 heads) :class:`SinkTrace` of synthetic attention with a token-0 sink.

    Parameters
    ----------
    T : int
        Number of tokens.
    n_layers, n_heads : int
        Shape of the model.
    keep_maps : "all", list of layers or (layer, head) pairs, or None
        Which full ``[T, T]`` maps to keep (as ``sinkwidgets.trace`` does); each costs ``T² × 2`` bytes.
    seed : int
        Random seed (same seed, same attention).
    tokens : list of str, optional
        Token strings (default: a repeating made-up sentence).

    Returns
    -------
    SinkTrace
        With ``meta["synthetic"] = True``.
    """
    if T < 1:
        raise SinkwidgetsValueError(f"T={T!r}: T must be >= 1 (the number of tokens); e.g. T=64")
    L, H = n_layers, n_heads
    s, r, w = head_params(L, H, T, seed)
    alpha = np.empty((L, H, T), np.float32)
    ftm = np.empty((L, H), np.float32)
    ent = np.empty((L, H), np.float32)
    for ly in range(L):
        for h in range(H):
            alpha[ly, h], ftm[ly, h], ent[ly, h] = _summaries(s[ly, h], r[ly, h], w[ly, h])
    if keep_maps is None:
        pairs: list[tuple[int, int]] = []
    elif keep_maps == "all":
        pairs = [(ly, h) for ly in range(L) for h in range(H)]
    else:
        pairs = []
        for item in keep_maps:
            if isinstance(item, (int, np.integer)):
                pairs += [(int(item), h) for h in range(H)]
            else:
                pairs.append((int(item[0]), int(item[1])))
    maps = index = None
    if pairs:
        maps = np.stack([synthetic_attention(s[ly, h], r[ly, h], w[ly, h], dtype=map_dtype) for ly, h in pairs])
        index = np.asarray(pairs, np.int32)
    if tokens is None:
        tokens = ["<s>"] + [_WORDS[i % len(_WORDS)] for i in range(T - 1)]
    tokens = list(tokens)
    resid = np.full((L, T), 20.0, np.float32) + np.random.default_rng(seed + 1).normal(0, 2, (L, T)).astype(np.float32)
    resid[3:, 0] = 3500.0
    return SinkTrace(
        sink_scores=alpha, tokens=tokens, first_token_mass=ftm, entropy=ent, resid_norms=resid,
        maps=maps, map_index=index,
        meta={"model": f"synthetic-{L}x{H}", "add_bos": False, "text": "".join(tokens), "causal": True,
              "synthetic": True, "seed": seed},
    )
