"""The TagExplorer's release experiment in a real JupyterLab + chromium (issue 19 item 3): clicking Release shows the
mean ΔNLL equal to TagExplorer.experiment (= sw.project_out) in Python to 1e-4, beside its random and PC controls and
the later heads' Δ sink attention; an injection token stays inert text; without a model the button is disabled with
a note; a failing or cancelled run leaves the panel as it was. Any browser console error fails the test, and every request not to 127.0.0.1 / file:// is aborted."""

from __future__ import annotations

import concurrent.futures

import numpy as np
import pytest
from conftest import open_notebook, poll_cell, run_cell, state, wait_state, write_notebook

pytestmark = pytest.mark.browser

TEXTS = ["The old lighthouse keeper climbed the stairs every evening. Ships passed by <img src=x onerror=window.__xss=1>"
         " in the dark. He watched them until the sun came up over the grey water.",
         "A scientist writes in her notebook: attention sinks appear in almost every model. Why? Nobody knows yet."]
HEAD = (15, 7)


@pytest.fixture(scope="module")
def release_case(smollm2, tmp_path_factory):
    """The TagData (saved), the selection (tokens of the injection and after it in prompt 0) and the experiment
    computed in Python on the same explorer state. Run in a fresh thread: Playwright's sync API may leave an asyncio
    loop running in the main thread, where a TagExplorer would defer its numbers onto it."""
    import sinkwidgets as sw

    def work():
        with __import__("threadpoolctl").threadpool_limits(1):
            data = sw.tags.collect(smollm2, TEXTS, heads=[HEAD], maps=[HEAD], progress=False)
            toks = data.tokens[0]
            start = next(t for t, s in enumerate(toks) if "<" in s)
            sel = [int(data.span(0).start + t) for t in range(start, min(start + 12, len(toks)))]
            te = sw.TagExplorer(data, head=HEAD, model=smollm2, texts=TEXTS, defer=False)
            te.selected = sel
            e = te.experiment("release")
            p = e.params
            fn = sw.project_out(smollm2, e.texts, HEAD[0], e.basis, positions=p["positions"],
                                sink_positions=p["sinks"], progress=False)
            assert abs(fn.delta["projected"] - e.mean_dnll) < 1e-6
            return data.save(tmp_path_factory.mktemp("release") / "release.npz"), sel, e

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(work).result()


def test_release_click_shows_the_python_numbers_and_keeps_tokens_inert(lab, guarded_page, release_case):
    from sinkwidgets._text import show_token

    page = guarded_page
    path, sel, e = release_case
    name = write_notebook(lab, "release.ipynb", [
        "import sinkwidgets as sw\n"
        "m = sw.load_model('smollm2-135m')\n"
        f"data = sw.tags.TagData.load({str(path)!r})\n"
        f"te = sw.TagExplorer(data, head={HEAD}, model=m, texts={TEXTS!r})\n"
        f"te.selected = {sel!r}\nte",
        "print(f'STATE n={len(te.experiments)} dnll={te.experiments[-1].mean_dnll if te.experiments else None!r}')",
        "te2 = sw.TagExplorer(data, head=" + repr(HEAD) + ")\nte2",
        "te.selected = [int(data.span(0).start)]",  # token 0 only: nothing to edit
        f"te.selected = {sel!r}",
    ])
    open_notebook(page, lab, name)
    run_cell(page, 0)
    page.wait_for_selector("[data-testid=te-root][data-first-paint]", timeout=120_000)
    d = wait_state(page, "te-exp", "d.index === '-1'")
    btn = page.get_by_test_id("te-exp-release")
    assert btn.is_enabled()
    assert "12 selected tokens" in page.get_by_test_id("te-exp-what").inner_text()

    btn.click()
    wait_state(page, "te-exp-status", "d.state === 'running'", timeout=10_000)  # the progress line
    assert page.get_by_test_id("te-exp-cancel").is_visible()
    d = wait_state(page, "te-exp", "d.index === '0'", timeout=180_000)
    wait_state(page, "te-exp-status", "d.state === 'done'", timeout=30_000)  # the answer follows the state
    assert not page.get_by_test_id("te-exp-cancel").is_visible()
    assert abs(float(d["meanDnll"]) - e.mean_dnll) < 1e-4
    assert abs(float(d["controlDnll"]) - e.control_dnll) < 1e-4
    assert abs(float(d["pcsDnll"]) - e.pcs_dnll) < 1e-4
    assert int(d["nEdited"]) == e.n_edited
    shown = page.get_by_test_id("te-exp-dnll").inner_text()  # "+0.4302 nats/token"
    assert abs(float(shown.split()[0]) - e.mean_dnll) < 2e-4 and shown.endswith("nats/token")
    g = state(page, "te-exp-grid")
    assert g["layers"] == str(30 - HEAD[0] - 1) and g["heads"] == "9"
    assert float(g["maxAbs"]) == pytest.approx(float(np.abs(e.sink_shift).max()), abs=1e-4)
    # the edited tokens are shown as text: the injection token's characters, no element, no script run
    toks = page.get_by_test_id("te-exp-tokens").inner_text()
    inj = [t for t in e.meta["edited_tokens"] if "<" in t or "onerror" in t]
    assert inj and all(show_token(t) in toks for t in inj)
    assert page.evaluate("() => !document.querySelector('.te-root img') && !window.__xss")
    out = poll_cell(page, 1, lambda s: "n=1" in s, timeout=30, what="one experiment")
    kernel = float(out.split("dnll=")[1].split()[0])
    assert abs(kernel - e.mean_dnll) < 1e-4

    # a failing experiment: its message in the panel, the view as it was
    run_cell(page, 3)
    page.wait_for_function("() => document.querySelector('[data-testid=te-exp-what]').textContent.includes("
                           "'the 1 selected token ')", timeout=20_000)
    btn.click()
    wait_state(page, "te-exp-status", "d.state === 'error'", timeout=60_000)
    assert "every chosen token" in page.get_by_test_id("te-exp-status").inner_text()
    d = state(page, "te-exp")
    assert d["index"] == "0" and abs(float(d["meanDnll"]) - e.mean_dnll) < 1e-4
    # cancel: stops after the current forward pass, nothing recorded, the view unchanged
    run_cell(page, 4)
    page.wait_for_function("() => document.querySelector('[data-testid=te-exp-what]').textContent.includes("
                           "'12 selected tokens')", timeout=20_000)
    btn.click()
    wait_state(page, "te-exp-status", "d.state === 'running'", timeout=10_000)
    page.get_by_test_id("te-exp-cancel").click()
    wait_state(page, "te-exp-status", "d.state === 'cancelled'", timeout=60_000)
    assert not page.get_by_test_id("te-exp-cancel").is_visible() and btn.is_enabled()
    assert state(page, "te-exp")["index"] == "0"
    poll_cell(page, 1, lambda s: "n=1" in s, timeout=30, what="still one experiment")

    # without a model: the Release button is disabled, with a note that says what to do
    run_cell(page, 2)
    page.wait_for_function("() => document.querySelectorAll('[data-testid=te-root][data-first-paint]').length >= 2",
                           timeout=60_000)
    second = page.locator("[data-testid=te-root]").nth(1)
    assert second.get_by_test_id("te-exp-release").is_disabled()
    assert "needs a model" in second.get_by_test_id("te-exp-what").inner_text()


def test_linked_sinkexplorer_shows_the_prompt_under_the_release(lab, guarded_page, release_case):
    page = guarded_page
    path, sel, e = release_case
    name = write_notebook(lab, "release_link.ipynb", [
        "import sinkwidgets as sw\n"
        "m = sw.load_model('smollm2-135m')\n"
        f"data = sw.tags.TagData.load({str(path)!r})\n"
        f"te = sw.TagExplorer(data, head={HEAD}, model=m, texts={TEXTS!r})\n"
        f"te.selected = {sel!r}\n"
        "ex = sw.SinkExplorer(sw.widgets.prompt_trace(data, 1), model=m)\n"
        "lk = sw.link(ex, te)\ndisplay(ex)\nte",
        "print(f'LINK n={len(ex.experiments)} prompt={lk.prompt} note={lk.note!r}')",
    ])
    open_notebook(page, lab, name)
    run_cell(page, 0)
    page.wait_for_selector("[data-testid=te-root][data-first-paint]", timeout=120_000)
    page.wait_for_selector("[data-testid=sw-root][data-first-paint]", timeout=60_000)
    wait_state(page, "sw-exp", "d.index === '-1'")
    page.get_by_test_id("te-exp-release").click()
    wait_state(page, "te-exp-status", "d.state === 'done'", timeout=180_000)
    # the SinkExplorer now shows prompt 0 (the experiment's) traced under the projection: history 1, view "after"
    d = wait_state(page, "sw-exp", "d.index === '0' && d.view === 'after'", timeout=60_000)
    assert abs(float(d["meanDnll"]) - e.mean_dnll) < 1e-4  # one prompt: the same mean ΔNLL
    assert d["kind"] == "project_tag"
    assert page.get_by_test_id("sw-exp-dnll").locator(".sw-tok").count() == len(e.result.nll["clean"][0]) + 1
    assert "release L15H7" in page.get_by_test_id("sw-exp-result").inner_text()
    assert page.evaluate("() => !document.querySelector('.sw-root img') && !window.__xss")
    out = poll_cell(page, 1, lambda s: "n=1" in s, timeout=30, what="the linked experiment")
    assert "prompt=0" in out and "note=''" in out
