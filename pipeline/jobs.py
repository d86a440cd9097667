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


class RowIds:
    """The ids of a plan's rows in input order: duplicate ids caught, identical rows numbered.

    A row with an id field must have an id no earlier row has. A row without one has
    a content id (:func:`pipeline.rowspec.content_id`), shared by identical rows: the
    first keeps it, the n-th becomes ``<id>#n``, so what is done is counted per
    content and lines may move freely. Memory: 32-64 B an id, plus a dict entry per
    content that repeats.
    """

    __slots__ = ("_repeats", "_seen")

    def __init__(self) -> None:
        self._seen = DigestSet()  # of ids: less than 128-bit ints in a set
        self._repeats: dict[str, int] = {}

    def assign(self, row_id: str, *, derived: bool) -> str | None:
        """The row's final id; None for a duplicate of an explicit id."""
        digest = digest128(row_id)
        if digest not in self._seen:
            self._seen.add(digest)
            return row_id
        if not derived:
            return None
        count = self._repeats.get(row_id, 1)
        while True:  # past any explicit id that already took the name
            count += 1
            numbered = f"{row_id}#{count}"
            digest = digest128(numbered)
            if digest not in self._seen:
                break
        self._repeats[row_id] = count
        self._seen.add(digest)
        return numbered


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
    input error; identical rows without an id field are numbered instead
    (:class:`RowIds`). ``limit`` caps the rows yielded for work (skipped and bad rows
    don't count), so ``--limit 100`` runs walk through a file 100 rows at a time.
    """
    counters = counters or PlanCounters()
    ids = RowIds()
    queued = 0
    # Every item, good or bad, takes the next input position (see read_records). The
    # plan counts positions and queued rows itself: ``counters`` is only a report, and a
    # caller may pass one in already filled.
    for position, item in enumerate(records):
        counters.records += 1
        if isinstance(item, InputError):
            counters.input_errors += 1
            yield Failure(None, position, "input", str(item), 0, location=item.location)
            continue
        try:
            row = build_prompt_row(item, spec)
        except InputError as error:
            counters.input_errors += 1
            yield Failure(_row_id(item, spec), item.position, "input", str(error), 0,
                          location=error.location or item.location)
            continue
        row_id = ids.assign(row.id, derived=spec.id_field not in item.values)
        if row_id is None:
            counters.input_errors += 1
            yield Failure(row.id, row.position, "input",
                          f"{row.location}, field {spec.id_field!r}: duplicate id {row.id!r} "
                          "(an earlier row has it; ids must be unique)", 0, location=row.location)
            continue
        if row_id != row.id:
            row = replace(row, id=row_id)
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
    return None  # no usable id: the errors file keys it by position
