"""An exclusive per-output lock, so two runs never write the same output at once."""

from __future__ import annotations

import fcntl
import json
import logging
import os
import socket

from pipeline.errors import LockedError, OutputError
from pipeline.models import iso_utc, now_us

log = logging.getLogger(__name__)

_ATTEMPTS = 100
"""Tries to lock a file that each time turns out removed by a run that just finished."""


def _same_file(a: os.stat_result, b: os.stat_result) -> bool:
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def lock_path(output_path: str) -> str:
    """The lock file of an output."""
    return output_path + ".lock"


class OutputLock:
    """Context manager holding the exclusive lock of ``output_path`` (``-``: no lock).

    It is a non-blocking ``fcntl.flock`` on ``<output>.lock``. The kernel drops it
    when the holder exits, however it dies (SIGKILL included), so a stale lock
    cannot exist. Releasing removes the file, while the lock is still held; a run
    that gets the lock checks that the path still names the file it locked, and
    starts over if not (it locked a file a finished run had just removed), so two
    runs never hold two different files of one name. A run killed with SIGKILL
    leaves its file behind: harmless, as it holds no lock, and the next run takes
    it and removes it in turn. POSIX only (Windows is out of scope); ``flock`` over
    NFS is only as reliable as the NFS setup, so keep cron outputs on a local disk.

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
        for _ in range(_ATTEMPTS):
            fd = self._open_locked(self.path)
            try:
                current = os.stat(self.path)
            except FileNotFoundError:
                current = None
            except OSError as exc:
                os.close(fd)
                raise OutputError(f"cannot check {self.path}: {exc.strerror}") from exc
            if current is not None and _same_file(current, os.fstat(fd)):
                break
            os.close(fd)  # a run that finished removed this file meanwhile: lock the new one
        else:
            raise OutputError(f"cannot lock {self.path}: it was replaced {_ATTEMPTS} times in a row")
        info = {"pid": os.getpid(), "host": socket.gethostname(), "started_at": iso_utc(now_us())}
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(info).encode() + b"\n", 0)
        except OSError as exc:  # the note only improves the other run's message
            log.debug("cannot write the lock note %s: %s", self.path, exc)
        self._fd = fd

    def _open_locked(self, path: str) -> int:
        """A descriptor of ``path`` (created if need be) holding its flock."""
        try:
            # Python opens it non-inheritable, so child processes never keep the lock alive.
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise OutputError(f"cannot create the lock file {path}: {exc.strerror}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise LockedError(self._held_message()) from None
        except OSError as exc:
            os.close(fd)
            raise OutputError(f"cannot lock {path}: {exc.strerror}") from exc
        return fd

    def release(self) -> None:
        """Remove the lock file, then drop the lock; safe to call twice.

        The file goes first, while the lock is held, so that no other run can lock
        it in between and then lose it; a run that opened it before it went finds it
        gone once it gets the lock, and starts over (see :meth:`acquire`).
        """
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            try:
                if self.path is not None and _same_file(os.stat(self.path), os.fstat(fd)):
                    os.remove(self.path)  # (someone else's file after a hand-made mess: kept)
            except OSError as exc:  # left behind: harmless, the next run reuses it
                log.debug("cannot remove the lock file %s: %s", self.path, exc)
            finally:
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
