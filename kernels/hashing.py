"""Stable 64-bit term hashes, computed in Numba over code points.

A word term is hashed with FNV-1a over its (lowercased, normalised) code points, then mixed
with the splitmix64 finaliser; a number term is the finaliser applied to the IEEE-754 bits of
its canonical value xor a salt. The same text gives the same hashes in every process and on
every machine (unlike Python's salted ``hash``), so term arrays can be cached or compared
across processes.

Suffix normalisation (applied identically to response and context terms, on the lowercased
token, after the stop-word check):

1. ``-ies`` -> ``-i`` when the token is longer than 4 (``companies`` -> ``compani``);
   otherwise a final ``s`` is dropped when the token is longer than 3 and does not end in
   ``ss``, ``us`` or ``is`` (``revenues`` -> ``revenue``, ``class``/``status``/``analysis`` kept);
2. then, if the stem is longer than 3, a final ``e`` is dropped and a final ``y`` becomes ``i``
   (``revenue`` -> ``revenu``, ``company`` -> ``compani``, ``boxes`` -> ``boxe`` -> ``box``).

So singular and plural meet on one stem: revenue/revenues, company/companies, box/boxes,
movie/movies, class/classes, tax/taxes. Tokens shorter than 2 code points are not terms.
"""

from __future__ import annotations

import numpy as np
from numba import njit, types

# Code points arrive as np.frombuffer(text.encode("utf-32-le")) views: read-only, never copied.
CODES = types.Array(types.uint32, 1, "C", readonly=True)

_FNV_OFFSET = np.uint64(0xCBF29CE484222325)
_FNV_PRIME = np.uint64(0x100000001B3)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)
_WORD_SALT = np.uint64(0x9E3779B97F4A7C15)
_NUMBER_SALT = np.uint64(0xD1B54A32D192ED03)
_S30 = np.uint64(30)
_S27 = np.uint64(27)
_S31 = np.uint64(31)

_SPACE = 32
_CH_S = 115  # 's'
_CH_E = 101  # 'e'
_CH_Y = 121  # 'y'
_CH_I = 105  # 'i'
_CH_U = 117  # 'u'


@njit("uint64(uint64)", cache=True, nogil=True)
def _finish(z):  # type: ignore[no-untyped-def]
    z = (z ^ (z >> _S30)) * _MIX1
    z = (z ^ (z >> _S27)) * _MIX2
    return z ^ (z >> _S31)


@njit(types.uint64(CODES, types.int64, types.int64, types.int64), cache=True, nogil=True)
def _fnv(codes, start, end, extra):  # type: ignore[no-untyped-def]
    """FNV-1a over codes[start:end], then ``extra`` as one more code point when >= 0."""
    h = _FNV_OFFSET
    for i in range(start, end):
        h = (h ^ np.uint64(codes[i])) * _FNV_PRIME
    if extra >= 0:
        h = (h ^ np.uint64(extra)) * _FNV_PRIME
    return h


@njit(types.uint64[::1](CODES), cache=True, nogil=True)
def token_raw_hashes(codes):  # type: ignore[no-untyped-def]
    """Raw FNV-1a of each space-separated token, no filtering (used for the stop-word table)."""
    n = codes.shape[0]
    out = np.empty(n // 2 + 1, dtype=np.uint64)
    k = 0
    i = 0
    while i < n:
        while i < n and codes[i] == _SPACE:
            i += 1
        if i >= n:
            break
        s = i
        while i < n and codes[i] != _SPACE:
            i += 1
        out[k] = _fnv(codes, s, i, -1)
        k += 1
    return out[:k].copy()


@njit(types.uint64[::1](CODES, types.uint64[::1]), cache=True, nogil=True)
def word_term_hashes(codes, stop_sorted):  # type: ignore[no-untyped-def]
    """Hashes of the content words of ``codes``: lowercased tokens separated by single spaces.

    Tokens of one code point and tokens whose raw hash is in ``stop_sorted`` (ascending) are
    skipped; the rest are suffix-normalised (see the module docstring) and hashed.
    """
    n = codes.shape[0]
    n_stop = stop_sorted.shape[0]
    out = np.empty(n // 2 + 1, dtype=np.uint64)
    k = 0
    i = 0
    while i < n:
        while i < n and codes[i] == _SPACE:
            i += 1
        if i >= n:
            break
        s = i
        while i < n and codes[i] != _SPACE:
            i += 1
        e = i
        length = e - s
        if length < 2:
            continue
        if n_stop > 0:
            raw = _fnv(codes, s, e, -1)
            j = np.searchsorted(stop_sorted, raw)
            if j < n_stop and stop_sorted[j] == raw:
                continue
        end = e
        extra = -1
        if length > 4 and codes[e - 3] == _CH_I and codes[e - 2] == _CH_E and codes[e - 1] == _CH_S:
            end = e - 3
            extra = _CH_I
        elif (
            length > 3
            and codes[e - 1] == _CH_S
            and codes[e - 2] != _CH_S
            and codes[e - 2] != _CH_U
            and codes[e - 2] != _CH_I
        ):
            end = e - 1
        if extra < 0 and end - s > 3:
            last = codes[end - 1]
            if last == _CH_E:
                end -= 1
            elif last == _CH_Y:
                end -= 1
                extra = _CH_I
        out[k] = _finish(_fnv(codes, s, end, extra) ^ _WORD_SALT)
        k += 1
    return out[:k].copy()


@njit("uint64[::1](uint64[::1])", cache=True, nogil=True)
def number_term_hashes(value_bits):  # type: ignore[no-untyped-def]
    """Hash of each number term from the IEEE-754 bits of its canonical float64 value."""
    out = np.empty(value_bits.shape[0], dtype=np.uint64)
    for i in range(value_bits.shape[0]):
        out[i] = _finish(value_bits[i] ^ _NUMBER_SALT)
    return out
