"""TagExplorer without a browser: payload codecs and budget, what is drawn (coordinates, catch colours, numbers),
trait validation, the selection trait and the across-layers panel, link with SinkExplorer, the offline file."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import traitlets
from threadpoolctl import threadpool_limits

import sinkwidgets as sw
from sinkwidgets import tags
from sinkwidgets.tags import TagData
from sinkwidgets.widgets import _tag_state as TS
from sinkwidgets.widgets._serialization import buffers_nbytes, decode_array

pytestmark = pytest.mark.unit


@pytest.fixture(autouse=True)
def _one_blas_thread():
    with threadpool_limits(1):
        yield


def corpus(N=24, d=16, seed=0, xss=None, L=3, H=2):
    """Head (1, 0): token 0 is a sink (α 0.8), a '.' at position 4 a second one; maps put 0.6 of each later row on
    the '.' for even prompts (caught at τ = 0.3) and 0.6 on token 0 otherwise. Outputs lean along u by token."""
    rng = np.random.default_rng(seed)
    u = np.linalg.qr(rng.standard_normal((d, 2)))[0][:, 0]
    tokens, outs, vals, scores, maps = [], [], [], [], []
    for i in range(N):
        T = int(rng.integers(11, 16))  # the "." at 4 needs >= 5 later queries to count as a sink
        toks = [f"w{i}_{t}" for t in range(T)]
        toks[0], toks[4] = "The", "."
        if xss is not None and i == 0:
            toks[1:1 + len(xss)] = xss
        tokens.append(toks)
        a = rng.normal(2, 1, T)
        o = a[:, None] * u + 0.3 * rng.standard_normal((T, d))
        g = 0.5 * rng.standard_normal((T, d))
        g[0] = 3 * u + 0.2 * rng.standard_normal(d)  # sinks lean along u, with spread: their values span d dims
        g[4] = 2 * u + 0.2 * rng.standard_normal(d)  # (exact multiples of u span 1: rank 2-3 is refused)
        s = np.full((L, H, T), 0.05)
        s[1, 0, 0], s[1, 0, 4] = 0.8, 0.5
        A = np.zeros((T, T))
        for t in range(T):
            if t < 5:
                A[t, 0] = 1.0
            else:
                sink = 4 if i % 2 == 0 else 0
                A[t, sink] = 0.6
                A[t, [k for k in range(t + 1) if k != sink]] += 0.4 / t
        outs.append(o[None])
        vals.append(g[None])
        scores.append(s)
        maps.append(A[None])
    labels = [i % 3 for i in range(N)]
    pooled = rng.standard_normal((N, L, d)).astype(np.float32)
    return TagData.from_prompts(tokens, heads=[(1, 0)], head_outputs=outs, head_values=vals, sink_scores=scores,
                                maps=maps, map_index=[(1, 0)], first_token_mass=[np.full((L, H), 0.5)] * N,
                                pooled_mean=pooled, pooled_layers=list(range(L)), labels=labels,
                                meta={"model": "toy"})


def unpack(p):
    return decode_array(p, p["data"])


@pytest.fixture(scope="module")
def data():
    return corpus()


# ----------------------------------------------------------------------------- codecs and payload
@pytest.mark.parametrize("dtype", ["uint8", "uint16", "int16", "int32", "uint32"])
def test_int_buffers_round_trip_and_refuse_overflow(dtype):
    info = np.iinfo(np.dtype(TS._INT_DTYPES[dtype]))
    a = np.array([info.min, 0, 1, info.max], dtype=np.int64).reshape(2, 2)
    p = TS.packed_int(a, dtype)
    assert isinstance(p["data"], bytes) and len(p["data"]) == 4 * np.dtype(TS._INT_DTYPES[dtype]).itemsize
    np.testing.assert_array_equal(TS.decode_int(p), a)
    with pytest.raises(ValueError, match=f"do not fit in {dtype}"):
        TS.packed_int(np.array([int(info.max) + 1]), dtype)


def test_token_strings_are_sent_once(data):
    vocab, codes = TS.token_table(data)
    flat = [t for toks in data.tokens for t in toks]
    assert len(vocab) == len(set(flat)) < len(flat)
    assert [vocab[c] for c in TS.decode_int(codes)] == flat
    assert codes["dtype"] == "uint16"


def test_state_round_trips_to_what_is_drawn(data):
    te = sw.TagExplorer(data, head=(1, 0))
    P = te._points
    xy = unpack(P["xy"])
    np.testing.assert_array_equal(xy, te.coords())
    assert xy.shape == (data.n_tokens, 2) and P["xy"]["dtype"] == "float32"
    # the axes are the tag subspace from tag_ev (x) and the top PC orthogonal to it (y)
    U = te.tag_ev().subspace
    np.testing.assert_allclose(xy[:, 0], data.outputs((1, 0)) @ U[:, 0], rtol=1e-5, atol=1e-5)
    # arrow: the mean tag vector over the sinks, on the same axes
    G, _ = tags.tag_vectors(data, (1, 0))
    assert abs(P["arrow"][0] - float(G.mean(0) @ U[:, 0])) < 1e-6
    C = te._catch
    np.testing.assert_array_equal(TS.decode_int(C["codes"]), te._view_model.catch((1, 0), te.tau)["codes"])
    assert TS.decode_int(te._static["offsets"]).tolist() == data.offsets.tolist()


def test_payload_budget_at_20000_points_and_no_number_lists():
    d = corpus(N=1700, d=32, seed=1)  # ~ 19,000 tokens
    n = d.n_tokens
    assert n > 18_000
    te = sw.TagExplorer(d, head=(1, 0))
    state = te.get_state()
    binary = buffers_nbytes(state)
    text = json.dumps({k: v for k, v in state.items()}, default=lambda b: None)
    budget = TS.BYTES_PER_POINT_BUDGET * n + TS.PAYLOAD_FIXED_BUDGET
    assert binary + len(text) <= budget, (binary, len(text), budget)
    # coordinates travel as bytes: no JSON list holds more than a handful of numbers
    lists = re.findall(r"\[([-0-9., e]+)\]", text)
    assert max((len(s.split(",")) for s in lists), default=0) <= 40


# ----------------------------------------------------------------------------- catch colours and numbers
def test_catch_colours_follow_the_hand_made_maps(data):
    te = sw.TagExplorer(data, head=(1, 0), tau=0.3)
    res = te._view_model.catch((1, 0), 0.3)
    names = res["names"]
    assert names[0] == "not caught" and "first token (position 0)" in names and "sink '.'" in names
    for i in range(data.n_prompts):
        sl = data.span(i)
        codes, pos = res["codes"][sl], res["pos"][sl]
        T = sl.stop - sl.start
        assert pos[0] == -1 and codes[0] == 0  # token 0 has no earlier sink
        assert (pos[1:5] == 0).all()  # rows 1..4 put all their attention on token 0
        want = 4 if i % 2 == 0 else 0
        assert (pos[5:T] == want).all(), (i, pos)
        assert [names[c] for c in codes[5:T]] == ["sink '.'" if want == 4 else "first token (position 0)"] * (T - 5)
    # at τ = 0.7 the 0.6 weights no longer catch: only rows 1..4 (weight 1.0) do
    res7 = te._view_model.catch((1, 0), 0.7)
    assert (res7["pos"][data.positions >= 5] == -1).all()
    te.tau = 0.7
    assert te._catch["tau"] == 0.7 and TS.decode_int(te._catch["codes"]).tolist() == res7["codes"].tolist()


def test_numbers_are_tag_ev_values(data):
    te = sw.TagExplorer(data, head=(1, 0), rank=2)
    assert te.wait(60)  # the controls are computed in a thread after the first view
    r = tags.tag_ev(data, (1, 0), 2)
    for k in ("ev", "ev_in_sample", "pc_bound", "random_floor", "random_std", "value_control", "cosine"):
        assert te._numbers[k] == pytest.approx(getattr(r, k), abs=1e-12), k
    assert te._numbers["caught_share"] == pytest.approx(
        float((te._view_model.catch((1, 0), 0.3)["pos"] >= 0)[data.positions >= 1].mean()))


def test_numbers_are_deferred_and_stale_results_dropped(data):
    """In a kernel (a running event loop) the first state holds the picture and a 'computing' panel; the numbers
    arrive from a loop callback after the cell, and a result for a rank the user has already left is never shown.
    Without a loop (scripts) they are computed at once."""
    import asyncio
    import concurrent.futures

    async def in_a_kernel():
        te = sw.TagExplorer(data, head=(1, 0), rank=1)
        first = dict(te._numbers)
        assert te._points["status"] == "ok" and first["ok"] is False and first["pending"]
        te.rank = 2  # before the rank-1 numbers were computed
        assert te._numbers["pending"] and te._numbers["rank"] == 2
        for _ in range(200):
            await asyncio.sleep(0.05)
            if te._numbers["ok"]:
                break
        assert te._numbers["ok"] and te._numbers["rank"] == 2
        assert not te._view_model.ev_ready((1, 0), 1)  # the stale rank-1 callback was cancelled, never computed
        te2 = sw.TagExplorer(data, head=(1, 0), rank=3)
        assert te2._numbers["pending"] and te2.wait() and te2._numbers["ok"] and te2._numbers["rank"] == 3
        return te._numbers["ev"]

    # a fresh thread owns its own loop: an earlier test (Playwright's sync API in tests/browser/) can leave a loop
    # running in the main thread, where asyncio.run() refuses to start
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        ev = pool.submit(asyncio.run, in_a_kernel()).result(timeout=120)
    assert ev == pytest.approx(tags.tag_ev(data, (1, 0), 2).ev, abs=1e-12)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:  # a thread with no running loop (a script)
        now = pool.submit(sw.TagExplorer, data, head=(1, 0), defer=True).result(timeout=120)
    assert now._numbers["ok"] and now._pending is None  # computed with the picture


def test_nonfinite_rows_are_left_out_and_counted(tmp_path):
    """One NaN in head_outputs (an fp16 overflow is enough) used to make every coordinate NaN (an empty scatter with
    normal-looking numbers) and to_html raise a JSON error. Policy: those tokens are left out and counted."""
    d = corpus(N=24)
    slot = d.head_slot((1, 0))
    bad = [int(d.offsets[2]) + 6, int(d.offsets[7]) + 3]
    d.head_outputs[slot, bad[0], 3] = np.nan
    d.head_values[slot, bad[1], 0] = np.inf
    te = sw.TagExplorer(d, head=(1, 0), defer=False)
    xy = te.coords()
    keep = np.setdiff1d(np.arange(d.n_tokens), bad)
    assert np.isnan(xy[bad]).all() and np.isfinite(xy[keep]).all()
    P = te._points
    assert P["n_nonfinite"] == 2 and te.n_nonfinite == 2
    assert "2 tokens of L1H0 left out" in P["nonfinite_note"] and "prompt 2 pos 6" in P["nonfinite_note"]
    assert all(v is not None and np.isfinite(v) for v in P["arrow"])
    N = te._numbers
    assert N["ok"] and N["n_nonfinite"] == 2 and "prompt 7 pos 3" in N["nonfinite_note"]
    for k in ("ev", "ev_in_sample", "pc_bound", "random_floor", "value_control", "cosine", "caught_share"):
        assert N[k] is not None and np.isfinite(N[k]), k
    # the numbers are those of the same corpus without the two tokens' rows (zeroed rows, never sinks, not evaluated)
    r = te.tag_ev()
    _, ev_prompts = tags.analysis.split_prompts(d.n_prompts, 0.5, 0)
    in_eval = int(np.isin(d.prompt_of[bad], ev_prompts).sum())
    assert r.n_tokens == tags.tag_ev(corpus(N=24), (1, 0)).n_tokens - in_eval
    assert np.isfinite(r.subspace).all()
    te.projection = "pca"
    assert np.isfinite(te.coords()[keep]).all() and np.isnan(te.coords()[bad]).all()
    html = te.to_html(tmp_path / "nan.html").read_text()
    assert "left out of the fits" in html
    clean = sw.TagExplorer(corpus(N=24), head=(1, 0), defer=False)
    assert clean._numbers["n_nonfinite"] == 0 and clean._points["nonfinite_note"] == ""


def test_error_in_tag_ev_is_shown_not_raised():
    d = corpus(N=6)
    d.sink_scores[:] = 0.01  # no sinks at all
    te = sw.TagExplorer(d, head=(1, 0), projection="pca")
    assert te.wait(60)
    assert te._numbers["ok"] is False and "sinks" in te._numbers["error"]
    assert te._points["status"] == "ok"  # the PCs need no sinks
    te.projection = "tag"
    assert te._points["status"] == "error" and "sinks" in te._points["message"]


def test_projection_change_refreshes_only_the_points(data, monkeypatch):
    te = sw.TagExplorer(data, head=(1, 0))
    assert te.wait(60)  # the deferred numbers of the first view are in
    calls = []
    for name in ("catch", "numbers", "layer_series"):
        monkeypatch.setattr(te._view_model, name, lambda *a, name=name, **kw: calls.append(name))
    te.projection = "pca"
    assert calls == [] and te._points["projection"] == "pca" and te._points["status"] == "ok"


# ----------------------------------------------------------------------------- traits
@pytest.mark.parametrize(("name", "value", "match"), [
    ("head", [2, 1], r"head \(2, 1\) was not collected; this TagData has heads \(1, 0\)"),
    ("tau", 1.5, r"tau must be in \(0, 1\).*got 1.5"),
    ("tau", 0.0, r"tau must be in \(0, 1\)"),
    ("rank", 0, r"rank must be an int in 1\.\.8, got 0"),
    ("projection", "umap", r"projection must be one of \('tag', 'pca'\), got 'umap'"),
    ("source", "residual", r"source='residual' needs .* model"),
    ("color_by", "size", r"color_by must be one of"),
    ("selected", [0, 10_000], r"selected holds token index 10000; indices run 0\.\."),
    ("focus", -2, r"focus must be -1 \(none\) or a token index"),
])
def test_trait_validation_names_value_and_fix(data, name, value, match):
    te = sw.TagExplorer(data)
    with pytest.raises((traitlets.TraitError, ValueError), match=match):
        setattr(te, name, value)


def test_constructor_errors(data, tmp_path):
    with pytest.raises(TypeError, match="pass a TagData"):
        sw.TagExplorer(None)
    with pytest.raises(TypeError, match="needs a TagData"):
        sw.TagExplorer(42)
    with pytest.raises(ValueError, match="labels has 5 entries; give one per prompt"):
        sw.TagExplorer(data, labels=[1, 2, 3, 4, 5])
    with pytest.raises(ValueError, match="at most 12"):
        sw.TagExplorer(data, labels=list(range(data.n_prompts)))
    bare = TagData(tokens=data.tokens, offsets=data.offsets, sink_scores=data.sink_scores)
    with pytest.raises(ValueError, match="collect with heads="):
        sw.TagExplorer(bare)
    nolabels = TagData.from_prompts([["a", "b"]] * 3, heads=[(0, 0)], head_outputs=[np.ones((1, 2, 4))] * 3,
                                    head_values=[np.ones((1, 2, 4))] * 3, sink_scores=[np.ones((1, 1, 2))] * 3)
    te = sw.TagExplorer(nolabels)
    assert te.color_by == "position"  # no maps, no labels
    with pytest.raises(traitlets.TraitError, match="color_by='label' needs labels"):
        te.color_by = "label"
    path = data.save(tmp_path / "d.npz")
    assert sw.TagExplorer(path).data.n_tokens == data.n_tokens  # a saved file works too


def test_labels_per_prompt_and_per_token(data):
    te = sw.TagExplorer(data, color_by="label")
    codes = TS.decode_int(te._static["labels"])
    assert te._static["label_names"] == ["0", "1", "2"]
    assert codes.tolist() == np.repeat(np.arange(data.n_prompts) % 3, data.lengths).tolist()
    per_token = ["yes" if p % 2 else "no" for p in data.positions]
    te2 = sw.TagExplorer(data, labels=per_token)
    assert te2._static["label_names"] == ["no", "yes"]
    assert TS.decode_int(te2._static["labels"]).tolist() == (data.positions % 2).tolist()


# ----------------------------------------------------------------------------- selection and layers
def test_selection_trait_drives_the_layer_panel(data):
    te = sw.TagExplorer(data, head=(1, 0))
    assert te._layers["status"] == "empty"
    sel = [int(data.offsets[3]) + 2, int(data.offsets[5]) + 1]
    te.selected = sel
    assert te.selected_tokens() == [(3, 2, data.tokens[3][2]), (5, 1, data.tokens[5][1])]
    Ly = te._layers
    assert Ly["status"] == "ok" and Ly["kind"] == "prompts" and Ly["layers"] == [1, 2]
    u = te.tag_ev().subspace[:, 0]
    stats = unpack(Ly["stats"])
    want = np.stack([data.pooled(l)[[3, 5]] @ u for l in (1, 2)])  # [Ls, 2 prompts]
    np.testing.assert_allclose(stats[:, 0], want.mean(1), rtol=1e-5)
    np.testing.assert_allclose(stats[:, 2], np.median(want, 1), rtol=1e-5)
    te.selected = []
    assert te._layers["status"] == "empty"


def test_per_token_layer_series_with_a_model_hook(data):
    """With a model the panel follows single tokens; the hook that runs the model is replaced by a fake here."""
    te = sw.TagExplorer(data, head=(1, 0))
    calls = []

    def fake(head, rank, basis, layers, prompts):
        calls.append((head, tuple(layers), tuple(prompts)))
        # coordinate after layer l of token t in prompt i: 100 i + 10 l + t
        return {i: np.array([[100 * i + 10 * l + t for t in range(data.lengths[i])] for l in layers], np.float32)
                for i in prompts}

    te._view_model.layer_coords = fake
    j = int(data.offsets[2]) + 6
    te.selected = [j]
    Ly = te._layers
    assert calls == [((1, 0), (1, 2), (2,))]
    assert Ly["kind"] == "tokens" and Ly["n_lines"] == 1
    stats = unpack(Ly["stats"])
    np.testing.assert_allclose(stats[:, 2], [200 + 10 + 6, 200 + 20 + 6])
    ref = unpack(Ly["ref"])  # the other tokens t >= 1 of prompt 2
    others = [t for t in range(1, data.lengths[2]) if t != 6]
    np.testing.assert_allclose(ref[:, 0], [200 + 10 + np.mean(others), 200 + 20 + np.mean(others)], rtol=1e-6)


def test_residual_projection_unit_projects_and_lands():
    torch = pytest.importorskip("torch")
    from sinkwidgets.tracing import reductions as R

    basis = np.linalg.qr(np.random.default_rng(0).standard_normal((6, 2)))[0]
    unit = R.ResidualProjection([3, 1], basis)
    unit.bind(4, 2, 6)
    x = torch.randn(2, 5, 6)
    out = unit.read("resid", x, None, None, 1)["coords"]
    np.testing.assert_allclose(out.numpy(), x.numpy() @ basis.astype(np.float32), rtol=1e-5, atol=1e-6)
    packed = unit.pack("coords", [out, out * 2]).numpy()  # [Ls, B, T, k]
    landed = unit.land({"coords": packed}, 1, 2)
    assert landed["resid_coords"].shape == (2, 3, 2) and landed["resid_coord_layers"].tolist() == [1, 3]
    with pytest.raises(ValueError, match="basis has 6 rows, the model width is 8"):
        R.ResidualProjection([0], basis).bind(2, 2, 8)


# ----------------------------------------------------------------------------- SinkExplorer link
def test_prompt_trace_and_set_trace(data):
    tr = sw.widgets.prompt_trace(data, 3)
    sl = data.span(3)
    assert tr.tokens == data.tokens[3] and tr.n_tokens == sl.stop - sl.start
    np.testing.assert_array_equal(tr.sink_scores, data.sink_scores[:, :, sl])
    np.testing.assert_allclose(tr.get_map(1, 0), data.attention_map((1, 0), 3), atol=1e-3)
    ex = sw.SinkExplorer(sw.widgets.prompt_trace(data, 0), layer=1, head=0, token=8)
    old = ex._summary
    ex.set_trace(tr, token=50)
    assert ex.trace is tr and ex.token == tr.n_tokens - 1 and ex._tokens == tr.tokens and ex._summary is not old
    assert ex._map["status"] == "kept" and ex._map["T"] == tr.n_tokens
    with pytest.raises(ValueError, match="this trace has 3 layers x 2 heads"):
        ex.set_trace(tr, layer=7)


def test_link_heads_both_ways_and_focus_shows_the_prompt():
    d = corpus()
    d2 = TagData.from_prompts(d.tokens, heads=[(1, 0), (2, 1)],
                              head_outputs=[np.concatenate([d.outputs((1, 0))[d.span(i)][None]] * 2)
                                            for i in range(d.n_prompts)],
                              head_values=[np.concatenate([d.values((1, 0))[d.span(i)][None]] * 2)
                                           for i in range(d.n_prompts)],
                              sink_scores=[d.sink_scores[:, :, d.span(i)] for i in range(d.n_prompts)],
                              maps=[d.maps[:, d.map_offsets[i]:d.map_offsets[i + 1]].reshape(1, len(t), len(t))
                                    for i, t in enumerate(d.tokens)], map_index=[(1, 0)])
    d2.sink_scores[2, 1, :] = d2.sink_scores[1, 0, :]  # (2, 1) has the same sinks
    te = sw.TagExplorer(d2, head=(2, 1))
    ex = sw.SinkExplorer(sw.widgets.prompt_trace(d2, 0))
    lk = sw.link(ex, te)
    assert (ex.layer, ex.head) == (2, 1)  # starts on the TagExplorer's head
    ex.select(1, 0)
    assert te.head == [1, 0]
    te.head = [2, 1]
    assert (ex.layer, ex.head) == (2, 1)
    ex.select(0, 1)  # not collected: the TagExplorer stays and says why
    assert te.head == [2, 1] and "L0H1 was not collected" in lk.note
    j = int(d2.offsets[7]) + 5
    te.focus = j
    assert lk.prompt == 7 and ex.trace.tokens == d2.tokens[7] and ex.token == 5 and (ex.layer, ex.head) == (2, 1)
    lk.unlink()
    ex.select(1, 0)
    assert te.head == [2, 1]
    with pytest.raises(TypeError, match="explorer must be a SinkExplorer"):
        sw.link(te, te)


def test_link_refuses_explorers_of_two_models():
    """A SmolLM2 SinkExplorer linked to a Gemma TagExplorer used to link silently; a click then swapped the explorer
    to the other model's prompt."""
    from sinkwidgets.errors import SinkwidgetsError

    d = corpus()
    d.meta.update(model="gemma-3-270m", hub_id="google/gemma-3-270m")
    te = sw.TagExplorer(d, head=(1, 0))
    ex = sw.SinkExplorer(sw.widgets.synthetic_trace(16))  # SmolLM2-shaped, 30 x 9
    ex.trace.meta.update(model="smollm2-135m", hub_id="HuggingFaceTB/SmolLM2-135M-Instruct")
    with pytest.raises(SinkwidgetsError, match=r"'smollm2-135m' \(30 layers x 9 heads\).*'gemma-3-270m' "
                                               r"\(3 layers x 2 heads\).*hub id differs") as err:
        sw.link(ex, te)
    assert isinstance(err.value, ValueError) and "prompt_trace" in str(err.value)
    # same name but another shape (e.g. a trace of an unnamed model with other dimensions) is refused too
    ex2 = sw.SinkExplorer(sw.widgets.synthetic_trace(16))
    ex2.trace.meta["model"] = "gemma-3-270m"
    ex2.trace.meta.pop("hub_id", None)
    with pytest.raises(SinkwidgetsError, match="number of layers differs"):
        sw.link(ex2, te)
    # the same model links (prompt_trace carries the TagData's model facts)
    lk = sw.link(sw.SinkExplorer(sw.widgets.prompt_trace(d, 0)), te)
    assert lk.note == ""


def test_tag_explorer_names_a_model_mismatch():
    """TagExplorer(data, model=other) used to fail later, asking for texts=; it now names both models."""
    from types import SimpleNamespace

    from sinkwidgets.errors import SinkwidgetsError

    d = corpus()
    d.meta.update(model="smollm2-135m", hub_id="HuggingFaceTB/SmolLM2-135M-Instruct")
    gemma = SimpleNamespace(sinkwidgets=SimpleNamespace(name="gemma-3-270m", hub_id="google/gemma-3-270m",
                                                        n_layers=18, n_heads=4, d_model=640))
    with pytest.raises(SinkwidgetsError, match=r"model is 'gemma-3-270m' \(18 layers x 4 heads, d = 640\) but the "
                                               r"TagData was collected with 'smollm2-135m'.*hub id differs") as err:
        sw.TagExplorer(d, head=(1, 0), model=gemma)
    assert "texts=" not in str(err.value) and "load_model('smollm2-135m')" in str(err.value)


# ----------------------------------------------------------------------------- offline file
def test_offline_html_is_self_contained_and_escapes_tokens(tmp_path):
    xss = ["<img src=x onerror=alert(1)>", "</script><b>x</b>"]
    d = corpus(xss=xss)
    te = sw.TagExplorer(d, head=(1, 0), projection="pca")
    path = te.to_html(tmp_path / "te.html", title="tags <test>")
    page = path.read_text(encoding="utf-8")
    assert "http://" not in page and "https://" not in page
    assert "<img src=x" not in page and "</script><b>" not in page
    assert "<title>tags &lt;test&gt;</title>" in page
    assert page.count('data-te-buffer="') >= 6  # points of both projections + catch + static, as binary
    state = json.loads(re.search(r'<script type="application/json" id="te-state">(.*?)</script>', page, re.S).group(1))
    assert state["state"]["_static"]["offline"] is True
    assert set(state["views"]) == {"1,0"} and set(state["views"]["1,0"]) >= {"tag", "pca", "catch", "numbers"}
    assert xss[0] in state["state"]["_vocab"]
    with pytest.raises(IsADirectoryError, match="give a file name"):
        te.to_html(tmp_path)


def test_offline_html_embeds_each_buffer_once(tmp_path):
    te = sw.TagExplorer(corpus(), head=(1, 0))
    page = te.to_html(tmp_path / "once.html").read_text(encoding="utf-8")
    payload = json.loads(re.search(r'id="te-state">(.*?)</script>', page, re.S).group(1))
    refs = re.findall(r'\{"\$buffer": (\d+)\}', json.dumps(payload))
    n_tags = page.count('data-te-buffer="')
    assert sorted({int(i) for i in refs}) == list(range(n_tags)) and len(refs) > n_tags
    st, view = payload["state"], payload["views"]["1,0"]
    assert st["_points"] == view[st["projection"]] and st["_catch"] == view["catch"]  # shared, embedded once


def test_save_png_needs_a_front_end(data):
    te = sw.TagExplorer(data)
    with pytest.raises(RuntimeError, match="displayed in a live notebook"):
        te.save_png("x.png")


def test_esm_shares_the_codecs_of_sinkwidgets_js():
    js = TS.esm()
    assert js.count("export function decodeArray") == 1 and "export function decodeInts" in js
    assert "export default { render }" in js and js.count("export default") == 1
    assert "innerHTML" not in js  # untrusted tokens: textContent only


def test_blas_limit_is_nested_and_restored():
    """The widget's linear algebra runs with one BLAS thread (a 576 x 576 eigh took 6.3 s instead of 0.05 s with two
    threads right after a torch collect); nested uses keep it, and the user's setting comes back after."""
    from threadpoolctl import threadpool_info, threadpool_limits

    def blas_threads():
        return [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"]

    with threadpool_limits(2, user_api="blas"):
        before = blas_threads()
        with TS.blas_one_thread():
            with TS.blas_one_thread():
                pass
            assert all(n == 1 for n in blas_threads())  # leaving the inner one did not restore yet
        assert blas_threads() == before
