"""The PII NER head on the encoder's token states: real weights, real ONNX MiniLM, real spaCy teacher."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import numpy as np
import pytest

from certus.models.encoder import OnnxEncoder
from certus.sidecar.guardrails import pii_ner, train_pii_ner
from certus.sidecar.guardrails.pii import HEAD_CONFIDENCE_FLOOR, HeadNer
from certus.sidecar.guardrails.pii_ner import LABELS, NerHead, NerSpan, decode, join_within_words, shape_features, word_pieces

SHARED = Path(__file__).resolve().parents[3].parent / "shared" / "data"


@pytest.fixture(scope="module")
def head() -> NerHead:
    h = pii_ner.default_head()
    assert h is not None, "sidecar/guardrails/data/pii_ner_head.npz is missing"
    return h


def states_of(encoder: OnnxEncoder, text: str):
    return encoder.encode_tokens([text])[1][0]


def found(head: NerHead, encoder: OnnxEncoder, text: str) -> set[tuple[str, str]]:
    return {(s.entity_type, text[s.start : s.end]) for s in head.predict(text, states_of(encoder, text))}


def test_the_shipped_head_records_how_it_was_trained(head: NerHead) -> None:
    meta = head.meta
    assert tuple(meta["labels"]) == LABELS and meta["teacher"].startswith("en_core_web_sm")
    assert 0.0 < head.threshold < 1.0 and meta["val"]["teacher_spans"] > 1000
    # street addresses were learned from the synthetic sentences (spaCy has no such label)
    assert "STREET_ADDRESS" in pii_ner.ENTITIES and meta["synthetic"]["sentences"] == train_pii_ner.SYNTH_SENTENCES
    assert meta["val"]["f2_by_type"]["STREET_ADDRESS"] > 0.5
    assert set(meta["data_sha256"]) == set(train_pii_ner.FILES)
    assert "pii/presidio_synth_dev.jsonl" not in train_pii_ner.FILES.values()  # the benchmark's set is never read
    if SHARED.is_dir():
        for key, rel in train_pii_ner.FILES.items():
            assert meta["data_sha256"][key] == hashlib.sha256((SHARED / rel).read_bytes()).hexdigest(), rel
    assert head.w1.dtype == np.float32 and head.w1.shape == (4 * 384 + len(pii_ner.SHAPE_FEATURES), meta["hidden"])


def test_words_and_their_shape(encoder: OnnxEncoder) -> None:
    text = "Dr. Ann O'Neil met IBM in 2019."
    first, spans = word_pieces(states_of(encoder, text))
    words = [text[s:e] for s, e in spans.tolist()]
    assert words == ["Dr", ".", "Ann", "O", "'", "Neil", "met", "IBM", "in", "2019", "."]
    f = shape_features(text, spans)
    col = {name: f[:, i] for i, name in enumerate(pii_ner.SHAPE_FEATURES)}
    assert col["title"].tolist() == [1, 0, 1, 1, 0, 1, 0, 0, 0, 0, 0]
    assert col["upper"].tolist() == [0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0]
    assert col["digit"].tolist() == [0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0]
    assert col["sentence_initial"][0] == 1 and col["sentence_initial"][2] == 1  # after "Dr." 's period
    assert col["punct"].tolist() == [0, 1, 0, 0, 1, 0, 0, 0, 0, 0, 1]
    assert col["next_capitalised"][6] == 1 and col["prev_capitalised"][6] == 1  # "met": Neil before, IBM after


def test_digit_letter_and_punctuation_columns_follow_each_character() -> None:
    """Letters-only words skip the per-character loops; the rest still read every character
    (superscripts and Arabic-Indic digits are digits, a circled one is not a letter)."""
    text = "x² ٣ Ⅻ ① 3rd !! Zürich É-12 ab"
    spans = np.array([(m.start(), m.end()) for m in re.finditer(r"\S+", text)], dtype=np.int32)
    f = shape_features(text, spans)
    col = {name: f[:, i].tolist() for i, name in enumerate(pii_ner.SHAPE_FEATURES)}
    words = [text[s:e] for s, e in spans.tolist()]
    assert col["digit"] == [float(any(c.isdigit() for c in w)) for w in words] == [1, 1, 0, 1, 1, 0, 0, 1, 0]
    assert col["punct"] == [float(not any(c.isalnum() for c in w)) for w in words] == [0, 0, 0, 0, 0, 1, 0, 0, 0]


def test_bio_decoding() -> None:
    spans = np.array([[0, 4], [5, 10], [11, 13], [14, 20], [21, 25]], dtype=np.int32)
    probs = np.full((5, len(LABELS)), 0.01, dtype=np.float32)
    tag = {lab: i for i, lab in enumerate(LABELS)}
    for i, (lab, p) in enumerate([("B-PERSON", 0.9), ("I-PERSON", 0.7), ("O", 0.9), ("I-LOCATION", 0.6), ("B-DATE_TIME", 0.2)]):
        probs[i, tag[lab]] = p
    got = decode(probs, spans, threshold=0.3)
    # an I- tag without its B- starts a span; a span below the threshold is dropped
    assert got == [NerSpan("PERSON", 0, 10, pytest.approx(0.8)), NerSpan("LOCATION", 14, 20, pytest.approx(0.6))]
    assert decode(probs, spans, threshold=0.85) == []


@pytest.mark.parametrize(
    ("text", "span", "word"),
    [
        ("Contact Jean-Luc Picard", (13, 16), "Jean-Luc"),  # the head tagged "Luc"
        ("born on 2/8/1935.", (10, 16), "2/8/1935"),  # "8/1935", and the sentence's period is not the date's
        ("Faina Yefremova's tales", (6, 15), "Yefremova"),  # a possessive is not part of the name
        ("(Ann)", (1, 4), "Ann"),
    ],
)
def test_spans_are_whole_words(text: str, span: tuple[int, int], word: str) -> None:
    got = pii_ner.snap_to_words(text, NerSpan("PERSON", *span, 0.9))
    assert text[got.start : got.end] == word


def test_spans_inside_one_whitespace_token_are_joined() -> None:
    text = "born 2/8/1935 in Lyon"
    parts = [NerSpan("DATE_TIME", 5, 7, 0.5), NerSpan("DATE_TIME", 8, 13, 0.9), NerSpan("LOCATION", 17, 21, 0.9)]
    assert join_within_words(text, parts) == [NerSpan("DATE_TIME", 5, 13, 0.5), NerSpan("LOCATION", 17, 21, 0.9)]
    # whitespace between two names keeps them apart
    assert len(join_within_words("Ann Bob", [NerSpan("PERSON", 0, 3, 1), NerSpan("PERSON", 4, 7, 1)])) == 2


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # "Lisbon" comes out as a place or as an address without a number, which the guardrail
        # reports as a place (test_pii: test_a_city_someone_moved_to_is_a_personal_place)
        ("John Smith moved to Lisbon in March 2019.", {("PERSON", "John Smith"), ("DATE_TIME", "March 2019")}),
        ("Please send the invoice to Maria Garcia before Friday.", {("PERSON", "Maria Garcia"), ("DATE_TIME", "Friday")}),
    ],
)
def test_the_head_finds_names_places_and_dates(head: NerHead, encoder: OnnxEncoder, text: str, expected: set) -> None:
    assert expected <= found(head, encoder, text)


def test_case_matters_though_the_encoder_is_uncased(head: NerHead, encoder: OnnxEncoder) -> None:
    """MiniLM's word pieces are the same for "Rose" and "rose", "Hope" and "hope"; the shape
    features are not."""
    assert ("PERSON", "Rose Miller") in found(head, encoder, "My friend Rose Miller called.")
    assert found(head, encoder, "A rose bloomed in the garden.") == set()
    assert ("PERSON", "Hope Jones") in found(head, encoder, "My friend Hope Jones called.")
    assert found(head, encoder, "There is hope for us.") == set()


def test_a_sentence_longer_than_the_encoder_window_is_scanned_to_its_end(head: NerHead, encoder: OnnxEncoder) -> None:
    filler = " ".join(["and the committee discussed the budget"] * 70)  # ~420 words, no sentence end
    text = f"The report says {filler} and then Angela Merkel signed it"
    calls: list[int] = []

    def token_states(texts):
        calls.append(len(texts))
        return encoder.encode_tokens(texts)[1]

    ner = HeadNer(token_states, head)
    spans = ner.spans(text)
    assert len(calls) >= 2  # the first window was truncated; the rest was encoded after it
    names = [(s.entity_type, text[s.start : s.end], s.score) for s in spans if s.entity_type == "PERSON"]
    assert names and names[-1][1] == "Angela Merkel" and names[-1][2] >= HEAD_CONFIDENCE_FLOOR


def test_head_and_spacy_suites_report_the_same_kind_of_violation(suite, spacy_suite) -> None:
    from certus.sidecar.domain import EvaluateInput, GuardrailConfig, GuardrailType

    text = "Our customer Peter Novak lives in Brno and was born on 4 May 1980."
    inp = EvaluateInput(workspace_id="w", query="q", response=text, context=())
    cfg = {GuardrailType.PII: GuardrailConfig()}
    assert suite.pii.ner_model == "minilm-token-head" and spacy_suite.pii.ner_model.startswith("en_core_web_sm")
    got = {(v.detector, text[v.start : v.end]) for v in suite.scan(inp, cfg)}
    assert {("PERSON", "Peter Novak"), ("LOCATION", "Brno"), ("DATE_OF_BIRTH", "4 May 1980")} <= got
    for v in suite.scan(inp, cfg):
        assert text[v.start : v.end] not in repr(v)  # hashes and offsets only


@pytest.mark.skipif(not SHARED.is_dir(), reason="needs ../shared/data")
def test_the_trainer_runs_end_to_end_on_a_small_sample(encoder: OnnxEncoder, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The real teacher (spaCy) and the real encoder on a few documents: labels line up with the
    words, training runs, the saved head loads and tags."""
    monkeypatch.setattr(train_pii_ner, "MAX_WORDS", 4000)
    monkeypatch.setattr(train_pii_ner, "EPOCHS", 2)
    monkeypatch.setattr(train_pii_ner, "SYNTH_SENTENCES", 200)
    lines: list[str] = []
    trained = train_pii_ner.train(SHARED, encoder, "fp32", log=lines.append)
    assert any(line.startswith("teacher:") for line in lines) and any(line.startswith("chosen:") for line in lines)
    out = tmp_path / "head.npz"
    train_pii_ner.save(trained, out)
    loaded = NerHead.load(out)
    assert loaded.meta["variant"] == "fp32" and loaded.meta["fit_words"] > 1000
    assert loaded.meta["synthetic"]["sentences"] == 200 and loaded.meta["synthetic"]["faker"]
    text = "Angela Merkel visited Paris."
    assert isinstance(loaded.predict(text, states_of(encoder, text)), list)


def test_teacher_spans_become_word_tags() -> None:
    spans = np.array([[0, 4], [5, 10], [11, 16], [17, 19], [20, 26]], dtype=np.int32)  # "John Smith lives in Lisbon"
    tags = train_pii_ner.word_tags(spans, [("PERSON", 100, 110), ("LOCATION", 120, 126)], offset=100)
    assert [LABELS[t] for t in tags] == ["B-PERSON", "I-PERSON", "O", "O", "B-LOCATION"]


def test_masked_words_get_no_tag() -> None:
    spans = np.array([[0, 4], [5, 10], [11, 16], [17, 19], [20, 22], [23, 29]], dtype=np.int32)  # "John Smith lives at 12 Elm St"
    tags = train_pii_ner.word_tags(spans, [("MASK", 0, 10), ("STREET_ADDRESS", 20, 29)], offset=0)
    assert tags.tolist()[:2] == [-1, -1]
    assert [LABELS[t] for t in tags.tolist()[2:]] == ["O", "O", "B-STREET_ADDRESS", "I-STREET_ADDRESS"]


def test_synthetic_address_sentences_are_labelled_part_by_part_and_reproducible() -> None:
    from certus.sidecar.guardrails import synth_addresses

    rows = synth_addresses.sentences(400, seed=7)
    assert rows == synth_addresses.sentences(400, seed=7) and rows != synth_addresses.sentences(400, seed=8)
    streets = [text[s:e] for text, spans in rows for k, s, e in spans if k == "STREET_ADDRESS"]
    assert len(streets) > 300 and sum(any(c.isdigit() for c in v) for v in streets) / len(streets) > 0.95
    assert {k for _, spans in rows for k, _, _ in spans} == {"STREET_ADDRESS", "LOCATION", "PERSON", synth_addresses.MASK}
    for text, spans in rows:
        for _, s, e in spans:
            assert 0 <= s < e <= len(text) and text[s:e] == text[s:e].strip()
    # sentences without an address: numbers, e-mails and IBANs that must stay "O"
    negatives = [text for text, spans in rows if not any(k == "STREET_ADDRESS" for k, _, _ in spans)]
    assert len(negatives) > 40 and any(any(c.isdigit() for c in t) for t in negatives)


@pytest.mark.parametrize(
    ("text", "address"),
    [
        ("Please forward my mail to Kirkeveien 14, 0368 Oslo.", "Kirkeveien 14, 0368"),
        ("Her new flat is at 27 Ashgrove Crescent, Dundee.", "27 Ashgrove Crescent"),
        ("Deliver the sofa to Via Garibaldi 8, 20121 Milano.", "Via Garibaldi 8, 20121"),
    ],
)
def test_the_head_finds_street_addresses(head: NerHead, encoder: OnnxEncoder, text: str, address: str) -> None:
    got = [v for k, v in found(head, encoder, text) if k == "STREET_ADDRESS"]
    assert any(address in v or v in address and len(v) >= len(address) // 2 for v in got), got


@pytest.mark.parametrize(
    "text",
    ["The treaty was signed in 1919 by 12 nations.", "Order 55821 ships with 3 items.", "Here is my SSN: 321-54-9876"],
)
def test_the_head_does_not_call_other_numbers_addresses(head: NerHead, encoder: OnnxEncoder, text: str) -> None:
    assert not [v for k, v in found(head, encoder, text) if k == "STREET_ADDRESS"]


def test_synthetic_sentences_do_not_depend_on_the_process_string_hashing() -> None:
    """Faker's it_IT city list comes from a set; two processes with different hash seeds must still
    write the same sentences (the head's training is reproducible bit for bit)."""
    import os
    import subprocess
    import sys

    code = ("import hashlib, json; from certus.sidecar.guardrails import synth_addresses as s; "
            "print(hashlib.sha256(json.dumps(s.sentences(1500, 20261206)).encode()).hexdigest())")
    digests = {
        subprocess.run([sys.executable, "-c", code], env={**os.environ, "PYTHONHASHSEED": seed},
                       capture_output=True, text=True, check=True).stdout.strip()
        for seed in ("1", "2", "3")
    }
    assert len(digests) == 1
