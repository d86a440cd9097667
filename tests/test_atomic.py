"""replace_atomically: the old file or the new one, never a mix, and nothing left behind."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from pipeline import atomic
from pipeline.atomic import replace_atomically


def test_the_new_content_replaces_the_file(tmp_path: Path) -> None:
    path = tmp_path / "notes.json"
    path.write_bytes(b"old")
    with replace_atomically(str(path)) as handle:
        handle.write(b"new")
    assert path.read_bytes() == b"new"
    assert [p.name for p in tmp_path.iterdir()] == ["notes.json"]


def test_a_file_that_did_not_exist_is_created(tmp_path: Path) -> None:
    path = tmp_path / "fresh.json"
    with replace_atomically(str(path)) as handle:
        handle.write(b"{}")
    assert path.read_bytes() == b"{}"


def test_an_error_while_writing_leaves_the_old_file_and_no_temp_file(tmp_path: Path) -> None:
    path = tmp_path / "errors.jsonl"
    path.write_bytes(b"line 1\n")
    with pytest.raises(RuntimeError, match="disk on fire"), \
            replace_atomically(str(path)) as handle:
        handle.write(b"half of the new")
        raise RuntimeError("disk on fire")
    assert path.read_bytes() == b"line 1\n"
    assert [p.name for p in tmp_path.iterdir()] == ["errors.jsonl"]


def test_a_failed_rename_leaves_the_old_file_and_no_temp_file(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "out.jsonl"
    path.write_bytes(b"kept\n")

    def refuse(src: str, dst: str) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", refuse)
    with pytest.raises(OSError, match="No space left"), replace_atomically(str(path)) as handle:
        handle.write(b"lost\n")
    assert path.read_bytes() == b"kept\n"
    assert [p.name for p in tmp_path.iterdir()] == ["out.jsonl"]


def test_keep_mode_keeps_the_old_files_permissions(tmp_path: Path) -> None:
    path = tmp_path / "shared.jsonl"
    path.write_bytes(b"a\n")
    path.chmod(0o640)
    with replace_atomically(str(path), keep_mode=True) as handle:
        handle.write(b"b\n")
    assert stat.S_IMODE(path.stat().st_mode) == 0o640


def test_a_new_file_gets_the_umasks_mode_not_a_private_one(tmp_path: Path) -> None:
    path = tmp_path / "new.json"
    old = os.umask(0o022)
    try:
        with replace_atomically(str(path)) as handle:
            handle.write(b"x")
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


def test_the_content_and_the_folder_are_synced_before_and_after_the_rename(
        tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "durable.json"
    events: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        events.append("fsync dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "fsync file")
        real_fsync(fd)

    def replace(src: str, dst: str) -> None:
        events.append("rename")
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    with replace_atomically(str(path)) as handle:
        handle.write(b"x")
    assert events == ["fsync file", "rename", "fsync dir"]


def test_a_folder_that_cannot_be_synced_is_not_an_error(tmp_path: Path, monkeypatch) -> None:
    def refuse(fd: int) -> None:
        raise OSError(22, "Invalid argument")

    monkeypatch.setattr(os, "fsync", refuse)
    atomic.fsync_path(str(tmp_path))  # must not raise
    # ... but a file's content that cannot be synced is.
    with pytest.raises(OSError), replace_atomically(str(tmp_path / "f")) as handle:
        handle.write(b"x")
    assert list(tmp_path.iterdir()) == []
