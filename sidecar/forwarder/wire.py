"""What travels to the integrity service, shared by the sinks and the reference receiver.

gRPC: ``IntegrityService.SubmitDecisions`` (proto/certus/evaluate/v1/integrity.proto), one
``DsseEnvelope`` per decision, one ``Receipt`` per envelope.

HTTP (the seed's ``POST /v1/decisions`` with ``Authorization: Bearer <api_key>``):

- batch request ``{"decisions": [{"decision": {...}, "envelope": {...}}, ...]}`` ->
  ``200 {"receipts": [{"decision_id", "status", "evidence_id", "error"}, ...]}`` where status is
  ``accepted`` | ``duplicate`` | ``rejected``; a rejected record does not fail the others.
- single request: the seed's body (the decision's fields) plus an ``"envelope"`` member ->
  ``201`` accepted / ``200`` duplicate (``{"evidence_id", "decision_id", "status"}``) or ``422``
  rejected.
- ``400`` malformed body, ``401`` bad bearer key, ``503`` (+ ``Retry-After``) unavailable.

Checkpoints (``SubmitCheckpoint`` / ``POST /v1/checkpoints``): ``{"checkpoint": "<signed note>",
"old_size": m, "consistency_proof": ["<base64>", ...], "key_rotations": [<envelope>, ...]}`` ->
``200 {"status": "accepted"|"duplicate", "held_size": n, "error": ""}`` or ``409`` with status
``rejected`` and the reason (not consistent with the checkpoint the service holds, older than it,
a proof from another size, a bad signature).

``decision`` is the signed payload decoded for convenience; the receiver checks it equals the
payload, so the signature covers what it stores. ``evidence_id`` = ``sha256`` of the canonical
envelope JSON, the id the sidecar returned to its caller.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from typing import Any, Sequence

from certus.sidecar.evidence.records import LogRecord
from certus.sidecar.signing import Envelope

ACCEPTED = "accepted"
DUPLICATE = "duplicate"
REJECTED = "rejected"
RECEIPT_STATUSES = (ACCEPTED, DUPLICATE, REJECTED)


@dataclass(frozen=True)
class Receipt:
    decision_id: str
    status: str  # accepted | duplicate | rejected
    evidence_id: str = ""
    error: str = ""

    def to_dict(self) -> dict[str, str]:
        return {"decision_id": self.decision_id, "status": self.status, "evidence_id": self.evidence_id, "error": self.error}

    @classmethod
    def from_dict(cls, d: Any) -> "Receipt":
        if not isinstance(d, dict) or d.get("status") not in RECEIPT_STATUSES:
            raise ValueError(f"malformed receipt: {d!r:.200}")
        return cls(
            decision_id=str(d.get("decision_id", "")),
            status=str(d["status"]),
            evidence_id=str(d.get("evidence_id", "")),
            error=str(d.get("error", "")),
        )


@dataclass(frozen=True)
class CheckpointReceipt:
    status: str  # accepted | duplicate | rejected
    held_size: int = 0  # tree size of the newest checkpoint the service holds
    error: str = ""

    def to_dict(self) -> dict[str, object]:
        return {"status": self.status, "held_size": self.held_size, "error": self.error}

    @classmethod
    def from_dict(cls, d: Any) -> "CheckpointReceipt":
        if not isinstance(d, dict) or d.get("status") not in RECEIPT_STATUSES or not isinstance(d.get("held_size", 0), int):
            raise ValueError(f"malformed checkpoint receipt: {d!r:.200}")
        return cls(str(d["status"]), int(d.get("held_size", 0)), str(d.get("error", "")))


@dataclass(frozen=True)
class CheckpointSubmission:
    note: str
    old_size: int
    proof: tuple[bytes, ...]
    rotations: tuple[Envelope, ...] = ()

    def to_dict(self) -> dict[str, object]:
        return {
            "checkpoint": self.note,
            "old_size": self.old_size,
            "consistency_proof": [base64.b64encode(h).decode() for h in self.proof],
            "key_rotations": [e.to_json_dict() for e in self.rotations],
        }

    @classmethod
    def from_dict(cls, d: Any) -> "CheckpointSubmission":
        if not isinstance(d, dict) or not isinstance(d.get("checkpoint"), str):
            raise ValueError("checkpoint: a signed note string is required")
        old = d.get("old_size", 0)
        proof, rots = d.get("consistency_proof", []), d.get("key_rotations", [])
        if isinstance(old, bool) or not isinstance(old, int) or old < 0:
            raise ValueError("old_size: a non-negative integer is required")
        if not isinstance(proof, list) or not isinstance(rots, list) or len(proof) > 64:
            raise ValueError("consistency_proof and key_rotations: lists are required")
        return cls(
            d["checkpoint"],
            old,
            tuple(base64.b64decode(h, validate=True) for h in proof),
            tuple(Envelope.from_json_dict(e) for e in rots),
        )


def envelope_to_pb(env: Envelope) -> Any:
    """A DSSE envelope as the proto's ``DsseEnvelope``."""
    from certus.sidecar.protos import ipb

    return ipb.DsseEnvelope(
        payload_type=env.payload_type,
        payload=env.payload,
        signatures=[ipb.DsseSignature(keyid=k, sig=s) for k, s in env.signatures],
    )


def envelope_from_pb(e: Any) -> Envelope:
    return Envelope(e.payload_type, bytes(e.payload), tuple((s.keyid, bytes(s.sig)) for s in e.signatures))


def status_to_pb(status: str) -> int:
    from certus.sidecar.protos import ipb

    return {ACCEPTED: ipb.RECEIPT_STATUS_ACCEPTED, DUPLICATE: ipb.RECEIPT_STATUS_DUPLICATE, REJECTED: ipb.RECEIPT_STATUS_REJECTED}[status]


def status_from_pb(value: int) -> str | None:
    """The receipt status of a proto ``ReceiptStatus`` (None for an unknown value)."""
    from certus.sidecar.protos import ipb

    return {ipb.RECEIPT_STATUS_ACCEPTED: ACCEPTED, ipb.RECEIPT_STATUS_DUPLICATE: DUPLICATE, ipb.RECEIPT_STATUS_REJECTED: REJECTED}.get(value)


def http_batch_body(records: Sequence[LogRecord]) -> bytes:
    body = {"decisions": [{"decision": r.payload, "envelope": r.envelope_dict} for r in records]}
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def parse_receipts(body: bytes) -> list[Receipt]:
    data = json.loads(body)
    if not isinstance(data, dict) or not isinstance(data.get("receipts"), list):
        raise ValueError("response has no receipts list")
    return [Receipt.from_dict(r) for r in data["receipts"]]
