"""What the report is made of: the verified evidence log, evaluation results, system metadata.

The evidence log is verified first (:func:`sidecar.evidence.verify.verify_log`: every signature and
the whole hash chain). Only the records that verified are summarised; when verification fails the
report says so and where, and covers the verified prefix only.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from importlib import resources
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from certus.sidecar.evidence.decision import parse_utc_timestamp, pass_rate
from certus.sidecar.evidence.records import iter_log
from certus.sidecar.evidence.verify import VerifyReport, verify_log
from certus.sidecar.signing import VerifyKey

METADATA_TEMPLATE = "system_metadata.json"


@dataclass(frozen=True)
class Bucket:
    label: str
    decisions: int
    scored: int
    passed: int
    mean_overall: float | None
    mean_confidence: float | None

    @property
    def pass_rate(self) -> float | None:
        return self.passed / self.scored if self.scored else None


@dataclass
class EvidenceSummary:
    verify: VerifyReport
    decisions: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    modes: Counter[str] = field(default_factory=Counter)
    skip_reasons: Counter[str] = field(default_factory=Counter)
    blocked: int = 0
    metrics: dict[str, list[float]] = field(default_factory=dict)
    metric_passed: Counter[str] = field(default_factory=Counter)
    metric_thresholds: dict[str, set[float]] = field(default_factory=dict)
    overall_scores: list[float] = field(default_factory=list)
    processing_ms: list[int] = field(default_factory=list)
    manifests: Counter[str] = field(default_factory=Counter)
    workspaces: Counter[str] = field(default_factory=Counter)
    guardrail_types: Counter[str] = field(default_factory=Counter)
    guardrail_severities: Counter[str] = field(default_factory=Counter)
    guardrail_detectors: Counter[str] = field(default_factory=Counter)
    guardrail_sources: Counter[str] = field(default_factory=Counter)
    blocking_violations: int = 0
    decisions_with_violations: int = 0
    buckets: list[Bucket] = field(default_factory=list)
    bucket_unit: str = "day"
    examples: list[dict[str, Any]] = field(default_factory=list)
    # the reporting period asked for ("" = the whole log); records outside it are not summarised
    period: str = ""

    @property
    def scored(self) -> int:
        return self.outcomes["pass"] + self.outcomes["warning"] + self.outcomes["fail"]

    @property
    def pass_rate(self) -> float | None:
        return pass_rate(self.outcomes)


def _iso(when: datetime) -> str:
    return when.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _bucket_key(when: datetime, unit: str) -> str:
    if unit == "hour":
        return when.strftime("%Y-%m-%d %H:00")
    if unit == "day":
        return when.strftime("%Y-%m-%d")
    year, week, _ = when.isocalendar()
    return f"{year}-W{week:02d}"


def bucket_unit(first: datetime, last: datetime) -> str:
    span = last - first
    if span <= timedelta(hours=48):
        return "hour"
    if span <= timedelta(days=120):
        return "day"
    return "week"


def _metric_map(payload: dict[str, Any]) -> dict[str, float]:
    return {m["name"]: float(m["value"]) for m in payload.get("metrics", []) if not m.get("error")}


def summarize_evidence(
    log_dir: str | Path,
    keys: Sequence[VerifyKey] | None = None,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
) -> EvidenceSummary:
    """Verify the whole log, then summarise its verified records (hashes, ids, scores only) whose
    timestamp falls in ``[since, until)`` (either open when None)."""
    report = verify_log(log_dir, list(keys) if keys else None)
    s = EvidenceSummary(verify=report)
    if since is not None or until is not None:
        s.period = f"{_iso(since) if since else '—'} to {_iso(until) if until else '—'} (end exclusive)"
    rows: list[tuple[datetime, str, float | None, float | None]] = []
    picks: dict[str, tuple[float, dict[str, Any]]] = {}
    for n, rec in enumerate(iter_log(Path(log_dir))):
        if n >= report.records:
            break
        d = rec.payload
        if since is not None or until is not None:
            when = parse_utc_timestamp(d["timestamp"])
            if (since is not None and when < since) or (until is not None and when >= until):
                continue
        s.decisions += 1
        outcome = str(d.get("outcome"))
        s.outcomes[outcome] += 1
        s.modes[str(d.get("mode"))] += 1
        s.workspaces[str(d.get("workspace_id"))] += 1
        if d.get("manifest_uri"):
            s.manifests[str(d["manifest_uri"])] += 1
        if d.get("skipped"):
            s.skip_reasons[str(d.get("skip_reason") or "unknown")] += 1
        if d.get("blocked"):
            s.blocked += 1
        s.processing_ms.append(int(d.get("processing_time_ms", 0)))
        for m in d.get("metrics", []):
            if m.get("error"):
                continue
            s.metrics.setdefault(m["name"], []).append(float(m["value"]))
            if m.get("passed"):
                s.metric_passed[m["name"]] += 1
            if m.get("threshold") is not None:
                s.metric_thresholds.setdefault(m["name"], set()).add(float(m["threshold"]))
        if d.get("overall_score") is not None:
            s.overall_scores.append(float(d["overall_score"]))
        violations = d.get("guardrail_violations", [])
        if violations:
            s.decisions_with_violations += 1
        for v in violations:
            s.guardrail_types[v["guardrail_type"]] += 1
            s.guardrail_severities[v["severity"]] += 1
            s.guardrail_detectors[v.get("detector") or "-"] += 1
            src = str(v.get("source") or "-")
            s.guardrail_sources["context" if src.startswith("context") else src] += 1
            if v.get("blocking"):
                s.blocking_violations += 1
        metrics = _metric_map(d)
        overall = d.get("overall_score")
        rows.append((parse_utc_timestamp(d["timestamp"]), outcome, None if overall is None else float(overall), metrics.get("confidence")))
        _pick_examples(picks, d, rec.evidence_id, metrics)
    if rows:
        unit = bucket_unit(rows[0][0], rows[-1][0])
        s.bucket_unit = unit
        grouped: dict[str, list[tuple[datetime, str, float | None, float | None]]] = {}
        for r in rows:
            grouped.setdefault(_bucket_key(r[0], unit), []).append(r)
        for label in sorted(grouped):
            rs = grouped[label]
            scored = [r for r in rs if r[1] in ("pass", "warning", "fail")]
            overall_vals = [r[2] for r in rs if r[2] is not None]
            conf_vals = [r[3] for r in rs if r[3] is not None]
            s.buckets.append(
                Bucket(
                    label=label,
                    decisions=len(rs),
                    scored=len(scored),
                    passed=sum(1 for r in scored if r[1] in ("pass", "warning")),
                    mean_overall=float(np.mean(overall_vals)) if overall_vals else None,
                    mean_confidence=float(np.mean(conf_vals)) if conf_vals else None,
                )
            )
    s.examples = [dict(v[1], example=k) for k, v in picks.items()]
    return s


_EXAMPLE_ORDER = ("highest-scoring pass", "median pass", "lowest-scoring fail", "blocked", "guardrail violation", "skipped")


def _pick_examples(picks: dict[str, tuple[float, dict[str, Any]]], d: dict[str, Any], evidence_id: str, metrics: dict[str, float]) -> None:
    """Deterministic representative decisions (hashes and scores only)."""
    overall = d.get("overall_score")
    ex = {
        "decision_id": d["decision_id"],
        "timestamp": d["timestamp"],
        "seq": d.get("seq"),
        "evidence_id": evidence_id,
        "query_hash": d["query_hash"],
        "response_hash": d["response_hash"],
        "context_chunks": len(d.get("context_hashes", [])),
        "outcome": d["outcome"],
        "overall_score": overall,
        "metrics": {k: round(v, 3) for k, v in metrics.items()},
        "violations": [f"{v['guardrail_type']}/{v['severity']} {v.get('detector', '')} at {v.get('source', '')} {v.get('location', '')}".strip() for v in d.get("guardrail_violations", [])],
        "blocked": bool(d.get("blocked")),
        "skip_reason": d.get("skip_reason", ""),
    }

    def keep(kind: str, key: float) -> None:
        cur = picks.get(kind)
        if cur is None or key > cur[0]:
            picks[kind] = (key, ex)

    score = float(overall) if overall is not None else None
    if d["outcome"] == "pass" and score is not None:
        keep("highest-scoring pass", score)
        keep("median pass", -abs(score - 0.75))
    if d["outcome"] == "fail" and score is not None:
        keep("lowest-scoring fail", -score)
    if d.get("blocked"):
        keep("blocked", -float(d.get("seq") or 0))
    if d.get("guardrail_violations"):
        keep("guardrail violation", float(max(v["confidence"] for v in d["guardrail_violations"])))
    if d.get("skipped"):
        keep("skipped", -float(d.get("seq") or 0))


def ordered_examples(examples: list[dict[str, Any]]) -> list[dict[str, Any]]:
    seen: set[str] = set()
    out = []
    for kind in _EXAMPLE_ORDER:
        for e in examples:
            if e["example"] == kind and e["decision_id"] not in seen:
                seen.add(e["decision_id"])
                out.append(e)
    return out


# -- metadata ---------------------------------------------------------------------------------------


def metadata_template() -> dict[str, Any]:
    """The shipped system-metadata template (``sidecar/toolkit/templates/system_metadata.json``)."""
    text = resources.files("certus.sidecar.toolkit.templates").joinpath(METADATA_TEMPLATE).read_text(encoding="utf-8")
    data: dict[str, Any] = json.loads(text)
    return data


def load_metadata(path: str | Path | None) -> tuple[dict[str, Any], list[str]]:
    """(metadata, fields still holding template placeholders). Missing keys fall back to the template."""
    template = metadata_template()
    if path is None:
        data: dict[str, Any] = {}
    else:
        p = Path(path)
        try:
            data = json.loads(p.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ValueError(f"{p}: cannot read system metadata: {exc}") from exc
        if not isinstance(data, dict):
            raise ValueError(f"{p}: system metadata must be a JSON object")
        unknown = sorted(set(data) - set(template) - {"_comment"})
        if unknown:
            raise ValueError(f"{p}: unknown section {unknown[0]!r} (sections: {', '.join(k for k in template if k != '_comment')})")
    merged = _merge(template, data)
    todo = sorted(_placeholders(merged, ""))
    return merged, todo


def _merge(base: Any, over: Any) -> Any:
    if isinstance(base, dict) and isinstance(over, dict):
        out = dict(base)
        for k, v in over.items():
            out[k] = _merge(base.get(k), v) if k in base else v
        return out
    return base if over is None else over


def _placeholders(v: Any, path: str) -> list[str]:
    if isinstance(v, dict):
        return [p for k, x in v.items() if k != "_comment" for p in _placeholders(x, f"{path}.{k}" if path else k)]
    if isinstance(v, list):
        return [p for i, x in enumerate(v) for p in _placeholders(x, f"{path}[{i}]")]
    if isinstance(v, str) and v.startswith("<") and v.endswith(">"):
        return [path]
    return []
