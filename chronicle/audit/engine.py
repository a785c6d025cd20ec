"""The audit engine: rows in, the first fault (by chain order) out. No I/O here.

Sequential part (this thread): :class:`~chronicle.core.verify.ChainVerifier` checks each
row's link, currhash and summaryhash. Parallel part: the signature pool checks entry
signatures (:class:`~chronicle.client.sigpool.InOrder`). A fault is reported for the
lowest entry index at which anything is wrong,
and within an entry in the order signature, link, currhash, summaryhash — whatever the
scheduling, the same damaged chain gets the same diagnosis.

Incremental audits: with a remembered :class:`ChainState` the engine either continues
from it (a ``since`` stream: only new entries arrive) or, re-reading a whole export,
re-hashes the old prefix (cheap) but skips its signatures (they were verified last time;
the recomputed summaryhash equal to the remembered one proves the prefix is unchanged),
and insists the remembered head is still there.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from chronicle.client.sigpool import InOrder
from chronicle.core.checkpoint import Checkpoint
from chronicle.core.encoding import b64u_encode
from chronicle.core.leaf import LeafRecord
from chronicle.core.merkle import TreeState
from chronicle.core.verify import (
    AnchorError,
    ChainFault,
    ChainState,
    ChainVerifier,
    HashMismatchError,
    HistoryRewrittenError,
    RowKeys,
    SignedContents,
)


@dataclass
class AuditReport:
    """What a successful audit proved."""

    source: str
    entries: int = 0
    verified: int = 0
    resumed_from: int | None = None
    first_currhash: str | None = None
    last: dict[str, Any] | None = None
    anchors: list[dict[str, Any]] = field(default_factory=list)
    peers: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    state: ChainState | None = None
    state_file: str | None = None
    tlog: dict[str, Any] | None = None
    tree: TreeState | None = None

    def as_dict(self) -> dict[str, Any]:
        rate = self.verified / self.seconds if self.seconds > 0 else None
        tlog = {} if self.tlog is None else {"tlog": self.tlog}
        return {
            "ok": True,
            "source": self.source,
            "entries": self.entries,
            "verified": self.verified,
            "resumed-from": self.resumed_from,
            "first": None if self.first_currhash is None else {
                "index": 0, "currhash": self.first_currhash},
            "last": self.last,
            "anchors": self.anchors,
            "peers": self.peers,
            "seconds": round(self.seconds, 3),
            "entries-per-second": None if rate is None else round(rate, 1),
            "state-file": self.state_file,
            **tlog,
        }


class TreeCheck:
    """``audit --tlog``: the Merkle tree over the audited entries' leaf records
    (docs/tlog-leaf.md), held against a signed checkpoint: the chain must reach the
    checkpoint's size and the tree at that size must have its root.

    ``state`` continues the tree of entries audited before (a resumed audit).
    """

    def __init__(self, checkpoint: Checkpoint, state: TreeState | None = None) -> None:
        self.checkpoint = checkpoint
        self.state = state or TreeState.empty()
        self.root: bytes | None = self.state.root() if self.state.size == checkpoint.size \
            else None
        self._leaves: list[bytes] = []

    def add(self, verifier: ChainVerifier, signed: SignedContents) -> None:
        """The entry ``verifier`` just checked (its created and currhash are the last)."""
        created, currhash = verifier.last_created, verifier.last_currhash
        assert created is not None
        assert currhash is not None
        self._leaves.append(LeafRecord.build(created, signed.publickey, signed.signature,
                                             signed.contents, currhash).leaf_hash())

    def flush(self) -> None:
        leaves, self._leaves = self._leaves, []
        cut = self.checkpoint.size - self.state.size
        if 0 < cut <= len(leaves):  # the checkpoint's size falls in this batch
            self.state = self.state.extend(leaves[:cut])[0]
            self.root = self.state.root()
            leaves = leaves[cut:]
        if leaves:
            self.state = self.state.extend(leaves)[0]

    def finish(self) -> dict[str, Any]:
        """Raise the fault if the audited chain does not match the checkpoint; else what
        was proven."""
        self.flush()
        want = self.checkpoint
        if self.root is None:
            raise AnchorError("the chain ends before the signed checkpoint's tree size: "
                              "truncated (or another chain)", index=self.state.size,
                              field="tree-size", expected=str(want.size),
                              found=str(self.state.size))
        if self.root != want.root:
            raise HashMismatchError("the tree over the audited entries does not have the "
                                    "signed checkpoint's root", index=want.size - 1,
                                    field="root", expected=b64u_encode(want.root),
                                    found=b64u_encode(self.root))
        return {"origin": want.origin, "tree-size": want.size, "root": b64u_encode(want.root),
                "status": "matches"}


class ChainAuditor:
    """Feed it rows in chain order; it raises the first fault, or :meth:`finish` passes."""

    def __init__(self, pool: InOrder, *, start: ChainState | None = None,
                 remembered: ChainState | None = None, keys: RowKeys | None = None,
                 track_hashstate: bool = False, anchors: Iterable[bytes] = (),
                 on_rows: Callable[[int], None] | None = None,
                 tree: TreeCheck | None = None) -> None:
        self.pool = pool
        self.tree = tree
        self.verifier = ChainVerifier(start, keys=keys, track_hashstate=track_hashstate,
                                      anchors=anchors)
        self.start_count = self.verifier.count
        # Re-reading a whole export after an earlier audit: skip re-verifying signatures
        # of the prefix that audit covered, and check its head is still where it was.
        self.remembered = remembered if start is None and remembered and remembered.count \
            else None
        self._skip_below = self.remembered.count if self.remembered else 0
        self.first_currhash: str | None = None
        self.on_rows = on_rows

    @property
    def count(self) -> int:
        return self.verifier.count

    @property
    def verified(self) -> int:
        """Entries whose signatures this run checks (new ones)."""
        return self.verifier.count - max(self.start_count, self._skip_below)

    def feed(self, rows: list[Any]) -> None:
        check = self.verifier.check
        submit = self.pool.submit
        skip = self._skip_below
        for row in rows:
            try:
                signed = check(row)
            except ChainFault as fault:
                raise self.pool.failure_upto(
                    fault.index if fault.index is not None else self.verifier.count) or fault \
                    from None
            index = signed.index
            if self.tree is not None:
                self.tree.add(self.verifier, signed)
            if index >= skip:
                submit(signed)
            elif index == skip - 1:
                self._check_remembered()
            if index == 0:
                self.first_currhash = b64u_encode(self.verifier.last_currhash or b"")
        if rows:
            if self.tree is not None:
                self.tree.flush()
            self.pool.poll()
            if self.on_rows is not None:
                self.on_rows(self.verifier.count)

    def _check_remembered(self) -> None:
        assert self.remembered is not None
        index = self.remembered.count - 1
        for name, found, expected in (
                ("summaryhash", self.verifier.last_summaryhash, self.remembered.summaryhash),
                ("currhash", self.verifier.last_currhash, self.remembered.currhash)):
            if found != expected:
                raise HistoryRewrittenError(
                    f"the entry audited earlier as #{index} has changed: history was "
                    "rewritten", index=index, field=name,
                    expected=None if expected is None else b64u_encode(expected),
                    found=None if found is None else b64u_encode(found))

    def finish(self) -> None:
        """All rows fed: wait for the signatures, check the remembered head was reached."""
        self.pool.finish()
        if self.remembered is not None and self.verifier.count < self.remembered.count:
            raise HistoryRewrittenError(
                f"the chain has {self.verifier.count} entries but an earlier audit verified "
                f"{self.remembered.count}: its head is no longer on the chain",
                index=self.verifier.count, field="summaryhash",
                expected=None if self.remembered.summaryhash is None
                else b64u_encode(self.remembered.summaryhash), found="end of chain")

    def last(self) -> dict[str, Any] | None:
        v = self.verifier
        if v.count == 0 or v.last_currhash is None or v.last_summaryhash is None:
            return None
        return {"index": v.count - 1, "currhash": b64u_encode(v.last_currhash),
                "summaryhash": b64u_encode(v.last_summaryhash), "created": v.last_created}
