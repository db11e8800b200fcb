"""The widgets' JS: one shared module (static/sinkwidgets.js), one file per widget, one assembler (_assets.esm).

No helper may be defined in two JS files, each assembled module must parse as an ES module (``node --check``),
and the assembler must refuse a widget file whose import does not match the shared module.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections import defaultdict

import pytest

from sinkwidgets.widgets import _assets, _tag_state
from sinkwidgets.widgets._state import STATIC

pytestmark = pytest.mark.unit  # no model, browser or notebook (node only for the parse check)

#: The anywidget entry point: each widget module defines its own `render` (never the shared module).
PER_WIDGET = {"render"}


def _top_level(path) -> list[str]:
    return [m["name"] for m in _assets.TOP_LEVEL.finditer(path.read_text(encoding="utf-8"))]


def test_no_top_level_name_is_defined_in_two_js_files():
    files = sorted(STATIC.glob("*.js"))
    assert {f.name for f in files} >= {"sinkwidgets.js", "sinkexplorer.js", "tagexplorer.js"}
    where = defaultdict(list)
    for f in files:
        names = _top_level(f)
        dup = sorted({n for n in names if names.count(n) > 1})
        assert not dup, f"{f.name} defines {dup} twice"
        for n in names:
            where[n].append(f.name)
    twice = {n: fs for n, fs in where.items() if len(fs) > 1 and n not in PER_WIDGET}
    assert not twice, f"helpers defined in more than one JS file (put them in sinkwidgets.js once): {twice}"
    assert sorted(where["render"]) == ["sinkexplorer.js", "tagexplorer.js"]  # never in the shared module


def test_the_shared_helpers_live_in_sinkwidgets_js_only():
    common = _assets.exported_names((STATIC / "sinkwidgets.js").read_text(encoding="utf-8"))
    shared = {"asBytes", "typedView", "decodeArray", "decodeInts", "viridis", "VIRIDIS_LUT", "rgb", "cssRgb",
              "parseRgb", "CATEGORICAL", "h", "text", "showToken", "clip", "fmt", "setupCanvas", "themeColor", "menu",
              "labelled", "button", "errorBox", "downloadBlob", "sendPng", "b64ToBytes", "restoreBuffers", "LocalModel",
              "mountOffline"}
    assert shared <= common, shared - common
    # the names the copies had before they were merged are gone everywhere
    old = {"el", "txt", "showTok", "btn", "sizeCanvas", "css", "select", "b64Bytes", "restore", "LUT", "CATS",
           "INT_CTORS", "ITEMSIZE", "VIRIDIS"}
    for f in ("sinkexplorer.js", "tagexplorer.js"):
        assert not old & set(_top_level(STATIC / f)), (f, old & set(_top_level(STATIC / f)))


@pytest.mark.parametrize("widget", sorted(_assets.WIDGETS))
def test_assembled_module_is_both_files_whole(widget):
    """Nothing is sliced out by comments: the module holds the shared file whole, then the widget file whole
    except its first statement (the import)."""
    js_name = _assets.WIDGETS[widget][0]
    common = (STATIC / "sinkwidgets.js").read_text(encoding="utf-8")
    own = (STATIC / js_name).read_text(encoding="utf-8")
    js = _assets.esm(widget)
    names, body = _assets.split_import(own, js_name)
    assert common in js and js.endswith(body) and own.startswith("import {") and own.endswith(body)
    assert len(js) < len(common) + len(own) + 200
    assert js.count("export default") == 1 and "export default { render }" in js
    assert not re.search(r"^\s*import\b", js, re.M)
    assert "innerHTML" not in js  # untrusted tokens: textContent only
    assert {"decodeArray", "h", "text", "menu", "errorBox"} <= set(names)


def test_tag_explorer_module_is_the_assembled_one():
    assert _tag_state.esm() == _assets.esm("tagexplorer")
    from sinkwidgets.widgets._tag_widget import TagExplorer
    from sinkwidgets.widgets._widget import SinkExplorer
    assert TagExplorer._esm == _assets.esm("tagexplorer")
    assert SinkExplorer._esm == _assets.esm("sinkexplorer")
    assert SinkExplorer._css == (STATIC / "sinkwidgets.css").read_text(encoding="utf-8")


@pytest.mark.skipif(shutil.which("node") is None, reason="needs node (Debian: apt install nodejs)")
@pytest.mark.parametrize("widget", sorted(_assets.WIDGETS))
def test_assembled_module_parses_as_an_es_module(widget, tmp_path):
    out = tmp_path / f"{widget}.mjs"
    out.write_text(_assets.esm(widget), encoding="utf-8")
    run = subprocess.run(["node", "--check", str(out)], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr


@pytest.mark.skipif(shutil.which("node") is None, reason="needs node (Debian: apt install nodejs)")
def test_a_helper_defined_twice_does_not_parse(tmp_path):
    """The guarantee behind the assembly: both files share one scope, so a second definition is an error."""
    common = (STATIC / "sinkwidgets.js").read_text(encoding="utf-8")
    own = 'import { fmt } from "./sinkwidgets.js";\nfunction fmt(v) { return String(v); }\nexport default { fmt };\n'
    out = tmp_path / "twice.mjs"
    out.write_text(_assets.assemble(common, own, "twice.js"), encoding="utf-8")
    run = subprocess.run(["node", "--check", str(out)], capture_output=True, text=True, timeout=60)
    assert run.returncode != 0 and "fmt" in run.stderr


COMMON = 'export function fmt(v) { return String(v); }\nexport const h = (t) => t;\n'


@pytest.mark.parametrize(("own", "match"), [
    ('function f() {}\nexport default { render: f };\n', "must start with `import"),
    ('// header first\nimport { fmt } from "./sinkwidgets.js";\nfmt(1);\n', "must start with `import"),
    ('import { fmt as f } from "./sinkwidgets.js";\nf(1);\n', "no `as` renames"),
    ('import { fmt } from "./sinkwidgets.js";\nimport x from "./other.js";\nfmt(x);\n', "second import"),
    ('import { fmt, nope } from "./sinkwidgets.js";\nfmt(nope);\n', r"imports \['nope'\], which sinkwidgets.js"),
    ('import { fmt, h } from "./sinkwidgets.js";\nfmt(1);\n', r"imports \['h'\] .* never uses"),
])
def test_assemble_refuses_a_widget_file_that_does_not_match(own, match):
    with pytest.raises(ValueError, match=match):
        _assets.assemble(COMMON, own, "w.js")


def test_assemble_refuses_a_shared_module_with_imports_or_a_default_export():
    own = 'import { fmt } from "./sinkwidgets.js";\nfmt(1);\n'
    for bad in (COMMON + "export default {};\n", 'import x from "./y.js";\n' + COMMON):
        with pytest.raises(ValueError, match="must import nothing and have no default export"):
            _assets.assemble(bad, own, "w.js")
    assert _assets.assemble(COMMON, own, "w.js").endswith("\nfmt(1);\n")


def test_esm_names_the_widgets():
    with pytest.raises(ValueError, match=r"widget must be one of \['sinkexplorer', 'tagexplorer'\], got 'nope'"):
        _assets.esm("nope")


@pytest.mark.parametrize("name", ["sinkwidgets.css", "tagexplorer.css"])
def test_every_css_rule_is_scoped_to_the_widget_root(name):
    """Each selector starts with `.sw-root:not(#sw-scope)` (an id's weight), so the widget's rules outweigh both the
    reset of every element inside the root and host page rules such as JupyterLab's `.jp-OutputArea-output dt`."""
    src = re.sub(r"/\*.*?\*/", "", (STATIC / name).read_text(encoding="utf-8"), flags=re.S)
    selectors = [s.strip() for block in re.findall(r"([^{}]+)\{[^{}]*\}", src) for s in block.split(",")]
    assert len(selectors) > 10
    unscoped = [s for s in selectors if not s.startswith(".sw-root:not(#sw-scope)")]
    assert not unscoped, f"{name}: rules host pages can outweigh: {unscoped}"
    if name == "sinkwidgets.css":
        assert ".sw-root:not(#sw-scope) *" in selectors  # the reset of every element inside the root


#: Tokens whose visible form the JS and Python must agree on: spaces, newlines, tabs, runs, controls, Unicode
#: spaces (U+0085 is whitespace to Python but not to JS's \s; U+FEFF the other way round), astral characters and
#: markup, which stays text.
SHOW_CASES = ["", " ", " the", "\n", "\n\n", "a\nb\tc", "\r\n", " " * 90, "\t\t\t\t\t", "x" * 9, "\x00\x1b\x7f",
              "\u00a0", "\u2003", "\u3000x", "\x85", "\ufeff", "<b>&amp;</b>", "😀 😀", "  \n  ", "ab  cd"]


@pytest.mark.skipif(shutil.which("node") is None, reason="needs node (Debian: apt install nodejs)")
def test_js_show_token_matches_python(tmp_path):
    """``showToken`` (static/sinkwidgets.js) and ``sinkwidgets._text.show_token`` write every token the same way
    (both widgets and the CLI show ␣, ⏎, ⇥)."""
    import json

    from sinkwidgets._text import show_token

    common = (STATIC / "sinkwidgets.js").read_text(encoding="utf-8")
    out = tmp_path / "show.mjs"
    out.write_text(common + f"\nconsole.log(JSON.stringify({json.dumps(SHOW_CASES)}.map((s) => showToken(s))));\n",
                   encoding="utf-8")
    run = subprocess.run(["node", str(out)], capture_output=True, text=True, timeout=60, encoding="utf-8")
    assert run.returncode == 0, run.stderr
    got = json.loads(run.stdout)
    want = [show_token(s) for s in SHOW_CASES]
    assert got == want
    assert want[2] == "\u2423the" and want[3] == "\u23ce" and want[5] == "a\u23ceb\u21e5c" and want[7] == "\u2423\u00d790"
