"""Question focus kernels against a plain O(q * n^2) Python reference on seeded data."""

from __future__ import annotations

import math

import numpy as np
import pytest

from certus.kernels import KernelInputError, focus_at, focus_tables


def reference(sim: np.ndarray, tau: float) -> tuple[float, list[list[float]], list[list[float]]]:
    q, n = sim.shape
    w = lambda d: math.exp(-d / tau)  # noqa: E731
    # a negative cosine counts as 0 (nothing of that question piece said there)
    fwd = [[max([0.0, *(float(sim[i, j]) * w(c - j) for j in range(c + 1))]) for c in range(n)] for i in range(q)]
    bwd = [[max([0.0, *(float(sim[i, j]) * w(j - c) for j in range(c, n))]) for c in range(n)] for i in range(q)]
    best = max(sum(max([0.0, *(float(sim[i, j]) * w(abs(j - c)) for j in range(n))]) for i in range(q)) / q for c in range(n))
    return best, fwd, bwd


def reference_at(sim: np.ndarray, lo: int, hi: int, tau: float) -> float:
    q, n = sim.shape
    out = 0.0
    for i in range(q):
        d = [float(sim[i, j]) * math.exp(-(lo - j if j < lo else j - hi) / tau) for j in range(n) if not lo <= j <= hi]
        out += max([0.0, *d])
    return out / q


@pytest.mark.parametrize("seed", range(5))
def test_tables_and_spans_match_the_reference(seed: int) -> None:
    rng = np.random.default_rng(seed)
    q, n = int(rng.integers(1, 7)), int(rng.integers(1, 40))
    sim = rng.uniform(-0.2, 1.0, size=(q, n)).astype(np.float32)
    tau = float(rng.uniform(2, 30))
    best, fwd, bwd = focus_tables(sim, tau)
    ref_best, ref_fwd, ref_bwd = reference(sim, tau)
    assert best == pytest.approx(ref_best, abs=1e-5)
    np.testing.assert_allclose(fwd, ref_fwd, atol=1e-5)
    np.testing.assert_allclose(bwd, ref_bwd, atol=1e-5)
    spans = np.array(sorted({tuple(sorted(rng.integers(0, n, 2).tolist())) for _ in range(6)}), dtype=np.int64)
    got = focus_at(fwd, bwd, spans, tau)
    want = [reference_at(sim, lo, hi, tau) for lo, hi in spans]
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_the_question_near_a_span_scores_higher_than_far_from_it() -> None:
    sim = np.zeros((2, 30), dtype=np.float32)
    sim[0, 5] = sim[1, 7] = 1.0  # both question pieces said around position 6
    best, fwd, bwd = focus_tables(sim, 8.0)
    near, far = focus_at(fwd, bwd, np.array([[6, 6], [25, 26]], dtype=np.int64), 8.0)
    assert near == pytest.approx(math.exp(-1 / 8.0))
    assert far < near <= best
    # a span's own pieces never count: the question's words are near it, not in it
    assert focus_at(fwd, bwd, np.array([[5, 7]], dtype=np.int64), 8.0)[0] == 0.0


def test_empty_inputs_and_bad_arguments_name_the_field() -> None:
    best, fwd, bwd = focus_tables(np.zeros((0, 5), np.float32))
    assert best == 0.0 and focus_at(fwd, bwd, np.array([[0, 1]], np.int64)).tolist() == [0.0]
    ok = np.ones((2, 4), np.float32)
    _, f, b = focus_tables(ok)
    for call, field in (
        (lambda: focus_tables(ok.astype(np.float64)), "sim"),
        (lambda: focus_tables(ok, tau=0.0), "tau"),
        (lambda: focus_tables(ok, tau=float("nan")), "tau"),
        (lambda: focus_at(f, b[:, :3].copy(), np.array([[0, 0]], np.int64)), "bwd"),
        (lambda: focus_at(f, b, np.array([[0, 4]], np.int64)), "spans"),
        (lambda: focus_at(f, b, np.array([[2, 1]], np.int64)), "spans"),
        (lambda: focus_at(f, b, np.array([[0, 1, 2]], np.int64)), "spans"),
    ):
        with pytest.raises(KernelInputError) as e:
            call()
        assert e.value.field == field
