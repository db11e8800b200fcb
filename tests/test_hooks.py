"""Local traces read block outputs (and, on the eager path, probabilities) from torch forward hooks
(:mod:`sinkwidgets.tracing.hooks`) instead of through nnsight: the results are the same bit for bit, edited sites
stay in the traced block, the last hooked layer is read by the block, and no hook outlives its trace."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_chunked import long_text

FIELDS = ("sink_scores", "first_token_mass", "entropy", "resid_norms", "top_activations", "top_act_tokens",
          "top_act_channels", "median_abs_activation")


class _Needs:
    """A stand-in collector: ``needs(layer)`` from a dict."""

    def __init__(self, needs: dict[int, set[str]]):
        self._needs = needs

    def needs(self, layer: int) -> set[str]:
        return self._needs.get(layer, set())


@pytest.mark.unit
def test_hooked_layers_leaves_the_last_layer_and_edited_sites_to_the_block():
    from sinkwidgets.tracing.hooks import hooked_layers

    col = _Needs({0: {"probs", "resid"}, 1: {"probs", "resid", "values"}, 2: {"resid"}, 3: {"probs"}, 5: {"values"}})
    allow = lambda li, s: not (li == 1 and s == "resid")  # noqa: E731 - an edit changes layer 1's block output
    got = hooked_layers(col, 6, ("probs", "resid"), allow)
    assert got == {0: {"probs", "resid"}, 1: {"probs"}, 2: {"resid"}}  # layer 3 is the last hookable: the block's
    assert hooked_layers(col, 6, ("resid",), lambda li, s: True) == {0: {"resid"}, 1: {"resid"}}
    assert hooked_layers(col, 6, ("probs", "resid"), lambda li, s: False) == {}
    assert hooked_layers(_Needs({4: {"resid"}}), 6, ("resid",), lambda li, s: True) == {}  # one layer: the block's


def _hooks(model) -> dict[int, tuple]:
    """The forward hooks on every decoder block and attention module (other code may hold its own: compare)."""
    from sinkwidgets.models.adapters import get_path
    from sinkwidgets.tracing.api import _info

    info = _info(model)
    layers = list(get_path(model._module, info.adapter.layers))
    mods = layers + [get_path(layer, info.adapter.attn) for layer in layers]
    return {id(m): tuple(m._forward_hooks) for m in mods}


def _both_ways(model, texts, monkeypatch, **kw):
    """Trace with the hooks (the default) and with every read through nnsight; return both and the hooked plans."""
    import sinkwidgets as sw
    from sinkwidgets.tracing import chunked, eager

    plans = []
    before = _hooks(model)
    real = eager.hooked_layers

    def recorded(*a, **k):
        plans.append(real(*a, **k))
        return plans[-1]

    monkeypatch.setattr(eager, "hooked_layers", recorded)
    with_hooks = sw.trace(model, texts, progress=False, **kw)
    assert _hooks(model) == before  # every hook the trace added is gone
    monkeypatch.setattr(eager, "hooked_layers", lambda *a, **k: {})
    block = chunked.chunked_block

    def no_resid_hooks(model_, inputs, fwd, plan, *a, **k):
        plan.resid_hooks = False
        return block(model_, inputs, fwd, plan, *a, **k)

    monkeypatch.setattr(chunked, "chunked_block", no_resid_hooks)
    through_nnsight = sw.trace(model, texts, progress=False, **kw)
    monkeypatch.undo()
    return with_hooks, through_nnsight, plans


def _same(a, b):
    for f in FIELDS:
        np.testing.assert_array_equal(getattr(a, f), getattr(b, f), err_msg=f)
    np.testing.assert_array_equal(np.asarray(a.maps), np.asarray(b.maps))


@pytest.mark.models
def test_eager_hooks_equal_the_block_reads_with_edits_in_a_padded_batch(smollm2, monkeypatch):
    """A padded batch with a key-hiding edit at layer 2 and a projection edit after layer 4: the hooked eager trace
    equals the one that reads everything through nnsight, the edited sites stay in the block, the last layer is
    the block's, and no hook is left on any module (also after a unit fails inside a hook)."""
    from sinkwidgets.tracing.edits import HideKeys, ProjectOut

    L = smollm2._module.config.num_hidden_layers
    U = torch.linalg.qr(torch.randn(smollm2._module.config.hidden_size, 1, generator=torch.Generator().manual_seed(0)))[0]
    edits = [HideKeys([2], [0]), ProjectOut(4, U, torch.ones(1, 1))]
    texts = [long_text()[:400], long_text()[:150]]
    a, b, plans = _both_ways(smollm2, texts, monkeypatch, method="eager", keep_maps=[(2, 1), (5, 0)], edits=edits)
    for ta, tb in zip(a, b, strict=True):
        assert ta.meta["method"] == "eager" and ta.meta["edits"] == tb.meta["edits"]
        _same(ta, tb)
    (plan,) = plans
    assert "probs" not in plan[2] and "resid" in plan[2]  # the mask edit's layer: its probabilities in the block
    assert "resid" not in plan[4] and "probs" in plan[4]  # the projection's layer: its output in the block
    assert L - 1 not in plan and plan[L - 2] == {"probs", "resid"}


@pytest.mark.models
def test_chunked_resid_hooks_equal_the_block_reads_with_an_edit(smollm2, monkeypatch):
    from sinkwidgets.tracing.edits import ProjectOut

    U = torch.linalg.qr(torch.randn(smollm2._module.config.hidden_size, 2, generator=torch.Generator().manual_seed(1)))[0]
    a, b, _ = _both_ways(smollm2, long_text()[:900], monkeypatch, method="chunked", keep_maps=[(7, 3)],
                         edits=[ProjectOut(6, U, torch.ones(1, 1))])
    assert a.meta["attention"] == "own"
    _same(a, b)


@pytest.mark.models
def test_a_failing_unit_inside_an_eager_hook_leaves_no_hook(smollm2, monkeypatch):
    import sinkwidgets as sw
    from sinkwidgets.tracing.reductions import ResidualSummary

    def boom(self, *a, **k):
        raise RuntimeError("unit failed on purpose")

    before = _hooks(smollm2)
    monkeypatch.setattr(ResidualSummary, "read", boom)
    with pytest.raises(RuntimeError, match="on purpose"):
        sw.trace(smollm2, long_text()[:300], method="eager", progress=False)
    assert _hooks(smollm2) == before
    monkeypatch.undo()
    assert sw.trace(smollm2, long_text()[:300], method="eager", progress=False).meta["method"] == "eager"
