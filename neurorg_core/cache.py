"""A least-recently-used cache bounded in bytes, for the caches a caller owns and can see.

The project keeps no hidden module-level caches: whoever keeps things in memory (the app's field
thumbnails, the predictors a server reuses between plates) creates a ``BoundedCache`` with a name
and a byte budget, holds it, and passes it where it is used. ``stats()`` says what it holds.
"""

from __future__ import annotations

import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

from neurorg_core.errors import NeuroRGError

log = logging.getLogger(__name__)


def file_version(st: os.stat_result) -> tuple[int, int, int, int]:
    """What tells one version of a file (or folder) from another without reading it: size,
    modification time, change time and inode, from its ``os.stat`` result.

    Size and modification time alone repeat when a file is replaced by one of the same size whose
    time was set back (``touch -d``, a copy or an unpacked archive keeping times). The change time
    cannot be set back: writing, replacing, renaming into place and setting the times all set it
    to now. So a file's bytes never change while this stays the same; every cache keyed by the
    files a plate was read from (plates, zip extractions, thumbnails, training crops, campaign
    plates) uses it."""
    return int(st.st_size), int(st.st_mtime_ns), int(st.st_ctime_ns), int(st.st_ino)


K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


@dataclass(frozen=True)
class CacheStats:
    name: str
    entries: int
    bytes: int
    max_bytes: int
    hits: int
    misses: int
    evictions: int


class BoundedCache(Generic[K, V]):
    """Thread-safe LRU cache holding at most ``max_bytes`` (as measured by ``size_of``).

    Parameters
    ----------
    name
        What it caches, for logs and ``stats()``.
    max_bytes
        Budget; the least recently used entries are dropped (``on_evict`` called) to stay within it.
        An entry bigger than the whole budget is returned to the caller but not kept.
    size_of
        Bytes one value holds.
    on_evict
        Called with a value when it leaves the cache (e.g. to stop a predictor's threads).
    """

    def __init__(self, name: str, max_bytes: int, size_of: Callable[[V], int],
                 on_evict: Callable[[V], None] | None = None) -> None:
        if max_bytes < 0:
            raise NeuroRGError(f"cache {name!r}: budget {max_bytes} bytes; expected 0 or more")
        self.name = name
        self.max_bytes = int(max_bytes)
        self._size_of = size_of
        self._on_evict = on_evict
        self._items: OrderedDict[K, tuple[V, int]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self._hits = self._misses = self._evictions = 0

    def get(self, key: K) -> V | None:
        with self._lock:
            item = self._items.get(key)
            if item is None:
                self._misses += 1
                return None
            self._items.move_to_end(key)
            self._hits += 1
            return item[0]

    def put(self, key: K, value: V) -> V:
        """Keep ``value`` (unless it alone exceeds the budget); returns the value now cached under
        ``key`` (an equal-keyed value put meanwhile by another thread wins, and ``value`` is evicted)."""
        size = int(self._size_of(value))
        dropped: list[V] = []
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                kept = self._items[key][0]
                if kept is not value:
                    dropped.append(value)
            elif size > self.max_bytes:
                log.info("cache %s: a %d-byte entry exceeds the %d-byte budget; not kept", self.name, size,
                         self.max_bytes)
                kept = value
            else:
                self._items[key] = (value, size)
                self._bytes += size
                kept = value
                while self._bytes > self.max_bytes:
                    _, (old, old_size) = self._items.popitem(last=False)
                    self._bytes -= old_size
                    self._evictions += 1
                    dropped.append(old)
        for old in dropped:
            if self._on_evict is not None:
                self._on_evict(old)
        return kept

    def get_or_make(self, key: K, make: Callable[[], V]) -> V:
        """The cached value, or ``make()`` (called outside the lock: it may be slow) kept and returned."""
        found = self.get(key)
        return found if found is not None else self.put(key, make())

    def clear(self) -> None:
        with self._lock:
            items = [v for v, _ in self._items.values()]
            self._items.clear()
            self._bytes = 0
        for v in items:
            if self._on_evict is not None:
                self._on_evict(v)

    def stats(self) -> CacheStats:
        with self._lock:
            return CacheStats(self.name, len(self._items), self._bytes, self.max_bytes, self._hits,
                              self._misses, self._evictions)
