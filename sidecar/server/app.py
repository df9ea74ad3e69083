"""Server lifecycle: build every component from the config, serve, shut down gracefully.

``build_server(cfg)`` returns ``(server, port, app)`` with the Evaluator service, the standard
``grpc.health.v1`` health service and server reflection (method symbols resolve, so ghz/grpcurl
work without ``--proto``). Shutdown: health NOT_SERVING, stop accepting, finish in-flight calls for
``grace_s``, drain the batcher, flush the evidence log and the forwarder.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import structlog
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer

from certus.models.artifacts import ExportError
from certus.sidecar import __version__, signing
from certus.sidecar.admission import Admission
from certus.sidecar.batcher import Batcher
from certus.sidecar.config import Config
from certus.sidecar.domain import EvaluateInput
from certus.sidecar.errors import CertusError, Fatal
from certus.sidecar.evidence.log import EvidenceLog
from certus.sidecar.forwarder import Forwarder
from certus.sidecar.guardrails import GuardrailSuite
from certus.sidecar.guardrails.pii import ProcessPiiAnalyzer
from certus.sidecar.jobs import JobTable
from certus.sidecar.manifests import ManifestStore
from certus.sidecar.memory import GC_PAUSES, MemoryReclaimer
from certus.sidecar.metrics import InstrumentedEncoder, Metrics, MetricsServer, attach_app
from certus.sidecar.pipeline import Pipeline
from certus.sidecar.protos import pb
from certus.sidecar.scoring import Scorer
from certus.sidecar.security import (
    AccessControl,
    AuthInterceptor,
    BindingRefused,
    TlsConfigError,
    TokensFileError,
    check_binding,
    server_credentials,
)
from certus.sidecar.server import reflection
from certus.sidecar.server.rest import RestApi
from certus.sidecar.server.servicer import EvaluatorService, method_handlers

log = structlog.get_logger(__name__)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Evaluator"].full_name


class Serving:
    """What every process that serves the Evaluator has in common (this module's :class:`App`, and a
    front-end process's ``FrontendApp``): ``access``, ``health``, ``scorer``, ``batcher``,
    ``guardrails`` and ``manifests`` attributes, and these methods on them."""

    access: AccessControl
    health: HealthServicer
    scorer: Scorer
    batcher: Any
    guardrails: Any
    manifests: ManifestStore

    # -- auth hooks (the auth interceptor binds the caller's identity; without a tokens file every
    # caller is admin). authorize() also admits the call through the workspace's rate limit. --
    def authorize(self, context: grpc.aio.ServicerContext, inp: EvaluateInput | None) -> bool:
        if inp is None:
            self.access.authorize_measure()
            return False
        return self.access.authorize_evaluate(inp)

    def authorize_workspace(self, context: grpc.aio.ServicerContext, workspace_id: str) -> None:
        self.access.authorize_workspace(workspace_id)

    async def set_status(self, serving: bool) -> None:
        """SERVING or NOT_SERVING for the whole server and the Evaluator service."""
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        await self.health.set("", status)
        await self.health.set(SERVICE_NAME, status)

    async def warm(self) -> None:
        """Pay one-time costs (Numba cache load, ONNX first run, Presidio/regex first use) before
        health says SERVING, so the first caller does not. Nothing is recorded."""
        from certus import kernels

        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, kernels.warmup)
        probe = warm_probe()
        layout = self.scorer.layout(probe)
        vecs, tokens = await self.batcher.embed_tokens(layout.texts)
        await loop.run_in_executor(None, self.scorer.score, probe, layout, vecs, tokens)
        await loop.run_in_executor(None, self.guardrails.scan, probe, self.manifests.resolve("default", "").guardrails)


@dataclass
class App(Serving):
    """Every component of one running sidecar."""

    cfg: Config
    encoder: Any
    batcher: Batcher
    scorer: Scorer
    manifests: ManifestStore
    signing_key: signing.SigningKey
    evidence: EvidenceLog
    forwarder: Forwarder
    guardrails: GuardrailSuite
    jobs: JobTable
    pipeline: Pipeline
    health: HealthServicer = field(default_factory=HealthServicer)
    # tokens + per-workspace rate limits (sidecar.security.access); default: open, unlimited
    access: AccessControl = field(default_factory=AccessControl.disabled)
    reclaimer: MemoryReclaimer | None = None  # gives memory back after a burst (sidecar/memory.py)
    metrics: Metrics = field(default_factory=Metrics)  # own registry (sidecar.metrics)
    metrics_server: MetricsServer | None = None  # Prometheus endpoint, when server.metrics_address is set
    health_server: grpc.aio.Server | None = None  # health-only listener, when server.health_address is set
    rest: Any = None  # the REST API (sidecar/server/rest.py), when server.rest_address is set
    dashboard: Any = None  # the web dashboard (sidecar/dashboard), when dashboard.address is set
    mlflow: Forwarder | None = None  # MLflow run logging, when forwarder.mlflow_tracking_uri is set
    hub: Any = None  # the other front-end processes' hub, when server.frontends > 1
    _serving: bool | None = None  # the last health status set_health gave

    @classmethod
    async def create(cls, cfg: Config, encoder: Any = None) -> "App":
        access = AccessControl.from_config(cfg)  # a bad tokens file fails before the model loads
        if encoder is None:
            from certus.models.encoder import OnnxEncoder

            # exports the model first when it is missing (off the event loop: seconds)
            encoder = await asyncio.get_running_loop().run_in_executor(
                None, OnnxEncoder.from_config, cfg.model, cfg.batcher
            )
        metrics = Metrics(cfg.telemetry.metrics_max_workspaces)
        batcher = Batcher(InstrumentedEncoder(encoder, metrics), cfg.batcher)  # batch size/time histograms
        await batcher.start()
        key, created = signing.load_or_create(cfg.evidence.key_path)
        if created:
            log.warning("signing_key_generated", key_id=key.key_id, path=str(cfg.evidence.key_path))
        evidence = await asyncio.get_running_loop().run_in_executor(None, EvidenceLog.open, cfg.evidence, key)
        forwarder = Forwarder(cfg.forwarder, evidence)
        await forwarder.start()
        manifests = ManifestStore(cfg.manifests)
        manifests.start()
        mlflow = await _start_mlflow(cfg, evidence, manifests) if cfg.forwarder.mlflow_tracking_uri else None
        guardrails = GuardrailSuite(
            embed=batcher.embed_sync,
            pii_ner=cfg.guardrails.pii_ner,
            pii_process=cfg.guardrails.pii_process,
            token_states=batcher.token_states_sync,
            pii_ner_model=cfg.guardrails.pii_ner_model,
        )
        jobs = JobTable(cfg.async_jobs)
        scorer = Scorer(cfg.scoring)
        admission = Admission(cfg.server.admission_target_ms, min_in_flight=cfg.server.admission_min_in_flight)
        pipeline = Pipeline(
            batcher, scorer, guardrails, manifests, evidence, jobs,
            stage_threads=cfg.server.stage_threads, metrics=metrics, admission=admission
        )
        app = cls(cfg, encoder, batcher, scorer, manifests, key, evidence, forwarder, guardrails, jobs, pipeline)
        app.metrics = metrics
        app.mlflow = mlflow
        attach_app(metrics, app, __version__)
        app.access = access
        app.reclaimer = MemoryReclaimer(cfg.server.memory_reclaim_interval_s, cfg.server.memory_reclaim_growth_mib)
        loop = asyncio.get_running_loop()
        evidence.add_state_listener(
            lambda healthy, reason: loop.call_soon_threadsafe(asyncio.ensure_future, app.set_health(healthy, reason))
        )
        await app.warmup()
        app.reclaimer.start()  # after warm-up: what is alive now is frozen out of gc passes
        return app

    async def warmup(self) -> None:
        """:meth:`Serving.warm`, then the encoder caches emptied of the probe's texts."""
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        await self.warm()
        self.batcher.cache.clear()
        self.batcher.token_cache.clear()
        log.info("warmed_up", seconds=round(loop.time() - t0, 3))

    async def job_view(self, evaluation_id: str, workspace_id: str) -> Any:
        """GetEvaluation's answer (a front-end process asks the hub's table the same way)."""
        return self.jobs.get(evaluation_id, workspace_id)

    async def get_info(self) -> tuple[dict[str, Any], bytes]:
        """GetInfo's details and the current public key."""
        return self.info(), self.evidence.public_key.public_bytes

    async def set_health(self, serving: bool, reason: str = "") -> None:
        """SERVING or NOT_SERVING for the whole server and the Evaluator service: NOT_SERVING while
        the evidence log cannot record decisions (a kubelet stops routing to the pod or restarts it),
        SERVING again once it has repaired itself. After shutdown began, health stays NOT_SERVING."""
        await self.set_status(serving)
        if not serving:
            log.error("health_not_serving", reason=reason)
        elif self._serving is False:
            log.warning("health_serving_again", reason="evidence log repaired")
        self._serving = serving

    def info(self) -> dict[str, Any]:
        details: dict[str, Any] = {}
        details.update({f"evidence.{k}": v for k, v in self.evidence.stats().items()})
        details.update({f"forwarder.{k}": v for k, v in self.forwarder.stats().items()})
        if self.mlflow is not None:
            details.update({f"mlflow.{k}": v for k, v in self.mlflow.stats().items()})
        details.update({f"batcher.{k}": v for k, v in self.batcher.stats.as_dict().items()})
        details["batcher.queue_depth"] = self.batcher.queue_depth
        for name in ("texts_encoded", "tokens_encoded"):
            if hasattr(self.encoder, name):
                details[f"encoder.{name}"] = getattr(self.encoder, name)
        details["cache.hit_ratio"] = round(self.batcher.cache.hit_ratio, 4)
        details.update({f"admission.{k}": v for k, v in self.pipeline.admission.stats().items()})
        details.update({f"manifests.{k}": v for k, v in self.manifests.health_details().items()})
        details.update({f"ratelimit.{k}": v for k, v in self.access.limiter.stats().as_dict().items()})
        details["auth.enabled"] = self.access.auth_enabled
        details["frontends"] = self.cfg.server.frontends
        if self.hub is not None:  # the other front-end processes (sidecar/server/frontends.py)
            details["frontends.pids"] = ",".join(str(p) for p in self.hub.pids)
            details["frontends.restarts"] = self.hub.restarts
            details["frontends.hub_requests"] = self.hub.requests
            details["frontend.index"] = 0  # this process; the others report their own
            details["frontend.pid"] = os.getpid()
        details.update(pii_details(self.guardrails))
        details.update(GC_PAUSES.details())
        return {
            "key_id": self.evidence.key_id,  # the current key: a rotation replaces signing_key's
            "payload_type": signing.DECISION_PAYLOAD_TYPE,
            "model": f"all-MiniLM-L6-v2/{getattr(self.encoder, 'variant', 'custom')}",
            "execution_provider": str(getattr(self.encoder, "provider", "custom")),
            "details": details,
        }

    async def close(self) -> None:
        if self.reclaimer is not None:
            await self.reclaimer.stop()
        await self.jobs.aclose()
        await self.pipeline.close()
        await asyncio.get_running_loop().run_in_executor(None, self.guardrails.close)
        await self.batcher.stop()
        # anchor everything written in a signed checkpoint, then deliver what is still in the
        # outbox (and that checkpoint) for up to the grace period, then stop (the cursor is
        # durable: whatever is left goes out after the next start)
        try:
            await asyncio.wait_for(asyncio.wrap_future(self.evidence.request_checkpoint()), timeout=5.0)
        except Exception as exc:  # noqa: BLE001 - a failed log still shuts down; the log says why
            log.warning("shutdown_checkpoint_failed", error=repr(exc))
        await self.forwarder.stop(drain_s=self.cfg.server.grace_s)
        if self.mlflow is not None:
            await self.mlflow.stop(drain_s=self.cfg.server.grace_s)
        await self.evidence.close()
        self.manifests.stop()
        if self.metrics_server is not None:
            self.metrics_server.stop()
            self.metrics_server = None


def pii_details(guardrails: GuardrailSuite) -> dict[str, Any]:
    details: dict[str, Any] = {"pii.ner_model": guardrails.pii.ner_model}
    pii = guardrails.pii.analyzer
    if isinstance(pii, ProcessPiiAnalyzer):  # the child process that runs Presidio (and spaCy NER)
        details["pii.worker_pid"] = pii.pid
        details["pii.worker_restarts"] = pii.restarts
    return details


async def _start_mlflow(cfg: Config, evidence: EvidenceLog, manifests: ManifestStore) -> Forwarder:
    """A second forwarder over the evidence log that logs each decision as an MLflow run."""
    from certus.sidecar.forwarder.mlflow_sink import MlflowSink, default_experiment

    def experiment_for(workspace_id: str, manifest_uri: str) -> str:
        try:
            name = manifests.resolve(workspace_id, manifest_uri).mlflow_experiment_name
        except Exception:  # noqa: BLE001 - a manifest gone since: the default name
            name = None
        return name or default_experiment(workspace_id, manifest_uri)

    fcfg = dataclasses.replace(cfg.forwarder, outbox_dir=Path(cfg.forwarder.outbox_dir) / "mlflow")
    sink = MlflowSink(cfg.forwarder.mlflow_tracking_uri, experiment_for, timeout_s=cfg.forwarder.timeout_s)
    fwd = Forwarder(fcfg, evidence, sink=sink)
    await fwd.start()
    return fwd


class BindFailed(Fatal):
    """The configured address cannot be listened on."""


async def build_server(cfg: Config, app: App | None = None) -> tuple[grpc.aio.Server, int, App]:
    check_binding(cfg)  # before anything binds: non-loopback needs auth or allow_insecure_remote
    credentials = server_credentials(cfg.auth)  # None = plaintext; TLS, or mTLS with tls_client_ca
    created = app is None
    app = app or await App.create(cfg)
    try:
        server, port = await _listen(cfg, app, credentials)
    except BaseException:
        if created:  # nothing will serve: close the log and the forwarder it opened
            await app.close()
        raise
    return server, port, app


def grpc_server(cfg: Config, app: Serving) -> grpc.aio.Server:
    """The Evaluator service with health and reflection, the sidecar's options, limits and auth
    (every front-end process builds the same one)."""
    interceptors: list[grpc.aio.ServerInterceptor] = []
    if app.access.authenticator is not None:
        interceptors.append(AuthInterceptor(app.access.authenticator))
    server = grpc.aio.server(
        options=server_options(cfg), interceptors=interceptors, maximum_concurrent_rpcs=cfg.server.max_concurrent_rpcs
    )
    service = EvaluatorService(app)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, method_handlers(service)),))
    health_pb2_grpc.add_HealthServicer_to_server(app.health, server)
    reflection.enable(server, [SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name])
    return server


async def _listen(cfg: Config, app: App, credentials: grpc.ServerCredentials | None) -> tuple[grpc.aio.Server, int]:
    server = grpc_server(cfg, app)
    port = bind(server, "server.address", cfg.server.address, credentials)
    if cfg.server.metrics_address and app.metrics_server is None:
        from certus.sidecar.server.frontends import metrics_registry

        app.metrics_server = MetricsServer.start(cfg.server.metrics_address, metrics_registry(app))
    if cfg.server.health_address and app.health_server is None:
        app.health_server = await start_health_listener(cfg.server.health_address, app.health)
    if cfg.server.rest_address and app.rest is None:
        rest = RestApi(app)
        tls = cfg.auth
        await rest.start(
            cfg.server.rest_address,
            ssl_certfile=str(tls.tls_cert) if tls.tls_cert else None,
            ssl_keyfile=str(tls.tls_key) if tls.tls_key else None,
        )
        app.rest = rest
    if cfg.dashboard.address and app.dashboard is None:
        from certus.sidecar.dashboard.web import start_in_sidecar

        app.dashboard = await start_in_sidecar(cfg, app)
    await app.set_health(app.evidence.healthy, app.evidence.failure_reason)
    return server, port


def server_options(cfg: Config) -> list[tuple[str, Any]]:
    """The main gRPC server's channel options (the front-end processes use the same). SO_REUSEPORT
    only when several front-ends share the port: else a second sidecar started on the same port by
    mistake fails at bind instead of silently taking half the connections."""
    options: list[tuple[str, Any]] = [
        ("grpc.max_receive_message_length", cfg.server.max_message_bytes),
        ("grpc.max_send_message_length", cfg.server.max_message_bytes),
        ("grpc.so_reuseport", 1 if cfg.server.frontends > 1 else 0),
    ]
    if cfg.server.max_concurrent_streams > 0:  # per connection; bounds the bytes a flood can park
        options.append(("grpc.max_concurrent_streams", cfg.server.max_concurrent_streams))
    return options


def warm_probe() -> EvaluateInput:
    """The request every process scores once before it serves (nothing of it is recorded)."""
    return EvaluateInput(
        workspace_id="warmup",
        query="What is the warm-up probe?",
        response="The warm-up probe is 1 sentence. It costs $5.",
        context=("The warm-up probe is one sentence and costs 5 dollars.",),
    )


def bind(server: grpc.aio.Server, setting: str, address: str, credentials: grpc.ServerCredentials | None = None) -> int:
    """Add a listening port; an address that cannot be bound is a :class:`BindFailed` naming the setting."""
    try:
        if credentials is None:
            port = server.add_insecure_port(address)
        else:
            port = server.add_secure_port(address, credentials)
    except RuntimeError:  # grpcio raises for a port in use; older versions returned 0
        port = 0
    if port == 0:
        raise BindFailed(f"{setting} {address}: cannot listen there (port in use, or not an address of this host)")
    return port


async def start_health_listener(address: str, health: HealthServicer) -> grpc.aio.Server:
    """``grpc.health.v1`` alone on its own address (e.g. the pod IP), sharing the main server's
    statuses, so kubelet's native gRPC probes work while the API stays on loopback. It serves
    nothing else: no auth is needed there, and nothing about requests is exposed."""
    server = grpc.aio.server()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    bind(server, "server.health_address", address)
    await server.start()
    return server


async def shutdown(server: grpc.aio.Server, app: App) -> None:
    await app.health.enter_graceful_shutdown()
    if app.hub is not None:  # the other front-ends drain first: their calls still need this process
        await asyncio.gather(app.hub.stop(app.cfg.server.grace_s), server.stop(app.cfg.server.grace_s))
        app.hub = None
    if app.rest is not None:  # stops accepting, finishes the requests in flight
        await app.rest.stop()
        app.rest = None
    if app.dashboard is not None:
        await app.dashboard.aclose()
        app.dashboard = None
    await server.stop(app.cfg.server.grace_s)
    if app.health_server is not None:  # last: probes see NOT_SERVING while the main server drains
        await app.health_server.stop(0)
        app.health_server = None
    await app.close()
    log.info("stopped")


async def serve(cfg: Config) -> None:
    from certus.sidecar.server.frontends import Hub, check_config

    try:
        check_config(cfg)
        server, port, app = await build_server(cfg)
    except (BindingRefused, TlsConfigError, TokensFileError, CertusError, ExportError) as exc:
        # a setting to fix or a missing model (the message names it): no traceback
        raise SystemExit(f"certus-sidecar: {exc}") from exc
    except OSError as exc:  # a path it cannot create or write (read-only volume, permissions)
        raise SystemExit(f"certus-sidecar: cannot start: {exc}") from exc
    await server.start()
    if cfg.server.frontends > 1:
        hub = Hub(app, port)
        try:
            await hub.start()  # every other front-end listens on the port before this says so
        except (CertusError, OSError) as exc:  # one did not start (it said why on stderr)
            await shutdown(server, app)
            raise SystemExit(f"certus-sidecar: {exc}") from exc
        app.hub = hub
    host = cfg.server.address.rsplit(":", 1)[0]
    log.info("serving", address=f"{host}:{port}", key_id=app.evidence.key_id, provider=info_provider(app))
    print(f"certus-sidecar listening on {host}:{port}", flush=True)
    if app.rest is not None:
        print(f"certus-sidecar REST API on {cfg.server.rest_address.rsplit(':', 1)[0]}:{app.rest.port}", flush=True)
    if app.dashboard is not None:
        scheme = "https" if cfg.auth.tls_cert else "http"
        print(f"certus-sidecar dashboard on {scheme}://{cfg.dashboard.address.rsplit(':', 1)[0]}:{app.dashboard.port}/", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("shutting_down", grace_s=cfg.server.grace_s)
    await shutdown(server, app)


def info_provider(app: App) -> str:
    return str(getattr(app.encoder, "provider", "custom"))
