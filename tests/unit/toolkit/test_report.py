"""The Annex IV report: verified first, all sections, charts, three formats, a PDF that renders."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from certus.sidecar.signing import SigningKey
from certus.sidecar.toolkit.report import UnverifiedEvidence, generate_report
from certus.sidecar.toolkit.report.gather import load_metadata, metadata_template, summarize_evidence
from tests.unit.toolkit.conftest import SECRET_CONTEXT, SECRET_QUERY, SECRET_RESPONSE

ANNEX_IV = [
    "1. General description of the AI system",
    "2. Elements of the AI system and its development",
    "3. Monitoring, functioning and control",
    "4. Appropriateness of the performance metrics",
    "5. Risk management system (Article 9)",
    "6. Changes through the lifecycle",
    "7. Harmonised standards and other specifications applied",
    "8. EU declaration of conformity (Article 47, Annex V)",
    "9. Post-market monitoring (Article 72)",
]


def pdf_pages(path: Path) -> list[Any]:
    pdfium = pytest.importorskip("pypdfium2", reason="pypdfium2 renders the PDF (pip install pypdfium2)")
    doc = pdfium.PdfDocument(str(path))
    return [doc[i] for i in range(len(doc))]


def pdf_text(path: Path) -> str:
    return "\n".join(p.get_textpage().get_text_range() for p in pdf_pages(path))


@pytest.fixture(scope="module")
def filled_metadata(tmp_path_factory: pytest.TempPathFactory) -> Path:
    meta = metadata_template()
    meta["system"].update(name="Acme Support Assistant", version="v2.1.0", provider_name="Acme GmbH")
    meta["declaration_of_conformity"].update(signatory_name="Jane Roe", signatory_position="CTO")
    p = tmp_path_factory.mktemp("meta") / "system_metadata.json"
    p.write_text(json.dumps(meta))
    return p


@pytest.fixture(scope="module")
def report(signed_log: tuple[Path, SigningKey], filled_metadata: Path, tmp_path_factory: pytest.TempPathFactory) -> Any:
    log_dir, key = signed_log
    out = tmp_path_factory.mktemp("report") / "annex_iv"
    return generate_report(log_dir, out, keys=[key.verify_key], metadata=filled_metadata)


def test_summary_of_the_verified_log(signed_log: tuple[Path, SigningKey]) -> None:
    log_dir, key = signed_log
    s = summarize_evidence(log_dir, [key.verify_key])
    assert s.verify.ok and s.verify.key_source == "given" and s.decisions == 24
    assert s.outcomes == {"pass": 11, "fail": 12, "skipped": 1}
    assert s.skip_reasons == {"evaluator_timeout": 1}
    assert s.blocked == 1 and s.guardrail_types == {"pii": 4} and s.blocking_violations == 1
    assert s.bucket_unit == "day" and [b.label for b in s.buckets] == ["2025-03-01", "2025-03-02", "2025-03-03", "2025-03-04"]
    assert [b.decisions for b in s.buckets] == [6, 6, 6, 6]
    assert s.buckets[2].scored == 5
    assert s.pass_rate == pytest.approx(11 / 23)
    kinds = {e["example"] for e in s.examples}
    assert {"highest-scoring pass", "lowest-scoring fail", "blocked", "guardrail violation", "skipped"} <= kinds


def test_all_sections_in_every_format(report: Any, signed_log: tuple[Path, SigningKey]) -> None:
    _, key = signed_log
    assert report.verified and report.records == 24 and report.key_ids == (key.key_id,)
    md = report.files["md"].read_text()
    html = report.files["html"].read_text()
    pdf = pdf_text(report.files["pdf"])
    for heading in [*ANNEX_IV, "Article 15: accuracy, robustness and cybersecurity", "Article 19: automatically generated logs",
                    "Representative decisions (hashed)"]:
        assert heading in md, heading
        assert heading.replace("'", "&#x27;") in html, heading
        assert heading in pdf, heading
    for text in (md, html, pdf):
        assert "Evidence log VERIFIED: 24 signed records" in text
        assert key.key_id in text
        assert "Acme Support Assistant v2.1.0" in text
    assert "Jane Roe" in md and "Signature" in md


def test_no_content_only_hashes(report: Any, signed_log: tuple[Path, SigningKey]) -> None:
    log_dir, key = signed_log
    s = summarize_evidence(log_dir, [key.verify_key])
    md = report.files["md"].read_text()
    html = report.files["html"].read_text()
    pdf = pdf_text(report.files["pdf"])
    for secret in (SECRET_QUERY, SECRET_RESPONSE, SECRET_CONTEXT, "alice@example.com"):
        assert secret not in md and secret not in html and secret not in pdf
    example_hash = s.examples[0]["query_hash"]
    assert example_hash in md and example_hash in html


def test_charts_and_a_self_contained_html(report: Any) -> None:
    names = sorted(p.name for p in report.assets.iterdir())
    assert names == ["accuracy_over_time.png", "evidence_scores.png", "guardrails.png"]
    html = report.files["html"].read_text()
    assert html.count("data:image/png;base64,") == 3
    md = report.files["md"].read_text()
    assert "](annex_iv_assets/accuracy_over_time.png)" in md


def test_the_pdf_renders_pages_that_are_not_blank(report: Any, tmp_path: Path) -> None:
    from PIL import Image

    pages = pdf_pages(report.files["pdf"])
    assert len(pages) >= 8
    for i in (0, len(pages) // 2):
        png = tmp_path / f"page{i}.png"
        pages[i].render(scale=1.0).to_pil().save(png)
        a = np.asarray(Image.open(png).convert("L"), dtype=np.float64)
        assert a.shape[0] > 800 and a.shape[1] > 500  # A4 at 72 dpi
        assert float(a.std()) > 10.0
        assert float((a < 200).mean()) > 0.01  # text and tables, not a white page


def test_a_tampered_log_is_refused_or_reported_as_failed(signed_log: tuple[Path, SigningKey], tmp_path: Path) -> None:
    log_dir, key = signed_log
    copy = tmp_path / "log"
    shutil.copytree(log_dir, copy)
    seg = sorted(copy.glob("segment-*.jsonl"))[0]
    lines = seg.read_bytes().splitlines(keepends=True)
    del lines[10]  # a deleted decision
    seg.write_bytes(b"".join(lines))
    with pytest.raises(UnverifiedEvidence, match="FIRST BAD RECORD"):
        generate_report(copy, tmp_path / "r", keys=[key.verify_key], formats=["md"])
    out = generate_report(copy, tmp_path / "r", keys=[key.verify_key], formats=["md"], allow_unverified=True)
    assert not out.verified and out.records == 10
    md = out.files["md"].read_text()
    assert "verification FAILED at segment-000001.jsonl line 11 (seq 11)" in md
    assert "covers only the 10 records before it" in md


def test_log_keys_only_prove_consistency(signed_log: tuple[Path, SigningKey], tmp_path: Path) -> None:
    log_dir, _ = signed_log
    out = generate_report(log_dir, tmp_path / "r", formats=["md"])
    md = out.files["md"].read_text()
    assert "internal consistency only" in md
    assert "> **WARNING:** System metadata incomplete" in md  # no metadata file: placeholders flagged


def test_results_and_calibration_are_included(signed_log: tuple[Path, SigningKey], tmp_path: Path) -> None:
    log_dir, key = signed_log
    results = {
        "format": "certus.evaluation-results/v1",
        "summary": {
            "source": "traces.jsonl", "source_sha256": "sha256:" + "ab" * 32, "metric": "confidence", "threshold": 0.46,
            "threshold_source": "preset:financial", "total_traces": 4, "scored": 4, "passed": 3, "failed": 1,
            "not_scored": {}, "accuracy": 0.75, "mean_confidence": 0.61, "mean_metrics": {}, "score_quantiles": {},
            "first_timestamp": None, "last_timestamp": None, "model": "all-MiniLM-L6-v2/fp32",
            "execution_provider": "CPUExecutionProvider", "elapsed_s": 1.0, "generated_at": "2025-03-05T00:00:00Z",
        },
        "results": [
            {"scored": True, "score": s, "passed": s >= 0.46, "timestamp": f"2025-03-0{i + 1}T10:00:00.000000Z"}
            for i, s in enumerate([0.3, 0.5, 0.7, 0.9])
        ],
    }
    rp = tmp_path / "results.json"
    rp.write_text(json.dumps(results))
    calib = {
        "format": "certus.calibration/v1", "source": "labelled.jsonl", "metric": "confidence", "objective": "youden",
        "scored": 40, "positives": 20, "negatives": 20, "auc": 0.81, "auc_ci95": [0.7, 0.9], "cohens_d": 1.2,
        "recommended_threshold": 0.52,
        "held_out": {"seed": 7, "calibration_rows": 28, "holdout_rows": 12, "holdout": {"accuracy": 0.75, "precision": 0.8, "recall": 0.7}},
    }
    cp = tmp_path / "calibration.json"
    cp.write_text(json.dumps(calib))
    out = generate_report(log_dir, tmp_path / "r", keys=[key.verify_key], results=[rp], calibration=cp, formats=["md", "pdf"])
    md = out.files["md"].read_text()
    assert "Offline evaluation 1: traces.jsonl" in md
    assert "accuracy 75.0% at confidence ≥ 0.46 (preset:financial)" in md
    assert "2.4 Threshold calibration" in md and "0.810 (0.700–0.900)" in md
    assert "reached accuracy 75.0% on 12 held-out rows" in md
    assert (out.assets / "results_0_scores.png").is_file() and (out.assets / "results_0_over_time.png").is_file()


def test_metadata_errors_and_placeholders(tmp_path: Path) -> None:
    meta, todo = load_metadata(None)
    assert "system.name" in todo and "declaration_of_conformity.notified_body" in todo
    p = tmp_path / "m.json"
    p.write_text(json.dumps({"sytem": {}}))
    with pytest.raises(ValueError, match="unknown section 'sytem'"):
        load_metadata(p)
    p.write_text("[1]")
    with pytest.raises(ValueError, match="must be a JSON object"):
        load_metadata(p)
    p.write_text(json.dumps({"system": {"name": "X"}}))
    meta, todo = load_metadata(p)
    assert meta["system"]["name"] == "X" and meta["system"]["risk_classification"] == "HIGH-RISK"
    assert "system.name" not in todo


def test_unknown_format_is_named(signed_log: tuple[Path, SigningKey], tmp_path: Path) -> None:
    log_dir, _ = signed_log
    with pytest.raises(ValueError, match="unknown format 'docx'"):
        generate_report(log_dir, tmp_path / "r", formats=["md", "docx"])


def test_a_period_summarises_only_its_days_and_still_verifies_the_whole_log(signed_log: tuple[Path, SigningKey], tmp_path: Path) -> None:
    from certus.sidecar.toolkit.report import parse_day

    log_dir, key = signed_log
    since, until = parse_day("2025-03-02", "since"), parse_day("2025-03-03", "until", end=True)
    s = summarize_evidence(log_dir, [key.verify_key], since=since, until=until)
    assert s.verify.ok and s.verify.records == 24 and s.decisions == 12  # two of the four days
    assert {b.label[:10] for b in s.buckets} == {"2025-03-02", "2025-03-03"} and sum(b.decisions for b in s.buckets) == 12
    out = generate_report(log_dir, tmp_path / "r", keys=[key.verify_key], formats=["md"], since=since, until=until)
    md = out.files["md"].read_text()
    assert "| Evidence period | 2025-03-02T00:00:00Z to 2025-03-04T00:00:00Z (end exclusive) |" in md
    assert "| Decisions recorded (verified) | 12 |" in md
    with pytest.raises(ValueError, match="since: expected a date like 2026-11-30, got '2025-3-2x'"):
        parse_day("2025-3-2x", "since")
