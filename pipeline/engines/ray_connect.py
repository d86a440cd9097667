"""Joining a Ray cluster someone else runs: bounded, interruptible, and saying why not.

``ray.init(address=...)`` on its own retries for minutes (20 tries of up to ~41 s each
when nothing answers), cannot be interrupted, and ends with "Failed to connect to Ray
cluster" whatever the cause. So before it: the address Ray would use is resolved the
way Ray does (``RAY_ADDRESS``, then for ``auto`` the ``ray_current_cluster`` file of
the last ``ray start`` on this node), and its GCS port is probed with a plain TCP
connect bounded by the connect timeout; then ``ray.init`` runs in a thread of its own,
waited for at most that long (its own retries are cut to as many seconds). The caller
may abandon the wait at any moment (Ctrl-C). Errors name the address, where it came
from and the likely cause.

Then :func:`fit_actors`: a cluster's free CPUs must hold the actors (a fraction of a
CPU each) and the spool's read task (one CPU), or Ray waits for them forever.

Nothing here imports Ray at module level.
"""

from __future__ import annotations

import contextlib
import math
import os
import socket
import threading
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from pipeline.errors import ConfigError, EngineUnavailableError

T = TypeVar("T")

READ_TASK_CPUS = 1.0
"""CPUs Ray Data's read task of the spool reserves (its default)."""

AUTH_HINT = ("if the cluster uses token authentication (the default of `ray start` when a "
             "token exists), set RAY_AUTH_MODE=token in this environment, with the cluster's "
             "token in RAY_AUTH_TOKEN or ~/.ray/auth_token")


def resolve_address(address: str) -> tuple[str, str]:
    """``(host:port, where it came from)``: the address ``ray.init`` would join."""
    from ray._common.utils import get_ray_address_file
    from ray._private.services import get_ray_address_from_environment

    env = os.environ.get("RAY_ADDRESS", "")
    if env:
        return env, "RAY_ADDRESS"
    if address != "auto":
        return address, "--address"
    path = get_ray_address_file(None)
    with contextlib.suppress(OSError), open(path, encoding="utf-8") as handle:
        written = handle.read().strip()
        if written:  # the last `ray start` on this node (Ray would prefer a lone running GCS)
            return written, f"--address auto, read from {path}"
    try:
        return get_ray_address_from_environment("auto", None), "--address auto, a Ray found running here"
    except ConnectionError:
        raise EngineUnavailableError(
            f"--address auto: no Ray cluster was started on this node ({path} does not exist "
            "and no Ray is running here): start one with `ray start --head`, or name it with "
            "--address HOST:PORT") from None


def split_address(address: str) -> tuple[str, int]:
    """``(host, port)`` of a GCS address; ConfigError (exit 2) for anything else."""
    if "://" in address:
        raise ConfigError(f"--address {address!r}: Ray Client (ray://) and other URLs are not "
                          "supported; run on a node of the cluster with --address HOST:PORT "
                          "or 'auto'")
    host, _, port = address.rpartition(":")
    try:
        number = int(port)
    except ValueError:
        number = -1
    if not host or not 0 < number < 65536:
        raise ConfigError(f"--address {address!r}: expected HOST:PORT (the head's GCS port, "
                          "6379 by default) or 'auto'")
    return host.strip("[]"), number


def probe(address: str, source: str, timeout: float) -> None:
    """EngineUnavailableError unless something accepts a TCP connection at ``address``."""
    host, port = split_address(address)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return
    except ConnectionRefusedError:
        cause = "nothing listens there (connection refused)"
    except TimeoutError:
        cause = f"no answer in {timeout:g} s (the wrong host, or a firewall)"
    except socket.gaierror as exc:
        cause = f"unknown host ({exc.strerror or exc})"
    except OSError as exc:
        cause = exc.strerror or str(exc)
    hint = ("; the file may be stale (left by a cluster that has stopped): start one with "
            "`ray start --head`, or name one with --address HOST:PORT"
            if "read from" in source else
            "; is the cluster started (`ray start --head --port PORT`) and the port right?")
    raise EngineUnavailableError(f"cannot join the Ray cluster at {address} ({source}): "
                                 f"{cause}{hint}")


def connect_failure(address: str, source: str, detail: str) -> EngineUnavailableError:
    """The error for a ``ray.init`` that failed (or timed out) after the port answered."""
    hint = ("; " + AUTH_HINT
            if os.environ.get("RAY_AUTH_MODE", "").strip().lower() != "token" else
            "; the token in use (RAY_AUTH_TOKEN or ~/.ray/auth_token) may not be the "
            "cluster's, or its Ray version may differ from this one")
    return EngineUnavailableError(f"cannot join the Ray cluster at {address} ({source}): "
                                  f"{detail}{hint}")


@contextlib.contextmanager
def gcs_connect_budget(seconds: float) -> Iterator[None]:
    """Cut ``ray.init``'s GCS connection retries (one a second) to about ``seconds``."""
    name = "RAY_gcs_server_port_wait_time_s"
    if name in os.environ:  # the operator's own budget wins
        yield
        return
    os.environ[name] = str(max(1, math.ceil(seconds)))
    try:
        yield
    finally:
        os.environ.pop(name, None)


def call_with_timeout(fn: Callable[[], T], timeout: float, name: str) -> T:
    """``fn()`` in a daemon thread; TimeoutError after ``timeout`` s (the thread is left).

    Not for what forks processes that must outlive the thread (a private Ray: see
    ``distributed._in_daemon_thread``); joining a cluster forks nothing."""
    box: dict[str, object] = {}
    done = threading.Event()

    def body() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:
            box["error"] = exc
        finally:
            done.set()

    threading.Thread(target=body, name=name, daemon=True).start()
    if not done.wait(timeout):
        raise TimeoutError(f"no answer in {timeout:g} s")
    if "error" in box:
        raise box["error"]  # type: ignore[misc]
    return box["value"]  # type: ignore[return-value]


FAILURE_HANDLER_SWITCH = "RAY_DISABLE_FAILURE_SIGNAL_HANDLER"


def driver_signals_to_python() -> None:
    """Keep Ray's crash handler off SIGTERM in this process (before Ray is imported:
    the switch is read then).

    Ray's core worker installs a C++ handler for SIGTERM (among crash signals) that
    prints a stack trace, passes the signal on, and arms an alarm (absl's default, 3 s)
    that then aborts the process (SIGABRT) whatever it is doing: a run stopping on
    SIGTERM died with exit -6 whenever its orderly stop (or Python's exit after it) took
    longer (measured: every SIGTERM while the actors were starting, and some while
    joining the cluster). The run handles SIGTERM itself (exit 130). The
    operator's own setting wins; processes started by a private Ray inherit it.
    """
    os.environ.setdefault(FAILURE_HANDLER_SWITCH, "1")


JOB_CONFIG_VARIABLE = "RAY_JOB_CONFIG_JSON_ENV_VAR"
"""Where a submitted job (or an operator) hands ray.init the job's runtime environment."""


def workers_runtime_env() -> dict[str, Any] | None:
    """The runtime environment that keeps the crash handler off the job's workers on a
    cluster (None: leave it to the operator, whose job config already sets the switch).

    A cluster's workers do not inherit the driver's environment. When the run ends,
    Ray stops them with SIGTERM, and their handler printed ``*** SIGTERM received ...``
    and a stack trace, which Ray forwards to the driver's stderr (seen now and then in
    the cluster tests' stop repeats). Ray merges these variables with the job config's,
    key by key, and refuses a key given twice: hence the check.
    """
    if FAILURE_HANDLER_SWITCH in os.environ.get(JOB_CONFIG_VARIABLE, ""):
        return None
    return {"env_vars": {FAILURE_HANDLER_SWITCH: os.environ.get(FAILURE_HANDLER_SWITCH, "1")}}


def fit_actors(requested: int, free_cpus: float, actor_cpus: float, address: str) -> int:
    """Actors that fit ``free_cpus`` beside the read task; ConfigError (exit 2) if none does."""
    needed = requested * actor_cpus + READ_TASK_CPUS
    if needed <= free_cpus + 1e-9:
        return requested
    fitting = math.floor((free_cpus - READ_TASK_CPUS) / actor_cpus + 1e-9)
    if fitting < 1:
        raise ConfigError(
            f"the Ray cluster at {address} has {free_cpus:g} free CPUs: not enough for one "
            f"actor ({actor_cpus:g} CPU) and the read task ({READ_TASK_CPUS:g} CPU), "
            f"{actor_cpus + READ_TASK_CPUS:g} CPUs; --actors {requested} needs {needed:g}. "
            "Free some CPUs or add a node (`ray status` shows what is in use)")
    return fitting
