"""Helpers written for the tutorials (``tutorials/01…12``): small, tested, and not part of the core API.

=================  ================================================================  ==========================
module             what                                                              used by tutorials
=================  ================================================================  ==========================
``handmade``       a hand-made attention head in numpy: softmax, softmax₁, sigmoid   02
``inputs``         offline inputs: natural prose, random tokens, one repeated token  03, 05, 06, 10, 12
``geometry``       query–key geometry of the first-token sink (‖q‖, ‖k‖, cos θ)      04
``summaries``      numpy summaries of a saved trace: residual-norm ratio, outlier    04, 06
                   channels, attention to key positions, special-token positions
=================  ================================================================  ==========================

(``summaries`` was ``sinkwidgets.analysis``; it was renamed so that it no longer shares a name with
:mod:`sinkwidgets.tags.analysis`, the catch / tag / release analysis of corpora.)

>>> from sinkwidgets.lessons import handmade as hm, inputs, summaries
>>> texts = inputs.natural_texts(4, seed=0)

**Where the charts live.** ``sw.charts`` (:mod:`sinkwidgets.charts`) is the one charts home: every static chart a
notebook draws is ``sw.charts.<name>``, and these lessons define no chart of their own.

* Defined in :mod:`sinkwidgets.charts`: ``norm_chart``, ``outlier_chart``, ``activation_view`` (trace summaries),
  ``line_chart``, ``bar_chart`` (generic) and ``weights_chart`` (the hand-made head's weights, formerly
  ``handmade.weights_chart``).
* Defined in :mod:`sinkwidgets.widgets.charts`, re-exported by ``sw.charts``: ``grid_chart``, ``heatmap_chart``,
  ``token_chart``, ``save_png``, ``save_svg``. They are the static twins of SinkExplorer's views and read the
  widget's own metric definitions, so they stay beside the widget (and the widgets, which sit below
  ``sw.charts``, never import upward).
* Defined in :mod:`sinkwidgets.toy.charts`, re-exported lazily by ``sw.charts``: ``emergence_chart``. It reads the
  toy's training-history records; it is loaded on first use because importing the toy imports torch.
* Result objects of :mod:`sinkwidgets.interventions` and :mod:`sinkwidgets.streaming` keep their ``.chart()``
  methods: each draws its own result.

**Layering.** The lessons sit at the top of the package, beside :mod:`sinkwidgets.charts`: they may import anything
below them (SinkTrace, metrics, models, tracing), and nothing in the core imports them
(``tests/test_imports.py``). Importing this package needs only numpy; ``geometry`` imports torch when called.
"""

from __future__ import annotations

from . import geometry, handmade, inputs, summaries

__all__ = ["geometry", "handmade", "inputs", "summaries"]
