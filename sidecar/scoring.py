"""Scoring stage: CERT's measure (semantic similarity + term grounding) and RAG metrics.

Given the embeddings of a request's texts (from the batcher), computes with Numba kernels:

- ``semantic_similarity``: max cosine between the response and the context chunks;
- ``grounding``: share of the response's content terms found in the context, times the share of its
  numbers that the context confirms by value (a wrong figure is a factual error, see CERT's
  "$450 billion" vs "$89.5B" example);
- ``numeric_consistency``: that second factor on its own;
- ``confidence`` = 0.5 * semantic + 0.5 * grounding (CERT);
- ``answer_relevancy``: cosine(query, response);
- ``context_relevance``: mean cosine(query, chunk);
- ``faithfulness``: the response split into sentences (claims); each claim's support against each chunk
  is w * cosine + (1 - w) * grounding * numeric_consistency (w = ``claim_semantic_weight``, 0.2); a
  claim is supported when its best chunk's support reaches ``claim_support_threshold`` (0.75);
  faithfulness = supported / total.

The response vector is the response's own embedding when it is one sentence, otherwise the
length-weighted mean of its sentence embeddings (so long answers are not truncated at 256 tokens and
are never embedded twice). Cosines are clipped to [0, 1].
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from certus import kernels
from certus.sidecar.cache import LruCache, text_key
from certus.sidecar.config import ScoringConfig
from certus.sidecar.domain import Claim, EvaluateInput, Scores

SEMANTIC = "semantic_similarity"
GROUNDING = "grounding"
NUMERIC = "numeric_consistency"
CONFIDENCE = "confidence"
ANSWER_RELEVANCY = "answer_relevancy"
CONTEXT_RELEVANCE = "context_relevance"
FAITHFULNESS = "faithfulness"
METRIC_NAMES = (SEMANTIC, GROUNDING, NUMERIC, CONFIDENCE, FAITHFULNESS, ANSWER_RELEVANCY, CONTEXT_RELEVANCE)


@dataclass(frozen=True, slots=True)
class MeasureResult:
    semantic_score: float
    grounding_score: float
    confidence: float
    matched: bool
    threshold: float
    numeric_consistency: float


@dataclass(frozen=True, slots=True)
class Layout:
    """Where each text of a request sits in the list handed to the encoder."""

    texts: list[str]
    claim_spans: np.ndarray  # int64[k, 2] char offsets in the response
    query: int
    claims: slice
    chunks: slice


def _clip(x: float) -> float:
    return float(min(1.0, max(0.0, x)))


class Scorer:
    def __init__(self, cfg: ScoringConfig, feature_cache_entries: int = 20_000) -> None:
        self.cfg = cfg
        self._features: LruCache[kernels.TextFeatures] = LruCache(feature_cache_entries)

    def features(self, text: str) -> "kernels.TextFeatures":
        key = text_key(text)
        f = self._features.get(key)
        if f is None:
            f = kernels.features(text)
            self._features.put(key, f)
        return f

    # -- Evaluate ---------------------------------------------------------------------------------
    def layout(self, inp: EvaluateInput) -> Layout:
        spans = kernels.split_sentences(inp.response)
        if len(spans) == 0:  # nothing but whitespace/punctuation: the whole response is one claim
            spans = np.array([[0, len(inp.response)]], dtype=np.int64)
        claims = [inp.response[s:e] for s, e in spans]
        texts = [inp.query, *claims, *inp.context]
        n_claims = len(claims)
        return Layout(texts, spans, 0, slice(1, 1 + n_claims), slice(1 + n_claims, 1 + n_claims + len(inp.context)))

    def score(self, inp: EvaluateInput, layout: Layout, vecs: np.ndarray) -> Scores:
        q = vecs[layout.query]
        claim_vecs = np.ascontiguousarray(vecs[layout.claims])
        chunk_vecs = np.ascontiguousarray(vecs[layout.chunks])
        spans = layout.claim_spans
        weights = (spans[:, 1] - spans[:, 0]).astype(np.float32)
        if len(claim_vecs) == 1:
            r = claim_vecs[0]
        else:
            r = (claim_vecs * weights[:, None]).sum(axis=0)
            r = r / max(float(np.linalg.norm(r)), 1e-12)
        values: dict[str, float] = {ANSWER_RELEVANCY: _clip(float(np.dot(q, r)))}
        claims: tuple[Claim, ...] = ()
        if len(inp.context):
            resp_f = self.features(inp.response)
            chunk_f = [self.features(c) for c in inp.context]
            ctx_terms = np.concatenate([f.terms for f in chunk_f]) if chunk_f else np.empty(0, np.int64)
            ctx_nums = np.concatenate([f.numbers for f in chunk_f]) if chunk_f else np.empty((0, 2), np.float64)
            semantic = _clip(float(kernels.cosine_matrix(r[None, :], chunk_vecs).max()))
            numeric = kernels.numeric_consistency(resp_f.numbers, ctx_nums)
            grounding = kernels.term_grounding(resp_f.terms, ctx_terms) * numeric
            values[SEMANTIC] = semantic
            values[NUMERIC] = numeric
            values[GROUNDING] = grounding
            values[CONFIDENCE] = 0.5 * semantic + 0.5 * grounding
            qc = kernels.cosine_matrix(q[None, :], chunk_vecs)[0]
            values[CONTEXT_RELEVANCE] = _clip(float(np.clip(qc, 0.0, 1.0).mean()))
            claims = self._claims(inp.response, spans, claim_vecs, chunk_vecs, chunk_f)
            values[FAITHFULNESS] = sum(c.supported for c in claims) / len(claims)
        return Scores(values=values, claims=claims)

    def _claims(
        self,
        response: str,
        spans: np.ndarray,
        claim_vecs: np.ndarray,
        chunk_vecs: np.ndarray,
        chunk_f: Sequence["kernels.TextFeatures"],
    ) -> tuple[Claim, ...]:
        claim_f = [self.features(response[s:e]) for s, e in spans]
        cos = np.clip(kernels.cosine_matrix(claim_vecs, chunk_vecs), 0.0, 1.0)
        a, b = kernels.pack_features(claim_f), kernels.pack_features(chunk_f)
        g = kernels.term_grounding_matrix(a.term_offsets, a.terms, b.term_offsets, b.terms)
        n = kernels.numeric_matrix(a.number_offsets, a.numbers, b.number_offsets, b.numbers)
        w = self.cfg.claim_semantic_weight
        support = w * cos + (1.0 - w) * g * n
        best = support.argmax(axis=1)
        out = []
        thr = self.cfg.claim_support_threshold
        for i, (s, e) in enumerate(spans):
            j = int(best[i])
            sup = float(support[i, j])
            ok = sup >= thr
            out.append(
                Claim(
                    start=int(s),
                    end=int(e),
                    support=sup,
                    supported=ok,
                    chunk_index=j if ok else -1,
                    semantic=float(cos[i, j]),
                    grounding=float(g[i, j]),
                    numeric=float(n[i, j]),
                )
            )
        return tuple(out)

    # -- Measure (CERT) ---------------------------------------------------------------------------
    def measure(self, text1: str, text2: str, v1: np.ndarray, v2: np.ndarray, threshold: float | None) -> MeasureResult:
        thr = self.cfg.match_threshold if threshold is None else threshold
        f1, f2 = self.features(text1), self.features(text2)
        semantic = _clip(float(np.dot(v1, v2)))
        numeric = kernels.numeric_consistency(f1.numbers, f2.numbers)
        grounding = kernels.term_grounding(f1.terms, f2.terms) * numeric
        confidence = 0.5 * semantic + 0.5 * grounding
        return MeasureResult(semantic, grounding, confidence, confidence >= thr, thr, numeric)

