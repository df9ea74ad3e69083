"""Tracing set-up: which exporter the OTEL_* settings select, OTLP export to a real gRPC collector
endpoint, the no-op default, W3C context extraction and content-free error recording."""

from __future__ import annotations

import concurrent.futures
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from opentelemetry import trace
from opentelemetry.proto.collector.trace.v1 import (
    trace_service_pb2,
    trace_service_pb2_grpc,
)
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from certus.sidecar import config as config_mod
from certus.sidecar import telemetry
from certus.sidecar.config import TelemetryConfig
from tests.conftest import OUTSIDE

ROOT = Path(__file__).resolve().parents[3]
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
SPAN_ID = "00f067aa0ba902b7"


def tcfg(env: dict[str, str]) -> TelemetryConfig:
    return config_mod.load(env=env).telemetry


@pytest.mark.parametrize(
    "env,expected",
    [
        ({}, ()),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4317"}, ("otlp",)),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4317"}, ("otlp",)),
        ({"OTEL_TRACES_EXPORTER": "otlp"}, ("otlp",)),
        ({"OTEL_TRACES_EXPORTER": "console,otlp"}, ("console", "otlp")),
        ({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4317"}, ()),
        ({"OTEL_SDK_DISABLED": "true", "OTEL_TRACES_EXPORTER": "otlp"}, ()),
    ],
)
def test_exporters_follow_the_standard_variables(env: dict[str, str], expected: tuple[str, ...]) -> None:
    assert telemetry.traces_exporters(tcfg(env)) == expected


def test_unknown_exporter_or_protocol_is_refused_with_the_variable_named() -> None:
    with pytest.raises(ValueError, match="OTEL_TRACES_EXPORTER"):
        telemetry.traces_exporters(tcfg({"OTEL_TRACES_EXPORTER": "zipkin"}))
    with pytest.raises(ValueError, match="OTEL_EXPORTER_OTLP_PROTOCOL"):
        telemetry.configure_tracing(tcfg({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "thrift"}))


def test_nothing_is_recorded_or_exported_when_unset() -> None:
    """In a fresh process (the provider is process-global): the serve path's set-up with no OTEL_*
    settings leaves the API a no-op, yet an incoming traceparent still reaches log lines."""
    code = (
        "from opentelemetry import trace\n"
        "from certus.sidecar import config, telemetry\n"
        "cfg = config.load(env={}).telemetry\n"
        "assert telemetry.configure_tracing(cfg) == ()\n"
        "assert not telemetry.tracing_active()\n"
        "assert type(trace.get_tracer_provider()).__name__ == 'ProxyTracerProvider'\n"
        "tracer = trace.get_tracer('t')\n"
        "with tracer.start_as_current_span('x') as s:\n"
        "    assert not s.is_recording() and not s.get_span_context().is_valid\n"
        f"ctx = telemetry.extract_context([('traceparent', '00-{TRACE_ID}-{SPAN_ID}-01')])\n"
        "with tracer.start_as_current_span('y', context=ctx) as s:\n"
        "    assert not s.is_recording()\n"
        f"    assert telemetry.current_trace_id() == '{TRACE_ID}'\n"
        "print('ok')\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    done = subprocess.run([sys.executable, "-c", code], cwd=OUTSIDE, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


class Collector(trace_service_pb2_grpc.TraceServiceServicer):
    """An OTLP/gRPC trace collector endpoint (the real protocol on a real socket)."""

    def __init__(self) -> None:
        self.requests: list[trace_service_pb2.ExportTraceServiceRequest] = []
        self.got = threading.Event()

    def Export(self, request, context):  # noqa: N802
        self.requests.append(request)
        self.got.set()
        return trace_service_pb2.ExportTraceServiceResponse()


@pytest.fixture
def collector() -> Iterator[tuple[Collector, int]]:
    server = grpc.server(concurrent.futures.ThreadPoolExecutor(2))
    svc = Collector()
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(svc, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield svc, port
    server.stop(0)
    telemetry.configure_tracing(TelemetryConfig())


def test_otlp_export_when_an_endpoint_is_set(collector: tuple[Collector, int]) -> None:
    svc, port = collector
    cfg = tcfg({"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}"})
    assert telemetry.configure_tracing(cfg) == ("otlp",)
    assert telemetry.tracing_active()
    tracer = trace.get_tracer("certus.test")
    parent = telemetry.extract_context([("traceparent", f"00-{TRACE_ID}-{SPAN_ID}-01")])
    with tracer.start_as_current_span(telemetry.SPAN_EVALUATE, context=parent) as span:
        span.set_attribute(telemetry.ATTR_WORKSPACE_ID, "acme")
    telemetry.shutdown_tracing()  # flushes the batch processor
    assert svc.got.wait(10), "the collector received nothing"
    exported = [
        s for r in svc.requests for rs in r.resource_spans for ss in rs.scope_spans for s in ss.spans
    ]
    [s] = [s for s in exported if s.name == telemetry.SPAN_EVALUATE]
    assert s.trace_id.hex() == TRACE_ID and s.parent_span_id.hex() == SPAN_ID
    assert {a.key: a.value.string_value for a in s.attributes} == {telemetry.ATTR_WORKSPACE_ID: "acme"}
    assert not telemetry.tracing_active()


def test_custom_exporters_replace_each_other() -> None:
    first, second = InMemorySpanExporter(), InMemorySpanExporter()
    tracer = trace.get_tracer("certus.test")
    try:
        assert telemetry.configure_tracing(TelemetryConfig(), exporters=[first]) == ("custom",)
        with tracer.start_as_current_span("one"):
            pass
        telemetry.configure_tracing(TelemetryConfig(), exporters=[second])
        with tracer.start_as_current_span("two"):
            pass
    finally:
        telemetry.configure_tracing(TelemetryConfig())
    with tracer.start_as_current_span("three"):
        pass
    assert [s.name for s in first.get_finished_spans()] == ["one"]
    assert [s.name for s in second.get_finished_spans()] == ["two"]


@pytest.mark.parametrize(
    "metadata",
    [
        [],
        [("traceparent", "00-00000000000000000000000000000000-00f067aa0ba902b7-01")],  # all-zero trace id
        [("traceparent", "not a traceparent")],
        [("traceparent-bin", b"\x00\x01")],
        [("x-other", "1")],
    ],
    ids=["none", "zero-trace", "garbage", "binary", "unrelated"],
)
def test_missing_or_malformed_traceparent_gives_no_parent(metadata: list) -> None:
    ctx = telemetry.extract_context(metadata)
    assert not trace.get_current_span(ctx).get_span_context().is_valid


def test_traceparent_and_tracestate_from_metadata() -> None:
    ctx = telemetry.extract_context(
        [("user-agent", "grpc"), ("traceparent", f"00-{TRACE_ID}-{SPAN_ID}-01"), ("tracestate", "a=1,b=2")]
    )
    sc = trace.get_current_span(ctx).get_span_context()
    assert sc.is_valid and sc.is_remote
    assert format(sc.trace_id, "032x") == TRACE_ID and format(sc.span_id, "016x") == SPAN_ID
    assert sc.trace_flags.sampled
    assert dict(sc.trace_state) == {"a": "1", "b": "2"}


def test_span_helper_records_the_error_type_never_the_message() -> None:
    exporter = InMemorySpanExporter()
    tracer = trace.get_tracer("certus.test")
    telemetry.configure_tracing(TelemetryConfig(), exporters=[exporter])
    try:
        with pytest.raises(ValueError):
            with telemetry.span(tracer, telemetry.SPAN_KERNELS):
                raise ValueError("the response said: my card is 4111 1111 1111 1111")
    finally:
        telemetry.configure_tracing(TelemetryConfig())
    [s] = exporter.get_finished_spans()
    assert s.status.status_code is StatusCode.ERROR
    assert s.status.description == "ValueError"
    assert s.attributes[telemetry.ATTR_ERROR_TYPE] == "ValueError"
    assert s.events == ()  # no exception event (it would carry the message)


@pytest.mark.parametrize(
    "env,description",
    [
        ({}, "ParentBased{root:AlwaysOnSampler,"),
        ({"OTEL_TRACES_SAMPLER": "always_off"}, "AlwaysOffSampler"),
        ({"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.25"}, "TraceIdRatioBased{0.25}"),
        ({"OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.1"}, "ParentBased{root:TraceIdRatioBased{0.1},"),
    ],
)
def test_sampler_from_the_standard_variables(env: dict[str, str], description: str) -> None:
    assert telemetry.make_sampler(tcfg(env)).get_description().startswith(description)


@pytest.mark.parametrize(
    "env,name",
    [
        ({"OTEL_TRACES_SAMPLER": "sometimes"}, "OTEL_TRACES_SAMPLER"),
        ({"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "1.5"}, "OTEL_TRACES_SAMPLER_ARG"),
        ({"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "half"}, "OTEL_TRACES_SAMPLER_ARG"),
    ],
)
def test_bad_sampler_settings_name_the_variable(env: dict[str, str], name: str) -> None:
    with pytest.raises(ValueError, match=name):
        telemetry.configure_tracing(tcfg(env))


def test_ratio_sampler_drops_roots_but_follows_a_sampled_caller() -> None:
    exporter = InMemorySpanExporter()
    tracer = trace.get_tracer("certus.test")
    cfg = tcfg({"OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0"})
    try:
        telemetry.configure_tracing(cfg, exporters=[exporter])
        for _ in range(20):
            with tracer.start_as_current_span("root"):
                pass
        sampled = telemetry.extract_context([("traceparent", f"00-{TRACE_ID}-{SPAN_ID}-01")])
        with tracer.start_as_current_span("child-of-sampled-caller", context=sampled):
            pass
    finally:
        telemetry.configure_tracing(TelemetryConfig())
    assert [s.name for s in exporter.get_finished_spans()] == ["child-of-sampled-caller"]
