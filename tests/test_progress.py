"""Honest counts on the progress bar: its total, what advances it, what its postfix says."""

from __future__ import annotations

import io
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.errors import InputFileError
from pipeline.readers import count_jsonl_rows, count_rows, read_records

LINES = [b'{"prompt": "a"}\n', b"\n", b"\r\n", b"  \t\n", b'{"prompt": "b"}\r\n', b"not json\n",
         b"   ", b'{"prompt": "c"}', b"\xef\xbb\xbf\n", b"\x0b\x0c\n"]


def _rows_read(path: Path) -> int:
    try:
        return sum(1 for _ in read_records(str(path), "jsonl"))
    except InputFileError:  # "the input has no rows"
        return 0


def test_blank_lines_are_not_rows_of_the_total(tmp_path: Path) -> None:
    # The case: 6 rows and 2 blank lines made a total of 8 ("75% 6/8" at the end).
    path = tmp_path / "in.jsonl"
    path.write_bytes(b"".join([b'{"prompt": "p%d"}\n' % i for i in range(3)] + [b"\n", b"  \n"]
                              + [b'{"prompt": "q%d"}\n' % i for i in range(3)]))
    assert _rows_read(path) == 6
    assert count_rows(str(path), "jsonl") == 6


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(range(len(LINES))), max_size=12))
def test_the_count_is_what_the_reader_reads(picks: list[int]) -> None:
    import tempfile

    data = b"".join(LINES[i] for i in picks)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "in.jsonl"
        path.write_bytes(data)
        expected = _rows_read(path)
        assert count_rows(str(path), "jsonl") == expected, data
        for size in (3, 4, 5, 7, 16):  # block edges inside lines, at newlines, in CRLFs
            assert count_jsonl_rows(io.BytesIO(data), block_size=size) == expected, (data, size)
