"""Numeric consistency: the share of a response's numbers that some context number confirms.

Two numbers agree when ``|a - b| <= rel_tol * max(|a|, |b|)`` (so 0 only equals 0) and their
kinds are compatible: equal, or either one plain (0). Currency (1) never matches percent (2).
Values are already scaled (``kernels.numbers``), so ``12%`` (0.12, percent) agrees with
``0.12`` (plain) and ``$89.5B`` with ``$89.5 billion``.

Every response number counts once per occurrence. No response numbers -> 1.0; response
numbers against a context without numbers -> 0.0.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from certus.kernels.validation import require_numbers, require_offsets, require_rel_tol

#: Default relative tolerance: formatting noise only; 450e9 vs 452e9 is a mismatch.
DEFAULT_REL_TOL = 1e-6


@njit("boolean(float64, float64, float64[::1], float64[::1], int64, int64, float64)", cache=True, nogil=True)
def _confirmed(value, kind, sorted_values, sorted_kinds, s, e, rel_tol):  # type: ignore[no-untyped-def]
    """Is (value, kind) matched in sorted_values[s:e] (ascending)?"""
    # Any match b has |value - b| <= rel_tol * (|value| + |value - b|), hence
    # |value - b| <= rel_tol * |value| / (1 - rel_tol): search that window, check exactly.
    radius = rel_tol * abs(value) / (1.0 - rel_tol)
    j = s + np.searchsorted(sorted_values[s:e], value - radius)
    while j < e and sorted_values[j] <= value + radius:
        other = sorted_values[j]
        if abs(value - other) <= rel_tol * max(abs(value), abs(other)):
            k = sorted_kinds[j]
            if k == kind or k == 0.0 or kind == 0.0:
                return True
        j += 1
    return False


@njit("float64(float64[:, ::1], float64[:, ::1], float64)", cache=True, nogil=True)
def _numeric_consistency(resp, ctx, rel_tol):  # type: ignore[no-untyped-def]
    n = resp.shape[0]
    if n == 0:
        return 1.0
    m = ctx.shape[0]
    if m == 0:
        return 0.0
    order = np.argsort(ctx[:, 0], kind="mergesort")
    values = np.empty(m, dtype=np.float64)
    kinds = np.empty(m, dtype=np.float64)
    for i in range(m):
        values[i] = ctx[order[i], 0]
        kinds[i] = ctx[order[i], 1]
    hits = 0
    for i in range(n):
        if _confirmed(resp[i, 0], resp[i, 1], values, kinds, 0, m, rel_tol):
            hits += 1
    return hits / n


@njit(
    "float64[:, ::1](int64[::1], float64[:, ::1], int64[::1], float64[:, ::1], float64)",
    cache=True,
    nogil=True,
)
def _numeric_matrix(a_offsets, a_nums, b_offsets, b_nums, rel_tol):  # type: ignore[no-untyped-def]
    n_a = a_offsets.shape[0] - 1
    n_b = b_offsets.shape[0] - 1
    out = np.empty((n_a, n_b), dtype=np.float64)
    total = b_nums.shape[0]
    values = np.empty(total, dtype=np.float64)
    kinds = np.empty(total, dtype=np.float64)
    for b in range(n_b):
        s, e = b_offsets[b], b_offsets[b + 1]
        if e > s:
            order = np.argsort(b_nums[s:e, 0], kind="mergesort")
            for i in range(e - s):
                values[s + i] = b_nums[s + order[i], 0]
                kinds[s + i] = b_nums[s + order[i], 1]
    for a in range(n_a):
        s_a, e_a = a_offsets[a], a_offsets[a + 1]
        n = e_a - s_a
        for b in range(n_b):
            if n == 0:
                out[a, b] = 1.0
                continue
            s, e = b_offsets[b], b_offsets[b + 1]
            if e == s:
                out[a, b] = 0.0
                continue
            hits = 0
            for i in range(s_a, e_a):
                if _confirmed(a_nums[i, 0], a_nums[i, 1], values, kinds, s, e, rel_tol):
                    hits += 1
            out[a, b] = hits / n
    return out


def numeric_consistency(
    resp_nums: np.ndarray, ctx_nums: np.ndarray, rel_tol: float = DEFAULT_REL_TOL
) -> float:
    """Share of ``resp_nums`` rows confirmed by some ``ctx_nums`` row (both float64[n, 2])."""
    resp = require_numbers(resp_nums, "resp_nums")
    ctx = require_numbers(ctx_nums, "ctx_nums")
    return float(_numeric_consistency(resp, ctx, require_rel_tol(rel_tol)))


def numeric_matrix(
    a_offsets: np.ndarray,
    a_nums: np.ndarray,
    b_offsets: np.ndarray,
    b_nums: np.ndarray,
    rel_tol: float = DEFAULT_REL_TOL,
) -> np.ndarray:
    """``float64[A, B]``: ``numeric_consistency`` of each A text against each B text (CSR)."""
    a_n = require_numbers(a_nums, "a_nums")
    b_n = require_numbers(b_nums, "b_nums")
    a_o = require_offsets(a_offsets, "a_offsets", a_n.shape[0], "a_nums")
    b_o = require_offsets(b_offsets, "b_offsets", b_n.shape[0], "b_nums")
    out: np.ndarray = _numeric_matrix(a_o, a_n, b_o, b_n, require_rel_tol(rel_tol))
    return out
