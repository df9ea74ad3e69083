"""ROC / AUC / thresholds against hand-computed values and a brute-force reference."""

from __future__ import annotations

import math

import numpy as np
import pytest

from certus.sidecar.toolkit import roc


def mann_whitney(scores: np.ndarray, labels: np.ndarray) -> float:
    pos, neg = scores[labels == 1], scores[labels == 0]
    wins = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg)
    return float(wins / (pos.size * neg.size))


def test_curve_and_auc_of_a_known_example() -> None:
    curve = roc.roc_curve([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1])
    assert curve.fpr.tolist() == [0.0, 0.0, 0.5, 0.5, 1.0]
    assert curve.tpr.tolist() == [0.0, 0.5, 0.5, 1.0, 1.0]
    assert curve.thresholds.tolist() == [math.inf, 0.8, 0.4, 0.35, 0.1]
    assert roc.auc(curve) == 0.75


def test_perfect_reversed_and_tied() -> None:
    assert roc.roc_auc([0.9, 0.8, 0.2, 0.1], [1, 1, 0, 0]) == 1.0
    assert roc.roc_auc([0.9, 0.8, 0.2, 0.1], [0, 0, 1, 1]) == 0.0
    assert roc.roc_auc([0.5, 0.5, 0.5, 0.5], [1, 0, 1, 0]) == 0.5
    # one tie between a positive and a negative counts one half
    assert roc.roc_auc([0.7, 0.5, 0.5], [1, 1, 0]) == 0.75


def test_auc_equals_mann_whitney_on_seeded_data_with_ties() -> None:
    rng = np.random.default_rng(3)
    for _ in range(20):
        n = int(rng.integers(4, 60))
        labels = rng.integers(0, 2, n)
        labels[0], labels[1] = 0, 1
        scores = np.round(rng.random(n), 1)  # many ties
        assert roc.roc_auc(scores, labels) == pytest.approx(mann_whitney(scores, labels), abs=1e-12)


def test_bad_input_is_named() -> None:
    with pytest.raises(ValueError, match="both classes"):
        roc.roc_curve([0.1, 0.2], [1, 1])
    with pytest.raises(ValueError, match="differ in length"):
        roc.roc_curve([0.1, 0.2], [1])
    with pytest.raises(ValueError, match="labels must be 0 or 1"):
        roc.roc_curve([0.1, 0.2], [1, 2])
    with pytest.raises(ValueError, match="finite"):
        roc.roc_curve([0.1, float("nan")], [1, 0])
    with pytest.raises(ValueError, match="objective"):
        roc.best_threshold([0.1, 0.2], [0, 1], "auc")


def test_confusion_counts_and_rates() -> None:
    c = roc.confusion([0.9, 0.6, 0.4, 0.3, 0.2], [1, 0, 1, 0, 0], 0.5)
    assert (c.tp, c.fp, c.tn, c.fn) == (1, 1, 2, 1)
    assert c.accuracy == 0.6
    assert c.precision == 0.5
    assert c.recall == 0.5
    assert c.specificity == pytest.approx(2 / 3)
    assert c.f1 == 0.5
    assert c.youden == pytest.approx(0.5 + 2 / 3 - 1)
    # score == threshold passes (the sidecar's rule)
    assert roc.confusion([0.5], [1], 0.5).tp == 1


def test_best_threshold_per_objective() -> None:
    scores = [0.1, 0.2, 0.3, 0.4, 0.6, 0.7, 0.8, 0.9]
    labels = [0, 0, 0, 1, 0, 1, 1, 1]
    # accuracy: cut between 0.3 and 0.4 -> 7/8 correct; midpoint threshold
    best = roc.best_threshold(scores, labels, "accuracy")
    assert best.threshold == pytest.approx(0.35)
    assert best.accuracy == 7 / 8
    # youden: same cut (recall 1, specificity 3/4)
    assert roc.best_threshold(scores, labels, "youden").threshold == pytest.approx(0.35)
    # precision: only positives above 0.65 -> precision 1, ties broken by accuracy (0.65 keeps 3 TP)
    p = roc.best_threshold(scores, labels, "precision")
    assert p.precision == 1.0 and p.threshold == pytest.approx(0.65)
    # recall: everything passes at the lowest score; ties broken by accuracy -> 0.35 (recall 1, acc 7/8)
    r = roc.best_threshold(scores, labels, "recall")
    assert r.recall == 1.0 and r.threshold == pytest.approx(0.35)
    f = roc.best_threshold(scores, labels, "f1")
    assert f.f1 == pytest.approx(8 / 9) and f.threshold == pytest.approx(0.35)


def test_threshold_passing_everything_is_the_lowest_score() -> None:
    # reversed scores: best accuracy is 50% by passing everything (never a negative threshold)
    best = roc.best_threshold([0.0, 0.2, 0.8, 1.0], [1, 1, 0, 0], "accuracy")
    assert best.threshold >= 0.0
    assert best.accuracy == 0.5


def test_cohens_d() -> None:
    assert roc.cohens_d([1.0, 2.0, 3.0], [0.0, 1.0, 2.0]) == pytest.approx(1.0)
    assert math.isnan(roc.cohens_d([1.0], [0.0, 1.0]))
    assert roc.cohens_d([1.0, 1.0], [1.0, 1.0]) == 0.0


def test_split_mask_is_stable_and_about_half() -> None:
    keys = [f"q{i}" for i in range(1000)]
    m1 = roc.split_mask(keys)
    assert m1.tolist() == roc.split_mask(list(keys)).tolist()
    assert roc.split_mask(keys[500:]).tolist() == m1[500:].tolist()  # membership does not depend on others
    assert 430 < int(m1.sum()) < 570


def test_stratified_split_keeps_both_classes_on_both_sides() -> None:
    labels = np.array([1] * 10 + [0] * 4)
    m = roc.stratified_split(labels, seed=7, holdout_share=0.3)
    assert m.tolist() == roc.stratified_split(labels, seed=7, holdout_share=0.3).tolist()
    assert labels[~m].tolist().count(1) == 3 and labels[~m].tolist().count(0) == 1
    assert labels[m].tolist().count(1) == 7 and labels[m].tolist().count(0) == 3


def test_bootstrap_interval_contains_the_auc() -> None:
    rng = np.random.default_rng(0)
    labels = np.array([1] * 40 + [0] * 40)
    scores = np.concatenate([rng.normal(0.7, 0.1, 40), rng.normal(0.5, 0.1, 40)])
    lo, hi = roc.bootstrap_auc_interval(scores, labels, n_boot=100, seed=1)
    assert lo <= roc.roc_auc(scores, labels) <= hi
    assert (lo, hi) == roc.bootstrap_auc_interval(scores, labels, n_boot=100, seed=1)
