"""Evidence: IntegrityDecision, the signed hash-chained local log, and its verifier."""

from __future__ import annotations

from certus.sidecar.evidence.decision import (
    GENESIS_PREV_HASH,
    DecisionError,
    DecisionMetric,
    DecisionViolation,
    IntegrityDecision,
)
from certus.sidecar.evidence.log import EvidenceLog, EvidenceLogCorrupt, EvidenceLogError, EvidenceWriteError
from certus.sidecar.evidence.records import LogRecord
from certus.sidecar.evidence.verify import BadRecord, VerifyReport, verify_log

__all__ = [
    "GENESIS_PREV_HASH",
    "BadRecord",
    "DecisionError",
    "DecisionMetric",
    "DecisionViolation",
    "EvidenceLog",
    "EvidenceLogCorrupt",
    "EvidenceLogError",
    "EvidenceWriteError",
    "IntegrityDecision",
    "LogRecord",
    "VerifyReport",
    "verify_log",
]
