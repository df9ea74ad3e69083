"""``certus-sidecar evaluate | calibrate | validate | report``: the CERT toolkit commands.

Exit codes: 0 done; 1 the evidence log did not verify (report); 2 bad input (the message names the
file, line or field). Results go to stdout; progress and logs to stderr.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from certus.sidecar import config as config_mod

DEFAULT_DATA_DIR = Path(__file__).resolve().parents[2].parent / "shared" / "data"


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    from certus.sidecar.manifests.model import METRIC_NAMES as _NAMES
    from certus.sidecar.toolkit.presets import PRESETS
    from certus.sidecar.toolkit.validate import DATASETS

    CONFIDENCE, METRIC_NAMES = "confidence", sorted(_NAMES)

    e = sub.add_parser("evaluate", help="score a trace file (JSONL) offline with the sidecar's own scoring")
    e.add_argument("traces", help="trace file (JSONL written by @trace: query, context, answer, ...)")
    g = e.add_mutually_exclusive_group()
    g.add_argument("--threshold", type=float, help="pass when the metric is >= this (default CERTUS_MATCH_THRESHOLD, 0.7)")
    g.add_argument("--preset", choices=sorted(PRESETS), help="CERT's domain threshold (calibrated by CERT on its own scorer)")
    e.add_argument("--metric", default=CONFIDENCE, choices=METRIC_NAMES, help="metric to threshold (default confidence)")
    e.add_argument("--output", "-o", help="write results JSON here (hashes and scores only, no text)")
    e.add_argument("--no-progress", action="store_true", help="no progress line on stderr")
    _manifest_args(e)
    e.add_argument("-v", "--verbose", action="store_true", help="info logs on stderr")
    e.set_defaults(func=_evaluate)

    c = sub.add_parser("calibrate", help="ROC AUC and the best threshold on labelled answers, with a held-out check")
    c.add_argument("labelled", help="JSONL rows: query, context, answer and label (1 correct / 0 incorrect)")
    c.add_argument("--metric", default=CONFIDENCE, choices=METRIC_NAMES)
    c.add_argument("--objective", default="youden", choices=("youden", "accuracy", "precision", "recall", "f1"))
    c.add_argument("--label-field", default="label")
    c.add_argument("--seed", type=int, default=7, help="seed of the stratified held-out split (default 7)")
    c.add_argument("--holdout", type=float, default=0.3, help="share held out (default 0.3)")
    c.add_argument("--roc-png", default="roc_curve.png", help="ROC curve image (default roc_curve.png; '' for none)")
    c.add_argument("--output", "-o", help="write the calibration JSON here")
    c.add_argument("--no-progress", action="store_true")
    _manifest_args(c)
    c.add_argument("-v", "--verbose", action="store_true")
    c.set_defaults(func=_calibrate)

    v = sub.add_parser(
        "validate",
        help="CERT's validation (SQuAD v2, HaluEval) with the sidecar's scoring, and the held-out parts of the "
        "verifier's data (HaluEval dialogue/summarization test parts, SQuAD articles it was not fit on)",
    )
    v.add_argument("--data-dir", default=str(DEFAULT_DATA_DIR), help=f"shared data directory (default {DEFAULT_DATA_DIR})")
    v.add_argument(
        "--dataset",
        action="append",
        choices=DATASETS,
        help="repeatable; default all but squad_v2_other_passage (a contrast set, see docs/cert-toolkit.md)",
    )
    v.add_argument("--limit", type=int, help="first N questions / rows of each dataset (quick runs)")
    v.add_argument("--output", "-o", help="write the validation JSON here")
    v.add_argument("--json", action="store_true", help="print JSON instead of the table")
    v.add_argument("--no-progress", action="store_true")
    v.add_argument("-v", "--verbose", action="store_true")
    v.set_defaults(func=_validate)

    r = sub.add_parser("report", help="EU AI Act Annex IV / Art. 15 / Art. 19 documentation from the verified evidence log")
    r.add_argument("--evidence-dir", help="evidence log directory (default evidence.log_dir, CERTUS_EVIDENCE_DIR)")
    r.add_argument("--key", action="append", default=[], metavar="PUB", help="trusted public key file (repeatable)")
    r.add_argument("--metadata", help="system metadata JSON (start from --write-metadata-template)")
    r.add_argument("--results", action="append", default=[], help="evaluation results JSON (repeatable)")
    r.add_argument("--calibration", help="calibration JSON (certus-sidecar calibrate --output)")
    r.add_argument("--validation", help="validation JSON (certus-sidecar validate --output)")
    r.add_argument("--output", "-o", default="compliance_report", help="output path without extension")
    r.add_argument("--format", default="md,html,pdf", help="comma separated: md, html, pdf (default all)")
    r.add_argument("--since", metavar="YYYY-MM-DD", help="report on decisions from this UTC day on (default: the first)")
    r.add_argument("--until", metavar="YYYY-MM-DD", help="... up to and including this UTC day (default: the last)")
    r.add_argument("--allow-unverified", action="store_true", help="still write the report when verification fails")
    r.add_argument("--write-metadata-template", metavar="PATH", help="write the metadata template to PATH and exit")
    r.add_argument("-v", "--verbose", action="store_true")
    r.set_defaults(func=_report)


def _manifest_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--write-manifest", metavar="PATH", help="also write a manifest requiring metric >= the threshold")
    p.add_argument("--workspace", default="default", help="workspace of that manifest (default 'default')")
    p.add_argument("--manifest-version", help="YYYY-MM version of that manifest (default this month)")


def _setup(args: argparse.Namespace) -> config_mod.Config:
    from certus.sidecar.telemetry import configure_logging

    cfg = config_mod.load(args.config)
    level = "INFO" if getattr(args, "verbose", False) else "WARNING"
    configure_logging(dataclasses.replace(cfg.telemetry, log_level=level, log_format="text"))
    return cfg


def _fail(message: str, code: int = 2) -> int:
    print(f"error: {message}", file=sys.stderr)
    return code


def _maybe_manifest(args: argparse.Namespace, threshold: float, metric: str, origin: str) -> None:
    if not args.write_manifest:
        return
    from certus.sidecar.toolkit.presets import threshold_manifest, write_manifest

    doc = threshold_manifest(args.workspace, threshold, metric=metric, version=args.manifest_version, origin=origin)
    path = write_manifest(args.write_manifest, doc)
    print(f"manifest: {path} ({doc['manifest_uri']}: {metric} >= {threshold:.3f})")


def _evaluate(args: argparse.Namespace) -> int:
    from certus.sidecar.errors import InvalidArgument
    from certus.sidecar.toolkit.evaluate import evaluate_traces
    from certus.sidecar.toolkit.traces import TraceFileError

    cfg = _setup(args)
    try:
        run = evaluate_traces(
            args.traces,
            args.threshold,
            args.output,
            preset=args.preset,
            metric=args.metric,
            cfg=cfg,
            show_progress=not args.no_progress,
        )
        for line in run.summary.lines():
            print(line)
        if args.output:
            print(f"results: {args.output}")
        _maybe_manifest(args, run.summary.threshold, run.summary.metric, args.traces)
    except (TraceFileError, ValueError, InvalidArgument, OSError) as exc:
        return _fail(str(exc))
    return 0


def _calibrate(args: argparse.Namespace) -> int:
    from certus.sidecar.errors import InvalidArgument
    from certus.sidecar.toolkit.calibrate import calibrate_file, write_json
    from certus.sidecar.toolkit.traces import TraceFileError

    cfg = _setup(args)
    try:
        result = calibrate_file(
            args.labelled,
            cfg=cfg,
            metric=args.metric,
            objective=args.objective,
            label_field=args.label_field,
            seed=args.seed,
            holdout_share=args.holdout,
            roc_png=args.roc_png or None,
            show_progress=not args.no_progress,
        )
        for line in result.lines():
            print(line)
        if args.output:
            write_json(args.output, result.to_json())
            print(f"calibration: {args.output}")
        _maybe_manifest(args, result.recommended_threshold, result.metric, args.labelled)
    except (TraceFileError, ValueError, InvalidArgument, OSError) as exc:
        return _fail(str(exc))
    return 0


def _validate(args: argparse.Namespace) -> int:
    from certus.sidecar.toolkit.calibrate import write_json
    from certus.sidecar.toolkit.validate import DEFAULT_DATASETS, run_validation

    cfg = _setup(args)
    if args.limit is not None and args.limit < 1:
        return _fail("--limit must be >= 1")
    try:
        result = run_validation(
            args.data_dir,
            cfg=cfg,
            datasets=tuple(args.dataset or DEFAULT_DATASETS),
            limit=args.limit,
            show_progress=not args.no_progress,
        )
    except (FileNotFoundError, ValueError, KeyError) as exc:
        return _fail(str(exc))
    if args.json:
        print(json.dumps(result.to_json(), indent=1))
    else:
        for line in result.lines():
            print(line)
    if args.output:
        write_json(args.output, result.to_json())
        print(f"validation: {args.output}", file=sys.stderr if args.json else sys.stdout)
    return 0


def _report(args: argparse.Namespace) -> int:
    from certus.sidecar.evidence.verify import NoTrustedKey
    from certus.sidecar.signing import VerifyKey
    from certus.sidecar.toolkit.report import UnverifiedEvidence, generate_report, parse_day
    from certus.sidecar.toolkit.report.gather import metadata_template

    if args.write_metadata_template:
        p = Path(args.write_metadata_template)
        if p.exists():
            return _fail(f"{p} exists; not overwritten")
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(json.dumps(metadata_template(), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        print(f"metadata template: {p}")
        return 0
    cfg = _setup(args)
    evidence_dir = Path(args.evidence_dir) if args.evidence_dir else cfg.evidence.log_dir
    try:
        keys = [VerifyKey.from_file(p) for p in args.key] or None
    except (OSError, ValueError) as exc:
        return _fail(f"--key: {exc}")
    formats = [f.strip() for f in args.format.split(",") if f.strip()]
    try:
        since = parse_day(args.since, "--since") if args.since else None
        until = parse_day(args.until, "--until", end=True) if args.until else None
    except ValueError as exc:
        return _fail(str(exc))
    try:
        out = generate_report(
            evidence_dir,
            args.output,
            keys=keys,
            metadata=args.metadata,
            results=args.results,
            calibration=args.calibration,
            validation=args.validation,
            formats=formats,
            allow_unverified=args.allow_unverified,
            since=since,
            until=until,
        )
    except UnverifiedEvidence as exc:
        print(exc.summary, file=sys.stderr)
        return _fail("evidence log did not verify; no report written (--allow-unverified writes one that says so)", 1)
    except (FileNotFoundError, NoTrustedKey, ValueError) as exc:
        return _fail(str(exc))
    status = "VERIFIED" if out.verified else "NOT VERIFIED"
    print(f"evidence: {status}, {out.records} records, key id(s) {', '.join(out.key_ids) or '-'}")
    if out.placeholders:
        print(f"metadata: {len(out.placeholders)} placeholder field(s) left (e.g. {', '.join(out.placeholders[:3])})")
    for fmt, path in out.files.items():
        print(f"{fmt}: {path}")
    return 0 if out.verified else 1
