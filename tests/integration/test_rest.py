"""The spec's REST API over a real socket (httpx), served by the real sidecar beside gRPC: the same
validation, auth (static tokens and JWTs), rate limit, pipeline and evidence; errors in the spec's
taxonomy with HTTP codes; async evaluations polled through the status endpoint; health."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Iterator

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from certus.sidecar.evidence.records import iter_log
from certus.sidecar.protos import pb
from certus.sidecar.security.tokens import hash_token
from tests.conftest import RunningSidecar, free_port, make_config, start_sidecar

READER, ADMIN = "rest-reader-token-0123", "rest-admin-token-0123"
IDP = ec.generate_private_key(ec.SECP256R1())
BODY = {
    "workspace_id": "acme",
    "query": "Who gave their name to Normandy?",
    "response": "The Normans gave their name to Normandy, a region in France.",
    "context": ["The Normans were the people who in the 10th and 11th centuries gave their name to Normandy, a region in France."],
    "trace_id": "trace_rest_1",
}


@pytest.fixture(scope="module")
def rest(tmp_path_factory: pytest.TempPathFactory, encoder: Any) -> Iterator[tuple[RunningSidecar, str]]:
    tmp = tmp_path_factory.mktemp("rest")
    tokens = tmp / "tokens.json"
    tokens.write_text(
        json.dumps(
            [
                {"name": "reader", "token_sha256": hash_token(READER), "workspaces": ["acme"], "scopes": ["workspace:read"]},
                {"name": "admin", "token_sha256": hash_token(ADMIN), "workspaces": ["acme"], "scopes": ["workspace:admin"]},
            ]
        )
    )
    keys = tmp / "idp.pem"
    keys.write_bytes(IDP.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    address = f"127.0.0.1:{free_port()}"
    cfg = make_config(
        tmp,
        server={"rest_address": address},
        auth={"tokens_file": tokens, "jwt_keys_file": keys, "jwt_issuer": "https://idp.example", "jwt_audience": "certus"},
    )
    sc = start_sidecar(cfg, encoder=encoder)
    yield sc, f"http://{address}"
    sc.stop()


def post(url: str, body: Any, token: str | None = READER, **kw: Any) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    content = body if isinstance(body, (bytes, str)) else json.dumps(body)
    return httpx.post(f"{url}/v1/evaluate", content=content, headers={**headers, "Content-Type": "application/json"}, timeout=60, **kw)


def test_evaluate_over_rest_is_the_grpc_evaluation(rest: tuple[RunningSidecar, str]) -> None:
    sc, url = rest
    r = post(url, BODY)
    assert r.status_code == 200, r.text
    d = r.json()
    assert d["passed"] in (True, False) and d["skipped"] is False and d["skip_reason"] is None
    assert d["mode"] == "shadow" and d["outcome"] in ("pass", "fail", "warning") and d["trace_id"] == "trace_rest_1"
    assert d["evidence_id"].startswith("sha256:") and set(d["metrics"]) >= {"faithfulness", "answer_relevancy"}
    assert isinstance(d["processing_time_ms"], int) and d["guardrail_violations"] == []
    assert {r.evidence_id for r in iter_log(sc.cfg.evidence.log_dir)} >= {d["evidence_id"]}
    # the same request over gRPC scores the same
    g = sc.stub.Evaluate(pb.EvaluateRequest(**BODY), metadata=(("authorization", f"Bearer {READER}"),), timeout=60)
    assert {m.name: m.value for m in g.metrics} == pytest.approx(d["metrics"], abs=1e-5)  # batch-mix float noise only


def test_validation_errors_name_every_field(rest: tuple[RunningSidecar, str]) -> None:
    _, url = rest
    r = post(url, {**BODY, "query": "", "context": ["x" * 10_001], "workspace_id": "bad id!"})
    assert r.status_code == 400
    d = r.json()
    assert d["error"] == "invalid_request" and d["fallback"]
    assert {"query", "context[0]", "workspace_id"} <= set(d["details"]["field_violations"])
    cases = [
        ({**BODY, "mode": "loud"}, "mode"),
        ({**BODY, "colour": "red"}, "colour"),
        ({**BODY, "context": "not a list"}, "request"),
        (b"{not json", "request"),
        ([1, 2], "request"),
    ]
    for bad, field in cases:
        r = post(url, bad)
        assert r.status_code == 400 and field in r.json()["details"]["field_violations"], r.text


def test_auth_errors_use_the_spec_codes(rest: tuple[RunningSidecar, str]) -> None:
    _, url = rest
    r = post(url, BODY, token=None)
    assert r.status_code == 401 and r.json()["error"] == "unauthorized" and r.headers["www-authenticate"] == "Bearer"
    assert post(url, BODY, token="nope").status_code == 401
    r = post(url, {**BODY, "workspace_id": "beta"})
    assert r.status_code == 403 and r.json()["error"] == "forbidden" and "beta" in r.json()["message"]
    r = post(url, {**BODY, "mode": "enforce"})  # an override needs workspace:admin
    assert r.status_code == 403 and "workspace:admin" in r.json()["message"]
    now = int(time.time())
    claims = {"iss": "https://idp.example", "aud": "certus", "sub": "svc", "exp": now + 60, "workspaces": ["acme"], "scopes": "workspace:read"}
    assert post(url, BODY, token=jwt.encode(claims, IDP, algorithm="ES256")).status_code == 200
    r = post(url, BODY, token=jwt.encode({**claims, "exp": now - 3600}, IDP, algorithm="ES256"))
    assert r.status_code == 401 and "expired" in r.json()["message"]


def test_async_evaluation_and_its_status(rest: tuple[RunningSidecar, str]) -> None:
    _, url = rest
    r = post(url, {**BODY, "mode": "async"}, token=ADMIN)
    assert r.status_code == 202, r.text
    d = r.json()
    assert d["status"] == "pending" and d["evidence_id"] is None and d["status_uri"].startswith(f"/v1/evaluate/{d['evaluation_id']}/status")
    headers = {"Authorization": f"Bearer {READER}"}
    deadline = time.time() + 60
    while True:
        s = httpx.get(url + d["status_uri"], headers=headers, timeout=30)
        assert s.status_code == 200, s.text
        if s.json()["status"] == "completed":
            break
        assert time.time() < deadline, "async evaluation did not complete"
        time.sleep(0.05)
    result = s.json()["result"]
    assert result["evaluation_id"] == d["evaluation_id"] and result["evidence_id"].startswith("sha256:")
    missing = httpx.get(f"{url}/v1/evaluate/00000000-0000-0000-0000-000000000000/status?workspace_id=acme", headers=headers, timeout=30)
    assert missing.status_code == 404 and missing.json()["error"] == "not_found"
    no_ws = httpx.get(f"{url}/v1/evaluate/{d['evaluation_id']}/status", headers=headers, timeout=30)
    assert no_ws.status_code == 400 and "workspace_id" in no_ws.json()["details"]["field_violations"]


def test_health_needs_no_token(rest: tuple[RunningSidecar, str]) -> None:
    _, url = rest
    r = httpx.get(f"{url}/v1/health", timeout=30)
    assert r.status_code == 200 and r.json()["status"] == "healthy" and r.json()["dependencies"]["evidence_log"] == "healthy"


def test_rate_limit_is_429_with_retry_after(tmp_path: Path, encoder: Any) -> None:
    address = f"127.0.0.1:{free_port()}"
    sc = start_sidecar(make_config(tmp_path, server={"rest_address": address}, auth={"rate_limit_rps": 0.2, "rate_limit_burst": 1}), encoder=encoder)
    try:
        first = post(f"http://{address}", BODY, token=None)
        second = post(f"http://{address}", BODY, token=None)
    finally:
        sc.stop()
    assert first.status_code == 200
    assert second.status_code == 429 and second.json()["error"] == "rate_limited"
    assert second.json()["retry_after_ms"] > 0 and int(second.headers["retry-after"]) >= 1
