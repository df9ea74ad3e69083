"""The local evidence log: append-only, segmented, hash-chained, durable before the answer.

Layout: see :mod:`sidecar.evidence.records`. One writer thread owns the files and the chain state
(next ``seq``, ``prev_hash``): appends from any number of coroutines are queued to it, it numbers,
signs and writes them in arrival order, so seq numbers are contiguous and each ``prev_hash`` is the
digest of the line before it. The event loop never touches the disk.

Durability (``EvidenceConfig.fsync``):

- ``group`` (default): the writer takes every append pending at that moment (waiting up to
  ``group_commit_max_wait_ms`` for more after the first), writes them in one ``write``, issues ONE
  ``fsync``, then resolves all their futures. An append returns only after its record is on disk.
- ``always``: one ``fsync`` per record before that record's append returns.
- ``never``: written to the OS page cache only (tests and benchmarks; not crash-safe).

A write or fsync error (a full disk, a read-only remount, an I/O error) puts the log in the *failed*
state: every append in flight and every new one fails at once with :class:`EvidenceWriteError`
(UNAVAILABLE), nothing is acknowledged that is not on disk, and the state listeners are told (the
server turns health NOT_SERVING), and the log closes its files, so the volume can be unmounted.
After a failed write or fsync the file's state is unknown, so the writer thread then probes the
directory with backoff (``HEAL_BACKOFF_S``): once a probe file can be
written and synced, it repairs the log exactly as :meth:`EvidenceLog.open` does after a crash
(re-reads the last segment, truncates a torn tail, re-checks the chain and the last signature),
reopens it and returns to normal, and the listeners are told again. A record whose bytes reached
the file before the failure is kept even though its caller got an error: the log may hold a
decision the caller was told failed, never the reverse.

Merkle tree and checkpoints (:mod:`sidecar.evidence.merkle`, :mod:`sidecar.evidence.checkpoint`):
the writer extends the tree's frontier with every durable record and, every
``checkpoint_interval_s`` while the log grows and on close, signs a C2SP checkpoint (origin, tree
size, root hash) and appends it to ``checkpoints.jsonl`` (fsynced) with the frontier, so a restart
resumes the tree from the last checkpoint. Open refuses a log that holds fewer records than its
last checkpoint signed: records were removed.

Key rotation (:mod:`sidecar.evidence.keyring`): when the next-key file appears (``keygen
--rotate`` writes it; checked about once a second, and at open), the writer, between two commits,
signs a rotation record with the old key naming the new one (``rotations.jsonl``, fsynced), signs
a checkpoint at the boundary with both keys, switches keys and moves the new key file into place.
A key that a rotation retired is refused at open (the next-key file is adopted if the rotation
names it: a crash between the record and the file move).

Recovery on :meth:`EvidenceLog.open`: the last segment is scanned; every line must parse and link
to the one before it (seq + 1, prev_hash = digest). A torn tail (crash mid-write: a partial last
line, or zero-filled blocks) is truncated away with a warning naming the byte offset; the records
before it are kept and the chain continues from the last good one. Damage followed by good records
is not a torn write: open refuses with :class:`EvidenceLogCorrupt` (run ``certus-sidecar verify``).
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import os
import threading
import time
from bisect import bisect_right
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import structlog

from certus.sidecar.config import EvidenceConfig
from certus.sidecar.errors import Fatal
from certus.sidecar.evidence.checkpoint import CheckpointError, CheckpointStore, StoredCheckpoint, sign_checkpoint
from certus.sidecar.evidence.decision import GENESIS_PREV_HASH, IntegrityDecision, utc_timestamp
from certus.sidecar.evidence.keyring import KeyringError, Rotation, append_rotation, keyring_for, make_rotation
from certus.sidecar.evidence.merkle import Frontier, leaf_hash
from certus.sidecar.evidence.records import (
    LogRecord,
    RecordError,
    line_digest,
    list_segments,
    parse_line,
    read_last_line,
    read_public_keys,
    segment_name,
    try_lock,
    write_public_key,
)
from certus.sidecar.signing import (
    DECISION_PAYLOAD_TYPE,
    Envelope,
    SignatureError,
    SigningKey,
    VerifyKey,
    canonical_json,
    pae,
    sign_envelope,
)

log = structlog.get_logger(__name__)

FSYNC_POLICIES = ("group", "always", "never")
MAX_GROUP = 4096  # records per group commit at most
HEAL_BACKOFF_S = (0.25, 10.0)  # first and longest wait between repair attempts of a failed log
PROBE_BYTES = 65536  # a repair attempt first writes and syncs this much beside the log
ROTATION_POLL_S = 1.0  # how often the writer looks for a next-key file
RECENT_CHECKPOINTS = 256  # kept in memory for the forwarder's consistency proofs
READ_HINTS = 8  # where the last reads stopped, kept so that the next read of each reader seeks there
RECENT_LEAVES = 1 << 16  # leaf hashes of the newest records kept in memory (2 MiB) for checkpoint proofs
Listener = Callable[[int, Envelope], None]
StateListener = Callable[[bool, str], None]  # (healthy, reason) on failure and on recovery


class EvidenceLogError(Exception):
    """The log cannot be opened or used (bad config, locked by another process)."""


class EvidenceLogCorrupt(EvidenceLogError):
    """Damage in the log that is not a torn tail; ``certus-sidecar verify`` names the record."""


class EvidenceWriteError(Fatal):
    """Writing or syncing the log failed; the log accepts no more appends."""


class EvidenceLogClosed(EvidenceLogError):
    pass


@dataclass
class _Pending:
    decision: IntegrityDecision
    # an asyncio future of ``loop`` (append) or a concurrent future (submit, loop None)
    future: asyncio.Future[tuple[str, Envelope]] | concurrent.futures.Future[tuple[str, Envelope]]
    loop: asyncio.AbstractEventLoop | None = None


def _settle_on_loop(items: list[tuple[asyncio.Future[tuple[str, Envelope]], object, bool]]) -> None:
    for fut, value, ok in items:
        if fut.done():  # the caller gave up (cancelled); the record is written all the same
            continue
        if ok:
            fut.set_result(value)  # type: ignore[arg-type]
        else:
            fut.set_exception(value)  # type: ignore[arg-type]


def _settle(pending: list[tuple[_Pending, object, bool]]) -> None:
    """Resolve futures from the writer thread: one loop wake-up per event loop, not per record."""
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[tuple[str, Envelope]], object, bool]]] = {}
    for p, value, ok in pending:
        if p.loop is None:
            cf = p.future
            assert isinstance(cf, concurrent.futures.Future)
            if cf.done():
                continue
            if ok:
                cf.set_result(value)  # type: ignore[arg-type]
            else:
                cf.set_exception(value)  # type: ignore[arg-type]
        else:
            by_loop.setdefault(p.loop, []).append((p.future, value, ok))  # type: ignore[arg-type]
    for loop, items in by_loop.items():
        try:
            loop.call_soon_threadsafe(_settle_on_loop, items)
        except RuntimeError:  # that loop is closed: nobody is waiting any more
            pass


@dataclass
class _Segment:
    number: int
    path: Path
    first_seq: int  # seq of its first record (or the next seq, while it is empty)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


class EvidenceLog:
    """Open with :meth:`open`; ``await append(decision)`` -> ``(evidence_id, envelope)``."""

    def __init__(self, cfg: EvidenceConfig, key: SigningKey, *, _internal: bool = False) -> None:
        if not _internal:
            raise TypeError("use EvidenceLog.open(cfg, key)")
        if cfg.fsync not in FSYNC_POLICIES:
            raise EvidenceLogError(f"evidence.fsync: must be one of {', '.join(FSYNC_POLICIES)}, got {cfg.fsync!r}")
        if cfg.segment_bytes < 1024:
            raise EvidenceLogError(f"evidence.segment_bytes: must be >= 1024, got {cfg.segment_bytes}")
        if cfg.group_commit_max_wait_ms < 0:
            raise EvidenceLogError("evidence.group_commit_max_wait_ms: must be >= 0")
        self.cfg = cfg
        self.log_dir = Path(cfg.log_dir)
        self._key = key
        self.key_id = key.key_id
        self.public_key = key.verify_key
        self.next_key_path = Path(cfg.next_key_path) if cfg.next_key_path else Path(str(cfg.key_path) + ".next")
        # Merkle tree (writer thread) and checkpoints
        self._frontier = Frontier()
        self._store = CheckpointStore(self.log_dir)
        self._recent: collections.deque[StoredCheckpoint] = collections.deque(maxlen=RECENT_CHECKPOINTS)
        # leaf hashes of the newest durable records appended by this process, record seq's at
        # 32 * (seq % RECENT_LEAVES), from seq _leaves_from on (guarded by _lock); one buffer, so no
        # garbage-collector work however many it holds
        self._leaf_ring = bytearray(32 * RECENT_LEAVES)
        self._leaves_from = 0
        self.origin = cfg.checkpoint_origin
        self._cp_due = 0.0  # time.monotonic() when the next checkpoint is due (0: none pending)
        self._rotation_check = 0.0
        self._cp_waiters: list[concurrent.futures.Future[StoredCheckpoint | None]] = []  # guarded by _cond
        self._rotations: list[Rotation] = []  # the log's rotation records, in order
        self.checkpoints = 0  # signed by this process
        self.rotations = 0
        self._lock = threading.Lock()  # guards: segments list, durable state, listeners, read hints
        # next seq -> (segment index, its path, byte offset, line number): where a read stopped
        self._read_hints: dict[int, tuple[int, Path, int, int]] = {}
        self._cond = threading.Condition(threading.Lock())  # guards: pending queue, closing flag
        self._pending: collections.deque[_Pending] = collections.deque()
        self._closing = False
        self._closed = False
        self._failed: BaseException | None = None
        self._failed_since = 0.0  # time.time() of the failure
        self._listeners: list[Listener] = []
        self._state_listeners: list[StateListener] = []
        self._segments: list[_Segment] = []
        self._fd = -1
        self._seg_size = 0
        self._lock_fd = -1
        # writer-thread chain state
        self._next_seq = 0
        self._prev_hash = GENESIS_PREV_HASH
        # durable state (readers)
        self._durable_seq = -1
        self._durable_evidence_id = ""
        self._thread: threading.Thread | None = None
        self.recovered_bytes = 0  # bytes of torn tail truncated at open
        # writer counters (read without a lock: monotonic ints, for stats only)
        self.commits = 0  # write rounds (one per group in "group" mode)
        self.fsyncs = 0
        self.records_written = 0
        self.failures = 0  # times the log entered the failed state
        self.recoveries = 0  # times it repaired itself and left it
        self.heal_attempts = 0

    # -- open / recovery ----------------------------------------------------------------------

    @classmethod
    def open(cls, cfg: EvidenceConfig, key: SigningKey) -> "EvidenceLog":
        """Open (or create) the log in ``cfg.log_dir``, repair a torn tail, start the writer."""
        self = cls(cfg, key, _internal=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self._relock()
        try:
            write_public_key(self.log_dir, key.verify_key)
            self._recover()
        except BaseException:
            os.close(self._lock_fd)
            if self._fd >= 0:
                os.close(self._fd)
            raise
        self._thread = threading.Thread(target=self._run, name="evidence-writer", daemon=True)
        self._thread.start()
        log.info(
            "evidence_log_opened",
            log_dir=str(self.log_dir),
            next_seq=self._next_seq,
            segments=len(self._segments),
            key_id=self.key_id,
            fsync=cfg.fsync,
        )
        return self

    def _relock(self) -> None:
        """Take the directory's lock file (again, on repair: after a fresh mount the old one is on
        the old volume); EvidenceLogError when another process holds it."""
        if self._lock_fd >= 0:  # first: a second flock of this process on the same file would conflict
            os.close(self._lock_fd)
            self._lock_fd = -1
        fd = try_lock(self.log_dir / ".lock")
        if fd is None:
            raise EvidenceLogError(f"{self.log_dir} is in use by another process")
        self._lock_fd = fd

    def _recover(self) -> None:
        segs = list_segments(self.log_dir)
        if not segs:
            self._open_segment(1, first_seq=0, create=True)
            return
        # first seq of every segment but the last (from its first line)
        for number, path in segs[:-1]:
            first = self._first_record(path)
            if first is None:
                raise EvidenceLogCorrupt(f"{path.name}: segment before the last holds no complete record")
            self._segments.append(_Segment(number, path, first.seq))
        # where the last segment's chain must start
        if len(segs) > 1:
            prev_path = segs[-2][1]
            tail = read_last_line(prev_path)
            if tail is None:
                raise EvidenceLogCorrupt(f"{prev_path.name}: no complete record")
            try:
                rec = parse_line(tail[0], prev_path, tail[1], -1)
            except RecordError as exc:
                raise EvidenceLogCorrupt(f"{prev_path.name}: last record unreadable: {exc}") from exc
            expect_seq, expect_prev = rec.seq + 1, rec.evidence_id
            last_good: LogRecord | None = rec
        else:
            expect_seq, expect_prev = 0, GENESIS_PREV_HASH
            last_good = None
        number, path = segs[-1]
        data = path.read_bytes()
        pos = 0
        line_no = 0
        good_end = 0
        bad_reason = ""
        while pos < len(data):
            nl = data.find(b"\n", pos)
            if nl < 0:
                bad_reason = "incomplete last line"
                break
            line_no += 1
            try:
                rec = parse_line(data[pos:nl], path, pos, line_no)
            except RecordError as exc:
                bad_reason = str(exc)
                break
            if rec.seq != expect_seq or rec.prev_hash != expect_prev:
                bad_reason = f"seq {rec.seq} / prev_hash do not continue the chain (expected seq {expect_seq})"
                break
            expect_seq, expect_prev, last_good = rec.seq + 1, rec.evidence_id, rec
            pos = nl + 1
            good_end = pos
        if good_end < len(data):
            self._check_torn_tail(path, data, good_end, bad_reason)
            with path.open("r+b") as f:
                f.truncate(good_end)
                f.flush()
                os.fsync(f.fileno())
            self.recovered_bytes = len(data) - good_end
            log.warning(
                "evidence_log_torn_tail_truncated",
                segment=path.name,
                offset=good_end,
                bytes_dropped=len(data) - good_end,
                reason=bad_reason,
            )
        if last_good is not None:
            self._check_tail_signature(last_good)
        self._next_seq, self._prev_hash = expect_seq, expect_prev
        self._durable_seq = expect_seq - 1
        self._leaves_from = expect_seq
        self._durable_evidence_id = expect_prev if expect_seq > 0 else ""
        first_seq = self._first_record(path)
        self._open_segment(number, first_seq=first_seq.seq if first_seq else expect_seq, create=False)
        self._recover_tree()

    def _known_keys(self) -> list[VerifyKey]:
        keys = {k.key_id: k for k in read_public_keys(self.log_dir)}
        keys[self.public_key.key_id] = self.public_key
        return list(keys.values())

    def _recover_tree(self) -> None:
        """Resume the Merkle frontier from the last checkpoint (its frontier must hash to its signed
        root) and extend it with the records written after it; check the signing key's epoch."""
        n = self._next_seq
        dropped = self._store.repair()
        if dropped:
            log.warning("evidence_checkpoints_torn_tail_truncated", bytes_dropped=dropped)
        try:
            ring = keyring_for(self.log_dir, self._known_keys())
            with self._lock:
                self._rotations = list(ring.rotations)
            recent = self._store.tail(ring.keys, RECENT_CHECKPOINTS)
            last = recent[-1] if recent else None
        except (CheckpointError, KeyringError) as exc:
            raise EvidenceLogCorrupt(f"{self.log_dir}: {exc}. Run `certus-sidecar verify` on the log directory.") from exc
        if last is not None and last.checkpoint.size > n:
            raise EvidenceLogCorrupt(
                f"{self.log_dir}: checkpoint of tree size {last.checkpoint.size} was signed, but the log holds "
                f"{n} record(s): records from seq {n} on were removed. Run `certus-sidecar verify`."
            )
        frontier = last.frontier.copy() if last is not None else Frontier()
        while frontier.size < n:
            recs = self.read(frontier.size, 4096)
            if not recs or recs[0].seq != frontier.size:
                raise EvidenceLogCorrupt(f"{self.log_dir}: cannot read record {frontier.size} to rebuild the Merkle tree")
            frontier.extend(leaf_hash(r.line) for r in recs)
        self._frontier = frontier
        with self._lock:
            self._recent.clear()
            self._recent.extend(recent)
        if last is not None:
            if self.origin and self.origin != last.checkpoint.origin:
                log.warning("evidence_checkpoint_origin_kept", configured=self.origin, origin=last.checkpoint.origin)
            self.origin = last.checkpoint.origin
        self._cp_due = 0.0 if last is not None and last.checkpoint.size == n else time.monotonic()
        self._adopt_key(ring.retired)

    def _adopt_key(self, retired: dict[str, int]) -> None:
        """Refuse a signing key a rotation retired, unless the next-key file holds its successor
        (the process stopped between the rotation record and moving the key file into place)."""
        if self.key_id not in retired:
            return
        try:
            nxt = SigningKey.from_file(self.next_key_path)
        except (OSError, ValueError):
            nxt = None
        seq = retired[self.key_id]
        if nxt is None or nxt.key_id in retired:
            raise EvidenceLogError(
                f"signing key {self.key_id} was retired by a key rotation at seq {seq}; "
                f"start with the key it rotated to ({self.cfg.key_path} or {self.next_key_path})"
            )
        boundary = self._store.last([self.public_key, nxt.verify_key], at_most=seq) if seq > 0 else None
        if seq > 0 and (boundary is None or boundary.checkpoint.size != seq or nxt.key_id not in boundary.checkpoint.signers):
            self._checkpoint(keys=[self._key, nxt])  # the stop came before the boundary checkpoint
        self._use_key(nxt)
        self._install_next_key()

    def _check_torn_tail(self, path: Path, data: bytes, good_end: int, reason: str) -> None:
        """Everything after ``good_end`` must be debris of one interrupted write: no later
        complete line may parse as a record (that would be damage in the middle of the log)."""
        rest = data[good_end:]
        lines = rest.split(b"\n")
        for i, raw in enumerate(lines[1:-1], start=1):  # complete lines after the first bad one
            try:
                parse_line(raw, path, 0, 0)
            except RecordError:
                continue
            raise EvidenceLogCorrupt(
                f"{path.name}: damaged record at byte offset {good_end} ({reason}) followed by "
                f"{len(lines) - 1 - i} more line(s) with valid records; refusing to truncate. "
                "Run `certus-sidecar verify` on the log directory."
            )

    def _check_tail_signature(self, rec: LogRecord) -> None:
        keys = {k.key_id: k for k in read_public_keys(self.log_dir)}
        keys[self.public_key.key_id] = self.public_key
        keyid, sig = rec.envelope.signatures[0] if rec.envelope.signatures else ("", b"")
        key = keys.get(keyid)
        if key is None:
            log.warning("evidence_log_tail_key_unknown", key_id=keyid, seq=rec.seq)
            return
        try:
            key.verify(pae(rec.envelope.payload_type, rec.envelope.payload), sig)
        except SignatureError as exc:
            raise EvidenceLogCorrupt(f"{rec.segment.name}: last record (seq {rec.seq}) has a bad signature") from exc
        if keyid != self.key_id:
            log.warning("evidence_log_key_changed", previous_key_id=keyid, key_id=self.key_id, seq=rec.seq + 1)

    @staticmethod
    def _first_record(path: Path) -> LogRecord | None:
        with path.open("rb") as f:
            line = f.readline()
        if not line.endswith(b"\n"):
            return None
        try:
            return parse_line(line[:-1], path, 0, 1)
        except RecordError:
            return None

    def _open_segment(self, number: int, *, first_seq: int, create: bool) -> None:
        path = self.log_dir / segment_name(number)
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | (os.O_EXCL if create else 0)
        fd = os.open(path, flags, 0o644)
        if create:
            os.fsync(fd)
            _fsync_dir(self.log_dir)
        if self._fd >= 0:
            os.close(self._fd)
        self._fd = fd
        self._seg_size = os.fstat(fd).st_size
        with self._lock:
            self._segments.append(_Segment(number, path, first_seq))

    # -- public API ---------------------------------------------------------------------------

    @property
    def tree_size(self) -> int:
        return self._frontier.size

    def latest_checkpoint(self, at_most: int | None = None) -> StoredCheckpoint | None:
        """The newest checkpoint (with at most ``at_most`` records, if given) from memory or, for
        an old one, from ``checkpoints.jsonl`` (any thread)."""
        with self._lock:
            recent = list(self._recent)
        for sc in reversed(recent):
            if at_most is None or sc.checkpoint.size <= at_most:
                return sc
        if at_most is None or len(recent) < RECENT_CHECKPOINTS:
            return None  # memory holds every checkpoint there is: no older one in the file
        return self._store.last(self._known_keys_with_rotations(), at_most=at_most)

    def checkpoint_of_size(self, size: int) -> StoredCheckpoint | None:
        sc = self.latest_checkpoint(at_most=size)
        return sc if sc is not None and sc.checkpoint.size == size else None

    def rotation_records(self) -> list[Envelope]:
        with self._lock:
            return [r.envelope for r in self._rotations]

    def rotation_seqs(self) -> list[int]:
        """``effective_seq`` of each key rotation (the forwarder's barriers)."""
        with self._lock:
            return [r.effective_seq for r in self._rotations]

    def _known_keys_with_rotations(self) -> list[VerifyKey]:
        return keyring_for(self.log_dir, self._known_keys()).keys

    def add_listener(self, fn: Listener) -> None:
        """``fn(seq, envelope)`` is called from the writer thread once a record is durable.
        It must be quick and thread-safe (e.g. ``loop.call_soon_threadsafe(event.set)``)."""
        with self._lock:
            self._listeners.append(fn)

    def remove_listener(self, fn: Listener) -> None:
        with self._lock:
            if fn in self._listeners:
                self._listeners.remove(fn)

    def add_state_listener(self, fn: StateListener) -> None:
        """``fn(healthy, reason)`` is called from the writer thread when the log fails (False, the
        error) and when it has repaired itself (True, ""). Quick and thread-safe, as above."""
        with self._lock:
            self._state_listeners.append(fn)

    @property
    def failure_reason(self) -> str:
        """Why the log refuses appends ("" when it does not)."""
        failed = self._failed
        return "" if failed is None else f"{type(failed).__name__}: {failed}"

    @property
    def last_seq(self) -> int:
        """Seq of the last durable record; -1 for an empty log."""
        with self._lock:
            return self._durable_seq

    @property
    def last_evidence_id(self) -> str:
        with self._lock:
            return self._durable_evidence_id

    def stats(self) -> dict[str, object]:
        """For health details and metrics: position, durability policy, group-commit efficiency."""
        commits = self.commits
        with self._lock:
            last_seq, segments = self._durable_seq, len(self._segments)
        with self._cond:
            pending = len(self._pending)
        return {
            "last_seq": last_seq,
            "segments": segments,
            "fsync": self.cfg.fsync,
            "pending": pending,
            "commits": commits,
            "fsyncs": self.fsyncs,
            "records_per_commit": round(self.records_written / commits, 2) if commits else 0.0,
            "healthy": self.healthy,
            "failure": self.failure_reason,
            "failed_since": self._failed_since if self._failed is not None else 0.0,
            "failures": self.failures,
            "recoveries": self.recoveries,
            "heal_attempts": self.heal_attempts,
            "key_id": self.key_id,
            "tree_size": self._frontier.size,
            "checkpoint_size": self._recent[-1].checkpoint.size if self._recent else 0,
            "checkpoints": self.checkpoints,
            "key_rotations": self.rotations,
        }

    @property
    def healthy(self) -> bool:
        return self._failed is None and not self._closed

    def _enqueue(self, p: _Pending) -> None:
        if not isinstance(p.decision, IntegrityDecision):
            raise TypeError(f"decision must be an IntegrityDecision, got {type(p.decision).__name__}")
        if self._failed is not None:
            raise EvidenceWriteError(f"evidence log failed earlier: {self._failed}")
        with self._cond:
            if self._closing:
                raise EvidenceLogClosed("evidence log is closed")
            self._pending.append(p)
            self._cond.notify()

    def submit(self, decision: IntegrityDecision) -> concurrent.futures.Future[tuple[str, Envelope]]:
        """Thread-safe enqueue from any thread; the future resolves once the record is durable."""
        fut: concurrent.futures.Future[tuple[str, Envelope]] = concurrent.futures.Future()
        self._enqueue(_Pending(decision, fut))
        return fut

    async def append(self, decision: IntegrityDecision) -> tuple[str, Envelope]:
        """Chain, sign and durably write ``decision``; return ``(evidence_id, envelope)``.

        A cancelled caller does not cancel the write: a decision that was made is recorded.
        """
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[tuple[str, Envelope]] = loop.create_future()
        self._enqueue(_Pending(decision, fut, loop))
        return await asyncio.shield(fut)

    def read(self, start_seq: int, max_records: int) -> list[LogRecord]:
        """Up to ``max_records`` durable records from ``start_seq`` on (blocking file I/O: call it
        from a thread). Records are parsed, not signature-checked.

        A read that starts where an earlier one stopped (the forwarder's deliveries, its
        checkpoint proofs: each reader goes on from its own last record) seeks straight to it: the
        last :data:`READ_HINTS` stopping points are kept. Any other read finds the segment by
        seq and skips the lines before ``start_seq`` unparsed (a segment holds one record per line,
        numbered on from its first seq), which the first record it parses confirms; should it not,
        the segment is read again parsing every line. Parsing the lines it skipped cost 1.3 s of CPU
        per read near the end of a 53 MB segment."""
        if max_records <= 0:
            return []
        with self._lock:
            durable = self._durable_seq
            segs = list(self._segments)
            hint = self._read_hints.get(start_seq)
        if start_seq > durable or not segs:
            return []
        if hint is not None and hint[0] < len(segs) and segs[hint[0]].path == hint[1]:
            out = self._read_from(segs, hint[0], hint[2], hint[3], 0, start_seq, durable, max_records)
            assert out is not None  # nothing skipped, nothing to confirm
            return out
        idx = max(0, bisect_right([s.first_seq for s in segs], start_seq) - 1)
        out = self._read_from(segs, idx, 0, 0, max(0, start_seq - segs[idx].first_seq), start_seq, durable, max_records)
        if out is None:  # the lines were not numbered as assumed: parse them all
            out = self._read_from(segs, idx, 0, 0, 0, start_seq, durable, max_records)
        assert out is not None
        return out

    def _read_from(self, segs: list[_Segment], idx: int, offset: int, line_no: int, skip: int, start_seq: int,
                   durable: int, max_records: int) -> list[LogRecord] | None:
        """:meth:`read` from line ``line_no`` (at byte ``offset``) of segment ``idx``, the next
        ``skip`` lines unparsed; None when ``skip`` lines were skipped and the first record parsed
        after them is not ``start_seq`` (or there is none in that segment)."""
        out: list[LogRecord] = []
        confirm = skip > 0  # the first record parsed must then be start_seq
        done = False
        while not done and idx < len(segs):
            seg = segs[idx]
            with seg.path.open("rb") as f:
                f.seek(offset)
                for raw in f:
                    if not raw.endswith(b"\n"):
                        done = True
                        break
                    if skip > 0:
                        skip -= 1
                        offset += len(raw)
                        line_no += 1
                        continue
                    rec = parse_line(raw[:-1], seg.path, offset, line_no + 1)
                    if confirm:
                        if rec.seq != start_seq:
                            return None
                        confirm = False
                    if rec.seq > durable:
                        done = True
                        break
                    offset += len(raw)
                    line_no += 1
                    if rec.seq < start_seq:
                        continue
                    out.append(rec)
                    if len(out) >= max_records or rec.seq == durable:
                        done = True
                        break
            if not done:
                if confirm:  # the segment ended before start_seq's line
                    return None
                idx += 1
                offset, line_no = 0, 0
        if out and idx < len(segs):
            with self._lock:
                hints = self._read_hints
                hints.pop(out[-1].seq + 1, None)
                hints[out[-1].seq + 1] = (idx, segs[idx].path, offset, line_no)
                while len(hints) > READ_HINTS:
                    del hints[next(iter(hints))]
        return out

    def leaf_hashes(self, start_seq: int, end_seq: int) -> list[bytes] | None:
        """The Merkle leaf hashes of records ``start_seq`` .. ``end_seq - 1`` from memory (the newest
        :data:`RECENT_LEAVES` durable records appended by this process), or None when not all are
        kept there: a checkpoint's consistency proof then reads them back with :meth:`read`."""
        ring = self._leaf_ring
        with self._lock:
            first = max(self._leaves_from, self._durable_seq + 1 - RECENT_LEAVES)
            if not first <= start_seq <= end_seq <= self._durable_seq + 1:
                return None
            at = [32 * (seq % RECENT_LEAVES) for seq in range(start_seq, end_seq)]
            return [bytes(ring[k : k + 32]) for k in at]

    def record_at(self, seq: int) -> LogRecord | None:
        recs = self.read(seq, 1)
        return recs[0] if recs and recs[0].seq == seq else None

    async def close(self) -> None:
        """Write everything pending (durably), stop the writer, release the files."""
        await asyncio.to_thread(self.close_sync)

    def close_sync(self) -> None:
        with self._cond:
            if self._closed:
                return
            self._closing = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join()
        if self._fd >= 0:
            if self._failed is None:
                try:
                    os.fsync(self._fd)
                except OSError:
                    pass
            os.close(self._fd)
            self._fd = -1
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1
        self._closed = True
        log.info("evidence_log_closed", last_seq=self._durable_seq)

    # -- writer thread ------------------------------------------------------------------------

    def _take(self, timeout: float | None = None) -> list[_Pending]:
        """Wait (at most ``timeout`` s, if given) for the next group of pending appends."""
        with self._cond:
            deadline = None if timeout is None else time.monotonic() + timeout
            while not self._pending and not self._closing and not self._cp_waiters:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return []
                self._cond.wait(remaining)
            if not self._pending:
                return []
            batch = [self._pending.popleft() for _ in range(min(MAX_GROUP, len(self._pending)))]
            wait_s = self.cfg.group_commit_max_wait_ms / 1000.0
            if self.cfg.fsync == "group" and wait_s > 0 and not self._closing and self._failed is None:
                deadline = time.monotonic() + wait_s
                while len(batch) < MAX_GROUP:
                    if not self._pending:
                        remaining = deadline - time.monotonic()
                        if remaining <= 0 or self._closing:
                            break
                        self._cond.wait(remaining)
                        continue
                    batch.append(self._pending.popleft())
        return batch

    def _run(self) -> None:
        delay = HEAL_BACKOFF_S[0]
        while True:
            if self._failed is not None:
                # failed: refuse what is queued at once, and try to repair with backoff
                batch = self._take(timeout=delay)
                if batch:
                    err = EvidenceWriteError(f"evidence log failed earlier: {self._failed}")
                    _settle([(p, err, False) for p in batch])
                    continue
                if self._closing:
                    return
                if self._heal():
                    delay = HEAL_BACKOFF_S[0]
                else:
                    delay = min(delay * 2, HEAL_BACKOFF_S[1])
                continue
            batch = self._take(timeout=self._idle_timeout())
            settled: set[int] = set()
            try:
                if batch:
                    self._commit(batch, settled)
                if self._closing and not batch:
                    self._checkpoint()  # the last records get a signed checkpoint before stopping
                    return
                self._housekeeping()
            except BaseException as exc:  # noqa: BLE001 - any failure here fails the log until repaired
                # failed first, then the callers told: one woken by the error sees the failed state
                self._fail(exc)
                err = EvidenceWriteError(f"evidence log write failed: {exc}")
                _settle([(p, err, False) for p in batch if id(p) not in settled])

    def _idle_timeout(self) -> float:
        """How long the writer may sleep without appends: until the next checkpoint is due, and at
        most until the next look for a next-key file."""
        wait = ROTATION_POLL_S
        if self._cp_due and self.cfg.checkpoint_interval_s > 0:
            wait = min(wait, self._cp_due - time.monotonic())
        return max(0.0, wait)

    def request_checkpoint(self) -> concurrent.futures.Future[StoredCheckpoint | None]:
        """Ask the writer to sign a checkpoint of everything written so far (e.g. before the
        shutdown drain, so the forwarder can deliver it); resolves with the newest checkpoint."""
        fut: concurrent.futures.Future[StoredCheckpoint | None] = concurrent.futures.Future()
        with self._cond:
            if self._closing or self._failed is not None:
                fut.set_result(None)
                return fut
            self._cp_waiters.append(fut)
            self._cond.notify()
        return fut

    def _housekeeping(self) -> None:
        """Between commits (writer thread): a due or requested checkpoint, a pending key rotation."""
        now = time.monotonic()
        with self._cond:
            waiters, self._cp_waiters = self._cp_waiters, []
        try:
            if waiters or (self._cp_due and self.cfg.checkpoint_interval_s > 0 and now >= self._cp_due):
                self._checkpoint()
        except BaseException as exc:
            for w in waiters:
                w.set_exception(exc)
            raise
        for w in waiters:
            w.set_result(self._recent[-1] if self._recent else None)
        if now >= self._rotation_check:
            self._rotation_check = now + ROTATION_POLL_S
            if self.next_key_path.exists():
                self._rotate()

    def _checkpoint(self, keys: list[SigningKey] | None = None) -> StoredCheckpoint | None:
        """Sign the current tree (writer thread) unless the last checkpoint already has its size
        (``keys`` given: always, e.g. co-signed at a rotation). Durable before it returns."""
        size = self._frontier.size
        last = self._recent[-1].checkpoint.size if self._recent else 0
        self._cp_due = 0.0
        if size == 0 or (keys is None and size == last):
            return None
        if not self.origin:
            first = self.record_at(0)
            if first is None:
                raise EvidenceLogError("cannot read record 0 to name the checkpoint origin")
            self.origin = "certus-evaluate/" + first.evidence_id.split(":", 1)[1][:16]
        cp = sign_checkpoint(self.origin, size, self._frontier.root(), keys or [self._key])
        sc = StoredCheckpoint(cp, self._frontier.copy())
        self._store.append(cp, sc.frontier)
        with self._lock:
            self._recent.append(sc)
        self.checkpoints += 1
        log.info("evidence_checkpoint", tree_size=size, origin=self.origin)
        return sc

    def _use_key(self, key: SigningKey) -> None:
        write_public_key(self.log_dir, key.verify_key)
        self._key = key
        self.key_id = key.key_id
        self.public_key = key.verify_key

    def _install_next_key(self) -> None:
        """Move the next-key file (and its .pub) over the key path: the old private key is gone."""
        target = Path(self.cfg.key_path)
        os.replace(self.next_key_path, target)
        pub = Path(str(self.next_key_path) + ".pub")
        if pub.exists():
            os.replace(pub, Path(str(target) + ".pub"))
        _fsync_dir(target.parent)

    def _rotate(self) -> None:
        """Start a new key epoch at the next seq (writer thread, nothing in flight)."""
        try:
            new = SigningKey.from_file(self.next_key_path)
        except (OSError, ValueError) as exc:
            log.error("evidence_next_key_unreadable", path=str(self.next_key_path), error=str(exc))
            return
        old = self._key
        if new.key_id == old.key_id:
            self._install_next_key()
            return
        seq = self._next_seq
        rot = make_rotation(old, new.verify_key, seq, self._prev_hash if seq > 0 else "", utc_timestamp())
        write_public_key(self.log_dir, new.verify_key)
        append_rotation(self.log_dir, rot)  # durable before the new key signs anything
        with self._lock:
            self._rotations.append(rot)
        if seq > 0:
            self._checkpoint(keys=[old, new])  # the boundary, signed by both epochs
        self._use_key(new)
        self._install_next_key()
        self.rotations += 1
        log.warning("evidence_key_rotated", old_key_id=old.key_id, new_key_id=new.key_id, effective_seq=seq)

    def _fail(self, exc: BaseException) -> None:
        self._failed = exc
        self._failed_since = time.time()
        self.failures += 1
        # let go of the volume (the segment and the lock file): an operator can then unmount,
        # check and mount it again; the repair reopens both by path
        for name in ("_fd", "_lock_fd"):
            fd = getattr(self, name)
            if fd >= 0:
                try:
                    os.close(fd)
                except OSError:
                    pass
                setattr(self, name, -1)
        log.error("evidence_log_write_failed", error=repr(exc), last_seq=self._durable_seq)
        self._tell_state(False, self.failure_reason)

    def _tell_state(self, healthy: bool, reason: str) -> None:
        with self._lock:
            listeners = list(self._state_listeners)
        for fn in listeners:
            try:
                fn(healthy, reason)
            except Exception as exc:  # noqa: BLE001 - a listener must not break the writer
                log.warning("evidence_state_listener_failed", error=repr(exc))

    def _heal(self) -> bool:
        """One repair attempt of a failed log (writer thread): probe that the directory takes a
        synced write, then recover the tail as :meth:`open` does and reopen the last segment."""
        self.heal_attempts += 1
        probe = self.log_dir / ".probe"
        try:
            fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                _write_all(fd, b"\0" * PROBE_BYTES)
                os.fsync(fd)
            finally:
                os.close(fd)
                probe.unlink(missing_ok=True)
            self._relock()  # the directory may be a fresh mount of the volume
            write_public_key(self.log_dir, self._key.verify_key)
            with self._lock:
                self._segments = []
            self.recovered_bytes = 0
            self._recover()
        except Exception as exc:  # noqa: BLE001 - whatever stops the repair, the log stays failed and tries again
            log.warning("evidence_log_still_failed", error=repr(exc), attempt=self.heal_attempts)
            return False
        down_s = round(time.time() - self._failed_since, 3)
        self._failed = None
        self.recoveries += 1
        log.warning(
            "evidence_log_recovered",
            last_seq=self._durable_seq,
            torn_bytes_dropped=self.recovered_bytes,
            failed_for_s=down_s,
        )
        self._tell_state(True, "")
        return True

    def _commit(self, batch: list[_Pending], settled: set[int]) -> None:
        """Number, sign, write and sync ``batch``; ids of the pending items resolved go in
        ``settled`` (so a failure half-way fails only the others)."""
        key = self._key
        prepared: list[tuple[_Pending, int, str, Envelope, bytes]] = []
        for p in batch:
            seq = self._next_seq
            try:
                dec = p.decision.with_chain(seq, self._prev_hash, self.key_id)
                payload = canonical_json(dec.to_payload())
                env = sign_envelope(key, DECISION_PAYLOAD_TYPE, payload)
                line = env.to_json()
            except Exception as exc:  # noqa: BLE001 - a bad decision fails only its own append
                _settle([(p, exc, False)])
                settled.add(id(p))
                continue
            evidence_id = line_digest(line)
            self._next_seq = seq + 1
            self._prev_hash = evidence_id
            prepared.append((p, seq, evidence_id, env, line))
        if not prepared:
            return
        policy = self.cfg.fsync
        if policy == "always":
            for item in prepared:
                self._write_lines([(item[1], item[4])])
                os.fsync(self._fd)
                self.fsyncs += 1
                self.commits += 1
                self.records_written += 1
                self._publish([item])
                settled.add(id(item[0]))
            return
        self._write_lines([(item[1], item[4]) for item in prepared])
        if policy == "group":
            os.fsync(self._fd)
            self.fsyncs += 1
        self.commits += 1
        self.records_written += len(prepared)
        self._publish(prepared)
        settled.update(id(item[0]) for item in prepared)

    def _write_lines(self, lines: list[tuple[int, bytes]]) -> None:
        """Append ``(seq, line)`` in order, rolling to a new segment when one would overflow."""
        buf: list[bytes] = []
        size = self._seg_size
        for seq, line in lines:
            n = len(line) + 1
            if size > 0 and size + n > self.cfg.segment_bytes:
                if buf:
                    _write_all(self._fd, b"".join(buf))
                    buf = []
                self._roll(first_seq=seq)
                size = 0
            buf.append(line)
            buf.append(b"\n")
            size += n
        if buf:
            _write_all(self._fd, b"".join(buf))
        self._seg_size = size

    def _roll(self, first_seq: int) -> None:
        if self.cfg.fsync != "never":
            os.fsync(self._fd)
        number = self._segments[-1].number + 1
        self._open_segment(number, first_seq=first_seq, create=True)
        log.info("evidence_segment_rolled", segment=segment_name(number), first_seq=first_seq)

    def _publish(self, items: list[tuple[_Pending, int, str, Envelope, bytes]]) -> None:
        leaves = [leaf_hash(item[4]) for item in items]
        self._frontier.extend(leaves)
        if not self._cp_due:
            self._cp_due = time.monotonic() + self.cfg.checkpoint_interval_s
        ring = self._leaf_ring
        with self._lock:
            for item, leaf in zip(items, leaves):
                k = 32 * (item[1] % RECENT_LEAVES)
                ring[k : k + 32] = leaf
            self._durable_seq = items[-1][1]
            self._durable_evidence_id = items[-1][2]
            listeners = list(self._listeners)
        _settle([(p, (evidence_id, env), True) for p, _seq, evidence_id, env, _line in items])
        for fn in listeners:
            for _p, seq, _eid, env, _line in items:
                try:
                    fn(seq, env)
                except Exception as exc:  # noqa: BLE001 - a listener must not break the writer
                    log.warning("evidence_listener_failed", error=repr(exc))


def decision_of(record: LogRecord) -> IntegrityDecision:
    """The decision stored in a record (validated)."""
    return IntegrityDecision.from_payload(record.payload)
