"""C2SP signed notes: the Go sumdb/note known answers, key formats, strict parsing, limits."""

from __future__ import annotations

import base64

import pytest
from hypothesis import given
from hypothesis import strategies as st

from chronicle.core.errors import EncodingError, IntegrityError
from chronicle.core.note import (
    MAX_LINE_BYTES,
    MAX_NOTE_BYTES,
    MAX_SIGNATURES,
    Ed25519Signer,
    Ed25519Verifier,
    Note,
    NoteFormatError,
    NoteKeyError,
    NoteSignature,
    NoteSignatureError,
    UnverifiedNoteError,
    VerifierKey,
    b64decode,
    format_note,
    is_valid_key_name,
    key_id,
    open_note,
    parse_note,
    sign_note,
)

# golang.org/x/mod/sumdb/note's test vectors (note_test.go).
PETER_VKEY = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
PETER_SKEY = "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz"
ENOCH_VKEY = "EnochRoot+af0cfe78+ATtqJ7zOtqQtYqOo0CpvDXNlMhV3HeJDpjrASKGLWdop"
TEXT = ("If you think cryptography is the answer to your problem,\n"
        "then you don't know what your problem is.\n")
PETER_SIG = ("— PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfq"
             "dngotpRZb6KE6RyyBwJnAM=\n")
ENOCH_SIG = ("— EnochRoot rwz+eBzmZa0SO3NbfRGzPCpDckykFXSdeX+MNtCOXm2/5n2tiOHp+vAF1aGrQ5ovTG01oOT"
             "GwnWLox33WWd1RvMc+QQ=\n")

PETER = Ed25519Verifier.from_vkey(PETER_VKEY)
ENOCH = Ed25519Verifier.from_vkey(ENOCH_VKEY)


def note(*sigs: str, text: str = TEXT) -> bytes:
    return (text + "\n" + "".join(sigs)).encode("utf-8")


# --- known answers --------------------------------------------------------------------------

def test_key_ids_match_the_reference() -> None:
    assert PETER.key_id == 0xC74F20A3
    assert ENOCH.key_id == 0xAF0CFE78
    raw = base64.b64decode(PETER_VKEY.split("+")[2])
    assert key_id("PeterNeumann", raw[0], raw[1:]) == 0xC74F20A3
    assert PETER.vkey() == PETER_VKEY


def test_signing_reproduces_the_reference_note() -> None:
    signer = Ed25519Signer.from_skey(PETER_SKEY)
    assert signer.key_id == 0xC74F20A3
    assert signer.skey() == PETER_SKEY
    assert signer.vkey() == PETER_VKEY
    assert sign_note(TEXT, signer) == note(PETER_SIG)
    # A stale signature by the same key is replaced, not duplicated.
    stale = NoteSignature("PeterNeumann", 0xC74F20A3, b"\x00" * 64)
    assert sign_note(TEXT, signer, existing=[stale]) == note(PETER_SIG)


def test_open_reference_notes() -> None:
    opened = open_note(note(PETER_SIG, ENOCH_SIG), [PETER])
    assert opened.text == TEXT
    assert [s.name for s in opened.signatures] == ["PeterNeumann"]
    assert [(s.name, s.key_id) for s in opened.unverified] == [("EnochRoot", 0xAF0CFE78)]
    both = open_note(note(PETER_SIG, ENOCH_SIG), [PETER, ENOCH])
    assert [s.name for s in both.signatures] == ["PeterNeumann", "EnochRoot"]
    assert both.unverified == ()
    assert both.to_bytes() == note(PETER_SIG, ENOCH_SIG)


def test_no_known_signature_is_rejected_with_what_was_parsed() -> None:
    with pytest.raises(UnverifiedNoteError, match="no verifiable signatures") as info:
        open_note(note(PETER_SIG, ENOCH_SIG), [])
    assert isinstance(info.value, IntegrityError)
    assert [s.name for s in info.value.note.unverified] == ["PeterNeumann", "EnochRoot"]


def test_a_bad_signature_from_a_known_key_rejects_the_note() -> None:
    bad = PETER_SIG[:60] + "ABCD" + PETER_SIG[60:]
    with pytest.raises(NoteSignatureError, match="invalid signature for key PeterNeumann"
                                                 r"\+c74f20a3"):
        open_note(note(bad), [PETER])
    tampered = note(PETER_SIG, text=TEXT.replace("cryptography", "cryptographY"))
    with pytest.raises(NoteSignatureError):
        open_note(tampered, [PETER])


def test_repeated_signatures_are_dropped() -> None:
    enoch_abcd = ENOCH_SIG[:60] + "ABCD" + ENOCH_SIG[60:]
    opened = open_note(note(PETER_SIG, PETER_SIG, ENOCH_SIG, ENOCH_SIG, enoch_abcd), [PETER])
    assert len(opened.signatures) == 1
    assert len(opened.unverified) == 2


def test_ambiguous_verifiers_only_fail_when_used() -> None:
    other = Ed25519Signer.generate("EnochRoot").verifier()
    impostor = Ed25519Verifier.__new__(Ed25519Verifier)
    for name, value in (("name", "EnochRoot"), ("public_key", other.public_key),
                        ("key_id", ENOCH.key_id)):
        object.__setattr__(impostor, name, value)
    with pytest.raises(NoteKeyError, match=r"ambiguous key EnochRoot\+af0cfe78"):
        open_note(note(ENOCH_SIG), [ENOCH, PETER, impostor])
    assert open_note(note(PETER_SIG), [ENOCH, PETER, impostor]).signatures
    assert open_note(note(ENOCH_SIG), [ENOCH, ENOCH]).signatures  # identical keys are fine


# --- format -------------------------------------------------------------------------------------

@pytest.mark.parametrize(("data", "message"), [
    (TEXT.encode(), "no signature block"),
    ((TEXT + "\n").encode(), "no signatures"),
    (note(PETER_SIG[:-1]), "does not end with a newline"),
    (b"\x01" + note(PETER_SIG), "control character U\\+0001"),
    (b"\xff" + note(PETER_SIG), "not valid UTF-8"),
    (note("— Bad Name x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngo"
          "tpRZb6KE6RyyBwJnAM=\n"), "signature by Bad is not base64"),
    (note(PETER_SIG, "Unexpected line.\n"), "not a signature line"),
    (note("- PeterNeumann x08go/ZJku\n"), "not a signature line"),
    (note("— PeterNeumann\n"), "invalid key name"),
    (note("— PeterNeumann \n"), "0 bytes: too short"),
    (note("— Peter+Neumann AAAAAAAA\n"), "invalid key name"),
    (note("— PeterNeumann AAAAAA==\n"), "too short"),
    (note("— PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqd"
          "ngotpRZb6KE6RyyBwJnAN=\n"), "not canonical base64"),
    (note(PETER_SIG.replace("=", "")), "not base64"),
    (note(PETER_SIG.replace("/", "_")), "not base64"),
    (note(PETER_SIG, text="tab\there\n"), "control character U\\+0009"),
    (note(PETER_SIG, text="crlf\r\n"), "control character U\\+000D"),
])
def test_malformed_notes(data: bytes, message: str) -> None:
    with pytest.raises(NoteFormatError, match=message) as info:
        open_note(data, [PETER])
    assert isinstance(info.value, EncodingError)
    assert info.value.status == 400


def test_limits() -> None:
    with pytest.raises(NoteFormatError, match="101 signatures; at most 100"):
        open_note(note(PETER_SIG * (MAX_SIGNATURES + 1)), [PETER])
    with pytest.raises(NoteFormatError, match="101 signatures"):
        open_note(note(PETER_SIG * (MAX_SIGNATURES + 1)), [])
    assert open_note(note(PETER_SIG * 16), [PETER]).signatures  # the spec's minimum
    long_line = "x" * (MAX_LINE_BYTES + 1) + "\n"
    with pytest.raises(NoteFormatError, match="line 1 is longer than 8192 bytes"):
        open_note(note(PETER_SIG, text=long_line), [PETER])
    with pytest.raises(NoteFormatError, match="at most 1048576 accepted"):
        open_note(b"x" * (MAX_NOTE_BYTES + 1), [PETER])
    with pytest.raises(NoteFormatError, match="signature line is longer"):
        open_note(note("— a " + "A" * MAX_LINE_BYTES + "\n"), [PETER])


def test_text_rules_when_signing() -> None:
    signer = Ed25519Signer.generate("example.org/log")
    for text, message in [("abc", "end with a newline"), ("", "end with a newline"),
                          ("a\x00b\n", "control character")]:
        with pytest.raises(NoteFormatError, match=message):
            sign_note(text, signer)
    with pytest.raises(NoteFormatError, match="at least one signature"):
        format_note(TEXT, [])
    # Empty lines inside a text are allowed: the last blank line separates the signatures.
    text = "a\n\nb\n\n"
    signed = sign_note(text, signer)
    assert open_note(signed, [signer.verifier()]).text == text


@given(st.lists(st.text(alphabet=st.characters(blacklist_categories=("Cc", "Cs")),
                        max_size=40), min_size=1, max_size=6))
def test_sign_open_round_trip(lines: list[str]) -> None:
    signer = Ed25519Signer.from_seed("example.org/log", b"\x07" * 32)
    text = "\n".join(lines) + "\n"
    opened = open_note(sign_note(text, signer), [signer.verifier()])
    assert opened.text == text
    assert parse_note(sign_note(text, signer))[0] == text


# --- keys ----------------------------------------------------------------------------------------

def test_vkey_manglings_are_refused() -> None:
    # As the reference test: every substring and every single-byte change is refused.
    for i in range(len(PETER_VKEY) + 1):
        for j in range(i + 1, len(PETER_VKEY) + 1):
            if (i, j) != (0, len(PETER_VKEY)):
                with pytest.raises(NoteKeyError):
                    Ed25519Verifier.from_vkey(PETER_VKEY[i:j])
    for i, c in enumerate(PETER_VKEY):
        mangled = PETER_VKEY[:i] + chr(ord(c) + 1) + PETER_VKEY[i + 1:]
        with pytest.raises(NoteKeyError):
            Ed25519Verifier.from_vkey(mangled)


def test_skey_manglings_are_refused() -> None:
    for i in range(len(PETER_SKEY)):
        mangled = PETER_SKEY[:i] + chr(ord(PETER_SKEY[i]) + 1) + PETER_SKEY[i + 1:]
        with pytest.raises(NoteKeyError):
            Ed25519Signer.from_skey(mangled)
    for cut in range(1, len(PETER_SKEY)):
        with pytest.raises(NoteKeyError):
            Ed25519Signer.from_skey(PETER_SKEY[:cut])


@pytest.mark.parametrize(("vkey", "message"), [
    ("PeterNeumann+cc469956+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TWBADKEY==",
     "not canonical base64"),
    (VerifierKey("PeterNeumann", 1, PETER.public_key + b"!").to_text(), "must be 32 bytes"),
    ("PeterNeumann+173116ae+ZRpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",
     "signature type 0x65, not Ed25519"),
    ("PeterNeumann+C74F20A3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW", "lowercase hex"),
    ("PeterNeumann+c74f20a4+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",
     "key id c74f20a4 does not match the key \\(c74f20a3\\)"),
    ("PeterNeumann+c74f20a3", "must be <name>"),
    ("Peter Neumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW", "invalid key name"),
])
def test_vkey_errors_are_precise(vkey: str, message: str) -> None:
    with pytest.raises(NoteKeyError, match=message):
        Ed25519Verifier.from_vkey(vkey)


def test_small_order_and_non_canonical_keys_are_refused() -> None:
    for point in (bytes(32), b"\x01" + bytes(31), b"\xff" * 32):
        vkey = VerifierKey("bad", 0x01, point).to_text()
        assert VerifierKey.parse(vkey).key == point
        with pytest.raises(NoteKeyError, match="not a valid Ed25519 public key"):
            Ed25519Verifier.from_vkey(vkey)


def test_generated_keys_round_trip() -> None:
    signer = Ed25519Signer.generate("example.org/log")
    again = Ed25519Signer.from_skey(signer.skey())
    assert again.key.public == signer.key.public
    assert Ed25519Verifier.from_vkey(signer.vkey()) == signer.verifier()
    assert "secret" not in repr(signer) and signer.key.secret.hex() not in repr(signer)
    with pytest.raises(NoteKeyError, match="seed must be 32 bytes"):
        Ed25519Signer.from_seed("x", b"\x00" * 31)
    with pytest.raises(NoteKeyError, match="not an Ed25519 seed"):
        Ed25519Signer.from_skey("PRIVATE+KEY+x+00000000+AgEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXH"
                                "KDFz")


@pytest.mark.parametrize(("name", "ok"), [
    ("example.org/log", True), ("PeterNeumann", True), ("日本", True),
    ("", False), ("a b", False), ("a+b", False), ("a\u00a0b", False), ("a\u3000b", False),
    ("a\tb", False), ("a\x01b", False),
])
def test_key_names(name: str, ok: bool) -> None:
    assert is_valid_key_name(name) is ok
    if not ok:
        with pytest.raises(NoteKeyError, match="invalid key name"):
            Ed25519Signer.from_seed(name, b"\x01" * 32)


def test_strict_base64() -> None:
    assert b64decode("AAEC") == b"\x00\x01\x02"
    for bad in ["AAE", "AA=C", "AAE=\n", "AAF=", "AA-_", " AAEC"]:
        with pytest.raises(NoteFormatError):
            b64decode(bad)


def test_note_value_round_trip() -> None:
    opened = open_note(note(PETER_SIG, ENOCH_SIG), [PETER])
    assert Note(opened.text, opened.signatures, opened.unverified).to_bytes() \
        == note(PETER_SIG, ENOCH_SIG)
    sig = opened.signatures[0]
    assert NoteSignature.parse_line(sig.line()[:-1]) == sig
