"""Issue 10, findings 4, 5 and 7: replayed admin requests, mixed-up admin bodies, a rate
limit spent by strangers, far-future timestamps, weak keys, redirects, file modes,
credentials in replica URLs, who is an admin, and terminal-safe evidence."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from multidict import CIMultiDict

from chronicle.cli.replica import printable
from chronicle.client import ChronicleClient
from chronicle.core.encoding import atom, b64u_encode, utcnow
from chronicle.core.errors import TransportError
from chronicle.core.sapient import CLIENT_HEADER, SIGNATURE_HEADER, SigningKey
from chronicle.core.verify import P
from chronicle.store import ReplicaSource
from chronicle.store.replays import MSG_REPLAYED
from tests.helpers import (
    RunningServer,
    ServerProcess,
    admin_request_body,
    http_request,
    init_data_dir,
    start_server,
    stop_process,
)

ADMIN_FIELDS_400 = "Unexpected field(s) for register: clientid"


async def admin_post(server: RunningServer, path: str, body: bytes) -> Any:
    admin = server.identities["admin"]
    return await server.request("POST", path, body, headers={
        CLIENT_HEADER: admin.client_id, SIGNATURE_HEADER: admin.key.sign_b64(body)})


async def test_a_signed_admin_request_acts_once(server: RunningServer) -> None:
    """One signed register created three clients within the request window before."""
    body = admin_request_body(publickey=SigningKey.generate().public_b64, comment="once")
    first = await admin_post(server, "/chronicle/register", body)
    assert first.status == 200
    for _ in range(2):
        again = await admin_post(server, "/chronicle/register", body)
        assert (again.status, again.json["status"], again.json["message"]) == \
            (409, "ERROR", MSG_REPLAYED)
    assert sum(c.comment == "once" for c in await server.ctx.store.clients.all("")) == 1
    revoke = admin_request_body(clientid=first.json["results"]["client-id"],
                                publickey=json.loads(body)["publickey"])
    assert (await admin_post(server, "/chronicle/revoke", revoke)).status == 200
    # Replayed, it finds nothing left to revoke (a revoked id is never handed out again).
    assert (await admin_post(server, "/chronicle/revoke", revoke)).status == 404


async def test_a_revoke_body_is_not_a_register(server: RunningServer) -> None:
    """A captured revoke body sent to /register gave a revoked key a new id before."""
    victim = SigningKey.generate()
    body = admin_request_body(clientid="someone", publickey=victim.public_b64)
    res = await admin_post(server, "/chronicle/register", body)
    assert (res.status, res.json["message"]) == (400, ADMIN_FIELDS_400)
    extra = admin_request_body(publickey=victim.public_b64, admin="yes")
    res = await admin_post(server, "/chronicle/register", extra)
    assert (res.status, res.json["message"]) == (400, "Unexpected field(s) for register: admin")
    res = await admin_post(server, "/chronicle/revoke", admin_request_body(
        clientid="x", publickey=victim.public_b64, comment="no"))
    assert (res.status, res.json["message"]) == (400, "Unexpected field(s) for revoke: comment")
    assert [c.publickey for c in await server.ctx.store.clients.all("")
            if c.publickey == victim.public] == []


async def test_strangers_cannot_spend_a_clients_rate_limit(tmp_path: Path) -> None:
    """Resending a client's public entries took 7 of its 8 publishes before."""
    srv = await start_server(await init_data_dir(tmp_path / "l", rate_limit=2,
                                                 publish_new_clients=False))
    try:
        await srv.add_client("alice")
        first = await srv.publish("alice", "entry 0")
        assert first.status == 200
        for _ in range(10):  # anyone can resend it: it is on the public chain
            again = await srv.publish("alice", "entry 0")
            assert (again.status, again.json["results"]) == (200, first.json["results"])
        # The retries took no token: alice's own next publish still finds one (before, the
        # strangers' resends had spent them all and she got 429s).
        assert (await srv.publish("alice", "entry 1")).status == 200
    finally:
        await srv.close()


@pytest.mark.parametrize("stamp", ["9999-12-31T23:59:59+00:00", "9999-12-31T23:59:59-14:00",
                                   "0001-01-01T00:00:00+14:00"])
async def test_far_timestamps_are_a_408_not_a_500(server: RunningServer, stamp: str) -> None:
    res = await server.publish("alice", json.dumps({"now": stamp}))
    assert (res.status, res.json["status"]) == (408, "ERROR")
    res = await admin_post(server, "/chronicle/register", admin_request_body(
        publickey=SigningKey.generate().public_b64, request_time=stamp))
    assert (res.status, res.json["status"]) == (408, "ERROR")


@pytest.mark.parametrize("key", [bytes(32), (1).to_bytes(32, "little"),
                                 (P - 1).to_bytes(32, "little"),
                                 (P + 1).to_bytes(32, "little")])
async def test_weak_public_keys_are_refused_at_register(server: RunningServer,
                                                        key: bytes) -> None:
    res = await admin_post(server, "/chronicle/register",
                           admin_request_body(publickey=b64u_encode(key)))
    assert res.status == 400
    assert "not a usable Ed25519 point" in res.json["message"]


async def test_the_index_does_not_tell_who_is_an_admin(server: RunningServer) -> None:
    as_admin = await server.request("GET", "/chronicle", headers={
        CLIENT_HEADER: server.identities["admin"].client_id})
    as_client = await server.request("GET", "/chronicle", headers={
        CLIENT_HEADER: server.identities["alice"].client_id})
    assert as_admin.json["results"] == as_client.json["results"]
    assert "/chronicle/register" not in as_admin.body.decode().replace("\\/", "/")


async def test_replica_urls_lose_their_credentials_when_shown(server: RunningServer) -> None:
    await server.ctx.store.replication.add_source(ReplicaSource(
        uniqueid="src-1", name="up", url="https://mirror:s3cret@up.example/chronicle",
        publickey=SigningKey.generate().public, created=atom(utcnow())))
    for path in ("/chronicle/replica", "/chronicle/replica/src-1"):
        res = await server.request("GET", path)
        assert res.status == 200
        assert b"s3cret" not in res.body and b"mirror:" not in res.body
        assert b"up.example" in res.body


def test_evidence_is_printed_without_control_sequences() -> None:
    assert printable("ok\x1b[2J\x07 \u202e") == "ok\\x1b[2J\\x07 \\u202e"
    assert printable("tab\tand é") == "tab\tand é"


async def _redirecting_site(target: str, status: int) -> tuple[web.AppRunner, str]:
    async def handler(request: web.Request) -> web.Response:
        raise web.HTTPFound(target) if status == 302 else \
            web.HTTPTemporaryRedirect(target)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, f"http://127.0.0.1:{runner.addresses[0][1]}"


async def test_redirects_never_leave_the_origin_nor_resend_a_signed_request(
        server: RunningServer) -> None:
    elsewhere, base = await _redirecting_site(f"{server.url}/chronicle/lasthash", 302)
    to_self, self_base = await _redirecting_site("/chronicle/elsewhere", 302)
    post, post_base = await _redirecting_site(f"{server.url}/chronicle/publish", 307)
    alice = server.identities["alice"]
    try:
        async with ChronicleClient(base, server.key.public) as client:
            with pytest.raises(TransportError, match="another origin"):
                await client.head()
        async with ChronicleClient(self_base, server.key.public) as client:
            with pytest.raises(TransportError, match="more than 3 redirects"):
                await client.head()
        async with ChronicleClient(post_base, server.key.public, client_id=alice.client_id,
                                   key=alice.key) as client:
            with pytest.raises(TransportError, match="not re-sent"):
                await client.publish(b"never twice")
        assert (await server.request("GET", "/chronicle/lasthash")).json["results"] == []
    finally:
        for runner in (elsewhere, to_self, post):
            await runner.cleanup()


async def test_a_flood_of_forged_publishes_is_cut_off_per_address(tmp_path: Path) -> None:
    """Requests with bad signatures were never rate-limited: each cost a verification.
    After auth-failures-per-ip failures (a burst of one second's worth) an address gets a
    signed 429 before anything is checked, held for a second (a flood waiting for its
    answers gets about one a second per connection); another address publishes on."""
    srv = await start_server(await init_data_dir(tmp_path / "l", auth_failures_per_ip=5,
                                                 publish_new_clients=False))
    try:
        alice = await srv.add_client("alice")
        forged = {CLIENT_HEADER: alice.client_id,
                  SIGNATURE_HEADER: SigningKey.generate().sign_b64(b"x")}
        statuses = []
        connector = aiohttp.TCPConnector(local_addr=("127.0.0.2", 0))
        async with aiohttp.ClientSession(connector=connector) as attacker:
            for _ in range(6):
                async with attacker.post(f"{srv.url}/chronicle/publish", data=b"x",
                                         headers=forged) as res:
                    body = json.loads(await res.read())
                    statuses.append((res.status, body["message"]))
        assert statuses[:5] == [(403, "No valid signature given for this HTTP request")] * 5
        assert statuses[5:] == [(429, "Too many requests from this address, retry later")]
        assert (await srv.publish("alice", "still served")).status == 200  # from 127.0.0.1
    finally:
        await srv.close()


async def test_browsers_may_read_every_answer_and_its_signature(server: RunningServer) -> None:
    for method, path in (("GET", "/chronicle/lasthash"), ("GET", "/chronicle/nope"),
                         ("POST", "/chronicle/publish")):
        res = await server.request(method, path, headers={"Origin": "https://example.org"})
        assert res.headers["Access-Control-Allow-Origin"] == "*"
        assert "Body-Signature-Ed25519" in res.headers["Access-Control-Expose-Headers"]
    res = await server.request("OPTIONS", "/chronicle/publish", headers={
        "Origin": "https://example.org", "Access-Control-Request-Method": "POST"})
    assert res.status == 204 and res.body == b""
    assert "POST" in res.headers["Access-Control-Allow-Methods"]
    assert CLIENT_HEADER in res.headers["Access-Control-Allow-Headers"]


async def test_behind_a_trusted_proxy_limits_apply_to_the_client_not_the_proxy(
        tmp_path: Path) -> None:
    """Behind a reverse proxy every request comes from the proxy's address: one forger
    would get everyone's writes refused. With trusted-proxies the client named in
    X-Forwarded-For is limited; the same header from anyone else is ignored."""
    srv = await start_server(await init_data_dir(
        tmp_path / "l", auth_failures_per_ip=3, publish_new_clients=False,
        trusted_proxies=["127.0.0.1/32"]))
    try:
        alice = await srv.add_client("alice")
        forged = {CLIENT_HEADER: alice.client_id,
                  SIGNATURE_HEADER: SigningKey.generate().sign_b64(b"x")}

        async def post(session: aiohttp.ClientSession,
                       headers: dict[str, str] | CIMultiDict[str]) -> int:
            async with session.post(f"{srv.url}/chronicle/publish", data=b"x",
                                    headers=headers) as res:
                await res.read()
                return res.status

        # Through the proxy (127.0.0.1): the forger is 203.0.113.9, whatever it claims
        # further left.
        via_proxy = {**forged, "X-Forwarded-For": "10.9.9.9, 203.0.113.9"}
        assert [await post(srv.session, via_proxy) for _ in range(4)] == [403] * 3 + [429]
        body = b"an honest client behind the same proxy"
        honest = {CLIENT_HEADER: alice.client_id, SIGNATURE_HEADER: alice.key.sign_b64(body),
                  "X-Forwarded-For": "203.0.113.10"}
        async with srv.session.post(f"{srv.url}/chronicle/publish", data=body,
                                    headers=honest) as res:
            assert res.status == 200
        # A proxy that adds a line of its own after the one the client sent: the client's
        # line, first, changes nothing either.
        two_lines = [[*forged.items(), ("X-Forwarded-For", f"10.0.0.{n}"),
                      ("X-Forwarded-For", "203.0.113.20")] for n in range(4)]
        assert [await post(srv.session, CIMultiDict(h)) for h in two_lines] == \
            [403] * 3 + [429]
        # Not through a trusted proxy: the header is the caller's own claim, ignored.
        connector = aiohttp.TCPConnector(local_addr=("127.0.0.2", 0))
        async with aiohttp.ClientSession(connector=connector) as direct:
            rotating = [await post(direct, {**forged, "X-Forwarded-For": f"198.51.100.{n}"})
                        for n in range(4)]
        assert rotating == [403] * 3 + [429]
    finally:
        await srv.close()


@pytest.mark.parametrize(("proxies", "expected"), [([], [200, 200, 503, 503]),
                                                    (["127.0.0.1"], [200] * 4)])
async def test_a_trusted_proxy_is_not_held_to_the_per_address_connection_cap(
        tmp_path: Path, proxies: list[str], expected: list[int]) -> None:
    data_dir = await init_data_dir(tmp_path / "l", max_connections_per_ip=2,
                                   trusted_proxies=proxies)
    sp = ServerProcess(data_dir.path)
    url = await sp.start()
    public = data_dir.signing_key(data_dir.settings()).public
    sessions = [aiohttp.ClientSession() for _ in range(4)]
    try:
        statuses = []
        for session in sessions:  # each keeps its connection open
            answer = await http_request(session, url, public, "GET", "/chronicle/lasthash")
            statuses.append(answer.status)
        assert statuses == expected
    finally:
        for session in sessions:
            await session.close()
        await stop_process(sp, graceful=True)
