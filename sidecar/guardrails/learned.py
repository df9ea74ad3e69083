"""The learned half of the prompt-attack guardrails, on the sidecar's MiniLM embeddings.

* prompt injection: a logistic-regression head (384 weights + bias) trained offline by
  ``python -m certus.sidecar.guardrails.train_injection`` and shipped as ``data/attack_head.npz``;
  its output is a probability, used as the confidence.
* jailbreak: cosine similarity to a packaged set of role-play jailbreak exemplars (embedded at
  training time and stored in the same file); a similarity at the calibrated threshold ``tau``
  (99th percentile over benign training texts) maps to confidence 0.5, a similarity of 1 to 1.0.

Texts are cut into segments of a few sentences (about one MiniLM window, <= ``SEGMENT_CHARS``) so
that one injected sentence in a long retrieved chunk is not averaged away; a short text is one
segment (its embedding is then the one the scoring stage asks for too, served by the shared cache).
Each request embeds at most ``max_segments`` segments: the query first, then the first segment of
every chunk, then the rest in order; what was left out is counted in a log line (rules still cover
the whole text).
"""

from __future__ import annotations

import json
import re
import threading
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
DIM = 384
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


@dataclass(frozen=True)
class AttackHead:
    """Weights loaded from ``attack_head.npz`` (no pickle)."""

    w: npt.NDArray[np.float32]  # (384,)
    b: float
    jailbreak_exemplars: npt.NDArray[np.float32]  # (k, 384), L2-normalised
    jailbreak_tau: float
    meta: dict[str, object]

    @classmethod
    def load(cls, path: Path = HEAD_FILE) -> "AttackHead":
        with np.load(path, allow_pickle=False) as z:
            w = np.ascontiguousarray(z["w"], dtype=np.float32)
            ex = np.ascontiguousarray(z["jailbreak_exemplars"], dtype=np.float32)
            head = cls(
                w=w,
                b=float(z["b"]),
                jailbreak_exemplars=ex,
                jailbreak_tau=float(z["jailbreak_tau"]),
                meta=json.loads(str(z["meta"])),
            )
        if head.w.shape != (DIM,) or head.jailbreak_exemplars.ndim != 2 or head.jailbreak_exemplars.shape[1] != DIM:
            raise ValueError(f"{path}: unexpected shapes w{head.w.shape} exemplars{head.jailbreak_exemplars.shape}")
        return head

    def injection_probability(self, emb: npt.NDArray[np.float32]) -> npt.NDArray[np.float64]:
        z = emb.astype(np.float64) @ self.w.astype(np.float64) + self.b
        return 1.0 / (1.0 + np.exp(-np.clip(z, -40.0, 40.0)))

    def jailbreak_similarity(self, emb: npt.NDArray[np.float32]) -> npt.NDArray[np.float64]:
        if self.jailbreak_exemplars.shape[0] == 0:
            return np.zeros(emb.shape[0])
        sims: npt.NDArray[np.float64] = (emb @ self.jailbreak_exemplars.T).max(axis=1).astype(np.float64)
        return sims

    def jailbreak_confidence(self, sim: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        tau = self.jailbreak_tau
        conf = 0.5 + 0.5 * (sim - tau) / max(1.0 - tau, 1e-6)
        return np.where(sim >= tau, np.clip(conf, 0.0, 1.0), 0.5 * np.clip(sim / max(tau, 1e-6), 0.0, 1.0))


@dataclass(frozen=True, slots=True)
class SegmentScore:
    start: int
    end: int
    injection: float  # probability from the logistic head
    jailbreak: float  # confidence from exemplar similarity


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
        spans = []
        for t in texts:
            segs = [(s, e) for s, e in segments(t) if len(t[s:e].split()) >= MIN_WORDS]
            if len(segs) > 1 and len(t) <= 4 * SEGMENT_CHARS:
                # a prompt a few sentences long is also scored whole: the head was trained on whole prompts
                segs = [(0, len(t))] + segs
            spans.append(segs)
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
            p_inj = self.head.injection_probability(emb)
            p_jb = self.head.jailbreak_confidence(self.head.jailbreak_similarity(emb))
            with self._lock:
                for k, a, b in zip(todo, p_inj, p_jb):
                    result[k] = (float(a), float(b))
                    self._cache[k] = result[k]
                while len(self._cache) > self._cache_entries:
                    self._cache.popitem(last=False)
        return [result[k] for k in keys]
