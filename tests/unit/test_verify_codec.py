"""The saved release state loads back exactly (the verifier's incremental sync relies on it)."""

from __future__ import annotations

import json

import pytest

from chronicle.release.messages import AddKey, RevokeKey, RevokeUpdate, Update
from chronicle.verify.codec import StateFileError, load_release_state
from chronicle.verify.statedir import Config, UsageError, parse_duration
from tests.release_support import SERVER, Chain, meta, pk


def test_round_trip_is_byte_exact_and_judges_on() -> None:
    chain = Chain()
    chain.submit(AddKey(vendor="acme", publickey=pk("a1")), "core")
    chain.submit(AddKey(vendor="acme", publickey=pk("a2"), name="ci"), "a1")
    chain.submit(Update(vendor="acme", name="lib", version="1.0", metadata=meta(1)), "a1")
    chain.submit(RevokeUpdate(vendor="acme", name="lib", version="1.0", reason="bad"), "a1")
    chain.submit(Update(vendor="acme", name="lib", version="2.0", metadata=meta(2)), "core")
    chain.submit(RevokeKey(vendor="acme", publickey=pk("a2")), "a1")
    saved = chain.state.to_json()
    loaded = load_release_state(json.loads(saved), SERVER.public_b64)
    assert loaded.to_json() == saved
    # the loaded state judges the next entry exactly as the original does
    entry = chain.next_entry(chain.entries[3].contents)
    assert loaded.judge(entry) == chain.state.judge(entry)


def test_a_damaged_state_is_refused() -> None:
    doc = json.loads(Chain().state.to_json())
    doc["vendors"][0]["keys"][0]["added"] = "nowhere"
    with pytest.raises(StateFileError, match="release state: added is not a position"):
        load_release_state(doc, SERVER.public_b64)


def test_policy_values() -> None:
    assert parse_duration("24h") == 86400
    assert parse_duration("1 hour 30 minutes") == 5400
    with pytest.raises(UsageError, match="not a duration: 'soon'"):
        parse_duration("soon")
    with pytest.raises(UsageError, match="quorum 1: must be between 0 and the number of"):
        Config(url="http://x", server_key=pk("s"), quorum=1)
    with pytest.raises(UsageError, match="namespace policy acme=maybe: expected one of"):
        Config(url="http://x", server_key=pk("s"), namespace_policy=(("acme", "maybe"),))
