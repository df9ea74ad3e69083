"""Adam (Kingma & Ba, 2015): the one update every trainer of the project uses.

NumPy, in place and deterministic: beta1 0.9, beta2 0.999, eps 1e-8, bias-corrected moments. A
parameter keeps its dtype (a float32 head stays float32); ``lr`` may be changed between steps (a
decaying schedule). The arithmetic is written once, so every trainer's weights depend on the same
float operations in the same order.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


class Adam:
    def __init__(self, params: Sequence[np.ndarray], lr: float) -> None:
        self.lr, self.t = lr, 0
        self.m = [np.zeros_like(p) for p in params]
        self.v = [np.zeros_like(p) for p in params]

    def step(self, params: Sequence[np.ndarray], grads: Sequence[np.ndarray]) -> None:
        """One update of ``params`` (in place, the arrays given to the constructor, in its order)."""
        self.t += 1
        c1, c2 = 1 - 0.9**self.t, 1 - 0.999**self.t
        for i, (p, g) in enumerate(zip(params, grads, strict=True)):
            self.m[i] = 0.9 * self.m[i] + 0.1 * g
            self.v[i] = 0.999 * self.v[i] + 0.001 * g * g
            p -= (self.lr * (self.m[i] / c1) / (np.sqrt(self.v[i] / c2) + 1e-8)).astype(p.dtype, copy=False)
