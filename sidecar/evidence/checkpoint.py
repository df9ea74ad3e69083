"""Signed checkpoints of the evidence log's Merkle tree: C2SP ``tlog-checkpoint`` in a C2SP
``signed-note``, signed with the sidecar's Ed25519 key.

A checkpoint note (https://c2sp.org/tlog-checkpoint, https://c2sp.org/signed-note)::

    <origin>
    <tree size, decimal>
    <root hash, base64>

    — <key name> <base64(key hash[4] || Ed25519 signature[64])>

The signature covers the note text (the three lines with their newlines). The key name is the
origin; the key hash is the first 4 bytes of ``SHA-256(name || "\\n" || 0x01 || public key)``, so a
rotated key signs under the same name with another hash and a verifier picks the key by hash.
``vkey`` strings (``<name>+<hash hex>+<base64(0x01 || public key)>``) are what Go's
``golang.org/x/mod/sumdb/note`` and other note verifiers take.

:class:`CheckpointStore` is ``checkpoints.jsonl`` beside the segments: one line per checkpoint
with the note and the frontier of the tree at that size (so a restart resumes the tree without
re-hashing the whole log; the frontier is trusted only when its root is the signed root).
"""

from __future__ import annotations

import base64
import collections
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Sequence

from certus.client.transparency import (
    ALG_ED25519,
    HASH_SIZE,
    SIG_PREFIX,
    Checkpoint,
    ProofError,
    note_key_hash,
)
from certus.client.transparency import open_checkpoint as _open_checkpoint
from certus.sidecar.evidence.merkle import Frontier
from certus.sidecar.evidence.records import append_line, cut_torn_line, read_last_line
from certus.sidecar.signing import SigningKey, VerifyKey

CHECKPOINTS_FILE = "checkpoints.jsonl"

CheckpointError = ProofError  # a note or checkpoint that is malformed or does not verify


def vkey(name: str, key: VerifyKey) -> str:
    """The signed-note verifier key string for ``key`` under ``name``."""
    h = note_key_hash(name, key.public_bytes).hex()
    return f"{name}+{h}+" + base64.b64encode(bytes([ALG_ED25519]) + key.public_bytes).decode()


def _valid_name(name: str) -> bool:
    return bool(name) and not any(c.isspace() or c == "+" for c in name)


def body_text(origin: str, size: int, root: bytes) -> str:
    return f"{origin}\n{size}\n{base64.b64encode(root).decode()}\n"


def sign_note(text: str, name: str, keys: Sequence[SigningKey]) -> str:
    """A signed note: ``text`` (ending in a newline), a blank line, one signature line per key."""
    if not text.endswith("\n") or "\n\n" in text:
        raise CheckpointError("note text must end with a newline and hold no blank line")
    lines = []
    for key in keys:
        blob = note_key_hash(name, key.verify_key.public_bytes) + key.sign(text.encode())
        lines.append(f"{SIG_PREFIX}{name} {base64.b64encode(blob).decode()}\n")
    return text + "\n" + "".join(lines)


def sign_checkpoint(origin: str, size: int, root: bytes, keys: Sequence[SigningKey]) -> Checkpoint:
    """A checkpoint note signed by each of ``keys`` (one normally; old and new at a key rotation)."""
    if not _valid_name(origin):
        raise CheckpointError(f"origin {origin!r}: must be non-empty without spaces or '+'")
    if len(root) != HASH_SIZE or size < 0:
        raise CheckpointError("a checkpoint needs a size >= 0 and a 32-byte root")
    note = sign_note(body_text(origin, size, root), origin, keys)
    return Checkpoint(origin, size, root, note, tuple(k.key_id for k in keys))


def open_checkpoint(note: str, keys: Iterable[VerifyKey], *, origin: str | None = None) -> Checkpoint:
    """Parse a checkpoint note and verify it against the sidecar's keys (see the client's
    :func:`certus.client.transparency.open_checkpoint`)."""
    return _open_checkpoint(note, [k.public_bytes for k in keys], origin=origin)


@dataclass(frozen=True)
class StoredCheckpoint:
    checkpoint: Checkpoint
    frontier: Frontier


class CheckpointStore:
    """``checkpoints.jsonl`` in the log directory (append-only; a torn last line is ignored)."""

    def __init__(self, log_dir: Path) -> None:
        self.path = Path(log_dir) / CHECKPOINTS_FILE

    def __iter__(self) -> Iterator[tuple[dict[str, object], int]]:
        """Raw entries with their line numbers (unverified)."""
        try:
            f = self.path.open("rb")
        except FileNotFoundError:
            return
        with f:
            for n, raw in enumerate(f, start=1):
                if not raw.endswith(b"\n"):
                    return
                try:
                    d = json.loads(raw)
                except ValueError:
                    d = {}
                yield (d if isinstance(d, dict) else {}), n

    def load(self, keys: Iterable[VerifyKey], *, origin: str | None = None) -> list[StoredCheckpoint]:
        """Every checkpoint, verified (signature by one of ``keys``, frontier root = signed root,
        one origin)."""
        keys = list(keys)
        out: list[StoredCheckpoint] = []
        for d, n in self:
            out.append(self._entry(d, n, keys, origin))
            origin = out[-1].checkpoint.origin
        return out

    def tail(self, keys: Iterable[VerifyKey], count: int, *, at_most: int | None = None) -> list[StoredCheckpoint]:
        """The newest ``count`` checkpoints (of at most ``at_most`` records each), verified, oldest first."""
        picked: collections.deque[tuple[dict[str, object], int]] = collections.deque(maxlen=count)
        for d, n in self:
            size = d.get("size")
            if at_most is None or (isinstance(size, int) and size <= at_most):
                picked.append((d, n))
        keys = list(keys)
        return [self._entry(d, n, keys, None) for d, n in picked]

    def last(self, keys: Iterable[VerifyKey], *, at_most: int | None = None) -> StoredCheckpoint | None:
        """The newest checkpoint (of at most ``at_most`` records), verified; None if there is none."""
        found = self.tail(keys, 1, at_most=at_most)
        return found[-1] if found else None

    def newest(self, keys: Iterable[VerifyKey]) -> StoredCheckpoint | None:
        """The last complete line, verified, without reading the file from the start (a log that
        grows for months has a checkpoint every few seconds); None if there is none."""
        last = read_last_line(self.path) if self.path.exists() else None
        if last is None:
            return None
        try:
            d = json.loads(last[0])
        except ValueError as exc:
            raise CheckpointError(f"{self.path.name} last line: not JSON ({exc})") from exc
        return self._entry(d if isinstance(d, dict) else {}, last[2], list(keys), None)

    def _entry(self, d: dict[str, object], n: int, keys: list[VerifyKey], origin: str | None) -> StoredCheckpoint:
        where = f"{self.path.name} line {n}"
        note, nodes = d.get("note"), d.get("frontier")
        if not isinstance(note, str) or not isinstance(nodes, list) or not all(isinstance(x, str) for x in nodes):
            raise CheckpointError(f"{where}: not a checkpoint entry")
        try:
            cp = open_checkpoint(note, keys, origin=origin)
            frontier = Frontier(cp.size, [base64.b64decode(x, validate=True) for x in nodes])
        except ValueError as exc:
            raise CheckpointError(f"{where}: {exc}") from exc
        if d.get("size") != cp.size:
            raise CheckpointError(f"{where}: size field {d.get('size')!r} differs from the signed size {cp.size}")
        if frontier.root() != cp.root:
            raise CheckpointError(f"{where}: stored frontier does not hash to the signed root")
        return StoredCheckpoint(cp, frontier)

    def append(self, cp: Checkpoint, frontier: Frontier) -> None:
        """Append and fsync (a checkpoint that was forwarded must survive a crash)."""
        entry = {"note": cp.note, "size": cp.size, "frontier": [base64.b64encode(h).decode() for h in frontier.nodes]}
        append_line(self.path, json.dumps(entry, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode())

    def repair(self) -> int:
        """Cut a torn last line (crash mid-append); returns the bytes dropped."""
        return cut_torn_line(self.path)
