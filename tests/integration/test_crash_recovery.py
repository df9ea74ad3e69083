"""Crash recovery of the real sidecar process, end to end (issue 3).

The sidecar runs as ``python -m sidecar.cli serve`` (``start_local_sidecar``) with its evidence log,
key and outbox in a test directory, and is called over loopback gRPC through the generated stubs by
8 client threads with fresh texts. It is killed with SIGKILL in the middle of that load, restarted
on the same directories (same key) — after a torn last line (half a record, a zero-filled block)
was appended to the log, as a kill landing mid-write leaves it — and then:

- ``certus-sidecar verify DIR --key PUB`` (the real CLI, trusting the key the server published in
  GetInfo) passes;
- every evidence_id a client received with an OK status is in the log, with its decision id;
- the chain continues: new calls get the next seq, linked to the last record before the crash;
- once the reference integrity receiver (real gRPC / HTTP server in this process) comes up on the
  port the sidecar was configured with, every decision of the log arrives there exactly once by
  decision_id, with the exact envelope of the log. With the grpc sink the receiver comes up while
  the sidecar runs (GetInfo shows the backlog drain); with the http sink it comes up just as the
  sidecar gets SIGTERM with its breaker open, so the shutdown drain (grace period) must deliver it.

A second test keeps the receiver down for a whole load: the breaker opens, the backlog grows and is
visible in GetInfo, evaluations keep succeeding; when the receiver comes up the backlog drains and
the breaker closes.

Every wait is bounded; nothing leaves 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import signal
import subprocess
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import grpc
import pytest

from certus.sidecar.config import EvidenceConfig, ForwarderConfig
from certus.sidecar.evidence.decision import IntegrityDecision, utc_timestamp
from certus.sidecar.evidence.log import EvidenceLog
from certus.sidecar.evidence.records import LogRecord, iter_log, list_segments
from certus.sidecar.forwarder import Forwarder
from certus.sidecar.forwarder.receiver import IntegrityReceiver
from certus.sidecar.loadgen import start_local_sidecar
from certus.sidecar.protos import pb, pb_grpc
from certus.sidecar.signing import SigningKey, VerifyKey
from tests.conftest import OUTSIDE, cli_argv, free_port, wait_until

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
THREADS = 8


# -- helpers ----------------------------------------------------------------------------------------



@dataclass(frozen=True)
class Home:
    """The directories one sidecar keeps across its restarts."""

    root: Path

    @property
    def evidence(self) -> Path:
        return self.root / "evidence"

    @property
    def key(self) -> Path:
        return self.root / "keys" / "signing.key"

    def env(self, sink: str, url: str) -> dict[str, str]:
        return {
            "CERTUS_EVIDENCE_DIR": str(self.evidence),
            "CERTUS_SIGNING_KEY": str(self.key),
            "CERTUS_OUTBOX_DIR": str(self.root / "outbox"),
            "CERTUS_INTEGRITY_FILE": str(self.root / "integrity" / "decisions.jsonl"),
            "CERTUS_MANIFEST_DIR": str(self.root / "manifests"),
            "CERTUS_INTEGRITY_SINK": sink,
            "CERTUS_INTEGRITY_URL": url,
            "CERTUS_SEGMENT_BYTES": "8192",  # a few records per segment: kills land near rolls too
            "CERTUS_FORWARD_BATCH_SIZE": "20",
            "CERTUS_FORWARD_TIMEOUT_S": "2",
            "CERTUS_FORWARD_BACKOFF_INITIAL_S": "0.05",
            "CERTUS_FORWARD_BACKOFF_MAX_S": "0.2",
            "CIRCUIT_BREAKER_FAILURE_THRESHOLD": "2",
            "CIRCUIT_BREAKER_TIMEOUT_SECONDS": "0.5",
            "CERTUS_GRACE_S": "5",
            "CERTUS_INTRA_OP_THREADS": "1",
        }


class Sidecar:
    """One sidecar process and a client channel to it."""

    def __init__(self, env: dict[str, str]) -> None:
        self.proc, self.target, scratch = start_local_sidecar(env)
        try:
            scratch.rmdir()  # every path is overridden: the helper's own home stays empty
        except OSError:
            pass
        self.channel = grpc.insecure_channel(self.target)
        self.stub = pb_grpc.EvaluatorStub(self.channel)

    def info(self) -> Any:
        return self.stub.GetInfo(pb.GetInfoRequest(), timeout=10)

    def details(self) -> dict[str, str]:
        return dict(self.info().details)

    def kill9(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        assert self.proc.wait(30) == -signal.SIGKILL

    def terminate(self) -> int:
        self.channel.close()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(60)

    def cleanup(self) -> None:
        self.channel.close()
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def fresh_request(tag: str, i: int) -> Any:
    """A request no earlier call has sent (nothing served from the embedding cache)."""
    return pb.EvaluateRequest(
        workspace_id="crash",
        query=f"What did the Normans do in year {1000 + i}, case {tag}?",
        response=f"In year {1000 + i} the Normans crossed the channel; record {tag}-{i} says they won the battle.",
        context=[
            f"Record {tag}-{i}-a: in year {1000 + i} the Normans crossed the channel with many ships.",
            f"Record {tag}-{i}-b: the Normans won the battle after a long day of fighting.",
            f"Record {tag}-{i}-c: Normandy is a region in France named after the Normans.",
        ],
        request_id=f"{tag}-{i}",
    )


@dataclass
class Load:
    """``threads`` client threads calling Evaluate with fresh texts until stopped or ``per_thread``
    calls each; an UNAVAILABLE answer (the server is gone) ends a thread."""

    stub: Any
    tag: str
    per_thread: int
    threads: int = THREADS
    ok: dict[str, str] = field(default_factory=dict)  # evidence_id -> evaluation_id
    errors: Counter[str] = field(default_factory=Counter)
    stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _workers: list[threading.Thread] = field(default_factory=list)

    def start(self) -> "Load":
        for t in range(self.threads):
            w = threading.Thread(target=self._work, args=(t,), name=f"load-{t}", daemon=True)
            w.start()
            self._workers.append(w)
        return self

    def _work(self, t: int) -> None:
        for n in range(self.per_thread):
            if self.stop.is_set():
                return
            try:
                resp = self.stub.Evaluate(fresh_request(self.tag, t * 10_000 + n), timeout=30)
            except grpc.RpcError as exc:
                with self._lock:
                    self.errors[exc.code().name] += 1
                if exc.code() == grpc.StatusCode.UNAVAILABLE:
                    return
                continue
            assert resp.evidence_id.startswith("sha256:"), resp.evidence_id
            with self._lock:
                self.ok[resp.evidence_id] = resp.evaluation_id

    def ok_count(self) -> int:
        with self._lock:
            return len(self.ok)

    def join(self, timeout_s: float = 90.0) -> "Load":
        deadline = time.monotonic() + timeout_s
        for w in self._workers:
            w.join(max(0.0, deadline - time.monotonic()))
        assert not any(w.is_alive() for w in self._workers), "client threads did not finish"
        return self


def log_records(home: Home) -> list[LogRecord]:
    return list(iter_log(home.evidence))


def write_trusted_key(tmp: Path, info: Any) -> Path:
    """The public key the server publishes in GetInfo, as a ``--key`` file for verify."""
    key = VerifyKey(bytes(info.public_key))
    assert key.key_id == info.key_id
    path = tmp / f"trusted-{uuid.uuid4().hex[:8]}.pub"
    path.write_text(key.to_base64() + "\n")
    return path


def verify_cli(home: Home, pub: Path, expect_ok: bool = True) -> dict[str, Any]:
    """``certus-sidecar verify DIR --key PUB --json``: the real command, as an auditor runs it."""
    done = subprocess.run(
        cli_argv("verify", home.evidence, "--key", pub, "--json"),
        cwd=OUTSIDE,
        capture_output=True,
        text=True,
        timeout=120,
    )
    report: dict[str, Any] = json.loads(done.stdout)
    if not expect_ok:
        assert done.returncode == 1 and not report["ok"], done.stdout
        return report
    assert done.returncode == 0, f"verify failed ({done.returncode}): {done.stdout}\n{done.stderr}"
    assert report["ok"] and report["first_bad"] is None and report["key_source"] == "given"
    return report


# what a write cut short by the kill can leave: half of a record, or a block never filled
TORN_TAILS: list[Callable[[LogRecord], bytes]] = [
    lambda last: last.line[: len(last.line) // 2],
    lambda last: b"\0" * 4096,
]


def crash_under_load(sc: Sidecar, home: Home, tag: str, min_ok: int = 16) -> tuple[Load, list[LogRecord]]:
    """Start the load, SIGKILL the process once ``min_ok`` calls were answered, and check every
    answered evidence_id is in the log the dead process left behind."""
    load = Load(sc.stub, tag, per_thread=400).start()
    wait_until(lambda: load.ok_count() >= min_ok, f"{min_ok} answered calls before the kill", timeout_s=90)
    sc.kill9()  # the load is still running: calls are in flight
    load.stop.set()
    load.join()
    sc.cleanup()
    assert load.errors["UNAVAILABLE"] >= 1, f"no call was cut off by the kill: {dict(load.errors)}"
    assert set(load.errors) <= {"UNAVAILABLE"}, dict(load.errors)
    records = log_records(home)
    by_eid = {r.evidence_id: r for r in records}
    missing = [eid for eid in load.ok if eid not in by_eid]
    assert not missing, f"{len(missing)} of {len(load.ok)} answered decisions are not in the log"
    assert all(by_eid[eid].decision_id == did for eid, did in load.ok.items())
    return load, records


def assert_chain_continues(sc: Sidecar, home: Home, before: list[LogRecord], tag: str, n: int = 2) -> list[LogRecord]:
    """New calls after a restart get the next seqs, linked to the last record before the crash."""
    last = before[-1]
    eids = [sc.stub.Evaluate(fresh_request(tag, i), timeout=30).evidence_id for i in range(n)]
    after = log_records(home)
    assert [r.evidence_id for r in after[: len(before)]] == [r.evidence_id for r in before]  # nothing lost
    new = after[len(before) :]
    assert [r.evidence_id for r in new] == eids
    assert [r.seq for r in new] == list(range(last.seq + 1, last.seq + 1 + n))
    assert new[0].prev_hash == last.evidence_id
    assert sc.details()["forwarder.last_seq"] == str(last.seq + n)
    return after


def start_receiver(sink: str, port: int, info: Any, store: Path) -> IntegrityReceiver:
    r = IntegrityReceiver([VerifyKey(bytes(info.public_key))], store_path=store)
    if sink == "grpc":
        r.start_grpc(f"127.0.0.1:{port}")
    else:
        r.start_http(f"127.0.0.1:{port}")
    return r


def assert_delivered_exactly_once(r: IntegrityReceiver, records: list[LogRecord]) -> None:
    stored = r.decisions()
    assert len({rec.decision_id for rec in records}) == len(records)
    assert set(stored) == {rec.decision_id for rec in records}
    assert {d: s.evidence_id for d, s in stored.items()} == {rec.decision_id: rec.evidence_id for rec in records}
    assert {d: s.seq for d, s in stored.items()} == {rec.decision_id: rec.seq for rec in records}
    stats = r.stats()
    assert stats["accepted"] == len(records) and stats["rejected"] == 0


def drained(sc: Sidecar) -> bool:
    d = sc.details()
    return d["forwarder.backlog"] == "0" and d["forwarder.delivered_seq"] == d["forwarder.last_seq"]


# -- kill -9 under load, twice; then the receiver comes up ------------------------------------------


@pytest.mark.parametrize("sink", ["grpc", "http"])
def test_kill9_under_load_twice_then_receiver_gets_everything_once(sink: str, tmp_path: Path, model_dir: Any) -> None:
    """grpc: the receiver comes up after the first restart, so the second kill -9 hits live
    delivery (a batch may be re-sent after the restart: the receiver drops it as a duplicate).
    http: the receiver comes up only after the last restart, just as the sidecar gets SIGTERM."""
    home = Home(tmp_path / "sidecar")
    port = free_port()  # the receiver will listen here, but only after a restart
    url = f"127.0.0.1:{port}" if sink == "grpc" else f"http://127.0.0.1:{port}"
    env = home.env(sink, url)
    env["CIRCUIT_BREAKER_TIMEOUT_SECONDS"] = "2"
    env["CERTUS_GRACE_S"] = "20"
    batch_size = int(env["CERTUS_FORWARD_BATCH_SIZE"])
    answered: dict[str, str] = {}
    sc = Sidecar(env)
    receiver: IntegrityReceiver | None = None
    store = tmp_path / "receiver" / "store.jsonl"
    try:
        info = sc.info()
        pub = write_trusted_key(tmp_path, info)
        records: list[LogRecord] = []
        for crash in range(2):
            load, before = crash_under_load(sc, home, f"{sink}-crash{crash}")
            answered.update(load.ok)
            assert len(before) >= len(records) + len(load.ok)
            # as if the kill had landed mid-write: a torn last line the restart must cut away
            seg = list_segments(home.evidence)[-1][1]
            with seg.open("ab") as f:
                f.write(TORN_TAILS[crash](before[-1]))
            torn = verify_cli(home, pub, expect_ok=False)
            assert "incomplete last line" in torn["first_bad"]["reason"]
            sc = Sidecar(env)  # same directories, same key
            assert sc.info().key_id == info.key_id
            report = verify_cli(home, pub)
            assert report["records"] == len(before) and report["last_seq"] == before[-1].seq
            assert report["last_evidence_id"] == before[-1].evidence_id
            records = assert_chain_continues(sc, home, before, f"{sink}-after{crash}")
            d = sc.details()
            assert d["forwarder.sink"] == sink and d["forwarder.last_seq"] == str(records[-1].seq)
            if receiver is None:  # nothing could be delivered so far: the backlog is the whole log
                assert d["forwarder.delivered_seq"] == "-1" and d["forwarder.backlog"] == str(len(records))
            if sink == "grpc" and crash == 0:
                receiver = start_receiver(sink, port, info, store)
                wait_until(lambda: drained(sc), "the backlog drained to the receiver", timeout_s=60)
                assert receiver.stats()["accepted"] == len(records)
        report = verify_cli(home, pub)
        assert report["records"] == len(records) == records[-1].seq + 1
        assert report["segments"] == len({r.segment for r in records}) > 3
        by_eid = {r.evidence_id: r.decision_id for r in records}
        assert all(by_eid.get(eid) == did for eid, did in answered.items())

        if sink == "grpc":
            assert receiver is not None
            wait_until(lambda: drained(sc), "the re-delivery after the second crash", timeout_s=60)
            assert sc.details()["forwarder.dead_letters_total"] == "0"
            assert sc.terminate() == 0
        else:
            # the receiver comes up just as the sidecar is told to stop, while the breaker is
            # freshly open (no probe due for ~2 s): only the shutdown drain (grace period) can
            # deliver the backlog, and the durable cursor must say so
            opened = int(sc.details()["forwarder.breaker_opened"])
            wait_until(
                lambda: int(sc.details()["forwarder.breaker_opened"]) > opened, "the breaker opened again", timeout_s=60, step_s=0.01
            )
            receiver = start_receiver(sink, port, info, store)
            assert sc.terminate() == 0
            cursor = json.loads((home.root / "outbox" / "cursor.json").read_text())
            assert (cursor["delivered_seq"], cursor["evidence_id"]) == (records[-1].seq, records[-1].evidence_id)
            assert cursor["checkpoint_size"] == records[-1].seq + 1  # the shutdown checkpoint was delivered too
            assert receiver.stats()["duplicates"] == 0
        assert_delivered_exactly_once(receiver, records)
        dups = receiver.stats()["duplicates"]
        assert dups <= batch_size  # at most the batch in flight at the kill is sent twice
        print(f"[{sink}] {len(answered)} answered before the kills, {len(records)} records, duplicates dropped: {dups}")
    finally:
        sc.cleanup()
        if receiver is not None:
            receiver.stop()


# -- receiver down for the whole load, then up ------------------------------------------------------


def test_receiver_down_for_the_whole_load_then_up(tmp_path: Path, model_dir: Any) -> None:
    home = Home(tmp_path / "sidecar")
    port = free_port()  # nothing listens here during the load
    env = home.env("grpc", f"127.0.0.1:{port}")
    env["CIRCUIT_BREAKER_TIMEOUT_SECONDS"] = "1"  # open long enough to be seen, short enough to recover
    threshold = int(env["CIRCUIT_BREAKER_FAILURE_THRESHOLD"])
    sc = Sidecar(env)
    receiver: IntegrityReceiver | None = None
    try:
        info = sc.info()
        # wave 1: every call is answered although the integrity service is unreachable
        wave1 = Load(sc.stub, "down-1", per_thread=4).start().join()
        assert not wave1.errors and len(wave1.ok) == 4 * THREADS
        wait_until(lambda: sc.details()["forwarder.breaker_state"] == "open", "breaker open", timeout_s=30, step_s=0.02)
        d1 = sc.details()
        assert int(d1["forwarder.breaker_opened"]) >= 1 and int(d1["forwarder.failures"]) >= 2
        assert d1["forwarder.delivered_seq"] == "-1" and d1["forwarder.backlog"] == str(len(wave1.ok))
        assert "grpc UNAVAILABLE" in d1["forwarder.last_error"]
        # wave 2: still answered; the backlog grows by exactly the new decisions
        wave2 = Load(sc.stub, "down-2", per_thread=4).start().join()
        assert not wave2.errors and len(wave2.ok) == 4 * THREADS
        wait_until(lambda: int(sc.details()["forwarder.breaker_opened"]) >= 3, "two failed probes", timeout_s=30)
        d2 = sc.details()
        assert d2["forwarder.breaker_state"] in ("open", "half_open")
        for d in (d1, d2):  # one probe per open period, never a call through the open breaker
            assert int(d["forwarder.failures"]) == threshold + int(d["forwarder.breaker_opened"]) - 1, d
        assert d2["forwarder.delivered_seq"] == "-1"
        assert int(d2["forwarder.backlog"]) == len(wave1.ok) + len(wave2.ok) > int(d1["forwarder.backlog"])
        records = log_records(home)
        assert len(records) == int(d2["forwarder.backlog"])

        receiver = start_receiver("grpc", port, info, tmp_path / "receiver" / "store.jsonl")
        wait_until(lambda: drained(sc), "the backlog drained after the receiver came up", timeout_s=60)
        wait_until(lambda: sc.details()["forwarder.breaker_state"] == "closed", "breaker closed", timeout_s=10)
        d3 = sc.details()
        assert int(d3["forwarder.breaker_recovered"]) >= 1
        assert d3["forwarder.delivered"] == str(len(records)) and d3["forwarder.dead_letters"] == "0"
        assert_delivered_exactly_once(receiver, records)
        assert receiver.stats()["duplicates"] == 0
        answered = {**wave1.ok, **wave2.ok}
        stored = receiver.decisions()
        assert all(stored[did].evidence_id == eid for eid, did in answered.items())
        assert sc.terminate() == 0
    finally:
        sc.cleanup()
        if receiver is not None:
            receiver.stop()



# -- the breaker lets exactly one probe through per open period -------------------------------------


def test_the_breaker_never_lets_a_call_through_while_open(tmp_path: Path) -> None:
    """An event-loop timer may fire a little before the breaker's clock says its recovery timeout
    passed (uvloop's millisecond timers do, under load). The forwarder must then wait the rest, not
    call through the open breaker. Here the breaker's clock runs at 80% speed so that every wake-up
    is early; the receiver (real gRPC socket) answers UNAVAILABLE to every call. One probe per
    open period means failures == threshold + (times opened - 1)."""
    key = SigningKey(bytes(range(100, 132)))
    receiver = IntegrityReceiver([key.verify_key])
    receiver.unavailable = True
    receiver.retry_after_s = 0.0
    port = receiver.start_grpc()
    t0 = time.monotonic()

    def slow_clock() -> float:
        return t0 + 0.8 * (time.monotonic() - t0)

    threshold = 2
    cfg = ForwarderConfig(
        sink="grpc",
        url=f"127.0.0.1:{port}",
        outbox_dir=tmp_path / "outbox",
        file_path=tmp_path / "unused.jsonl",
        timeout_s=2.0,
        failure_threshold=threshold,
        recovery_timeout_s=0.1,
        backoff_initial_s=0.01,
        backoff_max_s=0.02,
    )
    digest = "sha256:" + hashlib.sha256(b"x").hexdigest()

    async def run() -> dict[str, Any]:
        log = EvidenceLog.open(EvidenceConfig(log_dir=tmp_path / "evidence", fsync="never"), key)
        fwd = Forwarder(cfg, log, clock=slow_clock)
        await fwd.start()
        await log.append(
            IntegrityDecision(
                decision_id=str(uuid.uuid4()), workspace_id="probe", decision_type="evaluation",
                query_hash=digest, response_hash=digest, context_hashes=(), metrics=(),
                guardrail_violations=(), outcome="skipped", overall_score=None, manifest_uri="",
                mode="shadow", timestamp=utc_timestamp(), processing_time_ms=0,
            )
        )  # fmt: skip
        deadline = time.monotonic() + 30
        while fwd.breaker.times_opened < 6:
            assert time.monotonic() < deadline, "the breaker did not cycle"
            await asyncio.sleep(0.01)
        stats = fwd.stats()
        await fwd.stop()
        await log.close()
        return stats

    try:
        stats = asyncio.run(run())
    finally:
        receiver.stop()
    assert stats["breaker_opened"] >= 6 and stats["delivered"] == 0 and stats["backlog"] == 1
    assert stats["failures"] == threshold + stats["breaker_opened"] - 1, stats
