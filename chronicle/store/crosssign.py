"""Cross-sign targets (peers we publish our head on) and the receipts of each push."""

from __future__ import annotations

from chronicle.core.errors import RequestError
from chronicle.store import rows
from chronicle.store.records import XsignReceipt, XsignTarget
from chronicle.store.sql import Conflict, InstanceScoped


class CrossSignStore(InstanceScoped):

    async def add_target(self, target: XsignTarget) -> XsignTarget:
        """Store a new target; a name already in use on that chain raises a 409."""
        iid = await self._instance_id(target.instance)
        try:
            async with self._db.transaction() as s:
                await s.execute(
                    "INSERT INTO xsign_targets (instance, name, url, publickey, clientid, "
                    "policy, created) VALUES (?,?,?,?,?,?,?)", iid, target.name, target.url,
                    target.publickey, target.clientid, target.policy, target.created)
        except Conflict:
            raise RequestError(f"a cross-sign target named {target.name!r} already exists",
                               status=409) from None
        return next(t for t in await self.targets(target.instance) if t.name == target.name)

    async def targets(self, instance: str | None = None) -> list[XsignTarget]:
        return [rows.xsign(r) for r in await self._of_instance(rows.XSIGN_SELECT, "t", instance)]

    async def remove_target(self, instance: str, name: str) -> bool:
        iid = await self._instance_id(instance)
        async with self._db.transaction() as s:
            await s.execute("DELETE FROM xsign_receipts WHERE target IN (SELECT id FROM "
                            "xsign_targets WHERE instance = ? AND name = ?)", iid, name)
            return await s.execute("DELETE FROM xsign_targets WHERE instance = ? AND name = ?",
                                   iid, name) > 0

    async def record_attempt(self, target_id: int, *, when: str, error: str | None,
                             index: int | None = None) -> None:
        """``error`` None: ``index`` was cross-signed at ``when``; else one more failure."""
        async with self._db.transaction() as s:
            if error is None:
                await s.execute("UPDATE xsign_targets SET last_attempt = ?, last_run = ?, "
                                "last_index = ?, last_error = NULL, failures = 0 WHERE id = ?",
                                when, when, index, target_id)
            else:
                await s.execute("UPDATE xsign_targets SET last_attempt = ?, last_error = ?, "
                                "failures = failures + 1 WHERE id = ?", when, error, target_id)

    async def add_receipt(self, receipt: XsignReceipt) -> int:
        r = receipt
        async with self._db.transaction() as s:
            return await s.insert_id(
                "INSERT INTO xsign_receipts (target, recorded, status, idx, currhash, "
                "summaryhash, message, signature, peer_currhash, peer_summaryhash, "
                "peer_created, response, response_signature, error) "
                "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?) RETURNING id",
                r.target_id, r.recorded, r.status, r.index, r.currhash, r.summaryhash,
                r.message, r.signature, r.peer_currhash, r.peer_summaryhash, r.peer_created,
                r.response, r.response_signature, r.error)

    async def receipts(self, target_id: int, limit: int = 20) -> list[XsignReceipt]:
        """The newest receipts first."""
        found = await self._db.read(f"SELECT {rows.RECEIPT_COLS} FROM xsign_receipts "  # noqa: S608
                                    "WHERE target = ? ORDER BY id DESC LIMIT ?",
                                    target_id, limit)
        return [rows.receipt(r) for r in found]
