"""Cost of tracing sinks vs a plain forward pass on SmolLM2-135M: time and peak RSS, each case in its own process.

Cases at T = 128, 512, 2048 (override with --T):
  forward_sdpa   plain transformers forward, SDPA attention (the fastest plain forward)
  forward_eager  plain transformers forward, eager attention (what tracing needs for probabilities)
  trace          sinkwidgets.trace, summaries only (α [L,H,T], first-token mass, entropy, norms, top activations)
  trace_maps     sinkwidgets.trace with keep_maps="all" (every [T,T] map kept as float16)

Targets (issue 2): trace time <= 1.3x forward_eager; trace peak RSS <= 1.25x forward_eager.
Time is the minimum of --repeat runs after one warm-up run at the same T, as wall time and as process CPU time
(on a shared, overloaded machine wall time mostly measures the neighbours; CPU time is the steadier ratio);
peak RSS is the process's ru_maxrss, which includes the loaded model. Writes JSON outside the git tree unless --out says where (see _out.py).

usage: python benchmarks/trace_cost.py [--T 128 512 2048] [--repeat 3] [--out PATH]
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

from _out import default_out, keep_best, write_json  # noqa: E402 - benchmarks/ is on sys.path when a script runs

CASES = ["forward_sdpa", "forward_eager", "trace", "trace_maps"]
TEXT_FILE = "/usr/share/common-licenses/GPL-3"
FALLBACK = ("The old lighthouse keeper climbed the stairs every evening to light the lamp. Ships passed by in the "
            "dark, and he watched them go. ") * 40


def text_of_tokens(tok, T):
    text = open(TEXT_FILE).read() if os.path.exists(TEXT_FILE) else FALLBACK
    text = " ".join(text.split())
    while len(tok(text)["input_ids"]) < T:
        text = text + " " + text
    return text


def child(case: str, T: int, repeat: int) -> dict:
    import torch

    import sinkwidgets as sw

    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "2")))
    t_load = time.perf_counter()
    model = sw.load_model("smollm2-135m")
    t_load = time.perf_counter() - t_load
    hf, tok = model._module, model.tokenizer
    ids = tok(text_of_tokens(tok, T), return_tensors="pt")["input_ids"][:, :T]
    assert ids.shape[1] == T
    text = tok.decode(ids[0])

    def run():
        if case.startswith("forward"):
            hf.set_attn_implementation("sdpa" if case == "forward_sdpa" else "eager")
            with torch.no_grad():
                hf(input_ids=ids, use_cache=False)
        else:
            sw.trace(model, text, max_tokens=T, keep_maps="all" if case == "trace_maps" else None)

    run()  # warm-up (nnsight compiles the traced block once per process)
    times, cpu = [], []
    for _ in range(repeat):
        t0, c0 = time.perf_counter(), time.process_time()
        run()
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return {"case": case, "T": T, "seconds": min(times), "all_seconds": times, "cpu_seconds": min(cpu),
            "all_cpu_seconds": cpu, "load_model_seconds": t_load,
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--T", type=int, nargs="+", default=[128, 512, 2048])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=2, help="interleaved rounds of all cases; each keeps its best")
    ap.add_argument("--cases", nargs="+", default=CASES)
    ap.add_argument("--out", default=default_out("trace_cost.json"),
                    help="JSON path (default outside the git tree; benchmarks/results/trace_cost.json to record)")
    ap.add_argument("--child", nargs=3, metavar=("CASE", "T", "REPEAT"))
    a = ap.parse_args()
    if a.child:
        print("RESULT " + json.dumps(child(a.child[0], int(a.child[1]), int(a.child[2]))))
        return
    # Rounds interleave the cases (round 1: every case once, round 2: again, ...) and each case keeps its best
    # round: on a shared machine a burst of load then hits one round of every case, not all rounds of one case.
    best: dict[tuple[int, str], dict] = {}
    for rnd in range(a.rounds):
        for T in a.T:
            for case in a.cases:
                out = subprocess.run([sys.executable, __file__, "--child", case, str(T), str(a.repeat)],
                                     capture_output=True, text=True)
                line = [x for x in out.stdout.splitlines() if x.startswith("RESULT ")]
                if not line:
                    print(f"T={T} {case}: FAILED\n{out.stderr[-1500:]}", file=sys.stderr)
                    best.setdefault((T, case), {"case": case, "T": T, "error": out.stderr[-1500:]})
                    continue
                r = json.loads(line[0][7:])
                r["round"] = rnd
                best[(T, case)] = keep_best(best.get((T, case)), r)
                print(f"round {rnd} T={T:5d} {case:14s} {r['seconds']:7.2f} s wall {r['cpu_seconds']:7.2f} s CPU  "
                      f"peak RSS {r['peak_rss_mib']:7.0f} MiB", flush=True)
    rows = list(best.values())
    ratios = {}
    for T in a.T:
        by = {r["case"]: r for r in rows if r["T"] == T and "error" not in r}
        if "forward_eager" in by:
            base = by["forward_eager"]
            ratios[str(T)] = {
                f"{c}_vs_forward_eager": {"time": round(by[c]["seconds"] / base["seconds"], 3),
                                          "cpu_time": round(by[c]["cpu_seconds"] / base["cpu_seconds"], 3),
                                          "peak_rss": round(by[c]["peak_rss_mib"] / base["peak_rss_mib"], 3)}
                for c in by if c != "forward_eager"
            }
    targets = {
        T: {"trace_time_le_1.3x_eager": r["trace_vs_forward_eager"]["time"] <= 1.3,
            "trace_cpu_time_le_1.3x_eager": r["trace_vs_forward_eager"]["cpu_time"] <= 1.3,
            "trace_rss_le_1.25x_eager": r["trace_vs_forward_eager"]["peak_rss"] <= 1.25}
        for T, r in ratios.items() if "trace_vs_forward_eager" in r
    }
    result = {
        "benchmark": "trace_cost",
        "model": "smollm2-135m",
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version(),
                    "threads": int(os.environ.get("BENCH_THREADS", "2"))},
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "repeat": a.repeat,
        "rounds": a.rounds,
        "load_avg_at_end": os.getloadavg(),
        "rows": rows,
        "ratios": ratios,
        "targets_met": targets,
    }
    write_json(a.out, json.dumps(result, indent=1))
    print(json.dumps({"ratios": ratios, "targets_met": targets}, indent=1))


if __name__ == "__main__":
    main()
