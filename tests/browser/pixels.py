"""Read the heatmap canvas back and compare its colours with the attention map computed in Python.

The colour map is re-implemented here independently of the widget JS (viridis, 11 stops, 256 entries), so a
pixel can be turned back into a position on the colour scale and checked against the expected value.
"""

from __future__ import annotations

import numpy as np

_VIRIDIS = np.array([
    [68, 1, 84], [72, 36, 117], [65, 68, 135], [53, 95, 141], [42, 120, 142], [33, 145, 140],
    [34, 168, 132], [68, 191, 112], [122, 209, 81], [189, 223, 38], [253, 231, 37],
], dtype=np.float64)


def lut() -> np.ndarray:
    x = np.arange(256) / 255 * (len(_VIRIDIS) - 1)
    j = np.minimum(len(_VIRIDIS) - 2, np.floor(x).astype(int))
    f = (x - j)[:, None]
    return np.floor(_VIRIDIS[j] + f * (_VIRIDIS[j + 1] - _VIRIDIS[j]) + 0.5)


def rgb_to_pos(rgb: np.ndarray) -> np.ndarray:
    """Nearest colour-scale position in [0, 1] of each RGB triple ``[N, 3]``."""
    d = ((np.asarray(rgb, np.float64)[:, None, :] - lut()[None]) ** 2).sum(-1)
    return d.argmin(1) / 255.0


def sample_heatmap(page, n: int = 48, root: str = "") -> dict:
    """Sample an ``n × n`` grid of pixels of the plot area; returns the canvas dataset and the samples."""
    sel = f'{root} [data-testid="sw-heatmap-canvas"]'.strip()
    return page.evaluate(
        """([sel, n]) => {
            const c = document.querySelector(sel);
            const d = c.dataset, S = +d.size, X0 = +d.originX, Y0 = +d.originY;
            const dpr = c.width / c.getBoundingClientRect().width;
            const ctx = c.getContext('2d');
            const img = ctx.getImageData(0, 0, c.width, c.height).data;
            const out = [];
            for (let i = 0; i < n; i++) for (let j = 0; j < n; j++) {
              const px = Math.floor(X0 + (j + 0.5) * S / n), py = Math.floor(Y0 + (i + 0.5) * S / n);
              const o = 4 * (Math.floor((py + 0.5) * dpr) * c.width + Math.floor((px + 0.5) * dpr));
              out.push([px, py, img[o], img[o + 1], img[o + 2]]);
            }
            return {dataset: Object.assign({}, d), samples: out};
        }""",
        [sel, n],
    )


def match_fraction(sampled: dict, attn_TT: np.ndarray, stride: int, vmax: float, log: bool = False,
                   tol: float = 0.025, informative: bool = False) -> float:
    """Fraction of sampled pixels whose colour matches ``attn_TT`` max-pooled by ``stride`` (the level drawn).

    ``informative=True`` counts only pixels where the expected or the drawn colour is not near the bottom of
    the scale (most of an attention map is ~0, which any head would match)."""
    d = sampled["dataset"]
    q0, q1, k0, k1 = (float(x) for x in d["view"].split(","))
    S, X0, Y0 = float(d["size"]), float(d["originX"]), float(d["originY"])
    T = attn_TT.shape[0]
    s = np.asarray(sampled["samples"], np.float64)
    k = np.floor(k0 + (s[:, 0] + 0.5 - X0) * (k1 - k0) / S).astype(int).clip(0, T - 1)
    q = np.floor(q0 + (s[:, 1] + 0.5 - Y0) * (q1 - q0) / S).astype(int).clip(0, T - 1)
    A = np.asarray(attn_TT, np.float32)
    if stride > 1:
        R = -(-T // stride)
        pad = np.zeros((R * stride, R * stride), np.float32)
        pad[:T, :T] = A
        grid = pad.reshape(R, stride, R, stride).max(axis=(1, 3))
    else:
        grid = A
    qi, ki = q // stride, k // stride
    n = grid.shape[0]

    def expected(v):
        if log:
            with np.errstate(divide="ignore"):
                e = np.where(v > 0, 1 + np.log10(np.maximum(v, 1e-30) / vmax) / 4, 0)
        else:
            e = v / vmax
        return np.clip(e, 0, 1)

    # A pixel on the border of two cells may show either (nearest-neighbour rounding): accept the 3x3 cells
    # around the one it maps to; the centre cell is used for "informative".
    cands = np.stack([expected(grid[np.clip(qi + a, 0, n - 1), np.clip(ki + b, 0, n - 1)])
                      for a in (-1, 0, 1) for b in (-1, 0, 1)])
    exp = cands[4]
    got = rgb_to_pos(s[:, 2:5])
    ok = (np.abs(cands - got[None]) <= tol).any(0)
    if informative:
        keep = np.maximum(got, exp) > 0.08
        return float(np.mean(ok[keep])) if keep.any() else 0.0
    return float(np.mean(ok))
