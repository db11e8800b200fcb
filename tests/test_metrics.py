"""Metrics on tiny hand-made attention tensors whose answers are known by hand."""

import numpy as np
import pytest

import sinkwidgets as sw
from sinkwidgets import metrics as M

pytestmark = pytest.mark.unit  # no model, browser or notebook


def causal_uniform(T):
    A = np.tril(np.ones((T, T)))
    return A / A.sum(-1, keepdims=True)


def sink_map(T, k=0, mass=0.9):
    """Every query t >= k puts `mass` on key k and spreads the rest uniformly over its other visible keys."""
    A = np.zeros((T, T))
    for t in range(T):
        if t < k:
            A[t, : t + 1] = 1.0 / (t + 1)
        elif t == k:
            A[t, : t + 1] = 0.0
            A[t, k] = 1.0
        else:
            A[t, : t + 1] = (1 - mass) / t
            A[t, k] = mass
    return A


def test_sink_scores_uniform_by_hand():
    # T = 3 causal uniform: rows [1], [1/2, 1/2], [1/3, 1/3, 1/3]
    a = M.sink_scores(causal_uniform(3))
    assert np.allclose(a, [(1 + 1 / 2 + 1 / 3) / 3, (1 / 2 + 1 / 3) / 2, 1 / 3])


def test_sink_scores_bidirectional_mean_over_all_queries():
    A = np.array([[0.5, 0.5], [1.0, 0.0]])
    assert np.allclose(M.sink_scores(A, causal=False), [0.75, 0.25])
    assert np.allclose(M.sink_scores(A, causal=True), [0.75, 0.0])


def test_sink_ratio_and_heads():
    T = 10
    L, H = 2, 2
    attn = np.stack([np.stack([sink_map(T, 0, 0.9), causal_uniform(T)]), np.stack([sink_map(T, 0, 0.5), sink_map(T, 0, 0.2)])])
    alpha = M.sink_scores(attn)
    assert alpha.shape == (L, H, T)
    heads = M.sink_head_mask(alpha, k=0, eps=0.3)
    assert heads.tolist() == [[True, False], [True, False]]
    assert M.sink_ratio(alpha, k=0, eps=0.3) == pytest.approx(0.5)
    assert M.sink_ratio(alpha, k=0, eps=0.95) == 0.0
    with pytest.warns(DeprecationWarning, match="sink_head_mask"):  # the old top-level name still works, and warns
        old = sw.sink_heads(alpha, k=0, eps=0.3)
    assert np.array_equal(old, heads) and "sink_heads" not in dir(sw)


def test_find_sinks_prompt_dependent_and_end_guard():
    T = 20
    A = sink_map(T, k=5, mass=0.8)
    alpha = M.sink_scores(A[None, None])
    found = M.find_sinks(alpha, eps=0.2)
    ks = {s.k for s in found}
    assert 5 in ks
    # the last key is seen only by one query: α = A[T-1, T-1] is the only row; must be guarded
    assert all(T - s.k >= M.DEFAULT_MIN_QUERIES for s in found)
    assert M.find_sinks(alpha, eps=0.2, min_queries=1)  # without the guard the last key may appear
    s5 = next(s for s in found if s.k == 5)
    assert s5.prompt_dependent and s5.layer == 0 and s5.head == 0
    # exclude_first drops key 0 only
    A0 = sink_map(T, 0, 0.9)
    a0 = M.sink_scores(A0[None, None])
    assert {s.k for s in M.find_sinks(a0, eps=0.2)} == {0}
    assert M.find_sinks(a0, eps=0.2, exclude_first=True) == []


def test_sinks_per_head_both_averages():
    T = 30
    heads = [sink_map(T, 0, 0.9), causal_uniform(T), sink_map(T, 3, 0.9)]
    # a head with two sinks: half on 0, half on 4
    two = np.zeros((T, T))
    for t in range(T):
        if t < 4:
            two[t, 0] = 1.0
        else:
            two[t, 0] = two[t, 4] = 0.5
    heads.append(two)
    alpha = M.sink_scores(np.stack(heads)[None])
    sph = M.sinks_per_head(alpha, eps=0.3)
    assert sph.counts.tolist() == [[1, 0, 1, 2]]
    assert sph.mean_all == pytest.approx(1.0)
    assert sph.mean_sink_heads == pytest.approx(4 / 3)


def test_first_token_mass_and_entropy_by_hand():
    A = sink_map(5, 0, 0.6)
    m = M.first_token_mass(A)
    assert m == pytest.approx(0.6)  # queries 1..4 each put 0.6 on key 0
    U = causal_uniform(4)
    ent = M.attention_entropy(U)
    assert ent == pytest.approx(np.mean([np.log(1), np.log(2), np.log(3), np.log(4)]))
    onehot = np.eye(4)
    assert M.attention_entropy(onehot) == pytest.approx(0.0)


def test_massive_activations_thresholds():
    tr = sw.SinkTrace(
        sink_scores=np.zeros((2, 1, 3)),
        tokens=["a", "b", "c"],
        top_activations=np.array([[2000.0, -150.0], [50.0, 1.0]]),
        top_act_tokens=np.array([[0, 2], [1, 1]]),
        top_act_channels=np.array([[7, 9], [3, 4]]),
        median_abs_activation=np.array([0.5, 0.01]),
    )
    found = M.massive_activations(tr)
    # 2000 > 100 and 4000x median: yes; -150 > 100 but only 300x median: no; layer 1: 50 < 100: no
    assert [(f.layer, f.token, f.channel, f.token_str) for f in found] == [(0, 0, 7, "a")]
    assert len(M.massive_activations(tr, abs_thr=100, ratio=100)) == 2


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="eps"):
        M.sink_ratio(np.zeros((1, 1, 4)), eps=1.5)
    with pytest.raises(ValueError, match="k=9"):
        M.sink_head_mask(np.zeros((1, 1, 4)), k=9)
    with pytest.raises(ValueError, match=r"\[L, H, T\]"):
        M.sink_ratio(np.zeros((4, 4)))
    with pytest.raises(ValueError, match="queries"):
        M.sink_scores(np.zeros((3, 4)))
