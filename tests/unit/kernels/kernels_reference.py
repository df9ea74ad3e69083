"""Plain Python / NumPy references for the kernels: written for clarity, not speed, and
independently of the Numba code (string methods and Python ints instead of code-point loops)."""

from __future__ import annotations

import math

import numpy as np

_M64 = (1 << 64) - 1


def _fnv(text: str) -> int:
    h = 0xCBF29CE484222325
    for ch in text:
        h = ((h ^ ord(ch)) * 0x100000001B3) & _M64
    return h


def _finish(z: int) -> int:
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _M64
    return z ^ (z >> 31)


def _signed(u: int) -> int:
    return u - (1 << 64) if u >= 1 << 63 else u


def normalise(word: str) -> str:
    """Plural folding, as documented in kernels.hashing."""
    if len(word) > 4 and word.endswith("ies"):
        return word[:-3] + "i"
    if len(word) > 3 and word.endswith("s") and word[-2] not in "sui":
        word = word[:-1]
    if len(word) > 3 and word.endswith("e"):
        return word[:-1]
    if len(word) > 3 and word.endswith("y"):
        return word[:-1] + "i"
    return word


def word_hash(normalised: str) -> int:
    return _signed(_finish(_fnv(normalised) ^ 0x9E3779B97F4A7C15))


def number_hash(value: float) -> int:
    bits = int(np.array([value], dtype=np.float64).view(np.uint64)[0])
    return _signed(_finish(bits ^ 0xD1B54A32D192ED03))


def _is_word_char(ch: str) -> bool:
    return ch.isalnum()  # re's [^\W_]


def words(rest: str) -> list[str]:
    """Lowercased text (numbers blanked) -> raw words, by a character loop."""
    out: list[str] = []
    cur: list[str] = []
    i = 0
    n = len(rest)
    while i < n:
        ch = rest[i]
        if ch in "'\u2019`":
            nxt = rest[i + 1] if i + 1 < n else ""
            after = rest[i + 2] if i + 2 < n else ""
            if ch != "`" and nxt == "s" and not (after.isalnum() or after == "_"):
                i += 2  # possessive 's
            else:
                i += 1
            continue
        if _is_word_char(ch):
            cur.append(ch)
        elif cur:
            out.append("".join(cur))
            cur = []
        i += 1
    if cur:
        out.append("".join(cur))
    return out


def term_list(rest: str, values: list[float], stop_words: frozenset[str]) -> list[int]:
    terms = [word_hash(normalise(w)) for w in words(rest) if len(w) >= 2 and w not in stop_words]
    return terms + [number_hash(v) for v in values]


def term_grounding(resp: list[int], ctx: list[int]) -> float:
    if not resp:
        return 1.0
    pool = set(ctx)
    return sum(1 for t in resp if t in pool) / len(resp)


def term_grounding_matrix(a: list[list[int]], b: list[list[int]]) -> list[list[float]]:
    return [[term_grounding(x, y) for y in b] for x in a]


def numbers_agree(x: tuple[float, float], y: tuple[float, float], rel_tol: float) -> bool:
    if abs(x[0] - y[0]) > rel_tol * max(abs(x[0]), abs(y[0])):
        return False
    return x[1] == y[1] or x[1] == 0 or y[1] == 0


def numeric_consistency(resp: list[tuple[float, float]], ctx: list[tuple[float, float]], rel_tol: float) -> float:
    if not resp:
        return 1.0
    return sum(1 for r in resp if any(numbers_agree(r, c, rel_tol) for c in ctx)) / len(resp)


def cosine_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a64 = a.astype(np.float64)
    b64 = b.astype(np.float64)
    out = np.zeros((a.shape[0], b.shape[0]), dtype=np.float64)
    for i in range(a.shape[0]):
        for j in range(b.shape[0]):
            na = math.sqrt(float(a64[i] @ a64[i]))
            nb = math.sqrt(float(b64[j] @ b64[j]))
            if na > 0 and nb > 0:
                out[i, j] = min(1.0, max(-1.0, float(a64[i] @ b64[j]) / (na * nb)))
    return out


def max_and_argmax_rows(m: np.ndarray) -> tuple[list[float], list[int]]:
    best: list[float] = []
    arg: list[int] = []
    for row in m.tolist():
        if not row:
            best.append(0.0)
            arg.append(-1)
        else:
            v = max(row)
            best.append(v)
            arg.append(row.index(v))
    return best, arg


def mean_pool(hidden: np.ndarray, mask: np.ndarray, normalize: bool) -> np.ndarray:
    h = hidden.astype(np.float64)
    m = mask.astype(np.float64)[:, :, None]
    counts = m.sum(axis=1)
    sums = (h * m).sum(axis=1)
    out = np.where(counts > 0, sums / np.maximum(counts, 1.0), 0.0)
    if normalize:
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        out = np.where(norms > 0, out / np.where(norms > 0, norms, 1.0), 0.0)
    return out


_SPACES = {chr(c) for c in range(0x110000) if chr(c).isspace()}
_BREAKS = {chr(c) for c in range(0x110000) if len(("a" + chr(c) + "b").splitlines()) == 2}
_TERMINALS = set(".!?\u2026")
_WIDE = set("\u3002\uff01\uff1f")
_CLOSERS = set("\"')]}\u201d\u2019\u00bb")
_OPENERS = set("\"'([{\u201c\u2018\u00ab")


def split_sentences(text: str, abbreviations: tuple[str, ...]) -> list[tuple[int, int]]:
    """The documented sentence rules, as a plain loop over the str."""
    spans: list[tuple[int, int]] = []
    n = len(text)
    start = None
    last = 0
    i = 0

    def token_before(dot: int, sentence_start: int) -> tuple[int, str]:
        s = dot
        while s > sentence_start and text[s - 1] not in _SPACES and text[s - 1] not in _OPENERS:
            s -= 1
        return s, text[s:dot]

    while i < n:
        ch = text[i]
        if start is None:
            if ch in _SPACES:
                i += 1
                continue
            start = i
        if ch in _BREAKS:
            spans.append((start, last))
            start = None
            i += 1
            continue
        if ch in _SPACES:
            i += 1
            continue
        last = i + 1
        if ch in _WIDE:
            j = i + 1
            while j < n and (text[j] in _WIDE or text[j] in _CLOSERS):
                j += 1
            spans.append((start, j))
            start = None
            i = j
            continue
        if ch not in _TERMINALS:
            i += 1
            continue
        j = i + 1
        while j < n and text[j] in _TERMINALS:
            j += 1
        single_dot = ch == "." and j == i + 1
        while j < n and text[j] in _CLOSERS:
            j += 1
        if j < n:
            if text[j] not in _SPACES:
                i += 1
                continue
            p = j
            while p < n and text[p] in _SPACES and text[p] not in _BREAKS:
                p += 1
            if p < n and "a" <= text[p] <= "z":
                last = j
                i = j
                continue
            if single_dot:
                s, tok = token_before(i, start)
                folded = "".join(c.lower() if "A" <= c <= "Z" else c for c in tok)
                initial = len(tok) == 1 and "A" <= tok <= "Z"
                enumerator = s == start and len(tok) >= 1 and all("0" <= c <= "9" for c in tok)
                if folded in abbreviations or initial or enumerator:
                    last = j
                    i = j
                    continue
        spans.append((start, j))
        start = None
        i = j
    if start is not None and last > start:
        spans.append((start, last))
    return spans
