"""Unit tests of the widget classes, messages, offline HTML and static charts (no browser)."""

from __future__ import annotations

import json
import re
import struct

import numpy as np
import pytest

import sinkwidgets as sw
from sinkwidgets import metrics
from sinkwidgets.widgets import (
    AttentionHeatmap,
    SinkExplorer,
    SinkGrid,
    TokenStrip,
    WidgetValueError,
    charts,
    save_html,
    synthetic_trace,
)
from sinkwidgets.widgets import _serialization as ser
from sinkwidgets.widgets import _widget as wmod
from sinkwidgets.widgets.synthetic import _summaries, head_params, synthetic_attention


@pytest.fixture(scope="module")
def tr():
    return synthetic_trace(T=96, keep_maps=[(3, 0), (3, 1), 12])


class Sent:
    """Captures widget.send() (no kernel in unit tests)."""

    def __init__(self, widget, monkeypatch):
        self.msgs = []
        monkeypatch.setattr(widget, "send", lambda content, buffers=None: self.msgs.append((content, buffers)))


# ----------------------------------------------------------------------------- synthetic data is right
@pytest.mark.unit
def test_synthetic_summaries_match_the_full_map():
    s, r, w = head_params(2, 2, 150, seed=3)
    for ly, h in [(0, 0), (1, 1)]:
        A = synthetic_attention(s[ly, h], r[ly, h], w[ly, h], dtype=np.float64)
        np.testing.assert_allclose(A.sum(1), 1, atol=1e-12)
        assert np.all(np.triu(A, 1) == 0)
        alpha, ftm, ent = _summaries(s[ly, h], r[ly, h], w[ly, h])
        np.testing.assert_allclose(alpha, metrics.sink_scores(A[None, None])[0, 0], atol=1e-9)
        assert ftm == pytest.approx(A[1:, 0].mean())
        rows = [-(x[x > 0] * np.log(x[x > 0])).sum() for x in A[1:]]
        assert ent == pytest.approx(np.mean(rows))


# ----------------------------------------------------------------------------- construction and errors
@pytest.mark.unit
def test_trace_none_is_a_clear_type_error():
    with pytest.raises(TypeError, match=r"SinkExplorer\(trace=None\): pass a SinkTrace"):
        SinkExplorer(None)
    with pytest.raises(TypeError, match="needs a SinkTrace .* got int"):
        SinkGrid(3)


@pytest.mark.unit
def test_accepts_a_saved_trace_path(tr, tmp_path):
    p = tr.save(tmp_path / "t.npz")
    ex = SinkExplorer(str(p))
    assert ex.trace.n_tokens == 96


@pytest.mark.unit
def test_default_head_is_the_strongest_kept_map(tr):
    ex = SinkExplorer(tr)
    kept = [tuple(x) for x in tr.map_index]
    assert (ex.layer, ex.head) in kept
    assert tr.first_token_mass[ex.layer, ex.head] == max(tr.first_token_mass[k] for k in kept)


@pytest.mark.unit
@pytest.mark.parametrize(("name", "value", "match"), [
    ("layer", 30, r"layer 30 is out of range: this trace has 30 layers \(0..29\)"),
    ("head", -1, r"head -1 is out of range: this trace has 9 heads per layer \(0..8\)"),
    ("token", 96, r"token 96 is out of range: the prompt has 96 tokens \(0..95\)"),
    ("eps", 1.0, r"eps must be in \[0, 1\)"),
    ("metric", "nope", "metric 'nope' is not one of"),
    ("scale", "sqrt", "scale must be 'linear' or 'log'"),
    ("strip_mode", "min", "strip_mode must be 'max'"),
])
def test_out_of_range_settings_raise_value_error(tr, name, value, match):
    ex = SinkExplorer(tr)
    with pytest.raises(ValueError, match=match):
        setattr(ex, name, value)
    with pytest.raises(WidgetValueError):
        setattr(ex, name, value)


@pytest.mark.unit
def test_select_and_zoom_validate(tr):
    ex = SinkExplorer(tr)
    ex.select(12, 8)
    assert (ex.layer, ex.head) == (12, 8) and ex._map["status"] == "kept"
    with pytest.raises(ValueError, match="layer 31 is out of range"):
        ex.select(31, 0)
    ex.zoom_to(10, 20, 0, 10)
    assert ex.view == [10.0, 20.0, 0.0, 10.0]
    with pytest.raises(ValueError, match="need 0 <= q0 < q1 <= T"):
        ex.zoom_to(10, 5, 0, 10)
    ex.reset_zoom()
    assert ex.view == [0.0, 96.0, 0.0, 96.0]


@pytest.mark.unit
def test_views_and_which_compute_maps(tr):
    assert SinkGrid(tr)._view == "grid" and SinkGrid(tr)._map == {}
    assert TokenStrip(tr)._view == "strip" and TokenStrip(tr)._map == {}
    hm = AttentionHeatmap(tr, layer=3, head=1)
    assert hm._view == "heatmap" and hm._map["status"] == "kept" and hm._map["overview"] is not None


@pytest.mark.unit
def test_lazy_export_from_the_package():
    assert sw.SinkExplorer is SinkExplorer and sw.SinkGrid is SinkGrid
    assert sw.AttentionHeatmap is AttentionHeatmap and sw.TokenStrip is TokenStrip


@pytest.mark.unit
def test_summary_state_is_binary_and_faithful(tr):
    ex = SinkExplorer(tr)
    s = ex._summary
    assert (s["L"], s["H"], s["T"]) == (30, 9, 96)
    alpha = ser.decode_array(s["alpha"], s["alpha"]["data"])
    np.testing.assert_allclose(alpha, tr.sink_scores, rtol=1e-3, atol=1e-6)
    kept = ser.decode_array(s["kept"], s["kept"]["data"])
    assert kept.sum() == len(tr.map_index) and kept[12].all()
    assert s["min_queries"] == metrics.DEFAULT_MIN_QUERIES
    assert ex._tokens == tr.tokens


@pytest.mark.unit
def test_head_without_map_says_how_to_keep_it(tr):
    ex = SinkExplorer(tr)
    ex.select(20, 4)
    assert ex._map["status"] == "missing" and ex._map["overview"] is None
    assert "map not kept: trace with keep_maps=[20]" in ex._map["message"]


# ----------------------------------------------------------------------------- messages
@pytest.mark.unit
def test_tile_request_is_answered_with_one_binary_buffer(tr, monkeypatch):
    ex = SinkExplorer(tr, layer=3, head=0)
    sent = Sent(ex, monkeypatch)
    ex._on_custom_msg(ex, {"type": "tile", "id": "v1:1", "layer": 3, "head": 0, "level": 0, "ty": 0, "tx": 0}, [])
    (content, buffers), = sent.msgs
    assert content["ok"] and content["id"] == "v1:1" and content["shape"] == [96, 96]
    tile = ser.decode_array(content, buffers[0])
    np.testing.assert_allclose(tile, tr.get_map(3, 0), rtol=1e-3, atol=1e-7)
    json.dumps(content)  # the JSON part is JSON
    ex._on_custom_msg(ex, {"type": "tile", "id": "v1:2", "layer": 20, "head": 0, "level": 0, "ty": 0, "tx": 0}, [])
    assert sent.msgs[-1][0]["ok"] is False and "no attention map" in sent.msgs[-1][0]["error"]
    ex._on_custom_msg(ex, {"type": "tile", "id": "v1:3", "layer": 3, "head": 0, "level": 0, "ty": 9, "tx": 0}, [])
    assert sent.msgs[-1][0]["ok"] is False and "outside" in sent.msgs[-1][0]["error"]


@pytest.mark.unit
def test_save_png_without_a_front_end_raises_at_once(tr, tmp_path):
    ex = SinkExplorer(tr)
    with pytest.raises(RuntimeError, match="needs the widget displayed in a live notebook front-end"):
        ex.save_png(tmp_path / "x.png")


@pytest.mark.unit
def test_save_png_round_trip_and_timeout(tr, tmp_path, monkeypatch):
    ex = SinkExplorer(tr)
    ex._frontend = 1
    monkeypatch.setattr(type(ex), "comm", object(), raising=False)
    sent = Sent(ex, monkeypatch)
    export = ex.save_png(tmp_path / "out" / "v.png")
    assert export.pending and "waiting for the browser" in repr(export)
    rid = sent.msgs[-1][0]["id"]
    png = b"\x89PNG\r\n\x1a\n" + b"0" * 20
    ex._on_custom_msg(ex, {"type": "png", "id": rid, "ok": True}, [png])
    assert export.done and export.path.read_bytes() == png and export.nbytes == len(png)
    late = ex.save_png(tmp_path / "late.png", timeout=0.0)
    assert not late.pending and "no PNG from the front-end within 0 s" in late.error
    ex._on_custom_msg(ex, {"type": "png", "id": sent.msgs[-1][0]["id"], "ok": True}, [png])
    assert not (tmp_path / "late.png").exists()  # an answer after the timeout is dropped
    bad = ex.save_png(tmp_path / "bad.png")
    ex._on_custom_msg(ex, {"type": "png", "id": sent.msgs[-1][0]["id"], "ok": False, "error": "toBlob failed"}, [])
    assert "toBlob failed" in bad.error


# ----------------------------------------------------------------------------- maps on demand
@pytest.mark.unit
def test_missing_map_is_computed_with_a_model_and_cached(tr, monkeypatch):
    calls = []

    def fake_trace(model, text, add_bos=None, keep_maps=None):
        calls.append((model, text, add_bos, keep_maps))
        (ly, h), = keep_maps
        s, r, w = head_params(30, 9, tr.n_tokens, seed=0)
        A = synthetic_attention(s[ly, h], r[ly, h], w[ly, h])
        return sw.SinkTrace(tr.sink_scores, tr.tokens, maps=A[None], map_index=[[ly, h]])

    monkeypatch.setattr(sw, "trace", fake_trace, raising=False)
    ex = SinkExplorer(tr, model="MODEL")
    ex.select(20, 4)
    assert ex._map["status"] == "computed" and ex._map["overview"] is not None
    assert calls == [("MODEL", tr.meta["text"], False, [(20, 4)])]
    ex.select(3, 0)
    ex.select(20, 4)
    assert len(calls) == 1  # cached


@pytest.mark.unit
def test_model_failure_is_shown_not_raised(tr, monkeypatch):
    def broken(*a, **k):
        raise OSError("model files missing")

    monkeypatch.setattr(sw, "trace", broken, raising=False)
    ex = SinkExplorer(tr, model="MODEL")
    ex.select(21, 0)
    assert ex._map["status"] == "error" and "model files missing" in ex._map["message"]


@pytest.mark.models
def test_missing_map_computed_with_real_smollm2():
    model = sw.load_model("smollm2-135m")
    base = sw.trace(model, "Attention sinks: the first token collects attention.", keep_maps=[(3, 0)])
    ex = SinkExplorer(base, model=model, layer=3, head=0)
    ex.select(14, 2)
    assert ex._map["status"] == "computed"
    ref = sw.trace(model, base.meta["text"], add_bos=base.meta["add_bos"], keep_maps=[(14, 2)]).get_map(14, 2)
    ov = ser.decode_array(ex._map["overview"], ex._map["overview"]["data"])
    np.testing.assert_allclose(ov, ref, atol=2e-3)


# ----------------------------------------------------------------------------- offline HTML
@pytest.mark.unit
def test_save_html_is_self_contained(tr, tmp_path):
    evil = list(tr.tokens)
    evil[1] = "</script><img src=x onerror=alert(1)>"
    t2 = sw.SinkTrace(tr.sink_scores, evil, first_token_mass=tr.first_token_mass, entropy=tr.entropy,
                      maps=tr.maps, map_index=tr.map_index, meta=tr.meta)
    out = save_html(t2, tmp_path / "a" / "scan.html", title="Sinks & <friends>")
    text = out.read_text(encoding="utf-8")
    assert "http://" not in text and "https://" not in text
    assert "</script><img" not in text and "\\u003c/script\\u003e\\u003cimg" in text
    assert "<title>Sinks &amp; &lt;friends&gt;</title>" in text
    assert text.count('data-sw-buffer="') >= 6  # α, metrics, kept mask, overviews: base64 binary
    state = json.loads(re.search(r'<script type="application/json" id="sw-state">(.*?)</script>', text, re.S).group(1))
    assert state["state"]["_summary"]["alpha"]["data"] == {"$buffer": 0}
    assert set(state["maps"]) == {f"{ly},{h}" for ly, h in tr.map_index}
    assert "export default" in text and "mountStandalone(" in text


@pytest.mark.unit
def test_set_trace_builds_only_the_map_of_the_new_head(tr, monkeypatch):
    ex = SinkExplorer(tr, layer=3, head=0)
    calls = []
    real = wmod.MapStore.map_state

    def spy(store, layer, head, *a, **kw):
        calls.append((layer, head))
        return real(store, layer, head, *a, **kw)

    monkeypatch.setattr(wmod.MapStore, "map_state", spy)
    ex.set_trace(tr, layer=5, head=4)
    assert calls == [(5, 4)] and (ex._map["layer"], ex._map["head"]) == (5, 4)


def _buffer_refs(obj):
    """Every ``{"$buffer": i}`` index in an offline page's JSON payload."""
    if isinstance(obj, dict):
        if set(obj) == {"$buffer"}:
            return [obj["$buffer"]]
        return [i for v in obj.values() for i in _buffer_refs(v)]
    if isinstance(obj, list):
        return [i for v in obj for i in _buffer_refs(v)]
    return []


@pytest.mark.unit
def test_save_html_embeds_each_buffer_once(tr, tmp_path):
    ly, h = (int(x) for x in tr.map_index[0])
    text = SinkExplorer(tr, layer=ly, head=h).to_html(tmp_path / "once.html").read_text(encoding="utf-8")
    payload = json.loads(re.search(r'id="sw-state">(.*?)</script>', text, re.S).group(1))
    refs = _buffer_refs(payload)
    n_tags = text.count('data-sw-buffer="')
    assert sorted(set(refs)) == list(range(n_tags)) and len(refs) > n_tags  # the shown map is referenced twice
    assert payload["state"]["_map"] == payload["maps"][f"{ly},{h}"]  # same $buffer indices, one embedded copy


@pytest.mark.unit
def test_save_html_from_widget_keeps_the_view(tr, tmp_path):
    ex = SinkExplorer(tr, layer=12, head=3, eps=0.25, metric="sinks_per_head")
    text = ex.to_html(tmp_path / "v.html").read_text(encoding="utf-8")
    st = json.loads(re.search(r'id="sw-state">(.*?)</script>', text, re.S).group(1))["state"]
    assert (st["layer"], st["head"], st["eps"], st["metric"]) == (12, 3, 0.25, "sinks_per_head")
    with pytest.raises(ValueError, match="view must be one of"):
        save_html(tr, tmp_path / "x.html", view="table")


@pytest.mark.unit
def test_offline_maps_shrink_to_the_budget(monkeypatch):
    big = synthetic_trace(T=600, keep_maps=[3, 4])  # 18 maps
    from sinkwidgets.widgets import standalone

    maps = standalone.offline_maps(big, budget=2 * 1024 * 1024)
    assert len(maps) == 18
    total = sum(len(m["overview"]["data"]) for m in maps.values())
    assert total <= 2 * 1024 * 1024
    assert all(m["rows"] <= 256 for m in maps.values())


# ----------------------------------------------------------------------------- static charts (vl-convert)
def _png_size(path):
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


@pytest.mark.unit
def test_grid_values_match_metrics(tr):
    np.testing.assert_array_equal(charts.grid_values(tr, "sinks_per_head", eps=0.2),
                                  metrics.sinks_per_head(tr, eps=0.2).counts)
    np.testing.assert_array_equal(charts.grid_values(tr, "sink_flag", eps=0.3, token=0),
                                  metrics.sink_head_mask(tr, k=0, eps=0.3))
    np.testing.assert_allclose(charts.grid_values(tr, "alpha", token=5), tr.sink_scores[:, :, 5])
    with pytest.raises(ValueError, match="token 500 is out of range"):
        charts.grid_values(tr, "alpha", token=500)


@pytest.mark.unit
@pytest.mark.parametrize("metric", wmod.METRICS)
def test_grid_chart_png(tr, tmp_path, metric):
    w, h = _png_size(charts.save_png(charts.grid_chart(tr, metric=metric), tmp_path / "g.png"))
    assert w > 150 and h > 400


@pytest.mark.unit
def test_heatmap_chart_png_svg_and_missing_map(tr, tmp_path):
    svg = charts.save_svg(charts.heatmap_chart(tr, 3, 0), tmp_path / "h.svg").read_text()
    assert svg.startswith("<svg") and "layer 3, head 0" in svg
    w, h = _png_size(charts.save_png(charts.heatmap_chart(tr, 12, 2, scale="log"), tmp_path / "h.png"))
    assert w > 400 and h > 400
    missing = charts.save_svg(charts.heatmap_chart(tr, 20, 0), tmp_path / "m.svg").read_text()
    assert "map not kept: trace with keep_maps=[20]" in missing
    assert _png_size(charts.save_png(charts.token_chart(tr, 3), tmp_path / "t.png"))[0] > 300
    with pytest.raises(ValueError, match="layer 40 is out of range"):
        charts.heatmap_chart(tr, 40, 0)


@pytest.mark.unit
def test_heatmap_chart_downsamples_long_maps(tmp_path):
    long = synthetic_trace(T=1000, keep_maps=[(3, 0)])
    spec = charts._spec(charts.heatmap_chart(long, 3, 0, max_cells=64))
    rows = spec["vconcat"][1]["data"]["values"]
    assert len(rows) <= 64 * 65 // 2 + 64  # max-pooled, lower triangle only
