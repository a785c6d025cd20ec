"""Copy an upstream Chronicle into a replica chain, believing nothing unverified.

One :meth:`Replicator.sync` of one source:

1. ``GET /chronicle``: the upstream's signed index must announce the pinned key. An index
   signed by (and announcing) another key is a key change: the source stops until an
   operator pins the new key (``replica set-key``); any other unverifiable answer stops it
   as ``failed``.
2. ``GET /export`` the first time, then ``GET /since/{our newest summaryhash}``; as PHP's
   replicator, a paginated answer with ``next`` is followed by asking ``since`` of the
   newest stored summaryhash again. Each answer is read whole (in memory, or spooled to a
   file under the data dir when large) and its signature checked before anything in it is
   used; then its rows are verified in order (link, currhash, summaryhash — resumed from
   the stored head's hash state — and, in parallel, every entry signature) and committed
   in chunks as they verify. A crash loses at most the chunk in flight; the next sync
   continues from the stored head without fetching what is stored.
3. ``since`` of our head answered "No record found": the upstream no longer has the
   history we verified. Its signed ``lasthash`` tells a truncation (its head is an older
   entry of ours) from a rewrite, whose first differing entry is found by binary search
   with signed lookups. Either way the source is ``forked``.
4. With peers configured, heads are compared (split view).

A fault stops the source with its evidence (the signed answers) and never touches what
was verified before. Network trouble, signed refusals and stale answers only postpone:
the source stays active and the next attempt backs off.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp

from chronicle.client.document import DocumentParser
from chronicle.client.errors import RecordNotFound, ServerRefused, StaleResponseError, refusal
from chronicle.client.http import ChronicleClient, FetchedDocument
from chronicle.core.blakechain import Entry
from chronicle.core.encoding import atom, b64u_encode, utcnow
from chronicle.core.errors import ChronicleError, StorageError, TransportError
from chronicle.core.replica import (
    STATUS_ACTIVE,
    KeyChangedError,
    ReplicaVerifier,
    TruncatedError,
    fault_details,
    parse_cross_sign,
    status_for,
)
from chronicle.core.sapient import SIGNATURE_HEADER, verify
from chronicle.core.verify import (
    EXPORT_KEYS,
    ROW_KEYS,
    AnchorError,
    ChainFault,
    DocumentSignatureError,
    EntrySignatureError,
    HistoryRewrittenError,
    MalformedError,
    SplitViewError,
    decode_b64_field,
    verify_row,
)
from chronicle.replication.evidence import EvidenceKeeper
from chronicle.replication.sigcheck import SignatureChecker
from chronicle.replication.sigworker import Item
from chronicle.store import ReplicaFault, ReplicaPeer, ReplicaSource, Store

log = logging.getLogger(__name__)

CHUNK_ROWS = 2048
COMMIT_ROWS = 16384

# Sync outcomes.
OK, FORKED, FAILED, ERROR, STOPPED = "ok", "forked", "failed", "error", "stopped"


@dataclass
class SyncOptions:
    """How a replica talks to upstreams and peers (timeouts, freshness, local paths)."""

    spool_dir: Path
    evidence_dir: Path
    timeout: float = 30.0
    freshness: float | None = 600.0
    clock: Callable[[], datetime] = utcnow
    memory_limit: int = 8 << 20
    max_document: int = 32 << 30
    chunk_rows: int = CHUNK_ROWS
    commit_rows: int = COMMIT_ROWS
    signature_mode: str = "auto"
    workers: int | None = None
    session: aiohttp.ClientSession | None = None


@dataclass
class SyncResult:
    """What one sync of one source did."""

    name: str
    uniqueid: str
    status: str
    added: int = 0
    entries: int = 0
    head: str | None = None
    error: str | None = None
    fault: dict[str, Any] | None = None
    peers: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def clean(self) -> bool:
        return self.status == OK

    def as_dict(self) -> dict[str, Any]:
        rate = self.added / self.seconds if self.seconds > 0 else None
        return {"name": self.name, "id": self.uniqueid, "status": self.status,
                "added": self.added, "entries": self.entries, "head": self.head,
                "error": self.error, "fault": self.fault, "peers": self.peers,
                "seconds": round(self.seconds, 3),
                "entries-per-second": None if rate is None else round(rate, 1)}


class _Stop(Exception):
    """A fault with the documents that prove it (internal)."""

    def __init__(self, fault: ChainFault, docs: list[tuple[str, FetchedDocument, bytes | None]]
                 ) -> None:
        super().__init__(fault.message)
        self.fault = fault
        self.docs = docs


def _quote(hash_text: str) -> str:
    return quote(hash_text, safe="")


def _parse_small(doc: FetchedDocument) -> dict[str, Any]:
    """A small answer (index, lasthash, lookup, error) as JSON; one that had to be spooled
    is not small: refused rather than read into memory."""
    if doc.body is None:
        raise MalformedError(f"the answer to {doc.method} {doc.path} is far too large "
                             f"({doc.size} bytes)", field="document")
    try:
        parsed = json.loads(doc.read())
    except ValueError:
        raise MalformedError(f"answer to {doc.method} {doc.path} is not JSON",
                             field="document") from None
    if not isinstance(parsed, dict):
        raise MalformedError(f"answer to {doc.method} {doc.path} is not a JSON object",
                             field="document")
    return parsed


def head_of(results: Any) -> tuple[str, str] | None:
    """``(currhash, summaryhash)`` from a ``lasthash`` answer: a replica's object, or a
    list with one row (verified on its own: signature, currhash from its prevhash)."""
    if isinstance(results, dict) and "summary-hash" in results:
        cur, summary = results.get("curr-hash"), results.get("summary-hash")
        if decode_b64_field(cur, 32) is None or decode_b64_field(summary, 32) is None:
            raise MalformedError("lasthash answer has no valid hashes", field="summary-hash")
        return str(cur), str(summary)
    if not isinstance(results, list) or len(results) > 1:
        raise MalformedError("lasthash answer is not a list of at most one row",
                             field="results")
    if not results:
        return None
    verify_row(results[0], keys=ROW_KEYS)
    return str(results[0]["currhash"]), str(results[0]["summaryhash"])


class Replicator:
    """Sync one replication source (see the module docstring)."""

    def __init__(self, store: Store, source: ReplicaSource, options: SyncOptions,
                 checker: SignatureChecker | None = None) -> None:
        self.store = store
        self.source = source
        self.options = options
        self.keeper = EvidenceKeeper(options.evidence_dir)
        self._checker = checker
        self.added = 0

    def _client(self, url: str, key: bytes) -> ChronicleClient:
        o = self.options
        return ChronicleClient(url, key, timeout=o.timeout, freshness=o.freshness,
                               clock=o.clock, session=o.session)

    # --- the sync -------------------------------------------------------------------------

    async def sync(self) -> SyncResult:
        source = self.source
        started = time.monotonic()
        result = SyncResult(source.name, source.uniqueid, OK)
        if source.status != STATUS_ACTIVE:
            result.status = STOPPED
            result.error = f"{source.status}: {source.reason}"
        else:
            _sweep(self.options.spool_dir)
            own_checker = self._checker is None
            checker = self._checker or SignatureChecker(mode=self.options.signature_mode,
                                                        workers=self.options.workers)
            try:
                async with self._client(source.url, source.publickey) as client:
                    await self._check_key(client)
                    await self._pull(client, checker)
                    result.peers = await self._check_peers(client)
            except _Stop as stop:
                await self._record(stop, result)
            except (StaleResponseError, ServerRefused, TransportError, StorageError) as exc:
                result.status = ERROR
                result.error = exc.diagnostics()
            except ChainFault as fault:  # a fault found without a document to show for it
                await self._record(_Stop(fault, []), result)
            except ChronicleError as exc:
                result.status = ERROR
                result.error = exc.diagnostics()
            finally:
                if own_checker:
                    await checker.aclose()
            when = atom(self.options.clock())
            if result.status == OK:
                await self.store.replication.record_attempt(source.id, when=when, error=None)
            elif result.status == ERROR:
                log.warning("replica %s: sync failed, will retry: %s", source.name,
                            result.error)
                await self.store.replication.record_attempt(source.id, when=when,
                                                        error=result.error)
        head = await self.store.replication.chain(source.id).head()
        result.added = self.added
        result.entries = 0 if head is None else head.index + 1
        result.head = None if head is None else b64u_encode(head.summaryhash)
        result.seconds = time.monotonic() - started
        return result

    async def _record(self, stop: _Stop, result: SyncResult) -> None:
        fault = stop.fault
        status = status_for(fault)
        documents = tuple(self.keeper.keep(role, doc, signer) for role, doc, signer in stop.docs)
        record = ReplicaFault(status=status, kind=fault.kind, message=fault.diagnostics(),
                              recorded=atom(self.options.clock()),
                              details=fault_details(fault), documents=documents)
        await self.store.replication.record_fault(self.source.id, record)
        log.error("replica %s stopped (%s): %s", self.source.name, status, fault.diagnostics())
        result.status = FORKED if status == "forked" else FAILED
        result.error = fault.diagnostics()
        result.fault = {"kind": fault.kind, **fault_details(fault)}

    # --- fetching -------------------------------------------------------------------------

    async def _fetch(self, client: ChronicleClient, path: str, role: str, *,
                     from_root: bool = False) -> FetchedDocument:
        """An answer whose signature verifies with the client's pinned key (else stop).

        An unsigned error page (a proxy's 404 or 429) proves nothing against anyone: it
        only postpones, like a network error.
        """
        doc = await client.fetch(path, from_root=from_root, spool_dir=self.options.spool_dir,
                                 memory_limit=self.options.memory_limit,
                                 max_size=self.options.max_document)
        _unsigned_error(doc)
        if not doc.verified:
            fault = DocumentSignatureError(
                f"the answer to GET {path} is not signed by the pinned key",
                field=SIGNATURE_HEADER, expected=f"a signature by {b64u_encode(client.server_key)}",
                found=doc.signature or "no signature")
            raise _Stop(fault, [(role, doc, client.server_key)])
        return doc

    async def _signed(self, client: ChronicleClient, path: str, role: str, *,
                      fresh: bool = True, from_root: bool = False
                      ) -> tuple[FetchedDocument, dict[str, Any], ServerRefused | None]:
        """A small signed answer, parsed, with the refusal it carries (if it is a signed
        error). A stale answer is a transient error, anything malformed a fault."""
        doc = await self._fetch(client, path, role, from_root=from_root)
        try:
            parsed = _parse_small(doc)
            client.check_envelope(parsed, doc.status, doc.headers, path, fresh=fresh)
        except ServerRefused as exc:
            return doc, parsed, exc
        except StaleResponseError:
            doc.discard()
            raise
        except ChainFault as fault:
            raise _Stop(fault, [(role, doc, client.server_key)]) from None
        return doc, parsed, None

    async def _small(self, client: ChronicleClient, path: str, role: str
                     ) -> tuple[FetchedDocument, dict[str, Any]]:
        doc, parsed, refused = await self._signed(client, path, role)
        if refused is not None:
            doc.discard()
            raise refused
        return doc, parsed

    # --- step 1: the key ------------------------------------------------------------------

    async def _check_key(self, client: ChronicleClient) -> None:
        """The upstream's signed index must announce the key we pinned."""
        pinned = client.server_key
        doc = await client.fetch("", from_root=True, spool_dir=self.options.spool_dir,
                                 memory_limit=self.options.memory_limit,
                                 max_size=self.options.max_document)
        _unsigned_error(doc)
        try:
            index = _parse_small(doc)
        except MalformedError:
            index = {}
        announced = decode_b64_field(index.get("public-key"), 32)
        raw_sig = decode_b64_field((doc.signature or "").strip(), 64)
        if announced is not None and announced != pinned:
            if raw_sig is not None and verify(announced, doc.read(), raw_sig):
                raise _Stop(KeyChangedError(
                    "the upstream now signs with another server key; nothing it says is "
                    "believed until the new key is pinned (replica set-key)",
                    field="public-key", expected=b64u_encode(pinned),
                    found=b64u_encode(announced)), [("upstream index", doc, announced)])
            raise _Stop(DocumentSignatureError(
                "the upstream's index announces another key and is not signed by it",
                field="public-key", expected=b64u_encode(pinned),
                found=b64u_encode(announced)), [("upstream index", doc, pinned)])
        if not doc.verified:
            raise _Stop(DocumentSignatureError(
                "the upstream's index is not signed by the pinned key",
                field=SIGNATURE_HEADER, expected=f"a signature by {b64u_encode(pinned)}",
                found=doc.signature or "no signature"), [("upstream index", doc, pinned)])
        doc.discard()
        if index.get("status") == "ERROR":
            raise refusal(doc.status, str(index.get("message", "refused")), doc.headers)

    # --- step 2: entries ------------------------------------------------------------------

    async def _pull(self, client: ChronicleClient, checker: SignatureChecker) -> None:
        store, sid = self.store, self.source.id
        head = await store.replication.chain(sid).head()
        verifier = ReplicaVerifier(head)
        if head is None:
            path, fresh, keys = "/export", False, EXPORT_KEYS
        else:
            path, fresh, keys = "/since/" + _quote(b64u_encode(head.summaryhash)), True, ROW_KEYS
        verifier.expect_keys(keys)
        while True:
            role = "upstream " + path.split("/")[1]
            started = time.monotonic()
            doc = await self._fetch(client, path, role)
            fetched = time.monotonic()
            kept = False
            try:
                header, rows, is_list = await self._ingest(doc, verifier, checker)
                log.info("replica %s: GET %s: %d bytes in %.2f s, %d entries verified and "
                         "stored in %.2f s", self.source.name, path, doc.size,
                         fetched - started, rows, time.monotonic() - fetched)
                if header.get("status") == "ERROR":
                    error = refusal(doc.status, str(header.get("message", "refused")),
                                    doc.headers)
                    if isinstance(error, RecordNotFound) and head is not None:
                        await self._analyse_lost_head(client, head, doc)
                    raise error
                paginated = header.get("paginated") is True
                client.check_envelope(header, doc.status, doc.headers, path,
                                      fresh=fresh or paginated)
                if not is_list:
                    raise MalformedError(f"the answer to GET {path} has no results list",
                                         field="results")
                more = paginated and isinstance(header.get("next"), str) and rows > 0
                total = header.get("total")
                if total is not None and (not isinstance(total, int) or isinstance(total, bool)
                                          or (total < rows if more else total != rows)):
                    raise AnchorError(f"the answer says total {total!r} but carries {rows} "
                                      "entries", field="total", expected=str(total),
                                      found=str(rows))
            except StaleResponseError:
                raise
            except ChainFault as fault:
                kept = True
                raise _Stop(fault, [(role, doc, client.server_key)]) from None
            except _Stop as stop:
                kept = any(d is doc for _, d, _ in stop.docs)
                raise
            finally:
                if not kept:
                    doc.discard()
            if not more:
                return
            head = await store.replication.chain(sid).head()
            assert head is not None
            path, fresh = "/since/" + _quote(b64u_encode(head.summaryhash)), True
            verifier.expect_keys(ROW_KEYS)

    async def _ingest(self, doc: FetchedDocument, verifier: ReplicaVerifier,
                      checker: SignatureChecker) -> tuple[dict[str, Any], int, bool]:
        """Verify and store the rows of one signed answer: (header, rows, results is a list).

        The CPU work (parsing, hashing) runs a chunk at a time in a thread; every
        ``chunk_rows`` entries go to ``checker`` as one signature batch (batches run in
        parallel); and once ``commit_rows`` entries are hashed, a commit waits for their
        signatures and stores them in one transaction (large transactions: each one
        touches the random-key hash indexes once, the dominant cost of a bulk copy).
        Commits happen in order. On a fault at entry ``k`` everything before ``k`` that
        verified is committed and the fault is raised (an earlier bad signature first).
        """
        parser = DocumentParser()
        chunks: Iterator[bytes] = doc.chunks()
        pending: list[tuple[Entry, Item]] = []
        grouping: list[tuple[list[Entry], asyncio.Task[list[int]]]] = []
        checking: deque[asyncio.Task[list[int]]] = deque()
        commits: deque[asyncio.Task[None]] = deque()
        depth = max(2, checker.workers * 2)
        size = self.options.chunk_rows
        commit_rows = max(size, self.options.commit_rows)
        rows_seen = 0
        done = False

        def step() -> tuple[list[tuple[Entry, Item]], ChainFault | None, bool]:
            chunk = next(chunks, None)
            rows = parser.close() if chunk is None else parser.feed(chunk)
            if rows and parser.header.get("status") != "OK":
                raise MalformedError("the answer carries entries but no status OK",
                                     field="status")
            out: list[tuple[Entry, Item]] = []
            for row in rows:
                try:
                    entry, signed = verifier.check(row)
                except ChainFault as fault:
                    return out, fault, chunk is None
                out.append((entry, (signed.publickey, signed.signature, signed.contents)))
            return out, None, chunk is None

        async def commit_group() -> None:
            nonlocal grouping
            if grouping:
                group, grouping = grouping, []
                previous = commits[-1] if commits else None
                commits.append(asyncio.create_task(self._commit(previous, group)))
            while len(commits) > 2:
                await commits.popleft()

        async def check(batch: list[tuple[Entry, Item]]) -> None:
            grouping.append(([e for e, _ in batch],
                             asyncio.create_task(checker.check([i for _, i in batch]))))
            checking.append(grouping[-1][1])
            while len(checking) > depth:
                await asyncio.wait({checking.popleft()})
            if sum(len(entries) for entries, _ in grouping) >= commit_rows:
                await commit_group()

        try:
            fault: ChainFault | None = None
            while not done and fault is None:
                verified, fault, done = await asyncio.to_thread(step)
                rows_seen += len(verified)
                pending.extend(verified)
                while len(pending) >= size:
                    batch, pending = pending[:size], pending[size:]
                    await check(batch)
            if pending:
                await check(pending)
            await commit_group()
            while commits:
                await commits.popleft()
            if fault is not None:
                raise fault
        finally:
            leftovers = [*commits, *checking, *(task for _, task in grouping)]
            for task in leftovers:
                task.cancel()
            for task in leftovers:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        return parser.header, rows_seen, parser.results_is_list

    async def _commit(self, previous: asyncio.Task[None] | None,
                      group: list[tuple[list[Entry], asyncio.Task[list[int]]]]) -> None:
        """Store a group of hashed batches once their signatures verified (after the
        previous group); on a bad signature store the verified entries before it."""
        results = [await task for _, task in group]
        if previous is not None:
            await previous
        entries: list[Entry] = []
        for (batch, _), bad in zip(group, results, strict=True):
            if bad:
                pos = min(bad)
                entries.extend(batch[:pos])
                await self._store(entries)
                raise EntrySignatureError(
                    "entry signature does not verify", index=batch[pos].index,
                    field="signature",
                    expected=f"a valid Ed25519 signature by {b64u_encode(batch[pos].publickey)}",
                    found=b64u_encode(batch[pos].signature))
            entries.extend(batch)
        await self._store(entries)

    async def _store(self, entries: list[Entry]) -> None:
        if entries:
            await self.store.replication.append(self.source.id, entries,
                                            replicated=atom(self.options.clock()))
            self.added += len(entries)

    # --- step 3: the upstream lost our head -----------------------------------------------

    async def _analyse_lost_head(self, client: ChronicleClient, head: Entry,
                                 refusal_doc: FetchedDocument) -> None:
        """``since`` of our newest summaryhash was refused as unknown: find out how the
        upstream's history differs from ours, and stop with the evidence."""
        key = client.server_key
        docs: list[tuple[str, FetchedDocument, bytes | None]] = [
            ("upstream since (our head unknown)", refusal_doc, key)]
        last_doc, parsed = await self._small(client, "/lasthash", "upstream lasthash")
        docs.append(("upstream lasthash", last_doc, key))
        try:
            upstream = head_of(parsed.get("results"))
        except ChainFault as fault:
            raise _Stop(fault, docs) from None
        ours = b64u_encode(head.summaryhash)
        if upstream is None:
            raise _Stop(TruncatedError("the upstream's chain is now empty; we verified "
                                       f"{head.index + 1} entries", index=0,
                                       field="summaryhash", expected=ours, found="empty chain"),
                        docs)
        copy = self.store.replication.chain(self.source.id)
        match = [e for e in await copy.lookup(_raw(upstream[1]))
                 if b64u_encode(e.summaryhash) == upstream[1]]
        if match and b64u_encode(match[0].currhash) == upstream[0] \
                and match[0].index < head.index:
            raise _Stop(TruncatedError(
                f"the upstream's chain now ends at entry {match[0].index}; entries "
                f"{match[0].index + 1}..{head.index} that it served before are gone",
                index=match[0].index + 1, field="summaryhash", expected=ours,
                found=upstream[1]), docs)
        index, theirs, more = await self._first_difference(client, head)
        docs.extend(more)
        ours_there = await self.store.replication.chain(self.source.id).entry_at(index)
        assert ours_there is not None
        raise _Stop(HistoryRewrittenError(
            f"the upstream no longer has the history we verified: entry {index} differs",
            index=index, field="currhash", expected=b64u_encode(ours_there.currhash),
            found=theirs or "not found"), docs)

    async def _knows(self, client: ChronicleClient, entry: Entry
                     ) -> tuple[bool, FetchedDocument]:
        """Does the upstream still have ``entry`` (same summaryhash and currhash)?"""
        summary = b64u_encode(entry.summaryhash)
        doc, parsed, refused = await self._signed(client, "/lookup/" + _quote(summary),
                                                  "upstream lookup")
        if isinstance(refused, RecordNotFound):
            return False, doc
        if refused is not None:
            doc.discard()
            raise refused
        rows = parsed.get("results")
        found = isinstance(rows, list) and any(
            isinstance(r, dict) and r.get("summaryhash") == summary
            and r.get("currhash") == b64u_encode(entry.currhash) for r in rows)
        return found, doc

    async def _first_difference(self, client: ChronicleClient, head: Entry
                                ) -> tuple[int, str | None,
                                           list[tuple[str, FetchedDocument, bytes | None]]]:
        """Binary search (signed lookups) for the first of our entries the upstream no
        longer has, and the upstream's own entry at that position."""
        key = client.server_key
        lo, hi = 0, head.index  # the entry at hi is unknown upstream
        known_doc: FetchedDocument | None = None
        unknown_doc: FetchedDocument | None = None
        while lo < hi:
            mid = (lo + hi) // 2
            entry = await self.store.replication.chain(self.source.id).entry_at(mid)
            assert entry is not None
            known, doc = await self._knows(client, entry)
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
        docs: list[tuple[str, FetchedDocument, bytes | None]] = []
        if unknown_doc is not None:
            docs.append((f"upstream lookup of our entry {lo} (unknown)", unknown_doc, key))
        if known_doc is not None:
            docs.append((f"upstream lookup of our entry {lo - 1} (known)", known_doc, key))
        # The upstream's entry at position lo: first row after our entry lo - 1.
        theirs: str | None = None
        if lo > 0:
            before = await self.store.replication.chain(self.source.id).entry_at(lo - 1)
            assert before is not None
            path = "/since/" + _quote(b64u_encode(before.summaryhash))
        else:
            path = "/export"
        try:
            doc = await self._fetch(client, path, "upstream entry at the fork")
        except TransportError:
            return lo, None, docs
        except _Stop as stop:
            for _, unused, _ in stop.docs:
                unused.discard()
            return lo, None, docs
        parser = DocumentParser()
        for chunk in doc.chunks():
            rows = parser.feed(chunk)
            if rows:
                first = rows[0]
                if isinstance(first, dict):
                    value = first.get("currhash", first.get("hash"))
                    theirs = value if isinstance(value, str) else None
                break
        docs.append((f"upstream entry {lo} ({path.split('/')[1]})", doc, key))
        return lo, theirs, docs

    # --- step 4: peers (split view) -------------------------------------------------------

    async def _check_peers(self, client: ChronicleClient) -> list[dict[str, Any]]:
        peers = await self.store.replication.peers(self.source.id)
        head = await self.store.replication.chain(self.source.id).head()
        if not peers or head is None:
            return []
        results: list[dict[str, Any]] = []
        docs: list[tuple[str, FetchedDocument, bytes | None]] = []
        for peer in peers:
            if peer.kind == "xsign":
                result = await self._check_xsign_peer(client, peer, docs)
            else:
                result = await self._check_replica_peer(peer, head, docs)
            results.append(result)
        split = [r for r in results if r["status"] == "disagrees"]
        if split:
            first = split[0]
            upstream_doc = None
            try:
                _, upstream_doc = await self._knows(client, head)
            except (_Stop, ChronicleError):
                upstream_doc = None
            if upstream_doc is not None:
                docs.insert(0, ("upstream lookup of our head", upstream_doc,
                                client.server_key))
            raise _Stop(SplitViewError(
                f"split view: {len(split)} peer(s) saw another history of this source "
                f"({first['url']})", index=first.get("index", head.index),
                field="summaryhash", expected=first.get("expected", b64u_encode(
                    head.summaryhash)), found=first.get("found"), peers=results), docs)
        for _, doc, _ in docs:
            doc.discard()
        return results

    async def _peer_key(self, peer: ReplicaPeer) -> bytes:
        if peer.publickey is not None:
            return peer.publickey
        async with self._client(peer.url, bytes(32)) as probe:
            doc = await probe.fetch("", from_root=True)
        announced = decode_b64_field(_parse_small(doc).get("public-key"), 32)
        sig = decode_b64_field((doc.signature or "").strip(), 64)
        if announced is None or sig is None or not verify(announced, doc.read(), sig):
            raise DocumentSignatureError(f"{peer.url} does not announce a self-signed key")
        return announced

    async def _check_replica_peer(self, peer: ReplicaPeer, head: Entry,
                                  docs: list[tuple[str, FetchedDocument, bytes | None]]
                                  ) -> dict[str, Any]:
        """Another copy of the same chain: one head must contain the other."""
        result: dict[str, Any] = {"url": peer.url, "kind": peer.kind}
        ours = b64u_encode(head.summaryhash)
        try:
            key = await self._peer_key(peer)
            async with self._client(peer.url, key) as pc:
                doc = await pc.fetch("/lasthash")
                if not doc.verified:
                    raise DocumentSignatureError(f"{peer.url}: lasthash is not signed by its key")
                parsed = _parse_small(doc)
                pc.check_envelope(parsed, doc.status, doc.headers, "/lasthash", fresh=True)
                theirs = head_of(parsed.get("results"))
                if theirs is None:
                    result["status"] = "behind"
                    return result
                result["head"] = theirs[1]
                local = await self.store.replication.chain(self.source.id).lookup(_raw(theirs[1]))
                if any(b64u_encode(e.currhash) == theirs[0] for e in local):
                    result["status"] = "agrees"
                    return result
                look = await pc.fetch("/lookup/" + _quote(ours))
                if not look.verified:
                    raise DocumentSignatureError(f"{peer.url}: lookup is not signed by its key")
                looked = _parse_small(look)
                try:
                    pc.check_envelope(looked, look.status, look.headers, "/lookup", fresh=True)
                except RecordNotFound:
                    result.update(status="disagrees", expected=ours, found=theirs[1],
                                  index=head.index)
                    docs.append((f"peer {peer.url} lasthash", doc, key))
                    docs.append((f"peer {peer.url} lookup of our head", look, key))
                    return result
                rows = looked.get("results")
                same = isinstance(rows, list) and any(
                    isinstance(r, dict) and r.get("summaryhash") == ours
                    and r.get("currhash") == b64u_encode(head.currhash) for r in rows)
                result["status"] = "ahead" if same else "disagrees"
                if not same:
                    result.update(expected=ours, found=theirs[1], index=head.index)
                    docs.append((f"peer {peer.url} lasthash", doc, key))
                    docs.append((f"peer {peer.url} lookup of our head", look, key))
        except ChronicleError as exc:
            result["status"] = "error"
            result["error"] = exc.diagnostics()
        return result

    async def _check_xsign_peer(self, client: ChronicleClient, peer: ReplicaPeer,
                                docs: list[tuple[str, FetchedDocument, bytes | None]]
                                ) -> dict[str, Any]:
        """A Chronicle the upstream cross-signs onto: every head the upstream published
        there must be one we hold, or one the upstream still serves (we are behind)."""
        result: dict[str, Any] = {"url": peer.url, "kind": peer.kind, "claims": 0}
        upstream_key = b64u_encode(self.source.publickey)
        try:
            key = await self._peer_key(peer)
            cursor = peer.cursor
            async with self._client(peer.url, key) as pc:
                walk = pc.since(cursor) if cursor else pc.export()
                try:
                    async for entry in walk:
                        cursor = entry.summaryhash
                        if entry.publickey != upstream_key:
                            continue
                        claim = parse_cross_sign(entry.contents)
                        if claim is None or claim.target != key:
                            continue
                        result["claims"] += 1
                        verdict = await self._check_claim(client, pc, claim.currhash,
                                                          claim.summaryhash, entry.currhash,
                                                          peer, key, docs)
                        if verdict is not None:
                            result.update(verdict)
                            return result
                except RecordNotFound:
                    cursor = None  # the peer lost our cursor: rescan next time
                    result["error"] = "the peer no longer has the scan position; rescanning"
            if peer.id:
                await self.store.replication.set_peer_cursor(peer.id, cursor)
            result.setdefault("status", "agrees")
        except ChronicleError as exc:
            result["status"] = "error"
            result["error"] = exc.diagnostics()
        return result

    async def _check_claim(self, client: ChronicleClient, pc: ChronicleClient, currhash: bytes,
                           summaryhash: bytes, entry_hash: str, peer: ReplicaPeer, key: bytes,
                           docs: list[tuple[str, FetchedDocument, bytes | None]]
                           ) -> dict[str, Any] | None:
        local = await self.store.replication.chain(self.source.id).lookup(summaryhash)
        if any(e.summaryhash == summaryhash and e.currhash == currhash for e in local):
            return None
        summary = b64u_encode(summaryhash)
        doc, parsed, refused = await self._signed(client, "/lookup/" + _quote(summary),
                                                  "upstream lookup of a cross-signed head")
        if refused is not None and not isinstance(refused, RecordNotFound):
            doc.discard()
            raise refused
        if refused is not None:
            denial = doc
            shown = await pc.fetch("/lookup/" + _quote(entry_hash))
            docs.append((f"peer {peer.url}: the upstream's cross-sign entry", shown, key))
            docs.append(("upstream lookup of the cross-signed head (unknown)", denial,
                         client.server_key))
            return {"status": "disagrees", "expected": summary,
                    "found": "unknown to the upstream", "index": None}
        doc.discard()
        rows = parsed.get("results")
        if isinstance(rows, list) and any(
                isinstance(r, dict) and r.get("currhash") == b64u_encode(currhash)
                for r in rows):
            return None  # the upstream has it: we are behind, the next sync copies it
        return {"status": "disagrees", "expected": summary, "found": "another currhash",
                "index": None}


def _unsigned_error(doc: FetchedDocument) -> None:
    if doc.signature is None and doc.status >= 400:
        doc.discard()
        raise TransportError(f"{doc.method} {doc.path}: unsigned HTTP {doc.status} answer "
                             "(not from the upstream's server, or it is broken)")


SPOOL_MAX_AGE = 3600.0


def _sweep(spool_dir: Path) -> None:
    """Remove spool files a crashed sync left behind (an hour old: no live sync reads
    them any more)."""
    if not spool_dir.is_dir():
        return
    cutoff = time.time() - SPOOL_MAX_AGE
    for path in spool_dir.glob("fetch-*.json"):
        with contextlib.suppress(OSError):
            if path.stat().st_mtime < cutoff:
                path.unlink()


def _raw(text: str) -> bytes:
    raw = decode_b64_field(text, 32)
    if raw is None:
        raise MalformedError("not a base64url hash", found=text)
    return raw


async def sync_sources(store: Store, sources: list[ReplicaSource], options: SyncOptions
                       ) -> list[SyncResult]:
    """Sync each source in turn (one signature checker shared by all)."""
    results = []
    async with SignatureChecker(mode=options.signature_mode,
                                workers=options.workers) as checker:
        for source in sources:
            results.append(await Replicator(store, source, options, checker).sync())
    return results
