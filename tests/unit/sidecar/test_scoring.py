"""Scoring with the real encoder and the real kernels: exact rules, seed examples."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from certus.sidecar.config import ScoringConfig
from certus.sidecar.domain import EvaluateInput
from certus.sidecar.scoring import (
    ANSWER_RELEVANCY,
    CONFIDENCE,
    CONTEXT_RELEVANCE,
    FAITHFULNESS,
    GROUNDING,
    NUMERIC,
    SEMANTIC,
    Scorer,
)

CTX = (
    "Apple reported Q4 revenue of $89.5B, up 8% year over year.",
    "The company's services segment reached a record $22.3 billion.",
)


def score(encoder: Any, response: str, context: tuple[str, ...] = CTX, query: str = "How did Apple do in Q4?"):
    scorer = Scorer(ScoringConfig())
    inp = EvaluateInput(workspace_id="w", query=query, response=response, context=context)
    layout = scorer.layout(inp)
    return scorer.score(inp, layout, encoder.encode(layout.texts)), layout


def test_layout_orders_query_claims_chunks(encoder: Any) -> None:
    scorer = Scorer(ScoringConfig())
    inp = EvaluateInput("w", "Q?", "First claim. Second claim!", CTX)
    layout = scorer.layout(inp)
    assert layout.texts == ["Q?", "First claim.", "Second claim!", *CTX]
    assert layout.claim_spans.tolist() == [[0, 12], [13, 26]]


def test_seed_example_wrong_figure_is_not_matched(encoder: Any) -> None:
    scorer = Scorer(ScoringConfig())
    t1, t2 = "Apple's Q4 revenue was $450 billion", "Apple reported Q4 revenue of $89.5B"
    v = encoder.encode([t1, t2])
    r = scorer.measure(t1, t2, v[0], v[1], None)
    assert r.numeric_consistency == 0.0
    assert r.grounding_score == 0.0
    assert r.confidence == pytest.approx(0.5 * r.semantic_score)
    assert r.semantic_score == pytest.approx(float(np.dot(v[0], v[1])), abs=1e-6)
    assert r.matched is False and r.threshold == 0.7


def test_seed_example_faithful_paraphrase_is_matched(encoder: Any) -> None:
    scorer = Scorer(ScoringConfig())
    t1, t2 = "Apple's Q4 revenue was $89.5 billion", "Apple reported Q4 revenue of $89.5B"
    v = encoder.encode([t1, t2])
    r = scorer.measure(t1, t2, v[0], v[1], None)
    assert r.grounding_score == 1.0 and r.numeric_consistency == 1.0
    assert r.matched is True
    assert scorer.measure(t1, t2, v[0], v[1], 0.99).matched is False  # threshold is honoured


def test_faithful_answer_has_every_claim_supported_by_the_right_chunk(encoder: Any) -> None:
    s, _ = score(encoder, "Apple's Q4 revenue was $89.5 billion. Services reached a record $22.3 billion.")
    assert s.values[FAITHFULNESS] == 1.0
    assert [c.chunk_index for c in s.claims] == [0, 1]
    assert all(c.numeric == 1.0 for c in s.claims)
    assert s.values[NUMERIC] == 1.0


def test_one_wrong_figure_fails_one_claim(encoder: Any) -> None:
    s, _ = score(encoder, "Apple's Q4 revenue was $89.5 billion. Services reached a record $31 billion.")
    assert s.values[FAITHFULNESS] == 0.5
    assert s.claims[0].supported and not s.claims[1].supported
    assert s.claims[1].chunk_index == -1 and s.claims[1].numeric == 0.0
    assert s.values[NUMERIC] == 0.5  # one of the response's two numbers is confirmed
    assert s.values[CONFIDENCE] == pytest.approx(0.5 * s.values[SEMANTIC] + 0.5 * s.values[GROUNDING])


def test_multi_sentence_response_vector_is_the_weighted_mean_of_claims(encoder: Any) -> None:
    response = "Apple's Q4 revenue was $89.5 billion. Services reached a record $22.3 billion."
    s, layout = score(encoder, response)
    v = encoder.encode(layout.texts)
    spans = layout.claim_spans
    w = (spans[:, 1] - spans[:, 0]).astype(np.float32)
    r = (v[1:3] * w[:, None]).sum(0)
    r /= np.linalg.norm(r)
    assert s.values[ANSWER_RELEVANCY] == pytest.approx(float(np.clip(v[0] @ r, 0, 1)), abs=1e-6)
    qc = np.clip(v[3:] @ v[0], 0, 1)
    assert s.values[CONTEXT_RELEVANCE] == pytest.approx(float(qc.mean()), abs=1e-6)


def test_without_context_only_relevancy_is_scored(encoder: Any) -> None:
    s, _ = score(encoder, "Apple did well.", context=())
    assert set(s.values) == {ANSWER_RELEVANCY}
    assert s.claims == ()


def test_punctuation_only_response_is_one_claim(encoder: Any) -> None:
    s, layout = score(encoder, "...")
    assert layout.claim_spans.tolist() == [[0, 3]]
    assert len(s.claims) == 1
