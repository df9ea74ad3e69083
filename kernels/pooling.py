"""Masked mean pooling of token embeddings into sentence embeddings (sentence-transformers'
``mean`` pooling), with optional L2 normalisation."""

from __future__ import annotations

import numpy as np
from numba import njit

from certus.kernels.validation import KernelInputError, require_array, require_finite


@njit("float32[:, ::1](float32[:, :, ::1], int64[:, ::1], boolean)", cache=True, nogil=True, fastmath=True)
def _mean_pool(hidden, mask, normalize):  # type: ignore[no-untyped-def]
    b, s, d = hidden.shape
    out = np.zeros((b, d), dtype=np.float32)
    acc = np.empty(d, dtype=np.float64)
    for i in range(b):
        acc[:] = 0.0
        count = 0
        for t in range(s):
            if mask[i, t] != 0:
                count += 1
                for k in range(d):
                    acc[k] += hidden[i, t, k]
        if count == 0:
            continue  # no tokens: a zero vector, not NaN
        scale = 1.0 / count
        if normalize:
            sq = 0.0
            for k in range(d):
                sq += acc[k] * acc[k]
            if sq == 0.0:
                continue
            scale = 1.0 / np.sqrt(sq)
        for k in range(d):
            out[i, k] = acc[k] * scale
    return out


def mean_pool(hidden: np.ndarray, mask: np.ndarray, normalize: bool = True) -> np.ndarray:
    """``float32[b, d]``: mean of ``hidden`` (float32[b, s, d]) over the tokens where ``mask``
    (int64[b, s], 0 or 1) is 1, then L2-normalised when ``normalize``. A row whose mask is all
    zeros (or whose mean is the zero vector) gives a zero row."""
    hidden = require_array(hidden, "hidden", np.float32, 3)
    mask = require_array(mask, "mask", np.int64, 2)
    if mask.shape != hidden.shape[:2]:
        raise KernelInputError("mask", f"must have shape {hidden.shape[:2]} (batch, seq), got {mask.shape}")
    if mask.size and not bool(((mask == 0) | (mask == 1)).all()):
        raise KernelInputError("mask", "must hold only 0 and 1")
    if not isinstance(normalize, (bool, np.bool_)):
        raise KernelInputError("normalize", f"must be bool, got {type(normalize).__name__}")
    require_finite(hidden, "hidden")
    out: np.ndarray = _mean_pool(hidden, mask, bool(normalize))
    return out
