"""Contextual token alignment (BERTScore-style precision) between a text's claims and the context.

Each content token of a claim (a word piece whose word is not a stop word and holds a letter or
digit) is matched to its most similar context token: the cosine of their contextual states (the
encoder's last layer, L2-normalised). A supported claim has a close match for every content
token; an invented name, figure or qualifier leaves tokens with none. Per claim this gives
:data:`N_ALIGNMENT` numbers: mean best match, the worst, the share and log count of tokens below
:data:`UNSUPPORTED_BELOW`, and the mean of the three worst. A claim with no content token gets
``(1, 1, 0, 0, 1)`` (nothing to contradict).

:func:`best_match` is one BLAS product (``numpy.matmul``, float32) and a row max; the per-claim
reduction (:func:`alignment_rows`) is a Numba kernel over that vector and the claims' CSR offsets.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from certus.kernels.validation import KernelInputError, require_array

N_ALIGNMENT = 5
UNSUPPORTED_BELOW = 0.5
# the row of a claim whose every content token has an exact match (each cosine 1.0); also what a
# claim with no content token gets
PERFECT_ALIGNMENT = (1.0, 1.0, 0.0, 0.0, 1.0)


@njit("float64[:, ::1](float32[::1], int64[::1], float64)", cache=True, nogil=True)
def _alignment_rows(best, offsets, below):  # type: ignore[no-untyped-def]
    k = offsets.shape[0] - 1
    out = np.empty((k, N_ALIGNMENT), dtype=np.float64)
    for i in range(k):
        lo, hi = offsets[i], offsets[i + 1]
        n = hi - lo
        if n == 0:  # no content piece: nothing to contradict
            for a in range(N_ALIGNMENT):
                out[i, a] = PERFECT_ALIGNMENT[a]
            continue
        s = np.sort(best[lo:hi].astype(np.float64))
        low = 0
        for j in range(n):
            if s[j] < below:
                low += 1
        m = min(3, n)
        out[i, 0] = s.mean()
        out[i, 1] = s[0]
        out[i, 2] = low / n
        out[i, 3] = np.log1p(low)
        out[i, 4] = s[:m].mean()
    return out


def best_match(claim_states: np.ndarray, context_states: np.ndarray) -> np.ndarray:
    """float32[T]: each claim token's best cosine with a context token (0.0 without context).

    ``claim_states`` float32[T, d], ``context_states`` float32[C, d], rows L2-normalised (the
    encoder's token states are).
    """
    a = require_array(claim_states, "claim_states", np.float32, 2)
    c = require_array(context_states, "context_states", np.float32, 2)
    if len(a) and len(c) and a.shape[1] != c.shape[1]:
        raise KernelInputError("context_states", f"has dim {c.shape[1]}, claim_states {a.shape[1]}")
    if len(a) == 0 or len(c) == 0:
        return np.zeros(len(a), dtype=np.float32)
    return np.ascontiguousarray((a @ c.T).max(axis=1), dtype=np.float32)


def alignment_rows(best: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """float64[k, N_ALIGNMENT] for k claims from :func:`best_match`'s vector; claim i's tokens are
    ``best[offsets[i]:offsets[i+1]]`` (``offsets`` int64[k+1], rising from 0 to ``len(best)``)."""
    b = require_array(best, "best", np.float32, 1)
    o = require_array(offsets, "offsets", np.int64, 1)
    if len(o) == 0 or o[0] != 0 or o[-1] != len(b) or np.any(np.diff(o) < 0):
        raise KernelInputError("offsets", f"must rise from 0 to len(best)={len(b)}")
    return _alignment_rows(b, o, UNSUPPORTED_BELOW)
