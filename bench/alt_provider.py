#!/usr/bin/env python3
"""Alternative 1: the single-prompt provider style, batched the way users do it.

``Qwen_Qwen_2_72B.create_async_generator`` per prompt, with no shared session: every
prompt opens its own ``aiohttp.ClientSession`` (and so reads ``/config`` and opens
new connections), as the classic provider interface does. ``--concurrency`` workers
pull rows from one iterator; answers (the joined fragments) are appended as
``{"id", "prompt", "completion"}`` JSONL. The exit code is 1 when any row failed.

    python bench/alt_provider.py prompts.jsonl -o out.jsonl --url http://127.0.0.1:7860
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys

from client_args import parse_client_args

from pipeline import Qwen_Qwen_2_72B


async def main_async(args: argparse.Namespace) -> int:
    failed = 0
    with open(args.input, "rb") as src, open(args.output, "w", encoding="utf-8") as out:
        rows = ((str(r.get("id")), r["prompt"]) for r in map(json.loads, src))

        async def worker() -> None:
            nonlocal failed
            for row_id, prompt in rows:
                try:
                    parts = [piece async for piece in Qwen_Qwen_2_72B.create_async_generator(
                        "qwen-2-72b", [{"role": "user", "content": prompt}], url=args.url)]
                except Exception as exc:
                    failed += 1
                    print(f"row {row_id}: {type(exc).__name__}: {exc}", file=sys.stderr)
                    continue
                out.write(json.dumps({"id": row_id, "prompt": prompt,
                                      "completion": "".join(parts)}, ensure_ascii=False) + "\n")

        await asyncio.gather(*(worker() for _ in range(args.concurrency)))
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    args = parse_client_args(argv)
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    sys.exit(main())
