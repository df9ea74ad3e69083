"""Fixtures for the toolkit tests: real configs, real signed evidence logs, real data files."""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from certus.sidecar import config as config_mod
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
from certus.sidecar.evidence.decision import IntegrityDecision, utc_timestamp
from certus.sidecar.evidence.log import EvidenceLog
from certus.sidecar.signing import SigningKey

ROOT = Path(__file__).resolve().parents[3]
SHARED_DATA = ROOT.parent / "shared" / "data"

# Texts that must never appear in a report or a results file (only their hashes may).
SECRET_QUERY = "What is the refund window for order 4711?"
SECRET_RESPONSE = "Refunds are accepted within 30 days. Write to alice@example.com for help."
SECRET_CONTEXT = "Our policy: refunds within 30 days of purchase."


def data_file(*parts: str) -> Path:
    p = SHARED_DATA.joinpath(*parts)
    if not p.exists():
        pytest.skip(f"shared data not found at {p} (expected ../shared/data beside the project)")
    return p


@pytest.fixture
def cfg(tmp_path: Path) -> config_mod.Config:
    return config_mod.load(
        env={},
        overrides={
            "model": {"intra_op_threads": 1},
            "evidence": {"log_dir": tmp_path / "evidence", "key_path": tmp_path / "keys" / "signing.key", "fsync": "never"},
        },
    )


def decision(i: int, when: datetime, outcome: Outcome, *, score: float, pii: bool = False, blocked: bool = False,
             skipped: str = "") -> IntegrityDecision:
    inp = EvaluateInput("acme", f"{SECRET_QUERY} #{i}", SECRET_RESPONSE, (SECRET_CONTEXT,))
    violations = ()
    if pii:
        at = SECRET_RESPONSE.index("alice@example.com")
        violations = (
            GuardrailViolation(GuardrailType.PII, Severity.HIGH, 0.95, content_hash("alice@example.com"), at,
                               at + 17, "response", "EMAIL_ADDRESS", "Redact detected email address", blocked),
        )
    metrics = () if skipped else (
        MetricScore("confidence", score, 0.7, score >= 0.7),
        MetricScore("faithfulness", min(1.0, score + 0.1), 0.7, score + 0.1 >= 0.7),
    )
    result = EvaluationResult(
        evaluation_id=str(uuid.UUID(int=i + 1)),
        workspace_id="acme",
        outcome=Outcome.SKIPPED if skipped else outcome,
        passed=outcome in (Outcome.PASS, Outcome.WARNING) and not skipped,
        mode=Mode.ENFORCE if blocked else Mode.SHADOW,
        manifest_uri="certus://manifests/acme/2025-01",
        metrics=metrics,
        overall_score=None if skipped else score,
        violations=violations,
        blocked=blocked,
        skipped=bool(skipped),
        skip_reason=skipped,
        processing_time_us=1000 * (10 + i),
    )
    return IntegrityDecision.from_result(inp, result, timestamp=utc_timestamp(when))


def write_log(log_dir: Path, key: SigningKey, decisions: list[IntegrityDecision]) -> None:
    cfg = config_mod.EvidenceConfig(log_dir=log_dir, key_path=log_dir / "unused.key", fsync="never")

    async def run() -> None:
        log = EvidenceLog.open(cfg, key)
        try:
            for d in decisions:
                await log.append(d)
        finally:
            await log.close()

    asyncio.run(run())


def sample_decisions(n_days: int = 4, per_day: int = 6) -> list[IntegrityDecision]:
    start = datetime(2025, 3, 1, 9, 0, tzinfo=timezone.utc)
    out = []
    i = 0
    for day in range(n_days):
        for k in range(per_day):
            when = start + timedelta(days=day, minutes=10 * k)
            score = 0.45 + 0.08 * k + 0.02 * day
            outcome = Outcome.PASS if score >= 0.7 else Outcome.FAIL
            out.append(decision(i, when, outcome, score=round(score, 4), pii=(k == 5), blocked=(k == 5 and day == 1),
                                skipped="evaluator_timeout" if (k == 0 and day == 2) else ""))
            i += 1
    return out


@pytest.fixture(scope="session")
def signed_log(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, SigningKey]:
    d = tmp_path_factory.mktemp("evidence")
    key = SigningKey(bytes(range(32)))
    write_log(d / "log", key, sample_decisions())
    key.write(d / "signing.key")  # and signing.key.pub, the trusted public key
    return d / "log", key


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path
