"""The one Adam every trainer uses: the textbook update, bit for bit, in place, dtype kept."""

from __future__ import annotations

import numpy as np

from certus.models.adam import Adam


def reference(params: list[np.ndarray], grads_per_step: list[list[np.ndarray]], lrs: list[float]) -> list[np.ndarray]:
    """The update the trainers wrote out inline before they shared :class:`Adam`."""
    params = [p.copy() for p in params]
    m = [np.zeros_like(p) for p in params]
    v = [np.zeros_like(p) for p in params]
    for t, (grads, lr) in enumerate(zip(grads_per_step, lrs), start=1):
        b1c, b2c = 1 - 0.9**t, 1 - 0.999**t
        for i, g in enumerate(grads):
            m[i] = 0.9 * m[i] + 0.1 * g
            v[i] = 0.999 * v[i] + 0.001 * g * g
            params[i] -= (lr * (m[i] / b1c) / (np.sqrt(v[i] / b2c) + 1e-8)).astype(params[i].dtype)
    return params


def test_steps_equal_the_textbook_update_bit_for_bit_in_each_dtype() -> None:
    rng = np.random.default_rng(5)
    for dtype in (np.float64, np.float32):
        params = [rng.standard_normal((7, 3)).astype(dtype), rng.standard_normal(3).astype(dtype), np.zeros(1, dtype)]
        grads = [[rng.standard_normal(p.shape).astype(dtype) for p in params] for _ in range(25)]
        lrs = [0.01 * (1 - k / 25) for k in range(25)]  # a decaying schedule, as the PII trainer's
        want = reference(params, grads, lrs)
        got = [p.copy() for p in params]
        ids = [id(p) for p in got]
        opt = Adam(got, lrs[0])
        for g, lr in zip(grads, lrs):
            opt.lr = lr
            opt.step(got, g)
        assert [id(p) for p in got] == ids  # in place
        for a, b in zip(got, want):
            assert a.dtype == dtype and a.tobytes() == b.tobytes()


def test_it_minimises_a_quadratic() -> None:
    target = np.array([3.0, -2.0, 0.5])
    p = np.zeros(3)
    opt = Adam([p], 0.05)
    for _ in range(2000):
        opt.step([p], [2 * (p - target)])
    np.testing.assert_allclose(p, target, atol=1e-3)
