#!/usr/bin/env python3
"""Alternative 2: the official ``gradio_client`` (``Client.submit`` jobs), as a user would batch.

Runs with the python of a *gradio* virtualenv (it needs ``gradio_client``, not ``pipeline``):

    $QWEN_BATCH_GRADIO4_PYTHON bench/alt_gradio_client.py prompts.jsonl -o out.jsonl \
        --url http://127.0.0.1:7860 --concurrency 32

One ``Client`` for the run; at most ``--concurrency``
jobs submitted at once (a sliding window over the input); each answer is taken from
``job.result()`` and appended as ``{"id", "prompt", "completion"}`` JSONL. The exit
code is 1 when any row failed.
"""

from __future__ import annotations

import concurrent.futures as cf
import json
import os
import sys

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

from client_args import parse_client_args
from gradio_client import Client

DEFAULT_SYSTEM = "You are a helpful assistant."


def answer_of(chatbot: list) -> str:
    last = chatbot[-1]
    if isinstance(last, (list, tuple)):
        return str(last[1] or "")
    content = last.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, dict):
        return str(content.get("text") or "")
    return "".join(part.get("text", "") for part in content)


def main(argv: list[str] | None = None) -> int:
    args = parse_client_args(argv)
    # The client's one shared SSE listener runs in the same thread pool as the jobs: with
    # max_workers == jobs in flight it never starts and every job waits forever (seen
    # with gradio_client 1.3.0). Leave it room.
    client = Client(args.url, verbose=False, max_workers=args.concurrency + 2)
    failed = 0
    with open(args.input, "rb") as src, open(args.output, "w", encoding="utf-8") as out:
        rows = ((str(r.get("id")), r["prompt"]) for r in map(json.loads, src))
        # Keyed by the job's inner future: cf.wait() hands back that one, not the Job.
        window: dict[cf.Future, tuple[str, str, object]] = {}

        def drain(block_until_one: bool) -> None:
            nonlocal failed
            done, _ = cf.wait(list(window), return_when=cf.FIRST_COMPLETED if block_until_one
                              else cf.ALL_COMPLETED)
            for job in done:
                row_id, prompt, handle = window.pop(job)
                try:
                    outputs = handle.result()  # type: ignore[attr-defined]
                    answer = answer_of(outputs[1])
                except Exception as exc:
                    failed += 1
                    print(f"row {row_id}: {type(exc).__name__}: {exc}", file=sys.stderr)
                    continue
                out.write(json.dumps({"id": row_id, "prompt": prompt, "completion": answer},
                                     ensure_ascii=False) + "\n")

        for row_id, prompt in rows:
            if len(window) >= args.concurrency:
                drain(True)
            job = client.submit(prompt, [], DEFAULT_SYSTEM, api_name="/model_chat")
            window[getattr(job, "future", job)] = (row_id, prompt, job)
        while window:
            drain(False)
    if hasattr(client, "close"):
        client.close()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
