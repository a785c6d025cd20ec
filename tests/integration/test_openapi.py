"""Real answers of a live loopback server, on both backends, checked against the
description it serves (``GET /openapi.json``): status described, signature header,
content type, and the JSON body against the operation's schema — success and errors."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from chronicle.core.encoding import atom, b64u_encode, utcnow
from chronicle.core.sapient import CLIENT_HEADER, SIGNATURE_HEADER, SigningKey
from chronicle.server import openapi
from chronicle.store import Mirror, schema
from chronicle.treelog import enable
from tests.helpers import Response, RunningServer, serving, signed_headers, start_server
from tests.integration.test_replication import QUIET, add_source, database_for, ledger, sync
from tests.openapi_support import check_response, validate_schema

ERROR = "/components/schemas/Error"


async def call(srv: RunningServer, method: str, path: str, body: bytes | str | None = None,
               *, headers: Any = None, status: int) -> Response:
    """``method path`` (signature verified by ``srv.request``), then checked against the
    description; the status must be ``status``."""
    res = await srv.request(method, path, body, headers=headers)
    assert res.status == status, (method, path, res.status, res.body[:300])
    check_response(method, urlsplit(path).path, res.status, res.headers, res.body)
    return res


async def post(srv: RunningServer, path: str, fields: dict[str, Any], who: str,
               *, status: int) -> Response:
    body = json.dumps(fields).encode()
    return await call(srv, "POST", path, body, status=status,
                      headers=signed_headers(srv.identities[who], body))


def undescribed_error(res: Response, status: int, message: str) -> None:
    """An answer to a request no operation describes (unknown path, wrong method): the
    signed error envelope all the same."""
    assert res.status == status
    validate_schema(ERROR, res.json)
    assert res.json["message"] == message


async def test_chronicle_routes_answer_as_described(tmp_path: Path) -> None:
    async with serving(tmp_path / "l", "alice", admins=("admin",)) as srv:
        served = await call(srv, "GET", "/openapi.json", status=200)
        assert served.json == openapi.load()
        assert served.body == openapi.document()
        await call(srv, "GET", "/", status=200)
        await call(srv, "GET", "/", headers={CLIENT_HEADER: "x"}, status=302)
        for path in ("/chronicle", "/chronicle/"):
            await call(srv, "GET", path, status=200)
        await call(srv, "GET", "/chronicle", status=200,
                   headers={CLIENT_HEADER: srv.identities["alice"].client_id})
        await call(srv, "GET", "/chronicle/lasthash", status=200)  # empty: []

        alice = srv.identities["alice"]
        body = b'{"now": "%s", "msg": "hello"}' % atom(utcnow()).encode()
        receipt = await call(srv, "POST", "/chronicle/publish", body, status=200,
                             headers=signed_headers(alice, body))
        await call(srv, "POST", "/chronicle/publish", body, status=200,
                   headers=signed_headers(alice, body))  # an idempotent retry
        currhash = receipt.json["results"]["currhash"]
        await call(srv, "POST", "/chronicle/publish", "x", status=403)
        await call(srv, "POST", "/chronicle/publish", "x", status=403,
                   headers={CLIENT_HEADER: alice.client_id, SIGNATURE_HEADER: "nope"})
        await call(srv, "POST", "/chronicle/publish", b"\xff", status=400,
                   headers=signed_headers(alice, b"\xff"))
        stale = b'{"now": "2000-01-01T00:00:00+00:00"}'
        await call(srv, "POST", "/chronicle/publish", stale, status=408,
                   headers=signed_headers(alice, stale))
        await call(srv, "POST", "/chronicle/publish?instance=nope", "x", status=404,
                   headers=signed_headers(alice, b"x"))
        zipped = signed_headers(alice, b"x") | {"Content-Encoding": "gzip"}
        await call(srv, "POST", "/chronicle/publish", "x", status=415, headers=zipped)

        await call(srv, "GET", "/chronicle/lasthash", status=200)
        await call(srv, "GET", f"/chronicle/lookup/{currhash}", status=200)
        await call(srv, "GET", "/chronicle/lookup/unknown-hash-value", status=400)
        await call(srv, "GET", f"/chronicle/since/{currhash}", status=200)
        await call(srv, "GET", f"/chronicle/since/{currhash}/2", status=200)
        await call(srv, "GET", "/chronicle/since/unknown-hash-value", status=400)
        await call(srv, "GET", "/chronicle/export", status=200)
        await call(srv, "GET", "/chronicle/export/1", status=200)
        await call(srv, "GET", "/chronicle/export?instance=nope", status=404)
        await call(srv, "GET", "/chronicle/export?instance=&instance=", status=400)

        now = atom(utcnow())
        newcomer = SigningKey.generate().public_b64
        added = await post(srv, "/chronicle/register",
                           {"publickey": newcomer, "request-time": now, "comment": "c"},
                           "admin", status=200)
        await post(srv, "/chronicle/register", {"publickey": "short", "request-time": now},
                   "admin", status=400)
        await post(srv, "/chronicle/register", {"publickey": newcomer}, "admin", status=401)
        await post(srv, "/chronicle/register", {"publickey": newcomer, "request-time": now},
                   "alice", status=403)
        not_json = signed_headers(srv.identities["admin"], b"[")
        await call(srv, "POST", "/chronicle/register", "[", headers=not_json, status=406)
        await post(srv, "/chronicle/revoke", {"clientid": "nobody", "publickey": newcomer,
                                              "request-time": now}, "admin", status=404)
        await post(srv, "/chronicle/revoke",
                   {"clientid": added.json["results"]["client-id"], "publickey": newcomer,
                    "request-time": now}, "admin", status=200)

        await call(srv, "GET", "/chronicle/mirrors", status=200)
        await srv.ctx.store.mirrors.add(
            "", Mirror("https://m.example/chronicle", newcomer, None, 1), now)
        await call(srv, "GET", "/chronicle/mirrors", status=200)
        await call(srv, "GET", "/chronicle/replica", status=200)
        await call(srv, "GET", "/chronicle/replica/nope", status=404)
        await call(srv, "GET", "/chronicle/tlog/checkpoint", status=404)  # no tree yet

        await call(srv, "GET", "/healthz", status=200)
        await call(srv, "GET", "/readyz", status=200)
        metrics = await call(srv, "GET", "/metrics", status=200)
        assert b"chronicle_request_seconds" in metrics.body
        async with srv.ctx.store.db.transaction() as s:
            await s.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'",
                            str(schema.SCHEMA_VERSION + 1))
        await call(srv, "GET", "/readyz", status=503)

        undescribed_error(await srv.request("GET", "/nowhere"), 404, "Not found")
        undescribed_error(await srv.request("POST", "/chronicle/lasthash", b""), 405,
                          "Method not allowed. Must be one of: GET, HEAD")


async def test_paginated_documents_answer_as_described(tmp_path: Path) -> None:
    async with serving(tmp_path / "l", "alice", paginate_export=2) as srv:
        receipts = [(await srv.publish("alice", f"entry {i}")).json["results"]
                    for i in range(5)]
        first = receipts[0]["summaryhash"]
        for page in ("", "/1", "/2", "/3", "/99"):
            await call(srv, "GET", f"/chronicle/export{page}", status=200)
            await call(srv, "GET", f"/chronicle/since/{first}{page}", status=200)


async def test_refusals_to_retry_later_answer_as_described(tmp_path: Path) -> None:
    """413 (body over the limit), 429 (rate limited) and 503 (read-only), each signed and
    as described (429 and 503 with Retry-After)."""
    # One publish per 1000 s: the second one is refused whatever the machine's speed.
    async with serving(tmp_path / "l", "alice", max_body_size=1048576,
                       rate_limit=0.001) as srv:
        await call(srv, "POST", "/chronicle/publish", b"first", status=200,
                   headers=signed_headers(srv.identities["alice"], b"first"))
        limited = await call(srv, "POST", "/chronicle/publish", b"second", status=429,
                             headers=signed_headers(srv.identities["alice"], b"second"))
        assert int(limited.headers["Retry-After"]) > 1
        big = b"x" * 1048577
        async with srv.session.post(srv.url + "/chronicle/publish", data=io.BytesIO(big),
                                    headers=signed_headers(srv.identities["alice"], big)
                                    ) as answer:
            assert answer.status == 413
            check_response("POST", "/chronicle/publish", 413, answer.headers,
                           await answer.read())
    async with serving(tmp_path / "frozen", "alice", admins=("admin",), read_only=True,
                       database=database_for("frozen")) as srv:
        await call(srv, "POST", "/chronicle/publish", b"x", status=503,
                   headers=signed_headers(srv.identities["alice"], b"x"))
        await post(srv, "/chronicle/register", {"publickey": srv.key.public_b64,
                                                "request-time": atom(utcnow())},
                   "admin", status=503)
        await call(srv, "GET", "/chronicle/export", status=200)


async def test_page_numbers_are_ascii_digits_only(tmp_path: Path) -> None:
    """A page in another script's digits is no page (aiohttp's \\d took "٣" as 3)."""
    async with serving(tmp_path / "l", "alice", paginate_export=2) as srv:
        first = (await srv.publish("alice", "entry")).json["results"]["currhash"]
        for path in ("/chronicle/export/\u0663", f"/chronicle/since/{first}/\u0663",
                     "/chronicle/export/\uff11"):
            undescribed_error(await srv.request("GET", path), 404, "Not found")
        await call(srv, "GET", "/chronicle/export/1", status=200)


async def test_tlog_routes_answer_as_described(tmp_path: Path) -> None:
    async with serving(tmp_path / "l", "alice") as srv:
        for i in range(3):
            assert (await srv.publish("alice", f"entry {i}")).status == 200
        await enable(srv.ctx.store, srv.ctx.ledger(""), srv.key,
                     srv.ctx.data_dir.tlog_key_path(srv.ctx.settings), "example.org/t",
                     clock=utcnow)
        note = await call(srv, "GET", "/chronicle/tlog/checkpoint", status=200)
        assert note.body.startswith(b"example.org/t\n4\n")
        await call(srv, "GET", "/chronicle/tlog/tile/0/000.p/4", status=200)
        await call(srv, "GET", "/chronicle/tlog/tile/entries/000.p/4", status=200)
        await call(srv, "GET", "/chronicle/tlog/tile/0/000", status=404)  # not full yet
        await call(srv, "GET", "/chronicle/tlog/tile/nonsense", status=404)
        await call(srv, "GET", "/chronicle/tlog/proof/inclusion/1", status=200)
        await call(srv, "GET", "/chronicle/tlog/proof/inclusion/1?size=3", status=200)
        await call(srv, "GET", "/chronicle/tlog/proof/inclusion/9", status=404)
        await call(srv, "GET", "/chronicle/tlog/proof/inclusion/1?size=01", status=400)
        await call(srv, "GET", "/chronicle/tlog/proof/consistency/2/4", status=200)
        await call(srv, "GET", "/chronicle/tlog/proof/consistency/4/2", status=400)
        await call(srv, "GET", "/chronicle/tlog/proof/consistency/2/9", status=404)


async def test_replica_routes_answer_as_described(tmp_path: Path) -> None:
    upstream = await start_server(await ledger(tmp_path, "A", publish_new_clients=False,
                                               **QUIET))
    replica = await ledger(tmp_path, "B", paginate_export=2, **QUIET)
    served = await start_server(replica)
    try:
        await upstream.add_client("alice")
        uniqueid = await add_source(replica, upstream.url, upstream.key.public)
        base = f"/chronicle/replica/{uniqueid}"
        await call(served, "GET", base + "/lasthash", status=200)  # empty copy: []
        first = None
        for i in range(5):
            res = await upstream.publish("alice", f"entry {i}")
            first = first or res.json["results"]["currhash"]
        assert (await sync(replica)).code == 0
        await call(served, "GET", "/chronicle/replica", status=200)
        await call(served, "GET", base, status=200)
        await call(served, "GET", base + "/lasthash", status=200)
        await call(served, "GET", f"{base}/lookup/{first}", status=200)
        await call(served, "GET", f"{base}/lookup/{b64u_encode(bytes(32))}", status=404)
        for page in ("", "/1", "/3"):
            await call(served, "GET", f"{base}/export{page}", status=200)
            await call(served, "GET", f"{base}/since/{first}{page}", status=200)
        await call(served, "GET", f"{base}/since/nope", status=404)
        await call(served, "GET", "/chronicle/replica/nope/export", status=404)
        undescribed_error(await served.request("GET", base + "/nothing/here"), 404,
                          "Unknown URI")
    finally:
        await served.close()
        await upstream.close()
