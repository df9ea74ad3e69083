"""Batch evaluation of a trace file with the sidecar's own scoring (CERT's ``evaluate_traces``).

Every scorable trace goes through :class:`~sidecar.toolkit.engine.OfflineScorer` (the pipeline's
layout -> batched embedding -> kernels); a trace passes when its ``metric`` (default ``confidence``)
is >= the threshold. Accuracy is the share of scored traces that pass. The results file holds
hashes, ids and scores only — no query, answer or context text — so it can be archived and fed to
``certus-sidecar report``.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from certus.sidecar.config import Config
from certus.sidecar.domain import content_hash
from certus.sidecar.scoring import CONFIDENCE, METRIC_NAMES
from certus.sidecar.toolkit.engine import OfflineScorer
from certus.sidecar.toolkit.progress import Progress
from certus.sidecar.toolkit.traces import TraceItem, read_items

RESULTS_FORMAT = "certus.evaluation-results/v1"
QUERY_METRICS = ("answer_relevancy", "context_relevance")  # meaningless without a query


@dataclass(frozen=True)
class TraceResult:
    line: int
    trace_id: str
    timestamp: str | None
    scored: bool
    skip_reason: str = ""
    problems: tuple[str, ...] = ()
    query_hash: str | None = None
    response_hash: str | None = None
    context_hashes: tuple[str, ...] = ()
    metrics: dict[str, float] = field(default_factory=dict)
    score: float | None = None  # the thresholded metric
    passed: bool | None = None
    claims: int = 0
    supported_claims: int = 0

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["problems"] = list(self.problems)
        d["context_hashes"] = list(self.context_hashes)
        return d


@dataclass(frozen=True)
class EvaluationSummary:
    source: str
    source_sha256: str
    metric: str
    threshold: float
    threshold_source: str
    total_traces: int
    scored: int
    passed: int
    failed: int
    not_scored: dict[str, int]
    accuracy: float  # passed / scored (0 when nothing scored)
    mean_confidence: float | None
    mean_metrics: dict[str, float]
    score_quantiles: dict[str, float]
    first_timestamp: str | None
    last_timestamp: str | None
    model: str
    execution_provider: str
    elapsed_s: float
    generated_at: str

    @property
    def total(self) -> int:  # CERT's name
        return self.total_traces

    def lines(self) -> list[str]:
        out = [
            f"traces: {self.total_traces} (scored {self.scored}"
            + (", not scored: " + ", ".join(f"{k}={v}" for k, v in sorted(self.not_scored.items())) if self.not_scored else "")
            + ")",
            f"threshold: {self.metric} >= {self.threshold:.3f} ({self.threshold_source})",
            f"passed: {self.passed}  failed: {self.failed}",
            f"accuracy (share passing): {self.accuracy:.1%}",
            f"mean confidence: {self.mean_confidence:.3f}" if self.mean_confidence is not None else "mean confidence: -",
        ]
        for k in ("semantic_similarity", "grounding", "faithfulness"):
            if k in self.mean_metrics:
                out.append(f"mean {k}: {self.mean_metrics[k]:.3f}")
        out.append(f"model: {self.model} on {self.execution_provider}; {self.elapsed_s:.1f}s")
        return out


@dataclass(frozen=True)
class EvaluationRun:
    summary: EvaluationSummary
    results: list[TraceResult]

    # CERT-compatible attribute names
    @property
    def total_traces(self) -> int:
        return self.summary.total_traces

    @property
    def accuracy(self) -> float:
        return self.summary.accuracy

    @property
    def mean_confidence(self) -> float | None:
        return self.summary.mean_confidence

    def to_json(self) -> dict[str, Any]:
        return {
            "format": RESULTS_FORMAT,
            "summary": asdict(self.summary),
            "results": [r.to_dict() for r in self.results],
        }

    def write(self, path: str | Path) -> Path:
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_name(p.name + ".tmp")
        tmp.write_text(json.dumps(self.to_json(), indent=1, sort_keys=False) + "\n", encoding="utf-8")
        tmp.replace(p)
        return p


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return "sha256:" + h.hexdigest()


def _now() -> str:
    from datetime import datetime, timezone

    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def result_for(item: TraceItem, values: dict[str, float], claims: tuple[Any, ...], metric: str, threshold: float) -> TraceResult:
    assert item.inp is not None
    metrics = {k: round(float(v), 6) for k, v in values.items() if item.has_query or k not in QUERY_METRICS}
    score = float(values[metric]) if metric in values else None
    return TraceResult(
        line=item.line,
        trace_id=item.trace_id,
        timestamp=item.timestamp,
        scored=True,
        query_hash=content_hash(item.inp.query) if item.has_query else None,
        response_hash=content_hash(item.inp.response),
        context_hashes=tuple(content_hash(c) for c in item.inp.context),
        metrics=metrics,
        score=None if score is None else round(score, 6),
        passed=None if score is None else bool(score >= threshold),
        claims=len(claims),
        supported_claims=sum(1 for c in claims if c.supported),
    )


async def evaluate_items_async(
    items: list[TraceItem],
    cfg: Config,
    *,
    metric: str = CONFIDENCE,
    threshold: float,
    encoder: Any = None,
    progress: Progress | None = None,
) -> tuple[list[TraceResult], str, str]:
    scorable = [it for it in items if it.inp is not None]
    async with OfflineScorer(cfg, encoder) as engine:
        scores = await engine.score_many(
            [it.inp for it in scorable if it.inp is not None], on_done=progress.advance if progress else None
        )
        enc = engine.encoder
        model = f"all-MiniLM-L6-v2/{getattr(enc, 'variant', 'custom')}"
        provider = str(getattr(enc, "provider", "custom"))
    by_line = {it.line: (it, s) for it, s in zip(scorable, scores)}
    results: list[TraceResult] = []
    for it in items:
        if it.line in by_line:
            _, s = by_line[it.line]
            results.append(result_for(it, s.values, s.claims, metric, threshold))
        else:
            results.append(TraceResult(it.line, it.trace_id, it.timestamp, False, it.skip_reason, it.problems))
    return results, model, provider


def summarize(
    results: list[TraceResult],
    *,
    source: Path,
    metric: str,
    threshold: float,
    threshold_source: str,
    model: str,
    provider: str,
    elapsed_s: float,
) -> EvaluationSummary:
    scored = [r for r in results if r.scored and r.score is not None]
    passed = sum(1 for r in scored if r.passed)
    not_scored: dict[str, int] = {}
    for r in results:
        if not r.scored:
            not_scored[r.skip_reason] = not_scored.get(r.skip_reason, 0) + 1
        elif r.score is None:
            not_scored["no_metric"] = not_scored.get("no_metric", 0) + 1
    means: dict[str, float] = {}
    for name in METRIC_NAMES:
        vals = [r.metrics[name] for r in scored if name in r.metrics]
        if vals:
            means[name] = round(float(np.mean(vals)), 6)
    sc = np.array([r.score for r in scored], dtype=np.float64)
    quant = (
        {f"p{q}": round(float(np.quantile(sc, q / 100)), 6) for q in (5, 25, 50, 75, 95)} if sc.size else {}
    )
    stamps = sorted(r.timestamp for r in results if r.timestamp)
    return EvaluationSummary(
        source=str(source),
        source_sha256=_sha256_file(source),
        metric=metric,
        threshold=float(threshold),
        threshold_source=threshold_source,
        total_traces=len(results),
        scored=len(scored),
        passed=passed,
        failed=len(scored) - passed,
        not_scored=not_scored,
        accuracy=round(passed / len(scored), 6) if scored else 0.0,
        mean_confidence=means.get(CONFIDENCE),
        mean_metrics=means,
        score_quantiles=quant,
        first_timestamp=stamps[0] if stamps else None,
        last_timestamp=stamps[-1] if stamps else None,
        model=model,
        execution_provider=provider,
        elapsed_s=round(elapsed_s, 3),
        generated_at=_now(),
    )


def evaluate_traces(
    trace_file: str | Path,
    threshold: float | None = None,
    output: str | Path | None = None,
    *,
    preset: str | None = None,
    metric: str = CONFIDENCE,
    cfg: Config | None = None,
    encoder: Any = None,
    show_progress: bool = False,
) -> EvaluationRun:
    """Score every trace of ``trace_file``; write ``output`` (JSON) when given. CERT's signature."""
    from certus.sidecar import config as config_mod
    from certus.sidecar.toolkit.presets import resolve_threshold

    if metric not in METRIC_NAMES:
        raise ValueError(f"metric must be one of {', '.join(METRIC_NAMES)}, got {metric!r}")
    cfg = cfg or config_mod.load()
    thr, thr_source = resolve_threshold(threshold, preset, cfg.scoring.match_threshold)
    path = Path(trace_file)
    t0 = time.perf_counter()
    items = list(read_items(path))
    n_scorable = sum(1 for it in items if it.inp is not None)
    progress = Progress(n_scorable, "evaluate", enabled=show_progress)
    results, model, provider = asyncio.run(
        evaluate_items_async(items, cfg, metric=metric, threshold=thr, encoder=encoder, progress=progress)
    )
    progress.close()
    summary = summarize(
        results,
        source=path,
        metric=metric,
        threshold=thr,
        threshold_source=thr_source,
        model=model,
        provider=provider,
        elapsed_s=time.perf_counter() - t0,
    )
    run = EvaluationRun(summary, results)
    if output is not None:
        run.write(output)
    return run


def load_results(path: str | Path) -> dict[str, Any]:
    """Read a results file written by :func:`evaluate_traces` (checks the format marker)."""
    p = Path(path)
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ValueError(f"{p}: cannot read evaluation results: {exc}") from exc
    if not isinstance(data, dict) or data.get("format") != RESULTS_FORMAT:
        raise ValueError(f"{p}: not an evaluation results file (format {RESULTS_FORMAT!r} expected)")
    return data
