"""Tracing: run prompts through a model with nnsight and reduce what happens inside the trace.

Layers, bottom to top (each imports only the ones below it):

- :mod:`.options`: :class:`RunOptions` (the shared run options, checked), ``tokenize`` and ``encode`` (imports
  nothing from the package but ``errors``);
- :mod:`.reductions`: the named in-trace units (α, residual summary, kept maps, per-head outputs, value vectors
  after W_O, pooled residuals, per-token loss, attention changes) and their kernels, plain torch;
- :mod:`.edits`: the named in-trace edits (hide keys in a layer's attention mask, project a subspace out of the
  residual stream or out of one head's write, replace massive activations), plain torch;
- :mod:`.collect`: hands a layer's sources to the units that read them;
- the executors: :mod:`.eager` (eager probabilities), :mod:`.chunked` (SDPA + probabilities recomputed from q/k),
  :mod:`.remote` (the chunked block shipped to NDIF);
- :mod:`.api`: :func:`trace`, :func:`run_units`, :func:`tokenize`, :func:`load_model`.

Names are re-exported lazily, so importing one layer never imports the layers above it.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "trace": "api",
    "run_units": "api",
    "tokenize": "api",
    "load_model": "api",
    "PromptResult": "api",
    "AUTO_CHUNKED_TOKENS": "api",
    "AUTO_KEEP_MAPS_TOKENS": "api",
    "MMAP_THRESHOLD_BYTES": "api",
    "_pin_mmap_threshold": "api",
    "_forward_kwargs": "api",
    "reduce_attention": "eager",
    "reduce_residual": "reductions",
    "reduce_attention_chunks": "reductions",
    "TOP_K_ACTIVATIONS": "reductions",
    "validate_model": "models.check",
    "RunOptions": "options",
}
_SUBMODULES = {"api", "options", "reductions", "edits", "collect", "eager", "chunked", "remote"}

__all__ = sorted(k for k in _LAZY if not k.startswith("_"))


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return importlib.import_module(f".{name}", __name__)
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'sinkwidgets.tracing' has no attribute {name!r}")
    target = f"sinkwidgets.{module}" if module.startswith("models") else f"{__name__}.{module}"
    return getattr(importlib.import_module(target), name)


def __dir__() -> list[str]:
    return sorted(set(__all__) | _SUBMODULES)
