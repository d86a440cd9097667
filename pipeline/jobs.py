"""From input records to the rows a run must do: prompts built, duplicates caught, done rows skipped."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace

from .digests import DigestSet, digest128, key_digest
from .errors import InputError
from .models import Failure, PromptRow, RawRecord
from .rowspec import RowSpec, build_prompt_row


class KeySet:
    """A set of ``(id, sample)`` keys stored as 128-bit digests, so memory stays small.

    A hit is not confirmed on the full key: at 128 bits a false hit (a row wrongly
    taken as done) is ~n²/2¹²⁹ likely, under 1e-20 for a billion keys.
    """

    __slots__ = ("_digests",)

    def __init__(self, keys: Iterable[tuple[str, int]] = ()) -> None:
        self._digests = DigestSet(key_digest(i, s) for i, s in keys)

    def add(self, row_id: str, sample: int = 0) -> None:
        """Add the key ``(row_id, sample)``."""
        self._digests.add(key_digest(row_id, sample))

    def __contains__(self, key: tuple[str, int]) -> bool:
        return key_digest(key[0], key[1]) in self._digests

    def __len__(self) -> int:
        return len(self._digests)


@dataclass
class PlanCounters:
    """What :func:`plan_rows` saw, for the summary and the progress bar."""

    records: int = 0
    skipped_done: int = 0
    input_errors: int = 0
    queued: int = 0
    limited: bool = False


def plan_rows(
    records: Iterable[RawRecord | InputError],
    spec: RowSpec,
    *,
    done: KeySet,
    samples: int = 1,
    limit: int | None = None,
    counters: PlanCounters | None = None,
) -> Iterator[PromptRow | Failure]:
    """Yield the rows still to do and an input :class:`Failure` for each bad record.

    A row whose samples are all in ``done`` is skipped; a partly done row carries
    only its missing sample numbers. A second row with an id already seen is an
    input error. ``limit`` caps the rows yielded for work (skipped and bad rows
    don't count), so ``--limit 100`` runs walk through a file 100 rows at a time.
    """
    counters = counters or PlanCounters()
    seen = DigestSet()  # of ids: 32-64 B a row, less than 128-bit ints in a set
    queued = 0
    # Every item, good or bad, takes the next input position (see read_records). The
    # plan counts positions and queued rows itself: ``counters`` is only a report, and a
    # caller may pass one in already filled.
    for position, item in enumerate(records):
        counters.records += 1
        if isinstance(item, InputError):
            counters.input_errors += 1
            yield Failure(None, position, "input", str(item), 0)
            continue
        try:
            row = build_prompt_row(item, spec)
        except InputError as error:
            counters.input_errors += 1
            yield Failure(_row_id(item, spec), item.position, "input", str(error), 0)
            continue
        digest = digest128(row.id)
        if digest in seen:
            counters.input_errors += 1
            yield Failure(row.id, row.position, "input",
                          f"{row.location}, field {spec.id_field!r}: duplicate id {row.id!r} "
                          "(an earlier row has it; ids must be unique)", 0)
            continue
        seen.add(digest)
        missing = tuple(s for s in range(samples) if (row.id, s) not in done)
        if not missing:
            counters.skipped_done += 1
            continue
        if limit is not None and queued >= limit:
            counters.limited = True
            return
        queued += 1
        counters.queued += 1
        yield row if len(missing) == samples else replace(row, samples=missing)


def _row_id(record: RawRecord, spec: RowSpec) -> str | None:
    value = record.values.get(spec.id_field)
    if isinstance(value, (str, int)) and not isinstance(value, bool) and str(value):
        return str(value)
    return None if spec.id_field in record.values else str(record.position)
