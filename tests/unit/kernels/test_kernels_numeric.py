from __future__ import annotations

import kernels_reference as ref
import numpy as np
import pytest

from certus.kernels import (
    DEFAULT_REL_TOL,
    KernelInputError,
    extract_numbers,
    features_many,
    numeric_consistency,
    numeric_matrix,
)

CONTEXT = "Apple reported Q4 revenue of $89.5B"


@pytest.mark.parametrize(
    ("resp", "ctx", "expected"),
    [
        ("$450 billion", "$89.5B", 0.0),
        ("$89.5 billion", "$89.5B", 1.0),
        ("12%", "0.12", 1.0),
        ("0.12", "12%", 1.0),
        ("$5", "5", 1.0),
        ("$0.12", "12%", 0.0),  # currency never matches percent
        ("Apple's Q4 revenue was $450 billion", CONTEXT, 0.0),
        ("Apple's Q4 revenue was $89.5 billion", CONTEXT, 1.0),
        ("In 2019 revenue was $89.5B and margin 12%.", CONTEXT, 1 / 3),
        ("No numbers here.", CONTEXT, 1.0),
        ("", "", 1.0),
        ("It cost $5.", "", 0.0),
        ("0 and 0", "0", 1.0),
        ("0", "0.0000001", 0.0),  # zero only equals zero
        ("-5", "5", 0.0),
    ],
)
def test_exact_values(resp: str, ctx: str, expected: float) -> None:
    assert numeric_consistency(extract_numbers(resp), extract_numbers(ctx)) == expected


def test_relative_tolerance() -> None:
    a = np.array([[100.0, 0.0]])
    assert numeric_consistency(a, np.array([[100.00001, 0.0]])) == 1.0  # within 1e-6 relative
    assert numeric_consistency(a, np.array([[100.001, 0.0]])) == 0.0
    assert numeric_consistency(a, np.array([[100.001, 0.0]]), rel_tol=1e-4) == 1.0
    assert numeric_consistency(a, np.array([[100.0, 0.0]]), rel_tol=0.0) == 1.0
    assert numeric_consistency(a, np.array([[100.00001, 0.0]]), rel_tol=0.0) == 0.0
    assert DEFAULT_REL_TOL == 1e-6


def test_window_edge_is_exact() -> None:
    # |a - b| == rel_tol * max(|a|, |b|) exactly (powers of two): agrees; a hair beyond: does not.
    a = np.array([[1.0, 0.0]])
    assert numeric_consistency(a, np.array([[0.75, 0.0]]), rel_tol=0.25) == 1.0  # 0.25 <= 0.25*1
    assert numeric_consistency(a, np.array([[4 / 3, 0.0]]), rel_tol=0.25) == 1.0  # 1/3 <= 0.25*4/3
    assert numeric_consistency(a, np.array([[0.7499999, 0.0]]), rel_tol=0.25) == 0.0
    assert numeric_consistency(a, np.array([[1.3334, 0.0]]), rel_tol=0.25) == 0.0


def _random_numbers(rng: np.random.Generator, n: int) -> np.ndarray:
    pool = np.array([0.0, 1.0, -1.0, 0.12, 12.0, 2019.0, 89.5e9, 450e9, 1e-300, 1.7e308, -3.5])
    values = rng.choice(pool, size=n)
    # Perturb some values by around the tolerance so both sides of the edge are exercised.
    jitter = rng.choice([0.0, 0.0, 5e-7, -5e-7, 2e-6, -2e-6], size=n)
    values = values * (1.0 + jitter)
    kinds = rng.integers(0, 3, size=n).astype(np.float64)
    return np.ascontiguousarray(np.stack([values, kinds], axis=1).reshape(n, 2))


def _pairs(t: np.ndarray) -> list[tuple[float, float]]:
    return [(float(v), float(k)) for v, k in t]


@pytest.mark.parametrize("seed", range(200))
def test_numeric_consistency_matches_reference(seed: int) -> None:
    rng = np.random.default_rng(seed)
    resp = _random_numbers(rng, int(rng.integers(0, 12)))
    ctx = _random_numbers(rng, int(rng.integers(0, 12)))
    tol = float(rng.choice([0.0, 1e-6, 1e-3]))
    assert numeric_consistency(resp, ctx, tol) == ref.numeric_consistency(_pairs(resp), _pairs(ctx), tol)


@pytest.mark.parametrize("seed", range(200))
def test_numeric_matrix_matches_reference(seed: int) -> None:
    rng = np.random.default_rng(seed)
    a = [_random_numbers(rng, int(rng.integers(0, 6))) for _ in range(int(rng.integers(0, 5)))]
    b = [_random_numbers(rng, int(rng.integers(0, 6))) for _ in range(int(rng.integers(0, 5)))]

    def csr(parts: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        offsets = np.zeros(len(parts) + 1, dtype=np.int64)
        np.cumsum([p.shape[0] for p in parts], out=offsets[1:])
        flat = np.concatenate(parts) if parts else np.empty((0, 2))
        return offsets, np.ascontiguousarray(flat.reshape(-1, 2))

    a_off, a_flat = csr(a)
    b_off, b_flat = csr(b)
    got = numeric_matrix(a_off, a_flat, b_off, b_flat)
    assert got.shape == (len(a), len(b)) and got.dtype == np.float64
    expected = [[ref.numeric_consistency(_pairs(x), _pairs(y), DEFAULT_REL_TOL) for y in b] for x in a]
    assert got.tolist() == expected


def test_matrix_on_real_text() -> None:
    claims = features_many(["Revenue was $89.5 billion.", "Margin was 12%.", "No figures."])
    chunks = features_many([CONTEXT, "Margins: 0.12 and 0.5", "$0.12"])
    m = numeric_matrix(claims.number_offsets, claims.numbers, chunks.number_offsets, chunks.numbers)
    assert m.tolist() == [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [1.0, 1.0, 1.0]]


@pytest.mark.parametrize(
    ("resp", "field"),
    [
        (np.array([1.0, 0.0]), "resp_nums"),  # 1-D
        (np.array([[1.0, 0.0, 0.0]]), "resp_nums"),  # 3 columns
        (np.array([[1.0, 3.0]]), "resp_nums"),  # unknown kind
        (np.array([[np.nan, 0.0]]), "resp_nums"),
        (np.array([[np.inf, 0.0]]), "resp_nums"),
        (np.array([[1, 0]], dtype=np.int64), "resp_nums"),
        (np.asfortranarray(np.array([[1.0, 0.0], [2.0, 0.0]])), "resp_nums"),
    ],
)
def test_rejects_bad_tables(resp: np.ndarray, field: str) -> None:
    with pytest.raises(KernelInputError) as info:
        numeric_consistency(resp, np.empty((0, 2)))
    assert info.value.field == field


@pytest.mark.parametrize("tol", [-0.1, 1.0, 2.0, float("nan"), "0.1", True])
def test_rejects_bad_tolerance(tol: object) -> None:
    with pytest.raises(KernelInputError) as info:
        numeric_consistency(np.empty((0, 2)), np.empty((0, 2)), tol)  # type: ignore[arg-type]
    assert info.value.field == "rel_tol"


def test_matrix_rejects_offsets_not_matching_table() -> None:
    with pytest.raises(KernelInputError) as info:
        numeric_matrix(np.array([0, 1], np.int64), np.empty((0, 2)), np.array([0], np.int64), np.empty((0, 2)))
    assert info.value.field == "a_offsets"
