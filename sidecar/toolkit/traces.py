"""Reading trace files (JSONL written by ``@trace`` or by hand) into evaluable items.

One JSON object per line. Field names (the first present wins):

- answer: ``answer`` | ``response`` | ``output``                       (required to score)
- context: ``context`` | ``contexts`` | ``retrieved_context``  — a string or a list of strings
  (required to score: grounding is measured against it)
- query: ``query`` | ``question`` | ``input``                          (optional)
- ``timestamp`` (RFC 3339 or epoch seconds), ``trace_id``, ``error``, ``latency_ms`` (optional)

The sidecar's input limits apply unchanged (query <= 10,000 chars, response <= 50,000, at most 50
chunks of <= 10,000): a row beyond them is reported as invalid naming the field — never cut. A row
whose call failed (``error`` set) or that lacks an answer or context is counted as not scored, with
the reason. A line that is not a JSON object is an error naming the line number.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

from certus.sidecar import validation as v
from certus.sidecar.domain import EvaluateInput
from certus.sidecar.errors import FieldViolation

ANSWER_FIELDS = ("answer", "response", "output")
CONTEXT_FIELDS = ("context", "contexts", "retrieved_context")
QUERY_FIELDS = ("query", "question", "input")
OFFLINE_WORKSPACE = "offline"


class TraceFileError(ValueError):
    """A trace file that cannot be read (names the file and line)."""


@dataclass(frozen=True)
class TraceItem:
    line: int  # 1-based line number in the file
    trace_id: str
    timestamp: str | None  # RFC 3339 UTC, when the row had one
    inp: EvaluateInput | None  # None when the row cannot be scored
    has_query: bool
    skip_reason: str = ""  # why it is not scored: error | no_answer | no_context | invalid
    problems: tuple[str, ...] = ()  # field violations for invalid rows
    label: int | None = None  # labelled files (calibrate): 1 correct, 0 incorrect


def _first(row: dict[str, Any], names: tuple[str, ...]) -> Any:
    for name in names:
        if name in row and row[name] is not None:
            return row[name]
    return None


def _timestamp(raw: Any) -> str | None:
    if raw is None:
        return None
    try:
        if isinstance(raw, (int, float)) and not isinstance(raw, bool):
            when = datetime.fromtimestamp(float(raw), tz=timezone.utc)
        elif isinstance(raw, str):
            when = datetime.fromisoformat(raw.replace("Z", "+00:00"))
            if when.tzinfo is None:
                when = when.replace(tzinfo=timezone.utc)
        else:
            return None
    except (ValueError, OverflowError, OSError):
        return None
    return when.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _label(raw: Any, line: int, path: Path) -> int:
    if isinstance(raw, bool):
        return int(raw)
    if isinstance(raw, (int, float)) and raw in (0, 1):
        return int(raw)
    if isinstance(raw, str) and raw.strip().lower() in ("1", "0", "true", "false", "correct", "incorrect"):
        return 1 if raw.strip().lower() in ("1", "true", "correct") else 0
    raise TraceFileError(f"{path}:{line}: label must be 0/1 or true/false, got {raw!r}")


def parse_row(row: dict[str, Any], line: int, path: Path, *, label_field: str | None = None) -> TraceItem:
    trace_id = str(row.get("trace_id") or f"line-{line}")
    ts = _timestamp(row.get("timestamp"))
    label = _label(row.get(label_field), line, path) if label_field is not None and label_field in row else None
    if label_field is not None and label is None:
        raise TraceFileError(f"{path}:{line}: missing label field {label_field!r}")
    if row.get("error"):
        return TraceItem(line, trace_id, ts, None, False, "error", label=label)
    answer = _first(row, ANSWER_FIELDS)
    context = _first(row, CONTEXT_FIELDS)
    query = _first(row, QUERY_FIELDS)
    problems: list[FieldViolation] = []
    if answer is None or (isinstance(answer, str) and not answer.strip()):
        return TraceItem(line, trace_id, ts, None, False, "no_answer", label=label)
    if not isinstance(answer, str):
        problems.append(FieldViolation("answer", f"must be a string, got {type(answer).__name__}"))
    if isinstance(context, str):
        chunks: list[Any] = [context]
    elif isinstance(context, list):
        chunks = context
    elif context is None:
        chunks = []
    else:
        chunks = []
        problems.append(FieldViolation("context", f"must be a string or a list of strings, got {type(context).__name__}"))
    for i, c in enumerate(chunks):
        if not isinstance(c, str):
            problems.append(FieldViolation(f"context[{i}]", f"must be a string, got {type(c).__name__}"))
    chunks = [c for c in chunks if isinstance(c, str) and c.strip()]
    if not problems and not chunks:
        return TraceItem(line, trace_id, ts, None, False, "no_context", label=label)
    if query is not None and not isinstance(query, str):
        problems.append(FieldViolation("query", f"must be a string, got {type(query).__name__}"))
    if not problems:
        v.check_text(query or "", "query", v.LIMITS.query_max, problems, required=False)
        v.check_text(answer, "answer", v.LIMITS.response_max, problems)
        v.check_context(chunks, problems)
    if problems:
        return TraceItem(
            line, trace_id, ts, None, False, "invalid", tuple(f"{p.field}: {p.description}" for p in problems), label
        )
    inp = EvaluateInput(
        workspace_id=OFFLINE_WORKSPACE,
        query=query or "",
        response=answer,
        context=tuple(chunks),
        trace_id=trace_id[:128],
    )
    return TraceItem(line, trace_id, ts, inp, bool(query), label=label)


def read_items(path: str | Path, *, label_field: str | None = None) -> Iterator[TraceItem]:
    p = Path(path)
    if not p.is_file():
        raise TraceFileError(f"{p}: no such file")
    with p.open("r", encoding="utf-8") as f:
        for line_no, raw in enumerate(f, start=1):
            text = raw.strip()
            if not text:
                continue
            try:
                row = json.loads(text)
            except json.JSONDecodeError as exc:
                raise TraceFileError(f"{p}:{line_no}: not valid JSON ({exc.msg} at column {exc.colno})") from exc
            if not isinstance(row, dict):
                raise TraceFileError(f"{p}:{line_no}: expected a JSON object, got {type(row).__name__}")
            yield parse_row(row, line_no, p, label_field=label_field)
