"""On-disk layout of the evidence log, shared by the writer, the reader and the verifier.

A log directory holds ``segment-000001.jsonl``, ``segment-000002.jsonl``, ... Each line is one DSSE
envelope as canonical JSON followed by ``\\n``. The envelope's payload is the canonical JSON of an
:class:`~sidecar.evidence.decision.IntegrityDecision` including its ``seq``, ``prev_hash`` and
``key_id``. ``evidence_id`` = ``sha256:<hex>`` of the line without its newline (=
``Envelope.digest()``) and is the next record's ``prev_hash``. ``keys/<key id>.pub`` holds the
public key(s) that signed the log (base64 of the raw 32 bytes), for convenience — trust comes from
the key the verifier is given, not from this directory.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Iterator

from certus.sidecar.signing import DECISION_PAYLOAD_TYPE, Envelope, SignatureError, VerifyKey, canonical_json

SEGMENT_RE = re.compile(r"^segment-(\d{6,})\.jsonl$")
KEYS_DIR = "keys"


def segment_name(number: int) -> str:
    return f"segment-{number:06d}.jsonl"


def list_segments(log_dir: Path) -> list[tuple[int, Path]]:
    """``(number, path)`` of every segment file, in number order."""
    out = []
    for p in log_dir.iterdir() if log_dir.is_dir() else ():
        m = SEGMENT_RE.match(p.name)
        if m and p.is_file():
            out.append((int(m.group(1)), p))
    return sorted(out)


def line_digest(line: bytes) -> str:
    return "sha256:" + hashlib.sha256(line).hexdigest()


def key_file_name(key_id: str) -> str:
    return key_id.replace(":", "-") + ".pub"


def write_public_key(log_dir: Path, key: VerifyKey) -> Path:
    """Record the signing key's public half beside the log (idempotent, atomic, durable: synced
    before the first record it verifies; a file a crash left empty or torn is written again)."""
    kdir = log_dir / KEYS_DIR
    kdir.mkdir(parents=True, exist_ok=True)
    path = kdir / key_file_name(key.key_id)
    text = key.to_base64() + "\n"
    try:
        if path.read_text() == text:
            return path
    except (FileNotFoundError, UnicodeDecodeError):
        pass
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, text.encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dfd = os.open(kdir, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
    return path


def append_line(path: Path, line: bytes) -> None:
    """Append one line (``line`` + newline) to ``path`` and fsync it: the side files of the log
    (checkpoints, rotation records) and of the forwarder are durable before they are used."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        view = memoryview(line + b"\n")
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)


def try_lock(path: Path) -> int | None:
    """An exclusive, non-blocking ``flock`` on ``path`` (created if missing): its descriptor (the
    lock lives while it is open), or None when another process holds it."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def cut_torn_line(path: Path) -> int:
    """Truncate bytes after the last newline of ``path`` (a crash mid-append); the bytes dropped."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return 0
    end = data.rfind(b"\n") + 1
    if end == len(data):
        return 0
    with path.open("r+b") as f:
        f.truncate(end)
        os.fsync(f.fileno())
    return len(data) - end


def read_public_keys(log_dir: Path) -> list[VerifyKey]:
    kdir = log_dir / KEYS_DIR
    if not kdir.is_dir():
        return []
    return [VerifyKey.from_file(p) for p in sorted(kdir.glob("*.pub"))]


class RecordError(ValueError):
    """A log line that is not a well-formed evidence record."""


@dataclass(frozen=True)
class LogRecord:
    """One parsed line of the log. ``line`` is the canonical envelope JSON without newline."""

    seq: int
    evidence_id: str
    envelope: Envelope
    line: bytes
    payload: dict[str, Any]
    segment: Path
    offset: int  # byte offset of the line in its segment
    line_no: int  # 1-based line number in its segment

    @property
    def decision_id(self) -> str:
        return str(self.payload.get("decision_id", ""))

    @property
    def prev_hash(self) -> str:
        return str(self.payload.get("prev_hash", ""))

    @cached_property
    def envelope_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = json.loads(self.line)
        return d


def parse_line(line: bytes, segment: Path, offset: int, line_no: int) -> LogRecord:
    """Parse one line (without its newline): canonical envelope, decision payload, integer seq.

    Checks structure only — not the signature, not the chain (the verifier does those).
    """
    try:
        env = Envelope.from_json(line)
    except SignatureError as exc:
        raise RecordError(str(exc)) from exc
    if env.to_json() != line:
        raise RecordError("envelope is not in canonical form (bytes were changed)")
    if env.payload_type != DECISION_PAYLOAD_TYPE:
        raise RecordError(f"payloadType {env.payload_type!r}, expected {DECISION_PAYLOAD_TYPE!r}")
    try:
        payload = json.loads(env.payload)
    except ValueError as exc:
        raise RecordError(f"payload is not JSON: {exc}") from exc
    if not isinstance(payload, dict):
        raise RecordError("payload is not a JSON object")
    if canonical_json(payload) != env.payload:
        raise RecordError("payload is not canonical JSON")
    seq = payload.get("seq")
    if isinstance(seq, bool) or not isinstance(seq, int) or seq < 0:
        raise RecordError(f"payload seq {seq!r} is not a non-negative integer")
    return LogRecord(
        seq=seq,
        evidence_id=line_digest(line),
        envelope=env,
        line=line,
        payload=payload,
        segment=segment,
        offset=offset,
        line_no=line_no,
    )


def read_last_line(path: Path, block: int = 1 << 16) -> tuple[bytes, int, int] | None:
    """The last newline-terminated line of ``path`` (without newline), its offset and line number
    counted from the end (-1); ``None`` if the file holds no complete line. Bytes after the last
    newline (a torn write) are ignored."""
    size = path.stat().st_size
    if size == 0:
        return None
    with path.open("rb") as f:
        end = size
        # find the last newline
        buf = b""
        pos = size
        while pos > 0:
            step = min(block, pos)
            pos -= step
            f.seek(pos)
            buf = f.read(step) + buf
            nl = buf.rfind(b"\n")
            if nl >= 0:
                end = pos + nl  # offset of the last newline
                break
        else:
            return None
        # find the newline before it
        tail = buf[: end - pos]
        while True:
            prev = tail.rfind(b"\n")
            if prev >= 0:
                start = pos + prev + 1
                break
            if pos == 0:
                start = 0
                break
            step = min(block, pos)
            pos -= step
            f.seek(pos)
            tail = f.read(step) + tail
        f.seek(start)
        line = f.read(end - start)
    return line, start, -1



def iter_log(log_dir: Path) -> Iterator[LogRecord]:
    """Every complete record of a log directory in file order, parsed (read-only: no lock, no
    repair, no signature check — use :func:`sidecar.evidence.verify.verify_log` for trust).
    Raises :class:`RecordError` on a malformed line; an incomplete last line is skipped."""
    for _number, seg in list_segments(Path(log_dir)):
        offset = 0
        with seg.open("rb") as f:
            for line_no, raw in enumerate(f, start=1):
                if not raw.endswith(b"\n"):
                    return
                yield parse_line(raw[:-1], seg, offset, line_no)
                offset += len(raw)
