"""Soak: the installed sidecar at a steady share of its capacity for a long time.

    python tests/benchmarks/bench_soak.py [--minutes 30] [--load 0.7] [--window-s 60] [--variant int8]

Starts ``certus-sidecar serve`` (the installed console script, defaults but the model variant, its
own throwaway home, the ``file`` integrity sink) and:

1. capacity: a closed loop at 8 callers for ``--capacity-s`` seconds (after a warm-up) gives the
   served req/s;
2. soak: an open loop at ``--load`` x that rate for ``--minutes``, the benchmark's request mix
   (fresh query and answer per call, 5 chunks from a pool of 40). Every ``--window-s`` it prints the
   window's served and skipped calls, p50/p99 latency (scheduled send to answer, so queueing counts),
   the server's RSS (with the PII worker's), its open file descriptors, the evidence log's and
   forwarder's positions, and the server's full garbage collections in the window (passes and the
   milliseconds they held the GIL: GetInfo's ``gc.*``);
3. at the end: every acknowledged ``evidence_id`` must be in the log (once: ids are distinct);
   ``certus-sidecar verify`` must pass on the log; the integrity file must hold every record.

Drift is judged from the table: the last window against the first (RSS, fds, p99). Bounded by
``--minutes``; load only on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import subprocess
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import grpc
import numpy as np

from certus.sidecar.evidence.records import iter_log
from certus.sidecar.loadgen import Mix, _closed_loop, console_script, start_local_sidecar
from certus.sidecar.memory import rss_bytes
from certus.sidecar.protos import pb, pb_grpc


def children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


class Window:
    def __init__(self) -> None:
        self.latencies: list[float] = []
        self.skipped: collections.Counter[str] = collections.Counter()
        self.errors: collections.Counter[str] = collections.Counter()


async def soak(
    target: str, pid: int, home: Path, rate: float, minutes: float, window_s: float
) -> tuple[list[str], list[str]]:
    """Open loop at ``rate`` for ``minutes``; returns (table rows, acknowledged evidence ids)."""
    acked: list[tuple[int, str]] = []  # (send order, evidence_id)
    rows: list[str] = []
    windows: list[Window] = []
    async with grpc.aio.insecure_channel(target) as channel:
        stub = pb_grpc.EvaluatorStub(channel)
        mix = Mix()
        start = time.perf_counter()
        end = start + minutes * 60.0
        n_windows = int(np.ceil(minutes * 60.0 / window_s))
        windows = [Window() for _ in range(n_windows)]
        tasks: set[asyncio.Task[None]] = set()

        async def one(i: int, scheduled: float) -> None:
            w = windows[min(int((scheduled - start) / window_s), n_windows - 1)]
            try:
                resp = await stub.Evaluate(mix.request(), timeout=30)
            except grpc.aio.AioRpcError as exc:
                w.errors[exc.code().name] += 1
                return
            acked.append((i, resp.evidence_id))
            if resp.skipped:
                w.skipped[resp.skip_reason] += 1
            else:
                w.latencies.append((time.perf_counter() - scheduled) * 1000.0)

        async def reporter() -> None:
            seen = {"gc.full_passes": 0.0, "gc.full_pause_ms_total": 0.0}  # the counters at the last window
            for k in range(n_windows):
                await asyncio.sleep(max(0.0, start + (k + 1) * window_s + 2.0 - time.perf_counter()))
                w = windows[k]
                lat = np.asarray(w.latencies) if w.latencies else np.asarray([np.nan])
                rss = sum(rss_bytes(p) for p in [pid, *children(pid)]) / 2**20
                details = dict((await stub.GetInfo(pb.GetInfoRequest(), timeout=10)).details)
                full = {key: float(details.get(key, 0)) - seen[key] for key in seen}
                seen.update({key: float(details.get(key, 0)) for key in seen})
                row = (
                    f"| {k + 1} | {len(w.latencies)} | {sum(w.skipped.values())} | {sum(w.errors.values())} | "
                    f"{np.percentile(lat, 50):.1f} | {np.percentile(lat, 99):.1f} | {rss:.0f} | {open_fds(pid)} | "
                    f"{details.get('evidence.last_seq', '?')} | {details.get('forwarder.backlog', '?')} | "
                    f"{full['gc.full_passes']:.0f} / {full['gc.full_pause_ms_total']:.0f} |"
                )
                rows.append(row)
                print(row, flush=True)

        rep = asyncio.create_task(reporter())
        i = 0
        while True:
            scheduled = start + i / rate
            if scheduled >= end:
                break
            delay = scheduled - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            t = asyncio.create_task(one(i, scheduled))
            tasks.add(t)
            t.add_done_callback(tasks.discard)
            i += 1
        await asyncio.gather(*list(tasks))
        await rep
    return rows, [eid for _, eid in sorted(acked)]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=30.0)
    ap.add_argument("--load", type=float, default=0.7, help="share of the measured capacity to offer")
    ap.add_argument("--window-s", type=float, default=60.0)
    ap.add_argument("--capacity-s", type=float, default=20.0)
    ap.add_argument("--variant", default="int8")
    args = ap.parse_args()

    proc, target, home = start_local_sidecar(
        {"CERTUS_MODEL_VARIANT": args.variant, "LOG_LEVEL": "WARNING"}, stderr_file="stderr.log", drain_stdout=True
    )
    try:
        async def capacity() -> float:
            async with grpc.aio.insecure_channel(target) as channel:
                stub = pb_grpc.EvaluatorStub(channel)
                await _closed_loop([stub], Mix(), 4, 5.0, False)  # warm-up: JIT, caches, allocator
                r = await _closed_loop([stub], Mix(), 8, args.capacity_s, False)
                print(r.line(), flush=True)
                return r.rps

        cap = asyncio.run(capacity())
        rate = args.load * cap
        pid = proc.pid
        fds0 = open_fds(pid)
        print(f"\ncapacity {cap:.1f} req/s (closed loop, 8 callers); soak at {rate:.1f} req/s "
              f"({args.load:.0%}) for {args.minutes:g} min; server pid {pid}, {fds0} open fds after warm-up\n")
        print("| window | served | skipped | errors | p50 ms | p99 ms | RSS MiB (server + PII worker) | open fds | "
              "evidence last_seq | forward backlog | full gc passes / ms paused |")
        print("|---|---|---|---|---|---|---|---|---|---|---|")
        t0 = time.time()
        rows, acked = asyncio.run(soak(target, pid, home, rate, args.minutes, args.window_s))
        elapsed = time.time() - t0
    finally:
        proc.terminate()
        proc.wait(120)
    log_ids = [r.evidence_id for r in iter_log(home / "evidence")]
    position = {eid: k for k, eid in enumerate(log_ids)}
    missing = [e for e in acked if e not in position]
    argv = [str(console_script()), "verify", str(home / "evidence")]
    verify = subprocess.run(argv, capture_output=True, text=True, check=False)
    integrity = home / "integrity" / "decisions.jsonl"
    delivered = sum(1 for _ in integrity.open()) if integrity.exists() else 0
    print(
        f"\n{len(acked)} acknowledged decisions in {elapsed / 60:.1f} min; log holds {len(log_ids)} records "
        f"(warm-up included), {len(set(log_ids))} distinct; acknowledged but missing: {len(missing)}; "
        f"`certus-sidecar verify`: {'ok' if verify.returncode == 0 else 'FAILED: ' + verify.stdout[-300:]}; "
        f"integrity file: {delivered} records delivered of {len(log_ids)}"
    )
    summary = {"capacity_rps": round(cap, 1), "rate_rps": round(rate, 1), "acked": len(acked), "missing": len(missing),
               "verify_ok": verify.returncode == 0, "delivered": delivered, "log_records": len(log_ids)}
    print(json.dumps(summary))
    return 0 if not missing and verify.returncode == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
