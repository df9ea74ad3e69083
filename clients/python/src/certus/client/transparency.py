"""Check one Certus decision without the log: its signature, its inclusion proof and the signed
checkpoint it leads to (RFC 9162 Merkle hashing, C2SP signed notes). Also checks a consistency
proof between two checkpoints (the later tree extends the earlier one: nothing was removed).

This module is the single implementation of the checks: the sidecar's ``verify``, its reference
integrity receiver and this standalone verifier all call it. It needs only the standard library
and PyNaCl for Ed25519 (``pip install 'certus-client[verify]'``)::

    python -m certus.client.transparency inclusion proof.json --key signing.key.pub
    python -m certus.client.transparency consistency consistency.json --key signing.key.pub

A key file holds base64 of the raw 32-byte Ed25519 public key (``--key`` repeatable: a keyring).
Exit 0 and a JSON report when everything verifies; exit 1 and the first failure otherwise.

Inclusion bundle (written by ``certus-sidecar prove inclusion``)::

    {"format": "certus-inclusion-proof/v1", "record": "<the log line: canonical DSSE envelope JSON>",
     "evidence_id": "sha256:...", "leaf_index": seq, "tree_size": n,
     "inclusion_path": ["<base64 hash>", ...], "checkpoint": "<signed note>",
     "key_rotations": [<rotation record envelopes, when the log rotated keys>]}

Consistency bundle (``certus-sidecar prove consistency``)::

    {"format": "certus-consistency-proof/v1", "old_checkpoint": "<note>",
     "new_checkpoint": "<note>", "consistency_path": ["<base64 hash>", ...], "key_rotations": [...]}

With ``key_rotations`` the trusted key(s) are roots of a :class:`Keyring`: a rotation record signed
by a trusted key makes the key it names trusted from its ``effective_seq`` on.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

HASH_SIZE = 32
EMPTY_ROOT = hashlib.sha256(b"").digest()
ALG_ED25519 = 0x01
SIG_PREFIX = "\u2014 "  # a signed-note signature line starts with an em dash and a space
DECISION_PAYLOAD_TYPE = "application/vnd.certus.decision+json"
ROTATION_PAYLOAD_TYPE = "application/vnd.certus.key-rotation+json"
INCLUSION_FORMAT = "certus-inclusion-proof/v1"
CONSISTENCY_FORMAT = "certus-consistency-proof/v1"
MAX_NOTE = 1 << 16


class ProofError(ValueError):
    """A proof, note or record that does not verify (the message says which check failed)."""


# ---- RFC 9162 §2.1 hashing and proof verification ---------------------------------------------


def leaf_hash(data: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def verify_inclusion(index: int, size: int, leaf: bytes, proof: Sequence[bytes], root: bytes) -> None:
    """RFC 9162 §2.1.3.2: raises :class:`ProofError` unless ``leaf`` is leaf ``index`` of the tree
    of ``size`` leaves whose root is ``root``."""
    if not 0 <= index < size:
        raise ProofError(f"leaf index {index} is not in a tree of size {size}")
    fn, sn, r = index, size - 1, leaf
    for p in proof:
        if sn == 0:
            raise ProofError("inclusion proof is longer than the tree is deep")
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ProofError("inclusion proof is shorter than the tree is deep")
    if r != root:
        raise ProofError("inclusion proof does not lead to the checkpoint's root hash")


def verify_consistency(old_size: int, new_size: int, old_root: bytes, new_root: bytes, proof: Sequence[bytes]) -> None:
    """RFC 9162 §2.1.4.2: raises :class:`ProofError` unless the tree with ``new_root`` extends the
    tree with ``old_root`` (append-only: no record of the old tree was changed or removed)."""
    if not 0 <= old_size <= new_size:
        raise ProofError(f"a tree of size {new_size} cannot extend one of size {old_size} (a rollback)")
    if old_size == new_size:
        if proof:
            raise ProofError("a proof between equal sizes must be empty")
        if old_root != new_root:
            raise ProofError(f"two different root hashes for tree size {new_size} (a forked log)")
        return
    if old_size == 0:
        if proof:
            raise ProofError("a proof from the empty tree must be empty")
        return
    if not proof:
        raise ProofError("empty consistency proof")
    path = list(proof)
    if old_size & (old_size - 1) == 0:  # a complete tree: its root is the proof's first node
        path.insert(0, old_root)
    fn, sn = old_size - 1, new_size - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            raise ProofError("consistency proof is too long")
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ProofError("consistency proof is too short")
    if fr != old_root:
        raise ProofError("consistency proof does not reproduce the old root hash (the old tree was changed)")
    if sr != new_root:
        raise ProofError("consistency proof does not reproduce the new root hash (the new tree does not extend the old)")


# ---- Ed25519, key ids, DSSE ----------------------------------------------------------------------


def ed25519_verify(public_key: bytes, message: bytes, signature: bytes) -> bool:
    try:
        import nacl.exceptions
        import nacl.signing
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise RuntimeError("Ed25519 needs PyNaCl: pip install 'certus-client[verify]'") from exc
    try:
        nacl.signing.VerifyKey(public_key).verify(message, signature)
    except (nacl.exceptions.BadSignatureError, ValueError):
        return False
    return True


def key_id_for(public_key: bytes) -> str:
    """The sidecar's key id: ``ed25519:`` + the first 16 hex chars of the key's SHA-256."""
    return "ed25519:" + hashlib.sha256(public_key).hexdigest()[:16]


def pae(payload_type: str, payload: bytes) -> bytes:
    t = payload_type.encode()
    return b"DSSEv1 %d %s %d %s" % (len(t), t, len(payload), payload)


def read_public_key(path: str | Path) -> bytes:
    raw = base64.b64decode(Path(path).read_text().strip(), validate=True)
    if len(raw) != 32:
        raise ValueError(f"{path}: an Ed25519 public key is 32 bytes, got {len(raw)}")
    return raw


def open_envelope(env: Any) -> tuple[str, bytes, list[tuple[str, bytes]]]:
    """``(payloadType, payload, [(keyid, sig)])`` of a DSSE envelope given as JSON text or dict."""
    try:
        d = json.loads(env) if isinstance(env, (str, bytes)) else env
        return (
            str(d["payloadType"]),
            base64.b64decode(d["payload"], validate=True),
            [(str(s["keyid"]), base64.b64decode(s["sig"], validate=True)) for s in d["signatures"]],
        )
    except (ValueError, KeyError, TypeError) as exc:
        raise ProofError(f"not a DSSE envelope: {exc}") from exc


# ---- key epochs -------------------------------------------------------------------------------


class Keyring:
    """Which Ed25519 key may sign which seq. Roots (the keys you trust) may sign every seq until a
    rotation record retires them; a rotation record signed by the retiring key (payloadType
    ``application/vnd.certus.key-rotation+json``) extends trust to the key it names from its
    ``effective_seq`` on. An auditor needs only the first public key."""

    def __init__(self, roots: Iterable[bytes]) -> None:
        self._epochs: dict[str, list[Any]] = {key_id_for(k): [k, 0, None] for k in roots}  # id -> [key, start, end]
        if not self._epochs:
            raise ProofError("a keyring needs at least one trusted key")
        self.rotations: list[dict[str, Any]] = []

    def apply(self, env: Any) -> dict[str, Any]:
        """Verify one rotation record (JSON text or dict) and follow it; idempotent."""
        payload_type, payload, sigs = open_envelope(env)
        if payload_type != ROTATION_PAYLOAD_TYPE:
            raise ProofError(f"rotation: payloadType {payload_type!r}, expected {ROTATION_PAYLOAD_TYPE!r}")
        try:
            p = json.loads(payload)
            old_id, new_id, seq = p["old_key_id"], p["new_key_id"], p["effective_seq"]
            new_key = base64.b64decode(p["new_public_key"], validate=True)
        except (ValueError, KeyError, TypeError) as exc:
            raise ProofError(f"rotation: malformed payload: {exc}") from exc
        if p in self.rotations:
            return p
        if len(new_key) != 32 or key_id_for(new_key) != new_id or isinstance(seq, bool) or not isinstance(seq, int) or seq < 0:
            raise ProofError("rotation: new_public_key, new_key_id or effective_seq is invalid")
        old = self._epochs.get(old_id)
        if old is None:
            raise ProofError(f"rotation from {old_id}, a key this keyring does not trust")
        sig = dict(sigs).get(old_id)
        if sig is None or not ed25519_verify(old[0], pae(payload_type, payload), sig):
            raise ProofError(f"rotation record is not validly signed by the retiring key {old_id}")
        if old[2] is not None:
            raise ProofError(f"{old_id} was already retired at seq {old[2]}")
        if seq < old[1]:
            raise ProofError(f"rotation at seq {seq} precedes {old_id}'s epoch (from seq {old[1]})")
        if new_id == old_id or any(r["new_key_id"] == new_id for r in self.rotations):
            raise ProofError(f"rotation to {new_id}, a key that already had an epoch")
        old[2] = seq
        self._epochs[new_id] = [new_key, seq, None]  # a root that is also rotated to starts here
        self.rotations.append(p)
        return p

    def key_for(self, key_id: str, seq: int) -> bytes | None:
        e = self._epochs.get(key_id)
        if e is None or seq < e[1] or (e[2] is not None and seq >= e[2]):
            return None
        return bytes(e[0])

    def epoch(self, key_id: str) -> tuple[int, int | None] | None:
        e = self._epochs.get(key_id)
        return None if e is None else (e[1], e[2])

    def keys_for_checkpoint(self, size: int) -> list[bytes]:
        """The key current at ``size``, and the retiring one for the checkpoint closing its epoch."""
        return [e[0] for e in self._epochs.values() if e[1] <= size and (e[2] is None or size <= e[2])]

    @property
    def keys(self) -> list[bytes]:
        return [e[0] for e in self._epochs.values()]

    @property
    def retired(self) -> dict[str, int]:
        return {k: e[2] for k, e in self._epochs.items() if e[2] is not None}


# ---- C2SP signed notes and tlog checkpoints -----------------------------------------------------


def note_key_hash(name: str, public_key: bytes) -> bytes:
    return hashlib.sha256(name.encode() + b"\n" + bytes([ALG_ED25519]) + public_key).digest()[:4]


def verify_note(note: str, name: str, public_keys: Iterable[bytes]) -> tuple[str, tuple[str, ...]]:
    """``(text, key ids that signed)``. At least one signature under ``name`` by one of the keys
    must verify and none by a known key may fail; signatures by unknown keys are ignored, as the
    signed-note spec says."""
    if not isinstance(note, str) or len(note) > MAX_NOTE:
        raise ProofError("a note is a string of at most 64 KiB")
    text, sep, sigs = note.rpartition("\n\n")
    if not sep or not sigs.endswith("\n"):
        raise ProofError("a note is its text, a blank line and signature lines ending in a newline")
    text += "\n"
    by_hash = {note_key_hash(name, k): k for k in public_keys}
    signers: list[str] = []
    for line in sigs[:-1].split("\n"):
        if not line.startswith(SIG_PREFIX):
            raise ProofError(f"not a signature line: {line[:40]!r}")
        key_name, _, b64 = line[len(SIG_PREFIX):].rpartition(" ")
        try:
            blob = base64.b64decode(b64, validate=True)
        except ValueError as exc:
            raise ProofError(f"note signature is not base64: {exc}") from exc
        if len(blob) < 5:
            raise ProofError("note signature line too short")
        key = by_hash.get(blob[:4]) if key_name == name else None
        if key is None:
            continue
        if not ed25519_verify(key, text.encode(), blob[4:]):
            raise ProofError(f"note signature by {key_id_for(key)} does not verify (the note was altered)")
        signers.append(key_id_for(key))
    if not signers:
        raise ProofError(f"note is not signed by a trusted key under the name {name!r}")
    return text, tuple(signers)


@dataclass(frozen=True)
class Checkpoint:
    origin: str
    size: int
    root: bytes
    note: str  # exactly as signed: text, blank line, signature lines
    signers: tuple[str, ...] = ()  # key ids whose signature verified

    def to_dict(self) -> dict[str, Any]:
        return {"origin": self.origin, "size": self.size, "root": base64.b64encode(self.root).decode(), "signed_by": list(self.signers)}


def open_checkpoint(note: str, public_keys: Iterable[bytes], *, origin: str | None = None) -> Checkpoint:
    """Parse a tlog checkpoint note and verify its signature (key name = the origin line)."""
    if not isinstance(note, str):
        raise ProofError("a checkpoint note is a string")
    name = note.split("\n", 1)[0]
    if origin is not None and name != origin:
        raise ProofError(f"checkpoint origin {name!r}, expected {origin!r}")
    text, signers = verify_note(note, name, public_keys)
    lines = text.split("\n")[:-1]
    if len(lines) < 3:
        raise ProofError("a checkpoint has an origin, a tree size and a root hash line")
    size_s, root_s = lines[1], lines[2]
    if not size_s.isdigit() or (size_s != "0" and size_s.startswith("0")):
        raise ProofError(f"tree size {size_s!r} is not a decimal number")
    try:
        root = base64.b64decode(root_s, validate=True)
    except ValueError as exc:
        raise ProofError(f"root hash is not base64: {exc}") from exc
    if len(root) != HASH_SIZE:
        raise ProofError(f"root hash is {len(root)} bytes, expected {HASH_SIZE}")
    return Checkpoint(name, int(size_s), root, note, signers)


# ---- bundles -------------------------------------------------------------------------------------


def _hashes(items: Any, what: str) -> list[bytes]:
    if not isinstance(items, list) or len(items) > 64:
        raise ProofError(f"{what}: a list of at most 64 base64 hashes")
    out = []
    for x in items:
        try:
            h = base64.b64decode(x, validate=True)
        except (ValueError, TypeError) as exc:
            raise ProofError(f"{what}: not base64: {exc}") from exc
        if len(h) != HASH_SIZE:
            raise ProofError(f"{what}: a hash of {len(h)} bytes")
        out.append(h)
    return out


def _int(d: dict[str, Any], name: str) -> int:
    v = d.get(name)
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        raise ProofError(f"{name}: a non-negative integer is required")
    return v


def verify_record(record: bytes, ring: Keyring) -> dict[str, Any]:
    """Check one log line's DSSE signature by the key of its seq's epoch; return the decision."""
    payload_type, payload, sigs = open_envelope(record)
    if payload_type != DECISION_PAYLOAD_TYPE:
        raise ProofError(f"record: payloadType {payload_type!r} is not a Certus decision")
    try:
        decision = json.loads(payload)
        seq = decision["seq"]
    except (ValueError, KeyError, TypeError) as exc:
        raise ProofError(f"record: payload is not a decision: {exc}") from exc
    for keyid, sig in sigs:
        key = ring.key_for(keyid, seq)
        if key is None:
            continue
        if not ed25519_verify(key, pae(payload_type, payload), sig):
            raise ProofError(f"record: signature by {keyid} does not verify (the decision was altered)")
        if decision.get("key_id") != keyid:
            raise ProofError("record: the decision's key_id is not its signer")
        return decision
    raise ProofError(f"record: not signed by a key trusted for seq {seq} (signed by " + ", ".join(k for k, _ in sigs) + ")")


def _keyring(bundle: dict[str, Any], public_keys: Sequence[bytes]) -> Keyring:
    ring = Keyring(public_keys)
    rotations = bundle.get("key_rotations", [])
    if not isinstance(rotations, list):
        raise ProofError("key_rotations: a list of rotation records")
    for env in rotations:
        ring.apply(env)
    return ring


def verify_inclusion_bundle(bundle: dict[str, Any], public_keys: Sequence[bytes]) -> dict[str, Any]:
    """All checks for one decision: record signature, evidence id, leaf index = seq, inclusion
    proof up to the checkpoint's root, checkpoint signature. Returns a report."""
    if not isinstance(bundle, dict) or bundle.get("format") != INCLUSION_FORMAT:
        raise ProofError(f"format: expected {INCLUSION_FORMAT!r}")
    record = bundle.get("record")
    if not isinstance(record, str):
        raise ProofError("record: the log line as a string is required")
    line = record.encode()
    evidence_id = "sha256:" + hashlib.sha256(line).hexdigest()
    if bundle.get("evidence_id") not in (None, evidence_id):
        raise ProofError(f"evidence_id: the record's digest is {evidence_id}, not {bundle.get('evidence_id')}")
    ring = _keyring(bundle, public_keys)
    decision = verify_record(line, ring)
    index, size = _int(bundle, "leaf_index"), _int(bundle, "tree_size")
    if decision.get("seq") != index:
        raise ProofError(f"leaf_index {index} is not the decision's seq {decision.get('seq')}")
    cp = open_checkpoint(bundle.get("checkpoint"), ring.keys_for_checkpoint(size))  # type: ignore[arg-type]
    if cp.size != size:
        raise ProofError(f"tree_size {size} is not the checkpoint's size {cp.size}")
    verify_inclusion(index, size, leaf_hash(line), _hashes(bundle.get("inclusion_path"), "inclusion_path"), cp.root)
    return {
        "verified": True,
        "evidence_id": evidence_id,
        "decision_id": decision.get("decision_id"),
        "outcome": decision.get("outcome"),
        "seq": index,
        "timestamp": decision.get("timestamp"),
        "signed_by": decision.get("key_id"),
        "checkpoint": cp.to_dict(),
    }


def checkpoint_size(note: str) -> int:
    """The tree size line of a checkpoint note (to pick the keys of its epoch before verifying)."""
    parts = note.split("\n", 2)
    if len(parts) < 3 or not parts[1].isdigit():
        raise ProofError("a checkpoint's second line is its tree size")
    return int(parts[1])


def verify_consistency_bundle(bundle: dict[str, Any], public_keys: Sequence[bytes]) -> dict[str, Any]:
    if not isinstance(bundle, dict) or bundle.get("format") != CONSISTENCY_FORMAT:
        raise ProofError(f"format: expected {CONSISTENCY_FORMAT!r}")
    ring = _keyring(bundle, public_keys)
    old_note, new_note = bundle.get("old_checkpoint"), bundle.get("new_checkpoint")
    if not isinstance(old_note, str) or not isinstance(new_note, str):
        raise ProofError("old_checkpoint and new_checkpoint: signed notes are required")
    sizes = [checkpoint_size(old_note), checkpoint_size(new_note)]
    old = open_checkpoint(old_note, ring.keys_for_checkpoint(sizes[0]))
    new = open_checkpoint(new_note, ring.keys_for_checkpoint(sizes[1]), origin=old.origin)
    verify_consistency(old.size, new.size, old.root, new.root, _hashes(bundle.get("consistency_path"), "consistency_path"))
    return {"verified": True, "old": old.to_dict(), "new": new.to_dict()}


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m certus.client.transparency", description=__doc__.split("\n\n")[0])
    ap.add_argument("kind", choices=("inclusion", "consistency"))
    ap.add_argument("bundle", help="proof bundle JSON file ('-' for stdin)")
    ap.add_argument("--key", action="append", required=True, metavar="PUB", help="trusted public key file (repeatable)")
    args = ap.parse_args(argv)
    try:
        keys = [read_public_key(p) for p in args.key]
        raw = sys.stdin.read() if args.bundle == "-" else Path(args.bundle).read_text()
        bundle = json.loads(raw)
        check = verify_inclusion_bundle if args.kind == "inclusion" else verify_consistency_bundle
        report = check(bundle, keys)
    except (OSError, ValueError) as exc:
        print(json.dumps({"verified": False, "error": str(exc)}))
        return 1
    print(json.dumps(report, indent=2, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
