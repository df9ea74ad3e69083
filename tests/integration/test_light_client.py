"""certus-client, installed alone into a clean venv, talks to a real sidecar and verifies evidence.

The wheel is built from ``clients/python`` and installed with its pinned dependencies (grpcio,
protobuf, and PyNaCl for the ``[verify]`` extra) into a fresh venv with no access to the project's
environment; a script run there, from a directory outside the checkout:

- calls Evaluate with the sync and the asyncio client, ``measure()`` (the ``Measure`` RPC) and a
  ``@trace(forward=...)`` function against the running sidecar;
- checks one of those decisions' inclusion proof with ``certus.client.transparency``;
- reports which heavy modules got imported (none of numpy, onnxruntime, spaCy, torch, structlog may).

The venv's packages are exactly certus-client and its dependencies; the installed size of
certus-client itself is measured from its RECORD.
"""

from __future__ import annotations

import importlib.metadata
import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from certus.sidecar.evidence.prove import inclusion_bundle
from certus.sidecar.protos import pb
from tests.conftest import OUTSIDE

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
HEAVY = ["numpy", "onnxruntime", "spacy", "torch", "structlog", "presidio_analyzer", "numba", "certus.sidecar"]

SCRIPT = textwrap.dedent(
    """
    import asyncio, json, sys
    import certus.client
    assert "grpc" not in sys.modules  # the package itself is lazy
    from certus.client import AsyncSidecarClient, SidecarClient, measure, trace
    from certus.client import transparency

    target, trace_file, bundle_file, key_file = sys.argv[1:5]
    q = "Who gave their name to Normandy?"
    a = "The Normans gave their name to Normandy, a region in France."
    ctx = ["The Normans were the people who in the 10th and 11th centuries gave their name to Normandy, a region in France."]
    with SidecarClient(target, workspace_id="light", timeout_ms=20000) as c:
        ev = c.evaluate(q, a, ctx)
    async def run():
        async with AsyncSidecarClient(target, workspace_id="light", timeout_ms=20000) as c:
            return await c.evaluate(q, a, ctx)
    aev = asyncio.run(run())
    m = measure("The Normans gave their name to Normandy.", "Normandy is named after the Normans.", target=target, timeout_ms=20000)
    seen = []

    @trace(log_path=trace_file, forward={"target": target, "workspace_id": "light", "timeout_ms": 20000},
           on_evaluation=lambda tid, e: seen.append(e))
    def rag(query):
        return {"query": query, "context": ctx, "answer": a}

    rag(q)
    from certus.client import tracing
    tracing.flush()
    import time
    deadline = time.time() + 60
    while not seen and time.time() < deadline:
        time.sleep(0.05)
    report = transparency.verify_inclusion_bundle(json.load(open(bundle_file)), [transparency.read_public_key(key_file)])
    heavy = sorted(m for m in sys.modules if m.split(".")[0] in HEAVY or m.startswith("certus.sidecar"))
    print(json.dumps({
        "evaluate": [ev.skipped, ev.evidence_id, ev.skip_reason],
        "async": [aev.skipped, aev.evidence_id],
        "measure": [m.skipped, m.confidence],
        "traced": [e.skipped for e in seen],
        "proof": report,
        "heavy": heavy,
    }))
    """
).replace("HEAVY", repr(HEAVY))


def _pip(venv: Path, *args: str) -> None:
    r = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", *args], capture_output=True, text=True, timeout=600, check=False)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]


def test_certus_client_alone_in_a_clean_venv(tmp_path: Path, sidecar: Any) -> None:
    wheels = tmp_path / "wheels"
    r = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(wheels), str(ROOT / "clients" / "python")],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    (wheel,) = wheels.glob("certus_client-*.whl")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    pins = [f"{name}=={importlib.metadata.version(name)}" for name in ("grpcio", "protobuf", "pynacl")]
    _pip(venv, "install", "-q", "--only-binary", ":all:", f"{wheel}[verify]", *pins)

    # one decision of the running sidecar, anchored in a checkpoint, as an auditor would get it
    request = pb.EvaluateRequest(workspace_id="light", query="What grew?", response="Revenue grew.", context=["Revenue grew 8%."])
    first = sidecar.stub.Evaluate(request, timeout=60)
    sidecar.app.evidence.request_checkpoint().result(30)
    bundle = tmp_path / "proof.json"
    bundle.write_text(json.dumps(inclusion_bundle(sidecar.cfg.evidence.log_dir, evidence_id=first.evidence_id)))
    key_file = tmp_path / "signing.pub"
    key_file.write_text(sidecar.app.evidence.public_key.to_base64() + "\n")

    script = tmp_path / "use_client.py"
    script.write_text(SCRIPT)
    r = subprocess.run(
        [str(venv / "bin" / "python"), str(script), sidecar.target, str(tmp_path / "traces.jsonl"), str(bundle), str(key_file)],
        cwd=OUTSIDE,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["heavy"] == [], out["heavy"]
    assert out["evaluate"][0] is False and out["evaluate"][1].startswith("sha256:")
    assert out["async"][0] is False and out["measure"][0] is False and 0.0 < out["measure"][1] <= 1.0
    assert out["traced"] == [False]
    assert out["proof"]["verified"] is True and out["proof"]["evidence_id"] == first.evidence_id

    # the venv holds certus-client and its dependencies, nothing else
    listed = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "list", "--format", "json"], capture_output=True, text=True, check=True)
    names = {p["name"].lower() for p in json.loads(listed.stdout)} - {"pip", "setuptools", "wheel"}
    # grpcio needs typing-extensions; PyNaCl (the [verify] extra) needs cffi and pycparser
    assert names == {"certus-client", "grpcio", "typing_extensions", "protobuf", "pynacl", "cffi", "pycparser"}, names
    record = next((venv / "lib").glob("python3*/site-packages/certus_client-*.dist-info/RECORD"))
    size = sum(int(row.split(",")[2]) for row in record.read_text().splitlines() if row.split(",")[2:] and row.split(",")[2])
    print(f"certus-client installed size: {size / 1024:.0f} KiB")
    assert size < 2 * 1024 * 1024  # the stubs and the client: well under CERT's "about 5 MB" core
