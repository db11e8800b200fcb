"""TagExplorer on real SmolLM2-135M tag data, in a real JupyterLab driven by Debian chromium, and its offline file.

One collection per module (16 three-sentence paragraphs, heads L1H1 and L2H2 with maps, pooled residual of every
layer). Any browser console error fails a test, and every request not to 127.0.0.1 / file:// is aborted (conftest).
"""

from __future__ import annotations

import dataclasses
import hashlib

import numpy as np
import pytest
from conftest import assert_png_export, open_notebook, poll_cell, run_cell, state, wait_state, write_notebook

pytestmark = pytest.mark.browser  # Debian chromium against a JupyterLab (also added by conftest.py)

XSS = ["<img src=x onerror=\"window.__xss=(window.__xss||0)+1\">", "<script>window.__xss=(window.__xss||0)+1</script>",
       "<svg onload=\"window.__xss=(window.__xss||0)+1\"></svg>", "</script><b>bold</b>"]
HIT = 7  # px: the widget's hover radius (tagexplorer.js)


@pytest.fixture(scope="module")
def tag_data_path(tmp_path_factory):
    import sinkwidgets as sw

    with __import__("threadpoolctl").threadpool_limits(1):
        model = sw.load_model("smollm2-135m")
        data = sw.tags.collect(model, sw.tags.paragraphs(16, seed=3), heads=[(1, 1), (2, 2)], layers="all", progress=False)
    return data.save(tmp_path_factory.mktemp("tags") / "smollm2_tags.npz")


@pytest.fixture(scope="module")
def xss_data_path(tag_data_path, tmp_path_factory):
    from sinkwidgets.tags import TagData

    data = TagData.load(tag_data_path)
    tokens = [list(t) for t in data.tokens]
    tokens[0][1:1 + len(XSS)] = XSS
    return dataclasses.replace(data, tokens=tokens).save(tmp_path_factory.mktemp("xss") / "xss.npz")


def _show(s: str) -> str:
    from sinkwidgets._text import show_token

    return show_token(s)  # the JS showToken writes tokens the same way


def screen_xy(page, xy: np.ndarray, root: str = "") -> np.ndarray:
    """Canvas-local pixel positions of the points, from the view the scatter reports."""
    d = wait_state(page, "te-scatter", "!!d.view", root=root)
    x0, x1, y0, y1 = (float(v) for v in d["view"].split(","))
    ox, oy, pw, ph = (float(d[k]) for k in ("originX", "originY", "plotW", "plotH"))
    return np.stack([ox + (xy[:, 0] - x0) / (x1 - x0) * pw, oy + (y1 - xy[:, 1]) / (y1 - y0) * ph], 1)


def isolated_point(sxy: np.ndarray, lo: int = 0, hi: int | None = None) -> int:
    """The point (index in lo:hi) farthest from every other point on screen, inside the plot."""
    hi = len(sxy) if hi is None else hi
    best, bd = -1, 0.0
    for j in range(lo, hi):
        x, y = sxy[j]
        if not (70 < x < 560 and 25 < y < 420):
            continue
        d2 = np.sum((sxy - sxy[j]) ** 2, 1)
        d2[j] = np.inf
        if d2.min() > bd:
            best, bd = j, float(d2.min())
    assert best >= 0 and bd > (2 * HIT) ** 2, f"no isolated point on screen (best distance {bd ** 0.5:.1f} px)"
    return best


def expected_context(data, j: int, width: int = 12) -> str:
    i = int(data.prompt_of[j])
    a, b = int(data.offsets[i]), int(data.offsets[i + 1])
    lo, hi = max(a, j - width), min(b, j + width + 1)
    flat = [t for toks in data.tokens for t in toks]
    return ("…" if lo > a else "") + "".join(_show(flat[k]) for k in range(lo, hi)) + ("…" if hi < b else "")


def hover_point(page, sxy, j, root=""):
    page.locator(f"{root} [data-testid=te-scatter]".strip()).hover(position={"x": float(sxy[j, 0]),
                                                                         "y": float(sxy[j, 1])})
    return wait_state(page, "te-tooltip", f"d.token === '{j}' && !!d.latencyMs", root=root)


def in_polygon(xy: np.ndarray, poly: list) -> np.ndarray:
    """Even-odd rule, the same arithmetic as the widget's selectPolygon (float64 on float32 coordinates)."""
    x, y = xy[:, 0].astype(np.float64), xy[:, 1].astype(np.float64)
    inside = np.zeros(len(xy), bool)
    n = len(poly)
    for a in range(n):
        xa, ya = poly[a]
        xb, yb = poly[a - 1]
        cross = (ya > y) != (yb > y)
        with np.errstate(divide="ignore", invalid="ignore"):
            xi = (xb - xa) * (y - ya) / (yb - ya) + xa
        inside ^= cross & (x < xi)
    xs, ys = [p[0] for p in poly], [p[1] for p in poly]
    return inside & (x >= min(xs)) & (x <= max(xs)) & (y >= min(ys)) & (y <= max(ys))


def test_tag_explorer_in_jupyterlab(lab, guarded_page, tag_data_path, tmp_path):
    import sinkwidgets as sw

    page = guarded_page
    data = sw.tags.TagData.load(tag_data_path)
    png_path = tmp_path / "tags.png"
    name = write_notebook(lab, "tags.ipynb", [
        # 0: the TagExplorer
        "import hashlib, sinkwidgets as sw\n"
        f"data = sw.tags.TagData.load({str(tag_data_path)!r})\n"
        "te = sw.TagExplorer(data, head=(2, 2))\nte",
        # 1: a SinkExplorer on prompt 0, linked
        "ex = sw.SinkExplorer(sw.widgets.prompt_trace(data, 0))\nlk = sw.link(ex, te)\nex",
        # 2: read-back
        "sel = ','.join(map(str, te.selected))\n"
        "print(f'STATE te_head={te.head} n_sel={len(te.selected)} md5={hashlib.md5(sel.encode()).hexdigest()} '\n"
        "      f'focus={te.focus} ex={ex.layer},{ex.head} token={ex.token} prompt={lk.prompt} T={ex.trace.n_tokens} '\n"
        "      f'frontend={te._frontend}')",
        # 3: PNG from Python
        f"png = te.save_png({str(png_path)!r})\npng",
        # 4: read-back of the PNG
        "print(f'PNG done={png.done} error={png.error} nbytes={png.nbytes}')",
    ])
    open_notebook(page, lab, name)
    run_cell(page, 0)
    root = "[data-testid=te-root]"
    try:
        page.wait_for_selector(f"{root}[data-first-paint]", timeout=60_000)
    except Exception as exc:
        raise AssertionError(f"TagExplorer did not render; browser errors: {page.js_errors}") from exc

    # ---- 1. renders the real data: every token is a point, the numbers are tag_ev's
    d = wait_state(page, "te-scatter", "d.head === '2,2' && d.projection === 'tag' && d.colorBy === 'catch'")
    assert int(d["n"]) == data.n_tokens
    ev = sw.tags.tag_ev(data, (2, 2), 1)
    shown_ev = float(page.get_by_test_id("te-num-ev").get_attribute("data-value"))
    assert shown_ev == pytest.approx(ev.ev, abs=1e-9)
    assert float(page.get_by_test_id("te-num-value_control").get_attribute("data-value")) == pytest.approx(
        ev.value_control, abs=1e-9)
    assert "not caught" in page.get_by_test_id("te-legend").inner_text()
    # pixels: the canvas is not blank inside the plot
    painted = page.evaluate("""() => { const c = document.querySelector('[data-testid=te-scatter]');
        const im = c.getContext('2d').getImageData(0, 0, c.width, c.height).data; let n = 0;
        for (let i = 0; i < im.length; i += 4) if (im[i] < 200 || im[i + 1] < 200 || im[i + 2] < 200) n++;
        return n; }""")
    assert painted > 500, painted

    # ---- 2. hovering a known point shows its token in context, as text
    te = sw.TagExplorer(data, head=(2, 2))  # same data, same numbers: the coordinates the page drew
    sxy = screen_xy(page, te.coords())
    j = isolated_point(sxy)
    tip = hover_point(page, sxy, j)
    i, p = int(data.prompt_of[j]), int(data.positions[j])
    assert (tip["prompt"], tip["position"]) == (str(i), str(p))
    assert page.get_by_test_id("te-hit").inner_text().strip() == _show(data.tokens[i][p]).strip()
    assert page.get_by_test_id("te-context").text_content() == expected_context(data, j)
    assert float(tip["latencyMs"]) < 1000  # measured properly in benchmarks/tag_explorer.py

    # ---- 3. linked with SinkExplorer: the head follows in both directions
    run_cell(page, 1)
    page.wait_for_selector("[data-testid=sw-root][data-first-paint]", timeout=60_000)
    wait_state(page, "sw-grid-canvas", "d.layer === '2' && d.head === '2'")  # started on the TagExplorer's head
    g = state(page, "sw-grid-canvas")
    page.get_by_test_id("sw-grid-canvas").click(position={"x": float(g["originX"]) + 1.5 * float(g["cellW"]),
                                                          "y": float(g["originY"]) + 1.5 * float(g["cellH"])})
    wait_state(page, "te-scatter", "d.head === '1,1' && d.catchHead === '1,1'", timeout=30_000)
    assert page.get_by_test_id("te-head").input_value() == "1,1"
    page.get_by_test_id("te-head").select_option("2,2")
    wait_state(page, "sw-grid-canvas", "d.layer === '2' && d.head === '2'", timeout=30_000)
    wait_state(page, "te-scatter", "d.head === '2,2'")
    poll_cell(page, 2, lambda s: "te_head=[2, 2]" in s and "ex=2,2" in s, what="both on L2H2")

    # ---- 4. a lasso selection reaches Python (exactly the points inside the polygon)
    page.get_by_test_id("te-tool").select_option("lasso")
    page.get_by_test_id("te-scatter").scroll_into_view_if_needed()  # page.mouse works in viewport coordinates
    page.wait_for_timeout(200)
    box = page.get_by_test_id("te-scatter").bounding_box()
    cx, cy = float(np.median(sxy[:, 0])), float(np.median(sxy[:, 1]))
    ring = [(cx + 90 * np.cos(a), cy + 70 * np.sin(a)) for a in np.linspace(0, 2 * np.pi, 9)[:-1]]
    page.mouse.move(box["x"] + ring[0][0], box["y"] + ring[0][1])
    page.mouse.down()
    for x, y in ring[1:] + ring[:1]:
        page.mouse.move(box["x"] + x, box["y"] + y, steps=3)
    page.mouse.up()
    wait_state(page, "te-root", "!!d.lastPolygon")
    import json

    poly = json.loads(page.evaluate("() => document.querySelector('[data-testid=te-root]').dataset.lastPolygon"))
    want = np.nonzero(in_polygon(te.coords(), poly))[0]
    assert len(want) >= 5, f"the lasso caught only {len(want)} points"
    md5 = hashlib.md5(",".join(map(str, want.tolist())).encode()).hexdigest()
    poll_cell(page, 2, lambda s: f"n_sel={len(want)} md5={md5}" in s, what=f"{len(want)} selected tokens")
    lay = wait_state(page, "te-layers", "d.status === 'ok'", timeout=30_000)
    assert lay["kind"] == "prompts" and int(lay["nLines"]) >= 1

    # ---- 5. clicking a token shows that prompt and token in SinkExplorer's strip and heatmap
    page.get_by_test_id("te-tool").select_option("pan")
    page.get_by_test_id("te-scatter").click(position={"x": float(sxy[j, 0]), "y": float(sxy[j, 1])})
    T = int(data.lengths[i])
    poll_cell(page, 2, lambda s: f"focus={j} " in s and f"prompt={i} T={T}" in s and f"token={p} " in s,
              what=f"prompt {i}, token {p}")
    strip = wait_state(page, "sw-strip-tokens", f"d.token === '{p}'", timeout=30_000)
    assert strip["layer"] == "2" and strip["head"] == "2"
    toks = page.locator("[data-testid=sw-strip-tokens] .sw-tok")
    assert toks.count() == T
    assert toks.nth(p).text_content() == _show(data.tokens[i][p])
    wait_state(page, "sw-heatmap-canvas", f"d.layer === '2' && d.head === '2' && d.status === 'kept' && d.token === '{p}'")

    # ---- 6. PNG of the current view, from Python
    run_cell(page, 3)
    assert_png_export(page, 4, png_path, (900, 450))


def test_injection_tokens_create_no_element(lab, guarded_page, xss_data_path):
    import sinkwidgets as sw

    page = guarded_page
    data = sw.tags.TagData.load(xss_data_path)
    name = write_notebook(lab, "tags_xss.ipynb", [
        f"import sinkwidgets as sw\nte = sw.TagExplorer({str(xss_data_path)!r}, head=(1, 1))\nte"])
    open_notebook(page, lab, name)
    run_cell(page, 0)
    page.wait_for_selector("[data-testid=te-root][data-first-paint]", timeout=60_000)
    te = sw.TagExplorer(data, head=(1, 1))
    sxy = screen_xy(page, te.coords())
    # hover every injected token that is on screen and not hidden under another point
    shown = 0
    for j in range(1, 1 + len(XSS)):
        page.locator("[data-testid=te-scatter]").hover(position={"x": float(sxy[j, 0]), "y": float(sxy[j, 1])})
        page.wait_for_timeout(120)
        tip = state(page, "te-tooltip")
        if tip and tip.get("token") == str(j):
            shown += 1
            assert page.get_by_test_id("te-hit").text_content() == _show(XSS[j - 1])
    assert shown >= 1, "no injected token could be hovered"
    found = page.evaluate("""() => ({xss: window.__xss || 0,
        elements: document.querySelectorAll('.te-root img, .te-root script, .te-root svg, .te-root b').length,
        context: document.querySelector('[data-testid=te-context]').textContent})""")
    assert found["xss"] == 0, "a token string was executed as HTML"
    assert found["elements"] == 0, "an element was created from a token string"
    assert "<script>" in found["context"] or "<img" in found["context"] or "<svg" in found["context"]


def test_offline_html_from_file(guarded_page, xss_data_path, tmp_path):
    import sinkwidgets as sw

    page = guarded_page
    data = sw.tags.TagData.load(xss_data_path)
    te = sw.TagExplorer(data, head=(1, 1))
    path = te.to_html(tmp_path / "tags.html", title="tags offline <test>")
    html = path.read_text(encoding="utf-8")
    assert "http://" not in html and "https://" not in html
    page.goto(path.as_uri())
    page.wait_for_selector("[data-testid=te-root][data-first-paint]", timeout=20_000)
    assert page.title() == "tags offline <test>"
    wait_state(page, "te-scatter", "d.head === '1,1'")
    sxy = screen_xy(page, te.coords())
    j = isolated_point(sxy)
    hover_point(page, sxy, j)
    assert page.get_by_test_id("te-context").text_content() == expected_context(data, j)
    # head and projection menus work from the embedded views
    page.get_by_test_id("te-head").select_option("2,2")
    wait_state(page, "te-scatter", "d.head === '2,2' && d.catchHead === '2,2'")
    page.get_by_test_id("te-projection").select_option("pca")
    wait_state(page, "te-scatter", "d.projection === 'pca'")
    assert page.get_by_test_id("te-rank").is_disabled()
    # box selection works offline too
    page.get_by_test_id("te-tool").select_option("box")
    page.get_by_test_id("te-scatter").scroll_into_view_if_needed()
    b = page.get_by_test_id("te-scatter").bounding_box()
    page.mouse.move(b["x"] + 60, b["y"] + 15)
    page.mouse.down()
    page.mouse.move(b["x"] + 570, b["y"] + 425, steps=5)
    page.mouse.up()
    d = wait_state(page, "te-scatter", "+d.nSelected > 0")
    assert int(d["nSelected"]) == data.n_tokens  # the whole plot area: every point
    found = page.evaluate("() => ({xss: window.__xss || 0, el: document.querySelectorAll('#te-root img, #te-root "
                          "script, #te-root svg, #te-root b').length})")
    assert found == {"xss": 0, "el": 0}


def test_nonfinite_rows_are_left_out_in_the_page(guarded_page, tag_data_path, tmp_path):
    """One NaN output row used to make every coordinate NaN (an empty scatter, no message); now the offline page
    draws the other points and says which token was left out, under the scatter and in the numbers panel."""
    import sinkwidgets as sw

    page = guarded_page
    data = sw.tags.TagData.load(tag_data_path)
    j = int(data.offsets[3]) + 4
    data.head_outputs[data.head_slot((2, 2)), j, 7] = np.nan
    te = sw.TagExplorer(data, head=(2, 2))
    path = te.to_html(tmp_path / "nan.html")
    page.goto(path.as_uri())
    page.wait_for_selector("[data-testid=te-root][data-first-paint]", timeout=20_000)
    d = wait_state(page, "te-scatter", "!!d.view")
    assert all(np.isfinite(float(v)) for v in d["view"].split(","))  # the view is fitted to the finite points
    status = page.get_by_test_id("te-status")
    assert status.get_attribute("data-nonfinite") == "1"
    assert "1 token of L2H2 left out" in status.text_content() and "prompt 3 pos 4" in status.text_content()
    assert "prompt 3 pos 4" in page.get_by_test_id("te-num-nonfinite").text_content()
    assert page.get_by_test_id("te-num-ev").get_attribute("data-value") != ""
