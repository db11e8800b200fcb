"""Where benchmark results go by default: outside the git tree, so a run never dirties tracked files.

``$SINKWIDGETS_BENCH_DIR`` if set, else ``<temp dir>/sinkwidgets-benchmarks``. Pass ``--out
benchmarks/results/NAME.json`` to update the recorded results on purpose.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def default_out(name: str) -> str:
    base = os.environ.get("SINKWIDGETS_BENCH_DIR") or os.path.join(tempfile.gettempdir(), "sinkwidgets-benchmarks")
    return str(Path(base) / name)


def write_json(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` atomically (a unique temporary file in the same folder, then a rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def keep_best(prev: dict | None, new: dict) -> dict:
    """Merge one round's result row ``new`` into the best row so far ``prev`` (rounds interleave the cases; each case
    keeps its best round). ``None`` or an ``"error"`` row is replaced by ``new``; otherwise the row of the faster
    round (``"seconds"``) is kept, with the minimum ``cpu_seconds`` and ``peak_rss_mib`` over the rounds and every
    round's wall time in ``rounds_seconds``."""
    if prev is None or "error" in prev:
        return new
    keep = new if new["seconds"] < prev["seconds"] else prev
    return {**keep, "cpu_seconds": min(new["cpu_seconds"], prev["cpu_seconds"]),
            "peak_rss_mib": min(new["peak_rss_mib"], prev["peak_rss_mib"]),
            "rounds_seconds": prev.get("rounds_seconds", [prev["seconds"]]) + [new["seconds"]]}
