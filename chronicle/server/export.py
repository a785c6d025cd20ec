"""Signed documents of any size (``export``, ``since``, their pages) with bounded memory.

Ed25519 hashes a message twice, so a signature header can only be sent once the whole
document exists; a document therefore stays in memory while it is small and continues
into a spool file past ``MEMORY_BYTES``. What one anonymous request may cost is bounded
(docs/security.md, "Signed documents"):

* **memory per build**: range reads are planned from the rows' sizes (a size query looks
  ahead for rows larger than :attr:`Limits.small_row`) so that the rows of one read take
  at most ``document-page-bytes`` once JSON-escaped (a byte of contents counts 6: a
  control character becomes ``\\u0001``); rows are rendered one by one, a large one in
  pieces (:func:`~chronicle.core.protocol.render_row_pieces`), straight into the signer
  and the spool, so no page or row ever exists as one string;
* **builds at once**: ``document-builds`` per process, ``document-queue`` more wait;
  beyond that a signed 503 + ``Retry-After`` (:class:`BuildGate`);
* **one build per document**: concurrent identical requests (same chain, query and head)
  share one build and one spool file, each reader with its own handle on it; the full
  export of an unchanged chain is kept on disk and served again;
* **spool disk**: every spooled byte, files being built, cached, or unlinked but still
  open for a reader, is charged to ``spool-max-bytes``; a build that would pass it fails
  with a signed 507 (it alone is too large) or 503 (others hold the space);
* **slow readers**: a reader that takes no ``CHUNK`` within ``document-send-timeout`` is
  disconnected, which frees its share.

Each server process spools into its own directory (``cache/p<pid>``) and hands every
response an already open file, so no process or concurrent request can replace or delete
a file that is being served; directories of processes that are gone are swept at start.
"""

from __future__ import annotations

import asyncio
import bisect
import collections
import logging
import os
import shutil
import tempfile
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from aiohttp import web

from chronicle.config import DEFAULTS, Settings
from chronicle.core import protocol
from chronicle.core.blakechain import Entry
from chronicle.core.encoding import b64u_encode
from chronicle.core.errors import ChronicleError, OverloadedError
from chronicle.core.sapient import SIGNATURE_HEADER, SigningKey, StreamingSigner
from chronicle.server.responses import send_paced
from chronicle.store import Chain

log = logging.getLogger(__name__)

SMALL_DOCUMENT_ROWS = 1000  # below this many rows a full export is not kept on disk
MEMORY_BYTES = 4 << 20      # a document larger than this is spooled to disk
PAGE_ROWS = 2000            # most rows in one range read
ROW_OVERHEAD = 400          # escaped bytes of a row besides its contents (hashes, keys)
PIECE = 1 << 16             # contents larger than this are escaped piece by piece
EMIT_BYTES = 1 << 20        # small rows are written in runs of about this size
SIZE_LOOKAHEAD = 16 * PAGE_ROWS  # rows one size query looks at
SIZE_LIMIT = 256            # most large rows one size query returns
CHUNK = 1 << 20             # a reader is sent the spool file this much at a time
RETRY_AFTER = 5             # seconds, on a 503 of this module

MSG_BUSY = "Too many documents are being prepared; retry later"


def msg_too_large(limit: int) -> str:
    return (f"Document too large for the server's spool (spool-max-bytes: {limit} bytes); "
            "ask for it in pages")


def msg_spool_busy(limit: int) -> str:
    return (f"Spool space (spool-max-bytes: {limit} bytes) is held by other documents; "
            "retry later")


@dataclass(frozen=True, slots=True)
class Limits:
    """What one document may cost (the ``document-*`` and ``spool-max-bytes`` settings)."""

    builds: int
    queue: int
    page_bytes: int
    spool_bytes: int
    send_timeout: float | None

    @classmethod
    def from_settings(cls, settings: Settings) -> Limits:
        timeout = settings.document_send_timeout
        return cls(builds=settings.document_builds, queue=settings.document_queue,
                   page_bytes=settings.document_page_bytes,
                   spool_bytes=settings.spool_max_bytes,
                   send_timeout=timeout.total_seconds() if timeout else None)

    @property
    def small_row(self) -> int:
        """Contents up to this size are planned as if this size, unlooked-up: a read of
        ``PAGE_ROWS`` of them stays within ``page_bytes`` however they escape."""
        return max(0, (self.page_bytes // PAGE_ROWS - ROW_OVERHEAD) // protocol.ESCAPE_GROWTH)


def row_cost(size: int) -> int:
    """The most bytes a row with ``size`` bytes of contents can take in a document."""
    return protocol.ESCAPE_GROWTH * size + ROW_OVERHEAD


def plan_read(pos: int, known: int, large: list[tuple[int, int]], limits: Limits) -> int:
    """The end of the next range read from ``pos``: rows below ``known`` whose sizes are
    ``large`` (sorted ``(index, size)``) or else at most ``limits.small_row``; together at
    most ``limits.page_bytes`` escaped (one row at least) and ``PAGE_ROWS`` rows."""
    small = row_cost(limits.small_row)
    end, cost, count = pos, 0, 0
    i = bisect.bisect_left(large, pos, key=lambda row: row[0])
    while end < known and count < PAGE_ROWS:
        if i < len(large) and large[i][0] == end:
            c = row_cost(large[i][1])
            if count and cost + c > limits.page_bytes:
                break
            cost, count, end, i = cost + c, count + 1, end + 1, i + 1
            continue
        run_end = large[i][0] if i < len(large) else known
        n = min(run_end - end, PAGE_ROWS - count, (limits.page_bytes - cost) // small)
        if n <= 0:
            if count:
                break
            n = 1
        cost, count, end = cost + n * small, count + n, end + n
    return end


async def large_rows(chain: Chain, start: int, stop: int, over: int) -> list[tuple[int, int]]:
    """``(index, size)`` of the first ``SIZE_LIMIT`` rows in ``[start, stop)`` whose
    contents are larger than ``over`` bytes; their contents are not read (SQLite and
    PostgreSQL take ``length`` of a blob from its header)."""
    return await chain.large_rows(start, stop, over, SIZE_LIMIT)


# --- what a build holds ---------------------------------------------------------------------

class SpoolBudget:
    """Spool bytes charged per process (thread-safe: documents are written in threads)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self._lock = threading.Lock()

    def charge(self, n: int, own: int) -> None:
        """Take ``n`` more bytes for a file that already holds ``own``, or fail: 507 when
        that file alone would be too large, else 503 (others hold the space)."""
        with self._lock:
            if self.used + n > self.limit:
                if own + n > self.limit or self.used == own:
                    raise ChronicleError(msg_too_large(self.limit), status=507)
                raise OverloadedError(msg_spool_busy(self.limit), retry_after=RETRY_AFTER)
            self.used += n

    def give(self, n: int) -> None:
        with self._lock:
            self.used -= n


class BuildGate:
    """At most ``slots`` builds run at once and ``queue`` wait; past that: a signed 503."""

    def __init__(self, slots: int, queue: int) -> None:
        self.slots = slots
        self.queue = queue
        self.running = 0
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()

    @property
    def waiting(self) -> int:
        return sum(1 for w in self._waiters if not w.done())

    def reserve(self) -> asyncio.Future[None] | None:
        """At once, in the request: a slot (None) or a place in the queue, else 503."""
        if self.running < self.slots:
            self.running += 1
            return None
        if self.waiting >= self.queue:
            raise OverloadedError(MSG_BUSY, retry_after=RETRY_AFTER)
        place = asyncio.get_running_loop().create_future()
        self._waiters.append(place)
        return place

    async def acquire(self, place: asyncio.Future[None] | None) -> None:
        """Wait for the slot a place in the queue promises (a reserved slot is held)."""
        if place is None:
            return
        try:
            await place
        except asyncio.CancelledError:
            if place.done() and not place.cancelled():
                self.release()  # the slot came just as we gave up: pass it on
            raise

    def release(self) -> None:
        while self._waiters:
            place = self._waiters.popleft()
            if not place.done():
                place.set_result(None)  # the slot passes to the next in the queue
                return
        self.running -= 1


@dataclass(eq=False)
class Built:
    """A rendered, signed document: in memory, or an open spool file charged to the budget.

    Every reader reads the one open file at its own offset (``os.pread``), so a document
    is on disk once however many read it. ``path`` is where it is linked: only the kept
    full export (``kept``) stays linked; other documents are unlinked once built. The
    file is closed, and its bytes given back, once it is neither kept nor read nor awaited.
    """

    signature: str
    size: int
    body: bytes | None = None
    fh: BinaryIO | None = None
    path: Path | None = None
    charged: int = 0
    readers: int = 0
    kept: bool = False

    def unlink(self) -> None:
        if self.path is not None:
            self.path.unlink(missing_ok=True)
            self.path = None


@dataclass
class Document:
    """One reader's share of a document; ``release`` must be called once it is served."""

    signature: str
    size: int
    body: bytes | None = None
    fd: int | None = None
    release: Callable[[], None] = lambda: None


@dataclass(eq=False)
class _Shared:
    """One build and the requests waiting for it."""

    task: asyncio.Task[Built] | None = None
    waiting: int = 0
    abandoned: bool = False  # nobody waits any more: the build stops at its next read


class _Abandoned(Exception):
    pass


class _Sink:
    """Where a document's bytes go: the signer's first pass, then memory or the spool."""

    def __init__(self, builder: DocumentBuilder, signer: StreamingSigner) -> None:
        self.builder = builder
        self.signer = signer
        self.parts: list[bytes] = []
        self.size = 0
        self.charged = 0
        self.out: BinaryIO | None = None
        self.path: Path | None = None

    def emit(self, data: bytes) -> None:
        self.signer.first(data)
        self.size += len(data)
        if self.out is None and self.size <= MEMORY_BYTES:
            self.parts.append(data)
            return
        budget = self.builder.spool
        if self.out is None:
            budget.charge(self.size, 0)
            self.charged = self.size
            fd, name = self.builder._spool_file()
            self.out, self.path = os.fdopen(fd, "w+b"), Path(name)
            self.out.writelines(self.parts)
            self.parts.clear()
        else:
            budget.charge(len(data), self.charged)
            self.charged += len(data)
        self.out.write(data)

    def discard(self) -> None:
        if self.out is not None:
            self.out.close()
        if self.path is not None:
            self.path.unlink(missing_ok=True)
        self.builder.spool.give(self.charged)
        self.charged = 0


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


Rows = Callable[[], AsyncIterator[list[Entry]]]


class DocumentBuilder:
    """Renders and signs documents, one build per identical request; keeps the full export
    per chain head."""

    def __init__(self, key: SigningKey, cache_dir: Path, *, cache_exports: bool = True,
                 limits: Limits | None = None) -> None:
        self.key = key
        self.root = cache_dir
        self.cache_dir = cache_dir / f"p{os.getpid()}"
        self.cache_exports = cache_exports
        self.limits = limits or Limits.from_settings(DEFAULTS)
        self.gate = BuildGate(self.limits.builds, self.limits.queue)
        self.spool = SpoolBudget(self.limits.spool_bytes)
        self._configured = limits is not None
        self._shared: dict[Hashable, _Shared] = {}
        self._cached: dict[str, tuple[int, bytes, Built]] = {}
        self.builds = 0   # full exports rendered for the cache
        self.renders = 0  # documents rendered (a shared build counts once)
        self._swept = False

    def configure(self, settings: Settings) -> None:
        """Take the limits from ``settings``, once, before the first build."""
        if self._configured:
            return
        self._configured = True
        self.limits = Limits.from_settings(settings)
        self.gate = BuildGate(self.limits.builds, self.limits.queue)
        self.spool.limit = self.limits.spool_bytes

    # --- spool files ----------------------------------------------------------------------

    def _spool_file(self) -> tuple[int, str]:
        """A new file in this process's spool directory (sweeping dead ones first)."""
        if not self._swept:
            self._sweep()
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        return tempfile.mkstemp(prefix="doc-", suffix=".json", dir=self.cache_dir)

    def _sweep(self) -> None:
        """Remove spool directories of processes that no longer exist (crashes included)."""
        self._swept = True
        if not self.root.is_dir():
            return
        for child in self.root.iterdir():
            if child.is_dir() and child.name.startswith("p") and child.name[1:].isdigit():
                pid = int(child.name[1:])
                if pid == os.getpid() or not _alive(pid):
                    shutil.rmtree(child, ignore_errors=True)
            elif child.is_file() and child.name.startswith(("doc-", "export-")):
                child.unlink(missing_ok=True)  # left by an older layout

    def _drop(self, built: Built) -> None:
        """Close a spool file nobody keeps, reads or awaits; its bytes are free again."""
        if built.kept or built.readers or built.fh is None:
            return
        built.unlink()
        built.fh.close()
        built.fh = None
        self.spool.give(built.charged)
        built.charged = 0

    def close(self) -> None:
        """Close and remove the kept exports: the server stops."""
        for _, _, built in self._cached.values():
            built.kept = False
            self._drop(built)  # a reader still sending closes it when it finishes
        self._cached.clear()

    # --- reading rows ---------------------------------------------------------------------

    async def pages(self, chain: Chain, start: int, stop: int) -> AsyncIterator[list[Entry]]:
        """Range reads of ``[start, stop)``, each within ``document-page-bytes`` once
        escaped (:func:`plan_read`), whatever the rows hold."""
        limits = self.limits
        pos = known = start
        large: list[tuple[int, int]] = []
        ahead: asyncio.Future[list[tuple[int, int]]] | None = None  # sizes from ``known`` on

        def look(at: int) -> Awaitable[list[tuple[int, int]]]:
            return large_rows(chain, at, min(stop, at + SIZE_LOOKAHEAD), limits.small_row)

        def drop_ahead() -> None:
            if ahead is not None:
                ahead.cancel()
                ahead.add_done_callback(lambda f: f.cancelled() or f.exception())

        try:
            while pos < stop:
                if pos >= known:
                    if ahead is not None and pos == known:
                        large = await ahead
                    else:
                        drop_ahead()
                        large = await look(pos)
                    ahead = None
                    known = (min(stop, pos + SIZE_LOOKAHEAD) if len(large) < SIZE_LIMIT
                             else large[-1][0] + 1)
                    if known < stop:  # the next sizes are read while these rows render
                        ahead = asyncio.ensure_future(look(known))
                page = await chain.range(pos, plan_read(pos, known, large, limits))
                if not page:
                    return
                yield page
                pos = page[-1].index + 1
        finally:
            drop_ahead()

    # --- rendering ------------------------------------------------------------------------

    @staticmethod
    def _render_rows(sink: _Sink, doc: protocol.StreamedDocument, entries: list[Entry],
                     first: bool, export: bool, first_prev: str | None) -> bool:
        """Write ``entries`` (after the head or a separator); small rows in runs, a large
        one in pieces. Returns whether nothing was written yet."""
        run: list[str] = []
        pending = 0
        for entry in entries:
            sep = doc.head if first else ",\n"
            first = False
            if len(entry.contents) <= PIECE:
                text = protocol.render_row_indented(entry, export=export,
                                                    first_prev=first_prev)
                run += (sep, text)
                pending += len(text)
                if pending >= EMIT_BYTES:
                    sink.emit("".join(run).encode("ascii"))
                    run, pending = [], 0
                continue
            run.append(sep)
            sink.emit("".join(run).encode("ascii"))
            run, pending = [], 0
            for piece in protocol.render_row_pieces(entry, export=export,
                                                    first_prev=first_prev, piece=PIECE):
                sink.emit(piece.encode("ascii"))
        if run:
            sink.emit("".join(run).encode("ascii"))
        return first

    async def render(self, envelope: dict[str, Any], pages: AsyncIterator[list[Entry]], *,
                     export: bool, first_prev: str | None = None,
                     abandoned: Callable[[], bool] = lambda: False) -> Built:
        """Render ``envelope`` with the rows of ``pages``; spool past ``MEMORY_BYTES``."""
        doc = protocol.StreamedDocument.for_envelope(envelope)
        signer = StreamingSigner(self.key)
        sink = _Sink(self, signer)
        try:
            first = True
            async for page in pages:
                if abandoned():
                    raise _Abandoned
                first = await asyncio.to_thread(self._render_rows, sink, doc, page, first,
                                                export, first_prev)
            sink.emit((doc.empty if first else doc.tail).encode("ascii"))
            if sink.out is None:
                body = b"".join(sink.parts)
                return Built(self.key.sign_b64(body), len(body), body=body)
            await asyncio.to_thread(self._second_pass, sink.out, signer)
        except BaseException:
            sink.discard()
            raise
        return Built(b64u_encode(signer.signature()), sink.size, fh=sink.out, path=sink.path,
                     charged=sink.charged)

    @staticmethod
    def _second_pass(fh: BinaryIO, signer: StreamingSigner) -> None:
        fh.flush()
        fh.seek(0)
        while chunk := fh.read(CHUNK):
            signer.second(chunk)

    # --- shared builds --------------------------------------------------------------------

    async def document(self, key: Hashable, envelope_for: Callable[[], dict[str, Any]],
                       rows: Rows, *, export: bool, first_prev: str | None = None,
                       keep: tuple[str, int, bytes] | None = None) -> Document:
        """The document ``key`` names (chain, query and head): joined if it is being built
        or still read by another request, else built once a build slot is free (503 when
        the queue is full). ``keep=(slot, head index, head hash)``: the full export, kept
        while the head is unchanged."""
        if keep is not None:
            hit = self._open_cached(keep[0], keep[2])
            if hit is not None:
                return hit
        entry = self._shared.get(key)
        if entry is None:
            place = self.gate.reserve()
            entry = _Shared()
            entry.task = asyncio.ensure_future(
                self._build(entry, place, envelope_for, rows, export, first_prev, keep))
            entry.task.add_done_callback(lambda task: self._built(entry, task))
            self._shared[key] = entry
        assert entry.task is not None
        entry.waiting += 1
        try:
            built = await asyncio.shield(entry.task)
            return self._open(built, lambda: self._settle(key, entry))
        finally:
            entry.waiting -= 1
            self._settle(key, entry)

    async def _build(self, entry: _Shared, place: asyncio.Future[None] | None,
                     envelope_for: Callable[[], dict[str, Any]], rows: Rows, export: bool,
                     first_prev: str | None, keep: tuple[str, int, bytes] | None) -> Built:
        await self.gate.acquire(place)
        try:
            if entry.abandoned:
                raise _Abandoned
            built = await self.render(envelope_for(), rows(), export=export,
                                      first_prev=first_prev,
                                      abandoned=lambda: entry.abandoned)
        finally:
            self.gate.release()
        self.renders += 1
        if keep is not None and self.cache_exports:
            self._keep(*keep, built)
        if not built.kept:
            built.unlink()  # open for its readers only: nothing else can reach it
        return built

    def _built(self, entry: _Shared, task: asyncio.Task[Built]) -> None:
        """A build ended: if nobody wants it any more, free its file now."""
        if task.cancelled() or task.exception() is not None:
            return  # the waiters (if any) raise it; render() removed its file
        if entry.abandoned:
            self._drop(task.result())

    def _settle(self, key: Hashable, entry: _Shared) -> None:
        """A request stopped waiting for, or reading, ``entry``'s document."""
        if entry.waiting:
            return
        task = entry.task
        assert task is not None
        if not task.done():
            entry.abandoned = True
        elif not task.cancelled() and task.exception() is None:
            built = task.result()
            if built.readers:
                return
            self._drop(built)
        if self._shared.get(key) is entry:
            del self._shared[key]

    def _open(self, built: Built, settle: Callable[[], None]) -> Document:
        """A reader's share: the document's open file, which stays open until the last
        reader is done (later unlinks or replacements cannot affect it)."""
        built.readers += 1
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                built.readers -= 1
                settle()
                self._drop(built)

        fd = built.fh.fileno() if built.fh is not None else None
        return Document(built.signature, built.size, body=built.body, fd=fd, release=release)

    # --- the kept full export -------------------------------------------------------------

    def _open_cached(self, slot: str, head_hash: bytes) -> Document | None:
        cached = self._cached.get(slot)
        if cached is None or cached[1] != head_hash or cached[2].fh is None:
            return None
        return self._open(cached[2], lambda: None)

    def _keep(self, slot: str, head_index: int, head_hash: bytes, built: Built) -> None:
        """Keep ``built`` as the full export of ``slot`` (on disk: it is served again)."""
        self.builds += 1
        old = self._cached.get(slot)
        if old is not None and old[0] > head_index:
            return  # a newer export finished first
        if built.path is None:  # small enough to stay in memory: keep it on disk all the same
            body = built.body or b""
            try:
                self.spool.charge(len(body), 0)
            except ChronicleError:
                return  # served from memory, not kept
            fd, name = self._spool_file()
            built.fh = os.fdopen(fd, "w+b")
            built.fh.write(body)
            built.fh.flush()
            built.path, built.charged, built.body = Path(name), len(body), None
        built.kept = True
        self._cached[slot] = (head_index, head_hash, built)
        if old is not None and old[2] is not built:
            old[2].kept = False
            old[2].unlink()
            self._drop(old[2])  # its readers keep the open file until they finish


async def respond(request: web.Request, doc: Document, *,
                  send_timeout: float | None = None) -> web.StreamResponse:
    """Send a document: the signature header first, then the bytes, memory bounded. A
    reader that takes no ``CHUNK`` within ``send_timeout`` seconds is disconnected."""
    headers = {"Content-Type": "application/json", SIGNATURE_HEADER: doc.signature}
    try:
        if doc.body is not None:
            return web.Response(status=200, body=doc.body, headers=headers)
        assert doc.fd is not None
        resp = web.StreamResponse(status=200, headers=headers)
        resp.content_length = doc.size
        return await send_paced(request, resp, _read_chunks(doc.fd), send_timeout)
    finally:
        doc.release()


async def _read_chunks(fd: int) -> AsyncIterator[bytes]:
    offset = 0
    while chunk := await asyncio.to_thread(os.pread, fd, CHUNK, offset):
        offset += len(chunk)
        yield chunk
