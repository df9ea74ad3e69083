"""Admission by measured service rate: the limit is Little's law over what was measured, it never
drops below the floor, it follows the rate down as it decays, and 0 turns it off."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from certus.sidecar.admission import DECAY_S, Admission, PeerSlots


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


def test_processes_sharing_peer_slots_admit_as_one_sidecar(tmp_path: Path) -> None:
    """Several front-end processes: the floor and the limit are the sidecar's, over every process."""
    path = tmp_path / "slots"
    PeerSlots.create(path, 2)
    clock = [0.0]
    a, b = (Admission(250.0, min_in_flight=8, clock=lambda: clock[0]) for _ in range(2))
    a.peers, b.peers = PeerSlots(path, 2, 0), PeerSlots(path, 2, 1)
    assert all(a.try_enter() for _ in range(5)) and all(b.try_enter() for _ in range(3))
    assert not a.try_enter() and not b.try_enter()  # 8 in flight over both: the floor is reached
    assert (a.in_flight, b.in_flight, a.limit) == (5, 3, 8)
    a.leave()
    assert b.try_enter() and not a.try_enter()
    # completions of both count toward the rate: 40/s in each process -> limit 80/s x 0.25 s = 20
    for proc in (a, b):
        for _ in range(40):
            proc.try_enter()
            proc.leave()
    assert a.limit == b.limit == 20
    # reading the limit (GetInfo, metrics) writes nothing: the slot keeps what try_enter/leave put
    clock[0] += DECAY_S
    slot = a.peers._slots[0].copy()
    assert a.limit == int((40 / math.e + 40) * 0.25) and a.stats()["limit"] == a.limit  # its own decayed, b's as published
    assert (a.peers._slots[0] == slot).all()
    clock[0] -= DECAY_S
    a.peers.clear(1)  # the hub clears a dead process's slot
    assert b.peers.totals()[0] == a.in_flight
    # alone (no peers), each counts only itself
    alone = Admission(250.0, min_in_flight=8)
    assert all(alone.try_enter() for _ in range(8)) and not alone.try_enter()
