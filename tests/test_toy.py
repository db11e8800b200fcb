"""Tests of sinkwidgets.toy: the averaging task, the tiny transformer, training, metrics, tracing, charts."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from sinkwidgets.sinktrace import SinkTrace
from sinkwidgets.toy import (
    VARIANTS,
    AveragingTask,
    TinyTransformer,
    ToyConfig,
    ToyInternals,
    attention_breakdown,
    emergence_chart,
    emergence_metrics,
    make_batch,
    placement_table,
    seed_sweep,
    sink_placement_study,
    softmax1,
    trace_toy,
    train,
)
from sinkwidgets.toy.task import BOS, NUM, SEP
from sinkwidgets.toy.train import lr_factor

pytestmark = pytest.mark.unit  # no model, browser or notebook (tiny torch models, ~1 min in all)


@pytest.fixture(autouse=True)
def _threads():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def seed0():
    """The headline run: defaults, seed 0, 600 steps."""
    return train(seed=0, steps=600, progress=False)


# ----------------------------------------------------------------------------------------------- task
def test_batch_contents():
    b = make_batch(64, 16, 0)
    assert b.types.shape == b.values.shape == b.target.shape == b.mask.shape == (64, 16)
    assert (b.types[:, 0] == BOS).all()
    assert ((b.types == SEP).sum(1) == 1).all()
    assert ((b.sep >= 1) & (b.sep <= 14)).all()
    assert (b.values[b.types != NUM] == 0).all()
    for i in range(5):
        s = int(b.sep[i])
        vals = b.values[i, s + 1:]
        expect = torch.cumsum(vals, 0) / torch.arange(1, len(vals) + 1)
        torch.testing.assert_close(b.target[i, s + 1:], expect)
        assert not b.mask[i, : s + 1].any() and b.mask[i, s + 1:].all()
    torch.testing.assert_close(make_batch(8, 16, 5).values, make_batch(8, 16, 5).values)
    assert len(b.tokens(0)) == 16 and b.tokens(0)[0] == "<bos>" and "<sep>" in b.tokens(0)


def test_task_loss_zero_for_target():
    b = AveragingTask(8).sample(16, 1)
    assert float(AveragingTask.loss(b.target.clone(), b)) == 0.0


# ----------------------------------------------------------------------------------------------- bad arguments
@pytest.mark.parametrize(
    "kwargs, words",
    [
        ({"attn": "foo"}, ["'foo'", "softmax1", "sigmoid"]),
        ({"pos": "rope"}, ["'rope'", "learned"]),
        ({"gate": "bar"}, ["'bar'", "headwise", "elementwise"]),
        ({"T": 3}, ["T=3", ">= 4"]),
        ({"d_model": 30, "n_heads": 4}, ["d_model=30", "n_heads=4"]),
        ({"schedule": "step"}, ["'step'", "wsd"]),
        ({"kv_bias": True, "key_bias": True}, ["exclusive"]),
    ],
)
def test_bad_options_raise(kwargs, words):
    with pytest.raises(ValueError) as e:
        ToyConfig(**kwargs)
    for w in words:
        assert w in str(e.value)
    with pytest.raises(ValueError):
        train(seed=0, steps=1, progress=False, **kwargs)


@pytest.mark.parametrize("steps", [0, -5, 2.5, True])
def test_bad_steps_raise(steps):
    with pytest.raises(ValueError, match="steps="):
        train(seed=0, steps=steps, progress=False)


def test_unknown_option_and_small_T():
    with pytest.raises(ValueError, match="unknown option.*widht"):
        train(seed=0, steps=1, progress=False, widht=3)
    with pytest.raises(ValueError, match="T=2"):
        make_batch(4, 2)
    with pytest.raises(ValueError, match="batch_size=0"):
        make_batch(0, 8)


# ----------------------------------------------------------------------------------------------- softmax1
def test_softmax1_equals_explicit_zero_kv_token():
    g = torch.Generator().manual_seed(0)
    B, H, T, dh = 3, 2, 7, 5
    scores = torch.randn(B, H, T, T, generator=g) * 3
    v = torch.randn(B, H, T, dh, generator=g)
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    s = scores.masked_fill(~causal, float("-inf"))
    out1 = softmax1(s) @ v
    # explicit: an extra key with logit q·0 = 0 and an all-zero value, visible to every query
    s0 = torch.cat([torch.zeros(B, H, T, 1), s], dim=-1)
    v0 = torch.cat([torch.zeros(B, H, 1, dh), v], dim=2)
    out0 = torch.softmax(s0, -1) @ v0
    assert (out1 - out0).abs().max() < 1e-6
    # stable for huge logits, and rows sum to < 1
    big = softmax1(torch.tensor([[1000.0, 999.0, -float("inf")]]))
    assert torch.isfinite(big).all() and float(big.sum()) <= 1.0
    torch.testing.assert_close(big, torch.softmax(torch.tensor([[1000.0, 999.0, -1e30, 0.0]]), -1)[:, :3])


def test_softmax1_model_equals_zero_key_bias_model():
    """attn='softmax1' ≡ softmax with an extra slot whose key is 0 and value 0 (key_bias with k=0)."""
    g = torch.Generator().manual_seed(1)
    m1 = TinyTransformer(ToyConfig(attn="softmax1", n_heads=2), generator=g)
    m0 = TinyTransformer(ToyConfig(attn="softmax", key_bias=True, n_heads=2))
    m0.load_state_dict(m1.state_dict(), strict=False)
    for layer in m0.layers:
        layer.k_slot.data.zero_()
    b = make_batch(16, 16, 2)
    with torch.no_grad():
        i1 = m1(b.types, b.values, return_internals=True)
        i0 = m0(b.types, b.values, return_internals=True)
        # float32 attention agrees to 1e-6; predictions after two layers to float32 rounding (a few 1e-6) ...
        assert (i1.pred - i0.pred).abs().max() < 1e-5
        # ... and to 1e-6 (in fact ~1e-15) in float64
        p1 = m1.double()(b.types, b.values.double())
        p0 = m0.double()(b.types, b.values.double())
    assert (p1 - p0).abs().max() < 1e-6
    for a1, a0, e1, e0 in zip(i1.attn, i0.attn, i1.extra, i0.extra, strict=True):
        assert (a1 - a0).abs().max() < 1e-6 and (e1 - e0).abs().max() < 1e-6


# ----------------------------------------------------------------------------------------------- variants
@pytest.mark.parametrize("name", list(VARIANTS) + ["learned_pos_2heads"])
def test_variant_shapes_and_row_sums(name):
    opts = dict(VARIANTS.get(name, {"pos": "learned", "n_heads": 2}))
    cfg = ToyConfig(T=12, d_model=16, **opts)
    m = TinyTransformer(cfg, generator=torch.Generator().manual_seed(0))
    b = make_batch(5, 12, 0)
    assert m(b.types, b.values).shape == (5, 12)
    it = m(b, return_internals=True)
    H, d = cfg.n_heads, cfg.d_model
    assert isinstance(it, ToyInternals) and len(it.attn) == 2 and len(it.resid) == 3
    assert it.extra_names == cfg.extra_slots
    for A, E, out in zip(it.attn, it.extra, it.head_out, strict=True):
        assert A.shape == (5, H, 12, 12) and E.shape == (5, H, 12, len(cfg.extra_slots))
        assert out.shape == (5, H, 12, d)
        assert (A.triu(1) == 0).all()  # causal
        real = A.sum(-1)
        total = real + E.sum(-1)
        if cfg.attn == "sigmoid":
            assert (A >= 0).all() and (A <= 1).all()
        else:
            assert (total - 1).abs().max() < 1e-5
            if cfg.extra_slots:
                assert (real <= 1 + 1e-6).all()
    # the residual is the sum of the head outputs
    torch.testing.assert_close(it.resid[1] - it.resid[0], it.head_out[0].sum(1), atol=1e-5, rtol=1e-5)
    loss = AveragingTask.loss(m(b.types, b.values), b)
    loss.backward()
    assert all(p.grad is not None for p in m.parameters())


# ----------------------------------------------------------------------------------------------- metrics (hand-made)
def test_emergence_metrics_hand_made():
    # T = 5, SEP at 2: post = {3, 4}, pre = {1}
    types = torch.tensor([[BOS, NUM, SEP, NUM, NUM]])
    values = torch.tensor([[0.0, 1.0, 0.0, 2.0, 4.0]])
    b = make_batch(1, 5, 0)
    b.types, b.values, b.sep = types, values, torch.tensor([2])
    b.mask = torch.tensor([[False, False, False, True, True]])
    b.target = torch.tensor([[0.0, 0.0, 0.0, 2.0, 3.0]])
    A1 = torch.zeros(1, 1, 5, 5)
    A1[0, 0, 0, 0] = 1
    A1[0, 0, 1] = torch.tensor([0.6, 0.4, 0, 0, 0])
    A1[0, 0, 2] = torch.tensor([0.2, 0.2, 0.6, 0, 0])
    A1[0, 0, 3] = torch.tensor([0.1, 0, 0.9, 0, 0])
    A1[0, 0, 4] = torch.tensor([0.1, 0, 0.7, 0.1, 0.1])
    A2 = torch.zeros(1, 1, 5, 5)
    A2[0, 0, 4] = torch.tensor([0.1, 0, 0.1, 0.4, 0.4])
    for t in range(4):
        A2[0, 0, t, t] = 1
    # layer-1 output: tag direction e0 on post tokens, noise on e1 for NUM tokens
    o = torch.zeros(1, 1, 5, 2)
    o[0, 0, 1] = torch.tensor([0.0, 1.0])
    o[0, 0, 3] = torch.tensor([1.0, -1.0])
    o[0, 0, 4] = torch.tensor([1.0, 0.0])
    it = ToyInternals(pred=b.target + 0.1, attn=[A1, A2], extra=[A1[..., :0], A2[..., :0]], extra_names=[],
                      head_out=[o, o], resid=[torch.zeros(1, 5, 2)] * 3, gates=[])
    m = emergence_metrics(it, b)
    assert m["catch"] == pytest.approx(0.8)  # mean(0.9, 0.7)
    assert m["pre_to_bos"] == pytest.approx(0.6)
    assert m["release_mass"] == pytest.approx(0.8)
    assert m["release_unif"] == pytest.approx(1.0)
    assert m["loss"] == pytest.approx(0.01, rel=1e-5)
    # NUM outputs (0,1), (1,-1), (1,0): mean diff post-pre = (1, -1.5); EV along it computed by hand
    outs = np.array([[0, 1], [1, -1], [1, 0]], float)
    Oc = outs - outs.mean(0)
    u = np.array([1, -1.5]) / np.linalg.norm([1, -1.5])
    assert m["tag_ev"] == pytest.approx(((Oc @ u) ** 2).sum() / (Oc ** 2).sum(), rel=1e-5)
    br = attention_breakdown(it, b, layer=0)
    assert br["post"]["sep"] == pytest.approx(0.8) and br["post"]["bos"] == pytest.approx(0.1)
    assert br["pre"]["bos"] == pytest.approx(0.6) and br["post"]["extra"] == 0
    assert br["last"]["post"] == pytest.approx(0.2)


def test_lr_schedule():
    cfg = ToyConfig(schedule="wsd", decay_frac=0.2)
    f = [lr_factor(cfg, i, 100) for i in range(100)]
    assert f[0] == 1 and f[79] == 1 and f[80] == pytest.approx(1.0) and f[99] == pytest.approx(0.05)
    cfg = ToyConfig(schedule="cosine", warmup=10)
    assert lr_factor(cfg, 0, 100) == pytest.approx(1 / 11) and lr_factor(cfg, 10, 100) == pytest.approx(1.0)


# ----------------------------------------------------------------------------------------------- training
def test_seed0_defaults_meet_targets(seed0):
    """Issue point 2: T=16, width 32, no LN, seed 0, 600 steps."""
    f = seed0[-1]
    assert f["step"] == 600
    assert f["loss"] < 1e-3, f
    assert f["catch"] >= 0.8, f
    assert f["release_mass"] >= 0.95, f
    assert f["tag_ev"] >= 0.7, f
    # the < 60 s target is measured in benchmarks/toy_sweep.py (JSON); tests check correctness, not timings
    assert seed0.wall_time > 0
    assert seed0.config.T == 16 and seed0.config.d_model == 32 and not seed0.config.ln
    for key in ("step", "loss", "catch", "pre_to_bos", "release_mass", "release_unif", "tag_ev"):
        assert key in f
    assert [r["step"] for r in seed0][:3] == [0, 25, 50] and len(seed0) == 25
    assert seed0[0]["loss"] > 0.1  # it starts unsolved


def test_same_seed_same_history_different_seed_differs():
    a = train(seed=3, steps=60, progress=False, log_every=20)
    b = train(seed=3, steps=60, progress=False, log_every=20)
    c = train(seed=4, steps=60, progress=False, log_every=20)
    assert list(a) == list(b)
    assert list(a) != list(c)
    for p, q in zip(a.model.parameters(), b.model.parameters(), strict=True):
        assert torch.equal(p, q)


def test_progress_bar_runs(capsys):
    r = train(seed=0, steps=3, progress=True, log_every=2)
    assert [x["step"] for x in r] == [0, 2, 3]
    assert r[0]["train_loss"] is None and r[1]["train_loss"] > 0


# ----------------------------------------------------------------------------------------------- tracing
def test_trace_toy_valid_and_shows_catch(seed0, tmp_path):
    tr = trace_toy(seed0.model, 7)
    assert isinstance(tr, SinkTrace)
    L, H, T, d = 2, 1, 16, 32
    assert tr.sink_scores.shape == (L, H, T) and tr.first_token_mass.shape == (L, H)
    assert tr.entropy.shape == (L, H) and tr.resid_norms.shape == (L, T)
    assert tr.maps.shape == (L * H, T, T) and tr.maps.dtype == np.float32
    assert tr.head_outputs.shape == (L, H, T, d)
    assert tr.tokens[0] == "<bos>" and tr.tokens.count("<sep>") == 1
    s = tr.meta["sep_position"]
    assert tr.tokens[s] == "<sep>" and tr.meta["model"] == "toy-averaging" and tr.meta["add_bos"] is True
    assert tr.meta["toy_config"]["d_model"] == 32 and tr.meta["extra_sink_mass"] == [[0.0], [0.0]]
    # α of SEP in layer 1 is large after training (catch), and consistent with the map
    A = tr.get_map(0, 0)
    assert tr.sink_scores[0, 0, s] == pytest.approx(A[s:, s].mean(), abs=1e-6)
    assert tr.sink_scores[0, 0, s] > 0.5
    assert np.allclose(A.sum(-1), 1, atol=1e-5)
    assert np.isfinite(tr.entropy).all() and np.isfinite(tr.resid_norms).all()
    # round-trip
    back = SinkTrace.load(tr.save(tmp_path / "toy.npz"))
    assert back.tokens == tr.tokens and back.meta["sep_position"] == s
    np.testing.assert_array_equal(back.sink_scores, tr.sink_scores)
    np.testing.assert_array_equal(back.maps, tr.maps)
    np.testing.assert_array_equal(back.head_outputs, tr.head_outputs)


def test_trace_toy_extra_slots_excluded():
    m = TinyTransformer(ToyConfig(sink_token=True, kv_bias=True, n_heads=2), generator=torch.Generator().manual_seed(0))
    b = make_batch(3, 16, 0)
    tr = trace_toy(m, b, index=2)
    assert tr.sink_scores.shape == (2, 2, 16) and len(tr.tokens) == 16
    assert tr.meta["extra_slots"] == ["sink_token", "kv_bias"]
    mass = np.array(tr.meta["extra_sink_mass"])
    assert mass.shape == (2, 2) and (mass > 0).all() and (mass < 1).all()
    rows = tr.maps.sum(-1)  # real mass + extra mass = 1
    assert (rows < 1).all()
    with pytest.raises(ValueError, match="index=5"):
        trace_toy(m, b, index=5)


# ----------------------------------------------------------------------------------------------- charts
def test_emergence_chart(seed0, tmp_path):
    import vl_convert as vlc

    ch = emergence_chart(seed0, title="seed 0")
    spec = ch.to_dict()
    assert len(spec["vconcat"]) == 2
    top, bottom = spec["vconcat"]
    assert top["encoding"]["y"]["scale"]["type"] == "log"
    assert top["encoding"]["x"]["field"] == "step" and bottom["encoding"]["color"]["field"] == "metric"
    metrics = {r["metric"] for r in bottom["data"]["values"]}
    assert any("catch" in m for m in metrics) and any("release" in m for m in metrics)
    assert any("tag" in m for m in metrics)
    assert "url" not in top["data"]  # inline data: renders offline
    svg = vlc.vegalite_to_svg(spec)
    assert svg.lstrip().startswith("<svg") and len(svg) > 1000
    png = vlc.vegalite_to_png(spec)
    assert png[:4] == b"\x89PNG"
    multi = emergence_chart({"a": seed0[:5], "b": seed0[:5]}).to_dict()
    assert multi["vconcat"][0]["encoding"]["strokeDash"]["field"] == "run"
    with pytest.raises(ValueError, match="loss"):
        emergence_chart([])


# ----------------------------------------------------------------------------------------------- studies
def test_studies_small():
    sw = seed_sweep(seeds=[0, 1], steps=10, progress=False)
    assert sw["n_runs"] == 2 and 0 <= sw["success_rate"] <= 1 and "loss <" in sw["criterion"]
    assert sw["n_meets_targets"] == 0 and all("meets_targets" in r for r in sw["runs"])
    st = sink_placement_study(seeds=[0], steps=10, variants=["softmax1", "sink_token"], progress=False)
    assert set(st) == {"softmax1", "sink_token"}
    s1 = st["softmax1"]["summary"]
    assert math.isclose(s1["layer1_post"]["total"], 1.0, abs_tol=1e-5)
    assert "null" in s1["layer1_post"] and "sink_token" in st["sink_token"]["summary"]["layer1_pre"]
    assert "| softmax1 |" in placement_table(st)
    with pytest.raises(ValueError, match="nope"):
        sink_placement_study(variants=["nope"])
