"""What a new user sees first: tokens whose whitespace is visible, and ``find_sinks`` results that print short."""

from __future__ import annotations

import importlib
import pickle
import re

import numpy as np
import pytest

import sinkwidgets as sw
from sinkwidgets import metrics as M
from sinkwidgets._text import show_token

# kinds are marked per test: the module mixes unit tests with three that load SmolLM2 (tests/test_markers.py)


@pytest.mark.unit
@pytest.mark.parametrize(("raw", "shown"), [
    (" the", "\u2423the"),
    ("\n", "\u23ce"),
    ("\n\n", "\u23ce\u23ce"),
    ("\t", "\u21e5"),
    ("a\r\n", "a\u240d\u23ce"),
    (" " * 90, "\u2423\u00d790"),
    ("    ", "\u2423" * 4),  # up to max_run the run is written out
    ("\x00", "\u2400"),
    ("\u00a0", "\u237d"),
    ("\u3000", "\u2423"),  # other Unicode spaces
    ("", "\u2205"),
    ("plain", "plain"),
    ("<b>", "<b>"),  # display only: escaping is the caller's job (HTML, repr)
])
def test_show_token(raw, shown):
    assert show_token(raw) == shown


@pytest.mark.unit
def test_show_token_max_run():
    assert show_token(" " * 6, max_run=0) == "\u2423" * 6
    assert show_token("\n" * 6, max_run=5) == "\u23ce\u00d76"
    assert show_token("x" * 50) == "x" * 50  # runs of text are never shortened


def _alpha():
    """α ``[L=3, H=2, T=20]``: every head sinks on key 0; head (2, 1) also on key 5 (a space); one weak key."""
    a = np.full((3, 2, 20), 0.01, np.float32)
    a[:, :, 0] = [[0.9, 0.8], [0.7, 0.95], [0.6, 0.5]]
    a[2, 1, 5] = 0.4
    a[1, 0, 7] = 0.1
    return a


@pytest.mark.unit
def test_find_sinks_is_a_list_with_a_short_repr():
    a = _alpha()
    sinks = M.find_sinks(a, eps=0.2)
    assert isinstance(sinks, list) and isinstance(sinks, M.Sinks)
    assert len(sinks) == 7 and [s.alpha for s in sinks] == sorted((s.alpha for s in sinks), reverse=True)
    assert sinks == list(sinks) and sinks[:2] == list(sinks)[:2] and sinks[0].k == 0
    assert M.find_sinks(a, eps=0.2, exclude_first=True) == [M.Sink(2, 1, 5, pytest.approx(0.4), "", 15)]
    text = repr(sinks)
    assert text.startswith("Sinks(7 sinks in 6 heads, 3 of 3 layers, eps=0.2; top keys: ")
    assert "@0 in 6 heads" in text and "@5 in 1 head " in text
    assert "0.949999" not in text and len(text) < 200  # no full-precision floats, one short line
    assert repr(M.find_sinks(a, eps=0.99)) == "Sinks(no sinks, eps=0.99)"
    back = pickle.loads(pickle.dumps(sinks))
    assert back == sinks and back.eps == 0.2 and back.n_layers == 3


@pytest.mark.unit
def test_sinks_table_escapes_and_shows_whitespace():
    from sinkwidgets.widgets import synthetic_trace

    tr = synthetic_trace(T=24, n_layers=4, n_heads=2)
    tokens = list(tr.tokens)
    tokens[0] = "<script>alert(1)</script>"
    tr.tokens = tokens
    sinks = sw.find_sinks(tr, eps=0.2)
    assert sinks and sinks[0].k == 0
    page = sinks._repr_html_()
    assert "<script>" not in page and "&lt;script&gt;" in page
    assert page.count("<tr>") == min(len(sinks), M.Sinks.HTML_ROWS) + 1
    spaced = M.Sinks([M.Sink(0, 0, 3, 0.5, " \n", 10)], n_layers=1, eps=0.2)
    assert "\u2423\u23ce" in spaced._repr_html_() and "'\u2423\u23ce'@3" in repr(spaced)
    rows = sinks.to_records()
    assert rows[0] == {"layer": sinks[0].layer, "head": sinks[0].head, "k": 0, "token": tokens[0],
                       "alpha": sinks[0].alpha, "n_queries": sinks[0].n_queries}
    pd = pytest.importorskip("pandas")
    frame = sinks.to_frame()
    assert isinstance(frame, pd.DataFrame) and len(frame) == len(sinks)
    assert list(frame.columns) == ["layer", "head", "k", "token", "alpha", "n_queries"]


@pytest.mark.unit
def test_ticking_shows_the_elapsed_time_of_a_long_step(capsys, monkeypatch):
    import time

    from sinkwidgets.models._progress import ticking

    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    with ticking("converting smollm2-135m (once)", interval=0.05) as bar:
        assert bar is not None and not bar.disable
        time.sleep(0.3)
    err = capsys.readouterr().err
    assert err.count("converting smollm2-135m (once): 00:00") >= 3, err  # redrawn while the step ran
    with ticking("quick", delay=5.0, interval=0.02):
        time.sleep(0.1)
    with ticking("quiet", enabled=False) as bar:
        assert bar is None
    assert "quick" not in capsys.readouterr().err  # shorter than its delay: nothing shown


# ----------------------------------------------------------------------------- layers=/heads= messages (issue 22)
@pytest.mark.unit
@pytest.mark.parametrize(("call", "kind", "match"), [
    # collect(layers=[-31]) used to name layer -1 (counted from the end first, then refused)
    (lambda c, a: c._norm_layers([-31], 30), "value", r"layers=\[-31\]: layer -31 is out of range.*-30\.\.-1"),
    # heads="all" used to be iterated as characters ("got 'a'")
    (lambda c, a: c._norm_heads("all", 30, 9), "value", r"heads='all'.*270 heads.*heads=\[\(2, 2\)"),
    (lambda c, a: c._norm_heads([(30, 0)], 30, 9), "value", r"heads=\(30, 0\): layer 30 is out of range.*0\.\.29"),
    (lambda c, a: c._norm_heads([(1, 2, 3)], 30, 9), "type", r"heads=.*\(layer, head\) pairs"),
    (lambda c, a: c._norm_heads([(0, 1)], 30, 9, "maps") and c._norm_heads("L0H9", 30, 9, "maps"), "value",
     r"maps='L0H9': head 9 is out of range"),
    (lambda c, a: a._parse_keep_maps([40], 30, 9), "value", r"keep_maps=40: layer 40 is out of range.*0\.\.29"),
    (lambda c, a: a._parse_keep_maps([(1, 9)], 30, 9), "value", r"keep_maps=\(1, 9\): head 9 is out of range"),
    (lambda c, a: a._parse_keep_maps(2.5, 30, 9), "type", r"keep_maps=2\.5 is not understood.*e\.g\. keep_maps="),
    (lambda c, a: a._parse_keep_maps(["x"], 30, 9), "type", r"entries must be a layer.*got 'x'"),
    (lambda c, a: a._parse_layers([-31], 30), "value", r"keep_head_outputs=\[-31\]: layer -31 is out of range"),
    (lambda c, a: a._parse_layers(1.0, 30, "keep_head_values"), "type", r"keep_head_values=1\.0"),
])
def test_layer_and_head_arguments_name_the_argument_value_and_fix(call, kind, match):
    from sinkwidgets import errors
    c = importlib.import_module("sinkwidgets.tags.collect")  # sw.tags.collect is the function
    from sinkwidgets.tracing import api as a

    with pytest.raises(errors.SinkwidgetsError, match=match) as info:
        call(c, a)
    assert isinstance(info.value, ValueError)  # existing `except ValueError` code keeps working
    assert isinstance(info.value, TypeError) == (kind == "type")


@pytest.mark.unit
def test_layer_and_head_arguments_count_from_the_end_and_keep_their_forms():
    c = importlib.import_module("sinkwidgets.tags.collect")  # sw.tags.collect is the function
    from sinkwidgets.tracing import api as a

    assert c._norm_layers([-1, 0, 0], 30) == [0, 29] and c._norm_layers("all", 4) == [0, 1, 2, 3]
    assert c._norm_layers("2-4", 30) == [2, 3, 4] and c._norm_layers(None, 30) == c._norm_layers([], 30) == []
    assert c._norm_heads([(-1, 2), "L0H1", (0, 1)], 30, 9) == [(0, 1), (29, 2)]
    assert c._norm_heads((3, 4), 30, 9) == [(3, 4)] and c._norm_heads((), 30, 9) == []
    assert c._norm_heads(np.array([[1, 2], [0, -1]]), 30, 9) == [(0, 8), (1, 2)]
    assert a._parse_keep_maps([(-1, 2), 3, np.int64(3)], 30, 9) == {3: list(range(9)), 29: [2]}
    assert a._parse_keep_maps(None, 30, 9) == {} and len(a._parse_keep_maps("all", 3, 2)) == 3
    assert a._parse_layers(-1, 30) == [29] and a._parse_layers(True, 3) == [0, 1, 2] and a._parse_layers(False, 3) == []


@pytest.mark.models
def test_collect_and_trace_refuse_bad_layers_before_running(smollm2, monkeypatch):
    from sinkwidgets import errors
    from sinkwidgets.tracing import api

    def boom(*a, **k):
        raise AssertionError("the model ran before the arguments were checked")

    monkeypatch.setattr(api, "run_units", boom)
    with pytest.raises(errors.SinkwidgetsValueError, match=r"layers=\[-31\]: layer -31 is out of range.*0\.\.29"):
        sw.tags.collect(smollm2, ["A b."], layers=[-31])
    with pytest.raises(errors.SinkwidgetsValueError, match=r"heads='all'.*270 heads"):
        sw.tags.collect(smollm2, ["A b."], heads="all")
    with pytest.raises(errors.SinkwidgetsValueError, match=r"keep_head_outputs=\[-31\]"):
        sw.trace(smollm2, "A b.", keep_head_outputs=[-31])


# ----------------------------------------------------------------------------- progress of long steps (issue 22)
def _toy_cities_data(d: int = 8):
    from sinkwidgets import tags
    from sinkwidgets.tags import TagData

    ds = tags.load_dataset("cities")
    rng = np.random.default_rng(0)
    N = len(ds)
    X = rng.standard_normal((N, d)) + np.outer(2.0 * ds.labels - 1.0, np.eye(d)[0])
    vals = [rng.standard_normal((1, 3, d)) for _ in range(N)]
    s = np.full((2, 2, 3), 0.1)
    s[:, :, 0] = 0.9
    return TagData.from_prompts([["t0", " a", " b"]] * N, heads=[(0, 0)], head_values=vals, head_outputs=vals,
                                sink_scores=[s] * N, pooled_mean=np.stack([X, X], 1), pooled_layers=[1, 2], labels=ds.labels,
                                groups=list(ds.groups))


@pytest.mark.unit
def test_probe_report_grid_shows_a_bar_over_its_cells(capsys, monkeypatch):
    from sinkwidgets import tags

    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    data = _toy_cities_data()
    kw = dict(layers=[1, 2], pooling="mean", heads=[(0, 0)], rank=1, seeds=1, n_random=10, folds=2)
    g = tags.probe_report(data, "cities", progress=True, **kw)
    err = capsys.readouterr().err
    assert len(g) == 2 and "probe grid" in err and "4/4" in err, err  # 2 cells x (1 seed + random draws)
    tags.probe_report(data, "cities", progress=False, **kw)
    assert "probe grid" not in capsys.readouterr().err
    with pytest.raises(sw.errors.SinkwidgetsTypeError, match="progress='yes'"):
        tags.probe_report(data, "cities", progress="yes", **kw)


@pytest.mark.models
def test_streaming_ppl_shows_a_bar_over_its_passes(smollm2, capsys, monkeypatch):
    from sinkwidgets.streaming import streaming_ppl
    from sinkwidgets.tracing.options import RunOptions

    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    text = " ".join(f"word{i} is here." for i in range(40))
    kw = dict(window=16, n_sink=1, method="mask", max_tokens=64)
    r = streaming_ppl(smollm2, text, recompute=4, options=RunOptions(progress=True), **kw)
    err = capsys.readouterr().err
    # dense + window + sink1 mask + recompute = 4 passes, each named while it runs
    assert "streaming ppl" in err and "4/4" in err and "(sink1 mask)" in err and "(recompute)" in err, err
    quiet = streaming_ppl(smollm2, text, options=RunOptions(progress=False), **kw)
    assert "streaming ppl" not in capsys.readouterr().err
    np.testing.assert_array_equal(quiet.nll["sink1 mask"], r.nll["sink1 mask"])  # the bar changes no number


@pytest.mark.unit
def test_interventions_doc_cites_only_what_ships():
    """docs/interventions.md may point at files of the repository only (a reader of the package has no shared/)."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    text = (root / "docs" / "interventions.md").read_text(encoding="utf-8")
    assert "shared/" not in text
    for cited in ("benchmarks/streaming_cost.py", "benchmarks/results/streaming_cost.json",
                  "tests/test_interventions.py", "tests/test_streaming.py"):
        assert cited in text and (root / cited).exists(), cited


@pytest.mark.models
def test_auto_head_choice_shows_a_bar_over_its_passes(smollm2, capsys, monkeypatch):
    from sinkwidgets.tags import probes

    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    texts = sw.tags.load_dataset("cities").texts[:4]
    chosen, evs = probes._auto_heads_layers(smollm2, texts, [2], 4, 0.5, 1, 2, True)
    err = capsys.readouterr().err
    assert len(chosen[2]) == 2 and "choosing heads" in err, err
    done = [int(a) for a, b in re.findall(r"(\d+)/(\d+)", err) if a == b]  # the bar completed: n/n passes
    assert done and max(done) >= 2, err  # the α pass and at least one EV pass
    probes._auto_heads_layers(smollm2, texts, [2], 4, 0.5, 1, 2, False)
    assert "choosing heads" not in capsys.readouterr().err
