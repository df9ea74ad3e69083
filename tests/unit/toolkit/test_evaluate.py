"""Offline batch evaluation: the pipeline's scoring, CERT's summary, a results file without text."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from certus.sidecar.config import Config
from certus.sidecar.domain import EvaluateInput, content_hash
from certus.sidecar.scoring import Scorer
from certus.sidecar.toolkit.evaluate import RESULTS_FORMAT, evaluate_traces, load_results
from tests.unit.toolkit.conftest import data_file, write_jsonl


def halueval_rows(n: int) -> list[dict[str, Any]]:
    lines = data_file("halueval", "qa_dev.jsonl").read_text().splitlines()[:n]
    return [json.loads(x) for x in lines]


@pytest.fixture
def trace_file(tmp_path: Path) -> tuple[Path, list[dict[str, Any]]]:
    traces = []
    for i, r in enumerate(halueval_rows(6)):
        traces.append(
            {
                "timestamp": f"2025-03-0{1 + i % 3}T10:00:00Z",
                "query": r["question"],
                "context": [r["knowledge"]],
                "answer": r["right_answer"] if i % 2 == 0 else r["hallucinated_answer"],
            }
        )
    rows = traces + [
        {"query": "q", "context": ["c"], "answer": None, "error": "TimeoutError: llm"},
        {"query": "q", "answer": "no context"},
    ]
    return write_jsonl(tmp_path / "traces.jsonl", rows), traces


def test_scores_are_the_pipelines(trace_file: tuple[Path, list[dict[str, Any]]], cfg: Config, encoder: Any, tmp_path: Path) -> None:
    path, traces = trace_file
    run = evaluate_traces(path, 0.5, tmp_path / "results.json", cfg=cfg, encoder=encoder)
    scorer = Scorer(cfg.scoring)
    scored = [r for r in run.results if r.scored]
    assert len(scored) == 6
    for res, t in zip(scored, traces):
        inp = EvaluateInput("offline", t["query"], t["answer"], tuple(t["context"]))
        layout = scorer.layout(inp)
        ref = scorer.score(inp, layout, *encoder.encode_tokens(layout.texts)).values
        assert set(res.metrics) == set(ref)
        for name, value in ref.items():
            assert res.metrics[name] == pytest.approx(value, abs=1e-5), name
        assert res.score == pytest.approx(ref["confidence"], abs=1e-5)
        assert res.passed == (res.score >= 0.5)
        assert res.response_hash == content_hash(t["answer"])
        assert res.query_hash == content_hash(t["query"])


def test_summary_counts_accuracy_and_mean(trace_file: tuple[Path, list[dict[str, Any]]], cfg: Config, encoder: Any) -> None:
    path, _ = trace_file
    run = evaluate_traces(path, preset="financial", cfg=cfg, encoder=encoder)
    s = run.summary
    scored = [r for r in run.results if r.scored]
    assert s.total_traces == 8 and run.total_traces == 8
    assert s.scored == 6
    assert s.not_scored == {"error": 1, "no_context": 1}
    assert s.threshold == 0.46 and s.threshold_source == "preset:financial"
    assert s.passed == sum(1 for r in scored if r.score >= 0.46)
    assert s.failed == 6 - s.passed
    assert s.accuracy == pytest.approx(s.passed / 6, abs=1e-6) and run.accuracy == s.accuracy
    assert s.mean_confidence == pytest.approx(sum(r.score for r in scored) / 6, abs=1e-6)
    assert s.first_timestamp == "2025-03-01T10:00:00.000000Z" and s.last_timestamp == "2025-03-03T10:00:00.000000Z"
    assert "accuracy (share passing)" in "\n".join(s.lines())


def test_results_file_holds_hashes_and_scores_not_text(trace_file: tuple[Path, list[dict[str, Any]]], cfg: Config, encoder: Any, tmp_path: Path) -> None:
    path, traces = trace_file
    out = tmp_path / "results.json"
    evaluate_traces(path, 0.5, out, cfg=cfg, encoder=encoder)
    raw = out.read_text()
    for t in traces:
        for text in (t["query"], t["answer"], *t["context"]):
            assert text not in raw
    data = load_results(out)
    assert data["format"] == RESULTS_FORMAT
    assert data["summary"]["scored"] == 6 and len(data["results"]) == 8
    assert data["results"][6] == {**data["results"][6], "scored": False, "skip_reason": "error"}


def test_bad_arguments(trace_file: tuple[Path, list[dict[str, Any]]], cfg: Config, encoder: Any, tmp_path: Path) -> None:
    path, _ = trace_file
    with pytest.raises(ValueError, match="not both"):
        evaluate_traces(path, 0.5, preset="legal", cfg=cfg, encoder=encoder)
    with pytest.raises(ValueError, match="metric must be one of"):
        evaluate_traces(path, 0.5, metric="bleu", cfg=cfg, encoder=encoder)
    (tmp_path / "x.json").write_text("{}")
    with pytest.raises(ValueError, match="not an evaluation results file"):
        load_results(tmp_path / "x.json")
