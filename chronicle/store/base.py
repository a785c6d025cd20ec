"""The storage interface: one small async contract that every backend implements.

The sequencer (``chronicle.ledger``) is the only caller of :meth:`Store.write` that adds
entries; everything else reads. Hashes, keys and signatures cross this boundary as raw
bytes; ``created`` as the exact string that was hashed.
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import TypeVar

from chronicle.core.blakechain import ChainHead, Entry

SCHEMA_VERSION = 1


@dataclass(frozen=True, slots=True)
class Client:
    """A registered publisher. ``publicid`` is the ``Chronicle-Client-Key-ID`` value."""

    publicid: str
    publickey: bytes
    is_admin: bool
    comment: str | None
    created: str
    revoked: str | None = None


@dataclass(frozen=True, slots=True)
class Mirror:
    url: str
    publickey: str
    comment: str | None
    sortpriority: int


@dataclass(frozen=True, slots=True)
class BatchView:
    """What the sequencer needs to know, read under the chain-head lock, to plan a batch."""

    head: ChainHead | None
    existing: dict[bytes, Entry]
    clients: dict[str, Client]


T = TypeVar("T")
#: Plans a batch from a :class:`BatchView`: the entries to insert, and a result to return.
Planner = Callable[[BatchView], tuple[Sequence[Entry], T]]


class WriteTx(abc.ABC):
    """One write transaction on one chain, holding the chain-head lock until it ends.

    Leaving the context commits (durably) or, on an exception, rolls back everything.
    """

    @abc.abstractmethod
    async def head(self) -> ChainHead | None: ...

    @abc.abstractmethod
    async def find_signatures(self, signatures: Sequence[bytes]) -> dict[bytes, Entry]:
        """Entries already stored with any of these signatures (idempotent retries)."""

    @abc.abstractmethod
    async def active_clients(self, publicids: Sequence[str]) -> dict[str, Client]: ...

    @abc.abstractmethod
    async def insert_entries(self, entries: Sequence[Entry]) -> None: ...

    @abc.abstractmethod
    async def add_client(self, client: Client) -> None: ...

    @abc.abstractmethod
    async def revoke_client(self, publicid: str, when: str) -> None: ...


class Store(abc.ABC):
    """A database holding one or more chains ("instances"), their clients and mirrors."""

    @abc.abstractmethod
    async def open(self) -> None:
        """Connect and check the schema version (refuse to run on a mismatch)."""

    @abc.abstractmethod
    async def close(self) -> None: ...

    @abc.abstractmethod
    async def create_schema(self) -> None:
        """Create a fresh database at :data:`SCHEMA_VERSION` (``chronicle init``)."""

    @abc.abstractmethod
    async def migrate(self) -> int:
        """Bring an older schema up to date; returns the version reached."""

    @abc.abstractmethod
    async def ensure_instance(self, name: str) -> None: ...

    @abc.abstractmethod
    def write(self, instance: str) -> AbstractAsyncContextManager[WriteTx]: ...

    async def append_batch(self, instance: str, signatures: Sequence[bytes],
                           client_ids: Sequence[str], plan: Planner[T]) -> T:
        """One group commit: lock, read the :class:`BatchView`, ``plan``, insert, commit.

        ``plan`` is synchronous and pure (the sequencer's hashing); a driver may run the
        whole transaction in one round trip (SQLite does, on its writer thread).
        """
        async with self.write(instance) as tx:
            view = BatchView(await tx.head(), await tx.find_signatures(signatures),
                             await tx.active_clients(client_ids) if client_ids else {})
            entries, result = plan(view)
            await tx.insert_entries(entries)
        return result

    # chain reads
    @abc.abstractmethod
    async def head(self, instance: str) -> Entry | None: ...

    @abc.abstractmethod
    async def lookup(self, instance: str, hash_raw: bytes) -> list[Entry]:
        """Entries whose currhash **or** summaryhash equals ``hash_raw``."""

    @abc.abstractmethod
    async def entry_at(self, instance: str, index: int) -> Entry | None: ...

    @abc.abstractmethod
    async def range(self, instance: str, start: int, stop: int) -> list[Entry]:
        """Entries with ``start <= index < stop`` in order (a keyset range, not OFFSET).

        Their ``hashstate`` is left empty (``b""``): only appending needs it, and it is a
        third of a row; use :meth:`entry_at` or :meth:`head` for a full entry.
        """

    async def iter_range(self, instance: str, start: int, stop: int,
                         page: int = 2000) -> AsyncIterator[list[Entry]]:
        """Pages of :meth:`range` so that memory stays bounded on any chain length."""
        pos = start
        while pos < stop:
            chunk = await self.range(instance, pos, min(stop, pos + page))
            if not chunk:
                return
            yield chunk
            pos = chunk[-1].index + 1

    # clients
    @abc.abstractmethod
    async def get_client(self, instance: str, publicid: str) -> Client | None:
        """The active (not revoked) client with this id."""

    @abc.abstractmethod
    async def list_clients(self, instance: str, *, include_revoked: bool = False) -> list[Client]:
        ...

    # mirrors
    @abc.abstractmethod
    async def list_mirrors(self, instance: str) -> list[Mirror]: ...

    @abc.abstractmethod
    async def add_mirror(self, instance: str, mirror: Mirror, when: str) -> None: ...

    @abc.abstractmethod
    async def remove_mirror(self, instance: str, url: str) -> bool: ...
