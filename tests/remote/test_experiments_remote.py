"""SinkExplorer experiments with a remote model (issue 19 item 5): on the loopback NDIF server the experiment runs
the same edits (shipped by value with the engine) in the same passes (the edit, then its control), and gives the
local numbers: ΔNLL to 1e-4 and the trace under the edit to 1e-5 against a local explorer on the chunked path."""

from __future__ import annotations

import numpy as np
import pytest

import sinkwidgets as sw

pytestmark = [pytest.mark.remote, pytest.mark.models]

TEXT = ("The old lighthouse keeper climbed the stairs every evening. Ships passed by in the dark, and he watched "
        "them until the sun came up over the grey water.")


@pytest.fixture(scope="module")
def explorers(remote_smollm2, smollm2):
    remote = sw.SinkExplorer(sw.trace(remote_smollm2, TEXT), model=remote_smollm2)
    local = sw.SinkExplorer(sw.trace(smollm2, TEXT, method="chunked"), model=smollm2)
    return remote, local


def _same(r, loc):
    assert r.trace.meta["remote"] and not loc.trace.meta["remote"]
    assert r.result.meta["remote"] and r.params == loc.params and r.control_note == loc.control_note
    assert r.trace.tokens == loc.trace.tokens and r.trace.meta["edits"] == loc.trace.meta["edits"]
    np.testing.assert_allclose(r.dnll, loc.dnll, atol=1e-4)
    assert abs(r.mean_dnll - loc.mean_dnll) < 1e-4 and abs(r.control_dnll - loc.control_dnll) < 1e-4
    np.testing.assert_allclose(r.trace.sink_scores, loc.trace.sink_scores, atol=1e-5)


def test_mask_token_0_all_layers_remote_equals_local(explorers, smollm2, reset_server):
    remote, local = explorers
    r = remote.experiment("mask", token=0, layers="all")
    loc = local.experiment("mask", token=0, layers="all")
    _same(r, loc)
    assert r.trace.sink_scores[12:30, :, 1].mean() > 0.4  # token 1 became the sink, as locally
    f = sw.mask_sink(smollm2, TEXT, "all", token=0)
    np.testing.assert_allclose(r.dnll, f.nll[f.conditions[1]][0] - f.nll["clean"][0], atol=1e-4)


def test_project_tag_remote_equals_local(explorers, reset_server):
    remote, local = explorers
    r = remote.experiment("project_tag", head=(3, 0))
    loc = local.experiment("project_tag", head=(3, 0))
    assert r.params["positions"] and r.trace.meta["edits"] == ["ProjectOut(layer=3, rank=1)"]
    _same(r, loc)


SMOL_TEXTS = ["The old lighthouse keeper climbed the stairs every evening. Ships passed by in the dark. He watched them "
              "until the sun came up over the grey water.",
              "A scientist writes in her notebook: attention sinks appear in almost every model. Why? Nobody knows "
              "yet. The first token collects the attention."]


def test_tag_explorer_release_remote_equals_local(remote_smollm2, smollm2, reset_server):
    """TagExplorer's release experiment (issue 19 item 3) with a remote model: the projection and its random and PC
    controls run on the server and give the local numbers (ΔNLL per condition to 1e-4, later heads' shift to 1e-4)."""
    data = sw.tags.collect(smollm2, SMOL_TEXTS, heads=[(15, 7)], maps=[(15, 7)], progress=False)
    remote = sw.TagExplorer(data, head=(15, 7), model=remote_smollm2, texts=SMOL_TEXTS, defer=False)
    local = sw.TagExplorer(data, head=(15, 7), model=smollm2, texts=SMOL_TEXTS, defer=False)
    r, loc = remote.experiment("release"), local.experiment("release")
    assert r.result.meta["remote"] and not loc.result.meta["remote"] and r.params == loc.params
    for a, b in ((r.result, loc.result), (r.control, loc.control)):
        assert a.conditions == b.conditions
        for c in a.conditions:
            for x, y in zip(a.nll[c], b.nll[c], strict=True):
                np.testing.assert_allclose(x, y, atol=1e-4, err_msg=c)
    assert abs(r.mean_dnll - loc.mean_dnll) < 1e-4 and r.mean_dnll > 0.1
    np.testing.assert_allclose(r.random_dnll, loc.random_dnll, atol=1e-4)
    np.testing.assert_allclose(r.sink_shift, loc.sink_shift, atol=1e-4)
