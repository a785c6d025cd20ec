"""chronicle.core.verify (and the sans-I/O document parser / audit engine built on it).

The streaming Ed25519 verifier is checked against libsodium's own verify (through PyNaCl)
on random and on crafted signatures; the chain verifier against the recorded PHP exports
and damaged copies of them.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import os
import random
from typing import Any

import pytest
from nacl import bindings as sodium

from chronicle.audit.engine import ChainAuditor
from chronicle.client import sigworker
from chronicle.client.sigpool import ROW_BYTES, InOrder, SignaturePool
from chronicle.core.blakechain import ChainBuilder
from chronicle.core.document import DocumentParser
from chronicle.core.encoding import b64u_decode, b64u_encode
from chronicle.core.sapient import L, P, SigningKey, has_small_order, is_canonical_point
from chronicle.core.sapient import verify as nacl_verify
from chronicle.core.verify import (
    EXPORT_KEYS,
    ROW_KEYS,
    BrokenLinkError,
    ChainFault,
    ChainState,
    ChainVerifier,
    EntrySignatureError,
    HashMismatchError,
    MalformedError,
    SignedContents,
    StreamingVerifier,
    verify_batch,
    verify_row,
)
from tests.helpers import VECTORS, load_vector

RNG = random.Random(1234)
Y8 = 2707385501144840649318225287225658788936804267575313519463743609750303402022
SMALL_ORDER_Y = [0, 1, Y8, P - Y8, P - 1, P, P + 1]


def streamed(publickey: bytes, message: bytes, signature: bytes) -> bool:
    verifier = StreamingVerifier(publickey, signature)
    pos = 0
    while pos < len(message):
        step = RNG.choice([1, 3, 17, 64, 1000])
        verifier.update(message[pos:pos + step])
        pos += step
    return verifier.verify()


def agree(publickey: bytes, message: bytes, signature: bytes) -> bool:
    """Both verifiers give the same answer; return it."""
    ours = streamed(publickey, message, signature)
    assert ours == nacl_verify(publickey, message, signature), (publickey.hex(), signature.hex())
    return ours


def enc(y: int, sign: int = 0) -> bytes:
    return (y | (sign << 255)).to_bytes(32, "little")


# --- streaming Ed25519 ------------------------------------------------------------------------

def test_streaming_matches_libsodium_on_random_signatures() -> None:
    for _ in range(150):
        key = SigningKey.generate()
        message = os.urandom(RNG.randrange(0, 2000))
        signature = key.sign(message)
        assert agree(key.public, message, signature)
        flipped = bytearray(signature)
        flipped[RNG.randrange(64)] ^= 1 << RNG.randrange(8)
        assert not agree(key.public, message, bytes(flipped))
        if message:
            tampered = bytearray(message)
            tampered[RNG.randrange(len(message))] ^= 1
            assert not agree(key.public, bytes(tampered), signature)
        wrong_key = SigningKey.generate().public
        assert not agree(wrong_key, message, signature)


def test_non_canonical_s_is_rejected() -> None:
    key = SigningKey.generate()
    message = b"malleability"
    signature = key.sign(message)
    s = int.from_bytes(signature[32:], "little")
    for bad_s in (s + L, L, 2**256 - 1, L + 1):
        if bad_s >= 2**256:
            continue
        forged = signature[:32] + bad_s.to_bytes(32, "little")
        assert not agree(key.public, message, forged)


def test_small_order_r_and_a_are_rejected() -> None:
    key = SigningKey.generate()
    message = b"small order"
    signature = key.sign(message)
    for y in SMALL_ORDER_Y:
        for sign in (0, 1):
            point = enc(y, sign)
            assert has_small_order(point)
            assert not agree(key.public, message, point + signature[32:])
            assert not agree(point, message, signature)
            # The classic "verifies for every message" forgery: A small order, R = 0, S = 0.
            assert not agree(point, message, enc(1) + bytes(32))


def test_non_canonical_points_are_rejected() -> None:
    key = SigningKey.generate()
    message = b"canonical"
    signature = key.sign(message)
    for k in range(2, 19):  # p+2 .. p+18: y >= p, not on the small-order blacklist
        point = enc(P + k)
        assert not is_canonical_point(point)
        assert not agree(point, message, signature)
        assert not agree(key.public, message, point + signature[32:])
    # A valid R with its sign bit flipped is another point: never the right one.
    assert not agree(key.public, message,
                     bytes(signature[:31]) + bytes([signature[31] ^ 0x80]) + signature[32:])


def test_points_off_the_curve_are_rejected() -> None:
    key = SigningKey.generate()
    message = b"off curve"
    signature = key.sign(message)
    rejected = 0
    for y in range(2, 60):
        point = enc(y)
        if sodium.crypto_core_ed25519_is_valid_point(point):
            continue
        assert not agree(point, message, signature)
        assert not agree(key.public, message, point + signature[32:])
        rejected += 1
    assert rejected > 10


def test_zero_scalar_does_not_crash_and_is_rejected() -> None:
    key = SigningKey.generate()
    assert not agree(key.public, b"zero", key.sign(b"zero")[:32] + bytes(32))


def test_mixed_order_public_key_follows_libsodium() -> None:
    """libsodium's check is cofactorless and accepts a key with a torsion component when
    the equation holds: the fallback path must give exactly the same answers."""
    seed = hashlib.sha256(b"mixed order").digest()
    key = SigningKey.from_seed(seed)
    expanded = bytearray(hashlib.sha512(seed).digest()[:32])
    expanded[0] &= 248
    expanded[31] &= 127
    expanded[31] |= 64
    a = sodium.crypto_core_ed25519_scalar_reduce(bytes(expanded) + bytes(32))
    mixed = sodium.crypto_core_ed25519_add(key.public, enc(Y8))
    assert not sodium.crypto_core_ed25519_is_valid_point(mixed)
    message = b"torsion"
    outcomes = set()
    # Nonces from a counter, not os.urandom: the answer is True when k is a multiple of 8
    # (1 in 8), so random nonces gave all-False once in ~600 runs.
    for i in range(48):
        r = sodium.crypto_core_ed25519_scalar_reduce(hashlib.sha512(b"r%d" % i).digest())
        big_r = sodium.crypto_scalarmult_ed25519_base_noclamp(r)
        k = sodium.crypto_core_ed25519_scalar_reduce(
            hashlib.sha512(big_r + mixed + message).digest())
        s = sodium.crypto_core_ed25519_scalar_add(r, sodium.crypto_core_ed25519_scalar_mul(k, a))
        outcomes.add(agree(mixed, message, big_r + s))
    assert outcomes == {True, False}


def test_recorded_export_signatures_verify_streaming() -> None:
    index = load_vector("exports/index.json")
    for item in index.values():
        body = (VECTORS / "exports" / item["file"]).read_bytes()
        key = b64u_decode(item["server_publickey"], 32)
        signature = b64u_decode(item["body_signature_ed25519"], 64)
        assert agree(key, body, signature)
        assert not agree(key, body + b" ", signature)


def test_verify_batch_reports_positions() -> None:
    key = SigningKey.generate()
    items = [(key.public, key.sign(b"m%d" % i), b"m%d" % i) for i in range(10)]
    items[3] = (key.public, items[3][1], b"changed")
    items[7] = (key.public, items[7][1][:63], b"m7")
    assert verify_batch(items) == [3, 7]


# --- the chain --------------------------------------------------------------------------------

def export_rows(name: str) -> list[dict[str, Any]]:
    return json.loads((VECTORS / "exports" / name).read_text())["results"]


def run(rows: list[Any], **kwargs: Any) -> ChainVerifier:
    verifier = ChainVerifier(**kwargs)
    for row in rows:
        signed = verifier.check(row)
        if not nacl_verify(signed.publickey, signed.contents, signed.signature):
            raise EntrySignatureError("bad", index=signed.index, field="signature")
    return verifier


@pytest.mark.parametrize("name", ["A-final-export.body.json", "B-final-export.body.json",
                                  "B-final-replica-export.body.json"])
def test_recorded_exports_verify(name: str) -> None:
    rows = export_rows(name)
    verifier = run(rows, track_hashstate=True)
    assert verifier.count == len(rows)
    assert b64u_encode(verifier.last_summaryhash or b"") == rows[-1]["summary"]


def test_replica_first_prev_empty_string_is_null() -> None:
    rows = export_rows("B-final-replica-export.body.json")
    assert rows[0]["prev"] == ""
    run(rows)
    rows = export_rows("A-final-export.body.json")
    rows[5]["prev"] = ""
    with pytest.raises(BrokenLinkError) as info:
        run(rows)
    assert info.value.index == 5


def test_hash_state_matches_php() -> None:
    """The state saved for incremental audits is libsodium's, byte-identical to PHP's."""
    stored = load_vector("hashchains.json")["A"]["entries"]
    rows = export_rows("A-final-export.body.json")
    for cut in (1, 17, len(rows)):
        state = run(rows[:cut], track_hashstate=True).state()
        assert state.hashstate is not None
        assert b64u_encode(state.hashstate) == stored[cut - 1]["hashstate"]


DAMAGE = {
    "body byte": (lambda r: r[5].update(contents=r[5]["contents"][:-1] + "?"),
                  EntrySignatureError, 5, "signature"),
    "forged signature": (lambda r: r[9].update(signature=SigningKey.generate().sign_b64(
        r[9]["contents"].encode())), EntrySignatureError, 9, "signature"),
    "swapped": (lambda r: r.__setitem__(slice(7, 9), [r[8], r[7]]), BrokenLinkError, 7, "prev"),
    "removed": (lambda r: r.pop(10), BrokenLinkError, 10, "prev"),
    "altered summary": (lambda r: r[12].update(summary=r[11]["summary"]),
                        HashMismatchError, 12, "summary"),
    "altered hash": (lambda r: r[3].update(hash=r[4]["hash"]), HashMismatchError, 3, "hash"),
    "truncated head": (lambda r: r.pop(0), BrokenLinkError, 0, "prev"),
    "missing field": (lambda r: r[2].pop("created"), MalformedError, 2, "created"),
    "bad base64": (lambda r: r[4].update(publickey="not base64"), MalformedError, 4,
                   "publickey"),
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_damaged_chains_give_the_first_fault(damage: str) -> None:
    mutate, cls, index, field = DAMAGE[damage]
    rows = export_rows("A-final-export.body.json")
    mutate(rows)
    with pytest.raises(cls) as info:
        run(rows)
    assert (info.value.index, info.value.field) == (index, field)


def test_resume_from_state() -> None:
    rows = export_rows("A-final-export.body.json")
    first = run(rows[:17], track_hashstate=True)
    state = ChainState.from_dict(json.loads(json.dumps(first.state().as_dict())))
    second = run(rows[17:], start=state)
    assert second.count == len(rows)
    assert b64u_encode(second.last_summaryhash or b"") == rows[-1]["summary"]
    bad = copy.deepcopy(rows[17:])
    bad[2]["summary"] = bad[1]["summary"]
    with pytest.raises(HashMismatchError) as info:
        run(bad, start=state)
    assert info.value.index == 19
    # Without a hash state only links and currhashes can be checked.
    linked = run(bad, start=ChainState(17, state.currhash, state.summaryhash))
    assert not linked.checks_summary


def test_state_from_dict_refuses_garbage() -> None:
    for data in (None, [], {"count": -1}, {"count": 1}, {"count": 0, "currhash": "x"},
                 {"count": True}):
        with pytest.raises(MalformedError):
            ChainState.from_dict(data)


def test_verify_row_for_single_answers() -> None:
    exchanges = load_vector("exchanges.json")["exchanges"]
    lookup = next(e for e in exchanges if e["label"].endswith("lookup by currhash"))
    row = json.loads(lookup["response"]["body_text"])["results"][0]
    signed = verify_row(row, keys=ROW_KEYS)
    assert signed.contents == row["contents"].encode()
    row["contents"] += "!"
    with pytest.raises(EntrySignatureError):
        verify_row(row, keys=ROW_KEYS)


def test_malformed_rows_raise_only_chain_faults() -> None:
    """Like sigstore: hostile input surfaces as our error, never a raw ValueError."""
    base = export_rows("A-final-export.body.json")[:3]
    values: list[Any] = [None, 1, 1.5, True, "", "x" * 44, [], {}, "=" * 44, "\ud800",
                         "AAAA", base[1]["hash"]]
    for _ in range(400):
        rows = copy.deepcopy(base)
        target = RNG.randrange(3)
        if RNG.random() < 0.1:
            rows[target] = RNG.choice(values)
        else:
            rows[target][RNG.choice(list(rows[target]))] = RNG.choice(values)
        with contextlib.suppress(ChainFault):
            run(rows)


# --- the document parser ------------------------------------------------------------------------

def documents() -> list[bytes]:
    bodies = [(VECTORS / "exports" / name).read_bytes()
              for name in ("A-final-export.body.json", "B-final-replica-export.body.json")]
    for exchange in load_vector("exchanges.json")["exchanges"]:
        text = exchange["response"]["body_text"]
        if text and text.startswith("{"):
            bodies.append(text.encode())
    compact = json.dumps(json.loads(bodies[0]), separators=(",", ":")).encode()
    unicode = json.dumps(json.loads(bodies[0]), indent="\t", ensure_ascii=False).encode()
    return [*bodies, compact, unicode]


def test_parser_equals_json_loads_whatever_the_chunking() -> None:
    for body in documents():
        parser = DocumentParser()
        rows: list[Any] = []
        pos = 0
        while pos < len(body):
            step = RNG.choice([1, 2, 5, 64, 4096, 1 << 20])
            rows += parser.feed(body[pos:pos + step])
            pos += step
        rows += parser.close()
        expected = json.loads(body)
        results = expected.pop("results", None) if isinstance(expected.get("results"),
                                                               list) else None
        assert parser.header == expected
        assert rows == (results or [])


@pytest.mark.parametrize("body", [b"", b"{", b'{"a": 1', b"[1]", b'{"a": 1}x', b'{"a": 1, }',
                                  b'{"results": [1,]}', b'{"results": [1 2]}',
                                  b'{"a": 1, "a": 2}', b'{"results": [], "results": []}',
                                  b'{"a": "\xff"}', b'{"a": tru}', b'{"results": [{"x": "a]}',
                                  b'{"total": 12'])
def test_parser_refuses_broken_documents(body: bytes) -> None:
    def parse() -> None:
        parser = DocumentParser()
        for pos in range(len(body)):
            parser.feed(body[pos:pos + 1])
        parser.close()

    with pytest.raises(MalformedError):
        parse()


def test_parser_does_not_split_numbers_at_chunk_boundaries() -> None:
    parser = DocumentParser()
    assert parser.feed(b'{"total": 12') == []
    parser.feed(b'34, "results": []}')
    parser.close()
    assert parser.header == {"total": 1234}


def test_parser_memory_is_bounded_by_the_largest_row() -> None:
    parser = DocumentParser(max_element=1000)
    parser.feed(b'{"results": [' + b'{"a": "x"},' * 1000)
    with pytest.raises(MalformedError):
        parser.feed(b'{"a": "' + b"y" * 5000)


# --- the engine: first fault by index, whatever the scheduling ----------------------------------

def make_chain(count: int, forged: int | None = None) -> list[dict[str, Any]]:
    """A valid chain; with ``forged``, that entry's signature covers other contents while
    every hash is computed over it as stored (only the signature check can tell)."""
    builder = ChainBuilder(None)
    key = SigningKey.from_seed(bytes(32))
    rows = []
    for i in range(count):
        body = b"entry %d" % i
        signature = key.sign(b"forged" if i == forged else body)
        entry = builder.append(body, key.public, signature, "2026-01-01T00:00:00+00:00")
        rows.append({"contents": body.decode(),
                     "prev": b64u_encode(entry.prevhash) if entry.prevhash else None,
                     "hash": b64u_encode(entry.currhash),
                     "summary": b64u_encode(entry.summaryhash), "created": entry.created,
                     "publickey": b64u_encode(entry.publickey),
                     "signature": b64u_encode(entry.signature)})
    return rows


@pytest.mark.parametrize("mode", ["inline", "thread", "process"])
def test_pool_reports_the_lowest_failing_index(mode: str) -> None:
    key = SigningKey.generate()
    with SignaturePool(mode=mode, workers=2) as pool:
        ordered = InOrder(pool, batch_size=7)
        for i in range(100):
            body = b"x%d" % i
            signature = key.sign(body if i not in (41, 77) else b"other")
            ordered.submit(SignedContents(i, key.public, signature, body))
        with pytest.raises(EntrySignatureError) as info:
            ordered.finish()
    assert info.value.index == 41


@pytest.mark.parametrize("mode", ["inline", "thread"])
def test_engine_prefers_an_earlier_signature_fault(mode: str) -> None:
    rows = make_chain(300)
    # Entry 100: a forged signature (contents re-signed by another key, keeping the hashes:
    # the currhash no longer matches either). Entry 250: a broken summary.
    rows[100]["signature"] = SigningKey.generate().sign_b64(rows[100]["contents"].encode())
    rows[250]["summary"] = rows[249]["summary"]
    with SignaturePool(mode=mode, workers=2) as pool:
        auditor = ChainAuditor(InOrder(pool, batch_size=16), keys=EXPORT_KEYS)

        def audit() -> None:
            auditor.feed(rows)
            auditor.finish()

        with pytest.raises(ChainFault) as info:
            audit()
    assert (type(info.value), info.value.index) == (EntrySignatureError, 100)


def test_engine_skips_remembered_prefix_and_checks_it() -> None:
    rows = make_chain(50)
    with SignaturePool(mode="inline") as pool:
        first = ChainAuditor(InOrder(pool), track_hashstate=True)
        first.feed(rows[:30])
        first.finish()
        state = first.verifier.state()
    with SignaturePool(mode="inline") as pool:
        again = ChainAuditor(InOrder(pool), remembered=state, track_hashstate=True)
        again.feed(rows)
        again.finish()
        assert (again.count, again.verified, pool.submitted) == (50, 20, 20)


def test_parser_bounds_members_nesting_and_elements() -> None:
    """Before any signature check, a document cannot make the parser hold much."""
    many = "{" + ",".join(f'"m{i}": {i}' for i in range(65)) + "}"
    with pytest.raises(MalformedError, match="more than 64 members"):
        DocumentParser().feed(many.encode())
    deep = b'{"status": "OK", "results": [' + b"[" * 100_000 + b"]" * 100_000 + b"]}"
    with pytest.raises(MalformedError, match="nested too deeply"):
        parser = DocumentParser()
        parser.feed(deep)
        parser.close()
    with pytest.raises(MalformedError, match="exceeds 1000 bytes"):
        parser = DocumentParser(max_element=1000)
        parser.feed(b'{"results": ["' + b"x" * 5000)


def test_load_object_never_raises_anything_but_malformed() -> None:
    from chronicle.core.document import load_object

    for data, match in ((b"[1]", "not a JSON object"), (b"{", "not JSON"),
                        (b"[" * 100_000, "too large"), (b"[" * 900, "not JSON"),
                        (b" " * 100, "not JSON"),
                        (b"{}" + b" " * 2000, "too large")):
        with pytest.raises(MalformedError, match=match):
            load_object(data, what="the answer", limit=1000)
    assert load_object(b'{"a": 1}', what="x") == {"a": 1}


# --- signature worker framing and the pool's start --------------------------------------------

def _signed_items(count: int, bad: set[int]) -> list[tuple[bytes, bytes, bytes]]:
    key = SigningKey.generate()
    return [(key.public, key.sign(b"other" if i in bad else b"m%d" % i), b"m%d" % i)
            for i in range(count)]


@pytest.mark.parametrize("bad", [set(), {0}, {5}, {11}, {0, 6, 11}])
def test_worker_frames_are_checked_in_place_like_verify_batch(bad: set[int]) -> None:
    items = _signed_items(12, bad)
    items[3] = (items[3][0], items[3][1], b"")  # an empty message keeps its place
    items[3] = (items[3][0], SigningKey.generate().sign(b""), b"")
    items[8] = (b"short key", items[8][1], items[8][2])  # malformed: sent as all zeroes
    body = sigworker.encode(items)
    assert int.from_bytes(body[:8], "big") == len(body) - 8
    want = verify_batch(items)
    assert want == sorted(bad | {3, 8})
    assert sigworker.verify_frames(body[8:]) == want
    decoded = sigworker.decode(body[8:])
    assert [m for _, _, m in decoded] == [m for _, _, m in items]
    assert decoded[8][:2] == (bytes(32), bytes(64))


def test_worker_refuses_a_truncated_request() -> None:
    body = sigworker.encode(_signed_items(3, set()))[8:]
    for cut in (1, 50, 99, 101):
        with pytest.raises(ValueError, match="truncated"):
            sigworker.verify_frames(body[:-cut])


@pytest.mark.parametrize(("size", "processes"), [(0, False), (16384 * ROW_BYTES - 1, False),
                                                 (16384 * ROW_BYTES, True)])
def test_pool_starts_workers_at_once_for_a_large_document(size: int, processes: bool) -> None:
    with SignaturePool(mode="auto", workers=2) as pool:
        pool.expect_bytes(size)
        assert pool.submit(_signed_items(4, {2})).result() == [2]
        assert (len(pool._procs) == 2) is processes
        assert (pool._thread is None) is processes


@pytest.mark.parametrize("bad", [0, 6, 7, 13, 20, 27, 34, 55])
def test_auditor_reports_the_bad_entry_whichever_worker_checks_it(bad: int) -> None:
    rows = make_chain(56, forged=bad)
    with SignaturePool(mode="auto", workers=2, threshold=1) as pool:
        pool.expect_bytes(ROW_BYTES)
        # Batches of 7 alternate between the two worker processes.
        auditor = ChainAuditor(InOrder(pool, batch_size=7), keys=EXPORT_KEYS)
        with pytest.raises(ChainFault) as info:
            auditor.feed(rows)
            auditor.finish()
        assert len(pool._procs) == 2
    assert (type(info.value), info.value.index, info.value.field) == \
        (EntrySignatureError, bad, "signature")


def test_parser_refuses_a_number_python_will_not_convert() -> None:
    """Python refuses integers of over 4,300 digits with a plain ValueError: the parser
    says MalformedError, fed whole or byte by byte, in the header or in a row."""
    digits = b"7" * 5000
    for body in (b'{"n": ' + digits + b', "results": []}',
                 b'{"results": [{"n": ' + digits + b"}]}"):
        for step in (len(body), 1):
            parser = DocumentParser()
            with pytest.raises(MalformedError, match="Exceeds the limit"):
                for pos in range(0, len(body), step):
                    parser.feed(body[pos:pos + step])
                parser.close()
