"""The options every run shares, in one frozen object, and the encoding of prompts that two of them govern.

Six options recur across the entry points (:func:`sinkwidgets.trace`, :func:`~sinkwidgets.tracing.run_units`,
:func:`sinkwidgets.tags.collect`, :func:`sinkwidgets.streaming.streaming_ppl`, the interventions, ...):

=============  ======================================================================  =========
option         meaning                                                                 default
=============  ======================================================================  =========
``add_bos``    token 0 is the model's BOS-like token: True, False, None (the model's   None
               documented default; see :func:`tokenize`)
``max_tokens`` keep the first ``max_tokens`` tokens of each prompt (an int >= 2; None:  None
               no truncation, but a prompt longer than the context is refused)
``batch_size`` prompts per forward pass (an int >= 1)                                  8
``method``     the tracing executor: ``"auto"``, ``"eager"`` or ``"chunked"``          "auto"
``remote``     False/None (local), True (NDIF), a host URL, or a ``RemoteOptions``     False
``progress``   show a progress bar: True, False, None (when there is more than one     None
               batch, over batches; one local batch of >= 1024 tokens: over layers)
=============  ======================================================================  =========

Each entry point keeps its keyword arguments and also takes ``options=RunOptions(...)``; one
``RunOptions`` can be passed to many calls. An option the entry point does not use is ignored (streaming has no
executor ``method``). Inside, everything flows as one resolved ``RunOptions``. An entry point adopts it so::

    from sinkwidgets.tracing.options import RunOptions, encode

    def collect(model, texts, *, add_bos=None, max_tokens=None, batch_size=8, method="auto", remote=False,
                progress=None, options=None):
        opts = RunOptions.resolve(options, collect, add_bos=add_bos, max_tokens=max_tokens,
                                  batch_size=batch_size, method=method, remote=remote, progress=progress)
        encoded = encode(model, texts, opts)  # [Encoded(text, ids, used_bos, n_original)]
        ...  # then read opts.batch_size, opts.method, ... (all checked, numpy ints made ints)

:meth:`RunOptions.resolve` takes the entry point itself to read its signature's defaults: a keyword left at its
default gives way to the same option set in ``options``; a keyword set to something else *and* the option set
to a third value is an error (the option was given twice). Options that neither set take the entry point's
default (for keywords) or the default in the table (for options the entry point has no keyword for).

This module is the bottom of the tracing layers (it imports no other sinkwidgets module), so the executors,
:mod:`.api`, :mod:`sinkwidgets.tags` and :mod:`sinkwidgets.streaming` can all import it. :func:`tokenize`,
:func:`check_text` and :func:`encode` are defined only here; :mod:`.api` (``trace``, ``run_units``),
:mod:`sinkwidgets.tags.collect`, :mod:`sinkwidgets.streaming` and :mod:`sinkwidgets.interventions` import them.
"""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass, fields
from typing import Any, NamedTuple

import numpy as np

from ..errors import SinkwidgetsTypeError, SinkwidgetsValueError


class _Default:
    """The value of an option a :class:`RunOptions` leaves to the entry point (``repr``: ``DEFAULT``)."""

    _instance = None

    def __new__(cls):
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "DEFAULT"

    def __reduce__(self):
        return (_Default, ())


#: An option left to the entry point's default.
DEFAULT: Any = _Default()

#: The options' defaults where an entry point has no keyword of its own for them.
DEFAULTS: dict[str, Any] = dict(add_bos=None, max_tokens=None, batch_size=8, method="auto", remote=False,
                                progress=None)
#: The tracing executors ``method`` chooses from.
METHODS = ("auto", "eager", "chunked")


def is_int(x) -> bool:
    """A Python or numpy integer, not a bool."""
    return isinstance(x, (int, np.integer)) and not isinstance(x, (bool, np.bool_))


def check_int(name: str, value, minimum: int, allow_none: bool = False, example: int | None = None) -> None:
    """Raise ``ValueError`` naming ``name``, ``value`` and the fix unless ``value`` is an int >= ``minimum``."""
    if value is None and allow_none:
        return
    if not is_int(value) or value < minimum:
        none = " or None" if allow_none else ""
        eg = f", e.g. {name}={example if example is not None else max(minimum, 8)}"
        raise SinkwidgetsValueError(f"{name} must be an integer >= {minimum}{none}, got {value!r}{eg}")


@dataclass(frozen=True)
class RunOptions:
    """The shared run options (table in :mod:`sinkwidgets.tracing.options`), checked when made.

    Fields left out are :data:`DEFAULT`: the entry point's own default. Numpy integers and booleans are accepted
    and stored as Python ``int`` / ``bool``. Every error names the option, the value and the fix, e.g.
    ``RunOptions(batch_size=0)`` → ``ValueError: batch_size must be an integer >= 1, got 0, e.g. batch_size=8``.
    """

    add_bos: Any = DEFAULT
    max_tokens: Any = DEFAULT
    batch_size: Any = DEFAULT
    method: Any = DEFAULT
    remote: Any = DEFAULT
    progress: Any = DEFAULT

    def __post_init__(self):
        v = self.add_bos
        if v is not DEFAULT:
            if v is not None and not isinstance(v, (bool, np.bool_)):
                raise SinkwidgetsTypeError(f"add_bos must be True, False or None (the model's default), got {v!r}; "
                                           "e.g. add_bos=True to put the model's BOS token at position 0")
            object.__setattr__(self, "add_bos", None if v is None else bool(v))
        if self.max_tokens is not DEFAULT:
            check_int("max_tokens", self.max_tokens, 2, allow_none=True, example=512)
            object.__setattr__(self, "max_tokens", None if self.max_tokens is None else int(self.max_tokens))
        if self.batch_size is not DEFAULT:
            check_int("batch_size", self.batch_size, 1)
            object.__setattr__(self, "batch_size", int(self.batch_size))
        m = self.method
        if m is not DEFAULT and (not isinstance(m, str) or m not in METHODS):
            hint = (" ('exact' and 'mask' are streaming methods: pass them as streaming_ppl(..., method=...))"
                    if m in ("exact", "mask") else "")
            raise SinkwidgetsValueError(f"method must be 'auto', 'eager' or 'chunked', got {m!r}{hint}; 'auto' "
                                        "picks eager attention for short local prompts and the chunked path otherwise")
        r = self.remote
        ok = r is None or isinstance(r, (bool, np.bool_)) or type(r).__name__ == "RemoteOptions" or (
            isinstance(r, str) and r.strip())
        if r is not DEFAULT and not ok:
            raise SinkwidgetsTypeError(f"remote must be False, True, an NDIF host URL or a RemoteOptions, got {r!r}; "
                                       "e.g. remote=True (the host and key come from NDIF_HOST / NDIF_API_KEY)")
        if isinstance(r, np.bool_):
            object.__setattr__(self, "remote", bool(r))
        p = self.progress
        if p is not DEFAULT:
            if p is not None and not isinstance(p, (bool, np.bool_)):
                raise SinkwidgetsTypeError(f"progress must be True, False or None (a bar when there is more than one "
                                           f"batch), got {p!r}; e.g. progress=False")
            object.__setattr__(self, "progress", None if p is None else bool(p))

    def __repr__(self) -> str:
        given = ", ".join(f"{f.name}={getattr(self, f.name)!r}" for f in fields(self)
                          if getattr(self, f.name) is not DEFAULT)
        return f"RunOptions({given})"

    @property
    def given(self) -> tuple[str, ...]:
        """The names of the options set (not :data:`DEFAULT`)."""
        return tuple(f.name for f in fields(self) if getattr(self, f.name) is not DEFAULT)

    @classmethod
    def resolve(cls, options: RunOptions | None, entry, /, **keywords) -> RunOptions:
        """One entry point's options, every field set and checked.

        ``options``: the caller's ``options=`` argument (None or a :class:`RunOptions`); ``entry``: the entry
        point (a function: its signature gives the keywords' defaults); ``keywords``: the values of the entry
        point's own option keywords. Per option: the ``options`` value when it is set (a keyword that is not at
        its default and differs from it raises ``ValueError``: it was given twice), else the keyword's value, else
        :data:`DEFAULTS`.
        """
        if options is not None and not isinstance(options, RunOptions):
            raise SinkwidgetsTypeError(f"options must be a RunOptions (sinkwidgets.tracing.options) or None, got "
                                       f"{type(options).__name__} ({options!r:.60}); e.g. "
                                       "options=RunOptions(max_tokens=512, batch_size=4)")
        unknown = sorted(set(keywords) - set(DEFAULTS))
        if unknown:
            raise SinkwidgetsTypeError(f"RunOptions.resolve got {unknown}, which are not run options: use "
                                       f"{sorted(DEFAULTS)}")
        defaults = _keyword_defaults(entry)
        values = {}
        for name in DEFAULTS:
            opt = getattr(options, name) if options is not None else DEFAULT
            if name not in keywords:
                values[name] = DEFAULTS[name] if opt is DEFAULT else opt
                continue
            value = keywords[name]
            if opt is DEFAULT:
                values[name] = value
            elif _same(value, defaults.get(name, DEFAULT)) or _same(value, opt):
                values[name] = opt
            else:
                raise SinkwidgetsValueError(f"{name} is given twice: {name}={value!r} and options={options!r}; pass "
                                            f"it once (drop {name}= or leave it out of RunOptions)")
        return cls(**values)


@functools.lru_cache(maxsize=256)
def _keyword_defaults(entry) -> dict[str, Any]:
    try:
        params = inspect.signature(entry).parameters.values()
    except (TypeError, ValueError):  # pragma: no cover - a builtin without a signature
        return {}
    return {p.name: p.default for p in params if p.default is not inspect.Parameter.empty}


def _same(a, b) -> bool:
    if a is b:
        return True
    if type(a) is not type(b):
        return False
    try:
        return bool(a == b)
    except Exception:  # noqa: BLE001 - values without a plain equality are not the same
        return False


# ----------------------------------------------------------------------------- prompts → token ids
class Encoded(NamedTuple):
    """One tokenized prompt: its text, the token ids after truncation, whether token 0 is the BOS-like token,
    and the number of tokens before truncation."""

    text: str
    ids: list
    used_bos: bool
    n_original: int


def check_text(text) -> None:
    """Raise ``TypeError`` / ``ValueError`` (naming the value and the fix) unless ``text`` is a non-blank str."""
    if not isinstance(text, str):
        raise SinkwidgetsTypeError(f"a prompt must be a str, got {type(text).__name__} ({str(text)[:40]!r}); "
                                   "pass a string or a list of strings, e.g. trace(model, 'The cat sat on the mat.')")
    if not text.strip():
        raise SinkwidgetsValueError("text is empty: pass a prompt with at least one word, e.g. "
                                    "trace(model, 'The cat sat.')")


def _model_info(model):
    info = getattr(model, "sinkwidgets", None)
    if info is None:
        raise SinkwidgetsTypeError(
            f"trace() needs a model from sinkwidgets.load_model(), got {type(model).__name__}; "
            "e.g. model = sinkwidgets.load_model('smollm2-135m')"
        )
    return info


def tokenize(model, text: str, add_bos: bool | None) -> tuple[list[int], bool]:
    """Token ids for one prompt with explicit BOS handling → (ids, whether token 0 is the model's BOS-like token).

    ``add_bos=True``: token 0 is the model's BOS-like special token (``<bos>``, ``[CLS]``), prepended if the
    tokenizer does not add it. ``False``: no leading special token. ``None``: the model's documented default
    from the registry, else the tokenizer's own behaviour. A BOS the text itself starts with (``"<bos> Hello"``)
    is never duplicated: it counts as the BOS when one is wanted and is dropped when ``add_bos=False``, so the
    returned flag always says truthfully what token 0 is.
    """
    check_text(text)
    if add_bos is not None and not isinstance(add_bos, (bool, np.bool_)):
        raise SinkwidgetsTypeError(f"add_bos must be True, False or None (the model's default), got {add_bos!r}")
    tok = model.tokenizer
    info = _model_info(model)
    full = list(tok(text, add_special_tokens=True)["input_ids"])
    plain = list(tok(text, add_special_tokens=False)["input_ids"])
    specials = set(tok.all_special_ids)
    # a special token the tokenizer itself prepends (Gemma's <bos>, BERT's [CLS])
    added = bool(full) and full[0] in specials and len(full) > len(plain) and full[1 : len(plain) + 1] == plain
    lead = full[0] if added else None
    body = full[1:] if added else full
    bos = tok.bos_token_id if tok.bos_token_id is not None else tok.cls_token_id
    bos_like = {i for i in (lead, bos) if i is not None}
    typed = None
    while body and body[0] in bos_like:  # the text starts with the BOS token written out
        typed = body.pop(0)
    if add_bos is None:
        add_bos = info.add_bos if info.add_bos is not None else (added or typed is not None)
    if add_bos:
        first = lead if lead is not None else (typed if typed is not None else bos)
        if first is None:
            raise SinkwidgetsValueError(f"add_bos=True but the tokenizer of {info.name!r} has no BOS/CLS token; "
                                        "use add_bos=False")
        ids = [first] + body
    else:
        ids = body
    if not ids:
        raise SinkwidgetsValueError(f"text {text[:40]!r} produced no tokens (besides a BOS token)")
    return ids, bool(add_bos)


def encode(model, texts, options: RunOptions) -> list[Encoded]:
    """Tokenize ``texts`` (a list of str) with ``options.add_bos`` and cut each to ``options.max_tokens``.

    A ``max_tokens`` above the model's context length, or (without ``max_tokens``) a prompt longer than it, is
    refused with the fix in the message (``max_tokens=<context length>``, which the trace then records).
    """
    info = _model_info(model)
    add_bos = None if options.add_bos is DEFAULT else options.add_bos
    max_tokens = None if options.max_tokens is DEFAULT else options.max_tokens
    ctx_len = info.context_length
    encoded = []
    for text in texts:
        ids, used_bos = tokenize(model, text, add_bos)
        n_orig = len(ids)
        if max_tokens is not None:
            if ctx_len and max_tokens > ctx_len:
                raise SinkwidgetsValueError(f"max_tokens={max_tokens} exceeds the context length of {info.name!r} "
                                            f"({ctx_len} tokens); pass max_tokens={ctx_len} or fewer")
            ids = ids[:max_tokens]
        elif ctx_len and n_orig > ctx_len:
            raise SinkwidgetsValueError(
                f"the prompt has {n_orig} tokens, more than the context length of {info.name!r} ({ctx_len}); "
                f"pass max_tokens={ctx_len} (or fewer) to truncate it, which the trace records"
            )
        encoded.append(Encoded(text, ids, used_bos, n_orig))
    return encoded
