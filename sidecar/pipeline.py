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
import time
import uuid
from typing import Protocol, Sequence

import structlog

from sidecar import policy
from sidecar.batcher import Batcher
from sidecar.domain import (
    EvaluateInput,
    EvaluationResult,
    GuardrailViolation,
    Mode,
    Outcome,
    Scores,
    SkipReason,
)
from sidecar.errors import CertusError
from sidecar.evidence.decision import IntegrityDecision
from sidecar.scoring import MeasureResult, Scorer

log = structlog.get_logger(__name__)


class Guardrails(Protocol):
    def scan(self, inp: EvaluateInput, configs: object) -> list[GuardrailViolation]: ...


class EvidenceSink(Protocol):
    async def append(self, decision: IntegrityDecision) -> tuple[str, object]: ...


class Pipeline:
    def __init__(
        self,
        batcher: Batcher,
        scorer: Scorer,
        guardrails: Guardrails,
        manifests: object,
        evidence: EvidenceSink,
        jobs: object,
        kernel_threads: int = 2,
        guardrail_threads: int = 2,
    ) -> None:
        self.batcher = batcher
        self.scorer = scorer
        self.guardrails = guardrails
        self.manifests = manifests
        self.evidence = evidence
        self.jobs = jobs
        self._kernel_pool = concurrent.futures.ThreadPoolExecutor(kernel_threads, thread_name_prefix="kernels")
        self._guard_pool = concurrent.futures.ThreadPoolExecutor(guardrail_threads, thread_name_prefix="guardrails")

    async def close(self) -> None:
        """Wait for running stage work without blocking the loop (guardrails may still embed)."""
        loop = asyncio.get_running_loop()
        for pool in (self._guard_pool, self._kernel_pool):
            await loop.run_in_executor(None, pool.shutdown, True)

    # -- Evaluate ---------------------------------------------------------------------------------
    async def evaluate(
        self, inp: EvaluateInput, *, grpc_deadline_ms: int | None = None, is_admin: bool = True
    ) -> EvaluationResult:
        t0 = time.perf_counter_ns()
        evaluation_id = str(uuid.uuid4())
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
        return await self._run(inp, manifest, base, timeout_ms, t0)

    async def _run(
        self, inp: EvaluateInput, manifest: object, base: EvaluationResult, timeout_ms: int, t0: int
    ) -> EvaluationResult:
        if self.batcher.estimated_wait_s() * 1000.0 > timeout_ms:
            return await self._record(inp, _skipped(base, SkipReason.OVERLOADED, t0))
        try:
            scores, violations = await asyncio.wait_for(self._score_and_guard(inp, manifest), timeout_ms / 1000.0)
        except asyncio.TimeoutError:
            log.warning("evaluator_timeout", evaluation_id=base.evaluation_id, timeout_ms=timeout_ms)
            return await self._record(inp, _skipped(base, SkipReason.EVALUATOR_TIMEOUT, t0))
        except CertusError:
            raise  # mapped to a status by the server (e.g. RESOURCE_EXHAUSTED when the queue is full)
        except Exception as exc:
            log.error("evaluator_error", evaluation_id=base.evaluation_id, error_type=type(exc).__name__)
            return await self._record(inp, _skipped(base, SkipReason.EVALUATOR_ERROR, t0))
        verdict_mode = Mode.SHADOW if base.mode is Mode.ASYNC else base.mode
        verdict = policy.decide(manifest, scores, violations, verdict_mode)
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

    async def _score_and_guard(self, inp: EvaluateInput, manifest: object) -> tuple[Scores, list[GuardrailViolation]]:
        loop = asyncio.get_running_loop()
        guard = loop.run_in_executor(self._guard_pool, self.guardrails.scan, inp, manifest.guardrails)
        try:
            layout = self.scorer.layout(inp)
            vecs = await self.batcher.embed(layout.texts)
            scores = await loop.run_in_executor(self._kernel_pool, self.scorer.score, inp, layout, vecs)
            violations = await guard
        except BaseException:
            guard.cancel()
            raise
        return scores, violations

    async def _record(self, inp: EvaluateInput, result: EvaluationResult) -> EvaluationResult:
        evidence_id, _ = await self.evidence.append(IntegrityDecision.from_result(inp, result))
        return dataclasses.replace(result, evidence_id=evidence_id)

    # -- Measure ----------------------------------------------------------------------------------
    async def measure(self, text1: str, text2: str, threshold: float | None) -> MeasureResult:
        vecs = await self.batcher.embed([text1, text2])
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._kernel_pool, self.scorer.measure, text1, text2, vecs[0], vecs[1], threshold)

    async def embed(self, texts: Sequence[str]) -> object:
        return await self.batcher.embed(texts)


def _us(t0: int) -> int:
    return (time.perf_counter_ns() - t0) // 1000


def _skipped(base: EvaluationResult, reason: SkipReason, t0: int) -> EvaluationResult:
    return dataclasses.replace(
        base, outcome=Outcome.SKIPPED, passed=False, skipped=True, skip_reason=reason.value, processing_time_us=_us(t0)
    )
