"""Scoring stage: CERT's measure (semantic similarity + term grounding) and RAG metrics.

Given the embeddings and token states of a request's texts (from the batcher, one encoder run),
computes with Numba kernels:

- ``semantic_similarity``: max cosine between the response and the context chunks;
- ``grounding``: share of the response's content terms found in the context, times the share of its
  numbers that the context confirms by value (a wrong figure is a factual error, see CERT's
  "$450 billion" vs "$89.5B" example);
- ``numeric_consistency``: that second factor on its own;
- ``confidence`` = 0.5 * semantic + 0.5 * grounding (CERT, unchanged);
- ``answer_relevancy``: cosine(query, response);
- ``context_relevance``: mean cosine(query, chunk);
- ``faithfulness``: the response split into sentences (claims); the learned verifier
  (``certus.sidecar.verifier``) gives each claim P(supported by the context); faithfulness is the
  least-supported claim's probability (its features include the contextual token alignment of the
  claim with the chunks, ``certus.kernels.alignment``). A claim is supported when its probability reaches
  ``claim_support_threshold`` (0.7); it then names its chunk and the sentence of that chunk that
  carries it, otherwise the reason it fails (a number contradicted, a missing entity, no support);
- ``question_fit`` (with a query): whether the answer sits where the context answers this question;
- ``context_precision``: RAGAS's rank-aware precision, mean over the chunks that support a claim of
  the share of supporting chunks ranked at or above them (1 = every supporting chunk first; 0 = no
  chunk supports the answer);
- ``context_recall`` (with a reference answer): share of the reference's sentences that the verifier
  finds supported by the context.

The response vector is the response's own embedding when it is one sentence, otherwise the
length-weighted mean of its sentence embeddings (so long answers are not truncated at 256 tokens and
are never embedded twice). Cosines are clipped to [0, 1].
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from certus import kernels
from certus.sidecar import verifier
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
QUESTION_FIT = "question_fit"
CONTEXT_PRECISION = "context_precision"
CONTEXT_RECALL = "context_recall"
METRIC_NAMES = (
    SEMANTIC,
    GROUNDING,
    NUMERIC,
    CONFIDENCE,
    FAITHFULNESS,
    ANSWER_RELEVANCY,
    CONTEXT_RELEVANCE,
    QUESTION_FIT,
    CONTEXT_PRECISION,
    CONTEXT_RECALL,
)


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
    reference_spans: np.ndarray  # int64[r, 2] char offsets in the reference (empty without one)
    reference: slice


@dataclass(frozen=True, slots=True)
class ClaimEvidence:
    """The verifier's view of k sentences against m chunks."""

    rows: np.ndarray  # float64[k, F] verifier features
    probabilities: np.ndarray  # float64[k] P(supported)
    reasons: list[str]  # why each would fail
    best: np.ndarray  # int64[k] the chunk each rests on
    cos: np.ndarray  # [k, m] clipped cosines
    grounding: np.ndarray  # [k, m] term grounding
    numeric: np.ndarray  # [k, m] numeric consistency
    claim_f: Sequence["kernels.TextFeatures"]


@dataclass(frozen=True, slots=True)
class RequestContext:
    """What every claim of a request is checked against: the chunks and the query."""

    texts: Sequence[str]  # the chunks
    vecs: np.ndarray  # float32[m, dim] chunk embeddings
    features: Sequence["kernels.TextFeatures"]  # per chunk
    tokens: np.ndarray  # float32[t, dim] every chunk token's state, stacked
    query_features: "kernels.TextFeatures | None"
    query_tokens: np.ndarray  # float32[q, dim] (empty without a query)
    # How the verifier reads the chunks. Glued words separated ("26 May 2014The 1975", scraped
    # text): the terms of that text count as context terms too, and each chunk's figures include
    # its figures ("2014The" is a word, "2014" a number). CERT's own measures keep the text as given.
    read_features: Sequence["kernels.TextFeatures"]  # per chunk
    glued_terms: set[int]
    quote_texts: list[str]  # verifier.quote_texts of the chunks


def context_precision(ev: ClaimEvidence, threshold: float) -> float:
    """RAGAS's context precision with the verifier as judge: chunk k is relevant when it is the
    chunk a supported claim rests on; mean of precision@k over the relevant ranks."""
    m = ev.cos.shape[1]
    relevant = np.zeros(m, dtype=bool)
    relevant[ev.best[ev.probabilities >= threshold]] = True
    if not relevant.any():
        return 0.0
    hits = np.cumsum(relevant)
    ranks = np.arange(1, m + 1)
    return float((hits / ranks)[relevant].mean())


def sentence_spans(text: str) -> np.ndarray:
    spans = kernels.split_sentences(text)
    if len(spans) == 0:  # nothing but whitespace/punctuation: the whole text is one sentence
        spans = np.array([[0, len(text)]], dtype=np.int64)
    return spans


def content_mask(text: str, words: np.ndarray) -> np.ndarray:
    """bool[n]: the tokens whose word (char span in ``text``) is a content word: not a stop word,
    with a letter or digit (the claim side of the token alignment)."""
    keep = np.zeros(len(words), dtype=bool)
    seen: dict[tuple[int, int], bool] = {}
    for i, (s, e) in enumerate(words.tolist()):
        hit = seen.get((s, e))
        if hit is None:
            w = text[s:e]
            hit = seen[(s, e)] = w.lower() not in kernels.STOP_WORDS and any(ch.isalnum() for ch in w)
        keep[i] = hit
    return keep


def stacked(states: Sequence[np.ndarray], dim: int) -> np.ndarray:
    """Token states (float32 [n_i, dim]) stacked into one float32[sum n_i, dim]."""
    if not states:
        return np.zeros((0, dim), dtype=np.float32)
    if len(states) == 1:
        return states[0]
    return np.concatenate(states)


def _clip(x: float) -> float:
    return float(min(1.0, max(0.0, x)))


class Scorer:
    def __init__(
        self, cfg: ScoringConfig, feature_cache_entries: int = 20_000, model: verifier.Verifier | None = None
    ) -> None:
        self.cfg = cfg
        self.verifier = model or verifier.load_verifier(cfg.verifier_path)
        # (terms, numbers) arrays: a plain tuple of arrays drops out of the garbage collector's
        # sight, a TextFeatures object would be walked by every full pass (20,000 of them)
        self._features: LruCache[tuple[np.ndarray, np.ndarray]] = LruCache(feature_cache_entries)
        # a chunk's sentence spans and their packed features, for the supporting span of each claim
        # (chunks up to cache.MAX_CACHED_TEXT_CHARS)
        self._chunk_sentences: LruCache[tuple[np.ndarray, Any]] = LruCache(feature_cache_entries // 4)
        # how the verifier reads each chunk (glued words separated, plain text for quotes)
        self._chunk_readings: LruCache[verifier.ChunkReading] = LruCache(feature_cache_entries // 4)

    def features(self, text: str) -> "kernels.TextFeatures":
        key = text_key(text)
        kept = self._features.get(key)
        if kept is not None:
            return kernels.TextFeatures(*kept)
        f = kernels.features(text)
        self._features.put(key, (f.terms, f.numbers))
        return f

    # -- Evaluate ---------------------------------------------------------------------------------
    def layout(self, inp: EvaluateInput) -> Layout:
        spans = sentence_spans(inp.response)
        claims = [inp.response[s:e] for s, e in spans]
        ref_spans = sentence_spans(inp.reference) if inp.reference else np.empty((0, 2), dtype=np.int64)
        refs = [inp.reference[s:e] for s, e in ref_spans]
        texts = [inp.query, *claims, *inp.context, *refs]
        c0 = 1 + len(claims)
        r0 = c0 + len(inp.context)
        return Layout(texts, spans, 0, slice(1, c0), slice(c0, r0), ref_spans, slice(r0, r0 + len(refs)))

    def score(self, inp: EvaluateInput, layout: Layout, vecs: np.ndarray, tokens: Sequence[Any]) -> Scores:
        """``vecs`` and ``tokens`` (``TokenStates``) are the encoder's, row for row of ``layout.texts``."""
        q = vecs[layout.query]
        claim_vecs = np.ascontiguousarray(vecs[layout.claims])
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
            ctx = self.request_context(inp, layout, vecs, tokens)
            chunk_f = ctx.features
            ctx_terms = np.concatenate([f.terms for f in chunk_f]) if chunk_f else np.empty(0, np.int64)
            ctx_nums = np.concatenate([f.numbers for f in chunk_f]) if chunk_f else np.empty((0, 2), np.float64)
            semantic = _clip(float(kernels.cosine_matrix(r[None, :], ctx.vecs).max()))
            numeric = kernels.numeric_consistency(resp_f.numbers, ctx_nums)
            grounding = kernels.term_grounding(resp_f.terms, ctx_terms) * numeric
            values[SEMANTIC] = semantic
            values[NUMERIC] = numeric
            values[GROUNDING] = grounding
            values[CONFIDENCE] = 0.5 * semantic + 0.5 * grounding
            qc = kernels.cosine_matrix(q[None, :], ctx.vecs)[0]
            values[CONTEXT_RELEVANCE] = _clip(float(np.clip(qc, 0.0, 1.0).mean()))
            ev = self.evidence(inp.response, spans, claim_vecs, tokens[layout.claims], ctx)
            claims = self._claims(inp.context, spans, ev, chunk_f)
            values[FAITHFULNESS] = float(ev.probabilities.min())
            values[CONTEXT_PRECISION] = context_precision(ev, self.cfg.claim_support_threshold)
            if inp.query:
                values[QUESTION_FIT] = self.verifier.question_fit(
                    inp.query, inp.response, inp.context, tokens[layout.query], tokens[layout.chunks]
                )
            if inp.reference:
                ref_spans = layout.reference_spans
                ref_vecs = np.ascontiguousarray(vecs[layout.reference])
                ref = self.evidence(inp.reference, ref_spans, ref_vecs, tokens[layout.reference], ctx)
                values[CONTEXT_RECALL] = float((ref.probabilities >= self.cfg.claim_support_threshold).mean())
        return Scores(values=values, claims=claims)

    def request_context(
        self, inp: EvaluateInput, layout: Layout, vecs: np.ndarray, tokens: Sequence[Any]
    ) -> RequestContext:
        dim = vecs.shape[1]
        chunk_f = [self.features(c) for c in inp.context]
        readings = [self._chunk_readings.get_or_make(c, verifier.chunk_reading) for c in inp.context]
        read_f = list(chunk_f)
        glued_terms: set[int] = set()
        for k, (u, _, _) in enumerate(readings):
            if u is not None:
                fu = self.features(u)
                glued_terms.update(fu.terms.tolist())
                read_f[k] = kernels.TextFeatures(chunk_f[k].terms, np.concatenate([chunk_f[k].numbers, fu.numbers]))
        return RequestContext(
            inp.context,
            np.ascontiguousarray(vecs[layout.chunks]),
            chunk_f,
            stacked([t.states for t in tokens[layout.chunks]], dim),
            self.features(inp.query) if inp.query else None,
            stacked([tokens[layout.query].states] if inp.query else [], dim),
            read_f,
            glued_terms,
            verifier.quote_texts(inp.context, readings),
        )

    def evidence(
        self,
        text: str,
        spans: np.ndarray,
        claim_vecs: np.ndarray,
        claim_tokens: Sequence[Any],
        ctx: RequestContext,
        credit_quotes: bool = True,
    ) -> ClaimEvidence:
        """The verifier's view of the sentences ``spans`` of ``text`` (their vectors and
        ``TokenStates``) against the request's chunks and query. ``credit_quotes``: a sentence the
        context states word for word gets the alignment of an exact match (below); the verifier's
        trainer reads the alignment as computed (``credit_quotes=False``)."""
        sentences = [text[s:e] for s, e in spans]
        claim_f = [self.features(c) for c in sentences]
        cos = np.clip(kernels.cosine_matrix(claim_vecs, ctx.vecs), 0.0, 1.0)
        a, b = kernels.pack_features(claim_f), kernels.pack_features(ctx.read_features)
        g = kernels.term_grounding_matrix(a.term_offsets, a.terms, b.term_offsets, b.terms)
        n = kernels.numeric_matrix(a.number_offsets, a.numbers, b.number_offsets, b.numbers)
        q_terms = set(ctx.query_features.terms.tolist()) if ctx.query_features is not None else set()
        rows, reasons = verifier.claim_features(
            sentences, claim_f, ctx.read_features, q_terms, ctx.glued_terms, cos, g, n
        )
        align = self.alignment(sentences, claim_tokens, ctx.tokens, ctx.query_tokens)
        # A claim the context states word for word is matched to its own occurrence there (each of
        # its tokens to itself). Its own contextual states would not do: a short quote ("28", "26
        # May 2014") read alone has states unlike the same words inside the context's sentence.
        if credit_quotes:
            align[verifier.quoted(sentences, ctx.quote_texts)] = kernels.PERFECT_ALIGNMENT * 2  # both blocks
        rows = np.hstack([rows, align])
        probs = self.verifier.claim_probabilities(rows)
        # the chunk a claim rests on: most of its terms and figures, then its meaning (CERT's weights)
        best = (0.2 * cos + 0.8 * g * n).argmax(axis=1)
        return ClaimEvidence(rows, probs, reasons, best, cos, g, n, claim_f)

    @staticmethod
    def alignment(
        sentences: Sequence[str], claim_tokens: Sequence[Any], chunk_tokens: np.ndarray, query_tokens: np.ndarray
    ) -> np.ndarray:
        """float64[k, 2 * N_ALIGNMENT]: each sentence's content tokens against the chunks' tokens,
        then against the chunks' and the query's (``verifier.ALIGNMENT_FEATURES``)."""
        kept = [ts.states[content_mask(text, ts.words)] for text, ts in zip(sentences, claim_tokens)]
        offsets = np.zeros(len(kept) + 1, dtype=np.int64)
        np.cumsum([len(k) for k in kept], out=offsets[1:])
        claims = stacked(kept, chunk_tokens.shape[1])
        best = kernels.best_match(claims, chunk_tokens)
        with_query = np.maximum(best, kernels.best_match(claims, query_tokens)) if len(query_tokens) else best
        return np.hstack([kernels.alignment_rows(best, offsets), kernels.alignment_rows(with_query, offsets)])

    def _claims(
        self, context: Sequence[str], spans: np.ndarray, ev: ClaimEvidence, chunk_f: Sequence["kernels.TextFeatures"]
    ) -> tuple[Claim, ...]:
        out = []
        thr = self.cfg.claim_support_threshold
        # each chunk's sentences once per request, whatever its size (the LRU keeps short ones
        # across requests; a long chunk must not be split again for every claim it supports)
        sentences: dict[int, tuple[np.ndarray, Any]] = {}
        for i, (s, e) in enumerate(spans):
            j = int(ev.best[i])
            p = float(ev.probabilities[i])
            ok = p >= thr
            if ok and j not in sentences:
                sentences[j] = self._chunk_sentences.get_or_make(context[j], self._sentences_packed)
            cs, ce = self._support_span(context[j], ev.claim_f[i], *sentences[j]) if ok else (0, 0)
            out.append(
                Claim(
                    start=int(s),
                    end=int(e),
                    support=p,
                    supported=ok,
                    chunk_index=j if ok else -1,
                    semantic=float(ev.cos[i, j]),
                    grounding=float(ev.grounding[i, j]),
                    numeric=float(ev.numeric[i, j]),
                    chunk_start=cs,
                    chunk_end=ce,
                    reason="" if ok else ev.reasons[i],
                )
            )
        return tuple(out)

    @staticmethod
    def _support_span(chunk: str, claim_f: "kernels.TextFeatures", spans: np.ndarray, p: Any) -> tuple[int, int]:
        """Char offsets of the chunk sentence that shares most of the claim's terms and figures
        (``spans``, ``p``: the chunk's :meth:`_sentences_packed`)."""
        if p is None:
            return 0, len(chunk)
        c = kernels.pack_features([claim_f])
        g = kernels.term_grounding_matrix(c.term_offsets, c.terms, p.term_offsets, p.terms)[0]
        n = kernels.numeric_matrix(c.number_offsets, c.numbers, p.number_offsets, p.numbers)[0]
        k = int((g * n).argmax())
        return int(spans[k, 0]), int(spans[k, 1])

    def _sentences_packed(self, chunk: str) -> tuple[np.ndarray, Any]:
        """A chunk's sentence spans and their packed features (None for a one-sentence chunk)."""
        spans = kernels.split_sentences(chunk)
        return spans, kernels.pack_features([self.features(chunk[s:e]) for s, e in spans]) if len(spans) > 1 else None

    # -- Measure (CERT) ---------------------------------------------------------------------------
    def measure(self, text1: str, text2: str, v1: np.ndarray, v2: np.ndarray, threshold: float | None) -> MeasureResult:
        thr = self.cfg.match_threshold if threshold is None else threshold
        f1, f2 = self.features(text1), self.features(text2)
        semantic = _clip(float(np.dot(v1, v2)))
        numeric = kernels.numeric_consistency(f1.numbers, f2.numbers)
        grounding = kernels.term_grounding(f1.terms, f2.terms) * numeric
        confidence = 0.5 * semantic + 0.5 * grounding
        return MeasureResult(semantic, grounding, confidence, confidence >= thr, thr, numeric)

