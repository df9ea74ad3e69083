"""``certus-sidecar report``: EU AI Act Annex IV documentation from the verified evidence log.

:func:`generate_report` verifies the log, gathers evaluation/calibration/validation results and the
system metadata, draws the charts and writes Markdown, HTML (self-contained) and PDF.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from importlib import resources
from pathlib import Path
from typing import Any, Sequence

from certus.sidecar.signing import VerifyKey

FORMATS = ("md", "html", "pdf")


class UnverifiedEvidence(Exception):
    """The evidence log did not verify (and the caller did not allow an unverified report)."""

    def __init__(self, summary: str) -> None:
        super().__init__(summary)
        self.summary = summary


@dataclass(frozen=True)
class ReportOutput:
    files: dict[str, Path]  # format -> path
    assets: Path
    verified: bool
    key_ids: tuple[str, ...]
    records: int
    placeholders: tuple[str, ...]


def parse_day(value: str, field: str, *, end: bool = False) -> datetime:
    """``YYYY-MM-DD`` as UTC midnight (``end``: the midnight after it, so the day is included)."""
    try:
        day = datetime.strptime(value, "%Y-%m-%d").replace(tzinfo=timezone.utc)
    except ValueError:
        raise ValueError(f"{field}: expected a date like 2026-11-30, got {value!r}") from None
    return day + timedelta(days=1) if end else day


def _load_json(path: str | Path, what: str, fmt: str | None = None) -> dict[str, Any]:
    p = Path(path)
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ValueError(f"{p}: cannot read {what}: {exc}") from exc
    if not isinstance(data, dict) or (fmt is not None and data.get("format") != fmt):
        raise ValueError(f"{p}: not a {what} file" + (f" (format {fmt!r} expected)" if fmt else ""))
    return data


def generate_report(
    evidence_dir: str | Path,
    output: str | Path,
    *,
    keys: Sequence[VerifyKey] | None = None,
    metadata: str | Path | None = None,
    results: Sequence[str | Path] = (),
    calibration: str | Path | None = None,
    validation: str | Path | None = None,
    formats: Sequence[str] = FORMATS,
    allow_unverified: bool = False,
    since: datetime | None = None,
    until: datetime | None = None,
) -> ReportOutput:
    """Write the report for the decisions in ``[since, until)`` (the whole log when both are None);
    the whole log is verified either way."""
    from certus.sidecar.toolkit.calibrate import CALIBRATION_FORMAT
    from certus.sidecar.toolkit.evaluate import load_results
    from certus.sidecar.toolkit.report.annex_iv import ReportInputs, build_document, make_charts
    from certus.sidecar.toolkit.report.document import to_html, to_markdown, to_pdf
    from certus.sidecar.toolkit.report.gather import load_metadata, summarize_evidence
    from certus.sidecar.toolkit.validate import VALIDATION_FORMAT

    bad = [f for f in formats if f not in FORMATS]
    if bad:
        raise ValueError(f"--format: unknown format {bad[0]!r} (md, html, pdf)")
    meta, placeholders = load_metadata(metadata)
    res = [load_results(p) for p in results]
    cal = _load_json(calibration, "calibration", CALIBRATION_FORMAT) if calibration else None
    val = _load_json(validation, "validation", VALIDATION_FORMAT) if validation else None
    evidence = summarize_evidence(evidence_dir, keys, since=since, until=until)
    if not evidence.verify.ok and not allow_unverified:
        raise UnverifiedEvidence(evidence.verify.summary())
    out = Path(output)
    base = out.with_suffix("") if out.suffix in (".md", ".html", ".pdf") else out
    assets = base.parent / f"{base.name}_assets"
    inputs = ReportInputs(
        evidence=evidence,
        metadata=meta,
        placeholders=placeholders,
        results=res,
        result_paths=[str(p) for p in results],
        calibration=cal,
        validation=val,
        evidence_dir=str(evidence_dir),
    )
    figures = make_charts(inputs, assets)
    doc = build_document(inputs, figures)
    files: dict[str, Path] = {}
    base.parent.mkdir(parents=True, exist_ok=True)
    if "md" in formats:
        p = base.with_name(base.name + ".md")
        p.write_text(to_markdown(doc, p.parent), encoding="utf-8")
        files["md"] = p
    if "html" in formats:
        css = resources.files("certus.sidecar.toolkit.templates").joinpath("report.css").read_text(encoding="utf-8")
        p = base.with_name(base.name + ".html")
        p.write_text(to_html(doc, css), encoding="utf-8")
        files["html"] = p
    if "pdf" in formats:
        files["pdf"] = to_pdf(doc, base.with_name(base.name + ".pdf"))
    v = evidence.verify
    return ReportOutput(files, assets, v.ok, tuple(v.key_ids), v.records, tuple(placeholders))
