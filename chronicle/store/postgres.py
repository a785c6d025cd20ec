"""PostgreSQL driver (asyncpg), for operators who outgrow one SQLite file.

Same semantics as the SQLite driver. The chain-head lock is a row lock on the chain's
``instances`` row (``SELECT … FOR UPDATE``), taken at the start of every write
transaction; several server processes (or nodes) can therefore append to one database
without forking the chain: each batch re-reads the head under that lock. Commits are
durable (``synchronous_commit`` stays at its default, on).

URL: ``postgresql://user@host:port/db``; an optional ``?schema=NAME`` query parameter puts
the tables in that schema (created if missing), used by the test suite to isolate runs.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import asyncpg

from chronicle.core.blakechain import ChainHead, Entry
from chronicle.core.errors import RequestError, SchemaMismatchError, StorageError
from chronicle.store.base import SCHEMA_VERSION, Client, Mirror, Store, WriteTx

MIGRATIONS: dict[int, str] = {
    1: """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE instances (id SERIAL PRIMARY KEY, name TEXT NOT NULL UNIQUE);
CREATE TABLE entries (
    id BIGSERIAL PRIMARY KEY,
    instance INTEGER NOT NULL REFERENCES instances(id),
    idx BIGINT NOT NULL,
    contents BYTEA NOT NULL,
    prevhash BYTEA,
    currhash BYTEA NOT NULL,
    summaryhash BYTEA NOT NULL,
    hashstate BYTEA NOT NULL,
    publickey BYTEA NOT NULL,
    signature BYTEA NOT NULL,
    created TEXT NOT NULL,
    UNIQUE (instance, idx)
);
CREATE UNIQUE INDEX entries_currhash ON entries(instance, currhash);
CREATE UNIQUE INDEX entries_summaryhash ON entries(instance, summaryhash);
CREATE UNIQUE INDEX entries_signature ON entries(instance, signature);
CREATE TABLE clients (
    id BIGSERIAL PRIMARY KEY,
    instance INTEGER NOT NULL REFERENCES instances(id),
    publicid TEXT NOT NULL,
    publickey BYTEA NOT NULL,
    is_admin BOOLEAN NOT NULL DEFAULT FALSE,
    comment TEXT,
    created TEXT NOT NULL,
    revoked TEXT
);
CREATE UNIQUE INDEX clients_active ON clients(instance, publicid) WHERE revoked IS NULL;
CREATE TABLE mirrors (
    id BIGSERIAL PRIMARY KEY,
    instance INTEGER NOT NULL REFERENCES instances(id),
    url TEXT NOT NULL,
    publickey TEXT NOT NULL,
    comment TEXT,
    sortpriority INTEGER NOT NULL DEFAULT 0,
    created TEXT NOT NULL,
    UNIQUE (instance, url)
);
""",
}

_ENTRY_COLS = ("idx, contents, prevhash, currhash, summaryhash, hashstate, publickey, "
               "signature, created")
_RANGE_COLS = _ENTRY_COLS.replace("hashstate", "''::bytea")
_CLIENT_COLS = "publicid, publickey, is_admin, comment, created, revoked"


def _entry(row: Sequence[Any]) -> Entry:
    return Entry(index=row[0], contents=bytes(row[1]),
                 prevhash=bytes(row[2]) if row[2] is not None else None,
                 currhash=bytes(row[3]), summaryhash=bytes(row[4]), hashstate=bytes(row[5]),
                 publickey=bytes(row[6]), signature=bytes(row[7]), created=row[8])


def _client(row: Sequence[Any]) -> Client:
    return Client(publicid=row[0], publickey=bytes(row[1]), is_admin=bool(row[2]),
                  comment=row[3], created=row[4], revoked=row[5])


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


class _PgWriteTx(WriteTx):
    def __init__(self, conn: asyncpg.Connection, instance_id: int) -> None:
        self._conn = conn
        self._iid = instance_id

    async def head(self) -> ChainHead | None:
        row = await self._conn.fetchrow(
            "SELECT idx, currhash, summaryhash, hashstate, created FROM entries "
            "WHERE instance = $1 ORDER BY idx DESC LIMIT 1", self._iid)
        if row is None:
            return None
        return ChainHead(row[0], bytes(row[1]), bytes(row[2]), bytes(row[3]), row[4])

    async def find_signatures(self, signatures: Sequence[bytes]) -> dict[bytes, Entry]:
        rows = await self._conn.fetch(
            f"SELECT {_ENTRY_COLS} FROM entries WHERE instance = $1 "  # noqa: S608
            "AND signature = ANY($2::bytea[])", self._iid, list(dict.fromkeys(signatures)))
        return {bytes(r[7]): _entry(r) for r in rows}

    async def active_clients(self, publicids: Sequence[str]) -> dict[str, Client]:
        rows = await self._conn.fetch(
            f"SELECT {_CLIENT_COLS} FROM clients WHERE instance = $1 "  # noqa: S608
            "AND revoked IS NULL AND publicid = ANY($2::text[])",
            self._iid, list(dict.fromkeys(publicids)))
        return {r[0]: _client(r) for r in rows}

    async def insert_entries(self, entries: Sequence[Entry]) -> None:
        if not entries:
            return
        await self._conn.copy_records_to_table(
            "entries",
            columns=["instance", "idx", "contents", "prevhash", "currhash", "summaryhash",
                     "hashstate", "publickey", "signature", "created"],
            records=[(self._iid, e.index, e.contents, e.prevhash, e.currhash, e.summaryhash,
                      e.hashstate, e.publickey, e.signature, e.created) for e in entries])

    async def add_client(self, client: Client) -> None:
        try:
            async with self._conn.transaction():  # a savepoint: keep the outer tx usable
                await self._conn.execute(
                    "INSERT INTO clients (instance, publicid, publickey, is_admin, comment, "
                    "created) VALUES ($1, $2, $3, $4, $5, $6)",
                    self._iid, client.publicid, client.publickey, client.is_admin,
                    client.comment, client.created)
        except asyncpg.UniqueViolationError:
            raise RequestError(f"client id {client.publicid} is already in use",
                               status=409) from None

    async def revoke_client(self, publicid: str, when: str) -> None:
        await self._conn.execute(
            "UPDATE clients SET revoked = $1 WHERE instance = $2 AND publicid = $3 "
            "AND revoked IS NULL", when, self._iid, publicid)


class PostgresStore(Store):
    """All chains in one PostgreSQL database (optionally one schema of it)."""

    def __init__(self, url: str, *, min_size: int = 2, max_size: int = 10,
                 lock_timeout_ms: int = 10_000) -> None:
        self.url = url
        self._dsn, ours = _our_params(url)
        self._schema = ours.get("schema")
        # Behind a transaction-pooling PgBouncer: ?statement_cache_size=0
        self._statement_cache = int(ours.get("statement_cache_size", "100"))
        self._min, self._max = min_size, max_size
        self._lock_timeout_ms = lock_timeout_ms
        self._pool: asyncpg.Pool | None = None
        self._instances: dict[str, int] = {}

    async def _connect(self) -> None:
        await self.close()
        settings = {"lock_timeout": str(self._lock_timeout_ms)}
        if self._schema:
            settings["search_path"] = self._schema
            try:
                conn = await asyncpg.connect(self._dsn)
            except (OSError, asyncpg.PostgresError) as exc:
                raise StorageError(f"cannot connect to PostgreSQL: {exc}") from exc
            try:
                await conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{self._schema}"')
            finally:
                await conn.close()
        try:
            self._pool = await asyncpg.create_pool(self._dsn, min_size=self._min,
                                                   max_size=self._max,
                                                   server_settings=settings,
                                                   statement_cache_size=self._statement_cache)
        except (OSError, asyncpg.PostgresError) as exc:
            raise StorageError(f"cannot connect to PostgreSQL: {exc}") from exc

    @property
    def pool(self) -> asyncpg.Pool:
        if self._pool is None:
            raise StorageError("the PostgreSQL store is not open")
        return self._pool

    async def _version(self) -> int:
        has_meta = await self.pool.fetchval("SELECT to_regclass('meta') IS NOT NULL")
        if not has_meta:
            return 0
        value = await self.pool.fetchval("SELECT value FROM meta WHERE key = 'schema_version'")
        return int(value) if value else 0

    async def open(self) -> None:
        await self._connect()
        version = await self._version()
        if version != SCHEMA_VERSION:
            await self.close()
            if version == 0:
                raise SchemaMismatchError("the database holds no chronicle schema "
                                          "(run `chronicle init`)")
            raise SchemaMismatchError(
                f"database schema version {version}, this chronicle needs {SCHEMA_VERSION}"
                + (" (run `chronicle migrate`)" if version < SCHEMA_VERSION else
                   " (the database is newer than this software)"))
        await self._load_instances()

    async def create_schema(self) -> None:
        await self._connect()
        if await self._version() != 0:
            raise StorageError("the database already holds a chronicle schema")
        await self._apply_migrations(0)
        await self._load_instances()

    async def migrate(self) -> int:
        await self._connect()
        version = await self._version()
        if version > SCHEMA_VERSION:
            raise SchemaMismatchError(
                f"database schema version {version} is newer than this software "
                f"({SCHEMA_VERSION})")
        await self._apply_migrations(version)
        await self._load_instances()
        return SCHEMA_VERSION

    async def _apply_migrations(self, current: int) -> None:
        async with self.pool.acquire() as conn, conn.transaction():
            # Serialise concurrent migrators (several nodes starting at once).
            await conn.execute("SELECT pg_advisory_xact_lock(7268017)")
            for version in sorted(v for v in MIGRATIONS if v > current):
                await conn.execute(MIGRATIONS[version])
                await conn.execute(
                    "INSERT INTO meta (key, value) VALUES ('schema_version', $1) "
                    "ON CONFLICT (key) DO UPDATE SET value = excluded.value", str(version))

    async def _load_instances(self) -> None:
        rows = await self.pool.fetch("SELECT id, name FROM instances")
        self._instances = {r["name"]: r["id"] for r in rows}

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    async def ensure_instance(self, name: str) -> None:
        if name in self._instances:
            return
        await self.pool.execute(
            "INSERT INTO instances (name) VALUES ($1) ON CONFLICT (name) DO NOTHING", name)
        await self._load_instances()

    async def _iid(self, instance: str) -> int:
        if instance not in self._instances:
            await self._load_instances()
            if instance not in self._instances:
                raise StorageError(f"instance {instance!r} does not exist in the database")
        return self._instances[instance]

    @asynccontextmanager
    async def write(self, instance: str) -> AsyncIterator[WriteTx]:
        iid = await self._iid(instance)
        try:
            conn = await self.pool.acquire()
        except (OSError, asyncpg.PostgresError) as exc:
            raise StorageError(f"cannot reach PostgreSQL: {exc}") from exc
        try:
            tx = conn.transaction()
            try:
                await tx.start()
                await conn.execute("SELECT id FROM instances WHERE id = $1 FOR UPDATE", iid)
            except (OSError, asyncpg.PostgresError) as exc:
                with contextlib.suppress(Exception):
                    await tx.rollback()
                raise StorageError(f"cannot lock the chain for writing: {exc}") from exc
            try:
                yield _PgWriteTx(conn, iid)
            except BaseException:
                with contextlib.suppress(Exception):
                    await tx.rollback()
                raise
            try:
                await tx.commit()
            except (OSError, asyncpg.PostgresError) as exc:
                with contextlib.suppress(Exception):
                    await tx.rollback()
                raise StorageError(f"commit failed: {exc}") from exc
        finally:
            await self.pool.release(conn)

    async def _fetch(self, sql: str, *args: Any) -> list[Any]:
        try:
            return list(await self.pool.fetch(sql, *args))
        except (OSError, asyncpg.PostgresError) as exc:
            raise StorageError(f"read failed: {exc}") from exc

    async def head(self, instance: str) -> Entry | None:
        rows = await self._fetch(f"SELECT {_ENTRY_COLS} FROM entries WHERE instance = $1 "  # noqa: S608
                                 "ORDER BY idx DESC LIMIT 1", await self._iid(instance))
        return _entry(rows[0]) if rows else None

    async def lookup(self, instance: str, hash_raw: bytes) -> list[Entry]:
        iid = await self._iid(instance)
        rows = await self._fetch(
            f"SELECT {_ENTRY_COLS} FROM entries WHERE instance = $1 AND currhash = $2 "  # noqa: S608
            f"UNION SELECT {_ENTRY_COLS} FROM entries WHERE instance = $1 AND summaryhash = $2 "
            "ORDER BY idx", iid, hash_raw)
        return [_entry(r) for r in rows]

    async def entry_at(self, instance: str, index: int) -> Entry | None:
        rows = await self._fetch(
            f"SELECT {_ENTRY_COLS} FROM entries WHERE instance = $1 AND idx = $2",  # noqa: S608
            await self._iid(instance), index)
        return _entry(rows[0]) if rows else None

    async def range(self, instance: str, start: int, stop: int) -> list[Entry]:
        rows = await self._fetch(
            f"SELECT {_RANGE_COLS} FROM entries WHERE instance = $1 "  # noqa: S608
            "AND idx >= $2 AND idx < $3 ORDER BY idx", await self._iid(instance), start, stop)
        return [_entry(r) for r in rows]

    async def get_client(self, instance: str, publicid: str) -> Client | None:
        rows = await self._fetch(
            f"SELECT {_CLIENT_COLS} FROM clients WHERE instance = $1 "  # noqa: S608
            "AND publicid = $2 AND revoked IS NULL", await self._iid(instance), publicid)
        return _client(rows[0]) if rows else None

    async def list_clients(self, instance: str, *, include_revoked: bool = False) -> list[Client]:
        sql = f"SELECT {_CLIENT_COLS} FROM clients WHERE instance = $1"  # noqa: S608
        if not include_revoked:
            sql += " AND revoked IS NULL"
        return [_client(r) for r in await self._fetch(sql + " ORDER BY id",
                                                        await self._iid(instance))]

    async def list_mirrors(self, instance: str) -> list[Mirror]:
        rows = await self._fetch(
            "SELECT url, publickey, comment, sortpriority FROM mirrors WHERE instance = $1 "
            "ORDER BY sortpriority ASC, id ASC", await self._iid(instance))
        return [Mirror(url=r[0], publickey=r[1], comment=r[2], sortpriority=r[3]) for r in rows]

    async def add_mirror(self, instance: str, mirror: Mirror, when: str) -> None:
        await self.pool.execute(
            "INSERT INTO mirrors (instance, url, publickey, comment, sortpriority, created) "
            "VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (instance, url) DO UPDATE SET "
            "publickey = excluded.publickey, comment = excluded.comment, "
            "sortpriority = excluded.sortpriority",
            await self._iid(instance), mirror.url, mirror.publickey, mirror.comment,
            mirror.sortpriority, when)

    async def remove_mirror(self, instance: str, url: str) -> bool:
        status = await self.pool.execute(
            "DELETE FROM mirrors WHERE instance = $1 AND url = $2",
            await self._iid(instance), url)
        return int(str(status).split()[-1]) > 0  # "DELETE <count>"
