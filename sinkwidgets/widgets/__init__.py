"""Interactive sink widgets (anywidget) and static exports.

=====================  =================================================================================
``SinkExplorer``       linked layer × head grid → attention heatmap → token strip, ε slider, metric menu
``SinkGrid``           layers × heads coloured by a metric; click / arrow keys select a head
``AttentionHeatmap``   one head's map, zoom + pan, full-resolution tiles fetched on demand for long prompts
``TokenStrip``         the prompt's tokens coloured by α; click selects a token
``save_html``          one offline, self-contained HTML file (JS + data inlined)
``charts``             Altair charts of the grid / a head / the tokens; PNG and SVG through vl-convert
``synthetic_trace``    demo data: SmolLM2-shaped synthetic attention with a first-token sink
``TagExplorer``        catch / tag / release of one head over a corpus (``sinkwidgets.tags.collect`` data)
``link``               link a SinkExplorer and a TagExplorer (head both ways; a clicked token shows its prompt)
``prompt_trace``       one prompt of a TagData as a SinkTrace
=====================  =================================================================================

See ``docs/widgets.md`` for how the data travels (binary buffers, overview + tiles) and where it runs.
"""

from __future__ import annotations

from . import charts
from ._tag_state import prompt_trace
from ._tag_widget import TagExplorer, TagLink, link
from ._widget import AttentionHeatmap, PngExport, SinkExplorer, SinkGrid, TokenStrip, WidgetValueError
from .standalone import save_html
from .synthetic import synthetic_trace

__all__ = [
    "SinkExplorer",
    "SinkGrid",
    "AttentionHeatmap",
    "TokenStrip",
    "PngExport",
    "WidgetValueError",
    "save_html",
    "charts",
    "synthetic_trace",
    "TagExplorer",
    "TagLink",
    "link",
    "prompt_trace",
]
