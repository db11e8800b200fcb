"""SinkExplorer on a real SmolLM2 trace, in a real JupyterLab 4, driven by Debian chromium.

One notebook, one kernel, one walk through the features: render, click a grid cell (heatmap shows that head:
data attributes AND canvas pixels), ε slider, metric selector, keyboard, token strip, zoom with tiles fetched
from the kernel (pixels at full resolution), Python → browser updates, a head whose map was not kept, PNG
export from Python, and the dark theme. Any browser console error fails the test (see conftest).
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import (
    assert_png_export,
    cell_text,
    lab_exec,
    open_notebook,
    poll_cell,
    run_cell,
    state,
    wait_state,
    write_notebook,
)
from pixels import match_fraction, sample_heatmap

from sinkwidgets.metrics import sinks_per_head

pytestmark = pytest.mark.browser  # Debian chromium against a JupyterLab (also added by conftest.py)


def _cells(trace_path, png_path):
    return [
        # 0: the widget
        "import sinkwidgets as sw\n"
        f"tr = sw.SinkTrace.load({str(trace_path)!r})\n"
        "ex = sw.SinkExplorer(tr, layer=3, head=0, scale='log')\nex",
        # 1: read-back of the Python state
        "print(f'STATE layer={ex.layer} head={ex.head} eps={ex.eps:.2f} token={ex.token} metric={ex.metric} '\n"
        "      f'view={[round(v) for v in ex.view]} frontend={ex._frontend}')",
        # 2: PNG export from Python
        f"png = ex.save_png({str(png_path)!r})\npng",
        # 3: read-back of the export
        "print(f'PNG done={png.done} error={png.error} nbytes={png.nbytes}')",
        # 4: Python -> browser
        "ex.select(12, 5)",
        # 5: a head whose map was not kept
        "ex.select(20, 1)",
    ]


def _grid_click(page, layer, head):
    d = state(page, "sw-grid-canvas")
    x = float(d["originX"]) + (head + 0.5) * float(d["cellW"])
    y = float(d["originY"]) + (layer + 0.5) * float(d["cellH"])
    page.get_by_test_id("sw-grid-canvas").click(position={"x": x, "y": y})


def _contrast(page) -> float:
    """WCAG contrast ratio between the widget's text colour and its background."""
    fg, bg = page.evaluate(
        """() => { const r = document.querySelector('.sw-root'); const cs = getComputedStyle(r);
                   return [cs.color, cs.backgroundColor]; }""")

    def lum(css):
        vals = [float(x) for x in css[css.index("(") + 1:css.index(")")].split(",")[:3]]
        c = [v / 255 for v in vals]
        c = [x / 12.92 if x <= 0.03928 else ((x + 0.055) / 1.055) ** 2.4 for x in c]
        return 0.2126 * c[0] + 0.7152 * c[1] + 0.0722 * c[2]

    a, b = sorted([lum(fg), lum(bg)])
    return (b + 0.05) / (a + 0.05)


def test_explorer_in_jupyterlab(lab, guarded_page, smollm2_trace, smollm2_trace_path, artifacts, tmp_path):
    page = guarded_page
    tr = smollm2_trace
    T = tr.n_tokens
    assert T > 512, "the prompt must be longer than the overview so that zooming needs tiles"
    png_path = tmp_path / "view.png"
    name = write_notebook(lab, "explorer.ipynb", _cells(smollm2_trace_path, png_path))
    open_notebook(page, lab, name)
    run_cell(page, 0)

    # ---- 1. renders: data attributes + first paint
    root = page.locator("[data-testid=sw-root]")
    try:
        page.wait_for_selector("[data-testid=sw-root][data-first-paint]", timeout=60_000)
    except Exception as exc:
        raise AssertionError(f"widget did not render; browser errors: {page.js_errors}") from exc
    assert root.count() == 1
    hm = wait_state(page, "sw-heatmap-canvas", "d.layer === '3' && d.head === '0' && d.status === 'kept'")
    assert hm["overviewLevel"] == "1", hm  # T in (512, 1024]: overview is 1:2

    vmax = float(hm["vmax"])
    A30 = tr.get_map(3, 0)
    assert abs(vmax - A30[1:].max()) < 1e-3
    # log scale: the whole map is informative (in linear most of it is ~0 for any head)
    assert match_fraction(sample_heatmap(page), A30, 2, vmax, log=True) > 0.95

    # ---- 2. click a grid cell: the heatmap shows that head (attributes and pixels), Python sees it
    _grid_click(page, 12, 4)
    hm = wait_state(page, "sw-heatmap-canvas", "d.layer === '12' && d.head === '4' && d.status === 'kept'")
    A = tr.get_map(12, 4)
    vmax = float(hm["vmax"])
    samples = sample_heatmap(page)
    assert match_fraction(samples, A, 2, vmax, log=True) > 0.95
    other = tr.get_map(3, 0)  # the previous head's picture does not match
    assert match_fraction(samples, other, 2, other[1:].max(), log=True) < 0.6
    assert state(page, "sw-grid-canvas")["layer"] == "12"
    poll_cell(page, 1, lambda s: "layer=12 head=4" in s, what="layer=12 head=4")
    assert "frontend=0" not in cell_text(page, 1)

    # ---- 3. ε slider (keyboard on a real <input type=range>) + metric selector
    slider = page.get_by_test_id("sw-eps")
    slider.focus()
    for _ in range(10):
        page.keyboard.press("ArrowRight")
    wait_state(page, "sw-grid-canvas", "d.eps === '0.40'")
    assert page.get_by_test_id("sw-eps-value").inner_text() == "0.40"
    page.get_by_test_id("sw-metric").select_option("sinks_per_head")
    g = wait_state(page, "sw-grid-canvas", "d.metric === 'sinks_per_head'")
    expected = sinks_per_head(tr, eps=0.40).counts[12, 4]
    assert float(g["selectedValue"]) == expected, (g["selectedValue"], expected)
    n_sinks = int(((tr.sink_scores[12, 4] > 0.40) & (T - np.arange(T) >= 8)).sum())
    try:  # the heatmap redraws on its next animation frame: wait for it rather than read it at once
        wait_state(page, "sw-heatmap-canvas", f"+d.sinks === {n_sinks}", timeout=10_000)
    except Exception as exc:
        raise AssertionError(f"heatmap sinks {state(page, 'sw-heatmap-canvas').get('sinks')} != {n_sinks}") from exc
    poll_cell(page, 1, lambda s: "eps=0.40" in s and "metric=sinks_per_head" in s, what="eps=0.40")

    # ---- 4. keyboard: arrow keys move the selected grid cell
    page.get_by_test_id("sw-grid-canvas").focus()
    page.keyboard.press("ArrowLeft")
    page.keyboard.press("ArrowUp")
    wait_state(page, "sw-heatmap-canvas", "d.layer === '11' && d.head === '3'")
    page.keyboard.press("ArrowDown")
    page.keyboard.press("ArrowRight")
    wait_state(page, "sw-heatmap-canvas", "d.layer === '12' && d.head === '4' && d.status === 'kept'")

    # ---- 5. token strip: a click selects a token, the heatmap outlines its row and column
    page.locator("[data-testid=sw-strip-tokens] .sw-tok").nth(5).click()
    wait_state(page, "sw-heatmap-canvas", "d.token === '5'")
    wait_state(page, "sw-strip-tokens", "d.token === '5'")
    poll_cell(page, 1, lambda s: "token=5" in s, what="token=5")

    # ---- 6. zoom: tiles at full resolution come from the kernel (custom messages, binary buffers)
    page.get_by_test_id("sw-zoom-in").click()
    page.get_by_test_id("sw-zoom-in").click()
    # Two quick clicks are two zoom steps: a stale echo of the first view from the kernel must not undo the
    # second (this once failed in CI under load), so wait for the span of T/4 and not just for tiles.
    span4 = f"(v => Math.abs(v[1] - v[0] - {T / 4}) < 1 && Math.abs(v[3] - v[2] - {T / 4}) < 1)(d.view.split(',').map(Number))"
    hm = wait_state(page, "sw-heatmap-canvas",
                    f"d.level === '0' && +d.tilesReceived >= 1 && +d.tilesShown >= 1 && {span4}", timeout=30_000)
    assert int(hm["tilesRequested"]) >= 1
    q0, q1, k0, k1 = (float(x) for x in hm["view"].split(","))
    assert abs((q1 - q0) - T / 4) < 1 and abs((k1 - k0) - T / 4) < 1, hm["view"]
    page.wait_for_timeout(300)  # let every requested tile land
    wait_state(page, "sw-heatmap-canvas", "+d.tilesReceived >= +d.tilesRequested", timeout=30_000)
    assert match_fraction(sample_heatmap(page), A, 1, vmax, log=True) > 0.95  # full resolution now
    poll_cell(page, 1, lambda s: f"view=[{round(q0)}, {round(q1)}, {round(k0)}, {round(k1)}]" in s, what="view")
    page.get_by_test_id("sw-scale").select_option("linear")
    wait_state(page, "sw-heatmap-canvas", "d.scale === 'linear'")
    assert match_fraction(sample_heatmap(page), A, 1, vmax) > 0.95
    page.screenshot(path=str(artifacts / "explorer_zoomed_linear.png"))
    page.get_by_test_id("sw-zoom-reset").click()
    wait_state(page, "sw-heatmap-canvas", f"d.view === '0,{T},0,{T}'")

    # ---- 7. PNG export from Python: the browser draws the view and sends it back
    run_cell(page, 2)
    assert_png_export(page, 3, png_path, (800, 500))

    # ---- 8. Python -> browser: select() from a cell moves the widget
    run_cell(page, 4)
    wait_state(page, "sw-heatmap-canvas", "d.layer === '12' && d.head === '5' && d.status === 'kept'")
    assert state(page, "sw-grid-canvas")["head"] == "5"
    assert page.get_by_test_id("sw-head").input_value() == "5"

    # ---- 9. a head whose map was not kept: α per key and a clear message, never a blank
    run_cell(page, 5)
    wait_state(page, "sw-heatmap-canvas", "d.layer === '20' && d.status === 'missing'")
    msg = page.get_by_test_id("sw-hm-message")
    assert msg.is_visible()
    assert "map not kept: trace with keep_maps=[20]" in msg.inner_text()

    # ---- 10. light and dark themes: readable text in both
    assert _contrast(page) >= 4.5
    lab_exec(page, "apputils:change-theme", {"theme": "JupyterLab Dark"})
    page.wait_for_function("() => document.body.dataset.jpThemeLight === 'false'", timeout=20_000)
    page.wait_for_timeout(300)
    assert _contrast(page) >= 4.5
    bg = page.evaluate("() => getComputedStyle(document.querySelector('.sw-root')).backgroundColor")
    assert sum(int(x) for x in bg[bg.index("(") + 1:bg.index(")")].split(",")[:3]) < 3 * 90, bg
    page.screenshot(path=str(artifacts / "explorer_dark.png"))
    lab_exec(page, "apputils:change-theme", {"theme": "JupyterLab Light"})
    assert cell_text(page, 0) is not None
