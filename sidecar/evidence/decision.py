"""The IntegrityDecision: what one evaluation becomes as evidence (seed §1.1).

Hashes, ids, scores and character locations only — never query, response or context text.
Valid by construction: every field is checked in ``__post_init__`` and a bad one raises
:class:`DecisionError` naming it, so a decision that exists can always be serialised as canonical
JSON (finite floats, known enums, ``sha256:<64 hex>`` hashes).

The chain fields ``seq``, ``prev_hash`` and ``key_id`` are ``None`` until the evidence log fills
them in at append time (:meth:`IntegrityDecision.with_chain`); they are part of the signed payload.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Mapping

from certus.sidecar.domain import EvaluateInput, EvaluationResult, GuardrailType, Mode, Outcome, Severity, content_hash
from certus.sidecar.validation import MANIFEST_URI_RE, WORKSPACE_RE

DECISION_TYPES = ("evaluation", "guardrail", "combined")
OUTCOMES = tuple(o.value for o in Outcome)
MODES = tuple(m.value for m in Mode)
GUARDRAIL_TYPES = tuple(g.value for g in GuardrailType)
SEVERITIES = tuple(s.value for s in Severity)
MAX_CONTEXT_HASHES = 50

GENESIS_PREV_HASH = "sha256:" + "0" * 64
"""``prev_hash`` of the first record (seq 0) of a log."""

_HASH_RE = re.compile(r"^sha256:[0-9a-f]{64}$")
_TIMESTAMP_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?Z$")
_KEY_ID_RE = re.compile(r"^ed25519:[0-9a-f]{16}$")
_LOCATION_RE = re.compile(r"^(char \d+-\d+)?$")
_SHORT_TEXT_MAX = 256  # ids, detector names, error codes: bounded, never content


class DecisionError(ValueError):
    """A decision field that is missing or invalid; ``field`` names it (``metrics[2].value``)."""

    def __init__(self, field: str, description: str) -> None:
        super().__init__(f"{field}: {description}")
        self.field = field
        self.description = description


def is_sha256_ref(value: object) -> bool:
    return isinstance(value, str) and _HASH_RE.match(value) is not None


def utc_timestamp(when: datetime | None = None) -> str:
    """RFC 3339 UTC with microseconds: ``2025-01-31T12:00:00.123456Z``."""
    when = datetime.now(timezone.utc) if when is None else when.astimezone(timezone.utc)
    return when.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def pass_rate(outcomes: Mapping[str, int]) -> float | None:
    """The share of scored decisions that passed: (pass + warning) / (pass + warning + fail);
    None when nothing was scored (skipped decisions are not scored)."""
    passed = outcomes.get("pass", 0) + outcomes.get("warning", 0)
    scored = passed + outcomes.get("fail", 0)
    return passed / scored if scored else None


def parse_utc_timestamp(ts: str) -> datetime:
    """A decision's ``timestamp`` (RFC 3339 UTC, up to 9 fractional digits) as an aware datetime
    (to the microsecond)."""
    base = datetime.fromisoformat(ts[:19]).replace(tzinfo=timezone.utc)
    frac = ts[19:].rstrip("Z")  # ".123456" or ""
    return base + timedelta(microseconds=round(float("0" + frac) * 1e6)) if frac else base


def _check_hash(field: str, value: object) -> None:
    if not is_sha256_ref(value):
        raise DecisionError(field, "must be 'sha256:' followed by 64 lowercase hex digits")


def _check_unit_float(field: str, value: object, *, optional: bool = False) -> None:
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise DecisionError(field, f"must be a number, got {type(value).__name__}")
    if not math.isfinite(value) or not 0.0 <= value <= 1.0:
        raise DecisionError(field, f"must be a finite number in [0, 1], got {value!r}")


def _check_finite(field: str, value: object, *, optional: bool = False) -> None:
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise DecisionError(field, f"must be a number, got {type(value).__name__}")
    if not math.isfinite(value):
        raise DecisionError(field, f"must be finite, got {value!r}")


def _check_short_text(field: str, value: object, *, optional: bool = False) -> None:
    if value is None and optional:
        return
    if not isinstance(value, str):
        raise DecisionError(field, f"must be a string, got {type(value).__name__}")
    if len(value) > _SHORT_TEXT_MAX:
        raise DecisionError(field, f"at most {_SHORT_TEXT_MAX} characters, got {len(value)}")


def _check_bool(field: str, value: object) -> None:
    if not isinstance(value, bool):
        raise DecisionError(field, f"must be a boolean, got {type(value).__name__}")


def _check_choice(field: str, value: object, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise DecisionError(field, f"must be one of {', '.join(choices)}; got {value!r}")


@dataclass(frozen=True, slots=True)
class DecisionMetric:
    """One metric score (seed MetricScore, plus ``max_threshold`` for upper-bounded metrics)."""

    name: str
    value: float
    threshold: float | None
    passed: bool
    framework: str = "certus"
    error: str | None = None
    max_threshold: float | None = None

    def __post_init__(self) -> None:
        _check_short_text("name", self.name)
        if not self.name:
            raise DecisionError("name", "must not be empty")
        _check_finite("value", self.value)
        _check_finite("threshold", self.threshold, optional=True)
        _check_bool("passed", self.passed)
        _check_short_text("framework", self.framework)
        _check_short_text("error", self.error, optional=True)
        _check_finite("max_threshold", self.max_threshold, optional=True)

    def to_payload(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "value": float(self.value),
            "threshold": None if self.threshold is None else float(self.threshold),
            "max_threshold": None if self.max_threshold is None else float(self.max_threshold),
            "passed": self.passed,
            "framework": self.framework,
            "error": self.error,
        }


@dataclass(frozen=True, slots=True)
class DecisionViolation:
    """One guardrail violation: type, severity, confidence, hash and location of the span."""

    guardrail_type: str
    severity: str
    confidence: float
    content_hash: str
    location: str
    remediation: str = ""
    detector: str = ""
    source: str = "response"
    blocking: bool = False

    def __post_init__(self) -> None:
        _check_choice("guardrail_type", self.guardrail_type, GUARDRAIL_TYPES)
        _check_choice("severity", self.severity, SEVERITIES)
        _check_unit_float("confidence", self.confidence)
        _check_hash("content_hash", self.content_hash)
        if not isinstance(self.location, str) or not _LOCATION_RE.match(self.location):
            raise DecisionError("location", f"must look like 'char 12-30', got {self.location!r}")
        _check_short_text("remediation", self.remediation)
        _check_short_text("detector", self.detector)
        _check_short_text("source", self.source)
        _check_bool("blocking", self.blocking)

    def to_payload(self) -> dict[str, Any]:
        return {
            "guardrail_type": self.guardrail_type,
            "severity": self.severity,
            "confidence": float(self.confidence),
            "content_hash": self.content_hash,
            "location": self.location,
            "remediation": self.remediation,
            "detector": self.detector,
            "source": self.source,
            "blocking": self.blocking,
        }


@dataclass(frozen=True, slots=True)
class IntegrityDecision:
    decision_id: str
    workspace_id: str
    decision_type: str  # evaluation | guardrail | combined
    query_hash: str
    response_hash: str
    context_hashes: tuple[str, ...]
    metrics: tuple[DecisionMetric, ...]
    guardrail_violations: tuple[DecisionViolation, ...]
    outcome: str  # pass | fail | warning | skipped
    overall_score: float | None
    manifest_uri: str  # "" only when no manifest applied (e.g. mode disabled before resolution)
    mode: str  # shadow | enforce | async | disabled
    timestamp: str  # RFC 3339 UTC
    processing_time_ms: int
    skipped: bool = False
    skip_reason: str = ""
    blocked: bool = False
    # chain fields, set by the evidence log at append
    seq: int | None = None
    prev_hash: str | None = None
    key_id: str | None = None

    def __post_init__(self) -> None:
        _check_short_text("decision_id", self.decision_id)
        if not self.decision_id:
            raise DecisionError("decision_id", "must not be empty")
        if not isinstance(self.workspace_id, str) or not WORKSPACE_RE.fullmatch(self.workspace_id):
            raise DecisionError("workspace_id", "must match ^[a-zA-Z0-9_-]{1,255}$")
        _check_choice("decision_type", self.decision_type, DECISION_TYPES)
        _check_hash("query_hash", self.query_hash)
        _check_hash("response_hash", self.response_hash)
        if not isinstance(self.context_hashes, tuple):
            raise DecisionError("context_hashes", "must be a tuple of hashes")
        if len(self.context_hashes) > MAX_CONTEXT_HASHES:
            raise DecisionError("context_hashes", f"at most {MAX_CONTEXT_HASHES}, got {len(self.context_hashes)}")
        for i, h in enumerate(self.context_hashes):
            _check_hash(f"context_hashes[{i}]", h)
        if not isinstance(self.metrics, tuple) or not all(isinstance(m, DecisionMetric) for m in self.metrics):
            raise DecisionError("metrics", "must be a tuple of DecisionMetric")
        if not isinstance(self.guardrail_violations, tuple) or not all(
            isinstance(v, DecisionViolation) for v in self.guardrail_violations
        ):
            raise DecisionError("guardrail_violations", "must be a tuple of DecisionViolation")
        _check_choice("outcome", self.outcome, OUTCOMES)
        _check_unit_float("overall_score", self.overall_score, optional=True)
        if not isinstance(self.manifest_uri, str) or (self.manifest_uri and not MANIFEST_URI_RE.fullmatch(self.manifest_uri)):
            raise DecisionError(
                "manifest_uri", "must be empty or match ^certus://manifests/[a-zA-Z0-9_-]+/[a-zA-Z0-9_.-]+$"
            )
        _check_choice("mode", self.mode, MODES)
        if not isinstance(self.timestamp, str) or not _TIMESTAMP_RE.match(self.timestamp):
            raise DecisionError("timestamp", f"must be RFC 3339 UTC like 2025-01-31T12:00:00.000000Z, got {self.timestamp!r}")
        if isinstance(self.processing_time_ms, bool) or not isinstance(self.processing_time_ms, int):
            raise DecisionError("processing_time_ms", "must be an integer")
        if self.processing_time_ms < 0:
            raise DecisionError("processing_time_ms", f"must be >= 0, got {self.processing_time_ms}")
        _check_bool("skipped", self.skipped)
        _check_short_text("skip_reason", self.skip_reason)
        _check_bool("blocked", self.blocked)
        if self.seq is not None and (isinstance(self.seq, bool) or not isinstance(self.seq, int) or self.seq < 0):
            raise DecisionError("seq", f"must be a non-negative integer, got {self.seq!r}")
        if self.prev_hash is not None:
            _check_hash("prev_hash", self.prev_hash)
        if self.key_id is not None and (not isinstance(self.key_id, str) or not _KEY_ID_RE.match(self.key_id)):
            raise DecisionError("key_id", f"must look like ed25519:<16 hex>, got {self.key_id!r}")

    # -- construction -------------------------------------------------------------------------

    @classmethod
    def from_result(
        cls,
        inp: EvaluateInput,
        result: EvaluationResult,
        *,
        decision_type: str | None = None,
        timestamp: str | None = None,
    ) -> "IntegrityDecision":
        """The decision for one answered evaluation: the input is reduced to hashes here.

        ``decision_type`` defaults to ``combined`` when metrics were scored (guardrails run with
        them in this sidecar), ``guardrail`` when only violations are present and ``evaluation``
        when nothing was scored (skipped); the pipeline may pass it explicitly.
        """
        if decision_type is None:
            if result.metrics:
                decision_type = "combined"
            elif result.violations:
                decision_type = "guardrail"
            else:
                decision_type = "evaluation"
        metrics = tuple(
            DecisionMetric(
                name=m.name,
                value=float(m.value),
                threshold=None if m.threshold is None else float(m.threshold),
                passed=bool(m.passed),
                framework=m.framework,
                error=m.error,
                max_threshold=None if m.max_threshold is None else float(m.max_threshold),
            )
            for m in result.metrics
        )
        violations = tuple(
            DecisionViolation(
                guardrail_type=GuardrailType(v.guardrail_type).value,
                severity=Severity(v.severity).value,
                confidence=float(v.confidence),
                content_hash=v.content_hash,
                location=v.location,
                remediation=v.remediation,
                detector=v.detector,
                source=v.source,
                blocking=bool(v.blocking),
            )
            for v in result.violations
        )
        return cls(
            decision_id=result.evaluation_id,
            workspace_id=result.workspace_id or inp.workspace_id,
            decision_type=decision_type,
            query_hash=content_hash(inp.query),
            response_hash=content_hash(inp.response),
            context_hashes=tuple(content_hash(c) for c in inp.context),
            metrics=metrics,
            guardrail_violations=violations,
            outcome=Outcome(result.outcome).value,
            overall_score=None if result.overall_score is None else float(result.overall_score),
            manifest_uri=result.manifest_uri,
            mode=Mode(result.mode).value,
            timestamp=timestamp or utc_timestamp(),
            processing_time_ms=(max(0, int(result.processing_time_us)) + 500) // 1000,
            skipped=bool(result.skipped),
            skip_reason=result.skip_reason,
            blocked=bool(result.blocked),
        )

    def with_chain(self, seq: int, prev_hash: str, key_id: str) -> "IntegrityDecision":
        return dataclasses.replace(self, seq=seq, prev_hash=prev_hash, key_id=key_id)

    # -- serialisation ------------------------------------------------------------------------

    def to_payload(self) -> dict[str, Any]:
        """Plain JSON-ready dict (the signed payload is ``canonical_json`` of this)."""
        return {
            "decision_id": self.decision_id,
            "workspace_id": self.workspace_id,
            "decision_type": self.decision_type,
            "query_hash": self.query_hash,
            "response_hash": self.response_hash,
            "context_hashes": list(self.context_hashes),
            "metrics": [m.to_payload() for m in self.metrics],
            "guardrail_violations": [v.to_payload() for v in self.guardrail_violations],
            "outcome": self.outcome,
            "overall_score": None if self.overall_score is None else float(self.overall_score),
            "manifest_uri": self.manifest_uri,
            "mode": self.mode,
            "timestamp": self.timestamp,
            "processing_time_ms": self.processing_time_ms,
            "skipped": self.skipped,
            "skip_reason": self.skip_reason,
            "blocked": self.blocked,
            "seq": self.seq,
            "prev_hash": self.prev_hash,
            "key_id": self.key_id,
        }

    @classmethod
    def from_payload(cls, d: Mapping[str, Any]) -> "IntegrityDecision":
        """Parse and validate a payload dict; :class:`DecisionError` names the first bad field."""
        if not isinstance(d, Mapping):
            raise DecisionError("payload", "must be a JSON object")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise DecisionError(unknown[0], "unknown field")
        required = (
            "decision_id",
            "workspace_id",
            "decision_type",
            "query_hash",
            "response_hash",
            "context_hashes",
            "outcome",
            "manifest_uri",
            "mode",
            "timestamp",
            "processing_time_ms",
        )
        for name in required:
            if name not in d:
                raise DecisionError(name, "missing")
        ctx = d["context_hashes"]
        if not isinstance(ctx, list):
            raise DecisionError("context_hashes", "must be a list")
        raw_metrics = d.get("metrics", [])
        if not isinstance(raw_metrics, list):
            raise DecisionError("metrics", "must be a list")
        raw_violations = d.get("guardrail_violations", [])
        if not isinstance(raw_violations, list):
            raise DecisionError("guardrail_violations", "must be a list")
        metrics = tuple(_sub(DecisionMetric, f"metrics[{i}]", m) for i, m in enumerate(raw_metrics))
        violations = tuple(_sub(DecisionViolation, f"guardrail_violations[{i}]", v) for i, v in enumerate(raw_violations))
        kw = {k: d[k] for k in known if k in d and k not in ("context_hashes", "metrics", "guardrail_violations")}
        return cls(context_hashes=tuple(ctx), metrics=metrics, guardrail_violations=violations, **kw)


def _sub(kind: type[Any], prefix: str, raw: object) -> Any:
    if not isinstance(raw, Mapping):
        raise DecisionError(prefix, "must be a JSON object")
    known = {f.name for f in dataclasses.fields(kind)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise DecisionError(f"{prefix}.{unknown[0]}", "unknown field")
    try:
        return kind(**raw)
    except DecisionError as exc:
        raise DecisionError(f"{prefix}.{exc.field}", exc.description) from exc
    except TypeError as exc:  # a required field is missing
        raise DecisionError(prefix, str(exc)) from exc
