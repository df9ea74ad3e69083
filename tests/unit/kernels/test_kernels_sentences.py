from __future__ import annotations

import random

import kernels_reference as ref
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from certus.kernels import ABBREVIATIONS, KernelInputError, split_sentences


def sentences(text: str) -> list[str]:
    return [text[s:e] for s, e in split_sentences(text).tolist()]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", []),
        ("   \n\t ", []),
        ("No terminal punctuation", ["No terminal punctuation"]),
        ("  Padded sentence.   ", ["Padded sentence."]),
        ("One. Two! Three? Four", ["One.", "Two!", "Three?", "Four"]),
        ("Pi is 3.14 today. Next.", ["Pi is 3.14 today.", "Next."]),
        ("Revenue was $89.5B. It grew.", ["Revenue was $89.5B.", "It grew."]),
        ("Dr. Smith arrived. Mr. Jones left.", ["Dr. Smith arrived.", "Mr. Jones left."]),
        ("Use tools, e.g. hammers. Also i.e. nails.", ["Use tools, e.g. hammers.", "Also i.e. nails."]),
        ("Fruit e.g. Apples are here. Yes.", ["Fruit e.g. Apples are here.", "Yes."]),
        ("J. R. Smith wrote it. Done.", ["J. R. Smith wrote it.", "Done."]),
        ("See No. 5 and Fig. 2 now. Ok.", ["See No. 5 and Fig. 2 now.", "Ok."]),
        ("Visit example.com today. Bye.", ["Visit example.com today.", "Bye."]),
        ("Wait... what? Really?! Yes.", ["Wait... what?", "Really?!", "Yes."]),
        ('He said "Stop." Then he left.', ['He said "Stop."', "Then he left."]),
        ("It ended (finally.) Then more.", ["It ended (finally.)", "Then more."]),
        ("approx. ten people came. They sat.", ["approx. ten people came.", "They sat."]),
        ("1. First item\n2. Second item", ["1. First item", "2. Second item"]),
        ("Title\n\nBody text here. More.", ["Title", "Body text here.", "More."]),
        ("Line one\r\nLine two", ["Line one", "Line two"]),
        ("\u4e2d\u6587\u3002\u53e5\u5b50\uff01\u597d", ["\u4e2d\u6587\u3002", "\u53e5\u5b50\uff01", "\u597d"]),
        ("Ends with abbreviation Dr.", ["Ends with abbreviation Dr."]),
        ("Caf\u00e9 \U0001f600 ok. Next \U0001f600.", ["Caf\u00e9 \U0001f600 ok.", "Next \U0001f600."]),
        (".", ["."]),
        ("?!", ["?!"]),
    ],
)
def test_exact_spans(text: str, expected: list[str]) -> None:
    assert sentences(text) == expected


def test_offsets_are_python_str_offsets() -> None:
    text = "\U0001f600\U0001f600 Emoji first. Caf\u00e9 second."
    spans = split_sentences(text)
    assert spans.dtype == np.int64 and spans.shape == (2, 2) and spans.flags.c_contiguous
    assert spans.tolist() == [[0, 15], [16, 28]]
    assert text[16:28] == "Caf\u00e9 second."


def test_lone_surrogate() -> None:
    assert sentences("a\ud800b. Next") == ["a\ud800b.", "Next"]


def test_rejects_non_str() -> None:
    with pytest.raises(KernelInputError) as info:
        split_sentences(b"x.")  # type: ignore[arg-type]
    assert info.value.field == "text"


_PIECES = [
    "Apple", "revenue", "Dr.", "dr.", "e.g.", "U.S.", "3.14", "$89.5B", "J.", "1.", "No.", "ok", "the",
    ".", "!", "?", "...", "?!", "\u2026", '"', "'", ")", "(", "\u201d", "\u3002", "\u4e2d", "\U0001f600",
    "\n", "\n\n", "\r\n", " ", "  ", "\t", "\u00a0", "x.y", "Etc.", "a",
]  # fmt: skip


def _random_text(rng: random.Random) -> str:
    return "".join(rng.choice(_PIECES) + rng.choice(["", " ", " "]) for _ in range(rng.randint(0, 40)))


def _check_invariants(text: str, spans: list[list[int]]) -> None:
    prev_end = 0
    covered = [False] * len(text)
    for s, e in spans:
        assert prev_end <= s < e <= len(text)
        assert not text[s].isspace() and not text[e - 1].isspace()
        for i in range(s, e):
            covered[i] = True
        prev_end = e
    # No text is lost: every non-whitespace character lies in some sentence.
    for i, ch in enumerate(text):
        if not covered[i]:
            assert ch in ref._SPACES, (i, ch)


@pytest.mark.parametrize("seed", range(200))
def test_matches_reference(seed: int) -> None:
    text = _random_text(random.Random(seed))
    got = split_sentences(text).tolist()
    assert [tuple(x) for x in got] == ref.split_sentences(text, ABBREVIATIONS), repr(text)
    _check_invariants(text, got)


@settings(max_examples=400, deadline=None)
@given(st.text(max_size=120))
def test_any_text(text: str) -> None:
    got = split_sentences(text).tolist()
    _check_invariants(text, got)
    assert [tuple(x) for x in got] == ref.split_sentences(text, ABBREVIATIONS)


def test_long_text() -> None:
    text = "Revenue grew 12% in 2019, e.g. in the U.S. market. " * 1000
    spans = split_sentences(text)
    assert spans.shape == (1000, 2)
    one = " ".join(["word"] * 12_000)  # no punctuation at all
    assert split_sentences(one).tolist() == [[0, len(one)]]
    dots = ". " * 25_000  # every "." ends a (one-character) sentence
    assert split_sentences(dots).shape == (25_000, 2)


@pytest.mark.parametrize("ch", sorted(ref._SPACES))
def test_every_python_whitespace_separates(ch: str) -> None:
    text = f"One.{ch}Two."
    if ch in ref._BREAKS:
        assert sentences(text) == ["One.", "Two."]
        assert sentences(f"One{ch}Two") == ["One", "Two"]
    else:
        assert sentences(text) == ["One.", "Two."]
        assert sentences(f"One{ch}Two") == [f"One{ch}Two"]
