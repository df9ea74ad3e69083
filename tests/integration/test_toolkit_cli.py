"""The toolkit commands as a user runs them: @trace -> evaluate -> calibrate -> report, and validate."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from certus.client.sync import SidecarClient
from tests.conftest import make_config, run_cli, shared_data, start_sidecar


def cli(*args: str, env: dict[str, str] | None = None, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return run_cli(*args, env={"CERTUS_INTRA_OP_THREADS": "1", **(env or {})}, timeout=timeout)


def halueval(n: int) -> list[dict[str, Any]]:
    return [json.loads(x) for x in shared_data("halueval", "qa_dev.jsonl").read_text().splitlines()[:n]]


@pytest.fixture(scope="module")
def traced_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A trace file written by the real decorator."""
    from certus.client import tracing as td
    from certus.client.tracing import trace

    log = tmp_path_factory.mktemp("traces") / "production_traces.jsonl"
    rows = halueval(10)

    @trace(log_path=log)
    def rag_pipeline(query: str) -> dict[str, Any]:
        r = next(x for x in rows if x["question"] == query)
        i = rows.index(r)
        return {"query": query, "context": [r["knowledge"]], "answer": r["right_answer"] if i % 2 else r["hallucinated_answer"]}

    for r in rows:
        rag_pipeline(r["question"])
    assert td.flush(30)
    return log


def test_evaluate(traced_file: Path, tmp_path: Path, model_dir: Path) -> None:
    out = tmp_path / "results.json"
    p = cli("evaluate", str(traced_file), "--preset", "financial", "--output", str(out))
    assert p.returncode == 0, p.stderr
    assert "traces: 10 (scored 10)" in p.stdout
    assert "threshold: confidence >= 0.460 (preset:financial)" in p.stdout
    assert "accuracy (share passing):" in p.stdout and "mean confidence:" in p.stdout
    data = json.loads(out.read_text())
    assert data["format"] == "certus.evaluation-results/v1" and data["summary"]["scored"] == 10
    passed = sum(1 for r in data["results"] if r["passed"])
    assert f"passed: {passed}  failed: {10 - passed}" in p.stdout


def test_evaluate_bad_input_is_named(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"query": "q", "context": "c", "answer": "a"}\n{oops\n')
    p = cli("evaluate", str(bad))
    assert p.returncode == 2
    assert "bad.jsonl:2: not valid JSON" in p.stderr
    p = cli("evaluate", str(bad), "--threshold", "0.5", "--preset", "legal")
    assert p.returncode == 2 and "not allowed with argument" in p.stderr
    p = cli("evaluate", str(tmp_path / "missing.jsonl"))
    assert p.returncode == 2 and "no such file" in p.stderr


def test_calibrate_writes_roc_png_json_and_a_manifest(tmp_path: Path, model_dir: Path) -> None:
    from PIL import Image

    from certus.sidecar.manifests import load_file

    rows = []
    for r in halueval(16):
        rows.append({"query": r["question"], "context": r["knowledge"], "answer": r["right_answer"], "label": 1})
        rows.append({"query": r["question"], "context": r["knowledge"], "answer": r["hallucinated_answer"], "label": 0})
    labelled = tmp_path / "labelled.jsonl"
    labelled.write_text("".join(json.dumps(r) + "\n" for r in rows))
    png, out, man = tmp_path / "roc.png", tmp_path / "calibration.json", tmp_path / "m" / "acme" / "2025-03.json"
    p = cli(
        "calibrate", str(labelled), "--metric", "grounding", "--objective", "f1", "--roc-png", str(png), "--output", str(out),
        "--write-manifest", str(man), "--workspace", "acme", "--manifest-version", "2025-03",
    )
    assert p.returncode == 0, p.stderr
    assert "ROC AUC:" in p.stdout and "held-out check (seed 7" in p.stdout and "recommended threshold:" in p.stdout
    c = json.loads(out.read_text())
    assert c["format"] == "certus.calibration/v1" and c["positives"] == c["negatives"] == 16
    assert np.asarray(Image.open(png).convert("L")).std() > 10
    m = load_file(man, expected_location=("acme", "2025-03"))
    assert m.thresholds["grounding"].min_score == pytest.approx(c["recommended_threshold"], abs=1e-6)


def test_validate_small_subset(tmp_path: Path, model_dir: Path) -> None:
    shared_data("squad_v2", "dev_subset.json")
    out = tmp_path / "validation.json"
    p = cli("validate", "--limit", "12", "--output", str(out))
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith("squad_v2: 24 answers (12 correct, 12 incorrect")
    assert "halueval: 24 answers (12 correct, 12 incorrect: hallucinated=12)" in p.stdout
    assert "ROC AUC" in p.stdout and "CERT's claim (SQuAD v2, its own scorer): ROC AUC 0.961" in p.stdout
    v = json.loads(out.read_text())
    assert v["format"] == "certus.validation/v1"
    halu = next(d for d in v["datasets"] if d["name"] == "halueval")
    conf = next(m for m in halu["metrics"] if m["metric"] == "confidence")
    assert conf["auc"] > 0.5
    p = cli("validate", "--data-dir", str(tmp_path / "nowhere"), "--limit", "2")
    assert p.returncode == 2 and "validation data not found" in p.stderr


def test_report_from_a_real_sidecars_evidence(traced_file: Path, tmp_path: Path, encoder: Any) -> None:
    cfg = make_config(tmp_path / "sc")
    running = start_sidecar(cfg, encoder=encoder)
    try:
        with SidecarClient(running.target, timeout_ms=30_000, workspace_id="acme") as client:
            for r in halueval(6):
                ev = client.evaluate(r["question"], r["right_answer"], [r["knowledge"]])
                assert not ev.skipped
            ev = client.evaluate("Email me?", "Sure: write to john.doe@example.com now.", ["Contact details are private."])
            assert ev.guardrail_violations
    finally:
        running.stop()
    results = tmp_path / "results.json"
    assert cli("evaluate", str(traced_file), "-o", str(results)).returncode == 0
    meta = tmp_path / "system_metadata.json"
    p = cli("report", "--write-metadata-template", str(meta))
    assert p.returncode == 0 and json.loads(meta.read_text())["system"]["risk_classification"] == "HIGH-RISK"
    assert cli("report", "--write-metadata-template", str(meta)).returncode == 2  # never overwrites
    pub = Path(str(cfg.evidence.key_path) + ".pub")
    out = tmp_path / "out" / "compliance_report"
    p = cli(
        "report", "--evidence-dir", str(cfg.evidence.log_dir), "--key", str(pub), "--metadata", str(meta),
        "--results", str(results), "--output", str(out),
    )
    assert p.returncode == 0, p.stderr
    key_id = p.stdout.split("key id(s) ")[1].split()[0]
    assert p.stdout.startswith("evidence: VERIFIED, 7 records")
    for ext in ("md", "html", "pdf"):
        assert out.with_suffix(f".{ext}").is_file()
    md = out.with_suffix(".md").read_text()
    assert key_id in md and "Evidence log VERIFIED: 7 signed records" in md
    assert "john.doe@example.com" not in md and "pii" in md
    # tampering with one byte of the log is caught, and no report is written over it
    seg = sorted(cfg.evidence.log_dir.glob("segment-*.jsonl"))[0]
    raw = bytearray(seg.read_bytes())
    raw[raw.index(b'"signatures"') + 40] ^= 1
    seg.write_bytes(bytes(raw))
    p = cli("report", "--evidence-dir", str(cfg.evidence.log_dir), "--key", str(pub), "--output", str(tmp_path / "r2"), "--format", "md")
    assert p.returncode == 1
    assert "FIRST BAD RECORD" in p.stderr and "evidence log did not verify" in p.stderr
    assert not (tmp_path / "r2.md").exists()
