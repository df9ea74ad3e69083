"""The no-encoder floor: CPU per Evaluate request of the whole sidecar when every text is cached.

    python tests/benchmarks/bench_floor.py [--threads 4,2,1] [--rounds 2] [--requests 1200]

Issue 14's goal 1 is stated as this floor: at most 2 ms of CPU outside the encoder per typical
request, that is >= 500 req/s per core with the encoder out of the way. ``bench_cpu.py`` times the
stages one at a time on one thread; this measures what the running server pays per request, all of
it: gRPC and protobuf, the stages on their threads and the contention between them, the PII worker
process, signing and the evidence log.

The installed sidecar (``certus-sidecar serve``, defaults, a throwaway home, loopback) is driven
with h2load (native, so the load generator is not what is measured; Debian ``nghttp2-client``),
which sends the same request each time: after the first call every text is in the caches, so the
encoder does not run and what is left is the floor. For each ``--threads`` value
(``CERTUS_STAGE_THREADS``, the threads that run the guardrail scan and scoring of each request) a
fresh sidecar serves ``--requests`` calls at concurrency 1 and then 8 (4 connections x 2 streams);
the CPU of the server process and its children (the PII worker; front-ends if any) is read from
/proc before and after. Configurations are interleaved over ``--rounds`` (the machine is shared
and noisy). The first value of ``--threads`` is the baseline of the ratios.

Printed: req/s, latency p50/p99, CPU ms per request, req/s per core at that CPU (1000 / CPU ms), and
each configuration's CPU per request against the baseline's. Every decision must be in the
evidence log (checked per sidecar through GetInfo).
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import grpc  # noqa: E402

from certus.sidecar.loadgen import run_h2load, start_local_sidecar  # noqa: E402
from certus.sidecar.protos import pb, pb_grpc  # noqa: E402

CLK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU of ``pid`` and of its children (each process's threads included)."""
    total = 0.0
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    for p in [pid, *map(int, children)]:
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except FileNotFoundError:
            continue
        total += (int(fields[11]) + int(fields[12])) / CLK
    return total


def records(target: str) -> int:
    with grpc.insecure_channel(target) as ch:
        info = pb_grpc.EvaluatorStub(ch).GetInfo(pb.GetInfoRequest(), timeout=10)
    return int(info.details["evidence.last_seq"]) + 1


def measure(threads: int, n: int, warm: int) -> list[dict[str, float]]:
    proc, target, _ = start_local_sidecar({"CERTUS_STAGE_THREADS": str(threads)}, stderr_file="err.log", drain_stdout=True)
    out = []
    try:
        run_h2load(target, warm, clients=1, streams=1)  # fills the caches
        for conc in (1, 8):
            before, logged = cpu_seconds(proc.pid), records(target)
            r = run_h2load(target, n, clients=min(conc, 4), streams=max(1, conc // 4))
            cpu_ms = (cpu_seconds(proc.pid) - before) * 1000.0 / n
            done = len(r.latencies_ms)
            missing = done - (records(target) - logged)
            if r.errors or missing:
                raise SystemExit(f"threads={threads} c={conc}: errors {dict(r.errors)}, {missing} decisions not logged")
            lat = sorted(r.latencies_ms)
            out.append({
                "threads": threads, "c": conc, "rps": done / r.duration_s, "cpu_ms": cpu_ms,
                "p50": lat[len(lat) // 2], "p99": lat[min(len(lat) - 1, int(len(lat) * 0.99))],
            })
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", default="4,2,1", help="CERTUS_STAGE_THREADS values; the first is the baseline")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--requests", type=int, default=1200, help="calls per concurrency level (bounded)")
    ap.add_argument("--warmup", type=int, default=200)
    args = ap.parse_args()
    threads = [int(x) for x in args.threads.split(",") if x]
    if not threads or min(threads) < 1 or not 1 <= args.requests <= 20000:
        raise SystemExit("--threads: integers >= 1; --requests: 1..20000")
    rows: dict[tuple[int, int], list[dict[str, float]]] = {}
    for rnd in range(args.rounds):
        for t in threads:
            for row in measure(t, args.requests, args.warmup):
                rows.setdefault((t, int(row["c"])), []).append(row)
                print(f"round {rnd + 1} threads={t} c={int(row['c'])}: {row['rps']:.1f} req/s, "
                      f"p50 {row['p50']:.2f} ms, p99 {row['p99']:.2f} ms, CPU {row['cpu_ms']:.2f} ms/request", flush=True)
    print(f"\n### No-encoder floor (h2load, cached request, {args.requests} calls per level, "
          f"{args.rounds} round(s) interleaved; median over rounds, range in brackets)\n")
    print("| stage threads | concurrency | req/s | p50 ms | p99 ms | CPU ms/request | req/s per core | CPU vs baseline |")
    print("|---|---|---|---|---|---|---|---|")
    for conc in (1, 8):
        base = statistics.median(r["cpu_ms"] for r in rows[(threads[0], conc)])
        for t in threads:
            rs = rows[(t, conc)]

            def med(k: str) -> float:
                return statistics.median(r[k] for r in rs)

            cpu = [r["cpu_ms"] for r in rs]
            print(f"| {t}{' (baseline)' if t == threads[0] else ''} | {conc} | {med('rps'):.1f} | {med('p50'):.2f} | "
                  f"{med('p99'):.2f} | {med('cpu_ms'):.2f} [{min(cpu):.2f}-{max(cpu):.2f}] | {1000.0 / med('cpu_ms'):.0f} | "
                  f"{med('cpu_ms') / base:.2f}x |")
    print("\nGoal (issue 14): <= 2 ms of CPU per request outside the encoder (>= 500 req/s per core).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
