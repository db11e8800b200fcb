"""The toy averaging problem on this CPU: the seed-0 headline run, 10-seed success rates (default vs pre-LN),
and the sink-placement study (softmax₁, learnable sink token, key bias, KV bias, sigmoid output gates, sigmoid
attention).

Success = final held-out loss < 1e-2 (predicting 0 gives ≈ 0.33). "ctr" = solved and catch ≥ 0.5,
release mass ≥ 0.9, tag EV ≥ 0.5 (the catch-tag-release mechanism is visible in the metrics).

Parts can run in separate processes and are merged into one JSON file (existing keys of other parts are kept):

    python benchmarks/toy_sweep.py --part headline sweep      # seed 0 + seed sweeps
    python benchmarks/toy_sweep.py --part placement            # sink-placement study

usage: python benchmarks/toy_sweep.py [--part headline sweep placement] [--seeds 10] [--steps 600 2000]
       [--placement-seeds 5] [--placement-steps 1000] [--threads 1] [--out benchmarks/results/toy_sweep.json]
"""

from __future__ import annotations

import argparse
import datetime
import fcntl
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch
from _out import default_out  # noqa: E402 - benchmarks/ is on sys.path when a script runs

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sinkwidgets.toy import ToyConfig, placement_table, seed_sweep, sink_placement_study, train  # noqa: E402
from sinkwidgets.toy.study import summarize_runs, summarize_sweep  # noqa: E402


def merge_write(path: Path, update: dict) -> dict:
    """Merge ``update`` into the JSON at ``path`` under a file lock (parts may finish concurrently)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(str(path) + ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        data = json.loads(path.read_text()) if path.exists() else {}
        for k, v in update.items():  # one level deep, so parts writing "sweeps" entries do not clobber each other
            if isinstance(v, dict) and isinstance(data.get(k), dict) and k != "env":
                data[k].update(v)
            else:
                data[k] = v
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=1, sort_keys=False) + "\n")
        os.replace(tmp, path)
    return data


def env_info(threads: int) -> dict:
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu_count": os.cpu_count(),
        "torch_threads": threads,
        "machine": platform.machine(),
        "load_avg_at_start": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "note": "2-core CPU shared with other jobs: wall times are noisy upper bounds",
        "defaults": ToyConfig().to_dict(),
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--part", nargs="+", default=["headline", "sweep", "placement"],
                    choices=["headline", "sweep", "placement"])
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--steps", type=int, nargs="+", default=[600, 2000])
    ap.add_argument("--placement-seeds", type=int, default=5)
    ap.add_argument("--placement-steps", type=int, default=1000)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=default_out("toy_sweep.json"),
                    help="JSON path (default outside the git tree; benchmarks/results/toy_sweep.json to record)")
    ap.add_argument("--resummarize", action="store_true",
                    help="recompute the placement summaries and tables from the runs stored in --out (no training)")
    args = ap.parse_args(argv)
    if args.resummarize:
        data = json.loads(Path(args.out).read_text())
        for sw in data.get("sweeps", {}).values():
            sw.update(summarize_sweep(sw["runs"]))
            print(f"{json.dumps(sw['options'])} {sw['steps']} steps: solved {sw['n_solved']}/{sw['n_runs']}, "
                  f"ctr {sw['n_ctr']}, targets {sw['n_meets_targets']}")
        merge_write(Path(args.out), {"sweeps": data.get("sweeps", {})})
        pl = data["placement"]
        for entry in pl["variants"].values():
            entry["summary"] = summarize_runs(entry["runs"])
        pl["table_markdown"] = placement_table(pl["variants"])
        pl["table_markdown_solved_only"] = placement_table(pl["variants"], solved_only=True)
        merge_write(Path(args.out), {"placement": pl, "resummarized": {
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "note": "summaries, counts and tables recomputed from the stored per-run records (no retraining)"}})
        print(pl["table_markdown"], "\n\nsolved runs only:\n" + pl["table_markdown_solved_only"], sep="")
        return 0
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    merge_write(out, {"env": env_info(args.threads),
                      "criterion": "solved = final held-out loss < 0.01 (512 held-out sequences, eval_seed 1234)",
                      "ctr_criterion": "solved and catch >= 0.5 and release_mass >= 0.9 and tag_ev >= 0.5"})

    if "headline" in args.part:
        r = train(seed=0, steps=600, progress=False, num_threads=args.threads)
        f = r[-1]
        targets = {"loss": ("<", 1e-3), "catch": (">=", 0.8), "release_mass": (">=", 0.95), "tag_ev": (">=", 0.7)}
        ok = {k: (f[k] < v if op == "<" else f[k] >= v) for k, (op, v) in targets.items()}
        ok["wall_time_s<60"] = r.wall_time < 60
        headline = {"seed": 0, "steps": 600, "final": f, "wall_time_s": round(r.wall_time, 2),
                    "targets_met": ok, "all_met": all(ok.values()), "history": list(r)}
        merge_write(out, {"seed0_default": headline})
        print("seed 0 defaults:", {k: round(v, 4) if isinstance(v, float) else v for k, v in f.items()},
              f"wall {r.wall_time:.1f}s", "targets met" if headline["all_met"] else f"MISSED {ok}", flush=True)

    if "sweep" in args.part:
        sweeps = {}
        for steps in args.steps:
            for name, opts in (("default", {}), ("pre_ln", {"ln": True})):
                t0 = time.perf_counter()
                sw = seed_sweep(seeds=range(args.seeds), steps=steps, progress=False, **opts)
                sw["total_time_s"] = round(time.perf_counter() - t0, 1)
                sweeps[f"{name}_{steps}"] = sw
                merge_write(out, {"sweeps": sweeps})
                print(f"{name:8s} {steps:5d} steps: solved {sw['n_solved']}/{sw['n_runs']}, "
                      f"ctr {sw['n_ctr']}/{sw['n_runs']}, targets {sw['n_meets_targets']}/{sw['n_runs']}, "
                      f"median wall {sw['median_wall_time_s']:.1f}s", flush=True)

    if "placement" in args.part:
        t0 = time.perf_counter()
        st = sink_placement_study(seeds=range(args.placement_seeds), steps=args.placement_steps, progress=False)
        table = placement_table(st)
        table_solved = placement_table(st, solved_only=True)
        merge_write(out, {"placement": {"seeds": list(range(args.placement_seeds)), "steps": args.placement_steps,
                                        "total_time_s": round(time.perf_counter() - t0, 1), "variants": st,
                                        "table_markdown": table, "table_markdown_solved_only": table_solved}})
        print(table, "\n\nsolved runs only:\n" + table_solved, sep="", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
