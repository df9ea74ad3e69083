"""Bearer tokens: the tokens file, SHA-256 digests at rest, constant-time lookup, identities.

The tokens file (``auth.tokens_file`` / ``CERTUS_AUTH_TOKENS_FILE``) is JSON or TOML and lists
tokens by their SHA-256 digest, never in plain text::

    # tokens.toml
    [[tokens]]
    name = "rag-app"                       # shown in logs and errors (never the token)
    token_sha256 = "9f86d081884c7d65..."   # `certus-sidecar token hash` (or sha256sum)
    workspaces = ["acme", "acme-staging"]  # or "*" for every workspace
    scopes = ["workspace:read"]            # workspace:admin also allows mode overrides

JSON is the same shape: ``{"tokens": [{"name": ..., "token_sha256": ..., ...}]}`` (a bare list is
accepted too). ``workspace:admin`` implies ``workspace:read``.

A presented token is hashed and its digest compared with *every* stored digest through
``hmac.compare_digest`` (no early exit), so lookup time does not depend on which digest, or how much
of one, matched.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from certus.sidecar.validation import WORKSPACE_RE

SCOPE_READ = "workspace:read"
SCOPE_ADMIN = "workspace:admin"
SCOPES = frozenset({SCOPE_READ, SCOPE_ADMIN})
ALL_WORKSPACES = "*"

_HEX64 = re.compile(r"[0-9a-f]{64}")
_NAME = re.compile(r"[\x21-\x7e]{1,64}")


class TokensFileError(ValueError):
    """The tokens file is unreadable or malformed; the message names the entry and the field."""


def hash_token(token: str) -> str:
    """Lower-case hex SHA-256 of the token's UTF-8 bytes (what ``sha256sum`` prints)."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def new_token() -> str:
    """A fresh random token (256 bits, URL-safe)."""
    return "certus_" + secrets.token_urlsafe(32)


@dataclass(frozen=True)
class Identity:
    """Who a request authenticated as: a token's name, workspaces and scopes."""

    name: str
    workspaces: frozenset[str]
    scopes: frozenset[str]

    def can_access(self, workspace_id: str) -> bool:
        return ALL_WORKSPACES in self.workspaces or workspace_id in self.workspaces

    def can_read(self, workspace_id: str) -> bool:
        return self.can_access(workspace_id) and bool(self.scopes & SCOPES)

    def is_admin(self, workspace_id: str) -> bool:
        return self.can_access(workspace_id) and SCOPE_ADMIN in self.scopes


@dataclass(frozen=True)
class TokenEntry:
    digest: bytes  # raw 32-byte SHA-256 of the token
    identity: Identity

    def __repr__(self) -> str:  # the digest is not secret, but it has no business in logs either
        return f"TokenEntry(name={self.identity.name!r})"


class TokenStore:
    """The tokens a sidecar accepts. Built from a file with :meth:`load`."""

    def __init__(self, entries: list[TokenEntry]) -> None:
        if not entries:
            raise TokensFileError("the tokens file lists no tokens (every call would be refused)")
        self._entries = tuple(entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"TokenStore({len(self._entries)} tokens)"

    @classmethod
    def load(cls, path: Path) -> "TokenStore":
        try:
            raw = path.read_bytes()
        except OSError as exc:
            raise TokensFileError(f"auth.tokens_file: cannot read {path}: {exc.strerror}") from exc
        try:
            if path.suffix.lower() == ".toml":
                data: Any = tomllib.loads(raw.decode("utf-8"))
            else:
                data = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError, tomllib.TOMLDecodeError) as exc:
            kind = "TOML" if path.suffix.lower() == ".toml" else "JSON"
            raise TokensFileError(f"auth.tokens_file: {path} is not valid {kind}: {exc}") from exc
        return cls.from_data(data, source=f"auth.tokens_file {path}")

    @classmethod
    def from_data(cls, data: Any, source: str = "") -> "TokenStore":
        """Entries from parsed JSON/TOML; ``source`` prefixes error messages (the file)."""
        prefix = f"{source}: " if source else ""
        items = data.get("tokens") if isinstance(data, dict) else data
        if not isinstance(items, list):
            raise TokensFileError(f"{prefix}expected a list under 'tokens'")
        entries = [_parse_entry(item, f"{prefix}tokens[{i}]") for i, item in enumerate(items)]
        names = [e.identity.name for e in entries]
        dup_names = sorted({n for n in names if names.count(n) > 1})
        if dup_names:
            raise TokensFileError(f"{prefix}token names must be unique, repeated: {', '.join(dup_names)}")
        digests = [e.digest for e in entries]
        if len(set(digests)) != len(digests):
            raise TokensFileError(f"{prefix}the same token_sha256 is listed twice")
        return cls(entries)

    def authenticate(self, token: str) -> Identity | None:
        """The identity of ``token``, or None. Constant time in which entry (if any) matches."""
        presented = hashlib.sha256(token.encode("utf-8")).digest()
        found: Identity | None = None
        for entry in self._entries:
            if hmac.compare_digest(presented, entry.digest):
                found = entry.identity
        return found


def _parse_entry(item: Any, where: str) -> TokenEntry:
    if not isinstance(item, dict):
        raise TokensFileError(f"{where}: expected a table/object")
    if "token" in item:
        raise TokensFileError(
            f"{where}.token: plaintext tokens are not accepted at rest; store token_sha256 instead "
            "(certus-sidecar token hash)"
        )
    unknown = set(item) - {"name", "token_sha256", "workspaces", "scopes"}
    if unknown:
        raise TokensFileError(f"{where}: unknown field(s) {', '.join(sorted(unknown))}")
    name = item.get("name")
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise TokensFileError(f"{where}.name: required, 1-64 printable ASCII characters without spaces")
    digest = item.get("token_sha256")
    if isinstance(digest, str) and digest.startswith("sha256:"):
        digest = digest[len("sha256:") :]
    if not isinstance(digest, str) or not _HEX64.fullmatch(digest.lower()):
        raise TokensFileError(f"{where}.token_sha256: required, 64 hex digits (SHA-256 of the token)")
    workspaces = item.get("workspaces")
    if isinstance(workspaces, str):
        workspaces = [workspaces]
    if not isinstance(workspaces, list) or not workspaces:
        raise TokensFileError(f"{where}.workspaces: required, a non-empty list of workspace ids or \"*\"")
    for ws in workspaces:
        if not isinstance(ws, str) or not (ws == ALL_WORKSPACES or WORKSPACE_RE.fullmatch(ws)):
            raise TokensFileError(f"{where}.workspaces: {ws!r} is neither \"*\" nor a workspace id")
    scopes = item.get("scopes")
    if isinstance(scopes, str):
        scopes = [scopes]
    if not isinstance(scopes, list) or not scopes:
        raise TokensFileError(f"{where}.scopes: required, a non-empty list of {sorted(SCOPES)}")
    for scope in scopes:
        if scope not in SCOPES:
            raise TokensFileError(f"{where}.scopes: unknown scope {scope!r} (known: {', '.join(sorted(SCOPES))})")
    identity = Identity(name, frozenset(workspaces), frozenset(scopes))
    return TokenEntry(bytes.fromhex(digest.lower()), identity)


def parse_bearer(values: list[str]) -> str:
    """The token of the single ``authorization: Bearer <token>`` header; raises ValueError (reason)."""
    if not values:
        raise ValueError("missing authorization metadata (expected 'authorization: Bearer <token>')")
    if len(values) > 1:
        raise ValueError("more than one authorization metadata entry")
    scheme, _, token = values[0].strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise ValueError("authorization metadata is not 'Bearer <token>'")
    return token.strip()
