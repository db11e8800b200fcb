"""One error family: every exception class sinkwidgets defines derives from ``sinkwidgets.errors.SinkwidgetsError``,
and keeps the built-in base it refines, so ``except ValueError`` code written before the family existed still works.

The walk imports every module of the package (``pkgutil.walk_packages``) and inspects the classes defined there; an
AST pass over the sources also finds exception classes that no import can reach (defined inside a function).
"""

from __future__ import annotations

import ast
import importlib
import inspect
import pkgutil
from pathlib import Path

import pytest

import sinkwidgets
from sinkwidgets.errors import SinkwidgetsError, SinkwidgetsTypeError, SinkwidgetsValueError

pytestmark = pytest.mark.unit

PKG = Path(sinkwidgets.__file__).resolve().parent


def _all_modules():
    mods = [sinkwidgets]
    for info in pkgutil.walk_packages(sinkwidgets.__path__, prefix="sinkwidgets."):
        mods.append(importlib.import_module(info.name))
    return mods


MODULES = _all_modules()


def _defined_exception_classes() -> dict[str, type]:
    """``{"module.Class": cls}`` for every exception class defined at module level in the package."""
    out = {}
    for mod in MODULES:
        for name, obj in vars(mod).items():
            if inspect.isclass(obj) and issubclass(obj, BaseException) and obj.__module__ == mod.__name__:
                out[f"{mod.__name__}.{name}"] = obj
    return out


CLASSES = _defined_exception_classes()


def test_the_walk_sees_the_package():
    """The walk reaches the layers that define errors (so an empty walk cannot pass the test below)."""
    names = {m.__name__ for m in MODULES}
    assert {"sinkwidgets.errors", "sinkwidgets.cli", "sinkwidgets.models.fetch", "sinkwidgets.sinktrace",
            "sinkwidgets.interventions", "sinkwidgets.streaming", "sinkwidgets.tags.data"} <= names, sorted(names)
    assert len(CLASSES) >= 15, sorted(CLASSES)
    names = {c.__name__ for c in CLASSES.values()}
    assert {"ModelFetchError", "UsageError", "SinkTraceFormatError", "RemoteTimeoutError", "InterventionError",
            "StreamingError", "TagDataFormatError", "WidgetValueError"} <= names, sorted(names)


def test_every_exception_class_joins_the_family():
    # warnings are not errors the package raises; a Warning subclass may stand outside the family
    outside = sorted(n for n, c in CLASSES.items()
                     if not issubclass(c, SinkwidgetsError) and not issubclass(c, Warning))
    assert not outside, f"exception classes outside sinkwidgets.errors.SinkwidgetsError: {outside}"


def test_no_exception_class_hides_from_the_walk():
    """Every ``class X(...)`` with an exception-looking base in the sources is one the walk above inspected."""
    found = {}
    for path in PKG.rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef):
                bases = [ast.unparse(b) for b in node.bases]
                if any(b.endswith(("Error", "Exception", "Interrupt", "Exit")) for b in bases):
                    rel = path.relative_to(PKG.parent).with_suffix("")
                    parts = [p for p in rel.parts if p != "__init__"]
                    found[".".join(parts) + "." + node.name] = bases
    assert found, "the AST pass found no exception class at all"
    hidden = sorted(set(found) - set(CLASSES))
    assert not hidden, f"exception classes the module walk cannot reach (define them at module level): {hidden}"


@pytest.mark.parametrize(("name", "builtin"), [
    ("sinkwidgets.errors.ModelNotFoundError", ValueError),
    ("sinkwidgets.errors.HubUnreachableError", ConnectionError),
    ("sinkwidgets.errors.TraceError", RuntimeError),
    ("sinkwidgets.errors.ModelFetchError", RuntimeError),
    ("sinkwidgets.errors.RemoteConfigError", ValueError),
    ("sinkwidgets.errors.RemoteTimeoutError", TimeoutError),
    ("sinkwidgets.errors.RemoteConnectionError", ConnectionError),
    ("sinkwidgets.cli.UsageError", ValueError),
    ("sinkwidgets.sinktrace.SinkTraceFormatError", ValueError),
    ("sinkwidgets.tags.data.TagDataFormatError", ValueError),
    ("sinkwidgets.interventions.InterventionError", ValueError),
    ("sinkwidgets.streaming.StreamingError", ValueError),
])
def test_the_family_keeps_the_builtin_bases(name, builtin):
    module, _, attr = name.rpartition(".")  # the public name (the class may be defined in a submodule)
    cls = getattr(importlib.import_module(module), attr)
    assert cls in CLASSES.values(), f"{name} is not among the classes the walk found"
    assert issubclass(cls, SinkwidgetsError) and issubclass(cls, builtin), cls.__mro__


def test_old_import_paths_and_except_clauses_keep_working():
    from sinkwidgets.models import ModelFetchError as a
    from sinkwidgets.models.fetch import ModelFetchError as b

    assert a is b is sinkwidgets.errors.ModelFetchError
    assert issubclass(SinkwidgetsValueError, ValueError) and issubclass(SinkwidgetsTypeError, TypeError)
    with pytest.raises(ValueError, match="bad file"):  # code written as `except ValueError` still catches it
        raise sinkwidgets.SinkTraceFormatError("bad file")
    with pytest.raises(SinkwidgetsError):
        sinkwidgets.SinkTrace.load(Path(__file__))  # not an .npz trace: a deliberate, family error
