"""Proxy URLs checked up front, the environment's proxies, and secrets in every spelling."""

from __future__ import annotations

import aiohttp
import pytest
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from pipeline import errors
from pipeline.http_errors import make_redactor, map_transport_error
from pipeline.proxies import bypasses_proxy, check_proxy, mask_proxy, proxy_for, secret_spellings

PASSWORD = "s3cret%7EPASS"
SPELLINGS = ("s3cret%7EPASS", "s3cret~PASS", "s3cret%257EPASS")


@pytest.mark.parametrize("good", [
    "http://127.0.0.1:3128", "http://user:pw@proxy.corp:8080", "https://proxy.corp:443",
    "http://proxy.corp", "HTTP://Proxy.Corp:3128/", "http://[::1]:3128",
])
def test_valid_proxies_pass(good: str) -> None:
    assert check_proxy(good) == good


@pytest.mark.parametrize(("bad", "why"), [
    (f"user:{PASSWORD}@proxy:3128", "no scheme"),
    ("proxy:3128", "no scheme"),
    (f"ftp://user:{PASSWORD}@proxy:21", "scheme must be http or https"),
    (f"socks5://user:{PASSWORD}@proxy:1080", "scheme must be http or https"),
    (f"http://user:{PASSWORD}@proxy:port", "port must be a number"),
    (f"http://user:{PASSWORD}@proxy:70000", "port must be a number"),
    (f"http://user:{PASSWORD}@proxy:0", "port must be a number"),
    (f"http://user:{PASSWORD}@:3128", "no host"),
    (f"http://user:{PASSWORD}@proxy:3128/path", "no path"),
    ("", "no scheme"),
])
def test_malformed_proxies_are_config_errors_that_never_echo_the_password(bad: str, why: str) -> None:
    with pytest.raises(errors.ConfigError) as info:
        check_proxy(bad)
    message = str(info.value)
    assert why in message
    assert "--proxy" in message
    for spelling in SPELLINGS:
        assert spelling not in message


def test_mask_proxy_hides_only_the_password() -> None:
    assert mask_proxy("http://bob:pw@h:1") == "http://bob:***@h:1"
    assert mask_proxy("bob:pw@h:1") == "bob:***@h:1"
    assert mask_proxy("http://h:1/x") == "http://h:1/x"
    assert mask_proxy("http://bob@h:1") == "http://bob@h:1"


@pytest.mark.parametrize("name", ["HTTP_PROXY", "http_proxy"])
def test_http_proxy_variable_is_used_for_http_urls(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    monkeypatch.setenv(name, "http://u:p@proxy.corp:3128")
    assert proxy_for("http://space.test") == ("http://u:p@proxy.corp:3128", "HTTP_PROXY")
    assert proxy_for("https://space.test") == (None, "")  # HTTPS_PROXY is another variable


def test_https_proxy_variable_for_https_urls_and_all_proxy_as_fallback(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "http://secure.corp:3128")
    monkeypatch.setenv("ALL_PROXY", "http://all.corp:3128")
    assert proxy_for("https://space.test") == ("http://secure.corp:3128", "HTTPS_PROXY")
    assert proxy_for("http://space.test") == ("http://all.corp:3128", "ALL_PROXY")


def test_lowercase_variable_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTP_PROXY", "http://upper:1")
    monkeypatch.setenv("http_proxy", "http://lower:1")
    assert proxy_for("http://space.test")[0] == "http://lower:1"


def test_explicit_proxy_wins_over_the_environment_and_no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTP_PROXY", "http://env:1")
    monkeypatch.setenv("NO_PROXY", "*")
    assert proxy_for("http://space.test", "http://flag:2") == ("http://flag:2", "--proxy")


@pytest.mark.parametrize(("no_proxy", "host", "bypass"), [
    ("127.0.0.1", "127.0.0.1", True),
    ("127.0.0.1:7860", "127.0.0.1", True),
    ("localhost,127.0.0.1", "127.0.0.1", True),
    ("127.0.0.0/8", "127.0.0.1", True),
    ("10.0.0.0/8", "127.0.0.1", False),
    ("localhost", "127.0.0.1", False),
    ("*", "space.test", True),
    ("space.test", "space.test", True),
    ("space.test", "api.space.test", True),
    (".space.test", "api.space.test", True),
    ("space.test", "notspace.test", False),
    (" hf.space , other ", "x.hf.space", True),
    ("::1", "::1", True),
    ("[::1]:8080", "[::1]", True),
    ("", "space.test", False),
])
def test_no_proxy_rules(no_proxy: str, host: str, bypass: bool) -> None:
    assert bypasses_proxy(host, no_proxy) is bypass


def test_no_proxy_in_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTP_PROXY", "http://env:1")
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    assert proxy_for("http://127.0.0.1:7860") == (None, "NO_PROXY")
    assert proxy_for("http://space.test")[0] == "http://env:1"


def test_malformed_proxy_variable_names_the_variable_and_masks_the_password(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTP_PROXY", f"user:{PASSWORD}@proxy:3128")
    with pytest.raises(errors.ConfigError) as info:
        proxy_for("http://space.test")
    assert "HTTP_PROXY" in str(info.value)
    assert not any(s in str(info.value) for s in SPELLINGS)


def test_every_spelling_of_a_secret_is_known() -> None:
    forms = secret_spellings(PASSWORD)
    assert set(SPELLINGS) <= forms
    # yarl's own rendering of the password inside a URL, whatever it is, is covered.
    url = URL(f"http://user:{PASSWORD}@proxy:3128")
    assert url.raw_password in forms and url.password in forms
    assert "p@ss:w/rd" in secret_spellings("p%40ss%3Aw%2Frd")


@pytest.mark.parametrize("spelling", SPELLINGS)
def test_redactor_removes_every_spelling(spelling: str) -> None:
    redact = make_redactor([PASSWORD])
    assert redact(f"url='http://user:{spelling}@127.0.0.1:3128'") == "url='http://user:***@127.0.0.1:3128'"


def _proxy_error(status: int, password_in_url: str) -> aiohttp.ClientHttpProxyError:
    request = aiohttp.RequestInfo(URL(f"http://user:{password_in_url}@127.0.0.1:3128"), "GET",
                                  CIMultiDictProxy(CIMultiDict()),
                                  URL(f"http://user:{password_in_url}@127.0.0.1:3128"))
    message = {407: "Proxy Authentication Required", 502: "Bad Gateway"}[status]
    return aiohttp.ClientHttpProxyError(request, (), status=status, message=message)


def test_proxy_refusing_credentials_is_access_denied_and_redacted() -> None:
    exc = _proxy_error(407, "s3cret~PASS")  # as aiohttp reports it on the CONNECT path
    assert "s3cret~PASS" in str(exc)
    error = map_transport_error(exc, make_redactor([PASSWORD]))
    assert type(error) is errors.AccessDeniedError
    assert error.status == 407 and not error.retryable
    assert "s3cret" not in str(error)


def test_proxy_failing_to_tunnel_is_a_connect_error() -> None:
    error = map_transport_error(_proxy_error(502, "x"))
    assert type(error) is errors.ConnectError and error.retryable
