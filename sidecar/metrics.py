"""Prometheus metrics, in a registry of the sidecar's own (never the process-global default).

What the request path updates (counters and histograms; a label lookup and a lock each):

- ``certus_evaluate_requests_total{workspace_id,mode,outcome}`` (service spec §5.2): one per
  evaluation answered; ``outcome`` is pass | fail | warning | skipped, ``pending`` for an accepted
  async request, ``error`` when the evaluation failed with a status (queue full, unknown manifest);
- ``certus_evaluate_request_duration_seconds{workspace_id,mode}``;
- ``certus_evaluate_skipped_total{workspace_id,reason}``;
- ``certus_evaluate_metric_score{workspace_id,metric_name,framework}`` and
  ``certus_evaluate_guardrail_violations_total{workspace_id,guardrail_type,severity}`` (after policy);
- ``certus_evaluate_evidence_append_seconds`` (sign + chain + durable append);
- ``certus_evaluate_encoder_batch_size`` / ``certus_evaluate_encoder_batch_seconds`` (one per
  encoder call, see :class:`InstrumentedEncoder`);
- ``certus_evaluate_grpc_requests_total{method,code}``: every RPC by status code, including the
  ones refused before the pipeline (invalid arguments).

What is read from the components when Prometheus scrapes (:class:`AppCollector`; the request path
pays nothing): batcher queue depth and counters, embedding cache hits/misses/ratio/entries, outbox
backlog and forwarder counters, ``certus_evaluate_circuit_breaker_state{sink}`` (0 closed, 1 open,
2 half-open), evidence log head and health (``certus_evaluate_evidence_log_healthy``, failures,
recoveries), Merkle tree and checkpoint sizes, key rotations, admission limit / in flight / measured
service rate / refusals, async job count.

Label cardinality is bounded: ``workspace_id`` is a workspace that has a manifest, or one of the
first ``max_workspaces`` others seen; any later one is counted as ``"other"``. Metric names,
modes, outcomes, guardrail types, severities, methods and codes are closed sets.
"""

from __future__ import annotations

import ipaddress
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np
import structlog
from prometheus_client import CollectorRegistry, Counter, Histogram, Info, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import start_http_server
from prometheus_client.registry import Collector

from certus.sidecar.domain import GuardrailViolation, MetricScore
from certus.sidecar.memory import GC_PAUSES

log = structlog.get_logger(__name__)

OTHER = "other"
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0)  # spec's + finer
SCORE_BUCKETS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)  # spec §5.2
APPEND_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
ENCODE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
BREAKER_STATE_VALUE = {"closed": 0.0, "open": 1.0, "half_open": 2.0}


class WorkspaceLabels:
    """Maps a workspace id to its metric label with bounded cardinality.

    Workspaces for which ``known(ws)`` is true (they have a manifest) always keep their id; others
    keep it while fewer than ``max_labels`` such ids have been seen, then become ``"other"``."""

    def __init__(self, max_labels: int = 100, known: Callable[[str], bool] | None = None) -> None:
        if max_labels < 0:
            raise ValueError("telemetry.metrics_max_workspaces must be >= 0")
        self.max_labels = max_labels
        self.known = known
        self._seen: set[str] = set()  # labelled workspaces (known ones included)
        self._unknown = 0  # how many of them were labelled under the cap
        self._lock = threading.Lock()

    def __call__(self, workspace_id: str) -> str:
        if workspace_id in self._seen:
            return workspace_id
        is_known = self.known is not None and self.known(workspace_id)
        with self._lock:
            if workspace_id in self._seen:
                return workspace_id
            if not is_known:
                if self._unknown >= self.max_labels:
                    return OTHER
                self._unknown += 1
            self._seen.add(workspace_id)
        return workspace_id


class Metrics:
    """The sidecar's metrics and the observations the request path makes."""

    def __init__(
        self,
        max_workspaces: int = 100,
        registry: CollectorRegistry | None = None,
        known_workspace: Callable[[str], bool] | None = None,
    ) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.workspace_label = WorkspaceLabels(max_workspaces, known_workspace)
        r = self.registry
        self.requests_total = Counter(
            "certus_evaluate_requests_total", "Evaluations answered", ["workspace_id", "mode", "outcome"], registry=r
        )
        self.request_duration = Histogram(
            "certus_evaluate_request_duration_seconds",
            "Evaluation duration in the sidecar (validation excluded)",
            ["workspace_id", "mode"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.skipped_total = Counter(
            "certus_evaluate_skipped_total", "Evaluations answered skipped, by reason", ["workspace_id", "reason"], registry=r
        )
        self.metric_score = Histogram(
            "certus_evaluate_metric_score",
            "Individual metric scores",
            ["workspace_id", "metric_name", "framework"],
            buckets=SCORE_BUCKETS,
            registry=r,
        )
        self.guardrail_violations = Counter(
            "certus_evaluate_guardrail_violations_total",
            "Guardrail violations kept by the policy",
            ["workspace_id", "guardrail_type", "severity"],
            registry=r,
        )
        self.evidence_append = Histogram(
            "certus_evaluate_evidence_append_seconds",
            "Sign, chain and durably append one decision to the evidence log",
            buckets=APPEND_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "certus_evaluate_encoder_batch_size", "Texts per encoder call", buckets=BATCH_SIZE_BUCKETS, registry=r
        )
        self.batch_seconds = Histogram(
            "certus_evaluate_encoder_batch_seconds", "Duration of one encoder call", buckets=ENCODE_BUCKETS, registry=r
        )
        self.encoder_errors = Counter("certus_evaluate_encoder_errors_total", "Encoder calls that raised", registry=r)
        self.grpc_requests = Counter(
            "certus_evaluate_grpc_requests_total", "RPCs by method and status code", ["method", "code"], registry=r
        )
        self.service_info = Info("certus_evaluate_service", "Sidecar version, model and key", registry=r)
        # labelled children by label values: a dict hit instead of labels() (validation + lock) per
        # observation; bounded like the label values themselves
        self._children: dict[tuple[Any, ...], Any] = {}

    def _child(self, metric: Any, *values: str) -> Any:
        key = (id(metric), *values)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*values)
        return child

    # -- request path ---------------------------------------------------------------------------

    def observe_evaluation(self, workspace_id: str, mode: str, outcome: str, seconds: float, skip_reason: str = "") -> None:
        ws = self.workspace_label(workspace_id)
        self._child(self.requests_total, ws, mode, outcome).inc()
        self._child(self.request_duration, ws, mode).observe(seconds)
        if skip_reason:
            self._child(self.skipped_total, ws, skip_reason).inc()

    def observe_verdict(
        self, workspace_id: str, metrics: Iterable[MetricScore], violations: Iterable[GuardrailViolation]
    ) -> None:
        ws = self.workspace_label(workspace_id)
        for m in metrics:
            self._child(self.metric_score, ws, m.name, m.framework).observe(m.value)
        for v in violations:
            self._child(self.guardrail_violations, ws, v.guardrail_type.value, v.severity.value).inc()

    def observe_evidence_append(self, seconds: float) -> None:
        self.evidence_append.observe(seconds)

    def observe_batch(self, size: int, seconds: float) -> None:
        self.batch_size.observe(size)
        self.batch_seconds.observe(seconds)

    def observe_rpc(self, method: str, code: str) -> None:
        self._child(self.grpc_requests, method, code).inc()

    # -- exposition -----------------------------------------------------------------------------

    def register(self, collector: Collector) -> None:
        self.registry.register(collector)

    def exposition(self) -> bytes:
        """The registry in Prometheus text format (what the HTTP endpoint serves)."""
        return generate_latest(self.registry)


class InstrumentedEncoder:
    """Wraps an encoder to observe each ``encode`` / ``encode_tokens`` call's batch size and
    duration; everything else is the wrapped encoder's."""

    def __init__(self, inner: Any, metrics: Metrics) -> None:
        self._inner = inner
        self._metrics = metrics

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        out: np.ndarray = self._observed(self._inner.encode, texts)
        return out

    def encode_tokens(self, texts: Sequence[str]) -> tuple[np.ndarray, list[Any]]:
        out: tuple[np.ndarray, list[Any]] = self._observed(self._inner.encode_tokens, texts)
        return out

    def _observed(self, call: Any, texts: Sequence[str]) -> Any:
        t0 = time.perf_counter()
        try:
            out = call(texts)
        except Exception:
            self._metrics.encoder_errors.inc()
            raise
        self._metrics.observe_batch(len(texts), time.perf_counter() - t0)
        return out

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def gc_families() -> list[Metric]:
    """This process's garbage collections by generation (2 = full): passes and the seconds they held
    the GIL. Counters, so the hub's endpoint adds the front-ends' into its own (sidecar-wide)."""
    passes = CounterMetricFamily(
        "certus_evaluate_gc_passes", "Garbage collections by generation (2 = full), every process", labels=["generation"]
    )
    paused = CounterMetricFamily(
        "certus_evaluate_gc_pause_seconds", "Time garbage collections held the GIL, by generation, every process", labels=["generation"]
    )
    for g in range(3):
        passes.add_metric([str(g)], GC_PAUSES.passes[g])
        paused.add_metric([str(g)], GC_PAUSES.seconds[g])
    return [passes, paused]


class AppCollector(Collector):
    """Gauges and counters read from a running sidecar's components at scrape time.

    Runs on the HTTP server's thread: it only reads plain attributes (no iteration over structures
    the event loop mutates), and a component that fails to answer is left out of that scrape."""

    def __init__(self, app: Any) -> None:
        self._app = app

    def describe(self) -> list[Metric]:
        return []  # dynamic: do not collect at registration

    def collect(self) -> Iterator[Metric]:
        for part in (self._batcher, self._forwarder, self._evidence, self._jobs, self._limits, self._admission, self._gc):
            try:
                yield from part()
            except Exception as exc:  # noqa: BLE001 - a scrape must not fail because one part did
                log.warning("metrics_collect_failed", part=part.__name__, error_type=type(exc).__name__)

    def _batcher(self) -> Iterator[Metric]:
        b = self._app.batcher
        yield GaugeMetricFamily("certus_evaluate_batcher_queue_depth", "Texts waiting for the encoder", value=b.queue_depth)
        s = b.stats
        yield CounterMetricFamily("certus_evaluate_encoder_batches", "Encoder batches", value=s.batches)
        yield CounterMetricFamily("certus_evaluate_encoder_texts", "Texts encoded", value=s.texts_encoded)
        yield CounterMetricFamily(
            "certus_evaluate_batcher_merged_batches", "Batches that held texts of several requests", value=s.merged_batches
        )
        yield CounterMetricFamily(
            "certus_evaluate_batcher_dropped_cancelled", "Texts dropped because every caller had gone", value=s.dropped_cancelled
        )
        yield CounterMetricFamily(
            "certus_evaluate_batcher_rejected_full", "Requests refused because the queue was full", value=s.rejected_full
        )
        c = b.cache
        hits, misses = c.hits, c.misses
        yield CounterMetricFamily("certus_evaluate_embedding_cache_hits", "Embedding cache hits", value=hits)
        yield CounterMetricFamily("certus_evaluate_embedding_cache_misses", "Embedding cache misses", value=misses)
        yield GaugeMetricFamily(
            "certus_evaluate_embedding_cache_hit_ratio",
            "Hits / lookups since start (use rate() of the counters for a window)",
            value=hits / (hits + misses) if hits + misses else 0.0,
        )
        yield GaugeMetricFamily("certus_evaluate_embedding_cache_entries", "Embeddings cached", value=len(c))

    def _forwarder(self) -> Iterator[Metric]:
        st = self._app.forwarder.stats()
        yield GaugeMetricFamily(
            "certus_evaluate_outbox_backlog", "Signed decisions not yet acknowledged by the integrity sink", value=st["backlog"]
        )
        breaker = GaugeMetricFamily(
            "certus_evaluate_circuit_breaker_state",
            "Integrity sink circuit breaker (0=closed, 1=open, 2=half-open)",
            labels=["sink"],
        )
        breaker.add_metric([str(st["sink"])], BREAKER_STATE_VALUE.get(str(st["breaker_state"]), -1.0))
        yield breaker
        for key, help_text in (
            ("delivered", "Decisions acknowledged by the integrity sink"),
            ("duplicates", "Decisions the sink already had"),
            ("failures", "Failed delivery attempts"),
            ("dead_letters", "Decisions dead-lettered (refused by the sink)"),
            ("breaker_opened", "Times the circuit breaker opened"),
        ):
            yield CounterMetricFamily(f"certus_evaluate_forwarder_{key}", help_text, value=st[key])

    def _evidence(self) -> Iterator[Metric]:
        ev = self._app.evidence
        yield GaugeMetricFamily(
            "certus_evaluate_evidence_last_seq", "Sequence number of the newest signed decision", value=ev.last_seq
        )
        yield GaugeMetricFamily(
            "certus_evaluate_evidence_log_healthy",
            "1 while the evidence log records decisions; 0 while a write error keeps it failed (alert on it)",
            value=1 if ev.healthy else 0,
        )
        yield CounterMetricFamily(
            "certus_evaluate_evidence_log_failures", "Times a write error put the evidence log in the failed state", value=ev.failures
        )
        yield CounterMetricFamily(
            "certus_evaluate_evidence_log_recoveries", "Times the evidence log repaired itself without a restart", value=ev.recoveries
        )
        st = ev.stats()
        yield GaugeMetricFamily(
            "certus_evaluate_evidence_tree_size", "Records in the evidence log's Merkle tree", value=st["tree_size"]
        )
        yield GaugeMetricFamily(
            "certus_evaluate_evidence_checkpoint_size",
            "Tree size of the newest signed checkpoint (tree_size minus this: records not yet anchored)",
            value=st["checkpoint_size"],
        )
        yield CounterMetricFamily(
            "certus_evaluate_evidence_key_rotations", "Signing key rotations by this process", value=st["key_rotations"]
        )

    def _admission(self) -> Iterator[Metric]:
        pipeline = getattr(self._app, "pipeline", None)
        if pipeline is None:
            return
        st = pipeline.admission.stats()
        yield GaugeMetricFamily(
            "certus_evaluate_admission_limit", "Synchronous evaluations admitted in flight at most (service rate x target)", value=st["limit"]
        )
        yield GaugeMetricFamily("certus_evaluate_admission_in_flight", "Synchronous evaluations in flight", value=st["in_flight"])
        yield GaugeMetricFamily(
            "certus_evaluate_admission_service_rate", "Measured evaluations/s (decayed maximum over 1 s windows)", value=st["service_rate"]
        )
        yield CounterMetricFamily(
            "certus_evaluate_admission_refused", "Evaluations answered at once with an overloaded skip by admission", value=st["refused"]
        )

    def _gc(self) -> Iterator[Metric]:
        yield from gc_families()
        yield GaugeMetricFamily("certus_evaluate_gc_full_pause_max_seconds", "Longest full collection since start", value=GC_PAUSES.full_max_s)

    def _jobs(self) -> Iterator[Metric]:
        yield GaugeMetricFamily("certus_evaluate_async_jobs", "Async evaluations in the job table", value=len(self._app.jobs))

    def _limits(self) -> Iterator[Metric]:
        access = getattr(self._app, "access", None)  # auth + per-workspace rate limits, when wired
        if access is None:
            return
        st = access.limiter.stats()
        yield CounterMetricFamily("certus_evaluate_rate_limited", "Calls refused by a workspace rate limit", value=st.dropped)
        yield GaugeMetricFamily("certus_evaluate_rate_limit_buckets", "Workspaces with a token bucket", value=st.buckets)


# -- the HTTP endpoint ------------------------------------------------------------------------------


def parse_address(address: str) -> tuple[str, int]:
    """``host:port`` or ``[v6]:port`` -> (host, port); ValueError naming the setting otherwise."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"CERTUS_METRICS_ADDRESS: expected host:port, got {address!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, int(port)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass
class MetricsServer:
    """Prometheus text format over HTTP (any path) on its own daemon thread."""

    host: str
    port: int
    _httpd: Any
    _thread: threading.Thread

    @classmethod
    def start(cls, address: str, registry: CollectorRegistry) -> "MetricsServer":
        host, port = parse_address(address)
        httpd, thread = start_http_server(port, addr=host, registry=registry)
        bound = int(httpd.server_address[1])
        if not is_loopback(host):
            log.warning("metrics_not_loopback", address=f"{host}:{bound}", note="the endpoint has no authentication")
        log.info("metrics_serving", address=f"{host}:{bound}")
        return cls(host, bound, httpd, thread)

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(5.0)


def attach_app(metrics: Metrics, app: Any, version: str) -> None:
    """Wire a built sidecar into its metrics: workspaces with a manifest always keep their label,
    component state is read at scrape time, and the service info is set."""
    manifests = app.manifests
    metrics.workspace_label.known = lambda ws: manifests.resolve(ws).workspace_id == ws
    metrics.register(AppCollector(app))
    info = app.info()
    metrics.service_info.info(
        {
            "version": version,
            "model": str(info["model"]),
            "execution_provider": str(info["execution_provider"]),
            "key_id": str(info["key_id"]),
        }
    )
