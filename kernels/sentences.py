"""Sentence (claim) spans of a text, found by a Numba kernel over its code points.

``split_sentences(text)`` returns ``int64[k, 2]`` rows ``(start, end)``: Python ``str`` offsets
(``text[start:end]`` is the sentence), leading and trailing whitespace excluded, in order.

Rules:

- A sentence ends after a run of ``.``, ``!``, ``?``, ``…`` (plus closing quotes/brackets)
  that is followed by whitespace or the end of the text, or at a line break (LLM answers use
  lines for lists and headings), or after a full-width ``。！？``.
- It does not end when the next word starts with a lowercase ASCII letter (``e.g. the``,
  ``approx. five``), when the ``.`` closes a known abbreviation (``Dr.``, ``Mr.``, ``e.g.``,
  ``i.e.``, ``vs.``, ``No.``, ``U.S.``...: :data:`ABBREVIATIONS`), a single capital initial
  (``J. Smith``) or a list number at the start of the sentence (``1. First``).
- A ``.`` between non-space characters never ends one (``3.5``, ``example.com``).
- Text without terminal punctuation is one sentence; blank text gives no rows.
- Whitespace and line breaks are exactly Python's (``str.isspace``, ``str.splitlines``).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from numba import njit, types

from certus.kernels.terms import codes_of
from certus.kernels.validation import require_str

#: Abbreviations (lowercase, without the final period) after which "." does not end a sentence.
ABBREVIATIONS: tuple[str, ...] = (
    "mr", "mrs", "ms", "dr", "prof", "sr", "jr", "st", "mt", "rev", "hon", "gen", "col", "lt",
    "sgt", "capt", "gov", "sen", "rep", "pres", "vs", "cf", "al", "approx", "dept", "fig",
    "figs", "eq", "no", "nos", "vol", "vols", "pp", "ch", "sec", "e.g", "i.e", "u.s", "u.k",
    "jan", "feb", "apr", "jun", "jul", "aug", "sep", "sept", "oct", "nov", "dec",
)  # fmt: skip

_CODES = types.Array(types.uint32, 1, "C", readonly=True)


@njit("boolean(uint32)", cache=True, nogil=True)
def _is_space(c):  # type: ignore[no-untyped-def]
    """str.isspace()."""
    return (
        c == 32
        or 9 <= c <= 13
        or 0x1C <= c <= 0x1F
        or c == 0x85
        or c == 0xA0
        or c == 0x1680
        or 0x2000 <= c <= 0x200A
        or c == 0x2028
        or c == 0x2029
        or c == 0x202F
        or c == 0x205F
        or c == 0x3000
    )


@njit("boolean(uint32)", cache=True, nogil=True)
def _is_line_break(c):  # type: ignore[no-untyped-def]
    """The code points at which str.splitlines() breaks."""
    return 10 <= c <= 13 or 0x1C <= c <= 0x1E or c == 0x85 or c == 0x2028 or c == 0x2029


@njit("boolean(uint32)", cache=True, nogil=True)
def _is_terminal(c):  # type: ignore[no-untyped-def]
    return c == 46 or c == 33 or c == 63 or c == 0x2026  # . ! ? …


@njit("boolean(uint32)", cache=True, nogil=True)
def _is_wide_terminal(c):  # type: ignore[no-untyped-def]
    return c == 0x3002 or c == 0xFF01 or c == 0xFF1F  # 。！？


@njit("boolean(uint32)", cache=True, nogil=True)
def _is_closer(c):  # type: ignore[no-untyped-def]
    # " ' ) ] } ” ’ »
    return c == 34 or c == 39 or c == 41 or c == 93 or c == 125 or c == 0x201D or c == 0x2019 or c == 0xBB


@njit("boolean(uint32)", cache=True, nogil=True)
def _is_opener(c):  # type: ignore[no-untyped-def]
    # " ' ( [ { “ ‘ «
    return c == 34 or c == 39 or c == 40 or c == 91 or c == 123 or c == 0x201C or c == 0x2018 or c == 0xAB


@njit("uint32(uint32)", cache=True, nogil=True)
def _lower_ascii(c):  # type: ignore[no-untyped-def]
    if 65 <= c <= 90:
        return c + 32
    return c


@njit(types.boolean(_CODES, types.int64, types.int64), cache=True, nogil=True)
def _keeps_going(codes, dot, sentence_start):  # type: ignore[no-untyped-def]
    """Is the "." at ``dot`` part of the sentence (initial or list number) rather than its end?"""
    s = dot
    while s > sentence_start and not _is_space(codes[s - 1]) and not _is_opener(codes[s - 1]):
        s -= 1
    length = dot - s
    if length == 1 and 65 <= codes[s] <= 90:
        return True  # an initial: "J. Smith"
    if length >= 1 and s == sentence_start:
        digits = True
        for i in range(s, dot):
            if not (48 <= codes[i] <= 57):
                digits = False
                break
        if digits:
            return True  # "1. First item"
    return False


@njit(
    types.boolean(_CODES, types.int64, types.int64, types.uint32[::1], types.int64[::1]),
    cache=True,
    nogil=True,
)
def _is_abbreviation(codes, dot, sentence_start, abbr, abbr_offsets):  # type: ignore[no-untyped-def]
    s = dot
    while s > sentence_start and not _is_space(codes[s - 1]) and not _is_opener(codes[s - 1]):
        s -= 1
    length = dot - s
    for a in range(abbr_offsets.shape[0] - 1):
        a0 = abbr_offsets[a]
        if abbr_offsets[a + 1] - a0 != length:
            continue
        same = True
        for i in range(length):
            if _lower_ascii(codes[s + i]) != abbr[a0 + i]:
                same = False
                break
        if same:
            return True
    return False


@njit(types.int64[:, ::1](_CODES, types.uint32[::1], types.int64[::1]), cache=True, nogil=True)
def _split_sentences(codes, abbr, abbr_offsets):  # type: ignore[no-untyped-def]
    n = codes.shape[0]
    spans = np.empty((n // 2 + 2, 2), dtype=np.int64)
    k = 0
    start = -1  # first code point of the current sentence; -1: between sentences
    last = -1  # one past its last non-space code point
    i = 0
    while i < n:
        c = codes[i]
        if start < 0:
            if _is_space(c):
                i += 1
                continue
            start = i
        if _is_line_break(c):
            spans[k, 0] = start
            spans[k, 1] = last
            k += 1
            start = -1
            i += 1
            continue
        if _is_space(c):
            i += 1
            continue
        last = i + 1
        if _is_wide_terminal(c):
            j = i + 1
            while j < n and (_is_wide_terminal(codes[j]) or _is_closer(codes[j])):
                j += 1
            spans[k, 0] = start
            spans[k, 1] = j
            k += 1
            start = -1
            i = j
            continue
        if not _is_terminal(c):
            i += 1
            continue
        j = i + 1
        while j < n and _is_terminal(codes[j]):
            j += 1
        single_dot = c == 46 and j == i + 1
        while j < n and _is_closer(codes[j]):
            j += 1
        if j < n:
            if not _is_space(codes[j]):
                i += 1  # "3.5", "e.g", "example.com": inside a token
                continue
            p = j
            while p < n and _is_space(codes[p]) and not _is_line_break(codes[p]):
                p += 1
            if p < n and 97 <= codes[p] <= 122:
                last = j  # next word in lowercase: the sentence goes on
                i = j
                continue
            if single_dot and (
                _is_abbreviation(codes, i, start, abbr, abbr_offsets) or _keeps_going(codes, i, start)
            ):
                last = j
                i = j
                continue
        spans[k, 0] = start
        spans[k, 1] = j
        k += 1
        start = -1
        i = j
    if start >= 0 and last > start:
        spans[k, 0] = start
        spans[k, 1] = last
        k += 1
    return spans[:k].copy()


@lru_cache(maxsize=1)
def _abbreviation_table() -> tuple[np.ndarray, np.ndarray]:
    codes = np.array([ord(ch) for word in ABBREVIATIONS for ch in word], dtype=np.uint32)
    offsets = np.zeros(len(ABBREVIATIONS) + 1, dtype=np.int64)
    np.cumsum([len(w) for w in ABBREVIATIONS], out=offsets[1:])
    return codes, offsets


def split_sentences(text: str) -> np.ndarray:
    """``int64[k, 2]`` (start, end) character spans of the sentences of ``text``."""
    require_str(text, "text")
    abbr, offsets = _abbreviation_table()
    spans: np.ndarray = _split_sentences(codes_of(text), abbr, offsets)
    return spans
