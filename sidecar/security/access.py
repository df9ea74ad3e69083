"""Per-call authorization and admission: the bodies of the App's ``authorize`` hooks.

The auth interceptor has already authenticated the call (or auth is off) and bound its
:class:`~sidecar.security.tokens.Identity` to the call's context (:func:`current_identity`). Here:

* ``Evaluate`` / each ``EvaluateStream`` item: the token must cover the workspace with
  ``workspace:read``; a ``mode`` or ``timeout_ms`` override needs ``workspace:admin`` (seed §1.3 /
  §6.1; the mode check itself is ``policy.effective_mode``, which gets ``is_admin`` from here);
  then the workspace's token bucket admits the call or refuses it with RESOURCE_EXHAUSTED.
* ``GetEvaluation``: ``workspace:read`` on the workspace.
* ``Measure`` (no workspace): any valid token; rate-limited under the key ``#measure``.

With auth off (no tokens file) every caller is admin of every workspace; rate limits still apply.
Refusals raise the domain errors (PermissionDenied, Unauthenticated, ResourceExhausted) that the one
error mapping turns into statuses.
"""

from __future__ import annotations

import contextvars

from certus.sidecar.config import Config
from certus.sidecar.domain import EvaluateInput
from certus.sidecar.errors import PermissionDenied, Unauthenticated
from certus.sidecar.ratelimit import RateLimiter
from certus.sidecar.security.jwt_auth import JwtRejected, JwtVerifier, looks_like_jwt
from certus.sidecar.security.tokens import SCOPE_ADMIN, SCOPE_READ, Identity, TokenStore, parse_bearer

MEASURE_BUCKET = "#measure"  # not a valid workspace id, so it never shares a workspace's bucket

_IDENTITY: contextvars.ContextVar[Identity | None] = contextvars.ContextVar("certus_identity", default=None)


def current_identity() -> Identity | None:
    """The identity the auth interceptor bound to the running call (None when auth is off)."""
    return _IDENTITY.get()


def bind_identity(identity: Identity | None) -> None:
    """Bind ``identity`` to the current context (each gRPC call runs in its own task/context)."""
    _IDENTITY.set(identity)


class Authenticator:
    """A bearer token -> its identity: a JWT (when JWT keys are configured) or a static token."""

    def __init__(self, tokens: TokenStore | None, jwt: JwtVerifier | None = None) -> None:
        if tokens is None and jwt is None:
            raise ValueError("an authenticator needs static tokens or JWT keys")
        self.tokens = tokens
        self.jwt = jwt

    def authenticate(self, token: str) -> Identity:
        """The identity, or :class:`Unauthenticated` naming why (never the token)."""
        if self.jwt is not None and looks_like_jwt(token):
            try:
                return self.jwt.authenticate(token)
            except JwtRejected as exc:
                raise Unauthenticated(str(exc)) from None
        identity = self.tokens.authenticate(token) if self.tokens is not None else None
        if identity is None:
            raise Unauthenticated("unknown token")
        return identity

    def from_header(self, values: list[str]) -> Identity:
        """The identity of the call's ``authorization`` values (gRPC metadata or HTTP headers):
        exactly one ``Bearer <token>``; :class:`Unauthenticated` naming why not."""
        try:
            token = parse_bearer(values)
        except ValueError as exc:
            raise Unauthenticated(str(exc)) from None
        return self.authenticate(token)


class AccessControl:
    def __init__(self, authenticator: Authenticator | None, limiter: RateLimiter) -> None:
        self.authenticator = authenticator
        self.limiter = limiter

    @classmethod
    def from_config(cls, cfg: Config) -> "AccessControl":
        a = cfg.auth
        tokens = TokenStore.load(a.tokens_file) if a.tokens_file is not None else None
        jwt = (
            JwtVerifier(a.jwt_keys_file, issuer=a.jwt_issuer, audience=a.jwt_audience, algorithms=a.jwt_algorithms, leeway_s=a.jwt_leeway_s)
            if a.jwt_keys_file is not None
            else None
        )
        limiter = RateLimiter(a.rate_limit_rps, a.rate_limit_burst, max_keys=a.rate_limit_max_buckets)
        return cls(Authenticator(tokens, jwt) if tokens is not None or jwt is not None else None, limiter)

    @classmethod
    def disabled(cls) -> "AccessControl":
        """No tokens, no rate limit: what an App built without a config uses."""
        return cls(None, RateLimiter(0.0))

    @property
    def auth_enabled(self) -> bool:
        return self.authenticator is not None

    def _identity(self) -> Identity | None:
        if self.authenticator is None:
            return None
        identity = current_identity()
        if identity is None:  # fail closed: the interceptor did not run for this call
            raise Unauthenticated("no authenticated identity for this call")
        return identity

    def authorize_evaluate(self, inp: EvaluateInput) -> bool:
        """Check access to ``inp.workspace_id``, then admit through its bucket. Returns is_admin."""
        identity = self._identity()
        is_admin = True
        if identity is not None:
            ws = inp.workspace_id
            self._require_read(identity, ws)
            is_admin = identity.is_admin(ws)
            if inp.timeout_ms is not None and not is_admin:
                raise PermissionDenied(
                    f"timeout_ms: overriding the manifest's timeout requires the {SCOPE_ADMIN} scope on "
                    f"workspace {ws} (token {identity.name!r} has {_scopes(identity)}); "
                    "use the gRPC deadline to bound the call instead"
                )
        self.limiter.acquire(inp.workspace_id)
        return is_admin

    def authorize_measure(self) -> None:
        self._identity()  # any valid token may measure; it reads no workspace
        self.limiter.acquire(MEASURE_BUCKET)

    def authorize_workspace(self, workspace_id: str) -> None:
        identity = self._identity()
        if identity is not None:
            self._require_read(identity, workspace_id)

    @staticmethod
    def _require_read(identity: Identity, workspace_id: str) -> None:
        if not identity.can_access(workspace_id):
            raise PermissionDenied(f"token {identity.name!r} has no access to workspace {workspace_id}")
        if not identity.can_read(workspace_id):
            raise PermissionDenied(
                f"token {identity.name!r} lacks the {SCOPE_READ} scope on workspace {workspace_id}"
            )


def _scopes(identity: Identity) -> str:
    return ", ".join(sorted(identity.scopes)) or "no scopes"
