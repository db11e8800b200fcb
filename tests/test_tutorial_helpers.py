"""Package code the tutorials use: sw.charts (norms / outliers / weights), sinkwidgets.lessons (handmade head,
summaries, inputs, q-k geometry), and the public API around them (dir(sw), TagData, one softmax1)."""

from __future__ import annotations

import numpy as np
import pytest

import sinkwidgets as sw
from sinkwidgets import charts
from sinkwidgets.lessons import handmade, summaries


def _trace_with_outlier(L=6, H=2, T=8):
    rng = np.random.default_rng(0)
    alpha = rng.uniform(0, 0.2, (L, H, T)).astype(np.float32)
    norms = rng.uniform(10, 20, (L, T)).astype(np.float32)
    norms[3:, 0] = 5000.0  # token 0 becomes a residual peak from layer 3
    K = 4
    top = np.tile(np.array([50.0, -40.0, 30.0, 20.0], np.float32), (L, 1))
    tok = np.tile(np.array([1, 2, 3, 4], np.int32), (L, 1))
    ch = np.tile(np.array([7, 8, 9, 10], np.int32), (L, 1))
    top[3:, 0], tok[3:, 0], ch[3:, 0] = -4000.0, 0, 42  # channel 42 on token 0 is massive from layer 3
    med = np.full(L, 0.5, np.float32)
    return sw.SinkTrace(alpha, [f"t{i}" for i in range(T)], resid_norms=norms, top_activations=top,
                        top_act_tokens=tok, top_act_channels=ch, median_abs_activation=med,
                        meta={"model": "synthetic"}), K


# ----------------------------------------------------------------------------- handmade head
@pytest.mark.unit
def test_softmax1_equals_zero_kv_token():
    for seed in range(5):
        q, K, V = handmade.example_head(seed=seed, n_keys=5, d=4)
        K0, V0 = handmade.prepend_zero_kv(K, V)
        a, b = handmade.attend(q, K0, V0, "softmax"), handmade.attend(q, K, V, "softmax1")
        np.testing.assert_allclose(a.output, b.output, atol=1e-12)
        np.testing.assert_allclose(a.weights[1:], b.weights, atol=1e-12)


@pytest.mark.unit
def test_normalisers():
    z = np.array([-3.0, 0.0, 2.0, 800.0])  # 800 would overflow a naive exp
    assert np.isclose(handmade.softmax(z).sum(), 1.0)
    s1 = handmade.softmax1(z)
    assert np.isfinite(s1).all() and s1.sum() <= 1.0 + 1e-12
    assert handmade.softmax1(np.array([-3.0, 0.0, 2.0])).sum() < 1.0
    np.testing.assert_allclose(handmade.softmax1(np.array([0.0])), [0.5])
    np.testing.assert_allclose(handmade.sigmoid(np.array([0.0, -1e4, 1e4])), [0.5, 0.0, 1.0])
    q, K, V = handmade.example_head()
    assert (handmade.logits(q, K) < 0).all()  # the example query matches no key
    with pytest.raises(ValueError, match="kind"):
        handmade.attend(q, K, V, "relu")
    with pytest.raises(ValueError, match="same d"):
        handmade.logits(q[:2], K)


@pytest.mark.unit
def test_weights_chart():
    ch = charts.weights_chart({"softmax": [0.5, 0.5], "softmax1": [0.2, 0.1]}, labels=["a", "b"])
    assert "facet" in ch.to_dict()
    with pytest.raises(ValueError, match="same length"):
        charts.weights_chart({"a": [1.0], "b": [0.5, 0.5]})


# ----------------------------------------------------------------------------- summaries
@pytest.mark.unit
def test_norm_ratio_and_outliers():
    tr, _ = _trace_with_outlier()
    r = summaries.norm_ratio(tr, 0)
    assert r.shape == (6,) and (r[:3] < 2).all() and (r[3:] > 100).all()
    out = summaries.outlier_channels(tr)
    assert len(out) == 1
    o = out[0]
    assert (o.token, o.channel, o.first_layer, o.last_layer, o.n_layers, o.peak) == (0, 42, 3, 5, 3, -4000.0)
    assert o.peak_ratio == pytest.approx(8000.0)
    with pytest.raises(ValueError, match="out of range"):
        summaries.norm_ratio(tr, 99)
    with pytest.raises(TypeError):
        summaries.norm_ratio(np.zeros(3))


@pytest.mark.unit
def test_attention_to_and_special_positions():
    T = 4
    A = np.tril(np.ones((T, T))) / np.arange(1, T + 1)[:, None]
    tr = sw.SinkTrace(np.zeros((1, 1, T)), ["[CLS]", "hi", ".", "[SEP]"], maps=A[None].astype(np.float32),
                      map_index=[[0, 0]])
    pos = summaries.special_positions(tr)
    assert pos == {"cls": [0], "sep": [3], "punct": [2], "other": [1]}
    np.testing.assert_allclose(summaries.attention_to(tr, [0]), [[np.mean(1 / np.arange(1, T + 1))]])
    np.testing.assert_allclose(summaries.attention_to(tr, [0, 1], queries=[1]), [[1.0]])
    tr2 = sw.SinkTrace(np.zeros((2, 1, T)), ["a"] * T)
    assert np.isnan(summaries.attention_to(tr2, [0])).all()  # no maps kept
    with pytest.raises(ValueError):
        summaries.attention_to(tr, [9])


# ----------------------------------------------------------------------------- charts
@pytest.mark.unit
def test_norm_and_outlier_charts(tmp_path):
    tr, K = _trace_with_outlier()
    rows = charts.norm_rows(tr)
    assert len(rows) == 6 * 8 and max(r["norm"] for r in rows) == 5000.0
    orows = charts.outlier_rows(tr)
    assert len(orows) == 6 * (K + 1)
    assert {r["series"] for r in orows} == {"ch 42 @ tok 0", "other", "median |h|"}
    assert sum(r["series"] == "ch 42 @ tok 0" for r in orows) == 3
    view = charts.activation_view(tr)
    assert "hconcat" in view.to_dict()
    png = charts.save_png(view, tmp_path / "view.png")
    assert png.read_bytes()[:4] == b"\x89PNG"
    assert sw.charts.grid_chart is sw.widgets.charts.grid_chart


@pytest.mark.unit
def test_charts_need_recorded_arrays():
    bare = sw.SinkTrace(np.zeros((2, 1, 3)), ["a", "b", "c"])
    with pytest.raises(ValueError, match="residual norms"):
        charts.norm_chart(bare)
    with pytest.raises(ValueError, match="top activations"):
        charts.outlier_chart(bare)


@pytest.mark.unit
def test_line_and_bar_charts():
    assert charts.line_chart({"a": [1, 2, 3], "b": [3, 2, np.nan]}).to_dict()["mark"]["type"] == "line"
    with pytest.raises(ValueError):
        charts.line_chart({"a": [1, 2], "b": [1]})
    with pytest.raises(ValueError):
        charts.line_chart({"a": [1, 2]}, x=[0])
    assert charts.bar_chart({"dense": 12.0, "window": 30.0}, log_y=True).to_dict()["mark"]["type"] == "bar"
    with pytest.raises(ValueError):
        charts.bar_chart({})


# ----------------------------------------------------------------------------- inputs (tokenizer needed)
@pytest.mark.unit
def test_natural_texts_offline():
    from sinkwidgets.lessons import inputs

    a = inputs.natural_texts(6, seed=1, min_words=100)
    assert len(a) == 6 and len(set(a)) == 6 and all(len(t.split()) >= 100 for t in a)
    assert a == inputs.natural_texts(6, seed=1, min_words=100)
    with pytest.raises(ValueError):
        inputs.natural_texts(0)


@pytest.mark.models
def test_random_and_repeated_text(smollm2):
    from sinkwidgets.lessons import inputs

    tok = smollm2.tokenizer
    r = inputs.random_text(smollm2, 40, seed=3)
    ids = tok(r, add_special_tokens=False)["input_ids"]
    assert len(ids) == 40 and len(set(ids)) > 30
    rep = inputs.repeated_text(smollm2, 24)
    ids = tok(rep, add_special_tokens=False)["input_ids"]
    assert len(ids) == 24 and len(set(ids)) == 1
    with pytest.raises(ValueError, match="repeats"):
        inputs.repeated_text(smollm2, 8, candidates=("!!",))


@pytest.mark.models
def test_qk_geometry_reproduces_attention(smollm2):
    from sinkwidgets.lessons.geometry import qk_geometry

    text = "The old lighthouse keeper climbed the stairs. Ships passed by."
    tr = sw.trace(smollm2, text, keep_maps=[18], map_dtype="float32")
    g = qk_geometry(smollm2, text, 18)
    assert g.tokens == tr.tokens and g.cos.shape == (9, tr.n_tokens, tr.n_tokens)
    A = g.attention()
    for h in range(9):
        np.testing.assert_allclose(A[h], tr.get_map(18, h), atol=1e-5)
    # Gu et al. Fig. 2: the sink key is short but well aligned with the queries
    assert (g.k_norm[:, 0] < np.median(g.k_norm[:, 1:], axis=1)).all()
    assert np.nanmean(g.cos_to(0)[:, 1:]) > np.nanmean(g.cos[:, 2:, 1:2]) + 0.2
    with pytest.raises(ValueError, match="out of range"):
        qk_geometry(smollm2, text, 99)


@pytest.mark.models
def test_qk_geometry_reproduces_gemma3_attention(gemma3):
    """Gemma-3 (QK-norm, its own rotary function, <bos>): softmax of the logits is the model's attention."""
    from sinkwidgets.lessons.geometry import qk_geometry

    text = "The old lighthouse keeper climbed the stairs. Ships passed by."
    tr = sw.trace(gemma3, text, keep_maps=[3], map_dtype="float32")
    g = qk_geometry(gemma3, text, 3)
    assert g.tokens == tr.tokens and g.tokens[0] == "<bos>"
    A = g.attention()
    for h in range(A.shape[0]):
        np.testing.assert_allclose(A[h], tr.get_map(3, h), atol=1e-5)


# ----------------------------------------------------------------------------- public API around the lessons
@pytest.mark.unit
def test_one_softmax1_for_numpy_and_torch():
    """softmax₁ has one definition: the hand-made head (numpy) and the toy (torch) call the same function."""
    import torch

    from sinkwidgets import _softmax1, toy
    from sinkwidgets.toy import model as toy_model

    assert handmade.softmax1 is _softmax1.softmax1 is toy.softmax1 is toy_model.softmax1
    z = np.array([[-3.0, 0.5, 2.0], [900.0, 899.0, -np.inf]])
    padded = handmade.softmax(np.concatenate([z, np.zeros((2, 1))], axis=1))[:, :-1]  # softmax over [z, 0], 0 dropped
    np.testing.assert_allclose(handmade.softmax1(z), padded, atol=1e-15)
    t = torch.tensor(z, dtype=torch.float32, requires_grad=True)
    out = toy.softmax1(t)
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float32 and out.requires_grad
    np.testing.assert_allclose(out.detach().numpy(), padded, atol=1e-6)
    np.testing.assert_allclose(handmade.softmax1(z.T, axis=0), padded.T, atol=1e-15)


@pytest.mark.unit
def test_dir_lists_the_subpackages_and_old_helper_names_point_to_lessons():
    import types

    names = dir(sw)
    for sub in ("tags", "charts", "toy", "lessons", "interventions", "streaming", "widgets", "metrics"):
        assert sub in names, sub
    assert {"TagData", "SinkTrace", "sink_head_mask"} <= set(names)
    assert isinstance(sw.lessons, types.ModuleType) and sw.lessons.summaries is summaries
    from sinkwidgets.tags.data import TagData

    assert sw.TagData is TagData
    for old, new in [("analysis", "lessons.summaries"), ("handmade", "lessons.handmade"), ("inputs", "lessons.inputs"),
                     ("geometry", "lessons.geometry")]:
        with pytest.raises(AttributeError, match=f"moved to sinkwidgets.{new}"):
            getattr(sw, old)


@pytest.mark.unit
def test_top_level_tagdata_lessons_and_charts_need_no_torch():
    import subprocess
    import sys

    code = """
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('torch', 'nnsight', 'transformers'):
            raise ImportError('blocked ' + name)
sys.meta_path.insert(0, Block())
import sinkwidgets as sw
assert sw.TagData.__name__ == 'TagData'
from sinkwidgets.lessons import handmade, inputs, summaries
assert handmade.softmax1([0.0])[0] == 0.5 and len(inputs.natural_texts(2, seed=0)) == 2
assert 'weights_chart' in dir(sw.charts) and 'emergence_chart' in dir(sw.charts)
assert 'torch' not in sys.modules
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


@pytest.mark.unit
def test_lessons_docstring_places_every_chart():
    """The chart map in sinkwidgets.lessons' docstring names every chart of sw.charts and where it is defined."""
    doc = sw.lessons.__doc__
    for name in [n for n in charts.__all__ if n.endswith(("_chart", "_view"))] + ["emergence_chart"]:
        assert f"``{name}``" in doc, name
    assert charts.emergence_chart is sw.toy.emergence_chart
    assert charts.grid_chart is sw.widgets.charts.grid_chart
    for home in ("sinkwidgets.charts", "sinkwidgets.widgets.charts", "sinkwidgets.toy.charts"):
        assert home in doc, home
