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

``decision`` is the signed payload decoded for convenience; the receiver checks it equals the
payload, so the signature covers what it stores. ``evidence_id`` = ``sha256`` of the canonical
envelope JSON, the id the sidecar returned to its caller.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Sequence

from certus.sidecar.evidence.records import LogRecord

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


def http_batch_body(records: Sequence[LogRecord]) -> bytes:
    body = {"decisions": [{"decision": r.payload, "envelope": r.envelope_dict} for r in records]}
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def parse_receipts(body: bytes) -> list[Receipt]:
    data = json.loads(body)
    if not isinstance(data, dict) or not isinstance(data.get("receipts"), list):
        raise ValueError("response has no receipts list")
    return [Receipt.from_dict(r) for r in data["receipts"]]
