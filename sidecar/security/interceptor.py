"""The authentication interceptor: ``authorization: Bearer <token>`` -> an identity, or UNAUTHENTICATED.

It runs before the handler (so a refused call is never deserialized or scored). An authenticated
call's handler is wrapped to bind the identity to the call's context, where the App's authorize
hooks read it (:func:`sidecar.security.access.current_identity`). Health and reflection stay open.
Tokens never reach a log line: failures log the reason and the method only.
"""

from __future__ import annotations

import inspect
from typing import Any, AsyncIterator, Awaitable, Callable

import grpc
import structlog

from certus.sidecar.errors import Unauthenticated
from certus.sidecar.security.access import Authenticator, bind_identity
from certus.sidecar.security.tokens import Identity
from certus.sidecar.server import errormap

log = structlog.get_logger(__name__)

OPEN_PREFIXES = (
    "/grpc.health.v1.Health/",
    "/grpc.reflection.v1alpha.ServerReflection/",
    "/grpc.reflection.v1.ServerReflection/",
)

Continuation = Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler | None]]


class AuthInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, authenticator: Authenticator) -> None:
        self.authenticator = authenticator
        self.refused = 0  # calls answered UNAUTHENTICATED

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler | None:
        method = handler_call_details.method or ""
        handler = await continuation(handler_call_details)
        if handler is None or method.startswith(OPEN_PREFIXES):
            return handler
        values = [
            v.decode("latin-1") if isinstance(v, bytes) else str(v)
            for k, v in (handler_call_details.invocation_metadata or ())
            if k.lower() == "authorization"
        ]
        try:
            identity = self.authenticator.from_header(values)
        except Unauthenticated as exc:
            return self._refuse(handler, method, str(exc))
        return with_identity(handler, identity)

    def _refuse(self, handler: grpc.RpcMethodHandler, method: str, reason: str) -> grpc.RpcMethodHandler:
        self.refused += 1
        log.info("auth_refused", method=method, reason=reason)
        return refusing_handler(handler, Unauthenticated(f"unauthenticated: {reason}"))


def refusing_handler(handler: grpc.RpcMethodHandler, exc: Exception) -> grpc.RpcMethodHandler:
    """A handler of the same shape as ``handler`` that answers ``exc`` through the error mapping,
    without deserializing the request."""

    async def unary_response(request: Any, context: grpc.aio.ServicerContext) -> Any:
        await errormap.abort(context, exc)

    async def stream_response(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        await errormap.abort(context, exc)
        yield  # pragma: no cover - makes this an async generator; abort raises first

    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(stream_response)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(unary_response)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(stream_response)
    return grpc.unary_unary_rpc_method_handler(unary_response)


def with_identity(handler: grpc.RpcMethodHandler, identity: Identity) -> grpc.RpcMethodHandler:
    """``handler`` with its behaviour wrapped to bind ``identity`` for the call."""
    kw = dict(request_deserializer=handler.request_deserializer, response_serializer=handler.response_serializer)
    behaviour: Any = (
        handler.unary_unary or handler.unary_stream or handler.stream_unary or handler.stream_stream
    )
    if inspect.isasyncgenfunction(behaviour):

        async def gen(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            bind_identity(identity)
            async for item in behaviour(request, context):
                yield item

        wrapped: Any = gen
    else:

        async def call(request: Any, context: grpc.aio.ServicerContext) -> Any:
            bind_identity(identity)
            result = behaviour(request, context)
            return await result if inspect.isawaitable(result) else result

        wrapped = call
    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(wrapped, **kw)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(wrapped, **kw)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(wrapped, **kw)
    return grpc.unary_unary_rpc_method_handler(wrapped, **kw)
