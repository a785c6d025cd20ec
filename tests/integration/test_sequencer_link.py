"""The sequencer link of ``serve --workers N``, in one process: a worker forwards its
clients' publishes to another's sequencer and answers with that sequencer's receipt;
refusals travel back as they were; with the link down, it appends through its own
ledger, and a publish is stored once however it went. Runs on SQLite and PostgreSQL."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from chronicle.core.errors import ChronicleError
from chronicle.server.sequencer_link import Forwarded, LinkClient, LinkDown, LinkServer
from tests.helpers import RunningServer, init_data_dir, start_server


@pytest.fixture
def link_path() -> AsyncIterator[Path]:
    # A Unix socket's path must stay short: not under pytest's long tmp_path.
    where = Path(tempfile.mkdtemp(prefix="chronicle-link-test-"))
    yield where / "sequencer.sock"
    shutil.rmtree(where, ignore_errors=True)


def _count(srv: RunningServer, outcome: str) -> float:
    return srv.ctx.metrics.forwarded.labels(outcome)._value.get()


async def test_a_worker_forwards_publishes_to_the_sequencer(tmp_path: Path,
                                                            link_path: Path) -> None:
    data_dir = await init_data_dir(tmp_path / "d", publish_new_clients=False)
    zero = await start_server(data_dir)
    one = await start_server(data_dir)
    server = LinkServer(zero.ctx.sequence_forwarded, zero.ctx.settings.max_body_size)
    await server.start(link_path)
    assert link_path.stat().st_mode & 0o777 == 0o600
    one.ctx.link = LinkClient(link_path)
    try:
        alice = await one.add_client("alice")
        res = await one.publish(alice, "forwarded")
        assert res.status == 200
        receipt = res.json["results"]
        assert _count(one, "sequencer") == 1 and _count(one, "fallback") == 0
        assert zero.ctx.ledgers[""].committed == 1  # worker 0's sequencer stored it
        assert one.ctx.ledgers[""].committed == 0  # not the forwarding worker's own
        # The same signed request again (a retry): the stored entry, nothing new.
        again = await one.publish(alice, "forwarded")
        assert again.status == 200 and again.json["results"] == receipt
        last = await zero.request("GET", "/chronicle/lasthash")
        assert [r["currhash"] for r in last.json["results"]] == [receipt["currhash"]]

        # Refusals made by the sequencer come back with their status and message.
        body = b"from a client the sequencer does not know"
        sig = alice.key.sign(body)
        with pytest.raises(ChronicleError) as refused:
            await one.ctx.link.append(Forwarded("", "nobody", alice.key.public, sig, body))
        assert refused.value.status == 403
        assert refused.value.message == "Client not found"
        with pytest.raises(ChronicleError) as unknown:
            await one.ctx.link.append(Forwarded("no-such-instance", alice.client_id,
                                                alice.key.public, sig, body))
        assert unknown.value.status == 404

        # Worker 0 goes away: the worker appends through its own ledger instead.
        await server.close()
        res = await one.publish(alice, "while worker 0 restarts")
        assert res.status == 200
        assert _count(one, "fallback") == 1 and one.ctx.ledgers[""].committed == 1
        with pytest.raises(LinkDown):
            await one.ctx.link.append(Forwarded("", alice.client_id, alice.key.public,
                                                sig, body))

        # A new worker 0 listens again: forwarding resumes once the retry pause is over.
        server = LinkServer(zero.ctx.sequence_forwarded, zero.ctx.settings.max_body_size)
        await server.start(link_path)
        one.ctx.link._failed_at = -1.0  # skip the pause between attempts (0.5 s)
        res = await one.publish(alice, "worker 0 is back")
        assert res.status == 200 and _count(one, "sequencer") == 3
        export = await zero.request("GET", "/chronicle/export")
        contents = [r["contents"] for r in export.json["results"]]
        assert contents == ["forwarded", "while worker 0 restarts", "worker 0 is back"]
    finally:
        await one.ctx.link.close()
        await server.close()
        await one.close()
        await zero.close()


async def test_a_link_that_breaks_mid_request_falls_back_without_doubling(
        tmp_path: Path, link_path: Path) -> None:
    """Worker 0 takes the publish, commits it, and the link breaks before its answer
    arrives: the forwarding worker appends it itself, and the idempotent append answers
    the entry worker 0 stored instead of storing it twice."""
    data_dir = await init_data_dir(tmp_path / "d", publish_new_clients=False)
    zero = await start_server(data_dir)
    one = await start_server(data_dir)
    holder: dict[str, LinkServer] = {}

    async def commit_then_break(instance: str, contents: bytes, publickey: bytes,
                                signature: bytes, client_id: str) -> object:
        entry = await zero.ctx.sequence_forwarded(instance, contents, publickey, signature,
                                                  client_id)
        for writer in list(holder["server"]._writers):
            writer.close()  # the answer is never sent
        return entry

    server = holder["server"] = LinkServer(commit_then_break,  # type: ignore[arg-type]
                                           zero.ctx.settings.max_body_size)
    await server.start(link_path)
    one.ctx.link = LinkClient(link_path)
    try:
        alice = await one.add_client("alice")
        res = await one.publish(alice, "committed, answer lost")
        assert res.status == 200
        assert _count(one, "fallback") == 1
        assert zero.ctx.ledgers[""].committed == 1 and one.ctx.ledgers[""].committed == 0
        export = await zero.request("GET", "/chronicle/export")
        rows = export.json["results"]
        assert [r["contents"] for r in rows] == ["committed, answer lost"]
        assert rows[0]["hash"] == res.json["results"]["currhash"]
    finally:
        await one.ctx.link.close()
        await server.close()
        await one.close()
        await zero.close()
