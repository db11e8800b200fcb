"""Binary transport between the Python kernel and the widget JavaScript.

Every numeric array crosses to the browser as ONE little-endian binary buffer plus a small JSON "spec"
(``dtype``, ``shape``, ``scale``, ``transform``), never as a JSON list. ``static/sinkwidgets.js`` holds
the mirror decoders (``decodeArray``); :func:`decode_array` here is the Python mirror used by the tests.

The tuning constants of the transport live in this module, each with the reason for its value.

Encodings
---------
``float32`` / ``float16``
    Raw little-endian IEEE floats. ``scale`` is 1.
``uint8`` with ``transform="linear"``
    ``q = round(255 * x / scale)``, decoded ``x = q / 255 * scale``.
``uint8`` with ``transform="sqrt"``
    ``q = round(255 * sqrt(x / scale))``, decoded ``x = (q / 255) ** 2 * scale``: spends the 256 levels
    where attention values live (most are small), keeping the absolute error below ``scale / 255`` everywhere
    and far below it for small values.
"""

from __future__ import annotations

import base64
import math
from typing import Any

import numpy as np

from ..errors import SinkwidgetsValueError

# ----------------------------------------------------------------------------- tuning constants
#: Largest side (in cells) of the attention-map overview sent first. 512 cells is about the heatmap's
#: on-screen size at device-pixel-ratio 1, so the overview is never visibly coarser than the screen before
#: zooming; 512² float16 = 512 KiB, which keeps SmolLM2's T = 4096 first payload under 2 MB with α.
OVERVIEW_MAX = 512

#: Side (in cells of its level) of one full-resolution / intermediate tile requested on zoom. 256² float16
#: = 128 KiB: big enough that a 512-px view needs at most 9 tiles (few round trips), small enough that one
#: answer takes a few ms to pool and send.
TILE_SIZE = 256

#: dtype of attention maps (overview and tiles). Probabilities are in [0, 1]; float16 keeps 3 significant
#: digits and reaches 6e-8 (subnormals), enough for a 4-decade log colour scale, at half float32's bytes.
MAP_DTYPE = "float16"

#: α [L, H, T] travels as float16 (3 significant digits on hover) while it is at most this many bytes;
#: above that as uint8 with a sqrt transform (half the bytes, absolute error < 0.004). SmolLM2 (30 × 9
#: heads) switches between T = 1024 (553 KB) and T = 4096 (1.1 MB as uint8 instead of 2.2 MB as float16).
ALPHA_F16_MAX_BYTES = 1 << 20

#: First payload budget the tests hold the explorer to (issue: SmolLM2 at T = 4096 within 2 MB).
PAYLOAD_BUDGET_BYTES = 2_000_000

#: Overview side used for maps embedded in an offline HTML file; with many kept maps the side shrinks so
#: that all overviews together stay within STANDALONE_MAP_BUDGET (a shareable file, not a data dump).
STANDALONE_OVERVIEW_MAX = OVERVIEW_MAX
STANDALONE_MAP_BUDGET = 24 * 1024 * 1024

_DTYPES = {"float32": "<f4", "float16": "<f2", "uint8": "u1"}
_TRANSFORMS = ("linear", "sqrt")


# ----------------------------------------------------------------------------- encode / decode
def encode_array(
    array: np.ndarray, dtype: str = "float32", *, scale: float | None = None, transform: str = "linear"
) -> tuple[dict[str, Any], bytes]:
    """Encode a numeric array to ``(spec, little-endian bytes)``.

    Parameters
    ----------
    array : numpy array of any shape
        Values to send. For ``uint8`` they must be finite and ``>= 0``.
    dtype : {"float32", "float16", "uint8"}
        Wire dtype.
    scale : float, optional
        For ``uint8`` only: the value that maps to 255 (default: the array's max, or 1 if it is 0).
    transform : {"linear", "sqrt"}
        For ``uint8`` only: quantise ``x / scale`` linearly or its square root.

    Returns
    -------
    spec : dict
        ``{"dtype", "shape", "scale", "transform"}``, JSON-ready.
    data : bytes
        ``prod(shape) * itemsize`` bytes, C order.
    """
    if dtype not in _DTYPES:
        raise SinkwidgetsValueError(f"dtype must be one of {sorted(_DTYPES)}, got {dtype!r}; e.g. dtype='float32'")
    if transform not in _TRANSFORMS:
        raise SinkwidgetsValueError(f"transform must be one of {_TRANSFORMS}, got {transform!r}; e.g. "
                                    "transform='linear'")
    a = np.asarray(array)
    spec: dict[str, Any] = {"dtype": dtype, "shape": [int(s) for s in a.shape], "scale": 1.0, "transform": "linear"}
    if dtype != "uint8":
        return spec, np.ascontiguousarray(a, dtype=_DTYPES[dtype]).tobytes()
    x = np.nan_to_num(np.asarray(a, dtype=np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    if scale is None:
        scale = float(x.max()) if x.size else 1.0
    scale = float(scale) if scale and scale > 0 and math.isfinite(scale) else 1.0
    u = np.clip(x / scale, 0.0, 1.0)
    if transform == "sqrt":
        u = np.sqrt(u)
    q = np.rint(u * 255.0).astype(np.uint8)
    spec.update(scale=scale, transform=transform)
    return spec, np.ascontiguousarray(q).tobytes()


def decode_array(spec: dict[str, Any], data: bytes | memoryview) -> np.ndarray:
    """Python mirror of the JavaScript ``decodeArray``: bytes + spec → float32 array of ``spec["shape"]``."""
    raw = np.frombuffer(bytes(data), dtype=_DTYPES[spec["dtype"]])
    shape = tuple(spec["shape"])
    if raw.size != int(np.prod(shape, dtype=np.int64)):
        raise SinkwidgetsValueError(f"data: the buffer holds {raw.size} values but spec shape {list(shape)} needs "
                                    f"{int(np.prod(shape))}; pass the buffer encode_array returned with this spec")
    if spec["dtype"] != "uint8":
        return raw.astype(np.float32).reshape(shape)
    u = np.arange(256, dtype=np.float64) / 255.0  # same 256-entry table as the JS, in float64
    lut = (u * u if spec.get("transform") == "sqrt" else u) * float(spec.get("scale", 1.0))
    return lut.astype(np.float32)[raw].reshape(shape)


def packed(array: np.ndarray, dtype: str = "float32", **kw: Any) -> dict[str, Any]:
    """:func:`encode_array` as one dict ``{**spec, "data": bytes}``.

    ipywidgets pulls every ``bytes`` value nested in a synced dict out of the JSON message into a binary
    buffer, so a dict of packed arrays is sent as JSON specs + raw buffers."""
    spec, data = encode_array(array, dtype, **kw)
    return {**spec, "data": data}


def alpha_encoding(shape: tuple[int, ...]) -> tuple[str, str]:
    """``(dtype, transform)`` for α of ``shape`` (see :data:`ALPHA_F16_MAX_BYTES`)."""
    n = int(np.prod(shape, dtype=np.int64))
    return ("float16", "linear") if 2 * n <= ALPHA_F16_MAX_BYTES else ("uint8", "sqrt")


# ----------------------------------------------------------------------------- pooling
def overview_level(T: int, max_side: int = OVERVIEW_MAX) -> int:
    """Pyramid level ``z`` (stride ``2**z``) of the overview of a ``[T, T]`` map: the smallest stride whose
    pooled side ``ceil(T / 2**z)`` fits in ``max_side``."""
    if T < 1 or max_side < 1:
        raise SinkwidgetsValueError(f"T={T}, max_side={max_side}: both must be >= 1 (a map of at least one token, "
                                    "drawn on at least one cell)")
    z = 0
    while math.ceil(T / (1 << z)) > max_side:
        z += 1
    return z


def max_pool(block: np.ndarray, stride: int) -> np.ndarray:
    """Max over ``stride × stride`` cells of a 2-D array (edges padded with 0; attention is ``>= 0``).

    Max, not mean: a sink column or a sharp previous-token diagonal stays visible in a downsampled overview,
    where a mean would dilute it by the stride.

    Speed (T = 8192 is 67 M cells): non-negative IEEE floats order like their bit patterns read as signed
    integers, so float16/float32 maps are pooled as int16/int32 (no float16 emulation in numpy), rows first
    (contiguous, vectorised) and then columns."""
    a = np.asarray(block)
    if stride == 1:
        return a
    as_int = {np.dtype(np.float16): np.int16, np.dtype(np.float32): np.int32}.get(a.dtype)
    work = a.view(as_int) if as_int is not None and a.flags.c_contiguous else a
    if as_int is not None and work is a:  # a non-contiguous slice (a tile): view a contiguous copy
        work = np.ascontiguousarray(a).view(as_int)
    r, c = work.shape
    R, C = -(-r // stride), -(-c // stride)
    if (R * stride, C * stride) != (r, c):
        pad = np.zeros((R * stride, C * stride), dtype=work.dtype)
        pad[:r, :c] = work
        work = pad
    pooled = work.reshape(R, stride, C * stride).max(axis=1).reshape(R, C, stride).max(axis=2)
    return pooled.view(a.dtype) if as_int is not None else pooled


def tile_bounds(T: int, level: int, ty: int, tx: int) -> tuple[int, int, int, int]:
    """Token bounds ``(q0, q1, k0, k1)`` (end-exclusive, clipped to T) of tile ``(ty, tx)`` at ``level``."""
    span = TILE_SIZE << max(level, 0)  # a negative level is refused below, not by the shift
    n_tiles = -(-T // span)
    if level < 0 or not (0 <= ty < n_tiles and 0 <= tx < n_tiles):
        raise SinkwidgetsValueError(
            f"tile (level={level}, ty={ty}, tx={tx}) is outside a T={T} map ({n_tiles}×{n_tiles} tiles at this level); "
            f"ask for level >= 0 and ty, tx in 0..{n_tiles - 1}"
        )
    return ty * span, min(T, (ty + 1) * span), tx * span, min(T, (tx + 1) * span)


def pooled_tile(attn_TT: np.ndarray, level: int, ty: int, tx: int) -> np.ndarray:
    """Tile ``(ty, tx)`` of the level-``level`` pyramid of a ``[T, T]`` map, max-pooled, float32."""
    T = attn_TT.shape[0]
    q0, q1, k0, k1 = tile_bounds(T, level, ty, tx)
    return np.asarray(max_pool(attn_TT[q0:q1, k0:k1], 1 << level), dtype=np.float32)


# ----------------------------------------------------------------------------- misc
def b64(data: bytes) -> str:
    """Base64 text of a buffer (for the offline HTML file)."""
    return base64.b64encode(bytes(data)).decode("ascii")


def buffers_nbytes(obj: Any) -> int:
    """Total bytes of all binary buffers nested in a dict/list state (what travels outside the JSON)."""
    if isinstance(obj, (bytes, bytearray)):
        return len(obj)
    if isinstance(obj, memoryview):
        return obj.nbytes
    if isinstance(obj, dict):
        return sum(buffers_nbytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(buffers_nbytes(v) for v in obj)
    return 0
