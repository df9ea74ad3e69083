"""Logging set-up: JSON/text rendering, levels, trace/log context, stdlib routing, thread hops."""

from __future__ import annotations

import concurrent.futures
import io
import json
import logging
import threading
from collections.abc import Iterator

import pytest
import structlog
from opentelemetry import trace

from certus.sidecar import telemetry
from certus.sidecar.config import TelemetryConfig

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


class _TestThreadsOnly(io.StringIO):
    """Keeps what this test's threads write: a sidecar started by another test (session fixtures)
    keeps logging from its own background threads into whatever stream is configured."""

    def __init__(self) -> None:
        super().__init__()
        self._foreign = {t.ident for t in threading.enumerate() if t is not threading.main_thread()}

    def write(self, s: str) -> int:
        if threading.get_ident() in self._foreign:
            return len(s)
        return super().write(s)


@pytest.fixture
def out() -> Iterator[io.StringIO]:
    buf = _TestThreadsOnly()
    yield buf
    telemetry.unconfigure_logging()


def lines(buf: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in buf.getvalue().splitlines() if line.strip()]


def test_json_by_default_with_level_and_timestamp(out: io.StringIO) -> None:
    telemetry.configure_logging(TelemetryConfig(), stream=out)
    structlog.get_logger("certus.test").info("evaluated", decision_id="d-1", score=0.5)
    [line] = lines(out)
    assert line["event"] == "evaluated"
    assert line["decision_id"] == "d-1" and line["score"] == 0.5
    assert line["level"] == "info"
    assert line["timestamp"].endswith("Z")


def test_text_format_for_a_terminal(out: io.StringIO) -> None:
    telemetry.configure_logging(TelemetryConfig(log_format="text"), stream=out)
    structlog.get_logger("certus.test").warning("breaker_open", sink="grpc")
    text = out.getvalue()
    assert "breaker_open" in text and "sink=grpc" in text and "warning" in text
    with pytest.raises(json.JSONDecodeError):
        json.loads(text)


def test_level_filters(out: io.StringIO) -> None:
    telemetry.configure_logging(TelemetryConfig(log_level="WARNING"), stream=out)
    log = structlog.get_logger("certus.test")
    log.debug("dropped_debug")
    log.info("dropped_info")
    log.warning("kept")
    assert [line["event"] for line in lines(out)] == ["kept"]


@pytest.mark.parametrize(
    "cfg,name", [(TelemetryConfig(log_level="LOUD"), "LOG_LEVEL"), (TelemetryConfig(log_format="xml"), "LOG_FORMAT")]
)
def test_bad_settings_name_the_variable(cfg: TelemetryConfig, name: str) -> None:
    with pytest.raises(ValueError, match=name):
        telemetry.configure_logging(cfg, stream=io.StringIO())


def test_reconfiguring_reaches_loggers_already_used(out: io.StringIO) -> None:
    log = structlog.get_logger("certus.test")
    telemetry.configure_logging(TelemetryConfig(), stream=io.StringIO())
    log.info("first")
    telemetry.configure_logging(TelemetryConfig(), stream=out)
    log.info("second")
    assert [line["event"] for line in lines(out)] == ["second"]


def test_stdlib_warnings_go_through_the_same_renderer_info_does_not(out: io.StringIO) -> None:
    telemetry.configure_logging(TelemetryConfig(log_level="DEBUG"), stream=out)
    logging.getLogger("grpc._server").warning("handler %s failed", "Evaluate")
    logging.getLogger("presidio-analyzer").info("loaded recognizers")
    logging.getLogger("decision_process").info("explanation that could quote text")
    [line] = lines(out)
    assert line == {
        "event": "handler Evaluate failed",
        "level": "warning",
        "logger": "grpc._server",
        "timestamp": line["timestamp"],
    }


def test_unconfigure_removes_the_stdlib_handler() -> None:
    root = logging.getLogger()
    level = root.level
    telemetry.configure_logging(TelemetryConfig(), stream=io.StringIO())
    telemetry.configure_logging(TelemetryConfig(), stream=io.StringIO())
    assert sum(h.get_name() == "certus-telemetry" for h in root.handlers) == 1
    telemetry.unconfigure_logging()
    assert not any(h.get_name() == "certus-telemetry" for h in root.handlers)
    assert root.level == level


def test_bound_context_and_trace_ids_on_every_line(out: io.StringIO) -> None:
    telemetry.configure_logging(TelemetryConfig(), stream=out)
    log = structlog.get_logger("certus.test")
    parent = telemetry.extract_context([("traceparent", TRACEPARENT)])
    with trace.use_span(trace.NonRecordingSpan(trace.get_current_span(parent).get_span_context())):
        with structlog.contextvars.bound_contextvars(workspace_id="acme", decision_id="d-7"):
            log.info("inside")
    log.info("outside")
    inside, outside = lines(out)
    assert inside["trace_id"] == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert inside["span_id"] == "00f067aa0ba902b7"
    assert inside["workspace_id"] == "acme" and inside["decision_id"] == "d-7"
    assert not {"trace_id", "span_id", "workspace_id", "decision_id"} & outside.keys()


def test_request_trace_id_is_kept_when_there_is_no_span(out: io.StringIO) -> None:
    telemetry.configure_logging(TelemetryConfig(), stream=out)
    with structlog.contextvars.bound_contextvars(trace_id="caller-trace-1"):
        structlog.get_logger("certus.test").info("no_span")
    assert lines(out)[0]["trace_id"] == "caller-trace-1"


def test_in_context_carries_span_and_bindings_into_pool_threads(out: io.StringIO) -> None:
    telemetry.configure_logging(TelemetryConfig(), stream=out)
    log = structlog.get_logger("certus.test")
    parent = telemetry.extract_context([("traceparent", TRACEPARENT)])
    span = trace.NonRecordingSpan(trace.get_current_span(parent).get_span_context())

    def work(tag: str) -> str:
        log.info("in_worker", tag=tag)
        return telemetry.current_trace_id()

    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        with trace.use_span(span), structlog.contextvars.bound_contextvars(decision_id="d-9"):
            carried = pool.submit(telemetry.in_context(work), "carried").result()
            plain = pool.submit(work, "plain").result()
    by_tag = {line["tag"]: line for line in lines(out)}
    assert carried == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert by_tag["carried"]["decision_id"] == "d-9"
    assert by_tag["carried"]["trace_id"] == carried
    # without it a pool thread sees neither (this is what in_context is for)
    assert plain == ""
    assert "decision_id" not in by_tag["plain"] and "trace_id" not in by_tag["plain"]
