"""The widgets' styles are their own: host page rules do not reach them (JupyterLab 4 and Notebook 7).

JupyterLab's output area styles bare `dl`/`dt`/`dd` (`.jp-OutputArea-output dt {float: left; width: 20%;
font-weight: bold}`, `dd` 80%), which turned TagExplorer's numbers panel into a staircase with labels and values
overlapping. The widgets revert every element inside their root first (sinkwidgets.css); here the panel's label and
value positions are measured at 700 and 1200 px, and a page full of hostile rules must not move anything.
"""

from __future__ import annotations

import importlib.util

import pytest
from conftest import REPO, open_notebook, run_cell, wait_state, write_notebook
from labserver import start_lab

pytestmark = pytest.mark.browser  # Debian chromium against a JupyterLab (also added by conftest.py)

WIDTHS = (700, 1200)
#: Rules a host page might hold, heavier than JupyterLab's own (0,1,1), with no !important.
HOSTILE = """
:is(.jp-OutputArea-output, .jp-Cell).jp-OutputArea-output :is(.sw-root, .sw-root div, .sw-root span, .sw-root label,
  .sw-root canvas, .sw-root dl, .sw-root dt, .sw-root dd, .sw-root select, .sw-root button) {
  float: right; width: 37%; margin: 9px 23px; padding: 7px; font-weight: 900; font-size: 23px; display: block;
  position: static; line-height: 3;
}
"""

MEASURE = """() => {
  const te = document.querySelector('[data-testid=te-root]'), sw = document.querySelector('[data-testid=sw-root]');
  const rel = (e, root) => { const b = e.getBoundingClientRect(), o = root.getBoundingClientRect();
                             return [b.left - o.left, b.top - o.top, b.right - o.left, b.bottom - o.top]; };
  const r = (e) => rel(e, te);
  const dl = document.querySelector('[data-testid=te-numbers] dl');
  const dts = [...dl.querySelectorAll('dt')], dds = [...dl.querySelectorAll('dd')];
  const st = getComputedStyle(dts[0]);
  return {dt: dts.map(r), dd: dds.map(r), labels: dts.map((e) => e.textContent), dl: r(dl),
          dtStyle: [st.float, st.fontWeight],
          sw: [sw, ...sw.querySelectorAll('.sw-toolbar label, .sw-toolbar select, canvas')].map((e) => rel(e, sw)),
          te: [...te.querySelectorAll('.sw-toolbar label, canvas')].map(r),
          roots: [te, sw].map((e) => { const b = e.getBoundingClientRect(); return [b.width, b.height]; }),
          hiddenShown: [...document.querySelectorAll('.sw-root [hidden]')]
            .filter((e) => getComputedStyle(e).display !== 'none').map((e) => e.className),
          nHidden: document.querySelectorAll('.sw-root [hidden]').length,
          // on screen, not clipped by the notebook: the point at each label's left end and each value's right end
          // hits that element
          clipped: [...dts.map((e) => [e, 'left']), ...dds.map((e) => [e, 'right'])].filter(([e, side]) => {
            const b = e.getBoundingClientRect(), x = side === 'left' ? b.left + 2 : b.right - 2;
            const hit = document.elementFromPoint(x, (b.top + b.bottom) / 2);
            return !(hit && (hit === e || e.contains(hit)));
          }).map(([e]) => e.textContent)};
}"""


def _corpus_path(tmp_path_factory):
    spec = importlib.util.spec_from_file_location("_te_unit", REPO / "tests" / "test_tag_explorer.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.corpus().save(tmp_path_factory.mktemp("hoststyles") / "corpus.npz")


@pytest.fixture(scope="module")
def corpus_path(tmp_path_factory):
    return _corpus_path(tmp_path_factory)


@pytest.fixture(scope="module")
def nb7(tmp_path_factory):
    """Notebook 7 on a server of its own (see test_notebook7_and_security.nb7_server for why)."""
    server = start_lab(tmp_path_factory.mktemp("nb7styles"), extra_pythonpath=[str(REPO)])
    try:
        yield server
    finally:
        server.stop()


def assert_rows(m, where):
    """Each label's value on the label's row, right of it, with no overlap; rows top to bottom; inside the list."""
    assert len(m["dt"]) == len(m["dd"]) == 7, (where, m["labels"])
    prev_bottom = None
    for (lab, dt, dd) in zip(m["labels"], m["dt"], m["dd"]):
        dt_mid, dd_mid = (dt[1] + dt[3]) / 2, (dd[1] + dd[3]) / 2
        assert dd[1] < dt_mid < dd[3] and dt[1] < dd_mid < dt[3], f"{where}: {lab!r} and its value not on one row {dt} {dd}"
        assert dd[0] >= dt[2], f"{where}: {lab!r} overlaps its value ({dt} vs {dd})"
        assert dt[2] - dt[0] > 40 and dd[2] - dd[0] > 20, f"{where}: {lab!r} squeezed {dt} {dd}"
        if prev_bottom is not None:
            assert dt[1] >= prev_bottom - 0.5, f"{where}: {lab!r} starts above the row before it"
        prev_bottom = max(dt[3], dd[3])
        assert m["dl"][0] - 0.5 <= dt[0] and dd[2] <= m["dl"][2] + 0.5, f"{where}: {lab!r} outside the list"
    assert m["dtStyle"] == ["none", "400"], (where, m["dtStyle"])  # the host's dt rule does not apply
    assert m["nHidden"] >= 2 and not m["hiddenShown"], f"{where}: hidden elements shown: {m['hiddenShown']}"
    assert not m["clipped"], f"{where}: labels or values cut off or covered: {m['clipped']}"


def _check(page, lab, app, corpus_path, artifacts):
    name = write_notebook(lab, f"styles_{app}.ipynb", [
        "import sinkwidgets as sw\n"
        f"data = sw.tags.TagData.load({str(corpus_path)!r})\n"
        "te = sw.TagExplorer(data, head=(1, 0))\nte",
        "ex = sw.SinkExplorer(sw.widgets.prompt_trace(data, 0))\nex",
    ])
    results = {}
    page.set_viewport_size({"width": WIDTHS[-1], "height": 1000})
    open_notebook(page, lab, name, app=app)
    run_cell(page, 0)
    page.wait_for_selector("[data-testid=te-root][data-first-paint]", timeout=60_000)
    wait_state(page, "te-num-ev", "d.value !== ''")
    run_cell(page, 1)
    page.wait_for_selector("[data-testid=sw-root][data-first-paint]", timeout=60_000)
    for w in WIDTHS:
        page.set_viewport_size({"width": w, "height": 1000})
        page.wait_for_timeout(300)
        page.get_by_test_id("te-numbers").scroll_into_view_if_needed()
        m = page.evaluate(MEASURE)
        assert_rows(m, f"{app} at {w} px")
        page.get_by_test_id("te-numbers").screenshot(path=str(artifacts / f"numbers_{app}_{w}.png"))
        results[w] = m
    # a host page with heavier rules for every element the widgets use: nothing inside the widgets moves
    page.add_style_tag(content=HOSTILE)
    page.wait_for_timeout(300)
    hostile = page.evaluate(MEASURE)
    assert_rows(hostile, f"{app} with hostile host rules")
    before = results[WIDTHS[-1]]
    for k in ("dt", "dd", "sw", "te", "roots"):
        assert len(hostile[k]) == len(before[k]) > 0, k
        for a, b in zip(hostile[k], before[k]):
            assert max(abs(x - y) for x, y in zip(a, b)) < 1.0, f"{app}: host rules moved a {k} element: {b} -> {a}"


def test_numbers_panel_in_jupyterlab(lab, guarded_page, corpus_path, artifacts):
    _check(guarded_page, lab, "lab", corpus_path, artifacts)


def test_numbers_panel_in_notebook7(nb7, guarded_page, corpus_path, artifacts):
    # Notebook 7.6's own shortcuts plugin throws this while loading, with or without a widget (see
    # test_notebook7_and_security.test_explorer_in_notebook7); it is not ours.
    guarded_page.expected_errors.append("Cannot read properties of undefined (reading 'schema')")
    _check(guarded_page, nb7, "notebook", corpus_path, artifacts)
