"""The log side of the Merkle tree (issue 11): enabling it, checkpoints, proofs, tiles.

- :func:`enable` (``chronicle tlog enable``): the checkpoint key (a signed-note key named
  after the origin, in its own file: never the server's Sapient key), the backfill of the
  existing chain (streamed in pages, stored hashes bulk-inserted, no lock held), the
  short catch-up under the chain-head lock that makes the tree active, and the
  server-signed chain entry announcing the vkey. It works while ``serve`` runs: the
  tree's hook reads the tree's state inside every batch's transaction.
- :class:`TreeLog`: what the server answers under ``/chronicle/tlog/``, from the
  committed tree: the checkpoint (issued on request, cached at most a second, every
  issued one recorded), inclusion and consistency proofs, hash tiles and entry bundles
  (C2SP tlog-checkpoint and tlog-tiles; proofs RFC 6962 as in :mod:`chronicle.core.merkle`).

The tree belongs to one chain: ``enable`` turns it on for the default chain; instances stay
plain Chronicle chains.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from chronicle.config import write_secret_file
from chronicle.core import merkle
from chronicle.core.blakechain import Entry
from chronicle.core.checkpoint import Checkpoint, sign_checkpoint
from chronicle.core.encoding import atom, b64u_decode, b64u_encode
from chronicle.core.errors import (
    ChronicleError,
    EncodingError,
    NotFoundError,
    RequestError,
    StorageError,
)
from chronicle.core.leaf import LeafRecord
from chronicle.core.note import Ed25519Signer, is_valid_key_name, parse_note
from chronicle.core.protocol import MSG_NO_HASH, tree_enabled_message
from chronicle.core.sapient import SigningKey
from chronicle.ledger import Clock, Ledger
from chronicle.store import Store, WriteTx
from chronicle.store.tlog import IssuedCheckpoint, TreeRecord, leaf_hash_of_row

log = logging.getLogger(__name__)

MSG_NO_TREE = "The Merkle tree is not enabled on this chain"
MSG_KEY_UNAVAILABLE = "Checkpoints are unavailable: the checkpoint key cannot be read"
WITNESSED = "tlog-witnessed:"
"""``job_state`` key (plus the instance) of the newest checkpoint a quorum cosigned."""
CHECKPOINT_MAX_AGE = 1.0
"""Seconds a served checkpoint may lag the committed tree."""
FLUSH_HASHES = 200_000
"""Stored hashes per backfill transaction."""
CATCH_UP_UNLOCKED = 1000
"""Entries left to hash before the final catch-up runs under the chain-head lock."""

Progress = Callable[[int, int], None]


def check_origin(origin: str) -> None:
    """An origin is the tiles URL prefix without scheme or trailing slash, and the key
    name of the checkpoint key (C2SP tlog-checkpoint, signed-note)."""
    if not origin.isascii() or not is_valid_key_name(origin) or not origin.isprintable():
        raise RequestError(f"invalid origin {origin!r}: it must be non-empty printable ASCII "
                           "without spaces or '+'")
    if "://" in origin:
        raise RequestError(f"invalid origin {origin!r}: give the tiles URL prefix without "
                           "its scheme (e.g. ledger.example.org/chronicle/tlog)")
    if origin.endswith("/"):
        raise RequestError(f"invalid origin {origin!r}: no trailing slash")


def load_checkpoint_key(path: Path) -> Ed25519Signer:
    """The checkpoint signer from its key file (Go's ``PRIVATE+KEY+…`` signer key text)."""
    return Ed25519Signer.from_skey(path.read_text().strip())


# --- enabling ---------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class EnableReport:
    """What ``enable`` did: ``backfilled`` entries hashed from the chain (0 if the tree was
    already active), the tree's size once active, the announcing entry's index."""

    origin: str
    vkey: str
    key_file: str
    size: int
    backfilled: int
    announced: int
    already: bool
    seconds: float

    def as_dict(self) -> dict[str, Any]:
        return {"origin": self.origin, "vkey": self.vkey, "key-file": self.key_file,
                "size": self.size, "backfilled": self.backfilled,
                "announced": self.announced, "already-enabled": self.already,
                "seconds": round(self.seconds, 3)}


def _signer_for(path: Path, origin: str) -> Ed25519Signer:
    """The checkpoint key in ``path``, created (mode 0600) if missing; it must be named
    after the origin."""
    if path.exists():
        try:
            signer = load_checkpoint_key(path)
        except ChronicleError as exc:
            raise RequestError(f"{path}: {exc.message}") from None
        if signer.name != origin:
            raise RequestError(f"{path} holds the checkpoint key of {signer.name}, not of "
                               f"{origin}")
        return signer
    signer = Ed25519Signer.generate(origin)
    write_secret_file(path, signer.skey())
    return signer


async def enable(store: Store, ledger: Ledger, server_key: SigningKey, key_path: Path,
                 origin: str, *, clock: Clock, progress: Progress | None = None
                 ) -> EnableReport:
    """Turn the tree on for ``ledger``'s chain (see the module docstring).

    Refuses another origin than the one a tree was enabled (or began building) with,
    and a key file holding another key. Run again with the same origin it finishes what
    an interrupted run left: a build is restarted, a missing announcement appended.
    """
    started = time.monotonic()
    instance = ledger.instance
    check_origin(origin)
    tree = await store.tlog.tree(instance)
    if tree is not None and tree.origin != origin:
        if tree.active:
            raise RequestError(f"the Merkle tree is already enabled with origin "
                               f"{tree.origin}; an origin never changes", status=409)
        raise RequestError(f"enabling the tree with origin {tree.origin} was interrupted; "
                           "finish it with that origin", status=409)
    signer = _signer_for(key_path, origin)
    vkey = signer.vkey()
    if tree is not None and tree.vkey != vkey:
        raise RequestError(f"{key_path} is not the checkpoint key of this tree (its vkey is "
                           f"{tree.vkey})", status=409)
    already = tree is not None and tree.active
    backfilled = 0
    if not already:
        tree = await store.tlog.start_building(instance, origin, vkey, atom(clock()))
        state, backfilled = await _backfill(store, instance, tree.instance_id, progress)
        async with store.write(instance) as tx:
            state = await store.tlog.activate(tx, state)
        log.info("Merkle tree of %s enabled: %d entries", origin, state.size)
    tree = await store.tlog.tree(instance)
    assert tree is not None
    announced = tree.announced
    if announced is None:
        announced = await _announce(store, ledger, server_key, origin, vkey, clock)
    tree = await store.tlog.tree(instance)
    assert tree is not None
    return EnableReport(origin, vkey, str(key_path), tree.size, backfilled, announced,
                        already, time.monotonic() - started)


async def _announce(store: Store, ledger: Ledger, server_key: SigningKey, origin: str,
                    vkey: str, clock: Clock) -> int:
    """Append the server-signed announcement of the vkey; the tree records its index in
    the same transaction, so the key is announced once, however runs are interrupted."""

    message = tree_enabled_message(clock(), origin, vkey)
    signature = server_key.sign(message)

    async def record(tx: WriteTx) -> None:
        # The entry travels alone: it lands right after the head, unless the very same
        # message is stored already (the same second): then the ledger answers with it.
        stored = (await tx.find_signatures([signature])).get(signature)
        head = await tx.head()
        index = stored.index if stored is not None else 0 if head is None else head.index + 1
        if not await store.tlog.mark_announced(tx, index):
            raise RequestError("the checkpoint key was announced meanwhile", status=409)

    entry = await ledger.append(message, server_key.public, signature, action=record)
    return entry.index


async def _backfill(store: Store, instance: str, instance_id: int,
                    progress: Progress | None) -> tuple[merkle.TreeState, int]:
    """Hash the committed chain into stored hashes, page by page, holding no lock; catch
    up with what was appended meanwhile until little is left for the locked catch-up."""
    chain = store.chain(instance)

    async def committed() -> int:
        head = await chain.head()
        return 0 if head is None else head.index + 1

    state = merkle.TreeState.empty()
    pending: list[tuple[int, bytes]] = []
    end = await committed()
    while True:
        async for rows in store.tlog.leaf_rows(instance_id, state.size, end):
            state, stored = state.extend([leaf_hash_of_row(r) for r in rows])
            pending += stored
            if len(pending) >= FLUSH_HASHES:
                await store.tlog.write_hashes(instance_id, pending)
                pending = []
            if progress is not None:
                progress(state.size, end)
        end = await committed()
        if end - state.size <= CATCH_UP_UNLOCKED:
            break
    if pending:
        await store.tlog.write_hashes(instance_id, pending)
    return state, state.size


# --- serving ------------------------------------------------------------------------------------

def _decimal(text: str, what: str) -> int:
    """A canonical decimal (no sign, no leading zeroes), as tlog sizes are written."""
    if not text.isascii() or not text.isdigit() or len(text) > 18 or \
            (len(text) > 1 and text[0] == "0"):
        raise RequestError(f"{what} must be a decimal number without leading zeroes")
    return int(text)


def _note_size(note: str) -> int:
    return Checkpoint.parse(parse_note(note.encode("utf-8"))[0]).size


def _b64_list(hashes: list[bytes]) -> list[str]:
    return [b64u_encode(h) for h in hashes]


@dataclass
class _Served:
    """The checkpoint a process serves for one chain, and when it last checked the tree."""

    checked: float
    checkpoint: IssuedCheckpoint


class TreeLog:
    """The answers under ``/chronicle/tlog/`` (see the module docstring), for any chain
    whose tree is active. Checkpoints are signed with the key in ``key_path``, loaded on
    first use (a tree enabled while the server runs needs no restart)."""

    def __init__(self, store: Store, key_path: Path, clock: Clock,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.store = store
        self.key_path = key_path
        self.clock = clock
        self.monotonic = monotonic
        self._signer: Ed25519Signer | None = None
        self._served: dict[str, _Served] = {}
        self._enabled: dict[str, TreeRecord] = {}
        self._witnessed: dict[str, tuple[float, str | None]] = {}

    async def tree(self, instance: str) -> TreeRecord:
        """The chain's active tree as committed now."""
        tree = await self.store.tlog.tree(instance)
        if tree is None or not tree.active:
            raise NotFoundError(MSG_NO_TREE)
        self._enabled.setdefault(instance, tree)
        return tree

    async def _identity(self, instance: str) -> TreeRecord:
        """The chain's active tree, for what never changes once enabled (its instance id,
        origin and vkey): read once."""
        known = self._enabled.get(instance)
        return known if known is not None else await self.tree(instance)

    # --- checkpoints ----------------------------------------------------------------------

    def _signer_for(self, tree: TreeRecord) -> Ed25519Signer:
        signer = self._signer
        if signer is None or signer.vkey() != tree.vkey:
            try:
                signer = load_checkpoint_key(self.key_path)
            except (OSError, ChronicleError) as exc:
                log.error("cannot load the checkpoint key %s: %s", self.key_path, exc)
                raise ChronicleError(MSG_KEY_UNAVAILABLE, status=500) from None
            if signer.vkey() != tree.vkey:
                log.error("the checkpoint key %s is not the tree's (vkey %s)", self.key_path,
                          tree.vkey)
                raise ChronicleError(MSG_KEY_UNAVAILABLE, status=500)
            self._signer = signer
        return signer

    async def checkpoint(self, instance: str, *, covering: int = 0) -> IssuedCheckpoint:
        """The checkpoint to serve: at most :data:`CHECKPOINT_MAX_AGE` seconds behind the
        committed tree, and at least ``covering`` entries (if the tree has them)."""
        served = self._served.get(instance)
        now = self.monotonic()
        if served is not None and now - served.checked < CHECKPOINT_MAX_AGE and \
                served.checkpoint.size >= covering:
            return served.checkpoint
        tree = await self.tree(instance)
        if served is not None and served.checkpoint.size == tree.size:
            served.checked = now
            return served.checkpoint
        issued = await self.store.tlog.checkpoint(tree.instance_id, tree.size)
        if issued is None:
            issued = self._issue(tree)
            try:
                await self.store.tlog.record_checkpoint(tree.instance_id, issued)
            except StorageError as exc:  # e.g. a read-only database: serve it anyway
                log.warning("checkpoint at size %d not recorded: %s", issued.size,
                            exc.message)
        self._served[instance] = _Served(now, issued)
        return issued

    async def witnessed(self, instance: str) -> str | None:
        """The newest checkpoint with the cosignatures of a quorum of witnesses (as the
        witnessing job published it), read at most once a second."""
        now = self.monotonic()
        cached = self._witnessed.get(instance)
        if cached is not None and now - cached[0] < CHECKPOINT_MAX_AGE:
            return cached[1]
        note = await self.store.jobs.get(WITNESSED + instance)
        self._witnessed[instance] = (now, note)
        return note

    async def publish_witnessed(self, instance: str, note: str) -> None:
        """Serve ``note`` (a checkpoint with its witnesses' cosignature lines)."""
        await self.store.jobs.set(WITNESSED + instance, note)
        self._witnessed[instance] = (self.monotonic(), note)

    async def served_note(self, instance: str, *, quorum: int) -> str:
        """What ``GET checkpoint`` answers. Without a quorum: the current checkpoint, with
        the witnesses' cosignatures once they have them. With one (``witness-quorum`` K >
        0): only a checkpoint K witnesses cosigned, the newest, even if the tree is ahead
        of it (clients that require witnesses see only what witnesses saw)."""
        issued = await self.checkpoint(instance)
        witnessed = await self.witnessed(instance)
        if quorum > 0:
            if witnessed is None:
                raise ChronicleError(f"No checkpoint has been cosigned by {quorum} "
                                     "witness(es) yet; retry later", status=503,
                                     headers={"Retry-After": "10"})
            return witnessed
        if witnessed is not None and _note_size(witnessed) == issued.size:
            return witnessed
        return issued.note

    def witnessing(self, instance: str) -> ChainCheckpoints:
        """The chain's tree as the witnessing job sees it (its ``CheckpointLog``)."""
        return ChainCheckpoints(self, instance)

    def _issue(self, tree: TreeRecord) -> IssuedCheckpoint:
        root = tree.state().root()
        note = sign_checkpoint(Checkpoint(tree.origin, tree.size, root),
                               self._signer_for(tree))
        return IssuedCheckpoint(tree.size, root, note.decode("utf-8"), atom(self.clock()))

    # --- proofs ---------------------------------------------------------------------------

    async def _size(self, tree: TreeRecord, size_text: str | None) -> int:
        size = _decimal(size_text, "Tree size") if size_text is not None else tree.size
        if size > tree.size:
            raise NotFoundError(f"Tree size {size} is beyond the current tree (size "
                                f"{tree.size})")
        return size

    async def _entry(self, instance: str, ref: str) -> Entry:
        """The entry a proof is asked for: by leaf index, or by currhash."""
        chain = self.store.chain(instance)
        if ref.isascii() and ref.isdigit():  # a currhash is never all digits (it ends in =)
            entry = await chain.entry_at(_decimal(ref, "Leaf index"))
            if entry is None:
                raise NotFoundError(f"Entry {ref} is not on the chain")
            return entry
        try:
            raw = b64u_decode(ref, 32)
        except EncodingError:
            raise NotFoundError(MSG_NO_HASH) from None
        found = [e for e in await chain.lookup(raw) if e.currhash == raw]
        if not found:
            raise NotFoundError(MSG_NO_HASH)
        return found[0]

    async def _hashes(self, tree: TreeRecord, *groups: list[int]) -> list[list[bytes]]:
        """The stored hashes of several index lists, read in one query."""
        every = [i for g in groups for i in g]
        found = dict(zip(every, await self.store.tlog.hashes(tree.instance_id, every),
                         strict=True))
        return [[found[i] for i in g] for g in groups]

    async def inclusion(self, instance: str, ref: str, size_text: str | None
                        ) -> dict[str, Any]:
        """An inclusion proof of the entry ``ref`` (index or currhash) in the tree of the
        given size, else of the checkpoint served now (with that checkpoint's note)."""
        tree = await self._identity(instance)
        entry = await self._entry(instance, ref)
        checkpoint: IssuedCheckpoint | None
        if size_text is None:
            checkpoint = await self.checkpoint(instance, covering=entry.index + 1)
            size = checkpoint.size
        else:
            size = await self._size(await self.tree(instance), size_text)
            checkpoint = await self.store.tlog.checkpoint(tree.instance_id, size)
        if entry.index >= size:
            raise NotFoundError(f"Entry {entry.index} is not in the tree of size {size}")
        roots = [] if checkpoint is not None else merkle.tree_hash_indexes(size)
        path, root_hashes = await self._hashes(
            tree, merkle.inclusion_indexes(entry.index, size), roots)
        root = checkpoint.root if checkpoint is not None else merkle.tree_hash(size,
                                                                                root_hashes)
        leaf = LeafRecord.of(entry)
        return {"origin": tree.origin, "index": entry.index, "tree-size": size,
                "root": b64u_encode(root), "leaf": b64u_encode(leaf.to_bytes()),
                "leaf-hash": b64u_encode(leaf.leaf_hash()),
                "currhash": b64u_encode(entry.currhash),
                "proof": _b64_list(merkle.inclusion_proof(entry.index, size, path)),
                "checkpoint": None if checkpoint is None else checkpoint.note}

    async def consistency_hashes(self, instance: str, old: int, new: int) -> list[bytes]:
        """The RFC 6962 consistency proof between committed sizes ``0 < old <= new``."""
        tree = await self.tree(instance)
        if not 0 < old <= new <= tree.size:
            raise RequestError(f"No consistency proof from size {old} to size {new}")
        (stored,) = await self._hashes(tree, merkle.consistency_indexes(old, new))
        return merkle.consistency_proof(old, new, stored)

    async def consistency(self, instance: str, old_text: str, new_text: str
                          ) -> dict[str, Any]:
        """A consistency proof from tree size ``old`` to ``new`` (both committed)."""
        tree = await self.tree(instance)
        old = _decimal(old_text, "Tree size")
        new = await self._size(tree, new_text)
        if old > new:
            raise RequestError(f"No consistency proof from size {old} to size {new}")
        proof, old_hashes, new_hashes = await self._hashes(
            tree, merkle.consistency_indexes(old, new), merkle.tree_hash_indexes(old),
            merkle.tree_hash_indexes(new))
        return {"origin": tree.origin, "old-size": old, "new-size": new,
                "old-root": b64u_encode(merkle.tree_hash(old, old_hashes)),
                "new-root": b64u_encode(merkle.tree_hash(new, new_hashes)),
                "proof": _b64_list(merkle.consistency_proof(old, new, proof))}

    # --- tiles ------------------------------------------------------------------------------

    async def tile(self, instance: str, path: str) -> tuple[merkle.Tile, bytes]:
        """A hash tile or entry bundle (``path`` as after ``/chronicle/tlog/``) of the
        committed tree; one the tree does not (yet) have is not found."""
        tile = merkle.Tile.parse(path)
        tree = await self.tree(instance)
        have = merkle.tile_width_at(tile.level, tile.n, tree.size)
        if tile.width > have:
            raise NotFoundError(f"Tile {tile.path()} is not in the tree (size {tree.size})")
        if not tile.is_entries:
            hashes = await self.store.tlog.hashes(tree.instance_id, tile.stored_indexes())
            return tile, merkle.encode_tile(hashes)
        entries = await self.store.chain(instance).range(tile.start, tile.start + tile.width)
        if len(entries) != tile.width:
            raise StorageError(f"entries {tile.start}..{tile.start + tile.width - 1} are "
                               "missing from the chain")
        return tile, merkle.encode_entry_bundle([LeafRecord.of(e).to_bytes()
                                                 for e in entries])


@dataclass(frozen=True)
class ChainCheckpoints:
    """One chain's tree for the witnessing job (chronicle.replication.witnessing's
    ``CheckpointLog``): its newest checkpoint (None while the tree is off or empty),
    consistency proofs, and where a checkpoint with a quorum of cosignatures is served."""

    tlog: TreeLog
    instance: str

    async def latest_checkpoint(self) -> bytes | None:
        try:
            issued = await self.tlog.checkpoint(self.instance)
        except NotFoundError:
            return None
        return issued.note.encode("utf-8") if issued.size > 0 else None

    async def consistency_proof(self, old: int, new: int) -> list[bytes]:
        return await self.tlog.consistency_hashes(self.instance, old, new)

    async def publish_cosigned(self, note: bytes, quorum: object) -> None:
        await self.tlog.publish_witnessed(self.instance, note.decode("utf-8"))
