"""Compose the EU AI Act technical documentation (Annex IV), Article 15 and Article 19 sections.

Annex IV of Regulation (EU) 2024/1689 has nine points; the report follows them in order. CERT's
list of nine (general description, system elements, development, monitoring, risk management,
changes, system operation, human oversight, accuracy/robustness/cybersecurity) is covered too:
operation and human oversight sit in point 3, accuracy/robustness/cybersecurity in the Article 15
section. Measured facts come from the verified evidence log and from evaluation results; what only
the provider knows comes from the system-metadata file (placeholders left in it are flagged).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from certus.sidecar import __version__
from certus.sidecar.toolkit import charts
from certus.sidecar.toolkit.report.document import (
    Bullets,
    Callout,
    Document,
    Figure,
    Heading,
    KeyValues,
    PageBreak,
    Paragraph,
    SignatureBlock,
    Table,
)
from certus.sidecar.toolkit.report.gather import EvidenceSummary, ordered_examples

METRIC_DEFINITIONS = {
    "semantic_similarity": "cosine similarity (clipped to [0, 1]) between the response embedding and the best-matching "
    "context chunk (all-MiniLM-L6-v2, ONNX Runtime)",
    "grounding": "share of the response's content terms found in the context, times numeric_consistency",
    "numeric_consistency": "share of the response's numbers that the context confirms by value",
    "confidence": "0.5 × semantic_similarity + 0.5 × grounding (CERT's combined score)",
    "faithfulness": "probability that the least supported response sentence (claim) is supported by the context, "
    "from a small monotone perceptron over term, entity, number and embedding evidence (models/verifier.json)",
    "answer_relevancy": "cosine similarity between the query and the response",
    "question_fit": "probability that the answer sits where the context answers this question "
    "(how much of the question the context says around the located answer, read from the encoder's token "
    "states and from word overlap; expected answer type)",
    "context_relevance": "mean cosine similarity between the query and the context chunks",
    "context_precision": "rank-aware precision of the chunks that supported claims rest on (RAGAS definition)",
    "context_recall": "share of the reference answer's sentences supported by the context",
}


@dataclass
class ReportInputs:
    evidence: EvidenceSummary
    metadata: dict[str, Any]
    placeholders: list[str]
    results: list[dict[str, Any]] = field(default_factory=list)  # evaluation results files
    result_paths: list[str] = field(default_factory=list)
    calibration: dict[str, Any] | None = None
    validation: dict[str, Any] | None = None
    evidence_dir: str = ""
    generated_at: str = field(default_factory=lambda: datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"))


def _v(meta: dict[str, Any], *path: str) -> str:
    cur: Any = meta
    for p in path:
        cur = cur.get(p) if isinstance(cur, dict) else None
    if cur is None or cur == "":
        return "—"
    if isinstance(cur, list):
        return "; ".join(str(x) for x in cur)
    return str(cur)


def _pct(x: float | None) -> str:
    return "—" if x is None else f"{x:.1%}"


def _f(x: float | None, nd: int = 3) -> str:
    return "—" if x is None or (isinstance(x, float) and np.isnan(x)) else f"{x:.{nd}f}"


def _clip(s: str, n: int) -> str:
    return s if len(s) <= n else s[: n - 1] + "…"


def _short(h: str, n: int = 16) -> str:
    return h if len(h) <= n + 7 else h[: 7 + n] + "…"


def _percentiles(values: Sequence[float]) -> dict[str, float]:
    if not values:
        return {}
    a = np.asarray(values, dtype=np.float64)
    return {f"p{q}": float(np.quantile(a, q / 100)) for q in (50, 95, 99)} | {"max": float(a.max())}


def make_charts(inp: ReportInputs, assets: Path) -> dict[str, Path]:
    """Every chart the report uses, as PNG files under ``assets``."""
    ev = inp.evidence
    out: dict[str, Path] = {}
    if ev.buckets:
        out["accuracy_over_time"] = charts.timeline_png(
            assets / "accuracy_over_time.png",
            [b.label for b in ev.buckets],
            {
                "pass rate (pass + warning) / scored": [b.pass_rate for b in ev.buckets],
                "mean overall score": [b.mean_overall for b in ev.buckets],
                "mean confidence": [b.mean_confidence for b in ev.buckets],
            },
            title=f"Accuracy over time (evidence log, per {ev.bucket_unit})",
            ylabel="share / score",
            counts=[b.decisions for b in ev.buckets],
        )
    series = {k: ev.metrics[k] for k in ("confidence", "faithfulness", "answer_relevancy") if ev.metrics.get(k)}
    if ev.overall_scores:
        series["overall score"] = ev.overall_scores
    if series:
        thr = sorted(ev.metric_thresholds.get("confidence", set()))
        out["evidence_scores"] = charts.histogram_png(
            assets / "evidence_scores.png",
            series,
            title="Score distributions (evidence log)",
            threshold=thr[0] if len(thr) == 1 else None,
        )
    out["guardrails"] = charts.bars_png(
        assets / "guardrails.png",
        dict(ev.guardrail_types.most_common()),
        title="Guardrail violations by type (evidence log)",
        xlabel="violations",
    )
    for i, res in enumerate(inp.results):
        s = res["summary"]
        scored = [r for r in res["results"] if r.get("scored") and r.get("score") is not None]
        if not scored:
            continue
        out[f"results_{i}_scores"] = charts.histogram_png(
            assets / f"results_{i}_scores.png",
            {
                "passed": [r["score"] for r in scored if r["passed"]],
                "failed": [r["score"] for r in scored if not r["passed"]],
            },
            title=f"{s['metric']} of evaluated traces ({Path(s['source']).name})",
            xlabel=s["metric"],
            threshold=float(s["threshold"]),
        )
        stamped = [r for r in scored if r.get("timestamp")]
        if len(stamped) >= 2:
            from certus.sidecar.evidence.decision import parse_utc_timestamp
            from certus.sidecar.toolkit.report.gather import _bucket_key, bucket_unit

            times = sorted(parse_utc_timestamp(r["timestamp"]) for r in stamped)
            unit = bucket_unit(times[0], times[-1])
            groups: dict[str, list[dict[str, Any]]] = {}
            for r in stamped:
                groups.setdefault(_bucket_key(parse_utc_timestamp(r["timestamp"]), unit), []).append(r)
            if len(groups) >= 2:
                labels = sorted(groups)
                out[f"results_{i}_over_time"] = charts.timeline_png(
                    assets / f"results_{i}_over_time.png",
                    labels,
                    {
                        "accuracy (share passing)": [sum(r["passed"] for r in groups[k]) / len(groups[k]) for k in labels],
                        f"mean {s['metric']}": [float(np.mean([r["score"] for r in groups[k]])) for k in labels],
                    },
                    title=f"Offline evaluation over time (per {unit})",
                    ylabel="share / score",
                    counts=[len(groups[k]) for k in labels],
                )
    return out


def build_document(inp: ReportInputs, figures: dict[str, Path]) -> Document:
    m, ev, vr = inp.metadata, inp.evidence, inp.evidence.verify
    name, version = _v(m, "system", "name"), _v(m, "system", "version")
    provider = _v(m, "system", "provider_name")
    period = ev.period or f"{vr.first_timestamp or '—'} to {vr.last_timestamp or '—'}"
    doc = Document(
        title=f"Technical documentation (EU AI Act, Annex IV): {name} {version}",
        subtitle=f"Provider: {provider} · Evidence period: {period} · Generated {inp.generated_at} by certus-sidecar {__version__}",
        footer=f"{_clip(name, 40)} {_clip(version, 16)} · evidence {'verified' if vr.ok else 'NOT verified'} · {', '.join(vr.key_ids[:1]) or '—'}",
    )

    # -- verification first --------------------------------------------------------------------------
    if vr.ok:
        trust = (
            "against the given trusted key(s)"
            if vr.key_source == "given"
            else "against the keys stored in the log directory (internal consistency only — pass --key to verify against a key held elsewhere)"
        )
        doc.add(
            Callout(
                f"Evidence log VERIFIED: {vr.records} signed records in {vr.segments} segment(s); every Ed25519 "
                f"signature and the whole hash chain checked {trust}. Signing key id(s): {', '.join(vr.key_ids) or '—'}. "
                f"Last seq {vr.last_seq}, last evidence id {vr.last_evidence_id or '—'}.",
                "ok" if vr.key_source == "given" else "warning",
            )
        )
    else:
        doc.add(
            Callout(
                f"Evidence log verification FAILED at {vr.first_bad}. This report covers only the {vr.records} records "
                f"before it, which verified. Signing key id(s) seen: {', '.join(vr.key_ids) or '—'}.",
                "error",
            )
        )
    for w in vr.warnings:
        doc.add(Paragraph(f"Verifier warning: {w}"))
    if inp.placeholders:
        shown = ", ".join(inp.placeholders[:12]) + (" …" if len(inp.placeholders) > 12 else "")
        doc.add(
            Callout(
                f"System metadata incomplete: {len(inp.placeholders)} field(s) still hold template placeholders ({shown}). "
                "Fill them in the metadata file before submitting this document.",
                "warning",
            )
        )

    conf = ev.metrics.get("confidence", [])
    faith = ev.metrics.get("faithfulness", [])
    summary = [
        ("Evidence period", period),
        ("Decisions recorded (verified)", str(ev.decisions)),
        ("Scored / skipped", f"{ev.scored} / {sum(ev.skip_reasons.values())}"),
        ("Pass rate (pass + warning over scored)", _pct(ev.pass_rate)),
        ("Mean confidence", _f(float(np.mean(conf))) if conf else "—"),
        ("Mean faithfulness", _f(float(np.mean(faith))) if faith else "—"),
        ("Guardrail violations", f"{sum(ev.guardrail_types.values())} in {ev.decisions_with_violations} decisions"),
        ("Blocked responses (enforce mode)", str(ev.blocked)),
    ]
    for i, res in enumerate(inp.results):
        s = res["summary"]
        summary.append(
            (
                f"Offline evaluation {i + 1}",
                f"{s['scored']} traces, accuracy {_pct(s['accuracy'])} at {s['metric']} ≥ {s['threshold']:.2f} "
                f"({s['threshold_source']}), mean confidence {_f(s.get('mean_confidence'))}",
            )
        )
    doc.add(Heading(1, "Summary"), KeyValues(summary))

    # -- Annex IV ------------------------------------------------------------------------------------
    doc.add(Heading(1, "1. General description of the AI system"))
    doc.add(
        KeyValues(
            [
                ("Name and version", f"{name} {version}"),
                ("Provider", f"{provider}, {_v(m, 'system', 'provider_address')}"),
                ("Contact", _v(m, "system", "contact")),
                ("Risk classification", _v(m, "system", "risk_classification")),
                ("Annex III area", _v(m, "system", "annex_iii_area")),
                ("Intended purpose", _v(m, "system", "intended_purpose")),
                ("Deployment context", _v(m, "system", "deployment_context")),
                ("Users and affected persons", _v(m, "system", "users")),
                ("Placed on the market / into service", _v(m, "system", "placed_on_market")),
                ("Forms placed on the market", _v(m, "system", "forms_placed_on_market")),
                ("Interaction with other systems", _v(m, "general_description", "interaction_with_other_systems")),
                ("Software and firmware versions", _v(m, "general_description", "software_and_firmware_versions")),
                ("Hardware", _v(m, "general_description", "hardware")),
                ("User interface for the deployer", _v(m, "general_description", "user_interface")),
                ("Instructions for use", _v(m, "general_description", "instructions_for_use")),
            ]
        )
    )

    doc.add(Heading(1, "2. Elements of the AI system and its development"))
    doc.add(Heading(2, "2.1 System elements"))
    doc.add(
        KeyValues(
            [
                ("Architecture", _v(m, "system_elements", "architecture")),
                ("Generating model (LLM)", _v(m, "system_elements", "llm")),
                ("Retrieval", _v(m, "system_elements", "retrieval")),
                ("Design choices and assumptions", _v(m, "system_elements", "design_choices")),
                ("Computational resources", _v(m, "system_elements", "computational_resources")),
            ]
        )
    )
    doc.add(Heading(2, "2.2 Development process"))
    doc.add(
        KeyValues(
            [
                ("Methods and third-party tools", _v(m, "development", "methods")),
                ("Data", _v(m, "development", "data")),
                ("Validation and testing", _v(m, "development", "validation_and_testing")),
                ("Cybersecurity measures in development", _v(m, "development", "cybersecurity_measures")),
            ]
        )
    )
    doc.add(Heading(2, "2.3 Measurement system (evaluation sidecar)"))
    doc.add(
        Paragraph(
            "Every answer is scored by a local evaluation sidecar (certus-evaluate): no LLM calls and no network. "
            "Embeddings come from all-MiniLM-L6-v2 exported to ONNX; term grounding runs in compiled (Numba) kernels. "
            "Each decision is signed with Ed25519 and appended to a hash-chained evidence log before the caller is answered. "
            "The predetermined metrics are:"
        )
    )
    doc.add(Table(("Metric", "Definition"), [(k, v) for k, v in METRIC_DEFINITIONS.items()], widths=(0.25, 0.75)))
    _validation_section(doc, inp)

    doc.add(Heading(1, "3. Monitoring, functioning and control"))
    doc.add(
        KeyValues(
            [
                ("Capabilities and limitations", _v(m, "monitoring", "capabilities_and_limitations")),
                ("Foreseeable unintended outcomes", _v(m, "monitoring", "foreseeable_unintended_outcomes")),
                ("Human oversight measures (Art. 14)", _v(m, "monitoring", "human_oversight_measures")),
                ("Input data specifications", _v(m, "monitoring", "input_data_specifications")),
            ]
        )
    )
    doc.add(Heading(2, "3.1 System operation (from the evidence log)"))
    pt = _percentiles(ev.processing_ms)
    doc.add(
        Table(
            ("Quantity", "Value"),
            [
                ("Decisions by mode", ", ".join(f"{k}: {v}" for k, v in sorted(ev.modes.items())) or "—"),
                ("Decisions by outcome", ", ".join(f"{k}: {v}" for k, v in sorted(ev.outcomes.items())) or "—"),
                ("Skipped (graceful degradation) by reason", ", ".join(f"{k}: {v}" for k, v in sorted(ev.skip_reasons.items())) or "none"),
                ("Workspaces", ", ".join(f"{k}: {v}" for k, v in ev.workspaces.most_common(10)) or "—"),
                (
                    "Evaluation time (ms)",
                    ", ".join(f"{k} {v:.0f}" for k, v in pt.items()) if pt else "—",
                ),
            ],
            widths=(0.35, 0.65),
        )
    )
    doc.add(Heading(2, "3.2 Human oversight"))
    doc.add(
        Bullets(
            [
                "Shadow mode records every verdict without changing the response; enforce mode sets blocked=true when a "
                "required metric fails or a blocking guardrail fires, and the application withholds the response.",
                f"In the period, {ev.blocked} response(s) were blocked and {ev.outcomes.get('fail', 0)} scored below the "
                "manifest thresholds; each has a signed decision that a reviewer can look up by decision id.",
                "Thresholds, weights and guardrail policy are set per workspace in signed manifests, so a change of policy "
                "is itself a reviewable, versioned artefact (see section 6).",
                f"Provider's oversight measures: {_v(m, 'monitoring', 'human_oversight_measures')}",
            ]
        )
    )

    doc.add(Heading(1, "4. Appropriateness of the performance metrics"))
    doc.add(Paragraph(_v(m, "performance_metrics_rationale")))
    rows = []
    for metric in sorted(ev.metrics):
        vals = ev.metrics[metric]
        thr = sorted(ev.metric_thresholds.get(metric, set()))
        rows.append(
            (
                metric,
                ", ".join(f"{t:.2f}" for t in thr) or "reported only",
                str(len(vals)),
                _f(float(np.mean(vals))),
                _f(float(np.quantile(vals, 0.05))),
                _pct(ev.metric_passed[metric] / len(vals)) if thr else "—",
            )
        )
    if rows:
        doc.add(
            Table(
                ("Metric", "Threshold(s) applied", "n", "Mean", "5th percentile", "Share passing"),
                rows,
                caption="Measured levels in the evidence period (thresholds are the manifests' min_score values).",
            )
        )
    doc.add(
        Paragraph(
            "CERT's domain presets for confidence (general 0.40, financial 0.46, legal 0.48, healthcare 0.50) were calibrated "
            "by CERT on SQuAD v2 with CERT's own scorer; they are starting points only. The thresholds above should come "
            "from `certus-sidecar calibrate` on labelled data of this system's domain."
        )
    )

    doc.add(Heading(1, "5. Risk management system (Article 9)"))
    doc.add(Paragraph(_v(m, "risk_management", "process")))
    risks = m.get("risk_management", {}).get("identified_risks") or []
    mitigations = m.get("risk_management", {}).get("mitigations") or []
    if risks or mitigations:
        n = max(len(risks), len(mitigations))
        doc.add(
            Table(
                ("Identified risk", "Mitigation"),
                [(risks[i] if i < len(risks) else "", mitigations[i] if i < len(mitigations) else "") for i in range(n)],
            )
        )
    doc.add(
        Paragraph(
            "Technical risk controls evidenced in the log: guardrails for PII, prompt injection and jailbreak (in the query "
            "and, as indirect injection, in retrieved context), data exfiltration, code safety and vulnerability "
            "hallucination; see the cybersecurity part of the Article 15 section for their counts."
        )
    )

    doc.add(Heading(1, "6. Changes through the lifecycle"))
    changes = m.get("changes") or []
    if changes:
        doc.add(
            Table(
                ("Version", "Date", "Change"),
                [(str(c.get("version", "")), str(c.get("date", "")), str(c.get("description", ""))) for c in changes if isinstance(c, dict)],
                widths=(0.15, 0.15, 0.7),
            )
        )
    if ev.manifests:
        doc.add(
            Table(
                ("Evaluation manifest applied", "Decisions"),
                [(k, str(v)) for k, v in sorted(ev.manifests.items())],
                caption="Manifests (thresholds and guardrail policy) in force during the evidence period, from the signed decisions.",
                widths=(0.8, 0.2),
            )
        )

    doc.add(Heading(1, "7. Harmonised standards and other specifications applied"))
    stds = m.get("standards_applied") or []
    doc.add(Bullets([str(s) for s in stds] or ["—"]))

    doc.add(Heading(1, "8. EU declaration of conformity (Article 47, Annex V)"))
    doc.add(
        Paragraph(
            f"The provider {provider} declares under its sole responsibility that the AI system {name} {version} "
            f"({_v(m, 'system', 'intended_purpose')}) is in conformity with Regulation (EU) 2024/1689 and, where "
            "applicable, with other relevant Union legislation. Standards applied are listed in section 7. "
            f"Notified body: {_v(m, 'declaration_of_conformity', 'notified_body')}."
        )
    )
    d = m.get("declaration_of_conformity", {}) if isinstance(m.get("declaration_of_conformity"), dict) else {}
    doc.add(
        SignatureBlock(
            [
                ("Signed for and on behalf of", provider if provider != "—" else ""),
                ("Name", str(d.get("signatory_name") or "")),
                ("Position", str(d.get("signatory_position") or "")),
                ("Place of issue", str(d.get("place_of_issue") or "")),
                ("Date of issue", str(d.get("date_of_issue") or "")),
                ("Signature", ""),
            ]
        )
    )

    doc.add(Heading(1, "9. Post-market monitoring (Article 72)"))
    doc.add(
        KeyValues(
            [
                ("Plan", _v(m, "post_market_monitoring", "plan")),
                ("Review cadence", _v(m, "post_market_monitoring", "review_cadence")),
                ("Serious incident reporting (Art. 73)", _v(m, "post_market_monitoring", "incident_reporting")),
            ]
        )
    )
    doc.add(
        Paragraph(
            "Every production answer is scored and recorded, so monitoring covers all traffic rather than a sample. "
            "The accuracy-over-time chart in the Article 15 section is the monitoring signal for the period."
        )
    )

    # -- Article 15 ----------------------------------------------------------------------------------
    doc.add(PageBreak(), Heading(1, "Article 15: accuracy, robustness and cybersecurity"))
    doc.add(Heading(2, "Accuracy (Art. 15(1), 15(3))"))
    doc.add(
        Paragraph(
            f"Declared metrics and thresholds are those of section 4. Over the evidence period {ev.scored} answers were "
            f"scored; {_pct(ev.pass_rate)} passed their manifest's thresholds (pass or warning)."
        )
    )
    if "accuracy_over_time" in figures:
        doc.add(Figure(figures["accuracy_over_time"], "Pass rate, mean overall score and mean confidence per period; bars: decisions per period."))
    if ev.buckets:
        doc.add(
            Table(
                (ev.bucket_unit.capitalize(), "Decisions", "Scored", "Pass rate", "Mean overall", "Mean confidence"),
                [
                    (b.label, str(b.decisions), str(b.scored), _pct(b.pass_rate), _f(b.mean_overall), _f(b.mean_confidence))
                    for b in ev.buckets[-24:]
                ],
                caption="Accuracy per period (latest 24 periods).",
            )
        )
    if "evidence_scores" in figures:
        doc.add(Figure(figures["evidence_scores"], "Distributions of the recorded scores."))
    for i, res in enumerate(inp.results):
        s = res["summary"]
        doc.add(Heading(3, f"Offline evaluation {i + 1}: {Path(s['source']).name}"))
        doc.add(
            KeyValues(
                [
                    ("Source (sha256)", f"{s['source']} ({_short(s['source_sha256'], 24)})"),
                    ("Traces / scored", f"{s['total_traces']} / {s['scored']}"),
                    ("Not scored", ", ".join(f"{k}: {v}" for k, v in sorted(s["not_scored"].items())) or "none"),
                    ("Threshold", f"{s['metric']} ≥ {s['threshold']:.3f} ({s['threshold_source']})"),
                    ("Accuracy (share passing)", _pct(s["accuracy"])),
                    ("Mean confidence", _f(s.get("mean_confidence"))),
                    ("Score quantiles", ", ".join(f"{k} {v:.3f}" for k, v in s.get("score_quantiles", {}).items()) or "—"),
                    ("Model", f"{s['model']} on {s['execution_provider']}"),
                ]
            )
        )
        if f"results_{i}_scores" in figures:
            doc.add(Figure(figures[f"results_{i}_scores"], f"{s['metric']} of passed and failed traces, with the threshold."))
        if f"results_{i}_over_time" in figures:
            doc.add(Figure(figures[f"results_{i}_over_time"], "Offline evaluation accuracy over time (by trace timestamp)."))

    doc.add(Heading(2, "Robustness (Art. 15(4))"))
    skipped = sum(ev.skip_reasons.values())
    doc.add(
        Bullets(
            [
                f"Graceful degradation: an evaluator timeout, an overloaded encoder or a failing evaluator never fails the "
                f"application's call; the answer is marked skipped and still signed. Skipped in the period: {skipped} of "
                f"{ev.decisions} ({_pct(skipped / ev.decisions if ev.decisions else None)})"
                + (": " + ", ".join(f"{k} {v}" for k, v in sorted(ev.skip_reasons.items())) if skipped else "."),
                "Clients use a deadline and a circuit breaker (open after 3 consecutive failures, one probe after 30 s), "
                "so an unavailable evaluator cannot slow the application down.",
                "Evaluation time: " + (", ".join(f"{k} {v:.0f} ms" for k, v in pt.items()) if pt else "—") + ".",
            ]
            + (
                [
                    f"Threshold robustness: calibrated on {inp.calibration['held_out']['calibration_rows']} labelled rows, "
                    f"the threshold {inp.calibration['recommended_threshold']:.3f} reached accuracy "
                    f"{_pct(inp.calibration['held_out']['holdout']['accuracy'])} on {inp.calibration['held_out']['holdout_rows']} "
                    f"held-out rows (ROC AUC {inp.calibration['auc']:.3f} on all rows)."
                ]
                if inp.calibration
                else []
            )
        )
    )

    doc.add(Heading(2, "Cybersecurity (Art. 15(5))"))
    doc.add(
        Paragraph(
            f"Guardrails recorded {sum(ev.guardrail_types.values())} violation(s) in {ev.decisions_with_violations} "
            f"decision(s); {ev.blocking_violations} were blocking under the manifest policy. Violations are stored as type, "
            "severity, detector, location and a SHA-256 hash of the offending span — never the content."
        )
    )
    if ev.guardrail_types:
        breakdown: list[tuple[str, str, str]] = []
        breakdown += [("type", k, str(v)) for k, v in ev.guardrail_types.most_common()]
        breakdown += [
            ("severity", k, str(ev.guardrail_severities[k]))
            for k in ("critical", "high", "medium", "low")
            if ev.guardrail_severities[k]
        ]
        breakdown += [("found in", k, str(v)) for k, v in ev.guardrail_sources.most_common()]
        breakdown += [("detector", k, str(v)) for k, v in ev.guardrail_detectors.most_common(12)]
        doc.add(
            Table(
                ("Breakdown", "Value", "Violations"),
                breakdown,
                caption="found in: context = indirect injection or data in retrieved chunks.",
                widths=(0.25, 0.5, 0.25),
            )
        )
    doc.add(Figure(figures["guardrails"], "Guardrail violations by type."))
    doc.add(
        Paragraph(
            "Integrity of the record: each decision is canonical JSON in a DSSE envelope signed with Ed25519, carrying the "
            "sequence number and the SHA-256 of the previous envelope, so edits, deletions, insertions and reordering are "
            "detectable offline by anyone holding the public key."
        )
    )

    # -- Article 19 ----------------------------------------------------------------------------------
    doc.add(Heading(1, "Article 19: automatically generated logs"))
    doc.add(
        KeyValues(
            [
                ("Log location", inp.evidence_dir or vr.log_dir),
                ("Records (verified)", f"{vr.records} in {vr.segments} segment(s)"),
                ("Period covered", period),
                ("Verification result", "OK" if vr.ok else f"FAILED at {vr.first_bad}"),
                ("Signing key id(s)", ", ".join(vr.key_ids) or "—"),
                ("Trusted keys", f"{', '.join(vr.trusted_key_ids) or '—'} ({vr.key_source})"),
                ("Last seq / evidence id", f"{vr.last_seq} / {vr.last_evidence_id or '—'}"),
                ("Retention period", _v(m, "logging", "retention_period")),
                ("Storage location", _v(m, "logging", "storage_location")),
                ("Access control", _v(m, "logging", "access_control")),
                ("Re-verify with", f"certus-sidecar verify {inp.evidence_dir or vr.log_dir} --key <public key file>"),
            ]
        )
    )
    doc.add(
        Paragraph(
            "Each record holds: decision id, workspace, decision type, SHA-256 hashes of the query, the response and every "
            "context chunk, every metric with its threshold and result, guardrail violations (type, severity, confidence, "
            "hash, location, detector, source), outcome, overall score, manifest URI, mode, UTC timestamp, processing "
            "time, skip reason, blocked flag, sequence number, previous-record hash and key id. No query, response or "
            "context text is stored. The removal of the newest records cannot be detected from the log alone: compare the "
            "last evidence id above with the copy held by the integrity service."
        )
    )

    # -- examples ------------------------------------------------------------------------------------
    doc.add(Heading(1, "Representative decisions (hashed)"))
    exs = ordered_examples(ev.examples)
    if not exs:
        doc.add(Paragraph("No decisions in the verified log."))
    for e in exs:
        doc.add(Heading(3, f"{e['example'].capitalize()}: decision {e['decision_id']}"))
        doc.add(
            KeyValues(
                [
                    ("Timestamp / seq", f"{e['timestamp']} / {e['seq']}"),
                    ("Evidence id", e["evidence_id"]),
                    ("Query hash", e["query_hash"]),
                    ("Response hash", e["response_hash"]),
                    ("Context chunks", str(e["context_chunks"])),
                    ("Outcome", e["outcome"] + (" (blocked)" if e["blocked"] else "") + (f", skipped: {e['skip_reason']}" if e["skip_reason"] else "")),
                    ("Overall score", _f(e["overall_score"])),
                    ("Metrics", ", ".join(f"{k} {v:.3f}" for k, v in sorted(e["metrics"].items())) or "—"),
                    ("Guardrail violations", "; ".join(e["violations"]) or "none"),
                ]
            )
        )

    # -- appendix ------------------------------------------------------------------------------------
    doc.add(Heading(1, "Appendix: sources of this document"))
    src = [
        ("Evidence log", f"{inp.evidence_dir or vr.log_dir} (verified with sidecar.evidence.verify_log)"),
        ("Generated", f"{inp.generated_at} by certus-sidecar {__version__}"),
    ]
    for pth, res in zip(inp.result_paths, inp.results):
        src.append(("Evaluation results", f"{pth} (traces {res['summary']['source_sha256']})"))
    if inp.calibration:
        src.append(("Calibration", f"{inp.calibration.get('source', '—')} ({inp.calibration.get('metric')}, {inp.calibration.get('objective')})"))
    if inp.validation:
        src.append(("Validation", "certus-sidecar validate (SQuAD v2, HaluEval)"))
    doc.add(KeyValues(src))
    return doc


def _validation_section(doc: Document, inp: ReportInputs) -> None:
    if inp.calibration:
        c = inp.calibration
        h = c["held_out"]
        doc.add(Heading(2, "2.4 Threshold calibration"))
        doc.add(
            Table(
                ("Quantity", "Value"),
                [
                    ("Labelled rows (correct / incorrect)", f"{c['scored']} ({c['positives']} / {c['negatives']})"),
                    ("Metric, objective", f"{c['metric']}, {c['objective']}"),
                    ("ROC AUC (95% bootstrap)", f"{c['auc']:.3f} ({c['auc_ci95'][0]:.3f}–{c['auc_ci95'][1]:.3f})"),
                    ("Separation (Cohen's d)", _f(c.get("cohens_d"), 2)),
                    ("Recommended threshold (tuned on the calibration part)", f"{c['recommended_threshold']:.3f}"),
                    (
                        "Held-out check",
                        f"{h['holdout_rows']} rows (seed {h['seed']}): accuracy {_pct(h['holdout']['accuracy'])}, "
                        f"precision {_pct(h['holdout']['precision'])}, recall {_pct(h['holdout']['recall'])}",
                    ),
                ],
                widths=(0.45, 0.55),
            )
        )
    if inp.validation:
        doc.add(Heading(2, "2.5 Validation of the measurement method on public data"))
        rows = []
        for ds in inp.validation.get("datasets", []):
            for mt in ds["metrics"]:
                if mt["metric"] in ("confidence", "faithfulness", "grounding"):
                    rows.append(
                        (
                            ds["name"],
                            mt["metric"],
                            f"{mt['auc']:.3f}",
                            f"{mt['cohens_d']:.2f}",
                            f"{mt['test_accuracy']:.1%} @ {mt['tuned_threshold']:.2f}",
                        )
                    )
        doc.add(
            Table(
                ("Dataset", "Metric", "ROC AUC", "Cohen's d", "Test-half accuracy @ tuned threshold"),
                rows,
                caption="CERT reports ROC AUC 0.961 on SQuAD v2 with its own scorer; these are this system's measured figures.",
            )
        )
