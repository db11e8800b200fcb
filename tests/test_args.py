"""sinkwidgets._args, the one argument layer, and the silent wrong results it fixes in streaming, toy.tag_data and
TagData (issue 22). Each parser: its accepted forms, and each bad form raising a SinkwidgetsError whose message
names the argument. Each fixed bullet: a test that failed on the code before the fix (noted per test).

The property tests (Hypothesis) feed the parsers generated values of every kind: each call either returns a valid
result or raises a SinkwidgetsError, never another exception.
"""

from __future__ import annotations

import warnings
from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sinkwidgets import _args as A
from sinkwidgets.errors import SinkwidgetsError, SinkwidgetsTypeError, SinkwidgetsValueError


def _raises(kind, name, fn, *args, **kwargs):
    """Assert ``fn(*args, **kwargs)`` raises ``kind`` (a SinkwidgetsError) whose message names ``name``."""
    with pytest.raises(kind) as e:
        fn(*args, **kwargs)
    assert isinstance(e.value, SinkwidgetsError)
    assert name in str(e.value), str(e.value)
    return str(e.value)


# ----------------------------------------------------------------------------- parsers
@pytest.mark.unit
class TestArraysAndGenerators:
    def test_array_good_forms(self):
        X = A.array("X", [[1, 2], [3, 4]], ndim=2)
        assert X.dtype == np.float64 and X.shape == (2, 2)
        f = np.ones((3, 2), np.float32)
        assert A.array("X", f, ndim=2).dtype == np.float64
        assert A.array("alpha", np.zeros(0), ndim=1, min_rows=0).shape == (0,)
        assert A.array("X", np.array([[True, False]]), ndim=2).tolist() == [[1.0, 0.0]]

    def test_array_refusals_name_the_argument(self):
        for bad in ("abc", None, {"a": 1}, [[1, 2], [3]], np.array([["a", "b"]]), 1j * np.ones((2, 2))):
            _raises(A.ArgumentTypeError, "X", A.array, "X", bad, ndim=2)
        assert "got shape [3]" in _raises(SinkwidgetsValueError, "X", A.array, "X", np.ones(3), ndim=2)
        _raises(SinkwidgetsValueError, "X", A.array, "X", np.ones((1, 2, 3)), ndim=2)
        _raises(SinkwidgetsValueError, "X", A.array, "X", np.ones((0, 3)), ndim=2)
        X = np.ones((8, 2))
        X[[2, 6]] = np.nan
        X[7, 1] = np.inf
        msg = _raises(SinkwidgetsValueError, "X", A.array, "X", X, ndim=2)
        assert "3 of 8 rows" in msg and "rows 2, 6, 7" in msg
        assert A.array("X", X, ndim=2, finite=False).shape == (8, 2)  # finite=False keeps them

    def test_generator(self):
        g = np.random.default_rng(1)
        assert A.generator("rng", g) is g
        assert A.generator("rng", np.int64(3)).integers(1000) == np.random.default_rng(3).integers(1000)
        for bad in (None, 2.5, "0", np.random.RandomState(0), True):
            _raises(SinkwidgetsTypeError, "rng", A.generator, "rng", bad)
        _raises(SinkwidgetsValueError, "rng", A.generator, "rng", -1)


@pytest.mark.unit
class TestIntegers:
    def test_good_forms(self):
        assert A.integer("n", 8) == 8 and type(A.integer("n", np.int64(8))) is int
        assert A.integer("n", np.array(3)) == 3 and A.integer("n", None, allow_none=True) is None
        assert A.integer("n", 5, minimum=5, maximum=5) == 5
        assert A.seed("seed", np.uint32(7)) == 7 and A.seed("seed", None, allow_none=True) is None

    @pytest.mark.parametrize("bad", [True, np.bool_(False), 8.0, 2.5, "8", None, [8], np.array([1, 2])])
    def test_wrong_types(self, bad):
        msg = _raises(SinkwidgetsTypeError, "n=", A.integer, "n", bad)
        assert "e.g. n=" in msg

    def test_type_errors_are_value_errors_too(self):
        """Before the argument layer, a float int raised ValueError: except ValueError still catches it."""
        with pytest.raises(ValueError):
            A.integer("n", 2.0)
        with pytest.raises(TypeError):
            A.integer("n", 2.0)

    def test_bounds(self):
        assert ">= 2" in _raises(SinkwidgetsValueError, "n=1", A.integer, "n", 1, minimum=2)
        assert "0..3" in _raises(SinkwidgetsValueError, "k=4", A.integer, "k", 4, minimum=0, maximum=3)
        _raises(SinkwidgetsValueError, "seed=-1", A.seed, "seed", -1)


@pytest.mark.unit
class TestNumbers:
    def test_good_forms(self):
        assert A.fraction("p", 0) == 0.0 and A.fraction("p", np.float32(0.25)) == 0.25 and A.fraction("p", 1) == 1
        assert A.number("C", 10, low=0, low_open=True) == 10.0

    @pytest.mark.parametrize("bad", [float("nan"), float("inf"), -0.1, 1.5])
    def test_out_of_range(self, bad):
        _raises(SinkwidgetsValueError, "p=", A.fraction, "p", bad)

    def test_open_ends_and_types(self):
        _raises(SinkwidgetsValueError, "p=0", A.fraction, "p", 0, low_open=True)
        _raises(SinkwidgetsValueError, "p=1", A.fraction, "p", 1.0, high_open=True)
        _raises(SinkwidgetsValueError, "C=0", A.number, "C", 0, low=0, low_open=True)
        for bad in (True, "0.5", None, [0.5], 1j):
            _raises(SinkwidgetsTypeError, "p=", A.fraction, "p", bad)
        _raises(SinkwidgetsValueError, "p=", A.fraction, "p", 10**400)  # beyond the float range

    def test_choice(self):
        assert A.choice("name", "dense", ["dense", "window"]) == "dense"
        msg = _raises(SinkwidgetsValueError, "name='bogus'", A.choice, "name", "bogus", ["dense", "window"])
        assert "'dense', 'window'" in msg
        _raises(SinkwidgetsValueError, "mode=True", A.choice, "mode", True, [1, 2])  # a bool is not the option 1
        _raises(SinkwidgetsValueError, "x=", A.choice, "x", np.array([1, 2]), [1, 2])


@pytest.mark.unit
class TestLayers:
    @pytest.mark.parametrize("value, expected", [
        ("all", list(range(30))), ("12-29", list(range(12, 30))), ("12", [12]), (" 3, 5,12-14 ", [3, 5, 12, 13, 14]),
        (7, [7]), (np.int64(7), [7]), ([5, 3, 5], [3, 5]), ((1, 2), [1, 2]), (range(2, 5), [2, 3, 4]),
        (np.array([0, 29]), [0, 29]), (-1, [29]), ([-30, -1], [0, 29]), ("-3--1", [27, 28, 29]), ("ALL", list(range(30))),
        (range(5, 2, -1), [3, 4, 5]),
    ])
    def test_good_forms(self, value, expected):
        assert A.layers("layers", value, 30) == expected

    def test_reversed_range_is_an_error(self):
        msg = _raises(SinkwidgetsValueError, "layers='29-12'", A.layers, "layers", "29-12", 30)
        assert "reversed" in msg and "'12-29'" in msg
        _raises(SinkwidgetsValueError, "layers=range(29, 12)", A.layers, "layers", range(29, 12), 30)
        _raises(SinkwidgetsValueError, "reversed", A.layers, "layers", "-1-3", 30)  # 29 > 3 after counting from the end

    def test_out_of_range_names_the_valid_range(self):
        msg = _raises(SinkwidgetsValueError, "layers=[-31]", A.layers, "layers", [-31], 30)
        assert "-31" in msg and "0..29" in msg and "-30..-1" in msg
        assert "0..29" in _raises(SinkwidgetsValueError, "attention_layers='12-30'", A.layers, "attention_layers",
                                  "12-30", 30)

    @pytest.mark.parametrize("bad, kind", [
        ([], SinkwidgetsValueError), ("", SinkwidgetsValueError), ("1-", SinkwidgetsValueError),
        ("twelve", SinkwidgetsValueError), (1.0, SinkwidgetsTypeError), (True, SinkwidgetsTypeError),
        ([1.0], SinkwidgetsTypeError), (["1"], SinkwidgetsTypeError), ([True], SinkwidgetsTypeError),
        (np.array([1.0]), SinkwidgetsTypeError), ({1, 2}, SinkwidgetsTypeError), (None, SinkwidgetsTypeError),
    ])
    def test_bad_forms(self, bad, kind):
        _raises(kind, "layers=", A.layers, "layers", bad, 30)

    def test_empty_allowed_when_asked_and_unknown_size(self):
        assert A.layers("layers", [], 30, allow_empty=True) == []
        assert A.layers("layers", "2-4", None) == [2, 3, 4]
        _raises(SinkwidgetsValueError, "layers='all'", A.layers, "layers", "all", None)
        _raises(SinkwidgetsValueError, "layers=-1", A.layers, "layers", -1, None)

    def test_one_layer(self):
        assert A.layer("max_layer", -1, 30) == 29 and A.layer("max_layer", np.int8(3), 30) == 3
        _raises(SinkwidgetsValueError, "max_layer=-31", A.layer, "max_layer", -31, 30)
        _raises(SinkwidgetsTypeError, "max_layer='3'", A.layer, "max_layer", "3", 30)


@pytest.mark.unit
class TestHeads:
    def test_good_forms(self):
        assert A.heads("heads", "all", 2, 3) == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2)]
        assert A.heads("heads", (2, 2), 30, 9) == [(2, 2)] and A.heads("heads", [2, 2], 30, 9) == [(2, 2)]
        assert A.heads("heads", "L5H6", 30, 9) == [(5, 6)] and A.heads("heads", "l5h6", 30, 9) == [(5, 6)]
        assert A.heads("heads", [(2, 2), "L5H6", (2, 2)], 30, 9) == [(2, 2), (5, 6)]
        assert A.heads("heads", np.array([[1, 2], [3, 4]]), 30, 9) == [(1, 2), (3, 4)]
        assert A.heads("heads", [(-1, -1)], 30, 9) == [(29, 8)]
        assert A.head("head", (np.int64(1), np.int32(2))) == (1, 2)

    def test_all_never_says_got_a(self):
        msg = _raises(SinkwidgetsValueError, "heads='all'", A.heads, "heads", "all")
        assert "'a'" not in msg
        assert "'a'" not in _raises(SinkwidgetsValueError, "heads='all'", A.heads, "heads", "all", 30, 9,
                                    allow_all=False)

    @pytest.mark.parametrize("bad, kind", [
        ([], SinkwidgetsValueError), ("bogus", SinkwidgetsValueError), ("L2", SinkwidgetsValueError),
        ((2, 2, 2), SinkwidgetsTypeError), ([(1.0, 2)], SinkwidgetsTypeError), (3, SinkwidgetsTypeError),
        ([(2, 9)], SinkwidgetsValueError), ([(30, 0)], SinkwidgetsValueError), (np.zeros((2, 3), int), SinkwidgetsTypeError),
        ([[1, 2, 3]], SinkwidgetsTypeError), ([(True, 1)], SinkwidgetsTypeError), (None, SinkwidgetsTypeError),
    ])
    def test_bad_forms(self, bad, kind):
        _raises(kind, "heads=", A.heads, "heads", bad, 30, 9)

    def test_out_of_range_names_the_range(self):
        assert "0..8" in _raises(SinkwidgetsValueError, "head", A.head, "head", (2, 9), 30, 9)
        _raises(SinkwidgetsValueError, "head=", A.head, "head", (2, -1))  # counting from the end needs the size


@pytest.mark.unit
class TestPositions:
    def test_global_forms(self):
        assert A.positions("positions", 3).shared == (3,)
        assert A.positions("positions", [3, 5, 7]).shared == (3, 5, 7)
        assert A.positions("positions", range(2)).shared == (0, 1)
        assert A.positions("positions", np.array([1, -1])).shared == (1, -1)
        assert A.positions_per_text("positions", [1, -1], [4, 6]) == [[1, 3], [1, 5]]

    def test_per_text_forms(self):
        p = A.positions("positions", [[3, 5, 7], [2, 4]], n_texts=2)
        assert p.per_text == ((3, 5, 7), (2, 4)) and p.shared is None
        assert p.resolve([8, 5]) == [[3, 5, 7], [2, 4]]
        assert A.positions_per_text("positions", np.array([[1, 2], [0, -1]]), [3, 3]) == [[1, 2], [0, 2]]

    def test_count_must_match_the_texts(self):
        """Per-text positions whose count does not match the texts are refused (they used to be flattened and
        applied to every text)."""
        msg = _raises(SinkwidgetsValueError, "positions=", A.positions, "positions", [[3, 5, 7], [2, 4]], n_texts=3)
        assert "2 lists of positions for 3 texts" in msg
        _raises(SinkwidgetsValueError, "positions", A.positions_per_text, "positions", [[1], [2]], [5, 5, 5])
        _raises(SinkwidgetsValueError, "positions", A.positions("positions", [[1], [2]]).resolve, [5])

    def test_a_string_is_never_positions(self):
        msg = _raises(SinkwidgetsTypeError, "positions='bogus'", A.positions, "positions", "bogus")
        assert "entries" not in msg and "string" in msg
        _raises(SinkwidgetsTypeError, "positions=", A.positions, "positions", ["ab", "cd"])
        _raises(SinkwidgetsTypeError, "positions=", A.positions, "positions", [[1], "2"])

    @pytest.mark.parametrize("bad, kind", [
        ([], SinkwidgetsValueError), ([[1], []], SinkwidgetsValueError), ([1, [2]], SinkwidgetsTypeError),
        (1.5, SinkwidgetsTypeError), ([1.0], SinkwidgetsTypeError), (True, SinkwidgetsTypeError),
        ([[1.5]], SinkwidgetsTypeError), ([[[1]]], SinkwidgetsTypeError), (None, SinkwidgetsTypeError),
    ])
    def test_bad_forms(self, bad, kind):
        _raises(kind, "positions", A.positions, "positions", bad)

    def test_out_of_range_per_text(self):
        msg = _raises(SinkwidgetsValueError, "positions", A.positions_per_text, "positions", [[1], [9]], [4, 5])
        assert "text 1" in msg and "0..4" in msg
        _raises(SinkwidgetsValueError, "positions", A.positions_per_text, "positions", [-5], [4])

    def test_token_ids(self):
        assert A.token_id("token", np.int64(3), 10) == 3 and A.token_ids("prefix", [1, 2], 10) == [1, 2]
        assert A.token_ids("prefix", 4) == [4]
        _raises(SinkwidgetsValueError, "token=-1", A.token_id, "token", -1, 10)
        assert "0..9" in _raises(SinkwidgetsValueError, "prefix=", A.token_ids, "prefix", [1, 10], 10)
        _raises(SinkwidgetsValueError, "prefix=", A.token_ids, "prefix", [-1])
        _raises(SinkwidgetsValueError, "prefix=[]", A.token_ids, "prefix", [])
        _raises(SinkwidgetsTypeError, "prefix='ab'", A.token_ids, "prefix", "ab")
        _raises(SinkwidgetsTypeError, "token=1.0", A.token_id, "token", 1.0)


@pytest.mark.unit
class TestLabels:
    def test_good_forms(self):
        assert A.labels("labels", [0, 1.0, True, np.int8(2)]).tolist() == [0, 1, 1, 2]
        assert A.labels("labels", np.array([1.0, 0.0]), n=2).dtype == np.int64

    def test_float_labels_are_refused_not_truncated(self):
        msg = _raises(SinkwidgetsValueError, "labels=[0.2, 0.9, 1.5]", A.labels, "labels", [0.2, 0.9, 1.5])
        assert "0.2" in msg
        _raises(SinkwidgetsValueError, "labels=", A.labels, "labels", np.array([0.0, np.nan]))

    @pytest.mark.parametrize("bad, kind", [
        ("0101", SinkwidgetsTypeError), (1, SinkwidgetsTypeError), (["a", "b"], SinkwidgetsTypeError),
        ([[0, 1]], SinkwidgetsTypeError), (np.zeros((2, 2)), SinkwidgetsValueError), (None, SinkwidgetsTypeError),
    ])
    def test_bad_forms(self, bad, kind):
        _raises(kind, "labels", A.labels, "labels", bad)

    def test_count(self):
        assert "3 labels for 2 items" in _raises(SinkwidgetsValueError, "labels", A.labels, "labels", [0, 1, 0], n=2)

    def test_any_two_classes(self):
        codes, classes = A.binary_labels("labels", ["true", "false", "true"])
        assert codes.tolist() == [1, 0, 1] and classes == ("false", "true")
        assert A.binary_labels("labels", [1, 0, 1])[0].tolist() == [1, 0, 1]
        assert A.binary_labels("labels", [True, False])[1] == (False, True)
        assert A.binary_labels("labels", [3.0, 7.0, 3.0])[0].tolist() == [0, 1, 0]
        assert A.binary_labels("labels", ["x", 1])[0].tolist() == [0, 1]  # not comparable: first seen is class 0
        _raises(SinkwidgetsValueError, "labels", A.binary_labels, "labels", [1, 1, 1])
        _raises(SinkwidgetsValueError, "labels", A.binary_labels, "labels", [0, 1, 2])
        _raises(SinkwidgetsValueError, "labels", A.binary_labels, "labels", [0.5, 1.0])
        _raises(SinkwidgetsTypeError, "labels", A.binary_labels, "labels", [[0], [1]])
        _raises(SinkwidgetsValueError, "labels", A.binary_labels, "labels", [0, 1], n=3)


@pytest.mark.unit
class TestBases:
    def test_good_forms(self):
        rng = np.random.default_rng(0)
        B = rng.standard_normal((8, 2))
        assert A.basis("basis", B, 8).shape == (8, 2)
        assert A.basis("basis", rng.standard_normal(8), 8).shape == (8, 1)
        Q = A.orthonormal_basis("basis", B, 8)
        np.testing.assert_allclose(Q.T @ Q, np.eye(2), atol=1e-12)

    def test_zero_and_rank_deficient_bases_are_refused(self):
        """probe(..., basis=np.zeros((d, 2))) used to be QR'd into coordinate axes and report tag = 1.000."""
        assert "zeros" in _raises(SinkwidgetsValueError, "basis=", A.basis, "basis", np.zeros((8, 2)), 8)
        dep = np.ones((8, 2))
        assert "rank 1 < 2" in _raises(SinkwidgetsValueError, "basis=", A.basis, "basis", dep, 8)
        half = np.c_[np.eye(8)[:, 0], np.zeros(8)]
        _raises(SinkwidgetsValueError, "basis=", A.basis, "basis", half, 8)

    @pytest.mark.parametrize("bad, kind", [
        (np.full((8, 1), np.nan), SinkwidgetsValueError), (np.eye(8)[:2], SinkwidgetsValueError),
        (np.zeros((8, 0)), SinkwidgetsValueError), (np.zeros((2, 2, 2)), SinkwidgetsValueError),
        ("basis", SinkwidgetsTypeError), ([[1, "a"]], SinkwidgetsTypeError), (np.ones((3, 4)), SinkwidgetsValueError),
        (np.eye(8, 2) * (1 + 1j), SinkwidgetsTypeError), ([[10**400]], SinkwidgetsTypeError),
    ])
    def test_bad_forms(self, bad, kind):
        _raises(kind, "basis", A.basis, "basis", bad, 8)

    def test_transposed_basis_is_named(self):
        assert "basis.T" in _raises(SinkwidgetsValueError, "basis", A.basis, "basis", np.eye(8)[:2], 8)


# ----------------------------------------------------------------------------- property tests
_any = st.recursive(
    st.none() | st.booleans() | st.integers(-50, 50) | st.integers() | st.floats(allow_nan=True, allow_infinity=True)
    | st.complex_numbers(max_magnitude=2) | st.sampled_from([np.int64(3), np.float32(0.5), np.bool_(True), b"1-2"])
    | st.text(max_size=8) | st.sampled_from(["all", "12-29", "29-12", "L2H2", "-3--1", "1,2", "3-", "L-1H-1"]),
    lambda inner: st.lists(inner, max_size=4) | st.tuples(inner, inner),
    max_leaves=12,
) | st.builds(range, st.integers(-5, 40), st.integers(-5, 40)) | st.builds(
    np.array, st.lists(st.integers(-40, 40), max_size=6))
_PROPS = settings(max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.mark.unit
class TestProperties:
    """Any input either parses to a valid result or raises a SinkwidgetsError; nothing else escapes."""

    @_PROPS
    @given(_any)
    def test_layers(self, value):
        try:
            out = A.layers("layers", value, 30)
        except SinkwidgetsError:
            return
        assert out and out == sorted(set(out)) and all(0 <= x < 30 for x in out)

    @_PROPS
    @given(_any)
    def test_heads(self, value):
        try:
            out = A.heads("heads", value, 30, 9)
        except SinkwidgetsError:
            return
        assert out and all(0 <= a < 30 and 0 <= b < 9 for a, b in out) and len(set(out)) == len(out)

    @_PROPS
    @given(_any, st.lists(st.integers(1, 12), min_size=1, max_size=3))
    def test_positions(self, value, lengths):
        try:
            out = A.positions_per_text("positions", value, lengths)
        except SinkwidgetsError:
            return
        assert len(out) == len(lengths) and all(ps and all(0 <= p < n for p in ps) for ps, n in zip(out, lengths))

    @_PROPS
    @given(_any)
    def test_scalars_and_ids(self, value):
        for fn in (lambda v: A.integer("n", v, minimum=0, maximum=9), lambda v: A.fraction("p", v),
                   lambda v: A.token_ids("prefix", v, 50), lambda v: A.seed("seed", v),
                   lambda v: A.choice("name", v, ["dense", "window"])):
            try:
                fn(value)
            except SinkwidgetsError:
                pass

    @_PROPS
    @given(_any)
    def test_labels(self, value):
        try:
            out = A.labels("labels", value)
        except SinkwidgetsError:
            out = None
        assert out is None or out.dtype == np.int64
        try:
            codes, _ = A.binary_labels("labels", value)
        except SinkwidgetsError:
            return
        assert set(codes.tolist()) == {0, 1}

    @_PROPS
    @given(st.integers(1, 6), st.integers(1, 4), st.sampled_from(["randn", "zeros", "dup", "nan", "tiny"]))
    def test_bases(self, d, r, kind):
        rng = np.random.default_rng(d * 7 + r)
        B = {"randn": rng.standard_normal((d, r)), "zeros": np.zeros((d, r)),
             "dup": np.repeat(rng.standard_normal((d, 1)), r, axis=1), "nan": np.full((d, r), np.nan),
             "tiny": 1e-300 * rng.standard_normal((d, r))}[kind]
        try:
            out = A.basis("basis", B, d)
        except SinkwidgetsError:
            return
        assert np.linalg.matrix_rank(out) == out.shape[1] and np.isfinite(out).all()


# ----------------------------------------------------------------------------- the fixed bullets
@pytest.mark.unit
class TestStreamingArguments:
    """Before the fix: ppl('bogus') raised a bare KeyError; chart(smooth=1000) on a 40-token text plotted positions
    999..; a window above Gemma's sliding window ran without a word."""

    def _result(self, n=39):
        from sinkwidgets.streaming import StreamingResult

        rng = np.random.default_rng(0)
        nll = {k: rng.random(n) + 1 for k in ("dense", "window", "sink1 mask")}
        return StreamingResult(nll, window=8, n_sink=1, method="mask", meta={"n_tokens": n + 1})

    def test_ppl_of_an_unknown_condition_is_a_clear_error(self):
        from sinkwidgets.streaming import StreamingError

        r = self._result()
        msg = _raises(SinkwidgetsValueError, "name='bogus'", r.ppl, "bogus")
        assert "'dense', 'window', 'sink1 mask'" in msg
        _raises(SinkwidgetsValueError, "name='bogus'", r.jump, "bogus")
        _raises(SinkwidgetsValueError, "start=", r.ppl, "dense", 39)
        _raises(SinkwidgetsTypeError, "start=", r.ppl, "dense", 1.5)
        assert np.isfinite(r.ppl()) and np.isfinite(r.ppl("dense", 3)) and np.isfinite(r.jump())
        assert issubclass(StreamingError, SinkwidgetsValueError)

    def test_chart_never_plots_past_the_end_of_the_text(self):
        pytest.importorskip("altair")
        r = self._result(39)  # 40 tokens: NLL at positions 0..38
        for smooth in (1000, 40, 39, 5, 1):
            rows = r.chart(smooth=smooth).to_dict()["layer"][0]["data"]["values"]
            pos = [row["position"] for row in rows]
            assert pos and max(pos) <= 38 and min(pos) >= 0, (smooth, min(pos), max(pos))
        _raises(SinkwidgetsValueError, "smooth=0", r.chart, smooth=0)
        _raises(SinkwidgetsTypeError, "smooth=2.5", r.chart, smooth=2.5)

    def test_negative_max_tokens_is_refused_before_any_model_work(self):
        """(Already refused by RunOptions before this change: the guard against dropping tokens from the end.)"""
        from sinkwidgets.streaming import streaming_ppl, streaming_sweep

        for bad in (-5, 0, 1, 2.0):
            _raises(SinkwidgetsError, "max_tokens", streaming_ppl, object(), "text", max_tokens=bad)
            _raises(SinkwidgetsError, "max_tokens", streaming_sweep, object(), "text", max_tokens=bad)
        _raises(SinkwidgetsValueError, "recompute=-1", streaming_ppl, object(), "text", recompute=-1)
        _raises(SinkwidgetsTypeError, "seed=", streaming_ppl, object(), "text", seed="x")
        _raises(SinkwidgetsValueError, "windows=()", streaming_sweep, object(), "text", windows=())

    def test_text_and_sweep_lookups(self):
        from sinkwidgets.streaming import StreamingSweep, _tokens

        _raises(SinkwidgetsValueError, "text=", _tokens, object(), ["a", "b"], None, None)
        sweep = StreamingSweep({(8, 1, "mask"): self._result()}, dense_ppl=2.0)
        assert np.isfinite(sweep.ppl(8, 1))
        assert "(8, 1, 'mask')" in _raises(SinkwidgetsValueError, "(16, 1, 'mask')", sweep.ppl, 16, 1)

    def test_a_window_above_the_models_sliding_window_warns(self):
        import torch

        from sinkwidgets.models.adapters import FAMILIES
        from sinkwidgets.streaming import StreamingWarning, _warn_window

        class Attn(torch.nn.Module):
            def __init__(self, w):
                super().__init__()
                self.sliding_window = w

        class Layer(torch.nn.Module):
            def __init__(self, w):
                super().__init__()
                self.self_attn = Attn(w)

        hf = torch.nn.Module()
        hf.model = torch.nn.Module()
        hf.model.language_model = torch.nn.Module()
        hf.model.language_model.layers = torch.nn.ModuleList([Layer(512), Layer(None), Layer(512)])
        info = SimpleNamespace(adapter=FAMILIES["gemma3"], name="fake-gemma")
        with pytest.warns(StreamingWarning, match=r"window=600 .*512.*window <= 512"):
            _warn_window(hf, info, [600])
        with pytest.warns(StreamingWarning, match=r"\[600, 1024\]"):
            _warn_window(hf, info, [256, 600, 1024])
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            _warn_window(hf, info, [512, 256])
            _warn_window(hf, SimpleNamespace(adapter=FAMILIES["llama"], name="x"), [4096])  # no sliding layers
            _warn_window(hf, None, [4096])


@pytest.mark.models
def test_gemma_window_above_its_sliding_window_warns_on_the_real_model(gemma3):
    from sinkwidgets.streaming import StreamingWarning, stdlib_docs_text, streaming_ppl

    with pytest.warns(StreamingWarning, match="sliding window of 512"):
        r = streaming_ppl(gemma3, stdlib_docs_text(6_000), window=520, n_sink=1, method="mask", max_tokens=540,
                          baselines=("dense",))
    assert np.isfinite(r.ppl())


@pytest.mark.unit
class TestToyTagData:
    """Before the fix: n=np.int64(8) was refused; seed=1.5 or 'x' failed inside torch with a raw TypeError."""

    def _model(self):
        import torch

        from sinkwidgets.toy import TinyTransformer

        return TinyTransformer(generator=torch.Generator().manual_seed(0))

    def test_numpy_ints_are_accepted(self):
        from sinkwidgets.toy import tag_data

        m = self._model()
        a = tag_data(m, n=np.int64(4), seed=np.int32(3), keep_maps=False)
        b = tag_data(m, n=4, seed=3, keep_maps=False)
        assert a.n_prompts == 4 and a.tokens == b.tokens and a.meta["seed"] == 3 and type(a.meta["seed"]) is int

    @pytest.mark.parametrize("bad, kind", [(1.5, SinkwidgetsTypeError), ("x", SinkwidgetsTypeError),
                                           (-1, SinkwidgetsValueError), (True, SinkwidgetsTypeError),
                                           (None, SinkwidgetsTypeError)])
    def test_bad_seeds_are_refused(self, bad, kind):
        from sinkwidgets.toy import tag_data

        _raises(kind, "seed=", tag_data, self._model(), n=4, seed=bad)

    def test_bad_n_and_keep_maps(self):
        from sinkwidgets.toy import tag_data

        _raises(SinkwidgetsValueError, "n=1", tag_data, self._model(), n=np.int64(1))
        _raises(SinkwidgetsTypeError, "keep_maps=", tag_data, self._model(), n=4, keep_maps="no")


@pytest.mark.unit
class TestTagDataChecks:
    def _data(self, **kw):
        from sinkwidgets.tags.data import TagData

        rng = np.random.default_rng(0)
        tokens = [["<s>", "a", "b"], ["<s>", "c"], ["<s>", "d", "e", "f"]]
        maps = [rng.random((1, len(t), len(t))).astype(np.float16) for t in tokens]
        return TagData.from_prompts(tokens, maps=maps, map_index=[(0, 0)], **kw)

    def test_float_labels_are_refused_not_truncated(self):
        """Before the fix: TagData(labels=[0.2, 0.9, 1.5]) gave [0, 0, 1]."""
        msg = _raises(SinkwidgetsValueError, "labels=[0.2, 0.9, 1.5]", self._data, labels=[0.2, 0.9, 1.5])
        assert "not an integer" in msg
        assert self._data(labels=[0.0, 1.0, 1]).labels.tolist() == [0, 1, 1]
        with pytest.raises(ValueError):  # still a ValueError for except-ValueError code
            self._data(labels=[1, 0])

    def test_inconsistent_map_offsets_are_refused_at_load(self, tmp_path):
        """Before the fix: a file with wrong map_offsets loaded, and attention_map failed later."""
        from sinkwidgets.tags.data import TagData, TagDataFormatError

        d = self._data()
        p = d.save(tmp_path / "ok.npz")
        with np.load(p) as z:
            arrays = {k: z[k] for k in z.files}
        arrays["map_offsets"] = arrays["map_offsets"].copy()
        arrays["map_offsets"][2] += 1
        np.savez(tmp_path / "bad.npz", **arrays)
        msg = _raises(TagDataFormatError, "map_offsets", TagData.load, tmp_path / "bad.npz")
        assert "bad.npz" in msg
        _raises(SinkwidgetsValueError, "map_offsets", TagData, tokens=d.tokens, offsets=d.offsets, maps=d.maps,
                map_index=d.map_index, map_offsets=d.map_offsets[:-1])
        _raises(SinkwidgetsValueError, "map_offsets", TagData, tokens=d.tokens, offsets=d.offsets,
                map_offsets=d.map_offsets)
        np.testing.assert_array_equal(TagData.load(p).attention_map((0, 0), 2), d.attention_map((0, 0), 2))

    def test_load_finds_the_file_save_wrote(self, tmp_path, monkeypatch):
        """Before the fix: data.save('x') wrote x.npz and TagData.load('x') said there was no file."""
        from sinkwidgets.tags.data import TagData, TagDataNotFoundError

        monkeypatch.chdir(tmp_path)
        d = self._data(labels=[0, 1, 0])
        written = d.save("x")
        assert written.name == "x.npz"
        e = TagData.load("x")
        assert e.tokens == d.tokens and e.labels.tolist() == [0, 1, 0]
        msg = _raises(TagDataNotFoundError, "'y'", TagData.load, "y")
        assert "y.npz" in msg and ".npz" in msg
        with pytest.raises(FileNotFoundError):
            TagData.load(tmp_path / "nothing.npz")
        _raises(SinkwidgetsTypeError, "path=", TagData.load, 3)

    def test_a_lone_surrogate_token_survives_the_round_trip(self, tmp_path):
        from sinkwidgets.tags.data import TagData

        d = TagData.from_prompts([["<s>", "\udc80x", "\ud800"]])
        e = TagData.load(d.save(tmp_path / "s"))
        assert e.tokens == [["<s>", "\udc80x", "\ud800"]]

    def test_tokens_must_be_lists_per_prompt(self):
        from sinkwidgets.tags.data import TagData

        _raises(SinkwidgetsTypeError, "tokens=", TagData.from_prompts, ["ab", "cd"])
