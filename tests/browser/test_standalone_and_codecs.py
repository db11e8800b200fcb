"""The offline HTML file in chromium (file://, every other request aborted) and the JS decoders against the
Python encoders."""

from __future__ import annotations

import base64

import numpy as np
import pytest
from conftest import state, wait_state
from pixels import match_fraction, sample_heatmap
from test_notebook7_and_security import assert_no_injection, xss_trace

from sinkwidgets.widgets import save_html
from sinkwidgets.widgets._serialization import decode_array, encode_array
from sinkwidgets.widgets._widget import STATIC

pytestmark = pytest.mark.browser  # Debian chromium against a JupyterLab (also added by conftest.py)


def test_offline_html(guarded_page, smollm2_trace, tmp_path):
    page = guarded_page
    tr = xss_trace(smollm2_trace)
    path = save_html(tr, tmp_path / "scan.html", title="offline <test>", state={"layer": 3, "head": 0, "scale": "log"})
    html = path.read_text(encoding="utf-8")
    assert "http://" not in html and "https://" not in html  # nothing to fetch
    assert "<img src=x" not in html  # the token is escaped inside the embedded JSON
    page.goto(path.as_uri())
    page.wait_for_selector("[data-testid=sw-root][data-first-paint]", timeout=20_000)
    assert page.title() == "offline <test>"
    assert_no_injection(page)
    hm = wait_state(page, "sw-heatmap-canvas", "d.layer === '3' && d.head === '0' && d.status === 'kept'")
    assert match_fraction(sample_heatmap(page), tr.get_map(3, 0), 2, float(hm["vmax"]), log=True) > 0.95

    # the grid drives the heatmap from the maps embedded in the file
    d = state(page, "sw-grid-canvas")
    page.get_by_test_id("sw-grid-canvas").click(position={
        "x": float(d["originX"]) + 4.5 * float(d["cellW"]), "y": float(d["originY"]) + 12.5 * float(d["cellH"])})
    hm = wait_state(page, "sw-heatmap-canvas", "d.layer === '12' && d.head === '4' && d.status === 'kept'")
    assert match_fraction(sample_heatmap(page), tr.get_map(12, 4), 2, float(hm["vmax"]), log=True) > 0.95

    # zooming past the overview needs a kernel: said in the status line, overview still shown
    page.get_by_test_id("sw-zoom-in").click()
    page.get_by_test_id("sw-zoom-in").click()
    hm = wait_state(page, "sw-heatmap-canvas", "!!d.tileError")
    assert "offline file" in hm["tileError"]
    assert "tiles unavailable" in page.get_by_test_id("sw-hm-status").inner_text()

    # a head whose map is not in the file: α per key + the reason
    page.get_by_test_id("sw-layer").select_option("20")
    wait_state(page, "sw-heatmap-canvas", "d.layer === '20' && d.status === 'missing'")
    assert "map not kept: trace with keep_maps=[20]" in page.get_by_test_id("sw-hm-message").inner_text()

    # keyboard: metric menu and ε slider
    page.get_by_test_id("sw-metric").select_option("first_token_mass")
    page.get_by_test_id("sw-eps").focus()
    page.keyboard.press("ArrowLeft")
    wait_state(page, "sw-grid-canvas", "d.metric === 'first_token_mass' && d.eps === '0.29'")


@pytest.fixture
def codec_page(guarded_page):
    js = (STATIC / "sinkwidgets.js").read_text(encoding="utf-8")
    guarded_page.set_content("<!doctype html><html><body></body></html>")
    guarded_page.add_script_tag(content=js + "\nwindow.__sw = { decodeArray, asBytes, showToken };", type="module")
    guarded_page.wait_for_function("() => !!window.__sw")
    return guarded_page


CASES = [
    ("float32", np.array([[0.0, 1.5, -2.25], [1e-8, 3.4e38, np.nan]], np.float32), {}),
    ("float16", np.array([0.0, 1.0, 0.5, 6e-8, 1e-5, 65504.0, -3.0, 0.1234, np.inf], np.float32), {}),
    ("uint8", np.linspace(0, 1, 17, dtype=np.float32), {"transform": "linear", "scale": 1.0}),
    ("uint8", np.geomspace(1e-5, 0.9, 33).astype(np.float32), {"transform": "sqrt"}),
]


@pytest.mark.parametrize("case", range(len(CASES)))
@pytest.mark.parametrize(("wrapper", "offset"), [("DataView", 0), ("DataView", 1), ("DataView", 3), ("Uint8Array", 0),
                                                 ("Uint8Array", 1), ("Uint8Array", 3), ("ArrayBuffer", 0)])
def test_js_decoders_mirror_python(codec_page, case, offset, wrapper):
    """JupyterLab hands buffers over as DataView, Colab as Uint8Array; byte offsets may be unaligned."""
    dtype, arr, kw = CASES[case]
    spec, data = encode_array(arr, dtype, **kw)
    expected = decode_array(spec, data).ravel()
    got = codec_page.evaluate(
        """([spec, b64, offset, wrapper]) => {
            const raw = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
            const big = new Uint8Array(raw.length + offset + 5); big.set(raw, offset);
            const data = wrapper === 'DataView' ? new DataView(big.buffer, offset, raw.length)
                       : wrapper === 'Uint8Array' ? new Uint8Array(big.buffer, offset, raw.length)
                       : raw.buffer;
            const out = window.__sw.decodeArray({...spec, data});
            return Array.from(out, (v) => Number.isNaN(v) ? 'nan' : (v === Infinity ? 'inf' : v));
        }""",
        [spec, base64.b64encode(data).decode(), offset, wrapper],
    )
    got = np.array([np.nan if v == "nan" else (np.inf if v == "inf" else v) for v in got], np.float64)
    np.testing.assert_array_equal(got, expected.astype(np.float64))  # bit-identical float32 values


def test_js_show_token_is_text(codec_page):
    """In the browser, showToken writes whitespace as Python's show_token does (␣ ⏎ ⇥, runs as ␣×90), and markup
    stays text."""
    from sinkwidgets._text import show_token

    cases = ["a\nb\tc", "", " the", " " * 90, "\r\n", "\u00a0", "\x85", "\ufeff", "<img src=x onerror=alert(1)>"]
    out = codec_page.evaluate("(cs) => cs.map((c) => window.__sw.showToken(c))", cases)
    assert out == [show_token(c) for c in cases]
    assert out[:4] == ["a\u23ceb\u21e5c", "\u2205", "\u2423the", "\u2423\u00d790"]
