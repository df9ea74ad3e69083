"""Fixtures for the evidence tests: real keys and a log config in a temp dir.

The suite runs with ``--import-mode=importlib`` (no test folder on ``sys.path``), so this folder
is added for ``evidence_samples``."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable

import pytest

_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

from evidence_samples import OTHER_SEED, SEED  # noqa: E402

from certus.sidecar.config import EvidenceConfig  # noqa: E402
from certus.sidecar.signing import SigningKey  # noqa: E402


@pytest.fixture
def key() -> SigningKey:
    return SigningKey(SEED)


@pytest.fixture
def other_key() -> SigningKey:
    return SigningKey(OTHER_SEED)


@pytest.fixture
def log_cfg(tmp_path: Path) -> Callable[..., EvidenceConfig]:
    def make(**kw: object) -> EvidenceConfig:
        base: dict[str, object] = {"log_dir": tmp_path / "evidence", "fsync": "group", "group_commit_max_wait_ms": 0.0}
        base.update(kw)
        return EvidenceConfig(**base)  # type: ignore[arg-type]

    return make
