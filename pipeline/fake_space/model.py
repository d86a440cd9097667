"""Configuration, statistics, the fake model and fault parsing of the fake Space.

Nothing here touches the network; :mod:`pipeline.fake_space.server` uses these
pieces to answer like the Qwen2-72B-Instruct Space would.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field, fields
from typing import Any

#: Faults the fake Space can inject (see the package docstring for what each does).
FAULT_NAMES: frozenset[str] = frozenset(
    {"queue_full", "cut", "app_error", "unexpected_error", "stall", "bad_json", "empty"}
)

# `[fault:NAME]` or `[fault:NAME:N]` anywhere in the prompt text.
_MARKER_RE = re.compile(r"\[fault:([a-z_]+)(?::(\d+))?\]")

#: Config fields that ``POST /_fake/control`` may change at run time.
MUTABLE_FIELDS: frozenset[str] = frozenset(
    {
        "latency",
        "chunks",
        "heartbeat_interval",
        "concurrency_limit",
        "max_size",
        "fault_rates",
        "down",
        "track_prompts",
        "orphan_timeout",
        "hf_state",
        "wake_after",
    }
)

#: What the Hugging Face host may say instead of the app (see ``hf_state``).
HF_STATES: frozenset[str] = frozenset({"running", "sleeping", "building", "error", "gone"})


@dataclass
class FakeSpaceConfig:
    """Behaviour of a :class:`~pipeline.fake_space.FakeSpace`; mutable while it runs."""

    gradio_major: int = 4
    """4: root paths, tuple history, "4.44.1"; 6: "/gradio_api" prefix, messages, "6.31.0"."""
    latency: float = 0.0
    """Seconds from process_starts to process_completed, spread evenly over the chunks."""
    chunks: int = 10
    """Number of process_generating messages carrying text (>= 1)."""
    heartbeat_interval: float = 15.0
    concurrency_limit: int | None = None
    """Jobs running at once; None means unlimited."""
    max_size: int | None = None
    """Waiting (not running) jobs allowed; beyond it a join gets 503."""
    fault_rates: dict[str, float] = field(default_factory=dict)
    """Probability per join of each fault, e.g. ``{"cut": 0.1}``."""
    seed: int = 0
    down: bool = False
    """When true, /config, join, data and cancel answer 502 "Bad Gateway"."""
    track_prompts: bool = True
    """Record every prompt in ``stats.attempts_by_prompt`` and every session hash in
    ``stats.sessions``. Prompts with a fault marker are always counted (the marker
    needs the count). Turn off for long benchmarks so memory stays flat."""
    orphan_timeout: float = 60.0
    """A session whose data stream is never opened is dropped after this many seconds."""
    hf_state: str = "running"
    """What the Hugging Face host says of the Space: ``running`` (the app answers),
    ``sleeping`` (503 page; the first request wakes it after ``wake_after`` seconds),
    ``building`` (503 page), ``error`` (503 "Runtime error" page) or ``gone`` (404)."""
    wake_after: float = 1.0

    def __post_init__(self) -> None:
        validate_config(self)

    def to_dict(self) -> dict[str, Any]:
        """The config as a JSON-ready dict."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["fault_rates"] = dict(self.fault_rates)
        return out


def validate_config(cfg: FakeSpaceConfig) -> None:
    """Raise ValueError if ``cfg`` holds a value the fake Space cannot honour."""
    if cfg.hf_state not in HF_STATES:
        raise ValueError(f"hf_state must be one of {sorted(HF_STATES)}, not {cfg.hf_state!r}")
    if cfg.gradio_major not in (4, 6):
        raise ValueError(f"gradio_major must be 4 or 6, not {cfg.gradio_major!r}")
    if not isinstance(cfg.chunks, int) or isinstance(cfg.chunks, bool) or cfg.chunks < 1:
        raise ValueError(f"chunks must be an int >= 1, not {cfg.chunks!r}")
    for name in ("latency", "heartbeat_interval", "orphan_timeout"):
        value = getattr(cfg, name)
        if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0:
            raise ValueError(f"{name} must be a number >= 0, not {value!r}")
    if cfg.heartbeat_interval <= 0:
        raise ValueError("heartbeat_interval must be > 0")
    for name in ("concurrency_limit", "max_size"):
        value = getattr(cfg, name)
        if value is not None and (
            not isinstance(value, int) or isinstance(value, bool) or value < 0
        ):
            raise ValueError(f"{name} must be None or an int >= 0, not {value!r}")
    if cfg.concurrency_limit == 0:
        raise ValueError("concurrency_limit must be >= 1 (or None)")
    if not isinstance(cfg.fault_rates, dict):
        raise ValueError("fault_rates must be a dict")
    for name, rate in cfg.fault_rates.items():
        if name not in FAULT_NAMES:
            raise ValueError(f"unknown fault {name!r}; known: {sorted(FAULT_NAMES)}")
        if not isinstance(rate, (int, float)) or isinstance(rate, bool) or not 0 <= rate <= 1:
            raise ValueError(f"fault rate of {name!r} must be in [0, 1], not {rate!r}")
    if sum(cfg.fault_rates.values()) > 1:
        raise ValueError("fault rates must add up to at most 1")
    for name in ("down", "track_prompts"):
        if not isinstance(getattr(cfg, name), bool):
            raise ValueError(f"{name} must be a bool")


@dataclass
class FakeSpaceStats:
    """Counters of a running fake Space.

    ``joins`` counts accepted joins (200 + event_id); ``rejected`` the 503 answers.
    Each accepted join ends in exactly one of ``completed`` (success), ``failed``
    (success:false, cut or unexpected_error), ``cancelled`` (POST cancel) or
    ``abandoned`` (the client dropped the data stream, or the session was orphaned).
    """

    joins: int = 0
    rejected: int = 0
    completed: int = 0
    failed: int = 0
    cancelled: int = 0
    abandoned: int = 0
    running: int = 0
    waiting: int = 0
    max_running: int = 0
    faults: dict[str, int] = field(default_factory=dict)
    attempts_by_prompt: dict[str, int] = field(default_factory=dict)
    sessions: set[str] = field(default_factory=set)

    def to_dict(self) -> dict[str, Any]:
        """The stats as a JSON-ready dict (``sessions`` becomes a sorted list)."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["faults"] = dict(self.faults)
        out["attempts_by_prompt"] = dict(self.attempts_by_prompt)
        out["sessions"] = sorted(self.sessions)
        return out


def fake_answer(prompt: str, system: str) -> str:
    """The fake model's deterministic answer to ``prompt`` under ``system``.

    It echoes both texts in full and adds repeated words and non-ASCII text, so a
    client that drops, reorders or re-encodes chunks gets a visibly wrong answer.
    """
    return f"Echo: {prompt}\nSystem: {system}\nno no no — café, 日本語, ✓"


def marker_fault(prompt: str) -> tuple[str, int] | None:
    """The first known ``[fault:NAME]`` / ``[fault:NAME:N]`` marker of ``prompt``.

    Returns (NAME, N) with N defaulting to 1, or None. Unknown names are ignored so
    that a prompt may carry unrelated bracketed text.
    """
    if "[fault:" not in prompt:  # fast path: almost every prompt
        return None
    for match in _MARKER_RE.finditer(prompt):
        if match.group(1) in FAULT_NAMES:
            return match.group(1), int(match.group(2) or 1)
    return None


def pick_random_fault(rng: random.Random, rates: dict[str, float]) -> str | None:
    """Draw one fault from ``rates`` (or None), consuming one number from ``rng``.

    Exactly one draw per call keeps a seeded run reproducible whatever the rates.
    """
    u = rng.random()
    acc = 0.0
    for name in sorted(rates):
        acc += rates[name]
        if u < acc:
            return name
    return None


def split_text(text: str, n: int) -> list[str]:
    """Split ``text`` into at most ``n`` non-empty, nearly equal pieces, in order."""
    n = max(1, min(n, len(text)))
    size, extra = divmod(len(text), n)
    pieces: list[str] = []
    pos = 0
    for i in range(n):
        end = pos + size + (1 if i < extra else 0)
        pieces.append(text[pos:end])
        pos = end
    return pieces
