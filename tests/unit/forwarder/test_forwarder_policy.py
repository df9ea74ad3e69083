"""Retry policy (exact backoff caps, full jitter, server hints) and the circuit breaker's states."""

from __future__ import annotations

import random

import pytest

from certus.sidecar.config import ForwarderConfig
from certus.sidecar.forwarder.policy import CircuitBreaker, RetryPolicy


def test_backoff_caps_double_up_to_the_maximum() -> None:
    p = RetryPolicy(initial_s=0.2, max_s=30.0)
    caps = [p.backoff_cap_s(a) for a in range(1, 11)]
    assert caps == pytest.approx([0.2, 0.4, 0.8, 1.6, 3.2, 6.4, 12.8, 25.6, 30.0, 30.0])
    assert p.backoff_cap_s(10_000) == 30.0  # no overflow


def test_full_jitter_stays_within_the_cap_and_spreads() -> None:
    p = RetryPolicy(initial_s=1.0, max_s=8.0)
    rng = random.Random(7)
    samples = [p.delay_s(3, rng) for _ in range(2000)]  # cap 4.0
    assert all(0.0 <= s <= 4.0 for s in samples)
    assert min(samples) < 0.05 and max(samples) > 3.95
    assert 1.8 < sum(samples) / len(samples) < 2.2


def test_server_retry_hint_is_honoured_but_bounded() -> None:
    p = RetryPolicy(initial_s=0.1, max_s=5.0)
    rng = random.Random(1)
    assert p.delay_s(1, rng, retry_after_s=2.0) == 2.0  # jitter cap 0.1 < hint
    assert p.delay_s(1, rng, retry_after_s=60.0) == 5.0  # never beyond max_s
    assert p.delay_s(1, random.Random(1), retry_after_s=None) == random.Random(1).uniform(0, 0.1)


def test_policy_from_config_names_bad_fields() -> None:
    p = RetryPolicy.from_config(ForwarderConfig(backoff_initial_s=0.5, backoff_max_s=4.0, timeout_s=3.0))
    assert (p.initial_s, p.max_s, p.attempt_timeout_s) == (0.5, 4.0, 3.0)
    assert 503 in p.retryable_http and 422 not in p.retryable_http
    assert "UNAVAILABLE" in p.retryable_grpc and "INVALID_ARGUMENT" not in p.retryable_grpc
    with pytest.raises(ValueError, match="forwarder.backoff_initial_s"):
        RetryPolicy.from_config(ForwarderConfig(backoff_initial_s=0.0))
    with pytest.raises(ValueError, match="forwarder.timeout_s"):
        RetryPolicy.from_config(ForwarderConfig(timeout_s=0.0))
    with pytest.raises(ValueError, match="forwarder.failure_threshold"):
        CircuitBreaker(failure_threshold=0)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_breaker_opens_after_threshold_probes_once_and_closes() -> None:
    clock = Clock()
    states: list[str] = []
    b = CircuitBreaker(failure_threshold=3, recovery_timeout_s=30.0, clock=clock)
    b.on_change = states.append
    assert b.state == "closed" and b.wait_s() == 0.0
    b.record_failure()
    b.record_failure()
    assert b.state == "closed" and b.consecutive_failures == 2
    b.record_failure()
    assert b.state == "open" and b.wait_s() == 30.0 and b.times_opened == 1
    clock.now += 10
    b.before_call()
    assert b.state == "open" and b.wait_s() == 20.0
    clock.now += 20
    b.before_call()
    assert b.state == "half_open" and b.wait_s() == 0.0
    b.record_failure()  # the probe failed: open again for a full period
    assert b.state == "open" and b.wait_s() == 30.0 and b.times_opened == 2
    clock.now += 30
    b.before_call()
    b.record_success()
    assert b.state == "closed" and b.times_closed == 1 and b.consecutive_failures == 0
    assert states == ["open", "half_open", "open", "half_open", "closed"]


def test_success_resets_the_failure_count() -> None:
    b = CircuitBreaker(failure_threshold=3, recovery_timeout_s=30.0, clock=Clock())
    for _ in range(2):
        b.record_failure()
    b.record_success()
    for _ in range(2):
        b.record_failure()
    assert b.state == "closed" and b.times_opened == 0
