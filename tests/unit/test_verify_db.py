"""state.db judges with the gate's pure rules and holds exactly the state replay() builds."""

from __future__ import annotations

from pathlib import Path

import pytest

from chronicle.release.messages import (
    AddKey,
    AttestUpdate,
    RevokeKey,
    RevokeUpdate,
    Update,
    sign_message,
)
from chronicle.release.state import ChainEntry, replay
from chronicle.verify.db import BusyError, ReleaseDB
from chronicle.verify.statedir import Config, UsageError, parse_duration
from tests.release_support import SERVER, Chain, key, meta, pk


def history() -> list[ChainEntry]:
    """Accepted messages of every op, an emergency action, violations and skipped entries."""
    chain = Chain()
    chain.submit(AddKey(vendor="acme", publickey=pk("a1")), "core")
    chain.submit(AddKey(vendor="acme", publickey=pk("a2"), name="ci", limited=True), "a1")
    chain.submit(AddKey(vendor="other", publickey=pk("o1")), "core")
    chain.submit(Update(vendor="acme", name="lib", version="1.0", metadata=meta(1)), "a1")
    chain.submit(Update(vendor="acme", name="lib", version="1.1", metadata=meta(2)), "a2")
    chain.submit(RevokeUpdate(vendor="acme", name="lib", version="1.0", reason="bad"), "a1")
    chain.submit(AttestUpdate(vendor="acme", name="lib", version="1.1", attestor="other",
                              attestation="reproduced", details="ok"), "o1")
    chain.submit(Update(vendor="acme", name="lib", version="2.0", metadata=meta(3)), "core")
    chain.submit(RevokeKey(vendor="acme", publickey=pk("a2")), "a1")
    entries = list(chain.entries)
    for contents in (b"plain text", b'{"op": "nope"}',
                     sign_message(Update(vendor="acme", name="lib", version="3.0",
                                         metadata=meta(4)), key("mallory")),
                     sign_message(RevokeKey(vendor="acme", publickey=pk("a1")), key("a1"))):
        entries.append(chain.next_entry(contents))
        chain.entries.append(entries[-1])
    return entries


def test_rows_hold_exactly_the_replayed_state(tmp_path: Path) -> None:
    entries = history()
    db = ReleaseDB(tmp_path / "state.db", SERVER.public_b64)
    db.begin()
    for entry in entries[:7]:
        db.ingest(entry)
    db.commit()
    db.close()
    db = ReleaseDB(tmp_path / "state.db", SERVER.public_b64)   # incremental, reopened
    db.begin()
    for entry in entries[7:]:
        db.ingest(entry)
    db.commit()
    expected = replay(entries, server_key=SERVER.public_b64)
    assert db.to_state().to_json() == expected.to_json()
    assert [r.code for r in expected.rejected()] == ["key-not-trusted", "self-revocation"]
    assert len(expected.emergency_actions()) == 1
    db.close()


def test_a_rolled_back_sync_leaves_nothing(tmp_path: Path) -> None:
    entries = history()
    db = ReleaseDB(tmp_path / "state.db", SERVER.public_b64)
    db.begin()
    for entry in entries:
        db.ingest(entry)
    db.rollback()
    assert db.to_state().to_json() == replay([], server_key=SERVER.public_b64).to_json()
    db.close()


def test_one_sync_at_a_time(tmp_path: Path) -> None:
    first = ReleaseDB(tmp_path / "state.db", SERVER.public_b64)
    second = ReleaseDB(tmp_path / "state.db", SERVER.public_b64, busy_timeout=0.05)
    first.begin()
    with pytest.raises(BusyError, match=r"state\.db is busy: another chronicle verify is "
                                        r"syncing it"):
        second.begin()
    first.rollback()
    second.begin()
    second.rollback()
    first.close()
    second.close()


def test_policy_values() -> None:
    assert parse_duration("24h") == 86400
    assert parse_duration("1 hour 30 minutes") == 5400
    with pytest.raises(UsageError, match="not a duration: 'soon'"):
        parse_duration("soon")
    with pytest.raises(UsageError, match="quorum 1: must be between 0 and the number of"):
        Config(url="http://x", server_key=pk("s"), quorum=1)
    with pytest.raises(UsageError, match="namespace policy acme=maybe: expected one of"):
        Config(url="http://x", server_key=pk("s"), namespace_policy=(("acme", "maybe"),))
