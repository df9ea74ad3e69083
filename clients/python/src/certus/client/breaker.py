"""The circuit breaker shared by the forwarder and the Python clients (seed §8.3).

``closed`` -> ``open`` after ``failure_threshold`` consecutive failures; after ``recovery_timeout_s``
it lets ONE probe through (``half_open``): success closes it, failure opens it again for another
``recovery_timeout_s``. The clock is injectable (tests drive it by hand).

Two ways to use it:

- ``allow()`` (the clients): asks and claims in one step; in half-open only the single caller that
  gets ``True`` makes the probe, others get ``False`` until it is recorded;
- ``wait_s()`` + ``before_call()`` (the forwarder, one sender): wait until a call may be made, then
  turn a due open breaker half-open right before the attempt.

Thread-safe. ``on_change(state)`` (optional) is called on every transition, and subclasses may
override ``_changed`` (the clients log there).
"""

from __future__ import annotations

import threading
import time
from typing import Callable


class CircuitBreaker:
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"

    # prefix of the setting names in argument errors (e.g. "forwarder.")
    setting_prefix = ""

    def __init__(
        self, failure_threshold: int = 3, recovery_timeout_s: float = 30.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if failure_threshold < 1:
            raise ValueError(f"{self.setting_prefix}failure_threshold must be >= 1")
        if recovery_timeout_s < 0:
            raise ValueError(f"{self.setting_prefix}recovery_timeout_s must be >= 0")
        self.failure_threshold = failure_threshold
        self.recovery_timeout_s = recovery_timeout_s
        self._clock = clock
        self._lock = threading.RLock()
        self._state = self.CLOSED
        self._failures = 0
        self._opened_at = 0.0
        self._probe_in_flight = False
        self.times_opened = 0
        self.times_closed = 0  # recoveries: half_open -> closed
        self.on_change: Callable[[str], None] | None = None

    @property
    def state(self) -> str:
        with self._lock:
            return self._state

    @property
    def consecutive_failures(self) -> int:
        return self._failures

    def wait_s(self) -> float:
        """Seconds until a call may be made (0 when closed or when a probe is due)."""
        with self._lock:
            if self._state != self.OPEN:
                return 0.0
            return max(0.0, self._opened_at + self.recovery_timeout_s - self._clock())

    def before_call(self) -> None:
        """Call right before an attempt: an open breaker whose timeout passed becomes half-open."""
        with self._lock:
            if self._state == self.OPEN and self.wait_s() <= 0:
                self._half_open()

    def allow(self) -> bool:
        """May a call be made now? In half-open only the single probe call is allowed."""
        with self._lock:
            if self._state == self.CLOSED:
                return True
            if self._state == self.OPEN:
                if self._clock() - self._opened_at < self.recovery_timeout_s:
                    return False
                self._half_open()
            if self._probe_in_flight:
                return False
            self._probe_in_flight = True
            return True

    def record_success(self) -> None:
        with self._lock:
            self._failures = 0
            self._probe_in_flight = False
            if self._state != self.CLOSED:
                self.times_closed += 1
                self._set(self.CLOSED)

    def record_failure(self) -> None:
        with self._lock:
            self._failures += 1
            self._probe_in_flight = False
            if self._state == self.HALF_OPEN or (self._state == self.CLOSED and self._failures >= self.failure_threshold):
                self._opened_at = self._clock()
                self.times_opened += 1
                self._set(self.OPEN)

    def _half_open(self) -> None:
        self._probe_in_flight = False
        self._set(self.HALF_OPEN)

    def _set(self, state: str) -> None:
        self._state = state
        self._changed(state)

    def _changed(self, state: str) -> None:
        if self.on_change is not None:
            self.on_change(state)


__all__ = ["CircuitBreaker"]
