"""The minimal problem: an averaging task on which catch, tag and release emerge from training on a CPU.

Quick start::

    from sinkwidgets import toy
    hist = toy.train(seed=0, steps=600)          # ~6 s on a laptop CPU core; a list of metric records
    hist[-1]["loss"], hist[-1]["catch"]          # held-out MSE, layer-1 attention of post-SEP tokens to SEP
    toy.emergence_chart(hist)                    # Altair chart: loss and mechanism metrics vs step
    tr = toy.trace_toy(hist.model, 0)            # a SinkTrace of one sequence, for the sink widgets
    data = toy.tag_data(hist.model, n=64)        # a TagData of 64 sequences, for sw.tags and sw.TagExplorer

Modules: :mod:`.task` (data), :mod:`.model` (tiny attention-only transformer and its attention variants),
:mod:`.train` (training loop), :mod:`.metrics` (emergence metrics with formulas), :mod:`.trace`
(SinkTrace, TagData), :mod:`.charts` (Altair), :mod:`.study` (seed sweeps and the sink-placement study).
Our own reconstruction of the paper's minimal problem (arXiv 2502.00919 §7), not the paper's code.
"""

from .charts import emergence_chart
from .metrics import attention_breakdown, emergence_metrics, is_solved
from .model import ATTN_OPTIONS, GATE_OPTIONS, POS_OPTIONS, TinyTransformer, ToyConfig, ToyInternals, softmax1
from .study import VARIANTS, placement_table, seed_sweep, shows_ctr, sink_placement_study
from .task import BOS, NUM, SEP, AveragingTask, Batch, make_batch
from .trace import tag_data, trace_toy
from .train import TrainResult, evaluate, train

__all__ = [
    "ATTN_OPTIONS", "BOS", "GATE_OPTIONS", "NUM", "POS_OPTIONS", "SEP", "VARIANTS",
    "AveragingTask", "Batch", "TinyTransformer", "ToyConfig", "ToyInternals", "TrainResult",
    "attention_breakdown", "emergence_chart", "emergence_metrics", "evaluate", "is_solved", "make_batch",
    "placement_table", "seed_sweep", "shows_ctr", "sink_placement_study", "softmax1", "tag_data", "trace_toy",
    "train",
]
