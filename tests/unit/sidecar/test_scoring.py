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
    CONTEXT_PRECISION,
    CONTEXT_RECALL,
    CONTEXT_RELEVANCE,
    FAITHFULNESS,
    GROUNDING,
    NUMERIC,
    QUESTION_FIT,
    SEMANTIC,
    Scorer,
    content_mask,
    stacked,
)
from certus.sidecar.cache import MAX_CACHED_TEXT_CHARS
from certus.sidecar.verifier import ALIGNMENT_FEATURES

CTX = (
    "Apple reported Q4 revenue of $89.5B, up 8% year over year.",
    "The company's services segment reached a record $22.3 billion.",
)


def score(encoder: Any, response: str, context: tuple[str, ...] = CTX, query: str = "How did Apple do in Q4?"):
    scorer = Scorer(ScoringConfig())
    inp = EvaluateInput(workspace_id="w", query=query, response=response, context=context)
    layout = scorer.layout(inp)
    return scorer.score(inp, layout, *encoder.encode_tokens(layout.texts)), layout


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


def test_faithful_answer_has_every_claim_supported_by_the_right_chunk_and_sentence(encoder: Any) -> None:
    s, _ = score(encoder, "Apple's Q4 revenue was $89.5 billion. Services reached a record $22.3 billion.")
    assert all(c.supported and c.reason == "" for c in s.claims)
    assert s.values[FAITHFULNESS] == pytest.approx(min(c.support for c in s.claims))
    assert s.values[FAITHFULNESS] >= ScoringConfig().claim_support_threshold
    assert [c.chunk_index for c in s.claims] == [0, 1]
    # each chunk is one sentence here, so the supporting span is the whole chunk
    assert [(c.chunk_start, c.chunk_end) for c in s.claims] == [(0, len(CTX[0])), (0, len(CTX[1]))]
    assert all(c.numeric == 1.0 for c in s.claims)
    assert s.values[NUMERIC] == 1.0


def test_supporting_span_is_the_sentence_of_the_chunk_that_carries_the_claim(encoder: Any) -> None:
    chunk = "Apple is based in Cupertino. " + CTX[1] + " The iPhone sold well."
    s, _ = score(encoder, "Services reached a record $22.3 billion.", context=(chunk,))
    c = s.claims[0]
    assert c.supported and c.chunk_index == 0
    assert chunk[c.chunk_start : c.chunk_end] == CTX[1]


def test_each_claim_gets_its_own_sentence_of_a_shared_chunk(encoder: Any, monkeypatch: Any) -> None:
    """Two claims supported by different sentences of one chunk; the chunk is split once per request
    (not once per claim), the second request over it reads the cache, and a chunk too long for the
    cache is still split only once per request."""
    chunk = "Apple is based in Cupertino. " + CTX[0] + " " + CTX[1]
    response = "Q4 revenue was $89.5B, up 8%. Services reached a record $22.3 billion."
    scorer = Scorer(ScoringConfig())
    splits = []
    real = scorer._sentences_packed
    monkeypatch.setattr(scorer, "_sentences_packed", lambda text: splits.append(len(text)) or real(text))
    for n in (1, 2):
        inp = EvaluateInput(workspace_id="w", query="How did Apple do?", context=(chunk,), response=response)
        layout = scorer.layout(inp)
        s = scorer.score(inp, layout, *encoder.encode_tokens(layout.texts))
        assert [chunk[c.chunk_start : c.chunk_end] for c in s.claims] == [CTX[0], CTX[1]]
        assert len(scorer._chunk_sentences) == 1 and scorer._chunk_sentences.hits == n - 1
    assert splits == [len(chunk)]
    long_chunk = chunk + " The museum opens at nine on weekdays." * 120  # beyond MAX_CACHED_TEXT_CHARS
    assert len(long_chunk) > MAX_CACHED_TEXT_CHARS
    for _ in (1, 2):
        inp = EvaluateInput(workspace_id="w", query="How did Apple do?", context=(long_chunk,), response=response)
        layout = scorer.layout(inp)
        s = scorer.score(inp, layout, *encoder.encode_tokens(layout.texts))
        assert [long_chunk[c.chunk_start : c.chunk_end] for c in s.claims] == [CTX[0], CTX[1]]
    assert splits == [len(chunk), len(long_chunk), len(long_chunk)]  # once per request, never kept


def test_one_wrong_figure_fails_its_claim_and_says_why(encoder: Any) -> None:
    s, _ = score(encoder, "Apple's Q4 revenue was $89.5 billion. Services reached a record $31 billion.")
    assert s.claims[0].supported and not s.claims[1].supported
    assert s.claims[1].reason == "number_contradicted"
    assert s.claims[1].chunk_index == -1 and (s.claims[1].chunk_start, s.claims[1].chunk_end) == (0, 0)
    assert s.values[FAITHFULNESS] == pytest.approx(s.claims[1].support)
    assert s.values[FAITHFULNESS] < ScoringConfig().claim_support_threshold
    assert s.values[NUMERIC] == 0.5  # one of the response's two numbers is confirmed
    assert s.values[CONFIDENCE] == pytest.approx(0.5 * s.values[SEMANTIC] + 0.5 * s.values[GROUNDING])


def test_invented_name_fails_as_a_missing_entity(encoder: Any) -> None:
    s, _ = score(encoder, "Apple's Q4 revenue was $89.5 billion. Services were run by Tim Cook from Cupertino.")
    assert s.claims[0].supported
    assert not s.claims[1].supported and s.claims[1].reason == "missing_entity"


@pytest.mark.parametrize("claim", ["The weather was nice.", "Bananas are a good source of potassium and fibre."])
def test_an_off_topic_claim_is_not_supported(encoder: Any, claim: str) -> None:
    s, _ = score(encoder, "Apple's Q4 revenue was $89.5 billion. " + claim)
    assert s.claims[0].supported
    assert not s.claims[1].supported and s.claims[1].reason == "no_support"
    assert s.values[FAITHFULNESS] < ScoringConfig().claim_support_threshold


def test_context_precision_ranks_the_supporting_chunks(encoder: Any) -> None:
    noise = "The cafeteria menu changes every Tuesday."
    response = "Services reached a record $22.3 billion."
    first, _ = score(encoder, response, context=(CTX[1], noise, noise + " Really."))
    second, _ = score(encoder, response, context=(noise, CTX[1], noise + " Really."))
    third, _ = score(encoder, response, context=(noise, noise + " Really.", CTX[1]))
    assert first.values[CONTEXT_PRECISION] == 1.0
    assert second.values[CONTEXT_PRECISION] == pytest.approx(1 / 2)
    assert third.values[CONTEXT_PRECISION] == pytest.approx(1 / 3)
    both, _ = score(encoder, "Apple's Q4 revenue was $89.5 billion. Services reached a record $22.3 billion.",
                    context=(CTX[0], noise, CTX[1]))
    assert both.values[CONTEXT_PRECISION] == pytest.approx((1 / 1 + 2 / 3) / 2)
    none, _ = score(encoder, "The weather was nice.", context=(noise,))
    assert none.values[CONTEXT_PRECISION] == 0.0


def test_context_recall_is_the_share_of_reference_sentences_the_context_supports(encoder: Any) -> None:
    scorer = Scorer(ScoringConfig())

    def recall(reference: str) -> float:
        inp = EvaluateInput("w", "How did Apple do?", "Apple did well.", CTX, reference=reference)
        layout = scorer.layout(inp)
        assert layout.texts[layout.reference] == [reference[a:b] for a, b in layout.reference_spans]
        return scorer.score(inp, layout, *encoder.encode_tokens(layout.texts)).values[CONTEXT_RECALL]

    assert recall("Apple's Q4 revenue was $89.5 billion. Services reached a record $22.3 billion.") == 1.0
    assert recall("Apple's Q4 revenue was $89.5 billion. Bananas are a good source of potassium and fibre.") == 0.5
    s, _ = score(encoder, "Apple did well.")
    assert CONTEXT_RECALL not in s.values  # only with a reference


def test_question_fit_needs_a_query_and_prefers_the_answer_to_this_question(encoder: Any) -> None:
    passage = (
        "The Normans were descended from Norse raiders. They settled in Normandy in the 10th century. "
        "Their leader Rollo swore fealty to King Charles III of West Francia in 911."
    )
    q = "In what year did Rollo swear fealty to the king?"
    right, _ = score(encoder, "911", context=(passage,), query=q)
    wrong, _ = score(encoder, "Norse raiders", context=(passage,), query=q)
    assert right.values[QUESTION_FIT] > wrong.values[QUESTION_FIT]
    s, _ = score(encoder, "911", context=(passage,), query="")
    assert QUESTION_FIT not in s.values


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


def test_content_mask_keeps_content_words_whole() -> None:
    text = "The Normans settled in Normandy in 911."
    words = np.array([[0, 3], [4, 11], [12, 19], [20, 22], [23, 31], [23, 31], [32, 34], [35, 38], [38, 39]], np.int32)
    assert content_mask(text, words).tolist() == [False, True, True, False, True, True, False, True, False]


def test_token_alignment_finds_the_claim_words_the_context_lacks(encoder: Any) -> None:
    context = ("The Normans were descended from Norse raiders and pirates from Denmark, Iceland and Norway.",)
    query = "Where did the Normans come from?"
    claims = [
        "The Normans descended from Norse raiders from Denmark, Iceland and Norway.",  # supported
        "The Normans descended from Portuguese merchants who sailed from Lisbon.",  # invented
    ]
    texts = [*claims, *context, query]
    _, tokens = encoder.encode_tokens(texts)
    dim = encoder.dim
    rows = Scorer.alignment(
        claims, tokens[:2], stacked([tokens[2].states], dim), stacked([tokens[3].states], dim)
    )
    assert rows.shape == (2, len(ALIGNMENT_FEATURES))
    mean, worst, unsupported = (ALIGNMENT_FEATURES.index(f"align_{n}") for n in ("mean", "min", "unsupported_share"))
    ok, bad = rows
    assert ok[mean] > bad[mean] and ok[worst] > bad[worst] + 0.1
    assert ok[unsupported] == 0.0 < bad[unsupported]
    # the query block never sees less support than the chunks alone
    assert np.all(rows[:, 5] >= rows[:, 0] - 1e-9)
    # without content words there is nothing to contradict
    none = Scorer.alignment(["It is."], encoder.encode_tokens(["It is."])[1], stacked([tokens[2].states], dim),
                            stacked([], dim))
    assert none[0, :5].tolist() == [1.0, 1.0, 0.0, 0.0, 1.0]


def test_a_short_quote_of_the_context_is_supported(encoder: Any) -> None:
    """A short answer copied from the context ("28", a date, a name) is supported: its tokens are
    matched to their own occurrence there. Read alone, their contextual states differ from the same
    words in the context's sentence, and such answers used to fail (0.70 at most). A figure the
    context does not state, or one glued to the next word, stays what it was."""
    ctx = (
        "The Victor Diamond Mine is owned by De Beers, which operates in 28 countries. "
        '"Robbers" was released as the sixth single on 26 May 2014The 1975 is the band\'s debut album.',
    )
    q = "In how many countries does the owner operate?"
    for answer in ("28", "26 May 2014", '"Robbers"', "De Beers."):
        s, _ = score(encoder, answer, context=ctx, query=q)
        assert s.values[FAITHFULNESS] >= 0.7, answer
        assert s.claims[0].chunk_index == 0 and s.claims[0].reason == "", answer
    wrong, _ = score(encoder, "29", context=ctx, query=q)
    assert wrong.values[FAITHFULNESS] < 0.7 and wrong.claims[0].reason == "number_contradicted"


def test_cached_text_features_are_the_same_and_out_of_the_garbage_collectors_sight() -> None:
    """Up to 20,000 texts' features are cached; what the cache holds is dropped from gc passes
    (a tuple of arrays), and a cached text gives the features a fresh one does."""
    import gc

    from certus import kernels

    scorer = Scorer(ScoringConfig())
    text = "The Eiffel Tower, finished in 1889, is 330 metres tall and stands in Paris."
    first = scorer.features(text)
    again = scorer.features(text)
    fresh = kernels.features(text)
    for f in (first, again):
        assert isinstance(f, kernels.TextFeatures)
        np.testing.assert_array_equal(f.terms, fresh.terms)
        np.testing.assert_array_equal(f.numbers, fresh.numbers)
    gc.collect()
    assert scorer._features.hits == 1 and not gc.is_tracked(scorer._features.peek(next(iter(scorer._features._data))))
