"""Do two views of one chain agree? The pure decisions behind split-view detection.

A verifier that holds a head (an auditor after its walk, a replica after a sync) asks
other Chronicles about it. Each answer becomes a :class:`PeerReport` whose
:class:`PeerStatus` is decided here from what the peer signed; :func:`split_view` then
turns the reports into a verdict (a :class:`~chronicle.core.verify.SplitViewError`, or
nothing). The same rules serve ``chronicle audit --peer`` and the replica follower's peers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from chronicle.core.verify import SplitViewError


class PeerStatus(StrEnum):
    AGREES = "agrees"          # the peer holds our head (or an older entry of our chain)
    AHEAD = "ahead"            # the peer holds our head and entries after it
    BEHIND = "behind"          # the peer's chain is still empty
    MISSING = "missing"        # the peer does not know our head (we cannot tell more)
    DISAGREES = "disagrees"    # the peer shows another entry where we hold ours: a fork
    ERROR = "error"            # the peer could not be asked (or its answer did not verify)


@dataclass(frozen=True, slots=True)
class Head:
    """The head being compared: base64url currhash and summaryhash, and its index."""

    currhash: str
    summaryhash: str
    index: int | None = None


@dataclass(frozen=True, slots=True)
class PeerReport:
    """What one peer said about our head (the JSON of ``peers`` in reports and faults)."""

    url: str
    status: PeerStatus
    kind: str | None = None            # a replica follower's peer: ``replica`` / ``xsign``
    pinned: bool | None = None         # an auditor's peer: was its key pinned by the user
    public_key: str | None = None
    currhash: str | None = None        # the peer's currhash for our summaryhash
    head: str | None = None            # the peer's own head (summaryhash)
    field: str | None = None           # what differs: ``currhash`` or ``summaryhash``
    expected: str | None = None
    found: str | None = None
    index: int | None = None
    claims: int | None = None          # cross-sign claims found on an xsign peer
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        fields: tuple[tuple[str, Any], ...] = (
            ("url", self.url), ("kind", self.kind), ("pinned", self.pinned),
            ("public-key", self.public_key), ("status", str(self.status)),
            ("currhash", self.currhash), ("head", self.head), ("expected", self.expected),
            ("found", self.found), ("index", self.index), ("claims", self.claims),
            ("error", self.error))
        return {name: value for name, value in fields if value is not None}


def judge_lookup(head: Head, rows: Any) -> tuple[PeerStatus, str | None]:
    """The peer's signed ``lookup`` of our summaryhash: does its entry carry our currhash?

    Returns the status (agrees / disagrees) and the currhash the peer shows, if any.
    """
    shown: str | None = None
    if isinstance(rows, list):
        for row in rows:
            if isinstance(row, dict) and row.get("summaryhash") == head.summaryhash:
                currhash = row.get("currhash")
                shown = currhash if isinstance(currhash, str) else None
                if shown == head.currhash:
                    return PeerStatus.AGREES, shown
    return PeerStatus.DISAGREES, shown


def split_view(head: Head, reports: Sequence[PeerReport], *, quorum: int | None = None
               ) -> SplitViewError | None:
    """The verdict over every peer: a split view when any peer disagrees, or when fewer
    than ``quorum`` peers confirm the head; None when the head stands."""
    disagree = [r for r in reports if r.status == PeerStatus.DISAGREES]
    peers = [r.as_dict() for r in reports]
    if disagree:
        first = disagree[0]
        return SplitViewError(
            f"split view: {len(disagree)} peer(s) show another history for our head "
            f"({first.url})", index=first.index if first.index is not None else head.index,
            field=first.field or "currhash", expected=first.expected or head.currhash,
            found=first.found if first.expected else first.currhash, peers=peers)
    confirmed = sum(1 for r in reports if r.status in (PeerStatus.AGREES, PeerStatus.AHEAD))
    if quorum is not None and confirmed < quorum:
        return SplitViewError(f"only {confirmed} peer(s) confirm the head, quorum is {quorum}",
                              field="currhash", expected=head.currhash,
                              found=f"{confirmed} confirmations", peers=peers)
    return None
