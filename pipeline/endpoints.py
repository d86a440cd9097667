"""Several endpoints of the same app, each behind a circuit breaker.

Requests go to the healthy endpoint that is expected to answer soonest
(``(in flight + 1) * average latency``). An endpoint that fails several times in
a row is benched (its circuit opens), probed with one request after a cooldown
that doubles on every failed probe, and put back when a probe succeeds. When
every endpoint has been out for longer than ``max_outage`` (or is gone for good),
:meth:`EndpointPool.acquire` raises :class:`~pipeline.errors.EndpointDownError`.

An endpoint that has never answered in this run is judged apart: while it only
refuses connections, fails DNS or TLS, or denies access (401/403/407), the attempts
it spoils are not the rows' fault (:meth:`EndpointPool.release` says so, and the
runner sends the row again without counting the attempt). Access denied or a TLS
failure puts it out at once; otherwise it is probed until ``connect_grace`` seconds
after the first attempt. When no endpoint was ever reached, that is the end of the
run: ``EndpointDownError`` naming each URL and its cause.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

from .clock import LOOP_CLOCK, Clock, wait_event
from .errors import (
    AccessDeniedError,
    ConnectError,
    DiscoveryError,
    EndpointDownError,
    HTTPStatusError,
    InvalidEndpointError,
    QueueFullError,
    ServerError,
    SpaceUnavailableError,
    TimeoutError_,
    TransportError,
)
from .models import Completion, RequestTrace
from .settings import BatchSettings

log = logging.getLogger(__name__)

State = Literal["closed", "open", "half_open", "gone"]


class Completer(Protocol):
    """Anything that answers one prompt; :class:`~pipeline.client.GradioQueueClient` does."""

    async def complete(
        self, prompt: str, system: str | None = None, *, trace: RequestTrace | None = None
    ) -> Completion: ...
_EWMA = 0.2


def endpoint_failure(error: BaseException) -> Literal["gone", "down", None]:
    """Whether ``error`` says the endpoint is gone, down, or (None) that only the row failed."""
    if isinstance(error, (DiscoveryError, InvalidEndpointError)):
        return "gone"
    if isinstance(error, SpaceUnavailableError):
        return "down" if error.retryable else "gone"
    if isinstance(error, QueueFullError):
        return None  # alive and busy: concurrency control handles it
    if isinstance(error, AccessDeniedError):
        return "down"  # the token or the proxy credentials stopped working
    if isinstance(error, HTTPStatusError):
        return "down" if error.status >= 500 or error.status == 429 else None
    if isinstance(error, (TransportError, TimeoutError_, ServerError)):
        return "down"
    return None


def cannot_connect(error: BaseException) -> bool:
    """Whether ``error`` means no exchange with the endpoint took place (no connection, no access)."""
    return isinstance(error, (ConnectError, AccessDeniedError))


@dataclass
class Endpoint:
    """One deployment and what we know of its health."""

    completer: Completer
    url: str
    state: State = "closed"
    failures: int = 0
    cooldown: float = 0.0
    open_until: float = 0.0
    outage_since: float | None = None
    probing: bool = False
    in_flight: int = 0
    ewma_ms: float | None = None
    served: int = 0
    failed: int = 0
    last_error: str = ""
    reached: bool = False
    """Whether it has answered anything in this run (even an error of its own)."""
    warned: set[str] = field(default_factory=set)
    """The causes of failure already logged: a warning per cause, not per attempt."""

    def score(self) -> float:
        return (self.in_flight + 1) * (self.ewma_ms or 1000.0)


class Attempt:
    """One request on one endpoint: ``async with pool.attempt() as attempt:``.

    Entering takes the endpoint (and whatever else the pool holds for an attempt),
    waiting while every circuit is open; the body sends the request through
    :meth:`complete`; leaving gives everything back exactly once, with the verdict:
    released with the body's error (or None), or abandoned when the body was
    cancelled. When the error was the endpoint's alone (never reached),
    :attr:`not_reached` is True and the error still propagates. An attempt is entered
    once; there is no other way to take an endpoint for a request, so none to forget
    to give it back. ``avoid`` (the endpoint a row's last attempt failed on) is
    passed over while another endpoint is healthy.
    """

    __slots__ = ("_avoid", "_pool", "_stage", "duration_ms", "endpoint", "not_reached", "probe",
                 "queue_rank")

    def __init__(self, pool: EndpointPool, avoid: Endpoint | None = None) -> None:
        self._pool = pool
        self._avoid = avoid
        self._stage = 0  # 0: new, 1: holding an endpoint, 2: ended
        self.endpoint: Endpoint
        self.probe = False
        """Whether this attempt is its endpoint's probe (the circuit was half open)."""
        self.duration_ms: float | None = None
        self.queue_rank: int | None = None
        self.not_reached = False
        """Set when the attempt failed only because the endpoint was never reached."""

    async def __aenter__(self) -> Attempt:
        if self._stage:
            raise RuntimeError("an attempt is entered once")
        self.endpoint = ep = await self._pool._begin_attempt(self._avoid)
        # A half-open endpoint is handed to its probe alone, so this is the probe.
        self.probe = ep.state == "half_open"
        self._stage = 1
        return self

    async def __aexit__(self, kind: type[BaseException] | None, error: BaseException | None,
                        tb: object) -> None:
        if self._stage != 1:
            raise RuntimeError("an attempt ends once, after it began")
        self._stage = 2
        self._pool._end_attempt(self, error)

    async def complete(self, prompt: str, system: str | None, trace: RequestTrace) -> Completion:
        """Send the request; ``trace`` is read for the verdict whether it answers or not."""
        try:
            completion = await self.endpoint.completer.complete(prompt, system, trace=trace)
        finally:
            self.duration_ms = trace.duration_ms
        self.queue_rank = completion.trace.queue_rank
        return completion


_DEFAULTS = BatchSettings()

MAX_COOLDOWN = 60.0
"""internal: the longest wait of a benched endpoint before its next probe."""


class EndpointPool:
    """Chooses an endpoint per attempt and keeps each one's circuit breaker."""

    def __init__(
        self,
        completers: Sequence[Completer],
        urls: Sequence[str] | None = None,
        *,
        failure_threshold: int = _DEFAULTS.failure_threshold,
        cooldown: float = _DEFAULTS.probe_cooldown,
        max_cooldown: float = MAX_COOLDOWN,
        max_outage: float = _DEFAULTS.max_outage,
        connect_grace: float = _DEFAULTS.connect_grace,
        clock: Clock = LOOP_CLOCK,
    ) -> None:
        if not completers:
            raise ValueError("at least one endpoint is needed")
        names = list(urls) if urls else [str(getattr(c, "display_url", i))
                                         for i, c in enumerate(completers)]
        self.endpoints = [Endpoint(c, u) for c, u in zip(completers, names, strict=True)]
        self.failure_threshold = failure_threshold
        self.base_cooldown = cooldown
        self.max_cooldown = max_cooldown
        self.max_outage = max_outage
        self.connect_grace = connect_grace
        self.clock = clock
        self._started: float | None = None
        self._changed = asyncio.Event()

    async def acquire(self, avoid: Endpoint | None = None) -> Endpoint:
        """The endpoint for the next attempt; waits while every circuit is open.

        ``avoid`` is passed over (neither chosen nor probed) while another endpoint is
        healthy: a row's retry goes elsewhere. Every endpoint acquired must be given
        back once, by :meth:`release` or :meth:`abandon`; an :meth:`attempt` does it in
        the right order.
        """
        if self._started is None:
            self._started = self.clock.now()
        started = self._started
        while True:
            now = self.clock.now()
            closed = []
            probes = []
            for ep in self.endpoints:
                if ep.state == "open" and now >= ep.open_until:
                    ep.state = "half_open"
                if ep.state == "half_open" and not ep.probing:
                    probes.append(ep)
                elif ep.state == "closed":
                    closed.append(ep)
            if avoid is not None and any(ep is not avoid for ep in closed):
                probes = [ep for ep in probes if ep is not avoid]
                closed = [ep for ep in closed if ep is not avoid]
            if probes:
                probe = probes[0]
                probe.probing = True  # this attempt is the probe
                probe.in_flight += 1
                return probe
            if closed:
                best = min(closed, key=Endpoint.score)
                best.in_flight += 1
                return best
            alive = [ep for ep in self.endpoints if ep.state != "gone"]
            reached = any(ep.reached for ep in self.endpoints)
            if not alive:
                if not reached:
                    raise EndpointDownError(self._unreached_message())
                raise EndpointDownError("every endpoint is gone: " + "; ".join(
                    f"{ep.url}: {ep.last_error}" for ep in self.endpoints))
            if reached:
                # The outage runs from when the last endpoint still working went out (max, not
                # min: one endpoint down for long must not cut short another's fresh cooldown).
                since = max(ep.outage_since if ep.outage_since is not None else now
                            for ep in alive)
                limit = self.max_outage
            else:  # nothing ever answered: allow the grace from the first attempt, no more
                since, limit = started, self.connect_grace
            if now - since > limit:
                if not reached:
                    raise EndpointDownError(self._unreached_message())
                raise EndpointDownError(
                    f"no endpoint has worked for {now - since:.0f} s; last errors: "
                    + "; ".join(f"{ep.url}: {ep.last_error}" for ep in alive))
            wake = min((ep.open_until for ep in alive if ep.state == "open"), default=now + 1.0)
            wake = min(wake, since + limit + 0.01)
            self._changed.clear()
            # A timeout here means it is time to probe (or to give up): loop and look again.
            await wait_event(self._changed, max(0.01, wake - now), self.clock)

    def attempt(self, avoid: Endpoint | None = None) -> Attempt:
        """A new attempt, to enter with ``async with`` (see :class:`Attempt`)."""
        return Attempt(self, avoid)

    async def _begin_attempt(self, avoid: Endpoint | None = None) -> Endpoint:
        """What an :class:`Attempt` takes on entering: its endpoint.

        A subclass that holds more for an attempt's length takes it here and gives it
        back in :meth:`_end_attempt`, which the attempt calls exactly once after this
        returned (and never if this raised).
        """
        return await self.acquire(avoid)

    def _end_attempt(self, attempt: Attempt, error: BaseException | None) -> None:
        """Give back what :meth:`_begin_attempt` took, with the verdict on the endpoint."""
        if isinstance(error, asyncio.CancelledError):
            self.abandon(attempt.endpoint, probe=attempt.probe)
        else:
            attempt.not_reached = self.release(attempt.endpoint, error, attempt.duration_ms,
                                               probe=attempt.probe)

    @staticmethod
    def _was_probe(ep: Endpoint, probe: bool | None) -> bool:
        """Whether the attempt ending on ``ep`` was its probe (None: the one out, if any;
        right only for a caller with no other attempt on ``ep`` in flight)."""
        if probe is None:
            probe = ep.state == "half_open" and ep.probing
        if probe:
            ep.probing = False
        return probe

    def abandon(self, ep: Endpoint, *, probe: bool | None = None) -> None:
        """An attempt on ``ep`` was cancelled: give its place back, no verdict on its health.

        If it was the probe of an open circuit, the next attempt probes instead.
        """
        ep.in_flight -= 1
        self._was_probe(ep, probe)
        self._changed.set()

    def release(self, ep: Endpoint, error: BaseException | None, duration_ms: float | None, *,
                probe: bool | None = None) -> bool:
        """Report how an attempt on ``ep`` ended (``probe``: whether it was the probe).

        True when the attempt failed only because ``ep`` has never been reached (see
        the module docstring): the row is not at fault and should be sent again.
        """
        ep.in_flight -= 1
        probe = self._was_probe(ep, probe)
        if error is not None and cannot_connect(error):
            if not ep.reached:
                self._not_reached(ep, error, probe)
                return True
        else:
            ep.reached = True
        kind = endpoint_failure(error) if error is not None else None
        if error is None or kind is None:
            if error is None:
                ep.served += 1
                if duration_ms is not None:
                    ep.ewma_ms = duration_ms if ep.ewma_ms is None else (
                        (1 - _EWMA) * ep.ewma_ms + _EWMA * duration_ms)
            if ep.state == "closed":
                ep.failures = 0
            elif probe and ep.state != "gone":  # gone is for the rest of the run
                log.warning("endpoint %s is back", ep.url)
                ep.state, ep.failures, ep.cooldown, ep.outage_since = "closed", 0, 0.0, None
            # else: sent before the circuit opened (a Space can finish the streams it has
            # open yet take no new job): only the probe says whether new requests work.
            self._changed.set()
            return False
        ep.failed += 1
        ep.failures += 1
        ep.last_error = f"{type(error).__name__}: {error}"
        now = self.clock.now()
        if kind == "gone":
            if ep.state != "gone":
                ep.state = "gone"
                log.error("endpoint %s is gone: %s", ep.url, error)
        elif ep.state == "gone":
            pass  # for the rest of the run, whatever its other attempts meet
        elif ep.state != "closed" and not probe:
            pass  # sent before the circuit opened: the same outage, not a failed probe
        elif probe or ep.failures >= self.failure_threshold:
            hint = getattr(error, "retry_after", None)
            ep.cooldown = min(self.max_cooldown, max(self.base_cooldown, ep.cooldown * 2, hint or 0.0))
            if ep.state == "closed":
                ep.outage_since = now
                log.warning("endpoint %s benched after %d failures in a row (%s); probing in %.0f s",
                            ep.url, ep.failures, ep.last_error, ep.cooldown)
            ep.state, ep.open_until = "open", now + ep.cooldown
        self._changed.set()
        return False

    def _not_reached(self, ep: Endpoint, error: BaseException, probe: bool) -> None:
        """An attempt on an endpoint that never answered failed to connect or was refused."""
        ep.failures += 1
        ep.last_error = str(error)
        cause = f"{type(error).__name__}: {error}"
        retryable = getattr(error, "retryable", True)
        if not retryable:  # access denied, TLS: the next attempt meets the same refusal
            ep.state = "gone"
        elif ep.state == "closed" or (probe and ep.state != "gone"):
            # One failure is enough to bench it: nothing ever worked. An attempt sent
            # before the circuit opened is the same outage; only a failed probe reopens it.
            now = self.clock.now()
            ep.cooldown = min(self.max_cooldown, max(self.base_cooldown, ep.cooldown * 2))
            ep.state, ep.open_until = "open", now + ep.cooldown
            if ep.outage_since is None:
                ep.outage_since = now
        if cause not in ep.warned:
            ep.warned.add(cause)
            if retryable:
                log.warning("cannot reach %s: %s; trying again for up to %.0f s (--connect-grace)",
                            ep.url, error, self.connect_grace)
            elif len(self.endpoints) > 1:  # alone, the run stops with this very message
                log.error("cannot use %s: %s", ep.url, error)
        self._changed.set()

    def _unreached_message(self) -> str:
        """Why the run stops when no endpoint was ever reached: each URL and its cause."""
        parts = [f"{ep.url}: {ep.last_error or 'never tried'}" for ep in self.endpoints]
        return (f"cannot reach the endpoint{'s' if len(parts) > 1 else ''} "
                + "; ".join(parts) + " (no row was marked failed: fix the URL, proxy, "
                "certificates or token and run again)")

    def report(self) -> list[dict[str, object]]:
        """Per-endpoint counters for the summary."""
        return [{"url": ep.url, "state": ep.state, "served": ep.served, "failed": ep.failed,
                 "avg_ms": round(ep.ewma_ms, 1) if ep.ewma_ms is not None else None}
                for ep in self.endpoints]
