"""Domain types shared by the pipeline stages. Plain frozen dataclasses; no protobuf here.

Conversion to/from protobuf lives in ``certus.sidecar.server.convert`` (the server's side of the boundary).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from enum import Enum


class Mode(str, Enum):
    SHADOW = "shadow"
    ENFORCE = "enforce"
    ASYNC = "async"
    DISABLED = "disabled"


class Outcome(str, Enum):
    PASS = "pass"
    FAIL = "fail"
    WARNING = "warning"
    SKIPPED = "skipped"


class GuardrailType(str, Enum):
    PII = "pii"
    PROMPT_INJECTION = "prompt_injection"
    CODE_SAFETY = "code_safety"
    DATA_EXFILTRATION = "data_exfiltration"
    JAILBREAK = "jailbreak"
    VULN_HALLUCINATION = "vuln_hallucination"


class Severity(str, Enum):
    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"
    CRITICAL = "critical"

    @property
    def rank(self) -> int:
        return _SEVERITY_RANK[self]


_SEVERITY_RANK = {Severity.LOW: 1, Severity.MEDIUM: 2, Severity.HIGH: 3, Severity.CRITICAL: 4}


class SkipReason(str, Enum):
    EVALUATOR_TIMEOUT = "evaluator_timeout"
    EVALUATOR_ERROR = "evaluator_error"
    OVERLOADED = "overloaded"
    MODE_DISABLED = "mode_disabled"


def content_hash(text: str) -> str:
    """``sha256:<64 hex>`` of the UTF-8 text: the only form content takes outside the process."""
    return "sha256:" + hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


@dataclass(frozen=True, slots=True)
class EvaluateInput:
    """A validated Evaluate request."""

    workspace_id: str
    query: str
    response: str
    context: tuple[str, ...]
    manifest_uri: str = ""  # empty: the workspace's latest manifest (or the embedded default)
    mode: Mode | None = None  # None: the manifest's default_mode
    timeout_ms: int | None = None
    trace_id: str = ""
    parent_span_id: str = ""
    request_id: str = ""
    reference: str = ""  # optional reference answer (context_recall)


@dataclass(frozen=True, slots=True)
class MetricScore:
    name: str
    value: float
    threshold: float | None = None  # min_score
    passed: bool = True
    framework: str = "certus"
    error: str | None = None
    max_threshold: float | None = None


@dataclass(frozen=True, slots=True)
class Claim:
    """One response sentence and its support in the context; offsets only, never text."""

    start: int
    end: int
    support: float
    supported: bool
    chunk_index: int  # -1 when no chunk supports it
    semantic: float
    grounding: float
    numeric: float
    chunk_start: int = 0  # the supporting sentence's char offsets in the chunk (0, 0 when unsupported)
    chunk_end: int = 0
    reason: str = ""  # why an unsupported claim fails: number_contradicted, missing_entity, no_support


@dataclass(frozen=True, slots=True)
class GuardrailViolation:
    guardrail_type: GuardrailType
    severity: Severity
    confidence: float
    content_hash: str
    start: int
    end: int
    source: str  # "response", "query" or "context[i]"
    detector: str
    remediation: str = ""
    blocking: bool = False  # set by policy

    @property
    def location(self) -> str:
        return f"char {self.start}-{self.end}"


@dataclass(frozen=True, slots=True)
class Scores:
    """What the scoring stage computes for one request (before policy)."""

    values: dict[str, float]  # metric name -> value in [0, 1]
    claims: tuple[Claim, ...] = ()


@dataclass(frozen=True, slots=True)
class Verdict:
    """What the policy stage decides."""

    outcome: Outcome
    passed: bool
    blocked: bool
    block_reasons: tuple[str, ...]
    metrics: tuple[MetricScore, ...]
    overall_score: float | None
    violations: tuple[GuardrailViolation, ...]


@dataclass(frozen=True, slots=True)
class EvaluationResult:
    """The answer to one Evaluate call."""

    evaluation_id: str
    workspace_id: str
    outcome: Outcome
    passed: bool
    mode: Mode
    manifest_uri: str
    metrics: tuple[MetricScore, ...] = ()
    overall_score: float | None = None
    violations: tuple[GuardrailViolation, ...] = ()
    claims: tuple[Claim, ...] = ()
    blocked: bool = False
    block_reasons: tuple[str, ...] = ()
    skipped: bool = False
    skip_reason: str = ""
    processing_time_us: int = 0
    evidence_id: str = ""
    trace_id: str = ""
    request_id: str = ""
    pending: bool = False  # async mode: accepted, result to be fetched with GetEvaluation
    extra: dict[str, str] = field(default_factory=dict)


# Entity types the PII guardrail can report (a manifest's ``entities`` picks from these; severities
# and remediations are in certus.sidecar.guardrails.pii.ENTITY_POLICY).
PII_ENTITY_TYPES = (
    "CREDIT_CARD", "US_SSN", "IBAN_CODE", "EMAIL_ADDRESS", "PHONE_NUMBER", "IP_ADDRESS", "STREET_ADDRESS",
    "PERSON", "LOCATION", "DATE_TIME", "DATE_OF_BIRTH", "ORGANIZATION",
)


@dataclass(frozen=True, slots=True)
class GuardrailConfig:
    """Per-guardrail policy of a manifest (seed §1.2 GuardrailConfig, plus two scan options)."""

    enabled: bool = True
    block_on_violation: bool = False  # in enforce mode, a violation at/above the thresholds blocks
    severity_threshold: Severity = Severity.MEDIUM  # violations below this severity are dropped
    confidence_threshold: float = 0.7  # violations below this confidence are dropped
    scan_query: bool = False  # PII: also scan the user query
    allow_from_context: bool = False  # PII: a span quoted verbatim from the context is not a violation
    entities: tuple[str, ...] | None = None  # PII: the entity types to report (None: the guardrail's default set)
