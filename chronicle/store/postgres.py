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
import hashlib
import json
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import asyncpg

from chronicle.core.blakechain import ChainHead, Entry
from chronicle.core.errors import (
    CommitOutcomeUnknown,
    RequestError,
    SchemaMismatchError,
    StorageError,
)
from chronicle.store.base import (
    SCHEMA_VERSION,
    Client,
    EvidenceDocument,
    KeyRecord,
    LeaderLock,
    Mirror,
    ReplicaConflict,
    ReplicaFault,
    ReplicaPeer,
    ReplicaSource,
    Store,
    WriteTx,
    XsignReceipt,
    XsignTarget,
)
from chronicle.store.rows import (
    _client,
    _entry,
    _receipt,
    _replica_entry,
    _source,
    _xsign,
)

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
    2: """
CREATE TABLE replication_sources (
    id BIGSERIAL PRIMARY KEY,
    instance INTEGER NOT NULL REFERENCES instances(id),
    uniqueid TEXT NOT NULL UNIQUE,
    name TEXT NOT NULL,
    url TEXT NOT NULL,
    publickey BYTEA NOT NULL,
    status TEXT NOT NULL DEFAULT 'active',
    fault TEXT,
    reason TEXT,
    status_since TEXT,
    created TEXT NOT NULL,
    last_sync TEXT,
    last_attempt TEXT,
    last_error TEXT,
    failures INTEGER NOT NULL DEFAULT 0,
    UNIQUE (instance, name)
);
CREATE TABLE replication_peers (
    id BIGSERIAL PRIMARY KEY,
    source BIGINT NOT NULL REFERENCES replication_sources(id) ON DELETE CASCADE,
    url TEXT NOT NULL,
    publickey BYTEA,
    kind TEXT NOT NULL,
    cursor TEXT,
    UNIQUE (source, url)
);
CREATE TABLE replication_keys (
    id BIGSERIAL PRIMARY KEY,
    source BIGINT NOT NULL REFERENCES replication_sources(id) ON DELETE CASCADE,
    publickey BYTEA NOT NULL,
    since TEXT NOT NULL,
    retired TEXT,
    reason TEXT
);
CREATE TABLE replica_entries (
    id BIGSERIAL PRIMARY KEY,
    source BIGINT NOT NULL REFERENCES replication_sources(id) ON DELETE CASCADE,
    idx BIGINT NOT NULL,
    contents BYTEA NOT NULL,
    prevhash BYTEA NOT NULL,
    currhash BYTEA NOT NULL,
    summaryhash BYTEA NOT NULL,
    hashstate BYTEA NOT NULL,
    publickey BYTEA NOT NULL,
    signature BYTEA NOT NULL,
    created TEXT NOT NULL,
    replicated TEXT NOT NULL,
    UNIQUE (source, idx)
);
CREATE UNIQUE INDEX replica_entries_currhash ON replica_entries(source, currhash);
CREATE INDEX replica_entries_summaryhash ON replica_entries(source, summaryhash);
CREATE TABLE replication_faults (
    id BIGSERIAL PRIMARY KEY,
    source BIGINT NOT NULL REFERENCES replication_sources(id) ON DELETE CASCADE,
    recorded TEXT NOT NULL,
    status TEXT NOT NULL,
    kind TEXT NOT NULL,
    message TEXT NOT NULL,
    details TEXT NOT NULL
);
CREATE TABLE replication_evidence (
    id BIGSERIAL PRIMARY KEY,
    fault BIGINT NOT NULL REFERENCES replication_faults(id) ON DELETE CASCADE,
    role TEXT NOT NULL,
    method TEXT NOT NULL,
    url TEXT NOT NULL,
    status INTEGER NOT NULL,
    signature TEXT,
    signer BYTEA,
    body BYTEA,
    file TEXT,
    size BIGINT NOT NULL,
    sha256 TEXT NOT NULL
);
CREATE TABLE xsign_targets (
    id BIGSERIAL PRIMARY KEY,
    instance INTEGER NOT NULL REFERENCES instances(id),
    name TEXT NOT NULL,
    url TEXT NOT NULL,
    publickey BYTEA NOT NULL,
    clientid TEXT NOT NULL,
    policy TEXT NOT NULL,
    created TEXT NOT NULL,
    last_index BIGINT,
    last_run TEXT,
    last_attempt TEXT,
    last_error TEXT,
    failures INTEGER NOT NULL DEFAULT 0,
    UNIQUE (instance, name)
);
CREATE TABLE xsign_receipts (
    id BIGSERIAL PRIMARY KEY,
    target BIGINT NOT NULL REFERENCES xsign_targets(id) ON DELETE CASCADE,
    recorded TEXT NOT NULL,
    status TEXT NOT NULL,
    idx BIGINT NOT NULL,
    currhash BYTEA NOT NULL,
    summaryhash BYTEA NOT NULL,
    message BYTEA NOT NULL,
    signature TEXT NOT NULL,
    peer_currhash TEXT,
    peer_summaryhash TEXT,
    peer_created TEXT,
    response BYTEA,
    response_signature TEXT,
    error TEXT
);
CREATE TABLE job_state (name TEXT PRIMARY KEY, value TEXT NOT NULL);
""",
}

_ENTRY_COLS = ("idx, contents, prevhash, currhash, summaryhash, hashstate, publickey, "
               "signature, created")
_RANGE_COLS = _ENTRY_COLS.replace("hashstate", "''::bytea")
_CLIENT_COLS = "publicid, publickey, is_admin, comment, created, revoked"


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
        # Custom plans: after five executions PostgreSQL would switch a prepared statement
        # to a generic plan costed while the chain was small; for the duplicate-signature
        # check that plan walked the whole chain on every group commit (measured:
        # docs/benchmarks.md). Planning per execution costs ~0.1 ms.
        settings = {"lock_timeout": str(self._lock_timeout_ms),
                    "plan_cache_mode": "force_custom_plan"}
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
                raise CommitOutcomeUnknown(f"commit failed: {exc}") from exc
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

    # --- replication, cross-signing (schema version 2) -----------------------------------

    async def _execute(self, sql: str, *args: Any) -> str:
        try:
            return str(await self.pool.execute(sql, *args))
        except (OSError, asyncpg.PostgresError) as exc:
            raise StorageError(f"write failed: {exc}") from exc

    @asynccontextmanager
    async def _txn(self, *, conflict: str | None = None) -> AsyncIterator[asyncpg.Connection]:
        """One transaction on a pooled connection; a unique violation becomes a 409."""
        try:
            async with self.pool.acquire() as conn, conn.transaction():
                yield conn
        except asyncpg.UniqueViolationError as exc:
            if conflict is not None:
                raise RequestError(conflict, status=409) from exc
            raise StorageError(f"write failed: {exc}") from exc
        except (OSError, asyncpg.PostgresError) as exc:
            raise StorageError(f"write failed: {exc}") from exc

    async def add_replica_source(self, source: ReplicaSource,
                                 peers: Sequence[ReplicaPeer] = ()) -> ReplicaSource:
        iid = await self._iid(source.instance)
        async with self._txn(conflict=f"a replication source named {source.name!r} "
                                      "(or with that id) already exists") as conn:
            sid = await conn.fetchval(
                "INSERT INTO replication_sources (instance, uniqueid, name, url, publickey, "
                "status, created) VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id",
                iid, source.uniqueid, source.name, source.url, source.publickey,
                source.status, source.created)
            await conn.execute("INSERT INTO replication_keys (source, publickey, since, reason) "
                               "VALUES ($1, $2, $3, $4)", sid, source.publickey,
                               source.created, "added")
            await _insert_peers(conn, sid, peers)
        found = await self.get_replica_source(source.uniqueid)
        assert found is not None
        return found

    async def list_replica_sources(self, instance: str | None = None) -> list[ReplicaSource]:
        if instance is None:
            rows = await self._fetch(f"{_SOURCE_SELECT} ORDER BY s.id")
        else:
            rows = await self._fetch(f"{_SOURCE_SELECT} WHERE s.instance = $1 ORDER BY s.id",
                                     await self._iid(instance))
        return [_source(r) for r in rows]

    async def get_replica_source(self, ref: str, instance: str | None = None
                                 ) -> ReplicaSource | None:
        sql = f"{_SOURCE_SELECT} WHERE (s.uniqueid = $1 OR s.name = $1)"
        args: list[Any] = [ref]
        if instance is not None:
            sql += " AND s.instance = $2"
            args.append(await self._iid(instance))
        rows = await self._fetch(sql + " ORDER BY (s.uniqueid = $1) DESC, s.id LIMIT 1", *args)
        return _source(rows[0]) if rows else None

    async def remove_replica_source(self, source_id: int) -> bool:
        async with self._txn() as conn:
            status = await conn.execute("DELETE FROM replication_sources WHERE id = $1",
                                        source_id)
        return int(str(status).split()[-1]) > 0

    async def set_replica_url(self, source_id: int, url: str) -> None:
        await self._execute("UPDATE replication_sources SET url = $1 WHERE id = $2",
                            url, source_id)

    async def set_replica_status(self, source_id: int, status: str, *, fault: str | None,
                                 reason: str | None, when: str) -> None:
        await self._execute(
            "UPDATE replication_sources SET status = $1, fault = $2, reason = $3, "
            "status_since = $4 WHERE id = $5", status, fault, reason, when, source_id)

    async def record_replica_attempt(self, source_id: int, *, when: str,
                                     error: str | None) -> None:
        if error is None:
            await self._execute(
                "UPDATE replication_sources SET last_attempt = $1, last_sync = $1, "
                "last_error = NULL, failures = 0 WHERE id = $2", when, source_id)
        else:
            await self._execute(
                "UPDATE replication_sources SET last_attempt = $1, last_error = $2, "
                "failures = failures + 1 WHERE id = $3", when, error, source_id)

    async def set_replica_key(self, source_id: int, publickey: bytes, *, when: str,
                              reason: str | None) -> None:
        async with self._txn() as conn:
            await conn.execute("UPDATE replication_keys SET retired = $1 WHERE source = $2 "
                               "AND retired IS NULL", when, source_id)
            await conn.execute("INSERT INTO replication_keys (source, publickey, since, reason) "
                               "VALUES ($1, $2, $3, $4)", source_id, publickey, when, reason)
            await conn.execute("UPDATE replication_sources SET publickey = $1 WHERE id = $2",
                               publickey, source_id)

    async def replica_keys(self, source_id: int) -> list[KeyRecord]:
        rows = await self._fetch("SELECT publickey, since, retired, reason FROM "
                                 "replication_keys WHERE source = $1 ORDER BY id", source_id)
        return [KeyRecord(bytes(r[0]), r[1], r[2], r[3]) for r in rows]

    async def set_replica_peers(self, source_id: int, peers: Sequence[ReplicaPeer]) -> None:
        async with self._txn(conflict="the same peer URL is given twice") as conn:
            await conn.execute("DELETE FROM replication_peers WHERE source = $1", source_id)
            await _insert_peers(conn, source_id, peers)

    async def list_replica_peers(self, source_id: int) -> list[ReplicaPeer]:
        rows = await self._fetch("SELECT url, publickey, kind, cursor, id FROM replication_peers "
                                 "WHERE source = $1 ORDER BY id", source_id)
        return [ReplicaPeer(r[0], None if r[1] is None else bytes(r[1]), r[2], r[3], r[4])
                for r in rows]

    async def set_peer_cursor(self, peer_id: int, cursor: str | None) -> None:
        await self._execute("UPDATE replication_peers SET cursor = $1 WHERE id = $2",
                            cursor, peer_id)

    async def replica_head(self, source_id: int) -> Entry | None:
        rows = await self._fetch(f"SELECT {_ENTRY_COLS} FROM replica_entries "  # noqa: S608
                                 "WHERE source = $1 ORDER BY idx DESC LIMIT 1", source_id)
        return _replica_entry(rows[0]) if rows else None

    async def replica_append(self, source_id: int, entries: Sequence[Entry], *,
                             replicated: str) -> None:
        if not entries:
            return
        first = entries[0]
        async with self._txn(conflict="the replica already holds one of these entries") as conn:
            # The source row is the lock: two writers of one replica queue up here.
            await conn.execute("SELECT id FROM replication_sources WHERE id = $1 FOR UPDATE",
                               source_id)
            head = await conn.fetchrow("SELECT idx, currhash FROM replica_entries "
                                       "WHERE source = $1 ORDER BY idx DESC LIMIT 1", source_id)
            _check_continues(None if head is None else (head[0], head[1]), first)
            await conn.copy_records_to_table(
                "replica_entries",
                columns=["source", "idx", "contents", "prevhash", "currhash", "summaryhash",
                         "hashstate", "publickey", "signature", "created", "replicated"],
                records=[(source_id, e.index, e.contents, e.prevhash or b"", e.currhash,
                          e.summaryhash, e.hashstate, e.publickey, e.signature, e.created,
                          replicated) for e in entries])

    async def replica_lookup(self, source_id: int, hash_raw: bytes) -> list[Entry]:
        rows = await self._fetch(
            f"SELECT {_ENTRY_COLS} FROM replica_entries WHERE source = $1 "  # noqa: S608
            f"AND currhash = $2 UNION SELECT {_ENTRY_COLS} FROM replica_entries "
            "WHERE source = $1 AND summaryhash = $2 ORDER BY idx", source_id, hash_raw)
        return [_replica_entry(r) for r in rows]

    async def replica_entry_at(self, source_id: int, index: int) -> Entry | None:
        rows = await self._fetch(f"SELECT {_ENTRY_COLS} FROM replica_entries "  # noqa: S608
                                 "WHERE source = $1 AND idx = $2", source_id, index)
        return _replica_entry(rows[0]) if rows else None

    async def replica_range(self, source_id: int, start: int, stop: int) -> list[Entry]:
        rows = await self._fetch(
            f"SELECT {_RANGE_COLS} FROM replica_entries WHERE source = $1 "  # noqa: S608
            "AND idx >= $2 AND idx < $3 ORDER BY idx", source_id, start, stop)
        return [_replica_entry(r) for r in rows]

    async def record_replica_fault(self, source_id: int, fault: ReplicaFault) -> int:
        async with self._txn() as conn:
            fid: int = await conn.fetchval(
                "INSERT INTO replication_faults (source, recorded, status, kind, message, "
                "details) VALUES ($1, $2, $3, $4, $5, $6) RETURNING id", source_id,
                fault.recorded, fault.status, fault.kind, fault.message,
                json.dumps(fault.details))
            if fault.documents:
                await conn.executemany(
                    "INSERT INTO replication_evidence (fault, role, method, url, status, "
                    "signature, signer, body, file, size, sha256) VALUES "
                    "($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
                    [(fid, d.role, d.method, d.url, d.status, d.signature, d.signer, d.body,
                      d.file, d.size, d.sha256) for d in fault.documents])
            await conn.execute(
                "UPDATE replication_sources SET status = $1, fault = $2, reason = $3, "
                "status_since = $4 WHERE id = $5", fault.status, fault.kind, fault.message,
                fault.recorded, source_id)
        return fid

    async def list_replica_faults(self, source_id: int) -> list[ReplicaFault]:
        faults = await self._fetch("SELECT id, status, kind, message, recorded, details "
                                   "FROM replication_faults WHERE source = $1 ORDER BY id",
                                   source_id)
        out = []
        for f in faults:
            docs = await self._fetch(
                "SELECT role, method, url, status, signature, signer, body, file, size, sha256 "
                "FROM replication_evidence WHERE fault = $1 ORDER BY id", f[0])
            out.append(ReplicaFault(
                status=f[1], kind=f[2], message=f[3], recorded=f[4], details=json.loads(f[5]),
                documents=tuple(_evidence(d) for d in docs), id=f[0]))
        return out

    async def add_xsign_target(self, target: XsignTarget) -> XsignTarget:
        iid = await self._iid(target.instance)
        async with self._txn(conflict=f"a cross-sign target named {target.name!r} "
                                      "already exists") as conn:
            await conn.execute(
                "INSERT INTO xsign_targets (instance, name, url, publickey, clientid, policy, "
                "created) VALUES ($1, $2, $3, $4, $5, $6, $7)", iid, target.name, target.url,
                target.publickey, target.clientid, target.policy, target.created)
        found = [t for t in await self.list_xsign_targets(target.instance)
                 if t.name == target.name]
        return found[0]

    async def list_xsign_targets(self, instance: str | None = None) -> list[XsignTarget]:
        if instance is None:
            rows = await self._fetch(f"{_XSIGN_SELECT} ORDER BY t.id")
        else:
            rows = await self._fetch(f"{_XSIGN_SELECT} WHERE t.instance = $1 ORDER BY t.id",
                                     await self._iid(instance))
        return [_xsign(r) for r in rows]

    async def remove_xsign_target(self, instance: str, name: str) -> bool:
        status = await self._execute("DELETE FROM xsign_targets WHERE instance = $1 "
                                     "AND name = $2", await self._iid(instance), name)
        return int(status.split()[-1]) > 0

    async def record_xsign_attempt(self, target_id: int, *, when: str, error: str | None,
                                   index: int | None = None) -> None:
        if error is None:
            await self._execute(
                "UPDATE xsign_targets SET last_attempt = $1, last_run = $1, last_index = $2, "
                "last_error = NULL, failures = 0 WHERE id = $3", when, index, target_id)
        else:
            await self._execute(
                "UPDATE xsign_targets SET last_attempt = $1, last_error = $2, "
                "failures = failures + 1 WHERE id = $3", when, error, target_id)

    async def add_xsign_receipt(self, receipt: XsignReceipt) -> int:
        r = receipt
        try:
            rid = await self.pool.fetchval(
                "INSERT INTO xsign_receipts (target, recorded, status, idx, currhash, "
                "summaryhash, message, signature, peer_currhash, peer_summaryhash, "
                "peer_created, response, response_signature, error) VALUES "
                "($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14) RETURNING id",
                r.target_id, r.recorded, r.status, r.index, r.currhash, r.summaryhash,
                r.message, r.signature, r.peer_currhash, r.peer_summaryhash, r.peer_created,
                r.response, r.response_signature, r.error)
        except (OSError, asyncpg.PostgresError) as exc:
            raise StorageError(f"write failed: {exc}") from exc
        return int(rid)

    async def list_xsign_receipts(self, target_id: int, limit: int = 20) -> list[XsignReceipt]:
        rows = await self._fetch(f"SELECT {_RECEIPT_COLS} FROM xsign_receipts "  # noqa: S608
                                 "WHERE target = $1 ORDER BY id DESC LIMIT $2",
                                 target_id, limit)
        return [_receipt(r) for r in rows]

    async def get_job_state(self, name: str) -> str | None:
        rows = await self._fetch("SELECT value FROM job_state WHERE name = $1", name)
        return str(rows[0][0]) if rows else None

    async def set_job_state(self, name: str, value: str) -> None:
        await self._execute("INSERT INTO job_state (name, value) VALUES ($1, $2) "
                            "ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                            name, value)

    def leader_lock(self, name: str = "jobs") -> LeaderLock:
        return AdvisoryLeaderLock(self._dsn, f"{self._schema or 'public'}/{name}")


# --- replication helpers ----------------------------------------------------------------------

_SOURCE_SELECT = (
    "SELECT s.id, s.uniqueid, s.name, s.url, s.publickey, i.name, s.status, s.fault, "
    "s.reason, s.status_since, s.created, s.last_sync, s.last_attempt, s.last_error, "
    "s.failures FROM replication_sources s JOIN instances i ON i.id = s.instance")
_XSIGN_SELECT = (
    "SELECT t.id, t.name, t.url, t.publickey, t.clientid, t.policy, i.name, t.created, "
    "t.last_index, t.last_run, t.last_attempt, t.last_error, t.failures "
    "FROM xsign_targets t JOIN instances i ON i.id = t.instance")
_RECEIPT_COLS = ("id, target, recorded, status, idx, currhash, summaryhash, message, signature, "
                 "peer_currhash, peer_summaryhash, peer_created, response, response_signature, "
                 "error")


def _evidence(d: Sequence[Any]) -> EvidenceDocument:
    return EvidenceDocument(role=d[0], method=d[1], url=d[2], status=d[3], signature=d[4],
                            signer=None if d[5] is None else bytes(d[5]),
                            body=None if d[6] is None else bytes(d[6]), file=d[7], size=d[8],
                            sha256=d[9])


async def _insert_peers(conn: asyncpg.Connection, source_id: int,
                        peers: Sequence[ReplicaPeer]) -> None:
    if peers:
        await conn.executemany(
            "INSERT INTO replication_peers (source, url, publickey, kind, cursor) "
            "VALUES ($1, $2, $3, $4, $5)",
            [(source_id, p.url, p.publickey, p.kind, p.cursor) for p in peers])


def _check_continues(head: tuple[int, bytes] | None, first: Entry) -> None:
    if head is None:
        ok = first.index == 0 and first.prevhash is None
        where = "an empty replica"
    else:
        ok = first.index == head[0] + 1 and first.prevhash == bytes(head[1])
        where = f"a replica ending at entry {head[0]}"
    if not ok:
        raise ReplicaConflict(f"entry {first.index} does not continue {where} "
                              "(another process is replicating this source?)")


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
        except (OSError, asyncpg.PostgresError) as exc:
            raise StorageError(f"cannot connect to PostgreSQL: {exc}") from exc
        try:
            held = bool(await conn.fetchval("SELECT pg_try_advisory_lock($1)", self.key))
        except BaseException:
            await conn.close()
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
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
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
