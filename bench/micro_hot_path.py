#!/usr/bin/env python3
"""Micro-benchmarks of the per-prompt hot path, in one process, no network.

    .venv/bin/python bench/micro_hot_path.py [--prompt-chars 200] [--chunks 10]

End-to-end runs on a shared 2-core machine vary by +-15 % from run to run, more than
most single changes are worth; these timings (best of several repeats, so background
load mostly drops out) say what each piece of our per-prompt work costs, and what a
proposed change would save. The SSE bytes of one answer are built with the fake
Space's own wire module (Gradio 4 shape, one network chunk per frame).

Writes ``bench/results/micro_hot_path.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import timeit
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import log, make_prompt, write_json


def sse_chunks(prompt: str, chunks: int) -> tuple[str, list[bytes], str]:
    """(event_id, network chunks, answer) of one answer as the fake Space sends it."""
    from pipeline.fake_space.model import fake_answer, split_text
    from pipeline.fake_space.wire import CLOSE_STREAM, Wire
    from pipeline.prompts import DEFAULT_SYSTEM_PROMPT

    wire = Wire(4)
    eid = "0123456789abcdef0123456789abcdef"
    answer = fake_answer(prompt, DEFAULT_SYSTEM_PROMPT)
    pieces = split_text(answer, chunks)
    frames = [wire.estimation(eid, 0, 1), wire.process_starts(eid)]
    path = wire.answer_path([])
    for i, piece in enumerate(pieces):
        if i == 0:
            data = ["", wire.with_answer([], prompt, piece), DEFAULT_SYSTEM_PROMPT]
            frames.append(wire.generating_full(eid, data, 0.01, 0.01))
        else:
            frames.append(wire.generating_append(eid, path, piece, 0.01, 0.01))
    data = ["", wire.with_answer([], prompt, answer), DEFAULT_SYSTEM_PROMPT]
    frames += [wire.completed(eid, data, 0.01, 0.01), CLOSE_STREAM]
    return eid, [f.encode() for f in frames], answer


def ours_stream(eid: str, chunks: list[bytes], track_text: bool = True) -> str:
    """What client._read_stream does with the bytes (timeouts and I/O left out)."""
    from pipeline.gradio import EventTracker, parse_message
    from pipeline.sse import SSEDecoder

    decoder = SSEDecoder(16 * 1024 * 1024)
    tracker = EventTracker(eid, diffs=True, chatbot_index=1, track_text=track_text)
    n = 0
    for chunk in chunks:
        for event in decoder.feed(chunk):
            delta = tracker.handle(parse_message(event.data))
            if delta:
                n += 1
            if tracker.done:
                return tracker.final_text or ""
    raise AssertionError("no process_completed")


def reference_stream(eid: str, chunks: list[bytes]) -> str:
    """What the reference client does (aiohttp's line splitting replaced by split)."""
    for chunk in chunks:
        for line in chunk.split(b"\n"):
            if not line.startswith(b"data:"):
                continue
            message = json.loads(line[5:])
            if message.get("event_id") != eid:
                continue
            if message["msg"] == "process_completed":
                return str(message["output"]["data"][1][-1][1])
    raise AssertionError("no process_completed")


def best_us(fn: Any, number: int, repeat: int = 7) -> float:
    return min(timeit.repeat(fn, number=number, repeat=repeat)) / number * 1e6


def bench_stream(prompt_chars: int, chunks: int, number: int) -> dict[str, float]:
    prompt = make_prompt(1, prompt_chars, __import__("random").Random(1))
    eid, data, answer = sse_chunks(prompt, chunks)
    assert ours_stream(eid, data) == answer == reference_stream(eid, data)
    out = {"ours": best_us(lambda: ours_stream(eid, data), number),
           "reference": best_us(lambda: reference_stream(eid, data), number)}

    assert ours_stream(eid, data, track_text=False) == answer
    out["ours+tracker"] = best_us(lambda: ours_stream(eid, data, track_text=False), number)
    out["bytes_per_prompt"] = float(sum(map(len, data)))
    return out


def bench_records(prompt_chars: int, number: int) -> dict[str, float]:
    import random

    from pipeline.models import PromptRow, RequestTrace, Success, now_us
    from pipeline.records import encode_record, success_record

    prompt = make_prompt(1, prompt_chars, random.Random(2))
    answer = "Echo: " + prompt
    row = PromptRow("r1", 1, prompt)

    def ours() -> bytes:
        now = now_us()
        trace = RequestTrace("0123456789ab", "http://127.0.0.1:1", "e" * 32, now, now_us(),
                             1.0, 1.0, 1.0, 10)
        return encode_record(success_record(Success(row, answer, trace, 1, "qwen", 0)))

    def reference() -> bytes:
        return (json.dumps({"id": "r1", "prompt": prompt, "completion": answer},
                           ensure_ascii=False) + "\n").encode()

    return {"ours": best_us(ours, number), "reference": best_us(reference, number)}


def bench_wait(number: int) -> dict[str, float]:
    """run_batch waits with ``asyncio.wait(pending | {stopper})`` once per loop turn.

    Each round: one task of the window finishes (scheduled with call_soon), and the
    loop collects it, either with asyncio.wait over the whole window (today) or from
    a queue fed by done-callbacks (proposed). Both include one event-loop turn.
    """

    async def measure(window: int) -> tuple[float, float]:
        loop = asyncio.get_running_loop()
        pending = {loop.create_future() for _ in range(window - 1)}
        stopper = loop.create_future()
        start = loop.time()
        for _ in range(number):
            fut = loop.create_future()
            pending.add(fut)
            loop.call_soon(fut.set_result, None)
            done, _ = await asyncio.wait(pending | {stopper}, return_when=asyncio.FIRST_COMPLETED)
            pending -= done
        per_wait = (loop.time() - start) / number * 1e6
        queue: asyncio.Queue[Any] = asyncio.Queue()
        start = loop.time()
        for _ in range(number):
            fut = loop.create_future()
            fut.add_done_callback(queue.put_nowait)
            pending.add(fut)
            loop.call_soon(fut.set_result, None)
            pending.discard(await queue.get())
        per_get = (loop.time() - start) / number * 1e6
        for f in pending | {stopper}:
            f.cancel()
        return per_wait, per_get

    out: dict[str, float] = {}
    for concurrency in (64, 512):
        best_wait, best_get = float("inf"), float("inf")
        for _ in range(5):
            wait_us, get_us = asyncio.run(measure(2 * concurrency))
            best_wait, best_get = min(best_wait, wait_us), min(best_get, get_us)
        out[f"asyncio.wait, window {2 * concurrency}"] = best_wait
        out[f"queue.get (proposed), window {2 * concurrency}"] = best_get
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--chunks", type=int, default=10)
    p.add_argument("--number", type=int, default=2000)
    args = p.parse_args(argv)
    result: dict[str, Any] = {"chunks": args.chunks, "unit": "microseconds per prompt (best of 7)"}
    for chars in (200, 2000):
        result[f"stream_{chars}"] = bench_stream(chars, args.chunks, args.number)
        log(f"stream {chars} chars: {result[f'stream_{chars}']}")
    result["records_200"] = bench_records(200, args.number * 5)
    log(f"records: {result['records_200']}")
    result["wait"] = bench_wait(args.number)
    log(f"wait: {result['wait']}")
    write_json("micro_hot_path.json", result)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
