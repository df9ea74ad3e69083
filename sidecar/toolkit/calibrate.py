"""Threshold calibration on labelled answers (CERT's "how to calibrate", made a command).

Input: JSONL rows like trace rows (``query``, ``context``, ``answer``) plus a ``label`` (1 / true =
correct answer, 0 / false = incorrect). Each row is scored with the sidecar's own scoring
(:class:`~sidecar.toolkit.engine.OfflineScorer`); then, for the chosen ``metric`` (``confidence`` by
default):

- ROC curve and AUC over all rows (with a stratified bootstrap 95 % interval);
- the best threshold by Youden's J (default) or by ``accuracy`` / ``precision`` / ``recall`` / ``f1``;
- a held-out check: a seeded, class-stratified split; the threshold is tuned on the calibration
  part only and its accuracy / precision / recall / F1 are reported on the held-out part. That
  threshold is the recommended one; the held-out figures are what to expect on new data;
- a ROC curve PNG with the recommended operating point marked.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from certus.sidecar.config import Config
from certus.sidecar.scoring import CONFIDENCE, METRIC_NAMES
from certus.sidecar.toolkit import roc
from certus.sidecar.toolkit.engine import OfflineScorer
from certus.sidecar.toolkit.progress import Progress
from certus.sidecar.toolkit.traces import read_items

CALIBRATION_FORMAT = "certus.calibration/v1"


@dataclass(frozen=True)
class HeldOut:
    seed: int
    holdout_share: float
    calibration_rows: int
    holdout_rows: int
    threshold: float  # tuned on the calibration part
    calibration: dict[str, Any]  # confusion + rates on the calibration part at that threshold
    holdout: dict[str, Any]  # ... on the held-out part
    holdout_auc: float | None


@dataclass(frozen=True)
class Calibration:
    source: str
    metric: str
    objective: str
    rows: int
    scored: int
    not_scored: dict[str, int]
    positives: int
    negatives: int
    auc: float
    auc_ci95: tuple[float, float]
    best_all: dict[str, Any]  # threshold tuned on all rows (in-sample, optimistic)
    recommended_threshold: float
    held_out: HeldOut
    mean_positive: float
    mean_negative: float
    cohens_d: float
    roc_png: str | None
    elapsed_s: float

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["format"] = CALIBRATION_FORMAT
        d["auc_ci95"] = list(self.auc_ci95)
        return d

    def lines(self) -> list[str]:
        h = self.held_out
        out = [
            f"rows: {self.rows} (scored {self.scored}: {self.positives} correct, {self.negatives} incorrect"
            + (", not scored: " + ", ".join(f"{k}={v}" for k, v in sorted(self.not_scored.items())) if self.not_scored else "")
            + ")",
            f"metric: {self.metric}",
            f"ROC AUC: {self.auc:.3f} (95% bootstrap interval {self.auc_ci95[0]:.3f}-{self.auc_ci95[1]:.3f})",
            f"separation: Cohen's d = {self.cohens_d:.2f} (mean correct {self.mean_positive:.3f}, mean incorrect {self.mean_negative:.3f})",
            f"best threshold on all rows by {self.objective}: {self.best_all['threshold']:.3f} "
            f"(in-sample accuracy {self.best_all['accuracy']:.1%})",
            f"held-out check (seed {h.seed}, {h.holdout_share:.0%} held out, stratified): threshold {h.threshold:.3f} tuned on "
            f"{h.calibration_rows} rows -> held-out accuracy {h.holdout['accuracy']:.1%}, precision {h.holdout['precision']:.1%}, "
            f"recall {h.holdout['recall']:.1%}, F1 {h.holdout['f1']:.3f} on {h.holdout_rows} rows"
            + (f", held-out AUC {h.holdout_auc:.3f}" if h.holdout_auc is not None else ""),
            f"recommended threshold: {self.recommended_threshold:.3f}",
        ]
        if self.roc_png:
            out.append(f"ROC curve: {self.roc_png}")
        return out


def calibrate_scores(
    scores: np.ndarray,
    labels: np.ndarray,
    *,
    objective: str = "youden",
    seed: int = 7,
    holdout_share: float = 0.3,
) -> tuple[float, tuple[float, float], roc.Confusion, HeldOut, roc.RocCurve]:
    """AUC, its interval, the in-sample best threshold, the held-out check and the curve."""
    curve = roc.roc_curve(scores, labels)
    auc_value = roc.auc(curve)
    ci = roc.bootstrap_auc_interval(scores, labels, n_boot=200, seed=seed)
    best = roc.best_threshold(scores, labels, objective)
    mask = roc.stratified_split(labels, seed, holdout_share)
    cal_s, cal_y, ho_s, ho_y = scores[mask], labels[mask], scores[~mask], labels[~mask]
    tuned = roc.best_threshold(cal_s, cal_y, objective)
    ho = roc.confusion(ho_s, ho_y, tuned.threshold)
    ho_auc = roc.roc_auc(ho_s, ho_y) if 0 < ho_y.sum() < ho_y.size else None
    held = HeldOut(
        seed=seed,
        holdout_share=holdout_share,
        calibration_rows=int(mask.sum()),
        holdout_rows=int((~mask).sum()),
        threshold=round(tuned.threshold, 6),
        calibration=tuned.to_dict(),
        holdout=ho.to_dict(),
        holdout_auc=None if ho_auc is None else round(ho_auc, 6),
    )
    return auc_value, ci, best, held, curve


def calibrate_file(
    path: str | Path,
    *,
    cfg: Config,
    metric: str = CONFIDENCE,
    objective: str = "youden",
    label_field: str = "label",
    seed: int = 7,
    holdout_share: float = 0.3,
    roc_png: str | Path | None = None,
    encoder: Any = None,
    show_progress: bool = False,
) -> Calibration:
    if metric not in METRIC_NAMES:
        raise ValueError(f"--metric must be one of {', '.join(METRIC_NAMES)}, got {metric!r}")
    if objective not in roc.OBJECTIVES:
        raise ValueError(f"--objective must be one of {', '.join(roc.OBJECTIVES)}, got {objective!r}")
    t0 = time.perf_counter()
    p = Path(path)
    items = list(read_items(p, label_field=label_field))
    scorable = [it for it in items if it.inp is not None]
    not_scored: dict[str, int] = {}
    for it in items:
        if it.inp is None:
            not_scored[it.skip_reason] = not_scored.get(it.skip_reason, 0) + 1
    progress = Progress(len(scorable), "calibrate", enabled=show_progress)

    async def run() -> list[Any]:
        async with OfflineScorer(cfg, encoder) as engine:
            return await engine.score_many([it.inp for it in scorable if it.inp is not None], on_done=progress.advance)

    all_scores = asyncio.run(run())
    progress.close()
    values, labels = [], []
    for it, s in zip(scorable, all_scores):
        if metric in s.values:
            values.append(float(s.values[metric]))
            labels.append(int(it.label if it.label is not None else 0))
        else:
            not_scored["no_metric"] = not_scored.get("no_metric", 0) + 1
    x = np.asarray(values, dtype=np.float64)
    y = np.asarray(labels, dtype=np.int64)
    pos, neg = int(y.sum()), int(y.size - y.sum())
    if pos < 2 or neg < 2:
        raise ValueError(f"{p}: calibration needs at least 2 correct and 2 incorrect scored rows (got {pos} and {neg})")
    auc_value, ci, best, held, curve = calibrate_scores(x, y, objective=objective, seed=seed, holdout_share=holdout_share)
    png: str | None = None
    if roc_png is not None:
        from certus.sidecar.toolkit.charts import roc_png as draw

        point = roc.confusion(x, y, held.threshold)
        draw(
            Path(roc_png),
            curve.fpr,
            curve.tpr,
            auc_value,
            point=(1.0 - point.specificity, point.recall),
            point_label=f"threshold {held.threshold:.3f}",
            title=f"ROC of {metric} ({p.name}, n={y.size})",
        )
        png = str(roc_png)
    return Calibration(
        source=str(p),
        metric=metric,
        objective=objective,
        rows=len(items),
        scored=int(y.size),
        not_scored=not_scored,
        positives=pos,
        negatives=neg,
        auc=round(auc_value, 6),
        auc_ci95=(round(ci[0], 6), round(ci[1], 6)),
        best_all=best.to_dict(),
        recommended_threshold=held.threshold,
        held_out=held,
        mean_positive=round(float(x[y == 1].mean()), 6),
        mean_negative=round(float(x[y == 0].mean()), 6),
        cohens_d=round(roc.cohens_d(x[y == 1], x[y == 0]), 6),
        roc_png=png,
        elapsed_s=round(time.perf_counter() - t0, 3),
    )


def write_json(path: str | Path, data: dict[str, Any]) -> Path:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
    return p
