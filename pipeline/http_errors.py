"""Translate aiohttp's exceptions into ours at the transport boundary.

Nothing of aiohttp escapes the client: every ``aiohttp.ClientError`` (and the
plain ``OSError``/timeouts it can leak) maps to exactly one class of
:mod:`pipeline.errors`, chosen by the first matching row of ``_TABLE``.
"""

from __future__ import annotations

import asyncio
import errno
import socket
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

Redact = Callable[[str], str]


def _keep(text: str) -> str:
    return text


def _describe(exc: BaseException, redact: Redact) -> str:
    text = str(exc) if exc.args else ""
    return redact(f"{type(exc).__name__}: {text}" if text else type(exc).__name__)


def _status(exc: BaseException, redact: Redact) -> RequestError:
    status = int(getattr(exc, "status", 0) or 0)
    if status in (401, 403, 407):
        return AccessDeniedError(f"HTTP {status}: {_describe(exc, redact)}", status=status)
    return HTTPStatusError(f"HTTP {status}: {_describe(exc, redact)}", status=status)


def _tunnel(exc: BaseException, redact: Redact) -> RequestError:
    """The proxy answered CONNECT with something else than 200."""
    status = int(getattr(exc, "status", 0) or 0)
    reason = redact(getattr(exc, "message", "") or "")
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


def _connect(exc: BaseException, redact: Redact) -> RequestError:
    """No connection: the host and port, and why in words (aiohttp's own text says
    ``ssl:default`` even for plain HTTP, and asyncio's ``Connect call failed``)."""
    host, port = getattr(exc, "host", None), getattr(exc, "port", None)
    cause = getattr(exc, "os_error", None)
    if not host or cause is None:
        return ConnectError(f"cannot connect: {_describe(exc, redact)}")
    if isinstance(cause, ConnectionRefusedError) or _all_refused(str(cause)):
        why = "connection refused"
    elif isinstance(cause, socket.gaierror):
        why = f"the name does not resolve ({cause.strerror or cause})"
    else:
        why = cause.strerror or str(cause) or type(cause).__name__
    where = f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
    return ConnectError(redact(f"cannot connect to {where}: {why}"))


_REFUSED = f"[Errno {errno.ECONNREFUSED}]"


def _all_refused(text: str) -> bool:
    """Whether asyncio's error for a host of several addresses (``localhost``: ::1 and
    127.0.0.1) says that each one refused: "Multiple exceptions: [Errno 111] ..., ..."."""
    if not text.startswith("Multiple exceptions: "):
        return False
    parts = text.removeprefix("Multiple exceptions: ").split(", [Errno ")
    return all(("[Errno " + part if i else part).startswith(_REFUSED)
               for i, part in enumerate(parts))


_Factory = Callable[[BaseException, Redact], RequestError]
"""Our error for an aiohttp exception, its text scrubbed by the redactor as it is made."""


def _as(error: Callable[[str], RequestError], what: str) -> _Factory:
    """A factory of ``error("<what>: <the exception, described and redacted>")``."""
    return lambda exc, redact: error(f"{what}: {_describe(exc, redact)}")


# Order matters: the first class that matches wins, so subclasses come first.
_TABLE: tuple[tuple[type[BaseException], _Factory], ...] = (
    (aiohttp.InvalidURL, _as(InvalidEndpointError, "invalid URL")),
    (aiohttp.NonHttpUrlClientError, _as(InvalidEndpointError, "not an HTTP URL")),
    (aiohttp.RedirectClientError, _as(InvalidEndpointError, "bad redirect")),
    (aiohttp.ContentTypeError, _as(ProtocolError, "unexpected content type")),
    (aiohttp.ClientHttpProxyError, _tunnel),
    (aiohttp.ClientResponseError, _status),
    (aiohttp.ClientPayloadError, _as(StreamEndedError, "response body cut short")),
    (aiohttp.ServerDisconnectedError, _as(StreamEndedError, "server closed the connection")),
    (aiohttp.SocketTimeoutError, _as(ReadTimeoutError, "read timed out")),
    (aiohttp.ConnectionTimeoutError, _as(ConnectError, "connect timed out")),
    (aiohttp.ServerTimeoutError, _as(ReadTimeoutError, "server timed out")),
    (aiohttp.ClientProxyConnectionError, _as(ConnectError, "cannot reach the proxy")),
    (aiohttp.ClientSSLError, _as(TLSError, "TLS failure")),
    (aiohttp.ClientConnectorError, _connect),
    (aiohttp.ClientConnectionError, _as(TransportError, "connection failed")),
    (aiohttp.ClientError, _as(TransportError, "HTTP client error")),
    (asyncio.TimeoutError, _as(ReadTimeoutError, "timed out")),
    (OSError, _as(TransportError, "network error")),
)

MAPPED_TYPES: tuple[type[BaseException], ...] = tuple(cls for cls, _ in _TABLE)


def map_transport_error(exc: BaseException, redact: Redact | None = None) -> RequestError:
    """Our error for an aiohttp/OS exception (``redact`` scrubs secrets from the text)."""
    for cls, factory in _TABLE:
        if isinstance(exc, cls):
            return factory(exc, redact or _keep)
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
