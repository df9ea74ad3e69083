"""ROC analysis in NumPy: curve, AUC, threshold choice, confusion counts, effect size, split.

Conventions: ``labels`` are 1 (correct / positive) and 0 (incorrect / negative); a sample is
predicted positive when ``score >= threshold`` (the sidecar's pass rule). Ties are handled exactly:
the curve has one point per distinct score, and AUC equals the Mann-Whitney probability that a
random positive outscores a random negative, counting ties as one half.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np
import numpy.typing as npt

OBJECTIVES = ("youden", "accuracy", "precision", "recall", "f1")


@dataclass(frozen=True)
class RocCurve:
    """Points of the ROC curve, from (0, 0) (threshold above every score) to (1, 1)."""

    fpr: npt.NDArray[np.float64]
    tpr: npt.NDArray[np.float64]
    thresholds: npt.NDArray[np.float64]  # thresholds[i] gives the point (fpr[i], tpr[i]); [0] is +inf
    tp_counts: npt.NDArray[np.int64] | None = None  # integer counts behind tpr / fpr (exact AUC)
    fp_counts: npt.NDArray[np.int64] | None = None


@dataclass(frozen=True)
class Confusion:
    threshold: float
    tp: int
    fp: int
    tn: int
    fn: int

    @property
    def n(self) -> int:
        return self.tp + self.fp + self.tn + self.fn

    @property
    def accuracy(self) -> float:
        return (self.tp + self.tn) / self.n if self.n else 0.0

    @property
    def precision(self) -> float:
        d = self.tp + self.fp
        return self.tp / d if d else 0.0

    @property
    def recall(self) -> float:
        d = self.tp + self.fn
        return self.tp / d if d else 0.0

    @property
    def specificity(self) -> float:
        d = self.tn + self.fp
        return self.tn / d if d else 0.0

    @property
    def f1(self) -> float:
        p, r = self.precision, self.recall
        return 2 * p * r / (p + r) if p + r else 0.0

    @property
    def youden(self) -> float:
        return self.recall + self.specificity - 1.0

    def objective(self, name: str) -> float:
        return float(getattr(self, name))

    def to_dict(self) -> dict[str, float | int]:
        d: dict[str, float | int] = asdict(self)
        for k in ("accuracy", "precision", "recall", "specificity", "f1", "youden"):
            d[k] = round(getattr(self, k), 6)
        return d


def _check(scores: Sequence[float] | npt.ArrayLike, labels: Sequence[int] | npt.ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    y = np.asarray(labels).reshape(-1)
    if s.shape != y.shape:
        raise ValueError(f"scores and labels differ in length ({s.size} vs {y.size})")
    if not np.all(np.isfinite(s)):
        raise ValueError("scores must be finite numbers")
    if y.size and not np.all((y == 0) | (y == 1)):
        raise ValueError("labels must be 0 or 1")
    return s, y.astype(np.int64)


def roc_curve(scores: npt.ArrayLike, labels: npt.ArrayLike) -> RocCurve:
    s, y = _check(scores, labels)
    pos, neg = int(y.sum()), int(y.size - y.sum())
    if pos == 0 or neg == 0:
        raise ValueError(f"ROC needs both classes (got {pos} positive, {neg} negative)")
    order = np.argsort(-s, kind="stable")
    s_sorted, y_sorted = s[order], y[order]
    # last index of each run of equal scores (descending)
    distinct = np.flatnonzero(np.diff(s_sorted)) if s_sorted.size > 1 else np.empty(0, np.int64)
    ends = np.concatenate([distinct, [s_sorted.size - 1]])
    tps = np.cumsum(y_sorted)[ends]
    fps = (ends + 1) - tps
    tpr = np.concatenate([[0.0], tps / pos])
    fpr = np.concatenate([[0.0], fps / neg])
    thr = np.concatenate([[np.inf], s_sorted[ends]])
    return RocCurve(
        fpr=fpr.astype(np.float64),
        tpr=tpr.astype(np.float64),
        thresholds=thr.astype(np.float64),
        tp_counts=np.concatenate([[0], tps]).astype(np.int64),
        fp_counts=np.concatenate([[0], fps]).astype(np.int64),
    )


def auc(curve: RocCurve) -> float:
    """Area under the curve by the trapezoid rule (exact for the step curve with ties; computed on
    integer counts with one final division when the counts are known)."""
    if curve.tp_counts is not None and curve.fp_counts is not None:
        tp, fp = curve.tp_counts, curve.fp_counts
        twice = int(np.sum((fp[1:] - fp[:-1]) * (tp[1:] + tp[:-1])))
        return twice / (2 * int(tp[-1]) * int(fp[-1]))
    x, y = curve.fpr, curve.tpr
    return float(np.sum((x[1:] - x[:-1]) * (y[1:] + y[:-1]) / 2.0))


def roc_auc(scores: npt.ArrayLike, labels: npt.ArrayLike) -> float:
    return auc(roc_curve(scores, labels))


def confusion(scores: npt.ArrayLike, labels: npt.ArrayLike, threshold: float) -> Confusion:
    s, y = _check(scores, labels)
    pred = s >= threshold
    tp = int(np.sum(pred & (y == 1)))
    fp = int(np.sum(pred & (y == 0)))
    fn = int(np.sum(~pred & (y == 1)))
    tn = int(np.sum(~pred & (y == 0)))
    return Confusion(float(threshold), tp, fp, tn, fn)


def candidate_thresholds(scores: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """The lowest score (everything passes), the midpoints between consecutive distinct scores,
    and just above the highest score (nothing passes).

    A midpoint generalises better to unseen data than a threshold equal to an observed score.
    """
    u = np.unique(np.asarray(scores, dtype=np.float64))
    if u.size == 0:
        return np.array([0.5])
    mids = (u[1:] + u[:-1]) / 2.0
    return np.concatenate([[u[0]], mids, [u[-1] + 1e-9]])


def best_threshold(scores: npt.ArrayLike, labels: npt.ArrayLike, objective: str = "youden") -> Confusion:
    """The threshold maximising ``objective``; ties go to the one with the higher accuracy, then the
    lower threshold. For precision, thresholds that pass nothing are not considered (precision 0/0)."""
    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {', '.join(OBJECTIVES)}, got {objective!r}")
    s, y = _check(scores, labels)
    if s.size == 0:
        raise ValueError("no samples to calibrate on")
    cands = candidate_thresholds(s)
    # counts for every candidate at once: predicted positive = score >= t
    order = np.sort(s)
    ys = y[np.argsort(s, kind="stable")]
    pos_total, neg_total = int(y.sum()), int(y.size - y.sum())
    # number of samples with score < t (predicted negative) for each t
    below = np.searchsorted(order, cands, side="left")
    cum_pos = np.concatenate([[0], np.cumsum(ys)])
    fn = cum_pos[below]
    tn = below - fn
    tp = pos_total - fn
    fp = neg_total - tn
    best: Confusion | None = None
    best_key: tuple[float, float, float] | None = None
    for i, t in enumerate(cands):
        c = Confusion(float(t), int(tp[i]), int(fp[i]), int(tn[i]), int(fn[i]))
        if objective == "precision" and c.tp + c.fp == 0:
            continue
        key = (round(c.objective(objective), 12), round(c.accuracy, 12), -float(t))
        if best_key is None or key > best_key:
            best, best_key = c, key
    if best is None:  # precision with nothing predicted positive at any threshold cannot happen, but be safe
        best = confusion(s, y, float(cands[0]))
    return best


def cohens_d(positive: npt.ArrayLike, negative: npt.ArrayLike) -> float:
    """(mean_pos - mean_neg) / pooled standard deviation (sample variances); nan when undefined."""
    a = np.asarray(positive, dtype=np.float64)
    b = np.asarray(negative, dtype=np.float64)
    if a.size < 2 or b.size < 2:
        return float("nan")
    pooled = ((a.size - 1) * a.var(ddof=1) + (b.size - 1) * b.var(ddof=1)) / (a.size + b.size - 2)
    if pooled <= 0:
        return float("inf") if a.mean() != b.mean() else 0.0
    return float((a.mean() - b.mean()) / math.sqrt(pooled))


def split_mask(keys: Sequence[str], salt: str = "certus-split-v1") -> npt.NDArray[np.bool_]:
    """Deterministic half split: True ("tune") when the first byte of sha256(salt:key) is even.

    Keyed by a stable id (question id, row number), so the split does not depend on file order or
    on which other rows are present."""
    return np.array([hashlib.sha256(f"{salt}:{k}".encode()).digest()[0] % 2 == 0 for k in keys], dtype=bool)


def seeded_split(n: int, seed: int, test_share: float = 0.5) -> npt.NDArray[np.bool_]:
    """A seeded random split of ``n`` items; True = calibration part, False = held-out part."""
    if not 0.0 < test_share < 1.0:
        raise ValueError("test_share must be between 0 and 1")
    rng = np.random.default_rng(seed)
    perm = rng.permutation(n)
    n_test = int(round(n * test_share))
    mask = np.ones(n, dtype=bool)
    mask[perm[:n_test]] = False
    return mask


def stratified_split(labels: npt.ArrayLike, seed: int, holdout_share: float = 0.3) -> npt.NDArray[np.bool_]:
    """Seeded split keeping the class balance: True = calibration part, False = held-out part.
    Each class puts ``round(n_class * holdout_share)`` items (at least one when it has two or more)
    in the held-out part."""
    if not 0.0 < holdout_share < 1.0:
        raise ValueError("holdout_share must be between 0 and 1")
    y = np.asarray(labels).reshape(-1)
    rng = np.random.default_rng(seed)
    mask = np.ones(y.size, dtype=bool)
    for cls in (0, 1):
        idx = np.flatnonzero(y == cls)
        if idx.size < 2:
            continue
        k = min(idx.size - 1, max(1, int(round(idx.size * holdout_share))))
        mask[rng.permutation(idx)[:k]] = False
    return mask


def bootstrap_auc_interval(
    scores: npt.ArrayLike, labels: npt.ArrayLike, n_boot: int = 200, seed: int = 0, level: float = 0.95
) -> tuple[float, float]:
    """Percentile bootstrap interval of the AUC (stratified: positives and negatives resampled apart)."""
    s, y = _check(scores, labels)
    pos, neg = s[y == 1], s[y == 0]
    if pos.size == 0 or neg.size == 0:
        raise ValueError("bootstrap needs both classes")
    rng = np.random.default_rng(seed)
    out = np.empty(n_boot)
    lab = np.concatenate([np.ones(pos.size, np.int64), np.zeros(neg.size, np.int64)])
    for i in range(n_boot):
        bs = np.concatenate([rng.choice(pos, pos.size), rng.choice(neg, neg.size)])
        out[i] = roc_auc(bs, lab)
    lo, hi = np.quantile(out, [(1 - level) / 2, 1 - (1 - level) / 2])
    return float(lo), float(hi)
