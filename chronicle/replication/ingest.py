"""The ingest pipeline: rows of one signed upstream answer, verified and stored in order.

Three stages overlap so that a million-entry copy keeps every core busy:

1. parse + chain checks (a thread, a chunk of the document at a time): each row's link,
   currhash and summaryhash (:class:`~chronicle.core.replica.ReplicaVerifier`);
2. entry signatures, ``chunk_rows`` at a time, on the shared signature pool (batches run
   in parallel, at most ``2 × workers`` in flight);
3. commits, once ``commit_rows`` entries are hashed: a commit waits for its batches'
   signatures and stores them in one transaction (large transactions: each one touches
   the random-key hash indexes once, the dominant cost of a bulk copy). Commits happen in
   order, at most two in flight.

On a fault at entry ``k`` everything before ``k`` that verified is committed and the fault
is raised (an earlier bad signature first). A crash loses at most the commit in flight;
the next sync continues from the stored head.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from chronicle.client.http import FetchedDocument
from chronicle.client.sigpool import SignaturePool
from chronicle.client.sigworker import Item
from chronicle.core.blakechain import Entry
from chronicle.core.document import DocumentParser
from chronicle.core.encoding import atom, b64u_encode
from chronicle.core.replica import ReplicaVerifier
from chronicle.core.verify import ChainFault, EntrySignatureError, MalformedError
from chronicle.replication.upstream import SyncOptions
from chronicle.store import Store

Checked = tuple[list[Entry], asyncio.Task[list[int]]]


@dataclass(frozen=True, slots=True)
class Ingested:
    """What one answer carried: its non-results members, how many rows, whether
    ``results`` was a list."""

    header: dict[str, Any]
    rows: int
    results_is_list: bool


class _Pipeline:
    """Stages 2 and 3 for one document (see the module docstring)."""

    def __init__(self, ingest: Ingest) -> None:
        self.ingest = ingest
        self.size = ingest.options.chunk_rows
        self.commit_rows = max(self.size, ingest.options.commit_rows)
        self.depth = max(2, ingest.pool.workers * 2)
        self.pending: list[tuple[Entry, Item]] = []
        self.grouping: list[Checked] = []
        self.checking: deque[asyncio.Task[list[int]]] = deque()
        self.commits: deque[asyncio.Task[None]] = deque()

    async def add(self, verified: list[tuple[Entry, Item]]) -> None:
        self.pending.extend(verified)
        while len(self.pending) >= self.size:
            batch, self.pending = self.pending[:self.size], self.pending[self.size:]
            await self._check(batch)

    async def finish(self) -> None:
        """Everything added is checked and committed (or the first fault raised)."""
        if self.pending:
            await self._check(self.pending)
            self.pending = []
        await self._commit_group()
        while self.commits:
            await self.commits.popleft()

    async def _check(self, batch: list[tuple[Entry, Item]]) -> None:
        self.checking.append(asyncio.create_task(
            self.ingest.pool.check([item for _, item in batch])))
        self.grouping.append(([entry for entry, _ in batch], self.checking[-1]))
        while len(self.checking) > self.depth:
            await asyncio.wait({self.checking.popleft()})
        if sum(len(entries) for entries, _ in self.grouping) >= self.commit_rows:
            await self._commit_group()

    async def _commit_group(self) -> None:
        if self.grouping:
            group, self.grouping = self.grouping, []
            previous = self.commits[-1] if self.commits else None
            self.commits.append(asyncio.create_task(self.ingest.commit(previous, group)))
        while len(self.commits) > 2:
            await self.commits.popleft()

    async def cancel(self) -> None:
        leftovers = [*self.commits, *self.checking, *(task for _, task in self.grouping)]
        for task in leftovers:
            task.cancel()
        for task in leftovers:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


class Ingest:
    """Verify and store the rows of one source's signed answers (see the module doc)."""

    def __init__(self, store: Store, source_id: int, options: SyncOptions,
                 pool: SignaturePool) -> None:
        self.store = store
        self.source_id = source_id
        self.options = options
        self.pool = pool
        self.added = 0

    async def document(self, doc: FetchedDocument, verifier: ReplicaVerifier) -> Ingested:
        """Verify and store every row of ``doc`` in order; raise the first fault."""
        parser = DocumentParser()
        self.pool.expect_bytes(doc.size)
        rows = await self.rows(_document_rows(parser, doc.chunks()), verifier)
        return Ingested(parser.header, rows, parser.results_is_list)

    async def rows(self, batches: Iterator[list[Any]], verifier: ReplicaVerifier) -> int:
        """Verify and store rows given in batches (read in a thread: the iterator may
        parse or read a file); raise the first fault. Returns how many verified."""
        pipeline = _Pipeline(self)
        count = 0
        try:
            fault: ChainFault | None = None
            done = False
            while not done and fault is None:
                verified, fault, done = await asyncio.to_thread(_step, batches, verifier)
                count += len(verified)
                await pipeline.add(verified)
            await pipeline.finish()
            if fault is not None:
                raise fault
        finally:
            await pipeline.cancel()
        return count

    async def commit(self, previous: asyncio.Task[None] | None, group: list[Checked]) -> None:
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
            await self.store.replication.append(self.source_id, entries,
                                                replicated=atom(self.options.clock()))
            self.added += len(entries)


def _document_rows(parser: DocumentParser, chunks: Iterator[bytes]) -> Iterator[list[Any]]:
    """The rows of a document, a chunk's worth at a time (only an OK answer has any)."""
    def ok(rows: list[Any]) -> list[Any]:
        if rows and parser.header.get("status") != "OK":
            raise MalformedError("the answer carries entries but no status OK", field="status")
        return rows

    for chunk in chunks:
        yield ok(parser.feed(chunk))
    yield ok(parser.close())


def _step(batches: Iterator[list[Any]], verifier: ReplicaVerifier
          ) -> tuple[list[tuple[Entry, Item]], ChainFault | None, bool]:
    """Stage 1 for one batch: its rows checked in order; the first fault stops the batch
    (what verified before it is returned). The third value is True at the end."""
    rows = next(batches, None)
    if rows is None:
        return [], None, True
    out: list[tuple[Entry, Item]] = []
    for row in rows:
        try:
            entry, signed = verifier.check(row)
        except ChainFault as fault:
            return out, fault, False
        out.append((entry, (signed.publickey, signed.signature, signed.contents)))
    return out, None, False
