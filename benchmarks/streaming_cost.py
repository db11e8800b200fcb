"""Cost of StreamingLLM perplexity and of the interventions vs one plain forward pass, on SmolLM2-135M.

Target (issue 11): 2048 tokens with W = 256 in <= 3x the time of one dense (SDPA) forward over the same text.
Cases, each timed as the minimum of --repeat runs after a warm-up, wall and process CPU time (on a shared machine CPU
time is the steadier ratio):

  dense          one SDPA forward over the N tokens (per-position NLL)
  sink_exact     streaming_ppl's banded attention, W, k = 4, positions within the cache (StreamingLLM's rule)
  sink_mask      the same at the original positions
  window         window only (k = 0)
  recompute      one re-computation-baseline position (a fresh W-token forward), per position
  mask_sink      one interventions.mask_sink row set (clean + layers 12-29) on a 128-token paragraph, vs its forward

Text: Python's reference documentation (``pydoc_data.topics``), no download. JSON goes to stdout and, with --out,
to that file (e.g. benchmarks/results/streaming_cost.json).

usage: python benchmarks/streaming_cost.py [--N 2048] [--W 256] [--repeat 3] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

from _out import write_json  # noqa: E402 - benchmarks/ is on sys.path when a script runs


def timed(fn, repeat):
    fn()  # warm-up
    walls, cpus = [], []
    for _ in range(repeat):
        w0, c0 = time.perf_counter(), time.process_time()
        fn()
        walls.append(time.perf_counter() - w0)
        cpus.append(time.process_time() - c0)
    return {"wall_s": round(min(walls), 3), "cpu_s": round(min(cpus), 3)}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--N", type=int, default=2048)
    ap.add_argument("--W", type=int, default=256)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--out", default=None, help="also write the JSON here (default: stdout only)")
    a = ap.parse_args(argv)

    import torch

    import sinkwidgets as sw
    from sinkwidgets import interventions as iv
    from sinkwidgets import streaming as st

    model = sw.load_model("smollm2-135m")
    hf = model._module
    ids = st._tokens(model, st.stdlib_docs_text(), None, a.N)
    assert len(ids) == a.N, f"text too short: {len(ids)} tokens"
    res = {}
    res["dense"] = timed(lambda: st._dense(hf, ids), a.repeat)
    res["sink_exact"] = timed(lambda: st._streamed(hf, ids, 4, a.W, True), a.repeat)
    res["sink_mask"] = timed(lambda: st._streamed(hf, ids, 4, a.W, False), a.repeat)
    res["window"] = timed(lambda: st._streamed(hf, ids, 0, a.W, False), a.repeat)
    res["recompute_per_position"] = timed(lambda: st._recompute(hf, ids, a.W, [a.N - 2]), a.repeat)
    para = model.tokenizer.decode(ids[:128])
    res["paragraph_forward"] = timed(lambda: st._dense(hf, ids[:128]), a.repeat)
    res["mask_sink_12_29"] = timed(lambda: iv.mask_sink(model, para, "12-29"), a.repeat)
    for k in ("sink_exact", "sink_mask", "window"):
        res[k]["ratio_wall"] = round(res[k]["wall_s"] / res["dense"]["wall_s"], 3)
        res[k]["ratio_cpu"] = round(res[k]["cpu_s"] / res["dense"]["cpu_s"], 3)
    res["mask_sink_12_29"]["ratio_cpu_vs_paragraph_forward"] = round(
        res["mask_sink_12_29"]["cpu_s"] / res["paragraph_forward"]["cpu_s"], 3)
    out = {"benchmark": "streaming_cost", "N": a.N, "W": a.W, "n_sink": 4, "repeat": a.repeat,
           "target": "sink_exact and sink_mask <= 3x dense", "met": all(res[k]["ratio_cpu"] <= 3 for k in
                                                                       ("sink_exact", "sink_mask")),
           "results": res, "torch_threads": torch.get_num_threads(), "cpus": os.cpu_count(),
           "load_avg": os.getloadavg(), "python": sys.version.split()[0], "platform": platform.platform(),
           "torch": torch.__version__, "time": time.strftime("%Y-%m-%d %H:%M:%S")}
    text = json.dumps(out, indent=2)
    print(text)
    if a.out:
        write_json(a.out, text + "\n")


if __name__ == "__main__":
    main()
