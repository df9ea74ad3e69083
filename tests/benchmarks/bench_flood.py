"""Flood a sidecar subprocess with large requests at high concurrency and follow its RSS.

    python tests/benchmarks/bench_flood.py [--concurrency 64] [--requests 1500] [--seconds 20]

Starts ``certus-sidecar serve`` on a free loopback port with a per-workspace rate limit, drains the
flood workspace's bucket with one small call, then sends (round robin, ``concurrency`` in flight):

* oversize   — one field of ``max_message_bytes + 64 KiB``: refused by gRPC (RESOURCE_EXHAUSTED);
* limited    — the largest valid request (10k query, 50k response, 50 x 10k chunks, 560 kB):
               decoded and validated, then refused by the token bucket (RESOURCE_EXHAUSTED);
* invalid    — 51 chunks of 10k characters (INVALID_ARGUMENT, context);
* garbage    — 3 MB of invalid UTF-8 in a string field (INVALID_ARGUMENT, request).

The server's RSS (/proc/<pid>/status VmRSS, or psutil when installed) is sampled every 20 ms: the
baseline after warm-up, the peak during the flood, and the value once the flood is over (waiting up
to --settle seconds for it to come within 32 MiB of the baseline). Runs with the memory reclaimer
(sidecar/memory.py) off, with the defaults, and with server.max_concurrent_streams=--streams.
Bounded by --requests and --seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import grpc

from certus.sidecar.memory import rss_bytes
from certus.sidecar.protos import pb

MAX_MESSAGE_BYTES = 4 * 1024 * 1024
FLOOD_WORKSPACE = "flood"
METHOD = "/certus.evaluate.v1.Evaluator/Evaluate"


def rss_kib(pid: int) -> int:
    """Resident set size of ``pid`` in KiB (the sidecar's own reader of /proc)."""
    kib = rss_bytes(pid) // 1024
    if not kib:
        raise RuntimeError(f"no VmRSS for pid {pid}")
    return kib


def varint(n: int) -> bytes:
    """Protobuf base-128 varint; negative numbers as protobuf encodes them (10-byte two's complement)."""
    n &= (1 << 64) - 1
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def flood_payloads(max_message_bytes: int = MAX_MESSAGE_BYTES) -> dict[str, bytes]:
    """The four request kinds, serialized (each sent as raw bytes)."""
    big_query = "q" * (max_message_bytes + 64 * 1024)
    limited = pb.EvaluateRequest(
        workspace_id=FLOOD_WORKSPACE,
        query="q" * 10_000,
        response="r" * 50_000,
        context=[f"{i:02d}" + "c" * 9_998 for i in range(50)],
    )
    invalid = pb.EvaluateRequest(
        workspace_id=FLOOD_WORKSPACE, query="q", response="r", context=["c" * 10_000] * 51
    )
    garbage_len = 3 * 1024 * 1024
    garbage = b"\x1a" + varint(garbage_len) + b"\xff" * garbage_len  # field 3 (response): not UTF-8
    return {
        "oversize": pb.EvaluateRequest(workspace_id=FLOOD_WORKSPACE, query=big_query, response="r").SerializeToString(),
        "limited": limited.SerializeToString(),
        "invalid": invalid.SerializeToString(),
        "garbage": garbage,
    }


EXPECTED = {
    "oversize": grpc.StatusCode.RESOURCE_EXHAUSTED,
    "limited": grpc.StatusCode.RESOURCE_EXHAUSTED,
    "invalid": grpc.StatusCode.INVALID_ARGUMENT,
    "garbage": grpc.StatusCode.INVALID_ARGUMENT,
}


@dataclass
class FloodResult:
    sent: int = 0
    seconds: float = 0.0
    bytes_sent: int = 0
    codes: dict[str, collections.Counter[str]] = field(default_factory=dict)
    unexpected: list[str] = field(default_factory=list)


async def flood(
    target: str, concurrency: int, requests: int, seconds: float, kinds: list[str] | None = None
) -> FloodResult:
    """Send up to ``requests`` calls (at most ``seconds``), ``concurrency`` in flight."""
    payloads = flood_payloads()
    kinds = kinds or list(payloads)
    result = FloodResult(codes={k: collections.Counter() for k in kinds})
    options = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", 16 * 1024 * 1024)]
    t0 = time.perf_counter()
    async with grpc.aio.insecure_channel(target, options=options) as channel:
        call = channel.unary_unary(METHOD, request_serializer=lambda b: b, response_deserializer=lambda b: b)
        counter = iter(range(requests))

        async def worker() -> None:
            for i in counter:
                if time.perf_counter() - t0 > seconds:
                    return
                kind = kinds[i % len(kinds)]
                try:
                    await call(payloads[kind], timeout=60)
                    code = grpc.StatusCode.OK
                except grpc.aio.AioRpcError as exc:
                    code = exc.code()
                result.sent += 1
                result.bytes_sent += len(payloads[kind])
                result.codes[kind][code.name] += 1
                if code != EXPECTED[kind]:
                    result.unexpected.append(f"{kind}: {code.name}")

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    result.seconds = time.perf_counter() - t0
    return result


class RssSampler:
    """Samples a process's RSS on a thread every ``interval_s``; keeps the peak and the series."""

    def __init__(self, pid: int, interval_s: float = 0.02) -> None:
        self.pid = pid
        self.interval_s = interval_s
        self.peak_kib = 0
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def _run(self) -> None:
        t0 = time.perf_counter()
        while not self._stop.is_set():
            kib = rss_kib(self.pid)
            self.peak_kib = max(self.peak_kib, kib)
            self.samples.append((time.perf_counter() - t0, kib))
            self._stop.wait(self.interval_s)

    def __enter__(self) -> "RssSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()


def settle_rss(pid: int, target_kib: int, max_wait_s: float = 5.0) -> int:
    """RSS once it is back under ``target_kib``, or after ``max_wait_s`` (the last value seen)."""
    deadline = time.perf_counter() + max_wait_s
    kib = rss_kib(pid)
    while kib > target_kib and time.perf_counter() < deadline:
        time.sleep(0.1)
        kib = rss_kib(pid)
    return kib


def sidecar_env(rate_limit_rps: float = 0.001, burst: int = 1) -> dict[str, str]:
    return {
        "CERTUS_RATE_LIMIT_RPS": str(rate_limit_rps),
        "CERTUS_RATE_LIMIT_BURST": str(burst),
        "CERTUS_MAX_MESSAGE_BYTES": str(MAX_MESSAGE_BYTES),
        "CERTUS_INTRA_OP_THREADS": "1",
        "LOG_LEVEL": "WARNING",
    }


def warm_and_drain(target: str) -> None:
    """A few small calls (first-use costs), then drain the flood workspace's bucket."""
    from certus.sidecar.protos import pb_grpc

    with grpc.insecure_channel(target) as ch:
        stub = pb_grpc.EvaluatorStub(ch)
        small = dict(query="Who?", response="The Normans.", context=["The Normans came from Normandy."])
        for i in range(3):
            stub.Evaluate(pb.EvaluateRequest(workspace_id=f"warm{i}", **small), timeout=60)
        stub.Evaluate(pb.EvaluateRequest(workspace_id=FLOOD_WORKSPACE, **small), timeout=60)
        # one round of each flood kind, so lazily allocated buffers exist before the baseline
        call = ch.unary_unary(METHOD, request_serializer=lambda b: b, response_deserializer=lambda b: b)
        for payload in flood_payloads().values():
            try:
                call(payload, timeout=60)
            except grpc.RpcError:
                pass


def measured_flood(pid: int, target: str, concurrency: int, requests: int, seconds: float) -> tuple[int, int, FloodResult]:
    """Warm up and drain, take the RSS baseline, then flood while sampling RSS:
    (baseline KiB, peak KiB, result)."""
    warm_and_drain(target)
    time.sleep(0.5)
    baseline = rss_kib(pid)
    with RssSampler(pid) as sampler:
        res = asyncio.run(flood(target, concurrency, requests, seconds))
    return baseline, sampler.peak_kib, res


def run_variant(label: str, extra_env: dict[str, str], args: argparse.Namespace) -> bool:
    from certus.sidecar.loadgen import start_local_sidecar

    env = sidecar_env()
    env.update(extra_env)
    proc, target, _home = start_local_sidecar(env)
    try:
        baseline, peak, res = measured_flood(proc.pid, target, args.concurrency, args.requests, args.seconds)
        t_end = time.perf_counter()
        settled = settle_rss(proc.pid, baseline + 32 * 1024, max_wait_s=args.settle)
        settle_s = time.perf_counter() - t_end
        alive = proc.poll() is None
        mib = 1024.0
        print(f"[{label}] sidecar on {target}; concurrency {args.concurrency}; max message {MAX_MESSAGE_BYTES} B")
        print(f"  sent {res.sent} requests, {res.bytes_sent / 2**20:.0f} MiB in {res.seconds:.1f} s "
              f"({res.sent / res.seconds:.0f} req/s, {res.bytes_sent / 2**20 / res.seconds:.0f} MiB/s)")
        for kind, counts in res.codes.items():
            print(f"    {kind:9s} {dict(counts)}")
        print(f"  unexpected statuses: {len(res.unexpected)} {res.unexpected[:5]}; server alive: {alive}")
        print(f"  RSS baseline {baseline / mib:.0f} MiB | peak {peak / mib:.0f} MiB "
              f"(+{(peak - baseline) / mib:.0f}) | after {settled / mib:.0f} MiB "
              f"({(settled - baseline) / mib:+.0f}, x{settled / baseline:.3f} of baseline; "
              f"{'within' if settled <= baseline + 32 * 1024 else 'NOT within'} +32 MiB after {settle_s:.1f} s)")
        return alive and not res.unexpected
    finally:
        proc.terminate()
        proc.wait(30)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--requests", type=int, default=1500)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--settle", type=float, default=6.0, help="max seconds to wait for RSS to come back")
    ap.add_argument("--streams", type=int, default=64, help="also run with server.max_concurrent_streams=N (0: skip)")
    args = ap.parse_args()
    if not (0 < args.seconds <= 120 and 0 < args.requests <= 100_000 and 0 < args.concurrency <= 1024):
        raise SystemExit("keep it bounded: seconds <= 120, requests <= 100000, concurrency <= 1024")
    ok = True
    variants: list[tuple[str, dict[str, str]]] = [
        ("reclaim off", {"CERTUS_MEMORY_RECLAIM_S": "0"}),
        ("defaults (reclaim on)", {}),
    ]
    if args.streams > 0:
        variants.append((f"max_concurrent_streams={args.streams}", {"CERTUS_MAX_CONCURRENT_STREAMS": str(args.streams)}))
    for label, env in variants:
        ok = run_variant(label, env, args) and ok
    return 0 if ok else 1


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    sys.exit(main())
