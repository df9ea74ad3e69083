"""Manifest validation: every seed constraint, all violations collected, file + field named."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any

import pytest

from certus.sidecar.domain import GuardrailConfig, GuardrailType, Mode, Severity
from certus.sidecar.errors import InvalidArgument
from certus.sidecar.manifests import (
    ManifestDefaults,
    ManifestError,
    ThresholdConfig,
    build_manifest,
    decode_document,
    load_embedded_default,
    parse_bytes,
    seed_guardrail_defaults,
)

from .conftest import VALID, doc  # the seed's example manifest, without its context_precision threshold

SRC = "acme/2025-01.json"


def parse(d: Any, **kw: Any):  # type: ignore[no-untyped-def]
    return parse_bytes(json.dumps(d).encode(), "json", source=SRC, **kw)


def violations(d: Any, **kw: Any) -> list[tuple[str, str]]:
    with pytest.raises(ManifestError) as ei:
        parse(d, **kw)
    assert isinstance(ei.value, InvalidArgument)
    assert ei.value.source == SRC
    return [(v.field, v.description) for v in ei.value.violations]


def test_valid_seed_example_parses_with_seed_defaults() -> None:
    m = parse(doc())
    assert m.manifest_id == "manifest_acme_2025_01"
    assert m.manifest_uri == "certus://manifests/acme/2025-01"
    assert (m.workspace_id, m.version, m.signed_by) == ("acme", "2025-01", "security-team@acme.com")
    assert m.default_mode is Mode.SHADOW
    assert m.thresholds == {
        "faithfulness": ThresholdConfig(min_score=0.7, max_score=None, weight=2.0, required=True),
        "answer_relevancy": ThresholdConfig(min_score=0.6, max_score=None, weight=1.5, required=True),
    }
    assert dict(m.guardrails) == seed_guardrail_defaults()
    assert m.guardrails[GuardrailType.PII] == GuardrailConfig(
        enabled=True, block_on_violation=True, severity_threshold=Severity.HIGH, confidence_threshold=0.7
    )
    assert m.guardrails[GuardrailType.VULN_HALLUCINATION].enabled is False
    assert (m.min_overall_score, m.timeout_ms, m.log_full_content) == (0.7, 2000, False)
    assert m.source == SRC and m.digest.startswith("sha256:") and len(m.digest) == 71
    assert m.created_at is None and m.signer_key_id is None


def test_the_seed_example_whole_with_context_precision_is_accepted() -> None:
    d = doc(thresholds={**VALID["thresholds"], "context_precision": {"min_score": 0.5, "weight": 1.0, "required": False}})
    m = parse(d)
    assert m.thresholds["context_precision"] == ThresholdConfig(min_score=0.5, max_score=None, weight=1.0, required=False)
    for name in ("context_recall", "question_fit"):
        assert name in parse(doc(thresholds={name: {"min_score": 0.5}})).thresholds


def test_omitted_fields_take_seed_and_configured_defaults() -> None:
    d = doc()
    for k in ("default_mode", "timeout_ms", "min_overall_score", "require_all_metrics_pass", "log_full_content", "thresholds"):
        del d[k]
    m = parse(d, defaults=ManifestDefaults(default_mode=Mode.ENFORCE, timeout_ms=750))
    assert m.default_mode is Mode.ENFORCE and m.timeout_ms == 750
    assert m.min_overall_score == 0.7 and m.require_all_metrics_pass is False and dict(m.thresholds) == {}


@pytest.mark.parametrize("mode", ["shadow", "enforce", "async", "disabled"])
def test_every_mode_is_accepted(mode: str) -> None:
    assert parse(doc(default_mode=mode)).default_mode is Mode(mode)


def test_min_overall_score_null_disables_it() -> None:
    assert parse(doc(min_overall_score=None)).min_overall_score is None


def test_partial_guardrail_overrides_merge_onto_the_seed_default_for_that_type() -> None:
    m = parse(doc(guardrails={"pii": {"block_on_violation": False, "scan_query": True}, "code_safety": {"confidence_threshold": 0.9}}))
    assert m.guardrails[GuardrailType.PII] == GuardrailConfig(
        enabled=True, block_on_violation=False, severity_threshold=Severity.HIGH, confidence_threshold=0.7, scan_query=True
    )
    assert m.guardrails[GuardrailType.CODE_SAFETY].confidence_threshold == 0.9
    assert m.guardrails[GuardrailType.CODE_SAFETY].severity_threshold is Severity.MEDIUM
    assert m.guardrails[GuardrailType.JAILBREAK] == seed_guardrail_defaults()[GuardrailType.JAILBREAK]


def test_pii_entities_narrow_or_widen_what_is_reported() -> None:
    m = parse(doc(guardrails={"pii": {"entities": ["PERSON", "ORGANIZATION"]}}))
    assert m.guardrails[GuardrailType.PII].entities == ("PERSON", "ORGANIZATION")
    assert parse(doc()).guardrails[GuardrailType.PII].entities is None  # the guardrail's default set


def test_created_at_iso_and_naive_is_utc() -> None:
    assert parse(doc(created_at="2025-01-15T09:30:00Z")).created_at == datetime(2025, 1, 15, 9, 30, tzinfo=timezone.utc)
    assert parse(doc(created_at="2025-01-15T09:30:00")).created_at == datetime(2025, 1, 15, 9, 30, tzinfo=timezone.utc)


def test_max_only_threshold_is_valid() -> None:
    m = parse(doc(thresholds={"grounding": {"max_score": 0.95}}))
    assert m.thresholds["grounding"] == ThresholdConfig(min_score=None, max_score=0.95, weight=1.0, required=True)


def _thr(**spec: Any) -> dict[str, Any]:
    return doc(thresholds={"faithfulness": spec})


CASES: list[tuple[str, dict[str, Any], str, str]] = [
    ("max < min", _thr(min_score=0.7, max_score=0.5), "thresholds.faithfulness.max_score", "must be >= min_score (0.5 < 0.7)"),
    ("no bound", _thr(weight=1.0), "thresholds.faithfulness", "at least one of min_score or max_score must be set"),
    ("both null", _thr(min_score=None, max_score=None), "thresholds.faithfulness", "at least one of min_score or max_score must be set"),
    ("min > 1", _thr(min_score=1.5), "thresholds.faithfulness.min_score", "must be between 0 and 1, got 1.5"),
    ("max < 0", _thr(max_score=-0.1), "thresholds.faithfulness.max_score", "must be between 0 and 1, got -0.1"),
    ("min string", _thr(min_score="0.7"), "thresholds.faithfulness.min_score", "must be a number, got a string"),
    ("min bool", _thr(min_score=True), "thresholds.faithfulness.min_score", "must be a number, got a boolean"),
    ("weight < 0", _thr(min_score=0.5, weight=-1), "thresholds.faithfulness.weight", "must be >= 0, got -1"),
    ("required int", _thr(min_score=0.5, required=1), "thresholds.faithfulness.required", "must be true or false, got a number"),
    ("threshold extra", _thr(min_score=0.5, minimum=0.2), "thresholds.faithfulness.minimum", "unknown field"),
    ("threshold not object", doc(thresholds={"faithfulness": 0.7}), "thresholds.faithfulness", "must be an object, got a number"),
    (
        "unknown metric",
        doc(thresholds={"context_entropy": {"min_score": 0.5}}),
        "thresholds.context_entropy",
        "unknown metric 'context_entropy'; known metrics: answer_relevancy, confidence, context_precision, "
        "context_recall, context_relevance, faithfulness, grounding, numeric_consistency, question_fit, "
        "semantic_similarity",
    ),
    ("manifest_id", doc(manifest_id="acme"), "manifest_id", "must match ^manifest_[a-zA-Z0-9_-]+$"),
    ("manifest_id newline", doc(manifest_id="manifest_a\n"), "manifest_id", "must match ^manifest_[a-zA-Z0-9_-]+$"),
    ("version shape", doc(version="2025-1"), "version", "must match ^[0-9]{4}-[0-9]{2}$ (YYYY-MM)"),
    ("version month", doc(version="2025-13"), "version", "month must be 01-12, got 13"),
    ("version month 00", doc(version="2025-00"), "version", "month must be 01-12, got 00"),
    ("uri shape", doc(manifest_uri="https://acme/2025-01"), "manifest_uri", "must match ^certus://manifests/[a-zA-Z0-9_-]+/[a-zA-Z0-9_.-]+$"),
    (
        "uri other workspace",
        doc(manifest_uri="certus://manifests/other/2025-01"),
        "manifest_uri",
        "must be certus://manifests/acme/2025-01 (certus://manifests/<workspace_id>/<version>)",
    ),
    ("workspace chars", doc(workspace_id="ac me"), "workspace_id", "must match ^[a-zA-Z0-9_-]{1,255}$"),
    ("workspace empty", doc(workspace_id=""), "workspace_id", "must match ^[a-zA-Z0-9_-]{1,255}$"),
    ("workspace 256", doc(workspace_id="a" * 256), "workspace_id", "must match ^[a-zA-Z0-9_-]{1,255}$"),
    ("signed_by empty", doc(signed_by="  "), "signed_by", "must not be empty"),
    ("mode", doc(default_mode="strict"), "default_mode", "must be one of shadow, enforce, async, disabled; got 'strict'"),
    ("timeout low", doc(timeout_ms=99), "timeout_ms", "must be between 100 and 30000, got 99"),
    ("timeout high", doc(timeout_ms=30001), "timeout_ms", "must be between 100 and 30000, got 30001"),
    ("timeout float", doc(timeout_ms=2000.5), "timeout_ms", "must be an integer, got a number"),
    ("overall > 1", doc(min_overall_score=1.01), "min_overall_score", "must be between 0 and 1, got 1.01"),
    ("flag string", doc(require_all_metrics_pass="yes"), "require_all_metrics_pass", "must be true or false, got a string"),
    ("log flag", doc(log_full_content=None), "log_full_content", "must be true or false, got null"),
    ("created_at", doc(created_at="yesterday"), "created_at", "must be an ISO 8601 date-time, e.g. 2025-01-15T09:30:00Z"),
    ("unknown top", doc(mode="shadow"), "mode", "unknown field"),
    ("guardrail type", doc(guardrails={"toxicity": {}}), "guardrails.toxicity", "unknown guardrail type; known: pii, prompt_injection, code_safety, data_exfiltration, jailbreak, vuln_hallucination"),
    ("guardrail severity", doc(guardrails={"pii": {"severity_threshold": "severe"}}), "guardrails.pii.severity_threshold", "must be one of low, medium, high, critical; got 'severe'"),
    ("guardrail confidence", doc(guardrails={"pii": {"confidence_threshold": 2}}), "guardrails.pii.confidence_threshold", "must be between 0 and 1, got 2"),
    ("guardrail extra", doc(guardrails={"pii": {"block": True}}), "guardrails.pii.block", "unknown field"),
    ("guardrails array", doc(guardrails=[]), "guardrails", "must be an object, got an array"),
    ("pii entities empty", doc(guardrails={"pii": {"entities": []}}), "guardrails.pii.entities",
     "must be a non-empty list of entity types (CREDIT_CARD, US_SSN, IBAN_CODE, EMAIL_ADDRESS, PHONE_NUMBER, IP_ADDRESS, "
     "STREET_ADDRESS, PERSON, LOCATION, DATE_TIME, DATE_OF_BIRTH, ORGANIZATION)"),
    ("pii entity unknown", doc(guardrails={"pii": {"entities": ["PERSON", "SHOE_SIZE"]}}), "guardrails.pii.entities[1]",
     "must be one of CREDIT_CARD, US_SSN, IBAN_CODE, EMAIL_ADDRESS, PHONE_NUMBER, IP_ADDRESS, STREET_ADDRESS, PERSON, "
     "LOCATION, DATE_TIME, DATE_OF_BIRTH, ORGANIZATION; got 'SHOE_SIZE'"),
    ("pii entity twice", doc(guardrails={"pii": {"entities": ["PERSON", "PERSON"]}}), "guardrails.pii.entities",
     "lists an entity type twice"),
    ("entities not pii", doc(guardrails={"jailbreak": {"entities": ["PERSON"]}}), "guardrails.jailbreak.entities",
     "only the pii guardrail takes entities"),
]


@pytest.mark.parametrize("name,document,field,description", CASES, ids=[c[0] for c in CASES])
def test_each_constraint_names_field_and_file(name: str, document: dict[str, Any], field: str, description: str) -> None:
    with pytest.raises(ManifestError) as ei:
        parse(document)
    got = [(v.field, v.description) for v in ei.value.violations]
    assert (field, description) in got, got
    assert f"{SRC}: {field}: {description}" in str(ei.value)


def test_required_fields() -> None:
    got = violations({"thresholds": {}})
    assert got == [(f, "required") for f in ("manifest_id", "manifest_uri", "workspace_id", "version", "signed_by")]


def test_all_violations_are_collected_not_just_the_first() -> None:
    d = doc(
        version="2025-13",
        timeout_ms=5,
        thresholds={"faithfulness": {"min_score": 0.9, "max_score": 0.1}, "bleu": {"min_score": 0.1}},
        surprise=1,
    )
    fields = [f for f, _ in violations(d)]
    assert fields == ["surprise", "version", "thresholds.faithfulness.max_score", "thresholds.bleu", "timeout_ms"]
    msg = str(pytest.raises(ManifestError, parse, d).value)
    assert msg.startswith("acme/2025-01.json: surprise: unknown field; acme/2025-01.json: version: month must be 01-12")


def test_expected_location_must_match_the_document() -> None:
    got = violations(doc(), expected_location=("globex", "2025-02"))
    assert got == [
        ("workspace_id", "is 'acme' but the file lies in the directory of workspace 'globex'"),
        ("version", "is '2025-01' but the file is named for version '2025-02'"),
    ]


@pytest.mark.parametrize(
    "raw,description",
    [
        (b'{"manifest_id": ', "invalid JSON: Expecting value (line 1, column 17)"),
        (b"[1, 2]", "must be an object, got an array"),
        (b'{"a": NaN}', "invalid JSON: NaN is not a valid number"),
        (b"\xff\xfe", "not UTF-8 (invalid start byte at byte 0)"),
    ],
)
def test_syntax_errors_name_the_file(raw: bytes, description: str) -> None:
    with pytest.raises(ManifestError) as ei:
        decode_document(raw, "json", SRC)
    assert [(v.field, v.description) for v in ei.value.violations] == [("<file>", description)]
    assert str(ei.value) == f"{SRC}: <file>: {description}"


def test_duplicate_json_keys_are_errors() -> None:
    raw = json.dumps(doc())[:-1] + ', "timeout_ms": 3000}'
    with pytest.raises(ManifestError) as ei:
        parse_bytes(raw.encode(), "json", source=SRC)
    assert [(v.field, v.description) for v in ei.value.violations] == [("timeout_ms", "duplicate key")]


def test_oversized_file_is_refused() -> None:
    with pytest.raises(ManifestError, match="the limit is 1048576"):
        decode_document(b" " * (1024 * 1024 + 1), "json", SRC)


TOML = """
manifest_id = "manifest_acme_2025_01"
manifest_uri = "certus://manifests/acme/2025-01"
workspace_id = "acme"
version = "2025-01"
signed_by = "security-team@acme.com"
default_mode = "shadow"
require_all_metrics_pass = false
min_overall_score = 0.7
timeout_ms = 2000
log_full_content = false

[thresholds.faithfulness]
min_score = 0.7
weight = 2.0
required = true

[thresholds.answer_relevancy]
min_score = 0.6
weight = 1.5
required = true
"""


def test_toml_and_json_of_the_same_document_are_the_same_manifest() -> None:
    a = parse(doc())
    b = parse_bytes(TOML.encode(), "toml", source="acme/2025-01.toml")
    assert b.digest == a.digest
    assert (b.thresholds, dict(b.guardrails), b.timeout_ms) == (a.thresholds, dict(a.guardrails), a.timeout_ms)


def test_toml_datetime_and_non_finite_numbers() -> None:
    raw = TOML.replace('log_full_content = false', 'log_full_content = false\ncreated_at = 2025-01-15T09:30:00Z')
    m = parse_bytes(raw.encode(), "toml", source="x.toml")
    assert m.created_at == datetime(2025, 1, 15, 9, 30, tzinfo=timezone.utc)
    with pytest.raises(ManifestError) as ei:
        parse_bytes(TOML.replace("min_score = 0.7", "min_score = inf").encode(), "toml", source="x.toml")
    assert [(v.field, v.description) for v in ei.value.violations] == [("thresholds.faithfulness.min_score", "must be a finite number")]
    with pytest.raises(ManifestError, match=r"x.toml: <file>: invalid TOML"):
        parse_bytes(b"manifest_id = ", "toml", source="x.toml")


def test_mlflow_experiment_name_is_accepted_for_seed_compatibility() -> None:
    assert parse(doc(mlflow_experiment_name="exp")).mlflow_experiment_name == "exp"


def test_build_manifest_rejects_non_object() -> None:
    with pytest.raises(ManifestError) as ei:
        build_manifest([], source=SRC)  # type: ignore[arg-type]
    assert str(ei.value) == f"{SRC}: : must be an object, got an array"


def test_embedded_default_is_valid_and_sensible() -> None:
    m = load_embedded_default()
    assert m.workspace_id == "default" and m.manifest_uri == "certus://manifests/default/2025-01"
    assert m.default_mode is Mode.SHADOW and m.timeout_ms == 2000
    assert set(m.thresholds) == {"faithfulness", "answer_relevancy", "confidence"}
    assert m.thresholds["confidence"].min_score == 0.7
    assert dict(m.guardrails) == seed_guardrail_defaults()
    # config defaults (DEFAULT_MODE, DEFAULT_EVALUATION_TIMEOUT_MS) apply to it
    m2 = load_embedded_default(ManifestDefaults(default_mode=Mode.ENFORCE, timeout_ms=500))
    assert m2.default_mode is Mode.ENFORCE and m2.timeout_ms == 500
