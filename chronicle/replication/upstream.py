"""The upstream as a replica sees it: every answer signed by the pinned key, or a stop.

:class:`Upstream` wraps the client of one replication source. An answer that is not
signed by the pinned key stops the source with that answer as evidence (:class:`Stop`);
an unsigned error page (a proxy's 404 or 429) proves nothing against anyone and only
postpones, like a network error.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import quote

import aiohttp

from chronicle.client.errors import RecordNotFound, ServerRefused, StaleResponseError, refusal
from chronicle.client.http import ChronicleClient, FetchedDocument
from chronicle.core.document import SMALL_DOCUMENT, load_object
from chronicle.core.encoding import b64u_encode, decode_b64_field, utcnow
from chronicle.core.errors import TransportError
from chronicle.core.replica import KeyChangedError
from chronicle.core.sapient import SIGNATURE_HEADER, verify
from chronicle.core.verify import (
    ROW_KEYS,
    ChainFault,
    DocumentSignatureError,
    MalformedError,
    verify_row,
)

CHUNK_ROWS = 2048
COMMIT_ROWS = 16384

#: Signed answers that prove a fault: ``(role, document, key that signed it)``.
Evidence = list[tuple[str, FetchedDocument, bytes | None]]


@dataclass
class SyncOptions:
    """How a replica talks to upstreams and peers (timeouts, freshness, local paths) and
    how it verifies and stores what they send (batch sizes, signature workers)."""

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

    def client(self, url: str, key: bytes) -> ChronicleClient:
        return ChronicleClient(url, key, timeout=self.timeout, freshness=self.freshness,
                               clock=self.clock, session=self.session)


class Stop(Exception):
    """A fault with the signed documents that prove it: the source stops."""

    def __init__(self, fault: ChainFault, docs: Evidence) -> None:
        super().__init__(fault.message)
        self.fault = fault
        self.docs = docs


def unsigned_error(doc: FetchedDocument) -> None:
    """An unsigned error page is a transport problem, not a statement of the upstream."""
    if doc.signature is None and doc.status >= 400:
        doc.discard()
        raise TransportError(f"{doc.method} {doc.path}: unsigned HTTP {doc.status} answer "
                             "(not from the upstream's server, or it is broken)")


def parse_small(doc: FetchedDocument) -> dict[str, Any]:
    """A small answer (index, lasthash, lookup, error) as JSON; one that had to be spooled
    is not small: refused rather than read into memory."""
    if doc.body is None:
        raise MalformedError(f"the answer to {doc.method} {doc.path} is far too large "
                             f"({doc.size} bytes)", field="document")
    return load_object(doc.body, what=f"the answer to {doc.method} {doc.path}")


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


class Upstream:
    """One source's server, pinned by its key (see the module docstring)."""

    def __init__(self, client: ChronicleClient, options: SyncOptions) -> None:
        self.client = client
        self.options = options

    @property
    def key(self) -> bytes:
        return self.client.server_key

    async def fetch(self, path: str, role: str, *, from_root: bool = False
                    ) -> FetchedDocument:
        """An answer whose signature verifies with the pinned key (else :class:`Stop`)."""
        o = self.options
        doc = await self.client.fetch(path, from_root=from_root, spool_dir=o.spool_dir,
                                      memory_limit=o.memory_limit, max_size=o.max_document)
        unsigned_error(doc)
        if not doc.verified:
            fault = DocumentSignatureError(
                f"the answer to GET {path} is not signed by the pinned key",
                field=SIGNATURE_HEADER, expected=f"a signature by {b64u_encode(self.key)}",
                found=doc.signature or "no signature")
            raise Stop(fault, [(role, doc, self.key)])
        return doc

    async def signed(self, path: str, role: str, *, fresh: bool = True,
                     from_root: bool = False
                     ) -> tuple[FetchedDocument, dict[str, Any], ServerRefused | None]:
        """A small signed answer, parsed, with the refusal it carries (if it is a signed
        error). A stale answer is a transient error, anything malformed a fault."""
        doc = await self.fetch(path, role, from_root=from_root)
        try:
            parsed = parse_small(doc)
            self.client.check_envelope(parsed, doc.status, doc.headers, path, fresh=fresh)
        except ServerRefused as exc:
            return doc, parsed, exc
        except StaleResponseError:
            doc.discard()
            raise
        except ChainFault as fault:
            raise Stop(fault, [(role, doc, self.key)]) from None
        return doc, parsed, None

    async def small(self, path: str, role: str) -> tuple[FetchedDocument, dict[str, Any]]:
        """A small signed answer that must be ``status: OK`` (a refusal is raised)."""
        doc, parsed, refused = await self.signed(path, role)
        if refused is not None:
            doc.discard()
            raise refused
        return doc, parsed

    async def check_key(self) -> None:
        """The upstream's signed index must announce the key we pinned.

        An index signed by (and announcing) another key is a key change: the source stops
        until an operator pins the new key (``replica set-key``); any other unverifiable
        index stops it as ``failed``.
        """
        pinned = self.key
        doc = await self.client.fetch("", from_root=True, memory_limit=SMALL_DOCUMENT,
                                      max_size=SMALL_DOCUMENT)
        unsigned_error(doc)
        if doc.verified:
            index = parse_small(doc)
            announced = decode_b64_field(index.get("public-key"), 32)
            if announced is not None and announced != pinned:
                raise Stop(DocumentSignatureError(
                    "the upstream's index, signed by the pinned key, announces another key",
                    field="public-key", expected=b64u_encode(pinned),
                    found=b64u_encode(announced)), [("upstream index", doc, pinned)])
        else:
            self._key_change(doc)
        doc.discard()
        if index.get("status") == "ERROR":
            raise refusal(doc.status, str(index.get("message", "refused")), doc.headers)

    def _key_change(self, doc: FetchedDocument) -> NoReturn:
        """An index not signed by the pinned key: a key change (signed by the key it
        announces) or a forgery. Either way the source stops with it."""
        pinned = self.key
        try:
            announced = decode_b64_field(parse_small(doc).get("public-key"), 32)
        except MalformedError:
            announced = None
        raw_sig = decode_b64_field((doc.signature or "").strip(), 64)
        if announced is not None and announced != pinned and raw_sig is not None \
                and verify(announced, doc.read(), raw_sig):
            raise Stop(KeyChangedError(
                "the upstream now signs with another server key; nothing it says is "
                "believed until the new key is pinned (replica set-key)",
                field="public-key", expected=b64u_encode(pinned),
                found=b64u_encode(announced)), [("upstream index", doc, announced)])
        raise Stop(DocumentSignatureError(
            "the upstream's index is not signed by the pinned key",
            field=SIGNATURE_HEADER, expected=f"a signature by {b64u_encode(pinned)}",
            found=doc.signature or "no signature"), [("upstream index", doc, pinned)])

    async def knows(self, summaryhash: bytes, currhash: bytes
                    ) -> tuple[bool, FetchedDocument]:
        """Does the upstream still have this entry (same summaryhash and currhash)? The
        signed lookup answer comes back with the verdict, as evidence."""
        summary = b64u_encode(summaryhash)
        doc, parsed, refused = await self.signed("/lookup/" + quote_hash(summary),
                                                 "upstream lookup")
        if isinstance(refused, RecordNotFound):
            return False, doc
        if refused is not None:
            doc.discard()
            raise refused
        rows = parsed.get("results")
        found = isinstance(rows, list) and any(
            isinstance(r, dict) and r.get("summaryhash") == summary
            and r.get("currhash") == b64u_encode(currhash) for r in rows)
        return found, doc


def quote_hash(hash_text: str) -> str:
    """A base64url hash as one path segment (``=`` escaped, as PHP's links do)."""
    return quote(hash_text, safe="")
