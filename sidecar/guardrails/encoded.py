"""Encoded and invisible content: base64 / hex blobs and what they decode to, zero-width, bidi and
Unicode tag characters. Shared by the injection guardrail (payloads smuggled into a prompt) and the
exfiltration guardrail (data smuggled out in a response)."""

from __future__ import annotations

import base64
import binascii
import math
import re
from collections import Counter
from dataclasses import dataclass
from typing import Iterator

# A base64 run (standard or URL-safe alphabet). Bounded to keep matching linear on huge inputs.
BASE64_RE = re.compile(r"(?<![A-Za-z0-9+/_-])[A-Za-z0-9+/_-]{24,8192}={0,2}(?![A-Za-z0-9+/_=-])")
HEX_RE = re.compile(r"(?<![0-9A-Fa-f])(?:[0-9A-Fa-f]{2}){16,4096}(?![0-9A-Fa-f])")
ESCAPED_HEX_RE = re.compile(r"(?:\\x[0-9A-Fa-f]{2}){8,4096}")

# File signatures of binary payloads that are benign when inlined (images, documents, archives).
FILE_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"\x89PNG\r\n\x1a\n", "png"),
    (b"\xff\xd8\xff", "jpeg"),
    (b"GIF87a", "gif"),
    (b"GIF89a", "gif"),
    (b"RIFF", "riff"),
    (b"%PDF-", "pdf"),
    (b"PK\x03\x04", "zip"),
    (b"\x1f\x8b", "gzip"),
    (b"BM", "bmp"),
    (b"\x00\x00\x01\x00", "ico"),
    (b"wOFF", "woff"),
    (b"wOF2", "woff2"),
)


@dataclass(frozen=True, slots=True)
class Blob:
    """An encoded run in a text, with what it decodes to."""

    start: int
    end: int
    encoding: str  # "base64" | "hex"
    decoded: bytes

    @property
    def text(self) -> str | None:
        """The decoded bytes as text when they are (almost all) printable UTF-8, else None."""
        return printable_text(self.decoded)

    @property
    def file_type(self) -> str | None:
        return file_type(self.decoded)


def file_type(data: bytes) -> str | None:
    for magic, name in FILE_MAGIC:
        if data.startswith(magic):
            return name
    if data.lstrip()[:5].lower() in (b"<svg ", b"<?xml"):
        return "svg"
    return None


def printable_text(data: bytes, min_ratio: float = 0.9) -> str | None:
    if len(data) < 6:
        return None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return None
    good = sum(1 for ch in text if ch.isprintable() or ch in "\n\r\t")
    if good / len(text) < min_ratio:
        return None
    letters = sum(1 for ch in text if ch.isalpha() or ch == " ")
    return text if letters / len(text) >= 0.5 else None


def shannon_entropy(s: str) -> float:
    if not s:
        return 0.0
    n = len(s)
    return -sum(c / n * math.log2(c / n) for c in Counter(s).values())


def _looks_like_base64(run: str) -> bool:
    body = run.rstrip("=")
    # Words, paths and identifiers are also base64 alphabet: require a mix of cases and digits or
    # symbols, the way random-looking encodings have.
    has_upper = any(c.isupper() for c in body)
    has_lower = any(c.islower() for c in body)
    has_other = any(c.isdigit() or c in "+/_-" for c in body)
    return has_upper and has_lower and has_other and shannon_entropy(body) >= 3.5


def decode_base64(run: str) -> bytes | None:
    body = run.rstrip("=")
    if len(body) % 4 == 1:
        return None
    padded = body + "=" * (-len(body) % 4)
    try:
        if "-" in body or "_" in body:
            return base64.urlsafe_b64decode(padded)
        return base64.b64decode(padded, validate=True)
    except (binascii.Error, ValueError):
        return None


def find_blobs(text: str, min_base64: int = 24, min_hex_bytes: int = 16) -> Iterator[Blob]:
    """Every base64 / hex run in ``text`` that decodes, in order of position."""
    found: list[Blob] = []
    for m in BASE64_RE.finditer(text):
        run = m.group(0)
        if len(run.rstrip("=")) < min_base64 or HEX_RE.fullmatch(run):
            continue
        if not _looks_like_base64(run):
            continue
        data = decode_base64(run)
        if data:
            found.append(Blob(m.start(), m.end(), "base64", data))
    for m in HEX_RE.finditer(text):
        if len(m.group(0)) // 2 >= min_hex_bytes:
            found.append(Blob(m.start(), m.end(), "hex", bytes.fromhex(m.group(0))))
    for m in ESCAPED_HEX_RE.finditer(text):
        data = bytes(int(m.group(0)[i + 2 : i + 4], 16) for i in range(0, len(m.group(0)), 4))
        if len(data) >= min_hex_bytes // 2:
            found.append(Blob(m.start(), m.end(), "hex", data))
    found.sort(key=lambda b: (b.start, b.end))
    return iter(found)


# --- invisible characters ---------------------------------------------------------------------

ZERO_WIDTH = frozenset("\u200b\u200c\u200d\u2060\u2061\u2062\u2063\u2064\ufeff\u180e")
BIDI_CONTROLS = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u200e\u200f\u061c")


def _is_emoji_like(ch: str) -> bool:
    cp = ord(ch)
    return cp >= 0x2190 and not (0xE0000 <= cp <= 0xE007F) and not ch.isalnum()


@dataclass(frozen=True, slots=True)
class InvisibleRun:
    start: int
    end: int
    kind: str  # "unicode_tag_smuggling" | "bidi_control" | "zero_width_chars"


_INVISIBLE_RUN = re.compile(
    "(?P<unicode_tag_smuggling>[\U000E0000-\U000E007F]+)"
    f"|(?P<bidi_control>[{''.join(sorted(BIDI_CONTROLS))}]+)"
    f"|(?P<zero_width_chars>[{''.join(sorted(ZERO_WIDTH))}]+)"
)


def find_invisible(text: str) -> list[InvisibleRun]:
    """Runs of invisible characters that can hide or reorder instructions (one compiled scan: a
    run is a maximal stretch of one kind).

    Benign uses are skipped: a BOM at position 0, and a zero-width joiner/non-joiner between two
    emoji or symbol characters (emoji ZWJ sequences).
    """
    runs: list[InvisibleRun] = []
    if text.isascii():  # every invisible character is outside ASCII (CPython knows this in O(1))
        return runs
    n = len(text)
    for m in _INVISIBLE_RUN.finditer(text):
        i, j, kind = m.start(), m.end(), str(m.lastgroup)
        benign = kind == "zero_width_chars" and (
            (i == 0 and text[i:j] == "\ufeff")
            or (
                j - i == 1
                and text[i] in "\u200d\u200c"
                and i > 0
                and j < n
                and (_is_emoji_like(text[i - 1]) or text[i - 1] == "\ufe0f")
                and _is_emoji_like(text[j])
            )
        )
        if not benign:
            runs.append(InvisibleRun(i, j, kind))
    return runs


def decode_tag_chars(text: str) -> str:
    """The ASCII hidden in Unicode tag characters (U+E0020..U+E007E)."""
    return "".join(chr(ord(c) - 0xE0000) for c in text if 0xE0020 <= ord(c) <= 0xE007E)
