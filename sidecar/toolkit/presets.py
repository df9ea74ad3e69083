"""CERT's domain thresholds for ``confidence``, and turning a threshold into a workspace manifest.

The figures are CERT's table, calibrated by CERT on SQuAD v2 with CERT's own scorer (sentence-
transformers + its term grounding). This sidecar's grounding differs (numbers are checked by value,
stop words and term normalisation differ), so the same threshold does not mean the same error rate
here: run ``certus-sidecar calibrate`` on labelled data of your own domain and use its threshold.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

PRESETS: dict[str, float] = {
    "general": 0.40,
    "financial": 0.46,
    "legal": 0.48,
    "healthcare": 0.50,
}
PRESET_NOTES: dict[str, str] = {
    "general": "lower stakes, more lenient",
    "financial": "CERT: 95.3% accuracy, 0.961 ROC AUC on SQuAD v2 (CERT's scorer)",
    "legal": "precision-critical",
    "healthcare": "higher confidence needed",
}


def resolve_threshold(threshold: float | None, preset: str | None, default: float) -> tuple[float, str]:
    """(threshold, where it came from). ``threshold`` and ``preset`` are mutually exclusive."""
    if threshold is not None and preset is not None:
        raise ValueError("give --threshold or --preset, not both")
    if preset is not None:
        if preset not in PRESETS:
            raise ValueError(f"--preset must be one of {', '.join(PRESETS)}, got {preset!r}")
        return PRESETS[preset], f"preset:{preset}"
    if threshold is not None:
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"--threshold must be between 0 and 1, got {threshold}")
        return threshold, "threshold"
    return default, "default"


def threshold_manifest(
    workspace_id: str,
    threshold: float,
    *,
    metric: str = "confidence",
    version: str | None = None,
    signed_by: str = "certus-sidecar toolkit",
    origin: str = "",
) -> dict[str, Any]:
    """A manifest document that requires ``metric >= threshold`` (validated like any manifest)."""
    from certus.sidecar.manifests import build_manifest

    version = version or datetime.now(timezone.utc).strftime("%Y-%m")
    doc: dict[str, Any] = {
        "manifest_id": f"manifest_{workspace_id}_{version.replace('-', '_')}",
        "manifest_uri": f"certus://manifests/{workspace_id}/{version}",
        "workspace_id": workspace_id,
        "version": version,
        "signed_by": signed_by,
        "thresholds": {metric: {"min_score": round(float(threshold), 6), "weight": 1.0, "required": True}},
        "require_all_metrics_pass": True,
        "min_overall_score": None,
    }
    build_manifest(doc, source=origin or "toolkit")  # raises ManifestError naming the bad field
    return doc


def write_manifest(path: str | Path, doc: dict[str, Any]) -> Path:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return p
