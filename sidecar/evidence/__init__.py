"""Evidence: IntegrityDecision, the signed hash-chained local log, and its verifier."""

from __future__ import annotations

from sidecar.evidence.decision import GENESIS_PREV_HASH, DecisionError, DecisionMetric, DecisionViolation, IntegrityDecision
from sidecar.evidence.log import EvidenceLog, EvidenceLogCorrupt, EvidenceLogError, EvidenceWriteError
from sidecar.evidence.records import LogRecord
from sidecar.evidence.verify import BadRecord, VerifyReport, verify_log

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
