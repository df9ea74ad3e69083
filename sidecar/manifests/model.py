"""The evaluation manifest (seed §1.2 EvaluationManifest) as frozen dataclasses.

A manifest decides what "pass" means for one workspace: per-metric thresholds and weights, the
guardrail policy, the default mode and the evaluation timeout. Parsing and validation live in
:mod:`sidecar.manifests.schema`; the directory-backed store in :mod:`sidecar.manifests.store`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime
from types import MappingProxyType
from typing import Mapping

from certus.sidecar.domain import GuardrailConfig, GuardrailType, Mode, Severity
from certus.sidecar.validation import MANIFEST_URI_RE, WORKSPACE_RE

MANIFEST_ID_RE = re.compile(r"manifest_[a-zA-Z0-9_-]+")
VERSION_RE = re.compile(r"([0-9]{4})-([0-9]{2})")
URI_PREFIX = "certus://manifests/"
LATEST = "latest"

# The metric names the scoring stage produces; a threshold for any other name is an error.
METRIC_NAMES: frozenset[str] = frozenset(
    {
        "semantic_similarity",
        "grounding",
        "numeric_consistency",
        "confidence",
        "faithfulness",
        "answer_relevancy",
        "context_relevance",
        "question_fit",
        "context_precision",
        "context_recall",
    }
)

# Manifest modes: the seed's three plus ``async`` (DESIGN lists it among the manifest's modes).
MANIFEST_MODES: tuple[Mode, ...] = (Mode.SHADOW, Mode.ENFORCE, Mode.ASYNC, Mode.DISABLED)

TIMEOUT_MIN_MS = 100
TIMEOUT_MAX_MS = 30_000
DEFAULT_MIN_OVERALL_SCORE = 0.7
DEFAULT_TIMEOUT_MS = 2000


def manifest_uri(workspace_id: str, version: str) -> str:
    return f"{URI_PREFIX}{workspace_id}/{version}"


def seed_guardrail_defaults() -> dict[GuardrailType, GuardrailConfig]:
    """The seed's per-type guardrail policy, used for every type a manifest does not name."""
    return {
        GuardrailType.PII: GuardrailConfig(enabled=True, block_on_violation=True, severity_threshold=Severity.HIGH),
        GuardrailType.PROMPT_INJECTION: GuardrailConfig(
            enabled=True, block_on_violation=True, severity_threshold=Severity.HIGH
        ),
        GuardrailType.CODE_SAFETY: GuardrailConfig(
            enabled=True, block_on_violation=False, severity_threshold=Severity.MEDIUM
        ),
        GuardrailType.DATA_EXFILTRATION: GuardrailConfig(
            enabled=True, block_on_violation=True, severity_threshold=Severity.HIGH
        ),
        GuardrailType.JAILBREAK: GuardrailConfig(enabled=True, block_on_violation=True, severity_threshold=Severity.HIGH),
        GuardrailType.VULN_HALLUCINATION: GuardrailConfig(
            enabled=False, block_on_violation=False, severity_threshold=Severity.MEDIUM
        ),
    }


@dataclass(frozen=True, slots=True)
class ThresholdConfig:
    """Bounds for one metric. A metric passes when ``min_score <= value <= max_score`` (unset = open)."""

    min_score: float | None = None
    max_score: float | None = None
    weight: float = 1.0  # share in the weighted overall score
    required: bool = True  # a failure of a required metric fails the evaluation (and blocks in enforce)

    def passes(self, value: float) -> bool:
        if self.min_score is not None and not value >= self.min_score:
            return False
        if self.max_score is not None and not value <= self.max_score:
            return False
        return True


@dataclass(frozen=True)
class Manifest:
    """One validated manifest. Immutable; mappings are read-only views."""

    manifest_id: str
    manifest_uri: str
    workspace_id: str
    version: str
    signed_by: str
    created_at: datetime | None = None
    default_mode: Mode = Mode.SHADOW
    thresholds: Mapping[str, ThresholdConfig] = field(default_factory=lambda: MappingProxyType({}))
    guardrails: Mapping[GuardrailType, GuardrailConfig] = field(
        default_factory=lambda: MappingProxyType(seed_guardrail_defaults())
    )
    require_all_metrics_pass: bool = False
    min_overall_score: float | None = DEFAULT_MIN_OVERALL_SCORE
    timeout_ms: int = DEFAULT_TIMEOUT_MS
    log_full_content: bool = False
    mlflow_experiment_name: str | None = None  # accepted for seed compatibility; unused
    # Where it came from (not part of the document):
    source: str = ""  # file path relative to the manifest dir, or "embedded:<file>"
    digest: str = ""  # sha256:<hex> of the canonical JSON of the document
    signer_key_id: str | None = None  # key id of the verified DSSE signature, when signed and checked

    def __post_init__(self) -> None:
        if not isinstance(self.thresholds, MappingProxyType):
            object.__setattr__(self, "thresholds", MappingProxyType(dict(self.thresholds)))
        if not isinstance(self.guardrails, MappingProxyType):
            object.__setattr__(self, "guardrails", MappingProxyType(dict(self.guardrails)))

    def guardrail(self, kind: GuardrailType) -> GuardrailConfig:
        cfg = self.guardrails.get(kind)
        return cfg if cfg is not None else seed_guardrail_defaults()[kind]
