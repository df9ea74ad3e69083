"""Synthetic address sentences for the PII NER head's training (training only, never served).

spaCy's English NER, the head's teacher, has no street-address label, and the shared data holds
almost no addresses, so the head learns STREET_ADDRESS from sentences written here: postal
addresses drawn from Faker's locale providers (pinned in the dev lock; the same seed gives the same
sentences), rendered from each locale's own address formats, and put into sentence templates of
this module. The street line (house number, street, unit), a postcode and military postal lines
are STREET_ADDRESS, and text between two street parts belongs to the address. A state or country,
and a city where the locale draws cities from a list of real ones, is LOCATION; a person's name is
PERSON. A city the locale makes up from surnames ("Johnsonfurt", "Olsen") is ``MASK``: the trainer
leaves those words out, so made-up cities do not teach the head that surnames are places. (Masking
the names too made the head call "Name: Åsa Laine" an address.) Every other word is a negative
example: template words, and the phone numbers, e-mail addresses, SSNs, IBANs, card and order
numbers of the templates without an address (the pattern recognizers report those; the head must
not call a number an address because it is a number).

Faker is also what presidio-research used for the values of its synthetic benchmark sentences; the
templates here are this module's own, and the benchmark's sentences are never read. (They were
written by someone who had read a few dozen of the benchmark's rows and the head's errors on them;
templates that echoed its phrasing were rewritten before the shipped weights were trained.)
"""

from __future__ import annotations

import random
import re
from typing import Any, Callable

# locales whose address providers have their own formats (street before or after the number,
# postcode before or after the city, Latin and Greek scripts)
LOCALES = (
    "en_US", "en_GB", "en_CA", "en_AU", "en_IE", "en_NZ", "de_DE", "de_AT", "de_CH", "fr_FR", "fr_CH",
    "it_IT", "es_ES", "es_MX", "pt_PT", "pt_BR", "nl_NL", "nl_BE", "da_DK", "sv_SE", "no_NO", "fi_FI",
    "et_EE", "pl_PL", "cs_CZ", "sk_SK", "hu_HU", "sl_SI", "hr_HR", "ro_RO", "el_GR", "tr_TR", "id_ID",
)
STREET_PARTS = frozenset({
    "street_address", "building_number", "street_name", "street_suffix", "secondary_address", "postcode",
    "zipcode", "postalcode", "military_apo", "military_dpo", "military_ship", "military_state",
    "postcode_city_province", "street_prefix", "street_title",
})
MASK = "MASK"
CITY_PARTS = frozenset({"city", "city_name", "city_suffix"})
PLACE_PARTS = frozenset({"city", "state", "state_abbr", "country", "city_name", "region", "province",
                         "administrative_unit", "city_suffix", "county", "department", "prefecture"})

# No template holds a date or time: the teacher labels those DATE_TIME, and a template's words are
# "O" (a template with "before the end of the month" taught the head that "before Friday" is not a date).
# {A}: an address, {B}: a second address, {N}: a person's name; without an address: {P} a phone
# number, {E} an e-mail address, {S} an SSN, {I} an IBAN, {C} a card number, {X} an order or
# reference number, {M} an amount, {Q} a count
TEMPLATES = (
    "Please send the package to {A}.",
    "My address is {A}.",
    "{N}\n{A}",
    "Ship to: {N}, {A}",
    "I live at {A}.",
    "{N} lives at {A}.",
    "Our office is at {A}, on the second floor.",
    "The invoice goes to {A}",
    "Invoice address:\n{A}",
    "Can you deliver it to {A}?",
    "We moved to {A} recently.",
    "Return address: {A}",
    "Let's meet at {A} after work.",
    "{N} wrote down the address for me: {A}",
    "The apartment at {A} is for rent.",
    "Mail the signed form to {N}, {A}.",
    "Hi {N}, is your address still {A}?",
    "The shop moved from {A} to {B}.",
    "Registered office: {A}",
    "Dear {N}, your order will be shipped to {A}.",
    "Contact {N} at {A} for the keys.",
    "{A}",
    "Update my shipping address to {A}, please.",
    "The accident happened outside {A}.",
    "She grew up at {A}.",
    "Pick-up point: {A}",
    "Name: {N}\nAddress: {A}",
    "I'm staying at {A} for now.",
    "The parcel was left at {A} by mistake.",
    "{N}'s new place is {A}, near the station.",
    "Send the refund cheque to {A} and not to {B}.",
    "The customer, {N}, listed {A} as her home address.",
    "Where do you live? At {A}.",
    "{N}\n{A}\nPhone: {P}",
    "Call {N} on {P} about the delivery to {A}.",
    "Ship it to {N} at {A}.",
)
NEGATIVE_TEMPLATES = (
    "The applicant's social security number, {S}, is on file.",
    "My phone number is {P}.",
    "Phone: {P}\nEmail: {E}",
    "Transfer it to the IBAN {I}.",
    "Card: {C}",
    "Please charge card {C} for order {X}.",
    "Order number: {X}",
    "Total: {M}",
    "Our new colleague is {N}.",
    "Name: {N}\nPhone: {P}",
    "The reference code is {X}, and the amount is {M}.",
    "Send {M} to account {I}.",
    "Hi {N}, your ticket {X} is confirmed.",
    "Write to {E} for a refund of {M}.",
    "{N} paid {M} with the card ending in {X}.",
    "Room {X} is on the third floor.",
    "The SSN on file is {S} and the phone is {P}.",
    "{Q}",
    "{Q} people",
    "About {Q}.",
    "The town has {Q} inhabitants and {Q} houses.",
    "It covers {Q} square kilometres.",
    "Route {Q} runs past the lake.",
    "Her score was {Q} points.",
    "Please send the invoice to {N}.",
    "Give the keys to {N}.",
    "Forward this e-mail to {N}, thanks.",
    "Deliver the report to {N} and {N}.",
)
NEGATIVE_SHARE = 0.25
_FIELD = re.compile(r"\{\{(\w+)\}\}")
_SLOT = re.compile(r"\{([ABNPESICXMQ])\}")
_VALUES = {
    "P": lambda fake, rng: fake.phone_number(),
    "E": lambda fake, rng: fake.email(),
    "S": lambda fake, rng: fake.numerify("###-##-####"),
    "I": lambda fake, rng: fake.iban(),
    "C": lambda fake, rng: fake.numerify("#" * rng.choice((12, 13, 15, 16, 19))),
    "X": lambda fake, rng: fake.bothify(rng.choice(("#####", "##-####", "??-#####", "#########", "###"))),
    "M": lambda fake, rng: fake.numerify(rng.choice(("$#,###.##", "€###", "£##.##", "### EUR"))),
    "Q": lambda fake, rng: rng.choice(("{:,}", "{}")).format(_count(rng)),
}


def _count(rng: random.Random) -> int:
    """A count that does not look like a year (the teacher labels years DATE_TIME)."""
    while True:
        n = rng.randint(2, 10 ** rng.randint(2, 7))
        if not 1000 <= n <= 2100:
            return n


def _real_cities(fake: Any) -> bool:
    """The locale's cities come from a list of real places (not made up from names)."""
    provider = fake.provider("faker.providers.address")
    return any(hasattr(provider, a) for a in ("cities", "city_names"))


Spans = list[tuple[str, int, int]]


def _fill(template: str, slot: re.Pattern[str], value_of: Callable[[str], tuple[str, Spans]]) -> tuple[str, Spans]:
    """``template`` with each ``slot`` match replaced by ``value_of(its name)`` = (value, spans within
    the value), in order: (text, the spans moved to their place in the text)."""
    text, spans, pos = "", [], 0
    for m in slot.finditer(template):
        text += template[pos : m.start()]
        value, parts = value_of(m[1])
        spans += [(k, len(text) + s, len(text) + e) for k, s, e in parts]
        text += value
        pos = m.end()
    return text + template[pos:], spans


def _render(fake: Any, fmt: str) -> tuple[str, Spans]:
    """A Faker format rendered part by part: (text, [(entity, start, end)]) with adjacent street parts
    (and the text between them) joined into one STREET_ADDRESS span."""

    def part(name: str) -> tuple[str, Spans]:
        value = str(getattr(fake, name)())
        if name in STREET_PARTS:
            kind = "STREET_ADDRESS"
        elif name in PLACE_PARTS:
            kind = "LOCATION" if name not in CITY_PARTS or _real_cities(fake) else MASK
        else:
            return value, []
        return value, [(kind, 0, len(value))]

    text, parts = _fill(fmt, _FIELD, part)
    joined: Spans = []
    for kind, s, e in parts:
        if joined and joined[-1][0] == kind == "STREET_ADDRESS":
            joined[-1] = (kind, joined[-1][1], e)
        else:
            joined.append((kind, s, e))
    return text, joined


def address(fake: Any, rng: random.Random) -> tuple[str, list[tuple[str, int, int]]]:
    """One address of ``fake``'s locale, as a full multi-line address, on one line, the street line
    alone, or the street line and the city."""
    provider = fake.provider("faker.providers.address")
    formats = list(getattr(provider, "address_formats", ()) or ("{{street_address}}\n{{postcode}} {{city}}",))
    street_formats = list(getattr(provider, "street_address_formats", ()) or ("{{street_address}}",))
    form = rng.random()
    if form < 0.45:
        fmt = rng.choice(formats)
    elif form < 0.70:
        fmt = rng.choice(formats).replace("\n", ", ")
    elif form < 0.85:
        fmt = rng.choice(street_formats)
    else:
        fmt = rng.choice(street_formats) + ", {{city}}"
    text, spans = _render(fake, fmt)
    if rng.random() < 0.05:
        text = text.lower()
    # Faker's formats may leave a leading/trailing separator when a part is empty
    lead = len(text) - len(text.lstrip(" ,\n"))
    text = text.strip(" ,\n")
    spans = [(k, max(0, s - lead), min(len(text), e - lead)) for k, s, e in spans]
    # a part's edge may be white space of its format ("Apt. 54 \n"): spans hold words only
    spans = [(k, s + len(text[s:e]) - len(text[s:e].lstrip()), e - len(text[s:e]) + len(text[s:e].rstrip())) for k, s, e in spans]
    return text, [(k, s, e) for k, s, e in spans if e > s]


def sentences(count: int, seed: int) -> list[tuple[str, list[tuple[str, int, int]]]]:
    """``count`` template sentences, each with its labelled spans, fixed by ``seed``."""
    from faker import Faker

    rng = random.Random(seed)
    fakes = {}
    for i, loc in enumerate(LOCALES):
        fake = Faker(loc)
        fake.seed_instance(seed + i)
        fakes[loc] = fake[loc]
        # it_IT builds its city list from a set: its order (and so the seeded draws) would change
        # with each process's string hashing; sorted, the same seed gives the same sentences anywhere
        provider = fakes[loc].provider("faker.providers.address")
        if isinstance(getattr(provider, "cities", None), list):
            provider.cities = sorted(provider.cities)
    out = []
    for _ in range(count):
        fake = fakes[rng.choice(LOCALES)]
        template = rng.choice(NEGATIVE_TEMPLATES if rng.random() < NEGATIVE_SHARE else TEMPLATES)

        def slot(name: str) -> tuple[str, Spans]:
            if name == "N":
                value = fake.name() if rng.random() < 0.7 else f"{fake.first_name()} {fake.last_name()}"
                return value, [("PERSON", 0, len(value))]
            if name in "AB":
                return address(fake, rng)
            return _VALUES[name](fake, rng), []

        out.append(_fill(template, _SLOT, slot))
    return out
