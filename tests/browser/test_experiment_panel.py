"""The SinkExplorer's experiment panel in a real JupyterLab + chromium (issue 19): click "mask token 0, all layers",
the grid and the token strip show the sink moved to token 1, and the ΔNLL shown equals sw.mask_sink to 1e-4; a
failing experiment shows its message and leaves the view as it was; token text stays text."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import open_notebook, poll_cell, run_cell, state, wait_state, write_notebook

pytestmark = pytest.mark.browser

TEXT = ("The old lighthouse keeper climbed the stairs every evening. Ships passed by in the dark, and he watched "
        "them until the sun came up <img src=x onerror=window.__xss=1> over the grey water.")


def test_mask_token_0_all_layers_in_jupyterlab(lab, guarded_page, smollm2):
    import sinkwidgets as sw

    page = guarded_page
    tr = sw.trace(smollm2, TEXT)
    fn = sw.mask_sink(smollm2, TEXT, "all", token=0)
    expected = fn.delta[fn.conditions[1]]
    after = sw.trace(smollm2, TEXT, edits=[sw.interventions.mask_sink_edit(smollm2, "all", token=0)])
    a1 = np.asarray(after.sink_scores[:, :, 1])
    ly, hd = np.unravel_index(int(np.argmax(a1[12:30])), a1[12:30].shape)
    ly = int(ly) + 12
    hd = int(hd)
    name = write_notebook(lab, "experiment.ipynb", [
        "import sinkwidgets as sw\n"
        "m = sw.load_model('smollm2-135m')\n"
        f"ex = sw.SinkExplorer(sw.trace(m, {TEXT!r}), model=m, layer={ly}, head={hd}, token=1, metric='alpha')\nex",
        "print(f'STATE n={len(ex.experiments)} view={ex.experiment_view} index={ex.experiment_index} '\n"
        "      f'controls={[e.control_status for e in ex.experiments]}')",
        # slow both phases down (2 s before each pass) so a cancel lands in the phase the test means, every time
        "import time, sinkwidgets.widgets.experiment as X\n"
        "def _slow(fn):\n"
        "    def run(*a, **k):\n"
        "        time.sleep(2.0)\n"
        "        return fn(*a, **k)\n"
        "    return run\n"
        "X._one_pass, X._loss_pass = _slow(X._one_pass), _slow(X._loss_pass)\nprint('SLOW')",
    ])
    open_notebook(page, lab, name)
    run_cell(page, 0)
    page.wait_for_selector("[data-testid=sw-root][data-first-paint]", timeout=120_000)
    d = wait_state(page, "sw-exp", "d.index === '-1'")
    before = state(page, "sw-grid-canvas")
    assert before["view"] == "before" and float(before["selectedValue"]) < 0.1

    page.get_by_test_id("sw-exp-preset-all").click()
    wait_state(page, "sw-exp-status", "d.state === 'running'", timeout=10_000)  # the progress line
    d = wait_state(page, "sw-exp", "d.index === '0' && d.view === 'after'", timeout=120_000)
    assert abs(float(d["meanDnll"]) - expected) < 1e-4  # painted after phase 1 (the edit)
    wait_state(page, "sw-exp-status", "d.state === 'done'", timeout=60_000)  # phase 2: the control landed
    d = wait_state(page, "sw-exp", "d.controlState === 'done'")
    ctl_tok = int(page.get_by_test_id("sw-exp-result").inner_text().split("(token ")[1].split()[0])
    c = sw.mask_sink(smollm2, TEXT, "all", token=ctl_tok)
    assert abs(float(d["controlDnll"]) - c.delta[c.conditions[1]]) < 1e-4
    g = wait_state(page, "sw-grid-canvas", "d.view === 'after'")
    # the grid: α of token 1 at the head where it is largest in layers 12-29 is now a sink (float16 on the wire)
    assert float(g["selectedValue"]) == pytest.approx(float(a1[ly, hd]), abs=2e-3)
    assert float(g["selectedValue"]) > 0.3
    st = state(page, "sw-strip-tokens")
    assert st["view"] == "after" and st["top"] == "1"
    # the selected head's heatmap: the map under the edit (kept, like the explorer's), its scale from that map
    hm = wait_state(page, "sw-heatmap-canvas", "d.source === 'after' && d.status === 'kept'")
    assert float(hm["vmax"]) == pytest.approx(float(after.get_map(ly, hd)[1:].max()), abs=2e-3)
    # after - before
    page.get_by_test_id("sw-exp-view").select_option("diff")
    g = wait_state(page, "sw-grid-canvas", "d.view === 'diff'")
    assert float(g["selectedValue"]) == pytest.approx(float(a1[ly, hd] - tr.sink_scores[ly, hd, 1]), abs=3e-3)
    hm = wait_state(page, "sw-heatmap-canvas", "d.source === 'diff' && d.status === 'kept'")
    diff = np.abs(after.get_map(ly, hd) - tr.get_map(ly, hd))
    assert float(hm["vmax"]) == pytest.approx(float(diff[1:].max()), abs=3e-3)
    # the per-token ΔNLL strip: one span per token, text only
    spans = page.get_by_test_id("sw-exp-dnll").locator(".sw-tok")
    assert spans.count() == tr.n_tokens
    assert page.evaluate("() => !document.querySelector('.sw-exp img') && !window.__xss")
    out = poll_cell(page, 1, lambda s: "n=1" in s, what="one experiment")
    assert "view=diff" in out

    # a failing experiment: its message in the panel, the view as it was
    page.get_by_test_id("sw-exp-token").fill("9999")
    page.get_by_test_id("sw-exp-apply").click()
    d = wait_state(page, "sw-exp-status", "d.state === 'error'", timeout=60_000)
    assert "token=9999" in page.get_by_test_id("sw-exp-status").inner_text()
    assert state(page, "sw-exp")["index"] == "0" and state(page, "sw-grid-canvas")["view"] == "diff"
    out = poll_cell(page, 1, lambda s: "n=1" in s, what="still one experiment")

    # cancel in phase 1 (both passes slowed down by 2 s): the run stops before its pass, nothing is recorded
    run_cell(page, 2)
    page.wait_for_function("() => document.body.innerText.includes('SLOW')", timeout=20_000)  # installed
    page.get_by_test_id("sw-exp-layers").fill("12-29")
    page.get_by_test_id("sw-exp-token").fill("0")
    page.get_by_test_id("sw-exp-apply").click()
    wait_state(page, "sw-exp-status", "d.state === 'running'", timeout=10_000)
    assert page.get_by_test_id("sw-exp-cancel").is_visible()
    page.get_by_test_id("sw-exp-cancel").click()
    wait_state(page, "sw-exp-status", "d.state === 'cancelled'", timeout=60_000)
    assert not page.get_by_test_id("sw-exp-cancel").is_visible()
    assert state(page, "sw-exp")["index"] == "0"
    out = poll_cell(page, 1, lambda s: "n=1" in s, what="still one experiment after the cancel")

    # cancel in phase 2: the experiment is painted and kept, its control shown as computing, then cancelled
    page.get_by_test_id("sw-exp-apply").click()
    wait_state(page, "sw-exp-status", "d.state === 'control'", timeout=60_000)
    d = wait_state(page, "sw-exp", "d.index === '1' && d.controlState === 'computing'")
    assert "control: computing…" in page.get_by_test_id("sw-exp-result").inner_text()
    assert "control: computing…" in page.get_by_test_id("sw-exp-status").inner_text()
    assert page.get_by_test_id("sw-exp-apply").is_disabled()
    page.get_by_test_id("sw-exp-cancel").click()
    wait_state(page, "sw-exp-status", "d.state === 'control-cancelled'", timeout=60_000)
    d = wait_state(page, "sw-exp", "d.index === '1' && d.controlState === 'cancelled'")
    assert "control: cancelled" in page.get_by_test_id("sw-exp-result").inner_text()
    assert state(page, "sw-grid-canvas")["view"] == "diff" and page.get_by_test_id("sw-exp-apply").is_enabled()
    out = poll_cell(page, 1, lambda s: "n=2" in s, what="the experiment kept after a phase-2 cancel")
    assert "controls=['done', 'cancelled']" in out


def test_offline_page_flips_before_after_difference(guarded_page, smollm2, tmp_path):
    import sinkwidgets as sw

    page = guarded_page
    tr = sw.trace(smollm2, TEXT)
    ex = sw.SinkExplorer(tr, model=smollm2, layer=20, head=0, token=1)
    e_all = ex.experiment("mask", token=0, layers="all")
    e_mid = ex.experiment("mask", token=0, layers="12-29")
    ex.experiment_index, ex.experiment_view = 0, "after"
    path = ex.to_html(tmp_path / "experiments.html")
    html = path.read_text(encoding="utf-8")
    assert "<img src=x" not in html and "http://" not in html and "https://" not in html
    page.goto(path.as_uri())
    page.wait_for_selector("[data-testid=sw-root][data-first-paint]", timeout=20_000)
    assert page.get_by_test_id("sw-exp-apply").count() == 0  # no kernel: no Apply
    d = wait_state(page, "sw-exp", "d.index === '0' && d.view === 'after'")
    assert abs(float(d["meanDnll"]) - e_all.mean_dnll) < 1e-6
    g = state(page, "sw-grid-canvas")
    assert g["view"] == "after"
    assert float(g["selectedValue"]) == pytest.approx(float(e_all.trace.sink_scores[20, 0, 1]), abs=2e-3)
    assert state(page, "sw-strip-tokens")["top"] == "1"
    # before
    page.get_by_test_id("sw-exp-view").select_option("before")
    g = wait_state(page, "sw-grid-canvas", "d.view === 'before'")
    assert float(g["selectedValue"]) == pytest.approx(float(tr.sink_scores[20, 0, 1]), abs=2e-3)
    assert state(page, "sw-strip-tokens")["top"] != "1" or float(tr.sink_scores[20, :, 1].max()) > 0.3
    # after - before
    page.get_by_test_id("sw-exp-view").select_option("diff")
    g = wait_state(page, "sw-grid-canvas", "d.view === 'diff'")
    want = float(e_all.trace.sink_scores[20, 0, 1] - tr.sink_scores[20, 0, 1])
    assert float(g["selectedValue"]) == pytest.approx(want, abs=3e-3)
    # the history: the 12-29 experiment, no new sink on token 1
    page.get_by_test_id("sw-exp-history").select_option("1")
    d = wait_state(page, "sw-exp", "d.index === '1'")
    assert abs(float(d["meanDnll"]) - e_mid.mean_dnll) < 1e-6
    page.get_by_test_id("sw-exp-view").select_option("after")
    g = wait_state(page, "sw-grid-canvas", "d.view === 'after'")
    assert float(g["selectedValue"]) < 0.3
    assert page.get_by_test_id("sw-exp-dnll").locator(".sw-tok").count() == tr.n_tokens
    assert page.evaluate("() => !document.querySelector('.sw-root img') && !window.__xss")
