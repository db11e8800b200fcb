"""The JS and CSS of each widget, assembled from ``static/`` (no npm, no bundler: plain text, checked).

anywidget takes one ES module string per widget (``_esm``), and the offline pages inline the same string, so each
widget's module is built here, by :func:`esm` and nothing else:

* ``static/sinkwidgets.js`` holds what the widgets share (codecs, colour maps, DOM helpers, menus, error boxes,
  PNG hand-off, offline-page helpers), each ``export``-ed once. It imports nothing and has no default export.
* ``static/<widget>.js`` (``sinkexplorer.js``, ``tagexplorer.js``) starts with ONE statement,
  ``import { a, b, ... } from "./sinkwidgets.js";``, naming every shared helper it uses, and ends with the
  widget's ``export default { render }``.
* ``esm(widget)`` checks that statement (every name exported by the shared module and used by the widget; no other
  import anywhere), drops it, and returns the shared module followed by the widget's file: one module scope, so a
  name declared in both files is a SyntaxError of the result (``tests/test_widgets_js.py`` runs ``node --check``).

Nothing is cut out of a file by its comments: the only text removed is the import statement, found by its syntax.
"""

from __future__ import annotations

import functools
import re

from ..errors import SinkwidgetsValueError
from ._state import STATIC

#: The shared module every widget module starts with.
COMMON = "sinkwidgets.js"
#: Widget name -> (its JS file, its CSS files in order). The theme variables and controls of sinkwidgets.css
#: come first for every widget.
WIDGETS = {
    "sinkexplorer": ("sinkexplorer.js", ("sinkwidgets.css",)),
    "tagexplorer": ("tagexplorer.js", ("sinkwidgets.css", "tagexplorer.css")),
}

_IDENT = r"[A-Za-z_$][\w$]*"
_IMPORT = re.compile(r"\Aimport\s*\{(?P<names>[^{}]*)\}\s*from\s*\"\./" + re.escape(COMMON) + r"\";[ \t]*\n")
_ANY_IMPORT = re.compile(r"^\s*import\b(?!\s*\()", re.M)
#: A top-level declaration: at column 0, optionally exported.
TOP_LEVEL = re.compile(r"^(?P<export>export\s+)?(?:async\s+)?(?:function\*?|const|let|var|class)\s+(?P<name>"
                       + _IDENT + ")", re.M)


def _read(name: str) -> str:
    return (STATIC / name).read_text(encoding="utf-8")


def exported_names(source: str) -> set[str]:
    """Names a JS source exports by ``export function|const|let|class NAME`` at the start of a line."""
    return {m["name"] for m in TOP_LEVEL.finditer(source) if m["export"]}


def split_import(widget_js: str, what: str) -> tuple[list[str], str]:
    """The names a widget file imports from the shared module, and the file without that statement.

    Raises ``ValueError`` naming ``what`` (the file) when the statement is missing or not the file's first, when
    it renames (``a as b``), or when the file holds another import."""
    m = _IMPORT.match(widget_js)
    if m is None:
        raise SinkwidgetsValueError(f"{what} must start with `import {{ ... }} from \"./{COMMON}\";` (the shared "
                                    "helpers it uses); see sinkwidgets/widgets/_assets.py")
    names = [n.strip() for n in m["names"].split(",") if n.strip()]
    bad = [n for n in names if not re.fullmatch(_IDENT, n)]
    if bad:
        raise SinkwidgetsValueError(f"{what} imports {bad} from {COMMON}: list plain names (no `as` renames)")
    body = widget_js[m.end():]
    if _ANY_IMPORT.search(body):
        raise SinkwidgetsValueError(f"{what} has a second import statement; one module is assembled from {COMMON} and "
                                    f"{what} only, so import shared helpers in the first statement")
    return names, body


def assemble(common: str, own: str, js_name: str) -> str:
    """One ES module from the shared module's text ``common`` and a widget file's text ``own`` (named ``js_name``
    in messages): ``common``, then ``own`` without its import statement. Checked first: ``common`` imports nothing
    and has no default export; each name ``own`` imports is exported by ``common`` and used in ``own``."""
    if _ANY_IMPORT.search(common) or re.search(r"^export\s+default\b", common, re.M):
        raise SinkwidgetsValueError(f"{COMMON} must import nothing and have no default export (each widget has its "
                                    "own): move them to the widget's file")
    names, body = split_import(own, js_name)
    missing = sorted(set(names) - exported_names(common))
    if missing:
        raise SinkwidgetsValueError(f"{js_name} imports {missing}, which {COMMON} does not export: export them there")
    unused = sorted(n for n in names if not re.search(r"(?<![\w$.])" + re.escape(n) + r"(?![\w$])", body))
    if unused:
        raise SinkwidgetsValueError(f"{js_name} imports {unused} from {COMMON} but never uses them: drop them from the "
                                    "import")
    return (f"// ---- {COMMON} (shared helpers; assembled by sinkwidgets/widgets/_assets.py)\n{common}\n"
            f"// ---- {js_name}\n{body}")


@functools.cache
def esm(widget: str) -> str:
    """The ES module of ``widget`` (a key of :data:`WIDGETS`): :func:`assemble` of ``static/sinkwidgets.js`` and
    the widget's own file. Both widgets and their offline pages get their JS from here, and nowhere else."""
    if widget not in WIDGETS:
        raise SinkwidgetsValueError(f"widget must be one of {sorted(WIDGETS)}, got {widget!r}; e.g. "
                                    "widget='sinkexplorer'")
    return assemble(_read(COMMON), _read(WIDGETS[widget][0]), WIDGETS[widget][0])


@functools.cache
def css(widget: str) -> str:
    """The CSS of ``widget``: its files of :data:`WIDGETS` in order."""
    if widget not in WIDGETS:
        raise SinkwidgetsValueError(f"widget must be one of {sorted(WIDGETS)}, got {widget!r}; e.g. "
                                    "widget='sinkexplorer'")
    return "\n".join(_read(name) for name in WIDGETS[widget][1])
