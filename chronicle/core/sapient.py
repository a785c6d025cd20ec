"""Sapient body signatures: Ed25519 over the exact body bytes (protocol.md "Signatures").

Also a two-pass streaming signer: Ed25519 hashes the message twice (``r = H(prefix||M)``,
then ``k = H(R||A||M)``), so a document too large to hold in memory can be signed by
feeding it twice, chunk by chunk. The result is bit-identical to libsodium's
``crypto_sign_detached`` (Ed25519 is deterministic), which the tests check.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass

from nacl import bindings as sodium
from nacl._sodium import ffi, lib
from nacl.exceptions import CryptoError

from chronicle.core.encoding import b64u_decode, b64u_encode
from chronicle.core.errors import EncodingError

SIGNATURE_HEADER = "Body-Signature-Ed25519"
CLIENT_HEADER = "Chronicle-Client-Key-ID"

PUBLIC_KEY_BYTES = 32
SECRET_KEY_BYTES = 64
SIGNATURE_BYTES = 64


@dataclass(frozen=True, slots=True)
class SigningKey:
    """An Ed25519 key pair in libsodium's layout: ``secret = seed(32) || public(32)``."""

    secret: bytes
    public: bytes

    @classmethod
    def from_seed(cls, seed: bytes) -> SigningKey:
        public, secret = sodium.crypto_sign_seed_keypair(seed)
        return cls(secret=secret, public=public)

    @classmethod
    def generate(cls) -> SigningKey:
        public, secret = sodium.crypto_sign_keypair()
        return cls(secret=secret, public=public)

    @classmethod
    def from_secret(cls, secret: bytes) -> SigningKey:
        """Load a 64-byte secret key, checking its public half matches its seed."""
        if len(secret) != SECRET_KEY_BYTES:
            raise EncodingError(f"secret key must be {SECRET_KEY_BYTES} bytes, got {len(secret)}")
        key = cls.from_seed(secret[:32])
        if key.public != secret[32:]:
            raise EncodingError("secret key is inconsistent: public half does not match the seed")
        return key

    @classmethod
    def from_text(cls, text: str) -> SigningKey:
        """Parse a key file's contents (base64url of the 64-byte secret; newline tolerated)."""
        return cls.from_secret(b64u_decode(text.strip(), SECRET_KEY_BYTES, what="secret key"))

    def to_text(self) -> str:
        return b64u_encode(self.secret)

    @property
    def public_b64(self) -> str:
        return b64u_encode(self.public)

    def sign(self, body: bytes) -> bytes:
        # libsodium directly (PyNaCl's wrapper copies the signed message out whole).
        signed = ffi.new("unsigned char[]", len(body) + SIGNATURE_BYTES)
        if lib.crypto_sign(signed, ffi.NULL, body, len(body), self.secret) != 0:
            raise CryptoError("Ed25519 signing failed")
        return bytes(ffi.buffer(signed, SIGNATURE_BYTES))

    def sign_b64(self, body: bytes) -> str:
        return b64u_encode(self.sign(body))


#: Order of the prime-order subgroup (the scalar field).
L = 2**252 + 27742317777372353535851937790883648493
#: The field prime.
P = 2**255 - 19

# The encodings libsodium refuses as small-order points (ge25519_has_small_order): 0, 1, the
# two y coordinates of the order-8 points, and p-1, p, p+1 (the last two non-canonical).
# The sign bit is ignored, as libsodium does.
_Y_ORDER8 = 2707385501144840649318225287225658788936804267575313519463743609750303402022
_SMALL_ORDER_Y = frozenset({0, 1, _Y_ORDER8, P - _Y_ORDER8, P - 1, P, P + 1})


def has_small_order(encoded: bytes) -> bool:
    """libsodium's ``ge25519_has_small_order``: the encoding is on its blacklist."""
    return int.from_bytes(encoded, "little") & ((1 << 255) - 1) in _SMALL_ORDER_Y


def is_canonical_point(encoded: bytes) -> bool:
    """libsodium's ``ge25519_is_canonical``: the y coordinate (sign bit aside) is < p."""
    return int.from_bytes(encoded, "little") & ((1 << 255) - 1) < P


def is_canonical_scalar(encoded: bytes) -> bool:
    """libsodium's ``sc25519_is_canonical``: the scalar is < L."""
    return int.from_bytes(encoded, "little") < L


def parse_public_key(text: str, *, what: str = "public key") -> bytes:
    """A public key that can verify anything: 32 bytes of canonical base64url encoding a
    canonical curve point outside the small-order set libsodium refuses (such a key would
    be a client no signature can come from, or one whose signatures prove nothing)."""
    raw = b64u_decode(text, PUBLIC_KEY_BYTES, what=what)
    check_public_key(raw, what=what)
    return raw


def check_public_key(raw: bytes, *, what: str = "public key") -> None:
    """Refuse (:class:`EncodingError`) a key libsodium would never verify with."""
    if len(raw) != PUBLIC_KEY_BYTES:
        raise EncodingError(f"Invalid {what}: expected {PUBLIC_KEY_BYTES} bytes")
    if not is_canonical_point(raw) or has_small_order(raw):
        raise EncodingError(f"Invalid {what}: not a usable Ed25519 point (non-canonical or "
                            "of small order)")


def verify(public_key: bytes, body: bytes, signature: bytes) -> bool:
    """libsodium ``crypto_sign_verify_detached`` semantics (canonical S, no small-order R/A)."""
    if len(signature) != SIGNATURE_BYTES or len(public_key) != PUBLIC_KEY_BYTES:
        return False
    # libsodium's crypto_sign_open, as PyNaCl calls it, without the wrapper's copy of the
    # opened message (every publish and every audited entry comes through here).
    signed = signature + body
    opened = ffi.new("unsigned char[]", len(signed))
    rc: int = lib.crypto_sign_open(opened, ffi.NULL, signed, len(signed), public_key)
    return rc == 0


def _reduce(digest64: bytes) -> bytes:
    return bytes(sodium.crypto_core_ed25519_scalar_reduce(digest64))


class StreamingSigner:
    """Sign a message fed twice: first every chunk to :meth:`first`, then again to :meth:`second`.

    Usage::

        s = StreamingSigner(key)
        for chunk in message(): s.first(chunk)
        for chunk in message(): s.second(chunk)
        signature = s.signature()
    """

    def __init__(self, key: SigningKey) -> None:
        expanded = hashlib.sha512(key.secret[:32]).digest()
        scalar = bytearray(expanded[:32])
        scalar[0] &= 248
        scalar[31] &= 127
        scalar[31] |= 64
        self._a = _reduce(bytes(scalar) + bytes(32))
        self._public = key.public
        self._h1 = hashlib.sha512(expanded[32:])
        self._h2: hashlib._Hash | None = None
        self._r = b""
        self._R = b""

    def first(self, chunk: bytes) -> None:
        if self._h2 is not None:
            raise RuntimeError("first pass already finished")
        self._h1.update(chunk)

    def _start_second(self) -> hashlib._Hash:
        if self._h2 is None:
            self._r = _reduce(self._h1.digest())
            self._R = bytes(sodium.crypto_scalarmult_ed25519_base_noclamp(self._r))
            self._h2 = hashlib.sha512(self._R + self._public)
        return self._h2

    def second(self, chunk: bytes) -> None:
        self._start_second().update(chunk)

    def signature(self) -> bytes:
        h2 = self._start_second()
        k = _reduce(h2.digest())
        s = sodium.crypto_core_ed25519_scalar_add(
            self._r, sodium.crypto_core_ed25519_scalar_mul(k, self._a))
        return self._R + bytes(s)


def sign_chunks(key: SigningKey, first: Iterable[bytes], second: Iterable[bytes]) -> bytes:
    """Convenience wrapper: two iterables over the same message."""
    signer = StreamingSigner(key)
    for chunk in first:
        signer.first(chunk)
    for chunk in second:
        signer.second(chunk)
    return signer.signature()
