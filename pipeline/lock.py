"""An exclusive per-output lock, so two runs never write the same output at once."""

from __future__ import annotations

import fcntl
import json
import logging
import os
import socket

from pipeline.errors import LockedError, OutputError
from pipeline.models import iso_utc, utc_now

log = logging.getLogger(__name__)


def lock_path(output_path: str) -> str:
    """The lock file of an output."""
    return output_path + ".lock"


class OutputLock:
    """Context manager holding the exclusive lock of ``output_path`` (``-``: no lock).

    It is a non-blocking ``fcntl.flock`` on ``<output>.lock``. The kernel drops it
    when the holder exits, however it dies (SIGKILL included), so a stale lock
    cannot exist and nothing ever needs deleting. The lock file is left in place on
    purpose: deleting it would let two runs lock two different files of the same
    name. POSIX only (Windows is out of scope); ``flock`` over NFS is only as
    reliable as the NFS setup, so keep cron outputs on a local disk.

    Acquiring raises LockedError, naming the holder's pid, host and start time,
    if another process holds it; OutputError if the lock file cannot be created.
    """

    def __init__(self, output_path: str) -> None:
        self.output_path = output_path
        self.path: str | None = None if output_path == "-" else lock_path(output_path)
        self._fd = -1

    @property
    def held(self) -> bool:
        """Whether this object holds the lock now."""
        return self._fd >= 0

    def acquire(self) -> None:
        """Take the lock without waiting; raises LockedError if it is taken."""
        if self.path is None or self.held:
            return
        try:
            # Python opens it non-inheritable, so child processes never keep the lock alive.
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise OutputError(f"cannot create the lock file {self.path}: {exc.strerror}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise LockedError(self._held_message()) from None
        except OSError as exc:
            os.close(fd)
            raise OutputError(f"cannot lock {self.path}: {exc.strerror}") from exc
        info = {"pid": os.getpid(), "host": socket.gethostname(), "started_at": iso_utc(utc_now())}
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(info).encode() + b"\n", 0)
        except OSError as exc:  # the note only improves the other run's message
            log.debug("cannot write the lock note %s: %s", self.path, exc)
        self._fd = fd

    def release(self) -> None:
        """Drop the lock (closing the descriptor releases it); safe to call twice."""
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            os.close(fd)

    def _held_message(self) -> str:
        holder = "pid unknown"
        try:
            with open(self.path or "", encoding="utf-8") as note:
                info = json.loads(note.read() or "{}")
            holder = (f"pid {info.get('pid', '?')} on {info.get('host', '?')}, "
                      f"started {info.get('started_at', '?')}")
        except (OSError, ValueError, AttributeError) as exc:
            log.debug("lock note unreadable (the holder may not have written it yet): %s", exc)
        return (
            f"another qwen-batch run ({holder}) is writing to {self.output_path}; wait for it "
            "to finish. Do not remove anything: the lock frees itself when that process exits."
        )

    def __enter__(self) -> OutputLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
