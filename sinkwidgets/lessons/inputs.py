"""Inputs for sink experiments, offline: natural text, random tokens and one repeated token (Gu et al. 2025, §4).

===========================================  =====================================================================
``natural_texts(n, seed)``                   paragraphs of English prose from Python's own documentation
                                             (``pydoc_data.topics``, shipped with CPython: no download)
``random_text(model, n_tokens, seed)``       a string of uniformly random word tokens that tokenizes back to them
``repeated_text(model, n_tokens)``           one token repeated, e.g. ``" the the the ..."``, which tokenizes to
                                             ``n_tokens`` identical ids (so token 0 is the repeated token too)
===========================================  =====================================================================

Trace them with ``sw.trace(model, texts, max_tokens=T)`` to cut every prompt to the same length ``T``.
``model`` may be a model from :func:`sinkwidgets.load_model` or a Hugging Face tokenizer.
"""

from __future__ import annotations

import re

import numpy as np

from ..errors import SinkwidgetsRuntimeError, SinkwidgetsTypeError, SinkwidgetsValueError

__all__ = ["natural_texts", "random_text", "repeated_text", "REPEAT_CANDIDATES"]

#: strings tried, in order, by :func:`repeated_text`
REPEAT_CANDIDATES = (" the", " a", " and", " of", " x", " .", " ,")


def _tokenizer(model_or_tokenizer):
    tok = getattr(model_or_tokenizer, "tokenizer", model_or_tokenizer)
    if not callable(tok):
        raise SinkwidgetsTypeError(f"model: need a model from sinkwidgets.load_model or a tokenizer, got "
                                   f"{type(model_or_tokenizer).__name__}; e.g. sinkwidgets.load_model('smollm2-135m')")
    return tok


def _ids(tok, text: str) -> list[int]:
    return list(tok(text, add_special_tokens=False)["input_ids"])


def natural_texts(n: int = 16, seed: int = 0, min_words: int = 80) -> list[str]:
    """``n`` distinct paragraphs of ordinary English prose of at least ``min_words`` words.

    Taken from the Python language reference topics that ship with CPython (``pydoc_data.topics``), with code
    lines and reStructuredText markup removed; ``seed`` picks which paragraphs. Deterministic, offline.
    """
    if n < 1:
        raise SinkwidgetsValueError(f"n={n!r}: n must be >= 1 (the number of texts); e.g. n=16")
    from pydoc_data.topics import topics

    paras = []
    for key in sorted(topics):
        for block in re.split(r"\n\s*\n", topics[key]):
            lines = [ln.strip() for ln in block.splitlines()]
            # prose only: no indented code, no tables, no headings
            if any(ln.startswith((">>>", "...", "*", "+", "|", "=", "-", "^")) for ln in lines):
                continue
            text = re.sub(r"\s+", " ", " ".join(ln for ln in lines if ln))
            if len(text.split()) >= 25 and text.count("(") < 6 and re.search(r"[.!?]$", text):
                paras.append(text)
    paras = list(dict.fromkeys(paras))
    # consecutive paragraphs joined until each text has min_words words; the starts are drawn without overlap
    texts, i = [], 0
    while i < len(paras):
        j, words = i, 0
        while j < len(paras) and words < min_words:
            words += len(paras[j].split())
            j += 1
        if words >= min_words:
            texts.append(" ".join(paras[i:j]))
        i = j
    if len(texts) < n:
        raise SinkwidgetsValueError(f"n={n}: only {len(texts)} texts of >= {min_words} words are available; ask for "
                                    f"at most {len(texts)} or lower min_words")
    rng = np.random.default_rng(seed)
    return [texts[k] for k in sorted(rng.choice(len(texts), size=n, replace=False))]


def _word_tokens(tok) -> list[int]:
    vocab = tok.get_vocab() if hasattr(tok, "get_vocab") else {}
    out = []
    for _, i in sorted(vocab.items(), key=lambda kv: kv[1]):
        s = tok.decode([i])
        if len(s) >= 3 and s[0] == " " and s[1:].isalpha() and s[1:].isascii():
            out.append(i)
    if len(out) < 100:
        raise SinkwidgetsValueError("model: this tokenizer has too few ' word' tokens (< 100) to draw random text "
                                    "from; use a word-level BPE tokenizer such as SmolLM2's or Gemma's")
    return out


def random_text(model, n_tokens: int = 64, seed: int = 0, tries: int = 20) -> str:
    """A string of ``n_tokens`` uniformly random word tokens (space + letters) that tokenizes back to exactly them.

    Gu et al.'s "random tokens" input: no meaning, no grammar, but ordinary tokens.
    """
    if n_tokens < 1:
        raise SinkwidgetsValueError(f"n_tokens={n_tokens!r}: n_tokens must be >= 1; e.g. n_tokens=64")
    tok = _tokenizer(model)
    pool = _word_tokens(tok)
    rng = np.random.default_rng(seed)
    for _ in range(tries):
        ids = [int(i) for i in rng.choice(pool, size=n_tokens)]
        text = tok.decode(ids)
        if _ids(tok, text) == ids:
            return text
    raise SinkwidgetsRuntimeError(f"could not draw {n_tokens} random tokens that survive re-tokenization in "
                                  f"tries={tries} tries; pass a larger tries= or a smaller n_tokens=")


def repeated_text(model, n_tokens: int = 64, candidates=REPEAT_CANDIDATES) -> str:
    """One token repeated ``n_tokens`` times, as a string that tokenizes to ``n_tokens`` identical ids.

    Tries ``candidates`` in order (``" the"`` first). Gu et al. prove that with identical tokens, rotary and other
    relative position encodings give every position the same hidden state, so the first token cannot be special.
    """
    if n_tokens < 1:
        raise SinkwidgetsValueError(f"n_tokens={n_tokens!r}: n_tokens must be >= 1; e.g. n_tokens=64")
    tok = _tokenizer(model)
    for s in candidates:
        ids = _ids(tok, s * n_tokens)
        if len(ids) == n_tokens and len(set(ids)) == 1:
            return s * n_tokens
    raise SinkwidgetsValueError(f"candidates={candidates!r}: none repeats into identical tokens with this "
                                "tokenizer; pass other candidates=, e.g. candidates=(' the',)")
