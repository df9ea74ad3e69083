"""Give memory back to the OS after a burst (a flood of large requests).

Two things keep a CPython server's RSS high after a burst even when nothing is alive any more:
reference cycles (an exception's traceback holding the frame that held a 4 MB request) wait for the
next full ``gc`` pass, and glibc keeps freed heap pages in its arenas. Measured with
tests/benchmarks/bench_flood.py (docs/security.md): after a flood RSS stayed 100-230 MiB above
baseline; ``gc.collect()`` + ``malloc_trim(0)`` brought it back to within ~10 MiB.

:class:`MemoryReclaimer` samples RSS every ``interval_s``; when RSS is more than ``growth_mib``
above the lowest level seen *and* no longer rising (the burst is over), it runs a full collection
and ``malloc_trim(0)`` (glibc only; elsewhere just the collection) off the event loop. A pass that
frees little (memory that stays in use, e.g. a filling cache) doubles the wait before the next one
(up to 64 intervals) while RSS is still sampled every interval; growth beyond what that pass had to
keep makes the next pass due at once.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import gc
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import structlog

log = structlog.get_logger(__name__)


def rss_bytes(pid: int | None = None) -> int:
    """Resident set size of ``pid`` (default: this process) from /proc; 0 where /proc is missing."""
    try:
        text = Path(f"/proc/{pid or os.getpid()}/status").read_text()
    except OSError:
        return 0
    for line in text.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def _malloc_trim() -> Callable[[], Any] | None:
    name = ctypes.util.find_library("c")
    if not name:
        return None
    try:
        libc = ctypes.CDLL(name)
    except OSError:
        return None
    trim = getattr(libc, "malloc_trim", None)
    if trim is None:
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return lambda: trim(0)


_TRIM = _malloc_trim()


@dataclass(frozen=True)
class Reclaimed:
    rss_before: int
    rss_after: int
    collected: int
    gc_seconds: float
    trim_seconds: float


def reclaim() -> Reclaimed:
    """One full collection, then return free heap pages to the OS. Blocking."""
    before = rss_bytes()
    t0 = time.perf_counter()
    collected = gc.collect()
    t1 = time.perf_counter()
    if _TRIM is not None:
        _TRIM()
    return Reclaimed(before, rss_bytes(), collected, t1 - t0, time.perf_counter() - t1)


class GcPauses:
    """Every garbage collection of this process, timed through ``gc.callbacks``: passes and pause
    seconds per generation and the longest full (generation 2) pass. A full pass holds the GIL for
    as long as it walks the tracked objects allocated since start-up (``gc.freeze``), so a cache of
    Python containers shows here as pauses that grow with uptime. One per process (:data:`GC_PAUSES`)."""

    def __init__(self) -> None:
        self.passes = [0, 0, 0]
        self.seconds = [0.0, 0.0, 0.0]
        self.full_max_s = 0.0
        self._started = 0.0

    def install(self) -> None:
        """Start timing (idempotent)."""
        if self._callback not in gc.callbacks:
            gc.callbacks.append(self._callback)

    def _callback(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
            return
        generation, pause = info["generation"], time.perf_counter() - self._started
        self.passes[generation] += 1
        self.seconds[generation] += pause
        if generation == 2 and pause > self.full_max_s:
            self.full_max_s = pause

    def details(self) -> dict[str, Any]:
        """GetInfo's ``gc.*`` details."""
        return {
            "gc.full_passes": self.passes[2],
            "gc.full_pause_ms_total": round(self.seconds[2] * 1000.0, 1),
            "gc.full_pause_ms_max": round(self.full_max_s * 1000.0, 1),
            "gc.young_passes": self.passes[0] + self.passes[1],
            "gc.young_pause_ms_total": round((self.seconds[0] + self.seconds[1]) * 1000.0, 1),
        }


GC_PAUSES = GcPauses()


class MemoryReclaimer:
    def __init__(self, interval_s: float = 2.0, growth_mib: float = 64.0) -> None:
        self.interval_s = interval_s
        self.growth_bytes = int(growth_mib * 1024 * 1024)
        self.runs = 0
        self._task: asyncio.Task[None] | None = None

    @property
    def enabled(self) -> bool:
        return self.interval_s > 0 and rss_bytes() > 0

    def start(self) -> None:
        """Call once start-up (model load, warm-up) is over: the objects alive now are moved out of
        the collector's sight (``gc.freeze``), so the full collections after a burst only walk what
        was allocated since (measured: ~280 ms -> a few ms with the model and Presidio loaded).
        Every collection is timed from now on (:data:`GC_PAUSES`)."""
        GC_PAUSES.install()
        if self.enabled and self._task is None:
            gc.collect()
            gc.freeze()
            self._task = asyncio.get_running_loop().create_task(self._run(rss_bytes()), name="memory-reclaimer")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None

    async def _run(self, floor: int) -> None:
        """``floor``: the lowest RSS seen (from start-up on), what the process needs when idle.

        RSS is sampled every interval, always, so a new burst is seen at once; what backs off is
        the *pass*: after one that freed little (memory still in use, e.g. a filling cache) the next
        waits 2, 4, ... 64 intervals, unless RSS grows another ``growth`` beyond what that pass left
        (new memory, a new burst), which makes the next pass due again."""
        loop = asyncio.get_running_loop()
        previous = floor
        backoff = 1  # intervals between passes; > 1 after unproductive passes
        due_at = 0.0  # loop time before which no pass runs
        kept = floor  # RSS an unproductive pass could not give back
        while True:
            await asyncio.sleep(self.interval_s)
            now = rss_bytes()
            floor = min(floor, now)
            if now - kept > self.growth_bytes:  # grown well past what the last pass had to keep
                backoff, due_at = 1, 0.0
            if now - floor > self.growth_bytes and now <= previous and loop.time() >= due_at:
                r = await loop.run_in_executor(None, reclaim)  # grown, and no longer rising
                self.runs += 1
                productive = r.rss_before - r.rss_after >= self.growth_bytes // 2
                backoff = 1 if productive else min(backoff * 2, 64)
                due_at = loop.time() + (backoff - 1) * self.interval_s
                now = kept = r.rss_after
                floor = min(floor, now)
                log.info(
                    "memory_reclaimed",
                    rss_before_mib=round(r.rss_before / 2**20, 1),
                    rss_after_mib=round(r.rss_after / 2**20, 1),
                    gc_objects=r.collected,
                    gc_ms=round(r.gc_seconds * 1000, 1),
                    trim_ms=round(r.trim_seconds * 1000, 1),
                    next_pass_s=backoff * self.interval_s,
                )
            previous = now
