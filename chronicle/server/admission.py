"""Admission: what a stranger can make the server hold, bounded before anyone is known.

Client ids are public (every "New Client Registration" entry shows one), so everything
before the signature check is open to anyone on the network. Three limits hold it:

- **connections** (:class:`ConnectionGate`): at most ``max-connections`` at once and
  ``max-connections-per-ip`` from one address; a connection over a limit gets a signed
  503 and is closed at once. A connection that sends no complete request within
  ``idle-timeout`` is closed (aiohttp's keep-alive timer runs from the connection's start,
  so a slowloris that trickles header lines is cut off too);
- **request bodies** (:func:`read_body`): a compressed body is refused (415: the
  signature covers the bytes on the wire, and inflating them is how 8 KB became 8 MiB);
  bodies being read share a memory budget (``body-memory``; large bodies may use only part
  of it, so small publishes always find room), a body that cannot get its share is a
  signed 503, and the whole body must arrive within ``body-timeout`` (408);
- **file descriptors**: the soft limit is raised to the hard one at start, so the
  connection cap, not the kernel, decides who is refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import resource
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from http import HTTPStatus
from typing import Any, cast

from aiohttp import web
from aiohttp.typedefs import Middleware
from aiohttp.web_protocol import RequestHandler

from chronicle.config import IPNetwork
from chronicle.core.errors import OverloadedError, RequestError

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

log = logging.getLogger(__name__)

#: Bodies up to this size are "small" (every publish we have seen): they may use the whole
#: body budget; larger ones only what is left above ``SMALL_RESERVE`` of it.
SMALL_BODY = 64 << 10
SMALL_RESERVE = 0.5

MSG_COMPRESSED = ("Compressed request bodies are not accepted: the signature covers the "
                  "bytes sent")
MSG_BODY_BUSY = "The server is reading too many request bodies; retry later"
MSG_BODY_SLOW = "The request body did not arrive in time"
MSG_TOO_MANY = "Too many connections; retry later"


# --- request bodies --------------------------------------------------------------------------

class BodyBudget:
    """Bytes of request bodies being read at once, across the process."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.in_use = 0
        self.large_in_use = 0

    @contextlib.contextmanager
    def reserve(self, size: int) -> Any:
        """Hold ``size`` bytes while a body is read and handled; over budget: a 503."""
        large = size > SMALL_BODY
        large_limit = int(self.limit * (1 - SMALL_RESERVE))
        if self.in_use + size > self.limit or \
                (large and self.large_in_use + size > large_limit):
            raise OverloadedError(MSG_BODY_BUSY, retry_after=1)
        self.in_use += size
        if large:
            self.large_in_use += size
        try:
            yield
        finally:
            self.in_use -= size
            if large:
                self.large_in_use -= size


@dataclass
class BodyLimits:
    """The body limits of one server process (from the settings)."""

    max_size: int
    timeout: float
    budget: BodyBudget

    @classmethod
    def of(cls, max_size: int, timeout: timedelta | None, memory: int) -> BodyLimits:
        """From the settings ``max-body-size``, ``body-timeout`` (None: no limit) and
        ``body-memory`` (never below one largest body)."""
        return cls(max_size=max_size, timeout=timeout.total_seconds() if timeout else 1e9,
                   budget=BodyBudget(max(memory, max_size)))


#: The request's exit stack: what it holds (a body reservation) is released when it ends.
HELD = web.RequestKey("held", contextlib.ExitStack)


async def read_body(request: web.Request, limits: BodyLimits) -> bytes:
    """The exact bytes of the request body, within the limits (see the module doc).

    The body's share of the budget (its declared length, else the most a body may be) is
    held until the request ends (:func:`holding`). Every refusal closes the connection:
    what is left of the body is never read.
    """
    encoding = request.headers.get("Content-Encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):
        _close_after(request)
        raise RequestError(MSG_COMPRESSED, status=415)
    declared = request.content_length
    if declared is not None and declared > limits.max_size:
        _close_after(request)
        raise RequestError(f"Request body too large (limit {limits.max_size} bytes)",
                           status=413)
    try:
        request[HELD].enter_context(limits.budget.reserve(
            limits.max_size if declared is None else declared))
    except OverloadedError:
        _close_after(request)
        raise
    if request.content.is_eof():
        # Already here in full (a small publish comes with its headers): nothing to time.
        return await request.read()
    try:
        async with asyncio.timeout(limits.timeout):
            return await request.read()
    except TimeoutError:
        _close_after(request)
        raise RequestError(MSG_BODY_SLOW, status=408) from None


@web.middleware
async def holding(request: web.Request,
                  handler: Callable[[web.Request], Any]) -> web.StreamResponse:
    """Release what the request held (its body's budget) when it ends."""
    with contextlib.ExitStack() as held:
        request[HELD] = held
        response: web.StreamResponse = await handler(request)
        return response


#: Set on a request whose answer must close the connection (the error middleware does).
CLOSE_AFTER = web.RequestKey("close-after", bool)


def _close_after(request: web.Request) -> None:
    """Close the connection after this answer: the rest of the body is never read."""
    request[CLOSE_AFTER] = True


# --- connections -----------------------------------------------------------------------------

def trusted(ip: str, proxies: Sequence[IPNetwork]) -> bool:
    """Is ``ip`` one of our reverse proxies?"""
    if not proxies:
        return False
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return False
    return any(address in net for net in proxies)


def client_address(peer: str, forwarded_for: str | None, proxies: Sequence[IPNetwork]) -> str:
    """The address a request comes from: the peer, unless the peer is a trusted proxy;
    then the right-most ``X-Forwarded-For`` address that is not one of ours. Entries to
    the left of it were written by the client and prove nothing; an unreadable entry
    where the client should be leaves the nearest proxy's address."""
    if not forwarded_for or not trusted(peer, proxies):
        return peer
    address = peer
    for hop in reversed(forwarded_for.split(",")):
        try:
            address = str(ipaddress.ip_address(hop.strip()))
        except ValueError:
            return address
        if not trusted(address, proxies):
            return address
    return address


def real_client(proxies: Sequence[IPNetwork]) -> Middleware:
    """A middleware giving handlers the client's address behind trusted reverse proxies
    (``request.remote``): what the per-address limits and the logs use."""
    @web.middleware
    async def unproxy(request: web.Request, handler: Handler) -> web.StreamResponse:
        peer = request.remote or ""
        if proxies and trusted(peer, proxies):
            # Every line of the header, in order: a proxy may add a line of its own
            # instead of appending to the one the client sent.
            forwarded = ",".join(request.headers.getall("X-Forwarded-For", []))
            address = client_address(peer, forwarded, proxies)
            request = request.clone(remote=address)
        return await handler(request)

    return unproxy


class ConnectionGate:
    """Counts open connections (in all, per peer address); wraps the aiohttp protocol
    factory so that a connection over a limit is answered ``refusal()`` and closed.
    Trusted proxies carry many clients: only the overall limit applies to them."""

    def __init__(self, limit: int, per_ip: int, refusal: Callable[[], bytes],
                 proxies: Sequence[IPNetwork] = ()) -> None:
        self.limit = limit
        self.per_ip = per_ip
        self.refusal = refusal
        self.proxies = tuple(proxies)
        self.open = 0
        self.by_ip: Counter[str] = Counter()
        self.refused = 0

    def factory(self, inner: Callable[[], asyncio.Protocol]) -> Callable[[], asyncio.Protocol]:
        return lambda: _Gatekeeper(self, inner)

    def admit(self, ip: str) -> bool:
        over_per_ip = self.by_ip[ip] >= self.per_ip and not trusted(ip, self.proxies)
        if self.open >= self.limit or over_per_ip:
            self.refused += 1
            return False
        self.open += 1
        self.by_ip[ip] += 1
        return True

    def leave(self, ip: str) -> None:
        self.open -= 1
        self.by_ip[ip] -= 1
        if self.by_ip[ip] <= 0:
            del self.by_ip[ip]


class _Gatekeeper(asyncio.Protocol):
    """Admits the connection to the real protocol, or refuses it before reading a byte."""

    #: How long a refused connection is drained before it is closed: closing a socket
    #: with unread input resets it, and the reset can destroy the refusal in flight.
    LINGER = 5.0

    def __init__(self, gate: ConnectionGate, inner: Callable[[], asyncio.Protocol]) -> None:
        self._gate = gate
        self._make = inner
        self._inner: asyncio.Protocol | None = None
        self._ip = ""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        peer = transport.get_extra_info("peername")
        self._ip = str(peer[0]) if peer else ""
        if not self._gate.admit(self._ip):
            stream = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
            with contextlib.suppress(Exception):
                stream.write(self._gate.refusal())
                if stream.can_write_eof():
                    stream.write_eof()
            asyncio.get_running_loop().call_later(self.LINGER, stream.close)
            return
        self._inner = self._make()
        self._inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if self._inner is not None:
            self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        # A refused connection closes once its peer is done sending.
        return self._inner.eof_received() if self._inner is not None else False

    def connection_lost(self, exc: Exception | None) -> None:
        if self._inner is not None:
            self._gate.leave(self._ip)
            self._inner.connection_lost(exc)
            self._inner = None

    def pause_writing(self) -> None:
        if self._inner is not None:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        if self._inner is not None:
            self._inner.resume_writing()


class _SignedParserErrors(RequestHandler):
    """aiohttp's protocol, but a request it cannot parse (a 20 KB header line, a malformed
    request line, a bad chunk) is answered like every other error: signed JSON, then the
    connection is closed. aiohttp would answer those with unsigned plain text."""

    def __init__(self, server: web.Server, answer: ErrorAnswer, **kwargs: Any) -> None:
        super().__init__(server, **kwargs)
        self._answer = answer

    def handle_error(self, request: Any, status: int = 500, exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        if status >= 500:
            log.error("error handling a request from %s", request.remote, exc_info=exc)
            text = "Internal server error"
        else:
            log.debug("unparsable request from %s: %s", request.remote, exc)
            # What went wrong, without echoing the sender's bytes back.
            reason = (message or HTTPStatus(status).phrase).split(":")[0][:100]
            text = f"Bad request: {reason}"
        if request.writer.output_size > 0:
            raise ConnectionError("an answer was already being sent")
        response = self._answer(status, text)
        response.force_close()
        return response


#: Builds a signed error answer (status, message) — :meth:`Responder.error`.
ErrorAnswer = Callable[[int, str], web.Response]


class GatedSite(web.BaseSite):
    """A listening socket whose connections pass a :class:`ConnectionGate`, served by an
    aiohttp protocol that signs its own parser errors."""

    def __init__(self, runner: web.BaseRunner, sock: Any, gate: ConnectionGate,
                 answer: ErrorAnswer, *, shutdown_timeout: float = 60.0) -> None:
        super().__init__(runner, shutdown_timeout=shutdown_timeout)
        self._sock = sock
        self._gate = gate
        self._answer = answer

    @property
    def name(self) -> str:
        host, port = self._sock.getsockname()[:2]
        return f"http://{host}:{port}"

    async def start(self) -> None:
        await super().start()
        server = self._runner.server
        assert server is not None
        loop = asyncio.get_running_loop()
        # The options the runner gave its web.Server (timeouts, no inflation) go to our
        # protocol too: web.Server keeps them for the protocols it makes.
        options = dict(server._kwargs)

        def protocol() -> asyncio.Protocol:
            return _SignedParserErrors(server, self._answer, loop=loop, **options)

        self._server = await loop.create_server(self._gate.factory(protocol), sock=self._sock)


def raise_fd_limit() -> int:
    """Raise the soft limit on open files to the hard limit; the limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]
