"""Through a real authenticating forward proxy (mitmproxy's ``mitmdump --proxyauth``).

Plain HTTP is proxied request by request; HTTPS goes through a CONNECT tunnel to a
local TLS fake Space whose CA is given with ``--ca-bundle``. Both give exact results;
a wrong password stops the run at once (exit 4, no row failed); and the password, in
every spelling it can take, never shows in stdout, stderr, output, errors or summary.
Skipped without ``QWEN_BATCH_MITMDUMP`` (see tests/proxy_servers.py).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import ThreadedFakeSpace
from proxy_servers import (
    Mitmdump,
    ThreadedTLSSpace,
    free_port,
    make_tls_files,
    mitmdump,
    mitmdump_or_skip,
    run_cli,
)
from yarl import URL

from pipeline.fake_space import FakeSpaceConfig, fake_answer
from pipeline.prompts import DEFAULT_SYSTEM_PROMPT

pytestmark = pytest.mark.proxy

USER = "batch"
# As written in the proxy URL: %7E is "~" once decoded, which is what the proxy checks,
# and what aiohttp and yarl print (normalised) in their errors.
PASSWORD_IN_URL = "s3cret%7EPASS"
PASSWORD = "s3cret~PASS"
WRONG_IN_URL = "wr0ng%7EPASS"
ROWS = 6


def spellings(password_in_url: str) -> set[str]:
    """Every form the password may take: raw, decoded, encoded again, as yarl normalises it."""
    url = URL(f"http://{USER}:{password_in_url}@127.0.0.1:1")
    decoded = url.password or ""
    return {password_in_url, decoded, decoded.replace("~", "%7E"), password_in_url.replace("%", "%25"),
            url.raw_password or "", str(url).split("@")[0].split(":")[-1]}


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mitmdump]:
    executable = mitmdump_or_skip()
    with mitmdump(executable, tmp_path_factory.mktemp("mitm"), f"{USER}:{PASSWORD}") as running:
        yield running


@pytest.fixture(scope="module")
def tls_space(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ThreadedTLSSpace, Path]]:
    tls = make_tls_files(tmp_path_factory.mktemp("tls"))
    with ThreadedTLSSpace(tls) as space:
        yield space, tls.ca


@pytest.fixture
def http_space() -> Iterator[ThreadedFakeSpace]:
    with ThreadedFakeSpace(FakeSpaceConfig(gradio_major=4, latency=0.05, chunks=5)) as space:
        yield space


def write_prompts(tmp_path: Path) -> Path:
    path = tmp_path / "in.jsonl"
    path.write_text("".join(json.dumps({"id": f"r{i}", "prompt": f"question {i}"}) + "\n"
                            for i in range(ROWS)))
    return path


def expected() -> dict[str, str]:
    return {f"r{i}": fake_answer(f"question {i}", DEFAULT_SYSTEM_PROMPT) for i in range(ROWS)}


def completions(tmp_path: Path) -> dict[str, str]:
    lines = (tmp_path / "in.jsonl.completions.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert len(records) == len({r["id"] for r in records}), "duplicate rows"
    return {r["id"]: r["completion"] for r in records}


def run_args(tmp_path: Path, url: str, *extra: str) -> list[str]:
    return ["-vv", "run", str(write_prompts(tmp_path)), "--url", url, "--no-progress",
            "--summary", str(tmp_path / "summary.json"), "--concurrency", "3", *extra]


def everything(tmp_path: Path, *results: object) -> str:
    text = "".join(getattr(r, "stdout", "") + getattr(r, "stderr", "") for r in results)
    return text + "".join(p.read_text(errors="replace") for p in tmp_path.iterdir() if p.is_file())


def assert_no_secret(text: str, password_in_url: str) -> None:
    for spelling in spellings(password_in_url):
        assert spelling not in text, spelling


def test_http_through_the_proxy_is_exact(tmp_path: Path, proxy: Mitmdump,
                                          http_space: ThreadedFakeSpace) -> None:
    result = run_cli(*run_args(tmp_path, http_space.url, "--proxy", proxy.url(USER, PASSWORD_IN_URL)))
    assert result.code == 0, result.stderr
    assert completions(tmp_path) == expected()
    assert f"POST {http_space.url}/queue/join" in proxy.log()  # it did go through the proxy
    assert_no_secret(everything(tmp_path, result), PASSWORD_IN_URL)


def test_https_through_a_connect_tunnel_with_ca_bundle_is_exact(
        tmp_path: Path, proxy: Mitmdump, tls_space: tuple[ThreadedTLSSpace, Path]) -> None:
    space, ca = tls_space
    result = run_cli(*run_args(tmp_path, space.url, "--proxy", proxy.url(USER, PASSWORD_IN_URL),
                               "--ca-bundle", str(ca)))
    assert result.code == 0, result.stderr
    assert completions(tmp_path) == expected()
    assert space.url.removeprefix("https://") in proxy.log()  # the tunnel's target
    assert_no_secret(everything(tmp_path, result), PASSWORD_IN_URL)


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_wrong_password_stops_at_once_with_no_row_failed_and_no_leak(
        tmp_path: Path, proxy: Mitmdump, http_space: ThreadedFakeSpace,
        tls_space: tuple[ThreadedTLSSpace, Path], scheme: str) -> None:
    url = http_space.url if scheme == "http" else tls_space[0].url
    # The proxy refuses the CONNECT before any TLS: no --ca-bundle needed for the 407.
    result = run_cli(*run_args(tmp_path, url, "--proxy", proxy.url(USER, WRONG_IN_URL),
                               "--max-attempts", "2"),
                     timeout=120)
    assert result.code == 4, result.stderr
    # 407 cannot get better by waiting: well under the default 60 s --connect-grace.
    assert result.elapsed < 30, result.elapsed
    assert "407" in result.stderr and "Traceback" not in result.stderr
    assert result.stderr.count("STOPPED EARLY") == 1
    errors_file = tmp_path / "in.jsonl.completions.errors.jsonl"
    assert not errors_file.exists() or errors_file.read_text() == ""
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["failed"] == 0 and "407" in summary["endpoint_down"]
    assert_no_secret(everything(tmp_path, result), WRONG_IN_URL)


def test_proxy_from_the_environment_and_no_proxy(tmp_path: Path, proxy: Mitmdump,
                                                 http_space: ThreadedFakeSpace) -> None:
    good = proxy.url(USER, PASSWORD_IN_URL)
    joins = f"POST {http_space.url}/queue/join"
    before = proxy.log().count(joins)
    by_env = run_cli(*run_args(tmp_path, http_space.url), env={"HTTP_PROXY": good})
    assert by_env.code == 0, by_env.stderr
    assert completions(tmp_path) == expected()
    through = proxy.log().count(joins)
    assert through >= before + ROWS  # every row went through the proxy named by HTTP_PROXY

    (tmp_path / "in.jsonl.completions.jsonl").unlink()
    direct = run_cli(*run_args(tmp_path, http_space.url),
                     env={"HTTP_PROXY": good, "NO_PROXY": "127.0.0.1"})
    assert direct.code == 0, direct.stderr
    assert completions(tmp_path) == expected()
    assert proxy.log().count(joins) == through  # NO_PROXY: straight to the Space

    (tmp_path / "in.jsonl.completions.jsonl").unlink()
    dead = f"http://{USER}:{PASSWORD_IN_URL}@127.0.0.1:{free_port()}"
    flag_wins = run_cli(*run_args(tmp_path, http_space.url, "--proxy", good),
                        env={"HTTP_PROXY": dead})
    assert flag_wins.code == 0, flag_wins.stderr
    assert completions(tmp_path) == expected()
    assert proxy.log().count(joins) >= through + ROWS
    assert_no_secret(everything(tmp_path, by_env, direct, flag_wins), PASSWORD_IN_URL)
