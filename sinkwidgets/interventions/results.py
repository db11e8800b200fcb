"""The result of an intervention: per-token NLL under each condition, attention changes, a table and charts.

Numpy, pandas (optional) and Altair (optional) only: nothing here runs inside a trace, and nothing here is sent
to NDIF. :class:`InterventionResult` is what every function of :mod:`.experiments` returns; :class:`MassiveSpec`
says where a model's massive activations are (:func:`~.experiments.find_massive`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import SinkwidgetsValueError


class InterventionError(SinkwidgetsValueError):
    """An intervention's arguments do not fit the model or the texts (the message says which and how to fix)."""


@dataclass
class InterventionResult:
    """Per-token NLL of every text under each condition (``conditions[0]`` is the clean baseline), optional
    attention changes of later layers, and the settings used.

    ``nll[cond]`` is a list (one per text) of float arrays; ``nll[cond][i][t]`` is the NLL of token ``t+1`` of
    text ``i`` (``targets`` says which target positions each condition scores when they differ).
    ``attention`` (may be empty): ``layers [S]``, ``sink_delta [N, S, C-1, H]``, ``tv [N, S, C-1, H]``,
    ``sink_mass [N, S, C, H]`` (N texts, C conditions, H heads; see the module docstring for definitions).
    """

    kind: str
    conditions: list[str]
    nll: dict[str, list[np.ndarray]]
    attention: dict[str, Any] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    def mean_nll(self, cond: str | None = None) -> float:
        """Token-weighted mean NLL (nats) of one condition (default: the clean baseline)."""
        arrs = self.nll[cond or self.conditions[0]]
        return float(np.concatenate(arrs).mean())

    def per_text(self, cond: str | None = None) -> np.ndarray:
        """Mean NLL of each text ``[N]`` under ``cond``."""
        return np.array([a.mean() for a in self.nll[cond or self.conditions[0]]])

    @property
    def delta(self) -> dict[str, float]:
        """Mean NLL change of each edited condition vs the baseline (nats; positive = worse)."""
        base = self.mean_nll()
        return {c: self.mean_nll(c) - base for c in self.conditions[1:]}

    def rows(self) -> list[dict]:
        """One dict per condition: mean NLL, ΔNLL, perplexity, the fraction of texts it improves, and (if measured)
        the mean first-token/sink attention mass and the mean attention change of the measured layers."""
        base = self.per_text()
        out = []
        for ci, c in enumerate(self.conditions):
            pt = self.per_text(c)
            r = {"condition": c, "mean_nll": self.mean_nll(c), "delta_nll": self.mean_nll(c) - self.mean_nll(),
                 "ppl": float(np.exp(self.mean_nll(c))),
                 "frac_texts_lower": float(np.mean(pt < base)) if ci else float("nan")}
            if self.attention:
                r["sink_mass"] = float(self.attention["sink_mass"][:, :, ci].mean())
                r["sink_delta"] = float(self.attention["sink_delta"][:, :, ci - 1].mean()) if ci else 0.0
                r["tv"] = float(self.attention["tv"][:, :, ci - 1].mean()) if ci else 0.0
            out.append(r)
        return out

    def layer_rows(self) -> list[dict]:
        """Attention statistics per measured layer and condition (mean over texts and heads)."""
        if not self.attention:
            return []
        a = self.attention
        out = []
        for si, li in enumerate(a["layers"]):
            for ci, c in enumerate(self.conditions):
                out.append({"layer": int(li), "condition": c, "sink_mass": float(a["sink_mass"][:, si, ci].mean()),
                            "sink_delta": float(a["sink_delta"][:, si, ci - 1].mean()) if ci else 0.0,
                            "tv": float(a["tv"][:, si, ci - 1].mean()) if ci else 0.0})
        return out

    def to_frame(self):
        """The table as a pandas DataFrame (needs pandas)."""
        import pandas as pd

        return pd.DataFrame(self.rows()).set_index("condition")

    def __repr__(self) -> str:
        rows = self.rows()
        cols = [k for k in rows[0] if k != "condition"]
        w = max(12, *(len(r["condition"]) for r in rows))
        head = f"{'condition':<{w}} " + " ".join(f"{c:>16}" for c in cols)
        lines = [f"{self.kind}: {self.meta.get('n_texts', '?')} texts, {self.meta.get('n_tokens', '?')} tokens "
                 f"({self.meta.get('model', '')})", head]
        for r in rows:
            lines.append(f"{r['condition']:<{w}} " + " ".join(f"{r[c]:>16.4f}" for c in cols))
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        import html

        rows = self.rows()
        cols = list(rows[0])
        body = "".join("<tr>" + "".join(f"<td>{html.escape(v) if isinstance(v, str) else f'{v:.4f}'}</td>"
                                        for v in r.values()) + "</tr>" for r in rows)
        return (f"<p><b>{html.escape(self.kind)}</b> ({self.meta.get('n_texts')} texts)</p><table><tr>"
                + "".join(f"<th>{html.escape(c)}</th>" for c in cols) + f"</tr>{body}</table>")

    def chart(self, what: str = "nll"):
        """Altair chart. ``what="nll"``: mean NLL per condition (bars); ``"layers"``: per measured layer, the sink
        attention mass of each condition (lines); ``"sweep"`` (mask_sink): ΔNLL per single masked layer."""
        import altair as alt

        if what == "layers":
            if not self.attention:
                raise InterventionError("no attention statistics in this result: run it with attention_layers=...")
            data = alt.Data(values=self.layer_rows())
            return alt.Chart(data).mark_line(point=True).encode(
                x=alt.X("layer:O", title="layer"), y=alt.Y("sink_mass:Q", title="attention mass on the sink"),
                color=alt.Color("condition:N"), tooltip=["layer:O", "condition:N", "sink_mass:Q", "tv:Q"],
            ).properties(title=f"{self.kind}: sink attention per layer", width=420, height=220)
        if what == "sweep":
            rows = [r for r in self.rows()[1:] if r["condition"].startswith("layer ")]
            if not rows:
                raise InterventionError("this result has no per-layer sweep: mask_sink(..., sweep=True)")
            for r in rows:
                r["layer"] = int(r["condition"].split()[1])
            return alt.Chart(alt.Data(values=rows)).mark_bar().encode(
                x=alt.X("layer:O"), y=alt.Y("delta_nll:Q", title="ΔNLL (nats)"), tooltip=["layer:O", "delta_nll:Q"],
            ).properties(title="masking the sink in one layer at a time", width=420, height=220)
        if what != "nll":
            raise InterventionError(f"what={what!r}: use 'nll', 'layers' or 'sweep'")
        return alt.Chart(alt.Data(values=self.rows())).mark_bar().encode(
            x=alt.X("condition:N", sort=None), y=alt.Y("mean_nll:Q", title="mean NLL per token (nats)"),
            tooltip=["condition:N", "mean_nll:Q", "delta_nll:Q", "ppl:Q"],
        ).properties(title=self.kind, width=60 * len(self.conditions), height=220)


def _collect_attention(chunks, layers):
    """Stack per-text ``{"dsink", "tv", "mass"}`` arrays ``[S, C(-1), H]`` into ``[N, S, C(-1), H]`` arrays."""
    if not layers:
        return {}
    return {"layers": np.array(layers),
            "sink_delta": np.stack([c["dsink"] for c in chunks]),
            "tv": np.stack([c["tv"] for c in chunks]),
            "sink_mass": np.stack([c["mass"] for c in chunks])}


@dataclass
class MassiveSpec:
    """Where a model's massive activations are (Sun et al. 2024, §2): the first layer where they appear, their
    channels, and each channel's mean value there over the reference texts (the ``mode="mean"`` replacement)."""

    layer: int
    channels: list[int]
    means: list[float]
    found: list[list[tuple[int, int, float]]]  #: per reference text: (token, channel, value) at ``layer``
    first_layers: list[int | None]  #: per reference text: first layer with a massive activation
    abs_thr: float = 100.0
    ratio: float = 1000.0

    def __repr__(self) -> str:
        ch = ", ".join(f"{c} (mean {m:,.0f})" for c, m in zip(self.channels, self.means))
        return f"MassiveSpec(layer={self.layer}, channels=[{ch}], texts={len(self.found)})"
