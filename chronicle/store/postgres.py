"""PostgreSQL driver (asyncpg), for operators who outgrow one SQLite file.

Same behaviour as the SQLite driver. A chain's head lock is a row lock on its
``instances`` row (``SELECT … FOR UPDATE``), taken at the start of every write transaction
on that chain; several server processes (or nodes) can therefore append to one database
without forking a chain: each batch re-reads the head under that lock. Commits are
durable (``synchronous_commit`` stays at its default, on).

URL: ``postgresql://user@host:port/db``; an optional ``?schema=NAME`` query parameter puts
the tables in that schema (created if missing), used by the test suite to isolate runs;
``?statement_cache_size=0`` for a transaction-pooling PgBouncer.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import asyncpg

from chronicle.core.errors import (
    CommitOutcomeUnknown,
    StorageDenied,
    StorageError,
    StorageFull,
)
from chronicle.store.base import Store
from chronicle.store.schema import POSTGRES_TYPES
from chronicle.store.sql import (
    IN_LIST,
    Conflict,
    Database,
    Dialect,
    LeaderLock,
    Query,
    Row,
    Session,
)

DIALECT = Dialect("postgresql", POSTGRES_TYPES, "SELECT 1 WHERE to_regclass(?) IS NOT NULL",
                  lock_rows=" FOR UPDATE")

#: What asyncpg may raise for a database that failed us (not a bug of ours).
DRIVER_ERRORS = (OSError, asyncpg.PostgresError, asyncpg.InterfaceError)

_OURS = ("schema", "statement_cache_size")


def _our_params(url: str) -> tuple[str, dict[str, str]]:
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    ours = {k: v for k, v in query if k in _OURS}
    rest = urlencode([(k, v) for k, v in query if k not in _OURS])
    return urlunsplit(parts._replace(query=rest)), ours


def split_url(url: str) -> tuple[str, str | None]:
    """Separate our ``schema`` parameter from what asyncpg understands."""
    dsn, ours = _our_params(url)
    return dsn, ours.get("schema")


@functools.lru_cache(maxsize=512)
def numbered(sql: str) -> str:
    """``?`` placeholders as PostgreSQL's ``$1, $2, …`` (our SQL has no ``?`` in literals)."""
    parts = sql.split("?")
    return "".join(f"{part}${i}" for i, part in enumerate(parts[:-1], 1)) + parts[-1]


#: PostgreSQL's refusals that last until someone acts (grants, a read-only server, disk).
_DENIED = (asyncpg.InsufficientPrivilegeError, asyncpg.ReadOnlySQLTransactionError,
           asyncpg.DiskFullError)


def _storage_error(exc: BaseException, what: str) -> StorageError:
    if isinstance(exc, asyncpg.UniqueViolationError):
        return Conflict(f"{what}: {exc}")
    if isinstance(exc, asyncpg.DiskFullError):
        return StorageFull(f"{what}: {exc}")
    if isinstance(exc, _DENIED):
        return StorageDenied(f"{what}: {exc}")
    return StorageError(f"{what}: {exc}")


#: SQLSTATE classes after which a COMMIT's outcome is unknown: the connection broke, the
#: server was stopped, or it hit a system or internal error.
_UNKNOWN_CLASSES = ("08", "57", "58", "XX")


def _refused_commit(exc: BaseException) -> bool:
    """Did PostgreSQL answer COMMIT with an error that means it rolled back (a deferred
    trigger or constraint raised, serialisation failure, full disk)? Then nothing is
    stored. A broken connection, a shutdown or an internal error leaves it unknown."""
    if not isinstance(exc, asyncpg.PostgresError) or \
            isinstance(exc, asyncpg.PostgresConnectionError):
        return False
    state = str(getattr(exc, "sqlstate", "") or "")
    return len(state) == 5 and not state.startswith(_UNKNOWN_CLASSES)


def _count(status: str) -> int:
    """Rows changed, from a command status such as ``UPDATE 3`` or ``INSERT 0 1``."""
    last = status.split()[-1] if status else "0"
    return int(last) if last.isdigit() else 0


#: Up to this many rows a bulk insert is one ``INSERT … SELECT FROM unnest(…)`` (a group
#: commit's rows); more go through COPY.
INLINE_ROWS = 256


@functools.lru_cache(maxsize=32)
def _insert(table: str, columns: tuple[str, ...]) -> str:
    marks = ", ".join(f"${i}" for i in range(1, len(columns) + 1))
    return f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({marks})"  # noqa: S608


def _unnest_insert(table: str, columns: Sequence[str], types: Sequence[str]) -> str:
    """All rows in one statement: one array parameter per column."""
    arrays = ", ".join(f"${i}::{t}[]" for i, t in enumerate(types, 1))
    return (f"INSERT INTO {table} ({', '.join(columns)}) "  # noqa: S608 (our names)
            f"SELECT * FROM unnest({arrays})")


def _any_array(sql: str, array_type: str) -> str:
    """``IN_LIST`` as one array parameter: ``= ANY(?::type[])``."""
    return sql.replace(IN_LIST, f"= ANY(?::{array_type}[])")


class _PgSession(Session):
    def __init__(self, db: PostgresDatabase, conn: asyncpg.Connection) -> None:
        self._db = db
        self._conn = conn

    async def fetch(self, sql: str, *params: Any) -> list[Row]:
        try:
            return list(await self._conn.fetch(numbered(sql), *params))
        except DRIVER_ERRORS as exc:
            raise _storage_error(exc, "read failed") from exc

    async def execute(self, sql: str, *params: Any) -> int:
        try:
            return _count(str(await self._conn.execute(numbered(sql), *params)))
        except DRIVER_ERRORS as exc:
            raise _storage_error(exc, "write failed") from exc

    async def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        try:
            await self._conn.executemany(numbered(sql), rows)
        except DRIVER_ERRORS as exc:
            raise _storage_error(exc, "write failed") from exc

    async def fetch_in(self, sql: str, fixed: Sequence[Any], values: Sequence[Any],
                       array_type: str) -> list[Row]:
        return await self.fetch(_any_array(sql, array_type), *fixed,
                                list(dict.fromkeys(values)))

    async def fetch_several(self, queries: Sequence[Query]) -> list[list[Row]]:
        """All the reads as one statement, each an ``ARRAY(…)`` of its rows (anonymous
        records, which asyncpg decodes as tuples): one round trip instead of one each."""
        if len(queries) < 2:
            return await super().fetch_several(queries)
        parts: list[str] = []
        params: list[Any] = []
        for query in queries:
            sql = query.sql
            params += query.params
            if query.in_values is not None:
                sql = _any_array(sql, query.array_type)
                params.append(list(dict.fromkeys(query.in_values)))
            parts.append(f"ARRAY(SELECT t FROM ({sql}) AS t)")  # noqa: S608 (our SQL)
        row = await self.fetchrow("SELECT " + ", ".join(parts), *params)
        assert row is not None
        return [list(found) for found in row]

    async def bulk_insert(self, table: str, columns: Sequence[str],
                          rows: Sequence[Sequence[Any]]) -> None:
        try:
            if not rows:
                return
            if len(rows) <= INLINE_ROWS:
                # A group commit's few rows: one statement and one round trip (COPY costs
                # two; executemany executes once per row).
                sql = await self._db.unnest_insert(self._conn, table, tuple(columns))
                await self._conn.execute(sql, *(list(c) for c in zip(*rows, strict=True)))
            else:
                await self._conn.copy_records_to_table(table, columns=list(columns),
                                                       records=rows)
        except DRIVER_ERRORS as exc:
            raise _storage_error(exc, "write failed") from exc

    async def script(self, sql: str) -> None:
        try:
            await self._conn.execute(sql)
        except DRIVER_ERRORS as exc:
            raise _storage_error(exc, "schema change failed") from exc


class PostgresDatabase(Database):
    """A connection pool to one database (optionally one schema of it)."""

    dialect = DIALECT

    def __init__(self, url: str, *, min_size: int = 2, max_size: int = 10,
                 lock_timeout_ms: int = 10_000) -> None:
        self.url = url
        self.dsn, ours = _our_params(url)
        self.schema = ours.get("schema")
        self._statement_cache = int(ours.get("statement_cache_size", "100"))
        self._min, self._max = min_size, max_size
        self._lock_timeout_ms = lock_timeout_ms
        self._pool: asyncpg.Pool | None = None
        self._settings: dict[str, str] = {}
        #: The dedicated connection of chain writes (:meth:`transaction`), opened on use.
        self._writer: asyncpg.Connection | None = None
        self._writer_lock = asyncio.Lock()
        self._unnest: dict[tuple[str, tuple[str, ...]], str] = {}
        self.where = "the PostgreSQL database" + (f" (schema {self.schema})"
                                                  if self.schema else "")

    @property
    def pool(self) -> asyncpg.Pool:
        if self._pool is None:
            raise StorageError("the PostgreSQL store is not open")
        return self._pool

    async def connect(self, *, create: bool = False) -> None:
        await self.close()
        # Custom plans: after five executions PostgreSQL would switch a prepared statement
        # to a generic plan costed while the chain was small; for the duplicate-signature
        # check that plan walked the whole chain on every group commit (measured:
        # docs/benchmarks.md). Planning per execution costs ~0.1 ms.
        settings = {"lock_timeout": str(self._lock_timeout_ms),
                    "plan_cache_mode": "force_custom_plan"}
        try:
            if self.schema:
                settings["search_path"] = self.schema
            # Only init creates the schema: a runtime role without CREATE on the database
            # must be able to open it (PostgreSQL checks that privilege even when the
            # schema exists).
            if self.schema and create:
                conn = await asyncpg.connect(self.dsn)
                try:
                    await conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{self.schema}"')
                finally:
                    await conn.close()
            self._settings = settings
            self._pool = await asyncpg.create_pool(self.dsn, min_size=self._min,
                                                   max_size=self._max,
                                                   server_settings=settings,
                                                   statement_cache_size=self._statement_cache)
        except DRIVER_ERRORS as exc:
            raise StorageError(f"cannot connect to PostgreSQL: {exc}") from exc

    async def close(self) -> None:
        if self._writer is not None:
            with contextlib.suppress(*DRIVER_ERRORS):
                await self._writer.close(timeout=5)
            self._writer = None
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    async def read(self, sql: str, *params: Any) -> list[Row]:
        try:
            return list(await self.pool.fetch(numbered(sql), *params))
        except DRIVER_ERRORS as exc:
            raise StorageError(f"read failed: {exc}") from exc

    async def scan(self, sql: str, *params: Any) -> list[Row]:
        return await self.read(sql, *params)

    async def read_in(self, sql: str, fixed: Sequence[Any], values: Sequence[Any],
                      array_type: str) -> list[Row]:
        return await self.read(_any_array(sql, array_type), *fixed, list(dict.fromkeys(values)))

    @asynccontextmanager
    async def transaction(self, *, lock_chain: int | None = None) -> AsyncIterator[Session]:
        if lock_chain is not None and not self._writer_lock.locked():
            # The group commit's path: the dedicated writer connection (no pool acquire,
            # no reset query on release). Chains written concurrently use the pool.
            async with self._writer_lock:
                try:
                    if self._writer is None or self._writer.is_closed():
                        self._writer = await asyncpg.connect(
                            self.dsn, server_settings=self._settings,
                            statement_cache_size=self._statement_cache)
                except DRIVER_ERRORS as exc:
                    raise StorageError(f"cannot reach PostgreSQL: {exc}") from exc
                async with self._transaction_on(self._writer, lock_chain) as session:
                    yield session
            return
        try:
            conn = await self.pool.acquire()
        except DRIVER_ERRORS as exc:
            raise StorageError(f"cannot reach PostgreSQL: {exc}") from exc
        try:
            async with self._transaction_on(conn, lock_chain) as session:
                yield session
        finally:
            await self.pool.release(conn)

    @asynccontextmanager
    async def _transaction_on(self, conn: asyncpg.Connection, lock_chain: int | None
                              ) -> AsyncIterator[Session]:
        """``BEGIN`` (and the chain's head lock: one simple-protocol message, one round
        trip), the caller's statements, ``COMMIT``, checked: PostgreSQL answers the
        COMMIT of a transaction in which a statement failed with ``ROLLBACK``, even when
        the caller caught that failure. A connection left in doubt (an error during
        ``ROLLBACK``, a cancellation) is closed, which ends its transaction."""
        begin = "BEGIN" if lock_chain is None else (
            "BEGIN; SELECT id FROM instances "  # noqa: S608 (an int)
            f"WHERE id = {int(lock_chain)} FOR UPDATE")
        try:
            await conn.execute(begin)
        except DRIVER_ERRORS as exc:
            await self._abandon(conn)
            raise StorageError(f"cannot lock the chain for writing: {exc}") from exc
        except BaseException:
            self._drop(conn)
            raise
        try:
            yield _PgSession(self, conn)
        except asyncio.CancelledError:
            self._drop(conn)
            raise
        except BaseException:
            await self._abandon(conn)
            raise
        try:
            status = await conn.execute("COMMIT")
        except DRIVER_ERRORS as exc:
            await self._abandon(conn)
            if _refused_commit(exc):
                raise _storage_error(exc, "commit failed") from exc
            raise CommitOutcomeUnknown(f"commit failed: {exc}") from exc
        except BaseException:
            self._drop(conn)
            raise
        if status != "COMMIT":
            raise StorageError(f"the transaction was rolled back ({status}): a statement "
                               "in it had failed")

    async def _abandon(self, conn: asyncpg.Connection) -> None:
        """Roll the transaction back, or close the connection if that fails."""
        try:
            await conn.execute("ROLLBACK")
        except BaseException as exc:
            self._drop(conn)
            if not isinstance(exc, DRIVER_ERRORS):
                raise

    def _drop(self, conn: asyncpg.Connection) -> None:
        """Close ``conn`` at once (the pool replaces a closed connection of its own)."""
        conn.terminate()
        if self._writer is conn:
            self._writer = None

    async def unnest_insert(self, conn: asyncpg.Connection, table: str,
                            columns: tuple[str, ...]) -> str:
        """The ``unnest`` INSERT of ``columns`` of ``table``, with the column types
        PostgreSQL itself gives the parameters of a plain INSERT (asked once)."""
        sql = self._unnest.get((table, columns))
        if sql is None:
            stmt = await conn.prepare(_insert(table, columns))
            types = [t.name if t.schema == "pg_catalog" else f'"{t.schema}"."{t.name}"'
                     for t in stmt.get_parameters()]
            sql = self._unnest[(table, columns)] = _unnest_insert(table, columns, types)
        return sql

    def schema_lock(self) -> str | None:
        return "SELECT pg_advisory_xact_lock(7268017)"

    def leader_lock(self, name: str) -> LeaderLock:
        return AdvisoryLeaderLock(self.dsn, f"{self.schema or 'public'}/{name}")


class PostgresStore(Store):
    """All chains in one PostgreSQL database (optionally one schema of it)."""

    def __init__(self, url: str, **options: Any) -> None:
        self.url = url
        self.database = PostgresDatabase(url, **options)
        super().__init__(self.database, self.database.where)

    @property
    def pool(self) -> asyncpg.Pool:
        return self.database.pool


class AdvisoryLeaderLock(LeaderLock):
    """``pg_try_advisory_lock`` on a dedicated connection (not the pool's): the lock lives
    exactly as long as that session, so a dead leader's lock is released by PostgreSQL."""

    def __init__(self, dsn: str, name: str) -> None:
        self._dsn = dsn
        digest = hashlib.blake2b(name.encode(), digest_size=8).digest()
        self.key = int.from_bytes(digest, "big", signed=True)
        self._conn: asyncpg.Connection | None = None

    async def acquire(self) -> bool:
        if self._conn is not None and not self._conn.is_closed():
            return True
        try:
            conn = await asyncpg.connect(self._dsn)
        except DRIVER_ERRORS as exc:
            raise StorageError(f"cannot connect to PostgreSQL: {exc}") from exc
        try:
            held = bool(await conn.fetchval("SELECT pg_try_advisory_lock($1)", self.key))
        except BaseException as exc:
            await conn.close()
            if isinstance(exc, DRIVER_ERRORS):
                raise StorageError(f"cannot take the leader lock: {exc}") from exc
            raise
        if not held:
            await conn.close()
            return False
        self._conn = conn
        return True

    async def still_held(self) -> bool:
        conn = self._conn
        if conn is None or conn.is_closed():
            return False
        try:
            await conn.fetchval("SELECT 1")
        except DRIVER_ERRORS:
            with contextlib.suppress(Exception):
                await conn.close()
            self._conn = None
            return False
        return True

    async def release(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None and not conn.is_closed():
            with contextlib.suppress(Exception):
                await conn.execute("SELECT pg_advisory_unlock($1)", self.key)
            await conn.close()
