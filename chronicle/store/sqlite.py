"""SQLite driver (the embedded default): WAL, durable commits, versioned schema.

Connections, and why:
- one *writer* (plain sqlite3 on its own thread): ``BEGIN IMMEDIATE`` takes the database
  write lock, so the chain head read inside a transaction is the true head even when another
  process (a CLI command while ``serve`` runs) writes too; ``synchronous=FULL`` makes a
  commit durable before anyone is answered;
- a group commit (lock, head, duplicate and client checks, hashing, insert, commit) runs
  *on the event loop thread* when the write lock is free at once: measured, hopping to
  the writer thread costs more than the commit (GIL hand-offs each time SQLite returns),
  and the durable commit itself is a fraction of a millisecond. When another process holds
  the lock (a CLI command), the batch goes to the writer thread, which waits there.
  Automatic WAL checkpoints are off on that connection; a background thread checkpoints
  (PASSIVE, never blocking writers) so the loop never copies pages;
- one *bulk reader* (aiosqlite) for range scans (export, since) that must not stall the loop;
- one *point reader* (plain sqlite3, on the event-loop thread) for indexed single-row reads
  (head, lookup, client by id). In WAL mode readers never wait for the writer, and such a
  read costs microseconds, far less than a hop to another thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import functools
import json
import logging
import os
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import aiosqlite

from chronicle.core.blakechain import ChainHead, Entry
from chronicle.core.errors import (
    CommitOutcomeUnknown,
    RequestError,
    SchemaMismatchError,
    StorageError,
)
from chronicle.store.base import (
    SCHEMA_VERSION,
    BatchView,
    Client,
    EvidenceDocument,
    KeyRecord,
    LeaderLock,
    Mirror,
    Planner,
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

T = TypeVar("T")
log = logging.getLogger(__name__)

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
    2: """
CREATE TABLE replication_sources (
    id INTEGER PRIMARY KEY,
    instance INTEGER NOT NULL REFERENCES instances(id),
    uniqueid TEXT NOT NULL UNIQUE,
    name TEXT NOT NULL,
    url TEXT NOT NULL,
    publickey BLOB NOT NULL,
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
    id INTEGER PRIMARY KEY,
    source INTEGER NOT NULL REFERENCES replication_sources(id) ON DELETE CASCADE,
    url TEXT NOT NULL,
    publickey BLOB,
    kind TEXT NOT NULL,
    cursor TEXT,
    UNIQUE (source, url)
);
CREATE TABLE replication_keys (
    id INTEGER PRIMARY KEY,
    source INTEGER NOT NULL REFERENCES replication_sources(id) ON DELETE CASCADE,
    publickey BLOB NOT NULL,
    since TEXT NOT NULL,
    retired TEXT,
    reason TEXT
);
CREATE TABLE replica_entries (
    id INTEGER PRIMARY KEY,
    source INTEGER NOT NULL REFERENCES replication_sources(id) ON DELETE CASCADE,
    idx INTEGER NOT NULL,
    contents BLOB NOT NULL,
    prevhash BLOB NOT NULL,
    currhash BLOB NOT NULL,
    summaryhash BLOB NOT NULL,
    hashstate BLOB NOT NULL,
    publickey BLOB NOT NULL,
    signature BLOB NOT NULL,
    created TEXT NOT NULL,
    replicated TEXT NOT NULL,
    UNIQUE (source, idx)
);
CREATE UNIQUE INDEX replica_entries_currhash ON replica_entries(source, currhash);
CREATE INDEX replica_entries_summaryhash ON replica_entries(source, summaryhash);
CREATE TABLE replication_faults (
    id INTEGER PRIMARY KEY,
    source INTEGER NOT NULL REFERENCES replication_sources(id) ON DELETE CASCADE,
    recorded TEXT NOT NULL,
    status TEXT NOT NULL,
    kind TEXT NOT NULL,
    message TEXT NOT NULL,
    details TEXT NOT NULL
);
CREATE TABLE replication_evidence (
    id INTEGER PRIMARY KEY,
    fault INTEGER NOT NULL REFERENCES replication_faults(id) ON DELETE CASCADE,
    role TEXT NOT NULL,
    method TEXT NOT NULL,
    url TEXT NOT NULL,
    status INTEGER NOT NULL,
    signature TEXT,
    signer BLOB,
    body BLOB,
    file TEXT,
    size INTEGER NOT NULL,
    sha256 TEXT NOT NULL
);
CREATE TABLE xsign_targets (
    id INTEGER PRIMARY KEY,
    instance INTEGER NOT NULL REFERENCES instances(id),
    name TEXT NOT NULL,
    url TEXT NOT NULL,
    publickey BLOB NOT NULL,
    clientid TEXT NOT NULL,
    policy TEXT NOT NULL,
    created TEXT NOT NULL,
    last_index INTEGER,
    last_run TEXT,
    last_attempt TEXT,
    last_error TEXT,
    failures INTEGER NOT NULL DEFAULT 0,
    UNIQUE (instance, name)
);
CREATE TABLE xsign_receipts (
    id INTEGER PRIMARY KEY,
    target INTEGER NOT NULL REFERENCES xsign_targets(id) ON DELETE CASCADE,
    recorded TEXT NOT NULL,
    status TEXT NOT NULL,
    idx INTEGER NOT NULL,
    currhash BLOB NOT NULL,
    summaryhash BLOB NOT NULL,
    message BLOB NOT NULL,
    signature TEXT NOT NULL,
    peer_currhash TEXT,
    peer_summaryhash TEXT,
    peer_created TEXT,
    response BLOB,
    response_signature TEXT,
    error TEXT
);
CREATE TABLE job_state (name TEXT PRIMARY KEY, value TEXT NOT NULL);
""",
}

_ENTRY_COLS = ("idx, contents, prevhash, currhash, summaryhash, hashstate, publickey, "
               "signature, created")
_RANGE_COLS = _ENTRY_COLS.replace("hashstate", "x''")


def _head(conn: sqlite3.Connection, iid: int) -> ChainHead | None:
    row = conn.execute("SELECT idx, currhash, summaryhash, hashstate, created FROM entries "
                       "WHERE instance = ? ORDER BY idx DESC LIMIT 1", (iid,)).fetchone()
    if row is None:
        return None
    return ChainHead(row[0], bytes(row[1]), bytes(row[2]), bytes(row[3]), row[4])


def _in_chunks(conn: sqlite3.Connection, sql: str, iid: int,
               values: Sequence[Any]) -> list[Any]:
    """``sql`` has one ``{marks}`` placeholder for an IN list; stay under SQLite's limits."""
    rows: list[Any] = []
    uniq = list(dict.fromkeys(values))
    for start in range(0, len(uniq), 500):
        chunk = uniq[start:start + 500]
        rows += conn.execute(sql.format(marks=",".join("?" * len(chunk))),
                             (iid, *chunk)).fetchall()
    return rows


_FIND_SIGS = (f"SELECT {_ENTRY_COLS} FROM entries WHERE instance = ? "  # noqa: S608
              "AND signature IN ({marks})")
_FIND_CLIENTS = ("SELECT publicid, publickey, is_admin, comment, created, revoked "
                 "FROM clients WHERE instance = ? AND revoked IS NULL AND publicid IN ({marks})")
_INSERT = f"INSERT INTO entries (instance, {_ENTRY_COLS}) VALUES (?,?,?,?,?,?,?,?,?,?)"  # noqa: S608


def _insert(conn: sqlite3.Connection, iid: int, entries: Sequence[Entry]) -> None:
    conn.executemany(_INSERT, [(iid, e.index, e.contents, e.prevhash, e.currhash,
                                e.summaryhash, e.hashstate, e.publickey, e.signature,
                                e.created) for e in entries])


_CLIENT_COLS = "publicid, publickey, is_admin, comment, created, revoked"


class _SqliteWriteTx(WriteTx):
    """Each operation runs on the writer thread (inside the open transaction)."""

    def __init__(self, store: SqliteStore, instance_id: int) -> None:
        self._store = store
        self._iid = instance_id

    @property
    def _conn(self) -> sqlite3.Connection:
        assert self._store._writer is not None
        return self._store._writer

    async def head(self) -> ChainHead | None:
        head: ChainHead | None = await self._store._on_writer(_head, self._conn, self._iid)
        return head

    async def find_signatures(self, signatures: Sequence[bytes]) -> dict[bytes, Entry]:
        rows = await self._store._on_writer(_in_chunks, self._conn, _FIND_SIGS, self._iid,
                                            signatures)
        return {bytes(r[7]): _entry(r) for r in rows}

    async def active_clients(self, publicids: Sequence[str]) -> dict[str, Client]:
        rows = await self._store._on_writer(_in_chunks, self._conn, _FIND_CLIENTS, self._iid,
                                            publicids)
        return {r[0]: _client(r) for r in rows}

    async def insert_entries(self, entries: Sequence[Entry]) -> None:
        if entries:
            await self._store._on_writer(_insert, self._conn, self._iid, entries)

    async def add_client(self, client: Client) -> None:
        try:
            await self._store._on_writer(
                self._conn.execute,
                "INSERT INTO clients (instance, publicid, publickey, is_admin, comment, created) "
                "VALUES (?,?,?,?,?,?)",
                (self._iid, client.publicid, client.publickey, int(client.is_admin),
                 client.comment, client.created))
        except sqlite3.IntegrityError:
            raise RequestError(f"client id {client.publicid} is already in use",
                               status=409) from None

    async def revoke_client(self, publicid: str, when: str) -> None:
        await self._store._on_writer(
            self._conn.execute,
            "UPDATE clients SET revoked = ? WHERE instance = ? AND publicid = ? "
            "AND revoked IS NULL", (when, self._iid, publicid))


class SqliteStore(Store):
    """All chains of one data directory in one SQLite file."""

    CHECKPOINT_EVERY = 100  # commits between background WAL checkpoints

    def __init__(self, path: str | Path, *, busy_timeout_ms: int = 10_000) -> None:
        self.path = str(path)
        self._busy_ms = busy_timeout_ms
        self._writer: sqlite3.Connection | None = None
        self._wthread: ThreadPoolExecutor | None = None
        self._ckpt: ThreadPoolExecutor | None = None
        self._ckpt_conn: sqlite3.Connection | None = None
        self._ckpt_running = False
        self._commits = 0
        self._bulk: aiosqlite.Connection | None = None
        self._point: sqlite3.Connection | None = None
        self._write_lock = asyncio.Lock()
        self._instances: dict[str, int] = {}

    # --- lifecycle ---------------------------------------------------------------------

    async def _on_writer(self, fn: Any, *args: Any) -> Any:
        """Run ``fn(*args)`` on the writer's thread (the only thread using that connection)."""
        assert self._wthread is not None
        return await asyncio.get_running_loop().run_in_executor(self._wthread, fn, *args)

    def _open_writer(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        # Lock waits are done by _begin (never on the event loop), checkpoints elsewhere.
        conn.execute("PRAGMA busy_timeout=0")
        conn.execute("PRAGMA wal_autocheckpoint=0")
        conn.execute("PRAGMA foreign_keys=ON")
        return conn

    async def _connect(self) -> None:
        await self.close()
        try:
            self._wthread = ThreadPoolExecutor(1, thread_name_prefix="sqlite-writer")
            self._writer = await self._on_writer(self._open_writer)
            self._bulk = await aiosqlite.connect(self.path, isolation_level=None)
            await self._bulk.execute(f"PRAGMA busy_timeout={int(self._busy_ms)}")
            await self._bulk.execute("PRAGMA query_only=ON")
            self._point = sqlite3.connect(self.path, isolation_level=None,
                                          check_same_thread=False)
            self._point.execute(f"PRAGMA busy_timeout={int(self._busy_ms)}")
            self._point.execute("PRAGMA query_only=ON")
            self._ckpt = ThreadPoolExecutor(1, thread_name_prefix="sqlite-checkpoint")
            self._ckpt_conn = sqlite3.connect(self.path, isolation_level=None,
                                              check_same_thread=False)
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
        await self._on_writer(self._apply_migrations, 0)
        self._load_instances()

    async def migrate(self) -> int:
        await self._connect()
        version = self._version()
        if version > SCHEMA_VERSION:
            raise SchemaMismatchError(
                f"database schema version {version} is newer than this software "
                f"({SCHEMA_VERSION})")
        await self._on_writer(self._apply_migrations, version)
        self._load_instances()
        return SCHEMA_VERSION

    def _apply_migrations(self, current: int) -> None:
        conn = self._writer
        assert conn is not None
        for version in sorted(v for v in MIGRATIONS if v > current):
            self._begin()
            try:
                for statement in filter(str.strip, MIGRATIONS[version].split(";")):
                    conn.execute(statement)
                conn.execute("INSERT OR REPLACE INTO meta (key, value) "
                             "VALUES ('schema_version', ?)", (str(version),))
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise

    def _load_instances(self) -> None:
        assert self._point is not None
        self._instances = {name: iid for iid, name in
                           self._point.execute("SELECT id, name FROM instances")}

    async def close(self) -> None:
        if self._bulk is not None:
            await self._bulk.close()
        if self._ckpt is not None:
            self._ckpt.shutdown(wait=True)
        if self._ckpt_conn is not None:
            with contextlib.suppress(sqlite3.Error):
                self._ckpt_conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
            self._ckpt_conn.close()
        if self._writer is not None:
            await self._on_writer(self._writer.close)
        if self._wthread is not None:
            self._wthread.shutdown(wait=True)
        if self._point is not None:
            self._point.close()
        self._writer = self._bulk = self._point = self._wthread = None
        self._ckpt = self._ckpt_conn = None

    async def ensure_instance(self, name: str) -> None:
        if name in self._instances:
            return
        async with self._write_lock:
            await self._autocommit("INSERT OR IGNORE INTO instances (name) VALUES (?)", (name,))
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

    async def _autocommit(self, sql: str, params: Sequence[Any]) -> int:
        """One statement in its own transaction, on the writer thread."""

        def run() -> int:
            assert self._writer is not None
            self._begin()
            try:
                cur = self._writer.execute(sql, params)
            except BaseException:
                self._rollback()
                raise
            self._commit()
            return int(cur.rowcount)

        try:
            count: int = await self._on_writer(run)
        except sqlite3.Error as exc:
            raise StorageError(f"write failed: {exc}") from exc
        return count

    def _try_begin(self) -> bool:
        """``BEGIN IMMEDIATE`` without waiting: False if another connection holds the lock."""
        assert self._writer is not None
        try:
            self._writer.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            if "locked" in str(exc) or "busy" in str(exc):
                return False
            raise StorageError(f"cannot lock the database for writing: {exc}") from exc
        except sqlite3.Error as exc:
            raise StorageError(f"cannot lock the database for writing: {exc}") from exc
        return True

    def _begin(self) -> None:
        """Take the write lock, waiting up to the busy timeout (never call on the loop)."""
        deadline = time.monotonic() + self._busy_ms / 1000
        delay = 0.0005
        while not self._try_begin():
            if time.monotonic() >= deadline:
                raise StorageError("cannot lock the database for writing: database is locked "
                                   f"(held by another process for over {self._busy_ms} ms)")
            time.sleep(delay)
            delay = min(delay * 2, 0.02)

    def _commit(self) -> None:
        assert self._writer is not None
        try:
            self._writer.execute("COMMIT")
        except sqlite3.Error as exc:
            self._rollback()
            raise CommitOutcomeUnknown(f"commit failed: {exc}") from exc
        self._commits += 1

    def _maybe_checkpoint(self) -> None:
        """Checkpoint the WAL in the background now and then (PASSIVE: never blocks)."""
        if self._commits < self.CHECKPOINT_EVERY or self._ckpt_running or self._ckpt is None:
            return
        self._commits = 0
        self._ckpt_running = True
        conn = self._ckpt_conn

        def run() -> None:
            try:
                if conn is not None:
                    conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
            except sqlite3.Error:
                log.warning("WAL checkpoint failed", exc_info=True)
            finally:
                self._ckpt_running = False

        self._ckpt.submit(run)

    def _rollback(self) -> None:
        assert self._writer is not None
        # SQLite may already have ended the transaction itself; nothing left to undo then.
        with contextlib.suppress(sqlite3.Error):
            self._writer.execute("ROLLBACK")

    @asynccontextmanager
    async def write(self, instance: str) -> AsyncIterator[WriteTx]:
        iid = self._iid(instance)
        async with self._write_lock:
            await self._on_writer(self._begin)
            try:
                yield _SqliteWriteTx(self, iid)
            except BaseException:
                await self._on_writer(self._rollback)
                raise
            await self._on_writer(self._commit)

    def _append_batch_sync(self, iid: int, signatures: Sequence[bytes],
                           client_ids: Sequence[str], plan: Planner[T], *,
                           locked: bool = False) -> T:
        conn = self._writer
        assert conn is not None
        if not locked:
            self._begin()
        try:
            existing = {bytes(r[7]): _entry(r)
                        for r in _in_chunks(conn, _FIND_SIGS, iid, signatures)}
            clients = ({r[0]: _client(r) for r in _in_chunks(conn, _FIND_CLIENTS, iid,
                                                             client_ids)}
                       if client_ids else {})
            entries, result = plan(BatchView(_head(conn, iid), existing, clients))
            if entries:
                _insert(conn, iid, entries)
        except BaseException:
            self._rollback()
            raise
        self._commit()
        return result

    async def append_batch(self, instance: str, signatures: Sequence[bytes],
                           client_ids: Sequence[str], plan: Planner[T]) -> T:
        iid = self._iid(instance)
        async with self._write_lock:
            try:
                if self._try_begin():
                    # Fast path: the lock was free, the whole commit takes well under a
                    # millisecond plus one fsync; do it right here.
                    result: T = self._append_batch_sync(iid, signatures, client_ids, plan,
                                                        locked=True)
                else:
                    result = await self._on_writer(self._append_batch_sync, iid, signatures,
                                                   client_ids, plan)
            except sqlite3.Error as exc:
                raise StorageError(f"append failed: {exc}") from exc
            finally:
                self._maybe_checkpoint()
            return result

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
                f"SELECT {_RANGE_COLS} FROM entries WHERE instance = ? "  # noqa: S608
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
        async with self._write_lock:
            await self._autocommit(
                "INSERT INTO mirrors (instance, url, publickey, comment, sortpriority, created) "
                "VALUES (?,?,?,?,?,?) ON CONFLICT (instance, url) DO UPDATE SET "
                "publickey = excluded.publickey, comment = excluded.comment, "
                "sortpriority = excluded.sortpriority",
                (iid, mirror.url, mirror.publickey, mirror.comment, mirror.sortpriority, when))

    async def remove_mirror(self, instance: str, url: str) -> bool:
        iid = self._iid(instance)
        async with self._write_lock:
            return await self._autocommit(
                "DELETE FROM mirrors WHERE instance = ? AND url = ?", (iid, url)) > 0

    # --- replication, cross-signing (schema version 2) -----------------------------------

    async def _tx(self, fn: Callable[[sqlite3.Connection], T], *,
                  conflict: str | None = None) -> T:
        """Run ``fn(conn)`` in one write transaction on the writer thread."""

        def run() -> T:
            conn = self._writer
            assert conn is not None
            self._begin()
            try:
                result = fn(conn)
            except BaseException:
                self._rollback()
                raise
            self._commit()
            return result

        async with self._write_lock:
            try:
                result: T = await self._on_writer(run)
            except sqlite3.IntegrityError as exc:
                if conflict is not None:
                    raise RequestError(conflict, status=409) from exc
                raise StorageError(f"write failed: {exc}") from exc
            except sqlite3.Error as exc:
                raise StorageError(f"write failed: {exc}") from exc
        return result

    async def add_replica_source(self, source: ReplicaSource,
                                 peers: Sequence[ReplicaPeer] = ()) -> ReplicaSource:
        iid = self._iid(source.instance)

        def run(conn: sqlite3.Connection) -> int:
            cur = conn.execute(
                "INSERT INTO replication_sources (instance, uniqueid, name, url, publickey, "
                "status, created) VALUES (?,?,?,?,?,?,?)",
                (iid, source.uniqueid, source.name, source.url, source.publickey,
                 source.status, source.created))
            sid = int(cur.lastrowid or 0)
            conn.execute("INSERT INTO replication_keys (source, publickey, since, reason) "
                         "VALUES (?,?,?,?)", (sid, source.publickey, source.created, "added"))
            _insert_peers(conn, sid, peers)
            return sid

        sid = await self._tx(run, conflict=f"a replication source named {source.name!r} "
                                           "(or with that id) already exists")
        found = await self.get_replica_source(source.uniqueid)
        assert found is not None
        assert found.id == sid
        return found

    async def list_replica_sources(self, instance: str | None = None) -> list[ReplicaSource]:
        if instance is None:
            rows = self._q(f"{_SOURCE_SELECT} ORDER BY s.id", ())
        else:
            rows = self._q(f"{_SOURCE_SELECT} WHERE s.instance = ? ORDER BY s.id",
                           (self._iid(instance),))
        return [_source(r) for r in rows]

    async def get_replica_source(self, ref: str, instance: str | None = None
                                 ) -> ReplicaSource | None:
        sql = f"{_SOURCE_SELECT} WHERE (s.uniqueid = ? OR s.name = ?)"
        params: tuple[Any, ...] = (ref, ref)
        if instance is not None:
            sql += " AND s.instance = ?"
            params += (self._iid(instance),)
        rows = self._q(sql + " ORDER BY s.uniqueid = ? DESC, s.id LIMIT 1", (*params, ref))
        return _source(rows[0]) if rows else None

    async def remove_replica_source(self, source_id: int) -> bool:
        def run(conn: sqlite3.Connection) -> int:
            for table in ("replica_entries", "replication_peers", "replication_keys"):
                conn.execute(f"DELETE FROM {table} WHERE source = ?", (source_id,))  # noqa: S608
            conn.execute("DELETE FROM replication_evidence WHERE fault IN "
                         "(SELECT id FROM replication_faults WHERE source = ?)", (source_id,))
            conn.execute("DELETE FROM replication_faults WHERE source = ?", (source_id,))
            return int(conn.execute("DELETE FROM replication_sources WHERE id = ?",
                                    (source_id,)).rowcount)

        return await self._tx(run) > 0

    async def set_replica_url(self, source_id: int, url: str) -> None:
        async with self._write_lock:
            await self._autocommit("UPDATE replication_sources SET url = ? WHERE id = ?",
                                   (url, source_id))

    async def set_replica_status(self, source_id: int, status: str, *, fault: str | None,
                                 reason: str | None, when: str) -> None:
        async with self._write_lock:
            await self._autocommit(
                "UPDATE replication_sources SET status = ?, fault = ?, reason = ?, "
                "status_since = ? WHERE id = ?", (status, fault, reason, when, source_id))

    async def record_replica_attempt(self, source_id: int, *, when: str,
                                     error: str | None) -> None:
        if error is None:
            sql = ("UPDATE replication_sources SET last_attempt = ?, last_sync = ?, "
                   "last_error = NULL, failures = 0 WHERE id = ?")
            params: tuple[Any, ...] = (when, when, source_id)
        else:
            sql = ("UPDATE replication_sources SET last_attempt = ?, last_error = ?, "
                   "failures = failures + 1 WHERE id = ?")
            params = (when, error, source_id)
        async with self._write_lock:
            await self._autocommit(sql, params)

    async def set_replica_key(self, source_id: int, publickey: bytes, *, when: str,
                              reason: str | None) -> None:
        def run(conn: sqlite3.Connection) -> None:
            conn.execute("UPDATE replication_keys SET retired = ? WHERE source = ? "
                         "AND retired IS NULL", (when, source_id))
            conn.execute("INSERT INTO replication_keys (source, publickey, since, reason) "
                         "VALUES (?,?,?,?)", (source_id, publickey, when, reason))
            conn.execute("UPDATE replication_sources SET publickey = ? WHERE id = ?",
                         (publickey, source_id))

        await self._tx(run)

    async def replica_keys(self, source_id: int) -> list[KeyRecord]:
        rows = self._q("SELECT publickey, since, retired, reason FROM replication_keys "
                       "WHERE source = ? ORDER BY id", (source_id,))
        return [KeyRecord(bytes(r[0]), r[1], r[2], r[3]) for r in rows]

    async def set_replica_peers(self, source_id: int, peers: Sequence[ReplicaPeer]) -> None:
        def run(conn: sqlite3.Connection) -> None:
            conn.execute("DELETE FROM replication_peers WHERE source = ?", (source_id,))
            _insert_peers(conn, source_id, peers)

        await self._tx(run, conflict="the same peer URL is given twice")

    async def list_replica_peers(self, source_id: int) -> list[ReplicaPeer]:
        rows = self._q("SELECT url, publickey, kind, cursor, id FROM replication_peers "
                       "WHERE source = ? ORDER BY id", (source_id,))
        return [ReplicaPeer(r[0], None if r[1] is None else bytes(r[1]), r[2], r[3], r[4])
                for r in rows]

    async def set_peer_cursor(self, peer_id: int, cursor: str | None) -> None:
        async with self._write_lock:
            await self._autocommit("UPDATE replication_peers SET cursor = ? WHERE id = ?",
                                   (cursor, peer_id))

    async def replica_head(self, source_id: int) -> Entry | None:
        rows = self._q(f"SELECT {_ENTRY_COLS} FROM replica_entries WHERE source = ? "  # noqa: S608
                       "ORDER BY idx DESC LIMIT 1", (source_id,))
        return _replica_entry(rows[0]) if rows else None

    async def replica_append(self, source_id: int, entries: Sequence[Entry], *,
                             replicated: str) -> None:
        if not entries:
            return
        first = entries[0]

        def run(conn: sqlite3.Connection) -> None:
            row = conn.execute("SELECT idx, currhash FROM replica_entries WHERE source = ? "
                               "ORDER BY idx DESC LIMIT 1", (source_id,)).fetchone()
            _check_continues(row, first)
            _insert_replica_rows(conn, source_id, entries, replicated)

        await self._tx(run, conflict="the replica already holds one of these entries")

    async def replica_lookup(self, source_id: int, hash_raw: bytes) -> list[Entry]:
        rows = self._q(
            f"SELECT {_ENTRY_COLS} FROM replica_entries WHERE source = ? "  # noqa: S608
            f"AND currhash = ? UNION SELECT {_ENTRY_COLS} FROM replica_entries "
            "WHERE source = ? AND summaryhash = ? ORDER BY idx",
            (source_id, hash_raw, source_id, hash_raw))
        return [_replica_entry(r) for r in rows]

    async def replica_entry_at(self, source_id: int, index: int) -> Entry | None:
        rows = self._q(f"SELECT {_ENTRY_COLS} FROM replica_entries "  # noqa: S608
                       "WHERE source = ? AND idx = ?", (source_id, index))
        return _replica_entry(rows[0]) if rows else None

    async def replica_range(self, source_id: int, start: int, stop: int) -> list[Entry]:
        assert self._bulk is not None
        try:
            async with self._bulk.execute(
                    f"SELECT {_RANGE_COLS} FROM replica_entries WHERE source = ? "  # noqa: S608
                    "AND idx >= ? AND idx < ? ORDER BY idx", (source_id, start, stop)) as cur:
                return [_replica_entry(r) for r in await cur.fetchall()]
        except sqlite3.Error as exc:
            raise StorageError(f"read failed: {exc}") from exc

    async def record_replica_fault(self, source_id: int, fault: ReplicaFault) -> int:
        def run(conn: sqlite3.Connection) -> int:
            cur = conn.execute(
                "INSERT INTO replication_faults (source, recorded, status, kind, message, "
                "details) VALUES (?,?,?,?,?,?)",
                (source_id, fault.recorded, fault.status, fault.kind, fault.message,
                 json.dumps(fault.details)))
            fid = int(cur.lastrowid or 0)
            conn.executemany(
                "INSERT INTO replication_evidence (fault, role, method, url, status, "
                "signature, signer, body, file, size, sha256) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                [(fid, d.role, d.method, d.url, d.status, d.signature, d.signer, d.body,
                  d.file, d.size, d.sha256) for d in fault.documents])
            conn.execute("UPDATE replication_sources SET status = ?, fault = ?, reason = ?, "
                         "status_since = ? WHERE id = ?",
                         (fault.status, fault.kind, fault.message, fault.recorded, source_id))
            return fid

        return await self._tx(run)

    async def list_replica_faults(self, source_id: int) -> list[ReplicaFault]:
        faults = self._q("SELECT id, status, kind, message, recorded, details "
                         "FROM replication_faults WHERE source = ? ORDER BY id", (source_id,))
        out = []
        for f in faults:
            docs = self._q("SELECT role, method, url, status, signature, signer, body, file, "
                           "size, sha256 FROM replication_evidence WHERE fault = ? ORDER BY id",
                           (f[0],))
            out.append(ReplicaFault(
                status=f[1], kind=f[2], message=f[3], recorded=f[4], details=json.loads(f[5]),
                documents=tuple(_evidence(d) for d in docs), id=f[0]))
        return out

    async def add_xsign_target(self, target: XsignTarget) -> XsignTarget:
        iid = self._iid(target.instance)

        def run(conn: sqlite3.Connection) -> None:
            conn.execute("INSERT INTO xsign_targets (instance, name, url, publickey, clientid, "
                         "policy, created) VALUES (?,?,?,?,?,?,?)",
                         (iid, target.name, target.url, target.publickey, target.clientid,
                          target.policy, target.created))

        await self._tx(run, conflict=f"a cross-sign target named {target.name!r} "
                                     "already exists")
        found = [t for t in await self.list_xsign_targets(target.instance)
                 if t.name == target.name]
        return found[0]

    async def list_xsign_targets(self, instance: str | None = None) -> list[XsignTarget]:
        if instance is None:
            rows = self._q(f"{_XSIGN_SELECT} ORDER BY t.id", ())
        else:
            rows = self._q(f"{_XSIGN_SELECT} WHERE t.instance = ? ORDER BY t.id",
                           (self._iid(instance),))
        return [_xsign(r) for r in rows]

    async def remove_xsign_target(self, instance: str, name: str) -> bool:
        iid = self._iid(instance)

        def run(conn: sqlite3.Connection) -> int:
            conn.execute("DELETE FROM xsign_receipts WHERE target IN (SELECT id FROM "
                         "xsign_targets WHERE instance = ? AND name = ?)", (iid, name))
            return int(conn.execute("DELETE FROM xsign_targets WHERE instance = ? AND name = ?",
                                    (iid, name)).rowcount)

        return await self._tx(run) > 0

    async def record_xsign_attempt(self, target_id: int, *, when: str, error: str | None,
                                   index: int | None = None) -> None:
        if error is None:
            sql = ("UPDATE xsign_targets SET last_attempt = ?, last_run = ?, last_index = ?, "
                   "last_error = NULL, failures = 0 WHERE id = ?")
            params: tuple[Any, ...] = (when, when, index, target_id)
        else:
            sql = ("UPDATE xsign_targets SET last_attempt = ?, last_error = ?, "
                   "failures = failures + 1 WHERE id = ?")
            params = (when, error, target_id)
        async with self._write_lock:
            await self._autocommit(sql, params)

    async def add_xsign_receipt(self, receipt: XsignReceipt) -> int:
        r = receipt

        def run(conn: sqlite3.Connection) -> int:
            cur = conn.execute(
                "INSERT INTO xsign_receipts (target, recorded, status, idx, currhash, "
                "summaryhash, message, signature, peer_currhash, peer_summaryhash, "
                "peer_created, response, response_signature, error) "
                "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (r.target_id, r.recorded, r.status, r.index, r.currhash, r.summaryhash,
                 r.message, r.signature, r.peer_currhash, r.peer_summaryhash, r.peer_created,
                 r.response, r.response_signature, r.error))
            return int(cur.lastrowid or 0)

        return await self._tx(run)

    async def list_xsign_receipts(self, target_id: int, limit: int = 20) -> list[XsignReceipt]:
        rows = self._q(f"SELECT {_RECEIPT_COLS} FROM xsign_receipts WHERE target = ? "  # noqa: S608
                       "ORDER BY id DESC LIMIT ?", (target_id, limit))
        return [_receipt(r) for r in rows]

    async def get_job_state(self, name: str) -> str | None:
        rows = self._q("SELECT value FROM job_state WHERE name = ?", (name,))
        return str(rows[0][0]) if rows else None

    async def set_job_state(self, name: str, value: str) -> None:
        async with self._write_lock:
            await self._autocommit("INSERT INTO job_state (name, value) VALUES (?, ?) "
                                   "ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                                   (name, value))

    def leader_lock(self, name: str = "jobs") -> LeaderLock:
        return FileLeaderLock(Path(self.path).parent / f"leader-{name}.lock")


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
_REPLICA_INSERT = ("INSERT INTO replica_entries (source, idx, contents, prevhash, currhash, "
                   "summaryhash, hashstate, publickey, signature, created, replicated) "
                   "VALUES (?,?,?,?,?,?,?,?,?,?,?)")


_REPLICA_VALUES = ",(?,?,?,?,?,?,?,?,?,?,?)"


@functools.lru_cache(maxsize=8)
def _replica_insert_sql(rows: int) -> str:
    return _REPLICA_INSERT + _REPLICA_VALUES * (rows - 1)


def _insert_replica_rows(conn: sqlite3.Connection, source_id: int, entries: Sequence[Entry],
                         replicated: str) -> None:
    """Multi-row INSERTs of up to ~2,000 rows: one ``sqlite3_step`` per statement instead
    of one per row. The sqlite3 module releases the GIL around every step; re-acquiring it
    while another thread hashes the next rows costs up to a switch interval (5 ms) each
    time, which made row-by-row bulk copies six times slower."""
    limit = conn.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER) // 11
    step = max(1, min(2000, limit))
    for start in range(0, len(entries), step):
        chunk = entries[start:start + step]
        params: list[Any] = []
        for e in chunk:
            params += (source_id, e.index, e.contents, e.prevhash or b"", e.currhash,
                       e.summaryhash, e.hashstate, e.publickey, e.signature, e.created,
                       replicated)
        # Full chunks share one cached statement; the remainder gets its own.
        conn.execute(_replica_insert_sql(len(chunk)) if len(chunk) == step
                     else _REPLICA_INSERT + _REPLICA_VALUES * (len(chunk) - 1), params)


def _evidence(d: Sequence[Any]) -> EvidenceDocument:
    return EvidenceDocument(role=d[0], method=d[1], url=d[2], status=d[3], signature=d[4],
                            signer=None if d[5] is None else bytes(d[5]),
                            body=None if d[6] is None else bytes(d[6]), file=d[7], size=d[8],
                            sha256=d[9])


def _insert_peers(conn: sqlite3.Connection, source_id: int,
                  peers: Sequence[ReplicaPeer]) -> None:
    conn.executemany("INSERT INTO replication_peers (source, url, publickey, kind, cursor) "
                     "VALUES (?,?,?,?,?)",
                     [(source_id, p.url, p.publickey, p.kind, p.cursor) for p in peers])


def _check_continues(head: Sequence[Any] | None, first: Entry) -> None:
    """A replica batch must start right after the stored head (else another writer won)."""
    if head is None:
        ok = first.index == 0 and first.prevhash is None
        where = "an empty replica"
    else:
        ok = first.index == head[0] + 1 and first.prevhash == bytes(head[1])
        where = f"a replica ending at entry {head[0]}"
    if not ok:
        raise ReplicaConflict(f"entry {first.index} does not continue {where} "
                              "(another process is replicating this source?)")


class FileLeaderLock(LeaderLock):
    """``flock`` on a file: held until released or until the process dies."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    async def acquire(self) -> bool:
        if self._fd is not None:
            return True
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return False
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return True

    async def still_held(self) -> bool:
        return self._fd is not None

    async def release(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
