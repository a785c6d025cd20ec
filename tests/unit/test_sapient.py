"""Sapient signatures: deterministic Ed25519 reproduces PHP's recorded signatures exactly."""

from __future__ import annotations

import os

import pytest

from chronicle.core.encoding import b64u_decode, b64u_encode
from chronicle.core.errors import EncodingError
from chronicle.core.sapient import SigningKey, StreamingSigner, sign_chunks, verify
from tests.helpers import VECTORS, load_vector

KEYS = load_vector("keys.json")
EXCHANGES = load_vector("exchanges.json")["exchanges"]
SERVER_KEYS = {name: SigningKey.from_text(s["secretkey"]) for name, s in KEYS["servers"].items()}


def test_key_files_load_and_match_their_seed() -> None:
    for server in KEYS["servers"].values():
        key = SigningKey.from_text(server["secretkey"] + "\n")
        assert key.public_b64 == server["publickey"]
        assert key.secret[:32].hex() == server["ed25519_seed_hex"]


def test_inconsistent_secret_key_is_refused() -> None:
    a, b = SigningKey.generate(), SigningKey.generate()
    with pytest.raises(EncodingError, match="inconsistent"):
        SigningKey.from_secret(a.secret[:32] + b.public)
    with pytest.raises(EncodingError):
        SigningKey.from_text("not a key")


SIGNED = [e for e in EXCHANGES if e["checks"]["response_signature_valid_for_server_key"]]


@pytest.mark.parametrize("ex", SIGNED, ids=[str(e["id"]) for e in SIGNED])
def test_signing_recorded_responses_reproduces_php_signature(ex: dict) -> None:
    body = ex["response"]["body_text"].encode("utf-8")
    header = dict((k.lower(), v) for k, v in ex["response"]["headers"])
    expected = header["body-signature-ed25519"]
    assert SERVER_KEYS[ex["server"]].sign_b64(body) == expected


def test_recorded_request_signatures_verify_with_the_named_keys() -> None:
    clients = {f"client {n}": b64u_decode(c["publickey"], 32)
               for n, c in KEYS["clients"].items()}
    clients.update({f"server {n}": b64u_decode(s["publickey"], 32)
                    for n, s in KEYS["servers"].items()})
    checked = 0
    for ex in EXCHANGES:
        names = ex["checks"]["request_signature_verifies_with"]
        if not names or ex["request"].get("body_text") is None:
            continue
        hdr = {k.lower(): v for k, v in ex["request"]["headers"]}
        sig = b64u_decode(hdr["body-signature-ed25519"], 64)
        body = ex["request"]["body_text"].encode()
        for name in names:
            assert verify(clients[name], body, sig), (ex["id"], name)
            checked += 1
    assert checked > 50


def test_streaming_signer_reproduces_recorded_export_signatures() -> None:
    index = load_vector("exports/index.json")
    for item in index.values():
        body = (VECTORS / "exports" / item["file"]).read_bytes()
        key = SERVER_KEYS[item["server"]]
        chunks = [body[i:i + 1000] for i in range(0, len(body), 1000)]
        sig = sign_chunks(key, chunks, iter(chunks))
        assert b64u_encode(sig) == item["body_signature_ed25519"]


@pytest.mark.parametrize("size", [0, 1, 63, 64, 65, 4096, 100_003])
def test_streaming_signer_equals_one_shot(size: int) -> None:
    key = SigningKey.generate()
    msg = os.urandom(size)
    signer = StreamingSigner(key)
    for i in range(0, size, 777):
        signer.first(msg[i:i + 777])
    signer.second(msg)
    assert signer.signature() == key.sign(msg)


def test_streaming_signer_refuses_first_pass_after_second() -> None:
    signer = StreamingSigner(SigningKey.generate())
    signer.second(b"x")
    with pytest.raises(RuntimeError):
        signer.first(b"y")


def test_verify_rejects_tampering() -> None:
    key = SigningKey.generate()
    sig = key.sign(b"body")
    assert verify(key.public, b"body", sig)
    assert not verify(key.public, b"body!", sig)
    assert not verify(key.public, b"body", sig[:-1] + bytes([sig[-1] ^ 1]))
    assert not verify(key.public, b"body", sig[:63])
    assert not verify(SigningKey.generate().public, b"body", sig)
