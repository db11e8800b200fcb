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
