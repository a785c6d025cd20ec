"""What the explorer's pages show, read from the store: plain data, no HTML.

Every read here is bounded whatever the chain's length: the head, a few dozen indexed
rows for the publish-rate chart, one page of a keyset range, one entry. Searches scan at
most :data:`SEARCH_WINDOW` rows per request and run one at a time per process, each with a
deadline (:class:`SearchGate`), so a search cannot be used to load the server.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

from chronicle.core.blakechain import Entry, currhash
from chronicle.core.checkpoint import WitnessEndpoint
from chronicle.core.encoding import b64u_decode, parse_timestamp
from chronicle.core.errors import ChronicleError, EncodingError, NotFoundError, RequestError
from chronicle.core.sapient import verify
from chronicle.replication.witnessing import JobSizes
from chronicle.store import ReplicaSource, Store
from chronicle.store.browse import PREVIEW_BYTES, EntrySummary, SearchWindow
from chronicle.treelog import TreeLog

#: Entries per page of the entry list.
PAGE_SIZE = 50
#: Rows one search request examines at most (the next request continues below them).
SEARCH_WINDOW = 20_000
#: Matches one search request returns at most.
SEARCH_LIMIT = 50
#: Seconds a search may take before it is answered 503 (it runs on, still holding the
#: gate, until the database is done with it).
SEARCH_DEADLINE = 2.0
#: Longest search text accepted.
MAX_QUERY = 200
#: Points of the publish-rate chart (intervals between evenly spaced entries).
RATE_SAMPLES = 48
#: Bodies larger than this are shown cut (the whole body is at /chronicle/lookup/…).
BODY_SHOWN = 256 * 1024

T = TypeVar("T")


class SearchGate:
    """One search at a time per process. A search past its deadline is answered 503 at
    once but keeps the gate until it really ends, so slow searches never pile up."""

    def __init__(self, deadline: float = SEARCH_DEADLINE) -> None:
        self.deadline = deadline
        self._busy = False

    async def run(self, work: Callable[[], Awaitable[T]]) -> T:
        if self._busy:
            raise ChronicleError("Another search is running; retry in a moment", status=503,
                                 headers={"Retry-After": "1"})
        self._busy = True

        async def guarded() -> T:
            try:
                return await work()
            finally:
                self._busy = False

        task = asyncio.ensure_future(guarded())
        done, _ = await asyncio.wait({task}, timeout=self.deadline)
        if not done:
            task.add_done_callback(_consume)
            raise ChronicleError(f"Search took longer than {self.deadline:g} s; "
                                 "search a narrower text", status=503,
                                 headers={"Retry-After": "5"})
        return task.result()


def _consume(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()


@dataclass(frozen=True, slots=True)
class RatePoint:
    """``entries`` published between ``start`` and ``end``."""

    start: datetime
    end: datetime
    entries: int


@dataclass(frozen=True, slots=True)
class Replica:
    """A replicated upstream: its record, the entries copied, seconds since its last
    successful sync (None: never)."""

    source: ReplicaSource
    copied: int
    lag_seconds: float | None


@dataclass(frozen=True, slots=True)
class CrossSign:
    """A cross-sign target: the last entry of ours it holds, how far behind our head that
    is, and how its last attempt went."""

    name: str
    url: str
    last_index: int | None
    behind: int | None
    last_run: str | None
    last_error: str | None
    failures: int


@dataclass(frozen=True, slots=True)
class WitnessView:
    """A configured witness: the tree size it last cosigned (durable, any process), its
    last error (as this process's witnessing job saw it)."""

    name: str
    url: str
    cosigned_size: int | None
    last_error: str | None


@dataclass
class Overview:
    """Everything the overview page shows about one chain (``tree_size``: None without
    an active Merkle tree)."""

    instance: str
    length: int
    head: Entry | None
    public_key: str
    rate: list[RatePoint]
    instances: list[tuple[str, int]]
    replicas: list[Replica]
    cross_signs: list[CrossSign]
    witnesses: list[WitnessView]
    mirrors: list[tuple[str, str]]
    tree_size: int | None
    tree_origin: str | None = None


async def _length(store: Store, instance: str) -> int:
    head = await store.chain(instance).head()
    return 0 if head is None else head.index + 1


async def rate(store: Store, instance: str, length: int,
               samples: int = RATE_SAMPLES) -> list[RatePoint]:
    """Publish rate over the chain's life, from ``created`` at evenly spaced entries (one
    indexed read; ``created`` never goes backwards along a chain). Intervals shorter than a
    second are merged into the next."""
    if length < 2:
        return []
    steps = min(samples, length - 1)
    indexes = sorted({round(i * (length - 1) / steps) for i in range(steps + 1)})
    rows = await store.browse.created_at(instance, indexes)
    points: list[RatePoint] = []
    start: tuple[int, datetime] | None = None
    for index, created in rows:
        try:
            moment = parse_timestamp(created)
        except EncodingError:
            continue
        if start is None:
            start = (index, moment)
            continue
        if (moment - start[1]).total_seconds() >= 1:
            points.append(RatePoint(start[1], moment, index - start[0]))
            start = (index, moment)
    return points


async def overview(store: Store, instance: str, *, instances: tuple[str, ...],
                   witnesses: tuple[WitnessEndpoint, ...], witness_errors: dict[str, str],
                   public_key: str, now: datetime) -> Overview:
    """The overview of ``instance``; ``witness_errors``: each witness's last error as the
    witnessing job of this process saw it (empty where another process runs the jobs)."""
    head = await store.chain(instance).head()
    length = 0 if head is None else head.index + 1
    lengths = [(name, await _length(store, name)) for name in instances]
    replicas = []
    for source in await store.replication.sources(instance):
        copy = await store.replication.chain(source.id).head()
        lag = None
        if source.last_sync:
            try:
                lag = max(0.0, (now - parse_timestamp(source.last_sync)).total_seconds())
            except EncodingError:
                lag = None
        replicas.append(Replica(source, 0 if copy is None else copy.index + 1, lag))
    cross_signs = [CrossSign(t.name, t.url, t.last_index,
                             None if t.last_index is None or head is None
                             else head.index - t.last_index,
                             t.last_run, t.last_error, t.failures)
                   for t in await store.xsign.targets(instance)]
    sizes = JobSizes(store.jobs, instance)
    views = []
    for endpoint in witnesses:
        name = endpoint.verifier.name
        views.append(WitnessView(name, endpoint.url, await sizes.get(name),
                                 witness_errors.get(name)))
    mirrors = [(m.url, m.comment or "") for m in await store.mirrors.all(instance)]
    tree = await store.tlog.tree(instance)
    active = tree is not None and tree.active
    return Overview(instance=instance, length=length, head=head, public_key=public_key,
                    rate=await rate(store, instance, length), instances=lengths,
                    replicas=replicas, cross_signs=cross_signs, witnesses=views,
                    mirrors=mirrors,
                    tree_size=tree.size if active and tree is not None else None,
                    tree_origin=tree.origin if active and tree is not None else None)


@dataclass
class EntryView:
    """One entry with the server's own checks of it, its successor's currhash, and its
    inclusion proof (or why there is none) when the chain has a Merkle tree."""

    entry: Entry
    signature_ok: bool
    hash_ok: bool
    next_hash: bytes | None
    inclusion: dict[str, Any] | None
    inclusion_error: str | None


def parse_hash(text: str) -> bytes:
    """A currhash in a path: base64url of 32 bytes; anything else is not found."""
    try:
        return b64u_decode(text, 32)
    except EncodingError:
        raise NotFoundError("No entry with this hash") from None


async def entry(store: Store, tlog: TreeLog, instance: str, hash_raw: bytes) -> EntryView:
    """The entry whose currhash is ``hash_raw``, checked here too (its signature, and its
    currhash recomputed from its predecessor's)."""
    found = [e for e in await store.chain(instance).lookup(hash_raw)
             if e.currhash == hash_raw]
    if not found:
        raise NotFoundError("No entry with this hash")
    e = found[0]
    signature_ok = verify(e.publickey, e.contents, e.signature)
    hash_ok = currhash(e.prevhash, e.created, e.publickey, e.signature,
                       e.contents) == e.currhash
    next_hash = await store.browse.currhash_at(instance, e.index + 1)
    inclusion = None
    inclusion_error = None
    tree = await store.tlog.tree(instance)
    if tree is not None and tree.active:
        try:
            inclusion = await tlog.inclusion(instance, str(e.index), None)
        except ChronicleError as exc:
            inclusion_error = exc.message
    return EntryView(e, signature_ok, hash_ok, next_hash, inclusion, inclusion_error)


@dataclass
class Listing:
    """One page of the entry list or of a search's results."""

    entries: list[EntrySummary]
    length: int
    older: int | None
    """The ``before`` cursor of the next (older) page; None at the end."""
    searched: str | None = None
    """What was searched for, as shown to the reader (None: the plain list)."""
    window: SearchWindow | None = None
    query: str = ""
    """The search text, to continue the search on the next page."""


async def listing(store: Store, instance: str, before: int | None) -> Listing:
    length = await _length(store, instance)
    start = length if before is None else min(before, length)
    rows = await store.browse.newest(instance, start, PAGE_SIZE)
    older = rows[-1].index if len(rows) == PAGE_SIZE and rows[-1].index > 0 else None
    return Listing(rows, length, older)


def parse_before(values: list[str]) -> int | None:
    if not values:
        return None
    if len(values) > 1:
        raise RequestError("Only one before parameter may be provided")
    text = values[0]
    if not text.isdigit() or len(text) > 18:
        raise RequestError("before must be an entry index (a non-negative integer)")
    return int(text)


async def search(store: Store, gate: SearchGate, instance: str, query: str,
                 before: int | None) -> Listing:
    """Search by currhash or summaryhash (indexed), else by publisher key or body text
    (bounded windows, see the module docstring)."""
    query = query.strip()
    if not query:
        raise RequestError("Empty search")
    if len(query) > MAX_QUERY:
        raise RequestError(f"Search text too long (at most {MAX_QUERY} characters)")
    length = await _length(store, instance)
    start = length if before is None else min(before, length)
    raw: bytes | None
    try:
        raw = b64u_decode(query, 32)
    except EncodingError:
        raw = None
    if raw is not None and before is None:
        hits = await store.chain(instance).lookup(raw)
        if hits:
            rows = [EntrySummary(e.index, e.currhash, e.summaryhash, e.created, e.publickey,
                                 len(e.contents), e.contents[:PREVIEW_BYTES]) for e in hits]
            return Listing(rows, length, None, searched=f"hash {query}", query=query)
    if raw is not None:
        what = f"publisher key {query}"
        window = await gate.run(lambda: store.browse.search(
            instance, before=start, window=SEARCH_WINDOW, limit=SEARCH_LIMIT,
            publickey=raw))
    else:
        if len(query) < 2:
            raise RequestError("Search text too short (at least 2 characters)")
        what = f"text {query!r}"
        window = await gate.run(lambda: store.browse.search(
            instance, before=start, window=SEARCH_WINDOW, limit=SEARCH_LIMIT,
            text=query.encode("utf-8")))
    older = window.low if window.low > 0 else None
    return Listing(window.matches, length, older, searched=what, window=window,
                   query=query)
