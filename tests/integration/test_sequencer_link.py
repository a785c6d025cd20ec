"""The sequencer link of ``serve --workers N``, in one process: a worker forwards its
clients' publishes to another's sequencer and answers with that sequencer's receipt;
refusals travel back as they were; with the link down, it appends through its own
ledger, and a publish is stored once however it went. Runs on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from chronicle.core.errors import ChronicleError, StorageError
from chronicle.server import health, sequencer_link
from chronicle.server.sequencer_link import Forwarded, LinkClient, LinkDown, LinkServer
from tests.helpers import RunningServer, init_data_dir, start_server


@dataclass
class Workers:
    """Two servers on one data directory: ``zero`` sequences, ``one`` forwards to it."""

    zero: RunningServer
    one: RunningServer
    path: Path
    servers: list[LinkServer] = field(default_factory=list)

    async def listen(self, append: Any = None) -> LinkServer:
        """Worker 0's end, appending with ``append`` (default: its own sequencer)."""
        server = LinkServer(append or self.zero.ctx.sequence_forwarded,
                            self.zero.ctx.settings.max_body_size)
        await server.start(self.path)
        self.servers.append(server)
        if self.one.ctx.link is None:
            self.one.ctx.link = LinkClient(self.path)
        return server

    @property
    def link(self) -> LinkClient:
        assert self.one.ctx.link is not None
        return self.one.ctx.link


@pytest.fixture
async def workers(tmp_path: Path) -> AsyncIterator[Workers]:
    # A Unix socket's path must stay short: not under pytest's long tmp_path.
    where = Path(tempfile.mkdtemp(prefix="chronicle-link-test-"))
    data_dir = await init_data_dir(tmp_path / "d", publish_new_clients=False)
    pair = Workers(await start_server(data_dir), await start_server(data_dir),
                   where / "sequencer.sock")
    try:
        yield pair
    finally:
        if pair.one.ctx.link is not None:
            await pair.one.ctx.link.close()
        for server in pair.servers:
            await server.close()
        await pair.one.close()
        await pair.zero.close()
        shutil.rmtree(where, ignore_errors=True)


def _count(srv: RunningServer, outcome: str) -> float:
    return srv.ctx.metrics.forwarded.labels(outcome)._value.get()


async def test_a_worker_forwards_publishes_to_the_sequencer(workers: Workers) -> None:
    zero, one = workers.zero, workers.one
    server = await workers.listen()
    assert workers.path.stat().st_mode & 0o777 == 0o600
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
        await workers.link.append(Forwarded("", "nobody", alice.key.public, sig, body))
    assert refused.value.status == 403
    assert refused.value.message == "Client not found"
    with pytest.raises(ChronicleError) as unknown:
        await workers.link.append(Forwarded("no-such-instance", alice.client_id,
                                            alice.key.public, sig, body))
    assert unknown.value.status == 404

    # Worker 0 goes away: the worker appends through its own ledger instead.
    await server.close()
    res = await one.publish(alice, "while worker 0 restarts")
    assert res.status == 200
    assert _count(one, "fallback") == 1 and one.ctx.ledgers[""].committed == 1
    with pytest.raises(LinkDown):
        await workers.link.append(Forwarded("", alice.client_id, alice.key.public, sig,
                                            body))

    # A new worker 0 listens again: forwarding resumes once the retry pause is over.
    await workers.listen()
    workers.link._failed_at = -1.0  # skip the pause between attempts (0.5 s)
    res = await one.publish(alice, "worker 0 is back")
    assert res.status == 200 and _count(one, "sequencer") == 3
    export = await zero.request("GET", "/chronicle/export")
    contents = [r["contents"] for r in export.json["results"]]
    assert contents == ["forwarded", "while worker 0 restarts", "worker 0 is back"]


async def test_a_link_that_breaks_mid_request_falls_back_without_doubling(
        workers: Workers) -> None:
    """Worker 0 takes the publish, commits it, and the link breaks before its answer
    arrives: the forwarding worker appends it itself, and the idempotent append answers
    the entry worker 0 stored instead of storing it twice."""
    zero, one = workers.zero, workers.one

    async def commit_then_break(*forwarded: Any) -> Any:
        entry = await zero.ctx.sequence_forwarded(*forwarded)
        for writer in list(workers.servers[0]._writers):
            writer.close()  # the answer is never sent
        return entry

    await workers.listen(commit_then_break)
    alice = await one.add_client("alice")
    res = await one.publish(alice, "committed, answer lost")
    assert res.status == 200
    assert _count(one, "fallback") == 1
    assert zero.ctx.ledgers[""].committed == 1 and one.ctx.ledgers[""].committed == 0
    export = await zero.request("GET", "/chronicle/export")
    rows = export.json["results"]
    assert [r["contents"] for r in rows] == ["committed, answer lost"]
    assert rows[0]["hash"] == res.json["results"]["currhash"]


async def test_an_unanswered_publish_falls_back_and_is_stored_once(
        workers: Workers, monkeypatch: pytest.MonkeyPatch) -> None:
    """A worker 0 that takes a publish and does not answer in time (wedged): the worker
    appends it itself; when worker 0 gets to it later, the idempotent append finds it
    stored. Meanwhile the forwarding worker's /readyz names the silent link."""
    monkeypatch.setattr(sequencer_link, "ANSWER_TIMEOUT_S", 1.0)
    monkeypatch.setattr(health, "STUCK_AFTER", 0.2)
    zero, one = workers.zero, workers.one
    wedged = asyncio.Event()
    late: list[Any] = []

    async def slow(*forwarded: Any) -> Any:
        await wedged.wait()
        late.append(await zero.ctx.sequence_forwarded(*forwarded))
        return late[-1]

    await workers.listen(slow)
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
        assert late and late[0].receipt() == res.json["results"]
        assert zero.ctx.ledgers[""].committed == 0  # found stored, not appended again
        assert (await one.request("GET", "/readyz")).status == 200
    finally:
        wedged.set()


async def test_after_a_broken_link_a_failed_fallback_says_the_outcome_is_unknown(
        workers: Workers) -> None:
    """The link broke after the publish was sent, and the worker's own ledger refuses it
    too (here: stopping): the client is told the outcome is unknown and that a retry is
    safe, never that nothing was stored (worker 0 may have stored it)."""
    one = workers.one

    async def vanish(*_: Any) -> Any:
        for writer in list(workers.servers[0]._writers):
            writer.close()
        raise asyncio.CancelledError

    await workers.listen(vanish)
    alice = await one.add_client("alice")
    await one.ctx.ledgers[""].stop()
    res = await one.publish(alice, "lost on the way")
    assert res.status == 503
    assert res.json["message"] == ("The outcome is unknown (the link to the sequencer "
                                   "broke); retrying the same signed request is safe")
    assert res.headers["Retry-After"] == "1"


async def test_worker_zeros_storage_refusal_shows_in_the_forwarding_workers_readyz(
        workers: Workers) -> None:
    zero, one = workers.zero, workers.one
    failing = [True]

    async def disk_trouble(*forwarded: Any) -> Any:
        if failing[0]:
            raise StorageError("The ledger cannot write to its database at the moment; "
                               "nothing was stored (its operator is told)", status=503,
                               headers={"Retry-After": "60"})
        return await zero.ctx.sequence_forwarded(*forwarded)

    await workers.listen(disk_trouble)
    alice = await one.add_client("alice")
    res = await one.publish(alice, "refused by worker 0")
    assert res.status == 503 and res.headers["Retry-After"] == "60"
    ready = await one.request("GET", "/readyz")
    assert ready.status == 503
    assert "writes (worker 0): The ledger cannot write" in ready.json["message"]
    failing[0] = False
    assert (await one.publish(alice, "stored again")).status == 200
    assert (await one.request("GET", "/readyz")).status == 200


async def test_a_worker_started_before_worker_zero_waits_for_it(workers: Workers) -> None:
    """The workers start together: until it first reaches worker 0 (for STARTUP_S at
    most), a forwarding worker keeps trying instead of appending the publish itself."""
    zero, one = workers.zero, workers.one
    one.ctx.link = LinkClient(workers.path)  # before worker 0 listens
    alice = await one.add_client("alice")
    early = asyncio.ensure_future(one.publish(alice, "before worker 0 listens"))
    await asyncio.sleep(0.3)
    assert not early.done()
    await workers.listen()
    res = await early
    assert res.status == 200
    assert _count(one, "sequencer") == 1 and _count(one, "fallback") == 0
    assert zero.ctx.ledgers[""].committed == 1 and one.ctx.ledgers[""].committed == 0


async def test_past_startup_a_missing_worker_zero_is_down_at_once(
        workers: Workers, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sequencer_link, "STARTUP_S", 0.0)
    one = workers.one
    one.ctx.link = LinkClient(workers.path)
    alice = await one.add_client("alice")
    res = await one.publish(alice, "nobody listens")
    assert res.status == 200
    assert _count(one, "fallback") == 1 and one.ctx.ledgers[""].committed == 1
