"""The App's authorize hooks: workspace scopes, admin overrides, fail-closed, rate-limit admission."""

from __future__ import annotations

import contextvars
from typing import Any, Callable

import pytest

from certus.sidecar.domain import EvaluateInput, Mode
from certus.sidecar.errors import PermissionDenied, ResourceExhausted, Unauthenticated
from certus.sidecar.ratelimit import RateLimiter
from certus.sidecar.security.access import MEASURE_BUCKET, AccessControl, Authenticator, bind_identity, current_identity
from certus.sidecar.security.tokens import Identity, TokenStore, hash_token

STORE = TokenStore.from_data(
    [
        {"name": "reader", "token_sha256": hash_token("r"), "workspaces": ["acme"], "scopes": ["workspace:read"]},
        {"name": "admin", "token_sha256": hash_token("a"), "workspaces": ["acme"], "scopes": ["workspace:admin"]},
    ]
)
READER = STORE.authenticate("r")
ADMIN = STORE.authenticate("a")


def inp(workspace_id: str = "acme", **kw: Any) -> EvaluateInput:
    return EvaluateInput(workspace_id=workspace_id, query="q", response="r", context=("c",), **kw)


def as_(identity: Identity | None, fn: Callable[[], Any]) -> Any:
    """Run ``fn`` in a fresh context with ``identity`` bound, as one gRPC call would."""

    def run() -> Any:
        bind_identity(identity)
        return fn()

    return contextvars.copy_context().run(run)


def test_auth_off_everyone_is_admin() -> None:
    ac = AccessControl.disabled()
    assert not ac.auth_enabled
    assert ac.authorize_evaluate(inp("anything", mode=Mode.ENFORCE, timeout_ms=500)) is True
    ac.authorize_workspace("anything")
    ac.authorize_measure()


def test_reader_reads_its_workspace_only() -> None:
    ac = AccessControl(Authenticator(STORE), RateLimiter(0))
    assert as_(READER, lambda: ac.authorize_evaluate(inp())) is False
    with pytest.raises(PermissionDenied, match="'reader' has no access to workspace beta"):
        as_(READER, lambda: ac.authorize_evaluate(inp("beta")))
    with pytest.raises(PermissionDenied):
        as_(READER, lambda: ac.authorize_workspace("beta"))
    as_(READER, lambda: ac.authorize_workspace("acme"))
    as_(READER, ac.authorize_measure)


def test_admin_is_admin_on_its_workspace() -> None:
    ac = AccessControl(Authenticator(STORE), RateLimiter(0))
    assert as_(ADMIN, lambda: ac.authorize_evaluate(inp(mode=Mode.ENFORCE, timeout_ms=500))) is True
    with pytest.raises(PermissionDenied):
        as_(ADMIN, lambda: ac.authorize_evaluate(inp("beta")))


def test_timeout_override_needs_admin() -> None:
    ac = AccessControl(Authenticator(STORE), RateLimiter(0))
    with pytest.raises(PermissionDenied, match="timeout_ms: .*workspace:admin"):
        as_(READER, lambda: ac.authorize_evaluate(inp(timeout_ms=500)))


def test_no_identity_with_auth_on_fails_closed() -> None:
    ac = AccessControl(Authenticator(STORE), RateLimiter(0))
    for fn in (lambda: ac.authorize_evaluate(inp()), lambda: ac.authorize_workspace("acme"), ac.authorize_measure):
        with pytest.raises(Unauthenticated):
            as_(None, fn)


def test_identity_is_per_context() -> None:
    assert current_identity() is None
    assert as_(READER, current_identity) is READER
    assert current_identity() is None


def test_refused_calls_take_no_rate_limit_token() -> None:
    rl = RateLimiter(1.0, 1, clock=lambda: 0.0)
    ac = AccessControl(Authenticator(STORE), rl)
    with pytest.raises(PermissionDenied):
        as_(READER, lambda: ac.authorize_evaluate(inp("beta")))
    with pytest.raises(PermissionDenied):
        as_(READER, lambda: ac.authorize_evaluate(inp(timeout_ms=500)))
    assert as_(READER, lambda: ac.authorize_evaluate(inp())) is False  # the bucket was still full
    with pytest.raises(ResourceExhausted) as exc:
        as_(READER, lambda: ac.authorize_evaluate(inp()))
    assert exc.value.retry_after_ms == 1000
    as_(READER, ac.authorize_measure)  # Measure has its own bucket
    with pytest.raises(ResourceExhausted, match=MEASURE_BUCKET):
        as_(READER, ac.authorize_measure)


def test_from_config_loads_tokens_and_limits(tmp_path: Any) -> None:
    from certus.sidecar import config as config_mod

    path = tmp_path / "tokens.json"
    path.write_text('[{"name": "x", "token_sha256": "%s", "workspaces": "*", "scopes": "workspace:read"}]' % hash_token("x"))
    cfg = config_mod.load(
        env={"CERTUS_AUTH_TOKENS_FILE": str(path), "CERTUS_RATE_LIMIT_RPS": "3", "CERTUS_RATE_LIMIT_BURST": "7",
             "CERTUS_RATE_LIMIT_MAX_BUCKETS": "11"}
    )
    ac = AccessControl.from_config(cfg)
    assert ac.auth_enabled and ac.authenticator is not None and ac.authenticator.authenticate("x").name == "x"
    assert (ac.limiter.rate_per_s, ac.limiter.burst, ac.limiter.max_keys) == (3.0, 7.0, 11)
