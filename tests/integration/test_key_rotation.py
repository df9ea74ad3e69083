"""A key rotation under load on the installed sidecar, and an auditor checking single decisions.

The installed ``certus-sidecar serve`` (from a directory outside the checkout) signs checkpoints
every half second while four client threads call Evaluate without pause; the installed
``certus-sidecar keygen --rotate`` writes the next key; the running sidecar rotates to it (GetInfo
shows the new key id) without failing or delaying a call. After a SIGTERM:

- every acknowledged evidence id is in the log, signed by the old key before the rotation's seq
  and by the new key from it on;
- ``certus-sidecar verify --key <first public key>`` passes, lists the rotation and finds the
  shutdown checkpoint covering every record;
- ``certus-sidecar prove inclusion`` bundles for a decision before and one after the rotation
  verify with the first public key only, in Python (``python -m certus.client.transparency``) and
  in Node (``certus_client.js verify-proof``), and fail once a byte of the record changes;
- ``certus-sidecar prove consistency`` between the first and the last checkpoint verifies the same.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import threading
import uuid
from pathlib import Path
from typing import Any

import grpc
import pytest

from certus.sidecar.evidence.checkpoint import CheckpointStore
from certus.sidecar.evidence.records import iter_log
from certus.sidecar.loadgen import start_local_sidecar
from certus.sidecar.protos import pb, pb_grpc
from tests.conftest import OUTSIDE, cli_argv, cli_env, wait_until

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
NODE_CLIENT = ROOT / "clients" / "node" / "certus_client.js"


def _cli(*args: object, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cli_argv(*args), env=cli_env(env), cwd=OUTSIDE, capture_output=True, text=True, timeout=120, check=False)


def _python_verify(kind: str, bundle: Path, key: Path) -> tuple[int, dict[str, Any]]:
    r = subprocess.run(
        [sys.executable, "-m", "certus.client.transparency", kind, str(bundle), "--key", str(key)],
        cwd=OUTSIDE,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return r.returncode, json.loads(r.stdout)


def _node_verify(bundle: Path, key: Path) -> tuple[int, dict[str, Any]] | None:
    node = shutil.which("node")
    if node is None:
        return None
    r = subprocess.run([node, str(NODE_CLIENT), "verify-proof", "--bundle", str(bundle), "--key", str(key)], capture_output=True, text=True, timeout=60, check=False)
    return r.returncode, json.loads(r.stdout.strip().splitlines()[-1])


def test_rotation_under_load_and_single_decision_proofs(tmp_path: Path) -> None:
    proc, target, home = start_local_sidecar(
        {"CERTUS_CHECKPOINT_INTERVAL_S": "0.5", "CERTUS_INTRA_OP_THREADS": "1"}, drain_stdout=True, prefix="certus-rotation-"
    )
    key_path = home / "keys" / "signing.key"
    first_pub = tmp_path / "first.pub"
    shutil.copy(str(key_path) + ".pub", first_pub)
    channel = grpc.insecure_channel(target)
    stub = pb_grpc.EvaluatorStub(channel)
    first_id = stub.GetInfo(pb.GetInfoRequest(), timeout=30).key_id
    acked: list[str] = []
    errors: list[str] = []
    stop = threading.Event()

    def load() -> None:
        while not stop.is_set():
            req = pb.EvaluateRequest(
                workspace_id="acme",
                query=f"What did the report say? {uuid.uuid4().hex}",
                response="Revenue grew 8% to $89.5B in Q4.",
                context=["Apple reported Q4 revenue of $89.5B, up 8% year over year."],
            )
            try:
                acked.append(stub.Evaluate(req, timeout=30).evidence_id)
            except grpc.RpcError as exc:
                errors.append(f"{exc.code()}: {exc.details()}")

    threads = [threading.Thread(target=load, daemon=True) for _ in range(4)]
    try:
        for t in threads:
            t.start()
        wait_until(lambda: len(acked) >= 40, "40 decisions before the rotation", timeout_s=120)
        out = _cli("keygen", "--rotate", env={"CERTUS_SIGNING_KEY": str(key_path)})
        assert out.returncode == 0, out.stdout + out.stderr
        wait_until(lambda: stub.GetInfo(pb.GetInfoRequest(), timeout=30).key_id != first_id, "the rotation", timeout_s=20)
        at_rotation = len(acked)
        wait_until(lambda: len(acked) >= at_rotation + 40, "40 decisions after the rotation", timeout_s=120)
        info = stub.GetInfo(pb.GetInfoRequest(), timeout=30)
        assert info.details["evidence.key_rotations"] == "1" and info.details["evidence.key_id"] == info.key_id
    finally:
        stop.set()
        for t in threads:
            t.join(60)
        channel.close()
        proc.send_signal(signal.SIGTERM)
        proc.wait(120)
    assert proc.returncode == 0 and not errors, errors[:5]
    new_id = info.key_id
    assert not (home / "keys" / "signing.key.next").exists()

    log_dir = home / "evidence"
    records = list(iter_log(log_dir))
    ids = [r.evidence_id for r in records]
    assert set(acked) <= set(ids) and len(ids) == len(set(ids))
    signers = [r.envelope.signatures[0][0] for r in records]
    boundary = signers.index(new_id)
    assert boundary > 0 and signers == [first_id] * boundary + [new_id] * (len(signers) - boundary)

    out = _cli("verify", log_dir, "--key", first_pub)
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"key rotation: {first_id} -> {new_id} at seq {boundary}" in out.stdout
    assert "records after the newest checkpoint: 0" in out.stdout
    sizes = [d["size"] for d, _ in CheckpointStore(log_dir)]
    assert boundary in sizes and sizes[-1] == len(records) and len(sizes) >= 3

    for seq in (boundary - 1, len(records) - 1):
        bundle = tmp_path / f"inclusion-{seq}.json"
        out = _cli("prove", "inclusion", "--evidence-id", ids[seq], "--log-dir", log_dir, "--out", bundle)
        assert out.returncode == 0, out.stderr
        rc, report = _python_verify("inclusion", bundle, first_pub)
        assert rc == 0 and report["seq"] == seq and report["signed_by"] == (first_id if seq < boundary else new_id), report
        node = _node_verify(bundle, first_pub)
        if node is not None:
            assert node[0] == 0 and node[1]["evidence_id"] == ids[seq], node
        b = json.loads(bundle.read_text())
        b["record"] = b["record"].replace('"payload":"ey', '"payload":"fy', 1)
        bundle.write_text(json.dumps(b))
        assert _python_verify("inclusion", bundle, first_pub)[0] == 1
        if node is not None:
            assert _node_verify(bundle, first_pub)[0] == 1  # type: ignore[index]

    cons = tmp_path / "consistency.json"
    out = _cli("prove", "consistency", sizes[0], sizes[-1], "--log-dir", log_dir, "--out", cons)
    assert out.returncode == 0, out.stderr
    rc, report = _python_verify("consistency", cons, first_pub)
    assert rc == 0 and report["new"]["size"] == len(records), report
    node = _node_verify(cons, first_pub)
    if node is not None:
        assert node[0] == 0 and node[1]["old"]["size"] == sizes[0], node
    # the integrity file sink archived the checkpoints next to the decisions
    archived = (home / "integrity" / "decisions.checkpoints.jsonl").read_text().splitlines()
    assert archived and json.loads(archived[-1])["checkpoint"].split("\n")[1] == str(len(records))
    shutil.rmtree(home, ignore_errors=True)
