"""A resumed run: rows failed before and done now leave the errors file; ``done`` stays small."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, ClassVar

import pytest
from run_options import run_options

import pipeline.app as app
from pipeline.app import run
from pipeline.client import Timeouts
from pipeline.fake_space import FakeSpaceConfig, run_fake_space
from pipeline.fake_space.server import RunningFakeSpace
from pipeline.jobs import KeySet
from pipeline.records import encode_record


@pytest.fixture
async def space() -> AsyncIterator[RunningFakeSpace]:
    async with run_fake_space(FakeSpaceConfig(gradio_major=4, latency=0.0, chunks=2)) as running:
        yield running


class SpyKeySet(KeySet):
    """A KeySet that remembers what was added after it was built."""

    made: ClassVar[list[SpyKeySet]] = []

    def __init__(self, keys: Any = ()) -> None:
        super().__init__(keys)
        self.added: list[tuple[str, int]] = []
        SpyKeySet.made.append(self)

    def add(self, row_id: str, sample: int = 0) -> None:
        self.added.append((row_id, sample))
        super().add(row_id, sample)


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in path.read_text().splitlines()]


async def test_a_row_failed_before_and_done_now_leaves_the_errors_file(
    tmp_path: Path, space: RunningFakeSpace, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = tmp_path / "in.jsonl"
    source.write_text("".join(json.dumps({"id": i, "prompt": f"q {i}"}) + "\n"
                              for i in ("a", "b", "c", "d")))
    out, errors = tmp_path / "out.jsonl", tmp_path / "out.errors.jsonl"
    out.write_bytes(encode_record({"id": "a", "sample": 0, "completion": "earlier"}))
    failed = {"sample": 0, "error_type": "app_error", "error": "boom", "attempts": 4,
              "failed_at": "2000-01-01T00:00:00Z"}
    errors.write_bytes(b"".join(encode_record({**failed, "id": i, "position": p})
                                for i, p in (("b", 1), ("gone", 9), ("a", 0))))
    SpyKeySet.made.clear()
    monkeypatch.setattr(app, "KeySet", SpyKeySet)
    options = run_options(input=str(source), output=str(out), errors=str(errors),
                         urls=(space.url,), progress=False,
                         timeouts=Timeouts(connect=5, read=5, total=20))
    outcome = await run(options)
    assert outcome.exit_code == 0
    assert sorted(r["id"] for r in lines(out)) == ["a", "b", "c", "d"]  # a was skipped
    # b failed before and is done now; a was already done; "gone" is not in this input.
    assert [r["id"] for r in lines(errors)] == ["gone"]
    done, failed_before = SpyKeySet.made
    assert len(failed_before) == 2  # b and gone; a was dropped by the first compaction
    assert done.added == [("b", 0)]  # not c and d: only the keys the errors file needs


async def test_a_first_run_adds_no_key_per_success(
    tmp_path: Path, space: RunningFakeSpace, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = tmp_path / "in.jsonl"
    source.write_text("".join(json.dumps({"id": str(i), "prompt": f"q {i}"}) + "\n"
                              for i in range(20)))
    SpyKeySet.made.clear()
    monkeypatch.setattr(app, "KeySet", SpyKeySet)
    outcome = await run(run_options(input=str(source), output=str(tmp_path / "o.jsonl"),
                                   errors=str(tmp_path / "o.errors.jsonl"), urls=(space.url,),
                                   progress=False, timeouts=Timeouts(connect=5, read=5, total=20)))
    assert outcome.exit_code == 0 and outcome.summary.succeeded == 20
    assert all(s.added == [] and len(s) == 0 for s in SpyKeySet.made)
