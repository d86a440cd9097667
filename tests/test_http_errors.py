"""Every exception aiohttp can raise maps to exactly one of ours."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from pipeline import errors
from pipeline.http_errors import MAPPED_TYPES, make_redactor, map_transport_error


def all_subclasses(cls: type) -> set[type]:
    found = set()
    for sub in cls.__subclasses__():
        found.add(sub)
        found |= all_subclasses(sub)
    return found


AIOHTTP_ERRORS = sorted(
    {aiohttp.ClientError} | {c for c in all_subclasses(aiohttp.ClientError) if c.__module__.startswith("aiohttp")},
    key=lambda c: c.__name__,
)


def bare(cls: type[BaseException]) -> BaseException:
    """An instance without running constructors whose signatures differ by class."""
    exc = cls.__new__(cls)
    exc.args = ()
    return exc


@pytest.mark.parametrize("cls", AIOHTTP_ERRORS, ids=lambda c: c.__name__)
def test_every_aiohttp_error_maps_to_one_of_ours(cls: type[BaseException]) -> None:
    error = map_transport_error(bare(cls))
    assert isinstance(error, errors.RequestError)
    assert isinstance(error, errors.QwenBatchError)
    # "Exactly one": the first matching row wins, so no later row may be more specific.
    matching = [t for t in MAPPED_TYPES if issubclass(cls, t)]
    assert matching, cls
    shadowed = [t for t in matching[1:] if issubclass(t, matching[0]) and t is not matching[0]]
    assert not shadowed, (cls, matching)


@pytest.mark.parametrize(
    ("cls", "expected", "retryable"),
    [
        (aiohttp.ClientPayloadError, errors.StreamEndedError, True),
        (aiohttp.ServerDisconnectedError, errors.StreamEndedError, True),
        (aiohttp.ClientConnectorError, errors.ConnectError, True),
        (aiohttp.ClientConnectorDNSError, errors.ConnectError, True),
        (aiohttp.ClientProxyConnectionError, errors.ConnectError, True),
        (aiohttp.ClientConnectorCertificateError, errors.TLSError, False),
        (aiohttp.ConnectionTimeoutError, errors.ConnectError, True),
        (aiohttp.SocketTimeoutError, errors.ReadTimeoutError, True),
        (aiohttp.ContentTypeError, errors.ProtocolError, True),
        (aiohttp.InvalidURL, errors.InvalidEndpointError, False),
        (aiohttp.NonHttpUrlClientError, errors.InvalidEndpointError, False),
        (aiohttp.ClientOSError, errors.TransportError, True),
        (aiohttp.ClientConnectionResetError, errors.TransportError, True),
    ],
)
def test_notable_mappings(cls: type[BaseException], expected: type, retryable: bool) -> None:
    error = map_transport_error(bare(cls))
    assert type(error) is expected
    assert error.retryable is retryable


def test_response_errors_keep_their_status() -> None:
    exc = bare(aiohttp.ClientResponseError)
    exc.status = 429  # type: ignore[attr-defined]
    error = map_transport_error(exc)
    assert isinstance(error, errors.HTTPStatusError)
    assert error.status == 429 and error.retryable
    exc.status = 400  # type: ignore[attr-defined]
    assert not map_transport_error(exc).retryable


def test_os_errors_and_timeouts() -> None:
    assert type(map_transport_error(ConnectionResetError("reset"))) is errors.TransportError
    assert type(map_transport_error(asyncio.TimeoutError())) is errors.ReadTimeoutError


def test_non_transport_exceptions_are_not_swallowed() -> None:
    with pytest.raises(TypeError):
        map_transport_error(ValueError("a bug"))


def test_secrets_are_redacted_from_messages() -> None:
    redact = make_redactor(["hf_SECRETTOKEN", "pr0xy-pass", None, "ab"])
    exc = aiohttp.ClientConnectionError("cannot reach http://user:pr0xy-pass@proxy:3128 with hf_SECRETTOKEN")
    message = str(map_transport_error(exc, redact))
    assert "pr0xy-pass" not in message and "hf_SECRETTOKEN" not in message
    assert "***" in message
    assert redact("ab stays: too short to be a secret") == "ab stays: too short to be a secret"


@pytest.mark.parametrize("cls", AIOHTTP_ERRORS, ids=lambda c: c.__name__)
def test_every_mapping_is_made_with_its_secrets_already_out(cls: type[BaseException]) -> None:
    said = "via http://user:pr0xy-pass@proxy:3128"
    # The class as it would speak, with the proxy's reason phrase and a status where it has them.
    speaking = type(cls.__name__, (cls,), {"__str__": lambda self: said, "message": said,
                                           "status": 502})
    exc = bare(speaking)
    exc.args = (said,)
    error = map_transport_error(exc, make_redactor(["pr0xy-pass"]))
    assert "pr0xy-pass" not in str(error) and "pr0xy-pass" not in repr(error.args)
    assert "***" in str(error)


# -- connect errors say where and why, in words ---------------------------------------------------


async def test_a_refused_connection_names_the_host_and_port_not_aiohttp_internals(
        unused_tcp_port: int) -> None:
    async with aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.ClientConnectorError) as info:
            await session.get(f"http://127.0.0.1:{unused_tcp_port}/config")
    error = map_transport_error(info.value)
    assert isinstance(error, errors.ConnectError) and error.retryable
    assert str(error) == f"cannot connect to 127.0.0.1:{unused_tcp_port}: connection refused"


def test_a_name_that_does_not_resolve_says_so() -> None:
    import socket
    from types import SimpleNamespace

    key = SimpleNamespace(host="nosuch.invalid", port=443, ssl=True)
    exc = aiohttp.ClientConnectorDNSError(key, socket.gaierror(-2, "Name or service not known"))
    error = map_transport_error(exc)
    assert isinstance(error, errors.ConnectError)
    assert str(error) == ("cannot connect to nosuch.invalid:443: the name does not resolve "
                          "(Name or service not known)")
    assert "ssl" not in str(error)


def test_every_address_refusing_is_still_connection_refused() -> None:
    # "localhost" resolves to ::1 and 127.0.0.1; when both refuse, asyncio raises one
    # OSError without an errno that lists them.
    import errno
    from types import SimpleNamespace

    refused = f"[Errno {errno.ECONNREFUSED}] Connect call failed"
    cause = OSError(f"Multiple exceptions: {refused} ('::1', 8080, 0, 0), "
                    f"{refused} ('127.0.0.1', 8080)")
    key = SimpleNamespace(host="localhost", port=8080, ssl=False)
    error = map_transport_error(aiohttp.ClientConnectorError(key, cause))
    assert str(error) == "cannot connect to localhost:8080: connection refused"
    mixed = OSError(f"Multiple exceptions: {refused} ('::1', 8080, 0, 0), "
                    f"[Errno {errno.ENETUNREACH}] Connect call failed ('10.0.0.1', 8080)")
    error = map_transport_error(aiohttp.ClientConnectorError(key, mixed))
    assert "connection refused" not in str(error) and "Multiple exceptions" in str(error)
    v6 = SimpleNamespace(host="::1", port=8080, ssl=False)
    error = map_transport_error(aiohttp.ClientConnectorError(v6, ConnectionRefusedError(
        errno.ECONNREFUSED, "Connect call failed")))
    assert str(error) == "cannot connect to [::1]:8080: connection refused"
