"""Replication, cross-signing and attestation: the pure parts (protocol.md "Replication,
cross-signing, attestation"; vectors README "Replication, attestation, cross-signing").

- :class:`ReplicaVerifier` turns rows of an upstream's ``export`` / ``since`` answer into
  storable :class:`~chronicle.core.blakechain.Entry` objects, checking link, currhash and
  summaryhash on the way (:class:`~chronicle.core.verify.ChainVerifier`); entry signatures
  are handed back to the caller, which checks them in parallel before storing anything.
- Renderers for the replica API (``/replica``, ``/replica/{source}/…``), with PHP
  Chronicle 1.3.1's exact key orders and wording.
- The two messages servers sign about each other: the scheduled attestation of replicated
  heads, and the cross-sign message a server publishes on a peer; and the cross-sign
  policy (``push-after`` entries and/or ``push-days``).
- Fault kinds a replica adds to :mod:`chronicle.core.verify`, and which of them mean the
  upstream *forked* (showed a history that conflicts with one it showed before) rather
  than merely *failed* (sent something that does not verify).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from chronicle.core import protocol
from chronicle.core.blakechain import Entry
from chronicle.core.encoding import atom, b64u_encode, decode_b64_field, php_json
from chronicle.core.errors import EncodingError
from chronicle.core.verify import (
    BrokenLinkError,
    ChainFault,
    ChainState,
    ChainVerifier,
    DocumentSignatureError,
    HistoryRewrittenError,
    RowKeys,
    SignedContents,
    SplitViewError,
)

#: The extra member PHP puts in replica ``lasthash`` and ``lookup`` answers.
NOTICE = "This is replicated data from another Chronicle."

STATUS_ACTIVE = "active"
STATUS_FORKED = "forked"
STATUS_FAILED = "failed"
STATUSES = (STATUS_ACTIVE, STATUS_FORKED, STATUS_FAILED)


# --- faults ---------------------------------------------------------------------------------

class TruncatedError(HistoryRewrittenError):
    """The upstream's chain is now shorter than the copy we verified: entries vanished."""

    kind = "truncated"


class KeyChangedError(DocumentSignatureError):
    """The upstream announces (and signs with) another server key than the pinned one.

    Nothing it says is believed until an operator pins the new key (``replica set-key``).
    """

    kind = "key-changed"


class ForkedLinkError(BrokenLinkError):
    """The first entry after our verified head does not link to it: the upstream's chain
    has another entry at a position we already hold."""

    kind = "history-rewritten"


#: Fault kinds that mean two conflicting histories were shown (status ``forked``); every
#: other fault means an answer did not verify (status ``failed``).
class TreeForkError(HistoryRewrittenError):
    """The upstream's signed checkpoints do not describe one growing Merkle tree: a
    smaller tree, another root at the same size, or no valid consistency proof."""


FORK_KINDS = frozenset({"history-rewritten", "truncated", "split-view"})


def status_for(fault: ChainFault) -> str:
    return STATUS_FORKED if fault.kind in FORK_KINDS else STATUS_FAILED


def fault_details(fault: ChainFault) -> dict[str, Any]:
    details = fault.as_dict()
    if isinstance(fault, SplitViewError):
        details["peers"] = fault.peers
    return details


# --- verified copying -----------------------------------------------------------------------

class ReplicaVerifier:
    """Verify upstream rows in chain order and build the entries to store.

    Starts at genesis (``head=None``) or after the newest stored entry, whose hash state
    lets every summaryhash be recomputed. Rows may come in export shape
    (``prev/hash/summary``) or row shape (``prevhash/currhash/summaryhash``); a first
    ``prev`` of ``""`` (a PHP replica's export) is accepted like ``null``.

    :meth:`check` raises the row's first fault (link, currhash, summaryhash; a broken link
    right after our head is a :class:`ForkedLinkError`) or returns the entry and what its
    signature covers; the caller must verify that signature before storing the entry.
    ``created`` is kept exactly as received (the hash covers the string).
    """

    __slots__ = ("_first", "_verifier")

    def __init__(self, head: Entry | None, *, keys: RowKeys | None = None) -> None:
        if head is None:
            self._verifier = ChainVerifier(None, keys=keys, track_hashstate=True)
        else:
            if not head.hashstate:
                raise ValueError("a replica head needs its hash state to continue from it")
            start = ChainState(head.index + 1, head.currhash, head.summaryhash, head.hashstate,
                               head.created)
            self._verifier = ChainVerifier(start, keys=keys)
        self._first = head is not None

    @property
    def count(self) -> int:
        return self._verifier.count

    @property
    def last_currhash(self) -> bytes | None:
        return self._verifier.last_currhash

    @property
    def last_summaryhash(self) -> bytes | None:
        return self._verifier.last_summaryhash

    def expect_keys(self, keys: RowKeys | None) -> None:
        self._verifier.expect_keys(keys)

    def check(self, row: Any) -> tuple[Entry, SignedContents]:
        verifier = self._verifier
        prev = verifier.last_currhash
        try:
            signed = verifier.check(row)
        except BrokenLinkError as exc:
            if self._first and not isinstance(exc, ForkedLinkError):
                raise ForkedLinkError("the upstream's entry after our verified head links "
                                      "elsewhere: another history", index=exc.index,
                                      field=exc.field, expected=exc.expected,
                                      found=exc.found) from None
            raise
        self._first = False
        currhash = verifier.last_currhash
        summaryhash = verifier.last_summaryhash
        hashstate = verifier.hashstate
        assert currhash is not None
        assert summaryhash is not None
        assert hashstate is not None
        entry = Entry(signed.index, signed.contents, prev, currhash, summaryhash, hashstate,
                      signed.publickey, signed.signature, row["created"])
        return entry, signed


# --- the replica API (GET /chronicle/replica[/{source}[/...]]) ----------------------------

def source_path(uniqueid: str) -> str:
    """Where a source's copy is served, relative to ``/chronicle`` (as PHP's links)."""
    return f"/replica/{uniqueid}"


def source_urls(uniqueid: str) -> list[dict[str, str]]:
    base = source_path(uniqueid)
    return [
        {"uri": f"{base}/lasthash",
         "description": "Get information about the latest entry in this replicated Chronicle"},
        {"uri": f"{base}/lookup/{{hash}}",
         "description": "Lookup the information for the given hash in this replicated "
                        "Chronicle"},
        {"uri": f"{base}/since/{{hash}}",
         "description": "List all new entries since a given hash in this replicated Chronicle"},
        {"uri": f"{base}/export", "description": "Export the entire replicated Chronicle"},
    ]


def public_url(url: str) -> str:
    """A source's URL as it may be shown: without the ``user:password@`` an operator may
    have put in it to reach the upstream."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]))


def index_row(uniqueid: str, canonical: str, name: str, public_key: bytes, *,
              status: str = STATUS_ACTIVE, fault: str | None = None) -> dict[str, Any]:
    """One row of ``GET /chronicle/replica`` (key order as PHP); a stopped source adds
    ``status`` and ``fault`` (its subindex says why)."""
    row: dict[str, Any] = {
        "uniqueid": uniqueid,
        "canonical": public_url(canonical),
        "name": name,
        "serverPublicKey": b64u_encode(public_key),
        "index": source_path(uniqueid),
        "urls": source_urls(uniqueid),
    }
    if status != STATUS_ACTIVE:
        row.update({"status": status, "fault": fault})
    return row


def subindex(uniqueid: str, canonical: str, public_key: bytes, *, status: str = STATUS_ACTIVE,
             fault: str | None = None, reason: str | None = None,
             since: str | None = None) -> dict[str, Any]:
    """``GET /chronicle/replica/{source}``. A healthy source answers exactly as PHP; a
    source that stopped adds ``status`` (``forked`` / ``failed``), ``fault``, ``reason``
    and ``since`` after PHP's members."""
    body: dict[str, Any] = {
        "uniqueid": uniqueid,
        "serverPublicKey": b64u_encode(public_key),
        "canonical": public_url(canonical),
        "urls": source_urls(uniqueid),
    }
    if status != STATUS_ACTIVE:
        body.update({"status": status, "fault": fault, "reason": reason, "since": since})
    return body


def lasthash_results(head: Entry | None) -> dict[str, str] | list[Any]:
    """Replica ``lasthash``: an object ``{"curr-hash", "summary-hash"}`` (``[]`` when the
    copy is still empty)."""
    if head is None:
        return []
    return {"curr-hash": b64u_encode(head.currhash),
            "summary-hash": b64u_encode(head.summaryhash)}


def row(entry: Entry) -> dict[str, Any]:
    """A replica row: the first entry's ``prevhash`` is ``""`` (as PHP stores it)."""
    return protocol.row(entry, first_prev="")


def export_row(entry: Entry) -> dict[str, Any]:
    return protocol.export_row(entry, first_prev="")


def render_row_indented(entry: Entry, *, export: bool) -> str:
    return protocol.render_row_indented(entry, export=export, first_prev="")


# --- attestation --------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class ReplicatedHead:
    """The newest verified entry of one replicated source."""

    source: str
    currhash: bytes
    summaryhash: bytes


def attestation_message(now: datetime, heads: Sequence[ReplicatedHead]) -> bytes:
    """The scheduled attestation a replicating server appends to its own chain (chain B's
    first entry in the vectors): pretty JSON of ``version``, ``datetime`` and
    ``replication-hashes``."""
    return php_json({
        "version": protocol.VERSION,
        "datetime": atom(now),
        "replication-hashes": [
            {"currhash": b64u_encode(h.currhash), "summaryhash": b64u_encode(h.summaryhash),
             "source": h.source} for h in heads],
    }).encode("ascii")


# --- cross-signing --------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class CrossSignPolicy:
    """When to publish our head on a peer: after ``push_after`` new entries, and/or when
    the last cross-sign is ``push_days`` old. Either alone is a valid policy (PHP 1.3.1
    breaks publishing with ``push-after`` alone)."""

    push_after: int | None = None
    push_days: float | None = None

    def __post_init__(self) -> None:
        if self.push_after is None and self.push_days is None:
            raise EncodingError("a cross-sign policy needs push-after and/or push-days")
        if self.push_after is not None and self.push_after < 1:
            raise EncodingError("push-after must be at least 1")
        if self.push_days is not None and self.push_days <= 0:
            raise EncodingError("push-days must be positive")

    def as_json(self) -> str:
        """PHP's ``json_encode`` of the options (the ``policy`` column of its table)."""
        policy: dict[str, Any] = {}
        if self.push_after is not None:
            policy["push-after"] = self.push_after
        if self.push_days is not None:
            days = self.push_days
            policy["push-days"] = int(days) if float(days).is_integer() else days
        return json.dumps(policy, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> CrossSignPolicy:
        try:
            data = json.loads(text)
        except ValueError:
            raise EncodingError(f"invalid cross-sign policy {text!r}") from None
        if not isinstance(data, dict):
            raise EncodingError(f"invalid cross-sign policy {text!r}")
        after, days = data.get("push-after"), data.get("push-days")
        if after is not None and (not isinstance(after, int) or isinstance(after, bool)):
            raise EncodingError("push-after must be a whole number")
        if days is not None and (not isinstance(days, int | float) or isinstance(days, bool)):
            raise EncodingError("push-days must be a number")
        return cls(after, None if days is None else float(days))

    def due(self, *, head_index: int | None, last_index: int | None,
            last_run: datetime | None, now: datetime) -> bool:
        """Is a cross-sign due? Never for an empty chain or an unchanged head; always the
        first time; then by count (``head - last >= push-after``) or by age."""
        if head_index is None:
            return False
        if last_index is None or last_run is None:
            return True
        if head_index <= last_index:
            return False
        if self.push_after is not None and head_index - last_index >= self.push_after:
            return True
        return self.push_days is not None and now - last_run >= timedelta(days=self.push_days)


def cross_sign_message(target: bytes, now: datetime, currhash: bytes,
                       summaryhash: bytes) -> bytes:
    """What a server publishes on a peer: its head, addressed to the peer's key. Pretty
    JSON exactly as Sapient's ``createSignedJsonRequest`` sends it (vectors, exchange 106)."""
    return php_json({
        "target": b64u_encode(target),
        "cross-sign-at": atom(now),
        "currhash": b64u_encode(currhash),
        "summaryhash": b64u_encode(summaryhash),
    }).encode("ascii")


@dataclass(frozen=True, slots=True)
class CrossSignClaim:
    """A cross-sign message found on a peer's chain: the signer's head at ``at``."""

    target: bytes
    at: str
    currhash: bytes
    summaryhash: bytes


def parse_cross_sign(contents: bytes) -> CrossSignClaim | None:
    """The claim in an entry's contents, or None when it is not a cross-sign message."""
    if not contents.lstrip().startswith(b"{"):
        return None
    try:
        data = json.loads(contents)
    except (ValueError, RecursionError):
        return None
    if not isinstance(data, dict) or not isinstance(data.get("cross-sign-at"), str):
        return None
    target = decode_b64_field(data.get("target"), 32)
    currhash = decode_b64_field(data.get("currhash"), 32)
    summaryhash = decode_b64_field(data.get("summaryhash"), 32)
    if target is None or currhash is None or summaryhash is None:
        return None
    return CrossSignClaim(target, data["cross-sign-at"], currhash, summaryhash)


# --- scheduling -----------------------------------------------------------------------------

def backoff_delay(interval: float, failures: int, *, maximum: float, rand: float,
                  jitter: float = 0.25) -> float:
    """Seconds to wait before the next attempt: ``interval`` when healthy, doubling with
    each consecutive failure up to ``maximum``; spread by ±``jitter`` (``rand`` in [0, 1))
    so that many replicas of one upstream do not retry in lockstep."""
    base = interval if failures <= 0 else min(maximum, interval * 2.0 ** min(failures, 30))
    return max(0.0, base * (1.0 + jitter * (2.0 * rand - 1.0)))
