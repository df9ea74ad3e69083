"""Workspace manifests through the real server: files in the manifest directory decide the verdict,
are picked up without a restart, survive broken edits, resolve ``latest``, refuse other workspaces'
and unknown uris, and — with trusted keys configured — must be signed by
``certus-sidecar manifest sign``.

Every wait polls the public API with a bounded deadline (the store polls the directory every
0.2 s in these configs); nothing asserts how fast anything is.
"""

from __future__ import annotations

import base64
import json
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from certus.sidecar.evidence.records import iter_log
from certus.sidecar.protos import pb
from tests.conftest import (
    OUTSIDE,
    RunningSidecar,
    cli_argv,
    cli_env,
    field_violations,
    make_config,
    put_atomic,
    start_sidecar,
    write_manifest,
)

ROOT = Path(__file__).resolve().parents[2]
WAIT_S = 30.0

CONTEXT = [
    "The Normans were the people who in the 10th and 11th centuries gave their name to Normandy, a region in France.",
    "They were descended from Norse raiders and pirates from Denmark, Iceland and Norway.",
]
FAITHFUL = "The Normans gave their name to Normandy, a region in France."
UNFAITHFUL = "The Normans came from Portugal in 1492. They invented the printing press."
EMBEDDED = "certus://manifests/default/2025-01"
STRICT = {  # the embedded default's metric policy
    "faithfulness": {"min_score": 0.7, "weight": 2.0, "required": True},
    "answer_relevancy": {"min_score": 0.6, "weight": 1.5, "required": True},
}
LENIENT = {"faithfulness": {"min_score": 0.0, "required": True}}  # nothing can fail


def uri(workspace: str, version: str) -> str:
    return f"certus://manifests/{workspace}/{version}"


def request(workspace: str, manifest_uri: str = "", response: str = UNFAITHFUL) -> pb.EvaluateRequest:
    return pb.EvaluateRequest(
        workspace_id=workspace,
        query="Who gave their name to Normandy?",
        response=response,
        context=CONTEXT,
        manifest_uri=manifest_uri,
    )


def eventually(fn: Callable[[], Any], what: str) -> Any:
    end = time.monotonic() + WAIT_S
    while True:
        value = fn()
        if value:
            return value
        if time.monotonic() > end:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.05)


def evaluate(sc: RunningSidecar, workspace: str, manifest_uri: str = "", response: str = UNFAITHFUL) -> pb.EvaluateResponse:
    return sc.stub.Evaluate(request(workspace, manifest_uri, response), timeout=60)


def manifest_errors(sc: RunningSidecar) -> dict[str, str]:
    """GetInfo's manifest problems: {file relative to the manifest dir: message}."""
    details = sc.stub.GetInfo(pb.GetInfoRequest(), timeout=10).details
    return {k.removeprefix("manifests."): v for k, v in details.items() if k.startswith("manifests.")}


def rpc_error(call: Callable[[], Any]) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as exc:
        call()
    return exc.value


def cli(*args: str | Path) -> subprocess.CompletedProcess[str]:
    """``certus-sidecar ...`` as a separate process: the installed console script."""
    return subprocess.run(
        cli_argv(*args),
        cwd=OUTSIDE,
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )


# -- one sidecar with a few workspaces -------------------------------------------------------------


@pytest.fixture(scope="module")
def sc(tmp_path_factory: pytest.TempPathFactory, encoder: Any) -> Iterator[RunningSidecar]:
    cfg = make_config(tmp_path_factory.mktemp("manifests_e2e"))
    mdir = cfg.manifests.manifest_dir
    write_manifest(mdir, "acme", "2025-01", default_mode="shadow", thresholds=STRICT)
    write_manifest(mdir, "acme", "2025-03", default_mode="enforce", thresholds=STRICT)
    write_manifest(mdir, "other", "2025-01", default_mode="enforce", thresholds=STRICT)
    running = start_sidecar(cfg, encoder=encoder)
    yield running
    running.stop()


def test_latest_resolves_to_the_newest_version(sc: RunningSidecar) -> None:
    for manifest_uri in ("", uri("acme", "latest")):
        resp = evaluate(sc, "acme", manifest_uri)
        assert resp.manifest_uri == uri("acme", "2025-03"), manifest_uri
        assert resp.mode == pb.EVALUATION_MODE_ENFORCE and resp.blocked is True
    older = evaluate(sc, "acme", uri("acme", "2025-01"))
    assert older.manifest_uri == uri("acme", "2025-01")
    assert older.mode == pb.EVALUATION_MODE_SHADOW and older.blocked is False
    # the applied manifest is part of the signed decision
    logged = {r.decision_id: r.payload["manifest_uri"] for r in iter_log(sc.cfg.evidence.log_dir)}
    assert logged[older.evaluation_id] == uri("acme", "2025-01")
    # a workspace without manifests gets the embedded default, also through <ws>/latest
    for manifest_uri in ("", uri("newcomer", "latest")):
        assert evaluate(sc, "newcomer", manifest_uri).manifest_uri == EMBEDDED


@pytest.mark.parametrize(
    "manifest_uri", [uri("other", "2025-01"), uri("other", "latest"), uri("default", "latest"), uri("default", "2025-01")]
)
def test_a_manifest_of_another_workspace_is_invalid_argument_naming_manifest_uri(
    sc: RunningSidecar, manifest_uri: str
) -> None:
    err = rpc_error(lambda: evaluate(sc, "acme", manifest_uri))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    violations = field_violations(err)
    assert list(violations) == ["manifest_uri"]
    assert "acme" in violations["manifest_uri"]


@pytest.mark.parametrize("manifest_uri", [uri("acme", "2024-12"), uri("newcomer", "2025-01")])
def test_an_unknown_manifest_is_not_found(sc: RunningSidecar, manifest_uri: str) -> None:
    err = rpc_error(lambda: evaluate(sc, manifest_uri.split("/")[3], manifest_uri))
    assert err.code() == grpc.StatusCode.NOT_FOUND
    assert manifest_uri in err.details()


def test_a_new_or_edited_manifest_changes_the_verdict_without_restart(sc: RunningSidecar) -> None:
    mdir = sc.cfg.manifests.manifest_dir
    before = evaluate(sc, "hot")
    assert before.manifest_uri == EMBEDDED and before.blocked is False  # embedded default: shadow
    # a new workspace manifest: enforce -> the same answer is blocked
    write_manifest(mdir, "hot", "2025-05", default_mode="enforce", thresholds=STRICT)
    blocked = eventually(lambda: (r := evaluate(sc, "hot")).manifest_uri == uri("hot", "2025-05") and r, "the new manifest")
    assert blocked.blocked is True and blocked.outcome == pb.OUTCOME_FAIL
    assert list(blocked.block_reasons) == ["metric:answer_relevancy:below_min_score", "metric:faithfulness:below_min_score"]
    # the same file edited: thresholds nothing fails -> passes, not blocked
    write_manifest(mdir, "hot", "2025-05", default_mode="enforce", thresholds=LENIENT, min_overall_score=None)
    passed = eventually(lambda: (r := evaluate(sc, "hot")).outcome == pb.OUTCOME_PASS and r, "the edited manifest")
    assert passed.manifest_uri == uri("hot", "2025-05") and passed.blocked is False
    assert [(m.name, m.threshold) for m in passed.metrics if m.HasField("threshold")] == [("faithfulness", 0.0)]
    # a newer version takes over `latest`; the older one stays addressable
    write_manifest(mdir, "hot", "2025-06", default_mode="shadow", thresholds=STRICT)
    newest = eventually(lambda: (r := evaluate(sc, "hot")).manifest_uri == uri("hot", "2025-06") and r, "the newer version")
    assert newest.mode == pb.EVALUATION_MODE_SHADOW and newest.outcome == pb.OUTCOME_FAIL and newest.blocked is False
    assert evaluate(sc, "hot", uri("hot", "2025-05")).outcome == pb.OUTCOME_PASS
    # removing it falls back to the previous version
    (mdir / "hot" / "2025-06.json").unlink()
    eventually(lambda: evaluate(sc, "hot").manifest_uri == uri("hot", "2025-05"), "the removal")


def test_a_broken_edit_keeps_the_last_good_version_and_shows_in_get_info(sc: RunningSidecar) -> None:
    mdir = sc.cfg.manifests.manifest_dir
    path = write_manifest(mdir, "fragile", "2025-02", default_mode="enforce", thresholds=STRICT)
    eventually(lambda: evaluate(sc, "fragile").manifest_uri == uri("fragile", "2025-02"), "the manifest")
    # an invalid value: the error names the file and the field
    write_manifest(mdir, "fragile", "2025-02", default_mode="shadow", thresholds=STRICT, timeout_ms=5)
    errors = eventually(lambda: manifest_errors(sc).get("fragile/2025-02.json"), "the error in GetInfo")
    assert errors.startswith("fragile/2025-02.json: timeout_ms:"), errors
    kept = evaluate(sc, "fragile")
    assert kept.manifest_uri == uri("fragile", "2025-02")
    assert kept.mode == pb.EVALUATION_MODE_ENFORCE and kept.blocked is True  # the last good version
    # not even JSON
    put_atomic(path, b'{"manifest_id": "manifest_fragile_2025_02", ')
    eventually(lambda: "invalid JSON" in manifest_errors(sc).get("fragile/2025-02.json", ""), "the syntax error")
    assert evaluate(sc, "fragile").blocked is True
    # a broken NEW version never becomes latest
    put_atomic(mdir / "fragile" / "2025-09.json", b"not json at all")
    eventually(lambda: "fragile/2025-09.json" in manifest_errors(sc), "the broken new file")
    assert evaluate(sc, "fragile").manifest_uri == uri("fragile", "2025-02")
    assert rpc_error(lambda: evaluate(sc, "fragile", uri("fragile", "2025-09"))).code() == grpc.StatusCode.NOT_FOUND
    # still serving
    health = health_pb2_grpc.HealthStub(sc.channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    # fixed: the error goes away and the fixed content applies
    (mdir / "fragile" / "2025-09.json").unlink()
    write_manifest(mdir, "fragile", "2025-02", default_mode="shadow", thresholds=STRICT)
    eventually(lambda: not any(k.startswith("fragile/") for k in manifest_errors(sc)), "the errors to clear")
    fixed = evaluate(sc, "fragile")
    assert fixed.mode == pb.EVALUATION_MODE_SHADOW and fixed.blocked is False


# -- trusted manifest keys -------------------------------------------------------------------------


def test_with_trusted_keys_only_manifests_signed_by_them_are_used(tmp_path: Path, encoder: Any) -> None:
    keys = tmp_path / "keys"
    for name in ("trusted", "stranger"):
        done = cli("manifest", "keygen", keys / f"{name}.key")
        assert done.returncode == 0, done.stderr
    staging = tmp_path / "staging"  # where manifests are written and signed before deployment
    cfg = make_config(tmp_path, manifests={"trusted_keys": (keys / "trusted.key.pub",)})
    mdir = cfg.manifests.manifest_dir
    # deployed before start: one unsigned, one signed by a key the sidecar does not trust
    write_manifest(mdir, "plain", "2025-02", default_mode="enforce", thresholds=STRICT)
    src = write_manifest(staging, "stranger", "2025-02", default_mode="enforce", thresholds=STRICT)
    (mdir / "stranger").mkdir(parents=True)
    done = cli("manifest", "sign", src, "--key", keys / "stranger.key", "--out", mdir / "stranger" / "2025-02.json.dsse")
    assert done.returncode == 0, done.stderr

    sc = start_sidecar(cfg, encoder=encoder)
    try:
        errors = manifest_errors(sc)
        assert "unsigned manifest refused" in errors["plain/2025-02.json"]
        assert errors["stranger/2025-02.json.dsse"].startswith("stranger/2025-02.json.dsse: envelope.signatures:")
        for ws in ("plain", "stranger"):
            assert evaluate(sc, ws).manifest_uri == EMBEDDED  # refused: the default applies
            assert rpc_error(lambda: evaluate(sc, ws, uri(ws, "2025-02"))).code() == grpc.StatusCode.NOT_FOUND

        # signed with the trusted key and deployed while running: used
        src = write_manifest(staging, "signed", "2025-02", default_mode="enforce", thresholds=STRICT)
        done = cli("manifest", "sign", src, "--key", keys / "trusted.key")
        assert done.returncode == 0, done.stderr
        envelope = src.parent / "2025-02.json.dsse"
        assert cli("manifest", "verify", envelope, "--key", keys / "trusted.key.pub").returncode == 0
        put_atomic(mdir / "signed" / "2025-02.json.dsse", envelope.read_bytes())
        resp = eventually(lambda: (r := evaluate(sc, "signed")).manifest_uri == uri("signed", "2025-02") and r, "the signed manifest")
        assert resp.mode == pb.EVALUATION_MODE_ENFORCE and resp.blocked is True
        assert "signed/2025-02.json.dsse" not in manifest_errors(sc)

        # a tampered envelope (payload edited, signature kept) is refused; the last good one stays
        env = json.loads(envelope.read_bytes())
        payload = base64.b64decode(env["payload"])
        assert payload.count(b'"enforce"') == 1
        env["payload"] = base64.b64encode(payload.replace(b'"enforce"', b'"shadow"')).decode()
        put_atomic(mdir / "signed" / "2025-02.json.dsse", json.dumps(env).encode())
        refused = eventually(lambda: manifest_errors(sc).get("signed/2025-02.json.dsse"), "the tampered envelope to be refused")
        assert refused.startswith("signed/2025-02.json.dsse: envelope.signatures:"), refused
        kept = evaluate(sc, "signed")
        assert kept.manifest_uri == uri("signed", "2025-02") and kept.blocked is True
    finally:
        sc.stop()
