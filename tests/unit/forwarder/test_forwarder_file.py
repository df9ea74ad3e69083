"""The forwarder with the embedded file sink over a real evidence log: order, cursor durability,
resume after restart, re-delivery deduplicated, replaced log noticed, draining on stop."""

from __future__ import annotations

import asyncio
import hashlib
import json
from pathlib import Path

from forwarder_samples import append_many, evidence_cfg, forwarder_cfg, key

from certus.sidecar.evidence.log import EvidenceLog
from certus.sidecar.evidence.verify import verify_log
from certus.sidecar.forwarder import Forwarder
from tests.conftest import wait_until_async


def sink_lines(tmp: Path) -> list[bytes]:
    path = tmp / "integrity" / "decisions.jsonl"
    return path.read_bytes().splitlines() if path.exists() else []


def log_lines(tmp: Path) -> list[bytes]:
    out: list[bytes] = []
    for seg in sorted((tmp / "evidence").glob("segment-*.jsonl")):
        out += seg.read_bytes().splitlines()
    return out


def cursor(tmp: Path) -> dict[str, object]:
    d: dict[str, object] = json.loads((tmp / "outbox" / "cursor.json").read_text())
    return d


def test_file_sink_receives_the_log_in_order_and_the_cursor_is_persisted(tmp_path: Path) -> None:
    async def run() -> dict[str, object]:
        log = EvidenceLog.open(evidence_cfg(tmp_path), key())
        fwd = Forwarder(forwarder_cfg(tmp_path, batch_size=7), log)
        await fwd.start()
        await append_many(log, 40)
        await wait_until_async(lambda: fwd.backlog == 0, "backlog drained", timeout_s=20)
        stats = fwd.stats()
        await fwd.stop()
        await log.close()
        return stats

    stats = asyncio.run(run())
    assert sink_lines(tmp_path) == log_lines(tmp_path)
    last = log_lines(tmp_path)[-1]
    assert cursor(tmp_path) == {"delivered_seq": 39, "evidence_id": "sha256:" + hashlib.sha256(last).hexdigest(), "checkpoint_size": 0}
    assert stats["sink"] == "file" and stats["backlog"] == 0 and stats["delivered"] == 40
    assert stats["duplicates"] == 0 and stats["dead_letters"] == 0 and stats["breaker_state"] == "closed"
    assert stats["delivered_seq"] == 39 and stats["last_seq"] == 39
    # the sink file is itself a verifiable copy of the chain
    copy = tmp_path / "copy"
    copy.mkdir()
    (copy / "segment-000001.jsonl").write_bytes((tmp_path / "integrity" / "decisions.jsonl").read_bytes())
    assert verify_log(copy, key().verify_key).ok


def test_restart_resumes_from_the_cursor(tmp_path: Path) -> None:
    async def first_run() -> None:
        log = EvidenceLog.open(evidence_cfg(tmp_path), key())
        fwd = Forwarder(forwarder_cfg(tmp_path), log)
        await fwd.start()
        await append_many(log, 30)
        await wait_until_async(lambda: fwd.backlog == 0, "first backlog drained", timeout_s=20)
        await fwd.stop()
        await append_many(log, 15, start=30)  # written while no forwarder runs
        await log.close()

    async def second_run() -> tuple[int, int, dict[str, object]]:
        log = EvidenceLog.open(evidence_cfg(tmp_path), key())
        fwd = Forwarder(forwarder_cfg(tmp_path), log)
        await fwd.start()
        resumed_at, backlog = fwd.delivered_seq, fwd.backlog
        await wait_until_async(lambda: fwd.backlog == 0, "second backlog drained", timeout_s=20)
        stats = fwd.stats()
        await fwd.stop()
        await log.close()
        return resumed_at, backlog, stats

    asyncio.run(first_run())
    assert len(sink_lines(tmp_path)) == 30
    resumed_at, backlog, stats = asyncio.run(second_run())
    assert (resumed_at, backlog) == (29, 15)
    assert stats["delivered"] == 15 and stats["duplicates"] == 0
    assert sink_lines(tmp_path) == log_lines(tmp_path)


def test_lost_cursor_redelivers_and_the_sink_dedups_by_decision_id(tmp_path: Path) -> None:
    async def run(expect_duplicates: int) -> dict[str, object]:
        log = EvidenceLog.open(evidence_cfg(tmp_path), key())
        fwd = Forwarder(forwarder_cfg(tmp_path), log)
        await fwd.start()
        if log.last_seq < 0:
            await append_many(log, 25)
        await wait_until_async(lambda: fwd.backlog == 0, "backlog drained", timeout_s=20)
        stats = fwd.stats()
        await fwd.stop()
        await log.close()
        assert stats["duplicates"] == expect_duplicates
        return stats

    asyncio.run(run(0))
    (tmp_path / "outbox" / "cursor.json").unlink()  # as if the cursor write was lost in a crash
    stats = asyncio.run(run(25))
    assert stats["delivered"] == 0
    assert sink_lines(tmp_path) == log_lines(tmp_path)  # still exactly once


def test_a_replaced_log_is_noticed_and_delivered_from_zero(tmp_path: Path) -> None:
    async def run(n: int) -> tuple[int, dict[str, object]]:
        log = EvidenceLog.open(evidence_cfg(tmp_path), key())
        fwd = Forwarder(forwarder_cfg(tmp_path), log)
        if log.last_seq < 0:
            await append_many(log, n)
        await fwd.start()
        start = fwd.delivered_seq
        await wait_until_async(lambda: fwd.backlog == 0, "backlog drained", timeout_s=20)
        stats = fwd.stats()
        await fwd.stop()
        await log.close()
        return start, stats

    asyncio.run(run(20))
    for seg in (tmp_path / "evidence").glob("segment-*.jsonl"):
        seg.unlink()  # a new, shorter log under the same directory
    start, stats = asyncio.run(run(12))
    assert start == -1  # the cursor (seq 19) does not exist in the new log
    assert stats["delivered"] == 12
    assert len(sink_lines(tmp_path)) == 32


def test_torn_sink_file_tail_is_cut_before_appending(tmp_path: Path) -> None:
    path = tmp_path / "integrity" / "decisions.jsonl"
    path.parent.mkdir(parents=True)
    path.write_bytes(b'{"payloadType":"application/vnd.certus.decision+json","pay')

    async def run() -> None:
        log = EvidenceLog.open(evidence_cfg(tmp_path), key())
        fwd = Forwarder(forwarder_cfg(tmp_path), log)
        await fwd.start()
        await append_many(log, 5)
        await wait_until_async(lambda: fwd.backlog == 0, "backlog drained", timeout_s=20)
        await fwd.stop()
        await log.close()

    asyncio.run(run())
    assert sink_lines(tmp_path) == log_lines(tmp_path)


def test_stop_drains_the_backlog(tmp_path: Path) -> None:
    async def run() -> int:
        log = EvidenceLog.open(evidence_cfg(tmp_path), key())
        await append_many(log, 60)
        fwd = Forwarder(forwarder_cfg(tmp_path, batch_size=5), log)
        await fwd.start()
        await fwd.stop(drain_s=30.0)
        backlog = fwd.backlog
        await log.close()
        return backlog

    assert asyncio.run(run()) == 0
    assert len(sink_lines(tmp_path)) == 60


def test_sink_none_disables_forwarding(tmp_path: Path) -> None:
    async def run() -> dict[str, object]:
        log = EvidenceLog.open(evidence_cfg(tmp_path), key())
        fwd = Forwarder(forwarder_cfg(tmp_path, sink="none"), log)
        await fwd.start()
        await append_many(log, 3)
        stats = fwd.stats()
        await fwd.stop()
        await log.close()
        return stats

    stats = asyncio.run(run())
    assert stats["sink"] == "none" and stats["running"] is False and stats["backlog"] == 0
    assert not (tmp_path / "outbox").exists()
