"""PII NER on the encoder's token states: PERSON, LOCATION, DATE_TIME, ORGANIZATION, STREET_ADDRESS spans.

The sidecar already runs MiniLM over every response sentence (the claims of faithfulness) and keeps
each sentence's contextual token states (``models.encoder.TokenStates``). A small head on those
states tags each word, so named entities cost a matrix product instead of a spaCy pipeline
(about 5 ms of CPU per response, in a worker process of its own).

Each word (the tokenizer's pre-tokenized words: "O'Brien" is "O", "'", "Brien") is described by the
state of its first word piece, the mean of its pieces' states, its neighbours' first-piece states and
:data:`SHAPE_FEATURES` read off the original text (MiniLM is uncased: capitalisation is not in its
states). A two-layer perceptron gives BIO tags over
:data:`ENTITIES`. A span is a B tag followed by I tags of its type (an I after anything else starts
one); its score is the mean probability of its words' tags, and a span is reported when that mean
reaches the head's operating point (chosen on held-out teacher-labelled sentences, stored with the
weights). A span is widened to whole whitespace-delimited words (minus edge punctuation), and spans
of one type with no whitespace between them are joined: "Jean-Luc" and "2/8/1935" are several words
to the tokenizer.

The weights (``data/pii_ner_head.npz``, no pickle) are trained by
``python -m certus.sidecar.guardrails.train_pii_ner`` from ``../shared/data`` text labelled by spaCy's
``en_core_web_sm`` as the teacher, and from template sentences with Faker addresses for
STREET_ADDRESS, which spaCy does not label (:mod:`certus.sidecar.guardrails.synth_addresses`); never on
the presidio-research synth sentences the benchmark measures on.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import numpy.typing as npt

DATA_DIR = Path(__file__).with_name("data")
HEAD_FILE = DATA_DIR / "pii_ner_head.npz"

ENTITIES = ("PERSON", "LOCATION", "DATE_TIME", "ORGANIZATION", "STREET_ADDRESS")
LABELS = ("O",) + tuple(f"{p}-{e}" for e in ENTITIES for p in ("B", "I"))
SHAPE_FEATURES = (
    "title",
    "upper",
    "digit",
    "alpha",
    "sentence_initial",
    "prev_capitalised",
    "next_capitalised",
    "punct",
)
STATE_SCALE = 16.0  # unit-norm states have entries of about 1/sqrt(384): scaled to the shape bits' range
_SENTENCE_MARKS = frozenset(".!?:;\"'“”()[]-–—•*#>|")


def word_pieces(states: Any) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int32]]:
    """(index of each word's first piece, int32[n_words, 2] char spans of the words)."""
    spans = states.words
    if len(spans) == 0:
        return np.zeros(0, dtype=np.int64), np.zeros((0, 2), dtype=np.int32)
    new = np.ones(len(spans), dtype=bool)
    new[1:] = (spans[1:] != spans[:-1]).any(axis=1)
    first = np.flatnonzero(new)
    return first, spans[first]


def shape_features(text: str, spans: npt.NDArray[np.int32]) -> npt.NDArray[np.float32]:
    """float32[n, len(SHAPE_FEATURES)]: what the uncased states cannot see."""
    bounds = spans.tolist()
    words = [text[s:e] for s, e in bounds]
    caps = [w[:1].isupper() for w in words]
    n = len(words)
    rows = []
    for i, w in enumerate(words):
        if not w:
            rows.append((0, 0, 0, 0, 0, 0, 0, 0))
            continue
        upper = w.isupper() and len(w) > 1
        if i == 0:
            initial, prev_cap = True, False
        else:
            prev = words[i - 1]
            initial = "\n" in text[bounds[i - 1][1] : bounds[i][0]] or (prev in _SENTENCE_MARKS and prev not in "'-")
            prev_cap = caps[i - 1]
        # most words are letters only: no digit in them and some letter, without a loop over chars
        alpha = w.isalpha()
        rows.append((
            caps[i] and not upper,
            upper,
            not alpha and any(c.isdigit() for c in w),
            alpha,
            initial,
            prev_cap,
            i + 1 < n and caps[i + 1],
            not alpha and not any(c.isalnum() for c in w),
        ))
    return np.array(rows, dtype=np.float32).reshape(n, len(SHAPE_FEATURES))


def word_features(text: str, states: Any) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int32]]:
    """(float32[n_words, 4 * dim + len(SHAPE_FEATURES)] head input, int32[n_words, 2] word spans).

    Per word: the state of its first piece, the mean state of its pieces, the first-piece states of
    the previous and the next word (zeros at the ends), then its shape features."""
    first, spans = word_pieces(states)
    st = states.states
    n, dim = len(first), st.shape[1]
    x = np.zeros((n, 4 * dim + len(SHAPE_FEATURES)), dtype=np.float32)
    if n == 0:
        return x, spans
    heads = st[first] * STATE_SCALE
    x[:, :dim] = heads
    counts = np.diff(np.append(first, len(st)))
    x[:, dim : 2 * dim] = np.add.reduceat(st, first, axis=0) * (STATE_SCALE / counts[:, None])
    x[1:, 2 * dim : 3 * dim] = heads[:-1]
    x[:-1, 3 * dim : 4 * dim] = heads[1:]
    x[:, 4 * dim :] = shape_features(text, spans)
    return x, spans


@dataclass(frozen=True, slots=True)
class NerSpan:
    entity_type: str
    start: int
    end: int
    score: float


def decode(probs: npt.NDArray[np.float32], spans: npt.NDArray[np.int32], threshold: float) -> list[NerSpan]:
    """BIO tags (argmax per word) to entity spans whose mean tag probability reaches ``threshold``."""
    tags = probs.argmax(axis=1)
    out: list[NerSpan] = []
    i, n = 0, len(tags)
    while i < n:
        t = int(tags[i])
        if t == 0:
            i += 1
            continue
        kind = (t - 1) // 2
        j = i + 1
        while j < n and int(tags[j]) == 2 + 2 * kind:  # I- of the same type
            j += 1
        score = float(probs[np.arange(i, j), tags[i:j]].mean())
        if score >= threshold:
            out.append(NerSpan(ENTITIES[kind], int(spans[i][0]), int(spans[j - 1][1]), score))
        i = j
    return out


class NerHead:
    """The trained tagger: ``predict(text, states)`` -> entity spans (char offsets into ``text``)."""

    def __init__(self, w1: npt.NDArray[np.float32], b1: npt.NDArray[np.float32], w2: npt.NDArray[np.float32],
                 b2: npt.NDArray[np.float32], threshold: float, meta: dict[str, Any]) -> None:
        self.w1, self.b1, self.w2, self.b2 = w1, b1, w2, b2
        self.threshold = threshold
        self.meta = meta

    @classmethod
    def load(cls, path: Path | str = HEAD_FILE) -> "NerHead":
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            if tuple(meta["labels"]) != LABELS or tuple(meta["shape_features"]) != SHAPE_FEATURES:
                raise ValueError(f"{path}: trained for other labels or features; retrain the PII NER head")
            return cls(z["w1"], z["b1"], z["w2"], z["b2"], float(meta["threshold"]), meta)

    def probabilities(self, x: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        h = np.maximum(x @ self.w1 + self.b1, 0.0)
        z = h @ self.w2 + self.b2
        z -= z.max(axis=1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(axis=1, keepdims=True)

    def predict(self, text: str, states: Any) -> list[NerSpan]:
        return self.predict_many([text], [states])[0]

    def predict_many(self, texts: Sequence[str], states: Sequence[Any]) -> list[list[NerSpan]]:
        """:meth:`predict` for several texts (a response's sentences) with one pass of the
        perceptron over all their words."""
        feats = [word_features(t, st) for t, st in zip(texts, states)]
        if not feats:
            return []
        probs = self.probabilities(np.concatenate([x for x, _ in feats]))
        out = []
        at = 0
        for text, (x, spans) in zip(texts, feats):
            p = probs[at : at + len(x)]
            at += len(x)
            found = decode(p, spans, self.threshold) if len(x) else []
            out.append(join_within_words(text, [snap_to_words(text, s) for s in found]))
        return out


_EDGE_PUNCT = ".,;:!?\"'“”‘’()[]{}<>"


def snap_to_words(text: str, span: NerSpan) -> NerSpan:
    """The span widened to whole whitespace-delimited words, minus punctuation at its edges: the
    tokenizer splits "Jean-Luc" and "2/8/1935" into several words and the head may tag only some
    of them ("Luc", "8/1935"); an entity does not end inside a word."""
    start, end = span.start, span.end
    while start > 0 and not text[start - 1].isspace():
        start -= 1
    while end < len(text) and not text[end].isspace():
        end += 1
    while start < end and text[start] in _EDGE_PUNCT:
        start += 1
    while end > start and text[end - 1] in _EDGE_PUNCT:
        end -= 1
    if text[end - 2 : end].lower() in ("'s", "’s") and end - 2 > start:  # "Smith's": the name is "Smith"
        end -= 2
    if start >= end:  # nothing but punctuation
        return span
    return NerSpan(span.entity_type, start, end, span.score)


def join_within_words(text: str, spans: list[NerSpan]) -> list[NerSpan]:
    """Spans of one type that overlap or have no whitespace between them are one entity."""
    out: list[NerSpan] = []
    for s in spans:
        prev = out[-1] if out else None
        if prev is not None and prev.entity_type == s.entity_type and not any(c.isspace() for c in text[prev.end : s.start]):
            out[-1] = NerSpan(s.entity_type, prev.start, max(prev.end, s.end), min(prev.score, s.score))
        else:
            out.append(s)
    return out


@lru_cache(maxsize=1)
def default_head() -> NerHead | None:
    """The shipped head, or None when its weights file is missing."""
    return NerHead.load(HEAD_FILE) if HEAD_FILE.exists() else None
