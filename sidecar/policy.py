"""Policy: turn scores and guardrail findings into a verdict under a workspace manifest.

Pure functions, no I/O. The rules (documented with examples in docs/manifests.md):

Metrics
    A metric named in ``manifest.thresholds`` passes when ``value >= min_score`` (if set) and
    ``value <= max_score`` (if set). It is *required* when its ``required`` flag is set, or when
    ``require_all_metrics_pass`` is true (then every named metric is required). A required metric
    missing from the scores fails with error ``not computed``; a missing optional one is not
    reported. A non-finite value fails with error ``not a finite number`` (reported as 0.0).
    Metrics the manifest does not name are reported (threshold None, passed) but do not weigh in.

Overall score
    Weighted mean of the named metrics that were computed (finite values), with the manifest's
    weights; ``None`` when there are none or all their weights are zero.

Guardrails
    A violation counts only when its guardrail is enabled, its severity is at least
    ``severity_threshold`` and its confidence at least ``confidence_threshold``; the others are
    dropped. A counted violation is *blocking* when the guardrail has ``block_on_violation``.

Outcome (first rule that matches)
    fail     a required metric failed, or overall_score < min_overall_score (when both are set),
             or a blocking violation counts;
    warning  an optional metric failed, or a non-blocking violation counts;
    pass     otherwise.
    (``skipped`` is the pipeline's: mode disabled, timeout, evaluator error, overload.)
``passed`` = outcome is pass or warning. ``blocked`` = mode is enforce and (a blocking violation
or a failed required metric); ``block_reasons`` are set only when blocked and name the metric or
the guardrail type and detector, never content.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence

from certus.sidecar.domain import GuardrailViolation, MetricScore, Mode, Outcome, Scores, Verdict
from certus.sidecar.errors import PermissionDenied
from certus.sidecar.manifests.model import Manifest, ThresholdConfig

FRAMEWORK = "certus"
NOT_COMPUTED = "not computed"
NOT_FINITE = "not a finite number"


def decide(
    manifest: Manifest, scores: Scores, violations: Sequence[GuardrailViolation], mode: Mode
) -> Verdict:
    """Apply ``manifest`` to one evaluation's scores and guardrail violations."""
    require_all = manifest.require_all_metrics_pass
    metrics: list[MetricScore] = []
    required_failed: list[str] = []  # block reasons for failed required metrics
    optional_failed = False
    num: list[float] = []
    den: list[float] = []

    names = sorted(set(scores.values) | set(manifest.thresholds))
    for name in names:
        t = manifest.thresholds.get(name)
        raw = scores.values.get(name)
        if t is None:  # computed but not governed by the manifest
            if raw is not None and math.isfinite(raw):
                metrics.append(MetricScore(name=name, value=float(raw), framework=FRAMEWORK))
            else:
                metrics.append(MetricScore(name=name, value=0.0, passed=False, framework=FRAMEWORK, error=NOT_FINITE))
            continue
        required = t.required or require_all
        if raw is None:
            if not required:
                continue
            metrics.append(_score(name, 0.0, t, passed=False, error=NOT_COMPUTED))
            required_failed.append(f"metric:{name}:not_computed")
            continue
        if not math.isfinite(raw):
            metrics.append(_score(name, 0.0, t, passed=False, error=NOT_FINITE))
            if required:
                required_failed.append(f"metric:{name}:not_finite")
            else:
                optional_failed = True
            continue
        value = float(raw)
        ok = t.passes(value)
        metrics.append(_score(name, value, t, passed=ok))
        num.append(t.weight * value)
        den.append(t.weight)
        if not ok:
            if required:
                below = t.min_score is not None and value < t.min_score
                required_failed.append(f"metric:{name}:{'below_min_score' if below else 'above_max_score'}")
            else:
                optional_failed = True

    weight_sum = math.fsum(den)
    overall = math.fsum(num) / weight_sum if weight_sum > 0.0 else None

    counted = filter_violations(manifest, violations)
    blocking = [v for v in counted if v.blocking]

    below_overall = (
        overall is not None and manifest.min_overall_score is not None and overall < manifest.min_overall_score
    )
    if required_failed or below_overall or blocking:
        outcome = Outcome.FAIL
    elif optional_failed or counted:
        outcome = Outcome.WARNING
    else:
        outcome = Outcome.PASS

    blocked = mode is Mode.ENFORCE and bool(required_failed or blocking)
    reasons: tuple[str, ...] = ()
    if blocked:
        seen: dict[str, None] = {}
        for r in required_failed:
            seen.setdefault(r, None)
        for v in blocking:
            seen.setdefault(f"guardrail:{v.guardrail_type.value}:{v.detector}", None)
        reasons = tuple(seen)

    return Verdict(
        outcome=outcome,
        passed=outcome in (Outcome.PASS, Outcome.WARNING),
        blocked=blocked,
        block_reasons=reasons,
        metrics=tuple(metrics),
        overall_score=overall,
        violations=tuple(counted),
    )


def _score(name: str, value: float, t: ThresholdConfig, *, passed: bool, error: str | None = None) -> MetricScore:
    return MetricScore(
        name=name,
        value=value,
        threshold=t.min_score,
        passed=passed,
        framework=FRAMEWORK,
        error=error,
        max_threshold=t.max_score,
    )


def filter_violations(manifest: Manifest, violations: Sequence[GuardrailViolation]) -> list[GuardrailViolation]:
    """The violations that count under the manifest, each with ``blocking`` set from its guardrail."""
    out = []
    for v in violations:
        cfg = manifest.guardrail(v.guardrail_type)
        if not cfg.enabled:
            continue
        if v.severity.rank < cfg.severity_threshold.rank:
            continue
        if not v.confidence >= cfg.confidence_threshold:  # NaN confidence never counts
            continue
        if v.blocking != cfg.block_on_violation:
            v = dataclasses.replace(v, blocking=cfg.block_on_violation)
        out.append(v)
    return out


def effective_mode(manifest: Manifest, requested: Mode | None, is_admin: bool) -> Mode:
    """The mode a request runs in: the manifest's ``default_mode`` unless the request names
    another one, which needs the ``workspace:admin`` scope (seed §1.3; with auth off, callers are
    admin). Naming the manifest's own mode needs no privilege."""
    if requested is None or requested is manifest.default_mode:
        return manifest.default_mode
    if not is_admin:
        raise PermissionDenied(
            f"mode: overriding the manifest's default_mode ({manifest.default_mode.value}) with "
            f"{requested.value} requires the workspace:admin scope"
        )
    return requested


def effective_timeout_ms(grpc_deadline_ms: int | None, request_timeout_ms: int | None, manifest: Manifest) -> int:
    """min(gRPC deadline, request timeout_ms, manifest timeout_ms) over those present, never < 0.

    A request's timeout_ms can only shorten the manifest's, so it needs no admin scope."""
    budget = manifest.timeout_ms
    if request_timeout_ms is not None:
        budget = min(budget, request_timeout_ms)
    if grpc_deadline_ms is not None:
        budget = min(budget, grpc_deadline_ms)
    return max(0, int(budget))
