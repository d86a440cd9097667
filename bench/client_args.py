"""The command line every alternative client in bench/ takes (they run as their own processes)."""

from __future__ import annotations

import argparse
import sys


def parse_client_args(argv: list[str] | None, *, concurrency: int = 32) -> argparse.Namespace:
    """``INPUT -o OUTPUT --url URL [--concurrency N]``; only loopback URLs are accepted."""
    p = argparse.ArgumentParser()
    p.add_argument("input")
    p.add_argument("-o", "--output", required=True)
    p.add_argument("--url", required=True)
    p.add_argument("--concurrency", type=int, default=concurrency)
    args = p.parse_args(argv)
    if not args.url.startswith("http://127.0.0.1:"):
        sys.exit("loopback URLs only")
    return args
