"""The auth interceptor on real grpc handler objects (no server): what passes, what is refused."""

from __future__ import annotations

import asyncio
from typing import Any, AsyncIterator

import grpc

from certus.sidecar.security.access import Authenticator, current_identity
from certus.sidecar.security.interceptor import AuthInterceptor
from certus.sidecar.security.tokens import TokenStore, hash_token

STORE = TokenStore.from_data(
    [{"name": "app", "token_sha256": hash_token("tok"), "workspaces": ["acme"], "scopes": ["workspace:read"]}]
)


class Details(grpc.HandlerCallDetails):
    def __init__(self, method: str, metadata: tuple[tuple[str, Any], ...] = ()) -> None:
        self.method = method
        self.invocation_metadata = metadata


async def unary(request: Any, context: Any) -> Any:
    return current_identity()


async def stream(requests: Any, context: Any) -> AsyncIterator[Any]:
    yield current_identity()
    yield current_identity()


UNARY = grpc.unary_unary_rpc_method_handler(unary)
STREAM = grpc.stream_stream_rpc_method_handler(stream)


def intercept(method: str, handler: Any, metadata: tuple[tuple[str, Any], ...] = ()) -> Any:
    async def cont(_: Any) -> Any:
        return handler

    return asyncio.run(AuthInterceptor(Authenticator(STORE)).intercept_service(cont, Details(method, metadata)))


def test_health_and_reflection_pass_untouched() -> None:
    for m in ("/grpc.health.v1.Health/Check", "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
              "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"):
        assert intercept(m, UNARY) is UNARY


def test_unknown_methods_stay_unimplemented() -> None:
    assert intercept("/nope.Service/Call", None) is None


def test_valid_token_binds_the_identity_for_unary_and_stream_calls() -> None:
    h = intercept("/certus.evaluate.v1.Evaluator/Evaluate", UNARY, (("authorization", "Bearer tok"),))
    assert h is not UNARY and not h.request_streaming and not h.response_streaming
    ident = asyncio.run(h.unary_unary(None, None))
    assert ident is not None and ident.name == "app"

    s = intercept("/certus.evaluate.v1.Evaluator/EvaluateStream", STREAM, (("authorization", b"Bearer tok"),))
    assert s.request_streaming and s.response_streaming

    async def collect() -> list[Any]:
        return [x async for x in s.stream_stream(iter(()), None)]

    got = asyncio.run(collect())
    assert [i.name for i in got] == ["app", "app"]
    assert current_identity() is None  # nothing leaked into this context


def test_refusals_keep_the_handler_shape_and_count() -> None:
    ic = AuthInterceptor(Authenticator(STORE))

    async def cont(_: Any) -> Any:
        return STREAM

    for md in ((), (("authorization", "Bearer nope"),), (("authorization", "Token tok"),)):
        h = asyncio.run(ic.intercept_service(cont, Details("/certus.evaluate.v1.Evaluator/EvaluateStream", md)))
        assert h is not STREAM and h.request_streaming and h.response_streaming
        assert h.request_deserializer is None  # a refused request is never decoded
    assert ic.refused == 3
