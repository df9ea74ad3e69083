"""Dynamic batching of texts across concurrent requests into one encoder call.

The batcher knows nothing about models: it depends on the small ``Encoder`` protocol
(``encode_tokens(texts) -> (float32[n, dim], [token states])``, ``dim``, ``max_batch_size``). Rules:

- identical texts are served from a bounded LRU keyed by content hash, and a text already queued
  or in flight is shared with every request that asks for it (no duplicate work); every encoder
  run yields the texts' token states too, kept in a second LRU bounded in bytes: a caller that
  needs them (:meth:`Batcher.embed_tokens`, the scoring path) has a text re-encoded only when its
  states were evicted;
- a batch is flushed when ``max_batch_size`` texts are waiting, or ``max_wait_ms`` after the first
  one arrived while the encoder is idle; while the encoder is busy, arrivals accumulate and the next
  batch takes them all (adaptive batching);
- a batch is handed over sorted by length; the encoder cuts it into model batches by real token
  counts (``max_batch_size`` / ``max_batch_tokens`` are its bounds too), which keeps padding low;
- the queue is bounded: a request that would overflow it fails at once with ResourceExhausted;
- texts whose every caller has gone (cancelled) are dropped before encoding; every drop is counted;
- the encoder runs in one dedicated thread, never on the event loop.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import time
from dataclasses import dataclass, field
from typing import Any, Protocol, Sequence

import numpy as np
import structlog

from certus.sidecar.cache import LruCache, text_key
from certus.sidecar.config import BatcherConfig
from certus.sidecar.errors import ResourceExhausted, Unavailable

log = structlog.get_logger(__name__)



class Encoder(Protocol):
    dim: int
    max_batch_size: int

    def encode_tokens(self, texts: Sequence[str]) -> tuple[np.ndarray, list[Any]]: ...


@dataclass
class _Item:
    key: bytes
    text: str
    future: asyncio.Future[tuple[np.ndarray, Any]]
    requesters: set[int] = field(default_factory=set)
    waiters: int = 0


@dataclass
class BatcherStats:
    batches: int = 0
    texts_encoded: int = 0
    merged_batches: int = 0  # batches that held texts from more than one request
    max_requests_in_batch: int = 0
    dropped_cancelled: int = 0
    rejected_full: int = 0
    encode_seconds: float = 0.0
    batch_size_sum: int = 0

    def as_dict(self) -> dict[str, float]:
        return dict(self.__dict__)


def text_caches(cfg: BatcherConfig) -> tuple[LruCache[np.ndarray], LruCache[Any]]:
    """The embedding cache and the token-state cache a batcher (or a front-end's remote batcher) keeps."""
    # 0 MB = no token cache (every scored text is encoded again), never "unbounded"
    token_bytes = max(cfg.token_cache_mb, 0) << 20
    return LruCache(cfg.cache_entries), LruCache(cfg.cache_entries if token_bytes else 0, token_bytes)


class SyncCalls:
    """``embed_sync`` / ``token_states_sync`` for worker threads (guardrails, the PII head): when
    every text is in the subclass's caches (``cache``, ``token_cache``: thread-safe) they are read
    here; otherwise the subclass's ``embed`` / ``embed_tokens`` coroutines run on its event loop
    (``_loop``, set at start) while the calling thread blocks. In the sidecar the guardrails' texts
    ride the request's own encoder batch, so by the time a scan asks, they are usually cached: the
    hop through the event loop (which the loop thread must get the GIL to serve) is then skipped."""

    _loop: asyncio.AbstractEventLoop | None
    cache: LruCache[np.ndarray]
    token_cache: LruCache[Any]

    def embed_sync(self, texts: Sequence[str]) -> np.ndarray:
        """For worker threads (guardrails): the same batched path, blocking the calling thread."""
        if self._loop is None:
            raise Unavailable("batcher not started")
        hit = self._all_cached(texts, False)
        if hit is not None:
            return hit[0]
        return asyncio.run_coroutine_threadsafe(self.embed(list(texts)), self._loop).result()  # type: ignore[attr-defined]

    def token_states_sync(self, texts: Sequence[str]) -> list[Any]:
        """For worker threads (the PII head): each text's ``TokenStates``, same batched path and
        caches as :meth:`embed_tokens`, blocking the calling thread."""
        if self._loop is None:
            raise Unavailable("batcher not started")
        hit = self._all_cached(texts, True)
        if hit is not None:
            return hit[1]
        return asyncio.run_coroutine_threadsafe(self.embed_tokens(list(texts)), self._loop).result()[1]  # type: ignore[attr-defined]

    def _cached(self, key: bytes, with_tokens: bool, count: bool = True) -> tuple[np.ndarray, Any] | None:
        """A text's cached (vector, token states or None): with ``with_tokens`` a hit needs both (a
        text whose states were evicted is encoded again). ``count``: read with ``get`` (a counted
        hit or miss, recency refreshed), else ``peek``."""
        st = None
        if with_tokens:
            st = self.token_cache.get(key) if count else self.token_cache.peek(key)
            if st is None:
                return None
        vec = self.cache.get(key) if count else self.cache.peek(key)
        return None if vec is None else (vec, st)

    def _all_cached(self, texts: Sequence[str], with_tokens: bool) -> tuple[np.ndarray, list[Any]] | None:
        """(vectors, token states) when every text is cached (its states too when asked), else None
        (nothing counted: the event loop's path then looks them up and counts them)."""
        keys = [text_key(t) for t in texts]
        if not keys or any(self._cached(k, with_tokens, count=False) is None for k in keys):
            return None
        hits = [self._cached(k, with_tokens) for k in keys]
        if any(h is None for h in hits):  # evicted meanwhile
            return None
        return np.stack([h[0] for h in hits]), ([h[1] for h in hits] if with_tokens else [])  # type: ignore[index]


class Batcher(SyncCalls):
    def __init__(self, encoder: Encoder, cfg: BatcherConfig) -> None:
        self.encoder = encoder
        self.cfg = cfg
        self.cache, self.token_cache = text_caches(cfg)
        self.stats = BatcherStats()
        self._queue: dict[bytes, _Item] = {}  # waiting, insertion ordered
        self._inflight: dict[bytes, _Item] = {}
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="encoder")
        self._closed = False
        self._next_request = 0
        self._ewma_texts_per_s = 0.0

    # -- lifecycle --------------------------------------------------------------------------------
    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._task = asyncio.create_task(self._run(), name="batcher")

    async def stop(self) -> None:
        """Finish what is queued, then stop."""
        self._closed = True
        self._wakeup.set()
        if self._task is not None:
            await self._task
        self._pool.shutdown(wait=True)

    # -- API --------------------------------------------------------------------------------------
    @property
    def queue_depth(self) -> int:
        return len(self._queue)

    def estimated_wait_s(self) -> float:
        """How long a new text would wait for the queue ahead of it, from observed throughput."""
        if self._ewma_texts_per_s <= 0:
            return 0.0
        return (len(self._queue) + len(self._inflight)) / self._ewma_texts_per_s

    async def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Embeddings for ``texts`` (float32[n, dim]), batched with every other caller's texts."""
        return await self._embed(texts, None)

    async def embed_tokens(self, texts: Sequence[str]) -> tuple[np.ndarray, list[Any]]:
        """:meth:`embed` and each text's token states (``TokenStates``)."""
        tokens: list[Any] = [None] * len(texts)
        vecs = await self._embed(texts, tokens)
        return vecs, tokens

    async def _embed(self, texts: Sequence[str], tokens: list[Any] | None) -> np.ndarray:
        if self._closed:
            raise Unavailable("encoder is shutting down")
        out = np.empty((len(texts), self.encoder.dim), dtype=np.float32)
        request = self._next_request = self._next_request + 1
        waits: list[tuple[list[int], _Item]] = []
        new: dict[bytes, list[int]] = {}
        for i, text in enumerate(texts):
            key = text_key(text)
            hit = self._cached(key, tokens is not None)
            if hit is not None:
                out[i] = hit[0]
                if tokens is not None:
                    tokens[i] = hit[1]
                continue
            item = self._queue.get(key) or self._inflight.get(key)
            if item is not None:
                item.requesters.add(request)
                waits.append(([i], item))
            else:
                new.setdefault(key, []).append(i)
        if new:
            if len(self._queue) + len(new) > self.cfg.max_queue:
                self.stats.rejected_full += 1
                raise ResourceExhausted(
                    f"embedding queue is full ({len(self._queue)} texts waiting, limit {self.cfg.max_queue})",
                    retry_after_ms=max(10, int(self.estimated_wait_s() * 1000)),
                )
            loop = asyncio.get_running_loop()
            for key, idx in new.items():
                item = _Item(key, texts[idx[0]], loop.create_future(), {request})
                self._queue[key] = item
                waits.append((idx, item))
            self._wakeup.set()
        for _, item in waits:
            item.waiters += 1
        try:
            for idx, item in waits:
                vec, states = await asyncio.shield(item.future)
                out[idx] = vec
                if tokens is not None:
                    for i in idx:
                        tokens[i] = states
        finally:
            for _, item in waits:
                item.waiters -= 1
        return out

    # -- the loop ---------------------------------------------------------------------------------
    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._queue:
                if self._closed:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            # Encoder idle and something queued: give concurrent requests a short chance to join.
            if len(self._queue) < self.cfg.max_batch_size and self.cfg.max_wait_ms > 0 and not self._closed:
                deadline = loop.time() + self.cfg.max_wait_ms / 1000.0
                while len(self._queue) < self.cfg.max_batch_size:
                    remaining = deadline - loop.time()
                    if remaining <= 0:
                        break
                    self._wakeup.clear()
                    try:
                        await asyncio.wait_for(self._wakeup.wait(), remaining)
                    except asyncio.TimeoutError:
                        break
            batch = self._take_batch()
            if batch:
                await self._encode(batch)

    def _take_batch(self) -> list[_Item]:
        items: list[_Item] = []
        for key in list(self._queue):
            if len(items) >= self.cfg.max_batch_size:
                break
            item = self._queue.pop(key)
            if item.waiters == 0:  # every caller awaiting this text has gone
                self.stats.dropped_cancelled += 1
                item.future.cancel()
                continue
            items.append(item)
        return items

    async def _encode(self, batch: list[_Item]) -> None:
        loop = asyncio.get_running_loop()
        batch.sort(key=lambda it: len(it.text))
        for item in batch:
            self._inflight[item.key] = item
        requesters: set[int] = set()
        for item in batch:
            requesters |= item.requesters
        self.stats.batches += 1
        self.stats.batch_size_sum += len(batch)
        if len(requesters) > 1:
            self.stats.merged_batches += 1
        self.stats.max_requests_in_batch = max(self.stats.max_requests_in_batch, len(requesters))
        t0 = time.perf_counter()
        try:
            vecs, states = await loop.run_in_executor(self._pool, self.encoder.encode_tokens, [it.text for it in batch])
            for item, vec, st in zip(batch, vecs, states):
                self.cache.put(item.key, vec)
                self.token_cache.put(item.key, st)
                if not item.future.done():
                    item.future.set_result((vec, st))
            self.stats.texts_encoded += len(batch)
        except Exception as exc:  # an encoder failure fails the texts of this batch only
            log.error("encoder_failed", error_type=type(exc).__name__, batch=len(batch))
            for item in batch:
                if not item.future.done():
                    item.future.set_exception(exc)
        finally:
            for item in batch:
                self._inflight.pop(item.key, None)
            dt = time.perf_counter() - t0
            self.stats.encode_seconds += dt
            if dt > 0:
                rate = len(batch) / dt
                self._ewma_texts_per_s = rate if self._ewma_texts_per_s == 0 else 0.8 * self._ewma_texts_per_s + 0.2 * rate
