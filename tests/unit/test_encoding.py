"""Encodings: strict base64url, timestamps, intervals, and PHP's pretty JSON byte for byte."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chronicle.core.encoding import (
    atom,
    b64u_decode,
    b64u_encode,
    parse_interval,
    parse_timestamp,
    php_json,
    php_json_string,
)
from chronicle.core.errors import EncodingError
from tests.helpers import load_vector

EXCHANGES = load_vector("exchanges.json")["exchanges"]


@pytest.mark.parametrize("bad", [
    "abc",                       # not a multiple of 4
    "ab+/",                      # standard alphabet
    "a===",                      # too much padding
    "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAB=",  # non-zero trailing bits
    "unknown-hash-value",
    "YQ==\n",
    "",
])
def test_b64u_rejects_non_canonical(bad: str) -> None:
    with pytest.raises(EncodingError):
        b64u_decode(bad, 32)


def test_b64u_round_trip_and_length() -> None:
    raw = bytes(range(32))
    text = b64u_encode(raw)
    assert text.endswith("=") and len(text) == 44
    assert b64u_decode(text, 32) == raw
    with pytest.raises(EncodingError, match="expected 64 bytes"):
        b64u_decode(text, 64)


def test_atom_format() -> None:
    moment = datetime(2026, 11, 28, 4, 58, 21, 999999, tzinfo=UTC)
    assert atom(moment) == "2026-11-28T04:58:21+00:00"


def test_atom_keeps_one_second_and_no_more() -> None:
    """atom() remembers the last second's text: the same second in another zone or with
    other microseconds gives it, the next second (or one before 1970) does not."""
    start = datetime(2026, 11, 28, 4, 58, 21, 5, tzinfo=UTC)
    assert atom(start) == "2026-11-28T04:58:21+00:00"
    assert atom(start.replace(microsecond=999999)) == "2026-11-28T04:58:21+00:00"
    paris = timezone(timedelta(hours=1))
    assert atom(start.astimezone(paris)) == "2026-11-28T04:58:21+00:00"
    assert atom(start + timedelta(seconds=1)) == "2026-11-28T04:58:22+00:00"
    assert atom(start - timedelta(seconds=1)) == "2026-11-28T04:58:20+00:00"
    before_epoch = datetime(1969, 12, 31, 23, 59, 59, 500000, tzinfo=UTC)
    assert atom(before_epoch) == "1969-12-31T23:59:59+00:00"
    assert atom(datetime(1970, 1, 1, tzinfo=UTC)) == "1970-01-01T00:00:00+00:00"
    # Far enough ahead that a float timestamp would round .999999 up to the next second.
    late = datetime(9999, 12, 31, 23, 59, 58, 999999, tzinfo=UTC)
    assert atom(late + timedelta(microseconds=1)) == "9999-12-31T23:59:59+00:00"
    assert atom(late) == "9999-12-31T23:59:58+00:00"
    # The same local time twice across a DST change is two UTC seconds.
    new_york = ZoneInfo("America/New_York")
    first = datetime(2026, 11, 1, 1, 30, tzinfo=new_york, fold=0)
    assert atom(first) == "2026-11-01T05:30:00+00:00"
    assert atom(first.replace(fold=1)) == "2026-11-01T06:30:00+00:00"
    # An offset with a fraction of a second: converted first, then truncated.
    odd = timezone(timedelta(microseconds=500000))
    assert atom(datetime(2026, 1, 1, 0, 0, 0, 600000, tzinfo=odd)) == \
        "2026-01-01T00:00:00+00:00"


@pytest.mark.parametrize("text,expected", [
    ("2026-11-28T04:58:21+00:00", datetime(2026, 11, 28, 4, 58, 21, tzinfo=UTC)),
    ("2026-11-28T05:58:21+01:00", datetime(2026, 11, 28, 4, 58, 21, tzinfo=UTC)),
    ("2026-11-28T04:58:21Z", datetime(2026, 11, 28, 4, 58, 21, tzinfo=UTC)),
    ("2026-11-28 04:58:21", datetime(2026, 11, 28, 4, 58, 21, tzinfo=UTC)),
])
def test_parse_timestamp(text: str, expected: datetime) -> None:
    assert parse_timestamp(text) == expected


@pytest.mark.parametrize("text", ["yesterday", "2026-13-01T00:00:00+00:00", "", "x" * 100])
def test_parse_timestamp_rejects(text: str) -> None:
    with pytest.raises(EncodingError):
        parse_timestamp(text)


def test_intervals() -> None:
    assert parse_interval("10 minutes") == timedelta(minutes=10)
    assert parse_interval("7 days") == timedelta(days=7)
    assert parse_interval("1 hour 30 minutes") == timedelta(minutes=90)
    with pytest.raises(EncodingError):
        parse_interval("ten minutes")


def _json_bodies() -> list[tuple[str, str]]:
    """Every response PHP marked as pretty JSON, and every pretty (createSignedJsonRequest)
    request body; compact raw request bodies were not produced by json_encode."""
    out = []
    for ex in EXCHANGES:
        if ex["checks"].get("response_body_is_php_pretty_json"):
            out.append((f"{ex['id']}-response", ex["response"]["body_text"]))
        text = ex["request"].get("body_text") or ""
        if text.startswith("{\n    "):
            out.append((f"{ex['id']}-request", text))
    return out


JSON_BODIES = _json_bodies()


def test_every_signed_json_response_is_covered() -> None:
    signed = [e for e in EXCHANGES if e["checks"]["response_signature_valid_for_server_key"]]
    pretty = [e for e in EXCHANGES if e["checks"].get("response_body_is_php_pretty_json")]
    assert len(pretty) == len(signed) > 120


@pytest.mark.parametrize("label,text", JSON_BODIES, ids=[b[0] for b in JSON_BODIES])
def test_php_json_reencodes_recorded_bodies(label: str, text: str) -> None:
    """Every pretty-printed body PHP produced re-encodes to the same bytes."""
    assert php_json(json.loads(text)) == text


def _php_rule(text: str) -> str:
    """PHP's ``json_encode`` escaping of one string, written from its rule (issue 9), not
    from our encoder: ``"`` ``\\`` ``/`` escaped; ``\\b \\t \\n \\f \\r``; ``\\u00xx`` (lowercase)
    below 0x20; DEL raw; non-ASCII as lowercase ``\\uXXXX``, surrogate pairs above the BMP."""
    short = {'"': '\\"', "\\": "\\\\", "/": "\\/", "\b": "\\b", "\t": "\\t",
             "\n": "\\n", "\f": "\\f", "\r": "\\r"}
    out = []
    for ch in text:
        code = ord(ch)
        if ch in short:
            out.append(short[ch])
        elif code < 0x20:
            out.append(f"\\u{code:04x}")
        elif code <= 0x7F:
            out.append(ch)
        elif code <= 0xFFFF:
            out.append(f"\\u{code:04x}")
        else:
            code -= 0x10000
            out.append(f"\\u{0xD800 + (code >> 10):04x}\\u{0xDC00 + (code & 0x3FF):04x}")
    return '"' + "".join(out) + '"'


@pytest.mark.parametrize("byte", range(0x80))
def test_php_json_escapes_every_ascii_byte_as_php(byte: int) -> None:
    ch = chr(byte)
    for text in (ch, f"a{ch}b", ch * 3, f"\\{ch}", f"\\\\{ch}\\"):
        assert php_json_string(text) == _php_rule(text)
        assert php_json({"k": [text]}) == '{\n    "k": [\n        ' + _php_rule(text) + "\n    ]\n}"


def test_php_json_leaves_del_raw_but_not_escaped_text_that_looks_like_it() -> None:
    assert php_json_string("\x7f") == '"\x7f"'
    assert php_json_string("\\u007f") == '"\\\\u007f"'        # a backslash, then text
    assert php_json_string("\\\x7f") == '"\\\\\x7f"'          # a backslash, then DEL
    assert php_json_string("é😀\x7f") == '"\\u00e9\\ud83d\\ude00\x7f"'
    assert json.loads(php_json_string("x\x7f\\u007f")) == "x\x7f\\u007f"


_JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text() | st.floats(allow_nan=False),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                               max_size=4)
    | st.tuples(inner, inner),
    max_leaves=20)


@settings(max_examples=400, deadline=None)
@given(_JSON_VALUES)
def test_php_json_writes_what_json_dumps_writes(value: object) -> None:
    """The fast pretty printer is ``json.dumps(indent=4)`` exactly (then PHP's escapes),
    floats and all other values included (they take json.dumps's own path)."""
    slow = json.dumps(value, indent=4, ensure_ascii=True).replace("/", "\\/")
    assert php_json(value).replace("\x7f", "\\u007f") == slow.replace("\x7f", "\\u007f")


def test_php_json_takes_json_dumps_path_for_non_string_keys() -> None:
    assert php_json({1: "a/b", "k": 1.5}) == '{\n    "1": "a\\/b",\n    "k": 1.5\n}'
