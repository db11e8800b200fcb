"""Every test carries a kind marker, so that ``-m unit`` / ``-m models`` / ``-m browser`` / ``-m remote`` select it.

A test module satisfies this either with a module-level ``pytestmark`` naming a registered kind, or (for modules that
mix kinds, e.g. unit tests beside one that loads a model) with a kind marker on every top-level test function or
class. A module-level ``unit`` is not put on a module that also holds ``models`` tests, because markers add up and
``-m unit`` would then load models. The check is static (ast), so it needs no import of the tests.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[1]
TESTS = ROOT / "tests"


def _registered() -> set[str]:
    """The markers registered in pyproject.toml's ``[tool.pytest.ini_options] markers`` (read without tomllib, which
    Python 3.10 lacks)."""
    text = (ROOT / "pyproject.toml").read_text()
    block = re.search(r"^markers = \[(.*?)^\]", text, re.S | re.M).group(1)
    return set(re.findall(r'^\s*"(\w+):', block, re.M))


KINDS = _registered()
NEEDS_RESOURCES = {"models", "browser", "remote"}


def _marks(node: ast.expr) -> set[str]:
    """Kind names in ``pytest.mark.x``, ``pytest.mark.x(...)`` or a list / tuple of them."""
    if isinstance(node, (ast.List, ast.Tuple)):
        return set().union(*(_marks(e) for e in node.elts)) if node.elts else set()
    n = node.func if isinstance(node, ast.Call) else node
    if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Attribute) and n.value.attr == "mark":
        return {n.attr} & KINDS
    return set()


def _module_mark(tree: ast.Module) -> set[str] | None:
    for n in tree.body:
        if isinstance(n, ast.Assign) and any(getattr(t, "id", None) == "pytestmark" for t in n.targets):
            return _marks(n.value)
    return None


def test_markers_are_registered(pytestconfig):
    assert {"unit", "models", "browser", "remote", "slow"} <= KINDS
    assert KINDS == {m.split(":")[0].strip() for m in pytestconfig.getini("markers")} & KINDS


def test_every_test_module_marks_its_tests():
    files = sorted(TESTS.rglob("test_*.py"))
    assert len(files) >= 30 and TESTS / "test_toy.py" in files and TESTS / "test_toy_tagdata.py" in files
    problems = []
    for path in files:
        tree = ast.parse(path.read_text())
        name = path.relative_to(ROOT)
        module = _module_mark(tree)
        if module is not None and not module:
            problems.append(f"{name}: pytestmark names no kind of {sorted(KINDS)}")
            continue
        for node in tree.body:
            if not (isinstance(node, (ast.FunctionDef, ast.ClassDef)) and node.name.lower().startswith("test")):
                continue
            kinds = (module or set()) | set().union(*(_marks(d) for d in node.decorator_list))
            if not kinds:
                problems.append(f"{name}::{node.name}: no kind marker; add pytestmark = pytest.mark.<kind> to the "
                                f"module, or @pytest.mark.<kind> to the test (kinds: {sorted(KINDS)})")
            elif "unit" in kinds and kinds & NEEDS_RESOURCES:
                problems.append(f"{name}::{node.name}: marked unit and {sorted(kinds & NEEDS_RESOURCES)}; "
                                "a unit test needs no model, browser or server")
    assert not problems, "\n".join(problems)


def test_the_check_sees_markers():
    """The checker finds module and per-test markers, and catches an unmarked test (so it can fail)."""
    marked = ast.parse("import pytest\npytestmark = [pytest.mark.models, pytest.mark.usefixtures('x')]\n")
    assert _module_mark(marked) == {"models"}
    mixed = ast.parse("@pytest.mark.unit\n@pytest.mark.parametrize('a', [1])\ndef test_a(a): pass\n"
                      "def test_b(): pass\n")
    found = [set().union(*(_marks(d) for d in n.decorator_list)) for n in mixed.body]
    assert found == [{"unit"}, set()]
