"""What can go wrong talking to a Chronicle, grouped by who is at fault.

- The server said no (a signed ``status: ERROR`` answer): :class:`ServerRefused` and its
  subclasses, by HTTP status. Not a lie, a refusal.
- The server (or someone in between) lies: the :class:`~chronicle.core.verify.ChainFault`
  family — a bad response signature, a bad entry signature, a broken link, a hash mismatch,
  an answer that does not fit the request or is stale.
- The network failed: :class:`~chronicle.core.errors.TransportError`.
"""

from __future__ import annotations

from chronicle.core.errors import RequestError, TransportError
from chronicle.core.verify import (
    AnchorError,
    BrokenLinkError,
    ChainFault,
    DocumentSignatureError,
    EntrySignatureError,
    HashMismatchError,
    HistoryRewrittenError,
    MalformedError,
    SplitViewError,
)

#: A response body whose ``Body-Signature-Ed25519`` is missing or wrong for the pinned key.
ResponseSignatureError = DocumentSignatureError


class UnexpectedResponseError(MalformedError):
    """The answer is signed but does not fit the request (wrong hash, no continuation...)."""


class StaleResponseError(MalformedError):
    """The answer's signed ``datetime`` is outside the allowed window: a possible replay."""


class ServerRefused(RequestError):
    """The server answered a signed error (``status: ERROR``); ``status`` is the HTTP code."""

    def __init__(self, message: str, *, status: int | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message, status=status, headers=headers)

    def diagnostics(self) -> str:
        return f"server refused (HTTP {self.status}): {self.message}"


class RecordNotFound(ServerRefused):
    """``lookup``/``since`` of a hash the server does not have (PHP: 400, replicas 404)."""


class ClientRejected(ServerRefused):
    """403: unknown or revoked client, bad request signature, server key used by a client."""


class RequestExpired(ServerRefused):
    """408: the signed request timestamp (``now`` / ``request-time``) is too old or new."""


class RateLimited(ServerRefused):
    """429: slow down; ``retry_after`` seconds if the server said."""

    @property
    def retry_after(self) -> float | None:
        value = self.headers.get("Retry-After")
        try:
            return float(value) if value is not None else None
        except ValueError:
            return None


class ServerUnavailable(RateLimited):
    """503: overloaded, read-only or frozen; retry later."""


def refusal(status: int, message: str, headers: dict[str, str]) -> ServerRefused:
    """The precise :class:`ServerRefused` subclass for a signed error answer."""
    if message == "No record found matching this hash.":
        return RecordNotFound(message, status=status, headers=headers)
    cls: type[ServerRefused] = {403: ClientRejected, 408: RequestExpired, 429: RateLimited,
                                503: ServerUnavailable}.get(status, ServerRefused)
    return cls(message, status=status, headers=headers)


__all__ = [
    "AnchorError",
    "BrokenLinkError",
    "ChainFault",
    "ClientRejected",
    "DocumentSignatureError",
    "EntrySignatureError",
    "HashMismatchError",
    "HistoryRewrittenError",
    "MalformedError",
    "RateLimited",
    "RecordNotFound",
    "RequestExpired",
    "ResponseSignatureError",
    "ServerRefused",
    "ServerUnavailable",
    "SplitViewError",
    "StaleResponseError",
    "TransportError",
    "UnexpectedResponseError",
    "refusal",
]
