"""Bearer-token auth, per-workspace scopes, and TLS / mTLS against the real sidecar on loopback."""

from __future__ import annotations

import datetime
import ipaddress
import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from certus.sidecar.protos import pb, pb_grpc
from certus.sidecar.security.tokens import hash_token
from tests.conftest import RunningSidecar, make_config, run_cli, start_sidecar

READER = "reader-token-0123456789"
ADMIN = "admin-token-0123456789"
STAR = "star-token-0123456789"
BETA = "beta-token-0123456789"

TOKENS = {
    "tokens": [
        {"name": "reader", "token_sha256": hash_token(READER), "workspaces": ["acme"], "scopes": ["workspace:read"]},
        {"name": "admin", "token_sha256": hash_token(ADMIN), "workspaces": ["acme"], "scopes": ["workspace:admin"]},
        {"name": "star", "token_sha256": hash_token(STAR), "workspaces": "*", "scopes": ["workspace:read"]},
        {"name": "beta", "token_sha256": hash_token(BETA), "workspaces": ["beta"], "scopes": ["workspace:read"]},
    ]
}

CONTEXT = ["The Normans gave their name to Normandy, a region in France."]


def request(**kw: Any) -> pb.EvaluateRequest:
    base: dict[str, Any] = dict(
        workspace_id="acme",
        query="Who gave their name to Normandy?",
        response="The Normans gave their name to Normandy.",
        context=CONTEXT,
    )
    base.update(kw)
    return pb.EvaluateRequest(**base)


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


def code_of(fn: Any, *args: Any, **kw: Any) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as exc:
        fn(*args, **kw)
    return exc.value.code()


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory, encoder: Any) -> Iterator[RunningSidecar]:
    tmp = tmp_path_factory.mktemp("auth")
    tokens_file = tmp / "tokens.json"
    tokens_file.write_text(json.dumps(TOKENS))
    running = start_sidecar(make_config(tmp, auth={"tokens_file": tokens_file}), encoder=encoder)
    yield running
    running.stop()


# -- authentication ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "metadata",
    [
        (),
        bearer("not-a-known-token"),
        (("authorization", f"Basic {READER}"),),
        (("authorization", "Bearer "),),
        (("authorization", f"Bearer {READER}"), ("authorization", f"Bearer {READER}")),
    ],
    ids=["missing", "unknown", "basic-scheme", "empty", "repeated"],
)
def test_missing_or_invalid_token_is_unauthenticated(secured: RunningSidecar, metadata: Any) -> None:
    refused = secured.app.info()["details"]
    assert code_of(secured.stub.Evaluate, request(), metadata=metadata, timeout=30) == grpc.StatusCode.UNAUTHENTICATED
    assert code_of(secured.stub.GetInfo, pb.GetInfoRequest(), metadata=metadata, timeout=30) == (
        grpc.StatusCode.UNAUTHENTICATED
    )
    assert code_of(
        secured.stub.Measure, pb.MeasureRequest(text1="a", text2="b"), metadata=metadata, timeout=30
    ) == grpc.StatusCode.UNAUTHENTICATED
    # a refused call never reaches the pipeline: no rate-limit tokens taken
    assert secured.app.info()["details"]["ratelimit.admitted"] == refused["ratelimit.admitted"]


def test_unauthenticated_stream_is_refused_before_reading(secured: RunningSidecar) -> None:
    answers = secured.stub.EvaluateStream(iter([request(request_id="x")]), timeout=30)
    with pytest.raises(grpc.RpcError) as exc:
        list(answers)
    assert exc.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_health_and_reflection_stay_open(secured: RunningSidecar) -> None:
    health = health_pb2_grpc.HealthStub(secured.channel)
    assert health.Check(health_pb2.HealthCheckRequest(), timeout=10).status == health_pb2.HealthCheckResponse.SERVING
    refl = reflection_pb2_grpc.ServerReflectionStub(secured.channel)
    answers = list(refl.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=10))
    names = {s.name for s in answers[0].list_services_response.service}
    assert "certus.evaluate.v1.Evaluator" in names


# -- authorization -------------------------------------------------------------------------------


def test_valid_token_for_its_workspace_is_served(secured: RunningSidecar) -> None:
    resp = secured.stub.Evaluate(request(), metadata=bearer(READER), timeout=60)
    assert resp.evidence_id.startswith("sha256:")
    assert resp.mode == pb.EVALUATION_MODE_SHADOW
    info = secured.stub.GetInfo(pb.GetInfoRequest(), metadata=bearer(BETA), timeout=10)
    assert info.details["auth.enabled"] == "True"
    m = secured.stub.Measure(pb.MeasureRequest(text1="same text", text2="same text"), metadata=bearer(READER), timeout=30)
    assert m.matched


def test_wrong_workspace_is_permission_denied(secured: RunningSidecar) -> None:
    with pytest.raises(grpc.RpcError) as exc:
        secured.stub.Evaluate(request(workspace_id="beta"), metadata=bearer(READER), timeout=30)
    assert exc.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "reader" in (exc.value.details() or "") and "beta" in (exc.value.details() or "")
    assert READER not in (exc.value.details() or "")
    assert code_of(secured.stub.Evaluate, request(workspace_id="acme"), metadata=bearer(BETA), timeout=30) == (
        grpc.StatusCode.PERMISSION_DENIED
    )


def test_star_token_reaches_every_workspace(secured: RunningSidecar) -> None:
    for ws in ("acme", "beta", "gamma-7"):
        resp = secured.stub.Evaluate(request(workspace_id=ws), metadata=bearer(STAR), timeout=60)
        assert resp.evidence_id.startswith("sha256:")


def test_mode_override_needs_admin(secured: RunningSidecar) -> None:
    enforce = request(mode=pb.EVALUATION_MODE_ENFORCE)
    with pytest.raises(grpc.RpcError) as exc:
        secured.stub.Evaluate(enforce, metadata=bearer(READER), timeout=30)
    assert exc.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "workspace:admin" in (exc.value.details() or "")
    # naming the manifest's own mode is not an override
    same = secured.stub.Evaluate(request(mode=pb.EVALUATION_MODE_SHADOW), metadata=bearer(READER), timeout=60)
    assert same.mode == pb.EVALUATION_MODE_SHADOW
    resp = secured.stub.Evaluate(enforce, metadata=bearer(ADMIN), timeout=60)
    assert resp.mode == pb.EVALUATION_MODE_ENFORCE


def test_timeout_override_needs_admin(secured: RunningSidecar) -> None:
    with pytest.raises(grpc.RpcError) as exc:
        secured.stub.Evaluate(request(timeout_ms=5000), metadata=bearer(READER), timeout=30)
    assert exc.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "timeout_ms" in (exc.value.details() or "")
    resp = secured.stub.Evaluate(request(timeout_ms=5000), metadata=bearer(ADMIN), timeout=60)
    assert resp.evidence_id.startswith("sha256:")


def test_get_evaluation_checks_the_workspace(secured: RunningSidecar) -> None:
    missing = pb.GetEvaluationRequest(evaluation_id=str(uuid.uuid4()), workspace_id="beta")
    assert code_of(secured.stub.GetEvaluation, missing, metadata=bearer(READER), timeout=10) == (
        grpc.StatusCode.PERMISSION_DENIED
    )
    assert code_of(secured.stub.GetEvaluation, missing, metadata=bearer(BETA), timeout=10) == grpc.StatusCode.NOT_FOUND


def test_stream_item_for_a_forbidden_workspace_fails_alone(secured: RunningSidecar) -> None:
    reqs = [request(request_id=f"ok-{i}", response=f"The Normans gave their name to Normandy ({i}).") for i in range(3)]
    reqs.insert(1, request(request_id="forbidden", workspace_id="beta"))
    reqs.append(request(request_id="override", mode=pb.EVALUATION_MODE_ENFORCE))
    answers = {a.request_id: a for a in secured.stub.EvaluateStream(iter(reqs), metadata=bearer(READER), timeout=120)}
    assert set(answers) == {"ok-0", "ok-1", "ok-2", "forbidden", "override"}
    for rid in ("forbidden", "override"):
        assert answers[rid].WhichOneof("result") == "error"
        assert answers[rid].error.code == grpc.StatusCode.PERMISSION_DENIED.value[0]
    for i in range(3):
        assert answers[f"ok-{i}"].WhichOneof("result") == "response"
        assert answers[f"ok-{i}"].response.evidence_id.startswith("sha256:")


def test_tokens_never_reach_logs_or_evidence(secured: RunningSidecar, capfd: pytest.CaptureFixture[str]) -> None:
    secured.stub.Evaluate(request(), metadata=bearer(READER), timeout=60)
    code_of(secured.stub.Evaluate, request(workspace_id="beta"), metadata=bearer(READER), timeout=30)
    code_of(secured.stub.Evaluate, request(), metadata=bearer(READER + "x"), timeout=30)
    out, err = capfd.readouterr()
    assert "auth_refused" in out + err  # the refusal was logged ...
    for secret in (READER, hash_token(READER)):  # ... without the token or its digest
        assert secret not in out + err
        for path in Path(secured.cfg.evidence.log_dir).rglob("*"):
            if path.is_file():
                assert secret.encode() not in path.read_bytes()


# -- TLS and mTLS --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pki:
    ca: bytes
    server_cert: bytes
    server_key: bytes
    client_cert: bytes
    client_key: bytes
    rogue_client_cert: bytes  # signed by another CA
    rogue_client_key: bytes


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def _cert(
    subject: str, key: ec.EllipticCurvePrivateKey, issuer: x509.Name | None, issuer_key: ec.EllipticCurvePrivateKey,
    *, ca: bool = False, server: bool = False, client: bool = False,
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.timezone.utc)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    b = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer or name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if ca:
        b = b.add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )
    if server:
        b = b.add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                 x509.IPAddress(ipaddress.ip_address("::1"))]
            ),
            critical=False,
        ).add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
    if client:
        b = b.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
    return b.sign(issuer_key, hashes.SHA256())


def make_pki() -> Pki:
    pem = serialization.Encoding.PEM
    ca_key, rogue_ca_key = _key(), _key()
    ca = _cert("certus test CA", ca_key, None, ca_key, ca=True)
    rogue_ca = _cert("rogue CA", rogue_ca_key, None, rogue_ca_key, ca=True)
    server_key, client_key, rogue_key = _key(), _key(), _key()
    server = _cert("localhost", server_key, ca.subject, ca_key, server=True)
    client = _cert("rag-app", client_key, ca.subject, ca_key, client=True)
    rogue = _cert("rag-app", rogue_key, rogue_ca.subject, rogue_ca_key, client=True)
    return Pki(
        ca.public_bytes(pem), server.public_bytes(pem), _pem_key(server_key),
        client.public_bytes(pem), _pem_key(client_key), rogue.public_bytes(pem), _pem_key(rogue_key),
    )


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> tuple[Pki, Path]:
    d = tmp_path_factory.mktemp("pki")
    p = make_pki()
    (d / "ca.pem").write_bytes(p.ca)
    (d / "server.pem").write_bytes(p.server_cert)
    (d / "server.key").write_bytes(p.server_key)
    return p, d


def _tls_sidecar(tmp: Path, pki_dir: Path, encoder: Any, *, mtls: bool, tokens: bool = False) -> RunningSidecar:
    auth: dict[str, Any] = {"tls_cert": pki_dir / "server.pem", "tls_key": pki_dir / "server.key"}
    if mtls:
        auth["tls_client_ca"] = pki_dir / "ca.pem"
    if tokens:
        (tmp / "tokens.toml").write_text(
            f'[[tokens]]\nname = "reader"\ntoken_sha256 = "{hash_token(READER)}"\n'
            'workspaces = ["acme"]\nscopes = ["workspace:read"]\n'
        )
        auth["tokens_file"] = tmp / "tokens.toml"
    return start_sidecar(make_config(tmp, auth=auth), encoder=encoder)


def _info(channel: grpc.Channel, **kw: Any) -> pb.GetInfoResponse:
    return pb_grpc.EvaluatorStub(channel).GetInfo(pb.GetInfoRequest(), timeout=10, **kw)


def test_tls_serves_tls_clients_and_refuses_plaintext(
    tmp_path: Path, pki: tuple[Pki, Path], encoder: Any
) -> None:
    p, d = pki
    running = _tls_sidecar(tmp_path, d, encoder, mtls=False, tokens=True)
    try:
        creds = grpc.composite_channel_credentials(
            grpc.ssl_channel_credentials(root_certificates=p.ca), grpc.access_token_call_credentials(READER)
        )
        with grpc.secure_channel(f"localhost:{running.port}", creds) as ch:
            assert len(_info(ch).public_key) == 32
            resp = pb_grpc.EvaluatorStub(ch).Evaluate(request(), timeout=60)
            assert resp.evidence_id.startswith("sha256:")
        # TLS without the token: the transport is fine, the call is not authenticated
        with grpc.secure_channel(f"127.0.0.1:{running.port}", grpc.ssl_channel_credentials(p.ca)) as ch:
            assert code_of(_info, ch) == grpc.StatusCode.UNAUTHENTICATED
        # a plaintext client cannot talk to a TLS server at all
        with grpc.insecure_channel(f"127.0.0.1:{running.port}") as ch:
            assert code_of(_info, ch, metadata=bearer(READER)) == grpc.StatusCode.UNAVAILABLE
        # a client that does not trust the server's CA refuses the handshake
        other = make_pki()
        with grpc.secure_channel(f"localhost:{running.port}", grpc.ssl_channel_credentials(other.ca)) as ch:
            assert code_of(_info, ch, metadata=bearer(READER)) == grpc.StatusCode.UNAVAILABLE
    finally:
        running.stop()


def test_mtls_requires_a_client_certificate_from_the_ca(
    tmp_path: Path, pki: tuple[Pki, Path], encoder: Any
) -> None:
    p, d = pki
    running = _tls_sidecar(tmp_path, d, encoder, mtls=True)
    target = f"localhost:{running.port}"
    try:
        with_cert = grpc.ssl_channel_credentials(p.ca, private_key=p.client_key, certificate_chain=p.client_cert)
        with grpc.secure_channel(target, with_cert) as ch:
            assert len(_info(ch).public_key) == 32
        with grpc.secure_channel(target, grpc.ssl_channel_credentials(p.ca)) as ch:
            assert code_of(_info, ch) == grpc.StatusCode.UNAVAILABLE
        rogue = grpc.ssl_channel_credentials(p.ca, private_key=p.rogue_client_key, certificate_chain=p.rogue_client_cert)
        with grpc.secure_channel(target, rogue) as ch:
            assert code_of(_info, ch) == grpc.StatusCode.UNAVAILABLE
        with grpc.insecure_channel(target) as ch:
            assert code_of(_info, ch) == grpc.StatusCode.UNAVAILABLE
    finally:
        running.stop()


# -- the real `certus-sidecar serve` process (uvloop, settings from the environment) ---------------


@pytest.mark.slow
def test_serve_process_with_tokens_from_the_environment(tmp_path: Path, model_dir: Path) -> None:
    from certus.sidecar.loadgen import start_local_sidecar

    tokens_file = tmp_path / "tokens.json"
    tokens_file.write_text(json.dumps(TOKENS))
    proc, target, _home = start_local_sidecar({"CERTUS_AUTH_TOKENS_FILE": str(tokens_file)})
    try:
        with grpc.insecure_channel(target) as ch:
            stub = pb_grpc.EvaluatorStub(ch)
            assert code_of(stub.Evaluate, request(), timeout=30) == grpc.StatusCode.UNAUTHENTICATED
            assert stub.Evaluate(request(), metadata=bearer(READER), timeout=60).evidence_id.startswith("sha256:")
            reqs = [request(request_id="ok"), request(request_id="no", workspace_id="beta")]
            answers = {a.request_id: a for a in stub.EvaluateStream(iter(reqs), metadata=bearer(READER), timeout=60)}
            assert answers["ok"].WhichOneof("result") == "response"
            assert answers["no"].error.code == grpc.StatusCode.PERMISSION_DENIED.value[0]
            health = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=10)
            assert health.status == health_pb2.HealthCheckResponse.SERVING
    finally:
        proc.terminate()
        proc.wait(30)


def test_serve_refuses_a_public_address_without_auth(tmp_path: Path) -> None:

    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(tmp_path),
        "CERTUS_HOME": str(tmp_path),
        "CERTUS_ADDRESS": "0.0.0.0:0",
    }
    out = run_cli("serve", env=env, timeout=120)
    assert out.returncode != 0
    assert "CERTUS_AUTH_TOKENS_FILE" in out.stderr and "CERTUS_ALLOW_INSECURE_REMOTE" in out.stderr
    assert not (tmp_path / "evidence").exists()  # refused before anything was created


# -- JWT bearer tokens beside the static ones ------------------------------------------------------


@pytest.fixture(scope="module")
def jwt_secured(tmp_path_factory: pytest.TempPathFactory, encoder: Any) -> Iterator[tuple[RunningSidecar, Any]]:
    from cryptography.hazmat.primitives.asymmetric import rsa

    tmp = tmp_path_factory.mktemp("jwt")
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    keys_file = tmp / "idp.pem"
    keys_file.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    tokens_file = tmp / "tokens.json"
    tokens_file.write_text(json.dumps(TOKENS))
    auth = {"tokens_file": tokens_file, "jwt_keys_file": keys_file, "jwt_issuer": "https://idp.example", "jwt_audience": "certus"}
    running = start_sidecar(make_config(tmp, auth=auth), encoder=encoder)
    yield running, key
    running.stop()


def _jwt(key: Any, **kw: Any) -> str:
    import time

    import jwt

    now = int(time.time())
    body = {"iss": "https://idp.example", "aud": "certus", "sub": "svc-rag", "iat": now, "exp": now + 120, "workspaces": ["acme"], "scopes": ["workspace:read"]}
    body.update(kw)
    return jwt.encode(body, key, algorithm="RS256")


def test_jwt_bearer_on_grpc_maps_to_the_same_statuses(jwt_secured: tuple[RunningSidecar, Any]) -> None:
    sc, key = jwt_secured
    resp = sc.stub.Evaluate(request(), metadata=bearer(_jwt(key)), timeout=60)
    assert resp.evidence_id.startswith("sha256:") and not resp.skipped
    # a workspace the token does not list: authenticated, not allowed
    assert code_of(sc.stub.Evaluate, request(workspace_id="beta"), metadata=bearer(_jwt(key)), timeout=30) == (
        grpc.StatusCode.PERMISSION_DENIED
    )
    # a mode override needs workspace:admin in the token's scopes
    override = request(mode=pb.EVALUATION_MODE_ENFORCE, timeout_ms=5000)
    assert code_of(sc.stub.Evaluate, override, metadata=bearer(_jwt(key)), timeout=30) == grpc.StatusCode.PERMISSION_DENIED
    admin = sc.stub.Evaluate(override, metadata=bearer(_jwt(key, scopes="workspace:admin")), timeout=60)
    assert admin.mode == pb.EVALUATION_MODE_ENFORCE
    # expired / wrong audience: unauthenticated, with the reason in the status message
    with pytest.raises(grpc.RpcError) as exc:
        sc.stub.Evaluate(request(), metadata=bearer(_jwt(key, exp=1)), timeout=30)
    assert exc.value.code() == grpc.StatusCode.UNAUTHENTICATED and "expired" in (exc.value.details() or "")
    assert code_of(sc.stub.Evaluate, request(), metadata=bearer(_jwt(key, aud="other")), timeout=30) == grpc.StatusCode.UNAUTHENTICATED
    # the static tokens keep working beside JWTs
    assert sc.stub.Evaluate(request(), metadata=bearer(READER), timeout=60).evidence_id.startswith("sha256:")
