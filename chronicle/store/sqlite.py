"""SQLite driver (the embedded default): WAL, durable commits, versioned schema.

Connections, and why:
- one *writer* (aiosqlite, its own thread): ``BEGIN IMMEDIATE`` takes the database write
  lock, so the chain head read inside a transaction is the true head even when another
  process (a CLI command while ``serve`` runs) writes too; ``synchronous=FULL`` makes a
  commit durable before anyone is answered;
- one *bulk reader* (aiosqlite) for range scans (export, since) that must not stall the loop;
- one *point reader* (plain sqlite3, on the event-loop thread) for indexed single-row reads
  (head, lookup, client by id). In WAL mode readers never wait for the writer, and such a
  read costs microseconds, far less than a hop to another thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiosqlite

from chronicle.core.blakechain import ChainHead, Entry
from chronicle.core.errors import RequestError, SchemaMismatchError, StorageError
from chronicle.store.base import SCHEMA_VERSION, Client, Mirror, Store, WriteTx

MIGRATIONS: dict[int, str] = {
    1: """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE instances (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE);
CREATE TABLE entries (
    id INTEGER PRIMARY KEY,
    instance INTEGER NOT NULL REFERENCES instances(id),
    idx INTEGER NOT NULL,
    contents BLOB NOT NULL,
    prevhash BLOB,
    currhash BLOB NOT NULL,
    summaryhash BLOB NOT NULL,
    hashstate BLOB NOT NULL,
    publickey BLOB NOT NULL,
    signature BLOB NOT NULL,
    created TEXT NOT NULL,
    UNIQUE (instance, idx)
);
CREATE UNIQUE INDEX entries_currhash ON entries(instance, currhash);
CREATE UNIQUE INDEX entries_summaryhash ON entries(instance, summaryhash);
CREATE UNIQUE INDEX entries_signature ON entries(instance, signature);
CREATE TABLE clients (
    id INTEGER PRIMARY KEY,
    instance INTEGER NOT NULL REFERENCES instances(id),
    publicid TEXT NOT NULL,
    publickey BLOB NOT NULL,
    is_admin INTEGER NOT NULL DEFAULT 0,
    comment TEXT,
    created TEXT NOT NULL,
    revoked TEXT
);
CREATE UNIQUE INDEX clients_active ON clients(instance, publicid) WHERE revoked IS NULL;
CREATE TABLE mirrors (
    id INTEGER PRIMARY KEY,
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


def _entry(row: Sequence[Any]) -> Entry:
    return Entry(index=row[0], contents=bytes(row[1]),
                 prevhash=bytes(row[2]) if row[2] is not None else None,
                 currhash=bytes(row[3]), summaryhash=bytes(row[4]), hashstate=bytes(row[5]),
                 publickey=bytes(row[6]), signature=bytes(row[7]), created=row[8])


def _client(row: Sequence[Any]) -> Client:
    return Client(publicid=row[0], publickey=bytes(row[1]), is_admin=bool(row[2]),
                  comment=row[3], created=row[4], revoked=row[5])


_CLIENT_COLS = "publicid, publickey, is_admin, comment, created, revoked"


class _SqliteWriteTx(WriteTx):
    def __init__(self, conn: aiosqlite.Connection, instance_id: int) -> None:
        self._conn = conn
        self._iid = instance_id

    async def head(self) -> ChainHead | None:
        async with self._conn.execute(
            "SELECT idx, currhash, summaryhash, hashstate, created FROM entries "
            "WHERE instance = ? ORDER BY idx DESC LIMIT 1", (self._iid,)) as cur:
            row = await cur.fetchone()
        if row is None:
            return None
        return ChainHead(row[0], bytes(row[1]), bytes(row[2]), bytes(row[3]), row[4])

    async def find_signatures(self, signatures: Sequence[bytes]) -> dict[bytes, Entry]:
        found: dict[bytes, Entry] = {}
        uniq = list(dict.fromkeys(signatures))
        for start in range(0, len(uniq), 500):
            chunk = uniq[start:start + 500]
            marks = ",".join("?" * len(chunk))
            async with self._conn.execute(
                f"SELECT {_ENTRY_COLS} FROM entries WHERE instance = ? "  # noqa: S608
                f"AND signature IN ({marks})", (self._iid, *chunk)) as cur:
                for row in await cur.fetchall():
                    entry = _entry(row)
                    found[entry.signature] = entry
        return found

    async def active_clients(self, publicids: Sequence[str]) -> dict[str, Client]:
        out: dict[str, Client] = {}
        uniq = list(dict.fromkeys(publicids))
        for start in range(0, len(uniq), 500):
            chunk = uniq[start:start + 500]
            marks = ",".join("?" * len(chunk))
            async with self._conn.execute(
                f"SELECT {_CLIENT_COLS} FROM clients WHERE instance = ? "  # noqa: S608
                f"AND revoked IS NULL AND publicid IN ({marks})", (self._iid, *chunk)) as cur:
                for row in await cur.fetchall():
                    out[row[0]] = _client(row)
        return out

    async def insert_entries(self, entries: Sequence[Entry]) -> None:
        if not entries:
            return
        await self._conn.executemany(
            f"INSERT INTO entries (instance, {_ENTRY_COLS}) VALUES (?,?,?,?,?,?,?,?,?,?)",  # noqa: S608
            [(self._iid, e.index, e.contents, e.prevhash, e.currhash, e.summaryhash,
              e.hashstate, e.publickey, e.signature, e.created) for e in entries])

    async def add_client(self, client: Client) -> None:
        try:
            await self._conn.execute(
                "INSERT INTO clients (instance, publicid, publickey, is_admin, comment, created) "
                "VALUES (?,?,?,?,?,?)",
                (self._iid, client.publicid, client.publickey, int(client.is_admin),
                 client.comment, client.created))
        except sqlite3.IntegrityError:
            raise RequestError(f"client id {client.publicid} is already in use",
                               status=409) from None

    async def revoke_client(self, publicid: str, when: str) -> None:
        await self._conn.execute(
            "UPDATE clients SET revoked = ? WHERE instance = ? AND publicid = ? "
            "AND revoked IS NULL", (when, self._iid, publicid))


class SqliteStore(Store):
    """All chains of one data directory in one SQLite file."""

    def __init__(self, path: str | Path, *, busy_timeout_ms: int = 10_000) -> None:
        self.path = str(path)
        self._busy_ms = busy_timeout_ms
        self._writer: aiosqlite.Connection | None = None
        self._bulk: aiosqlite.Connection | None = None
        self._point: sqlite3.Connection | None = None
        self._write_lock = asyncio.Lock()
        self._instances: dict[str, int] = {}

    # --- lifecycle ---------------------------------------------------------------------

    async def _connect(self) -> None:
        await self.close()
        try:
            self._writer = await aiosqlite.connect(self.path, isolation_level=None)
            await self._writer.execute("PRAGMA journal_mode=WAL")
            await self._writer.execute("PRAGMA synchronous=FULL")
            await self._writer.execute(f"PRAGMA busy_timeout={int(self._busy_ms)}")
            await self._writer.execute("PRAGMA foreign_keys=ON")
            self._bulk = await aiosqlite.connect(self.path, isolation_level=None)
            await self._bulk.execute(f"PRAGMA busy_timeout={int(self._busy_ms)}")
            await self._bulk.execute("PRAGMA query_only=ON")
            self._point = sqlite3.connect(self.path, isolation_level=None,
                                          check_same_thread=False)
            self._point.execute(f"PRAGMA busy_timeout={int(self._busy_ms)}")
            self._point.execute("PRAGMA query_only=ON")
        except sqlite3.Error as exc:
            await self.close()
            raise StorageError(f"cannot open SQLite database {self.path}: {exc}") from exc

    def _version(self) -> int:
        assert self._point is not None
        has_meta = self._point.execute(
            "SELECT 1 FROM sqlite_master WHERE type='table' AND name='meta'").fetchone()
        if not has_meta:
            return 0
        row = self._point.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        return int(row[0]) if row else 0

    async def open(self) -> None:
        await self._connect()
        version = self._version()
        if version != SCHEMA_VERSION:
            await self.close()
            if version == 0:
                raise SchemaMismatchError(
                    f"{self.path} holds no chronicle database (run `chronicle init`)")
            raise SchemaMismatchError(
                f"database schema version {version}, this chronicle needs {SCHEMA_VERSION}"
                + (" (run `chronicle migrate`)" if version < SCHEMA_VERSION else
                   " (the database is newer than this software)"))
        self._load_instances()

    async def create_schema(self) -> None:
        await self._connect()
        if self._version() != 0:
            raise StorageError(f"{self.path} already holds a chronicle database")
        await self._apply_migrations(0)
        self._load_instances()

    async def migrate(self) -> int:
        await self._connect()
        version = self._version()
        if version > SCHEMA_VERSION:
            raise SchemaMismatchError(
                f"database schema version {version} is newer than this software "
                f"({SCHEMA_VERSION})")
        await self._apply_migrations(version)
        self._load_instances()
        return SCHEMA_VERSION

    async def _apply_migrations(self, current: int) -> None:
        assert self._writer is not None
        for version in sorted(v for v in MIGRATIONS if v > current):
            script = MIGRATIONS[version]
            await self._writer.execute("BEGIN IMMEDIATE")
            try:
                for statement in filter(str.strip, script.split(";")):
                    await self._writer.execute(statement)
                await self._writer.execute(
                    "INSERT OR REPLACE INTO meta (key, value) VALUES ('schema_version', ?)",
                    (str(version),))
                await self._writer.execute("COMMIT")
            except BaseException:
                await self._writer.execute("ROLLBACK")
                raise

    def _load_instances(self) -> None:
        assert self._point is not None
        self._instances = {name: iid for iid, name in
                           self._point.execute("SELECT id, name FROM instances")}

    async def close(self) -> None:
        for conn in (self._writer, self._bulk):
            if conn is not None:
                await conn.close()
        if self._point is not None:
            self._point.close()
        self._writer = self._bulk = None
        self._point = None

    async def ensure_instance(self, name: str) -> None:
        if name in self._instances:
            return
        assert self._writer is not None
        async with self._write_lock:
            await self._writer.execute(
                "INSERT OR IGNORE INTO instances (name) VALUES (?)", (name,))
        self._load_instances()

    def _iid(self, instance: str) -> int:
        try:
            return self._instances[instance]
        except KeyError:
            self._load_instances()
            if instance not in self._instances:
                raise StorageError(
                    f"instance {instance!r} does not exist in the database") from None
            return self._instances[instance]

    # --- writes ------------------------------------------------------------------------

    @asynccontextmanager
    async def write(self, instance: str) -> AsyncIterator[WriteTx]:
        iid = self._iid(instance)
        assert self._writer is not None
        async with self._write_lock:
            try:
                await self._writer.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                raise StorageError(f"cannot lock the database for writing: {exc}") from exc
            try:
                yield _SqliteWriteTx(self._writer, iid)
            except BaseException:
                await self._rollback()
                raise
            try:
                await self._writer.execute("COMMIT")
            except sqlite3.Error as exc:
                await self._rollback()
                raise StorageError(f"commit failed: {exc}") from exc

    async def _rollback(self) -> None:
        assert self._writer is not None
        # SQLite may already have ended the transaction itself; nothing left to undo then.
        with contextlib.suppress(sqlite3.Error):
            await self._writer.execute("ROLLBACK")

    # --- reads -------------------------------------------------------------------------

    def _q(self, sql: str, params: Sequence[Any]) -> list[Any]:
        assert self._point is not None
        try:
            return self._point.execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            raise StorageError(f"read failed: {exc}") from exc

    async def head(self, instance: str) -> Entry | None:
        rows = self._q(f"SELECT {_ENTRY_COLS} FROM entries WHERE instance = ? "  # noqa: S608
                       "ORDER BY idx DESC LIMIT 1", (self._iid(instance),))
        return _entry(rows[0]) if rows else None

    async def lookup(self, instance: str, hash_raw: bytes) -> list[Entry]:
        iid = self._iid(instance)
        rows = self._q(
            f"SELECT {_ENTRY_COLS} FROM entries WHERE instance = ? AND currhash = ? "  # noqa: S608
            f"UNION SELECT {_ENTRY_COLS} FROM entries WHERE instance = ? AND summaryhash = ? "
            "ORDER BY idx", (iid, hash_raw, iid, hash_raw))
        return [_entry(r) for r in rows]

    async def entry_at(self, instance: str, index: int) -> Entry | None:
        rows = self._q(f"SELECT {_ENTRY_COLS} FROM entries WHERE instance = ? AND idx = ?",  # noqa: S608
                       (self._iid(instance), index))
        return _entry(rows[0]) if rows else None

    async def range(self, instance: str, start: int, stop: int) -> list[Entry]:
        assert self._bulk is not None
        try:
            async with self._bulk.execute(
                f"SELECT {_ENTRY_COLS} FROM entries WHERE instance = ? "  # noqa: S608
                "AND idx >= ? AND idx < ? ORDER BY idx", (self._iid(instance), start, stop)) as cur:
                return [_entry(r) for r in await cur.fetchall()]
        except sqlite3.Error as exc:
            raise StorageError(f"read failed: {exc}") from exc

    async def get_client(self, instance: str, publicid: str) -> Client | None:
        rows = self._q(f"SELECT {_CLIENT_COLS} FROM clients WHERE instance = ? "  # noqa: S608
                       "AND publicid = ? AND revoked IS NULL", (self._iid(instance), publicid))
        return _client(rows[0]) if rows else None

    async def list_clients(self, instance: str, *, include_revoked: bool = False) -> list[Client]:
        sql = f"SELECT {_CLIENT_COLS} FROM clients WHERE instance = ?"  # noqa: S608
        if not include_revoked:
            sql += " AND revoked IS NULL"
        return [_client(r) for r in self._q(sql + " ORDER BY id", (self._iid(instance),))]

    async def list_mirrors(self, instance: str) -> list[Mirror]:
        rows = self._q("SELECT url, publickey, comment, sortpriority FROM mirrors "
                       "WHERE instance = ? ORDER BY sortpriority ASC, id ASC",
                       (self._iid(instance),))
        return [Mirror(url=r[0], publickey=r[1], comment=r[2], sortpriority=r[3]) for r in rows]

    async def add_mirror(self, instance: str, mirror: Mirror, when: str) -> None:
        iid = self._iid(instance)
        assert self._writer is not None
        async with self._write_lock:
            await self._writer.execute(
                "INSERT INTO mirrors (instance, url, publickey, comment, sortpriority, created) "
                "VALUES (?,?,?,?,?,?) ON CONFLICT (instance, url) DO UPDATE SET "
                "publickey = excluded.publickey, comment = excluded.comment, "
                "sortpriority = excluded.sortpriority",
                (iid, mirror.url, mirror.publickey, mirror.comment, mirror.sortpriority, when))

    async def remove_mirror(self, instance: str, url: str) -> bool:
        iid = self._iid(instance)
        assert self._writer is not None
        async with self._write_lock:
            cur = await self._writer.execute(
                "DELETE FROM mirrors WHERE instance = ? AND url = ?", (iid, url))
            return cur.rowcount > 0
