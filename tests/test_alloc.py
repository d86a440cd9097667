"""Allocator settings: applied once, never raising, leaving an explicit choice alone."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline import alloc

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def fresh_cache() -> Iterator[None]:
    alloc.pin_mmap_threshold.cache_clear()
    yield
    alloc.pin_mmap_threshold.cache_clear()


def test_pin_mmap_threshold_returns_a_bool_and_is_done_once() -> None:
    first = alloc.pin_mmap_threshold()
    assert isinstance(first, bool)
    if sys.platform.startswith("linux") and alloc._is_glibc():
        assert first is True
    assert alloc.pin_mmap_threshold() is first  # cached: mallopt is not called again


def test_not_glibc_is_a_quiet_no(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_", raising=False)
    monkeypatch.setattr(alloc.sys, "platform", "darwin")
    assert alloc.pin_mmap_threshold() is False


def test_musl_is_a_quiet_no(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_such_name(name: str) -> str:
        raise ValueError("unrecognized configuration name")

    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_", raising=False)
    monkeypatch.setattr(alloc.sys, "platform", "linux")
    monkeypatch.setattr(alloc.os, "confstr", no_such_name)
    assert alloc.pin_mmap_threshold() is False


def test_a_threshold_chosen_in_the_environment_is_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "65536")
    assert alloc.pin_mmap_threshold() is False
    alloc.pin_mmap_threshold.cache_clear()
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_")
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.mmap_threshold=65536")
    assert alloc.pin_mmap_threshold() is False


def run_child(code: str, **env: str) -> str:
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                            text=True, timeout=60, cwd=REPO, env={**os.environ, **env})
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_arrow_uses_the_system_pool_once_asked() -> None:
    # A fresh process: the pool is process-wide.
    out = run_child("""
        import pyarrow as pa
        from pipeline.alloc import use_system_arrow_pool
        before = pa.default_memory_pool().backend_name
        print(use_system_arrow_pool(), use_system_arrow_pool(), before != "system",
              pa.default_memory_pool().backend_name)
    """)
    assert out == "True True True system"


def test_an_arrow_pool_chosen_in_the_environment_is_kept() -> None:
    out = run_child("""
        import pyarrow as pa
        from pipeline.alloc import use_system_arrow_pool
        before = pa.default_memory_pool().backend_name
        print(use_system_arrow_pool(), pa.default_memory_pool().backend_name == before)
    """, ARROW_DEFAULT_MEMORY_POOL="mimalloc")
    assert out == "False True"


def test_a_parquet_read_switches_the_pool_only_when_the_run_command_asked(tmp_path: Path) -> None:
    path = tmp_path / "in.parquet"
    code = f"""
        import pyarrow as pa, pyarrow.parquet as pq
        from pipeline import alloc
        from pipeline.readers import read_records
        pq.write_table(pa.table({{"prompt": ["a", "b"]}}), {str(path)!r})
        before = pa.default_memory_pool().backend_name
        list(read_records({str(path)!r}))
        as_library = pa.default_memory_pool().backend_name == before
        alloc.prefer_system_arrow_pool()
        list(read_records({str(path)!r}))
        print(before != "system", as_library, pa.default_memory_pool().backend_name)
    """
    assert run_child(code) == "True True system"


def _one_row(tmp_path: Path) -> Path:
    source = tmp_path / "in.jsonl"
    source.write_text('{"id": "a", "prompt": "hello"}\n', encoding="utf-8")
    return source


async def test_a_run_as_a_library_leaves_the_process_allocator_alone(tmp_path: Path) -> None:
    from run_options import run_options

    from pipeline.app import run
    from pipeline.fake_space import FakeSpaceConfig, run_fake_space

    async with run_fake_space(FakeSpaceConfig(gradio_major=4, latency=0.0)) as space:
        outcome = await run(run_options(input=str(_one_row(tmp_path)),
                                       output=str(tmp_path / "out.jsonl"),
                                       errors=str(tmp_path / "errors.jsonl"),
                                       urls=(space.url,), progress=False))
    assert outcome.exit_code == 0
    assert alloc.pin_mmap_threshold.cache_info().misses == 0  # never asked for


def test_the_run_command_pins_the_threshold_for_its_process(tmp_path: Path, threaded_space) -> None:
    from click.testing import CliRunner

    from pipeline.cli import main

    result = CliRunner().invoke(main, ["run", str(_one_row(tmp_path)), "--url", threaded_space.url,
                                       "--no-progress"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert alloc.pin_mmap_threshold.cache_info().misses == 1
