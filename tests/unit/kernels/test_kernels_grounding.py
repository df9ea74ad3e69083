from __future__ import annotations

import kernels_reference as ref
import numpy as np
import pytest

from certus.kernels import (
    KernelInputError,
    features,
    features_many,
    pack_features,
    term_grounding,
    term_grounding_matrix,
)

CONTEXT = "Apple reported Q4 revenue of $89.5B"


def test_seed_example_wrong_number() -> None:
    resp = features("Apple's Q4 revenue was $450 billion")
    # apple, q4, revenue grounded; 450e9 not: 3 of 4.
    assert term_grounding(resp.terms, features(CONTEXT).terms) == 0.75


def test_seed_example_all_grounded() -> None:
    resp = features("Apple's Q4 revenue was $89.5 billion")
    assert term_grounding(resp.terms, features(CONTEXT).terms) == 1.0


def test_no_content_terms_is_one() -> None:
    assert term_grounding(features("It was the one.").terms, features(CONTEXT).terms) == 1.0
    assert term_grounding(np.empty(0, np.int64), np.empty(0, np.int64)) == 1.0


def test_empty_context_is_zero() -> None:
    assert term_grounding(features("Apple revenue").terms, np.empty(0, np.int64)) == 0.0


def test_counts_occurrences_not_unique_terms() -> None:
    resp = np.array([1, 1, 1, 2], dtype=np.int64)
    assert term_grounding(resp, np.array([1], dtype=np.int64)) == 0.75
    assert term_grounding(resp, np.array([2, 2, 2], dtype=np.int64)) == 0.25


def test_one_term_each_side() -> None:
    one = np.array([7], dtype=np.int64)
    assert term_grounding(one, one) == 1.0
    assert term_grounding(one, np.array([8], dtype=np.int64)) == 0.0


def test_extreme_int64_values() -> None:
    lo, hi = np.iinfo(np.int64).min, np.iinfo(np.int64).max
    resp = np.array([lo, hi, 0], dtype=np.int64)
    assert term_grounding(resp, np.array([hi, lo], dtype=np.int64)) == pytest.approx(2 / 3, abs=0)


def _random_csr(rng: np.random.Generator, k: int, vocab: int) -> tuple[np.ndarray, np.ndarray, list[list[int]]]:
    lists = [rng.integers(-vocab, vocab, size=rng.integers(0, 12)).tolist() for _ in range(k)]
    offsets = np.zeros(k + 1, dtype=np.int64)
    np.cumsum([len(x) for x in lists], out=offsets[1:])
    flat = np.array([t for x in lists for t in x], dtype=np.int64)
    return offsets, flat, lists


@pytest.mark.parametrize("seed", range(200))
def test_term_grounding_matches_reference(seed: int) -> None:
    rng = np.random.default_rng(seed)
    vocab = int(rng.integers(1, 40))
    resp = rng.integers(-vocab, vocab, size=rng.integers(0, 30)).astype(np.int64)
    ctx = rng.integers(-vocab, vocab, size=rng.integers(0, 30)).astype(np.int64)
    assert term_grounding(resp, ctx) == ref.term_grounding(resp.tolist(), ctx.tolist())


@pytest.mark.parametrize("seed", range(200))
def test_term_grounding_matrix_matches_reference(seed: int) -> None:
    rng = np.random.default_rng(seed)
    vocab = int(rng.integers(1, 30))
    a_off, a_flat, a_lists = _random_csr(rng, int(rng.integers(0, 6)), vocab)
    b_off, b_flat, b_lists = _random_csr(rng, int(rng.integers(0, 6)), vocab)
    got = term_grounding_matrix(a_off, a_flat, b_off, b_flat)
    assert got.dtype == np.float64 and got.shape == (len(a_lists), len(b_lists))
    assert got.tolist() == ref.term_grounding_matrix(a_lists, b_lists)
    # The matrix is the single-pair kernel, cell by cell.
    for i, x in enumerate(a_lists):
        for j, y in enumerate(b_lists):
            assert got[i, j] == term_grounding(np.array(x, np.int64), np.array(y, np.int64))


def test_matrix_on_real_text_claims_by_chunks() -> None:
    claims = features_many(["Apple's Q4 revenue was $89.5 billion.", "It grew 12%.", "The sky."])
    chunks = features_many(["Apple reported Q4 revenue of $89.5B", "Growth was 0.12 this year", ""])
    m = term_grounding_matrix(claims.term_offsets, claims.terms, chunks.term_offsets, chunks.terms)
    # claim 0 terms: apple q4 revenue 89.5e9; claim 1: grew 0.12; claim 2: sky.
    assert m.tolist() == [[1.0, 0.0, 0.0], [0.0, 0.5, 0.0], [0.0, 0.0, 0.0]]


def test_matrix_empty_sides() -> None:
    empty = pack_features([])
    one = features_many(["revenue"])
    assert term_grounding_matrix(empty.term_offsets, empty.terms, one.term_offsets, one.terms).shape == (0, 1)
    assert term_grounding_matrix(one.term_offsets, one.terms, empty.term_offsets, empty.terms).shape == (1, 0)
    none_terms = features_many(["the of"])
    assert term_grounding_matrix(none_terms.term_offsets, none_terms.terms, one.term_offsets, one.terms).tolist() == [
        [1.0]
    ]


def test_matrix_does_not_modify_inputs() -> None:
    b = features_many(["zeta alpha beta", "gamma delta"])
    before = b.terms.copy()
    term_grounding_matrix(b.term_offsets, b.terms, b.term_offsets, b.terms)
    assert np.array_equal(b.terms, before)


@pytest.mark.parametrize(
    ("args", "field"),
    [
        ((np.array([1.0]), np.array([1], np.int64)), "resp_terms"),
        ((np.array([1], np.int64), np.array([1], np.int32)), "ctx_terms"),
        (([1, 2], np.array([1], np.int64)), "resp_terms"),
        ((np.array([[1]], np.int64), np.array([1], np.int64)), "resp_terms"),
        ((np.arange(10, dtype=np.int64)[::2], np.array([1], np.int64)), "resp_terms"),
    ],
)
def test_term_grounding_rejects_bad_arrays(args: tuple[object, object], field: str) -> None:
    with pytest.raises(KernelInputError) as info:
        term_grounding(*args)  # type: ignore[arg-type]
    assert info.value.field == field


@pytest.mark.parametrize(
    ("a_off", "b_off", "field"),
    [
        (np.array([0, 3], np.int64), np.array([0, 1], np.int64), "a_offsets"),  # does not end at len
        (np.array([1, 2], np.int64), np.array([0, 1], np.int64), "a_offsets"),  # does not start at 0
        (np.array([0, 2, 1, 2], np.int64), np.array([0, 1], np.int64), "a_offsets"),  # decreasing
        (np.array([0, 2], np.int64), np.array([], np.int64), "b_offsets"),  # empty
        (np.array([0, 2], np.int64), np.array([0, 1], np.int32), "b_offsets"),  # dtype
    ],
)
def test_matrix_rejects_bad_offsets(a_off: np.ndarray, b_off: np.ndarray, field: str) -> None:
    with pytest.raises(KernelInputError) as info:
        term_grounding_matrix(a_off, np.array([1, 2], np.int64), b_off, np.array([1], np.int64))
    assert info.value.field == field


@pytest.mark.parametrize("seed", range(200))
@pytest.mark.parametrize("max_cells", [1, 7, 64])
def test_matrix_column_blocks_match_reference(seed: int, max_cells: int) -> None:
    """A tiny membership budget forces the chunk-block path; the result must not change."""
    from certus.kernels.grounding import _term_grounding_matrix

    rng = np.random.default_rng(10_000 + seed)
    vocab = int(rng.integers(1, 30))
    a_off, a_flat, a_lists = _random_csr(rng, int(rng.integers(0, 6)), vocab)
    b_off, b_flat, b_lists = _random_csr(rng, int(rng.integers(0, 9)), vocab)
    got = _term_grounding_matrix(a_off, a_flat, b_off, b_flat, max_cells)
    assert got.tolist() == ref.term_grounding_matrix(a_lists, b_lists)


@pytest.mark.parametrize("seed", range(50))
def test_term_grounding_large_inputs_use_the_sorted_path(seed: int) -> None:
    rng = np.random.default_rng(20_000 + seed)
    resp = rng.integers(-500, 500, size=int(rng.integers(60, 300))).astype(np.int64)
    ctx = rng.integers(-500, 500, size=int(rng.integers(70, 400))).astype(np.int64)
    assert resp.size * ctx.size > 4096
    assert term_grounding(resp, ctx) == ref.term_grounding(resp.tolist(), ctx.tolist())
