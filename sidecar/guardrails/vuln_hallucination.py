"""Vulnerability-hallucination guardrail: advisory identifiers and pinned package versions in the
response that the retrieved context does not contain.

* ``CVE-YYYY-NNNN+`` and ``GHSA-xxxx-xxxx-xxxx`` identifiers (case-insensitive) absent from every
  context chunk: ``cve_not_in_context`` / ``ghsa_not_in_context``. With no context at all the claim
  cannot be checked and is reported with lower confidence. A CVE whose year is impossible (before
  1999 or after next year) is ``cve_malformed``.
* ``name@version`` / ``name==version`` claims in a paragraph that talks about vulnerabilities, whose
  name and version do not both occur in one chunk: ``package_version_not_in_context``.
"""

from __future__ import annotations

import datetime as _dt
import re

from certus.sidecar.domain import EvaluateInput, GuardrailConfig, GuardrailType, GuardrailViolation, Severity
from certus.sidecar.guardrails.base import RESPONSE, Source, make_violation

GT = GuardrailType.VULN_HALLUCINATION

CVE_RE = re.compile(r"(?<![\w-])CVE[-‐‑–]\d{4}[-‐‑–]\d{4,7}(?!\d)", re.I)
GHSA_RE = re.compile(r"(?<![\w-])GHSA(?:-[23456789cfghjmpqrvwx]{4}){3}(?![\w-])", re.I)
PKG_RE = re.compile(
    r"(?<![\w@/.-])(@?[a-z0-9][\w.-]*(?:/[\w.-]+)?)(?:@|==)v?(\d+(?:\.\d+){1,3}(?:[-+.]?[a-z0-9]+)*)(?![\w.])", re.I
)
VULN_WORDS = re.compile(
    r"\b(?:vulnerab\w*|CVE|GHSA|exploit\w*|advisor(?:y|ies)|security\s+(?:fix|patch|issue|flaw|bug|update)|patched|"
    r"affected|RCE|remote\s+code\s+execution|XSS|injection|CVSS|zero-day|0-day)\b",
    re.I,
)
_DASHES = str.maketrans({"‐": "-", "‑": "-", "–": "-"})


def _norm_id(s: str) -> str:
    return s.translate(_DASHES).upper()


def _paragraph(text: str, pos: int) -> tuple[int, int]:
    start = text.rfind("\n\n", 0, pos)
    end = text.find("\n\n", pos)
    return (0 if start < 0 else start + 2, len(text) if end < 0 else end)


class VulnHallucinationGuardrail:
    guardrail_type = GT

    def detect(self, inp: EvaluateInput, cfg: GuardrailConfig) -> list[GuardrailViolation]:
        src = Source(RESPONSE, inp.response)
        text = src.text
        ctx_ids = {_norm_id(m.group(0)) for chunk in inp.context for rx in (CVE_RE, GHSA_RE) for m in rx.finditer(chunk)}
        has_context = any(c.strip() for c in inp.context)
        out: list[GuardrailViolation] = []
        max_year = _dt.date.today().year + 1
        for rx, kind in ((CVE_RE, "cve"), (GHSA_RE, "ghsa")):
            for m in rx.finditer(text):
                ident = _norm_id(m.group(0))
                if kind == "cve" and not 1999 <= int(ident[4:8]) <= max_year:
                    out.append(make_violation(GT, source=src, start=m.start(), end=m.end(), severity=Severity.HIGH, confidence=0.95,
                                              detector="cve_malformed", remediation="The CVE identifier cannot exist (impossible year); remove it."))
                    continue
                if ident in ctx_ids:
                    continue
                out.append(make_violation(
                    GT, source=src, start=m.start(), end=m.end(), severity=Severity.HIGH,
                    confidence=0.9 if has_context else 0.6, detector=f"{kind}_not_in_context",
                    remediation="Cite only advisories present in the retrieved sources, or verify the identifier.",
                ))
        lowered_ctx = [c.lower() for c in inp.context]
        for m in PKG_RE.finditer(text):
            name, version = m.group(1).lower(), m.group(2).lower()
            if "@" in m.group(0) and "." in name and not name.startswith("@") and re.search(r"\.[a-z]{2,}$", name):
                continue  # user@host.tld-like
            p0, p1 = _paragraph(text, m.start())
            if not VULN_WORDS.search(text, p0, p1):
                continue
            if any(name in c and version in c for c in lowered_ctx):
                continue
            out.append(make_violation(
                GT, source=src, start=m.start(), end=m.end(), severity=Severity.MEDIUM,
                confidence=0.75 if has_context else 0.5, detector="package_version_not_in_context",
                remediation="The package/version claim is not in the retrieved sources; verify it against the advisory.",
            ))
        return out
