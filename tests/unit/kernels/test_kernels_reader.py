"""The answer head's serving kernel against a plain Python reference, and against the trainer's NumPy
form of the head (``AnswerHead.forward(..., keep=True)``) on the shipped weights."""

from __future__ import annotations

import numpy as np
import pytest

from certus.kernels import KernelInputError, answer_conv
from certus.sidecar.verifier import default_answer_head


def reference(products: np.ndarray, raw: np.ndarray, conv: np.ndarray, scale: float) -> list[float]:
    k, n, _ = products.shape
    x = [[float(products[c, i].max()) * scale for i in range(n)] for c in range(k)] + [[float(v) for v in raw]]
    w = (conv.shape[1] - 1) // 2
    return [
        sum(x[c][p] * float(conv[c, t]) for c in range(k + 1) for t in range(conv.shape[1]) if 0 <= (p := i + t - w) < n)
        for i in range(n)
    ]


@pytest.mark.parametrize("seed", range(6))
def test_the_kernel_matches_the_reference(seed: int) -> None:
    rng = np.random.default_rng(seed)
    k, n, m, w = int(rng.integers(1, 5)), int(rng.integers(1, 40)), int(rng.integers(1, 9)), int(rng.integers(0, 5))
    products = rng.normal(size=(k, n, m)).astype(np.float32)
    raw = rng.uniform(-1, 1, n).astype(np.float32)
    conv = rng.normal(size=(k + 1, 2 * w + 1)).astype(np.float32)
    got = answer_conv(products, raw, conv, 0.25)
    assert got.dtype == np.float32 and got.shape == (n,)
    np.testing.assert_allclose(got, reference(products, raw, conv, 0.25), rtol=1e-5, atol=1e-5)


def test_a_chunk_shorter_than_the_window_sees_zeros_beyond_its_ends() -> None:
    conv = np.zeros((2, 5), dtype=np.float32)
    conv[1] = [1, 10, 100, 1000, 10000]  # the raw channel only: the logit spells out its window
    got = answer_conv(np.zeros((1, 2, 1), np.float32), np.array([1.0, 2.0], np.float32), conv, 1.0)
    # piece 0 sees (0, 0, raw0, raw1, 0), piece 1 sees (0, raw0, raw1, 0, 0)
    assert got.tolist() == [100 * 1 + 1000 * 2, 10 * 1 + 100 * 2]


def test_serving_and_the_trainers_form_of_the_head_agree() -> None:
    head = default_answer_head()
    rng = np.random.default_rng(7)
    for n, m in ((130, 16), (1, 1), (5, 40), (300, 3)):
        c = rng.normal(size=(n, 384)).astype(np.float32)
        q = rng.normal(size=(m, 384)).astype(np.float32)
        c /= np.linalg.norm(c, axis=1, keepdims=True)
        q /= np.linalg.norm(q, axis=1, keepdims=True)
        trained, _ = head.forward(q, c, keep=True)
        for raw in (None, (q @ c.T).max(axis=0)):
            np.testing.assert_allclose(head.forward(q, c, raw=raw), trained, rtol=0, atol=2e-6)


def test_bad_arguments_name_the_field() -> None:
    s = np.ones((2, 3, 4), np.float32)
    raw = np.ones(3, np.float32)
    conv = np.ones((3, 5), np.float32)
    for call, field in (
        (lambda: answer_conv(s.astype(np.float64), raw, conv, 1.0), "products"),
        (lambda: answer_conv(np.ones((2, 3, 0), np.float32), raw, conv, 1.0), "products"),
        (lambda: answer_conv(s, np.ones(4, np.float32), conv, 1.0), "raw"),
        (lambda: answer_conv(s, raw, np.ones((2, 5), np.float32), 1.0), "conv"),
        (lambda: answer_conv(s, raw, np.ones((3, 4), np.float32), 1.0), "conv"),
        (lambda: answer_conv(s, raw, conv[:, ::2], 1.0), "conv"),
    ):
        with pytest.raises(KernelInputError) as e:
            call()
        assert e.value.field == field
