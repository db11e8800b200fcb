"""TagExplorer.experiment("release") (issue 19 item 3): the tag subspace projected out at the selected (or caught)
tokens equals sw.project_out to 1e-6, the random and PC controls are there, later heads' change of attention on the
sink is reported, a linked SinkExplorer shows the prompt under the edit, and failures are clear and change nothing."""

from __future__ import annotations

import numpy as np
import pytest

import sinkwidgets as sw
from sinkwidgets.errors import SinkwidgetsError
from sinkwidgets.tags import TagData
from sinkwidgets.widgets._tag_state import TagView
from sinkwidgets.widgets.experiment import ExperimentCancelled, ExperimentError
from sinkwidgets.widgets.tag_experiment import TagExperiment, caught_positions, plan_positions

TEXTS = ["The cat sat on the mat. Then it slept for a while, and the dog barked <img src=x onerror=alert(1)> twice.",
         "A ship sailed past the harbour at night. Lights glowed. Nobody saw it go."]
SMOL_TEXTS = ["The old lighthouse keeper climbed the stairs every evening. Ships passed by in the dark. He watched them "
              "until the sun came up over the grey water.",
              "A scientist writes in her notebook: attention sinks appear in almost every model. Why? Nobody knows "
              "yet. The first token collects the attention."]


def toy(N=6, d=16, L=3, H=2, seed=0):
    """Head (1, 0): token 0 a sink (α 0.8) and a '.' at position 4 another; maps put 0.6 of each later row on the
    '.' in even prompts (caught at τ = 0.3) and on token 0 in odd ones."""
    rng = np.random.default_rng(seed)
    tokens, outs, vals, scores, maps = [], [], [], [], []
    for i in range(N):
        T = 12
        toks = [f"w{i}_{t}" for t in range(T)]
        toks[0], toks[4] = "The", "."
        tokens.append(toks)
        outs.append(rng.standard_normal((1, T, d)))
        g = 0.5 * rng.standard_normal((T, d))
        g[0], g[4] = 3.0, 2.0
        vals.append(g[None])
        s = np.full((L, H, T), 0.05)
        s[1, 0, 0], s[1, 0, 4] = 0.8, 0.5
        scores.append(s)
        A = np.zeros((T, T))
        for t in range(T):
            sink = 0 if t < 5 or i % 2 else 4
            A[t, sink] = 1.0 if t < 5 else 0.6
            if t >= 5:
                A[t, [k for k in range(t + 1) if k != sink]] += 0.4 / t
        maps.append(A[None])
    return TagData.from_prompts(tokens, heads=[(1, 0)], head_outputs=outs, head_values=vals, sink_scores=scores,
                                maps=maps, map_index=[(1, 0)], meta={"model": "toy"})


def _close(a, b, atol=1e-6):
    """Two InterventionResults hold the same numbers (NLL per text and condition, attention arrays)."""
    assert a.conditions == b.conditions
    for c in a.conditions:
        assert len(a.nll[c]) == len(b.nll[c])
        for x, y in zip(a.nll[c], b.nll[c]):
            np.testing.assert_allclose(x, y, rtol=0, atol=atol)
    assert set(a.attention) == set(b.attention)
    for k in a.attention:
        np.testing.assert_allclose(a.attention[k], b.attention[k], rtol=0, atol=atol)


# ----------------------------------------------------------------------------- no model (unit)
@pytest.mark.unit
def test_without_a_model_the_experiment_is_refused_and_the_panel_says_so():
    te = sw.TagExplorer(toy(), head=(1, 0), defer=False)
    with pytest.raises(SinkwidgetsError, match="no model.*load_model"):
        te.experiment("release")
    assert te._experiment == {} and te.experiments == []
    assert te._static["has_model"] is False  # the JS disables the Release button and shows the note
    with pytest.raises(ExperimentError, match="kind='mask'.*release"):
        te.experiment("mask")
    js = sw.widgets._tag_state.esm()
    assert "te-exp-release" in js and "needs a model: TagExplorer(data, model=" in js


@pytest.mark.unit
def test_plan_positions_groups_by_prompt_and_never_edits_the_sinks():
    d = toy()
    view = TagView(d)
    s0, s2 = d.span(0).start, d.span(2).start
    packed = [s2 + 7, s0 + 0, s0 + 4, s0 + 6, s0 + 5, s2 + 4]
    prompts, positions, sinks, dropped, toks = plan_positions(view, (1, 0), packed, source="selection", eps=0.2)
    assert prompts == [0, 2] and positions == [[5, 6], [7]]
    assert sinks == [[0, 4], [0, 4]] and dropped == 3
    assert toks == [d.tokens[0][5], d.tokens[0][6], d.tokens[2][7]]
    with pytest.raises(ExperimentError, match="every chosen token"):
        plan_positions(view, (1, 0), [s0, s0 + 4], source="selection", eps=0.2)
    with pytest.raises(ExperimentError, match="token index 9999"):
        plan_positions(view, (1, 0), [9999], source="positions", eps=0.2)


@pytest.mark.unit
def test_caught_positions_default_to_the_focused_prompt():
    d = toy()
    view = TagView(d)
    got = caught_positions(view, (1, 0), 0.3, -1)  # no focus: the first prompt where the head catches
    assert set(d.prompt_of[got].tolist()) == {0}
    assert d.positions[got].tolist() == list(range(1, 12))  # rows 1-4 on token 0, rows 5+ on the '.' (4 itself too)
    got = caught_positions(view, (1, 0), 0.3, d.span(3).start + 2)
    assert set(d.prompt_of[got].tolist()) == {3}
    # without maps the caught tokens are unknown: a clear message
    bare = TagData.from_prompts(d.tokens, heads=[(1, 0)], head_outputs=[d.outputs((1, 0))[d.span(i)][None]
                                for i in range(d.n_prompts)], head_values=[d.values((1, 0))[d.span(i)][None]
                                for i in range(d.n_prompts)], sink_scores=[d.sink_scores[:, :, d.span(i)]
                                for i in range(d.n_prompts)], meta={"model": "toy"})
    with pytest.raises(ExperimentError, match="select tokens"):
        caught_positions(TagView(bare), (1, 0), 0.3, -1)


# ----------------------------------------------------------------------------- a tiny random Llama (models)
@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A random 4-layer Llama (d = 64, 4 heads) with the SmolLM2 tokenizer, and a TagData of TEXTS (head (1, 0))."""
    import torch
    import transformers as tf
    from _helpers import save_tiny

    torch.manual_seed(0)
    cfg = tf.LlamaConfig(vocab_size=49152, hidden_size=64, num_hidden_layers=4, num_attention_heads=4,
                         intermediate_size=128, num_key_value_heads=2)
    m = sw.load_model(save_tiny(tmp_path_factory.mktemp("tiny") / "llama", tf.LlamaForCausalLM(cfg)))
    data = sw.tags.collect(m, TEXTS, heads=[(1, 0)], maps=[(1, 0)], progress=False)
    return m, data


@pytest.mark.models
def test_release_equals_project_out_and_has_its_controls(tiny):
    m, data = tiny
    te = sw.TagExplorer(data, head=(1, 0), model=m, texts=TEXTS, defer=False)
    B = np.random.default_rng(1).standard_normal((64, 2))
    s1 = data.span(1).start
    e = te.experiment("release", positions=[3, 5, 7, s1 + 5, s1 + 6], basis=B, seed=3)
    assert isinstance(e, TagExperiment) and te.experiments == [e]
    p = e.params
    assert p["prompts"] == [0, 1] and p["positions"] == [[3, 5, 7], [5, 6]] and p["sinks"] == [[0], [0]]
    assert e.texts == TEXTS and e.basis.shape == (64, 2)
    fn = sw.project_out(m, TEXTS, 1, B, positions=p["positions"], sink_positions=p["sinks"], progress=False)
    _close(e.result, fn)
    assert e.mean_dnll == pytest.approx(fn.delta["projected"], abs=1e-6)
    # the controls: three random rank-2 subspaces and the top-2 PCs, in one project_out call
    assert e.control.conditions == ["clean", "random0", "random1", "random2", "pcs"]
    assert all(e.control_bases[c].shape == (64, 2) for c in e.control.conditions[1:])
    ctl = sw.project_out(m, TEXTS, 1, e.control_bases, positions=p["positions"], sink_positions=p["sinks"],
                         progress=False)
    _close(e.control, ctl)
    assert len(e.random_dnll) == 3 and np.isfinite(e.pcs_dnll)
    # later heads' change of attention on the sink: layers 2 and 3, 4 heads each
    assert e.later_layers == [2, 3] and e.sink_shift.shape == (2, 4) and e.sink_delta.shape == (2, 4)
    mass = fn.attention["sink_mass"]
    np.testing.assert_allclose(e.sink_shift, (mass[:, :, 1] - mass[:, :, 0]).mean(0), atol=1e-7)
    assert set(e.control_sink_shift) == {"random0", "random1", "random2", "pcs"}
    # the panel's state: the same numbers
    st = te._experiment
    assert st["status"] == "ok" and st["mean_dnll"] == e.mean_dnll and st["random_dnll"] == e.random_dnll
    assert st["layers"] == [2, 3] and st["H"] == 4 and st["n_edited"] == 5
    want = [data.tokens[0][t] for t in (3, 5, 7)] + [data.tokens[1][t] for t in (5, 6)]
    assert st["edited_tokens"] == [sw.widgets._tag_state.shown(t) for t in want]  # strings as data, shown as text


@pytest.mark.models
def test_a_failing_or_cancelled_experiment_leaves_the_explorer_as_it_was(tiny):
    m, data = tiny
    te = sw.TagExplorer(data, head=(1, 0), model=m, texts=TEXTS, defer=False)
    B = np.random.default_rng(1).standard_normal((64, 1))
    e = te.experiment(positions=[3, 4], basis=B)
    before = dict(te._experiment)
    with pytest.raises(ExperimentCancelled):
        te.experiment(positions=[3, 4], basis=B, _cancelled=lambda: True)
    with pytest.raises(ExperimentError, match="catches no token"):  # a random model has no sinks: nothing caught
        te.experiment()
    with pytest.raises(ExperimentError, match="basis has shape"):
        te.experiment(positions=[3], basis=np.ones((5, 1)))
    assert te._experiment == before and te.experiments == [e]


@pytest.mark.models
def test_the_panel_message_runs_the_experiment_in_a_thread(tiny, monkeypatch):
    m, data = tiny
    te = sw.TagExplorer(data, head=(1, 0), model=m, texts=TEXTS, defer=False)
    sent = []
    monkeypatch.setattr(te, "send", lambda content, buffers=None: sent.append(content))
    te.selected = [2, 3, 4]
    # a random model has no sinks, so the tag subspace cannot be fitted: the message says so, nothing is recorded
    te._on_custom_msg(te, {"type": "experiment", "id": "a", "kind": "release"}, [])
    te._exp_job.thread.join(60) if te._exp_job else None
    assert sent and sent[-1]["id"] == "a" and sent[-1]["ok"] is False and sent[-1]["error"]
    assert te._experiment == {} and te._exp_job is None
    # with a basis known to the view (as the tag subspace would be), the same message succeeds
    monkeypatch.setattr(te._view_model, "subspace", lambda head, rank: np.eye(64)[:, :rank])
    te._on_custom_msg(te, {"type": "experiment", "id": "b", "kind": "release"}, [])
    te._exp_job.thread.join(60) if te._exp_job else None
    assert sent[-1]["id"] == "b" and sent[-1]["ok"] is True, sent[-1]
    assert te._experiment["status"] == "ok" and te.experiments[-1].params["source"] == "selection"
    assert te.experiments[-1].params["positions"] == [[2, 3, 4]]


@pytest.mark.models
def test_link_shows_the_prompt_under_the_edit_in_the_sinkexplorer(tiny):
    m, data = tiny
    te = sw.TagExplorer(data, head=(1, 0), model=m, texts=TEXTS, defer=False)
    ex = sw.SinkExplorer(sw.widgets.prompt_trace(data, 0))
    lk = sw.link(ex, te)
    B = np.random.default_rng(2).standard_normal((64, 1))
    s1 = data.span(1).start
    e = te.experiment(positions=[s1 + 3, s1 + 6], basis=B)
    assert lk.note == "" and lk.prompt == 1
    assert ex.trace.tokens == data.tokens[1]  # the experiment's prompt is shown
    sx = ex.experiments[-1]
    assert sx.kind == "project_tag" and ex.experiment_view == "after" and ex.experiment_index == 0
    assert "release L1H0" in sx.label and sx.trace.meta["edits"]
    np.testing.assert_allclose(sx.dnll, e.dnll[0], atol=1e-7)
    # the trace under the edit is the model traced with the same projection at the same tokens
    assert sx.trace.tokens == ex.trace.tokens
    assert not np.allclose(sx.trace.sink_scores[2:], sw.trace(m, TEXTS[1], progress=False).sink_scores[2:])
    np.testing.assert_allclose(sx.trace.sink_scores[:2], sw.trace(m, TEXTS[1], progress=False).sink_scores[:2],
                               atol=1e-5)  # layers up to the edited one are unchanged
    lk.unlink()
    te.experiment(positions=[3], basis=B)
    assert len(ex.experiments) == 1  # unlinked: the SinkExplorer no longer follows


@pytest.mark.models
def test_an_encoder_gives_the_same_clear_error_in_python_and_in_the_panel(minilm, monkeypatch):
    data = sw.tags.collect(minilm, ["The cat sat on the mat. The dog slept by the door."], heads=[(1, 0)],
                           progress=False)
    te = sw.TagExplorer(data, head=(1, 0), model=minilm, defer=False)
    with pytest.raises(SinkwidgetsError, match="encoder") as err:
        te.experiment(positions=[2, 3], basis=np.ones((data.d_model, 1)))
    sent = []
    monkeypatch.setattr(te, "send", lambda content, buffers=None: sent.append(content))
    te.selected = [2, 3]
    monkeypatch.setattr(te._view_model, "subspace", lambda head, rank: np.eye(data.d_model)[:, :rank])
    te._on_custom_msg(te, {"type": "experiment", "id": "x", "kind": "release"}, [])
    te._exp_job.thread.join(60) if te._exp_job else None
    assert sent[-1]["ok"] is False and str(err.value) in sent[-1]["error"]
    assert te._experiment == {}


# ----------------------------------------------------------------------------- SmolLM2 (models)
@pytest.fixture(scope="module")
def smol(smollm2):
    data = sw.tags.collect(smollm2, SMOL_TEXTS, heads=[(1, 1), (15, 7)], maps=[(1, 1), (15, 7)], progress=False)
    return smollm2, data


@pytest.mark.models
def test_smollm2_release_of_the_caught_tokens_equals_project_out(smol):
    m, data = smol
    te = sw.TagExplorer(data, head=(15, 7), model=m, texts=SMOL_TEXTS, defer=False)
    e = te.experiment("release")  # no selection: the tokens L15H7 catches in the first prompt
    p = e.params
    assert p["source"] == "caught" and p["prompts"] == [0] and len(p["positions"][0]) >= 10
    np.testing.assert_allclose(e.basis, te._view_model.subspace((15, 7), 1))  # the subspace the scatter shows
    fn = sw.project_out(m, e.texts, 15, e.basis, positions=p["positions"], sink_positions=p["sinks"],
                        progress=False)
    _close(e.result, fn)
    assert e.control.conditions[1:] == ["random0", "random1", "random2", "pcs"]
    # measured: the tag costs about +0.4 nats/token, the random subspaces of rank 1 about 0 (|Δ| < 0.05)
    assert e.mean_dnll > 0.1 and max(abs(x) for x in e.random_dnll) < 0.05 < e.mean_dnll
    assert e.sink_shift.shape == (14, 9) and e.later_layers == list(range(16, 30))
    # linked: the SinkExplorer shows the prompt under the edit, its ΔNLL that of the experiment
    ex = sw.SinkExplorer(sw.widgets.prompt_trace(data, 1))
    lk = sw.link(ex, te)
    e2 = te.experiment("release", positions=list(range(data.span(0).start + 12, data.span(0).start + 20)))
    assert lk.note == "" and ex.trace.tokens == data.tokens[0] and ex.experiment_view == "after"
    assert abs(ex.experiments[-1].mean_dnll - e2.mean_dnll) < 1e-6


@pytest.mark.models
def test_an_unsupported_family_gives_the_same_clear_error_in_python_and_in_the_panel(tmp_path, monkeypatch):
    import torch
    import transformers as tf
    from _helpers import save_tiny

    torch.manual_seed(0)
    m = sw.load_model(save_tiny(tmp_path / "gpt2", tf.GPT2LMHeadModel(tf.GPT2Config(
        vocab_size=49152, n_embd=64, n_layer=3, n_head=4, n_positions=256))))
    data = sw.tags.collect(m, TEXTS[:1], heads=[(1, 0)], progress=False)  # the eager path reads GPT-2 fine
    te = sw.TagExplorer(data, head=(1, 0), model=m, texts=TEXTS[:1], defer=False)
    with pytest.raises(SinkwidgetsError, match="family 'gpt2'.*not supported by the release experiment") as err:
        te.experiment(positions=[3, 4], basis=np.ones((64, 1)))
    sent = []
    monkeypatch.setattr(te, "send", lambda content, buffers=None: sent.append(content))
    monkeypatch.setattr(te._view_model, "subspace", lambda head, rank: np.eye(64)[:, :rank])
    te.selected = [3, 4]
    te._on_custom_msg(te, {"type": "experiment", "id": "g", "kind": "release"}, [])
    te._exp_job.thread.join(60) if te._exp_job else None
    assert sent[-1]["ok"] is False and str(err.value) in sent[-1]["error"]
    assert te._experiment == {} and te.experiments == []


@pytest.mark.models
def test_the_offline_page_carries_the_recorded_experiments(tiny, tmp_path):
    # before: te.to_html embedded no experiment; the saved page's panel said only "needs a live kernel"
    import json
    import re

    from sinkwidgets.widgets.tag_standalone import tag_html_document

    m, data = tiny
    te = sw.TagExplorer(data, head=(1, 0), model=m, texts=TEXTS, defer=False)
    img = next(t for t, tok in enumerate(data.tokens[0]) if "<" in tok)  # a token of "<img src=x onerror=...>"
    B = np.random.default_rng(1).standard_normal((64, 1))
    e1 = te.experiment("release", positions=[3, img], basis=B, seed=3)
    e2 = te.experiment("release", positions=[2], basis=B, seed=4)
    assert e1.mean_dnll != e2.mean_dnll
    path = te.to_html(tmp_path / "te.html")
    page = path.read_text(encoding="utf-8")
    assert "onerror=alert" not in page.replace("\\u003cimg src=x onerror=alert", "")  # only the escaped form
    assert "\\u003c" in page and "<img" not in page
    blob = re.search(r'<script type="application/json" id="te-state">(.*?)</script>', page, re.S).group(1)
    state = json.loads(blob)["state"]
    exps = state["_experiments"]
    assert [x["index"] for x in exps] == [0, 1] and state["_experiment"] == exps[-1]
    assert exps[0]["mean_dnll"] == e1.mean_dnll and exps[1]["mean_dnll"] == e2.mean_dnll
    assert exps[0]["random_dnll"] == e1.random_dnll and exps[0]["n_edited"] == 2
    assert sw.widgets._tag_state.shown(data.tokens[0][img]) in exps[0]["edited_tokens"]
    assert f"{e1.mean_dnll!r}" in page and f"{e2.mean_dnll!r}" in page
    assert "shift" in exps[0] and "$buffer" in json.dumps(exps[0]["shift"])  # Δ sink attention as a binary buffer
    # experiments=[] leaves them out; a wrong type is refused naming the argument
    assert '"_experiments": []' in tag_html_document(te, experiments=[])
    with pytest.raises(SinkwidgetsError, match="experiments"):
        tag_html_document(te, experiments=[object()])
    with pytest.raises(SinkwidgetsError, match="experiments"):
        tag_html_document(te, experiments="x")
    js = sw.widgets._tag_state.esm()
    assert "te-exp-pick" in js and "recorded release experiment" in js
