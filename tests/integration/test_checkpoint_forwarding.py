"""Checkpoints over real sockets: the forwarder sends each signed checkpoint with an RFC 9162
consistency proof (gRPC SubmitCheckpoint, HTTP POST /v1/checkpoints) to the reference integrity
receiver, which keeps the newest one and refuses what does not extend it: a replayed older
checkpoint, a forked log under the same origin, a log whose tail was dropped and regrown. A key
rotation reaches the receiver before the first record of the new key. Every wait is bounded."""

from __future__ import annotations

import asyncio
import base64
import json
import shutil
import time
from pathlib import Path
from typing import Any

import pytest

from certus.sidecar.config import EvidenceConfig
from certus.sidecar.evidence.checkpoint import CheckpointStore
from certus.sidecar.evidence.log import EvidenceLog
from certus.sidecar.evidence.merkle import Leaves, leaf_hash
from certus.sidecar.evidence.records import iter_log, list_segments
from certus.sidecar.evidence.verify import verify_log
from certus.sidecar.forwarder import Forwarder
from certus.sidecar.forwarder.receiver import IntegrityReceiver
from certus.sidecar.forwarder.wire import CheckpointSubmission
from certus.sidecar.signing import SigningKey
from tests.conftest import wait_until_async
from tests.integration.test_forwarding import KEY, OTHER, decision, fwd_cfg


def ev_cfg(log_dir: Path, **kw: Any) -> EvidenceConfig:
    base: dict[str, Any] = {
        "log_dir": log_dir,
        "key_path": log_dir.parent / "signing.key",
        "fsync": "group",
        "checkpoint_interval_s": 0.0,  # only when asked (close, request_checkpoint)
        "checkpoint_origin": "test.example/evidence",
    }
    base.update(kw)
    return EvidenceConfig(**base)


def write_log(log_dir: Path, waves: list[int], key: SigningKey = KEY, start: int = 0) -> None:
    """Append the waves of decisions; each wave ends with a signed checkpoint."""

    async def go() -> None:
        log = EvidenceLog.open(ev_cfg(log_dir), key)
        i = start
        for n in waves:
            for _ in range(n):
                await log.append(decision(i))
                i += 1
            await asyncio.wrap_future(log.request_checkpoint())
        await log.close()

    asyncio.run(go())


def notes(log_dir: Path) -> dict[int, str]:
    return {d["size"]: d["note"] for d, _ in CheckpointStore(log_dir)}


def submission(log_dir: Path, old: int, new: int) -> CheckpointSubmission:
    leaves = [leaf_hash(r.line) for r in iter_log(log_dir)]
    proof = Leaves(leaves).consistency_proof(old, new) if old else []
    return CheckpointSubmission(notes(log_dir)[new], old, tuple(proof))


@pytest.mark.parametrize("sink", ["grpc", "http"])
def test_checkpoints_reach_the_receiver_with_consistency_proofs(sink: str, tmp_path: Path) -> None:
    r = IntegrityReceiver([KEY.verify_key], store_path=tmp_path / "receiver" / "store.jsonl")
    port = r.start_grpc() if sink == "grpc" else r.start_http()
    url = f"127.0.0.1:{port}" if sink == "grpc" else f"http://127.0.0.1:{port}"

    async def run() -> dict[str, Any]:
        log = EvidenceLog.open(ev_cfg(tmp_path / "evidence", checkpoint_interval_s=0.05), KEY)
        fwd = Forwarder(fwd_cfg(tmp_path, sink, url, batch_size=7), log)
        await fwd.start()
        for wave in range(4):
            await asyncio.gather(*(log.append(decision(wave * 30 + i)) for i in range(30)))
            await asyncio.sleep(0.15)  # a periodic checkpoint falls in each pause
        await asyncio.wrap_future(log.request_checkpoint())
        await wait_until_async(lambda: fwd.stats()["checkpoint_size"] == 120, "the last checkpoint acknowledged")
        stats = fwd.stats()
        await fwd.stop()
        await log.close()
        return stats

    try:
        stats = asyncio.run(run())
    finally:
        r.stop()
    assert stats["checkpoints_sent"] >= 3 and stats["checkpoint_rejections"] == 0 and stats["checkpoint_error"] == ""
    rs = r.stats()
    assert rs["checkpoint_size"] == 120 and rs["checkpoints_rejected"] == 0 and rs["accepted"] == 120
    report = verify_log(tmp_path / "evidence", KEY.verify_key)
    assert r.checkpoint is not None and base64.b64encode(r.checkpoint.root).decode() == report.tree_root
    # the receiver keeps what it holds across a restart
    again = IntegrityReceiver([KEY.verify_key], store_path=tmp_path / "receiver" / "store.jsonl")
    assert again.checkpoint is not None and (again.checkpoint.size, again.checkpoint.root) == (120, r.checkpoint.root)


def test_receiver_refuses_a_replay_a_fork_and_a_regrown_tail(tmp_path: Path) -> None:
    a = tmp_path / "a" / "evidence"
    write_log(a, [5, 5])
    r = IntegrityReceiver([KEY.verify_key], store_path=tmp_path / "receiver" / "store.jsonl")
    assert r.submit_checkpoint(submission(a, 0, 5)).status == "accepted"  # trusted on first use
    assert r.submit_checkpoint(submission(a, 5, 10)).status == "accepted"
    assert r.submit_checkpoint(submission(a, 10, 10)).status == "duplicate"
    # replay of the older checkpoint
    old = r.submit_checkpoint(CheckpointSubmission(notes(a)[5], 10, ()))
    assert old.status == "rejected" and "older than the held checkpoint's 10" in old.error and old.held_size == 10

    # a fork: another log under the same origin, 12 records, proof from its own tree of 10
    b = tmp_path / "b" / "evidence"
    write_log(b, [10, 2], start=100)
    fork = r.submit_checkpoint(submission(b, 10, 12))
    assert fork.status == "rejected" and "old root" in fork.error

    # a dropped tail: copy of log a, the last 4 records and the checkpoint of 10 removed, regrown to 12
    c = tmp_path / "c" / "evidence"
    shutil.copytree(a, c)
    seg = list_segments(c)[-1][1]
    seg.write_bytes(b"".join(line + b"\n" for line in seg.read_bytes().split(b"\n")[:6]))
    cps = (c / "checkpoints.jsonl").read_text().splitlines()
    (c / "checkpoints.jsonl").write_text(cps[0] + "\n")
    write_log(c, [6], start=200)
    regrown = r.submit_checkpoint(submission(c, 10, 12))
    assert regrown.status == "rejected" and "old root" in regrown.error
    wrong_start = r.submit_checkpoint(submission(c, 5, 12))
    assert wrong_start.status == "rejected" and "the service holds 10" in wrong_start.error

    # the forwarder of the regrown log: decisions still go through, the checkpoint is refused and said
    port = r.start_grpc()

    async def run() -> dict[str, Any]:
        log = EvidenceLog.open(ev_cfg(c), KEY)
        fwd = Forwarder(fwd_cfg(tmp_path / "c", "grpc", f"127.0.0.1:{port}"), log)
        await fwd.start()
        await wait_until_async(lambda: fwd.backlog == 0 and fwd.stats()["checkpoint_rejections"] >= 1, "delivered, checkpoint refused")
        stats = fwd.stats()
        await fwd.stop()
        await log.close()
        return stats

    try:
        stats = asyncio.run(run())
    finally:
        r.stop()
    assert stats["checkpoint_error"] and stats["checkpoint_size"] == 0
    assert r.checkpoint is not None and r.checkpoint.size == 10  # still the one it held
    assert r.stats()["checkpoints_rejected"] >= 4
    # persisted: after a restart the receiver still refuses the replay
    again = IntegrityReceiver([KEY.verify_key], store_path=tmp_path / "receiver" / "store.jsonl")
    assert again.submit_checkpoint(CheckpointSubmission(notes(a)[5], 10, ())).status == "rejected"


def test_a_key_rotation_reaches_the_receiver_before_the_new_keys_records(tmp_path: Path) -> None:
    r = IntegrityReceiver([KEY.verify_key])  # trusts only the first key
    port = r.start_grpc()
    KEY.write(tmp_path / "signing.key", overwrite=True)
    cfg = ev_cfg(tmp_path / "evidence", key_path=tmp_path / "signing.key")

    async def run() -> dict[str, Any]:
        log = EvidenceLog.open(cfg, KEY)
        fwd = Forwarder(fwd_cfg(tmp_path, "grpc", f"127.0.0.1:{port}", batch_size=8, linger_ms=0), log)
        await fwd.start()
        stop = asyncio.Event()

        async def load() -> int:  # appends without pause across the rotation
            n = 0
            while not stop.is_set():
                await log.append(decision(n))
                n += 1
                await asyncio.sleep(0.002)
            return n

        task = asyncio.create_task(load())
        await asyncio.sleep(0.3)
        r.unavailable = True  # a backlog builds up across the rotation: batches would span it
        OTHER.write(log.next_key_path)
        deadline = time.monotonic() + 10
        while log.key_id != OTHER.key_id:
            assert time.monotonic() < deadline, "no rotation"
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.3)
        stop.set()
        n = await task
        r.unavailable = False
        await asyncio.wrap_future(log.request_checkpoint())
        await wait_until_async(lambda: fwd.backlog == 0 and fwd.stats()["checkpoint_size"] == n, "everything delivered")
        stats = fwd.stats()
        await fwd.stop()
        await log.close()
        return {**stats, "n": n}

    try:
        stats = asyncio.run(run())
    finally:
        r.stop()
    signers = [rec.envelope.signatures[0][0] for rec in iter_log(tmp_path / "evidence")]
    assert KEY.key_id in signers and OTHER.key_id in signers
    assert stats["dead_letters"] == 0 and r.stats()["rejected"] == 0 and r.stats()["accepted"] == stats["n"]
    assert r.checkpoint is not None and r.checkpoint.size == stats["n"] and r.checkpoint.signers == (OTHER.key_id,)
    assert verify_log(tmp_path / "evidence", KEY.verify_key).ok
    assert json.loads((tmp_path / "outbox" / "cursor.json").read_text())["checkpoint_size"] == stats["n"]


def test_consistency_proofs_from_kept_leaves_and_from_the_log_agree(tmp_path: Path) -> None:
    """The forwarder proves a checkpoint from the leaf hashes the log keeps in memory, and reads
    the records back only for what an earlier process wrote; both give the proof the records on
    disk give, and the in-memory one reads nothing."""
    log_dir = tmp_path / "evidence"
    write_log(log_dir, [30, 30])  # an earlier process: checkpoints at 30 and 60

    async def run() -> None:
        log = EvidenceLog.open(ev_cfg(log_dir), KEY)
        try:
            for i in range(30):
                await log.append(decision(100 + i))
            sc = await asyncio.wrap_future(log.request_checkpoint())
            assert sc is not None and sc.checkpoint.size == 90
            fwd = Forwarder(fwd_cfg(tmp_path, "file", "", file_path=tmp_path / "sink.jsonl"), log)
            reads: list[int] = []
            real_read = log.read
            log.read = lambda start, n: reads.append(start) or real_read(start, n)  # type: ignore[method-assign]
            for old, reads_back in ((60, False), (30, True)):
                reads.clear()
                got = fwd._submission(sc, old)
                assert got.proof == submission(log_dir, old, 90).proof and got.proof
                assert bool(reads) == reads_back, (old, reads)
        finally:
            await log.close()

    asyncio.run(run())
