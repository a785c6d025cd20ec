"""The Merkle tree kept with a chain's entries (issue 11): its durable state and hashes.

Tables (schema migration 4):

- ``tlog_trees``: one row per chain that has a tree: its ``origin`` and checkpoint
  ``vkey`` (both fixed once enabled), ``status`` (``building`` while ``chronicle tlog
  enable`` backfills, then ``active``), ``size`` and ``treestate`` (the compact range,
  :meth:`TreeState.to_bytes <chronicle.core.merkle.TreeState.to_bytes>`), and the index of
  the chain entry that announced the vkey;
- ``tlog_hashes``: the stored hashes (Go sumdb tlog numbering, see
  :mod:`chronicle.core.merkle`), written once and never changed;
- ``tlog_checkpoints``: every checkpoint the server issued, by size, with its signed note;
- ``tlog_upstreams``: for a replication source whose tree we watch, its checkpoint key
  and the last checkpoint verified consistent (with the signed answer, as evidence).

:class:`TreeHook` is the chain hook: inside each batch's transaction it reads the tree's
state (only an ``active`` tree), extends it with the appended entries' leaf hashes
(:func:`chronicle.core.leaf.entry_leaf_hash`) and writes the new stored hashes and state
with the entries: the tree never lags, leads or forks from its chain, and history is
never rehashed.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass

from chronicle.core.blakechain import Entry
from chronicle.core.errors import StorageError
from chronicle.core.leaf import LeafRecord, entry_leaf_hash
from chronicle.core.merkle import HashCountError, TreeState
from chronicle.store.chains import ChainHook, HookBatch, WriteTx
from chronicle.store.sql import IN_LIST, Database, InstanceScoped, Row, Session

STATUS_BUILDING = "building"
STATUS_ACTIVE = "active"

_TREE_COLS = "instance, origin, vkey, status, size, treestate, created, announced"
_HASH_COLUMNS = ("instance", "idx", "hash")
_READ_HASHES = f"SELECT idx, hash FROM tlog_hashes WHERE instance = ? AND idx {IN_LIST}"  # noqa: S608
#: What a leaf record needs of an entry, in chain order (the backfill's page read).
_LEAF_ROWS = ("SELECT idx, created, publickey, signature, contents, currhash FROM entries "
              "WHERE instance = ? AND idx >= ? AND idx < ? ORDER BY idx")
_STATE_MISMATCH = "the Merkle tree is out of step with its chain"


@dataclass(frozen=True, slots=True)
class TreeRecord:
    """A chain's tree as stored: see the module docstring."""

    instance_id: int
    origin: str
    vkey: str
    status: str
    size: int
    treestate: bytes
    created: str
    announced: int | None

    @property
    def active(self) -> bool:
        return self.status == STATUS_ACTIVE

    def state(self) -> TreeState:
        return TreeState.from_bytes(self.treestate, size=self.size)


@dataclass(frozen=True, slots=True)
class IssuedCheckpoint:
    """A checkpoint the server signed and published: its size, root and signed note."""

    size: int
    root: bytes
    note: str
    issued: str


@dataclass(frozen=True, slots=True)
class VerifiedCheckpoint:
    """The last checkpoint of an upstream verified consistent, with the signed answer that
    carried it (kept as evidence should a later one contradict it)."""

    size: int
    root: bytes
    body: bytes
    signature: str | None
    url: str
    checked: str


@dataclass(frozen=True, slots=True)
class UpstreamTree:
    """A replication source's tree as we watch it: its checkpoint key, and the last
    checkpoint verified (None before the first sync)."""

    source_id: int
    vkey: str
    last: VerifiedCheckpoint | None = None


def _tree(row: Row) -> TreeRecord:
    return TreeRecord(int(row[0]), row[1], row[2], row[3], int(row[4]), bytes(row[5]),
                      row[6], None if row[7] is None else int(row[7]))


def leaf_hash_of_row(row: Row) -> bytes:
    """The leaf hash of an ``_LEAF_ROWS`` row (``idx, created, publickey, signature,
    contents, currhash``)."""
    return LeafRecord.build(row[1], bytes(row[2]), bytes(row[3]), bytes(row[4]),
                            bytes(row[5])).leaf_hash()


# --- the chain hook -----------------------------------------------------------------------

class TreeBatch(HookBatch):
    """One batch's part: leaf hashes collected in order, written at commit."""

    def __init__(self, instance_id: int, state: TreeState) -> None:
        self.instance_id = instance_id
        self.state = state
        self.leaves: list[bytes] = []

    def appended(self, entry: Entry) -> None:
        # The leaf index is the chain index: a tree that does not end where the chain
        # does would prove the wrong entries, so the whole batch fails instead.
        if entry.index != self.state.size + len(self.leaves):
            raise StorageError(f"{_STATE_MISMATCH}: entry {entry.index} would be leaf "
                               f"{self.state.size + len(self.leaves)}")
        self.leaves.append(entry_leaf_hash(entry))

    async def commit(self, tx: WriteTx) -> None:
        if self.leaves:
            await write_tree(tx.session, self.instance_id, self.state, self.leaves)


async def write_tree(session: Session, instance_id: int, state: TreeState,
                     leaves: Sequence[bytes]) -> TreeState:
    """Extend ``state`` (the stored one) by ``leaves`` and write the new hashes and state."""
    new, stored = state.extend(leaves)
    await session.bulk_insert("tlog_hashes", _HASH_COLUMNS,
                              [(instance_id, index, h) for index, h in stored])
    changed = await session.execute(
        "UPDATE tlog_trees SET size = ?, treestate = ? WHERE instance = ? AND size = ?",
        new.size, new.to_bytes(), instance_id, state.size)
    if changed != 1:
        raise StorageError(f"{_STATE_MISMATCH}: its stored size changed during the batch")
    return new


class TreeHook(ChainHook):
    """Keeps an active tree in step with its chain (see the module docstring)."""

    async def begin(self, tx: WriteTx, contents: Sequence[bytes]) -> TreeBatch | None:
        row = await tx.session.fetchrow(
            "SELECT size, treestate FROM tlog_trees WHERE instance = ? AND status = ?",
            tx.instance_id, STATUS_ACTIVE)
        if row is None:
            return None
        return TreeBatch(tx.instance_id, TreeState.from_bytes(bytes(row[1]),
                                                              size=int(row[0])))


# --- the store concern ----------------------------------------------------------------------

class TlogStore(InstanceScoped):
    """Reads of the trees and their checkpoints; the writes of enabling a tree."""

    def __init__(self, db: Database, instance_id: Callable[[str], Awaitable[int]]) -> None:
        super().__init__(db, instance_id)
        self.hook = TreeHook()

    # --- reads ------------------------------------------------------------------------------

    async def tree(self, instance: str) -> TreeRecord | None:
        """The chain's tree, building or active; None when it has none."""
        found = await self._db.read(f"SELECT {_TREE_COLS} FROM tlog_trees "  # noqa: S608
                                    "WHERE instance = ?", await self._instance_id(instance))
        return _tree(found[0]) if found else None

    async def hashes(self, instance_id: int, indexes: Sequence[int]) -> list[bytes]:
        """The stored hashes at ``indexes``, in that order (every one must exist)."""
        if not indexes:
            return []
        found = {int(r[0]): bytes(r[1]) for r in await self._db.read_in(
            _READ_HASHES, (instance_id,), indexes, "bigint")}
        try:
            return [found[i] for i in indexes]
        except KeyError as exc:
            raise HashCountError(f"stored hash {exc.args[0]} is missing") from None

    async def checkpoint(self, instance_id: int, size: int) -> IssuedCheckpoint | None:
        found = await self._db.read("SELECT size, root, note, issued FROM tlog_checkpoints "
                                    "WHERE instance = ? AND size = ?", instance_id, size)
        return _issued(found[0]) if found else None

    async def latest_checkpoint(self, instance_id: int) -> IssuedCheckpoint | None:
        found = await self._db.read("SELECT size, root, note, issued FROM tlog_checkpoints "
                                    "WHERE instance = ? ORDER BY size DESC LIMIT 1",
                                    instance_id)
        return _issued(found[0]) if found else None

    async def record_checkpoint(self, instance_id: int, checkpoint: IssuedCheckpoint) -> None:
        """Keep a checkpoint we publish. Another process may have issued the same one
        first: a note is a function of (origin, size, root) and Ed25519 is deterministic,
        so it is the same bytes and nothing needs to change."""
        c = checkpoint
        async with self._db.transaction() as s:
            await s.execute("INSERT INTO tlog_checkpoints (instance, size, root, note, issued) "
                            "VALUES (?,?,?,?,?) ON CONFLICT (instance, size) DO NOTHING",
                            instance_id, c.size, c.root, c.note, c.issued)

    async def leaf_rows(self, instance_id: int, start: int, stop: int,
                        page: int = 10_000) -> AsyncIterator[list[Row]]:
        """Committed entries ``start <= index < stop`` as leaf rows, in pages, in order."""
        pos = start
        while pos < stop:
            rows = await self._db.scan(_LEAF_ROWS, instance_id, pos, min(stop, pos + page))
            if not rows:
                return
            yield rows
            pos = int(rows[-1][0]) + 1

    # --- enabling -----------------------------------------------------------------------------

    async def start_building(self, instance: str, origin: str, vkey: str,
                             when: str) -> TreeRecord:
        """Create the tree row as ``building`` (size 0), or restart an interrupted build
        (its hashes are dropped; what else it recorded stays). Whether to enable is the
        caller's to judge: the origin and key of a building tree are not changed here, and
        an active tree is refused."""
        iid = await self._instance_id(instance)
        empty = TreeState.empty().to_bytes()
        async with self._db.transaction(lock_chain=iid) as s:
            restarted = await s.execute("UPDATE tlog_trees SET size = 0, treestate = ? "
                                        "WHERE instance = ? AND status = ?", empty, iid,
                                        STATUS_BUILDING)
            if restarted:
                await s.execute("DELETE FROM tlog_hashes WHERE instance = ?", iid)
            else:
                await s.execute(f"INSERT INTO tlog_trees ({_TREE_COLS}) "  # noqa: S608
                                "VALUES (?,?,?,?,?,?,?,?)", iid, origin, vkey,
                                STATUS_BUILDING, 0, empty, when, None)
        tree = await self.tree(instance)
        assert tree is not None
        return tree

    async def write_hashes(self, instance_id: int, stored: Sequence[tuple[int, bytes]]) -> None:
        """Backfilled stored hashes, in a transaction of their own (a building tree is no
        part of any append, so nothing else writes these rows)."""
        async with self._db.transaction() as s:
            await s.bulk_insert("tlog_hashes", _HASH_COLUMNS,
                                [(instance_id, index, h) for index, h in stored])

    async def activate(self, tx: WriteTx, built: TreeState) -> TreeState:
        """Inside a write transaction holding the chain-head lock: catch the backfilled
        tree (``built``, its hashes written) up with the entries committed since, check
        the stored hashes agree with it, and make it active. From the commit on, every
        append extends it."""
        iid = tx.instance_id
        row = await tx.session.fetchrow("SELECT status FROM tlog_trees WHERE instance = ?", iid)
        if row is None or row[0] != STATUS_BUILDING:
            raise StorageError("the tree being built was removed or enabled meanwhile")
        peaks = await tx.session.fetch_in(_READ_HASHES, (iid,), TreeState.peak_indexes(
            built.size), "bigint")
        stored = {int(r[0]): bytes(r[1]) for r in peaks}
        if [stored.get(i) for i in TreeState.peak_indexes(built.size)] != list(built.peaks):
            raise StorageError("the stored hashes do not match the tree built from the chain "
                               "(is another `tlog enable` running?)")
        await tx.session.execute("UPDATE tlog_trees SET status = ?, size = ?, treestate = ? "
                                 "WHERE instance = ?", STATUS_ACTIVE, built.size,
                                 built.to_bytes(), iid)
        head = await tx.head()
        end = 0 if head is None else head.index + 1
        if end < built.size:
            raise StorageError(f"{_STATE_MISMATCH}: the chain has {end} entries, the tree "
                               f"{built.size}")
        rows = await tx.session.fetch(_LEAF_ROWS, iid, built.size, end)
        if rows:
            return await write_tree(tx.session, iid, built,
                                    [leaf_hash_of_row(r) for r in rows])
        return built

    async def mark_announced(self, tx: WriteTx, index: int) -> bool:
        """Inside the transaction appending the announcement (entry ``index``): record it,
        unless the tree's key was announced already (False)."""
        return await tx.session.execute(
            "UPDATE tlog_trees SET announced = ? WHERE instance = ? AND announced IS NULL",
            index, tx.instance_id) == 1

    # --- trees of replication sources -------------------------------------------------------

    async def upstream(self, source_id: int) -> UpstreamTree | None:
        found = await self._db.read("SELECT source, vkey, size, root, body, signature, url, "
                                    "checked FROM tlog_upstreams WHERE source = ?", source_id)
        if not found:
            return None
        r = found[0]
        last = None if r[2] is None else VerifiedCheckpoint(
            int(r[2]), bytes(r[3]), bytes(r[4]), r[5], r[6], r[7])
        return UpstreamTree(int(r[0]), r[1], last)

    async def watch_upstream(self, source_id: int, vkey: str) -> None:
        """Check this source's checkpoints with ``vkey`` from its next sync on (a new key
        forgets the last checkpoint verified with the old one)."""
        async with self._db.transaction() as s:
            await s.execute("DELETE FROM tlog_upstreams WHERE source = ?", source_id)
            await s.execute("INSERT INTO tlog_upstreams (source, vkey) VALUES (?, ?)",
                            source_id, vkey)

    async def save_upstream(self, tree: UpstreamTree, last: VerifiedCheckpoint) -> None:
        """Remember the newest checkpoint verified consistent with the one before."""
        async with self._db.transaction() as s:
            await s.execute("UPDATE tlog_upstreams SET size = ?, root = ?, body = ?, "
                            "signature = ?, url = ?, checked = ? WHERE source = ? AND vkey = ?",
                            last.size, last.root, last.body, last.signature, last.url,
                            last.checked, tree.source_id, tree.vkey)


def _issued(row: Row) -> IssuedCheckpoint:
    return IssuedCheckpoint(int(row[0]), bytes(row[1]), row[2], row[3])
