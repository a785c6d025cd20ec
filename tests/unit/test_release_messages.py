"""Release messages: canonical form, strict parsing with precise errors, classification."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime

import pytest

from chronicle.core.encoding import b64u_decode
from chronicle.core.sapient import verify
from chronicle.release.messages import (
    ACTION_ENABLE,
    AddKey,
    AttestUpdate,
    Body,
    EnableLedger,
    MalformedMessage,
    Metadata,
    NotRelease,
    ReleaseMessage,
    RevokeKey,
    RevokeUpdate,
    Update,
    canonical_body,
    classify,
    enable_contents,
    envelope,
    normalize_version,
    parse_body,
    sign_message,
    valid_package,
    valid_vendor,
)
from tests.release_support import key, meta, pk

TREE = "b3t1:" + "A" * 43 + "="
COMMIT = "0123456789abcdef0123456789abcdef01234567"

BODIES: list[Body] = [
    AddKey("acme", pk("a")),
    AddKey("acme", pk("a"), "laptop"),
    AddKey("acme", pk("a"), "ci", limited=True),
    RevokeKey("acme", pk("a")),
    Update("acme", "demo", "1.0.0", meta(1)),
    Update("acme", "demo", "1.0.0", Metadata("https://x.invalid/r", COMMIT, TREE, "f" * 64)),
    Update("acme", "demo", "0.1", Metadata()),
    RevokeUpdate("acme", "demo", "1.0.0", "compromised CI\nsee advisory"),
    AttestUpdate("acme", "demo", "1.0.0", "rebuild", "reproduced"),
    AttestUpdate("acme", "demo", "1.0.0", "rebuild", "sec-audit", "report: https://x.invalid"),
]


@pytest.mark.parametrize("body", BODIES)
def test_canonical_round_trip(body: Body) -> None:
    assert parse_body(body.op, canonical_body(body)) == body


def test_canonical_key_order_and_spelling() -> None:
    assert canonical_body(AddKey("acme", pk("a"), "ci", limited=True)) == \
        '{"vendor":"acme","publickey":"' + pk("a") + '","name":"ci","limited":true}'
    assert canonical_body(AddKey("acme", pk("a"))) == \
        '{"vendor":"acme","publickey":"' + pk("a") + '"}'
    assert canonical_body(Update("acme", "demo", "1.0.0", Metadata(
        "https://x.invalid/r", COMMIT, TREE, "f" * 64, (("z", '"1"'), ("a", "[1]"))))) == (
        '{"vendor":"acme","name":"demo","version":"1.0.0","metadata":{"repo":'
        '"https://x.invalid/r","commit":"' + COMMIT + '","tree":"' + TREE + '",'
        '"dist-sha256":"' + "f" * 64 + '","a":[1],"z":"1"}}')
    assert canonical_body(RevokeUpdate("acme", "demo", "1.0.0", "caf\u00e9")) == \
        '{"vendor":"acme","name":"demo","version":"1.0.0","reason":"caf\\u00e9"}'
    assert canonical_body(AttestUpdate("acme", "demo", "1.0.0", "r", "code-review", "ok")) == (
        '{"vendor":"acme","name":"demo","version":"1.0.0","attestor":"r",'
        '"attestation":"code-review","details":"ok"}')


def test_sign_message_produces_herd_envelope() -> None:
    body = Update("acme", "demo", "1.0.0", meta(1))
    contents = sign_message(body, key("a"))
    obj = json.loads(contents)
    assert list(obj) == ["op", "op-body", "op-sig", "op-public-key"]
    assert obj["op"] == "update" and obj["op-body"] == canonical_body(body)
    assert obj["op-public-key"] == pk("a") and len(obj["op-public-key"]) == 44
    assert verify(key("a").public, obj["op-body"].encode(), b64u_decode(obj["op-sig"], 64))
    assert contents == envelope("update", obj["op-body"], obj["op-sig"], pk("a"))
    message = classify(contents)
    assert isinstance(message, ReleaseMessage)
    assert (message.body, message.op, message.signature_valid()) == (body, "update", True)


def test_sign_message_refuses_what_the_rules_call_malformed() -> None:
    with pytest.raises(MalformedMessage, match='field "vendor" is not a Composer vendor'):
        sign_message(AddKey("Acme", pk("a")), key("a"))


def _body(op: str, **fields: object) -> str:
    return json.dumps(fields)


GOOD = {"vendor": "acme", "name": "demo", "version": "1.0.0"}


@pytest.mark.parametrize(("op", "text", "field", "message"), [
    ("add-key", "[1]", None, "op-body of add-key is not a JSON object"),
    ("add-key", "{", None, "op-body of add-key is not valid JSON"),
    ("add-key", '{"vendor":"acme","vendor":"acme"}', "vendor",
     'op-body of add-key: field "vendor" appears twice'),
    ("add-key", '{"vendor":"acme","publickey":NaN}', None,
     "op-body of add-key is not valid JSON"),
    ("add-key", _body("", vendor="acme"), "publickey",
     'op-body of add-key: field "publickey" is missing'),
    ("add-key", _body("", publickey="x"), "vendor",
     'op-body of add-key: field "vendor" is missing'),
    ("add-key", _body("", vendor=1, publickey="x"), "vendor",
     'op-body of add-key: field "vendor" must be a string'),
    ("add-key", _body("", vendor="Acme", publickey="x"), "vendor",
     'op-body of add-key: field "vendor" is not a Composer vendor name: "Acme"'),
    ("add-key", _body("", vendor="acme", publickey="x"), "publickey",
     'op-body of add-key: field "publickey" is not a base64url Ed25519 public key '
     "(32 bytes, padded)"),
    ("add-key", _body("", vendor="acme", publickey=pk("a").rstrip("=")), "publickey",
     'op-body of add-key: field "publickey" is not a base64url Ed25519 public key '
     "(32 bytes, padded)"),
    ("add-key", _body("", vendor="acme", publickey=pk("a"), limited="yes"), "limited",
     'op-body of add-key: field "limited" must be true or false'),
    ("add-key", _body("", vendor="acme", publickey=pk("a"), name=""), "name",
     'op-body of add-key: field "name" must be 1 to 128 characters without control '
     "characters"),
    ("add-key", _body("", vendor="acme", publickey=pk("a"), name="a\nb"), "name",
     'op-body of add-key: field "name" must be 1 to 128 characters without control '
     "characters"),
    ("add-key", _body("", vendor="acme", publickey=pk("a"), extra=1), "extra",
     'op-body of add-key: field "extra" is not allowed'),
    ("revoke-key", _body("", vendor="acme", publickey=pk("a"), name="x"), "name",
     'op-body of revoke-key: field "name" is not allowed'),
    ("update", _body("", vendor="acme", name="demo", version="1.0.0"), "metadata",
     'op-body of update: field "metadata" is missing'),
    ("update", _body("", vendor="acme", name="Demo", version="1.0.0", metadata={}), "name",
     'op-body of update: field "name" is not a Composer package name: "Demo"'),
    ("update", _body("", vendor="acme", name="demo", version="dev-main", metadata={}),
     "version", 'op-body of update: field "version" is not a Composer release version: '
     '"dev-main"'),
    ("update", _body("", **GOOD, metadata=[]), "metadata",
     'op-body of update: field "metadata" must be a JSON object'),
    ("update", _body("", **GOOD, metadata={"repo": "r", "tree": TREE}), "metadata.commit",
     'op-body of update: field "metadata.commit" is missing (repo, commit and tree go '
     "together)"),
    ("update", _body("", **GOOD, metadata={"repo": "r", "commit": COMMIT.upper(),
                                           "tree": TREE}), "metadata.commit",
     'op-body of update: field "metadata.commit" must be a lowercase hex git commit id '
     "(40 or 64 digits)"),
    ("update", _body("", **GOOD, metadata={"repo": "a b", "commit": COMMIT, "tree": TREE}),
     "metadata.repo", 'op-body of update: field "metadata.repo" must be a repository URL '
     "(printable ASCII, no spaces, at most 2048 characters)"),
    ("update", _body("", **GOOD, metadata={"repo": "r", "commit": COMMIT,
                                           "tree": "b3t1:AAAA"}), "metadata.tree",
     'op-body of update: field "metadata.tree" is not a source tree digest: Invalid tree '
     "digest: expected 32 bytes, got 3"),
    ("update", _body("", **GOOD, metadata={"repo": "r", "commit": COMMIT,
                                           "tree": "sha256:" + "0" * 64}), "metadata.tree",
     'op-body of update: field "metadata.tree" is not a source tree digest: tree digest '
     "must start with 'b3t1:'"),
    ("update", _body("", **GOOD, metadata={"repo": "r", "commit": COMMIT, "tree": TREE,
                                           "dist-sha256": "0" * 63}), "metadata.dist-sha256",
     'op-body of update: field "metadata.dist-sha256" must be 64 lowercase hex digits'),
    ("update", _body("", **GOOD, metadata={"tree": 5, "repo": "r", "commit": COMMIT}),
     "metadata.tree", 'op-body of update: field "metadata.tree" must be a string'),
    ("revoke-update", _body("", **GOOD), "reason",
     'op-body of revoke-update: field "reason" is missing'),
    ("revoke-update", _body("", **GOOD, reason="x" * 4097), "reason",
     'op-body of revoke-update: field "reason" must be 1 to 4096 characters without control '
     "characters"),
    ("attest-update", _body("", **GOOD, attestation="reproduced"), "attestor",
     'op-body of attest-update: field "attestor" is missing'),
    ("attest-update", _body("", **GOOD, attestor="r", attestation="liked"), "attestation",
     'op-body of attest-update: field "attestation" must be one of reproduced, spot-check, '
     "code-review, sec-audit, vote-against"),
    ("attest-update", _body("", **GOOD, attestor="r", attestation="reproduced", details=[]),
     "details", 'op-body of attest-update: field "details" must be a string'),
])
def test_malformed_bodies(op: str, text: str, field: str | None, message: str) -> None:
    with pytest.raises(MalformedMessage) as caught:
        parse_body(op, text)
    assert (caught.value.message, caught.value.field, caught.value.status) == \
        (message, field, 400)


def test_herd_metadata_is_accepted_but_not_verifiable() -> None:
    body = parse_body("update", _body("", **GOOD, metadata={
        "url": "https://x.invalid/a.zip", "size": 1, "sha384": "ab"}))
    assert isinstance(body, Update)
    assert not body.metadata.verifiable
    assert body.metadata.extra == (("sha384", '"ab"'), ("size", "1"),
                                   ("url", '"https://x.invalid/a.zip"'))
    assert parse_body("update", canonical_body(body)) == body


def test_lone_surrogate_body_is_malformed() -> None:
    contents = json.dumps({"op": "add-key", "op-body": "\ud800", "op-sig": "A" * 86 + "==",
                           "op-public-key": pk("a")}).encode()
    with pytest.raises(MalformedMessage) as caught:
        classify(contents)
    assert caught.value.message == 'envelope: field "op-body" is not valid UTF-8 (lone ' \
        "surrogate)"


@pytest.mark.parametrize(("obj", "field", "message"), [
    ({"op": "add-key", "op-sig": "x", "op-public-key": "y"}, "op-body",
     'envelope: field "op-body" is missing'),
    ({"op": "add-key", "op-body": {}, "op-sig": "x", "op-public-key": "y"}, "op-body",
     'envelope: field "op-body" must be a string'),
    ({"op": "add-key", "op-body": "{}", "op-public-key": "y"}, "op-sig",
     'envelope: field "op-sig" is missing'),
    ({"op": "add-key", "op-body": "{}", "op-sig": "A" * 88, "op-public-key": "y"}, "op-sig",
     'envelope: field "op-sig" is not a base64url Ed25519 signature (64 bytes, padded)'),
    ({"op": "add-key", "op-body": "{}", "op-sig": "A" * 86 + "==",
      "op-public-key": pk("a")[:-1]}, "op-public-key",
     'envelope: field "op-public-key" is not a base64url Ed25519 public key (32 bytes, '
     "padded)"),
])
def test_malformed_envelopes(obj: dict[str, object], field: str, message: str) -> None:
    with pytest.raises(MalformedMessage) as caught:
        classify(json.dumps(obj).encode())
    assert (caught.value.message, caught.value.field) == (message, field)


def test_duplicate_envelope_key_is_malformed_only_for_release_messages() -> None:
    with pytest.raises(MalformedMessage, match='envelope: field "op" appears twice'):
        classify(b'{"op": "update", "op": "update"}')
    assert classify(b'{"a": 1, "a": 2}') == NotRelease("no-op")
    assert classify(b'{"op": "vote", "op": "vote"}') == NotRelease("unknown-op")


def test_extra_envelope_fields_are_ignored_as_herd_does() -> None:
    contents = sign_message(AddKey("acme", pk("a")), key("a"))
    obj = {**json.loads(contents), "v": 2, "comment": "extra"}
    message = classify(json.dumps(obj).encode())
    assert isinstance(message, ReleaseMessage) and message.signature_valid()


# --- names and versions -------------------------------------------------------------------

@pytest.mark.parametrize(("version", "normal"), [
    ("1.0.0", "1.0.0.0"), ("v1.0.0", "1.0.0.0"), ("V1", "1.0.0.0"), ("1.2", "1.2.0.0"),
    ("1.2.3.4", "1.2.3.4"), ("1.0.0-beta1", "1.0.0.0-beta1"), ("1.0.0-b.2", "1.0.0.0-beta2"),
    ("1.0.0-RC1", "1.0.0.0-RC1"), ("1.0.0rc1", "1.0.0.0-RC1"), ("2.0-alpha", "2.0.0.0-alpha"),
    ("2.0.0-a3", "2.0.0.0-alpha3"), ("1.0-p1", "1.0.0.0-patch1"), ("1.0.pl2", "1.0.0.0-patch2"),
    ("1.0.0-beta.1.2", "1.0.0.0-beta1.2"), ("10000.0.0", "10000.0.0.0"),
])
def test_normalize_version(version: str, normal: str) -> None:
    assert normalize_version(version) == normal


@pytest.mark.parametrize("version", [
    "", "dev-main", "1.0.x-dev", "1.0.0-dev", "1.0.0+build", "1.0.0-stable", "123456.0",
    "2024.01.01.1.2", "1.0.0 ", " 1.0.0", "1.0.0\n", "a1.0", "1..0", "1.0.0-beta1-dev",
    "1.0.0-" + "1" * 70,
])
def test_not_release_versions(version: str) -> None:
    with pytest.raises(ValueError, match="not a Composer release version"):
        normalize_version(version)


@pytest.mark.parametrize(("text", "vendor", "package"), [
    ("acme", True, True), ("a", True, True), ("acme-corp", True, True),
    ("acme_corp.x", True, True), ("a--b", False, True), ("a__b", False, False),
    ("Acme", False, False), ("-acme", False, False), ("acme-", False, False),
    ("ac me", False, False), ("acme\n", False, False), ("", False, False),
    ("a" * 128, True, True), ("a" * 129, False, False), ("acmé", False, False),
    ("a/b", False, False),
])
def test_composer_names(text: str, vendor: bool, package: bool) -> None:
    assert (valid_vendor(text), valid_package(text)) == (vendor, package)


def test_name_and_version_checks_do_not_backtrack() -> None:
    start = time.perf_counter()
    assert not valid_package("a-" * 60 + "!")
    assert not valid_vendor("a." * 60 + "-")
    with pytest.raises(ValueError):
        normalize_version("1.0.0-beta" + "1" * 40 + "x")
    assert time.perf_counter() - start < 0.5


# --- classification and the enable entry -------------------------------------------------------

def test_enable_contents_bytes() -> None:
    contents = enable_contents(datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC), "registry", pk("c"))
    assert contents == (
        '{\n    "server-action": "Release Ledger Enabled",\n'
        '    "now": "2026-01-02T03:04:05+00:00",\n    "core-vendor": "registry",\n'
        f'    "core-key": "{pk("c")}"\n}}').encode()
    assert classify(contents) == EnableLedger("2026-01-02T03:04:05+00:00", "registry", pk("c"))


def test_enable_contents_refuses_bad_input() -> None:
    with pytest.raises(MalformedMessage, match="core vendor is not a Composer vendor name"):
        enable_contents(datetime.now(UTC), "Registry", pk("c"))
    with pytest.raises(MalformedMessage, match="core key is not a base64url"):
        enable_contents(datetime.now(UTC), "registry", "short")


@pytest.mark.parametrize(("extra", "message"), [
    ({"now": "2026-01-01 00:00:00"}, 'release ledger enable entry: field "now" must be an '
     "ATOM UTC timestamp (YYYY-MM-DDTHH:MM:SS+00:00)"),
    ({"core-vendor": "Reg"}, 'release ledger enable entry: field "core-vendor" is not a '
     'Composer vendor name: "Reg"'),
    ({"core-key": "x"}, 'release ledger enable entry: field "core-key" is not a base64url '
     "Ed25519 public key (32 bytes, padded)"),
    ({"extra": 1}, 'release ledger enable entry: field "extra" is not allowed'),
])
def test_enable_parse_is_strict(extra: dict[str, object], message: str) -> None:
    obj = {"server-action": ACTION_ENABLE, "now": "2026-01-01T00:00:00+00:00",
           "core-vendor": "registry", "core-key": pk("c"), **extra}
    with pytest.raises(MalformedMessage) as caught:
        classify(json.dumps(obj).encode())
    assert caught.value.message == message


def test_deeply_nested_json_is_not_json() -> None:
    assert classify(b"[" * 100000 + b"]" * 100000) == NotRelease("not-json")
