"""Catch, tag, release: measure the mechanism of Zhang, Khan & Papyan (arXiv 2502.00919) on real models, always
beside its controls.

- :func:`collect` runs a corpus through a model (in batches, through the tracing engine's reductions) and keeps
  what the analyses need in a :class:`TagData` (numpy; one versioned file with :meth:`TagData.save`).
- Catch: :func:`boundary_heads`, :func:`sink_heads`, :func:`catch`.
- Tag: :func:`tag_vectors`, :func:`tag_subspace`, :func:`tag_ev` (with PC bound, random floor, non-sink value
  control and cosine), :func:`tag_ev_table`.
- Release: :func:`release` (projects the tag subspace out of the residual stream, beside random subspaces and
  the top PCs; uses :func:`sinkwidgets.interventions.project_out`).
- One head through all three steps, each decided by a written rule: :func:`mechanism` (a :class:`MechanismReport`);
  several heads sharing one collection: :func:`mechanism_table`.
- Probes: :func:`probe`, :func:`probe_report` and the shipped datasets (:func:`load_dataset`).

The analysis needs numpy only (scikit-learn for probes); torch is imported by :func:`collect` and :func:`release`.
See ``docs/tags.md`` for the formulas, the controls and what SmolLM2-135M and Gemma-3-270M do and do not show.
"""

from __future__ import annotations

from .analysis import (
    ALPHA0,
    BOUNDARY_ALPHA,
    BOUNDARY_SHARE,
    EPS,
    TAU,
    CatchResult,
    HeadRecord,
    SinkHeads,
    TagEV,
    TagEVTable,
    alpha_from_map,
    boundary_alpha,
    boundary_heads_from_data,
    boundary_mask,
    catch,
    caught_set,
    explained_variance,
    is_boundary,
    norm_fraction,
    norm_matched_subspace,
    numerical_rank,
    pc_bound,
    random_subspace,
    sink_heads,
    sink_positions,
    split_prompts,
    tag_ev,
    tag_ev_table,
    tag_subspace,
    tag_vectors,
    union_subspace,
)
from .collect import boundary_heads, collect
from .data import TagData, TagDataFormatError
from .datasets import TEASER, ProbeDataset, load_dataset, paragraphs
from .mechanism import MechanismReport, MechanismTable, mechanism, mechanism_table
from .probes import ProbeGrid, ProbeResult, TagBasis, grouped_folds, probe, probe_features, probe_report, tag_basis
from .release import ReleaseResult, release

__all__ = [
    "ALPHA0", "BOUNDARY_ALPHA", "BOUNDARY_SHARE", "EPS", "TAU", "TEASER",
    "CatchResult", "HeadRecord", "MechanismReport", "MechanismTable", "ProbeDataset", "ProbeGrid", "ProbeResult",
    "ReleaseResult",
    "SinkHeads", "TagBasis", "TagData", "TagDataFormatError", "TagEV", "TagEVTable",
    "alpha_from_map", "boundary_alpha", "boundary_heads", "boundary_heads_from_data", "boundary_mask", "catch",
    "caught_set", "collect", "explained_variance", "grouped_folds", "is_boundary", "load_dataset", "mechanism",
    "mechanism_table",
    "norm_fraction", "norm_matched_subspace", "numerical_rank", "pc_bound", "paragraphs", "probe", "probe_features", "probe_report",
    "random_subspace", "release", "sink_heads", "sink_positions", "split_prompts", "tag_basis", "tag_ev",
    "tag_ev_table", "tag_subspace", "tag_vectors", "union_subspace",
]
