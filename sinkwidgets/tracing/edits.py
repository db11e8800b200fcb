r"""In-trace edits: each change a trace can make to the forward pass is one small unit here (plain torch).

An :class:`Edit` is the write-side twin of a :class:`~.reductions.Reduction`. It declares

- **where it acts** (``site``, from :data:`SITES`) and at which layers (:meth:`Edit.layers`):

  ``"attn_mask"``  the attention mask of a layer's attention call: the edit names the (row, query, key) entries
                   to hide (:meth:`Edit.hide`, bool ``[B, T, T]``); hidden keys get an additive
                   ``finfo(float32).min`` before the softmax, so every row is renormalised over the keys it keeps;
  ``"resid"``      the residual stream after a layer (the block output ``[B, T, d]``): :meth:`Edit.apply` returns
                   the edited stream, which the rest of the model (and every unit reading ``"resid"``) sees;

- **what it reads** before it acts (``reads``, optional): ``"o_input"``, the output projection's input at the same
  layer (per-head outputs, handed over with ``W_O``; :meth:`Edit.read` keeps what it needs in a per-trace state);
- **which batch rows** it changes (``rows``: ``None`` for all, or a list of row indices). Interventions run a text
  and its edited copies as rows of one batch (row 0 the clean copy), so one forward pass compares them;
- **what it reports** (optional): :meth:`Edit.apply` may return ``(h, {key: tensor [B, ...]})``; the keys are
  packed like a unit's and landed by :meth:`Edit.land`.

Executors (:mod:`.eager`, :mod:`.chunked`, :mod:`.remote`) apply the edits in forward order, layer by layer,
together with the reductions: at each layer first the attention mask (before the attention runs), then the
sources the units read, then the residual edits (before the units that read ``"resid"``). Like the reductions,
this module is plain torch and is shipped to NDIF by value.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from .reductions import BatchContext, head_contributions

#: Where an edit can act (see the module docstring).
SITES = ("attn_mask", "resid")
#: The additive value of a hidden attention entry (finite, so a row with every key hidden stays finite).
NEG = float(torch.finfo(torch.float32).min)


def _rows(rows, B: int, device) -> torch.Tensor:
    """``rows`` (None = all, or row indices) → bool ``[B]``."""
    sel = torch.zeros(B, dtype=torch.bool, device=device)
    if rows is None:
        sel[:] = True
    else:
        for r in rows:
            sel[int(r)] = True
    return sel


def _project_rows(x: torch.Tensor, U: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """``w_t (x_t U) Uᵀ`` per batch row, ``x [B, T, d]``, ``U [d, r]``, ``w [B, T]`` (or ``[1, T]``) → ``[B, T, d]``, computed one
    row at a time and only for the rows with a nonzero weight: a row's numbers then do not depend on what else is in
    the batch (a GEMM over ``B·T`` rows with ``r`` columns may split its sums differently for another ``B`` when
    torch runs several threads), so an edited row equals the same edit run alone, bit for bit."""
    out = torch.zeros_like(x)
    w = w.expand(x.shape[0], -1)  # weights [1, T] serve every row
    for b in torch.nonzero(w.ne(0).any(-1)).flatten().tolist():
        out[b] = w[b, :, None] * torch.matmul(torch.matmul(x[b], U), U.T)
    return out


def _right_aligned(w: torch.Tensor, T: int) -> torch.Tensor:
    """Per-token weights ``[B, T_w]`` given for the real tokens → ``[B, T]`` (left padding gets weight 0)."""
    return torch.nn.functional.pad(w, (T - w.shape[-1], 0)) if w.shape[-1] < T else w


# ----------------------------------------------------------------------------- base class
class Edit:
    """One in-trace change. Subclasses set ``name``, ``site`` (and ``reads``) and implement :meth:`hide` (site
    ``"attn_mask"``) or :meth:`apply` (site ``"resid"``)."""

    name: str = ""
    site: str = ""
    reads: tuple[str, ...] = ()

    def layers(self, n_layers: int) -> list[int]:
        raise NotImplementedError

    def bind(self, n_layers: int, n_heads: int, d_model: int) -> None:
        """Check the edit against the model's sizes before a trace (called locally)."""
        self.n_layers, self.n_heads, self.d_model = n_layers, n_heads, d_model

    def hide(self, layer: int, ctx: BatchContext, device) -> torch.Tensor:
        """``"attn_mask"`` edits: bool ``[B, T, T]``, True for the (row, query, key) entries to hide."""
        raise NotImplementedError

    def read(self, source: str, x: torch.Tensor, w_o, ctx: BatchContext, layer: int, state: dict) -> None:
        """Edits with ``reads``: look at a source of ``layer`` before :meth:`apply` (keep it in ``state``)."""
        raise NotImplementedError

    def apply(self, h: torch.Tensor, ctx: BatchContext, layer: int, state: dict):
        """``"resid"`` edits: the edited block output ``h [B, T, d]``, or ``(h, {key: tensor [B, ...]})``."""
        raise NotImplementedError

    def pack(self, key: str, per_layer: list[torch.Tensor]) -> torch.Tensor:
        return torch.stack(per_layer)

    def result_bytes(self, B: int, T: int, ctx: BatchContext) -> int:
        return 0

    def land(self, out: dict[str, np.ndarray], b: int, f: int) -> dict[str, np.ndarray]:
        """Row ``b``'s reported arrays (default: ``out[key][:, b]``)."""
        return {k: v[:, b] for k, v in out.items()}

    def describe(self) -> str:
        """A one-line description for a trace's ``meta["edits"]``."""
        return repr(self)


# ----------------------------------------------------------------------------- attention-mask edits
@dataclass(repr=False)
class HideKeys(Edit):
    """Hide ``keys`` from every query ``t >= 1`` in ``layers`` (rows ``rows``; None = all rows).

    Positions count from each row's first real token. A query that would see no key at all keeps them (query 1
    when keys 0 and 1 are hidden). This is :func:`sinkwidgets.interventions.mask_sink`'s edit: masking key 0 in
    every layer equals deleting token 0, and token 1 becomes the sink.
    """

    at_layers: list[int]
    keys: list[int]
    rows: list[int] | None = None
    name: str = "hide_keys"
    site: str = field(default="attn_mask", init=False)

    def layers(self, n_layers):
        return sorted({int(li) for li in self.at_layers})

    def hide(self, layer, ctx, device):
        B, T = ctx.B, ctx.T
        first = ctx.first.to(device)
        pos = torch.arange(T, device=device)[None, :] - first[:, None]  # [B, T] position from the first real token
        vis = torch.ones(T, T, dtype=torch.bool, device=device).tril()[None].expand(B, T, T)
        vis = vis & (pos >= 0)[:, None, :]
        key = torch.zeros(B, T, dtype=torch.bool, device=device)
        for k in self.keys:
            key |= pos == int(k)
        bl = (pos >= 1)[:, :, None] & key[:, None, :] & vis  # [B, Tq, Tk]
        empty = (vis & ~bl).sum(-1) == 0
        bl = bl & ~empty[:, :, None]
        return bl & _rows(self.rows, B, device)[:, None, None]

    def __repr__(self):
        return f"HideKeys(at_layers={self.layers(0)}, keys={list(self.keys)}, rows={self.rows})"


def attention_mask(hidden: torch.Tensor, ctx: BatchContext, window, device) -> torch.Tensor:
    """The additive mask ``[B, 1, T, T]`` of a layer under mask edits: 0 where a query may attend, :data:`NEG`
    elsewhere (causal, the sliding ``window`` (keys ``j <= i - window``), padding keys, and ``hidden [B, T, T]``)."""
    B, T = ctx.B, ctx.T
    i = torch.arange(T, device=device)
    bad = i[None, :] > i[:, None]
    if window:
        bad = bad | (i[None, :] <= i[:, None] - window)
    keyok = ctx.qmask.to(device).bool()
    bad = bad[None] | ~keyok[:, None, :] | hidden
    return torch.zeros(B, 1, T, T, device=device).masked_fill(bad[:, None], NEG)


def set_attention_mask(attn, mask: torch.Tensor) -> None:
    """Replace the ``attention_mask`` keyword of an attention module's call (an nnsight envoy) by ``mask``."""
    a, kw = attn.inputs
    kw = dict(kw)
    hs = kw.get("hidden_states", a[0] if a else None)
    kw["attention_mask"] = mask.to(hs.device, hs.dtype)
    attn.inputs = (a, kw)


# ----------------------------------------------------------------------------- residual edits
@dataclass(repr=False)
class ProjectOut(Edit):
    r"""Remove the subspace of ``U [d, r]`` (orthonormal columns) from the residual stream after ``layer``:
    :math:`h_t \leftarrow h_t - w_t\,(h_t U) U^\top`, with per-row, per-token weights ``weights [B, T]`` (1 = edit,
    0 = keep; given for the real tokens, right-aligned). Used by :func:`sinkwidgets.interventions.project_out`."""

    layer: int
    U: torch.Tensor
    weights: torch.Tensor
    name: str = "project_out"
    site: str = field(default="resid", init=False)

    def layers(self, n_layers):
        return [int(self.layer)]

    def bind(self, n_layers, n_heads, d_model):
        super().bind(n_layers, n_heads, d_model)
        if self.U.ndim != 2 or self.U.shape[0] != d_model:
            raise ValueError(f"{self.name}: U must be [d_model={d_model}, r], got {list(self.U.shape)}")

    def apply(self, h, ctx, layer, state):
        U = self.U.to(h.device, h.dtype)
        w = _right_aligned(self.weights, h.shape[1]).to(h.device, h.dtype)
        return h - _project_rows(h, U, w)

    def __repr__(self):
        return f"ProjectOut(layer={self.layer}, rank={int(self.U.shape[1])})"


@dataclass(repr=False)
class ProjectHeadWrite(Edit):
    r"""Remove only head ``head``'s own write along ``U [d, r]`` from the residual stream after ``layer``.

    With :math:`c_t = o_{t,h} W_O^h` the head's contribution to the residual at token t (from the output
    projection's input of the same layer, :func:`~.reductions.head_contributions`), every token gets
    :math:`h_t \leftarrow h_t - w_t\,(c_t U) U^\top` (``weights [B, T]`` as in :class:`ProjectOut`). The rest of
    the stream, including the other heads' writes along ``U``, is untouched. Used by
    ``project_out(..., head=h)``.
    """

    layer: int
    head: int
    U: torch.Tensor
    weights: torch.Tensor
    name: str = "project_head_write"
    site: str = field(default="resid", init=False)
    reads: tuple[str, ...] = field(default=("o_input",), init=False)

    def layers(self, n_layers):
        return [int(self.layer)]

    def bind(self, n_layers, n_heads, d_model):
        super().bind(n_layers, n_heads, d_model)
        if not 0 <= int(self.head) < n_heads:
            raise ValueError(f"{self.name}: head={self.head} is out of range, the model has heads 0..{n_heads - 1}")
        if self.U.ndim != 2 or self.U.shape[0] != d_model:
            raise ValueError(f"{self.name}: U must be [d_model={d_model}, r], got {list(self.U.shape)}")

    def read(self, source, x, w_o, ctx, layer, state):
        state["c"] = head_contributions(x, w_o, ctx.n_heads, [int(self.head)], ctx.o_layout)[:, 0]  # [B, T, d]

    def apply(self, h, ctx, layer, state):
        c = state["c"]
        U = self.U.to(c.device, torch.float32)
        w = _right_aligned(self.weights, h.shape[1]).to(c.device, torch.float32)
        return h - _project_rows(c, U, w).to(h.device, h.dtype)

    def __repr__(self):
        return f"ProjectHeadWrite(layer={self.layer}, head={self.head}, rank={int(self.U.shape[1])})"


def massive_flags(h_row, ch, abs_thr: float, ratio: float):
    """``[T, c]`` flags of one prompt's massive entries among channels ``ch``: ``|h| > abs_thr`` and ``|h| >= ratio ×``
    the median ``|h|`` of the row (``h_row [T, d]``; Sun et al. 2024's rule, as in :class:`MassiveAblation`)."""
    a = h_row.abs().float()
    sub = a.index_select(-1, ch)  # [T, c]
    return (sub > abs_thr) & (sub >= ratio * a.flatten().median())


@dataclass(repr=False)
class MassiveAblation(Edit):
    r"""Replace the massive activations of the residual stream after ``layer`` (Sun et al. 2024, §3.1).

    On row 0 (the clean copy, never changed), the entries of ``channels [c]`` with ``|h| > abs_thr`` and
    ``|h| >= ratio · median|h|`` (median over the whole row) are flagged; rows ``1..R`` set the flagged entries to
    ``values[r-1] [c]`` (``values [R, c]``); with ``control_pos >= 0`` row ``R+1`` instead zeroes the same channels
    at token ``control_pos`` (not massive). Reports ``flags [B, T, c]`` (row 0's flags, repeated over rows).
    """

    layer: int
    channels: torch.Tensor
    values: torch.Tensor
    abs_thr: float = 100.0
    ratio: float = 1000.0
    control_pos: int = -1
    name: str = "massive"
    site: str = field(default="resid", init=False)

    def layers(self, n_layers):
        return [int(self.layer)]

    def apply(self, h, ctx, layer, state):
        ch = self.channels.to(h.device)
        flags = massive_flags(h[0], ch, self.abs_thr, self.ratio)
        out = h.clone()
        R = self.values.shape[0]
        for r in range(R):
            v = self.values[r].to(h.device, h.dtype)
            cur = out[r + 1].index_select(-1, ch)
            out[r + 1, :, ch] = torch.where(flags, v[None, :].expand_as(cur), cur)
        if self.control_pos >= 0:
            out[R + 1, self.control_pos, ch] = torch.zeros_like(out[R + 1, self.control_pos, ch])
        return out, {"flags": flags[None].expand(h.shape[0], *flags.shape)}

    def result_bytes(self, B, T, ctx):
        return B * T * int(self.channels.numel())

    def land(self, out, b, f):
        return {"massive_flags": out["flags"][0, b, f:]}

    def __repr__(self):
        return f"MassiveAblation(layer={self.layer}, channels={self.channels.tolist()}, rows={self.values.shape[0]})"


# ----------------------------------------------------------------------------- the edits of one trace
@dataclass
class EditSet:
    """The edits one trace applies, checked against the model (names unique, sites known, layers in range)."""

    edits: list[Edit]
    n_layers: int
    n_heads: int
    d_model: int
    active: dict[int, list[Edit]] = field(default_factory=dict)

    def __post_init__(self):
        for e in self.edits:
            if not isinstance(e, Edit):
                raise TypeError(f"edits must be sinkwidgets.tracing.edits.Edit objects (e.g. HideKeys, ProjectOut), "
                                f"got {type(e).__name__}")
        names = [e.name for e in self.edits]
        if len(set(names)) != len(names):
            raise ValueError(f"edit names must be unique (pass name=... to tell two edits apart), got {names}")
        for e in self.edits:
            if e.site not in SITES:
                raise ValueError(f"{e!r} acts on {e.site!r}; an edit acts on one of {SITES}")
            e.bind(self.n_layers, self.n_heads, self.d_model)
            for li in e.layers(self.n_layers):
                if not 0 <= li < self.n_layers:
                    raise ValueError(f"{e!r}: layer {li} is out of range, the model has layers 0..{self.n_layers - 1}")
                self.active.setdefault(li, []).append(e)

    def at(self, layer: int, site: str) -> list[Edit]:
        return [e for e in self.active.get(layer, ()) if e.site == site]

    def reading(self, layer: int, source: str) -> list[Edit]:
        return [e for e in self.active.get(layer, ()) if source in e.reads]

    def needs(self, layer: int) -> set[str]:
        """The sites edited and the sources read at ``layer``."""
        return {s for e in self.active.get(layer, ()) for s in (e.site, *e.reads)}

    def result_bytes(self, B: int, T: int, ctx: BatchContext) -> int:
        return sum(e.result_bytes(B, T, ctx) for e in self.edits)

    def describe(self) -> list[str]:
        return [e.describe() for e in self.edits]


def no_edits(n_layers: int, n_heads: int, d_model: int) -> EditSet:
    return EditSet([], n_layers, n_heads, d_model)

