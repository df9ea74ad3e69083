"""A Node.js client, generated from proto/ at runtime, against the real sidecar process.

``clients/node/certus_client.js`` loads ``proto/`` with ``@grpc/proto-loader``, calls GetInfo and
Evaluate over ``@grpc/grpc-js``, and verifies the DSSE evidence envelope with ``node:crypto``
Ed25519 over a PAE it builds itself. The envelope is the exact line the sidecar wrote to its
evidence log (read here by evidence_id and handed to the script): nothing is added to the proto.
Tampered envelopes must fail in Node.
"""

from __future__ import annotations

import base64
import json
import shutil
import signal
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from certus.sidecar import signing
from certus.sidecar.domain import content_hash
from certus.sidecar.evidence.records import iter_log
from certus.sidecar.loadgen import start_local_sidecar
from certus.sidecar.protos import pb, pb_grpc

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
CLIENT_DIR = ROOT / "clients" / "node"
SCRIPT = CLIENT_DIR / "certus_client.js"

NODE = shutil.which("node")
NPM = shutil.which("npm")
if NODE is None or NPM is None:
    pytest.skip("node and npm are needed for the polyglot client test (not found on PATH)", allow_module_level=True)

QUERY = "Who gave their name to Normandy?"
RESPONSE = "The Normans gave their name to Normandy, a region in France. Write to jane.doe@example.com for details."
CONTEXT = [
    "The Normans were the people who in the 10th and 11th centuries gave their name to Normandy, a region in France.",
    "They were descended from Norse raiders and pirates from Denmark, Iceland and Norway.",
]


@dataclass
class SidecarProcess:
    proc: subprocess.Popen[str]
    target: str
    home: Path

    @property
    def log_dir(self) -> Path:
        return self.home / "evidence"


@pytest.fixture(scope="module")
def node_client() -> Path:
    """``npm ci`` from the committed lock file (node_modules is git-ignored)."""
    r = subprocess.run(
        [NPM, "ci", "--no-audit", "--no-fund", "--ignore-scripts", "--loglevel=error"],
        cwd=CLIENT_DIR,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, f"npm ci failed:\n{r.stdout}\n{r.stderr}"
    assert (CLIENT_DIR / "node_modules" / "@grpc" / "grpc-js").is_dir()
    return CLIENT_DIR


@pytest.fixture(scope="module")
def sidecar_proc(model_dir: Path) -> Iterator[SidecarProcess]:
    proc, target, home = start_local_sidecar()
    assert proc.stdout is not None
    stdout = proc.stdout
    # keep the pipe drained so the server can never block on a full stdout
    drain = threading.Thread(target=lambda: [None for _ in stdout], daemon=True)
    drain.start()
    try:
        yield SidecarProcess(proc, target, home)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        shutil.rmtree(home, ignore_errors=True)


def node(*args: str, cwd: Path = CLIENT_DIR) -> tuple[int, dict[str, Any]]:
    r = subprocess.run([NODE, str(SCRIPT), *args], cwd=cwd, capture_output=True, text=True, timeout=120)
    lines = r.stdout.strip().splitlines()
    assert lines, f"node printed nothing (rc {r.returncode}); stderr:\n{r.stderr}"
    return r.returncode, json.loads(lines[-1])


def log_line(log_dir: Path, evidence_id: str) -> tuple[bytes, int]:
    for rec in iter_log(log_dir):
        if rec.evidence_id == evidence_id:
            return rec.line, rec.seq
    raise AssertionError(f"{evidence_id} not in the evidence log at {log_dir}")


def python_info(target: str) -> Any:
    with grpc.insecure_channel(target) as ch:
        return pb_grpc.EvaluatorStub(ch).GetInfo(pb.GetInfoRequest(), timeout=30)


@pytest.fixture(scope="module")
def evaluated(node_client: Path, sidecar_proc: SidecarProcess, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One Evaluate made by the Node client; its output and the envelope line from the log."""
    tmp = tmp_path_factory.mktemp("polyglot")
    req_file = tmp / "request.json"
    req_file.write_text(
        json.dumps(
            {
                "workspace_id": "polyglot",
                "query": QUERY,
                "response": RESPONSE,
                "context": CONTEXT,
                "request_id": "node-1",
                "timeout_ms": 20000,
            }
        )
    )
    rc, out = node("evaluate", "--target", sidecar_proc.target, "--request-file", str(req_file))
    assert rc == 0, out
    line, seq = log_line(sidecar_proc.log_dir, out["response"]["evidence_id"])
    env_file = tmp / "envelope.json"
    env_file.write_bytes(line + b"\n")
    return {"out": out, "line": line, "seq": seq, "tmp": tmp, "env_file": env_file}


def test_node_stubs_call_evaluate_and_get_info(evaluated: dict[str, Any], sidecar_proc: SidecarProcess) -> None:
    out = evaluated["out"]
    resp, info = out["response"], out["info"]
    # Node decoded the same key the Python stub sees
    py = python_info(sidecar_proc.target)
    assert base64.b64decode(info["public_key"]) == py.public_key
    assert len(py.public_key) == 32
    assert info["key_id"] == py.key_id == signing.key_id_for(py.public_key)
    assert info["payload_type"] == signing.DECISION_PAYLOAD_TYPE
    assert info["signature_algorithm"] == "ed25519"
    # the response, decoded by proto-loader (enums as names, snake_case fields)
    assert resp["request_id"] == "node-1"
    assert resp["outcome"] in ("OUTCOME_PASS", "OUTCOME_FAIL", "OUTCOME_WARNING")
    assert resp["status"] == "EVALUATION_STATUS_COMPLETED"
    assert resp["evaluation_id"]
    assert resp["evidence_id"].startswith("sha256:") and len(resp["evidence_id"]) == 71
    names = {m["name"] for m in resp["metrics"]}
    assert "semantic_similarity" in names
    # the e-mail address in the response is found, reported by hash and location only
    pii = [v for v in resp["guardrail_violations"] if v["guardrail_type"] == "GUARDRAIL_TYPE_PII"]
    assert any(v["detector"] == "EMAIL_ADDRESS" for v in pii), resp["guardrail_violations"]
    email = "jane.doe@example.com"
    hit = next(v for v in pii if v["detector"] == "EMAIL_ADDRESS")
    assert RESPONSE[hit["start"] : hit["end"]] == email
    assert hit["content_hash"] == content_hash(email)
    assert email not in json.dumps(resp)


def test_node_verifies_the_evidence_signature(evaluated: dict[str, Any], sidecar_proc: SidecarProcess) -> None:
    resp = evaluated["out"]["response"]
    rc, v = node(
        "verify",
        "--target",
        sidecar_proc.target,
        "--envelope-file",
        str(evaluated["env_file"]),
        "--evidence-id",
        resp["evidence_id"],
    )
    assert rc == 0, v
    assert v["verified"] is True
    assert v["evidence_id"] == resp["evidence_id"]  # Node's SHA-256 of the line = the sidecar's evidence_id
    payload = v["payload"]
    # the signed decision, as Node decoded it, matches the call it came from
    assert payload["decision_id"] == resp["evaluation_id"]
    assert payload["workspace_id"] == "polyglot"
    assert payload["query_hash"] == content_hash(QUERY)
    assert payload["response_hash"] == content_hash(RESPONSE)
    assert payload["context_hashes"] == [content_hash(c) for c in CONTEXT]
    assert payload["seq"] == evaluated["seq"]
    assert payload["key_id"] == v["key_id"] == python_info(sidecar_proc.target).key_id
    assert payload["outcome"] == resp["outcome"].removeprefix("OUTCOME_").lower()
    assert QUERY not in json.dumps(payload) and "jane.doe" not in json.dumps(payload)
    # and the same bytes verify in Python too (both implementations agree on PAE)
    env = signing.Envelope.from_json(evaluated["line"])
    signing.verify_envelope(env, signing.VerifyKey(python_info(sidecar_proc.target).public_key))


def _envelope_dict(line: bytes) -> dict[str, Any]:
    d: dict[str, Any] = json.loads(line)
    return d


def _tampered(line: bytes) -> dict[str, bytes]:
    """Envelopes changed after signing, each as canonical JSON."""
    out: dict[str, bytes] = {}
    base = _envelope_dict(line)
    payload = json.loads(base64.b64decode(base["payload"]))

    # 1. an edited decision: outcome flipped, re-encoded canonically, old signature kept
    edited = dict(payload, outcome="pass" if payload["outcome"] != "pass" else "fail")
    d = dict(base, payload=base64.b64encode(signing.canonical_json(edited)).decode())
    out["edited_payload"] = signing.canonical_json(d)

    # 2. one bit of the signature flipped
    sig = bytearray(base64.b64decode(base["signatures"][0]["sig"]))
    sig[10] ^= 0x01
    d = dict(base, signatures=[dict(base["signatures"][0], sig=base64.b64encode(bytes(sig)).decode())])
    out["flipped_signature_bit"] = signing.canonical_json(d)

    # 3. re-signed by a different key that claims the sidecar's key id
    forger = signing.SigningKey.generate()
    forged_payload = signing.canonical_json(dict(payload, overall_score=1.0))
    forged_sig = forger.sign(signing.pae(base["payloadType"], forged_payload))
    d = dict(
        base,
        payload=base64.b64encode(forged_payload).decode(),
        signatures=[{"keyid": base["signatures"][0]["keyid"], "sig": base64.b64encode(forged_sig).decode()}],
    )
    out["forged_with_other_key"] = signing.canonical_json(d)

    # 4. the payload type swapped (PAE binds it, so the signature no longer covers the envelope)
    d = dict(base, payloadType="application/vnd.certus.manifest+json")
    out["payload_type_swapped"] = signing.canonical_json(d)

    # 5. signature removed
    d = dict(base, signatures=[])
    out["no_signature"] = signing.canonical_json(d)
    return out


EXPECTED_ERROR = {
    "edited_payload": "does not verify",
    "flipped_signature_bit": "does not verify",
    "forged_with_other_key": "does not verify",
    "payload_type_swapped": "payloadType",
    "no_signature": "no signature by key",
}


@pytest.mark.parametrize("kind", sorted(EXPECTED_ERROR))
def test_tampered_envelope_fails_in_node(kind: str, evaluated: dict[str, Any], sidecar_proc: SidecarProcess) -> None:
    bad = _tampered(evaluated["line"])[kind]
    f = evaluated["tmp"] / f"tampered-{kind}.json"
    f.write_bytes(bad + b"\n")
    rc, v = node("verify", "--target", sidecar_proc.target, "--envelope-file", str(f))
    assert rc == 1, v
    assert v["verified"] is False
    assert EXPECTED_ERROR[kind] in v["error"], v["error"]
    # Python's verifier rejects the same bytes (the two implementations agree)
    with pytest.raises(signing.SignatureError):
        signing.verify_envelope(
            signing.Envelope.from_json(bad),
            signing.VerifyKey(python_info(sidecar_proc.target).public_key),
            payload_type=signing.DECISION_PAYLOAD_TYPE,
        )


def test_node_rejects_an_envelope_whose_digest_is_not_the_evidence_id(
    evaluated: dict[str, Any], sidecar_proc: SidecarProcess
) -> None:
    rc, v = node(
        "verify",
        "--target",
        sidecar_proc.target,
        "--envelope-file",
        str(evaluated["env_file"]),
        "--evidence-id",
        "sha256:" + "0" * 64,
    )
    assert rc == 1
    assert "is not evidence_id" in v["error"]


def test_node_measure_and_a_bad_request_status(node_client: Path, sidecar_proc: SidecarProcess) -> None:
    text = "The Normans gave their name to Normandy."
    rc, m = node("measure", "--target", sidecar_proc.target, "--text1", text, "--text2", text)
    assert rc == 0, m
    assert m["matched"] is True
    assert m["semantic_score"] == pytest.approx(1.0, abs=1e-4)
    assert m["grounding_score"] == pytest.approx(1.0)
    # an invalid request surfaces in Node as INVALID_ARGUMENT (3), naming the field
    rc, err = node("measure", "--target", sidecar_proc.target, "--text1", "", "--text2", text)
    assert rc == 1
    assert err["grpc_code"] == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert "text1" in err["details"]
