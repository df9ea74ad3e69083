"""Term grounding: the share of a response's content terms that occur in the context.

Counting rule (as CERT counts terms): every *occurrence* of a response term counts, so a term
repeated three times weighs three; an occurrence is grounded when its term occurs anywhere in
the context (once is enough). A response with no content terms scores 1.0 (nothing to
contradict); a non-empty response against an empty context scores 0.0.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from kernels.validation import require_array, require_offsets


@njit("float64(int64[::1], int64[::1])", cache=True, nogil=True)
def _term_grounding(resp, ctx):  # type: ignore[no-untyped-def]
    n = resp.shape[0]
    if n == 0:
        return 1.0
    m = ctx.shape[0]
    if m == 0:
        return 0.0
    sorted_ctx = np.sort(ctx)
    hits = 0
    for i in range(n):
        j = np.searchsorted(sorted_ctx, resp[i])
        if j < m and sorted_ctx[j] == resp[i]:
            hits += 1
    return hits / n


@njit("float64[:, ::1](int64[::1], int64[::1], int64[::1], int64[::1])", cache=True, nogil=True)
def _term_grounding_matrix(a_offsets, a_terms, b_offsets, b_terms):  # type: ignore[no-untyped-def]
    n_a = a_offsets.shape[0] - 1
    n_b = b_offsets.shape[0] - 1
    out = np.empty((n_a, n_b), dtype=np.float64)
    # Sort every chunk's segment once; each cell is then a binary search per claim term.
    sorted_b = b_terms.copy()
    for b in range(n_b):
        s, e = b_offsets[b], b_offsets[b + 1]
        if e - s > 1:
            sorted_b[s:e] = np.sort(b_terms[s:e])
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
            seg = sorted_b[s:e]
            m = e - s
            hits = 0
            for i in range(s_a, e_a):
                j = np.searchsorted(seg, a_terms[i])
                if j < m and seg[j] == a_terms[i]:
                    hits += 1
            out[a, b] = hits / n
    return out


def term_grounding(resp_terms: np.ndarray, ctx_terms: np.ndarray) -> float:
    """Share of ``resp_terms`` occurrences whose term is in ``ctx_terms`` (both int64[...])."""
    resp = require_array(resp_terms, "resp_terms", np.int64, 1)
    ctx = require_array(ctx_terms, "ctx_terms", np.int64, 1)
    return float(_term_grounding(resp, ctx))


def term_grounding_matrix(
    a_offsets: np.ndarray,
    a_terms: np.ndarray,
    b_offsets: np.ndarray,
    b_terms: np.ndarray,
) -> np.ndarray:
    """``float64[A, B]``: ``term_grounding`` of each A text (claim) against each B text (chunk).

    Both sides are CSR-packed (``PackedFeatures.term_offsets`` / ``.terms``).
    """
    a_t = require_array(a_terms, "a_terms", np.int64, 1)
    b_t = require_array(b_terms, "b_terms", np.int64, 1)
    a_o = require_offsets(a_offsets, "a_offsets", a_t.shape[0], "a_terms")
    b_o = require_offsets(b_offsets, "b_offsets", b_t.shape[0], "b_terms")
    out: np.ndarray = _term_grounding_matrix(a_o, a_t, b_o, b_t)
    return out
