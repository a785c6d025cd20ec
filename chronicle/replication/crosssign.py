"""Cross-signing: publish our chain head on peer Chronicles, by policy, in the background.

The message is ``{"target", "cross-sign-at", "currhash", "summaryhash"}`` (pretty JSON,
as Sapient's ``createSignedJsonRequest``), signed with our server key and sent to the
peer's ``/publish`` under the client id our key has there. The peer's answer must be
signed by its pinned key and be a receipt; the receipt (where our head landed on the
peer's chain) is recorded. A peer that is down, slow or refuses only postpones the next
attempt (with backoff): this never runs inside a client's publish request, so a peer can
never slow down or fail our writes (PHP Chronicle 1.3.1 cross-signs inside the publish).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime
from enum import StrEnum
from typing import Any

import aiohttp

from chronicle.client.errors import ServerRefused
from chronicle.client.http import ChronicleClient
from chronicle.core.document import load_object
from chronicle.core.encoding import atom, b64u_encode, decode_b64_field, parse_timestamp, utcnow
from chronicle.core.errors import EncodingError, TransportError
from chronicle.core.replica import CrossSignPolicy, cross_sign_message
from chronicle.core.sapient import CLIENT_HEADER, SIGNATURE_HEADER, SigningKey
from chronicle.core.verify import (
    ChainFault,
    DocumentSignatureError,
)
from chronicle.store import Store, XsignReceipt, XsignTarget

log = logging.getLogger(__name__)

class PushStatus(StrEnum):
    PUSHED = "pushed"      # our head is on the peer's chain (its signed receipt is kept)
    SKIPPED = "skipped"    # the policy says not yet (or our chain is empty)
    ERROR = "error"        # the peer could not be reached: retried later
    REFUSED = "refused"    # the peer answered a signed error
    FAILED = "failed"      # the peer's answer did not verify


@dataclass
class PushResult:
    name: str
    status: PushStatus
    index: int | None = None
    peer_currhash: str | None = None
    peer_summaryhash: str | None = None
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "status": str(self.status), "index": self.index,
                "peer-currhash": self.peer_currhash,
                "peer-summaryhash": self.peer_summaryhash, "error": self.error}


def _when(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        return parse_timestamp(text)
    except EncodingError:
        return None


async def push(store: Store, key: SigningKey, target: XsignTarget, *,
               clock: Callable[[], datetime] = utcnow, force: bool = False,
               request_timeout: float = 30.0, freshness: float | None = 600.0,
               session: aiohttp.ClientSession | None = None) -> PushResult:
    """Cross-sign our head onto ``target`` if its policy says so (or ``force``)."""
    head = await store.chain(target.instance).head()
    now = clock()
    policy = CrossSignPolicy.from_json(target.policy)
    due = policy.due(head_index=None if head is None else head.index,
                     last_index=target.last_index, last_run=_when(target.last_run), now=now)
    if head is None or not (due or force):
        return PushResult(target.name, PushStatus.SKIPPED, None if head is None else head.index)
    message = cross_sign_message(target.publickey, now, head.currhash, head.summaryhash)
    signature = key.sign_b64(message)
    headers = {CLIENT_HEADER: target.clientid, SIGNATURE_HEADER: signature,
               "Content-Type": "application/json"}
    receipt = XsignReceipt(target_id=target.id, recorded=atom(now), status=PushStatus.FAILED,
                           index=head.index, currhash=head.currhash,
                           summaryhash=head.summaryhash, message=message, signature=signature)
    result = PushResult(target.name, PushStatus.ERROR, head.index)
    try:
        async with ChronicleClient(target.url, target.publickey, timeout=request_timeout,
                                   freshness=freshness, clock=clock, session=session) as peer:
            doc = await peer.fetch("/publish", method="POST", body=message, headers=headers)
            receipt = replace(receipt, response=doc.read(), response_signature=doc.signature)
            if not doc.verified:
                raise DocumentSignatureError("the peer's answer is not signed by its pinned key",
                                             field=SIGNATURE_HEADER,
                                             expected=b64u_encode(target.publickey),
                                             found=doc.signature or "no signature")
            parsed = load_object(doc.read(), what="the peer's answer")
            peer.check_envelope(parsed, doc.status, doc.headers, "/publish", fresh=True)
            results = parsed.get("results")
            fields = {k: results.get(k) if isinstance(results, dict) else None
                      for k in ("currhash", "summaryhash", "created")}
            if decode_b64_field(fields["currhash"], 32) is None \
                    or decode_b64_field(fields["summaryhash"], 32) is None \
                    or not isinstance(fields["created"], str):
                raise DocumentSignatureError("the peer's answer is not a publish receipt",
                                             field="results")
    except TransportError as exc:
        result.error = exc.diagnostics()
    except ServerRefused as exc:
        result.status = PushStatus.REFUSED
        result.error = exc.diagnostics()
        await store.xsign.add_receipt(replace(receipt, error=result.error))
    except ChainFault as exc:
        result.status = PushStatus.FAILED
        result.error = exc.diagnostics()
        await store.xsign.add_receipt(replace(receipt, error=result.error))
    else:
        result.status = PushStatus.PUSHED
        result.peer_currhash = str(fields["currhash"])
        result.peer_summaryhash = str(fields["summaryhash"])
        await store.xsign.add_receipt(replace(
            receipt, status="ok", peer_currhash=result.peer_currhash,
            peer_summaryhash=result.peer_summaryhash, peer_created=str(fields["created"])))
        await store.xsign.record_attempt(target.id, when=atom(now), error=None,
                                         index=head.index)
        log.info("cross-signed entry %d onto %s: %s", head.index, target.name,
                 result.peer_currhash)
        return result
    log.warning("cross-sign onto %s failed: %s", target.name, result.error)
    await store.xsign.record_attempt(target.id, when=atom(now), error=result.error)
    return result

