"""load_config (TOML option defaults) and env_name."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.config import ENV_PREFIX, env_name, load_config
from pipeline.errors import ConfigError

KNOWN = ["url", "concurrency", "max_attempts", "hf_token", "keep", "limit", "no_progress",
         "retry_delay"]


def write(tmp_path: Path, text: str, name: str = "job.toml") -> str:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return str(path)


def test_top_level_keys(tmp_path: Path) -> None:
    path = write(tmp_path, 'url = "http://127.0.0.1:1"\nconcurrency = 3\nkeep = ["a", "b"]\n'
                           "retry_delay = 0.5\nno_progress = true\n")
    assert load_config(path, "run", KNOWN) == {
        "url": "http://127.0.0.1:1", "concurrency": 3, "keep": ["a", "b"], "retry_delay": 0.5,
        "no_progress": True,
    }


def test_run_table_and_the_table_wins(tmp_path: Path) -> None:
    path = write(tmp_path, "concurrency = 2\nlimit = 10\n[run]\nconcurrency = 8\n")
    assert load_config(path, "run", KNOWN) == {"concurrency": 8, "limit": 10}


def test_table_wins_whatever_the_spelling(tmp_path: Path) -> None:
    path = write(tmp_path, "max-attempts = 2\n[run]\nmax_attempts = 5\n")
    assert load_config(path, "run", KNOWN) == {"max_attempts": 5}
    path = write(tmp_path, "max_attempts = 2\n[run]\nmax-attempts = 6\n")
    assert load_config(path, "run", KNOWN) == {"max_attempts": 6}


def test_dashes_and_underscores_are_the_same_key(tmp_path: Path) -> None:
    path = write(tmp_path, 'hf-token = "t"\nmax-attempts = 3\nno-progress = true\n'
                           "[run]\nretry-delay = 2.0\n")
    assert load_config(path, "run", KNOWN) == {
        "hf_token": "t", "max_attempts": 3, "no_progress": True, "retry_delay": 2.0}


def test_empty_file_gives_nothing(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, "# nothing\n"), "run", KNOWN) == {}


@pytest.mark.parametrize("text", ["concurency = 3\n", "[run]\nconcurency = 3\n"])
def test_unknown_key_names_the_key_and_the_file(tmp_path: Path, text: str) -> None:
    path = write(tmp_path, text, "nightly.toml")
    with pytest.raises(ConfigError) as info:
        load_config(path, "run", KNOWN)
    message = str(info.value)
    assert "'concurency'" in message and path in message
    assert "concurrency" in message.split("known:")[1]  # the spelling that would work
    assert "max-attempts" in message  # known names are shown with dashes, as on the CLI


def test_bad_toml_is_a_config_error(tmp_path: Path) -> None:
    path = write(tmp_path, "concurrency = = 3\n", "broken.toml")
    with pytest.raises(ConfigError, match="not valid TOML") as info:
        load_config(path, "run", KNOWN)
    assert path in str(info.value)


def test_non_utf8_file_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "latin1.toml"
    path.write_bytes(b'url = "caf\xe9"\n')
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(str(path), "run", KNOWN)


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    path = str(tmp_path / "absent.toml")
    with pytest.raises(ConfigError, match="cannot read config file") as info:
        load_config(path, "run", KNOWN)
    assert path in str(info.value)


def test_unknown_table_is_a_config_error(tmp_path: Path) -> None:
    path = write(tmp_path, "[runn]\nconcurrency = 3\n")
    with pytest.raises(ConfigError, match=r"unknown table \[runn\]") as info:
        load_config(path, "run", KNOWN)
    assert path in str(info.value)


def test_other_commands_tables_are_allowed_and_not_applied(tmp_path: Path) -> None:
    path = write(tmp_path, "concurrency = 2\n[demo]\nlatency = 0.1\n[fake-space]\nport = 7860\n"
                           "[check]\nwhatever = 1\n")
    assert load_config(path, "run", KNOWN) == {"concurrency": 2}


@pytest.mark.parametrize("table", ["fake-space", "fake_space"])
def test_a_dashed_commands_table_is_found_in_either_spelling(tmp_path: Path, table: str) -> None:
    path = write(tmp_path, f"[{table}]\nport = 7000\n")
    assert load_config(path, "fake-space", ["port", "host"]) == {"port": 7000}
    bad = write(tmp_path, f"[{table}]\nprot = 7000\n", "bad.toml")
    with pytest.raises(ConfigError, match="'prot'"):
        load_config(bad, "fake-space", ["port", "host"])


def test_nested_table_in_the_run_table_is_an_unknown_key(tmp_path: Path) -> None:
    path = write(tmp_path, "[run.extra]\nconcurrency = 3\n")
    with pytest.raises(ConfigError, match="'extra'"):
        load_config(path, "run", KNOWN)


def test_env_name() -> None:
    assert env_name("--max-attempts") == "QWEN_BATCH_MAX_ATTEMPTS"
    assert env_name("--hf-token") == "QWEN_BATCH_HF_TOKEN"
    assert env_name("concurrency") == "QWEN_BATCH_CONCURRENCY"
    assert env_name("-o") == "QWEN_BATCH_O"
    assert env_name("--max-consecutive-failures").startswith(ENV_PREFIX)
    assert ENV_PREFIX == "QWEN_BATCH_"


def test_both_spellings_of_one_key_is_an_error(tmp_path) -> None:
    from pipeline.config import load_config
    from pipeline.errors import ConfigError

    path = tmp_path / "c.toml"
    path.write_text("max-attempts = 2\nmax_attempts = 3\n")
    with pytest.raises(ConfigError, match="'max-attempts' and 'max_attempts'"):
        load_config(str(path), "run", ["max_attempts"])
