"""The Chronicle 1.3 HTTP API over real HTTP on loopback, against a real SQLite store.

Every response is checked to be signed by the server key (RunningServer.request does it),
and every JSON answer to be PHP-pretty JSON with a single ``application/json`` type.
Expected statuses and messages come from protocol.md and the PHP vectors.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import re
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import yarl
from multidict import CIMultiDict

from chronicle.core.encoding import atom, b64u_decode, b64u_encode, php_json, utcnow
from chronicle.core.sapient import CLIENT_HEADER, SIGNATURE_HEADER, SigningKey, verify
from chronicle.server.export import SMALL_DOCUMENT_ROWS
from chronicle.server.keys import DOCS
from chronicle.store import Mirror
from tests.helpers import (
    Identity,
    Response,
    RunningServer,
    admin_request_body,
    check_signed,
    init_data_dir,
    load_vector,
    serving,
    signed_headers,
    start_server,
    verify_chain,
)

ROW_KEYS = ["contents", "prevhash", "currhash", "summaryhash", "created", "publickey",
            "signature"]
EXPORT_KEYS = ["contents", "prev", "hash", "summary", "created", "publickey", "signature"]
ERROR_KEYS = ["version", "datetime", "status", "message"]
ATOM_RE = re.compile(r"\A\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00\Z")

MSG_NO_HASH = "No record found matching this hash."
MSG_CLIENT_NOT_FOUND = "Client not found"
MSG_BAD_SIGNATURE = "No valid signature given for this HTTP request"
MSG_TOO_OLD = "Request timestamp is too old. Please resend."
MSG_INVALID_TS = "Request timestamp is invalid. Please resend."


# --- helpers ------------------------------------------------------------------------------

def _php_pretty(res: Response) -> Any:
    doc = res.json
    assert res.body == php_json(doc).encode("ascii"), "body is not PHP pretty JSON"
    assert res.headers.getall("Content-Type") == ["application/json"]
    assert doc["version"] == "1.3.x"
    assert ATOM_RE.match(doc["datetime"]), doc["datetime"]
    return doc


def ok(res: Response, keys: list[str] | None = None) -> Any:
    assert res.status == 200, (res.status, res.body)
    doc = _php_pretty(res)
    assert doc["status"] == "OK", doc
    if keys is not None:
        assert list(doc) == keys
    return doc


def error(res: Response, status: int, message: str | None = None) -> Any:
    assert res.status == status, (res.status, res.body)
    doc = _php_pretty(res)
    assert list(doc) == ERROR_KEYS
    assert doc["status"] == "ERROR"
    if message is not None:
        assert doc["message"] == message
    return doc


async def chain_length(server: RunningServer, instance: str = "") -> int:
    head = await server.ctx.store.chain(instance).head()
    return 0 if head is None else head.index + 1


async def export_rows(server: RunningServer) -> list[dict[str, Any]]:
    doc = ok(await server.request("GET", "/chronicle/export"))
    return doc["results"]  # type: ignore[no-any-return]


async def publish_ok(server: RunningServer, who: str | Identity, body: bytes | str
                     ) -> dict[str, str]:
    doc = ok(await server.publish(who, body), ["version", "datetime", "status", "results"])
    receipt = doc["results"]
    assert list(receipt) == ["currhash", "summaryhash", "created"]
    return receipt  # type: ignore[no-any-return]


def vector_results(exchange_id: int) -> Any:
    for ex in load_vector("exchanges.json")["exchanges"]:
        if ex["id"] == exchange_id:
            return json.loads(ex["response"]["body_text"])["results"]
    raise KeyError(exchange_id)


async def admin_post(server: RunningServer, path: str, body: bytes,
                     who: str = "admin") -> Response:
    return await server.request("POST", path, body,
                                headers=signed_headers(server.identities[who], body))


@pytest.fixture
async def paged(tmp_path: Path) -> AsyncIterator[RunningServer]:
    async with serving(tmp_path / "paged", "alice", paginate_export=4) as srv:
        yield srv


@pytest.fixture
async def small_limit(tmp_path: Path) -> AsyncIterator[RunningServer]:
    async with serving(tmp_path / "small", "alice", max_body_size=1048576) as srv:
        yield srv


@pytest.fixture
async def quiet(tmp_path: Path) -> AsyncIterator[RunningServer]:
    """publish-new-clients / publish-revoked-clients off."""
    data_dir = await init_data_dir(tmp_path / "quiet", publish_new_clients=False,
                                   publish_revoked_clients=False)
    srv = await start_server(data_dir)
    await srv.add_client("alice")
    await srv.add_client("admin", is_admin=True)
    try:
        yield srv
    finally:
        await srv.close()


# --- index, root --------------------------------------------------------------------------

@pytest.mark.parametrize("path", ["/chronicle", "/chronicle/"])
async def test_index_by_client_kind(server: RunningServer, path: str) -> None:
    keys = ["version", "datetime", "status", "public-key", "results"]
    cases = [
        ({}, 1),
        ({CLIENT_HEADER: server.identities["alice"].client_id}, 3),
        # PHP lists the admin endpoints (vector 2) to anyone who sends an admin's public
        # id, telling strangers who the administrators are: an admin id gets a client's.
        ({CLIENT_HEADER: server.identities["admin"].client_id}, 3),
        ({CLIENT_HEADER: b64u_encode(os.urandom(24))}, 1),  # unknown id: anonymous
    ]
    for headers, vector_id in cases:
        doc = ok(await server.request("GET", path, headers=headers), keys)
        assert doc["public-key"] == server.key.public_b64
        assert doc["results"] == vector_results(vector_id), headers
    uris = {vid: [r["uri"] for r in vector_results(vid)] for vid in (1, 2, 3)}
    assert "/chronicle/publish" not in uris[1]
    assert "/chronicle/publish" in uris[3] and "/chronicle/register" not in uris[3]
    assert {"/chronicle/publish", "/chronicle/register", "/chronicle/revoke"} <= set(uris[2])


async def test_root_html_and_redirect(server: RunningServer) -> None:
    res = await server.request("GET", "/")
    assert res.status == 200
    assert res.headers["Content-Type"].startswith("text/html")
    assert b"<html" in res.body and b"chronicle" in res.body
    res = await server.request("GET", "/", headers={CLIENT_HEADER: "anything"})
    assert res.status == 302
    assert res.headers["Location"] == "/chronicle"


# --- reads --------------------------------------------------------------------------------

async def test_lasthash_empty_and_nonempty(server: RunningServer) -> None:
    doc = ok(await server.request("GET", "/chronicle/lasthash"),
             ["version", "datetime", "status", "results"])
    assert doc["results"] == []

    first = await publish_ok(server, "alice", "first")
    second = await publish_ok(server, "alice", "second / ü")
    doc = ok(await server.request("GET", "/chronicle/lasthash"))
    assert len(doc["results"]) == 1
    row = doc["results"][0]
    assert list(row) == ROW_KEYS
    alice = server.identities["alice"]
    assert row == {
        "contents": "second / ü",
        "prevhash": first["currhash"],
        "currhash": second["currhash"],
        "summaryhash": second["summaryhash"],
        "created": second["created"],
        "publickey": alice.key.public_b64,
        "signature": alice.key.sign_b64("second / ü".encode()),
    }


async def test_lookup_by_currhash_and_summaryhash(server: RunningServer) -> None:
    receipt = await publish_ok(server, "alice", "look me up")
    await publish_ok(server, "alice", "another")
    by_curr = ok(await server.request("GET", f"/chronicle/lookup/{receipt['currhash']}"),
                 ["version", "datetime", "status", "results"])
    by_sum = ok(await server.request("GET", f"/chronicle/lookup/{receipt['summaryhash']}"))
    assert by_curr["results"] == by_sum["results"]
    assert len(by_curr["results"]) == 1
    row = by_curr["results"][0]
    assert list(row) == ROW_KEYS
    assert row["prevhash"] is None
    assert (row["currhash"], row["summaryhash"], row["created"]) == \
        (receipt["currhash"], receipt["summaryhash"], receipt["created"])
    verify_chain([row], export=False)


async def test_lookup_path_is_url_decoded(server: RunningServer) -> None:
    receipt = await publish_ok(server, "alice", "percent")
    encoded = receipt["currhash"].replace("=", "%3D")
    url = yarl.URL(f"{server.url}/chronicle/lookup/{encoded}", encoded=True)
    async with server.session.get(url) as resp:
        res = Response(resp.status, resp.headers, await resp.read())
    check_signed(res, server.key.public)
    assert ok(res)["results"][0]["currhash"] == receipt["currhash"]


@pytest.mark.parametrize("value", [
    b64u_encode(b"\x00" * 32),          # well-formed, unknown
    "unknown-hash-value",               # PHP vector
    "AAAA",                             # base64url, wrong length
    "not%20a%20hash",
])
async def test_lookup_unknown_or_malformed(server: RunningServer, value: str) -> None:
    await publish_ok(server, "alice", "something")
    error(await server.request("GET", f"/chronicle/lookup/{value}"), 400, MSG_NO_HASH)


async def test_since(server: RunningServer) -> None:
    receipts = [await publish_ok(server, "alice", f"entry {i}") for i in range(5)]
    keys = ["version", "datetime", "status", "total", "results"]
    for ref in (receipts[1]["currhash"], receipts[1]["summaryhash"]):
        doc = ok(await server.request("GET", f"/chronicle/since/{ref}"), keys)
        assert doc["total"] == 3
        assert [r["contents"] for r in doc["results"]] == ["entry 2", "entry 3", "entry 4"]
        assert [r["currhash"] for r in doc["results"]] == [r["currhash"] for r in receipts[2:]]
        assert all(list(r) == ROW_KEYS for r in doc["results"])
        assert doc["results"][0]["prevhash"] == receipts[1]["currhash"]

    last = ok(await server.request("GET", f"/chronicle/since/{receipts[-1]['currhash']}"), keys)
    assert last["results"] == [] and last["total"] == 0
    assert b'"results": []' in php_json(last).encode()

    error(await server.request("GET", "/chronicle/since/unknown-hash-value"), 400, MSG_NO_HASH)
    error(await server.request("GET", f"/chronicle/since/{b64u_encode(os.urandom(32))}"),
          400, MSG_NO_HASH)


async def test_del_byte_is_served_raw_as_php_does(server: RunningServer) -> None:
    """PHP's json_encode leaves DEL (0x7f) raw: every read answer carries the byte itself."""
    body = "del:\x7f, escaped backslash then text: \\u007f, control: \x01"
    first = await publish_ok(server, "alice", "first")
    receipt = await publish_ok(server, "alice", body)
    answers = [await server.request("GET", path) for path in (
        "/chronicle/lasthash", f"/chronicle/lookup/{receipt['currhash']}",
        f"/chronicle/since/{first['currhash']}", "/chronicle/export")]
    for res in answers:
        doc = ok(res)
        assert b"del:\x7f, escaped backslash then text: \\\\u007f, control: \\u0001" in res.body
        assert b"\\u007f" not in res.body.replace(b"\\\\u007f", b"")
        rows = doc["results"]
        assert rows[-1]["contents"] == body


async def test_export_unpaginated(server: RunningServer) -> None:
    keys = ["version", "datetime", "status", "total", "results"]
    empty = ok(await server.request("GET", "/chronicle/export"), keys)
    assert empty["total"] == 0 and empty["results"] == []

    bodies = ["one", "two / \u00e9", '{"a": 1}', "", "\U0001f680 rocket"]
    receipts = [await publish_ok(server, "alice", b) for b in bodies]
    doc = ok(await server.request("GET", "/chronicle/export"), keys)
    assert doc["total"] == len(bodies)
    rows = doc["results"]
    assert all(list(r) == EXPORT_KEYS for r in rows)
    assert rows[0]["prev"] is None
    assert [r["contents"] for r in rows] == bodies
    assert [(r["hash"], r["summary"], r["created"]) for r in rows] == \
        [(r["currhash"], r["summaryhash"], r["created"]) for r in receipts]
    verify_chain(rows)


# --- pagination ---------------------------------------------------------------------------

def _paged_keys(doc: dict[str, Any], *, since: bool) -> list[str]:
    keys = ["version", "datetime", "status", "paginated"]
    keys += [k for k in ("prev", "next") if k in doc]
    if since:
        keys.append("total")
    return [*keys, "results"]


def _without_datetime(doc: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in doc.items() if k != "datetime"}


async def test_paginated_export(paged: RunningServer) -> None:
    async def page(path: str) -> dict[str, Any]:
        doc = ok(await paged.request("GET", path))
        assert doc["paginated"] is True
        assert list(doc) == _paged_keys(doc, since=False)  # paginated export has no total
        return doc

    empty = await page("/chronicle/export")  # nothing yet: no links at all
    assert empty["results"] == [] and "prev" not in empty and "next" not in empty
    receipts = [await publish_ok(paged, "alice", f"p{i}") for i in range(8)]
    hashes = [r["currhash"] for r in receipts]

    first = await page("/chronicle/export")
    assert _without_datetime(await page("/chronicle/export/0")) == _without_datetime(first)
    p1 = await page("/chronicle/export/1")
    assert p1["results"] == first["results"]
    assert "prev" not in p1 and p1["next"] == "/export/2"
    assert [r["hash"] for r in p1["results"]] == hashes[0:4]
    assert p1["results"][0]["prev"] is None

    p2 = await page("/chronicle/export/2")
    assert p2["prev"] == "/export/1"
    assert p2["next"] == "/export/3"  # 4 + 4 <= 8: a full last page still links on (PHP)
    assert [r["hash"] for r in p2["results"]] == hashes[4:8]

    p3 = await page("/chronicle/export/3")
    assert p3["results"] == [] and p3["prev"] == "/export/2" and "next" not in p3
    far = await page("/chronicle/export/9")
    assert far["results"] == [] and far["prev"] == "/export/8" and "next" not in far
    verify_chain(p1["results"] + p2["results"])

    receipts += [await publish_ok(paged, "alice", f"p{i}") for i in (8, 9)]
    p2 = await page("/chronicle/export/2")
    assert p2["next"] == "/export/3"
    p3 = await page("/chronicle/export/3")
    assert p3["prev"] == "/export/2" and "next" not in p3  # 8 + 4 > 10
    assert [r["hash"] for r in p3["results"]] == [r["currhash"] for r in receipts[8:]]


async def test_paginated_since(paged: RunningServer) -> None:
    receipts = [await publish_ok(paged, "alice", f"s{i}") for i in range(10)]
    ref = receipts[0]["currhash"]
    base = f"/since/{ref}"

    async def page(suffix: str) -> dict[str, Any]:
        doc = ok(await paged.request("GET", f"/chronicle/since/{ref}{suffix}"))
        assert doc["paginated"] is True
        assert list(doc) == _paged_keys(doc, since=True)
        assert doc["total"] == 9
        return doc

    p1 = await page("")
    assert (await page("/0"))["results"] == p1["results"] == (await page("/1"))["results"]
    assert "prev" not in p1 and p1["next"] == f"{base}/2"
    assert [r["currhash"] for r in p1["results"]] == [r["currhash"] for r in receipts[1:5]]
    assert all(list(r) == ROW_KEYS for r in p1["results"])

    p2 = await page("/2")
    assert p2["prev"] == f"{base}/1" and p2["next"] == f"{base}/3"
    assert [r["contents"] for r in p2["results"]] == ["s5", "s6", "s7", "s8"]
    p3 = await page("/3")
    assert p3["prev"] == f"{base}/2" and "next" not in p3
    assert [r["contents"] for r in p3["results"]] == ["s9"]
    p4 = await page("/4")
    assert p4["results"] == [] and p4["prev"] == f"{base}/3" and "next" not in p4

    # by summaryhash too, and an unknown hash is still 400
    by_sum = ok(await paged.request("GET", f"/chronicle/since/{receipts[0]['summaryhash']}"))
    assert by_sum["results"] == p1["results"] and by_sum["total"] == 9
    error(await paged.request("GET", "/chronicle/since/unknown-hash-value/2"), 400, MSG_NO_HASH)


@pytest.mark.parametrize("page", ["99999999999999999999", "9223372036854775807",
                                  "4611686018427387904"])
async def test_paginated_huge_page_number_is_not_a_server_error(paged: RunningServer,
                                                                page: str) -> None:
    """A page number is client input: past the end means an empty page, never a 5xx."""
    receipt = await publish_ok(paged, "alice", "only entry")
    await publish_ok(paged, "alice", "second entry")
    for path in (f"/chronicle/export/{page}", f"/chronicle/since/{receipt['currhash']}/{page}"):
        res = await paged.request("GET", path)
        assert res.status < 500, (path, res.status, res.body)
        if res.status == 200:
            doc = ok(res)
            assert doc["results"] == [] and "next" not in doc
        else:
            error(res, res.status)


# --- publish: success paths -----------------------------------------------------------------

async def test_publish_content_type_and_receipt(server: RunningServer) -> None:
    res = await server.publish("alice", "typed")
    receipt = ok(res, ["version", "datetime", "status", "results"])["results"]
    assert ATOM_RE.match(receipt["created"])
    assert len(b64u_decode(receipt["currhash"], 32)) == 32
    assert await chain_length(server) == 1


async def test_publish_empty_body(server: RunningServer) -> None:
    receipt = await publish_ok(server, "alice", b"")
    row = ok(await server.request("GET", f"/chronicle/lookup/{receipt['currhash']}"))
    assert row["results"][0]["contents"] == ""
    assert row["results"][0]["signature"] == server.identities["alice"].key.sign_b64(b"")


async def test_publish_idempotent_retry(server: RunningServer) -> None:
    body = b"retry me"
    first = await publish_ok(server, "alice", body)
    again = await publish_ok(server, "alice", body)
    assert again == first
    assert await chain_length(server) == 1

    # two identical requests racing each other: one entry, one receipt
    body2 = b"racing retry"
    results = await asyncio.gather(*(server.publish("alice", body2) for _ in range(5)))
    receipts = [ok(r)["results"] for r in results]
    assert all(r == receipts[0] for r in receipts)
    assert await chain_length(server) == 2
    assert [r["contents"] for r in await export_rows(server)] == ["retry me", "racing retry"]


@pytest.mark.parametrize("body", [
    b'{"now": "%s", "msg": "fresh"}',
    b'{"msg": "no now at all"}',
    b'{"now": "", "msg": "empty now is not checked"}',
    b"now: 1999-01-01T00:00:00+00:00 (plain text, not JSON)",
    b'[{"now": "1999-01-01T00:00:00+00:00"}]',
    b'{"now": "1999-01-01T00:00:00+00:00", broken json',
])
async def test_publish_now_accepted(server: RunningServer, body: bytes) -> None:
    if b"%s" in body:
        body = body % atom(utcnow()).encode()
    await publish_ok(server, "alice", body)
    assert await chain_length(server) == 1


@pytest.mark.parametrize(("now", "message"), [
    (lambda: atom(utcnow() - timedelta(minutes=11)), MSG_TOO_OLD),
    (lambda: "1999-01-01T00:00:00+00:00", MSG_TOO_OLD),
    (lambda: "yesterday at noon", MSG_INVALID_TS),
    (lambda: 12345, MSG_INVALID_TS),
    (lambda: atom(utcnow() + timedelta(hours=2)), None),  # far future: 408, own wording
])
async def test_publish_now_rejected(server: RunningServer, now: Any, message: str | None
                                    ) -> None:
    body = json.dumps({"now": now(), "msg": "x"}).encode()
    doc = error(await server.publish("alice", body), 408, message)
    assert doc["message"].startswith("Request timestamp is ")
    assert await chain_length(server) == 0


async def test_created_never_goes_backwards(tmp_path: Path) -> None:
    start = utcnow().replace(microsecond=0)
    times = iter([start, start - timedelta(hours=1), start + timedelta(seconds=5)])
    data_dir = await init_data_dir(tmp_path / "clock")
    srv = await start_server(data_dir, ledger_clock=lambda: next(times))
    try:
        await srv.add_client("alice")
        created = [(await publish_ok(srv, "alice", f"t{i}"))["created"] for i in range(3)]
        assert created == [atom(start), atom(start), atom(start + timedelta(seconds=5))]
        verify_chain(await export_rows(srv))
    finally:
        await srv.close()


async def test_overload_answers_503_and_stores_nothing(tmp_path: Path) -> None:
    data_dir = await init_data_dir(tmp_path / "tiny-queue", max_queue=1, max_batch=1)
    srv = await start_server(data_dir)
    try:
        alice = await srv.add_client("alice")
        bodies = [f"flood {i}" for i in range(100)]
        responses = await asyncio.gather(*(srv.publish(alice, b) for b in bodies))
        accepted = set()
        for body, res in zip(bodies, responses, strict=True):
            if res.status == 200:
                ok(res)
                accepted.add(body)
            else:
                error(res, 503)
                assert int(res.headers["Retry-After"]) >= 1
        rows = await export_rows(srv)
        assert {r["contents"] for r in rows} == accepted
        verify_chain(rows)
    finally:
        await srv.close()


# --- publish: authentication errors ---------------------------------------------------------

async def test_publish_auth_errors(server: RunningServer) -> None:
    alice = server.identities["alice"]
    body = b"must not be stored"
    sig = alice.key.sign_b64(body)
    other = SigningKey.generate()

    async def post(headers: Any, data: bytes = body) -> Response:
        return await server.request("POST", "/chronicle/publish", data, headers=headers)

    error(await post({SIGNATURE_HEADER: sig}), 403, "No client header provided")
    error(await post({CLIENT_HEADER: b64u_encode(os.urandom(24)), SIGNATURE_HEADER: sig}),
          403, MSG_CLIENT_NOT_FOUND)
    error(await post({CLIENT_HEADER: alice.client_id}), 403,
          "No signed request header (Body-Signature-Ed25519) found.")
    for bad in (alice.key.sign_b64(b"another body"),   # signature over other bytes
                other.sign_b64(body),                  # by another key
                "!!!not base64!!!",                    # malformed
                b64u_encode(b"\x01" * 32),             # wrong length
                ""):
        error(await post({CLIENT_HEADER: alice.client_id, SIGNATURE_HEADER: bad}),
              403, MSG_BAD_SIGNATURE)
    two_clients = CIMultiDict([(CLIENT_HEADER, alice.client_id),
                               (CLIENT_HEADER, alice.client_id), (SIGNATURE_HEADER, sig)])
    error(await post(two_clients), 403, "Only one client header may be provided")
    two_sigs = CIMultiDict([(CLIENT_HEADER, alice.client_id), (SIGNATURE_HEADER, sig),
                            (SIGNATURE_HEADER, sig)])
    error(await post(two_sigs), 403, "Only one signature header may be provided")
    assert await chain_length(server) == 0


async def test_publish_with_server_key_refused(server: RunningServer) -> None:
    impostor = await server.add_client("impostor", key=server.key)
    error(await server.publish(impostor, "server key as a client"), 403,
          "The server's signing keys cannot be used by clients.")
    assert await chain_length(server) == 0


async def test_publish_by_revoked_client(server: RunningServer) -> None:
    alice = server.identities["alice"]
    await publish_ok(server, alice, "before")
    async with server.ctx.store.write("") as tx:
        await tx.revoke_client(alice.client_id, atom(utcnow()))
    error(await server.publish(alice, "after"), 403, MSG_CLIENT_NOT_FOUND)
    # not even a retry of what it stored before its revocation
    error(await server.publish(alice, "before"), 403, MSG_CLIENT_NOT_FOUND)
    assert await chain_length(server) == 1
    index = ok(await server.request("GET", "/chronicle",
                                    headers={CLIENT_HEADER: alice.client_id}))
    assert "/chronicle/publish" not in [r["uri"] for r in index["results"]]


async def test_publish_invalid_utf8(server: RunningServer) -> None:
    error(await server.publish("alice", b"caf\xe9 \xff\xfe"), 400)
    assert await chain_length(server) == 0


async def test_publish_body_size_limit(small_limit: RunningServer) -> None:
    limit = 1048576
    alice = small_limit.identities["alice"]

    async def post(body: bytes, *, chunked: bool = False) -> Response:
        data: Any = io.BytesIO(body)
        if chunked:  # no Content-Length: the limit must hold while reading
            async def chunks() -> AsyncIterator[bytes]:
                for start in range(0, len(body), 65536):
                    yield body[start:start + 65536]
            data = chunks()
        async with small_limit.session.post(small_limit.url + "/chronicle/publish", data=data,
                                            headers=signed_headers(alice, body)) as resp:
            res = Response(resp.status, resp.headers, await resp.read())
            if not chunked:
                assert resp.request_info.headers.get("Content-Length") == str(len(body))
        return check_signed(res, small_limit.key.public)

    error(await post(b"a" * (limit + 1)), 413)
    assert await chain_length(small_limit) == 0
    error(await post(b"b" * (limit + 1), chunked=True), 413)
    assert await chain_length(small_limit) == 0

    # exactly at the limit is fine, with or without Content-Length
    ok(await post(b"c" * limit))
    ok(await post(b"d" * limit, chunked=True))
    assert await chain_length(small_limit) == 2


# --- admin API ------------------------------------------------------------------------------

async def test_register_and_revoke_with_server_messages(server: RunningServer) -> None:
    bob_key = SigningKey.generate()
    before = await chain_length(server)
    res = await admin_post(server, "/chronicle/register",
                           admin_request_body(publickey=bob_key.public_b64, comment="bob"))
    results = ok(res, ["version", "datetime", "status", "results"])["results"]
    assert list(results) == ["client-id"]
    bob_id = results["client-id"]
    assert len(b64u_decode(bob_id, 24)) == 24
    assert await chain_length(server) == before + 1

    rows = await export_rows(server)
    verify_chain(rows)
    msg = rows[-1]
    assert msg["publickey"] == server.key.public_b64
    assert verify(server.key.public, msg["contents"].encode(), b64u_decode(msg["signature"], 64))
    parsed = json.loads(msg["contents"])
    assert list(parsed) == ["server-action", "now", "clientid", "publickey"]
    assert parsed["server-action"] == "New Client Registration"
    assert ATOM_RE.match(parsed["now"])
    assert parsed["clientid"] == bob_id and parsed["publickey"] == bob_key.public_b64
    assert msg["contents"] == php_json(parsed)  # pretty JSON, as PHP would encode it

    bob = Identity("bob", bob_key, bob_id)
    await publish_ok(server, bob, "hello from bob")
    index = ok(await server.request("GET", "/chronicle", headers={CLIENT_HEADER: bob_id}))
    assert "/chronicle/publish" in [r["uri"] for r in index["results"]]

    res = await admin_post(server, "/chronicle/revoke",
                           admin_request_body(clientid=bob_id, publickey=bob_key.public_b64))
    assert ok(res)["results"] == {"deleted": True}
    assert res.body.count(b'"deleted": true') == 1
    rows = await export_rows(server)
    verify_chain(rows)
    parsed = json.loads(rows[-1]["contents"])
    assert rows[-1]["publickey"] == server.key.public_b64
    assert parsed == {"server-action": "Client Access Revocation", "now": parsed["now"],
                      "clientid": bob_id, "publickey": bob_key.public_b64}
    assert list(parsed) == ["server-action", "now", "clientid", "publickey"]

    count = await chain_length(server)
    error(await server.publish(bob, "after revocation"), 403, MSG_CLIENT_NOT_FOUND)
    error(await admin_post(server, "/chronicle/revoke",
                           admin_request_body(clientid=bob_id, publickey=bob_key.public_b64)),
          404, "Error: Client not found. It may have already been deleted.")
    assert await chain_length(server) == count


async def test_register_without_server_messages(quiet: RunningServer) -> None:
    key = SigningKey.generate()
    res = await admin_post(quiet, "/chronicle/register",
                           admin_request_body(publickey=key.public_b64))
    cid = ok(res)["results"]["client-id"]
    assert await chain_length(quiet) == 0
    await publish_ok(quiet, Identity("new", key, cid), "published")
    res = await admin_post(quiet, "/chronicle/revoke",
                           admin_request_body(clientid=cid, publickey=key.public_b64))
    assert ok(res)["results"] == {"deleted": True}
    assert await chain_length(quiet) == 1
    error(await quiet.publish(Identity("new", key, cid), "refused"), 403, MSG_CLIENT_NOT_FOUND)


async def test_register_errors(server: RunningServer) -> None:
    pk = SigningKey.generate().public_b64
    old = atom(utcnow() - timedelta(hours=1))
    cases: list[tuple[bytes, str, int, str]] = [
        (admin_request_body(publickey=pk), "alice", 403, MSG_CLIENT_NOT_FOUND),
        (php_json({"publickey": pk}).encode(), "admin", 401,
         'Parameter "request-time" not provided.'),
        (admin_request_body(publickey=pk, request_time=old), "admin", 408, MSG_TOO_OLD),
        (admin_request_body(publickey=pk, request_time="not a time"), "admin", 408,
         MSG_INVALID_TS),
        (b"this is not JSON", "admin", 406, "Invalid JSON message"),
        (admin_request_body(comment="no key"), "admin", 400, "Error: Public key expected"),
        (admin_request_body(publickey=b64u_encode(os.urandom(16))), "admin", 400,
         "Key is not the correct size"),
        (admin_request_body(publickey=b64u_encode(os.urandom(33))), "admin", 400,
         "Key is not the correct size"),
    ]
    clients_before = await server.ctx.store.clients.all("", include_revoked=True)
    for body, who, status, message in cases:
        error(await admin_post(server, "/chronicle/register", body, who), status, message)
    # a malformed (not base64url) key: 400 with our own precise wording
    error(await admin_post(server, "/chronicle/register",
                           admin_request_body(publickey="not*base64")), 400)
    assert await chain_length(server) == 0
    assert await server.ctx.store.clients.all("", include_revoked=True) == clients_before


async def test_revoke_errors(server: RunningServer) -> None:
    alice = server.identities["alice"]
    admin = server.identities["admin"]
    cases: list[tuple[bytes, str, int, str]] = [
        (admin_request_body(clientid=alice.client_id, publickey=alice.key.public_b64),
         "alice", 403, MSG_CLIENT_NOT_FOUND),
        (admin_request_body(clientid=b64u_encode(os.urandom(24)),
                            publickey=SigningKey.generate().public_b64),
         "admin", 404, "Error: Client not found. It may have already been deleted."),
        (admin_request_body(clientid=alice.client_id,
                            publickey=SigningKey.generate().public_b64),  # key mismatch
         "admin", 404, "Error: Client not found. It may have already been deleted."),
        (admin_request_body(clientid=admin.client_id, publickey=admin.key.public_b64),
         "admin", 403, "You cannot delete administrators from this API."),
        (admin_request_body(publickey=alice.key.public_b64), "admin", 401,
         "Error: Client ID expected"),
        (php_json({"clientid": alice.client_id, "publickey": alice.key.public_b64}).encode(),
         "admin", 401, 'Parameter "request-time" not provided.'),
        (b"<xml/>", "admin", 406, "Invalid JSON message"),
    ]
    for body, who, status, message in cases:
        error(await admin_post(server, "/chronicle/revoke", body, who), status, message)
    assert await chain_length(server) == 0
    await publish_ok(server, alice, "alice still active")


# --- routing, instances, replica, mirrors -------------------------------------------------------

async def test_unknown_route_and_wrong_method(server: RunningServer) -> None:
    for path in ("/chronicle/no-such-route", "/nope", "/chronicle/lookup"):
        error(await server.request("GET", path), 404)
    res = await server.request("GET", "/chronicle/publish")
    error(res, 405)
    assert res.headers["Allow"] == "POST"
    res = await server.request("POST", "/chronicle/lasthash", b"")
    error(res, 405)
    assert "GET" in res.headers["Allow"]


async def test_unknown_instance(server: RunningServer) -> None:
    for method, path in (("GET", "/chronicle?instance=x"),
                         ("GET", "/chronicle/lasthash?instance=x"),
                         ("GET", "/chronicle/export?instance=x")):
        error(await server.request(method, path), 404, "Instance not found")
    error(await server.publish("alice", "to nowhere", path="/chronicle/publish?instance=x"),
          404, "Instance not found")
    assert await chain_length(server) == 0


async def test_extra_instance_is_a_separate_chain(tmp_path: Path) -> None:
    data_dir = await init_data_dir(tmp_path / "multi", instances=["other"])
    srv = await start_server(data_dir)
    try:
        main = await srv.add_client("main")
        other = await srv.add_client("other", instance="other")
        res = await srv.publish(other, "on other", path="/chronicle/publish?instance=other")
        ok(res)
        error(await srv.publish(main, "main client on other",
                                path="/chronicle/publish?instance=other"),
              403, MSG_CLIENT_NOT_FOUND)
        assert ok(await srv.request("GET", "/chronicle/lasthash"))["results"] == []
        last = ok(await srv.request("GET", "/chronicle/lasthash?instance=other"))["results"]
        assert [r["contents"] for r in last] == ["on other"]
        await publish_ok(srv, main, "on main")
        assert await chain_length(srv, "other") == 1 and await chain_length(srv) == 1
    finally:
        await srv.close()


async def test_replica_endpoints_without_sources(server: RunningServer) -> None:
    doc = ok(await server.request("GET", "/chronicle/replica"),
             ["version", "datetime", "status", "results"])
    assert doc["results"] == []
    error(await server.request("GET", "/chronicle/replica/nope"), 404, "Unknown URI")
    error(await server.request("GET", "/chronicle/replica/nope/lasthash"), 404, "Unknown URI")


async def test_mirrors(server: RunningServer) -> None:
    keys = ["version", "datetime", "status", "public-key", "results"]
    doc = ok(await server.request("GET", "/chronicle/mirrors"), keys)
    assert doc["results"] == [] and doc["public-key"] == server.key.public_b64
    pk = SigningKey.generate().public_b64
    await server.ctx.store.mirrors.add("", Mirror("https://m2.example/chronicle", pk, None, 5),
                                      atom(utcnow()))
    await server.ctx.store.mirrors.add("", Mirror("https://m1.example/chronicle", pk, "first", 1),
                                      atom(utcnow()))
    doc = ok(await server.request("GET", "/chronicle/mirrors"), keys)
    assert doc["results"] == [
        {"url": "https://m1.example/chronicle", "publickey": pk, "comment": "first"},
        {"url": "https://m2.example/chronicle", "publickey": pk, "comment": None},
    ]


# --- concurrency and large documents ----------------------------------------------------------

async def test_concurrent_publishes(server: RunningServer) -> None:
    idents = [server.identities["alice"]] + [await server.add_client(f"c{i}") for i in range(3)]
    jobs = [(idents[i % len(idents)], f"concurrent {i} from {idents[i % len(idents)].name}")
            for i in range(200)]
    responses = await asyncio.gather(*(server.publish(who, body) for who, body in jobs))
    receipts = [ok(r)["results"] for r in responses]
    assert len({r["currhash"] for r in receipts}) == 200

    rows = await export_rows(server)
    assert len(rows) == 200
    entries = verify_chain(rows)
    assert sorted(r["contents"] for r in rows) == sorted(body for _, body in jobs)
    by_hash = {r["hash"]: r for r in rows}
    for (who, body), receipt in zip(jobs, receipts, strict=True):
        row = by_hash[receipt["currhash"]]
        assert row["contents"] == body
        assert row["publickey"] == who.key.public_b64
        assert (row["summary"], row["created"]) == (receipt["summaryhash"], receipt["created"])
    stored = await server.ctx.store.chain("").range(0, 10_000)
    assert [e.index for e in stored] == list(range(200)) == [e.index for e in entries]
    # created never goes backwards along the chain
    assert [r["created"] for r in rows] == sorted(r["created"] for r in rows)


def _expected_export_row(entry: Any) -> dict[str, Any]:
    return {
        "contents": entry.contents.decode("utf-8"),
        "prev": b64u_encode(entry.prevhash) if entry.prevhash is not None else None,
        "hash": b64u_encode(entry.currhash),
        "summary": b64u_encode(entry.summaryhash),
        "created": entry.created,
        "publickey": b64u_encode(entry.publickey),
        "signature": b64u_encode(entry.signature),
    }


async def test_large_export_is_php_identical_and_cached(server: RunningServer) -> None:
    alice = server.identities["alice"]
    count = SMALL_DOCUMENT_ROWS + 500
    ledger = server.ctx.ledger("")
    bodies = [f"bulk {i} / caf\u00e9 \U0001f680 \"q\" <b>\n".encode() for i in range(count)]
    await asyncio.gather(*(ledger.append(b, alice.key.public, alice.key.sign(b),
                                         client_id=alice.client_id) for b in bodies))
    docs = server.runner.app[DOCS]
    builds = docs.builds

    res = await server.request("GET", "/chronicle/export")
    assert res.status == 200
    assert res.headers.getall("Content-Type") == ["application/json"]
    doc = res.json
    stored = await server.ctx.store.chain("").range(0, count + 10)
    expected = {"version": "1.3.x", "datetime": doc["datetime"], "status": "OK",
                "total": count, "results": [_expected_export_row(e) for e in stored]}
    assert res.body == php_json(expected).encode("ascii")
    verify_chain(doc["results"])
    assert docs.builds == builds + 1

    again = await server.request("GET", "/chronicle/export")
    assert again.body == res.body
    assert again.headers[SIGNATURE_HEADER] == res.headers[SIGNATURE_HEADER]
    assert docs.builds == builds + 1  # served from the cache

    # unpaginated since over more than the in-memory threshold: also PHP-identical
    first = b64u_encode(stored[0].currhash)
    since = await server.request("GET", f"/chronicle/since/{first}")
    sdoc = since.json
    expected_since = {"version": "1.3.x", "datetime": sdoc["datetime"], "status": "OK",
                      "total": count - 1,
                      "results": [{"contents": r["contents"], "prevhash": r["prev"],
                                   "currhash": r["hash"], "summaryhash": r["summary"],
                                   "created": r["created"], "publickey": r["publickey"],
                                   "signature": r["signature"]}
                                  for r in expected["results"][1:]]}
    assert since.status == 200
    assert since.body == php_json(expected_since).encode("ascii")

    # the chain grows: the cache is not reused
    await publish_ok(server, alice, "one more")
    builds = docs.builds
    grown = ok(await server.request("GET", "/chronicle/export"))
    assert grown["total"] == count + 1
    assert grown["results"][-1]["contents"] == "one more"
    assert docs.builds == builds + 1
    verify_chain(grown["results"])


async def test_a_stopping_server_closes_and_removes_its_kept_export(tmp_path: Path) -> None:
    """The full export is kept on disk between requests; when the server stops, the file is
    closed and removed (it was left for the garbage collector: a ResourceWarning)."""
    async with serving(tmp_path / "ledger", "alice") as srv:
        alice = srv.identities["alice"]
        bodies = [f"kept {i}".encode() for i in range(SMALL_DOCUMENT_ROWS + 1)]
        ledger = srv.ctx.ledger("")
        await asyncio.gather(*(ledger.append(b, alice.key.public, alice.key.sign(b),
                                             client_id=alice.client_id) for b in bodies))
        assert (await srv.request("GET", "/chronicle/export")).status == 200
        docs = srv.runner.app[DOCS]
        [(_, _, built)] = docs._cached.values()
        fh, path = built.fh, built.path
        assert fh is not None and path is not None and path.exists()
    assert fh.closed
    assert not path.exists()
    assert docs.spool.used == 0
