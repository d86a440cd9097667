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
    HTTPStatusError,
    InvalidEndpointError,
    ProtocolError,
    ReadTimeoutError,
    RequestError,
    StreamEndedError,
    TransportError,
)


def _describe(exc: BaseException) -> str:
    text = str(exc) if exc.args else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _status(exc: BaseException) -> RequestError:
    status = getattr(exc, "status", 0) or 0
    return HTTPStatusError(f"HTTP {status}: {_describe(exc)}", status=int(status))


_Factory = Callable[[BaseException], RequestError]

# Order matters: the first class that matches wins, so subclasses come first.
_TABLE: tuple[tuple[type[BaseException], _Factory], ...] = (
    (aiohttp.InvalidURL, lambda e: InvalidEndpointError(f"invalid URL: {_describe(e)}")),
    (aiohttp.NonHttpUrlClientError, lambda e: InvalidEndpointError(f"not an HTTP URL: {_describe(e)}")),
    (aiohttp.RedirectClientError, lambda e: InvalidEndpointError(f"bad redirect: {_describe(e)}")),
    (aiohttp.ContentTypeError, lambda e: ProtocolError(f"unexpected content type: {_describe(e)}")),
    (aiohttp.ClientResponseError, _status),
    (aiohttp.ClientPayloadError, lambda e: StreamEndedError(f"response body cut short: {_describe(e)}")),
    (aiohttp.ServerDisconnectedError, lambda e: StreamEndedError(f"server closed the connection: {_describe(e)}")),
    (aiohttp.SocketTimeoutError, lambda e: ReadTimeoutError(f"read timed out: {_describe(e)}")),
    (aiohttp.ConnectionTimeoutError, lambda e: TransportError(f"connect timed out: {_describe(e)}")),
    (aiohttp.ServerTimeoutError, lambda e: ReadTimeoutError(f"server timed out: {_describe(e)}")),
    (aiohttp.ClientProxyConnectionError, lambda e: TransportError(f"cannot reach the proxy: {_describe(e)}")),
    (aiohttp.ClientSSLError, lambda e: TransportError(f"TLS failure: {_describe(e)}")),
    (aiohttp.ClientConnectorError, lambda e: TransportError(f"cannot connect: {_describe(e)}")),
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
    """A function that replaces every non-empty secret in a text with ``***``."""
    values = sorted({s for s in secrets if s and len(s) >= 4}, key=len, reverse=True)

    def redact(text: str) -> str:
        for value in values:
            text = text.replace(value, "***")
        return text

    return redact
