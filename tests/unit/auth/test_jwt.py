"""JWT bearer tokens with real keys (cryptography) and real PyJWT signing: RS256, ES256 and EdDSA
accepted with the right claims; expired, not yet valid, wrong audience, wrong issuer, wrong key,
``alg=none`` and HS256 signed with the public key (algorithm confusion) refused with the reason;
JWKS ``kid`` selection; the keys file re-read when it changes."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import time
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from certus.sidecar.errors import Unauthenticated
from certus.sidecar.security import jwt_auth
from certus.sidecar.security.access import Authenticator
from certus.sidecar.security.jwt_auth import JwtConfigError, JwtRejected, JwtVerifier, looks_like_jwt
from certus.sidecar.security.tokens import TokenStore, hash_token

ISS, AUD = "https://idp.example", "certus-sidecar"
RSA = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC = ec.generate_private_key(ec.SECP256R1())
ED = ed25519.Ed25519PrivateKey.generate()
OTHER_RSA = rsa.generate_private_key(public_exponent=65537, key_size=2048)


def pem(key: Any) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def claims(**kw: Any) -> dict[str, Any]:
    now = int(time.time())
    base = {"iss": ISS, "aud": AUD, "sub": "rag-app", "iat": now, "nbf": now, "exp": now + 300, "workspaces": ["acme"], "scopes": "workspace:read"}
    base.update(kw)
    return {k: v for k, v in base.items() if v is not None}


def token(key: Any, alg: str, headers: dict[str, Any] | None = None, **kw: Any) -> str:
    return jwt.encode(claims(**kw), key, algorithm=alg, headers=headers)


@pytest.fixture
def verifier(tmp_path: Path) -> JwtVerifier:
    path = tmp_path / "keys.pem"
    path.write_bytes(pem(RSA) + pem(EC) + pem(ED))
    return JwtVerifier(path, issuer=ISS, audience=AUD, algorithms="RS256,ES256,EdDSA", leeway_s=5)


@pytest.mark.parametrize("key,alg", [(RSA, "RS256"), (EC, "ES256"), (ED, "EdDSA")])
def test_each_algorithm_is_accepted_with_its_claims(verifier: JwtVerifier, key: Any, alg: str) -> None:
    ident = verifier.authenticate(token(key, alg, workspaces=["acme", "beta"], scopes=["workspace:admin"]))
    assert ident.name == "jwt:rag-app" and ident.workspaces == {"acme", "beta"} and ident.is_admin("beta")
    star = verifier.authenticate(token(key, alg, workspaces="*", scopes="workspace:read other:scope"))
    assert star.can_read("anything") and not star.is_admin("anything")


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _forged(alg: str, secret: bytes) -> str:
    head = _b64(json.dumps({"alg": alg, "typ": "JWT"}).encode())
    body = _b64(json.dumps(claims()).encode())
    sig = hmac.new(secret, f"{head}.{body}".encode(), hashlib.sha256).digest() if secret else b""
    return f"{head}.{body}.{_b64(sig)}"


@pytest.mark.parametrize(
    "make,reason",
    [
        (lambda: token(RSA, "RS256", exp=int(time.time()) - 60), "expired"),
        (lambda: token(RSA, "RS256", nbf=int(time.time()) + 600), "not yet valid"),
        (lambda: token(RSA, "RS256", aud="someone-else"), "wrong audience"),
        (lambda: token(RSA, "RS256", iss="https://evil.example"), "wrong issuer"),
        (lambda: token(OTHER_RSA, "RS256"), "signature does not verify"),
        (lambda: token(RSA, "RS256", exp=None), "required claim"),
        (lambda: _forged("none", b""), "algorithm 'none' is not accepted"),
        (lambda: _forged("HS256", pem(RSA)), "algorithm 'HS256' is not accepted"),  # public key as HMAC secret
        (lambda: token(RSA, "RS384"), "algorithm 'RS384' is not accepted"),
        (lambda: token(RSA, "RS256", workspaces=None), "workspaces"),
        (lambda: token(RSA, "RS256", workspaces=["bad ws!"]), "workspaces"),
        (lambda: token(RSA, "RS256", scopes="openid profile"), "scopes"),
    ],
)
def test_bad_tokens_are_refused_with_the_reason(verifier: JwtVerifier, make: Any, reason: str) -> None:
    with pytest.raises(JwtRejected, match=reason):
        verifier.authenticate(make())


def test_jwks_kid_selects_the_key_and_the_file_reloads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(jwt_auth, "RELOAD_CHECK_S", 0.0)
    path = tmp_path / "jwks.json"

    def jwk(key: Any, kid: str) -> dict[str, Any]:
        d = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
        return {**d, "kid": kid, "alg": "RS256", "use": "sig"}

    path.write_text(json.dumps({"keys": [jwk(RSA, "k1")]}))
    v = JwtVerifier(path, issuer=ISS, audience=AUD, algorithms=["RS256"])
    assert v.authenticate(token(RSA, "RS256", headers={"kid": "k1"})).name == "jwt:rag-app"
    with pytest.raises(JwtRejected, match="kid 'k2'"):
        v.authenticate(token(OTHER_RSA, "RS256", headers={"kid": "k2"}))
    # the identity provider rotates: k2 is published, the file changes, no restart
    path.write_text(json.dumps({"keys": [jwk(RSA, "k1"), jwk(OTHER_RSA, "k2")]}))
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 1_000_000))
    assert v.authenticate(token(OTHER_RSA, "RS256", headers={"kid": "k2"})).name == "jwt:rag-app" and v.reloads == 1
    # a broken file keeps the keys that worked
    path.write_text("{not json")
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 2_000_000))
    assert v.authenticate(token(RSA, "RS256", headers={"kid": "k1"})).name == "jwt:rag-app"


def test_configuration_errors_name_the_setting(tmp_path: Path) -> None:
    path = tmp_path / "k.pem"
    path.write_bytes(pem(RSA))
    with pytest.raises(JwtConfigError, match="jwt_algorithms"):
        JwtVerifier(path, issuer=ISS, audience=AUD, algorithms="HS256")
    with pytest.raises(JwtConfigError, match="jwt_issuer and auth.jwt_audience"):
        JwtVerifier(path, issuer="", audience=AUD, algorithms="RS256")
    (tmp_path / "empty.pem").write_text("nothing here")
    with pytest.raises(JwtConfigError, match="holds no public key"):
        JwtVerifier(tmp_path / "empty.pem", issuer=ISS, audience=AUD, algorithms="RS256")
    with pytest.raises(JwtConfigError, match="cannot read"):
        JwtVerifier(tmp_path / "missing.pem", issuer=ISS, audience=AUD, algorithms="RS256")


def test_static_tokens_and_jwts_side_by_side(verifier: JwtVerifier) -> None:
    store = TokenStore.from_data([{"name": "static", "token_sha256": hash_token("s3cret-token"), "workspaces": "*", "scopes": "workspace:read"}])
    auth = Authenticator(store, verifier)
    assert auth.authenticate("s3cret-token").name == "static"
    assert auth.authenticate(token(EC, "ES256")).name == "jwt:rag-app"
    with pytest.raises(Unauthenticated, match="expired"):
        auth.authenticate(token(EC, "ES256", exp=int(time.time()) - 60))
    with pytest.raises(Unauthenticated, match="unknown token"):
        auth.authenticate("not-a-token")
    assert looks_like_jwt(token(ED, "EdDSA")) and not looks_like_jwt("a.b.c") and not looks_like_jwt("s3cret-token")
