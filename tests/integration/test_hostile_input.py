"""Hostile input never makes the server fail (5xx): each gets a precise signed 4xx, or is
handled as PHP would handle it."""

from __future__ import annotations

import asyncio
from pathlib import Path

from chronicle.core.encoding import b64u_decode
from chronicle.core.sapient import SIGNATURE_HEADER, verify
from tests.helpers import RunningServer, admin_request_body, init_data_dir, start_server


async def _raw(srv: RunningServer, request: bytes) -> tuple[int, bytes, dict[str, str]]:
    host, port = srv.url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(request)
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:] if ": " in line)
    body = await reader.readexactly(int(headers["Content-Length"]))
    writer.close()
    return int(lines[0].split()[1]), body, headers


async def test_non_utf8_client_id_is_an_unknown_client(server: RunningServer) -> None:
    for path, method in (("/chronicle/publish", "POST"), ("/chronicle/register", "POST")):
        request = (f"{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n"
                   "Body-Signature-Ed25519: AAAA\r\n").encode() + \
            b"Chronicle-Client-Key-ID: \xff\xfe\r\nConnection: close\r\n\r\nhi"
        status, body, headers = await _raw(server, request)
        assert status == 403, body
        assert b'"message": "Client not found"' in body
        assert verify(server.key.public, body,
                      b64u_decode(headers[SIGNATURE_HEADER], 64))
    status, body, _ = await _raw(server, b"GET /chronicle HTTP/1.1\r\nHost: x\r\n"
                                         b"Chronicle-Client-Key-ID: \xff\r\n"
                                         b"Connection: close\r\n\r\n")
    assert status == 200 and b"/chronicle/publish" not in body


async def test_deeply_nested_json(server: RunningServer) -> None:
    deep = "{" + '"a":[' * 100_000 + "]" * 100_000 + "}"
    res = await server.publish("alice", deep)  # not readable as JSON: stored, as PHP does
    assert res.status == 200, res.body
    admin = server.identities["admin"]
    body = deep.encode()
    res = await server.request("POST", "/chronicle/register", body, headers={
        "Chronicle-Client-Key-ID": admin.client_id,
        "Body-Signature-Ed25519": admin.key.sign_b64(body)})
    assert (res.status, res.json["message"]) == (406, "Invalid JSON message")


async def test_page_number_with_thousands_of_digits(tmp_path: Path) -> None:
    srv = await start_server(await init_data_dir(tmp_path / "p", paginate_export=3))
    try:
        await srv.add_client("alice")
        receipt = (await srv.publish("alice", "x")).json["results"]
        for path in ("/chronicle/export/" + "9" * 5000,
                     f"/chronicle/since/{receipt['currhash']}/" + "9" * 5000):
            res = await srv.request("GET", path)
            assert res.status == 200 and res.json["results"] == [], path
    finally:
        await srv.close()


async def test_admin_body_with_a_garbage_key_names_the_problem_once(
        server: RunningServer) -> None:
    admin = server.identities["admin"]
    body = admin_request_body(publickey="not base64 at all!")
    res = await server.request("POST", "/chronicle/register", body, headers={
        "Chronicle-Client-Key-ID": admin.client_id,
        "Body-Signature-Ed25519": admin.key.sign_b64(body)})
    assert (res.status, res.json["message"]) == (400, "Invalid public key: not base64url")
