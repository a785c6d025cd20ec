"""The sealed vendor key (chronicle/release/keystore.py): round trip, wrong passphrase,
tampering, malformed files, each with its exact error."""

from __future__ import annotations

import json

import pytest

from chronicle.core.encoding import b64u_decode, b64u_encode
from chronicle.core.sapient import SigningKey
from chronicle.release.keystore import (
    FORMAT,
    STRENGTHS,
    KeyFileError,
    WrongPassphrase,
    seal,
    sealed_public_key,
    unseal,
)

FAST = "interactive"


@pytest.fixture(scope="module")
def sealed() -> tuple[SigningKey, bytes]:
    key = SigningKey.generate()
    return key, seal(key, b"correct horse", strength=FAST)


def _edit(data: bytes, **changes: object) -> bytes:
    doc = json.loads(data)
    doc.update(changes)
    return json.dumps(doc).encode()


def test_round_trip(sealed: tuple[SigningKey, bytes]) -> None:
    key, data = sealed
    doc = json.loads(data)
    assert list(doc) == ["format", "kdf", "opslimit", "memlimit", "salt", "public-key", "box"]
    assert doc["format"] == FORMAT and doc["kdf"] == "argon2id"
    assert (doc["opslimit"], doc["memlimit"]) == STRENGTHS[FAST]
    assert sealed_public_key(data) == key.public_b64
    assert unseal(data, b"correct horse") == key
    assert key.to_text() not in data.decode()


def test_two_seals_of_one_key_differ() -> None:
    key = SigningKey.generate()
    first, second = (seal(key, b"pw", strength=FAST) for _ in range(2))
    assert json.loads(first)["salt"] != json.loads(second)["salt"]
    assert unseal(first, b"pw") == unseal(second, b"pw") == key


def test_wrong_passphrase(sealed: tuple[SigningKey, bytes]) -> None:
    with pytest.raises(WrongPassphrase) as err:
        unseal(sealed[1], b"Correct horse")
    assert err.value.message == \
        "wrong passphrase (or the key file's ciphertext was altered)"


def test_tampered_ciphertext(sealed: tuple[SigningKey, bytes]) -> None:
    box = bytearray(b64u_decode(json.loads(sealed[1])["box"]))
    box[40] ^= 1
    with pytest.raises(WrongPassphrase):
        unseal(_edit(sealed[1], box=b64u_encode(bytes(box))), b"correct horse")


def test_tampered_salt_or_cost_fails_to_open(sealed: tuple[SigningKey, bytes]) -> None:
    salt = bytearray(b64u_decode(json.loads(sealed[1])["salt"]))
    salt[0] ^= 1
    with pytest.raises(WrongPassphrase):
        unseal(_edit(sealed[1], salt=b64u_encode(bytes(salt))), b"correct horse")
    with pytest.raises(WrongPassphrase):
        unseal(_edit(sealed[1], opslimit=STRENGTHS[FAST][0] + 1), b"correct horse")


def test_swapped_public_key_is_caught(sealed: tuple[SigningKey, bytes]) -> None:
    other = SigningKey.generate().public_b64
    data = _edit(sealed[1], **{"public-key": other})
    assert sealed_public_key(data) == other   # unproven until opened
    with pytest.raises(KeyFileError) as err:
        unseal(data, b"correct horse")
    assert err.value.message == \
        'sealed key file: field "public-key" does not match the sealed secret key'


@pytest.mark.parametrize(("changes", "message"), [
    ({"format": "v0"}, f'sealed key file: field "format" must be "{FORMAT}"'),
    ({"kdf": "scrypt"}, 'sealed key file: field "kdf" must be "argon2id"'),
    ({"opslimit": 1}, 'sealed key file: field "opslimit" must be an integer from 2 to 4'),
    ({"opslimit": True}, 'sealed key file: field "opslimit" must be an integer from 2 to 4'),
    ({"memlimit": 1 << 40},
     'sealed key file: field "memlimit" must be an integer from 67108864 to 1073741824'),
    ({"salt": "AAAA"}, 'sealed key file: field "salt" must be base64url of 16 bytes'),
    ({"box": 7}, 'sealed key file: field "box" must be base64url of 104 bytes'),
    ({"public-key": "x"}, 'sealed key file: field "public-key" must be base64url of 32 bytes'),
    ({"extra": 1}, 'sealed key file: field "extra" is not allowed'),
])
def test_malformed_fields(sealed: tuple[SigningKey, bytes], changes: dict[str, object],
                          message: str) -> None:
    with pytest.raises(KeyFileError) as err:
        unseal(_edit(sealed[1], **changes), b"correct horse")
    assert err.value.message == message


def test_missing_field_and_not_json(sealed: tuple[SigningKey, bytes]) -> None:
    doc = json.loads(sealed[1])
    del doc["salt"]
    with pytest.raises(KeyFileError) as err:
        unseal(json.dumps(doc).encode(), b"x")
    assert err.value.message == 'sealed key file: field "salt" is missing'
    with pytest.raises(KeyFileError) as err:
        sealed_public_key(b"\xff not json")
    assert err.value.message == "not a sealed key file: not JSON"
    with pytest.raises(KeyFileError) as err:
        sealed_public_key(b"[]")
    assert err.value.message == "not a sealed key file: not a JSON object"


def test_empty_passphrase_and_unknown_strength_are_refused() -> None:
    key = SigningKey.generate()
    with pytest.raises(Exception, match="the passphrase is empty"):
        seal(key, b"")
    with pytest.raises(Exception, match="unknown key derivation strength 'low'"):
        seal(key, b"pw", strength="low")
