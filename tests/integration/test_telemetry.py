"""Telemetry of the real sidecar: spans (in-memory exporter), JSON logs and the Prometheus endpoint.

The sidecar runs on a free localhost port and is called through the generated stubs; the metrics
endpoint is scraped over HTTP like Prometheus would. Spans are captured by an in-memory exporter
installed through ``sidecar.telemetry.configure_tracing`` (the same API ``serve`` uses).
"""

from __future__ import annotations

import io
import json
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from prometheus_client.parser import text_string_to_metric_families

from certus.sidecar import telemetry
from certus.sidecar.config import TelemetryConfig
from certus.sidecar.protos import pb
from tests.conftest import RunningSidecar, make_config, start_sidecar

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_MANIFEST = ROOT / "sidecar" / "default_manifest.json"

# Every text of the requests carries this marker: no span attribute, event or log line may.
MARKER = "Quokkaville"
QUERY = f"Where did the {MARKER} ferry sail in 1987?"
RESPONSE = f"The {MARKER} ferry sailed to Rottnest Island in 1987."
CONTEXT = [
    f"In 1987 the {MARKER} ferry sailed from Fremantle to Rottnest Island twice a day.",
    f"The {MARKER} ferry was retired in 1995 after forty years of service.",
]
PII_RESPONSE = f"The {MARKER} ferry office is reachable at jane.doe@example.com or 4111 1111 1111 1111."

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_SPAN_ID = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_SPAN_ID}-01"
STAGES = {
    telemetry.SPAN_VALIDATE,
    telemetry.SPAN_EVALUATE,
    telemetry.SPAN_EMBED,
    telemetry.SPAN_KERNELS,
    telemetry.SPAN_GUARDRAILS,
    telemetry.SPAN_POLICY,
    telemetry.SPAN_EVIDENCE,
}
RPC_EVALUATE = "certus.evaluate.v1.Evaluator/Evaluate"


def request(workspace_id: str = "acme", response: str = RESPONSE, query: str = QUERY, **kw: Any) -> pb.EvaluateRequest:
    return pb.EvaluateRequest(workspace_id=workspace_id, query=query, response=response, context=CONTEXT, **kw)


def write_manifest(manifest_dir: Path, workspace: str) -> None:
    doc = json.loads(DEFAULT_MANIFEST.read_text())
    doc.update(
        manifest_id=f"manifest_{workspace}_2025_06",
        manifest_uri=f"certus://manifests/{workspace}/2025-06",
        workspace_id=workspace,
        version="2025-06",
    )
    path = manifest_dir / workspace / "2025-06.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc))


@pytest.fixture(scope="module")
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    assert telemetry.configure_tracing(TelemetryConfig(), exporters=[exporter]) == ("custom",)
    yield exporter
    telemetry.configure_tracing(TelemetryConfig())  # back to exporting nothing


@pytest.fixture(scope="module")
def sc(tmp_path_factory: pytest.TempPathFactory, encoder: Any, spans: InMemorySpanExporter) -> Iterator[RunningSidecar]:
    tmp = tmp_path_factory.mktemp("telemetry")
    cfg = make_config(
        tmp,
        server={"metrics_address": "127.0.0.1:0"},
        telemetry={"metrics_max_workspaces": 2},
        forwarder={"sink": "file"},
    )
    write_manifest(cfg.manifests.manifest_dir, "acme")  # a workspace with a manifest: always labelled
    running = start_sidecar(cfg, encoder=encoder)
    yield running
    running.stop()


@pytest.fixture
def logs() -> Iterator[io.StringIO]:
    buf = io.StringIO()
    telemetry.configure_logging(TelemetryConfig(log_level="DEBUG", log_format="json"), stream=buf)
    yield buf
    telemetry.unconfigure_logging()


def wait_for(predicate: Any, timeout_s: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.02)


def trace_spans(exporter: InMemorySpanExporter, trace_id: int, names: set[str]) -> dict[str, ReadableSpan]:
    """The spans of one trace by name, once every name in ``names`` has ended."""

    def get() -> dict[str, ReadableSpan] | None:
        found = {s.name: s for s in exporter.get_finished_spans() if s.context.trace_id == trace_id}
        return found if names <= found.keys() else None

    found = wait_for(get)
    assert found is not None, f"spans missing from trace {trace_id:032x}"
    return found


def strings_of(span: ReadableSpan) -> list[str]:
    out = [span.name, *(str(v) for v in (span.attributes or {}).values())]
    for event in span.events:
        out.append(event.name)
        out.extend(str(v) for v in (event.attributes or {}).values())
    if span.status.description:
        out.append(span.status.description)
    return out


def scrape(sc: RunningSidecar) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    port = sc.app.metrics_server.port
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain")
        text = resp.read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, frozenset(s.labels.items()))] = s.value
    return samples


def value(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def delta(after: dict, before: dict, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


# -- traces ------------------------------------------------------------------------------------------


def test_traceparent_joins_the_callers_trace_with_a_span_per_stage(sc: RunningSidecar, spans: InMemorySpanExporter) -> None:
    metadata = (("traceparent", TRACEPARENT), ("tracestate", "vendor=opaque1"))
    resp = sc.stub.Evaluate(request(), metadata=metadata, timeout=60)
    found = trace_spans(spans, int(TRACE_ID, 16), STAGES | {RPC_EVALUATE})

    server = found[RPC_EVALUATE]
    assert server.kind is SpanKind.SERVER
    assert server.parent is not None and server.parent.is_remote
    assert format(server.parent.span_id, "016x") == PARENT_SPAN_ID
    assert server.context.trace_state.get("vendor") == "opaque1"
    assert server.attributes["rpc.system"] == "grpc"
    assert server.attributes["rpc.method"] == "Evaluate"
    assert server.attributes["rpc.grpc.status_code"] == 0

    run = found[telemetry.SPAN_EVALUATE]
    assert found[telemetry.SPAN_VALIDATE].parent.span_id == server.context.span_id
    assert run.parent.span_id == server.context.span_id
    # the kernels and guardrails spans are made in pool threads: they still hang under the run span
    for stage in STAGES - {telemetry.SPAN_VALIDATE, telemetry.SPAN_EVALUATE}:
        assert found[stage].parent.span_id == run.context.span_id, stage

    attrs = run.attributes
    assert attrs[telemetry.ATTR_WORKSPACE_ID] == "acme"
    assert attrs[telemetry.ATTR_DECISION_ID] == resp.evaluation_id
    assert attrs[telemetry.ATTR_EVIDENCE_ID] == resp.evidence_id
    assert attrs[telemetry.ATTR_MANIFEST_URI] == "certus://manifests/acme/2025-06" == resp.manifest_uri
    assert attrs[telemetry.ATTR_EVALUATION_MODE] == "shadow"
    assert attrs[telemetry.ATTR_EVALUATION_OUTCOME] == pb.Outcome.Name(resp.outcome).removeprefix("OUTCOME_").lower()
    assert attrs[telemetry.ATTR_EVALUATION_SKIPPED] is False
    assert attrs[telemetry.ATTR_OVERALL_SCORE] == pytest.approx(resp.overall_score)
    assert found[telemetry.SPAN_EVIDENCE].attributes[telemetry.ATTR_EVIDENCE_ID] == resp.evidence_id

    # one event per metric on the policy span, with the values the caller got
    policy = found[telemetry.SPAN_POLICY]
    events = {e.attributes[telemetry.ATTR_METRIC_NAME]: e.attributes for e in policy.events if e.name == telemetry.EVENT_METRIC}
    assert set(events) == {m.name for m in resp.metrics}
    for m in resp.metrics:
        assert events[m.name][telemetry.ATTR_METRIC_VALUE] == pytest.approx(m.value)
        assert events[m.name][telemetry.ATTR_METRIC_PASSED] == m.passed


def test_no_span_carries_request_content(sc: RunningSidecar, spans: InMemorySpanExporter) -> None:
    trace_id = "0af7651916cd43dd8448eb211c80319c"
    metadata = (("traceparent", f"00-{trace_id}-b7ad6b7169203331-01"),)
    resp = sc.stub.Evaluate(request(response=PII_RESPONSE), metadata=metadata, timeout=60)
    assert resp.guardrail_violations  # the PII path ran and reported
    found = trace_spans(spans, int(trace_id, 16), STAGES | {RPC_EVALUATE})
    texts = [QUERY, PII_RESPONSE, *CONTEXT, "jane.doe@example.com", "4111 1111 1111 1111", MARKER]
    for span in found.values():
        for s in strings_of(span):
            for text in texts:
                assert text.lower() not in s.lower(), (span.name, s)
    assert found[telemetry.SPAN_GUARDRAILS].attributes[telemetry.ATTR_VIOLATIONS] >= len(resp.guardrail_violations)


def test_without_traceparent_the_server_span_starts_a_trace(sc: RunningSidecar, spans: InMemorySpanExporter) -> None:
    resp = sc.stub.Evaluate(request(request_id="no-parent"), timeout=60)

    def run_span() -> ReadableSpan | None:
        for s in spans.get_finished_spans():
            if s.name == telemetry.SPAN_EVALUATE and s.attributes.get(telemetry.ATTR_DECISION_ID) == resp.evaluation_id:
                return s
        return None

    run = wait_for(run_span)
    assert run is not None
    server = trace_spans(spans, run.context.trace_id, {RPC_EVALUATE})[RPC_EVALUATE]
    assert server.parent is None
    assert run.parent.span_id == server.context.span_id


def test_invalid_request_is_a_span_with_the_status_and_no_content(sc: RunningSidecar, spans: InMemorySpanExporter) -> None:
    trace_id = "11111111111111111111111111111111"
    metadata = (("traceparent", f"00-{trace_id}-2222222222222222-01"),)
    with pytest.raises(grpc.RpcError) as err:
        sc.stub.Evaluate(request(workspace_id=f"bad {MARKER}"), metadata=metadata, timeout=30)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    found = trace_spans(spans, int(trace_id, 16), {RPC_EVALUATE, telemetry.SPAN_VALIDATE})
    server, validate = found[RPC_EVALUATE], found[telemetry.SPAN_VALIDATE]
    assert server.attributes["rpc.grpc.status_code"] == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert server.status.status_code is StatusCode.UNSET  # the caller's mistake, not a server fault
    assert validate.attributes[telemetry.ATTR_ERROR_TYPE] == "InvalidArgument"
    assert validate.status.status_code is StatusCode.ERROR
    assert telemetry.SPAN_EVALUATE not in found
    for span in found.values():
        assert not any(MARKER.lower() in s.lower() for s in strings_of(span))


def test_forwarding_is_traced(sc: RunningSidecar, spans: InMemorySpanExporter) -> None:
    sc.stub.Evaluate(request(request_id="forward-me"), timeout=60)
    last_seq = sc.app.evidence.last_seq

    def bridge() -> ReadableSpan | None:
        for s in spans.get_finished_spans():
            if s.name == telemetry.SPAN_INTEGRITY_BRIDGE and s.attributes[telemetry.ATTR_FORWARD_LAST_SEQ] >= last_seq:
                return s
        return None

    span = wait_for(bridge)
    assert span is not None, "no delivery span"
    assert span.kind is SpanKind.CLIENT
    assert span.parent is None  # delivery is its own trace
    assert span.attributes[telemetry.ATTR_FORWARD_SINK] == "file"
    assert span.attributes[telemetry.ATTR_FORWARD_RESULT] == "answered"
    first, last = span.attributes[telemetry.ATTR_FORWARD_FIRST_SEQ], span.attributes[telemetry.ATTR_FORWARD_LAST_SEQ]
    assert span.attributes[telemetry.ATTR_FORWARD_RECORDS] == last - first + 1


def test_stream_items_hang_under_the_stream_span(sc: RunningSidecar, spans: InMemorySpanExporter) -> None:
    trace_id = "33333333333333333333333333333333"
    metadata = (("traceparent", f"00-{trace_id}-4444444444444444-01"),)
    reqs = [request(request_id=f"s{i}") for i in range(3)]
    answers = list(sc.stub.EvaluateStream(iter(reqs), metadata=metadata, timeout=60))
    assert sorted(a.request_id for a in answers) == ["s0", "s1", "s2"]

    def get() -> list[ReadableSpan] | None:
        mine = [s for s in spans.get_finished_spans() if s.context.trace_id == int(trace_id, 16)]
        runs = [s for s in mine if s.name == telemetry.SPAN_EVALUATE]
        streams = [s for s in mine if s.name.endswith("/EvaluateStream")]
        return mine if len(runs) == 3 and streams else None

    mine = wait_for(get)
    assert mine is not None
    stream = next(s for s in mine if s.name.endswith("/EvaluateStream"))
    assert format(stream.parent.span_id, "016x") == "4444444444444444"
    runs = [s for s in mine if s.name == telemetry.SPAN_EVALUATE]
    assert {r.attributes[telemetry.ATTR_DECISION_ID] for r in runs} == {a.response.evaluation_id for a in answers}
    assert all(r.parent.span_id == stream.context.span_id for r in runs)


# -- logs --------------------------------------------------------------------------------------------


def test_log_lines_of_a_request_carry_trace_decision_and_workspace(sc: RunningSidecar, logs: io.StringIO) -> None:
    trace_id = "5bf92f3577b34da6a3ce929d0e0e4736"
    metadata = (("traceparent", f"00-{trace_id}-{PARENT_SPAN_ID}-01"),)
    resp = sc.stub.Evaluate(request(response=PII_RESPONSE), metadata=metadata, timeout=60)
    lines = [json.loads(line) for line in logs.getvalue().splitlines() if line.strip()]
    finished = [e for e in lines if e.get("event") == "evaluation_finished" and e.get("decision_id") == resp.evaluation_id]
    assert len(finished) == 1
    line = finished[0]
    assert line["trace_id"] == trace_id
    assert line["workspace_id"] == "acme"
    assert line["evidence_id"] == resp.evidence_id
    assert line["level"] == "debug"
    assert line["outcome"] in ("pass", "fail", "warning")
    # every line about this decision is in its trace; no line anywhere quotes the request
    for e in lines:
        if e.get("decision_id") == resp.evaluation_id:
            assert e["trace_id"] == trace_id and e["workspace_id"] == "acme"
    raw = logs.getvalue().lower()
    for text in (MARKER, "jane.doe@example.com", "4111 1111 1111 1111"):
        assert text.lower() not in raw


# -- metrics -----------------------------------------------------------------------------------------


def test_metrics_endpoint_counts_evaluations_with_bounded_labels(sc: RunningSidecar) -> None:
    before = scrape(sc)
    fresh = f"The {MARKER} ferry carried {time.time_ns() % 100_000} passengers in 1987."  # not cached yet
    answers = [sc.stub.Evaluate(request(), timeout=60), sc.stub.Evaluate(request(response=fresh), timeout=60)]
    answers.append(sc.stub.Evaluate(request(response=PII_RESPONSE), timeout=60))
    # metrics_max_workspaces=2: two unknown workspaces keep their id, the third is "other"
    others = {ws: sc.stub.Evaluate(request(workspace_id=ws), timeout=60) for ws in ("ws-one", "ws-two", "ws-three")}
    with pytest.raises(grpc.RpcError):
        sc.stub.Evaluate(request(query=""), timeout=30)
    after = scrape(sc)

    outcomes = Counter(pb.Outcome.Name(a.outcome).removeprefix("OUTCOME_").lower() for a in answers)
    for outcome, n in outcomes.items():
        assert delta(after, before, "certus_evaluate_requests_total", workspace_id="acme", mode="shadow", outcome=outcome) == n
    assert delta(after, before, "certus_evaluate_request_duration_seconds_count", workspace_id="acme", mode="shadow") == 3
    # scores: one observation per metric per answer, summing to what the callers were told
    faith = [m.value for a in answers for m in a.metrics if m.name == "faithfulness"]
    labels = dict(workspace_id="acme", metric_name="faithfulness", framework="certus")
    assert delta(after, before, "certus_evaluate_metric_score_count", **labels) == len(faith) == 3
    assert delta(after, before, "certus_evaluate_metric_score_sum", **labels) == pytest.approx(sum(faith))
    # guardrail violations as reported to the caller, by type and severity
    reported = Counter(
        (pb.GuardrailType.Name(v.guardrail_type).removeprefix("GUARDRAIL_TYPE_").lower(),
         pb.Severity.Name(v.severity).removeprefix("SEVERITY_").lower())
        for a in answers
        for v in a.guardrail_violations
    )
    assert reported, "the PII answer should report violations"
    for (gtype, severity), n in reported.items():
        assert delta(
            after, before, "certus_evaluate_guardrail_violations_total", workspace_id="acme", guardrail_type=gtype, severity=severity
        ) == n

    # label cardinality: the third unknown workspace is counted as "other"
    for ws in ("ws-one", "ws-two"):
        assert sum(
            delta(after, before, "certus_evaluate_requests_total", workspace_id=ws, mode="shadow", outcome=o)
            for o in ("pass", "fail", "warning")
        ) == 1
    assert not any(("workspace_id", "ws-three") in labels for _, labels in after)
    assert sum(
        delta(after, before, "certus_evaluate_requests_total", workspace_id="other", mode="shadow", outcome=o)
        for o in ("pass", "fail", "warning")
    ) == 1
    assert others["ws-three"].evidence_id  # the request itself was served normally

    # every RPC by status code, the refused one included
    assert delta(after, before, "certus_evaluate_grpc_requests_total", method="Evaluate", code="OK") == 6
    assert delta(after, before, "certus_evaluate_grpc_requests_total", method="Evaluate", code="INVALID_ARGUMENT") == 1
    # each evaluation appended one signed decision
    assert delta(after, before, "certus_evaluate_evidence_append_seconds_count") == 6
    assert value(after, "certus_evaluate_evidence_last_seq") == sc.app.evidence.last_seq
    # encoder batches: the histogram's sum is exactly the texts the batcher encoded
    assert delta(after, before, "certus_evaluate_encoder_batch_size_count") == delta(
        after, before, "certus_evaluate_encoder_batches_total"
    ) >= 1
    assert delta(after, before, "certus_evaluate_encoder_batch_size_sum") == delta(
        after, before, "certus_evaluate_encoder_texts_total"
    )
    # state read at scrape time
    assert value(after, "certus_evaluate_batcher_queue_depth") == 0
    assert value(after, "certus_evaluate_circuit_breaker_state", sink="file") == 0
    assert ("certus_evaluate_outbox_backlog", frozenset()) in after
    info = sc.stub.GetInfo(pb.GetInfoRequest(), timeout=10)
    assert any(
        name == "certus_evaluate_service_info" and ("key_id", info.key_id) in labels and v == 1.0
        for (name, labels), v in after.items()
    )
    # garbage collections, timed since start (generation 2: full passes, GIL held)
    assert value(after, "certus_evaluate_gc_passes_total", generation="0") > 0
    assert value(after, "certus_evaluate_gc_pause_seconds_total", generation="0") > 0
    assert ("certus_evaluate_gc_full_pause_max_seconds", frozenset()) in after
    assert int(info.details["gc.young_passes"]) > 0 and "gc.full_pause_ms_max" in info.details


def test_repeated_request_is_served_from_the_embedding_cache(sc: RunningSidecar) -> None:
    sc.stub.Evaluate(request(request_id="cache-1"), timeout=60)
    before = scrape(sc)
    sc.stub.Evaluate(request(request_id="cache-2"), timeout=60)
    after = scrape(sc)
    assert delta(after, before, "certus_evaluate_embedding_cache_misses_total") == 0
    hits = delta(after, before, "certus_evaluate_embedding_cache_hits_total")
    assert hits > 0
    assert delta(after, before, "certus_evaluate_encoder_batch_size_count") == 0  # nothing new to encode
    ratio = value(after, "certus_evaluate_embedding_cache_hit_ratio")
    hits_total = value(after, "certus_evaluate_embedding_cache_hits_total")
    misses_total = value(after, "certus_evaluate_embedding_cache_misses_total")
    assert ratio == pytest.approx(hits_total / (hits_total + misses_total))


def test_rate_limit_refusals_are_counted_and_the_endpoint_stops_with_the_sidecar(tmp_path: Path, encoder: Any) -> None:
    cfg = make_config(
        tmp_path, server={"metrics_address": "127.0.0.1:0"}, auth={"rate_limit_rps": 0.001, "rate_limit_burst": 1}
    )
    running = start_sidecar(cfg, encoder=encoder)
    port = running.app.metrics_server.port
    try:
        running.stub.Evaluate(request(workspace_id="limited"), timeout=60)
        with pytest.raises(grpc.RpcError) as err:
            running.stub.Evaluate(request(workspace_id="limited"), timeout=60)
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        after = scrape(running)
    finally:
        running.stop()
    assert value(after, "certus_evaluate_rate_limited_total") == 1
    assert value(after, "certus_evaluate_rate_limit_buckets") == 1
    assert value(after, "certus_evaluate_grpc_requests_total", method="Evaluate", code="RESOURCE_EXHAUSTED") == 1
    assert value(after, "certus_evaluate_grpc_requests_total", method="Evaluate", code="OK") == 1
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5)
