from __future__ import annotations

import random
import subprocess
import sys
from pathlib import Path

import kernels_reference as ref
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from certus.kernels import STOP_WORDS, KernelInputError, extract_terms, features
from certus.kernels.numbers import NumberScan
from tests.conftest import OUTSIDE

REPO = Path(__file__).resolve().parents[3]


def same_terms(a: str, b: str) -> bool:
    return sorted(extract_terms(a).tolist()) == sorted(extract_terms(b).tolist())


def test_seed_examples() -> None:
    resp_bad = extract_terms("Apple's Q4 revenue was $450 billion")
    resp_ok = extract_terms("Apple's Q4 revenue was $89.5 billion")
    ctx = extract_terms("Apple reported Q4 revenue of $89.5B")
    apple, q4, revenue = (ref.word_hash(w) for w in ("appl", "q4", "revenu"))
    reported = ref.word_hash("reported")
    assert resp_ok.tolist() == [apple, q4, revenue, ref.number_hash(89.5e9)]
    assert resp_bad.tolist() == [apple, q4, revenue, ref.number_hash(450e9)]
    assert ctx.tolist() == [apple, reported, q4, revenue, ref.number_hash(89.5e9)]


def test_hashes_are_stable_constants() -> None:
    # Not Python's salted hash(): the same on every run and machine.
    assert extract_terms("revenue").tolist() == [-2147902873777798103]
    assert extract_terms("12%").tolist() == [2228614072794429887]


def test_hashes_do_not_depend_on_pythonhashseed() -> None:
    code = "from certus import kernels; print(kernels.extract_terms('Revenues of Apple grew 12%').tolist())"
    outs = {
        subprocess.run(
            [sys.executable, "-c", code],
            cwd=OUTSIDE,
            env={"PYTHONHASHSEED": seed, "PATH": ""},
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        for seed in ("1", "2")
    }
    assert len(outs) == 1
    assert outs.pop().strip() == str(extract_terms("Revenues of Apple grew 12%").tolist())


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("revenues", "revenue"),
        ("Revenue", "REVENUE"),
        ("companies", "company"),
        ("boxes", "box"),
        ("classes", "class"),
        ("taxes", "tax"),
        ("movies", "movie"),
        ("Apple's", "apple"),
        ("Apple\u2019s", "apples"),
        ("companies'", "company"),
        ("$89.5B", "$89.5 billion"),
        ("$89.5B", "89,500,000,000 dollars"),
        ("12%", "0.12"),
        ("12 percent", "0.12"),
        ("state-of-the-art", "state art"),
        ("snake_case", "snake case"),
    ],
)
def test_equivalent_spellings_give_the_same_terms(a: str, b: str) -> None:
    assert same_terms(a, b)


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("class", "clas"),
        ("status", "statu"),
        ("revenue", "revenues growth"),
        ("$450 billion", "$89.5B"),
        ("Q4", "4"),
        ("2019", "2020"),
    ],
)
def test_different_words_differ(a: str, b: str) -> None:
    assert not same_terms(a, b)


@pytest.mark.parametrize(
    "text",
    ["", "   ", "the and of a an", "It's what they've done, isn't it?", "a b c d", "!!! ... ???"],
)
def test_no_content_terms(text: str) -> None:
    t = extract_terms(text)
    assert t.dtype == np.int64 and t.shape == (0,)


def test_only_numbers() -> None:
    assert extract_terms("5 10 5").tolist() == [ref.number_hash(5.0), ref.number_hash(10.0), ref.number_hash(5.0)]


def test_counts_every_occurrence() -> None:
    assert extract_terms("revenue revenue revenues").tolist() == [ref.word_hash("revenu")] * 3


def test_stop_word_list_is_shipped_and_lowercase() -> None:
    assert {"the", "and", "was", "of", "dont", "isnt"} <= STOP_WORDS
    assert all(w == w.lower() and w.isalnum() for w in STOP_WORDS)
    assert "revenue" not in STOP_WORDS


def test_rejects_non_str() -> None:
    with pytest.raises(KernelInputError) as info:
        extract_terms(None)  # type: ignore[arg-type]
    assert info.value.field == "text"


_VOCAB = [
    "Apple", "apple's", "Apples", "revenue", "revenues", "Companies", "company", "the", "and", "was",
    "isn't", "don't", "it's", "classes", "status", "analysis", "boxes", "e.g.", "Dr.", "Q4", "FY2019",
    "$89.5B", "89,500,000,000", "dollars", "12%", "0.12", "-5", "3.5", "1,2,3", "x", "I", "caf\u00e9",
    "Stra\u00dfe", "na\u00efve", "\u6587\u5b57", "snake_case", "state-of-the-art", "(", ")", ",", ".", "!",
    "?", "\u2019s", "`quoted`", "'single'", "\u0130stanbul", "\U0001f600", "series", "lies", "yes",
]  # fmt: skip


def _random_text(rng: random.Random) -> str:
    seps = [" ", " ", " ", "", "\n", ", ", "-", "/"]
    return "".join(rng.choice(_VOCAB) + rng.choice(seps) for _ in range(rng.randint(0, 30)))


@pytest.mark.parametrize("seed", range(200))
def test_matches_python_reference(seed: int) -> None:
    text = _random_text(random.Random(seed))
    scan = NumberScan(text.lower())
    expected = ref.term_list(scan.rest, scan.values, STOP_WORDS)
    assert extract_terms(text).tolist() == expected, text


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200))
def test_any_text_matches_reference(text: str) -> None:
    got = extract_terms(text)
    assert got.dtype == np.int64 and got.ndim == 1 and got.flags.c_contiguous
    scan = NumberScan(text.lower())
    assert got.tolist() == ref.term_list(scan.rest, scan.values, STOP_WORDS)


def test_features_agree_with_the_separate_extractors() -> None:
    text = "Apple's revenues rose 12% to $89.5B in 2019."
    f = features(text)
    assert f.terms.tolist() == extract_terms(text).tolist()
    assert f.numbers.tolist() == [[0.12, 2.0], [89.5e9, 1.0], [2019.0, 0.0]]


def test_lone_surrogates_do_not_crash() -> None:
    assert extract_terms("ab\ud800cd revenue").tolist()[-1] == ref.word_hash("revenu")


def test_long_text() -> None:
    text = "Revenue of Apple grew 12% in 2019. " * 1500  # ~52k characters
    t = extract_terms(text)
    assert t.shape == (1500 * 5,)  # revenue apple grew 0.12 2019
