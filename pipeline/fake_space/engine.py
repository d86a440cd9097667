"""The fake Space's queue: sessions, events, scheduling and the fake model run.

No HTTP here (see :mod:`pipeline.fake_space.server`). Design, for 500+ concurrent
streams at thousands of events per second:

* one ``asyncio.Queue`` of ready-made SSE frames per session, filled from the join
  on, so a data stream opened after the join loses nothing;
* one writer per data stream (in the server) drains it; one timer per stream sends
  its heartbeats;
* one task per running event, which sleeps ``latency / chunks`` between chunks and
  does not sleep at all at latency 0; no polling anywhere;
* an event's state is dropped as soon as it ends, only counters remain.
"""

from __future__ import annotations

import asyncio
import random
import secrets
import time
from collections import deque
from typing import Any

from .model import (
    MUTABLE_FIELDS,
    FakeSpaceConfig,
    FakeSpaceStats,
    fake_answer,
    marker_fault,
    pick_random_fault,
    split_text,
    validate_config,
)
from .wire import BAD_JSON, HEARTBEAT, SERVER_STOPPED, Wire

# Kinds of items in a session queue.
MSG = 0  # a frame to write
DONE = 1  # the final frame of one event (its process_completed)
CUT = 2  # write the frame (if any), then cut the connection without a final chunk


class Session:
    """One session_hash: its frame queue and its unfinished events."""

    __slots__ = ("hb_handle", "jobs", "key", "orphan_handle", "pending", "queue", "writer")

    def __init__(self, key: str) -> None:
        self.key = key
        self.queue: asyncio.Queue[tuple[int, str]] = asyncio.Queue()
        # Joined events whose end the stream has not delivered yet; close_stream
        # goes out when it drops to 0, as in gradio's queue/data loop.
        self.pending = 0
        self.jobs: dict[str, Job] = {}  # events not ended yet
        self.writer = False
        self.orphan_handle: asyncio.TimerHandle | None = None
        self.hb_handle: asyncio.TimerHandle | None = None


class Job:
    """One event (a join), from the queue until it ends."""

    __slots__ = (
        "event_id",
        "fault",
        "fn_index",
        "history",
        "query",
        "session",
        "state",
        "stop",
        "system",
        "task",
    )

    def __init__(
        self, event_id: str, session: Session, fn_index: int, data: Any, wire: Wire
    ) -> None:
        self.event_id = event_id
        self.session = session
        self.fn_index = fn_index
        self.fault: str | None = None
        self.task: asyncio.Task[None] | None = None
        self.state = "waiting"  # -> "running" -> "done"
        self.stop: str | None = None  # "cancel" (POST cancel) or "abandon" (stream gone)
        self.query = ""
        self.system = ""
        # None means the inputs fail preprocessing: the event ends success:false.
        self.history: list[Any] | None = None
        if fn_index >= 2:
            if fn_index == 3 and isinstance(data, list) and data and isinstance(data[0], str):
                self.system = data[0]
            self.history = []
        elif isinstance(data, list) and len(data) == 3 and isinstance(data[0], str):
            self.query = data[0]
            if data[2] is None or isinstance(data[2], str):
                self.system = data[2] or ""
                self.history = wire.normalize_history(data[1])


class Engine:
    """State and behaviour of a fake Space, without the HTTP layer.

    ``config`` may be changed while it runs; ``config.gradio_major`` and ``seed`` are
    read once, at construction (they fix the routes and the fault sequence).
    """

    def __init__(self, config: FakeSpaceConfig | None = None) -> None:
        self.config = config if config is not None else FakeSpaceConfig()
        validate_config(self.config)
        self.stats = FakeSpaceStats()
        self.wire = Wire(self.config.gradio_major)
        self._rng = random.Random(self.config.seed)
        self._sessions: dict[str, Session] = {}
        self._jobs: dict[str, Job] = {}
        self._waiting: deque[Job] = deque()  # may hold ended jobs; skipped lazily
        self._estimate_soon = False
        self._dur_sum = 0.0
        self._dur_n = 0

    def update_config(self, **changes: Any) -> None:
        """Change config fields at run time (all or nothing) and apply them now."""
        cfg = self.config
        old = {k: getattr(cfg, k) for k in changes}
        for key, value in changes.items():
            if key not in MUTABLE_FIELDS:
                raise ValueError(f"{key!r} cannot be changed at run time")
            if key == "fault_rates" and isinstance(value, dict):
                value = dict(value)  # never share the caller's dict
            setattr(cfg, key, value)
        try:
            validate_config(cfg)
        except ValueError:
            for key, value in old.items():
                setattr(cfg, key, value)
            raise
        self._pump()  # a higher concurrency_limit starts waiting jobs at once

    def admit(self, key: str, fn_index: int, data: Any) -> str | tuple[int, str]:
        """Queue one event of an already validated join.

        Returns its event_id, or ``(503, detail)`` when the queue is full.
        """
        cfg, st = self.config, self.stats
        fault: str | None = None
        if fn_index <= 1 and isinstance(data, list) and data and isinstance(data[0], str):
            query = data[0]
            marker = marker_fault(query)
            if marker is not None or cfg.track_prompts:
                attempts = st.attempts_by_prompt.get(query, 0) + 1
                st.attempts_by_prompt[query] = attempts
            if marker is not None:
                fault = marker[0] if attempts <= marker[1] else None
            elif cfg.fault_rates:
                fault = pick_random_fault(self._rng, cfg.fault_rates)
        if fault == "queue_full":
            st.faults["queue_full"] = st.faults.get("queue_full", 0) + 1
            st.rejected += 1
            return 503, "Queue is full. Max size is 2 and size is 2."
        limit = cfg.concurrency_limit
        start_now = st.waiting == 0 and (limit is None or st.running < limit)
        if not start_now and cfg.max_size is not None and st.waiting >= cfg.max_size:
            st.rejected += 1
            return 503, f"Queue is full. Max size is {cfg.max_size} and size is {st.waiting}."

        session = self._sessions.get(key)
        if session is None:
            session = self._sessions[key] = Session(key)
        if cfg.track_prompts:
            st.sessions.add(key)
        event_id = secrets.token_hex(16)
        job = Job(event_id, session, fn_index, data, self.wire)
        if fault is not None and fn_index <= 1 and job.history is not None:
            job.fault = fault
            st.faults[fault] = st.faults.get(fault, 0) + 1
        self._jobs[event_id] = job
        session.jobs[event_id] = job
        session.pending += 1
        st.joins += 1
        if start_now:
            session.queue.put_nowait((MSG, self.wire.estimation(event_id, 0, 1)))
            self._start(job)
        else:
            self._waiting.append(job)
            st.waiting += 1
            frame = self.wire.estimation(event_id, st.waiting - 1, st.waiting)
            session.queue.put_nowait((MSG, frame))
        if not session.writer and session.orphan_handle is None:
            self._arm_orphan(session)
        return event_id

    def cancel(self, event_id: str) -> None:
        """Stop an unfinished event; its stream gets process_completed ``output:{}``."""
        job = self._jobs.get(event_id)
        if job is None or job.stop is not None:
            return
        if job.state == "waiting":
            self._end_waiting(job)
            job.session.queue.put_nowait((DONE, self.wire.cancelled(job.event_id)))
            self.stats.cancelled += 1
        elif job.state == "running" and job.task is not None:
            job.stop = "cancel"
            job.task.cancel()  # _stopped sends the cancelled process_completed

    def attach(self, key: str) -> Session | None:
        """Claim ``key``'s session for a new data stream; None if unknown or taken."""
        session = self._sessions.get(key)
        if session is None or session.writer:
            return None
        session.writer = True
        if session.orphan_handle is not None:
            session.orphan_handle.cancel()
            session.orphan_handle = None
        session.hb_handle = asyncio.get_running_loop().call_later(
            self.config.heartbeat_interval, self._heartbeat, session
        )
        return session

    def detach(self, session: Session, closed: bool) -> None:
        """The data stream of ``session`` ended: after close_stream if ``closed``,
        else by a cut or a client that went away (whose jobs then stop)."""
        session.writer = False
        if session.hb_handle is not None:
            session.hb_handle.cancel()
            session.hb_handle = None
        if not closed:
            self._drop_session(session)
        elif session.pending == 0:
            if self._sessions.get(session.key) is session:
                del self._sessions[session.key]
        else:  # a join raced the close_stream; its frames wait for the next GET
            self._arm_orphan(session)

    def _start(self, job: Job) -> None:
        st = self.stats
        job.state = "running"
        st.running += 1
        if st.running > st.max_running:
            st.max_running = st.running
        task = asyncio.get_running_loop().create_task(self._run(job))
        job.task = task
        # Bookkeeping lives in a done callback, not in _run's finally: a task
        # cancelled before its first step never enters _run's try block.
        task.add_done_callback(lambda _t: self._finished(job))

    def _finished(self, job: Job) -> None:
        if job.state != "done":  # cancelled before it ever ran
            job.state = "done"
            self._stopped(job)
        self._jobs.pop(job.event_id, None)
        job.session.jobs.pop(job.event_id, None)
        self.stats.running -= 1
        self._pump()

    def _stopped(self, job: Job) -> None:
        """Account for a running job stopped by cancel or by its client leaving."""
        if job.stop == "cancel":
            job.session.queue.put_nowait((DONE, self.wire.cancelled(job.event_id)))
            self.stats.cancelled += 1
        else:
            self.stats.abandoned += 1

    def _pump(self) -> None:
        """Start waiting jobs while the concurrency limit allows."""
        limit = self.config.concurrency_limit
        started = False
        while self._waiting and (limit is None or self.stats.running < limit):
            job = self._waiting.popleft()
            if job.state != "waiting":
                continue  # cancelled or abandoned while waiting
            self.stats.waiting -= 1
            self._start(job)
            started = True
        if started and self.stats.waiting and not self._estimate_soon:
            # The queue moved: tell every waiting job its new rank, once per loop
            # turn however many jobs started in it.
            self._estimate_soon = True
            asyncio.get_running_loop().call_soon(self._send_estimations)

    def _send_estimations(self) -> None:
        self._estimate_soon = False
        size = self.stats.waiting
        rank = 0
        wire = self.wire
        for job in self._waiting:
            if job.state == "waiting":
                job.session.queue.put_nowait((MSG, wire.estimation(job.event_id, rank, size)))
                rank += 1

    def _end_waiting(self, job: Job) -> None:
        job.state = "done"
        self.stats.waiting -= 1
        self._jobs.pop(job.event_id, None)
        job.session.jobs.pop(job.event_id, None)
        if len(self._waiting) > 2 * self.stats.waiting + 64:
            # Ended jobs are skipped lazily; compact once they dominate, so a queue
            # that never moves (all slots stalled) cannot grow without bound.
            self._waiting = deque(j for j in self._waiting if j.state == "waiting")

    def _drop_session(self, session: Session) -> None:
        """Forget ``session`` and stop its jobs: its client is gone."""
        if self._sessions.get(session.key) is session:
            del self._sessions[session.key]
        for handle in (session.orphan_handle, session.hb_handle):
            if handle is not None:
                handle.cancel()
        session.orphan_handle = session.hb_handle = None
        for job in list(session.jobs.values()):
            if job.state == "waiting":
                self._end_waiting(job)
                self.stats.abandoned += 1
            elif job.state == "running" and job.stop is None and job.task is not None:
                job.stop = "abandon"
                job.task.cancel()

    def _arm_orphan(self, session: Session) -> None:
        if session.orphan_handle is not None:
            session.orphan_handle.cancel()
        session.orphan_handle = asyncio.get_running_loop().call_later(
            self.config.orphan_timeout, self._orphan, session
        )

    def _orphan(self, session: Session) -> None:
        session.orphan_handle = None
        if not session.writer:
            self._drop_session(session)

    def _heartbeat(self, session: Session) -> None:
        if not session.writer:
            return
        session.queue.put_nowait((MSG, HEARTBEAT))
        session.hb_handle = asyncio.get_running_loop().call_later(
            self.config.heartbeat_interval, self._heartbeat, session
        )

    def _avg(self, duration: float) -> float:
        self._dur_sum += duration
        self._dur_n += 1
        return self._dur_sum / self._dur_n

    # The model ------------------------------------------------------------------

    async def _run(self, job: Job) -> None:
        """Play one event: process_starts, the chunks, then its end (or a fault)."""
        cfg, st, wire = self.config, self.stats, self.wire
        eid = job.event_id
        queue = job.session.queue
        try:
            queue.put_nowait((MSG, wire.process_starts(eid)))
            history = job.history
            if history is None:  # inputs fail preprocessing, before any yield
                queue.put_nowait((DONE, wire.error(eid, yielded=False)))
                st.failed += 1
                return
            if job.fn_index == 2:  # clear_session -> ("", [])
                queue.put_nowait((DONE, wire.completed(eid, ["", []], 0.0, 0.0)))
                st.completed += 1
                return
            if job.fn_index == 3:  # modify_system_session -> (system, system, [])
                out = [job.system, job.system, []]
                queue.put_nowait((DONE, wire.completed(eid, out, 0.0, 0.0)))
                st.completed += 1
                return
            fault = job.fault
            answer = "" if fault == "empty" else fake_answer(job.query, job.system)
            pieces = split_text(answer, cfg.chunks)
            n = len(pieces)
            if fault in ("cut", "unexpected_error"):
                n_send = max(1, n // 2)
            elif fault == "app_error":
                n_send = min(3, n)
            elif fault == "stall":
                n_send = 1
            else:
                n_send = n
            delay = cfg.latency / n
            path = wire.answer_path(history)
            last = time.monotonic()
            duration = 0.0
            for i in range(n_send):
                if delay > 0:
                    await asyncio.sleep(delay)
                now = time.monotonic()
                duration, last = now - last, now
                avg = self._avg(duration)
                if i == 0:
                    data = ["", wire.with_answer(history, job.query, pieces[0]), job.system]
                    queue.put_nowait((MSG, wire.generating_full(eid, data, duration, avg)))
                    if fault == "bad_json":
                        queue.put_nowait((MSG, BAD_JSON))
                else:
                    frame = wire.generating_append(eid, path, pieces[i], duration, avg)
                    queue.put_nowait((MSG, frame))
            if fault == "cut":
                queue.put_nowait((CUT, ""))
                st.failed += 1
            elif fault == "unexpected_error":
                queue.put_nowait((CUT, SERVER_STOPPED))
                st.failed += 1
            elif fault == "app_error":
                queue.put_nowait((DONE, wire.error(eid, yielded=n_send > 0)))
                st.failed += 1
            elif fault == "stall":
                await asyncio.get_running_loop().create_future()  # until cancelled
            else:
                data = ["", wire.with_answer(history, job.query, answer), job.system]
                final_duration = time.monotonic() - last
                avg = self._dur_sum / self._dur_n if self._dur_n else 0.0
                queue.put_nowait((DONE, wire.completed(eid, data, final_duration, avg)))
                st.completed += 1
        except asyncio.CancelledError:
            self._stopped(job)
            if job.stop is None:
                raise  # not ours (e.g. loop shutdown): let it propagate
        finally:
            job.state = "done"

    def shutdown(self) -> None:
        """Like gradio stopping: open streams get "Server stopped unexpectedly."
        and are cut; every job stops."""
        for session in list(self._sessions.values()):
            if session.writer:
                session.queue.put_nowait((CUT, SERVER_STOPPED))
            else:
                self._drop_session(session)
        for job in list(self._jobs.values()):
            if job.state == "running" and job.stop is None and job.task is not None:
                job.stop = "abandon"
                job.task.cancel()
