"""Request ids: the one of the request being handled (``-`` outside one), set on every log
record written meanwhile, and how new ones are made. Light on purpose: every command's log
set-up (:mod:`chronicle.cli.logs`) imports it, the server not needed."""

from __future__ import annotations

import contextvars
import logging
import secrets

#: The id of the request being handled (set by the server's request-id middleware).
current: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")


def new() -> str:
    """A fresh request id: 16 random hex digits (random, so that ids say nothing about
    how many requests a worker served)."""
    return secrets.token_hex(8)


class RequestIdFilter(logging.Filter):
    """Puts the current request's id on every record (``%(request_id)s``)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = current.get()
        return True
