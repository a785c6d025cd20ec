"""The release state: vectors, determinism, and needs() covering every read of a judgment."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chronicle.core.blakechain import currhash
from chronicle.core.encoding import b64u_decode
from chronicle.core.sapient import verify
from chronicle.release.messages import (
    AddKey,
    AttestUpdate,
    Body,
    Metadata,
    RevokeKey,
    RevokeUpdate,
    Update,
    enable_contents,
    envelope,
    sign_message,
)
from chronicle.release.state import (
    Accepted,
    ChainEntry,
    Needs,
    NotPrefetched,
    ReleaseState,
    Skipped,
    UpdateKey,
    Verdict,
    needs,
    replay,
)
from tests.release_support import CORE, NOW, SERVER, key, meta, pk

ROOT = Path(__file__).resolve().parent.parent.parent
VECTORS = ROOT / "tests" / "vectors" / "release" / "chains.json"


def load_vectors() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(VECTORS.read_text())
    return data


def chain_entries(chain: dict[str, Any]) -> list[ChainEntry]:
    return [ChainEntry(index=r["index"], currhash=r["currhash"], created=r["created"],
                       publickey=r["publickey"], contents=r["contents"].encode("utf-8"))
            for r in chain["entries"]]


def describe(verdict: Verdict) -> dict[str, Any]:
    if isinstance(verdict, Accepted):
        return {"expect": "accepted", "emergency": verdict.emergency}
    if isinstance(verdict, Skipped):
        return {"expect": f"skipped:{verdict.kind}"}
    return {"expect": verdict.code, "status": verdict.status, "message": verdict.message}


def restrict(full: ReleaseState, scope: Needs) -> ReleaseState:
    """What the gate builds from database rows: only the rows ``scope`` names."""
    ledger = full.ledger()
    vendors = set(scope.vendors)
    if scope.core_keys and ledger is not None:
        vendors.add(ledger.core_vendor)
    keys = [k for vendor in vendors for k in full.vendor_keys(vendor)]
    updates = [u for k in scope.updates if (u := full.update(k)) is not None]
    op_sigs = {s: i for s in scope.op_sigs if (i := full.op_sig_index(s)) is not None}
    return ReleaseState.partial(full.server_key, scope, ledger=ledger, keys=keys,
                                updates=updates, op_sigs=op_sigs)


# --- vectors -------------------------------------------------------------------------------

@pytest.mark.parametrize("chain", load_vectors()["chains"], ids=lambda c: c["name"])
def test_vector_verdicts_and_state(chain: dict[str, Any]) -> None:
    vectors = load_vectors()
    state = ReleaseState(server_key=vectors["server-key"])
    for row, entry in zip(chain["entries"], chain_entries(chain), strict=True):
        got = describe(state.ingest(entry))
        want = {k: row[k] for k in ("expect", "emergency", "status", "message") if k in row}
        assert got == want, row["label"]
    assert json.loads(state.to_json()) == chain["state"]
    assert state.to_json() == json.dumps(chain["state"], separators=(",", ":")).encode()


def test_vector_chains_are_real_chains() -> None:
    """currhash links and entry signatures are genuine, so a ledger can replay them."""
    for chain in load_vectors()["chains"]:
        prev = None
        for row in chain["entries"]:
            contents = row["contents"].encode()
            public = b64u_decode(row["publickey"], 32)
            signature = b64u_decode(row["signature"], 64)
            assert verify(public, contents, signature)
            prev = currhash(prev, row["created"], public, signature, contents)
            assert b64u_decode(row["currhash"], 32) == prev


def test_vectors_cover_every_violation_code() -> None:
    from chronicle.release.state import VIOLATIONS
    seen = {r["expect"] for c in load_vectors()["chains"] for r in c["entries"]}
    assert set(VIOLATIONS) <= seen


# --- determinism ------------------------------------------------------------------------------

def test_replaying_twice_gives_identical_bytes() -> None:
    chain = load_vectors()["chains"][0]
    server = load_vectors()["server-key"]
    first = replay(chain_entries(chain), server_key=server).to_json()
    second = replay(chain_entries(chain), server_key=server).to_json()
    assert first == second
    assert first.isascii()
    assert first == json.dumps(json.loads(first), separators=(",", ":")).encode()


_SUBPROCESS_REPLAY = """
import json, sys
from chronicle.release.state import ChainEntry, replay
data = json.load(open(sys.argv[1]))
for chain in data["chains"]:
    entries = [ChainEntry(r["index"], r["currhash"], r["created"], r["publickey"],
                          r["contents"].encode()) for r in chain["entries"]]
    sys.stdout.write(replay(entries, server_key=data["server-key"]).to_json().decode() + "\\n")
"""


def test_replay_in_another_process_gives_identical_bytes() -> None:
    data = load_vectors()
    here = "".join(replay(chain_entries(c), server_key=data["server-key"]).to_json().decode()
                   + "\n" for c in data["chains"])
    env = {**os.environ, "PYTHONHASHSEED": "4242"}
    result = subprocess.run([sys.executable, "-c", _SUBPROCESS_REPLAY, str(VECTORS)],
                            cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    assert result.stdout == here


def test_state_queries() -> None:
    data = load_vectors()
    state = replay(chain_entries(data["chains"][0]), server_key=data["server-key"])
    assert state.vendors() == ["acme", "rebuild", "registry"]
    assert state.skipped() == {"no-op": 1, "not-json": 1, "not-object": 1,
                               "server-action": 1, "unknown-op": 1}
    assert [r.code for r in state.rejected()][:3] == ["already-enabled", "enable-not-server",
                                                     "first-key-not-vouched"]
    assert [(a.op, a.vendor) for a in state.emergency_actions()] == [
        ("add-key", "acme"), ("update", "acme")]
    assert [a.attestation for a in state.attestations()] == ["reproduced"]


# --- needs() and partial states -----------------------------------------------------------------

def test_needs_per_op() -> None:
    add = sign_message(AddKey("acme", pk("x")), key("k"))
    upd = sign_message(Update("acme", "demo", "v1", meta()), key("k"))
    att = sign_message(AttestUpdate("acme", "demo", "1.0", "rebuild", "reproduced"), key("k"))
    sig = {c: json.loads(c)["op-sig"] for c in (add, upd, att)}
    assert needs(add) == Needs(vendors=frozenset({"acme"}), core_keys=True,
                               op_sigs=frozenset({sig[add]}))
    assert needs(upd) == Needs(vendors=frozenset({"acme"}), core_keys=True,
                               updates=frozenset({UpdateKey("acme", "demo", "1.0.0.0")}),
                               op_sigs=frozenset({sig[upd]}))
    assert needs(att) == Needs(vendors=frozenset({"rebuild"}),
                               updates=frozenset({UpdateKey("acme", "demo", "1.0.0.0")}),
                               op_sigs=frozenset({sig[att]}))
    for other in (b"text", b'{"op":"update"}', enable_contents(NOW, CORE, pk("core"))):
        assert needs(other) == Needs()


def test_partial_state_refuses_reads_it_was_not_given() -> None:
    state = ReleaseState.partial(SERVER.public_b64, Needs(), ledger=None)
    assert state.ledger() is None
    with pytest.raises(NotPrefetched):
        state.vendor_keys("acme")
    with pytest.raises(NotPrefetched):
        state.update(UpdateKey("acme", "demo", "1.0.0.0"))
    with pytest.raises(NotPrefetched):
        state.op_sig_index("sig")


def test_partial_states_judge_every_vector_like_the_full_state() -> None:
    data = load_vectors()
    for chain in data["chains"]:
        full = ReleaseState(server_key=data["server-key"])
        for entry in chain_entries(chain):
            partial = restrict(full, needs(entry.contents))
            assert partial.judge(entry) == full.judge(entry)
            full.ingest(entry)


VENDORS = ("registry", "acme", "beta")
KEYS = ("core", "core2", "a1", "a2", "a3", "b1", "x")
OWN = {"registry": ("core", "core2"), "acme": ("a1", "a2", "a3"), "beta": ("b1",)}
VERSIONS = ("1.0.0", "v1.0", "2.0.0")


@st.composite
def bodies(draw: st.DrawFn) -> Body:
    vendor = draw(st.sampled_from(VENDORS))
    version = draw(st.sampled_from(VERSIONS))
    kind = draw(st.sampled_from(("add", "revoke", "update", "revoke-update", "attest")))
    target = draw(st.sampled_from(OWN[vendor]) | st.sampled_from(KEYS))
    if kind == "add":
        return AddKey(vendor, pk(target), limited=draw(st.booleans()))
    if kind == "revoke":
        return RevokeKey(vendor, pk(target))
    if kind == "update":
        return Update(vendor, "demo", version, meta(draw(st.integers(0, 2))))
    if kind == "revoke-update":
        return RevokeUpdate(vendor, "demo", version, draw(st.sampled_from(("a", "b"))))
    return AttestUpdate(vendor, "demo", version, draw(st.sampled_from(VENDORS)),
                        draw(st.sampled_from(("reproduced", "vote-against"))))


@st.composite
def contents(draw: st.DrawFn) -> bytes:
    choice = draw(st.integers(0, 19))
    if choice == 0:
        return b"not a release message"
    body = draw(bodies())
    acting = body.attestor if isinstance(body, AttestUpdate) else body.vendor
    signer = draw(st.sampled_from((*OWN[acting], "core")) | st.sampled_from(KEYS))
    if choice == 1:
        signed = json.loads(sign_message(body, key(signer)))
        return envelope(body.op, signed["op-body"], key("x").sign_b64(b"?"), pk(signer))
    return sign_message(body, key(signer))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batches=st.lists(st.lists(contents(), min_size=1, max_size=3), min_size=1,
                        max_size=12),
       replays=st.lists(st.integers(0, 50), max_size=3))
def test_needs_covers_every_read(batches: list[list[bytes]], replays: list[int]) -> None:
    """A gate that prefetches only needs() (for a whole batch) judges exactly as the full
    state does, message after message; a read outside the prefetch would raise."""
    full = ReleaseState(server_key=SERVER.public_b64)
    full.ingest(ChainEntry(0, "h0", "c", SERVER.public_b64,
                           enable_contents(NOW, CORE, pk("core"))))
    setup = [(AddKey("acme", pk("a1")), "core"), (AddKey("beta", pk("b1")), "core"),
             (AddKey("acme", pk("a2"), limited=True), "a1"), (AddKey(CORE, pk("core2")), "core")]
    for index, (body, signer) in enumerate(setup, start=1):
        entry = ChainEntry(index, f"h{index}", "c", "client", sign_message(body, key(signer)))
        assert isinstance(full.ingest(entry), Accepted)
    seen: list[bytes] = []
    index = len(setup) + 1
    for batch in batches:
        batch = batch + [seen[i % len(seen)] for i in replays if seen]
        scope = Needs()
        for item in batch:
            scope = scope.union(needs(item))
        partial = restrict(full, scope)
        for item in batch:
            entry = ChainEntry(index, f"h{index}", "c", "client", item)
            index += 1
            verdict = full.judge(entry)
            assert partial.judge(entry) == verdict
            if isinstance(verdict, Accepted):
                full.apply(verdict.effects)
                partial.apply(verdict.effects)
        seen.extend(batch)


def test_metadata_of_a_partial_state_update_round_trips() -> None:
    state = ReleaseState(server_key=SERVER.public_b64)
    state.ingest(ChainEntry(0, "h0", "c", SERVER.public_b64,
                            enable_contents(NOW, CORE, pk("core"))))
    state.ingest(ChainEntry(1, "h1", "c", "client", sign_message(
        Update(CORE, "tools", "1.0.0", Metadata()), key("core"))))
    assert state.updates()[0].metadata == Metadata()
