"""Compact sets of 128-bit digests: 32-64 B a key instead of ~100 B for ints in a ``set``."""

from __future__ import annotations

import hashlib
from array import array
from collections.abc import Iterable, Iterator

_MAX = (1 << 128) - 1
_LOW = (1 << 64) - 1
_MIN_SLOTS = 16


def _encode(text: str) -> bytes:
    return text.encode("utf-8", "surrogatepass")  # lone surrogates from JSON escapes allowed


def digest64(text: str) -> int:
    """8 bytes of BLAKE2b of ``text`` as an int: for fingerprints, never for set membership."""
    return int.from_bytes(hashlib.blake2b(_encode(text), digest_size=8).digest(), "big")


def digest128(text: str) -> int:
    """16 bytes of BLAKE2b of ``text`` as an int (lone surrogates allowed).

    A collision among 2**48 distinct texts is ~2e-10 likely: a hit in a set of these
    is taken as the same text, with no look at the full key.
    """
    return int.from_bytes(hashlib.blake2b(_encode(text), digest_size=16).digest(), "big")


def key_digest(row_id: str, sample: int) -> int:
    """The 128-bit digest of an output key ``(id, sample)``: how every key set stores it."""
    return digest128(f"{row_id}\x00{sample}")


class DigestSet:
    """A grow-only set of 128-bit unsigned ints in an open-addressing table (``array('Q')``).

    Each slot is two 8-byte words (high, low). Linear probing from the low bits, so
    keys must be well mixed (hash digests are); the table doubles when it would pass
    half full, so it holds 32-64 B a key. A slot of two zero words means empty; the
    key 0 itself is kept in a flag, so membership is exact.
    """

    __slots__ = ("_has_zero", "_len", "_mask", "_table")

    def __init__(self, items: Iterable[int] = ()) -> None:
        self._table = array("Q", bytes(16 * _MIN_SLOTS))
        self._mask = _MIN_SLOTS - 1
        self._len = 0
        self._has_zero = False
        for item in items:
            self.add(item)

    def add(self, digest: int) -> None:
        """Add ``digest`` (0 <= digest < 2**128); ValueError outside that range."""
        if not 0 <= digest <= _MAX:
            raise ValueError(f"not a 128-bit unsigned digest: {digest!r}")
        if digest == 0:
            if not self._has_zero:
                self._has_zero = True
                self._len += 1
            return
        high, low = digest >> 64, digest & _LOW
        table, mask = self._table, self._mask
        slot = low & mask
        while True:
            at = 2 * slot
            if table[at + 1] == low and table[at] == high:
                return
            if table[at + 1] == 0 and table[at] == 0:
                break
            slot = (slot + 1) & mask
        table[at], table[at + 1] = high, low
        self._len += 1
        if 4 * self._len > len(table):  # more than half of len(table) // 2 slots
            self._grow()

    def _grow(self) -> None:
        old = self._table
        size = len(old)  # twice the old slot count, in slots
        table = array("Q", bytes(16 * size))
        mask = size - 1
        for at in range(0, len(old), 2):
            high, low = old[at], old[at + 1]
            if high or low:
                slot = low & mask
                while table[2 * slot] or table[2 * slot + 1]:
                    slot = (slot + 1) & mask
                table[2 * slot], table[2 * slot + 1] = high, low
        self._table, self._mask = table, mask

    def __contains__(self, digest: object) -> bool:
        if not isinstance(digest, int) or not 0 <= digest <= _MAX:
            return False
        if digest == 0:
            return self._has_zero
        high, low = digest >> 64, digest & _LOW
        table, mask = self._table, self._mask
        slot = low & mask
        while True:
            at = 2 * slot
            stored_low = table[at + 1]
            if stored_low == low and table[at] == high:
                return True
            if stored_low == 0 and table[at] == 0:
                return False
            slot = (slot + 1) & mask

    def __len__(self) -> int:
        return self._len

    def __iter__(self) -> Iterator[int]:
        if self._has_zero:
            yield 0
        table = self._table
        for at in range(0, len(table), 2):
            if table[at] or table[at + 1]:
                yield (table[at] << 64) | table[at + 1]

    @property
    def nbytes(self) -> int:
        """Bytes held by the table (for memory reports)."""
        return self._table.itemsize * len(self._table)
