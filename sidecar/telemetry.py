"""Telemetry: the ONE module that configures logging, the tracer provider and span exporters.

Library modules only use the APIs: ``structlog.get_logger(__name__)`` and
``opentelemetry.trace.get_tracer(__name__)``. The ``serve`` command calls :func:`configure_logging`
and :func:`configure_tracing` once at start-up; tests call them to capture output or spans.

Logs: structlog, JSON by default (``LOG_FORMAT=text`` for a terminal), level from ``LOG_LEVEL``.
Every line written while a request is handled carries ``trace_id`` (and ``span_id``) from the
current OpenTelemetry span when there is one, else the request's own ``trace_id`` field, plus
``decision_id`` and ``workspace_id`` bound with ``structlog.contextvars`` by the pipeline. Standard
library logging (grpc, presidio, the OTLP exporter) goes through the same renderer at WARNING and
above. Log events carry ids, hashes, scores and locations only, never content.

Traces: the OpenTelemetry SDK is installed only when the standard ``OTEL_*`` variables ask for an
exporter (``OTEL_TRACES_EXPORTER`` or an ``OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT``); otherwise the API
stays a no-op and nothing is recorded or exported. Incoming W3C ``traceparent``/``tracestate`` gRPC
metadata is honoured either way (:func:`extract_context`), so the sidecar's spans join the caller's
trace. Span names and attribute keys follow the service spec (§3.3) and are defined here.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import logging
import sys
import threading
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, MutableMapping, Sequence, TextIO, TypeVar

import structlog
from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.propagators.textmap import Getter

from certus.sidecar.config import TelemetryConfig

if TYPE_CHECKING:  # the SDK is imported only when tracing is configured
    from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor, TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter

    from certus.sidecar.domain import EvaluationResult, Verdict

T = TypeVar("T")

# -- names (service spec §3.3) --------------------------------------------------------------------

SPAN_EVALUATE = "certus.evaluate.run"  # one evaluation (the pipeline); child of the RPC's server span
SPAN_VALIDATE = "certus.evaluate.validate"  # request limits -> domain input
SPAN_EMBED = "certus.evaluate.embed"  # texts through the batcher (wait + encoder)
SPAN_KERNELS = "certus.evaluate.kernels"  # scoring, in the stage pool
SPAN_GUARDRAILS = "certus.evaluate.guardrails"  # guardrail scan, in the stage pool
SPAN_POLICY = "certus.evaluate.policy"  # manifest policy -> verdict; one event per metric
SPAN_EVIDENCE = "certus.evaluate.evidence"  # sign + hash-chain + durable append to the local log
SPAN_INTEGRITY_BRIDGE = "certus.evaluate.integrity_bridge"  # one delivery attempt of the forwarder
EVENT_METRIC = "certus.metric"

ATTR_WORKSPACE_ID = "certus.workspace_id"
ATTR_DECISION_ID = "certus.decision_id"
ATTR_EVIDENCE_ID = "certus.evidence_id"
ATTR_MANIFEST_URI = "certus.manifest_uri"
ATTR_EVALUATION_MODE = "certus.evaluation.mode"
ATTR_EVALUATION_OUTCOME = "certus.evaluation.outcome"
ATTR_EVALUATION_SKIPPED = "certus.evaluation.skipped"
ATTR_SKIP_REASON = "certus.evaluation.skip_reason"
ATTR_OVERALL_SCORE = "certus.evaluation.overall_score"
ATTR_BLOCKED = "certus.evaluation.blocked"
ATTR_PENDING = "certus.evaluation.pending"
ATTR_METRIC_NAME = "certus.metric.name"
ATTR_METRIC_VALUE = "certus.metric.value"
ATTR_METRIC_PASSED = "certus.metric.passed"
ATTR_VIOLATIONS = "certus.guardrails.violations"
ATTR_TEXTS = "certus.embed.texts"
ATTR_CONTEXT_CHUNKS = "certus.request.context_chunks"
ATTR_FORWARD_SINK = "certus.forward.sink"
ATTR_FORWARD_RECORDS = "certus.forward.records"
ATTR_FORWARD_FIRST_SEQ = "certus.forward.first_seq"
ATTR_FORWARD_LAST_SEQ = "certus.forward.last_seq"
ATTR_FORWARD_ATTEMPT = "certus.forward.attempt"
ATTR_FORWARD_RESULT = "certus.forward.result"
ATTR_ERROR_TYPE = "error.type"  # OTel semantic convention: the exception's class name, never its message
ATTR_RPC_SYSTEM = "rpc.system"
ATTR_RPC_SERVICE = "rpc.service"
ATTR_RPC_METHOD = "rpc.method"
ATTR_RPC_GRPC_STATUS = "rpc.grpc.status_code"

# -- logging ----------------------------------------------------------------------------------------

_STDLIB_HANDLER_NAME = "certus-telemetry"
_root_level_before: int | None = None  # the root logger's level before configure_logging


def add_trace_context(_logger: Any, _method: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """structlog processor: ``trace_id``/``span_id`` of the current span, when there is one.

    A valid OpenTelemetry context wins over a ``trace_id`` bound from the request body, since that
    is the id the tracing backend knows."""
    ctx = trace.get_current_span().get_span_context()
    if ctx.is_valid:
        event_dict["trace_id"] = format(ctx.trace_id, "032x")
        event_dict["span_id"] = format(ctx.span_id, "016x")
    return event_dict


def _level(cfg: TelemetryConfig) -> int:
    level = logging.getLevelName(cfg.log_level.strip().upper())
    if not isinstance(level, int):
        raise ValueError(f"LOG_LEVEL: unknown level {cfg.log_level!r} (DEBUG, INFO, WARNING, ERROR, CRITICAL)")
    return level


def _renderer(cfg: TelemetryConfig) -> structlog.typing.Processor:
    fmt = cfg.log_format.strip().lower()
    if fmt == "json":
        return structlog.processors.JSONRenderer()
    if fmt == "text":
        return structlog.dev.ConsoleRenderer(colors=False)
    raise ValueError(f"LOG_FORMAT: must be json or text, got {cfg.log_format!r}")


def configure_logging(cfg: TelemetryConfig, stream: TextIO | None = None) -> None:
    """Configure structlog and route stdlib logging (WARNING+) through the same renderer.

    ``stream`` defaults to stderr. Calling it again replaces the previous set-up."""
    level = _level(cfg)
    renderer = _renderer(cfg)
    out = stream if stream is not None else sys.stderr
    shared: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        add_trace_context,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    structlog.configure(
        processors=[*shared, structlog.processors.dict_tracebacks, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(file=out),
        # Not cached, so a later configure_logging (tests, a changed level) reaches every module's
        # logger; the per-call cost is a few microseconds and the request path logs rarely.
        cache_logger_on_first_use=False,
    )
    handler = logging.StreamHandler(out)
    handler.set_name(_STDLIB_HANDLER_NAME)
    handler.setLevel(max(logging.WARNING, level))
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.dict_tracebacks,
                renderer,
            ],
        )
    )
    global _root_level_before
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == _STDLIB_HANDLER_NAME]:
        root.removeHandler(old)
    if _root_level_before is None:
        _root_level_before = root.level
    root.addHandler(handler)
    root.setLevel(handler.level)
    # Presidio's "decision process" trace (off unless asked for per call) has its own INFO stream
    # handler and may quote analysed text: send it through the root handler, which drops INFO.
    decision = logging.getLogger("decision_process")
    for h in list(decision.handlers):
        decision.removeHandler(h)
    decision.propagate = True


def unconfigure_logging() -> None:
    """Undo :func:`configure_logging` (tests): structlog defaults, our stdlib handler removed."""
    global _root_level_before
    structlog.reset_defaults()
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == _STDLIB_HANDLER_NAME]:
        root.removeHandler(old)
    if _root_level_before is not None:
        root.setLevel(_root_level_before)
        _root_level_before = None


# -- tracing: provider and exporters ----------------------------------------------------------------

TRACE_EXPORTERS = ("otlp", "console", "none")

_lock = threading.Lock()
_provider: "TracerProvider | None" = None
_switch: Any = None  # the _SwitchProcessor on the provider (its class needs the SDK, made lazily)
_sampler: Any = None  # the provider's _SwitchSampler


def traces_exporters(cfg: TelemetryConfig) -> tuple[str, ...]:
    """The exporters the configuration asks for; ``()`` means none (no SDK, nothing exported).

    ``OTEL_TRACES_EXPORTER`` (comma separated: otlp, console, none) wins; unset, OTLP is used when
    an OTLP endpoint is set, nothing otherwise. ``OTEL_SDK_DISABLED=true`` turns everything off."""
    if cfg.sdk_disabled:
        return ()
    raw = [n.strip().lower() for n in cfg.traces_exporter.split(",") if n.strip()]
    if not raw:
        return ("otlp",) if (cfg.otlp_endpoint or cfg.otlp_traces_endpoint) else ()
    unknown = [n for n in raw if n not in TRACE_EXPORTERS]
    if unknown:
        raise ValueError(f"OTEL_TRACES_EXPORTER: unknown exporter {unknown[0]!r} (otlp, console or none)")
    if "none" in raw:
        return ()
    return tuple(dict.fromkeys(raw))


def _otlp_exporter(cfg: TelemetryConfig) -> "SpanExporter":
    protocol = (cfg.otlp_protocol or "grpc").strip().lower()
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        # None: the exporter's own default (localhost:4317); headers, certificates, compression
        # and timeout come from the standard OTEL_EXPORTER_OTLP_* variables, read by the exporter.
        return OTLPSpanExporter(endpoint=(cfg.otlp_traces_endpoint or cfg.otlp_endpoint or None))
    if protocol == "http/protobuf":
        try:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import (  # type: ignore[import-not-found]
                OTLPSpanExporter as HttpSpanExporter,
            )
        except ImportError as exc:
            raise ValueError(
                "OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf needs the package "
                "opentelemetry-exporter-otlp-proto-http, which is not installed; use grpc"
            ) from exc
        endpoint = cfg.otlp_traces_endpoint or (
            cfg.otlp_endpoint.rstrip("/") + "/v1/traces" if cfg.otlp_endpoint else None
        )
        return HttpSpanExporter(endpoint=endpoint)  # type: ignore[no-any-return]
    raise ValueError(f"OTEL_EXPORTER_OTLP_PROTOCOL: must be grpc or http/protobuf, got {cfg.otlp_protocol!r}")


SAMPLERS = (
    "parentbased_always_on",
    "parentbased_always_off",
    "parentbased_traceidratio",
    "always_on",
    "always_off",
    "traceidratio",
)


def make_sampler(cfg: TelemetryConfig) -> Any:
    """The sampler ``OTEL_TRACES_SAMPLER``/``OTEL_TRACES_SAMPLER_ARG`` name (default: parent-based,
    always on: a caller's sampled flag is followed, root requests are all sampled)."""
    from opentelemetry.sdk.trace import sampling

    name = (cfg.traces_sampler or "parentbased_always_on").strip().lower()
    if name not in SAMPLERS:
        raise ValueError(f"OTEL_TRACES_SAMPLER: unknown sampler {cfg.traces_sampler!r} ({', '.join(SAMPLERS)})")
    if name.endswith("traceidratio"):
        try:
            ratio = float(cfg.traces_sampler_arg) if cfg.traces_sampler_arg.strip() else 1.0
        except ValueError:
            ratio = -1.0
        if not 0.0 <= ratio <= 1.0:
            raise ValueError(f"OTEL_TRACES_SAMPLER_ARG: a ratio in [0, 1], got {cfg.traces_sampler_arg!r}")
        root: Any = sampling.TraceIdRatioBased(ratio)
    else:
        root = sampling.ALWAYS_OFF if name.endswith("always_off") else sampling.ALWAYS_ON
    return sampling.ParentBased(root) if name.startswith("parentbased") else root


def _make_switch_sampler() -> Any:
    from opentelemetry.sdk.trace import sampling

    class _SwitchSampler(sampling.Sampler):
        """Delegates to a replaceable sampler (the provider's own is fixed at creation)."""

        def __init__(self) -> None:
            self.delegate: sampling.Sampler = sampling.DEFAULT_ON

        def should_sample(self, *args: Any, **kwargs: Any) -> sampling.SamplingResult:
            return self.delegate.should_sample(*args, **kwargs)

        def get_description(self) -> str:
            return self.delegate.get_description()

    return _SwitchSampler()


def _make_switch() -> Any:
    from opentelemetry.sdk.trace import SpanProcessor

    class _SwitchProcessor(SpanProcessor):
        """Forwards to a replaceable tuple of processors (the global provider can be set only once
        per process; what it exports to can change, e.g. between tests)."""

        def __init__(self) -> None:
            self.processors: tuple[SpanProcessor, ...] = ()

        def on_start(self, span: "Span", parent_context: Context | None = None) -> None:
            for p in self.processors:
                p.on_start(span, parent_context=parent_context)

        def _on_ending(self, span: "Span") -> None:
            for p in self.processors:
                p._on_ending(span)

        def on_end(self, span: "ReadableSpan") -> None:
            for p in self.processors:
                p.on_end(span)

        def shutdown(self) -> None:
            for p in self.processors:
                p.shutdown()

        def force_flush(self, timeout_millis: int = 30000) -> bool:
            return all(p.force_flush(timeout_millis) for p in self.processors)

    return _SwitchProcessor()


def configure_tracing(cfg: TelemetryConfig, exporters: Sequence["SpanExporter"] = ()) -> tuple[str, ...]:
    """Install the SDK tracer provider when the configuration (or a caller: ``exporters``, e.g. an
    in-memory exporter in tests, each behind a synchronous processor) asks for export.

    Returns the configured exporter names (``"custom"`` for each of ``exporters``). With none, and
    no provider installed earlier in this process, the OpenTelemetry API stays a no-op. Calling it
    again replaces the exporters (the previous ones are flushed and shut down)."""
    names = traces_exporters(cfg)
    sampler = make_sampler(cfg)  # validated even when nothing is exported
    processors: list[SpanProcessor] = []
    if names:
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter

        for name in names:
            exporter = _otlp_exporter(cfg) if name == "otlp" else ConsoleSpanExporter(out=sys.stderr)
            processors.append(BatchSpanProcessor(exporter))
    if exporters:
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor

        processors.extend(SimpleSpanProcessor(e) for e in exporters)
    global _provider, _switch, _sampler
    with _lock:
        if not processors and _provider is None:
            return ()
        if _provider is None or _switch is None:
            from opentelemetry.sdk.resources import Resource
            from opentelemetry.sdk.trace import TracerProvider

            from certus.sidecar import __version__

            _switch = _make_switch()
            _sampler = _make_switch_sampler()
            resource = Resource.create({"service.name": cfg.service_name, "service.version": __version__})
            _provider = TracerProvider(resource=resource, sampler=_sampler)
            _provider.add_span_processor(_switch)
            trace.set_tracer_provider(_provider)
        old, _switch.processors = _switch.processors, tuple(processors)
        _sampler.delegate = sampler
    for p in old:
        p.shutdown()
    return (*names, *("custom" for _ in exporters))


def shutdown_tracing() -> None:
    """Flush and stop the exporters (spans ended afterwards are dropped). Safe to call always."""
    with _lock:
        if _switch is None:
            return
        old, _switch.processors = _switch.processors, ()
    for p in old:
        p.shutdown()


def tracing_active() -> bool:
    """Whether spans are currently recorded and exported somewhere."""
    return _switch is not None and bool(_switch.processors)


# -- trace context from gRPC metadata ---------------------------------------------------------------


class _MetadataGetter(Getter[Iterable[Any]]):
    """Reads W3C trace-context keys from gRPC invocation metadata: ``(key, value)`` pairs."""

    def get(self, carrier: Iterable[Any], key: str) -> list[str] | None:
        found = [v for k, v in carrier if k == key and isinstance(v, str)]
        return found or None

    def keys(self, carrier: Iterable[Any]) -> list[str]:
        return [k for k, _ in carrier]


_METADATA_GETTER = _MetadataGetter()


def extract_context(metadata: Iterable[Any] | None) -> Context:
    """The caller's trace context from gRPC metadata (``traceparent``, ``tracestate``, via the
    globally configured propagators: W3C trace context + baggage by default)."""
    return propagate.extract(tuple(metadata or ()), getter=_METADATA_GETTER)


# -- context across executor hops -------------------------------------------------------------------


def in_context(fn: Callable[..., T]) -> Callable[..., T]:
    """``fn`` bound to a copy of the current ``contextvars`` context (current span, structlog
    bindings), for ``loop.run_in_executor``, which does not carry the context into the worker
    thread by itself. Make a fresh one per submission: a context can be entered by one thread at a
    time."""
    return functools.partial(contextvars.copy_context().run, fn)


# -- span helpers (API only) ------------------------------------------------------------------------


def current_trace_id() -> str:
    """32-hex trace id of the current span, or "" when there is no valid span context."""
    ctx = trace.get_current_span().get_span_context()
    return format(ctx.trace_id, "032x") if ctx.is_valid else ""


def set_error(span: trace.Span, exc: BaseException) -> None:
    """Mark a span failed with the exception's type only (its message might quote content)."""
    span.set_attribute(ATTR_ERROR_TYPE, type(exc).__name__)
    span.set_status(trace.Status(trace.StatusCode.ERROR, type(exc).__name__))


def record_result(span: trace.Span, result: "EvaluationResult") -> None:
    """The outcome of one evaluation on its span: ids, mode, outcome, scores; never content."""
    if not span.is_recording():
        return
    attrs: dict[str, Any] = {
        ATTR_DECISION_ID: result.evaluation_id,
        ATTR_MANIFEST_URI: result.manifest_uri,
        ATTR_EVALUATION_MODE: result.mode.value,
        ATTR_EVALUATION_OUTCOME: result.outcome.value,
        ATTR_EVALUATION_SKIPPED: result.skipped,
        ATTR_BLOCKED: result.blocked,
    }
    if result.evidence_id:
        attrs[ATTR_EVIDENCE_ID] = result.evidence_id
    if result.skip_reason:
        attrs[ATTR_SKIP_REASON] = result.skip_reason
    if result.pending:
        attrs[ATTR_PENDING] = True
    if result.overall_score is not None:
        attrs[ATTR_OVERALL_SCORE] = result.overall_score
    span.set_attributes(attrs)


def record_verdict(span: trace.Span, verdict: "Verdict") -> None:
    """Policy outcome on the policy span, with one ``certus.metric`` event per metric."""
    if not span.is_recording():
        return
    span.set_attribute(ATTR_EVALUATION_OUTCOME, verdict.outcome.value)
    span.set_attribute(ATTR_BLOCKED, verdict.blocked)
    span.set_attribute(ATTR_VIOLATIONS, len(verdict.violations))
    if verdict.overall_score is not None:
        span.set_attribute(ATTR_OVERALL_SCORE, verdict.overall_score)
    for m in verdict.metrics:
        span.add_event(
            EVENT_METRIC, {ATTR_METRIC_NAME: m.name, ATTR_METRIC_VALUE: m.value, ATTR_METRIC_PASSED: m.passed}
        )



@contextlib.contextmanager
def span(
    tracer: trace.Tracer,
    name: str,
    attributes: dict[str, Any] | None = None,
    kind: trace.SpanKind = trace.SpanKind.INTERNAL,
    context: Context | None = None,
) -> Iterator[trace.Span]:
    """A current span that, on an exception, records only its type (never the message).

    Only while spans are exported somewhere (:func:`tracing_active`); otherwise it yields the
    current span and creates nothing: a stage span that goes nowhere would only cost time (the
    RPC's server span, made by the servicer, still carries the caller's trace id to the logs)."""
    if not tracing_active():
        yield trace.get_current_span()
        return
    with tracer.start_as_current_span(
        name, context=context, kind=kind, attributes=attributes, record_exception=False, set_status_on_exception=False
    ) as s:
        try:
            yield s
        except BaseException as exc:
            set_error(s, exc)
            raise


def bind_decision(evaluation_id: str) -> None:
    """Once an evaluation has its id: on the current span and on every later log line."""
    trace.get_current_span().set_attribute(ATTR_DECISION_ID, evaluation_id)
    structlog.contextvars.bind_contextvars(decision_id=evaluation_id)
