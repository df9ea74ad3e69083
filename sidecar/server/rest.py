"""The spec's REST API (§2.1) on its own port: ``POST /v1/evaluate``,
``GET /v1/evaluate/{evaluation_id}/status`` and ``GET /v1/health``. Off unless
``server.rest_address`` (``CERTUS_REST_ADDRESS``) is set.

One code path with gRPC, not a copy: the JSON body becomes the same protobuf ``EvaluateRequest``
(``json_format``, unknown fields refused), then the same validation (``convert``), bearer
authentication (the same :class:`~sidecar.security.access.Authenticator`: static tokens and JWTs),
workspace scopes and rate limit (``AccessControl``), pipeline, admission and evidence; the answer is
the gRPC ``EvaluateResponse`` as JSON (``json_format``) with the spec's fields on top (``metrics`` as
name -> score, ``mode`` and ``outcome`` in lower case, ``null`` for absent ids). Errors go through
the one error mapping (``errormap.map_exception``) and its gRPC code becomes the HTTP status:

| gRPC | HTTP | ``error`` |
|---|---|---|
| INVALID_ARGUMENT | 400 | ``invalid_request`` (``details.field_violations``: field -> why) |
| UNAUTHENTICATED | 401 | ``unauthorized`` |
| PERMISSION_DENIED | 403 | ``forbidden`` |
| NOT_FOUND | 404 | ``not_found`` |
| RESOURCE_EXHAUSTED | 429 | ``rate_limited`` (``retry_after_ms``, ``Retry-After``) |
| UNAVAILABLE | 503 | ``evaluation_service_unavailable`` |
| INTERNAL | 500 | ``internal_error`` |

Every error body carries the spec's ``fallback`` guidance. A skipped evaluation (timeout,
overload) is 200 with ``skipped: true``, as on gRPC; async mode is 202 with a ``status_uri``.

Built with Starlette (routing, requests, responses; ASGI) served by uvicorn on the sidecar's own
event loop (``server/http.py``): the handlers await the same pipeline coroutines as the gRPC servicer. Both are small,
well-kept and pinned in the locks.
"""

from __future__ import annotations

import json
from typing import Any

import grpc
import structlog
from google.protobuf import json_format
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from certus.sidecar import __version__
from certus.sidecar.domain import EvaluationResult
from certus.sidecar.errors import InvalidArgument, Unauthenticated
from certus.sidecar.protos import pb
from certus.sidecar.security.access import bind_identity
from certus.sidecar.server import convert, errormap
from certus.sidecar.server.http import UvicornListener

log = structlog.get_logger(__name__)

HTTP_OF = {
    grpc.StatusCode.INVALID_ARGUMENT: (400, "invalid_request"),
    grpc.StatusCode.UNAUTHENTICATED: (401, "unauthorized"),
    grpc.StatusCode.PERMISSION_DENIED: (403, "forbidden"),
    grpc.StatusCode.NOT_FOUND: (404, "not_found"),
    grpc.StatusCode.RESOURCE_EXHAUSTED: (429, "rate_limited"),
    grpc.StatusCode.UNAVAILABLE: (503, "evaluation_service_unavailable"),
    grpc.StatusCode.INTERNAL: (500, "internal_error"),
}
FALLBACK = "Serve the response without quality evaluation; nothing was recorded for this request"
MODES = {"shadow": "EVALUATION_MODE_SHADOW", "enforce": "EVALUATION_MODE_ENFORCE", "async": "EVALUATION_MODE_ASYNC", "disabled": "EVALUATION_MODE_DISABLED"}


def error_response(exc: BaseException, trace_id: str | None = None) -> JSONResponse:
    m = errormap.map_exception(exc)
    status, code = HTTP_OF.get(m.code, (500, "internal_error"))
    body: dict[str, Any] = {"error": code, "message": m.message, "details": None, "fallback": FALLBACK, "retry_after_ms": None, "trace_id": trace_id}
    if isinstance(exc, InvalidArgument):
        body["details"] = {"field_violations": {v.field: v.description for v in exc.violations}}
    headers = {}
    retry_ms = getattr(exc, "retry_after_ms", None)
    if retry_ms is not None:
        body["retry_after_ms"] = int(retry_ms)
        headers["Retry-After"] = str(max(1, -(-int(retry_ms) // 1000)))
    if status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    return JSONResponse(body, status_code=status, headers=headers)


def result_json(r: EvaluationResult) -> dict[str, Any]:
    """The gRPC answer as JSON, with the spec's field shapes on top."""
    d: dict[str, Any] = json_format.MessageToDict(
        convert.result_to_pb(r), preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )
    d["metric_details"] = d.pop("metrics", [])
    d["metrics"] = {m.name: m.value for m in r.metrics}
    d["mode"] = r.mode.value
    d["outcome"] = None if r.pending else r.outcome.value
    d["status"] = "pending" if r.pending else "completed"
    d["evidence_id"] = r.evidence_id or None
    d["skip_reason"] = r.skip_reason or None
    d["overall_score"] = r.overall_score
    d["processing_time_us"] = r.processing_time_us  # an int, not proto3 JSON's string for 64-bit
    d["trace_id"] = r.trace_id or None
    return d


class RestApi:
    def __init__(self, app: Any) -> None:
        self.app = app
        self.asgi = Starlette(
            routes=[
                Route("/v1/evaluate", self.evaluate, methods=["POST"]),
                Route("/v1/evaluate/{evaluation_id}/status", self.status, methods=["GET"]),
                Route("/v1/health", self.health, methods=["GET"]),
            ]
        )
        self._listener = UvicornListener(self.asgi, "server.rest_address")
        self.port = 0

    # -- handlers -----------------------------------------------------------------------------

    def _authenticate(self, request: Request) -> None:
        """Bind the caller's identity, as the gRPC auth interceptor does (auth off: nothing)."""
        authenticator = self.app.access.authenticator
        if authenticator is None:
            return
        try:
            bind_identity(authenticator.from_header(request.headers.getlist("authorization")))
        except Unauthenticated as exc:  # worded as the gRPC interceptor words it
            raise Unauthenticated(f"unauthenticated: {exc}") from None

    async def _body(self, request: Request) -> pb.EvaluateRequest:
        limit = self.app.cfg.server.max_message_bytes
        raw = await request.body()
        if len(raw) > limit:
            raise InvalidArgument.field("request", f"body of {len(raw)} bytes is larger than {limit}")
        try:
            data = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise InvalidArgument.field("request", f"not JSON: {exc}") from None
        if not isinstance(data, dict):
            raise InvalidArgument.field("request", "a JSON object is required")
        mode = data.pop("mode", None)
        if mode is not None:
            if mode not in MODES:
                raise InvalidArgument.field("mode", f"one of {', '.join(MODES)}, got {mode!r}")
            data["mode"] = MODES[mode]
        known = [f.name for f in pb.EvaluateRequest.DESCRIPTOR.fields]
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise InvalidArgument.field(unknown[0], f"unknown field; the request's fields are {', '.join(known)}")
        try:
            return json_format.ParseDict(data, pb.EvaluateRequest())
        except json_format.ParseError as exc:  # a value of the wrong type
            raise InvalidArgument.field("request", str(exc).split("\n")[0][:300]) from None

    async def evaluate(self, request: Request) -> JSONResponse:
        trace_id = None
        try:
            self._authenticate(request)
            msg = await self._body(request)
            trace_id = msg.trace_id or None
            inp = convert.evaluate_input_from_pb(msg)
            is_admin = self.app.authorize(None, inp)
            result = await self.app.pipeline.evaluate(inp, is_admin=is_admin)
        except Exception as exc:  # noqa: BLE001 - through the one error mapping, as on gRPC
            return error_response(exc, trace_id)
        body = result_json(result)
        if result.pending:
            body["status_uri"] = f"/v1/evaluate/{result.evaluation_id}/status?workspace_id={result.workspace_id}"
            return JSONResponse(body, status_code=202)
        return JSONResponse(body)

    async def status(self, request: Request) -> JSONResponse:
        """Status of an async evaluation. ``?workspace_id=`` names its workspace (the same access
        check as GetEvaluation: unknown, expired and other workspaces' jobs are all 404)."""
        try:
            self._authenticate(request)
            req = pb.GetEvaluationRequest(
                evaluation_id=request.path_params["evaluation_id"], workspace_id=request.query_params.get("workspace_id", "")
            )
            evaluation_id, workspace_id = convert.get_evaluation_from_pb(req)
            self.app.authorize_workspace(None, workspace_id)
            view = self.app.jobs.get(evaluation_id, workspace_id)
        except Exception as exc:  # noqa: BLE001
            return error_response(exc)
        body: dict[str, Any] = {
            "evaluation_id": evaluation_id,
            "status": view.status.value,
            "estimated_completion_ms": int(view.estimated_completion_ms or 0),
        }
        if view.result is not None:
            body["result"] = result_json(view.result)
        return JSONResponse(body)

    async def health(self, request: Request) -> JSONResponse:
        ev = self.app.evidence
        fwd = self.app.forwarder.stats()
        deps = {
            "evidence_log": "healthy" if ev.healthy else "unhealthy",
            "certus_integrity": "healthy" if fwd["breaker_state"] == "closed" else "unhealthy",
        }
        body: dict[str, Any] = {"status": "healthy" if ev.healthy else "degraded", "version": __version__, "dependencies": deps}
        if not ev.healthy:
            body["error"] = ev.failure_reason
        return JSONResponse(body, status_code=200 if ev.healthy else 503)

    # -- serving ------------------------------------------------------------------------------

    async def start(self, address: str, *, ssl_certfile: str | None = None, ssl_keyfile: str | None = None) -> int:
        self.port = await self._listener.start(address, ssl_certfile=ssl_certfile, ssl_keyfile=ssl_keyfile)
        return self.port

    async def stop(self) -> None:
        await self._listener.stop()
