"""How token text is shown to people: whitespace made visible, long runs shortened.

A token such as ``" "``, ``"\\n\\n"`` or a run of 90 spaces prints as nothing in a table. :func:`show_token`
writes each whitespace or control character as a visible symbol (the Unicode "control pictures" convention):

======================  =======  ===========================
character               shown    code point
======================  =======  ===========================
space                   ``␣``    U+2423 OPEN BOX
newline ``\\n``          ``⏎``    U+23CE RETURN SYMBOL
tab ``\\t``              ``⇥``    U+21E5 RIGHTWARDS ARROW TO BAR
carriage return         ``␍``    U+240D
other C0 control ``c``  ``chr(0x2400 + c)`` (``␀`` … ``␟``)
DEL                     ``␡``    U+2421
no-break space          ``⍽``    U+237D
other Unicode space     ``␣``
======================  =======  ===========================

A run of more than ``max_run`` identical whitespace characters is written once with its count (``␣×90``).
The empty string is shown as ``∅``. Text that is not whitespace is returned unchanged; the result is for display
only (saved data and JSON keep the raw token). This module imports nothing, so every layer (metrics, the command
line, the widgets) may use it.
"""

from __future__ import annotations

__all__ = ["show_token", "WHITESPACE_SYMBOLS"]

#: The visible symbol of each whitespace or control character that has a dedicated one.
WHITESPACE_SYMBOLS: dict[str, str] = {
    " ": "\u2423",  # ␣
    "\n": "\u23ce",  # ⏎
    "\t": "\u21e5",  # ⇥
    "\r": "\u240d",  # ␍
    "\x7f": "\u2421",  # ␡
    "\u00a0": "\u237d",  # ⍽
}
EMPTY = "\u2205"  # ∅


def _symbol(ch: str) -> str | None:
    sym = WHITESPACE_SYMBOLS.get(ch)
    if sym is not None:
        return sym
    code = ord(ch)
    if code < 0x20:
        return chr(0x2400 + code)
    if ch.isspace():
        return WHITESPACE_SYMBOLS[" "]
    return None


def show_token(token: str, max_run: int = 4) -> str:
    """``token`` with whitespace and control characters made visible, for tables and labels.

    Parameters
    ----------
    token : str
        One token's text (or any short string).
    max_run : int
        Runs of more than this many identical whitespace characters are written as ``<symbol>×<count>``
        (``"␣×90"``); 0 never shortens.

    Examples
    --------
    >>> show_token(" the")
    '␣the'
    >>> show_token("\\n\\n")
    '⏎⏎'
    >>> show_token(" " * 90)
    '␣×90'
    """
    if not isinstance(token, str):
        token = str(token)
    if token == "":
        return EMPTY
    out: list[str] = []
    i, n = 0, len(token)
    while i < n:
        ch = token[i]
        sym = _symbol(ch)
        if sym is None:
            out.append(ch)
            i += 1
            continue
        j = i + 1
        while j < n and token[j] == ch:
            j += 1
        run = j - i
        out.append(f"{sym}\u00d7{run}" if max_run and run > max_run else sym * run)
        i = j
    return "".join(out)
