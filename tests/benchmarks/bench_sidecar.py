"""Serving overhead and latency vs load of the full sidecar, against the raw encoder in the same run.

    python tests/benchmarks/bench_sidecar.py [--duration 10] [--variant fp32|int8] [--json out.json]
        [--frontends 1,2 --connections 8]

1. Raw encoder: ONNX Runtime (same model, variant and thread count as the sidecar) on the texts a
   request of the mix makes the sidecar encode (query + response sentences + the guardrail's query
   segments are what is new once the chunk pool is cached), best batch size among a few, in
   tokens/s.
2. Full sidecar (a subprocess on a free loopback port): closed loop at concurrency 1, 8, 32 and open
   loop at fixed rates; requests/s and p50/p90/p99. The sidecar's own encoder counters (GetInfo)
   give the tokens it encoded per request, so the "encoder bound" for the same work is
   raw tokens/s ÷ tokens per request, and the sidecar's throughput is reported as a share of it.
   ``--frontends 1,2`` measures a sidecar per count of front-end processes (server.frontends),
   ``--connections`` spreads the load over that many connections (the kernel shares them out).
(Latency against offered load beyond capacity, with admission on and off, and its plot:
``tests/benchmarks/bench_overload.py``.)

Bounded: each level runs ``--duration`` seconds. Loopback only. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import grpc  # noqa: E402

from certus.sidecar.loadgen import Mix, run_bench, start_local_sidecar  # noqa: E402
from certus.sidecar.protos import pb, pb_grpc  # noqa: E402


def sidecar_counters(target: str) -> dict[str, float]:
    with grpc.insecure_channel(target) as ch:
        info = pb_grpc.EvaluatorStub(ch).GetInfo(pb.GetInfoRequest(), timeout=10)
    return {k: float(v) for k, v in info.details.items() if k.startswith(("encoder.", "batcher.")) and _num(v)}


def _num(v: str) -> bool:
    try:
        float(v)
        return True
    except ValueError:
        return False


def raw_encoder(variant: str, threads: int, seconds: float) -> dict[str, float]:
    """Best tokens/s of the bare encoder on mix texts (the query + response sentences of requests)."""
    from certus import kernels
    from certus.models.encoder import OnnxEncoder

    enc = OnnxEncoder(variant=variant, intra_op_threads=threads)
    mix = Mix(seed=11)
    texts: list[str] = []
    for _ in range(256):
        r = mix.request()
        texts.append(r.query)
        texts.extend(r.response[s:e] for s, e in kernels.split_sentences(r.response))
    texts.sort(key=len)
    tokens = int(enc.token_counts(texts).sum())
    best = {"tokens_per_s": 0.0}
    for bs in (8, 16, 32, 64):
        enc.max_batch_size = bs
        enc.encode(texts[:64])
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            enc.encode(texts)
            n += 1
        dt = time.perf_counter() - t0
        tps = n * tokens / dt
        print(f"  raw encoder batch {bs:>3}: {tps:9.0f} tokens/s  {n * len(texts) / dt:8.0f} texts/s", flush=True)
        if tps > best["tokens_per_s"]:
            best = {"tokens_per_s": tps, "texts_per_s": n * len(texts) / dt, "batch": bs}
    return best


def measure_sidecar(args: argparse.Namespace, raw: dict[str, float], frontends: int) -> list[dict[str, object]]:
    """One sidecar with ``frontends`` front-end processes: closed loop at each concurrency, then
    the open-loop rates, the load spread over ``--connections`` connections."""
    env = {"CERTUS_MODEL_VARIANT": args.variant, "LOG_LEVEL": "ERROR", "CERTUS_FRONTENDS": str(frontends)}
    proc, target, home = start_local_sidecar(env)
    print(f"sidecar with {frontends} front-end process(es), {args.connections} connection(s):", flush=True)
    if args.no_guardrails:
        default = json.loads((ROOT / "sidecar" / "default_manifest.json").read_text())
        default.update(
            manifest_id="manifest_bench_2025_01",
            manifest_uri="certus://manifests/bench/2025-01",
            workspace_id="bench",
            guardrails={g: {"enabled": False} for g in default["guardrails"]},
        )
        (home / "manifests" / "bench").mkdir(parents=True, exist_ok=True)
        (home / "manifests" / "bench" / "2025-01.json").write_text(json.dumps(default))
        time.sleep(2.5)  # the store polls for changes every second
    conns = args.connections
    rows: list[dict[str, object]] = []
    try:
        concurrencies = [int(c) for c in args.concurrency.split(",") if c]
        rates = [float(r) for r in args.rates.split(",") if r]
        # warm the chunk pool (40 chunks) so the steady state is measured
        asyncio.run(run_bench(target, [], 0, 4.0, False, [], conns))
        for c in concurrencies:
            before = sidecar_counters(target)
            (r,) = asyncio.run(run_bench(target, [c], args.duration, 0, False, [], conns))
            after = sidecar_counters(target)
            d = r.as_dict()
            n = max(1, d["ok"])
            d["tokens_per_request"] = (after["encoder.tokens_encoded"] - before["encoder.tokens_encoded"]) / n
            d["texts_per_request"] = (after["encoder.texts_encoded"] - before["encoder.texts_encoded"]) / n
            d["encoder_bound_rps"] = raw["tokens_per_s"] / max(d["tokens_per_request"], 1e-9)
            d["share_of_bound"] = d["rps"] / d["encoder_bound_rps"]
            d["frontends"] = frontends
            rows.append(d)
        for rate in rates:
            (r,) = asyncio.run(run_bench(target, [], args.duration, 0, False, [rate], conns))
            rows.append({**r.as_dict(), "frontends": frontends})
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--duration", type=float, default=10.0)
    ap.add_argument("--variant", default=os.environ.get("CERTUS_MODEL_VARIANT", "fp32"))
    ap.add_argument("--concurrency", default="1,8,32")
    ap.add_argument("--rates", default="10,25,50,100")
    ap.add_argument("--json", default="")
    ap.add_argument("--frontends", default="1", help="front-end process counts to measure, e.g. 1,2 (server.frontends)")
    ap.add_argument("--connections", type=int, default=1, help="connections the load is spread over")
    ap.add_argument(
        "--no-guardrails",
        action="store_true",
        help="workspace manifest with every guardrail disabled: the scoring path alone vs the encoder",
    )
    args = ap.parse_args()
    threads = os.cpu_count() or 2

    print(f"raw encoder ({args.variant}, {threads} threads):", flush=True)
    raw = raw_encoder(args.variant, threads, min(args.duration, 5.0))

    rows = []
    for frontends in [int(n) for n in args.frontends.split(",") if n]:
        rows += measure_sidecar(args, raw, frontends)

    print()
    print(f"raw encoder: {raw['tokens_per_s']:.0f} tokens/s (best batch {raw['batch']}), variant {args.variant}")
    print()
    print("| front-ends | load | req/s | p50 ms | p90 ms | p99 ms | tokens/req | encoder bound req/s | share | errors |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for d in rows:
        bound = f"{d['encoder_bound_rps']:.1f}" if "encoder_bound_rps" in d else "–"
        share = f"{d['share_of_bound']:.0%}" if "share_of_bound" in d else "–"
        tpr = f"{d['tokens_per_request']:.0f}" if "tokens_per_request" in d else "–"
        print(
            f"| {d['frontends']} | {d['label']} | {d['rps']:.1f} | {d['p50_ms']:.1f} | {d['p90_ms']:.1f} | {d['p99_ms']:.1f} | "
            f"{tpr} | {bound} | {share} | {d['errors'] or 'none'} |"
        )
    if args.json:
        Path(args.json).write_text(json.dumps({"raw": raw, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
