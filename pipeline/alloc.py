"""Allocator settings that keep a long run's resident memory flat.

Two process-wide knobs, each applied at most once and never raising:

* :func:`pin_mmap_threshold` (glibc): glibc raises its mmap threshold after the first
  large blocks are freed, so later 1 MiB batch buffers and 2 KB strings come from a
  heap that never shrinks; pinned at 128 KiB (what ``MALLOC_MMAP_THRESHOLD_=131072``
  does), large blocks stay mmapped and go back to the OS when freed. Called by the
  ``run`` command before the run starts (:mod:`pipeline.cli`), never at import time nor
  by :func:`pipeline.app.run`: a program that uses the library keeps its allocator.
* :func:`use_system_arrow_pool`: Arrow's bundled mimalloc keeps freed pages resident;
  the system allocator (with the pinned threshold) returns them. The ``run`` command
  asks for it (:func:`prefer_system_arrow_pool`, which imports nothing) and the Parquet
  paths, the only ones that import pyarrow, apply that choice
  (:func:`apply_arrow_pool_choice`): a JSONL run never loads pyarrow, and a program that
  uses the library keeps Arrow's pool as it set it.

An explicit choice in the environment (``MALLOC_MMAP_THRESHOLD_``, ``GLIBC_TUNABLES``,
``ARROW_DEFAULT_MEMORY_POOL``) is left alone.
"""

from __future__ import annotations

import functools
import logging
import os
import sys

log = logging.getLogger(__name__)

MMAP_THRESHOLD = 128 * 1024
_M_MMAP_THRESHOLD = -3  # glibc's <malloc.h>


def _is_glibc() -> bool:
    if not sys.platform.startswith("linux") or not hasattr(os, "confstr"):
        return False
    try:  # musl has no CS_GNU_LIBC_VERSION: ValueError
        version = os.confstr("CS_GNU_LIBC_VERSION")
    except (ValueError, OSError):
        return False
    return version is not None and version.startswith("glibc")


@functools.cache
def pin_mmap_threshold(threshold: int = MMAP_THRESHOLD) -> bool:
    """Pin glibc's mmap threshold; True if this call set it (False elsewhere, or if the
    environment already chose one)."""
    tunables = os.environ.get("GLIBC_TUNABLES", "")
    if "MALLOC_MMAP_THRESHOLD_" in os.environ or "malloc.mmap_threshold" in tunables:
        return False
    if not _is_glibc():
        return False
    try:
        import ctypes

        mallopt = ctypes.CDLL(None).mallopt  # the process's own libc
        mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        mallopt.restype = ctypes.c_int
        pinned = bool(mallopt(_M_MMAP_THRESHOLD, threshold) == 1)
    except (OSError, AttributeError, ValueError, TypeError) as exc:
        log.debug("cannot set glibc's mmap threshold: %s", exc)
        return False
    log.debug("glibc mmap threshold pinned at %d bytes: %s", threshold, pinned)
    return pinned


_system_arrow_pool_wanted = False


def prefer_system_arrow_pool() -> None:
    """Ask for Arrow's system pool from the first Parquet use on (the ``run`` command does)."""
    global _system_arrow_pool_wanted
    _system_arrow_pool_wanted = True


def apply_arrow_pool_choice() -> bool:
    """On a Parquet path: switch Arrow's pool if :func:`prefer_system_arrow_pool` asked."""
    return _system_arrow_pool_wanted and use_system_arrow_pool()


@functools.cache
def use_system_arrow_pool() -> bool:
    """Make the system allocator Arrow's default pool; True if this call switched it.

    Imports pyarrow: call it on Parquet paths only.
    """
    # Why the default pool and not ``memory_pool=``: ParquetFile and iter_batches take
    # no pool argument, so the batches the readers decode always come from the default
    # pool; setting it once, on the first Parquet use, covers every Arrow allocation of
    # the run in one place (a JSONL run never imports pyarrow, so never gets here).
    if "ARROW_DEFAULT_MEMORY_POOL" in os.environ:
        return False
    import pyarrow as pa

    try:
        pa.set_memory_pool(pa.system_memory_pool())
    except (pa.ArrowException, NotImplementedError) as exc:
        log.debug("cannot switch Arrow to the system allocator: %s", exc)
        return False
    return True
