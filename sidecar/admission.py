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
being measured). With several front-end processes the counts and rates are summed over all of them
(:class:`PeerSlots`), so the floor and the limit are the sidecar's. ``target_ms = 0`` turns admission off (the encoder queue's own bound still holds).
The controller is touched only by the event loop thread: no lock.
"""

from __future__ import annotations

import collections
import math
import time
from pathlib import Path
from typing import Callable

WINDOW_S = 1.0  # completions counted over this sliding window
DECAY_S = 10.0  # time constant of the measured service rate's decay


class PeerSlots:
    """With several front-end processes (server.frontends) admission is the sidecar's, not each
    process's: every process publishes its calls in flight and its measured rate in its own slot of
    a small file mapped into all of them (float64 pairs; one writer per slot, so no lock, and an
    aligned 8-byte store is never torn), and admits against the sums. A process that died leaves a
    stale slot until the hub clears it (:meth:`clear`)."""

    def __init__(self, path: str | Path, processes: int, index: int) -> None:
        import numpy as np

        self.index = index
        self._slots = np.memmap(path, dtype=np.float64, mode="r+", shape=(processes, 2))
        self.publish(0, 0.0)

    @staticmethod
    def create(path: str | Path, processes: int) -> None:
        Path(path).write_bytes(b"\0" * (processes * 16))

    def publish(self, in_flight: int, rate: float) -> None:
        self._slots[self.index, 0] = in_flight
        self._slots[self.index, 1] = rate

    def clear(self, index: int) -> None:
        self._slots[index] = 0.0

    def totals(self, own: tuple[float, float] | None = None) -> tuple[float, float]:
        """Calls in flight and completions/s, over every process; with ``own``, this process's
        current values in place of its slot's (a read that does not write)."""
        in_flight, rate = self._slots.sum(axis=0)
        if own is not None:
            in_flight += own[0] - self._slots[self.index, 0]
            rate += own[1] - self._slots[self.index, 1]
        return float(in_flight), float(rate)


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
        self.peers: PeerSlots | None = None  # set when several front-end processes share the sidecar

    @property
    def enabled(self) -> bool:
        return self.target_s > 0

    def service_rate(self) -> float:
        """Evaluations/s the sidecar has shown it completes (decayed maximum)."""
        return self._rate * math.exp(-(self._clock() - self._rate_at) / DECAY_S)

    def _load(self) -> tuple[float, float]:
        """Calls in flight and service rate: this process's, or with peers every process's (this
        process's own current values with the others' as last published; nothing is written)."""
        if self.peers is None:
            return self.in_flight, self.service_rate()
        return self.peers.totals((self.in_flight, self.service_rate()))

    def _limit(self, rate: float) -> int:
        return max(self.min_in_flight, int(rate * self.target_s))

    @property
    def limit(self) -> int:
        return self._limit(self._load()[1])

    def try_enter(self) -> bool:
        """Admit one evaluation (then call :meth:`leave` when it completes) or refuse it."""
        if self.enabled:
            in_flight, rate = self._load()
            if in_flight >= self._limit(rate):
                self.refused += 1
                return False
        self.in_flight += 1
        self.admitted += 1
        if self.peers is not None:
            self.peers.publish(self.in_flight, self.service_rate())
        return True

    def leave(self) -> None:
        self.in_flight -= 1
        now = self._clock()
        done = self._done
        done.append(now)
        while done and done[0] <= now - WINDOW_S:
            done.popleft()
        self._rate, self._rate_at = max(len(done) / WINDOW_S, self.service_rate()), now
        if self.peers is not None:
            self.peers.publish(self.in_flight, self._rate)

    def stats(self) -> dict[str, float | int]:
        return {
            "target_ms": round(self.target_s * 1000.0, 1),
            "limit": self.limit,
            "in_flight": self.in_flight,  # this process's (the limit is over every process)
            "service_rate": round(self.service_rate(), 1),
            "admitted": self.admitted,
            "refused": self.refused,
        }
