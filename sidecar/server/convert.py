"""protobuf <-> domain conversion: the only place that knows both sides."""

from __future__ import annotations

from certus.sidecar import validation as v
from certus.sidecar.domain import (
    Claim,
    EvaluateInput,
    EvaluationResult,
    GuardrailType,
    GuardrailViolation,
    MetricScore,
    Mode,
    Outcome,
    Severity,
)
from certus.sidecar.errors import FieldViolation, InvalidArgument
from certus.sidecar.jobs import JobView
from certus.sidecar.protos import pb

MODE_FROM_PB = {
    pb.EVALUATION_MODE_UNSPECIFIED: None,
    pb.EVALUATION_MODE_SHADOW: Mode.SHADOW,
    pb.EVALUATION_MODE_ENFORCE: Mode.ENFORCE,
    pb.EVALUATION_MODE_ASYNC: Mode.ASYNC,
    pb.EVALUATION_MODE_DISABLED: Mode.DISABLED,
}
MODE_TO_PB = {m: k for k, m in MODE_FROM_PB.items() if m is not None}
OUTCOME_TO_PB = {
    Outcome.PASS: pb.OUTCOME_PASS,
    Outcome.FAIL: pb.OUTCOME_FAIL,
    Outcome.WARNING: pb.OUTCOME_WARNING,
    Outcome.SKIPPED: pb.OUTCOME_SKIPPED,
}
GUARDRAIL_TO_PB = {
    GuardrailType.PII: pb.GUARDRAIL_TYPE_PII,
    GuardrailType.PROMPT_INJECTION: pb.GUARDRAIL_TYPE_PROMPT_INJECTION,
    GuardrailType.CODE_SAFETY: pb.GUARDRAIL_TYPE_CODE_SAFETY,
    GuardrailType.DATA_EXFILTRATION: pb.GUARDRAIL_TYPE_DATA_EXFILTRATION,
    GuardrailType.JAILBREAK: pb.GUARDRAIL_TYPE_JAILBREAK,
    GuardrailType.VULN_HALLUCINATION: pb.GUARDRAIL_TYPE_VULN_HALLUCINATION,
}
SEVERITY_TO_PB = {
    Severity.LOW: pb.SEVERITY_LOW,
    Severity.MEDIUM: pb.SEVERITY_MEDIUM,
    Severity.HIGH: pb.SEVERITY_HIGH,
    Severity.CRITICAL: pb.SEVERITY_CRITICAL,
}


def evaluate_input_from_pb(req: "pb.EvaluateRequest") -> EvaluateInput:
    """Validate every limit (all violations at once) and build the domain input."""
    violations: list[FieldViolation] = []
    v.check_workspace(req.workspace_id, violations)
    v.check_text(req.query, "query", v.LIMITS.query_max, violations)
    v.check_text(req.response, "response", v.LIMITS.response_max, violations)
    v.check_context(req.context, violations)
    v.check_text(req.reference, "reference", v.LIMITS.response_max, violations, required=False)
    v.check_manifest_uri(req.manifest_uri, violations)
    timeout = req.timeout_ms if req.HasField("timeout_ms") else None
    v.check_timeout(timeout, violations)
    if req.mode not in MODE_FROM_PB:
        violations.append(FieldViolation("mode", f"unknown mode {req.mode}"))
    v.check_id(req.trace_id, "trace_id", violations)
    v.check_id(req.parent_span_id, "parent_span_id", violations)
    v.check_id(req.request_id, "request_id", violations)
    v.raise_if(violations)
    return EvaluateInput(
        workspace_id=req.workspace_id,
        query=req.query,
        response=req.response,
        context=tuple(req.context),
        manifest_uri=req.manifest_uri,
        mode=MODE_FROM_PB[req.mode],
        timeout_ms=timeout,
        trace_id=req.trace_id,
        parent_span_id=req.parent_span_id,
        request_id=req.request_id,
        reference=req.reference,
    )


def measure_input_from_pb(req: "pb.MeasureRequest") -> tuple[str, str, float | None]:
    violations: list[FieldViolation] = []
    v.check_text(req.text1, "text1", v.LIMITS.measure_text_max, violations)
    v.check_text(req.text2, "text2", v.LIMITS.measure_text_max, violations)
    threshold = req.threshold if req.HasField("threshold") else None
    if threshold is not None and not (0.0 <= threshold <= 1.0):
        violations.append(FieldViolation("threshold", "must be between 0 and 1"))
    v.raise_if(violations)
    return req.text1, req.text2, threshold


def metric_to_pb(m: MetricScore) -> "pb.MetricScore":
    out = pb.MetricScore(name=m.name, value=m.value, passed=m.passed, framework=m.framework, error=m.error or "")
    if m.threshold is not None:
        out.threshold = m.threshold
    if m.max_threshold is not None:
        out.max_threshold = m.max_threshold
    return out


def violation_to_pb(x: GuardrailViolation) -> "pb.GuardrailViolation":
    return pb.GuardrailViolation(
        guardrail_type=GUARDRAIL_TO_PB[x.guardrail_type],
        severity=SEVERITY_TO_PB[x.severity],
        confidence=x.confidence,
        content_hash=x.content_hash,
        location=x.location,
        remediation=x.remediation,
        detector=x.detector,
        source=x.source,
        start=x.start,
        end=x.end,
        blocking=x.blocking,
    )


def claim_to_pb(c: Claim) -> "pb.Claim":
    return pb.Claim(
        start=c.start,
        end=c.end,
        support=c.support,
        supported=c.supported,
        chunk_index=c.chunk_index,
        semantic=c.semantic,
        grounding=c.grounding,
        numeric=c.numeric,
        chunk_start=c.chunk_start,
        chunk_end=c.chunk_end,
        reason=c.reason,
    )


def result_to_pb(r: EvaluationResult) -> "pb.EvaluateResponse":
    out = pb.EvaluateResponse(
        evaluation_id=r.evaluation_id,
        passed=r.passed,
        outcome=pb.OUTCOME_UNSPECIFIED if r.pending else OUTCOME_TO_PB[r.outcome],  # async: not decided yet
        evidence_id=r.evidence_id,
        metrics=[metric_to_pb(m) for m in r.metrics],
        guardrail_violations=[violation_to_pb(x) for x in r.violations],
        processing_time_ms=r.processing_time_us // 1000,
        processing_time_us=r.processing_time_us,
        mode=MODE_TO_PB[r.mode],
        skipped=r.skipped,
        skip_reason=r.skip_reason,
        trace_id=r.trace_id,
        blocked=r.blocked,
        block_reasons=list(r.block_reasons),
        claims=[claim_to_pb(c) for c in r.claims],
        manifest_uri=r.manifest_uri,
        request_id=r.request_id,
        status=pb.EVALUATION_STATUS_PENDING if r.pending else pb.EVALUATION_STATUS_COMPLETED,
    )
    if r.overall_score is not None:
        out.overall_score = r.overall_score
    return out


__all__ = ["evaluate_input_from_pb", "measure_input_from_pb", "result_to_pb", "InvalidArgument"]


def get_evaluation_from_pb(req: "pb.GetEvaluationRequest") -> tuple[str, str]:
    violations: list[FieldViolation] = []
    if not v.UUID_RE.fullmatch(req.evaluation_id):
        violations.append(FieldViolation("evaluation_id", "must be a UUID"))
    v.check_workspace(req.workspace_id, violations)
    v.raise_if(violations)
    return req.evaluation_id, req.workspace_id


STATUS_TO_PB = {
    "pending": pb.EVALUATION_STATUS_PENDING,
    "processing": pb.EVALUATION_STATUS_PROCESSING,
    "completed": pb.EVALUATION_STATUS_COMPLETED,
}


def job_view_to_pb(evaluation_id: str, view: JobView) -> "pb.GetEvaluationResponse":
    out = pb.GetEvaluationResponse(
        evaluation_id=evaluation_id,
        status=STATUS_TO_PB[view.status.value],
        estimated_completion_ms=int(view.estimated_completion_ms or 0),
    )
    if view.result is not None:
        out.result.CopyFrom(result_to_pb(view.result))
    return out
