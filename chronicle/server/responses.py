"""Signed responses: every body we send carries ``Body-Signature-Ed25519`` (Sapient),
errors included (:func:`signed_errors`)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from chronicle.core import protocol
from chronicle.core.errors import ChronicleError
from chronicle.core.sapient import SIGNATURE_HEADER, SigningKey
from chronicle.ledger import Clock
from chronicle.server.admission import CLOSE_AFTER

log = logging.getLogger(__name__)

JSON = "application/json"


class Responder:
    """Builds our answers, each signed by ``key``. Errors are Chronicle's signed JSON
    envelope; a server speaking another protocol overrides :meth:`error_body`."""

    def __init__(self, key: SigningKey, clock: Clock) -> None:
        self.key = key
        self.clock = clock

    def raw(self, status: int, body: bytes, content_type: str = JSON,
            headers: dict[str, str] | None = None, signature: str | None = None) -> web.Response:
        hdrs = {"Content-Type": content_type,
                SIGNATURE_HEADER: signature or self.key.sign_b64(body)}
        if headers:
            hdrs.update(headers)
        return web.Response(status=status, body=body, headers=hdrs)

    def ok(self, results: Any, **before_results: Any) -> web.Response:
        body = protocol.render(protocol.ok_envelope(self.clock(), results, **before_results))
        return self.raw(200, body)

    def error_body(self, message: str, details: Any = None) -> tuple[bytes, str]:
        """The body and content type of an error answer saying ``message``: Chronicle's
        error envelope, ``details`` (ours, e.g. /readyz's checks) in ``results`` after the
        message."""
        envelope = protocol.error_envelope(self.clock(), message)
        if details is not None:
            envelope["results"] = details
        return protocol.render(envelope), JSON

    def error(self, status: int, message: str, headers: dict[str, str] | None = None, *,
              details: Any = None) -> web.Response:
        body, content_type = self.error_body(message, details)
        return self.raw(status, body, content_type, headers=headers)

    def error_bytes(self, status: int, reason: str, message: str,
                    headers: dict[str, str] | None = None) -> bytes:
        """A whole signed error answer as bytes on the wire, closing the connection: for
        refusals made before aiohttp sees a request (the connection gate)."""
        body, content_type = self.error_body(message)
        lines = [f"HTTP/1.1 {status} {reason}", f"Content-Type: {content_type}",
                 f"{SIGNATURE_HEADER}: {self.key.sign_b64(body)}",
                 f"Content-Length: {len(body)}", "Connection: close",
                 *(f"{k}: {v}" for k, v in (headers or {}).items())]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii") + body


#: Bodies larger than this are sent a chunk at a time against the send timeout.
PACED_CHUNK = 1 << 20


async def send_paced(request: web.Request, response: web.StreamResponse,
                     chunks: AsyncIterator[bytes | memoryview],
                     send_timeout: float | None) -> web.StreamResponse:
    """Prepare ``response`` and send ``chunks``; a reader that takes no chunk within
    ``send_timeout`` seconds is disconnected (its connection aborted), so one that never
    reads cannot hold the answer in our memory for good."""
    await response.prepare(request)
    async for chunk in chunks:
        try:
            await asyncio.wait_for(response.write(chunk), send_timeout)
        except TimeoutError:
            log.info("disconnecting a reader that took nothing for %ss", send_timeout)
            if request.transport is not None:
                request.transport.abort()
            return response
        except ConnectionResetError:
            return response  # the reader went away
    await response.write_eof()
    return response


def paced(send_timeout: float | None) -> Middleware:
    """The outermost middleware: an answer built in memory and larger than
    :data:`PACED_CHUNK` (a ``lasthash`` of a large entry, a document under the spool
    threshold) goes out through :func:`send_paced`, like a spooled document."""

    async def pieces(body: bytes) -> AsyncIterator[memoryview]:
        view = memoryview(body)
        for pos in range(0, len(view), PACED_CHUNK):
            yield view[pos:pos + PACED_CHUNK]

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        response = await handler(request)
        body = response.body if type(response) is web.Response else None
        if response.prepared or not isinstance(body, bytes) or len(body) <= PACED_CHUNK \
                or request.method == "HEAD":  # HEAD: aiohttp sends the headers alone
            return response
        stream = web.StreamResponse(status=response.status, reason=response.reason,
                                    headers=response.headers)
        stream.content_length = len(body)
        if response.keep_alive is False:
            stream.force_close()
        return await send_paced(request, stream, pieces(body), send_timeout)

    return middleware


def signed_errors(responder: Responder, body_limit: int) -> Middleware:
    """The middleware turning every failure into a signed error answer: never a traceback
    or aiohttp's HTML page. ``body_limit`` is named in a 413."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except ChronicleError as exc:
            answer = responder.error(exc.status, exc.message, exc.headers)
            if request.get(CLOSE_AFTER):
                answer.force_close()
            return answer
        except web.HTTPRequestEntityTooLarge:
            return responder.error(413, f"Request body too large (limit {body_limit} bytes)")
        except web.HTTPMethodNotAllowed as exc:
            allowed = ", ".join(sorted(exc.allowed_methods))
            return responder.error(405, f"Method not allowed. Must be one of: {allowed}",
                                   {"Allow": allowed})
        except web.HTTPNotFound:
            return responder.error(404, "Not found")
        except web.HTTPException as exc:
            return responder.error(exc.status, exc.reason)
        except (asyncio.CancelledError, ConnectionResetError):
            raise
        except Exception:
            log.exception("unhandled error on %s %s", request.method, request.path)
            return responder.error(500, "Internal server error")

    return middleware
