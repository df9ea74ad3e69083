"""question_fit's answer head: the shipped weights, the trainer's gradients, and what it reads."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from certus.models import train_answer_head as T
from certus.models.adam import Adam
from certus.sidecar import verifier as V
from certus.sidecar.toolkit import validate as D
from tests.conftest import shared_data

SHIPPED = Path(T.__file__).resolve().parent / "answer_head.npz"


def test_shipped_head_records_how_it_was_made() -> None:
    head = V.default_answer_head()
    meta = dict(kv.split("=", 1) for kv in head.meta.split())
    assert meta["trainer"] == "certus.models.train_answer_head" and int(meta["seed"]) == T.SEED
    assert meta["data"] == T.FILE
    assert head.p["A"].shape == (T.CHANNELS, V.AnswerHead.DIM, T.RANK)
    assert head.p["conv"].shape == (T.CHANNELS + 1, 2 * T.WINDOW + 1)
    assert SHIPPED.stat().st_size < 5 * 1024 * 1024
    assert 1 <= int(meta["epoch"]) <= T.EPOCHS


def test_shipped_head_was_trained_on_the_shared_data_as_it_is() -> None:
    meta = dict(kv.split("=", 1) for kv in V.default_answer_head().meta.split())
    assert hashlib.sha256(shared_data(*T.FILE.split("/")).read_bytes()).hexdigest() == meta["sha256"]


def test_hand_written_gradients_match_finite_differences() -> None:
    rng = np.random.default_rng(0)
    p = T.init_params(1)
    p["u"] = rng.normal(0, 0.1, V.AnswerHead.DIM)
    q = rng.normal(size=(7, V.AnswerHead.DIM))
    c = rng.normal(size=(30, V.AnswerHead.DIM))
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    c /= np.linalg.norm(c, axis=1, keepdims=True)
    target = np.zeros(30, dtype=bool)
    target[[4, 5]] = True
    _, grads = T.loss_and_grads(p, q, c, target)
    for name in V.AnswerHead.NAMES:
        for _ in range(4):
            at = tuple(int(rng.integers(s)) for s in p[name].shape)
            old, eps = p[name][at], 1e-5
            p[name][at] = old + eps
            up, _ = T.loss_and_grads(p, q, c, target)
            p[name][at] = old - eps
            down, _ = T.loss_and_grads(p, q, c, target)
            p[name][at] = old
            assert grads[name][at] == pytest.approx((up - down) / (2 * eps), rel=1e-4, abs=1e-9), (name, at)


def test_adam_steps_lower_the_loss_on_one_example() -> None:
    rng = np.random.default_rng(2)
    p = T.init_params(3)
    q, c = rng.normal(size=(5, V.AnswerHead.DIM)), rng.normal(size=(40, V.AnswerHead.DIM))
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    c /= np.linalg.norm(c, axis=1, keepdims=True)
    target = np.zeros(40, dtype=bool)
    target[17:19] = True
    first, _ = T.loss_and_grads(p, q, c, target)
    opt = Adam(list(p.values()), 1e-2)  # as the trainer drives it
    for _ in range(30):
        grads = T.loss_and_grads(p, q, c, target)[1]
        opt.step(list(p.values()), [grads[k] for k in p])
    last, _ = T.loss_and_grads(p, q, c, target)
    assert last < first / 2


def test_empty_question_or_chunk_gives_zero_logits() -> None:
    head = V.default_answer_head()
    states = np.ones((3, V.AnswerHead.DIM), dtype=np.float32)
    assert head.forward(np.zeros((0, V.AnswerHead.DIM), np.float32), states).tolist() == [0.0, 0.0, 0.0]
    assert head.forward(states, np.zeros((0, V.AnswerHead.DIM), np.float32)).shape == (0,)


def _row(encoder: Any, query: str, answer: str, context: tuple[str, ...]) -> tuple[dict[str, float], V.QuestionContext]:
    _, tokens = encoder.encode_tokens([query, *context])
    prepared = V.question_context(query, context, tokens[0], tokens[1:])
    return dict(zip(V.QUESTION_FEATURES, V.question_features(answer, prepared))), prepared


def test_the_head_reads_what_kind_of_answer_the_question_asks_for(encoder: Any) -> None:
    """In a passage with two dates and three parties, the shipped head's best piece for a "when"
    question is in a date and for a "who" question in a name (untrained heads pick either); an
    answer nowhere in the context gets the 'nowhere' value. Where among same-kind spans it points is
    pinned on real data below, not on one passage."""
    passage = (
        "The castle was finished in 1204 after a long siege by the French king. "
        "Many years later, in 1450, the town was rebuilt by merchants from Flanders after a fire."
    )
    dates = {passage.index("1204"), passage.index("1450")}
    for q, wants_date in (
        ("When was the town rebuilt by the merchants?", True),
        ("When was the castle finished?", True),
        ("Who rebuilt the town?", False),
        ("Who besieged the castle?", False),
    ):
        _, prepared = _row(encoder, q, "1450", (passage,))
        ch = prepared.chunks[0]
        start = int(ch.pieces[int(np.argmax(ch.answer.z))][0])
        in_date = any(d <= start < d + 4 for d in dates)
        assert in_date == wants_date, q
    absent, _ = _row(encoder, "When was the castle finished?", "Tokyo", (passage,))
    assert absent["answer_head_gap"] == V.NOWHERE_ANSWER_GAP


def test_the_head_runs_only_on_chunks_that_hold_the_answer(encoder: Any) -> None:
    chunks = ("Rollo swore fealty to King Charles III in 911.", "Normandy lies in the north of France.")
    row, prepared = _row(encoder, "In what year did Rollo swear fealty?", "911", chunks)
    assert row["answer_located"] == 1.0
    assert prepared.chunks[0].answer._z is not None and prepared.chunks[1].answer._z is None


def test_the_head_alone_tells_the_answer_from_another_questions_answer(encoder: Any) -> None:
    """On SQuAD's "Normans" article (the head never read SQuAD; question_fit is fit there), the
    head's gap alone ranks each gold answer above the gold answer of another question on the same
    passage at AUC 0.85 with the shipped weights; untrained heads are near 0.5."""
    from certus.models.train_verifier import FeatureSource
    from certus.sidecar.toolkit import roc

    examples = D.squad_article_examples(shared_data("squad_v2", "dev_subset.json"), train=True)
    rows = FeatureSource(encoder).question_rows(examples)
    gap = rows[:, V.QUESTION_FEATURES.index("answer_head_gap")]
    assert roc.roc_auc(gap, np.array([e.label for e in examples], dtype=np.float64)) > 0.78


def test_training_is_reproducible_and_records_its_data(tmp_path: Path, encoder: Any, monkeypatch: Any) -> None:
    src = shared_data(*T.FILE.split("/"))
    data = tmp_path / "data"
    (data / "halueval").mkdir(parents=True)
    (data / T.FILE).write_text("".join(src.read_text().splitlines(keepends=True)[:80]))
    monkeypatch.setattr(T, "EPOCHS", 2)
    a = T.train(data, encoder, log=lambda m: None)
    b = T.train(data, encoder, log=lambda m: None)
    assert set(a) == {*V.AnswerHead.NAMES, "meta"}
    assert all(np.array_equal(a[k], b[k]) for k in a)
    meta = dict(kv.split("=", 1) for kv in str(a["meta"]).split())
    assert meta["sha256"] == hashlib.sha256((data / T.FILE).read_bytes()).hexdigest()
    assert int(meta["fit_chunks"]) > 0 and int(meta["val_chunks"]) > 0
    head = V.AnswerHead({k: a[k] for k in V.AnswerHead.NAMES})
    assert not np.array_equal(a["A"], T.init_params()["A"].astype(np.float32))  # it learned something
    assert head.forward(np.ones((2, V.AnswerHead.DIM), np.float32), np.ones((3, V.AnswerHead.DIM), np.float32)).shape == (3,)


def test_cloze_questions_take_one_span_out_of_a_knowledge_sentence() -> None:
    knowledge = (
        "The bridge was opened in 1890 by the city council. It carries about 4,000 cars a day."
        "Maria Lopez designed the bridge after a long competition in Bilbao."
    )
    rows = [D.Example(f"k{i}", "q", "a", knowledge, 1, "right") for i in range(40)]
    out = T.cloze_examples(rows, 5)
    assert out and out == T.cloze_examples(rows, 5)
    for e in out:
        assert e.label == 1 and e.kind == "cloze" and e.query.endswith("?")
        assert knowledge.lower().count(e.answer.lower()) == 1  # locatable: exactly once
        assert e.answer.lower() not in e.query.lower()
        assert e.query.split()[0] in ("When", "How", "Where", "Who", "What")
    assert {e.answer for e in out if e.query.startswith("When")} <= {"1890"}
