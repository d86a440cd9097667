"""``Qwen_Qwen_2_72B``: the single-prompt provider, with the seed's public face, done right."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Any, ClassVar

import aiohttp

from .client import DEFAULT_URL, GradioQueueClient, Timeouts, new_session_hash
from .errors import ModelNotFoundError
from .models import RequestTrace
from .prompts import fold_messages


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

    default_model: ClassVar[str] = "qwen-qwen2-72b-instruct"
    model_aliases: ClassVar[dict[str, str]] = {"qwen-2-72b": default_model}
    models: ClassVar[list[str]] = [default_model, *model_aliases]

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
        async with GradioQueueClient(
            kwargs.get("url") or cls.url,
            session=session,
            proxy=proxy,
            hf_token=kwargs.get("hf_token"),
            timeouts=timeouts,
        ) as client:
            async for fragment in client.stream(prompt, system, trace=trace):
                yield fragment
