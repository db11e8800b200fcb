"""docs/architecture.md cannot drift: every path and every public symbol it names must exist.

The doc names things in three ways, all inside backticks:

- a repository path, ``sinkwidgets/tracing/chunked.py`` or ``tests/test_engine.py`` (a path with a ``/``; a bare
  file name such as ``reductions.py`` is looked up under ``sinkwidgets/``);
- a path and a symbol, ``tracing/chunked.py: layer_plan`` (the file must define or assign that name);
- a dotted name, ``sinkwidgets.tracing.run_units`` (it must import and resolve, attribute by attribute).
"""

from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "architecture.md"
SPAN = re.compile(r"`([^`\n]+)`")
PATH_LIKE = re.compile(r"^[\w./-]+\.(py|md|js|ipynb|json|toml|txt)$|^[\w.-]+(/[\w.-]+)+/?$")


def _spans() -> list[str]:
    return SPAN.findall(DOC.read_text(encoding="utf-8"))


def _find_file(rel: str) -> Path | None:
    rel = rel.rstrip("/")
    for base in (ROOT, ROOT / "sinkwidgets"):
        if (base / rel).exists():
            return base / rel
    hits = [p for p in (ROOT / "sinkwidgets").rglob(Path(rel).name) if p.as_posix().endswith("/" + rel)]
    return hits[0] if len(hits) == 1 else None


def _defined_names(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names |= {t.id for t in node.targets if isinstance(t, ast.Name)}
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
        elif isinstance(node, ast.ImportFrom):
            names |= {a.asname or a.name for a in node.names}
    return names


def _classify(spans: list[str]):
    paths, symbols, dotted = [], [], []
    for s in spans:
        s = s.strip()
        m = re.match(r"^([\w./-]+\.py): ?(\w+)(\(\))?$", s)
        if m:
            symbols.append((m.group(1), m.group(2)))
        elif s.startswith("sinkwidgets.") and re.match(r"^[\w.]+(\(\))?$", s):
            dotted.append(s.removesuffix("()"))
        elif "/" in s and PATH_LIKE.match(s) and not s.startswith(("http", "/")):
            paths.append(s)
        elif re.match(r"^[\w-]+\.(py|js)$", s):  # a bare module or script name: somewhere in the package
            paths.append(s)
    return paths, symbols, dotted


PATHS, SYMBOLS, DOTTED = _classify(_spans())


def test_the_doc_names_enough_to_check():
    # a rewrite that dropped the backticks would make every other test here pass vacuously
    assert len(PATHS) >= 15 and len(SYMBOLS) >= 5 and len(DOTTED) >= 5, (len(PATHS), len(SYMBOLS), len(DOTTED))


@pytest.mark.parametrize("rel", PATHS)
def test_named_path_exists(rel):
    assert _find_file(rel) is not None, f"docs/architecture.md names {rel!r}, which does not exist"


@pytest.mark.parametrize("rel,name", SYMBOLS)
def test_named_symbol_is_defined_in_its_file(rel, name):
    path = _find_file(rel)
    assert path is not None, f"docs/architecture.md names {rel!r}, which does not exist"
    assert name in _defined_names(path), f"docs/architecture.md says {rel} defines {name!r}; it does not"


@pytest.mark.parametrize("dotted", DOTTED)
def test_named_dotted_symbol_resolves(dotted):
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for attr in parts[i:]:
            assert hasattr(obj, attr), f"docs/architecture.md names {dotted!r}: {attr!r} is missing"
            obj = getattr(obj, attr)
        return
    pytest.fail(f"docs/architecture.md names {dotted!r}, which does not import")


def test_classifier_rejects_what_does_not_exist(tmp_path):
    # the checks above can fail: a made-up path, symbol and dotted name are all caught
    paths, symbols, dotted = _classify(["sinkwidgets/nope.py", "tracing/api.py: no_such_fn", "sinkwidgets.no_such"])
    assert _find_file(paths[0]) is None
    assert symbols[0][1] not in _defined_names(_find_file(symbols[0][0]))
    with pytest.raises(AssertionError):
        test_named_dotted_symbol_resolves(dotted[0])
