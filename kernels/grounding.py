"""Term grounding: the share of a response's content terms that occur in the context.

Counting rule (as CERT counts terms): every *occurrence* of a response term counts, so a term
repeated three times weighs three; an occurrence is grounded when its term occurs anywhere in
the context (once is enough). A response with no content terms scores 1.0 (nothing to
contradict); a non-empty response against an empty context scores 0.0.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from certus.kernels.validation import require_array, require_offsets

#: Below this many (response x context) comparisons a linear scan beats sorting.
_SCAN_LIMIT = 4096
#: Largest membership table (vocabulary x chunks, one byte each) built at once; more chunks
#: than fit are processed in column blocks, so memory stays bounded for any batch size.
MAX_MEMBER_CELLS = 1 << 24


@njit("float64(int64[::1], int64[::1])", cache=True, nogil=True)
def _term_grounding(resp, ctx):  # type: ignore[no-untyped-def]
    n = resp.shape[0]
    if n == 0:
        return 1.0
    m = ctx.shape[0]
    if m == 0:
        return 0.0
    hits = 0
    if n * m <= _SCAN_LIMIT:
        for i in range(n):
            t = resp[i]
            for j in range(m):
                if ctx[j] == t:
                    hits += 1
                    break
        return hits / n
    sorted_ctx = np.sort(ctx)
    for i in range(n):
        j = np.searchsorted(sorted_ctx, resp[i])
        if j < m and sorted_ctx[j] == resp[i]:
            hits += 1
    return hits / n


@njit(
    "float64[:, ::1](int64[::1], int64[::1], int64[::1], int64[::1], int64)",
    cache=True,
    nogil=True,
)
def _term_grounding_matrix(  # type: ignore[no-untyped-def]
    a_offsets, a_terms, b_offsets, b_terms, max_member_cells
):
    n_a = a_offsets.shape[0] - 1
    n_b = b_offsets.shape[0] - 1
    out = np.empty((n_a, n_b), dtype=np.float64)
    if n_a == 0 or n_b == 0:
        return out
    # Dense ids over the chunks' vocabulary; claim terms outside it can never be grounded.
    vocab = np.unique(b_terms)
    v = vocab.shape[0]
    b_ids = np.searchsorted(vocab, b_terms)
    a_ids = np.searchsorted(vocab, a_terms)
    for i in range(a_ids.shape[0]):
        if a_ids[i] >= v or vocab[a_ids[i]] != a_terms[i]:
            a_ids[i] = -1
    # member[id, c] == 1 when chunk b0 + c contains term id; each cell is then a sum of rows.
    block = max(1, min(n_b, max_member_cells // max(v, 1)))
    member = np.zeros((max(v, 1), block), dtype=np.uint8)
    counts = np.zeros(block, dtype=np.int64)
    for b0 in range(0, n_b, block):
        b1 = min(n_b, b0 + block)
        width = b1 - b0
        for b in range(b0, b1):
            for j in range(b_offsets[b], b_offsets[b + 1]):
                member[b_ids[j], b - b0] = 1
        for a in range(n_a):
            s, e = a_offsets[a], a_offsets[a + 1]
            n = e - s
            if n == 0:
                out[a, b0:b1] = 1.0
                continue
            counts[:width] = 0
            for i in range(s, e):
                vid = a_ids[i]
                if vid >= 0:
                    for c in range(width):
                        counts[c] += member[vid, c]
            for c in range(width):
                b = b0 + c
                if b_offsets[b + 1] == b_offsets[b]:
                    out[a, b] = 0.0
                else:
                    out[a, b] = counts[c] / n
        for b in range(b0, b1):
            for j in range(b_offsets[b], b_offsets[b + 1]):
                member[b_ids[j], b - b0] = 0
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
    out: np.ndarray = _term_grounding_matrix(a_o, a_t, b_o, b_t, MAX_MEMBER_CELLS)
    return out
