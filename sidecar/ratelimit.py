"""Per-key token-bucket rate limiting (one bucket per workspace).

A bucket holds at most ``burst`` tokens and refills at ``rate_per_s``; each admitted call takes one.
When the bucket holds less than one token the call is refused with
:class:`~sidecar.errors.ResourceExhausted` whose ``retry_after_ms`` is the time until one whole token
is back (the server turns it into ``google.rpc.RetryInfo.retry_delay``). A refused call takes
nothing, so a client that waits the advised delay is admitted.

The bucket table is bounded (``max_keys``): when full, the least recently used bucket is dropped. A
dropped bucket is indistinguishable from a full one, which is what an idle bucket becomes anyway.
All methods are thread-safe; time comes from an injectable monotonic clock (tests pass their own).
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable

from certus.sidecar.errors import ResourceExhausted

Clock = Callable[[], float]


@dataclass
class _Bucket:
    tokens: float
    stamp: float  # clock reading at the last refill


@dataclass(frozen=True)
class RateLimitStats:
    admitted: int
    dropped: int
    buckets: int

    def as_dict(self) -> dict[str, int]:
        return {"admitted": self.admitted, "dropped": self.dropped, "buckets": self.buckets}


class RateLimiter:
    """Token buckets keyed by workspace id. ``rate_per_s <= 0`` disables limiting."""

    def __init__(
        self, rate_per_s: float, burst: int = 0, *, max_keys: int = 10_000, clock: Clock = time.monotonic
    ) -> None:
        if not math.isfinite(rate_per_s):
            raise ValueError(f"rate_limit_rps: must be a finite number, got {rate_per_s!r}")
        if burst < 0:
            raise ValueError(f"rate_limit_burst: must be >= 0, got {burst}")
        if max_keys < 1:
            raise ValueError(f"rate_limit_max_buckets: must be >= 1, got {max_keys}")
        self.rate_per_s = max(0.0, float(rate_per_s))
        # burst 0 = "one second's worth", at least one call
        self.burst = float(burst) if burst > 0 else float(max(1, math.ceil(self.rate_per_s)))
        self.max_keys = max_keys
        self._clock = clock
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()
        self._lock = threading.Lock()
        self._admitted = 0
        self._dropped = 0
        self._dropped_by_key: dict[str, int] = {}

    @property
    def enabled(self) -> bool:
        return self.rate_per_s > 0.0

    def try_acquire(self, key: str) -> int | None:
        """Take one token for ``key``: ``None`` when admitted, else the milliseconds to wait."""
        if not self.enabled:
            with self._lock:
                self._admitted += 1
            return None
        now = self._clock()
        with self._lock:
            bucket = self._buckets.get(key)
            if bucket is None:
                bucket = _Bucket(self.burst, now)
                self._buckets[key] = bucket
                while len(self._buckets) > self.max_keys:
                    self._buckets.popitem(last=False)
            else:
                self._buckets.move_to_end(key)
                elapsed = max(0.0, now - bucket.stamp)
                bucket.tokens = min(self.burst, bucket.tokens + elapsed * self.rate_per_s)
                bucket.stamp = now
            if bucket.tokens >= 1.0:
                bucket.tokens -= 1.0
                self._admitted += 1
                return None
            self._dropped += 1
            if key in self._dropped_by_key or len(self._dropped_by_key) < self.max_keys:
                self._dropped_by_key[key] = self._dropped_by_key.get(key, 0) + 1
            return max(1, math.ceil((1.0 - bucket.tokens) / self.rate_per_s * 1000.0))

    def acquire(self, key: str) -> None:
        """Take one token for ``key`` or raise ResourceExhausted carrying the retry delay."""
        wait_ms = self.try_acquire(key)
        if wait_ms is not None:
            raise ResourceExhausted(
                f"rate limit exceeded for workspace {key} ({self.rate_per_s:g}/s, burst {self.burst:g}); "
                f"retry after {wait_ms} ms",
                retry_after_ms=wait_ms,
            )

    def stats(self) -> RateLimitStats:
        with self._lock:
            return RateLimitStats(self._admitted, self._dropped, len(self._buckets))

    def dropped_by_key(self) -> dict[str, int]:
        """Refusals per key (bounded like the bucket table; keys seen after it filled are not listed)."""
        with self._lock:
            return dict(self._dropped_by_key)
