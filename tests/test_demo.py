"""`qwen-batch demo` as a user gets it: samples from the package, a fixed work folder that resumes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from importlib.resources import files
from pathlib import Path

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib
from click.testing import CliRunner

import pipeline
from pipeline.cli import main

FAST = ["--latency", "0.02"]


def sample_ids() -> list[str]:
    text = (files("pipeline") / "samples" / "prompts.jsonl").read_text(encoding="utf-8")
    return sorted(json.loads(line)["id"] for line in text.splitlines())


def read_ids(path: Path) -> list[str]:
    return sorted(json.loads(line)["id"] for line in path.read_text(encoding="utf-8").splitlines())


def demo(cache: Path, *args: str):
    env = {"XDG_CACHE_HOME": str(cache)}
    return CliRunner().invoke(main, ["demo", *FAST, *args], env=env, catch_exceptions=False)


def test_the_samples_ship_inside_the_package() -> None:
    ids = sample_ids()
    assert len(ids) == len(set(ids)) >= 10
    assert {"flaky-connection", "busy-queue", "app-hiccup"} <= set(ids)  # the faults the help promises


def test_pyproject_ships_every_bundled_sample_as_package_data() -> None:
    """The wheel's own file list is checked by .ci/wheel-demo.sh; this is the cheap guard."""
    pyproject = Path(__file__).resolve().parents[1] / "pyproject.toml"
    patterns = tomllib.loads(pyproject.read_text(encoding="utf-8"))["tool"]["setuptools"]["package-data"]
    package = Path(pipeline.__file__).parent
    bundled = {p.relative_to(package) for p in (package / "samples").iterdir()}
    shipped = {p.relative_to(package) for pattern in patterns["pipeline"] for p in package.glob(pattern)}
    assert bundled and bundled <= shipped


def test_demo_resumes_in_a_fixed_folder_of_the_user_cache(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    work = cache / "qwen-batch" / "demo"
    first = demo(cache)
    assert first.exit_code == 0, first.output
    assert str(work) in first.output
    assert read_ids(work / "prompts.jsonl.completions.jsonl") == sample_ids()

    second = demo(cache)
    assert second.exit_code == 0, second.output
    assert f"nothing to do: all {len(sample_ids())} rows already done" in second.output
    assert f"Resumed: {len(sample_ids())} rows were already done" in second.output
    assert read_ids(work / "prompts.jsonl.completions.jsonl") == sample_ids()  # nothing done twice

    fresh = demo(cache, "--fresh")
    assert fresh.exit_code == 0, fresh.output
    assert "Resumed" not in fresh.output and "skipped     0 rows" in fresh.output
    assert read_ids(work / "prompts.jsonl.completions.jsonl") == sample_ids()


def test_output_dir_overrides_the_cache_folder(tmp_path: Path) -> None:
    cache, elsewhere = tmp_path / "cache", tmp_path / "mine"
    result = demo(cache, "--output-dir", str(elsewhere))
    assert result.exit_code == 0, result.output
    assert read_ids(elsewhere / "prompts.jsonl.completions.jsonl") == sample_ids()
    assert not (cache / "qwen-batch").exists()


def test_demo_help_tells_where_it_works_and_how_to_start_over() -> None:
    text = CliRunner().invoke(main, ["demo", "--help"]).output
    assert "~/.cache/qwen-batch/demo" in text and "XDG_CACHE_HOME" in text
    assert "--fresh" in text and "resume" in text.lower()


@pytest.mark.parametrize(
    ("environ", "platform", "expected"),
    [
        ({"XDG_CACHE_HOME": "/x/cache"}, "linux", "/x/cache/qwen-batch/demo"),
        ({"XDG_CACHE_HOME": "/x/cache"}, "darwin", "/x/cache/qwen-batch/demo"),
        ({"XDG_CACHE_HOME": "relative/cache"}, "linux", "/home/u/.cache/qwen-batch/demo"),  # XDG: ignore
        ({"XDG_CACHE_HOME": ""}, "linux", "/home/u/.cache/qwen-batch/demo"),
        ({}, "linux", "/home/u/.cache/qwen-batch/demo"),
        ({}, "darwin", "/home/u/Library/Caches/qwen-batch/demo"),
        ({"LOCALAPPDATA": "/w/Local"}, "win32", "/w/Local/qwen-batch/Cache/demo"),
        ({}, "win32", "/home/u/AppData/Local/qwen-batch/Cache/demo"),
    ],
)
def test_demo_work_dir_per_platform(environ: dict[str, str], platform: str, expected: str) -> None:
    from pipeline.demo import demo_work_dir

    assert demo_work_dir(environ, platform, Path("/home/u")) == Path(expected)


def test_demo_runs_from_a_copy_of_the_package_with_nothing_beside_it(tmp_path: Path) -> None:
    """As from a wheel: only the package in site-packages, the command run from an unrelated folder."""
    site = tmp_path / "site"
    shutil.copytree(Path(pipeline.__file__).parent, site / "pipeline",
                    ignore=shutil.ignore_patterns("__pycache__"))
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site), "XDG_CACHE_HOME": str(tmp_path / "cache")}
    where = subprocess.run([sys.executable, "-c", "import pipeline; print(pipeline.__file__)"],
                           capture_output=True, text=True, timeout=30, cwd=cwd, env=env)
    assert where.stdout.strip() == str(site / "pipeline" / "__init__.py")  # the copy, not the checkout
    result = subprocess.run([sys.executable, "-m", "pipeline", "demo", *FAST], capture_output=True,
                            text=True, timeout=60, cwd=cwd, env=env)
    assert result.returncode == 0, result.stderr
    assert read_ids(tmp_path / "cache" / "qwen-batch" / "demo" / "prompts.jsonl.completions.jsonl") == sample_ids()
