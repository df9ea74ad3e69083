"""The dashboard's evidence index against the log it follows: real signed records, rollups equal to
a direct recount, incremental passes equal to one pass, and no record indexed that does not verify."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import math
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from certus.sidecar.config import EvidenceConfig
from certus.sidecar.dashboard.index import BINS, EvidenceIndex, IndexInUse, bucket_of, day_label, day_of, percentile
from certus.sidecar.domain import Claim, EvaluationResult, Mode, Outcome
from certus.sidecar.evidence.log import EvidenceLog
from certus.sidecar.evidence.records import iter_log, list_segments
from certus.sidecar.signing import Envelope, SigningKey, canonical_json
from tests.dashboard_data import synthetic_decision, write_synthetic_log

KEY = SigningKey.generate()


@pytest.fixture(scope="module")
def log_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_synthetic_log(tmp_path_factory.mktemp("log") / "log", KEY, 1500, seed=3)


def recount(log: Path) -> tuple[Counter[str], dict[str, list[float]], Counter[tuple[str, str]], Counter[str]]:
    outcomes: Counter[str] = Counter()
    metrics: dict[str, list[float]] = {}
    violations: Counter[tuple[str, str]] = Counter()
    skips: Counter[str] = Counter()
    for rec in iter_log(log):
        d = rec.payload
        outcomes[d["outcome"]] += 1
        if d["skipped"]:
            skips[d["skip_reason"]] += 1
        for m in d["metrics"]:
            metrics.setdefault(m["name"], []).append(m["value"])
        for v in d["guardrail_violations"]:
            violations[(v["guardrail_type"], v["severity"])] += 1
    return outcomes, metrics, violations, skips


def test_rollups_equal_a_direct_recount_of_the_log(log_dir: Path, tmp_path: Path) -> None:
    idx = EvidenceIndex(log_dir, tmp_path / "i.sqlite", [KEY.verify_key])
    assert idx.catch_up() == 1500
    st = idx.status()
    records = list(iter_log(log_dir))
    assert st["records"] == 1500 and st["broken"] == "" and st["last_evidence_id"] == records[-1].evidence_id
    assert st["key_id"] == KEY.key_id and st["key_source"] == "given"
    outcomes, metrics, violations, skips = recount(log_dir)
    for unit in ("day", "week"):
        ov = idx.overview(unit=unit)
        assert ov.totals == dict(outcomes) and ov.skips == dict(skips)
        assert {(t, s): n for t, s, n in ov.violations} == dict(violations)
        assert sum(sum(c) for c in ov.outcome_counts.values()) == 1500
        for s in ov.metrics:
            values = np.asarray(metrics[s.name])
            assert s.total_count == values.size
            assert s.total_mean == pytest.approx(values.mean(), abs=1e-12)  # exact
            assert abs(s.total_p50 - np.quantile(values, 0.5, method="inverted_cdf")) <= 0.5 / BINS + 1e-12
        assert ov.buckets == sorted(ov.buckets)
    days = {day_of(r.payload["timestamp"])[1] for r in records}
    assert len(idx.overview(unit="day").buckets) == len(days)
    assert len(idx.overview(unit="week").buckets) == len({bucket_of(d, "week") for d in days})


def test_filters_and_workspace_scope(log_dir: Path, tmp_path: Path) -> None:
    idx = EvidenceIndex(log_dir, tmp_path / "i.sqlite", [KEY.verify_key])
    idx.catch_up()
    by_ws = Counter(r.payload["workspace_id"] for r in iter_log(log_dir))
    by_man = Counter(r.payload["manifest_uri"] for r in iter_log(log_dir))
    for ws, n in by_ws.items():
        assert idx.overview(workspace=ws).decisions == n
        assert idx.overview(workspaces={ws}).decisions == n
    man = next(iter(by_man))
    assert idx.overview(manifest=man).decisions == by_man[man]
    assert idx.overview(workspaces=set()).decisions == 0  # a token with no readable workspace sees nothing
    ws, ms = idx.dimensions({"acme"})
    assert ws == ["acme"] and all("/acme/" in m for m in ms)
    last_day = max(day_of(r.payload["timestamp"])[1] for r in iter_log(log_dir))
    recent = sum(1 for r in iter_log(log_dir) if day_of(r.payload["timestamp"])[1] >= last_day - 6)
    assert idx.overview(since_day=last_day - 6).decisions == recent


def test_incremental_passes_equal_one_pass_across_segments(tmp_path: Path) -> None:
    """Small segments and small batches: the cursor crosses segment files mid-pass and the rollups
    are summed over many upserts; the result equals indexing everything at once."""
    log = tmp_path / "log"

    async def write(n0: int, n: int) -> None:
        ev = EvidenceLog.open(EvidenceConfig(log_dir=log, fsync="never", segment_bytes=20_000, checkpoint_interval_s=0), KEY)
        import random

        rng = random.Random(n0)
        for i in range(n0, n0 + n):
            await ev.append(synthetic_decision(i, rng, n=400))
        await ev.close()

    asyncio.run(write(0, 150))
    step = EvidenceIndex(log, tmp_path / "step.sqlite", [KEY.verify_key], batch=7)
    assert step.catch_up(limit=40) == 40 and step.catch_up() == 110
    asyncio.run(write(150, 250))  # the log grows (and rolls segments) under the index
    assert len(list_segments(log)) > 3
    assert step.catch_up() == 250
    step.stop()
    reopened = EvidenceIndex(log, tmp_path / "step.sqlite", [KEY.verify_key])  # the cursor is durable
    assert reopened.catch_up() == 0 and reopened.status()["records"] == 400
    once = EvidenceIndex(log, tmp_path / "once.sqlite", [KEY.verify_key])
    assert once.catch_up() == 400
    a, b = reopened.overview(), once.overview()
    assert a.totals == b.totals and a.violations == b.violations and a.by_dimension == b.by_dimension
    for x, y in zip(a.metrics, b.metrics):
        assert (x.name, x.count, x.p50, x.p90) == (y.name, y.count, y.p50, y.p90)
        assert x.mean == pytest.approx(y.mean)
    last = list(iter_log(log))[-1]
    assert reopened.find(last.decision_id)["seq"] == 399 == reopened.find(last.evidence_id)["seq"]


def test_a_changed_record_stops_the_index_there(log_dir: Path, tmp_path: Path) -> None:
    log = tmp_path / "log"
    shutil.copytree(log_dir, log)
    seg = list_segments(log)[0][1]
    lines = seg.read_bytes().split(b"\n")
    env = Envelope.from_json(lines[700])
    payload = json.loads(env.payload)
    payload["outcome"] = "fail" if payload["outcome"] == "pass" else "pass"  # someone "fixes" a verdict
    lines[700] = dataclasses.replace(env, payload=canonical_json(payload)).to_json()
    seg.write_bytes(b"\n".join(lines))
    idx = EvidenceIndex(log, tmp_path / "i.sqlite", [KEY.verify_key])
    assert idx.catch_up() == 700
    st = idx.status()
    assert st["records"] == 700 and "line 701 (seq 700)" in st["broken"] and "signature" in st["broken"]
    assert idx.catch_up() == 0  # stays stopped
    assert idx.overview().decisions == 700


def test_a_key_that_is_not_trusted_indexes_nothing(log_dir: Path, tmp_path: Path) -> None:
    idx = EvidenceIndex(log_dir, tmp_path / "i.sqlite", [SigningKey.generate().verify_key])
    assert idx.catch_up() == 0
    assert "seq 0" in idx.status()["broken"] and idx.overview().decisions == 0


def test_a_replaced_log_rebuilds_the_index(tmp_path: Path) -> None:
    log = tmp_path / "log"
    write_synthetic_log(log, KEY, 50, seed=1)
    idx = EvidenceIndex(log, tmp_path / "i.sqlite", [KEY.verify_key])
    assert idx.catch_up() == 50
    shutil.rmtree(log)
    write_synthetic_log(log, KEY, 30, seed=2)  # another log, same place
    idx.catch_up()
    assert idx.status()["records"] == 30 and idx.overview().decisions == 30


def test_claims_are_kept_for_the_newest_evaluations_only(log_dir: Path, tmp_path: Path) -> None:
    idx = EvidenceIndex(log_dir, tmp_path / "i.sqlite", [KEY.verify_key], max_claims=10)
    records = list(iter_log(log_dir))
    for rec in records[:25]:
        claim = Claim(0, 40, 0.3, False, -1, 0.5, 0.2, 0.0, reason="no_support")
        idx.add_claims(EvaluationResult(rec.decision_id, "acme", Outcome.FAIL, False, Mode.SHADOW, "", claims=(claim,)))
    idx.catch_up()
    kept = [rec for rec in records[:25] if idx.find(rec.decision_id)["claims"] is not None]
    assert [r.decision_id for r in kept] == [r.decision_id for r in records[15:25]]
    assert idx.find(records[24].decision_id)["claims"][0] == {
        "start": 0, "end": 40, "support": 0.3, "supported": False, "chunk_index": -1, "chunk_start": 0, "chunk_end": 0,
        "semantic": 0.5, "grounding": 0.2, "numeric": 0.0, "reason": "no_support",
    }


def test_percentiles_and_buckets() -> None:
    h = np.zeros(BINS, dtype=np.int64)
    assert percentile(h, 0.5) is None
    h[[10, 20, 90]] = [1, 2, 1]
    assert percentile(h, 0.25) == pytest.approx(0.105) and percentile(h, 0.5) == pytest.approx(0.205)
    assert percentile(h, 1.0) == pytest.approx(0.905)
    monday = day_of("2026-11-30T10:00:00.000000Z")[1]  # a Monday
    assert day_label(bucket_of(monday + 6, "week")) == "2026-11-30" and bucket_of(monday + 7, "week") == monday + 7
    ts, day = day_of("2026-11-30T23:59:59.500000Z")
    assert day == monday and math.isclose(ts % 86400, 86399.5)


def test_one_writer_per_index(log_dir: Path, tmp_path: Path) -> None:
    """Two writers would each add the same records to the rollups: the second one is refused
    (another process in practice; the lock is per open file, so a second open here conflicts too)."""
    first = EvidenceIndex(log_dir, tmp_path / "i.sqlite", [KEY.verify_key])
    with pytest.raises(IndexInUse, match="in use by another dashboard"):
        EvidenceIndex(log_dir, tmp_path / "i.sqlite", [KEY.verify_key])
    first.stop()
    again = EvidenceIndex(log_dir, tmp_path / "i.sqlite", [KEY.verify_key])  # released at stop
    assert again.catch_up() == 1500
    again.stop()
