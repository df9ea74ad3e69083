"""JWT bearer tokens (spec §6.1) beside the static tokens file, with PyJWT.

Configuration (``auth`` section): ``jwt_keys_file`` (``CERTUS_JWT_KEYS``): a PEM file with one or
more public keys, or a JWKS JSON file (``{"keys": [...]}``); it is re-read when its modification
time changes (checked at most once a second), so keys rotate without a restart.
``jwt_issuer`` / ``jwt_audience`` (``CERTUS_JWT_ISSUER`` / ``CERTUS_JWT_AUDIENCE``): required
``iss`` / ``aud``. ``jwt_algorithms`` (``CERTUS_JWT_ALGORITHMS``, default ``RS256,ES256,EdDSA``):
asymmetric algorithms only; ``none`` and every HMAC algorithm are refused outright, so a token
signed with the public key as an HMAC secret (algorithm confusion) cannot pass.

A token is accepted when its signature verifies with a configured key of the header's ``kid`` (or,
without ``kid``, with any key of the algorithm's type), ``exp`` is in the future and ``nbf`` / ``iat``
are not (``jwt_leeway_s`` of clock skew), ``iss`` and ``aud`` match, and it carries the claims
``workspaces`` (a list of workspace ids, or ``"*"``) and ``scopes`` (a list or a space-separated
string; ``workspace:read`` / ``workspace:admin``; others are ignored). Its identity is named after
``sub``. Refusal reasons name the failed check, never the token.
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from certus.sidecar.security.tokens import ALL_WORKSPACES, SCOPES, Identity
from certus.sidecar.validation import WORKSPACE_RE

ASYMMETRIC = {
    "RS256": rsa.RSAPublicKey,
    "RS384": rsa.RSAPublicKey,
    "RS512": rsa.RSAPublicKey,
    "PS256": rsa.RSAPublicKey,
    "PS384": rsa.RSAPublicKey,
    "PS512": rsa.RSAPublicKey,
    "ES256": ec.EllipticCurvePublicKey,
    "ES384": ec.EllipticCurvePublicKey,
    "ES512": ec.EllipticCurvePublicKey,
    "EdDSA": ed25519.Ed25519PublicKey,
}
RELOAD_CHECK_S = 1.0
PEM_BLOCK = re.compile(r"-----BEGIN [A-Z0-9 ]+-----.*?-----END [A-Z0-9 ]+-----", re.S)


class JwtConfigError(ValueError):
    """The keys file or the JWT settings are unusable; the message names the setting."""


class JwtRejected(Exception):
    """A presented JWT that does not authenticate; the message is the reason (no token content)."""


@dataclass(frozen=True)
class _Key:
    kid: str | None
    key: Any  # a cryptography public key


def _load_keys(path: Path) -> list[_Key]:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise JwtConfigError(f"auth.jwt_keys_file: cannot read {path}: {exc.strerror}") from exc
    text = raw.decode("utf-8", "replace").strip()
    keys: list[_Key] = []
    if text.startswith("{"):
        try:
            jwks = jwt.PyJWKSet.from_json(text)
        except (jwt.PyJWKSetError, jwt.PyJWKError, ValueError) as exc:
            raise JwtConfigError(f"auth.jwt_keys_file: {path} is not a usable JWKS: {exc}") from exc
        keys = [_Key(k.key_id, k.key) for k in jwks.keys]
    else:
        for i, pem in enumerate(PEM_BLOCK.findall(text)):
            try:
                keys.append(_Key(None, serialization.load_pem_public_key(pem.encode())))
            except ValueError as exc:
                raise JwtConfigError(f"auth.jwt_keys_file: PEM block {i + 1} of {path} is not a public key: {exc}") from exc
    if not keys:
        raise JwtConfigError(f"auth.jwt_keys_file: {path} holds no public key (PEM or JWKS)")
    for k in keys:
        if not isinstance(k.key, (rsa.RSAPublicKey, ec.EllipticCurvePublicKey, ed25519.Ed25519PublicKey)):
            raise JwtConfigError(f"auth.jwt_keys_file: {path}: only RSA, EC and Ed25519 public keys are accepted")
    return keys


class JwtVerifier:
    def __init__(self, keys_file: Path, *, issuer: str, audience: str, algorithms: str | list[str], leeway_s: float = 30.0) -> None:
        algs = [a.strip() for a in algorithms.split(",")] if isinstance(algorithms, str) else list(algorithms)
        bad = [a for a in algs if a not in ASYMMETRIC]
        if bad or not algs:
            raise JwtConfigError(f"auth.jwt_algorithms: {bad or algs} not allowed (asymmetric only: {', '.join(ASYMMETRIC)})")
        if not issuer or not audience:
            raise JwtConfigError("auth.jwt_issuer and auth.jwt_audience are required with auth.jwt_keys_file")
        self.path = Path(keys_file)
        self.issuer, self.audience, self.algorithms, self.leeway_s = issuer, audience, algs, leeway_s
        self._lock = threading.Lock()
        self._keys = _load_keys(self.path)
        self._mtime = self._stat()
        self._checked = time.monotonic()
        self.reloads = 0

    def _stat(self) -> int:
        try:
            return os.stat(self.path).st_mtime_ns
        except OSError:
            return -1

    def _current_keys(self) -> list[_Key]:
        now = time.monotonic()
        with self._lock:
            if now - self._checked >= RELOAD_CHECK_S:
                self._checked = now
                mtime = self._stat()
                if mtime != self._mtime:
                    try:
                        self._keys = _load_keys(self.path)
                        self.reloads += 1
                    except JwtConfigError:
                        pass  # keep the keys that worked until the file is fixed
                    self._mtime = mtime
            return self._keys

    def authenticate(self, token: str) -> Identity:
        """The token's identity; raises :class:`JwtRejected` naming the failed check."""
        try:
            header = jwt.get_unverified_header(token)
        except jwt.DecodeError as exc:
            raise JwtRejected(f"malformed JWT: {exc}") from exc
        alg = header.get("alg")
        if alg not in self.algorithms:
            raise JwtRejected(f"JWT algorithm {alg!r} is not accepted (allowed: {', '.join(self.algorithms)})")
        kid = header.get("kid")
        candidates = [k for k in self._current_keys() if isinstance(k.key, ASYMMETRIC[alg]) and (kid is None or k.kid in (kid, None))]
        if not candidates:
            raise JwtRejected(f"no configured key for a {alg} JWT" + (f" with kid {kid!r}" if kid else ""))
        error: Exception | None = None
        for k in candidates:
            try:
                claims = jwt.decode(
                    token,
                    k.key,
                    algorithms=[alg],
                    audience=self.audience,
                    issuer=self.issuer,
                    leeway=self.leeway_s,
                    options={"require": ["exp", "iss", "aud", "sub"]},
                )
            except jwt.InvalidSignatureError as exc:
                error = exc
                continue
            except jwt.InvalidTokenError as exc:
                raise JwtRejected(f"JWT refused: {_reason(exc)}") from exc
            return _identity(claims)
        raise JwtRejected(f"JWT refused: {_reason(error)}" if error else "JWT refused")


def _reason(exc: Exception | None) -> str:
    names = {
        jwt.ExpiredSignatureError: "expired (exp)",
        jwt.ImmatureSignatureError: "not yet valid (nbf/iat)",
        jwt.InvalidAudienceError: "wrong audience (aud)",
        jwt.InvalidIssuerError: "wrong issuer (iss)",
        jwt.InvalidSignatureError: "signature does not verify with any configured key",
        jwt.MissingRequiredClaimError: "a required claim is missing",
    }
    for cls, text in names.items():
        if isinstance(exc, cls):
            return f"{text}: {exc}" if cls is jwt.MissingRequiredClaimError else text
    return str(exc)


def _identity(claims: dict[str, Any]) -> Identity:
    workspaces = claims.get("workspaces")
    if isinstance(workspaces, str):
        workspaces = [workspaces]
    if not isinstance(workspaces, list) or not workspaces or not all(
        isinstance(w, str) and (w == ALL_WORKSPACES or WORKSPACE_RE.fullmatch(w)) for w in workspaces
    ):
        raise JwtRejected('JWT claim workspaces: a list of workspace ids or "*" is required')
    scopes = claims.get("scopes", claims.get("scope"))
    if isinstance(scopes, str):
        scopes = scopes.split()
    known = frozenset(s for s in scopes or [] if s in SCOPES) if isinstance(scopes, list) else frozenset()
    if not known:
        raise JwtRejected(f"JWT claim scopes: none of {', '.join(sorted(SCOPES))}")
    name = "jwt:" + str(claims["sub"])[:64]
    return Identity(name, frozenset(workspaces), known)


def looks_like_jwt(token: str) -> bool:
    """Three base64url segments whose header is JSON: a JWT (else a static token)."""
    parts = token.split(".")
    if len(parts) != 3 or not parts[0].startswith("eyJ"):
        return False
    try:
        json.loads(jwt.utils.base64url_decode(parts[0]))
    except (ValueError, TypeError):
        return False
    return True
