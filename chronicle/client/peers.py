"""Ask another Chronicle about a head we hold: the I/O of split-view detection.

Used by ``chronicle audit --peer`` and by the replica follower for its peers. The peer is
asked for a signed ``lookup`` of our summaryhash; if it does not know it and we hold the
history (a replica does), its signed ``lasthash`` tells whether it is merely behind (its
head is an entry of ours) or shows another history. The decisions themselves are pure
(:mod:`chronicle.core.agreement`); every answer a verdict rests on is kept, so a
disagreement comes with the signed documents that prove it.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from urllib.parse import quote

from chronicle.client.errors import RecordNotFound
from chronicle.client.http import ChronicleClient, FetchedDocument, api_base, chronicle_root
from chronicle.core.agreement import Head, PeerReport, PeerStatus, judge_lookup
from chronicle.core.encoding import b64u_encode, decode_b64_field
from chronicle.core.errors import ChronicleError
from chronicle.core.sapient import verify
from chronicle.core.verify import (
    DocumentSignatureError,
)

#: Our copy of the history, by summaryhash: the currhash we hold there, or None.
History = Callable[[str], Awaitable[str | None]]


@dataclass
class PeerAnswer:
    """A peer's report, with the signed documents behind a disagreement."""

    report: PeerReport
    documents: list[tuple[str, FetchedDocument]] = field(default_factory=list)

    def discard(self) -> None:
        for _, doc in self.documents:
            doc.discard()


async def announced_key(client_for: Callable[[str, bytes], ChronicleClient], url: str
                        ) -> bytes:
    """The key a Chronicle announces in its own index, which that key must have signed
    (for peers given without a pinned key: consistency with itself, not identity)."""
    async with client_for(url, bytes(32)) as probe:
        doc = await probe.fetch("", from_root=True, memory_limit=1 << 20)
    index = chronicle_root(api_base(url))
    try:
        parsed = json.loads(doc.read())
        key = decode_b64_field(parsed.get("public-key"), 32)
    except (ValueError, AttributeError):
        key = None
    sig = decode_b64_field((doc.signature or "").strip(), 64)
    if key is None or sig is None or not verify(key, doc.read(), sig):
        raise DocumentSignatureError(f"{index} does not announce a key that signs its index")
    return key


async def ask_peer(peer: ChronicleClient, head: Head, *, history: History | None = None
                   ) -> PeerAnswer:
    """What ``peer`` says about ``head`` (see the module docstring). Never raises for the
    peer's faults: they become status ``error``."""
    url = peer.base
    try:
        look, parsed = await peer.signed("/lookup/" + quote(head.summaryhash, safe=""))
    except RecordNotFound:
        if history is None:
            return PeerAnswer(PeerReport(url, PeerStatus.MISSING))
        return await _behind_or_forked(peer, head, history)
    except ChronicleError as exc:
        return PeerAnswer(PeerReport(url, PeerStatus.ERROR, error=exc.diagnostics()))
    status, shown = judge_lookup(head, parsed.get("results"))
    report = PeerReport(url, status, currhash=shown)
    if status == PeerStatus.AGREES:
        look.discard()
        return PeerAnswer(report)
    return PeerAnswer(replace(report, field="currhash", expected=head.currhash, found=shown,
                              index=head.index),
                      [(f"peer {url} lookup of our head", look)])


async def _behind_or_forked(peer: ChronicleClient, head: Head, history: History
                            ) -> PeerAnswer:
    """The peer does not know our head: is its own head one of our entries?"""
    url = peer.base
    try:
        last, parsed = await peer.signed("/lasthash")
        theirs = _head_of(parsed.get("results"))
        if theirs is None:
            last.discard()
            return PeerAnswer(PeerReport(url, PeerStatus.BEHIND))
        if await history(theirs[1]) == theirs[0]:
            last.discard()
            return PeerAnswer(PeerReport(url, PeerStatus.AGREES, head=theirs[1]))
        # Another history: keep its denial of our head with its head, as evidence.
        look = await peer.fetch("/lookup/" + quote(head.summaryhash, safe=""))
        if not look.verified:
            look.discard()
            raise DocumentSignatureError(f"{url}: lookup is not signed by its key")
    except ChronicleError as exc:
        return PeerAnswer(PeerReport(url, PeerStatus.ERROR, error=exc.diagnostics()))
    return PeerAnswer(PeerReport(url, PeerStatus.DISAGREES, head=theirs[1], field="summaryhash",
                                 expected=head.summaryhash, found=theirs[1], index=head.index),
                      [(f"peer {url} lasthash", last),
                       (f"peer {url} lookup of our head", look)])


def _head_of(results: object) -> tuple[str, str] | None:
    """``(currhash, summaryhash)`` of a signed ``lasthash``: a replica's object or a row."""
    if isinstance(results, dict):
        cur, summary = results.get("curr-hash"), results.get("summary-hash")
    elif isinstance(results, list) and len(results) == 1 and isinstance(results[0], dict):
        cur, summary = results[0].get("currhash"), results[0].get("summaryhash")
    else:
        return None
    if decode_b64_field(cur, 32) is None or decode_b64_field(summary, 32) is None:
        return None
    return str(cur), str(summary)


def head_from(currhash: bytes, summaryhash: bytes, index: int | None = None) -> Head:
    return Head(b64u_encode(currhash), b64u_encode(summaryhash), index)
