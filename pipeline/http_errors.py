"""Translate aiohttp's exceptions into ours at the transport boundary.

Nothing of aiohttp escapes the client: every ``aiohttp.ClientError`` (and the
plain ``OSError``/timeouts it can leak) maps to exactly one class of
:mod:`pipeline.errors`, chosen by the first matching row of ``_TABLE``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable

import aiohttp

from .errors import (
    AccessDeniedError,
    ConnectError,
    HTTPStatusError,
    InvalidEndpointError,
    ProtocolError,
    ReadTimeoutError,
    RequestError,
    StreamEndedError,
    TLSError,
    TransportError,
)
from .proxies import mask_proxy, secret_spellings


def _describe(exc: BaseException) -> str:
    text = str(exc) if exc.args else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _status(exc: BaseException) -> RequestError:
    status = int(getattr(exc, "status", 0) or 0)
    if status in (401, 403, 407):
        return AccessDeniedError(f"HTTP {status}: {_describe(exc)}", status=status)
    return HTTPStatusError(f"HTTP {status}: {_describe(exc)}", status=status)


def _tunnel(exc: BaseException) -> RequestError:
    """The proxy answered CONNECT with something else than 200."""
    status = int(getattr(exc, "status", 0) or 0)
    reason = getattr(exc, "message", "") or ""
    if status == 407:
        return AccessDeniedError(
            f"HTTP 407 {reason} from the proxy: it refused the proxy credentials", status=407)
    return ConnectError(f"the proxy could not open a tunnel to the endpoint: HTTP {status} {reason}")


def status_error(status: int, text: str, *, retry_after: float | None = None,
                 proxy: str | None = None) -> HTTPStatusError:
    """The error for an HTTP answer ``status`` (``text`` says where and what came back).

    401/403 and 407 get their meaning spelled out: the token, or the credentials of
    ``proxy`` (named with its password masked).
    """
    if status in (401, 403):
        return AccessDeniedError(
            f"{text} (the Space is private or the HF token is not accepted)", status=status)
    if status == 407:
        named = f"the proxy {mask_proxy(proxy)}" if proxy else "the proxy"
        return AccessDeniedError(f"{text} ({named} refused the credentials)", status=status)
    return HTTPStatusError(text, status=status, retry_after=retry_after)


_Factory = Callable[[BaseException], RequestError]

# Order matters: the first class that matches wins, so subclasses come first.
_TABLE: tuple[tuple[type[BaseException], _Factory], ...] = (
    (aiohttp.InvalidURL, lambda e: InvalidEndpointError(f"invalid URL: {_describe(e)}")),
    (aiohttp.NonHttpUrlClientError, lambda e: InvalidEndpointError(f"not an HTTP URL: {_describe(e)}")),
    (aiohttp.RedirectClientError, lambda e: InvalidEndpointError(f"bad redirect: {_describe(e)}")),
    (aiohttp.ContentTypeError, lambda e: ProtocolError(f"unexpected content type: {_describe(e)}")),
    (aiohttp.ClientHttpProxyError, _tunnel),
    (aiohttp.ClientResponseError, _status),
    (aiohttp.ClientPayloadError, lambda e: StreamEndedError(f"response body cut short: {_describe(e)}")),
    (aiohttp.ServerDisconnectedError, lambda e: StreamEndedError(f"server closed the connection: {_describe(e)}")),
    (aiohttp.SocketTimeoutError, lambda e: ReadTimeoutError(f"read timed out: {_describe(e)}")),
    (aiohttp.ConnectionTimeoutError, lambda e: ConnectError(f"connect timed out: {_describe(e)}")),
    (aiohttp.ServerTimeoutError, lambda e: ReadTimeoutError(f"server timed out: {_describe(e)}")),
    (aiohttp.ClientProxyConnectionError, lambda e: ConnectError(f"cannot reach the proxy: {_describe(e)}")),
    (aiohttp.ClientSSLError, lambda e: TLSError(f"TLS failure: {_describe(e)}")),
    (aiohttp.ClientConnectorError, lambda e: ConnectError(f"cannot connect: {_describe(e)}")),
    (aiohttp.ClientConnectionError, lambda e: TransportError(f"connection failed: {_describe(e)}")),
    (aiohttp.ClientError, lambda e: TransportError(f"HTTP client error: {_describe(e)}")),
    (asyncio.TimeoutError, lambda e: ReadTimeoutError(f"timed out: {_describe(e)}")),
    (OSError, lambda e: TransportError(f"network error: {_describe(e)}")),
)

MAPPED_TYPES: tuple[type[BaseException], ...] = tuple(cls for cls, _ in _TABLE)


def map_transport_error(exc: BaseException, redact: Callable[[str], str] | None = None) -> RequestError:
    """Our error for an aiohttp/OS exception (``redact`` scrubs secrets from the text)."""
    for cls, factory in _TABLE:
        if isinstance(exc, cls):
            error = factory(exc)
            if redact is not None:
                error.args = tuple(redact(str(a)) for a in error.args)
            return error
    raise TypeError(f"not a transport exception: {type(exc).__name__}")


def make_redactor(secrets: Iterable[str | None]) -> Callable[[str], str]:
    """A function that replaces every non-empty secret in a text with ``***``.

    Each secret is searched in every spelling it may take on the way out: as given,
    percent-decoded, percent-encoded, and as yarl normalises it inside a URL
    (``s3cret%7EPASS`` shows up as ``s3cret~PASS`` in aiohttp's proxy errors).
    """
    spelled = {form for s in secrets if s for form in secret_spellings(s)}
    values = sorted({s for s in spelled if len(s) >= 4}, key=len, reverse=True)

    def redact(text: str) -> str:
        for value in values:
            text = text.replace(value, "***")
        return text

    return redact
