"""Token buckets with an injected clock: exact admissions and retry delays."""

from __future__ import annotations

import grpc
import pytest
from google.rpc import error_details_pb2

from certus.sidecar.errors import ResourceExhausted
from certus.sidecar.ratelimit import RateLimiter
from certus.sidecar.server import errormap


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_burst_then_refusal_with_exact_delay() -> None:
    clock = Clock()
    rl = RateLimiter(2.0, 3, clock=clock)
    assert [rl.try_acquire("acme") for _ in range(3)] == [None, None, None]
    assert rl.try_acquire("acme") == 500  # one token takes 1/2 s
    clock.t += 0.25
    assert rl.try_acquire("acme") == 250  # half a token back; the refusal took nothing
    clock.t += 0.25
    assert rl.try_acquire("acme") is None
    assert rl.try_acquire("acme") == 500
    assert rl.stats().as_dict() == {"admitted": 4, "dropped": 3, "buckets": 1}
    assert rl.dropped_by_key() == {"acme": 3}


def test_refill_is_capped_at_the_burst() -> None:
    clock = Clock()
    rl = RateLimiter(10.0, 2, clock=clock)
    assert rl.try_acquire("w") is None
    clock.t += 3600
    assert [rl.try_acquire("w") for _ in range(3)] == [None, None, 100]


def test_workspaces_have_separate_buckets() -> None:
    clock = Clock()
    rl = RateLimiter(1.0, 1, clock=clock)
    assert rl.try_acquire("a") is None
    assert rl.try_acquire("a") == 1000
    assert rl.try_acquire("b") is None


def test_default_burst_is_one_second_of_rate() -> None:
    assert RateLimiter(5.0).burst == 5
    assert RateLimiter(0.2).burst == 1
    assert RateLimiter(2.5).burst == 3


def test_zero_rate_means_unlimited() -> None:
    rl = RateLimiter(0.0, clock=Clock())
    assert not rl.enabled
    assert all(rl.try_acquire("w") is None for _ in range(10_000))
    assert rl.stats().dropped == 0 and rl.stats().admitted == 10_000


def test_slow_rates_give_long_exact_delays() -> None:
    clock = Clock()
    rl = RateLimiter(0.001, 1, clock=clock)
    assert rl.try_acquire("w") is None
    assert rl.try_acquire("w") == 1_000_000
    clock.t += 1.5
    assert rl.try_acquire("w") == 998_500


def test_bucket_table_is_bounded_lru() -> None:
    clock = Clock()
    rl = RateLimiter(1.0, 1, max_keys=3, clock=clock)
    for k in ("a", "b", "c"):
        assert rl.try_acquire(k) is None
    assert rl.try_acquire("a") == 1000  # touches a: b is now the least recently used
    assert rl.try_acquire("d") is None  # evicts b
    assert rl.stats().buckets == 3
    assert rl.try_acquire("a") == 1000  # a kept its (empty) bucket
    assert rl.try_acquire("b") is None  # b starts again from a full bucket
    for i in range(1000):
        rl.try_acquire(f"k{i}")
    assert rl.stats().buckets == 3
    assert len(rl.dropped_by_key()) <= 3


def test_acquire_raises_resource_exhausted_mapped_to_retry_info() -> None:
    clock = Clock()
    rl = RateLimiter(4.0, 1, clock=clock)
    rl.acquire("acme")
    with pytest.raises(ResourceExhausted) as exc:
        rl.acquire("acme")
    assert exc.value.retry_after_ms == 250
    assert "acme" in str(exc.value) and "retry after 250 ms" in str(exc.value)
    mapped = errormap.map_exception(exc.value)
    assert mapped.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    infos = [d for d in mapped.status.details if d.Is(error_details_pb2.RetryInfo.DESCRIPTOR)]
    assert len(infos) == 1
    info = error_details_pb2.RetryInfo()
    infos[0].Unpack(info)
    assert info.retry_delay.ToMilliseconds() == 250


@pytest.mark.parametrize("kw,field", [(dict(rate_per_s=float("inf")), "rate_limit_rps"),
                                      (dict(rate_per_s=1.0, burst=-1), "rate_limit_burst"),
                                      (dict(rate_per_s=1.0, max_keys=0), "rate_limit_max_buckets")])
def test_bad_settings_name_the_field(kw: dict[str, float], field: str) -> None:
    with pytest.raises(ValueError, match=field):
        RateLimiter(**kw)  # type: ignore[arg-type]
