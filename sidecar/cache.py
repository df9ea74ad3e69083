"""A bounded LRU keyed by content hash (never by the content itself)."""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from typing import Callable, Generic, TypeVar

V = TypeVar("V")

# Per-text caches of derived data (a chunk's sentences, words, packed features) keep texts up to this
# size: retrieved chunks are far smaller, and a bound on entries is then a bound on memory.
MAX_CACHED_TEXT_CHARS = 4000


def text_key(text: str) -> bytes:
    """16-byte BLAKE2b digest of the UTF-8 text: the cache key for embeddings and features."""
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).digest()


class LruCache(Generic[V]):
    """Thread-safe bounded LRU. ``max_entries == 0`` disables caching. With ``max_bytes`` the values'
    ``nbytes`` are bounded too (oldest out first)."""

    def __init__(self, max_entries: int, max_bytes: int = 0) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.nbytes = 0
        self._data: OrderedDict[bytes, V] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, key: bytes) -> V | None:
        with self._lock:
            value = self._data.get(key)
            if value is None:
                self.misses += 1
                return None
            self._data.move_to_end(key)
            self.hits += 1
            return value

    def peek(self, key: bytes) -> V | None:
        """Like :meth:`get`, without counting a hit or miss or refreshing recency."""
        with self._lock:
            return self._data.get(key)

    def put(self, key: bytes, value: V) -> None:
        if self.max_entries <= 0:
            return
        size = int(getattr(value, "nbytes", 0)) if self.max_bytes else 0
        if self.max_bytes and size > self.max_bytes:
            return
        with self._lock:
            old = self._data.pop(key, None)
            if old is not None and self.max_bytes:
                self.nbytes -= int(getattr(old, "nbytes", 0))
            self._data[key] = value
            self.nbytes += size
            while len(self._data) > self.max_entries or (self.max_bytes and self.nbytes > self.max_bytes):
                _, gone = self._data.popitem(last=False)
                if self.max_bytes:
                    self.nbytes -= int(getattr(gone, "nbytes", 0))

    def get_or_make(self, text: str, make: Callable[[str], V]) -> V:
        """``make(text)``, kept by the text's content hash when the text has at most
        ``MAX_CACHED_TEXT_CHARS`` characters (a longer one is made each time, never kept)."""
        if len(text) > MAX_CACHED_TEXT_CHARS:
            return make(text)
        key = text_key(text)
        value = self.get(key)
        if value is None:
            value = make(text)
            self.put(key, value)
        return value

    def clear(self) -> None:
        with self._lock:
            self._data.clear()
            self.nbytes = 0
            self.hits = 0
            self.misses = 0

    def __len__(self) -> int:
        return len(self._data)

    @property
    def hit_ratio(self) -> float:
        total = self.hits + self.misses
        return self.hits / total if total else 0.0
