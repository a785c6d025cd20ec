"""A witness's own database (``chronicle witness``): the logs it witnesses, their keys, the
latest checkpoint it cosigned for each, and refused requests kept as evidence.

The one rule that matters (c2sp.org/tlog-witness, "add-checkpoint"): checking a request
against the remembered (size, root) and remembering the new one are **one atomic step**.
:meth:`WitnessStore.witnessing` is that step: a transaction that locks the log's row
(PostgreSQL ``FOR UPDATE``; SQLite's ``BEGIN IMMEDIATE`` holds the whole file) before it
reads the state, so two requests for one log are decided one after the other, each on
what the other left. Nothing else ever writes a log's state.

A log is *witnessed* while it has at least one key. Removing a log removes its keys but
keeps its row, and so its state: adding it again continues from the size it had, never
from zero (forgetting would let a log that forked in between be cosigned again).
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from chronicle.core.checkpoint import WitnessState
from chronicle.core.errors import StorageError
from chronicle.store import open_database
from chronicle.store.schema import WITNESS, Schema, SchemaStore
from chronicle.store.sql import Database, Row, Session

_LOG_SELECT = (
    "SELECT l.id, l.origin, l.size, l.root, l.checkpoint, l.cosigned, l.created, "
    "(SELECT COUNT(*) FROM witness_evidence e WHERE e.log = l.id) FROM witness_logs l")


@dataclass(frozen=True, slots=True)
class WitnessedLog:
    """A log as the witness knows it: its keys (vkeys; none once removed), the latest
    checkpoint it cosigned (``state`` and the log-signed ``checkpoint`` note, as received;
    None before the first), when, and how many refused requests it keeps as evidence."""

    origin: str
    vkeys: tuple[str, ...]
    state: WitnessState | None
    checkpoint: bytes | None
    cosigned: str | None
    created: str
    evidence: int = 0

    @property
    def active(self) -> bool:
        return bool(self.vkeys)


@dataclass(frozen=True, slots=True)
class Evidence:
    """A request refused although the log's signature on it verified: kept as it came."""

    recorded: str
    status: int
    reason: str
    known: WitnessState | None
    request: bytes


class LogTx:
    """One log inside :meth:`WitnessStore.witnessing`: its keys and state, read under the
    lock, and the two writes a decision may make before the commit."""

    def __init__(self, session: Session, log_id: int | None, vkeys: tuple[str, ...],
                 state: WitnessState | None) -> None:
        self._session = session
        self._log_id = log_id
        self.vkeys = vkeys
        self.state = state

    def _id(self) -> int:
        if self._log_id is None:
            raise StorageError("no such log: nothing to write")
        return self._log_id

    async def advance(self, state: WitnessState, checkpoint: bytes, when: str) -> None:
        """Remember ``state`` (cosigned at ``when``, from the log-signed ``checkpoint``).

        The guard in the statement (never a smaller size) cannot fail under the lock; if it
        ever did, the transaction is rolled back rather than the state moved backwards.
        """
        changed = await self._session.execute(
            "UPDATE witness_logs SET size = ?, root = ?, checkpoint = ?, cosigned = ? "
            "WHERE id = ? AND (size IS NULL OR size <= ?)",
            state.size, state.root, checkpoint, when, self._id(), state.size)
        if changed != 1:
            raise StorageError("the witness state moved under its lock; nothing cosigned")
        self.state = state

    async def keep_evidence(self, status: int, reason: str, request: bytes, when: str) -> None:
        """Keep a refused request whose log signature verified (once per distinct body)."""
        known = self.state
        await self._session.execute(
            "INSERT INTO witness_evidence (log, recorded, status, reason, known_size, "
            "known_root, digest, request) VALUES (?,?,?,?,?,?,?,?) "
            "ON CONFLICT (log, digest) DO NOTHING",
            self._id(), when, status, reason, known.size if known else None,
            known.root if known else None, hashlib.sha256(request).digest(), request)


class WitnessStore(SchemaStore):
    """The witness's database (its own schema, :data:`~chronicle.store.schema.WITNESS`)."""

    schema: ClassVar[Schema] = WITNESS

    def __init__(self, db: Database) -> None:
        super().__init__(db, db.where)

    # --- configuration (the CLI) ---------------------------------------------------------

    async def add_log(self, origin: str, vkeys: Sequence[str], when: str) -> list[str]:
        """Witness ``origin`` with these keys (added to any it has); the keys that were new.

        A log removed before comes back with the state it had.
        """
        added = []
        async with self.db.transaction() as s:
            await s.execute("INSERT INTO witness_logs (origin, created) VALUES (?, ?) "
                            "ON CONFLICT (origin) DO NOTHING", origin, when)
            row = await s.fetchrow("SELECT id FROM witness_logs WHERE origin = ?", origin)
            assert row is not None
            for vkey in dict.fromkeys(vkeys):
                if await s.execute("INSERT INTO witness_keys (log, vkey, added) VALUES (?,?,?) "
                                   "ON CONFLICT (log, vkey) DO NOTHING", row[0], vkey, when):
                    added.append(vkey)
        return added

    async def remove_log(self, origin: str, vkeys: Sequence[str] = ()) -> int:
        """Stop trusting ``vkeys`` for ``origin`` (all its keys if none are named): the
        number of keys removed. The log's state is kept (see the module docstring)."""
        async with self.db.transaction() as s:
            sql = "DELETE FROM witness_keys WHERE log IN (SELECT id FROM witness_logs " \
                  "WHERE origin = ?)"
            if not vkeys:
                return await s.execute(sql, origin)
            return sum([await s.execute(sql + " AND vkey = ?", origin, v)
                        for v in dict.fromkeys(vkeys)])

    async def logs(self, *, include_removed: bool = False) -> list[WitnessedLog]:
        """Every log witnessed (and, with ``include_removed``, those without keys now),
        by origin."""
        found = await self.db.read(f"{_LOG_SELECT} ORDER BY l.origin")
        keys = await self._keys(None)
        logs = [_log(r, keys.get(int(r[0]), ())) for r in found]
        return [log for log in logs if include_removed or log.active]

    async def log(self, origin: str) -> WitnessedLog | None:
        """One log, witnessed or removed; None if the witness never knew it."""
        found = await self.db.read(f"{_LOG_SELECT} WHERE l.origin = ?", origin)
        if not found:
            return None
        return _log(found[0], (await self._keys(int(found[0][0]))).get(int(found[0][0]), ()))

    async def _keys(self, log_id: int | None) -> dict[int, tuple[str, ...]]:
        sql = "SELECT log, vkey FROM witness_keys"
        rows = await (self.db.read(sql + " WHERE log = ? ORDER BY id", log_id)
                      if log_id is not None else self.db.read(sql + " ORDER BY id"))
        keys: dict[int, tuple[str, ...]] = {}
        for log_id_, vkey in rows:
            keys[int(log_id_)] = (*keys.get(int(log_id_), ()), str(vkey))
        return keys

    async def evidence(self, origin: str, limit: int = 20) -> list[Evidence]:
        """Refused requests kept for ``origin``, newest first."""
        found = await self.db.read(
            "SELECT e.recorded, e.status, e.reason, e.known_size, e.known_root, e.request "
            "FROM witness_evidence e JOIN witness_logs l ON l.id = e.log "
            "WHERE l.origin = ? ORDER BY e.id DESC LIMIT ?", origin, limit)
        return [Evidence(str(r[0]), int(r[1]), str(r[2]), _state(r[3], r[4]), bytes(r[5]))
                for r in found]

    # --- the witness (add-checkpoint) ----------------------------------------------------

    @asynccontextmanager
    async def witnessing(self, origin: str) -> AsyncIterator[LogTx]:
        """A transaction holding ``origin``'s lock, with its keys and state read under it;
        commits durably on exit (so: before anyone is answered), rolls back on an error.
        An origin the witness never knew comes with no keys and no state."""
        async with self.db.transaction() as s:
            lock = self.db.dialect.lock_rows
            row = await s.fetchrow(f"SELECT id, size, root FROM witness_logs "  # noqa: S608
                                   f"WHERE origin = ?{lock}", origin)
            if row is None:
                yield LogTx(s, None, (), None)
                return
            keys = await s.fetch("SELECT vkey FROM witness_keys WHERE log = ? ORDER BY id",
                                 row[0])
            yield LogTx(s, int(row[0]), tuple(str(k[0]) for k in keys), _state(row[1], row[2]))


def _state(size: int | None, root: bytes | None) -> WitnessState | None:
    return None if size is None or root is None else WitnessState(int(size), bytes(root))


def _log(row: Row, vkeys: tuple[str, ...]) -> WitnessedLog:
    return WitnessedLog(origin=str(row[1]), vkeys=vkeys, state=_state(row[2], row[3]),
                        checkpoint=bytes(row[4]) if row[4] is not None else None,
                        cosigned=row[5], created=str(row[6]), evidence=int(row[7]))


def open_witness_store(url: str, base_dir: Path | None = None) -> WitnessStore:
    """The witness store for a database URL (``sqlite:PATH`` relative to ``base_dir``, or
    ``postgresql://…``). Not connected yet: call ``open()`` (or ``create_schema()``)."""
    return WitnessStore(open_database(url, base_dir))
