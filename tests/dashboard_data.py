"""Signed decisions of many kinds, spread over days, for the dashboard's tests and benchmark.

Real records: each goes through the evidence log (Ed25519 signature, hash chain); only the scores,
outcomes, workspaces and timestamps are drawn from a seeded generator instead of coming from
evaluations, so a million of them can be written in minutes.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

from certus.sidecar.config import EvidenceConfig
from certus.sidecar.evidence.decision import DecisionMetric, DecisionViolation, IntegrityDecision, utc_timestamp
from certus.sidecar.evidence.log import EvidenceLog
from certus.sidecar.signing import SigningKey

METRICS = ("semantic_similarity", "term_grounding", "faithfulness", "answer_relevancy")
WORKSPACES = ("acme", "globex", "initech")
START = datetime(2026, 9, 1, tzinfo=timezone.utc)


def _h(tag: str) -> str:
    return "sha256:" + hashlib.sha256(tag.encode()).hexdigest()


def synthetic_decision(i: int, rng: random.Random, days: int = 90, n: int = 1) -> IntegrityDecision:
    ws = WORKSPACES[i % len(WORKSPACES)]
    version = "2026-09" if i < n // 2 else "2026-10"
    when = START + timedelta(seconds=days * 86_400 * i / max(1, n))
    r = rng.random()
    if r < 0.04:
        outcome, reason, metrics = "skipped", rng.choice(("overloaded", "timeout")), ()
    else:
        values = [min(1.0, max(0.0, rng.gauss(0.86, 0.08))) for _ in METRICS]
        metrics = tuple(DecisionMetric(m, v, 0.7, v >= 0.7) for m, v in zip(METRICS, values))
        outcome, reason = ("pass" if all(m.passed for m in metrics) else "fail"), ""
    violations: tuple[DecisionViolation, ...] = ()
    if rng.random() < 0.06:
        violations = (DecisionViolation("pii", rng.choice(("high", "medium")), 0.9, _h(f"v{i}"), "char 10-24", "Redact", "EMAIL_ADDRESS"),)
    return IntegrityDecision(
        decision_id=str(uuid.UUID(int=rng.getrandbits(128))),
        workspace_id=ws,
        decision_type="combined" if metrics else "evaluation",
        query_hash=_h(f"q{i}"),
        response_hash=_h(f"r{i}"),
        context_hashes=tuple(_h(f"c{i}.{j}") for j in range(3)),
        metrics=metrics,
        guardrail_violations=violations,
        outcome=outcome,
        overall_score=None if not metrics else sum(m.value for m in metrics) / len(metrics),
        manifest_uri=f"certus://manifests/{ws}/{version}",
        mode="shadow",
        timestamp=utc_timestamp(when),
        processing_time_ms=rng.randint(5, 60),
        skipped=outcome == "skipped",
        skip_reason=reason,
    )


async def _write(log_dir: Path, key: SigningKey, n: int, seed: int, concurrency: int = 64) -> None:
    log = EvidenceLog.open(EvidenceConfig(log_dir=log_dir, fsync="never", checkpoint_interval_s=0), key)
    rng = random.Random(seed)
    decisions = [synthetic_decision(i, rng, n=n) for i in range(n)]
    nxt = 0

    async def worker() -> None:
        nonlocal nxt
        while nxt < len(decisions):
            d = decisions[nxt]
            nxt += 1
            await log.append(d)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    await log.close()


def write_synthetic_log(log_dir: Path, key: SigningKey, n: int, seed: int = 7) -> Path:
    """``n`` signed, chained decisions over 90 days in ``log_dir`` (appended in order of i only
    roughly: concurrent appends interleave, as in a running sidecar)."""
    asyncio.run(_write(log_dir, key, n, seed))
    return log_dir
