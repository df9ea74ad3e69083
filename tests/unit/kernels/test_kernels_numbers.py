from __future__ import annotations

import random
from decimal import Decimal

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from certus.kernels import NUMBER_CURRENCY, NUMBER_PERCENT, NUMBER_PLAIN, KernelInputError, extract_numbers

P, C, PCT = NUMBER_PLAIN, NUMBER_CURRENCY, NUMBER_PERCENT


def rows(text: str) -> list[tuple[float, int]]:
    table = extract_numbers(text)
    return [(float(v), int(k)) for v, k in table]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("$89.5B", [(89.5e9, C)]),
        ("$89.5 billion", [(89.5e9, C)]),
        ("89,500,000,000 dollars", [(89.5e9, C)]),
        ("Apple reported Q4 revenue of $89.5B", [(89.5e9, C)]),
        ("Apple's Q4 revenue was $450 billion", [(450e9, C)]),
        ("12%", [(0.12, PCT)]),
        ("12 percent", [(0.12, PCT)]),
        ("12 per cent", [(0.12, PCT)]),
        ("0.12", [(0.12, P)]),
        ("In 2019 it grew.", [(2019.0, P)]),
        ("2019-2020", [(2019.0, P), (2020.0, P)]),
        ("-5 and \u22125", [(-5.0, P), (-5.0, P)]),
        ("-$5 or $-5", [(-5.0, C), (-5.0, C)]),
        ("\u20ac3bn, \u00a32.5k, \u00a51,000", [(3e9, C), (2500.0, C), (1000.0, C)]),
        ("US$7 and 8 USD and 9 euros and 10 pounds", [(7.0, C), (8.0, C), (9.0, C), (10.0, C)]),
        ("5k 5K 5m 5M 5mn 5bn 5t 5 thousand 5 trillion", [
            (5e3, P), (5e3, P), (5e6, P), (5e6, P), (5e6, P), (5e9, P), (5e12, P), (5e3, P), (5e12, P),
        ]),
        ("1,000 and 1,000.25 and 1,234,567", [(1000.0, P), (1000.25, P), (1234567.0, P)]),
        ("1,2,3", [(1.0, P), (2.0, P), (3.0, P)]),
        (".5 and 3.5.", [(0.5, P), (3.5, P)]),
        ("Q4 5th 10x 1990s 5km", []),
        ("5 m", [(5.0, P)]),  # a detached single letter is not a scale
        ("costs 12.5%.", [(0.125, PCT)]),
        ("1.1 billion", [(1.1e9, P)]),
        ("0 and -0", [(0.0, P), (0.0, P)]),
        ("", []),
        ("no digits at all", []),
        ("9" * 400, []),  # overflows float64: dropped, not inf
    ],
)
def test_exact_values(text: str, expected: list[tuple[float, int]]) -> None:
    assert rows(text) == expected


def test_equal_quantities_are_bit_identical() -> None:
    a = extract_numbers("$89.5B")[0, 0]
    b = extract_numbers("89,500,000,000 dollars")[0, 0]
    c = extract_numbers("$89.5 billion")[0, 0]
    assert a == b == c == 89_500_000_000.0
    assert extract_numbers("12%")[0, 0] == extract_numbers("0.12")[0, 0]
    assert extract_numbers("1.1 billion")[0, 0] == extract_numbers("1,100,000,000")[0, 0]
    assert str(extract_numbers("-0")[0, 0]) == "0.0"  # one canonical zero


def test_table_dtype_and_shape() -> None:
    t = extract_numbers("a 1 b 2")
    assert t.dtype == np.float64 and t.shape == (2, 2) and t.flags.c_contiguous
    empty = extract_numbers("nothing")
    assert empty.dtype == np.float64 and empty.shape == (0, 2)


def test_rejects_non_str() -> None:
    with pytest.raises(KernelInputError) as info:
        extract_numbers(b"12")  # type: ignore[arg-type]
    assert info.value.field == "text"


_SCALES = [("", 0), (" thousand", 3), ("k", 3), (" million", 6), ("m", 6), (" billion", 9), ("B", 9), ("bn", 9)]


def _grouped(int_part: int) -> str:
    return f"{int_part:,}"


@pytest.mark.parametrize("seed", range(200))
def test_random_formatted_numbers_recover_their_value(seed: int) -> None:
    """Numbers written in random formats, inside random words, come back with the value and
    kind they were written with (expected values computed from the generator, not the parser)."""
    rng = random.Random(seed)
    parts: list[str] = []
    expected: list[tuple[float, int]] = []
    for _ in range(rng.randint(0, 8)):
        parts.append(rng.choice(["revenue", "grew", "the", "Q4", "in", "FY", "to", "(", ")", ",", ";"]))
        int_part = rng.choice([0, 1, 7, 12, 450, 1999, 2019, 89_500, 1_234_567, rng.randint(0, 10**9)])
        decimals = rng.choice(["", "", "5", "25", "125"])
        digits = (_grouped(int_part) if rng.random() < 0.5 else str(int_part)) + (f".{decimals}" if decimals else "")
        plain_digits = str(int_part) + (f".{decimals}" if decimals else "")
        style = rng.choice(["plain", "currency", "currency_word", "percent", "scaled"])
        negative = rng.random() < 0.2
        sign = "-" if negative else ""
        dec = Decimal(plain_digits)
        if style == "plain":
            text, kind = sign + digits, P
        elif style == "currency":
            text, kind = sign + rng.choice(["$", "\u20ac", "\u00a3"]) + digits, C
        elif style == "currency_word":
            text, kind = sign + digits + rng.choice([" dollars", " USD", " euros"]), C
        elif style == "percent":
            text, kind = sign + digits + rng.choice(["%", " percent"]), PCT
            dec = dec / 100
        else:
            suffix, exp = rng.choice(_SCALES)
            text, kind = sign + "$" + digits + suffix, C
            dec = dec * (Decimal(10) ** exp)
        value = float(dec)
        expected.append((-value if negative and value else value, kind))
        parts.append(text)
    text = " ".join(parts)
    assert rows(text) == expected, text


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("0123456789,.-$%\u20ackmbt \u2212abc'")), max_size=80))
def test_any_text_gives_a_finite_table(text: str) -> None:
    t = extract_numbers(text)
    assert t.dtype == np.float64 and t.ndim == 2 and t.shape[1] == 2
    assert np.isfinite(t).all()
    assert set(t[:, 1].tolist()) <= {0.0, 1.0, 2.0}


def test_long_adversarial_inputs_finish() -> None:
    # Linear-time scanning: these would backtrack badly with a naive pattern.
    assert extract_numbers("1," * 25_000).shape == (25_000, 2)
    assert extract_numbers("1,000" * 10_000 + "x").shape[1] == 2
    assert extract_numbers("-$" * 25_000).shape == (0, 2)
    long_number = extract_numbers("1" * 300)
    assert long_number.shape == (1, 2) and long_number[0, 0] == float("1" * 300)
