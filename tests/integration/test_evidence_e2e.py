"""The evidence of a real Evaluate call, checked from the outside (issue 3).

- An envelope from the sidecar's log verifies with the public key the server publishes in GetInfo,
  through the ``cryptography`` package: DSSE's PAE and the key id are recomputed here from the
  DSSE spec, not taken from ``sidecar.signing``. The payload is canonical JSON, holds the hashes of
  exactly what was sent (query, response, every chunk in order, each violation's span), matches the
  response field by field, links to the record before it, and no raw text of the request appears
  anywhere the sidecar wrote evidence (log, integrity file, outbox).
- A torn tail (a half-written record, a zero-filled block) appended to a stopped sidecar's last
  segment is cut off at the next start: the server starts, ``verify`` passes, the chain continues.

The sidecar runs in this process on a free loopback port and is called through the generated
stubs; the ``verify`` checks run the real CLI.
"""

from __future__ import annotations

import base64
import hashlib
import json
import subprocess
import uuid
from pathlib import Path
from typing import Any, Iterator

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from grpc_health.v1 import health_pb2, health_pb2_grpc

from certus.sidecar.evidence.records import LogRecord, iter_log, list_segments
from certus.sidecar.protos import pb
from tests.conftest import OUTSIDE, cli_argv, make_config, start_sidecar, wait_until

ROOT = Path(__file__).resolve().parents[2]
PAYLOAD_TYPE = "application/vnd.certus.decision+json"
GENESIS = "sha256:" + "0" * 64


# -- an independent DSSE / Ed25519 verifier (DSSE spec + cryptography, nothing from sidecar) ----------


def sha256_ref(data: bytes | str) -> str:
    raw = data.encode("utf-8") if isinstance(data, str) else data
    return "sha256:" + hashlib.sha256(raw).hexdigest()


def dsse_pae(payload_type: str, payload: bytes) -> bytes:
    t = payload_type.encode("utf-8")
    return b"DSSEv1 " + str(len(t)).encode() + b" " + t + b" " + str(len(payload)).encode() + b" " + payload


def canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def verify_line(line: bytes, public_key: bytes) -> tuple[str, dict[str, Any]]:
    """Check one log line as an outside auditor would; returns (keyid, decoded payload).
    Raises ``InvalidSignature`` when the signature does not verify."""
    env = json.loads(line)
    assert set(env) == {"payload", "payloadType", "signatures"}
    assert env["payloadType"] == PAYLOAD_TYPE
    payload = base64.b64decode(env["payload"], validate=True)
    assert len(env["signatures"]) == 1
    sig = env["signatures"][0]
    Ed25519PublicKey.from_public_bytes(public_key).verify(
        base64.b64decode(sig["sig"], validate=True), dsse_pae(env["payloadType"], payload)
    )
    decision = json.loads(payload)
    return str(sig["keyid"]), decision


def record_by_evidence_id(log_dir: Path, evidence_id: str) -> tuple[LogRecord, LogRecord | None]:
    """The record with ``evidence_id`` and the one before it."""
    prev: LogRecord | None = None
    for rec in iter_log(log_dir):
        if rec.evidence_id == evidence_id:
            return rec, prev
        prev = rec
    raise AssertionError(f"{evidence_id} is not in {log_dir}")


def written_texts(*roots: Path) -> Iterator[tuple[Path, bytes]]:
    """Every file the sidecar wrote under ``roots``, and every base64 payload inside them decoded."""
    for root in roots:
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        for path in files:
            data = path.read_bytes()
            yield path, data
            for raw in data.splitlines():
                try:
                    env = json.loads(raw)
                    yield path, base64.b64decode(env["payload"])
                except (ValueError, KeyError, TypeError):
                    continue


def verify_cli(log_dir: Path, pub: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        cli_argv("verify", log_dir, "--key", pub, "--json"),
        cwd=OUTSIDE,
        capture_output=True,
        text=True,
        timeout=120,
    )


# -- 1. one Evaluate call's evidence, verified independently ------------------------------------------


def test_evidence_verifies_with_the_published_key_and_holds_no_content(sidecar: Any) -> None:
    tag = uuid.uuid4().hex
    email = f"jane.doe.{tag[:8]}@example.com"
    query = f"Who wrote the audit report {tag} and how can I reach her?"
    response = f"Jane Doe wrote the audit report {tag} in 2021; mail her at {email} or call 212-555-0187."
    context = [
        f"The audit report {tag} was written by Jane Doe in 2021.",
        f"Jane Doe works in the compliance team of the company ({tag[::-1]}).",
        "Reports are filed with the integrity service after review.",
    ]
    resp = sidecar.stub.Evaluate(
        pb.EvaluateRequest(
            workspace_id="audit",
            query=query,
            response=response,
            context=context,
            request_id=tag[:12],
            timeout_ms=30_000,
        ),
        timeout=60,
    )
    info = sidecar.stub.GetInfo(pb.GetInfoRequest(), timeout=10)
    assert info.signature_algorithm == "ed25519" and info.payload_type == PAYLOAD_TYPE
    assert len(info.public_key) == 32
    assert info.key_id == "ed25519:" + hashlib.sha256(info.public_key).hexdigest()[:16]

    log_dir = Path(sidecar.cfg.evidence.log_dir)
    rec, prev = record_by_evidence_id(log_dir, resp.evidence_id)
    line = rec.line

    # the envelope: canonical JSON, its digest is the evidence id, signed by the published key
    assert resp.evidence_id == sha256_ref(line)
    keyid, decision = verify_line(line, info.public_key)
    assert keyid == info.key_id
    assert canonical(json.loads(line)) == line
    payload = base64.b64decode(json.loads(line)["payload"])
    assert canonical(decision) == payload

    # the payload: the seed's fields plus the chain, hashes of exactly what was sent
    assert set(decision) == {
        "decision_id", "workspace_id", "decision_type", "query_hash", "response_hash", "context_hashes",
        "metrics", "guardrail_violations", "outcome", "overall_score", "manifest_uri", "mode", "timestamp",
        "processing_time_ms", "skipped", "skip_reason", "blocked", "seq", "prev_hash", "key_id",
    }  # fmt: skip
    assert decision["decision_id"] == resp.evaluation_id
    assert decision["workspace_id"] == "audit"
    assert decision["query_hash"] == sha256_ref(query)
    assert decision["response_hash"] == sha256_ref(response)
    assert decision["context_hashes"] == [sha256_ref(c) for c in context]
    assert decision["key_id"] == info.key_id
    assert decision["seq"] == rec.seq
    assert decision["prev_hash"] == (prev.evidence_id if prev is not None else GENESIS)
    if prev is not None:
        assert prev.seq == rec.seq - 1

    # ... and it says what the caller was told
    assert decision["outcome"] == pb.Outcome.Name(resp.outcome).removeprefix("OUTCOME_").lower()
    assert decision["mode"] == pb.EvaluationMode.Name(resp.mode).removeprefix("EVALUATION_MODE_").lower()
    assert decision["manifest_uri"] == resp.manifest_uri
    assert decision["overall_score"] == resp.overall_score
    assert decision["blocked"] is resp.blocked and decision["skipped"] is resp.skipped
    assert decision["processing_time_ms"] == (resp.processing_time_us + 500) // 1000
    assert [(m["name"], m["value"], m["passed"]) for m in decision["metrics"]] == [
        (m.name, m.value, m.passed) for m in resp.metrics
    ]
    # the PII in the response is a violation: hash and location of the span, never the span
    assert resp.guardrail_violations, "expected the email / phone number in the response to be flagged"
    assert len(decision["guardrail_violations"]) == len(resp.guardrail_violations)
    for dv, v in zip(decision["guardrail_violations"], resp.guardrail_violations):
        assert dv["location"] == f"char {v.start}-{v.end}" and dv["source"] == v.source == "response"
        assert dv["content_hash"] == v.content_hash == sha256_ref(response[v.start : v.end])
        assert dv["detector"] == v.detector
    assert "EMAIL_ADDRESS" in {v["detector"] for v in decision["guardrail_violations"]}

    # a changed payload or another key does not verify (the check above can fail)
    env = json.loads(line)
    edited = payload.replace(b'"workspace_id":"audit"', b'"workspace_id":"audiT"')
    assert edited != payload
    forged = dict(env, payload=base64.b64encode(edited).decode())
    with pytest.raises(InvalidSignature):
        verify_line(canonical(forged), info.public_key)
    other = Ed25519PrivateKey.generate().public_key().public_bytes_raw()
    with pytest.raises(InvalidSignature):
        verify_line(line, other)

    # no raw content anywhere the sidecar wrote evidence: log, forwarded copy, outbox
    fwd = sidecar.cfg.forwarder
    wait_until(
        lambda: sidecar.stub.GetInfo(pb.GetInfoRequest(), timeout=10).details["forwarder.backlog"] == "0",
        "the decision forwarded to the integrity file",
    )
    forwarded = Path(fwd.file_path).read_bytes().splitlines()
    assert line in forwarded  # byte-identical envelope at the integrity sink
    needles = [query, response, email, "212-555-0187", tag, tag[::-1], *context]
    seen = 0
    for path, data in written_texts(log_dir, Path(fwd.file_path), Path(fwd.outbox_dir)):
        seen += 1
        for needle in needles:
            assert needle.encode("utf-8") not in data, f"raw content {needle[:30]!r}... found in {path}"
    assert seen >= 4  # the log segment + its payloads, the integrity file, the cursor


# -- 2. a torn tail written into a stopped sidecar's log ----------------------------------------------


def _evaluate(stub: Any, tag: str, n: int) -> list[str]:
    return [
        stub.Evaluate(
            pb.EvaluateRequest(
                workspace_id="torn",
                query=f"What is recorded in entry {tag}-{i}?",
                response=f"Entry {tag}-{i} records a payment of {100 + i} euros.",
                context=[f"Entry {tag}-{i}: a payment of {100 + i} euros was recorded.", "Entries are immutable."],
            ),
            timeout=60,
        ).evidence_id
        for i in range(n)
    ]


@pytest.mark.slow
def test_torn_tail_is_cut_at_restart_and_the_chain_continues(tmp_path: Path, encoder: Any) -> None:
    cfg = make_config(tmp_path)
    log_dir = Path(cfg.evidence.log_dir)
    sc = start_sidecar(cfg, encoder=encoder)
    try:
        _evaluate(sc.stub, "first", 3)
        info = sc.stub.GetInfo(pb.GetInfoRequest(), timeout=10)
    finally:
        sc.stop()
    pub = tmp_path / "trusted.pub"
    pub.write_text(base64.b64encode(info.public_key).decode() + "\n")

    debris_kinds = {
        # a record cut off mid-write (the start of what would have been the next line)
        "half record": lambda last: last.line[: len(last.line) // 2],
        # a block the file system extended but never filled
        "zero-filled block": lambda last: b"\0" * 4096,
    }
    expected = 3
    for what, make in debris_kinds.items():
        records = list(iter_log(log_dir))
        assert len(records) == expected
        last = records[-1]
        seg = list_segments(log_dir)[-1][1]
        good = seg.read_bytes()
        with seg.open("ab") as f:
            f.write(make(last))
        broken = verify_cli(log_dir, pub)
        assert broken.returncode == 1, f"{what}: verify should name the torn tail: {broken.stdout}"
        assert "incomplete last line" in json.loads(broken.stdout)["first_bad"]["reason"]

        sc = start_sidecar(cfg, encoder=encoder)  # must start, cutting the debris away
        try:
            health = health_pb2_grpc.HealthStub(sc.channel)
            status = health.Check(health_pb2.HealthCheckRequest(), timeout=10).status
            assert status == health_pb2.HealthCheckResponse.SERVING
            assert seg.read_bytes() == good, f"{what}: the debris was not cut exactly at the last good record"
            new_ids = _evaluate(sc.stub, what.replace(" ", "-"), 2)
            assert sc.stub.GetInfo(pb.GetInfoRequest(), timeout=10).details["forwarder.last_seq"] == str(last.seq + 2)
        finally:
            sc.stop()
        after = list(iter_log(log_dir))
        assert [r.evidence_id for r in after[:expected]] == [r.evidence_id for r in records]  # nothing lost
        assert [r.evidence_id for r in after[expected:]] == new_ids
        assert [r.seq for r in after[expected:]] == [last.seq + 1, last.seq + 2]
        assert after[expected].prev_hash == last.evidence_id
        ok = verify_cli(log_dir, pub)
        assert ok.returncode == 0, f"{what}: {ok.stdout}\n{ok.stderr}"
        report = json.loads(ok.stdout)
        assert report["ok"] and report["records"] == expected + 2 and report["last_evidence_id"] == new_ids[-1]
        expected += 2


def test_info_key_verifies_every_record_of_the_shared_log(sidecar: Any) -> None:
    """Every record in the session sidecar's log (whatever other tests sent) verifies with the
    published key through ``cryptography``, and the records form one chain."""
    _evaluate(sidecar.stub, uuid.uuid4().hex[:8], 2)
    info = sidecar.stub.GetInfo(pb.GetInfoRequest(), timeout=10)
    prev = GENESIS
    n = 0
    for n, rec in enumerate(iter_log(Path(sidecar.cfg.evidence.log_dir)), start=1):
        keyid, decision = verify_line(rec.line, info.public_key)
        assert keyid == decision["key_id"] == info.key_id
        assert decision["seq"] == n - 1 and decision["prev_hash"] == prev
        prev = sha256_ref(rec.line)
    # other tests' async jobs may still be appending: the log holds at least what GetInfo saw
    assert n >= 2 and n - 1 >= int(info.details["forwarder.last_seq"])

