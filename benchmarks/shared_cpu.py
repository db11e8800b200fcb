"""Shared CPUs (issue 20 item 5): the same work quiet and with one competing busy process, under the package's
thread choice and under torch's defaults.

The work, timed in a fresh process per case after the model is loaded (SmolLM2, offline copy), a smaller
representative piece of ``probe_report(model, "cities")`` (what a new user saw take 399-405 s with a busy neighbour
against 11 s quiet; ``--work probe_report`` runs that call itself):

- ``collect``: ``sw.tags.collect`` on 40 paragraphs, head (2, 2);
- ``probe``: ``sw.tags.probe`` on the first 64 city statements (one seed): a collect with automatic heads and the
  cross-validated probes;
- ``trace``: ``sw.trace(model, text)`` at T = 512 (one forward pass with the in-trace reductions).

Cases (each its own process, so that OpenMP and BLAS start from the environment given):

- ``package``: no thread variable set; ``sinkwidgets.load_model`` applies the package's choice
  (``sinkwidgets/_threads.py``; ``sw.config()`` is recorded);
- ``torch_default``: ``SINKWIDGETS_NUM_THREADS=off`` (the package leaves torch alone): torch's own default, one
  OpenMP thread per CPU with libgomp's spinning wait, and OpenBLAS's default threads;
- ``threads_1``, ``threads_2``, ``threads_1_passive``, ``threads_2_passive``: ``OMP_NUM_THREADS=n``
  (torch and BLAS) with libgomp's default spinning wait or ``OMP_WAIT_POLICY=PASSIVE`` (``--cases`` picks; these
  were the candidates for the package's rule).

Each case runs quiet and right after with one busy process (``python -c 'while True: pass'``, started by this script and
stopped by its PID), ``--rounds`` times interleaved (each keeps its best). A case that runs past ``--timeout`` seconds
is stopped and recorded as a lower bound. The target: with one busy process the package's case stays within 2.5×
the quiet time of the same case. The machine is shared with other jobs, so "quiet" means no busy process of ours:
``os.getloadavg()`` is recorded before and after every run; compare ratios within one run.

Usage::

    python benchmarks/shared_cpu.py                                   # JSON outside the git tree (see _out.py)
    python benchmarks/shared_cpu.py --out benchmarks/results/shared_cpu.json
    python benchmarks/shared_cpu.py --cases package,torch_default --work trace --rounds 1
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from _out import default_out, write_json  # noqa: E402 - benchmarks/ is on sys.path when a script runs

THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT",
               "SINKWIDGETS_NUM_THREADS")
CASES = {
    "package": {},
    "torch_default": {"SINKWIDGETS_NUM_THREADS": "off"},
    "threads_1": {"OMP_NUM_THREADS": "1"},
    "threads_2": {"OMP_NUM_THREADS": "2"},
    "threads_1_passive": {"OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"},
    "threads_2_passive": {"OMP_NUM_THREADS": "2", "OMP_WAIT_POLICY": "PASSIVE"},
}
BUSY = "while True: pass"


PIECES = ("collect", "probe", "trace")


def child(work: str, T: int) -> None:
    """Run the work in this process and print one JSON line per piece (seconds, CPU seconds), the thread facts first."""
    import sinkwidgets as sw
    from sinkwidgets.tags.datasets import load_dataset

    t0 = time.perf_counter()
    model = sw.load_model("smollm2-135m")
    load_s = time.perf_counter() - t0
    import torch

    row = {"load_seconds": round(load_s, 2), "torch_threads": torch.get_num_threads(), "config": dict(sw.config())}
    print(json.dumps({"partial": "setup", **row}), flush=True)
    text = " ".join(sw.tags.paragraphs(40))
    ids = model.tokenizer(text)["input_ids"][: T - 1]
    text_T = model.tokenizer.decode(ids, skip_special_tokens=True)
    ds = load_dataset("cities")
    n = 64
    pieces = {
        "collect": lambda: sw.tags.collect(model, sw.tags.paragraphs(40), heads=[(2, 2)], progress=False),
        "probe": lambda: sw.tags.probe(model, list(ds.texts[:n]), list(ds.labels[:n]), list(ds.groups[:n]), seeds=1,
                                       progress=False),
        "trace": lambda: sw.trace(model, text_T, progress=False),
        "probe_report": lambda: sw.tags.probe_report(model, "cities", progress=False),
    }
    for name in (PIECES if work == "all" else (work,)):
        c0, t0 = time.process_time(), time.perf_counter()
        pieces[name]()
        row[name] = {"seconds": round(time.perf_counter() - t0, 3), "cpu_seconds": round(time.process_time() - c0, 3)}
        print(json.dumps({"partial": name, **row[name]}), flush=True)
    print("RESULT " + json.dumps(row), flush=True)


def run_case(case: str, work: str, T: int, timeout: float) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in THREAD_VARS}
    env.update(CASES[case])
    load0 = os.getloadavg()[0]
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, __file__, "--child", work, "--T", str(T)], env=env, cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        row: dict = {"timed_out_after_s": timeout}
        for line in out.splitlines():  # pieces that finished before the timeout
            if line.startswith("{"):
                part = json.loads(line)
                name = part.pop("partial")
                if name == "setup":
                    row.update(part)
                else:
                    row[name] = part
        row["wall_seconds"] = round(time.perf_counter() - t0, 1)
        row["load_before"], row["load_after"] = round(load0, 2), round(os.getloadavg()[0], 2)
        return row
    lines = [ln for ln in out.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode or not lines:
        return {"error": (err or out)[-2000:]}
    row = json.loads(lines[-1][len("RESULT "):])
    row["wall_seconds"] = round(time.perf_counter() - t0, 1)
    row["load_before"], row["load_after"] = round(load0, 2), round(os.getloadavg()[0], 2)
    return row


def best(rows: list[dict], piece: str) -> tuple[float | None, bool]:
    """(the fastest finished run of ``piece``, whether it is a lower bound). Without a finished run, the run that was
    inside ``piece`` when it timed out gives a lower bound: its wall time less the model load and the pieces before;
    a piece never reached gives None."""
    vals = [r[piece]["seconds"] for r in rows if piece in r]
    if vals:
        return min(vals), False
    bounds = []
    for r in rows:
        if "timed_out_after_s" not in r or "load_seconds" not in r:
            continue
        done = [p for p in PIECES if p in r]
        order = list(PIECES) if piece in PIECES else [piece]
        if piece in order and all(p in done for p in order[: order.index(piece)]):
            bounds.append(r["wall_seconds"] - r["load_seconds"] - sum(r[p]["seconds"] for p in done))
    return (round(max(bounds), 1), True) if bounds else (None, True)


def summarize(runs: dict, pieces: tuple[str, ...]) -> dict:
    """Per case and piece: quiet and busy seconds (best round), ``busy_over_quiet``, and ``busy_cpu_over_quiet``
    (the busy run's CPU seconds over the quiet wall time: the slowdown the case would see with a core of its own,
    i.e. without the machine's other jobs)."""
    summary: dict = {}
    for case, conds in runs.items():
        summary[case] = {}
        for piece in pieces:
            (q, q_lower), (b, lower) = best(conds["quiet"], piece), best(conds["busy"], piece)
            cpu = [r[piece]["cpu_seconds"] for r in conds["busy"] if piece in r]
            summary[case][piece] = {"quiet_s": q, "busy_s": b, "busy_over_quiet": round(b / q, 2) if q and b else None,
                                    "quiet_is_lower_bound": q_lower, "busy_is_lower_bound": lower,
                                    "busy_cpu_over_quiet": round(min(cpu) / q, 2) if q and cpu else None}
    if "package" in summary:
        summary["target"] = "package case: busy_over_quiet <= 2.5 for every piece"
        summary["target_met"] = all((summary["package"][p]["busy_over_quiet"] or 99) <= 2.5
                                    and not summary["package"][p]["busy_is_lower_bound"] for p in pieces)
    return summary


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--child", choices=(*PIECES, "probe_report", "all"))
    ap.add_argument("--work", choices=(*PIECES, "probe_report", "all"), default="all",
                    help="all: collect + probe + trace (the default); probe_report: the issue's full call")
    ap.add_argument("--T", type=int, default=512)
    ap.add_argument("--cases", default="package,torch_default,threads_1")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--timeout", type=float, default=240.0, help="seconds per case run (recorded as a lower bound)")
    ap.add_argument("--out", default=default_out("shared_cpu.json"))
    args = ap.parse_args()
    if args.child:
        child(args.child, args.T)
        return
    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    unknown = [c for c in cases if c not in CASES]
    if unknown:
        ap.error(f"--cases: unknown {unknown}; choose from {sorted(CASES)}")
    runs: dict = {c: {"quiet": [], "busy": []} for c in cases}
    for r in range(args.rounds):
        for case in cases:  # each case's quiet and busy runs back to back, so that both see the same neighbours
            for cond in ("quiet", "busy"):
                busy = subprocess.Popen([sys.executable, "-c", BUSY]) if cond == "busy" else None
                try:
                    row = run_case(case, args.work, args.T, args.timeout)
                finally:
                    if busy is not None:
                        busy.kill()  # our own busy process, by its PID
                        busy.wait()
                row["round"] = r
                runs[case][cond].append(row)
                print(case, cond, json.dumps({k: row.get(k) for k in (*PIECES, "probe_report", "timed_out_after_s",
                                                                    "load_before", "torch_threads", "error")}),
                      flush=True)
    pieces = PIECES if args.work == "all" else (args.work,)
    summary = summarize(runs, pieces)
    import numpy
    import torch

    import sinkwidgets

    record = {
        "benchmark": "shared_cpu",
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(),
                    "affinity": len(os.sched_getaffinity(0)), "python": platform.python_version(),
                    "torch": torch.__version__, "numpy": numpy.__version__, "sinkwidgets": sinkwidgets.__version__},
        "uptime": subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip(),
        "note": ("the machine is shared with other jobs: 'quiet' means no busy process of ours (see load_before); "
                 "compare ratios within this run"),
        "args": {k: v for k, v in vars(args).items() if k not in ("child", "out")},
        "summary": summary,
        "runs": runs,
    }
    path = write_json(args.out, json.dumps(record, indent=1))
    print(json.dumps(summary, indent=1))
    print("wrote", path)


if __name__ == "__main__":
    main()
