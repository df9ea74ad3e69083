"""Real decisions, a real log and bounded waiting for the forwarder tests."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

from certus.sidecar.config import EvidenceConfig, ForwarderConfig
from certus.sidecar.domain import content_hash
from certus.sidecar.evidence.decision import DecisionMetric, IntegrityDecision, utc_timestamp
from certus.sidecar.evidence.log import EvidenceLog
from certus.sidecar.signing import SigningKey

SEED = bytes(range(100, 132))


def decision(i: int) -> IntegrityDecision:
    return IntegrityDecision(
        decision_id=str(uuid.uuid4()),
        workspace_id="acme",
        decision_type="combined",
        query_hash=content_hash(f"query {i}"),
        response_hash=content_hash(f"response {i}"),
        context_hashes=(content_hash(f"context {i}"),),
        metrics=(DecisionMetric("faithfulness", 0.9, 0.7, True),),
        guardrail_violations=(),
        outcome="pass",
        overall_score=0.9,
        manifest_uri="certus://manifests/acme/2025-01",
        mode="shadow",
        timestamp=utc_timestamp(),
        processing_time_ms=4,
    )


def evidence_cfg(tmp: Path) -> EvidenceConfig:
    return EvidenceConfig(log_dir=tmp / "evidence", fsync="group", group_commit_max_wait_ms=0.0)


def forwarder_cfg(tmp: Path, **kw: object) -> ForwarderConfig:
    base: dict[str, object] = {
        "sink": "file",
        "file_path": tmp / "integrity" / "decisions.jsonl",
        "outbox_dir": tmp / "outbox",
        "batch_size": 10,
        "timeout_s": 2.0,
        "failure_threshold": 3,
        "recovery_timeout_s": 0.2,
        "backoff_initial_s": 0.01,
        "backoff_max_s": 0.05,
    }
    base.update(kw)
    return ForwarderConfig(**base)  # type: ignore[arg-type]


async def append_many(log: EvidenceLog, n: int, start: int = 0) -> list[tuple[str, str]]:
    """Append ``n`` decisions concurrently; ``(decision_id, evidence_id)`` of each."""
    decs = [decision(start + i) for i in range(n)]
    results = await asyncio.gather(*(log.append(d) for d in decs))
    return [(d.decision_id, eid) for d, (eid, _) in zip(decs, results)]


def key() -> SigningKey:
    return SigningKey(SEED)
