"""Copy an upstream Chronicle into a replica chain, believing nothing unverified.

One :meth:`Replicator.sync` of one source:

1. ``GET /chronicle``: the upstream's signed index must announce the pinned key
   (:meth:`Upstream.check_key <chronicle.replication.upstream.Upstream.check_key>`).
2. ``GET /export`` the first time, then ``GET /since/{our newest summaryhash}``; as PHP's
   replicator, a paginated answer with ``next`` is followed by asking ``since`` of the
   newest stored summaryhash again. Each answer is read whole (in memory, or spooled to a
   file under the data dir when large) and its signature checked before anything in it is
   used; then its rows go through the ingest pipeline (:mod:`.ingest`): verified in order
   and committed in chunks as they verify.
3. ``since`` of our head answered "No record found": the upstream no longer has the
   history we verified (:mod:`.forensics` tells a truncation from a rewrite).
4. With the upstream's checkpoint key configured, its Merkle tree checkpoint must extend
   the last one verified (:mod:`.tree`).
5. With peers configured, heads are compared (:mod:`.peers`: split view).

A fault stops the source with its evidence (the signed answers) and never touches what
was verified before. Network trouble, signed refusals and stale answers only postpone:
the source stays active and the next attempt backs off.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from chronicle.client.errors import RecordNotFound, ServerRefused, StaleResponseError, refusal
from chronicle.client.http import FetchedDocument
from chronicle.client.reorder import RowBuffer
from chronicle.client.sigpool import SignaturePool
from chronicle.core.agreement import PeerReport
from chronicle.core.blakechain import Entry
from chronicle.core.document import DocumentParser
from chronicle.core.encoding import atom, b64u_encode, decode_b64_field
from chronicle.core.errors import ChronicleError, StorageError, TransportError
from chronicle.core.replica import (
    STATUS_ACTIVE,
    STATUS_FORKED,
    ForkedLinkError,
    ReplicaVerifier,
    fault_details,
    status_for,
)
from chronicle.core.verify import (
    EXPORT_KEYS,
    ROW_KEYS,
    AnchorError,
    BrokenLinkError,
    ChainFault,
    MalformedError,
)
from chronicle.replication.evidence import EvidenceKeeper
from chronicle.replication.forensics import analyse_lost_head
from chronicle.replication.ingest import Ingest, Ingested
from chronicle.replication.peers import check_peers
from chronicle.replication.tree import check_tree
from chronicle.replication.upstream import Evidence, Stop, SyncOptions, Upstream, quote_hash
from chronicle.store import Chain, ReplicaFault, ReplicaSource, Store

log = logging.getLogger(__name__)

__all__ = ["Replicator", "SyncOptions", "SyncResult", "SyncStatus", "sync_sources"]


class SyncStatus(StrEnum):
    OK = "ok"              # verified and stored everything offered
    FORKED = "forked"      # the upstream showed a conflicting history: stopped
    FAILED = "failed"      # the upstream sent something that does not verify: stopped
    ERROR = "error"        # transient (network, refusal, stale answer): retried later
    STOPPED = "stopped"    # the source was already stopped; nothing was asked


@dataclass
class SyncResult:
    """What one sync of one source did."""

    name: str
    uniqueid: str
    status: SyncStatus
    added: int = 0
    entries: int = 0
    head: str | None = None
    error: str | None = None
    fault: ChainFault | None = None
    peers: list[PeerReport] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def clean(self) -> bool:
        return self.status == SyncStatus.OK

    def as_dict(self) -> dict[str, Any]:
        rate = self.added / self.seconds if self.seconds > 0 else None
        fault = None if self.fault is None else {"kind": self.fault.kind,
                                                 **fault_details(self.fault)}
        return {"name": self.name, "id": self.uniqueid, "status": str(self.status),
                "added": self.added, "entries": self.entries, "head": self.head,
                "error": self.error, "fault": fault,
                "peers": [p.as_dict() for p in self.peers],
                "seconds": round(self.seconds, 3),
                "entries-per-second": None if rate is None else round(rate, 1)}


class Replicator:
    """Sync one replication source (see the module docstring)."""

    def __init__(self, store: Store, source: ReplicaSource, options: SyncOptions,
                 pool: SignaturePool | None = None) -> None:
        self.store = store
        self.source = source
        self.options = options
        self.keeper = EvidenceKeeper(options.evidence_dir)
        self._own_pool = pool is None
        self.pool = pool or SignaturePool(mode=options.signature_mode, workers=options.workers)
        self.ingest = Ingest(store, source.id, options, self.pool)

    async def sync(self) -> SyncResult:
        source = self.source
        started = time.monotonic()
        result = SyncResult(source.name, source.uniqueid, SyncStatus.OK)
        if source.status != STATUS_ACTIVE:
            result.status = SyncStatus.STOPPED
            result.error = f"{source.status}: {source.reason}"
        else:
            _sweep(self.options.spool_dir)
            try:
                await self._attempt(result)
            finally:
                if self._own_pool:
                    await self.pool.aclose()
        head = await self.store.replication.chain(source.id).head()
        result.added = self.ingest.added
        result.entries = 0 if head is None else head.index + 1
        result.head = None if head is None else b64u_encode(head.summaryhash)
        result.seconds = time.monotonic() - started
        return result

    async def _attempt(self, result: SyncResult) -> None:
        source = self.source
        try:
            async with self.options.client(source.url, source.publickey) as client:
                upstream = Upstream(client, self.options)
                await upstream.check_key()
                await self._pull(upstream)
                await check_tree(self.store, source, upstream, self.options.clock)
                result.peers = await check_peers(self.store, source, upstream, self.options)
        except Stop as stop:
            await self._record(stop, result)
        except ChainFault as fault:  # a fault found without a document to show for it
            await self._record(Stop(fault, []), result)
        except (StaleResponseError, ServerRefused, TransportError, StorageError,
                ChronicleError) as exc:
            result.status = SyncStatus.ERROR
            result.error = exc.diagnostics()
        except Exception as exc:  # a bug, or input nobody foresaw: this source only
            log.exception("replica %s: sync failed unexpectedly", source.name)
            result.status = SyncStatus.ERROR
            result.error = f"internal error: {type(exc).__name__}: {exc}"[:500]
        when = atom(self.options.clock())
        if result.status == SyncStatus.OK:
            await self.store.replication.record_attempt(source.id, when=when, error=None)
        elif result.status == SyncStatus.ERROR:
            log.warning("replica %s: sync failed, will retry: %s", source.name, result.error)
            await self.store.replication.record_attempt(source.id, when=when,
                                                        error=result.error)

    async def _record(self, stop: Stop, result: SyncResult) -> None:
        fault = stop.fault
        status = status_for(fault)
        documents = tuple(self.keeper.keep(role, doc, signer) for role, doc, signer in stop.docs)
        record = ReplicaFault(status=status, kind=fault.kind, message=fault.diagnostics(),
                              recorded=atom(self.options.clock()),
                              details=fault_details(fault), documents=documents)
        await self.store.replication.record_fault(self.source.id, record)
        log.error("replica %s stopped (%s): %s", self.source.name, status, fault.diagnostics())
        result.status = SyncStatus.FORKED if status == STATUS_FORKED else SyncStatus.FAILED
        result.error = fault.diagnostics()
        result.fault = fault

    # --- entries ------------------------------------------------------------------------

    async def _pull(self, upstream: Upstream) -> None:
        """``export`` (or ``since`` our head), then each continuation, until all is copied."""
        copy = self.store.replication.chain(self.source.id)
        head = await copy.head()
        verifier = ReplicaVerifier(head)
        if head is None:
            path, fresh, keys = "/export", False, EXPORT_KEYS
        else:
            path, fresh, keys = _since(head), True, ROW_KEYS
        verifier.expect_keys(keys)
        while True:
            more = await self._pull_one(upstream, path, verifier, head, fresh=fresh)
            if not more:
                return
            head = await copy.head()
            assert head is not None
            path, fresh = _since(head), True
            verifier.expect_keys(ROW_KEYS)

    async def _pull_one(self, upstream: Upstream, path: str, verifier: ReplicaVerifier,
                        head: Entry | None, *, fresh: bool) -> bool:
        """One answer, verified and stored; True when a next page is offered."""
        role = "upstream " + path.split("/")[1]
        started = time.monotonic()
        doc = await upstream.fetch(path, role)
        fetched = time.monotonic()
        kept = False
        try:
            try:
                got = await self.ingest.document(doc, verifier)
            except BrokenLinkError:
                if head is None:
                    raise
                # A since answer whose rows are not in chain order (PHP's replicas list
                # them by summaryhash): put them back in order before judging.
                kept = True
                await self._reorder(upstream, path, doc, role)
                return False
            log.info("replica %s: GET %s: %d bytes in %.2f s, %d entries verified and "
                     "stored in %.2f s", self.source.name, path, doc.size, fetched - started,
                     got.rows, time.monotonic() - fetched)
            if got.header.get("status") == "ERROR":
                error = refusal(doc.status, str(got.header.get("message", "refused")),
                                doc.headers)
                if isinstance(error, RecordNotFound) and head is not None:
                    kept = True
                    await analyse_lost_head(upstream, self.store.replication.chain(
                        self.source.id), head, doc)
                raise error
            return _continues(upstream, got, doc.status, doc.headers, path, fresh=fresh)
        except StaleResponseError:
            raise
        except ChainFault as fault:
            kept = True
            raise Stop(fault, [(role, doc, upstream.key)]) from None
        except Stop as stop:
            kept = kept and any(d is doc for _, d, _ in stop.docs)
            raise
        finally:
            if not kept:
                doc.discard()

    async def _reorder(self, upstream: Upstream, path: str, first: FetchedDocument,
                       role: str) -> None:
        """Accept a ``since`` answer (all its pages) whose rows, put in chain order from
        our head, form exactly one chain continuing it with no row left over (repeats
        dropped; a missing row asked for once more); else it is a fork."""
        docs: Evidence = [(role, first, upstream.key)]
        copy = self.store.replication.chain(self.source.id)
        try:
            with RowBuffer(self.options.spool_dir) as buffer:
                await self._buffer_pages(upstream, path, first, buffer, docs)
                head = await self._take_chain(copy, buffer)
                left = [c for c in buffer.left() if not await _holds(copy, c)]
                if left:  # a row may be missing from these pages: ask once more
                    again = _since(head)
                    docs.append((role, await upstream.fetch(again, role), upstream.key))
                    await self._buffer_pages(upstream, again, docs[-1][1], buffer, docs)
                    head = await self._take_chain(copy, buffer)
                    left = [c for c in buffer.left() if not await _holds(copy, c)]
                if left:
                    raise ForkedLinkError(
                        f"{len(left)} row(s) of the since answer do not continue our chain "
                        "in any order", index=head.index + 1, field="prevhash",
                        expected=b64u_encode(head.currhash), found=left[0])
        except ChainFault as fault:
            raise Stop(fault, docs) from None
        for _, doc, _ in docs:
            doc.discard()

    async def _take_chain(self, copy: Chain, buffer: RowBuffer) -> Entry:
        """Verify and store the buffered rows that continue our head, in chain order."""
        head = await copy.head()
        assert head is not None
        verifier = ReplicaVerifier(head)
        verifier.expect_keys(ROW_KEYS)
        await self.ingest.rows(buffer.chain_from(b64u_encode(head.currhash)), verifier)
        head = await copy.head()
        assert head is not None
        return head

    async def _buffer_pages(self, upstream: Upstream, path: str, doc: FetchedDocument,
                            buffer: RowBuffer, docs: Evidence) -> None:
        """Every row of ``doc`` and of the pages after it into ``buffer``."""
        total_rows, first_total = 0, None
        while True:
            header, results_is_list, rows = await asyncio.to_thread(_buffer_rows, doc, buffer)
            if header.get("status") == "ERROR":
                raise refusal(doc.status, str(header.get("message", "refused")), doc.headers)
            upstream.client.check_envelope(header, doc.status, doc.headers, path, fresh=True)
            if not results_is_list:
                raise MalformedError(f"the answer to GET {path} has no results list",
                                     field="results")
            total_rows += rows
            if first_total is None:
                first_total = header.get("total")
            nxt = header.get("next") if header.get("paginated") is True else None
            if not isinstance(nxt, str) or rows == 0:
                break
            path = nxt
            doc = await upstream.fetch(path, "upstream since (next page)", from_root=True)
            docs.append(("upstream since (next page)", doc, upstream.key))
        if first_total is not None and first_total != total_rows:
            raise AnchorError(f"the answer says total {first_total!r} but carries "
                              f"{total_rows} entries", field="total",
                              expected=str(first_total), found=str(total_rows))


async def _holds(copy: Chain, currhash: str) -> bool:
    """Is this row already in our copy (a repeat of a row we stored)?"""
    raw = decode_b64_field(currhash, 32)
    return raw is not None and any(e.currhash == raw for e in await copy.lookup(raw))


def _buffer_rows(doc: FetchedDocument, buffer: RowBuffer
                 ) -> tuple[dict[str, Any], bool, int]:
    parser = DocumentParser()
    count = 0
    for chunk in doc.chunks():
        rows = parser.feed(chunk)
        buffer.add(rows)
        count += len(rows)
    rows = parser.close()
    buffer.add(rows)
    return parser.header, parser.results_is_list, count + len(rows)


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


def _since(head: Entry) -> str:
    return "/since/" + quote_hash(b64u_encode(head.summaryhash))


def _continues(upstream: Upstream, got: Ingested, status: int, headers: dict[str, str],
               path: str, *, fresh: bool) -> bool:
    """Check an answer's envelope and ``total``; True when it offers a next page."""
    header = got.header
    paginated = header.get("paginated") is True
    upstream.client.check_envelope(header, status, headers, path, fresh=fresh or paginated)
    if not got.results_is_list:
        raise MalformedError(f"the answer to GET {path} has no results list", field="results")
    more = paginated and isinstance(header.get("next"), str) and got.rows > 0
    total = header.get("total")
    if total is not None and (not isinstance(total, int) or isinstance(total, bool)
                              or (total < got.rows if more else total != got.rows)):
        raise AnchorError(f"the answer says total {total!r} but carries {got.rows} entries",
                          field="total", expected=str(total), found=str(got.rows))
    return more


async def sync_sources(store: Store, sources: list[ReplicaSource], options: SyncOptions
                       ) -> list[SyncResult]:
    """Sync each source in turn (one signature pool shared by all)."""
    results = []
    async with SignaturePool(mode=options.signature_mode, workers=options.workers) as pool:
        for source in sources:
            results.append(await Replicator(store, source, options, pool).sync())
    return results
