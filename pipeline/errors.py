"""The package's one exception tree.

Every error a caller can see from qwen-batch derives from :class:`QwenBatchError`.
Errors of a single request carry ``retryable``: whether the same request, sent
again with a fresh session hash, may reasonably succeed.

    QwenBatchError
    ├── ModelNotFoundError            unknown model name given to the provider
    ├── ConfigError                   bad option or config file (CLI exit 2)
    ├── InputError                    one input row cannot be used (file, line/row, field)
    ├── InputFileError                the input file itself cannot be read (CLI exit 2)
    ├── OutputError                   the output cannot be written or resumed
    ├── LockedError                   another run holds the output's lock
    ├── EndpointDownError             the endpoint is unreachable or keeps failing (CLI exit 4)
    └── RequestError                  one request to the Space failed           [retryable?]
        ├── HTTPStatusError           unexpected HTTP status                    [5xx/429: yes]
        │   ├── QueueFullError        503 "Queue is full"                       [yes]
        │   └── AccessDeniedError     401/403 (token) or 407 (proxy credentials) [no]
        ├── TransportError            connection refused, reset, DNS, TLS…      [yes]
        │   ├── StreamEndedError      stream closed before process_completed    [yes]
        │   └── ConnectError          no connection: refused, DNS, proxy down   [yes]
        │       └── TLSError          TLS handshake or certificate check failed [no]
        ├── TimeoutError_             base of the four timeouts                 [yes]
        │   ├── IdleTimeoutError      generating, but no new text for too long
        │   ├── ReadTimeoutError      nothing at all received for too long
        │   ├── RequestTimeoutError   config, join or stream headers not answered in time
        │   └── AttemptTimeoutError   the whole attempt took too long
        ├── ServerError               unexpected_error message from the server  [yes]
        ├── AppError                  process_completed success:false           [yes]
        ├── CancelledJobError         the server reports the job as cancelled   [yes]
        ├── IncompleteResponseError   empty, too short, or still generating     [yes]
        ├── SpaceUnavailableError     the Space is sleeping, building or gone   [waking: yes]
        ├── ProtocolError             bad JSON or a message of the wrong shape  [yes]
        │   └── StreamDivergedError   streamed text is not a prefix of the final answer
        ├── ResponseTooLargeError     the answer exceeds the configured cap     [no]
        ├── InvalidEndpointError      the URL itself is unusable                [no]
        └── DiscoveryError            the Space has no usable model_chat endpoint [no]
"""

from __future__ import annotations


class QwenBatchError(Exception):
    """Root of every error raised by qwen-batch."""


class ModelNotFoundError(QwenBatchError, ValueError):
    """The provider was asked for a model it does not serve."""


class ConfigError(QwenBatchError):
    """An option or configuration file is invalid."""


class InputFileError(QwenBatchError):
    """The input file as a whole cannot be opened or read."""


class InputError(QwenBatchError):
    """One input row cannot be turned into a request.

    ``location`` names the file and line (JSONL) or row (Parquet); ``field`` the
    offending column, when there is one.
    """

    error_type = "input"

    def __init__(self, message: str, *, location: str = "", field: str | None = None) -> None:
        self.location = location
        self.field = field
        prefix = location
        if field:
            prefix = f"{prefix}, field {field!r}" if prefix else f"field {field!r}"
        super().__init__(f"{prefix}: {message}" if prefix else message)


class OutputError(QwenBatchError):
    """The output (or errors) file cannot be written, read back or repaired."""


class LockedError(QwenBatchError):
    """Another run is writing to the same output."""


class EndpointDownError(QwenBatchError):
    """The endpoint is unreachable or keeps failing; the run stopped early."""


class EngineUnavailableError(QwenBatchError):
    """The engine (a Ray cluster) could not be joined or did not start in time: exit 4."""


class RequestError(QwenBatchError):
    """One request to the Space failed.

    ``retryable`` says whether sending it again (with a fresh session hash) may
    succeed; ``retry_after`` is the server's wait hint in seconds, if it gave one.
    """

    retryable: bool = True
    error_type: str = "request"

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class HTTPStatusError(RequestError):
    """The server answered with an HTTP status we cannot use."""

    error_type = "http_status"

    def __init__(
        self, message: str, *, status: int, retry_after: float | None = None
    ) -> None:
        super().__init__(message, retry_after=retry_after)
        self.status = status
        self.retryable = status == 429 or (status >= 500 and status != 501)


class QueueFullError(HTTPStatusError):
    """The Space's queue is full (HTTP 503); come back later."""

    error_type = "queue_full"


class AccessDeniedError(HTTPStatusError):
    """401/403 (the Space refuses the token) or 407 (the proxy refuses its credentials).

    Sending the same request again cannot help; an endpoint that answers only this
    was never usable, and the run stops early (exit 4) instead of failing rows.
    """

    error_type = "access_denied"


class TransportError(RequestError):
    """The connection failed: refused, reset, DNS, TLS, or a broken body."""

    error_type = "transport"


class ConnectError(TransportError):
    """No connection could be made: refused, DNS failure, connect timeout, proxy unreachable.

    Retryable (a Space restarting refuses connections for a while); an endpoint that
    never got past this in a run is stopped after ``--connect-grace``.
    """

    error_type = "connect"


class TLSError(ConnectError):
    """The TLS handshake or the certificate check failed; a retry meets the same certificate."""

    retryable = False
    error_type = "tls"


class StreamEndedError(TransportError):
    """The event stream ended before the server said the job was complete."""

    error_type = "stream_ended"


class TimeoutError_(RequestError):  # the underscore avoids shadowing the builtin
    """Base of the four request timeouts."""

    error_type = "timeout"


class IdleTimeoutError(TimeoutError_):
    """Generation had started but no new text arrived within the idle timeout."""

    error_type = "idle_timeout"


class ReadTimeoutError(TimeoutError_):
    """Nothing at all, not even a heartbeat, arrived within the read timeout."""

    error_type = "read_timeout"


class RequestTimeoutError(TimeoutError_):
    """A short exchange (``/config``, ``queue/join``, the data stream's headers) was not
    answered within the request timeout."""

    error_type = "request_timeout"


class AttemptTimeoutError(TimeoutError_):
    """The attempt (queue wait included) took longer than the total timeout."""

    error_type = "attempt_timeout"


class ServerError(RequestError):
    """The server sent ``unexpected_error`` (unknown session, server stopping...)."""

    error_type = "server_error"


class AppError(RequestError):
    """The Space's function failed: ``process_completed`` with ``success: false``.

    The Space hides the reason (``error: null``) unless it enables verbose errors,
    and its upstream failures are usually transient, so this is retryable.
    """

    error_type = "app_error"


class CancelledJobError(RequestError):
    """The server completed the job as cancelled (no output)."""

    error_type = "cancelled"


class IncompleteResponseError(RequestError):
    """The job completed, but the answer is empty, too short, or marked still generating."""

    error_type = "incomplete"


class SpaceUnavailableError(RequestError):
    """The Hugging Face host says the Space is not running.

    ``state`` is what it said: ``sleeping`` or ``building`` (it will come back:
    retryable) or ``error``/``gone`` (a runtime error or a deleted Space: not).
    """

    error_type = "space_unavailable"

    def __init__(self, message: str, *, state: str, retry_after: float | None = None) -> None:
        super().__init__(message, retry_after=retry_after)
        self.state = state
        self.retryable = state in ("sleeping", "building")


class ProtocolError(RequestError):
    """A message could not be decoded or did not have the expected shape."""

    error_type = "protocol"


class StreamDivergedError(ProtocolError):
    """Text already yielded is not a prefix of the final answer."""

    error_type = "stream_diverged"


class ResponseTooLargeError(RequestError):
    """The answer grew past the configured size cap."""

    retryable = False
    error_type = "response_too_large"


class InvalidEndpointError(RequestError):
    """The endpoint URL is malformed or not HTTP(S); no retry can fix it."""

    retryable = False
    error_type = "invalid_endpoint"


class DiscoveryError(RequestError):
    """The Space's config has no usable ``model_chat`` endpoint."""

    retryable = False
    error_type = "discovery"
