"""Content terms of a text -> ``int64`` term hashes.

Pipeline (C-level ``re`` and ``str`` methods, then one Numba pass; see ``kernels.hashing``):

1. lowercase;
2. numbers are taken out (``kernels.numbers``) and become *number terms*, keyed by value, so
   ``$89.5B`` and ``89,500,000,000 dollars`` are the same term;
3. possessive ``'s``/``’s`` is dropped, other apostrophes are removed (``don't`` -> ``dont``);
4. everything that is not a letter or digit separates words (``_`` included);
5. the Numba kernel drops one-character words and stop words (``data/stopwords_en.txt``),
   normalises plural suffixes and hashes each word.

The result is a multiset: one entry per occurrence, words first, then numbers. Order carries
no meaning. Known limits: no stemming beyond plurals, scripts written without spaces (CJK)
give one term per run of letters, numbers written in words ("five") are plain words.
"""

from __future__ import annotations

import re
from functools import lru_cache
from importlib import resources

import numpy as np

from certus.kernels.hashing import number_term_hashes, token_raw_hashes, word_term_hashes
from certus.kernels.numbers import NumberScan
from certus.kernels.validation import require_str

_APOSTROPHES = re.compile(r"['\u2019]s\b|['\u2019`]")
_WORD = re.compile(r"[^\W_]+")


def _load_stop_words() -> tuple[str, ...]:
    text = resources.files("certus.kernels").joinpath("data/stopwords_en.txt").read_text(encoding="utf-8")
    words = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            words.append(line)
    return tuple(words)


#: The English stop words shipped with the package (lowercase, apostrophes removed).
STOP_WORDS: frozenset[str] = frozenset(_load_stop_words())


def codes_of(text: str) -> np.ndarray:
    """Read-only ``uint32`` code points of ``text``; index i is ``text[i]`` (no copy)."""
    return np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)


@lru_cache(maxsize=1)
def stop_word_hashes() -> np.ndarray:
    """Sorted raw hashes of :data:`STOP_WORDS`, computed once on first use."""
    return np.sort(token_raw_hashes(codes_of(" ".join(sorted(STOP_WORDS)))))


def word_text(rest: str) -> str:
    """Steps 3-4 on lowercased text whose numbers are already blanked out: the words,
    separated by single spaces."""
    if "'" in rest or "\u2019" in rest or "`" in rest:
        rest = _APOSTROPHES.sub("", rest)
    return " ".join(_WORD.findall(rest))


def terms_from_scan(scan: NumberScan) -> np.ndarray:
    words: np.ndarray = word_term_hashes(codes_of(word_text(scan.rest)), stop_word_hashes())
    if scan.values:
        bits = np.array(scan.values, dtype=np.float64).view(np.uint64)
        words = np.concatenate((words, number_term_hashes(bits)))
    return words.view(np.int64)


def extract_terms(text: str) -> np.ndarray:
    """``int64[t]`` hashes of the content terms of ``text`` (words, then numbers)."""
    require_str(text, "text")
    return terms_from_scan(NumberScan(text.lower()))
