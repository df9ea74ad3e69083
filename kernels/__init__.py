"""Numba kernels for Certus Evaluate: text -> arrays, grounding, numbers, similarity, pooling,
sentence spans. Kernels are pure functions over contiguous NumPy arrays (``@njit(cache=True,
nogil=True)`` with explicit signatures); each public function is a thin wrapper that checks
its arguments and raises :class:`KernelInputError` naming the bad one.

Importing ``kernels`` is cheap: submodules (and Numba) load on first use of a name. Their
compiled code is cached on disk next to the sources, so only the very first process pays the
compile; call :func:`warmup` at start-up to pay the cache load before the first request.
"""

from __future__ import annotations

import importlib
import time
from typing import TYPE_CHECKING, Any

_EXPORTS: dict[str, str] = {
    "KernelInputError": "certus.kernels.validation",
    "alignment_rows": "certus.kernels.alignment",
    "N_ALIGNMENT": "certus.kernels.alignment",
    "PERFECT_ALIGNMENT": "certus.kernels.alignment",
    "best_match": "certus.kernels.alignment",
    "focus_at": "certus.kernels.focus",
    "focus_tables": "certus.kernels.focus",
    "answer_conv": "certus.kernels.reader",
    "extract_terms": "certus.kernels.terms",
    "STOP_WORDS": "certus.kernels.terms",
    "extract_numbers": "certus.kernels.numbers",
    "NUMBER_PLAIN": "certus.kernels.numbers",
    "NUMBER_CURRENCY": "certus.kernels.numbers",
    "NUMBER_PERCENT": "certus.kernels.numbers",
    "TextFeatures": "certus.kernels.text_features",
    "PackedFeatures": "certus.kernels.text_features",
    "features": "certus.kernels.text_features",
    "features_many": "certus.kernels.text_features",
    "pack_features": "certus.kernels.text_features",
    "term_grounding": "certus.kernels.grounding",
    "term_grounding_matrix": "certus.kernels.grounding",
    "numeric_consistency": "certus.kernels.numeric",
    "numeric_matrix": "certus.kernels.numeric",
    "DEFAULT_REL_TOL": "certus.kernels.numeric",
    "cosine_matrix": "certus.kernels.similarity",
    "max_and_argmax_rows": "certus.kernels.similarity",
    "mean_pool": "certus.kernels.pooling",
    "split_sentences": "certus.kernels.sentences",
    "ABBREVIATIONS": "certus.kernels.sentences",
}

__all__ = sorted([*_EXPORTS, "warmup"])

if TYPE_CHECKING:
    from certus.kernels.alignment import N_ALIGNMENT, PERFECT_ALIGNMENT, alignment_rows, best_match
    from certus.kernels.focus import focus_at, focus_tables
    from certus.kernels.grounding import term_grounding, term_grounding_matrix
    from certus.kernels.numbers import NUMBER_CURRENCY, NUMBER_PERCENT, NUMBER_PLAIN, extract_numbers
    from certus.kernels.numeric import DEFAULT_REL_TOL, numeric_consistency, numeric_matrix
    from certus.kernels.pooling import mean_pool
    from certus.kernels.reader import answer_conv
    from certus.kernels.sentences import ABBREVIATIONS, split_sentences
    from certus.kernels.similarity import cosine_matrix, max_and_argmax_rows
    from certus.kernels.terms import STOP_WORDS, extract_terms
    from certus.kernels.text_features import (
        PackedFeatures,
        TextFeatures,
        features,
        features_many,
        pack_features,
    )
    from certus.kernels.validation import KernelInputError


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'certus.kernels' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__


def warmup() -> float:
    """Load every kernel (compiling it on a cold cache) and run each once on a tiny input.

    Returns the seconds it took. Safe to call more than once.
    """
    import numpy as np

    t0 = time.perf_counter()
    f = importlib.import_module("certus.kernels.text_features")
    g = importlib.import_module("certus.kernels.grounding")
    nu = importlib.import_module("certus.kernels.numeric")
    si = importlib.import_module("certus.kernels.similarity")
    po = importlib.import_module("certus.kernels.pooling")
    se = importlib.import_module("certus.kernels.sentences")
    al = importlib.import_module("certus.kernels.alignment")
    fo = importlib.import_module("certus.kernels.focus")
    rd = importlib.import_module("certus.kernels.reader")
    packed = f.features_many(["Revenue was $1.5 billion.", "Revenue: 1.5bn dollars"])
    g.term_grounding(packed.item(0).terms, packed.item(1).terms)
    g.term_grounding_matrix(packed.term_offsets, packed.terms, packed.term_offsets, packed.terms)
    nu.numeric_consistency(packed.item(0).numbers, packed.item(1).numbers)
    nu.numeric_matrix(packed.number_offsets, packed.numbers, packed.number_offsets, packed.numbers)
    emb = np.ones((2, 4), dtype=np.float32)
    si.max_and_argmax_rows(si.cosine_matrix(emb, emb))
    po.mean_pool(np.ones((1, 2, 4), dtype=np.float32), np.ones((1, 2), dtype=np.int64))
    se.split_sentences("One. Two.")
    al.alignment_rows(al.best_match(emb, emb), np.array([0, 1, 2], dtype=np.int64))
    _, fwd, bwd = fo.focus_tables(emb @ emb.T)
    fo.focus_at(fwd, bwd, np.array([[0, 0]], dtype=np.int64))
    rd.answer_conv(np.ones((1, 2, 1), dtype=np.float32), np.ones(2, dtype=np.float32), np.ones((2, 3), dtype=np.float32), 1.0)
    return time.perf_counter() - t0
