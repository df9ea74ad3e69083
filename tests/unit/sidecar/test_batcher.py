"""The batcher with the real ONNX encoder (wrapped only to record or hold its calls)."""

from __future__ import annotations

import asyncio
import threading
from typing import Any, Sequence

import numpy as np
import pytest

from certus.sidecar.batcher import Batcher
from certus.sidecar.cache import LruCache
from certus.sidecar.config import BatcherConfig
from certus.sidecar.errors import ResourceExhausted


class Recording:
    """Delegates to the real encoder; records each call; can hold calls until released."""

    def __init__(self, inner: Any, hold: bool = False, fail_first: bool = False) -> None:
        self.inner = inner
        self.dim = inner.dim
        self.max_batch_size = inner.max_batch_size
        self.calls: list[list[str]] = []
        self.release = threading.Event()
        self.started = threading.Event()
        if not hold:
            self.release.set()
        self.fail_first = fail_first

    def encode_tokens(self, texts: Sequence[str]) -> tuple[np.ndarray, list[Any]]:
        self.calls.append(list(texts))
        self.started.set()
        self.release.wait(30)
        if self.fail_first:
            self.fail_first = False
            raise RuntimeError("encoder broke")
        return self.inner.encode_tokens(texts)


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def cfg(**kw: Any) -> BatcherConfig:
    base = dict(max_batch_size=64, max_batch_tokens=8192, max_wait_ms=5.0, max_queue=256, cache_entries=1000)
    base.update(kw)
    return BatcherConfig(**base)


def test_concurrent_requests_share_one_encoder_call(encoder: Any) -> None:
    rec = Recording(encoder)

    async def main() -> list[np.ndarray]:
        b = Batcher(rec, cfg())
        await b.start()
        outs = await asyncio.gather(*(b.embed([f"request {i} text a", f"request {i} text b"]) for i in range(8)))
        await b.stop()
        assert b.stats.merged_batches == 1 and b.stats.max_requests_in_batch == 8
        return outs

    outs = run(main())
    assert len(rec.calls) == 1 and len(rec.calls[0]) == 16
    # sorted by length inside the batch
    assert [len(t) for t in rec.calls[0]] == sorted(len(t) for t in rec.calls[0])
    direct = encoder.encode([f"request {i} text {s}" for i in range(8) for s in "ab"])
    np.testing.assert_allclose(np.concatenate(outs), direct, atol=1e-5)


def test_identical_texts_are_encoded_once_and_then_cached(encoder: Any) -> None:
    rec = Recording(encoder)

    async def main() -> Batcher:
        b = Batcher(rec, cfg())
        await b.start()
        a, c = await asyncio.gather(b.embed(["same chunk", "same chunk", "other"]), b.embed(["same chunk"]))
        np.testing.assert_array_equal(a[0], a[1])
        np.testing.assert_array_equal(a[0], c[0])
        await b.embed(["same chunk", "other"])
        await b.stop()
        return b

    b = run(main())
    assert rec.calls == [["other", "same chunk"]]
    assert b.cache.hits == 2


def test_token_states_ride_the_same_encoder_call_and_cache(encoder: Any) -> None:
    rec = Recording(encoder)

    async def main() -> Batcher:
        b = Batcher(rec, cfg())
        await b.start()
        vecs, tokens = await b.embed_tokens(["a chunk about Normandy", "a question"])
        again_vecs, again = await b.embed_tokens(["a question", "a chunk about Normandy"])
        np.testing.assert_array_equal(vecs[::-1], again_vecs)
        assert again[0] is tokens[1] and again[1] is tokens[0]
        assert tokens[0].states.shape[0] == encoder.token_counts(["a chunk about Normandy"])[0] - 2
        await b.stop()
        return b

    b = run(main())
    assert len(rec.calls) == 1


def test_evicted_token_states_are_encoded_again(encoder: Any) -> None:
    rec = Recording(encoder)

    async def main() -> Batcher:
        b = Batcher(rec, cfg(token_cache_mb=1))
        await b.start()
        long = ["word " * 200 + str(i) for i in range(8)]  # ~300 KB of float32 states each
        await b.embed_tokens(long)
        assert b.token_cache.nbytes <= 1 << 20 and len(b.token_cache) < len(long) == len(b.cache)
        await b.embed(long[:1])  # the vector alone is still cached
        _, tokens = await b.embed_tokens(long[:1])  # its states were evicted: encoded again
        assert tokens[0] is not None and tokens[0].states.shape[0] == 201
        await b.stop()
        return b

    b = run(main())
    assert len(rec.calls) == 2 and rec.calls[1] == ["word " * 200 + "0"]


def test_no_token_cache_means_none_not_unbounded(encoder: Any) -> None:
    rec = Recording(encoder)

    async def main() -> Batcher:
        b = Batcher(rec, cfg(token_cache_mb=0))
        await b.start()
        await b.embed_tokens(["a chunk"])
        _, tokens = await b.embed_tokens(["a chunk"])
        assert tokens[0] is not None and len(b.token_cache) == 0
        await b.stop()
        return b

    run(main())
    assert rec.calls == [["a chunk"], ["a chunk"]]


def test_lru_cache_bounds_bytes_too() -> None:
    c: LruCache[np.ndarray] = LruCache(10, max_bytes=100)
    c.put(b"a", np.zeros(10))  # 80 bytes
    c.put(b"b", np.zeros(2))  # 16: both fit
    assert len(c) == 2 and c.nbytes == 96
    c.put(b"c", np.zeros(5))  # 40: the oldest goes
    assert c.peek(b"a") is None and c.nbytes == 56
    c.put(b"d", np.zeros(20))  # larger than the whole bound: never stored, nothing evicted
    assert c.peek(b"d") is None and len(c) == 2
    c.put(b"b", np.zeros(1))  # replacing counts the new size only
    assert c.nbytes == 48


def test_full_queue_is_rejected_at_once(encoder: Any) -> None:
    async def main() -> None:
        b = Batcher(Recording(encoder), cfg(max_queue=4))
        await b.start()
        with pytest.raises(ResourceExhausted):
            await b.embed([f"t{i}" for i in range(5)])
        assert b.stats.rejected_full == 1
        out = await b.embed(["t1", "t2"])  # still serving
        assert out.shape == (2, encoder.dim)
        await b.stop()

    run(main())


def test_texts_of_a_caller_that_went_away_are_dropped(encoder: Any) -> None:
    rec = Recording(encoder, hold=True)

    async def main() -> Batcher:
        b = Batcher(rec, cfg(max_wait_ms=0))
        await b.start()
        first = asyncio.create_task(b.embed(["busy the encoder"]))
        while not rec.started.is_set():
            await asyncio.sleep(0.001)
        gone = asyncio.create_task(b.embed(["never needed 1", "never needed 2"]))
        await asyncio.sleep(0.01)
        gone.cancel()
        await asyncio.sleep(0.01)
        rec.release.set()
        await first
        await b.stop()
        return b

    b = run(main())
    assert b.stats.dropped_cancelled == 2
    assert rec.calls == [["busy the encoder"]]


def test_an_encoder_failure_fails_only_its_batch(encoder: Any) -> None:
    rec = Recording(encoder, fail_first=True)

    async def main() -> None:
        b = Batcher(rec, cfg())
        await b.start()
        with pytest.raises(RuntimeError):
            await b.embed(["first batch"])
        out = await b.embed(["first batch"])  # not cached as a failure; encoded again
        assert out.shape == (1, encoder.dim)
        await b.stop()

    run(main())


def test_empty_input(encoder: Any) -> None:
    async def main() -> None:
        b = Batcher(Recording(encoder), cfg())
        await b.start()
        assert (await b.embed([])).shape == (0, encoder.dim)
        await b.stop()

    run(main())


def test_get_or_make_keeps_short_texts_by_hash_and_makes_long_ones_each_time() -> None:
    from certus.sidecar.cache import MAX_CACHED_TEXT_CHARS

    made: list[str] = []

    def make(text: str) -> int:
        made.append(text)
        return len(text)

    cache: LruCache[int] = LruCache(8)
    short, long = "a chunk", "x" * (MAX_CACHED_TEXT_CHARS + 1)
    assert cache.get_or_make(short, make) == cache.get_or_make(short, make) == len(short)
    assert cache.get_or_make(long, make) == cache.get_or_make(long, make) == len(long)
    assert made == [short, long, long] and len(cache) == 1 and (cache.hits, cache.misses) == (1, 1)


def test_worker_threads_read_cached_texts_without_the_event_loop(encoder: Any) -> None:
    """A guardrail's ``embed_sync`` / ``token_states_sync`` of texts the request's batch already
    encoded is answered from the caches in the calling thread: here the loop is held busy (it would
    serve the hop only once free), and the calls return the cached objects while it still is."""
    rec = Recording(encoder)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    held, free, served = threading.Event(), threading.Event(), threading.Event()
    try:
        b = Batcher(rec, cfg())
        asyncio.run_coroutine_threadsafe(b.start(), loop).result(30)
        vecs, tokens = asyncio.run_coroutine_threadsafe(b.embed_tokens(["a chunk", "a question"]), loop).result(60)
        hits = b.cache.hits
        loop.call_soon_threadsafe(lambda: (held.set(), free.wait(60), served.set()))  # the loop is busy now
        assert held.wait(30)
        got = b.token_states_sync(["a question", "a chunk"])
        assert got[0] is tokens[1] and got[1] is tokens[0]
        np.testing.assert_array_equal(b.embed_sync(["a chunk"]), vecs[:1])
        assert not served.is_set() and b.cache.hits == hits + 3  # answered while the loop was still held
        # a text not cached yet still takes the loop's batched path once the loop is free
        pending = threading.Thread(target=lambda: b.embed_sync(["a new text"]))
        pending.start()
        free.set()
        pending.join(60)
        assert not pending.is_alive() and rec.calls[-1] == ["a new text"]
        asyncio.run_coroutine_threadsafe(b.stop(), loop).result(30)
    finally:
        free.set()
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
