"""Peak memory and time of the chunked trace vs a plain SDPA forward pass at long context (SmolLM2-135M, CPU).

Each case runs in its own subprocess (``python long_context.py --case NAME --tokens T``) and reports its peak
resident memory from ``resource.getrusage(RUSAGE_SELF).ru_maxrss``; the parent collects them and writes JSON
with the ratios. Cases:

- ``sdpa_forward``: the model's own forward pass under SDPA, ``use_cache=False``, full logits (what
  ``model(input_ids)`` does by default);
- ``sdpa_forward_last_logit``: the same with ``logits_to_keep=1``: the leanest plain forward, and the
  baseline the issue's bound is checked against;
- ``chunked_trace``: ``sinkwidgets.trace(model, text, max_tokens=T, method="chunked")`` (SDPA forward, probabilities
  recomputed from q, k in query chunks and reduced inside the nnsight trace);
- ``eager_trace`` (``--eager``): the eager path for reference (materialises every layer's ``[H, T, T]`` map).

All cases load the model the same way (``sinkwidgets.load_model``), so the ratios compare the passes, not the
loading, and under the same allocator setting: by default the one ``trace()`` applies to chunked traces (glibc's mmap
threshold pinned, see ``sinkwidgets.tracing``), with ``--no-mallopt`` glibc's default everywhere. The CPU is shared and
noisy: times are indicative; compare ratios measured in one run.

    python benchmarks/long_context.py                       # T = 2048, 4096, 8192 → benchmarks/results/long_context.json
    python benchmarks/long_context.py --no-mallopt --out benchmarks/results/long_context_no_mallopt.json
    python benchmarks/long_context.py --tokens 512 --eager  # quick look
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
CASES = ("sdpa_forward", "sdpa_forward_last_logit", "chunked_trace")
BOUND = 1.3  # issue: chunked peak RSS <= 1.3 x a plain SDPA forward at the same T


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _text(T: int, tok) -> str:
    base = " ".join(open(TEXT_FILE).read().split()) if os.path.exists(TEXT_FILE) else "The cat sat on the mat. " * 400
    text = base
    while len(tok(text, add_special_tokens=False)["input_ids"]) < T:
        text += " " + base
    return text


def run_case(case: str, T: int, threads: int) -> dict:
    import torch

    torch.set_num_threads(threads)
    import sinkwidgets as sw

    if os.environ.get("SINKWIDGETS_NO_MALLOPT"):
        allocator = "glibc default (dynamic mmap threshold)"
    else:  # the same allocator setting trace() applies, for every case, so the passes are compared fairly
        from sinkwidgets.tracing import MMAP_THRESHOLD_BYTES, _pin_mmap_threshold

        _pin_mmap_threshold()
        allocator = f"mmap threshold pinned at {MMAP_THRESHOLD_BYTES} B (sinkwidgets' default)"
    model = sw.load_model("smollm2-135m", validate=False)
    hf = model._module
    text = _text(T, model.tokenizer)
    ids = torch.tensor([model.tokenizer(text, add_special_tokens=False)["input_ids"][:T]])
    assert ids.shape[1] == T
    after_load = _peak_mib()
    t0 = time.perf_counter()
    extra: dict = {}
    with torch.no_grad():
        if case.startswith("sdpa_forward"):
            hf.set_attn_implementation("sdpa")
            kw = {"logits_to_keep": 1} if case == "sdpa_forward_last_logit" else {}
            out = hf(input_ids=ids, use_cache=False, **kw)
            extra["logits_shape"] = list(out.logits.shape)
        elif case in ("chunked_trace", "eager_trace"):
            tr = sw.trace(model, text, max_tokens=T, add_bos=False, method=case.split("_")[0])
            extra["sink_scores_shape"] = list(tr.sink_scores.shape)
            extra["first_token_mass_mean"] = float(tr.first_token_mass[:, :].mean())
        else:
            raise SystemExit(f"unknown case {case!r}")
    seconds = time.perf_counter() - t0
    return {"case": case, "tokens": T, "allocator": allocator, "seconds": round(seconds, 2), "peak_rss_mib": round(_peak_mib(), 1),
            "peak_rss_after_load_mib": round(after_load, 1), **extra}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, nargs="+", default=[2048, 4096, 8192])
    ap.add_argument("--eager", action="store_true", help="also run the eager trace (slow, O(T^2) memory per layer)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-mallopt", action="store_true",
                    help="leave glibc's allocator alone in every case (SINKWIDGETS_NO_MALLOPT=1)")
    ap.add_argument("--out", default=default_out("long_context.json"),
                    help="JSON path (default outside the git tree; benchmarks/results/long_context.json to record)")
    ap.add_argument("--case", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.case:  # child process: one case, one JSON line
        print("RESULT " + json.dumps(run_case(args.case, args.tokens[0], args.threads)), flush=True)
        return

    cases = CASES + (("eager_trace",) if args.eager else ())
    rows = []
    for T in args.tokens:
        for case in cases:
            cmd = [sys.executable, __file__, "--case", case, "--tokens", str(T), "--threads", str(args.threads)]
            env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
            if args.no_mallopt:
                env["SINKWIDGETS_NO_MALLOPT"] = "1"
            p = subprocess.run(cmd, capture_output=True, text=True, env=env)
            line = [ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")]
            if p.returncode != 0 or not line:
                row = {"case": case, "tokens": T, "error": (p.stderr or p.stdout)[-1500:]}
            else:
                row = json.loads(line[-1][7:])
            rows.append(row)
            print(json.dumps(row), flush=True)
    summary = {}
    for T in args.tokens:
        by = {r["case"]: r for r in rows if r["tokens"] == T and "error" not in r}
        s = {}
        for base in ("sdpa_forward", "sdpa_forward_last_logit"):
            for c in ("chunked_trace", "eager_trace"):
                if base in by and c in by:
                    s[f"{c}_rss_over_{base}"] = round(by[c]["peak_rss_mib"] / by[base]["peak_rss_mib"], 3)
                    s[f"{c}_time_over_{base}"] = round(by[c]["seconds"] / by[base]["seconds"], 2)
        if "chunked_trace_rss_over_sdpa_forward_last_logit" in s:
            s["within_bound"] = s["chunked_trace_rss_over_sdpa_forward_last_logit"] <= BOUND
        summary[str(T)] = s
    import torch

    doc = {
        "benchmark": "long_context",
        "model": "smollm2-135m (SmolLM2-135M-Instruct, float32, CPU)",
        "bound": f"chunked_trace peak RSS <= {BOUND} x plain SDPA forward (logits_to_keep=1) at the same T",
        "machine": {"platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
                    "cpus": os.cpu_count(), "threads": args.threads, "note": "shared CPU: times are noisy"},
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "allocator": "glibc default" if args.no_mallopt else "mmap threshold pinned (sinkwidgets default), all cases",
        "results": rows,
        "summary": summary,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(doc, indent=2) + "\n")
    print(json.dumps(summary, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
