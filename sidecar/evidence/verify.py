"""Offline verification of an evidence log directory.

Every record must: be a complete line holding a canonical DSSE envelope with the decision
payloadType; carry a signature by a trusted key that verifies over PAE; hold a valid decision whose
``key_id`` is that signer; have ``seq`` equal to its position in the chain (0, 1, 2, ... across the
segments in order) and ``prev_hash`` equal to the digest of the line before it (the genesis value
for seq 0). The first record that breaks any rule is named (segment file, line, seq) — an edit,
deletion, reordering, insertion or a record signed by another key all break one.

Trust: pass the public key(s) you trust (``key=``, ``--key``). Without one the keys recorded in the
log's own ``keys/`` directory are used, which proves internal consistency only (whoever can rewrite
the log can rewrite that directory too); the report says which was used.

Not detectable from the log alone: removal of the newest records (the chain is still valid up
to the cut). Compare the reported last evidence id with one held elsewhere (the integrity service).
"""

from __future__ import annotations

import base64
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from certus.sidecar.evidence.decision import GENESIS_PREV_HASH, DecisionError, IntegrityDecision
from certus.sidecar.evidence.records import RecordError, list_segments, parse_line, read_public_keys
from certus.sidecar.signing import SignatureError, VerifyKey, pae


@dataclass(frozen=True)
class BadRecord:
    segment: str  # segment file name
    line: int  # 1-based line number in that segment (0: the segment as a whole)
    seq: int | None  # the seq the record claims, when readable
    reason: str

    def __str__(self) -> str:
        seq = "?" if self.seq is None else str(self.seq)
        return f"{self.segment} line {self.line} (seq {seq}): {self.reason}"


@dataclass(frozen=True)
class VerifyReport:
    log_dir: str
    ok: bool
    records: int  # records that verified (all of them when ok)
    segments: int
    first_timestamp: str | None
    last_timestamp: str | None
    outcomes: dict[str, int]
    key_ids: tuple[str, ...]  # keys that signed the verified records
    trusted_key_ids: tuple[str, ...]
    key_source: str  # "given" or "log directory"
    last_seq: int  # -1 when empty
    last_evidence_id: str
    first_bad: BadRecord | None = None
    warnings: tuple[str, ...] = field(default_factory=tuple)

    def summary(self) -> str:
        lines = [
            f"log: {self.log_dir}",
            f"result: {'OK' if self.ok else 'FAILED'}",
            f"records verified: {self.records} in {self.segments} segment(s)",
            f"first timestamp: {self.first_timestamp or '-'}",
            f"last timestamp: {self.last_timestamp or '-'}",
            "outcomes: " + (", ".join(f"{k}={v}" for k, v in sorted(self.outcomes.items())) or "-"),
            "signed by: " + (", ".join(self.key_ids) or "-"),
            f"trusted keys ({self.key_source}): " + (", ".join(self.trusted_key_ids) or "-"),
            f"last seq: {self.last_seq}",
            f"last evidence id: {self.last_evidence_id or '-'}",
        ]
        lines += [f"warning: {w}" for w in self.warnings]
        if self.first_bad is not None:
            lines.append(f"FIRST BAD RECORD: {self.first_bad}")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "log_dir": self.log_dir,
            "ok": self.ok,
            "records": self.records,
            "segments": self.segments,
            "first_timestamp": self.first_timestamp,
            "last_timestamp": self.last_timestamp,
            "outcomes": dict(self.outcomes),
            "key_ids": list(self.key_ids),
            "trusted_key_ids": list(self.trusted_key_ids),
            "key_source": self.key_source,
            "last_seq": self.last_seq,
            "last_evidence_id": self.last_evidence_id,
            "first_bad": None
            if self.first_bad is None
            else {
                "segment": self.first_bad.segment,
                "line": self.first_bad.line,
                "seq": self.first_bad.seq,
                "reason": self.first_bad.reason,
            },
            "warnings": list(self.warnings),
        }


class NoTrustedKey(ValueError):
    pass


def verify_log(path: str | Path, key: VerifyKey | Sequence[VerifyKey] | None = None) -> VerifyReport:
    """Verify every record of the log in ``path``; stop at (and name) the first bad one."""
    log_dir = Path(path)
    if not log_dir.is_dir():
        raise FileNotFoundError(f"{log_dir}: not a directory")
    warnings: list[str] = []
    if key is None:
        keys = read_public_keys(log_dir)
        source = "log directory"
        if not keys:
            raise NoTrustedKey(f"{log_dir}: no key given and no keys/*.pub in the log directory")
        warnings.append("no key given: trusting the log's own keys/ directory (consistency only); pass --key")
    else:
        keys = [key] if isinstance(key, VerifyKey) else list(key)
        source = "given"
        if not keys:
            raise NoTrustedKey("an empty key list trusts nothing")
    trusted = {k.key_id: k for k in keys}

    segments = list_segments(log_dir)
    outcomes: Counter[str] = Counter()
    signers: dict[str, None] = {}
    first_ts: str | None = None
    last_ts: str | None = None
    expect_seq = 0
    prev_hash = GENESIS_PREV_HASH
    last_evidence_id = ""

    def report(first_bad: BadRecord | None) -> VerifyReport:
        return VerifyReport(
            log_dir=str(log_dir),
            ok=first_bad is None,
            records=expect_seq,
            segments=len(segments),
            first_timestamp=first_ts,
            last_timestamp=last_ts,
            outcomes=dict(outcomes),
            key_ids=tuple(signers),
            trusted_key_ids=tuple(trusted),
            key_source=source,
            last_seq=expect_seq - 1,
            last_evidence_id=last_evidence_id,
            first_bad=first_bad,
            warnings=tuple(warnings),
        )

    if not segments:
        return report(BadRecord("-", 0, None, "no segment files (segment-NNNNNN.jsonl) in the log directory"))
    numbers = [n for n, _ in segments]
    if numbers != list(range(numbers[0], numbers[0] + len(numbers))):
        warnings.append(f"segment numbers are not contiguous: {numbers}")

    for _number, seg in segments:
        data = seg.read_bytes()
        pos = 0
        line_no = 0
        while pos < len(data):
            line_no += 1
            nl = data.find(b"\n", pos)
            if nl < 0:
                return report(
                    BadRecord(seg.name, line_no, None, "incomplete last line (torn write; the sidecar truncates it on restart)")
                )
            raw = data[pos:nl]
            checked = _check_record(raw, seg, pos, line_no, expect_seq, prev_hash, trusted)
            if isinstance(checked, BadRecord):
                return report(checked)
            dec, evidence_id, signer = checked
            signers.setdefault(signer, None)
            outcomes[dec.outcome] += 1
            if first_ts is None:
                first_ts = dec.timestamp
            last_ts = dec.timestamp
            prev_hash = evidence_id
            last_evidence_id = evidence_id
            expect_seq += 1
            pos = nl + 1
    return report(None)


def _check_record(
    raw: bytes,
    seg: Path,
    offset: int,
    line_no: int,
    expect_seq: int,
    prev_hash: str,
    trusted: dict[str, VerifyKey],
) -> BadRecord | tuple[IntegrityDecision, str, str]:
    def bad(reason: str, seq: int | None = None) -> BadRecord:
        return BadRecord(seg.name, line_no, seq, reason)

    try:
        rec = parse_line(raw, seg, offset, line_no)
    except RecordError as exc:
        seq = _claimed_seq(raw)
        return bad(f"malformed record: {exc}", seq)
    env = rec.envelope
    if not env.signatures:
        return bad("envelope has no signature", rec.seq)
    message = pae(env.payload_type, env.payload)
    signer = ""
    for keyid, sig in env.signatures:
        k = trusted.get(keyid)
        if k is None:
            continue
        try:
            k.verify(message, sig)
        except SignatureError:
            return bad(f"signature by {keyid} does not verify (record was altered)", rec.seq)
        signer = keyid
        break
    if not signer:
        ids = ", ".join(k for k, _ in env.signatures)
        return bad(f"not signed by a trusted key (signed by {ids})", rec.seq)
    try:
        dec = IntegrityDecision.from_payload(rec.payload)
    except DecisionError as exc:
        return bad(f"invalid decision payload: {exc}", rec.seq)
    if dec.key_id != signer:
        return bad(f"payload key_id {dec.key_id} differs from signer {signer}", rec.seq)
    if rec.seq != expect_seq:
        if rec.seq > expect_seq:
            what = f"records {expect_seq}..{rec.seq - 1} missing or out of order"
        else:
            what = "out of order, duplicated or inserted"
        return bad(f"seq {rec.seq}, expected {expect_seq} ({what})", rec.seq)
    if dec.prev_hash != prev_hash:
        return bad(f"prev_hash {dec.prev_hash} does not match the previous record's digest {prev_hash}", rec.seq)
    return dec, rec.evidence_id, signer


def _claimed_seq(raw: bytes) -> int | None:
    """Best effort: the seq a damaged record claims, for the message."""
    try:
        env = json.loads(raw)
        payload = json.loads(base64.b64decode(env["payload"]))
        seq = payload.get("seq")
        return seq if isinstance(seq, int) and not isinstance(seq, bool) else None
    except Exception:  # noqa: BLE001 - any damage means "unknown"
        return None
