"""CPU per Evaluate request outside the encoder, stage by stage (issue 14's "<= 2 ms" goal).

The real components of a sidecar with the default manifest (scoring stage, the six guardrails with
the token-state PII head and Presidio's pattern recognizers, the policy) run one request at a time
on one thread, with every encoder output computed beforehand (a warm cache: the encoder's work is
the baseline, timed apart in the same run on the same texts). Each stage is timed with
``time.thread_time`` (CPU of this thread, so waiting on another core does not count). Requests:
HaluEval QA questions as queries; a response of the right answer, the first 300 chars of its
knowledge and an e-mail sentence; three chunks (its knowledge and two SQuAD paragraphs that every
request shares, as a retriever's popular chunks are). The guardrails' findings caches are cleared
once before the timed pass, so repeated chunks are scanned once and new texts every time, as in a
running sidecar. Presidio runs in a worker process in the server (``guardrails.pii_process``); here it
runs in this thread, inside the pii guardrail, and its share is timed and printed apart, so the two
numbers a pod pays are both visible. Not counted here: gRPC and protobuf (the no-encoder floor of
``certus-sidecar bench --h2load`` has them) and signing and appending the evidence record
(``tests/benchmarks/bench_evidence.py``).

    python tests/benchmarks/bench_cpu.py [--requests 150] [--variant int8] [--profile 25]
        [--no-email] [--old-pii-path]

``--profile N`` also prints the N functions with the most own CPU (cProfile, a second pass).
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import pstats
import re
import sys
import time
from pathlib import Path
from typing import Any, Callable

import certus.sidecar  # noqa: F401  (sets thread limits before numpy loads)
import numpy as np

from certus.models.artifacts import ensure_model
from certus.models.encoder import OnnxEncoder
from certus.sidecar import policy
from certus.sidecar.config import Config
from certus.sidecar.domain import EvaluateInput
from certus.sidecar.guardrails import GuardrailSuite, apply_policy
from certus.sidecar.guardrails.base import GuardrailType
from certus.sidecar.manifests import ManifestStore
from certus.sidecar.scoring import Scorer

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
PRESIDIO = "  of which Presidio's patterns (the worker process in the server)"


class Cached:
    """The encoder's outputs by text, computed once (what the batcher's caches hold when warm)."""

    def __init__(self, encoder: OnnxEncoder) -> None:
        self.encoder = encoder
        self.vecs: dict[str, np.ndarray] = {}
        self.states: dict[str, Any] = {}

    def fill(self, texts: list[str]) -> float:
        """Encode the texts not seen yet; the CPU seconds that took (the baseline)."""
        todo = [t for t in dict.fromkeys(texts) if t not in self.vecs]
        if not todo:
            return 0.0
        t0 = time.process_time()  # ONNX Runtime's own threads count here
        vecs, states = self.encoder.encode_tokens(todo)
        cpu = time.process_time() - t0
        for t, v, s in zip(todo, vecs, states):
            self.vecs[t], self.states[t] = v, s
        return cpu

    def embed(self, texts: Any) -> np.ndarray:
        return np.stack([self.vecs[t] for t in texts])

    def token_states(self, texts: Any) -> list[Any]:
        return [self.states[t] for t in texts]


def requests(n: int, email: bool = True) -> list[EvaluateInput]:
    rows = [json.loads(line) for line in (DATA / "halueval" / "qa_dev.jsonl").open(encoding="utf-8")][:n]
    squad = json.loads((DATA / "squad_v2" / "dev_subset.json").read_text())
    shared = [p["context"] for a in squad["data"] for p in a["paragraphs"]][:2]
    tail = " Write to john.smith@example.com for details." if email else ""
    return [
        EvaluateInput("bench", r["question"], f"{r['right_answer']} {r['knowledge'][:300]}{tail}", (r["knowledge"], *shared))
        for r in rows
    ]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=150)
    ap.add_argument("--variant", default="int8")
    ap.add_argument("--profile", type=int, default=0, metavar="N")
    ap.add_argument("--no-email", action="store_true",
                    help="responses without the e-mail sentence (then many hold no digit, @ or colon)")
    ap.add_argument("--old-pii-path", action="store_true",
                    help="baseline: the pattern analyzer asked about every text, with spaCy artifacts made up front")
    args = ap.parse_args(argv)
    if args.old_pii_path:
        from certus.sidecar.guardrails import pii

        pii.PATTERN_CUE = re.compile("")  # matches every text: nothing is skipped
    if not (DATA / "halueval" / "qa_dev.jsonl").exists():
        print(f"needs ../shared/data ({DATA})", file=sys.stderr)
        return 2

    encoder = OnnxEncoder(ensure_model(variant=args.variant).parent, variant=args.variant)
    cache = Cached(encoder)
    suite = GuardrailSuite(embed=cache.embed, token_states=cache.token_states)
    scorer = Scorer(Config().scoring)
    manifest = ManifestStore(Config().manifests).resolve("bench", "")
    configs = manifest.guardrails
    inps = requests(args.requests, email=not args.no_email)

    # the baseline: the encoder's CPU for each request's new texts (the shared chunks once)
    encoder_ms = []
    for inp in inps:
        layout = scorer.layout(inp)
        texts = layout.texts + suite.texts_to_embed(inp, configs)
        encoder_ms.append(cache.fill(texts) * 1000)
        # the segments the prompt-attack head scores for this request are embedded up front too
        cache.fill(suite.learned.uncached_pieces([inp.query, *inp.context]) if suite.learned else [])
    for g in suite.guardrails.values():  # scan every request's texts afresh (the chunks shared once)
        findings = getattr(g, "_findings", None)
        if findings is not None:
            findings.clear()

    stages: dict[str, list[float]] = {}
    # Presidio's share of the pii guardrail, timed inside it (the server runs it in the worker process)
    presidio_ms = [0.0]
    analyzer = suite.pii.analyzer
    if args.old_pii_path:
        analyzer._lazy = False  # type: ignore[union-attr]
    analyze = analyzer.analyze

    def timed_analyze(*a: Any, **k: Any) -> Any:
        t0 = time.thread_time()
        try:
            return analyze(*a, **k)
        finally:
            presidio_ms[0] += (time.thread_time() - t0) * 1000

    analyzer.analyze = timed_analyze  # type: ignore[method-assign]

    def timed(name: str, fn: Callable[[], Any]) -> Any:
        t0 = time.thread_time()
        out = fn()
        stages.setdefault(name, []).append((time.thread_time() - t0) * 1000)
        return out

    def one(inp: EvaluateInput) -> None:
        layout = timed("layout (scoring texts)", lambda: scorer.layout(inp))
        texts = layout.texts + timed("guardrails: texts to embed", lambda: suite.texts_to_embed(inp, configs))
        vecs, states = cache.embed(texts), cache.token_states(texts)
        scores = timed("scoring stage (metrics, verifier)", lambda: scorer.score(inp, layout, vecs, states))
        found = []
        for gtype, guardrail in suite.guardrails.items():
            cfg = configs.get(gtype)
            if cfg is None or not cfg.enabled:
                continue
            presidio_ms[0] = 0.0
            found += timed(f"guardrail: {gtype.value}", lambda: apply_policy(guardrail.detect(inp, cfg), cfg))
            if gtype is GuardrailType.PII:
                stages.setdefault(PRESIDIO, []).append(presidio_ms[0])
        timed("policy", lambda: policy.decide(manifest, scores, found, manifest.default_mode))

    t_all = time.thread_time()
    for inp in inps:
        one(inp)
    total = (time.thread_time() - t_all) * 1000 / len(inps)
    presidio = float(np.mean(stages[PRESIDIO]))

    print(f"### CPU per request outside the encoder ({len(inps)} requests, {args.variant}, one thread, warm encoder cache)\n")
    print("| stage | p50 ms | p90 ms | mean ms |")
    print("|---|---|---|---|")
    for name, ms in stages.items():
        a = np.asarray(ms)
        print(f"| {name} | {np.percentile(a, 50):.3f} | {np.percentile(a, 90):.3f} | {a.mean():.3f} |")
    enc = np.asarray(encoder_ms)
    print(f"| **all stages** | | | {total:.2f} |")
    print(f"| **of which in the server process** (all but Presidio) | | | {total - presidio:.2f} |")
    print(f"| baseline: the encoder on the request's new texts (process CPU, both cores) | {np.percentile(enc, 50):.2f} | {np.percentile(enc, 90):.2f} | {enc.mean():.2f} |")
    print(f"\nCPU outside the encoder per request: {total:.2f} ms (server {total - presidio:.2f} + PII worker "
          f"{presidio:.2f}); ratio to the encoder's CPU on the same requests: {total / max(enc.mean(), 1e-9):.2f}. "
          "Goal (issue 14): <= 2 ms.")

    if args.profile:
        for g in suite.guardrails.values():
            findings = getattr(g, "_findings", None)
            if findings is not None:
                findings.clear()
        prof = cProfile.Profile()
        prof.enable()
        for inp in inps:
            one(inp)
        prof.disable()
        buf = io.StringIO()
        pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(args.profile)
        print("\n```\n" + buf.getvalue().strip() + "\n```")
    suite.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
