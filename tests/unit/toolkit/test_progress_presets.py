"""The stderr progress line and CERT's presets / threshold manifests."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from certus.sidecar.manifests import ManifestError, load_file
from certus.sidecar.toolkit.presets import PRESETS, resolve_threshold, threshold_manifest, write_manifest
from certus.sidecar.toolkit.progress import Progress


def test_progress_prints_each_tenth_when_not_a_terminal() -> None:
    out = io.StringIO()
    p = Progress(200, "evaluate", stream=out)
    for _ in range(200):
        p.advance()
    p.close()
    lines = out.getvalue().splitlines()
    assert len(lines) == 10
    assert lines[0].startswith("evaluate  20/200   10.0%")
    assert lines[-1].startswith("evaluate  200/200  100.0%")


def test_progress_is_silent_for_short_runs_or_when_disabled() -> None:
    out = io.StringIO()
    p = Progress(50, "x", stream=out)
    for _ in range(50):
        p.advance()
    q = Progress(500, "x", stream=out, enabled=False)
    q.advance(500)
    assert out.getvalue() == ""


def test_presets_are_certs_table() -> None:
    assert PRESETS == {"general": 0.40, "financial": 0.46, "legal": 0.48, "healthcare": 0.50}
    assert resolve_threshold(None, "legal", 0.7) == (0.48, "preset:legal")
    assert resolve_threshold(0.55, None, 0.7) == (0.55, "threshold")
    assert resolve_threshold(None, None, 0.7) == (0.7, "default")
    with pytest.raises(ValueError, match="not both"):
        resolve_threshold(0.5, "legal", 0.7)
    with pytest.raises(ValueError, match="--preset must be one of"):
        resolve_threshold(None, "retail", 0.7)
    with pytest.raises(ValueError, match="--threshold must be between 0 and 1"):
        resolve_threshold(1.5, None, 0.7)


def test_a_threshold_becomes_a_loadable_manifest(tmp_path: Path) -> None:
    doc = threshold_manifest("acme", 0.46, version="2025-03")
    path = write_manifest(tmp_path / "acme" / "2025-03.json", doc)
    m = load_file(path, expected_location=("acme", "2025-03"))
    assert m.manifest_uri == "certus://manifests/acme/2025-03"
    assert m.thresholds["confidence"].min_score == 0.46
    assert m.thresholds["confidence"].required is True
    assert m.min_overall_score is None
    assert json.loads(path.read_text())["thresholds"]["confidence"]["min_score"] == 0.46


def test_a_bad_manifest_names_the_field() -> None:
    with pytest.raises(ManifestError, match="workspace_id"):
        threshold_manifest("not a workspace!", 0.5, version="2025-03")
    with pytest.raises(ManifestError, match="version"):
        threshold_manifest("acme", 0.5, version="2025-13")
