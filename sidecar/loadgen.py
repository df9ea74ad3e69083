"""``certus-sidecar bench``: a bounded load harness for the Evaluate RPCs (localhost only).

Drives Evaluate (unary) or EvaluateStream with a realistic RAG mix — query ~15 words, response
~60 words, 5 context chunks of ~100 words drawn from a fixed pool, so chunks repeat across
requests as in real RAG traffic — at a fixed concurrency (closed loop) or a fixed rate (open loop,
latency measured from the scheduled send time, so queueing is not hidden). Prints requests/s,
p50/p90/p99/max latency and errors by status code. Without ``--target`` it starts a sidecar
subprocess on a free port and stops it afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np

WORDS = (
    "the normans were people who in tenth and eleventh centuries gave their name to normandy region france "
    "descended from norse raiders pirates denmark iceland norway swore fealty king charles treaty duchy "
    "complexity theory classifies computational problems according inherent difficulty resources time space "
    "revenue quarter growth margin operating income billion percent customers product service market share "
    "model evaluation grounding faithfulness context retrieval answer query policy manifest evidence signature"
).split()


def _sentence(rng: random.Random, n: int) -> str:
    words = [rng.choice(WORDS) for _ in range(n)]
    words[0] = words[0].capitalize()
    return " ".join(words) + "."


@dataclass
class Mix:
    """Deterministic request generator."""

    seed: int = 7
    chunk_pool: int = 40
    chunks_per_request: int = 5
    workspace_id: str = "bench"
    rng: random.Random = field(init=False)
    pool: list[str] = field(init=False)

    def __post_init__(self) -> None:
        # the chunk pool is fixed by the seed (so a warm-up run warms the cache for later runs);
        # queries and responses are fresh in every run, as in real traffic
        pool_rng = random.Random(self.seed)
        self.pool = [" ".join(_sentence(pool_rng, 20) for _ in range(5)) for _ in range(self.chunk_pool)]
        self.rng = random.Random()
        self.counter = 0

    def request(self) -> Any:
        from certus.sidecar.protos import pb

        self.counter += 1
        n = self.counter
        return pb.EvaluateRequest(
            workspace_id=self.workspace_id,
            query=_sentence(self.rng, 14)[:-1] + f" {n}?",
            response=" ".join(_sentence(self.rng, 15) for _ in range(4)) + f" Figure {n}.",
            context=self.rng.sample(self.pool, self.chunks_per_request),
            request_id=str(n),
        )


@dataclass
class RunResult:
    label: str
    duration_s: float
    latencies_ms: list[float]
    errors: Counter[str]
    skipped_ms: list[float] = field(default_factory=list)  # latency of the answers that were skips

    @property
    def rps(self) -> float:
        return len(self.latencies_ms) / self.duration_s if self.duration_s else 0.0

    def pct(self, q: float) -> float:
        return float(np.percentile(self.latencies_ms, q)) if self.latencies_ms else float("nan")

    def as_dict(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "ok": len(self.latencies_ms),
            "rps": round(self.rps, 1),
            "p50_ms": round(self.pct(50), 2),
            "p90_ms": round(self.pct(90), 2),
            "p99_ms": round(self.pct(99), 2),
            "max_ms": round(max(self.latencies_ms), 2) if self.latencies_ms else None,
            "errors": dict(self.errors),
            "skipped": len(self.skipped_ms),
            "skipped_p99_ms": round(float(np.percentile(self.skipped_ms, 99)), 2) if self.skipped_ms else None,
        }

    def line(self) -> str:
        d = self.as_dict()
        errs = ", ".join(f"{k}={v}" for k, v in d["errors"].items()) or "none"
        return (
            f"{d['label']:<28} {d['rps']:>9.1f} req/s  p50 {d['p50_ms']:>8.2f} ms  p90 {d['p90_ms']:>8.2f} ms  "
            f"p99 {d['p99_ms']:>8.2f} ms  max {d['max_ms'] if d['max_ms'] is not None else float('nan'):>8.2f} ms  errors: {errs}"
        )


def _count(resp: Any, ms: float, latencies: list[float], errors: Counter[str], skipped: list[float] | None = None) -> None:
    """A scored answer counts as served; a skipped one (timeout, overload) is reported apart."""
    if resp.skipped:
        errors[f"skipped:{resp.skip_reason}"] += 1
        if skipped is not None:
            skipped.append(ms)
    else:
        latencies.append(ms)


async def _closed_loop(stubs: list[Any], mix: Mix, concurrency: int, duration_s: float, stream: bool) -> RunResult:
    """``concurrency`` workers, worker k on connection k mod len(stubs)."""
    latencies: list[float] = []
    errors: Counter[str] = Counter()
    stop_at = time.perf_counter() + duration_s

    async def unary_worker(stub: Any) -> None:
        while time.perf_counter() < stop_at:
            t0 = time.perf_counter()
            try:
                resp = await stub.Evaluate(mix.request(), timeout=30)
                _count(resp, (time.perf_counter() - t0) * 1000, latencies, errors)
            except grpc.aio.AioRpcError as exc:
                errors[exc.code().name] += 1

    async def stream_worker(stub: Any) -> None:
        call = stub.EvaluateStream()
        try:
            while time.perf_counter() < stop_at:
                t0 = time.perf_counter()
                await call.write(mix.request())
                resp = await call.read()
                if resp.WhichOneof("result") == "error":
                    errors[f"code{resp.error.code}"] += 1
                else:
                    _count(resp.response, (time.perf_counter() - t0) * 1000, latencies, errors)
            await call.done_writing()
        except grpc.aio.AioRpcError as exc:
            errors[exc.code().name] += 1

    t0 = time.perf_counter()
    worker = stream_worker if stream else unary_worker
    await asyncio.gather(*(worker(stubs[k % len(stubs)]) for k in range(concurrency)))
    kind = "stream" if stream else "unary"
    return RunResult(f"{kind} c={concurrency}", time.perf_counter() - t0, latencies, errors)


async def _open_loop(stubs: list[Any], mix: Mix, rate: float, duration_s: float) -> RunResult:
    """Request i at ``start + i / rate`` on connection i mod len(stubs)."""
    latencies: list[float] = []
    skipped: list[float] = []
    errors: Counter[str] = Counter()
    n = int(rate * duration_s)
    start = time.perf_counter()

    async def one(stub: Any, scheduled: float) -> None:
        try:
            resp = await stub.Evaluate(mix.request(), timeout=30)
            _count(resp, (time.perf_counter() - scheduled) * 1000, latencies, errors, skipped)
        except grpc.aio.AioRpcError as exc:
            errors[exc.code().name] += 1

    tasks = []
    for i in range(n):
        scheduled = start + i / rate
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(stubs[i % len(stubs)], scheduled)))
    await asyncio.gather(*tasks)
    return RunResult(f"unary rate={rate:g}/s", time.perf_counter() - start, latencies, errors, skipped)


async def run_bench(
    target: str,
    concurrencies: list[int],
    duration_s: float,
    warmup_s: float,
    stream: bool,
    rates: list[float],
    connections: int = 1,
) -> list[RunResult]:
    """``connections``: HTTP/2 connections the load is spread over (each its own channel with a
    local subchannel pool, so they are really distinct); a sidecar with several front-end
    processes (server.frontends) gets its connections spread across them by the kernel."""
    from certus.sidecar.protos import pb_grpc

    results = []
    channels = [
        grpc.aio.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)])
        for _ in range(max(1, connections))
    ]
    try:
        stubs = [pb_grpc.EvaluatorStub(ch) for ch in channels]
        mix = Mix()
        if warmup_s > 0:  # JIT, caches (the chunk pool), allocator
            await _closed_loop(stubs, mix, max(4, len(stubs)), warmup_s, False)
        for c in concurrencies:
            r = await _closed_loop(stubs, mix, c, duration_s, stream)
            print(r.line(), flush=True)
            results.append(r)
        for rate in rates:
            r = await _open_loop(stubs, mix, rate, duration_s)
            print(r.line(), flush=True)
            results.append(r)
    finally:
        for ch in channels:
            await ch.close()
    return results


def run_h2load(target: str, requests: int, clients: int, streams: int, distinct: int = 1) -> RunResult:
    """Drive unary Evaluate with h2load (Debian nghttp2-client): native code, so the load generator
    is not the bottleneck on a small machine. The body file holds gRPC frames (1 byte 0, 4-byte
    big-endian length, the message); h2load sends the same body each time, so with ``distinct=1``
    every text is cached after the first call — the cached-path serving overhead. gRPC statuses
    travel in trailers, which h2load does not read: the caller checks a sample separately."""
    import shutil
    import struct
    import tempfile

    if shutil.which("h2load") is None:
        raise SystemExit("h2load not found: apt-get install nghttp2-client")
    mix = Mix()
    body = mix.request().SerializeToString()
    tmp = Path(tempfile.mkdtemp(prefix="certus-h2load-"))
    data = tmp / "body.bin"
    data.write_bytes(b"\x00" + struct.pack(">I", len(body)) + body)
    log_file = tmp / "requests.log"
    cmd = [
        "h2load", "-n", str(requests), "-c", str(clients), "-m", str(streams),
        "--data", str(data), "--log-file", str(log_file),
        "-H", "content-type: application/grpc", "-H", "te: trailers",
        f"http://{target}/certus.evaluate.v1.Evaluator/Evaluate",
    ]
    t0 = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    elapsed = time.perf_counter() - t0
    latencies, errors = [], Counter()
    for line in log_file.read_text().splitlines():
        _start, status, micros = line.split("\t")[:3]
        if status == "200":
            latencies.append(int(micros) / 1000.0)
        else:
            errors[f"http{status}"] += 1
    import re

    duration = elapsed
    m = re.search(r"finished in ([0-9.]+)(ms|s),", out.stdout)
    if m:
        duration = float(m.group(1)) / (1000.0 if m.group(2) == "ms" else 1.0)
    return RunResult(f"h2load c={clients} m={streams}", duration, latencies, errors)


def console_script() -> Path:
    """The installed ``certus-sidecar`` entry point of this environment (beside its Python)."""
    path = Path(sys.executable).parent / "certus-sidecar"
    if not path.is_file():
        raise RuntimeError(f"{path} not found: install the package (make install) into this environment")
    return path


def start_local_sidecar(
    extra_env: dict[str, str] | None = None,
    *,
    stderr_file: str | None = None,
    drain_stdout: bool = False,
    prefix: str = "certus-bench-",
) -> tuple[subprocess.Popen[str], str, Path]:
    """A sidecar subprocess on a free loopback port with a throwaway home; returns (proc, target, home).

    ``stderr_file``: write the server's stderr (its logs) to ``home / stderr_file`` instead of
    inheriting it; a failed start then quotes its tail. ``drain_stdout``: once the server listens,
    keep reading its stdout in a daemon thread so it can never block on a full pipe."""
    import tempfile
    import threading

    home = Path(tempfile.mkdtemp(prefix=prefix))
    env = dict(os.environ)
    env.update(
        {
            "CERTUS_ADDRESS": "127.0.0.1:0",
            "CERTUS_EVIDENCE_DIR": str(home / "evidence"),
            "CERTUS_SIGNING_KEY": str(home / "keys" / "signing.key"),
            "CERTUS_OUTBOX_DIR": str(home / "outbox"),
            "CERTUS_INTEGRITY_FILE": str(home / "integrity" / "decisions.jsonl"),
            "CERTUS_MANIFEST_DIR": str(home / "manifests"),
            "LOG_LEVEL": "WARNING",
        }
    )
    env.update(extra_env or {})
    # the installed console script, from a directory outside any checkout: as a user runs it
    argv = [str(console_script()), "serve"]
    stderr_path = home / stderr_file if stderr_file else None
    if stderr_path is not None:
        with stderr_path.open("w") as err:
            proc = subprocess.Popen(argv, env=env, cwd=home, stdout=subprocess.PIPE, stderr=err, text=True)
    else:
        proc = subprocess.Popen(argv, env=env, cwd=home, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    deadline = time.time() + 300
    while time.time() < deadline:
        line = proc.stdout.readline()
        if not line:
            tail = f": {stderr_path.read_text()[-2000:]}" if stderr_path is not None else ""
            raise RuntimeError(f"sidecar exited with {proc.wait()}{tail}")
        if "listening on" in line:
            if drain_stdout:
                stdout = proc.stdout
                threading.Thread(target=lambda: [None for _ in stdout], daemon=True).start()
            return proc, line.strip().rsplit(" ", 1)[1], home
    proc.kill()
    raise RuntimeError("sidecar did not start in time")


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("bench", help="bounded load test of Evaluate against a sidecar on localhost")
    p.add_argument("--target", help="HOST:PORT of a running sidecar (default: start one locally)")
    p.add_argument("--concurrency", default="1,8,32", help="closed-loop concurrency levels, comma separated")
    p.add_argument("--rate", default="", help="open-loop rates in req/s, comma separated")
    p.add_argument("--duration", type=float, default=10.0, help="seconds per level (bounded)")
    p.add_argument("--warmup", type=float, default=3.0)
    p.add_argument("--stream", action="store_true", help="use EvaluateStream instead of unary Evaluate")
    p.add_argument("--connections", type=int, default=1,
                   help="HTTP/2 connections to spread the load over (several front-ends share them out)")
    p.add_argument("--frontends", type=int, default=0, metavar="N",
                   help="start the local sidecar with N front-end processes (server.frontends); needs no --target")
    p.add_argument("--h2load", type=int, default=0, metavar="N",
                   help="also drive N unary calls with h2load (same body each time: cached path)")
    p.add_argument("--json", help="write results as JSON to this file")
    p.set_defaults(func=_bench)


def _bench(args: argparse.Namespace) -> int:
    concurrencies = [int(x) for x in args.concurrency.split(",") if x]
    rates = [float(x) for x in args.rate.split(",") if x]
    if args.duration <= 0 or args.duration > 600:
        raise SystemExit("--duration must be in (0, 600] seconds")
    proc = None
    target = args.target
    if args.frontends and target:
        raise SystemExit("--frontends starts a local sidecar: leave out --target")
    if not target:
        proc, target, _ = start_local_sidecar({"CERTUS_FRONTENDS": str(args.frontends)} if args.frontends else None)
    host = target.rsplit(":", 1)[0].strip("[]")
    if host not in ("127.0.0.1", "localhost", "::1") and not host.startswith("127."):
        raise SystemExit("bench only targets loopback addresses")
    try:
        print(f"target {target}  duration {args.duration:g}s per level", flush=True)
        results = asyncio.run(
            run_bench(target, concurrencies, args.duration, args.warmup, args.stream, rates, args.connections)
        )
        if args.h2load:
            for c in concurrencies:
                r = run_h2load(target, args.h2load, clients=min(c, 4), streams=max(1, c // min(c, 4)))
                print(r.line(), flush=True)
                results.append(r)
    finally:
        if proc is not None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(60)
    if args.json:
        Path(args.json).write_text(json.dumps([r.as_dict() for r in results], indent=2))
    return 0
