"""sinkwidgets.toy.tag_data: a toy model's corpus as a TagData for sinkwidgets.tags and TagExplorer."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sinkwidgets import tags, toy
from sinkwidgets.toy import TinyTransformer, make_batch, tag_data, trace_toy

pytestmark = pytest.mark.unit  # no model, browser or notebook (tiny torch models)


def _model(**options):
    return TinyTransformer(generator=torch.Generator().manual_seed(0), **options)


def test_outputs_are_attention_weighted_values_and_alpha_matches_the_trace():
    m = _model()
    d = tag_data(m, n=6, seed=3)
    assert d.n_prompts == 6 and d.heads.tolist() == [[0, 0], [1, 0]] and d.n_tokens == 6 * m.config.T
    for head in [(0, 0), (1, 0)]:
        for i in range(d.n_prompts):
            A = d.attention_map(head, i).astype(np.float64)
            g = d.values(head)[d.span(i)].astype(np.float64)
            np.testing.assert_allclose(d.outputs(head)[d.span(i)], A @ g, atol=2e-3, rtol=1e-3)
    tr = trace_toy(m, make_batch(6, m.config.T, 3), index=2)
    np.testing.assert_allclose(d.sink_scores[:, :, d.span(2)], tr.sink_scores, atol=1e-5)
    assert d.tokens[2] == tr.tokens and d.meta["sep_positions"][2] == tr.meta["sep_position"]
    assert d.token_ids[d.offsets[0]] == 0  # BOS


def test_variants_pre_ln_and_extra_slots_give_consistent_shapes():
    for options in ({"ln": True}, {"sink_token": True}, {"attn": "softmax1"}, {"n_heads": 2}, {"gate": "headwise"}):
        m = _model(**options)
        d = tag_data(m, n=4, keep_maps=False)
        L, H = m.config.n_layers, m.config.n_heads
        assert d.head_outputs.shape == (L * H, 4 * m.config.T, m.config.d_model)
        assert d.head_values.shape == d.head_outputs.shape and d.maps is None
        assert np.isfinite(d.head_outputs).all() and np.isfinite(d.head_values).all()


def test_a_trained_toy_has_a_rank2_tag_of_its_own():
    res = toy.train(seed=0, steps=600, progress=False)
    d = tag_data(res.model, n=64)
    r = tags.tag_ev(d, (0, 0), rank=2)
    # the tag is the difference between the SEP and BOS values: rank 2 holds it, and it is not the value control
    assert r.ev >= 0.8 and r.ev - r.value_control >= 0.5, str(r)
    assert abs(r.ev - res[-1]["tag_ev"]) <= 0.1, (r.ev, res[-1]["tag_ev"])


@pytest.mark.parametrize("bad", [1, 0, 2.0, True])
def test_bad_arguments(bad):
    with pytest.raises(ValueError, match="n must be"):
        tag_data(_model(), n=bad)
    with pytest.raises(ValueError, match="TinyTransformer"):
        tag_data(object())
