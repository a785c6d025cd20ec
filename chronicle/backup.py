"""``chronicle backup``: a consistent, verified snapshot of a ledger, taken while it serves.

For SQLite the snapshot uses SQLite's online backup API from a read transaction: in WAL
mode it sees one committed state and never blocks the writer. The result is a complete data
directory (settings, signing key with mode 0600, database) that ``chronicle serve`` can run
as is, so restoring is copying it back. The copy is checked before it is reported: SQLite's
integrity check, then every chain's tail re-hashed from its stored state.

PostgreSQL deployments use the database's own tools (``pg_dump``, or base backups with WAL
archiving); see docs/operations.md.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from chronicle.config import DEFAULT_DB, KEY_FILE, DataDir, write_secret_file
from chronicle.core.blakechain import ChainBuilder, ChainHead
from chronicle.core.encoding import b64u_encode
from chronicle.core.errors import IntegrityError, RequestError, StorageError
from chronicle.store import open_store


@dataclass
class BackupReport:
    path: Path
    bytes: int
    chains: dict[str, dict[str, Any]]

    def as_dict(self) -> dict[str, Any]:
        return {"backup": str(self.path), "bytes": self.bytes, "chains": self.chains}


def snapshot_sqlite(source: Path, target: Path) -> None:
    """Online backup of ``source`` into a new file ``target`` (one consistent state)."""
    src = sqlite3.connect(source.resolve().as_uri() + "?mode=ro", uri=True)
    try:
        dst = sqlite3.connect(target)
        try:
            src.backup(dst)  # all pages in one step, under one read transaction
            dst.execute("PRAGMA journal_mode=WAL")
        finally:
            dst.close()
    finally:
        src.close()


def _integrity_check(path: Path) -> str:
    with sqlite3.connect(path) as conn:
        return str(conn.execute("PRAGMA integrity_check").fetchone()[0])


async def verify_snapshot(dd: DataDir) -> dict[str, dict[str, Any]]:
    """Integrity-check the copy and re-derive each chain's last entry from its predecessor."""
    settings = dd.settings()
    path = dd.sqlite_file(settings.database)
    assert path is not None  # _write_copy made it a SQLite database
    result = await asyncio.to_thread(_integrity_check, path)
    if result != "ok":
        raise IntegrityError(f"backup failed SQLite's integrity check: {result}")
    store = open_store(settings.database, dd.path)
    await store.open()
    chains: dict[str, dict[str, Any]] = {}
    try:
        for name in settings.instances:
            head = await store.chain(name).head()
            if head is None:
                chains[name] = {"entries": 0, "summaryhash": None}
                continue
            if head.index > 0:
                prev = await store.chain(name).entry_at(head.index - 1)
                if prev is None:
                    raise IntegrityError("backup is missing an entry", index=head.index - 1)
                again = ChainBuilder(ChainHead.of(prev)).append(
                    head.contents, head.publickey, head.signature, head.created)
                if (again.currhash, again.summaryhash, again.hashstate) != \
                        (head.currhash, head.summaryhash, head.hashstate):
                    raise IntegrityError("backup's last entry does not follow from the one "
                                         "before it", index=head.index)
            chains[name] = {"entries": head.index + 1,
                            "summaryhash": b64u_encode(head.summaryhash)}
    finally:
        await store.close()
    return chains


def _write_copy(dd: DataDir, out: Path) -> DataDir:
    """Snapshot the database and copy settings and key into ``out`` (blocking file work)."""
    settings = dd.settings()
    source = dd.sqlite_file(settings.database)
    if source is None:
        raise RequestError("chronicle backup snapshots SQLite ledgers; back up PostgreSQL "
                           "with pg_dump or base backups (docs/operations.md)")
    if out.exists() and out.stat().st_uid != os.getuid():
        raise RequestError(f"{out} belongs to another user: a backup goes into a directory "
                           "of our own")
    if out.exists() and any(out.iterdir()):
        raise RequestError(f"{out} exists and is not empty")
    if not source.is_file():
        raise StorageError(f"{source}: no such database")
    copy = DataDir(out)
    database = copy.sqlite_file(DEFAULT_DB)
    assert database is not None  # DEFAULT_DB is a sqlite: URL
    out.mkdir(parents=True, exist_ok=True)
    os.chmod(out, 0o700)
    snapshot_sqlite(source, database)
    write_secret_file(copy.default_key_path, dd.key_path(settings).read_text().strip())
    raw = dd.read_raw()
    raw["database"] = DEFAULT_DB
    raw["signing-key-file"] = KEY_FILE
    copy.write_raw(raw)
    return copy


def _size(out: Path) -> int:
    return sum(f.stat().st_size for f in out.iterdir() if f.is_file())


async def run_backup(dd: DataDir, out: Path) -> BackupReport:
    fresh = not await asyncio.to_thread(out.exists)
    try:
        copy = await asyncio.to_thread(_write_copy, dd, out)
        chains = await verify_snapshot(copy)
    except BaseException:
        if fresh:
            await asyncio.to_thread(shutil.rmtree, out, True)
        raise
    return BackupReport(out, await asyncio.to_thread(_size, out), chains)
