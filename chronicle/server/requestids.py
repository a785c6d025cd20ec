"""Request ids: the one of the request being handled (``-`` outside one), set on every log
record written meanwhile, and how new ones are made. Light on purpose: every command's log
set-up (:mod:`chronicle.cli.logs`) imports it, the server not needed."""

from __future__ import annotations

import contextvars
import itertools
import logging
import os
import secrets

#: The id of the request being handled (set by the server's request-id middleware).
current: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")


class _Ids:
    """Our request ids: a random prefix of this process and a counter (unique across
    ``--workers`` for the logs, with one random read per process, not per request)."""

    def __init__(self) -> None:
        self.reset()
        os.register_at_fork(after_in_child=self.reset)

    def reset(self) -> None:
        self.prefix = secrets.token_hex(4)
        self.counter = itertools.count(1)

    def new(self) -> str:
        return f"{self.prefix}{next(self.counter):08x}"


_ids = _Ids()


def new() -> str:
    """A fresh request id: 16 hex digits."""
    return _ids.new()


class RequestIdFilter(logging.Filter):
    """Puts the current request's id on every record (``%(request_id)s``)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = current.get()
        return True
