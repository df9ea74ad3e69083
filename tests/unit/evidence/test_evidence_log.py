"""The evidence log: contiguous seq and a correct chain under concurrency, durability policies,
torn-tail recovery, segment rolling, reopening, listeners, reading back."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import threading
from pathlib import Path
from typing import Callable

import pytest
from evidence_samples import sample_decision

from certus.sidecar.config import EvidenceConfig
from certus.sidecar.errors import Fatal
from certus.sidecar.evidence.decision import GENESIS_PREV_HASH
from certus.sidecar.evidence.log import (
    EvidenceLog,
    EvidenceLogClosed,
    EvidenceLogCorrupt,
    EvidenceLogError,
    EvidenceWriteError,
)
from certus.sidecar.evidence.records import iter_log
from certus.sidecar.evidence.verify import verify_log
from certus.sidecar.signing import Envelope, SigningKey
from tests.conftest import wait_until_async

LogCfg = Callable[..., EvidenceConfig]


def lines_of(log_dir: Path) -> list[bytes]:
    out: list[bytes] = []
    for seg in sorted(log_dir.glob("segment-*.jsonl")):
        out += seg.read_bytes().splitlines()
    return out


def payload_of(line: bytes) -> dict[str, object]:
    d: dict[str, object] = json.loads(base64.b64decode(json.loads(line)["payload"]))
    return d


def digest(line: bytes) -> str:
    return "sha256:" + hashlib.sha256(line).hexdigest()


def append_n(cfg: EvidenceConfig, key: SigningKey, n: int, start: int = 0) -> list[tuple[str, Envelope]]:
    async def run() -> list[tuple[str, Envelope]]:
        log = EvidenceLog.open(cfg, key)
        try:
            return [await log.append(sample_decision(start + i)) for i in range(n)]
        finally:
            await log.close()

    return asyncio.run(run())


@pytest.mark.parametrize("fsync", ["group", "always", "never"])
def test_200_concurrent_appends_get_contiguous_seq_and_a_correct_chain(
    fsync: str, key: SigningKey, log_cfg: LogCfg
) -> None:
    cfg = log_cfg(fsync=fsync)
    decisions = [sample_decision(i) for i in range(200)]

    async def run() -> tuple[list[tuple[str, Envelope]], dict[str, object]]:
        log = EvidenceLog.open(cfg, key)
        results = await asyncio.gather(*(log.append(d) for d in decisions))
        assert log.last_seq == 199
        stats = log.stats()
        await log.close()
        return list(results), stats

    results, stats = asyncio.run(run())
    commits = stats["commits"]
    assert isinstance(commits, int) and 1 <= commits <= 200
    assert stats["fsyncs"] == {"always": 200, "group": commits, "never": 0}[fsync]
    assert stats["last_seq"] == 199 and stats["pending"] == 0
    assert [r.evidence_id for r in iter_log(cfg.log_dir)] == [digest(line) for line in lines_of(cfg.log_dir)]
    lines = lines_of(cfg.log_dir)
    assert len(lines) == 200
    prev = GENESIS_PREV_HASH
    by_id = {}
    for seq, line in enumerate(lines):
        p = payload_of(line)
        assert p["seq"] == seq
        assert p["prev_hash"] == prev
        assert p["key_id"] == key.key_id
        prev = digest(line)
        by_id[p["decision_id"]] = prev
    # every caller got the evidence id of the record holding its own decision
    for dec, (evidence_id, env) in zip(decisions, results):
        assert by_id[dec.decision_id] == evidence_id == env.digest()
    report = verify_log(cfg.log_dir, key.verify_key)
    assert report.ok, report.first_bad
    assert report.records == 200 and report.last_evidence_id == prev


def test_reopen_continues_the_chain(key: SigningKey, log_cfg: LogCfg) -> None:
    cfg = log_cfg()
    first = append_n(cfg, key, 3)
    second = append_n(cfg, key, 2, start=3)
    lines = lines_of(cfg.log_dir)
    assert [payload_of(line)["seq"] for line in lines] == [0, 1, 2, 3, 4]
    assert payload_of(lines[3])["prev_hash"] == first[-1][0]
    assert second[-1][0] == digest(lines[4])
    assert verify_log(cfg.log_dir, key.verify_key).ok


@pytest.mark.parametrize(
    "debris",
    [
        pytest.param("half", id="half-a-record"),
        pytest.param(b"\x00" * 300, id="zero-filled-block"),
        pytest.param(b'{"payloadType":"garbage"}\n{"pay', id="junk-line-then-partial"),
    ],
)
def test_torn_tail_is_truncated_and_the_chain_continues(key: SigningKey, log_cfg: LogCfg, debris: object) -> None:
    cfg = log_cfg()
    appended = append_n(cfg, key, 10)
    seg = cfg.log_dir / "segment-000001.jsonl"
    good = seg.read_bytes()
    if debris == "half":
        whole = Envelope.to_json(appended[0][1])
        debris = whole[: len(whole) // 2]  # a crash mid-write of the next record
    assert isinstance(debris, bytes)
    seg.write_bytes(good + debris)
    assert not verify_log(cfg.log_dir, key.verify_key).ok

    async def reopen() -> tuple[int, int, str]:
        log = EvidenceLog.open(cfg, key)
        recovered, last = log.recovered_bytes, log.last_seq
        evidence_id, _ = await log.append(sample_decision(10))
        await log.close()
        return recovered, last, evidence_id

    recovered, last, evidence_id = asyncio.run(reopen())
    assert recovered == len(debris)
    assert last == 9
    data = seg.read_bytes()
    assert data.startswith(good)  # earlier records intact, byte for byte
    lines = lines_of(cfg.log_dir)
    assert len(lines) == 11
    assert payload_of(lines[10])["seq"] == 10
    assert payload_of(lines[10])["prev_hash"] == appended[-1][0]
    assert digest(lines[10]) == evidence_id
    report = verify_log(cfg.log_dir, key.verify_key)
    assert report.ok and report.records == 11


def test_damage_in_the_middle_is_not_truncated(key: SigningKey, log_cfg: LogCfg) -> None:
    cfg = log_cfg()
    append_n(cfg, key, 6)
    seg = cfg.log_dir / "segment-000001.jsonl"
    lines = seg.read_bytes().splitlines(keepends=True)
    lines[2] = b'{"not":"a record"}\n'
    seg.write_bytes(b"".join(lines))
    before = seg.read_bytes()
    with pytest.raises(EvidenceLogCorrupt, match="segment-000001.jsonl"):
        EvidenceLog.open(cfg, key)
    assert seg.read_bytes() == before  # nothing was cut away


def test_segments_roll_and_read_back_across_them(key: SigningKey, log_cfg: LogCfg) -> None:
    cfg = log_cfg(segment_bytes=4096)
    appended = append_n(cfg, key, 30)
    segs = sorted(cfg.log_dir.glob("segment-*.jsonl"))
    assert len(segs) > 3
    line_len = len(lines_of(cfg.log_dir)[0]) + 1
    for seg in segs:
        size = seg.stat().st_size
        assert 0 < size <= 4096
        assert size + line_len > 4096 or seg == segs[-1]  # each full segment was filled before rolling
    assert [payload_of(line)["seq"] for line in lines_of(cfg.log_dir)] == list(range(30))
    report = verify_log(cfg.log_dir, key.verify_key)
    assert report.ok and report.segments == len(segs) and report.records == 30

    async def read_back() -> None:
        log = EvidenceLog.open(cfg, key)
        try:
            recs = await asyncio.to_thread(log.read, 0, 100)
            assert [r.seq for r in recs] == list(range(30))
            assert [r.evidence_id for r in recs] == [e for e, _ in appended]
            part = await asyncio.to_thread(log.read, 7, 5)
            assert [r.seq for r in part] == [7, 8, 9, 10, 11]
            nxt = await asyncio.to_thread(log.read, 12, 4)  # continues from the read position
            assert [r.seq for r in nxt] == [12, 13, 14, 15]
            assert await asyncio.to_thread(log.read, 30, 5) == []
            rec = await asyncio.to_thread(log.record_at, 29)
            assert rec is not None and rec.evidence_id == appended[-1][0]
        finally:
            await log.close()

    asyncio.run(read_back())


def test_empty_last_segment_continues_from_the_previous_one(key: SigningKey, log_cfg: LogCfg) -> None:
    cfg = log_cfg()
    appended = append_n(cfg, key, 4)
    (cfg.log_dir / "segment-000002.jsonl").write_bytes(b"")  # crash right after a roll
    append_n(cfg, key, 1, start=4)
    seg2 = (cfg.log_dir / "segment-000002.jsonl").read_bytes().splitlines()
    assert len(seg2) == 1
    assert payload_of(seg2[0])["seq"] == 4 and payload_of(seg2[0])["prev_hash"] == appended[-1][0]
    assert verify_log(cfg.log_dir, key.verify_key).ok


def test_listener_hears_each_durable_record_in_order(key: SigningKey, log_cfg: LogCfg) -> None:
    cfg = log_cfg()
    heard: list[tuple[int, str]] = []
    lock = threading.Lock()

    def listener(seq: int, env: Envelope) -> None:
        with lock:
            heard.append((seq, env.digest()))

    async def run() -> list[tuple[str, Envelope]]:
        log = EvidenceLog.open(cfg, key)
        log.add_listener(listener)
        results = await asyncio.gather(*(log.append(sample_decision(i)) for i in range(20)))
        await log.close()
        return list(results)

    results = asyncio.run(run())
    assert [s for s, _ in heard] == list(range(20))
    assert sorted(e for _, e in heard) == sorted(e for e, _ in results)


def test_one_writer_per_directory(key: SigningKey, log_cfg: LogCfg) -> None:
    cfg = log_cfg()
    log = EvidenceLog.open(cfg, key)
    try:
        with pytest.raises(EvidenceLogError, match="in use"):
            EvidenceLog.open(cfg, key)
    finally:
        log.close_sync()
    EvidenceLog.open(cfg, key).close_sync()  # released on close


def test_closed_log_refuses_appends_and_bad_input_is_named(key: SigningKey, log_cfg: LogCfg) -> None:
    log = EvidenceLog.open(log_cfg(), key)
    with pytest.raises(TypeError, match="IntegrityDecision"):
        log.submit({"decision_id": "x"})  # type: ignore[arg-type]
    log.close_sync()
    with pytest.raises(EvidenceLogClosed):
        log.submit(sample_decision())
    with pytest.raises(EvidenceLogError, match="evidence.fsync"):
        EvidenceLog.open(log_cfg(fsync="sometimes"), key)


def test_public_key_is_recorded_beside_the_log(key: SigningKey, log_cfg: LogCfg) -> None:
    cfg = log_cfg()
    EvidenceLog.open(cfg, key).close_sync()
    pub = cfg.log_dir / "keys" / (key.key_id.replace(":", "-") + ".pub")
    assert base64.b64decode(pub.read_text().strip()) == key.verify_key.public_bytes


def test_key_rotation_keeps_one_chain(key: SigningKey, other_key: SigningKey, log_cfg: LogCfg) -> None:
    cfg = log_cfg()
    first = append_n(cfg, key, 2)
    append_n(cfg, other_key, 2, start=2)
    lines = lines_of(cfg.log_dir)
    assert payload_of(lines[2])["prev_hash"] == first[-1][0]
    assert payload_of(lines[2])["key_id"] == other_key.key_id
    assert verify_log(cfg.log_dir, [key.verify_key, other_key.verify_key]).ok
    only_old = verify_log(cfg.log_dir, key.verify_key)
    assert only_old.first_bad is not None and only_old.first_bad.seq == 2


def test_a_failed_write_fails_the_callers_then_the_log_repairs_itself(key: SigningKey, log_cfg: LogCfg) -> None:
    cfg = log_cfg()
    append_n(cfg, key, 2)
    seg = cfg.log_dir / "segment-000001.jsonl"
    states: list[tuple[bool, str]] = []

    async def run() -> None:
        log = EvidenceLog.open(cfg, key)
        log.add_state_listener(lambda healthy, reason: states.append((healthy, reason)))
        os.close(log._fd)
        log._fd = os.open(seg, os.O_RDONLY)  # the next write fails with EBADF, as a real I/O error would
        try:
            with pytest.raises(EvidenceWriteError, match="write failed") as err:
                await log.append(sample_decision(2))
            assert isinstance(err.value, Fatal)
            assert log.failures == 1 and "Bad file descriptor" in log.failure_reason
            # the disk is fine: the writer's first repair attempt (after 0.25 s) succeeds
            await wait_until_async(lambda: log.healthy, "the log repaired itself", timeout_s=10)
            assert log.recoveries == 1 and log.stats()["failure"] == ""
            evidence_id, _ = await log.append(sample_decision(3))
            assert log.last_seq == 2 and log.last_evidence_id == evidence_id
        finally:
            await log.close()

    asyncio.run(run())
    assert [h for h, _ in states] == [False, True] and "Bad file descriptor" in states[0][1]
    report = verify_log(cfg.log_dir, key.verify_key)
    assert report.ok and report.records == 3  # nothing half-written, and the chain goes on


def test_a_failed_log_refuses_appends_at_once_until_repaired(key: SigningKey, log_cfg: LogCfg) -> None:
    cfg = log_cfg()
    append_n(cfg, key, 1)

    async def run() -> None:
        log = EvidenceLog.open(cfg, key)
        probe = cfg.log_dir / ".probe"
        probe.mkdir()  # the repair's probe file cannot be created: the log stays failed
        os.close(log._fd)
        log._fd = os.open(cfg.log_dir / "segment-000001.jsonl", os.O_RDONLY)
        try:
            with pytest.raises(EvidenceWriteError, match="write failed"):
                await log.append(sample_decision(1))
            for i in range(3):
                with pytest.raises(EvidenceWriteError, match="failed earlier"):
                    await log.append(sample_decision(2 + i))
            await wait_until_async(lambda: log.heal_attempts >= 2, "two repair attempts", timeout_s=10)
            assert not log.healthy and log.recoveries == 0
            probe.rmdir()
            await wait_until_async(lambda: log.healthy, "the log repaired itself", timeout_s=15)
            await log.append(sample_decision(5))
        finally:
            await log.close()

    asyncio.run(run())
    report = verify_log(cfg.log_dir, key.verify_key)
    assert report.ok and report.records == 2


def test_a_cancelled_caller_does_not_cancel_the_record(key: SigningKey, log_cfg: LogCfg) -> None:
    cfg = log_cfg(fsync="always")
    decisions = [sample_decision(i) for i in range(20)]

    async def run() -> None:
        log = EvidenceLog.open(cfg, key)
        tasks = [asyncio.create_task(log.append(d)) for d in decisions]
        await asyncio.sleep(0)
        for t in tasks[::2]:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await log.close()

    asyncio.run(run())
    written = {payload_of(line)["decision_id"] for line in lines_of(cfg.log_dir)}
    assert written == {d.decision_id for d in decisions}
    assert verify_log(cfg.log_dir, key.verify_key).ok


def test_reads_parse_only_what_they_return(key: SigningKey, log_cfg: LogCfg, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two readers taking turns (the forwarder's deliveries and its checkpoint proofs) each go on
    where they stopped, and a read from anywhere skips the lines before it unparsed: no line is
    parsed that is not returned (parsing a 53 MB segment up to its end cost 1.3 s of CPU)."""
    import dataclasses

    import certus.sidecar.evidence.log as log_mod

    cfg = log_cfg(segment_bytes=16384)
    append_n(cfg, key, 40)
    parsed: list[int] = []
    real_parse = log_mod.parse_line

    def counting(line: bytes, *args: object) -> object:
        parsed.append(1)
        return real_parse(line, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(log_mod, "parse_line", counting)

    async def run() -> None:
        log = EvidenceLog.open(cfg, key)
        try:
            assert len(log._segments) >= 2
            for start, count in ((0, 5), (20, 5), (5, 5), (25, 5), (10, 3), (30, 10), (37, 1), (13, 27)):
                parsed.clear()
                recs = log.read(start, count)
                assert [r.seq for r in recs] == list(range(start, min(40, start + count)))
                assert len(parsed) == len(recs), (start, count, len(parsed))
            # every slice, read cold, matches
            for start in range(42):
                for count in (1, 3, 17, 50):
                    log._read_hints.clear()
                    assert [r.seq for r in log.read(start, count)] == list(range(start, min(40, start + count)))
            # a segment whose lines are not numbered from its first_seq: parsed through, still right
            log._segments[1] = dataclasses.replace(log._segments[1], first_seq=log._segments[1].first_seq - 2)
            log._read_hints.clear()
            first = log._segments[1].first_seq + 2
            assert [r.seq for r in log.read(first + 3, 4)] == list(range(first + 3, first + 7))
        finally:
            await log.close()

    asyncio.run(run())


def test_leaf_hashes_of_the_newest_records_come_from_memory(
    key: SigningKey, log_cfg: LogCfg, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A checkpoint's consistency proof needs the leaf hashes of the records since the previous
    one: the log keeps the newest ones (a ring) instead of reading and parsing them back. What it
    does not hold (records of an earlier process, overwritten slots, not yet durable) is None."""
    import certus.sidecar.evidence.log as log_mod
    from certus.sidecar.evidence.merkle import leaf_hash

    monkeypatch.setattr(log_mod, "RECENT_LEAVES", 16)
    cfg = log_cfg()
    append_n(cfg, key, 5)  # an earlier process's records

    async def run() -> None:
        log = EvidenceLog.open(cfg, key)
        try:
            assert log.leaf_hashes(0, 5) is None and log.leaf_hashes(5, 5) == []
            for i in range(40):
                await log.append(sample_decision(100 + i))
                end = 5 + i + 1
                first = max(5, end - 16)
                want = [leaf_hash(r.line) for r in log.read(first, end - first)]
                assert log.leaf_hashes(first, end) == want  # every kept one, after wrapping round
                assert log.leaf_hashes(first + 1, max(first + 1, end - 1)) == want[1:-1]
                assert log.leaf_hashes(first - 1, end) is None  # overwritten or an earlier process's
                assert log.leaf_hashes(first, end + 1) is None  # not written yet
        finally:
            await log.close()

    asyncio.run(run())


def test_submit_from_a_plain_thread(key: SigningKey, log_cfg: LogCfg) -> None:
    log = EvidenceLog.open(log_cfg(), key)
    try:
        futures = [log.submit(sample_decision(i)) for i in range(5)]
        results = [f.result(timeout=10) for f in futures]
    finally:
        log.close_sync()
    assert [r.evidence_id for r in iter_log(log.log_dir)] == [eid for eid, _ in results]
