"""Time and peak memory of ``sinkwidgets.trace`` vs the leanest plain forward pass, T = 128 … 8192 (SmolLM2, CPU).

The baseline is SmolLM2-135M's own forward pass under SDPA attention with ``use_cache=False`` and
``logits_to_keep=1`` (only the last position's logits): the cheapest way to run the model over the text. Issue 20's
targets: ``sw.trace(model, text)`` (method "auto") at most **1.5×** its time and **1.25×** its peak RSS at every T.

- **Time** (``time_over_sdpa``): one process per T loads the model once, runs every case once to warm up, then
  ``--rounds`` interleaved rounds (sdpa, trace, sdpa, trace, ...); each case keeps its best round, and the ratio
  is best trace / best sdpa, in wall time and in process CPU time. On a shared machine a burst of load then hits
  one round of every case, not all rounds of one case. ``uptime``'s load average is recorded before and after.
- **Threads**: ``--threads`` is what the script asks torch for; the package's own thread rule
  (``sinkwidgets.config()``) may pick fewer when the machine's load average is up (its own earlier cases count),
  so the thread count the timed process really used is recorded per T (``torch_threads``). Set
  ``SINKWIDGETS_NUM_THREADS=2`` to force both cores.
- **Peak RSS** (``rss_over_sdpa``): each case runs once more in a fresh process of its own (model loaded the same
  way), and its ``ru_maxrss`` is compared with the SDPA case's.

Cases: ``sdpa`` (the baseline), ``trace`` (``sw.trace(model, text, max_tokens=T)``: method "auto"), and with
``--cases`` also ``chunked`` / ``eager`` (``method=`` forced), to see where "auto" should switch. Every case runs
under the allocator setting ``trace()`` applies to chunked traces (glibc's mmap threshold pinned, see
``sinkwidgets.tracing``); ``--no-mallopt`` leaves glibc alone everywhere.

    python benchmarks/long_context.py --out benchmarks/results/long_context.json        # T = 128 … 8192
    python benchmarks/long_context.py --tokens 512 2048 --cases trace chunked eager     # where should auto switch?
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

from _out import default_out  # noqa: E402 - benchmarks/ is on sys.path when a script runs

TEXT_FILE = "/usr/share/common-licenses/GPL-3"
TOKENS = (128, 256, 512, 2048, 4096, 8192)
TIME_BOUND, RSS_BOUND = 1.5, 1.25  # issue 20: trace <= 1.5x the time, <= 1.25x the peak RSS of the SDPA forward


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _text(T: int, tok) -> str:
    base = " ".join(open(TEXT_FILE).read().split()) if os.path.exists(TEXT_FILE) else "The cat sat on the mat. " * 400
    text = base
    while len(tok(text, add_special_tokens=False)["input_ids"]) < T:
        text += " " + base
    return text


def _setup(T: int, threads: int):
    import torch

    torch.set_num_threads(threads)
    import sinkwidgets as sw

    if not os.environ.get("SINKWIDGETS_NO_MALLOPT"):  # the setting trace() applies, for every case (fair peaks)
        from sinkwidgets.tracing import _pin_mmap_threshold

        _pin_mmap_threshold()
    model = sw.load_model("smollm2-135m", validate=False)
    ids = torch.tensor([model.tokenizer(_text(T, model.tokenizer), add_special_tokens=False)["input_ids"][:T]])
    assert ids.shape[1] == T
    text = model.tokenizer.decode(ids[0])
    hf = model._module
    prev = hf.config._attn_implementation

    def run(case: str) -> dict:
        if case == "sdpa":
            hf.set_attn_implementation("sdpa")
            try:
                with torch.no_grad():
                    hf(input_ids=ids, use_cache=False, logits_to_keep=1)
            finally:
                hf.set_attn_implementation(prev)
            return {}
        method = {"trace": "auto", "chunked": "chunked", "eager": "eager"}[case]
        tr = sw.trace(model, text, max_tokens=T, add_bos=False, method=method)
        assert len(tr.tokens) == T
        return {"method": tr.meta["method"], "attention": tr.meta.get("attention", "eager")}

    return run


def time_child(T: int, cases: list[str], rounds: int, threads: int) -> dict:
    run = _setup(T, threads)
    info = {c: run(c) for c in cases}  # warm-up (nnsight compiles the traced block once per process)
    wall: dict[str, list[float]] = {c: [] for c in cases}
    cpu: dict[str, list[float]] = {c: [] for c in cases}
    load0 = os.getloadavg()
    for _ in range(rounds):
        for c in cases:
            t0, c0 = time.perf_counter(), time.process_time()
            run(c)
            wall[c].append(round(time.perf_counter() - t0, 3))
            cpu[c].append(round(time.process_time() - c0, 3))
    import torch

    return {"T": T, "wall_seconds": wall, "cpu_seconds": cpu, "info": info, "load_before": load0,
            "load_after": os.getloadavg(), "torch_threads": torch.get_num_threads()}


def rss_child(T: int, case: str, threads: int) -> dict:
    run = _setup(T, threads)
    after_load = _peak_mib()
    t0 = time.perf_counter()
    info = run(case)
    return {"T": T, "case": case, "seconds": round(time.perf_counter() - t0, 2), "peak_rss_mib": round(_peak_mib(), 1),
            "peak_rss_after_load_mib": round(after_load, 1), **info}


def _child(args: list[str], env: dict) -> dict:
    p = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, env=env)
    line = [ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")]
    if p.returncode != 0 or not line:
        return {"error": (p.stderr or p.stdout)[-1500:]}
    return json.loads(line[-1][7:])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, nargs="+", default=list(TOKENS))
    ap.add_argument("--cases", nargs="+", default=["trace"], choices=["trace", "chunked", "eager"],
                    help="cases compared with the SDPA forward (default: trace, i.e. method='auto')")
    ap.add_argument("--rounds", type=int, default=2, help="interleaved timed rounds after the warm-up")
    ap.add_argument("--no-rss", action="store_true", help="skip the one-process-per-case peak-RSS runs")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-mallopt", action="store_true", help="leave glibc's allocator alone (SINKWIDGETS_NO_MALLOPT=1)")
    ap.add_argument("--out", default=default_out("long_context.json"),
                    help="JSON path (default outside the git tree; benchmarks/results/long_context.json to record)")
    ap.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:  # child process: one JSON line
        kind, T = a.child[0], int(a.child[1])
        out = (time_child(T, a.child[2].split(","), a.rounds, a.threads) if kind == "time"
               else rss_child(T, a.child[2], a.threads))
        print("RESULT " + json.dumps(out), flush=True)
        return

    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    if a.no_mallopt:
        env["SINKWIDGETS_NO_MALLOPT"] = "1"
    common = ["--rounds", str(a.rounds), "--threads", str(a.threads)]
    cases = ["sdpa", *a.cases]
    timing, rss, summary = {}, {}, {}
    for T in a.tokens:
        r = _child(["--child", "time", str(T), ",".join(cases), *common], env)
        timing[str(T)] = r
        s: dict = {}
        if "error" not in r:
            b_wall, b_cpu = min(r["wall_seconds"]["sdpa"]), min(r["cpu_seconds"]["sdpa"])
            for c in a.cases:
                s[f"{c}_time_over_sdpa"] = round(min(r["wall_seconds"][c]) / b_wall, 3)
                s[f"{c}_cpu_time_over_sdpa"] = round(min(r["cpu_seconds"][c]) / b_cpu, 3)
                s[f"{c}_method"] = r["info"][c].get("method", "sdpa")
            s["torch_threads"] = r.get("torch_threads")
        if not a.no_rss:
            rows = {c: _child(["--child", "rss", str(T), c, *common], env) for c in cases}
            rss[str(T)] = rows
            if all("error" not in v for v in rows.values()):
                for c in a.cases:
                    s[f"{c}_rss_over_sdpa"] = round(rows[c]["peak_rss_mib"] / rows["sdpa"]["peak_rss_mib"], 3)
        if "trace_time_over_sdpa" in s:
            s["trace_time_within_1.5x"] = s["trace_time_over_sdpa"] <= TIME_BOUND
        if "trace_rss_over_sdpa" in s:
            s["trace_rss_within_1.25x"] = s["trace_rss_over_sdpa"] <= RSS_BOUND
        summary[str(T)] = s
        print(json.dumps({"T": T, **s}), flush=True)
    import torch

    doc = {
        "benchmark": "long_context",
        "model": "smollm2-135m (SmolLM2-135M-Instruct, float32, CPU)",
        "baseline": "SDPA forward, use_cache=False, logits_to_keep=1, in the same process (time) / its own process (RSS)",
        "targets": f"sw.trace (method='auto') <= {TIME_BOUND}x time and <= {RSS_BOUND}x peak RSS of the baseline",
        "machine": {"platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
                    "cpus": os.cpu_count(), "threads": a.threads, "load_avg_at_end": os.getloadavg(),
                    "note": "shared CPU: compare ratios within one run"},
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "rounds": a.rounds,
        "allocator": "glibc default" if a.no_mallopt else "mmap threshold pinned (sinkwidgets default), all cases",
        "summary": summary,
        "timing": timing,
        "rss": rss,
    }
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(doc, indent=2) + "\n")
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
