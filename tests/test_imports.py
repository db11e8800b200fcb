"""The package's own imports: no circles, and each layer imports only the layers below it.

Every ``import`` / ``from ... import`` statement counts, including those inside functions; only the lazy
re-exports of ``__init__.py`` files (``importlib.import_module`` in ``__getattr__``) are exempt, because they run
when a name is first used, not when the package is imported.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

PKG = Path(__file__).resolve().parents[1] / "sinkwidgets"


def _modules() -> dict[str, Path]:
    out = {}
    for p in PKG.rglob("*.py"):
        rel = p.relative_to(PKG.parent).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = p
    return out


MODULES = _modules()


def _is_package(name: str) -> bool:
    return MODULES[name].name == "__init__.py"


def _resolve(importer: str, level: int, module: str | None) -> str:
    if level == 0:
        return module or ""
    base = importer.split(".")
    if not _is_package(importer):
        base = base[:-1]
    base = base[: len(base) - (level - 1)]
    return ".".join(base + ([module] if module else []))


def imports_of(name: str) -> set[str]:
    """The package modules ``name`` imports (a ``from pkg import sub`` names the submodule when it is one)."""
    tree = ast.parse(MODULES[name].read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            mod = _resolve(name, node.level, node.module)
            targets = []
            for a in node.names:
                sub = f"{mod}.{a.name}"
                targets.append(sub if sub in MODULES else mod)
        else:
            continue
        for t in targets:
            while t and t not in MODULES:  # "sinkwidgets.models.loading.x" → the module that holds it
                t = t.rpartition(".")[0]
            if t.startswith("sinkwidgets") and t != name:
                found.add(t)
    return found


GRAPH = {m: imports_of(m) for m in MODULES}


def test_the_graph_sees_the_package():
    assert {"sinkwidgets.tracing.api", "sinkwidgets.tracing.reductions", "sinkwidgets.models.loading"} <= set(GRAPH)
    assert "sinkwidgets.tracing.reductions" in GRAPH["sinkwidgets.tracing.eager"]
    assert "sinkwidgets.errors" in GRAPH["sinkwidgets.models.loading"]


def test_no_import_cycles():
    """No module imports, directly or through others, a module that imports it back."""
    state: dict[str, int] = {}
    stack: list[str] = []
    cycles = []

    def visit(m):
        state[m] = 1
        stack.append(m)
        for n in sorted(GRAPH[m]):
            if state.get(n) == 1:
                cycles.append(stack[stack.index(n):] + [n])
            elif n not in state:
                visit(n)
        stack.pop()
        state[m] = 2

    for m in sorted(GRAPH):
        if m not in state:
            visit(m)
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def _reach(start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for n in GRAPH[todo.pop()]:
            if n not in seen:
                seen.add(n)
                todo.append(n)
    return seen


def test_models_import_nothing_above_them():
    for m in (m for m in GRAPH if m.startswith("sinkwidgets.models")):
        above = {n for n in _reach(m) if not n.startswith("sinkwidgets.models") and n != "sinkwidgets.errors"}
        assert not above, f"{m} reaches {sorted(above)}"


def test_tracing_layers_point_down():
    """reductions/collect (bottom) < executors < api: no layer reaches one above it."""
    layer = {"reductions": 0, "edits": 0, "collect": 0, "qk": 0, "hooks": 0, "eager": 1, "chunked": 1, "remote": 1,
             "api": 2}
    for name, rank in layer.items():
        m = f"sinkwidgets.tracing.{name}"
        for n in _reach(m):
            short = n.rpartition(".")[2]
            if n.startswith("sinkwidgets.tracing.") and short in layer:
                assert layer[short] <= rank, f"{m} (layer {rank}) reaches {n} (layer {layer[short]})"
        if rank == 1:  # executors do not import each other's callers, and remote is not imported by chunked
            assert "sinkwidgets.tracing.remote" not in _reach("sinkwidgets.tracing.chunked")
    low = ("reductions", "edits", "collect", "qk", "hooks")
    bottom = {n for m in low for n in _reach(f"sinkwidgets.tracing.{m}")}
    assert bottom <= {f"sinkwidgets.tracing.{m}" for m in low}, bottom


def test_interventions_sit_above_tracing():
    """interventions (experiments, edits, results) import the tracing layer and below; nothing below imports them,
    and above them only tags.release (it calls project_out), widgets.experiment and widgets.tag_experiment (the
    explorers' experiments) do."""
    pkg = "sinkwidgets.interventions"
    ours = {m for m in GRAPH if m == pkg or m.startswith(pkg + ".")}
    assert {f"{pkg}.experiments", f"{pkg}.edits", f"{pkg}.results"} <= ours
    below = _reach("sinkwidgets.tracing.api") | {"sinkwidgets.tracing.api"}  # the engine and what it needs
    for m in ours:
        above = {n for n in _reach(m) - below
                 if not n.startswith((pkg, "sinkwidgets.tracing", "sinkwidgets.models"))
                 and n not in ("sinkwidgets._args", "sinkwidgets.errors")}  # the argument layer sits at the bottom
        assert not above, f"{m} reaches {sorted(above)}"
    importers = {m for m, deps in GRAPH.items() if m not in ours and any(d in ours for d in deps)}
    assert importers <= {"sinkwidgets.tags.release", "sinkwidgets.widgets.experiment",
                         "sinkwidgets.widgets.tag_experiment"}, sorted(importers)
    for m in GRAPH:
        if m.startswith(("sinkwidgets.tracing", "sinkwidgets.models")):
            assert not (_reach(m) & ours), f"{m} reaches the interventions package"


def test_arrays_downstream_do_not_import_the_tracing_layer():
    """SinkTrace and the numpy analyses load saved traces without torch, nnsight or the models."""
    for m in ("sinkwidgets.sinktrace", "sinkwidgets.metrics"):
        bad = {n for n in _reach(m) if n.startswith(("sinkwidgets.tracing", "sinkwidgets.models"))}
        assert not bad, f"{m} reaches {sorted(bad)}"


def test_executors_name_no_quantity():
    """The executors hand sources to units; the names of the quantities appear only in reductions.py."""
    words = ("alpha", "first_token_mass", "entropy", "sink_scores", "head_values", "pooled", "top_k", "norms",
             "AttentionSummary", "ResidualSummary", "KeptMaps", "HeadOutputs", "HeadValues", "PooledResidual")
    for name in ("eager", "chunked", "remote", "collect", "hooks"):
        src = (PKG / "tracing" / f"{name}.py").read_text()
        code = "\n".join(ln for ln in src.splitlines() if not ln.lstrip().startswith("#"))
        code = ast.unparse(_strip_docstrings(ast.parse(code)))
        hits = [w for w in words if w in code]
        assert not hits, f"tracing/{name}.py names {hits}"


def _strip_docstrings(tree):
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(getattr(first, "value", None), ast.Constant):
                node.body = node.body[1:] or [ast.Pass()]
    return tree


TOP = ("sinkwidgets.lessons", "sinkwidgets.charts")  # the tutorial layer: helpers and the one charts home


def _in(m: str, prefixes) -> bool:
    return any(m == p or m.startswith(p + ".") for p in prefixes)


def test_lessons_sit_on_top():
    """sinkwidgets.lessons may import the package below it; nothing in the core imports lessons (or sw.charts).

    ``sw.charts`` sits beside the lessons (it uses ``lessons.summaries``); the lessons draw no charts, so they do not
    import it. The CLI is an entry point, not core, but it needs neither.
    """
    lessons = [m for m in GRAPH if _in(m, ("sinkwidgets.lessons",))]
    assert {"sinkwidgets.lessons.handmade", "sinkwidgets.lessons.summaries", "sinkwidgets.lessons.inputs",
            "sinkwidgets.lessons.geometry"} <= set(lessons)
    assert "sinkwidgets.lessons.summaries" in GRAPH["sinkwidgets.charts"]  # the graph sees the edge we allow
    for m in GRAPH:
        if _in(m, TOP) or m == "sinkwidgets":
            continue
        bad = {n for n in _reach(m) if _in(n, TOP)}
        assert not bad, f"core module {m} reaches the tutorial layer: {sorted(bad)}"
    for m in lessons:
        bad = {n for n in _reach(m) if n in ("sinkwidgets.charts", "sinkwidgets.cli")}
        assert not bad, f"{m} reaches {sorted(bad)}"


def test_the_argument_layer_sits_at_the_bottom():
    """sinkwidgets._args (the argument parsers every layer uses) imports nothing from the package but errors."""
    assert GRAPH["sinkwidgets._args"] == {"sinkwidgets.errors"}, sorted(GRAPH["sinkwidgets._args"])
    assert _reach("sinkwidgets._args") == {"sinkwidgets.errors"}
