"""Cosine similarity between embedding sets, and the best match per row.

Inputs need not be normalised. A zero row has no direction: its cosine with anything is 0.0
(never NaN). Dot products accumulate in float64 and results are clipped to [-1, 1].
"""

from __future__ import annotations

import numpy as np
from numba import njit

from certus.kernels.validation import KernelInputError, require_array, require_finite


@njit("float64[::1](float32[:, ::1])", cache=True, nogil=True, fastmath=True)
def _inverse_norms(x):  # type: ignore[no-untyped-def]
    n, d = x.shape
    out = np.zeros(n, dtype=np.float64)
    for i in range(n):
        acc = 0.0
        for k in range(d):
            v = np.float64(x[i, k])
            acc += v * v
        if acc > 0.0:
            out[i] = 1.0 / np.sqrt(acc)
    return out


@njit("float32[:, ::1](float32[:, ::1], float32[:, ::1])", cache=True, nogil=True, fastmath=True)
def _cosine_matrix(a, b):  # type: ignore[no-untyped-def]
    n, d = a.shape
    m = b.shape[0]
    inv_a = _inverse_norms(a)
    inv_b = _inverse_norms(b)
    out = np.zeros((n, m), dtype=np.float32)
    for i in range(n):
        if inv_a[i] == 0.0:
            continue
        for j in range(m):
            if inv_b[j] == 0.0:
                continue
            acc = 0.0
            for k in range(d):
                acc += np.float64(a[i, k]) * np.float64(b[j, k])
            c = acc * inv_a[i] * inv_b[j]
            if c > 1.0:
                c = 1.0
            elif c < -1.0:
                c = -1.0
            out[i, j] = c
    return out


@njit("Tuple((float32[::1], int64[::1]))(float32[:, ::1])", cache=True, nogil=True)
def _max_and_argmax_rows(m):  # type: ignore[no-untyped-def]
    n, k = m.shape
    best = np.zeros(n, dtype=np.float32)
    arg = np.full(n, -1, dtype=np.int64)
    if k == 0:
        return best, arg
    for i in range(n):
        bi = 0
        bv = m[i, 0]
        for j in range(1, k):
            if m[i, j] > bv:
                bv = m[i, j]
                bi = j
        best[i] = bv
        arg[i] = bi
    return best, arg


def cosine_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``float32[n, m]`` cosine similarity of every row of ``a`` (float32[n, d]) with every row
    of ``b`` (float32[m, d]); 0.0 where either row is all zeros."""
    a = require_array(a, "a", np.float32, 2)
    b = require_array(b, "b", np.float32, 2)
    if a.shape[1] != b.shape[1]:
        raise KernelInputError("b", f"must have {a.shape[1]} columns like a, got shape {b.shape}")
    require_finite(a, "a")
    require_finite(b, "b")
    out: np.ndarray = _cosine_matrix(a, b)
    return out


def max_and_argmax_rows(m: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row of ``m`` (float32[n, k]): the largest value and its first index.

    With no columns (k == 0) every row gets value 0.0 and index -1; with no rows both arrays
    are empty.
    """
    m = require_array(m, "m", np.float32, 2)
    require_finite(m, "m")
    best, arg = _max_and_argmax_rows(m)
    return best, arg
