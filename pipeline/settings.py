"""The run's settings, each with its default written here and nowhere else.

Plain frozen dataclasses, picklable (distributed engines ship them to each actor):

* :class:`ClientSettings`: how to reach the endpoints (URLs, proxy, token, CA bundle,
  :class:`Timeouts`, the answer cap);
* :class:`BatchSettings`: how the batch core runs the rows (concurrency, retries as a
  :class:`~pipeline.retry.RetryPolicy`, pacing, run control, circuit breakers);
* :class:`EngineSettings`: which engine runs them and how it is laid out.

The command line (:mod:`pipeline.cli`), the TOML file (``configs/default.toml``) and the
environment build these; their defaults are read from here (:func:`default_of`), and
tests check that the CLI's and the TOML file's defaults agree with them. A field that
none of them sets says ``internal:`` in its docstring.
"""

from __future__ import annotations

from dataclasses import MISSING, dataclass, field, fields
from typing import Any

from .retry import RetryPolicy

__all__ = ["DEFAULT_MODEL", "DEFAULT_URL", "MAX_RECORD_BYTES", "BatchSettings", "ClientSettings", "EngineSettings",
           "RetryPolicy", "Timeouts", "default_of"]

DEFAULT_MODEL = "qwen-qwen2-72b-instruct"
"""The model the Space serves (and the provider's ``default_model``)."""

DEFAULT_URL = "https://qwen-qwen2-72b-instruct.hf.space"
"""The public Space."""

MAX_RECORD_BYTES = 1_000_000
"""``--max-record-bytes``: the largest accepted input line or row (readers' default too)."""


def default_of(cls: type, name: str) -> Any:
    """The default of field ``name`` of the dataclass ``cls`` (a factory's value, if it has one)."""
    for item in fields(cls):
        if item.name == name:
            if item.default is not MISSING:
                return item.default
            if item.default_factory is not MISSING:
                return item.default_factory()
            raise LookupError(f"{cls.__name__}.{name} has no default")
    raise LookupError(f"{cls.__name__} has no field {name!r}")


@dataclass(frozen=True, slots=True)
class Timeouts:
    """The limits of one attempt, in seconds; every wait of a request falls under one.

    ``connect``: establishing a connection (TCP and TLS). ``request``: a short
    exchange, counted from the moment it starts: ``/config`` and ``queue/join``
    answered in full, the data stream's response headers, the body of an error
    answer. ``read``: nothing at all received, counted from the moment a request
    starts and then between reads (heartbeats come every 15 s, so keep it above
    that); a short exchange is cut at the smaller of ``request`` and ``read``.
    ``idle``: generation started but no new text (heartbeats prove the
    connection, not the model). ``total``: the whole attempt, queue wait included.
    """

    connect: float = 10.0
    read: float = 60.0
    idle: float = 120.0
    total: float = 900.0
    request: float = 20.0

    def __post_init__(self) -> None:
        for name in ("connect", "read", "idle", "total", "request"):
            if getattr(self, name) <= 0:
                raise ValueError(f"timeout {name!r} must be positive")

    @property
    def exchange(self) -> float:
        """The bound of a short exchange (``/config``, join, stream headers, error body)."""
        return min(self.request, self.read)


@dataclass(frozen=True, slots=True)
class ClientSettings:
    """How to reach the endpoints: one client per URL, all alike.

    The token and the proxy (which may hold a password) are kept out of the repr:
    Ray may print an actor's configuration.
    """

    urls: tuple[str, ...] = (DEFAULT_URL,)
    """``--url``: one or more deployments of the Space sharing the work."""
    proxy: str | None = field(default=None, repr=False)
    """``--proxy``; without it HTTP(S)_PROXY/NO_PROXY decide."""
    hf_token: str | None = field(default=None, repr=False)
    """``--hf-token`` (or HF_TOKEN): sent as a bearer token, never logged."""
    ca_bundle: str | None = None
    """``--ca-bundle``: a PEM file of the certificates to trust instead of the system's."""
    timeouts: Timeouts = field(default_factory=Timeouts)
    """``--timeout``, ``--idle-timeout``, ``--read-timeout``, ``--request-timeout``,
    ``--connect-timeout``."""
    max_response_chars: int | None = None
    """``--max-response-chars``: fail a row whose answer grows past this (None: no cap)."""

    def __post_init__(self) -> None:
        if not self.urls:
            raise ValueError("at least one endpoint URL is needed")


@dataclass(frozen=True, slots=True)
class BatchSettings:
    """Knobs of one batch run.

    ``concurrency`` is the ceiling of requests in flight; with ``adaptive`` the
    run stays below it as the Space's queue demands. ``rate`` caps request starts
    per second (retries included). ``deadline`` (seconds from the start) stops
    new requests; those in flight get ``grace`` seconds more, then are cancelled.
    ``failure_threshold``/``probe_cooldown``/``max_outage`` tune the endpoints'
    circuit breakers; ``connect_grace`` is how long endpoints that were never
    reached are tried.
    """

    concurrency: int = 4
    policy: RetryPolicy = field(default_factory=RetryPolicy)
    """``--max-attempts``, ``--retry-delay``, ``--retry-max-delay`` (``max_hint`` is internal)."""
    samples: int = 1
    rate: float | None = None
    model: str = DEFAULT_MODEL
    max_consecutive_failures: int = 20
    seed: int | None = None
    """internal: seeds the backoff jitter, for reproducible tests."""
    adaptive: bool = True
    """The inverse of ``--fixed-concurrency``."""
    min_chars: int = 1
    deadline: float | None = None
    grace: float = 60.0
    failure_threshold: int = 5
    """Failures in a row that bench an endpoint (its circuit breaker opens)."""
    probe_cooldown: float = 2.0
    """Seconds a benched endpoint waits before its first probe (doubling up to a cap)."""
    max_outage: float = 600.0
    connect_grace: float = 60.0
    limit: int | None = None
    """``--limit``: at most this many rows per run; applied by the planner, not run_batch."""

    def __post_init__(self) -> None:
        if self.concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        if self.samples < 1:
            raise ValueError("samples must be at least 1")
        if self.rate is not None and self.rate <= 0:
            raise ValueError("rate must be positive")


@dataclass(frozen=True, slots=True)
class EngineSettings:
    """Which engine runs the planned rows, and its layout (see :mod:`pipeline.engines`).

    New engine knobs (start or connect timeouts, say) are fields here with their
    default; the CLI option takes its default with :func:`default_of`.
    """

    kind: str = "local"
    """``--engine``: ``local`` (this process) or ``ray`` (Ray Data actors)."""
    address: str | None = None
    """``--address``: the Ray cluster to join; None: a private local Ray for the run."""
    actors: int = 2
    """``--actors``: Ray actors, each one pooled session and its own in-flight limit."""
    per_actor_concurrency: int | None = None
    """``--per-actor-concurrency``; None: the batch's concurrency shared out among the actors."""
    connect_timeout: float = 30.0
    """``--engine-connect-timeout``: seconds to join the cluster at ``address``."""
    start_timeout: float = 120.0
    """``--engine-start-timeout``: seconds for a distributed engine's first worker to start."""

    def per_actor(self, concurrency: int) -> int:
        """Requests in flight per actor, given the run's ``concurrency``."""
        if self.per_actor_concurrency:
            return self.per_actor_concurrency
        return max(1, concurrency // max(1, self.actors))
