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
    """What :func:`plan_rows` saw, for the summary and the progress bar.

    Rows: every record read is bad input, already done, or queued (the one a limit
    held back is read but none of these). Jobs are rows times samples: ``jobs`` queued
    and ``done_jobs`` (samples of the rows read that are already in the output).
    """

    records: int = 0
    skipped_done: int = 0
    input_errors: int = 0
    queued: int = 0
    limited: bool = False
    jobs: int = 0
    done_jobs: int = 0
    exhausted: bool = False
    """The input was read to its end: ``queued`` and ``jobs`` are final."""

    def expected_jobs(self, input_rows: int | None, *, samples: int, done_keys: int,
                      limit: int | None) -> int | None:
        """The jobs this run will send: exact once the plan has ended, else an estimate.

        ``input_rows`` is the input's row count from a cheap pre-pass (None: unknown),
        ``done_keys`` the ``(id, sample)`` keys of the output. The rows not read yet are
        taken as ``samples`` jobs each, less the done keys not met yet, capped by what
        ``limit`` leaves; bad rows ahead are the only error, and each read corrects it.
        """
        if self.exhausted or self.limited:
            return self.jobs
        if input_rows is None:
            return None
        _, unread = self.unread_estimate(input_rows, samples=samples, done_keys=done_keys)
        if limit is not None:
            unread = min(unread, max(limit - self.queued, 0) * samples)
        return self.jobs + unread

    def unread_estimate(self, input_rows: int, *, samples: int, done_keys: int
                        ) -> tuple[int, int]:
        """Rows and jobs still to do in the part of the input not read yet, estimated.

        Each unread row is taken as to do, less the done keys not met yet (``samples``
        of them a row); bad or duplicate rows ahead make it too high.
        """
        unread_rows = max(input_rows - self.records, 0)
        unmet = max(done_keys - self.done_jobs, 0)
        return (max(unread_rows - unmet // samples, 0),
                max(unread_rows * samples - unmet, 0))


class Plan(Iterator[PromptRow | Failure]):
    """The rows a run must do (see :func:`plan_rows`), and :meth:`rest` past a limit."""

    def __init__(self, items: Iterator[PromptRow | Failure], *, samples: int,
                 limit: int | None, counters: PlanCounters) -> None:
        self._items = items
        self._samples = samples
        self._limit = limit
        self._counters = counters
        self._queued = 0  # this plan's own: a caller may pass counters already filled
        self._held: PromptRow | None = None
        self._limited = False

    def __iter__(self) -> Plan:
        return self

    def __next__(self) -> PromptRow | Failure:
        if self._limited:
            raise StopIteration
        item = next(self._items)
        if isinstance(item, PromptRow):
            if self._limit is not None and self._queued >= self._limit:
                self._held, self._limited = item, True
                self._counters.limited = True
                raise StopIteration
            self._queued += 1
            self._counters.queued += 1
            self._counters.jobs += len(item.samples) if item.samples else self._samples
        return item

    def held_back(self) -> tuple[int, int]:
        """The rows and jobs of the row read past the limit and held for the next run
        (read, so not in the unread part of the input; not queued either)."""
        if self._held is None:
            return 0, 0
        return 1, len(self._held.samples) if self._held.samples else self._samples

    def rest(self) -> Iterator[PromptRow | Failure]:
        """What is left after the limit (or a stop), planned the same way but not counted.

        For counting what remains: the rows come from the same reader, ids and done set,
        so duplicates and numbered ids stay what they would be in the next run.
        """
        if self._held is not None:
            held, self._held = self._held, None
            yield held
        yield from self._items

    def close(self) -> None:
        """Stop planning (the records stay open: they are the caller's to close)."""
        close = getattr(self._items, "close", None)
        if close is not None:
            close()


def plan_rows(
    records: Iterable[RawRecord | InputError],
    spec: RowSpec,
    *,
    done: KeySet,
    samples: int = 1,
    limit: int | None = None,
    counters: PlanCounters | None = None,
) -> Plan:
    """Yield the rows still to do and an input :class:`Failure` for each bad record.

    A row whose samples are all in ``done`` is skipped; a partly done row carries
    only its missing sample numbers. A second row with an id already seen is an
    input error; identical rows without an id field are numbered instead
    (:class:`RowIds`). ``limit`` caps the rows yielded for work (skipped and bad rows
    don't count), so ``--limit 100`` runs walk through a file 100 rows at a time.
    """
    counters = counters or PlanCounters()
    return Plan(_plan(records, spec, done, samples, counters), samples=samples, limit=limit,
                counters=counters)


def _plan(
    records: Iterable[RawRecord | InputError],
    spec: RowSpec,
    done: KeySet,
    samples: int,
    counters: PlanCounters,
) -> Iterator[PromptRow | Failure]:
    ids = RowIds()
    # Every item, good or bad, takes the next input position (see read_records). The
    # plan counts positions itself: ``counters`` is only a report.
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
        counters.done_jobs += samples - len(missing)
        if not missing:
            counters.skipped_done += 1
            continue
        yield row if len(missing) == samples else replace(row, samples=missing)
    counters.exhausted = True


def _row_id(record: RawRecord, spec: RowSpec) -> str | None:
    value = record.values.get(spec.id_field)
    if isinstance(value, (str, int)) and not isinstance(value, bool) and str(value):
        return str(value)
    return None  # no usable id: the errors file keys it by position
