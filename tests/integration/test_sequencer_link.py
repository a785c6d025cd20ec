"""The sequencer link of ``serve --workers N``, in one process: a worker forwards its
clients' publishes to another's sequencer and answers with that sequencer's receipt;
refusals travel back as they were; with the link down, it appends through its own
ledger, and a publish is stored once however it went. Runs on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from chronicle.core.errors import ChronicleError, StorageError
from chronicle.server import health, sequencer_link
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


async def test_an_unanswered_publish_falls_back_and_is_stored_once(
        tmp_path: Path, link_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A worker 0 that takes a publish and does not answer in time (wedged): the worker
    appends it itself; when worker 0 gets to it later, the idempotent append finds it
    stored. Meanwhile the forwarding worker's /readyz names the silent link."""
    monkeypatch.setattr(sequencer_link, "ANSWER_TIMEOUT_S", 1.0)
    monkeypatch.setattr(health, "STUCK_AFTER", 0.2)
    data_dir = await init_data_dir(tmp_path / "d", publish_new_clients=False)
    zero = await start_server(data_dir)
    one = await start_server(data_dir)
    wedged = asyncio.Event()
    late: list[object] = []

    async def slow(instance: str, contents: bytes, publickey: bytes, signature: bytes,
                   client_id: str) -> object:
        await wedged.wait()
        late.append(await zero.ctx.sequence_forwarded(instance, contents, publickey,
                                                      signature, client_id))
        return late[-1]

    server = LinkServer(slow, zero.ctx.settings.max_body_size)  # type: ignore[arg-type]
    await server.start(link_path)
    one.ctx.link = LinkClient(link_path)
    try:
        alice = await one.add_client("alice")
        publish = asyncio.create_task(one.publish(alice, "worker 0 is wedged"))
        await asyncio.sleep(0.5)
        ready = await one.request("GET", "/readyz")
        assert ready.status == 503
        assert "sequencer link: worker 0 has not answered a publish for" in \
            ready.json["message"]
        res = await publish
        assert res.status == 200 and _count(one, "fallback") == 1
        assert one.ctx.ledgers[""].committed == 1
        wedged.set()
        for _ in range(100):
            if late:
                break
            await asyncio.sleep(0.02)
        assert late and late[0].receipt() == res.json["results"]  # type: ignore[attr-defined]
        assert zero.ctx.ledgers[""].committed == 0  # found stored, not appended again
        assert (await one.request("GET", "/readyz")).status == 200
    finally:
        wedged.set()
        await one.ctx.link.close()
        await server.close()
        await one.close()
        await zero.close()


async def test_after_a_broken_link_a_failed_fallback_says_the_outcome_is_unknown(
        tmp_path: Path, link_path: Path) -> None:
    """The link broke after the publish was sent, and the worker's own ledger refuses it
    too (here: stopping): the client is told the outcome is unknown and that a retry is
    safe, never that nothing was stored (worker 0 may have stored it)."""
    data_dir = await init_data_dir(tmp_path / "d", publish_new_clients=False)
    zero = await start_server(data_dir)
    one = await start_server(data_dir)
    holder: dict[str, LinkServer] = {}

    async def vanish(*_: object) -> object:
        for writer in list(holder["server"]._writers):
            writer.close()
        raise asyncio.CancelledError

    server = holder["server"] = LinkServer(vanish,  # type: ignore[arg-type]
                                           zero.ctx.settings.max_body_size)
    await server.start(link_path)
    one.ctx.link = LinkClient(link_path)
    try:
        alice = await one.add_client("alice")
        await one.ctx.ledgers[""].stop()
        res = await one.publish(alice, "lost on the way")
        assert res.status == 503
        assert res.json["message"] == ("The outcome is unknown (the link to the sequencer "
                                       "broke); retrying the same signed request is safe")
        assert res.headers["Retry-After"] == "1"
    finally:
        await one.ctx.link.close()
        await server.close()
        await one.close()
        await zero.close()


async def test_worker_zeros_storage_refusal_shows_in_the_forwarding_workers_readyz(
        tmp_path: Path, link_path: Path) -> None:
    data_dir = await init_data_dir(tmp_path / "d", publish_new_clients=False)
    zero = await start_server(data_dir)
    one = await start_server(data_dir)
    failing = [True]

    async def disk_trouble(instance: str, contents: bytes, publickey: bytes,
                           signature: bytes, client_id: str) -> object:
        if failing[0]:
            raise StorageError("The ledger cannot write to its database at the moment; "
                               "nothing was stored (its operator is told)", status=503,
                               headers={"Retry-After": "60"})
        return await zero.ctx.sequence_forwarded(instance, contents, publickey, signature,
                                                 client_id)

    server = LinkServer(disk_trouble,  # type: ignore[arg-type]
                        zero.ctx.settings.max_body_size)
    await server.start(link_path)
    one.ctx.link = LinkClient(link_path)
    try:
        alice = await one.add_client("alice")
        res = await one.publish(alice, "refused by worker 0")
        assert res.status == 503 and res.headers["Retry-After"] == "60"
        ready = await one.request("GET", "/readyz")
        assert ready.status == 503
        assert "writes (worker 0): The ledger cannot write" in ready.json["message"]
        failing[0] = False
        assert (await one.publish(alice, "stored again")).status == 200
        assert (await one.request("GET", "/readyz")).status == 200
    finally:
        await one.ctx.link.close()
        await server.close()
        await one.close()
        await zero.close()
