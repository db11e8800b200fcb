"""sinkwidgets.interventions on the loopback NDIF server: the nnsight blocks (plain torch, shipped by value) give
the same per-token NLL and attention statistics remotely as locally (to 1e-4); streaming says it is local-only."""

from __future__ import annotations

import numpy as np
import pytest
from _helpers import same_intervention as same

from .conftest import API_KEY

pytestmark = [pytest.mark.remote, pytest.mark.models]

TEXTS = ["The old lighthouse keeper climbed the stairs every evening. Ships passed by in the dark.",
         "Bread is made from flour, water, salt and yeast, and it rises in a warm place."]


def test_project_out_remote_equals_local(remote_smollm2, smollm2, reset_server):
    from sinkwidgets.interventions import project_out

    basis = np.random.default_rng(0).normal(size=(576, 2))
    r = project_out(remote_smollm2, TEXTS, 11, basis, attention_layers=[12, 20])
    loc = project_out(smollm2, TEXTS, 11, basis, attention_layers=[12, 20])
    assert r.meta["remote"] and not loc.meta["remote"]
    same(r, loc)


def test_ablate_mask_add_sink_remote_equal_local(remote_smollm2, smollm2, reset_server):
    from sinkwidgets.interventions import ablate_massive, add_sink, find_massive, mask_sink

    spec_r = find_massive(remote_smollm2, TEXTS)
    spec_l = find_massive(smollm2, TEXTS)
    assert (spec_r.layer, spec_r.channels) == (spec_l.layer, spec_l.channels) == (11, spec_l.channels)
    np.testing.assert_allclose(spec_r.means, spec_l.means, rtol=1e-4)
    same(ablate_massive(remote_smollm2, TEXTS, spec=spec_l, attention_layers=[12, 18]),
         ablate_massive(smollm2, TEXTS, spec=spec_l, attention_layers=[12, 18]))
    r = mask_sink(remote_smollm2, TEXTS, ["12-29", [18]], attention_layers=[18])
    same(r, mask_sink(smollm2, TEXTS, ["12-29", [18]], attention_layers=[18]))
    assert r.delta["layers 12-29"] > 0.3
    same(add_sink(remote_smollm2, TEXTS, "\n"), add_sink(smollm2, TEXTS, "\n"))


def test_streaming_is_local_only(remote_smollm2):
    from sinkwidgets.streaming import StreamingError, streaming_ppl

    with pytest.raises(StreamingError, match="runs locally only") as ei:
        streaming_ppl(remote_smollm2, "word " * 400, window=64)
    assert API_KEY not in str(ei.value)


def test_remote_argument_errors_before_sending(remote_smollm2, reset_server):
    """Argument errors are raised on the client, before anything is sent to the server."""
    from sinkwidgets.interventions import InterventionError, project_out

    with pytest.raises(InterventionError, match="sink_positions"):
        project_out(remote_smollm2, TEXTS[0], 5, np.ones(576), sink_positions=(500,))


def test_trace_under_an_edit_remote_equals_local(remote_smollm2, smollm2, reset_server):
    """mask_sink's edit (key 0 hidden in every layer) and a residual edit run on NDIF as on the local eager and
    chunked executors: the edit classes are shipped by value with the engine (tracing/edits.py)."""
    import torch

    import sinkwidgets as sw
    from sinkwidgets.interventions import mask_sink_edit
    from sinkwidgets.tracing.edits import ProjectOut

    edit = mask_sink_edit(smollm2, "all", token=0)
    r = sw.trace(remote_smollm2, TEXTS[0], edits=[edit])
    ch = sw.trace(smollm2, TEXTS[0], edits=[edit], method="chunked", keep_maps=None)
    ea = sw.trace(smollm2, TEXTS[0], edits=[edit], method="eager", keep_maps=None)
    assert r.meta["remote"] and r.meta["edits"] == ch.meta["edits"] == [repr(edit)]
    assert r.sink_scores[12:30, :, 1].mean() > 0.45 and r.first_token_mass.max() < 1e-6
    for f in ("sink_scores", "first_token_mass", "entropy", "resid_norms"):
        np.testing.assert_allclose(getattr(r, f), getattr(ch, f), atol=1e-4, rtol=1e-4, err_msg=f)
        np.testing.assert_allclose(getattr(r, f), getattr(ea, f), atol=2e-4, rtol=1e-4, err_msg=f)
    U = torch.zeros(576, 1)
    U[507, 0] = 1.0
    proj = ProjectOut(11, U, torch.ones(1, 4))
    r2 = sw.trace(remote_smollm2, TEXTS[1], edits=[proj])
    l2 = sw.trace(smollm2, TEXTS[1], edits=[proj], method="chunked", keep_maps=None)
    np.testing.assert_allclose(r2.sink_scores, l2.sink_scores, atol=1e-4, rtol=1e-4)
