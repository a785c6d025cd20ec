"""The storage interface: one small async contract that every backend implements.

The sequencer (``chronicle.ledger``) is the only caller of :meth:`Store.write` that adds
entries; everything else reads. Hashes, keys and signatures cross this boundary as raw
bytes; ``created`` as the exact string that was hashed.
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Any, TypeVar

from chronicle.core.blakechain import ChainHead, Entry
from chronicle.core.errors import StorageError

SCHEMA_VERSION = 2


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


# --- replication, cross-signing (schema version 2) -------------------------------------------


@dataclass(frozen=True, slots=True)
class ReplicaSource:
    """An upstream Chronicle this server copies (PHP: ``chronicle_replication_sources``).

    ``uniqueid`` is the public id in ``/replica/{uniqueid}`` (base64url of 33 random bytes,
    as PHP); ``url`` the upstream's API base (``…/chronicle``); ``publickey`` the pinned
    server key. ``status`` is ``active``, or ``forked`` / ``failed`` once a fault stopped
    it (``fault`` names the kind, ``reason`` says why).
    """

    uniqueid: str
    name: str
    url: str
    publickey: bytes
    instance: str = ""
    id: int = 0
    status: str = "active"
    fault: str | None = None
    reason: str | None = None
    status_since: str | None = None
    created: str = ""
    last_sync: str | None = None
    last_attempt: str | None = None
    last_error: str | None = None
    failures: int = 0


@dataclass(frozen=True, slots=True)
class ReplicaPeer:
    """Another view of a source's history to compare heads with (split-view detection).

    ``kind`` is ``replica`` (the same chain served elsewhere: another replica's
    ``…/replica/{id}``, or the upstream at another address) or ``xsign`` (a Chronicle the
    upstream cross-signs its head onto; ``cursor`` is how far its chain was scanned).
    """

    url: str
    publickey: bytes | None = None
    kind: str = "replica"
    cursor: str | None = None
    id: int = 0


@dataclass(frozen=True, slots=True)
class EvidenceDocument:
    """One signed answer kept as evidence: the exact bytes (or, when very large, a file
    under the data directory) with the signature header it came with."""

    role: str
    method: str
    url: str
    status: int
    signature: str | None
    signer: bytes | None
    body: bytes | None = None
    file: str | None = None
    size: int = 0
    sha256: str = ""


@dataclass(frozen=True, slots=True)
class ReplicaFault:
    """Why a source stopped (``status`` forked or failed), with its evidence."""

    status: str
    kind: str
    message: str
    recorded: str
    details: dict[str, Any] = field(default_factory=dict)
    documents: tuple[EvidenceDocument, ...] = ()
    id: int = 0


@dataclass(frozen=True, slots=True)
class KeyRecord:
    """One pinned server key of a source and when it was in force (key rotations)."""

    publickey: bytes
    since: str
    retired: str | None = None
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class XsignTarget:
    """A peer Chronicle we publish our head on (PHP: ``chronicle_xsign_targets``).

    ``clientid`` is our server key's client id on the peer; ``policy`` the JSON of
    ``push-after`` / ``push-days`` (as PHP stores it); ``last_index`` is the index of our
    entry that was last cross-signed successfully, at ``last_run``.
    """

    name: str
    url: str
    publickey: bytes
    clientid: str
    policy: str
    instance: str = ""
    id: int = 0
    created: str = ""
    last_index: int | None = None
    last_run: str | None = None
    last_attempt: str | None = None
    last_error: str | None = None
    failures: int = 0


@dataclass(frozen=True, slots=True)
class XsignReceipt:
    """One cross-sign push: our head, the message we signed, the peer's signed answer."""

    target_id: int
    recorded: str
    status: str
    index: int
    currhash: bytes
    summaryhash: bytes
    message: bytes
    signature: str
    peer_currhash: str | None = None
    peer_summaryhash: str | None = None
    peer_created: str | None = None
    response: bytes | None = None
    response_signature: str | None = None
    error: str | None = None
    id: int = 0


class ReplicaConflict(StorageError):
    """A replica batch does not continue the stored copy (another process appended)."""

    status = 409


class LeaderLock(abc.ABC):
    """Held by at most one process per deployment: the one that runs background jobs.

    SQLite: ``flock`` on a lock file in the data directory; PostgreSQL: an advisory lock
    on a dedicated connection. Both vanish with their holder (process death, lost
    connection), so another process takes over.
    """

    @abc.abstractmethod
    async def acquire(self) -> bool:
        """Try once, without waiting; True when this process holds the lock now."""

    @abc.abstractmethod
    async def still_held(self) -> bool:
        """False once the lock was lost (e.g. the database connection dropped)."""

    @abc.abstractmethod
    async def release(self) -> None: ...


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

    # --- replication sources (schema version 2) -----------------------------------------

    @abc.abstractmethod
    async def add_replica_source(self, source: ReplicaSource,
                                 peers: Sequence[ReplicaPeer] = ()) -> ReplicaSource:
        """Store a new source (its key becomes the first :class:`KeyRecord`); a name or
        uniqueid already in use raises :class:`RequestError` (409)."""

    @abc.abstractmethod
    async def list_replica_sources(self, instance: str | None = None) -> list[ReplicaSource]:
        """Sources in creation order (of one instance, or of all when None)."""

    @abc.abstractmethod
    async def get_replica_source(self, ref: str, instance: str | None = None
                                 ) -> ReplicaSource | None:
        """The source whose uniqueid or name is ``ref``."""

    @abc.abstractmethod
    async def remove_replica_source(self, source_id: int) -> bool:
        """Delete a source with its copy, peers, keys and evidence."""

    @abc.abstractmethod
    async def set_replica_url(self, source_id: int, url: str) -> None: ...

    @abc.abstractmethod
    async def set_replica_status(self, source_id: int, status: str, *, fault: str | None,
                                 reason: str | None, when: str) -> None: ...

    @abc.abstractmethod
    async def record_replica_attempt(self, source_id: int, *, when: str,
                                     error: str | None) -> None:
        """After a sync: ``error`` None = success (``last_sync``, failures reset), else a
        transient failure (``last_error``, one more consecutive failure)."""

    @abc.abstractmethod
    async def set_replica_key(self, source_id: int, publickey: bytes, *, when: str,
                              reason: str | None) -> None:
        """Pin a new server key (retiring the old one in the key history)."""

    @abc.abstractmethod
    async def replica_keys(self, source_id: int) -> list[KeyRecord]: ...

    @abc.abstractmethod
    async def set_replica_peers(self, source_id: int, peers: Sequence[ReplicaPeer]) -> None:
        """Replace the source's peers."""

    @abc.abstractmethod
    async def list_replica_peers(self, source_id: int) -> list[ReplicaPeer]: ...

    @abc.abstractmethod
    async def set_peer_cursor(self, peer_id: int, cursor: str | None) -> None: ...

    # --- replica chains -------------------------------------------------------------------

    @abc.abstractmethod
    async def replica_head(self, source_id: int) -> Entry | None:
        """The newest copied entry, with its hash state."""

    @abc.abstractmethod
    async def replica_append(self, source_id: int, entries: Sequence[Entry], *,
                             replicated: str) -> None:
        """Store verified upstream entries (consecutive, in order) in one transaction.

        They must continue the stored copy (first index = head + 1, its prevhash = the
        head's currhash), checked under the write lock; else :class:`ReplicaConflict`.
        ``created`` is stored exactly as given; the first entry's prevhash as ``""``.
        """

    @abc.abstractmethod
    async def replica_lookup(self, source_id: int, hash_raw: bytes) -> list[Entry]:
        """Copied entries whose currhash **or** summaryhash is ``hash_raw``."""

    @abc.abstractmethod
    async def replica_entry_at(self, source_id: int, index: int) -> Entry | None: ...

    @abc.abstractmethod
    async def replica_range(self, source_id: int, start: int, stop: int) -> list[Entry]:
        """Copied entries ``start <= index < stop`` in order (``hashstate`` left empty)."""

    async def iter_replica_range(self, source_id: int, start: int, stop: int,
                                 page: int = 2000) -> AsyncIterator[list[Entry]]:
        pos = start
        while pos < stop:
            chunk = await self.replica_range(source_id, pos, min(stop, pos + page))
            if not chunk:
                return
            yield chunk
            pos = chunk[-1].index + 1

    # --- faults and evidence --------------------------------------------------------------

    @abc.abstractmethod
    async def record_replica_fault(self, source_id: int, fault: ReplicaFault) -> int:
        """Keep the fault and its documents and set the source's status, atomically."""

    @abc.abstractmethod
    async def list_replica_faults(self, source_id: int) -> list[ReplicaFault]:
        """Every recorded fault of the source, oldest first, with its documents."""

    # --- cross-signing --------------------------------------------------------------------

    @abc.abstractmethod
    async def add_xsign_target(self, target: XsignTarget) -> XsignTarget: ...

    @abc.abstractmethod
    async def list_xsign_targets(self, instance: str | None = None) -> list[XsignTarget]: ...

    @abc.abstractmethod
    async def remove_xsign_target(self, instance: str, name: str) -> bool: ...

    @abc.abstractmethod
    async def record_xsign_attempt(self, target_id: int, *, when: str, error: str | None,
                                   index: int | None = None) -> None:
        """``error`` None: ``index`` was cross-signed at ``when``; else one more failure."""

    @abc.abstractmethod
    async def add_xsign_receipt(self, receipt: XsignReceipt) -> int: ...

    @abc.abstractmethod
    async def list_xsign_receipts(self, target_id: int, limit: int = 20) -> list[XsignReceipt]:
        """The newest receipts first."""

    # --- background jobs ------------------------------------------------------------------

    @abc.abstractmethod
    async def get_job_state(self, name: str) -> str | None: ...

    @abc.abstractmethod
    async def set_job_state(self, name: str, value: str) -> None: ...

    @abc.abstractmethod
    def leader_lock(self, name: str = "jobs") -> LeaderLock:
        """The lock that elects the one process running background jobs."""
