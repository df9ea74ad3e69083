"""``@trace(log_path=...)``: log every call of an LLM/RAG function to JSONL, off the caller's thread.

    from certus.client import trace

    @trace(log_path="production_traces.jsonl")
    def rag_pipeline(query: str) -> dict:
        context = retrieve(query)
        answer = llm(context, query)
        return {"query": query, "context": context, "answer": answer}

One JSON object per call: ``timestamp`` (RFC 3339 UTC), ``trace_id``, ``function``, ``query``,
``context``, ``answer``, ``latency_ms``, ``error`` (``"Type: message"`` or null) and ``metadata``
(extra keys from ``extract``). ``certus-sidecar evaluate`` reads these files.

Where the fields come from, in order:
1. ``extract(args, kwargs, result) -> dict`` when given (any of query/context/answer + metadata);
2. a dict result: its ``query_field`` / ``context_field`` / ``answer_field`` keys;
3. the call's arguments with those names (positional or keyword);
4. a ``str`` result is the answer.

Cost on the caller's thread: a dict and a deque append (no I/O, no JSON). A single background
writer thread per file serialises and appends in batches; the queue is bounded (``max_queue``) and a
full queue drops the record and counts it — tracing never blocks or fails the application.
Exceptions of the traced function are recorded and re-raised unchanged. Pending records are
written at interpreter exit (``atexit``) or by :func:`flush`.

``forward=`` (an address like ``"127.0.0.1:50051"``, a :class:`certus.client.sync.SidecarClient` or a
dict of client options) also sends each call to the sidecar for live evaluation — from the writer
thread, through the non-blocking client (deadline, circuit breaker, skipped on failure), so the
caller pays nothing for it. ``on_evaluation(trace_id, evaluation)`` receives the results.

Trace files hold the texts themselves (that is what offline evaluation scores): they are created
with mode 0600 and are the application's data to protect, unlike the sidecar's own logs and
evidence, which hold hashes only.

This module imports only the standard library; gRPC is loaded by the writer thread when forwarding.
"""

from __future__ import annotations

import atexit
import collections
import functools
import inspect
import json
import os
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Mapping, TypeVar

F = TypeVar("F", bound=Callable[..., Any])

DEFAULT_MAX_QUEUE = 10_000
_BATCH_MAX = 512
_IDLE_WAIT_S = 1.0  # deep sleep: woken by the next record (or this timeout, as a safety net)
_POLL_S = 0.02  # while records flow: how long a record may wait before the writer looks
_DEEP_SLEEP_AFTER_S = 1.0
_YIELD_EVERY = 8  # records serialised between GIL hand-backs on the writer thread


@dataclass
class WriterStats:
    enqueued: int = 0
    written: int = 0
    dropped: int = 0  # queue full
    write_errors: int = 0
    forwarded: int = 0
    forward_skipped: int = 0  # the sidecar answered skipped (or could not be reached)
    forward_not_sent: int = 0  # records that cannot be evaluated (no query/answer/context, or an error)


@dataclass
class _Forward:
    """How one decorated function forwards its calls (shared by its records)."""

    target: Any  # address, dict of options or a SidecarClient
    workspace_id: str | None = None
    manifest_uri: str | None = None
    mode: str | None = None
    on_evaluation: Callable[[str, Any], None] | None = None
    client: Any = None
    pending: set[Any] = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def get_client(self) -> Any:
        if self.client is None:
            from certus.client.sync import client_from

            self.client = client_from(self.target)
        return self.client


class _Flush:
    __slots__ = ("event",)

    def __init__(self) -> None:
        self.event = threading.Event()


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _chunk_text(x: Any) -> Any:
    if isinstance(x, str):
        return x
    for attr in ("page_content", "text", "content"):
        v = x.get(attr) if isinstance(x, Mapping) else getattr(x, attr, None)
        if isinstance(v, str):
            return v
    return str(x)


def _context_json(ctx: Any) -> Any:
    if ctx is None or isinstance(ctx, str):
        return ctx
    if isinstance(ctx, (list, tuple)):
        return [_chunk_text(c) for c in ctx]
    return _chunk_text(ctx)


def _jsonable(v: Any) -> Any:
    if v is None or isinstance(v, (str, int, float, bool)):
        return v
    if isinstance(v, Mapping):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    return str(v)


class TraceWriter:
    """One background thread appending records to one JSONL file."""

    def __init__(self, path: Path, max_queue: int = DEFAULT_MAX_QUEUE) -> None:
        self.path = path
        self.max_queue = max_queue
        self.stats = WriterStats()
        self._items: collections.deque[Any] = collections.deque()
        self._wake = threading.Event()
        self._closed = False
        self._sleeping = True
        self._error_reported = False
        self._thread = threading.Thread(target=self._run, name=f"trace-writer:{path.name}", daemon=True)
        self._thread.start()

    # -- caller side (cheap) ------------------------------------------------------------------------
    def put(self, record: dict[str, Any], forward: _Forward | None) -> bool:
        if self._closed or len(self._items) >= self.max_queue:
            self.stats.dropped += 1
            return False
        self._items.append((record, forward))
        self.stats.enqueued += 1
        if self._sleeping:  # only an idle writer needs a wake-up (a syscall); a busy one polls
            self._wake.set()
        return True

    def flush(self, timeout: float | None = 10.0) -> bool:
        """Block until every record queued before this call is written; False on timeout."""
        if not self._thread.is_alive():
            return not self._items
        marker = _Flush()
        self._items.append(marker)
        self._wake.set()
        return marker.event.wait(timeout)

    def close(self, timeout: float = 5.0) -> None:
        if self._closed:
            return
        self.flush(timeout)
        self._closed = True
        self._wake.set()
        self._thread.join(timeout)

    # -- writer thread ------------------------------------------------------------------------------
    def _open(self) -> Any:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        return os.fdopen(fd, "a", encoding="utf-8")

    def _run(self) -> None:
        f = None
        idle_since = time.monotonic()
        while True:
            if not self._items:
                if self._closed:
                    break
                if time.monotonic() - idle_since < _DEEP_SLEEP_AFTER_S:
                    self._wake.wait(_POLL_S)  # records are flowing: poll, callers need not wake us
                else:
                    self._sleeping = True
                    if not self._items:  # re-check after publishing the flag (no lost wake-up)
                        self._wake.wait(_IDLE_WAIT_S)
                    self._sleeping = False
                self._wake.clear()
                continue
            idle_since = time.monotonic()
            batch: list[tuple[dict[str, Any], _Forward | None]] = []
            markers: list[_Flush] = []
            while self._items and len(batch) < _BATCH_MAX:
                item = self._items.popleft()
                if isinstance(item, _Flush):
                    markers.append(item)
                    break  # everything before the marker is in this batch
                batch.append(item)
            lines = []
            for n, (record, _fwd) in enumerate(batch, start=1):
                try:
                    lines.append(self._serialize(record))
                except Exception:  # noqa: BLE001 - an unserialisable record is dropped, counted
                    self.stats.write_errors += 1
                if n % _YIELD_EVERY == 0:
                    time.sleep(0)  # hand the GIL back: a caller never waits for a whole batch
            try:
                if lines:
                    if f is None:
                        f = self._open()
                    f.write("".join(lines))
                    f.flush()
                    self.stats.written += len(lines)
            except Exception as exc:  # noqa: BLE001 - tracing never fails the application
                self.stats.write_errors += len(lines)
                self._report_error(exc)
                f = None
            for record, fwd in batch:
                if fwd is not None:
                    self._forward(record, fwd)
            for m in markers:
                m.event.set()
        if f is not None:
            f.close()

    @staticmethod
    def _serialize(record: dict[str, Any]) -> str:
        out = {
            "timestamp": _iso(record["ts"]),
            "trace_id": record["trace_id"],
            "function": record["function"],
            "query": _jsonable(record.get("query")),
            "context": _jsonable(_context_json(record.get("context"))),
            "answer": _jsonable(record.get("answer")),
            "latency_ms": round(record["latency_ms"], 3),
            "error": record.get("error"),
        }
        if record.get("metadata"):
            out["metadata"] = _jsonable(record["metadata"])
        return json.dumps(out, ensure_ascii=False) + "\n"

    def _report_error(self, exc: BaseException) -> None:
        if self._error_reported:
            return
        self._error_reported = True
        import logging

        logging.getLogger(__name__).error("trace_write_failed path=%s error_type=%s", self.path, type(exc).__name__)

    def _forward(self, record: dict[str, Any], fwd: _Forward) -> None:
        query, answer = record.get("query"), record.get("answer")
        ctx = _context_json(record.get("context"))
        chunks = [ctx] if isinstance(ctx, str) else ctx
        if record.get("error") or not isinstance(query, str) or not query or not isinstance(answer, str) or not answer:
            self.stats.forward_not_sent += 1
            return
        if not isinstance(chunks, list) or not all(isinstance(c, str) for c in chunks):
            self.stats.forward_not_sent += 1
            return
        try:
            client = fwd.get_client()
            fut = client.submit(
                query,
                answer,
                chunks,
                workspace_id=fwd.workspace_id,
                manifest_uri=fwd.manifest_uri,
                mode=fwd.mode,
                trace_id=record["trace_id"],
            )
        except Exception as exc:  # noqa: BLE001 - e.g. a bad address: counted, never raised
            self.stats.forward_skipped += 1
            self._report_error(exc)
            return
        with fwd.lock:
            fwd.pending.add(fut)
        trace_id = record["trace_id"]

        def done(f: Any) -> None:
            with fwd.lock:
                fwd.pending.discard(f)
            ev = f.result()
            if ev.skipped and not ev.evaluation_id:
                self.stats.forward_skipped += 1
            else:
                self.stats.forwarded += 1
            if fwd.on_evaluation is not None:
                try:
                    fwd.on_evaluation(trace_id, ev)
                except Exception:  # noqa: BLE001 - a failing callback must not stop tracing
                    pass

        fut.add_done_callback(done)


_writers: dict[Path, TraceWriter] = {}
_forwards: list[_Forward] = []
_registry_lock = threading.Lock()


def writer_for(path: str | Path, max_queue: int = DEFAULT_MAX_QUEUE) -> TraceWriter:
    p = Path(path).expanduser().resolve()
    w = _writers.get(p)
    if w is None:
        with _registry_lock:
            w = _writers.get(p)
            if w is None:
                w = TraceWriter(p, max_queue)
                _writers[p] = w
    return w


def flush(timeout: float | None = 10.0, *, forwarded: bool = True) -> bool:
    """Write every queued record of every trace file; with ``forwarded``, also wait (up to
    ``timeout``) for forwarded evaluations in flight. True when all of it finished in time."""
    ok = all(w.flush(timeout) for w in list(_writers.values()))
    if forwarded:
        import concurrent.futures

        pending = [f for fwd in list(_forwards) for f in list(fwd.pending)]
        if pending:
            _done, not_done = concurrent.futures.wait(pending, timeout=timeout)
            ok = ok and not not_done
    return ok


def stats(log_path: str | Path) -> WriterStats:
    return writer_for(log_path).stats


@atexit.register
def _close_all() -> None:
    flush(timeout=5.0)
    for w in list(_writers.values()):
        w.close(timeout=5.0)
    for fwd in list(_forwards):
        client = fwd.client
        if client is not None and fwd.target is not client:
            try:
                client.close()
            except Exception:  # noqa: BLE001
                pass


def _param_index(sig: inspect.Signature | None, name: str) -> int | None:
    if sig is None:
        return None
    for i, p in enumerate(sig.parameters.values()):
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD):
            if p.name == name:
                return i
        else:
            break
    return None


def trace(
    func: F | None = None,
    *,
    log_path: str | Path = "traces.jsonl",
    query_field: str = "query",
    context_field: str = "context",
    answer_field: str = "answer",
    extract: Callable[[tuple[Any, ...], dict[str, Any], Any], Mapping[str, Any]] | None = None,
    forward: Any = None,
    workspace_id: str | None = None,
    manifest_uri: str | None = None,
    mode: str | None = None,
    on_evaluation: Callable[[str, Any], None] | None = None,
    max_queue: int = DEFAULT_MAX_QUEUE,
    enabled: bool = True,
) -> Any:
    """Decorate a sync or async function; see the module docstring. Usable bare (``@trace``)."""

    def decorate(fn: F) -> F:
        if not enabled:
            return fn
        writer = writer_for(log_path, max_queue)
        fwd = None
        if forward is not None:
            fwd = _Forward(forward, workspace_id, manifest_uri, mode, on_evaluation)
            if not isinstance(forward, (str, Mapping)):
                fwd.client = forward
            _forwards.append(fwd)
        name = f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', repr(fn))}"
        try:
            sig: inspect.Signature | None = inspect.signature(fn)
        except (TypeError, ValueError):
            sig = None
        q_idx = _param_index(sig, query_field)
        c_idx = _param_index(sig, context_field)
        a_idx = _param_index(sig, answer_field)

        def from_args(args: tuple[Any, ...], kwargs: dict[str, Any], key: str, idx: int | None) -> Any:
            if key in kwargs:
                return kwargs[key]
            if idx is not None and idx < len(args):
                return args[idx]
            return None

        def record(args: tuple[Any, ...], kwargs: dict[str, Any], result: Any, error: BaseException | None, t0: float, ts: float) -> None:
            latency_ms = (time.perf_counter() - t0) * 1000.0
            try:
                rec: dict[str, Any] = {
                    "ts": ts,
                    "trace_id": os.urandom(16).hex(),
                    "function": name,
                    "latency_ms": latency_ms,
                    "error": None if error is None else f"{type(error).__name__}: {error}",
                }
                fields: Mapping[str, Any] | None = None
                if extract is not None and error is None:
                    fields = extract(args, kwargs, result)
                if fields is not None:
                    extra = {k: v for k, v in fields.items() if k not in (query_field, context_field, answer_field)}
                    rec["query"] = fields.get(query_field)
                    rec["context"] = fields.get(context_field)
                    rec["answer"] = fields.get(answer_field)
                    if extra:
                        rec["metadata"] = dict(extra)
                elif isinstance(result, Mapping):
                    rec["query"] = result.get(query_field, from_args(args, kwargs, query_field, q_idx))
                    rec["context"] = result.get(context_field, from_args(args, kwargs, context_field, c_idx))
                    rec["answer"] = result.get(answer_field)
                else:
                    rec["query"] = from_args(args, kwargs, query_field, q_idx)
                    rec["context"] = from_args(args, kwargs, context_field, c_idx)
                    rec["answer"] = result if isinstance(result, str) else from_args(args, kwargs, answer_field, a_idx)
                ctx = rec.get("context")
                if isinstance(ctx, list):  # the caller may reuse its list: keep what it held now
                    rec["context"] = list(ctx)
                writer.put(rec, fwd)
            except Exception:  # noqa: BLE001 - tracing never fails the application
                writer.stats.write_errors += 1

        if inspect.iscoroutinefunction(fn):

            @functools.wraps(fn)
            async def awrapper(*args: Any, **kwargs: Any) -> Any:
                ts = time.time()
                t0 = time.perf_counter()
                try:
                    result = await fn(*args, **kwargs)
                except BaseException as exc:
                    record(args, kwargs, None, exc, t0, ts)
                    raise
                record(args, kwargs, result, None, t0, ts)
                return result

            awrapper.trace_writer = writer  # type: ignore[attr-defined]
            return awrapper  # type: ignore[return-value]

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            ts = time.time()
            t0 = time.perf_counter()
            try:
                result = fn(*args, **kwargs)
            except BaseException as exc:
                record(args, kwargs, None, exc, t0, ts)
                raise
            record(args, kwargs, result, None, t0, ts)
            return result

        wrapper.trace_writer = writer  # type: ignore[attr-defined]
        return wrapper  # type: ignore[return-value]

    if func is not None:
        return decorate(func)
    return decorate


__all__ = ["trace", "flush", "stats", "TraceWriter", "WriterStats", "writer_for"]
