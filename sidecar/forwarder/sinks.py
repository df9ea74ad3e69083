"""Integrity sinks: where the forwarder delivers batches of log records.

A sink's ``send(records)`` returns one :class:`~sidecar.forwarder.wire.Receipt` per record it
handled, or raises :class:`DeliveryError` (``retryable`` decides between backoff and dead-letter,
``retry_after_s`` carries the server's hint). Sinks: ``file`` (JSONL of envelopes, the embedded
default), ``grpc`` (IntegrityService.SubmitDecisions), ``http`` (POST /v1/decisions, stdlib
``http.client`` in a worker thread).

``send_checkpoint(submission)`` delivers a signed checkpoint with its consistency proof
(:class:`~sidecar.forwarder.wire.CheckpointSubmission`) and returns the service's
:class:`~sidecar.forwarder.wire.CheckpointReceipt`; the file sink archives it beside the decisions.
A service that does not know checkpoints (gRPC UNIMPLEMENTED, HTTP 404/405) raises a non-retryable
:class:`DeliveryError` with code ``unimplemented``.
"""

from __future__ import annotations

import asyncio
import email.utils
import http.client
import json
import os
import ssl
import time
import urllib.parse
from pathlib import Path
from typing import Any, Protocol, Sequence

import grpc
import structlog

from certus.client.transparency import checkpoint_size
from certus.sidecar.config import ForwarderConfig
from certus.sidecar.evidence.records import LogRecord, append_line, parse_line
from certus.sidecar.forwarder.policy import RetryPolicy
from certus.sidecar.forwarder.wire import (
    ACCEPTED,
    DUPLICATE,
    CheckpointReceipt,
    CheckpointSubmission,
    Receipt,
    envelope_to_pb,
    http_batch_body,
    parse_receipts,
    status_from_pb,
)

log = structlog.get_logger(__name__)


class DeliveryError(Exception):
    def __init__(self, message: str, *, retryable: bool, retry_after_s: float | None = None, code: str = "") -> None:
        super().__init__(message)
        self.retryable = retryable
        self.retry_after_s = retry_after_s
        self.code = code


class Sink(Protocol):
    name: str

    async def send(self, records: Sequence[LogRecord]) -> list[Receipt]: ...

    async def send_checkpoint(self, sub: CheckpointSubmission) -> CheckpointReceipt: ...

    async def close(self) -> None: ...


# -- file ------------------------------------------------------------------------------------


def _tail_lines(path: Path, n: int, block: int = 1 << 16) -> list[bytes]:
    """The last ``n`` complete lines of ``path`` (without newlines)."""
    size = path.stat().st_size
    data = b""
    with path.open("rb") as f:
        pos = size
        while pos > 0 and data.count(b"\n") <= n:
            step = min(block, pos)
            pos -= step
            f.seek(pos)
            data = f.read(step) + data
    lines = data.split(b"\n")[:-1]  # drop the part after the last newline
    if pos > 0:
        lines = lines[1:]  # first one may be partial
    return lines[-n:]


def _end_of_last_line(path: Path, block: int = 1 << 16) -> int:
    """Offset just after the last newline of ``path`` (0 when it has none)."""
    with path.open("rb") as f:
        pos = f.seek(0, os.SEEK_END)
        while pos > 0:
            step = min(block, pos)
            pos -= step
            f.seek(pos)
            chunk = f.read(step)
            nl = chunk.rfind(b"\n")
            if nl >= 0:
                return pos + nl + 1
    return 0


class FileSink:
    """Appends each envelope (canonical JSON, one per line) to ``path``, fsynced per batch.

    Re-delivery after a crash is deduplicated against the decision ids of the file's last
    ``remember`` lines (a crash can only re-send records after the persisted cursor, i.e. at most
    one batch). A torn last line (crash mid-write) is cut off before appending.
    """

    name = "file"

    def __init__(self, path: Path, *, remember: int = 10_000) -> None:
        self.path = Path(path)
        self._remember = remember
        self._seen: dict[str, str] = {}  # decision_id -> evidence_id (insertion ordered)
        self._fd = -1

    def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists() and self.path.stat().st_size > 0:
            keep = _end_of_last_line(self.path)
            size = self.path.stat().st_size
            if keep < size:
                with self.path.open("r+b") as f:
                    f.truncate(keep)
                    os.fsync(f.fileno())
                log.warning("integrity_file_torn_tail_truncated", path=str(self.path), offset=keep, bytes_dropped=size - keep)
            for raw in _tail_lines(self.path, self._remember):
                try:
                    rec = parse_line(raw, self.path, 0, 0)
                except ValueError:
                    continue
                self._seen[rec.decision_id] = rec.evidence_id
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def _write(self, records: Sequence[LogRecord]) -> list[Receipt]:
        if self._fd < 0:
            self._open()
        out: list[Receipt] = []
        chunks: list[bytes] = []
        for r in records:
            if r.decision_id in self._seen:
                out.append(Receipt(r.decision_id, DUPLICATE, self._seen[r.decision_id]))
                continue
            chunks.append(r.line + b"\n")
            self._seen[r.decision_id] = r.evidence_id
            out.append(Receipt(r.decision_id, ACCEPTED, r.evidence_id))
        if chunks:
            data = memoryview(b"".join(chunks))
            while data:
                data = data[os.write(self._fd, data) :]
            os.fsync(self._fd)
        while len(self._seen) > self._remember:
            self._seen.pop(next(iter(self._seen)))
        return out

    async def send(self, records: Sequence[LogRecord]) -> list[Receipt]:
        try:
            return await asyncio.to_thread(self._write, records)
        except OSError as exc:
            raise DeliveryError(f"file sink {self.path}: {exc}", retryable=True, code="io") from exc

    @property
    def checkpoint_path(self) -> Path:
        return self.path.with_name(self.path.stem + ".checkpoints.jsonl")

    def _write_checkpoint(self, sub: CheckpointSubmission) -> None:
        append_line(self.checkpoint_path, json.dumps(sub.to_dict(), sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode())

    async def send_checkpoint(self, sub: CheckpointSubmission) -> CheckpointReceipt:
        """Archive the checkpoint beside the decisions (``<file>.checkpoints.jsonl``)."""
        try:
            await asyncio.to_thread(self._write_checkpoint, sub)
        except OSError as exc:
            raise DeliveryError(f"file sink {self.checkpoint_path}: {exc}", retryable=True, code="io") from exc
        return CheckpointReceipt(ACCEPTED, checkpoint_size(sub.note))

    async def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


# -- gRPC ------------------------------------------------------------------------------------


def _grpc_retry_after_s(metadata: Any) -> float | None:
    """``retry-after`` (seconds), ``retry-after-ms``, or google.rpc.RetryInfo in the trailers."""
    if not metadata:
        return None
    for key, value in metadata:
        try:
            if key == "retry-after":
                return float(value)
            if key == "retry-after-ms":
                return float(value) / 1000.0
            if key == "grpc-status-details-bin":
                from google.rpc import error_details_pb2, status_pb2

                st = status_pb2.Status.FromString(value)
                for detail in st.details:
                    if detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
                        info = error_details_pb2.RetryInfo()
                        detail.Unpack(info)
                        return float(info.retry_delay.seconds) + float(info.retry_delay.nanos) / 1e9
        except Exception:  # noqa: BLE001 - a malformed trailer is just no hint
            continue
    return None


class GrpcSink:
    name = "grpc"

    def __init__(self, target: str, policy: RetryPolicy, *, api_key: str = "") -> None:
        if not target:
            raise ValueError("forwarder.url: the grpc sink needs host:port (CERTUS_INTEGRITY_URL)")
        self._secure = target.startswith("grpcs://") or target.startswith("https://")
        self.target = target.split("://", 1)[1] if "://" in target else target
        self._policy = policy
        self._api_key = api_key
        self._channel: grpc.aio.Channel | None = None
        self._stub: Any = None

    def _ensure(self) -> Any:
        if self._stub is None:
            from certus.sidecar.protos import ipb_grpc

            # Reconnect quickly once the service is back: the forwarder's own backoff and breaker
            # decide how often to try, the channel should not add minutes of its own backoff.
            reconnect_ms = int(min(5.0, max(0.1, self._policy.max_s)) * 1000)
            options = [
                ("grpc.initial_reconnect_backoff_ms", min(200, reconnect_ms)),
                ("grpc.min_reconnect_backoff_ms", min(200, reconnect_ms)),
                ("grpc.max_reconnect_backoff_ms", reconnect_ms),
                ("grpc.max_send_message_length", 64 * 1024 * 1024),
            ]
            if self._secure:
                self._channel = grpc.aio.secure_channel(self.target, grpc.ssl_channel_credentials(), options=options)
            else:
                self._channel = grpc.aio.insecure_channel(self.target, options=options)
            self._stub = ipb_grpc.IntegrityServiceStub(self._channel)
        return self._stub

    async def _call(self, method: str, req: Any) -> Any:
        """One RPC with the bearer key and the attempt timeout; a failure is a DeliveryError."""
        metadata = (("authorization", f"Bearer {self._api_key}"),) if self._api_key else None
        try:
            return await getattr(self._ensure(), method)(req, timeout=self._policy.attempt_timeout_s, metadata=metadata)
        except grpc.aio.AioRpcError as exc:
            code = exc.code().name
            raise DeliveryError(
                f"grpc {code}: {exc.details()}",
                retryable=code in self._policy.retryable_grpc,
                retry_after_s=_grpc_retry_after_s(exc.trailing_metadata()),
                code="unimplemented" if code == "UNIMPLEMENTED" else code,
            ) from exc

    async def send(self, records: Sequence[LogRecord]) -> list[Receipt]:
        from certus.sidecar.protos import ipb

        req = ipb.SubmitDecisionsRequest(envelopes=[envelope_to_pb(r.envelope) for r in records])
        resp = await self._call("SubmitDecisions", req)
        out = []
        for r in resp.receipts:
            status = status_from_pb(r.status)
            if status is None:
                raise DeliveryError(f"receipt for {r.decision_id} has status {r.status}", retryable=True, code="protocol")
            out.append(Receipt(r.decision_id, status, r.evidence_id, r.error))
        return out

    async def send_checkpoint(self, sub: CheckpointSubmission) -> CheckpointReceipt:
        from certus.sidecar.protos import ipb

        req = ipb.SubmitCheckpointRequest(
            checkpoint=sub.note,
            old_size=sub.old_size,
            consistency_proof=list(sub.proof),
            key_rotations=[envelope_to_pb(e) for e in sub.rotations],
        )
        resp = await self._call("SubmitCheckpoint", req)
        status = status_from_pb(resp.status)
        if status is None:
            raise DeliveryError(f"checkpoint receipt has status {resp.status}", retryable=True, code="protocol")
        return CheckpointReceipt(status, int(resp.held_size), resp.error)

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()
            self._channel = None
            self._stub = None


# -- HTTP ------------------------------------------------------------------------------------


def _http_retry_after_s(value: str | None) -> float | None:
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


class HttpSink:
    name = "http"

    def __init__(self, url: str, policy: RetryPolicy, *, api_key: str = "") -> None:
        parsed = urllib.parse.urlsplit(url)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise ValueError(f"forwarder.url: the http sink needs http(s)://host:port, got {url!r}")
        self._scheme = parsed.scheme
        self._host = parsed.hostname
        self._port = parsed.port or (443 if parsed.scheme == "https" else 80)
        path = parsed.path.rstrip("/")
        self._path = path if path.endswith("/v1/decisions") else path + "/v1/decisions"
        self._checkpoint_path = self._path[: -len("/v1/decisions")] + "/v1/checkpoints"
        self._policy = policy
        self._api_key = api_key
        self.url = url

    def _post(self, body: bytes, path: str = "") -> tuple[int, bytes, str | None]:
        timeout = self._policy.attempt_timeout_s
        conn: http.client.HTTPConnection
        if self._scheme == "https":
            conn = http.client.HTTPSConnection(self._host, self._port, timeout=timeout, context=ssl.create_default_context())
        else:
            conn = http.client.HTTPConnection(self._host, self._port, timeout=timeout)
        headers = {"Content-Type": "application/json", "Content-Length": str(len(body))}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        try:
            conn.request("POST", path or self._path, body=body, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
            return resp.status, data, resp.getheader("Retry-After")
        finally:
            conn.close()

    async def send(self, records: Sequence[LogRecord]) -> list[Receipt]:
        body = http_batch_body(records)
        try:
            status, data, retry_after = await asyncio.to_thread(self._post, body)
        except (OSError, http.client.HTTPException) as exc:
            raise DeliveryError(f"http {self._host}:{self._port}: {exc!r}", retryable=True, code="connect") from exc
        if 200 <= status < 300:
            try:
                return parse_receipts(data)
            except ValueError as exc:
                raise DeliveryError(f"http {status}: bad receipts: {exc}", retryable=True, code="protocol") from exc
        raise DeliveryError(
            f"http {status}: {data[:200].decode('utf-8', 'replace')}",
            retryable=status in self._policy.retryable_http,
            retry_after_s=_http_retry_after_s(retry_after),
            code=str(status),
        )

    async def send_checkpoint(self, sub: CheckpointSubmission) -> CheckpointReceipt:
        body = json.dumps(sub.to_dict(), separators=(",", ":"), ensure_ascii=False).encode()
        try:
            status, data, retry_after = await asyncio.to_thread(self._post, body, self._checkpoint_path)
        except (OSError, http.client.HTTPException) as exc:
            raise DeliveryError(f"http {self._host}:{self._port}: {exc!r}", retryable=True, code="connect") from exc
        if status in (200, 409):
            try:
                return CheckpointReceipt.from_dict(json.loads(data))
            except ValueError as exc:
                raise DeliveryError(f"http {status}: bad checkpoint receipt: {exc}", retryable=True, code="protocol") from exc
        raise DeliveryError(
            f"http {status}: {data[:200].decode('utf-8', 'replace')}",
            retryable=status in self._policy.retryable_http,
            retry_after_s=_http_retry_after_s(retry_after),
            code="unimplemented" if status in (404, 405) else str(status),
        )

    async def close(self) -> None:
        return None


def make_sink(cfg: ForwarderConfig, policy: RetryPolicy) -> Sink | None:
    """The sink named by ``cfg.sink``; ``None`` for ``none`` (forwarding off)."""
    if cfg.sink == "file":
        return FileSink(cfg.file_path, remember=max(10_000, 4 * cfg.batch_size))
    if cfg.sink == "grpc":
        return GrpcSink(cfg.url, policy, api_key=cfg.api_key)
    if cfg.sink == "http":
        return HttpSink(cfg.url, policy, api_key=cfg.api_key)
    if cfg.sink == "none":
        return None
    raise ValueError(f"forwarder.sink: must be file, grpc, http or none; got {cfg.sink!r}")

