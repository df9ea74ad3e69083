"""Guardrails: PII (Presidio, offline), prompt injection and jailbreak (rules + MiniLM head),
data exfiltration, code safety and vulnerability hallucination. See docs/guardrails.md."""

from __future__ import annotations

from certus.sidecar.guardrails.suite import GuardrailSuite, apply_policy

__all__ = ["GuardrailSuite", "apply_policy"]
