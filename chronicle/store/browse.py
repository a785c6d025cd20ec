"""Light reads of our chains for people looking at them (the web explorer, issue 15).

Nothing here reads a whole body of a large entry: a list shows a short preview of the
entries whose body is small, and each query is a keyset range on ``(instance, idx)``, so
its cost is bounded by the rows it asks for whatever the chain's length. Searches scan a
window of at most ``window`` rows below a cursor; the caller continues from where the
window ended.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from chronicle.store.sql import IN_LIST, Database

#: Bodies up to this size get a preview in lists (a larger one is not read at all).
PREVIEW_UNDER = 65536
#: The first bytes of a small body a list shows.
PREVIEW_BYTES = 240
_SUMMARY = ("SELECT idx, currhash, summaryhash, created, publickey, length(contents), "  # noqa: S608
            f"CASE WHEN length(contents) <= {PREVIEW_UNDER} THEN substr(contents, 1, "
            f"{PREVIEW_BYTES}) ELSE NULL END FROM entries WHERE instance = ? ")
_CREATED = f"SELECT idx, created FROM entries WHERE instance = ? AND idx {IN_LIST}"  # noqa: S608
#: A release ledger's newest releases, and a vendor's packages (the release layer's tables,
#: read for the explorer: ``store.release`` has no such listing).
_RECENT_RELEASES = ("SELECT vendor, name, version, idx, currhash, revoked_idx "
                    "FROM release_updates WHERE instance = ? ORDER BY idx DESC LIMIT ?")
_PACKAGES = ("SELECT name, COUNT(*), MAX(idx) FROM release_updates WHERE instance = ? "
             "AND vendor = ? AND name > ? GROUP BY name ORDER BY name LIMIT ?")
#: How the backends say "this blob contains that one" (the one parameter: the needle).
_CONTAINS = {"sqlite": "instr(contents, ?) > 0", "postgresql": "position(? in contents) > 0"}


@dataclass(frozen=True, slots=True)
class EntrySummary:
    """One entry as a list shows it: ``preview`` is the first bytes of a small body
    (None for a large one), ``size`` the body's length."""

    index: int
    currhash: bytes
    summaryhash: bytes
    created: str
    publickey: bytes
    size: int
    preview: bytes | None


@dataclass(frozen=True, slots=True)
class SearchWindow:
    """The matches found in entries ``low <= index < high`` (newest first), all of them:
    when ``limit`` matches were found before the window was searched through, ``low`` is
    the last match's index and ``complete`` False (continue below ``low``)."""

    matches: list[EntrySummary]
    low: int
    high: int
    complete: bool


@dataclass(frozen=True, slots=True)
class ReleaseLine:
    """A release in a list: its package, version, entry, and whether it was revoked."""

    vendor: str
    name: str
    version: str
    index: int
    currhash: str
    revoked: bool


class BrowseStore:
    """The explorer's reads of our chains."""

    def __init__(self, db: Database, instance_id: Callable[[str], Awaitable[int]]) -> None:
        self._db = db
        self._instance_id = instance_id

    @staticmethod
    def _row(row: Sequence[Any]) -> EntrySummary:
        return EntrySummary(index=int(row[0]), currhash=bytes(row[1]),
                            summaryhash=bytes(row[2]), created=str(row[3]),
                            publickey=bytes(row[4]), size=int(row[5]),
                            preview=None if row[6] is None else bytes(row[6]))

    async def newest(self, instance: str, before: int, limit: int) -> list[EntrySummary]:
        """Up to ``limit`` entries with ``index < before``, newest first."""
        iid = await self._instance_id(instance)
        found = await self._db.scan(_SUMMARY + "AND idx < ? ORDER BY idx DESC LIMIT ?",
                                    iid, before, limit)
        return [self._row(r) for r in found]

    async def currhash_at(self, instance: str, index: int) -> bytes | None:
        found = await self._db.read("SELECT currhash FROM entries WHERE instance = ? "
                                    "AND idx = ?", await self._instance_id(instance), index)
        return bytes(found[0][0]) if found else None

    async def created_at(self, instance: str, indexes: Sequence[int]) -> list[tuple[int, str]]:
        """``(index, created)`` of the given entries that exist, in chain order."""
        if not indexes:
            return []
        found = await self._db.read_in(
            _CREATED, (await self._instance_id(instance),), list(indexes), "bigint")
        return sorted((int(r[0]), str(r[1])) for r in found)

    async def search(self, instance: str, *, before: int, window: int, limit: int,
                     publickey: bytes | None = None, text: bytes | None = None
                     ) -> SearchWindow:
        """Entries below ``before`` (at most ``window`` of them examined) published with
        ``publickey`` or whose body contains ``text`` (exactly one of the two)."""
        if (publickey is None) == (text is None):
            raise ValueError("search by exactly one of publickey, text")
        low = max(0, before - window)
        if publickey is not None:
            condition, value = "publickey = ?", publickey
        else:
            assert text is not None
            condition, value = _CONTAINS[self._db.dialect.name], text
        iid = await self._instance_id(instance)
        found = await self._db.scan(
            _SUMMARY + f"AND idx >= ? AND idx < ? AND {condition} "
            "ORDER BY idx DESC LIMIT ?", iid, low, before, value, limit)
        matches = [self._row(r) for r in found]
        if len(matches) < limit:
            return SearchWindow(matches, low, before, complete=True)
        # Stopped at the limit: searched down to the last match only.
        return SearchWindow(matches, matches[-1].index, before, complete=False)

    async def recent_releases(self, instance: str, limit: int) -> list[ReleaseLine]:
        """A release ledger's newest releases (an empty list on any other chain)."""
        found = await self._db.read(_RECENT_RELEASES, await self._instance_id(instance), limit)
        return [ReleaseLine(str(r[0]), str(r[1]), str(r[2]), int(r[3]), str(r[4]),
                            r[5] is not None) for r in found]

    async def packages(self, instance: str, vendor: str, after: str, limit: int
                       ) -> tuple[list[tuple[str, int, int]], str | None]:
        """``(name, releases, newest entry)`` of ``vendor``'s packages named after
        ``after``, and the cursor of the next page (None: the last)."""
        found = await self._db.read(_PACKAGES, await self._instance_id(instance), vendor,
                                    after, limit + 1)
        page = [(str(r[0]), int(r[1]), int(r[2])) for r in found[:limit]]
        return page, page[-1][0] if len(found) > limit else None
