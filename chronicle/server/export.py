"""Signed documents of any size (``export``, ``since``) with bounded memory.

A document is rendered page by page from keyset range reads, the pages sized by bytes
(bodies can be megabytes), while the first Ed25519 pass hashes it. It stays in memory while
it is small; past ``MEMORY_BYTES`` it continues into a spool file, a second pass over the
file finishes the signature, and the file is streamed after the signature header.

The full export of an unchanged chain is kept and served again without recomputing. Each
server process spools into its own directory (``cache/p<pid>``) and hands every response an
already open file, so no process or concurrent request can replace or delete a file that
is being served; directories of processes that are gone are swept at start.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from aiohttp import web

from chronicle.core import protocol
from chronicle.core.blakechain import Entry
from chronicle.core.encoding import b64u_encode
from chronicle.core.sapient import SIGNATURE_HEADER, SigningKey, StreamingSigner
from chronicle.store import Chain

log = logging.getLogger(__name__)

SMALL_DOCUMENT_ROWS = 1000  # below this many rows a full export is not kept on disk
MEMORY_BYTES = 4 << 20      # a document larger than this is spooled to disk
PAGE_BYTES = 8 << 20        # target size of one range read
PAGE_ROWS = 2000            # most rows in one range read
CHUNK = 1 << 20

@dataclass
class Document:
    """A rendered, signed document: in memory, or an open spool file owned by the reader."""

    signature: str
    size: int
    body: bytes | None = None
    fh: BinaryIO | None = None
    path: Path | None = None
    delete: bool = False  # unlink ``path`` once served


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class DocumentBuilder:
    """Renders and signs documents; keeps the full export per chain head."""

    def __init__(self, key: SigningKey, cache_dir: Path, *, cache_exports: bool = True) -> None:
        self.key = key
        self.root = cache_dir
        self.cache_dir = cache_dir / f"p{os.getpid()}"
        self.cache_exports = cache_exports
        self._inflight: dict[tuple[str, bytes], asyncio.Future[None]] = {}
        self._cached: dict[str, tuple[int, bytes, Path, int, str]] = {}
        self.builds = 0  # full exports rendered for the cache
        self._swept = False

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

    @staticmethod
    async def pages(chain: Chain, start: int, stop: int) -> AsyncIterator[list[Entry]]:
        """Range reads sized to about ``PAGE_BYTES``, whatever the size of the bodies."""
        rows = 16
        pos = start
        while pos < stop:
            page = await chain.range(pos, min(stop, pos + rows))
            if not page:
                return
            yield page
            pos = page[-1].index + 1
            size = sum(len(e.contents) for e in page) + 400 * len(page)
            rows = max(1, min(PAGE_ROWS, PAGE_BYTES * len(page) // max(size, 1)))

    async def render(self, envelope: dict[str, Any], pages: AsyncIterator[list[Entry]], *,
                     export: bool, first_prev: str | None = None) -> Document:
        """Render ``envelope`` with the rows of ``pages``; spool past ``MEMORY_BYTES``."""
        doc = protocol.StreamedDocument.for_envelope(envelope)
        signer = StreamingSigner(self.key)
        parts: list[bytes] = []
        size = 0
        out: BinaryIO | None = None
        path: Path | None = None

        def emit(data: bytes) -> None:
            nonlocal size, out, path
            signer.first(data)
            size += len(data)
            if out is None and size <= MEMORY_BYTES:
                parts.append(data)
                return
            if out is None:
                fd, name = self._spool_file()
                out, path = os.fdopen(fd, "w+b"), Path(name)
                out.writelines(parts)
                parts.clear()
            out.write(data)

        def render_page(entries: list[Entry], first: bool) -> None:
            text = ",\n".join(protocol.render_row_indented(e, export=export,
                                                           first_prev=first_prev)
                              for e in entries)
            emit(((doc.head if first else ",\n") + text).encode("ascii"))

        try:
            first = True
            async for page in pages:
                await asyncio.to_thread(render_page, page, first)
                first = False
            emit((doc.empty if first else doc.tail).encode("ascii"))
            if out is None:
                body = b"".join(parts)
                return Document(self.key.sign_b64(body), len(body), body=body)
            assert path is not None
            await asyncio.to_thread(self._second_pass, out, signer)
        except BaseException:
            if out is not None:
                out.close()
            if path is not None:
                path.unlink(missing_ok=True)  # noqa: ASYNC240 - cheap cleanup on failure
            raise
        out.seek(0)
        return Document(b64u_encode(signer.signature()), size, fh=out, path=path, delete=True)

    @staticmethod
    def _second_pass(fh: BinaryIO, signer: StreamingSigner) -> None:
        fh.flush()
        fh.seek(0)
        while chunk := fh.read(CHUNK):
            signer.second(chunk)

    async def export(self, slot: str, chain: Chain, head: Entry,
                     envelope_for: Callable[[], dict[str, Any]], *,
                     first_prev: str | None = None) -> Document:
        """The full export of ``chain`` up to ``head``, kept (in cache ``slot``) while the
        head is unchanged."""
        def fresh() -> AsyncIterator[list[Entry]]:
            return self.pages(chain, 0, head.index + 1)

        if not self.cache_exports:
            return await self.render(envelope_for(), fresh(), export=True,
                                     first_prev=first_prev)
        hit = self._open_cached(slot, head)
        if hit is not None:
            return hit
        key = (slot, head.currhash)
        pending = self._inflight.get(key)
        if pending is None:
            pending = asyncio.ensure_future(self._build(slot, head, envelope_for, fresh,
                                                        first_prev))
            self._inflight[key] = pending
            pending.add_done_callback(lambda _: self._inflight.pop(key, None))
        await asyncio.shield(pending)
        hit = self._open_cached(slot, head)
        if hit is None:  # a newer head replaced it meanwhile: serve a fresh copy
            return await self.render(envelope_for(), fresh(), export=True,
                                     first_prev=first_prev)
        return hit

    def _open_cached(self, slot: str, head: Entry) -> Document | None:
        cached = self._cached.get(slot)
        if cached is None or cached[1] != head.currhash:
            return None
        _, _, path, size, signature = cached
        try:
            fh = path.open("rb")  # opened now: later replacement cannot affect this reader
        except OSError:
            return None
        return Document(signature, size, fh=fh, path=path, delete=False)

    async def _build(self, slot: str, head: Entry, envelope_for: Callable[[], dict[str, Any]],
                     pages: Callable[[], AsyncIterator[list[Entry]]],
                     first_prev: str | None) -> None:
        doc = await self.render(envelope_for(), pages(), export=True, first_prev=first_prev)
        self.builds += 1
        if doc.fh is not None:
            doc.fh.close()
        if doc.path is None:  # small enough to stay in memory: keep it on disk all the same
            fd, name = self._spool_file()
            with os.fdopen(fd, "wb") as fh:
                fh.write(doc.body or b"")
            doc.path = Path(name)
        old = self._cached.get(slot)
        if old is not None and old[0] > head.index:  # a newer export finished first
            doc.path.unlink(missing_ok=True)
            return
        self._cached[slot] = (head.index, head.currhash, doc.path, doc.size, doc.signature)
        if old is not None and old[2] != doc.path:
            with contextlib.suppress(OSError):
                old[2].unlink()  # readers that opened it keep their file until they finish


async def respond(request: web.Request, doc: Document) -> web.StreamResponse:
    """Send a document: the signature header first, then the bytes, memory bounded."""
    headers = {"Content-Type": "application/json", SIGNATURE_HEADER: doc.signature}
    if doc.body is not None:
        return web.Response(status=200, body=doc.body, headers=headers)
    assert doc.fh is not None
    resp = web.StreamResponse(status=200, headers=headers)
    resp.content_length = doc.size
    try:
        if doc.delete and doc.path is not None:
            doc.path.unlink(missing_ok=True)
        await resp.prepare(request)
        while chunk := await asyncio.to_thread(doc.fh.read, CHUNK):
            await resp.write(chunk)
    finally:
        doc.fh.close()
    await resp.write_eof()
    return resp
