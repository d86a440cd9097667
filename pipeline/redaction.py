"""The run's secrets kept out of everything that leaves the process: logs, errors file, summary.

The transport already scrubs its own errors (:func:`pipeline.http_errors.make_redactor`);
this is the last line at the edge: one redactor for the run's token and every proxy
password it may use (``--proxy`` or the environment's), applied to log records, error
records and the summary whatever produced them.
"""

from __future__ import annotations

import contextlib
import logging
import traceback
from collections.abc import Callable, Iterable, Iterator

from .http_errors import make_redactor
from .proxies import proxy_for, proxy_password

__all__ = ["RedactingFilter", "redacted_logs", "run_redactor"]

Redact = Callable[[str], str]


def run_redactor(urls: Iterable[str], proxy: str | None, hf_token: str | None) -> Redact:
    """The redactor of a run: the token and the password of each endpoint's proxy."""
    secrets: list[str | None] = [hf_token, proxy_password(proxy)]
    for url in urls:
        with contextlib.suppress(ValueError):  # a malformed variable was reported already
            secrets.append(proxy_password(proxy_for(url, proxy)[0]))
    return make_redactor(secrets)


class RedactingFilter(logging.Filter):
    """Rewrites each record's message (and traceback) with secrets replaced by ``***``."""

    def __init__(self, redact: Redact) -> None:
        super().__init__()
        self.redact = redact

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg, record.args = self.redact(record.getMessage()), None
        if record.exc_info:
            text = "".join(traceback.format_exception(*record.exc_info))
            record.exc_text, record.exc_info = self.redact(text.rstrip("\n")), None
        return True


@contextlib.contextmanager
def redacted_logs(redact: Redact) -> Iterator[None]:
    """For the block, every handler of the root logger writes redacted records."""
    handlers = list(logging.getLogger().handlers)
    log_filter = RedactingFilter(redact)
    for handler in handlers:
        handler.addFilter(log_filter)
    try:
        yield
    finally:
        for handler in handlers:
            handler.removeFilter(log_filter)
