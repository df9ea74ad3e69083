"""Admission of synchronous evaluations by measured service rate (a pipeline stage).

Over capacity, a queue only turns every caller's answer late. The limit on evaluations in flight is
Little's law applied to what the sidecar measures: ``limit = service_rate × target_latency``, where
the service rate is the highest completion rate over a sliding one-second window seen recently
(it decays with a time constant of ``DECAY_S`` so the limit follows a slower machine down), and
``target_latency`` is ``CERTUS_ADMISSION_TARGET_MS``. At the fixed point the mean time in the
sidecar is the target: when the sidecar is faster than that at the current limit, it completes more
per second and the limit grows; when slower, the rate drops and the limit shrinks. A call that
finds the limit reached is answered at once with a signed ``skipped=true, skip_reason=overloaded``
decision, in the time it takes to sign and log it, instead of waiting in a queue.

The limit never goes below ``min_in_flight`` (light load is never refused, and a rate is always
being measured). ``target_ms = 0`` turns admission off (the encoder queue's own bound still holds).
The controller is touched only by the event loop thread: no lock.
"""

from __future__ import annotations

import collections
import math
import time
from typing import Callable

WINDOW_S = 1.0  # completions counted over this sliding window
DECAY_S = 10.0  # time constant of the measured service rate's decay


def process_floor(min_in_flight: int, processes: int) -> int:
    """Each of ``processes`` front-end processes (server.frontends) admits on its own, measuring its
    own share of the completions, so the limits add up to the sidecar's rate x target; the floor is
    the sidecar's, shared out the same way (else N processes would let N floors in at once)."""
    return max(1, math.ceil(min_in_flight / max(1, processes)))


class Admission:
    def __init__(self, target_ms: float, *, min_in_flight: int = 2, clock: Callable[[], float] = time.monotonic) -> None:
        if target_ms < 0 or min_in_flight < 1:
            raise ValueError("admission: target_ms must be >= 0 and min_in_flight >= 1")
        self.target_s = target_ms / 1000.0
        self.min_in_flight = min_in_flight
        self._clock = clock
        self._done: collections.deque[float] = collections.deque()  # completion times in the window
        self._rate = 0.0  # decayed maximum of the windowed completion rate (evaluations/s)
        self._rate_at = clock()
        self.in_flight = 0
        self.admitted = 0
        self.refused = 0

    @property
    def enabled(self) -> bool:
        return self.target_s > 0

    def service_rate(self) -> float:
        """Evaluations/s the sidecar has shown it completes (decayed maximum)."""
        return self._rate * math.exp(-(self._clock() - self._rate_at) / DECAY_S)

    @property
    def limit(self) -> int:
        return max(self.min_in_flight, int(self.service_rate() * self.target_s))

    def try_enter(self) -> bool:
        """Admit one evaluation (then call :meth:`leave` when it completes) or refuse it."""
        if self.enabled and self.in_flight >= self.limit:
            self.refused += 1
            return False
        self.in_flight += 1
        self.admitted += 1
        return True

    def leave(self) -> None:
        self.in_flight -= 1
        now = self._clock()
        done = self._done
        done.append(now)
        while done and done[0] <= now - WINDOW_S:
            done.popleft()
        self._rate, self._rate_at = max(len(done) / WINDOW_S, self.service_rate()), now

    def stats(self) -> dict[str, float | int]:
        return {
            "target_ms": round(self.target_s * 1000.0, 1),
            "limit": self.limit,
            "in_flight": self.in_flight,
            "service_rate": round(self.service_rate(), 1),
            "admitted": self.admitted,
            "refused": self.refused,
        }
