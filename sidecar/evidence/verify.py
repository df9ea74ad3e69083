"""Offline verification of an evidence log directory.

Every record must: be a complete line holding a canonical DSSE envelope with the decision
payloadType; carry a signature by a trusted key that verifies over PAE; hold a valid decision whose
``key_id`` is that signer; have ``seq`` equal to its position in the chain (0, 1, 2, ... across the
segments in order) and ``prev_hash`` equal to the digest of the line before it (the genesis value
for seq 0). The first record that breaks any rule is named (segment file, line, seq) — an edit,
deletion, reordering, insertion or a record signed by another key all break one.

Key rotation: the trusted keys are a keyring's roots; each rotation record in ``rotations.jsonl``
signed by a trusted key extends trust to the next key from its ``effective_seq`` on and retires the
old key there, so a record signed by a key outside its epoch fails.

Checkpoints: every signed checkpoint in ``checkpoints.jsonl`` must verify with a key of the
keyring, carry the log's one origin, and its root hash must be the Merkle root (RFC 9162) of the
first ``size`` verified records. A checkpoint larger than the log proves records were removed from
the end, which the chain alone cannot show.

Trust: pass the public key(s) you trust (``key=``, ``--key``). Without one the keys recorded in the
log's own ``keys/`` directory are used, which proves internal consistency only (whoever can rewrite
the log can rewrite that directory too); the report says which was used.

Not detectable from the log alone: removal of the newest records together with the checkpoints
that cover them. The integrity service holds the checkpoints it was sent and refuses one that is
not consistent with them; compare the reported last checkpoint with the one it holds.
"""

from __future__ import annotations

import base64
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from certus.sidecar.evidence.checkpoint import (
    CHECKPOINTS_FILE,
    Checkpoint,
    CheckpointError,
    CheckpointStore,
    open_checkpoint,
)
from certus.sidecar.evidence.decision import GENESIS_PREV_HASH, DecisionError, IntegrityDecision
from certus.sidecar.evidence.keyring import ROTATIONS_FILE, Keyring, KeyringError, load_rotations
from certus.sidecar.evidence.merkle import Frontier, leaf_hash
from certus.sidecar.evidence.records import RecordError, list_segments, parse_line, read_public_keys
from certus.sidecar.signing import VerifyKey


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
    checkpoints: int = 0  # signed checkpoints that verified
    checkpoint_size: int = 0  # tree size of the newest one
    checkpoint_root: str = ""  # its root hash (base64), to compare with the integrity service's
    origin: str = ""
    tree_root: str = ""  # Merkle root (base64) over all verified records
    rotations: tuple[str, ...] = ()  # "old -> new at seq N"

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
            f"merkle root: {self.tree_root or '-'} (tree size {self.records})",
            f"checkpoints verified: {self.checkpoints}"
            + (f", newest: size {self.checkpoint_size} root {self.checkpoint_root} origin {self.origin}" if self.checkpoints else ""),
            f"records after the newest checkpoint: {self.records - self.checkpoint_size}",
        ]
        lines += [f"key rotation: {r}" for r in self.rotations]
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
            "checkpoints": self.checkpoints,
            "checkpoint_size": self.checkpoint_size,
            "checkpoint_root": self.checkpoint_root,
            "origin": self.origin,
            "tree_root": self.tree_root,
            "rotations": list(self.rotations),
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
    ring = Keyring(keys)
    rotation_error: BadRecord | None = None
    try:
        for n, env in enumerate(load_rotations(log_dir), start=1):
            try:
                ring.apply(env)
            except KeyringError as exc:
                rotation_error = BadRecord(ROTATIONS_FILE, n, None, str(exc))
                break
    except KeyringError as exc:
        rotation_error = BadRecord(ROTATIONS_FILE, 0, None, str(exc))
    store = CheckpointStore(log_dir)
    entries = list(store)
    wanted = {d.get("size") for d, _ in entries}
    roots: dict[int, bytes] = {}
    frontier = Frontier()

    segments = list_segments(log_dir)
    outcomes: Counter[str] = Counter()
    signers: dict[str, None] = {}
    first_ts: str | None = None
    last_ts: str | None = None
    expect_seq = 0
    prev_hash = GENESIS_PREV_HASH
    last_evidence_id = ""

    def report(first_bad: BadRecord | None) -> VerifyReport:
        verified: list[Checkpoint] = []
        if first_bad is None:
            first_bad = _check_checkpoints(entries, ring, roots, expect_seq, verified)
        newest = verified[-1] if verified else None
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
            checkpoints=len(verified),
            checkpoint_size=newest.size if newest else 0,
            checkpoint_root=base64.b64encode(newest.root).decode() if newest else "",
            origin=newest.origin if newest else "",
            tree_root=base64.b64encode(frontier.root()).decode() if expect_seq else "",
            rotations=tuple(f"{r.old_key_id} -> {r.new_key.key_id} at seq {r.effective_seq}" for r in ring.rotations),
        )

    if rotation_error is not None:
        return report(rotation_error)

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
            checked = check_record(raw, seg, pos, line_no, expect_seq, prev_hash, ring)
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
            frontier.append(leaf_hash(raw))
            if expect_seq in wanted:
                roots[expect_seq] = frontier.root()
            pos = nl + 1
    return report(None)


def check_record(
    raw: bytes,
    seg: Path,
    offset: int,
    line_no: int,
    expect_seq: int,
    prev_hash: str,
    ring: Keyring,
) -> BadRecord | tuple[IntegrityDecision, str, str]:
    def bad(reason: str, seq: int | None = None) -> BadRecord:
        return BadRecord(seg.name, line_no, seq, reason)

    try:
        rec = parse_line(raw, seg, offset, line_no)
    except RecordError as exc:
        seq = _claimed_seq(raw)
        return bad(f"malformed record: {exc}", seq)
    signer, error = ring.signer(rec.envelope, rec.seq)
    if error:
        return bad(error, rec.seq)
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


def _check_checkpoints(
    entries: list[tuple[dict[str, Any], int]],
    ring: Keyring,
    roots: dict[int, bytes],
    records: int,
    verified: list[Checkpoint],
) -> BadRecord | None:
    """Each checkpoint: signed by a key of its epoch, one origin, never shrinking, its root the
    Merkle root of the first ``size`` verified records. Those that pass go in ``verified``."""
    origin: str | None = None
    last_size = 0
    for d, n in entries:
        def bad(reason: str) -> BadRecord:
            return BadRecord(CHECKPOINTS_FILE, n, None, reason)

        note, size = d.get("note"), d.get("size")
        if not isinstance(note, str) or isinstance(size, bool) or not isinstance(size, int):
            return bad("not a checkpoint entry")
        try:
            cp = open_checkpoint(note, ring.keys_for_checkpoint(size), origin=origin)
        except CheckpointError as exc:
            return bad(f"checkpoint of size {size}: {exc}")
        if cp.size != size:
            return bad(f"size field {size} differs from the signed tree size {cp.size}")
        if cp.size < last_size:
            return bad(f"tree size {cp.size} is smaller than an earlier checkpoint's {last_size}")
        if cp.size > records:
            return bad(
                f"checkpoint signs a tree of {cp.size} records but the log holds {records}: "
                f"records from seq {records} on were removed"
            )
        if roots.get(cp.size) != cp.root:
            return bad(f"root hash of tree size {cp.size} differs from the records' Merkle root (records changed or forked)")
        origin, last_size = cp.origin, cp.size
        verified.append(cp)
    return None
