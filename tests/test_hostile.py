"""Hostile calls against sw.tags (analysis, probes) and sw.interventions (issue 22): the silent wrong results that the
argument layer (sinkwidgets._args) fixes, one test per bullet (each failed on the code before, noted per test), the
raw tracebacks that became SinkwidgetsErrors naming the argument, and a Hypothesis test that drives tag_ev,
sink_heads, catch and probe_features on toy data with generated arguments: every call returns finite results or
raises a SinkwidgetsError, never another exception.

Toy data (``sinkwidgets.toy.tag_data`` of an untrained TinyTransformer) and synthetic TagData are unit tests; a
tiny random Llama (``_helpers.save_tiny``: needs the SmolLM2 tokenizer from the offline cache) and SmolLM2 are
``models`` tests.
"""

from __future__ import annotations

import copy
import warnings

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sinkwidgets import tags
from sinkwidgets.errors import SinkwidgetsError
from sinkwidgets.tags import TagData
from sinkwidgets.toy import TinyTransformer, tag_data

TEXTS = ["The cat sat on the mat. It was warm and quiet there.",
         "Rain fell all night, and by morning the river was brown and fast."]


def _raises(name, fn, *args, **kwargs):
    """``fn(*args, **kwargs)`` raises a SinkwidgetsError whose message names ``name``; returns the message."""
    with pytest.raises(SinkwidgetsError) as e:
        fn(*args, **kwargs)
    assert name in str(e.value), str(e.value)
    return str(e.value)


# ----------------------------------------------------------------------------- toy and synthetic data (unit)
@pytest.fixture(scope="module")
def toy():
    """A TagData of 16 toy sequences (2 layers x 1 head, d = 32) from an untrained, seeded TinyTransformer."""
    m = TinyTransformer(generator=torch.Generator().manual_seed(0))
    return tag_data(m, n=16, seed=0)


def _probe_data(n=40, d=8, seed=0):
    """Synthetic TagData with pooled residuals after layer 1 (the label lives along one direction v) and one head
    whose sinks' values point along v; labels 0/1, one group per text."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 2
    v = np.linalg.qr(rng.standard_normal((d, 1)))[0][:, 0]
    X = rng.standard_normal((n, d)) + np.outer((2 * y - 1) * 3.0, v)
    vals = []
    for _ in range(n):
        g = rng.standard_normal((1, 3, d)) * 0.1
        g[0, 0] = rng.uniform(1, 2) * v
        vals.append(g)
    s = np.full((2, 2, 3), 0.1)
    s[:, :, 0] = 0.9
    data = TagData.from_prompts([["t0", " a", " b"]] * n, heads=[(0, 0)], head_values=vals, head_outputs=vals,
                                sink_scores=[s] * n, pooled_mean=X[:, None], pooled_last=X[:, None], pooled_layers=[1],
                                labels=y, groups=[str(i) for i in range(n)])
    return data, y


@pytest.mark.unit
def test_tag_ev_split_counting_from_the_end_and_empty_parts(toy):
    # before: split=(range(8), range(-8, 0)) matched no evaluation prompt and returned all-NaN numbers; an empty
    # evaluation split did the same
    h = tuple(toy.heads[0])
    r = tags.tag_ev(toy, h, split=(range(8), range(-8, 0)))  # the last 8 of 16 prompts
    assert r.n_eval == 8 and r.n_tokens > 0
    assert all(np.isfinite(v) for v in (r.ev, r.ev_in_sample, r.pc_bound, r.random_floor, r.value_control))
    assert r.ev == pytest.approx(tags.tag_ev(toy, h, split=(range(8), range(8, 16))).ev)
    _raises("split[1]", tags.tag_ev, toy, h, split=(range(8), []))
    _raises("split[0]", tags.tag_ev, toy, h, split=([], range(8)))
    msg = _raises("overlap", tags.tag_ev, toy, h, split=(range(12), range(-8, 0)))  # -8..-1 are prompts 8..15
    assert "8" in msg
    _raises("split", tags.tag_ev, toy, h, split=1.5)
    _raises("split", tags.tag_ev, toy, h, split=0.0)
    _raises("split[1]", tags.tag_ev, toy, h, split=(range(8), range(16, 20)))


@pytest.mark.unit
def test_tag_ev_refuses_non_finite_rows_naming_them(toy):
    # before: one NaN in head_outputs gave "SVD did not converge" (or NaN numbers)
    data = copy.deepcopy(toy)
    h = tuple(data.heads[0])
    slot = data.head_slot(h)
    row = int(data.offsets[3]) + 5
    data.head_outputs[slot, row, 0] = np.nan
    msg = _raises("head_outputs of L0H0", tags.tag_ev, data, h)
    assert "1 of" in msg and "prompt 3 pos 5" in msg
    data.head_outputs[slot, row, 0] = 0.0
    data.head_values[slot, row, 1] = np.inf
    assert "prompt 3 pos 5" in _raises("head_values", tags.tag_ev, data, h)
    G = np.ones((4, 3))
    G[2, 1] = np.nan
    assert "row 2" in _raises("vectors", tags.tag_subspace, G, 1)


@pytest.mark.unit
def test_sink_heads_negative_max_layer_counts_from_the_end(toy):
    # before: max_layer=-1 kept no first-token head and no boundary head (an empty, inconsistent ranking)
    every = tags.sink_heads(toy, alpha0=0.0)
    last = tags.sink_heads(toy, alpha0=0.0, max_layer=-1)  # -1: the last layer, i.e. every layer
    assert len(every.first_token) == toy.sink_scores.shape[0] * toy.sink_scores.shape[1]
    assert [tuple(r) for r in last.first_token] == [tuple(r) for r in every.first_token]
    first = tags.sink_heads(toy, alpha0=0.0, max_layer=-2)  # the first of 2 layers
    assert {r.layer for r in first.first_token} == {0}
    _raises("max_layer", tags.sink_heads, toy, max_layer=2)
    _raises("max_layer", tags.sink_heads, toy, max_layer=-3)
    _raises("max_layer", tags.sink_heads, toy, max_layer=1.0)


@pytest.mark.unit
def test_probe_refuses_a_zero_or_rank_deficient_basis():
    # before: probe(..., basis=np.zeros((d, 2))) was turned into coordinate axes by QR and reported tag = 1.000
    data, _ = _probe_data()
    kw = dict(layer=1, seeds=1, n_random=10, folds=5)
    _raises("basis", tags.probe, data, basis=np.zeros((8, 2)), **kw)
    dep = np.random.default_rng(0).standard_normal((8, 1))
    assert "rank" in _raises("basis", tags.probe, data, basis=np.hstack([dep, 2 * dep]), **kw)
    _raises("basis", tags.probe, data, basis=np.full((8, 1), np.nan), **kw)
    ok = tags.probe(data, basis=np.eye(8)[:, :2], **kw)
    assert 0 <= ok["tag"] <= 1


@pytest.mark.unit
def test_probe_accepts_any_two_classes_and_refuses_others():
    # before: string labels ("true"/"false", allowed by the docstring) failed with a raw traceback
    data, y = _probe_data()
    kw = dict(layer=1, heads=[(0, 0)], rank=1, seeds=1, n_random=10)
    ints = tags.probe(data, labels=y, **kw)
    words = tags.probe(data, labels=["true" if v else "false" for v in y], **kw)
    assert words["tag"] == pytest.approx(ints["tag"]) and words.classes == ["false", "true"]
    _raises("labels", tags.probe, data, labels=[0.2] * len(y), **kw)
    _raises("labels", tags.probe, data, labels=["a", "b", "c"] * (len(y) // 3) + ["a"] * (len(y) % 3), **kw)
    _raises("labels", tags.probe, data, labels=list(y[:-1]), **kw)


@pytest.mark.unit
def test_probe_features_folds_and_c_and_layers_name_the_argument():
    data, y = _probe_data()
    X = data.pooled(1, "mean")
    Q = np.eye(8)[:, :1]
    for kw, name in [({"folds": 1}, "folds"), ({"folds": 2.5}, "folds"), ({"folds": 41}, "folds"),
                     ({"C": 0}, "C"), ({"C": -1.0}, "C"), ({"C": float("nan")}, "C"), ({"C": "big"}, "C"),
                     ({"seeds": 0}, "seeds"), ({"n_random": 3}, "n_random"), ({"seed": -1}, "seed")]:
        _raises(name, tags.probe_features, X, y, None, Q, **kw)
    Xn = X.copy()
    Xn[4, 2] = np.nan
    assert "row 4" in _raises("X", tags.probe_features, Xn, y, None, Q)
    _raises("Q", tags.probe_features, X, y, None, np.zeros((8, 1)))
    _raises("layer", tags.probe, data, layer=-1, heads=[(0, 0)], rank=1, seeds=1)
    _raises("pooled residual", tags.probe, data, layer=3, heads=[(0, 0)], rank=1, seeds=1)
    _raises("layers", tags.probe_report, data, "cities", layers="2-1", heads=[(0, 0)], rank=1)


@pytest.mark.unit
def test_tag_ev_and_catch_arguments_name_the_argument(toy):
    h = tuple(toy.heads[0])
    for kw, name in [({"rank": 1.0}, "rank"), ({"rank": 0}, "rank"), ({"n_random": "ten"}, "n_random"),
                     ({"n_random": 3}, "n_random"), ({"seed": 1.5}, "seed"), ({"seed": -1}, "seed"),
                     ({"rank": 10**6}, "rank")]:
        _raises(name, tags.tag_ev, toy, h, **kw)
    _raises("head", tags.tag_ev, toy, (9, 0))
    _raises("head", tags.tag_ev, toy, "all")
    data, _ = _probe_data()  # model of 2 x 2 heads, only (0, 0) collected
    with pytest.raises(KeyError, match="collect again") as e:  # still a KeyError, and a SinkwidgetsError
        tags.tag_ev(data, (1, 1))
    assert isinstance(e.value, SinkwidgetsError) and "L1H1" in str(e.value)
    assert tags.tag_ev(toy, "L-1H0").head == (1, 0)  # negative indices count from the end
    _raises("tau", tags.catch, toy, h, tau=1.5)
    _raises("head", tags.catch, toy, "L5H0")


# ----------------------------------------------------------------------------- property test (unit)
_heads = st.one_of(st.sampled_from([(0, 0), (1, 0), (-1, 0), "L1H0", (2, 0), (0, 1), "all", "L0", 3, None, (0.5, 0)]),
                   st.tuples(st.integers(-4, 4), st.integers(-2, 2)))
_ints = st.one_of(st.integers(-3, 40), st.sampled_from([1.0, 2.5, "2", None, True, np.int64(2), float("nan")]))
_splits = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([0, 1, "half", None]),
                    st.tuples(st.lists(st.integers(-20, 20), max_size=10), st.lists(st.integers(-20, 20), max_size=10)),
                    st.tuples(st.sampled_from([range(8), range(0), "ab"]), st.sampled_from([range(8, 16), range(-4, 0)])))
_PROPS = settings(max_examples=60, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow,
                                                                                         HealthCheck.function_scoped_fixture])


def _finite_or_sinkwidgets_error(fn, check):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            out = fn()
        except SinkwidgetsError:
            return
    check(out)


@pytest.mark.unit
@_PROPS
@given(head=_heads, rank=_ints, n_random=_ints, seed=_ints, split=_splits)
def test_property_tag_ev(toy, head, rank, n_random, seed, split):
    def check(r):
        assert all(np.isfinite(v) for v in (r.ev, r.ev_in_sample, r.pc_bound, r.random_floor, r.random_std,
                                            r.value_control, r.cosine)), r
        assert 0 <= r.ev <= 1 + 1e-9 and r.n_eval >= 1 and r.n_fit >= 1
    _finite_or_sinkwidgets_error(lambda: tags.tag_ev(toy, head, rank, n_random=n_random, seed=seed, split=split),
                                 check)


@pytest.mark.unit
@_PROPS
@given(max_layer=st.one_of(st.integers(-4, 4), st.sampled_from([None, 1.0, "1", True])),
       alpha0=st.one_of(st.floats(allow_nan=True), st.sampled_from(["0.5", None])),
       share=st.one_of(st.floats(-1, 2), st.just(float("nan"))), min_later=_ints,
       head=_heads, tau=st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.sampled_from(["0.3", None])))
def test_property_sink_heads_and_catch(toy, max_layer, alpha0, share, min_later, head, tau):
    def check_heads(sh):
        for r in [*sh.first_token, *sh.boundary]:
            assert np.isfinite(r.alpha) and 0 <= r.layer < 2 and r.head == 0
            assert max_layer is None or r.layer <= max_layer % 2

    def check_catch(c):
        assert c.n_prompts == toy.n_prompts and (np.isfinite(c.catch_rate) or c.n_later == 0)
        assert all(np.isfinite(s["alpha"]) and s["n_caught"] >= 0 for s in c.sinks)
    _finite_or_sinkwidgets_error(lambda: tags.sink_heads(toy, alpha0=alpha0, share=share, min_later=min_later,
                                                         max_layer=max_layer), check_heads)
    _finite_or_sinkwidgets_error(lambda: tags.catch(toy, head, tau), check_catch)


@pytest.mark.unit
@settings(max_examples=25, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(n=st.integers(1, 24), d=st.integers(1, 6), k=st.integers(0, 7), folds=_ints,
       C=st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([0, "1", None])),
       seeds=st.sampled_from([1, 2, 0, 1.0]), labels=st.sampled_from(["01", "words", "one", "three", "float"]),
       seed=st.integers(-2, 5))
def test_property_probe_features(n, d, k, folds, C, seeds, labels, seed):
    rng = np.random.default_rng(n * 31 + d)
    X = rng.standard_normal((n, d))
    y = {"01": np.arange(n) % 2, "words": [("yes", "no")[i % 2] for i in range(n)], "one": [0] * n,
         "three": np.arange(n) % 3, "float": (np.arange(n) % 2) + 0.5}[labels]
    Q = rng.standard_normal((d, k)) if k else np.zeros((d, 0))

    def check(r):
        for name in tags.probes.FEATURE_SETS:
            assert np.isfinite(r[name]) and 0 <= r[name] <= 1, (name, r[name])
    _finite_or_sinkwidgets_error(lambda: tags.probe_features(X, y, None, Q, folds=folds, seeds=seeds, n_random=10,
                                                             C=C, seed=seed), check)


# ----------------------------------------------------------------------------- a tiny random Llama (models)
@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A random 4-layer Llama (d = 64, 4 heads) with the SmolLM2 tokenizer, loaded with sinkwidgets.load_model."""
    import transformers as tf
    from _helpers import save_tiny

    import sinkwidgets as sw

    torch.manual_seed(0)
    cfg = tf.LlamaConfig(vocab_size=49152, hidden_size=64, num_hidden_layers=4, num_attention_heads=4,
                         intermediate_size=128, num_key_value_heads=2)
    return sw.load_model(save_tiny(tmp_path_factory.mktemp("tiny") / "llama", tf.LlamaForCausalLM(cfg)))


@pytest.mark.models
def test_mask_sink_reversed_range_is_refused(tiny):
    # before: layers="3-1" (like "29-12" on SmolLM2) masked nothing and reported ΔNLL 0.0000
    from sinkwidgets.interventions import mask_sink

    assert "reversed" in _raises("layers", mask_sink, tiny, TEXTS, "3-1")
    assert "reversed" in _raises("attention_layers", mask_sink, tiny, TEXTS, "all", attention_layers="3-1")
    assert "0..3" in _raises("layers", mask_sink, tiny, TEXTS, [-9])
    _raises("layers", mask_sink, tiny, TEXTS, range(3, 1))
    _raises("token", mask_sink, tiny, TEXTS, "all", token="bogus")
    _raises("token", mask_sink, tiny, TEXTS, "all", token=-1)
    _raises("batch_size", mask_sink, tiny, TEXTS, "all", batch_size=1)
    r = mask_sink(tiny, TEXTS[:1], [-1], attention_layers=(), batch_size=2)  # -1: the last layer
    assert r.meta["layer_sets"] == {"layers 3": [3]} and r.delta["layers 3"] != 0.0


@pytest.mark.models
def test_negative_max_tokens_is_refused(tiny):
    # before: max_tokens=-3 silently dropped the last 3 tokens of every text
    from sinkwidgets.interventions import add_sink, mask_sink, project_out

    _raises("max_tokens", project_out, tiny, TEXTS, 1, np.ones(64), max_tokens=-3)
    _raises("max_tokens", mask_sink, tiny, TEXTS, "all", max_tokens=-3)
    _raises("max_tokens", add_sink, tiny, TEXTS, max_tokens=2.0)


@pytest.mark.models
def test_per_text_positions_must_match_the_texts(tiny):
    # before: 3 lists of positions for 2 texts (or 1 for 2) were flattened and applied to every text
    from sinkwidgets.interventions import project_out

    basis = np.ones(64)
    assert "3 per-text entries for 2 texts" in _raises("positions", project_out, tiny, TEXTS, 1, basis,
                                                        positions=[[1, 2], [3], [4]])
    _raises("positions", project_out, tiny, TEXTS, 1, basis, positions=[[1, 2]])
    _raises("positions", project_out, tiny, TEXTS, 1, basis, positions=np.array([[1, 2], [3, 4], [5, 6]]))
    _raises("positions", project_out, tiny, TEXTS, 1, basis, positions=[[1, 2], "bogus"])
    _raises("positions", project_out, tiny, TEXTS, 1, basis, positions=[[1, 99], [2]])
    _raises("basis", project_out, tiny, TEXTS, 1, np.zeros(64))
    _raises("layer", project_out, tiny, TEXTS, -5, basis)
    r = project_out(tiny, TEXTS, -1, basis, positions=[[1, 2], [3, -1]], attention_layers=None)
    assert r.meta["n_projected"] == [2, 2] and r.meta["layer"] == 3


@pytest.mark.models
def test_massive_spec_at_layer_minus_one_is_applied(tiny):
    # before: MassiveSpec(layer=-1, ...) matched no layer, edited nothing and reported the clean loss
    from sinkwidgets.interventions import MassiveSpec, ablate_massive, find_massive

    spec = MassiveSpec(-1, [3, 7], [0.0, 0.0], [], [], abs_thr=1e-6, ratio=1e-6)  # every entry counts as massive
    r = ablate_massive(tiny, TEXTS[:1], "zero", spec=spec, control=False, attention_layers=None)
    assert r.meta["layer"] == 3 and r.meta["n_massive"][0] > 0
    assert abs(r.delta["zero"]) > 0
    _raises("spec.layer", ablate_massive, tiny, TEXTS, spec=MassiveSpec(4, [3], [1.0], [], []))
    _raises("spec.channels", ablate_massive, tiny, TEXTS, spec=MassiveSpec(1, [64], [1.0], [], []))
    _raises("spec.means", ablate_massive, tiny, TEXTS, spec=MassiveSpec(1, [3], [1.0, 2.0], [], []))
    _raises("top_k", find_massive, tiny, TEXTS, top_k=0)
    _raises("abs_thr", find_massive, tiny, TEXTS, abs_thr=-1)
    _raises("ratio", ablate_massive, tiny, TEXTS, ratio=float("nan"))


@pytest.mark.models
def test_add_sink_prefix_ids_are_checked(tiny):
    from sinkwidgets.interventions import add_sink

    assert "0..49151" in _raises("prefix", add_sink, tiny, TEXTS, [-1])
    _raises("prefix", add_sink, tiny, TEXTS, [10**9])
    _raises("prefix", add_sink, tiny, TEXTS, [[1, 2], [1.5]])
    _raises("prefix", add_sink, tiny, TEXTS, "")
    r = add_sink(tiny, TEXTS[:1], [np.int64(198)])
    assert r.meta["prefix_ids"] == [[198]]


@pytest.mark.models
def test_probe_from_a_model_checks_labels_before_collecting(tiny, monkeypatch):
    # before: string labels failed after the model had run; now they are any two classes, and a bad label set is
    # refused before any forward pass
    import sys

    import sinkwidgets.tags.collect  # noqa: F401  (the module; sw.tags.collect is the function)

    collect_mod = sys.modules["sinkwidgets.tags.collect"]

    texts = [f"Statement number {i} is here." for i in range(12)]
    words = ["true", "false"] * 6
    r = tags.probe(tiny, texts, words, layer=1, basis=np.eye(64)[:, :2], seeds=1, folds=3, n_random=10)
    assert r.classes == ["false", "true"] and 0 <= r["tag"] <= 1

    def no_model(*a, **k):
        raise AssertionError("collect ran before the arguments were checked")

    monkeypatch.setattr(collect_mod, "collect", no_model)
    _raises("labels", tags.probe, tiny, texts, ["a", "b", "c"] * 4, layer=1, basis=np.eye(64)[:, :2])
    _raises("basis", tags.probe, tiny, texts, words, layer=1, basis=np.zeros((64, 2)))
    _raises("layer", tags.probe, tiny, texts, words, layer=4, basis=np.eye(64)[:, :2])
    _raises("folds", tags.probe, tiny, texts, words, layer=1, basis=np.eye(64)[:, :2], folds=1)
    _raises("heads", tags.probe, tiny, texts, words, layer=1, heads=[(0, 9)])


# ----------------------------------------------------------------------------- SmolLM2 (models)
@pytest.mark.models
def test_smollm2_reversed_and_out_of_range_layers(smollm2):
    from sinkwidgets.interventions import mask_sink, project_out

    assert "write it low-high, e.g. layers='12-29'" in _raises("layers", mask_sink, smollm2, TEXTS, "29-12")
    assert "-30..-1" in _raises("layers", mask_sink, smollm2, TEXTS, [-31])
    _raises("attention_layers", mask_sink, smollm2, TEXTS, "all", attention_layers="29-12")
    _raises("basis", project_out, smollm2, TEXTS, 3, np.zeros((576, 2)))
    _raises("max_tokens", project_out, smollm2, TEXTS, 3, np.ones(576), max_tokens=-1)
