"""The learned verifier: shipped weights, their guarantees, their features, and the trainer."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from certus import kernels
from certus.models import train_verifier as T
from certus.sidecar import verifier as V
from certus.sidecar.config import load
from certus.sidecar.toolkit import validate as D
from tests.conftest import shared_data

SHIPPED = Path(T.__file__).resolve().parent / "verifier.json"


def test_shipped_weights_record_how_they_were_made() -> None:
    d = json.loads(SHIPPED.read_text())
    assert d["format"] == "certus.verifier/v1"
    assert d["claim"]["features"] == list(V.CLAIM_FEATURES)
    assert d["question"]["features"] == list(V.QUESTION_FEATURES)
    meta = d["meta"]
    assert meta["seed"] == T.SEED and meta["trainer"] == "certus.models.train_verifier"
    assert set(meta["data_sha256"]) == set(T.FILES)
    assert SHIPPED.stat().st_size < 5 * 1024 * 1024
    assert V.default_verifier().meta == meta


def test_shipped_weights_were_trained_on_the_shared_data_as_it_is() -> None:
    meta = json.loads(SHIPPED.read_text())["meta"]
    for name, rel in T.FILES.items():
        assert T.sha256_file(shared_data(*rel.split("/"))) == meta["data_sha256"][name], name


def test_shipped_model_is_monotone_in_the_evidence() -> None:
    """More support never lowers P(supported); more missing never raises it — for any row."""
    v = V.default_verifier()
    rng = np.random.default_rng(0)
    rows = rng.uniform(0.0, 1.0, (2000, len(V.CLAIM_FEATURES))) * 3.0
    base = v.claim_probabilities(rows)
    for name, sign in V.MONOTONE.items():
        i = V.CLAIM_FEATURES.index(name)
        up = rows.copy()
        up[:, i] += 0.5
        moved = v.claim_probabilities(up)
        assert np.all(sign * (moved - base) >= -1e-12), name


def test_weights_for_other_features_are_refused() -> None:
    d = json.loads(SHIPPED.read_text())
    d["claim"]["features"] = d["claim"]["features"][:-1]
    with pytest.raises(V.VerifierWeightsError, match="other features"):
        V.Verifier.from_dict(d)
    d = json.loads(SHIPPED.read_text())
    del d["question"]["w"]
    with pytest.raises(V.VerifierWeightsError, match="'w'"):
        V.Verifier.from_dict(d)


def test_config_points_at_other_weights(tmp_path: Path) -> None:
    d = json.loads(SHIPPED.read_text())
    d["claim"]["b2"] = 40.0  # saturates: every claim supported
    path = tmp_path / "v.json"
    path.write_text(json.dumps(d))
    cfg = load(env={"CERTUS_VERIFIER": str(path)})
    assert cfg.scoring.verifier_path == str(path)
    other = V.load_verifier(cfg.scoring.verifier_path)
    row = np.zeros((1, len(V.CLAIM_FEATURES)))
    assert other.claim_probabilities(row)[0] > V.default_verifier().claim_probabilities(row)[0]


def test_glued_knowledge_is_separated_and_names_are_found_mid_sentence() -> None:
    assert V.unglued("Iron Man is starring Robert Downey Jr.Robert Downey Jr. starred") == (
        "Iron Man is starring Robert Downey Jr. Robert Downey Jr. starred"
    )
    assert V.unglued("plain text. Nothing glued") is None
    # "The" starts the sentence: not a name; Tom and Hanks are
    assert V.entity_terms("The film starred Tom Hanks.") == set(kernels.extract_terms("tom hanks").tolist())
    assert V.entity_terms("the film starred tom hanks.") == set()


def test_quoted_claims_occur_word_for_word_between_word_boundaries() -> None:
    ctx = [
        '"Robbers" is a song released on 26 May 2014The 1975 is the album.\nIt  operates in 28 countries.',
        "Monson is a town in Piscataquis County.",
    ]
    claims = {
        "26 May 2014": True,  # glued to the next word ("2014The"): found once the words are separated
        "Piscataquis": True,
        "28.": True,  # the sentence's full stop is not part of the quote
        '"Robbers"': True,
        "it operates in 28 countries": True,  # case and the line break / double space aside
        "No.": False,  # no content word (and "no" only occurs inside "Monson")
        "song released on 26": True,
        "songs": False,  # "song" + "s": not a whole word of the context
        "operates in 29 countries": False,
        "Piscataquis County is big.": False,
        "": False,
    }
    texts = V.quote_texts(ctx)
    assert V.quoted(list(claims), texts).tolist() == list(claims.values())
    assert texts == V.quote_texts(ctx, [V.chunk_reading(c) for c in ctx])  # with the readings given
    assert V.quoted([], texts).tolist() == [] and V.quoted(["28"], V.quote_texts([])).tolist() == [False]


def _prepared(encoder: Any, query: str, context: list[str] | tuple[str, ...]) -> V.QuestionContext:
    _, tokens = encoder.encode_tokens([query, *context])
    return V.question_context(query, context, tokens[0], tokens[1:])


def _question_row(encoder: Any, query: str, answer: str, context: tuple[str, ...]) -> dict[str, float]:
    return dict(zip(V.QUESTION_FEATURES, V.question_features(answer, _prepared(encoder, query, context))))


def test_question_features_locate_the_answer_and_its_type(encoder: Any) -> None:
    passage = "Rollo settled in Normandy. In 911, Rollo swore fealty to King Charles III."
    q = "In what year did Rollo swear fealty?"
    right = _question_row(encoder, q, "911", (passage,))
    wrong = _question_row(encoder, q, "Normandy", (passage,))
    assert right["answer_located"] == wrong["answer_located"] == 1.0
    assert right["question_overlap_gap"] == 0.0 and wrong["question_overlap_gap"] < 0.0
    assert right["type_match"] == 1.0 and wrong["type_mismatch"] == 1.0


def test_question_focus_reads_the_words_around_the_answer_from_the_token_states(encoder: Any) -> None:
    """Two answers of the same type in one passage: the one next to what the question asks about
    has the question's focus around it; the other does not (its gap to the chunk's best focus is
    lower). Located by its content words when not verbatim; nowhere in the context: below both."""
    passage = (
        "The castle was finished in 1204 after a long siege by the French king. "
        "Many years later, in 1450, the town was rebuilt by merchants from Flanders after a fire."
    )
    q = "When was the town rebuilt by the merchants?"
    right = _question_row(encoder, q, "1450", (passage,))
    wrong = _question_row(encoder, q, "1204", (passage,))
    assert right["type_match"] == wrong["type_match"] == 1.0  # the type cannot tell them apart
    assert right["question_focus_gap"] > wrong["question_focus_gap"]
    assert -0.5 < wrong["question_focus_gap"] < right["question_focus_gap"] <= 1e-9
    reworded = _question_row(encoder, q, "It was rebuilt in 1450 by Flanders merchants.", (passage,))
    assert reworded["answer_located"] == 0.0 and reworded["question_focus_gap"] > wrong["question_focus_gap"]
    absent = _question_row(encoder, q, "Tokyo", (passage,))
    assert absent["question_focus_gap"] < wrong["question_focus_gap"]


def test_question_focus_past_the_encoder_window_falls_back_to_absent(encoder: Any) -> None:
    """An answer found only beyond the chunk's 256-token window has no token states to read: it
    gets the 'nowhere' value, never an error or a stale piece."""
    chunk = "Filler words about nothing in particular here. " * 60 + "The bridge opened in 1890."
    q = "When did the bridge open?"
    row = _question_row(encoder, q, "1890", (chunk,))
    prepared = _prepared(encoder, q, (chunk,))
    assert row["answer_located"] == 1.0
    assert row["question_focus_gap"] == pytest.approx(-prepared.chunks[0].focus_best)


def test_question_context_needs_one_token_state_per_chunk(encoder: Any) -> None:
    _, tokens = encoder.encode_tokens(["Who?", "A chunk."])
    with pytest.raises(ValueError, match="chunk_tokens: 1 token states for 2 chunks"):
        V.question_context("Who?", ["A chunk.", "Another."], tokens[0], tokens[1:])


def test_mil_takes_each_answers_least_supported_claim() -> None:
    z = np.array([0.5, -1.0, 2.0, 0.1, 0.3])
    owner = np.array([0, 0, 1, 2, 2])
    za, arg = T.Mil.answer_logits(z, owner, 3)
    assert za.tolist() == [-1.0, 2.0, 0.1] and arg.tolist() == [1, 2, 3]


def _tiny_data(root: Path) -> Path:
    """The first rows of each shared file (and SQuAD whole), in the shared layout."""
    for rel in T.FILES.values():
        src = shared_data(*rel.split("/"))
        dst = root / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.suffix == ".jsonl":
            dst.write_text("".join(src.read_text().splitlines(keepends=True)[:60]))
        else:
            shutil.copy(src, dst)
    return root


def test_training_is_reproducible_and_keeps_its_guarantees(tmp_path: Path, encoder: Any, monkeypatch: Any) -> None:
    data = _tiny_data(tmp_path / "data")
    monkeypatch.setattr(T, "MAX_EPOCHS", 200)
    a = T.train(data, encoder, log=lambda m: None)
    b = T.train(data, encoder, log=lambda m: None)
    a["meta"].pop("seconds"), b["meta"].pop("seconds")
    assert a == b
    assert a["meta"]["data_sha256"]["qa_train"] == T.sha256_file(data / T.FILES["qa_train"])
    assert set(a["meta"]["claim_val_auc"]) == {"qa", "dialogue", "summarization", "synthetic"}
    v = V.Verifier.from_dict(a)
    w1 = np.asarray(a["claim"]["w1"])
    assert np.all(np.asarray(a["claim"]["w2"]) >= 0)
    for name, sign in V.MONOTONE.items():
        assert np.all(sign * w1[V.CLAIM_FEATURES.index(name)] >= 0), name
    assert v.claim_probabilities(np.zeros((1, len(V.CLAIM_FEATURES)))).shape == (1,)


def test_synthetic_edits_are_what_they_say() -> None:
    passage = "Apple reported revenue of 89 billion dollars in 2023. The company is led by Tim Cook in Cupertino."
    other = "Other text number {} about Bananas and Oranges."
    src = [D.Example(f"k{i}", "q", "a", passage if i == 0 else other.format(i), 1, "right") for i in range(4)]
    out = [e for e in D.synthetic_examples(src, 1) if e.passage == passage]
    kinds = {e.kind: e for e in out}
    assert kinds["copied"].label == 1 and kinds["copied"].answer in passage
    assert kinds["other_passage"].label == 0 and kinds["other_passage"].answer not in passage
    assert kinds["number_changed"].label == 0 and kinds["number_changed"].answer not in passage
    assert kinds["entity_swapped"].label == 0 and kinds["entity_swapped"].answer not in passage
    assert D.synthetic_examples(src, 1) == D.synthetic_examples(src, 1)


def test_question_context_reads_each_chunk_once_whatever_the_question(encoder: Any) -> None:
    """A retrieved chunk's sentences and words are computed once per chunk text; only the question's
    positions in it (and its focus tables) are per request."""
    chunk = "The Normans were descended from Norse raiders. They settled in Normandy in the 10th century."
    V.CHUNK_WORDS_CACHE.clear()
    a = _prepared(encoder, "Who were the Normans descended from?", [chunk])
    b = _prepared(encoder, "When did they settle in Normandy?", [chunk])
    assert (V.CHUNK_WORDS_CACHE.misses, V.CHUNK_WORDS_CACHE.hits) == (1, 1)
    assert a.chunks[0].parts is b.chunks[0].parts
    words = [w for _, w in a.chunks[0].parts.words]
    assert [words[k] for k in a.chunks[0].qpos] == [w for w in words if w in a.qw] != []
    assert a.chunks[0].qpos != b.chunks[0].qpos
    long_chunk = chunk * 60  # beyond MAX_CACHED_TEXT_CHARS: computed each time, never kept
    _prepared(encoder, "Who?", [long_chunk])
    assert len(V.CHUNK_WORDS_CACHE) == 1
    # and the features are what they were without the cache
    x = V.question_features("Norse raiders", a)
    V.CHUNK_WORDS_CACHE.clear()
    again = _prepared(encoder, "Who were the Normans descended from?", [chunk])
    assert np.array_equal(x, V.question_features("Norse raiders", again))


def test_has_digit_is_str_isdigit_over_the_text() -> None:
    texts = ["", "no digits here", "in 1066", "x²", "٣ apples", "١٢٣", "Ⅻ", "①", "²³", "café 7", "naïve"]
    for t in texts:
        assert V._has_digit(t) == any(ch.isdigit() for ch in t), t


def test_the_question_words_positions_in_a_chunk_are_every_word_with_a_question_stem(encoder: Any) -> None:
    context = (
        "The Normans were descended from Norse raiders. The Norman dynasty had a major political impact. "
        "Norse raiders settled in Normandy, and the Normans adopted the Frankish language.",
        "Nothing of the question is here.",
    )
    for question in ("Who were the Normans descended from?", "What language did Norse raiders adopt?", "Why?"):
        qw = frozenset(V.content_words(question))
        for ch in _prepared(encoder, question, context).chunks:
            assert ch.qpos == [k for k, (_, w) in enumerate(ch.parts.words) if w in qw]
