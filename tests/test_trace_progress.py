"""Progress of a trace (issue 22): one long prompt shows a bar over the layers, not nothing.

Before: ``sw.trace(model, text)`` showed a bar only over batches, so a single 8k-token prompt (tens of seconds on a
laptop CPU) showed nothing, and ``progress=True`` on one prompt a bar of one step. Now one local batch shows a
``tqdm.auto`` bar of ``n_layers`` steps, advanced by a forward hook at the end of each block (by default from
``LAYER_PROGRESS_TOKENS`` tokens on); ``progress=False`` shows nothing. Tiny random models: fast.
"""

from __future__ import annotations

import functools
import re

import numpy as np
import pytest
import torch
import transformers as tf
from _helpers import save_tiny

import sinkwidgets as sw
from sinkwidgets.tracing import api

TEXT = "The cat sat on the mat. It was warm and quiet there."


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    torch.manual_seed(0)
    cfg = tf.LlamaConfig(vocab_size=49152, hidden_size=64, num_hidden_layers=3, num_attention_heads=4,
                         intermediate_size=128, num_key_value_heads=2)
    return sw.load_model(save_tiny(tmp_path_factory.mktemp("progress") / "llama", tf.LlamaForCausalLM(cfg)))


@pytest.fixture(scope="module")
def bert(tmp_path_factory):
    torch.manual_seed(0)
    cfg = tf.BertConfig(vocab_size=49152, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=128)
    return sw.load_model(save_tiny(tmp_path_factory.mktemp("progress") / "bert", tf.BertModel(cfg)))


def _layer_bar(err: str, n: int) -> bool:
    """``err`` holds a finished bar of ``n`` layer steps."""
    return re.search(rf"\b{n}/{n} \[[^\]]*layer/s\]", err) is not None


def _hooks(model) -> int:
    from sinkwidgets.models.adapters import get_path

    return sum(len(m._forward_hooks) for m in get_path(model._module, model.sinkwidgets.adapter.layers))


@pytest.mark.models
@pytest.mark.parametrize("method", ["eager", "chunked"])
def test_one_prompt_shows_a_bar_over_the_layers(llama, capsys, monkeypatch, method):
    import tqdm.auto

    # every update redraws (and tqdm.update returns True): a hook that returned it would replace the block's output
    monkeypatch.setattr(tqdm.auto, "tqdm", functools.partial(tqdm.auto.tqdm, mininterval=0))
    before = _hooks(llama)
    quiet = sw.trace(llama, TEXT, method=method, progress=False, keep_maps="all", map_dtype="float32")
    assert capsys.readouterr().err == ""
    shown = sw.trace(llama, TEXT, method=method, progress=True, keep_maps="all", map_dtype="float32")
    err = capsys.readouterr().err
    L = llama.sinkwidgets.n_layers
    assert _layer_bar(err, L), err
    assert "batch" not in err
    assert _hooks(llama) == before  # the hooks are removed
    # the hooks only count: the trace is the same (a hook returning a value would replace the block's output)
    for key in ("sink_scores", "first_token_mass", "entropy", "resid_norms", "maps"):
        assert getattr(quiet, key) is not None, key
        np.testing.assert_array_equal(getattr(shown, key), getattr(quiet, key))


@pytest.mark.models
def test_default_shows_the_layer_bar_from_the_token_threshold(llama, bert, capsys, monkeypatch):
    sw.trace(llama, TEXT)  # 13 tokens < LAYER_PROGRESS_TOKENS: nothing
    assert capsys.readouterr().err == ""
    n = len(llama.tokenizer(TEXT)["input_ids"])
    monkeypatch.setattr(api, "LAYER_PROGRESS_TOKENS", n)
    sw.trace(llama, TEXT)
    assert _layer_bar(capsys.readouterr().err, llama.sinkwidgets.n_layers)
    sw.trace(llama, TEXT, progress=False)
    assert capsys.readouterr().err == ""
    sw.trace(bert, TEXT, progress=True)  # an encoder's blocks (encoder.layer) are hooked the same way
    assert _layer_bar(capsys.readouterr().err, bert.sinkwidgets.n_layers)


@pytest.mark.models
def test_several_batches_keep_the_bar_over_batches(llama, capsys):
    sw.trace(llama, [TEXT, "Rain fell.", "Then it slept."], batch_size=2, progress=True)
    err = capsys.readouterr().err
    assert re.search(r"\b2/2 \[[^\]]*batch", err), err
    assert "layer" not in err
    sw.trace(llama, [TEXT, "Rain fell.", "Then it slept."], batch_size=2, progress=False)
    assert capsys.readouterr().err == ""

