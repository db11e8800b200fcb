"""Experiment round trip: click "mask token 0, all layers" in a SinkExplorer → the difference painted, in a real
JupyterLab driven by headless chromium, SmolLM2, prompts of 128 and 512 tokens (issue 19: ≤ 2 s and ≤ 5 s).

For each length: one notebook and kernel; cell 0 loads SmolLM2, traces the prompt (maps kept by the "auto" rule:
all at 128 tokens, none at 512) and shows ``SinkExplorer(tr, model=m)`` with ``experiment_view="diff"``. Then,
``--repeats`` times, the clock starts (``performance.now()`` in the page) when the preset button is clicked and
stops two animation frames after the panel shows the new experiment in the after − before view (the grid, the
strip, the ΔNLL strip and the heatmap's map have been drawn by then). The first click is a warm-up (nnsight
compiles the traced block once per process) and is reported apart. JSON: machine, every run, medians.

    python benchmarks/experiment_roundtrip.py [--tokens 128 512] [--repeats 3] [--out benchmarks/results/x.json]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _out import default_out, write_json  # noqa: E402 - benchmarks/ is on sys.path when a script runs

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests" / "browser"))

from labserver import CHROMIUM, CHROMIUM_ARGS, start_lab  # noqa: E402

SENTENCES = [
    "The old lighthouse keeper climbed the stairs every evening.",
    "Ships passed by in the dark, and he watched them until the sun came up over the grey water.",
    "In the village, the baker opened his shop before dawn and the smell of bread filled the street.",
    "Children ran to school along the river, counting the boats that drifted slowly towards the sea.",
]

CLICK_JS = """(i) => new Promise((resolve, reject) => {
  const t0 = performance.now();
  document.querySelector('[data-testid=sw-exp-preset-all]').click();
  const poll = () => {
    const d = document.querySelector('[data-testid=sw-exp]').dataset;
    const s = document.querySelector('[data-testid=sw-exp-status]').dataset;
    if (s.state === 'error') return reject(new Error(document.querySelector('[data-testid=sw-exp-status]').textContent));
    if (d.index === String(i) && d.view === 'diff')
      return requestAnimationFrame(() => requestAnimationFrame(() => resolve(performance.now() - t0)));
    setTimeout(poll, 5);
  };
  poll();
})"""


def prompt(model, n_tokens: int) -> str:
    """A prompt of exactly ``n_tokens`` SmolLM2 tokens (sentences repeated, then cut at a token boundary)."""
    text = " ".join(SENTENCES * (4 * n_tokens // 60 + 2))
    ids = model.tokenizer(text, add_special_tokens=False)["input_ids"][:n_tokens]
    return model.tokenizer.decode(ids)


def machine() -> dict:
    import psutil

    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    except OSError:
        commit = None
    return {"platform": platform.platform(), "python": sys.version.split()[0], "cpus": os.cpu_count(),
            "load_avg": os.getloadavg(), "ram_gib": round(psutil.virtual_memory().total / 2**30, 1),
            "git_commit": commit, "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tokens", type=int, nargs="+", default=[128, 512])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=default_out("experiment_roundtrip.json"))
    args = ap.parse_args(argv)
    import nbformat
    from nbformat.v4 import new_code_cell, new_notebook
    from playwright.sync_api import sync_playwright

    import sinkwidgets as sw

    model = sw.load_model("smollm2-135m")
    targets = {128: 2.0, 512: 5.0}
    results = {"machine": machine(), "targets_s": targets, "cases": {}}
    lab = start_lab(Path(tempfile.mkdtemp(prefix="sw-exp-bench-")), [str(REPO)])
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            for T in args.tokens:
                text = prompt(model, T)
                name = f"exp_{T}.ipynb"
                cells = ["import sinkwidgets as sw\nm = sw.load_model('smollm2-135m')\n"
                         f"tr = sw.trace(m, {text!r})\n"
                         "ex = sw.SinkExplorer(tr, model=m, experiment_view='diff')\nex"]
                nb = new_notebook(cells=[new_code_cell(c) for c in cells], metadata={"kernelspec": {
                    "name": "python3", "display_name": "Python 3", "language": "python"}})
                nbformat.write(nb, lab.root / name)
                ctx = browser.new_context(viewport={"width": 1400, "height": 1100})
                page = ctx.new_page()
                page.goto(lab.url(f"lab/tree/{name}") + "&reset")
                page.wait_for_function(
                    """(name) => { const w = window.jupyterapp && window.jupyterapp.shell.currentWidget;
                       return !!(w && w.context && w.context.path === name && w.sessionContext
                                 && w.sessionContext.session && w.sessionContext.session.kernel
                                 && w.sessionContext.kernelDisplayStatus === 'idle'); }""", arg=name, timeout=180_000)
                page.evaluate("() => window.jupyterapp.commands.execute('notebook:run-cell')")
                page.wait_for_selector("[data-testid=sw-exp]", timeout=180_000)
                T_shown = int(page.evaluate("() => document.querySelectorAll('[data-testid=sw-strip-tokens] .sw-tok')"
                                            ".length"))
                runs = []
                for i in range(args.repeats + 1):
                    t = time.perf_counter()
                    ms = page.evaluate(CLICK_JS, i)
                    kernel = float(page.evaluate("() => document.querySelector('[data-testid=sw-exp]').dataset"
                                                 ".kernelMs || 'NaN'")) / 1000
                    runs.append({"click_to_paint_s": ms / 1000, "kernel_s": kernel, "wall_s": time.perf_counter() - t,
                                 "warmup": i == 0, "load_avg": os.getloadavg()[0]})
                    print(f"T={T_shown} run {i}{' (warm-up)' if i == 0 else ''}: {ms / 1000:.2f} s "
                          f"(kernel {kernel:.2f} s, load {os.getloadavg()[0]:.1f})", flush=True)
                timed = [r["click_to_paint_s"] for r in runs if not r["warmup"]]
                med = statistics.median(timed)
                results["cases"][str(T)] = {"tokens": T_shown, "runs": runs, "median_s": med,
                                            "median_kernel_s": statistics.median(
                                                r["kernel_s"] for r in runs if not r["warmup"]),
                                            "target_s": targets.get(T), "met": med <= targets.get(T, float("inf"))}
                ctx.close()
            browser.close()
    finally:
        lab.stop()
    results["machine"]["load_avg_after"] = os.getloadavg()
    write_json(args.out, json.dumps(results, indent=1))
    print(json.dumps({k: (v["median_s"], v["met"]) for k, v in results["cases"].items()}))
    print("wrote", args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
