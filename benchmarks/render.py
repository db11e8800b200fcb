"""Render benchmark: time from cell execution to first paint, in a real JupyterLab driven by headless chromium.

For each tool and prompt length T, a fresh notebook (fresh kernel) and a fresh browser page:

1. an untimed setup cell builds SmolLM2-shaped synthetic attention (30 layers × 9 heads, causal, token-0 sink;
   ``sinkwidgets.widgets.synthetic``, seed 0: every tool gets the same attention values);
2. the clock starts (``performance.now()`` in the page) as the timed cell is sent for execution and stops at the
   first paint of the finished view: for sinkwidgets the ``data-first-paint`` stamp the widget sets two
   animation frames after drawing; for the peers when all their SVG lines / canvases exist, plus two frames.

Tools: ``sinkwidgets.SinkExplorer`` (T = 128, 512, 2048, 8192); bertviz ``head_view`` / ``model_view`` and
CircuitsVis ``attention_heads`` (full ``[L, H, T, T]`` maps, as they need) at the T they can handle: each case is
capped at ``--peer-timeout`` seconds, and a peer that fails at some T is not tried at larger T. The peers' CDN
scripts (require.js, d3, jquery) are served from local npm copies (as if the CDN answered instantly); CircuitsVis
is shown through its bundled ``local_src`` (no CDN). Also timed: the offline HTML file of sinkwidgets
(navigation → first paint).

Usage::

    python benchmarks/render.py                      # writes benchmarks/results/render.json
    python benchmarks/render.py --T 128 512 --repeat 1 --no-peers

Needs: chromium (Debian package), jupyterlab; for the peers ``pip install --no-deps bertviz circuitsvis``
(+ ``importlib_metadata``) and ``npm`` (to fetch require.js, d3 5.7.0, jquery 2.1.0 once into a cache dir).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from importlib import metadata
from pathlib import Path

from _out import default_out  # noqa: E402 - benchmarks/ is on sys.path when a script runs

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests" / "browser"))

from labserver import CHROMIUM, CHROMIUM_ARGS, LOCAL_PREFIXES, api, start_lab  # noqa: E402

L, H, SEED = 30, 9, 0
CACHE = Path(os.environ.get("SW_BENCH_CACHE", Path.home() / ".cache" / "sinkwidgets-bench"))
# CDN URL prefix -> (npm package spec, file inside the package)
VENDOR = {
    "https://cdnjs.cloudflare.com/ajax/libs/require.js/2.3.6/require.min.js": ("requirejs@2.3.6", "require.js"),
    "https://cdnjs.cloudflare.com/ajax/libs/d3/5.7.0/d3.min": ("d3@5.7.0", "dist/d3.min.js"),
    "https://cdnjs.cloudflare.com/ajax/libs/jquery/2.0.0/jquery.min": ("jquery@2.1.0", "dist/jquery.min.js"),
}

SETUP_OURS = """
import time
from sinkwidgets.widgets import SinkExplorer, synthetic_trace
from sinkwidgets.widgets import _serialization as ser
from ipywidgets.widgets.widget import _remove_buffers
import json
tr = synthetic_trace(T={T}, n_layers={L}, n_heads={H}, seed={SEED}, keep_maps={keep})
_probe = SinkExplorer(tr)
_st, _p, _b = _remove_buffers(_probe.get_state())
_json = len(json.dumps({{k: v for k, v in _st.items() if k not in ('_esm', '_css')}}).encode())
print('PAYLOAD', _json + sum(memoryview(b).nbytes for b in _b), _json)
del _probe
"""
TIMED_OURS = "SinkExplorer(tr)"

SETUP_PEER = """
import numpy as np, torch
from sinkwidgets.widgets.synthetic import head_params, synthetic_attention, synthetic_trace
s, r, w = head_params({L}, {H}, {T}, seed={SEED})
tokens = synthetic_trace(T={T}, n_layers=1, n_heads=1, keep_maps=None).tokens
attn = [torch.from_numpy(np.stack([synthetic_attention(s[l, h], r[l, h], w[l, h]) for h in range({H})])[None])
        for l in range({L})]
print('PAYLOAD', sum(a.numel() for a in attn) * 4, 0)  # the float32 input they serialise
"""
TIMED_PEER = {
    "bertviz.head_view": "from bertviz import head_view\nhead_view(attn, tokens)",
    "bertviz.model_view": "from bertviz import model_view\nmodel_view(attn, tokens)",
    "circuitsvis.attention_heads": (
        "import circuitsvis as cv\nfrom IPython.display import HTML, display\n"
        "display(HTML(cv.attention.attention_heads(attention=attn[3][0].numpy(), tokens=tokens).local_src))"
    ),
}
# JS condition for "the whole view is drawn"
DONE_PEER = {
    "bertviz.head_view": f"document.querySelectorAll('#bertviz line, svg line').length >= {H} * {{T}} * {{T}}",
    "bertviz.model_view": f"document.querySelectorAll('svg line').length >= {L} * {H} * {{T}} * {{T}}",
    "circuitsvis.attention_heads": f"document.querySelectorAll('.jp-OutputArea canvas').length >= {H} + 1",
}


# ----------------------------------------------------------------------------- helpers
def vendor_files() -> dict[str, Path] | str:
    """Local copies of the peers' CDN scripts (npm pack, cached); a reason string if they cannot be had."""
    out, vdir = {}, CACHE / "vendor"
    vdir.mkdir(parents=True, exist_ok=True)
    for url, (spec, member) in VENDOR.items():
        name, version = spec.rsplit("@", 1)
        target = vdir / f"{name}-{version}" / member
        if not target.exists():
            if not shutil.which("npm"):
                return "npm not found: cannot fetch require.js/d3/jquery for bertviz"
            r = subprocess.run(["npm", "pack", spec, "--silent"], cwd=vdir, capture_output=True, text=True, timeout=180)
            tgz = vdir / r.stdout.strip().splitlines()[-1] if r.returncode == 0 and r.stdout.strip() else None
            if tgz is None or not tgz.exists():
                return f"npm pack {spec} failed: {r.stderr.strip()[:200]}"
            with tarfile.open(tgz) as tf:
                tf.extractall(vdir / f"{name}-{version}.tmp", filter="data")
            shutil.move(str(vdir / f"{name}-{version}.tmp" / "package"), str(vdir / f"{name}-{version}"))
            tgz.unlink()
        out[url] = target
    return out


def machine_info(browser_version: str) -> dict:
    import psutil

    def ver(p):
        try:
            return metadata.version(p)
        except metadata.PackageNotFoundError:
            return None

    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                                text=True).stdout.strip()
    except OSError:
        commit = None
    return {
        "platform": platform.platform(), "machine": platform.machine(), "processor": platform.processor(),
        "cpu_count": os.cpu_count(), "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()], "python": platform.python_version(),
        "chromium": browser_version, "git_commit": commit,
        "packages": {p: ver(p) for p in ("sinkwidgets", "anywidget", "ipywidgets", "jupyterlab", "numpy",
                                          "bertviz", "circuitsvis", "playwright")},
    }


def new_notebook(lab, name: str, cells: list[str]) -> None:
    import nbformat
    from nbformat.v4 import new_code_cell
    from nbformat.v4 import new_notebook as nb

    nbformat.write(nb(cells=[new_code_cell(c) for c in cells],
                      metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}}),
                   lab.root / name)


def shutdown_kernels(lab) -> None:
    for s in api(f"{lab.base}/api/sessions", lab.token) or []:
        try:
            api(f"{lab.base}/api/sessions/{s['id']}", lab.token, method="DELETE", timeout=20)
        except Exception:
            pass


def open_and_setup(page, lab, name: str, timeout_ms: int = 180_000) -> str:
    page.goto(lab.url(f"lab/tree/{name}") + "&reset")
    page.wait_for_function(
        """(name) => { const w = window.jupyterapp && window.jupyterapp.shell.currentWidget;
                   return !!(w && w.context && w.context.path === name && w.sessionContext
                             && w.sessionContext.session && w.sessionContext.session.kernel
                             && w.sessionContext.kernelDisplayStatus === 'idle'); }""",
        arg=name, timeout=timeout_ms)
    page.evaluate("() => { const nb = window.jupyterapp.shell.currentWidget.content; nb.activeCellIndex = 0; }")
    page.evaluate("() => window.jupyterapp.commands.execute('notebook:run-cell')")  # resolves when done
    out = page.evaluate("() => window.jupyterapp.shell.currentWidget.content.widgets[0].outputArea.node.innerText")
    if "PAYLOAD" not in out:
        raise RuntimeError(f"setup cell failed: {out[-1500:]}")
    return out


def time_cell(page, done_js: str, stamp: bool, timeout_s: float) -> float:
    """Run cell 1 and return seconds from sending it to the first paint of the finished view."""
    t0 = page.evaluate(
        """() => { const nb = window.jupyterapp.shell.currentWidget.content; nb.activeCellIndex = 1;
                   const t0 = performance.now(); window.jupyterapp.commands.execute('notebook:run-cell');
                   return t0; }""")
    page.wait_for_function(done_js, timeout=timeout_s * 1000, polling=50 if stamp else 100)
    if stamp:
        t1 = page.evaluate("() => Number(document.querySelector('[data-testid=sw-root]').dataset.firstPaint)")
    else:
        t1 = page.evaluate("() => new Promise((r) => requestAnimationFrame(() => requestAnimationFrame("
                           "() => r(performance.now()))))")
    return (t1 - t0) / 1000.0


# ----------------------------------------------------------------------------- main
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--T", type=int, nargs="+", default=[128, 512, 2048, 8192])
    ap.add_argument("--peer-T", type=int, nargs="+", default=[128, 512])
    ap.add_argument("--repeat", type=int, default=3, help="runs per sinkwidgets case (peers run once)")
    ap.add_argument("--peer-timeout", type=float, default=60.0)
    ap.add_argument("--no-peers", action="store_true")
    ap.add_argument("--out", type=Path, default=Path(default_out("render.json")),
                    help="JSON path (default outside the git tree; benchmarks/results/render.json to record)")
    args = ap.parse_args(argv)

    from playwright.sync_api import TimeoutError as PWTimeout
    from playwright.sync_api import sync_playwright

    vendor = {} if args.no_peers else vendor_files()
    work = Path(tempfile.mkdtemp(prefix="sw-render-bench-"))
    lab = start_lab(work, extra_pythonpath=[str(REPO)])
    cases: list[dict] = []
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            info = machine_info(browser.version)
            print(json.dumps(info, indent=1), flush=True)

            def fresh_page():
                ctx = browser.new_context(viewport={"width": 1400, "height": 1100})
                page = ctx.new_page()
                blocked, errors = [], []

                def route(r):
                    url = r.request.url
                    for prefix, path in (vendor if isinstance(vendor, dict) else {}).items():
                        if url.startswith(prefix):
                            return r.fulfill(path=str(path), content_type="application/javascript")
                    if url.startswith(LOCAL_PREFIXES):
                        return r.continue_()
                    blocked.append(url)
                    return r.abort()

                page.route("**/*", route)
                page.on("pageerror", lambda e: errors.append(str(e)[:200]))
                return ctx, page, blocked, errors

            def run_case(tool: str, T: int, setup: str, timed: str, done_js: str, stamp: bool, timeout_s: float,
                         extra: dict) -> dict:
                name = f"{tool.replace('.', '_')}_T{T}_{len(cases)}.ipynb"
                new_notebook(lab, name, [setup, timed])
                ctx, page, blocked, errors = fresh_page()
                rec = {"tool": tool, "T": T, **extra}
                try:
                    out = open_and_setup(page, lab, name)
                    n = int(out.split("PAYLOAD")[1].split()[0])
                    rec["payload_bytes" if tool.startswith("sinkwidgets") else "input_float32_bytes"] = n
                    w0 = time.perf_counter()
                    fp = time_cell(page, done_js, stamp, timeout_s)
                    wall = time.perf_counter() - w0
                    if max(fp, wall) > timeout_s:  # a hung renderer can outlast Playwright's own timeout
                        rec["status"] = f"not rendered within {timeout_s:g} s (rendered after {max(fp, wall):.1f} s)"
                    else:
                        rec["first_paint_s"] = round(fp, 3)
                        rec["status"] = "ok"
                except PWTimeout:
                    rec["status"] = f"not rendered within {timeout_s:g} s"
                except Exception as exc:  # recorded, the run goes on
                    rec["status"] = f"error: {type(exc).__name__}: {str(exc)[:300]}"
                rec["page_errors"] = errors[:3]
                rec["blocked_requests"] = blocked[:3]
                ctx.close()
                shutdown_kernels(lab)
                print(json.dumps(rec), flush=True)
                return rec

            # ---- sinkwidgets
            for T in args.T:
                keep = '"all"' if T <= 512 else "[(3, 0)]"
                runs = [run_case("sinkwidgets.SinkExplorer", T, SETUP_OURS.format(T=T, L=L, H=H, SEED=SEED, keep=keep),
                                 TIMED_OURS, "() => !!document.querySelector('[data-testid=sw-root][data-first-paint]')",
                                 True, 120.0, {"kept_maps": "all" if T <= 512 else 1})
                        for _ in range(args.repeat)]
                ok = [r["first_paint_s"] for r in runs if r["status"] == "ok"]
                cases.append({**runs[-1], "first_paint_s": statistics.median(ok) if ok else None,
                              "runs_s": [r.get("first_paint_s") for r in runs],
                              "status": "ok" if ok else runs[-1]["status"]})

            # ---- peers
            if not args.no_peers:
                for tool in TIMED_PEER:
                    failed_at = None
                    for T in sorted(set(args.peer_T) | set(args.T)):
                        rec = {"tool": tool, "T": T}
                        if tool.startswith("bertviz") and not isinstance(vendor, dict):
                            cases.append({**rec, "status": f"skipped: {vendor}"})
                            continue
                        if failed_at is not None:
                            cases.append({**rec, "status": f"skipped: not rendered at T={failed_at}"})
                            continue
                        if T not in args.peer_T:
                            gb = L * H * T * T * 4 / 1e9
                            cases.append({**rec, "status": f"skipped: the full [L, H, T, T] input alone is {gb:.1f} GB"})
                            continue
                        r = run_case(tool, T, SETUP_PEER.format(T=T, L=L, H=H, SEED=SEED), TIMED_PEER[tool],
                                     "() => " + DONE_PEER[tool].format(T=T), False, args.peer_timeout, {})
                        cases.append(r)
                        if r["status"] != "ok":
                            failed_at = T

            # ---- the offline HTML file (navigation -> first paint)
            from sinkwidgets.widgets import save_html, synthetic_trace

            for T in args.T:
                tr = synthetic_trace(T=T, n_layers=L, n_heads=H, seed=SEED, keep_maps=[(3, 0)])
                f = save_html(tr, work / f"offline_T{T}.html")
                ctx, page, blocked, errors = fresh_page()
                page.goto(f.as_uri())
                page.wait_for_selector("[data-testid=sw-root][data-first-paint]", timeout=120_000)
                fp = page.evaluate("() => Number(document.querySelector('[data-testid=sw-root]').dataset.firstPaint)")
                rec = {"tool": "sinkwidgets.save_html (offline file)", "T": T, "file_bytes": f.stat().st_size,
                       "first_paint_s": round(fp / 1000, 3), "status": "ok", "page_errors": errors[:3]}
                ctx.close()
                print(json.dumps(rec), flush=True)
                cases.append(rec)
            browser.close()
    finally:
        lab.stop()

    ours = {c["T"]: c["first_paint_s"] for c in cases if c["tool"] == "sinkwidgets.SinkExplorer"}
    peers128 = {c["tool"]: c.get("first_paint_s") for c in cases
                if c["T"] == 128 and c["tool"] in TIMED_PEER and c.get("status") == "ok"}
    fastest = min(peers128.items(), key=lambda kv: kv[1]) if peers128 else None
    summary = {
        "sinkwidgets_first_paint_s": ours,
        "sinkwidgets_payload_bytes": {c["T"]: c.get("payload_bytes") for c in cases
                                      if c["tool"] == "sinkwidgets.SinkExplorer"},
        "fastest_peer_T128": {"tool": fastest[0], "first_paint_s": fastest[1]} if fastest else None,
        "speedup_vs_fastest_peer_T128": round(fastest[1] / ours[128], 1) if fastest and ours.get(128) else None,
    }
    summary["targets"] = {
        "first_paint_T2048_le_1s": (ours.get(2048) or 1e9) <= 1.0 if 2048 in ours else None,
        "speedup_T128_ge_20x": (summary["speedup_vs_fastest_peer_T128"] or 0) >= 20 if fastest else None,
    }
    result = {
        "benchmark": "render: cell execution -> first paint in JupyterLab, headless chromium",
        "generated": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": info,
        "data": {"layers": L, "heads": H, "seed": SEED, "generator": "sinkwidgets.widgets.synthetic (causal, token-0 "
                 "sink; same values for every tool)", "T": args.T, "peer_T": args.peer_T},
        "method": __doc__.split("Usage::")[0].strip(),
        "settings": {"repeat": args.repeat, "peer_timeout_s": args.peer_timeout},
        "cases": cases,
        "summary": summary,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=1) + "\n")
    os.replace(tmp, args.out)
    print(json.dumps(summary, indent=1))
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
