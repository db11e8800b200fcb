"""SinkExplorer's side of the non-finite policy (docs/tags.md, "Non-finite data"), and its head/layer arguments.

A NaN in α used to be drawn as 0 and an infinity set the colour scale (a blank grid), with no word. The explorer, its
``set_trace`` and the offline page now refuse such a trace with a ``SinkwidgetsValueError`` that counts the values
and names the heads, keys or map rows; ``head``/``layer`` of the wrong type raise a ``SinkwidgetsError`` naming the
argument instead of a traitlets ``TraitError``.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from sinkwidgets import SinkExplorer
from sinkwidgets.errors import SinkwidgetsError, SinkwidgetsTypeError, SinkwidgetsValueError
from sinkwidgets.widgets import save_html
from sinkwidgets.widgets.synthetic import synthetic_trace

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def clean():
    return synthetic_trace(T=24, n_layers=4, n_heads=3, keep_maps=[(1, 0), (2, 2)])


def _with(trace, **fields):
    return dataclasses.replace(trace, **fields)


def _alpha_with(trace, cells, value):
    a = np.array(trace.sink_scores, copy=True)
    for l, h, k in cells:
        a[l, h, k] = value
    return _with(trace, sink_scores=a)


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_nonfinite_alpha_is_refused_naming_heads_and_keys(clean, value):
    bad = _alpha_with(clean, [(2, 1, 5), (2, 1, 7), (3, 0, 0)], value)
    with pytest.raises(SinkwidgetsValueError) as info:
        SinkExplorer(bad)
    msg = str(info.value)
    assert "SinkExplorer(trace=...)" in msg and "trace.sink_scores" in msg
    assert "holds 3 NaN or infinite values in 2 of 12 heads" in msg, msg
    assert "L2H1 keys 5, 7" in msg and "L3H0 keys 0" in msg, msg
    assert "float32" in msg  # the fix
    assert isinstance(info.value, ValueError)  # `except ValueError` code keeps working


def test_nonfinite_kept_map_is_refused_naming_the_map_and_rows(clean):
    maps = np.array(clean.maps, copy=True)
    maps[1, 4, 2] = np.nan
    maps[1, 9, :3] = np.inf
    with pytest.raises(SinkwidgetsValueError, match=r"kept attention map of L2H2 \(trace.maps\[1\].*holds 4 NaN or "
                                                    r"infinite values in 2 query rows \(4, 9\)"):
        SinkExplorer(_with(clean, maps=maps))


def test_the_offline_page_and_set_trace_refuse_it_too(clean, tmp_path):
    bad = _alpha_with(clean, [(0, 0, 3)], np.nan)
    with pytest.raises(SinkwidgetsValueError, match=r"save_html\(trace=...\).*L0H0 keys 3"):
        save_html(bad, tmp_path / "x.html")
    assert not (tmp_path / "x.html").exists()
    ex = SinkExplorer(clean, layer=1, head=2)
    before = (ex.layer, ex.head, dict(ex._summary), list(ex._tokens))
    with pytest.raises(SinkwidgetsValueError, match=r"SinkExplorer.set_trace\(trace=...\).*L0H0 keys 3"):
        ex.set_trace(bad)
    assert ex.trace is clean and (ex.layer, ex.head, ex._summary, ex._tokens) == before  # left as it was


def test_finite_traces_and_unrecorded_summaries_still_show(clean):
    """NaN first-token mass / entropy mean "not recorded" (a SinkTrace fills them so): not refused."""
    tr = _with(clean, first_token_mass=np.full((4, 3), np.nan, np.float32), entropy=None)
    ex = SinkExplorer(tr)
    assert ex._summary["L"] == 4 and ex._summary["T"] == 24


@pytest.mark.parametrize(("kw", "name"), [
    ({"head": "2"}, "head"), ({"layer": "1"}, "layer"), ({"head": 2.0}, "head"), ({"layer": None, "head": [1]}, "head"),
])
def test_head_and_layer_of_the_wrong_type_name_the_argument(clean, kw, name):
    with pytest.raises(SinkwidgetsTypeError, match=rf"^{name}=.*{name} must be an integer.*e\.g\. {name}=0"):
        SinkExplorer(clean, **kw)


def test_head_and_layer_out_of_range_and_numpy_ints(clean):
    with pytest.raises(SinkwidgetsValueError, match=r"head=7: head 7 is out of range.*3 heads per layer \(0..2\)"):
        SinkExplorer(clean, layer=0, head=7)
    ex = SinkExplorer(clean, layer=np.int64(3), head=np.int32(1))
    assert (ex.layer, ex.head) == (3, 1)
    with pytest.raises(SinkwidgetsTypeError, match=r"^layer='2'"):
        ex.select("2", 0)
    with pytest.raises(SinkwidgetsError, match=r"^head=1.5"):
        ex.set_trace(clean, head=1.5)
    assert (ex.layer, ex.head) == (3, 1)
