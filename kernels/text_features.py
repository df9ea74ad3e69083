"""Text features for the grounding kernels, one text at a time or packed for many (CSR)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from certus.kernels.numbers import NumberScan
from certus.kernels.terms import terms_from_scan
from certus.kernels.validation import KernelInputError, require_array, require_numbers, require_str


@dataclass(frozen=True, slots=True)
class TextFeatures:
    """What the grounding kernels need of one text; no text kept.

    terms: int64[t] content-term hashes (see ``extract_terms``).
    numbers: float64[n, 2] (value, kind) rows (see ``extract_numbers``).
    """

    terms: np.ndarray
    numbers: np.ndarray


def features(text: str) -> TextFeatures:
    """Terms and numbers of ``text``, from a single scan."""
    require_str(text, "text")
    scan = NumberScan(text.lower())
    return TextFeatures(terms=terms_from_scan(scan), numbers=scan.table())


@dataclass(frozen=True, slots=True)
class PackedFeatures:
    """Features of k texts in CSR form, for the matrix kernels.

    Text i's terms are ``terms[term_offsets[i]:term_offsets[i + 1]]`` and its numbers
    ``numbers[number_offsets[i]:number_offsets[i + 1]]``.
    """

    term_offsets: np.ndarray  # int64[k + 1]
    terms: np.ndarray  # int64[T]
    number_offsets: np.ndarray  # int64[k + 1]
    numbers: np.ndarray  # float64[N, 2]

    def __len__(self) -> int:
        return int(self.term_offsets.shape[0]) - 1

    def item(self, i: int) -> TextFeatures:
        if not 0 <= i < len(self):
            raise IndexError(i)
        t0, t1 = int(self.term_offsets[i]), int(self.term_offsets[i + 1])
        n0, n1 = int(self.number_offsets[i]), int(self.number_offsets[i + 1])
        return TextFeatures(terms=self.terms[t0:t1], numbers=self.numbers[n0:n1])


def _offsets(lengths: list[int]) -> np.ndarray:
    out = np.zeros(len(lengths) + 1, dtype=np.int64)
    if lengths:
        np.cumsum(lengths, out=out[1:])
    return out


def pack_features(items: Sequence[TextFeatures]) -> PackedFeatures:
    """Concatenate the features of many texts into CSR arrays (copies; inputs are checked)."""
    term_parts: list[np.ndarray] = []
    number_parts: list[np.ndarray] = []
    for i, item in enumerate(items):
        if not isinstance(item, TextFeatures):
            raise KernelInputError(f"items[{i}]", f"must be TextFeatures, got {type(item).__name__}")
        term_parts.append(require_array(item.terms, f"items[{i}].terms", np.int64, 1))
        number_parts.append(require_numbers(item.numbers, f"items[{i}].numbers"))
    terms = np.concatenate(term_parts) if term_parts else np.empty(0, dtype=np.int64)
    numbers = np.concatenate(number_parts) if number_parts else np.empty((0, 2), dtype=np.float64)
    return PackedFeatures(
        term_offsets=_offsets([p.shape[0] for p in term_parts]),
        terms=np.ascontiguousarray(terms, dtype=np.int64),
        number_offsets=_offsets([p.shape[0] for p in number_parts]),
        numbers=np.ascontiguousarray(numbers, dtype=np.float64).reshape(-1, 2),
    )


def features_many(texts: Iterable[str]) -> PackedFeatures:
    """``pack_features([features(t) for t in texts])``, naming the bad index on error."""
    if isinstance(texts, str):
        raise KernelInputError("texts", "must be an iterable of str, not a single str")
    items = []
    for i, text in enumerate(texts):
        require_str(text, f"texts[{i}]")
        items.append(features(text))
    return pack_features(items)
