from __future__ import annotations

import kernels_reference as ref
import numpy as np
import pytest

from certus.kernels import KernelInputError, mean_pool


def test_exact_small_case() -> None:
    hidden = np.array(
        [
            [[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]],  # last token masked out
            [[0.0, 5.0], [9.0, 9.0], [9.0, 9.0]],  # only the first token
        ],
        dtype=np.float32,
    )
    mask = np.array([[1, 1, 0], [1, 0, 0]], dtype=np.int64)
    assert mean_pool(hidden, mask, normalize=False).tolist() == [[2.0, 3.0], [0.0, 5.0]]
    got = mean_pool(hidden, mask)
    np.testing.assert_allclose(got, [[2 / 13**0.5, 3 / 13**0.5], [0.0, 1.0]], atol=1e-7)


def test_all_zero_mask_gives_zero_row() -> None:
    hidden = np.ones((2, 3, 4), dtype=np.float32)
    mask = np.array([[0, 0, 0], [1, 1, 1]], dtype=np.int64)
    for normalize in (True, False):
        got = mean_pool(hidden, mask, normalize)
        assert got[0].tolist() == [0.0] * 4
        assert not np.isnan(got).any()


def test_zero_mean_normalised_is_zero() -> None:
    hidden = np.array([[[1.0, -1.0], [-1.0, 1.0]]], dtype=np.float32)
    assert mean_pool(hidden, np.ones((1, 2), np.int64)).tolist() == [[0.0, 0.0]]


def test_empty_shapes() -> None:
    assert mean_pool(np.empty((0, 3, 4), np.float32), np.empty((0, 3), np.int64)).shape == (0, 4)
    assert mean_pool(np.empty((2, 0, 4), np.float32), np.empty((2, 0), np.int64)).tolist() == [[0.0] * 4] * 2


@pytest.mark.parametrize("seed", range(200))
def test_matches_reference(seed: int) -> None:
    rng = np.random.default_rng(seed)
    b, s, d = int(rng.integers(0, 5)), int(rng.integers(0, 9)), int(rng.integers(1, 40))
    hidden = rng.normal(size=(b, s, d)).astype(np.float32)
    mask = (rng.random((b, s)) < rng.random()).astype(np.int64)
    normalize = bool(rng.integers(0, 2))
    got = mean_pool(hidden, mask, normalize)
    assert got.dtype == np.float32 and got.shape == (b, d)
    np.testing.assert_allclose(got, ref.mean_pool(hidden, mask, normalize), atol=2e-6, rtol=1e-5)
    if normalize:
        norms = np.linalg.norm(got.astype(np.float64), axis=1)
        assert np.all((np.abs(norms - 1.0) < 1e-5) | (norms == 0.0))


@pytest.mark.parametrize(
    ("hidden", "mask", "field"),
    [
        (np.ones((1, 2, 3), np.float64), np.ones((1, 2), np.int64), "hidden"),
        (np.ones((2, 3), np.float32), np.ones((1, 2), np.int64), "hidden"),
        (np.ones((1, 2, 3), np.float32), np.ones((1, 3), np.int64), "mask"),
        (np.ones((1, 2, 3), np.float32), np.ones((1, 2), np.int32), "mask"),
        (np.ones((1, 2, 3), np.float32), np.array([[1, 2]], np.int64), "mask"),
        (np.full((1, 2, 3), np.nan, np.float32), np.ones((1, 2), np.int64), "hidden"),
    ],
)
def test_rejects_bad_input(hidden: np.ndarray, mask: np.ndarray, field: str) -> None:
    with pytest.raises(KernelInputError) as info:
        mean_pool(hidden, mask)
    assert info.value.field == field


def test_rejects_non_bool_normalize() -> None:
    with pytest.raises(KernelInputError) as info:
        mean_pool(np.ones((1, 1, 1), np.float32), np.ones((1, 1), np.int64), "yes")  # type: ignore[arg-type]
    assert info.value.field == "normalize"
