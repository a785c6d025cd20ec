"""An async Chronicle client that believes nothing it has not verified.

Every answer is checked against the pinned server key (``Body-Signature-Ed25519`` over the
exact body), its ``datetime`` must be fresh, and it must fit the request: a lookup returns
the hash asked for, a ``since`` continues from it, pages of an export continue each other.
Entries are verified as they arrive: their Ed25519 signature, their link, their currhash,
and — when the history is known (``export``, or ``since`` from a saved
:class:`~chronicle.core.verify.ChainState`) — their summaryhash.

Works against our server and a PHP Chronicle 1.3 alike, including a replica's
``/chronicle/replica/{source}`` API (give that URL as the base).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterator
from contextlib import aclosing
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import parse_qs, quote, urljoin, urlsplit, urlunsplit

import aiohttp

from chronicle.client.errors import (
    ServerRefused,
    StaleResponseError,
    UnexpectedResponseError,
    refusal,
)
from chronicle.core.document import DocumentParser
from chronicle.core.encoding import b64u_encode, decode_b64_field, parse_timestamp, utcnow
from chronicle.core.errors import EncodingError, RequestError, TransportError
from chronicle.core.sapient import CLIENT_HEADER, SIGNATURE_HEADER, SigningKey
from chronicle.core.verify import (
    EXPORT_KEYS,
    ROW_KEYS,
    AnchorError,
    ChainFault,
    ChainState,
    ChainVerifier,
    DocumentSignatureError,
    MalformedError,
    RowKeys,
    SignedContents,
    StreamingVerifier,
    check_entry_signature,
    verify_row,
)

__all__ = [
    "ChronicleClient",
    "DocumentStream",
    "FetchedDocument",
    "Head",
    "Receipt",
    "ServerRefused",
    "VerifiedEntry",
    "api_base",
    "chronicle_root",
]

DEFAULT_FRESHNESS = 600.0
SMALL_BODY_LIMIT = 64 << 20
CHUNK = 1 << 20


@dataclass(frozen=True, slots=True)
class Receipt:
    """What a publish returns: where the entry landed."""

    currhash: str
    summaryhash: str
    created: str

    def as_dict(self) -> dict[str, str]:
        return {"currhash": self.currhash, "summaryhash": self.summaryhash,
                "created": self.created}


@dataclass(frozen=True, slots=True)
class Head:
    """The newest entry's hashes, as a signed ``lasthash`` states them."""

    currhash: str
    summaryhash: str


@dataclass(frozen=True, slots=True)
class VerifiedEntry:
    """One chain entry whose signature, link and hashes were checked.

    ``index`` is the 0-based position when the history is known (``export``, ``since``
    from a saved state), else None. Hashes, keys and signatures are the wire's base64url.
    """

    index: int | None
    contents: bytes
    prevhash: str | None
    currhash: str
    summaryhash: str
    created: str
    publickey: str
    signature: str

    @property
    def text(self) -> str:
        return self.contents.decode("utf-8")

    def receipt(self) -> Receipt:
        return Receipt(self.currhash, self.summaryhash, self.created)

    @classmethod
    def of(cls, row: dict[str, Any], keys: RowKeys, signed: SignedContents,
           index: int | None) -> VerifiedEntry:
        prev = row.get(keys.prev)
        return cls(index, signed.contents, prev or None, row[keys.curr], row[keys.summary],
                   row["created"], row["publickey"], row["signature"])


@dataclass
class FetchedDocument:
    """One whole answer, kept as received: in memory, or (large) spooled to a file.

    ``verified`` says whether ``Body-Signature-Ed25519`` is a valid signature of the exact
    body by the pinned key; nothing in an unverified document may be believed, but its
    bytes can be kept as evidence. Call :meth:`discard` when done (removes a spool file).
    """

    method: str
    path: str
    url: str
    status: int
    signature: str | None
    verified: bool
    size: int
    body: bytes | None = None
    file: Path | None = None
    headers: dict[str, str] = field(default_factory=dict)

    def chunks(self, size: int = CHUNK) -> Iterator[bytes]:
        if self.body is not None:
            for pos in range(0, len(self.body), size):
                yield self.body[pos:pos + size]
            return
        assert self.file is not None
        with self.file.open("rb") as fh:
            while chunk := fh.read(size):
                yield chunk

    def read(self) -> bytes:
        """The whole body (for small answers; a spooled one is read back from disk)."""
        return self.body if self.body is not None else b"".join(self.chunks())

    def discard(self) -> None:
        if self.file is not None:
            self.file.unlink(missing_ok=True)
            self.file = None


MAX_REDIRECTS = 3


def _redirect(resp: aiohttp.ClientResponse, method: str, url: str) -> str | None:
    """Where a redirect leads, if it may be followed: only a read, only to the same scheme,
    host and port. A signed request is never re-sent elsewhere (a 307 would carry its
    client headers and body to whoever the Location names)."""
    if resp.status not in (301, 302, 303, 307, 308):
        return None
    location = resp.headers.get("Location", "")
    target = urljoin(url, location)
    here, there = urlsplit(url), urlsplit(target)
    if method != "GET":
        raise TransportError(f"{method} {url}: redirected to {location!r}; a signed request "
                             "is not re-sent anywhere")
    if (here.scheme, here.netloc) != (there.scheme, there.netloc):
        raise TransportError(f"GET {url}: redirected to another origin ({target}); not "
                             "followed")
    return target


def split_instance(url: str) -> tuple[str, str | None]:
    """A URL that names a chain of the server (``…/chronicle?instance=NAME``): the URL
    without its query, and the instance (None when it names none). Any other query or a
    fragment is refused: every request we build appends a path, then its own query."""
    parts = urlsplit(url)
    if parts.fragment:
        raise RequestError(f"a Chronicle URL has no fragment: {url!r}")
    query = parse_qs(parts.query, keep_blank_values=True) if parts.query else {}
    if set(query) - {"instance"} or len(query.get("instance", [])) > 1:
        raise RequestError(f"a Chronicle URL takes only ?instance=NAME: {url!r}")
    instance = query["instance"][0] if query else None
    return urlunsplit(parts._replace(query="")), instance


def api_base(url: str) -> str:
    """The API root for a URL: given as is if it already points into ``/chronicle``
    (e.g. a replica's ``…/chronicle/replica/{source}``), else the server root plus
    ``/chronicle`` (cli.md: client commands take the base URL without it). An
    ``?instance=NAME`` query is not part of it (see :func:`split_instance`)."""
    url = split_instance(url.strip())[0].rstrip("/")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise RequestError(f"not an http(s) URL: {url!r}")
    segments = parts.path.split("/")
    if "chronicle" in segments:
        return url
    return url + "/chronicle"


def chronicle_root(base: str) -> str:
    """``http://h/chronicle/replica/x`` -> ``http://h/chronicle`` (where links start)."""
    parts = urlsplit(base)
    segments = parts.path.split("/")
    root = "/".join(segments[:segments.index("chronicle") + 1])
    return urlunsplit(parts._replace(path=root, query="", fragment=""))


def _header_status(header: dict[str, Any]) -> str | None:
    status = header.get("status")
    return status if isinstance(status, str) else None


class Exchange:
    """One request and its answer, whose body passes through the signature check as it
    is read. Every request the client makes goes through here.

    ``signature`` is the ``Body-Signature-Ed25519`` header as received (None if absent);
    :attr:`problem` says why it cannot verify before a byte is read (missing, repeated,
    malformed); :meth:`verified` is meaningful once :meth:`chunks` has been read to its end.
    """

    def __init__(self, client: ChronicleClient, method: str, path: str, url: str,
                 resp: aiohttp.ClientResponse) -> None:
        self.method = method
        self.path = path
        self.url = url
        self.status = resp.status
        self.headers = {k: v for k, v in resp.headers.items() if k.lower() == "retry-after"}
        self._resp = resp
        self._chunk = client.chunk_size
        sigs = resp.headers.getall(SIGNATURE_HEADER, [])
        self.signature: str | None = sigs[0] if len(sigs) == 1 else (", ".join(sigs) or None)
        raw = decode_b64_field(sigs[0].strip(), 64) if len(sigs) == 1 else None
        self._verifier = StreamingVerifier(client.server_key, raw) if raw is not None else None
        if not sigs:
            self.problem: str | None = f"(HTTP {self.status}) is not signed"
        elif len(sigs) > 1:
            self.problem = f"has {len(sigs)} signature headers"
        elif raw is None:
            self.problem = "has a malformed signature header"
        else:
            self.problem = None
        if not sigs and self.status >= 500:
            raise TransportError(f"{method} {path}: HTTP {self.status} from the server "
                                 "(unsigned error page)")
        encoding = resp.headers.get("Content-Encoding", "identity").strip().lower()
        if encoding not in ("", "identity"):
            # We ask for identity: a compressed answer would be inflated before its
            # signature could be checked (611 KB of gzip is 600 MB of zeros).
            raise UnexpectedResponseError(
                f"response to {method} {path} is compressed ({encoding}) although identity "
                "was asked for; refused unread", field="Content-Encoding", found=encoding)

    async def chunks(self) -> AsyncIterator[bytes]:
        """The body, chunk by chunk, each one fed to the signature check first."""
        verifier = self._verifier
        try:
            async for chunk in self._resp.content.iter_chunked(self._chunk):
                if verifier is not None:
                    verifier.update(chunk)
                yield chunk
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise TransportError(f"connection lost reading {self.path}: "
                                 f"{exc or type(exc).__name__}") from exc

    def verified(self) -> bool:
        return self._verifier is not None and self._verifier.verify()

    def signature_error(self) -> DocumentSignatureError:
        problem = self.problem or "has an invalid signature for the pinned server key"
        return DocumentSignatureError(f"response to {self.method} {self.path} {problem}",
                                      field=SIGNATURE_HEADER,
                                      found=(self.signature or "")[:100] or None)

    def require_signature(self) -> None:
        """Refuse at once an answer whose signature header cannot verify."""
        if self.problem is not None:
            raise self.signature_error()


class DocumentStream:
    """One signed response, read incrementally: rows as they arrive, signature at the end.

    Use ``async with client.document(path) as doc: async for rows in doc.rows(): …``.
    The signature covers the whole body, so it is known only at its end; a consumer that
    finds a fault in the rows mid-way calls :meth:`drain` first: if the document itself is
    forged, that (:class:`DocumentSignatureError`) is the diagnosis, not the entry fault.
    """

    def __init__(self, client: ChronicleClient, path: str, *, fresh: bool,
                 from_root: bool = False) -> None:
        self.client = client
        self.path = path
        self.from_root = from_root
        self.fresh = fresh
        self.status = 0
        self.header: dict[str, Any] = {}
        self.rows_count = 0
        self.finished = False
        self._exchange: Exchange | None = None
        self._context: contextlib.AbstractAsyncContextManager[Exchange] | None = None
        self._parser = DocumentParser()

    async def __aenter__(self) -> DocumentStream:
        self._context = self.client.exchange("GET", self.path, from_root=self.from_root)
        self._exchange = await self._context.__aenter__()
        self._exchange.require_signature()
        self.status = self._exchange.status
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._context is not None:
            await self._context.__aexit__(None, None, None)

    async def rows(self) -> AsyncIterator[list[Any]]:
        """Parsed rows of ``results`` in batches; at the end the signature, the envelope
        (``status: OK`` else :class:`ServerRefused`) and the ``datetime`` are checked."""
        exchange = self._exchange
        assert exchange is not None
        async for chunk in exchange.chunks():
            batch = self._parser.feed(chunk)
            if batch:
                self.rows_count += len(batch)
                yield batch
        try:
            batch = self._parser.close()
        except MalformedError:
            self._check_signature()
            raise
        self._check_signature()
        if batch:
            self.rows_count += len(batch)
            yield batch
        self.header = self._parser.header
        self.finished = True
        self.client.check_envelope(self.header, self.status, exchange.headers, self.path,
                                   fresh=self.fresh)

    def _check_signature(self) -> None:
        assert self._exchange is not None
        if not self._exchange.verified():
            raise self._exchange.signature_error()

    async def drain(self) -> None:
        """Read the rest of the body into the signature check only; raise if it fails."""
        assert self._exchange is not None
        if self.finished:
            return
        async for _ in self._exchange.chunks():
            pass
        self._check_signature()

    @property
    def header_so_far(self) -> dict[str, Any]:
        return self._parser.header


class ChronicleClient:
    """One Chronicle, pinned by its public key. ``async with ChronicleClient(...) as c:``.

    ``freshness`` (seconds, None to disable) bounds how far a response's signed
    ``datetime`` may be from our clock. A whole-chain unpaginated export is exempt: a
    server may serve it from a cache built when the chain last changed; anchor it with a
    fresh :meth:`lasthash` instead (the auditor does).
    """

    def __init__(self, url: str, server_key: bytes, *, instance: str = "",
                 client_id: str | None = None, key: SigningKey | None = None,
                 timeout: float = 30.0, freshness: float | None = DEFAULT_FRESHNESS,
                 session: aiohttp.ClientSession | None = None,
                 clock: Callable[[], datetime] = utcnow, chunk_size: int = CHUNK) -> None:
        named = split_instance(url.strip())[1]
        if named is not None and instance and named != instance:
            raise RequestError(f"the URL names instance {named!r}, the caller {instance!r}")
        instance = instance or named or ""
        self.base = api_base(url)
        self.root = chronicle_root(self.base)
        self.server_key = server_key
        self.instance = instance
        self.client_id = client_id
        self.key = key
        self.freshness = None if freshness is None else timedelta(seconds=freshness)
        self.clock = clock
        self.chunk_size = chunk_size
        self._timeout = aiohttp.ClientTimeout(total=None, sock_connect=timeout,
                                              sock_read=timeout)
        self._session = session
        self._own_session = session is None

    async def __aenter__(self) -> ChronicleClient:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.close()

    async def close(self) -> None:
        if self._session is not None and self._own_session:
            await self._session.close()
            self._session = None

    def _require_session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RequestError("use the client as an async context manager")
        return self._session

    def url_for(self, path: str, *, from_root: bool = False) -> str:
        """``path`` under the API base, or (``from_root``: pagination links, which PHP makes
        relative to ``/chronicle`` even on a replica) under the server's ``/chronicle``."""
        url = (self.root if from_root else self.base) + path
        if self.instance:
            url += "?instance=" + quote(self.instance, safe="")
        return url

    # --- verification of answers --------------------------------------------------------

    @contextlib.asynccontextmanager
    async def exchange(self, method: str, path: str, *, body: bytes | None = None,
                       headers: dict[str, str] | None = None, from_root: bool = False
                       ) -> AsyncIterator[Exchange]:
        """Send one request; the answer's body is read through :meth:`Exchange.chunks`."""
        session = self._require_session()
        url = self.url_for(path, from_root=from_root)
        asked = {"Accept-Encoding": "identity", **(headers or {})}
        try:
            for _ in range(MAX_REDIRECTS + 1):
                async with session.request(method, url, data=body, headers=asked,
                                           allow_redirects=False) as resp:
                    target = _redirect(resp, method, url)
                    if target is None:
                        yield Exchange(self, method, path, url, resp)
                        return
                url = target
            raise TransportError(f"{method} {path}: more than {MAX_REDIRECTS} redirects")
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise TransportError(f"cannot reach {url}: {exc or type(exc).__name__}") from exc

    async def fetch(self, path: str, *, method: str = "GET", body: bytes | None = None,
                    headers: dict[str, str] | None = None, from_root: bool = False,
                    spool_dir: Path | None = None, memory_limit: int = 8 << 20,
                    max_size: int | None = None) -> FetchedDocument:
        """One request; the whole answer read and its signature checked (not believed).

        Up to ``memory_limit`` bytes stay in memory; beyond that the body goes to a file
        in ``spool_dir`` (or, without one, the answer is refused as too large), so memory
        stays bounded whatever the size of the answer (``max_size`` bounds the disk). An
        unsigned 5xx page is a :class:`TransportError` (the server is broken, not lying).
        """
        fh: Any = None
        spooled: Path | None = None
        buffered = bytearray()
        size = 0
        try:
            async with self.exchange(method, path, body=body, headers=headers,
                                     from_root=from_root) as answer:
                async for chunk in answer.chunks():
                    size += len(chunk)
                    if max_size is not None and size > max_size:
                        raise UnexpectedResponseError(
                            f"answer to {path} is larger than {max_size} bytes",
                            field="document")
                    if fh is not None:
                        fh.write(chunk)
                        continue
                    buffered += chunk
                    if len(buffered) > memory_limit:
                        if spool_dir is None:
                            raise UnexpectedResponseError(f"answer to {path} is too large")
                        os.makedirs(spool_dir, exist_ok=True)
                        fd, name = tempfile.mkstemp(prefix="fetch-", suffix=".json",
                                                    dir=spool_dir)
                        spooled = Path(name)
                        fh = os.fdopen(fd, "wb")
                        fh.write(buffered)
                        buffered = bytearray()
        except BaseException:
            if spooled is not None:
                spooled.unlink(missing_ok=True)
            raise
        finally:
            if fh is not None:
                with contextlib.suppress(OSError):
                    fh.close()
        return FetchedDocument(
            method=method, path=path, url=answer.url, status=answer.status,
            signature=answer.signature, verified=answer.verified(), size=size,
            body=None if spooled is not None else bytes(buffered), file=spooled,
            headers=answer.headers)

    async def signed(self, path: str, *, method: str = "GET", body: bytes | None = None,
                     headers: dict[str, str] | None = None, fresh: bool = True,
                     from_root: bool = False) -> tuple[FetchedDocument, dict[str, Any]]:
        """A small answer that must be signed by the pinned key: the document (kept, e.g.
        as evidence) and its JSON, whose envelope is checked (``status: OK``, else the
        matching :class:`ServerRefused`; a fresh ``datetime`` when ``fresh``)."""
        doc = await self.fetch(path, method=method, body=body, headers=headers,
                               from_root=from_root, memory_limit=SMALL_BODY_LIMIT)
        if not doc.verified:
            problem = ("is not signed" if doc.signature is None
                       else "has an invalid signature for the pinned server key")
            raise DocumentSignatureError(f"response to {method} {path} {problem}",
                                         field=SIGNATURE_HEADER,
                                         found=(doc.signature or "")[:100] or None)
        parser = DocumentParser()
        rows = parser.feed(doc.read()) + parser.close()
        parsed = parser.header
        if parser.results_is_list:
            parsed["results"] = rows
        self.check_envelope(parsed, doc.status, doc.headers, path, fresh=fresh)
        return doc, parsed


    def check_envelope(self, header: dict[str, Any], status: int, headers: dict[str, str],
                       path: str, *, fresh: bool) -> None:
        """``status: OK`` (else the matching :class:`ServerRefused`), and a fresh signed
        ``datetime`` when ``fresh``."""
        state = _header_status(header)
        if state == "ERROR":
            raise refusal(status, str(header.get("message", "request refused")), headers)
        if state != "OK":
            raise UnexpectedResponseError(f"answer to {path} has no status OK",
                                          field="status", expected="OK",
                                          found=repr(header.get("status")))
        if fresh:
            self._check_fresh(header, path)

    def _check_fresh(self, header: dict[str, Any], path: str) -> None:
        if self.freshness is None:
            return
        stamp = header.get("datetime")
        try:
            moment = parse_timestamp(stamp) if isinstance(stamp, str) else None
        except EncodingError:
            moment = None
        if moment is None:
            raise UnexpectedResponseError(f"answer to {path} has no valid datetime",
                                          field="datetime", found=repr(stamp))
        now = self.clock()
        if abs(now - moment) > self.freshness:
            raise StaleResponseError(
                f"answer to {path} is not fresh: signed at {stamp}, our clock says "
                f"{now.isoformat(timespec='seconds')} (window "
                f"{int(self.freshness.total_seconds())} s)", field="datetime",
                expected=f"within {int(self.freshness.total_seconds())} s of now",
                found=stamp)


    # --- writes ---------------------------------------------------------------------------

    async def publish(self, body: bytes, *, confirm: bool = True) -> Receipt:
        """Sign ``body`` with the client key, publish it, verify the signed receipt.

        With ``confirm`` (default) the entry is then looked up and must be exactly what
        was sent (contents, key, signature), and its currhash must hash it. Raises
        :class:`ServerRefused` subclasses when the server says no, a
        :class:`~chronicle.core.verify.ChainFault` when an answer lies.
        """
        if self.key is None or self.client_id is None:
            raise RequestError("publishing needs a client id and a secret key")
        signature = self.key.sign(body)
        _, doc = await self.signed("/publish", method="POST", body=body, headers={
            CLIENT_HEADER: self.client_id, SIGNATURE_HEADER: b64u_encode(signature)})
        results = doc.get("results")
        if not isinstance(results, dict):
            raise UnexpectedResponseError("publish answer has no results object",
                                          field="results")
        fields = {k: results.get(k) for k in ("currhash", "summaryhash", "created")}
        for name, value in fields.items():
            if not isinstance(value, str) or (name != "created"
                                              and decode_b64_field(value, 32) is None):
                raise UnexpectedResponseError(f"publish answer has no valid {name}",
                                              field=name, found=repr(value))
        receipt = Receipt(str(fields["currhash"]), str(fields["summaryhash"]),
                          str(fields["created"]))
        if confirm:
            await self._confirm(receipt, body, signature)
        return receipt

    async def _confirm(self, receipt: Receipt, body: bytes, signature: bytes) -> None:
        assert self.key is not None
        entries = [e async for e in self.lookup(receipt.currhash)]
        mine = [e for e in entries if e.currhash == receipt.currhash]
        if len(mine) != 1:
            raise UnexpectedResponseError("lookup of the receipt did not return its entry",
                                          field="currhash", expected=receipt.currhash)
        entry = mine[0]
        checks = (("contents", entry.contents, body),
                  ("signature", entry.signature, b64u_encode(signature)),
                  ("publickey", entry.publickey, b64u_encode(self.key.public)),
                  ("summaryhash", entry.summaryhash, receipt.summaryhash),
                  ("created", entry.created, receipt.created))
        for name, found, expected in checks:
            if found != expected:
                raise UnexpectedResponseError("the stored entry is not what was published",
                                              field=name, expected=str(expected)[:120],
                                              found=str(found)[:120])

    # --- reads ----------------------------------------------------------------------------

    async def head(self) -> Head | None:
        """The signed head (``lasthash``): None for an empty chain. Replicas answer an
        object ``{"curr-hash", "summary-hash"}`` instead of a row; both are accepted."""
        results = (await self.signed("/lasthash"))[1].get("results")
        if isinstance(results, dict) and "curr-hash" in results:
            cur, summ = results.get("curr-hash"), results.get("summary-hash")
            if decode_b64_field(cur, 32) is None or decode_b64_field(summ, 32) is None:
                raise UnexpectedResponseError("replica lasthash has no valid hashes",
                                              field="curr-hash")
            return Head(str(cur), str(summ))
        if not isinstance(results, list) or len(results) > 1:
            raise UnexpectedResponseError("lasthash answer is not a list of at most one row",
                                          field="results")
        if not results:
            return None
        entry = self._single(results[0], "lasthash")
        return Head(entry.currhash, entry.summaryhash)

    async def lasthash(self) -> VerifiedEntry | None:
        """The newest entry, verified (signature, currhash from its prevhash)."""
        results = (await self.signed("/lasthash"))[1].get("results")
        if isinstance(results, dict) and "summary-hash" in results:
            head = Head(str(results.get("curr-hash")), str(results.get("summary-hash")))
            for entry in [e async for e in self.lookup(head.summaryhash)]:
                if entry.currhash == head.currhash and entry.summaryhash == head.summaryhash:
                    return entry
            raise UnexpectedResponseError("replica lasthash names an entry lookup lacks",
                                          field="summary-hash", expected=head.summaryhash)
        if not isinstance(results, list) or len(results) > 1:
            raise UnexpectedResponseError("lasthash answer is not a list of at most one row",
                                          field="results")
        return self._single(results[0], "lasthash") if results else None

    def _single(self, row: Any, what: str) -> VerifiedEntry:
        if not isinstance(row, dict):
            raise UnexpectedResponseError(f"{what} row is not an object")
        signed = verify_row(row, keys=ROW_KEYS)
        return VerifiedEntry.of(row, ROW_KEYS, signed, None)

    async def lookup(self, hash_: str) -> AsyncIterator[VerifiedEntry]:
        """Entries whose currhash or summaryhash is ``hash_`` (normally exactly one).

        Each is verified on its own, and must carry the hash asked for. A hash the server
        does not have raises :class:`~chronicle.client.errors.RecordNotFound`.
        """
        results = (await self.signed("/lookup/" + quote(hash_, safe="")))[1].get("results")
        if not isinstance(results, list) or not results:
            raise UnexpectedResponseError("lookup answer has no entries", field="results")
        for row in results:
            entry = self._single(row, "lookup")
            if hash_ not in (entry.currhash, entry.summaryhash):
                raise UnexpectedResponseError("lookup answered an entry with another hash",
                                              field="currhash", expected=hash_,
                                              found=entry.currhash)
            yield entry

    async def since(self, hash_: str, *, state: ChainState | None = None
                    ) -> AsyncIterator[VerifiedEntry]:
        """Entries after the one with ``hash_`` (currhash or summaryhash), following pages.

        Without ``state`` the entry is looked up first so the answer must continue from
        it (its first ``prevhash``); links and currhashes are checked. With a
        :class:`ChainState` for that entry (e.g. saved by an audit) summaryhashes are
        recomputed too and ``index`` is known.
        """
        if state is not None and state.summaryhash is not None and hash_ in (
                b64u_encode(state.summaryhash),
                b64u_encode(state.currhash) if state.currhash else None):
            verifier = ChainVerifier(state, keys=ROW_KEYS)
            absolute = True
        else:
            anchor = None
            async for entry in self.lookup(hash_):
                anchor = anchor or entry
            assert anchor is not None
            start = ChainState(1, _raw(anchor.currhash), _raw(anchor.summaryhash))
            verifier = ChainVerifier(start, keys=ROW_KEYS, check_summary=False, index=0)
            absolute = False
        path = "/since/" + quote(hash_, safe="")
        async for row, signed in self.walk(path, verifier, fresh=True):
            yield VerifiedEntry.of(row, ROW_KEYS, signed, signed.index if absolute else None)

    async def export(self) -> AsyncIterator[VerifiedEntry]:
        """The whole chain from its first entry, every entry fully verified, following
        pages. Entries of a very large unpaginated export are yielded before the end of
        the document; its signature is checked at the end (a failure raises there)."""
        verifier = ChainVerifier(None, keys=EXPORT_KEYS)
        async for row, signed in self.walk("/export", verifier, fresh=None):
            yield VerifiedEntry.of(row, EXPORT_KEYS, signed, signed.index)

    async def walk(self, path: str, verifier: ChainVerifier, *, fresh: bool | None
                   ) -> AsyncIterator[tuple[dict[str, Any], SignedContents]]:
        """Verified rows of a paginated walk, one entry signature at a time (in order)."""
        async with aclosing(self.documents(path, fresh=fresh)) as docs:
            async for doc in docs:
                try:
                    async for rows in doc.rows():
                        for row in rows:
                            signed = verifier.check(row)
                            check_entry_signature(signed)
                            yield row, signed
                except ChainFault:
                    await doc.drain()
                    raise

    async def documents(self, path: str, *, fresh: bool | None
                        ) -> AsyncGenerator[DocumentStream, None]:
        """Signed documents of a paginated walk: ``path``, then each ``next`` link.

        The consumer reads each document's :meth:`DocumentStream.rows` fully. Checks the
        links stay on this server and never repeat, and ``total`` (an unpaginated answer:
        its own rows; a paginated ``since``: all rows, on its last page). ``fresh=None``
        checks ``datetime`` on paginated pages only (an unpaginated export may be cached).
        """
        seen: set[str] = set()
        total_rows = 0
        page_fresh = bool(fresh)
        from_root = False
        while True:
            seen.add(path)
            async with DocumentStream(self, path, fresh=page_fresh, from_root=from_root) as doc:
                yield doc
                if not doc.finished:
                    raise RequestError("documents(): each document must be read to its end")
                header = doc.header
                rows = doc.rows_count
            total_rows += rows
            paginated = header.get("paginated") is True
            if fresh is None and paginated and not page_fresh:
                self._check_fresh(header, path)
                page_fresh = True
            nxt = header.get("next") if paginated else None
            total = header.get("total")
            if isinstance(total, bool) or (total is not None and not isinstance(total, int)):
                raise UnexpectedResponseError(f"answer to {path} has a non-integer total",
                                              field="total", found=repr(total))
            if nxt is None or rows == 0:
                counted = total_rows if paginated else rows
                if total is not None and total != counted:
                    raise AnchorError(f"the answer says total {total} but carries {counted} "
                                      "entries", field="total", expected=str(total),
                                      found=str(counted))
                return
            if not isinstance(nxt, str) or not nxt.startswith("/") or nxt.startswith("//"):
                raise UnexpectedResponseError(f"answer to {path} has an invalid next link",
                                              field="next", found=repr(nxt))
            if nxt in seen:
                raise UnexpectedResponseError(f"pagination loops back to {nxt}", field="next",
                                              found=nxt)
            path, from_root = nxt, True


def _raw(text: str) -> bytes:
    raw = decode_b64_field(text, 32)
    if raw is None:
        raise UnexpectedResponseError("not a base64url hash", found=text)
    return raw
