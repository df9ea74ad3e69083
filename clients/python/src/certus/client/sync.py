"""Python client for the sidecar with the seed's non-blocking pattern (spec §3.1, §8.2, §8.3).

The application's answer must never depend on the evaluator, so every call here:

- has a deadline: the request carries ``timeout_ms`` (the server answers OK ``skipped=true,
  skip_reason=evaluator_timeout`` when scoring overruns it) and the gRPC deadline is
  ``timeout_ms + deadline_slack_ms`` (seed: wait "slightly longer than the service timeout");
- goes through a circuit breaker: after ``failure_threshold`` consecutive transport/server failures
  (UNAVAILABLE, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED, INTERNAL, UNKNOWN, CANCELLED, client-side
  errors) it opens and calls return at once with ``skip_reason="circuit_breaker_open"``; after
  ``recovery_timeout_s`` exactly one probe call goes through (half-open): success closes it,
  failure opens it again. Answers that prove the server is up (OK, INVALID_ARGUMENT,
  UNAUTHENTICATED, PERMISSION_DENIED, NOT_FOUND) count as success;
- never raises into the application: any failure becomes a result with ``skipped=True`` and a
  reason — ``timeout``, ``service_unavailable``, ``overloaded``, ``circuit_breaker_open``,
  ``invalid_request``, ``rejected`` (auth / permission / not found), ``unexpected_error`` — or the
  server's own reason (``evaluator_timeout``, ``evaluator_error``, ``overloaded``, ``mode_disabled``).

:class:`SidecarClient` is the synchronous client (a ``grpc`` channel; ``submit`` returns a future
without blocking); :class:`certus.client.aio.AsyncSidecarClient` is the asyncio one. Both share the
breaker and the result types below. Log events carry codes, reasons and ids — never content.
"""

from __future__ import annotations

import concurrent.futures
import logging
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterable, Mapping, Sequence

import grpc

from certus.client.breaker import CircuitBreaker as _SharedBreaker
from certus.client.protos import pb, pb_grpc

log = logging.getLogger(__name__)  # stdlib logging: the light client depends on grpcio and protobuf only

# skip reasons produced by the client (the server's own reasons pass through unchanged)
SKIP_TIMEOUT = "timeout"
SKIP_UNAVAILABLE = "service_unavailable"
SKIP_OVERLOADED = "overloaded"
SKIP_BREAKER_OPEN = "circuit_breaker_open"
SKIP_INVALID = "invalid_request"
SKIP_REJECTED = "rejected"
SKIP_UNEXPECTED = "unexpected_error"
SKIP_CLIENT_TIMEOUT = "client_timeout"  # asyncio: the overall wait ran out before gRPC's deadline

# gRPC codes that mean "the evaluator is not answering": they count towards opening the breaker.
FAILURE_CODES = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.DATA_LOSS,
        grpc.StatusCode.UNIMPLEMENTED,
    }
)
_REASON_OF_CODE = {
    grpc.StatusCode.DEADLINE_EXCEEDED: SKIP_TIMEOUT,
    grpc.StatusCode.UNAVAILABLE: SKIP_UNAVAILABLE,
    grpc.StatusCode.RESOURCE_EXHAUSTED: SKIP_OVERLOADED,
    grpc.StatusCode.INVALID_ARGUMENT: SKIP_INVALID,
    grpc.StatusCode.UNAUTHENTICATED: SKIP_REJECTED,
    grpc.StatusCode.PERMISSION_DENIED: SKIP_REJECTED,
    grpc.StatusCode.NOT_FOUND: SKIP_REJECTED,
}
MODES = {
    None: pb.EVALUATION_MODE_UNSPECIFIED,
    "shadow": pb.EVALUATION_MODE_SHADOW,
    "enforce": pb.EVALUATION_MODE_ENFORCE,
    "async": pb.EVALUATION_MODE_ASYNC,
    "disabled": pb.EVALUATION_MODE_DISABLED,
}


# -- breaker ----------------------------------------------------------------------------------------


class CircuitBreaker(_SharedBreaker):
    """Thread-safe breaker (:mod:`certus.client.breaker`): closed -> open after N consecutive failures ->
    one half-open probe; transitions are logged as ``client_breaker_*`` events."""

    def _changed(self, state: str) -> None:
        if state == self.OPEN:
            log.warning("client_breaker_open consecutive_failures=%d", self._failures)
        elif state == self.CLOSED:
            log.info("client_breaker_closed")
        else:
            log.info("client_breaker_half_open")
        super()._changed(state)


# -- results ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Evaluation:
    """What the application gets back from ``evaluate``: a verdict, or ``skipped`` with a reason."""

    skipped: bool
    skip_reason: str = ""
    evaluation_id: str = ""
    passed: bool | None = None  # None when skipped
    outcome: str = "skipped"  # pass | fail | warning | skipped
    evidence_id: str = ""
    metrics: dict[str, float] = field(default_factory=dict)
    overall_score: float | None = None
    guardrail_violations: tuple[dict[str, Any], ...] = ()
    blocked: bool = False
    block_reasons: tuple[str, ...] = ()
    mode: str = ""
    manifest_uri: str = ""
    processing_time_ms: int = 0
    trace_id: str = ""
    request_id: str = ""
    status_code: str = ""  # gRPC code name when the call failed
    error: str = ""  # the failure's message (field names and codes, never content)
    latency_ms: float = 0.0  # as seen by the client
    response: Any = field(default=None, repr=False, compare=False)  # the raw pb.EvaluateResponse

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("response", None)
        d["guardrail_violations"] = [dict(v) for v in self.guardrail_violations]
        d["block_reasons"] = list(self.block_reasons)
        return d


@dataclass(frozen=True)
class Measurement:
    """CERT's measure over the wire, or ``skipped`` with a reason."""

    skipped: bool
    skip_reason: str = ""
    semantic_score: float = 0.0
    grounding_score: float = 0.0
    confidence: float = 0.0
    matched: bool | None = None
    threshold: float = 0.0
    numeric_consistency: float = 0.0
    status_code: str = ""
    error: str = ""
    latency_ms: float = 0.0


def _enum_name(enum: Any, value: int, prefix: str) -> str:
    try:
        return str(enum.Name(value)).removeprefix(prefix).lower()
    except ValueError:
        return str(value)


def evaluation_from_pb(resp: Any, latency_ms: float = 0.0) -> Evaluation:
    violations = tuple(
        {
            "guardrail_type": _enum_name(pb.GuardrailType, v.guardrail_type, "GUARDRAIL_TYPE_"),
            "severity": _enum_name(pb.Severity, v.severity, "SEVERITY_"),
            "confidence": v.confidence,
            "content_hash": v.content_hash,
            "location": v.location,
            "remediation": v.remediation,
            "detector": v.detector,
            "source": v.source,
            "blocking": v.blocking,
        }
        for v in resp.guardrail_violations
    )
    return Evaluation(
        skipped=bool(resp.skipped),
        skip_reason=resp.skip_reason,
        evaluation_id=resp.evaluation_id,
        passed=None if resp.skipped else bool(resp.passed),
        outcome=_enum_name(pb.Outcome, resp.outcome, "OUTCOME_"),
        evidence_id=resp.evidence_id,
        metrics={m.name: m.value for m in resp.metrics},
        overall_score=resp.overall_score if resp.HasField("overall_score") else None,
        guardrail_violations=violations,
        blocked=bool(resp.blocked),
        block_reasons=tuple(resp.block_reasons),
        mode=_enum_name(pb.EvaluationMode, resp.mode, "EVALUATION_MODE_"),
        manifest_uri=resp.manifest_uri,
        processing_time_ms=int(resp.processing_time_ms),
        trace_id=resp.trace_id,
        request_id=resp.request_id,
        latency_ms=latency_ms,
        response=resp,
    )


def measurement_from_pb(resp: Any, latency_ms: float = 0.0) -> Measurement:
    return Measurement(
        skipped=False,
        semantic_score=resp.semantic_score,
        grounding_score=resp.grounding_score,
        confidence=resp.confidence,
        matched=bool(resp.matched),
        threshold=resp.threshold,
        numeric_consistency=resp.numeric_consistency,
        latency_ms=latency_ms,
    )


@dataclass(frozen=True)
class Failure:
    """A classified failure: its skip reason, whether it counts for the breaker, code and message."""

    reason: str
    counts: bool
    code: str = ""
    message: str = ""


def classify(exc: BaseException) -> Failure:
    if isinstance(exc, grpc.RpcError) and hasattr(exc, "code"):
        code = exc.code()
        details = exc.details() if hasattr(exc, "details") else ""
        return Failure(
            _REASON_OF_CODE.get(code, SKIP_UNEXPECTED),
            code in FAILURE_CODES,
            code.name if code is not None else "",
            (details or "")[:300],
        )
    if isinstance(exc, InvalidRequest):
        return Failure(SKIP_INVALID, False, "", str(exc))
    return Failure(SKIP_UNEXPECTED, True, "", type(exc).__name__)


class InvalidRequest(ValueError):
    """Arguments that cannot be sent (wrong types); reported as ``invalid_request``, never raised."""


def _texts(name: str, value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if value is None:
        return []
    if not isinstance(value, Iterable):
        raise InvalidRequest(f"{name}: must be a string or a list of strings, got {type(value).__name__}")
    out = list(value)
    for i, v in enumerate(out):
        if not isinstance(v, str):
            raise InvalidRequest(f"{name}[{i}]: must be a string, got {type(v).__name__}")
    return out


def _text(name: str, value: Any) -> str:
    if not isinstance(value, str):
        raise InvalidRequest(f"{name}: must be a string, got {type(value).__name__}")
    return value


@dataclass(frozen=True)
class ClientOptions:
    target: str = "127.0.0.1:50051"
    timeout_ms: int = 2000  # sent as the request's timeout_ms (seed default 2000)
    deadline_slack_ms: int = 500  # gRPC deadline = timeout_ms + slack
    failure_threshold: int = 3  # seed §8.3
    recovery_timeout_s: float = 30.0  # seed §8.3
    workspace_id: str = "default"
    manifest_uri: str = ""
    mode: str | None = None  # None: the manifest's default_mode
    token: str | None = field(default=None, repr=False)  # bearer token sent as `authorization`
    reconnect_backoff_ms: int = 250  # channel reconnect backoff (initial/min)
    max_reconnect_backoff_ms: int = 5000

    def __post_init__(self) -> None:
        problems = []
        if not 100 <= self.timeout_ms <= 30_000:
            problems.append(f"timeout_ms: must be between 100 and 30000, got {self.timeout_ms}")
        if self.deadline_slack_ms < 0:
            problems.append("deadline_slack_ms: must be >= 0")
        if self.mode not in MODES:
            problems.append(f"mode: must be one of shadow, enforce, async, disabled or None, got {self.mode!r}")
        if problems:
            raise ValueError("; ".join(problems))

    def channel_options(self) -> list[tuple[str, Any]]:
        return [
            ("grpc.initial_reconnect_backoff_ms", self.reconnect_backoff_ms),
            ("grpc.min_reconnect_backoff_ms", self.reconnect_backoff_ms),
            ("grpc.max_reconnect_backoff_ms", self.max_reconnect_backoff_ms),
            ("grpc.max_receive_message_length", 4 * 1024 * 1024),
            ("grpc.max_send_message_length", 4 * 1024 * 1024),
        ]

    def metadata(self) -> tuple[tuple[str, str], ...] | None:
        return (("authorization", f"Bearer {self.token}"),) if self.token else None


@dataclass
class ClientStats:
    calls: int = 0
    completed: int = 0
    skipped: dict[str, int] = field(default_factory=dict)

    def count_skip(self, reason: str) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1


class _Base:
    """What the sync and the asyncio client share: options, breaker, request building, outcomes."""

    def __init__(self, options: ClientOptions, clock: Callable[[], float]) -> None:
        self.options = options
        self.breaker = CircuitBreaker(options.failure_threshold, options.recovery_timeout_s, clock)
        self.stats = ClientStats()
        self._stats_lock = threading.Lock()

    def _request(
        self,
        query: Any,
        response: Any,
        context: Any,
        *,
        workspace_id: str | None,
        manifest_uri: str | None,
        mode: str | None,
        timeout_ms: int | None,
        trace_id: str,
        parent_span_id: str,
        request_id: str,
    ) -> tuple[Any, float]:
        o = self.options
        mode = mode if mode is not None else o.mode
        if mode not in MODES:
            raise InvalidRequest(f"mode: must be one of shadow, enforce, async, disabled, got {mode!r}")
        t_ms = int(timeout_ms if timeout_ms is not None else o.timeout_ms)
        req = pb.EvaluateRequest(
            workspace_id=_text("workspace_id", workspace_id if workspace_id is not None else o.workspace_id),
            query=_text("query", query),
            response=_text("response", response),
            context=_texts("context", context),
            manifest_uri=_text("manifest_uri", manifest_uri if manifest_uri is not None else o.manifest_uri),
            mode=MODES[mode],
            trace_id=_text("trace_id", trace_id),
            parent_span_id=_text("parent_span_id", parent_span_id),
            request_id=_text("request_id", request_id),
        )
        req.timeout_ms = max(0, t_ms)
        return req, (t_ms + o.deadline_slack_ms) / 1000.0

    def _measure_request(self, text1: Any, text2: Any, threshold: float | None) -> Any:
        req = pb.MeasureRequest(text1=_text("text1", text1), text2=_text("text2", text2))
        if threshold is not None:
            if isinstance(threshold, bool) or not isinstance(threshold, (int, float)):
                raise InvalidRequest("threshold: must be a number")
            req.threshold = float(threshold)
        return req

    def _start_evaluate(self, t0: float, query: Any, response: Any, context: Any, **kw: Any) -> tuple[Any, float] | Evaluation:
        """Build the request and claim the breaker: ``(request, gRPC deadline)`` when the call may be
        made, else the Evaluation to return at once (arguments rejected, or the breaker open)."""
        trace_id, request_id = kw["trace_id"], kw["request_id"]
        try:
            req, deadline_s = self._request(query, response, context, **kw)
        except Exception as exc:  # noqa: BLE001 - never raise into the application
            return self._failed(exc, t0, probe=False, trace_id=str(trace_id)[:128], request_id=str(request_id)[:128])
        if not self.breaker.allow():
            return self._breaker_open(trace_id, request_id)
        return req, deadline_s

    def _start_measure(
        self, t0: float, text1: Any, text2: Any, threshold: float | None, timeout_ms: int | None
    ) -> tuple[Any, float] | Measurement:
        """Like :meth:`_start_evaluate` for ``Measure``."""
        try:
            req = self._measure_request(text1, text2, threshold)
        except Exception as exc:  # noqa: BLE001
            return self._measure_failed(exc, t0, probe=False)
        if not self.breaker.allow():
            self._count(SKIP_BREAKER_OPEN)
            return Measurement(skipped=True, skip_reason=SKIP_BREAKER_OPEN)
        return req, (timeout_ms or self.options.timeout_ms) / 1000.0 + self.options.deadline_slack_ms / 1000.0

    def _count(self, skipped_reason: str | None) -> None:
        with self._stats_lock:
            self.stats.calls += 1
            if skipped_reason is None:
                self.stats.completed += 1
            else:
                self.stats.count_skip(skipped_reason)

    def _breaker_open(self, trace_id: str = "", request_id: str = "") -> Evaluation:
        self._count(SKIP_BREAKER_OPEN)
        return Evaluation(skipped=True, skip_reason=SKIP_BREAKER_OPEN, trace_id=trace_id, request_id=request_id)

    def _failed(self, exc: BaseException, t0: float, *, probe: bool, trace_id: str = "", request_id: str = "") -> Evaluation:
        f = classify(exc)
        self._settle(f, probe)
        log.warning("evaluation_skipped reason=%s code=%s trace_id=%s", f.reason, f.code, trace_id)
        self._count(f.reason)
        return Evaluation(
            skipped=True,
            skip_reason=f.reason,
            status_code=f.code,
            error=f.message,
            trace_id=trace_id,
            request_id=request_id,
            latency_ms=(time.perf_counter() - t0) * 1000.0,
        )

    def _measure_failed(self, exc: BaseException, t0: float, *, probe: bool) -> Measurement:
        f = classify(exc)
        self._settle(f, probe)
        log.warning("measure_skipped reason=%s code=%s", f.reason, f.code)
        self._count(f.reason)
        return Measurement(
            skipped=True, skip_reason=f.reason, status_code=f.code, error=f.message, latency_ms=(time.perf_counter() - t0) * 1000.0
        )

    def _settle(self, f: Failure, probe: bool) -> None:
        if not probe:  # arguments rejected before any call was made: the breaker saw nothing
            return
        if f.counts:
            self.breaker.record_failure()
        else:
            self.breaker.record_success()

    def _succeeded(self, resp: Any, t0: float) -> Evaluation:
        self.breaker.record_success()
        ev = evaluation_from_pb(resp, (time.perf_counter() - t0) * 1000.0)
        self._count(ev.skip_reason if ev.skipped else None)
        return ev


class SidecarClient(_Base):
    """Synchronous client. Every method returns a result; none raises into the caller.

    >>> client = SidecarClient("127.0.0.1:50051", timeout_ms=2000)
    >>> ev = client.evaluate(query, answer, context_chunks)
    >>> if ev.skipped: log(ev.skip_reason)   # the application carries on either way
    """

    def __init__(
        self,
        target: str | None = None,
        *,
        options: ClientOptions | None = None,
        channel: grpc.Channel | None = None,
        credentials: grpc.ChannelCredentials | None = None,
        clock: Callable[[], float] = time.monotonic,
        **overrides: Any,
    ) -> None:
        opts = options or ClientOptions()
        if target is not None:
            overrides["target"] = target
        if overrides:
            opts = ClientOptions(**{**asdict(opts), **overrides})
        super().__init__(opts, clock)
        if channel is None:
            if credentials is not None:
                channel = grpc.secure_channel(opts.target, credentials, options=opts.channel_options())
            else:
                channel = grpc.insecure_channel(opts.target, options=opts.channel_options())
        self.channel = channel
        self._stub = pb_grpc.EvaluatorStub(channel)

    # -- Evaluate -----------------------------------------------------------------------------------

    def evaluate(
        self,
        query: str,
        response: str,
        context: Sequence[str] | str = (),
        *,
        workspace_id: str | None = None,
        manifest_uri: str | None = None,
        mode: str | None = None,
        timeout_ms: int | None = None,
        trace_id: str = "",
        parent_span_id: str = "",
        request_id: str = "",
    ) -> Evaluation:
        """Evaluate one answer; blocks at most ``timeout_ms + deadline_slack_ms``."""
        t0 = time.perf_counter()
        started = self._start_evaluate(
            t0,
            query,
            response,
            context,
            workspace_id=workspace_id,
            manifest_uri=manifest_uri,
            mode=mode,
            timeout_ms=timeout_ms,
            trace_id=trace_id,
            parent_span_id=parent_span_id,
            request_id=request_id,
        )
        if isinstance(started, Evaluation):
            return started
        req, deadline_s = started
        try:
            resp = self._stub.Evaluate(req, timeout=deadline_s, metadata=self.options.metadata())
        except Exception as exc:  # noqa: BLE001
            return self._failed(exc, t0, probe=True, trace_id=trace_id, request_id=request_id)
        try:
            return self._succeeded(resp, t0)
        except Exception as exc:  # noqa: BLE001 - a response we cannot read is the client's problem
            return self._failed(exc, t0, probe=True, trace_id=trace_id, request_id=request_id)

    def submit(
        self,
        query: str,
        response: str,
        context: Sequence[str] | str = (),
        **kw: Any,
    ) -> concurrent.futures.Future[Evaluation]:
        """Start an evaluation and return at once; the future always resolves to an Evaluation
        (never to an exception). Used by ``@trace(forward=...)`` to evaluate off the hot path."""
        out: concurrent.futures.Future[Evaluation] = concurrent.futures.Future()
        t0 = time.perf_counter()
        trace_id = kw.get("trace_id", "")
        request_id = kw.get("request_id", "")
        try:
            req, deadline_s = self._request(
                query,
                response,
                context,
                workspace_id=kw.get("workspace_id"),
                manifest_uri=kw.get("manifest_uri"),
                mode=kw.get("mode"),
                timeout_ms=kw.get("timeout_ms"),
                trace_id=trace_id,
                parent_span_id=kw.get("parent_span_id", ""),
                request_id=request_id,
            )
        except Exception as exc:  # noqa: BLE001
            out.set_result(self._failed(exc, t0, probe=False, trace_id=str(trace_id)[:128]))
            return out
        if not self.breaker.allow():
            out.set_result(self._breaker_open(trace_id, request_id))
            return out
        try:
            call = self._stub.Evaluate.future(req, timeout=deadline_s, metadata=self.options.metadata())
        except Exception as exc:  # noqa: BLE001
            out.set_result(self._failed(exc, t0, probe=True, trace_id=trace_id, request_id=request_id))
            return out

        def done(c: Any) -> None:
            try:
                result = self._succeeded(c.result(), t0)
            except Exception as exc:  # noqa: BLE001
                result = self._failed(exc, t0, probe=True, trace_id=trace_id, request_id=request_id)
            out.set_result(result)

        call.add_done_callback(done)
        return out

    # -- Measure ------------------------------------------------------------------------------------

    def measure(self, text1: str, text2: str, threshold: float | None = None, *, timeout_ms: int | None = None) -> Measurement:
        t0 = time.perf_counter()
        started = self._start_measure(t0, text1, text2, threshold, timeout_ms)
        if isinstance(started, Measurement):
            return started
        req, deadline_s = started
        try:
            resp = self._stub.Measure(req, timeout=deadline_s, metadata=self.options.metadata())
        except Exception as exc:  # noqa: BLE001
            return self._measure_failed(exc, t0, probe=True)
        self.breaker.record_success()
        self._count(None)
        return measurement_from_pb(resp, (time.perf_counter() - t0) * 1000.0)

    # -- lifecycle ----------------------------------------------------------------------------------

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> "SidecarClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


_SHARED: dict[str, SidecarClient] = {}
_SHARED_LOCK = threading.Lock()


def measure(
    text1: str, text2: str, threshold: float | None = None, *, target: str = ClientOptions.target, timeout_ms: int | None = None
) -> Measurement:
    """CERT's ``measure(text1, text2)``, computed by the sidecar's ``Measure`` RPC (its encoder and
    CERT's formula), so the application loads no model. One shared client per target; never raises
    (a failure is a :class:`Measurement` with ``skipped=True`` and a reason)."""
    with _SHARED_LOCK:
        client = _SHARED.get(target)
        if client is None:
            client = _SHARED[target] = SidecarClient(target)
    return client.measure(text1, text2, threshold, timeout_ms=timeout_ms)


def client_from(target_or_client: "str | SidecarClient | Mapping[str, Any]") -> SidecarClient:
    """A client from an address, an options mapping, or an existing client (returned as is)."""
    if isinstance(target_or_client, SidecarClient):
        return target_or_client
    if isinstance(target_or_client, str):
        return SidecarClient(target_or_client)
    return SidecarClient(**dict(target_or_client))


__all__ = [
    "CircuitBreaker",
    "ClientOptions",
    "Evaluation",
    "Measurement",
    "SidecarClient",
    "client_from",
    "measure",
    "SKIP_BREAKER_OPEN",
    "SKIP_CLIENT_TIMEOUT",
    "SKIP_INVALID",
    "SKIP_OVERLOADED",
    "SKIP_REJECTED",
    "SKIP_TIMEOUT",
    "SKIP_UNAVAILABLE",
    "SKIP_UNEXPECTED",
]
