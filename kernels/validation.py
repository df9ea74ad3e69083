"""Argument checks shared by the kernel wrappers.

Kernels are compiled for exact dtypes and C-contiguous layouts. The wrappers check every
argument first and raise :class:`KernelInputError` naming the argument, instead of letting
Numba fail with a dispatch error (or, worse, silently convert). Nothing is copied or cast
here: a caller that holds a float64 or a strided array converts it explicitly.
"""

from __future__ import annotations

import numpy as np


class KernelInputError(ValueError):
    """A kernel argument has the wrong type, dtype, shape, layout or values.

    ``field`` names the argument (``"a_offsets"``, ``"hidden"``...). The sidecar turns it into
    its own error type at the boundary; the kernels package does not depend on the sidecar.
    """

    def __init__(self, field: str, description: str) -> None:
        super().__init__(f"{field}: {description}")
        self.field = field
        self.description = description


def require_str(value: object, name: str) -> str:
    if not isinstance(value, str):
        raise KernelInputError(name, f"must be str, got {type(value).__name__}")
    return value


def require_array(
    value: object,
    name: str,
    dtype: type[np.generic],
    ndim: int,
) -> np.ndarray:
    """``value`` must be an ndarray of exactly ``dtype`` and ``ndim``, C-contiguous."""
    if not isinstance(value, np.ndarray):
        raise KernelInputError(name, f"must be a numpy.ndarray, got {type(value).__name__}")
    if value.dtype != np.dtype(dtype):
        raise KernelInputError(name, f"must have dtype {np.dtype(dtype)}, got {value.dtype}")
    if value.ndim != ndim:
        raise KernelInputError(name, f"must be {ndim}-dimensional, got shape {value.shape}")
    if not value.flags.c_contiguous:
        raise KernelInputError(name, "must be C-contiguous (use numpy.ascontiguousarray)")
    return value


def require_finite(value: np.ndarray, name: str) -> None:
    if value.size and not bool(np.isfinite(value).all()):
        raise KernelInputError(name, "must contain only finite values (no NaN or infinity)")


def require_numbers(value: object, name: str) -> np.ndarray:
    """A numbers table: float64[n, 2], column 0 finite values, column 1 kinds in {0, 1, 2}."""
    arr = require_array(value, name, np.float64, 2)
    if arr.shape[1] != 2:
        raise KernelInputError(name, f"must have shape (n, 2) (value, kind), got {arr.shape}")
    require_finite(arr, name)
    if arr.shape[0]:
        kinds = arr[:, 1]
        if not bool(np.isin(kinds, (0.0, 1.0, 2.0)).all()):
            raise KernelInputError(name, "kind column must hold 0 (plain), 1 (currency) or 2 (percent)")
    return arr


def require_offsets(value: object, name: str, total: int, total_name: str) -> np.ndarray:
    """CSR offsets: int64[k + 1], starting at 0, non-decreasing, ending at ``total``."""
    arr = require_array(value, name, np.int64, 1)
    if arr.shape[0] < 1:
        raise KernelInputError(name, "must hold at least one entry (offsets[0] == 0)")
    if arr[0] != 0:
        raise KernelInputError(name, f"must start at 0, got {int(arr[0])}")
    if arr.shape[0] > 1 and bool((np.diff(arr) < 0).any()):
        raise KernelInputError(name, "must be non-decreasing")
    if arr[-1] != total:
        raise KernelInputError(
            name, f"must end at len({total_name}) == {total}, got {int(arr[-1])}"
        )
    return arr


def require_rel_tol(value: object, name: str = "rel_tol") -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
        raise KernelInputError(name, f"must be a number, got {type(value).__name__}")
    tol = float(value)
    if not (0.0 <= tol < 1.0):
        raise KernelInputError(name, f"must be in [0, 1), got {tol!r}")
    return tol
