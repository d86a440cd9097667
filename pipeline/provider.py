"""``Qwen_Qwen_2_72B``: the single-prompt provider, with the seed's public face, done right."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from contextlib import aclosing
from typing import Any, ClassVar

import aiohttp

from .client import DEFAULT_URL, GradioQueueClient, Timeouts, new_session_hash
from .errors import ModelNotFoundError
from .models import RequestTrace
from .prompts import fold_messages
from .settings import DEFAULT_MODEL


class Qwen_Qwen_2_72B:  # the provider's established public name
    """Qwen2-72B-Instruct on its Hugging Face Space, through the Gradio queue.

    >>> async for fragment in Qwen_Qwen_2_72B.create_async_generator(
    ...     "qwen-2-72b", [{"role": "user", "content": "Hello"}]):
    ...     print(fragment, end="")
    """

    label: ClassVar[str] = "Qwen Qwen-2.72B"
    url: ClassVar[str] = DEFAULT_URL
    api_endpoint: ClassVar[str] = f"{DEFAULT_URL}/queue/join"
    working: ClassVar[bool] = True
    supports_stream: ClassVar[bool] = True
    supports_system_message: ClassVar[bool] = True
    supports_message_history: ClassVar[bool] = False
    # Read by g4f's client (without importing g4f here): no API key to look up; a
    # `stream_timeout=` bounds each streamed chunk while `timeout=` stays ours (the
    # whole attempt); `live` is g4f's success/failure tally, kept on the class.
    needs_auth: ClassVar[bool] = False
    use_stream_timeout: ClassVar[bool] = True
    live: ClassVar[int] = 0

    default_model: ClassVar[str] = DEFAULT_MODEL
    model_aliases: ClassVar[dict[str, str]] = {"qwen-2-72b": default_model}
    models: ClassVar[list[str]] = [default_model, *model_aliases]

    @classmethod
    def get_dict(cls) -> dict[str, str]:
        """What g4f records of the provider: its name, URL and label."""
        return {"name": cls.__name__, "url": cls.url, "label": cls.label}

    @classmethod
    def get_parent(cls) -> str:
        """The family name g4f looks API keys up by (a subclass keeps its own)."""
        return cls.__name__

    @classmethod
    def get_model(cls, model: str | None) -> str:
        """The canonical model name for ``model`` (empty means the default)."""
        if not model:
            return cls.default_model
        if model == cls.default_model:
            return model
        if model in cls.model_aliases:
            return cls.model_aliases[model]
        raise ModelNotFoundError(
            f"model {model!r} is not served by {cls.__name__}; choose one of {cls.models}"
        )

    @staticmethod
    def generate_session_hash() -> str:
        """A new session hash: 12 hex characters of a UUID4."""
        return new_session_hash()

    @classmethod
    async def create_async_generator(
        cls,
        model: str,
        messages: Sequence[Any],
        proxy: str | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[str]:
        """Stream the answer to ``messages`` as text fragments.

        The fragments concatenate to exactly the final answer. System messages
        become the system prompt (the Space's default when there is none); other
        turns are folded into one prompt, since the Space keeps no history.

        Keyword arguments: ``url`` (another deployment of the same app),
        ``session`` (a shared ``aiohttp.ClientSession``), ``timeout`` (seconds for
        the whole attempt, or a :class:`~pipeline.client.Timeouts`), ``hf_token``,
        and ``trace`` (a :class:`~pipeline.models.RequestTrace` to read timings from).
        """
        cls.get_model(model)
        try:
            system, prompt = fold_messages(messages)
        except ValueError as exc:
            raise ValueError(f"invalid messages: {exc}") from None
        timeout = kwargs.get("timeout")
        timeouts = timeout if isinstance(timeout, Timeouts) else (
            Timeouts(total=float(timeout)) if timeout is not None else None
        )
        session: aiohttp.ClientSession | None = kwargs.get("session")
        trace: RequestTrace = kwargs.get("trace") or RequestTrace(cls.generate_session_hash())
        client = GradioQueueClient(
            kwargs.get("url") or cls.url,
            session=session,
            proxy=proxy,
            hf_token=kwargs.get("hf_token"),
            timeouts=timeouts,
        )
        async for fragment in _in_one_task(_stream(client, prompt, system, trace)):
            yield fragment


async def _stream(
    client: GradioQueueClient, prompt: str, system: str | None, trace: RequestTrace
) -> AsyncGenerator[str, None]:
    async with client:
        async for fragment in client.stream(prompt, system, trace=trace):
            yield fragment


async def _in_one_task(fragments: AsyncGenerator[str, None]) -> AsyncIterator[str]:
    """Run ``fragments`` in one task of its own, whichever tasks pull from us.

    The client keeps a timeout (and aiohttp its timers) armed across its yields, and
    they belong to the task that entered them. A caller that pulls each fragment in a
    new task (g4f's sync client; ``asyncio.wait_for`` on Python 3.11) would leave them
    cancelling a finished task: no timeout fires, and the next reschedule raises
    RuntimeError. Fragments are queued as they arrive; leaving early cancels the task,
    which cancels the job on the server.
    """
    queue: asyncio.Queue[str | None] = asyncio.Queue()

    async def pump() -> None:
        async with aclosing(fragments):
            async for fragment in fragments:
                queue.put_nowait(fragment)

    task = asyncio.get_running_loop().create_task(pump())
    task.add_done_callback(lambda _: queue.put_nowait(None))
    try:
        while (fragment := await queue.get()) is not None:
            yield fragment
        task.result()  # raises what the client raised, as it raised it
    finally:
        if not task.done():
            task.cancel()
            await asyncio.wait({task})
        if not task.cancelled():
            task.exception()  # retrieved here, so asyncio does not log it as lost
