"""The memory reclaimer frees cyclic garbage and hands heap pages back to the OS."""

from __future__ import annotations

import asyncio
import gc

import pytest

from certus.sidecar.memory import GcPauses, MemoryReclaimer, reclaim, rss_bytes

MIB = 1024 * 1024


@pytest.mark.skipif(rss_bytes() == 0, reason="needs /proc")
def test_reclaim_frees_cycles_that_hold_large_buffers() -> None:
    gc.collect()
    gc.disable()  # the cycles below must wait for reclaim(), not an automatic pass
    try:
        before = rss_bytes()

        class Node:
            pass

        for _ in range(160):
            a, b = Node(), Node()
            a.other, b.other = b, a  # type: ignore[attr-defined]
            a.payload = bytearray(b"x" * MIB)  # type: ignore[attr-defined]
        grown = rss_bytes()
        assert grown - before > 100 * MIB  # the cycles are unreachable but still resident
        r = reclaim()
        assert r.collected >= 300  # 159 unreachable pairs (the last one is still referenced)
        assert r.rss_after < grown - 100 * MIB
    finally:
        gc.enable()


def test_reclaimer_starts_and_stops_on_the_loop() -> None:
    async def main() -> int:
        rec = MemoryReclaimer(interval_s=0.01, growth_mib=1e9)
        rec.start()
        await asyncio.sleep(0.05)
        await rec.stop()
        return rec.runs

    assert asyncio.run(main()) == 0  # no growth, no reclaim


@pytest.mark.skipif(rss_bytes() == 0, reason="needs /proc")
def test_reclaimer_runs_once_rss_has_grown_and_stopped_rising() -> None:
    class Node:
        pass

    async def main() -> tuple[int, int, int]:
        rec = MemoryReclaimer(interval_s=0.05, growth_mib=64)
        rec.start()
        gc.disable()
        try:
            for _ in range(160):  # 160 MiB held only by unreachable cycles
                a, b = Node(), Node()
                a.other, b.other = b, a  # type: ignore[attr-defined]
                a.payload = bytearray(b"x" * MIB)  # type: ignore[attr-defined]
            del a, b
            grown = rss_bytes()
            for _ in range(200):  # bounded: 10 s
                if rec.runs:
                    break
                await asyncio.sleep(0.05)
            return grown, rss_bytes(), rec.runs
        finally:
            gc.enable()
            await rec.stop()

    grown, after, runs = asyncio.run(main())
    assert runs >= 1
    assert after < grown - 100 * MIB


def test_zero_interval_disables() -> None:
    assert not MemoryReclaimer(interval_s=0).enabled


@pytest.mark.skipif(rss_bytes() == 0, reason="needs /proc")
def test_a_new_burst_is_reclaimed_promptly_after_passes_that_freed_nothing() -> None:
    """Memory that stays in use makes passes back off; a burst of garbage on top of it must not
    wait out that back-off (it is sampled every interval and makes the next pass due)."""

    class Node:
        pass

    async def main() -> tuple[int, int, int, int]:
        rec = MemoryReclaimer(interval_s=0.05, growth_mib=32)
        rec.start()
        gc.disable()
        try:
            live = [bytearray(b"x" * MIB) for _ in range(128)]  # stays referenced: passes free nothing
            for _ in range(200):  # until the back-off is long: 6 unproductive passes, next in 64 intervals
                if rec.runs >= 6:
                    break
                await asyncio.sleep(0.05)
            unproductive = rec.runs
            for _ in range(128):  # a burst held only by unreachable cycles
                a, b = Node(), Node()
                a.other, b.other = b, a  # type: ignore[attr-defined]
                a.payload = bytearray(b"x" * MIB)  # type: ignore[attr-defined]
            del a, b
            grown = rss_bytes()
            waited = 0
            while rss_bytes() > grown - 64 * MIB and waited < 40:  # 2 s = 40 intervals at most
                await asyncio.sleep(0.05)
                waited += 1
            del live
            return unproductive, grown, rss_bytes(), waited
        finally:
            gc.enable()
            await rec.stop()

    unproductive, grown, after, waited = asyncio.run(main())
    assert unproductive >= 6
    assert after < grown - 64 * MIB, f"burst not reclaimed within {waited} intervals"


def test_gc_pauses_time_every_collection_once() -> None:
    pauses = GcPauses()
    pauses.install()
    pauses.install()  # idempotent: one callback, each pass counted once
    try:
        assert gc.callbacks.count(pauses._callback) == 1
        junk = [[i] for i in range(200_000)]  # something for the full pass to walk
        before = list(pauses.passes)
        gc.collect()
        gc.collect(0)
        assert pauses.passes[2] == before[2] + 1 and pauses.passes[0] >= before[0] + 1
        assert pauses.seconds[2] > 0 and 0 < pauses.full_max_s <= pauses.seconds[2]
        d = pauses.details()
        assert d["gc.full_passes"] == pauses.passes[2] and d["gc.full_pause_ms_max"] == round(pauses.full_max_s * 1000, 1)
        assert d["gc.young_passes"] == pauses.passes[0] + pauses.passes[1]
        del junk
    finally:
        gc.callbacks.remove(pauses._callback)
