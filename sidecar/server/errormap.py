"""The ONE mapping from domain errors to gRPC status codes (with google.rpc details).

Anything that is not a :class:`~sidecar.errors.CertusError` is INTERNAL, logged once with its type
(never its message, which could carry content).
"""

from __future__ import annotations

from dataclasses import dataclass

import grpc
import structlog
from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from certus.sidecar import errors
from certus.sidecar.protos import pb

log = structlog.get_logger(__name__)

STATUS_OF: dict[type[errors.CertusError], grpc.StatusCode] = {
    errors.InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    errors.Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    errors.PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
    errors.NotFound: grpc.StatusCode.NOT_FOUND,
    errors.ResourceExhausted: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.Unavailable: grpc.StatusCode.UNAVAILABLE,
    errors.Fatal: grpc.StatusCode.UNAVAILABLE,
}


@dataclass(frozen=True)
class MappedError:
    code: grpc.StatusCode
    message: str
    status: status_pb2.Status  # google.rpc.Status with details

    def trailing_metadata(self) -> tuple[tuple[str, bytes], ...]:
        return tuple(rpc_status.to_status(self.status).trailing_metadata)


def map_exception(exc: BaseException) -> MappedError:
    code = grpc.StatusCode.INTERNAL
    message = "internal error"
    for cls in type(exc).__mro__:
        if cls in STATUS_OF:
            code = STATUS_OF[cls]
            message = str(exc)
            break
    else:
        log.error("unhandled_exception", error_type=type(exc).__name__)
    details: list[any_pb2.Any] = []
    if isinstance(exc, errors.InvalidArgument):
        br = error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(field=v.field, description=v.description)
                for v in exc.violations
            ]
        )
        details.append(_pack(br))
    retry_after_ms = getattr(exc, "retry_after_ms", None)
    if retry_after_ms is not None:
        delay = duration_pb2.Duration()
        delay.FromMilliseconds(int(retry_after_ms))
        details.append(_pack(error_details_pb2.RetryInfo(retry_delay=delay)))
    status = status_pb2.Status(code=getattr(code_pb2, code.name), message=message, details=details)
    return MappedError(code, message, status)


def _pack(msg: object) -> any_pb2.Any:
    a = any_pb2.Any()
    a.Pack(msg)
    return a


async def abort(context: grpc.aio.ServicerContext, exc: BaseException) -> None:
    m = map_exception(exc)
    await context.abort(m.code, m.message, m.trailing_metadata())


def stream_error(exc: BaseException) -> "pb.StreamError":
    m = map_exception(exc)
    violations = []
    if isinstance(exc, errors.InvalidArgument):
        violations = [pb.FieldViolation(field=v.field, description=v.description) for v in exc.violations]
    return pb.StreamError(code=m.code.value[0], message=m.message, field_violations=violations)
