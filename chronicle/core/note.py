"""C2SP signed notes (c2sp.org/signed-note): note text, signature lines, Ed25519 keys.

A signed note is a text ending in a newline, a blank line, then one or more signature
lines ``— <key name> <base64(key ID ‖ signature)>`` (U+2014 em dash, standard base64
with padding). The whole note is UTF-8 without ASCII control characters other than
newline. Key IDs are ``SHA-256(name ‖ 0x0A ‖ type ‖ public key)[:4]`` (type 0x01 for
Ed25519 note signatures; checkpoint.py adds 0x04 cosignatures).

Verification follows the spec's "Signatures" section: signatures whose (name, key ID)
match no known key are ignored (kept in :attr:`Note.unverified`), a signature from a
known key that fails rejects the whole note, and a note with no verified signature is
rejected. Keys travel as the Go sumdb/note text forms: verifier keys (vkeys)
``<name>+<hex key ID>+<base64(type ‖ public key)>`` and signer keys
``PRIVATE+KEY+<name>+<hex key ID>+<base64(type ‖ seed)>``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import ClassVar, Protocol, Self

from nacl import bindings as sodium

from chronicle.core.errors import EncodingError, IntegrityError
from chronicle.core.sapient import SigningKey, verify

ALG_ED25519 = 0x01
SIGNATURE_PREFIX = "\u2014 "
"""Every signature line starts with an em dash and a space."""
MAX_SIGNATURES = 100
"""Signature lines accepted per note (the spec requires at least 16)."""
MAX_LINE_BYTES = 8192
"""Longest line accepted, text or signature (room for post-quantum signatures)."""
MAX_NOTE_BYTES = 1 << 20

_B64_RE = re.compile(r"\A[A-Za-z0-9+/]*={0,2}\Z")
_CONTROL_RE = re.compile(r"[\x00-\x09\x0b-\x1f]")
_HEX8_RE = re.compile(r"\A[0-9a-f]{8}\Z")


class NoteFormatError(EncodingError):
    """A note, or a text meant to become one, breaks the signed-note format."""


class NoteKeyError(EncodingError):
    """A key name, vkey or signer key is malformed, inconsistent, or ambiguous."""


class NoteSignatureError(IntegrityError):
    """A signature from a known key does not verify: the whole note is rejected."""


class UnverifiedNoteError(IntegrityError):
    """No signature on the note is from a known key. ``note`` has what was parsed."""

    def __init__(self, message: str, note: Note) -> None:
        super().__init__(message, field="signatures")
        self.note = note


# --- encodings ----------------------------------------------------------------------------

def b64encode(raw: bytes) -> str:
    """Standard base64 with padding (RFC 4648 §4), as the C2SP formats use."""
    return base64.b64encode(raw).decode("ascii")


def b64decode(text: str, *, what: str = "value",
              error: type[EncodingError] = NoteFormatError) -> bytes:
    """Decode canonical standard base64 (padding required, no stray bits or characters)."""
    if len(text) % 4 != 0 or not _B64_RE.match(text):
        raise error(f"{what} is not base64")
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise error(f"{what} is not base64") from None
    if base64.b64encode(raw).decode("ascii") != text:
        raise error(f"{what} is not canonical base64")
    return raw


def key_id(name: str, alg: int, public_key: bytes) -> int:
    """``SHA-256(name ‖ 0x0A ‖ alg ‖ public key)[:4]`` as a big-endian uint32."""
    digest = hashlib.sha256(name.encode("utf-8") + b"\n" + bytes((alg,)) + public_key).digest()
    return int.from_bytes(digest[:4], "big")


def is_valid_key_name(name: str) -> bool:
    """Non-empty, no Unicode spaces, no ``+``, no control characters (signed-note "Format")."""
    return bool(name) and "+" not in name and not any(
        c.isspace() or c < " " for c in name)


def check_key_name(name: str) -> None:
    if not is_valid_key_name(name):
        raise NoteKeyError(f"invalid key name {name[:80]!r}: it must be non-empty, without "
                           "spaces or '+'")


def check_note_text(text: str) -> None:
    """The rules for a note text: non-empty, ends in a newline, no control characters."""
    if not text.endswith("\n"):
        raise NoteFormatError("note text must end with a newline")
    match = _CONTROL_RE.search(text)
    if match:
        raise NoteFormatError(f"note text contains control character "
                              f"U+{ord(match.group()):04X} at offset {match.start()}")
    for number, line in enumerate(text.split("\n")[:-1], 1):
        if len(line.encode("utf-8")) > MAX_LINE_BYTES:
            raise NoteFormatError(f"note text line {number} is longer than "
                                  f"{MAX_LINE_BYTES} bytes")


# --- signatures ---------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class NoteSignature:
    """One signature line: key name, key ID and the signature bytes that follow the ID."""

    name: str
    key_id: int
    signature: bytes

    @property
    def key(self) -> tuple[str, int]:
        return self.name, self.key_id

    def line(self) -> str:
        """The signature line, newline included."""
        payload = self.key_id.to_bytes(4, "big") + self.signature
        return f"{SIGNATURE_PREFIX}{self.name} {b64encode(payload)}\n"

    @classmethod
    def parse_line(cls, line: str) -> NoteSignature:
        """Parse one signature line (without its newline)."""
        if len(line.encode("utf-8")) > MAX_LINE_BYTES:
            raise NoteFormatError(f"signature line is longer than {MAX_LINE_BYTES} bytes")
        if not line.startswith(SIGNATURE_PREFIX):
            raise NoteFormatError(f"not a signature line: {line[:80]!r}")
        name, sep, encoded = line[len(SIGNATURE_PREFIX):].partition(" ")
        if not sep or not is_valid_key_name(name):
            raise NoteFormatError(f"signature line has an invalid key name: {line[:80]!r}")
        raw = b64decode(encoded, what=f"signature by {name}")
        if len(raw) < 5:
            raise NoteFormatError(f"signature by {name} is {len(raw)} bytes: too short")
        return cls(name, int.from_bytes(raw[:4], "big"), raw[4:])


def format_key(name: str, kid: int) -> str:
    """``name+hexid``, how the Go tools name a key in messages."""
    return f"{name}+{kid:08x}"


class Verifier(Protocol):
    """Anything that can check note signatures for one (name, key ID)."""

    @property
    def name(self) -> str: ...

    @property
    def key_id(self) -> int: ...

    def verify(self, message: bytes, signature: bytes) -> bool: ...


class Signer(Protocol):
    """Anything that can sign a note text for one (name, key ID)."""

    @property
    def name(self) -> str: ...

    @property
    def key_id(self) -> int: ...

    def sign(self, message: bytes) -> bytes: ...


# --- keys ---------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class VerifierKey:
    """A parsed vkey of any signature type: ``name+hexid+base64(alg ‖ key)``."""

    name: str
    alg: int
    key: bytes

    @property
    def key_id(self) -> int:
        return key_id(self.name, self.alg, self.key)

    def to_text(self) -> str:
        return f"{self.name}+{self.key_id:08x}+{b64encode(bytes((self.alg,)) + self.key)}"

    @classmethod
    def parse(cls, text: str) -> VerifierKey:
        """Parse strictly: valid name, 8 lowercase hex digits that match, canonical base64."""
        parts = text.split("+", 2)
        if len(parts) != 3:
            raise NoteKeyError("verifier key must be <name>+<key id>+<base64 key>")
        name, hexid, encoded = parts
        check_key_name(name)
        if not _HEX8_RE.match(hexid):
            raise NoteKeyError(f"verifier key {name}: key id must be 8 lowercase hex digits")
        raw = b64decode(encoded, what=f"verifier key {name}", error=NoteKeyError)
        if len(raw) < 2:
            raise NoteKeyError(f"verifier key {name} has no key material")
        vkey = cls(name, raw[0], raw[1:])
        if vkey.key_id != int(hexid, 16):
            raise NoteKeyError(f"verifier key {name}: key id {hexid} does not match the key "
                               f"({vkey.key_id:08x})")
        return vkey


def check_ed25519_public_key(public_key: bytes, *, what: str = "Ed25519 key") -> None:
    """A canonical, prime-order Ed25519 point: anything else could never verify honestly."""
    if len(public_key) != 32:
        raise NoteKeyError(f"{what} must be 32 bytes, got {len(public_key)}")
    if not sodium.crypto_core_ed25519_is_valid_point(public_key):
        raise NoteKeyError(f"{what} is not a valid Ed25519 public key")


@dataclass(frozen=True, slots=True)
class Ed25519VerifierBase:
    """An Ed25519 public key under a key name, for one signature type (:attr:`alg`).

    Note signatures (:class:`Ed25519Verifier`, type 0x01) and checkpoint.py's cosignatures
    (type 0x04) share the key material, the checks and the vkey form; they differ in the
    type byte of the key ID and in what the signature covers (a subclass's ``verify``).
    """

    alg: ClassVar[int] = ALG_ED25519
    vkey_types: ClassVar[tuple[tuple[int, str], ...]] = ((ALG_ED25519, "Ed25519"),)
    """The vkey types :meth:`from_vkey` accepts (the key ID is always :attr:`alg`'s)."""
    role: ClassVar[str] = "verifier"
    """What the key is called in errors."""

    name: str
    public_key: bytes
    key_id: int = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        check_key_name(self.name)
        check_ed25519_public_key(self.public_key, what=f"{self.role} key {self.name}")
        object.__setattr__(self, "key_id", key_id(self.name, self.alg, self.public_key))

    @classmethod
    def from_vkey(cls, text: str) -> Self:
        """Parse a vkey of one of :attr:`vkey_types`."""
        vkey = VerifierKey.parse(text)
        if vkey.alg not in dict(cls.vkey_types):
            accepted = " or ".join(f"{what} (0x{alg:02x})" for alg, what in cls.vkey_types)
            raise NoteKeyError(f"verifier key {vkey.name} has signature type "
                               f"0x{vkey.alg:02x}, not {accepted}")
        return cls(vkey.name, vkey.key)

    def vkey(self) -> str:
        return VerifierKey(self.name, self.alg, self.public_key).to_text()


@dataclass(frozen=True, slots=True)
class Ed25519Verifier(Ed25519VerifierBase):
    """Verifies Ed25519 note signatures (type 0x01) for one key name."""

    def verify(self, message: bytes, signature: bytes) -> bool:
        return verify(self.public_key, message, signature)


@dataclass(frozen=True, slots=True)
class Ed25519SignerBase:
    """An Ed25519 signing key under a key name, for one signature type (:attr:`alg`).

    ``repr`` never shows the secret. Whatever type it signs with, the key travels as Go's
    standard Ed25519 signer key (``PRIVATE+KEY+...``: type 0x01 and the 0x01 key ID), the
    form in which Go's tools store witness keys too.
    """

    alg: ClassVar[int] = ALG_ED25519

    name: str
    key: SigningKey = field(repr=False)
    key_id: int = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        check_key_name(self.name)
        object.__setattr__(self, "key_id", key_id(self.name, self.alg, self.key.public))

    @classmethod
    def generate(cls, name: str) -> Self:
        return cls(name, SigningKey.generate())

    @classmethod
    def from_seed(cls, name: str, seed: bytes) -> Self:
        if len(seed) != 32:
            raise NoteKeyError(f"Ed25519 seed must be 32 bytes, got {len(seed)}")
        return cls(name, SigningKey.from_seed(seed))

    @classmethod
    def from_skey(cls, text: str) -> Self:
        """Parse ``PRIVATE+KEY+<name>+<hex id>+<base64(0x01 ‖ seed)>`` strictly."""
        parts = text.split("+", 4)
        if len(parts) != 5 or parts[0] != "PRIVATE" or parts[1] != "KEY":
            raise NoteKeyError("signer key must be PRIVATE+KEY+<name>+<key id>+<base64 key>")
        name, hexid, encoded = parts[2:]
        check_key_name(name)
        if not _HEX8_RE.match(hexid):
            raise NoteKeyError(f"signer key {name}: key id must be 8 lowercase hex digits")
        raw = b64decode(encoded, what=f"signer key {name}", error=NoteKeyError)
        if len(raw) != 33 or raw[0] != ALG_ED25519:
            raise NoteKeyError(f"signer key {name} is not an Ed25519 seed (0x01 + 32 bytes)")
        signer = cls.from_seed(name, raw[1:])
        if signer._skey_id != int(hexid, 16):
            raise NoteKeyError(f"signer key {name}: key id {hexid} does not match the key "
                               f"({signer._skey_id:08x})")
        return signer

    @property
    def _skey_id(self) -> int:
        """The key ID in the signer key text: always the Ed25519 (0x01) one."""
        return key_id(self.name, ALG_ED25519, self.key.public)

    def skey(self) -> str:
        seed = bytes((ALG_ED25519,)) + self.key.secret[:32]
        return f"PRIVATE+KEY+{self.name}+{self._skey_id:08x}+{b64encode(seed)}"

    def vkey(self) -> str:
        return VerifierKey(self.name, self.alg, self.key.public).to_text()


@dataclass(frozen=True, slots=True)
class Ed25519Signer(Ed25519SignerBase):
    """Signs notes with Ed25519 (type 0x01)."""

    def verifier(self) -> Ed25519Verifier:
        return Ed25519Verifier(self.name, self.key.public)

    def sign(self, message: bytes) -> bytes:
        return self.key.sign(message)


# --- notes --------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Note:
    """An opened note: its text, the verified signatures, and those from unknown keys."""

    text: str
    signatures: tuple[NoteSignature, ...]
    unverified: tuple[NoteSignature, ...] = ()

    def to_bytes(self) -> bytes:
        """The note with every signature (verified first, then unknown ones)."""
        return format_note(self.text, (*self.signatures, *self.unverified))


def format_note(text: str, signatures: Iterable[NoteSignature]) -> bytes:
    """Assemble a signed note from a text and signature lines (at least one)."""
    check_note_text(text)
    lines = [s.line() for s in signatures]
    if not lines:
        raise NoteFormatError("a signed note needs at least one signature")
    if len(lines) > MAX_SIGNATURES:
        raise NoteFormatError(f"a note may carry at most {MAX_SIGNATURES} signatures")
    return (text + "\n" + "".join(lines)).encode("utf-8")


def sign_note(text: str, *signers: Signer,
              existing: Sequence[NoteSignature] = ()) -> bytes:
    """Sign ``text`` with each signer; ``existing`` signatures by other keys are kept."""
    check_note_text(text)
    message = text.encode("utf-8")
    new = []
    for signer in signers:
        check_key_name(signer.name)
        new.append(NoteSignature(signer.name, signer.key_id, signer.sign(message)))
    replaced = {s.key for s in new}
    kept = [s for s in existing if s.key not in replaced]
    return format_note(text, (*kept, *new))


def parse_note(data: bytes, *, max_signatures: int = MAX_SIGNATURES
               ) -> tuple[str, list[NoteSignature]]:
    """Split a note into its text and signature lines, checking the format only."""
    if len(data) > MAX_NOTE_BYTES:
        raise NoteFormatError(f"note is {len(data)} bytes; at most {MAX_NOTE_BYTES} accepted")
    try:
        whole = data.decode("utf-8")
    except UnicodeDecodeError:
        raise NoteFormatError("note is not valid UTF-8") from None
    match = _CONTROL_RE.search(whole)
    if match:
        raise NoteFormatError(f"note contains control character U+{ord(match.group()):04X} "
                              f"at offset {match.start()}")
    split = whole.rfind("\n\n")
    if split < 0:
        raise NoteFormatError("note has no signature block (a blank line, then signatures)")
    text, block = whole[:split + 1], whole[split + 2:]
    if not block:
        raise NoteFormatError("note has no signatures")
    if not block.endswith("\n"):
        raise NoteFormatError("note's last signature line does not end with a newline")
    lines = block[:-1].split("\n")
    if len(lines) > max_signatures:
        raise NoteFormatError(f"note has {len(lines)} signatures; at most {max_signatures} "
                              "accepted")
    check_note_text(text)
    return text, [NoteSignature.parse_line(line) for line in lines]


def open_note(data: bytes, verifiers: Iterable[Verifier], *,
              max_signatures: int = MAX_SIGNATURES) -> Note:
    """Parse and verify a note against the known keys (signed-note "Signatures").

    Unknown keys are ignored; repeated signatures are dropped; a failing signature from a
    known key raises :class:`NoteSignatureError`; no verified signature raises
    :class:`UnverifiedNoteError`. Two different verifiers with the same name and key ID
    raise :class:`NoteKeyError` if a signature line names them.
    """
    text, signatures = parse_note(data, max_signatures=max_signatures)
    known: dict[tuple[str, int], Verifier] = {}
    ambiguous: set[tuple[str, int]] = set()
    for v in verifiers:
        key = (v.name, v.key_id)
        if key in known and known[key] != v:
            ambiguous.add(key)
        known.setdefault(key, v)
    message = text.encode("utf-8")
    verified: list[NoteSignature] = []
    unverified: list[NoteSignature] = []
    seen: set[tuple[str, int]] = set()
    for sig in signatures:
        if sig.key in ambiguous:
            raise NoteKeyError(f"ambiguous key {format_key(*sig.key)}")
        verifier = known.get(sig.key)
        if verifier is None:
            if sig not in unverified:
                unverified.append(sig)
            continue
        if sig.key in seen:
            continue
        seen.add(sig.key)
        if not verifier.verify(message, sig.signature):
            raise NoteSignatureError(f"invalid signature for key {format_key(*sig.key)}",
                                     field="signature")
        verified.append(sig)
    note = Note(text, tuple(verified), tuple(unverified))
    if not verified:
        raise UnverifiedNoteError("note has no verifiable signatures", note)
    return note
