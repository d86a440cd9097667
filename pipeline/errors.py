"""The package's one exception tree.

Every error a caller can see from qwen-batch derives from :class:`QwenBatchError`.
Errors of a single request carry ``retryable``: whether the same request, sent
again with a fresh session hash, may reasonably succeed. The class says it, or its
constructor from what it is given; nothing changes it after the error is made. Each
class that gives an ``error_type`` (the errors file's field) also gives its ``remedy``:
one line saying what to do, appended to the record's ``error`` text (:func:`explain`)
and listed in the README's table of error types.

    QwenBatchError
    ├── ModelNotFoundError            unknown model name given to the provider
    ├── ConfigError                   bad option or config file (CLI exit 2)
    ├── InputError                    one input row cannot be used (file, line/row, field)
    ├── InputFileError                the input file itself cannot be read (CLI exit 2)
    ├── OutputError                   the output cannot be written or resumed
    ├── LockedError                   another run holds the output's lock
    ├── EndpointDownError             the endpoint is unreachable or keeps failing (CLI exit 4)
    ├── InternalError                 a bug met while handling one row (the others go on)
    ├── EngineUnavailableError        the engine (a Ray cluster) cannot be joined or start (exit 4)
    └── RequestError                  one request to the Space failed           [retryable?]
        ├── HTTPStatusError           unexpected HTTP status                    [5xx/429: yes]
        │   ├── QueueFullError        503 "Queue is full"                       [yes]
        │   ├── AccessDeniedError     401/403 (token) or 407 (proxy credentials) [no]
        │   ├── RouteNotFoundError    404 on the join                           [route guessed: yes]
        │   └── JoinRejectedError     500 on the join: the request itself is bad [no]
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


CHECK_HINT = " (qwen-batch check --url URL)"
"""Part of several remedies; ``qwen-batch check`` itself leaves it out of its own."""


class InputFileError(QwenBatchError):
    """The input file as a whole cannot be opened or read."""


class InputError(QwenBatchError):
    """One input row cannot be turned into a request.

    ``location`` names the file and line (JSONL) or row (Parquet); ``field`` the
    offending column, when there is one.
    """

    error_type = "input"
    remedy = "fix this row of the input and run again"

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


class InternalError(QwenBatchError):
    """An unexpected exception (a bug) while handling one row; the other rows go on."""

    error_type = "internal"
    remedy = "a bug in qwen-batch: run again to retry the row, and report it with the -vv log"


class EngineUnavailableError(QwenBatchError):
    """The engine (a Ray cluster) could not be joined or did not start in time: exit 4."""


class RequestError(QwenBatchError):
    """One request to the Space failed.

    ``retryable`` says whether sending it again (with a fresh session hash) may
    succeed; ``retry_after`` is the server's wait hint in seconds, if it gave one.
    """

    retryable: bool = True
    error_type: str = "request"
    remedy = "run again to retry the row (rows already done are skipped); -v logs each attempt"

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class HTTPStatusError(RequestError):
    """The server answered with an HTTP status we cannot use."""

    error_type = "http_status"
    remedy = (
        f"check that --url is the Space{CHECK_HINT}; for 429 or 5xx, "
        "run again later or lower --concurrency"
    )

    def __init__(
        self, message: str, *, status: int, retry_after: float | None = None,
        retryable: bool | None = None,
    ) -> None:
        super().__init__(message, retry_after=retry_after)
        self.status = status
        # By the status (429 and 5xx but 501), unless a subclass knows what the answer means.
        self.retryable = (status == 429 or (status >= 500 and status != 501)
                          if retryable is None else retryable)


class QueueFullError(HTTPStatusError):
    """The Space's queue is full (HTTP 503); come back later."""

    error_type = "queue_full"
    remedy = "the Space's queue stayed full: run again later, or lower --concurrency or set --rate"


class AccessDeniedError(HTTPStatusError):
    """401/403 (the Space refuses the token) or 407 (the proxy refuses its credentials).

    Sending the same request again cannot help; an endpoint that answers only this
    was never usable, and the run stops early (exit 4) instead of failing rows.
    """

    error_type = "access_denied"
    remedy = (
        "401/403: give a token the Space accepts (HF_TOKEN or --hf-token); "
        "407: fix the proxy's user and password in --proxy"
    )


class RouteNotFoundError(HTTPStatusError):
    """HTTP 404 on the queue join: the Space has no queue where the client looked.

    ``guessed``: the route came from the default layout, not from the Space's
    ``/config`` (which did not answer). A Space upgraded to Gradio 5+ moved its
    routes under ``/gradio_api``, so the next attempt reads ``/config`` and finds
    them: retryable. A route read from ``/config`` that is not there stays missing.
    """

    def __init__(self, message: str, *, guessed: bool, retry_after: float | None = None) -> None:
        super().__init__(message, status=404, retry_after=retry_after, retryable=guessed)
        self.guessed = guessed


class JoinRejectedError(HTTPStatusError):
    """HTTP 500 on the queue join: the Space rejected the request itself (a wrong
    ``fn_index`` or payload), so sending it again gets the same answer."""

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message, status=500, retry_after=retry_after, retryable=False)


class TransportError(RequestError):
    """The connection failed: refused, reset, DNS, TLS, or a broken body."""

    error_type = "transport"
    remedy = (
        "the connection broke: run again to retry the row; if it keeps happening, check the network and --proxy"
    )


class ConnectError(TransportError):
    """No connection could be made: refused, DNS failure, connect timeout, proxy unreachable.

    Retryable (a Space restarting refuses connections for a while); an endpoint that
    never got past this in a run is stopped after ``--connect-grace``.
    """

    error_type = "connect"
    remedy = f"check --url, --proxy and the network{CHECK_HINT}, then run again"


class TLSError(ConnectError):
    """The TLS handshake or the certificate check failed; a retry meets the same certificate."""

    retryable = False
    error_type = "tls"
    remedy = (
        "give the CA that signs the certificate with --ca-bundle (a company proxy's, say), or fix --url, then run again"
    )


class StreamEndedError(TransportError):
    """The event stream ended before the server said the job was complete."""

    error_type = "stream_ended"
    remedy = (
        "the Space cut the answer short (a restart or overload): run again to retry the row, or lower --concurrency"
    )


class TimeoutError_(RequestError):  # the underscore avoids shadowing the builtin
    """A request took too long (the base of the four timeouts below)."""

    error_type = "timeout"
    remedy = (
        "raise the matching timeout (--timeout, --read-timeout...) or run again to retry the row"
    )


class IdleTimeoutError(TimeoutError_):
    """Generation had started but no new text arrived within the idle timeout."""

    error_type = "idle_timeout"
    remedy = (
        "the answer stalled mid-generation: run again to retry the row, or raise --idle-timeout"
    )


class ReadTimeoutError(TimeoutError_):
    """Nothing at all, not even a heartbeat, arrived within the read timeout."""

    error_type = "read_timeout"
    remedy = (
        "nothing arrived, not even a heartbeat: check the network and --proxy, or raise --read-timeout, then run again"
    )


class RequestTimeoutError(TimeoutError_):
    """A short exchange (``/config``, ``queue/join``, the data stream's headers) was not
    answered within the request timeout."""

    error_type = "request_timeout"
    remedy = (
        "the Space was too slow to answer: run again when it is less busy, or raise --request-timeout"
    )


class AttemptTimeoutError(TimeoutError_):
    """The attempt (queue wait included) took longer than the total timeout."""

    error_type = "attempt_timeout"
    remedy = (
        "the attempt, queue wait included, took too long: raise --timeout or lower --concurrency, then run again"
    )


class ServerError(RequestError):
    """The server sent ``unexpected_error`` (unknown session, server stopping...)."""

    error_type = "server_error"
    remedy = "the Space reported an error of its own (often a restart): run again to retry the row"


class AppError(RequestError):
    """The Space's function failed: ``process_completed`` with ``success: false``.

    The Space hides the reason (``error: null``) unless it enables verbose errors,
    and its upstream failures are usually transient, so this is retryable.
    """

    error_type = "app_error"
    remedy = (
        "the Space's model call failed and it does not say why: run again to retry the row, later if many fail"
    )


class CancelledJobError(RequestError):
    """The server completed the job as cancelled (no output)."""

    error_type = "cancelled"
    remedy = "the Space cancelled the job (a restart or a queue reset): run again to retry the row"


class IncompleteResponseError(RequestError):
    """The job completed, but the answer is empty, too short, or marked still generating."""

    error_type = "incomplete"
    remedy = (
        "the answer was empty or shorter than --min-chars: run again to retry the row, or lower --min-chars"
    )


class SpaceUnavailableError(RequestError):
    """The Hugging Face host says the Space is not running.

    ``state`` is what it said: ``sleeping`` or ``building`` (it will come back:
    retryable) or ``error``/``gone`` (a runtime error or a deleted Space: not).
    """

    error_type = "space_unavailable"
    remedy = (
        "the Space is asleep, building, broken or gone: wait for it (see its page), or point --url at a running copy"
    )

    def __init__(self, message: str, *, state: str, retry_after: float | None = None) -> None:
        super().__init__(message, retry_after=retry_after)
        self.state = state
        self.retryable = state in ("sleeping", "building")


class ProtocolError(RequestError):
    """A message could not be decoded or did not have the expected shape."""

    error_type = "protocol"
    remedy = (
        f"the Space sent what qwen-batch cannot read: check --url{CHECK_HINT}, "
        "then run again to retry the row"
    )


class StreamDivergedError(ProtocolError):
    """Text already yielded is not a prefix of the final answer."""

    error_type = "stream_diverged"
    remedy = "the streamed text changed under the final answer: run again to retry the row"


class ResponseTooLargeError(RequestError):
    """The answer grew past the configured size cap."""

    retryable = False
    error_type = "response_too_large"
    remedy = "raise --max-response-chars, or ask the prompt for a shorter answer"


class InvalidEndpointError(RequestError):
    """The endpoint URL is malformed or not HTTP(S); no retry can fix it."""

    retryable = False
    error_type = "invalid_endpoint"
    remedy = "fix --url: it must be an http:// or https:// URL of the Space"


class DiscoveryError(RequestError):
    """The Space's config has no usable ``model_chat`` endpoint."""

    retryable = False
    error_type = "discovery"
    remedy = (
        f"--url is not the Qwen2 chat Space (no model_chat endpoint): fix it{CHECK_HINT}"
    )


def error_types() -> dict[str, type[QwenBatchError]]:
    """Every ``error_type`` a record can carry, with the class that gives it, in tree order."""
    found: dict[str, type[QwenBatchError]] = {}

    def walk(cls: type[QwenBatchError]) -> None:
        error_type = vars(cls).get("error_type")
        if isinstance(error_type, str):
            found[error_type] = cls
        for sub in cls.__subclasses__():
            walk(sub)

    walk(QwenBatchError)
    return found


def remedy(error_type: str) -> str:
    """What to do about a failure of ``error_type`` (a generic line for an unknown type)."""
    cls = error_types().get(error_type)
    return str(getattr(cls, "remedy", RequestError.remedy)) if cls else RequestError.remedy


REMEDY_SEPARATOR = " — "


def explain(error_type: str, message: str) -> str:
    """``"<what happened> — <what to do>"``; unchanged if ``message`` already says it.

    Idempotent, so a record read back and written again (the Ray engine's results,
    say) never carries the remedy twice.
    """
    suffix = REMEDY_SEPARATOR + remedy(error_type)
    return message if message.endswith(suffix) else message + suffix
