#!/usr/bin/env python3
"""The minimal reference client the benchmarks measure qwen-batch against.

One pooled aiohttp session; for each prompt: ``POST queue/join``, ``GET queue/data``
(SSE), ``json.loads`` of every ``data:`` line, stop at ``process_completed``, take the
answer from its final output, append ``{"id", "prompt", "completion"}`` to a JSONL
file. ``--concurrency`` workers pull rows from one shared iterator. Nothing else: no
retries, no timeouts beyond aiohttp's, no resume, no diff application, no records
beyond those three fields. A row that fails is counted and skipped; the exit code is
1 when any did.

    python bench/reference_client.py prompts.jsonl -o out.jsonl --url http://127.0.0.1:7860 \
        --concurrency 64

Input: JSONL or Parquet (``.parquet``, read in batches with pyarrow) rows with
``prompt`` and optional ``id``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import uuid
from collections.abc import Iterator
from typing import Any

import aiohttp

DEFAULT_SYSTEM = "You are a helpful assistant."


def read_rows(path: str) -> Iterator[tuple[str, str]]:
    """(id, prompt) pairs, streamed."""
    if path.endswith((".parquet", ".pq")):
        import pyarrow.parquet as pq

        pf = pq.ParquetFile(path)
        position = 0
        for batch in pf.iter_batches(batch_size=1024, columns=["id", "prompt"]):
            for row_id, prompt in zip(batch.column(0).to_pylist(), batch.column(1).to_pylist(),
                                      strict=True):
                yield (str(row_id) if row_id is not None else str(position)), prompt
                position += 1
        return
    with open(path, "rb") as handle:
        for position, line in enumerate(handle):
            if line.strip():
                row = json.loads(line)
                yield str(row.get("id", position)), row["prompt"]


def answer_of(chatbot: list[Any]) -> str:
    last = chatbot[-1]
    if isinstance(last, list):  # Gradio 4 tuples
        return str(last[1] or "")
    content = last.get("content")  # Gradio 5/6 messages
    if isinstance(content, str):
        return content
    return "".join(part.get("text", "") for part in content)


async def one(session: aiohttp.ClientSession, base: str, prompt: str) -> str:
    session_hash = uuid.uuid4().hex[:12]
    body = {"data": [prompt, [], DEFAULT_SYSTEM], "event_data": None, "fn_index": 0,
            "trigger_id": 11, "session_hash": session_hash}  # model_chat in the Space's layout
    async with session.post(f"{base}/queue/join", json=body) as resp:
        resp.raise_for_status()
        event_id = (await resp.json())["event_id"]
    async with session.get(f"{base}/queue/data", params={"session_hash": session_hash}) as resp:
        resp.raise_for_status()
        async for line in resp.content:
            if not line.startswith(b"data:"):
                continue
            message = json.loads(line[5:])
            if message.get("event_id") != event_id:
                continue
            if message["msg"] == "process_completed":
                if not message.get("success"):
                    raise RuntimeError(f"job failed: {message}")
                return answer_of(message["output"]["data"][1])
    raise RuntimeError("stream ended before process_completed")


async def main_async(args: argparse.Namespace) -> int:
    rows = read_rows(args.input)
    failed = 0
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        base = args.url.rstrip("/")
        async with session.get(f"{base}/config") as resp:
            base += (await resp.json()).get("api_prefix", "") if resp.status == 200 else ""
        with open(args.output, "w", encoding="utf-8") as out:

            async def worker() -> None:
                nonlocal failed
                for row_id, prompt in rows:  # one shared iterator: each row goes to one worker
                    try:
                        answer = await one(session, base, prompt)
                    except Exception as exc:
                        failed += 1
                        print(f"row {row_id}: {type(exc).__name__}: {exc}", file=sys.stderr)
                        continue
                    out.write(json.dumps({"id": row_id, "prompt": prompt, "completion": answer},
                                         ensure_ascii=False) + "\n")

            await asyncio.gather(*(worker() for _ in range(args.concurrency)))
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("input")
    p.add_argument("-o", "--output", required=True)
    p.add_argument("--url", required=True)
    p.add_argument("--concurrency", type=int, default=64)
    return asyncio.run(main_async(p.parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
