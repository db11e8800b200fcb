"""What TagExplorer shows, computed from a :class:`~sinkwidgets.tags.TagData` (numpy only: no anywidget, no torch).

Shared by the live widget (``_tag_widget``) and its offline HTML file. Every number beside the picture comes from
:func:`sinkwidgets.tags.tag_ev`; catching comes from :func:`~sinkwidgets.tags.sink_positions` and
:func:`~sinkwidgets.tags.caught_set`. The payload is binary (see the constants below): float32 coordinates, small
integer codes for colours and tokens, each token string sent once.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import threading
from collections import OrderedDict
from typing import Any

import numpy as np

from .._args import head as check_head
from .._text import show_token
from ..errors import SinkwidgetsError, SinkwidgetsTypeError, SinkwidgetsValueError
from ..sinktrace import SinkTrace
from ..tags import analysis as A
from ..tags.data import TagData
from . import _assets
from . import _serialization as ser

# ----------------------------------------------------------------------------- tuning constants
#: Projections of the scatter: the head's tag subspace (``tag_ev(...).subspace``) or the top-2 principal components.
PROJECTIONS = ("tag", "pca")
#: What is projected: the head's outputs after W_O, or the residual stream after the head's layer (needs a model).
SOURCES = ("output", "residual")
#: Colourings: the sink that caught the token at τ, a label, the position in the prompt.
COLOR_MODES = ("catch", "label", "position")
#: Largest tag rank offered (the pilot's tags are 1-2 dimensional; 8 keeps tag_ev fast).
MAX_RANK = 8
#: Catch colours: "not caught", the first token, and the most frequent other sink tokens; the rest share one colour
#: ("other sink"). 8 categorical colours is about what a reader tells apart (Okabe-Ito palette in the JS).
MAX_CATCH_COLORS = 8
#: Labels are categorical; more distinct values than this are refused (bin them first).
MAX_LABELS = 12
#: Across-layers panel: prompts of the selected tokens run through the model at most (the first ones are kept).
MAX_LAYER_PROMPTS = 64
#: Per-token tag coordinates of this many prompts are cached in the kernel (``[Ls, T, rank]`` each, small).
LAYER_CACHE_PROMPTS = 512
#: First-payload budget the tests hold TagExplorer to: bytes per point (float32 x, y = 8; uint16 token code = 2;
#: catch code, catching position and its weight = 4; label code = 1) plus a fixed allowance for the token strings,
#: the JSON specs and the widget's own JS and CSS (``_esm`` + ``_css``: about 75 KB since the release panel; the
#: allowance went from 300,000 to 315,000 with it). 20,000 points fit in about 0.5 MB.
BYTES_PER_POINT_BUDGET = 16
PAYLOAD_FIXED_BUDGET = 315_000

_INT_DTYPES = {"uint8": "u1", "uint16": "<u2", "int16": "<i2", "int32": "<i4", "uint32": "<u4"}


# ----------------------------------------------------------------------------- integer buffers
def packed_int(array: np.ndarray, dtype: str) -> dict[str, Any]:
    """An integer array as ``{"dtype", "shape", "data": bytes}`` (little-endian), mirrored by ``decodeInts`` in
    ``static/sinkwidgets.js`` (shared by both widgets). Values outside the dtype's range are an error, never wrapped."""
    if dtype not in _INT_DTYPES:
        raise SinkwidgetsValueError(f"dtype must be one of {sorted(_INT_DTYPES)}, got {dtype!r}")
    a = np.asarray(array)
    info = np.iinfo(np.dtype(_INT_DTYPES[dtype]))
    if a.size and (a.min() < info.min or a.max() > info.max):
        raise SinkwidgetsValueError(f"values {a.min()}..{a.max()} do not fit in {dtype} ({info.min}..{info.max})")
    return {"dtype": dtype, "shape": [int(s) for s in a.shape],
            "data": np.ascontiguousarray(a, dtype=_INT_DTYPES[dtype]).tobytes()}


def decode_int(p: dict[str, Any]) -> np.ndarray:
    """Python mirror of ``decodeInts``."""
    raw = np.frombuffer(bytes(p["data"]), dtype=_INT_DTYPES[p["dtype"]])
    return raw.reshape(tuple(p["shape"]))


def token_table(data: TagData) -> tuple[list[str], dict[str, Any]]:
    """Each distinct token string once, and one code per packed token (uint16 while the table is small)."""
    flat = [t for toks in data.tokens for t in toks]
    vocab: dict[str, int] = {}
    codes = np.fromiter((vocab.setdefault(t, len(vocab)) for t in flat), dtype=np.int64, count=len(flat))
    dtype = "uint16" if len(vocab) <= 65535 else "uint32"
    return list(vocab), packed_int(codes, dtype)


def shown(token: str) -> str:
    """A token as shown in a legend: whitespace made visible (:func:`sinkwidgets._text.show_token`, mirrored by the
    JS ``showToken``)."""
    return show_token(token)


_BLAS_LOCAL = threading.local()


@contextlib.contextmanager
def blas_one_thread():
    """A context in which numpy's BLAS uses one thread (``threadpoolctl`` when installed, else nothing).

    TagExplorer's SVDs, eigendecompositions and covariances are small enough that one core does them in well under a
    second. With several BLAS threads they can be far slower: a 576 x 576 ``eigh`` took 6.3 s instead of 0.05 s right
    after ``sw.tags.collect`` in the same process (torch's threads still hold the cores), and one run of issue 22
    took 37 s with a busy neighbour. Nested uses set the limit once and the outermost restores the user's setting.
    Use it on the main thread: OpenBLAS 0.3.31 ignores ``openblas_set_num_threads`` from other threads (measured),
    which is why TagExplorer defers its numbers on the kernel's event loop, not in a thread."""
    depth = getattr(_BLAS_LOCAL, "depth", 0)
    limiter = None
    if depth == 0:
        try:
            from threadpoolctl import threadpool_limits
        except ImportError:  # optional: without it the BLAS keeps its own setting
            pass
        else:
            limiter = threadpool_limits(limits=1, user_api="blas")
    _BLAS_LOCAL.depth = depth + 1
    try:
        yield
    finally:
        _BLAS_LOCAL.depth = depth
        if limiter is not None:
            limiter.restore_original_limits()


class FiniteRows(TagData):
    """A :class:`TagData` as the analyses see it when some rows of one head are not finite.

    TagExplorer's non-finite policy (docs/tags.md, "Non-finite data"): a token whose output ``o_t`` or value
    ``g_t`` of the head holds a NaN or an infinity (an fp16 overflow on a GPU is enough) is **left out** of every
    fit and projection and counted. Here its output and value rows read as zeros (a zero row changes neither an
    uncentred SVD nor a Gram matrix), its α reads 0 (it is never a sink) and its position reads -1 (it is never a
    token ``t >= 1`` of the evaluation), so :func:`sinkwidgets.tags.tag_ev` and
    :func:`sinkwidgets.tags.tag_vectors` run unchanged on the finite rows. Every other attribute is the TagData's.

    ``bad`` is the boolean mask ``[n_tok]`` of the rows left out. A TagData itself (the same fields, shared
    arrays), so the analyses' TagData checks accept it.
    """

    def __init__(self, data: TagData, head: tuple[int, int], bad: np.ndarray) -> None:
        super().__init__(**{f.name: getattr(data, f.name) for f in dataclasses.fields(TagData)})
        self._data, self._head, self.bad = data, head, bad
        self._o = np.array(data.outputs(head))
        self._o[bad] = 0
        self._v = np.array(data.values(head))
        self._v[bad] = 0
        self._a = np.array(data.alpha(head))
        self._a[bad] = 0
        self._pos = np.array(data.positions)
        self._pos[bad] = -1

    def _mine(self, head: Any) -> bool:
        return (int(head[0]), int(head[1])) == self._head

    def outputs(self, head: Any) -> np.ndarray:
        return self._o if self._mine(head) else self._data.outputs(head)

    def values(self, head: Any) -> np.ndarray:
        return self._v if self._mine(head) else self._data.values(head)

    def alpha(self, head: Any) -> np.ndarray:
        return self._a if self._mine(head) else self._data.alpha(head)

    @property
    def positions(self) -> np.ndarray:
        return self._pos


def nonfinite_note(bad: np.ndarray, data: TagData, head: tuple[int, int]) -> str:
    """``"3 tokens of L2H2 left out (non-finite output or value): prompt 4 pos 7, ..."`` (first 5 named)."""
    idx = np.nonzero(bad)[0]
    if not len(idx):
        return ""
    named = ", ".join(f"prompt {int(data.prompt_of[j])} pos {int(data.positions[j])}" for j in idx[:5])
    more = f" and {len(idx) - 5} more" if len(idx) > 5 else ""
    return (f"{len(idx)} token{'s' if len(idx) != 1 else ''} of L{head[0]}H{head[1]} left out of the fits and the "
            f"picture (non-finite output or value): {named}{more}")


def as_tagdata(data: Any, who: str = "TagExplorer") -> TagData:
    if isinstance(data, TagData):
        return data
    if isinstance(data, (str, os.PathLike)):
        return TagData.load(data)
    raise SinkwidgetsTypeError(f"{who} needs a TagData (from sinkwidgets.tags.collect(model, texts, heads=[...])) or the path of "
                    f"a saved one (TagData.save), got {type(data).__name__}")


def label_codes(data: TagData, labels: Any) -> tuple[np.ndarray, list[str]] | None:
    """Per-token label codes ``[n_tok]`` and their names, from ``labels`` (per prompt ``[N]`` or per token
    ``[n_tok]``) or, when None, from ``data.labels``."""
    if labels is None:
        labels = data.labels
        if labels is None:
            return None
    if isinstance(labels, (str, bytes, dict)) or not isinstance(labels, (list, tuple, range, np.ndarray)):
        raise SinkwidgetsTypeError(f"labels={labels!r:.60} ({type(labels).__name__}): give one label per prompt or per "
                                   "token as a list or 1-D array, e.g. labels=['city', 'river', ...]")
    vals = list(labels.tolist() if isinstance(labels, np.ndarray) else labels)
    N, n = data.n_prompts, data.n_tokens
    if len(vals) not in (N, n):
        raise SinkwidgetsValueError(f"labels has {len(vals)} entries; give one per prompt ({N}) or one per token ({n})")
    names = sorted({str(v) for v in vals}, key=lambda s: (len(s), s))
    if len(names) > MAX_LABELS:
        raise SinkwidgetsValueError(f"labels has {len(names)} distinct values; TagExplorer colours at most {MAX_LABELS} "
                         "categories: bin them first (e.g. labels=[v > 0 for v in values])")
    index = {s: i for i, s in enumerate(names)}
    codes = np.array([index[str(v)] for v in vals], dtype=np.uint8)
    if len(vals) == N and N != n:  # per prompt (when N == n, per prompt and per token agree)
        codes = np.repeat(codes, data.lengths)
    return codes, names


def prompt_trace(data: TagData, i: int) -> SinkTrace:
    """Prompt ``i`` of a TagData as a :class:`SinkTrace` (α of every head, first-token mass, the kept maps), so a
    :class:`~sinkwidgets.SinkExplorer` can show it (see :func:`sinkwidgets.link`)."""
    if data.sink_scores is None:
        raise SinkwidgetsValueError("this TagData has no sink_scores (α of every head), so SinkExplorer cannot show a prompt of "
                         "it; collect with summary=True")
    sl = data.span(i)
    maps = map_index = None
    if data.maps is not None and data.map_index is not None and len(data.map_index):
        map_index = np.asarray(data.map_index, np.int32)
        maps = np.stack([data.attention_map(tuple(lh), i) for lh in map_index.tolist()]).astype(np.float16)
    meta = {"model": data.meta.get("model", "unknown"), "add_bos": data.meta.get("add_bos"), "prompt": int(i),
            "source": "TagData"}
    for k in ("model_name", "causal", "hub_id", "n_layers", "n_heads", "d_model"):
        if k in data.meta:
            meta[k] = data.meta[k]
    return SinkTrace(sink_scores=data.sink_scores[:, :, sl], tokens=list(data.tokens[i]),
                     first_token_mass=None if data.first_token_mass is None else data.first_token_mass[i],
                     token_ids=None if data.token_ids is None else data.token_ids[sl], maps=maps, map_index=map_index,
                     meta=meta)


def model_facts(meta: dict | None, info: Any = None, shape: tuple[int, int] | None = None) -> dict[str, Any]:
    """What identifies a model, from a trace's or TagData's ``meta``, a ``model.sinkwidgets`` record (``info``) and
    an α shape ``(L, H)``: name, hub id, layers, heads, width (keys missing when unknown)."""
    out: dict[str, Any] = {}
    meta = dict(meta or {})
    if info is not None:
        meta = {"model": getattr(info, "name", None), "hub_id": getattr(info, "hub_id", None),
                "n_layers": getattr(info, "n_layers", None), "n_heads": getattr(info, "n_heads", None),
                "d_model": getattr(info, "d_model", None)}
    name = meta.get("model")
    if name and name != "unknown":
        out["model"] = str(name)
    for k in ("hub_id", "n_layers", "n_heads", "d_model"):
        if meta.get(k) is not None:
            out[k] = meta[k] if k == "hub_id" else int(meta[k])
    if shape is not None:
        out.setdefault("n_layers", int(shape[0]))
        out.setdefault("n_heads", int(shape[1]))
    return out


def describe_model(f: dict[str, Any]) -> str:
    """``'smollm2-135m' (30 layers x 9 heads, d = 576)``, from :func:`model_facts`."""
    name = repr(f.get("model") or f.get("hub_id") or "an unnamed model")
    dims = [f"{f['n_layers']} layers x {f['n_heads']} heads" if "n_layers" in f and "n_heads" in f else "",
            f"d = {f['d_model']}" if "d_model" in f else ""]
    dims = ", ".join(x for x in dims if x)
    return f"{name} ({dims})" if dims else name


def model_mismatch(a: dict[str, Any], b: dict[str, Any]) -> str | None:
    """Which fact differs between two :func:`model_facts` (hub ids, else names; layers, heads, width), or None
    when nothing known differs."""
    if a.get("hub_id") and b.get("hub_id"):
        if a["hub_id"] != b["hub_id"]:
            return "hub id"
    elif (a.get("model") and b.get("model") and a["model"] != b["model"]
          and not any(c in a["model"] + b["model"] for c in "/\\")):  # a local path may name a registry model
        return "model name"
    for k, what in (("n_layers", "number of layers"), ("n_heads", "number of heads"), ("d_model", "width")):
        if k in a and k in b and a[k] != b[k]:
            return what
    return None


# ----------------------------------------------------------------------------- the view model
class TagView:
    """Cached numpy computations behind TagExplorer for one TagData (coordinates, colours, numbers, layer series).

    ``residual_rows(layer)`` and ``layer_coords(head, basis, layers, prompts)`` are callables supplied by the widget
    when it has a model (they run the model); without them the residual source and per-token layer series are
    unavailable and say so.
    """

    def __init__(self, data: TagData, labels: Any = None, *, eps: float = A.EPS, n_random: int = 10, seed: int = 0):
        self.data = data
        self.eps = float(eps)
        self.n_random = int(n_random)
        self.seed = int(seed)
        if data.head_outputs is None or data.head_values is None or not len(data.heads):
            raise SinkwidgetsValueError("TagExplorer needs per-head outputs and values: collect with heads=[(layer, head), ...] "
                             "(outputs=True and values=True, the defaults)")
        if data.sink_scores is None:
            raise SinkwidgetsValueError("TagExplorer needs α of every head (sink_scores) to find the sinks: collect with "
                             "summary=True (the default)")
        self.heads = [(int(a), int(b)) for a, b in data.heads.tolist()]
        self.labels = label_codes(data, labels)
        self.positions = data.positions
        self.prompt_of = data.prompt_of
        self._ev: dict[tuple, A.TagEV] = {}
        self._lock = threading.RLock()  # cheap insurance: the view model may be used from a callback
        self._bad: dict[tuple, np.ndarray] = {}
        self._clean: dict[tuple, Any] = {}
        self._sub: dict[tuple, np.ndarray] = {}
        self._cov: dict[tuple, tuple[np.ndarray, int]] = {}
        self._coords: OrderedDict[tuple, tuple[np.ndarray, dict]] = OrderedDict()
        self._catch: dict[tuple, dict] = {}
        self._resid: dict[int, np.ndarray] = {}
        self.residual_rows = None  # set by the widget when it has a model
        self.layer_coords = None

    # ---------------------------------------------------------------- checks
    def check_head(self, head: Any) -> tuple[int, int]:
        try:  # a pair of ints (numpy ints too) or "L2H2"; floats, bools and negative indices are refused
            lh = check_head("head", head)
        except SinkwidgetsError:
            raise SinkwidgetsValueError(f"head must be a (layer, head) pair such as {self.heads[0]} or "
                                        f"'L{self.heads[0][0]}H{self.heads[0][1]}', got {head!r:.60}") from None
        if lh not in self.heads:
            have = ", ".join(f"({a}, {b})" for a, b in self.heads)
            raise SinkwidgetsValueError(f"head {lh} was not collected; this TagData has heads {have} (collect again with "
                             f"heads=[{lh}, ...] to explore it)")
        return lh

    def max_rank(self) -> int:
        return min(MAX_RANK, int(self.data.d_model or 1))

    def has_maps(self, head: tuple[int, int]) -> bool:
        return self.data.has_map(head)

    # ---------------------------------------------------------------- tag EV (numbers beside the picture)
    def nonfinite(self, head: tuple[int, int]) -> np.ndarray:
        """Rows ``[n_tok]`` (bool) whose output or value of ``head`` is not finite: left out (see :class:`FiniteRows`)."""
        with self._lock:
            if head not in self._bad:
                O, V = self.data.outputs(head), self.data.values(head)
                self._bad[head] = ~(np.isfinite(O).all(1) & np.isfinite(V).all(1))
            return self._bad[head]

    def analysis_data(self, head: tuple[int, int]) -> Any:
        """The TagData itself, or a :class:`FiniteRows` view of it when some rows of ``head`` are not finite."""
        bad = self.nonfinite(head)
        if not bad.any():
            return self.data
        with self._lock:
            if head not in self._clean:
                self._clean[head] = FiniteRows(self.data, head, bad)
            return self._clean[head]

    def ev(self, head: tuple[int, int], rank: int) -> A.TagEV:
        key = (head, rank)
        with self._lock:
            if key not in self._ev:
                with blas_one_thread():
                    self._ev[key] = A.tag_ev(self.analysis_data(head), head, rank, eps=self.eps,
                                             n_random=self.n_random, seed=self.seed)
            return self._ev[key]

    def ev_ready(self, head: tuple[int, int], rank: int) -> bool:
        return (head, rank) in self._ev

    def subspace(self, head: tuple[int, int], rank: int) -> np.ndarray:
        """The tag subspace ``U [d, rank]`` that :func:`~sinkwidgets.tags.tag_ev` returns (fitted on the same fit
        prompts' sinks), without its controls: what the first view needs."""
        key = (head, rank)
        if key in self._ev:
            return self._ev[key].subspace
        if key not in self._sub:
            fit, _ = A.split_prompts(self.data.n_prompts, 0.5, self.seed)
            G, _ = A.tag_vectors(self.analysis_data(head), head, fit, eps=self.eps)
            if len(G) < rank:
                return self.ev(head, rank).subspace  # raises tag_ev's own message (too few sinks)
            with blas_one_thread():
                self._sub[key] = A.tag_subspace(G, rank)
        return self._sub[key]

    def numbers(self, head: tuple[int, int], rank: int, tau: float) -> dict[str, Any]:
        try:
            r = self.ev(head, rank)
        except ValueError as exc:  # e.g. fewer sinks than the rank: shown in the widget
            return {"ok": False, "error": str(exc), "head": list(head), "rank": rank}
        out = {"ok": True, "head": list(head), "rank": rank, **{k: _finite(v) for k, v in r.as_dict().items()
                                                                   if k != "head"}}
        cat = self.catch(head, tau)
        out["caught_share"] = None if cat is None else _finite(cat["caught_share"])
        bad = self.nonfinite(head)
        out["n_nonfinite"] = int(bad.sum())
        out["nonfinite_note"] = nonfinite_note(bad, self.data, head)
        out["tau"] = float(tau)
        out["eps"] = self.eps
        return out

    # ---------------------------------------------------------------- coordinates
    def source_rows(self, head: tuple[int, int], source: str) -> np.ndarray:
        if source == "output":
            return self.data.outputs(head)
        if self.residual_rows is None:
            raise SinkwidgetsValueError("source='residual' needs the residual stream at every token: give TagExplorer a model "
                             "(TagExplorer(data, head, model=sinkwidgets.load_model(...)))")
        layer = head[0]
        if layer not in self._resid:
            self._resid[layer] = np.asarray(self.residual_rows(layer), dtype=np.float32)
        return self._resid[layer]

    def mean_tag_vector(self, head: tuple[int, int]) -> np.ndarray:
        G, _ = A.tag_vectors(self.analysis_data(head), head, eps=self.eps)
        return G.mean(0) if len(G) else np.zeros(self.data.d_model, np.float64)

    def axes(self, head: tuple[int, int], rank: int, projection: str, source: str) -> tuple[np.ndarray, list[str]]:
        """The two directions ``[d, 2]`` the scatter shows, and their axis names."""
        what = "head output" if source == "output" else f"residual after layer {head[0]}"
        if projection == "pca":
            P = _top_eig(self.covariance(head, source), 2)
            return P, [f"PC1 of the {what}s", f"PC2 of the {what}s"]
        U = self.subspace(head, rank)
        if rank >= 2:
            return U[:, :2], [f"tag direction 1 (of {rank})", f"tag direction 2 (of {rank})"]
        # rank 1: x is the tag direction, y the largest-variance direction orthogonal to it: the top eigenvector
        # of (I - u u^T) C (I - u u^T), C the centred covariance of the outputs (t >= 1), shared by every rank
        u = U[:, 0]
        C = self.covariance(head, source)
        Cu = C @ u
        Cp = C - np.outer(Cu, u) - np.outer(u, Cu) + (u @ Cu) * np.outer(u, u)
        w = _top_eig(Cp, 1)[:, 0]
        w = w - (w @ u) * u
        w /= max(np.linalg.norm(w), 1e-12)
        return np.stack([u, w], 1), ["tag direction (rank 1)", f"top PC of the {what}s ⟂ tag"]

    def covariance(self, head: tuple[int, int], source: str) -> np.ndarray:
        """Centred covariance ``[d, d]`` (float64, unnormalised) of the finite rows ``t >= 1`` of ``source``, computed
        once per head and source (one float32 GEMM) and shared by the PCs and every rank's orthogonal axis."""
        key = (head, source)
        with self._lock:
            if key not in self._cov:
                X = self.source_rows(head, source)
                rows = (self.positions >= 1) & ~self.nonfinite(head)
                if source == "residual":
                    rows &= np.isfinite(X).all(1)
                Xl = np.asarray(X[rows], np.float32)
                Xl -= Xl.mean(0, dtype=np.float64).astype(np.float32)
                with blas_one_thread():
                    self._cov[key] = (Xl.T @ Xl).astype(np.float64)
            return self._cov[key]

    def coords(self, head: tuple[int, int], rank: int, projection: str, source: str) -> tuple[np.ndarray, dict]:
        """``xy [n_tok, 2]`` float32 (NaN for the rows left out as non-finite) and ``{"axes", "arrow",
        "n_nonfinite", "nonfinite_note"}``."""
        key = (head, rank, projection, source)
        if key in self._coords:
            self._coords.move_to_end(key)
            return self._coords[key]
        X = self.source_rows(head, source)
        with blas_one_thread():  # every factorization behind the axes too (eigh took 6 s with 2 threads after torch)
            B, names = self.axes(head, rank, projection, source)
            xy = np.asarray(X @ B.astype(X.dtype if X.dtype == np.float32 else np.float64), dtype=np.float32)
        bad = self.nonfinite(head) | ~np.isfinite(xy).all(1)
        xy[bad] = np.nan
        g = self.mean_tag_vector(head) @ B
        info = {"axes": names, "arrow": [_finite(float(g[0])), _finite(float(g[1]))], "n_nonfinite": int(bad.sum()),
                "nonfinite_note": nonfinite_note(bad, self.data, head)}
        self._coords[key] = (xy, info)
        while len(self._coords) > 16:
            self._coords.popitem(last=False)
        return xy, info

    # ---------------------------------------------------------------- catch colours
    def catch(self, head: tuple[int, int], tau: float) -> dict | None:
        """Per token: the sink that caught it at ``tau`` (largest ``A[t, s] > tau`` over the prompt's sinks), its
        category code, position and weight; None when the head's maps were not collected."""
        if not self.has_maps(head):
            return None
        key = (head, round(float(tau), 4))
        if key in self._catch:
            return self._catch[key]
        d = self.data
        n = d.n_tokens
        pos = np.full(n, -1, np.int32)
        weight = np.zeros(n, np.float32)
        alpha = d.alpha(head)
        for i in range(d.n_prompts):
            sl = d.span(i)
            Am = d.attention_map(head, i)
            for s in A.sink_positions(alpha[sl], self.eps):
                C = A.caught_set(Am, int(s), tau)
                if not len(C):
                    continue
                w = Am[C, s]
                better = w > weight[sl.start + C]
                idx = sl.start + C[better]
                weight[idx] = w[better]
                pos[idx] = int(s)
        caught = pos >= 0
        # category of each caught token: the first token, or the catching sink's token string
        starts = np.repeat(d.offsets[:-1], d.lengths)
        flat = [t for toks in d.tokens for t in toks]
        names_of = np.array([("first token (position 0)" if p == 0 else f"sink {shown(flat[starts[j] + p])!r}")
                             if p >= 0 else "" for j, p in enumerate(pos.tolist())], dtype=object)
        counts: dict[str, int] = {}
        for c in names_of[caught]:
            counts[c] = counts.get(c, 0) + 1
        first = "first token (position 0)"
        ordered = ([first] if first in counts else []) + sorted((c for c in counts if c != first),
                                                                key=lambda c: (-counts[c], c))
        keep = ordered[: MAX_CATCH_COLORS - 2]
        other = len(ordered) > len(keep)
        names = ["not caught", *keep] + (["other sink"] if other else [])
        index = {c: k + 1 for k, c in enumerate(keep)}
        codes = np.zeros(n, np.uint8)
        for j in np.nonzero(caught)[0]:
            codes[j] = index.get(names_of[j], len(names) - 1)
        later = (self.positions >= 1) & ~self.nonfinite(head)
        res = {"codes": codes, "names": names, "pos": pos, "weight": weight,
               "caught_share": float(caught[later].mean()) if later.any() else float("nan")}
        self._catch[key] = res
        return res

    # ---------------------------------------------------------------- across layers
    def layer_series(self, head: tuple[int, int], rank: int, selected: np.ndarray) -> dict[str, Any]:
        """The selected tokens' coordinate along the first tag direction after each layer from the head's layer on.

        With a model: per token (the residual stream, projected inside the trace); without: per prompt, the
        pooled residual (mean over ``t >= 1``) of the selected tokens' prompts, when the TagData has it.
        """
        sel = np.unique(np.asarray(selected, dtype=np.int64))
        base = {"head": list(head), "rank": rank, "n_selected": int(len(sel))}
        if not len(sel):
            return {**base, "status": "empty", "message": "select points (box or lasso) to follow them across layers"}
        try:
            u = self.subspace(head, rank)[:, :1]
        except ValueError as exc:
            return {**base, "status": "error", "message": str(exc)}
        L = int(self.data.sink_scores.shape[0])
        layers = list(range(head[0], L))
        prompts = np.unique(self.prompt_of[sel])
        note = ""
        if self.layer_coords is not None:
            if len(prompts) > MAX_LAYER_PROMPTS:
                note = f" (first {MAX_LAYER_PROMPTS} of {len(prompts)} prompts)"
                prompts = prompts[:MAX_LAYER_PROMPTS]
                sel = sel[np.isin(self.prompt_of[sel], prompts)]
            per = self.layer_coords(head, rank, u, layers, prompts.tolist())  # {prompt: [Ls, T_i]}
            rows_sel, rows_ref = [], []
            for i in prompts.tolist():
                c = per[i]
                sl = self.data.span(i)
                mine = sel[(sel >= sl.start) & (sel < sl.stop)] - sl.start
                rows_sel.append(c[:, mine])
                rest = np.setdiff1d(np.arange(1, sl.stop - sl.start), mine)
                rows_ref.append(c[:, rest])
            S = np.concatenate(rows_sel, axis=1)
            Rf = np.concatenate(rows_ref, axis=1) if rows_ref else np.zeros((len(layers), 0))
            kind = "tokens"
            message = (f"{S.shape[1]} selected tokens{note}: residual stream after each layer · first tag direction "
                       f"of L{head[0]}H{head[1]}; grey: the other tokens (t ≥ 1) of the same prompts")
        else:
            if self.data.pooled_mean is None or self.data.pooled_layers is None:
                return {**base, "status": "unavailable",
                        "message": "following tokens across layers needs a model (TagExplorer(..., model=...)) or "
                                   "pooled residuals (collect with layers='all')"}
            pl = [int(x) for x in self.data.pooled_layers.tolist() if x >= head[0]]
            if not pl:
                return {**base, "status": "unavailable",
                        "message": f"no pooled residual at or after layer {head[0]}; collect with layers='all' or "
                                   "give a model"}
            layers = pl
            P = np.stack([self.data.pooled(l) for l in layers], 0) @ u[:, 0]  # [Ls, N]
            S = P[:, prompts]
            Rf = P[:, np.setdiff1d(np.arange(self.data.n_prompts), prompts)]
            kind = "prompts"
            message = (f"{len(prompts)} prompts of the selected tokens: pooled residual (mean over t ≥ 1) after each "
                       f"layer · first tag direction of L{head[0]}H{head[1]}; grey: the other prompts. Per-token "
                       "lines need a model")
        S = np.asarray(S, np.float64)
        out = {**base, "status": "ok", "kind": kind, "layers": layers, "message": message,
               "n_lines": int(S.shape[1]), "stats": ser.packed(_band(S), "float32")}
        if Rf.shape[1]:
            out["ref"] = ser.packed(_band(np.asarray(Rf, np.float64)), "float32")
        return out


def _band(S: np.ndarray) -> np.ndarray:
    """``[Ls, 4]``: mean, 10th, 50th, 90th percentile over the lines (columns) at each layer."""
    return np.stack([S.mean(1), *np.percentile(S, [10, 50, 90], axis=1)], 1).astype(np.float32)


def _top_eig(C: np.ndarray, k: int) -> np.ndarray:
    """Top-``k`` eigenvectors ``[d, k]`` of a symmetric ``C`` (a covariance ``d × d``: 576² for SmolLM2, cheaper than
    an SVD of the ``n × d`` data), each signed to point along the sum of its entries (reproducible signs)."""
    _, V = np.linalg.eigh(C)
    P = V[:, ::-1][:, :k]
    return P * np.where(np.sign(P.sum(0)) == 0, 1.0, np.sign(P.sum(0)))


def _finite(v: Any) -> Any:
    if isinstance(v, (float, np.floating)):
        return float(v) if np.isfinite(v) else None
    if isinstance(v, np.integer):
        return int(v)
    return v


def esm() -> str:
    """TagExplorer's ES module: ``static/sinkwidgets.js`` (the helpers both widgets share) followed by
    ``static/tagexplorer.js``, assembled by :func:`sinkwidgets.widgets._assets.esm`."""
    return _assets.esm("tagexplorer")


def css() -> str:
    """TagExplorer's CSS: the theme variables and controls of ``sinkwidgets.css``, then ``tagexplorer.css``."""
    return _assets.css("tagexplorer")
