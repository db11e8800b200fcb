"""Notebook 7, untrusted token strings, and a visible error instead of a blank widget."""

from __future__ import annotations

import dataclasses

import pytest
from conftest import REPO, open_notebook, poll_cell, run_cell, state, wait_state, write_notebook
from labserver import start_lab
from pixels import match_fraction, sample_heatmap

from sinkwidgets._text import show_token

pytestmark = pytest.mark.browser  # Debian chromium against a JupyterLab (also added by conftest.py)

XSS = [
    "<img src=x onerror=\"window.__xss=(window.__xss||0)+1\">",
    "<script>window.__xss=(window.__xss||0)+1</script>",
    "<svg onload=\"window.__xss=(window.__xss||0)+1\"></svg>",
    "</script><b>bold</b>",
    "&lt;i&gt;entity&lt;/i&gt;",
]


@pytest.fixture(scope="module")
def nb7_server(tmp_path_factory):
    """A server of its own: with JupyterLab pages opened earlier on the same server, Notebook 7.6 throws
    "Command 'filebrowser:open-path' not registered" while restoring (not our code; a fresh server never does)."""
    server = start_lab(tmp_path_factory.mktemp("nb7"), extra_pythonpath=[str(REPO)])
    try:
        yield server
    finally:
        server.stop()


def test_explorer_in_notebook7(nb7_server, guarded_page, smollm2_trace, smollm2_trace_path):
    page, lab = guarded_page, nb7_server
    # Notebook 7.6's own shortcuts plugin throws this while loading, with or without any widget on the page
    # (reproduced with a notebook holding only `print(1)`); it is not ours, so it alone is tolerated here.
    page.expected_errors.append("Cannot read properties of undefined (reading 'schema')")
    name = write_notebook(lab, "nb7.ipynb", [
        "import sinkwidgets as sw\n"
        f"ex = sw.SinkExplorer(sw.SinkTrace.load({str(smollm2_trace_path)!r}), layer=3, head=2, scale='log')\nex",
        "print(f'STATE layer={ex.layer} head={ex.head}')",
    ])
    open_notebook(page, lab, name, app="notebook")
    assert "/notebooks/" in page.url
    run_cell(page, 0)
    page.wait_for_selector("[data-testid=sw-root][data-first-paint]", timeout=60_000)
    wait_state(page, "sw-heatmap-canvas", "d.layer === '3' && d.head === '2' && d.status === 'kept'")
    d = state(page, "sw-grid-canvas")
    page.get_by_test_id("sw-grid-canvas").click(position={
        "x": float(d["originX"]) + 7.5 * float(d["cellW"]), "y": float(d["originY"]) + 12.5 * float(d["cellH"])})
    hm = wait_state(page, "sw-heatmap-canvas", "d.layer === '12' && d.head === '7' && d.status === 'kept'")
    A = smollm2_trace.get_map(12, 7)
    assert match_fraction(sample_heatmap(page), A, 2, float(hm["vmax"]), log=True) > 0.95
    poll_cell(page, 1, lambda s: "layer=12 head=7" in s, what="layer=12 head=7")


def xss_trace(trace):
    tokens = list(trace.tokens)
    for i, bad in enumerate(XSS):
        tokens[1 + i] = bad
    return dataclasses.replace(trace, tokens=tokens)


def assert_no_injection(page, root=".sw-root"):
    found = page.evaluate(
        """(r) => ({xss: window.__xss || 0,
                    elements: document.querySelectorAll(`${r} img, ${r} script, ${r} svg, ${r} b, ${r} i`).length,
                    texts: [...document.querySelectorAll(`${r} .sw-tok`)].slice(1, 6).map((e) => e.textContent)})""",
        root,
    )
    assert found["xss"] == 0, "a token string was executed as HTML"
    assert found["elements"] == 0, "an element was created from a token string"
    # shown as text, whitespace made visible as everywhere (sinkwidgets._text.show_token = the JS showToken)
    assert found["texts"] == [show_token(x) for x in XSS], found["texts"]


def test_untrusted_tokens_render_as_text(lab, guarded_page, smollm2_trace, tmp_path):
    """Token strings go through textContent / fillText only: no element is ever created from one."""
    page = guarded_page
    path = xss_trace(smollm2_trace).save(tmp_path / "xss.npz")
    name = write_notebook(lab, "xss.ipynb", [
        "import sinkwidgets as sw\n"
        f"ex = sw.SinkExplorer(sw.SinkTrace.load({str(path)!r}), layer=3, head=0, token=1)\nex",
    ])
    open_notebook(page, lab, name)
    run_cell(page, 0)
    page.wait_for_selector("[data-testid=sw-root][data-first-paint]", timeout=60_000)
    assert_no_injection(page)
    # tooltips and zoomed axis labels show the tokens too
    page.locator("[data-testid=sw-strip-tokens] .sw-tok").nth(1).hover()
    tip = page.get_by_test_id("sw-tooltip")
    assert show_token("<img src=x onerror=") in tip.inner_text()
    for _ in range(5):
        page.get_by_test_id("sw-zoom-in").click()
    page.get_by_test_id("sw-heatmap-canvas").press("0")
    page.get_by_test_id("sw-heatmap-canvas").hover(position={"x": 100, "y": 92})
    page.wait_for_timeout(300)
    assert_no_injection(page)


def test_render_error_is_visible(lab, guarded_page, smollm2_trace_path):
    """A failure inside render() shows a message in the widget (and the console), never a blank output."""
    page = guarded_page
    page.expected_errors.append("sinkwidgets")
    name = write_notebook(lab, "broken.ipynb", [
        "import sinkwidgets as sw\n"
        f"ex = sw.SinkExplorer(sw.SinkTrace.load({str(smollm2_trace_path)!r}))\n"
        "s = dict(ex._summary); s['alpha'] = {**s['alpha'], 'data': b'too short'}\n"
        "ex._summary = s\nex",
    ])
    open_notebook(page, lab, name)
    run_cell(page, 0)
    err = page.get_by_test_id("sw-error")
    err.wait_for(timeout=60_000)
    assert err.is_visible()
    assert "could not draw" in err.inner_text() and "too small" in err.inner_text()
    assert any("sinkwidgets" in e for e in page.js_errors)
