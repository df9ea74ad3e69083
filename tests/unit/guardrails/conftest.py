"""Fixtures for the guardrail tests: the real Presidio analyzer, the real ONNX MiniLM encoder."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

import pytest

from certus.models.artifacts import default_model_dir, ensure_model
from certus.models.encoder import OnnxEncoder
from certus.sidecar.domain import EvaluateInput, GuardrailConfig, GuardrailType, GuardrailViolation, Severity
from certus.sidecar.guardrails import GuardrailSuite

ROOT = Path(__file__).resolve().parents[3]
SHARED_DATA = ROOT.parent / "shared" / "data"

# Report everything the detectors find (policy is tested separately).
ALL = GuardrailConfig(severity_threshold=Severity.LOW, confidence_threshold=0.0)


def shared_data(*parts: str) -> Path:
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"shared data not found at {path} (expected ../shared/data beside the project)")
    return path


def req(query: str = "What is the answer?", response: str = "Here it is.", context: Iterable[str] = ()) -> EvaluateInput:
    return EvaluateInput(workspace_id="ws", query=query, response=response, context=tuple(context))


def text_of(inp: EvaluateInput, v: GuardrailViolation) -> str:
    """The offending span, recovered from the request (tests only: violations never carry it)."""
    if v.source == "query":
        src = inp.query
    elif v.source == "response":
        src = inp.response
    else:
        src = inp.context[int(v.source.removeprefix("context[").removesuffix("]"))]
    return src[v.start : v.end]


def detectors(vs: Iterable[GuardrailViolation]) -> set[str]:
    return {v.detector for v in vs}


def assert_no_content(inp: EvaluateInput, vs: Iterable[GuardrailViolation]) -> None:
    """No violation's repr carries the offending text (only its hash)."""
    from certus.sidecar.domain import content_hash

    for v in vs:
        span = text_of(inp, v)
        assert v.content_hash == content_hash(span)
        if len(span.strip()) >= 4:
            assert span not in repr(v)


@pytest.fixture(scope="session")
def encoder() -> OnnxEncoder:
    path = ensure_model(default_model_dir(), "fp32")
    return OnnxEncoder(path.parent, provider="cpu", intra_op_threads=1)


@pytest.fixture(scope="session")
def suite(encoder: OnnxEncoder) -> GuardrailSuite:
    """As the sidecar builds it: PII's named entities from the token-state head."""
    return GuardrailSuite(encoder.encode, token_states=lambda texts: encoder.encode_tokens(texts)[1])


@pytest.fixture(scope="session")
def spacy_suite(encoder: OnnxEncoder) -> GuardrailSuite:
    """PII's named entities from spaCy (``pii_ner_model="spacy"``, the head's teacher)."""
    return GuardrailSuite(encoder.encode, pii_ner_model="spacy")


@pytest.fixture(scope="session")
def rules_suite() -> GuardrailSuite:
    return GuardrailSuite(None)


@pytest.fixture(params=["minilm-head", "spacy"])
def pii_suite(request: pytest.FixtureRequest) -> GuardrailSuite:
    """The PII guardrail with each NER: the token-state head (the sidecar's default) and spaCy
    (what a suite without an encoder, or ``pii_ner_model="spacy"``, uses)."""
    return request.getfixturevalue("suite" if request.param == "minilm-head" else "rules_suite")


def scan_one(suite: GuardrailSuite, gtype: GuardrailType, inp: EvaluateInput, cfg: GuardrailConfig = ALL) -> list[GuardrailViolation]:
    return suite.scan(inp, {gtype: cfg})
