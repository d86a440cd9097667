"""The errors file: one record per failed row, the latest per row, none for rows since done."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from .atomic import replace_atomically
from .errors import OutputError
from .jobs import KeySet
from .jsonl import iter_jsonl_records
from .records import encode_record


def failure_key(record: Mapping[str, Any]) -> tuple[str, int]:
    """A failure's identity: its id, or its input position for bad input.

    Bad input is keyed by position: a duplicate id must not share a key with the
    row that rightly holds that id (and is done).
    """
    record_id = record.get("id")
    by_position = record_id is None or record.get("error_type") == "input"
    key = f"@{record.get('position')}" if by_position else str(record_id)
    return key, int(record.get("sample") or 0)


def compact_errors(
    path: str,
    done: KeySet,
    *,
    reread_below: int = 0,
    run_started: str | None = None,
    remaining: KeySet | None = None,
) -> int:
    """Rewrite ``path`` keeping the newest record per row and dropping rows now done.

    Runs at the start and end of every run, so re-running a job never piles up
    stale or repeated error records. Bad-input records from before ``run_started``
    (ISO time) at positions below ``reread_below`` are dropped too: this run read
    those rows again and re-reported them if they are still bad. The rewrite is
    atomic (temp file + rename); returns how many records remain. The keys of the
    records that remain are added to ``remaining`` if given (the rows a run retries).
    """
    if path == "-" or not os.path.exists(path):
        return 0
    latest: dict[tuple[str, int], dict[str, Any]] = {}
    for record in iter_jsonl_records(path):
        key = failure_key(record)
        latest.pop(key, None)  # re-insert so the file keeps the order of the newest failures
        if key in done or _reread(record, reread_below, run_started):
            continue
        latest[key] = record
    try:
        with replace_atomically(path, keep_mode=True) as handle:
            for record in latest.values():
                handle.write(encode_record(record))
    except OSError as exc:
        raise OutputError(f"cannot rewrite the errors file {path}: {exc.strerror or exc}") from exc
    if remaining is not None:
        for row_id, sample in latest:
            remaining.add(row_id, sample)
    return len(latest)


def _reread(record: Mapping[str, Any], reread_below: int, run_started: str | None) -> bool:
    if run_started is None or record.get("error_type") != "input":
        return False
    position = record.get("position")
    failed_at = record.get("failed_at")
    return (isinstance(position, int) and position < reread_below
            and isinstance(failed_at, str) and failed_at < run_started)
