"""Chains: one read interface for every chain, and the write path of our own chains.

A :class:`Chain` reads one chain, whichever it is: one of our instances (table
``entries``) or the verified copy of a replicated upstream (table ``replica_entries``).
Both hold the same columns, so every read (head, lookup, range, pages) is written once,
and so is every read endpoint above it.

Our own chains grow only inside :meth:`ChainStore.write` (the sequencer's group commit, a
client change with its chain entry, an import): a transaction holding the chain-head lock,
so several processes never fork a chain. What is kept with the entries (the Merkle tree,
the release state) joins that transaction as a :class:`ChainHook`.
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass

from chronicle.core.blakechain import ChainHead, Entry
from chronicle.core.errors import ChronicleError, RequestError
from chronicle.store import rows
from chronicle.store.records import Client
from chronicle.store.sql import IN_LIST, Conflict, Database, Query, Session


class Chain:
    """Reads of one chain: ``table`` rows whose ``key`` column equals ``key_value``.

    ``key_value`` may be a coroutine function resolving it on first use (an instance id
    the store learns lazily). ``range`` leaves ``hashstate`` empty: only appending needs
    it, and it is a third of a row; :meth:`head` and :meth:`entry_at` carry it.
    """

    def __init__(self, db: Database, table: str, key: str,
                 key_value: int | Callable[[], Awaitable[int]]) -> None:
        self._db = db
        self._key_value = key_value
        where = f"FROM {table} WHERE {key} = ?"
        self._head = f"SELECT {rows.ENTRY_COLS} {where} ORDER BY idx DESC LIMIT 1"
        self._lookup = (f"SELECT {rows.ENTRY_COLS} {where} AND currhash = ? UNION "
                        f"SELECT {rows.ENTRY_COLS} {where} AND summaryhash = ? ORDER BY idx")
        self._at = f"SELECT {rows.ENTRY_COLS} {where} AND idx = ?"
        self._signed = f"SELECT {rows.ENTRY_COLS} {where} AND signature = ?"
        self._range = (f"SELECT {rows.RANGE_COLS} {where} "
                       "AND idx >= ? AND idx < ? ORDER BY idx")
        self._large = (f"SELECT idx, length(contents) {where} AND idx >= ? AND idx < ? "
                       "AND length(contents) > ? ORDER BY idx LIMIT ?")

    async def key(self) -> int:
        value = self._key_value
        if not isinstance(value, int):
            value = self._key_value = await value()
        return value

    async def head(self) -> Entry | None:
        """The newest entry, with its hash state; None for an empty chain."""
        found = await self._db.read(self._head, await self.key())
        return rows.entry(found[0]) if found else None

    async def lookup(self, hash_raw: bytes) -> list[Entry]:
        """Entries whose currhash **or** summaryhash equals ``hash_raw``, in chain order."""
        key = await self.key()
        return [rows.entry(r) for r in await self._db.read(self._lookup, key, hash_raw,
                                                            key, hash_raw)]

    async def entry_at(self, index: int) -> Entry | None:
        found = await self._db.read(self._at, await self.key(), index)
        return rows.entry(found[0]) if found else None

    async def with_signature(self, signature: bytes) -> Entry | None:
        """The entry carrying this signature (indexed on our chains, not on copies)."""
        found = await self._db.read(self._signed, await self.key(), signature)
        return rows.entry(found[0]) if found else None

    async def range(self, start: int, stop: int) -> list[Entry]:
        """Entries ``start <= index < stop`` in order (a keyset range, never OFFSET)."""
        found = await self._db.scan(self._range, await self.key(), start, stop)
        return [rows.entry(r) for r in found]

    async def large_rows(self, start: int, stop: int, over: int, limit: int
                         ) -> list[tuple[int, int]]:
        """``(index, size)`` of the first ``limit`` entries in ``[start, stop)`` whose
        contents exceed ``over`` bytes, without reading them (SQLite and PostgreSQL take
        ``length`` of a blob from its header): how a reader plans its memory."""
        found = await self._db.scan(self._large, await self.key(), start, stop, over, limit)
        return [(int(r[0]), int(r[1])) for r in found]

    async def pages(self, start: int, stop: int, page: int = 2000
                    ) -> AsyncIterator[list[Entry]]:
        """:meth:`range` in pages of ``page`` rows, so memory stays bounded."""
        pos = start
        while pos < stop:
            chunk = await self.range(pos, min(stop, pos + page))
            if not chunk:
                return
            yield chunk
            pos = chunk[-1].index + 1


@dataclass(frozen=True, slots=True)
class BatchView:
    """What the sequencer needs to know, read under the chain-head lock, to plan a batch."""

    head: ChainHead | None
    existing: dict[bytes, Entry]
    clients: dict[str, Client]


@dataclass(frozen=True, slots=True)
class Candidate:
    """An entry about to be appended: where it would land and what it carries (a hook may
    refuse it before it gets there)."""

    index: int
    currhash: bytes
    created: str
    publickey: bytes
    signature: bytes
    contents: bytes


class HookBatch(abc.ABC):
    """One chain hook's part in one batch (see :class:`ChainHook`)."""

    def admit(self, candidate: Candidate) -> ChronicleError | None:
        """Refuse an entry before it is appended (its error is the publisher's answer),
        judged against the state after the entries admitted before it in this batch."""
        return None

    @abc.abstractmethod
    def appended(self, entry: Entry) -> None:
        """An entry was appended (in order); update the state in memory."""

    @abc.abstractmethod
    async def commit(self, tx: WriteTx) -> None:
        """Write the updated state, inside the batch's transaction, after its entries."""


class ChainHook(abc.ABC):
    """State kept with one of our chains and written in the same transaction as its
    entries (the Merkle tree, the release state): durable together, or not at all."""

    @abc.abstractmethod
    async def begin(self, tx: WriteTx, contents: Sequence[bytes]) -> HookBatch | None:
        """Under the chain-head lock, before a batch is planned: read what judging and
        extending needs (``contents``: the bodies the batch may append). None when the
        hook is not enabled on this chain."""

_HEAD = f"SELECT {rows.HEAD_COLS} FROM entries WHERE instance = ? ORDER BY idx DESC LIMIT 1"  # noqa: S608
_BY_SIGNATURE = (f"SELECT {rows.ENTRY_COLS} FROM entries WHERE instance = ? "  # noqa: S608
                 f"AND signature {IN_LIST}")
_ACTIVE_CLIENTS = (f"SELECT {rows.CLIENT_COLS} FROM clients WHERE instance = ? "  # noqa: S608
                   f"AND revoked IS NULL AND publicid {IN_LIST}")
_COLUMNS = ("instance", *rows.ENTRY_COLUMNS)


class WriteTx:
    """One write transaction on one of our chains, holding its chain-head lock.

    ``session`` runs any other statement inside the same transaction (a concern that
    commits together with the entries uses it).
    """

    def __init__(self, session: Session, instance_id: int) -> None:
        self.session = session
        self.instance_id = instance_id

    async def head(self) -> ChainHead | None:
        row = await self.session.fetchrow(_HEAD, self.instance_id)
        return None if row is None else rows.head(row)

    async def find_signatures(self, signatures: Sequence[bytes]) -> dict[bytes, Entry]:
        """Entries already stored with any of these signatures (idempotent retries)."""
        found = await self.session.fetch_in(_BY_SIGNATURE, (self.instance_id,), signatures,
                                            "bytea")
        return {bytes(r[7]): rows.entry(r) for r in found}

    async def active_clients(self, publicids: Sequence[str]) -> dict[str, Client]:
        if not publicids:
            return {}
        found = await self.session.fetch_in(_ACTIVE_CLIENTS, (self.instance_id,), publicids,
                                            "text")
        return {r[0]: rows.client(r) for r in found}

    async def view(self, signatures: Sequence[bytes], client_ids: Sequence[str]) -> BatchView:
        """The head, the entries already stored with these signatures and the active
        clients among ``client_ids``: one :meth:`Session.fetch_several` (one round trip
        on PostgreSQL)."""
        iid = (self.instance_id,)
        queries = [Query(_HEAD, iid), Query(_BY_SIGNATURE, iid, signatures, "bytea")]
        if client_ids:
            queries.append(Query(_ACTIVE_CLIENTS, iid, client_ids, "text"))
        found = await self.session.fetch_several(queries)
        clients = {r[0]: rows.client(r) for r in found[2]} if client_ids else {}
        return BatchView(rows.head(found[0][0]) if found[0] else None,
                         {bytes(r[7]): rows.entry(r) for r in found[1]}, clients)

    async def insert_entries(self, entries: Sequence[Entry]) -> None:
        if entries:
            iid = self.instance_id
            await self.session.bulk_insert("entries", _COLUMNS, [
                (iid, e.index, e.contents, e.prevhash, e.currhash, e.summaryhash, e.hashstate,
                 e.publickey, e.signature, e.created) for e in entries])

    async def add_client(self, client: Client) -> None:
        try:
            await self.session.execute(
                "INSERT INTO clients (instance, publicid, publickey, is_admin, comment, "
                "created) VALUES (?,?,?,?,?,?)", self.instance_id, client.publicid,
                client.publickey, client.is_admin, client.comment, client.created)
        except Conflict:
            raise RequestError(f"client id {client.publicid} is already in use",
                               status=409) from None

    async def revoke_client(self, publicid: str, when: str) -> None:
        await self.session.execute(
            "UPDATE clients SET revoked = ? WHERE instance = ? AND publicid = ? "
            "AND revoked IS NULL", when, self.instance_id, publicid)


class ChainStore:
    """Our own chains ("instances"): reads, and the one write path."""

    def __init__(self, db: Database, instance_id: Callable[[str], Awaitable[int]]) -> None:
        self._db = db
        self._instance_id = instance_id
        self._chains: dict[str, Chain] = {}

    def __call__(self, instance: str) -> Chain:
        """The chain of ``instance`` (``""``: the default chain)."""
        chain = self._chains.get(instance)
        if chain is None:
            async def resolve() -> int:
                return await self._instance_id(instance)

            chain = self._chains[instance] = Chain(self._db, "entries", "instance", resolve)
        return chain

    def forget(self) -> None:
        """Drop resolved instance ids (after a schema change or a failed lookup)."""
        self._chains.clear()

    @asynccontextmanager
    async def write(self, instance: str) -> AsyncIterator[WriteTx]:
        """A transaction holding ``instance``'s head lock; commits durably on exit."""
        iid = await self._instance_id(instance)
        async with self._db.transaction(lock_chain=iid) as session:
            yield WriteTx(session, iid)

