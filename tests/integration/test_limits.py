"""Back-pressure and maintenance: per-client rate limits (429) and read-only mode (503)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from tests.helpers import admin_request_body, init_data_dir, start_server


async def test_rate_limit_answers_429_and_stores_nothing(tmp_path: Path) -> None:
    srv = await start_server(await init_data_dir(tmp_path / "l", rate_limit=2,
                                                 publish_new_clients=False))
    try:
        await srv.add_client("alice")
        await srv.add_client("bob")
        first = [await srv.publish("alice", f"burst {i}") for i in range(3)]
        assert [r.status for r in first] == [200, 200, 429]
        refused = first[2]
        assert refused.json["message"] == "Rate limit exceeded, retry later"
        assert list(refused.json) == ["version", "datetime", "status", "message"]
        assert int(refused.headers["Retry-After"]) >= 1
        assert (await srv.publish("bob", "another client has its own bucket")).status == 200
        total = (await srv.request("GET", "/chronicle/export")).json["total"]
        assert total == 3
        await asyncio.sleep(0.6)  # 2/s: a token is back after 0.5 s
        assert (await srv.publish("alice", "burst 2")).status == 200
    finally:
        await srv.close()


async def test_read_only_refuses_writes_and_serves_reads(tmp_path: Path) -> None:
    srv = await start_server(await init_data_dir(tmp_path / "r", read_only=True))
    try:
        await srv.add_client("alice")
        admin = await srv.add_client("admin", is_admin=True)
        res = await srv.publish("alice", "frozen")
        assert res.status == 503
        assert res.json["message"] == "This ledger is read-only at the moment; nothing was stored"
        assert res.headers["Retry-After"] == "60"
        body = admin_request_body(publickey=admin.key.public_b64)
        for path in ("/chronicle/register", "/chronicle/revoke"):
            res = await srv.request("POST", path, body, headers={
                "Chronicle-Client-Key-ID": admin.client_id,
                "Body-Signature-Ed25519": admin.key.sign_b64(body)})
            assert res.status == 503
        assert (await srv.request("GET", "/chronicle/lasthash")).json["results"] == []
    finally:
        await srv.close()
