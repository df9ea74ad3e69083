"""The answer head's reading of a chunk (``sidecar.verifier.AnswerHead``), serving side.

Per chunk piece i and bilinear map k, the head's channel k is the piece's best match with a question
piece, ``x[k, i] = max_j ca[k, i] . qb[k, j] / sqrt(R)`` (``ca`` / ``qb``: the chunk's and the
question's pieces through map k; their products come from one BLAS call); channel K is each
piece's best raw cosine with the question. A convolution over the pieces (``conv``
float32[K + 1, 2W + 1], zero outside the chunk) turns the channels into a logit per piece.

NumPy did the rest as a max over the products, a zero-padded sliding-window view and an einsum:
about 100 µs of small-array calls per chunk, the head's largest share. :func:`answer_conv` is one
pass over the products that keeps nothing but the [K + 1, n] channels. The trainer keeps the NumPy
form (it needs the intermediates for the gradients); the two agree to float32 rounding (a test
compares them).
"""

from __future__ import annotations

import numpy as np
from numba import njit

from certus.kernels.validation import KernelInputError, require_array


@njit("float32[::1](float32[:, :, ::1], float32[::1], float32[:, ::1], float64)", cache=True, nogil=True)
def _answer_conv(s, raw, conv, scale):  # type: ignore[no-untyped-def]
    k, n, m = s.shape
    width = conv.shape[1]
    w = (width - 1) // 2
    x = np.empty((k + 1, n), dtype=np.float32)
    for c in range(k):
        for i in range(n):
            best = s[c, i, 0]
            for j in range(1, m):
                if s[c, i, j] > best:
                    best = s[c, i, j]
            x[c, i] = np.float32(best * scale)
    for i in range(n):
        x[k, i] = raw[i]
    z = np.empty(n, dtype=np.float32)
    for i in range(n):
        acc = np.float32(0.0)
        for c in range(k + 1):
            for t in range(width):
                p = i + t - w
                if 0 <= p < n:
                    acc += x[c, p] * conv[c, t]
        z[i] = acc
    return z


def answer_conv(products: np.ndarray, raw: np.ndarray, conv: np.ndarray, scale: float) -> np.ndarray:
    """float32[n]: the convolution logits of the n chunk pieces (no bias).

    ``products`` float32[K, n, m]: ``ca[k] @ qb[k].T`` (m >= 1 question pieces), ``raw`` float32[n],
    ``conv`` float32[K + 1, 2W + 1] (odd width), ``scale``: the products' factor (1 / sqrt(R))."""
    s = require_array(products, "products", np.float32, 3)
    v = require_array(raw, "raw", np.float32, 1)
    f = require_array(conv, "conv", np.float32, 2)
    if s.shape[2] == 0:
        raise KernelInputError("products", "has no question piece")
    if v.shape[0] != s.shape[1]:
        raise KernelInputError("raw", f"has {v.shape[0]} values for {s.shape[1]} chunk pieces")
    if f.shape[0] != s.shape[0] + 1 or f.shape[1] % 2 == 0:
        raise KernelInputError("conv", f"has shape {f.shape}: needs {s.shape[0] + 1} rows and an odd width")
    return _answer_conv(s, v, f, float(scale))
