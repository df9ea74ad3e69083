"""``from certus.sidecar import measure``: lazy import, real encoder, the scorer's numbers, named errors."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import numpy as np
import pytest

from certus.sidecar.config import ScoringConfig
from certus.sidecar.errors import InvalidArgument
from certus.sidecar.scoring import MeasureResult, Scorer
from tests.conftest import OUTSIDE

APPLE_OUT = "Apple's Q4 revenue was $450 billion"
APPLE_CTX = "Apple reported Q4 revenue of $89.5B"


def test_importing_sidecar_stays_cheap() -> None:
    code = (
        "import sys\nfrom certus import sidecar\n"
        "from certus.sidecar import trace\n"
        "heavy = [m for m in ('numpy', 'grpc', 'onnxruntime', 'numba', 'matplotlib') if m in sys.modules]\n"
        "print(','.join(heavy) or 'none')\n"
        "print(callable(sidecar.measure), 'numpy' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=OUTSIDE, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.split()
    assert lines[0] == "none"
    assert lines[1:] == ["True", "False"]  # even resolving measure defers numpy/ONNX to the first call


def test_unknown_attribute_is_an_attribute_error() -> None:
    from certus import sidecar

    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        sidecar.nope  # noqa: B018


def test_measure_gives_the_scorers_numbers(encoder: Any) -> None:
    from certus.sidecar import measure
    from certus.sidecar.toolkit import measure as measure_mod

    measure_mod.use_encoder(encoder)
    try:
        r = measure(APPLE_OUT, APPLE_CTX)
        vecs = encoder.encode([APPLE_OUT, APPLE_CTX])
        ref = Scorer(ScoringConfig()).measure(APPLE_OUT, APPLE_CTX, vecs[0], vecs[1], 0.7)
        assert isinstance(r, MeasureResult)
        assert r == ref
        # CERT's point: similar wording, wrong figure -> grounding 0, not matched
        assert r.semantic_score > 0.8
        assert r.numeric_consistency == 0.0 and r.grounding_score == 0.0
        assert r.confidence == pytest.approx(0.5 * r.semantic_score)
        assert r.matched is False and r.threshold == 0.7
        same = measure(APPLE_CTX, APPLE_CTX, threshold=0.9)
        assert same.grounding_score == 1.0 and same.semantic_score == pytest.approx(1.0, abs=1e-5)
        assert same.matched is True and same.threshold == 0.9
    finally:
        measure_mod.reset()


def test_measure_builds_its_own_encoder_once() -> None:
    from certus.sidecar.toolkit import measure as measure_mod

    measure_mod.reset()
    try:
        a = measure_mod.measure("The Normans came from Normandy.", "The Normans were from Normandy in France.")
        enc = measure_mod._state["components"][0]
        b = measure_mod.measure("The Normans came from Normandy.", "The Normans were from Normandy in France.")
        assert measure_mod._state["components"][0] is enc
        assert a == b and 0.5 < a.confidence <= 1.0
        assert np.isfinite(a.semantic_score)
    finally:
        measure_mod.reset()


def test_bad_input_names_the_field(encoder: Any) -> None:
    from certus.sidecar.toolkit import measure as measure_mod

    measure_mod.use_encoder(encoder)
    try:
        with pytest.raises(InvalidArgument) as exc:
            measure_mod.measure("", 5)  # type: ignore[arg-type]
        assert {v.field for v in exc.value.violations} == {"text1", "text2"}
        with pytest.raises(InvalidArgument, match="threshold"):
            measure_mod.measure("a", "b", threshold=1.5)
        with pytest.raises(InvalidArgument, match="text1: is 50001 characters"):
            measure_mod.measure("x" * 50_001, "b")
    finally:
        measure_mod.reset()
