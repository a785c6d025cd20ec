"""What the store keeps besides chain entries: plain frozen records, backend-neutral.

Hashes, keys and signatures are raw bytes; times are the ATOM strings that were stored.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class Client:
    """A registered publisher. ``publicid`` is the ``Chronicle-Client-Key-ID`` value."""

    publicid: str
    publickey: bytes
    is_admin: bool
    comment: str | None
    created: str
    revoked: str | None = None


@dataclass(frozen=True, slots=True)
class Mirror:
    url: str
    publickey: str
    comment: str | None
    sortpriority: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Remote:
    """Another Chronicle we talk to for one of our chains, pinned by its server key.

    ``url`` is its API base (``…/chronicle``). ``last_attempt``, ``last_error`` and
    ``failures`` (consecutive) record how the last tries went; they drive the backoff.
    """

    name: str
    url: str
    publickey: bytes
    instance: str = ""
    id: int = 0
    created: str = ""
    last_attempt: str | None = None
    last_error: str | None = None
    failures: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class ReplicaSource(Remote):
    """An upstream Chronicle this server copies (PHP: ``chronicle_replication_sources``).

    ``uniqueid`` is the public id in ``/replica/{uniqueid}`` (base64url of 33 random bytes,
    as PHP). ``status`` is ``active``, or ``forked`` / ``failed`` once a fault stopped it
    (``fault`` names the kind, ``reason`` says why, since ``status_since``); ``last_sync``
    is the last successful sync.
    """

    uniqueid: str
    status: str = "active"
    fault: str | None = None
    reason: str | None = None
    status_since: str | None = None
    last_sync: str | None = None


@dataclass(frozen=True, slots=True)
class ReplicaPeer:
    """Another view of a source's history to compare heads with (split-view detection).

    ``kind`` is ``replica`` (the same chain served elsewhere: another replica's
    ``…/replica/{id}``, or the upstream at another address) or ``xsign`` (a Chronicle the
    upstream cross-signs its head onto; ``cursor`` is how far its chain was scanned).
    """

    url: str
    publickey: bytes | None = None
    kind: str = "replica"
    cursor: str | None = None
    id: int = 0


@dataclass(frozen=True, slots=True)
class EvidenceDocument:
    """One signed answer kept as evidence: the exact bytes (or, when very large, a file
    under the data directory) with the signature header it came with."""

    role: str
    method: str
    url: str
    status: int
    signature: str | None
    signer: bytes | None
    body: bytes | None = None
    file: str | None = None
    size: int = 0
    sha256: str = ""


@dataclass(frozen=True, slots=True)
class ReplicaFault:
    """Why a source stopped (``status`` forked or failed), with its evidence."""

    status: str
    kind: str
    message: str
    recorded: str
    details: dict[str, Any] = field(default_factory=dict)
    documents: tuple[EvidenceDocument, ...] = ()
    id: int = 0


@dataclass(frozen=True, slots=True)
class KeyRecord:
    """One pinned server key of a source and when it was in force (key rotations)."""

    publickey: bytes
    since: str
    retired: str | None = None
    reason: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class XsignTarget(Remote):
    """A peer Chronicle we publish our head on (PHP: ``chronicle_xsign_targets``).

    ``clientid`` is our server key's client id on the peer; ``policy`` the JSON of
    ``push-after`` / ``push-days`` (as PHP stores it); ``last_index`` is the index of our
    entry that was last cross-signed successfully, at ``last_run``.
    """

    clientid: str
    policy: str
    last_index: int | None = None
    last_run: str | None = None


@dataclass(frozen=True, slots=True)
class XsignReceipt:
    """One cross-sign push: our head, the message we signed, the peer's signed answer."""

    target_id: int
    recorded: str
    status: str
    index: int
    currhash: bytes
    summaryhash: bytes
    message: bytes
    signature: str
    peer_currhash: str | None = None
    peer_summaryhash: str | None = None
    peer_created: str | None = None
    response: bytes | None = None
    response_signature: str | None = None
    error: str | None = None
    id: int = 0
