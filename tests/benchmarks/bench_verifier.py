"""Added cost of the learned verifier, question fit and context precision per Evaluate request.

    python tests/benchmarks/bench_verifier.py [--requests 300]

A typical request (the issue's): a query, a ~60-word answer (3 sentences), 5 chunks of ~100 words,
built from SQuAD v2 passages of ../shared/data (a built-in passage when absent), every request with
other texts so the feature cache does not hide the work. Both sides get the same encoder vectors
(encoded once, up front, not timed):

- baseline: the scoring stage as it was before the verifier (CERT's measure, relevancy, and the
  rule-based faithfulness: claim x chunk cosine, term grounding and numeric matrices, one rule);
- new: ``Scorer.score`` (all of that, plus the verifier's features and model, the supporting
  sentence of each claim, question fit and context precision).

``question_fit`` is also shown on its own (the request's question, answer and chunks, their token
states included), and within it the question focus tables (``kernels.focus_tables`` per chunk, the
matrix product of question and chunk token states included) and the answer head
(``verifier.AnswerHead.forward`` on the chunks where question_fit located one of the answer's
sentences: it runs only there, and reuses the focus tables' question x chunk cosines, so those are
not timed again here).

The contextual token alignment (one of the verifier's feature blocks) is also shown on its own:
what ``Scorer.alignment`` costs inside the new scoring, and what the encoder pays for handing the
token states over (``encode_tokens`` against ``encode``: the second output, word spans from the
tokenizer, float16 copies), on the same texts.

Prints p50/p90/p99 CPU milliseconds of each, the added p50 and the ratio, and, for scale, the
encoder's time for the same request. One thread; the figures are process CPU time, not wall.

``--max-request`` instead scores one request at every limit of ``sidecar/validation.py`` (a 10,000-char
query, a 50,000-char response of ~2,000 short sentences, 50 chunks of 10,000 chars) over a
16-word vocabulary, so every question word is everywhere and every answer word in every sentence:
the scoring stage's worst case (CPU seconds of ``Scorer.score``, twice, encoder not counted).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import certus.sidecar  # noqa: F401  # first: the sidecar's threading policy (1 BLAS thread) before NumPy loads
import numpy as np

from certus import kernels
from certus.sidecar.config import ScoringConfig, load
from certus.sidecar.domain import EvaluateInput
from certus.sidecar import verifier as V
from certus.sidecar.scoring import Scorer
from certus.sidecar.toolkit.engine import build_encoder

SQUAD = Path(__file__).resolve().parents[3] / "shared" / "data" / "squad_v2" / "dev_subset.json"
FALLBACK = (
    "The Normans were the people who in the 10th and 11th centuries gave their name to Normandy, a region in "
    "France. They were descended from Norse raiders and pirates from Denmark, Iceland and Norway who, under "
    "their leader Rollo, agreed to swear fealty to King Charles III of West Francia. In 2019 the region had "
    "3.3 million inhabitants and a GDP of $89.5 billion, up 12%. "
) * 3


def words(text: str, n: int, start: int) -> str:
    w = text.split()
    w = (w * (1 + (start + n) // max(1, len(w))))[start : start + n]
    return " ".join(w)


def requests(n: int) -> list[EvaluateInput]:
    if SQUAD.exists():
        data = json.loads(SQUAD.read_text(encoding="utf-8"))
        paras = [(p["context"], q["question"]) for a in data["data"] for p in a["paragraphs"] for q in p["qas"][:1]]
    else:
        paras = [(FALLBACK, "Who gave their name to Normandy?")]
    out = []
    for i in range(n):
        ctx = tuple(words(paras[(i + k) % len(paras)][0], 100, i % 7) for k in range(5))
        p, q = paras[i % len(paras)]
        sents = [words(p, 20, 20 * k + i % 5).rstrip(".") + "." for k in range(3)]
        out.append(EvaluateInput("bench", q, " ".join(sents), ctx))
    return out


def baseline(scorer: Scorer, inp: EvaluateInput, layout, vecs: np.ndarray) -> dict[str, float]:  # type: ignore[no-untyped-def]
    """The scoring stage before the verifier (git 3e2a7eb, scoring.py), for the comparison."""
    q = vecs[layout.query]
    claim_vecs = np.ascontiguousarray(vecs[layout.claims])
    chunk_vecs = np.ascontiguousarray(vecs[layout.chunks])
    spans = layout.claim_spans
    w = (spans[:, 1] - spans[:, 0]).astype(np.float32)
    r = (claim_vecs * w[:, None]).sum(axis=0)
    r = r / max(float(np.linalg.norm(r)), 1e-12)
    out = {"answer_relevancy": float(np.clip(q @ r, 0, 1))}
    resp_f = scorer.features(inp.response)
    chunk_f = [scorer.features(c) for c in inp.context]
    ctx_terms = np.concatenate([f.terms for f in chunk_f])
    ctx_nums = np.concatenate([f.numbers for f in chunk_f])
    semantic = float(np.clip(kernels.cosine_matrix(r[None, :], chunk_vecs).max(), 0, 1))
    numeric = kernels.numeric_consistency(resp_f.numbers, ctx_nums)
    grounding = kernels.term_grounding(resp_f.terms, ctx_terms) * numeric
    out["confidence"] = 0.5 * semantic + 0.5 * grounding
    out["context_relevance"] = float(np.clip(kernels.cosine_matrix(q[None, :], chunk_vecs)[0], 0, 1).mean())
    claim_f = [scorer.features(inp.response[s:e]) for s, e in spans]
    cos = np.clip(kernels.cosine_matrix(claim_vecs, chunk_vecs), 0.0, 1.0)
    a, b = kernels.pack_features(claim_f), kernels.pack_features(chunk_f)
    g = kernels.term_grounding_matrix(a.term_offsets, a.terms, b.term_offsets, b.terms)
    n = kernels.numeric_matrix(a.number_offsets, a.numbers, b.number_offsets, b.numbers)
    support = 0.2 * cos + 0.8 * g * n
    out["faithfulness"] = float((support.max(axis=1) >= 0.75).mean())
    return out


def cpu_ms(fn) -> float:  # type: ignore[no-untyped-def]
    t0 = time.process_time()
    fn()
    return (time.process_time() - t0) * 1000.0


def pct(x: list[float]) -> str:
    a = np.asarray(x)
    return " ".join(f"p{p}={np.percentile(a, p):.3f}" for p in (50, 90, 99))


def max_request(encoder) -> int:  # type: ignore[no-untyped-def]
    from certus.sidecar.validation import LIMITS

    rng = np.random.default_rng(0)
    vocab = "the of alpha beta gamma delta river castle king 1066 report revenue growth market model machine".split()

    def sentence(n: int) -> str:
        return " ".join(rng.choice(vocab, n)).capitalize() + "."

    def text(n_words: int, limit: int) -> str:
        return " ".join(sentence(n_words) for _ in range(limit // (6 * n_words)))[:limit]

    inp = EvaluateInput(
        "bench",
        text(12, LIMITS.query_max),
        text(4, LIMITS.response_max),
        tuple(text(12, LIMITS.chunk_max) for _ in range(LIMITS.context_max_chunks)),
    )
    layout = Scorer(ScoringConfig()).layout(inp)
    vecs, tokens = encoder.encode_tokens(layout.texts)
    print(f"max request: {len(layout.texts)} texts ({len(layout.texts) - 1 - len(inp.context)} response sentences, "
          f"{len(inp.context)} chunks of {len(inp.context[0])} chars, a {len(inp.query)}-char query)")
    for run in (1, 2):
        scorer = Scorer(ScoringConfig())
        print(f"Scorer.score, run {run}: {cpu_ms(lambda: scorer.score(inp, layout, vecs, tokens)) / 1000:.2f} s CPU")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=300)
    ap.add_argument("--max-request", action="store_true", help="score one request at every size limit instead")
    args = ap.parse_args()
    cfg = load().replace(model={"intra_op_threads": 1})
    encoder = build_encoder(cfg)
    kernels.warmup()
    if args.max_request:
        return max_request(encoder)
    reqs = requests(args.requests)
    enc_ms, enc_tok_ms, base_ms, new_ms, align_ms, qfit_ms, focus_ms, head_ms = [], [], [], [], [], [], [], []
    head_chunks = []
    # warm-up (Numba dispatch, verifier load) on other texts than the timed ones
    warm = requests(args.requests + 10)[-10:]
    for inp in warm:
        s = Scorer(ScoringConfig())
        lay = s.layout(inp)
        v, t = encoder.encode_tokens(lay.texts)
        s.score(inp, lay, v, t)
        baseline(s, inp, lay, v)
    for inp in reqs:
        lay_probe = Scorer(ScoringConfig()).layout(inp)
        out: list = []
        encoder.encode(lay_probe.texts)  # untimed: ONNX Runtime plans each new input shape once
        timed = [
            (enc_ms, lambda: encoder.encode(lay_probe.texts)),
            (enc_tok_ms, lambda: out.append(encoder.encode_tokens(lay_probe.texts))),
        ]
        for sink, fn in timed if len(enc_ms) % 2 else timed[::-1]:  # alternate which goes first
            sink.append(cpu_ms(fn))
        vecs, tokens = out[0]
        # fresh scorers: cold feature caches on both sides, as for texts the sidecar never saw
        a, b = Scorer(ScoringConfig()), Scorer(ScoringConfig())
        base_ms.append(cpu_ms(lambda: baseline(a, inp, a.layout(inp), vecs)))
        new_ms.append(cpu_ms(lambda: b.score(inp, b.layout(inp), vecs, tokens)))
        sentences = [inp.response[s:e] for s, e in lay_probe.claim_spans]

        def align() -> None:  # stacking the chunk states included (the chunk features are cached by now)
            ctx = b.request_context(inp, lay_probe, vecs, tokens)
            Scorer.alignment(sentences, tokens[lay_probe.claims], ctx.tokens, ctx.query_tokens)

        align_ms.append(cpu_ms(align))
        q_tokens, chunk_tokens = tokens[lay_probe.query], tokens[lay_probe.chunks]
        qfit_ms.append(cpu_ms(lambda: b.verifier.question_fit(inp.query, inp.response, inp.context, q_tokens, chunk_tokens)))

        def focus() -> None:
            for ts in chunk_tokens:
                kernels.focus_tables(np.ascontiguousarray(q_tokens.states @ ts.states.T))

        focus_ms.append(cpu_ms(focus))
        prepared = V.question_context(inp.query, inp.context, q_tokens, chunk_tokens)
        for s, e in lay_probe.claim_spans:
            V.question_features(inp.response[s:e], prepared)
        touched = [ts for ts, ch in zip(chunk_tokens, prepared.chunks) if ch.answer.computed]
        head_chunks.append(len(touched))
        # the question x chunk cosines are the focus tables' (timed above); the head reuses their max
        sims = [np.ascontiguousarray(q_tokens.states @ ts.states.T) for ts in touched]

        def head() -> None:  # what serving runs: the logits of each chunk an answer was located in
            for ts, sim in zip(touched, sims):
                V._AnswerLogits(q_tokens.states, ts.states, sim).z

        head_ms.append(cpu_ms(head))
    b50, n50 = float(np.percentile(base_ms, 50)), float(np.percentile(new_ms, 50))
    print(f"machine: {platform.processor() or platform.machine()}, python {platform.python_version()}, "
          f"encoder {encoder.variant} on {encoder.provider} (1 thread)")
    print(f"requests: {len(reqs)} (query, 3-sentence ~60-word answer, 5 chunks x 100 words)")
    print(f"encoder (for scale)        CPU ms {pct(enc_ms)}")
    print(f"scoring before verifier    CPU ms {pct(base_ms)}")
    print(f"scoring with verifier      CPU ms {pct(new_ms)}")
    print(f"added p50: {n50 - b50:+.3f} ms ({n50 / b50:.2f}x the old scoring; budget +5 ms)")
    e50, t50, a50 = (float(np.percentile(x, 50)) for x in (enc_ms, enc_tok_ms, align_ms))
    print(f"encoder with token states  CPU ms {pct(enc_tok_ms)}")
    print(f"token alignment (in new)   CPU ms {pct(align_ms)}")
    print(f"question_fit (in new)      CPU ms {pct(qfit_ms)}")
    print(f"  its focus tables         CPU ms {pct(focus_ms)}")
    print(f"  its answer head          CPU ms {pct(head_ms)} (on {np.mean(head_chunks):.2f} of 5 chunks on average)")
    print(f"token alignment, all in: p50 {a50 + t50 - e50:+.3f} ms (alignment {a50:.3f} + encoder hand-over "
          f"{t50 - e50:+.3f}; budget +5 ms)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
