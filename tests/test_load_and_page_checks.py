"""Trace files and offline pages reject bad values up front: an out-of-range map_index or a format version below
1 in a SinkTrace file, and save_html settings the page's JavaScript would choke on."""

import json
import zipfile

import numpy as np
import pytest

from sinkwidgets import SinkTrace, SinkTraceFormatError
from sinkwidgets.widgets import save_html
from sinkwidgets.widgets.standalone import check_state

pytestmark = pytest.mark.unit


def make(T=6, L=2, H=3):
    rng = np.random.default_rng(0)
    return SinkTrace(sink_scores=rng.random((L, H, T)), tokens=[f"t{i}" for i in range(T)],
                     first_token_mass=rng.random((L, H)), maps=rng.random((2, T, T)).astype(np.float16),
                     map_index=[(0, 1), (1, 2)], meta={"model": "unit"})


def _rewrite(src, dst, change):
    """Copy a saved trace, letting ``change(name, array_or_header)`` replace members."""
    with np.load(src) as z:
        arrays = {k: z[k] for k in z.files}
    header = json.loads(bytes(arrays.pop("__header__")).decode())
    header, arrays = change(header, arrays)
    arrays["__header__"] = np.frombuffer(json.dumps(header).encode(), dtype=np.uint8)
    np.savez(dst, **arrays)
    return dst


@pytest.mark.parametrize("index", [[(0, 1), (2, 0)], [(0, 3), (1, 2)], [(-1, 0), (1, 2)]])
def test_load_rejects_out_of_range_map_index(tmp_path, index):
    good = make().save(tmp_path / "good.npz")
    bad = _rewrite(good, tmp_path / "bad.npz",
                   lambda h, a: (h, {**a, "map_index": np.asarray(index, dtype=np.int32)}))
    with pytest.raises(SinkTraceFormatError, match=r"map_index.*outside this trace's 2 layers x 3 heads"):
        SinkTrace.load(bad)


def test_construction_rejects_out_of_range_map_index():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="map_index"):
        SinkTrace(sink_scores=rng.random((2, 3, 4)), tokens=list("abcd"), maps=np.zeros((1, 4, 4)),
                  map_index=[(5, 0)])


@pytest.mark.parametrize("version", [0, -1, True, "1", 1.0, None])
def test_load_rejects_invalid_format_versions(tmp_path, version):
    good = make().save(tmp_path / "good.npz")
    bad = _rewrite(good, tmp_path / "bad.npz", lambda h, a: ({**h, "format_version": version}, a))
    with pytest.raises(SinkTraceFormatError, match="format version"):
        SinkTrace.load(bad)


def test_valid_file_still_loads(tmp_path):
    back = SinkTrace.load(make().save(tmp_path / "ok.npz"))
    assert back.map_index.tolist() == [[0, 1], [1, 2]]
    assert zipfile.is_zipfile(tmp_path / "ok.npz")


@pytest.mark.parametrize(("state", "match"), [
    ({"eps": "x"}, r"eps must be a number in \[0, 1\)"),
    ({"eps": 1.5}, "eps must be"),
    ({"eps": float("nan")}, "eps must be"),
    ({"layer": 2}, r"layer must be an int in 0\.\.1"),
    ({"layer": "0"}, "layer must be"),
    ({"head": True}, "head must be"),
    ({"token": 6}, r"token must be an int in 0\.\.5"),
    ({"metric": "mass"}, "metric must be one of"),
    ({"scale": "sqrt"}, "scale must be"),
    ({"strip_mode": 1}, "strip_mode must be"),
    ({"view": [0, 10, 0, 3]}, "view must be"),
    ({"view": "all"}, "view must be"),
    ({"heatmap_size": 1e9}, "heatmap_size must be"),
    ({"colour": "red"}, "unknown setting"),
])
def test_save_html_rejects_bad_state(tmp_path, state, match):
    with pytest.raises(ValueError, match=match):
        save_html(make(), tmp_path / "p.html", state=state)
    assert not (tmp_path / "p.html").exists() and list(tmp_path.iterdir()) == []


def test_save_html_accepts_good_state(tmp_path):
    p = save_html(make(), tmp_path / "p.html", state={"eps": 0.2, "layer": 1, "head": 2, "metric": "entropy",
                                                       "view": [0, 3, 0, 3], "token": np.int64(2)})
    text = p.read_text()
    assert '"eps": 0.2' in text and '"metric": "entropy"' in text


def test_page_metrics_match_the_widgets():
    """The offline page accepts exactly the live widget's metrics (one definition, widgets._state.METRICS)."""
    from sinkwidgets.widgets._widget import METRICS

    for metric in METRICS:
        assert check_state(make(), {"metric": metric}) == {"metric": metric}
    with pytest.raises(ValueError, match="metric"):
        check_state(make(), {"metric": "not_a_metric"})
    assert check_state(make(), None) == {}
