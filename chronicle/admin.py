"""Client registration and revocation: one code path for the HTTP API and the CLI.

With ``publish-new-clients`` / ``publish-revoked-clients`` on, the server appends its own
signed ``{"server-action", "now", "clientid", "publickey"}`` message to the chain, in the
same transaction as the client change (PHP Chronicle 1.3.1 crashes here instead).
"""

from __future__ import annotations

import os
from datetime import datetime

from chronicle.core.encoding import atom, b64u_encode
from chronicle.core.protocol import ACTION_NEW_CLIENT, ACTION_REVOKED_CLIENT, server_action_message
from chronicle.core.sapient import SigningKey
from chronicle.ledger import Ledger
from chronicle.store.base import Client, Store, WriteTx


def new_client_id() -> str:
    """A fresh public client id: base64url of 24 random bytes (32 characters), as PHP."""
    return b64u_encode(os.urandom(24))


async def register_client(store: Store, ledger: Ledger, key: SigningKey, *, publickey: bytes,
                          is_admin: bool, comment: str | None, client_id: str,
                          now: datetime, publish: bool) -> Client:
    """Add an active client; with ``publish``, record it on the chain atomically."""
    client = Client(publicid=client_id, publickey=publickey, is_admin=is_admin,
                    comment=comment, created=atom(now))

    async def add(tx: WriteTx) -> None:
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
                        now: datetime, publish: bool) -> None:
    """Revoke an active client (the row is kept, marked revoked, for the audit trail)."""

    async def revoke(tx: WriteTx) -> None:
        await tx.revoke_client(client.publicid, atom(now))

    if publish:
        message = server_action_message(ACTION_REVOKED_CLIENT, now, client.publicid,
                                        b64u_encode(client.publickey))
        await ledger.append(message, key.public, key.sign(message), action=revoke)
    else:
        async with store.write(ledger.instance) as tx:
            await revoke(tx)
