"""Fixtures for the manifest tests: a valid document factory, atomic file writes, real Ed25519 keys."""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any

import pytest

from certus.sidecar.signing import SigningKey

VALID: dict[str, Any] = {
    "manifest_id": "manifest_acme_2025_01",
    "manifest_uri": "certus://manifests/acme/2025-01",
    "workspace_id": "acme",
    "version": "2025-01",
    "signed_by": "security-team@acme.com",
    "default_mode": "shadow",
    "thresholds": {
        "faithfulness": {"min_score": 0.7, "weight": 2.0, "required": True},
        "answer_relevancy": {"min_score": 0.6, "weight": 1.5, "required": True},
    },
    "require_all_metrics_pass": False,
    "min_overall_score": 0.7,
    "timeout_ms": 2000,
    "log_full_content": False,
}


def doc(**changes: Any) -> dict[str, Any]:
    """A valid document (the seed's example, without its context_precision threshold), with top-level changes."""
    d = copy.deepcopy(VALID)
    d.update(changes)
    return d


def versioned(workspace: str, version: str, **changes: Any) -> dict[str, Any]:
    return doc(
        manifest_id=f"manifest_{workspace}_{version.replace('-', '_')}",
        manifest_uri=f"certus://manifests/{workspace}/{version}",
        workspace_id=workspace,
        version=version,
        **changes,
    )


def write_atomic(path: Path, data: bytes | str | dict[str, Any]) -> Path:
    """Write like an editor or a ConfigMap update: a new file renamed over the old one."""
    if isinstance(data, dict):
        data = json.dumps(data)
    if isinstance(data, str):
        data = data.encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
    return path


@pytest.fixture
def make_doc() -> Any:
    return doc


@pytest.fixture
def make_versioned() -> Any:
    return versioned


@pytest.fixture
def write() -> Any:
    return write_atomic


@pytest.fixture
def keypair(tmp_path: Path) -> tuple[SigningKey, Path, Path]:
    """A fresh Ed25519 key written as files: (key, private path, public path)."""
    key = SigningKey.generate()
    priv = key.write(tmp_path / "keys" / "manifest.key")
    return key, priv, Path(str(priv) + ".pub")
