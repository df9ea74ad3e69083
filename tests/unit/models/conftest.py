"""Fixtures for the model tests: the real export in the default model dir (cached across runs)."""

from __future__ import annotations

from pathlib import Path

import pytest

from certus.models.artifacts import default_model_dir, ensure_model
from certus.models.encoder import OnnxEncoder


@pytest.fixture(scope="session")
def default_dir() -> Path:
    """The default model dir holding a checked fp32 export (exported once, then cached)."""
    path = ensure_model(default_model_dir(), "fp32")
    return path.parent


@pytest.fixture(scope="session")
def int8_dir(default_dir: Path) -> Path:
    ensure_model(default_dir, "int8")
    return default_dir


@pytest.fixture(scope="session")
def cpu_encoder(default_dir: Path) -> OnnxEncoder:
    return OnnxEncoder(default_dir, provider="cpu", intra_op_threads=1)
