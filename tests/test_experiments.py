"""SinkExplorer.experiment: the functional API's numbers on the explorer's prompt, the trace under the edit, controls,
and clear errors that leave the explorer as it was (issue 19)."""

from __future__ import annotations

import numpy as np
import pytest

import sinkwidgets as sw
from sinkwidgets.errors import SinkwidgetsError
from sinkwidgets.widgets.experiment import Experiment, ExperimentError

pytestmark = pytest.mark.models

TEXT = ("The old lighthouse keeper climbed the stairs every evening. Ships passed by in the dark, and he watched "
        "them until the sun came up over the grey water.")


@pytest.fixture(scope="module")
def explorer(smollm2):
    return sw.SinkExplorer(sw.trace(smollm2, TEXT, method="eager"), model=smollm2)


def _fn_dnll(r):
    return r.nll[r.conditions[1]][0] - r.nll[r.conditions[0]][0]


def test_mask_all_layers_equals_mask_sink_and_moves_the_sink_to_token_1(explorer, smollm2):
    e = explorer.experiment("mask", token=0, layers="all")
    assert isinstance(e, Experiment) and explorer.experiments[-1] is e
    r = sw.mask_sink(smollm2, TEXT, "all", token=0)
    assert e.dnll.shape == (explorer.trace.n_tokens - 1,)
    np.testing.assert_allclose(e.dnll, _fn_dnll(r), atol=1e-4)
    assert abs(e.mean_dnll - r.delta[r.conditions[1]]) < 1e-4
    # the trace under the edit: token 1 takes the sink role in layers 12-29 (about 0.02 -> about 0.6)
    before = explorer.trace.sink_scores[12:30, :, 1].mean()
    after = e.trace.sink_scores[12:30, :, 1].mean()
    assert before < 0.1 and after > 0.4, (before, after)
    assert e.trace.meta["edits"] and e.trace.tokens == explorer.trace.tokens
    # the control masks a random non-sink token in the same layers and costs far less
    assert e.control_condition in e.control.conditions and "token" in e.control_note
    assert abs(e.control_dnll) < 0.5 * abs(e.mean_dnll)


def test_mask_12_29_shows_no_new_sink(explorer):
    e = explorer.experiment("mask", token=0, layers="12-29")
    later = np.nan_to_num(e.trace.sink_scores[12:30, :, 1:])  # α of every other token in the masked layers
    assert later.mean(axis=(0, 1)).max() < 0.3
    assert e.mean_dnll > 0.5  # the real "no sink" case costs more than masking every layer


def test_default_token_is_the_sink(explorer):
    e = explorer.experiment("mask", layers="12-29")
    assert e.params["token"] == 0


def test_massive_zero_and_mean(explorer, smollm2):
    z = explorer.experiment("massive", mode="zero")
    r = sw.ablate_massive(smollm2, TEXT, "zero", attention_layers=None)
    np.testing.assert_allclose(z.dnll, r.nll["zero"][0] - r.nll["clean"][0], atol=1e-4)
    assert z.mean_dnll > 3 and abs(z.control_dnll) < 0.05
    m = explorer.experiment("massive", mode="mean")
    assert abs(m.mean_dnll) < 0.05


def test_eager_and_chunked_explorers_give_equal_experiments(smollm2):
    out = {}
    for method in ("eager", "chunked"):
        ex = sw.SinkExplorer(sw.trace(smollm2, TEXT, method=method), model=smollm2)
        out[method] = ex.experiment("mask", token=0, layers="all")
    e, c = out["eager"], out["chunked"]
    np.testing.assert_allclose(e.dnll, c.dnll, atol=1e-4)
    np.testing.assert_allclose(e.trace.sink_scores, c.trace.sink_scores, atol=1e-3)
    assert e.control_note == c.control_note


def test_encoder_gives_a_clear_error_and_leaves_the_explorer(minilm):
    ex = sw.SinkExplorer(sw.trace(minilm, "The cat sat on the mat."), model=minilm)
    state = (ex.layer, ex.head, ex.token, dict(ex._summary))
    with pytest.raises(SinkwidgetsError, match="encoder"):
        ex.experiment("mask", token=0, layers="all")
    assert ex.experiments == [] and (ex.layer, ex.head, ex.token, dict(ex._summary)) == state


def test_bad_arguments_and_no_model(explorer, smollm2):
    with pytest.raises(ExperimentError, match="kind='nope'"):
        explorer.experiment("nope")
    with pytest.raises(ExperimentError, match="not \\['mode'\\]"):
        explorer.experiment("mask", mode="zero")
    with pytest.raises(ExperimentError, match="token=999"):
        explorer.experiment("mask", token=999)
    bare = sw.SinkExplorer(explorer.trace)
    with pytest.raises(ExperimentError, match="model="):
        bare.experiment("mask")


def test_add_sink_equals_the_functional_api_and_lines_up_the_tokens(explorer, smollm2):
    e = explorer.experiment("add_sink", prefix="\n")
    r = sw.add_sink(smollm2, TEXT, "\n")
    np.testing.assert_allclose(e.dnll, _fn_dnll(r), atol=1e-4)
    assert e.offset == 1 and e.trace.tokens[1:] == explorer.trace.tokens


def test_project_tag_equals_project_out_with_its_basis_and_a_random_control(explorer, smollm2):
    ly, hd = 3, 0
    e = explorer.experiment("project_tag", head=(ly, hd))
    p = e.params
    assert p["head"] == [ly, hd] and p["rank"] == 1 and p["positions"] and not set(p["positions"]) & set(p["sinks"])
    assert e.result.meta["rank"] == 1 and e.trace.meta["edits"]  # the trace under the projection lists its edit
    import sinkwidgets.tags as tg

    data = tg.collect(smollm2, [TEXT], heads=[(ly, hd)], maps=False, outputs=False, values=True, progress=False)
    basis = tg.tag_subspace(tg.tag_vectors(data, (ly, hd))[0], 1)
    r = sw.project_out(smollm2, TEXT, ly, basis, positions=p["positions"], sink_positions=p["sinks"],
                       attention_layers=None, progress=False)
    np.testing.assert_allclose(e.dnll, _fn_dnll(r), atol=1e-4)
    assert "random 1-dim subspace" in e.control_note and np.isfinite(e.control_dnll)
    with pytest.raises(ExperimentError, match="last layer"):
        explorer.experiment("project_tag", head=(explorer.trace.n_layers - 1, 0))


# ----------------------------------------------------------------------------- one forward pass per experiment
TRACE_FIELDS = ("sink_scores", "first_token_mass", "entropy", "resid_norms", "top_activations", "maps")


def _same_trace(a, b, atol=1e-5):
    assert a.tokens == b.tokens and a.meta["edits"] == b.meta["edits"]
    for f in TRACE_FIELDS:
        x, y = getattr(a, f), getattr(b, f)
        assert (x is None) == (y is None), f
        if x is not None:
            # maps are stored in float16: a value next to a rounding boundary may land one float16 ulp away
            tol = dict(atol=1e-4, rtol=1e-3) if f == "maps" else dict(atol=atol, rtol=1e-5)
            np.testing.assert_allclose(np.asarray(x, np.float64), np.asarray(y, np.float64), err_msg=f, **tol)
    if a.map_index is not None:
        np.testing.assert_array_equal(a.map_index, b.map_index)


@pytest.mark.parametrize("method", ["eager", "chunked"])
def test_one_pass_gives_the_trace_under_the_edit_and_reuses_the_clean_nll(smollm2, method):
    """The edit's trace, its NLL and the control's come from one forward pass: the clean row joins it only for the
    first experiment on a prompt; ``.trace`` equals ``sw.trace(model, text, edits=[...])`` to 1e-5."""
    from sinkwidgets.interventions import mask_sink_edit

    before = sw.trace(smollm2, TEXT, method=method)
    ex = sw.SinkExplorer(before, model=smollm2)
    first = ex.experiment("mask", token=0, layers="all")
    second = ex.experiment("mask", token=0, layers="12-29")
    assert list(first.meta["seconds"]) == ["mask_sink + trace under the mask"] == list(second.meta["seconds"])
    assert first.trace.meta["experiment_rows"] == 3 and second.trace.meta["experiment_rows"] == 2
    assert first.trace.meta["method"] == method
    for e, layers in ((first, "all"), (second, "12-29")):
        ref = sw.trace(smollm2, TEXT, method=method, edits=[mask_sink_edit(smollm2, layers, token=0)])
        _same_trace(e.trace, ref)
        r = sw.mask_sink(smollm2, TEXT, layers, token=0)
        np.testing.assert_allclose(e.result.nll["clean"][0], r.nll["clean"][0], atol=1e-4)
        np.testing.assert_allclose(e.dnll, _fn_dnll(r), atol=1e-4)
        ctl_tok = int(e.control_note.split()[1])
        c = sw.mask_sink(smollm2, TEXT, layers, token=ctl_tok)
        np.testing.assert_allclose(e.control.nll[e.control_condition][0], c.nll[c.conditions[1]][0], atol=1e-4)
        assert abs(e.control_dnll - c.delta[c.conditions[1]]) < 1e-4


def test_massive_add_sink_and_project_tag_traces_equal_sw_trace(explorer, smollm2):
    import torch

    import sinkwidgets.tags as tg
    from sinkwidgets.interventions.edits import orthonormal_basis
    from sinkwidgets.tracing.edits import ProjectOut
    from sinkwidgets.widgets.experiment import _single_row_massive

    z = explorer.experiment("massive", mode="zero")
    spec = z.result.meta["spec"]
    one = _single_row_massive(spec.layer, spec.channels, [0.0] * len(spec.channels), spec.abs_thr, spec.ratio)
    _same_trace(z.trace, sw.trace(smollm2, TEXT, method="eager", edits=[one]))
    r = sw.ablate_massive(smollm2, TEXT, "zero", attention_layers=None)
    np.testing.assert_allclose(z.control.nll["control"][0], r.nll["control"][0], atol=1e-4)
    assert z.result.meta["n_massive"] == r.meta["n_massive"]

    a = explorer.experiment("add_sink", prefix="\n")
    ref = sw.trace(smollm2, "\n" + TEXT, method="eager")
    assert a.trace.tokens == ref.tokens
    np.testing.assert_allclose(a.trace.sink_scores, ref.sink_scores, atol=1e-5)
    ra = sw.add_sink(smollm2, TEXT, "\n")
    assert abs(a.result.meta["first_token_nll"][a.condition] - ra.meta["first_token_nll"][ra.conditions[1]]) < 1e-4
    rc = sw.add_sink(smollm2, TEXT, [a.control.meta["prefix_ids"][0]])
    assert abs(a.control_dnll - rc.delta[rc.conditions[1]]) < 1e-4

    ly = 3
    p = explorer.experiment("project_tag", head=(ly, 0))
    data = tg.collect(smollm2, [TEXT], heads=[(ly, 0)], maps=False, outputs=False, values=True, progress=False)
    U, _ = orthonormal_basis(tg.tag_subspace(tg.tag_vectors(data, (ly, 0))[0], 1), 576)
    w = torch.zeros(1, explorer.trace.n_tokens)
    w[0, p.params["positions"]] = 1.0
    _same_trace(p.trace, sw.trace(smollm2, TEXT, method="eager", edits=[ProjectOut(ly, U, w)]))
    R = tg.random_subspace(576, 1, np.random.default_rng(0))
    rr = sw.project_out(smollm2, TEXT, ly, R, positions=p.params["positions"], attention_layers=None, progress=False)
    assert abs(p.control_dnll - rr.delta["projected"]) < 1e-4


def test_prepare_caches_the_clean_nll_so_the_first_experiment_is_two_rows(smollm2):
    from sinkwidgets.widgets.experiment import prepare

    before = sw.trace(smollm2, TEXT, method="eager")
    clean = prepare(smollm2, before)
    r = sw.mask_sink(smollm2, TEXT, "all", token=0)
    np.testing.assert_allclose(clean, r.nll["clean"][0], atol=1e-4)
    assert prepare(smollm2, before) is clean  # cached: no second pass
    e = sw.SinkExplorer(before, model=smollm2).experiment("mask", token=0, layers="all")
    assert e.trace.meta["experiment_rows"] == 2 and e.result.nll["clean"][0] is clean
    np.testing.assert_allclose(e.dnll, _fn_dnll(r), atol=1e-4)


def test_the_panel_drawn_with_a_model_prepares_the_clean_nll_in_the_background(smollm2, minilm):
    import threading

    from sinkwidgets.widgets.experiment import prompt_cache

    before = sw.trace(smollm2, TEXT + " Prepared ahead.", method="eager")
    ex = sw.SinkExplorer(before, model=smollm2)
    assert prompt_cache(before, smollm2).get("clean") is None
    ex._on_custom_msg(ex, {"type": "experiment_prepare"}, [])  # what the panel sends when it is drawn live
    ex._on_custom_msg(ex, {"type": "experiment_prepare"}, [])  # a second view of the same explorer: no second job
    for t in [t for t in threading.enumerate() if t.name == "sinkwidgets-prepare"]:
        t.join(120)
    clean = prompt_cache(before, smollm2).get("clean")
    assert clean is not None and clean.shape == (len(before.token_ids) - 1,) and np.isfinite(clean).all()
    e = ex.experiment("mask", token=0, layers="all")
    assert e.trace.meta["experiment_rows"] == 2 and e.result.nll["clean"][0] is clean
    # an encoder: nothing runs, nothing is raised (the experiment itself says why when asked)
    enc = sw.SinkExplorer(sw.trace(minilm, "A short sentence."), model=minilm)
    enc._on_custom_msg(enc, {"type": "experiment_prepare"}, [])
    assert getattr(enc, "_prepared", None) is None
