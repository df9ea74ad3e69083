"""Input limits of the service spec, checked in one place. Every violation names its field."""

from __future__ import annotations

import re
from dataclasses import dataclass

from certus.sidecar.errors import FieldViolation, InvalidArgument

# The spec's patterns, defined once (manifests, evidence and tokens use these too); use fullmatch.
WORKSPACE_RE = re.compile(r"[a-zA-Z0-9_-]{1,255}")
MANIFEST_URI_RE = re.compile(r"certus://manifests/([a-zA-Z0-9_-]+)/([a-zA-Z0-9_.-]+)")  # workspace, version
ID_RE = re.compile(r"[\x21-\x7e]{0,128}")  # printable ASCII, for trace/request ids
UUID_RE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


@dataclass(frozen=True)
class Limits:
    query_max: int = 10_000
    response_max: int = 50_000
    context_max_chunks: int = 50
    chunk_max: int = 10_000
    timeout_min_ms: int = 100
    timeout_max_ms: int = 30_000
    measure_text_max: int = 50_000


LIMITS = Limits()


def check_workspace(value: str, violations: list[FieldViolation], field: str = "workspace_id") -> None:
    if not WORKSPACE_RE.fullmatch(value):
        violations.append(FieldViolation(field, "must match ^[a-zA-Z0-9_-]{1,255}$"))


def check_text(value: str, field: str, max_len: int, violations: list[FieldViolation], *, required: bool = True) -> None:
    n = len(value)
    if required and n == 0:
        violations.append(FieldViolation(field, "must not be empty"))
    elif n > max_len:
        violations.append(FieldViolation(field, f"is {n} characters; the limit is {max_len}"))


def check_context(chunks: list[str] | tuple[str, ...], violations: list[FieldViolation]) -> None:
    if len(chunks) > LIMITS.context_max_chunks:
        violations.append(
            FieldViolation("context", f"has {len(chunks)} chunks; the limit is {LIMITS.context_max_chunks}")
        )
        return
    for i, chunk in enumerate(chunks):
        if len(chunk) > LIMITS.chunk_max:
            violations.append(
                FieldViolation(f"context[{i}]", f"is {len(chunk)} characters; the limit is {LIMITS.chunk_max}")
            )


def check_manifest_uri(value: str, violations: list[FieldViolation]) -> None:
    if value and not MANIFEST_URI_RE.fullmatch(value):
        violations.append(
            FieldViolation("manifest_uri", "must match ^certus://manifests/[a-zA-Z0-9_-]+/[a-zA-Z0-9_.-]+$")
        )


def check_timeout(value: int | None, violations: list[FieldViolation]) -> None:
    if value is not None and not (LIMITS.timeout_min_ms <= value <= LIMITS.timeout_max_ms):
        violations.append(
            FieldViolation("timeout_ms", f"is {value}; must be between {LIMITS.timeout_min_ms} and {LIMITS.timeout_max_ms}")
        )


def check_id(value: str, field: str, violations: list[FieldViolation]) -> None:
    if not ID_RE.fullmatch(value):
        violations.append(FieldViolation(field, "must be at most 128 printable ASCII characters"))


def raise_if(violations: list[FieldViolation]) -> None:
    if violations:
        raise InvalidArgument(violations)
