"""State of the background jobs (what they last did), and the lock electing their runner."""

from __future__ import annotations

from chronicle.store.sql import Database, LeaderLock


class JobStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def get(self, name: str) -> str | None:
        found = await self._db.read("SELECT value FROM job_state WHERE name = ?", name)
        return str(found[0][0]) if found else None

    async def set(self, name: str, value: str) -> None:
        async with self._db.transaction() as s:
            await s.execute("INSERT INTO job_state (name, value) VALUES (?, ?) "
                            "ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                            name, value)

    def leader_lock(self, name: str = "jobs") -> LeaderLock:
        """Held by the one process of a deployment that runs the background jobs."""
        return self._db.leader_lock(name)
