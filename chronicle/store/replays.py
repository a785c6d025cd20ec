"""Signed admin requests already carried out, so that none can be carried out twice.

A Sapient request signature covers only the body: a captured ``register`` or ``revoke``
could be sent again within its ``request-time`` window (or forever, with the window off)
and act again. Each one is recorded in the transaction that acts on it; a second use of
the same signature is refused (409) and changes nothing.
"""

from __future__ import annotations

from chronicle.core.errors import RequestError
from chronicle.store.sql import Conflict, Database, Session

MSG_REPLAYED = "This signed request was already used; sign a new one"


class ReplayGuard:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def record(self, session: Session, signature: bytes, endpoint: str,
                     when: str) -> None:
        """Inside the acting transaction: refuse a signature seen before (409)."""
        try:
            await session.execute("INSERT INTO admin_requests (signature, endpoint, recorded) "
                                  "VALUES (?,?,?)", signature, endpoint, when)
        except Conflict:
            raise RequestError(MSG_REPLAYED, status=409) from None

    async def seen(self, signature: bytes) -> bool:
        return bool(await self._db.read("SELECT 1 FROM admin_requests WHERE signature = ?",
                                        signature))
