"""Admission by measured service rate: the limit is Little's law over what was measured, it never
drops below the floor, it follows the rate down as it decays, and 0 turns it off."""

from __future__ import annotations

import pytest

from certus.sidecar.admission import DECAY_S, Admission, process_floor


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def run_for(a: Admission, clock: Clock, rate: float, seconds: float) -> None:
    """One evaluation at a time, completing ``rate`` per second for ``seconds``."""
    for _ in range(int(rate * seconds)):
        assert a.try_enter()
        clock.t += 1.0 / rate
        a.leave()


def test_limit_is_service_rate_times_target() -> None:
    clock = Clock()
    a = Admission(100.0, min_in_flight=2, clock=clock)
    assert a.limit == 2  # nothing measured yet: the floor
    run_for(a, clock, rate=80.0, seconds=2.0)
    assert a.service_rate() == pytest.approx(80.0, rel=0.03)
    assert a.limit in (7, 8)  # 80/s x 0.1 s (the window holds 79-80 completions)
    limit = a.limit
    for _ in range(limit):
        assert a.try_enter()
    assert not a.try_enter() and a.refused == 1  # over the limit: refused at once, counted
    for _ in range(limit):
        a.leave()
    assert a.in_flight == 0


def test_the_floor_and_the_decay() -> None:
    clock = Clock()
    a = Admission(50.0, min_in_flight=3, clock=clock)
    run_for(a, clock, rate=200.0, seconds=1.5)
    assert a.limit in (9, 10)  # 200/s x 0.05 s
    clock.t += DECAY_S  # a quiet spell: the measured rate decays by e
    assert a.service_rate() == pytest.approx(200.0 / 2.718281828, rel=0.02)
    assert a.limit == 3  # 73.6 x 0.05 = 3.7 -> 3, the floor
    clock.t += 5 * DECAY_S
    assert a.limit == 3  # never below the floor


def test_target_zero_turns_admission_off() -> None:
    a = Admission(0.0)
    assert not a.enabled
    assert all(a.try_enter() for _ in range(10_000)) and a.refused == 0
    with pytest.raises(ValueError):
        Admission(-1.0)
    with pytest.raises(ValueError):
        Admission(10.0, min_in_flight=0)


def test_the_floor_is_shared_out_among_front_end_processes() -> None:
    assert [process_floor(8, n) for n in (1, 2, 3, 8, 16)] == [8, 4, 3, 1, 1]
    assert process_floor(1, 4) == 1 and process_floor(8, 0) == 8
