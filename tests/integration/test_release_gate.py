"""The release ledger's server side (issue 12, item 3): enable, the gate at publish, the
state kept with the entries, the read endpoints. Both backends, a real server on loopback.

Messages are built here with the release layer's own signing (``sign_message``) or by
hand (``envelope``), as a vendor's tool would send them.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from chronicle import releaselog
from chronicle.core.blakechain import Entry
from chronicle.core.encoding import b64u_decode, b64u_encode, utcnow
from chronicle.core.errors import RequestError
from chronicle.core.merkle import TreeState
from chronicle.core.sapient import SigningKey
from chronicle.release import (
    AddKey,
    AttestUpdate,
    Metadata,
    RevokeKey,
    RevokeUpdate,
    Update,
    canonical_body,
    enable_contents,
    envelope,
    replay,
    sign_message,
)
from chronicle.release.state import ChainEntry
from chronicle.releaselog import enable
from chronicle.store import Store
from tests.helpers import Response, RunningServer, serving, start_server
from tests.integration import test_replication as replicating
from tests.integration.test_openapi import call as described
from tests.integration.test_tlog import acli, chain_leaves, enable_tree

CORE = SigningKey.from_seed(b"c" * 32)
ACME = SigningKey.from_seed(b"a" * 32)
ACME2 = SigningKey.from_seed(b"A" * 32)
CI = SigningKey.from_seed(b"i" * 32)
BETA = SigningKey.from_seed(b"b" * 32)
TREE = "b3t1:KM7xCDNnwBNcMDl2yY8cqOhBOBbPh7wfMXkPGErpTkU="


def meta(n: int = 0) -> Metadata:
    return Metadata(repo="https://github.com/acme/widget", commit=f"{n:040x}", tree=TREE)


def release_of(version: str, vendor: str = "acme", name: str = "widget") -> Update:
    return Update(vendor, name, version, meta())


@dataclass
class Ledger:
    srv: RunningServer
    enabled_at: int

    @property
    def store(self) -> Store:
        return self.srv.ctx.store

    async def head(self) -> int:
        head = await self.store.chain("").head()
        return -1 if head is None else head.index

    async def entry(self, index: int) -> Entry:
        found = await self.store.chain("").entry_at(index)
        assert found is not None
        return found

    async def send(self, contents: bytes, who: str = "registry") -> Response:
        return await self.srv.publish(who, contents)

    async def accept(self, contents: bytes, who: str = "registry") -> dict[str, Any]:
        answer = await self.send(contents, who)
        assert answer.status == 200, answer.body
        receipt = dict(answer.json["results"])
        found = await self.store.chain("").lookup(b64u_decode(receipt["currhash"]))
        receipt["index"] = found[0].index
        return receipt

    async def refuse(self, contents: bytes, status: int, message: str,
                     who: str = "registry") -> None:
        """Refused at publish with a signed (checked by ``request``) JSON error carrying
        the rule's exact message, and nothing stored."""
        before = await self.head()
        answer = await self.send(contents, who)
        assert (answer.status, answer.json["status"], answer.json["message"]) == \
            (status, "ERROR", message)
        assert await self.head() == before

    async def get(self, path: str, status: int = 200) -> Any:
        answer = await self.srv.request("GET", "/chronicle/release" + path)
        assert answer.status == status, answer.body
        return answer.json["results"] if status == 200 else answer.json["message"]


async def enable_on(srv: RunningServer) -> int:
    report = await enable(srv.ctx.store, srv.ctx.ledger(""), srv.key, "registry",
                          CORE.public_b64, clock=utcnow)
    return report.index


@pytest.fixture
async def ledger(tmp_path: Path) -> AsyncIterator[Ledger]:
    async with serving(tmp_path / "ledger", "registry", "acme", "beta") as srv:
        yield Ledger(srv, await enable_on(srv))


async def vouched(led: Ledger) -> None:
    """The registry vouches for acme and beta; acme adds a second full key and a CI key."""
    await led.accept(sign_message(AddKey("acme", ACME.public_b64, "laptop"), CORE))
    await led.accept(sign_message(AddKey("beta", BETA.public_b64), CORE))
    await led.accept(sign_message(AddKey("acme", CI.public_b64, "ci", limited=True), ACME),
                     "acme")


async def chain_state(store: Store, server_key: str) -> bytes:
    head = await store.chain("").head()
    assert head is not None
    entries = await store.chain("").range(0, head.index + 1)
    return replay([ChainEntry.from_entry(e) for e in entries], server_key=server_key).to_json()


async def stored_state(store: Store) -> bytes:
    state = await store.release.state("")
    assert state is not None
    return state.to_json()


# --- the whole flow ---------------------------------------------------------------------------

async def test_vendor_lifecycle_and_endpoints(ledger: Ledger) -> None:
    led = ledger
    enabled = await led.entry(led.enabled_at)
    assert await led.get("") == {
        "core-vendor": "registry", "core-key": CORE.public_b64,
        "now": json.loads(enabled.contents)["now"],
        "at": {"index": led.enabled_at, "currhash": b64u_encode(enabled.currhash)}}
    await vouched(led)
    receipt = await led.accept(sign_message(release_of("v1.0.0"), CI), "acme")
    released = receipt["index"]
    await led.accept(sign_message(release_of("1.1.0"), ACME), "acme")
    await led.accept(sign_message(RevokeUpdate("acme", "widget", "1.1.0", "broken build"),
                                  ACME), "acme")
    attested = await led.accept(sign_message(AttestUpdate(
        "acme", "widget", "1.0", "beta", "reproduced", "rebuilt from the tag"), BETA), "beta")

    vendors = await led.get("/vendors")
    assert vendors["next"] is None
    assert [(v["vendor"], v["keys"], v["trusted"]) for v in vendors["vendors"]] == \
        [("acme", 2, 2), ("beta", 1, 1), ("registry", 1, 1)]
    keys = (await led.get("/vendors/acme/keys"))["keys"]
    assert [(k["publickey"], k["name"], k["limited"], k["trusted"]) for k in keys] == \
        [(ACME.public_b64, "laptop", False, True), (CI.public_b64, "ci", True, True)]
    assert keys[0]["added-by"] == CORE.public_b64
    updates = await led.get("/packages/acme/widget")
    assert [(u["version"], u["version-normalized"], u["revoked"] is None)
            for u in updates["updates"]] == [("v1.0.0", "1.0.0.0", True),
                                             ("1.1.0", "1.1.0.0", False)]
    assert updates["updates"][1]["revoke-reason"] == "broken build"
    one = await led.get("/packages/acme/widget/1.0")
    assert one["update"]["signer"] == CI.public_b64
    assert one["update"]["metadata"] == meta().to_obj()
    assert one["update"]["op-body"] == canonical_body(release_of("v1.0.0"))
    assert [(a["attestor"], a["attestation"], a["at"]["index"])
            for a in one["attestations"]] == [("beta", "reproduced", attested["index"])]
    # Every position names the entry that proves the row.
    at = one["update"]["at"]
    entry = await led.entry(at["index"])
    assert at == {"index": released, "currhash": b64u_encode(entry.currhash)}
    assert json.loads(entry.contents)["op-body"] == one["update"]["op-body"]
    assert await stored_state(led.store) == await chain_state(led.store, led.srv.key.public_b64)


async def test_unknown_things_are_signed_404s_and_bad_input_400(ledger: Ledger) -> None:
    led = ledger
    await vouched(led)
    assert await led.get("/vendors/nobody/keys", 404) == "unknown vendor nobody: it has no keys"
    assert await led.get("/packages/acme/gadget", 404) == "there are no updates of acme/gadget"
    assert await led.get("/packages/acme/widget/2.0", 404) == \
        "there is no update acme/widget 2.0"
    assert await led.get("/vendors/Bad!/keys", 400) == "not a vendor name: 'Bad!'"
    assert await led.get("/packages/acme/widget/dev-main", 400) == \
        'not a Composer release version: "dev-main"'
    assert await led.get("/packages/acme/widget?after=x", 400) == \
        "after must be an entry index (a decimal number)"


async def test_not_a_release_ledger(tmp_path: Path) -> None:
    async with serving(tmp_path / "plain", "acme") as srv:
        answer = await srv.request("GET", "/chronicle/release/vendors")
        assert (answer.status, answer.json["message"]) == \
            (404, "This chain is not a release ledger")
        # Without the gate, release messages are just entries.
        unvouched = sign_message(AddKey("acme", ACME.public_b64), ACME)
        assert (await srv.publish("acme", unvouched)).status == 200


# --- the gate -------------------------------------------------------------------------------------

async def test_every_unauthorized_action_is_refused_and_nothing_stored(ledger: Ledger) -> None:
    led = ledger
    await vouched(led)
    a, b, ci = ACME.public_b64, BETA.public_b64, CI.public_b64
    # Another vendor's namespace.
    await led.refuse(sign_message(release_of("1.0.0", vendor="beta"), ACME), 403,
                     f"key {a} is not a trusted key of vendor beta", "acme")
    # A first key not vouched for by the core vendor (self-signed, or by another vendor).
    newco = SigningKey.generate()
    await led.refuse(sign_message(AddKey("newco", newco.public_b64), newco), 403,
                     "the first key of vendor newco must be signed by a trusted key of the "
                     "core vendor registry")
    await led.refuse(sign_message(AddKey("newco", newco.public_b64), ACME), 403,
                     "the first key of vendor newco must be signed by a trusted key of the "
                     "core vendor registry")
    await led.refuse(sign_message(AddKey("newco", newco.public_b64, limited=True), CORE), 403,
                     "the first key of vendor newco cannot be limited")
    # A limited key adding a key, or revoking one.
    await led.refuse(sign_message(AddKey("acme", ACME2.public_b64), CI), 403,
                     f"key {ci} of vendor acme is limited: it may only sign update for acme",
                     "acme")
    await led.refuse(sign_message(RevokeKey("acme", a), CI), 403,
                     f"key {ci} of vendor acme is limited: it may only sign update for acme")
    # Self-revocation; the last full key (the core vendor acting in an emergency).
    await led.refuse(sign_message(RevokeKey("acme", a), ACME), 403,
                     f"key {a} cannot revoke itself: revoke it with another key of vendor "
                     "acme")
    await led.refuse(sign_message(RevokeKey("acme", a), CORE), 409,
                     f"key {a} is the last full key of vendor acme: add another full key "
                     "first")
    # A revoked key.
    revoked = await led.accept(sign_message(RevokeKey("acme", ci), ACME), "acme")
    await led.refuse(sign_message(release_of("3.0.0"), CI), 403,
                     f"key {ci} of vendor acme was revoked at entry {revoked['index']}",
                     "acme")
    # An attestor signing for another vendor; a bad op-sig; a malformed body.
    await led.refuse(sign_message(AttestUpdate("acme", "widget", "1.0", "beta",
                                               "code-review"), ACME), 403,
                     f"key {a} is not a trusted key of attestor beta")
    body = canonical_body(release_of("4.0.0"))
    await led.refuse(envelope("update", body, BETA.sign_b64(body.encode()), a), 403,
                     f"op-sig does not verify over op-body with op-public-key {a}")
    await led.refuse(b'{"op":"update","op-body":"{}"}', 400,
                     'malformed release message: envelope: field "op-sig" is missing')
    # Nobody but the server enables; nobody enables twice.
    fake = enable_contents(utcnow(), "evil", b)
    await led.refuse(fake, 403, "a Release Ledger Enabled entry must be signed by the "
                                "server key")
    assert await stored_state(led.store) == await chain_state(led.store, led.srv.key.public_b64)


async def test_replays_and_idempotent_retries(ledger: Ledger) -> None:
    led = ledger
    await vouched(led)
    message = sign_message(release_of("1.0.0"), ACME)
    first = await led.accept(message, "acme")
    before = await led.head()
    # The exact same body by the same client: the stored entry, nothing new.
    assert await led.accept(message, "acme") == first
    assert await led.head() == before
    replayed = f"op-sig was already used at entry {first['index']}: the message is a replay"
    # The same body from another client, the same message in another envelope.
    await led.refuse(message, 409, replayed, "beta")
    wrapped = json.loads(message)
    wrapped["note"] = "resent"
    await led.refuse(json.dumps(wrapped).encode(), 409, replayed, "acme")
    # A second release of one version, spelt differently, is no replay but a duplicate.
    await led.refuse(sign_message(release_of("v1.0"), ACME), 409,
                     f"acme/widget v1.0 was already released at entry {first['index']}",
                     "acme")


async def test_other_traffic_is_stored_and_counted(ledger: Ledger) -> None:
    led = ledger
    await led.accept(b"just a note", "acme")
    await led.accept(b'{"op":"frobnicate"}', "acme")
    await led.accept(b"[1,2]", "acme")
    assert await led.store.release.skipped("") == \
        {"not-json": 1, "not-object": 1, "unknown-op": 1}
    assert await stored_state(led.store) == await chain_state(led.store, led.srv.key.public_b64)


async def test_conflicting_messages_in_one_batch(ledger: Ledger) -> None:
    """Each message of a batch is judged against the state after the ones before it."""
    led = ledger
    await vouched(led)
    sequencer = led.srv.ctx.ledger("")
    client = led.srv.identities["acme"]
    bodies = [
        sign_message(AddKey("acme", ACME2.public_b64), ACME),          # a new full key …
        sign_message(release_of("2.0.0"), ACME2),                      # … signs at once
        sign_message(release_of("v2.0"), ACME),                        # the same version
        sign_message(RevokeKey("acme", ACME.public_b64), ACME2),       # revoke the old key …
        sign_message(release_of("2.1.0"), ACME),                       # … which then fails
    ]
    batches = sequencer.batches
    outcomes = await asyncio.gather(
        *(sequencer.append(b, client.key.public, client.key.sign(b),
                           client_id=client.client_id) for b in bodies),
        return_exceptions=True)
    assert sequencer.batches == batches + 1
    first, second, dup, revoke, late = outcomes
    assert not isinstance(first, BaseException)
    assert not isinstance(second, BaseException)
    assert not isinstance(revoke, BaseException)
    assert (first.index, second.index, revoke.index) == \
        (first.index, first.index + 1, first.index + 2)
    assert isinstance(dup, Exception)
    assert (dup.status, dup.message) == (  # type: ignore[attr-defined]
        409, f"acme/widget v2.0 was already released at entry {second.index}")
    assert isinstance(late, Exception)
    assert (late.status, late.message) == (  # type: ignore[attr-defined]
        403, f"key {ACME.public_b64} of vendor acme was revoked at entry {revoke.index}")
    assert await led.head() == revoke.index
    assert await stored_state(led.store) == await chain_state(led.store, led.srv.key.public_b64)


async def test_state_survives_a_restart_and_equals_a_replay(tmp_path: Path) -> None:
    async with serving(tmp_path / "ledger", "registry", "acme", "beta") as srv:
        led = Ledger(srv, await enable_on(srv))
        await vouched(led)
        for n in range(20):
            await led.accept(sign_message(release_of(f"1.{n}.0"), CI if n % 2 else ACME),
                             "acme")
        await led.accept(sign_message(RevokeUpdate("acme", "widget", "1.3.0", "cve"), ACME),
                         "acme")
        await led.accept(sign_message(AddKey("acme", ACME2.public_b64), CORE))  # emergency
        kept = await led.srv.publish("acme", sign_message(release_of("v1.0"), ACME))
        assert kept.status == 409
        data_dir = srv.ctx.data_dir
        before = await stored_state(srv.ctx.store)
    again = await start_server(data_dir)
    try:
        again.identities = srv.identities
        led = Ledger(again, led.enabled_at)
        assert await stored_state(again.ctx.store) == before
        at = (await led.get("/packages/acme/widget/1.1.0"))["update"]["at"]["index"]
        await led.refuse(sign_message(release_of("1.1.0"), ACME), 409,
                         f"acme/widget 1.1.0 was already released at entry {at}", "acme")
        await led.accept(sign_message(release_of("9.0.0"), ACME2), "acme")
        after = await stored_state(again.ctx.store)
        assert after == await chain_state(again.ctx.store, again.key.public_b64)
        assert b'"emergency":[{"at":[' in after
    finally:
        await again.close()


# --- enabling -------------------------------------------------------------------------------------

async def test_enable_cli(tmp_path: Path) -> None:
    async with serving(tmp_path / "ledger", "acme") as srv:
        await srv.publish("acme", b"history before the release ledger")
        d = str(srv.ctx.data_dir.path)
        code, stdout, _ = await acli("release", "status", "--data-dir", d, "--json")
        assert (code, json.loads(stdout)) == (0, {"enabled": False})
        code, stdout, stderr = await acli("release", "enable", "--data-dir", d,
                                          "--core-vendor", "registry", "--core-key",
                                          CORE.public_b64, "--json")
        assert code == 0, stderr
        report = json.loads(stdout)
        assert (report["core-vendor"], report["core-key"], report["history"],
                report["skipped"]) == ("registry", CORE.public_b64, 1, {"not-json": 1})
        entry = await srv.ctx.store.chain("").entry_at(report["index"])
        assert entry is not None
        assert entry.publickey == srv.key.public
        assert json.loads(entry.contents)["server-action"] == "Release Ledger Enabled"
        assert report["currhash"] == b64u_encode(entry.currhash)
        code, _, stderr = await acli("release", "enable", "--data-dir", d, "--core-vendor",
                                     "other", "--core-key", ACME.public_b64)
        assert (code, stderr) == (1, f"error: the release ledger was already enabled at "
                                     f"entry {report['index']} (core vendor registry, core "
                                     f"key {CORE.public_b64})\n")
        code, stdout, _ = await acli("release", "status", "--data-dir", d, "--json")
        status = json.loads(stdout)
        assert (code, status["enabled"], status["core-vendor"], status["vendors"],
                status["at"]["index"]) == (0, True, "registry", 1, report["index"])
        # The server, already running, judges at once.
        answer = await srv.publish("acme", sign_message(AddKey("acme", ACME.public_b64), ACME))
        assert (answer.status, answer.json["message"]) == (
            403, "the first key of vendor acme must be signed by a trusted key of the core "
                 "vendor registry")


@pytest.mark.parametrize(("option", "value", "message"), [
    ("--core-vendor", "Registry", "error: Invalid value for '--core-vendor': 'Registry' is not "
     "a Composer vendor name (lowercase letters and digits, words joined by one of . _ -, at "
     "most 128 characters)\n"),
    ("--core-key", "abc", "error: Invalid value for '--core-key': not an Ed25519 public key "
     "(32 bytes, base64url with padding: 44 characters)\n"),
])
async def test_enable_cli_refuses_bad_input(tmp_path: Path, option: str, value: str,
                                            message: str) -> None:
    async with serving(tmp_path / "ledger") as srv:
        args = {"--core-vendor": "registry", "--core-key": CORE.public_b64, option: value}
        code, _, stderr = await acli("release", "enable", "--data-dir",
                                     str(srv.ctx.data_dir.path),
                                     *(x for kv in args.items() for x in kv))
        assert (code, stderr) == (2, message)
        assert await srv.ctx.store.release.ledger("") is None


async def test_enable_refuses_a_history_with_release_messages(tmp_path: Path) -> None:
    async with serving(tmp_path / "ledger", "acme") as srv:
        await srv.publish("acme", sign_message(AddKey("acme", ACME.public_b64), ACME))
        index = (await srv.ctx.store.chain("").head()).index  # type: ignore[union-attr]
        with pytest.raises(RequestError) as caught:
            await enable_on(srv)
        assert (caught.value.status, caught.value.message) == (409,
            f"entry {index} is a release message the rules refuse (not-enabled: the release "
            "ledger is not enabled on this chain); a chain holding it cannot become a "
            "release ledger")
        assert await srv.ctx.store.release.ledger("") is None


async def test_gate_and_merkle_tree_on_one_chain(ledger: Ledger) -> None:
    """Both hooks in one transaction: a refused message reaches neither the chain nor the
    tree; accepted ones extend both."""
    led = ledger
    await enable_tree(led.srv)
    await vouched(led)
    await led.refuse(sign_message(AddKey("acme", ACME2.public_b64), CI), 403,
                     f"key {CI.public_b64} of vendor acme is limited: it may only sign update "
                     "for acme", "acme")
    await led.accept(sign_message(release_of("1.0.0"), CI), "acme")
    tree = await led.store.tlog.tree("")
    assert tree is not None
    assert tree.size == await led.head() + 1
    assert tree.state().root() == TreeState.empty().extend(await chain_leaves(led.store))[0].root()
    assert await stored_state(led.store) == await chain_state(led.store, led.srv.key.public_b64)


async def test_lists_are_paged(ledger: Ledger, monkeypatch: pytest.MonkeyPatch) -> None:
    led = ledger
    monkeypatch.setattr(releaselog, "PAGE", 2)
    await vouched(led)
    for n in range(5):
        await led.accept(sign_message(release_of(f"1.{n}.0"), ACME), "acme")
    for attestor, key in (("beta", BETA), ("acme", ACME), ("registry", CORE)):
        await led.accept(sign_message(AttestUpdate("acme", "widget", "1.0.0", attestor,
                                                   "spot-check"), key))
    first = await led.get("/vendors")
    assert [v["vendor"] for v in first["vendors"]] == ["acme", "beta"]
    assert first["next"] == "beta"
    last = await led.get("/vendors?after=beta")
    assert ([v["vendor"] for v in last["vendors"]], last["next"]) == (["registry"], None)
    versions, after = [], None
    while True:
        page = await led.get("/packages/acme/widget" + (f"?after={after}" if after else ""))
        assert len(page["updates"]) <= 2
        versions += [u["version"] for u in page["updates"]]
        after = page["next"]
        if after is None:
            break
    assert versions == [f"1.{n}.0" for n in range(5)]
    one = await led.get("/packages/acme/widget/1.0.0")
    assert [a["attestor"] for a in one["attestations"]] == ["beta", "acme"]
    rest = await led.get(f"/packages/acme/widget/1.0.0?after={one['next']}")
    assert ([a["attestor"] for a in rest["attestations"]], rest["next"]) == (["registry"], None)


async def test_an_interrupted_enable_is_finished_by_running_it_again(tmp_path: Path) -> None:
    async with serving(tmp_path / "ledger", "acme") as srv:
        store = srv.ctx.store
        await releaselog._prepare(store, "", srv.key, utcnow)   # stopped before the entry
        d = str(srv.ctx.data_dir.path)
        code, stdout, _ = await acli("release", "status", "--data-dir", d)
        assert (code, stdout) == (0, "enabling was interrupted: run `chronicle release enable` "
                                     "again\n")
        # The gate already runs: nothing may be released before the enable entry.
        answer = await srv.publish("acme", sign_message(AddKey("acme", ACME.public_b64), CORE))
        assert (answer.status, answer.json["message"]) == \
            (403, "the release ledger is not enabled on this chain")
        answer = await srv.request("GET", "/chronicle/release")
        assert (answer.status, answer.json["message"]) == \
            (404, "This chain is not a release ledger")
        index = await enable_on(srv)
        assert (await store.release.ledger("")).enable.at.index == index  # type: ignore[union-attr]
        assert (await srv.publish("acme", sign_message(AddKey("acme", ACME.public_b64),
                                                       CORE))).status == 200
        assert await stored_state(store) == await chain_state(store, srv.key.public_b64)


async def test_a_replica_copies_a_release_ledger_and_runs_no_gate(tmp_path: Path) -> None:
    """The gate belongs to the chain where it was enabled: a replica copies the verified
    entries (release messages among them) into its own tables, with no release state."""
    upstream = await start_server(await replicating.ledger(
        tmp_path, "A", publish_new_clients=False, **replicating.QUIET))
    replica = await replicating.ledger(tmp_path, "B", **replicating.QUIET)
    try:
        await upstream.add_client("registry")
        await upstream.add_client("acme")
        await upstream.add_client("beta")
        led = Ledger(upstream, await enable_on(upstream))
        await vouched(led)
        await led.accept(sign_message(release_of("1.0.0"), CI), "acme")
        await led.refuse(sign_message(release_of("v1.0"), ACME), 409,
                         f"acme/widget v1.0 was already released at entry {await led.head()}",
                         "acme")
        await replicating.add_source(replica, upstream.url, upstream.key.public)
        res = await replicating.sync(replica)
        assert res.code == 0, res.stderr
        assert res.json["sources"][0]["added"] == await led.head() + 1
        copied = await replicating.replica_rows(replica)
        assert [e.currhash for e in copied] == \
            [(await led.entry(i)).currhash for i in range(await led.head() + 1)]
        store = await replicating.opened(replica)
        try:
            assert await store.release.ledger("") is None
        finally:
            await store.close()
    finally:
        await upstream.close()


async def test_release_routes_answer_as_described(ledger: Ledger) -> None:
    """Every answer of /chronicle/release/ matches the OpenAPI description (release.json)."""
    led = ledger
    await vouched(led)
    await led.accept(sign_message(release_of("1.0.0"), CI), "acme")
    await led.accept(sign_message(AttestUpdate("acme", "widget", "1.0.0", "beta",
                                               "reproduced"), BETA), "beta")
    await led.accept(sign_message(RevokeUpdate("acme", "widget", "1.0.0", "cve"), ACME), "acme")
    srv = led.srv
    for path, status in (("", 200), ("/vendors", 200), ("/vendors?after=acme", 200),
                         ("/vendors/acme/keys", 200), ("/vendors/nobody/keys", 404),
                         ("/vendors/Bad!/keys", 400), ("/packages/acme/widget", 200),
                         ("/packages/acme/widget?after=2", 200),
                         ("/packages/acme/nothing", 404), ("/packages/acme/widget/v1.0", 200),
                         ("/packages/acme/widget/2.0", 404),
                         ("/packages/acme/widget/dev-x", 400)):
        await described(srv, "GET", "/chronicle/release" + path, status=status)
