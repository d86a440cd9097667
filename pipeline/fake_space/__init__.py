"""A local fake of the Qwen2-72B-Instruct Hugging Face Space (Gradio queue API).

It speaks the wire format of the captures in ``gradio-captures/`` (Gradio 4.44.1
or 6.31.0, chosen by ``FakeSpaceConfig.gradio_major``) so that the batch client can
be tested and benchmarked without the network. It is deliberately independent
of the rest of ``pipeline``: it must not share code with the client it tests.

Routes (``P`` is ``""`` on 4.x and ``"/gradio_api"`` on 6.x):

* ``GET /config``, ``POST P/queue/join``, ``GET P/queue/data``, ``POST P/cancel``;
* ``GET /_fake/stats`` (counters) and ``POST /_fake/control`` (change config).

Faults are injected by a prompt marker ``[fault:NAME]`` / ``[fault:NAME:N]`` (the
first N attempts with that exact prompt fail) or at random by
``FakeSpaceConfig.fault_rates``. NAME is one of:

* ``queue_full``: the join answers 503 "Queue is full. Max size is 2 and size is 2.";
* ``cut``: the connection drops after about half the chunks, with no final chunk;
* ``app_error``: after 3 chunks, ``process_completed`` with ``success:false``;
* ``unexpected_error``: after about half the chunks, "Server stopped unexpectedly."
  then the connection drops;
* ``stall``: one chunk, then only heartbeats until the client cancels or leaves;
* ``bad_json``: a data line that is not JSON after the first chunk, then normal;
* ``empty``: the job completes normally but with an empty answer.

Run one from a shell with ``python -m pipeline.fake_space --port 7860``.
"""

from __future__ import annotations

from .model import FAULT_NAMES, FakeSpaceConfig, FakeSpaceStats, fake_answer
from .server import FakeSpace, RunningFakeSpace, run_fake_space, serve

__all__ = [
    "FAULT_NAMES",
    "FakeSpace",
    "FakeSpaceConfig",
    "FakeSpaceStats",
    "RunningFakeSpace",
    "fake_answer",
    "run_fake_space",
    "serve",
]
