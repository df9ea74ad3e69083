"""Overload: offered load against served, skipped and latency, with admission on and off.

    python tests/benchmarks/bench_overload.py [--duration 8] [--factors 0.5,0.75,1,1.25,1.5,2,2.5] \
        [--configs 0:0,100:2,250:8] [--png docs/latency_vs_load.png] [--json out.json]
        [--frontends 2 --connections 8]

For each configuration ``TARGET_MS:MIN_IN_FLIGHT`` (default: admission off, 0:0, the baseline in the
same run, whose closed loop measures the capacity every configuration is then offered multiples of;
a 100 ms budget with a floor of 2; the shipped defaults 250:8) a fresh installed sidecar on a free
loopback port is warmed up, runs closed-loop at concurrency 8 (Evaluate/s), and is offered open-loop
Evaluate calls at ``factor x capacity`` for ``--duration`` seconds each. Per
level it prints served/s (scored answers), skipped/s (signed ``overloaded`` or ``evaluator_timeout``
skips), p50/p99 of the served answers and p99 of the skips, and plots them. The load generator runs
on the same cores as the sidecar (a 2-core machine: it takes its share of the CPU). Bounded in
time; loopback only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from certus.sidecar.loadgen import run_bench, start_local_sidecar  # noqa: E402


def sweep(
    target_ms: float,
    floor: int,
    factors: list[float],
    duration: float,
    capacity: float | None = None,
    frontends: int = 1,
    connections: int = 1,
) -> dict:
    """One configuration; offered rates are ``factor x capacity`` (measured here unless given, so
    every configuration of a run is offered the same rates)."""
    env = {
        "CERTUS_ADMISSION_TARGET_MS": f"{target_ms:g}",
        "CERTUS_ADMISSION_MIN_IN_FLIGHT": str(max(1, floor)),
        "CERTUS_FRONTENDS": str(frontends),
        "LOG_LEVEL": "ERROR",
    }
    proc, target, _home = start_local_sidecar(env, drain_stdout=True)
    try:
        asyncio.run(run_bench(target, [], 0, 4.0, False, [], connections))  # warm the chunk pool and caches
        (cap,) = asyncio.run(run_bench(target, [8], duration, 0, False, [], connections))
        capacity = capacity or cap.rps
        rows = []
        for f in factors:
            (r,) = asyncio.run(run_bench(target, [], duration, 0, False, [round(f * capacity, 1)], connections))
            d = r.as_dict()
            d["factor"] = f
            d["offered_rps"] = round(f * capacity, 1)
            d["skipped_rps"] = round(d["skipped"] / r.duration_s, 1)
            rows.append(d)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(120)
    return {
        "target_ms": target_ms,
        "min_in_flight": floor,
        "capacity_rps": capacity,
        "closed_loop_c8_rps": cap.rps,
        "closed_loop_c8_p99_ms": cap.as_dict()["p99_ms"],
        "rows": rows,
    }


def plot(runs: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(7.5, 7), sharex=True)
    for run, color in zip(runs, ("tab:red", "tab:blue", "tab:green", "tab:purple")):
        name = _name(run)
        x = [r["offered_rps"] for r in run["rows"]]
        top.plot(x, [r["rps"] for r in run["rows"]], "o-", color=color, label=f"served ({name})")
        top.plot(x, [r["skipped_rps"] for r in run["rows"]], "x--", color=color, label=f"skipped ({name})")
        bottom.plot(x, [r["p99_ms"] for r in run["rows"]], "^-", color=color, label=f"p99 served ({name})")
        skipped = [(xx, r["skipped_p99_ms"]) for xx, r in zip(x, run["rows"]) if r["skipped_p99_ms"] is not None]
        if skipped:
            bottom.plot([a for a, _ in skipped], [b for _, b in skipped], "v:", color=color, label=f"p99 skipped ({name})")
    cap = runs[0]["capacity_rps"]
    for ax in (top, bottom):
        ax.axvline(cap, color="grey", alpha=0.4)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    top.set_ylabel("answers/s")
    top.set_title(f"Certus sidecar under overload (2 CPU cores; capacity ≈ {cap:.0f} Evaluate/s, grey line)")
    bottom.set_ylabel("latency (ms)")
    bottom.set_yscale("log")
    bottom.set_xlabel("offered load (Evaluate/s, open loop)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    print(f"wrote {path}")


def _name(run: dict) -> str:
    return f"admission {run['target_ms']:g} ms, floor {run['min_in_flight']}" if run["target_ms"] else "admission off"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--duration", type=float, default=8.0)
    ap.add_argument("--factors", default="0.5,0.75,1,1.25,1.5,2,2.5")
    ap.add_argument("--configs", default="0:0,100:2,250:8", help="TARGET_MS:MIN_IN_FLIGHT,... (the first one measures the capacity)")
    ap.add_argument("--frontends", type=int, default=1, help="front-end processes of every sidecar (server.frontends)")
    ap.add_argument("--connections", type=int, default=1, help="connections the load is spread over")
    ap.add_argument("--png", default="")
    ap.add_argument("--json", default="")
    args = ap.parse_args()
    factors = [float(f) for f in args.factors.split(",") if f]
    configs = [(float(c.split(":")[0]), int(c.split(":")[1])) for c in args.configs.split(",") if c]
    kw = {"frontends": args.frontends, "connections": args.connections}
    runs = [sweep(*configs[0], factors, args.duration, **kw)]
    runs += [sweep(t, floor, factors, args.duration, runs[0]["capacity_rps"], **kw) for t, floor in configs[1:]]
    for run in runs:
        print(
            f"\n{_name(run)}: closed loop c=8 {run['closed_loop_c8_rps']:.1f} Evaluate/s (p99 {run['closed_loop_c8_p99_ms']} ms); "
            f"rates offered relative to {run['capacity_rps']:.1f}/s"
        )
        print("| offered/s (x capacity) | served/s | skipped/s | served p50 / p99 ms | skipped p99 ms | skips by reason, errors |")
        print("|---|---|---|---|---|---|")
        for r in run["rows"]:
            print(
                f"| {r['offered_rps']:.0f} ({r['factor']:g}x) | {r['rps']:.1f} | {r['skipped_rps']:.1f} | "
                f"{r['p50_ms']:.0f} / {r['p99_ms']:.0f} | {r['skipped_p99_ms'] if r['skipped_p99_ms'] is not None else '–'} | "
                f"{', '.join(f'{k}={v}' for k, v in r['errors'].items()) or 'none'} |"
            )
    if args.png:
        plot(runs, Path(args.png))
    if args.json:
        Path(args.json).write_text(json.dumps(runs, indent=2))


if __name__ == "__main__":
    main()
