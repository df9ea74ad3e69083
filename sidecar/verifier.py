"""Verification stage: the learned claim verifier (``faithfulness``) and ``question_fit``.

Both are small models over features the scoring stage already has (term hashes, number tables,
the MiniLM sentence vectors of the claims and chunks and the token states of the same encoder
run), so they add no encoder work. The
weights are trained by ``certus.models.train_verifier`` from ``../shared/data`` (fixed seed, data
hashes recorded in the weights file) and ship in ``certus/models/verifier.json``.

Claim features (one row per response sentence, :data:`CLAIM_FEATURES`), over the whole context:

- term support: share of the claim's content terms found in the context, in its best chunk, and
  the same share over its *novel* terms (those not already in the query), counts of unsupported
  novel terms;
- entities: capitalised words of the claim (not sentence-initial) missing from both context and
  query;
- numbers: CERT's numeric consistency of the claim's figures against the context;
- vectors: best claim-chunk cosine;
- token alignment (``certus.kernels.alignment``): each content token of the claim matched to its
  most similar contextual token of the chunks (and, second block, of the chunks and the query):
  mean, worst, share and log count below 0.5, mean of the three worst.

A two-layer perceptron maps a row to P(supported). The response's ``faithfulness`` is the least
supported claim's probability (the model was trained so: a response is faithful only when every
claim is), so one invented sentence fails a long answer.

A claim the context states word for word (:func:`quoted`) gets the alignment of an exact match
(the scoring stage applies it; the model is fit without it).

``question_fit`` (logistic regression) asks whether the answer sits where the context answers *this*
question: it locates the answer in the context, reads from the token states how much of the question
the context says around it against the most it says anywhere in the chunk (``kernels.focus``), and
reads the answer head (:class:`AnswerHead`, a small reader over the same token states trained on
HotpotQA questions) on the answer's pieces against the chunk's best, compares how much of the
question the answer's sentence (and the words around the answer) shares with the best
question-matching sentence, plus whether the question's expected answer type (a number, a date, a
name) fits.
"""

from __future__ import annotations

import bisect
import json
import math
import re
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from typing import Any, Sequence

import numpy as np

from certus import kernels
from certus.sidecar.cache import LruCache

TERM_FEATURES = (
    "term_support",
    "term_support_best_chunk",
    "novel_support",
    "log_unsupported_novel",
    "log_novel",
    "novel_share",
    "log_missing_entities",
    "entity_support",
    "numeric_all",
    "numeric_best_chunk",
    "cos_best_chunk",
)
_ALIGNMENT = ("mean", "min", "unsupported_share", "log_unsupported", "worst3")
ALIGNMENT_FEATURES = tuple(f"align_{a}" for a in _ALIGNMENT) + tuple(f"align_q_{a}" for a in _ALIGNMENT)
CLAIM_FEATURES = TERM_FEATURES + ALIGNMENT_FEATURES
# The trained model is monotone in these (1: more means more support; -1: less), see train_verifier.
# Every feature is constrained. Left free, the query features and novel_share learned HaluEval's
# artefacts (right answers are short and far from the question) and called an off-topic "The
# weather was nice." supported; that bought 2-3 AUC points on HaluEval and is not what the metric
# means (docs/cert-toolkit.md, "Why every feature is monotone").
MONOTONE = {
    "term_support": 1,
    "term_support_best_chunk": 1,
    "novel_support": 1,
    "log_unsupported_novel": -1,
    "log_missing_entities": -1,
    "entity_support": 1,
    "numeric_all": 1,
    "numeric_best_chunk": 1,
    "cos_best_chunk": 1,
    "log_novel": -1,  # each new term is one more chance to be wrong: new content never raises support
    "novel_share": -1,  # restating the question is not a hallucination
    **{f"{p}{a}": sign for p in ("align_", "align_q_") for a, sign in zip(_ALIGNMENT, (1, 1, -1, -1, 1))},
}
# answer_head_gap of an answer found nowhere in the context (none of its content words): about the
# lowest the head gives a located answer (the 1st percentile on SQuAD's training article is -9.5)
NOWHERE_ANSWER_GAP = -9.5
QUESTION_FEATURES = (
    "question_focus_gap",
    "answer_head_gap",
    "answer_located",
    "question_overlap_answer_sentence",
    "question_overlap_gap",
    "question_near_answer",
    "log_distance_to_question",
    "answer_repeats_question",
    "type_match",
    "type_mismatch",
)

REASON_NONE = ""
REASON_NUMBER = "number_contradicted"
REASON_ENTITY = "missing_entity"
REASON_NO_SUPPORT = "no_support"

_CAPITALISED = re.compile(r"(?<!^)(?<![.!?]\s)\b([A-Z][\w'\-]*)")
_WORD = re.compile(r"[^\W_]+")
# Knowledge glued from records ("Downey Jr.Robert Downey", "A Walk to RememberA Walk"): a capital
# right after a lower-case letter, digit, "." or ")" also starts a word.
_JOINED = re.compile(r"(?<=[a-z0-9.)])(?=[A-Z])")


def unglued(text: str) -> str | None:
    """``text`` with glued words separated, or None when there are none."""
    return _JOINED.sub(" ", text) if _JOINED.search(text) else None
_NUMBER_WORDS = re.compile(r"\b(one|two|three|four|five|six|seven|eight|nine|ten|hundred|thousand|million|billion)\b")
_DATE = re.compile(
    r"\b1\d{3}\b|\b20\d{2}\b|centur|\b(january|february|march|april|may|june|july|august|september|october|"
    r"november|december)\b"
)
_YEAR = re.compile(r"\d{3,4}")
_DIGIT = re.compile(r"[0-9]")
_Q_NUM = re.compile(r"how (many|much|long|old|large|big|far|often)|what (percentage|number|amount)")
_Q_DATE = re.compile(r"\bwhen\b|(what|which) (year|century|date|decade)")
_Q_WHO = re.compile(r"\b(who|whom|whose)\b")
_Q_WHERE = re.compile(r"\bwhere\b")


@lru_cache(maxsize=1 << 16)  # words repeat; the suffix loop in Python was the stage's hottest line
def _stem(w: str) -> str:
    for suf in ("'s", "es", "s", "ed", "ing"):
        if len(w) > 4 and w.endswith(suf):
            return w[: -len(suf)]
    return w


def content_words(text: str) -> list[str]:
    """Lower-cased, lightly stemmed words of ``text`` without stop words, in order."""
    stop = kernels.STOP_WORDS
    return [_stem(w) for w in _WORD.findall(text.lower()) if w not in stop and len(w) > 1]


_QUOTE_EDGES = " \t\r\n.!?;:,\"'\u201c\u201d\u2018\u2019()[]"
_SPACES = re.compile(r"\s+")


def _plain(text: str) -> str:
    return _SPACES.sub(" ", text.lower())


# A chunk as the verifier reads it, whatever the request: (its text with glued words separated or
# None (:func:`unglued`), its plain text, the plain separated text or None). A plain tuple of
# strings: the scorer caches one per chunk, and the garbage collector stops tracking such tuples.
ChunkReading = tuple[str | None, str, str | None]


def chunk_reading(chunk: str) -> ChunkReading:
    u = unglued(chunk)
    return u, _plain(chunk), (_plain(u) if u is not None else None)


def quote_texts(chunks: Sequence[str], readings: Sequence[ChunkReading] | None = None) -> list[str]:
    """What :func:`quoted` searches: each chunk and, where its glued words can be separated
    (:func:`unglued`), that text too; lower-cased, runs of white space as one (``readings``: the
    chunks' :func:`chunk_reading` when the caller has them already)."""
    if readings is None:
        readings = [chunk_reading(c) for c in chunks]
    return [r[1] for r in readings] + [r[2] for r in readings if r[2] is not None]


def quoted(claims: Sequence[str], texts: Sequence[str]) -> np.ndarray:
    """bool[k]: claim i is a verbatim quote of the context: it has a content word, and its text
    (case, the punctuation and quotes around it, and runs of white space aside) occurs in one of
    ``texts`` (:func:`quote_texts` of the chunks) between word boundaries."""
    out = np.zeros(len(claims), dtype=bool)
    for i, claim in enumerate(claims):
        needle = _plain(claim).strip(_QUOTE_EDGES)
        if not needle or not content_words(needle):
            continue
        out[i] = any(_whole_words_at(t, needle) for t in texts)
    return out


def _whole_words_at(text: str, needle: str) -> bool:
    """Whether ``needle`` occurs in ``text`` with no letter or digit right before or after it."""
    n = len(needle)
    return any(
        (at == 0 or not text[at - 1].isalnum()) and (at + n == len(text) or not text[at + n].isalnum())
        for at in occurrences(text, needle).tolist()
    )


def entity_terms(text: str) -> set[int]:
    """Term hashes of the capitalised words of ``text`` that do not start a sentence."""
    words = _CAPITALISED.findall(text)
    if not words:
        return set()
    return set(kernels.extract_terms(" ".join(words)).tolist())


@dataclass(frozen=True, slots=True)
class _Mlp:
    mean: np.ndarray
    scale: np.ndarray
    w1: np.ndarray
    b1: np.ndarray
    w2: np.ndarray
    b2: float

    def logits(self, x: np.ndarray) -> np.ndarray:
        h = np.tanh(((x - self.mean) / self.scale) @ self.w1 + self.b1)
        return h @ self.w2 + self.b2


@dataclass(frozen=True, slots=True)
class _Linear:
    mean: np.ndarray
    scale: np.ndarray
    w: np.ndarray
    b: float

    def logits(self, x: np.ndarray) -> np.ndarray:
        return ((x - self.mean) / self.scale) @ self.w + self.b


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(z, -40.0, 40.0)))


class AnswerHead:
    """The answer locator ``question_fit`` reads: a logit per chunk piece, "the answer to this
    question is here", from the encoder's token states of the question and of the chunk, encoded
    apart (no extra encoder pass). Trained by ``certus.models.train_answer_head`` (its docstring has
    the architecture and the data); ``forward`` is shared by training and serving.

    Parameters (float, K channels, rank R, window W): ``A``, ``B`` [K, 384, R] (bilinear maps between
    chunk and question pieces), ``conv`` [K+1, 2W+1] and ``conv_bias`` [1] (a convolution over the
    pieces of each piece's best question match per map, plus its best raw cosine), ``u`` [384] and
    ``u_bias`` [1] (the piece alone), ``D``, ``E`` [384, R] (the piece against the mean question
    state)."""

    DIM = 384
    NAMES = ("A", "B", "conv", "conv_bias", "u", "u_bias", "D", "E")

    def __init__(self, params: dict[str, np.ndarray], meta: str = "") -> None:
        missing = [k for k in self.NAMES if k not in params]
        if missing:
            raise VerifierWeightsError(f"answer head weights: missing {', '.join(missing)}")
        self.p = params
        self.meta = meta
        k, d, r = params["A"].shape
        self.channels, self.rank = int(k), int(r)
        self.window = (int(params["conv"].shape[1]) - 1) // 2
        # A's K maps as one matrix product on the chunk side, B's on the question side
        self._chunk_w = np.ascontiguousarray(params["A"].transpose(1, 0, 2).reshape(d, k * r))
        self._query_w = np.ascontiguousarray(params["B"].transpose(1, 0, 2).reshape(d, k * r))
        self._conv = np.ascontiguousarray(params["conv"], dtype=np.float32)

    def forward(self, q: np.ndarray, c: np.ndarray, keep: bool = False, raw: np.ndarray | None = None) -> Any:
        """Logits [n] of chunk states ``c`` [n, 384] for question states ``q`` [m, 384] (with
        ``keep``: also what :meth:`backward` needs). ``raw``: each chunk piece's best cosine with a
        question piece, when the caller has it (``q @ c.T`` maxed over the question). An empty
        question or chunk gives zeros."""
        n, m = c.shape[0], q.shape[0]
        if n == 0 or m == 0:
            return (np.zeros(n), None) if keep else np.zeros(n)
        p, k, r, w = self.p, self.channels, self.rank, self.window
        ca = (c @ self._chunk_w).reshape(n, k, r).transpose(1, 0, 2)  # [K, n, R]
        qb = (q @ self._query_w).reshape(m, k, r).transpose(1, 0, 2)  # [K, m, R]
        raw = (c @ q.T).max(axis=1) if raw is None else raw
        qm = q.mean(axis=0)
        v = qm @ p["E"]
        # the piece's own term and its answer type against the question's: c @ u + (c @ D) @ v / sqrt(R)
        # as one vector per question
        own = c @ (p["u"] + p["D"] @ v / math.sqrt(r)) + p["u_bias"][0]
        s = np.matmul(ca, qb.transpose(0, 2, 1))  # [K, n, m]
        if not keep and s.dtype == np.float32:  # serving: the channels' max and the convolution in one pass
            conv = kernels.answer_conv(s, np.ascontiguousarray(raw, dtype=np.float32), self._conv, 1.0 / math.sqrt(r))
            return conv + p["conv_bias"][0] + own
        s = s / math.sqrt(r)
        x = np.concatenate([s.max(axis=2), raw[None]])
        windows = np.lib.stride_tricks.sliding_window_view(np.pad(x, ((0, 0), (w, w))), 2 * w + 1, axis=1)
        z = np.einsum("cnt,ct->n", windows, p["conv"]) + p["conv_bias"][0] + own
        if not keep:  # the trainer's float64 evaluation
            return z
        return z, (q, c, ca, qb, s.argmax(axis=2), windows, qm, v)

    def backward(self, dz: np.ndarray, cache: Any) -> dict[str, np.ndarray]:
        """Gradients of the parameters for the loss gradient ``dz`` [n] of :meth:`forward`'s logits
        (training only)."""
        p, r, w = self.p, self.rank, self.window
        if cache is None:
            return {k: np.zeros_like(v) for k, v in p.items()}
        q, c, ca, qb, best, windows, qm, v = cache
        n, k = c.shape[0], ca.shape[0]
        sr = math.sqrt(r)
        cdz = c.T @ dz
        g = {"conv_bias": np.array([dz.sum()]), "u": cdz, "u_bias": np.array([dz.sum()])}
        g["D"] = np.outer(cdz, v) / sr
        g["E"] = np.outer(qm, p["D"].T @ cdz) / sr
        g["conv"] = np.einsum("cnt,n->ct", windows, dz)
        dxp = np.zeros((k + 1, n + 2 * w))
        for t in range(2 * w + 1):
            dxp[:, t : t + n] += p["conv"][:, t : t + 1] * dz
        dm = dxp[:k, w : w + n]  # [K, n]; the raw cosine channel has no parameters
        sel = np.take_along_axis(qb, best[..., None], axis=1)  # [K, n, R]: qb at each piece's best
        dca = dm[..., None] * sel / sr
        dqb = np.zeros_like(qb)
        for ch in range(k):
            np.add.at(dqb[ch], best[ch], dm[ch][:, None] * ca[ch] / sr)
        g["A"] = np.einsum("nd,knr->kdr", c, dca)
        g["B"] = np.einsum("md,kmr->kdr", q, dqb)
        return g


@lru_cache(maxsize=1)
def default_answer_head() -> AnswerHead:
    with resources.files("certus.models").joinpath("answer_head.npz").open("rb") as fh, np.load(fh) as z:
        params = {k: np.asarray(z[k], dtype=np.float32) for k in AnswerHead.NAMES}
        meta = str(z["meta"]) if "meta" in z.files else ""
    return AnswerHead(params, meta)


class VerifierWeightsError(ValueError):
    pass


@dataclass(frozen=True)
class Verifier:
    claim_model: _Mlp
    question_model: _Linear
    meta: dict

    @classmethod
    def from_dict(cls, d: dict) -> "Verifier":
        try:
            c, q = d["claim"], d["question"]
            if tuple(c["features"]) != CLAIM_FEATURES or tuple(q["features"]) != QUESTION_FEATURES:
                raise VerifierWeightsError("verifier weights were trained on other features; retrain them")
            f = lambda v: np.asarray(v, dtype=np.float64)  # noqa: E731
            claim = _Mlp(f(c["mean"]), f(c["scale"]), f(c["w1"]), f(c["b1"]), f(c["w2"]), float(c["b2"]))
            question = _Linear(f(q["mean"]), f(q["scale"]), f(q["w"]), float(q["b"]))
        except (KeyError, TypeError) as exc:
            raise VerifierWeightsError(f"verifier weights: missing or bad field {exc}") from exc
        return cls(claim, question, dict(d.get("meta", {})))

    @classmethod
    def untrained(cls) -> "Verifier":
        """All-zero weights (P = 0.5 everywhere): what the trainer computes features with."""
        nc, nq = len(CLAIM_FEATURES), len(QUESTION_FEATURES)
        z = np.zeros
        return cls(_Mlp(z(nc), np.ones(nc), z((nc, 1)), z(1), z(1), 0.0), _Linear(z(nq), np.ones(nq), z(nq), 0.0), {})

    # -- faithfulness -----------------------------------------------------------------------------
    def claim_probabilities(self, rows: np.ndarray) -> np.ndarray:
        return _sigmoid(self.claim_model.logits(rows))

    # -- question fit -----------------------------------------------------------------------------
    def question_fit(
        self, query: str, response: str, context: Sequence[str], query_tokens: Any, chunk_tokens: Sequence[Any]
    ) -> float:
        """P(the response answers *this* question from the context). A response of several
        sentences answers it when one of them does: the best sentence's probability.
        ``query_tokens`` / ``chunk_tokens``: the encoder's ``TokenStates`` of the query and of
        each chunk (the scoring run's)."""
        spans = kernels.split_sentences(response)
        parts = [response[s:e] for s, e in spans] if len(spans) > 1 else [response]
        prepared = question_context(query, context, query_tokens, chunk_tokens)
        x = np.stack([question_features(p, prepared) for p in dict.fromkeys(parts)])
        return float(_sigmoid(self.question_model.logits(x)).max())


@lru_cache(maxsize=1)
def default_verifier() -> Verifier:
    text = resources.files("certus.models").joinpath("verifier.json").read_text(encoding="utf-8")
    return Verifier.from_dict(json.loads(text))


def load_verifier(path: str | None) -> Verifier:
    if not path:
        return default_verifier()
    with open(path, encoding="utf-8") as fh:
        return Verifier.from_dict(json.load(fh))


def claim_features(
    claims: Sequence[str],
    claim_f: Sequence["kernels.TextFeatures"],
    chunk_f: Sequence["kernels.TextFeatures"],
    query_terms: set[int],
    extra_context_terms: set[int],
    cos: np.ndarray,
    grounding: np.ndarray,
    numeric: np.ndarray,
) -> tuple[np.ndarray, list[str]]:
    """The :data:`TERM_FEATURES` rows of the claims and, for each, the reason it would fail (see
    the module doc); the scoring stage appends the alignment columns.

    ``extra_context_terms``: terms the context also has once glued words are separated (``unglued``).

    ``cos``, ``grounding``, ``numeric``: claim x chunk matrices.
    """
    ctx_terms: set[int] = set(extra_context_terms)
    for f in chunk_f:
        ctx_terms.update(f.terms.tolist())
    ctx_numbers = np.concatenate([f.numbers for f in chunk_f]) if chunk_f else np.empty((0, 2), np.float64)
    rows = np.zeros((len(claims), len(TERM_FEATURES)), dtype=np.float64)
    reasons: list[str] = []
    for i, (text, f) in enumerate(zip(claims, claim_f)):
        terms = f.terms.tolist()
        n = len(terms)
        sup = [t in ctx_terms for t in terms]
        novel = [s for t, s in zip(terms, sup) if t not in query_terms]
        n_novel = len(novel)
        unsup_novel = n_novel - sum(novel)
        ents = entity_terms(text) - query_terms
        missing = [e for e in ents if e not in ctx_terms]
        best = int(grounding[i].argmax()) if grounding.shape[1] else 0
        numeric_all = kernels.numeric_consistency(f.numbers, ctx_numbers)
        rows[i] = (
            sum(sup) / n if n else 1.0,
            float(grounding[i, best]) if grounding.shape[1] else 0.0,
            sum(novel) / n_novel if n_novel else 1.0,
            math.log1p(unsup_novel),
            math.log1p(n_novel),
            n_novel / n if n else 0.0,
            math.log1p(len(missing)),
            1.0 - len(missing) / len(ents) if ents else 1.0,
            numeric_all,
            float(numeric[i, best]) if numeric.shape[1] else 1.0,
            float(cos[i].max()) if cos.shape[1] else 0.0,
        )
        if numeric_all < 1.0:
            reasons.append(REASON_NUMBER)
        elif missing:
            reasons.append(REASON_ENTITY)
        else:
            reasons.append(REASON_NO_SUPPORT)
    return rows, reasons


def _has_digit(text: str) -> bool:
    """``any(ch.isdigit() for ch in text)``; one regular-expression scan for ASCII text (where
    ``[0-9]`` and ``str.isdigit`` agree), the character loop otherwise (superscripts are digits too)."""
    if text.isascii():
        return _DIGIT.search(text) is not None
    return any(ch.isdigit() for ch in text)


def _answer_type(answer: str) -> str:
    low = answer.lower()
    if _DATE.search(low):
        return "date"
    if _has_digit(answer) or _NUMBER_WORDS.search(low):
        return "num"
    if answer[:1].isupper():
        return "name"
    return "other"


def _question_type(query: str) -> str:
    low = query.lower()
    if _Q_NUM.search(low):
        return "num"
    if _Q_DATE.search(low):
        return "date"
    if _Q_WHO.search(low) or _Q_WHERE.search(low):
        return "name"
    return "other"


@dataclass(frozen=True, slots=True)
class _ChunkParts:
    """A chunk's sentences and stemmed words, whatever the question (cached per chunk text)."""

    low: str
    sentences: list[tuple[int, int, frozenset[str], str]]  # (start, end, content words, lower-cased text)
    sentence_starts: list[int]
    sentences_of: dict[str, np.ndarray]  # content word -> int64 indices of the sentences that have it
    words: list[tuple[int, str]]  # (char offset, stem) of every word
    positions: dict[str, tuple[int, ...]]  # stem -> rising indices in ``words`` of the words with it
    starts: list[int]
    ends: list[int]


@dataclass(frozen=True, slots=True)
class _ChunkWords:
    """A chunk as one question sees it: its parts, where the question's words are, how much of the
    question each sentence shares, and the question's focus tables over its token states."""

    parts: _ChunkParts
    qpos: list[int]  # word indices of the question's words (rising)
    overlap: np.ndarray  # float64 per sentence: share of the question's content words it has
    pieces: np.ndarray  # int64[n, 2] char span of each of the chunk's encoder pieces
    focus_best: float  # kernels.focus_tables: the question's best focus anywhere in the chunk
    fwd: np.ndarray
    bwd: np.ndarray
    answer: "_AnswerLogits"  # the answer head's logit per piece, computed on first use


@dataclass(frozen=True, slots=True)
class QuestionContext:
    """The question's words and each chunk tokenised once, shared by all the response's sentences
    (a long response must not re-tokenise the whole context per sentence), with the question's
    focus tables over each chunk's token states."""

    qw: frozenset[str]
    qtype: str  # the answer type the question expects (num, date, name, other)
    chunks: list[_ChunkWords]


CHUNK_WORDS_CACHE: LruCache[_ChunkParts] = LruCache(512)


def _chunk_parts(chunk: str) -> _ChunkParts:
    """A chunk's sentences and stemmed words, whatever the question (:data:`CHUNK_WORDS_CACHE` keeps
    them per chunk text: retrieved chunks repeat across requests). Callers must not mutate them."""
    low = chunk.lower()
    spans = kernels.split_sentences(chunk)
    matches = list(_WORD.finditer(low))
    words = [(m.start(), _stem(m.group(0))) for m in matches]
    sentences = []
    index: dict[str, list[int]] = {}
    for s, e in spans.tolist() if len(spans) else [(0, len(chunk))]:
        cw = frozenset(content_words(low[s:e]))
        if cw:
            for w in cw:
                index.setdefault(w, []).append(len(sentences))
            sentences.append((s, e, cw, low[s:e]))
    sentences_of = {w: np.array(ids, dtype=np.int64) for w, ids in index.items()}
    at: dict[str, list[int]] = {}
    for k, (_, w) in enumerate(words):
        at.setdefault(w, []).append(k)
    positions = {w: tuple(ks) for w, ks in at.items()}
    return _ChunkParts(
        low, sentences, [st[0] for st in sentences], sentences_of, words, positions, [w[0] for w in words],
        [m.end() for m in matches],
    )


class _AnswerLogits:
    """The answer head's logits of one chunk for the question, computed when first read: only the
    chunks where an answer is located need them (most of the head's cost is the chunk's side)."""

    __slots__ = ("_q", "_c", "_sim", "_z")

    def __init__(self, q: np.ndarray, c: np.ndarray, sim: np.ndarray) -> None:
        """``sim``: the question x chunk piece cosines the focus tables were computed from."""
        self._q, self._c, self._sim, self._z = q, c, sim, None

    @property
    def computed(self) -> bool:
        """Whether :attr:`z` was read (an answer was located in the chunk)."""
        return self._z is not None

    @property
    def z(self) -> np.ndarray:
        if self._z is None:
            raw = self._sim.max(axis=0) if self._sim.size else None  # None: forward's own (an empty side)
            self._z = default_answer_head().forward(self._q, self._c, raw=raw)
        return self._z


def question_context(query: str, context: Sequence[str], query_tokens: Any, chunk_tokens: Sequence[Any]) -> QuestionContext:
    """``query_tokens`` / ``chunk_tokens``: the encoder's ``TokenStates`` of the query and of each
    chunk (row for row of ``context``)."""
    if len(chunk_tokens) != len(context):
        raise ValueError(f"chunk_tokens: {len(chunk_tokens)} token states for {len(context)} chunks")
    qw = frozenset(content_words(query))
    nq = max(1, len(qw))
    chunks = []
    for chunk, ts in zip(context, chunk_tokens):
        parts = CHUNK_WORDS_CACHE.get_or_make(chunk, _chunk_parts)
        qpos = sorted(k for w in qw if w in parts.positions for k in parts.positions[w])
        overlap = np.array([len(qw & cw) / nq for _, _, cw, _ in parts.sentences], dtype=np.float64)
        sim = np.ascontiguousarray(query_tokens.states @ ts.states.T)
        best, fwd, bwd = kernels.focus_tables(sim)
        chunks.append(_ChunkWords(parts, qpos, overlap, ts.pieces, best, fwd, bwd, _AnswerLogits(query_tokens.states, ts.states, sim)))
    return QuestionContext(qw, _question_type(query), chunks)


def _nearest(qpos: list[int], lo: int, hi: int) -> float:
    """Word distance from the nearest question word to the answer's first or last word (99 when
    the chunk has none of the question's words)."""
    if not qpos:
        return 99.0
    best = float("inf")
    for x in (lo, hi):
        i = bisect.bisect_left(qpos, x)
        for j in (i - 1, i):
            if 0 <= j < len(qpos):
                best = min(best, abs(qpos[j] - x))
    return float(best)


def occurrences(text: str, part: str) -> np.ndarray:
    """int64[k]: every start of ``part`` in ``text`` (overlapping ones too); ``str.find``, which is
    much faster than a regular expression on long chunks."""
    out = []
    at = text.find(part)
    while at >= 0:
        out.append(at)
        at = text.find(part, at + 1)
    return np.array(out, dtype=np.int64)


def _span_gaps(ch: _ChunkWords, spans: np.ndarray) -> tuple[float, float] | None:
    """Over the char ``spans`` (int64[m, 2]) of chunk ``ch``, each maximum taken on its own: the
    question's highest focus around a span (its pieces left out) minus its best focus anywhere in
    the chunk, and the answer head's highest logit on a span's pieces minus its highest in the
    chunk; None when no span reaches a piece (past the encoder's window)."""
    pieces = ch.pieces
    lo = np.searchsorted(pieces[:, 1], spans[:, 0], side="right")
    hi = np.searchsorted(pieces[:, 0], spans[:, 1], side="left") - 1
    keep = lo <= hi
    if not keep.any():
        return None
    rows = np.ascontiguousarray(np.stack([lo[keep], hi[keep]], axis=1), dtype=np.int64)
    z = ch.answer.z
    # the head's best logit over each row's pieces lo..hi, all rows at once (a row per occurrence:
    # thousands when the answer's words are everywhere); the padding lets a row end at the last piece
    bounds = np.stack([rows[:, 0], rows[:, 1] + 1], axis=1).ravel()
    answer = float(np.maximum.reduceat(np.append(z, -np.inf), bounds)[::2].max())
    return float(kernels.focus_at(ch.fwd, ch.bwd, rows).max()) - ch.focus_best, answer - float(z.max())


def question_features(response: str, prepared: QuestionContext) -> np.ndarray:
    """The :data:`QUESTION_FEATURES` row of a response (or one of its sentences) against
    ``prepared``, the :func:`question_context` of the request's query and chunks (shared by the
    response's sentences).

    The answer is located where the context contains it verbatim (case-insensitive), otherwise in
    the sentence holding most of its content words (there, at each of its words that the question
    does not have); then: how much of the question the context says around it, from the encoder's
    token states, against the most the question gets anywhere in its chunk
    (``question_focus_gap``, see ``kernels.focus``); the answer head's logit on the answer's pieces
    against its highest in the chunk (``answer_head_gap``, :class:`AnswerHead`: a reader taught on
    HotpotQA where answers sit); how much of the question that sentence shares,
    against the sentence that shares most (``gap``); how much of the question lies within 12 words
    of the answer; how far the nearest question word is; and the expected answer type.
    """
    qc = prepared
    qw = qc.qw
    nq = max(1, len(qw))
    answer = response.strip().lower()
    n_answer_words = max(1, len(_WORD.findall(answer)))
    aset = set(content_words(response))
    best_ov = max((float(ch.overlap.max()) for ch in qc.chunks if len(ch.overlap)), default=0.0)
    located, ans_ov, near, dist = 0.0, 0.0, 0.0, 99.0
    focus: tuple[float, float] | None = None  # (question focus gap, answer head gap)
    for ch in qc.chunks:
        found = occurrences(ch.parts.low, answer) if answer else np.empty(0, dtype=np.int64)
        if not len(found):
            continue
        gaps = _span_gaps(ch, np.stack([found, found + len(answer)], axis=1))
        if gaps is not None:
            focus = gaps if focus is None else (max(focus[0], gaps[0]), max(focus[1], gaps[1]))
        # the sentences holding the answer whole (its first occurrence in each)
        seen: set[int] = set()
        for pos in found.tolist():
            i = bisect.bisect_right(ch.parts.sentence_starts, pos) - 1
            if i < 0 or i in seen or pos + len(answer) > ch.parts.sentences[i][1]:
                continue
            seen.add(i)
            located = 1.0
            ans_ov = max(ans_ov, float(ch.overlap[i]))
            lo = bisect.bisect_left(ch.parts.starts, pos)
            hi = lo + n_answer_words - 1
            near = max(near, _near(ch.parts.words, lo, hi, qw, nq))
            dist = min(dist, _nearest(ch.qpos, lo, hi))
    if not located and aset:
        # the sentence holding most of the answer's content words (then most of the question's;
        # the first on a tie), found through each chunk's word -> sentences index
        best: tuple[float, float, int, int] | None = None  # (cover, overlap, chunk, sentence)
        for c, ch in enumerate(qc.chunks):
            postings = [ids for w in aset if (ids := ch.parts.sentences_of.get(w)) is not None]
            if not postings:
                continue
            cover = np.bincount(np.concatenate(postings), minlength=len(ch.overlap)) / len(aset)
            top = np.flatnonzero(cover == cover.max())
            i = int(top[np.argmax(ch.overlap[top])])  # the first of the best
            cand = (float(cover[i]), float(ch.overlap[i]))
            if best is None or cand > best[:2]:
                best = (*cand, c, i)
        if best is not None:
            ans_ov, ch = best[1], qc.chunks[best[2]]
            words, starts = ch.parts.words, ch.parts.starts
            s, e = ch.parts.sentences[best[3]][:2]
            hits = [k for k in range(bisect.bisect_left(starts, s), bisect.bisect_left(starts, e)) if words[k][1] in aset]
            lo, hi = hits[0], hits[-1]
            near, dist = _near(words, lo, hi, qw, nq), _nearest(ch.qpos, lo, hi)
            # the focus is read around each of the answer's own words here (an answer that
            # restates the question must not hide the question's words inside its span)
            own = [k for k in hits if words[k][1] not in qw] or hits
            focus = _span_gaps(ch, np.array([(starts[k], ch.parts.ends[k]) for k in own], dtype=np.int64))
    if focus is None:  # the answer is nowhere in the context: none of the question is near it
        focus = (-max((ch.focus_best for ch in qc.chunks), default=0.0), NOWHERE_ANSWER_GAP)
    qt, at = qc.qtype, _answer_type(response.strip())
    if qt == "date" and at == "num" and _YEAR.fullmatch(response.strip()):
        at = "date"  # "In what year…?" "911"
    match = 1.0 if qt == at else (0.5 if qt == "other" else 0.0)
    return np.array(
        [
            focus[0],
            focus[1],
            located,
            ans_ov,
            ans_ov - best_ov,
            near,
            -math.log1p(dist),
            len(aset & qw) / len(aset) if aset else 0.0,
            match,
            1.0 if qt in ("num", "date") and at != qt else 0.0,
        ],
        dtype=np.float64,
    )


def _near(words: list[tuple[int, str]], lo: int, hi: int, qw: frozenset[str], nq: int) -> float:
    """Share of the question's words within 12 words of the answer at word positions lo..hi."""
    window = {w for _, w in words[max(0, lo - 12) : hi + 13]}
    return len(qw & window) / nq
