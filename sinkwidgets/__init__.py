"""sinkwidgets: see attention sinks and the "catch, tag, release" mechanism in language models.

The public API is small and re-exported here. Importing ``sinkwidgets`` (and loading or analysing a saved
:class:`SinkTrace`) needs only numpy; torch, transformers and nnsight are imported on first use of
:func:`load_model` or :func:`trace`.
"""

from __future__ import annotations

import importlib
from typing import Any

from .sinktrace import SinkTrace, SinkTraceFormatError

__version__ = "0.1.0"

_LAZY = {
    # metrics (numpy only)
    "sink_scores": "metrics",
    "sink_ratio": "metrics",
    "sink_head_mask": "metrics",
    "find_sinks": "metrics",
    "sinks_per_head": "metrics",
    "first_token_mass": "metrics",
    "attention_entropy": "metrics",
    "massive_activations": "metrics",
    "Sink": "metrics",
    # corpora for catch / tag / release (numpy only), beside SinkTrace
    "TagData": "tags.data",
    "TagDataFormatError": "tags.data",
    # models and tracing (torch)
    "load_model": "tracing",  # local (models.load_model) or remote=True (tracing.remote)
    "fetch_model": "models",
    "list_models": "models",
    "trace": "tracing",
    "config": "models.threads",  # threads chosen for torch/BLAS (and why), versions
    "RunOptions": "tracing.options",  # the shared run options (add_bos, max_tokens, batch_size, ...) in one object
    # interventions and StreamingLLM (torch)
    "project_out": "interventions",
    "ablate_massive": "interventions",
    "mask_sink": "interventions",
    "add_sink": "interventions",
    "streaming_ppl": "streaming",
    "streaming_sweep": "streaming",
    # widgets
    "SinkGrid": "widgets",
    "AttentionHeatmap": "widgets",
    "TokenStrip": "widgets",
    "SinkExplorer": "widgets",
    "TagExplorer": "widgets",
    "link": "widgets",
}

__all__ = ["SinkTrace", "SinkTraceFormatError", "__version__", *_LAZY]

#: Deprecated top-level names: still resolved (with a DeprecationWarning when called), not in __all__ or dir().
_DEPRECATED = {"sink_heads": "metrics"}  # renamed sink_head_mask; sw.tags.sink_heads is the corpus-level record

_SUBMODULES = ("metrics", "models", "tracing", "widgets", "toy", "remote", "errors", "cli", "interventions",
               "streaming",
               # static charts: the one charts home (sw.charts.line_chart, grid_chart, emergence_chart, ...)
               "charts",
               # catch / tag / release on corpora (sw.tags.collect, tag_ev, probe, release)
               "tags",
               # tutorial helpers: handmade head, inputs, q-k geometry, trace summaries
               "lessons")

#: Tutorial helpers that moved into sinkwidgets.lessons: the error for the old name says where they went.
_MOVED = {"handmade": "lessons.handmade", "inputs": "lessons.inputs", "geometry": "lessons.geometry",
          "analysis": "lessons.summaries"}


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return importlib.import_module(f".{name}", __name__)
    if name in _MOVED:
        raise AttributeError(f"sinkwidgets.{name} moved to sinkwidgets.{_MOVED[name]}: use "
                             f"'from sinkwidgets.lessons import {_MOVED[name].partition('.')[2]}'")
    module = _LAZY.get(name) or _DEPRECATED.get(name)
    if module is None:
        raise AttributeError(f"module 'sinkwidgets' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    """The public names and the subpackages, so that ``sw.<TAB>`` completes ``sw.tags``, ``sw.charts``, ..."""
    return sorted({*__all__, *_SUBMODULES})
