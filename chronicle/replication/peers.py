"""Split-view checks of a replication source: do its other views agree with our copy?

Two kinds of peers (``replica add --peer``):

- ``replica``: the same chain served elsewhere (another replica's ``…/replica/{id}``, or
  the upstream at another address): asked about our head like any auditor's peer
  (:func:`chronicle.client.peers.ask_peer`), with our copy as the history;
- ``xsign``: a Chronicle the upstream cross-signs its head onto: every head the upstream
  published there must be one we hold, or one the upstream still serves (we are behind).

A disagreement stops the source as ``forked`` (split view) with the signed answers of
both sides.
"""

from __future__ import annotations

from dataclasses import replace

from chronicle.client.errors import RecordNotFound
from chronicle.client.http import ChronicleClient
from chronicle.client.peers import PeerAnswer, announced_key, ask_peer, head_from
from chronicle.core.agreement import PeerReport, PeerStatus, split_view
from chronicle.core.blakechain import Entry
from chronicle.core.encoding import b64u_encode, decode_b64_field
from chronicle.core.errors import ChronicleError
from chronicle.core.replica import parse_cross_sign
from chronicle.replication.upstream import Evidence, Stop, SyncOptions, Upstream, quote_hash
from chronicle.store import Chain, ReplicaPeer, ReplicaSource, Store


async def check_peers(store: Store, source: ReplicaSource, upstream: Upstream,
                      options: SyncOptions) -> list[PeerReport]:
    """Compare every peer of ``source`` with our copy; raise :class:`Stop` on a split view."""
    peers = await store.replication.peers(source.id)
    copy = store.replication.chain(source.id)
    head = await copy.head()
    if not peers or head is None:
        return []
    reports: list[PeerReport] = []
    docs: Evidence = []
    for peer in peers:
        if peer.kind == "xsign":
            report = await _check_xsign_peer(store, source, upstream, peer, options, docs)
        else:
            report = await _check_replica_peer(copy, head, peer, options, docs)
        reports.append(report)
    verdict = split_view(head_from(head.currhash, head.summaryhash, head.index), reports)
    if verdict is None:
        for _, doc, _ in docs:
            doc.discard()
        return reports
    try:
        _, upstream_doc = await upstream.knows(head.summaryhash, head.currhash)
    except (Stop, ChronicleError):
        pass
    else:
        docs.insert(0, ("upstream lookup of our head", upstream_doc, upstream.key))
    raise Stop(verdict, docs)


async def _key(peer: ReplicaPeer, options: SyncOptions) -> bytes:
    return peer.publickey or await announced_key(options.client, peer.url)


async def _check_replica_peer(copy: Chain, head: Entry, peer: ReplicaPeer,
                              options: SyncOptions, docs: Evidence) -> PeerReport:
    """Another copy of the same chain: one head must contain the other."""
    async def history(summary: str) -> str | None:
        for entry in await copy.lookup(_raw(summary)):
            if b64u_encode(entry.summaryhash) == summary:
                return b64u_encode(entry.currhash)
        return None

    try:
        key = await _key(peer, options)
        async with options.client(peer.url, key) as client:
            answer: PeerAnswer = await ask_peer(
                client, head_from(head.currhash, head.summaryhash, head.index), history=history)
    except ChronicleError as exc:
        return PeerReport(peer.url, PeerStatus.ERROR, kind=peer.kind, error=exc.diagnostics())
    docs.extend((role, doc, key) for role, doc in answer.documents)
    report = answer.report
    return replace(report, kind=peer.kind)


async def _check_xsign_peer(store: Store, source: ReplicaSource, upstream: Upstream,
                            peer: ReplicaPeer, options: SyncOptions, docs: Evidence
                            ) -> PeerReport:
    """Every head the upstream cross-signed onto ``peer`` must be consistent with ours."""
    upstream_key = b64u_encode(source.publickey)
    claims = 0
    error: str | None = None
    try:
        key = await _key(peer, options)
        cursor = peer.cursor
        async with options.client(peer.url, key) as pc:
            walk = pc.since(cursor) if cursor else pc.export()
            try:
                async for entry in walk:
                    cursor = entry.summaryhash
                    if entry.publickey != upstream_key:
                        continue
                    claim = parse_cross_sign(entry.contents)
                    if claim is None or claim.target != key:
                        continue
                    claims += 1
                    verdict = await _check_claim(store, source, upstream, pc, claim.currhash,
                                                 claim.summaryhash, entry.currhash, peer.url,
                                                 key, docs)
                    if verdict is not None:
                        return PeerReport(peer.url, PeerStatus.DISAGREES, kind=peer.kind,
                                          claims=claims, field="summaryhash",
                                          expected=verdict[0], found=verdict[1])
            except RecordNotFound:
                cursor = None  # the peer lost our cursor: rescan next time
                error = "the peer no longer has the scan position; rescanning"
        if peer.id:
            await store.replication.set_peer_cursor(peer.id, cursor)
    except ChronicleError as exc:
        return PeerReport(peer.url, PeerStatus.ERROR, kind=peer.kind, claims=claims,
                          error=exc.diagnostics())
    return PeerReport(peer.url, PeerStatus.AGREES, kind=peer.kind, claims=claims, error=error)


async def _check_claim(store: Store, source: ReplicaSource, upstream: Upstream,
                       pc: ChronicleClient, currhash: bytes, summaryhash: bytes,
                       entry_hash: str, peer_url: str, key: bytes, docs: Evidence
                       ) -> tuple[str, str] | None:
    """One cross-signed head: None if we hold it or the upstream still serves it (we are
    behind); else ``(expected, found)`` of the disagreement, its evidence in ``docs``."""
    local = await store.replication.chain(source.id).lookup(summaryhash)
    if any(e.summaryhash == summaryhash and e.currhash == currhash for e in local):
        return None
    summary = b64u_encode(summaryhash)
    doc, parsed, refused = await upstream.signed("/lookup/" + quote_hash(summary),
                                                 "upstream lookup of a cross-signed head")
    if refused is not None and not isinstance(refused, RecordNotFound):
        doc.discard()
        raise refused
    if refused is not None:
        shown = await pc.fetch("/lookup/" + quote_hash(entry_hash))
        docs.append((f"peer {peer_url}: the upstream's cross-sign entry", shown, key))
        docs.append(("upstream lookup of the cross-signed head (unknown)", doc, upstream.key))
        return summary, "unknown to the upstream"
    doc.discard()
    rows = parsed.get("results")
    if isinstance(rows, list) and any(
            isinstance(r, dict) and r.get("currhash") == b64u_encode(currhash) for r in rows):
        return None  # the upstream has it: we are behind, the next sync copies it
    return summary, "another currhash"


def _raw(text: str) -> bytes:
    raw = decode_b64_field(text, 32)
    return raw if raw is not None else b""
