"""``qwen-batch check``: what an endpoint is, and whether a batch would work against it."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

from .client import GradioQueueClient, Timeouts, new_session_hash
from .errors import CHECK_HINT, ConnectError, QueueFullError, RequestError
from .models import Completion, RequestTrace

PROBE_PROMPT = "Reply with the single word: OK"
QUEUE_FULL_TRIES = 4
"""Probes sent while the queue answers "full" (503): a busy moment must not fail a cron guard."""
QUEUE_FULL_BACKOFF = 0.5
"""First wait between them, doubling; a server's Retry-After is honoured up to the cap."""
QUEUE_FULL_MAX_WAIT = 10.0

_TIMES = {1: "once", 2: "twice"}


@dataclass
class CheckReport:
    """The findings for one endpoint; ``ok`` means a batch would work."""

    url: str
    ok: bool = False
    discovered: bool = False
    version: str | None = None
    protocol: str | None = None
    api_prefix: str | None = None
    fn_index: int | None = None
    history_format: str | None = None
    latency_ms: float | None = None
    ttft_ms: float | None = None
    answer: str | None = None
    queue_full: int = 0
    error: str | None = None
    remedy: str | None = None
    """What to do about ``error``: its class's remedy, as the errors file gives it."""
    connected: bool = True
    """False when no connection was made: then nothing is said of /config."""
    lines: list[str] = field(default_factory=list)

    def render(self) -> str:
        mark = "OK " if self.ok else "FAIL"
        out = [f"{mark} {self.url}"]
        if self.discovered:
            out += [f"  gradio      {self.version or 'unknown version'}",
                    f"  protocol    {self.protocol}",
                    f"  api prefix  {self.api_prefix or '(root)'}",
                    f"  model_chat  found, fn_index {self.fn_index}, {self.history_format} history"]
        elif self.connected:
            out.append("  /config     not readable; assuming the real Space's layout")
        if self.queue_full:
            times = _TIMES.get(self.queue_full, f"{self.queue_full} times")
            out.append(f"  queue       full {times}, probe sent again")
        if self.latency_ms is not None:
            out.append(f"  probe       {self.latency_ms:.0f} ms (first text after "
                       f"{self.ttft_ms or 0:.0f} ms): {self.answer!r}")
        if self.error:
            out.append(f"  error       {self.error}")
        if self.remedy:
            out.append(f"  fix         {self.remedy}")
        return "\n".join(out)


async def check_endpoint(url: str, *, timeouts: Timeouts, proxy: str | None = None,
                         hf_token: str | None = None, ca_bundle: str | None = None) -> CheckReport:
    """Read the endpoint's config and time one tiny request (sent again while the queue is full)."""
    async with GradioQueueClient(url, proxy=proxy, hf_token=hf_token, timeouts=timeouts,
                                 ca_bundle=ca_bundle) as client:
        report = CheckReport(client.display_url)
        try:
            info = await client.discover()
            report.discovered = info.discovered
            report.version, report.protocol = info.version, info.protocol
            report.api_prefix, report.fn_index = info.api_prefix, info.fn_index
            report.history_format = info.history_format
            trace, completion, started = await _probe(client, report)
            report.latency_ms = (time.monotonic() - started) * 1000.0
            report.ttft_ms = trace.ttft_ms
            report.answer = completion.text[:80]
            report.ok = True
        except RequestError as exc:
            report.error = f"{exc.error_type}: {exc}"
            report.remedy = exc.remedy.replace(CHECK_HINT, "")  # not "run check" from check
            report.connected = not isinstance(exc, ConnectError)
    return report


async def _probe(client: GradioQueueClient,
                 report: CheckReport) -> tuple[RequestTrace, Completion, float]:
    """One tiny request, sent again (a bounded number of times) while the queue is full."""
    while True:
        trace = RequestTrace(new_session_hash())
        started = time.monotonic()
        try:
            return trace, await client.complete(PROBE_PROMPT, None, trace=trace), started
        except QueueFullError as exc:
            report.queue_full += 1
            if report.queue_full >= QUEUE_FULL_TRIES:
                raise
            wait = exc.retry_after if exc.retry_after is not None else (
                QUEUE_FULL_BACKOFF * 2 ** (report.queue_full - 1))
            await asyncio.sleep(min(wait, QUEUE_FULL_MAX_WAIT))
