"""Thin servicers: decode protobuf into a domain type, await the pipeline, encode the answer."""

from __future__ import annotations

import asyncio
import functools
from dataclasses import dataclass
from typing import Any, AsyncIterator, Awaitable, Callable

import grpc
from google.protobuf import message_factory
from google.protobuf.message import DecodeError
from opentelemetry import context as otel_context
from opentelemetry import trace

from certus.sidecar import __version__, telemetry
from certus.sidecar.errors import InvalidArgument
from certus.sidecar.protos import pb
from certus.sidecar.server import convert, errormap

STREAM_MAX_IN_FLIGHT = 64  # per stream; the reader waits (HTTP/2 flow control) beyond it
SERVICE = pb.DESCRIPTOR.services_by_name["Evaluator"].full_name
# OpenTelemetry gRPC conventions: a server span is an error only for these (not for the caller's)
SERVER_FAULTS = frozenset(
    {
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.UNIMPLEMENTED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DATA_LOSS,
    }
)

tracer = trace.get_tracer(__name__)


@dataclass(frozen=True)
class Undecodable:
    """A request whose bytes are not a valid message: becomes INVALID_ARGUMENT, not INTERNAL."""

    message_name: str
    reason: str

    def error(self) -> InvalidArgument:
        return InvalidArgument.field("request", f"not a valid {self.message_name}: {self.reason}")


def safe_deserializer(cls: Any) -> Callable[[bytes], Any]:
    name = cls.DESCRIPTOR.full_name

    def deserialize(raw: bytes) -> Any:
        try:
            return cls.FromString(raw)
        except (DecodeError, ValueError, RuntimeError) as exc:
            return Undecodable(name, type(exc).__name__ if not str(exc) else str(exc)[:200])

    return deserialize


def _decoded(request: Any) -> Any:
    if isinstance(request, Undecodable):
        raise request.error()
    return request


def status_of(exc: BaseException) -> grpc.StatusCode:
    """The status errormap gives ``exc`` (for spans and metrics; errormap does the answering)."""
    if isinstance(exc, asyncio.CancelledError):
        return grpc.StatusCode.CANCELLED
    for cls in type(exc).__mro__:
        code = errormap.STATUS_OF.get(cls)
        if code is not None:
            return code
    return grpc.StatusCode.INTERNAL


def rpc_span(method: str, context: grpc.aio.ServicerContext) -> trace.Span:
    """The RPC's server span, a child of the caller's span when its metadata carries a W3C
    ``traceparent``. Not made current here: callers attach it."""
    return tracer.start_span(
        f"{SERVICE}/{method}",
        context=telemetry.extract_context(context.invocation_metadata()),
        kind=trace.SpanKind.SERVER,
        attributes={
            telemetry.ATTR_RPC_SYSTEM: "grpc",
            telemetry.ATTR_RPC_SERVICE: SERVICE,
            telemetry.ATTR_RPC_METHOD: method,
        },
    )


def end_rpc(app: Any, span: trace.Span, method: str, code: grpc.StatusCode, exc: BaseException | None) -> None:
    span.set_attribute(telemetry.ATTR_RPC_GRPC_STATUS, code.value[0])
    if exc is not None:
        span.set_attribute(telemetry.ATTR_ERROR_TYPE, type(exc).__name__)
    if code in SERVER_FAULTS:
        span.set_status(trace.Status(trace.StatusCode.ERROR, code.name))
    span.end()
    metrics = getattr(app, "metrics", None)
    if metrics is not None:
        metrics.observe_rpc(method, code.name)


def unary(fn: Callable[[Any, Any, grpc.aio.ServicerContext], Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    """Errors of a unary handler cross the boundary through errormap, and only there. Each call
    is one server span (joined to the caller's trace) and one count by status code."""
    method = fn.__name__

    @functools.wraps(fn)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
        span = rpc_span(method, context)
        code, error = grpc.StatusCode.OK, None  # type: tuple[grpc.StatusCode, BaseException | None]
        ended = False
        try:
            with trace.use_span(span, end_on_exit=False, record_exception=False, set_status_on_exception=False):
                try:
                    return await fn(self, _decoded(request), context)
                except Exception as exc:  # noqa: BLE001 - the one place errors become statuses
                    code, error = status_of(exc), exc
                    # counted and ended before the caller hears the status (abort sends it)
                    end_rpc(self.app, span, method, code, error)
                    ended = True
                    await errormap.abort(context, exc)
        except asyncio.CancelledError as exc:  # the caller went away
            code, error = grpc.StatusCode.CANCELLED, exc
            raise
        finally:
            if not ended:  # an answer or a cancellation: nothing has been sent yet
                end_rpc(self.app, span, method, code, error)

    return wrapper


# Part of the caller's gRPC deadline is kept for signing, logging and sending a skipped answer, so
# the caller receives it before its deadline instead of DEADLINE_EXCEEDED: 10% of what remains,
# at least 20 ms and at most 250 ms.
DEADLINE_RESERVE_FRACTION = 0.1
DEADLINE_RESERVE_MIN_MS = 20
DEADLINE_RESERVE_MAX_MS = 250


def deadline_ms(context: grpc.aio.ServicerContext) -> int | None:
    """The scoring budget the caller's gRPC deadline leaves (None without a deadline)."""
    remaining = context.time_remaining()
    if remaining is None or remaining > 86_400:
        return None
    remaining_ms = remaining * 1000.0
    reserve = min(DEADLINE_RESERVE_MAX_MS, max(DEADLINE_RESERVE_MIN_MS, remaining_ms * DEADLINE_RESERVE_FRACTION))
    return max(0, int(remaining_ms - reserve))


class EvaluatorService:
    def __init__(self, app: Any) -> None:
        self.app = app

    @unary
    async def Evaluate(self, request: Any, context: grpc.aio.ServicerContext) -> Any:  # noqa: N802
        with telemetry.span(tracer, telemetry.SPAN_VALIDATE):
            inp = convert.evaluate_input_from_pb(request)
        is_admin = self.app.authorize(context, inp)
        result = await self.app.pipeline.evaluate(inp, grpc_deadline_ms=deadline_ms(context), is_admin=is_admin)
        return convert.result_to_pb(result)

    async def EvaluateStream(  # noqa: N802
        self, request_iterator: AsyncIterator[Any], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[Any]:
        out: asyncio.Queue[Any] = asyncio.Queue()
        slots = asyncio.Semaphore(STREAM_MAX_IN_FLIGHT)
        tasks: set[asyncio.Task[None]] = set()
        done = object()

        async def one(request: Any) -> None:
            request_id = getattr(request, "request_id", "")
            try:
                req = _decoded(request)
                with telemetry.span(tracer, telemetry.SPAN_VALIDATE):
                    inp = convert.evaluate_input_from_pb(req)
                is_admin = self.app.authorize(context, inp)
                result = await self.app.pipeline.evaluate(inp, grpc_deadline_ms=deadline_ms(context), is_admin=is_admin)
                await out.put(pb.EvaluateStreamResponse(request_id=request_id, response=convert.result_to_pb(result)))
            except Exception as exc:  # noqa: BLE001 - a bad item fails only itself
                await out.put(pb.EvaluateStreamResponse(request_id=request_id, error=errormap.stream_error(exc)))
            finally:
                slots.release()

        async def reader() -> None:
            try:
                async for request in request_iterator:
                    await slots.acquire()
                    task = asyncio.create_task(one(request))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
                if tasks:
                    await asyncio.gather(*list(tasks), return_exceptions=True)
            finally:
                await out.put(done)

        span = rpc_span("EvaluateStream", context)
        token = otel_context.attach(trace.set_span_in_context(span))
        try:  # the reader task (and each item's task) starts from a context holding the span
            reader_task = asyncio.create_task(reader())
        finally:
            otel_context.detach(token)
        code, error = grpc.StatusCode.OK, None  # type: tuple[grpc.StatusCode, BaseException | None]
        try:
            while True:
                item = await out.get()
                if item is done:
                    break
                yield item
        except BaseException as exc:  # GeneratorExit/CancelledError: the client went away
            code, error = grpc.StatusCode.CANCELLED, exc
            raise
        finally:  # the client went away (or we finished): stop reading and drop unfinished work
            reader_task.cancel()
            for task in list(tasks):
                task.cancel()
            end_rpc(self.app, span, "EvaluateStream", code, error)

    @unary
    async def Measure(self, request: Any, context: grpc.aio.ServicerContext) -> Any:  # noqa: N802
        text1, text2, threshold = convert.measure_input_from_pb(request)
        self.app.authorize(context, None)
        r = await self.app.pipeline.measure(text1, text2, threshold)
        return pb.MeasureResponse(
            semantic_score=r.semantic_score,
            grounding_score=r.grounding_score,
            confidence=r.confidence,
            matched=r.matched,
            threshold=r.threshold,
            numeric_consistency=r.numeric_consistency,
        )

    @unary
    async def GetEvaluation(self, request: Any, context: grpc.aio.ServicerContext) -> Any:  # noqa: N802
        evaluation_id, workspace_id = convert.get_evaluation_from_pb(request)
        self.app.authorize_workspace(context, workspace_id)
        view = await self.app.job_view(evaluation_id, workspace_id)
        return convert.job_view_to_pb(evaluation_id, view)

    @unary
    async def GetInfo(self, request: Any, context: grpc.aio.ServicerContext) -> Any:  # noqa: N802
        info, public_key = await self.app.get_info()
        return pb.GetInfoResponse(
            version=__version__,
            key_id=info["key_id"],
            public_key=public_key,
            signature_algorithm="ed25519",
            payload_type=info["payload_type"],
            model=info["model"],
            execution_provider=info["execution_provider"],
            details={k: str(v) for k, v in info["details"].items()},
        )


def method_handlers(service: EvaluatorService) -> dict[str, grpc.RpcMethodHandler]:
    """One handler per RPC of the service descriptor (so the contract, not a hand-kept list, decides
    what is served), each with the INVALID_ARGUMENT-on-garbage deserializer."""
    handlers: dict[str, grpc.RpcMethodHandler] = {}
    for method in pb.DESCRIPTOR.services_by_name["Evaluator"].methods:
        request = message_factory.GetMessageClass(method.input_type)
        response = message_factory.GetMessageClass(method.output_type)
        if method.client_streaming and method.server_streaming:
            make = grpc.stream_stream_rpc_method_handler
        elif not method.client_streaming and not method.server_streaming:
            make = grpc.unary_unary_rpc_method_handler
        else:  # pragma: no cover - the contract has no half-streaming RPC
            raise TypeError(f"{method.full_name}: half-streaming RPCs are not served")
        handlers[method.name] = make(
            getattr(service, method.name),
            request_deserializer=safe_deserializer(request),
            response_serializer=response.SerializeToString,
        )
    return handlers
