"""Retry policy (as data) and the circuit breaker of the forwarder.

Retry: a failed delivery is retried when its status is in the retryable set, after
``delay = max(server hint, uniform(0, min(max_s, initial_s * 2**(attempt-1))))`` — exponential
backoff with full jitter, never shorter than a ``Retry-After`` / ``retry-after`` hint. Each attempt
has its own deadline (``ForwarderConfig.timeout_s``). Auth failures are retryable on purpose: they
are configuration problems, and giving up would drop evidence; the backlog grows visibly instead.
Only a receiver's explicit rejection of a record (bad signature or payload) dead-letters it.

Breaker (seed §8.3): ``closed`` -> ``open`` after ``failure_threshold`` consecutive failures; after
``recovery_timeout_s`` it lets ONE probe through (``half_open``): success closes it, failure opens
it again for another ``recovery_timeout_s``.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from typing import Callable

from sidecar.config import ForwarderConfig

RETRYABLE_HTTP = frozenset({401, 403, 408, 425, 429, 500, 502, 503, 504})
RETRYABLE_GRPC = frozenset(
    {
        "UNAVAILABLE",
        "DEADLINE_EXCEEDED",
        "RESOURCE_EXHAUSTED",
        "ABORTED",
        "INTERNAL",
        "UNKNOWN",
        "UNAUTHENTICATED",
        "PERMISSION_DENIED",
        "CANCELLED",
    }
)


@dataclass(frozen=True)
class RetryPolicy:
    initial_s: float = 0.2
    max_s: float = 30.0
    attempt_timeout_s: float = 5.0
    retryable_http: frozenset[int] = field(default=RETRYABLE_HTTP)
    retryable_grpc: frozenset[str] = field(default=RETRYABLE_GRPC)

    @classmethod
    def from_config(cls, cfg: ForwarderConfig) -> "RetryPolicy":
        if cfg.backoff_initial_s <= 0 or cfg.backoff_max_s < cfg.backoff_initial_s:
            raise ValueError("forwarder.backoff_initial_s must be > 0 and <= forwarder.backoff_max_s")
        if cfg.timeout_s <= 0:
            raise ValueError("forwarder.timeout_s must be > 0")
        return cls(initial_s=cfg.backoff_initial_s, max_s=cfg.backoff_max_s, attempt_timeout_s=cfg.timeout_s)

    def backoff_cap_s(self, attempt: int) -> float:
        """Upper bound of the jittered delay after the ``attempt``-th consecutive failure (1-based)."""
        exp = min(max(attempt, 1) - 1, 62)
        return min(self.max_s, self.initial_s * (2.0**exp))

    def delay_s(self, attempt: int, rng: random.Random, retry_after_s: float | None = None) -> float:
        jittered = rng.uniform(0.0, self.backoff_cap_s(attempt))
        if retry_after_s is not None and retry_after_s > 0:
            return max(jittered, min(retry_after_s, self.max_s))
        return jittered


class CircuitBreaker:
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"

    def __init__(
        self, failure_threshold: int = 3, recovery_timeout_s: float = 30.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if failure_threshold < 1:
            raise ValueError("forwarder.failure_threshold must be >= 1")
        if recovery_timeout_s < 0:
            raise ValueError("forwarder.recovery_timeout_s must be >= 0")
        self.failure_threshold = failure_threshold
        self.recovery_timeout_s = recovery_timeout_s
        self._clock = clock
        self._state = self.CLOSED
        self._failures = 0
        self._opened_at = 0.0
        self.times_opened = 0
        self.times_closed = 0  # recoveries: half_open -> closed
        self.on_change: Callable[[str], None] | None = None

    @property
    def state(self) -> str:
        return self._state

    @property
    def consecutive_failures(self) -> int:
        return self._failures

    def wait_s(self) -> float:
        """Seconds until a call may be made (0 when closed or when a probe is due)."""
        if self._state != self.OPEN:
            return 0.0
        return max(0.0, self._opened_at + self.recovery_timeout_s - self._clock())

    def before_call(self) -> None:
        """Call right before an attempt: an open breaker whose timeout passed becomes half-open."""
        if self._state == self.OPEN and self.wait_s() <= 0:
            self._set(self.HALF_OPEN)

    def record_success(self) -> None:
        self._failures = 0
        if self._state != self.CLOSED:
            self.times_closed += 1
            self._set(self.CLOSED)

    def record_failure(self) -> None:
        self._failures += 1
        if self._state == self.HALF_OPEN or (self._state == self.CLOSED and self._failures >= self.failure_threshold):
            self._opened_at = self._clock()
            self.times_opened += 1
            self._set(self.OPEN)

    def _set(self, state: str) -> None:
        self._state = state
        if self.on_change is not None:
            self.on_change(state)
