"""The upstream no longer knows our head: how does its history differ from ours?

``since`` of our newest summaryhash was refused as unknown. The upstream's signed
``lasthash`` tells a truncation (its head is an older entry of ours) from a rewrite, whose
first differing entry is found by binary search with signed lookups. Either way the
source stops as ``forked``, with every signed answer that shows it.
"""

from __future__ import annotations

from typing import NoReturn

from chronicle.client.http import FetchedDocument
from chronicle.core.blakechain import Entry
from chronicle.core.document import DocumentParser
from chronicle.core.encoding import b64u_encode, decode_b64_field
from chronicle.core.errors import TransportError
from chronicle.core.replica import TruncatedError
from chronicle.core.verify import (
    ChainFault,
    HistoryRewrittenError,
    MalformedError,
)
from chronicle.replication.upstream import Evidence, Stop, Upstream, head_of, quote_hash
from chronicle.store import Chain


async def analyse_lost_head(upstream: Upstream, copy: Chain, head: Entry,
                            refusal_doc: FetchedDocument) -> NoReturn:
    """Stop the source with the diagnosis (truncated or rewritten) and its evidence."""
    key = upstream.key
    docs: Evidence = [("upstream since (our head unknown)", refusal_doc, key)]
    last_doc, parsed = await upstream.small("/lasthash", "upstream lasthash")
    docs.append(("upstream lasthash", last_doc, key))
    try:
        theirs = head_of(parsed.get("results"))
    except ChainFault as fault:
        raise Stop(fault, docs) from None
    ours = b64u_encode(head.summaryhash)
    if theirs is None:
        raise Stop(TruncatedError("the upstream's chain is now empty; we verified "
                                  f"{head.index + 1} entries", index=0, field="summaryhash",
                                  expected=ours, found="empty chain"), docs)
    summary = decode_b64_field(theirs[1], 32)
    if summary is None:
        raise Stop(MalformedError("not a base64url hash", found=theirs[1]), docs)
    match = [e for e in await copy.lookup(summary) if b64u_encode(e.summaryhash) == theirs[1]]
    if match and b64u_encode(match[0].currhash) == theirs[0] and match[0].index < head.index:
        raise Stop(TruncatedError(
            f"the upstream's chain now ends at entry {match[0].index}; entries "
            f"{match[0].index + 1}..{head.index} that it served before are gone",
            index=match[0].index + 1, field="summaryhash", expected=ours,
            found=theirs[1]), docs)
    index, shown, more = await first_difference(upstream, copy, head)
    docs.extend(more)
    ours_there = await copy.entry_at(index)
    assert ours_there is not None
    raise Stop(HistoryRewrittenError(
        f"the upstream no longer has the history we verified: entry {index} differs",
        index=index, field="currhash", expected=b64u_encode(ours_there.currhash),
        found=shown or "not found"), docs)


async def first_difference(upstream: Upstream, copy: Chain, head: Entry
                           ) -> tuple[int, str | None, Evidence]:
    """Binary search (signed lookups) for the first of our entries the upstream no longer
    has, and the upstream's own entry at that position."""
    key = upstream.key
    lo, hi = 0, head.index  # the entry at hi is unknown upstream
    known_doc: FetchedDocument | None = None
    unknown_doc: FetchedDocument | None = None
    while lo < hi:
        mid = (lo + hi) // 2
        entry = await copy.entry_at(mid)
        assert entry is not None
        known, doc = await upstream.knows(entry.summaryhash, entry.currhash)
        if known:
            lo = mid + 1
            if known_doc is not None:
                known_doc.discard()
            known_doc = doc
        else:
            hi = mid
            if unknown_doc is not None:
                unknown_doc.discard()
            unknown_doc = doc
    docs: Evidence = []
    if unknown_doc is not None:
        docs.append((f"upstream lookup of our entry {lo} (unknown)", unknown_doc, key))
    if known_doc is not None:
        docs.append((f"upstream lookup of our entry {lo - 1} (known)", known_doc, key))
    shown, at_fork, path = await _entry_at(upstream, copy, lo)
    if at_fork is not None:
        docs.append((f"upstream entry {lo} ({path.split('/')[1]})", at_fork, key))
    return lo, shown, docs


async def _entry_at(upstream: Upstream, copy: Chain, index: int
                    ) -> tuple[str | None, FetchedDocument | None, str]:
    """The upstream's currhash at ``index``: the first row after our entry ``index - 1``."""
    if index > 0:
        before = await copy.entry_at(index - 1)
        assert before is not None
        path = "/since/" + quote_hash(b64u_encode(before.summaryhash))
    else:
        path = "/export"
    try:
        doc = await upstream.fetch(path, "upstream entry at the fork")
    except TransportError:
        return None, None, path
    except Stop as stop:
        for _, unused, _ in stop.docs:
            unused.discard()
        return None, None, path
    parser = DocumentParser()
    shown: str | None = None
    for chunk in doc.chunks():
        rows = parser.feed(chunk)
        if rows:
            first = rows[0]
            if isinstance(first, dict):
                value = first.get("currhash", first.get("hash"))
                shown = value if isinstance(value, str) else None
            break
    return shown, doc, path
