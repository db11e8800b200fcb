"""The ``sinkwidgets`` command line: fetch offline models, scan a prompt for sinks, write an offline HTML view.

Examples::

    sinkwidgets models list
    sinkwidgets models fetch smollm2-135m
    sinkwidgets scan "The cat sat on the mat. Then it slept." --model smollm2-135m
    sinkwidgets scan "..." --json
    sinkwidgets scan "..." --html sinks.html
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time


def _scan_summary(tr, eps: float, n_sinks: int) -> dict:
    from . import metrics as M

    layers = []
    for l in range(tr.n_layers):
        sinks = [s for s in M.find_sinks(tr.sink_scores[l : l + 1], eps=eps, causal=tr.causal)]
        top = []
        for s in sinks[:n_sinks]:
            top.append({"head": s.head, "k": s.k, "token": tr.tokens[s.k], "alpha": round(s.alpha, 4)})
        layers.append(
            {
                "layer": l,
                "first_token_mass": round(float(tr.first_token_mass[l].mean()), 4),
                "first_token_mass_max": round(float(tr.first_token_mass[l].max()), 4),
                "sink_ratio_k0": round(M.sink_ratio(tr.sink_scores[l : l + 1], k=0, eps=eps), 4),
                "entropy": round(float(tr.entropy[l].mean()), 4),
                "top_sinks": top,
            }
        )
    spk = M.sinks_per_head(tr, eps=eps)
    return {
        "model": tr.meta.get("model"),
        "n_tokens": tr.n_tokens,
        "add_bos": tr.meta.get("add_bos"),
        "truncated": tr.meta.get("truncated", False),
        "eps": eps,
        "first_token": tr.tokens[0],
        "first_token_mass": round(float(tr.first_token_mass.mean()), 4),
        "sink_ratio_k0": round(M.sink_ratio(tr, k=0, eps=eps), 4),
        "sinks_per_head_all": round(spk.mean_all, 4),
        "sinks_per_head_sink_heads": None if spk.mean_sink_heads != spk.mean_sink_heads else round(spk.mean_sink_heads, 4),
        "massive_activations": [
            {"layer": m.layer, "token": m.token, "token_str": m.token_str, "channel": m.channel, "value": round(m.value, 1)}
            for m in M.massive_activations(tr)[:5]
        ],
        "layers": layers,
    }


def _print_table(summary: dict, out) -> None:
    w = out.write
    w(f"model {summary['model']}  ·  {summary['n_tokens']} tokens  ·  add_bos={summary['add_bos']}  ·  "
      f"token 0 = {summary['first_token']!r}{'  ·  TRUNCATED' if summary['truncated'] else ''}\n")
    w(f"first-token mass {summary['first_token_mass']:.2f}  ·  Sink_0^{summary['eps']} = {summary['sink_ratio_k0']:.2f}  ·  "
      f"sinks/head {summary['sinks_per_head_all']:.2f} (all heads), {summary['sinks_per_head_sink_heads']} (sink heads)\n\n")
    w(f"{'layer':>5}  {'1st-mass':>8}  {'max':>5}  {'sink%':>5}  {'entropy':>7}  strongest sinks (head:token α)\n")
    for row in summary["layers"]:
        tops = "  ".join(f"h{t['head']}:{t['token']!r}@{t['k']} {t['alpha']:.2f}" for t in row["top_sinks"])
        w(f"{row['layer']:>5}  {row['first_token_mass']:>8.2f}  {row['first_token_mass_max']:>5.2f}  "
          f"{100 * row['sink_ratio_k0']:>4.0f}%  {row['entropy']:>7.2f}  {tops}\n")
    if summary["massive_activations"]:
        m = summary["massive_activations"][0]
        w(f"\nmassive activations (Sun et al.): e.g. layer {m['layer']}, token {m['token']} {m['token_str']!r}, "
          f"channel {m['channel']}: {m['value']:.0f}\n")


#: Prompts up to this many tokens keep every attention map for ``scan --html``.
HTML_MAPS_MAX_TOKENS = 256


def cmd_scan(args) -> int:
    from .models import load_model
    from .tracing import trace

    text = args.text
    if text == "-":
        text = sys.stdin.read()
    if args.file:
        with open(args.file, encoding="utf-8") as fh:
            text = fh.read()
    t0 = time.perf_counter()
    model = load_model(args.model)
    t1 = time.perf_counter()
    add_bos = {"auto": None, "yes": True, "no": False}[args.add_bos]
    keep = None
    if args.html:
        from .tracing import tokenize

        # the offline page shows full maps where they are small enough to inline (30 x 9 x 256^2 float16 = 35 MB
        # before the page's own budget trims it); longer prompts get the alpha summaries only
        keep = "all" if len(tokenize(model, text, add_bos)[0]) <= HTML_MAPS_MAX_TOKENS else None
    tr = trace(model, text, add_bos=add_bos, max_tokens=args.max_tokens, keep_maps=keep)
    t2 = time.perf_counter()
    summary = _scan_summary(tr, args.eps, args.top)
    summary["seconds"] = {"load": round(t1 - t0, 2), "trace": round(t2 - t1, 2)}
    if args.save:
        tr.save(args.save)
    if args.html:
        from .widgets import save_html

        save_html(tr, args.html)
    if args.json:
        json.dump(summary, sys.stdout, indent=1)
        sys.stdout.write("\n")
    else:
        _print_table(summary, sys.stdout)
        sys.stdout.write(f"\nload {t1 - t0:.1f} s, trace {t2 - t1:.1f} s")
        if args.save:
            sys.stdout.write(f"; trace saved to {args.save}")
        if args.html:
            sys.stdout.write(f"; HTML view written to {args.html}")
        sys.stdout.write("\n")
    return 0


def cmd_models(args) -> int:
    from .models import fetch_model, list_models

    if args.action == "list":
        rows = list_models()
        if args.json:
            json.dump(rows, sys.stdout, indent=1)
            sys.stdout.write("\n")
        else:
            for r in rows:
                state = "cached" if r["cached"] else f"not fetched (~{r['download_mb']} MB)"
                sys.stdout.write(f"{r['name']:<14} {state:<24} {r['hub_id']}\n    {r['description']}\n")
        return 0
    names = args.names or []
    if args.all:
        from .models import REGISTRY

        names = list(REGISTRY)
    if not names:
        sys.stderr.write("sinkwidgets models fetch: name a model (see `sinkwidgets models list`) or pass --all\n")
        return 2
    for name in names:
        path = fetch_model(name, force=args.force)
        sys.stdout.write(f"{name}: {path}\n")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sinkwidgets", description="Find and show attention sinks in language models.")
    from . import __version__

    p.add_argument("--version", action="version", version=f"sinkwidgets {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("scan", help="trace a prompt and print a per-layer sink table")
    s.add_argument("text", nargs="?", default=None, help="the prompt ('-' reads standard input)")
    s.add_argument("--file", help="read the prompt from a text file")
    s.add_argument("--model", default="smollm2-135m", help="short name, hub id or local directory (default: smollm2-135m)")
    s.add_argument("--add-bos", choices=["auto", "yes", "no"], default="auto",
                   help="whether token 0 is a BOS token (auto: the model's documented default)")
    s.add_argument("--max-tokens", type=int, default=None, help="truncate longer prompts (recorded in the trace)")
    s.add_argument("--eps", type=float, default=0.3, help="sink threshold on α (default 0.3, Gu et al.; Zhang et al. use 0.2)")
    s.add_argument("--top", type=int, default=3, help="strongest sinks to show per layer")
    s.add_argument("--json", action="store_true", help="print JSON instead of a table")
    s.add_argument("--save", help="save the SinkTrace to this .npz file")
    s.add_argument("--html", help="write a self-contained offline HTML view of the sinks")
    s.set_defaults(func=cmd_scan)

    m = sub.add_parser("models", help="list or fetch the offline models")
    m.add_argument("action", choices=["list", "fetch"])
    m.add_argument("names", nargs="*", help="model short names to fetch")
    m.add_argument("--all", action="store_true", help="fetch every registry model")
    m.add_argument("--force", action="store_true", help="download and convert again")
    m.add_argument("--json", action="store_true")
    m.set_defaults(func=cmd_models)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "scan" and args.text is None and not args.file:
        parser.error("scan needs a prompt: sinkwidgets scan 'The cat sat on the mat.' (or --file F, or '-' for stdin)")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        return args.func(args)
    except KeyboardInterrupt:
        return 130
    except (ValueError, TypeError, KeyError, FileNotFoundError, ConnectionError, RuntimeError) as exc:
        if os.environ.get("SINKWIDGETS_DEBUG"):
            raise
        sys.stderr.write(f"sinkwidgets: error: {exc}\n")
        return 1


if __name__ == "__main__":
    sys.exit(main())
