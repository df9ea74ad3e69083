"""Grounding kernel throughput: Numba vs plain Python on the same inputs, same run.

    python tests/benchmarks/bench_kernels.py [--seconds 0.3]

Inputs: SQuAD v2 dev paragraphs from ../shared/data (built-in text repeated when that folder is
absent). Term arrays are extracted once, up front; the timed part is the scoring only.

- pairs: one (response, context) pair per SQuAD question, response = question + gold or
  plausible answer, context = its paragraph. Numba ``term_grounding`` (public wrapper, with
  argument checks) vs ``kernels_reference.term_grounding`` (Python set over the context list).
- matrix: claims x chunks as the scoring stage builds them: the sentences of 3 paragraphs (the
  claims) against 50 paragraphs (the request's maximum chunk count), and all sentences against
  all paragraphs. Numba ``term_grounding_matrix`` / ``numeric_matrix`` vs plain Python with one
  set per chunk built once (the fast way to write it in Python).
- text: ``features`` (regex + Numba hashing) and ``split_sentences`` throughput in chars/s.

Each figure is the best of repeated rounds within ``--seconds``; the Numba kernels are warmed
(loaded from the on-disk cache) before timing.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "unit" / "kernels"))

import kernels_reference as ref  # noqa: E402

from certus import kernels  # noqa: E402
from certus.kernels import (  # noqa: E402
    features,
    features_many,
    numeric_matrix,
    split_sentences,
    term_grounding,
    term_grounding_matrix,
)
from certus.kernels.numeric import DEFAULT_REL_TOL  # noqa: E402

SQUAD = ROOT.parent / "shared" / "data" / "squad_v2" / "dev_subset.json"
FALLBACK = (
    "The Normans were the people who in the 10th and 11th centuries gave their name to Normandy, "
    "a region in France. They were descended from Norse raiders and pirates from Denmark, Iceland "
    "and Norway who, under their leader Rollo, agreed to swear fealty to King Charles III of West "
    "Francia. In 2019 the region had 3.3 million inhabitants and a GDP of $89.5 billion, up 12%."
)


def load() -> tuple[list[str], list[tuple[str, str]], str]:
    if not SQUAD.exists():
        paragraphs = [FALLBACK] * 87
        pairs = [("Who were the Normans? Norse raiders", FALLBACK)] * 600
        return paragraphs, pairs, f"built-in text ({SQUAD} not found)"
    data = json.loads(SQUAD.read_text(encoding="utf-8"))
    paragraphs: list[str] = []
    pairs: list[tuple[str, str]] = []
    for article in data["data"]:
        for para in article["paragraphs"]:
            paragraphs.append(para["context"])
            for qa in para["qas"]:
                answers = qa["answers"] or qa.get("plausible_answers") or []
                if answers:
                    pairs.append((qa["question"] + " " + answers[0]["text"], para["context"]))
    return paragraphs, pairs, f"SQuAD v2 dev subset ({len(paragraphs)} paragraphs, {len(pairs)} questions)"


def best_rate(fn: Callable[[], object], units: float, seconds: float) -> float:
    """Best units/s over repeated rounds within ``seconds`` (at least 3 rounds)."""
    best = 0.0
    deadline = time.perf_counter() + seconds
    rounds = 0
    while rounds < 3 or time.perf_counter() < deadline:
        t0 = time.perf_counter()
        fn()
        dt = time.perf_counter() - t0
        best = max(best, units / dt)
        rounds += 1
    return best


def row(label: str, numba_rate: float, py_rate: float, unit: str) -> None:
    print(f"  {label:<44} numba {numba_rate:>14,.0f} {unit}  python {py_rate:>12,.0f} {unit}  x{numba_rate / py_rate:,.1f}")


def py_matrix(claims: list[list[int]], chunk_sets: list[set[int]]) -> list[list[float]]:
    out = []
    for c in claims:
        if not c:
            out.append([1.0] * len(chunk_sets))
            continue
        out.append([sum(1 for t in c if t in s) / len(c) for s in chunk_sets])
    return out


def py_numeric_matrix(claims: list[list[tuple[float, float]]], chunks: list[list[tuple[float, float]]]) -> list[list[float]]:
    return [[ref.numeric_consistency(c, k, DEFAULT_REL_TOL) for k in chunks] for c in claims]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=0.3, help="time budget per measurement")
    args = ap.parse_args()

    t0 = time.perf_counter()
    warm = kernels.warmup()
    print(f"kernels.warmup(): {warm * 1000:.0f} ms (first import + cached-kernel load; {time.perf_counter() - t0:.2f} s)")
    paragraphs, pairs, source = load()
    print(f"input: {source}")
    print(f"machine: {platform.machine()}, python {platform.python_version()}, numpy {np.__version__}")

    # --- pairs -------------------------------------------------------------------------------
    feats = [(features(r).terms, features(c).terms) for r, c in pairs]
    lists = [(r.tolist(), c.tolist()) for r, c in feats]
    n_terms = sum(len(r) for r, _ in lists)

    def numba_pairs() -> None:
        for r, c in feats:
            term_grounding(r, c)

    def py_pairs() -> None:
        for r, c in lists:
            ref.term_grounding(r, c)

    for (r, c), (rl, cl) in zip(feats[:50], lists[:50]):
        assert term_grounding(r, c) == ref.term_grounding(rl, cl)
    print(f"\nterm_grounding, {len(feats)} pairs ({n_terms / len(feats):.1f} response terms, "
          f"{sum(len(c) for _, c in lists) / len(lists):.0f} context terms on average)")
    np_rate = best_rate(numba_pairs, len(feats), args.seconds)
    py_rate = best_rate(py_pairs, len(feats), args.seconds)
    row("pairs/s", np_rate, py_rate, "pairs/s")

    # --- matrices ----------------------------------------------------------------------------
    sentences = [p[s:e] for p in paragraphs for s, e in split_sentences(p).tolist()]
    per_para = [[p[s:e] for s, e in split_sentences(p).tolist()] for p in paragraphs]
    shapes = [
        ("request-shaped", [s for para in per_para[:3] for s in para], paragraphs[:50]),
        ("all sentences x all paragraphs", sentences, paragraphs),
    ]
    for label, claim_texts, chunk_texts in shapes:
        a = features_many(claim_texts)
        b = features_many(chunk_texts)
        a_lists = [a.item(i).terms.tolist() for i in range(len(a))]
        b_sets = [set(b.item(i).terms.tolist()) for i in range(len(b))]
        a_nums = [[(float(v), float(k)) for v, k in a.item(i).numbers] for i in range(len(a))]
        b_nums = [[(float(v), float(k)) for v, k in b.item(i).numbers] for i in range(len(b))]
        got = term_grounding_matrix(a.term_offsets, a.terms, b.term_offsets, b.terms)
        assert got.tolist() == py_matrix(a_lists, b_sets)
        got_n = numeric_matrix(a.number_offsets, a.numbers, b.number_offsets, b.numbers)
        assert got_n.tolist() == py_numeric_matrix(a_nums, b_nums)
        cells = len(a) * len(b)
        print(f"\n{label}: {len(a)} claims x {len(b)} chunks = {cells:,} cells "
              f"({len(a.terms)} claim terms, {len(b.terms)} chunk terms, {len(a.numbers)} / {len(b.numbers)} numbers)")
        np_rate = best_rate(lambda: term_grounding_matrix(a.term_offsets, a.terms, b.term_offsets, b.terms), cells, args.seconds)
        py_rate = best_rate(lambda: py_matrix(a_lists, [set(x) for x in (b.item(i).terms.tolist() for i in range(len(b)))]), cells, args.seconds)
        row("term_grounding_matrix cells/s", np_rate, py_rate, "cells/s")
        print(f"  {'':<44} numba {cells / np_rate * 1e3:>11.3f} ms/matrix  python {cells / py_rate * 1e3:>9.3f} ms/matrix")
        np_rate = best_rate(lambda: numeric_matrix(a.number_offsets, a.numbers, b.number_offsets, b.numbers), cells, args.seconds)
        py_rate = best_rate(lambda: py_numeric_matrix(a_nums, b_nums), cells, args.seconds)
        row("numeric_matrix cells/s", np_rate, py_rate, "cells/s")

    # --- text -> arrays ----------------------------------------------------------------------
    chars = sum(len(p) for p in paragraphs)
    print(f"\ntext -> arrays over {len(paragraphs)} paragraphs ({chars:,} chars)")
    f_rate = best_rate(lambda: [features(p) for p in paragraphs], chars, args.seconds)
    s_rate = best_rate(lambda: [split_sentences(p) for p in paragraphs], chars, args.seconds)
    big = " ".join(paragraphs)
    fb_rate = best_rate(lambda: features(big), len(big), args.seconds)
    print(f"  features (terms + numbers), per paragraph      {f_rate:>14,.0f} chars/s")
    print(f"  features, one {len(big):,}-char text           {fb_rate:>14,.0f} chars/s")
    print(f"  split_sentences, per paragraph                 {s_rate:>14,.0f} chars/s")


if __name__ == "__main__":
    main()
