"""Protocol bodies: streamed rows equal PHP's pretty JSON, pagination links, timestamp rules."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from chronicle.core import protocol
from chronicle.core.blakechain import ChainBuilder, Entry
from chronicle.core.encoding import b64u_decode, php_json
from chronicle.core.errors import RequestError
from tests.helpers import load_vector

ROWS = load_vector("hashchains.json")["A"]["entries"]
EXCHANGES = {e["id"]: e for e in load_vector("exchanges.json")["exchanges"]}
NOW = datetime(2026, 11, 28, 4, 58, 21, tzinfo=UTC)
WINDOW = timedelta(minutes=10)


def _entries() -> list[Entry]:
    b = ChainBuilder(None)
    return [b.append(r["contents"].encode(), b64u_decode(r["publickey"]),
                     b64u_decode(r["signature"]), r["created"]) for r in ROWS]


ENTRIES = _entries()


@pytest.mark.parametrize("export", [True, False])
def test_streamed_rows_equal_php_pretty_json(export: bool) -> None:
    envelope = protocol.ok_envelope(NOW, None, total=len(ENTRIES))
    doc = protocol.StreamedDocument.for_envelope(envelope)
    streamed = "".join(doc.chunks(protocol.render_row_indented(e, export=export)
                                  for e in ENTRIES))
    shape = protocol.export_row if export else protocol.row
    assert streamed == php_json({**envelope, "results": [shape(e) for e in ENTRIES]})


def test_streamed_document_without_rows_is_php_empty_list() -> None:
    envelope = protocol.ok_envelope(NOW, None, total=0)
    text = "".join(protocol.StreamedDocument.for_envelope(envelope).chunks([]))
    assert text == php_json({**envelope, "results": []})
    assert '"results": []' in text


# Contents whose pieces fall inside multi-byte characters and escapes: control characters,
# quotes, slashes, backslashes, DEL (PHP leaves it raw), 2-, 3- and 4-byte UTF-8.
AWKWARD = ("\x01\x1f\"\\/\x7f\\u007f caf\u00e9 \u20ac \U0001f680\n" * 37).encode()


@pytest.mark.parametrize("export", [True, False])
@pytest.mark.parametrize("first_prev", [None, ""])
@pytest.mark.parametrize("piece", [1, 2, 3, 5, 7, 64, 1 << 16])
def test_a_row_rendered_in_pieces_is_the_row(export: bool, first_prev: str | None,
                                             piece: int) -> None:
    for entry in (ENTRIES[0], ENTRIES[1]):
        for contents in (b"", AWKWARD, entry.contents):
            big = ChainBuilder(None).append(contents, entry.publickey, entry.signature,
                                            entry.created)
            rows = (big, entry) if contents is entry.contents else (big,)
            for row in rows:
                pieces = list(protocol.render_row_pieces(row, export=export,
                                                         first_prev=first_prev, piece=piece))
                assert "".join(pieces) == protocol.render_row_indented(
                    row, export=export, first_prev=first_prev)
                assert all(len(p) <= max(500, protocol.ESCAPE_GROWTH * piece + 12) for p in pieces)


def test_a_row_in_pieces_refuses_invalid_utf8_as_the_whole_row_does() -> None:
    bad = ChainBuilder(None).append(b"ok \xff\xfe", ENTRIES[0].publickey,
                                    ENTRIES[0].signature, ENTRIES[0].created)
    with pytest.raises(UnicodeDecodeError):
        protocol.render_row_indented(bad, export=True)
    with pytest.raises(UnicodeDecodeError):
        list(protocol.render_row_pieces(bad, export=True, piece=2))


def test_control_characters_escape_to_six_bytes_each() -> None:
    """The growth documents are planned with: ``\\x01`` becomes ``\\u0001``."""
    assert len(protocol.php_json_string("\x01" * 1000)) == 2 + protocol.ESCAPE_GROWTH * 1000


def test_replica_first_prev_can_be_rendered_as_empty_string() -> None:
    text = protocol.render_row_indented(ENTRIES[0], export=True, first_prev="")
    assert '"prev": "",' in text
    assert protocol.export_row(ENTRIES[0], first_prev="")["prev"] == ""


def test_recorded_lookup_body_is_rendered_exactly() -> None:
    recorded = EXCHANGES[20]["response"]["body_text"]
    doc = json.loads(recorded)
    entry = next(e for e in ENTRIES if protocol.row(e)["currhash"] == doc["results"][0]["currhash"])
    body = protocol.render(protocol.ok_envelope(NOW, [protocol.row(entry)]))
    assert body.decode() == recorded


@pytest.mark.parametrize(("number", "total", "links"), [
    (0, 19, {"next": "/export/2"}),
    (1, 19, {"next": "/export/2"}),
    (4, 19, {"prev": "/export/3", "next": "/export/5"}),
    (5, 19, {"prev": "/export/4"}),
    (6, 19, {"prev": "/export/5"}),
    (5, 20, {"prev": "/export/4", "next": "/export/6"}),  # a full last page links onwards
])
def test_page_links_follow_php(number: int, total: int, links: dict[str, str]) -> None:
    assert protocol.Page(number, 4).links("/export", total) == links


def test_index_lists_publish_for_clients_and_admin_endpoints_for_admins() -> None:
    assert len(protocol.index_results(client_known=False, client_admin=False)) == 7
    assert protocol.index_results(client_known=True, client_admin=False)[-1]["uri"] == \
        "/chronicle/publish"
    admin = protocol.index_results(client_known=True, client_admin=True)
    assert [r["uri"] for r in admin[-2:]] == ["/chronicle/register", "/chronicle/revoke"]
    recorded = json.loads(EXCHANGES[2]["response"]["body_text"])["results"]
    assert admin == recorded


def _stamp(delta: timedelta) -> str:
    return (NOW + delta).strftime("%Y-%m-%dT%H:%M:%S+00:00")


@pytest.mark.parametrize(("body", "message"), [
    (b'{"now": "2001-02-03T04:05:06+00:00"}', protocol.MSG_TOO_OLD),
    (b'{"now": "soon"}', protocol.MSG_INVALID_TS),
    (json.dumps({"now": _stamp(timedelta(hours=1))}).encode(), protocol.MSG_TOO_NEW),
])
def test_publish_timestamp_refusals(body: bytes, message: str) -> None:
    with pytest.raises(RequestError) as info:
        protocol.check_publish_timestamp(body, NOW, WINDOW)
    assert (info.value.status, info.value.message) == (408, message)


@pytest.mark.parametrize("body", [
    b"now: 1999-01-01", b"[]", b"{}", b'{"now": ""}', b"{not json",
    json.dumps({"now": _stamp(timedelta(minutes=-9))}).encode(),
])
def test_publish_timestamp_accepts(body: bytes) -> None:
    protocol.check_publish_timestamp(body, NOW, WINDOW)
    protocol.check_publish_timestamp(b'{"now": "2001-01-01T00:00:00Z"}', NOW, None)


@pytest.mark.parametrize(("body", "status", "message"), [
    (b"", 406, "No post body was provided"),
    (b"this is not json", 406, "Invalid JSON message"),
    (b"[1]", 406, "Invalid JSON message"),
    (b'{"publickey": "x"}', 401, 'Parameter "request-time" not provided.'),
    (b'{"request-time": "2001-01-01T00:00:00+00:00"}', 408, protocol.MSG_TOO_OLD),
])
def test_admin_body_refusals(body: bytes, status: int, message: str) -> None:
    with pytest.raises(RequestError) as info:
        protocol.parse_admin_body(body, NOW, WINDOW)
    assert (info.value.status, info.value.message) == (status, message)


@pytest.mark.parametrize(("fields", "message"), [
    ({}, protocol.MSG_PUBKEY_EXPECTED),
    ({"publickey": ""}, protocol.MSG_PUBKEY_EXPECTED),
    ({"publickey": "AAAA"}, protocol.MSG_PUBKEY_SIZE),
    ({"publickey": 5}, protocol.MSG_PUBKEY_SIZE),
])
def test_register_key_refusals_are_client_errors(fields: dict, message: str) -> None:
    with pytest.raises(RequestError) as info:
        protocol.parse_register(fields)
    assert (info.value.status, info.value.message) == (400, message)


def test_register_rejects_garbage_key_with_precise_message() -> None:
    with pytest.raises(RequestError, match="Invalid public key"):
        protocol.parse_register({"publickey": "not base64 at all!"})


def test_revoke_fields() -> None:
    with pytest.raises(RequestError, match="Client ID expected"):
        protocol.parse_revoke({"publickey": "x"})
    with pytest.raises(RequestError, match="Public key expected"):
        protocol.parse_revoke({"clientid": "x"})
    assert protocol.parse_revoke({"clientid": "a", "publickey": "b"}) == ("a", "b")


def test_server_action_message_shape() -> None:
    body = protocol.server_action_message(protocol.ACTION_NEW_CLIENT, NOW, "id", "pk")
    assert body.decode() == php_json({"server-action": "New Client Registration",
                                      "now": "2026-11-28T04:58:21+00:00",
                                      "clientid": "id", "publickey": "pk"})
