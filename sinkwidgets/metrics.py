"""Sink metrics on a :class:`~sinkwidgets.SinkTrace` or on plain numpy arrays (no torch needed).

Conventions: attention arrays are post-softmax with shape ``[..., T, T]`` (queries × keys); sink scores
``α`` have shape ``[L, H, T]``; positions are 0-based. Every function accepts either a SinkTrace or the
raw arrays named in its docstring. For a list of traces (e.g. 100 prompts), pass them one at a time and
average, as Gu et al. do.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from ._text import show_token
from .errors import SinkwidgetsTypeError, SinkwidgetsValueError
from .sinktrace import SinkTrace

__all__ = [
    "Sink",
    "Sinks",
    "SinksPerHead",
    "MassiveActivation",
    "sink_scores",
    "sink_head_mask",
    "sink_ratio",
    "find_sinks",
    "sinks_per_head",
    "first_token_mass",
    "attention_entropy",
    "massive_activations",
    "DEFAULT_MIN_QUERIES",
]

#: Keys near the end of a prompt are seen by very few queries (the last key by exactly one), so their α is
#: a noisy mean over 1–3 rows and is trivially large. ``find_sinks`` ignores keys with fewer queries.
DEFAULT_MIN_QUERIES = 8


# ----------------------------------------------------------------------------- helpers
def _alpha(x: SinkTrace | np.ndarray) -> np.ndarray:
    if isinstance(x, SinkTrace):
        return x.sink_scores
    a = np.asarray(x, dtype=np.float32)
    if a.ndim != 3:
        raise SinkwidgetsValueError("trace: expected a SinkTrace or sink scores of shape [L, H, T], got an array of "
                                    f"shape {list(a.shape)}; pass sinkwidgets.trace(model, text) or its .sink_scores")
    return a


def _attn(attn: np.ndarray) -> np.ndarray:
    a = np.asarray(attn, dtype=np.float64)
    if a.ndim < 2 or a.shape[-1] != a.shape[-2]:
        raise SinkwidgetsValueError(f"attention must have shape [..., T, T] (queries × keys), got {list(a.shape)}; "
                                    "pass square attention maps, e.g. the output_attentions of one layer [B, H, T, T]")
    return a


def _check_eps(eps: float) -> float:
    if not (0.0 <= float(eps) < 1.0):
        raise SinkwidgetsValueError(f"eps={eps!r}: eps must be in [0, 1) (a fraction of attention); Gu et al. use 0.3, "
                                    "Zhang et al. 0.2")
    return float(eps)


def _check_key(k: int, T: int) -> int:
    if not (-T <= int(k) < T):
        raise SinkwidgetsValueError(f"key position k={k} is outside the prompt (T={T} tokens); pass k in 0..{T - 1} "
                                    "(or a negative index from the end)")
    return int(k) % T


# ----------------------------------------------------------------------------- α
def sink_scores(attn: np.ndarray, causal: bool = True) -> np.ndarray:
    r"""Per-key sink score α (Gu et al. 2025, "When Attention Sink Emerges", §3.2).

    .. math:: \alpha_k^{l,h} = \frac{1}{T-k}\sum_{t=k}^{T-1} A^{l,h}_{t,k}   \quad(\text{0-based, causal})

    the mean attention key ``k`` receives from the queries that can see it. For bidirectional
    (encoder) attention every query sees every key, so the mean runs over all ``T`` queries.

    Parameters
    ----------
    attn : array ``[..., T, T]``
        Post-softmax attention (queries × keys), e.g. ``[L, H, T, T]``.
    causal : bool
        Causal (decoder) attention: average over queries ``t >= k`` only.

    Returns
    -------
    array ``[..., T]`` (float32)
    """
    a = _attn(attn)
    T = a.shape[-1]
    if causal:
        counts = T - np.arange(T)
        tri = np.tril(np.ones((T, T), dtype=bool))  # query t can see key k iff k <= t
        total = np.where(tri, a, 0.0).sum(-2)
    else:
        counts = np.full(T, T)
        total = a.sum(-2)
    return (total / counts).astype(np.float32)


def sink_head_mask(trace: SinkTrace | np.ndarray, k: int = 0, eps: float = 0.3) -> np.ndarray:
    r"""Which heads treat key ``k`` as a sink: ``α_k^{l,h} > ε`` → bool ``[L, H]`` (Gu et al. §3.2).

    ``trace`` is a SinkTrace or α ``[L, H, T]``. (Named ``sink_heads`` before; that name now belongs to
    :func:`sinkwidgets.tags.sink_heads`, which selects heads over a corpus and returns a record.)
    """
    a = _alpha(trace)
    k = _check_key(k, a.shape[-1])
    return a[:, :, k] > _check_eps(eps)


def sink_heads(trace: SinkTrace | np.ndarray, k: int = 0, eps: float = 0.3) -> np.ndarray:
    """Deprecated name of :func:`sink_head_mask` (same arguments, same ``[L, H]`` bool array), with a DeprecationWarning."""
    import warnings

    warnings.warn("sinkwidgets.sink_heads is renamed sink_head_mask (a bool [L, H] array); "
                  "sinkwidgets.tags.sink_heads is the corpus-level head selection. Use sink_head_mask(trace, k, eps).",
                  DeprecationWarning, stacklevel=2)
    return sink_head_mask(trace, k, eps)


def sink_ratio(trace: SinkTrace | np.ndarray, k: int = 0, eps: float = 0.3) -> float:
    r"""Gu et al.'s :math:`\mathrm{Sink}_k^{\varepsilon}`: the fraction of heads whose α of key ``k`` exceeds ε.

    .. math:: \mathrm{Sink}_k^\varepsilon = \frac{1}{L}\sum_l \frac{1}{H}\sum_h \mathbb 1(\alpha_k^{l,h} > \varepsilon)

    It is a fraction of heads, not an attention mass. Gu et al. use ε = 0.3 and T = 64 ("When Attention
    Sink Emerges", §3.2, Table 1).
    """
    return float(sink_head_mask(trace, k, eps).mean())


@dataclass(frozen=True)
class Sink:
    """One sink: head ``(layer, head)`` puts mean attention ``alpha`` on key ``k`` (token ``token``)."""

    layer: int
    head: int
    k: int
    alpha: float
    token: str = ""
    n_queries: int = 0

    @property
    def prompt_dependent(self) -> bool:
        """Sinks after the first token depend on the prompt (punctuation, boundaries): Zhang et al."""
        return self.k > 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Sinks(list):
    """What :func:`find_sinks` returns: a ``list`` of :class:`Sink` records, strongest first, that prints short.

    Everything a list does works unchanged (``len``, indexing, slicing, ``==``, iteration, ``sorted``). On top:

    - ``repr`` is one line: how many sinks, in how many heads and layers, and the strongest keys with the number
      of heads that sink on each and the largest α, e.g.
      ``Sinks(114 sinks in 98 heads of 30 layers, eps=0.2; top keys: 'The'@0 in 86 heads (α ≤ 0.97), ...)``;
    - ``_repr_html_`` is a table (at most :attr:`HTML_ROWS` rows) in notebooks, token text HTML-escaped and its
      whitespace made visible (``␣``, ``⏎``: :func:`sinkwidgets._text.show_token`);
    - :meth:`to_records` gives plain dicts and :meth:`to_frame` a pandas DataFrame.

    ``n_layers``, ``n_heads`` (the shape of the α searched, ``[L, H, T]``) and ``eps`` are kept for the summary.
    """

    #: Rows of the HTML table before it says how many more there are.
    HTML_ROWS = 50
    #: Keys named in the one-line repr.
    REPR_KEYS = 3

    def __init__(self, sinks=(), *, n_layers: int | None = None, n_heads: int | None = None,
                 eps: float | None = None):
        super().__init__(sinks)
        self.n_layers, self.n_heads, self.eps = n_layers, n_heads, eps

    def _keys(self) -> list[tuple[int, str, int, float]]:
        """``(k, token, number of heads, largest α)`` per key, strongest key first."""
        keys: dict[int, list] = {}
        for s in self:
            row = keys.setdefault(s.k, [s.k, s.token, 0, -1.0])
            row[2] += 1
            row[3] = max(row[3], s.alpha)
        return [tuple(r) for r in sorted(keys.values(), key=lambda r: (-r[3], r[0]))]

    def _where(self) -> str:
        heads = len({(s.layer, s.head) for s in self})
        layers = len({s.layer for s in self})
        of = f" of {self.n_layers}" if self.n_layers is not None else ""
        return f"in {heads} head{'s' if heads != 1 else ''}, {layers}{of} layer{'s' if (self.n_layers or layers) != 1 else ''}"

    def __repr__(self) -> str:
        eps = f", eps={self.eps:g}" if self.eps is not None else ""
        if not self:
            return f"Sinks(no sinks{eps})"
        keys = self._keys()
        tops = ", ".join(f"{show_token(tok)!r}@{k} in {n} head{'s' if n != 1 else ''} (\u03b1 \u2264 {a:.2f})"
                         for k, tok, n, a in keys[: self.REPR_KEYS])
        more = f", +{len(keys) - self.REPR_KEYS} more keys" if len(keys) > self.REPR_KEYS else ""
        return f"Sinks({len(self)} sink{'s' if len(self) != 1 else ''} {self._where()}{eps}; top keys: {tops}{more})"

    __str__ = __repr__

    def to_records(self) -> list[dict[str, Any]]:
        """One dict per sink: ``layer, head, k, token, alpha, n_queries``."""
        return [{"layer": s.layer, "head": s.head, "k": s.k, "token": s.token, "alpha": s.alpha,
                 "n_queries": s.n_queries} for s in self]

    def to_frame(self):
        """A pandas DataFrame with the columns of :meth:`to_records` (pandas is needed only here)."""
        try:
            import pandas as pd
        except ImportError:
            raise ImportError("Sinks.to_frame() needs pandas (pip install pandas); Sinks.to_records() gives the "
                              "same rows as plain dicts") from None
        return pd.DataFrame(self.to_records(), columns=["layer", "head", "k", "token", "alpha", "n_queries"])

    def _repr_html_(self) -> str:
        import html

        esc = html.escape
        rows = "".join(
            f"<tr><td>{s.layer}</td><td>{s.head}</td><td>{s.k}</td><td><code>{esc(show_token(s.token))}</code></td>"
            f"<td>{s.alpha:.3f}</td><td>{s.n_queries}</td></tr>"
            for s in self[: self.HTML_ROWS]
        )
        if len(self) > self.HTML_ROWS:
            rows += f"<tr><td colspan='6'>… {len(self) - self.HTML_ROWS} more (strongest first; .to_frame() has all)</td></tr>"
        eps = f" (\u03b1 &gt; {self.eps:g})" if self.eps is not None else ""
        head = f"<b>{len(self)} sink{'s' if len(self) != 1 else ''}</b>{eps} {esc(self._where())}" if self else f"no sinks{eps}"
        return ("<div class='sinkwidgets-sinks'><div>" + head + "</div>"
                + ("<table><thead><tr><th>layer</th><th>head</th><th>k</th><th>token</th><th>\u03b1</th>"
                   "<th>queries</th></tr></thead><tbody>" + rows + "</tbody></table>" if self else "") + "</div>")


def _query_counts(trace: SinkTrace | np.ndarray, T: int, causal: bool | None) -> np.ndarray:
    if causal is None:
        causal = trace.causal if isinstance(trace, SinkTrace) else True
    return (T - np.arange(T)) if causal else np.full(T, T)


def find_sinks(
    trace: SinkTrace | np.ndarray,
    eps: float = 0.2,
    exclude_first: bool = False,
    min_queries: int = DEFAULT_MIN_QUERIES,
    causal: bool | None = None,
) -> Sinks:
    r"""All (layer, head, key) with α > ε: the sinks of a prompt (Zhang et al. 2025 use ε = 0.2, §K).

    ``k = 0`` is the prompt-independent first-token sink; ``k > 0`` sinks are prompt-dependent
    (punctuation, sentence boundaries). Keys seen by fewer than ``min_queries`` queries are skipped: the last
    key's α is a single attention weight and the last few are means of 2–3 rows, which makes trivial
    end-of-prompt "sinks". (In a prompt shorter than ``min_queries`` tokens, only key 0 is kept.)

    Parameters
    ----------
    trace : SinkTrace or array ``[L, H, T]`` of α
    eps : float
        Threshold on α.
    exclude_first : bool
        Drop ``k = 0`` (keep only prompt-dependent sinks).
    min_queries : int
        Minimum number of queries a key needs to count.

    Returns
    -------
    :class:`Sinks`
        A list of :class:`Sink`, strongest first, with a one-line summary repr and a table view
        (``_repr_html_``, :meth:`Sinks.to_frame`).
    """
    a = _alpha(trace)
    eps = _check_eps(eps)
    if min_queries < 1:
        raise SinkwidgetsValueError(f"min_queries={min_queries!r}: min_queries must be >= 1 (the default is "
                                    f"{DEFAULT_MIN_QUERIES})")
    T = a.shape[-1]
    nq = _query_counts(trace, T, causal)
    valid = nq >= min(min_queries, int(nq[0]))
    if exclude_first:
        valid[0] = False
    tokens = trace.tokens if isinstance(trace, SinkTrace) else None
    ls, hs, ks = np.nonzero((a > eps) & valid[None, None, :])
    out = [
        Sink(int(l), int(h), int(k), float(a[l, h, k]), tokens[k] if tokens else "", int(nq[k]))
        for l, h, k in zip(ls, hs, ks)
    ]
    out.sort(key=lambda s: -s.alpha)
    return Sinks(out, n_layers=int(a.shape[0]), n_heads=int(a.shape[1]), eps=eps)


@dataclass(frozen=True)
class SinksPerHead:
    """Number of sinks per head and its two averages (Zhang et al. report 1.125 vs 2.196, §5)."""

    counts: np.ndarray  #: int ``[L, H]``
    mean_all: float  #: mean over all heads
    mean_sink_heads: float  #: mean over heads with at least one sink (NaN if none)
    eps: float


def sinks_per_head(
    trace: SinkTrace | np.ndarray, eps: float = 0.2, min_queries: int = DEFAULT_MIN_QUERIES, causal: bool | None = None
) -> SinksPerHead:
    r"""Count :math:`n^{l,h} = |\{k : \alpha_k^{l,h} > \varepsilon\}|` per head, and average it over all heads
    and over sink heads only (the paper's average is ambiguous between the two; both are reported).
    Keys with fewer than ``min_queries`` queries are not counted (see :func:`find_sinks`)."""
    a = _alpha(trace)
    eps = _check_eps(eps)
    T = a.shape[-1]
    nq = _query_counts(trace, T, causal)
    valid = nq >= min(min_queries, int(nq[0]))
    counts = ((a > eps) & valid[None, None, :]).sum(-1).astype(np.int64)
    has = counts > 0
    return SinksPerHead(
        counts=counts,
        mean_all=float(counts.mean()),
        mean_sink_heads=float(counts[has].mean()) if has.any() else float("nan"),
        eps=eps,
    )


# ----------------------------------------------------------------------------- mass and entropy
def first_token_mass(trace: SinkTrace | np.ndarray, first: int = 0) -> np.ndarray:
    r"""Mean attention on the first real token over queries ``t >= 1`` → ``[L, H]`` (or ``[...]``).

    .. math:: m^{l,h} = \frac{1}{T-1}\sum_{t=1}^{T-1} A^{l,h}_{t,0}

    Query 0 is left out because it can only attend to itself. (StreamingLLM App. F reports the last query's
    mass; the mean over queries is less noisy.) On a SinkTrace, returns the value computed during tracing.
    ``first`` is the position of the first real token in a raw (e.g. left-padded) attention array.
    """
    if isinstance(trace, SinkTrace):
        return trace.first_token_mass
    a = _attn(trace)[..., first:, first:]
    if a.shape[-1] < 2:
        raise SinkwidgetsValueError(f"trace: first-token mass needs at least 2 tokens after first={first}, got "
                                    f"{a.shape[-1]}; pass a longer prompt (or a smaller first)")
    return a[..., 1:, 0].mean(-1).astype(np.float32)


def attention_entropy(trace: SinkTrace | np.ndarray) -> np.ndarray:
    r"""Mean attention entropy per head (nats) → ``[L, H]`` (Clark et al. 2019, §3.3).

    .. math:: H^{l,h} = \frac{1}{T}\sum_t -\sum_j A^{l,h}_{t,j}\log A^{l,h}_{t,j}

    Low entropy = focused heads (a sink head is near 0); ``log(t+1)`` is the maximum for causal row ``t``.
    """
    if isinstance(trace, SinkTrace):
        return trace.entropy
    a = _attn(trace)
    with np.errstate(divide="ignore", invalid="ignore"):
        ent = -np.where(a > 0, a * np.log(a), 0.0).sum(-1)
    return ent.mean(-1).astype(np.float32)


# ----------------------------------------------------------------------------- massive activations
@dataclass(frozen=True)
class MassiveActivation:
    """A residual-stream activation that is huge in absolute terms and relative to its layer's median."""

    layer: int
    token: int
    channel: int
    value: float
    ratio: float  #: |value| / median |h| of the layer
    token_str: str = ""


def massive_activations(trace: SinkTrace, abs_thr: float = 100.0, ratio: float = 1000.0) -> list[MassiveActivation]:
    r"""Massive activations (Sun et al. 2024, "Massive Activations in LLMs", §2.2).

    An activation :math:`h` of a layer's output qualifies when :math:`|h| > \text{abs\_thr}` (100) and
    :math:`|h| \ge \text{ratio} \times \operatorname{median}|h|` (1000×) of that layer's hidden state.
    Uses the per-layer top activations recorded during tracing (``top_activations [L, K]``).
    """
    if not isinstance(trace, SinkTrace):
        raise SinkwidgetsTypeError(f"trace: massive_activations needs a SinkTrace (got {type(trace).__name__}); trace "
                                   "a model first with sinkwidgets.trace(model, text)")
    if trace.top_activations is None or trace.median_abs_activation is None:
        raise SinkwidgetsValueError("this trace has no top activations recorded; trace it with sinkwidgets.trace()")
    out = []
    for l in range(trace.top_activations.shape[0]):
        med = float(trace.median_abs_activation[l])
        for j in range(trace.top_activations.shape[1]):
            v = float(trace.top_activations[l, j])
            r = abs(v) / med if med > 0 else float("inf")
            if abs(v) > abs_thr and r >= ratio:
                t = int(trace.top_act_tokens[l, j])
                out.append(MassiveActivation(l, t, int(trace.top_act_channels[l, j]), v, r, trace.tokens[t]))
    return out
