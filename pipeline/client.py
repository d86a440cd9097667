"""The Gradio queue client: one prompt in, a stream of text deltas out.

Discovers the Space once (``GET /config``), then for each request joins the
queue with a fresh session hash, reads ``queue/data`` through the SSE decoder and
the event tracker, and records timings. Every failure leaves as a
:class:`~pipeline.errors.RequestError`; aiohttp's exceptions never escape.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import uuid
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp
from yarl import URL

from .errors import (
    AccessDeniedError,
    AttemptTimeoutError,
    ConnectError,
    HTTPStatusError,
    IdleTimeoutError,
    IncompleteResponseError,
    JoinRejectedError,
    ProtocolError,
    QueueFullError,
    ReadTimeoutError,
    RequestError,
    RequestTimeoutError,
    ResponseTooLargeError,
    RouteNotFoundError,
    SpaceUnavailableError,
    StreamDivergedError,
    StreamEndedError,
)
from .gradio import EventTracker, parse_message
from .hf_status import space_state
from .http_errors import make_redactor, map_transport_error, status_error
from .models import Completion, RequestTrace, now_us
from .prompts import DEFAULT_SYSTEM_PROMPT
from .proxies import proxy_for, proxy_password
from .retry import parse_retry_after
from .sessions import open_session
from .settings import DEFAULT_URL, Timeouts  # re-exported: they lived here
from .space_config import DEFAULT_SPACE_INFO, SpaceInfo, parse_space_config
from .sse import SSEDecoder

if sys.version_info >= (3, 11):
    from asyncio import Timeout, timeout_at

    _rearm = Timeout.reschedule  # the plain method: no extra call per read on the hot path
else:  # pragma: no cover - exercised on 3.10 only (the lowest-versions CI step)
    from async_timeout import timeout_at

    def _rearm(timeout: Any, when: float | None) -> None:
        # async-timeout 5 on 3.10 spells asyncio.Timeout.reschedule(when) as update(when),
        # and reschedule(None) as reject(); the next update() arms it again.
        if when is None:
            timeout.reject()
        else:
            timeout.update(when)

__all__ = ["DEFAULT_URL", "GradioQueueClient", "Timeouts", "new_session_hash"]

log = logging.getLogger(__name__)

_TIMER_SLACK_SHARE = 0.1
_MAX_TIMER_SLACK = 1.0
"""How late a stream's read or idle bound may fire: a tenth of the shorter, at most 1 s."""

USER_AGENT = "qwen-batch (+https://pypi.org/project/qwen-batch/)"
_CANCEL_WAIT = 3.0


def new_session_hash() -> str:
    """A fresh Gradio session hash: 12 hex characters of a UUID4."""
    return uuid.uuid4().hex[:12]


def _strip_credentials(url: str) -> str:
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit(parts._replace(netloc=netloc))


class GradioQueueClient:
    """Client for one deployment of the Space (``url``), safe for many concurrent requests.

    Pass ``session`` to share a connection pool; otherwise the client opens its
    own and closes it in :meth:`close` (or on leaving ``async with``). ``hf_token``
    goes only into the ``Authorization`` header and is scrubbed from every
    error message, as is the password of ``proxy``. Without ``proxy``, the
    ``HTTP(S)_PROXY``/``NO_PROXY`` environment decides (:func:`~pipeline.proxies.proxy_for`).
    ``ca_bundle`` (a PEM file) is the certificates an owned session trusts.
    """

    def __init__(
        self,
        url: str = DEFAULT_URL,
        *,
        session: aiohttp.ClientSession | None = None,
        proxy: str | None = None,
        hf_token: str | None = None,
        timeouts: Timeouts | None = None,
        space_info: SpaceInfo | None = None,
        max_answer_chars: int | None = None,
        max_line_bytes: int = 16 * 1024 * 1024,
        ca_bundle: str | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self.display_url = _strip_credentials(self.url)
        self.proxy, self.proxy_source = proxy_for(self.url, proxy)
        self.ca_bundle = ca_bundle
        self.timeouts = timeouts or Timeouts()
        self.max_answer_chars = max_answer_chars
        self.max_line_bytes = max_line_bytes
        self._session = session
        self._owns_session = session is None
        self._info = space_info
        self._discover_lock = asyncio.Lock()
        self._last_state: str | None = None
        self._background: set[asyncio.Future[Any]] = set()
        self._headers = {"User-Agent": USER_AGENT}
        if hf_token:
            self._headers["Authorization"] = f"Bearer {hf_token}"
        self._stream_headers = {**self._headers, "Accept": "text/event-stream"}
        self._urls: dict[str, tuple[URL, str]] = {}  # api prefix -> (join URL, data URL text)
        self.redact = make_redactor([hf_token, proxy_password(self.proxy)])
        self._http_timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=self.timeouts.connect, sock_read=None
        )

    def __repr__(self) -> str:  # never shows the token
        return f"GradioQueueClient({self.display_url!r})"

    async def __aenter__(self) -> GradioQueueClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Wait briefly for pending job cancellations, then close an owned session."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + _CANCEL_WAIT
        # A finished join may add its cancellation meanwhile: wait until none is left.
        while self._background and (left := deadline - loop.time()) > 0:
            await asyncio.wait(set(self._background), timeout=left)
        if self._owns_session and self._session is not None:
            await self._session.close()
            self._session = None

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            if not self._owns_session:
                raise RuntimeError("the shared aiohttp session was closed")
            self._session = open_session(self.ca_bundle)
        return self._session

    # -- discovery ---------------------------------------------------------------------------

    async def discover(self, *, refresh: bool = False) -> SpaceInfo:
        """How to call ``model_chat`` here, from ``GET {url}/config`` (once per client).

        Falls back to the real Space's known layout when the config cannot be
        fetched; a config that lacks ``model_chat`` raises :class:`DiscoveryError`.
        """
        if self._info is not None and not refresh:
            return self._info
        async with self._discover_lock:
            if self._info is not None and not refresh:
                return self._info
            info, cache = await self._fetch_info()
            if cache:
                self._info = info
            return info

    async def _fetch_info(self) -> tuple[SpaceInfo, bool]:
        loop = asyncio.get_running_loop()
        bound = self.timeouts.exchange
        try:
            async with timeout_at(loop.time() + bound), self._http().get(
                f"{self.url}/config",
                headers=self._headers,
                proxy=self.proxy,
                timeout=self._http_timeout,
            ) as resp:
                if resp.status in (401, 403, 407):
                    raise status_error(resp.status, f"HTTP {resp.status} from {self.display_url}/config",
                                       proxy=self.proxy)
                body = await resp.read()
                if resp.status != 200:
                    self._raise_if_unavailable(resp, body)
                    log.warning(
                        "%s/config answered HTTP %s; using the default Space layout",
                        self.display_url,
                        resp.status,
                    )
                    return DEFAULT_SPACE_INFO, resp.status == 404
        except (aiohttp.ClientError, OSError, asyncio.TimeoutError) as exc:
            timed_out = isinstance(exc, asyncio.TimeoutError)
            cause: object = f"no answer within {bound:g} s"
            if isinstance(exc, aiohttp.ClientError) or not timed_out:
                cause = map_transport_error(exc, self.redact)
                if isinstance(cause, (ConnectError, AccessDeniedError)):
                    raise cause from None  # the join would meet the same; the endpoint pool decides
            log.warning("cannot read %s/config (%s); using the default Space layout",
                        self.display_url, cause)
            # A timeout is kept, unlike a refused connection: a server that swallows
            # /config would otherwise cost every row this wait. A wrong guess shows as
            # a 404 on the join, which forgets it and reads /config again.
            return DEFAULT_SPACE_INFO, timed_out
        try:
            config: Any = json.loads(body)
        except ValueError:
            log.warning("%s/config is not JSON; using the default Space layout", self.display_url)
            return DEFAULT_SPACE_INFO, True
        info = parse_space_config(config)
        log.debug("discovered %s: %s", self.display_url, info)
        return info, True

    # -- one request ---------------------------------------------------------------------------

    def stream(
        self, prompt: str, system: str | None = None, *, trace: RequestTrace | None = None
    ) -> AsyncIterator[str]:
        """Text deltas of one answer; their concatenation is exactly the final answer.

        ``system=None`` sends the Space's default system prompt. Pass ``trace`` to
        read the timings afterwards (it is filled in as the request goes).
        """
        return self._exchange(prompt, system, trace or RequestTrace(new_session_hash()), True)

    async def complete(
        self, prompt: str, system: str | None = None, *, trace: RequestTrace | None = None
    ) -> Completion:
        """The whole answer of one request, taken from ``process_completed``."""
        trace = trace or RequestTrace(new_session_hash())
        final: list[str] = []
        async for piece in self._exchange(prompt, system, trace, False):
            final.append(piece)
        return Completion(final[-1] if final else "", trace)

    async def _exchange(
        self,
        prompt: str,
        system: str | None,
        trace: RequestTrace,
        streaming: bool,
    ) -> AsyncIterator[str]:
        """Join, stream, and either yield deltas or (``streaming=False``) the final text.

        ``streaming=False`` does not follow the text as it streams (see
        :class:`~pipeline.gradio.EventTracker`): the answer is ``process_completed``'s.
        """
        loop = asyncio.get_running_loop()
        start = loop.time()
        deadline = start + self.timeouts.total
        trace.url = self.display_url
        trace.started_at = now_us()
        info: SpaceInfo | None = None
        tracker: EventTracker | None = None
        try:
            # This attempt's discovery: join and stream use the same one even if another
            # request makes the client forget it meanwhile.
            info = self._info or await self._discover_by(deadline)
            join = asyncio.ensure_future(
                self._join(info, prompt, system, trace.session_hash, deadline)
            )
            try:
                # Shielded: a caller that gives up mid-join must not orphan a job the
                # server already accepted; we learn its event id, then cancel it.
                event_id = await asyncio.shield(join)
            except asyncio.CancelledError:
                self._cancel_after_join(info, join, trace.session_hash)
                raise
            trace.event_id = event_id
            tracker = EventTracker(event_id, diffs=info.diffs, chatbot_index=info.chatbot_index,
                                   track_text=streaming)
            async with aclosing(self._read_stream(info, tracker, trace, start, deadline)) as deltas:
                async for delta in deltas:
                    if streaming:
                        yield delta
            if tracker.diverged and streaming:
                raise StreamDivergedError(
                    "the Space rewrote text it had already streamed; the final answer differs"
                )
            if not (tracker.final_text or "").strip():
                raise IncompleteResponseError("the Space completed the job with an empty answer")
            if not streaming:
                yield tracker.final_text or ""
        except (aiohttp.ClientError, OSError) as exc:
            raise map_transport_error(exc, self.redact) from None
        finally:
            trace.finished_at = now_us()
            trace.duration_ms = (loop.time() - start) * 1000.0
            if tracker is not None and not tracker.done and info is not None:
                self._cancel_later(info, tracker.event_id, trace.session_hash)

    async def _discover_by(self, deadline: float) -> SpaceInfo:
        try:
            async with timeout_at(deadline):
                return await self.discover()
        except asyncio.TimeoutError:
            raise AttemptTimeoutError(
                f"attempt took longer than {self.timeouts.total:g} s (reading /config)") from None

    def _exchange_timeout(self, what: str, when: float, deadline: float) -> RequestError:
        """The error of a short exchange cut at ``when`` (the attempt's ``deadline`` or not)."""
        if when >= deadline:
            return AttemptTimeoutError(
                f"attempt took longer than {self.timeouts.total:g} s ({what})")
        return RequestTimeoutError(f"{what}: no answer within {self.timeouts.exchange:g} s")

    async def _join(
        self, info: SpaceInfo, prompt: str, system: str | None, session_hash: str, deadline: float
    ) -> str:
        body: dict[str, Any] = {
            "data": [prompt, [], DEFAULT_SYSTEM_PROMPT if system is None else system],
            "event_data": None,
            "fn_index": info.fn_index,
            "session_hash": session_hash,
        }
        if info.trigger_id is not None:
            body["trigger_id"] = info.trigger_id
        url = self._routes(info.api_prefix)[0]
        when = min(deadline, asyncio.get_running_loop().time() + self.timeouts.exchange)
        answer: aiohttp.ClientResponse | None = None
        try:
            async with timeout_at(when), self._http().post(
                url, json=body, headers=self._headers, proxy=self.proxy,
                timeout=self._http_timeout,
            ) as resp:
                answer = resp
                raw = await resp.read()
        except asyncio.TimeoutError:
            if answer is not None and answer.status != 200:
                raise self._join_status_error(info, answer, b"") from None  # an endless error body
            raise self._exchange_timeout("queue/join", when, deadline) from None
        if resp.status != 200:
            raise self._join_status_error(info, resp, raw)
        try:
            event_id = json.loads(raw).get("event_id")
        except (ValueError, AttributeError):
            raise ProtocolError(f"queue/join answered {raw[:120]!r}, not JSON") from None
        if not isinstance(event_id, str) or not event_id:
            raise ProtocolError(f"queue/join answered without an event_id: {raw[:120]!r}")
        return event_id

    def _raise_if_unavailable(self, resp: aiohttp.ClientResponse, raw: bytes) -> None:
        """Raise SpaceUnavailableError when the Hugging Face host answered for the Space."""
        text = raw[:4096].decode("utf-8", "replace")
        state = space_state(resp.status, resp.headers.get("Content-Type", ""), text)
        if state is None:
            return
        if state != self._last_state:
            self._last_state = state
            advice = {"sleeping": "waking it up; waiting for it",
                      "building": "waiting for the build to finish",
                      "error": "the Space has a runtime error: its owner must fix it",
                      "gone": "no Space at this address"}[state]
            log.warning("%s: the Space is %s (HTTP %s): %s", self.display_url, state,
                        resp.status, advice)
        raise SpaceUnavailableError(
            f"HTTP {resp.status} from {self.display_url}: the Space is {state}",
            state=state, retry_after=parse_retry_after(resp.headers.get("Retry-After")))

    def _join_status_error(
        self, info: SpaceInfo, resp: aiohttp.ClientResponse, raw: bytes
    ) -> RequestError:
        self._raise_if_unavailable(resp, raw)
        status = resp.status
        text = self.redact(raw[:300].decode("utf-8", "replace"))
        retry_after = parse_retry_after(resp.headers.get("Retry-After"))
        where = f"{self.display_url}{info.api_prefix}/queue/join"
        if status == 503:
            return QueueFullError(
                f"HTTP 503 from {where}: {text or 'queue full'}", status=503, retry_after=retry_after
            )
        message = f"HTTP {status} from {where}: {text}"
        if status == 404:
            # A Space upgraded to Gradio 5+ moves its routes under /gradio_api:
            # forget the layout so the next attempt reads /config again (unless
            # another request already did and found a new one).
            if self._info is info:
                self._info = None
            return RouteNotFoundError(message, guessed=not info.discovered, retry_after=retry_after)
        if status == 500:
            return JoinRejectedError(message, retry_after=retry_after)
        return status_error(status, message, retry_after=retry_after, proxy=self.proxy)

    def _routes(self, api_prefix: str) -> tuple[URL, str]:
        """The join URL and the (encoded) data URL text under ``api_prefix``, built once."""
        routes = self._urls.get(api_prefix)
        if routes is None:
            base = f"{self.url}{api_prefix}/queue"
            routes = (URL(f"{base}/join"), str(URL(f"{base}/data")))
            self._urls[api_prefix] = routes
        return routes

    async def _read_stream(
        self, info: SpaceInfo, tracker: EventTracker, trace: RequestTrace, start: float,
        deadline: float,
    ) -> AsyncGenerator[str, None]:
        loop = asyncio.get_running_loop()
        read, idle = self.timeouts.read, self.timeouts.idle
        # The session hash is hex: the query needs no encoding, and a URL built from an
        # encoded string skips yarl's parsing and quoting on every request.
        url = URL(f"{self._routes(info.api_prefix)[1]}?session_hash={trace.session_hash}",
                  encoded=True)
        decoder = SSEDecoder(self.max_line_bytes)
        last_text = 0.0
        max_chars = self.max_answer_chars
        # One timeout for the whole stream: first the headers (and an error body) within
        # the exchange bound, then rearmed around each read (cheaper than a new timeout
        # context per read) and disarmed while a delta is yielded: the caller's time is
        # not the server's silence. Rearmed lazily: a bound may fire up to `slack` late,
        # never early, so a stream whose chunks come every few ms moves its timer about
        # once per `slack`, not once per chunk (each move is a new timer in the loop's heap).
        slack = min(_MAX_TIMER_SLACK, _TIMER_SLACK_SHARE * min(read, idle))
        headers_by = min(deadline, loop.time() + self.timeouts.exchange)
        armed: float | None = headers_by
        timeout = timeout_at(headers_by)
        answer: aiohttp.ClientResponse | None = None
        try:
            async with timeout, self._http().get(
                url,
                headers=self._stream_headers,
                proxy=self.proxy,
                timeout=self._http_timeout,
            ) as resp:
                answer = resp
                if resp.status != 200:
                    raise self._data_status_error(resp, await resp.read())
                content = resp.content
                while True:
                    when = min(deadline, loop.time() + read)
                    if last_text:
                        when = min(when, last_text + idle)
                    if armed is None or not when <= armed <= when + slack:
                        armed = when + slack
                        _rearm(timeout, armed)
                    chunk = await content.readany()
                    if not chunk:
                        decoder.close()
                        raise StreamEndedError(
                            "the event stream ended before the job completed"
                            if tracker.started else "the event stream ended before the job started"
                        )
                    now = loop.time()
                    for event in decoder.feed(chunk):
                        delta = tracker.handle(parse_message(event.data))
                        if tracker.started and trace.queue_ms is None:
                            trace.queue_ms = (now - start) * 1000.0
                        if tracker.grew:
                            last_text = now
                            if trace.ttft_ms is None:
                                trace.ttft_ms = (now - start) * 1000.0
                            trace.chunks += 1
                            if max_chars and tracker.text_chars > max_chars:
                                raise ResponseTooLargeError(
                                    f"answer longer than {max_chars} characters"
                                )
                            if delta:
                                armed = None
                                _rearm(timeout, None)
                                yield delta
                        if tracker.queue_rank is not None and (
                                trace.queue_rank is None or tracker.queue_rank > trace.queue_rank):
                            trace.queue_rank = tracker.queue_rank  # the deepest we waited
                        if tracker.done:
                            return
        except asyncio.TimeoutError:
            if answer is None:
                raise self._exchange_timeout("queue/data headers", headers_by, deadline) from None
            if answer.status != 200:
                raise self._data_status_error(answer, b"") from None  # an endless error body
            raise self._timeout_error(loop.time(), deadline, last_text) from None

    def _data_status_error(self, resp: aiohttp.ClientResponse, raw: bytes) -> RequestError:
        self._raise_if_unavailable(resp, raw)
        return HTTPStatusError(
            f"HTTP {resp.status} from {self.display_url} queue/data: "
            + self.redact(raw[:300].decode("utf-8", "replace")),
            status=resp.status,
            retry_after=parse_retry_after(resp.headers.get("Retry-After")),
        )

    def _timeout_error(self, now: float, deadline: float, last_text: float) -> RequestError:
        t = self.timeouts
        if now >= deadline - 1e-3:
            return AttemptTimeoutError(f"attempt took longer than {t.total:g} s (queue wait included)")
        if last_text and now >= last_text + t.idle - 1e-3:
            return IdleTimeoutError(f"no new text for {t.idle:g} s while generating")
        return ReadTimeoutError(f"nothing received for {t.read:g} s (not even a heartbeat)")

    # -- cancelling abandoned jobs ---------------------------------------------------------

    def _cancel_after_join(
        self, info: SpaceInfo, join: asyncio.Future[str], session_hash: str
    ) -> None:
        """Once an abandoned join answers, cancel the job it created (if it did)."""

        def joined(done: asyncio.Future[str]) -> None:
            if done.cancelled() or done.exception() is not None:
                return  # no job was created
            self._cancel_later(info, done.result(), session_hash)

        join.add_done_callback(joined)
        self._background.add(join)
        join.add_done_callback(self._background.discard)

    def _cancel_later(self, info: SpaceInfo, event_id: str, session_hash: str) -> None:
        """Ask the server to drop a job we no longer read, without blocking the caller."""
        try:
            task = asyncio.get_running_loop().create_task(
                self._cancel_job(info, event_id, session_hash)
            )
        except RuntimeError:
            log.debug("event loop closed; cannot cancel job %s", event_id)
            return
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _cancel_job(self, info: SpaceInfo, event_id: str, session_hash: str) -> None:
        body = {"event_id": event_id, "fn_index": info.fn_index, "session_hash": session_hash}
        try:
            async with self._http().post(
                f"{self.url}{info.api_prefix}/cancel", json=body, headers=self._headers,
                proxy=self.proxy, timeout=aiohttp.ClientTimeout(total=_CANCEL_WAIT),
            ) as resp:
                log.debug("cancelled job %s: HTTP %s", event_id, resp.status)
        except (aiohttp.ClientError, OSError, asyncio.TimeoutError, RuntimeError) as exc:
            # Best effort: the server also drops the job once our stream is gone.
            log.debug("could not cancel job %s: %s", event_id, self.redact(repr(exc)))
