r"""What breaks without the sink: interventions on the residual stream and on attention, as edits the engine runs.

Four experiments, each one forward pass per text (a few rows of a batch: the clean text and its edited copies), run
by :func:`sinkwidgets.tracing.run_units` with edits (:mod:`sinkwidgets.tracing.edits`) and units (a per-token loss,
attention changes), so the same code runs locally (CPU, GPU, ``device_map``) and remotely on NDIF (only the
tracing layer's plain-torch modules are shipped to the server; nothing of this package is):

- :func:`project_out`: remove a subspace :math:`U` from the residual stream after one layer at chosen positions,
  :math:`h_t \leftarrow h_t - U U^\top h_t` (:math:`U` orthonormal), and measure the loss and how later heads'
  attention moves. The *release* test of Zhang, Khan & Papyan (arXiv 2502.00919): later heads find tokens by
  their tags, so projecting the tag subspace out should move their attention. ``sinkwidgets.tags.release`` calls
  this; it is the one implementation.
- :func:`ablate_massive`: Sun et al. 2024 ("Massive Activations in Large Language Models", arXiv 2402.17762, §3):
  set the massive activations (:math:`|h| > 100` and :math:`\ge 1000\times` the layer's median :math:`|h|`, at the
  layer where they first appear) to zero or to their mean over reference prompts. Their LLaMA2-7B result: the mean
  leaves perplexity unchanged, zero destroys it (the activations act as a fixed bias).
- :func:`mask_sink`: forbid attention to the sink token for queries :math:`t \ge 1` in chosen layers (the rest of
  each row is renormalised: an additive :math:`-\infty` on the key before the softmax), per layer set and as a
  one-layer-at-a-time sweep.
- :func:`add_sink`: prepend a dedicated sink token (a newline, BOS, ...) and measure the NLL of the original tokens
  (StreamingLLM's "learnable / dedicated sink token", Xiao et al., ICLR 2024, §3.3).

Every function returns an :class:`InterventionResult`: it prints as a table (mean NLL per condition and its change),
keeps per-token NLL for every text and condition, optional attention changes of later layers, and ``.chart()``
draws an Altair chart. NLL of token :math:`t+1` given :math:`x_{\le t}` is
:math:`-\log \operatorname{softmax}(z_t)_{x_{t+1}}`; means are over tokens (token-weighted over all texts).

Attention changes (``attention_layers``) are computed inside the trace from the post-RoPE queries and keys
(``self_attn.source.apply_rotary_pos_emb_0``), with the mask each row really used, so they exist under SDPA and on
NDIF too. For each layer and head, with :math:`P` the clean and :math:`P'` the edited probabilities, over queries
:math:`t \ge 1`:

- ``sink_delta`` :math:`= \operatorname{mean}_t |\sum_{s \in S} (P'_{ts} - P_{ts})|` (:math:`S` the sink positions);
- ``tv`` :math:`= \operatorname{mean}_t \tfrac12 \sum_j |P'_{tj} - P_{tj}|` (total variation of each row);
- ``sink_mass`` :math:`= \operatorname{mean}_t \sum_{s \in S} P_{ts}` for every row (clean and edited).

Supported: causal decoders whose attention calls ``apply_rotary_pos_emb`` (Llama/SmolLM2, Mistral, Qwen2/3,
Gemma 2/3, OLMo, Phi-3). This package sits above the tracing layer: nothing below imports it (``tags.release``,
above it, calls :func:`project_out`).

Modules: :mod:`.experiments` (the thin functions), :mod:`.edits` (arguments → tracing edits, and
:func:`mask_sink_edit` for ``sinkwidgets.trace(..., edits=[...])``), :mod:`.results` (:class:`InterventionResult`,
its table and charts). A trace *under* an intervention::

    tr = sw.trace(model, text, edits=[sw.interventions.mask_sink_edit(model, "all", token=0)])
"""

from __future__ import annotations

from .edits import _tokenize, mask_sink_edit  # noqa: F401 - _tokenize: the tests tokenize as we do
from .experiments import (
    DEFAULT_BATCH,
    FIRST_QUERY,
    ablate_massive,
    add_sink,
    find_massive,
    mask_sink,
    project_out,
)
from .results import InterventionError, InterventionResult, MassiveSpec

__all__ = ["DEFAULT_BATCH", "FIRST_QUERY", "InterventionError", "InterventionResult", "MassiveSpec", "ablate_massive",
           "add_sink", "find_massive", "mask_sink", "mask_sink_edit", "project_out"]
