"""Ed25519 keys and DSSE envelopes (https://github.com/secure-systems-lab/dsse), with PyNaCl.

The signature covers DSSE's pre-authentication encoding
``PAE(type, body) = "DSSEv1" SP len(type) SP type SP len(body) SP body``, so any language with an
Ed25519 library can verify an envelope. Key files hold base64 of the raw 32-byte seed (private,
mode 0600) or the raw 32-byte public key. Keys never appear in ``repr`` or logs.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import nacl.exceptions
import nacl.signing

DECISION_PAYLOAD_TYPE = "application/vnd.certus.decision+json"
MANIFEST_PAYLOAD_TYPE = "application/vnd.certus.manifest+json"


class SignatureError(Exception):
    """An envelope or key that does not verify."""


def canonical_json(obj: Any) -> bytes:
    """Sorted keys, no insignificant whitespace, UTF-8 (not ASCII-escaped)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode(
        "utf-8"
    )


def pae(payload_type: str, payload: bytes) -> bytes:
    t = payload_type.encode("utf-8")
    return b"DSSEv1 %d %s %d %s" % (len(t), t, len(payload), payload)


def key_id_for(public_key: bytes) -> str:
    """Stable id of a public key: ``ed25519:`` + the first 16 hex chars of its SHA-256."""
    return "ed25519:" + hashlib.sha256(public_key).hexdigest()[:16]


class VerifyKey:
    def __init__(self, public_key: bytes) -> None:
        if len(public_key) != 32:
            raise ValueError(f"an Ed25519 public key is 32 bytes, got {len(public_key)}")
        self._key = nacl.signing.VerifyKey(public_key)
        self.public_bytes = bytes(public_key)
        self.key_id = key_id_for(self.public_bytes)

    @classmethod
    def from_file(cls, path: str | Path) -> "VerifyKey":
        return cls(base64.b64decode(Path(path).read_text().strip(), validate=True))

    def to_base64(self) -> str:
        return base64.b64encode(self.public_bytes).decode()

    def verify(self, message: bytes, signature: bytes) -> None:
        try:
            self._key.verify(message, signature)
        except nacl.exceptions.BadSignatureError as exc:
            raise SignatureError(f"bad signature for key {self.key_id}") from exc

    def __repr__(self) -> str:
        return f"VerifyKey({self.key_id})"


class SigningKey:
    def __init__(self, seed: bytes) -> None:
        if len(seed) != 32:
            raise ValueError(f"an Ed25519 seed is 32 bytes, got {len(seed)}")
        self._key = nacl.signing.SigningKey(seed)
        self.verify_key = VerifyKey(bytes(self._key.verify_key))
        self.key_id = self.verify_key.key_id

    @classmethod
    def generate(cls) -> "SigningKey":
        return cls(os.urandom(32))

    @classmethod
    def from_file(cls, path: str | Path) -> "SigningKey":
        return cls(base64.b64decode(Path(path).read_text().strip(), validate=True))

    def write(self, path: str | Path, *, overwrite: bool = False) -> Path:
        """Write the seed (mode 0600) and ``<path>.pub``; refuse to overwrite an existing key."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if overwrite else os.O_EXCL)
        try:
            fd = os.open(path, flags, 0o600)
        except FileExistsError as exc:
            raise FileExistsError(f"{path} exists; refusing to overwrite a signing key") from exc
        with os.fdopen(fd, "w") as f:
            f.write(base64.b64encode(bytes(self._key)).decode() + "\n")
        os.chmod(path, 0o600)
        Path(str(path) + ".pub").write_text(self.verify_key.to_base64() + "\n")
        return path

    def sign(self, message: bytes) -> bytes:
        return self._key.sign(message).signature

    def __repr__(self) -> str:
        return f"SigningKey({self.key_id})"


def load_or_create(path: str | Path) -> tuple[SigningKey, bool]:
    """The development default: use the key at ``path``, generating one if none exists."""
    path = Path(path)
    if path.exists():
        return SigningKey.from_file(path), False
    key = SigningKey.generate()
    try:
        key.write(path)
    except FileExistsError:  # another process won the race
        return SigningKey.from_file(path), False
    return key, True


@dataclass(frozen=True, slots=True)
class Envelope:
    payload_type: str
    payload: bytes
    signatures: tuple[tuple[str, bytes], ...]  # (keyid, sig)

    def to_json_dict(self) -> dict[str, Any]:
        return {
            "payloadType": self.payload_type,
            "payload": base64.b64encode(self.payload).decode(),
            "signatures": [{"keyid": k, "sig": base64.b64encode(s).decode()} for k, s in self.signatures],
        }

    def to_json(self) -> bytes:
        return canonical_json(self.to_json_dict())

    @classmethod
    def from_json_dict(cls, d: Mapping[str, Any]) -> "Envelope":
        try:
            return cls(
                payload_type=str(d["payloadType"]),
                payload=base64.b64decode(d["payload"], validate=True),
                signatures=tuple(
                    (str(s["keyid"]), base64.b64decode(s["sig"], validate=True)) for s in d["signatures"]
                ),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise SignatureError(f"malformed DSSE envelope: {exc}") from exc

    @classmethod
    def from_json(cls, raw: bytes | str) -> "Envelope":
        try:
            d = json.loads(raw)
        except ValueError as exc:
            raise SignatureError(f"malformed DSSE envelope: {exc}") from exc
        if not isinstance(d, dict):
            raise SignatureError("malformed DSSE envelope: not an object")
        return cls.from_json_dict(d)

    def digest(self) -> str:
        """``sha256:<hex>`` of the canonical envelope JSON: the evidence id and the next prev_hash."""
        return "sha256:" + hashlib.sha256(self.to_json()).hexdigest()


def sign_envelope(key: SigningKey, payload_type: str, payload: bytes) -> Envelope:
    return Envelope(payload_type, payload, ((key.key_id, key.sign(pae(payload_type, payload))),))


def verify_envelope(env: Envelope, keys: Mapping[str, VerifyKey] | VerifyKey, payload_type: str | None = None) -> bytes:
    """Return the payload when a signature by a known key verifies; raise SignatureError otherwise."""
    if payload_type is not None and env.payload_type != payload_type:
        raise SignatureError(f"payloadType {env.payload_type!r}, expected {payload_type!r}")
    if isinstance(keys, VerifyKey):
        keys = {keys.key_id: keys}
    if not env.signatures:
        raise SignatureError("envelope has no signature")
    message = pae(env.payload_type, env.payload)
    for keyid, sig in env.signatures:
        key = keys.get(keyid)
        if key is None:
            continue
        key.verify(message, sig)
        return env.payload
    raise SignatureError("no signature by a trusted key (keyids: " + ", ".join(k for k, _ in env.signatures) + ")")
