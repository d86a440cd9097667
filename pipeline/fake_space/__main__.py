"""Command line: ``python -m pipeline.fake_space --port 7860 --gradio 4 ...``."""

from __future__ import annotations

import argparse
import sys

from .model import FAULT_NAMES, FakeSpaceConfig
from .server import serve


def _fault(text: str) -> tuple[str, float]:
    name, sep, rate = text.partition("=")
    if not sep or name not in FAULT_NAMES:
        raise argparse.ArgumentTypeError(
            f"expected NAME=RATE with NAME in {sorted(FAULT_NAMES)}, got {text!r}"
        )
    try:
        return name, float(rate)
    except ValueError:
        raise argparse.ArgumentTypeError(f"bad rate in {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``python -m pipeline.fake_space``."""
    p = argparse.ArgumentParser(
        prog="python -m pipeline.fake_space",
        description="Serve a local fake of the Qwen2-72B-Instruct Gradio Space.",
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=7860, help="0 picks a free port")
    p.add_argument("--gradio", type=int, choices=(4, 6), default=4, help="Gradio major version")
    p.add_argument("--latency", type=float, default=0.0, help="seconds per answer")
    p.add_argument("--chunks", type=int, default=10, help="text chunks per answer")
    p.add_argument("--concurrency-limit", type=int, default=None)
    p.add_argument("--max-size", type=int, default=None, help="waiting jobs allowed")
    p.add_argument("--heartbeat", type=float, default=15.0, help="heartbeat interval, s")
    p.add_argument(
        "--fault",
        type=_fault,
        action="append",
        default=[],
        metavar="NAME=RATE",
        help="random fault rate per join (repeatable)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--no-track-prompts",
        action="store_true",
        help="do not record every prompt and session (flat memory for long benchmarks)",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` and serve until interrupted; returns the exit code."""
    args = build_parser().parse_args(argv)
    try:
        config = FakeSpaceConfig(
            gradio_major=args.gradio,
            latency=args.latency,
            chunks=args.chunks,
            heartbeat_interval=args.heartbeat,
            concurrency_limit=args.concurrency_limit,
            max_size=args.max_size,
            fault_rates=dict(args.fault),
            seed=args.seed,
            track_prompts=not args.no_track_prompts,
        )
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    serve(config, args.host, args.port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
