"""Chronicle 1.3 message bodies, pure: envelopes, row shapes, index, timestamps, admin bodies.

Spec: protocol.md "Response envelope", "Endpoints", "Status codes and errors". The exact
key orders and wording below are those recorded from PHP Chronicle 1.3.1.
"""

from __future__ import annotations

import codecs
import dataclasses
import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from chronicle.core.blakechain import Entry
from chronicle.core.encoding import (
    atom,
    b64u_decode,
    b64u_encode,
    parse_timestamp,
    php_json,
    php_json_string,
)
from chronicle.core.errors import EncodingError, RequestError
from chronicle.core.sapient import check_public_key
from chronicle.core.verify import EXPORT_KEYS, ROW_KEYS, RowKeys

VERSION = "1.3.x"

# Messages PHP Chronicle answers with; clients match on them.
MSG_NO_CLIENT_HEADER = "No client header provided"
MSG_CLIENT_NOT_FOUND = "Client not found"
MSG_NO_SIGNATURE = "No signed request header (Body-Signature-Ed25519) found."
MSG_BAD_SIGNATURE = "No valid signature given for this HTTP request"
MSG_SERVER_KEY = "The server's signing keys cannot be used by clients."
MSG_TOO_OLD = "Request timestamp is too old. Please resend."
MSG_INVALID_TS = "Request timestamp is invalid. Please resend."
MSG_TOO_NEW = "Request timestamp is too far in the future. Please resend."
MSG_NO_HASH = "No record found matching this hash."
MSG_INVALID_JSON = "Invalid JSON message"
MSG_NO_BODY = "No post body was provided"
MSG_PUBKEY_EXPECTED = "Error: Public key expected"
MSG_PUBKEY_SIZE = "Key is not the correct size"
MSG_CLIENTID_EXPECTED = "Error: Client ID expected"
MSG_REVOKE_UNKNOWN = "Error: Client not found. It may have already been deleted."
MSG_REVOKE_ADMIN = "You cannot delete administrators from this API."
MSG_UNKNOWN_URI = "Unknown URI"
MSG_INSTANCE_NOT_FOUND = "Instance not found"
MSG_TWO_CLIENT_HEADERS = "Only one client header may be provided"
MSG_TWO_SIGNATURE_HEADERS = "Only one signature header may be provided"

ACTION_NEW_CLIENT = "New Client Registration"
ACTION_REVOKED_CLIENT = "Client Access Revocation"
ACTION_TREE_ENABLED = "Merkle Tree Enabled"


def ok_envelope(now: datetime, results: Any, **before_results: Any) -> dict[str, Any]:
    """``{"version", "datetime", "status": "OK", <extra keys in order>, "results"}``."""
    body: dict[str, Any] = {"version": VERSION, "datetime": atom(now), "status": "OK"}
    body.update(before_results)
    body["results"] = results
    return body


def error_envelope(now: datetime, message: str) -> dict[str, Any]:
    return {"version": VERSION, "datetime": atom(now), "status": "ERROR", "message": message}


def render(body: dict[str, Any]) -> bytes:
    return php_json(body).encode("ascii")


# --- rows ---------------------------------------------------------------------------------

def _contents_text(entry: Entry) -> str:
    return entry.contents.decode("utf-8")


def row(entry: Entry, *, first_prev: str | None = None,
        keys: RowKeys = ROW_KEYS) -> dict[str, Any]:
    """A chain row: ``contents``, the three hashes named by ``keys``, ``created``, ``publickey``,
    ``signature``. Lookup/since/lasthash rows name them ``prevhash, currhash, summaryhash``."""
    return {
        "contents": _contents_text(entry),
        keys.prev: b64u_encode(entry.prevhash) if entry.prevhash is not None else first_prev,
        keys.curr: b64u_encode(entry.currhash),
        keys.summary: b64u_encode(entry.summaryhash),
        "created": entry.created,
        "publickey": b64u_encode(entry.publickey),
        "signature": b64u_encode(entry.signature),
    }


def export_row(entry: Entry, *, first_prev: str | None = None) -> dict[str, Any]:
    """Export row: the same data with keys ``prev, hash, summary``."""
    return row(entry, first_prev=first_prev, keys=EXPORT_KEYS)


def render_row_indented(entry: Entry, *, export: bool, first_prev: str | None = None) -> str:
    """One row as it appears inside a pretty-printed ``results`` list (8-space indent).

    Equal to indenting ``php_json(row(...))`` by two levels, but without building dicts:
    this is the hot loop of a million-entry export.
    """
    keys = EXPORT_KEYS if export else ROW_KEYS
    if entry.prevhash is not None:
        prev = '"' + b64u_encode(entry.prevhash) + '"'
    else:
        prev = "null" if first_prev is None else php_json_string(first_prev)
    return (
        "        {\n"
        f'            "contents": {php_json_string(_contents_text(entry))},\n'
        f'            "{keys.prev}": {prev},\n'
        f'            "{keys.curr}": "{b64u_encode(entry.currhash)}",\n'
        f'            "{keys.summary}": "{b64u_encode(entry.summaryhash)}",\n'
        f'            "created": {php_json_string(entry.created)},\n'
        f'            "publickey": "{b64u_encode(entry.publickey)}",\n'
        f'            "signature": "{b64u_encode(entry.signature)}"\n'
        "        }"
    )


#: Most escaped bytes one byte of contents can become in a document (``\x01`` → ``\u0001``).
ESCAPE_GROWTH = 6


def render_row_pieces(entry: Entry, *, export: bool, first_prev: str | None = None,
                      piece: int = 1 << 16) -> Iterator[str]:
    """:func:`render_row_indented` in pieces: the contents are escaped ``piece`` bytes at a
    time, so one huge row never exists as one string (an 8 MiB body of control characters
    is 48 MiB once escaped). ``"".join(...)`` equals :func:`render_row_indented`.
    """
    frame = render_row_indented(dataclasses.replace(entry, contents=b""), export=export,
                                first_prev=first_prev)
    before, after = frame.split('"contents": ""', 1)
    yield before + '"contents": "'
    decoder = codecs.getincrementaldecoder("utf-8")()
    data = memoryview(entry.contents)
    for pos in range(0, len(data), piece):
        text = decoder.decode(data[pos:pos + piece])  # never splits a character
        if text:
            yield php_json_string(text)[1:-1]  # escapes are per character: pieces concatenate
    decoder.decode(b"", final=True)  # invalid UTF-8 fails here as it does in one piece
    yield '"' + after


_PLACEHOLDER = "\x00rows\x00"


@dataclass(frozen=True, slots=True)
class StreamedDocument:
    """A pretty JSON document whose ``results`` list is produced row by row.

    ``head`` ends just after ``"results": [``; rows are joined with ``",\\n"``; ``tail``
    closes the list and the object. With no rows the document is ``empty`` instead
    (PHP writes ``"results": []`` on one line).
    """

    head: str
    tail: str
    empty: str

    @classmethod
    def for_envelope(cls, envelope: dict[str, Any]) -> StreamedDocument:
        probe = dict(envelope)
        probe["results"] = [_PLACEHOLDER]
        text = php_json(probe)
        marker = "        " + php_json_string(_PLACEHOLDER)
        head, tail = text.split(marker)
        empty_env = dict(envelope)
        empty_env["results"] = []
        return cls(head=head, tail=tail, empty=php_json(empty_env))

    def chunks(self, rows: Iterable[str]) -> Iterator[str]:
        """Yield the document text in pieces (head, rows with separators, tail)."""
        first = True
        for text in rows:
            if first:
                yield self.head
                yield text
                first = False
            else:
                yield ",\n"
                yield text
        yield self.empty if first else self.tail


# --- index --------------------------------------------------------------------------------

def _uri(path: str) -> str:
    return "/chronicle" + path


def index_results(*, client_known: bool, client_admin: bool) -> list[dict[str, Any]]:
    """The endpoint listing of ``GET /chronicle`` (wording as PHP Chronicle 1.3.1)."""
    results: list[dict[str, Any]] = [
        {"uri": _uri("/lasthash"),
         "description": "Get information about the latest entry in this Chronicle"},
        {"uri": _uri("/lookup/{hash}"), "description": "Lookup the information for the given hash"},
        {"uri": _uri("/since/{hash}"), "description": "List all new entries since a given hash"},
        {"uri": _uri("/export"), "description": "Export the entire Chronicle"},
        {"uri": _uri("/mirrors"),
         "description": "Public list of Chronicles that replicate this instance"},
        {"uri": _uri("/replica"),
         "description": "List of Chronicles being replicated onto this one (and other options)"},
        {"uri": "/chronicle", "description": "API method description"},
    ]
    if client_known:
        results.append({"uri": _uri("/publish"),
                        "description": "Publish a new message to this Chronicle.",
                        "note": "Approved clients only."})
    if client_admin:
        results.append({
            "uri": _uri("/register"),
            "description": "Approve a new client.",
            "required-fields": {
                "request-time": "The time of your request.",
                "publickey": "Public key of the client to be removed",
            },
            "note": "Administrators only",
        })
        results.append({
            "uri": _uri("/revoke"),
            "description": "Revoke a client's access",
            "required-fields": {
                "request-time": "The time of your request.",
                "clientid": "Unique ID of the client to be removed",
                "publickey": "Public key of the client to be removed",
            },
            "note": "Administrators only",
        })
    return results


# --- pagination ---------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Page:
    """Which slice a paginated request asks for; ``number`` 0 means page 1 (as PHP)."""

    number: int
    size: int

    @property
    def effective(self) -> int:
        return max(self.number, 1)

    @property
    def offset(self) -> int:
        return (self.effective - 1) * self.size

    def links(self, base: str, total: int) -> dict[str, str]:
        """``prev`` when page > 1, ``next`` while offset + size <= total (PHP's rule)."""
        out: dict[str, str] = {}
        if self.effective > 1:
            out["prev"] = f"{base}/{self.effective - 1}"
        if self.offset + self.size <= total:
            out["next"] = f"{base}/{self.effective + 1}"
        return out


# --- request bodies -------------------------------------------------------------------------

def check_fresh(sent_text: Any, now: datetime, window: timedelta) -> None:
    """Reject a signed timestamp older than ``window`` (408), or further ahead than it.

    PHP only checks the past; accepting any future time would let a captured request be
    replayed until then, so we bound both sides by the same window.
    """
    try:
        sent = parse_timestamp(sent_text)
    except EncodingError:
        raise RequestError(MSG_INVALID_TS, status=408) from None
    # Compare differences, not sums: 9999-12-31 plus a window overflows datetime.
    if now - sent > window:
        raise RequestError(MSG_TOO_OLD, status=408)
    if sent - now > window:
        raise RequestError(MSG_TOO_NEW, status=408)


def check_publish_timestamp(body: bytes, now: datetime, window: timedelta | None) -> None:
    """Publish: only a JSON object body with a non-empty ``now`` is checked (as PHP)."""
    if window is None or not body.lstrip().startswith(b"{"):
        return
    try:
        parsed = json.loads(body)
    except (ValueError, RecursionError):  # not JSON (or nested too deep to read): as PHP
        return
    if isinstance(parsed, dict) and parsed.get("now"):
        check_fresh(parsed["now"], now, window)


def parse_admin_body(body: bytes, now: datetime, window: timedelta | None) -> dict[str, Any]:
    """Register/revoke bodies: a JSON object, with a fresh ``request-time`` when enabled."""
    if window is not None and not body:
        raise RequestError(MSG_NO_BODY, status=406)
    try:
        parsed = json.loads(body)
    except (ValueError, RecursionError):
        raise RequestError(MSG_INVALID_JSON, status=406) from None
    if not isinstance(parsed, dict):
        raise RequestError(MSG_INVALID_JSON, status=406)
    if window is not None:
        if not parsed.get("request-time"):
            raise RequestError('Parameter "request-time" not provided.', status=401)
        check_fresh(parsed["request-time"], now, window)
    return parsed


REGISTER_FIELDS = frozenset({"publickey", "comment", "request-time"})
REVOKE_FIELDS = frozenset({"clientid", "publickey", "request-time"})


def check_fields(body: dict[str, Any], allowed: frozenset[str], endpoint: str) -> None:
    """An admin body carries exactly its endpoint's fields: a signed revoke body must not
    pass for a register (it would give a revoked key a new id), nor the reverse (400)."""
    extra = sorted(set(body) - allowed)
    if extra:
        raise RequestError(f"Unexpected field(s) for {endpoint}: {', '.join(extra)}",
                           status=400)


def parse_register(body: dict[str, Any]) -> tuple[bytes, str | None]:
    """``(publickey raw, comment)``; a missing or malformed key is the client's fault: 400."""
    key_text = body.get("publickey")
    if not key_text:
        raise RequestError(MSG_PUBKEY_EXPECTED, status=400)
    if not isinstance(key_text, str):
        raise RequestError(MSG_PUBKEY_SIZE, status=400)
    try:
        key = b64u_decode(key_text, what="public key")
    except EncodingError as exc:
        raise RequestError(exc.message, status=400) from None
    if len(key) != 32:
        raise RequestError(MSG_PUBKEY_SIZE, status=400)
    try:
        check_public_key(key)
    except EncodingError as exc:
        raise RequestError(exc.message, status=400) from None
    comment = body.get("comment")
    check_fields(body, REGISTER_FIELDS, "register")
    return key, comment if isinstance(comment, str) else None


_CLIENT_ID_RE = re.compile(r"\A[A-Za-z0-9_=-]{1,128}\Z")


def valid_client_id(text: str) -> bool:
    """Client ids are base64url (ours and PHP's); anything else cannot name a client."""
    return bool(_CLIENT_ID_RE.match(text))


def parse_revoke(body: dict[str, Any]) -> tuple[str, str]:
    client_id = body.get("clientid")
    if not client_id or not isinstance(client_id, str):
        raise RequestError(MSG_CLIENTID_EXPECTED, status=401)
    key = body.get("publickey")
    if not key or not isinstance(key, str):
        raise RequestError(MSG_PUBKEY_EXPECTED, status=401)
    check_fields(body, REVOKE_FIELDS, "revoke")
    return client_id, key


def server_action_message(action: str, now: datetime, client_id: str, publickey: str) -> bytes:
    """The entry a server appends for publish-new-clients / publish-revoked-clients."""
    return php_json({
        "server-action": action,
        "now": atom(now),
        "clientid": client_id,
        "publickey": publickey,
    }).encode("ascii")


def tree_enabled_message(now: datetime, origin: str, vkey: str) -> bytes:
    """The entry a server appends when its Merkle tree is enabled (``chronicle tlog
    enable``): the checkpoint key, on the chain, signed by the server key."""
    return php_json({
        "server-action": ACTION_TREE_ENABLED,
        "now": atom(now),
        "origin": origin,
        "vkey": vkey,
    }).encode("ascii")
