"""Herd compatibility: our rules keep what Herd v0.1.0 trusted and refuse what it refused.

Vectors: tests/vectors/herd/ (release.md "Prior art"). Herd anchors the core vendor's key
locally; we anchor it with the server-signed enable entry put before the vectors.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from chronicle.release.messages import enable_contents
from chronicle.release.state import Accepted, ChainEntry, ReleaseState, Skipped, Violation
from tests.release_support import NOW, SERVER

VECTORS = Path(__file__).parent.parent / "vectors" / "herd" / "herd-v0.1.0-entries.json"

# Our verdict for each vector. Herd's outcome is in the vector's "herd" text.
EXPECTED = {
    "E01-core-self-add-key": "key-exists",          # core1 is already the core key (enable)
    "E02-acme-first-key-by-core": "accepted",
    "E03-update-acme-demo-1.0.0": "accepted",
    "E04-acme-second-key": "accepted",
    "E05-revoke-acme1-by-acme2": "accepted",
    "E06-unknown-op-attest-update": "malformed",    # ours, but it lacks "attestor"
    "E07-add-key-extra-body-field": "accepted",     # "limited": true is ours
    "E08-add-key-extra-envelope-field": "accepted",
    "E09-update-by-revoked-acme1": "key-revoked",
    "E10-update-by-acme3": "accepted",              # a limited key may sign update
    "E11-self-revoke-acme2": "self-revocation",
    "E12-update-by-unknown-key": "key-not-trusted",
    "E13-mallory-self-signed-vendor": "first-key-not-vouched",
    "E14-bad-op-sig": "bad-signature",
    "E15-plain-text": "skipped:not-json",
}


@pytest.fixture(scope="module")
def vectors() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(VECTORS.read_text())
    return data


def _replay(vectors: dict[str, Any]) -> tuple[ReleaseState, dict[str, str]]:
    state = ReleaseState(server_key=SERVER.public_b64)
    enable = enable_contents(NOW, "paragonie", vectors["keys"]["core1"])
    assert isinstance(state.ingest(ChainEntry(0, "h0", "c", SERVER.public_b64, enable)),
                      Accepted)
    verdicts = {}
    for index, row in enumerate(vectors["entries"], start=1):
        verdict = state.ingest(ChainEntry(index, f"h{index}", "c", "client-key",
                                          row["contents"].encode("utf-8")))
        if isinstance(verdict, Accepted):
            verdicts[row["label"]] = "accepted"
        elif isinstance(verdict, Skipped):
            verdicts[row["label"]] = f"skipped:{verdict.kind}"
        else:
            assert isinstance(verdict, Violation)
            verdicts[row["label"]] = verdict.code
    return state, verdicts


def test_verdicts(vectors: dict[str, Any]) -> None:
    _, verdicts = _replay(vectors)
    assert verdicts == EXPECTED


def test_everything_herd_refused_we_refuse(vectors: dict[str, Any]) -> None:
    _, verdicts = _replay(vectors)
    for row in vectors["entries"]:
        if row["herd"].startswith("REJECTED") or "NOT trusted" in row["herd"]:
            assert verdicts[row["label"]] not in ("accepted",), row["label"]


def test_trusted_keys_and_updates_match_herd(vectors: dict[str, Any]) -> None:
    state, _ = _replay(vectors)
    names = {value: name for name, value in vectors["keys"].items()}
    final = vectors["herd_final_state"]
    trusted = {names[k.publickey] for v in state.vendors() for k in state.trusted_keys(v)}
    herd_trusted = {name for name, what in final["keys"].items()
                    if what.startswith("trusted")}
    assert trusted == herd_trusted == {"core1", "acme2", "acme3", "acme4"}
    revoked = {names[k.publickey] for v in state.vendors() for k in state.vendor_keys(v)
               if not k.trusted}
    assert revoked == {name for name, what in final["keys"].items()
                       if what.startswith("revoked")} == {"acme1"}
    updates: dict[str, list[str]] = {}
    for update in state.updates():
        updates.setdefault(f"{update.vendor}/{update.name}", []).append(update.version)
    assert updates == {package: [v.split(" ")[0] for v in versions]
                       for package, versions in final["updates"].items()}


def test_vendors_are_herds_minus_the_one_it_created_without_a_trusted_key(
        vectors: dict[str, Any]) -> None:
    """Herd makes a vendor row for mallory's refused add-key; a vendor without keys is
    nothing to us, so mallory is not listed."""
    state, _ = _replay(vectors)
    assert set(vectors["herd_final_state"]["vendors"]) - set(state.vendors()) == {"mallory"}
    assert state.vendors() == ["acme", "paragonie"]


def test_herd_stores_updates_verbatim_and_so_do_we(vectors: dict[str, Any]) -> None:
    state, _ = _replay(vectors)
    bodies = [json.loads(row["contents"])["op-body"] for row in vectors["entries"]
              if row["label"] in ("E03-update-acme-demo-1.0.0", "E10-update-by-acme3")]
    assert [u.body for u in state.updates()] == bodies
    assert not any(u.metadata.verifiable for u in state.updates())


def test_limited_flag_of_e07_is_kept(vectors: dict[str, Any]) -> None:
    state, _ = _replay(vectors)
    acme3 = next(k for k in state.vendor_keys("acme")
                 if k.publickey == vectors["keys"]["acme3"])
    assert acme3.limited and acme3.trusted
