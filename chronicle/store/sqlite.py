"""SQLite driver (the embedded default): WAL, durable commits, one file per data directory.

Connections, and why:
- one *writer* (plain sqlite3): ``BEGIN IMMEDIATE`` takes the database write lock, so the
  chain head read inside a transaction is the true head even when another process (a CLI
  command while ``serve`` runs) writes too; ``synchronous=FULL`` makes a commit durable
  before anyone is answered. A transaction's statements run *on the event loop thread*
  when the write lock is free at once (each costs microseconds; a hop to a thread per
  statement cost more than the group commit), but its durable ``COMMIT`` (the WAL's
  fsync, 0.5–5 ms on a shared disk, a third of the loop's time at c=16) runs on the
  writer's own thread, so the loop serves requests meanwhile; :data:`SWITCH_INTERVAL`
  bounds how long that thread then waits for the GIL. When another process holds the
  lock, the wait happens on the writer's thread too; so do bulk inserts of thousands of
  rows (a replica copying an upstream).
  Automatic WAL checkpoints are off on that connection; a background thread checkpoints
  (PASSIVE, never blocking writers) so the loop never copies pages. A PASSIVE checkpoint
  never shrinks the WAL file, and one that needs the database file to grow fails while
  the disk is full: after a commit refused for a full disk, :meth:`make_room` checkpoints
  with TRUNCATE (the log's pages move into the database file and the log drops to zero
  bytes) so freed space is not eaten again by a log that could not be emptied. While the
  filesystem is low on space (``TIGHT``) the background checkpoint runs after every commit,
  so the log is reused from its start instead of growing by a hundred commits' pages into
  the last free bytes (which left nothing for the database file to grow into: measured on
  a 3 MB filesystem, 600 KB freed lasted 27 publishes; see docs/operations.md);
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
import logging
import os
import sqlite3
import sys
import time
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import aiosqlite

from chronicle.core.errors import (
    CommitOutcomeUnknown,
    SchemaMismatchError,
    StorageDenied,
    StorageError,
    StorageFull,
)
from chronicle.store.base import Store
from chronicle.store.schema import SQLITE_TYPES
from chronicle.store.sql import IN_LIST, Conflict, Database, Dialect, LeaderLock, Row, Session

T = TypeVar("T")
log = logging.getLogger(__name__)

DIALECT = Dialect("sqlite", SQLITE_TYPES,
                  "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?")

#: Up to this many rows a bulk insert runs inline (a publish batch); more go to the thread.
INLINE_ROWS = 1024

#: The interpreter's GIL switch interval while a SQLite database is open (at most): a
#: durable COMMIT ends on the writer's thread, which then waits for a busy event loop to
#: hand the GIL back, up to one interval (CPython's default, 5 ms, made every group
#: commit that much longer).
SWITCH_INTERVAL = 0.0005


#: SQLite's words for a database that refuses writes until someone acts.
_DENIED = ("readonly database", "unable to open database file", "disk is full",
           "database or disk is full", "disk i/o error", "permission denied")


#: Free bytes below which the database's filesystem still counts as full after a
#: checkpoint made room (a publish batch writes a few pages; this is room for dozens).
ROOM = 256 << 10
#: Below this many free bytes the WAL is checkpointed after every commit.
TIGHT = 64 << 20


def _is_full(exc: sqlite3.Error) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    return (code is not None and code & 0xFF == sqlite3.SQLITE_FULL) or \
        "disk is full" in str(exc).lower()


def _storage_error(exc: sqlite3.Error, what: str) -> StorageError:
    if isinstance(exc, sqlite3.IntegrityError):
        return Conflict(f"{what}: {exc}")
    if _is_full(exc):
        return StorageFull(f"{what}: {exc}")
    if any(words in str(exc).lower() for words in _DENIED):
        return StorageDenied(f"{what}: {exc}")
    return StorageError(f"{what}: {exc}")


@functools.lru_cache(maxsize=32)
def _multi_insert(table: str, columns: tuple[str, ...], rows: int) -> str:
    one = "(" + ",".join("?" * len(columns)) + ")"
    return f"INSERT INTO {table} ({', '.join(columns)}) VALUES " + ",".join([one] * rows)  # noqa: S608


def _insert_many(conn: sqlite3.Connection, table: str, columns: tuple[str, ...],
                 rows: Sequence[Sequence[Any]]) -> None:
    """Multi-row INSERTs of up to ~2,000 rows: one ``sqlite3_step`` per statement instead
    of one per row. The sqlite3 module releases the GIL around every step; re-acquiring it
    while another thread hashes the next rows costs up to a switch interval (5 ms) each
    time, which made row-by-row bulk copies six times slower."""
    step = max(1, min(2000, conn.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER) // len(columns)))
    for start in range(0, len(rows), step):
        chunk = rows[start:start + step]
        params = [value for row in chunk for value in row]
        conn.execute(_multi_insert(table, columns, len(chunk)), params)


def _fetch_in(conn: sqlite3.Connection, sql: str, fixed: Sequence[Any],
              values: Sequence[Any]) -> list[Row]:
    """``sql`` with its ``IN_LIST`` marker as ``IN (?, …)``, in chunks of 500 values (under
    SQLite's variable limit), the values deduplicated."""
    found: list[Row] = []
    uniq = list(dict.fromkeys(values))
    try:
        for start in range(0, len(uniq), 500):
            chunk = uniq[start:start + 500]
            marked = sql.replace(IN_LIST, "IN (" + ",".join("?" * len(chunk)) + ")")
            found += conn.execute(marked, (*fixed, *chunk)).fetchall()
    except sqlite3.Error as exc:
        raise _storage_error(exc, "read failed") from exc
    return found


class _SqliteSession(Session):
    """Statements on the writer connection, inline (the transaction holds the lock)."""

    def __init__(self, db: SqliteDatabase, conn: sqlite3.Connection) -> None:
        self._db = db
        self._conn = conn

    async def fetch(self, sql: str, *params: Any) -> list[Row]:
        try:
            return self._conn.execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            raise _storage_error(exc, "read failed") from exc

    async def execute(self, sql: str, *params: Any) -> int:
        try:
            return int(self._conn.execute(sql, params).rowcount)
        except sqlite3.Error as exc:
            raise _storage_error(exc, "write failed") from exc

    async def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        try:
            self._conn.executemany(sql, rows)
        except sqlite3.Error as exc:
            raise _storage_error(exc, "write failed") from exc

    async def fetch_in(self, sql: str, fixed: Sequence[Any], values: Sequence[Any],
                       array_type: str) -> list[Row]:
        return _fetch_in(self._conn, sql, fixed, values)

    async def bulk_insert(self, table: str, columns: Sequence[str],
                          rows: Sequence[Sequence[Any]]) -> None:
        cols = tuple(columns)
        try:
            if len(rows) <= INLINE_ROWS:
                self._conn.executemany(_multi_insert(table, cols, 1), rows)
            else:
                await self._db.on_writer(_insert_many, self._conn, table, cols, rows)
        except sqlite3.Error as exc:
            raise _storage_error(exc, "write failed") from exc

    async def script(self, sql: str) -> None:
        for statement in filter(str.strip, sql.split(";")):
            await self.execute(statement)


class SqliteDatabase(Database):
    """The connections to one SQLite file (see the module docstring)."""

    dialect = DIALECT
    CHECKPOINT_EVERY = 100  # commits between background WAL checkpoints

    def __init__(self, path: str | Path, *, busy_timeout_ms: int = 10_000) -> None:
        self.path = self.where = str(path)
        self._busy_ms = busy_timeout_ms
        self._writer: sqlite3.Connection | None = None
        self._wthread: ThreadPoolExecutor | None = None
        self._ckpt: ThreadPoolExecutor | None = None
        self._ckpt_conn: sqlite3.Connection | None = None
        self._ckpt_running = False
        self._commits = 0
        #: The last write was refused for a full disk (cleared by a commit or make_room).
        self.full = False
        #: Low on space: checkpoint after every commit (see the module docstring).
        self.tight = False
        self._bulk: aiosqlite.Connection | None = None
        self._point: sqlite3.Connection | None = None
        self._write_lock = asyncio.Lock()

    # --- connections --------------------------------------------------------------------

    async def on_writer(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(*args)`` on the writer's thread."""
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

    def _reader(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        conn.execute(f"PRAGMA busy_timeout={int(self._busy_ms)}")
        conn.execute("PRAGMA query_only=ON")
        return conn

    async def connect(self, *, create: bool = False) -> None:
        await self.close()
        if not create and not await asyncio.to_thread(os.path.exists, self.path):
            raise SchemaMismatchError(f"{self.path} does not exist")
        try:
            if sys.getswitchinterval() > SWITCH_INTERVAL:
                sys.setswitchinterval(SWITCH_INTERVAL)
            self._wthread = ThreadPoolExecutor(1, thread_name_prefix="sqlite-writer")
            self._writer = await self.on_writer(self._open_writer)
            self._bulk = await aiosqlite.connect(self.path, isolation_level=None)
            await self._bulk.execute(f"PRAGMA busy_timeout={int(self._busy_ms)}")
            await self._bulk.execute("PRAGMA query_only=ON")
            self._point = self._reader()
            self._ckpt = ThreadPoolExecutor(1, thread_name_prefix="sqlite-checkpoint")
            self._ckpt_conn = sqlite3.connect(self.path, isolation_level=None,
                                              check_same_thread=False)
            _owner_only(self.path)
            self.tight = await asyncio.to_thread(self.free_bytes) < TIGHT
        except sqlite3.Error as exc:
            await self.close()
            raise StorageError(f"cannot open SQLite database {self.path}: {exc}") from exc

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
            await self.on_writer(self._writer.close)
        if self._wthread is not None:
            self._wthread.shutdown(wait=True)
        if self._point is not None:
            self._point.close()
        self._writer = self._bulk = self._point = self._wthread = None
        self._ckpt = self._ckpt_conn = None

    # --- reads --------------------------------------------------------------------------

    async def read(self, sql: str, *params: Any) -> list[Row]:
        if self._point is None:
            raise StorageError("the SQLite store is not open")
        try:
            return self._point.execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            raise StorageError(f"read failed: {exc}") from exc

    async def read_in(self, sql: str, fixed: Sequence[Any], values: Sequence[Any],
                      array_type: str) -> list[Row]:
        if self._point is None:
            raise StorageError("the SQLite store is not open")
        return _fetch_in(self._point, sql, fixed, values)

    async def scan(self, sql: str, *params: Any) -> list[Row]:
        if self._bulk is None:
            raise StorageError("the SQLite store is not open")
        try:
            async with self._bulk.execute(sql, params) as cur:
                return list(await cur.fetchall())
        except sqlite3.Error as exc:
            raise StorageError(f"read failed: {exc}") from exc

    # --- writes -------------------------------------------------------------------------

    def _try_begin(self) -> bool:
        """``BEGIN IMMEDIATE`` without waiting: False if another connection holds the lock."""
        assert self._writer is not None
        try:
            self._writer.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            if "locked" in str(exc) or "busy" in str(exc):
                return False
            raise _storage_error(exc, "cannot lock the database for writing") from exc
        except sqlite3.Error as exc:
            raise _storage_error(exc, "cannot lock the database for writing") from exc
        return True

    def _begin(self) -> None:
        """Take the write lock, waiting up to the busy timeout (never call on the loop).

        SQLite has no lock queue, so this polls; at most every millisecond, since another
        process's group commit holds the lock for about that long (measured: doubling
        sleeps up to 20 ms made a waiter oversleep the moment it was freed, and two
        server processes slower than one)."""
        deadline = time.monotonic() + self._busy_ms / 1000
        delay = 0.0002
        while not self._try_begin():
            if time.monotonic() >= deadline:
                raise StorageError("cannot lock the database for writing: database is locked "
                                   f"(held by another process for over {self._busy_ms} ms)")
            time.sleep(delay)
            delay = min(delay * 2, 0.001)

    def _commit(self) -> None:
        assert self._writer is not None
        try:
            self._writer.execute("COMMIT")
        except sqlite3.Error as exc:
            self._rollback()
            if _is_full(exc):
                raise StorageFull(f"commit failed: {exc}") from exc
            if any(words in str(exc).lower() for words in _DENIED):
                # SQLite refused before anything was written (a full disk, a read-only
                # file): nothing is stored, and retrying will not help until it is fixed.
                raise StorageDenied(f"commit failed: {exc}") from exc
            raise CommitOutcomeUnknown(f"commit failed: {exc}") from exc
        self._commits += 1

    async def _commit_on_writer(self) -> None:
        """The durable ``COMMIT`` (the WAL's fsync) on the writer's thread, so the event
        loop serves requests while the disk works; the write lock is held until it ends,
        even if the waiting task is cancelled (the connection is not used meanwhile)."""
        assert self._wthread is not None
        done = asyncio.get_running_loop().run_in_executor(self._wthread, self._commit)
        try:
            await asyncio.shield(done)
        except asyncio.CancelledError:
            await asyncio.wait({done})
            raise

    def _rollback(self) -> None:
        assert self._writer is not None
        # SQLite may already have ended the transaction itself; nothing left to undo then.
        with contextlib.suppress(sqlite3.Error):
            self._writer.execute("ROLLBACK")

    def _maybe_checkpoint(self) -> None:
        """Checkpoint the WAL in the background now and then (PASSIVE: never blocks)."""
        every = 1 if self.tight else self.CHECKPOINT_EVERY
        if self._commits < every or self._ckpt_running or self._ckpt is None:
            return
        self._commits = 0
        self._ckpt_running = True
        conn = self._ckpt_conn

        def run() -> None:
            try:
                if conn is not None:
                    conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
            except sqlite3.Error as exc:
                log.warning("WAL checkpoint of %s failed: %s", self.path, exc)
            try:
                self.tight = self.free_bytes() < TIGHT
            except OSError:
                self.tight = True
            finally:
                self._ckpt_running = False

        self._ckpt.submit(run)

    @asynccontextmanager
    async def transaction(self, *, lock_chain: int | None = None) -> AsyncIterator[Session]:
        # SQLite has one write lock for the whole file: it is every chain's head lock too.
        if self._writer is None:
            raise StorageError("the SQLite store is not open")
        conn = self._writer
        async with self._write_lock:
            if not self._try_begin():
                await self.on_writer(self._begin)
            try:
                yield _SqliteSession(self, conn)
            except BaseException as exc:
                self._rollback()
                if isinstance(exc, StorageFull):
                    self.full = self.tight = True
                raise
            try:
                await self._commit_on_writer()
            except StorageFull:
                self.full = self.tight = True
                raise
            else:
                self.full = False
            finally:
                self._maybe_checkpoint()

    def free_bytes(self) -> int:
        """Bytes an unprivileged writer may still use on the database's filesystem."""
        st = os.statvfs(os.path.dirname(os.path.abspath(self.path)))
        return st.f_bavail * st.f_frsize

    async def make_room(self) -> bool | None:
        """After a write refused for a full disk: checkpoint with TRUNCATE, so the WAL's
        pages move into the database file and the WAL file drops to zero bytes. True when
        that worked and the filesystem has room again (``ROOM``): a write may now fit
        (also when no write was refused since the last one that succeeded)."""
        if self._writer is None:
            return None
        if not self.full:
            return True
        async with self._write_lock:
            if not await self.on_writer(self._truncate_wal):
                return False
        room = await asyncio.to_thread(self.free_bytes)
        if room < ROOM:
            return False
        self.full = False
        return True

    def _truncate_wal(self) -> bool:
        """``wal_checkpoint(TRUNCATE)`` on the writer's thread, retried for up to a second
        while a reader (or the background checkpoint) keeps it from finishing."""
        assert self._writer is not None
        deadline = time.monotonic() + 1.0
        while True:
            try:
                busy = self._writer.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
            except sqlite3.Error as exc:
                log.warning("cannot checkpoint the WAL of %s to make room: %s", self.path, exc)
                return False
            if not busy:
                log.warning("the disk of %s was full: WAL checkpointed and truncated",
                            self.path)
                return True
            if time.monotonic() >= deadline:
                log.warning("cannot checkpoint the WAL of %s to make room: readers kept it "
                            "busy for a second", self.path)
                return False
            time.sleep(0.01)

    def schema_lock(self) -> str | None:
        return None  # BEGIN IMMEDIATE already serialises migrating processes

    def leader_lock(self, name: str) -> LeaderLock:
        return FileLeaderLock(Path(self.path).parent / f"leader-{name}.lock")


def _owner_only(path: str) -> None:
    """The database and its WAL/SHM files are readable by their owner alone (SQLite makes
    the WAL and SHM files with the database file's mode)."""
    for name in (path, path + "-wal", path + "-shm"):
        with contextlib.suppress(OSError):
            if os.stat(name).st_uid == os.getuid() and os.stat(name).st_mode & 0o077:
                os.chmod(name, 0o600)


class SqliteStore(Store):
    """All chains of one data directory in one SQLite file."""

    def __init__(self, path: str | Path, *, busy_timeout_ms: int = 10_000) -> None:
        db = SqliteDatabase(path, busy_timeout_ms=busy_timeout_ms)
        self.path = db.path
        super().__init__(db, db.where)


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
