"""Per-call overhead of ``@trace`` on the caller's thread (goal: < 1 ms at p99).

Times every call of a bare function and of the same function decorated (dict return like CERT's
example, str return with query/context taken from the arguments, and with forwarding to a sidecar
that is not running — the writer thread handles that, the caller should not notice). Overhead =
percentile(decorated) - percentile(bare), both measured in this run, interleaved in rounds so
machine noise hits both alike. Two load shapes:

- paced: calls separated by a short sleep (``--rate`` calls/s), as when the traced function
  waits on an LLM or a retriever — the realistic case;
- burst: calls back to back (hundreds of thousands per second): the worst case for contention
  with the writer thread; the bounded queue then drops records (counted, never blocking).

Also prints what the writer threads did (written / dropped).

    python tests/benchmarks/bench_trace.py [--calls 20000] [--rounds 3] [--rate 5000]
"""

from __future__ import annotations

import argparse
import gc
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from certus.client import tracing as td  # noqa: E402
from certus.client.tracing import trace  # noqa: E402

CONTEXT = [
    "The Normans were the people who in the 10th and 11th centuries gave their name to Normandy, a region in France.",
    "They were descended from Norse raiders and pirates from Denmark, Iceland and Norway.",
    "The Norman dynasty had a major political, cultural and military impact on medieval Europe.",
]
ANSWER = "The Normans gave their name to Normandy, a region in France, in the 10th and 11th centuries."


def rag(query: str) -> dict[str, Any]:
    return {"query": query, "context": CONTEXT, "answer": ANSWER}


def gen(query: str, context: list[str]) -> str:
    return ANSWER


def timed(fn: Callable[..., Any], args: tuple[Any, ...], n: int, gap_s: float = 0.0) -> np.ndarray:
    out = np.empty(n, dtype=np.int64)
    clock = time.perf_counter_ns
    sleep = time.sleep
    for i in range(n):
        if gap_s:
            sleep(gap_s)
        t0 = clock()
        fn(*args)
        out[i] = clock() - t0
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run(variants: dict[str, tuple[Callable[..., Any], tuple[Any, ...]]], calls: int, rounds: int, gap_s: float) -> tuple[dict[str, np.ndarray], float]:
    samples: dict[str, list[np.ndarray]] = {k: [] for k in variants}
    gc.collect()
    t_start = time.perf_counter()
    for _ in range(rounds):
        for name, (fn, a) in variants.items():
            samples[name].append(timed(fn, a, calls, gap_s))
        td.flush(60)  # between rounds: let the writers catch up
    return {k: np.concatenate(v) / 1000.0 for k, v in samples.items()}, time.perf_counter() - t_start


def report(title: str, us: dict[str, np.ndarray]) -> float:
    q = (50, 90, 99, 99.9)
    print(title)
    print(f"{'variant':<40}" + "".join(f"{'p' + str(x):>9}" for x in q) + f"{'max':>9}   (microseconds per call)")
    for k, v in us.items():
        print(f"{k:<40}" + "".join(f"{np.percentile(v, x):>9.2f}" for x in q) + f"{v.max():>9.1f}")
    base = {"rag": us["bare rag() -> dict"], "gen": us["bare gen(q, ctx) -> str"]}
    print("overhead vs the bare function in the same run (percentile difference):")
    worst = 0.0
    for k, v in us.items():
        if k.startswith("bare"):
            continue
        b = base["gen"] if "gen(" in k else base["rag"]
        p50 = np.percentile(v, 50) - np.percentile(b, 50)
        p99 = np.percentile(v, 99) - np.percentile(b, 99)
        worst = max(worst, p99)
        print(f"  {k:<38} p50 +{p50:7.2f} us   p99 +{p99:8.2f} us")
    print()
    return worst


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calls", type=int, default=20_000, help="calls per variant per round (burst)")
    ap.add_argument("--paced-calls", type=int, default=4_000, help="calls per variant per round (paced)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--rate", type=float, default=5_000.0, help="paced calls per second (sleep between calls)")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench_trace_"))
    dead = f"127.0.0.1:{free_port()}"
    variants: dict[str, tuple[Callable[..., Any], tuple[Any, ...]]] = {
        "bare rag() -> dict": (rag, ("q",)),
        "bare gen(q, ctx) -> str": (gen, ("q", CONTEXT)),
        "@trace rag() -> dict": (trace(log_path=tmp / "a.jsonl")(rag), ("What gave Normandy its name?",)),
        "@trace gen(q, ctx) -> str": (trace(log_path=tmp / "b.jsonl")(gen), ("What gave Normandy its name?", CONTEXT)),
        "@trace rag() + forward (sidecar down)": (
            trace(log_path=tmp / "c.jsonl", forward={"target": dead, "timeout_ms": 200})(rag),
            ("What gave Normandy its name?",),
        ),
    }
    for fn, a in variants.values():  # warm-up (first calls open files, start threads, build the client)
        timed(fn, a, 200)
    td.flush(30)
    print(f"Python {sys.version.split()[0]}, {args.rounds} rounds per load shape\n")
    paced, t1 = run(variants, args.paced_calls, args.rounds, 1.0 / args.rate)
    w1 = report(f"PACED: {args.paced_calls} calls per variant per round, one every {1e6 / args.rate:.0f} us ({t1:.1f}s)", paced)
    drops_before = {n: td.stats(tmp / n).dropped for n in ("a.jsonl", "b.jsonl", "c.jsonl")}
    burst, t2 = run(variants, args.calls, args.rounds, 0.0)
    w2 = report(f"BURST: {args.calls} calls per variant per round, back to back ({t2:.1f}s)", burst)
    td.flush(60)
    for name in ("a.jsonl", "b.jsonl", "c.jsonl"):
        st = td.stats(tmp / name)
        print(
            f"writer {name}: enqueued {st.enqueued}, written {st.written}, dropped {st.dropped} "
            f"(paced: {drops_before[name]}), write errors {st.write_errors}, forward skipped {st.forward_skipped}"
        )
    print(
        f"\nworst p99 overhead: paced {w1:.1f} us, burst {w2:.1f} us -> "
        + ("meets" if max(w1, w2) < 1000.0 else "MISSES")
        + " the < 1 ms p99 goal"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
