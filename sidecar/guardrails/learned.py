"""The learned half of the prompt-attack guardrails, on the sidecar's MiniLM embeddings.

Each scored span is described by its MiniLM embedding (384 values, shared with the scoring stage)
and by its words: lower-cased word unigrams and bigrams, hashed (CRC-32) into ``HASH_DIM`` buckets,
presence only, L2-normalised (:func:`lexical_features`), and by its character 3-5-grams, hashed the
same way into ``CHAR_DIM`` buckets (:func:`char_features`). The embedding knows what a text is about;
the words know the idioms of an attack ("now write", "ignore", German "vergiss"), which the sentence
embedding blurs; the character grams know them through inflection and compounding ("vergessen",
"ignoriere", "Anweisungen"), which MiniLM's English word pieces and the exact words miss. Two
logistic-regression heads over those ``FEATURES`` values, trained offline by
``python -m certus.sidecar.guardrails.train_injection`` and shipped as ``data/attack_head.npz``:

* prompt injection: its output is a probability, used as the confidence; the operating point
  chosen on validation rows of the fit part maps to 0.75 (above the default policy's 0.7).
* jailbreak: the second head, trained on the fit part of
  jackhhao/jailbreak-classification (jailbreaks against benign persona and role-play prompts such
  as "Act as a yoga instructor"), so role-play alone is not an attack.

Texts are cut into segments of a few sentences (about one MiniLM window, <= ``SEGMENT_CHARS``) so
that one injected sentence in a long retrieved chunk is not averaged away; a short text is one
segment (its embedding is then the one the scoring stage asks for too, served by the shared cache).
A text of several segments is also scored as a whole, up to ``WHOLE_CHARS`` (the part MiniLM's 256
tokens see): the heads were trained on whole prompts, and a jailbreak's setup rarely fits one segment.
Each request embeds at most ``max_segments`` segments: the query first, then the first segment of
every chunk, then the rest in order; what was left out is counted in a log line (rules still cover
the whole text).
"""

from __future__ import annotations

import json
import re
import threading
import zlib
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import numpy.typing as npt
import structlog

from certus.sidecar.domain import content_hash

log = structlog.get_logger(__name__)

DATA_DIR = Path(__file__).with_name("data")
HEAD_FILE = DATA_DIR / "attack_head.npz"
SEGMENT_CHARS = 320
WHOLE_CHARS = 4 * SEGMENT_CHARS
DIM = 384
HASH_DIM = 4096
CHAR_DIM = 4096
CHAR_NGRAMS = (3, 4, 5)
FEATURES = DIM + HASH_DIM + CHAR_DIM
_TOKEN = re.compile(r"[^\W_]+")
# A segment of fewer words carries no instruction the head can judge ("ok", "q", "hello"): its
# embedding is noise for a classifier trained on prompts, so it is not scored (rules still run).
MIN_WORDS = 3

Embed = Callable[[Sequence[str]], npt.NDArray[np.float32]]

_SENTENCE_END = re.compile(r"(?<=[.!?:;])\s+|\n+")


def segments(text: str, max_chars: int = SEGMENT_CHARS) -> list[tuple[int, int]]:
    """Char spans covering ``text``: sentences merged greedily up to ``max_chars``; a longer sentence
    is cut at whitespace. Empty and whitespace-only pieces are skipped."""
    if not text.strip():
        return []
    if len(text) <= max_chars:
        return [(0, len(text))]
    pieces: list[tuple[int, int]] = []
    pos = 0
    for m in _SENTENCE_END.finditer(text):
        pieces.append((pos, m.start()))
        pos = m.end()
    pieces.append((pos, len(text)))
    # split over-long sentences at whitespace
    small: list[tuple[int, int]] = []
    for s, e in pieces:
        while e - s > max_chars:
            cut = text.rfind(" ", s + max_chars // 2, s + max_chars)
            cut = cut if cut > s else s + max_chars
            small.append((s, cut))
            s = cut
        small.append((s, e))
    out: list[tuple[int, int]] = []
    cur: tuple[int, int] | None = None
    for s, e in small:
        if not text[s:e].strip():
            continue
        if cur is None:
            cur = (s, e)
        elif e - cur[0] <= max_chars:
            cur = (cur[0], e)
        else:
            out.append(cur)
            cur = (s, e)
    if cur is not None:
        out.append(cur)
    return out


def whole_span(text: str) -> tuple[int, int]:
    """The text as a whole, cut at whitespace before ``WHOLE_CHARS`` when longer."""
    if len(text) <= WHOLE_CHARS:
        return (0, len(text))
    cut = text.rfind(" ", WHOLE_CHARS // 2, WHOLE_CHARS)
    return (0, cut if cut > 0 else WHOLE_CHARS)


def scored_spans(text: str) -> list[tuple[int, int]]:
    """The spans of ``text`` the heads score (and were trained on): its segments of at least
    ``MIN_WORDS`` words, and the whole text first when it has more than one."""
    segs = [(s, e) for s, e in segments(text) if len(text[s:e].split()) >= MIN_WORDS]
    if len(segs) > 1:
        segs = [whole_span(text)] + segs
    return segs


def lexical_features(texts: Sequence[str]) -> npt.NDArray[np.float32]:
    """(n, HASH_DIM): presence of each text's lower-cased word unigrams and bigrams, hashed with
    CRC-32 into HASH_DIM buckets, L2-normalised (a text without words is all zeros)."""
    out = np.zeros((len(texts), HASH_DIM), dtype=np.float32)
    for i, t in enumerate(texts):
        words = _TOKEN.findall(t.lower())
        grams = words + [f"{a} {b}" for a, b in zip(words, words[1:])]
        if grams:
            idx = np.fromiter((zlib.crc32(g.encode()) % HASH_DIM for g in grams), dtype=np.int64, count=len(grams))
            out[i, idx] = 1.0
            out[i] /= np.sqrt(float(np.count_nonzero(out[i])))
    return out


_GRAM_MUL = np.uint64(1099511628211)  # FNV-1a's 64-bit prime: the rolling hash of a gram's bytes
_GRAM_MIX = np.uint64(0x9E3779B97F4A7C15)  # Fibonacci hashing: the top bits of hash * 2^64/phi


def char_features(texts: Sequence[str]) -> npt.NDArray[np.float32]:
    """(n, CHAR_DIM): presence of each text's byte 3-, 4- and 5-grams, read over its lower-cased
    words joined by single spaces (with a space at each end, so a gram can mark a word's start or
    end), hashed into CHAR_DIM buckets, L2-normalised (a text without words is all zeros).
    Vectorised over each text's UTF-8 bytes (about 70 us for 300 chars): the hash of every window
    of one length at once, wrapping uint64 arithmetic, so it is the same on every platform."""
    out = np.zeros((len(texts), CHAR_DIM), dtype=np.float32)
    shift = np.uint64(64 - (CHAR_DIM.bit_length() - 1))
    for i, t in enumerate(texts):
        words = _TOKEN.findall(t.lower())
        if not words:
            continue
        b = np.frombuffer((" " + " ".join(words) + " ").encode(), dtype=np.uint8).astype(np.uint64)
        buckets = []
        with np.errstate(over="ignore"):
            for n in CHAR_NGRAMS:
                m = len(b) - n + 1
                if m <= 0:
                    continue
                h = np.full(m, np.uint64(n))
                for k in range(n):
                    h = h * _GRAM_MUL + b[k : k + m]
                buckets.append((h * _GRAM_MIX) >> shift)
        out[i, np.concatenate(buckets).astype(np.int64)] = 1.0
        out[i] /= np.sqrt(float(np.count_nonzero(out[i])))
    return out


def features(emb: npt.NDArray[np.float32], texts: Sequence[str]) -> npt.NDArray[np.float32]:
    """What the heads read: the embeddings, :func:`lexical_features` and :func:`char_features`
    side by side."""
    return np.hstack([np.asarray(emb, dtype=np.float32), lexical_features(texts), char_features(texts)])


@dataclass(frozen=True)
class AttackHead:
    """Weights loaded from ``attack_head.npz`` (no pickle)."""

    w: npt.NDArray[np.float32]  # (FEATURES,) prompt injection
    b: float
    jailbreak_w: npt.NDArray[np.float32]  # (FEATURES,)
    jailbreak_b: float
    meta: dict[str, object]

    @classmethod
    def load(cls, path: Path = HEAD_FILE) -> "AttackHead":
        with np.load(path, allow_pickle=False) as z:
            head = cls(
                w=np.ascontiguousarray(z["w"], dtype=np.float32),
                b=float(z["b"]),
                jailbreak_w=np.ascontiguousarray(z["jailbreak_w"], dtype=np.float32),
                jailbreak_b=float(z["jailbreak_b"]),
                meta=json.loads(str(z["meta"])),
            )
        if head.w.shape != (FEATURES,) or head.jailbreak_w.shape != (FEATURES,):
            raise ValueError(f"{path}: unexpected shapes w{head.w.shape} jailbreak_w{head.jailbreak_w.shape}")
        return head

    def injection_probability(self, x: npt.NDArray[np.float32]) -> npt.NDArray[np.float64]:
        """``x``: rows of :func:`features`."""
        return _logistic(x, self.w, self.b)

    def jailbreak_probability(self, x: npt.NDArray[np.float32]) -> npt.NDArray[np.float64]:
        return _logistic(x, self.jailbreak_w, self.jailbreak_b)


def _logistic(x: npt.NDArray[np.float32], w: npt.NDArray[np.float32], b: float) -> npt.NDArray[np.float64]:
    z = x.astype(np.float64) @ w.astype(np.float64) + b
    p: npt.NDArray[np.float64] = 1.0 / (1.0 + np.exp(-np.clip(z, -40.0, 40.0)))
    return p


@dataclass(frozen=True, slots=True)
class SegmentScore:
    start: int
    end: int
    injection: float  # probability from the injection head
    jailbreak: float  # probability from the jailbreak head


class LearnedSignal:
    """Scores text segments with the head; caches scores by segment hash (bounded LRU)."""

    def __init__(self, embed: Embed, head: AttackHead | None = None, *, max_segments: int = 128, cache_entries: int = 8192) -> None:
        if max_segments < 1:
            raise ValueError("max_segments must be >= 1")
        self._embed = embed
        self.head = head or AttackHead.load()
        self.max_segments = max_segments
        self._cache: OrderedDict[str, tuple[float, float]] = OrderedDict()
        self._cache_entries = cache_entries
        self._lock = threading.Lock()

    def uncached_pieces(self, texts: Sequence[str]) -> list[str]:
        """The segments :meth:`score_texts` would embed for ``texts`` and has not scored yet: the
        pipeline embeds them in the same batch as the scoring texts, so the guardrail's own
        embedding call finds them in the batcher's cache instead of waiting for an encoder round."""
        pieces = [texts[i][s:e] for i, s, e in self._plan(texts)]
        with self._lock:
            return [p for p in pieces if content_hash(p) not in self._cache]

    def score_texts(self, texts: Sequence[str]) -> list[list[SegmentScore]]:
        """Per text, the scores of its segments (within the per-call segment budget)."""
        chosen = self._plan(texts)
        pieces = [texts[i][s:e] for i, s, e in chosen]
        scores = self._score_pieces(pieces)
        out: list[list[SegmentScore]] = [[] for _ in texts]
        for (i, s, e), (p, j) in zip(chosen, scores):
            out[i].append(SegmentScore(s, e, p, j))
        return out

    def _plan(self, texts: Sequence[str]) -> list[tuple[int, int, int]]:
        """(text index, start, end) of the segments to score, by priority, within the budget."""
        spans = [scored_spans(t) for t in texts]
        order: list[tuple[int, int, int]] = []  # (text index, start, end), by priority
        for rank in range(max((len(s) for s in spans), default=0)):
            for i, ss in enumerate(spans):
                if rank < len(ss):
                    order.append((i, *ss[rank]))
        chosen, dropped = order[: self.max_segments], len(order) - self.max_segments
        if dropped > 0:
            log.info("injection_segments_over_budget", scored=len(chosen), skipped=dropped)
        return chosen

    def _score_pieces(self, pieces: list[str]) -> list[tuple[float, float]]:
        keys = [content_hash(p) for p in pieces]
        result: dict[str, tuple[float, float]] = {}
        with self._lock:
            for k in keys:
                hit = self._cache.get(k)
                if hit is not None:
                    self._cache.move_to_end(k)
                    result[k] = hit
        todo = list(dict.fromkeys(k for k in keys if k not in result))
        if todo:
            first = {k: p for k, p in zip(keys, pieces)}
            emb = np.asarray(self._embed([first[k] for k in todo]), dtype=np.float32)
            if emb.shape != (len(todo), DIM):
                raise ValueError(f"embed returned shape {emb.shape}, expected ({len(todo)}, {DIM})")
            x = features(emb, [first[k] for k in todo])
            p_inj = self.head.injection_probability(x)
            p_jb = self.head.jailbreak_probability(x)
            with self._lock:
                for k, a, b in zip(todo, p_inj, p_jb):
                    result[k] = (float(a), float(b))
                    self._cache[k] = result[k]
                while len(self._cache) > self._cache_entries:
                    self._cache.popitem(last=False)
        return [result[k] for k in keys]
