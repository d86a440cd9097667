"""What cannot work stops the run early: exit 4 within --connect-grace, one message, no row failed.

Also the proxy and TLS options that decide what can work: ``--proxy`` checked up front,
the environment's proxies, ``--ca-bundle`` and ``SSL_CERT_FILE``. Real processes against
real servers on 127.0.0.1 (a closed port stands for a dead endpoint or proxy).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import ThreadedFakeSpace
from proxy_servers import ThreadedTLSSpace, free_port, make_tls_files, run_cli

from pipeline.fake_space import FakeSpaceConfig, fake_answer
from pipeline.prompts import DEFAULT_SYSTEM_PROMPT

PASSWORD = "s3cret%7EPASS"
SPELLINGS = ("s3cret%7EPASS", "s3cret~PASS", "s3cret%257EPASS")
GRACE = 2.0
# A run that stops "within the grace" also pays for starting Python and reading the
# input: a generous bound that the old behaviour (600 s, or rows burnt) never meets.
SLACK = 20.0


def write_prompts(path: Path, n: int) -> Path:
    path.write_text("".join(json.dumps({"id": f"r{i}", "prompt": f"question {i}"}) + "\n"
                            for i in range(n)))
    return path


def error_records(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def assert_stopped_cleanly(result, tmp_path: Path, *, grace: float = GRACE) -> None:
    """Exit 4 in time, one final message, no traceback, no error record, nothing done."""
    assert result.code == 4, result.stderr
    assert result.elapsed < grace + SLACK, result.elapsed
    assert "Traceback" not in result.stderr
    assert result.stderr.count("STOPPED EARLY") == 1
    assert error_records(tmp_path / "in.jsonl.completions.errors.jsonl") == []
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["failed"] == 0 and summary["succeeded"] == 0
    assert "cannot reach" in summary["endpoint_down"]


def run_args(tmp_path: Path, *extra: str) -> list[str]:
    return ["run", str(tmp_path / "in.jsonl"), "--no-progress", "--summary",
            str(tmp_path / "summary.json"), "--connect-grace", str(GRACE), *extra]


@pytest.mark.parametrize("rows", [1, 2, 30])
def test_dead_endpoint_stops_within_the_grace_and_fails_no_row(tmp_path: Path, rows: int) -> None:
    write_prompts(tmp_path / "in.jsonl", rows)
    dead = f"http://127.0.0.1:{free_port()}"
    result = run_cli(*run_args(tmp_path, "--url", dead, "--max-outage", "600"), timeout=120)
    assert_stopped_cleanly(result, tmp_path)
    assert dead in result.stderr and "connection refused" in result.stderr
    # One warning for the cause, however many attempts were refused.
    assert result.stderr.count("WARNING") <= 1, result.stderr
    # The rows are left for the next run, which does them once the endpoint is back.
    with ThreadedFakeSpace(FakeSpaceConfig(gradio_major=4, latency=0.01, chunks=2)) as space:
        again = run_cli("run", str(tmp_path / "in.jsonl"), "--no-progress", "--url", space.url)
    assert again.code == 0, again.stderr
    done = (tmp_path / "in.jsonl.completions.jsonl").read_text().splitlines()
    assert sorted(json.loads(line)["id"] for line in done) == sorted(f"r{i}" for i in range(rows))


def test_with_one_live_endpoint_a_dead_one_does_not_stop_the_run(tmp_path: Path) -> None:
    write_prompts(tmp_path / "in.jsonl", 6)
    dead = f"http://127.0.0.1:{free_port()}"
    with ThreadedFakeSpace(FakeSpaceConfig(gradio_major=4, latency=0.05, chunks=2)) as space:
        result = run_cli(*run_args(tmp_path, "--url", dead, "--url", space.url))
    assert result.code == 0, result.stderr
    assert len((tmp_path / "in.jsonl.completions.jsonl").read_text().splitlines()) == 6


@pytest.mark.parametrize("how", ["option", "environment"])
def test_dead_proxy_stops_within_the_grace_without_leaking_its_password(
        tmp_path: Path, how: str) -> None:
    write_prompts(tmp_path / "in.jsonl", 3)
    proxy = f"http://user:{PASSWORD}@127.0.0.1:{free_port()}"
    with ThreadedFakeSpace(FakeSpaceConfig(gradio_major=4, latency=0.01, chunks=2)) as space:
        extra = ["--proxy", proxy] if how == "option" else []
        env = {"HTTP_PROXY": proxy} if how == "environment" else {}
        result = run_cli("-vv", *run_args(tmp_path, "--url", space.url, *extra), env=env)
    assert_stopped_cleanly(result, tmp_path)
    assert "cannot reach the proxy" in result.stderr
    everything = result.stdout + result.stderr + "".join(
        p.read_text(errors="replace") for p in tmp_path.iterdir() if p.is_file())
    for spelling in SPELLINGS:
        assert spelling not in everything


def test_the_proxy_option_wins_over_the_environment(tmp_path: Path) -> None:
    write_prompts(tmp_path / "in.jsonl", 1)
    env_port, flag_port = free_port(), free_port()
    with ThreadedFakeSpace(FakeSpaceConfig(gradio_major=4, latency=0.01, chunks=2)) as space:
        result = run_cli(*run_args(tmp_path, "--url", space.url, "--proxy",
                                   f"http://127.0.0.1:{flag_port}"),
                         env={"HTTP_PROXY": f"http://127.0.0.1:{env_port}"})
    assert result.code == 4
    assert f"127.0.0.1:{flag_port}" in result.stderr
    assert f"127.0.0.1:{env_port}" not in result.stderr


@pytest.mark.parametrize("no_proxy", ["127.0.0.1", "localhost,127.0.0.1", "127.0.0.0/8", "*"])
def test_no_proxy_sends_those_hosts_direct(tmp_path: Path, no_proxy: str) -> None:
    write_prompts(tmp_path / "in.jsonl", 2)
    dead_proxy = f"http://user:{PASSWORD}@127.0.0.1:{free_port()}"
    with ThreadedFakeSpace(FakeSpaceConfig(gradio_major=4, latency=0.01, chunks=2)) as space:
        result = run_cli(*run_args(tmp_path, "--url", space.url),
                         env={"http_proxy": dead_proxy, "NO_PROXY": no_proxy})
    assert result.code == 0, result.stderr


@pytest.mark.parametrize("proxy", [
    f"user:{PASSWORD}@proxy.corp:3128",
    f"ftp://user:{PASSWORD}@proxy.corp:21",
    f"socks5://user:{PASSWORD}@proxy.corp:1080",
    f"http://user:{PASSWORD}@proxy.corp:port",
    f"http://user:{PASSWORD}@proxy.corp:99999",
    f"http://user:{PASSWORD}@:3128",
    f"http://user:{PASSWORD}@proxy.corp:3128/some/path",
    "http://proxy corp:3128",
])
@pytest.mark.parametrize("how", ["option", "QWEN_BATCH_PROXY", "HTTP_PROXY", "check"])
def test_malformed_proxy_is_a_usage_error_that_never_echoes_the_password(
        tmp_path: Path, proxy: str, how: str) -> None:
    write_prompts(tmp_path / "in.jsonl", 1)
    url = "http://127.0.0.1:9"  # never contacted: the run must stop before any request
    if how == "check":
        result = run_cli("check", "--url", url, "--proxy", proxy, timeout=60)
    else:
        extra = ["--proxy", proxy] if how == "option" else []
        result = run_cli(*run_args(tmp_path, "--url", url, *extra),
                         env={how: proxy} if how != "option" else {}, timeout=60)
    assert result.code == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert "proxy" in result.stderr.lower()
    for spelling in SPELLINGS:
        assert spelling not in result.stdout + result.stderr
    assert not (tmp_path / "in.jsonl.completions.jsonl").exists()


def test_untrusted_certificate_stops_at_once_and_ca_bundle_or_ssl_cert_file_fixes_it(
        tmp_path: Path) -> None:
    tls = make_tls_files(tmp_path)
    write_prompts(tmp_path / "in.jsonl", 3)
    expected = {f"r{i}": fake_answer(f"question {i}", DEFAULT_SYSTEM_PROMPT) for i in range(3)}
    with ThreadedTLSSpace(tls) as space:
        # Untrusted: a TLS failure cannot get better by waiting, so no grace is spent on it.
        untrusted = run_cli(*run_args(tmp_path, "--url", space.url, "--connect-grace", "600"))
        assert_stopped_cleanly(untrusted, tmp_path, grace=0.0)
        assert "certificate" in untrusted.stderr.lower()

        trusted = run_cli(*run_args(tmp_path, "--url", space.url, "--ca-bundle", str(tls.ca)))
        assert trusted.code == 0, trusted.stderr
        records = [json.loads(x) for x in (tmp_path / "in.jsonl.completions.jsonl").read_text().splitlines()]
        assert {r["id"]: r["completion"] for r in records} == expected

        (tmp_path / "in.jsonl.completions.jsonl").unlink()
        from_env = run_cli(*run_args(tmp_path, "--url", space.url),
                           env={"SSL_CERT_FILE": str(tls.ca)})
        assert from_env.code == 0, from_env.stderr
        records = [json.loads(x) for x in (tmp_path / "in.jsonl.completions.jsonl").read_text().splitlines()]
        assert {r["id"]: r["completion"] for r in records} == expected


@pytest.mark.parametrize("content", [None, "not a certificate\n"])
def test_unusable_ca_bundle_is_a_usage_error(tmp_path: Path, content: str | None) -> None:
    write_prompts(tmp_path / "in.jsonl", 1)
    bundle = tmp_path / "bundle.pem"
    if content is not None:
        bundle.write_text(content)
    result = run_cli(*run_args(tmp_path, "--url", "http://127.0.0.1:9", "--ca-bundle", str(bundle)),
                     timeout=60)
    assert result.code == 2, result.stderr
    assert "--ca-bundle" in result.stderr and "Traceback" not in result.stderr
