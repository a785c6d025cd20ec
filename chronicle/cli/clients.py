"""The lists a ledger keeps about others: ``client add|list|revoke`` (who may publish) and
``mirror add|list|remove`` (``GET /chronicle/mirrors``). They work while ``serve`` runs."""

from __future__ import annotations

from typing import Any

import click

from chronicle import admin
from chronicle.cli.common import (
    data_dir_option,
    fail,
    handle_errors,
    instance_option,
    json_option,
    open_store,
    out,
    public_key,
    run,
)
from chronicle.config import DataDir
from chronicle.core.encoding import atom, b64u_encode, utcnow
from chronicle.core.protocol import valid_client_id
from chronicle.store import Mirror

# --- clients ----------------------------------------------------------------------------------

@click.group()
def client() -> None:
    """Manage the clients allowed to publish (works while `serve` runs)."""


@client.command("add")
@data_dir_option
@click.option("--public-key", "public_key_text", required=True,
              help="Client's Ed25519 public key.")
@click.option("--admin", "is_admin", is_flag=True, help="May register and revoke clients.")
@click.option("--comment", default=None, help="A note kept with the client.")
@click.option("--client-id", default=None, help="Use this id instead of a random one.")
@instance_option
@json_option
@handle_errors
def client_add(data_dir: DataDir, public_key_text: str, is_admin: bool, comment: str | None,
               client_id: str | None, instance: str, as_json: bool) -> None:
    """Allow a key to publish; prints its client id.

    Also appends the "New Client Registration" entry to the chain (unless the setting
    publish-new-clients is off), so everyone sees who may publish.
    """
    pk = public_key(public_key_text)
    if client_id is not None and not valid_client_id(client_id):
        raise click.BadParameter("1 to 128 characters of base64url ([A-Za-z0-9_=-])",
                                 param_hint="--client-id")

    async def go() -> str:
        async with open_store(data_dir) as opened:
            opened.require_instance(instance)
            store, settings = opened.store, opened.settings
            await store.ensure_instance(instance)
            key = opened.signing_key()
            cid = client_id or admin.new_client_id()
            if await store.clients.get(instance, cid) is not None:
                fail(f"client id {cid} is already in use")
            async with opened.ledger(instance) as ledger:
                await admin.register_client(store, ledger, key, publickey=pk, is_admin=is_admin,
                                            comment=comment, client_id=cid, now=utcnow(),
                                            publish=settings.publish_new_clients)
            return cid

    cid = run(go())
    out(as_json, {"client-id": cid}, cid)


@client.command("list")
@data_dir_option
@instance_option
@click.option("--all", "include_revoked", is_flag=True, help="Include revoked clients.")
@json_option
@handle_errors
def client_list(data_dir: DataDir, instance: str, include_revoked: bool, as_json: bool) -> None:
    """List the clients of a chain (each chain has its own)."""
    async def go() -> list[dict[str, Any]]:
        async with open_store(data_dir) as opened:
            clients = await opened.store.clients.all(instance, include_revoked=include_revoked)
        return [{"client-id": c.publicid, "public-key": b64u_encode(c.publickey),
                 "admin": c.is_admin, "comment": c.comment, "created": c.created,
                 "revoked": c.revoked} for c in clients]

    rows = run(go())
    text = "\n".join(
        f"{r['client-id']}  {r['public-key']}  {'admin' if r['admin'] else 'client'}"
        + (f"  revoked {r['revoked']}" if r["revoked"] else "")
        + (f"  {r['comment']}" if r["comment"] else "") for r in rows)
    out(as_json, {"clients": rows}, text or "(no clients)")


@client.command("revoke")
@data_dir_option
@click.option("--client-id", required=True, help="The client to revoke.")
@instance_option
@json_option
@handle_errors
def client_revoke(data_dir: DataDir, client_id: str, instance: str, as_json: bool) -> None:
    """Take a client's right to publish; its entries stay on the chain.

    Appends a "Client Revocation" entry (unless publish-revoked-clients is off).
    """
    async def go() -> None:
        async with open_store(data_dir) as opened:
            found = await opened.store.clients.get(instance, client_id)
            if found is None:
                fail(f"no active client {client_id}")
            async with opened.ledger(instance) as ledger:
                await admin.revoke_client(opened.store, ledger, opened.signing_key(),
                                          client=found, now=utcnow(),
                                          publish=opened.settings.publish_revoked_clients)

    run(go())
    out(as_json, {"client-id": client_id, "revoked": True}, f"revoked {client_id}")


# --- mirrors ----------------------------------------------------------------------------------

@click.group()
def mirror() -> None:
    """Manage the public list of mirrors (GET /chronicle/mirrors)."""


@mirror.command("add")
@data_dir_option
@click.option("--url", required=True, help="The mirror's API base URL.")
@click.option("--public-key", "public_key_text", required=True,
              help="The mirror's Ed25519 public key (base64url).")
@click.option("--comment", default=None, help="Shown in the list.")
@click.option("--sort", "sortpriority", default=0, type=int, help="Lower sorts first.")
@instance_option
@json_option
@handle_errors
def mirror_add(data_dir: DataDir, url: str, public_key_text: str, comment: str | None,
               sortpriority: int, instance: str, as_json: bool) -> None:
    """Add a mirror to the list this ledger publishes at GET /chronicle/mirrors.

    The list only tells clients where copies are; it is not itself on the chain.
    """
    public_key(public_key_text)

    async def go() -> None:
        async with open_store(data_dir) as opened:
            await opened.store.mirrors.add(instance, Mirror(url, public_key_text.strip(),
                                                            comment, sortpriority),
                                           atom(utcnow()))

    run(go())
    out(as_json, {"url": url, "added": True}, f"mirror {url} added")


@mirror.command("list")
@data_dir_option
@instance_option
@json_option
@handle_errors
def mirror_list(data_dir: DataDir, instance: str, as_json: bool) -> None:
    """List the mirrors published at GET /chronicle/mirrors."""
    async def go() -> list[Mirror]:
        async with open_store(data_dir) as opened:
            return await opened.store.mirrors.all(instance)

    rows = run(go())
    payload = [{"url": m.url, "publickey": m.publickey, "comment": m.comment,
                "sort": m.sortpriority} for m in rows]
    out(as_json, {"mirrors": payload},
        "\n".join(f"{m.url}  {m.publickey}  {m.comment or ''}".rstrip() for m in rows)
        or "(no mirrors)")


@mirror.command("remove")
@data_dir_option
@click.option("--url", required=True, help="The mirror's URL, as listed.")
@instance_option
@json_option
@handle_errors
def mirror_remove(data_dir: DataDir, url: str, instance: str, as_json: bool) -> None:
    """Remove a mirror from the published list (exit 1 if it is not there)."""
    async def go() -> bool:
        async with open_store(data_dir) as opened:
            return await opened.store.mirrors.remove(instance, url)

    if not run(go()):
        fail(f"no mirror {url}")
    out(as_json, {"url": url, "removed": True}, f"mirror {url} removed")
