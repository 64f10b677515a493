"""CachedKeys: the prediction cache's keys as fingerprints in numpy (prediction_keys.py)."""

from __future__ import annotations

import hashlib
import pickle

import duckdb
import numpy as np

from neurorg_core.prediction_keys import CachedKeys, field_fingerprint

STRINGS = ["h1", "", "é-field", "0f1e2d3c4b5a69788796a5b4c3d2e1f0", "ff" * 32, "a\x00b", "🧠" * 40]


def test_the_fingerprint_is_duckdbs_md5_number_bit_for_bit() -> None:
    """``ResultStore.cached_keys`` fingerprints the stored hashes in SQL (``md5_number``, split at bit
    64); lookups fingerprint in Python. The two must agree on any string, or a cached field reads as
    missing."""
    con = duckdb.connect()
    for s in STRINGS:
        high, low = con.execute("SELECT (x >> 64)::UBIGINT, (x & 18446744073709551615)::UBIGINT "
                                "FROM (SELECT md5_number(?) AS x)", [s]).fetchone()
        assert field_fingerprint(s) == (high, low), s
        assert (high << 64) | low == int.from_bytes(hashlib.md5(s.encode()).digest(), "little")


def test_keys_in_hand_are_found_and_no_others() -> None:
    keys = [(h, m, k) for h in STRINGS for m in ("m1", "m2") for k in ("g2:0,1", "g2:0,1,2") if (h, m) != ("", "m2")]
    snap = CachedKeys.of(keys + keys[:3])          # a repeated key counts once
    assert len(snap) == len(keys) and repr(snap) == f"CachedKeys({len(keys)} keys of 4 (member, crop key) groups)"
    assert all(key in snap for key in keys)
    assert ("", "m2", "g2:0,1") not in snap and ("h1", "m3", "g2:0,1") not in snap and ("h1", "m1", "g3") not in snap
    assert ("h2", "m1", "g2:0,1") not in snap and ("H1", "m1", "g2:0,1") not in snap
    assert ["h1", "m1", "g2:0,1"] not in snap and ("h1", "m1") not in snap and (None, "m1", "g2:0,1") not in snap
    again = pickle.loads(pickle.dumps(snap))
    assert all(key in again for key in keys) and len(again) == len(keys)
    assert len(CachedKeys()) == 0 and ("h1", "m1", "g2:0,1") not in CachedKeys() and len(CachedKeys.of([])) == 0


def test_held_answers_for_every_member_what_in_answers_for_each() -> None:
    keys = [(h, m, k) for h in STRINGS for m in ("m1", "m2") for k in ("g2:0,1", "g2:0,1,2") if (h, m) != ("", "m2")]
    snap = CachedKeys.of(keys)
    members = ["m2", "m3", "m1"]
    for h in [*STRINGS, "h2", "H1"]:
        for k in ("g2:0,1", "g2:0,1,2", "g3"):
            assert snap.held(h, members, k) == [(h, m, k) in snap for m in members]
    assert snap.held("", members, "g2:0,1") == [False, False, True]
    assert CachedKeys().held("h1", members, "g2:0,1") == [False, False, False]


def test_fingerprints_sharing_their_high_half_are_told_apart_by_the_low_half() -> None:
    """Two field hashes whose fingerprints share the high 64 bits (never met in practice, but the
    lookup must still compare all 128): each is found, a third with the same high half is not."""
    snap = CachedKeys.from_fingerprints(["m"], ["k", "j"], np.array([0, 0, 0, 0]), np.array([0, 0, 0, 1]),
                                        np.array([7, 5, 5, 5], np.uint64), np.array([1, 9, 2, 3], np.uint64))
    group = snap.groups[("m", "k")]
    assert group.high.tolist() == [5, 5, 7]
    assert sorted(zip(group.high.tolist(), group.low.tolist())) == [(5, 2), (5, 9), (7, 1)]
    assert group.holds(5, 9) and group.holds(5, 2) and group.holds(7, 1)
    assert not any(group.holds(*fp) for fp in [(5, 3), (5, 1), (6, 9), (2**64 - 1, 0), (0, 0)])
    assert snap.groups[("m", "j")].holds(5, 3) and len(snap) == 4
    assert not group.high.flags.writeable and not group.low.flags.writeable   # shared by threads: read-only
