"""sinkwidgets.tags without a model: the data object, catch on hand-made maps, planted-direction tag EV with its
controls, probes on planted and noise labels, and the shipped datasets (numpy + scikit-learn only)."""

from __future__ import annotations

import numpy as np
import pytest
from _helpers import race

from sinkwidgets import tags
from sinkwidgets.tags import TagData, TagDataFormatError

pytestmark = [pytest.mark.unit, pytest.mark.usefixtures("one_blas_thread")]


# ----------------------------------------------------------------------------- a planted corpus
def _orth(rng, d, k):
    q, _ = np.linalg.qr(rng.standard_normal((d, k)))
    return q.T  # k orthonormal rows


def planted(target_ev=0.6, d=32, N=40, seed=0, value_along_tag=False):
    """Head (1, 0): token 0 is its sink (α = 0.9) with value g_0 = c_i u; non-sink values lie along w (or along u
    with ``value_along_tag``); outputs o_t = a_t u + n_t with n_t ⟂ u, scaled so that the EV of u on the evaluation
    half (split_prompts(N, 0.5, seed=0)) is exactly ``target_ev``."""
    rng = np.random.default_rng(seed)
    u, w = _orth(rng, d, 2)
    lengths = rng.integers(8, 16, N)
    tokens, outs, vals, scores = [], [], [], []
    for T in lengths:
        tokens.append([f"w{j}" for j in range(T)])
        a = rng.normal(2.0, 1.0, T)
        n = rng.standard_normal((T, d)) * np.linspace(0.2, 0.6, d)
        n -= np.outer(n @ u, u)  # exactly orthogonal to u
        o = a[:, None] * u + n
        g = np.outer(rng.normal(0, 1, T), u if value_along_tag else w) + 0.01 * rng.standard_normal((T, d))
        g -= np.outer(g @ u, u) if not value_along_tag else 0
        g[0] = rng.uniform(2, 4) * u
        s = np.full((2, 2, T), 0.05)
        s[1, 0, 0] = 0.9
        outs.append(o[None])
        vals.append(g[None])
        scores.append(s)
    data = TagData.from_prompts(tokens, heads=[(1, 0)], head_outputs=outs, head_values=vals, sink_scores=scores)
    # rescale the u-component of the evaluation tokens (t >= 1) to hit the target EV exactly
    _, ev_idx = tags.split_prompts(N, 0.5, seed=0)
    rows = np.isin(data.prompt_of, ev_idx) & (data.positions >= 1)
    O = data.head_outputs[0].astype(np.float64)
    X = O[rows]
    Xc = X - X.mean(0)
    a_c = Xc @ u
    rest = float(np.sum(Xc ** 2) - np.sum(a_c ** 2))
    scale = np.sqrt(target_ev / (1 - target_ev) * rest / np.sum(a_c ** 2))
    X_new = X + np.outer((X @ u) * (scale - 1), u)
    O[rows] = X_new
    data.head_outputs[0] = O.astype(np.float32)
    return data, u, w


def _direct_ev(data, head, U, ev_idx):
    rows = np.isin(data.prompt_of, ev_idx) & (data.positions >= 1)
    X = data.outputs(head)[rows].astype(np.float64)
    Xc = X - X.mean(0)
    return float(np.sum((Xc @ U) ** 2) / np.sum(Xc ** 2))


# ----------------------------------------------------------------------------- tag EV
def test_planted_direction_ev_recovered_with_ordered_controls():
    data, u, w = planted(0.6)
    r = tags.tag_ev(data, (1, 0), rank=1, n_random=10)
    _, ev_idx = tags.split_prompts(data.n_prompts, 0.5, seed=0)
    # float32 storage of the outputs bounds the agreement; the subspace itself is u to machine precision
    assert abs(abs(float(r.subspace[:, 0] @ u)) - 1) < 1e-12
    assert r.ev == pytest.approx(0.6, abs=1e-6)
    assert r.ev == pytest.approx(_direct_ev(data, (1, 0), u[:, None], ev_idx), abs=1e-9)
    assert r.ev <= r.pc_bound + 1e-12
    assert r.random_floor < 0.2 < r.ev  # about 1/d of the variance
    assert r.n_random == 10 and r.random_std > 0
    assert r.value_control < 0.1  # the non-sink values point along w, which carries little output variance
    assert r.cosine < 1e-3  # w ⟂ u
    assert r.n_sinks == r.n_fit  # one sink (token 0) per fit prompt
    text = str(r)
    for word in ("held out", "PC upper bound", "random floor", "value control", "cos("):
        assert word in text


def test_value_control_matches_when_values_share_the_tag_direction():
    data, u, _ = planted(0.5, value_along_tag=True)
    r = tags.tag_ev(data, (1, 0), rank=1)
    assert r.ev == pytest.approx(0.5, abs=1e-6)
    assert r.cosine > 0.999
    assert r.value_control == pytest.approx(r.ev, abs=1e-3)


def test_tag_ev_rank2_and_table_and_errors():
    data, u, w = planted(0.4)
    # the planted sinks' values are c_i u stored in float32: they span 1 dimension (s_2/s_1 ~ 1e-8, rounding), so a
    # rank-2 tag subspace would be u plus a noise direction: refused (before, it returned one)
    with pytest.raises(ValueError, match=r"rank=2.*numerical rank 1.*lower rank to 1"):
        tags.tag_ev(data, (1, 0), rank=2)
    r1 = tags.tag_ev(data, (1, 0), rank=1)
    sinks = np.flatnonzero((data.positions == 0) & (data.prompt_of % 2 == 1))
    data.values((1, 0))[sinks] += (0.5 * w).astype(np.float32)  # odd prompts' sinks: a second direction
    r2 = tags.tag_ev(data, (1, 0), rank=2)
    assert r2.rank == 2 and r2.ev >= r1.ev - 1e-9
    assert r2.pc_bound >= r1.pc_bound and r2.random_floor > r1.random_floor
    table = tags.tag_ev_table(data, rank=1)
    assert len(table) == 1 and "L1H0" in str(table)
    with pytest.raises(ValueError, match="n_random"):
        tags.tag_ev(data, (1, 0), n_random=3)
    with pytest.raises(KeyError, match="collect again"):
        tags.tag_ev(data, (0, 1))
    with pytest.raises(ValueError, match="overlap"):
        tags.tag_ev(data, (1, 0), split=([0, 1, 2], [2, 3]))
    with pytest.raises(ValueError, match="fewer than rank"):  # no sink above eps=0.95
        tags.tag_ev(data, (1, 0), eps=0.95)


def test_explicit_split_and_in_sample():
    data, u, _ = planted(0.6)
    fit, ev_idx = np.arange(0, 20), np.arange(20, 40)
    r = tags.tag_ev(data, (1, 0), split=(fit, ev_idx))
    assert r.n_fit == 20 and r.n_eval == 20
    assert r.ev == pytest.approx(_direct_ev(data, (1, 0), u[:, None], ev_idx), abs=1e-9)
    assert r.ev_in_sample == pytest.approx(r.ev, abs=1e-9)  # both subspaces are exactly u


# ----------------------------------------------------------------------------- catch
def _catch_data():
    # prompt: "a b . c d e f g h ." -> boundary at 2 and 9; the head sends rows 3..8 to token 2 with 0.6
    toks = ["a", " b", ".", " c", " d", " e", " f", " g", " h", ".", " i"]
    T = len(toks)
    A = np.zeros((T, T))
    for t in range(T):
        A[t, 0] = 1.0
    for t in range(3, T):
        A[t] = 0
        A[t, 2] = 0.6 if t < 7 else 0.2
        A[t, 0] = 1 - A[t, 2]
    alpha = tags.alpha_from_map(A)
    s = np.zeros((2, 2, T))
    s[0, 1] = alpha
    return TagData.from_prompts([toks], sink_scores=[s], maps=[A[None].astype(np.float16)], map_index=[(0, 1)]), A


def test_catch_on_a_hand_made_map():
    data, A = _catch_data()
    assert tags.is_boundary(".") and tags.is_boundary(".\n") and tags.is_boundary("\n") and tags.is_boundary(" ?")
    assert not tags.is_boundary(" ") and not tags.is_boundary("a.")
    alpha = tags.alpha_from_map(A)
    assert alpha[2] == pytest.approx((0.6 * 4 + 0.2 * 4) / 9)  # keys seen by 9 queries t >= 2
    r = tags.catch(data, (0, 1), tau=0.3)
    rec = {x["sink"]: x for x in r.sinks}
    assert set(rec) == {0, 2}  # alpha[2] = 0.356 > 0.2 with 8 later queries; token 9 has only 1
    assert rec[2]["n_caught"] == 4 and rec[2]["run_length"] == 4 and rec[2]["score"] == pytest.approx(0.6, abs=1e-3)
    # later-sentence tokens: 3..8 and 10 (9 is a boundary); caught: 3..6 (0.6 > 0.3); row 10 gives 0.2 to each
    # of the boundaries 2 and 9
    assert r.n_later == 7 and r.catch_rate == pytest.approx(4 / 7)
    assert tags.catch(data, (0, 1), tau=0.5).catch_rate == pytest.approx(4 / 7)
    assert tags.catch(data, (0, 1), tau=0.7).catch_rate == 0
    with pytest.raises(ValueError, match="tau"):
        tags.catch(data, (0, 1), tau=1.5)
    with pytest.raises(KeyError, match="maps="):
        tags.catch(data, (0, 0))


def test_boundary_heads_and_sink_heads_selection():
    rng = np.random.default_rng(0)
    toks = [["x"] + [" w"] * 4 + ["."] + [" w"] * 8 for _ in range(20)]
    scores = []
    for _ in toks:
        s = rng.uniform(0, 0.1, (3, 2, 14))
        s[0, 0, 0] = 0.9  # L0H0: first-token head
        s[2, 1, 5] = 0.4 + rng.uniform(-0.05, 0.05)  # L2H1: boundary head
        s[1, 1, 5] = 0.3 if rng.random() < 0.5 else 0.05  # L1H1: half of the time
        scores.append(s)
    data = TagData.from_prompts(toks, sink_scores=scores)
    ranked = tags.boundary_heads(data)
    assert (ranked[0].layer, ranked[0].head) == (2, 1) and ranked[0].share == 1.0
    assert 0.35 < ranked[0].alpha < 0.45 and (ranked[1].layer, ranked[1].head) == (1, 1)
    sh = tags.sink_heads(data)
    assert [tuple(r) for r in sh.first_token] == [(0, 0)]
    assert [tuple(r) for r in sh.boundary] == [(2, 1)]  # L1H1 holds in half of the prompts only
    assert "L2H1" in str(ranked)
    with pytest.raises(ValueError, match="boundary token"):
        tags.boundary_heads(TagData.from_prompts([["a", "b"]], sink_scores=[np.zeros((1, 1, 2))]))


# ----------------------------------------------------------------------------- probes
def _probe_data(planted_label=True, N=240, d=24, seed=0):
    rng = np.random.default_rng(seed)
    groups = np.repeat(np.arange(N // 4), 4)
    y = np.tile([0, 1], N // 2)
    v = _orth(rng, d, 1)[0]
    X = rng.standard_normal((N, d)) * 3
    if planted_label:
        X += np.outer((2 * y - 1) * 4.0, v)
    else:
        y = rng.permutation(y)
    Q = np.stack([v, _orth(rng, d, 2)[1]], axis=1)
    Q, _ = np.linalg.qr(Q)
    return X, y, groups, Q


def test_probe_finds_a_planted_label_and_stays_at_chance_on_noise():
    X, y, groups, Q = _probe_data(True)
    r = tags.probe_features(X, y, groups, Q, seeds=3, n_random=10)
    assert r["tag"] > 0.85 and r["full"] > 0.8
    assert r["tag"] >= r["random"] + 0.15  # random 2-d subspaces rarely contain the planted direction
    assert r["no_tag"] < 0.65  # the planted direction was inside Q
    assert abs(r["shuffled"] - 0.5) < 0.1 and r["chance"] <= 0.55
    assert all(r[f"{n}_se"] >= 0 for n in tags.probes.FEATURE_SETS)
    assert len(r.random_draws) == 10
    Xn, yn, gn, Qn = _probe_data(False, seed=1)
    rn = tags.probe_features(Xn, yn, gn, Qn, seeds=3, n_random=10)
    for name in ("full", "tag", "no_tag", "random", "pcs"):
        assert abs(rn[name] - 0.5) < 0.1, (name, rn[name])
    text = str(r)
    for name in tags.probes.FEATURE_SETS:
        assert name in text


def test_grouped_folds_keep_groups_together():
    groups = np.repeat([f"g{i}" for i in range(23)], 3)
    f = tags.grouped_folds(groups, 5, seed=0)
    for g in set(groups):
        assert len(set(f[groups == g])) == 1
    sizes = np.bincount(f)
    assert len(sizes) == 5 and sizes.max() - sizes.min() <= 3
    assert not np.array_equal(f, tags.grouped_folds(groups, 5, seed=1))
    with pytest.raises(ValueError, match="at least 5 groups"):
        tags.grouped_folds(["a", "b"], 5)


def test_probe_on_tagdata_uses_its_labels_groups_and_auto_heads():
    rng = np.random.default_rng(3)
    N, d = 120, 16
    X, y, groups, _ = _probe_data(True, N=N, d=d)
    v = np.linalg.svd(X - X.mean(0))[2][0]
    toks = [["t0", " a", " b", " c"] for _ in range(N)]
    vals = []
    for _ in range(N):
        g = rng.standard_normal((2, 4, d)) * 0.1
        g[:, 0] = rng.uniform(1, 2) * v
        vals.append(g)
    s = np.full((3, 2, 4), 0.1)
    s[:, :, 0] = 0.9
    data = TagData.from_prompts(toks, heads=[(0, 0), (1, 1)], head_values=vals, head_outputs=vals,
                                sink_scores=[s] * N, pooled_mean=X[:, None], pooled_last=X[:, None],
                                pooled_layers=[1], labels=y, groups=[str(g) for g in groups])
    r = tags.probe(data, layer=1, rank=1, seeds=2, n_random=10)
    assert set(r.heads) == {(0, 0), (1, 1)} and r.dim == 1
    assert 0 < r["tag"] <= 1 and r["chance"] <= 0.55
    with pytest.raises(ValueError, match="no first-token sink head"):
        tags.probe(data, layer=1, rank=1, seeds=2, alpha0=0.95)


# ----------------------------------------------------------------------------- datasets
@pytest.mark.parametrize("name", ["cities", "sentiment", "arithmetic"])
def test_shipped_datasets_are_balanced_grouped_and_deterministic(name):
    ds = tags.load_dataset(name)
    assert len(ds) >= 200 and len(set(ds.texts)) == len(ds)
    assert int(ds.labels.sum()) * 2 == len(ds)
    assert len(set(ds.groups)) >= 12
    assert ds.texts == tags.load_dataset(name).texts
    for g in set(ds.groups):  # every group holds both labels: grouping cannot leak the label
        assert set(ds.labels[np.array(ds.groups) == g]) == {0, 1}
    assert ds.negative_control == (name == "arithmetic")


def test_dataset_labels_are_correct():
    for text, label in zip(*(lambda d: (d.texts, d.labels))(tags.load_dataset("arithmetic"))):
        lhs, rhs = text.rstrip(".").split(" = ")
        a, b = lhs.split(" + ")
        assert (int(a) + int(b) == int(rhs)) == bool(label)
    cities = dict(tags.datasets.CITIES)
    for text, label, city in zip(*(lambda d: (d.texts, d.labels, d.groups))(tags.load_dataset("cities"))):
        assert text.rstrip(".").endswith(cities[city]) == bool(label)
    with pytest.raises(ValueError, match="shipped datasets"):
        tags.load_dataset("nope")


# ----------------------------------------------------------------------------- the data object
def test_tagdata_roundtrip_subset_and_errors(tmp_path):
    data, _, _ = planted(0.6, N=6)
    data.maps = None
    cat, _ = _catch_data()
    for d in (data, cat):
        path = d.save(tmp_path / "d")
        assert path.name == "d.npz"
        back = TagData.load(path)
        assert back.tokens == d.tokens and np.array_equal(back.offsets, d.offsets)
        for name in ("head_outputs", "head_values", "sink_scores", "maps"):
            a, b = getattr(d, name), getattr(back, name)
            assert (a is None and b is None) or np.array_equal(a, b)
    sub = data.subset([4, 1])
    assert sub.tokens == [data.tokens[4], data.tokens[1]]
    assert np.array_equal(sub.outputs((1, 0))[: sub.lengths[0]], data.outputs((1, 0))[data.span(4)])
    assert np.array_equal(cat.subset([0]).attention_map((0, 1), 0), cat.attention_map((0, 1), 0))
    bad = tmp_path / "bad.npz"
    np.savez(bad, x=np.zeros(3))
    with pytest.raises(TagDataFormatError, match="not a TagData"):
        TagData.load(bad)
    bad.write_bytes(b"garbage")
    with pytest.raises(TagDataFormatError, match="not a readable"):
        TagData.load(bad)
    with pytest.raises(FileNotFoundError):
        TagData.load(tmp_path / "missing.npz")
    # a file from a newer version is refused with the fix
    newer = tmp_path / "newer.npz"
    import json

    hdr = {"format": "sinkwidgets.TagData", "format_version": 99, "tokens": [["a"]]}
    np.savez(newer, offsets=np.array([0, 1]), __header__=np.frombuffer(json.dumps(hdr).encode(), np.uint8))
    with pytest.raises(TagDataFormatError, match="upgrade"):
        TagData.load(newer)
    # the same checks as SinkTrace.load (one reader, sinkwidgets._npz): a version that is not >= 1, a missing array
    for version in (0, True, "1"):
        hdr["format_version"] = version
        np.savez(newer, offsets=np.array([0, 1]), __header__=np.frombuffer(json.dumps(hdr).encode(), np.uint8))
        with pytest.raises(TagDataFormatError, match="invalid TagData format version"):
            TagData.load(newer)
    hdr["format_version"] = 1
    np.savez(newer, token_ids=np.array([0]), __header__=np.frombuffer(json.dumps(hdr).encode(), np.uint8))
    with pytest.raises(TagDataFormatError, match=r"lacks required arrays \['offsets'\]"):
        TagData.load(newer)
    with pytest.raises(ValueError, match="offsets"):
        TagData(tokens=[["a", "b"]], offsets=[0, 3])
    with pytest.raises(ValueError, match="head_outputs"):
        TagData(tokens=[["a"]], offsets=[0, 1], heads=[(0, 0)], head_outputs=np.zeros((2, 1, 4)))


def test_concurrent_saves_leave_one_complete_file(tmp_path):
    datas = [planted(0.6, N=30, seed=s)[0] for s in range(4)]
    for i, d in enumerate(datas):
        d.meta["writer"] = i
    target = tmp_path / "shared.npz"
    errors = race(lambda i: datas[i].save(target))
    assert errors == []
    back = TagData.load(target)
    assert np.array_equal(back.head_outputs, datas[back.meta["writer"]].head_outputs)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shared.npz"]


# ----------------------------------------------------------------------------- release controls and mechanism rules
def test_norm_fraction_and_norm_matched_subspace():
    rng = np.random.default_rng(0)
    d = 64
    X = rng.standard_normal((4000, d))
    # isotropic rows: a random r-dim subspace holds about sqrt(r / d) of the norm
    assert tags.norm_fraction(X, tags.random_subspace(d, 2, rng)) == pytest.approx(np.sqrt(2 / d), rel=0.1)
    u = _orth(rng, d, 1)[0]
    Xp = X + np.outer(rng.standard_normal(4000) * 10, u)  # one strong direction
    f = tags.norm_fraction(Xp, u[:, None])
    assert f == pytest.approx(np.sqrt(101 / (101 + d - 1)), rel=0.05) and f > 0.7
    M = tags.norm_matched_subspace(X, 0.5, rng)
    assert tags.norm_fraction(X, M) >= 0.5 > tags.norm_fraction(X, M[:, :-1])
    assert 10 <= M.shape[1] <= 22  # about 0.5^2 * 64 = 16 random directions
    assert np.allclose(M.T @ M, np.eye(M.shape[1]), atol=1e-10)
    assert tags.norm_matched_subspace(X, 1.0, rng).shape[1] == d


def test_release_verdict_rule():
    from sinkwidgets.tags.release import release_verdict

    # loss beats every norm-matched draw and the sink attention moves far beyond them: shown
    ok, why = release_verdict(0.5, [0.1, 0.2, 0.15], -0.4, [-0.10, -0.12, -0.08])
    assert ok is True and "moves" in why
    # loss beats them, attention does not move (SmolLM2 L1H1): not shown
    assert release_verdict(0.15, [0.10, 0.14, 0.08], 0.002, [0.004, -0.01, 0.02])[0] is False
    # attention moves, loss does not beat the matched draws: not shown
    assert release_verdict(0.1, [0.1, 0.3, 0.2], -0.4, [0.0, 0.01, -0.01])[0] is False
    # a random draw moves the attention as much: not shown
    assert release_verdict(0.5, [0.1, 0.2], -0.4, [-0.5, -0.45])[0] is False
    assert release_verdict(0.5, [], -0.4, [])[0] is None
    assert release_verdict(0.5, [0.1], float("nan"), [0.0])[0] is None


def test_sink_catch_rate_against_uniform_attention():
    from sinkwidgets.tags.mechanism import _rule_catch, boundary_catch_uniform, sink_catch_rate

    data, A = _catch_data()  # sinks 0 and 2; rows 3..6 give 0.6 to token 2, rows 7..10 give 0.8 to token 0
    rate, uni, n = sink_catch_rate(data, (0, 1), 0.7)
    assert n == 10 and rate == pytest.approx(6 / 10) and uni == 0  # C_0 = {1, 2, 7..10}; C_2 empty at 0.7
    rate, uni, _ = sink_catch_rate(data, (0, 1), 0.3)
    assert rate == 1.0 and uni == pytest.approx(2 / 10)  # uniform: only rows 1 (1/2) and 2 (1/3) exceed 0.3
    assert boundary_catch_uniform(data, 0.3) == 0  # later-sentence rows see >= 4 keys: 1/(t+1) <= 0.25
    assert _rule_catch(1.0, 0.2)[0] is True
    assert _rule_catch(0.6, 0.4)[0] is False and _rule_catch(0.45, 0.0)[0] is False


def test_mechanism_tag_rule_on_planted_heads():
    own, _, _ = planted(0.6)  # the sink's value u is not the non-sink value direction w
    rep = tags.mechanism(None, ["unused"] * own.n_prompts, (1, 0), steps=("tag",), data=own)
    assert rep.shown == {"catch": None, "tag": True, "release": None}
    assert rep.tag.ev == pytest.approx(0.6, abs=1e-6) and rep.tag.value_control < 0.1
    shared, _, _ = planted(0.6, value_along_tag=True)  # non-sink values along the tag: the control explains as much
    rep2 = tags.mechanism(None, ["unused"] * shared.n_prompts, (1, 0), steps=("tag",), data=shared)
    assert rep2.shown["tag"] is False and rep2.tag.value_control >= rep2.tag.ev - 0.15
    text = str(rep)
    assert "held-out EV" in text and "tag      SHOWN" in text and "release  not run" in text
    assert rep.as_dict()["shown"]["tag"] is True
    spec = rep.chart().to_dict()
    assert "facet" in spec
    with pytest.raises(ValueError, match="steps"):
        tags.mechanism(None, ["x"], (1, 0), steps=("catch", "tagging"), data=own)


def test_probe_grid_on_tagdata():
    ds = tags.load_dataset("cities")
    rng = np.random.default_rng(4)
    N, d = len(ds), 16
    y = ds.labels
    v = _orth(rng, d, 1)[0]
    X1 = rng.standard_normal((N, d)) + np.outer((2 * y - 1) * 3.0, v)  # layer 1 knows the label along v
    X2 = rng.standard_normal((N, d))  # layer 2 does not
    toks = [["t0", " a", " b"] for _ in range(N)]
    vals = []
    for _ in range(N):
        g = rng.standard_normal((1, 3, d)) * 0.1
        g[0, 0] = rng.uniform(1, 2) * v
        vals.append(g)
    s = np.full((2, 2, 3), 0.1)
    s[:, :, 0] = 0.9
    data = TagData.from_prompts(toks, heads=[(0, 0)], head_values=vals, head_outputs=vals, sink_scores=[s] * N,
                                pooled_mean=np.stack([X1, X2], 1), pooled_last=np.stack([X2, X1], 1),
                                pooled_layers=[1, 2], labels=y, groups=list(ds.groups))
    g = tags.probe_report(data, "cities", layers=[1, 2], heads=[(0, 0)], rank=1, seeds=1, n_random=10)
    assert isinstance(g, tags.ProbeGrid) and set(g) == {(1, "mean"), (1, "last"), (2, "mean"), (2, "last")}
    assert g[(1, "mean")]["tag"] > 0.9 and g[(2, "last")]["tag"] > 0.9  # the label lives along v there
    assert abs(g[(2, "mean")]["tag"] - 0.5) < 0.15 and abs(g[(1, "last")]["full"] - 0.5) < 0.15
    assert len(g.rows()) == 4 * len(tags.probes.FEATURE_SETS)
    text = str(g)
    assert "layer" in text and "tag - pcs" in text and text.count("mean") >= 2
    assert "facet" in g.chart().to_dict()
    one = tags.probe_report(data, "cities", layer=1, heads=[(0, 0)], rank=1, seeds=1)  # no grid: one result
    assert isinstance(one, tags.ProbeResult)
    with pytest.raises(ValueError, match="pooling"):
        tags.probe_report(data, "cities", layers=[1], pooling=("max",), heads=[(0, 0)], rank=1)
    with pytest.raises(ValueError, match="layers"):
        tags.probe_report(data, "cities", layers=[1], layer=1, heads=[(0, 0)], rank=1)
