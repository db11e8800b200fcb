"""TagExplorer speed and size on the user's real sequence (issue 22): first paint, numbers, hover and pan at ~20,000
real SmolLM2 tokens, quiet and with one competing busy process; optionally the synthetic sizes and jupyter-scatter.

Real run (the default), each step in a fresh notebook (fresh kernel) and a fresh page in a throw-away JupyterLab
(127.0.0.1, headless Debian chromium):

1. the user's sequence: one cell loads SmolLM2 and runs ``sw.tags.collect(model, sw.tags.paragraphs(N),
   heads=[(1, 1), (2, 2), (3, 3)], layers='all')`` (timed in the kernel; N = 512 paragraphs gives ~20,000 tokens,
   the 19,852 of the issue's 1,300 shorter prompts), the next runs ``sw.TagExplorer(data, head=(2, 2))``, timed from
   the moment the cell is sent (``performance.now()`` in the page) to the widget's ``data-first-paint`` stamp (two
   animation frames after the points are drawn), and to the numbers panel showing tag EV's controls;
2. the same TagData saved and loaded in fresh kernels, ``--repeat`` times quiet and ``--repeat`` times while one
   busy process (``python -c 'while True: pass'``, started and stopped by its PID) competes for the CPU;
3. hover: the pointer moves onto 40 points; the widget stamps the time from the mousemove event to the animation
   frame after the tooltip was filled (``data-latency-ms``); pan: a 300-px drag in 15 steps, the widget's own draw
   time per frame (``data-draw-ms``).

The environment is passed as it is (run it without ``OMP_NUM_THREADS`` / ``OPENBLAS_NUM_THREADS`` to measure what a
user gets: the widget limits its own BLAS threads).

Synthetic run (``--synthetic``): a synthetic TagData (``synthetic_tagdata``: ~50-token prompts, d = 64, one head) at
``--sizes`` points, and jupyter-scatter (``jscatter.Scatter(data=df, x, y, color_by, tooltip=True)``, its documented
API) when importable (``--jscatter-path`` adds its install folder), timed from cell execution to the first frame after
its canvas exists; its offline HTML export is ``ipywidgets.embed.embed_minimal_html``, opened from file:// with every
other request aborted.

Usage::

    python benchmarks/tag_explorer.py                          # JSON outside the git tree (see _out.py)
    python benchmarks/tag_explorer.py --prompts 512 --repeat 3 --out benchmarks/results/tag_explorer.json
    python benchmarks/tag_explorer.py --prompts 0 --synthetic --sizes 20000   # the synthetic run only
    python benchmarks/tag_explorer.py --jscatter-path /tmp/jscatter_pkg   # folder of a pip --target install
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests" / "browser"))
sys.path.insert(0, str(REPO))

from _out import default_out, write_json  # noqa: E402 - benchmarks/ is on sys.path when a script runs
from labserver import CHROMIUM, CHROMIUM_ARGS, LOCAL_PREFIXES, start_lab  # noqa: E402

WORDS = ("the a of to and in is was that it for on with as his her they at by this from had not but what all were "
         "when we there can an your which their said if do will each about how up out them then she many some so "
         "these would other into has more two like him see time could no make than first been its who now people "
         "my made over did down only way find use may water long little very after words called just where most "
         "know get through back much before go good new write our used me man too any day same right look think "
         "also around another came come work three word must because does part even place well such").split()


def synthetic_tagdata(n_points: int, d: int = 64, T: int = 50, seed: int = 0):
    """A TagData of ~``n_points`` tokens: head (1, 0) with a first-token sink (α 0.8), values with a tag direction,
    outputs that lean on it, maps whose later rows put 0.35-0.65 on token 0 (so about half the tokens are caught at
    τ = 0.5), tokens drawn from a 150-word list (real text repeats its words too)."""
    from sinkwidgets.tags import TagData

    rng = np.random.default_rng(seed)
    N = max(2, n_points // T)
    u = np.linalg.qr(rng.standard_normal((d, 2)))[0][:, 0]
    tokens, outs, vals, scores, maps = [], [], [], [], []
    for _ in range(N):
        toks = ["The"] + [" " + WORDS[k] for k in rng.integers(0, len(WORDS), T - 2)] + ["."]
        tokens.append(toks)
        a = rng.normal(2, 1, T)
        outs.append((a[:, None] * u + 0.4 * rng.standard_normal((T, d)))[None].astype(np.float32))
        g = 0.5 * rng.standard_normal((T, d))
        g[0] = 3 * u
        vals.append(g[None].astype(np.float32))
        s = np.full((2, 2, T), 0.05, np.float32)
        s[1, 0, 0] = 0.8
        scores.append(s)
        A = np.tril(rng.random((T, T))).astype(np.float32)
        A[:, 0] = 0
        A /= np.maximum(A.sum(1, keepdims=True), 1e-9)
        w0 = rng.uniform(0.35, 0.65, T)
        A = A * (1 - w0[:, None])
        A[:, 0] += w0
        A[0] = 0
        A[0, 0] = 1
        maps.append(A[None].astype(np.float16))
    return TagData.from_prompts(tokens, heads=[(1, 0)], head_outputs=outs, head_values=vals, sink_scores=scores,
                                maps=maps, map_index=[(1, 0)], meta={"model": "synthetic"})


def run_cell(page, i: int) -> float:
    return page.evaluate(
        """(i) => { const nb = window.jupyterapp.shell.currentWidget.content; nb.activeCellIndex = i;
                   const t0 = performance.now(); window.jupyterapp.commands.execute('notebook:run-cell'); return t0; }""",
        i)


def run_cell_wait(page, i: int) -> None:
    """Run cell ``i`` and return when it has finished (the command's promise resolves then)."""
    page.evaluate("""async (i) => { const nb = window.jupyterapp.shell.currentWidget.content; nb.activeCellIndex = i;
                   await window.jupyterapp.commands.execute('notebook:run-cell'); }""", i)


def open_nb(page, lab, name: str) -> None:
    page.goto(lab.url(f"lab/tree/{name}") + "&reset")
    page.wait_for_function(
        """(name) => { const w = window.jupyterapp && window.jupyterapp.shell.currentWidget;
                   return !!(w && w.context && w.context.path === name && w.sessionContext
                             && w.sessionContext.session && w.sessionContext.session.kernel
                             && w.sessionContext.kernelDisplayStatus === 'idle'); }""", arg=name, timeout=180_000)


def write_nb(lab, name: str, cells: list[str]) -> None:
    import nbformat
    from nbformat.v4 import new_code_cell, new_notebook

    nb = new_notebook(cells=[new_code_cell(c) for c in cells],
                      metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}})
    nbformat.write(nb, lab.root / name)


def wait_idle(page, timeout=180_000):
    page.wait_for_function("() => window.jupyterapp.shell.currentWidget.sessionContext.kernelDisplayStatus === 'idle'",
                           timeout=timeout)


def stats(xs):
    xs = sorted(xs)
    if not xs:
        return None
    return {"median": statistics.median(xs), "p95": xs[min(len(xs) - 1, int(0.95 * len(xs)))], "max": xs[-1],
            "n": len(xs)}


class BusyNeighbour:
    """One competing busy process (``python -c 'while True: pass'``) started by this script and stopped by its PID:
    the "test suite on the other core" of issue 22."""

    def __init__(self, on: bool) -> None:
        self.on, self.proc = on, None

    def __enter__(self):
        if self.on:
            import subprocess

            self.proc = subprocess.Popen([sys.executable, "-c", "while True: pass"])
            time.sleep(0.5)  # let it reach its loop
        return self

    def __exit__(self, *exc):
        if self.proc is not None:
            self.proc.kill()  # our own child, by its PID
            self.proc.wait(10)


def bench_ours(browser, lab, path: Path, n: int, repeat: int, *, head=(1, 0), tau: float = 0.5, busy: bool = False,
               setup: str | None = None, tag: str = "") -> dict:
    """First paint (cell sent -> ``data-first-paint``), numbers in (-> tag EV's controls shown), hover and pan, in a
    fresh kernel and page per run; ``busy``: with one competing busy process during the timed cell and the hovers.
    ``setup`` replaces the untimed first cell (it must define ``data``)."""
    paints, numbers_in, hovers, draw_ms, moved, payload = [], [], [], [], None, {}
    setup = setup or f"data = sw.tags.TagData.load({str(path)!r})"
    for r in range(repeat):
        name = f"te_{n}_{tag}{'busy' if busy else 'quiet'}_{r}.ipynb"
        write_nb(lab, name, [
            "import sinkwidgets as sw, json, time\nfrom sinkwidgets.widgets._serialization import buffers_nbytes\n"
            f"{setup}\nprint('READY', data.n_tokens)",
            f"te = sw.TagExplorer(data, head={tuple(head)!r}, tau={tau})\nte",
            "st = te.get_state()\nprint('PAYLOAD', buffers_nbytes(st), len(json.dumps(st, default=lambda b: None)))",
        ])
        page = browser.new_page(viewport={"width": 1400, "height": 1100})
        page.route("**/*", lambda rt: rt.continue_() if rt.request.url.startswith(LOCAL_PREFIXES) else rt.abort())
        open_nb(page, lab, name)
        run_cell_wait(page, 0)
        with BusyNeighbour(busy):
            t0 = run_cell(page, 1)
            page.wait_for_selector("[data-testid=te-root][data-first-paint]", timeout=300_000)
            t1 = page.evaluate("() => Number(document.querySelector('[data-testid=te-root]').dataset.firstPaint)")
            paints.append((t1 - t0) / 1000)
            page.wait_for_selector("[data-testid=te-num-ev]", timeout=300_000)
            numbers_in.append((page.evaluate("() => performance.now()") - t0) / 1000)
            if r == 0:
                wait_idle(page)
                run_cell_wait(page, 2)
                out = page.evaluate(
                    "() => window.jupyterapp.shell.currentWidget.content.widgets[2].outputArea.node.innerText")
                b, j = out.split("PAYLOAD")[1].split()[:2]
                payload = {"binary_bytes": int(b), "json_bytes": int(j)}
                cv = page.get_by_test_id("te-scatter")
                cv.scroll_into_view_if_needed()
                box = cv.bounding_box()
                rng = np.random.default_rng(1)
                for _ in range(40):
                    x, y = 56 + rng.uniform(60, 460), 12 + rng.uniform(40, 380)
                    page.evaluate("() => { delete document.querySelector('[data-testid=te-tooltip]').dataset.latencyMs; }")
                    page.mouse.move(box["x"] + x, box["y"] + y)
                    page.wait_for_timeout(80)
                    d = page.evaluate(
                        "() => Object.assign({}, document.querySelector('[data-testid=te-tooltip]').dataset)")
                    if d.get("latencyMs"):  # a point within the hover radius: the tooltip was filled
                        hovers.append(float(d["latencyMs"]))
                v0 = cv.get_attribute("data-view")
                page.mouse.move(box["x"] + 300, box["y"] + 200)
                page.mouse.down()
                for s in range(15):
                    page.mouse.move(box["x"] + 300 - 20 * (s + 1), box["y"] + 200 + 5 * (s + 1))
                    page.wait_for_timeout(30)
                    draw_ms.append(float(cv.get_attribute("data-draw-ms")))
                page.mouse.up()
                page.wait_for_timeout(200)
                moved = cv.get_attribute("data-view") != v0
        page.close()
    return {"first_paint_s": stats(paints), "runs": paints, "numbers_in_s": stats(numbers_in),
            "hover_ms": stats(hovers), "pan_draw_ms": stats(draw_ms), "pan_moved": moved, "busy_neighbour": busy,
            **payload}


def bench_real(browser, lab, work: Path, n_prompts: int, repeat: int) -> dict:
    """The user's sequence on real data: ``sw.tags.collect`` on SmolLM2 over ``n_prompts`` prompts (three heads,
    ``layers='all'``) in one cell, ``sw.TagExplorer(data, head=(2, 2))`` in the next; then fresh kernels that load
    the same TagData from its file, quiet and with one busy neighbour."""
    collect = (f"model = sw.load_model('smollm2-135m')\ntexts = sw.tags.paragraphs({n_prompts})\n"
               "t = time.perf_counter()\n"
               "data = sw.tags.collect(model, texts, heads=[(1, 1), (2, 2), (3, 3)], layers='all', progress=False)\n"
               f"print('COLLECT', time.perf_counter() - t)\ndata.save({str(work / 'real.npz')!r})")
    path = work / "real.npz"
    out: dict = {"n_prompts": n_prompts, "head": [2, 2]}
    print(f"real: collect {n_prompts} prompts in the kernel, then TagExplorer…", flush=True)
    out["after_collect"] = bench_ours(browser, lab, path, n_prompts, 1, head=(2, 2), tau=0.3, setup=collect,
                                      tag="collect_")
    from sinkwidgets.tags import TagData

    data = TagData.load(path)
    out["n_points"] = data.n_tokens
    out["file_bytes"] = path.stat().st_size
    del data
    for busy in (False, True):
        key = "busy" if busy else "quiet"
        print(f"real: {key}…", flush=True)
        out[key] = bench_ours(browser, lab, path, n_prompts, repeat, head=(2, 2), tau=0.3, busy=busy, tag="file_")
        print(json.dumps({key: out[key]["first_paint_s"], "hover_ms": out[key]["hover_ms"]}), flush=True)
    return out


def bench_jscatter(browser, lab, path: Path, n: int, repeat: int) -> dict:
    paints, hovers = [], []
    setup = ("import pandas as pd, numpy as np, jscatter, sinkwidgets as sw\n"
             f"data = sw.tags.TagData.load({str(path)!r})\n"
             "te = sw.TagExplorer(data, head=(1, 0), tau=0.5)\nxy = te.coords()\n"
             "codes = te._view_model.catch((1, 0), 0.5)['codes']\n"
             "flat = [t for toks in data.tokens for t in toks]\n"
             "df = pd.DataFrame({'x': xy[:, 0], 'y': xy[:, 1], 'catch': pd.Categorical(codes.astype(str)), "
             "'token': flat})\nprint('READY')")
    timed = ("s = jscatter.Scatter(data=df, x='x', y='y', color_by='catch', tooltip=True, "
             "tooltip_properties=['token', 'catch'])\ns.show()")
    canvas_js = "() => !!document.querySelector('.jp-OutputArea-output canvas')"
    for r in range(repeat):
        name = f"js_{n}_{r}.ipynb"
        write_nb(lab, name, [setup, timed])
        page = browser.new_page(viewport={"width": 1400, "height": 1100})
        errors: list[str] = []
        page.on("pageerror", lambda e, errors=errors: errors.append(str(e)))
        page.route("**/*", lambda rt: rt.continue_() if rt.request.url.startswith(LOCAL_PREFIXES) else rt.abort())
        open_nb(page, lab, name)
        run_cell_wait(page, 0)
        t0 = run_cell(page, 1)
        try:
            page.wait_for_function(canvas_js, timeout=120_000, polling=50)
        except Exception as exc:
            page.close()
            return {"error": f"no canvas within 120 s ({type(exc).__name__}); page errors: {errors[:3]}"}
        t1 = page.evaluate("() => new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(() => "
                           "r(performance.now()))))")
        paints.append((t1 - t0) / 1000)
        if r == 0:
            page.wait_for_timeout(1500)
            cv = page.locator(".jp-OutputArea-output canvas").first
            box = cv.bounding_box()
            rng = np.random.default_rng(1)
            for _ in range(20):
                x, y = box["x"] + rng.uniform(0.2, 0.8) * box["width"], box["y"] + rng.uniform(0.2, 0.8) * box["height"]
                page.mouse.move(x - 30, y - 30)
                page.wait_for_timeout(100)
                ms = page.evaluate(
                    """([x, y]) => new Promise((res) => {
                        const t0 = performance.now();
                        const vis = () => [...document.querySelectorAll('.jp-OutputArea-output div')].some((d) =>
                          /tooltip/i.test(d.className) && getComputedStyle(d).opacity !== '0'
                          && getComputedStyle(d).visibility !== 'hidden' && getComputedStyle(d).display !== 'none'
                          && d.textContent.trim().length > 0);
                        const loop = () => { if (vis()) return res(performance.now() - t0);
                          if (performance.now() - t0 > 1500) return res(null); requestAnimationFrame(loop); };
                        const c = document.querySelector('.jp-OutputArea-output canvas');
                        c.dispatchEvent(new MouseEvent('mousemove', {clientX: x, clientY: y, bubbles: true}));
                        requestAnimationFrame(loop);
                      })""", [x, y])
                if ms is not None:
                    hovers.append(ms)
        page.close()
    return {"first_paint_s": stats(paints), "runs": paints, "hover_ms": stats(hovers),
            "hover_note": "tooltip element visible after a synthetic mousemove; None when it never showed"}


def offline(browser, path: Path, out_dir: Path, jscatter: bool) -> dict:
    import sinkwidgets as sw

    res = {}
    data = sw.tags.TagData.load(path)
    te = sw.TagExplorer(data, head=(1, 0), tau=0.5)
    html = te.to_html(out_dir / "te.html")
    page = browser.new_page(viewport={"width": 1400, "height": 1100})
    page.route("**/*", lambda rt: rt.continue_() if rt.request.url.startswith(("file:", "data:", "blob:")) else rt.abort())
    t0 = time.perf_counter()
    page.goto(html.as_uri())
    page.wait_for_selector("[data-testid=te-root][data-first-paint]", timeout=60_000)
    nav = page.evaluate("() => Number(document.querySelector('[data-testid=te-root]').dataset.firstPaint)")
    res["sinkwidgets"] = {"bytes": html.stat().st_size, "navigation_to_paint_s": nav / 1000,
                          "wall_s": time.perf_counter() - t0, "renders_offline": True}
    page.close()
    if jscatter:
        import jscatter as js
        import pandas as pd
        from ipywidgets.embed import embed_minimal_html

        xy = te.coords()
        df = pd.DataFrame({"x": xy[:, 0], "y": xy[:, 1]})
        s = js.Scatter(data=df, x="x", y="y")
        p = out_dir / "jscatter.html"
        embed_minimal_html(str(p), views=[s.widget], drop_defaults=False)
        page = browser.new_page(viewport={"width": 1400, "height": 1100})
        blocked = []
        page.route("**/*", lambda rt: rt.continue_() if rt.request.url.startswith(("file:", "data:", "blob:"))
                   else (blocked.append(rt.request.url), rt.abort()))
        page.goto(p.as_uri())
        page.wait_for_timeout(5000)
        has_canvas = page.evaluate("() => !!document.querySelector('canvas')")
        res["jupyter-scatter"] = {"bytes": p.stat().st_size, "renders_offline": has_canvas,
                                  "blocked_requests": blocked[:5]}
        page.close()
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--prompts", type=int, default=512,
                    help="real run: SmolLM2 paragraphs collected in the kernel (512 -> ~20,000 tokens)")
    ap.add_argument("--synthetic", action="store_true", help="also run the synthetic sizes (and jupyter-scatter)")
    ap.add_argument("--sizes", type=int, nargs="+", default=[20_000, 100_000])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--jscatter-path", default=None, help="folder holding jscatter (pip install --target ...)")
    ap.add_argument("--out", default=default_out("tag_explorer.json"),
                    help="JSON path (default outside the git tree; benchmarks/results/tag_explorer.json to record)")
    args = ap.parse_args(argv)
    if args.jscatter_path:
        sys.path.insert(0, args.jscatter_path)
    try:
        import jscatter  # noqa: F401
        have_js = True
    except ImportError:
        have_js = False
    work = Path(tempfile.mkdtemp(prefix="te-bench-"))
    from playwright.sync_api import sync_playwright

    results = {"benchmark": "TagExplorer: cell execution -> first paint, hover, pan, payload, offline HTML "
                            "(real SmolLM2 collect, quiet and with a busy neighbour; optional synthetic sizes)",
               "date": dt.datetime.now().isoformat(timespec="seconds"),
               "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                           "load_avg_start": os.getloadavg(), "python": platform.python_version()},
               "sizes": {}}
    lab = start_lab(work / "lab", extra_pythonpath=[str(REPO)] + ([args.jscatter_path] if args.jscatter_path else []))
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            results["machine"]["chromium"] = browser.version
            if args.prompts:
                results["real"] = bench_real(browser, lab, work, args.prompts, args.repeat)
            for n in (args.sizes if args.synthetic else []):
                data = synthetic_tagdata(n)
                path = data.save(work / f"tags_{n}.npz")
                row = {"n_points": data.n_tokens}
                print(f"n={data.n_tokens}: sinkwidgets…", flush=True)
                row["sinkwidgets"] = bench_ours(browser, lab, path, n, args.repeat)
                print(json.dumps(row["sinkwidgets"]["first_paint_s"]), flush=True)
                if have_js:
                    print(f"n={data.n_tokens}: jupyter-scatter…", flush=True)
                    row["jupyter-scatter"] = bench_jscatter(browser, lab, path, n, args.repeat)
                    print(json.dumps(row["jupyter-scatter"].get("first_paint_s")), flush=True)
                if n == args.sizes[0]:
                    row["offline_html"] = offline(browser, path, work, have_js)
                results["sizes"][str(n)] = row
            browser.close()
    finally:
        lab.stop()
    results["machine"]["load_avg_end"] = os.getloadavg()
    out = write_json(args.out, json.dumps(results, indent=2))
    print(f"wrote {out}")
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
