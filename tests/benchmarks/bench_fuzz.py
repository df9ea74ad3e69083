"""The fuzz harness of tests/integration/test_fuzz.py at length: many more messages and streams.

    python tests/benchmarks/bench_fuzz.py [--messages 100000] [--stream-rounds 20] [--budget-s 3600]

The CI test sends 2,000 messages (60 s budget). This runs the same harness, the same seed and the
same checks against ``certus-sidecar serve`` (installed console script, throwaway home): the fixed
cases (oversized fields, wrong wire types, invalid UTF-8, 10k chunks, adversarial texts, junk
metadata) plus ``--messages`` mutated or random protobuf messages to every unary method, 16 in
flight, then ``--stream-rounds`` rounds of the stream cases (mixed good and bad items, an item over
the message limit, a client that goes away mid-stream). Every answer must be a proper status
(OK, INVALID_ARGUMENT naming the field, NOT_FOUND, RESOURCE_EXHAUSTED), never UNKNOWN/INTERNAL, no
evaluator_error skip, no hang (60 s per call), the process alive and SERVING at the end, and RSS
back within 1.25x + 64 MiB of the warmed-up baseline plus the budgets of the sidecar's bounded
caches (the token-state cache's ``CERTUS_TOKEN_CACHE_MB`` and the embedding cache's
``CERTUS_CACHE_ENTRIES`` vectors: filling them with fuzz texts is what they are for, not a leak).
Prints the tallies and the figures; exits 1 on any failure. Bounded by ``--messages`` and
``--budget-s``; only 127.0.0.1.
"""

from __future__ import annotations

import argparse
import random
import signal
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.integration import test_fuzz as F

MIB = 1024  # KiB


def cache_budget_kib() -> float:
    """What the sidecar's bounded caches may hold at their defaults (the harness sets neither)."""
    from certus.sidecar.config import BatcherConfig

    cfg = BatcherConfig()
    return cfg.token_cache_mb * MIB + cfg.cache_entries * 384 * 4 / 1024  # float32 MiniLM vectors


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--messages", type=int, default=100_000)
    ap.add_argument("--stream-rounds", type=int, default=20)
    ap.add_argument("--budget-s", type=float, default=3600.0)
    ap.add_argument("--settle-s", type=float, default=30.0, help="wait this long at most for RSS to come back")
    args = ap.parse_args()

    sc = F.start_sidecar()
    channel = grpc.insecure_channel(sc.target, options=[("grpc.max_receive_message_length", 64 * 1024 * 1024)])
    failures: list[str] = []
    try:
        F.warm_up(channel)
        rss0, hwm0 = sc.rss_kib()
        rng = random.Random(F.SEED)
        fixed = F.oversized_cases() + F.wire_cases(rng) + F.adversarial_cases(rng) + F.metadata_cases(rng)
        cases = fixed + F.random_cases(rng, max(0, args.messages - len(fixed)))
        rng.shuffle(cases)
        out = F.Outcome()
        t0 = time.monotonic()
        F.run_unary(channel, cases, t0 + args.budget_s, out)
        unary_s = time.monotonic() - t0
        peak_during = sc.rss_kib()[1]
        t1 = time.monotonic()
        for k in range(args.stream_rounds):
            F.run_streams(channel, out, seed=F.SEED + 1 + k)
        streams_s = time.monotonic() - t1
        alive = sc.proc.poll() is None
        serving = alive and health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=10
        ).status == health_pb2.HealthCheckResponse.SERVING
        caches = cache_budget_kib()
        bound = 1.25 * rss0 + 64 * MIB + caches
        t_settle = time.monotonic()
        rss1, hwm1 = sc.rss_kib()
        while rss1 >= bound and time.monotonic() < t_settle + args.settle_s:
            time.sleep(0.5)
            rss1, hwm1 = sc.rss_kib()
        settled_s = time.monotonic() - t_settle
        failures = list(out.failures)
        if not alive:
            failures.append("the sidecar died")
        if not serving:
            failures.append("health is not SERVING after the run")
        if "UNKNOWN" in out.by_code or "INTERNAL" in out.by_code:
            failures.append(f"UNKNOWN/INTERNAL answers: {dict(out.by_code)}")
        if rss1 >= bound:
            failures.append(f"RSS {rss1 / MIB:.0f} MiB not back within 1.25x + 64 MiB + {caches / MIB:.0f} MiB of "
                            f"cache budgets of {rss0 / MIB:.0f} MiB")

        print(f"fuzz seed {F.SEED:#x}: {out.sent} unary messages in {unary_s:.0f} s ({out.sent / unary_s:.0f}/s, "
              f"{F.WINDOW} in flight); {args.stream_rounds} stream rounds ({args.stream_rounds * 5} calls, "
              f"{args.stream_rounds * 120} stream items) in {streams_s:.0f} s")
        print("| category | status | answers |\n|---|---|---|")
        for (cat, code), n in sorted(out.by_category.items()):
            print(f"| {cat} | {code} | {n} |")
        print(f"\nstatus codes: {dict(out.by_code)}; Evaluate skip reasons: {dict(out.skip_reasons)}")
        print(f"RSS: warmed-up baseline {rss0 / 1024:.0f} MiB, peak {max(peak_during, hwm1) / 1024:.0f} MiB "
              f"(VmHWM), after the run {rss1 / 1024:.0f} MiB ({rss1 / rss0:.2f}x, {settled_s:.0f} s after it; "
              f"bound {bound / MIB:.0f} MiB incl. {caches / MIB:.0f} MiB of cache budgets); "
              f"alive {alive}, SERVING {serving}")
        print(f"failures: {len(failures)}")
        for f in failures[:30]:
            print("  " + f)
    finally:
        channel.close()
        if sc.proc.poll() is None:
            sc.proc.send_signal(signal.SIGTERM)
            sc.proc.wait(60)
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
