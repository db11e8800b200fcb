"""How many CPU threads torch and BLAS use: chosen from the CPUs this process may really use, applied once.

On Binder, Colab, containers and shared lab machines the cores torch sees (``os.cpu_count()``) are not the cores the
process gets. torch starts one OpenMP thread per CPU, and a forward pass is thousands of small parallel regions. When
another process keeps one of the cores busy, every region waits for the thread that lost its core (whether the
others spin or sleep meanwhile: ``OMP_WAIT_POLICY=PASSIVE`` did not help, ``docs/threads.md``): a user's ``probe_report(model, "cities")`` took 399-405 s with a
busy neighbour against 13 s with ``OMP_NUM_THREADS=1`` under the same load and 11 s quiet (issue 20 item 5).

The choice (:func:`choose_threads`), in order:

1. ``SINKWIDGETS_NUM_THREADS`` (this package's override): a positive integer sets torch's and BLAS's threads;
   ``off`` leaves both at their own defaults. Anything else raises a :class:`SinkwidgetsValueError`.
2. ``OMP_NUM_THREADS`` set by the user: torch and OpenBLAS read it themselves; the package changes nothing.
3. torch already imported with a thread count other than its default (``torch.set_num_threads`` called by the
   user): the package changes nothing.
4. otherwise the usable CPUs (:func:`usable_cpus`): the fewest of the CPU affinity mask, the cgroup CPU quota
   (v2 ``cpu.max``, v1 ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``, rounded down, at least 1) and
   ``os.cpu_count()``; lowered to the CPUs left free by other processes when the first model loads (the fewer of
   the CPUs idle in ``/proc/stat`` over 0.25 s and those the 1-minute load average leaves free; rounded to the
   nearest, at least 1), since threads beyond the free cores wait on each other (:func:`auto_threads`).

``benchmarks/shared_cpu.py`` measures the choice against torch's defaults, quiet and with one busy process
(``docs/threads.md``). The choice is made once: a neighbour that starts later is not seen.

:func:`apply_threads` runs once, on the first ``load_model`` (``models/loading.py``); :func:`config` reports what was
chosen and why (``sw.config()``; ``sinkwidgets models list`` prints :func:`thread_line`). This module imports nothing
from the package but the errors, and torch/threadpoolctl only inside functions.
"""

from __future__ import annotations

import math
import os
import sys
import threading
from collections.abc import Mapping
from pathlib import Path

from ..errors import SinkwidgetsValueError

ENV_VAR = "SINKWIDGETS_NUM_THREADS"
CGROUP_ROOT = "/sys/fs/cgroup"
PROC_CGROUP = "/proc/self/cgroup"
#: set by apply_threads(): the dict config() reports (None until the first model is loaded)
_APPLIED: dict | None = None
_LOCK = threading.Lock()


def affinity_cpus() -> int | None:
    """The number of CPUs in this process's affinity mask (``os.sched_getaffinity(0)``); None where the platform has
    no affinity call (macOS, Windows)."""
    get = getattr(os, "sched_getaffinity", None)
    if get is None:
        return None
    try:
        return len(get(0)) or None
    except OSError:
        return None


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except (OSError, UnicodeDecodeError):
        return None


def parse_cpu_max(text: str | None) -> float | None:
    """CPUs allowed by a cgroup v2 ``cpu.max`` line: ``"quota period"`` → quota / period; ``"max ..."`` (no limit),
    an empty or unreadable file → None. E.g. ``"150000 100000"`` → 1.5."""
    if not text:
        return None
    parts = text.split()
    if not parts or parts[0] == "max":
        return None
    try:
        quota = int(parts[0])
        period = int(parts[1]) if len(parts) > 1 else 100000
    except ValueError:
        return None
    return quota / period if quota > 0 and period > 0 else None


def parse_cfs(quota: str | None, period: str | None) -> float | None:
    """CPUs allowed by cgroup v1 ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``: quota / period; a quota of -1 (no
    limit), a missing or unreadable file → None."""
    try:
        q, p = int(quota or ""), int(period or "")
    except ValueError:
        return None
    return q / p if q > 0 and p > 0 else None


def _own_cgroups(proc_cgroup: str | os.PathLike) -> tuple[str | None, str | None]:
    """(v2 path, v1 cpu-controller path) of this process, from ``/proc/self/cgroup`` lines ``id:controllers:path``."""
    v2 = v1 = None
    for line in (_read(Path(proc_cgroup)) or "").splitlines():
        hid, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if hid == "0" and controllers == "":
            v2 = path
        elif "cpu" in controllers.split(","):
            v1 = path
    return v2, v1


def cgroup_cpus(root: str | os.PathLike = CGROUP_ROOT, proc_cgroup: str | os.PathLike = PROC_CGROUP
                ) -> tuple[float | None, str | None]:
    """The CPU quota of this process's cgroup, as a number of CPUs, and the file it came from; (None, None) without
    a limit.

    cgroup v2: ``<root>/<own path>/cpu.max`` and every parent up to ``<root>/cpu.max`` (the smallest applies).
    cgroup v1: ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us`` under ``<root>/cpu``, ``<root>/cpu,cpuacct`` or
    ``<root>/cpuacct,cpu``, at the process's own path and at the hierarchy's root. ``root`` and ``proc_cgroup`` are
    parameters so that tests can point them at a temporary folder."""
    root = Path(root)
    v2_path, v1_path = _own_cgroups(proc_cgroup)
    found: list[tuple[float, str]] = []

    def chain(base: Path, own: str | None) -> list[Path]:
        dirs = [base]
        if own and own.strip("/"):
            parts = own.strip("/").split("/")
            dirs += [base.joinpath(*parts[:i]) for i in range(1, len(parts) + 1)]
        return dirs

    for d in chain(root, v2_path):
        cpus = parse_cpu_max(_read(d / "cpu.max"))
        if cpus is not None:
            found.append((cpus, str(d / "cpu.max")))
    for name in ("cpu", "cpu,cpuacct", "cpuacct,cpu"):
        base = root / name
        if not base.is_dir():
            continue
        for d in chain(base, v1_path):
            cpus = parse_cfs(_read(d / "cpu.cfs_quota_us"), _read(d / "cpu.cfs_period_us"))
            if cpus is not None:
                found.append((cpus, str(d / "cpu.cfs_quota_us")))
        break
    if not found:
        return None, None
    return min(found)


def cpu_limits(root: str | os.PathLike = CGROUP_ROOT, proc_cgroup: str | os.PathLike = PROC_CGROUP) -> dict:
    """Every bound on the CPUs this process may use: ``affinity`` (CPUs in the mask), ``cgroup_quota`` (CPUs, may be
    fractional) and ``cgroup_file``, ``cpu_count`` (``os.cpu_count()``); None where there is no such bound."""
    quota, source = cgroup_cpus(root, proc_cgroup)
    return {"affinity": affinity_cpus(), "cgroup_quota": quota, "cgroup_file": source, "cpu_count": os.cpu_count()}


def usable_cpus(root: str | os.PathLike = CGROUP_ROOT, proc_cgroup: str | os.PathLike = PROC_CGROUP) -> tuple[int, str]:
    """(CPUs this process may really use, which bound set it): the fewest of the affinity mask, the cgroup quota
    (rounded down: a quota of 1.5 CPUs gives 1 thread, since a cgroup that overruns its quota is stopped for the rest
    of the period) and ``os.cpu_count()``; at least 1. The reason is ``"affinity"``, ``"cgroup"`` or ``"cpu_count"``."""
    lim = cpu_limits(root, proc_cgroup)
    bounds = []
    if lim["cgroup_quota"] is not None:
        bounds.append((max(1, math.floor(lim["cgroup_quota"])), f"cgroup quota {lim['cgroup_quota']:g} CPUs "
                                                                f"({lim['cgroup_file']})"))
    if lim["affinity"] is not None:
        bounds.append((lim["affinity"], f"affinity mask of {lim['affinity']} CPUs"))
    bounds.append((lim["cpu_count"] or 1, f"os.cpu_count() = {lim['cpu_count']}"))
    n, why = min(bounds, key=lambda b: b[0])  # the first listed wins a tie: the most specific bound
    return max(1, int(n)), why


def parse_override(value: str | None) -> int | str | None:
    """``SINKWIDGETS_NUM_THREADS``: unset or empty → None; ``"off"`` → ``"off"``; a positive integer → that int.
    Anything else raises :class:`SinkwidgetsValueError` naming the variable, the value and the fix."""
    if value is None or not value.strip():
        return None
    v = value.strip()
    if v.lower() == "off":
        return "off"
    try:
        n = int(v)
    except ValueError:
        n = 0
    if n < 1:
        raise SinkwidgetsValueError(
            f"{ENV_VAR}={value!r}: it must be a positive whole number of threads (e.g. {ENV_VAR}=2) or 'off' to leave "
            f"torch's and BLAS's own defaults; unset it to let sinkwidgets choose from the CPUs this process may use")
    return n


def idle_cpus(before: str, after: str, cpus: set[int] | None = None) -> float | None:
    """CPUs that stood idle between two readings of ``/proc/stat``: the sum over the per-CPU lines (``cpuN user nice
    system idle iowait irq softirq steal ...``, only N in ``cpus`` when given) of Δ(idle + iowait) / Δ(total).
    None when no CPU line matches or no time passed. E.g. two CPUs, one kept busy by another process → about 1.0."""
    def table(text: str) -> dict[int, tuple[int, int]]:
        rows = {}
        for line in text.splitlines():
            name, *fields = line.split()
            if not (name.startswith("cpu") and name[3:].isdigit()) or len(fields) < 4:
                continue
            try:
                vals = [int(x) for x in fields[:8]]
            except ValueError:
                continue
            rows[int(name[3:])] = (vals[3] + (vals[4] if len(vals) > 4 else 0), sum(vals))
        return rows

    t0, t1 = table(before), table(after)
    free, seen = 0.0, False
    for cpu, (idle1, total1) in t1.items():
        if cpu not in t0 or (cpus is not None and cpu not in cpus):
            continue
        d_total = total1 - t0[cpu][1]
        if d_total <= 0:
            continue
        seen = True
        free += min(1.0, max(0.0, (idle1 - t0[cpu][0]) / d_total))
    return free if seen else None


def measure_idle_cpus(interval: float = 0.25, proc_stat: str | os.PathLike = "/proc/stat") -> float | None:
    """Idle CPUs of this process's affinity mask over the next ``interval`` seconds (:func:`idle_cpus` on two readings
    of ``/proc/stat``); None where there is no ``/proc/stat`` (macOS, Windows)."""
    import time

    before = _read(Path(proc_stat))
    if before is None:
        return None
    time.sleep(interval)
    after = _read(Path(proc_stat)) or ""
    get = getattr(os, "sched_getaffinity", None)
    return idle_cpus(before, after, set(get(0)) if get is not None else None)


def loadavg_free_cpus(loadavg: float | None, cpus: int | None, cpu_count: int | None) -> float | None:
    """CPUs of this process's affinity mask left free by the 1-minute load average: ``cpus × (1 − min(1, loadavg /
    cpu_count))`` (the machine's load spread evenly over its CPUs). A shared machine's load of the last minute predicts
    the next minutes better than a 0.25-s look at ``/proc/stat``. None when a number is missing."""
    if loadavg is None or not cpus or not cpu_count:
        return None
    return cpus * (1.0 - min(1.0, max(0.0, loadavg) / cpu_count))


def measure_free_cpus(interval: float = 0.25, proc_stat: str | os.PathLike = "/proc/stat") -> tuple[float | None, dict]:
    """(free CPUs, what was read): the smaller of the CPUs idle now (:func:`measure_idle_cpus`) and the CPUs the
    1-minute load average leaves free (:func:`loadavg_free_cpus`); None where neither can be read."""
    idle = measure_idle_cpus(interval, proc_stat)
    try:
        load1 = os.getloadavg()[0]
    except (OSError, AttributeError):
        load1 = None
    by_load = loadavg_free_cpus(load1, affinity_cpus() or os.cpu_count(), os.cpu_count())
    known = [v for v in (idle, by_load) if v is not None]
    facts = {"idle_now": None if idle is None else round(idle, 2), "loadavg_1min": load1,
             "free_by_loadavg": None if by_load is None else round(by_load, 2)}
    return (min(known) if known else None), facts


def auto_threads(usable: int, idle: float | None) -> int:
    """The automatic thread count: the usable CPUs, lowered to the idle ones rounded to the nearest (at least 1).

    Why: with more threads than free cores every OpenMP parallel region waits for a thread that has lost its core,
    and a forward pass is thousands of such regions. On the project's 2-core machine, loaded by other jobs,
    ``probe_report(model, "cities")`` ran 62 s with one thread and did not finish in 200 s with two (spinning or
    passive wait alike; ``benchmarks/shared_cpu.py``). Two threads chosen from a quiet 0.25-s look took 123 s (80 s
    of CPU) when the other jobs' load came back, one thread next to a busy process 64 s: hence the 1-minute load
    average too (:func:`measure_free_cpus`). A quiet machine keeps every usable CPU."""
    if idle is None:
        return usable
    return max(1, min(usable, math.floor(idle + 0.5)))


def choose_threads(environ: Mapping[str, str] | None = None, root: str | os.PathLike = CGROUP_ROOT,
                   proc_cgroup: str | os.PathLike = PROC_CGROUP, torch_threads: int | None = None,
                   measure_load: bool = False, idle: float | None = None) -> dict:
    """What the package will do, without doing it: a dict with ``threads`` (int, or None when the package leaves the
    threads alone), ``source`` (``"SINKWIDGETS_NUM_THREADS"``, ``"OMP_NUM_THREADS"``, ``"torch.set_num_threads"``,
    ``"off"`` or ``"auto"``), ``why`` (a sentence), ``usable_cpus``, ``idle_cpus`` (the free CPUs used) and ``load``
    (what was read). ``torch_threads`` is torch's current count when torch is already imported (None otherwise). For
    ``"auto"``, ``idle`` (free CPUs) lowers the count (:func:`auto_threads`); ``measure_load=True`` measures it
    (:func:`measure_free_cpus`, 0.25 s)."""
    env = os.environ if environ is None else environ
    usable, bound = usable_cpus(root, proc_cgroup)
    out = {"usable_cpus": usable, "usable_why": bound, "idle_cpus": None}
    override = parse_override(env.get(ENV_VAR))
    if override == "off":
        return {**out, "threads": None, "source": "off", "why": f"{ENV_VAR}=off: torch and BLAS keep their defaults"}
    if override is not None:
        return {**out, "threads": override, "source": ENV_VAR, "why": f"{ENV_VAR}={override}"}
    omp = env.get("OMP_NUM_THREADS")
    if omp and omp.strip():
        return {**out, "threads": None, "source": "OMP_NUM_THREADS",
                "why": f"OMP_NUM_THREADS={omp.strip()} set by the user (torch and BLAS read it themselves)"}
    if torch_threads is not None and torch_threads != _torch_default():
        return {**out, "threads": None, "source": "torch.set_num_threads",
                "why": f"torch.set_num_threads({torch_threads}) was called before the first model was loaded"}
    facts: dict = {}
    if idle is None and measure_load:
        idle, facts = measure_free_cpus()
    n = auto_threads(usable, idle)
    why = bound if n == usable else f"{bound}, of which {idle:.1f} free (other processes use the rest)"
    return {**out, "threads": n, "source": "auto", "why": why, "idle_cpus": None if idle is None else round(idle, 2),
            "load": facts}


def _torch_default() -> int:
    """The thread count torch starts with when nothing is set: libgomp's default, the CPUs in the affinity mask."""
    return affinity_cpus() or os.cpu_count() or 1


def _blas_threads() -> list[dict]:
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return []
    return [{"library": i.get("internal_api"), "threads": i.get("num_threads"), "threading": i.get("threading_layer")}
            for i in threadpool_info()]


def apply_threads() -> dict:
    """Apply :func:`choose_threads` (with the load measured) once (later calls return the first result): import torch, ``torch.set_num_threads(n)`` and the BLAS libraries' threads (``threadpoolctl.threadpool_limits(n,
    user_api="blas")``, when installed). Called by ``load_model`` before it imports torch. Returns what
    :func:`config` reports."""
    global _APPLIED
    with _LOCK:
        if _APPLIED is not None:
            return _APPLIED
        before = None
        if "torch" in sys.modules:
            before = sys.modules["torch"].get_num_threads()
        choice = choose_threads(torch_threads=before, measure_load=True)
        import torch

        n = choice["threads"]
        blas_note = None
        if n is not None:
            torch.set_num_threads(n)
            try:
                from threadpoolctl import threadpool_limits
            except ImportError:
                blas_note = "threadpoolctl is not installed: BLAS keeps its own threads"
            else:
                threadpool_limits(limits=n, user_api="blas")  # kept for the process (not a context)
        _APPLIED = {**choice, "blas_note": blas_note}
        return _APPLIED


def config() -> dict:
    """The package's thread settings and versions: a dict (printed as a short table in a REPL or notebook).

    Keys: ``threads`` (the package's choice, or None when it left them alone), ``source`` and ``why`` (see
    :func:`choose_threads`), ``applied`` (False until the first model is loaded: the choice is then what *will*
    happen), ``usable_cpus``, ``limits`` (:func:`cpu_limits`), ``torch_threads`` (``torch.get_num_threads()``, None
    if torch is not imported), ``blas`` (each BLAS library's threads, from threadpoolctl), ``omp_wait_policy``, the
    environment variables that matter, and ``versions`` (python, sinkwidgets, numpy, torch, transformers, nnsight
    when imported or installed)."""
    applied = _APPLIED is not None
    torch_mod = sys.modules.get("torch")
    base = _APPLIED if applied else choose_threads(
        torch_threads=torch_mod.get_num_threads() if torch_mod is not None else None)
    info = Config(
        threads=base["threads"], source=base["source"], why=base["why"], applied=applied,
        usable_cpus=base["usable_cpus"], limits=cpu_limits(),
        torch_threads=torch_mod.get_num_threads() if torch_mod is not None else None,
        blas=_blas_threads(),
        omp_wait_policy=os.environ.get("OMP_WAIT_POLICY"), idle_cpus=base.get("idle_cpus"), load=base.get("load", {}),
        env={k: os.environ.get(k) for k in (ENV_VAR, "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                                            "OMP_WAIT_POLICY")},
        versions=_versions(),
    )
    return info


def _versions() -> dict:
    import platform
    from importlib import metadata

    out = {"python": platform.python_version()}
    for dist in ("sinkwidgets", "numpy", "torch", "transformers", "nnsight"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = None
    return out


def thread_line() -> str:
    """One line for ``sinkwidgets models list``: the threads the package will use on first model use and why (the
    load is not measured here, and torch is not imported)."""
    try:
        c = choose_threads()
    except SinkwidgetsValueError as exc:
        return f"threads: {exc}"
    if c["threads"] is None:
        what = "left to torch and BLAS"
    elif c["source"] == "auto":
        what = f"{c['threads']} for torch and BLAS, fewer if CPUs are busy when the first model loads"
    else:
        what = f"{c['threads']} for torch and BLAS"
    return (f"threads: {what} ({c['why']}; usable CPUs: {c['usable_cpus']}); "
            f"override with {ENV_VAR}=N or {ENV_VAR}=off")


class Config(dict):
    """``sw.config()``: a plain dict with a short, readable repr."""

    def __repr__(self) -> str:
        lines = ["sinkwidgets config"]
        state = "applied" if self["applied"] else "on first model use"
        lines.append(f"  threads      {self['threads'] if self['threads'] is not None else 'left alone'} "
                     f"({self['source']}, {state}): {self['why']}")
        lim = self["limits"]
        lines.append(f"  usable CPUs  {self['usable_cpus']} (affinity {lim['affinity']}, cgroup quota "
                     f"{lim['cgroup_quota'] if lim['cgroup_quota'] is not None else 'none'}, cpu_count "
                     f"{lim['cpu_count']})")
        lines.append(f"  torch        {self['torch_threads'] if self['torch_threads'] is not None else 'not imported'}"
                     f" threads; OpenMP wait policy {self['omp_wait_policy'] or 'default'}")
        blas = ", ".join(f"{b['library']} {b['threads']}" for b in self["blas"]) or "unknown (no threadpoolctl or none loaded)"
        lines.append(f"  BLAS         {blas}")
        lines.append("  versions     " + ", ".join(f"{k} {v}" for k, v in self["versions"].items() if v))
        return "\n".join(lines)

    def _repr_pretty_(self, p, cycle) -> None:  # IPython
        p.text(repr(self))
