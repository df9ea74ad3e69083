"""Policy rules, table-driven: exact outcomes, overall scores to 1e-12, blocking and reasons."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

import pytest

from certus.sidecar.domain import (
    GuardrailType,
    GuardrailViolation,
    MetricScore,
    Mode,
    Outcome,
    Scores,
    Severity,
    content_hash,
)
from certus.sidecar.errors import PermissionDenied
from certus.sidecar.manifests import Manifest, ThresholdConfig, load_embedded_default
from certus.sidecar.policy import decide, effective_mode, effective_timeout_ms, filter_violations

BASE = Manifest(
    manifest_id="manifest_acme_2025_01",
    manifest_uri="certus://manifests/acme/2025-01",
    workspace_id="acme",
    version="2025-01",
    signed_by="t",
    thresholds={
        "faithfulness": ThresholdConfig(min_score=0.7, weight=2.0, required=True),
        "answer_relevancy": ThresholdConfig(min_score=0.6, weight=1.5, required=True),
        "confidence": ThresholdConfig(min_score=0.7, weight=1.0, required=False),
    },
)


def manifest(**changes: Any) -> Manifest:
    return dataclasses.replace(BASE, **changes)


def v(kind: GuardrailType, severity: Severity, confidence: float, detector: str = "d") -> GuardrailViolation:
    return GuardrailViolation(
        guardrail_type=kind,
        severity=severity,
        confidence=confidence,
        content_hash=content_hash("x"),
        start=0,
        end=1,
        source="response",
        detector=detector,
    )


PII_HIGH = v(GuardrailType.PII, Severity.HIGH, 0.9, "EMAIL_ADDRESS")
PII_MEDIUM = v(GuardrailType.PII, Severity.MEDIUM, 0.99, "EMAIL_ADDRESS")
PII_LOW_CONF = v(GuardrailType.PII, Severity.CRITICAL, 0.69, "EMAIL_ADDRESS")
CODE_MEDIUM = v(GuardrailType.CODE_SAFETY, Severity.MEDIUM, 0.8, "eval_call")
VULN = v(GuardrailType.VULN_HALLUCINATION, Severity.CRITICAL, 1.0, "cve")
INJ = v(GuardrailType.PROMPT_INJECTION, Severity.CRITICAL, 0.95, "instruction_override")

GOOD = {"faithfulness": 0.9, "answer_relevancy": 0.8, "confidence": 0.75}


@dataclass
class Case:
    name: str
    scores: dict[str, float]
    outcome: Outcome
    overall: float | None
    violations: list[GuardrailViolation] = field(default_factory=list)
    m: Manifest = BASE
    mode: Mode = Mode.SHADOW
    blocked: bool = False
    reasons: tuple[str, ...] = ()
    kept: int | None = None  # violations that count (default: all given)


CASES = [
    Case("all pass", GOOD, Outcome.PASS, 3.75 / 4.5),
    Case("all pass, enforce", GOOD, Outcome.PASS, 3.75 / 4.5, mode=Mode.ENFORCE),
    Case("values at the bounds pass", {"faithfulness": 0.7, "answer_relevancy": 0.9, "confidence": 0.7}, Outcome.PASS, 3.45 / 4.5),
    Case("optional metric fails -> warning", {**GOOD, "confidence": 0.5}, Outcome.WARNING, 3.5 / 4.5),
    Case("optional fails, enforce: warning, not blocked", {**GOOD, "confidence": 0.5}, Outcome.WARNING, 3.5 / 4.5, mode=Mode.ENFORCE),
    Case("required metric fails -> fail (shadow: not blocked)", {**GOOD, "faithfulness": 0.65}, Outcome.FAIL, 3.25 / 4.5),
    Case(
        "required metric fails, enforce -> blocked",
        {**GOOD, "faithfulness": 0.65},
        Outcome.FAIL,
        3.25 / 4.5,
        mode=Mode.ENFORCE,
        blocked=True,
        reasons=("metric:faithfulness:below_min_score",),
    ),
    Case(
        "overall below min_overall_score -> fail, not blocked even in enforce",
        {"faithfulness": 0.7, "answer_relevancy": 0.6, "confidence": 0.7},
        Outcome.FAIL,
        3.0 / 4.5,
        mode=Mode.ENFORCE,
    ),
    Case(
        "min_overall_score null: no overall rule",
        {"faithfulness": 0.7, "answer_relevancy": 0.6, "confidence": 0.7},
        Outcome.PASS,
        3.0 / 4.5,
        m=manifest(min_overall_score=None),
    ),
    Case(
        "require_all_metrics_pass: optional failure fails and blocks",
        {**GOOD, "confidence": 0.5},
        Outcome.FAIL,
        3.5 / 4.5,
        m=manifest(require_all_metrics_pass=True),
        mode=Mode.ENFORCE,
        blocked=True,
        reasons=("metric:confidence:below_min_score",),
    ),
    Case(
        "required metric missing -> fail 'not computed'",
        {"answer_relevancy": 0.8, "confidence": 0.75},
        Outcome.FAIL,
        1.95 / 2.5,
        mode=Mode.ENFORCE,
        blocked=True,
        reasons=("metric:faithfulness:not_computed",),
    ),
    Case("optional metric missing: not reported, not weighed", {"faithfulness": 0.9, "answer_relevancy": 0.8}, Outcome.PASS, 3.0 / 3.5),
    Case(
        "optional missing under require_all -> fail",
        {"faithfulness": 0.9, "answer_relevancy": 0.8},
        Outcome.FAIL,
        3.0 / 3.5,
        m=manifest(require_all_metrics_pass=True),
    ),
    Case("unnamed metrics are reported but do not weigh", {**GOOD, "semantic_similarity": 0.01}, Outcome.PASS, 3.75 / 4.5),
    Case(
        "max_score exceeded (required) -> fail",
        {**GOOD, "grounding": 0.95},
        Outcome.FAIL,
        4.7 / 5.5,
        m=manifest(thresholds={**BASE.thresholds, "grounding": ThresholdConfig(max_score=0.9)}),
        mode=Mode.ENFORCE,
        blocked=True,
        reasons=("metric:grounding:above_max_score",),
    ),
    Case(
        "window min..max, inside",
        {"grounding": 0.5},
        Outcome.PASS,
        0.5 / 1.0,
        m=manifest(thresholds={"grounding": ThresholdConfig(min_score=0.4, max_score=0.6)}, min_overall_score=0.0),
    ),
    Case(
        "non-finite required value -> fail, excluded from overall",
        {**GOOD, "faithfulness": math.nan},
        Outcome.FAIL,
        1.95 / 2.5,
        mode=Mode.ENFORCE,
        blocked=True,
        reasons=("metric:faithfulness:not_finite",),
    ),
    Case("non-finite optional value -> warning", {**GOOD, "confidence": math.inf}, Outcome.WARNING, 3.0 / 3.5),
    Case(
        "all-zero weights -> overall None, no overall rule",
        {"faithfulness": 0.1},
        Outcome.PASS,
        None,
        m=manifest(thresholds={"faithfulness": ThresholdConfig(min_score=0.0, weight=0.0)}),
    ),
    Case("no thresholds, no scores -> pass", {}, Outcome.PASS, None, m=manifest(thresholds={})),
    Case("blocking violation -> fail (shadow: not blocked)", GOOD, Outcome.FAIL, 3.75 / 4.5, violations=[PII_HIGH]),
    Case(
        "blocking violation, enforce -> blocked",
        GOOD,
        Outcome.FAIL,
        3.75 / 4.5,
        violations=[PII_HIGH],
        mode=Mode.ENFORCE,
        blocked=True,
        reasons=("guardrail:pii:EMAIL_ADDRESS",),
    ),
    Case("blocking violation, async -> never blocked", GOOD, Outcome.FAIL, 3.75 / 4.5, violations=[PII_HIGH], mode=Mode.ASYNC),
    Case("non-blocking violation -> warning", GOOD, Outcome.WARNING, 3.75 / 4.5, violations=[CODE_MEDIUM], mode=Mode.ENFORCE),
    Case("below severity threshold -> dropped", GOOD, Outcome.PASS, 3.75 / 4.5, violations=[PII_MEDIUM], kept=0),
    Case("below confidence threshold -> dropped", GOOD, Outcome.PASS, 3.75 / 4.5, violations=[PII_LOW_CONF], kept=0),
    Case("disabled guardrail -> dropped", GOOD, Outcome.PASS, 3.75 / 4.5, violations=[VULN], mode=Mode.ENFORCE, kept=0),
    Case(
        "metric and guardrails: reasons ordered, deduplicated",
        {**GOOD, "answer_relevancy": 0.1},
        Outcome.FAIL,
        2.7 / 4.5,
        violations=[PII_HIGH, CODE_MEDIUM, INJ, PII_HIGH],
        mode=Mode.ENFORCE,
        blocked=True,
        reasons=(
            "metric:answer_relevancy:below_min_score",
            "guardrail:pii:EMAIL_ADDRESS",
            "guardrail:prompt_injection:instruction_override",
        ),
    ),
    Case(
        "guardrail configured non-blocking: warning only",
        GOOD,
        Outcome.WARNING,
        3.75 / 4.5,
        violations=[PII_HIGH],
        m=manifest(guardrails={**BASE.guardrails, GuardrailType.PII: dataclasses.replace(BASE.guardrails[GuardrailType.PII], block_on_violation=False)}),
        mode=Mode.ENFORCE,
    ),
]


@pytest.mark.parametrize("c", CASES, ids=[c.name for c in CASES])
def test_rules(c: Case) -> None:
    verdict = decide(c.m, Scores(values=c.scores), c.violations, c.mode)
    assert verdict.outcome is c.outcome
    assert verdict.passed is (c.outcome in (Outcome.PASS, Outcome.WARNING))
    if c.overall is None:
        assert verdict.overall_score is None
    else:
        assert verdict.overall_score is not None and abs(verdict.overall_score - c.overall) <= 1e-12
    assert verdict.blocked is c.blocked
    assert verdict.block_reasons == c.reasons
    assert len(verdict.violations) == (len(c.violations) if c.kept is None else c.kept)
    for kept in verdict.violations:
        assert kept.blocking is c.m.guardrails[kept.guardrail_type].block_on_violation


def test_metric_scores_are_reported_exactly() -> None:
    m = manifest(thresholds={**BASE.thresholds, "grounding": ThresholdConfig(min_score=0.2, max_score=0.9, required=False)})
    verdict = decide(m, Scores(values={"faithfulness": 0.5, "confidence": 0.8, "semantic_similarity": 0.3, "grounding": 0.95}), [], Mode.SHADOW)
    assert verdict.metrics == (
        MetricScore("answer_relevancy", 0.0, threshold=0.6, passed=False, error="not computed"),
        MetricScore("confidence", 0.8, threshold=0.7, passed=True),
        MetricScore("faithfulness", 0.5, threshold=0.7, passed=False),
        MetricScore("grounding", 0.95, threshold=0.2, passed=False, max_threshold=0.9),
        MetricScore("semantic_similarity", 0.3),
    )
    assert verdict.outcome is Outcome.FAIL and verdict.blocked is False and verdict.block_reasons == ()
    # overall: (2*0.5 + 1*0.8 + 1*0.95) / 4
    assert verdict.overall_score is not None and abs(verdict.overall_score - 2.75 / 4.0) <= 1e-12


def test_non_finite_unnamed_metric_is_reported_not_weighed() -> None:
    verdict = decide(BASE, Scores(values={**GOOD, "grounding": math.nan}), [], Mode.SHADOW)
    assert verdict.metrics[3] == MetricScore("grounding", 0.0, passed=False, error="not a finite number")
    assert verdict.outcome is Outcome.PASS


def test_filter_violations_keeps_order_and_sets_blocking() -> None:
    got = filter_violations(BASE, [CODE_MEDIUM, PII_MEDIUM, PII_HIGH, VULN, INJ])
    assert [(x.guardrail_type, x.blocking) for x in got] == [
        (GuardrailType.CODE_SAFETY, False),
        (GuardrailType.PII, True),
        (GuardrailType.PROMPT_INJECTION, True),
    ]
    nan = dataclasses.replace(PII_HIGH, confidence=math.nan)
    assert filter_violations(BASE, [nan]) == []


def test_embedded_default_policy_on_a_typical_answer() -> None:
    d = load_embedded_default()
    verdict = decide(d, Scores(values={"faithfulness": 0.8, "answer_relevancy": 0.7, "confidence": 0.6}), [], Mode.SHADOW)
    assert verdict.outcome is Outcome.WARNING  # confidence is optional in the default
    assert verdict.overall_score is not None and abs(verdict.overall_score - (1.6 + 1.05 + 0.6) / 4.5) <= 1e-12


# -- modes and timeouts ------------------------------------------------------------------------

MODE_CASES = [
    (Mode.SHADOW, None, False, Mode.SHADOW),
    (Mode.SHADOW, Mode.SHADOW, False, Mode.SHADOW),
    (Mode.SHADOW, Mode.ENFORCE, True, Mode.ENFORCE),
    (Mode.SHADOW, Mode.ASYNC, True, Mode.ASYNC),
    (Mode.ENFORCE, Mode.SHADOW, True, Mode.SHADOW),
    (Mode.DISABLED, None, False, Mode.DISABLED),
    (Mode.DISABLED, Mode.SHADOW, True, Mode.SHADOW),
    (Mode.ASYNC, None, False, Mode.ASYNC),
    (Mode.ENFORCE, Mode.DISABLED, True, Mode.DISABLED),
]


@pytest.mark.parametrize("default,requested,admin,expected", MODE_CASES)
def test_effective_mode(default: Mode, requested: Mode | None, admin: bool, expected: Mode) -> None:
    assert effective_mode(manifest(default_mode=default), requested, admin) is expected


@pytest.mark.parametrize(
    "default,requested", [(Mode.ENFORCE, Mode.SHADOW), (Mode.SHADOW, Mode.ASYNC), (Mode.ENFORCE, Mode.DISABLED)]
)
def test_mode_override_needs_admin(default: Mode, requested: Mode) -> None:
    with pytest.raises(PermissionDenied, match="requires the workspace:admin scope"):
        effective_mode(manifest(default_mode=default), requested, False)


@pytest.mark.parametrize(
    "deadline,request_ms,manifest_ms,expected",
    [
        (None, None, 2000, 2000),
        (None, 500, 2000, 500),
        (None, 5000, 2000, 2000),  # a request cannot extend the manifest's timeout
        (300, None, 2000, 300),
        (300, 200, 2000, 200),
        (10_000, 1500, 2000, 1500),
        (0, 500, 2000, 0),
        (-5, None, 2000, 0),
    ],
)
def test_effective_timeout(deadline: int | None, request_ms: int | None, manifest_ms: int, expected: int) -> None:
    assert effective_timeout_ms(deadline, request_ms, manifest(timeout_ms=manifest_ms)) == expected
