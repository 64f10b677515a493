"""BoundedCache: least recently used entries leave first, the byte budget holds, evictions are told."""

import threading

import numpy as np
import pytest

from neurorg_core.cache import BoundedCache
from neurorg_core.errors import NeuroRGError


def test_lru_within_the_byte_budget_and_evictions_are_told():
    gone = []
    cache = BoundedCache("arrays", 3000, lambda a: a.nbytes, gone.append)
    a, b, c = (np.zeros(125) for _ in range(3))            # 1000 bytes each
    cache.put("a", a)
    cache.put("b", b)
    assert cache.get("a") is a                              # a is now the most recently used
    cache.put("c", c)
    d = np.zeros(125)
    cache.put("d", d)                                       # over budget: b (least recent) leaves
    assert cache.get("b") is None and gone == [b]
    assert {k for k in "acd" if cache.get(k) is not None} == {"a", "c", "d"}
    s = cache.stats()
    assert s.entries == 3 and s.bytes == 3000 <= s.max_bytes and s.evictions == 1


def test_an_entry_bigger_than_the_budget_is_returned_but_not_kept():
    cache = BoundedCache("arrays", 100, lambda a: a.nbytes)
    big = np.zeros(1000)
    assert cache.put("big", big) is big
    assert cache.get("big") is None and cache.stats().bytes == 0


def test_get_or_make_keeps_one_value_per_key_across_threads():
    made = []
    cache = BoundedCache("ints", 10_000, lambda v: 8, made.append)

    def make():
        return object()

    out = []
    threads = [threading.Thread(target=lambda: out.append(cache.get_or_make("k", make))) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    kept = cache.get("k")
    assert kept is not None and len(out) == 8 and all(v is kept for v in out)   # every caller got the kept one
    assert kept not in made                                  # extra values built meanwhile were dropped


def test_a_negative_budget_is_refused():
    with pytest.raises(NeuroRGError, match="budget -1 bytes"):
        BoundedCache("x", -1, len)
