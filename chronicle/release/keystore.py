"""A vendor's signing key encrypted at rest with a passphrase (release.md "Secrets").

The key file is one JSON object (docs/vendor.md "The key file"):
``{"format": "chronicle-sealed-key-v1", "kdf": "argon2id", "opslimit", "memlimit",
"salt", "public-key", "box"}``: Argon2id (libsodium's ``crypto_pwhash``, through PyNaCl)
turns the passphrase and the 16-byte salt into a 32-byte key, and XSalsa20-Poly1305
(``SecretBox``, nonce prepended) seals the 64-byte libsodium secret key. The public key is
kept in clear so a profile can name the key without the passphrase; opening checks it
against the decrypted secret, so a swapped public key is caught. Every field is checked
before the (costly) key derivation, and the KDF limits must lie between libsodium's
``INTERACTIVE`` and ``SENSITIVE`` presets. Pure: bytes in, bytes out.
"""

from __future__ import annotations

import json
from typing import Any, Final

import nacl.exceptions
import nacl.pwhash.argon2id as argon2id
import nacl.secret
import nacl.utils

from chronicle.core.encoding import b64u_decode, b64u_encode
from chronicle.core.errors import EncodingError, RequestError
from chronicle.core.sapient import PUBLIC_KEY_BYTES, SECRET_KEY_BYTES, SigningKey

FORMAT: Final = "chronicle-sealed-key-v1"
KDF: Final = "argon2id"

#: name -> (opslimit, memlimit): libsodium's presets.
STRENGTHS: Final[dict[str, tuple[int, int]]] = {
    "interactive": (argon2id.OPSLIMIT_INTERACTIVE, argon2id.MEMLIMIT_INTERACTIVE),
    "moderate": (argon2id.OPSLIMIT_MODERATE, argon2id.MEMLIMIT_MODERATE),
    "sensitive": (argon2id.OPSLIMIT_SENSITIVE, argon2id.MEMLIMIT_SENSITIVE),
}
DEFAULT_STRENGTH: Final = "moderate"
_OPS_RANGE: Final = (argon2id.OPSLIMIT_INTERACTIVE, argon2id.OPSLIMIT_SENSITIVE)
_MEM_RANGE: Final = (argon2id.MEMLIMIT_INTERACTIVE, argon2id.MEMLIMIT_SENSITIVE)
_BOX_BYTES: Final = nacl.secret.SecretBox.NONCE_SIZE + SECRET_KEY_BYTES \
    + nacl.secret.SecretBox.MACBYTES
_FIELDS: Final = ("format", "kdf", "opslimit", "memlimit", "salt", "public-key", "box")


class KeyFileError(RequestError):
    """A key file that is not a well-formed sealed key (the field is named)."""


class WrongPassphrase(RequestError):
    """The passphrase does not open the sealed key (or its ciphertext was altered)."""


def _derive(passphrase: bytes, salt: bytes, opslimit: int, memlimit: int) -> bytes:
    return argon2id.kdf(nacl.secret.SecretBox.KEY_SIZE, passphrase, salt,
                        opslimit=opslimit, memlimit=memlimit)


def seal(key: SigningKey, passphrase: bytes, *, strength: str = DEFAULT_STRENGTH) -> bytes:
    """The key file's bytes for ``key`` under ``passphrase`` (an empty one is refused)."""
    if not passphrase:
        raise RequestError("the passphrase is empty")
    if strength not in STRENGTHS:
        raise RequestError(f"unknown key derivation strength {strength!r}: one of "
                           f"{', '.join(STRENGTHS)}")
    opslimit, memlimit = STRENGTHS[strength]
    salt = nacl.utils.random(argon2id.SALTBYTES)
    box = nacl.secret.SecretBox(_derive(passphrase, salt, opslimit, memlimit))
    sealed = bytes(box.encrypt(key.secret))
    doc = {"format": FORMAT, "kdf": KDF, "opslimit": opslimit, "memlimit": memlimit,
           "salt": b64u_encode(salt), "public-key": key.public_b64,
           "box": b64u_encode(sealed)}
    return (json.dumps(doc, indent=2) + "\n").encode("ascii")


def _header(data: bytes) -> dict[str, Any]:
    try:
        doc = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise KeyFileError("not a sealed key file: not JSON") from None
    if not isinstance(doc, dict):
        raise KeyFileError("not a sealed key file: not a JSON object")
    for name in doc:
        if name not in _FIELDS:
            raise KeyFileError(f'sealed key file: field "{name}" is not allowed')
    for name in _FIELDS:
        if name not in doc:
            raise KeyFileError(f'sealed key file: field "{name}" is missing')
    if doc["format"] != FORMAT:
        raise KeyFileError(f'sealed key file: field "format" must be "{FORMAT}"')
    if doc["kdf"] != KDF:
        raise KeyFileError(f'sealed key file: field "kdf" must be "{KDF}"')
    for name, (low, high) in (("opslimit", _OPS_RANGE), ("memlimit", _MEM_RANGE)):
        value = doc[name]
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise KeyFileError(f'sealed key file: field "{name}" must be an integer from '
                               f"{low} to {high}")
    for name, size in (("salt", argon2id.SALTBYTES), ("public-key", PUBLIC_KEY_BYTES),
                       ("box", _BOX_BYTES)):
        value = doc[name]
        try:
            if not isinstance(value, str):
                raise EncodingError("not a string")
            b64u_decode(value, size)
        except EncodingError:
            raise KeyFileError(f'sealed key file: field "{name}" must be base64url of '
                               f"{size} bytes") from None
    return doc


def sealed_public_key(data: bytes) -> str:
    """The public key a sealed key file names (no passphrase needed; not yet proven)."""
    return str(_header(data)["public-key"])


def unseal(data: bytes, passphrase: bytes) -> SigningKey:
    """Open a sealed key file: :class:`KeyFileError` if malformed, :class:`WrongPassphrase`
    if the passphrase (or the ciphertext) is wrong."""
    doc = _header(data)
    secret_key = _derive(passphrase, b64u_decode(doc["salt"]), doc["opslimit"], doc["memlimit"])
    try:
        secret = nacl.secret.SecretBox(secret_key).decrypt(b64u_decode(doc["box"]))
    except nacl.exceptions.CryptoError:
        raise WrongPassphrase("wrong passphrase (or the key file's ciphertext was "
                              "altered)") from None
    try:
        key = SigningKey.from_secret(bytes(secret))
    except EncodingError as exc:
        raise KeyFileError(f"sealed key file: the sealed secret key is damaged: "
                           f"{exc.message}") from None
    if key.public_b64 != doc["public-key"]:
        raise KeyFileError('sealed key file: field "public-key" does not match the sealed '
                           "secret key")
    return key
