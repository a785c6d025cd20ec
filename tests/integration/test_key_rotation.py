"""Rotating the server's key as docs/operations.md describes it.

After the key file is swapped and the server restarted: its index announces the new key
(signed by it), the whole chain — old entries and the server's own registration message
signed by the old key included — verifies under the new pin, a client still pinning the
old key refuses every answer, and a replica of the ledger stops (key-changed) until its
operator pins the new key, then follows again with nothing lost.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from chronicle.client import ChronicleClient
from chronicle.client.errors import TransportError
from chronicle.config import KEY_FILE
from chronicle.core.encoding import b64u_decode
from chronicle.core.errors import ChronicleError
from chronicle.core.sapient import SigningKey, verify
from tests.helpers import init_data_dir, start_server
from tests.integration.test_replication import QUIET, add_source, cli, ledger, sync


async def test_a_rotated_server_key(tmp_path: Path) -> None:
    data_dir = await init_data_dir(tmp_path / "ledger")
    old = data_dir.signing_key(data_dir.settings())
    admin_key = SigningKey.generate()
    added = await cli("client", "add", "--data-dir", str(data_dir.path), "--public-key",
                      admin_key.public_b64, "--json")  # a server-signed registration entry
    assert added.code == 0, added.stderr
    alice_id = added.json["client-id"]

    srv = await start_server(data_dir)
    try:
        async with ChronicleClient(srv.url, old.public, client_id=alice_id,
                                   key=admin_key) as api:
            for n in range(3):
                await api.publish(f"before rotation {n}".encode())
        replica = await ledger(tmp_path, "replica", **QUIET)
        await add_source(replica, srv.url, old.public)
        assert (await sync(replica)).code == 0
    finally:
        await srv.close()

    new = SigningKey.generate()
    (data_dir.path / KEY_FILE).write_text(new.to_text())
    srv = await start_server(data_dir)
    try:
        index = await srv.request("GET", "/chronicle")  # checks the signature by `new`
        assert b64u_decode(json.loads(index.body)["public-key"], 32) == new.public
        assert not verify(old.public, index.body,
                          b64u_decode(index.headers["Body-Signature-Ed25519"], 64))

        async with ChronicleClient(srv.url, new.public, client_id=alice_id,
                                   key=admin_key) as api:
            await api.publish(b"after rotation")
            entries = [e async for e in api.export()]
        assert [e.contents.decode() for e in entries][1:] == [
            *(f"before rotation {n}" for n in range(3)), "after rotation"]
        assert entries[0].publickey == old.public_b64  # the registration, by the old key

        async with ChronicleClient(srv.url, old.public) as stale:
            with pytest.raises(ChronicleError) as refused:
                await stale.lasthash()
            assert not isinstance(refused.value, TransportError)

        moved = await cli("replica", "set-url", "--data-dir", str(replica.path), "upstream",
                          "--url", srv.url)  # the test's restart took another port
        assert moved.code == 0, moved.stderr
        stopped = await sync(replica)
        assert stopped.code == 1
        (report,) = stopped.json["sources"]
        assert (report["status"], report["fault"]["kind"]) == ("failed", "key-changed")
        repinned = await cli("replica", "set-key", "--data-dir", str(replica.path),
                             "upstream", "--server-key", new.public_b64, "--json")
        assert repinned.code == 0 and repinned.json["status"] == "active"
        followed = await sync(replica)
        assert followed.code == 0, followed.stderr
        (report,) = followed.json["sources"]
        assert report["status"] == "ok"
    finally:
        await srv.close()
