"""Secret patterns: provider API keys, private keys, JWTs, credentials in URLs and assignments.

Each pattern names its detector. Documentation placeholders (``AKIAIOSFODNN7EXAMPLE``,
``<your-token>``, ``${API_KEY}``, ``xxxx``) are not secrets and are skipped.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass
from typing import Iterator

from certus.sidecar.domain import Severity
from certus.sidecar.guardrails.encoded import shannon_entropy


@dataclass(frozen=True, slots=True)
class SecretPattern:
    detector: str
    pattern: re.Pattern[str]
    severity: Severity
    confidence: float
    group: int = 0  # the group whose span is reported (0: whole match)


PATTERNS: tuple[SecretPattern, ...] = (
    SecretPattern("private_key", re.compile(r"-----BEGIN (?:RSA |EC |DSA |OPENSSH |ENCRYPTED |PGP )?PRIVATE KEY(?: BLOCK)?-----(?:[\s\S]{0,8192}?-----END [A-Z ]*PRIVATE KEY(?: BLOCK)?-----)?"), Severity.CRITICAL, 0.99),
    SecretPattern("aws_key", re.compile(r"(?<![A-Z0-9])(?:AKIA|ASIA|ABIA|ACCA|AGPA|AIDA|AROA|AIPA|ANPA|ANVA|APKA)[A-Z0-9]{16}(?![A-Z0-9])"), Severity.CRITICAL, 0.95),
    SecretPattern("aws_secret_key", re.compile(r"(?i)aws_?secret(?:_?access)?_?key\s*[\"']?\s*[:=]\s*[\"']?([A-Za-z0-9/+=]{40})(?![A-Za-z0-9/+=])"), Severity.CRITICAL, 0.95, 1),
    SecretPattern("gcp_api_key", re.compile(r"(?<![\w-])AIza[0-9A-Za-z_-]{35}(?![\w-])"), Severity.HIGH, 0.95),
    SecretPattern("gcp_service_account", re.compile(r"\"type\"\s*:\s*\"service_account\"[\s\S]{0,2000}?\"private_key\"\s*:\s*\"-----BEGIN"), Severity.CRITICAL, 0.97),
    SecretPattern("github_token", re.compile(r"(?<![\w])(?:gh[pousr]_[A-Za-z0-9]{36,255}|github_pat_[A-Za-z0-9_]{60,255})(?![\w])"), Severity.CRITICAL, 0.97),
    SecretPattern("gitlab_token", re.compile(r"(?<![\w-])glpat-[A-Za-z0-9_-]{20,}(?![\w-])"), Severity.CRITICAL, 0.95),
    SecretPattern("slack_token", re.compile(r"(?<![\w-])xox[abposr]-[A-Za-z0-9-]{10,250}(?![\w-])"), Severity.HIGH, 0.95),
    SecretPattern("slack_webhook", re.compile(r"https://hooks\.slack\.com/services/T[A-Z0-9]{6,}/B[A-Z0-9]{6,}/[A-Za-z0-9]{20,}"), Severity.HIGH, 0.95),
    SecretPattern("stripe_key", re.compile(r"(?<![\w])(?:sk|rk)_(?:live|test)_[0-9A-Za-z]{20,255}(?![\w])"), Severity.CRITICAL, 0.95),
    SecretPattern("anthropic_key", re.compile(r"(?<![\w-])sk-ant-(?:api|admin)\d{2}-[A-Za-z0-9_-]{40,}(?![\w-])"), Severity.CRITICAL, 0.97),
    SecretPattern("openai_key", re.compile(r"(?<![\w-])sk-(?:proj-|svcacct-|admin-)?[A-Za-z0-9_-]{20,}T3BlbkFJ[A-Za-z0-9_-]{20,}(?![\w-])|(?<![\w-])sk-(?:proj-|svcacct-)[A-Za-z0-9_-]{40,}(?![\w-])|(?<![\w-])sk-[A-Za-z0-9]{48}(?![\w-])"), Severity.CRITICAL, 0.95),
    SecretPattern("huggingface_token", re.compile(r"(?<![\w])hf_[A-Za-z0-9]{34,}(?![\w])"), Severity.HIGH, 0.9),
    SecretPattern("jwt", re.compile(r"(?<![\w-])eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{16,}(?![\w-])"), Severity.HIGH, 0.9),
    SecretPattern("password_in_url", re.compile(r"\b[a-z][a-z0-9+.-]{1,20}://[^\s:/@]{1,64}:([^\s@/]{3,128})@[\w.-]+", re.I), Severity.HIGH, 0.9, 1),
    SecretPattern("password_in_text", re.compile(r"(?i)\b(?:password|passwort|passwd|pwd)\s*(?:is|:|=)\s*(?=[^\s\"'`]*[A-Za-z])(?=[^\s\"'`]*[\d!@#$%^&*_+?-])([^\s\"'`.,;]{6,64})"), Severity.HIGH, 0.7, 1),
    SecretPattern("password_assignment", re.compile(r"(?i)\b(?:password|passwd|pwd|secret|api_?key|access_?token|auth_?token|client_?secret)\b[\"']?\s*[:=]\s*[\"']([^\"'\s]{6,128})[\"']"), Severity.HIGH, 0.75, 1),
)

_PLACEHOLDER = re.compile(
    r"example|sample|dummy|placeholder|your[_-]|<[^>]*>|\$\{|\{\{|%\(|\*{3,}|x{4,}|\.{3}|redacted|changeme_?here|fake|test(?:ing)?_?(?:key|token|secret)",
    re.I,
)


_PLACEHOLDER_WORDS = frozenset("password passwd pass pwd secret changeme token apikey api_key key user username admin".split())


def is_placeholder(value: str) -> bool:
    return bool(_PLACEHOLDER.search(value)) or len(set(value)) <= 3 or value.lower() in _PLACEHOLDER_WORDS


def _valid_jwt(token: str) -> bool:
    head = token.split(".", 1)[0]
    try:
        data = json.loads(base64.urlsafe_b64decode(head + "=" * (-len(head) % 4)))
    except (binascii.Error, ValueError):
        return False
    return isinstance(data, dict) and "alg" in data


@dataclass(frozen=True, slots=True)
class SecretHit:
    detector: str
    start: int
    end: int
    severity: Severity
    confidence: float


def find_secrets(text: str) -> Iterator[SecretHit]:
    taken: list[tuple[int, int]] = []
    for sp in PATTERNS:
        for m in sp.pattern.finditer(text):
            start, end = m.span(sp.group)
            value = m.group(sp.group)
            if is_placeholder(value) or is_placeholder(m.group(0)):
                continue
            if sp.detector == "jwt" and not _valid_jwt(value):
                continue
            if sp.detector == "password_assignment" and shannon_entropy(value) < 2.0:
                continue
            if any(s < end and start < e for s, e in taken):
                continue
            taken.append((start, end))
            yield SecretHit(sp.detector, start, end, sp.severity, sp.confidence)
