"""The one interface a storage driver implements: run SQL, in transactions, on one database.

Every concern of the store (chains, clients, mirrors, replication, cross-signing, jobs) is
written once, against this interface, in the SQL that SQLite and PostgreSQL share. A
driver contributes only what really differs: connections and threads, how the write lock
is taken, bulk inserts, placeholders, the types used in the schema, and the translation of
its own exceptions into :class:`StorageError` (so nothing backend-specific ever reaches a
caller). SQL text uses ``?`` placeholders; a driver rewrites them if it needs to.
"""

from __future__ import annotations

import abc
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any

from chronicle.core.errors import StorageError

Row = Sequence[Any]

#: Marks where an ``IN`` list goes in a statement given to :meth:`Session.fetch_in`.
IN_LIST = "IN_LIST"


class Conflict(StorageError):
    """A uniqueness constraint refused a write (the caller says what it means)."""

    status = 409


@dataclass(frozen=True, slots=True)
class Dialect:
    """What the schema and statements need to know about a backend."""

    name: str
    #: DDL type tokens for :mod:`chronicle.store.schema` (``{serial}``, ``{blob}``, …).
    types: dict[str, str]
    #: A query with one ``?`` (a table name) answering a row when that table exists.
    table_exists: str
    #: Appended to a ``SELECT`` inside a transaction to lock the rows it reads until the
    #: commit (``FOR UPDATE``); empty where the transaction already holds the whole
    #: database (SQLite's ``BEGIN IMMEDIATE``).
    lock_rows: str = ""


@dataclass(frozen=True, slots=True)
class Query:
    """One read of :meth:`Session.fetch_several`: ``sql`` with ``params``; with
    ``in_values``, ``sql`` has an ``IN_LIST`` marker after ``params`` (see
    :meth:`Session.fetch_in`)."""

    sql: str
    params: tuple[Any, ...] = ()
    in_values: Sequence[Any] | None = None
    array_type: str = ""


class Session(abc.ABC):
    """Statements inside one transaction. Errors surface as :class:`StorageError`
    (:class:`Conflict` for a uniqueness violation); the transaction is then rolled back."""

    @abc.abstractmethod
    async def fetch(self, sql: str, *params: Any) -> list[Row]: ...

    @abc.abstractmethod
    async def execute(self, sql: str, *params: Any) -> int:
        """Run one statement; the number of rows it changed."""

    @abc.abstractmethod
    async def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None: ...

    @abc.abstractmethod
    async def fetch_in(self, sql: str, fixed: Sequence[Any], values: Sequence[Any],
                       array_type: str) -> list[Row]:
        """Rows of ``sql`` whose ``IN_LIST`` marker stands for ``values`` (deduplicated);
        ``fixed`` are the parameters before it. ``array_type`` names the values' SQL type
        (``bytea``, ``text``) for backends that pass the list as one array."""

    @abc.abstractmethod
    async def bulk_insert(self, table: str, columns: Sequence[str],
                          rows: Sequence[Sequence[Any]]) -> None:
        """Insert many rows at once, the fastest way the backend has."""

    @abc.abstractmethod
    async def script(self, sql: str) -> None:
        """Run DDL (several statements separated by ``;``)."""

    async def fetch_several(self, queries: Sequence[Query]) -> list[list[Row]]:
        """The rows of each query, in order (a query with ``in_values`` is a
        :meth:`fetch_in`). Here one after another; a client–server backend runs them as
        one statement, so a group commit pays one round trip for all its reads."""
        out: list[list[Row]] = []
        for query in queries:
            if query.in_values is None:
                out.append(await self.fetch(query.sql, *query.params))
            else:
                out.append(await self.fetch_in(query.sql, query.params, query.in_values,
                                               query.array_type))
        return out

    async def fetchrow(self, sql: str, *params: Any) -> Row | None:
        rows = await self.fetch(sql, *params)
        return rows[0] if rows else None

    async def insert_id(self, sql: str, *params: Any) -> int:
        """An ``INSERT … RETURNING id``: the new row's id."""
        row = await self.fetchrow(sql, *params)
        assert row is not None
        return int(row[0])


class Database(abc.ABC):
    """A connection to one database: reads outside transactions, and transactions."""

    dialect: Dialect
    #: The database as errors name it (a file path, "the PostgreSQL database").
    where: str

    @abc.abstractmethod
    async def connect(self, *, create: bool = False) -> None:
        """Open connections (idempotent after :meth:`close`); without ``create`` a
        database that does not exist yet is an error, never made empty."""

    @abc.abstractmethod
    async def close(self) -> None: ...

    @abc.abstractmethod
    async def read(self, sql: str, *params: Any) -> list[Row]:
        """A short indexed read (a head, a lookup, one client)."""

    @abc.abstractmethod
    async def scan(self, sql: str, *params: Any) -> list[Row]:
        """A range read that may return thousands of rows (export, since)."""

    @abc.abstractmethod
    async def read_in(self, sql: str, fixed: Sequence[Any], values: Sequence[Any],
                      array_type: str) -> list[Row]:
        """A short indexed read of the rows matching a list (:meth:`Session.fetch_in`'s
        rules: ``IN_LIST`` marks the list, ``fixed`` are the parameters before it)."""

    @abc.abstractmethod
    def transaction(self, *, lock_chain: int | None = None
                    ) -> AbstractAsyncContextManager[Session]:
        """A write transaction; with ``lock_chain`` (an instance id) it also holds that
        chain's head lock, so the head read inside is the true head across processes.
        Leaving it commits durably (:class:`CommitOutcomeUnknown` if the commit failed),
        an exception rolls it back."""

    async def make_room(self) -> bool | None:
        """After a write refused for a full disk (:class:`StorageFull`): try to make the
        next write fit. True when a write may succeed now, False when the disk is still
        full, None when this driver cannot tell without writing (the default: a database
        server recovers on its own once its operator frees space)."""
        return None

    @abc.abstractmethod
    def schema_lock(self) -> str | None:
        """A statement that serialises schema migrations across processes, if needed."""

    @abc.abstractmethod
    def leader_lock(self, name: str) -> LeaderLock:
        """The lock that elects the one process running background jobs."""


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


class InstanceScoped:
    """Base of a concern whose rows belong to one of our chains ("instances")."""

    def __init__(self, db: Database, instance_id: Callable[[str], Awaitable[int]]) -> None:
        self._db = db
        self._instance_id = instance_id

    async def _of_instance(self, select: str, alias: str, instance: str | None) -> list[Row]:
        """Rows of ``select`` (table alias ``alias``) for one instance, or for all when
        None, oldest first."""
        if instance is None:
            return await self._db.read(f"{select} ORDER BY {alias}.id")
        return await self._db.read(f"{select} WHERE {alias}.instance = ? ORDER BY {alias}.id",
                                   await self._instance_id(instance))
