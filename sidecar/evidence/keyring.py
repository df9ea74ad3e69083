"""Key epochs of the evidence log: signed rotation records and the keyring that follows them.

A rotation retires the signing key at ``effective_seq``: records ``< effective_seq`` are signed by
the old key, records ``>= effective_seq`` by the new one. The rotation record is a DSSE envelope
(payloadType ``application/vnd.certus.key-rotation+json``) signed by the **old** key, naming the
new key id and public key, the seq where it takes over and the evidence id of the last record the
old key signed, so it is pinned to one place in the chain. Rotation records are kept in
``rotations.jsonl`` beside the segments (one canonical envelope per line) and forwarded to the
integrity service with the checkpoint that marks the boundary (signed by both keys).

:class:`Keyring` starts from the keys a verifier trusts (its roots) and extends trust along
rotation records signed by a key it already trusts: an auditor needs only the first public key.
The epoch rules live in :class:`certus.client.transparency.Keyring` (the standalone verifier's).
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

from certus.client import transparency
from certus.client.transparency import ROTATION_PAYLOAD_TYPE, ProofError
from certus.sidecar.evidence.records import append_line, cut_torn_line
from certus.sidecar.signing import Envelope, SignatureError, SigningKey, VerifyKey, canonical_json, pae, sign_envelope

__all__ = ["ROTATION_PAYLOAD_TYPE", "ROTATIONS_FILE", "Keyring", "KeyringError", "Rotation", "make_rotation"]

ROTATIONS_FILE = "rotations.jsonl"


KeyringError = ProofError  # a rotation record that is malformed, not signed by a trusted key, or out of order


@dataclass(frozen=True)
class Rotation:
    old_key_id: str
    new_key: VerifyKey
    effective_seq: int
    prev_evidence_id: str  # digest of record effective_seq - 1 ("" when the log was empty)
    timestamp: str
    envelope: Envelope

    @property
    def line(self) -> bytes:
        return self.envelope.to_json()


def make_rotation(old: SigningKey, new: VerifyKey, effective_seq: int, prev_evidence_id: str, timestamp: str) -> Rotation:
    payload = {
        "type": "key_rotation",
        "old_key_id": old.key_id,
        "new_key_id": new.key_id,
        "new_public_key": new.to_base64(),
        "effective_seq": effective_seq,
        "prev_evidence_id": prev_evidence_id,
        "timestamp": timestamp,
    }
    env = sign_envelope(old, ROTATION_PAYLOAD_TYPE, canonical_json(payload))
    return Rotation(old.key_id, new, effective_seq, prev_evidence_id, timestamp, env)


class Keyring:
    """The client's :class:`certus.client.transparency.Keyring` (one implementation of the epoch
    rules) over the sidecar's key and envelope types."""

    def __init__(self, roots: Iterable[VerifyKey]) -> None:
        roots = list(roots)
        self._keys = {k.key_id: k for k in roots}
        self._ring = transparency.Keyring([k.public_bytes for k in roots])
        self.rotations: list[Rotation] = []

    def apply(self, env: Envelope) -> Rotation:
        """Verify a rotation record against the keyring and follow it (idempotent)."""
        before = len(self._ring.rotations)
        p = self._ring.apply(env.to_json_dict())
        new = VerifyKey(base64.b64decode(p["new_public_key"]))
        rot = Rotation(p["old_key_id"], new, p["effective_seq"], str(p.get("prev_evidence_id", "")), str(p.get("timestamp", "")), env)
        if len(self._ring.rotations) > before:
            self._keys[new.key_id] = new
            self.rotations.append(rot)
        return rot

    def key_for(self, key_id: str, seq: int) -> VerifyKey | None:
        """The key ``key_id`` if it may sign record ``seq``."""
        return self._keys[key_id] if self._ring.key_for(key_id, seq) is not None else None

    def epoch(self, key_id: str) -> tuple[int, int | None] | None:
        return self._ring.epoch(key_id)

    def signer(self, env: Envelope, seq: int) -> tuple[str, str]:
        """``(key id, "")`` of the key that may sign record ``seq`` and signed ``env``, or
        ``("", why not)``: no signature, a key outside its epoch, a signature that does not
        verify, no trusted key at all."""
        if not env.signatures:
            return "", "envelope has no signature"
        message = pae(env.payload_type, env.payload)
        for keyid, sig in env.signatures:
            key = self.key_for(keyid, seq)
            if key is None:
                epoch = self.epoch(keyid)
                if epoch is not None:
                    start, end = epoch
                    when = f"retired at seq {end}" if end is not None and seq >= end else f"valid from seq {start}"
                    return "", f"signed by {keyid} outside its key epoch ({when})"
                continue
            try:
                key.verify(message, sig)
            except SignatureError:
                return "", f"bad signature: the signature by {keyid} does not verify (record was altered)"
            return keyid, ""
        return "", "not signed by a trusted key (signed by " + ", ".join(k for k, _ in env.signatures) + ")"

    def keys_for_checkpoint(self, size: int) -> list[VerifyKey]:
        return [self._keys[transparency.key_id_for(b)] for b in self._ring.keys_for_checkpoint(size)]

    @property
    def keys(self) -> list[VerifyKey]:
        return list(self._keys.values())

    @property
    def retired(self) -> dict[str, int]:
        return self._ring.retired


def load_rotations(log_dir: Path) -> list[Envelope]:
    """The rotation records of a log directory, in order (a torn last line is ignored)."""
    path = Path(log_dir) / ROTATIONS_FILE
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    out = []
    for n, raw in enumerate(data.split(b"\n")[:-1], start=1):
        try:
            out.append(Envelope.from_json(raw))
        except SignatureError as exc:
            raise KeyringError(f"{ROTATIONS_FILE} line {n}: {exc}") from exc
    return out


def append_rotation(log_dir: Path, rot: Rotation) -> None:
    """Append and fsync (before the new key signs anything)."""
    path = Path(log_dir) / ROTATIONS_FILE
    cut_torn_line(path)  # a torn line from a crash mid-append
    append_line(path, rot.line)


def keyring_for(log_dir: Path, roots: Sequence[VerifyKey]) -> Keyring:
    """``roots`` extended along the log's rotation records."""
    ring = Keyring(roots)
    for env in load_rotations(log_dir):
        ring.apply(env)
    return ring
