"""Calibration (ROC, threshold, held-out check, PNG) and the CERT validation on the shared data."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from certus.sidecar.config import Config
from certus.sidecar.toolkit import roc
from certus.sidecar.toolkit.calibrate import CALIBRATION_FORMAT, calibrate_file, calibrate_scores
from certus.sidecar.toolkit.validate import (
    BASELINES,
    REPORTED_METRICS,
    VALIDATION_FORMAT,
    _differs,
    halueval_examples,
    run_validation,
    squad_examples,
    squad_other_passage_examples,
)
from tests.unit.toolkit.conftest import SHARED_DATA, data_file, write_jsonl


def non_white_share(png: Path) -> float:
    a = np.asarray(Image.open(png).convert("L"), dtype=np.float64)
    return float((a < 245).mean())


def test_calibrate_scores_on_separable_data() -> None:
    rng = np.random.default_rng(5)
    labels = np.array([1] * 60 + [0] * 60)
    scores = np.concatenate([rng.uniform(0.55, 1.0, 60), rng.uniform(0.0, 0.45, 60)])
    auc, ci, best, held, curve = calibrate_scores(scores, labels, objective="accuracy", seed=3, holdout_share=0.25)
    assert auc == 1.0 and ci == (1.0, 1.0)
    assert 0.45 <= best.threshold <= 0.55 and best.accuracy == 1.0
    assert held.calibration_rows == 90 and held.holdout_rows == 30
    assert held.holdout["accuracy"] == 1.0 and held.holdout_auc == 1.0
    assert curve.fpr[0] == 0.0 and curve.tpr[-1] == 1.0


def test_calibrate_file_with_real_answers(cfg: Config, encoder: Any, tmp_path: Path) -> None:
    rows = []
    for line in data_file("halueval", "qa_dev.jsonl").read_text().splitlines()[:24]:
        r = json.loads(line)
        rows.append({"query": r["question"], "context": r["knowledge"], "answer": r["right_answer"], "label": 1})
        rows.append({"query": r["question"], "context": r["knowledge"], "answer": r["hallucinated_answer"], "label": 0})
    rows.append({"query": "q", "context": "c", "answer": None, "label": 1})
    path = write_jsonl(tmp_path / "labelled.jsonl", rows)
    png = tmp_path / "roc.png"
    c = calibrate_file(path, cfg=cfg, metric="grounding", objective="youden", roc_png=png, encoder=encoder)
    assert c.rows == 49 and c.scored == 48 and c.not_scored == {"no_answer": 1}
    assert (c.positives, c.negatives) == (24, 24)
    assert c.auc > 0.5  # hallucinated answers are less grounded in the knowledge than right ones
    assert c.auc_ci95[0] <= c.auc <= c.auc_ci95[1]
    assert c.held_out.calibration_rows + c.held_out.holdout_rows == 48
    assert c.recommended_threshold == c.held_out.threshold
    assert png.is_file() and non_white_share(png) > 0.02
    d = c.to_json()
    assert d["format"] == CALIBRATION_FORMAT and json.loads(json.dumps(d))["auc"] == c.auc
    assert any(line.startswith("ROC AUC:") for line in c.lines())


def test_calibrate_needs_both_classes(cfg: Config, encoder: Any, tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "l.jsonl", [{"query": "q", "context": "the sky is blue", "answer": "blue", "label": 1}] * 3)
    with pytest.raises(ValueError, match="at least 2 correct and 2 incorrect"):
        calibrate_file(path, cfg=cfg, encoder=encoder)


def test_squad_negatives_are_built_as_documented() -> None:
    src = data_file("squad_v2", "dev_subset.json")
    examples = squad_examples(src)
    data = json.loads(src.read_text())
    golds = {q["id"]: [a["text"] for a in q["answers"]] for a in data["data"] for p in a["paragraphs"] for q in p["qas"]}
    passages = {q["id"]: p["context"] for a in data["data"] for p in a["paragraphs"] for q in p["qas"]}
    assert len(examples) % 2 == 0
    for pos, neg in zip(examples[::2], examples[1::2]):
        assert pos.key == neg.key and pos.query == neg.query and pos.passage == neg.passage == passages[pos.key]
        assert (pos.label, neg.label) == (1, 0)
        assert pos.answer == golds[pos.key][0]
        assert neg.kind in ("other_question", "plausible")
        assert _differs(neg.answer, golds[pos.key])
        assert neg.answer in pos.passage  # a span of the same passage: wrong for this question, not off-topic
    assert len(squad_examples(src, limit=5)) == 10


def test_squad_contrast_set_negatives_are_not_in_the_passage() -> None:
    examples = squad_other_passage_examples(data_file("squad_v2", "dev_subset.json"), limit=40)
    assert len(examples) == 80
    for pos, neg in zip(examples[::2], examples[1::2]):
        assert pos.answer in pos.passage or pos.answer.lower() in pos.passage.lower()
        assert neg.kind == "other_passage" and neg.answer.lower() not in neg.passage.lower()


def test_halueval_pairs() -> None:
    ex = halueval_examples(data_file("halueval", "qa_dev.jsonl"), limit=3)
    assert [(e.key, e.label, e.kind) for e in ex] == [
        ("halueval:0", 1, "right"), ("halueval:0", 0, "hallucinated"),
        ("halueval:1", 1, "right"), ("halueval:1", 0, "hallucinated"),
        ("halueval:2", 1, "right"), ("halueval:2", 0, "hallucinated"),
    ]


def test_validate_on_a_small_subset(cfg: Config, encoder: Any) -> None:
    data_file("halueval", "qa_dev.jsonl")
    data_file("squad_v2", "dev_subset.json")
    v = run_validation(SHARED_DATA, cfg=cfg, datasets=("squad_v2", "halueval"), limit=30, encoder=encoder)
    squad, halu = v.datasets
    assert (squad.name, halu.name) == ("squad_v2", "halueval")
    assert squad.positives == squad.negatives == 30
    assert halu.positives == halu.negatives == 30
    assert halu.tune_examples + halu.test_examples == 60
    for ds in v.datasets:
        assert [m.metric for m in ds.metrics] == [*REPORTED_METRICS, *BASELINES]
        for m in ds.metrics:
            assert 0.0 <= m.auc <= 1.0 and 0.0 <= m.test_accuracy <= 1.0 and m.n == ds.examples
    # real data, real model: the hallucinated answers are told apart better than chance
    assert halu.metric("confidence").auc > 0.5
    assert halu.metric("faithfulness").auc > 0.5
    assert halu.metric("grounding").auc > 0.5
    text = "\n".join(v.lines())
    assert "ROC AUC" in text and "CERT's claim" in text and "0.961" in text
    d = v.to_json()
    assert d["format"] == VALIDATION_FORMAT
    assert json.loads(json.dumps(d))["datasets"][1]["metrics"][0]["metric"] == "confidence"
    # the figures are a pure function of the data and the split
    assert roc.split_mask(["halueval:0"]).tolist() == roc.split_mask(["halueval:0"]).tolist()
