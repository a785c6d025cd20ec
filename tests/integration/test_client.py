"""The Python client library against a live server of ours and recorded PHP Chronicle answers.

Recorded answers are replayed by :class:`RecordedChronicle`, a small aiohttp server on
loopback that sends the exact recorded bodies and ``Body-Signature-Ed25519`` headers of
``exchanges.json`` (optionally re-signed bodies, to play a lying server).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pytest
from aiohttp import web

from chronicle.client import (
    ChronicleClient,
    ClientRejected,
    RecordNotFound,
    ResponseSignatureError,
    StaleResponseError,
    SyncChronicleClient,
    UnexpectedResponseError,
)
from chronicle.client.http import Head, api_base
from chronicle.core.encoding import b64u_decode, utcnow
from chronicle.core.sapient import SigningKey
from chronicle.core.verify import BrokenLinkError, ChainVerifier
from tests.helpers import RunningServer, load_vector, serving

EXCHANGES = {e["id"]: e for e in load_vector("exchanges.json")["exchanges"]}
KEYS = load_vector("keys.json")
KEY_A = b64u_decode(KEYS["servers"]["A"]["publickey"], 32)
KEY_B = b64u_decode(KEYS["servers"]["B"]["publickey"], 32)
SECRET_A = SigningKey.from_text(KEYS["servers"]["A"]["secretkey"])
SOURCE = "wBiorLqcC-U8iRZNKhEDuSS1X2GQHBHQFlA1-UNhjOhP"
REPLICA = f"/chronicle/replica/{SOURCE}"


@pytest.fixture
def backend() -> str:
    """The client and the auditor are storage-agnostic: run these tests on SQLite only
    (overrides the integration suite's SQLite/PostgreSQL parametrisation)."""
    return "sqlite"


class RecordedChronicle:
    """Serve recorded PHP answers (by request target) on loopback."""

    def __init__(self) -> None:
        self.routes: dict[str, tuple[int, bytes, list[tuple[str, str]]]] = {}
        self.requests: list[str] = []
        self.runner: web.AppRunner | None = None
        self.url = ""

    def add(self, exchange_id: int, *, target: str | None = None,
            body: bytes | None = None, sign_with: SigningKey | None = None) -> None:
        exchange = EXCHANGES[exchange_id]
        response = exchange["response"]
        raw = body if body is not None else response["body_text"].encode()
        headers = [(k, v) for k, v in response["headers"]
                   if k.lower() in ("content-type", "body-signature-ed25519")]
        if sign_with is not None:
            headers = [(k, v) for k, v in headers if k.lower() != "body-signature-ed25519"]
            headers.append(("Body-Signature-Ed25519", sign_with.sign_b64(raw)))
        key = unquote(target or exchange["request"]["target"])
        self.routes[key] = (response["status"], raw, headers)

    async def _handle(self, request: web.Request) -> web.Response:
        self.requests.append(request.raw_path)
        found = self.routes.get(unquote(request.raw_path))
        if found is None:
            return web.Response(status=404, text="not recorded")
        status, body, headers = found
        resp = web.Response(status=status, body=body)
        for name, value in headers:
            resp.headers.add(name, value)
        return resp

    async def start(self) -> RecordedChronicle:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self.runner.addresses[0][1]}"
        return self

    async def close(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


@pytest.fixture
async def recorded() -> AsyncIterator[RecordedChronicle]:
    server = await RecordedChronicle().start()
    try:
        yield server
    finally:
        await server.close()


@pytest.fixture
async def paged(tmp_path: Path) -> AsyncIterator[RunningServer]:
    async with serving(tmp_path / "paged", "alice", paginate_export=3) as srv:
        yield srv


def client_for(srv: RunningServer, **options: Any) -> ChronicleClient:
    alice = srv.identities["alice"]
    return ChronicleClient(srv.url, srv.key.public, client_id=alice.client_id, key=alice.key,
                           **options)


# --- our server -------------------------------------------------------------------------------

async def test_publish_and_read_back(server: RunningServer) -> None:
    async with client_for(server) as api:
        assert await api.head() is None
        assert await api.lasthash() is None
        receipts = [await api.publish(f"release {i}".encode()) for i in range(5)]
        last = await api.lasthash()
        assert last is not None and last.receipt() == receipts[-1]
        assert await api.head() == Head(last.currhash, last.summaryhash)
        found = [e async for e in api.lookup(receipts[2].summaryhash)]
        assert [e.text for e in found] == ["release 2"]
        since = [e async for e in api.since(receipts[1].currhash)]
        assert [e.text for e in since] == ["release 2", "release 3", "release 4"]
        assert all(e.index is None for e in since)
        export = [e async for e in api.export()]
        assert [(e.index, e.text) for e in export] == [(i, f"release {i}") for i in range(5)]
        assert [e.receipt() for e in export] == receipts


async def test_publish_without_confirm_and_raw_bytes(server: RunningServer) -> None:
    async with client_for(server) as api:
        body = '{"name": "Zürich", "path": "/a/b"}'.encode()
        receipt = await api.publish(body, confirm=False)
        entry = await api.lasthash()
        assert entry is not None and entry.contents == body
        assert entry.currhash == receipt.currhash


async def test_pagination_and_since_from_saved_state(paged: RunningServer) -> None:
    async with client_for(paged) as api:
        for i in range(8):
            await api.publish(b"e%d" % i)
        export = [e async for e in api.export()]
        assert [e.index for e in export] == list(range(8))
        # A state saved at entry 2 lets since() recompute summaryhashes and know indices.
        verifier = ChainVerifier(track_hashstate=True)
        async for _row, _ in api.walk("/export", verifier, fresh=None):
            if verifier.count == 3:
                break
        state = verifier.state()
        assert state.count == 3
        later = [e async for e in api.since(export[2].summaryhash, state=state)]
        assert [(e.index, e.text) for e in later] == [(i, f"e{i}") for i in range(3, 8)]


async def test_refusals_are_precise(server: RunningServer) -> None:
    stranger = SigningKey.generate()
    async with ChronicleClient(server.url, server.key.public, client_id="nobody",
                               key=stranger) as api:
        with pytest.raises(ClientRejected) as info:
            await api.publish(b"hello")
        assert info.value.status == 403
        with pytest.raises(RecordNotFound):
            [e async for e in api.lookup("A" * 43 + "=")]
        with pytest.raises(RecordNotFound):
            [e async for e in api.since("A" * 43 + "=")]


async def test_wrong_pinned_key_and_stale_answers(server: RunningServer) -> None:
    other = SigningKey.generate().public
    async with ChronicleClient(server.url, other) as api:
        with pytest.raises(ResponseSignatureError):
            await api.head()
    async with ChronicleClient(server.url, server.key.public,
                               clock=lambda: utcnow() + timedelta(hours=1)) as api:
        with pytest.raises(StaleResponseError) as info:
            await api.head()
        assert info.value.field == "datetime"
    async with ChronicleClient(server.url, server.key.public, freshness=None,
                               clock=lambda: utcnow() + timedelta(hours=1)) as api:
        assert await api.head() is None


async def test_sync_facade(server: RunningServer) -> None:
    alice = server.identities["alice"]

    def use() -> tuple[list[str], list[str]]:
        with SyncChronicleClient(server.url, server.key.public, client_id=alice.client_id,
                                 key=alice.key) as chronicle:
            first = chronicle.publish(b"one")
            chronicle.publish(b"two")
            assert chronicle.lookup(first.currhash)[0].text == "one"
            since = [e.text for e in chronicle.since(first.currhash)]
            iterator = chronicle.export()
            head = next(iterator)  # stop early: the facade closes the walk
            del iterator
            return since, [head.text]

    assert await asyncio.to_thread(use) == (["two"], ["one"])


def test_api_base() -> None:
    assert api_base("http://h:1") == "http://h:1/chronicle"
    assert api_base("http://h:1/") == "http://h:1/chronicle"
    assert api_base(f"http://h:1{REPLICA}/") == f"http://h:1{REPLICA}"
    with pytest.raises(Exception, match="URL"):
        api_base("ftp://h")


# --- recorded PHP Chronicle -----------------------------------------------------------------------

def php_client(recorded: RecordedChronicle, key: bytes = KEY_A,
               base: str = "") -> ChronicleClient:
    # Recorded answers are dated: freshness is checked against the recording time instead.
    return ChronicleClient(recorded.url + base, key, freshness=None)


async def test_recorded_php_reads(recorded: RecordedChronicle) -> None:
    for exchange in (134, 133, 20, 21, 22, 24):
        recorded.add(exchange)
    async with php_client(recorded) as api:
        last = await api.lasthash()
        assert last is not None and last.text == "late entry 3"
        export = [e async for e in api.export()]
        assert len(export) == 29 and export[-1].currhash == last.currhash
        by_summary = [e async for e in api.lookup("-4woANgRAo_8o3ORjqOb9i3cy0MD1r7CD4kLAWI4EAk=")]
        assert by_summary[0].currhash == "DlQwylakRBO1TpWCjEWvadbYZZik2ABCgrzpbgjNFdI="
        since = [e async for e in api.since("DlQwylakRBO1TpWCjEWvadbYZZik2ABCgrzpbgjNFdI=")]
        assert len(since) == 8
        assert since[0].prevhash == "DlQwylakRBO1TpWCjEWvadbYZZik2ABCgrzpbgjNFdI="


async def test_recorded_php_freshness_window(recorded: RecordedChronicle) -> None:
    recorded.add(134)
    stamp = json.loads(EXCHANGES[134]["response"]["body_text"])["datetime"]
    from chronicle.core.encoding import parse_timestamp

    then = parse_timestamp(stamp)
    async with ChronicleClient(recorded.url, KEY_A, clock=lambda: then + timedelta(seconds=30)
                               ) as api:
        assert await api.head() is not None
    async with ChronicleClient(recorded.url, KEY_A, clock=lambda: then + timedelta(hours=2)
                               ) as api:
        with pytest.raises(StaleResponseError):
            await api.head()


async def test_recorded_php_replica_pages(recorded: RecordedChronicle) -> None:
    """B's replica of A, paginated (page size 5): first prev is "" and pages chain up."""
    for exchange in range(123, 131):
        recorded.add(exchange)
    recorded.add(102)
    async with php_client(recorded, KEY_B, REPLICA) as api:
        head = await api.head()
        entries = [e async for e in api.export()]
    assert entries[0].prevhash is None
    assert [e.index for e in entries] == list(range(len(entries)))
    assert head is not None and head.summaryhash in {e.summaryhash for e in entries}
    assert f"{REPLICA}/export/2" in recorded.requests


async def test_answers_that_do_not_fit_the_request(recorded: RecordedChronicle) -> None:
    # A lookup answered with (validly signed) data for another hash.
    recorded.add(20, target="/chronicle/lookup/4J-bmw41UfuhQ6WiT4gL4nzTJ5asqTJQzDtcEsOqzfA=")
    # A since whose answer does not continue from the asked entry.
    recorded.add(21)
    recorded.add(25, target="/chronicle/since/-4woANgRAo_8o3ORjqOb9i3cy0MD1r7CD4kLAWI4EAk=")
    async with php_client(recorded) as api:
        with pytest.raises(UnexpectedResponseError):
            [e async for e in api.lookup("4J-bmw41UfuhQ6WiT4gL4nzTJ5asqTJQzDtcEsOqzfA=")]
        with pytest.raises(BrokenLinkError) as info:
            [e async for e in api.since("-4woANgRAo_8o3ORjqOb9i3cy0MD1r7CD4kLAWI4EAk=")]
        assert info.value.field == "prevhash"


async def test_tampered_recorded_answer_is_refused(recorded: RecordedChronicle) -> None:
    body = EXCHANGES[134]["response"]["body_text"].replace("late entry 3", "late entry 4")
    recorded.add(134, body=body.encode())
    async with php_client(recorded) as api:
        with pytest.raises(ResponseSignatureError):
            await api.lasthash()


async def test_unreachable_server_is_a_transport_error() -> None:
    from chronicle.core.errors import TransportError
    from tests.helpers import free_port

    async with ChronicleClient(f"http://127.0.0.1:{free_port()}", KEY_A, timeout=2) as api:
        with pytest.raises(TransportError):
            await api.head()
