"""Registered clients (publishers and admins) of each chain, and its public mirror list.

Adding and revoking a client happens inside the chain's write transaction
(:class:`~chronicle.store.chains.WriteTx`), together with the server's entry recording it;
this concern reads them, and keeps the mirrors that ``GET /chronicle/mirrors`` lists.
"""

from __future__ import annotations

from chronicle.store import rows
from chronicle.store.records import Client, Mirror
from chronicle.store.sql import InstanceScoped

_BY_ID = (f"SELECT {rows.CLIENT_COLS} FROM clients WHERE instance = ? "  # noqa: S608
          "AND publicid = ? AND revoked IS NULL")
_ALL = f"SELECT {rows.CLIENT_COLS} FROM clients WHERE instance = ?"  # noqa: S608


class ClientStore(InstanceScoped):

    async def get(self, instance: str, publicid: str) -> Client | None:
        """The active (not revoked) client with this id."""
        found = await self._db.read(_BY_ID, await self._instance_id(instance), publicid)
        return rows.client(found[0]) if found else None

    async def all(self, instance: str, *, include_revoked: bool = False) -> list[Client]:
        sql = _ALL if include_revoked else _ALL + " AND revoked IS NULL"
        found = await self._db.read(sql + " ORDER BY id", await self._instance_id(instance))
        return [rows.client(r) for r in found]


class MirrorStore(InstanceScoped):

    async def all(self, instance: str) -> list[Mirror]:
        found = await self._db.read(
            "SELECT url, publickey, comment, sortpriority FROM mirrors WHERE instance = ? "
            "ORDER BY sortpriority ASC, id ASC", await self._instance_id(instance))
        return [Mirror(url=r[0], publickey=r[1], comment=r[2], sortpriority=r[3])
                for r in found]

    async def add(self, instance: str, mirror: Mirror, when: str) -> None:
        """Add a mirror, or update the one with the same URL."""
        iid = await self._instance_id(instance)
        async with self._db.transaction() as s:
            await s.execute(
                "INSERT INTO mirrors (instance, url, publickey, comment, sortpriority, created) "
                "VALUES (?,?,?,?,?,?) ON CONFLICT (instance, url) DO UPDATE SET "
                "publickey = excluded.publickey, comment = excluded.comment, "
                "sortpriority = excluded.sortpriority",
                iid, mirror.url, mirror.publickey, mirror.comment, mirror.sortpriority, when)

    async def remove(self, instance: str, url: str) -> bool:
        iid = await self._instance_id(instance)
        async with self._db.transaction() as s:
            return await s.execute("DELETE FROM mirrors WHERE instance = ? AND url = ?",
                                   iid, url) > 0
