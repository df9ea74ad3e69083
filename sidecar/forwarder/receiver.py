"""Reference integrity receiver: the service side of the forwarder, for tests and demos.

Serves ``IntegrityService.SubmitDecisions`` (gRPC) and ``POST /v1/decisions`` (HTTP, see
:mod:`sidecar.forwarder.wire`) on real ports. Every envelope's signature is checked against the
trusted public keys and its payload validated as an IntegrityDecision; good ones are stored by
decision_id (a second delivery answers DUPLICATE, which the sender counts as success) and appended
to a JSONL store that is re-read at start. ``unavailable = True`` makes both endpoints answer
UNAVAILABLE / 503 with a retry hint, for failure tests. ``all_or_nothing = True`` makes it refuse
a whole request that holds any bad record (gRPC INVALID_ARGUMENT / HTTP 422, nothing stored), as a
strictly transactional service would; the forwarder then narrows the batch down to the bad record.

Checkpoints (``SubmitCheckpoint``, ``POST /v1/checkpoints``): the receiver keeps the newest signed
checkpoint it accepted (the first one is trusted on first use) and accepts a new one only with an
RFC 9162 consistency proof from it: a log whose tail was dropped, a forked log and a replayed older
checkpoint are all refused. Key rotation records sent with a checkpoint extend its keyring (the
trusted keys are roots), so decisions signed by the new key are accepted, and the old key's are
refused from the rotation's seq on. Checkpoints and rotations are kept in
``<store>.checkpoints.jsonl`` and re-read at start.
"""

from __future__ import annotations

import json
import threading
from concurrent import futures
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Sequence

import grpc
import structlog

from certus.client.transparency import checkpoint_size
from certus.sidecar.evidence.checkpoint import Checkpoint, CheckpointError, open_checkpoint
from certus.sidecar.evidence.decision import DecisionError, IntegrityDecision
from certus.sidecar.evidence.keyring import Keyring, KeyringError
from certus.sidecar.evidence.merkle import verify_consistency
from certus.sidecar.evidence.records import append_line, line_digest
from certus.sidecar.forwarder.wire import (
    ACCEPTED,
    DUPLICATE,
    REJECTED,
    CheckpointReceipt,
    CheckpointSubmission,
    Receipt,
    envelope_from_pb,
    status_to_pb,
)
from certus.sidecar.signing import (
    DECISION_PAYLOAD_TYPE,
    Envelope,
    SignatureError,
    VerifyKey,
    canonical_json,
)

log = structlog.get_logger(__name__)

MAX_HTTP_BODY = 64 * 1024 * 1024


class BatchRefused(Exception):
    """all_or_nothing mode: the request held a bad record; nothing was stored."""


@dataclass(frozen=True)
class StoredDecision:
    decision_id: str
    evidence_id: str
    seq: int | None
    envelope: dict[str, Any]


class IntegrityReceiver:
    def __init__(
        self,
        trusted_keys: Sequence[VerifyKey],
        *,
        store_path: Path | None = None,
        api_key: str = "",
        retry_after_s: float = 0.05,
        all_or_nothing: bool = False,
    ) -> None:
        if not trusted_keys:
            raise ValueError("the receiver needs at least one trusted public key")
        self._ring = Keyring(trusted_keys)
        self._store_path = Path(store_path) if store_path else None
        self._cp_path = self._store_path.with_name(self._store_path.stem + ".checkpoints.jsonl") if self._store_path else None
        self.checkpoint: Checkpoint | None = None  # the newest accepted
        self.checkpoints_accepted = 0
        self.checkpoints_rejected = 0
        self.checkpoint_errors: list[str] = []  # reasons, newest last (for tests and operators)
        self._api_key = api_key
        self.retry_after_s = retry_after_s
        self.unavailable = False
        self.all_or_nothing = all_or_nothing
        self._lock = threading.Lock()
        self._store: dict[str, StoredDecision] = {}
        self.accepted = 0
        self.duplicates = 0
        self.rejected = 0
        self.requests = 0
        self.refused_requests = 0  # answered UNAVAILABLE / 503 / unauthenticated
        self._grpc_server: grpc.Server | None = None
        self._http_server: ThreadingHTTPServer | None = None
        self._http_thread: threading.Thread | None = None
        if self._store_path is not None and self._store_path.exists():
            self._load()
        if self._cp_path is not None and self._cp_path.exists():
            self._load_checkpoints()

    # -- store ------------------------------------------------------------------------------------

    def _load(self) -> None:
        assert self._store_path is not None
        with self._store_path.open("rb") as f:
            for raw in f:
                if not raw.endswith(b"\n"):
                    break
                try:
                    d = json.loads(raw)
                    item = StoredDecision(d["decision_id"], d["evidence_id"], d.get("seq"), d["envelope"])
                except (ValueError, KeyError, TypeError):
                    continue
                self._store[item.decision_id] = item

    def _load_checkpoints(self) -> None:
        assert self._cp_path is not None
        for raw in self._cp_path.read_bytes().split(b"\n")[:-1]:
            d = json.loads(raw)
            for env in d.get("key_rotations", []):
                self._ring.apply(Envelope.from_json_dict(env))
            self.checkpoint = open_checkpoint(d["checkpoint"], self._ring.keys)

    def submit_checkpoint(self, sub: CheckpointSubmission) -> CheckpointReceipt:
        """Accept ``sub`` only if it extends the checkpoint held (or is the first one)."""
        with self._lock:
            held = self.checkpoint
            held_size = held.size if held else 0
            try:
                for env in sub.rotations:
                    self._ring.apply(env)
                keys = self._ring.keys_for_checkpoint(checkpoint_size(sub.note))
                cp = open_checkpoint(sub.note, keys, origin=held.origin if held else None)
                if held is not None:
                    if cp.size < held.size:
                        raise CheckpointError(f"tree size {cp.size} is older than the held checkpoint's {held.size} (a replay or a rollback)")
                    if sub.old_size != held.size:
                        raise CheckpointError(f"the proof starts at tree size {sub.old_size}; the service holds {held.size}")
                    verify_consistency(held.size, cp.size, held.root, cp.root, sub.proof)
                    if cp.size == held.size:
                        return CheckpointReceipt(DUPLICATE, held.size)
            except (CheckpointError, KeyringError, ValueError) as exc:
                self.checkpoints_rejected += 1
                self.checkpoint_errors.append(str(exc))
                log.warning("integrity_receiver_checkpoint_rejected", error=str(exc), held_size=held_size)
                return CheckpointReceipt(REJECTED, held_size, str(exc))
            self.checkpoint = cp
            self.checkpoints_accepted += 1
            if self._cp_path is not None:
                self._cp_path.parent.mkdir(parents=True, exist_ok=True)
                line = {"checkpoint": cp.note, "key_rotations": [e.to_json_dict() for e in sub.rotations]}
                append_line(self._cp_path, json.dumps(line, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode())
            return CheckpointReceipt(ACCEPTED, cp.size)

    def decisions(self) -> dict[str, StoredDecision]:
        with self._lock:
            return dict(self._store)

    def stats(self) -> dict[str, int]:
        with self._lock:
            return {
                "stored": len(self._store),
                "accepted": self.accepted,
                "duplicates": self.duplicates,
                "rejected": self.rejected,
                "requests": self.requests,
                "refused_requests": self.refused_requests,
                "checkpoint_size": self.checkpoint.size if self.checkpoint else 0,
                "checkpoints_accepted": self.checkpoints_accepted,
                "checkpoints_rejected": self.checkpoints_rejected,
            }

    def submit(self, envelopes: Sequence[Envelope], decisions: Sequence[Any] | None = None) -> list[Receipt]:
        """Verify and store; one receipt per envelope. ``decisions`` (HTTP) must equal the payloads."""
        out: list[Receipt] = []
        lines: list[bytes] = []
        with self._lock:
            self.requests += 1
            checked = [self._check(env, None if decisions is None else decisions[i]) for i, env in enumerate(envelopes)]
            if self.all_or_nothing and any(item is None for _, item in checked):
                self.rejected += sum(1 for _, item in checked if item is None)
                raise BatchRefused("; ".join(f"{r.decision_id or '?'}: {r.error}" for r, item in checked if item is None))
            for receipt, item in checked:
                if item is not None:
                    if item.decision_id in self._store:
                        prior = self._store[item.decision_id]
                        receipt = Receipt(item.decision_id, DUPLICATE, prior.evidence_id)
                        self.duplicates += 1
                    else:
                        self._store[item.decision_id] = item
                        self.accepted += 1
                        lines.append(
                            json.dumps(
                                {
                                    "decision_id": item.decision_id,
                                    "evidence_id": item.evidence_id,
                                    "seq": item.seq,
                                    "envelope": item.envelope,
                                },
                                sort_keys=True,
                                separators=(",", ":"),
                            ).encode()
                            + b"\n"
                        )
                else:
                    self.rejected += 1
                out.append(receipt)
            if lines and self._store_path is not None:
                self._store_path.parent.mkdir(parents=True, exist_ok=True)
                with self._store_path.open("ab") as f:
                    f.write(b"".join(lines))
        return out

    def _check(self, env: Envelope, decision: Any) -> tuple[Receipt, StoredDecision | None]:
        decision_id = ""
        try:
            payload = json.loads(env.payload)
            if isinstance(payload, dict):
                decision_id = str(payload.get("decision_id", ""))
        except ValueError:
            payload = None
        if not isinstance(payload, dict):
            return Receipt(decision_id, REJECTED, "", "payload is not a JSON object"), None
        error = self._signature_error(env, payload.get("seq"))
        if error:
            return Receipt(decision_id, REJECTED, "", f"signature: {error}"), None
        try:
            dec = IntegrityDecision.from_payload(payload)
        except DecisionError as exc:
            return Receipt(decision_id, REJECTED, "", f"payload: {exc}"), None
        if decision is not None and (not isinstance(decision, dict) or canonical_json(decision) != env.payload):
            return Receipt(decision_id, REJECTED, "", "decision does not match the signed payload"), None
        env_dict = env.to_json_dict()
        evidence_id = line_digest(env.to_json())
        return Receipt(dec.decision_id, ACCEPTED, evidence_id), StoredDecision(dec.decision_id, evidence_id, dec.seq, env_dict)

    def _signature_error(self, env: Envelope, seq: Any) -> str:
        """"" when a key of the keyring, in its epoch for ``seq``, signed ``env``."""
        if env.payload_type != DECISION_PAYLOAD_TYPE:
            return f"payloadType {env.payload_type!r}, expected {DECISION_PAYLOAD_TYPE!r}"
        if isinstance(seq, bool) or not isinstance(seq, int):
            return "payload has no integer seq"
        return self._ring.signer(env, seq)[1]

    def _authorized(self, header: str | None) -> bool:
        return not self._api_key or header == f"Bearer {self._api_key}"

    # -- gRPC -------------------------------------------------------------------------------------

    def start_grpc(self, address: str = "127.0.0.1:0") -> int:
        from certus.sidecar.protos import ipb, ipb_grpc

        receiver = self

        def gate(context: grpc.ServicerContext) -> None:
            """Bearer key and the unavailable switch, for every RPC alike."""
            if not receiver._authorized(dict(context.invocation_metadata()).get("authorization")):
                with receiver._lock:
                    receiver.refused_requests += 1
                context.abort(grpc.StatusCode.UNAUTHENTICATED, "bad or missing bearer key")
            if receiver.unavailable:
                with receiver._lock:
                    receiver.refused_requests += 1
                context.set_trailing_metadata((("retry-after", f"{receiver.retry_after_s:g}"),))
                context.abort(grpc.StatusCode.UNAVAILABLE, "integrity service unavailable (test switch)")

        class Servicer(ipb_grpc.IntegrityServiceServicer):  # type: ignore[misc]
            def SubmitDecisions(self, request: Any, context: grpc.ServicerContext) -> Any:  # noqa: N802
                gate(context)
                envs = [envelope_from_pb(e) for e in request.envelopes]
                try:
                    receipts = receiver.submit(envs)
                except BatchRefused as exc:
                    context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"batch refused: {exc}"[:1000])
                return ipb.SubmitDecisionsResponse(
                    receipts=[
                        ipb.Receipt(decision_id=r.decision_id, status=status_to_pb(r.status), evidence_id=r.evidence_id, error=r.error)
                        for r in receipts
                    ]
                )

            def SubmitCheckpoint(self, request: Any, context: grpc.ServicerContext) -> Any:  # noqa: N802
                gate(context)
                try:
                    rotations = tuple(envelope_from_pb(e) for e in request.key_rotations)
                    sub = CheckpointSubmission(request.checkpoint, request.old_size, tuple(bytes(h) for h in request.consistency_proof), rotations)
                except ValueError as exc:
                    context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"malformed checkpoint: {exc}")
                r = receiver.submit_checkpoint(sub)
                return ipb.SubmitCheckpointResponse(status=status_to_pb(r.status), held_size=r.held_size, error=r.error)

        server = grpc.server(futures.ThreadPoolExecutor(max_workers=4), options=[("grpc.max_receive_message_length", MAX_HTTP_BODY)])
        ipb_grpc.add_IntegrityServiceServicer_to_server(Servicer(), server)
        port = int(server.add_insecure_port(address))
        if port == 0:
            raise OSError(f"cannot bind gRPC address {address}")
        server.start()
        self._grpc_server = server
        log.info("integrity_receiver_grpc_listening", port=port)
        return port

    # -- HTTP -------------------------------------------------------------------------------------

    def start_http(self, address: str = "127.0.0.1:0") -> int:
        host, _, port_s = address.rpartition(":")
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                log.debug("integrity_receiver_http", line=format % args)

            def _reply(self, status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:  # noqa: N802
                if self.path == "/health":
                    self._reply(503 if receiver.unavailable else 200, {"status": "unavailable" if receiver.unavailable else "ok"})
                else:
                    self._reply(404, {"error": "not found"})

            def do_POST(self) -> None:  # noqa: N802
                path = self.path.rstrip("/")
                if path not in ("/v1/decisions", "/v1/checkpoints"):
                    self._reply(404, {"error": "not found"})
                    return
                length = int(self.headers.get("Content-Length") or 0)
                if length <= 0 or length > MAX_HTTP_BODY:
                    self._reply(400, {"error": f"Content-Length must be 1..{MAX_HTTP_BODY}"})
                    return
                raw = self.rfile.read(length)
                if not receiver._authorized(self.headers.get("Authorization")):
                    with receiver._lock:
                        receiver.refused_requests += 1
                    self._reply(401, {"error": "bad or missing bearer key"})
                    return
                if receiver.unavailable:
                    with receiver._lock:
                        receiver.refused_requests += 1
                    self._reply(503, {"error": "unavailable (test switch)"}, {"Retry-After": f"{receiver.retry_after_s:g}"})
                    return
                if path == "/v1/checkpoints":
                    try:
                        sub = CheckpointSubmission.from_dict(json.loads(raw))
                    except (ValueError, SignatureError) as exc:
                        self._reply(400, {"error": f"malformed checkpoint: {exc}"})
                        return
                    r = receiver.submit_checkpoint(sub)
                    self._reply(409 if r.status == REJECTED else 200, r.to_dict())
                    return
                try:
                    body = json.loads(raw)
                    if not isinstance(body, dict):
                        raise ValueError("body is not a JSON object")
                    if "decisions" in body:
                        items = body["decisions"]
                        if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
                            raise ValueError("decisions must be a list of objects")
                        envs = [Envelope.from_json_dict(i["envelope"]) for i in items]
                        decisions = [i.get("decision") for i in items]
                        single = False
                    else:
                        fields = dict(body)
                        envs = [Envelope.from_json_dict(fields.pop("envelope"))]
                        decisions = [fields]
                        single = True
                except (ValueError, KeyError, TypeError, SignatureError) as exc:
                    self._reply(400, {"error": f"malformed request: {exc}"})
                    return
                try:
                    receipts = receiver.submit(envs, decisions)
                except BatchRefused as exc:
                    self._reply(422, {"error": f"batch refused: {exc}"[:1000]})
                    return
                if not single:
                    self._reply(200, {"receipts": [r.to_dict() for r in receipts]})
                    return
                r = receipts[0]
                status = {ACCEPTED: 201, DUPLICATE: 200, REJECTED: 422}[r.status]
                self._reply(status, r.to_dict())

        server = ThreadingHTTPServer((host or "127.0.0.1", int(port_s)), Handler)
        server.daemon_threads = True
        self._http_server = server
        self._http_thread = threading.Thread(target=server.serve_forever, name="integrity-http", daemon=True)
        self._http_thread.start()
        port = int(server.server_address[1])
        log.info("integrity_receiver_http_listening", port=port)
        return port

    def stop(self) -> None:
        if self._grpc_server is not None:
            self._grpc_server.stop(grace=None).wait(5)
            self._grpc_server = None
        if self._http_server is not None:
            self._http_server.shutdown()
            self._http_server.server_close()
            self._http_server = None
        if self._http_thread is not None:
            self._http_thread.join(5)
            self._http_thread = None
