"""What logs, traces and metrics cost per Evaluate, measured in process in one run.

    python tests/benchmarks/bench_telemetry.py [--requests 400] [--rounds 4]

Arms (interleaved in rounds, same components, same request; embeddings cached after the first call):

- ``bare``: the pipeline's own code with the instrumentation stubbed out (``Pipeline.evaluate``
  unwrapped, span/context/metrics helpers replaced by no-ops): the baseline;
- ``noop``: everything on as shipped, no tracing configured (the OpenTelemetry API is a no-op and
  stage spans are skipped; metrics and the log context are live; the per-request debug line is
  filtered at INFO);
- ``otlp``: the SDK exporting over OTLP/gRPC (batch processor) to a collector endpoint in another
  process (so the CPU of this process includes serialising and sending spans, not receiving them);
- ``otlp10``: the same with ``OTEL_TRACES_SAMPLER=parentbased_traceidratio``, ratio 0.1.

Part A runs the real pipeline code (real batcher with cached embeddings, real scoring kernels,
real policy) with two stand-ins, a guardrail suite that finds nothing and an evidence sink that
returns an id without signing or writing, so the figure isolates instrumentation from the noisy
stages. Part B runs the full real pipeline (guardrails, Ed25519 signing, the evidence log with
``fsync=never``) to show the overhead as a share of a real evaluation. Each arm runs in batches
(arms rotated between rounds); per arm the best batch mean is printed (the figure least disturbed by
other processes on a shared machine), with wall µs/request and CPU µs/request (the whole
process's ``time.process_time``, every thread) and their differences to ``bare``.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import grpc  # noqa: E402
from opentelemetry import trace  # noqa: E402
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc  # noqa: E402

from certus.sidecar import config as config_mod  # noqa: E402
from certus.sidecar import pipeline as pipeline_mod  # noqa: E402
from certus.sidecar import telemetry  # noqa: E402
from certus.sidecar.domain import EvaluateInput  # noqa: E402
from certus.sidecar.pipeline import Pipeline  # noqa: E402

INP = EvaluateInput(
    workspace_id="acme",
    query="Who gave their name to Normandy?",
    response="The Normans gave their name to Normandy, a region in France. They came from Denmark.",
    context=(
        "The Normans were the people who in the 10th and 11th centuries gave their name to Normandy, a region in France.",
        "They were descended from Norse raiders and pirates from Denmark, Iceland and Norway.",
        "The Norman dynasty had a major political, cultural and military impact on medieval Europe.",
    ),
)


class NullGuardrails:
    def texts_to_embed(self, inp: Any, configs: Any) -> list[str]:
        return []

    def scan(self, inp: Any, configs: Any) -> list[Any]:
        return []


class NullEvidence:
    """Stand-in for the evidence log in part A: no signature, no disk."""

    async def append(self, decision: Any) -> tuple[str, None]:
        return "sha256:" + "0" * 64, None


class NullMetrics:
    def __getattr__(self, name: str) -> Callable[..., None]:
        return lambda *a, **k: None


class NullTelemetry:
    """The helpers the pipeline calls, as no-ops (constants still come from the real module)."""

    _span = trace.INVALID_SPAN

    def span(self, *a: Any, **k: Any) -> Any:
        return contextlib.nullcontext(self._span)

    def in_context(self, fn: Any) -> Any:
        return fn

    def bind_decision(self, *a: Any) -> None:
        return None

    def record_result(self, *a: Any) -> None:
        return None

    def record_verdict(self, *a: Any) -> None:
        return None

    def __getattr__(self, name: str) -> Any:
        return getattr(telemetry, name)


class Collector(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self) -> None:
        self.spans = 0

    def Export(self, request: Any, context: Any) -> Any:  # noqa: N802
        self.spans += sum(len(ss.spans) for rs in request.resource_spans for ss in rs.scope_spans)
        return trace_service_pb2.ExportTraceServiceResponse()


async def timed(pipe: Pipeline, n: int, bare: bool) -> tuple[list[float], float]:
    """Wall µs of each request, and CPU µs per request over the batch."""
    out = []
    if bare:
        real_tel, pipeline_mod.telemetry = pipeline_mod.telemetry, NullTelemetry()  # type: ignore[assignment]
        real_metrics, pipe.metrics = pipe.metrics, NullMetrics()  # type: ignore[assignment]
        call = Pipeline.evaluate.__wrapped__  # type: ignore[attr-defined]
    else:
        call = Pipeline.evaluate
    c0 = time.process_time()
    try:
        for _ in range(n):
            t0 = time.perf_counter()
            await call(pipe, INP)
            out.append((time.perf_counter() - t0) * 1e6)
        cpu = (time.process_time() - c0) * 1e6 / n
    finally:
        if bare:
            pipeline_mod.telemetry = real_tel  # type: ignore[assignment]
            pipe.metrics = real_metrics
    return out, cpu


def report(title: str, walls: dict[str, list[list[float]]], cpus: dict[str, list[float]]) -> None:
    """Best batch per arm (min of batch means), and the median request of all batches."""
    best_wall = {a: min(statistics.fmean(b) for b in batches) for a, batches in walls.items()}
    best_cpu = {a: min(c) for a, c in cpus.items()}
    p50 = {a: statistics.median([x for b in batches for x in b]) for a, batches in walls.items()}
    print(f"\n{title}")
    print(
        f"  {'arm':6} {'requests':>8} {'wall µs':>9} {'Δwall':>7} {'ratio':>6} {'CPU µs':>9} {'ΔCPU':>7}"
        f" {'ratio':>6} {'p50 µs':>9}"
    )
    for arm in walls:
        n = sum(len(b) for b in walls[arm])
        w, c = best_wall[arm], best_cpu[arm]
        print(
            f"  {arm:6} {n:8d} {w:9.1f} {w - best_wall['bare']:+7.1f} {w / best_wall['bare']:6.3f}"
            f" {c:9.1f} {c - best_cpu['bare']:+7.1f} {c / best_cpu['bare']:6.3f} {p50[arm]:9.1f}"
        )


async def main(args: argparse.Namespace) -> None:
    from certus.models.artifacts import ensure_model
    from certus.models.encoder import OnnxEncoder
    from certus.sidecar.server.app import App

    tmp = Path(tempfile.mkdtemp(prefix="bench-telemetry-"))
    cfg = config_mod.load(
        env={},
        overrides={
            "evidence": {"log_dir": tmp / "evidence", "key_path": tmp / "key", "fsync": "never"},
            "forwarder": {"sink": "none", "outbox_dir": tmp / "outbox"},
            "manifests": {"manifest_dir": tmp / "manifests"},
            "batcher": {"max_wait_ms": 0.0},
            "model": {"intra_op_threads": 1},
        },
    )
    telemetry.configure_logging(cfg.telemetry, stream=open(os.devnull, "w"))  # INFO: debug lines filtered
    ensure_model(cfg.model.model_dir, "fp32")
    app = await App.create(cfg, encoder=OnnxEncoder(cfg.model.model_dir, intra_op_threads=1))
    light = Pipeline(app.batcher, app.scorer, NullGuardrails(), app.manifests, NullEvidence(), app.jobs, metrics=app.metrics)
    full = app.pipeline
    for pipe in (light, full):
        for _ in range(30):  # warm caches and code paths
            await pipe.evaluate(INP)

    collector = subprocess.Popen(
        [sys.executable, __file__, "--collector"], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    assert collector.stdout is not None
    port = int(collector.stdout.readline())
    otlp_env = {"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}"}
    otlp_cfg = config_mod.load(env=otlp_env).telemetry
    otlp10_cfg = config_mod.load(
        env={**otlp_env, "OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.1"}
    ).telemetry

    async def arm(name: str, pipe: Pipeline, n: int) -> tuple[list[float], float]:
        if name == "otlp":
            telemetry.configure_tracing(otlp_cfg)
        elif name == "otlp10":
            telemetry.configure_tracing(otlp10_cfg)
        return await timed(pipe, n, bare=(name == "bare"))

    walls: dict[str, dict[str, list[list[float]]]] = {"A": {}, "B": {}}
    cpus: dict[str, dict[str, list[float]]] = {"A": {}, "B": {}}

    async def phase(arms: list[str]) -> None:
        for r in range(args.rounds):
            order = arms[r % len(arms) :] + arms[: r % len(arms)]  # rotate: no arm always runs first
            for part, pipe, n in (("A", light, args.requests), ("B", full, max(50, args.requests // 4))):
                for name in order:
                    wall, cpu = await arm(name, pipe, n)
                    walls[part].setdefault(name, []).append(wall)
                    cpus[part].setdefault(name, []).append(cpu)

    print(f"python {platform.python_version()}, {os.cpu_count()} CPUs, {platform.processor() or platform.machine()}")
    print(f"{args.rounds} rounds per phase, arms rotated; bare is measured in both phases")
    print("per arm: best batch mean (wall and CPU µs per request), Δ and ratio to bare; p50 over all requests")
    await phase(["bare", "noop"])  # before any tracer provider exists
    await phase(["bare", "otlp", "otlp10"])  # the SDK is installed from here on
    report("A. pipeline, light stages (no guardrail scan, cached embeddings): instrumentation only", walls["A"], cpus["A"])
    report("B. full real pipeline (guardrails, kernels, evidence; cached embeddings)", walls["B"], cpus["B"])
    telemetry.shutdown_tracing()
    collector.send_signal(signal.SIGTERM)
    out, _ = collector.communicate(timeout=30)
    print(f"\nspans received by the OTLP collector process: {out.strip()}")
    await app.close()


def serve_collector() -> None:
    server = grpc.server(concurrent.futures.ThreadPoolExecutor(1))
    collector = Collector()
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(collector, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print(port, flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    stop.wait()
    server.stop(0)
    print(collector.spans, flush=True)


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--requests", type=int, default=400)
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--collector", action="store_true", help=argparse.SUPPRESS)  # the OTLP endpoint process
    parsed = p.parse_args()
    if parsed.collector:
        serve_collector()
    else:
        asyncio.run(main(parsed))
