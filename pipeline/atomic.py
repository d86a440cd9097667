"""Replace a file so that a crash leaves either the old one or the new one, never a mix.

The new content goes to a temporary file beside the target (same filesystem, so the
rename is atomic), is flushed and fsynced, then renamed over the target, and the
folder is fsynced so that the rename itself survives a power cut. On any error the
temporary file is removed and the target is left as it was.
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
import uuid
from collections.abc import Iterator
from typing import BinaryIO

log = logging.getLogger(__name__)

__all__ = ["fsync_path", "replace_atomically"]


@contextlib.contextmanager
def replace_atomically(path: str, *, keep_mode: bool = False) -> Iterator[BinaryIO]:
    """Yield a binary file whose content replaces ``path`` when the block ends without error.

    ``keep_mode`` gives the new file the old one's permission bits rather than a new
    file's. Errors are OSError from the filesystem; the caller words them.
    """
    directory = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(directory, f".{os.path.basename(path)}.{uuid.uuid4().hex[:8]}.tmp")
    # O_EXCL: never someone else's file; mode 0666 less the umask, like any new file.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        if keep_mode:
            os.chmod(tmp, stat.S_IMODE(os.stat(path).st_mode))
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise
    fsync_path(directory)


def fsync_path(path: str) -> None:
    """fsync a file or folder by name; a filesystem that cannot sync a folder is only logged."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as exc:  # the rename (or write) still happened
        log.debug("cannot fsync %s: %s", path, exc)
    finally:
        os.close(fd)

