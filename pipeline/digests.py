"""Compact sets of 64-bit digests: 16-32 B a key instead of ~80 B for ints in a ``set``."""

from __future__ import annotations

import hashlib
from array import array
from collections.abc import Iterable, Iterator

_MAX = (1 << 64) - 1
_MIN_SLOTS = 16


def digest64(text: str) -> int:
    """8 bytes of BLAKE2b of ``text`` as an int (lone surrogates allowed).

    A collision among 2**32 distinct texts is ~1e-10 likely.
    """
    data = text.encode("utf-8", "surrogatepass")
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big")


def key_digest(row_id: str, sample: int) -> int:
    """The digest of an output key ``(id, sample)``: how every key set stores it."""
    return digest64(f"{row_id}\x00{sample}")


class DigestSet:
    """A grow-only set of 64-bit unsigned ints in an open-addressing table (``array('Q')``).

    Linear probing from the low bits, so keys must be well mixed (hash digests are);
    the table doubles when it would pass half full, so it holds 16-32 B a key. Slot
    value 0 means empty; the key 0 itself is kept in a flag, so membership is exact.
    """

    __slots__ = ("_has_zero", "_len", "_mask", "_table")

    def __init__(self, items: Iterable[int] = ()) -> None:
        self._table = array("Q", bytes(8 * _MIN_SLOTS))
        self._mask = _MIN_SLOTS - 1
        self._len = 0
        self._has_zero = False
        for item in items:
            self.add(item)

    def add(self, digest: int) -> None:
        """Add ``digest`` (0 <= digest < 2**64); ValueError outside that range."""
        if not 0 <= digest <= _MAX:
            raise ValueError(f"not a 64-bit unsigned digest: {digest!r}")
        if digest == 0:
            if not self._has_zero:
                self._has_zero = True
                self._len += 1
            return
        table, mask = self._table, self._mask
        slot = digest & mask
        while True:
            value = table[slot]
            if value == digest:
                return
            if value == 0:
                break
            slot = (slot + 1) & mask
        table[slot] = digest
        self._len += 1
        if 2 * self._len > len(table):
            self._grow()

    def _grow(self) -> None:
        old = self._table
        size = 2 * len(old)
        table = array("Q", bytes(8 * size))
        mask = size - 1
        for value in old:
            if value:
                slot = value & mask
                while table[slot]:
                    slot = (slot + 1) & mask
                table[slot] = value
        self._table, self._mask = table, mask

    def __contains__(self, digest: object) -> bool:
        if not isinstance(digest, int) or not 0 <= digest <= _MAX:
            return False
        if digest == 0:
            return self._has_zero
        table, mask = self._table, self._mask
        slot = digest & mask
        while True:
            value = table[slot]
            if value == digest:
                return True
            if value == 0:
                return False
            slot = (slot + 1) & mask

    def __len__(self) -> int:
        return self._len

    def __iter__(self) -> Iterator[int]:
        if self._has_zero:
            yield 0
        yield from (value for value in self._table if value)

    @property
    def nbytes(self) -> int:
        """Bytes held by the table (for memory reports)."""
        return self._table.itemsize * len(self._table)
