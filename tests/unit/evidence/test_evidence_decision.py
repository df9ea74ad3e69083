"""IntegrityDecision: built from a real result, hashes only, exact canonical payload, validation."""

from __future__ import annotations

import dataclasses
import hashlib
import math

import pytest
from evidence_samples import sample_decision, sample_input, sample_result

from certus.sidecar.domain import EvaluationResult, Mode, Outcome
from certus.sidecar.evidence.decision import (
    GENESIS_PREV_HASH,
    DecisionError,
    DecisionMetric,
    DecisionViolation,
    IntegrityDecision,
)
from certus.sidecar.signing import canonical_json


def sha(text: str) -> str:
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def test_from_result_hashes_the_content_and_copies_the_verdict() -> None:
    inp = sample_input(7)
    res = sample_result(7, evaluation_id="eval-0007")
    d = IntegrityDecision.from_result(inp, res, timestamp="2025-01-31T12:00:00.000000Z")
    assert d.decision_id == "eval-0007"
    assert d.workspace_id == "acme"
    assert d.decision_type == "combined"
    assert d.query_hash == sha("What is the refund window for order 7?")
    assert d.response_hash == sha(inp.response)
    assert d.context_hashes == (
        sha("Our policy: refunds within 30 days of purchase."),
        sha("Shipping takes 5 business days."),
    )
    assert d.metrics == (
        DecisionMetric("faithfulness", 0.8125, 0.7, True, "certus", None, None),
        DecisionMetric("answer_relevancy", 0.5, 0.6, False, "certus", None, None),
    )
    email_at = inp.response.index("alice@example.com")
    assert d.guardrail_violations == (
        DecisionViolation(
            guardrail_type="pii",
            severity="high",
            confidence=0.95,
            content_hash=sha("alice@example.com"),
            location=f"char {email_at}-{email_at + 17}",
            remediation="Redact detected email address",
            detector="EMAIL_ADDRESS",
            source="response",
            blocking=False,
        ),
    )
    assert (d.outcome, d.overall_score, d.mode) == ("pass", 0.6875, "shadow")
    assert d.manifest_uri == "certus://manifests/acme/2025-01"
    assert d.processing_time_ms == 12  # 12,345 us rounded
    assert (d.skipped, d.skip_reason, d.blocked) == (False, "", False)
    assert (d.seq, d.prev_hash, d.key_id) == (None, None, None)


def test_payload_never_contains_raw_content() -> None:
    inp = sample_input(3)
    payload = canonical_json(IntegrityDecision.from_result(inp, sample_result(3)).to_payload()).decode()
    for text in (inp.query, inp.response, *inp.context, "alice@example.com", "refund"):
        assert text not in payload


def test_exact_canonical_payload() -> None:
    d = IntegrityDecision(
        decision_id="d-1",
        workspace_id="ws",
        decision_type="evaluation",
        query_hash=sha("q"),
        response_hash=sha("r"),
        context_hashes=(),
        metrics=(DecisionMetric("faithfulness", 0.75, 0.7, True),),
        guardrail_violations=(),
        outcome="pass",
        overall_score=0.75,
        manifest_uri="",
        mode="enforce",
        timestamp="2025-01-31T12:00:00.000000Z",
        processing_time_ms=3,
    ).with_chain(0, GENESIS_PREV_HASH, "ed25519:0123456789abcdef")
    expected = (
        '{"blocked":false,"context_hashes":[],"decision_id":"d-1","decision_type":"evaluation",'
        '"guardrail_violations":[],"key_id":"ed25519:0123456789abcdef","manifest_uri":"",'
        '"metrics":[{"error":null,"framework":"certus","max_threshold":null,"name":"faithfulness",'
        '"passed":true,"threshold":0.7,"value":0.75}],"mode":"enforce","outcome":"pass",'
        '"overall_score":0.75,"prev_hash":"sha256:' + "0" * 64 + '","processing_time_ms":3,'
        '"query_hash":"' + sha("q") + '","response_hash":"' + sha("r") + '","seq":0,"skip_reason":"",'
        '"skipped":false,"timestamp":"2025-01-31T12:00:00.000000Z","workspace_id":"ws"}'
    )
    assert canonical_json(d.to_payload()).decode() == expected


def test_payload_round_trip() -> None:
    d = sample_decision(1).with_chain(5, "sha256:" + "ab" * 32, "ed25519:00112233445566ff")
    assert IntegrityDecision.from_payload(d.to_payload()) == d


def test_decision_type_defaults() -> None:
    inp = sample_input()
    res = sample_result()
    only_guardrails = dataclasses.replace(res, metrics=(), overall_score=None)
    skipped = EvaluationResult(
        "e-skip", "acme", Outcome.SKIPPED, True, Mode.SHADOW, "", skipped=True, skip_reason="evaluator_timeout"
    )
    assert IntegrityDecision.from_result(inp, only_guardrails).decision_type == "guardrail"
    s = IntegrityDecision.from_result(inp, skipped)
    assert (s.decision_type, s.outcome, s.skipped, s.skip_reason, s.metrics) == (
        "evaluation",
        "skipped",
        True,
        "evaluator_timeout",
        (),
    )
    assert IntegrityDecision.from_result(inp, res, decision_type="guardrail").decision_type == "guardrail"


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"context_hashes": ["sha256:" + "a" * 64, "sha256:abc"]}, "context_hashes[1]"),
        ({"context_hashes": ["md5:" + "a" * 64]}, "context_hashes[0]"),
        ({"query_hash": "sha256:" + "A" * 64}, "query_hash"),
        ({"overall_score": 1.5}, "overall_score"),
        ({"outcome": "great"}, "outcome"),
        ({"decision_type": "other"}, "decision_type"),
        ({"mode": "loud"}, "mode"),
        ({"timestamp": "2025-01-31 12:00:00"}, "timestamp"),
        ({"manifest_uri": "http://example.com/m"}, "manifest_uri"),
        ({"workspace_id": "bad workspace"}, "workspace_id"),
        ({"processing_time_ms": -1}, "processing_time_ms"),
        ({"seq": -3}, "seq"),
        ({"prev_hash": "0" * 64}, "prev_hash"),
        ({"key_id": "rsa:1"}, "key_id"),
        ({"metrics": [{"name": "f", "value": math.nan, "threshold": None, "passed": True}]}, "metrics[0].value"),
        ({"metrics": [{"name": "f", "value": 0.1, "threshold": None, "passed": "yes"}]}, "metrics[0].passed"),
        ({"metrics": [{"name": "f", "value": 0.1, "passed": True, "text": "x"}]}, "metrics[0].text"),
        ({"guardrail_violations": [{"guardrail_type": "pii"}]}, "guardrail_violations[0]"),
        ({"context_hashes": ["sha256:" + "a" * 64] * 51}, "context_hashes"),
        ({"query": "raw text"}, "query"),
    ],
)
def test_from_payload_names_the_bad_field(change: dict[str, object], field: str) -> None:
    payload = sample_decision().to_payload()
    payload.update(change)
    with pytest.raises(DecisionError) as err:
        IntegrityDecision.from_payload(payload)
    assert err.value.field == field


def test_missing_field_is_named() -> None:
    payload = sample_decision().to_payload()
    del payload["response_hash"]
    with pytest.raises(DecisionError) as err:
        IntegrityDecision.from_payload(payload)
    assert err.value.field == "response_hash"


def test_violation_location_must_be_a_char_range() -> None:
    with pytest.raises(DecisionError) as err:
        DecisionViolation("pii", "high", 0.9, sha("x"), "near the email alice@example.com")
    assert err.value.field == "location"
