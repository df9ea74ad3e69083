"""Forwarding over real sockets: the forwarder's grpc and http sinks against the reference
integrity receiver (real gRPC server, real HTTP server, real signature checks) on 127.0.0.1.

Outages are real too: a receiver that is not listening at all, or one answering
UNAVAILABLE / 503 with a retry hint. Every wait is bounded.
"""

from __future__ import annotations

import asyncio
import base64
import http.client
import json
import signal
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import grpc
import pytest

from certus.sidecar.config import EvidenceConfig, ForwarderConfig
from certus.sidecar.domain import content_hash
from certus.sidecar.evidence.decision import DecisionMetric, IntegrityDecision, utc_timestamp
from certus.sidecar.evidence.log import EvidenceLog
from certus.sidecar.evidence.verify import verify_log
from certus.sidecar.forwarder import Forwarder
from certus.sidecar.forwarder.receiver import IntegrityReceiver
from certus.sidecar.signing import DECISION_PAYLOAD_TYPE, Envelope, SigningKey, canonical_json, sign_envelope
from tests.conftest import OUTSIDE, cli_argv, cli_env, free_port, wait_until_async

ROOT = Path(__file__).resolve().parents[2]
KEY = SigningKey(bytes(range(200, 232)))
OTHER = SigningKey(bytes(range(1, 33)))


def decision(i: int) -> IntegrityDecision:
    return IntegrityDecision(
        decision_id=str(uuid.uuid4()),
        workspace_id="acme",
        decision_type="combined",
        query_hash=content_hash(f"query {i}"),
        response_hash=content_hash(f"response {i}"),
        context_hashes=(content_hash(f"context {i}"), content_hash(f"context {i}b")),
        metrics=(DecisionMetric("faithfulness", 0.75, 0.7, True),),
        guardrail_violations=(),
        outcome="pass",
        overall_score=0.75,
        manifest_uri="certus://manifests/acme/2025-01",
        mode="shadow",
        timestamp=utc_timestamp(),
        processing_time_ms=5,
    )



def fwd_cfg(tmp: Path, sink: str, url: str, **kw: Any) -> ForwarderConfig:
    base: dict[str, Any] = {
        "sink": sink,
        "url": url,
        "outbox_dir": tmp / "outbox",
        "file_path": tmp / "unused.jsonl",
        "batch_size": 25,
        "timeout_s": 2.0,
        "failure_threshold": 3,
        "recovery_timeout_s": 0.3,
        "backoff_initial_s": 0.01,
        "backoff_max_s": 0.05,
    }
    base.update(kw)
    return ForwarderConfig(**base)


def open_log(tmp: Path, key: SigningKey = KEY) -> EvidenceLog:
    return EvidenceLog.open(EvidenceConfig(log_dir=tmp / "evidence", fsync="group", group_commit_max_wait_ms=0.0), key)


async def append_many(log: EvidenceLog, n: int, start: int = 0) -> dict[str, str]:
    """decision_id -> evidence_id for ``n`` concurrent appends."""
    decs = [decision(start + i) for i in range(n)]
    results = await asyncio.gather(*(log.append(d) for d in decs))
    return {d.decision_id: eid for d, (eid, _) in zip(decs, results)}


@pytest.fixture
def receiver(tmp_path: Path) -> Any:
    r = IntegrityReceiver([KEY.verify_key], store_path=tmp_path / "receiver" / "store.jsonl")
    yield r
    r.stop()


def assert_exactly_once(r: IntegrityReceiver, expected: dict[str, str]) -> None:
    stored = r.decisions()
    assert set(stored) == set(expected)
    assert {k: v.evidence_id for k, v in stored.items()} == expected
    assert r.stats()["accepted"] == len(expected)


# -- delivery through each sink -----------------------------------------------------------------


@pytest.mark.parametrize("sink", ["grpc", "http"])
def test_sink_delivers_every_decision_once(sink: str, tmp_path: Path, receiver: IntegrityReceiver) -> None:
    port = receiver.start_grpc() if sink == "grpc" else receiver.start_http()
    url = f"127.0.0.1:{port}" if sink == "grpc" else f"http://127.0.0.1:{port}"

    async def run() -> tuple[dict[str, str], dict[str, Any]]:
        log = open_log(tmp_path)
        fwd = Forwarder(fwd_cfg(tmp_path, sink, url), log)
        await fwd.start()
        expected = await append_many(log, 120)
        await wait_until_async(lambda: fwd.backlog == 0, "backlog drained")
        stats = fwd.stats()
        await fwd.stop()
        await log.close()
        return expected, stats

    expected, stats = asyncio.run(run())
    assert_exactly_once(receiver, expected)
    assert receiver.stats()["duplicates"] == 0 and receiver.stats()["rejected"] == 0
    assert stats["delivered"] == 120 and stats["failures"] == 0 and stats["batches"] >= 120 // 25
    # the receiver holds the exact envelopes of the log (seq order kept)
    seqs = sorted(v.seq for v in receiver.decisions().values() if v.seq is not None)
    assert seqs == list(range(120))


def test_http_sink_sends_the_bearer_key(tmp_path: Path) -> None:
    r = IntegrityReceiver([KEY.verify_key], api_key="s3cret")
    port = r.start_http()
    try:

        async def run(api_key: str, n: int) -> dict[str, Any]:
            log = open_log(tmp_path)
            fwd = Forwarder(fwd_cfg(tmp_path, "http", f"http://127.0.0.1:{port}", api_key=api_key), log)
            await fwd.start()
            await append_many(log, n)
            if api_key == "s3cret":
                await wait_until_async(lambda: fwd.backlog == 0, "backlog drained")
            else:
                await wait_until_async(lambda: fwd.breaker.times_opened >= 1, "breaker opened on 401")
            stats = fwd.stats()
            await fwd.stop()
            await log.close()
            return stats

        wrong = asyncio.run(run("wrong", 10))
        assert wrong["backlog"] == 10 and r.stats()["stored"] == 0  # kept, not dropped
        assert "401" in str(wrong["last_error"]) and wrong["dead_letters"] == 0
        right = asyncio.run(run("s3cret", 5))  # same log and outbox: the 10 kept + 5 new
        assert right["backlog"] == 0 and r.stats()["stored"] == 15
    finally:
        r.stop()


# -- outages -------------------------------------------------------------------------------------


def test_receiver_down_for_the_whole_load_then_up(tmp_path: Path) -> None:
    """Nothing listening on the port during the load: evaluations (appends) carry on, the breaker
    opens, the backlog holds everything; once the receiver is up it drains, each id exactly once."""
    port = free_port()
    r = IntegrityReceiver([KEY.verify_key], store_path=tmp_path / "store.jsonl")

    async def run() -> tuple[dict[str, str], dict[str, Any], dict[str, Any]]:
        log = open_log(tmp_path)
        fwd = Forwarder(fwd_cfg(tmp_path, "grpc", f"127.0.0.1:{port}"), log)
        await fwd.start()
        expected: dict[str, str] = {}
        for wave in range(4):  # a load in waves, all while the receiver is down
            expected.update(await append_many(log, 50, start=wave * 50))
        assert log.last_seq == 199  # every append completed without the receiver
        await wait_until_async(lambda: fwd.breaker.times_opened >= 1, "breaker opened")
        during = fwd.stats()
        r.start_grpc(f"127.0.0.1:{port}")
        await wait_until_async(lambda: fwd.backlog == 0, "backlog drained after the receiver came up")
        after = fwd.stats()
        await fwd.stop()
        await log.close()
        return expected, during, after

    try:
        expected, during, after = asyncio.run(run())
    finally:
        r.stop()
    assert during["breaker_state"] in ("open", "half_open") and during["failures"] >= 3
    assert during["delivered"] == 0 and during["backlog"] > 0
    assert after["breaker_state"] == "closed" and after["breaker_recovered"] >= 1
    assert after["backlog"] == 0 and after["delivered"] == 200 and after["dead_letters"] == 0
    assert_exactly_once(r, expected)
    assert r.stats()["duplicates"] == 0


def test_receiver_answering_503_then_recovering(tmp_path: Path, receiver: IntegrityReceiver) -> None:
    receiver.unavailable = True
    receiver.retry_after_s = 0.05
    port = receiver.start_http()

    async def run() -> tuple[dict[str, str], dict[str, Any]]:
        log = open_log(tmp_path)
        fwd = Forwarder(fwd_cfg(tmp_path, "http", f"http://127.0.0.1:{port}"), log)
        await fwd.start()
        expected = await append_many(log, 80)
        await wait_until_async(lambda: fwd.breaker.times_opened >= 2, "breaker opened, probe failed, opened again")
        assert fwd.stats()["backlog"] == 80 and "503" in fwd.last_error
        receiver.unavailable = False
        await wait_until_async(lambda: fwd.backlog == 0, "backlog drained")
        stats = fwd.stats()
        await fwd.stop()
        await log.close()
        return expected, stats

    expected, stats = asyncio.run(run())
    assert receiver.stats()["refused_requests"] >= 4  # 3 to open + at least one failed probe
    assert stats["breaker_state"] == "closed" and stats["breaker_recovered"] >= 1
    assert_exactly_once(receiver, expected)


class GatedSink:
    """The real gRPC sink, held after ``open_batches`` deliveries (so a stop lands mid-backlog
    deterministically, whatever the machine's speed)."""

    def __init__(self, inner: Any, open_batches: int) -> None:
        self.inner = inner
        self.name = inner.name
        self.left = open_batches
        self.held = asyncio.Event()

    async def send(self, records: Any) -> Any:
        if self.left <= 0:
            self.held.set()
            await asyncio.Event().wait()  # until cancelled by stop()
        self.left -= 1
        return await self.inner.send(records)

    async def close(self) -> None:
        await self.inner.close()


def test_forwarder_restart_mid_backlog_resumes_from_the_cursor(tmp_path: Path, receiver: IntegrityReceiver) -> None:
    from certus.sidecar.forwarder import GrpcSink, RetryPolicy

    port = receiver.start_grpc()
    cfg = fwd_cfg(tmp_path, "grpc", f"127.0.0.1:{port}", batch_size=10)

    async def first() -> tuple[dict[str, str], int, int]:
        log = open_log(tmp_path)
        expected = await append_many(log, 200)
        sink = GatedSink(GrpcSink(cfg.url, RetryPolicy.from_config(cfg)), open_batches=5)
        fwd = Forwarder(cfg, log, sink=sink)
        await fwd.start()
        await asyncio.wait_for(sink.held.wait(), 30)
        await fwd.stop()  # no drain: stopped in the middle of the backlog
        cursor = json.loads((tmp_path / "outbox" / "cursor.json").read_text())["delivered_seq"]
        backlog = fwd.backlog
        await log.close()
        return expected, cursor, backlog

    async def second() -> tuple[int, dict[str, Any]]:
        log = open_log(tmp_path)
        fwd = Forwarder(cfg, log)
        await fwd.start()
        resumed = fwd.delivered_seq
        await wait_until_async(lambda: fwd.backlog == 0, "backlog drained after restart")
        stats = fwd.stats()
        await fwd.stop()
        await log.close()
        return resumed, stats

    expected, cursor, backlog = asyncio.run(first())
    assert cursor == 49 and backlog == 150  # five batches of ten delivered, then the stop
    assert receiver.stats()["accepted"] == 50
    resumed, stats = asyncio.run(second())
    assert resumed == cursor
    assert_exactly_once(receiver, expected)
    assert receiver.stats()["duplicates"] == 0
    assert stats["delivered"] == 150


# -- rejection and dead letters ------------------------------------------------------------------


def _rotated_log(tmp: Path, plan: list[tuple[SigningKey, int]]) -> dict[str, tuple[int, str]]:
    """A log written in stretches by different keys; decision_id -> (seq, key id)."""
    out: dict[str, tuple[int, str]] = {}

    async def run() -> None:
        seq = 0
        for key, n in plan:
            log = open_log(tmp, key)
            for _ in range(n):
                d = decision(seq)
                await log.append(d)
                out[d.decision_id] = (seq, key.key_id)
                seq += 1
            await log.close()

    asyncio.run(run())
    return out


@pytest.mark.parametrize("all_or_nothing", [False, True], ids=["per-record-receipts", "whole-batch-refused"])
def test_records_the_receiver_rejects_are_dead_lettered(tmp_path: Path, all_or_nothing: bool) -> None:
    written = _rotated_log(tmp_path, [(KEY, 4), (OTHER, 3), (KEY, 3)])
    r = IntegrityReceiver([KEY.verify_key], all_or_nothing=all_or_nothing)  # does not trust OTHER
    port = r.start_grpc()

    async def run() -> dict[str, Any]:
        log = open_log(tmp_path)
        fwd = Forwarder(fwd_cfg(tmp_path, "grpc", f"127.0.0.1:{port}", batch_size=10), log)
        await fwd.start()
        await wait_until_async(lambda: fwd.backlog == 0, "backlog handled")
        stats = fwd.stats()
        await fwd.stop()
        await log.close()
        return stats

    try:
        stats = asyncio.run(run())
    finally:
        r.stop()
    good = {d for d, (_, k) in written.items() if k == KEY.key_id}
    assert set(r.decisions()) == good
    assert stats["dead_letters"] == 3 and stats["delivered"] == 7 and stats["backlog"] == 0
    dead = [json.loads(line) for line in (tmp_path / "outbox" / "dead-letters.jsonl").read_text().splitlines()]
    assert [d["seq"] for d in dead] == [4, 5, 6]
    assert all(written[d["decision_id"]] == (d["seq"], OTHER.key_id) for d in dead)
    assert all("trusted key" in d["reason"] for d in dead)


# -- the receiver's protocol, spoken directly ----------------------------------------------------


def _envelope(signer: SigningKey = KEY, seq: int = 0) -> tuple[IntegrityDecision, Envelope]:
    d = decision(seq).with_chain(seq, "sha256:" + "0" * 64, signer.key_id)
    return d, sign_envelope(signer, DECISION_PAYLOAD_TYPE, canonical_json(d.to_payload()))


def test_receiver_grpc_protocol(tmp_path: Path) -> None:
    from certus.sidecar.protos import ipb, ipb_grpc

    store = tmp_path / "store.jsonl"
    r = IntegrityReceiver([KEY.verify_key], store_path=store, api_key="k")
    port = r.start_grpc()
    d, env = _envelope()
    _, foreign = _envelope(OTHER, 1)
    tampered = Envelope(env.payload_type, env.payload.replace(b'"outcome":"pass"', b'"outcome":"fail"'), env.signatures)

    def pb(e: Envelope) -> Any:
        return ipb.DsseEnvelope(
            payload_type=e.payload_type,
            payload=e.payload,
            signatures=[ipb.DsseSignature(keyid=k, sig=s) for k, s in e.signatures],
        )

    md = (("authorization", "Bearer k"),)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
            stub = ipb_grpc.IntegrityServiceStub(ch)
            resp = stub.SubmitDecisions(
                ipb.SubmitDecisionsRequest(envelopes=[pb(env), pb(env), pb(foreign), pb(tampered)]), metadata=md, timeout=5
            )
            statuses = [x.status for x in resp.receipts]
            assert statuses == [
                ipb.RECEIPT_STATUS_ACCEPTED,
                ipb.RECEIPT_STATUS_DUPLICATE,
                ipb.RECEIPT_STATUS_REJECTED,
                ipb.RECEIPT_STATUS_REJECTED,
            ]
            assert resp.receipts[0].decision_id == d.decision_id
            assert resp.receipts[0].evidence_id == env.digest() == resp.receipts[1].evidence_id
            assert "trusted key" in resp.receipts[2].error and "bad signature" in resp.receipts[3].error
            with pytest.raises(grpc.RpcError) as err:
                stub.SubmitDecisions(ipb.SubmitDecisionsRequest(envelopes=[pb(env)]), timeout=5)
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
            r.unavailable = True
            with pytest.raises(grpc.RpcError) as err:
                stub.SubmitDecisions(ipb.SubmitDecisionsRequest(envelopes=[pb(env)]), metadata=md, timeout=5)
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
            assert ("retry-after", "0.05") in tuple(err.value.trailing_metadata())
    finally:
        r.stop()
    # the store survives a restart: the same decision is a duplicate for a new receiver
    r2 = IntegrityReceiver([KEY.verify_key], store_path=store)
    assert [x.status for x in r2.submit([env])] == ["duplicate"]
    assert set(r2.decisions()) == {d.decision_id}


def _post(port: int, body: Any, headers: dict[str, str] | None = None) -> tuple[int, dict[str, Any], dict[str, str]]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    try:
        conn.request("POST", "/v1/decisions", body=data, headers={"Content-Type": "application/json", **(headers or {})})
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read() or b"{}"), dict(resp.getheaders())
    finally:
        conn.close()


def test_receiver_http_protocol(receiver: IntegrityReceiver) -> None:
    port = receiver.start_http()
    d, env = _envelope()
    single = {**d.to_payload(), "envelope": env.to_json_dict()}  # the seed's body plus the envelope
    status, body, _ = _post(port, single)
    assert (status, body["status"], body["evidence_id"]) == (201, "accepted", env.digest())
    status, body, _ = _post(port, single)
    assert (status, body["status"]) == (200, "duplicate")
    _, foreign = _envelope(OTHER, 1)
    status, body, _ = _post(port, {**decision(1).to_payload(), "envelope": foreign.to_json_dict()})
    assert status == 422 and body["status"] == "rejected"

    d2, env2 = _envelope(seq=2)
    lying = {**d2.to_payload(), "outcome": "fail"}  # decision does not match what was signed
    status, body, _ = _post(port, {"decisions": [{"decision": lying, "envelope": env2.to_json_dict()}]})
    assert status == 200 and body["receipts"][0]["status"] == "rejected"
    assert "does not match" in body["receipts"][0]["error"]

    status, body, _ = _post(port, b"{not json")
    assert status == 400 and "malformed" in body["error"]
    receiver.unavailable = True
    status, _, headers = _post(port, single)
    assert status == 503 and headers["Retry-After"] == "0.05"
    assert set(receiver.decisions()) == {d.decision_id}


def test_integrity_serve_command(tmp_path: Path) -> None:
    pub = tmp_path / "trusted.pub"
    pub.write_text(KEY.verify_key.to_base64() + "\n")
    store = tmp_path / "store.jsonl"
    proc = subprocess.Popen(
        cli_argv("integrity-serve", "--http", "127.0.0.1:0", "--grpc", "127.0.0.1:0", "--key", pub, "--store", store),
        cwd=OUTSIDE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=cli_env(), text=True,
    )
    try:
        ports: dict[str, int] = {}
        deadline = time.monotonic() + 60
        assert proc.stdout is not None
        while len(ports) < 2 and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            if "listening on port" in line:
                ports[line.split()[0]] = int(line.split()[-1])
        assert set(ports) == {"grpc", "http"}, proc.stderr.read() if proc.stderr else ""
        d, env = _envelope()
        status, body, _ = _post(ports["http"], {"decisions": [{"decision": d.to_payload(), "envelope": env.to_json_dict()}]})
        assert status == 200 and body["receipts"][0]["status"] == "accepted"
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0
    assert "'accepted': 1" in out
    stored = [json.loads(line) for line in store.read_text().splitlines()]
    assert [s["decision_id"] for s in stored] == [d.decision_id]
    assert base64.b64decode(stored[0]["envelope"]["payload"]) == env.payload


def test_forwarded_log_still_verifies(tmp_path: Path, receiver: IntegrityReceiver) -> None:
    """Forwarding reads the log; it never changes it."""
    port = receiver.start_grpc()

    async def run() -> None:
        log = open_log(tmp_path)
        fwd = Forwarder(fwd_cfg(tmp_path, "grpc", f"127.0.0.1:{port}"), log)
        await fwd.start()
        await append_many(log, 30)
        await wait_until_async(lambda: fwd.backlog == 0, "backlog drained")
        await fwd.stop()
        await log.close()

    asyncio.run(run())
    report = verify_log(tmp_path / "evidence", KEY.verify_key)
    assert report.ok and report.records == 30
