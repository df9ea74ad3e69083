"""The forwarder's durable outbox state: a cursor and a dead-letter file.

The outbox IS the evidence log: nothing is copied. ``cursor.json`` in ``outbox_dir`` records the
highest seq up to which every record was delivered (or dead-lettered), with that record's
evidence id so a replaced log is noticed, and the tree size of the last checkpoint the sink
acknowledged (the next checkpoint's consistency proof starts there). It is replaced atomically (write, fsync, rename, fsync
dir). A crash between delivery and the cursor write re-delivers at most that batch; receivers
dedup by decision_id. ``dead-letters.jsonl`` lists records a receiver rejected (ids and reason
only, never content).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from certus.sidecar.evidence.decision import utc_timestamp
from certus.sidecar.evidence.records import append_line

CURSOR_FILE = "cursor.json"
DEAD_LETTER_FILE = "dead-letters.jsonl"


@dataclass(frozen=True)
class Cursor:
    delivered_seq: int = -1  # every record with seq <= this was handled
    evidence_id: str = ""  # evidence id of the record at delivered_seq
    checkpoint_size: int = 0  # tree size of the newest checkpoint the sink acknowledged


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Outbox:
    def __init__(self, outbox_dir: Path) -> None:
        self.dir = Path(outbox_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.cursor_path = self.dir / CURSOR_FILE
        self.dead_letter_path = self.dir / DEAD_LETTER_FILE

    def load_cursor(self) -> Cursor:
        if not self.cursor_path.exists():
            return Cursor()
        try:
            d = json.loads(self.cursor_path.read_text())
            seq = d["delivered_seq"]
            if isinstance(seq, bool) or not isinstance(seq, int) or seq < -1:
                raise ValueError(f"delivered_seq {seq!r}")
            cp = d.get("checkpoint_size", 0)
            if isinstance(cp, bool) or not isinstance(cp, int) or cp < 0:
                raise ValueError(f"checkpoint_size {cp!r}")
            return Cursor(seq, str(d.get("evidence_id", "")), cp)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"{self.cursor_path}: unreadable cursor ({exc}); delete it to re-deliver from 0") from exc

    def save_cursor(self, cursor: Cursor) -> None:
        tmp = self.cursor_path.with_name(CURSOR_FILE + ".tmp")
        data = json.dumps(
            {"delivered_seq": cursor.delivered_seq, "evidence_id": cursor.evidence_id, "checkpoint_size": cursor.checkpoint_size}
        ).encode()
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.cursor_path)
        _fsync_dir(self.dir)

    def dead_letter(self, seq: int, decision_id: str, evidence_id: str, reason: str) -> None:
        line = json.dumps(
            {"seq": seq, "decision_id": decision_id, "evidence_id": evidence_id, "reason": reason[:500], "at": utc_timestamp()},
            sort_keys=True,
        )
        append_line(self.dead_letter_path, line.encode())

    def dead_letter_count(self) -> int:
        if not self.dead_letter_path.exists():
            return 0
        with self.dead_letter_path.open("rb") as f:
            return sum(1 for line in f if line.endswith(b"\n"))
