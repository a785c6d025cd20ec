"""The chain math against every row PHP Chronicle 1.3.1 stored (hashchains.json)."""

from __future__ import annotations

import base64

import pytest

from chronicle.core.blakechain import (
    ChainBuilder,
    ChainHead,
    SummaryState,
    currhash,
    entry_preimage,
)
from chronicle.core.encoding import b64u_decode, b64u_encode
from chronicle.core.errors import IntegrityError
from chronicle.core.sapient import verify
from tests.helpers import load_vector

CHAINS = load_vector("hashchains.json")


@pytest.mark.parametrize("name", sorted(CHAINS))
def test_every_recorded_row_recomputes(name: str) -> None:
    rows = CHAINS[name]["entries"]
    builder = ChainBuilder(None)
    for i, row in enumerate(rows):
        pk, sig = b64u_decode(row["publickey"], 32), b64u_decode(row["signature"], 64)
        contents = row["contents"].encode("utf-8")
        preimage = entry_preimage(row["created"], pk, sig, contents)
        assert preimage == base64.b64decode(row["derived"]["preimage_b64"]), (name, i)
        key = base64.b64decode(row["derived"]["blake2b_key_b64"])
        assert builder.prevhash == (key or None), (name, i)
        entry = builder.append(contents, pk, sig, row["created"])
        assert entry.index == i
        assert b64u_encode(entry.currhash) == row["currhash"], (name, i)
        assert b64u_encode(entry.summaryhash) == row["summaryhash"], (name, i)
        assert b64u_encode(entry.hashstate) == row["hashstate"], (name, i)
        assert verify(pk, contents, sig), (name, i)


def test_replica_first_prevhash_is_stored_empty() -> None:
    assert CHAINS["B-replica-of-A"]["entries"][0]["prevhash"] == ""
    assert CHAINS["A"]["entries"][0]["prevhash"] is None


def test_resume_from_stored_state_matches_full_rehash() -> None:
    rows = CHAINS["A"]["entries"]
    mid = rows[10]
    head = ChainHead(10, b64u_decode(mid["currhash"]), b64u_decode(mid["summaryhash"]),
                     b64u_decode(mid["hashstate"]), mid["created"])
    builder = ChainBuilder(head)
    for i, row in enumerate(rows[11:], start=11):
        entry = builder.append(row["contents"].encode(), b64u_decode(row["publickey"]),
                               b64u_decode(row["signature"]), row["created"])
        assert b64u_encode(entry.summaryhash) == row["summaryhash"]
        assert entry.index == i


def test_summary_state_round_trip_and_digest_does_not_finalise() -> None:
    state = SummaryState()
    state.update(b"\x01" * 32)
    copy = SummaryState.from_bytes(state.to_bytes())
    assert copy.digest() == state.digest() == state.digest()
    state.update(b"\x02" * 32)
    copy.update(b"\x02" * 32)
    assert copy.to_bytes() == state.to_bytes()


def test_bad_state_length_is_an_integrity_error() -> None:
    with pytest.raises(IntegrityError):
        SummaryState.from_bytes(b"\x00" * 383)


def test_first_entry_is_unkeyed_and_later_ones_keyed() -> None:
    a = currhash(None, "t", b"p" * 32, b"s" * 64, b"x")
    b = currhash(b"\x00" * 32, "t", b"p" * 32, b"s" * 64, b"x")
    assert a != b


def _state_after(n: int) -> bytes:
    state = SummaryState()
    for i in range(n):
        state.update(bytes([i]) * 32)
    return state.to_bytes()


@pytest.mark.parametrize(("offset", "value"), [
    (352, (257).to_bytes(8, "little")),      # buflen past the 256-byte buffer
    (352, (1 << 40).to_bytes(8, "little")),  # (would write out of bounds in libsodium)
    (80, b"\xff" * 8),                       # finalised (f[0] set)
    (360, b"\x07"),                          # last_node
])
def test_corrupt_state_is_refused_before_libsodium_sees_it(offset: int, value: bytes) -> None:
    raw = bytearray(_state_after(5))
    raw[offset:offset + len(value)] = value
    with pytest.raises(IntegrityError, match="not a valid"):
        SummaryState.from_bytes(bytes(raw))


def test_state_byte_count_must_match_the_entry_count() -> None:
    raw = _state_after(5)
    SummaryState.from_bytes(raw, count=5)
    with pytest.raises(IntegrityError, match="covers 160 bytes, not the 192"):
        SummaryState.from_bytes(raw, count=6)
