"""Sample inputs, results and decisions for the evidence tests (real types, fixed values)."""

from __future__ import annotations

import uuid

from certus.sidecar.domain import (
    EvaluateInput,
    EvaluationResult,
    GuardrailType,
    GuardrailViolation,
    MetricScore,
    Mode,
    Outcome,
    Severity,
    content_hash,
)
from certus.sidecar.evidence.decision import IntegrityDecision

# A fixed seed so failures are reproducible; tests that need a second key use another seed.
SEED = bytes(range(32))
OTHER_SEED = bytes(range(32, 64))


def sample_input(i: int = 0) -> EvaluateInput:
    return EvaluateInput(
        workspace_id="acme",
        query=f"What is the refund window for order {i}?",
        response="Refunds are accepted within 30 days. Contact alice@example.com for help.",
        context=("Our policy: refunds within 30 days of purchase.", "Shipping takes 5 business days."),
        manifest_uri="certus://manifests/acme/2025-01",
    )


def sample_result(i: int = 0, outcome: Outcome = Outcome.PASS, evaluation_id: str | None = None) -> EvaluationResult:
    inp = sample_input(i)
    email_at = inp.response.index("alice@example.com")
    return EvaluationResult(
        evaluation_id=evaluation_id or str(uuid.uuid4()),
        workspace_id="acme",
        outcome=outcome,
        passed=outcome != Outcome.FAIL,
        mode=Mode.SHADOW,
        manifest_uri="certus://manifests/acme/2025-01",
        metrics=(
            MetricScore("faithfulness", 0.8125, 0.7, True),
            MetricScore("answer_relevancy", 0.5, 0.6, False),
        ),
        overall_score=0.6875,
        violations=(
            GuardrailViolation(
                guardrail_type=GuardrailType.PII,
                severity=Severity.HIGH,
                confidence=0.95,
                content_hash=content_hash("alice@example.com"),
                start=email_at,
                end=email_at + len("alice@example.com"),
                source="response",
                detector="EMAIL_ADDRESS",
                remediation="Redact detected email address",
            ),
        ),
        processing_time_us=12_345,
    )


def sample_decision(i: int = 0, outcome: Outcome = Outcome.PASS) -> IntegrityDecision:
    return IntegrityDecision.from_result(sample_input(i), sample_result(i, outcome))
