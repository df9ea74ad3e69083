"""Evidence step cost: decisions signed + durably logged per second, and the latency the step adds
to one evaluation (p50 / p99 of ``await log.append(decision)``), for fsync per decision
(``always``) vs group commit (``group``), at several concurrency levels.

    python tests/benchmarks/bench_evidence.py [--records 2000] [--concurrency 1,16,64,256] [--dir DIR]

Baselines measured in the same run: the pure CPU cost (build canonical payload + Ed25519 sign +
envelope JSON, no disk) and ``never`` (written, not fsynced). Each log is written to a fresh
folder under ``--dir`` (default: a temp folder on the repository's disk, so the fsync cost is that
disk's). ``always`` runs a quarter of the records to stay short.

``--read N`` also times reading back from a log of N records in one segment (the forwarder reads
each record to deliver it and again for a checkpoint's consistency proof): a read that starts where
no earlier read stopped, near the segment's end, against the baseline of parsing every line up to
it (what every such read did before), measured in the same run on the same log; and the leaf
hashes of the last 500 records for a checkpoint's proof, kept by the log against read back.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from certus.sidecar.config import EvidenceConfig  # noqa: E402
from certus.sidecar.evidence.decision import DecisionMetric, DecisionViolation, IntegrityDecision, utc_timestamp  # noqa: E402
from certus.sidecar.evidence.log import EvidenceLog  # noqa: E402
from certus.sidecar.evidence.merkle import leaf_hash  # noqa: E402
from certus.sidecar.signing import DECISION_PAYLOAD_TYPE, SigningKey, canonical_json, sign_envelope  # noqa: E402

KEY = SigningKey(bytes(range(32)))


def h(i: int, tag: str) -> str:
    import hashlib

    return "sha256:" + hashlib.sha256(f"{tag}{i}".encode()).hexdigest()


def decision(i: int) -> IntegrityDecision:
    """A typical decision: 5 context hashes, 4 metrics, one violation (≈ 1.9 KB envelope)."""
    return IntegrityDecision(
        decision_id=str(uuid.uuid4()),
        workspace_id="acme",
        decision_type="combined",
        query_hash=h(i, "q"),
        response_hash=h(i, "r"),
        context_hashes=tuple(h(i, f"c{j}") for j in range(5)),
        metrics=tuple(
            DecisionMetric(n, 0.8125, 0.7, True)
            for n in ("semantic_similarity", "grounding", "faithfulness", "answer_relevancy")
        ),
        guardrail_violations=(DecisionViolation("pii", "high", 0.95, h(i, "v"), "char 40-57", "Redact", "EMAIL_ADDRESS"),),
        outcome="pass",
        overall_score=0.8125,
        manifest_uri="certus://manifests/acme/2025-01",
        mode="shadow",
        timestamp=utc_timestamp(),
        processing_time_ms=12,
    )


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


def bench_cpu(n: int) -> tuple[float, float]:
    """Sign + serialise only: (records/s, mean us)."""
    decs = [decision(i).with_chain(i, "sha256:" + "0" * 64, KEY.key_id) for i in range(n)]
    t0 = time.perf_counter()
    for d in decs:
        sign_envelope(KEY, DECISION_PAYLOAD_TYPE, canonical_json(d.to_payload())).to_json()
    dt = time.perf_counter() - t0
    return n / dt, dt / n * 1e6


async def bench_log(base: Path, fsync: str, concurrency: int, n: int, wait_ms: float) -> dict[str, float]:
    cfg = EvidenceConfig(log_dir=Path(tempfile.mkdtemp(dir=base)), fsync=fsync, group_commit_max_wait_ms=wait_ms)
    log = EvidenceLog.open(cfg, KEY)
    decs = [decision(i) for i in range(n)]
    latencies: list[float] = []
    next_i = 0

    async def worker() -> None:
        nonlocal next_i
        while next_i < n:
            d = decs[next_i]
            next_i += 1
            t = time.perf_counter()
            await log.append(d)
            latencies.append(time.perf_counter() - t)

    for d in decs[:5]:  # warm up (file creation, first fsync)
        await log.append(d)
    next_i = 5
    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - t0
    stats = log.stats()
    await log.close()
    shutil.rmtree(cfg.log_dir, ignore_errors=True)
    return {
        "rate": len(latencies) / elapsed,
        "p50_ms": pct(latencies, 0.50) * 1e3,
        "p99_ms": pct(latencies, 0.99) * 1e3,
        "mean_ms": statistics.fmean(latencies) * 1e3,
        "per_commit": float(stats["records_per_commit"]),  # type: ignore[arg-type]
    }


async def bench_read(base: Path, n: int) -> None:
    """Cold reads of 50 records near the end of a one-segment log of ``n`` records: skipping the
    lines before them unparsed (now) vs parsing every line (the baseline), CPU ms per read."""
    cfg = EvidenceConfig(log_dir=Path(tempfile.mkdtemp(dir=base)), fsync="never", segment_bytes=1 << 30)
    log = EvidenceLog.open(cfg, KEY)
    for i in range(0, n, 500):
        await asyncio.gather(*(log.append(decision(j)) for j in range(i, min(n, i + 500))))
    size = sum(p.stat().st_size for p in cfg.log_dir.glob("segment-*.jsonl"))
    start, durable, segs = n - 100, n - 1, list(log._segments)
    rows = []
    for _ in range(3):
        t = time.process_time()
        base_recs = log._read_from(segs, 0, 0, 0, 0, start, durable, 50)  # parse every line
        t_base = time.process_time() - t
        log._read_hints.clear()
        t = time.process_time()
        recs = log.read(start, 50)
        t_new = time.process_time() - t
        assert base_recs is not None and [r.line for r in recs] == [r.line for r in base_recs]
        rows.append((t_base * 1e3, t_new * 1e3))
    t = time.process_time()
    nxt = log.read(n - 50, 50)  # goes on from the hint the read before left
    t_hint = (time.process_time() - t) * 1e3
    assert [r.seq for r in nxt] == list(range(n - 50, n))
    k = min(500, n)  # a 10 s checkpoint interval at 50 decisions/s
    proof = []
    for _ in range(3):
        log.read(n - k - 1, 1)  # the previous proof's read stopped here (a kept stopping point)
        t = time.process_time()
        from_log = [leaf_hash(r.line) for r in log.read(n - k, k)]  # what each proof did before
        t_read = time.process_time() - t
        t = time.process_time()
        kept = log.leaf_hashes(n - k, n)
        t_kept = time.process_time() - t
        assert kept == from_log
        proof.append((t_read * 1e3, t_kept * 1e3))
    await log.close()
    shutil.rmtree(cfg.log_dir, ignore_errors=True)
    b = statistics.median(r[0] for r in rows)
    c = statistics.median(r[1] for r in rows)
    print(f"read 50 records near the end of one {size / 1e6:.0f} MB segment ({n} records), CPU ms, median of 3:")
    print(f"  baseline (parse every line up to them): {b:8.1f} ms")
    print(f"  skip the lines before them unparsed:    {c:8.1f} ms  ({b / max(c, 1e-9):.0f}x less)")
    print(f"  50 more, going on from where it stopped: {t_hint:7.1f} ms")
    pr, pk = statistics.median(p[0] for p in proof), statistics.median(p[1] for p in proof)
    print(f"leaf hashes of the last {k} records for a checkpoint's consistency proof, CPU ms, median of 3:")
    print(f"  baseline (read back from the previous proof's stop, parse, hash): {pr:6.1f} ms")
    print(f"  kept in memory by the log:                                     {pk:6.2f} ms  ({pr / max(pk, 1e-9):.0f}x less)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--records", type=int, default=2000)
    ap.add_argument("--concurrency", default="1,16,64,256")
    ap.add_argument("--wait-ms", default="0,1", help="group_commit_max_wait_ms values to try for group")
    ap.add_argument("--dir", default=str(ROOT / ".certus" / "bench"))
    ap.add_argument("--read", type=int, default=0, metavar="N", help="also time reads from a log of N records")
    args = ap.parse_args()
    levels = [int(x) for x in args.concurrency.split(",")]
    waits = [float(x) for x in args.wait_ms.split(",")]
    base = Path(args.dir)
    base.mkdir(parents=True, exist_ok=True)
    n = args.records

    print(f"# evidence benchmark  python {platform.python_version()}  cpus={os.cpu_count()}  dir={base}")
    cpu_rate, cpu_us = bench_cpu(n)
    print(f"baseline sign+serialise only (no disk): {cpu_rate:,.0f} records/s, {cpu_us:.1f} us/record")
    print()
    header = f"{'fsync':<8}{'wait_ms':>8}{'conc':>6}{'records/s':>12}{'x cpu':>8}{'p50 ms':>9}{'p99 ms':>9}{'per fsync':>11}"
    print(header)
    print("-" * len(header))
    results: dict[tuple[str, float, int], dict[str, float]] = {}
    plan: list[tuple[str, float]] = [("never", 0.0)] + [("group", w) for w in waits] + [("always", 0.0)]
    for fsync, wait in plan:
        for c in levels:
            count = max(200, n // 4) if fsync == "always" else n
            r = asyncio.run(bench_log(base, fsync, c, count, wait))
            results[(fsync, wait, c)] = r
            per = f"{r['per_commit']:.1f}" if fsync != "never" else "-"
            print(
                f"{fsync:<8}{wait:>8g}{c:>6}{r['rate']:>12,.0f}{r['rate'] / cpu_rate:>8.2f}"
                f"{r['p50_ms']:>9.3f}{r['p99_ms']:>9.3f}{per:>11}"
            )
    print()
    print("group commit vs fsync per decision (records/s ratio, same concurrency):")
    for c in levels:
        g = results[("group", waits[0], c)]["rate"]
        a = results[("always", 0.0, c)]["rate"]
        print(f"  concurrency {c:>4}: group(wait {waits[0]:g} ms) {g:,.0f}/s vs always {a:,.0f}/s = {g / a:.1f}x")
    if args.read:
        print()
        asyncio.run(bench_read(base, args.read))


if __name__ == "__main__":
    main()
