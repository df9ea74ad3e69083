"""Background delivery of the evidence log to the integrity service.

One asyncio task reads durable records after the outbox cursor (file reads in a worker thread),
sends them in batches of ``batch_size`` to the sink, and advances + fsyncs the cursor after each
acknowledged batch. Evaluations never wait on it: the evidence log only wakes it (a listener that
schedules an event on the loop). Delivery is at least once; receivers dedup by decision_id.

Failures: a retryable one is retried with backoff + jitter (server hints honoured) through the
circuit breaker; while it is open nothing is sent and the backlog grows (visible in ``stats()``).
A batch the receiver refuses as a whole with a non-retryable status is split in halves down to
single records, and a single record refused (or a per-record ``rejected`` receipt) is written to
the dead-letter file and skipped: one bad record cannot block the ones after it.

Checkpoints: once the records a signed checkpoint covers are delivered, the checkpoint follows
with an RFC 9162 consistency proof from the last one the sink acknowledged (its size is kept in the
cursor) and the log's key rotation records. A rotation is a barrier: records signed by the new key
go out only after the checkpoint at the rotation's seq (signed by both keys) was acknowledged, so
the service already trusts the new key. A refused checkpoint (the service holds one this log does
not extend) is logged as an error and counted; it does not stop the delivery of decisions.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
import threading
import time
from typing import Any, Callable, Sequence

import structlog
from opentelemetry import trace
from opentelemetry.context import Context

from certus.sidecar import telemetry
from certus.sidecar.config import ForwarderConfig
from certus.sidecar.evidence.checkpoint import StoredCheckpoint
from certus.sidecar.evidence.log import EvidenceLog
from certus.sidecar.evidence.merkle import Leaves, leaf_hash
from certus.sidecar.evidence.records import LogRecord
from certus.sidecar.forwarder.outbox import Cursor, Outbox
from certus.sidecar.forwarder.policy import CircuitBreaker, RetryPolicy
from certus.sidecar.forwarder.sinks import DeliveryError, Sink, make_sink
from certus.sidecar.forwarder.wire import ACCEPTED, DUPLICATE, REJECTED, CheckpointSubmission
from certus.sidecar.signing import Envelope

log = structlog.get_logger(__name__)
tracer = trace.get_tracer(__name__)

IDLE_POLL_S = 1.0  # safety net: look at the log even without a wake-up


class Forwarder:
    def __init__(
        self,
        cfg: ForwarderConfig,
        log: EvidenceLog,
        *,
        sink: Sink | None = None,
        policy: RetryPolicy | None = None,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if cfg.batch_size < 1:
            raise ValueError("forwarder.batch_size must be >= 1")
        self.cfg = cfg
        self._log = log
        self.policy = policy or RetryPolicy.from_config(cfg)
        self.sink = sink if sink is not None else make_sink(cfg, self.policy)
        self.breaker = CircuitBreaker(cfg.failure_threshold, cfg.recovery_timeout_s, clock=clock)
        self.breaker.on_change = self._on_breaker_change
        self._rng = rng or random.Random()
        self._outbox = Outbox(cfg.outbox_dir) if self.sink is not None else None
        self._cursor = Cursor()
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._wake_scheduled = threading.Event()
        self._stopping = False
        # counters (this process)
        self.delivered = 0
        self.duplicates = 0
        self.failures = 0  # failed attempts
        self.dead_letters = 0  # dead letters this run
        self.dead_letters_total = 0  # in the dead-letter file, incl. earlier runs
        self.batches = 0
        self.last_error = ""
        self.cursor_error = ""  # the last cursor write error, "" once a write succeeds again
        self.checkpoints_sent = 0  # acknowledged by the sink
        self.checkpoint_rejections = 0
        self.checkpoint_error = ""
        self._checkpoints_unsupported = False  # the service answered UNIMPLEMENTED / 404
        self._refused_checkpoint_size = 0  # the newest checkpoint the service refused (not sent again)
        self._lifted_barrier = 0  # a rotation seq passed without a checkpoint at it (none existed)
        self.last_delivery_at: float | None = None

    # -- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        if self._task is not None:
            return
        if self.sink is None or self._outbox is None:
            log.info("forwarder_disabled", sink="none")
            return
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._cursor = await asyncio.to_thread(self._resume_cursor)
        self.dead_letters_total = await asyncio.to_thread(self._outbox.dead_letter_count)
        self._log.add_listener(self._on_record)
        self._task = asyncio.create_task(self._run(), name="forwarder")
        log.info(
            "forwarder_started",
            sink=self.sink.name,
            delivered_seq=self._cursor.delivered_seq,
            backlog=self.backlog,
        )

    def _resume_cursor(self) -> Cursor:
        assert self._outbox is not None
        cur = self._outbox.load_cursor()
        if cur.delivered_seq < 0:
            return Cursor()
        last = self._log.last_seq
        rec = self._log.record_at(cur.delivered_seq) if cur.delivered_seq <= last else None
        if rec is None or rec.evidence_id != cur.evidence_id:
            log.warning(
                "forwarder_cursor_mismatch",
                cursor_seq=cur.delivered_seq,
                log_last_seq=last,
                action="re-deliver from seq 0 (receivers dedup by decision_id)",
            )
            return Cursor()
        return cur

    async def stop(self, drain_s: float = 0.0) -> None:
        """Stop delivering; first keep going up to ``drain_s`` seconds while a backlog remains."""
        self._log.remove_listener(self._on_record)
        task = self._task
        if task is not None:
            self._stopping = True
            if self._wake is not None:
                self._wake.set()
            if drain_s > 0:
                try:
                    await asyncio.wait_for(asyncio.shield(task), timeout=drain_s)
                except asyncio.TimeoutError:
                    pass
            if not task.done():
                task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass
            self._task = None
            log.info("forwarder_stopped", delivered_seq=self._cursor.delivered_seq, backlog=self.backlog)
        if self.sink is not None:
            await self.sink.close()

    # -- state ----------------------------------------------------------------------------------

    @property
    def delivered_seq(self) -> int:
        return self._cursor.delivered_seq

    @property
    def backlog(self) -> int:
        return max(0, self._log.last_seq - self._cursor.delivered_seq)

    def stats(self) -> dict[str, Any]:
        return {
            "sink": self.sink.name if self.sink is not None else "none",
            "running": self._task is not None and not self._task.done(),
            "backlog": self.backlog if self.sink is not None else 0,
            "last_seq": self._log.last_seq,
            "delivered_seq": self._cursor.delivered_seq,
            "breaker_state": self.breaker.state,
            "breaker_opened": self.breaker.times_opened,
            "breaker_recovered": self.breaker.times_closed,
            "consecutive_failures": self.breaker.consecutive_failures,
            "delivered": self.delivered,
            "duplicates": self.duplicates,
            "failures": self.failures,
            "dead_letters": self.dead_letters,
            "dead_letters_total": self.dead_letters_total,
            "batches": self.batches,
            "last_error": self.last_error,
            "cursor_error": self.cursor_error,
            "checkpoint_size": self._cursor.checkpoint_size,
            "checkpoints_sent": self.checkpoints_sent,
            "checkpoint_rejections": self.checkpoint_rejections,
            "checkpoint_error": self.checkpoint_error,
        }

    # -- wake-ups from the log's writer thread --------------------------------------------------

    def _on_record(self, seq: int, env: Envelope) -> None:
        if self._wake_scheduled.is_set() or self._loop is None:
            return
        self._wake_scheduled.set()
        try:
            self._loop.call_soon_threadsafe(self._do_wake)
        except RuntimeError:  # loop closed
            self._wake_scheduled.clear()

    def _do_wake(self) -> None:
        self._wake_scheduled.clear()
        if self._wake is not None:
            self._wake.set()

    def _on_breaker_change(self, state: str) -> None:
        if state == CircuitBreaker.OPEN:
            log.error("forwarder_breaker_open", sink=self.sink.name if self.sink else "", error=self.last_error)
        elif state == CircuitBreaker.CLOSED:
            log.info("forwarder_breaker_closed", sink=self.sink.name if self.sink else "")
        else:
            log.info("forwarder_breaker_half_open", sink=self.sink.name if self.sink else "")

    # -- the delivery loop ----------------------------------------------------------------------

    async def _run(self) -> None:
        assert self._wake is not None
        while True:
            next_seq = self._cursor.delivered_seq + 1
            barrier = self._rotation_barrier()
            if barrier is not None and next_seq >= barrier:
                # every record the old key signed is out: the boundary checkpoint and the rotation
                # record go before the first record of the new key
                if not await self._forward_checkpoint():
                    await asyncio.sleep(self.policy.delay_s(1, self._rng, None))
                elif self._rotation_barrier() == barrier:  # no checkpoint at that seq to carry it
                    log.warning("forwarder_rotation_without_boundary_checkpoint", effective_seq=barrier)
                    self._lifted_barrier = barrier
                continue
            if next_seq > self._log.last_seq:
                await self._forward_checkpoint()  # caught up: anchor what was delivered
                if self._stopping:
                    return
                self._wake.clear()
                if next_seq > self._log.last_seq:
                    try:
                        await asyncio.wait_for(self._wake.wait(), timeout=IDLE_POLL_S)
                    except asyncio.TimeoutError:
                        pass
                continue
            if (
                self.cfg.linger_ms > 0
                and not self._stopping
                and self._log.last_seq - next_seq + 1 < self.cfg.batch_size
            ):
                # a short linger turns a trickle of decisions into batches: one sink call and one
                # cursor fsync for many records instead of one each
                await asyncio.sleep(self.cfg.linger_ms / 1000.0)
            limit = self.cfg.batch_size if barrier is None else min(self.cfg.batch_size, barrier - next_seq)
            try:
                records = await asyncio.to_thread(self._log.read, next_seq, limit)
            except (OSError, ValueError) as exc:  # unreadable record: say so, keep trying (no skipping)
                self.last_error = f"reading the evidence log at seq {next_seq}: {exc}"
                log.error("forwarder_read_failed", seq=next_seq, error=str(exc))
                await asyncio.sleep(IDLE_POLL_S)
                continue
            if not records or records[0].seq != next_seq:
                log.error("forwarder_read_gap", expected_seq=next_seq, got=records[0].seq if records else None)
                await asyncio.sleep(IDLE_POLL_S)
                continue
            await self._deliver(records)

    # -- checkpoints ----------------------------------------------------------------------------

    def _rotation_barrier(self) -> int | None:
        """The first rotation seq not yet covered by an acknowledged (or refused) checkpoint."""
        if self._checkpoints_unsupported:
            return None
        done = max(self._cursor.checkpoint_size, self._refused_checkpoint_size, self._lifted_barrier)
        pending = [seq for seq in self._log.rotation_seqs() if seq > done]
        return min(pending) if pending else None

    async def _forward_checkpoint(self) -> bool:
        """Send the newest checkpoint whose records are all delivered, if the sink has not seen it.
        True when there is nothing (more) to do; False after a retryable failure."""
        if self.sink is None or self._checkpoints_unsupported:
            return True
        delivered = self._cursor.delivered_seq + 1
        sc = await asyncio.to_thread(self._log.latest_checkpoint, delivered)
        if sc is None or sc.checkpoint.size <= max(self._cursor.checkpoint_size, self._refused_checkpoint_size):
            return True
        size = sc.checkpoint.size
        old = self._cursor.checkpoint_size
        for attempt in range(2):
            try:
                sub = await asyncio.to_thread(self._submission, sc, old)
                receipt = await asyncio.wait_for(self.sink.send_checkpoint(sub), timeout=self.policy.attempt_timeout_s + 1.0)
            except DeliveryError as exc:
                if exc.code == "unimplemented":
                    self._checkpoints_unsupported = True
                    log.warning("forwarder_checkpoints_unsupported", sink=self.sink.name, error=str(exc))
                    return True
                self.checkpoint_error = str(exc)
                if not exc.retryable:
                    self._refused_checkpoint(size, str(exc))
                    return True
                return False
            except (asyncio.TimeoutError, OSError, ValueError) as exc:
                self.checkpoint_error = f"checkpoint {size}: {exc!r}"
                return False
            if receipt.status in (ACCEPTED, DUPLICATE):
                cursor = dataclasses.replace(self._cursor, checkpoint_size=size)
                await asyncio.to_thread(self._save_cursor, cursor)
                self._cursor = cursor
                self.checkpoints_sent += 1
                self.checkpoint_error = ""
                return True
            held = receipt.held_size
            if attempt == 0 and held != old and held < size and (held == 0 or self._log.checkpoint_of_size(held) is not None):
                old = held  # the service holds another checkpoint of this log: prove from that one
                continue
            self._refused_checkpoint(size, receipt.error)
            return True
        return True

    def _refused_checkpoint(self, size: int, error: str) -> None:
        self.checkpoint_rejections += 1
        self._refused_checkpoint_size = size
        self.checkpoint_error = error
        log.error("forwarder_checkpoint_rejected", tree_size=size, error=error[:300])

    def _submission(self, sc: StoredCheckpoint, old_size: int) -> CheckpointSubmission:
        """The checkpoint with a consistency proof from ``old_size`` (worker thread: reads the
        records in between from the log)."""
        size = sc.checkpoint.size
        proof: list[bytes] = []
        if 0 < old_size < size:
            base = self._log.checkpoint_of_size(old_size)
            if base is None:
                raise ValueError(f"no checkpoint of tree size {old_size} to prove consistency from")
            # the newest records' leaves are in memory; older ones (a sink that was away) are read back
            leaves: list[bytes] = self._log.leaf_hashes(old_size, size) or []
            while old_size + len(leaves) < size:
                recs = self._log.read(old_size + len(leaves), min(4096, size - old_size - len(leaves)))
                if not recs:
                    raise ValueError(f"cannot read record {old_size + len(leaves)}")
                leaves.extend(leaf_hash(r.line) for r in recs)
            proof = Leaves.after(base.frontier, leaves).consistency_proof(old_size, size)
        return CheckpointSubmission(sc.checkpoint.note, old_size, tuple(proof), tuple(self._log.rotation_records()))

    async def _deliver(self, records: Sequence[LogRecord]) -> None:
        """Deliver ``records`` (consecutive seqs) or dead-letter them; returns when the cursor
        has moved past them. Retries forever on retryable failures (until cancelled)."""
        assert self.sink is not None
        attempt = 0
        retry_after: float | None = None
        while True:
            wait = self.breaker.wait_s()
            if attempt > 0 and self.breaker.state != CircuitBreaker.OPEN:
                wait = max(wait, self.policy.delay_s(attempt, self._rng, retry_after))
            elif retry_after:
                wait = max(wait, min(retry_after, self.policy.max_s))
            if wait > 0:
                await asyncio.sleep(wait)
            # Never call through an open breaker: an event-loop timer may fire a little before the
            # breaker's clock says the recovery timeout passed (uvloop's timers count whole
            # milliseconds from the time cached at the start of the loop iteration).
            while (rest := self.breaker.wait_s()) > 0:
                await asyncio.sleep(rest)
            self.breaker.before_call()
            try:
                receipts = await self._send(records, attempt)
            except DeliveryError as exc:
                if not exc.retryable:
                    self.breaker.record_success()  # the receiver is up and answering
                    await self._refused(records, str(exc))
                    return
                retry_after = exc.retry_after_s
                self._failed(str(exc))
                attempt += 1
                continue
            except asyncio.TimeoutError:
                retry_after = None
                self._failed(f"{self.sink.name}: attempt timed out")
                attempt += 1
                continue
            except Exception as exc:  # noqa: BLE001 - a sink bug must not kill delivery
                retry_after = None
                self._failed(f"{self.sink.name}: {exc!r}")
                attempt += 1
                continue
            by_id = {r.decision_id: r for r in receipts}
            missing = [r.seq for r in records if r.decision_id not in by_id]
            if missing:
                retry_after = None
                self._failed(f"{self.sink.name}: no receipt for seq {missing[:5]}")
                attempt += 1
                continue
            self.breaker.record_success()
            for rec in records:
                receipt = by_id[rec.decision_id]
                if receipt.status == REJECTED:
                    await self._dead_letter(rec, receipt.error or "rejected by receiver")
                elif receipt.status == DUPLICATE:
                    self.duplicates += 1
                else:
                    self.delivered += 1
            self.batches += 1
            self.last_delivery_at = time.time()
            await self._advance(records[-1])
            return

    async def _send(self, records: Sequence[LogRecord], attempt: int) -> Any:
        """One delivery attempt as a span of its own trace (delivery runs apart from requests)."""
        assert self.sink is not None
        attrs = {
            telemetry.ATTR_FORWARD_SINK: self.sink.name,
            telemetry.ATTR_FORWARD_RECORDS: len(records),
            telemetry.ATTR_FORWARD_FIRST_SEQ: records[0].seq,
            telemetry.ATTR_FORWARD_LAST_SEQ: records[-1].seq,
            telemetry.ATTR_FORWARD_ATTEMPT: attempt,
        }
        with telemetry.span(tracer, telemetry.SPAN_INTEGRITY_BRIDGE, attrs, trace.SpanKind.CLIENT, Context()) as span:
            try:
                receipts = await asyncio.wait_for(self.sink.send(records), timeout=self.policy.attempt_timeout_s + 1.0)
            except DeliveryError as exc:
                span.set_attribute(telemetry.ATTR_FORWARD_RESULT, "retry" if exc.retryable else "refused")
                raise
            span.set_attribute(telemetry.ATTR_FORWARD_RESULT, "answered")
            return receipts

    def _failed(self, error: str) -> None:
        self.failures += 1
        self.last_error = error
        self.breaker.record_failure()
        log.warning(
            "forwarder_attempt_failed",
            error=error,
            breaker=self.breaker.state,
            consecutive_failures=self.breaker.consecutive_failures,
        )

    async def _refused(self, records: Sequence[LogRecord], error: str) -> None:
        """A non-retryable answer for the whole batch: bisect to find the bad record(s)."""
        if len(records) == 1:
            await self._dead_letter(records[0], error)
            await self._advance(records[0])
            return
        mid = len(records) // 2
        await self._deliver(records[:mid])
        await self._deliver(records[mid:])

    async def _dead_letter(self, rec: LogRecord, reason: str) -> None:
        assert self._outbox is not None
        while True:  # a dead letter is never skipped: retry its write (a full disk, a read-only remount)
            try:
                await asyncio.to_thread(self._outbox.dead_letter, rec.seq, rec.decision_id, rec.evidence_id, reason)
                break
            except OSError as exc:
                self.last_error = f"writing the dead letter of seq {rec.seq}: {exc}"
                log.error("forwarder_dead_letter_write_failed", seq=rec.seq, error=str(exc))
                await asyncio.sleep(IDLE_POLL_S)
        self.dead_letters += 1
        self.dead_letters_total += 1
        log.error(
            "forwarder_dead_letter",
            seq=rec.seq,
            decision_id=rec.decision_id,
            evidence_id=rec.evidence_id,
            reason=reason[:300],
        )

    def _save_cursor(self, cursor: Cursor) -> None:
        """Persist the cursor (worker thread). A write error is logged and kept in ``stats()``, not
        raised: delivery goes on with the cursor in memory and the next advance writes it again; if
        the process stops first, the records after the cursor on disk are sent again and the
        receiver answers "duplicate" for them. Nothing is skipped either way."""
        assert self._outbox is not None
        try:
            self._outbox.save_cursor(cursor)
        except OSError as exc:
            self.cursor_error = f"seq {cursor.delivered_seq}: {exc}"
            log.error("forwarder_cursor_write_failed", seq=cursor.delivered_seq, error=str(exc))
            return
        if self.cursor_error:
            log.warning("forwarder_cursor_written_again", seq=cursor.delivered_seq)
        self.cursor_error = ""

    async def _advance(self, rec: LogRecord) -> None:
        assert self._outbox is not None
        cursor = Cursor(rec.seq, rec.evidence_id, self._cursor.checkpoint_size)
        save = asyncio.ensure_future(asyncio.to_thread(self._save_cursor, cursor))
        try:
            await asyncio.shield(save)
        except asyncio.CancelledError:
            # stopping: the write is already under way in its thread; finish it so the cursor in
            # memory and on disk agree, then honour the cancellation
            await save
            self._cursor = cursor
            raise
        self._cursor = cursor
