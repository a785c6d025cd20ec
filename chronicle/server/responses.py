"""Signed responses: every body we send carries ``Body-Signature-Ed25519`` (Sapient)."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from chronicle.core import protocol
from chronicle.core.sapient import SIGNATURE_HEADER, SigningKey
from chronicle.ledger import Clock

JSON = "application/json"


class Responder:
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

    def error(self, status: int, message: str, headers: dict[str, str] | None = None, *,
              details: Any = None) -> web.Response:
        """Chronicle's error envelope; ``details`` (ours, e.g. /readyz's checks) go in
        ``results`` after the message."""
        envelope = protocol.error_envelope(self.clock(), message)
        if details is not None:
            envelope["results"] = details
        return self.raw(status, protocol.render(envelope), headers=headers)

    def error_bytes(self, status: int, reason: str, message: str,
                    headers: dict[str, str] | None = None) -> bytes:
        """A whole signed error answer as bytes on the wire, closing the connection: for
        refusals made before aiohttp sees a request (the connection gate)."""
        body = protocol.render(protocol.error_envelope(self.clock(), message))
        lines = [f"HTTP/1.1 {status} {reason}", f"Content-Type: {JSON}",
                 f"{SIGNATURE_HEADER}: {self.key.sign_b64(body)}",
                 f"Content-Length: {len(body)}", "Connection: close",
                 *(f"{k}: {v}" for k, v in (headers or {}).items())]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii") + body
