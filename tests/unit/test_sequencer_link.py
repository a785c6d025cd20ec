"""The sequencer link's frames (``serve --workers N``): exact round trips, and every
malformed frame refused with :class:`FrameError` rather than misread."""

from __future__ import annotations

import struct

import pytest

from chronicle.core.blakechain import ChainBuilder
from chronicle.core.errors import ChronicleError, OverloadedError
from chronicle.server.sequencer_link import (
    Forwarded,
    FrameError,
    decode_answer,
    decode_request,
    encode_entry,
    encode_error,
    encode_request,
)

REQ = Forwarded("", "client-1", b"\x01" * 32, b"\x02" * 64, b'{"now": "x"} body \xe2\x82\xac')


def _body(frame: bytes) -> bytes:
    """What the reader hands the decoder: everything after the length field, checked."""
    (size,) = struct.unpack_from("!I", frame)
    assert size == len(frame) - 4
    return frame[4:]


def test_request_round_trip() -> None:
    for req in (REQ, Forwarded("tenant-ü", "", b"\x03" * 32, b"\x04" * 64, b"")):
        assert decode_request(_body(encode_request(7, req))) == (7, req)


def test_entry_answer_carries_the_receipt() -> None:
    entry = ChainBuilder(None).append(REQ.contents, REQ.publickey, REQ.signature,
                                      "2026-11-30T19:00:00+00:00")
    got = decode_answer(_body(encode_entry(9, entry)), REQ)
    assert not isinstance(got, ChronicleError)
    assert got.receipt() == entry.receipt()
    assert (got.index, got.contents, got.publickey, got.signature) == \
        (entry.index, entry.contents, entry.publickey, entry.signature)


def test_error_answer_keeps_status_message_and_headers() -> None:
    frame = _body(encode_error(3, OverloadedError("Server is busy", retry_after=2)))
    got = decode_answer(frame, REQ)
    assert isinstance(got, ChronicleError)
    assert (got.status, got.message, got.headers) == (503, "Server is busy",
                                                       {"Retry-After": "2"})


@pytest.mark.parametrize("cut", [0, 5, 12, 12 + len("client-1") + 31,
                                 12 + len("client-1") + 95])
def test_truncated_requests_are_refused(cut: int) -> None:
    with pytest.raises(FrameError):
        decode_request(_body(encode_request(1, REQ))[:cut])


def test_names_that_are_not_utf8_are_refused() -> None:
    frame = bytearray(_body(encode_request(1, REQ)))
    frame[12] = 0xFF  # the first byte of the client id
    with pytest.raises(FrameError, match="UTF-8"):
        decode_request(bytes(frame))


def test_a_request_needs_a_whole_key_and_signature() -> None:
    with pytest.raises(FrameError):
        encode_request(1, Forwarded("", "c", b"\x01" * 31, b"\x02" * 64, b""))


@pytest.mark.parametrize("frame", [
    b"",                                                     # no kind
    struct.pack("!QB", 1, 9),                                # unknown kind
    struct.pack("!QBQ", 1, 0, 5) + b"\x00" * 64,             # entry without created
    struct.pack("!QB", 1, 1) + b"not json",                  # error that is not JSON
    struct.pack("!QB", 1, 1) + b'{"status": 503}',           # error without a message
])
def test_malformed_answers_are_refused(frame: bytes) -> None:
    with pytest.raises(FrameError):
        decode_answer(frame, REQ)
