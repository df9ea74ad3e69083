"""Async job table: statuses, bound, TTL expiry with a fake clock, workspace isolation."""

from __future__ import annotations

import asyncio
from typing import Any, Awaitable, Callable

import pytest

from certus.sidecar.config import AsyncConfig
from certus.sidecar.domain import EvaluationResult, Mode, Outcome
from certus.sidecar.errors import InvalidArgument, NotFound, ResourceExhausted
from certus.sidecar.jobs import JobStatus, JobTable, JobView


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, s: float) -> None:
        self.now += s


def result(eid: str, ws: str = "acme") -> EvaluationResult:
    return EvaluationResult(
        evaluation_id=eid, workspace_id=ws, outcome=Outcome.PASS, passed=True, mode=Mode.ASYNC, manifest_uri="certus://manifests/acme/2025-01"
    )


class Gate:
    """A job body that runs until the test opens its gate."""

    def __init__(self, eid: str, ws: str = "acme") -> None:
        self.started = asyncio.Event()
        self.go = asyncio.Event()
        self.cancelled = False
        self.eid, self.ws = eid, ws

    def factory(self) -> Callable[[], Awaitable[EvaluationResult]]:
        async def body() -> EvaluationResult:
            self.started.set()
            try:
                await self.go.wait()
            except asyncio.CancelledError:
                self.cancelled = True
                raise
            return result(self.eid, self.ws)

        return body


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


def table(clock: FakeClock, max_jobs: int = 3, ttl_s: float = 60.0, **kw: Any) -> JobTable:
    return JobTable(AsyncConfig(max_jobs=max_jobs, ttl_s=ttl_s), clock=clock, **kw)


def test_lifecycle_pending_processing_completed() -> None:
    async def main() -> None:
        clock = FakeClock()
        t = table(clock, initial_estimate_ms=500)
        g = Gate("e1")
        t.submit("e1", "acme", g.factory())
        assert t.get("e1", "acme") == JobView(JobStatus.PENDING, None, 500)  # not started yet
        await g.started.wait()
        clock.advance(0.2)
        assert t.get("e1", "acme") == JobView(JobStatus.PROCESSING, None, 300)
        clock.advance(1.0)
        assert t.get("e1", "acme") == JobView(JobStatus.PROCESSING, None, 0)  # overdue: never negative
        g.go.set()
        await settle()
        view = t.get("e1", "acme")
        assert view == JobView(JobStatus.COMPLETED, result("e1"), 0)
        assert t.get("e1", "acme") == view  # fetching does not remove it
        assert t.counts() == {"pending": 0, "processing": 0, "completed": 1}
        # the estimate learns from the completed job (took 1200 ms): 500 + 0.2 * (1200 - 500)
        g2 = Gate("e2")
        t.submit("e2", "acme", g2.factory())
        assert t.get("e2", "acme").estimated_completion_ms == 640
        g2.go.set()
        await settle()

    asyncio.run(main())


def test_unknown_and_other_workspace_are_not_found() -> None:
    async def main() -> None:
        t = table(FakeClock())
        g = Gate("e1")
        g.go.set()
        t.submit("e1", "acme", g.factory())
        await settle()
        with pytest.raises(NotFound):
            t.get("nope", "acme")
        with pytest.raises(NotFound):
            t.get("e1", "globex")
        assert t.get("e1", "acme").status is JobStatus.COMPLETED

    asyncio.run(main())


def test_completed_results_expire_ttl_after_completion() -> None:
    async def main() -> None:
        clock = FakeClock()
        t = table(clock, ttl_s=60)
        g = Gate("e1")
        t.submit("e1", "acme", g.factory())
        await g.started.wait()
        clock.advance(50)
        g.go.set()
        await settle()
        clock.advance(59.999)  # 109.999 s after submission, 59.999 s after completion
        assert t.get("e1", "acme").status is JobStatus.COMPLETED
        clock.advance(0.001)
        with pytest.raises(NotFound):
            t.get("e1", "acme")
        assert len(t) == 0 and t.expired_total == 1

    asyncio.run(main())


def test_unfinished_job_expires_ttl_after_submission_and_is_cancelled() -> None:
    async def main() -> None:
        clock = FakeClock()
        t = table(clock, ttl_s=10)
        g = Gate("e1")
        t.submit("e1", "acme", g.factory())
        await g.started.wait()
        clock.advance(10)
        assert t.sweep() == 1
        await settle()
        assert g.cancelled
        with pytest.raises(NotFound):
            t.get("e1", "acme")

    asyncio.run(main())


def test_full_table_rejects_until_something_expires() -> None:
    async def main() -> None:
        clock = FakeClock()
        t = table(clock, max_jobs=2, ttl_s=30)
        gates = [Gate(f"e{i}") for i in range(3)]
        t.submit("e0", "acme", gates[0].factory())
        clock.advance(5)
        t.submit("e1", "acme", gates[1].factory())
        with pytest.raises(ResourceExhausted) as ei:
            t.submit("e2", "acme", gates[2].factory())
        assert ei.value.retry_after_ms == 25_000  # when e0 expires
        assert t.rejected_total == 1
        gates[0].go.set()
        gates[1].go.set()
        await settle()  # completed jobs still hold their slots until they expire
        with pytest.raises(ResourceExhausted):
            t.submit("e2", "acme", gates[2].factory())
        clock.advance(30)  # both expire 30 s after completion (at t=5 s)
        gates[2].go.set()
        t.submit("e2", "acme", gates[2].factory())
        await settle()
        assert len(t) == 1 and t.get("e2", "acme").result == result("e2")

    asyncio.run(main())


def test_sweep_pops_only_the_expired_prefix() -> None:
    async def main() -> None:
        clock = FakeClock()
        t = table(clock, max_jobs=10, ttl_s=10)
        gates = {}
        for i in range(4):
            gates[i] = Gate(f"e{i}")
            t.submit(f"e{i}", "acme", gates[i].factory())
            clock.advance(1)
        # e0 completes at t=4: its deadline moves to t=14, behind e1..e3 (11, 12, 13)
        gates[0].go.set()
        await settle()
        clock.advance(8)  # now t=12 (relative): e1 (11) and e2 (12) expire; e3 (13), e0 (14) stay
        assert t.sweep() == 2
        assert t.get("e0", "acme").status is JobStatus.COMPLETED
        assert t.get("e3", "acme").status is JobStatus.PROCESSING
        await settle()
        assert gates[1].cancelled and gates[2].cancelled and not gates[3].cancelled
        await t.aclose()
        assert len(t) == 0 and gates[3].cancelled

    asyncio.run(main())


def test_failing_job_completes_as_skipped_evaluator_error() -> None:
    async def main() -> None:
        t = table(FakeClock())

        async def boom() -> EvaluationResult:
            raise RuntimeError("encoder exploded")

        t.submit("e1", "acme", boom)
        await settle()
        view = t.get("e1", "acme")
        assert view.status is JobStatus.COMPLETED and view.result is not None
        r = view.result
        assert (r.evaluation_id, r.workspace_id, r.outcome, r.skipped, r.skip_reason, r.passed) == (
            "e1", "acme", Outcome.SKIPPED, True, "evaluator_error", False,
        )

    asyncio.run(main())


def test_duplicate_id_and_bad_config() -> None:
    async def main() -> None:
        t = table(FakeClock())
        g = Gate("e1")
        t.submit("e1", "acme", g.factory())
        with pytest.raises(InvalidArgument) as ei:
            t.submit("e1", "acme", g.factory())
        assert ei.value.violations[0].field == "evaluation_id"
        await t.aclose()

    asyncio.run(main())
    with pytest.raises(InvalidArgument) as ei:
        JobTable(AsyncConfig(max_jobs=0, ttl_s=0))
    assert [v.field for v in ei.value.violations] == ["async_jobs.max_jobs", "async_jobs.ttl_s"]


def test_submit_needs_a_running_loop() -> None:
    t = table(FakeClock())
    with pytest.raises(RuntimeError):
        t.submit("e1", "acme", Gate("e1").factory())
    assert len(t) == 0
