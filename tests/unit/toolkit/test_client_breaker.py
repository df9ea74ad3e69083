"""The client's circuit breaker and argument handling (no network needed for these rules)."""

from __future__ import annotations

import threading

import pytest

from certus.client.sync import CircuitBreaker, ClientOptions, SidecarClient, classify


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_opens_after_n_consecutive_failures_and_half_opens_with_one_probe() -> None:
    clock = Clock()
    b = CircuitBreaker(failure_threshold=3, recovery_timeout_s=30.0, clock=clock)
    for _ in range(2):
        assert b.allow()
        b.record_failure()
    assert b.state == "closed"
    assert b.allow()
    b.record_failure()
    assert b.state == "open" and b.times_opened == 1
    assert not b.allow()
    clock.t = 29.9
    assert not b.allow()
    clock.t = 30.0
    assert b.allow()  # the probe
    assert b.state == "half_open"
    assert not b.allow() and not b.allow()  # only one probe at a time
    b.record_failure()  # probe failed: open again for another 30 s
    assert b.state == "open" and b.times_opened == 2
    clock.t = 59.0
    assert not b.allow()
    clock.t = 60.0
    assert b.allow()
    b.record_success()
    assert b.state == "closed" and b.times_closed == 1 and b.consecutive_failures == 0
    assert b.allow() and b.allow()


def test_a_success_resets_the_count() -> None:
    b = CircuitBreaker(failure_threshold=2)
    b.record_failure()
    b.record_success()
    b.record_failure()
    assert b.state == "closed"


def test_only_one_of_many_threads_gets_the_probe() -> None:
    clock = Clock()
    b = CircuitBreaker(failure_threshold=1, recovery_timeout_s=1.0, clock=clock)
    b.record_failure()
    clock.t = 5.0
    got: list[bool] = []
    threads = [threading.Thread(target=lambda: got.append(b.allow())) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert got.count(True) == 1


def test_bad_options_and_arguments_never_raise_from_calls() -> None:
    with pytest.raises(ValueError, match="timeout_ms"):
        ClientOptions(timeout_ms=50)
    with pytest.raises(ValueError, match="mode"):
        ClientOptions(mode="loud")
    with pytest.raises(ValueError, match="failure_threshold"):
        CircuitBreaker(failure_threshold=0)
    client = SidecarClient("127.0.0.1:9", timeout_ms=100)
    try:
        ev = client.evaluate("q", 42, ["c"])  # type: ignore[arg-type]
        assert ev.skipped and ev.skip_reason == "invalid_request" and ev.error == "response: must be a string, got int"
        ev = client.evaluate("q", "a", ["c", 3])  # type: ignore[list-item]
        assert ev.error == "context[1]: must be a string, got int"
        ev = client.evaluate("q", "a", ["c"], mode="loud")
        assert ev.skip_reason == "invalid_request" and "mode" in ev.error
        m = client.measure("a", None)  # type: ignore[arg-type]
        assert m.skipped and m.skip_reason == "invalid_request"
        assert client.breaker.state == "closed" and client.breaker.consecutive_failures == 0
        assert client.stats.skipped == {"invalid_request": 4}
    finally:
        client.close()


def test_unknown_exceptions_count_as_failures() -> None:
    f = classify(RuntimeError("boom"))
    assert (f.reason, f.counts, f.message) == ("unexpected_error", True, "RuntimeError")
