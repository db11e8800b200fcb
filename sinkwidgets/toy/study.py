"""Seed sweeps and the sink-placement study (``mechanism-spec.md`` §1.8, §2.1, §2.2, §2.4).

Success criterion used throughout (:func:`sinkwidgets.toy.metrics.is_solved`): **final held-out loss < 1e-2**
(predicting 0 gives ≈ 0.33 at T = 16). A run is also reported as showing the **catch-tag-release
mechanism** (``ctr``) when it is solved *and* ``catch ≥ 0.5``, ``release_mass ≥ 0.9`` and ``tag_ev ≥ 0.5``,
and as meeting the issue's **targets** (a clean SEP catch) when loss < 1e-3, catch ≥ 0.8, release mass ≥ 0.95
and tag EV ≥ 0.7.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Mapping

import torch

from ..errors import SinkwidgetsValueError
from .metrics import attention_breakdown, is_solved
from .model import ToyConfig
from .task import make_batch
from .train import train

VARIANTS: dict[str, dict] = {
    "softmax": {},
    "pre_ln": {"ln": True},
    "softmax1": {"attn": "softmax1"},
    "sink_token": {"sink_token": True},
    "key_bias": {"key_bias": True},
    "kv_bias": {"kv_bias": True},
    "gate_headwise": {"gate": "headwise"},
    "gate_elementwise": {"gate": "elementwise"},
    "sigmoid": {"attn": "sigmoid"},
    "sigmoid_logT": {"attn": "sigmoid", "sigmoid_bias": -2.7726},  # b = −ln 16 (Ramapuram et al. style)
}
"""The variants of the placement study: name → :class:`ToyConfig` options (everything else default)."""

CTR_THRESHOLDS = {"catch": 0.5, "release_mass": 0.9, "tag_ev": 0.5}
TARGETS = {"loss": 1e-3, "catch": 0.8, "release_mass": 0.95, "tag_ev": 0.7}
"""The issue's seed-0 targets: loss < 1e-3, catch ≥ 0.8, release mass ≥ 0.95, tag EV ≥ 0.7."""


def meets_targets(record: Mapping) -> bool:
    """True when a record meets :data:`TARGETS` (a strict "clean catch" criterion, stricter than solved)."""
    return bool(record["loss"] < TARGETS["loss"] and all(record[k] >= TARGETS[k] for k in TARGETS if k != "loss"))


def shows_ctr(record: Mapping, loss_threshold: float = 1e-2) -> bool:
    """Solved and ``catch ≥ 0.5``, ``release_mass ≥ 0.9``, ``tag_ev ≥ 0.5`` (see the module docstring)."""
    return is_solved(record, loss_threshold) and all(
        (record.get(k) is not None and record[k] >= v) for k, v in CTR_THRESHOLDS.items())


def _final(res, loss_threshold: float) -> dict:
    f = dict(res[-1])
    first = next((r["step"] for r in res if r["loss"] < loss_threshold), None)
    return {"seed": res.seed, **{k: f[k] for k in ("loss", "catch", "pre_to_bos", "release_mass", "release_unif",
                                                    "tag_ev")},
            "solved": is_solved(f, loss_threshold), "ctr": shows_ctr(f, loss_threshold),
            "meets_targets": meets_targets(f),
            "first_step_solved": first, "wall_time_s": round(res.wall_time, 2)}


def seed_sweep(seeds: Iterable[int] = range(10), steps: int = 600, loss_threshold: float = 1e-2,
               progress: bool = True, **options) -> dict:
    """Train one run per seed and report the success rate.

    Parameters
    ----------
    seeds : iterable of int
    steps : int
    loss_threshold : float
        A run is solved when its final held-out loss is below this (default 1e-2).
    progress : bool
        One ``tqdm.auto`` bar over the seeds.
    **options
        :class:`ToyConfig` fields (e.g. ``ln=True``).

    Returns
    -------
    dict
        ``options``, ``steps``, ``criterion``, ``runs`` (per seed: final metrics, ``solved``, ``ctr``,
        ``meets_targets``, ``first_step_solved``, ``wall_time_s``), ``n_solved``, ``n_ctr``,
        ``n_meets_targets``, ``n_runs``, ``success_rate``, ``ctr_rate``, ``targets_rate``,
        ``median_wall_time_s``.
    """
    seeds = list(seeds)
    it = seeds
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(seeds, desc=f"sweep {options or 'defaults'}", leave=False)
    runs = [_final(train(seed=s, steps=steps, progress=False, **options), loss_threshold) for s in it]
    return {"options": dict(options), "steps": steps, **summarize_sweep(runs, loss_threshold)}


def summarize_sweep(runs: list[dict], loss_threshold: float = 1e-2) -> dict:
    """Counts and rates of a list of per-seed final records (see :func:`seed_sweep`)."""
    n = len(runs)
    n_solved = sum(r["solved"] for r in runs)
    n_ctr = sum(r["ctr"] for r in runs)
    n_targets = sum(meets_targets(r) for r in runs)
    return {
        "criterion": f"final held-out loss < {loss_threshold:g}",
        "ctr_criterion": "solved and " + ", ".join(f"{k} >= {v}" for k, v in CTR_THRESHOLDS.items()),
        "targets_criterion": "loss < 1e-3 and catch >= 0.8 and release_mass >= 0.95 and tag_ev >= 0.7",
        "runs": [{**r, "meets_targets": meets_targets(r)} for r in runs],
        "n_runs": n,
        "n_solved": n_solved,
        "n_ctr": n_ctr,
        "n_meets_targets": n_targets,
        "success_rate": n_solved / n if n else float("nan"),
        "ctr_rate": n_ctr / n if n else float("nan"),
        "targets_rate": n_targets / n if n else float("nan"),
        "median_wall_time_s": statistics.median(r["wall_time_s"] for r in runs) if runs else None,
    }


@torch.no_grad()
def _placement(model, batch) -> dict:
    it = model(batch.types, batch.values, return_internals=True)
    l1 = attention_breakdown(it, batch, layer=0)
    l2 = attention_breakdown(it, batch, layer=1)
    return {"layer1_post": l1["post"], "layer1_pre": l1["pre"], "layer2_last": l2["last"]}


def _mean_dicts(ds: list[dict]) -> dict:
    keys = ds[0].keys()
    return {k: (_mean_dicts([d[k] for d in ds]) if isinstance(ds[0][k], dict)
                else statistics.fmean(float(d[k]) for d in ds)) for k in keys}


def sink_placement_study(seeds: Iterable[int] = (0, 1, 2), steps: int = 600,
                         variants: Mapping[str, dict] | Iterable[str] | None = None,
                         loss_threshold: float = 1e-2, progress: bool = True, **common) -> dict:
    """Fix or move the sink: train each variant and measure where layer-1 attention goes, and whether the
    task is still solved.

    For every variant and seed the final model is evaluated on the held-out batch, and the attention mass is
    split by destination (:func:`sinkwidgets.toy.metrics.attention_breakdown`) for three query groups:
    ``layer1_post`` (layer 1, queries after SEP: the catch), ``layer1_pre`` (layer 1, queries before SEP: the
    no-op sink) and ``layer2_last`` (layer 2, the last query: the release). Destinations are ``sep``,
    ``bos``, ``post``, ``pre``, the variant's extra slots, ``extra`` (their sum) and ``total``.

    Parameters
    ----------
    seeds : iterable of int
    steps : int
    variants : mapping name → options, or names from :data:`VARIANTS`; default all of :data:`VARIANTS`
    loss_threshold : float
        Success criterion (final held-out loss below it).
    progress : bool
    **common
        :class:`ToyConfig` options applied to every variant.

    Returns
    -------
    dict
        ``{name: {"options", "runs": [...], "summary": {...}}}``; ``summary`` has ``n_solved``, ``n_ctr``,
        ``n_runs``, ``median_loss``, mean ``catch``/``release_mass``/``tag_ev`` and the mean breakdowns.
    """
    if variants is None:
        variants = VARIANTS
    elif not isinstance(variants, Mapping):
        names = list(variants)
        bad = [v for v in names if v not in VARIANTS]
        if bad:
            raise SinkwidgetsValueError(f"variants={names!r}: unknown variant(s) {bad}; known: {', '.join(VARIANTS)}")
        variants = {v: VARIANTS[v] for v in names}
    seeds = list(seeds)
    jobs = [(name, opts, s) for name, opts in variants.items() for s in seeds]
    it = jobs
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(jobs, desc="sink placement", leave=False)
    out: dict[str, dict] = {name: {"options": {**common, **opts}, "runs": []} for name, opts in variants.items()}
    for name, opts, s in it:
        res = train(seed=s, steps=steps, progress=False, **{**common, **opts})
        cfg: ToyConfig = res.config
        batch = make_batch(cfg.eval_size, cfg.T, cfg.eval_seed)
        row = _final(res, loss_threshold)
        row.update(_placement(res.model, batch))
        out[name]["runs"].append(row)
    for entry in out.values():
        entry["summary"] = summarize_runs(entry["runs"])
    return out


_MEAN_KEYS = ("catch", "pre_to_bos", "release_mass", "tag_ev")
_BREAKDOWNS = ("layer1_post", "layer1_pre", "layer2_last")


def summarize_runs(runs: list[dict]) -> dict:
    """Summary of one variant's runs: counts, median loss, and means over all runs and over solved runs.

    Keys: ``n_runs``, ``n_solved``, ``n_ctr``, ``median_loss``, mean ``catch``/``pre_to_bos``/``release_mass``/
    ``tag_ev`` and mean breakdowns ``layer1_post``/``layer1_pre``/``layer2_last`` over all runs; the same means
    over the solved runs only under ``"solved_only"`` (None when no run is solved).
    """

    def means(rs):
        return {**{k: statistics.fmean(r[k] for r in rs) for k in _MEAN_KEYS},
                **_mean_dicts([{k: r[k] for k in _BREAKDOWNS} for r in rs])}

    solved = [r for r in runs if r["solved"]]
    return {
        "n_runs": len(runs),
        "n_solved": len(solved),
        "n_ctr": sum(r["ctr"] for r in runs),
        "n_meets_targets": sum(meets_targets(r) for r in runs),
        "median_loss": statistics.median(r["loss"] for r in runs),
        **means(runs),
        "solved_only": means(solved) if solved else None,
    }


def placement_table(study: Mapping[str, dict], solved_only: bool = False) -> str:
    """A markdown table of a :func:`sink_placement_study` result: means over all seeds, or over the solved
    seeds only (``solved_only=True``; variants with no solved run show "–")."""
    head = ("| variant | solved | median loss | catch | L1 post→SEP | L1 post→BOS | L1 post→extra | "
            "L1 pre→BOS | L1 pre→extra | L2 last→post | L2 last→extra |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for name, e in study.items():
        s = e["summary"]
        m = s.get("solved_only") if solved_only else s
        if m is None:
            lines.append(f"| {name} | {s['n_solved']}/{s['n_runs']} | {s['median_loss']:.2g} |" + " – |" * 8)
            continue
        p, q, r = m["layer1_post"], m["layer1_pre"], m["layer2_last"]
        lines.append(
            f"| {name} | {s['n_solved']}/{s['n_runs']} | {s['median_loss']:.2g} | {m['catch']:.2f} | "
            f"{p['sep']:.2f} | {p['bos']:.2f} | {p['extra']:.2f} | {q['bos']:.2f} | {q['extra']:.2f} | "
            f"{r['post']:.2f} | {r['extra']:.2f} |")
    return "\n".join(lines)
