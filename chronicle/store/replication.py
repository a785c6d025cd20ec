"""Replication sources: the upstreams we copy, their verified copies, keys, peers, faults.

A source's copy is a chain like any other (:class:`~chronicle.store.chains.Chain` over
``replica_entries``); it grows only by :meth:`ReplicationStore.append`, with entries the
follower has verified, and must continue exactly where the stored copy ends. A fault
(fork, split view, key change) is kept with the signed answers that prove it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from chronicle.core.blakechain import Entry
from chronicle.core.errors import RequestError, StorageError
from chronicle.store import rows
from chronicle.store.chains import Chain
from chronicle.store.records import KeyRecord, ReplicaFault, ReplicaPeer, ReplicaSource
from chronicle.store.sql import Conflict, InstanceScoped, Session

_COLUMNS = ("source", "idx", "contents", "prevhash", "currhash", "summaryhash", "hashstate",
            "publickey", "signature", "created", "replicated")


class ReplicaConflict(StorageError):
    """A replicated batch does not continue the stored copy (another process appended)."""

    status = 409


def _check_continues(last: Sequence[Any] | None, first: Entry) -> None:
    """``last`` is the stored head's ``(idx, currhash)``, None for an empty copy."""
    if last is None:
        ok = first.index == 0 and first.prevhash is None
        where = "an empty replica"
    else:
        ok = first.index == last[0] + 1 and first.prevhash == bytes(last[1])
        where = f"a replica ending at entry {last[0]}"
    if not ok:
        raise ReplicaConflict(f"entry {first.index} does not continue {where} "
                              "(another process is replicating this source?)")


async def _insert_peers(s: Session, source_id: int, peers: Sequence[ReplicaPeer]) -> None:
    if peers:
        await s.executemany(
            "INSERT INTO replication_peers (source, url, publickey, kind, cursor) "
            "VALUES (?,?,?,?,?)", [(source_id, p.url, p.publickey, p.kind, p.cursor)
                                   for p in peers])


class ReplicationStore(InstanceScoped):

    # --- sources ------------------------------------------------------------------------

    async def add_source(self, source: ReplicaSource,
                         peers: Sequence[ReplicaPeer] = ()) -> ReplicaSource:
        """Store a new source (its key becomes the first :class:`KeyRecord`); a name or
        uniqueid already in use raises :class:`RequestError` (409)."""
        iid = await self._instance_id(source.instance)
        try:
            async with self._db.transaction() as s:
                sid = await s.insert_id(
                    "INSERT INTO replication_sources (instance, uniqueid, name, url, publickey, "
                    "status, created) VALUES (?,?,?,?,?,?,?) RETURNING id",
                    iid, source.uniqueid, source.name, source.url, source.publickey,
                    source.status, source.created)
                await s.execute("INSERT INTO replication_keys (source, publickey, since, "
                                "reason) VALUES (?,?,?,?)",
                                sid, source.publickey, source.created, "added")
                await _insert_peers(s, sid, peers)
        except Conflict:
            raise RequestError(f"a replication source named {source.name!r} (or with that "
                               "id) already exists", status=409) from None
        found = await self.source(source.uniqueid)
        assert found is not None
        return found

    async def sources(self, instance: str | None = None) -> list[ReplicaSource]:
        """Sources in creation order (of one instance, or of all when None)."""
        return [rows.source(r)
                for r in await self._of_instance(rows.SOURCE_SELECT, "s", instance)]

    async def source(self, ref: str, instance: str | None = None) -> ReplicaSource | None:
        """The source whose uniqueid or name is ``ref`` (a uniqueid wins)."""
        sql = f"{rows.SOURCE_SELECT} WHERE (s.uniqueid = ? OR s.name = ?)"
        params: list[Any] = [ref, ref]
        if instance is not None:
            sql += " AND s.instance = ?"
            params.append(await self._instance_id(instance))
        found = await self._db.read(sql + " ORDER BY s.uniqueid = ? DESC, s.id LIMIT 1",
                                    *params, ref)
        return rows.source(found[0]) if found else None

    async def remove_source(self, source_id: int) -> bool:
        """Delete a source with its copy, peers, keys and evidence."""
        async with self._db.transaction() as s:
            for table in ("replica_entries", "replication_peers", "replication_keys"):
                await s.execute(f"DELETE FROM {table} WHERE source = ?", source_id)  # noqa: S608
            await s.execute("DELETE FROM replication_evidence WHERE fault IN "
                            "(SELECT id FROM replication_faults WHERE source = ?)", source_id)
            await s.execute("DELETE FROM replication_faults WHERE source = ?", source_id)
            return await s.execute("DELETE FROM replication_sources WHERE id = ?",
                                   source_id) > 0

    async def _update(self, sql: str, *params: Any) -> None:
        async with self._db.transaction() as s:
            await s.execute(sql, *params)

    async def set_url(self, source_id: int, url: str) -> None:
        await self._update("UPDATE replication_sources SET url = ? WHERE id = ?", url, source_id)

    async def set_status(self, source_id: int, status: str, *, fault: str | None,
                         reason: str | None, when: str) -> None:
        await self._update("UPDATE replication_sources SET status = ?, fault = ?, reason = ?, "
                           "status_since = ? WHERE id = ?", status, fault, reason, when,
                           source_id)

    async def record_attempt(self, source_id: int, *, when: str, error: str | None) -> None:
        """After a sync: ``error`` None = success (``last_sync``, failures reset), else a
        transient failure (``last_error``, one more consecutive failure)."""
        if error is None:
            await self._update("UPDATE replication_sources SET last_attempt = ?, "
                               "last_sync = ?, last_error = NULL, failures = 0 WHERE id = ?",
                               when, when, source_id)
        else:
            await self._update("UPDATE replication_sources SET last_attempt = ?, "
                               "last_error = ?, failures = failures + 1 WHERE id = ?",
                               when, error, source_id)

    # --- keys and peers -----------------------------------------------------------------

    async def set_key(self, source_id: int, publickey: bytes, *, when: str,
                      reason: str | None) -> None:
        """Pin a new server key (retiring the old one in the key history)."""
        async with self._db.transaction() as s:
            await s.execute("UPDATE replication_keys SET retired = ? WHERE source = ? "
                            "AND retired IS NULL", when, source_id)
            await s.execute("INSERT INTO replication_keys (source, publickey, since, reason) "
                            "VALUES (?,?,?,?)", source_id, publickey, when, reason)
            await s.execute("UPDATE replication_sources SET publickey = ? WHERE id = ?",
                            publickey, source_id)

    async def keys(self, source_id: int) -> list[KeyRecord]:
        found = await self._db.read("SELECT publickey, since, retired, reason FROM "
                                    "replication_keys WHERE source = ? ORDER BY id", source_id)
        return [KeyRecord(bytes(r[0]), r[1], r[2], r[3]) for r in found]

    async def set_peers(self, source_id: int, peers: Sequence[ReplicaPeer]) -> None:
        """Replace the source's peers."""
        try:
            async with self._db.transaction() as s:
                await s.execute("DELETE FROM replication_peers WHERE source = ?", source_id)
                await _insert_peers(s, source_id, peers)
        except Conflict:
            raise RequestError("the same peer URL is given twice", status=409) from None

    async def peers(self, source_id: int) -> list[ReplicaPeer]:
        found = await self._db.read("SELECT url, publickey, kind, cursor, id FROM "
                                    "replication_peers WHERE source = ? ORDER BY id", source_id)
        return [ReplicaPeer(r[0], None if r[1] is None else bytes(r[1]), r[2], r[3], r[4])
                for r in found]

    async def set_peer_cursor(self, peer_id: int, cursor: str | None) -> None:
        await self._update("UPDATE replication_peers SET cursor = ? WHERE id = ?",
                           cursor, peer_id)

    # --- the copy -----------------------------------------------------------------------

    def chain(self, source_id: int) -> Chain:
        """The verified copy of the source, read like any chain."""
        return Chain(self._db, "replica_entries", "source", source_id)

    async def append(self, source_id: int, entries: Sequence[Entry], *,
                     replicated: str) -> None:
        """Store verified upstream entries (consecutive, in order) in one transaction.

        They must continue the stored copy (first index = head + 1, its prevhash = the
        head's currhash), checked inside the transaction; else :class:`ReplicaConflict`.
        ``created`` is stored exactly as given; the first entry's prevhash as ``""``.
        """
        if not entries:
            return
        try:
            async with self._db.transaction() as s:
                last = await s.fetchrow("SELECT idx, currhash FROM replica_entries "
                                        "WHERE source = ? ORDER BY idx DESC LIMIT 1",
                                        source_id)
                _check_continues(last, entries[0])
                await s.bulk_insert("replica_entries", _COLUMNS, [
                    (source_id, e.index, e.contents, e.prevhash or b"", e.currhash,
                     e.summaryhash, e.hashstate, e.publickey, e.signature, e.created,
                     replicated) for e in entries])
        except Conflict:
            raise ReplicaConflict("the replica already holds one of these entries") from None

    # --- faults and evidence ------------------------------------------------------------

    async def record_fault(self, source_id: int, fault: ReplicaFault) -> int:
        """Keep the fault and its documents and set the source's status, atomically."""
        async with self._db.transaction() as s:
            fid = await s.insert_id(
                "INSERT INTO replication_faults (source, recorded, status, kind, message, "
                "details) VALUES (?,?,?,?,?,?) RETURNING id", source_id, fault.recorded,
                fault.status, fault.kind, fault.message, json.dumps(fault.details))
            if fault.documents:
                await s.executemany(
                    f"INSERT INTO replication_evidence (fault, {rows.EVIDENCE_COLS}) "  # noqa: S608
                    "VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                    [(fid, d.role, d.method, d.url, d.status, d.signature, d.signer, d.body,
                      d.file, d.size, d.sha256) for d in fault.documents])
            await s.execute("UPDATE replication_sources SET status = ?, fault = ?, reason = ?, "
                            "status_since = ? WHERE id = ?", fault.status, fault.kind,
                            fault.message, fault.recorded, source_id)
        return fid

    async def faults(self, source_id: int) -> list[ReplicaFault]:
        """Every recorded fault of the source, oldest first, with its documents."""
        out = []
        for f in await self._db.read("SELECT id, status, kind, message, recorded, details "
                                     "FROM replication_faults WHERE source = ? ORDER BY id",
                                     source_id):
            docs = await self._db.read(f"SELECT {rows.EVIDENCE_COLS} FROM "  # noqa: S608
                                       "replication_evidence WHERE fault = ? ORDER BY id", f[0])
            out.append(ReplicaFault(status=f[1], kind=f[2], message=f[3], recorded=f[4],
                                    details=json.loads(f[5]),
                                    documents=tuple(rows.evidence(d) for d in docs), id=f[0]))
        return out
