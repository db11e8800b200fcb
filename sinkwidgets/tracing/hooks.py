"""Local-only torch forward hooks that hand a layer's sources to the collector as the forward pass makes them.

A traced block reads a value through nnsight (``layer.output``, ``attn.output``) by pausing the forward there and
switching into the block and back, once per value read. A local trace reads a layer's block output (``"resid"``)
and, on the eager path, its attention probabilities (``"probs"``) from a plain torch forward hook instead, which
the forward calls without a switch (SmolLM2, 2 threads, T = 256: ~4 % of a chunked trace). Reads that an edit
changes (a ``"resid"`` edit replaces the block output, an ``"attn_mask"`` edit changes the probabilities) stay in
the block, and so does everything remote (NDIF runs the shipped block, not this process's hooks).

The block packs its results when its last nnsight read returns. nnsight hands a module's output to the block
before that module's own forward hooks run, so the last layer with a hookable read is read by the block itself
(:func:`hooked_layers`): every hook has then run before the block packs.
"""

from __future__ import annotations

from collections.abc import Callable

from .collect import Collector


def hooked_layers(col: Collector, n_layers: int, sources: tuple[str, ...], allowed: Callable[[int, str], bool]
                  ) -> dict[int, set[str]]:
    """``{layer: sources}`` to feed from forward hooks: each layer's needed ``sources`` that ``allowed(layer,
    source)`` permits, except at the last layer with any (the block reads that one through nnsight)."""
    plan = {li: {s for s in sources if s in col.needs(li) and allowed(li, s)} for li in range(n_layers)}
    plan = {li: s for li, s in plan.items() if s}
    if plan:
        del plan[max(plan)]
    return plan


def output_hook(module, feed: Callable) -> object:
    """Register ``feed(output)`` as a forward hook of the torch ``module`` (an nnsight envoy's ``_module`` is
    used); returns the handle (``handle.remove()``). The hook returns None, so the output is unchanged."""

    def hook(_module, _args, output):
        feed(output)

    return getattr(module, "_module", module).register_forward_hook(hook)


def first(output):
    """The first element of a module's output tuple (a decoder block's hidden states), or the output itself."""
    return output[0] if isinstance(output, tuple) else output
