"""Async-mode job table: evaluations accepted now, fetched later with GetEvaluation.

Bounded (``AsyncConfig.max_jobs``) with a TTL (``AsyncConfig.ttl_s``). A job moves
pending -> processing -> completed. Its expiry is ``ttl_s`` after submission while it runs and
``ttl_s`` after completion once it is done; an expired job (and one that never finishes) is
dropped, its task cancelled. Fetching a completed result does NOT remove it: ``get`` is
idempotent, so a client whose reply was lost can ask again; the result lives until it expires —
except that when the table is full, the completed result fetched longest ago gives its slot to the
new job (results survive until fetched or expired, whichever lets a new job in).

Every deadline is ``clock() + ttl_s`` at the moment it is set, so with a monotonic clock the
order in which deadlines are set is the order in which they fall due: the table is an
insertion-ordered dict (a job moves to the end when it completes) and a sweep pops expired jobs
from the front, O(expired).

Use from the event loop thread only (no locks): ``submit`` needs a running loop.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import OrderedDict
from dataclasses import dataclass
from enum import Enum
from typing import Awaitable, Callable

import structlog

from certus.sidecar.config import AsyncConfig
from certus.sidecar.domain import EvaluationResult, Mode, Outcome, SkipReason
from certus.sidecar.errors import FieldViolation, InvalidArgument, NotFound, ResourceExhausted

log = structlog.get_logger(__name__)

CoroFactory = Callable[[], Awaitable[EvaluationResult]]


class JobStatus(str, Enum):
    PENDING = "pending"
    PROCESSING = "processing"
    COMPLETED = "completed"


@dataclass(frozen=True, slots=True)
class JobView:
    status: JobStatus
    result: EvaluationResult | None  # set when completed
    estimated_completion_ms: int  # 0 when completed


class _Job:
    __slots__ = ("evaluation_id", "workspace_id", "status", "result", "submitted_at", "deadline", "task", "fetched")

    def __init__(self, evaluation_id: str, workspace_id: str, now: float, deadline: float) -> None:
        self.evaluation_id = evaluation_id
        self.workspace_id = workspace_id
        self.status = JobStatus.PENDING
        self.result: EvaluationResult | None = None
        self.submitted_at = now
        self.deadline = deadline
        self.task: asyncio.Task[None] | None = None
        self.fetched = False


class JobTable:
    """Bounded, expiring table of async evaluations."""

    EWMA_ALPHA = 0.2

    def __init__(
        self,
        cfg: AsyncConfig,
        *,
        clock: Callable[[], float] = time.monotonic,
        initial_estimate_ms: float = 100.0,
    ) -> None:
        violations = []
        if cfg.max_jobs < 1:
            violations.append(FieldViolation("async_jobs.max_jobs", f"must be >= 1, got {cfg.max_jobs}"))
        if not cfg.ttl_s > 0:
            violations.append(FieldViolation("async_jobs.ttl_s", f"must be > 0, got {cfg.ttl_s}"))
        if violations:
            raise InvalidArgument(violations)
        self._max = cfg.max_jobs
        self._ttl = float(cfg.ttl_s)
        self._clock = clock
        self._jobs: OrderedDict[str, _Job] = OrderedDict()
        self._fetched: OrderedDict[str, None] = OrderedDict()  # completed + fetched, in fetch order
        self._estimate_ms = float(initial_estimate_ms)
        self.expired_total = 0
        self.rejected_total = 0
        self.evicted_fetched_total = 0

    def __len__(self) -> int:
        return len(self._jobs)

    def submit(self, evaluation_id: str, workspace_id: str, coro_factory: CoroFactory) -> None:
        """Accept a job and start it as a task. When the table is full, the result fetched longest
        ago makes room; without one, ResourceExhausted. ``coro_factory()`` is called inside the task."""
        loop = asyncio.get_running_loop()
        now = self._clock()
        self._sweep(now)
        if evaluation_id in self._jobs:
            raise InvalidArgument.field("evaluation_id", "already submitted")
        if len(self._jobs) >= self._max and self._fetched:
            gone_id, _ = self._fetched.popitem(last=False)
            del self._jobs[gone_id]
            self.evicted_fetched_total += 1
        if len(self._jobs) >= self._max:
            self.rejected_total += 1
            oldest = next(iter(self._jobs.values()))
            retry_ms = max(1, math.ceil((oldest.deadline - now) * 1000.0))
            raise ResourceExhausted(
                f"async job table full ({self._max} jobs); retry later", retry_after_ms=min(retry_ms, 60_000)
            )
        job = _Job(evaluation_id, workspace_id, now, now + self._ttl)
        self._jobs[evaluation_id] = job
        job.task = loop.create_task(self._run(job, coro_factory), name=f"async-eval-{evaluation_id}")

    def get(self, evaluation_id: str, workspace_id: str) -> JobView:
        """Status of a job; NotFound when unknown, expired or of another workspace."""
        now = self._clock()
        self._sweep(now)
        job = self._jobs.get(evaluation_id)
        if job is None or job.workspace_id != workspace_id:
            raise NotFound(f"evaluation {evaluation_id} not found (unknown, expired or another workspace)")
        if job.status is JobStatus.COMPLETED:
            if not job.fetched:
                job.fetched = True
                self._fetched[evaluation_id] = None
            return JobView(JobStatus.COMPLETED, job.result, 0)
        elapsed_ms = (now - job.submitted_at) * 1000.0
        return JobView(job.status, None, max(0, round(self._estimate_ms - elapsed_ms)))

    def sweep(self) -> int:
        """Drop expired jobs now; returns how many."""
        return self._sweep(self._clock())

    def counts(self) -> dict[str, int]:
        """Jobs per status (O(n); for health/debug, not the request path)."""
        out = {s.value: 0 for s in JobStatus}
        for job in self._jobs.values():
            out[job.status.value] += 1
        return out

    async def aclose(self) -> None:
        """Cancel unfinished jobs and wait for them; the table is empty afterwards."""
        tasks = [j.task for j in self._jobs.values() if j.task is not None]
        self._jobs.clear()
        self._fetched.clear()
        for t in tasks:
            t.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    # -- internals -------------------------------------------------------------------------------

    def _sweep(self, now: float) -> int:
        n = 0
        while self._jobs:
            job = next(iter(self._jobs.values()))
            if job.deadline > now:
                break
            self._jobs.popitem(last=False)
            self._fetched.pop(job.evaluation_id, None)
            if job.task is not None:
                job.task.cancel()
            n += 1
        if n:
            self.expired_total += n
            log.debug("async_jobs_expired", count=n)
        return n

    async def _run(self, job: _Job, coro_factory: CoroFactory) -> None:
        job.status = JobStatus.PROCESSING
        try:
            result = await coro_factory()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the pipeline should turn failures into skipped results itself
            log.error("async_job_failed", evaluation_id=job.evaluation_id, error_type=type(exc).__name__)
            result = EvaluationResult(
                evaluation_id=job.evaluation_id,
                workspace_id=job.workspace_id,
                outcome=Outcome.SKIPPED,
                passed=False,
                mode=Mode.ASYNC,
                manifest_uri="",
                skipped=True,
                skip_reason=SkipReason.EVALUATOR_ERROR.value,
            )
        finally:
            job.task = None
        now = self._clock()
        if self._jobs.get(job.evaluation_id) is not job:
            return  # expired (or closed) meanwhile
        job.status = JobStatus.COMPLETED
        job.result = result
        job.deadline = now + self._ttl
        self._jobs.move_to_end(job.evaluation_id)
        took_ms = (now - job.submitted_at) * 1000.0
        self._estimate_ms += self.EWMA_ALPHA * (took_ms - self._estimate_ms)
