"""The real sidecar on a free localhost port, called through the generated stubs."""

from __future__ import annotations

import concurrent.futures
import re
import threading
import uuid

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from certus.sidecar.protos import pb
from tests.conftest import field_violations

SHA256 = re.compile(r"sha256:[0-9a-f]{64}")

CONTEXT = [
    "The Normans were the people who in the 10th and 11th centuries gave their name to Normandy, a region in France.",
    "They were descended from Norse raiders and pirates from Denmark, Iceland and Norway who swore fealty to King Charles III.",
    "The Norman dynasty had a major political, cultural and military impact on medieval Europe.",
]


def request(**kw: object) -> pb.EvaluateRequest:
    base = dict(
        workspace_id="acme",
        query="Who gave their name to Normandy?",
        response="The Normans gave their name to Normandy, a region in France.",
        context=CONTEXT,
    )
    base.update(kw)
    return pb.EvaluateRequest(**base)


def test_evaluate_scores_signs_and_answers(sidecar) -> None:
    resp = sidecar.stub.Evaluate(request(trace_id="trace-1", request_id="r1"), timeout=60)
    names = {m.name: m for m in resp.metrics}
    for name in ("semantic_similarity", "grounding", "confidence", "faithfulness", "answer_relevancy", "context_relevance"):
        assert name in names, name
        assert 0.0 <= names[name].value <= 1.0
    assert uuid.UUID(resp.evaluation_id)
    assert SHA256.fullmatch(resp.evidence_id)
    assert resp.outcome in (pb.OUTCOME_PASS, pb.OUTCOME_WARNING, pb.OUTCOME_FAIL)
    assert resp.trace_id == "trace-1" and resp.request_id == "r1"
    assert resp.status == pb.EVALUATION_STATUS_COMPLETED
    assert not resp.skipped
    # one claim, supported by the first chunk
    assert len(resp.claims) == 1
    assert resp.claims[0].supported and resp.claims[0].chunk_index == 0
    assert resp.claims[0].start == 0 and resp.claims[0].end == len(request().response)
    assert names["faithfulness"].value == pytest.approx(resp.claims[0].support)
    assert names["faithfulness"].value >= 0.5
    assert (resp.claims[0].chunk_start, resp.claims[0].chunk_end) == (0, len(CONTEXT[0]))
    assert resp.claims[0].reason == ""
    assert names["grounding"].value > 0.8
    assert "question_fit" in names and "context_precision" in names and "context_recall" not in names


def test_a_reference_answer_adds_context_recall(sidecar) -> None:
    resp = sidecar.stub.Evaluate(
        request(reference="The Normans gave their name to Normandy. They descended from Norse raiders."), timeout=60
    )
    names = {m.name: m.value for m in resp.metrics}
    assert names["context_recall"] == 1.0


def test_unfaithful_answer_scores_low(sidecar) -> None:
    resp = sidecar.stub.Evaluate(
        request(response="The Normans came from Portugal in 1492. They invented the printing press."), timeout=60
    )
    names = {m.name: m.value for m in resp.metrics}
    assert names["faithfulness"] < 0.5
    assert all(not c.supported and c.chunk_index == -1 for c in resp.claims)
    assert [c.reason for c in resp.claims] == ["number_contradicted", "no_support"]  # 1492 is not in the context
    assert len(resp.claims) == 2


def test_measure_seed_examples(sidecar) -> None:
    wrong = sidecar.stub.Measure(
        pb.MeasureRequest(text1="Apple's Q4 revenue was $450 billion", text2="Apple reported Q4 revenue of $89.5B"),
        timeout=60,
    )
    assert wrong.matched is False
    assert wrong.numeric_consistency == 0.0
    assert wrong.semantic_score > 0.7  # similar sentences ...
    assert wrong.confidence < 0.7  # ... but the figure is wrong
    right = sidecar.stub.Measure(
        pb.MeasureRequest(text1="Apple's Q4 revenue was $89.5 billion", text2="Apple reported Q4 revenue of $89.5B"),
        timeout=60,
    )
    assert right.matched is True
    assert right.grounding_score == 1.0
    assert right.threshold == pytest.approx(0.7)


def test_get_info_serves_the_verification_key(sidecar) -> None:
    info = sidecar.stub.GetInfo(pb.GetInfoRequest(), timeout=10)
    assert len(info.public_key) == 32
    assert info.key_id.startswith("ed25519:")
    assert info.payload_type == "application/vnd.certus.decision+json"
    assert info.execution_provider == "CPUExecutionProvider"


def test_get_evaluation_unknown_id_is_not_found(sidecar) -> None:
    with pytest.raises(grpc.RpcError) as exc:
        sidecar.stub.GetEvaluation(pb.GetEvaluationRequest(evaluation_id=str(uuid.uuid4()), workspace_id="acme"), timeout=10)
    assert exc.value.code() == grpc.StatusCode.NOT_FOUND


LIMIT_CASES = [
    ("workspace_id", dict(workspace_id="")),
    ("workspace_id", dict(workspace_id="acme corp")),
    ("workspace_id", dict(workspace_id="a" * 256)),
    ("query", dict(query="")),
    ("query", dict(query="q" * 10_001)),
    ("response", dict(response="")),
    ("response", dict(response="r" * 50_001)),
    ("context", dict(context=["c"] * 51)),
    ("context[2]", dict(context=["a", "b", "c" * 10_001])),
    ("reference", dict(reference="r" * 50_001)),
    ("manifest_uri", dict(manifest_uri="https://example.com/manifest")),
    ("timeout_ms", dict(timeout_ms=99)),
    ("timeout_ms", dict(timeout_ms=30_001)),
    ("request_id", dict(request_id="x" * 129)),
]


@pytest.mark.parametrize("field,kw", LIMIT_CASES, ids=[f"{f}-{i}" for i, (f, _) in enumerate(LIMIT_CASES)])
def test_limits_are_invalid_argument_naming_the_field(sidecar, field: str, kw: dict) -> None:
    with pytest.raises(grpc.RpcError) as exc:
        sidecar.stub.Evaluate(request(**kw), timeout=30)
    assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in field_violations(exc.value)


def test_limits_at_the_boundary_are_accepted(sidecar) -> None:
    resp = sidecar.stub.Evaluate(
        request(workspace_id="a" * 255, context=["ctx"] * 50, timeout_ms=30_000, manifest_uri=""), timeout=60
    )
    assert SHA256.fullmatch(resp.evidence_id)


def test_every_violation_is_reported_at_once(sidecar) -> None:
    with pytest.raises(grpc.RpcError) as exc:
        sidecar.stub.Evaluate(request(workspace_id="", query="", timeout_ms=5), timeout=30)
    assert {"workspace_id", "query", "timeout_ms"} <= set(field_violations(exc.value))


def test_undecodable_bytes_are_invalid_argument(sidecar) -> None:
    call = sidecar.channel.unary_unary(
        "/certus.evaluate.v1.Evaluator/Evaluate", request_serializer=lambda b: b, response_deserializer=lambda b: b
    )
    # field 3 (response) declared as a string but holding invalid UTF-8
    with pytest.raises(grpc.RpcError) as exc:
        call(b"\x1a\x02\xff\xfe", timeout=10)
    assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "request" in field_violations(exc.value)


def test_concurrent_requests_are_batched_together(sidecar) -> None:
    stats = sidecar.app.batcher.stats
    merged_before, batches_before = stats.merged_batches, stats.batches
    tag = uuid.uuid4().hex  # fresh texts: nothing comes from the cache

    def call(i: int) -> pb.EvaluateResponse:
        return sidecar.stub.Evaluate(
            request(query=f"Question {i} {tag}?", response=f"Answer number {i} for {tag}.", context=[f"chunk {i} {tag}"]),
            timeout=60,
        )

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        results = list(pool.map(call, range(32)))
    assert all(SHA256.fullmatch(r.evidence_id) for r in results)
    assert stats.merged_batches > merged_before
    assert stats.max_requests_in_batch >= 2
    # 32 requests x 3 texts went through far fewer encoder calls than requests
    assert stats.batches - batches_before < 32


def test_repeated_context_chunks_come_from_the_cache(sidecar) -> None:
    cache = sidecar.app.batcher.cache
    chunk = f"A context chunk that repeats across requests {uuid.uuid4().hex}."
    sidecar.stub.Evaluate(request(context=[chunk]), timeout=60)
    hits = cache.hits
    sidecar.stub.Evaluate(request(query="Another question about it?", context=[chunk]), timeout=60)
    assert cache.hits >= hits + 1


def test_stream_answers_carry_request_ids_and_bad_items_fail_alone(sidecar) -> None:
    reqs = [request(request_id=f"id-{i}", response=f"The Normans gave their name to Normandy ({i}).") for i in range(10)]
    reqs.insert(4, request(request_id="bad", workspace_id="no spaces allowed"))
    answers = list(sidecar.stub.EvaluateStream(iter(reqs), timeout=120))
    by_id = {a.request_id: a for a in answers}
    assert set(by_id) == {f"id-{i}" for i in range(10)} | {"bad"}
    assert by_id["bad"].WhichOneof("result") == "error"
    assert by_id["bad"].error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert by_id["bad"].error.field_violations[0].field == "workspace_id"
    for i in range(10):
        assert by_id[f"id-{i}"].WhichOneof("result") == "response"
        assert SHA256.fullmatch(by_id[f"id-{i}"].response.evidence_id)


def test_client_disconnecting_mid_stream_leaves_the_server_healthy(sidecar) -> None:
    sent = threading.Event()

    def requests():
        for i in range(1000):
            yield request(request_id=f"gone-{i}", query=f"Question {i} {uuid.uuid4().hex}?")
            if i == 20:
                sent.set()

    call = sidecar.stub.EvaluateStream(requests(), timeout=120)
    first = next(call)
    assert first.request_id.startswith("gone-")
    sent.wait(30)
    call.cancel()
    # the server keeps serving, with a working pipeline
    resp = sidecar.stub.Evaluate(request(), timeout=60)
    assert SHA256.fullmatch(resp.evidence_id)
    health = health_pb2_grpc.HealthStub(sidecar.channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
    assert health.status == health_pb2.HealthCheckResponse.SERVING


def test_health_and_reflection_resolve_method_symbols(sidecar) -> None:
    health = health_pb2_grpc.HealthStub(sidecar.channel)
    assert (
        health.Check(health_pb2.HealthCheckRequest(service="certus.evaluate.v1.Evaluator"), timeout=10).status
        == health_pb2.HealthCheckResponse.SERVING
    )
    refl = reflection_pb2_grpc.ServerReflectionStub(sidecar.channel)

    def ask(**kw: str) -> reflection_pb2.ServerReflectionResponse:
        return next(iter(refl.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(**kw)]), timeout=10)))

    services = {s.name for s in ask(list_services="").list_services_response.service}
    assert "certus.evaluate.v1.Evaluator" in services
    for symbol in ("certus.evaluate.v1.Evaluator", "certus.evaluate.v1.Evaluator.Evaluate"):
        r = ask(file_containing_symbol=symbol)
        assert r.WhichOneof("message_response") == "file_descriptor_response", symbol
    missing = ask(file_containing_symbol="certus.evaluate.v1.Evaluator.NoSuchMethod")
    assert missing.WhichOneof("message_response") == "error_response"

