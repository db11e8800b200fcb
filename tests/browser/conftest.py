"""Fixtures for the real-browser tests: Debian chromium (through pytest-playwright), a throw-away JupyterLab,
a real SmolLM2 trace made once per session, and helpers to drive notebooks.

Every request that leaves 127.0.0.1 (or file://) is aborted and recorded; every browser console error and
uncaught page error fails the test (tests that provoke an error on purpose declare it with
``page.expected_errors``). Screenshots go to ``test-artifacts/browser/`` (gitignored).
"""

from __future__ import annotations

import struct
import sys
import time
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_notebook

HERE = Path(__file__).parent
REPO = HERE.parent.parent
sys.path.insert(0, str(HERE))

from labserver import CHROMIUM, CHROMIUM_ARGS, LOCAL_PREFIXES, start_lab  # noqa: E402

ARTIFACTS = REPO / "test-artifacts" / "browser"
T_SERVER = 90_000  # ms: JupyterLab page + kernel start
T_WIDGET = 60_000  # ms: widget render after run-all

#: A prompt of ~650 SmolLM2 tokens: longer than the 512-cell overview, so zooming needs real tiles.
PROMPT = " ".join(
    [
        "The quick brown fox jumps over the lazy dog, and then it runs into the forest.",
        "Meanwhile, the dog wakes up; it barks twice, looks around, and goes back to sleep.",
        "A scientist writes in her notebook: attention sinks appear in almost every language model!",
        "Why does the first token collect so much attention? Nobody expected this when transformers were new.",
        "In the evening the village is quiet.  Lanterns glow along the river, and boats drift slowly by.",
    ]
    * 7
)
KEEP_LAYERS = (3, 12)


def pytest_collection_modifyitems(items):
    for item in items:
        if str(item.fspath).startswith(str(HERE)):
            item.add_marker(pytest.mark.browser)


@pytest.fixture(scope="session")
def browser_type_launch_args(browser_type_launch_args):
    """pytest-playwright hook: Debian's chromium (``playwright install`` cannot download here)."""
    if not Path(CHROMIUM).exists():
        pytest.fail(f"no chromium at {CHROMIUM}: apt-get install chromium (bash .ci/run does)")
    return {**browser_type_launch_args, "executable_path": CHROMIUM, "args": CHROMIUM_ARGS}


@pytest.fixture(scope="session")
def browser_context_args(browser_context_args):
    return {**browser_context_args, "viewport": {"width": 1400, "height": 1100}}


@pytest.fixture(scope="session")
def artifacts() -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS


@pytest.fixture(scope="session")
def smollm2_trace_path(tmp_path_factory) -> Path:
    """A real SmolLM2-135M trace (~650 tokens, maps of layers 3 and 12 kept), traced once and saved."""
    import sinkwidgets as sw

    t0 = time.perf_counter()
    model = sw.load_model("smollm2-135m")
    tr = sw.trace(model, PROMPT, keep_maps=list(KEEP_LAYERS))
    path = tr.save(tmp_path_factory.mktemp("trace") / "smollm2.npz")
    print(f"\n  SmolLM2 trace T={tr.n_tokens} in {time.perf_counter() - t0:.1f}s -> {path}")
    return path


@pytest.fixture(scope="session")
def smollm2_trace(smollm2_trace_path):
    from sinkwidgets import SinkTrace

    return SinkTrace.load(smollm2_trace_path)


@pytest.fixture(scope="session")
def lab(tmp_path_factory):
    """JupyterLab on 127.0.0.1 (free port, random token, fresh state); stopped via /api/shutdown, then PID."""
    server = start_lab(tmp_path_factory.mktemp("lab"), extra_pythonpath=[str(REPO)])
    print(f"\n  jupyter lab pid={server.proc.pid} at {server.base}")
    try:
        yield server
    finally:
        server.stop()


def _attach_guards(page):
    external, errors = [], []

    def guard(route):
        url = route.request.url
        if url.startswith(LOCAL_PREFIXES):
            route.continue_()
        else:
            external.append(url)
            route.abort()

    page.route("**/*", guard)
    page.on("pageerror", lambda e: errors.append(f"pageerror: {e}" + (f" [{e.stack[:600]}]" if getattr(e, "stack", None) else "")))
    page.on("console", lambda m: errors.append(f"console.error: {m.text}") if m.type == "error" else None)
    page.external_requests, page.js_errors, page.expected_errors = external, errors, []
    return page


@pytest.fixture
def guarded_page(page, artifacts, request):
    """``page`` that aborts non-local requests and fails the test on any unexpected console error."""
    _attach_guards(page)
    yield page
    name = request.node.name.replace("/", "_")
    try:
        page.screenshot(path=str(artifacts / f"{name}.png"), full_page=True)
    except Exception:
        pass
    unexpected = [e for e in page.js_errors if not any(x in e for x in page.expected_errors)]
    assert not unexpected, f"browser console errors: {unexpected}"
    assert not page.external_requests, f"requests left 127.0.0.1: {page.external_requests}"


# ----------------------------------------------------------------------------- notebook driving
def write_notebook(lab, name: str, cells: list[str]) -> str:
    nb = new_notebook(cells=[new_code_cell(src) for src in cells],
                      metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}})
    nbformat.write(nb, lab.root / name)
    return name


def lab_exec(page, command: str, args: dict | None = None):
    """Run a JupyterLab command (the registry the menus use)."""
    return page.evaluate("([c, a]) => window.jupyterapp.commands.execute(c, a)", [command, args or {}])


def open_notebook(page, lab, name: str, app: str = "lab") -> None:
    """Open ``name`` (``app="lab"``: /lab/tree/, ``"notebook"``: Notebook 7's /notebooks/) and wait until it
    is the current widget with an idle kernel (``reset``: no tabs restored from earlier tests)."""
    path = f"lab/tree/{name}" if app == "lab" else f"notebooks/{name}"
    page.goto(lab.url(path) + ("&reset" if app == "lab" else ""))
    page.wait_for_function("() => !!(window.jupyterapp && window.jupyterapp.shell)", timeout=T_SERVER)
    page.wait_for_function(
        """(name) => { const w = window.jupyterapp.shell.currentWidget;
                   return !!(w && w.content && w.context && w.context.path === name && w.sessionContext
                             && w.sessionContext.session && w.sessionContext.session.kernel
                             && w.sessionContext.kernelDisplayStatus === 'idle'); }""",
        arg=name,
        timeout=T_SERVER,
    )


def run_all(page) -> None:
    assert lab_exec(page, "notebook:run-all-cells") is not False


def run_cell(page, index: int) -> None:
    page.evaluate(
        """(i) => { const nb = window.jupyterapp.shell.currentWidget.content;
                   nb.activeCellIndex = i; nb.mode = 'command'; }""",
        index,
    )
    lab_exec(page, "notebook:run-cell")


def cell_text(page, index: int) -> str:
    return page.evaluate(
        """(i) => { const nb = window.jupyterapp.shell.currentWidget.content;
                   const c = nb.widgets[i]; return c && c.outputArea ? c.outputArea.node.innerText : ''; }""",
        index,
    )


def poll_cell(page, index: int, predicate, timeout: float = 20.0, what: str = "") -> str:
    """Re-run a read-back cell until ``predicate(output_text)``: browser→kernel messages are asynchronous."""
    t0, out = time.perf_counter(), ""
    while time.perf_counter() - t0 < timeout:
        run_cell(page, index)
        page.wait_for_timeout(150)
        out = cell_text(page, index)
        if predicate(out):
            return out
        page.wait_for_timeout(350)
    raise AssertionError(f"cell {index} never showed {what or 'the expected output'}; last output: {out!r}; "
                         f"browser errors: {page.js_errors}")


def state(page, testid: str, root: str = "") -> dict:
    """The data-* attributes the widget JS sets on an element (``root``: a CSS scope)."""
    return page.evaluate(
        "([r, t]) => { const e = document.querySelector(`${r} [data-testid=\"${t}\"]`); "
        "return e ? Object.assign({}, e.dataset) : null; }",
        [root, testid],
    )


def wait_state(page, testid: str, cond_js: str, timeout: int = 20_000, root: str = "") -> dict:
    """Wait until ``cond_js`` (a JS expression over ``d``, the element's dataset) holds; return the dataset."""
    sel = f'{root} [data-testid="{testid}"]'.strip()
    page.wait_for_function(
        f"() => {{ const e = document.querySelector({sel!r}); if (!e) return false; const d = e.dataset; "
        f"return !!({cond_js}); }}",
        timeout=timeout,
    )
    return state(page, testid, root)


def assert_png_export(page, cell: int, png_path, min_size: tuple[int, int]) -> None:
    """Wait for cell ``cell`` to report the PNG export (``done=True`` or an error), then check the written file: a PNG
    of at least ``min_size`` (width, height) pixels."""
    out = poll_cell(page, cell, lambda s: "done=True" in s or ("error=None" not in s and "error=" in s), what="PNG")
    assert "done=True" in out, out
    raw = Path(png_path).read_bytes()
    assert raw[:8] == b"\x89PNG\r\n\x1a\n"
    w, h = struct.unpack(">II", raw[16:24])
    assert w >= min_size[0] and h >= min_size[1], (w, h)
