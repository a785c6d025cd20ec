"""Errors grouped by who is at fault; each carries the HTTP status the server answers with.

The HTTP layer turns any :class:`ChronicleError` into Chronicle's signed JSON error body
(``{"version", "datetime", "status": "ERROR", "message"}``), so a message here is what a
client reads on the wire: keep PHP Chronicle's wording where it has one.
"""

from __future__ import annotations


class ChronicleError(Exception):
    """Base class. ``status`` is the HTTP status; ``headers`` extra response headers."""

    status: int = 500

    def __init__(self, message: str, *, status: int | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status
        self.headers: dict[str, str] = dict(headers or {})

    def diagnostics(self) -> str:
        """One line suitable for a CLI's ``error: …`` output."""
        return self.message


class RequestError(ChronicleError):
    """The caller sent something we refuse (bad input, wrong key, stale timestamp...)."""

    status = 400


class AuthError(RequestError):
    """Authentication or authorisation failed (PHP answers these with 403)."""

    status = 403


class NotFoundError(RequestError):
    """The thing asked for does not exist."""

    status = 404


class EncodingError(RequestError):
    """Malformed base64url, timestamp or JSON."""

    status = 400


class IntegrityError(ChronicleError):
    """Data does not verify: a hash, a link or a signature is wrong. The data lies."""

    status = 502

    def __init__(self, message: str, *, index: int | None = None, field: str | None = None,
                 expected: str | None = None, found: str | None = None) -> None:
        super().__init__(message)
        self.index = index
        self.field = field
        self.expected = expected
        self.found = found

    def diagnostics(self) -> str:
        parts = [self.message]
        if self.index is not None:
            parts.append(f"entry {self.index}")
        if self.field is not None:
            parts.append(f"field {self.field}")
        if self.expected is not None or self.found is not None:
            parts.append(f"expected {self.expected!r}, found {self.found!r}")
        return "; ".join(parts)


class StorageError(ChronicleError):
    """The database failed or refused (our fault, not the client's)."""

    status = 500


class CommitOutcomeUnknown(StorageError):
    """COMMIT itself failed (connection lost, I/O error): the batch may or may not be stored."""


class StorageDenied(StorageError):
    """The database refuses our writes (permissions, a read-only or full disk): not a
    passing fault; the operator must act (the server says so in its log and /readyz)."""


class StorageFull(StorageDenied):
    """The database's disk is full: nothing was stored; writes resume once space is freed
    (the SQLite driver then moves its write-ahead log back into the database file)."""


class SchemaMismatchError(StorageError):
    """The database schema version is not the one this code was built for."""


class OverloadedError(ChronicleError):
    """Back-pressure: the sequencer queue is full. HTTP maps it to 503 + Retry-After."""

    status = 503

    def __init__(self, message: str = "Server overloaded, retry later", *,
                 retry_after: int = 1) -> None:
        super().__init__(message, headers={"Retry-After": str(retry_after)})


class TransportError(ChronicleError):
    """Could not talk to a peer (connection refused, timeout, malformed HTTP)."""

    status = 502
