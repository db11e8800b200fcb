"""GPU check (never in CI): a ~1B model loaded with ``device_map="auto"`` in bf16, traced eager and chunked.

Records, for each prompt length: wall time, peak CUDA memory (``torch.cuda.max_memory_allocated``) and peak
RSS, for a plain forward pass, the eager trace and the chunked trace; and the largest difference between the
eager and chunked sink summaries. Writes ``benchmarks/results/gpu_check.json``.

The model: ``--model`` (a hub id or local directory; needs the hub or a local copy), else a randomly initialised
1.1B Llama (TinyLlama-1.1B's shape: 22 layers, 32 query / 4 KV heads, d = 2048) built from its config, which
measures time and memory faithfully but has no real sinks. ``--dry-run`` runs a tiny random model on CPU to check
the script itself.

    python benchmarks/gpu_check.py                    # on a CUDA machine
    python benchmarks/gpu_check.py --model Qwen/Qwen3-0.6B --tokens 512 2048 8192
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import tempfile
import time
from pathlib import Path

from _out import default_out  # noqa: E402 - benchmarks/ is on sys.path when a script runs

TINYLLAMA_SHAPE = dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32,
                       num_key_value_heads=4, max_position_embeddings=8192, vocab_size=32000, rope_theta=10000.0)
TINY_SHAPE = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=1024, vocab_size=49152)


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def random_llama(shape: dict, out: Path) -> str:
    """Save a randomly initialised Llama with the SmolLM2 tokenizer (offline) → its directory."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from sinkwidgets.models.fetch import fetch_model

    tok = AutoTokenizer.from_pretrained(fetch_model("smollm2-135m"))
    cfg = LlamaConfig(**{**shape, "vocab_size": len(tok)}, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                      pad_token_id=tok.pad_token_id, tie_word_embeddings=False)
    torch.manual_seed(0)
    with torch.device("cpu"):
        model = LlamaForCausalLM(cfg).to(torch.bfloat16)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return str(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None)
    ap.add_argument("--tokens", type=int, nargs="+", default=[512, 2048, 8192])
    ap.add_argument("--eager-max", type=int, default=4096, help="skip the eager trace above this many tokens")
    ap.add_argument("--dry-run", action="store_true", help="tiny random model on CPU (checks the script)")
    ap.add_argument("--out", default=default_out("gpu_check.json"),
                    help="JSON path (default outside the git tree; benchmarks/results/gpu_check.json to record)")
    args = ap.parse_args()

    import numpy as np
    import torch

    import sinkwidgets as sw

    cuda = torch.cuda.is_available() and not args.dry_run
    if not cuda and not args.dry_run:
        raise SystemExit("gpu_check needs a CUDA device (or --dry-run)")
    tmp = tempfile.TemporaryDirectory()
    t0 = time.perf_counter()
    src = args.model or random_llama(TINY_SHAPE if args.dry_run else TINYLLAMA_SHAPE, Path(tmp.name) / "model")
    build_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    model = sw.load_model(src, device="auto" if cuda else None, dtype="bfloat16" if cuda else "float32")
    load_s = time.perf_counter() - t0
    hf = model._module
    n_params = sum(p.numel() for p in hf.parameters())
    devices = sorted({str(p.device) for p in hf.parameters()})
    text = " ".join(open("/usr/share/common-licenses/GPL-3").read().split())
    while len(model.tokenizer(text)["input_ids"]) < max(args.tokens):
        text += " " + text

    def measure(fn):
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        t = time.perf_counter()
        out = fn()
        if cuda:
            torch.cuda.synchronize()
        return out, {"seconds": round(time.perf_counter() - t, 3),
                     "cuda_peak_mib": round(torch.cuda.max_memory_allocated() / 2**20, 1) if cuda else None,
                     "rss_peak_mib": round(_rss_mib(), 1)}

    rows = []
    for T in args.tokens:
        ids = torch.tensor([model.tokenizer(text, add_special_tokens=False)["input_ids"][:T]])
        dev = next(hf.parameters()).device
        row = {"tokens": T}

        def plain(ids=ids, dev=dev):
            prev = hf.config._attn_implementation
            hf.set_attn_implementation("sdpa")
            try:
                with torch.no_grad():
                    return hf(input_ids=ids.to(dev), use_cache=False, logits_to_keep=1).logits
            finally:
                hf.set_attn_implementation(prev)

        _, row["sdpa_forward"] = measure(plain)
        sw.trace(model, text, max_tokens=min(T, 64), method="chunked")  # warm-up (source instrumentation)
        chunked, row["chunked_trace"] = measure(lambda T=T: sw.trace(model, text, max_tokens=T, method="chunked"))
        if T <= args.eager_max:
            eager, row["eager_trace"] = measure(lambda T=T: sw.trace(model, text, max_tokens=T, method="eager"))
            row["max_abs_diff_alpha"] = float(np.abs(eager.sink_scores - chunked.sink_scores).max())
            row["max_abs_diff_first_token_mass"] = float(np.abs(eager.first_token_mass - chunked.first_token_mass).max())
        row["first_token_mass_mean"] = float(chunked.first_token_mass.mean())
        rows.append(row)
        print(json.dumps(row), flush=True)
    doc = {
        "benchmark": "gpu_check",
        "model": args.model or ("random tiny Llama" if args.dry_run else "random 1.1B Llama (TinyLlama-1.1B shape)"),
        "n_params": n_params,
        "dtype": str(next(hf.parameters()).dtype),
        "devices": devices,
        "device_name": torch.cuda.get_device_name(0) if cuda else "cpu (dry run)",
        "build_seconds": round(build_s, 1),
        "load_seconds": round(load_s, 1),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "results": rows,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"wrote {out}")
    tmp.cleanup()


if __name__ == "__main__":
    main()
