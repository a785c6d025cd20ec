"""Every release rule (release.md "Our rules"): each accept, each refusal with code and message."""

from __future__ import annotations

import json

import pytest

from chronicle.core.errors import RequestError
from chronicle.release.messages import (
    AddKey,
    AttestUpdate,
    RevokeKey,
    RevokeUpdate,
    Update,
    enable_contents,
    envelope,
    sign_message,
)
from chronicle.release.state import (
    VIOLATIONS,
    Accepted,
    AddKeyEffect,
    AddUpdateEffect,
    AttestationEffect,
    EnableEffect,
    MarkOpSigEffect,
    ReleaseViolation,
    RevokeKeyEffect,
    RevokeUpdateEffect,
    Skipped,
    Verdict,
    Violation,
)
from tests.release_support import CLIENT, CORE, NOW, SERVER, Chain, key, meta, pk


def accepted(verdict: Verdict, *, emergency: bool = False) -> Accepted:
    assert isinstance(verdict, Accepted), verdict
    assert verdict.emergency is emergency
    return verdict


def refused(verdict: Verdict, code: str, message: str) -> None:
    assert isinstance(verdict, Violation), verdict
    assert (verdict.code, verdict.message) == (code, message)
    assert verdict.status == VIOLATIONS[code][0]


@pytest.fixture
def acme() -> Chain:
    """Enabled ledger; vendor acme with full key acme1 (vouched by core) and limited acme-ci."""
    chain = Chain()
    accepted(chain.submit(AddKey("acme", pk("acme1"), "acme-1"), "core"))
    accepted(chain.submit(AddKey("acme", pk("acme-ci"), "ci", limited=True), "acme1"))
    return chain


# --- enable -----------------------------------------------------------------------------------

def test_enable_adds_the_core_vendor_and_its_key() -> None:
    chain = Chain(enable=False)
    verdict = accepted(chain.raw(enable_contents(NOW, CORE, pk("core")), by=SERVER))
    at = chain.entries[0].at
    assert verdict.effects == (
        EnableEffect(at=at, now="2026-01-01T00:00:00+00:00", core_vendor=CORE,
                     core_key=pk("core")),
        AddKeyEffect(at=at, vendor=CORE, publickey=pk("core"), name=None, limited=False,
                     signer=SERVER.public_b64, first=True, emergency=False),
    )
    assert chain.state.ledger() == verdict.effects[0]
    assert [k.publickey for k in chain.state.trusted_keys(CORE)] == [pk("core")]


def test_enable_must_be_signed_by_the_server_key() -> None:
    chain = Chain(enable=False)
    refused(chain.raw(enable_contents(NOW, CORE, pk("core")), by=CLIENT), "enable-not-server",
            "a Release Ledger Enabled entry must be signed by the server key")
    assert chain.state.ledger() is None


def test_enable_only_once() -> None:
    chain = Chain()
    refused(chain.raw(enable_contents(NOW, "other", pk("x")), by=SERVER), "already-enabled",
            "the release ledger was already enabled at entry 0")


def test_release_messages_before_enable_are_refused() -> None:
    chain = Chain(enable=False)
    refused(chain.submit(AddKey("acme", pk("acme1")), "core"), "not-enabled",
            "the release ledger is not enabled on this chain")


# --- first keys (vouching) --------------------------------------------------------------------

def test_first_key_vouched_by_core() -> None:
    chain = Chain()
    verdict = accepted(chain.submit(AddKey("acme", pk("acme1"), "acme-1"), "core"))
    effect = verdict.effects[0]
    assert isinstance(effect, AddKeyEffect)
    assert (effect.first, effect.emergency, effect.signer) == (True, False, pk("core"))
    assert isinstance(verdict.effects[1], MarkOpSigEffect)
    record = chain.state.trusted_keys("acme")[0]
    assert (record.name, record.limited, record.added_by) == ("acme-1", False, pk("core"))


def test_first_key_self_signed_is_not_vouched() -> None:
    refused(Chain().submit(AddKey("mallory", pk("mallory")), "mallory"),
            "first-key-not-vouched",
            "the first key of vendor mallory must be signed by a trusted key of the core "
            "vendor registry")


def test_first_key_signed_by_another_vendor_is_not_vouched(acme: Chain) -> None:
    refused(acme.submit(AddKey("beta", pk("beta1")), "acme1"), "first-key-not-vouched",
            "the first key of vendor beta must be signed by a trusted key of the core vendor "
            "registry")


def test_first_key_by_a_revoked_core_key_is_not_vouched() -> None:
    chain = Chain()
    accepted(chain.submit(AddKey(CORE, pk("core2")), "core"))
    accepted(chain.submit(RevokeKey(CORE, pk("core")), "core2"))
    refused(chain.submit(AddKey("acme", pk("acme1")), "core"), "first-key-not-vouched",
            "the first key of vendor acme must be signed by a trusted key of the core vendor "
            "registry")


def test_first_key_by_a_limited_core_key() -> None:
    chain = Chain()
    accepted(chain.submit(AddKey(CORE, pk("core-ci"), limited=True), "core"))
    refused(chain.submit(AddKey("acme", pk("acme1")), "core-ci"), "limited-key-op",
            f"key {pk('core-ci')} of vendor registry is limited: it may only sign update for "
            "registry")


def test_first_key_cannot_be_limited() -> None:
    refused(Chain().submit(AddKey("acme", pk("acme1"), limited=True), "core"),
            "first-key-limited", "the first key of vendor acme cannot be limited")


# --- later keys -------------------------------------------------------------------------------

def test_vendor_adds_keys_with_its_own_key(acme: Chain) -> None:
    verdict = accepted(acme.submit(AddKey("acme", pk("acme2")), "acme1"))
    effect = verdict.effects[0]
    assert isinstance(effect, AddKeyEffect)
    assert (effect.first, effect.emergency, effect.name) == (False, False, None)
    assert [k.publickey for k in acme.state.trusted_keys("acme")] == \
        [pk("acme1"), pk("acme-ci"), pk("acme2")]
    assert acme.state.trusted_keys("acme")[1].limited


def test_a_key_of_another_vendor_cannot_act(acme: Chain) -> None:
    """The vendor named in the message must be the signer's (libgossamer's defect)."""
    accepted(acme.submit(AddKey("beta", pk("beta1")), "core"))
    refused(acme.submit(AddKey("acme", pk("mallory")), "beta1"), "key-not-trusted",
            f"key {pk('beta1')} is not a trusted key of vendor acme")
    refused(acme.submit(Update("acme", "demo", "1.0.0", meta()), "beta1"), "key-not-trusted",
            f"key {pk('beta1')} is not a trusted key of vendor acme")


def test_key_added_twice(acme: Chain) -> None:
    refused(acme.submit(AddKey("acme", pk("acme-ci"), "again"), "acme1"), "key-exists",
            f"key {pk('acme-ci')} was already added to vendor acme at entry 2")


def test_a_revoked_key_cannot_be_added_again(acme: Chain) -> None:
    accepted(acme.submit(AddKey("acme", pk("acme2")), "acme1"))
    accepted(acme.submit(RevokeKey("acme", pk("acme1")), "acme2"))
    refused(acme.submit(AddKey("acme", pk("acme1"), "back"), "acme2"), "key-exists",
            f"key {pk('acme1')} was already added to vendor acme at entry 1")


def test_limited_key_may_only_sign_update(acme: Chain) -> None:
    message = (f"key {pk('acme-ci')} of vendor acme is limited: it may only sign update for "
               "acme")
    refused(acme.submit(AddKey("acme", pk("acme2")), "acme-ci"), "limited-key-op", message)
    refused(acme.submit(RevokeKey("acme", pk("acme1")), "acme-ci"), "limited-key-op", message)
    accepted(acme.submit(Update("acme", "demo", "1.0.0", meta()), "acme-ci"))
    refused(acme.submit(RevokeUpdate("acme", "demo", "1.0.0", "bad"), "acme-ci"),
            "limited-key-op", message)


def test_unknown_signer(acme: Chain) -> None:
    refused(acme.submit(AddKey("acme", pk("acme2")), "mallory"), "key-not-trusted",
            f"key {pk('mallory')} is not a trusted key of vendor acme")


# --- revoke-key -------------------------------------------------------------------------------

def test_revoke_key(acme: Chain) -> None:
    accepted(acme.submit(AddKey("acme", pk("acme2")), "acme1"))
    verdict = accepted(acme.submit(RevokeKey("acme", pk("acme1")), "acme2"))
    at = acme.entries[-1].at
    assert verdict.effects[0] == RevokeKeyEffect(at=at, vendor="acme", publickey=pk("acme1"),
                                                 signer=pk("acme2"), emergency=False)
    record = acme.state.vendor_keys("acme")[0]
    assert (record.trusted, record.revoked, record.revoked_by) == (False, at, pk("acme2"))
    refused(acme.submit(Update("acme", "demo", "1.0.0", meta()), "acme1"), "key-revoked",
            f"key {pk('acme1')} of vendor acme was revoked at entry {at.index}")


def test_a_key_cannot_revoke_itself(acme: Chain) -> None:
    accepted(acme.submit(AddKey("acme", pk("acme2")), "acme1"))
    refused(acme.submit(RevokeKey("acme", pk("acme1")), "acme1"), "self-revocation",
            f"key {pk('acme1')} cannot revoke itself: revoke it with another key of vendor "
            "acme")


def test_last_full_key_cannot_be_revoked(acme: Chain) -> None:
    refused(acme.submit(RevokeKey("acme", pk("acme1")), "core"), "last-full-key",
            f"key {pk('acme1')} is the last full key of vendor acme: add another full key "
            "first")


def test_limited_keys_do_not_count_as_full_but_can_be_revoked(acme: Chain) -> None:
    accepted(acme.submit(RevokeKey("acme", pk("acme-ci")), "acme1"))
    assert [k.publickey for k in acme.state.trusted_keys("acme")] == [pk("acme1")]


def test_revoke_unknown_key(acme: Chain) -> None:
    refused(acme.submit(RevokeKey("acme", pk("mallory")), "acme1"), "key-unknown",
            f"key {pk('mallory')} is not a key of vendor acme")


def test_revoke_key_twice(acme: Chain) -> None:
    accepted(acme.submit(AddKey("acme", pk("acme2")), "acme1"))
    accepted(acme.submit(RevokeKey("acme", pk("acme-ci")), "acme1"))
    refused(acme.submit(RevokeKey("acme", pk("acme-ci")), "acme2"), "key-already-revoked",
            f"key {pk('acme-ci')} of vendor acme was already revoked at entry 4")


def test_revoke_key_of_unknown_vendor(acme: Chain) -> None:
    refused(acme.submit(RevokeKey("zeta", pk("acme1")), "acme1"), "unknown-vendor",
            "unknown vendor zeta: it has no keys")


# --- updates ----------------------------------------------------------------------------------

def test_update(acme: Chain) -> None:
    verdict = accepted(acme.submit(Update("acme", "demo", "v1.2", meta(1)), "acme1"))
    effect = verdict.effects[0]
    assert isinstance(effect, AddUpdateEffect)
    assert (effect.version, effect.version_key, effect.metadata, effect.emergency) == \
        ("v1.2", "1.2.0.0", meta(1), False)
    record = acme.state.updates()[0]
    assert (record.vendor, record.name, record.version, record.revoked) == \
        ("acme", "demo", "v1.2", None)
    assert record.metadata.verifiable


def test_one_update_per_version_whatever_the_spelling(acme: Chain) -> None:
    accepted(acme.submit(Update("acme", "demo", "1.0.0", meta(1)), "acme1"))
    for spelling in ("1.0.0", "v1.0", "1.0.0.0", "V1"):
        refused(acme.submit(Update("acme", "demo", spelling, meta(2)), "acme1"),
                "update-exists", f"acme/demo {spelling} was already released at entry 3")
    accepted(acme.submit(Update("acme", "demo", "1.0.0-beta1", meta(3)), "acme1"))
    accepted(acme.submit(Update("acme", "other", "1.0.0", meta(4)), "acme1"))


def test_update_for_unknown_vendor() -> None:
    refused(Chain().submit(Update("zeta", "lib", "1.0.0", meta()), "core"), "unknown-vendor",
            "unknown vendor zeta: it has no keys")


# --- revoke-update ------------------------------------------------------------------------------

def test_revoke_update(acme: Chain) -> None:
    accepted(acme.submit(Update("acme", "demo", "1.0.0", meta()), "acme-ci"))
    verdict = accepted(acme.submit(RevokeUpdate("acme", "demo", "v1.0.0", "bad tag"), "acme1"))
    at = acme.entries[-1].at
    assert verdict.effects[0] == RevokeUpdateEffect(
        at=at, vendor="acme", name="demo", version="v1.0.0", version_key="1.0.0.0",
        reason="bad tag", signer=pk("acme1"), emergency=False)
    record = acme.state.updates()[0]
    assert (record.revoked, record.revoke_reason, record.revoked_by) == \
        (at, "bad tag", pk("acme1"))
    refused(acme.submit(RevokeUpdate("acme", "demo", "1.0.0", "again"), "acme1"),
            "update-revoked", f"acme/demo 1.0.0 was already revoked at entry {at.index}")
    refused(acme.submit(Update("acme", "demo", "1.0.0", meta(9)), "acme1"), "update-exists",
            "acme/demo 1.0.0 was already released at entry 3")


def test_revoke_unknown_update(acme: Chain) -> None:
    refused(acme.submit(RevokeUpdate("acme", "demo", "2.0.0", "x"), "acme1"), "update-unknown",
            "there is no update acme/demo 2.0.0")


# --- attestations -------------------------------------------------------------------------------

@pytest.fixture
def released(acme: Chain) -> Chain:
    accepted(acme.submit(Update("acme", "demo", "1.0.0", meta()), "acme1"))
    accepted(acme.submit(AddKey("rebuild", pk("rebuild1")), "core"))
    return acme


def test_attestation(released: Chain) -> None:
    verdict = accepted(released.submit(AttestUpdate(
        "acme", "demo", "1.0.0", "rebuild", "reproduced", "bit for bit"), "rebuild1"))
    assert verdict.effects[0] == AttestationEffect(
        at=released.entries[-1].at, vendor="acme", name="demo", version="1.0.0",
        version_key="1.0.0.0", attestor="rebuild", attestation="reproduced",
        details="bit for bit", signer=pk("rebuild1"))
    assert released.state.attestations() == [verdict.effects[0]]


def test_a_vendor_may_attest_its_own_update_and_attestations_on_revoked_updates(
        released: Chain) -> None:
    accepted(released.submit(RevokeUpdate("acme", "demo", "1.0.0", "oops"), "acme1"))
    accepted(released.submit(AttestUpdate("acme", "demo", "1.0.0", "acme", "vote-against"),
                             "acme1"))


def test_attestor_must_sign_as_itself(released: Chain) -> None:
    refused(released.submit(AttestUpdate("acme", "demo", "1.0.0", "acme", "code-review"),
                            "rebuild1"), "attestor-mismatch",
            f"key {pk('rebuild1')} is not a trusted key of attestor acme")
    refused(released.submit(AttestUpdate("acme", "demo", "1.0.0", "rebuild", "code-review"),
                            "core"), "attestor-mismatch",
            f"key {pk('core')} is not a trusted key of attestor rebuild")


def test_attestor_must_be_a_known_vendor(released: Chain) -> None:
    refused(released.submit(AttestUpdate("acme", "demo", "1.0.0", "nobody", "sec-audit"),
                            "rebuild1"), "unknown-vendor",
            "unknown vendor nobody: it has no keys")


def test_attestation_needs_an_existing_update(released: Chain) -> None:
    refused(released.submit(AttestUpdate("acme", "demo", "9.0.0", "rebuild", "spot-check"),
                            "rebuild1"), "update-unknown",
            "there is no update acme/demo 9.0.0")


def test_attestation_by_limited_or_revoked_key(released: Chain) -> None:
    refused(released.submit(AttestUpdate("acme", "demo", "1.0.0", "acme", "reproduced"),
                            "acme-ci"), "limited-key-op",
            f"key {pk('acme-ci')} of vendor acme is limited: it may only sign update for acme")
    accepted(released.submit(RevokeKey("acme", pk("acme-ci")), "acme1"))
    refused(released.submit(AttestUpdate("acme", "demo", "1.0.0", "acme", "reproduced"),
                            "acme-ci"), "key-revoked",
            f"key {pk('acme-ci')} of vendor acme was revoked at entry "
            f"{released.entries[-1].index}")


# --- emergency actions --------------------------------------------------------------------------

def test_core_acting_for_another_vendor_is_an_emergency(acme: Chain) -> None:
    add = accepted(acme.submit(AddKey("acme", pk("acme2")), "core"), emergency=True)
    assert isinstance(add.effects[0], AddKeyEffect) and add.effects[0].emergency
    revoke = accepted(acme.submit(RevokeKey("acme", pk("acme1")), "core"), emergency=True)
    assert isinstance(revoke.effects[0], RevokeKeyEffect) and revoke.effects[0].emergency
    update = accepted(acme.submit(Update("acme", "demo", "1.0.0", meta()), "core"),
                      emergency=True)
    assert isinstance(update.effects[0], AddUpdateEffect) and update.effects[0].emergency
    accepted(acme.submit(RevokeUpdate("acme", "demo", "1.0.0", "malware"), "core"),
             emergency=True)
    actions = acme.state.emergency_actions()
    assert [(a.op, a.vendor, a.signer, a.at.index) for a in actions] == [
        ("add-key", "acme", pk("core"), 3), ("revoke-key", "acme", pk("core"), 4),
        ("update", "acme", pk("core"), 5), ("revoke-update", "acme", pk("core"), 6)]
    keys = acme.state.vendor_keys("acme")
    assert keys[2].added_emergency and keys[0].revoked_emergency
    record = acme.state.updates()[0]
    assert record.emergency and record.revoked_emergency


def test_core_acting_for_itself_is_not_an_emergency() -> None:
    chain = Chain()
    accepted(chain.submit(AddKey(CORE, pk("core2")), "core"))
    accepted(chain.submit(Update(CORE, "tools", "1.0.0", meta()), "core2"))
    assert chain.state.emergency_actions() == []


def test_a_limited_core_key_cannot_act_for_another_vendor(acme: Chain) -> None:
    accepted(acme.submit(AddKey(CORE, pk("core-ci"), limited=True), "core"))
    refused(acme.submit(Update("acme", "demo", "1.0.0", meta()), "core-ci"), "limited-key-op",
            f"key {pk('core-ci')} of vendor registry is limited: it may only sign update for "
            "registry")


def test_core_emergency_still_obeys_the_other_rules(acme: Chain) -> None:
    refused(acme.submit(RevokeKey("acme", pk("acme1")), "core"), "last-full-key",
            f"key {pk('acme1')} is the last full key of vendor acme: add another full key "
            "first")
    refused(acme.submit(Update("zeta", "x", "1.0.0", meta()), "core"), "unknown-vendor",
            "unknown vendor zeta: it has no keys")


# --- signatures, replays, malformed, other traffic ------------------------------------------

def test_bad_signature(acme: Chain) -> None:
    body = '{"vendor":"acme","publickey":"' + pk("acme2") + '"}'
    forged = envelope("add-key", body, key("acme1").sign_b64(b"something else"), pk("acme1"))
    refused(acme.raw(forged), "bad-signature",
            f"op-sig does not verify over op-body with op-public-key {pk('acme1')}")


def test_replay(acme: Chain) -> None:
    contents = sign_message(Update("acme", "demo", "1.0.0", meta()), key("acme1"))
    accepted(acme.raw(contents))
    refused(acme.raw(contents), "replay",
            "op-sig was already used at entry 3: the message is a replay")
    rewrapped = {**json.loads(contents), "note": "same signed body, new envelope"}
    refused(acme.raw(json.dumps(rewrapped).encode()), "replay",
            "op-sig was already used at entry 3: the message is a replay")


def test_malformed_is_a_violation_not_an_exception(acme: Chain) -> None:
    refused(acme.raw(b'{"op":"update","op-body":"{}","op-sig":"x","op-public-key":"y"}'),
            "malformed", 'malformed release message: envelope: field "op-sig" is not a '
            "base64url Ed25519 signature (64 bytes, padded)")


@pytest.mark.parametrize(("contents", "kind"), [
    (b"plain text", "not-json"),
    (b"\xff\xfe", "not-json"),
    (b"[1]", "not-object"),
    (b'"text"', "not-object"),
    (b'{"a": 1}', "no-op"),
    (b'{"op": "vote"}', "unknown-op"),
    (b'{"op": 3}', "unknown-op"),
    (b'{"server-action": "New Client Registration", "now": "x"}', "server-action"),
])
def test_other_traffic_is_skipped(acme: Chain, contents: bytes, kind: str) -> None:
    verdict = acme.raw(contents)
    assert verdict == Skipped(kind)


def test_violation_as_error() -> None:
    error = Violation(code="replay", message="m", status=409).error()
    assert isinstance(error, ReleaseViolation) and isinstance(error, RequestError)
    assert (error.code, error.status, error.message, error.diagnostics()) == \
        ("replay", 409, "m", "replay: m")


def test_every_code_has_an_http_status_in_the_4xx_range() -> None:
    assert {status for status, _ in VIOLATIONS.values()} == {400, 403, 404, 409}


# --- batches ------------------------------------------------------------------------------------

def test_batch_second_message_is_judged_after_the_first(acme: Chain) -> None:
    """Inside one batch the gate judges message 2 against the state after message 1."""
    first = acme.next_entry(sign_message(AddKey("acme", pk("acme2")), key("acme1")))
    second_contents = sign_message(Update("acme", "demo", "1.0.0", meta()), key("acme2"))
    second = acme.next_entry(second_contents)
    second = type(second)(index=first.index + 1, currhash=second.currhash,
                          created=second.created, publickey=second.publickey,
                          contents=second.contents)
    # Judged against the state before the batch, message 2's signer is unknown ...
    refused(acme.state.judge(second), "key-not-trusted",
            f"key {pk('acme2')} is not a trusted key of vendor acme")
    # ... judged in order, each applied before the next, both are accepted.
    verdict1 = accepted(acme.state.judge(first))
    acme.state.apply(verdict1.effects)
    verdict2 = accepted(acme.state.judge(second))
    acme.state.apply(verdict2.effects)
    assert acme.state.updates()[0].signer == pk("acme2")


def test_batch_two_updates_of_one_version(acme: Chain) -> None:
    accepted(acme.submit(Update("acme", "demo", "2.0.0", meta(1)), "acme1"))
    refused(acme.submit(Update("acme", "demo", "2.0", meta(2)), "acme-ci"), "update-exists",
            "acme/demo 2.0 was already released at entry 3")
