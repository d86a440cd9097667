"""DigestSet: an open-addressing table of 128-bit digests that behaves like a set of them."""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.digests import DigestSet, digest64, digest128, key_digest

MAX = (1 << 128) - 1


def test_empty() -> None:
    digests = DigestSet()
    assert len(digests) == 0 and 1 not in digests and 0 not in digests and list(digests) == []


def test_add_contains_and_duplicates() -> None:
    digests = DigestSet([5, 7, 5])
    assert len(digests) == 2
    assert 5 in digests and 7 in digests and 6 not in digests
    digests.add(7)
    assert len(digests) == 2
    assert sorted(digests) == [5, 7]


def test_the_zero_digest_is_a_member_like_any_other() -> None:
    digests = DigestSet()
    digests.add(0)
    digests.add(0)
    assert 0 in digests and len(digests) == 1 and list(digests) == [0]
    digests.add(16)  # would land in slot 0 of a 16-slot table, where 0 means "empty"
    assert 0 in digests and 16 in digests and len(digests) == 2


def test_the_largest_digest_and_values_out_of_range() -> None:
    digests = DigestSet([MAX])
    assert MAX in digests
    for bad in (-1, MAX + 1):
        with pytest.raises(ValueError):
            digests.add(bad)
        assert bad not in digests
    assert "5" not in digests and None not in digests and 5.0 not in digests


def test_collisions_probe_past_each_other() -> None:
    # Same low bits: every key starts at the same slot, at any table size up to 2**32.
    keys = [(i << 32) | 3 for i in range(1, 200)] + [(i << 64) | 3 for i in range(1, 50)]
    digests = DigestSet()
    for count, key in enumerate(keys, 1):
        digests.add(key)
        assert len(digests) == count
    assert all(key in digests for key in keys)
    assert (200 << 32) | 3 not in digests and 3 not in digests
    assert sorted(digests) == sorted(keys)


def test_growth_doubles_at_half_full_and_keeps_every_key() -> None:
    digests = DigestSet()
    start = digests.nbytes
    assert start == 16 * 16
    for key in range(1, 9):  # 8 keys fit 16 slots at load 0.5
        digests.add(key)
    assert digests.nbytes == start
    digests.add(9)
    assert digests.nbytes == 2 * start
    keys = [digest64(str(i)) for i in range(5000)]
    for key in keys:
        digests.add(key)
    assert len(digests) == 5009
    assert all(key in digests for key in keys) and all(k in digests for k in range(1, 10))
    # At most half full, at least a quarter: 32-64 B a key (two 8-byte words a slot).
    assert 32 * len(digests) <= digests.nbytes <= 64 * len(digests)


def test_digest64_is_stable_and_takes_lone_surrogates() -> None:
    assert digest64("a") == digest64("a") != digest64("b")
    assert 0 <= digest64("\ud800") < 1 << 64


def test_keys_differing_only_in_the_high_64_bits_are_different_members() -> None:
    # A hit must mean the same 128-bit key, not just the same low word.
    digests = DigestSet([(1 << 64) | 5])
    assert (1 << 64) | 5 in digests and 5 not in digests and (2 << 64) | 5 not in digests
    digests.add(5)
    assert len(digests) == 2 and sorted(digests) == [5, (1 << 64) | 5]


def test_key_and_text_digests_are_128_bits_wide() -> None:
    # 64-bit keys collide at ~n²/2⁶⁵; 128 bits make a false "done" out of reach.
    assert max(key_digest(str(i), 0).bit_length() for i in range(64)) > 64
    assert max(digest128(str(i)).bit_length() for i in range(64)) > 64
    assert all(0 <= digest128(str(i)) <= MAX for i in range(64))
    assert key_digest("a", 0) != key_digest("a", 1) and digest128("\ud800") != digest128("a")


@settings(max_examples=int(os.environ.get("QWEN_BATCH_PROPERTY_EXAMPLES", "200")), deadline=None,
          derandomize=True, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.one_of(st.integers(0, MAX), st.integers(0, 64),
                          st.integers(0, 40).map(lambda i: (i << 40) | 1),
                          st.integers(0, 40).map(lambda i: (i << 64) | 1)), max_size=300),
       st.lists(st.integers(0, MAX), max_size=20))
def test_behaves_like_a_set(added: list[int], probes: list[int]) -> None:
    digests = DigestSet()
    model: set[int] = set()
    for value in added:
        digests.add(value)
        model.add(value)
        assert len(digests) == len(model)
    assert sorted(digests) == sorted(model)
    for value in [*added, *probes, 0, MAX]:
        assert (value in digests) == (value in model)
