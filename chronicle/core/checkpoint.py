"""Checkpoints, cosignatures and the witness protocol's messages (C2SP), all sans-I/O.

- c2sp.org/tlog-checkpoint "Note text": origin line, tree size in decimal (no leading
  zeroes), base64 root hash, optional non-empty extension lines; signed as a note.
- c2sp.org/tlog-cosignature, Ed25519 ``cosignature/v1``: signature type 0x04, key ID
  ``SHA-256(name ‖ 0x0A ‖ 0x04 ‖ pk)[:4]``, signed message
  ``"cosignature/v1\\ntime <t>\\n" ‖ checkpoint text``, and the signature line carries
  ``key ID ‖ uint64-BE t ‖ Ed25519 signature``.
- c2sp.org/tlog-witness ``add-checkpoint``: the request body (``old N``, up to 63
  consistency proof lines, a blank line, the signed checkpoint), the ``text/x.tlog.size``
  body of a 409, and :func:`decide_add_checkpoint`, the whole witness decision as a pure
  function of the request, the log's keys and the witness's remembered (size, root).
- The log's side: :class:`WitnessEndpoint` (a configured witness: URL and cosignature
  key), :class:`WitnessPolicy` (K of N: is a checkpoint publishable?) and
  :func:`add_cosignatures` (the checkpoint with the witnesses' lines appended).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import ClassVar, TypeAlias
from urllib.parse import urlsplit

from chronicle.core.errors import EncodingError, IntegrityError
from chronicle.core.merkle import HASH_SIZE, ProofError, verify_consistency
from chronicle.core.note import (
    ALG_ED25519,
    MAX_SIGNATURES,
    Ed25519SignerBase,
    Ed25519Verifier,
    Ed25519VerifierBase,
    Note,
    NoteFormatError,
    NoteKeyError,
    NoteSignature,
    NoteSignatureError,
    Signer,
    UnverifiedNoteError,
    Verifier,
    VerifierKey,
    b64decode,
    b64encode,
    format_note,
    open_note,
    parse_note,
    sign_note,
)
from chronicle.core.sapient import verify

ALG_COSIGNATURE_V1 = 0x04
COSIGNATURE_HEADER = "cosignature/v1\n"
MAX_SIZE = (1 << 63) - 1
"""Largest tree size and cosignature timestamp accepted (both are int64 in Go tools)."""
MAX_PROOF_LINES = 63
TLOG_SIZE_CONTENT_TYPE = "text/x.tlog.size"

_DECIMAL_RE = re.compile(r"\A(?:0|[1-9][0-9]{0,18})\Z")
_CONTROL_RE = re.compile(r"[\x00-\x1f]")


class CheckpointFormatError(EncodingError):
    """A checkpoint body breaks tlog-checkpoint's "Note text" rules."""


class CheckpointOriginError(IntegrityError):
    """A checkpoint is for another log than the one expected."""


class WitnessRequestError(EncodingError):
    """A malformed tlog-witness message (add-checkpoint body, tlog.size body)."""


def _parse_decimal(text: str, *, what: str, error: type[EncodingError]) -> int:
    if not _DECIMAL_RE.match(text) or int(text) > MAX_SIZE:
        raise error(f"{what} must be a decimal number without leading zeroes, got "
                    f"{text[:40]!r}")
    return int(text)


# --- checkpoints --------------------------------------------------------------------------

def _check_line(what: str, line: str) -> None:
    if not line:
        raise CheckpointFormatError(f"checkpoint {what} must not be empty")
    if _CONTROL_RE.search(line):
        raise CheckpointFormatError(f"checkpoint {what} contains a control character")


def check_origin(origin: str) -> None:
    """A log's origin is a checkpoint's first line: non-empty, no control characters."""
    _check_line("origin", origin)


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """A tree head: origin, size, RFC 6962 root, and (discouraged) extension lines."""

    origin: str
    size: int
    root: bytes
    extensions: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        check_origin(self.origin)
        for line in self.extensions:
            _check_line("extension line", line)
        if not 0 <= self.size <= MAX_SIZE:
            raise CheckpointFormatError(f"checkpoint size {self.size} is out of range")
        if len(self.root) != HASH_SIZE:
            raise CheckpointFormatError(f"checkpoint root must be {HASH_SIZE} bytes, got "
                                        f"{len(self.root)}")

    def to_text(self) -> str:
        """The note text, final newline included."""
        lines = (self.origin, str(self.size), b64encode(self.root), *self.extensions)
        return "\n".join(lines) + "\n"

    @classmethod
    def parse(cls, text: str) -> Checkpoint:
        """Parse a checkpoint note text strictly (one checkpoint has one spelling)."""
        if not text.endswith("\n"):
            raise CheckpointFormatError("checkpoint must end with a newline")
        lines = text[:-1].split("\n")
        if len(lines) < 3:
            raise CheckpointFormatError(f"checkpoint needs origin, size and root lines, got "
                                        f"{len(lines)} lines")
        origin, size_text, root_text, *extensions = lines
        size = _parse_decimal(size_text, what="checkpoint size", error=CheckpointFormatError)
        root = b64decode(root_text, what="checkpoint root", error=CheckpointFormatError)
        return cls(origin, size, root, tuple(extensions))


@dataclass(frozen=True, slots=True)
class SignedCheckpoint:
    """A checkpoint whose note carried at least one verified signature."""

    checkpoint: Checkpoint
    note: Note

    def to_bytes(self) -> bytes:
        return self.note.to_bytes()


def sign_checkpoint(checkpoint: Checkpoint, *signers: Signer,
                    existing: Sequence[NoteSignature] = ()) -> bytes:
    """The checkpoint as a signed note. The log's key name should equal the origin."""
    return sign_note(checkpoint.to_text(), *signers, existing=existing)


def open_checkpoint(data: bytes, verifiers: Iterable[Verifier], *,
                    origin: str | None = None) -> SignedCheckpoint:
    """Verify a signed checkpoint (see :func:`~chronicle.core.note.open_note`) and parse it.

    With ``origin``, a checkpoint for any other log raises :class:`CheckpointOriginError`.
    """
    note = open_note(data, verifiers)
    checkpoint = Checkpoint.parse(note.text)
    if origin is not None and checkpoint.origin != origin:
        raise CheckpointOriginError("checkpoint is for another log", field="origin",
                                    expected=origin, found=checkpoint.origin)
    return SignedCheckpoint(checkpoint, note)


# --- cosignatures -------------------------------------------------------------------------

def cosignature_message(text: str, timestamp: int) -> bytes:
    """What a cosignature/v1 signs: header line, time line, the checkpoint text."""
    return f"{COSIGNATURE_HEADER}time {timestamp}\n{text}".encode()


def cosignature_timestamp(signature: NoteSignature) -> int:
    """The POSIX time a cosignature/v1 claims (its first 8 bytes, big-endian)."""
    if len(signature.signature) != 72:
        raise NoteFormatError(f"cosignature by {signature.name} must be 72 bytes, got "
                              f"{len(signature.signature)}")
    return int.from_bytes(signature.signature[:8], "big")


@dataclass(frozen=True, slots=True)
class CosignatureVerifier(Ed25519VerifierBase):
    """Verifies Ed25519 cosignature/v1 signatures (type 0x04) of one witness.

    :meth:`from_vkey` takes a type 0x04 vkey, or a plain Ed25519 (0x01) one as Go's
    formats/note accepts; either way the key ID on cosignatures is the 0x04 one.
    """

    alg: ClassVar[int] = ALG_COSIGNATURE_V1
    vkey_types: ClassVar[tuple[tuple[int, str], ...]] = (
        (ALG_COSIGNATURE_V1, "cosignature/v1"), (ALG_ED25519, "Ed25519"))
    role: ClassVar[str] = "cosigner"

    def verify(self, message: bytes, signature: bytes) -> bool:
        """``message`` is the note text; ``signature`` is timestamp(8) ‖ Ed25519(64)."""
        if len(signature) != 72 or message.count(b"\n") < 2:
            return False
        timestamp = int.from_bytes(signature[:8], "big")
        if timestamp > MAX_SIZE:
            return False
        signed = f"{COSIGNATURE_HEADER}time {timestamp}\n".encode() + message
        return verify(self.public_key, signed, signature[8:])


@dataclass(frozen=True, slots=True)
class Cosigner(Ed25519SignerBase):
    """A witness key producing cosignature/v1 signatures (type 0x04)."""

    alg: ClassVar[int] = ALG_COSIGNATURE_V1

    def verifier(self) -> CosignatureVerifier:
        return CosignatureVerifier(self.name, self.key.public)

    def cosign(self, checkpoint: Checkpoint, timestamp: int) -> NoteSignature:
        """Cosign ``checkpoint`` as of POSIX time ``timestamp``."""
        if not 0 <= timestamp <= MAX_SIZE:
            raise NoteFormatError(f"cosignature timestamp {timestamp} is out of range")
        text = checkpoint.to_text()
        signature = self.key.sign(cosignature_message(text, timestamp))
        return NoteSignature(self.name, self.key_id, timestamp.to_bytes(8, "big") + signature)


def verifier_from_vkey(text: str) -> Ed25519Verifier | CosignatureVerifier:
    """A log key (type 0x01) or a witness key (type 0x04), whichever the vkey says."""
    vkey = VerifierKey.parse(text)
    if vkey.alg == ALG_ED25519:
        return Ed25519Verifier(vkey.name, vkey.key)
    if vkey.alg == ALG_COSIGNATURE_V1:
        return CosignatureVerifier(vkey.name, vkey.key)
    raise NoteKeyError(f"verifier key {vkey.name} has unsupported signature type "
                       f"0x{vkey.alg:02x}")


def parse_signature_lines(body: bytes) -> list[NoteSignature]:
    """A witness's 200 response: one or more note signature lines, each ending in newline."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise WitnessRequestError("cosignature response is not valid UTF-8") from None
    if not text or not text.endswith("\n"):
        raise WitnessRequestError("cosignature response must be signature lines ending in "
                                  "a newline")
    lines = text[:-1].split("\n")
    if len(lines) > MAX_SIGNATURES:
        raise WitnessRequestError(f"cosignature response has {len(lines)} lines; at most "
                                  f"{MAX_SIGNATURES} accepted")
    return [NoteSignature.parse_line(line) for line in lines]


def verify_cosignatures(checkpoint: Checkpoint, signatures: Iterable[NoteSignature],
                        cosigners: Iterable[Verifier]) -> list[NoteSignature]:
    """The signatures by known cosigners, all verified (unknown ones are ignored).

    Raises :class:`~chronicle.core.note.NoteSignatureError` if a known cosigner's
    signature fails and :class:`~chronicle.core.note.UnverifiedNoteError` if none is known.
    """
    note = open_note(format_note(checkpoint.to_text(), signatures), cosigners)
    return list(note.signatures)


# --- tlog-witness messages ----------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class AddCheckpointRequest:
    """The body of ``POST <witness>/add-checkpoint``."""

    old_size: int
    proof: tuple[bytes, ...]
    checkpoint: bytes
    """The signed checkpoint note, exactly as the log sent it."""

    def __post_init__(self) -> None:
        if not 0 <= self.old_size <= MAX_SIZE:
            raise WitnessRequestError(f"old size {self.old_size} is out of range")
        if len(self.proof) > MAX_PROOF_LINES:
            raise WitnessRequestError(f"consistency proof has {len(self.proof)} lines; at "
                                      f"most {MAX_PROOF_LINES} allowed")
        for h in self.proof:
            if len(h) != HASH_SIZE:
                raise WitnessRequestError(f"consistency proof hash must be {HASH_SIZE} bytes")
        if not self.checkpoint:
            raise WitnessRequestError("add-checkpoint request has no checkpoint")

    def to_bytes(self) -> bytes:
        head = f"old {self.old_size}\n" + "".join(b64encode(h) + "\n" for h in self.proof)
        return head.encode("ascii") + b"\n" + self.checkpoint

    @classmethod
    def parse(cls, body: bytes) -> AddCheckpointRequest:
        """Parse strictly: ``old N``, at most 63 base64 hashes, a blank line, the note."""
        pos = 0
        lines: list[str] = []
        while True:
            end = body.find(b"\n", pos)
            if end < 0:
                raise WitnessRequestError("add-checkpoint body ends before the blank line")
            line = body[pos:end]
            pos = end + 1
            if not line:
                break
            if len(lines) > MAX_PROOF_LINES:
                raise WitnessRequestError(f"add-checkpoint body has more than "
                                          f"{MAX_PROOF_LINES} consistency proof lines")
            if len(line) > 64:
                raise WitnessRequestError("add-checkpoint body has an overlong line")
            try:
                lines.append(line.decode("ascii"))
            except UnicodeDecodeError:
                raise WitnessRequestError("add-checkpoint header is not ASCII") from None
        if not lines or not lines[0].startswith("old "):
            raise WitnessRequestError("add-checkpoint body must start with 'old <size>'")
        old = _parse_decimal(lines[0][4:], what="old size", error=WitnessRequestError)
        proof = []
        for text in lines[1:]:
            h = b64decode(text, what="consistency proof line", error=WitnessRequestError)
            if len(h) != HASH_SIZE:
                raise WitnessRequestError(f"consistency proof line must be a {HASH_SIZE}-byte "
                                          f"hash, got {len(h)} bytes")
            proof.append(h)
        return cls(old, tuple(proof), body[pos:])

    @property
    def origin(self) -> str:
        """The checkpoint's origin line, *unverified*: only to look up the log's keys."""
        text, _ = parse_note(self.checkpoint)
        return text.split("\n", 1)[0]


def format_tlog_size(size: int) -> bytes:
    """The ``text/x.tlog.size`` body of a 409: the latest cosigned size, a newline."""
    if not 0 <= size <= MAX_SIZE:
        raise WitnessRequestError(f"tree size {size} is out of range")
    return f"{size}\n".encode("ascii")


def parse_tlog_size(body: bytes) -> int:
    if not body.endswith(b"\n"):
        raise WitnessRequestError("text/x.tlog.size body must end with a newline")
    try:
        text = body[:-1].decode("ascii")
    except UnicodeDecodeError:
        raise WitnessRequestError("text/x.tlog.size body is not ASCII") from None
    return _parse_decimal(text, what="tree size", error=WitnessRequestError)


# --- the witness decision -----------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class WitnessState:
    """What a witness remembers per origin: the latest checkpoint it cosigned."""

    size: int
    root: bytes


@dataclass(frozen=True, slots=True)
class Cosign:
    """All checks passed: persist :attr:`new_state` atomically, then cosign :attr:`checkpoint`."""

    checkpoint: Checkpoint
    note: Note
    status: ClassVar[int] = 200

    @property
    def new_state(self) -> WitnessState:
        return WitnessState(self.checkpoint.size, self.checkpoint.root)


@dataclass(frozen=True, slots=True)
class Conflict:
    """409: the old size is not the witness's, or the same size has another root."""

    known_size: int
    reason: str
    status: ClassVar[int] = 409
    content_type: ClassVar[str] = TLOG_SIZE_CONTENT_TYPE

    def body(self) -> bytes:
        return format_tlog_size(self.known_size)


@dataclass(frozen=True, slots=True)
class UnknownLog:
    """404: the witness has no keys for this origin."""

    origin: str
    status: ClassVar[int] = 404


@dataclass(frozen=True, slots=True)
class Refusal:
    """No cosignature: answer :attr:`status` (one subclass per status) with :attr:`reason`."""

    reason: str
    status: ClassVar[int]


@dataclass(frozen=True, slots=True)
class BadSignature(Refusal):
    """403: no signature verifies against the log's keys (or one from its keys fails)."""

    status = 403


@dataclass(frozen=True, slots=True)
class BadProof(Refusal):
    """422: the consistency proof does not verify."""

    status = 422


@dataclass(frozen=True, slots=True)
class BadRequest(Refusal):
    """400: malformed checkpoint, old size above the checkpoint's, or an empty tree."""

    status = 400


Verdict: TypeAlias = Cosign | Conflict | UnknownLog | BadSignature | BadProof | BadRequest


def decide_add_checkpoint(request: AddCheckpointRequest, log_verifiers: Sequence[Verifier],
                          state: WitnessState | None) -> Verdict:
    """What a witness answers to ``add-checkpoint`` (tlog-witness, in the spec's order).

    ``log_verifiers`` are the keys configured for the request's origin (empty: unknown
    log); ``state`` is what the witness last cosigned for it (``None``: never). Never
    cosigns a smaller tree, a different root at the same size, a tree not proven
    consistent with ``state``, or an empty tree.
    """
    try:
        origin = request.origin
        if not log_verifiers:
            return UnknownLog(origin)
        note = open_note(request.checkpoint, log_verifiers)
    except NoteFormatError as exc:
        return BadRequest(exc.message)
    except (UnverifiedNoteError, NoteSignatureError, NoteKeyError) as exc:
        return BadSignature(exc.message)
    try:
        checkpoint = Checkpoint.parse(note.text)
    except CheckpointFormatError as exc:
        return BadRequest(exc.message)
    if checkpoint.size == 0:
        return BadRequest("an empty tree is never cosigned")
    if request.old_size > checkpoint.size:
        return BadRequest(f"old size {request.old_size} is larger than the checkpoint's "
                          f"{checkpoint.size}")
    known = state.size if state is not None else 0
    if request.old_size != known:
        return Conflict(known, f"old size {request.old_size} is not the latest cosigned size "
                               f"{known}")
    if request.old_size == 0 or state is None:  # the second implies the first
        if request.proof:
            return BadProof("the consistency proof from size 0 must be empty")
        return Cosign(checkpoint, note)
    if request.old_size == checkpoint.size:
        if request.proof:
            return BadProof("the consistency proof between equal sizes must be empty")
        if checkpoint.root != state.root:
            return Conflict(known, f"size {known} was cosigned with another root hash")
        return Cosign(checkpoint, note)
    try:
        verify_consistency(request.old_size, checkpoint.size, state.root, checkpoint.root,
                           request.proof)
    except ProofError as exc:
        return BadProof(exc.message)
    return Cosign(checkpoint, note)


def cosignature_response(signatures: Iterable[NoteSignature]) -> bytes:
    """The body of a 200 answer to add-checkpoint: the witness's signature lines."""
    body = "".join(s.line() for s in signatures)
    if not body:
        raise WitnessRequestError("a cosignature response needs at least one signature")
    return body.encode("utf-8")


# --- the log's side: its witnesses and the K-of-N policy ---------------------------------

class WitnessConfigError(EncodingError):
    """A configured witness (``URL VKEY``) or witness policy is malformed."""


@dataclass(frozen=True, slots=True)
class WitnessEndpoint:
    """A witness a log submits to: its submission prefix (``<url>/add-checkpoint``) and
    the key its cosignatures must verify with (the key's name is the witness's name)."""

    url: str
    verifier: CosignatureVerifier

    def __post_init__(self) -> None:
        parts = urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.netloc or parts.query \
                or parts.fragment:
            raise WitnessConfigError(f"witness URL must be http(s)://host[/prefix], got "
                                     f"{self.url[:100]!r}")

    @property
    def name(self) -> str:
        return self.verifier.name

    @classmethod
    def parse(cls, text: str) -> WitnessEndpoint:
        """``URL VKEY`` (whitespace between), the form the ``witnesses`` setting lists."""
        parts = text.split()
        if len(parts) != 2:
            raise WitnessConfigError(f"a witness is 'URL VKEY', got {text[:120]!r}")
        url, vkey = parts
        try:
            verifier = CosignatureVerifier.from_vkey(vkey)
        except NoteKeyError as exc:
            raise WitnessConfigError(f"witness {url}: {exc.message}") from None
        return cls(url.rstrip("/"), verifier)

    def to_text(self) -> str:
        return f"{self.url} {self.verifier.vkey()}"


@dataclass(frozen=True, slots=True)
class Quorum:
    """What a policy makes of the cosignatures collected for one checkpoint."""

    cosignatures: tuple[NoteSignature, ...]
    """The valid ones, one per witness of the policy, in the policy's order."""
    needed: int

    @property
    def satisfied(self) -> bool:
        return len(self.cosignatures) >= self.needed

    @property
    def cosigners(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.cosignatures)


@dataclass(frozen=True, slots=True)
class WitnessPolicy:
    """K of N: a checkpoint may be published once ``quorum`` of ``witnesses`` cosigned it.

    ``quorum`` 0 publishes at once (the cosignatures that arrive are added to it). Names
    must differ: a cosignature line is matched to its witness by name and key ID.
    """

    witnesses: tuple[CosignatureVerifier, ...]
    quorum: int

    def __post_init__(self) -> None:
        if not 0 <= self.quorum <= len(self.witnesses):
            raise WitnessConfigError(f"witness quorum {self.quorum} must be between 0 and "
                                     f"the number of witnesses ({len(self.witnesses)})")
        names = [w.name for w in self.witnesses]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise WitnessConfigError(f"witness names must differ: {', '.join(twice)} twice")

    def check(self, checkpoint: Checkpoint, signatures: Iterable[NoteSignature]) -> Quorum:
        """The valid cosignatures on ``checkpoint`` by our witnesses (the newest of each);
        anything else — unknown keys, failing signatures, other checkpoints — is dropped,
        so nothing but a verified cosignature ever counts towards the quorum."""
        text = checkpoint.to_text().encode("utf-8")
        by_key = {(w.name, w.key_id): w for w in self.witnesses}
        best: dict[str, NoteSignature] = {}
        for sig in signatures:
            witness = by_key.get(sig.key)
            if witness is None or not witness.verify(text, sig.signature):
                continue
            kept = best.get(sig.name)
            if kept is None or cosignature_timestamp(sig) > cosignature_timestamp(kept):
                best[sig.name] = sig
        ordered = tuple(best[w.name] for w in self.witnesses if w.name in best)
        return Quorum(ordered, self.quorum)


def add_cosignatures(note: bytes, cosignatures: Iterable[NoteSignature]) -> bytes:
    """The log's signed checkpoint ``note`` with ``cosignatures`` appended (a C2SP note
    with several signatures); a cosignature replaces one already there by the same key.

    ``note`` is the log's own (not verified here); check cosignatures with
    :meth:`WitnessPolicy.check` first.
    """
    text, existing = parse_note(note)
    new = list(cosignatures)
    replaced = {s.key for s in new}
    return format_note(text, [*(s for s in existing if s.key not in replaced), *new])
