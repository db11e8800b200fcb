"""One argument layer: the parsers of the arguments that recur across the public API, with one rule for each.

Every public function checks its recurring arguments here, before any model work, so that the same value means
the same thing everywhere and a bad value gets the same kind of message everywhere. Each parser takes the
argument's ``name`` (as the user typed it, e.g. ``"layers"``), the ``value``, and what it must fit (the model's
number of layers, the texts' lengths, ...), and returns the value in one canonical form or raises:

- :class:`ArgumentTypeError` for a wrong type: a string where a list of positions is expected, a float or a bool
  where an int is. It is a :class:`~sinkwidgets.errors.SinkwidgetsTypeError` (so a ``TypeError``) *and* a
  :class:`~sinkwidgets.errors.SinkwidgetsValueError` (so a ``ValueError``), because the package raised
  ``ValueError`` for these before the argument layer existed and ``except ValueError`` code must keep working;
- :class:`~sinkwidgets.errors.SinkwidgetsValueError` (also a ``ValueError``) for a right type with an unusable
  value: out of range, empty, reversed, non-finite, rank-deficient.

Every message names the argument, the value and the fix, e.g.
``layers='29-12': the range is reversed (29 > 12); write it low-high, e.g. layers='12-29'``.

The rules, the same in every function:

=================  ==========================================================================================
argument           rule
=================  ==========================================================================================
integers           Python or numpy integers (and 0-d integer arrays); ``bool`` and ``float`` (even ``8.0``)
                   are refused with a message, never truncated
layers             ``"all"``, an int, ``"12"``, ``"12-29"`` (inclusive, low-high), ``"3,5,12-14"``, a list,
                   tuple, ``range`` or 1-D integer array. **Negative indices count from the end** (Python's rule:
                   ``-1`` is the last layer, valid ``-L..-1``); a reversed range (``"29-12"``) and an empty set are
                   errors; out of range names the valid range. Returned sorted, without duplicates
heads              ``(layer, head)`` pairs, ``"L2H2"``, a list of either, a ``[P, 2]`` integer array, or ``"all"``;
                   negative layer and head indices count from the end, as for layers
positions          token positions inside a text: one int or a list of ints (the same in every text), or one list
                   per text (a list of lists whose count must equal the number of texts). Negative positions count
                   from the end of each text. A string is never a list of positions
token ids          ints in ``0..vocab_size-1`` (negative ids are refused: ids do not count from the end)
fractions          real numbers in a closed or open interval (``fraction`` is ``[0, 1]``); NaN is refused
labels             integers (or integral floats such as ``1.0``, or bools); non-integral floats are refused, not
                   truncated. :func:`binary_labels`: any two distinct classes (strings, bools, ints)
bases              ``[d, r]`` float matrices (a vector ``[d]`` is one column): finite, not zero, full column rank
data arrays        :func:`array`: real numbers (not strings, objects or complex) of the documented rank (``[n, d]``,
                   ``[T]``, ...); non-finite entries are refused naming the first rows (docs/tags.md, "Non-finite
                   data")
random generators  :func:`generator`: a ``numpy.random.Generator`` or a seed (an integer >= 0)
=================  ==========================================================================================

This module imports only numpy and :mod:`sinkwidgets.errors`, so every layer of the package may import it
(``tests/test_imports.py`` checks that).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import SinkwidgetsTypeError, SinkwidgetsValueError

__all__ = [
    "ArgumentTypeError", "Positions", "array", "basis", "binary_labels", "choice", "fraction", "generator", "head",
    "heads", "integer", "is_int", "labels", "layer", "layers", "number", "orthonormal_basis", "positions",
    "positions_per_text", "seed", "show", "token_id", "token_ids",
]


class ArgumentTypeError(SinkwidgetsTypeError, SinkwidgetsValueError):
    """An argument of the wrong type (a float or bool where an int is expected, a string where a list is).

    Both a ``TypeError`` and a ``ValueError``: before the argument layer, the package raised ``ValueError`` for
    most of these, and code that catches ``ValueError`` keeps working."""


# ----------------------------------------------------------------------------- helpers
def show(value: Any, limit: int = 80) -> str:
    """``repr(value)``, cut to ``limit`` characters (long lists and arrays stay readable in a message)."""
    if isinstance(value, np.generic):  # numpy 2 writes np.int64(1); the user typed 1
        value = value.item()
    if isinstance(value, np.ndarray):
        text = f"array(shape={list(value.shape)}, dtype={value.dtype})" if value.size > 16 else repr(value.tolist())
    else:
        try:
            text = repr(value)
        except Exception:  # noqa: BLE001 - a broken __repr__ must not hide the real problem
            text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _type_error(name: str, value: Any, want: str, example: str) -> ArgumentTypeError:
    return ArgumentTypeError(f"{name}={show(value)} ({type(value).__name__}): {name} must be {want}; "
                                f"e.g. {name}={example}")


def _value_error(name: str, value: Any, problem: str, fix: str) -> SinkwidgetsValueError:
    return SinkwidgetsValueError(f"{name}={show(value)}: {problem}; {fix}")


def is_int(x: Any) -> bool:
    """A Python or numpy integer (or a 0-d integer array), not a bool."""
    if isinstance(x, np.ndarray) and x.ndim == 0:
        x = x[()]
    return isinstance(x, (int, np.integer)) and not isinstance(x, (bool, np.bool_))


def _is_real(x: Any) -> bool:
    if isinstance(x, np.ndarray) and x.ndim == 0:
        x = x[()]
    return isinstance(x, (int, float, np.integer, np.floating)) and not isinstance(x, (bool, np.bool_))


# ----------------------------------------------------------------------------- integers and numbers
def integer(name: str, value: Any, *, minimum: int | None = None, maximum: int | None = None,
            allow_none: bool = False, example: int | None = None) -> int | None:
    """``value`` as a Python ``int`` in ``minimum..maximum`` (inclusive; ``None``: unbounded).

    Accepts Python and numpy integers and 0-d integer arrays; ``None`` only with ``allow_none``. Refuses ``bool``,
    floats (``8.0`` too: pass ``8``) and strings with :class:`SinkwidgetsTypeError`, and values outside the bounds
    with :class:`SinkwidgetsValueError`.
    """
    if value is None and allow_none:
        return None
    eg = str(example if example is not None else (minimum if minimum is not None and minimum > 0 else 8))
    if not is_int(value):
        want = "an integer" + (" or None" if allow_none else "")
        if isinstance(value, (bool, np.bool_)):
            want += " (not a bool)"
        elif _is_real(value):
            want += " (not a float: pass int(...) yourself if truncation is meant)"
        raise _type_error(name, value, want, eg)
    v = int(value)
    low_ok = minimum is None or v >= minimum
    high_ok = maximum is None or v <= maximum
    if not (low_ok and high_ok):
        if minimum is not None and maximum is not None:
            rng = f"an integer in {minimum}..{maximum}"
        elif minimum is not None:
            rng = f"an integer >= {minimum}"
        else:
            rng = f"an integer <= {maximum}"
        raise _value_error(name, value, f"{name} must be {rng}" + (" or None" if allow_none else ""),
                           f"e.g. {name}={eg}")
    return v


def seed(name: str, value: Any, *, allow_none: bool = False) -> int | None:
    """A random seed: an integer >= 0 (numpy integers accepted; ``None`` only with ``allow_none``)."""
    return integer(name, value, minimum=0, allow_none=allow_none, example=0)


def number(name: str, value: Any, *, low: float | None = None, high: float | None = None, low_open: bool = False,
           high_open: bool = False, allow_none: bool = False, example: float | None = None) -> float | None:
    """``value`` as a finite Python ``float`` in the interval from ``low`` to ``high``.

    The interval is closed unless ``low_open`` / ``high_open`` (``None``: unbounded). Accepts Python and numpy
    ints and floats; refuses bools and strings (:class:`SinkwidgetsTypeError`) and NaN, infinities and values
    outside the interval (:class:`SinkwidgetsValueError`).
    """
    if value is None and allow_none:
        return None
    eg = str(example if example is not None else (low if low is not None and not low_open else 1.0))
    if not _is_real(value):
        raise _type_error(name, value, "a real number" + (" or None" if allow_none else ""), eg)
    try:
        v = float(value)
    except OverflowError:  # an int beyond the float range
        v = float("inf") if value > 0 else float("-inf")
    lo = "(" if low_open else "["
    hi = ")" if high_open else "]"
    interval = f"{lo}{'-inf' if low is None else low}, {'inf' if high is None else high}{hi}"
    if not np.isfinite(v):
        raise _value_error(name, value, f"{name} must be a finite number in {interval}", f"e.g. {name}={eg}")
    bad_low = low is not None and (v <= low if low_open else v < low)
    bad_high = high is not None and (v >= high if high_open else v > high)
    if bad_low or bad_high:
        raise _value_error(name, value, f"{name} must lie in {interval}", f"e.g. {name}={eg}")
    return v


def fraction(name: str, value: Any, *, low_open: bool = False, high_open: bool = False,
             allow_none: bool = False, example: float = 0.5) -> float | None:
    """A fraction or probability: a finite real number in ``[0, 1]`` (ends open with ``low_open`` / ``high_open``)."""
    return number(name, value, low=0.0, high=1.0, low_open=low_open, high_open=high_open, allow_none=allow_none,
                  example=example)


def choice(name: str, value: Any, options: Sequence[Any], *, what: str = "") -> Any:
    """``value`` if it is one of ``options`` (compared with ``==``); otherwise an error listing them.

    ``what`` (optional) says what the options are, e.g. ``"the conditions of this result"``.
    """
    for o in options:
        if _same(value, o):
            return o
    listed = ", ".join(repr(o) for o in options)
    raise _value_error(name, value, f"{name} must be one of {what + ': ' if what else ''}{listed}",
                       f"e.g. {name}={options[0]!r}" if len(options) else "nothing is available here")


def _same(a: Any, b: Any) -> bool:
    """``a == b`` as a plain bool, with bools equal only to bools (``True`` is not the option ``1``)."""
    if isinstance(a, (bool, np.bool_)) != isinstance(b, (bool, np.bool_)):
        return False
    try:
        return bool(a == b)
    except Exception:  # noqa: BLE001 - an array or an odd __eq__ is simply not a match
        return False


# ----------------------------------------------------------------------------- layers
_RANGE = re.compile(r"^\s*(-?\d+)\s*-\s*(-?\d+)\s*$")
_ONE = re.compile(r"^\s*(-?\d+)\s*$")


def _index(name: str, value: Any, i: int, n: int | None, what: str, example: str) -> int:
    """One index ``i`` against a size ``n``: negative counts from the end; out of range names ``0..n-1``."""
    if n is None:
        if i < 0:
            raise _value_error(name, value, f"{what} {i} counts from the end, but the number of {what}s is unknown "
                                            "here", f"give a non-negative index, e.g. {name}={example}")
        return i
    if not -n <= i < n:
        raise _value_error(name, value, f"{what} {i} is out of range: there are {n} {what}s",
                           f"use 0..{n - 1} (or -{n}..-1 to count from the end)")
    return i % n


def layers(name: str, value: Any, n_layers: int | None, *, allow_empty: bool = False) -> list[int]:
    """A set of layers as a sorted list of distinct indices in ``0..n_layers-1``.

    Accepted forms: ``"all"``; an int; a string ``"12"``, ``"12-29"`` (both ends included, low-high) or a comma
    list of those (``"3,5,12-14"``); a list, tuple or ``range`` of ints; a 1-D integer array. Negative indices count
    from the end (``-1`` is the last layer; in strings too: ``"-3--1"`` is the last three). Errors: a reversed range
    (``"29-12"``, or one that is reversed after counting from the end), an empty set (unless ``allow_empty``), an
    index outside ``-n_layers..n_layers-1``, a float, a bool, a string in another form.
    """
    eg = f"'0-{n_layers - 1}'" if n_layers else "'0-3'"
    if isinstance(value, str):
        text = value.strip().lower()
        if text == "all":
            if n_layers is None:
                raise _value_error(name, value, "'all' needs the model's number of layers, which is unknown here",
                                   "list the layers, e.g. " + f"{name}=[0, 1]")
            return list(range(n_layers))
        out: list[int] = []
        parts = [p for p in text.split(",")]
        for part in parts:
            m1, m2 = _ONE.match(part), _RANGE.match(part)
            if m1:
                out.append(_index(name, value, int(m1.group(1)), n_layers, "layer", eg))
            elif m2:
                a = _index(name, value, int(m2.group(1)), n_layers, "layer", eg)
                b = _index(name, value, int(m2.group(2)), n_layers, "layer", eg)
                if a > b:
                    raise _value_error(name, value, f"the range {part.strip()!r} is reversed ({a} > {b})",
                                       f"write it low-high, e.g. {name}='{b}-{a}'")
                out.extend(range(a, b + 1))
            else:
                raise _value_error(name, value, f"cannot read {part.strip()!r} as a layer or a range of layers",
                                   f"use 'all', an int, '12-29' or '3,5,12-14', e.g. {name}={eg}")
        return sorted(set(out))
    if is_int(value):
        return [_index(name, value, int(value), n_layers, "layer", eg)]
    if isinstance(value, (bool, np.bool_, float, np.floating)):
        raise _type_error(name, value, "'all', an int, a string such as '12-29', or a list of ints", eg)
    items = _int_items(name, value, "'all', an int, a string such as '12-29', or a list of ints", eg)
    if not items and not allow_empty:
        why = "the range is empty (is it reversed? range(a, b) needs a < b)" if isinstance(value, range) \
            else "no layers are given"
        raise _value_error(name, value, why, f"give at least one layer, e.g. {name}={eg}")
    return sorted({_index(name, value, i, n_layers, "layer", eg) for i in items})


def layer(name: str, value: Any, n_layers: int | None) -> int:
    """One layer index in ``0..n_layers-1``; negative counts from the end (``-1``: the last layer)."""
    if not is_int(value):
        raise _type_error(name, value, "one layer index (an int; negative counts from the end)", "0")
    return _index(name, value, int(value), n_layers, "layer", "0")


def _int_items(name: str, value: Any, want: str, example: str) -> list[int]:
    """The ints of a list, tuple, range or 1-D integer array (no strings, floats or bools inside)."""
    if isinstance(value, np.ndarray):
        if value.ndim != 1 or not (np.issubdtype(value.dtype, np.integer) or value.size == 0):
            raise _type_error(name, value, want + " (a 1-D integer array)", example)
        return [int(v) for v in value]
    if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple, range)):
        raise _type_error(name, value, want, example)
    bad = [v for v in value if not is_int(v)]
    if bad:
        raise _type_error(name, value, want + f" (holds {show(bad[0])}, a {type(bad[0]).__name__})", example)
    return [int(v) for v in value]


# ----------------------------------------------------------------------------- heads
_HEAD_STR = re.compile(r"^\s*L(-?\d+)\s*H(-?\d+)\s*$", re.IGNORECASE)


def head(name: str, value: Any, n_layers: int | None = None, n_heads: int | None = None) -> tuple[int, int]:
    """One head as ``(layer, head)`` ints: a pair of ints or a string ``"L2H2"``.

    Negative layer and head indices count from the end when ``n_layers`` / ``n_heads`` are given (and are
    refused when they are not); out of range names the valid range.
    """
    eg = "(2, 2)"
    if isinstance(value, str):
        m = _HEAD_STR.match(value)
        if not m:
            raise _value_error(name, value, "a head is a (layer, head) pair or a string such as 'L2H2'",
                               f"e.g. {name}={eg}")
        pair = (int(m.group(1)), int(m.group(2)))
    else:
        if isinstance(value, np.ndarray):
            value = value.tolist() if value.ndim == 1 else value
        if not isinstance(value, (tuple, list)) or len(value) != 2 or not all(is_int(v) for v in value):
            raise _type_error(name, value, "a (layer, head) pair of ints or a string such as 'L2H2'", eg)
        pair = (int(value[0]), int(value[1]))
    return (_index(name, value, pair[0], n_layers, "layer", eg), _index(name, value, pair[1], n_heads, "head", eg))


def heads(name: str, value: Any, n_layers: int | None = None, n_heads: int | None = None, *,
          allow_all: bool = True) -> list[tuple[int, int]]:
    """A list of heads ``[(layer, head), ...]`` in the order given, without duplicates.

    Accepted forms: ``"all"`` (every head, layer by layer; needs ``n_layers`` and ``n_heads``, and ``allow_all``);
    one head (a pair ``(2, 2)`` or ``"L2H2"``); a list or tuple of heads; a ``[P, 2]`` integer array. A list of two
    ints is one head. Negative indices count from the end. An empty list is refused.
    """
    eg = "[(2, 2), (5, 6)]"
    if isinstance(value, str) and value.strip().lower() == "all":
        if not allow_all:
            raise _value_error(name, value, "'all' is not accepted here", f"list the heads, e.g. {name}={eg}")
        if n_layers is None or n_heads is None:
            raise _value_error(name, value, "'all' needs the model's numbers of layers and heads, unknown here",
                               f"list the heads, e.g. {name}={eg}")
        return [(a, b) for a in range(n_layers) for b in range(n_heads)]
    if isinstance(value, str) or (isinstance(value, (tuple, list)) and len(value) == 2
                                  and all(is_int(v) for v in value)):
        return [head(name, value, n_layers, n_heads)]
    if isinstance(value, np.ndarray):
        if value.ndim == 1 and value.size == 2:
            return [head(name, value, n_layers, n_heads)]
        if value.ndim != 2 or value.shape[1] != 2 or not np.issubdtype(value.dtype, np.integer):
            raise _type_error(name, value, "heads as a [P, 2] integer array of (layer, head) rows", eg)
        value = value.tolist()
    if not isinstance(value, (list, tuple)):
        raise _type_error(name, value, "'all', a (layer, head) pair, 'L2H2', or a list of them", eg)
    if not value:
        raise _value_error(name, value, "no heads are given", f"give at least one, e.g. {name}={eg}")
    out: list[tuple[int, int]] = []
    for item in value:
        try:
            h = head(name, item, n_layers, n_heads)
        except ArgumentTypeError:
            raise _type_error(name, value, f"a list of (layer, head) pairs or 'L2H2' strings (holds {show(item)})",
                              eg) from None
        if h not in out:
            out.append(h)
    return out


# ----------------------------------------------------------------------------- token positions and ids
@dataclass(frozen=True)
class Positions:
    """Token positions as given: ``shared`` (the same positions in every text) or ``per_text`` (one tuple per
    text). Negative positions are kept until a text's length is known (:meth:`for_text`, :meth:`resolve`)."""

    name: str
    shared: tuple[int, ...] | None = None
    per_text: tuple[tuple[int, ...], ...] | None = None

    def for_text(self, i: int, length: int) -> list[int]:
        """Positions in text ``i`` of ``length`` tokens, in ``0..length-1`` (negative counted from its end)."""
        raw = self.shared if self.per_text is None else self.per_text[i]
        out = []
        for p in raw:
            if not -length <= p < length:
                where = "" if self.per_text is None else f" (text {i})"
                raise SinkwidgetsValueError(
                    f"{self.name}: position {p} is out of range{where}: text {i} has {length} tokens; use "
                    f"0..{length - 1} (or -{length}..-1 to count from its end), or pass max_tokens/shorter positions")
            out.append(p % length)
        return out

    def resolve(self, lengths: Sequence[int]) -> list[list[int]]:
        """Positions per text for texts of ``lengths`` tokens (checks every text; see :meth:`for_text`)."""
        if self.per_text is not None and len(self.per_text) != len(lengths):
            raise SinkwidgetsValueError(f"{self.name}: {len(self.per_text)} lists of positions for {len(lengths)} "
                                        f"texts; give one list per text, or one list for all texts")
        return [self.for_text(i, int(n)) for i, n in enumerate(lengths)]


def _is_seq(x: Any) -> bool:
    return isinstance(x, (list, tuple, range)) or (isinstance(x, np.ndarray) and x.ndim == 1)


def positions(name: str, value: Any, *, n_texts: int | None = None) -> Positions:
    """Token positions, global or per text (see :class:`Positions`).

    Accepted forms: one int, or a list / tuple / ``range`` / 1-D integer array of ints (the same positions in every
    text); a list of such lists, one per text (their count must equal ``n_texts`` when given); a ``[n_texts, k]``
    integer array is per text too. Negative positions count from the end of each text. A string is refused (it is
    never a list of positions), as are floats, bools, empty lists and a mix of ints and lists.
    """
    want = "an int, a list of ints (the same in every text), or one list of ints per text"
    eg = "[3, 5, 7]"
    if isinstance(value, (str, bytes)):
        raise _type_error(name, value, want + " (a string is not a list of positions)", eg)
    if is_int(value):
        return Positions(name, shared=(int(value),))
    if isinstance(value, np.ndarray) and value.ndim == 2:
        value = [list(r) for r in value]
    if not _is_seq(value):
        raise _type_error(name, value, want, eg)
    items = list(value)
    if not items:
        raise _value_error(name, value, "no positions are given", f"give at least one, e.g. {name}={eg}")
    nested = [_is_seq(v) or isinstance(v, (str, bytes)) for v in items]
    if not any(nested):
        return Positions(name, shared=tuple(_int_items(name, value, want, eg)))
    if not all(nested):
        raise _type_error(name, value, want + " (not a mix of ints and lists)", "[[3, 5], [2, 4]]")
    per = []
    for i, v in enumerate(items):
        if isinstance(v, (str, bytes)):
            raise _type_error(name, value, want + f" (entry {i} is a string)", "[[3, 5], [2, 4]]")
        ints = _int_items(name, v, want, "[[3, 5], [2, 4]]")
        if not ints:
            raise _value_error(name, value, f"the positions of text {i} are empty",
                               "give at least one position per text, or drop the text")
        per.append(tuple(ints))
    if n_texts is not None and len(per) != n_texts:
        raise _value_error(name, value, f"{len(per)} lists of positions for {n_texts} texts",
                           "give one list per text (in the texts' order), or one flat list for every text")
    return Positions(name, per_text=tuple(per))


def positions_per_text(name: str, value: Any, lengths: Sequence[int]) -> list[list[int]]:
    """:func:`positions` resolved against the texts' token counts ``lengths``: a list of ``len(lengths)`` lists of
    positions in ``0..T_i-1``."""
    return positions(name, value, n_texts=len(lengths)).resolve(lengths)


def token_id(name: str, value: Any, vocab_size: int | None = None) -> int:
    """One token id: an int in ``0..vocab_size-1`` (negative ids are refused)."""
    top = None if vocab_size is None else vocab_size - 1
    return integer(name, value, minimum=0, maximum=top, example=0)


def token_ids(name: str, value: Any, vocab_size: int | None = None) -> list[int]:
    """Token ids: one int or a non-empty list / tuple / 1-D integer array of ints in ``0..vocab_size-1``."""
    if is_int(value):
        return [token_id(name, value, vocab_size)]
    items = _int_items(name, value, "a token id or a list of token ids (ints)", "[1, 2]")
    if not items:
        raise _value_error(name, value, "no token ids are given", f"e.g. {name}=[1, 2]")
    for t in items:
        if t < 0 or (vocab_size is not None and t >= vocab_size):
            fix = "use ids >= 0" if vocab_size is None else f"use ids in 0..{vocab_size - 1} (the vocabulary)"
            raise _value_error(name, value, f"token id {t} is out of range", fix)
    return items


# ----------------------------------------------------------------------------- labels
def _label_array(name: str, value: Any, n: int | None) -> np.ndarray:
    if isinstance(value, (list, tuple, range)):
        arr = np.empty(len(value), dtype=object)
        arr[:] = list(value)
    elif isinstance(value, np.ndarray) or (hasattr(value, "__array__") and not isinstance(value, (str, bytes))):
        arr = np.asarray(value)
    else:
        arr = None
    if arr is None or arr.ndim == 0:
        raise _type_error(name, value, "one label per item (a list or 1-D array)", "[0, 1, 1, 0]")
    if arr.ndim != 1:
        raise _value_error(name, value, f"labels must be 1-D, got shape {list(arr.shape)}",
                           "give one label per item")
    if n is not None and len(arr) != n:
        raise _value_error(name, value, f"{len(arr)} labels for {n} items", f"give exactly {n} labels")
    return arr


def labels(name: str, value: Any, n: int | None = None) -> np.ndarray:
    """Integer class labels ``[n]`` as int64.

    Accepts ints (Python or numpy), bools and integral floats (``1.0``). Refuses non-integral floats (``0.2`` is not
    truncated to ``0``), NaN, strings (use a function that documents any two classes, e.g. :func:`binary_labels`),
    and a count other than ``n``.
    """
    arr = _label_array(name, value, n)
    out = np.empty(len(arr), dtype=np.int64)
    for i, v in enumerate(arr.tolist()):
        if isinstance(v, (bool, np.bool_)) or is_int(v):
            out[i] = _int64(name, value, i, int(v))
        elif isinstance(v, (float, np.floating)):
            if not np.isfinite(v) or float(v) != int(v):
                raise _value_error(name, value, f"label {i} is {v!r}, not an integer (labels are classes, not "
                                                "scores)", "give integer classes, e.g. round or threshold the "
                                                               "scores yourself: (np.asarray(scores) > 0.5).astype(int)")
            out[i] = _int64(name, value, i, int(v))
        else:
            raise _type_error(name, value, f"integer class labels (label {i} is {show(v)}, a {type(v).__name__})",
                              "[0, 1, 1, 0]")
    return out


def _int64(name: str, value: Any, i: int, v: int) -> int:
    if not -(2**63) <= v < 2**63:
        raise _value_error(name, value, f"label {i} ({v}) does not fit a 64-bit integer", "give small class numbers")
    return v


def binary_labels(name: str, value: Any, n: int | None = None) -> tuple[np.ndarray, tuple[Any, Any]]:
    """Two-class labels as ``(codes [n] int64 in {0, 1}, (class_0, class_1))``.

    Any two distinct hashable classes are accepted (``"true"``/``"false"``, bools, ints, integral floats);
    ``class_0`` is the smaller one when they compare (so ``0``/``1`` and ``False``/``True`` keep their codes),
    otherwise the first seen. Refused: one class only, more than two, non-integral floats, NaN.
    """
    arr = _label_array(name, value, n)
    items = []
    for i, v in enumerate(arr.tolist()):
        if isinstance(v, (float, np.floating)) and (not np.isfinite(v) or float(v) != int(v)):
            raise _value_error(name, value, f"label {i} is {v!r}, not a class", "give two classes, e.g. [0, 1, 1, 0]")
        if isinstance(v, (float, np.floating)):
            v = int(v)
        elif isinstance(v, np.generic):
            v = v.item()
        try:
            if isinstance(v, (tuple, list, dict, set, np.ndarray)):
                raise TypeError
            hash(v)
        except TypeError:
            raise _type_error(name, value, f"two classes (label {i} is a {type(v).__name__})", "[0, 1, 1, 0]") \
                from None
        items.append(v)
    classes = list(dict.fromkeys(items))
    if len(classes) != 2:
        raise _value_error(name, value, f"labels must hold exactly two classes, found {len(classes)} "
                                        f"({', '.join(show(c, 20) for c in classes[:5])})",
                           "give both classes (e.g. [0, 1, 1, 0]), with at least one item of each")
    try:
        if bool(classes[1] < classes[0]):
            classes.reverse()
    except Exception:  # noqa: BLE001 - classes that do not compare keep the order first seen
        pass
    codes = np.array([classes.index(v) for v in items], dtype=np.int64)
    return codes, (classes[0], classes[1])


# ----------------------------------------------------------------------------- bases
def basis(name: str, value: Any, d: int | None = None, *, rtol: float = 1e-6) -> np.ndarray:
    """A subspace basis ``[d, r]`` as float64: finite, not zero, full column rank (``1 <= r <= d``).

    A vector ``[d]`` is one column. The rank is the number of singular values above ``rtol`` times the largest, so
    a basis whose columns are (nearly) dependent is refused, as is a ``[r, d]`` matrix given the wrong way round
    (the message says to transpose it). Returns the columns as given (see :func:`orthonormal_basis`).
    """
    eg = "np.linalg.qr(np.random.randn(d, 2))[0]"
    if np.iscomplexobj(value):
        raise _type_error(name, value, "a real [d, r] matrix (complex numbers are not a basis here)", eg)
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError, OverflowError):
        raise _type_error(name, value, "a [d, r] float matrix (r basis vectors as columns)", eg) from None
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.ndim != 2 or arr.shape[1] < 1 or arr.shape[0] < 1:
        raise _value_error(name, value, f"a basis is [d, r] (r >= 1 columns), got shape {list(arr.shape)}",
                           f"e.g. {name}={eg}")
    if d is not None and arr.shape[0] != d:
        hint = " (it looks transposed: pass basis.T)" if arr.shape[1] == d else ""
        raise _value_error(name, value, f"a basis here is [d={d}, r], got shape {list(arr.shape)}{hint}",
                           f"give r columns of length {d}")
    if arr.shape[1] > arr.shape[0]:
        raise _value_error(name, value, f"{arr.shape[1]} columns in {arr.shape[0]} dimensions cannot be independent",
                           "give r <= d columns (transpose it if the vectors are rows)")
    if not np.isfinite(arr).all():
        bad = int((~np.isfinite(arr)).any(axis=0).sum())
        raise _value_error(name, value, f"{bad} column(s) hold NaN or infinity", "give finite basis vectors")
    s = np.linalg.svd(arr, compute_uv=False)
    if s[0] == 0:
        raise _value_error(name, value, "the basis is all zeros: it spans nothing", "give non-zero basis vectors")
    rank = int((s > rtol * s[0]).sum())
    if rank < arr.shape[1]:
        raise _value_error(name, value, f"the basis has rank {rank} < {arr.shape[1]} columns (dependent or zero "
                                        "columns)", f"drop the dependent columns, e.g. keep {rank} independent ones")
    return arr


def orthonormal_basis(name: str, value: Any, d: int | None = None, *, rtol: float = 1e-6) -> np.ndarray:
    """:func:`basis`, then orthonormalised (QR): ``[d, r]`` float64 with ``Q.T @ Q = I`` spanning the same space."""
    q, _ = np.linalg.qr(basis(name, value, d, rtol=rtol))
    return q


# ----------------------------------------------------------------------------- data arrays and generators
def array(name: str, value: Any, *, ndim: int, shape: str = "", min_rows: int = 1, finite: bool = True,
          example: str = "np.random.randn(10, 4)") -> np.ndarray:
    """``value`` as a float64 array of ``ndim`` dimensions (the documented ``shape``, e.g. ``"[n, d]"``).

    Refuses strings, ``None``, objects and complex numbers (:class:`ArgumentTypeError`), another number of dimensions,
    fewer than ``min_rows`` rows (entries along axis 0) or an empty axis (:class:`SinkwidgetsValueError`), and, with
    ``finite``, NaN or infinity: the message counts the rows (entries along axis 0) that hold them and names the first
    five (docs/tags.md, "Non-finite data": a non-finite row is never used silently). Integer and bool arrays are
    converted to float64.
    """
    shape = shape or ("[" + ", ".join("n" if i == 0 else f"d{i}" for i in range(ndim)) + "]")
    want = f"a {shape} array of real numbers"
    if isinstance(value, (str, bytes, dict, set)) or value is None:
        raise _type_error(name, value, want, example)
    if isinstance(value, np.ndarray) and value.dtype.kind in "fiub":
        arr = value
    else:
        try:
            arr = np.asarray(value)
        except (TypeError, ValueError, OverflowError):  # ragged nested lists
            raise _type_error(name, value, want + " (rows of equal length)", example) from None
    if arr.dtype.kind not in "fiub":
        what = {"c": "complex numbers", "U": "strings", "S": "bytes", "O": "objects or ragged rows",
                "M": "dates", "m": "time deltas"}.get(arr.dtype.kind, f"dtype {arr.dtype}")
        raise _type_error(name, value, f"{want} (it holds {what})", example)
    if arr.ndim != ndim:
        raise _value_error(name, value, f"{name} must be {shape} ({ndim}-D), got shape {list(arr.shape)}",
                           f"e.g. {name}={example}")
    if ndim and (arr.shape[0] < min_rows or 0 in arr.shape[1:]):
        raise _value_error(name, value, f"{name} is {shape} with at least {min_rows} row(s) and no empty axis, got "
                                        f"shape {list(arr.shape)}", f"e.g. {name}={example}")
    arr = arr.astype(np.float64, copy=False)
    if finite and not np.isfinite(arr).all():
        bad_rows = ~np.isfinite(arr).reshape(len(arr), -1).all(axis=1) if ndim else np.array([True])
        idx = np.nonzero(bad_rows)[0]
        where = ", ".join(str(int(i)) for i in idx[:5]) + (f" and {len(idx) - 5} more" if len(idx) > 5 else "")
        raise _value_error(name, value, f"{len(idx)} of {len(arr) if ndim else 1} rows hold NaN or infinity "
                                        f"(rows {where})",
                           "leave those rows out, e.g. X[np.isfinite(X).all(axis=1)], or compute them in float32 "
                           "(an fp16 overflow is enough)")
    return arr


def generator(name: str, value: Any) -> np.random.Generator:
    """A random generator: a ``numpy.random.Generator`` as given, or a seed (an integer >= 0) for
    ``numpy.random.default_rng``. Anything else (``None``, a float, a string, a legacy ``RandomState``) is refused."""
    if isinstance(value, np.random.Generator):
        return value
    if is_int(value):
        return np.random.default_rng(seed(name, value))
    raise _type_error(name, value, "a numpy.random.Generator or a seed (an integer >= 0)", "np.random.default_rng(0)")
