"""Large signed documents (unpaginated ``export`` and ``since``) with bounded memory.

The document is rendered page by page from keyset range reads into a spool file while the
first Ed25519 pass hashes it; a second pass over the file finishes the signature; then the
file is streamed to the client after the signature header. An export of an unchanged
chain is served from the spool file without recomputing (the cache key is the head).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import tempfile
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

from chronicle.core import protocol
from chronicle.core.blakechain import Entry
from chronicle.core.encoding import b64u_encode
from chronicle.core.sapient import SIGNATURE_HEADER, SigningKey, StreamingSigner
from chronicle.store.base import Store

log = logging.getLogger(__name__)

SMALL_DOCUMENT_ROWS = 1000
PAGE_ROWS = 2000
CHUNK = 1 << 20


#: Reads entries ``[start, stop)`` of a chain page by page.
PageReader = Callable[[int, int], AsyncIterator[list[Entry]]]


@dataclass(frozen=True)
class Spooled:
    path: Path
    size: int
    signature: str


class DocumentBuilder:
    """Renders, spools and signs documents; caches the full export per chain head."""

    def __init__(self, store: Store, key: SigningKey, cache_dir: Path, *,
                 cache_exports: bool = True) -> None:
        self.store = store
        self.key = key
        self.cache_dir = cache_dir
        self.cache_exports = cache_exports
        self._inflight: dict[tuple[str, bytes], asyncio.Future[Spooled]] = {}
        self._cached: dict[str, tuple[bytes, Spooled]] = {}
        self.builds = 0

    async def small(self, envelope: dict[str, Any], entries: list[Entry],
                    export: bool, *, first_prev: str | None = None) -> tuple[bytes, str]:
        doc = protocol.StreamedDocument.for_envelope(envelope)
        body = "".join(doc.chunks(protocol.render_row_indented(e, export=export,
                                                               first_prev=first_prev)
                                  for e in entries)).encode("ascii")
        return body, self.key.sign_b64(body)

    async def export(self, instance: str, head: Entry,
                     envelope_for: Callable[[], dict[str, Any]], *,
                     pages: PageReader | None = None,
                     first_prev: str | None = None) -> Spooled:
        """The full export up to ``head``, from cache when the head is unchanged.

        ``instance`` names the cache slot; ``pages`` reads another chain than the
        instance's own (a replica's copy, whose first ``prev`` renders as ``first_prev``).
        """
        key = (instance, head.currhash)
        cached = self._cached.get(instance)
        if self.cache_exports and cached and cached[0] == head.currhash \
                and cached[1].path.exists():
            return cached[1]
        pending = self._inflight.get(key)
        if pending is not None:
            return await asyncio.shield(pending)
        fut: asyncio.Future[Spooled] = asyncio.get_running_loop().create_future()
        self._inflight[key] = fut
        try:
            spooled = await self.spool(instance, envelope_for(), 0, head.index + 1,
                                       export=True, keep=self.cache_exports, pages=pages,
                                       first_prev=first_prev)
        except BaseException as exc:
            fut.set_exception(exc)
            fut.exception()  # mark retrieved: waiters (if any) get it via shield
            raise
        finally:
            self._inflight.pop(key, None)
        fut.set_result(spooled)
        if self.cache_exports:
            old = self._cached.get(instance)
            self._cached[instance] = (head.currhash, spooled)
            if old is not None and old[1].path != spooled.path:
                with contextlib.suppress(OSError):
                    old[1].path.unlink()
        return spooled

    async def spool(self, instance: str, envelope: dict[str, Any], start: int, stop: int,
                    *, export: bool, keep: bool, pages: PageReader | None = None,
                    first_prev: str | None = None) -> Spooled:
        """Render entries ``[start, stop)`` inside ``envelope`` to a file, signed."""
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        doc = protocol.StreamedDocument.for_envelope(envelope)
        fd, name = tempfile.mkstemp(prefix="doc-", suffix=".json", dir=self.cache_dir)
        path = Path(name)
        signer = StreamingSigner(self.key)
        size = 0
        try:
            with os.fdopen(fd, "wb") as out:
                def emit(text: str) -> int:
                    data = text.encode("ascii")
                    signer.first(data)
                    out.write(data)
                    return len(data)

                def render_page(entries: list[Entry], first: bool) -> int:
                    parts = [protocol.render_row_indented(e, export=export,
                                                          first_prev=first_prev)
                             for e in entries]
                    text = ",\n".join(parts)
                    return emit((doc.head if first else ",\n") + text)

                first = True
                reader = pages or (lambda a, b: self.store.iter_range(instance, a, b, PAGE_ROWS))
                async for page in reader(start, stop):
                    size += await asyncio.to_thread(render_page, page, first)
                    first = False
                size += emit(doc.empty if first else doc.tail)
            await asyncio.to_thread(self._second_pass, path, signer)
        except BaseException:
            path.unlink(missing_ok=True)  # noqa: ASYNC240 - a cheap unlink on failure
            raise
        self.builds += 1
        signature = b64u_encode(signer.signature())
        if keep:
            tag = hashlib.sha256(instance.encode()).hexdigest()[:12]
            final = self.cache_dir / f"export-{tag}-{stop}.json"
            os.replace(path, final)
            path = final
        return Spooled(path=path, size=size, signature=signature)

    @staticmethod
    def _second_pass(path: Path, signer: StreamingSigner) -> None:
        with path.open("rb") as fh:
            while chunk := fh.read(CHUNK):
                signer.second(chunk)


async def stream_file(request: web.Request, spooled: Spooled, *,
                      delete: bool) -> web.StreamResponse:
    """Send a spooled document: signature header first, then the bytes, memory bounded."""
    resp = web.StreamResponse(status=200, headers={
        "Content-Type": "application/json", SIGNATURE_HEADER: spooled.signature})
    resp.content_length = spooled.size
    try:
        with spooled.path.open("rb") as fh:
            if delete:
                spooled.path.unlink(missing_ok=True)
            await resp.prepare(request)
            while True:
                chunk = await asyncio.to_thread(fh.read, CHUNK)
                if not chunk:
                    break
                await resp.write(chunk)
    finally:
        if delete:
            spooled.path.unlink(missing_ok=True)
    await resp.write_eof()
    return resp
