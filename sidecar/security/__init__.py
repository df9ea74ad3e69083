"""Who may call the sidecar, over what, and how often.

* :mod:`.tokens` — the tokens file (SHA-256 digests, workspaces, scopes), constant-time lookup.
* :mod:`.interceptor` — the gRPC auth interceptor (Bearer token -> identity, or UNAUTHENTICATED).
* :mod:`.access` — per-workspace authorization and rate-limit admission (the App's hooks).
* :mod:`.binding` — loopback is open by default; other addresses need auth or an explicit flag.
* :mod:`.tls` — server TLS / mTLS credentials.
* :mod:`.cli` — ``certus-sidecar token new|hash``.

Rate limiting itself lives in :mod:`sidecar.ratelimit`. See docs/security.md.
"""

from __future__ import annotations

from certus.sidecar.security.access import AccessControl, current_identity
from certus.sidecar.security.binding import BindingRefused, check_binding, is_loopback
from certus.sidecar.security.interceptor import AuthInterceptor
from certus.sidecar.security.tls import TlsConfigError, server_credentials
from certus.sidecar.security.tokens import Identity, TokensFileError, TokenStore, hash_token

__all__ = [
    "AccessControl",
    "AuthInterceptor",
    "BindingRefused",
    "Identity",
    "TlsConfigError",
    "TokenStore",
    "TokensFileError",
    "check_binding",
    "current_identity",
    "hash_token",
    "is_loopback",
    "server_credentials",
]
