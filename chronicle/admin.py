"""Client registration and revocation: one code path for the HTTP API and the CLI.

With ``publish-new-clients`` / ``publish-revoked-clients`` on, the server appends its own
signed ``{"server-action", "now", "clientid", "publickey"}`` message to the chain, in the
same transaction as the client change (PHP Chronicle 1.3.1 crashes here instead).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import datetime

from chronicle.core.encoding import atom, b64u_encode
from chronicle.core.errors import AuthError, NotFoundError, RequestError
from chronicle.core.protocol import (
    ACTION_NEW_CLIENT,
    ACTION_REVOKED_CLIENT,
    MSG_CLIENT_NOT_FOUND,
    MSG_REVOKE_ADMIN,
    MSG_REVOKE_UNKNOWN,
    MSG_SERVER_KEY,
    server_action_message,
)
from chronicle.core.sapient import SigningKey
from chronicle.ledger import Ledger
from chronicle.store import Client, Store, WriteTx


def new_client_id() -> str:
    """A fresh public client id: base64url of 24 random bytes (32 characters), as PHP."""
    return b64u_encode(os.urandom(24))


async def _require_admin(tx: WriteTx, admin_id: str) -> None:
    """Inside the write transaction: the administrator asking is still an active admin.

    The HTTP layer checked it when the request arrived; this closes the window between
    that check and the commit (a revocation committed by another process meanwhile).
    """
    found = (await tx.active_clients([admin_id])).get(admin_id)
    if found is None or not found.is_admin:
        raise AuthError(MSG_CLIENT_NOT_FOUND)


@dataclass(frozen=True, slots=True)
class AdminRequest:
    """A signed admin request that came over the API: who sent it, and its signature
    (recorded with the change, so the same request never acts twice)."""

    admin_id: str
    signature: bytes
    endpoint: str


async def _check_request(store: Store, tx: WriteTx, request: AdminRequest | None,
                         now: datetime) -> None:
    """Inside the write transaction: the administrator is still one, and the request was
    not carried out before."""
    if request is None:
        return
    await _require_admin(tx, request.admin_id)
    await store.replays.record(tx.session, request.signature, request.endpoint, atom(now))


async def register_client(store: Store, ledger: Ledger, key: SigningKey, *, publickey: bytes,
                          is_admin: bool, comment: str | None, client_id: str,
                          now: datetime, publish: bool,
                          request: AdminRequest | None = None) -> Client:
    """Add an active client; with ``publish``, record it on the chain atomically.

    ``request``: the signed admin request, when the change came over the API.
    """
    if publickey == key.public:
        raise RequestError(MSG_SERVER_KEY, status=400)
    client = Client(publicid=client_id, publickey=publickey, is_admin=is_admin,
                    comment=comment, created=atom(now))

    async def add(tx: WriteTx) -> None:
        await _check_request(store, tx, request, now)
        await tx.add_client(client)

    if publish:
        message = server_action_message(ACTION_NEW_CLIENT, now, client_id,
                                        b64u_encode(publickey))
        await ledger.append(message, key.public, key.sign(message), action=add)
    else:
        async with store.write(ledger.instance) as tx:
            await add(tx)
    return client


async def revoke_client(store: Store, ledger: Ledger, key: SigningKey, *, client: Client,
                        now: datetime, publish: bool,
                        request: AdminRequest | None = None) -> None:
    """Revoke an active client (the row is kept, marked revoked, for the audit trail).

    The client is re-checked inside the write transaction, so two concurrent revocations
    cannot both succeed (nor record two revocations on the chain).
    """

    async def revoke(tx: WriteTx) -> None:
        await _check_request(store, tx, request, now)
        current = (await tx.active_clients([client.publicid])).get(client.publicid)
        if current is None or current.publickey != client.publickey:
            raise NotFoundError(MSG_REVOKE_UNKNOWN)
        if current.is_admin and request is not None:
            raise AuthError(MSG_REVOKE_ADMIN)
        await tx.revoke_client(client.publicid, atom(now))

    if publish:
        message = server_action_message(ACTION_REVOKED_CLIENT, now, client.publicid,
                                        b64u_encode(client.publickey))
        await ledger.append(message, key.public, key.sign(message), action=revoke)
    else:
        async with store.write(ledger.instance) as tx:
            await revoke(tx)
