"""Cost of ``sinkwidgets.tags.collect`` vs a plain forward over the same batches, on SmolLM2-135M.

Workload (issue 10): 300 short statements (the shipped cities and sentiment sentences), 10 heads (per-head outputs
and values after W_O, and their attention maps), α of every head, and the residual pooled (mean over t >= 1 and last
token) after all 30 layers; batch size 8.

Cases, each in its own process (peak RSS is the process's ru_maxrss, which includes the loaded model):
  forward_eager  the same left-padded batches through the plain transformers model, eager attention (what the
                 trace needs for probabilities), use_cache=False, logits for the last position only (as the engine)
  forward_sdpa   the same with SDPA attention (the fastest plain forward; for reference)
  collect        sinkwidgets.tags.collect with the workload above

Target: collect time and peak RSS each <= 1.5x forward_eager. Ratios are taken within one run of this script (all
cases back to back, in --rounds interleaved rounds; each case keeps its best round). Time is the minimum over --repeat
runs after one warm-up batch, as wall time and as process CPU time (on a shared machine wall time mostly measures the
neighbours; CPU time is the steadier ratio). Peak RSS is the smallest over rounds.

The JSON result goes outside the git tree ($SINKWIDGETS_BENCH_DIR or <temp dir>/sinkwidgets-benchmarks, see
_out.py) unless --out is given.

usage: python benchmarks/tags_collect.py [--repeat 2] [--rounds 2] [--threads 2] [--out results.json]
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

CASES = ["forward_eager", "forward_sdpa", "collect"]
HEADS = [(1, 1), (2, 2), (3, 6), (5, 6), (8, 4), (9, 3), (11, 3), (15, 7), (19, 8), (28, 8)]
N_TEXTS = 300
BATCH = 8


def statements() -> list[str]:
    from sinkwidgets.tags import load_dataset

    texts = list(load_dataset("cities").texts) + list(load_dataset("sentiment").texts)
    return texts[:N_TEXTS]


def child(case: str, repeat: int, threads: int) -> dict:
    import torch

    import sinkwidgets as sw
    from sinkwidgets import tags
    from sinkwidgets.tracing import tokenize

    torch.set_num_threads(threads)
    t_load = time.perf_counter()
    model = sw.load_model("smollm2-135m")
    t_load = time.perf_counter() - t_load
    texts = statements()
    hf = model._module
    L = model.sinkwidgets.n_layers

    # the engine's batches: left padding, position ids from each prompt's first real token
    encoded = [tokenize(model, t, None)[0] for t in texts]
    batches = []
    pad = model.tokenizer.pad_token_id if model.tokenizer.pad_token_id is not None else 0
    for i in range(0, len(encoded), BATCH):
        chunk = encoded[i:i + BATCH]
        T = max(len(x) for x in chunk)
        ids = torch.full((len(chunk), T), pad, dtype=torch.long)
        mask = torch.zeros((len(chunk), T), dtype=torch.long)
        for b, x in enumerate(chunk):
            ids[b, T - len(x):] = torch.tensor(x)
            mask[b, T - len(x):] = 1
        batches.append((ids, mask, (mask.cumsum(-1) - 1).clamp_min(0)))

    def forward(batch_list):
        with torch.no_grad():
            for ids, mask, pos in batch_list:
                hf(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=False, logits_to_keep=1)

    if case.startswith("forward"):
        hf.set_attn_implementation("eager" if case == "forward_eager" else "sdpa")

        def run():
            forward(batches)

        def warm():
            forward(batches[:1])
    else:
        def run():
            return tags.collect(model, texts, heads=HEADS, layers="all", batch_size=BATCH, progress=False)

        def warm():
            tags.collect(model, texts[:BATCH], heads=HEADS, layers="all", batch_size=BATCH, progress=False)

    warm()
    times, cpu = [], []
    kept_mib = None
    for _ in range(repeat):
        t0, c0 = time.perf_counter(), time.process_time()
        out = run()
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
        if out is not None:
            arrays = [out.head_outputs, out.head_values, out.sink_scores, out.maps, out.pooled_mean, out.pooled_last]
            kept_mib = sum(a.nbytes for a in arrays if a is not None) / 2 ** 20
        del out
    return {"case": case, "n_texts": len(texts), "n_tokens": sum(len(x) for x in encoded), "layers": L,
            "heads": [list(h) for h in HEADS], "seconds": min(times), "all_seconds": times,
            "cpu_seconds": min(cpu), "all_cpu_seconds": cpu, "load_model_seconds": t_load,
            "kept_arrays_mib": kept_mib,
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=2, help="interleaved rounds of all cases; each keeps its best")
    ap.add_argument("--threads", type=int, default=int(os.environ.get("BENCH_THREADS", "2")))
    ap.add_argument("--cases", nargs="+", default=CASES, choices=CASES)
    ap.add_argument("--out", default=default_out("tags_collect.json"),
                    help="JSON path (default outside the git tree; benchmarks/results/tags_collect.json to record)")
    ap.add_argument("--child", nargs=1, metavar="CASE")
    a = ap.parse_args()
    if a.child:
        print("RESULT " + json.dumps(child(a.child[0], a.repeat, a.threads)))
        return
    # Rounds interleave the cases (round 1: every case once, round 2: again, ...) and each case keeps its best
    # round: on a shared machine a burst of load then hits one round of every case, not all rounds of one case.
    best: dict[str, dict] = {}
    for rnd in range(a.rounds):
        for case in a.cases:
            out = subprocess.run([sys.executable, __file__, "--child", case, "--repeat", str(a.repeat),
                                  "--threads", str(a.threads)], capture_output=True, text=True)
            line = [x for x in out.stdout.splitlines() if x.startswith("RESULT ")]
            if not line:
                print(f"round {rnd} {case}: FAILED\n{out.stderr[-2000:]}", file=sys.stderr)
                best.setdefault(case, {"case": case, "error": out.stderr[-2000:]})
                continue
            r = json.loads(line[0][7:])
            r["rounds_seconds"] = [r["seconds"]]
            r = best[case] = keep_best(best.get(case), r)
            print(f"round {rnd} {case:14s} {r['rounds_seconds'][-1]:7.2f} s wall (best {r['seconds']:.2f}) "
                  f"{r['cpu_seconds']:7.2f} s CPU  peak RSS {r['peak_rss_mib']:7.0f} MiB", flush=True)
    rows = list(best.values())
    by = {r["case"]: r for r in rows if "error" not in r}
    ratios = {}
    for base in ("forward_eager", "forward_sdpa"):
        if "collect" in by and base in by:
            b, c = by[base], by["collect"]
            ratios[f"collect_vs_{base}"] = {"time": round(c["seconds"] / b["seconds"], 3),
                                            "cpu_time": round(c["cpu_seconds"] / b["cpu_seconds"], 3),
                                            "peak_rss": round(c["peak_rss_mib"] / b["peak_rss_mib"], 3)}
    r = ratios.get("collect_vs_forward_eager")
    targets = {} if r is None else {"time_le_1.5x": r["time"] <= 1.5, "cpu_time_le_1.5x": r["cpu_time"] <= 1.5,
                                    "peak_rss_le_1.5x": r["peak_rss"] <= 1.5}
    try:
        load = os.getloadavg()
    except OSError:  # pragma: no cover
        load = None
    result = {"benchmark": "tags_collect", "model": "smollm2-135m",
              "workload": {"texts": N_TEXTS, "heads": [list(h) for h in HEADS], "pooled_layers": "all (30)",
                           "batch_size": BATCH},
              "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version(),
                          "threads": a.threads, "load_avg_at_end": load},
              "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "repeat": a.repeat, "rounds": a.rounds,
              "rows": rows,
              "ratios": ratios, "targets_met": targets}
    path = write_json(a.out, json.dumps(result, indent=1))
    print(json.dumps({"ratios": ratios, "targets_met": targets}, indent=1))
    print(f"written: {path}")


if __name__ == "__main__":
    main()
