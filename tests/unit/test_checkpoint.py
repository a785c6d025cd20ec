"""C2SP checkpoints, cosignature/v1, tlog-witness messages and the witness decision."""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chronicle.core.checkpoint import (
    MAX_PROOF_LINES,
    MAX_SIZE,
    TLOG_SIZE_CONTENT_TYPE,
    AddCheckpointRequest,
    BadProof,
    BadRequest,
    BadSignature,
    Checkpoint,
    CheckpointFormatError,
    CheckpointOriginError,
    Conflict,
    Cosign,
    CosignatureVerifier,
    Cosigner,
    UnknownLog,
    WitnessRequestError,
    WitnessState,
    cosignature_message,
    cosignature_response,
    cosignature_timestamp,
    decide_add_checkpoint,
    format_tlog_size,
    open_checkpoint,
    parse_signature_lines,
    parse_tlog_size,
    sign_checkpoint,
    verifier_from_vkey,
    verify_cosignatures,
)
from chronicle.core.errors import ChronicleError, EncodingError
from chronicle.core.leaf import LeafRecord
from chronicle.core.merkle import MemoryHashes, Tile, TreeState, decode_entry_bundle, leaf_hash
from chronicle.core.note import (
    Ed25519Signer,
    Ed25519Verifier,
    NoteFormatError,
    NoteKeyError,
    NoteSignature,
    NoteSignatureError,
    UnverifiedNoteError,
    VerifierKey,
    b64encode,
    open_note,
    sign_note,
)
from chronicle.core.sapient import verify

ORIGIN = "ledger.example.org/chronicle/tlog"
LOG = Ed25519Signer.from_seed(ORIGIN, b"\x11" * 32)
WITNESS = Cosigner.from_seed("witness.example/w1", b"\x22" * 32)
TREE = MemoryHashes.from_leaf_hashes(leaf_hash(i.to_bytes(4, "big")) for i in range(300))
FORK = MemoryHashes.from_leaf_hashes(leaf_hash(i.to_bytes(4, "little")) for i in range(300))

# The examples of c2sp.org/tlog-checkpoint, tlog-cosignature and tlog-witness.
SPEC_TEXT = "example.com/behind-the-sofa\n20852163\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n"
SPEC_LOG_SIG = ("— example.com/behind-the-sofa Az3grlgtzPICa5OS8npVmf1Myq/5IZniMp+ZJurmRDeOo"
                "RDe4URYN7u5/Zhcyv2q1gGzGku9nTo+zyWE+xeMcTOAYQ8=\n")
SPEC_COSIG = ("— witness.example.com/w1 jWbPPwAAAABkGFDLEZMHwSRaJNiIDoe9DYn/zXcrtPHeolMI5OWXE"
              "hZCB9dlrDJsX3b2oyin1nPZqhf5nNo0xUe+mbIUBkBIfZ+qnA==\n")
SPEC_REQUEST = (
    "old 20852014\n"
    "PlRNCrwHpqhGrupue0L7gxbjbMiKA9temvuZZDDpkaw=\n"
    "jrJZDmY8Y7SyJE0MWLpLozkIVMSMZcD5kvuKxPC3swk=\n"
    "5+pKlUdi2LeF/BcMHBn+Ku6yhPGNCswZZD1X/6QgPd8=\n"
    "/6WVhPs2CwSsb5rYBH5cjHV/wSmA79abXAwhXw3Kj/0=\n"
    "\n"
    + SPEC_TEXT + "\n" + SPEC_LOG_SIG +
    "— example.com/behind-the-sofa opLqBQsREYCgu6xQkYQwJr9fo45a62DN9EdmHXnZdXNqlcVGlCum2Wks+49/"
    "V6267UEjw6QUXTS5Rovnzv++qbSzm9Q=\n").encode()


def checkpoint(size: int, tree: MemoryHashes = TREE, origin: str = ORIGIN) -> Checkpoint:
    return Checkpoint(origin, size, tree.root(size))


# --- checkpoint bodies -------------------------------------------------------------------------

def test_spec_checkpoint() -> None:
    cp = Checkpoint.parse(SPEC_TEXT)
    assert (cp.origin, cp.size, cp.root.hex()[:8]) == ("example.com/behind-the-sofa", 20852163,
                                                       "0ac5186a")
    assert cp.to_text() == SPEC_TEXT


@given(st.text(st.characters(min_codepoint=0x20, max_codepoint=0xD7FF), min_size=1),
       st.integers(0, MAX_SIZE), st.binary(min_size=32, max_size=32),
       st.lists(st.text(st.characters(min_codepoint=0x20, max_codepoint=0xD7FF),
                        min_size=1), max_size=3))
def test_checkpoint_round_trip(origin: str, size: int, root: bytes, ext: list[str]) -> None:
    cp = Checkpoint(origin, size, root, tuple(ext))
    assert Checkpoint.parse(cp.to_text()) == cp


ROOT64 = b64encode(b"\x00" * 32)


@pytest.mark.parametrize(("text", "message"), [
    (f"o\n5\n{ROOT64}", "end with a newline"),
    ("o\n5\n", "needs origin, size and root lines, got 2"),
    (f"\n5\n{ROOT64}\n", "origin must not be empty"),
    (f"o\x7f\x01\n5\n{ROOT64}\n", "control character"),
    (f"o\n05\n{ROOT64}\n", "without leading zeroes"),
    (f"o\n+5\n{ROOT64}\n", "without leading zeroes"),
    (f"o\n-1\n{ROOT64}\n", "without leading zeroes"),
    (f"o\n 5\n{ROOT64}\n", "without leading zeroes"),
    (f"o\n\n{ROOT64}\n", "without leading zeroes"),
    (f"o\n{MAX_SIZE + 1}\n{ROOT64}\n", "without leading zeroes"),
    (f"o\n5\n{b64encode(b'x' * 31)}\n", "must be 32 bytes, got 31"),
    (f"o\n5\n{ROOT64[:-1]}\n", "not base64"),
    ("o\n5\nAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAB=\n", "not canonical base64"),
    (f"o\n5\n{ROOT64}\n\n", "extension line must not be empty"),
])
def test_checkpoint_parsing_is_strict(text: str, message: str) -> None:
    with pytest.raises(CheckpointFormatError, match=message) as info:
        Checkpoint.parse(text)
    assert isinstance(info.value, EncodingError)


def test_sign_and_open_checkpoint() -> None:
    cp = checkpoint(300)
    signed = sign_checkpoint(cp, LOG)
    opened = open_checkpoint(signed, [LOG.verifier()], origin=ORIGIN)
    assert opened.checkpoint == cp
    assert opened.to_bytes() == signed
    with pytest.raises(CheckpointOriginError, match="another log") as info:
        open_checkpoint(signed, [LOG.verifier()], origin="other.example/log")
    assert info.value.expected == "other.example/log"
    with pytest.raises(UnverifiedNoteError):
        open_checkpoint(signed, [Ed25519Signer.generate(ORIGIN).verifier()])
    forged = signed.replace(str(300).encode(), b"301", 1)
    with pytest.raises(NoteSignatureError):
        open_checkpoint(forged, [LOG.verifier()])


# --- cosignature/v1 ---------------------------------------------------------------------------

def test_spec_cosignature_line_structure() -> None:
    sig = NoteSignature.parse_line(SPEC_COSIG[:-1])
    assert sig.key_id == 0x8D66CF3F
    assert cosignature_timestamp(sig) == 1679315147  # the spec's "time 1679315147"
    with pytest.raises(NoteFormatError, match="must be 72 bytes"):
        cosignature_timestamp(NoteSignature.parse_line(SPEC_LOG_SIG[:-1]))


def test_cosignature_construction_by_hand() -> None:
    cp = Checkpoint.parse(SPEC_TEXT)
    sig = WITNESS.cosign(cp, 1679315147)
    public = WITNESS.key.public
    assert sig.key_id == int.from_bytes(hashlib.sha256(
        b"witness.example/w1\n\x04" + public).digest()[:4], "big")
    assert sig.signature[:8] == (1679315147).to_bytes(8, "big")
    message = b"cosignature/v1\ntime 1679315147\n" + SPEC_TEXT.encode()
    assert cosignature_message(SPEC_TEXT, 1679315147) == message
    assert verify(public, message, sig.signature[8:])
    assert WITNESS.verifier().verify(SPEC_TEXT.encode(), sig.signature)


def test_cosignatures_verify_and_tampering_fails() -> None:
    cp = checkpoint(200)
    sig = WITNESS.cosign(cp, 1_700_000_000)
    witness = WITNESS.verifier()
    assert verify_cosignatures(cp, [sig], [witness]) == [sig]
    later = NoteSignature(sig.name, sig.key_id, (1_700_000_001).to_bytes(8, "big")
                          + sig.signature[8:])
    with pytest.raises(NoteSignatureError, match="invalid signature for key witness"):
        verify_cosignatures(cp, [later], [witness])
    with pytest.raises(NoteSignatureError):
        verify_cosignatures(checkpoint(201), [sig], [witness])
    with pytest.raises(UnverifiedNoteError):
        verify_cosignatures(cp, [sig], [Cosigner.generate("witness.example/w1").verifier()])
    too_late = NoteSignature(sig.name, sig.key_id, (MAX_SIZE + 1).to_bytes(8, "big")
                             + sig.signature[8:])
    assert not witness.verify(cp.to_text().encode(), too_late.signature)
    assert not witness.verify(b"one line\n", sig.signature)
    with pytest.raises(NoteFormatError, match="out of range"):
        WITNESS.cosign(cp, -1)


def test_log_signature_and_cosignature_in_one_note() -> None:
    cp = checkpoint(123)
    signed = sign_checkpoint(cp, LOG)
    cosigned = signed + WITNESS.cosign(cp, 1_700_000_000).line().encode()
    opened = open_note(cosigned, [LOG.verifier(), WITNESS.verifier()])
    assert [s.name for s in opened.signatures] == [ORIGIN, "witness.example/w1"]
    # A client that trusts only the log ignores the cosignature, and vice versa.
    assert len(open_note(cosigned, [LOG.verifier()]).unverified) == 1
    assert len(open_note(cosigned, [WITNESS.verifier()]).unverified) == 1
    # The cosignature key is not interchangeable with an Ed25519 note key.
    plain = Ed25519Verifier(WITNESS.name, WITNESS.key.public)
    assert plain.key_id != WITNESS.key_id
    with pytest.raises(UnverifiedNoteError):
        open_note(cosigned, [plain])


def test_cosigner_keys() -> None:
    vkey = WITNESS.vkey()
    assert VerifierKey.parse(vkey).alg == 0x04
    assert CosignatureVerifier.from_vkey(vkey) == WITNESS.verifier()
    # Go's formats/note also takes the witness's plain Ed25519 vkey; the key ID is still 0x04's.
    plain_vkey = Ed25519Verifier(WITNESS.name, WITNESS.key.public).vkey()
    assert CosignatureVerifier.from_vkey(plain_vkey).key_id == WITNESS.key_id
    assert verifier_from_vkey(vkey) == WITNESS.verifier()
    assert verifier_from_vkey(LOG.vkey()) == LOG.verifier()
    weird = VerifierKey("w", 0x02, WITNESS.key.public).to_text()
    with pytest.raises(NoteKeyError, match="unsupported signature type 0x02"):
        verifier_from_vkey(weird)
    with pytest.raises(NoteKeyError, match="not cosignature/v1"):
        CosignatureVerifier.from_vkey(weird)
    again = Cosigner.from_skey(WITNESS.skey())
    assert again.key.public == WITNESS.key.public and again.key_id == WITNESS.key_id
    assert WITNESS.key.secret.hex() not in repr(WITNESS)


def test_cosignature_response_round_trip() -> None:
    sigs = [WITNESS.cosign(checkpoint(5), 1), WITNESS.cosign(checkpoint(5), 2)]
    body = cosignature_response(sigs)
    assert parse_signature_lines(body) == sigs
    for bad in [b"", body[:-1], body + b"junk\n", b"\xff\n"]:
        with pytest.raises(EncodingError):
            parse_signature_lines(bad)
    with pytest.raises(WitnessRequestError):
        cosignature_response([])


# --- tlog-witness messages ---------------------------------------------------------------------

def test_spec_add_checkpoint_request() -> None:
    request = AddCheckpointRequest.parse(SPEC_REQUEST)
    assert request.old_size == 20852014
    assert len(request.proof) == 4
    assert request.proof[0].hex().startswith("3e544d0a")
    assert request.origin == "example.com/behind-the-sofa"
    assert request.checkpoint.startswith(SPEC_TEXT.encode())
    assert request.to_bytes() == SPEC_REQUEST


@settings(max_examples=50)
@given(st.integers(0, MAX_SIZE), st.lists(st.binary(min_size=32, max_size=32),
                                          max_size=MAX_PROOF_LINES))
def test_add_checkpoint_round_trip(old: int, proof: list[bytes]) -> None:
    request = AddCheckpointRequest(old, tuple(proof), sign_checkpoint(checkpoint(7), LOG))
    assert AddCheckpointRequest.parse(request.to_bytes()) == request


NOTE = sign_checkpoint(checkpoint(7), LOG)
HASH64 = b64encode(b"\x01" * 32).encode()


@pytest.mark.parametrize(("body", "message"), [
    (b"", "ends before the blank line"),
    (b"old 5\n" + NOTE, "consistency proof line is not base64"),  # the note's lines
    (b"old 5\n", "ends before the blank line"),
    (b"old 5\n\n", "has no checkpoint"),
    (b"old 05\n\n" + NOTE, "without leading zeroes"),
    (b"old -1\n\n" + NOTE, "without leading zeroes"),
    (b"old  5\n\n" + NOTE, "without leading zeroes"),
    (b"old 5 \n\n" + NOTE, "without leading zeroes"),
    (b"Old 5\n\n" + NOTE, "must start with 'old <size>'"),
    (b"\n" + NOTE, "must start with 'old <size>'"),
    (b"old 5\r\n\n" + NOTE, "without leading zeroes"),
    (b"old 5\n" + HASH64[:-1] + b"\n\n" + NOTE, "not base64"),
    (b"old 5\n" + b64encode(b"x" * 31).encode() + b"\n\n" + NOTE, "32-byte hash, got 31"),
    (b"old 5\n" + (HASH64 + b"\n") * 64 + b"\n" + NOTE, "more than 63 consistency proof lines"),
    (b"old 5\n" + b"A" * 65 + b"\n\n" + NOTE, "overlong line"),
    (b"old 5\n\xff\n\n" + NOTE, "not ASCII"),
])
def test_add_checkpoint_parsing_is_strict(body: bytes, message: str) -> None:
    with pytest.raises(WitnessRequestError, match=message):
        AddCheckpointRequest.parse(body)


def test_add_checkpoint_takes_63_proof_lines() -> None:
    body = b"old 5\n" + (HASH64 + b"\n") * 63 + b"\n" + NOTE
    assert len(AddCheckpointRequest.parse(body).proof) == 63


def test_tlog_size_body() -> None:
    assert TLOG_SIZE_CONTENT_TYPE == "text/x.tlog.size"
    assert format_tlog_size(0) == b"0\n"
    assert parse_tlog_size(format_tlog_size(20852163)) == 20852163
    for bad in [b"", b"5", b"05\n", b"5\n\n", b" 5\n", b"-5\n", b"\xff\n"]:
        with pytest.raises(WitnessRequestError):
            parse_tlog_size(bad)
    with pytest.raises(WitnessRequestError):
        format_tlog_size(-1)


# --- the witness decision ----------------------------------------------------------------------

def submit(old: int, size: int, state: WitnessState | None, *,
           proof: list[bytes] | None = None, tree: MemoryHashes = TREE,
           signer: Ed25519Signer = LOG, verifiers: list[Ed25519Verifier] | None = None,
           ) -> object:
    if proof is None:
        proof = tree.consistency_proof(old, size) if old <= size else []
    request = AddCheckpointRequest(old, tuple(proof), sign_checkpoint(checkpoint(size, tree),
                                                                      signer))
    request = AddCheckpointRequest.parse(request.to_bytes())
    return decide_add_checkpoint(request, [LOG.verifier()] if verifiers is None else verifiers,
                                 state)


def state_at(size: int, tree: MemoryHashes = TREE) -> WitnessState:
    return WitnessState(size, tree.root(size))


def test_first_checkpoint_is_cosigned_from_old_zero() -> None:
    verdict = submit(0, 10, None)
    assert isinstance(verdict, Cosign) and verdict.status == 200
    assert verdict.new_state == state_at(10)
    assert verdict.checkpoint == checkpoint(10)


def test_growth_with_a_valid_proof_is_cosigned() -> None:
    verdict = submit(10, 250, state_at(10))
    assert isinstance(verdict, Cosign)
    assert verdict.new_state == state_at(250)


def test_same_checkpoint_again_is_cosigned() -> None:
    assert isinstance(submit(10, 10, state_at(10)), Cosign)


@pytest.mark.parametrize(("old", "size", "state", "kind", "known"), [
    (5, 10, None, Conflict, 0),                     # the witness has never seen the log
    (0, 10, state_at(10), Conflict, 10),            # the log forgot what was cosigned
    (5, 10, state_at(10), Conflict, 10),
    (20, 30, state_at(10), Conflict, 10),
    (10, 10, state_at(20), Conflict, 20),           # a smaller tree
])
def test_conflicts_report_the_known_size(old: int, size: int, state: WitnessState | None,
                                         kind: type, known: int) -> None:
    verdict = submit(old, size, state)
    assert isinstance(verdict, Conflict)
    assert (verdict.status, verdict.known_size) == (409, known)
    assert verdict.body() == f"{known}\n".encode()
    assert verdict.content_type == "text/x.tlog.size"


def test_never_cosigns_a_smaller_tree() -> None:
    verdict = submit(20, 10, state_at(20))
    assert isinstance(verdict, BadRequest) and verdict.status == 400
    assert "larger than the checkpoint's 10" in verdict.reason


def test_never_cosigns_a_different_root_at_the_same_size() -> None:
    verdict = submit(10, 10, state_at(10), tree=FORK)
    assert isinstance(verdict, Conflict)
    assert "another root hash" in verdict.reason


def test_never_cosigns_an_inconsistent_tree() -> None:
    verdict = submit(10, 250, state_at(10), tree=FORK,
                     proof=FORK.consistency_proof(10, 250))
    assert isinstance(verdict, BadProof) and verdict.status == 422
    verdict = submit(10, 250, state_at(10, FORK), proof=TREE.consistency_proof(10, 250))
    assert isinstance(verdict, BadProof)


@pytest.mark.parametrize(("old", "size", "state", "proof", "reason"), [
    (0, 10, None, [b"\x00" * 32], "from size 0 must be empty"),
    (10, 10, state_at(10), [b"\x00" * 32], "between equal sizes must be empty"),
    (10, 250, state_at(10), [], "must have"),
    (10, 250, state_at(10), TREE.consistency_proof(10, 250)[:-1], "must have"),
    (10, 250, state_at(10), [b"\x00" * 32, *TREE.consistency_proof(10, 250)[1:]],
     "does not match"),
    (10, 250, state_at(10), TREE.consistency_proof(11, 250), "must have 8 hashes, got 9"),
    (10, 250, state_at(10), TREE.consistency_proof(10, 251), "does not match"),
])
def test_bad_proofs(old: int, size: int, state: WitnessState | None, proof: list[bytes],
                    reason: str) -> None:
    verdict = submit(old, size, state, proof=proof)
    assert isinstance(verdict, BadProof), verdict
    assert reason in verdict.reason


def test_unknown_log_and_bad_signatures() -> None:
    verdict = submit(0, 10, None, verifiers=[])
    assert isinstance(verdict, UnknownLog) and verdict.status == 404
    assert verdict.origin == ORIGIN
    impostor = Ed25519Signer.from_seed(ORIGIN, b"\x33" * 32)
    verdict = submit(0, 10, None, signer=impostor)
    assert isinstance(verdict, BadSignature) and verdict.status == 403
    assert "no verifiable signatures" in verdict.reason
    signed = sign_checkpoint(checkpoint(10), LOG).replace(b"\n10\n", b"\n11\n")
    verdict = decide_add_checkpoint(AddCheckpointRequest(0, (), signed), [LOG.verifier()], None)
    assert isinstance(verdict, BadSignature)
    assert "invalid signature" in verdict.reason


def test_bad_requests() -> None:
    empty = Checkpoint(ORIGIN, 0, TREE.root(0))
    request = AddCheckpointRequest(0, (), sign_checkpoint(empty, LOG))
    verdict = decide_add_checkpoint(request, [LOG.verifier()], None)
    assert isinstance(verdict, BadRequest) and "empty tree is never cosigned" in verdict.reason
    garbage = AddCheckpointRequest(0, (), b"not a note")
    verdict = decide_add_checkpoint(garbage, [LOG.verifier()], None)
    assert isinstance(verdict, BadRequest) and "signature block" in verdict.reason
    not_a_checkpoint = AddCheckpointRequest(0, (), sign_note("just text\n", LOG))
    verdict = decide_add_checkpoint(not_a_checkpoint, [LOG.verifier()], None)
    assert isinstance(verdict, BadRequest) and "origin, size and root" in verdict.reason


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 300), st.integers(1, 300), st.booleans(),
                          st.booleans()), min_size=1, max_size=12))
def test_witness_state_only_moves_forward_along_the_honest_tree(
        steps: list[tuple[int, int, bool, bool]]) -> None:
    """Random submissions, honest or forked, with right or wrong old sizes."""
    state: WitnessState | None = None
    for old, size, forked, honest_old in steps:
        tree = FORK if forked else TREE
        known = state.size if state is not None else 0
        old = known if honest_old else old
        proof = tree.consistency_proof(old, size) if old <= size else []
        verdict = submit(old, size, state, tree=tree, proof=proof)
        if isinstance(verdict, Cosign):
            assert old == known <= size
            if state is not None:
                # Consistent with everything cosigned before: same prefix, never smaller.
                assert verdict.new_state.size >= state.size
                assert tree.root(state.size) == state.root
            state = verdict.new_state
        else:
            assert not isinstance(verdict, UnknownLog | BadSignature)
    if state is not None:
        assert state.root in (TREE.root(state.size), FORK.root(state.size))


# --- parsers fail with the library's own errors, never a raw ValueError ------------------------

VALID_INPUTS = [sign_checkpoint(checkpoint(9), LOG), SPEC_REQUEST,
                cosignature_response([WITNESS.cosign(checkpoint(9), 5)])]


@st.composite
def mangled(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(VALID_INPUTS)))
    for _ in range(draw(st.integers(1, 4))):
        pos = draw(st.integers(0, len(data) - 1))
        action = draw(st.sampled_from(["flip", "drop", "insert"]))
        if action == "flip":
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif action == "drop":
            del data[pos]
        else:
            data.insert(pos, draw(st.sampled_from(b"\n \x00+=/A\xe2\x80\x94")))
    return bytes(data)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300) | mangled())
def test_parsers_only_raise_chronicle_errors(data: bytes) -> None:
    text = data.decode("utf-8", "replace")
    parsers: list[Callable[[], object]] = [
        lambda: open_note(data, [LOG.verifier(), WITNESS.verifier()]),
        lambda: Checkpoint.parse(text),
        lambda: AddCheckpointRequest.parse(data),
        lambda: parse_tlog_size(data),
        lambda: parse_signature_lines(data),
        lambda: Tile.parse(text),
        lambda: LeafRecord.from_bytes(data),
        lambda: TreeState.from_bytes(data),
        lambda: decode_entry_bundle(data),
        lambda: VerifierKey.parse(text),
        lambda: CosignatureVerifier.from_vkey(text),
        lambda: Ed25519Signer.from_skey(text),
    ]
    for parse in parsers:
        with contextlib.suppress(ChronicleError):
            parse()
    try:
        request = AddCheckpointRequest.parse(data)
    except ChronicleError:
        return
    verdict = decide_add_checkpoint(request, [LOG.verifier()], state_at(9))
    assert verdict.status in (200, 400, 403, 404, 409, 422)
