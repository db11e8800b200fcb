"""A tiny attention-only transformer for the averaging task, with switchable attention variants.

Input embedding (``mechanism-spec.md`` §1.8): ``x_t = E[type_t] + v_t · u`` (+ ``P[t]`` with learned positions),
with learned ``E ∈ R^{3×d}`` and ``u ∈ R^d``. Each of the ``n_layers`` layers (default 2) is one multi-head
causal attention block added to the residual stream, with no MLP:

.. math::

    h = \\mathrm{LN}(x) \\text{ (pre-LN, optional)},\\quad q,k,v = hW_Q, hW_K, hW_V,\\quad
    o^{h}_t = \\big(g^h_t \\odot \\textstyle\\sum_j A^h_{t,j} v^h_j\\big) W_O^h,\\quad x \\leftarrow x + \\sum_h o^h

and a linear readout ``ŷ_t = LN(x_t) · w`` (LN only with pre-LN). Attention variants (``ToyConfig.attn``):

* ``"softmax"``: ``A_{t,j} = exp(z_{t,j}) / Σ_{i≤t} exp(z_{t,i})``, ``z = c · q·k`` (``c = 1/√d_head`` unless
  ``scale`` is given);
* ``"softmax1"`` (softmax₁, StreamingLLM Eq. 2): ``A_{t,j} = exp(z_{t,j}) / (1 + Σ_i exp(z_{t,i}))``, i.e. an
  implicit extra key with ``z = 0`` and an all-zero value (``mechanism-spec.md`` §2.1); rows sum to ≤ 1;
* ``"sigmoid"``: ``A_{t,j} = σ(z_{t,j} + b)`` with no normalisation (Gu et al. §7.4).

Sink-moving options (``mechanism-spec.md`` §2.1–2.4), each adding an extra key slot that queries can attend to:

* ``kv_bias=True``: a learnable key **and** value per head, concatenated to K and V (Sun et al. "attention bias");
* ``key_bias=True``: a learnable key per head with an all-zero value (Gu et al. Table 4, "K bias");
* ``sink_token=True``: a learnable input token prepended before BOS that goes through every layer
  (StreamingLLM "learnable sink");
* ``gate="headwise" | "elementwise"``: a query-dependent sigmoid gate ``g_t = σ(h_t W_g + b_g)`` on each head's
  attention output before ``W_O`` (Qiu et al., position G1; one scalar per head, or one per head dimension).

Internals returned by :meth:`TinyTransformer.forward` (with ``return_internals=True``) always use the ``T`` real
positions; attention on extra slots is reported separately in ``extra`` so shapes match the tokens.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

import torch
from torch import nn
from torch.nn import functional as F

from .._softmax1 import softmax1  # the one definition, shared with lessons.handmade (numpy)
from ..errors import SinkwidgetsValueError
from .task import MIN_T, Batch

ATTN_OPTIONS = ("softmax", "softmax1", "sigmoid")
POS_OPTIONS = ("none", "learned")
GATE_OPTIONS = (None, "headwise", "elementwise")
SCHEDULE_OPTIONS = ("constant", "cosine", "wsd")


def _bad(name: str, value, allowed) -> SinkwidgetsValueError:
    return SinkwidgetsValueError(f"{name}={value!r} is not a valid option; allowed: "
                                 f"{', '.join(repr(a) for a in allowed)}")


def _pos_int(name: str, value, minimum: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise SinkwidgetsValueError(f"{name}={value!r} is invalid: it must be an integer >= {minimum}")


@dataclass
class ToyConfig:
    """Every option of the toy problem: task, model and training (all recorded with each run).

    Parameters
    ----------
    T : int
        Sequence length including BOS (>= 4). Default 16.
    d_model : int
        Residual width ``d``. Default 32.
    n_heads : int
        Heads per layer (``d_model`` must be divisible by it). Default 1.
    n_layers : int
        Attention layers (>= 2: layer 1 catches and tags, layer 2 releases). Default 2.
    ln : bool
        Pre-LayerNorm (no affine) before each attention block and the readout. Default False.
    pos : {"none", "learned"}
        Positional encoding. ``"none"``: the causal mask alone (default); ``"learned"``: absolute embeddings.
    attn : {"softmax", "softmax1", "sigmoid"}
        Attention normalisation, see the module docstring. Default ``"softmax"``.
    kv_bias, key_bias, sink_token : bool
        Extra learnable sink slots, see the module docstring (``kv_bias`` and ``key_bias`` are exclusive).
    gate : {None, "headwise", "elementwise"}
        Sigmoid output gate. Default None.
    scale : float or None
        Logit scale ``c`` in ``z = c·q·k``; None means ``1/√d_head``.
    sigmoid_bias : float
        Logit offset ``b`` of sigmoid attention. Default 0.
    init_std : float or None
        Std of the weight matrices; None means ``1/√d_model``. Embeddings ``E``, ``u`` (and the sink token) use
        std 1, learned positions std 0.1, bias slots std 0.02 (as Sun et al.).
    lr : float
        Peak Adam learning rate. Default 3e-3 (tuned on this task, see ``docs/toy.md``).
    schedule : {"constant", "cosine", "wsd"}
        Learning-rate schedule: constant; cosine decay to 0; or "warm-up, stable, decay" (default): constant,
        then linear decay to 0 over the last ``decay_frac`` of the updates.
    warmup : int
        Linear warm-up updates. Default 0.
    decay_frac : float
        Fraction of the updates in the final linear decay of ``"wsd"``. Default 0.2.
    batch_size : int
        Fresh training sequences per step. Default 256.
    weight_decay : float
        Decoupled weight decay (AdamW when > 0). Default 0.
    log_every : int
        Evaluate the emergence metrics every this many steps (and at step 0 and the last step). Default 25.
    eval_size : int
        Held-out sequences for the metrics. Default 512.
    eval_seed : int
        Seed of the held-out batch (the same for every training seed). Default 1234.
    """

    T: int = 16
    d_model: int = 32
    n_heads: int = 1
    n_layers: int = 2
    ln: bool = False
    pos: str = "none"
    attn: str = "softmax"
    kv_bias: bool = False
    key_bias: bool = False
    sink_token: bool = False
    gate: str | None = None
    scale: float | None = None
    sigmoid_bias: float = 0.0
    init_std: float | None = None
    lr: float = 3e-3
    schedule: str = "wsd"
    warmup: int = 0
    decay_frac: float = 0.2
    batch_size: int = 256
    weight_decay: float = 0.0
    log_every: int = 25
    eval_size: int = 512
    eval_seed: int = 1234

    def __post_init__(self) -> None:
        _pos_int("T", self.T, MIN_T)
        _pos_int("d_model", self.d_model)
        _pos_int("n_heads", self.n_heads)
        _pos_int("n_layers", self.n_layers, 2)
        _pos_int("batch_size", self.batch_size)
        _pos_int("log_every", self.log_every)
        _pos_int("eval_size", self.eval_size, 2)
        if self.d_model % self.n_heads:
            raise SinkwidgetsValueError(f"d_model={self.d_model} is not divisible by n_heads={self.n_heads}; pick "
                                        "n_heads that divides d_model (e.g. d_model=32, n_heads=2)")
        if self.attn not in ATTN_OPTIONS:
            raise _bad("attn", self.attn, ATTN_OPTIONS)
        if self.pos not in POS_OPTIONS:
            raise _bad("pos", self.pos, POS_OPTIONS)
        if self.gate not in GATE_OPTIONS:
            raise _bad("gate", self.gate, GATE_OPTIONS)
        if self.schedule not in SCHEDULE_OPTIONS:
            raise _bad("schedule", self.schedule, SCHEDULE_OPTIONS)
        _pos_int("warmup", self.warmup, 0)
        if not (isinstance(self.decay_frac, (int, float)) and 0 < self.decay_frac <= 1):
            raise SinkwidgetsValueError(f"decay_frac={self.decay_frac!r} is invalid: it must be a number in (0, 1]")
        if self.kv_bias and self.key_bias:
            raise SinkwidgetsValueError("kv_bias=True and key_bias=True are exclusive: choose one bias slot")
        if not (isinstance(self.lr, (int, float)) and self.lr > 0):
            raise SinkwidgetsValueError(f"lr={self.lr!r} is invalid: it must be a positive number")
        if self.scale is not None and not (isinstance(self.scale, (int, float)) and self.scale > 0):
            raise SinkwidgetsValueError(f"scale={self.scale!r} is invalid: use None (1/sqrt(d_head)) or a positive "
                                        "number")

    @property
    def d_head(self) -> int:
        return self.d_model // self.n_heads

    @property
    def logit_scale(self) -> float:
        return float(self.scale) if self.scale is not None else 1.0 / math.sqrt(self.d_head)

    @property
    def extra_slots(self) -> list[str]:
        """Names of the extra attention slots beside the ``T`` real keys, in the order of ``extra``."""
        names = []
        if self.sink_token:
            names.append("sink_token")
        if self.kv_bias:
            names.append("kv_bias")
        if self.key_bias:
            names.append("key_bias")
        if self.attn == "softmax1":
            names.append("null")
        return names

    def to_dict(self) -> dict:
        """Plain-JSON dict of every option."""
        return asdict(self)

    @classmethod
    def option_names(cls) -> list[str]:
        return [f.name for f in fields(cls)]


@dataclass
class ToyInternals:
    """Everything the metrics and the tracer need from one forward pass (real positions only).

    Attributes
    ----------
    pred : ``[B, T]`` predictions ``ŷ``.
    attn : list of ``[B, H, T, T]`` per layer: attention of real queries on real keys.
    extra : list of ``[B, H, T, E]`` per layer: attention of real queries on the ``E`` extra slots named in
        ``extra_names`` (``"null"`` = the implicit zero slot of softmax₁: ``1 − Σ`` of the row).
    head_out : list of ``[B, H, T, d]`` per layer: each head's contribution to the residual (after ``W_O``).
    resid : list of ``L + 1`` tensors ``[B, T, d]``: the residual stream before layer 1 and after each layer.
    gates : list of ``[B, H, T, 1 or d_head]`` per layer, or empty without a gate.
    """

    pred: torch.Tensor
    attn: list[torch.Tensor]
    extra: list[torch.Tensor]
    extra_names: list[str]
    head_out: list[torch.Tensor]
    resid: list[torch.Tensor]
    gates: list[torch.Tensor]


class ToyAttention(nn.Module):
    """One causal multi-head attention block with the options of :class:`ToyConfig` (no residual)."""

    def __init__(self, cfg: ToyConfig):
        super().__init__()
        d, H = cfg.d_model, cfg.n_heads
        self.cfg = cfg
        self.q = nn.Linear(d, d, bias=False)
        self.k = nn.Linear(d, d, bias=False)
        self.v = nn.Linear(d, d, bias=False)
        self.o = nn.Linear(d, d, bias=False)
        if cfg.kv_bias or cfg.key_bias:
            self.k_slot = nn.Parameter(torch.zeros(H, cfg.d_head))
            if cfg.kv_bias:
                self.v_slot = nn.Parameter(torch.zeros(H, cfg.d_head))
            else:
                self.register_buffer("v_slot", torch.zeros(H, cfg.d_head))
        if cfg.gate is not None:
            self.g = nn.Linear(d, H if cfg.gate == "headwise" else d, bias=True)

    def forward(self, h: torch.Tensor):
        """``h`` ``[B, N, d]`` (already normalised) → (head outputs ``[B, H, N, d]``, attention
        ``[B, H, N, n_slot + N]``, gate or None). Slot keys come first, then the ``N`` positions."""
        cfg = self.cfg
        B, N, _ = h.shape
        H, dh = cfg.n_heads, cfg.d_head
        q = self.q(h).view(B, N, H, dh).transpose(1, 2)
        k = self.k(h).view(B, N, H, dh).transpose(1, 2)
        v = self.v(h).view(B, N, H, dh).transpose(1, 2)
        c = cfg.logit_scale
        scores = torch.einsum("bhtk,bhsk->bhts", q, k) * c
        causal = torch.ones(N, N, dtype=torch.bool, device=h.device).tril()
        if hasattr(self, "k_slot"):
            s_slot = torch.einsum("bhtk,hk->bht", q, self.k_slot)[..., None] * c
            scores = torch.cat([s_slot, scores], dim=-1)
            v = torch.cat([self.v_slot[None, :, None, :].expand(B, H, 1, dh), v], dim=2)
            causal = torch.cat([torch.ones(N, 1, dtype=torch.bool, device=h.device), causal], dim=1)
        if cfg.attn == "sigmoid":
            A = torch.sigmoid(scores + cfg.sigmoid_bias) * causal
        else:
            scores = scores.masked_fill(~causal, float("-inf"))
            A = torch.softmax(scores, dim=-1) if cfg.attn == "softmax" else softmax1(scores, axis=-1)
        out = A @ v  # [B, H, N, dh]
        gate = None
        if cfg.gate is not None:
            gate = torch.sigmoid(self.g(h))  # [B, N, H] or [B, N, d]
            gate = gate.view(B, N, H, -1).transpose(1, 2)  # [B, H, N, 1 or dh]
            out = out * gate
        Wo = self.o.weight.t().reshape(H, dh, cfg.d_model)  # rows of W_O belonging to each head
        head_out = torch.einsum("bhnk,hkd->bhnd", out, Wo)
        return head_out, A, gate


class TinyTransformer(nn.Module):
    """Attention-only causal transformer for the averaging task (see the module docstring).

    Parameters
    ----------
    config : ToyConfig, optional
        All options; ``**options`` override fields of it (or build one from defaults).
    generator : torch.Generator, optional
        Source of the initial weights (for reproducible training); torch's global generator otherwise.

    Examples
    --------
    >>> model = TinyTransformer(ToyConfig(attn="softmax1"))
    >>> pred = model(batch.types, batch.values)             # [B, T]
    >>> internals = model(batch.types, batch.values, return_internals=True)
    """

    def __init__(self, config: ToyConfig | None = None, generator: torch.Generator | None = None, **options):
        super().__init__()
        if config is None:
            config = ToyConfig(**options)
        elif options:
            config = ToyConfig(**{**config.to_dict(), **options})
        cfg = self.config = config
        d = cfg.d_model
        self.embed = nn.Parameter(torch.zeros(3, d))  # E[BOS], E[SEP], E[NUM]
        self.value_dir = nn.Parameter(torch.zeros(d))  # u
        n_pos = cfg.T + int(cfg.sink_token)
        if cfg.pos == "learned":
            self.pos_embed = nn.Parameter(torch.zeros(n_pos, d))
        if cfg.sink_token:
            self.sink = nn.Parameter(torch.zeros(d))
        self.layers = nn.ModuleList(ToyAttention(cfg) for _ in range(cfg.n_layers))
        self.readout = nn.Parameter(torch.zeros(d))
        self.reset_parameters(generator)

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """Initialise every weight from ``generator`` (the std of each group is listed in :class:`ToyConfig`)."""
        cfg = self.config
        std = cfg.init_std if cfg.init_std is not None else cfg.d_model ** -0.5
        g = generator

        def normal(t, s):
            t.copy_(torch.randn(t.shape, generator=g) * s)

        normal(self.embed, 1.0)
        normal(self.value_dir, 1.0)
        if cfg.pos == "learned":
            normal(self.pos_embed, 0.1)
        if cfg.sink_token:
            normal(self.sink, 1.0)
        for layer in self.layers:
            for lin in (layer.q, layer.k, layer.v, layer.o):
                normal(lin.weight, std)
            if cfg.kv_bias or cfg.key_bias:
                normal(layer.k_slot, 0.02)
                if cfg.kv_bias:
                    normal(layer.v_slot, 0.02)
            if cfg.gate is not None:
                normal(layer.g.weight, std)
                layer.g.bias.zero_()
        normal(self.readout, cfg.d_model ** -0.5)

    def _norm(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, x.shape[-1:], eps=1e-5) if self.config.ln else x

    def forward(self, types: torch.Tensor | Batch, values: torch.Tensor | None = None, return_internals: bool = False):
        """Predict the running means.

        Parameters
        ----------
        types : LongTensor ``[B, T]`` (or a :class:`Batch`, then ``values`` is taken from it)
        values : FloatTensor ``[B, T]``
        return_internals : bool
            Return a :class:`ToyInternals` instead of the predictions ``[B, T]``.
        """
        if isinstance(types, Batch):
            types, values = types.types, types.values
        cfg = self.config
        B, T = types.shape
        if cfg.pos == "learned" and T > cfg.T:
            raise SinkwidgetsValueError(f"types: sequence length {T} exceeds the learned positions of this model "
                                        f"(T={cfg.T}); pass at most {cfg.T} positions, or train with a larger T")
        x = self.embed[types] + values[..., None] * self.value_dir
        off = int(cfg.sink_token)
        if cfg.sink_token:
            x = torch.cat([self.sink.expand(B, 1, -1), x], dim=1)
        if cfg.pos == "learned":
            x = x + self.pos_embed[: T + off]
        keep = return_internals
        attn, extra, head_out, resid, gates = [], [], [], [x[:, off:]], []
        n_slot = int(cfg.kv_bias or cfg.key_bias)
        for layer in self.layers:
            o, A, gate = layer(self._norm(x))
            x = x + o.sum(1)
            if keep:
                real = A[:, :, off:, n_slot + off:]
                ex = [A[:, :, off:, n_slot:n_slot + 1]] if cfg.sink_token else []
                if n_slot:
                    ex.append(A[:, :, off:, :1])
                if cfg.attn == "softmax1":
                    ex.append(1.0 - A[:, :, off:, :].sum(-1, keepdim=True))
                attn.append(real)
                extra.append(torch.cat(ex, dim=-1) if ex else real.new_zeros(*real.shape[:3], 0))
                head_out.append(o[:, :, off:])
                resid.append(x[:, off:])
                if gate is not None:
                    gates.append(gate[:, :, off:])
        pred = self._norm(x[:, off:]) @ self.readout
        if not keep:
            return pred
        return ToyInternals(pred, attn, extra, cfg.extra_slots, head_out, resid, gates)

    def n_params(self) -> int:
        """Number of trainable parameters."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    def extra_repr(self) -> str:
        c = self.config
        return (f"T={c.T}, d={c.d_model}, heads={c.n_heads}, layers={c.n_layers}, ln={c.ln}, pos={c.pos!r}, "
                f"attn={c.attn!r}, slots={c.extra_slots}, gate={c.gate!r}")
