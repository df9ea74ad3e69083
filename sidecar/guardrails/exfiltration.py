"""Data-exfiltration guardrail: what in a response could carry data out of the conversation.

* Markdown images (``![..](url)``, reference-style, ``<img src>``) and links whose URL carries data:
  a long or high-entropy query value or path segment, an encoded blob, a key that names data
  (``data``, ``secret``, ``token``, ``conversation`` ...), or a secret/PII-looking value. An image is
  fetched by the client without a click, so image findings are HIGH and link findings MEDIUM.
* Secrets anywhere in the response (:mod:`sidecar.guardrails.secrets`).
* Long encoded blobs (base64 / hex) that decode to text. Blobs that decode to a known file type
  (PNG, JPEG, PDF, ...) and ``data:`` URIs are inline content, not exfiltration.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import parse_qsl, unquote, urlsplit

from certus.sidecar.domain import EvaluateInput, GuardrailConfig, GuardrailType, GuardrailViolation, Severity
from certus.sidecar.guardrails.base import RESPONSE, Source, make_violation
from certus.sidecar.guardrails.encoded import decode_base64, find_blobs, printable_text, shannon_entropy
from certus.sidecar.guardrails.secrets import find_secrets

GT = GuardrailType.DATA_EXFILTRATION

_MD_IMAGE = re.compile(r"!\[[^\]\n]{0,500}\]\(\s*<?([^)\s>]{1,8192})>?(?:\s+[\"'][^\"'\n]{0,300}[\"'])?\s*\)")
_MD_LINK = re.compile(r"(?<!!)\[[^\]\n]{0,500}\]\(\s*<?([^)\s>]{1,8192})>?(?:\s+[\"'][^\"'\n]{0,300}[\"'])?\s*\)")
_MD_REF_DEF = re.compile(r"^[ ]{0,3}\[[^\]\n]{1,200}\]:\s*<?(\S{1,8192}?)>?(?:\s+[\"'(].*)?$", re.M)
_MD_REF_IMAGE = re.compile(r"!\[[^\]\n]{0,500}\]\[([^\]\n]{0,200})\]")
_HTML_IMG = re.compile(r"<img\b[^>]{0,2000}?\bsrc\s*=\s*[\"']?([^\"'\s>]{1,8192})", re.I)

SUSPICIOUS_KEYS = frozenset(
    "data d payload exfil leak secret secrets token key apikey api_key password pass pwd passwd session "
    "sessionid cookie cookies conv conversation chat history prompt system content msg message text "
    "info creds credentials ssn email memory context summary b64 base64 encoded dump".split()
)
_PLACEHOLDER_VALUE = re.compile(r"^[\[{<$%].*[\]}>]?$|^(?:DATA|SECRET|INFO|X+)$")
_EMAIL = re.compile(r"[\w.+-]+@[\w-]+\.[\w.-]+")


@dataclass(frozen=True, slots=True)
class _UrlFinding:
    reason: str
    confidence: float


def _value_carries_data(value: str) -> float:
    """How strongly a query value / path segment looks like smuggled data (0 = not at all)."""
    v = unquote(value)
    if not v:
        return 0.0
    if _EMAIL.search(v) or any(True for _ in find_secrets(v)):
        return 0.95
    if len(v) >= 24:
        data = decode_base64(v) if re.fullmatch(r"[A-Za-z0-9+/_=-]+", v) else None
        if data is not None and printable_text(data) is not None:
            return 0.9
    if len(v) >= 64:
        return 0.8
    if len(v) >= 32 and shannon_entropy(v) >= 4.0:
        return 0.75
    if len(v) >= 20 and " " in v and len(v.split()) >= 4:  # a sentence in a URL
        return 0.75
    return 0.0


def inspect_url(url: str) -> _UrlFinding | None:
    if url.lower().startswith(("data:", "#", "mailto:", "tel:")):
        return None
    try:
        parts = urlsplit(url)
    except ValueError:
        return None
    if parts.scheme not in ("http", "https", "") or not (parts.netloc or parts.path):
        return None
    best: _UrlFinding | None = None

    def consider(reason: str, conf: float) -> None:
        nonlocal best
        if conf > 0 and (best is None or conf > best.confidence):
            best = _UrlFinding(reason, conf)

    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        k = key.lower()
        conf = _value_carries_data(value)
        if k in SUSPICIOUS_KEYS and value and not _PLACEHOLDER_VALUE.match(value):
            conf = max(conf, 0.85 if len(value) >= 8 else 0.6)
        consider("query", conf)
    if parts.netloc and "@" in parts.netloc:
        consider("userinfo", 0.8)
    for seg in parts.path.split("/"):
        conf = _value_carries_data(seg)
        if conf and re.search(r"\.(?:png|jpe?g|gif|svg|webp|pdf|html?)$", seg, re.I) and len(seg) < 64:
            conf = 0.0  # a file name
        consider("path", conf * 0.95)
    if parts.fragment:
        consider("fragment", _value_carries_data(parts.fragment) * 0.9)
    return best


class ExfiltrationGuardrail:
    guardrail_type = GT

    def __init__(self, min_blob_chars: int = 48) -> None:
        self.min_blob_chars = min_blob_chars

    def detect(self, inp: EvaluateInput, cfg: GuardrailConfig) -> list[GuardrailViolation]:
        src = Source(RESPONSE, inp.response)
        text = src.text
        out: list[GuardrailViolation] = []
        url_spans: list[tuple[int, int]] = []

        def add(start: int, end: int, sev: Severity, conf: float, detector: str, remediation: str) -> None:
            out.append(make_violation(GT, source=src, start=start, end=end, severity=sev, confidence=conf, detector=detector, remediation=remediation))

        ref_defs = {m.group(0).split("]")[0].lstrip(" [").lower(): m for m in _MD_REF_DEF.finditer(text)}
        ref_images = {m.group(1).lower() for m in _MD_REF_IMAGE.finditer(text)}
        candidates: list[tuple[re.Match[str], bool]] = [(m, True) for m in _MD_IMAGE.finditer(text)]
        candidates += [(m, True) for m in _HTML_IMG.finditer(text)]
        candidates += [(m, False) for m in _MD_LINK.finditer(text)]
        for label, m in ref_defs.items():
            candidates.append((m, label in ref_images))
        for m, is_image in candidates:
            url_spans.append(m.span(1))
            finding = inspect_url(m.group(1))
            if finding is None:
                continue
            if is_image:
                add(m.start(), m.end(), Severity.HIGH, finding.confidence, "markdown_image_exfil",
                    "Do not render remote images whose URL carries data; strip the image or its query.")
            else:
                add(m.start(), m.end(), Severity.MEDIUM, finding.confidence * 0.9, "markdown_link_exfil",
                    "Check the link: its URL carries data; remove the parameters or the link.")

        secret_spans: list[tuple[int, int]] = []
        for hit in find_secrets(text):
            secret_spans.append((hit.start, hit.end))
            add(hit.start, hit.end, hit.severity, hit.confidence, hit.detector,
                "Remove the credential from the answer and rotate it.")

        for blob in find_blobs(text, min_base64=self.min_blob_chars, min_hex_bytes=self.min_blob_chars // 2):
            if blob.end - blob.start < self.min_blob_chars:
                continue
            if blob.file_type is not None or blob.text is None:
                continue  # inline file content, or binary (hashes, ids): not readable data
            if any(s <= blob.start and blob.end <= e for s, e in secret_spans + url_spans):
                continue
            if text[max(0, blob.start - 40) : blob.start].rstrip().endswith(("base64,", ";base64")):
                continue
            add(blob.start, blob.end, Severity.MEDIUM, 0.75, f"{blob.encoding}_blob",
                "An encoded blob decodes to text: review what it carries before returning it.")
        return out
