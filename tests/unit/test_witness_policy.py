"""The log's side of witnessing, pure: configured witnesses, the K-of-N policy, the
checkpoint with its cosignatures appended; and the settings that configure them."""

from __future__ import annotations

from pathlib import Path

import pytest

from chronicle.config import (
    WITNESS_CONFIG_FILE,
    WITNESS_KEY_FILE,
    ConfigError,
    Settings,
    WitnessDir,
    WitnessSettings,
)
from chronicle.core.checkpoint import (
    Checkpoint,
    CheckpointFormatError,
    Cosigner,
    WitnessConfigError,
    WitnessEndpoint,
    WitnessPolicy,
    add_cosignatures,
    check_origin,
    open_checkpoint,
    sign_checkpoint,
)
from chronicle.core.merkle import EMPTY_ROOT
from chronicle.core.note import Ed25519Signer, NoteSignature, open_note, parse_note

ORIGIN = "log.example/tlog"
CHECKPOINT = Checkpoint(ORIGIN, 42, EMPTY_ROOT)
LOG = Ed25519Signer.from_seed(ORIGIN, bytes(32))
W1 = Cosigner.from_seed("w1.example", bytes([1]) * 32)
W2 = Cosigner.from_seed("w2.example", bytes([2]) * 32)
W3 = Cosigner.from_seed("w3.example", bytes([3]) * 32)
LOG_SIGNATURE = parse_note(sign_checkpoint(CHECKPOINT, LOG))[1][0]


def policy(quorum: int, *cosigners: Cosigner) -> WitnessPolicy:
    return WitnessPolicy(tuple(c.verifier() for c in cosigners), quorum)


# --- configured witnesses -------------------------------------------------------------------

def test_a_witness_is_url_and_vkey() -> None:
    endpoint = WitnessEndpoint.parse(f"https://w1.example/prefix/  {W1.vkey()}")
    assert endpoint.url == "https://w1.example/prefix"
    assert endpoint.name == "w1.example"
    assert endpoint.verifier == W1.verifier()
    assert WitnessEndpoint.parse(endpoint.to_text()) == endpoint
    # A plain Ed25519 vkey names the same key (Go's formats accept both).
    assert WitnessEndpoint.parse(f"http://w {Ed25519Signer('w1.example', W1.key).vkey()}") \
        .verifier == W1.verifier()


@pytest.mark.parametrize(("text", "message"), [
    ("https://w1.example", "a witness is 'URL VKEY', got 'https://w1.example'"),
    (f"https://w1.example {W1.vkey()} extra",
     f"a witness is 'URL VKEY', got 'https://w1.example {W1.vkey()} extra'"),
    (f"ftp://w1.example {W1.vkey()}",
     "witness URL must be http(s)://host[/prefix], got 'ftp://w1.example'"),
    (f"https:///nohost {W1.vkey()}",
     "witness URL must be http(s)://host[/prefix], got 'https:///nohost'"),
    (f"https://w?x=1 {W1.vkey()}",
     "witness URL must be http(s)://host[/prefix], got 'https://w?x=1'"),
    ("https://w nonsense",
     "witness https://w: verifier key must be <name>+<key id>+<base64 key>"),
])
def test_malformed_witnesses_are_refused(text: str, message: str) -> None:
    with pytest.raises(WitnessConfigError) as caught:
        WitnessEndpoint.parse(text)
    assert caught.value.message == message


@pytest.mark.parametrize(("origin", "message"), [
    ("", "checkpoint origin must not be empty"),
    ("a\tb", "checkpoint origin contains a control character"),
])
def test_origins_are_checkpoint_first_lines(origin: str, message: str) -> None:
    check_origin("example.com/log with spaces is fine")
    with pytest.raises(CheckpointFormatError) as caught:
        check_origin(origin)
    assert caught.value.message == message


# --- K of N --------------------------------------------------------------------------------

def test_the_quorum_counts_valid_cosignatures_one_per_witness() -> None:
    two_of_three = policy(2, W1, W2, W3)
    assert not two_of_three.check(CHECKPOINT, []).satisfied
    one = two_of_three.check(CHECKPOINT, [W2.cosign(CHECKPOINT, 100)])
    assert (one.satisfied, one.cosigners, one.needed) == (False, ("w2.example",), 2)
    # The same witness twice counts once (its newest cosignature is kept).
    twice = two_of_three.check(CHECKPOINT, [W2.cosign(CHECKPOINT, 100),
                                            W2.cosign(CHECKPOINT, 200)])
    assert twice.cosigners == ("w2.example",)
    assert [int.from_bytes(s.signature[:8], "big") for s in twice.cosignatures] == [200]
    both = two_of_three.check(CHECKPOINT, [W3.cosign(CHECKPOINT, 1), W1.cosign(CHECKPOINT, 1)])
    assert both.satisfied and both.cosigners == ("w1.example", "w3.example")


def test_only_verified_cosignatures_of_this_checkpoint_count() -> None:
    one_of_one = policy(1, W1)
    other = Checkpoint(ORIGIN, 43, EMPTY_ROOT)
    good = W1.cosign(CHECKPOINT, 5)
    forged = NoteSignature(good.name, good.key_id, good.signature[:-1] + b"\x00")
    stranger = Cosigner.from_seed("w1.example", bytes([9]) * 32).cosign(CHECKPOINT, 5)
    for signatures in ([W1.cosign(other, 5)], [forged], [stranger], [W2.cosign(CHECKPOINT, 5)],
                       [LOG_SIGNATURE]):
        assert not one_of_one.check(CHECKPOINT, signatures).satisfied
    assert one_of_one.check(CHECKPOINT, [forged, stranger, good]).cosignatures == (good,)


def test_quorum_zero_is_satisfied_at_once() -> None:
    assert policy(0).check(CHECKPOINT, []).satisfied
    assert policy(0, W1).check(CHECKPOINT, []).satisfied


@pytest.mark.parametrize(("quorum", "cosigners", "message"), [
    (3, (W1, W2), "witness quorum 3 must be between 0 and the number of witnesses (2)"),
    (-1, (W1,), "witness quorum -1 must be between 0 and the number of witnesses (1)"),
    (1, (W1, Cosigner.from_seed("w1.example", bytes([7]) * 32)),
     "witness names must differ: w1.example twice"),
])
def test_impossible_policies_are_refused(quorum: int, cosigners: tuple[Cosigner, ...],
                                         message: str) -> None:
    with pytest.raises(WitnessConfigError) as caught:
        policy(quorum, *cosigners)
    assert caught.value.message == message


def test_cosignatures_are_appended_to_the_log_note() -> None:
    note = sign_checkpoint(CHECKPOINT, LOG)
    first = W1.cosign(CHECKPOINT, 10)
    cosigned = add_cosignatures(note, [first, W2.cosign(CHECKPOINT, 10)])
    # A C2SP note with several signatures: the log's verifies it alone, so do witnesses.
    assert open_checkpoint(cosigned, [LOG.verifier()]).checkpoint == CHECKPOINT
    opened = open_note(cosigned, [LOG.verifier(), W1.verifier(), W2.verifier()])
    assert [s.name for s in opened.signatures] == [ORIGIN, "w1.example", "w2.example"]
    # A newer cosignature by the same witness replaces its old line.
    newer = W1.cosign(CHECKPOINT, 20)
    again = add_cosignatures(cosigned, [newer])
    assert [s for s in parse_note(again)[1] if s.name == "w1.example"] == [newer]
    assert len(parse_note(again)[1]) == 3


# --- settings ------------------------------------------------------------------------------

def test_the_ledger_lists_its_witnesses_and_quorum() -> None:
    settings = Settings.from_mapping({
        "witnesses": [f"https://w1.example {W1.vkey()}", f"https://w2.example {W2.vkey()}"],
        "witness-quorum": 2, "witness-republish": "1 minute"})
    assert [w.name for w in settings.witnesses] == ["w1.example", "w2.example"]
    assert settings.witness_policy().quorum == 2
    assert settings.witness_republish is not None
    assert settings.witness_republish.total_seconds() == 60
    defaults = Settings.from_mapping({})
    assert (defaults.witnesses, defaults.witness_quorum) == ((), 0)


@pytest.mark.parametrize(("raw", "message"), [
    ({"witnesses": "https://w1.example"},
     'witnesses must be a list of "URL VKEY" strings'),
    ({"witnesses": ["https://w1.example"]},
     "invalid setting witnesses: a witness is 'URL VKEY', got 'https://w1.example'"),
    ({"witness-quorum": 1},
     "invalid setting witnesses / witness-quorum: witness quorum 1 must be between 0 and "
     "the number of witnesses (0)"),
    ({"witness-quorum": -1}, "witness-quorum must be at least 0"),
])
def test_bad_witness_settings_are_refused(raw: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        Settings.from_mapping(raw)
    assert caught.value.message == message


def test_a_witness_directory_has_its_own_names(tmp_path: Path) -> None:
    witness_dir = WitnessDir(tmp_path)
    assert witness_dir.config_path == tmp_path / WITNESS_CONFIG_FILE
    assert witness_dir.default_key_path == tmp_path / WITNESS_KEY_FILE
    with pytest.raises(ConfigError) as caught:
        witness_dir.settings()
    assert caught.value.message == (f"{tmp_path} is not a chronicle witness directory (no "
                                    "witness.toml; run `chronicle witness init`)")
    settings = WitnessSettings.from_mapping({"name": "w.example/1"})
    assert (settings.database, settings.signing_key_file) == ("sqlite:witness.db",
                                                              "witness-secret.key")
    with pytest.raises(ConfigError) as caught:
        WitnessSettings.from_mapping({})
    assert caught.value.message == "name '' is not a key name (no spaces or '+')"
    with pytest.raises(ConfigError) as caught:
        WitnessSettings.from_mapping({"name": "w", "paginate-export": 1})
    assert caught.value.message == "unknown setting(s): paginate-export"
    with pytest.raises(ConfigError) as caught:
        WitnessSettings.from_mapping({"name": "w", "max-body-size": 1000})
    assert caught.value.message == "max-body-size must be at least 65536"
