"""Question focus: how much of the question the context says right around a given span.

``sim`` float32[q, n] holds the cosines of the question's token states (rows) with one chunk's token
states (columns, in text order). Piece j seen from position c weighs ``exp(-|j - c| / tau)``; a
question piece's focus at c is its best weighted cosine, and the focus at c is the mean over the
question's pieces (a negative cosine counts as 0). :func:`focus_tables` returns, per question piece, the best weighted cosine
looking left (``fwd[i, c]``: pieces j <= c) and right (``bwd[i, c]``: pieces j >= c) of every c,
plus the best focus over all positions of the chunk. The decay is a product of per-step factors,
so each table is one pass over the row (O(q * n), not O(q * n^2)).

:func:`focus_at` reads the focus around spans of pieces ``[lo, hi]`` (an answer located in the
chunk), the span's own pieces left out: the question's words *near* the answer, not in it. An
answer sits where the context answers this question when its focus is close to the chunk's best.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from certus.kernels.validation import KernelInputError, require_array

DEFAULT_TAU = 24.0


@njit("float64(float32[:, ::1], float64, float32[:, ::1], float32[:, ::1])", cache=True, nogil=True)
def _focus_tables(sim, r, fwd, bwd):  # type: ignore[no-untyped-def]
    q, n = sim.shape
    for i in range(q):
        run = 0.0
        for c in range(n):
            run = max(sim[i, c], run * r)
            fwd[i, c] = run
        run = 0.0
        for c in range(n - 1, -1, -1):
            run = max(sim[i, c], run * r)
            bwd[i, c] = run
    best = 0.0
    for c in range(n):
        s = 0.0
        for i in range(q):
            s += max(fwd[i, c], bwd[i, c])
        best = max(best, s / q)
    return best


@njit("float64[::1](float32[:, ::1], float32[:, ::1], int64[:, ::1], float64)", cache=True, nogil=True)
def _focus_at(fwd, bwd, spans, r):  # type: ignore[no-untyped-def]
    q, n = fwd.shape
    out = np.zeros(spans.shape[0], dtype=np.float64)
    for k in range(spans.shape[0]):
        lo, hi = spans[k, 0], spans[k, 1]
        s = 0.0
        for i in range(q):
            left = fwd[i, lo - 1] * r if lo > 0 else 0.0
            right = bwd[i, hi + 1] * r if hi + 1 < n else 0.0
            s += max(left, right)
        out[k] = s / q
    return out


def _step(tau: float) -> float:
    if not (isinstance(tau, (int, float)) and math.isfinite(tau) and tau > 0):
        raise KernelInputError("tau", f"must be a positive finite number, got {tau!r}")
    return math.exp(-1.0 / float(tau))


def focus_tables(sim: np.ndarray, tau: float = DEFAULT_TAU) -> tuple[float, np.ndarray, np.ndarray]:
    """(best focus over the chunk's positions, fwd, bwd) for ``sim`` float32[q, n] (question pieces
    × chunk pieces, cosines). An empty question or chunk gives (0.0, empty, empty)."""
    s = require_array(sim, "sim", np.float32, 2)
    r = _step(tau)
    fwd = np.empty_like(s)
    bwd = np.empty_like(s)
    if s.shape[0] == 0 or s.shape[1] == 0:
        return 0.0, fwd, bwd
    return float(_focus_tables(s, r, fwd, bwd)), fwd, bwd


def focus_at(fwd: np.ndarray, bwd: np.ndarray, spans: np.ndarray, tau: float = DEFAULT_TAU) -> np.ndarray:
    """float64[m]: the focus around each span ``spans[k] = (lo, hi)`` (piece indices, inclusive, of
    the tables' chunk), the span's pieces left out; 0.0 for every span of an empty table."""
    f = require_array(fwd, "fwd", np.float32, 2)
    b = require_array(bwd, "bwd", np.float32, 2)
    sp = require_array(spans, "spans", np.int64, 2)
    if f.shape != b.shape:
        raise KernelInputError("bwd", f"has shape {b.shape}, fwd {f.shape}")
    if sp.shape[0] and sp.shape[1] != 2:
        raise KernelInputError("spans", f"must have shape (m, 2) (lo, hi), got {sp.shape}")
    r = _step(tau)
    if f.shape[0] == 0 or f.shape[1] == 0 or sp.shape[0] == 0:
        return np.zeros(sp.shape[0], dtype=np.float64)
    n = f.shape[1]
    if np.any(sp[:, 0] < 0) or np.any(sp[:, 1] < sp[:, 0]) or np.any(sp[:, 1] >= n):
        raise KernelInputError("spans", f"each (lo, hi) must satisfy 0 <= lo <= hi < {n}")
    return _focus_at(f, b, sp, r)
