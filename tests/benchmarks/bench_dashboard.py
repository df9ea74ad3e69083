"""How the dashboard holds up on a large evidence log (issue 16: "fast on 1 million decisions").

    python tests/benchmarks/bench_dashboard.py [--records 1000000] [--dir DIR] [--no-baseline]

Writes a log of N real signed, chained decisions (seeded scores, 3 workspaces, 6 manifest versions,
90 days; reused when DIR already holds one), then measures:

- the one-time index build (every record verified: signature, schema, seq, prev_hash) and its size;
- page views over HTTP against the real dashboard (uvicorn on loopback, httpx): the overview cold
  (charts drawn) and warm (cached per index version), filtered by workspace and by week, the
  decision drill-down by evaluation_id and by evidence_id (the record re-read and its signature
  checked), the recent list, the evidence page, /api/status;
- incremental catch-up after 1,000 more decisions are appended;
- the baseline a page would pay without the index, measured in the same run: what
  ``certus-sidecar report`` does per run (verify the log, then summarise it: a full rescan).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from certus.sidecar import config as config_mod  # noqa: E402
from certus.sidecar.config import EvidenceConfig  # noqa: E402
from certus.sidecar.dashboard.web import Dashboard  # noqa: E402
from certus.sidecar.evidence.log import EvidenceLog  # noqa: E402
from certus.sidecar.evidence.records import iter_log  # noqa: E402
from certus.sidecar.signing import load_or_create  # noqa: E402
from tests.dashboard_data import synthetic_decision, write_synthetic_log  # noqa: E402


def timed(fn, repeat: int = 1) -> tuple[float, object]:  # type: ignore[no-untyped-def]
    times, out = [], None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--records", type=int, default=1_000_000)
    ap.add_argument("--dir", help="work directory (kept; a log already there is reused)")
    ap.add_argument("--no-baseline", action="store_true", help="skip the full-rescan baseline")
    args = ap.parse_args()
    work = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="bench-dashboard-"))
    log_dir, key_file = work / "log", work / "signing.key"
    work.mkdir(parents=True, exist_ok=True)
    key, _ = load_or_create(key_file)
    if not log_dir.exists():
        t, _ = timed(lambda: write_synthetic_log(log_dir, key, args.records))
        print(f"wrote {args.records:,} signed decisions in {t:.0f} s ({args.records / t:,.0f}/s)")
    log_bytes = sum(p.stat().st_size for p in log_dir.glob("segment-*.jsonl"))
    cfg = config_mod.load(env={}, overrides={"dashboard": {"state_dir": work / "state", "index_interval_s": 3600}})
    index_file = next((work / "state").glob("index-*.sqlite"), None) if (work / "state").exists() else None
    if index_file is not None:
        for p in (work / "state").glob("index-*"):
            p.unlink()  # measure the build from nothing
    dash = Dashboard(cfg, log_dir=log_dir, keys=[key.verify_key])
    t_build, n = timed(dash.index.catch_up)
    index_file = next((work / "state").glob("index-*.sqlite"))
    print(f"log: {n:,} records, {log_bytes / 2**20:,.0f} MiB")
    print(f"index build (verify + index every record): {t_build:.1f} s = {t_build / n * 1e6:.0f} µs/record; "
          f"index file {index_file.stat().st_size / 2**20:,.0f} MiB")

    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, daemon=True).start()
    port = asyncio.run_coroutine_threadsafe(dash.serve("127.0.0.1:0"), loop).result(60)
    url = f"http://127.0.0.1:{port}"
    client = httpx.Client(base_url=url, timeout=600)
    some = dash.index.recent(1)[0]

    def get(path: str) -> httpx.Response:
        r = client.get(path)
        r.raise_for_status()
        return r

    rows = []

    def page(name: str, path: str, repeat: int = 5) -> None:
        t_cold, _ = timed(lambda: get(path))
        t_warm, _ = timed(lambda: get(path), repeat)
        rows.append((name, t_cold * 1e3, t_warm * 1e3))

    page("overview (all, per day)", "/")
    page("overview (workspace acme, per week)", "/?workspace=acme&unit=week")
    page("overview (last 30 days)", "/?range=30")
    page("drill-down by evaluation_id", f"/decisions/{some['evaluation_id']}")
    page("drill-down by evidence_id", f"/decisions/{some['evidence_id']}")
    page("recent failures", "/decisions?outcome=fail")
    page("evidence", "/evidence")
    page("/api/status", "/api/status")
    print(f"\npage views on {n:,} decisions (HTTP, loopback; cold = first view after indexing, warm = median of 5):")
    print(f"  {'page':40s} {'cold ms':>9s} {'warm ms':>9s}")
    for name, c, w in rows:
        print(f"  {name:40s} {c:9.1f} {w:9.1f}")

    async def grow(k: int) -> None:
        ev = EvidenceLog.open(EvidenceConfig(log_dir=log_dir, fsync="never", checkpoint_interval_s=0), key)
        rng = random.Random(99)
        for i in range(k):
            await ev.append(synthetic_decision(n + i, rng, n=n + k))
        await ev.close()

    asyncio.run(grow(1000))
    t_inc, m = timed(dash.index.catch_up)
    dash._cache.clear()  # a view after the chart cache's TTL: drawn again from the grown rollups
    t_after, _ = timed(lambda: get("/"))
    print(f"\nincremental: {m:,} new records indexed in {t_inc * 1e3:.0f} ms ({t_inc / max(1, m) * 1e6:.0f} µs/record); "
          f"next overview (redrawn) {t_after * 1e3:.0f} ms")
    assert dash.index.status()["records"] == n + m

    if not args.no_baseline:
        from certus.sidecar.toolkit.report.gather import summarize_evidence

        t_scan, s = timed(lambda: summarize_evidence(log_dir, [key.verify_key]))
        t_iter, cnt = timed(lambda: sum(1 for _ in iter_log(log_dir)))
        warm_overview = rows[0][2]
        print(f"\nbaseline, same run: a rescan per view (verify + summarise, what `report` does): {t_scan:.1f} s "
              f"for {s.decisions:,} decisions; parsing alone (iter_log, no signatures): {t_iter:.1f} s")
        print(f"  overview warm {warm_overview:.1f} ms / cold {rows[0][1]:.0f} ms vs rescan {t_scan * 1e3:,.0f} ms: "
              f"{t_scan * 1e3 / rows[0][1]:,.0f}x faster cold, {t_scan * 1e3 / warm_overview:,.0f}x warm")
    asyncio.run_coroutine_threadsafe(dash.aclose(), loop).result(60)
    print(f"\nwork directory: {work}")


if __name__ == "__main__":
    main()
