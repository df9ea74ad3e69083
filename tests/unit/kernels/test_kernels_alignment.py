from __future__ import annotations

import numpy as np
import pytest

from certus.kernels import KernelInputError, N_ALIGNMENT, alignment_rows, best_match


def unit(rows: list[list[float]]) -> np.ndarray:
    a = np.array(rows, dtype=np.float32)
    return a / np.linalg.norm(a, axis=1, keepdims=True)


def test_best_match_is_each_claim_tokens_best_cosine() -> None:
    claims = unit([[1, 0, 0], [0, 1, 0], [0, 0, 1]])
    ctx = unit([[1, 0, 0], [0, 1, 1]])
    got = best_match(claims, ctx)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, [1.0, np.sqrt(0.5), np.sqrt(0.5)], atol=1e-6)
    assert best_match(claims, np.zeros((0, 3), np.float32)).tolist() == [0.0, 0.0, 0.0]


def test_rows_per_claim_mean_min_unsupported_and_worst_three() -> None:
    best = np.array([0.9, 0.8, 0.2, 0.4, 1.0, 0.6, 0.7], dtype=np.float32)
    offsets = np.array([0, 3, 3, 7], dtype=np.int64)  # claim 1 has no content token
    rows = alignment_rows(best, offsets)
    assert rows.shape == (3, N_ALIGNMENT)
    np.testing.assert_allclose(rows[0], [np.mean([0.9, 0.8, 0.2]), 0.2, 1 / 3, np.log1p(1), np.mean([0.9, 0.8, 0.2])], atol=1e-6)
    assert rows[1].tolist() == [1.0, 1.0, 0.0, 0.0, 1.0]
    np.testing.assert_allclose(rows[2], [np.mean([0.4, 1.0, 0.6, 0.7]), 0.4, 0.25, np.log1p(1), np.mean([0.4, 0.6, 0.7])], atol=1e-6)


def test_bad_arguments_name_the_field() -> None:
    ok = np.ones((2, 3), np.float32)
    with pytest.raises(KernelInputError) as e:
        best_match(ok.astype(np.float64), ok)
    assert e.value.field == "claim_states"
    with pytest.raises(KernelInputError) as e:
        best_match(ok, np.ones((2, 4), np.float32))
    assert e.value.field == "context_states"
    with pytest.raises(KernelInputError) as e:
        alignment_rows(np.ones(3, np.float32), np.array([0, 2], np.int64))
    assert e.value.field == "offsets"
    with pytest.raises(KernelInputError) as e:
        alignment_rows(np.ones(3, np.float32), np.array([0, 2, 1, 3], np.int64))
    assert e.value.field == "offsets"
