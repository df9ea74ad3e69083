"""The request path after validation: manifest -> (scoring || guardrails) -> policy -> evidence.

Stages live in their own modules; this one only orders them and applies the degradation rules of the
spec: a timeout, an overloaded encoder queue or a failing evaluator is not an error to the caller —
the answer is OK with ``skipped=true`` and a reason, and the skipped decision is still signed and
logged. Every decision the caller receives is durable in the evidence log first.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import functools
import time
import uuid
from typing import Any, Awaitable, Callable, Protocol

import numpy as np
import structlog
from opentelemetry import trace

from certus.sidecar import policy, telemetry
from certus.sidecar.admission import Admission
from certus.sidecar.batcher import Batcher
from certus.sidecar.domain import (
    EvaluateInput,
    EvaluationResult,
    GuardrailViolation,
    Mode,
    Outcome,
    Scores,
    SkipReason,
)
from certus.sidecar.errors import EvaluatorTimeout, Fatal, ResourceExhausted, Unavailable
from certus.sidecar.evidence.decision import IntegrityDecision
from certus.sidecar.jobs import JobTable
from certus.sidecar.manifests import Manifest, ManifestStore
from certus.sidecar.metrics import Metrics
from certus.sidecar.scoring import MeasureResult, Scorer

log = structlog.get_logger(__name__)
tracer = trace.get_tracer(__name__)

# Errors of the service itself (not of an evaluator) that a synchronous caller is told about as a
# status; every other exception raised while scoring becomes a signed skip (evaluator_error).
SERVICE_ERRORS = (ResourceExhausted, Unavailable, Fatal)


class Guardrails(Protocol):
    def texts_to_embed(self, inp: EvaluateInput, configs: object) -> list[str]: ...

    def scan(self, inp: EvaluateInput, configs: object) -> list[GuardrailViolation]: ...


class EvidenceSink(Protocol):
    async def append(self, decision: IntegrityDecision) -> tuple[str, object]: ...


def _instrumented(fn: Callable[..., Awaitable[EvaluationResult]]) -> Callable[..., Awaitable[EvaluationResult]]:
    """One evaluation: a ``certus.evaluate.run`` span, a log context (workspace_id, decision_id, and
    the request's trace_id when there is no span context) and the request metrics."""

    @functools.wraps(fn)
    async def wrapper(self: "Pipeline", inp: EvaluateInput, **kw: Any) -> EvaluationResult:
        t0 = time.perf_counter()
        attrs = {telemetry.ATTR_WORKSPACE_ID: inp.workspace_id, telemetry.ATTR_CONTEXT_CHUNKS: len(inp.context)}
        with telemetry.span(tracer, telemetry.SPAN_EVALUATE, attrs) as span:
            fields = {"workspace_id": inp.workspace_id, "decision_id": ""}
            if inp.trace_id and not span.get_span_context().is_valid:
                fields["trace_id"] = inp.trace_id
            with structlog.contextvars.bound_contextvars(**fields):
                try:
                    result = await fn(self, inp, **kw)
                except BaseException as exc:
                    outcome = "cancelled" if isinstance(exc, asyncio.CancelledError) else "error"
                    mode = inp.mode.value if inp.mode is not None else "unknown"
                    self.metrics.observe_evaluation(inp.workspace_id, mode, outcome, time.perf_counter() - t0)
                    raise
                seconds = time.perf_counter() - t0
                outcome = "pending" if result.pending else result.outcome.value
                telemetry.record_result(span, result)
                self.metrics.observe_evaluation(inp.workspace_id, result.mode.value, outcome, seconds, result.skip_reason)
                log.debug(
                    "evaluation_finished",
                    mode=result.mode.value,
                    outcome=outcome,
                    skip_reason=result.skip_reason or None,
                    evidence_id=result.evidence_id,
                    duration_ms=round(seconds * 1000.0, 3),
                )
                return result

    return wrapper


class Pipeline:
    def __init__(
        self,
        batcher: Batcher,
        scorer: Scorer,
        guardrails: Guardrails,
        manifests: ManifestStore,
        evidence: EvidenceSink,
        jobs: JobTable,
        stage_threads: int = 2,
        metrics: Metrics | None = None,
        admission: Admission | None = None,
    ) -> None:
        self.metrics = metrics if metrics is not None else Metrics()
        self.admission = admission if admission is not None else Admission(0.0)  # off unless given
        self.batcher = batcher
        self.scorer = scorer
        self.guardrails = guardrails
        self.manifests = manifests
        self.evidence = evidence
        self.jobs = jobs
        # called with each recorded result (its evidence_id set), on the event loop; must not block
        # (the dashboard queues claim spans here)
        self.observers: list[Callable[[EvaluationResult], None]] = []
        # One pool runs both CPU stages (guardrail scan and scoring) of every request: its threads
        # hold the GIL for most of their work, so a pool per stage (2 + 2 threads before) only added
        # contention (server.stage_threads; tests/benchmarks/bench_floor.py)
        self._workers = concurrent.futures.ThreadPoolExecutor(stage_threads, thread_name_prefix="stages")

    async def close(self) -> None:
        """Wait for running stage work without blocking the loop (guardrails may still embed)."""
        await asyncio.get_running_loop().run_in_executor(None, self._workers.shutdown, True)

    # -- Evaluate ---------------------------------------------------------------------------------
    @_instrumented
    async def evaluate(
        self, inp: EvaluateInput, *, grpc_deadline_ms: int | None = None, is_admin: bool = True
    ) -> EvaluationResult:
        t0 = time.perf_counter_ns()
        evaluation_id = str(uuid.uuid4())
        telemetry.bind_decision(evaluation_id)
        manifest = self.manifests.resolve(inp.workspace_id, inp.manifest_uri)
        mode = policy.effective_mode(manifest, inp.mode, is_admin)
        timeout_ms = policy.effective_timeout_ms(grpc_deadline_ms, inp.timeout_ms, manifest)
        base = EvaluationResult(
            evaluation_id=evaluation_id,
            workspace_id=inp.workspace_id,
            outcome=Outcome.SKIPPED,
            passed=False,
            mode=mode,
            manifest_uri=manifest.manifest_uri,
            trace_id=inp.trace_id,
            request_id=inp.request_id,
        )
        if mode is Mode.DISABLED:
            return await self._record(inp, _skipped(base, SkipReason.MODE_DISABLED, t0))
        if mode is Mode.ASYNC:
            # Score in the background; the result (and its evidence) is fetched with GetEvaluation.
            # No longer bounded by the caller's gRPC deadline, only by the request/manifest timeout.
            job_timeout = policy.effective_timeout_ms(None, inp.timeout_ms, manifest)
            self.jobs.submit(
                evaluation_id, inp.workspace_id, lambda: self._run(inp, manifest, base, job_timeout, t0)
            )
            return dataclasses.replace(base, outcome=Outcome.SKIPPED, pending=True, processing_time_us=_us(t0))
        if not self.admission.try_enter():
            # over the measured service rate: answered now, signed, instead of queued
            log.warning("overloaded", evaluation_id=base.evaluation_id, limit=self.admission.limit)
            return await self._record(inp, _skipped(base, SkipReason.OVERLOADED, t0))
        try:
            return await self._run(inp, manifest, base, timeout_ms, t0)
        finally:
            self.admission.leave()

    async def _run(
        self, inp: EvaluateInput, manifest: Manifest, base: EvaluationResult, timeout_ms: int, t0: int
    ) -> EvaluationResult:
        if self.batcher.estimated_wait_s() * 1000.0 > timeout_ms:
            log.warning("overloaded", evaluation_id=base.evaluation_id, timeout_ms=timeout_ms)
            return await self._record(inp, _skipped(base, SkipReason.OVERLOADED, t0))
        try:
            scores, violations = await asyncio.wait_for(self._score_and_guard(inp, manifest), timeout_ms / 1000.0)
        except (asyncio.TimeoutError, EvaluatorTimeout):
            log.warning("evaluator_timeout", evaluation_id=base.evaluation_id, timeout_ms=timeout_ms)
            return await self._record(inp, _skipped(base, SkipReason.EVALUATOR_TIMEOUT, t0))
        except SERVICE_ERRORS as exc:
            if base.mode is not Mode.ASYNC:
                raise  # a status for the caller (RESOURCE_EXHAUSTED when the queue is full, UNAVAILABLE)
            # Nobody is waiting for a status code in async mode: the job's result is a signed skip.
            reason = SkipReason.OVERLOADED if isinstance(exc, ResourceExhausted) else SkipReason.EVALUATOR_ERROR
            log.warning(reason.value, evaluation_id=base.evaluation_id, error_type=type(exc).__name__)
            return await self._record(inp, _skipped(base, reason, t0))
        except Exception as exc:  # a broken evaluator (EvaluatorFailure or anything else) is not an error
            log.error("evaluator_error", evaluation_id=base.evaluation_id, error_type=type(exc).__name__)
            return await self._record(inp, _skipped(base, SkipReason.EVALUATOR_ERROR, t0))
        verdict_mode = Mode.SHADOW if base.mode is Mode.ASYNC else base.mode
        with telemetry.span(tracer, telemetry.SPAN_POLICY) as span:
            verdict = policy.decide(manifest, scores, violations, verdict_mode)
            telemetry.record_verdict(span, verdict)
        self.metrics.observe_verdict(base.workspace_id, verdict.metrics, verdict.violations)
        result = dataclasses.replace(
            base,
            outcome=verdict.outcome,
            passed=verdict.passed,
            metrics=verdict.metrics,
            overall_score=verdict.overall_score,
            violations=verdict.violations,
            claims=scores.claims,
            blocked=verdict.blocked,
            block_reasons=verdict.block_reasons,
            processing_time_us=_us(t0),
        )
        return await self._record(inp, result)

    async def _score_and_guard(self, inp: EvaluateInput, manifest: Manifest) -> tuple[Scores, list[GuardrailViolation]]:
        loop = asyncio.get_running_loop()
        # in_context: the worker threads see this request's span and log context
        guard = loop.run_in_executor(self._workers, telemetry.in_context(self._scan), inp, manifest.guardrails)
        try:
            layout = self.scorer.layout(inp)
            # the guardrails' new texts ride in the same encoder batch (their own lookup then hits
            # the batcher cache instead of waiting for a second encoder round)
            extra = self.guardrails.texts_to_embed(inp, manifest.guardrails)
            with telemetry.span(tracer, telemetry.SPAN_EMBED, {telemetry.ATTR_TEXTS: len(layout.texts) + len(extra)}):
                vecs, tokens = await self.batcher.embed_tokens(layout.texts + extra)
            scores = await loop.run_in_executor(
                self._workers, telemetry.in_context(self._score), inp, layout, vecs, tokens
            )
            violations = await guard
        except BaseException:
            guard.cancel()
            raise
        return scores, violations

    def _scan(self, inp: EvaluateInput, configs: object) -> list[GuardrailViolation]:
        with telemetry.span(tracer, telemetry.SPAN_GUARDRAILS) as span:
            found = self.guardrails.scan(inp, configs)
            span.set_attribute(telemetry.ATTR_VIOLATIONS, len(found))
            return found

    def _score(self, inp: EvaluateInput, layout: Any, vecs: np.ndarray, tokens: list[Any]) -> Scores:
        with telemetry.span(tracer, telemetry.SPAN_KERNELS):
            return self.scorer.score(inp, layout, vecs, tokens)

    async def _record(self, inp: EvaluateInput, result: EvaluationResult) -> EvaluationResult:
        with telemetry.span(tracer, telemetry.SPAN_EVIDENCE) as span:  # sign + chain + durable append
            t0 = time.perf_counter()
            evidence_id, _ = await self.evidence.append(IntegrityDecision.from_result(inp, result))
            self.metrics.observe_evidence_append(time.perf_counter() - t0)
            span.set_attribute(telemetry.ATTR_EVIDENCE_ID, evidence_id)
        recorded = dataclasses.replace(result, evidence_id=evidence_id)
        for observe in self.observers:
            observe(recorded)
        return recorded

    # -- Measure ----------------------------------------------------------------------------------
    async def measure(self, text1: str, text2: str, threshold: float | None) -> MeasureResult:
        vecs = await self.batcher.embed([text1, text2])
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._workers, self.scorer.measure, text1, text2, vecs[0], vecs[1], threshold)


def _us(t0: int) -> int:
    return (time.perf_counter_ns() - t0) // 1000


def _skipped(base: EvaluationResult, reason: SkipReason, t0: int) -> EvaluationResult:
    return dataclasses.replace(
        base, outcome=Outcome.SKIPPED, passed=False, skipped=True, skip_reason=reason.value, processing_time_us=_us(t0)
    )
