"""Retry policy (as data) and the circuit breaker of the forwarder.

Retry: a failed delivery is retried when its status is in the retryable set, after
``delay = max(server hint, uniform(0, min(max_s, initial_s * 2**(attempt-1))))`` — exponential
backoff with full jitter, never shorter than a ``Retry-After`` / ``retry-after`` hint. Each attempt
has its own deadline (``ForwarderConfig.timeout_s``). Auth failures are retryable on purpose: they
are configuration problems, and giving up would drop evidence; the backlog grows visibly instead.
Only a receiver's explicit rejection of a record (bad signature or payload) dead-letters it.

Breaker (seed §8.3): ``closed`` -> ``open`` after ``failure_threshold`` consecutive failures; after
``recovery_timeout_s`` it lets ONE probe through (``half_open``): success closes it, failure opens
it again for another ``recovery_timeout_s``. The breaker itself lives in :mod:`sidecar.breaker`
(shared with the Python clients); this module names its errors after the forwarder's settings.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from certus.client.breaker import CircuitBreaker as _SharedBreaker
from certus.sidecar.config import ForwarderConfig

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


class CircuitBreaker(_SharedBreaker):
    """The shared breaker (:mod:`sidecar.breaker`); argument errors name the forwarder's settings."""

    setting_prefix = "forwarder."
