"""qwen-batch: batch prompts through the Qwen2-72B-Instruct Gradio Space."""

from __future__ import annotations

from .client import DEFAULT_URL, GradioQueueClient, Timeouts, new_session_hash
from .errors import QwenBatchError, RequestError
from .provider import Qwen_Qwen_2_72B

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_URL",
    "GradioQueueClient",
    "QwenBatchError",
    "Qwen_Qwen_2_72B",
    "RequestError",
    "Timeouts",
    "__version__",
    "new_session_hash",
]
