"""Admin operations re-check everything inside the write transaction.

A register or revoke is authenticated when it arrives, then waits for the chain's write
lock (here held by another connection, as a busy CLI or another node would). If the
administrator is revoked, or the target client changes, before the lock comes free, the
request must fail — not act on the stale check.
"""

from __future__ import annotations

import asyncio
import sqlite3
from datetime import timedelta
from pathlib import Path
from typing import Any

import asyncpg

from chronicle.core.encoding import atom, utcnow
from chronicle.core.sapient import CLIENT_HEADER, SIGNATURE_HEADER, SigningKey
from chronicle.store.postgres import split_url
from tests.helpers import (
    Identity,
    RunningServer,
    admin_request_body,
    init_data_dir,
    separate_database,
    start_server,
)


class WriteLock:
    """Hold the chain's write lock from another connection and run SQL inside it."""

    def __init__(self, srv: RunningServer) -> None:
        self.url = srv.ctx.settings.database
        self.path = getattr(srv.ctx.store, "path", "")
        self._sqlite: sqlite3.Connection | None = None
        self._pg: Any = None

    async def __aenter__(self) -> WriteLock:
        if self.url.startswith("sqlite:"):
            self._sqlite = sqlite3.connect(self.path, isolation_level=None)
            self._sqlite.execute("BEGIN IMMEDIATE")
        else:
            dsn, schema = split_url(self.url)
            self._pg = await asyncpg.connect(dsn, server_settings={"search_path": schema or ""})
            await self._pg.execute("BEGIN")
            await self._pg.execute("SELECT id FROM instances FOR UPDATE")
        return self

    async def execute(self, sql: str, *args: Any) -> None:
        if self._sqlite is not None:
            self._sqlite.execute(sql.replace("$1", "?"), args)
        else:
            await self._pg.execute(sql, *args)

    async def __aexit__(self, *exc: object) -> None:
        if self._sqlite is not None:
            self._sqlite.execute("COMMIT")
            self._sqlite.close()
        else:
            await self._pg.execute("COMMIT")
            await self._pg.close()


async def _admin_post(srv: RunningServer, admin: Identity, path: str, **fields: Any) -> Any:
    body = admin_request_body(**fields)
    return await srv.request("POST", path, body, headers={
        CLIENT_HEADER: admin.client_id, SIGNATURE_HEADER: admin.key.sign_b64(body)})


async def _waiting(srv: RunningServer, coro: Any) -> asyncio.Task[Any]:
    task = asyncio.ensure_future(coro)
    await asyncio.sleep(0.3)  # authenticated, now waiting for the write lock
    assert not task.done()
    return task


async def test_register_by_an_admin_revoked_meanwhile_fails(tmp_path: Path) -> None:
    for publish in (False, True):
        srv = await start_server(await init_data_dir(
            tmp_path / f"r{publish}", publish_new_clients=publish,
            database=separate_database(f"p{int(publish)}")))
        try:
            admin = await srv.add_client("admin", is_admin=True)
            newcomer = SigningKey.generate()
            async with WriteLock(srv) as lock:
                task = await _waiting(srv, _admin_post(
                    srv, admin, "/chronicle/register", publickey=newcomer.public_b64))
                await lock.execute("UPDATE clients SET revoked = 'now' WHERE publicid = $1",
                                   admin.client_id)
            res = await task
            assert (res.status, res.json["message"]) == (403, "Client not found")
            assert len(await srv.ctx.store.clients.all("")) == 0
            assert (await srv.request("GET", "/chronicle/lasthash")).json["results"] == []
        finally:
            await srv.close()


async def test_two_concurrent_revocations_only_one_succeeds(tmp_path: Path) -> None:
    srv = await start_server(await init_data_dir(tmp_path / "l", publish_revoked_clients=True,
                                                 publish_new_clients=False))
    try:
        admin = await srv.add_client("admin", is_admin=True)
        bob = await srv.add_client("bob")
        async with WriteLock(srv):
            first = await _waiting(srv, _admin_post(
                srv, admin, "/chronicle/revoke", clientid=bob.client_id,
                publickey=bob.key.public_b64))
            # Signed seconds earlier: two distinct requests (the same one twice would be a
            # replay, refused on its own).
            second = await _waiting(srv, _admin_post(
                srv, admin, "/chronicle/revoke", clientid=bob.client_id,
                publickey=bob.key.public_b64,
                request_time=atom(utcnow() - timedelta(seconds=2))))
        results = sorted([(r.status, r.json.get("message")) for r in
                          await asyncio.gather(first, second)], key=lambda x: x[0])
        assert results == [(200, None), (404, "Error: Client not found. It may have "
                                              "already been deleted.")]
        rows = (await srv.request("GET", "/chronicle/export")).json["results"]
        assert [r["contents"].count("Client Access Revocation") for r in rows] == [1]
    finally:
        await srv.close()


async def test_register_refuses_the_servers_own_key(tmp_path: Path) -> None:
    srv = await start_server(await init_data_dir(tmp_path / "k"))
    try:
        admin = await srv.add_client("admin", is_admin=True)
        res = await _admin_post(srv, admin, "/chronicle/register",
                                publickey=srv.key.public_b64)
        assert (res.status, res.json["message"]) == \
            (400, "The server's signing keys cannot be used by clients.")
    finally:
        await srv.close()
