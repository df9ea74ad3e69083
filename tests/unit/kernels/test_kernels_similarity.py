from __future__ import annotations

import kernels_reference as ref
import numpy as np
import pytest

from certus.kernels import KernelInputError, cosine_matrix, max_and_argmax_rows


def test_exact_small_case() -> None:
    a = np.array([[3.0, 4.0], [0.0, 0.0], [1.0, 0.0]], dtype=np.float32)
    b = np.array([[6.0, 8.0], [-1.0, 0.0], [0.0, 2.0]], dtype=np.float32)
    got = cosine_matrix(a, b)
    assert got.dtype == np.float32 and got.shape == (3, 3)
    expected = np.array([[1.0, -0.6, 0.8], [0.0, 0.0, 0.0], [0.6, -1.0, 0.0]], dtype=np.float32)
    np.testing.assert_allclose(got, expected, atol=1e-7)


def test_zero_rows_give_zero_not_nan() -> None:
    z = np.zeros((2, 5), dtype=np.float32)
    got = cosine_matrix(z, z)
    assert got.tolist() == [[0.0, 0.0], [0.0, 0.0]]


def test_empty_and_one_row() -> None:
    assert cosine_matrix(np.empty((0, 4), np.float32), np.ones((3, 4), np.float32)).shape == (0, 3)
    assert cosine_matrix(np.ones((2, 4), np.float32), np.empty((0, 4), np.float32)).shape == (2, 0)
    assert cosine_matrix(np.empty((1, 0), np.float32), np.empty((1, 0), np.float32)).tolist() == [[0.0]]
    one = np.array([[0.5, -2.0, 1.0]], dtype=np.float32)
    assert cosine_matrix(one, one)[0, 0] == pytest.approx(1.0, abs=1e-7)


def test_scale_invariant_and_clipped() -> None:
    rng = np.random.default_rng(1)
    a = rng.normal(size=(4, 384)).astype(np.float32)
    got = cosine_matrix(a, a * np.float32(1000.0))
    assert np.all(got <= 1.0) and np.all(got >= -1.0)
    np.testing.assert_allclose(np.diag(got), 1.0, atol=1e-6)


@pytest.mark.parametrize("seed", range(200))
def test_cosine_matches_reference(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n, m, d = (int(x) for x in rng.integers(0, 7, size=3))
    a = (rng.normal(size=(n, d)) * rng.choice([1e-3, 1.0, 50.0])).astype(np.float32)
    b = rng.normal(size=(m, d)).astype(np.float32)
    if n and rng.random() < 0.3:
        a[rng.integers(0, n)] = 0.0
    got = cosine_matrix(a, b)
    np.testing.assert_allclose(got, ref.cosine_matrix(a, b), atol=2e-6, rtol=0)


def test_cosine_rejects_bad_input() -> None:
    ok = np.ones((2, 3), np.float32)
    cases = [
        ((ok.astype(np.float64), ok), "a"),
        ((ok, ok[:, :2].copy()), "b"),
        ((ok, np.ones(3, np.float32)), "b"),
        ((np.full((1, 3), np.nan, np.float32), ok), "a"),
        ((ok, np.ones((3, 4), np.float32)[:, :3]), "b"),  # not contiguous
    ]
    for args, field in cases:
        with pytest.raises(KernelInputError) as info:
            cosine_matrix(*args)
        assert info.value.field == field


def test_max_and_argmax_exact() -> None:
    m = np.array([[0.1, 0.9, 0.9], [-0.5, -0.2, -0.7], [0.0, 0.0, 0.0]], dtype=np.float32)
    best, arg = max_and_argmax_rows(m)
    assert best.dtype == np.float32 and arg.dtype == np.int64
    assert best.tolist() == [np.float32(0.9), np.float32(-0.2), 0.0]
    assert arg.tolist() == [1, 1, 0]  # first index on ties


def test_max_and_argmax_empty() -> None:
    best, arg = max_and_argmax_rows(np.empty((3, 0), np.float32))
    assert best.tolist() == [0.0, 0.0, 0.0] and arg.tolist() == [-1, -1, -1]
    best, arg = max_and_argmax_rows(np.empty((0, 5), np.float32))
    assert best.shape == (0,) and arg.shape == (0,)


@pytest.mark.parametrize("seed", range(200))
def test_max_and_argmax_matches_reference(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n, k = (int(x) for x in rng.integers(0, 8, size=2))
    m = rng.choice(np.array([-1.0, 0.0, 0.25, 0.5, 1.0], np.float32), size=(n, k)).astype(np.float32)
    best, arg = max_and_argmax_rows(m)
    exp_best, exp_arg = ref.max_and_argmax_rows(m)
    assert best.tolist() == exp_best and arg.tolist() == exp_arg
    if k:
        assert arg.tolist() == np.argmax(m, axis=1).tolist()


def test_max_and_argmax_rejects_bad_input() -> None:
    for bad in (np.ones((2, 2)), np.ones(3, np.float32), np.array([[np.inf]], np.float32)):
        with pytest.raises(KernelInputError) as info:
            max_and_argmax_rows(bad)
        assert info.value.field == "m"
