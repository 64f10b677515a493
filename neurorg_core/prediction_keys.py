"""The prediction cache's keys as a compact snapshot: which (field hash, member id, crop key) are cached.

A run asks, for every field and every ensemble member, whether the store already holds that
member's prediction of the field (``plate_inference``). ``ResultStore.cached_keys`` answers all of
these questions at once, at the head of the run, with a ``CachedKeys`` snapshot. The snapshot holds
no Python object per key: each cached field hash is a 128-bit fingerprint (its MD5, computed by
DuckDB's ``md5_number`` in the store and by ``field_fingerprint`` here, bit for bit the same) in two
sorted ``uint64`` arrays per (member id, crop key), found by bisection. A store holding 200 plates'
predictions (~280,000 keys) makes a snapshot of ~4.5 MB, built in numpy, that pickles as a few
arrays (a campaign sends it to every Ray worker); ``benchmarks/cache_lookup.py`` times it.

Exact in the direction that matters: a key that was cached when the snapshot was taken is always
found. A key that was not cached is found only if its field hash has the same 128-bit MD5 as a
cached field hash of the same member and crop key: the field hashes are themselves 128 bits of
SHA-256 of the pixels, so that is as likely as two different fields hashing equal (~3e-30 for a
1,000-field plate against a million cached fields: 1e9 pairs / 2^128). A key added to the store
after the snapshot is not in it.
"""

from __future__ import annotations

import bisect
import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

__all__ = ["CachedKeys", "field_fingerprint"]

_LOW_BITS = (1 << 64) - 1


def field_fingerprint(field_hash: str) -> tuple[int, int]:
    """The 128-bit fingerprint of a field hash (any string) as (high, low) 64-bit halves.

    The MD5 digest of the UTF-8 bytes read as one little-endian 128-bit number: DuckDB's
    ``md5_number(Field_Hash)``, whose ``>> 64`` is ``high`` and whose low 64 bits are ``low``
    (``ResultStore.cached_keys`` computes it so in SQL).
    """
    number = int.from_bytes(hashlib.md5(field_hash.encode("utf-8")).digest(), "little")
    return number >> 64, number & _LOW_BITS


def _frozen(values: np.ndarray) -> np.ndarray:
    """A read-only contiguous copy (threads share the snapshot; nothing may change it)."""
    out = values.copy()
    out.flags.writeable = False
    return out


@dataclass(frozen=True, eq=False)
class _Group:
    """The fingerprints of one (member id, crop key): ``high`` sorted, ``low`` aligned with it."""

    high: np.ndarray   # uint64, sorted
    low: np.ndarray    # uint64, low[i] belongs to high[i]

    def holds(self, high: int, low: int) -> bool:
        """Whether the fingerprint (high, low) is one of this group's."""
        # bisect over a memoryview reads the uint64s as Python ints: ~0.5 us, against ~5 us for a
        # scalar np.searchsorted (one lookup per field and member, on the run's reader thread)
        highs = memoryview(self.high)
        i = bisect.bisect_left(highs, high)
        while i < len(highs) and highs[i] == high:   # equal highs: ~never more than one
            if memoryview(self.low)[i] == low:
                return True
            i += 1
        return False


@dataclass(frozen=True, eq=False)
class CachedKeys:
    """A snapshot of cached (field hash, member id, crop key) keys; ``key in keys``, ``len(keys)``.

    Build it with ``ResultStore.cached_keys`` (from the store) or ``CachedKeys.of`` (from keys in
    hand); ``CachedKeys()`` is empty. Immutable: threads may share it, and it pickles as a few
    arrays. It cannot list its keys back (it keeps fingerprints, not the hashes).
    """

    groups: Mapping[tuple[str, str], _Group] = field(default_factory=dict)  # (member id, crop key) ->

    @classmethod
    def from_fingerprints(cls, members: Iterable[str], crop_keys: Iterable[str], member_index: np.ndarray,
                          key_index: np.ndarray, high: np.ndarray, low: np.ndarray) -> CachedKeys:
        """Build from one row per key: ``member_index`` and ``key_index`` (0-based) into ``members``
        and ``crop_keys``, and the field hash's fingerprint halves ``high``, ``low`` (uint64)."""
        members, crop_keys = list(members), list(crop_keys)
        n_groups = len(members) * len(crop_keys)
        group = (np.asarray(member_index, np.int64) * len(crop_keys) + np.asarray(key_index, np.int64))
        group = group.astype(np.min_scalar_type(max(n_groups - 1, 0)))   # small ints: a radix sort below
        high = np.ascontiguousarray(high, np.uint64)
        low = np.ascontiguousarray(low, np.uint64)
        order = np.argsort(high)
        order = order[np.argsort(group[order], kind="stable")]   # by group, then by high within it
        group, high, low = group[order], high[order], low[order]
        bounds = np.searchsorted(group, np.arange(n_groups + 1)).tolist()
        groups = {}
        for g, (start, end) in enumerate(zip(bounds[:-1], bounds[1:])):
            if end > start:
                m, k = divmod(g, len(crop_keys))
                groups[(members[m], crop_keys[k])] = _Group(_frozen(high[start:end]), _frozen(low[start:end]))
        return cls(groups)

    @classmethod
    def of(cls, keys: Iterable[tuple[str, str, str]]) -> CachedKeys:
        """A snapshot of the given (field hash, member id, crop key) keys (tests, small sets)."""
        keys = list(dict.fromkeys(keys))
        members = list(dict.fromkeys(m for _, m, _ in keys))
        crop_keys = list(dict.fromkeys(k for _, _, k in keys))
        m_index = {m: i for i, m in enumerate(members)}
        k_index = {k: i for i, k in enumerate(crop_keys)}
        prints = np.array([field_fingerprint(h) for h, _, _ in keys], np.uint64).reshape(-1, 2)
        return cls.from_fingerprints(members, crop_keys, [m_index[m] for _, m, _ in keys],
                                     [k_index[k] for _, _, k in keys], prints[:, 0], prints[:, 1])

    def __contains__(self, key: object) -> bool:
        if not (isinstance(key, tuple) and len(key) == 3):
            return False
        field_hash, member_id, crop_key = key
        return isinstance(field_hash, str) and self.held(field_hash, [member_id], crop_key)[0]

    def held(self, field_hash: str, member_ids: Sequence[str], crop_key: str) -> list[bool]:
        """For each member id, whether ``(field_hash, member_id, crop_key) in self``: the field hash's
        fingerprint is computed once for all members (a run asks this once per field)."""
        groups = [self.groups.get((m, crop_key)) for m in member_ids]
        if not any(g is not None for g in groups):
            return [False] * len(groups)
        high, low = field_fingerprint(field_hash)
        return [g is not None and g.holds(high, low) for g in groups]

    def __len__(self) -> int:
        return sum(len(g.high) for g in self.groups.values())

    def __repr__(self) -> str:
        return f"CachedKeys({len(self)} keys of {len(self.groups)} (member, crop key) groups)"
