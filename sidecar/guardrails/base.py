"""The common shape of a guardrail and helpers to build PII-safe violations.

A guardrail is a small object with a ``guardrail_type`` and ``detect(inp, cfg)``. It returns every
finding it has, with its own severity and confidence; :class:`sidecar.guardrails.suite.GuardrailSuite`
applies the manifest's thresholds and blocking flag. A violation never carries content: only the
``content_hash`` of the offending span, its char offsets in the source text, the source name
(``response``, ``query`` or ``context[i]``), the detector name and a remediation hint.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Protocol

from certus.sidecar.domain import (
    EvaluateInput,
    GuardrailConfig,
    GuardrailType,
    GuardrailViolation,
    Severity,
    content_hash,
)

RESPONSE = "response"
QUERY = "query"


def context_source(i: int) -> str:
    return f"context[{i}]"


class Guardrail(Protocol):
    """One guardrail: finds violations of one type in a request."""

    guardrail_type: GuardrailType

    def detect(self, inp: EvaluateInput, cfg: GuardrailConfig) -> list[GuardrailViolation]:
        """Every finding, before the manifest's thresholds are applied."""
        ...


@dataclass(frozen=True, slots=True)
class Source:
    """A text the guardrail scans and the name violations report for it."""

    name: str
    text: str


def request_sources(inp: EvaluateInput, *, query: bool, context: bool, response: bool) -> Iterator[Source]:
    if query:
        yield Source(QUERY, inp.query)
    if context:
        for i, chunk in enumerate(inp.context):
            yield Source(context_source(i), chunk)
    if response:
        yield Source(RESPONSE, inp.response)


def clamp01(x: float) -> float:
    if x != x:  # NaN
        return 0.0
    return 0.0 if x < 0.0 else 1.0 if x > 1.0 else float(x)


def make_violation(
    guardrail_type: GuardrailType,
    *,
    source: Source,
    start: int,
    end: int,
    severity: Severity,
    confidence: float,
    detector: str,
    remediation: str,
) -> GuardrailViolation:
    """A violation for ``source.text[start:end]``: its hash and location, never the text."""
    if not 0 <= start <= end <= len(source.text):
        raise ValueError(f"span {start}-{end} outside {source.name} (length {len(source.text)})")
    return GuardrailViolation(
        guardrail_type=guardrail_type,
        severity=severity,
        confidence=round(clamp01(confidence), 4),
        content_hash=content_hash(source.text[start:end]),
        start=start,
        end=end,
        source=source.name,
        detector=detector,
        remediation=remediation,
    )


def noisy_or(*confidences: float) -> float:
    """Combine independent pieces of evidence: 1 - prod(1 - c)."""
    miss = 1.0
    for c in confidences:
        miss *= 1.0 - clamp01(c)
    return 1.0 - miss
