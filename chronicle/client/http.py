"""An async client that trusts nothing it has not verified against the pinned server key."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import aiohttp

from chronicle.core.blakechain import currhash
from chronicle.core.encoding import b64u_decode, b64u_encode
from chronicle.core.errors import ChronicleError, IntegrityError, RequestError, TransportError
from chronicle.core.sapient import CLIENT_HEADER, SIGNATURE_HEADER, SigningKey, verify


@dataclass(frozen=True)
class Receipt:
    currhash: str
    summaryhash: str
    created: str

    def as_dict(self) -> dict[str, str]:
        return {"currhash": self.currhash, "summaryhash": self.summaryhash,
                "created": self.created}


class ServerRefused(RequestError):
    """The server answered a signed error (``status: ERROR``)."""


class ChronicleClient:
    """One server, pinned by its public key. Use as ``async with ChronicleClient(...)``."""

    def __init__(self, url: str, server_key: bytes, *, instance: str = "",
                 client_id: str | None = None, key: SigningKey | None = None,
                 timeout: float = 30.0) -> None:
        self.base = url.rstrip("/") + "/chronicle"
        self.server_key = server_key
        self.instance = instance
        self.client_id = client_id
        self.key = key
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> ChronicleClient:
        self._session = aiohttp.ClientSession(timeout=self._timeout)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None:
            await self._session.close()

    def _url(self, path: str) -> str:
        url = self.base + path
        if self.instance:
            url += "?instance=" + quote(self.instance, safe="")
        return url

    async def _call(self, method: str, path: str, body: bytes | None = None,
                    headers: dict[str, str] | None = None) -> dict[str, Any]:
        assert self._session is not None, "use the client as an async context manager"
        try:
            async with self._session.request(method, self._url(path), data=body,
                                             headers=headers) as resp:
                raw = await resp.read()
                sigs = resp.headers.getall(SIGNATURE_HEADER, [])
                status = resp.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise TransportError(f"cannot reach {self.base}: {exc or type(exc).__name__}") from exc
        if len(sigs) != 1:
            raise IntegrityError(f"response to {method} {path} (HTTP {status}) is not signed")
        try:
            sig = b64u_decode(sigs[0], 64, what="response signature")
        except ChronicleError as exc:
            raise IntegrityError(exc.message) from None
        if not verify(self.server_key, raw, sig):
            raise IntegrityError(f"response to {method} {path} has an invalid signature "
                                 "for the pinned server key")
        try:
            doc = json.loads(raw)
        except ValueError:
            raise IntegrityError(f"response to {method} {path} is not JSON") from None
        if not isinstance(doc, dict):
            raise IntegrityError(f"response to {method} {path} is not a JSON object")
        if doc.get("status") != "OK":
            raise ServerRefused(str(doc.get("message", "request refused")), status=status)
        return doc

    async def publish(self, body: bytes) -> Receipt:
        """Sign and publish ``body``; verify the receipt against a signed lookup of it."""
        if self.key is None or self.client_id is None:
            raise RequestError("publishing needs a client id and a secret key")
        signature = self.key.sign(body)
        doc = await self._call("POST", "/publish", body, {
            CLIENT_HEADER: self.client_id, SIGNATURE_HEADER: b64u_encode(signature)})
        results = doc.get("results")
        if not isinstance(results, dict):
            raise IntegrityError("publish answer has no results object")
        try:
            receipt = Receipt(str(results["currhash"]), str(results["summaryhash"]),
                              str(results["created"]))
        except KeyError as exc:
            raise IntegrityError(f"publish answer lacks {exc.args[0]}") from None
        await self._check_receipt(receipt, body, signature)
        return receipt

    async def _check_receipt(self, receipt: Receipt, body: bytes, signature: bytes) -> None:
        assert self.key is not None
        rows = (await self._call("GET", "/lookup/" + receipt.currhash)).get("results")
        if not isinstance(rows, list) or len(rows) != 1 or not isinstance(rows[0], dict):
            raise IntegrityError("lookup of the receipt did not return exactly one entry")
        row = rows[0]
        if (row.get("contents") != body.decode("utf-8")
                or row.get("signature") != b64u_encode(signature)
                or row.get("publickey") != b64u_encode(self.key.public)
                or row.get("currhash") != receipt.currhash
                or row.get("summaryhash") != receipt.summaryhash
                or row.get("created") != receipt.created):
            raise IntegrityError("the stored entry does not match what was published")
        prev = row.get("prevhash")
        prev_raw = b64u_decode(prev, 32) if prev else None
        expected = currhash(prev_raw, receipt.created, self.key.public, signature, body)
        if b64u_encode(expected) != receipt.currhash:
            raise IntegrityError("receipt currhash does not hash the published entry",
                                 field="currhash", expected=b64u_encode(expected),
                                 found=receipt.currhash)

    async def lasthash(self) -> dict[str, Any] | None:
        rows = (await self._call("GET", "/lasthash")).get("results")
        if not isinstance(rows, list):
            raise IntegrityError("lasthash answer has no results list")
        return rows[0] if rows else None
