"""The shipped head and its training: fixed split, held-out rows untouched, fitting maths."""

from __future__ import annotations

import json

import numpy as np

from certus.sidecar.guardrails.learned import DIM, AttackHead, segments
from certus.sidecar.guardrails.train_injection import (
    EXEMPLARS_FILE,
    HOLDOUT_FRACTION,
    SPLIT_FILE,
    SPLIT_SEED,
    fit_logreg,
    predict,
    sha256_file,
    stratified_split,
)

from .conftest import shared_data


def test_split_file_is_the_seeded_stratified_split() -> None:
    path = shared_data("prompt_injection", "deepset_train.jsonl")
    split = json.loads(SPLIT_FILE.read_text())
    assert split["sha256"] == sha256_file(path)
    labels = [json.loads(line)["label"] for line in path.read_text().splitlines() if line.strip()]
    train, held = stratified_split(labels, HOLDOUT_FRACTION, SPLIT_SEED)
    assert (split["train"], split["held_out"]) == (train, held)
    assert set(train).isdisjoint(held) and sorted(train + held) == list(range(len(labels)))
    assert (len(held), sum(labels[i] for i in held)) == (164, 61)


def test_stratified_split_is_deterministic_and_stratified() -> None:
    labels = [0] * 70 + [1] * 30
    a = stratified_split(labels, 0.3, 1)
    assert a == stratified_split(labels, 0.3, 1)
    assert a != stratified_split(labels, 0.3, 2)
    assert sum(labels[i] for i in a[1]) == 9 and len(a[1]) == 30


def test_held_out_rows_are_not_in_the_training_exemplars() -> None:
    path = shared_data("prompt_injection", "deepset_train.jsonl")
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    held = {rows[i]["text"].strip().lower() for i in json.loads(SPLIT_FILE.read_text())["held_out"]}
    exemplars = {json.loads(line)["text"].strip().lower() for line in EXEMPLARS_FILE.read_text().splitlines() if line.strip()}
    assert held.isdisjoint(exemplars)


def test_shipped_head_loads() -> None:
    head = AttackHead.load()
    assert head.w.shape == (DIM,) and np.isfinite(head.w).all()
    assert head.jailbreak_exemplars.shape[1] == DIM
    assert np.allclose(np.linalg.norm(head.jailbreak_exemplars, axis=1), 1.0, atol=1e-4)
    assert 0.0 < head.jailbreak_tau < 1.0
    assert head.meta["split_seed"] == SPLIT_SEED
    assert head.meta["pool"]["deepset_train"] == 382  # type: ignore[index]
    conf = head.jailbreak_confidence(np.array([0.0, head.jailbreak_tau, 1.0]))
    assert conf.tolist() == [0.0, 0.5, 1.0]


def test_fit_logreg_separates_and_matches_the_sign_of_a_planted_direction() -> None:
    rng = np.random.default_rng(0)
    direction = rng.normal(size=8)
    x = rng.normal(size=(400, 8))
    y = (x @ direction > 0).astype(np.float64)
    fit = fit_logreg(x, y, np.ones_like(y), lam=1e-3)
    acc = ((predict(fit, x) >= 0.5) == (y == 1)).mean()
    assert acc > 0.97
    cos = fit.w @ direction / (np.linalg.norm(fit.w) * np.linalg.norm(direction))
    assert cos > 0.95


def test_segments_cover_sentences_within_the_limit() -> None:
    text = "First sentence here. " * 30 + "x" * 700
    spans = segments(text, max_chars=100)
    assert all(0 < e - s <= 100 for s, e in spans)
    assert spans == sorted(spans) and spans[0][0] == 0 and spans[-1][1] == len(text)
    assert segments("short text", 100) == [(0, 10)]
    assert segments("   ", 100) == []
