"""Unit tests of the widgets' binary transport (no browser): encoders, pooling, tiles, payload budget."""

from __future__ import annotations

import json

import numpy as np
import pytest
from ipywidgets.widgets.widget import _remove_buffers

from sinkwidgets.widgets import SinkExplorer, synthetic_trace
from sinkwidgets.widgets import _serialization as ser
from sinkwidgets.widgets._maps import MapStore

pytestmark = pytest.mark.unit  # no model, browser or notebook


# ----------------------------------------------------------------------------- encode / decode
@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_float_roundtrip(dtype):
    a = np.random.default_rng(0).random((3, 4, 5), dtype=np.float32)
    spec, data = ser.encode_array(a, dtype)
    assert spec == {"dtype": dtype, "shape": [3, 4, 5], "scale": 1.0, "transform": "linear"}
    assert len(data) == a.size * (4 if dtype == "float32" else 2)
    b = ser.decode_array(spec, data)
    assert b.dtype == np.float32 and b.shape == a.shape
    np.testing.assert_allclose(b, a, rtol=0 if dtype == "float32" else 1e-3, atol=0)


def test_float16_keeps_small_attention_for_log_scale():
    a = np.array([1e-4, 1e-6, 6e-8], np.float32)
    b = ser.decode_array(*ser.encode_array(a, "float16"))
    assert np.all(b > 0) and abs(b[0] - 1e-4) / 1e-4 < 1e-3


def test_uint8_linear_and_sqrt_error_bounds():
    a = np.linspace(0, 1, 1001, dtype=np.float32)
    lin = ser.decode_array(*ser.encode_array(a, "uint8", scale=1.0))
    sq = ser.decode_array(*ser.encode_array(a, "uint8", scale=1.0, transform="sqrt"))
    assert np.abs(lin - a).max() <= 0.5 / 255 + 1e-7
    assert np.abs(sq - a).max() < 0.004  # documented bound
    small = np.float32([0.0005, 0.001])
    sq_small = ser.decode_array(*ser.encode_array(small, "uint8", scale=1.0, transform="sqrt"))
    assert np.all(np.abs(sq_small - small) / small < 0.25)
    assert np.all(ser.decode_array(*ser.encode_array(small, "uint8", scale=1.0)) == 0)  # why sqrt exists


def test_uint8_default_scale_is_the_max_and_nan_is_zero():
    spec, data = ser.encode_array(np.array([0.0, 2.0, np.nan], np.float32), "uint8")
    assert spec["scale"] == 2.0 and list(data) == [0, 255, 0]


def test_bytes_are_little_endian_c_order():
    spec, data = ser.encode_array(np.array([[1.0, 2.0]], np.float32), "float32")
    assert data == np.array([1.0, 2.0], "<f4").tobytes()


def test_encode_errors_name_the_value():
    with pytest.raises(ValueError, match="dtype must be one of"):
        ser.encode_array(np.zeros(2), "float64")
    with pytest.raises(ValueError, match="transform must be one of"):
        ser.encode_array(np.zeros(2), "uint8", transform="log")
    with pytest.raises(ValueError, match="needs 6"):
        ser.decode_array({"dtype": "float32", "shape": [2, 3]}, b"\0" * 8)


def test_alpha_encoding_switches_with_size():
    assert ser.alpha_encoding((30, 9, 1024)) == ("float16", "linear")
    assert ser.alpha_encoding((30, 9, 4096)) == ("uint8", "sqrt")


# ----------------------------------------------------------------------------- pooling and tiles
def test_overview_level():
    assert ser.overview_level(100) == 0
    assert ser.overview_level(512) == 0
    assert ser.overview_level(513) == 1
    assert ser.overview_level(4096) == 3
    assert ser.overview_level(8192) == 4
    with pytest.raises(ValueError):
        ser.overview_level(0)


def test_max_pool_keeps_a_single_sink_column():
    a = np.zeros((10, 10), np.float32)
    a[:, 3] = 0.9  # one bright column
    p = ser.max_pool(a, 4)
    assert p.shape == (3, 3)  # padded edges
    np.testing.assert_array_equal(p[:, 0], np.float32(0.9))
    assert p[:, 1:].max() == 0


def test_tiles_cover_the_map_exactly():
    T = 700
    A = np.random.default_rng(1).random((T, T), dtype=np.float32)
    for level in (0, 1):
        span = ser.TILE_SIZE << level
        n = -(-T // span)
        rebuilt = np.zeros((n * ser.TILE_SIZE, n * ser.TILE_SIZE), np.float32)
        for ty in range(n):
            for tx in range(n):
                t = ser.pooled_tile(A, level, ty, tx)
                assert t.shape[0] <= ser.TILE_SIZE and t.shape[1] <= ser.TILE_SIZE
                rebuilt[ty * ser.TILE_SIZE:ty * ser.TILE_SIZE + t.shape[0],
                        tx * ser.TILE_SIZE:tx * ser.TILE_SIZE + t.shape[1]] = t
        full = ser.max_pool(A, 1 << level)
        np.testing.assert_array_equal(rebuilt[:full.shape[0], :full.shape[1]], full)
    with pytest.raises(ValueError, match="outside a T=700 map"):
        ser.tile_bounds(T, 0, 3, 0)


def test_map_store_overview_and_tiles():
    tr = synthetic_trace(T=600, keep_maps=[(3, 0)])
    store = MapStore(tr)
    assert store.kept() == [(3, 0)] and store.status(3, 0) == "kept" and store.status(4, 0) == "missing"
    st = store.map_state(3, 0)
    assert st["level"] == 1 and st["rows"] == st["cols"] == 300
    ov = ser.decode_array(st["overview"], st["overview"]["data"])
    np.testing.assert_allclose(ov, ser.max_pool(tr.get_map(3, 0), 2), rtol=1e-3, atol=1e-7)
    A = tr.get_map(3, 0)
    assert st["vmax"] == pytest.approx(A[1:].max(), rel=1e-3)  # row 0 ([1, 0, ...]) does not set the scale
    meta, data = store.tile(3, 0, 0, 1, 0)
    assert (meta["q0"], meta["q1"], meta["k0"], meta["k1"]) == (256, 512, 0, 256)
    np.testing.assert_allclose(ser.decode_array(meta, data), A[256:512, 0:256], rtol=1e-3, atol=1e-7)
    missing = store.map_state(5, 2)
    assert missing["overview"] is None and "keep_maps=[5]" in missing["message"]
    with pytest.raises(KeyError):
        store.tile(5, 2, 0, 0, 0)


# ----------------------------------------------------------------------------- what actually travels
def _wire(widget):
    """(JSON text, binary buffer bytes) of the state ipywidgets sends when the widget is displayed."""
    state, _paths, buffers = _remove_buffers(widget.get_state())
    for k in ("_esm", "_css"):
        state.pop(k, None)  # the code, not data
    return json.dumps(state), sum(memoryview(b).nbytes for b in buffers)


def _longest_number_list(obj) -> int:
    if isinstance(obj, dict):
        return max((_longest_number_list(v) for v in obj.values()), default=0)
    if isinstance(obj, list):
        own = len(obj) if obj and all(isinstance(v, (int, float)) for v in obj) else 0
        return max([own] + [_longest_number_list(v) for v in obj])
    return 0


def test_first_payload_smollm2_shape_T4096_within_2MB():
    tr = synthetic_trace(T=4096, keep_maps=[(12, 3)])
    ex = SinkExplorer(tr)
    text, nbytes = _wire(ex)
    total = len(text.encode()) + nbytes
    assert total <= ser.PAYLOAD_BUDGET_BYTES, total
    assert nbytes > 1_000_000  # α + overview travel as binary ...
    assert _longest_number_list(json.loads(text)) <= 4  # ... never as JSON lists (4 = the zoom view)
    assert ex._map["rows"] == 512  # an overview, not the 4096² map


def test_payload_grows_linearly_not_quadratically():
    sizes = {}
    for T in (1024, 2048):
        ex = SinkExplorer(synthetic_trace(T=T, keep_maps=[(3, 0)]))
        sizes[T] = sum(map(len, [_wire(ex)[0].encode()])) + _wire(ex)[1]
    assert sizes[2048] < 2.2 * sizes[1024]
