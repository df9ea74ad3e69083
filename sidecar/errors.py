"""The sidecar's error tree. Every domain error is a subclass of :class:`CertusError`; the server
maps each class to a gRPC status in ONE table (``certus.sidecar.server.errormap``). Anything else that
escapes a handler is INTERNAL, logged once.

    CertusError
    ├── InvalidArgument        INVALID_ARGUMENT  (field violations -> google.rpc.BadRequest)
    ├── Unauthenticated        UNAUTHENTICATED
    ├── PermissionDenied       PERMISSION_DENIED
    ├── NotFound               NOT_FOUND          (e.g. manifest, async evaluation id)
    ├── ResourceExhausted      RESOURCE_EXHAUSTED (queue full, rate limit; retry_after_ms)
    ├── Unavailable            UNAVAILABLE        (shutting down, model not loaded)
    ├── EvaluatorTimeout       never reaches the caller: becomes skipped=evaluator_timeout
    ├── EvaluatorFailure       never reaches the caller: becomes skipped=evaluator_error
    └── Fatal                  process-level: health goes NOT_SERVING, then shutdown
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class FieldViolation:
    field: str
    description: str


class CertusError(Exception):
    """Base of all domain errors."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidArgument(CertusError):
    def __init__(self, violations: list[FieldViolation] | FieldViolation, message: str = "") -> None:
        if isinstance(violations, FieldViolation):
            violations = [violations]
        self.violations = list(violations)
        super().__init__(message or "; ".join(f"{v.field}: {v.description}" for v in self.violations))

    @classmethod
    def field(cls, name: str, description: str) -> "InvalidArgument":
        return cls(FieldViolation(name, description))


class Unauthenticated(CertusError):
    pass


class PermissionDenied(CertusError):
    pass


class NotFound(CertusError):
    pass


class ResourceExhausted(CertusError):
    def __init__(self, message: str, retry_after_ms: int = 100) -> None:
        super().__init__(message)
        self.retry_after_ms = retry_after_ms


class Unavailable(CertusError):
    def __init__(self, message: str, retry_after_ms: int = 1000) -> None:
        super().__init__(message)
        self.retry_after_ms = retry_after_ms


class EvaluatorTimeout(CertusError):
    pass


class EvaluatorFailure(CertusError):
    pass


class Fatal(CertusError):
    pass
