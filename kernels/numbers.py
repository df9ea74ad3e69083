"""Numbers in text -> ``float64[n, 2]`` tables of (value, kind).

Runs C-level ``re`` over the lowercased text; the kernels only ever see the resulting arrays.

Value: the number with its scale applied, computed in decimal so that equal quantities give
bit-identical floats: ``$89.5B``, ``$89.5 billion`` and ``89,500,000,000 dollars`` are all
``89500000000.0``; ``12%``, ``12 percent`` and ``0.12`` are all ``0.12``.

- Scales: ``thousand``/``k``, ``million``/``m``/``mn``, ``billion``/``b``/``bn``,
  ``trillion``/``t``. Word scales may follow after one space; the one-letter ones must be
  attached (``5m``, not ``5 m``: a lone letter is too ambiguous).
- Percent: ``%``, ``percent``, ``per cent``, ``pct`` divide the value by 100.
- Currency: ``$``, ``US$``, ``€``, ``£``, ``¥`` (or ``usd``/``eur``/``gbp`` before the digits)
  in front, or ``dollar(s)``/``usd``/``euro(s)``/``eur``/``pound(s)``/``gbp`` after. The
  currency word is part of the number, not a separate term.
- Signs: ``-`` or ``−`` directly before the digits or the currency symbol, when not glued to
  a word or another number (``2019-2020`` is two positive years, ``-5`` is negative).
- Thousands separators: ``1,000,000`` is one number when every group after the first has
  three digits; otherwise the commas separate numbers (``1,2,3`` is three numbers).
- A number glued to letters is a word, not a number (``Q4``, ``5th``, ``10x``, ``1990s``).
  Years (``2019``) are plain numbers. Values that overflow float64 are dropped.

Kind (column 1): 0 plain, 1 currency, 2 percent. Matching (``numeric_consistency``) compares
values with a relative tolerance and treats kinds as compatible when they are equal or when
either side is plain; only currency vs percent never match. So ``12%`` matches ``0.12`` and
``$5`` matches ``5``, but ``$0.12`` does not match ``12%``. Number *terms* (for term grounding)
are keyed by value alone.
"""

from __future__ import annotations

import math
import re
from decimal import Context, Decimal

import numpy as np

from certus.kernels.validation import require_str

NUMBER_PLAIN = 0
NUMBER_CURRENCY = 1
NUMBER_PERCENT = 2

_NUMBER_RE = re.compile(
    r"""
    (?=[-\u2212$\u20ac\u00a3\u00a5ueg.\d])          # cheap first-character filter (speed only)
    (?<![\w.])                                   # not glued to a word or a decimal point
    (?P<neg>[-\u2212])?
    (?:(?P<cur>us\$|[$\u20ac\u00a3\u00a5]|(?:usd|eur|gbp)(?=\s?[-\u2212]?\d))\s?)?
    (?P<neg2>[-\u2212])?
    (?P<num>(?>\d+(?:,\d+)*(?:\.\d+)?|\.\d+))    # atomic: linear time on long digit runs
    (?:
        \s?(?P<pct>%|percent\b|per\s?cent\b|pct\b)
      | \s?(?P<scale>thousand|million|billion|trillion|mn|bn)\b
      | (?P<abbr>[kmbt])\b
    )?
    (?P<curword>\s(?:dollars?|usd|euros?|eur|pounds?|gbp)\b)?
    (?![^\W_])                                   # not followed by a letter or a digit
    """,
    re.VERBOSE,
)

_SCALE_EXP = {
    "thousand": 3,
    "k": 3,
    "million": 6,
    "mn": 6,
    "m": 6,
    "billion": 9,
    "bn": 9,
    "b": 9,
    "trillion": 12,
    "t": 12,
}

_DEC = Context(prec=50)
_HUNDRED = Decimal(100)


def _valid_grouping(num: str) -> bool:
    """``1,234,567.8``: first group 1-3 digits, every later group exactly 3."""
    int_part = num.split(".", 1)[0]
    groups = int_part.split(",")
    return 1 <= len(groups[0]) <= 3 and all(len(g) == 3 for g in groups[1:])


def _value(digits: str, exp: int, percent: bool, negative: bool) -> float | None:
    if exp == 0 and not percent:
        value = float(digits)
    else:
        dec = Decimal(digits)
        if exp:
            dec = _DEC.multiply(dec, Decimal(10) ** exp)
        if percent:
            dec = _DEC.divide(dec, _HUNDRED)
        value = float(dec)
    if not math.isfinite(value):
        return None
    if negative:
        value = -value
    return value + 0.0  # -0.0 -> 0.0: one canonical zero


class NumberScan:
    """The numbers found in one lowercased text, and that text with the numbers blanked out."""

    __slots__ = ("values", "kinds", "rest")

    def __init__(self, lowered: str) -> None:
        self.values: list[float] = []
        self.kinds: list[int] = []
        self.rest = _NUMBER_RE.sub(self._take, lowered)

    def _take(self, m: re.Match[str]) -> str:
        num = m.group("num")
        negative = m.group("neg") is not None or m.group("neg2") is not None
        percent = m.group("pct") is not None
        scale = m.group("scale") or m.group("abbr")
        exp = _SCALE_EXP[scale] if scale else 0
        kind = NUMBER_PLAIN
        if percent:
            kind = NUMBER_PERCENT
        elif m.group("cur") is not None or m.group("curword") is not None:
            kind = NUMBER_CURRENCY
        if "," in num and not _valid_grouping(num):
            # Commas separate numbers here; sign, scale and kind belong to the last one.
            pieces = num.split(",")
            for piece in pieces[:-1]:
                v = _value(piece, 0, False, False)
                if v is not None:
                    self.values.append(v)
                    self.kinds.append(NUMBER_PLAIN)
            num = pieces[-1]
            negative = False
        v = _value(num.replace(",", ""), exp, percent, negative)
        if v is not None:
            self.values.append(v)
            self.kinds.append(kind)
        return " "

    def table(self) -> np.ndarray:
        out = np.empty((len(self.values), 2), dtype=np.float64)
        if self.values:
            out[:, 0] = self.values
            out[:, 1] = self.kinds
        return out


def extract_numbers(text: str) -> np.ndarray:
    """``float64[n, 2]``: (value, kind) of each number in ``text``, in order of appearance."""
    require_str(text, "text")
    return NumberScan(text.lower()).table()
